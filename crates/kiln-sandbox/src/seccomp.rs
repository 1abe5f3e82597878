//! The seccomp filter of a RUN step: Docker's default profile (moby's
//! `profiles/seccomp/default.json`) for a container with Docker's default capabilities.
//!
//! Built with libseccomp because one filter must cover every system call ABI a step can use:
//! kiln runs linux/386 binaries natively on x86_64 (and arm on aarch64), and the x32 ABI
//! exists. libseccomp adds the native architecture and its compat ones to one filter and
//! resolves each syscall name for each of them, as Docker does.

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
use libseccomp::{ScmpSyscall, error::SeccompError};

/// Allowed with any arguments, on every architecture where the name exists: Docker's list as of
/// Docker 25 (without `io_uring_*`, whose submissions bypass seccomp and which were behind
/// container escapes; with the syscalls of Linux 6.5 to 6.7), separated by whitespace. A name
/// this libseccomp does not know cannot be added and stays denied with EPERM (runc answers
/// ENOSYS for syscalls newer than its libseccomp; kiln does not).
const ALLOWED: &str = "
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
    chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod
    fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
    flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
    ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
    get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid getegid32 geteuid
    geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid
    getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
    getrusage getsid getsockname getsockopt gettid gettimeofday getuid getuid32 getxattr
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit ioctl ioprio_get
    ioprio_set ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
    lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek
    lsetxattr lstat lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret
    mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr
    mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64
    mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
    name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
    pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64
    prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64
    pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg
    recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2
    restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
    rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
    sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr sched_getparam
    sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
    sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget
    semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
    set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32
    setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32
    setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt
    setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
    sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink
    symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
    timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
    timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
    truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes
    vfork vmsplice wait4 waitid waitpid write writev
";

/// Allowed as well, though Docker lists them under conditions. `ptrace` and
/// `process_vm_readv`/`writev` from Linux 4.8 on, which checks seccomp again after a tracer
/// changed a syscall (kiln needs a newer kernel anyway); without CAP_SYS_PTRACE a step can only
/// trace its own processes, and its pid namespace holds nothing else. `chroot` for
/// CAP_SYS_CHROOT, which is in the default set (see `caps`).
const ALLOWED_BY_CONDITION: &str = "process_vm_readv process_vm_writev ptrace chroot";

/// Allowed when the host is of this architecture (Rust's name), as in Docker's profile.
const HOST_ARCH_ALLOWED: &[(&str, &str)] = &[
    ("x86_64", "arch_prctl modify_ldt"),
    (
        "aarch64",
        "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
    ),
    ("powerpc64", "sync_file_range2 swapcontext"),
    (
        "s390x",
        "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr",
    ),
    ("riscv64", "riscv_flush_icache"),
];

/// `personality` values a step may set: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and 0xffffffff, which only queries.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `clone` flags that create namespaces: refused, as without CAP_SYS_ADMIN.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The compat ABIs of the host's architecture, as Docker's profile lists them.
fn compat_arches() -> &'static [ScmpArch] {
    match std::env::consts::ARCH {
        "x86_64" => &[ScmpArch::X86, ScmpArch::X32],
        "aarch64" => &[ScmpArch::Arm],
        "s390x" => &[ScmpArch::S390],
        _ => &[],
    }
}

/// Builds the filter and loads it into the calling thread; everything it execs keeps it.
/// Called while the caller still has CAP_SYS_ADMIN in its user namespace, so the kernel does
/// not require no_new_privs (runc does the same when NoNewPrivileges is off): set-user-ID
/// programs in the image keep working.
pub(crate) fn load_default_profile() -> Result<(), String> {
    build()
        .and_then(|filter| filter.load())
        .map_err(|err| format!("loading the seccomp filter: {err}"))
}

/// Every name allowed without a condition on this host.
fn allowed_names() -> impl Iterator<Item = &'static str> {
    let host_arch = HOST_ARCH_ALLOWED
        .iter()
        .filter(|(arch, _)| *arch == std::env::consts::ARCH)
        .map(|(_, names)| *names);
    [ALLOWED, ALLOWED_BY_CONDITION]
        .into_iter()
        .chain(host_arch)
        .flat_map(str::split_whitespace)
}

fn build() -> Result<ScmpFilterContext, SeccompError> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM))?;
    for &arch in compat_arches() {
        filter.add_arch(arch)?;
    }
    filter.set_ctl_nnp(false)?;

    for name in allowed_names() {
        if let Ok(syscall) = ScmpSyscall::from_name(name) {
            filter.add_rule(ScmpAction::Allow, syscall)?;
        }
    }
    let personality = ScmpSyscall::from_name("personality")?;
    for value in PERSONALITIES {
        let equal = ScmpArgCompare::new(0, ScmpCompareOp::Equal, value);
        filter.add_rule_conditional(ScmpAction::Allow, personality, &[equal])?;
    }
    // AF_VSOCK reaches the hypervisor or other VMs, beyond the host's network.
    let not_vsock = ScmpArgCompare::new(0, ScmpCompareOp::NotEqual, libc::AF_VSOCK as u64);
    filter.add_rule_conditional(
        ScmpAction::Allow,
        ScmpSyscall::from_name("socket")?,
        &[not_vsock],
    )?;
    // s390 passes the stack first and the flags second.
    let flags_arg = match std::env::consts::ARCH {
        "s390x" => 1,
        _ => 0,
    };
    let no_namespaces =
        ScmpArgCompare::new(flags_arg, ScmpCompareOp::MaskedEqual(NAMESPACE_FLAGS), 0);
    filter.add_rule_conditional(
        ScmpAction::Allow,
        ScmpSyscall::from_name("clone")?,
        &[no_namespaces],
    )?;
    // clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes libc fall
    // back to clone.
    filter.add_rule(
        ScmpAction::Errno(libc::ENOSYS),
        ScmpSyscall::from_name("clone3")?,
    )?;
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use libseccomp::ScmpSyscall;

    use super::{ALLOWED, ALLOWED_BY_CONDITION, HOST_ARCH_ALLOWED};

    /// Syscalls of Linux 6.5 to 6.7, which libseccomp knows from 2.5.5 on.
    const NEWER_THAN_LIBSECCOMP_2_5_4: &str =
        "cachestat fchmodat2 futex_requeue futex_wait futex_wake map_shadow_stack";

    /// A misspelt name would be left out silently, and its syscall denied. libseccomp knows
    /// the names of every architecture (those missing on this one resolve to pseudo numbers).
    #[test]
    fn every_name_in_the_profile_is_known_to_libseccomp() {
        let all = [ALLOWED, ALLOWED_BY_CONDITION]
            .into_iter()
            .chain(HOST_ARCH_ALLOWED.iter().map(|(_, names)| *names))
            .flat_map(str::split_whitespace);
        let newer: Vec<&str> = NEWER_THAN_LIBSECCOMP_2_5_4.split_whitespace().collect();
        let unknown: Vec<&str> = all
            .filter(|name| !newer.contains(name))
            .filter(|name| ScmpSyscall::from_name(name).is_err())
            .collect();
        assert!(unknown.is_empty(), "{unknown:?}");
    }
}

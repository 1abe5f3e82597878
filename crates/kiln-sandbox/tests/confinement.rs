//! A RUN step gets what a default Docker container gets and no more. Each test runs a hostile
//! step (busybox commands and tests/attacker.c, built with the host's gcc) and checks from
//! outside that the host is unchanged: its sysctls, a canary dir behind an inherited
//! descriptor, the terminal kiln runs in. As root, rootless (as nobody) and under QEMU.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use kiln_sandbox::{MountKind, RunMount, RunSpec, find_emulator};

/// Docker's default capabilities (CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD, NET_RAW, SETGID,
/// SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE), as
/// /proc/self/status shows them.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

/// The descriptor number under which kiln gets a canary dir it did not open close-on-exec.
const INHERITED_FD: i32 = 7;

/// Tests whose steps try to write host sysctls run one at a time: each puts back what it
/// saw before, which would be wrong while another test's step changed it.
static HOST_SYSCTLS: Mutex<()> = Mutex::new(());

/// tests/attacker.c, built static once per test process.
fn attacker() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacker.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let partial = dir.join(format!("attacker.{}", std::process::id()));
        let output = Command::new("gcc")
            .args(["-static", "-O1", "-Wall", "-o"])
            .arg(&partial)
            .arg(&source)
            .output()
            .expect("running gcc (Debian packages gcc, libc6-dev: scripts/install-deps.sh)");
        assert!(
            output.status.success(),
            "gcc: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let built = dir.join("attacker");
        std::fs::rename(&partial, &built).unwrap();
        built
    })
}

/// A host file a step must not change. Put back when dropped if it did change, so that a
/// failing test leaves the host as it found it.
struct HostValue {
    path: &'static str,
    before: String,
}

impl HostValue {
    fn read(path: &'static str) -> HostValue {
        HostValue {
            path,
            before: std::fs::read_to_string(path).unwrap(),
        }
    }

    fn assert_unchanged(&self) {
        assert_eq!(
            std::fs::read_to_string(self.path).unwrap(),
            self.before,
            "the step changed the host's {}",
            self.path
        );
    }
}

impl Drop for HostValue {
    fn drop(&mut self) {
        if std::fs::read_to_string(self.path).is_ok_and(|now| now != self.before) {
            let _ = std::fs::write(self.path, &self.before);
        }
    }
}

/// What the attack script needs to know about the host.
struct Targets {
    /// Written to /proc/sys/kernel/core_uses_pid: the opposite of the host's value.
    core_uses_pid: &'static str,
    /// A block device of the host: `major minor`.
    disk: String,
    /// A process outside the sandbox (the test, which started kiln).
    kiln_pid: u32,
    /// Whether /attacker is in the rootfs (a native step).
    attacker: bool,
}

impl Targets {
    fn of_this_host(attacker: bool) -> Targets {
        let core_uses_pid = match std::fs::read_to_string("/proc/sys/kernel/core_uses_pid")
            .unwrap()
            .trim()
        {
            "0" => "1",
            _ => "0",
        };
        let partitions = std::fs::read_to_string("/proc/partitions").unwrap();
        let disk = partitions
            .lines()
            .skip(2)
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() == 4).then(|| format!("{} {}", fields[0], fields[1]))
            })
            .unwrap_or_else(|| "8 0".to_string());
        Targets {
            core_uses_pid,
            disk,
            kiln_pid: std::process::id(),
            attacker,
        }
    }

    /// A shell script that tries each attack and prints one `name: result` line for it:
    /// `ok` or `refused: <error>` for attempts, the value seen for looks.
    fn script(&self) -> String {
        let mut script = format!(
            r#"
probe() {{
    name=$1; shift
    if out=$("$@" 2>&1); then echo "$name: ok"
    else echo "$name: refused: $(echo "$out" | busybox head -n 1)"; fi
}}
probe core_pattern sh -c 'echo kiln-attack-%p > /proc/sys/kernel/core_pattern'
probe core_uses_pid sh -c 'echo {core_uses_pid} > /proc/sys/kernel/core_uses_pid'
probe sysrq_trigger sh -c 'echo h > /proc/sysrq-trigger'
probe remount_proc_sys busybox mount -o remount,rw /proc/sys
probe unmask_keys busybox umount /proc/keys
busybox mkdir -p /mnt
probe mount_tmpfs busybox mount -t tmpfs kiln /mnt
probe mknod_disk sh -c 'busybox mknod /disk b {disk} && busybox head -c 1 /disk'
probe unshare_user busybox unshare -U busybox true
probe kill_kiln busybox kill -9 {kiln_pid}
probe chroot busybox chroot / busybox true
probe chown busybox chown 0:0 /etc/passwd
probe dev_tty sh -c ': < /dev/tty'
probe inherited_fd busybox ls /proc/self/fd/{INHERITED_FD}/
echo "fds: $(busybox ls /proc/self/fd | busybox tr '\n' ' ')"
for file in keys timer_list interrupts kcore sched_debug timer_stats latency_stats; do
    echo "masked $file: $(busybox stat -c '%F %t:%T' /proc/$file 2>&1)"
done
for dir in acpi asound scsi; do
    echo "masked $dir: $(busybox stat -f -c %T /proc/$dir 2>&1) $(busybox ls -A /proc/$dir 2>&1)"
done
for path in sys bus fs irq sysrq-trigger; do
    options=$(busybox awk -v path=/proc/$path '$5 == path {{print $6}}' /proc/self/mountinfo)
    echo "read-only $path: $(echo $options | busybox tr ' ' '\n' | busybox tail -n 1)"
done
busybox grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
echo "pid 1: $(busybox cat /proc/1/comm)"
echo "machine: $(busybox uname -m)"
# The helper is in the step's user namespace, with its root the host's: visible only on the
# host's /proc. The brackets keep this script's own command line from matching.
helper=
for cmdline in /proc/[0-9]*/cmdline; do
    dir=${{cmdline%/cmdline}}
    if busybox grep -q '__kiln-sandbox-ini[t]' $cmdline 2>/dev/null \
        && busybox grep -q '^Uid:[[:space:]]0[[:space:]]' $dir/status 2>/dev/null; then
        helper=$dir
    fi
done
echo "helper: ${{helper:-not visible}}"
if [ -n "$helper" ]; then probe helper_root busybox ls $helper/root/; fi
"#,
            core_uses_pid = self.core_uses_pid,
            disk = self.disk,
            kiln_pid = self.kiln_pid,
        );
        if self.attacker {
            for probe in [
                "add_key",
                "keyctl",
                "tiocsti kiln-pwned",
                &format!("ptrace {}", self.kiln_pid),
                "init_module",
                "finit_module",
                "unshare",
                "clone_newuser",
                "clone3",
                "io_uring",
                "fork",
                "ia32_getpid",
                "ia32_unshare",
            ] {
                script.push_str(&format!("/attacker {probe}\n"));
            }
        }
        // Last: on a pid namespace whose init may reboot, this ends the step.
        script.push_str(
            "probe kill_all busybox kill -9 -1\n\
             probe reboot busybox reboot -f\n\
             echo 'end: reached'\n",
        );
        script
    }
}

/// The `name: result` lines of the step's output.
fn results(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, result)| (name.to_string(), result.trim().to_string()))
        .collect()
}

fn result<'a>(results: &'a BTreeMap<String, String>, name: &str, output: &str) -> &'a str {
    results
        .get(name)
        .unwrap_or_else(|| panic!("no {name:?} line in the step's output:\n{output}"))
}

/// Checks what every confined step shows, native or emulated, as root or rootless: each
/// attempt refused, /proc restricted, Docker's capabilities and seccomp mode 2.
fn assert_confined(output: &str, targets: &Targets) {
    // Shown when an assertion fails (or with --nocapture).
    eprintln!("the step's output:\n{output}");
    let results = results(output);
    let mut refused = vec![
        "core_pattern",
        "core_uses_pid",
        "sysrq_trigger",
        "remount_proc_sys",
        "unmask_keys",
        "mount_tmpfs",
        "mknod_disk",
        "unshare_user",
        "kill_kiln",
        "dev_tty",
        "inherited_fd",
        "reboot",
    ];
    if targets.attacker {
        refused.extend([
            "add_key",
            "keyctl",
            "tiocsti",
            "ptrace",
            "init_module",
            "finit_module",
            "unshare",
            "clone_newuser",
            "io_uring",
        ]);
        #[cfg(target_arch = "x86_64")]
        refused.push("ia32_unshare");
        // Refused with ENOSYS, so that libc falls back to clone (which works: see "fork").
        assert_eq!(
            result(&results, "clone3", output),
            "refused: Function not implemented",
            "{output}"
        );
        let mut allowed = vec!["fork"];
        #[cfg(target_arch = "x86_64")]
        allowed.push("ia32_getpid");
        for name in allowed {
            assert_eq!(result(&results, name, output), "ok", "{name}:\n{output}");
        }
    }
    for name in refused {
        let outcome = result(&results, name, output);
        assert!(
            outcome.starts_with("refused"),
            "{name}: {outcome}\n{output}"
        );
    }
    // What a default container may still do.
    for name in ["chroot", "chown"] {
        assert_eq!(result(&results, name, output), "ok", "{name}:\n{output}");
    }
    assert_eq!(result(&results, "end", output), "reached", "{output}");

    assert_eq!(result(&results, "fds", output), "0 1 2 3", "{output}");
    for file in [
        "keys",
        "timer_list",
        "interrupts",
        "kcore",
        "sched_debug",
        "timer_stats",
        "latency_stats",
    ] {
        let seen = result(&results, &format!("masked {file}"), output);
        match Path::new("/proc").join(file).exists() {
            true => assert_eq!(seen, "character special file 1:3", "{file}: {output}"),
            false => assert!(seen.contains("No such file"), "{file}: {seen}"),
        }
    }
    for dir in ["acpi", "asound", "scsi"] {
        let seen = result(&results, &format!("masked {dir}"), output);
        if Path::new("/proc").join(dir).exists() {
            assert_eq!(seen, "tmpfs", "an empty tmpfs over /proc/{dir}: {output}");
        }
    }
    for path in ["sys", "bus", "fs", "irq", "sysrq-trigger"] {
        let seen = result(&results, &format!("read-only {path}"), output);
        if Path::new("/proc").join(path).exists() {
            assert!(seen.starts_with("ro,"), "/proc/{path} is mounted {seen}");
        }
    }
    for (field, value) in [
        ("CapBnd", DOCKER_DEFAULT_CAPS),
        ("CapPrm", DOCKER_DEFAULT_CAPS),
        ("CapEff", DOCKER_DEFAULT_CAPS),
        ("CapInh", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "0"),
        ("Seccomp", "2"),
    ] {
        assert_eq!(result(&results, field, output), value, "{field}:\n{output}");
    }
}

/// A canary dir, opened without close-on-exec as fd 7 of kiln.
struct Canary {
    dir: tempfile::TempDir,
    fd: OwnedFd,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "host secret\n").unwrap();
        // Opened close-on-exec here (other tests spawn processes meanwhile); kiln's copy as
        // fd 7 is made without it.
        let fd = OwnedFd::from(std::fs::File::open(dir.path()).unwrap());
        Canary { dir, fd }
    }

    fn assert_untouched(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["secret"]);
    }
}

/// A terminal (pseudo-terminal pair) to be kiln's controlling terminal.
struct Terminal {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Terminal {
    fn open() -> Terminal {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds into the given ints; name, termios and winsize may
        // be null.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(opened, 0, "{}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two open fds that nothing else owns.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        for fd in [&master, &slave] {
            // SAFETY: F_SETFD on an fd we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Terminal { master, slave }
    }

    /// What a shell reading the terminal would get now: input pushed with TIOCSTI.
    fn pending_input(&self) -> String {
        let fd = self.slave.as_raw_fd();
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        let mut file = std::fs::File::from(self.slave.try_clone().unwrap());
        let mut buffer = [0u8; 256];
        match file.read(&mut buffer) {
            Ok(read) => String::from_utf8_lossy(&buffer[..read]).into_owned(),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => String::new(),
            Err(err) => panic!("reading the terminal: {err}"),
        }
    }
}

/// Runs `spec` through the helper binary as `caller` the way kiln started from a terminal
/// would: the terminal as its controlling terminal and stdin, and the canary as fd 7.
fn run_as_kiln_from_a_terminal(spec: &RunSpec, caller: Caller, canary: &Canary) -> Output {
    let terminal = Terminal::open();
    let (canary_fd, slave) = (canary.fd.as_raw_fd(), terminal.slave.as_raw_fd());
    let output = run_helper_binary(spec, caller, move || {
        // SAFETY: raw syscalls on fds that are open in the child.
        let failed = unsafe {
            libc::setsid() == -1
                || libc::ioctl(slave, libc::TIOCSCTTY, 0) == -1
                || libc::dup2(slave, 0) == -1
                || libc::dup2(canary_fd, INHERITED_FD) == -1
        };
        match failed {
            true => Err(std::io::Error::last_os_error()),
            false => Ok(()),
        }
    });
    assert_eq!(
        terminal.pending_input(),
        "",
        "the step pushed input into kiln's terminal"
    );
    drop(terminal.master);
    output
}

fn stdout_of(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kiln failed ({}): stdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn native_attack(caller: Caller) {
    let dirs = Dirs::new();
    kiln_testkit::copy_executable(attacker(), &dirs.lower.join("attacker"));
    if caller == Caller::Nobody {
        dirs.give_to_nobody();
    }
    let targets = Targets::of_this_host(true);
    let canary = Canary::new();
    let _one_at_a_time = HOST_SYSCTLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let core_pattern = HostValue::read("/proc/sys/kernel/core_pattern");
    let core_uses_pid = HostValue::read("/proc/sys/kernel/core_uses_pid");

    let output = run_as_kiln_from_a_terminal(
        &dirs.spec(&["sh", "-c", &targets.script()]),
        caller,
        &canary,
    );

    core_pattern.assert_unchanged();
    core_uses_pid.assert_unchanged();
    canary.assert_untouched();
    let stdout = stdout_of(&output);
    assert!(!stdout.contains("host secret"), "{stdout}");
    assert_confined(&stdout, &targets);
}

#[test]
fn run_step_as_root_cannot_change_the_host() {
    native_attack(Caller::Root);
}

#[test]
fn rootless_run_step_is_confined_the_same_way() {
    native_attack(Caller::Nobody);
}

#[test]
fn emulated_run_step_is_confined_the_same_way() {
    let targets = Targets::of_this_host(false);
    for caller in [Caller::Root, Caller::Nobody] {
        let dirs = Dirs::foreign("arm64", None);
        if caller == Caller::Nobody {
            dirs.give_to_nobody();
        }
        let spec = dirs.emulated_spec("arm64", &["sh", "-c", &targets.script()]);
        let _one_at_a_time = HOST_SYSCTLS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let core_pattern = HostValue::read("/proc/sys/kernel/core_pattern");
        let core_uses_pid = HostValue::read("/proc/sys/kernel/core_uses_pid");

        let output = run_helper_binary(&spec, caller, || Ok(()));

        core_pattern.assert_unchanged();
        core_uses_pid.assert_unchanged();
        let stdout = stdout_of(&output);
        // QEMU makes the step's system calls, under the same filter and capabilities.
        assert!(stdout.contains("machine: aarch64"), "{caller:?}: {stdout}");
        assert_confined(&stdout, &targets);
    }
}

/// Rootless kiln in a container whose /proc is partly covered cannot mount a fresh /proc and
/// binds the host's instead; it is restricted the same way. The test covers /proc/fs in a
/// mount namespace of its own before dropping to nobody, as a container runtime would.
#[test]
fn rootless_run_step_on_the_hosts_proc_is_restricted_too() {
    let dirs = Dirs::new();
    dirs.give_to_nobody();
    let targets = Targets::of_this_host(false);
    let output = run_helper_binary(
        &dirs.spec(&["sh", "-c", &targets.script()]),
        Caller::Nobody,
        || {
            // SAFETY: raw syscalls with constant, NUL-terminated arguments.
            let failed = unsafe {
                libc::unshare(libc::CLONE_NEWNS) == -1
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == -1
                    || libc::mount(
                        c"tmpfs".as_ptr(),
                        c"/proc/fs".as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY,
                        std::ptr::null(),
                    ) == -1
            };
            match failed {
                true => Err(std::io::Error::last_os_error()),
                false => Ok(()),
            }
        },
    );
    let stdout = stdout_of(&output);
    let results = results(&stdout);
    assert_ne!(
        results["pid 1"], "sh",
        "a fresh /proc was mounted: {stdout}"
    );
    // The helper's root is the host's; only the step's capabilities (fewer than the helper's)
    // keep it from the helper's /proc entries.
    assert!(results["helper"].starts_with("/proc/"), "{stdout}");
    assert!(results["helper_root"].starts_with("refused"), "{stdout}");
    assert_confined(&stdout, &targets);
}

#[test]
fn non_root_user_has_only_the_bounding_set() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec(&[
        "busybox",
        "grep",
        "-E",
        "^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|Seccomp):",
        "/proc/self/status",
    ]);
    spec.user = "builder".to_string();
    let lines = run_ok(&spec);
    let zero = "0000000000000000";
    let expected: Vec<String> = [
        ("CapInh", zero),
        ("CapPrm", zero),
        ("CapEff", zero),
        ("CapBnd", DOCKER_DEFAULT_CAPS),
        ("CapAmb", zero),
        ("Seccomp", "2"),
    ]
    .iter()
    .map(|(field, value)| format!("{field}:\t{value}"))
    .collect();
    assert_eq!(lines, expected);
}

/// A FIFO where the image's /etc/passwd should be used to hang RUN: the lookup of the user
/// blocked opening it. Now it is refused, naming the file.
#[test]
fn fifo_as_etc_passwd_is_refused_without_hanging() {
    let dirs = Dirs::new();
    let passwd = dirs.lower.join("etc/passwd");
    std::fs::remove_file(&passwd).unwrap();
    nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let spec = dirs.spec(&["sh", "-c", "true"]);

    // In a process group of its own, so that a hanging helper can be ended with it.
    let mut kiln = Command::new(HELPER)
        .arg(serde_json::to_string(&spec).unwrap())
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while kiln.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(kiln.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = kiln.wait();
            panic!("RUN still hangs after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = kiln.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "kiln-sandbox-helper: sandbox setup failed: /etc/passwd in the rootfs is a FIFO, not a \
         regular file\n"
    );
}

/// Mode, owner and change time of a host file, as `stat` shows them from outside.
fn host_metadata(path: &Path) -> (u32, u32, u32, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    (
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// Runs `script` and returns the `name: result` lines of what it printed.
fn probes(spec: &RunSpec) -> (String, BTreeMap<String, String>) {
    let stdout = stdout_of(&run_helper_binary(spec, Caller::Root, || Ok(())));
    let results = results(&stdout);
    (stdout, results)
}

/// The step's /dev holds the host's device nodes, and kiln opened the host's /dev/null as its
/// stdin. As real root the step's uid 0 owns those inodes: it changed the host's /dev/null,
/// /dev/tty, ... (`chmod 600 /dev/null` breaks every other user of the host). Each attempt
/// now fails, and the host's nodes keep their mode, owner and change time.
#[test]
fn host_device_nodes_keep_their_metadata() {
    let devices = ["null", "zero", "full", "random", "urandom", "tty"];
    let host = |device: &str| Path::new("/dev").join(device);
    let before: Vec<_> = devices.iter().map(|d| host_metadata(&host(d))).collect();
    let mut script = String::from(
        "probe() { name=$1; shift; if out=$(\"$@\" 2>&1); then echo \"$name: ok\"; \
         else echo \"$name: refused: $out\"; fi; }\n",
    );
    for (device, (mode, uid, ..)) in devices.iter().zip(&before) {
        // The mode and owner the node has already: harmless if the step gets through.
        let mode = format!("{:o}", mode & 0o7777);
        script.push_str(&format!(
            "probe chmod_{device} busybox chmod {mode} /dev/{device}\n\
             probe chown_{device} busybox chown {uid} /dev/{device}\n"
        ));
    }
    let null_mode = format!("{:o}", before[0].0 & 0o7777);
    script.push_str(&format!(
        "probe chmod_stdin busybox chmod {null_mode} /proc/self/fd/0\n\
         probe write_null sh -c 'echo data > /dev/null'\n\
         probe read_zero sh -c 'busybox head -c 4 /dev/zero | busybox wc -c'\n"
    ));
    let dirs = Dirs::new();
    let (stdout, results) = probes(&dirs.spec(&["sh", "-c", &script]));

    for (device, before) in devices.iter().zip(&before) {
        assert_eq!(
            host_metadata(&host(device)),
            *before,
            "the step changed the host's /dev/{device}:\n{stdout}"
        );
        for attempt in ["chmod", "chown"] {
            let outcome = result(&results, &format!("{attempt}_{device}"), &stdout);
            assert!(outcome.contains("Read-only file system"), "{stdout}");
        }
    }
    let outcome = result(&results, "chmod_stdin", &stdout);
    assert!(outcome.contains("Read-only file system"), "{stdout}");
    // The devices still work.
    assert_eq!(result(&results, "write_null", &stdout), "ok", "{stdout}");
    assert_eq!(result(&results, "read_zero", &stdout), "ok", "{stdout}");
}

/// Every emulated process of a step is the emulator, and `/proc/<pid>/exe` of another one
/// leads to the emulator's file on the host (QEMU hides only its own `/proc/self/exe`). As real
/// root the step's uid 0 owns that file: `chmod 4755` made the host's qemu-aarch64-static
/// setuid root, a root shell for every local user. Now it fails, and the file is unchanged.
/// (A copy of the emulator stands in for the host's.)
#[test]
fn emulator_file_keeps_its_metadata() {
    let qemu_dir = tempfile::tempdir().unwrap();
    let emulator = find_emulator("arm64", None).unwrap();
    let copy = qemu_dir
        .path()
        .join(emulator.interpreter.file_name().unwrap());
    kiln_testkit::copy_executable(&emulator.interpreter, &copy);
    let before = host_metadata(&copy);
    let dirs = Dirs::foreign("arm64", None);
    let spec = RunSpec {
        emulator: Some(find_emulator("arm64", Some(qemu_dir.path())).unwrap()),
        ..dirs.spec(&[
            "sh",
            "-c",
            "probe() { name=$1; shift; if out=$(\"$@\" 2>&1); then echo \"$name: ok\"; \
             else echo \"$name: refused: $out\"; fi; }\n\
             sleep 5 & emulated=$!\n\
             sleep 1\n\
             echo \"exe size: $(stat -L -c %s /proc/$emulated/exe)\"\n\
             probe setuid chmod 4755 /proc/$emulated/exe\n\
             probe chown chown 65534 /proc/$emulated/exe\n\
             probe times touch -d @0 /proc/$emulated/exe\n\
             kill $emulated\n",
        ])
    };
    let (stdout, results) = probes(&spec);

    assert_eq!(
        host_metadata(&copy),
        before,
        "the step changed the emulator's file:\n{stdout}"
    );
    let size = std::fs::metadata(&copy).unwrap().len().to_string();
    assert_eq!(
        result(&results, "exe size", &stdout),
        size,
        "the step reached the emulator's file: {stdout}"
    );
    for attempt in ["setuid", "chown", "times"] {
        let outcome = result(&results, attempt, &stdout);
        assert!(outcome.contains("Read-only file system"), "{stdout}");
    }
}

/// kiln mounts an ssh agent's socket read-only (a writable bind let the step chmod the host's
/// socket, as real root). A socket on a read-only mount still takes connections: the step
/// reaches the agent, and the socket's mode, owner and change time stay as they were.
#[test]
fn read_only_socket_mount_takes_connections() {
    let agent_dir = tempfile::tempdir().unwrap();
    let socket = agent_dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let _ = stream.write_all(b"agent here\n");
        }
    });
    let before = host_metadata(&socket);
    let dirs = Dirs::new();
    kiln_testkit::copy_executable(attacker(), &dirs.lower.join("attacker"));
    let spec = RunSpec {
        mounts: vec![RunMount {
            target: "/run/agent.sock".to_string(),
            kind: MountKind::Bind {
                source: socket.clone(),
                readonly: true,
            },
        }],
        ..dirs.spec(&[
            "sh",
            "-c",
            "/attacker connect /run/agent.sock\n\
             if out=$(chmod 777 /run/agent.sock 2>&1); then echo 'chmod: ok'\n\
             else echo \"chmod: refused: $out\"; fi\n",
        ])
    };
    let (stdout, results) = probes(&spec);

    assert_eq!(result(&results, "connect", &stdout), "ok agent here");
    assert!(
        result(&results, "chmod", &stdout).contains("Read-only file system"),
        "{stdout}"
    );
    assert_eq!(host_metadata(&socket), before);
}

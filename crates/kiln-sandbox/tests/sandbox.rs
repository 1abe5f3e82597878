//! Real namespaces, real overlayfs: each test runs busybox commands in a rootfs made from the
//! host's /bin/busybox (package busybox-static), or, for foreign architectures, from kiln-testkit's
//! busybox images of Debian's busybox-static for that architecture, run by the real QEMU
//! (qemu-user-static). The tests run as root; the rootless tests drop to uid 65534 themselves.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_sandbox::{
    EmulationMode, ExitStatus, MountKind, Network, RunMount, RunSpec, Sandbox, SandboxError,
    find_emulator, runs_natively,
};

mod common;

use common::*;

/// Every entry under `dir`, by relative path: "dir", "file:<content>", "link:<target>" or
/// "char:<major>,<minor>".
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, entries: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            let kind = meta.file_type();
            let description = if kind.is_dir() {
                walk(base, &path, entries);
                "dir".to_string()
            } else if kind.is_symlink() {
                format!("link:{}", std::fs::read_link(&path).unwrap().display())
            } else if kind.is_char_device() {
                let rdev = meta.rdev();
                format!("char:{},{}", libc::major(rdev), libc::minor(rdev))
            } else {
                format!(
                    "file:{}",
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap())
                )
            };
            let relative = path.strip_prefix(base).unwrap().display().to_string();
            entries.insert(relative, description);
        }
    }
    let mut entries = BTreeMap::new();
    walk(dir, dir, &mut entries);
    entries
}

fn expected(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(path, description)| (path.to_string(), description.to_string()))
        .collect()
}

#[test]
fn upper_holds_exactly_the_commands_changes() {
    let dirs = Dirs::new();
    let data = dirs.lower.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("keep"), "keep\n").unwrap();
    std::fs::write(data.join("modify"), "old\n").unwrap();
    std::fs::write(data.join("delete"), "delete\n").unwrap();
    let lower_before = tree(&dirs.lower);

    run_ok(&dirs.spec(&[
        "sh",
        "-c",
        "echo new > /data/new && echo more >> /data/modify && rm /data/delete",
    ]));

    // No /proc, /dev, /etc/hosts, ... stubs: the lower has none of them, nor an /etc/hosts.
    assert_eq!(
        tree(&dirs.upper),
        expected(&[
            ("data", "dir"),
            ("data/delete", "char:0,0"),
            ("data/modify", "file:old\nmore\n"),
            ("data/new", "file:new\n"),
        ])
    );
    assert_eq!(tree(&dirs.lower), lower_before);
}

#[test]
fn failing_command_reports_its_exit_code_and_last_lines() {
    let dirs = Dirs::new();
    let (result, lines) = run(&dirs.spec(&[
        "sh",
        "-c",
        "for i in $(seq 1 25); do echo line $i; done; echo oops >&2; exit 3",
    ]));
    let output = result.unwrap();
    assert_eq!(output.status, ExitStatus::Code(3));
    assert!(!output.status.success());
    assert_eq!(lines.len(), 26);
    let mut expected_tail: Vec<String> = (7..=25).map(|i| format!("line {i}")).collect();
    expected_tail.push("oops".to_string());
    assert_eq!(output.tail, expected_tail);
}

#[test]
fn missing_command_is_a_setup_error_naming_it() {
    let dirs = Dirs::new();
    let (result, lines) = run(&dirs.spec(&["no-such-tool", "--flag"]));
    match result {
        Err(SandboxError::Setup(message)) => {
            assert!(message.contains("no-such-tool"), "{message}");
            assert!(message.contains("not found"), "{message}");
        }
        other => panic!("expected a setup error, got {other:?}"),
    }
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn command_sees_the_given_environment_and_a_home() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec(&["env"]);
    spec.env = vec!["PATH=/bin".to_string(), "GREETING=hello world".to_string()];
    let mut lines = run_ok(&spec);
    lines.sort();
    assert_eq!(lines, ["GREETING=hello world", "HOME=/root", "PATH=/bin"]);

    spec.env.push("HOME=/srv".to_string());
    let mut lines = run_ok(&spec);
    lines.sort();
    assert_eq!(lines, ["GREETING=hello world", "HOME=/srv", "PATH=/bin"]);
}

#[test]
fn home_comes_from_the_users_passwd_entry() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec(&["sh", "-c", "echo $HOME"]);
    spec.user = "builder".to_string();
    assert_eq!(run_ok(&spec), ["/home/builder"]);
    spec.user = "65534:0".to_string();
    assert_eq!(run_ok(&spec), ["/nonexistent"]);
    spec.user = "4321".to_string();
    assert_eq!(run_ok(&spec), ["/"], "a uid passwd does not list gets /");
}

#[test]
fn missing_working_dir_is_created_and_used() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec(&["pwd"]);
    spec.cwd = "/srv/app/build".to_string();
    assert_eq!(run_ok(&spec), ["/srv/app/build"]);
    assert!(dirs.upper.join("srv/app/build").is_dir());
}

#[test]
fn user_is_resolved_through_the_rootfs_passwd() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec(&["sh", "-c", "id -u; id -g"]);
    spec.user = "builder".to_string();
    assert_eq!(run_ok(&spec), ["1000", "1000"]);

    spec.user = "4321".to_string();
    assert_eq!(run_ok(&spec), ["4321", "0"]);

    spec.user = "builder:nogroup".to_string();
    assert_eq!(run_ok(&spec), ["1000", "65534"]);

    spec.user = "ghost".to_string();
    match run(&spec).0 {
        Err(SandboxError::Setup(message)) => assert!(message.contains("ghost"), "{message}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[test]
fn hostname_is_the_given_one() {
    let dirs = Dirs::new();
    let host_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let lines = run_ok(&dirs.spec(&["sh", "-c", "hostname; cat /etc/hostname"]));
    assert_eq!(lines, ["sandbox-test", "sandbox-test"]);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_hostname
    );
}

#[test]
fn command_is_pid_1_of_its_own_pid_namespace() {
    let dirs = Dirs::new();
    let lines = run_ok(&dirs.spec(&["cat", "/proc/1/cmdline"]));
    assert_eq!(lines, ["cat\0/proc/1/cmdline\0"]);
}

#[test]
fn nothing_stays_mounted_and_host_files_are_untouched() {
    let dirs = Dirs::new();
    let host_hosts = std::fs::read("/etc/hosts").unwrap();
    let host_resolv_conf = std::fs::read("/etc/resolv.conf").ok();
    let lower_before = tree(&dirs.lower);
    let root = dirs.root.path().display().to_string();

    let lines = run_ok(&dirs.spec(&[
        "sh",
        "-c",
        "echo 10.9.9.9 evil >> /etc/hosts; echo nameserver 10.9.9.9 >> /etc/resolv.conf; \
         touch /dev/shm/x; echo data > /bin/busybox-extra; cat /etc/hosts",
    ]));
    assert!(lines.iter().any(|line| line.contains("evil")), "{lines:?}");

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leftovers: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&root)).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(std::fs::read("/etc/hosts").unwrap(), host_hosts);
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv_conf);
    assert_eq!(tree(&dirs.lower), lower_before);
    // Writes to the generated /etc files and to /dev/shm are not changes of the image.
    assert_eq!(
        tree(&dirs.upper),
        expected(&[("bin", "dir"), ("bin/busybox-extra", "file:data\n")])
    );
}

#[test]
fn whiteouts_and_opaque_dirs_of_a_higher_lower_hide_files_below() {
    let dirs = Dirs::new();
    for (dir, file) in [("gone", "a"), ("gone", "b"), ("replaced", "old")] {
        std::fs::create_dir_all(dirs.lower.join(dir)).unwrap();
        std::fs::write(dirs.lower.join(dir).join(file), "bottom\n").unwrap();
    }
    let top = dirs.root.path().join("top");
    std::fs::create_dir_all(top.join("gone")).unwrap();
    std::fs::create_dir_all(top.join("replaced")).unwrap();
    std::fs::write(top.join("replaced/new"), "top\n").unwrap();
    let whiteout =
        std::ffi::CString::new(top.join("gone/a").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod with a valid NUL-terminated path creates the 0/0 whiteout device.
    assert_eq!(
        unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR, 0) },
        0
    );
    let replaced =
        std::ffi::CString::new(top.join("replaced").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: setxattr with a valid path, name and a 1-byte value.
    let set = unsafe {
        libc::setxattr(
            replaced.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());

    let mut spec = dirs.spec(&["ls", "/gone", "/replaced"]);
    spec.lowers.push(top);
    assert_eq!(run_ok(&spec), ["/gone:", "b", "", "/replaced:", "new"]);
}

#[test]
fn empty_lowers_give_an_empty_rootfs() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec(&["/bin/sh"]);
    spec.lowers.clear();
    match run(&spec).0 {
        Err(SandboxError::Setup(message)) => assert!(message.contains("/bin/sh"), "{message}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
    assert_eq!(tree(&dirs.upper), BTreeMap::new());
}

#[test]
fn rootless_kiln_runs_as_root_in_a_single_id_namespace() {
    let dirs = Dirs::new();
    dirs.give_to_nobody();
    let spec = dirs.spec(&["sh", "-c", "id -u; echo hello > /made-rootless"]);

    let output = run_helper_binary(&spec, Caller::Nobody, || Ok(()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "0\n");
    assert!(stderr.contains("owned by root"), "{stderr}");
    let made = dirs.upper.join("made-rootless");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "hello\n");
    // uid 0 inside is nobody outside.
    assert_eq!(made.metadata().unwrap().uid(), NOBODY);
}

/// The `e_machine` field of an ELF file (`EI_DATA` says its byte order).
fn elf_machine(bytes: &[u8]) -> u16 {
    assert_eq!(&bytes[..4], b"\x7fELF");
    let field = [bytes[18], bytes[19]];
    match bytes[5] {
        2 => u16::from_be_bytes(field),
        _ => u16::from_le_bytes(field),
    }
}

/// The host's binfmt_misc entries, if it is mounted there at all.
fn host_binfmt_entries() -> Option<Vec<String>> {
    let entries = std::fs::read_dir("/proc/sys/fs/binfmt_misc").ok()?;
    let mut names: Vec<String> = entries
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Some(names)
}

fn binfmt_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter(|line| line.contains("binfmt_misc"))
        .map(str::to_string)
        .collect()
}

#[test]
fn uname_reports_the_emulated_machine() {
    for (arch, variant, machine) in [
        ("arm64", None, "aarch64"),
        ("arm", Some("v7"), "armv7l"),
        ("ppc64le", None, "ppc64le"),
        ("s390x", None, "s390x"),
    ] {
        let dirs = Dirs::foreign(arch, variant);
        assert_eq!(
            run_ok(&dirs.emulated_spec(arch, &["uname", "-m"])),
            [machine],
            "{arch}"
        );
    }
}

/// Busybox's shell runs most applets by executing itself with the applet's name as `argv[0]`.
#[test]
fn emulated_shell_runs_applets_that_go_by_argv0() {
    let dirs = Dirs::foreign("arm64", None);
    let lines = run_ok(&dirs.emulated_spec(
        "arm64",
        &[
            "sh",
            "-c",
            "echo found | grep f; sleep 0; exec -a echo /bin/busybox as-echo",
        ],
    ));
    assert_eq!(lines, ["found", "as-echo"]);
}

#[test]
fn foreign_binary_copied_by_an_emulated_step_lands_in_upper() {
    const EM_AARCH64: u16 = 183;
    let dirs = Dirs::foreign("arm64", None);
    run_ok(&dirs.emulated_spec("arm64", &["cp", "/bin/busybox", "/copied"]));
    let copied = std::fs::read(dirs.upper.join("copied")).unwrap();
    assert_eq!(elf_machine(&copied), EM_AARCH64);
    assert_eq!(
        copied,
        std::fs::read(dirs.lower.join("bin/busybox")).unwrap()
    );
}

#[test]
fn emulation_is_invisible_to_the_host_and_gone_afterwards() {
    let dirs = Dirs::foreign("arm64", None);
    let binfmt_before = host_binfmt_entries();
    let mountinfo_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let spec = dirs.emulated_spec(
        "arm64",
        &[
            "sh",
            "-c",
            "grep binfmt_misc /proc/self/mountinfo || echo no binfmt_misc mount; \
             echo running; sleep 1",
        ],
    );
    // Looked at while the registration is live: the command is still sleeping.
    let mut seen_while_running = None;
    let (result, lines) = {
        let mut lines = Vec::new();
        let result = Sandbox::new(PathBuf::from(HELPER)).run(&spec, &mut |line| {
            if line == "running" {
                seen_while_running = Some((
                    host_binfmt_entries(),
                    std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
                ));
            }
            lines.push(line.to_string());
        });
        (result, lines)
    };
    assert_eq!(result.unwrap().status, ExitStatus::Code(0), "{lines:?}");
    // The private binfmt_misc mount is not visible inside the rootfs either.
    assert_eq!(lines, ["no binfmt_misc mount", "running"]);
    let (binfmt_during, mountinfo_during) = seen_while_running.unwrap();
    assert_eq!(binfmt_during, binfmt_before);
    assert_eq!(
        binfmt_mounts(&mountinfo_during),
        binfmt_mounts(&mountinfo_before)
    );
    assert_eq!(host_binfmt_entries(), binfmt_before);
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        mountinfo_before
    );
}

#[test]
fn emulator_missing_from_the_qemu_dir_is_an_error_naming_the_arch() {
    let qemu_dir = tempfile::tempdir().unwrap();
    match find_emulator("arm64", Some(qemu_dir.path())) {
        Err(err @ SandboxError::NoEmulator { .. }) => {
            let message = err.to_string();
            assert!(message.contains("arm64"), "{message}");
            let SandboxError::NoEmulator { arch, searched } = err else {
                unreachable!()
            };
            assert_eq!(arch, "arm64");
            assert_eq!(searched, [qemu_dir.path().join("qemu-aarch64-static")]);
        }
        other => panic!("expected NoEmulator, got {other:?}"),
    }
    // Only the given dir counts, although /usr/bin has one.
    kiln_testkit::copy_executable(
        Path::new("/usr/bin/qemu-aarch64-static"),
        &qemu_dir.path().join("qemu-aarch64-static"),
    );
    let found = find_emulator("arm64", Some(qemu_dir.path())).unwrap();
    assert_eq!(
        found.interpreter,
        qemu_dir
            .path()
            .canonicalize()
            .unwrap()
            .join("qemu-aarch64-static")
    );
    assert_eq!(found.arch, "arm64");
    assert!(matches!(
        find_emulator("mips64le", None),
        Err(SandboxError::UnknownArch { .. })
    ));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_64_host_runs_amd64_and_386_natively_and_nothing_else() {
    assert!(runs_natively("amd64"));
    assert!(runs_natively("386"));
    for arch in ["arm64", "arm", "arm/v7", "ppc64le", "s390x", "riscv64"] {
        assert!(!runs_natively(arch), "{arch}");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn emulation_for_picks_native_or_the_private_binfmt() {
    let sandbox = Sandbox::new(PathBuf::from(HELPER));
    assert_eq!(
        sandbox.emulation_for("amd64", None).unwrap(),
        EmulationMode::Native
    );
    for arch in ["arm64", "arm", "ppc64le", "s390x", "riscv64"] {
        assert_eq!(
            sandbox.emulation_for(arch, None).unwrap(),
            EmulationMode::PrivateBinfmt(find_emulator(arch, None).unwrap()),
            "{arch}"
        );
    }
}

/// Without an emulator, only a host registration could help; whether the host has one is
/// told by running the arm64 busybox directly.
#[cfg(target_arch = "x86_64")]
#[test]
fn emulation_for_without_emulator_falls_back_to_the_host_or_names_the_ways_out() {
    let dirs = Dirs::foreign("arm64", None);
    let host_runs_arm64 = Command::new(dirs.lower.join("bin/busybox"))
        .arg("true")
        .status()
        .is_ok_and(|status| status.success());
    let empty_qemu_dir = tempfile::tempdir().unwrap();
    let result =
        Sandbox::new(PathBuf::from(HELPER)).emulation_for("arm64", Some(empty_qemu_dir.path()));
    match (host_runs_arm64, result) {
        (true, Ok(mode)) => assert_eq!(mode, EmulationMode::HostBinfmt),
        (false, Err(err @ SandboxError::CannotEmulate { .. })) => {
            let message = err.to_string();
            for way_out in [
                "qemu-user-static",
                "--qemu-dir",
                "binfmt_misc",
                "$BUILDPLATFORM",
            ] {
                assert!(message.contains(way_out), "{way_out}: {message}");
            }
            assert!(message.contains("arm64"), "{message}");
        }
        (host, other) => panic!("host runs arm64: {host}, but got {other:?}"),
    }
}

#[test]
fn rootless_kiln_runs_emulated_steps() {
    let dirs = Dirs::foreign("arm64", None);
    dirs.give_to_nobody();
    let spec = dirs.emulated_spec("arm64", &["sh", "-c", "id -u; uname -m"]);

    let output = run_helper_binary(&spec, Caller::Nobody, || Ok(()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "0\naarch64\n");
}

#[test]
fn emulator_that_cannot_be_registered_is_a_setup_error_naming_the_arch() {
    let dirs = Dirs::foreign("arm64", None);
    let mut spec = dirs.emulated_spec("arm64", &["uname", "-m"]);
    let emulator = spec.emulator.as_mut().unwrap();
    emulator.interpreter = dirs.root.path().join("no-such-qemu-aarch64-static");
    match run(&spec).0 {
        Err(SandboxError::Setup(message)) => {
            assert!(message.contains("arm64"), "{message}");
            assert!(message.contains("no-such-qemu"), "{message}");
            assert!(message.contains("No such file"), "{message}");
        }
        other => panic!("expected a setup error, got {other:?}"),
    }
    assert_eq!(tree(&dirs.upper), BTreeMap::new());
}

/// A binfmt_misc registration made outside the sandbox's user namespace (here in an enclosing
/// one, standing in for the host's, which the tests leave alone) is found by the probe, but only
/// with the `F` flag: without it the emulator would have to be inside the rootfs.
#[test]
fn emulation_for_uses_an_outer_registration_only_if_it_has_the_f_flag() {
    let debian_rule = std::fs::read_to_string("/usr/lib/binfmt.d/qemu-aarch64.conf").unwrap();
    // :name:M::magic:mask:interpreter:flags
    let fields: Vec<&str> = debian_rule.trim().split(':').collect();
    let rule = |flags: &str| {
        format!(
            ":outer-aarch64:M::{}:{}:/usr/bin/qemu-aarch64-static:{flags}",
            fields[4], fields[5]
        )
    };
    let empty_qemu_dir = tempfile::tempdir().unwrap();
    let emulation_for_under = |rule: Option<String>| {
        let binfmt = tempfile::tempdir().unwrap();
        let script = match rule {
            Some(_) => {
                "mount -t binfmt_misc binfmt_misc \"$1\" && printf '%s' \"$2\" > \"$1/register\" \
                        && exec \"$3\" --emulation-for arm64 \"$4\""
            }
            None => "exec \"$3\" --emulation-for arm64 \"$4\"",
        };
        let output = Command::new("unshare")
            .args(["-Urm", "sh", "-c", script, "sh"])
            .arg(binfmt.path())
            .arg(rule.unwrap_or_default())
            .arg(HELPER)
            .arg(empty_qemu_dir.path())
            .output()
            .unwrap();
        assert!(
            output.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(emulation_for_under(Some(rule("F"))), "HostBinfmt");
    let without_f = emulation_for_under(Some(rule("")));
    assert!(
        without_f.starts_with("cannot run arm64 binaries"),
        "{without_f}"
    );
    assert!(
        emulation_for_under(None).starts_with("cannot run arm64 binaries"),
        "the host itself has an arm64 handler: this test cannot tell the cases apart"
    );
}

fn bind(source: &Path, target: &str, readonly: bool) -> RunMount {
    RunMount {
        target: target.to_string(),
        kind: MountKind::Bind {
            source: source.to_path_buf(),
            readonly,
        },
    }
}

fn tmpfs(target: &str, size: Option<u64>) -> RunMount {
    RunMount {
        target: target.to_string(),
        kind: MountKind::Tmpfs { size },
    }
}

#[test]
fn read_only_bind_shows_the_source_refuses_writes_and_leaves_no_mount_point() {
    let dirs = Dirs::new();
    let source = dirs.root.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("input"), "from the host\n").unwrap();
    let spec = RunSpec {
        mounts: vec![bind(&source, "/src/deep", true)],
        ..dirs.spec(&[
            "sh",
            "-c",
            "cat /src/deep/input; touch /src/deep/new 2>/dev/null && echo wrote; echo out > /made",
        ])
    };
    let lines = run_ok(&spec);
    assert_eq!(lines, ["from the host"]);
    assert_eq!(
        tree(&source),
        expected(&[("input", "file:from the host\n")])
    );
    // Only the command's own change: /src and /src/deep were mount points.
    assert_eq!(tree(&dirs.upper), expected(&[("made", "file:out\n")]));
}

#[test]
fn writable_bind_writes_go_to_the_source_not_to_upper() {
    let dirs = Dirs::new();
    let source = dirs.root.path().join("source");
    std::fs::create_dir(&source).unwrap();
    run_ok(&RunSpec {
        mounts: vec![bind(&source, "/cache", false)],
        ..dirs.spec(&["sh", "-c", "mkdir /cache/sub; echo kept > /cache/sub/file"])
    });
    assert_eq!(
        tree(&source),
        expected(&[("sub", "dir"), ("sub/file", "file:kept\n")])
    );
    assert!(tree(&dirs.upper).is_empty(), "{:?}", tree(&dirs.upper));
}

#[test]
fn mount_point_inside_a_lower_dir_leaves_no_copied_up_dir() {
    let dirs = Dirs::new();
    let source = dirs.root.path().join("secret");
    std::fs::write(&source, "s3cr3t").unwrap();
    let lines = run_ok(&RunSpec {
        mounts: vec![bind(&source, "/etc/app/token", true)],
        ..dirs.spec(&["cat", "/etc/app/token"])
    });
    assert_eq!(lines, ["s3cr3t"]);
    assert!(tree(&dirs.upper).is_empty(), "{:?}", tree(&dirs.upper));
}

#[test]
fn socket_bind_is_a_socket_at_the_target() {
    let dirs = Dirs::new();
    let socket = dirs.root.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    run_ok(&RunSpec {
        mounts: vec![bind(&socket, "/run/agent.sock", true)],
        ..dirs.spec(&["test", "-S", "/run/agent.sock"])
    });
    assert!(tree(&dirs.upper).is_empty(), "{:?}", tree(&dirs.upper));
}

#[test]
fn tmpfs_takes_writes_up_to_its_size_and_leaves_nothing_in_upper() {
    let dirs = Dirs::new();
    let (result, lines) = run(&RunSpec {
        mounts: vec![tmpfs("/scratch", Some(64 * 1024))],
        ..dirs.spec(&[
            "sh",
            "-c",
            "echo small > /scratch/a && cat /scratch/a && head -c 1000000 /dev/zero > /scratch/big",
        ])
    });
    let output = result.unwrap();
    assert_eq!(output.status, ExitStatus::Code(1), "{lines:?}");
    assert_eq!(lines[0], "small");
    // The 64 KiB tmpfs cannot take the 1 MB file.
    assert!(lines[1].starts_with("head:"), "{lines:?}");
    assert!(tree(&dirs.upper).is_empty(), "{:?}", tree(&dirs.upper));
}

#[test]
fn nested_mount_point_is_made_inside_the_outer_mount() {
    let dirs = Dirs::new();
    let source = dirs.root.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("f"), "inner\n").unwrap();
    let lines = run_ok(&RunSpec {
        mounts: vec![tmpfs("/work", None), bind(&source, "/work/a/src", true)],
        ..dirs.spec(&["cat", "/work/a/src/f"])
    });
    assert_eq!(lines, ["inner"]);
    assert!(tree(&dirs.upper).is_empty(), "{:?}", tree(&dirs.upper));
}

#[test]
fn mount_target_through_a_symlink_stays_inside_the_rootfs() {
    let dirs = Dirs::new();
    let outside = dirs.root.path().join("outside-of-rootfs");
    // An absolute symlink that would lead out of the rootfs if followed on the host.
    std::os::unix::fs::symlink(&outside, dirs.lower.join("escape")).unwrap();
    let lines = run_ok(&RunSpec {
        mounts: vec![tmpfs("/escape/mnt", None)],
        ..dirs.spec(&["sh", "-c", "echo x > /escape/mnt/f && cat /escape/mnt/f"])
    });
    assert_eq!(lines, ["x"]);
    assert!(!outside.exists(), "a mount point was created on the host");
    assert!(tree(&dirs.upper).is_empty(), "{:?}", tree(&dirs.upper));
}

/// A dir outside the rootfs standing for the host: a `canary` file in it, both with an old
/// mtime.
struct HostCanary {
    dir: PathBuf,
}

const CANARY_MTIME: std::time::Duration = std::time::Duration::from_secs(1_000_000_000);

impl HostCanary {
    fn new(dirs: &Dirs) -> HostCanary {
        let dir = dirs.root.path().join("host");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("canary"), "canary\n").unwrap();
        let old = std::time::UNIX_EPOCH + CANARY_MTIME;
        for path in [dir.join("canary"), dir.clone()] {
            std::fs::File::open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        HostCanary { dir }
    }

    /// Nothing was written, created, truncated or mounted over in the dir.
    fn assert_untouched(&self) {
        assert_eq!(tree(&self.dir), expected(&[("canary", "file:canary\n")]));
        for path in [self.dir.join("canary"), self.dir.clone()] {
            let modified = path.symlink_metadata().unwrap().modified().unwrap();
            let since_epoch = modified.duration_since(std::time::UNIX_EPOCH).unwrap();
            assert_eq!(since_epoch, CANARY_MTIME, "{} changed", path.display());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.dir.display().to_string();
        assert!(!mountinfo.contains(&dir), "mounted over: {mountinfo}");
    }
}

#[test]
fn symlinked_etc_files_are_generated_inside_the_rootfs_and_the_host_is_untouched() {
    let dirs = Dirs::new();
    let host = HostCanary::new(&dirs);
    let etc = dirs.lower.join("etc");
    let canary = host.dir.join("canary");
    // Absolute, absolute with `..` past the top, and relative climbing out.
    std::os::unix::fs::symlink(&canary, etc.join("hosts")).unwrap();
    let dotdot = format!("/tmp/../..{}", host.dir.join("resolv.conf").display());
    std::os::unix::fs::symlink(dotdot, etc.join("resolv.conf")).unwrap();
    let climb = format!(
        "{}{}",
        "../".repeat(12),
        host.dir.join("hostname").display()
    );
    std::os::unix::fs::symlink(climb, etc.join("hostname")).unwrap();

    let lines = run_ok(&dirs.spec(&[
        "sh",
        "-c",
        "cat /etc/hosts /etc/hostname; echo evil | tee -a /etc/hosts /etc/resolv.conf \
         /etc/hostname >/dev/null",
    ]));
    // As runc does, the link is followed inside the rootfs and the generated file bound there.
    assert!(
        lines.contains(&"127.0.0.1\tlocalhost".to_string()),
        "{lines:?}"
    );
    assert_eq!(lines.last().unwrap(), "sandbox-test");
    host.assert_untouched();
    // The files made for the mounts were removed; the links are the image's.
    assert!(tree(&dirs.upper).is_empty(), "{:?}", tree(&dirs.upper));
}

#[test]
fn mount_targets_through_links_out_of_the_rootfs_land_inside() {
    let dirs = Dirs::new();
    let host = HostCanary::new(&dirs);
    let dotdot = format!("/tmp/../..{}", host.dir.display());
    std::os::unix::fs::symlink(dotdot, dirs.lower.join("a")).unwrap();
    std::os::unix::fs::symlink(&host.dir, dirs.lower.join("b")).unwrap();
    let source = dirs.root.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("in"), "bound\n").unwrap();
    let file = dirs.root.path().join("file");
    std::fs::write(&file, "file\n").unwrap();
    let lines = run_ok(&RunSpec {
        mounts: vec![
            bind(&source, "/a/x", true),
            tmpfs("/b/y", None),
            bind(&file, "/a/canary", true),
        ],
        ..dirs.spec(&[
            "sh",
            "-c",
            "cat /a/x/in /a/canary && echo t > /b/y/t && cat /b/y/t",
        ])
    });
    assert_eq!(lines, ["bound", "file", "t"]);
    host.assert_untouched();
    assert!(tree(&dirs.upper).is_empty(), "{:?}", tree(&dirs.upper));
}

/// A step sharing a cache with this one (two platforms with --jobs, two builds on one store)
/// changes it while this step makes its nested mount points there: a dir is swapped for a
/// symlink to a host dir, and a missing file appears as a symlink to a host file. A race, so
/// the test makes many attempts; what must never happen is a mount point created, a file
/// truncated or a mount made on the host.
#[test]
fn nested_mount_points_in_a_cache_changed_meanwhile_stay_inside_the_rootfs() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dirs = Dirs::new();
    let host = HostCanary::new(&dirs);
    let cache = dirs.root.path().join("cache");
    std::fs::create_dir_all(cache.join("a")).unwrap();
    std::fs::create_dir_all(cache.join("d")).unwrap();
    std::os::unix::fs::symlink(&host.dir, cache.join("swap")).unwrap();
    let file = dirs.root.path().join("file");
    std::fs::write(&file, "file\n").unwrap();

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let attempt_now = std::sync::Arc::new(AtomicUsize::new(0));
    let changer = {
        let (stop, cache, canary) = (stop.clone(), cache.clone(), host.dir.join("canary"));
        let attempt_now = attempt_now.clone();
        std::thread::spawn(move || {
            let cache = rustix::fs::open(&cache, rustix::fs::OFlags::PATH, 0.into()).unwrap();
            let mut plant = true;
            while !stop.load(Ordering::Relaxed) {
                let exchange = rustix::fs::RenameFlags::EXCHANGE;
                rustix::fs::renameat_with(&cache, "a", &cache, "swap", exchange).unwrap();
                let name = format!("d/f{}", attempt_now.load(Ordering::Relaxed));
                if plant {
                    let _ = rustix::fs::symlinkat(&canary, &cache, name.as_str());
                } else {
                    let _ =
                        rustix::fs::unlinkat(&cache, name.as_str(), rustix::fs::AtFlags::empty());
                }
                plant = !plant;
            }
        })
    };
    let mut outcomes = BTreeMap::new();
    for attempt in 0..40 {
        attempt_now.store(attempt, Ordering::Relaxed);
        let spec = RunSpec {
            mounts: vec![
                bind(&cache, "/cache", false),
                tmpfs(&format!("/cache/a/b{attempt}"), None),
                bind(&file, &format!("/cache/d/f{attempt}"), true),
            ],
            ..dirs.spec(&["sh", "-c", ":"])
        };
        let outcome = match run(&spec).0 {
            Ok(_) => "ran".to_string(),
            Err(SandboxError::Setup(message)) => message.split(':').next().unwrap().to_string(),
            Err(err) => panic!("{err}"),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    stop.store(true, Ordering::Relaxed);
    changer.join().unwrap();
    eprintln!("outcomes: {outcomes:?}");
    host.assert_untouched();
}

/// A TCP listener on the host's loopback that records whether anything connected.
fn loopback_listener() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line);
            let _ = sender.send(line);
        }
    });
    (port, receiver)
}

#[test]
fn default_network_reaches_the_hosts_loopback() {
    let dirs = Dirs::new();
    let (port, received) = loopback_listener();
    run_ok(&dirs.spec(&["sh", "-c", &format!("echo hello | nc 127.0.0.1 {port}")]));
    let line = received
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    assert_eq!(line, "hello\n");
}

#[test]
fn network_none_has_only_loopback_up_and_cannot_reach_the_host() {
    let dirs = Dirs::new();
    let (port, received) = loopback_listener();
    let spec = RunSpec {
        network: Network::None,
        ..dirs.spec(&[
            "sh",
            "-c",
            &format!(
                "cat /proc/net/dev; ip link show lo; echo hello | nc 127.0.0.1 {port} \
                 && echo reached; true"
            ),
        ])
    };
    let lines = run_ok(&spec);
    let interfaces: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.split_once(':'))
        // /proc/net/dev's lines: `name: bytes packets ...`.
        .filter(|(_, counters)| {
            let first = counters.split_whitespace().next().unwrap_or("");
            first.parse::<u64>().is_ok()
        })
        .map(|(name, _)| name.trim())
        .collect();
    assert_eq!(interfaces, ["lo"], "{lines:?}");
    let link = lines.iter().find(|line| line.contains(": lo:")).unwrap();
    assert!(link.contains(",UP"), "{link}");
    assert!(!lines.iter().any(|line| line == "reached"), "{lines:?}");
    assert!(
        received
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "the host listener got a connection"
    );
}

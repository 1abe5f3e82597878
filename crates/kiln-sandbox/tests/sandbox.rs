//! Real namespaces, real overlayfs: each test runs busybox commands in a rootfs made from the
//! host's /bin/busybox (package busybox-static). The tests run as root; the rootless test drops
//! to uid 65534 itself.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_sandbox::{ExitStatus, RunOutput, RunSpec, Sandbox, SandboxError};
use tempfile::TempDir;

const HELPER: &str = env!("CARGO_BIN_EXE_kiln-sandbox-helper");

const APPLETS: [&str; 15] = [
    "sh", "echo", "cat", "ls", "id", "rm", "touch", "mkdir", "hostname", "uname", "pwd", "sleep",
    "env", "test", "seq",
];

struct Dirs {
    root: TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl Dirs {
    /// A busybox layer as the only lower, with root, nobody and builder (1000:1000) users.
    fn new() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let lower = root.path().join("lower");
        let upper = root.path().join("upper");
        let work = root.path().join("work");
        for dir in [&lower.join("bin"), &lower.join("etc"), &upper, &work] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            lower.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
             builder:x:1000:1000::/home/builder:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            lower.join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\nbuilder:x:1000:\n",
        )
        .unwrap();
        Dirs {
            root,
            lower,
            upper,
            work,
        }
    }

    fn spec(&self, argv: &[&str]) -> RunSpec {
        RunSpec {
            lowers: vec![self.lower.clone()],
            upper: self.upper.clone(),
            work: self.work.clone(),
            argv: argv.iter().map(|arg| arg.to_string()).collect(),
            env: vec!["PATH=/bin".to_string()],
            cwd: "/".to_string(),
            user: String::new(),
            hostname: "sandbox-test".to_string(),
        }
    }
}

/// Runs `spec`, returning the result and every line the callback saw.
fn run(spec: &RunSpec) -> (Result<RunOutput, SandboxError>, Vec<String>) {
    let mut lines = Vec::new();
    let result = Sandbox::new(PathBuf::from(HELPER)).run(spec, &mut |line| {
        lines.push(line.to_string());
    });
    (result, lines)
}

fn run_ok(spec: &RunSpec) -> Vec<String> {
    let (result, lines) = run(spec);
    let output = result.unwrap();
    assert_eq!(output.status, ExitStatus::Code(0), "output: {lines:?}");
    lines
}

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
fn command_sees_exactly_the_given_environment() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec(&["env"]);
    spec.env = vec!["PATH=/bin".to_string(), "GREETING=hello world".to_string()];
    let mut lines = run_ok(&spec);
    lines.sort();
    assert_eq!(lines, ["GREETING=hello world", "PATH=/bin"]);
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
    const NOBODY: u32 = 65534;
    let dirs = Dirs::new();
    for entry in walk_all(dirs.root.path()) {
        std::os::unix::fs::lchown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::fs::set_permissions(dirs.root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let spec = dirs.spec(&["sh", "-c", "id -u; echo hello > /made-rootless"]);

    let output = Command::new(HELPER)
        .arg(serde_json::to_string(&spec).unwrap())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
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

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.symlink_metadata().unwrap().is_dir() {
            all.extend(walk_all(&path));
        } else {
            all.push(path);
        }
    }
    all
}

//! The Debian fixture: linux/amd64 and linux/arm64 images of a minimal Debian rootfs, read
//! with skopeo and umoci, its dpkg database read with the host's own dpkg-query.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use kiln_testkit::{DEBIAN_ARCHES, DEBIAN_PACKAGES, debian_fixtures, umoci_unpack};
use serde_json::{Value, json};

const ELF_MACHINE_X86_64: u16 = 0x3E;
const ELF_MACHINE_AARCH64: u16 = 0xB7;
/// What the slim rules leave out of the rootfs while the packages' file lists keep it.
const SLIM_LEFT_OUT: &[&str] = &[
    "/usr/share/doc/",
    "/usr/share/info/",
    "/usr/share/lintian/overrides/",
    "/usr/share/locale/",
    "/usr/share/man/",
];

fn elf_machine(path: &Path) -> u16 {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `dpkg-query --admindir=<rootfs>/var/lib/dpkg ARGS`, which must not warn about anything.
fn dpkg_query(rootfs: &Path, args: &[&str]) -> String {
    let output = run(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            rootfs.join("var/lib/dpkg").display()
        ))
        .args(args));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "",
        "dpkg-query {args:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

fn du_bytes(dir: &Path) -> u64 {
    let output = run(Command::new("du").args(["-s", "-b"]).arg(dir));
    let text = String::from_utf8(output.stdout).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Each platform's image is Debian's essential set with merged /usr, Debian's users and
/// groups, and a dpkg database that lists every package in it (for SBOMs) with files that
/// are all there, except what the slim rules leave out.
#[test]
fn layout_holds_a_slim_debian_rootfs_per_platform_with_its_dpkg_database() {
    let layout = &debian_fixtures().oci_layout;
    let source = format!("oci:{}:latest", layout.display());
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("layout");
    assert_eq!(DEBIAN_ARCHES, ["amd64", "arm64"]);
    for (arch, machine) in [
        ("amd64", ELF_MACHINE_X86_64),
        ("arm64", ELF_MACHINE_AARCH64),
    ] {
        let platform = ["--override-os=linux", &format!("--override-arch={arch}")];
        let config: Value = serde_json::from_slice(
            &run(Command::new("skopeo")
                .args(platform)
                .args(["inspect", "--config", &source]))
            .stdout,
        )
        .unwrap();
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["Cmd"], json!(["bash"]));
        assert_eq!(
            config["config"]["Env"],
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        );
        // skopeo checks every blob's digest as it copies.
        run(Command::new("skopeo")
            .args(platform)
            .args(["--insecure-policy", "copy", "-q", &source])
            .arg(format!("oci:{}:{arch}", copy.display())));
        let rootfs = umoci_unpack(&copy, arch, &work.path().join(format!("bundle-{arch}")));

        for dir in ["bin", "sbin", "lib"] {
            assert_eq!(
                fs::read_link(rootfs.join(dir)).unwrap(),
                Path::new("usr").join(dir),
                "{arch}"
            );
        }
        assert_eq!(
            fs::read_link(rootfs.join("bin/sh")).unwrap(),
            Path::new("dash")
        );
        for program in ["bash", "dash", "ls", "dpkg-query", "getent", "mawk"] {
            assert_eq!(
                elf_machine(&rootfs.join("usr/bin").join(program)),
                machine,
                "{arch}: {program}"
            );
        }
        assert_eq!(
            fs::read_link(rootfs.join("usr/bin/awk")).unwrap(),
            Path::new("/etc/alternatives/awk")
        );
        let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(
            passwd.starts_with("root:*:0:0:root:/root:/bin/bash\n"),
            "{passwd}"
        );
        assert!(passwd.contains("\n_apt:*:42:65534::"), "{passwd}");
        assert!(passwd.contains("\nwww-data:*:33:33:"), "{passwd}");
        let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
        assert!(group.contains("\nstaff:*:50:\n"), "{group}");
        let tmp = fs::metadata(rootfs.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777, "{arch}: /tmp");

        let installed: BTreeMap<String, String> = dpkg_query(
            &rootfs,
            &["-W", "-f=${Package} ${Architecture} ${db:Status-Abbrev}\n"],
        )
        .lines()
        .map(|line| {
            let (package, rest) = line.split_once(' ').unwrap();
            (package.to_string(), rest.trim_end().to_string())
        })
        .collect();
        for package in DEBIAN_PACKAGES {
            assert!(installed.contains_key(*package), "{arch}: no {package}");
        }
        // With what they depend on: glibc's libgcc-s1, grep's pcre2, bash's libtinfo6...
        for dependency in ["libgcc-s1", "libpcre2-8-0", "libtinfo6", "mawk"] {
            assert!(
                installed.contains_key(dependency),
                "{arch}: no {dependency}"
            );
        }
        for (package, state) in &installed {
            let (package_arch, status) = state.split_once(' ').unwrap();
            assert!(package_arch == arch || package_arch == "all", "{package}");
            assert_eq!(status, "ii", "{arch}: {package}");
        }
        for package in installed.keys() {
            for path in dpkg_query(&rootfs, &["-L", package]).lines() {
                if path == "/." || SLIM_LEFT_OUT.iter().any(|dir| path.starts_with(dir)) {
                    continue;
                }
                assert!(
                    fs::symlink_metadata(rootfs.join(&path[1..])).is_ok(),
                    "{arch}: {path} of {package} is missing"
                );
            }
        }
        let copyright = rootfs.join("usr/share/doc/bash/copyright");
        assert!(copyright.is_file(), "{arch}: bash's copyright");
        assert!(!rootfs.join("usr/share/man/man1/bash.1.gz").exists());

        // 29 MiB on amd64, 42 MiB on arm64, whose glibc modules are aligned to 64 KiB pages.
        let size = du_bytes(&rootfs);
        assert!(size < 50 << 20, "{arch}: the rootfs is {size} bytes");
    }
}

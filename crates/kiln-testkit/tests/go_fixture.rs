//! The Go toolchain fixture: linux/amd64 and linux/arm64 images whose `go` compiles a static
//! program, with the environment kiln's benchmark relies on.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_testkit::{GO_ARCHES, Registry, push_go, skopeo_inspect, skopeo_to_oci, umoci_unpack};

const ELF_MACHINE_X86_64: u16 = 0x3E;
const ELF_MACHINE_AARCH64: u16 = 0xB7;

fn elf_machine(path: &Path) -> u16 {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

/// Every image carries `go` for its own arch on top of the busybox rootfs; the amd64 one,
/// run here from its unpacked rootfs, builds a CGO-free program that runs.
#[test]
fn pushed_images_hold_a_working_go_toolchain_per_platform() {
    let registry = Registry::start();
    let reference = push_go(&registry, "fixtures/golang");
    assert_eq!(
        reference,
        format!("{}/fixtures/golang:latest", registry.addr())
    );
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    assert_eq!(GO_ARCHES, ["amd64", "arm64"]);
    for (arch, machine) in [
        ("amd64", ELF_MACHINE_X86_64),
        ("arm64", ELF_MACHINE_AARCH64),
    ] {
        let config = skopeo_inspect(&reference, Some(arch));
        assert_eq!(config["Architecture"], arch);
        let env: Vec<&str> = config["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"PATH=/usr/lib/go-1.19/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "{env:?}"
        );
        assert!(env.contains(&"CGO_ENABLED=0"), "{env:?}");
        assert!(env.contains(&"GOCACHE=/tmp/gocache"), "{env:?}");

        skopeo_to_oci(&reference, &layout, arch, Some(arch));
        let rootfs = umoci_unpack(&layout, arch, &work.path().join(format!("bundle-{arch}")));
        assert_eq!(
            elf_machine(&rootfs.join("usr/lib/go-1.19/bin/go")),
            machine,
            "{arch}"
        );
        assert_eq!(elf_machine(&rootfs.join("bin/busybox")), machine, "{arch}");
        assert!(
            rootfs
                .join("usr/lib/go-1.19/src/net/http/server.go")
                .is_file(),
            "{arch}: GOROOT/src does not resolve to the sources"
        );
    }

    let rootfs = work.path().join("bundle-amd64/rootfs");
    let program = work.path().join("hello");
    fs::create_dir_all(&program).unwrap();
    fs::write(program.join("go.mod"), "module hello\n\ngo 1.19\n").unwrap();
    fs::write(
        program.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from go\", 6*7) }\n",
    )
    .unwrap();
    let binary = work.path().join("hello-bin");
    let build = Command::new(rootfs.join("usr/lib/go-1.19/bin/go"))
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&program)
        .env_clear()
        .env("GOROOT", rootfs.join("usr/lib/go-1.19"))
        .env("GOCACHE", work.path().join("gocache"))
        .env("HOME", work.path())
        .env("CGO_ENABLED", "0")
        .env("GOPROXY", "off")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "go build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&binary).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from go 42\n");
}

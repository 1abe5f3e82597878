//! kiln keeps builds away from the host: hostile base image layers cannot write outside the
//! store, RUN leaves no mounts or files behind, and an unprivileged user can build.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// One tar entry built from raw header bytes, so names the `tar` crate refuses (`..`) fit.
struct RawEntry<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let raw = header.as_old_mut();
        raw.name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
        raw.linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        header.set_entry_type(entry.kind);
        header.set_mode(if entry.kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_size(entry.data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(entry.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Writes a one-layer OCI image layout whose layer is `layer_tar`, tagged `tag`.
fn write_oci_layout(dir: &Path, tag: &str, layer_tar: &[u8]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |media_type: &str, bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(layer_tar).unwrap();
    let layer_gz = gz.finish().unwrap();
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar)]},
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": put("application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap()),
        "layers": [put("application/vnd.oci.image.layer.v1.tar+gzip", &layer_gz)],
    });
    let mut descriptor = put(
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "manifests": [descriptor]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn push_layout(dir: &Path, tag: &str, destination: &str) {
    run_tool(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--all",
                "--dest-tls-verify=false",
                "-q",
            ])
            .arg(format!("oci:{}:{tag}", dir.display()))
            .arg(format!("docker://{destination}")),
    );
}

/// Every path under `dir` whose file name is one of `names`.
fn find_named(dir: &Path, names: &[&str]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        if names.iter().any(|n| entry.file_name() == *n) {
            found.push(path.clone());
        }
        if entry.file_type().unwrap().is_dir() {
            found.extend(find_named(&path, names));
        }
    }
    found
}

#[test]
fn hostile_layers_are_refused_without_writing_outside_the_store() {
    let env = Env::new();
    let file = |name| RawEntry {
        name,
        kind: tar::EntryType::Regular,
        link: "",
        data: b"pwned\n",
    };
    let dotdot = raw_tar(&[file("../evil")]);
    // Enough `..` to reach the real /tmp from wherever the layer is extracted.
    let escape = "../".repeat(32) + "tmp";
    let through_symlink = raw_tar(&[
        RawEntry {
            name: "link",
            kind: tar::EntryType::Symlink,
            link: &escape,
            data: b"",
        },
        file("link/pwned"),
    ]);
    let host_pwned = Path::new("/tmp/pwned");
    let _ = std::fs::remove_file(host_pwned);

    for (tag, layer, entry) in [
        ("dotdot", &dotdot, "../evil"),
        ("symlink", &through_symlink, "link/pwned"),
    ] {
        let layout = env.path(&format!("layout-{tag}"));
        write_oci_layout(&layout, tag, layer);
        push_layout(&layout, tag, &env.tag(&format!("evil:{tag}")));
        let ctx = env.context(
            &format!("ctx-{tag}"),
            &[(
                "Dockerfile",
                &format!("FROM $REG/evil:{tag}\nRUN echo unreachable\n"),
            )],
        );
        let o = env.kiln(&["build", ctx.to_str().unwrap()]);
        let err = assert_failed(&o);
        assert_contains_all(
            &err,
            &[&format!("`{entry}`"), &env.tag(&format!("evil:{tag}"))],
        );
        assert!(
            !err.contains("unreachable |"),
            "the build went on after a bad layer:\n{err}"
        );

        assert!(
            !host_pwned.exists(),
            "a layer wrote {}",
            host_pwned.display()
        );
        assert!(
            !env.path("evil").exists(),
            "a layer wrote next to the store"
        );
        assert_eq!(
            find_named(env.dir.path(), &["evil", "pwned"]),
            Vec::<std::path::PathBuf>::new(),
            "a hostile entry was written"
        );
    }
}

#[test]
fn run_leaves_no_mounts_files_or_host_changes_behind() {
    let env = Env::new();
    let hosts_before = std::fs::read(Path::new("/etc/hosts")).unwrap();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\n\
             RUN echo '10.9.8.7 kiln-was-here' >> /etc/hosts && echo ran > /ran.txt\n\
             COPY Dockerfile /copied\n",
        )],
    );
    let out = env.path("out");
    let spec = format!("type=oci,dest={},tar=false", out.display());
    assert_ok(&env.kiln(&["build", "-t", "iso:1", "-o", &spec, ctx.to_str().unwrap()]));

    let rootfs = umoci_unpack(&out, "1", &env.path("bundle"));
    assert_eq!(
        read(&rootfs.join("ran.txt")),
        "ran\n",
        "the RUN did not run"
    );

    assert_eq!(
        std::fs::read(Path::new("/etc/hosts")).unwrap(),
        hosts_before,
        "the RUN changed the host's /etc/hosts"
    );
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    let dir = env.dir.path().canonicalize().unwrap();
    for line in mountinfo.lines() {
        assert!(
            !line.contains(dir.to_str().unwrap()),
            "a mount of the build is left on the host: {line}"
        );
    }
    // Only what the test made (context, unpacked bundle) and what kiln was told to write.
    assert_eq!(
        list_dir(env.dir.path()),
        vec!["bundle", "ctx", "out", "store"]
    );
    assert_eq!(
        list_dir(&env.store().join("tmp")),
        Vec::<String>::new(),
        "scratch left behind"
    );
}

#[test]
fn an_unprivileged_user_builds_in_a_user_namespace() {
    const NOBODY: u32 = 65534;
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox:latest\n\
                 RUN echo built-rootless > /rootless.txt && id -u > /uid.txt\n\
                 COPY data.txt /data.txt\n",
            ),
            ("data.txt", "data\n"),
        ],
    );
    // The test's temp dir is private to root; nobody needs to reach the context and a
    // writable place for the store and the output.
    let world = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    world(env.dir.path(), 0o755);
    let shared = env.path("shared");
    std::fs::create_dir(&shared).unwrap();
    world(&shared, 0o777);
    let out = shared.join("out");
    let spec = format!("type=oci,dest={},tar=false", out.display());

    let (_exe_dir, kiln_binary) =
        kiln_testkit::executable_by_anyone(Path::new(env!("CARGO_BIN_EXE_kiln")));
    let o = kiln_command_at(
        &kiln_binary,
        &shared.join("store"),
        &[
            "build",
            "-t",
            "rootless:1",
            "-o",
            &spec,
            ctx.to_str().unwrap(),
        ],
    )
    .uid(NOBODY)
    .gid(NOBODY)
    .output()
    .unwrap();
    assert_ok(&o);
    let err = flat_stderr(&o);
    assert_contains_all(
        &err,
        &["kiln: warning:", "user namespace with only uid 0 mapped"],
    );

    let rootfs = umoci_unpack(&out, "1", &env.path("bundle"));
    assert_eq!(read(&rootfs.join("rootless.txt")), "built-rootless\n");
    assert_eq!(
        read(&rootfs.join("uid.txt")),
        "0\n",
        "RUN is root inside the image"
    );
    assert_eq!(read(&rootfs.join("data.txt")), "data\n");
}

/// A RUN step gets only stdin, stdout and stderr of kiln's descriptors, Docker's default
/// capabilities and seccomp filter, and a read-only /proc/sys. kiln is started with fd 7 open
/// on a canary dir (as after `exec 7</some/dir` in the calling shell); the step tries to
/// write into it, and reports what it sees into the image.
#[test]
fn run_step_reaches_no_inherited_descriptor_and_is_confined() {
    let env = Env::new();
    let canary = env.path("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("secret"), "host secret\n").unwrap();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\n\
             RUN (cat /proc/self/fd/7/secret; echo pwned > /proc/self/fd/7/pwned) > /fd7.txt 2>&1; \
                 ls /proc/self/fd > /fds.txt; \
                 grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status > /status.txt; \
                 busybox awk '$5 == \"/proc/sys\" {print $6}' /proc/self/mountinfo > /proc-sys.txt\n",
        )],
    );
    let out = env.path("out");
    let spec = format!("type=oci,dest={},tar=false", out.display());
    let canary_dir = std::fs::File::open(&canary).unwrap();
    let canary_fd = std::os::fd::AsRawFd::as_raw_fd(&canary_dir);
    let mut kiln = kiln_command(
        &env.store(),
        &[
            "build",
            "-t",
            "confined:1",
            "-o",
            &spec,
            ctx.to_str().unwrap(),
        ],
    );
    // SAFETY: dup2 between fds open in the child; dup2's copy is not close-on-exec.
    unsafe {
        kiln.pre_exec(move || match libc::dup2(canary_fd, 7) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    assert_ok(&kiln.output().unwrap());

    assert_eq!(
        list_dir(&canary),
        vec!["secret"],
        "the step wrote to the canary"
    );
    let rootfs = umoci_unpack(&out, "1", &env.path("bundle"));
    let fd7 = read(&rootfs.join("fd7.txt"));
    assert!(!fd7.contains("host secret"), "{fd7}");
    assert_eq!(read(&rootfs.join("fds.txt")), "0\n1\n2\n3\n");
    assert_eq!(
        read(&rootfs.join("status.txt")),
        "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nSeccomp:\t2\n"
    );
    let proc_sys = read(&rootfs.join("proc-sys.txt"));
    assert!(
        proc_sys.starts_with("ro,"),
        "/proc/sys is mounted {proc_sys:?}"
    );
}

/// A base image whose /etc/hosts and /etc/resolv.conf are symlinks to files of the host, and
/// whose /a is a symlink to a host dir (`/tmp/../..` style): the RUN step's generated /etc
/// files and its bind mount's point resolve inside the rootfs, as runc resolves them, and
/// nothing is written, created or mounted on the host. Checked from outside: the canary's
/// content and times, the canary dir's listing and times, and what the pushed image holds.
#[test]
fn symlinks_in_the_base_image_lead_mount_points_into_the_rootfs_not_the_host() {
    let env = Env::new();
    let host = env.path("host");
    std::fs::create_dir(&host).unwrap();
    let canary = host.join("canary");
    std::fs::write(&canary, "host file\n").unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    for path in [&canary, &host] {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, link: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        if !link.is_empty() {
            header.set_link_name(link).unwrap();
        }
        layer.append_data(&mut header, path, data).unwrap();
    };
    let busybox = std::fs::read("/bin/busybox").unwrap();
    add("bin/", tar::EntryType::Directory, 0o755, "", b"");
    add("bin/busybox", tar::EntryType::Regular, 0o755, "", &busybox);
    for applet in ["sh", "cat", "ls"] {
        add(
            &format!("bin/{applet}"),
            tar::EntryType::Symlink,
            0o777,
            "busybox",
            b"",
        );
    }
    add("etc/", tar::EntryType::Directory, 0o755, "", b"");
    let canary_path = canary.to_str().unwrap();
    add(
        "etc/hosts",
        tar::EntryType::Symlink,
        0o777,
        canary_path,
        b"",
    );
    let resolv = format!("/tmp/../..{}", host.join("resolv.conf").display());
    add(
        "etc/resolv.conf",
        tar::EntryType::Symlink,
        0o777,
        &resolv,
        b"",
    );
    let dir = format!("/tmp/../..{}", host.display());
    add("a", tar::EntryType::Symlink, 0o777, &dir, b"");
    let layer = layer.into_inner().unwrap();
    let layout = env.path("layout");
    write_oci_layout(&layout, "links", &layer);
    push_layout(&layout, "links", &env.tag("links:base"));

    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/links:base\n\
                 RUN --mount=type=bind,source=data,target=/a/b \
                 cat /a/b/in.txt /etc/hosts > /seen.txt; echo evil >> /etc/hosts; \
                 echo evil >> /etc/resolv.conf; ls /a >> /seen.txt\n",
            ),
            ("data/in.txt", "from the context\n"),
        ],
    );
    assert_ok(&env.build_and_push(&ctx, "links:built", &[]));

    assert_eq!(read(&canary), "host file\n");
    assert_eq!(list_dir(&host), vec!["canary"]);
    for path in [&canary, &host] {
        let modified = std::fs::metadata(path).unwrap().modified().unwrap();
        assert_eq!(modified, old, "{} changed", path.display());
    }
    let rootfs = unpack_pushed(&env.tag("links:built"), &env.path("unpack"));
    let seen = read(&rootfs.join("seen.txt"));
    // The step saw the bound dir at /a/b and the generated /etc/hosts, through the links;
    // in the host dir's place inside the rootfs, the three mount points.
    assert!(
        seen.starts_with("from the context\n127.0.0.1\tlocalhost\n"),
        "{seen}"
    );
    assert!(seen.ends_with("\nb\ncanary\nresolv.conf\n"), "{seen}");
    // No mount point stub (`b`, or the dirs on the links' way) is left in the image.
    let in_rootfs = rootfs.join(host.strip_prefix("/").unwrap());
    assert!(!in_rootfs.join("b").exists() && !in_rootfs.join("canary").exists());
    assert!(!rootfs.join("tmp").exists(), "{:?}", list_dir(&rootfs));
}

/// Processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<String> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == wanted))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A build killed with SIGKILL (a CI job cancelled, the OOM killer) takes its RUN step with it:
/// no helper or step keeps running on the host.
#[test]
fn a_killed_build_leaves_no_process_behind() {
    let env = Env::new();
    // A duration no other process uses (this test may run twice at once on one machine), to
    // find this step's process among the host's.
    let seconds = (1_000_000 + std::process::id()).to_string();
    let sleep = ["sleep", seconds.as_str()];
    let dockerfile =
        format!("FROM $REG/busybox\nRUN touch /kiln-step-started && sleep {seconds}\n");
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile.as_str())]);
    let mut build = kiln_command(&env.store(), &["build", ctx.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while processes_running(&sleep).is_empty() {
        assert!(build.try_wait().unwrap().is_none(), "the build ended early");
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    build.kill().unwrap();
    build.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_running(&sleep).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        processes_running(&sleep),
        Vec::<String>::new(),
        "the step outlived kiln"
    );
}

//! Every output of a build is one copy out of kiln's store (the path `kiln copy` takes): the
//! registry, the OCI archive and the OCI layout of one build hold the same bytes, as skopeo
//! reads them; tags come last in every repository named; a layout is added to, never
//! replaced.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use kiln_testkit::{Fault, FaultProxy, FaultRule};
use sha2::{Digest as _, Sha256};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// `skopeo inspect --raw` of a location in skopeo's syntax (`oci:DIR:NAME`, ...), for the
/// image of `arch` out of an index when given.
fn raw(location: &str, arch: Option<&str>) -> Vec<u8> {
    let mut command = Command::new("skopeo");
    if let Some(arch) = arch {
        command.args(["--override-os=linux", &format!("--override-arch={arch}")]);
    }
    command.args(["inspect", "--raw", "--tls-verify=false", location]);
    run_tool(&mut command).stdout
}

/// `skopeo inspect --config --raw`: the image config of `arch` at `location`.
fn raw_config(location: &str, arch: &str) -> Vec<u8> {
    run_tool(Command::new("skopeo").args([
        "--override-os=linux",
        &format!("--override-arch={arch}"),
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        location,
    ]))
    .stdout
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// kiln with the umask a CI shell has, so the modes it gives are the usual ones.
fn kiln_umask_022(env: &Env, args: &[&str]) -> std::process::Output {
    kiln_umask_022_command(env, args).output().unwrap()
}

fn kiln_umask_022_command(env: &Env, args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_ROOT", env.store())
        .env("NO_COLOR", "1");
    command
}

#[test]
fn every_output_of_one_build_holds_the_same_bytes() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox:latest\nCOPY data.txt /data/\n",
            ),
            ("data.txt", "exported\n"),
        ],
    );
    let (first, second) = (env.tag("exp:1"), env.tag("exp-copy:1"));
    let archive = env.path("out/image.tar");
    let layout = env.path("layout");
    let (metadata, digest_file) = (env.path("meta.json"), env.path("digest"));
    let o = kiln_umask_022(
        &env,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            "--push",
            "-t",
            &first,
            "-t",
            &second,
            "-o",
            &format!("type=oci,dest={}", archive.display()),
            "--oci-layout-path",
            layout.to_str().unwrap(),
            "--metadata-file",
            metadata.to_str().unwrap(),
            "--digest-file",
            digest_file.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    );
    assert_ok(&o);

    let locations = [
        format!("docker://{first}"),
        format!("docker://{second}"),
        format!("oci-archive:{}:1", archive.display()),
        format!("oci:{}:1", layout.display()),
    ];
    let index = raw(&locations[0], None);
    let digest = sha256(&index);
    for at in &locations[1..] {
        assert_eq!(raw(at, None), index, "{at} holds another index");
    }
    for arch in ["amd64", "arm64"] {
        let manifest = raw(&locations[0], Some(arch));
        let config = raw_config(&locations[0], arch);
        for at in &locations[1..] {
            assert_eq!(raw(at, Some(arch)), manifest, "{arch} manifest at {at}");
            assert_eq!(raw_config(at, arch), config, "{arch} config at {at}");
        }
    }
    // skopeo's own copy of the pushed index holds exactly the layout's blobs.
    let copied = env.path("skopeo-copy");
    run_tool(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "-q",
        &locations[0],
        &format!("oci:{}:x", copied.display()),
    ]));
    assert_eq!(
        list_dir(&copied.join("blobs/sha256")),
        list_dir(&layout.join("blobs/sha256"))
    );

    assert_eq!(read(&digest_file), digest);
    let meta: Value = serde_json::from_str(&read(&metadata)).unwrap();
    assert_eq!(meta["containerimage.digest"], digest);
    assert_eq!(meta["containerimage.descriptor"]["mediaType"], INDEX);
    assert_eq!(meta["containerimage.descriptor"]["size"], index.len());
    assert_eq!(meta["image.name"], format!("{first},{second}"));

    // Both names are in the layout, as buildx writes them.
    let listed: Value = serde_json::from_str(&read(&layout.join("index.json"))).unwrap();
    let names: Vec<(&str, &str)> = listed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["digest"], digest);
            let a = &d["annotations"];
            (
                a["io.containerd.image.name"].as_str().unwrap(),
                a["org.opencontainers.image.ref.name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [(first.as_str(), "1"), (second.as_str(), "1")]);
    // The second repository mounted what the first received.
    assert!(
        stderr(&o).contains("exp-copy sha256:") && stderr(&o).contains("(mounted)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(mode(&layout), 0o755);
    assert_eq!(
        list_dir(&env.path("out")),
        ["image.tar"],
        "no temp files left"
    );
    assert_eq!(
        list_dir(env.dir.path())
            .iter()
            .filter(|n| n.starts_with('.'))
            .count(),
        0,
        "no temp dirs left"
    );

    // A second build of the same inputs and names writes the same archive, byte for byte.
    let again = env.path("again.tar");
    assert_ok(&env.kiln(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "--build-arg",
        "SOURCE_DATE_EPOCH=1700000000",
        "-t",
        &first,
        "-t",
        &second,
        "-o",
        &format!("type=oci,dest={}", again.display()),
        ctx.to_str().unwrap(),
    ]));
    assert_eq!(
        sha256(&std::fs::read(&again).unwrap()),
        sha256(&std::fs::read(&archive).unwrap())
    );
}

fn build_into_layout(env: &Env, ctx: &Path, name: &str, layout: &Path) -> std::process::Output {
    env.kiln(&[
        "build",
        "--build-arg",
        "SOURCE_DATE_EPOCH=1700000000",
        "-t",
        name,
        "-o",
        &format!("type=oci,dest={},tar=false", layout.display()),
        ctx.to_str().unwrap(),
    ])
}

#[test]
fn a_layout_is_added_to_and_a_directory_that_is_not_one_is_left_alone() {
    let env = Env::new();
    let ctx = |name: &str, content: &str| {
        env.context(
            name,
            &[
                ("Dockerfile", "FROM $REG/busybox:latest\nCOPY file.txt /\n"),
                ("file.txt", content),
            ],
        )
    };
    let (one, two) = (ctx("one", "one\n"), ctx("two", "two\n"));
    let layout = env.path("layout");
    let at = |name: &str| format!("oci:{}:{name}", layout.display());

    assert_ok(&build_into_layout(&env, &one, "app:1", &layout));
    let first = sha256(&raw(&at("1"), None));
    assert_ok(&build_into_layout(&env, &two, "app:2", &layout));
    assert_eq!(sha256(&raw(&at("1"), None)), first, "app:1 is still there");
    let second = sha256(&raw(&at("2"), None));
    assert_ne!(first, second);
    // A name given again moves to the new image, as a tag does.
    assert_ok(&build_into_layout(&env, &two, "app:1", &layout));
    assert_eq!(sha256(&raw(&at("1"), None)), second);
    let rootfs = umoci_unpack(&layout, "1", &env.path("bundle"));
    assert_eq!(read(&rootfs.join("file.txt")), "two\n");

    let mine = env.path("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me\n").unwrap();
    let err = assert_failed(&build_into_layout(&env, &one, "app:1", &mine));
    assert_contains_all(&err, &[mine.to_str().unwrap(), "is not an OCI layout"]);
    assert_eq!(list_dir(&mine), ["notes.txt"]);
    assert_eq!(read(&mine.join("notes.txt")), "keep me\n");
}

#[test]
fn pushing_to_several_names_tags_none_when_one_repository_refuses() {
    let env = Env::new();
    // Uploads to the second repository are refused for good (403 is not retried).
    let proxy = FaultProxy::start(
        env.reg(),
        vec![FaultRule::new(
            Some("POST"),
            "/refused/blobs/uploads/",
            Fault::Status {
                status: 403,
                retry_after: None,
            },
            usize::MAX,
        )],
    );
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM $REG/busybox:latest\nCOPY data.txt /\n"),
            ("data.txt", "data\n"),
        ],
    );
    let accepted = env.tag("accepted:1");
    let refused = format!("{}/refused:1", proxy.addr());
    // (Without the flag the refusal stops the build before any step: tests/errors.rs.)
    let o = env.kiln(&[
        "build",
        "--push",
        "--skip-push-permission-check",
        "-t",
        &accepted,
        "-t",
        &refused,
        ctx.to_str().unwrap(),
    ]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &["refused"]);
    assert!(
        !image_exists(&accepted),
        "the first name was tagged although the second could not get the image"
    );
    // The first repository did receive the blobs: only the tag was held back.
    assert!(stderr(&o).contains("accepted sha256:"), "{}", stderr(&o));
}

/// `-o type=docker,dest=-` piped into `podman load`: the image arrives with its tag, the
/// `--label`s and the ID `--iidfile` names; `dest=FILE,name=` tags it otherwise.
#[test]
fn a_docker_output_loads_into_podman_with_its_tag_labels_and_id() {
    use kiln_testkit::{Profile, Runtime};
    use std::io::Write as _;
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox\nLABEL from=dockerfile\nCOPY a.txt /a.txt\n",
            ),
            ("a.txt", "loaded\n"),
        ],
    );
    let tag = env.tag("demo/app:1");
    let iid = env.path("iid");
    let o = env.kiln(&[
        "build",
        "-t",
        &tag,
        "--label",
        "org.opencontainers.image.revision=abc123",
        "--label",
        "from=flag",
        "--iidfile",
        iid.to_str().unwrap(),
        "-o",
        "type=docker,dest=-",
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(
        o.stdout.starts_with(b"") && o.stdout.len() > 1024,
        "no archive on stdout"
    );
    let runtime = Runtime::new(Profile::Podman);
    let mut load = runtime
        .podman()
        .args(["load"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let loaded = load.wait_with_output().unwrap();
    assert!(loaded.status.success(), "podman load: {}", stderr(&loaded));
    let inspect = |name: &str, format: &str| {
        stdout(&run_tool(
            runtime
                .podman()
                .args(["image", "inspect", "--format", format, name]),
        ))
        .trim()
        .to_string()
    };
    assert_eq!(
        inspect(
            &tag,
            "{{index .Labels \"org.opencontainers.image.revision\"}}"
        ),
        "abc123"
    );
    assert_eq!(inspect(&tag, "{{index .Labels \"from\"}}"), "flag");
    let id = std::fs::read_to_string(&iid).unwrap();
    assert_eq!(format!("sha256:{}", inspect(&tag, "{{.Id}}")), id);

    // To a file, tagged with name= instead of -t.
    let file = env.path("img.tar");
    let named = env.tag("other:2");
    let spec = format!("type=docker,dest={},name={named}", file.display());
    assert_ok(&env.kiln(&["build", "-t", &tag, "-o", &spec, ctx.to_str().unwrap()]));
    let loaded = run_tool(
        runtime
            .podman()
            .args(["load", "-i", file.to_str().unwrap()]),
    );
    assert!(stdout(&loaded).contains(&named), "{}", stdout(&loaded));
}

/// Every entry under `root`, by path: its type and mode, owner, and content or link target.
fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut found = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let what = if md.is_dir() {
                todo.push(path.clone());
                String::new()
            } else if md.is_symlink() {
                std::fs::read_link(&path).unwrap().display().to_string()
            } else {
                hex_string(&Sha256::digest(std::fs::read(&path).unwrap()))
            };
            let name = path.strip_prefix(root).unwrap().display().to_string();
            found.insert(
                name,
                format!("{:o} {}:{} {what}", md.mode(), md.uid(), md.gid()),
            );
        }
    }
    found
}

/// `-o type=local` writes the image's files as umoci unpacks them from the OCI output of
/// the same build: deletions applied, owners, modes, links and contents kept.
#[test]
fn a_local_output_holds_the_files_umoci_unpacks_from_the_image() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox\n\
                 COPY --chown=7:8 --chmod=640 a.txt /srv/a.txt\n\
                 RUN rm /bin/ls && ln -s /srv/a.txt /srv/link && ln /srv/a.txt /srv/hard\n",
            ),
            ("a.txt", "local output\n"),
        ],
    );
    let local = env.path("out/files");
    let layout = env.path("layout");
    let o = env.kiln(&[
        "build",
        "-t",
        "app:1",
        "-o",
        &format!("type=local,dest={}", local.display()),
        "-o",
        &format!("type=oci,dest={},tar=false", layout.display()),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let unpacked = kiln_testkit::umoci_unpack(&layout, "1", &env.path("bundle"));
    let (ours, umocis) = (tree(&local), tree(&unpacked));
    assert_eq!(ours, umocis);
    assert!(!local.join("bin/ls").exists());
    // Only the user kiln ran as can reach the image's setuid programs and devices.
    assert_eq!(mode(&local) & 0o777, 0o700);
    assert_eq!(
        std::fs::read_link(local.join("srv/link")).unwrap(),
        Path::new("/srv/a.txt")
    );
    let inode =
        |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(local.join(p)).unwrap());
    assert_eq!(inode("srv/hard"), inode("srv/a.txt"), "the hard link");
    assert!(
        ours["srv/a.txt"].starts_with("100640 7:8 "),
        "{}",
        ours["srv/a.txt"]
    );

    // buildx's shorthand: `-o DIR` is type=local.
    let short = env.path("short");
    assert_ok(&env.kiln(&[
        "build",
        "-o",
        short.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]));
    assert_eq!(tree(&short), ours);

    // A directory that holds something is never replaced.
    std::fs::write(local.join("mine"), "x").unwrap();
    let again = env.kiln(&[
        "build",
        "-o",
        &format!("type=local,dest={}", local.display()),
        ctx.to_str().unwrap(),
    ]);
    let err = assert_failed(&again);
    assert_contains_all(&err, &["is not an empty directory"]);
    assert_eq!(tree(&local).len(), ours.len() + 1);
    // Nothing is left beside it.
    assert_eq!(list_dir(&env.path("out")), ["files"]);
}

/// `-o type=tar,dest=-` of two platforms: one directory per platform, as buildx writes
/// them, each with that platform's busybox (GNU tar reads the stream).
#[test]
fn a_tar_output_of_two_platforms_has_a_directory_per_platform() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM $REG/busybox\nCOPY a.txt /a.txt\n"),
            ("a.txt", "tar output\n"),
        ],
    );
    let o = env.kiln(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-o",
        "type=tar,dest=-",
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let dir = env.path("untarred");
    std::fs::create_dir(&dir).unwrap();
    let mut untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut untar.stdin.take().unwrap(), &o.stdout).unwrap();
    assert!(untar.wait().unwrap().success(), "tar -x");
    assert_eq!(list_dir(&dir), ["linux_amd64", "linux_arm64"]);
    for (platform, machine) in [("linux_amd64", 62u16), ("linux_arm64", 183)] {
        assert_eq!(read(&dir.join(platform).join("a.txt")), "tar output\n");
        let elf = std::fs::read(dir.join(platform).join("bin/busybox")).unwrap();
        assert_eq!(
            u16::from_le_bytes([elf[18], elf[19]]),
            machine,
            "{platform}"
        );
    }
}

/// `--annotation` in buildx's forms, read back with skopeo and from the layout's index.json:
/// the default (every manifest), a platform selector, `index`, `manifest-descriptor` and
/// `index-descriptor`; one with nowhere to go is refused before the build.
#[test]
fn annotations_reach_the_manifests_the_index_and_their_descriptors() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM $REG/busybox\nCOPY a.txt /a.txt\n"),
            ("a.txt", "annotated\n"),
        ],
    );
    let tag = env.tag("annotated:1");
    let layout = env.path("layout");
    let o = env.kiln(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &tag,
        "--push",
        "-o",
        &format!("type=oci,dest={},tar=false", layout.display()),
        "--annotation",
        "org.opencontainers.image.revision=abc123",
        "--annotation",
        "manifest[linux/arm64]:only.arm=yes",
        "--annotation",
        "index:org.opencontainers.image.source=https://example.com/app",
        "--annotation",
        "manifest-descriptor:desc=1",
        "--annotation",
        "index-descriptor:entry=1",
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let index: Value = serde_json::from_slice(&raw(&format!("docker://{tag}"), None)).unwrap();
    assert_eq!(
        index["annotations"]["org.opencontainers.image.source"],
        "https://example.com/app"
    );
    let repo = env.tag("annotated");
    for entry in index["manifests"].as_array().unwrap() {
        assert_eq!(entry["annotations"]["desc"], "1", "{entry}");
        let arch = entry["platform"]["architecture"].as_str().unwrap();
        let digest = entry["digest"].as_str().unwrap();
        let manifest: Value =
            serde_json::from_slice(&raw(&format!("docker://{repo}@{digest}"), None)).unwrap();
        let annotations = &manifest["annotations"];
        assert_eq!(annotations["org.opencontainers.image.revision"], "abc123");
        let arm = if arch == "arm64" { "yes" } else { "" };
        assert_eq!(
            annotations["only.arm"].as_str().unwrap_or(""),
            arm,
            "{arch}"
        );
    }
    let listing: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(listing["manifests"][0]["annotations"]["entry"], "1");

    let single = env.kiln(&[
        "build",
        "-t",
        &tag,
        "--push",
        "--annotation",
        "index:k=v",
        ctx.to_str().unwrap(),
    ]);
    let err = assert_failed(&single);
    assert_contains_all(&err, &["--annotation index:", "makes no index"]);
    assert!(!err.contains("step"), "refused before the build: {err}");
}

/// With SOURCE_DATE_EPOCH (and buildx's `rewrite-timestamp=true`, which kiln does whenever it
/// is set), the same sources give a byte-identical OCI archive (so the same index digest) on two roots, with `--jobs 1` and with every core, from contexts whose files
/// were made in another order with other (newer) mtimes.
#[test]
fn the_same_sources_give_the_same_bytes_whatever_the_root_jobs_or_file_order() {
    let env = Env::new();
    let files = [
        (
            "Dockerfile",
            "FROM $REG/busybox\nWORKDIR /app\nCOPY . /app/\nENV A=1\n",
        ),
        ("a.txt", "a\n"),
        ("dir/b.txt", "b\n"),
        ("dir/sub/c.txt", "c\n"),
    ];
    let first = env.context("ctx-1", &files);
    let reversed: Vec<(&str, &str)> = files.iter().rev().copied().collect();
    let second = env.context("ctx-2", &reversed);
    // Other mtimes, all after the epoch: a checkout made later.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    for path in [
        "a.txt",
        "dir/b.txt",
        "dir/sub/c.txt",
        "dir/sub",
        "dir",
        "Dockerfile",
    ] {
        std::fs::File::open(second.join(path))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    let build = |ctx: &Path, n: usize, jobs: &[&str]| {
        let out = env.path(&format!("out-{n}.tar"));
        let iid = env.path(&format!("iid-{n}"));
        let mut args = vec![
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
        ];
        args.extend_from_slice(jobs);
        let dest = format!("type=oci,dest={},rewrite-timestamp=true", out.display());
        let iid_arg = iid.display().to_string();
        args.extend_from_slice(&["-o", &dest, "--iidfile", &iid_arg, ctx.to_str().unwrap()]);
        assert_ok(&kiln_with_root(&env.path(&format!("root-{n}")), &args));
        (read(&iid), std::fs::read(&out).unwrap())
    };
    let (iid_1, bytes_1) = build(&first, 1, &["--jobs", "1"]);
    let (iid_2, bytes_2) = build(&second, 2, &[]);
    assert_eq!(iid_1, iid_2);
    assert!(bytes_1 == bytes_2, "the two archives differ");
}

/// The directory a `-o type=local` tree is made in, beside its destination, is the user's
/// alone from the start: the image's setuid programs and device nodes sit in it for as long
/// as the layers take to merge, before the finished tree is closed off and renamed.
#[test]
fn a_local_output_is_merged_where_only_kiln_can_reach_it() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            // A big file, merged last, keeps the half-made tree there long enough to look at.
            "FROM $REG/busybox\nRUN head -c 100000000 /dev/zero > /zz-big\n",
        )],
    );
    let out = env.path("out");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("files");
    let log = env.path("kiln.log");
    let mut build = kiln_umask_022_command(
        &env,
        &[
            "build",
            "-o",
            &format!("type=local,dest={}", dest.display()),
            ctx.to_str().unwrap(),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    let status = loop {
        if let Some(status) = build.try_wait().unwrap() {
            break status;
        }
        for entry in std::fs::read_dir(&out).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let (true, Ok(md)) = (name.starts_with(".kiln-local-"), entry.metadata()) {
                seen.insert(name, md.mode() & 0o7777);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    assert_ok(&std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(&log).unwrap(),
    });
    assert!(
        !seen.is_empty(),
        "the merge was never seen beside {}",
        dest.display()
    );
    for (name, mode) in &seen {
        assert_eq!(
            *mode, 0o700,
            "{name} is open to other users while the layers merge"
        );
    }
    assert_eq!(list_dir(&out), ["files"]);
    assert_eq!(mode(&dest) & 0o7777, 0o700);
}

/// An image cannot hand the top of a `-o type=local` tree to another user: after a step
/// gives `/` to uid 1000 and opens it to all, the destination is still the user kiln ran as,
/// and theirs alone.
#[test]
fn a_local_output_stays_the_users_when_the_image_gives_its_root_away() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\nRUN chown 1000:1000 / && chmod 777 / && touch /x\n",
        )],
    );
    let dest = env.path("out/files");
    assert_ok(&env.kiln(&[
        "build",
        "-o",
        &format!("type=local,dest={}", dest.display()),
        ctx.to_str().unwrap(),
    ]));
    let ours = std::fs::metadata(env.path("out")).unwrap();
    let top = std::fs::symlink_metadata(&dest).unwrap();
    assert_eq!(
        (top.uid(), top.gid(), top.mode() & 0o7777),
        (ours.uid(), ours.gid(), 0o700)
    );
}

/// A tar on standard output that cannot be written (the reader went away) fails saying so,
/// not as a tar named `-`.
#[test]
fn a_tar_to_a_closed_stdout_fails_naming_standard_output() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM $REG/busybox\n")]);
    let mut build = kiln_umask_022_command(
        &env,
        &["build", "-o", "type=tar,dest=-", ctx.to_str().unwrap()],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    drop(build.stdout.take());
    let err = assert_failed(&build.wait_with_output().unwrap());
    assert_contains_all(&err, &["writing the tar to standard output"]);
}

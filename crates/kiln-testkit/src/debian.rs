//! A minimal but real Debian base image, built once per machine from the packages of the
//! mirrors apt is configured for: the essential shell and file tools, glibc, dpkg and a dpkg
//! database that lists every installed package, laid out with merged /usr as Debian bookworm
//! installs it, and slimmed as Debian's `-slim` images are.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::fixtures::{
    Apt, ArchImage, EntryKind, FIXTURE_ARCHES, IMAGE_PATH, Layer, OCI_FLAVOR, Rootfs, RootfsEntry,
    append_rootfs, cached_fixture, deb_names, gzip_layer, write_layout,
};

/// Path of the cached Debian layout; it holds the tag `latest`.
pub struct DebianFixtures {
    /// OCI image layout whose `latest` is an OCI image index over the arches in
    /// [`DEBIAN_ARCHES`].
    pub oci_layout: PathBuf,
}

/// Debian architectures of the Debian images (a subset of [`FIXTURE_ARCHES`]).
pub const DEBIAN_ARCHES: &[&str] = &["amd64", "arm64"];
/// The packages asked for; the image also holds everything they depend on.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "base-files",
    "base-passwd",
    "bash",
    "coreutils",
    "dash",
    "debianutils",
    "dpkg",
    "findutils",
    "grep",
    "gzip",
    "libc-bin",
    "libc6",
    "sed",
    "tar",
];
const DEBIAN_FORMAT: &str = "debian-v1";
/// Top-level directories that merged /usr turns into symlinks into `usr/`. Bookworm's
/// packages still ship files under them; its installers move those into `usr/`.
const ALIASED_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
const DPKG_DB: &str = "var/lib/dpkg";

/// Builds (or finds in the per-machine cache) the Debian layout: for each arch in
/// [`DEBIAN_ARCHES`], one layer with [`DEBIAN_PACKAGES`] and their Depends and Pre-Depends,
/// resolved by apt. `Env` and `Cmd` are those of Debian's official image (`bash`).
///
/// The packages are unpacked, not configured: no maintainer script runs (they would need the
/// target arch's binaries). What their first configuration makes that a build step notices is
/// made here instead: `/etc/passwd` and `/etc/group` (base-passwd), `/etc/nsswitch.conf`
/// (libc-bin), root's dotfiles, `/etc/profile`, `/usr/local` and `/run/lock` (base-files), and
/// the `awk`, `which` and `rmt` alternatives. There is no `ld.so.cache`: glibc finds its
/// libraries in the multiarch directories without one.
pub fn debian_fixtures() -> &'static DebianFixtures {
    static FIXTURES: OnceLock<DebianFixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let built = cached_fixture(DEBIAN_FORMAT, |debs, _staging, result| {
            let images: Vec<ArchImage> = FIXTURE_ARCHES
                .iter()
                .filter(|(deb_arch, _, _)| DEBIAN_ARCHES.contains(deb_arch))
                .map(|&(deb_arch, oci_arch, variant)| {
                    let layers = vec![debian_layer(debs, deb_arch)];
                    let env = [format!("PATH={IMAGE_PATH}")];
                    ArchImage::new(oci_arch, variant, layers, &env, &["bash"])
                })
                .collect();
            write_layout(&result.join(OCI_FLAVOR.layout_dir), &OCI_FLAVOR, &images);
        });
        DebianFixtures {
            oci_layout: built.join(OCI_FLAVOR.layout_dir),
        }
    })
}

fn debian_layer(debs: &Path, deb_arch: &str) -> Layer {
    let apt = Apt::update(debs, deb_arch);
    let debs = apt.download(&apt.resolve(DEBIAN_PACKAGES));
    let mut rootfs = Rootfs::new();
    let mut status: BTreeMap<String, String> = BTreeMap::new();
    for deb in &debs {
        let (package, paragraph) = unpack(&mut rootfs, deb);
        status.insert(package, paragraph);
    }
    for dir in ALIASED_DIRS {
        if rootfs.contains_key(&format!("usr/{dir}")) {
            rootfs.insert(dir.to_string(), RootfsEntry::symlink(&format!("usr/{dir}")));
        }
    }
    let status: Vec<String> = status.into_values().collect();
    let db_file = |name: &str, data: String| {
        (
            format!("{DPKG_DB}/{name}"),
            RootfsEntry::file(data.into(), 0o644),
        )
    };
    rootfs.extend([
        db_file("status", status.join("\n")),
        db_file("available", String::new()),
        db_file("arch", format!("{deb_arch}\n")),
        // Version 1 of the info dir's layout: `<package>:<arch>.list` for Multi-Arch: same.
        db_file("info/format", "1\n".to_string()),
        (
            "etc/dpkg/dpkg.cfg.d/slim".to_string(),
            RootfsEntry::file(slim_dpkg_config().into(), 0o644),
        ),
    ]);
    configure(&mut rootfs);
    check_parents(&rootfs);
    gzip_layer(
        format!("kiln-testkit: Debian rootfs of {}", deb_names(&debs)),
        |tar| append_rootfs(tar, &rootfs),
    )
}

/// Adds the files of `deb` to `rootfs` with the owners and modes the package gives them, and
/// its `var/lib/dpkg/info` files; returns its package name and its dpkg status paragraph.
fn unpack(rootfs: &mut Rootfs, deb: &Path) -> (String, String) {
    let control = control_members(deb);
    let fields = String::from_utf8_lossy(&control["control"].0).into_owned();
    let field = |name: &str| {
        fields.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim().to_string())
        })
    };
    let package = field("Package").expect("control has a Package field");
    // dpkg names a `Multi-Arch: same` package's files after the package and its arch.
    let info_name = match field("Multi-Arch").as_deref() {
        Some("same") => format!(
            "{package}:{}",
            field("Architecture").expect("control has an Architecture field")
        ),
        _ => package.clone(),
    };
    let conffiles: Vec<String> = control.get("conffiles").map_or_else(Vec::new, |(data, _)| {
        String::from_utf8_lossy(data)
            .split_whitespace()
            .filter(|word| word.starts_with('/'))
            .map(str::to_string)
            .collect()
    });
    let mut conffile_sums = Vec::new();
    let mut list = vec!["/.".to_string()];

    let data = dpkg_deb("--fsys-tarfile", deb);
    let mut archive = tar::Archive::new(&data[..]);
    let entries = archive.entries().expect("reading a .deb's data tar");
    for entry in entries {
        let mut entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", deb.display()));
        let path = package_path(&entry.path_bytes());
        if path.is_empty() {
            continue;
        }
        list.push(format!("/{path}"));
        let header = entry.header();
        // An aliased dir becomes `usr/<dir>` like its contents, and the symlink to it is made
        // once all packages are in (a release that ships the symlink itself gets the same).
        let aliased = ALIASED_DIRS.contains(&path.as_str());
        if excluded(&path) || (aliased && header.entry_type() != tar::EntryType::Directory) {
            continue;
        }
        let (mode, uid, gid) = (
            header.mode().expect("tar entry mode") & 0o7777,
            header.uid().expect("tar entry uid"),
            header.gid().expect("tar entry gid"),
        );
        let kind = match header.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .unwrap_or_else(|e| panic!("reading {path} of {}: {e}", deb.display()));
                if conffiles.contains(&format!("/{path}")) {
                    conffile_sums.push(format!(" /{path} {}", md5_hex(&data)));
                }
                EntryKind::File(data)
            }
            tar::EntryType::Symlink => EntryKind::Symlink(
                String::from_utf8_lossy(&entry.link_name_bytes().expect("symlink target"))
                    .into_owned(),
            ),
            // A hard link becomes a copy: in a layer, its target could sort after it.
            tar::EntryType::Link => {
                let target = package_path(&entry.link_name_bytes().expect("hard link target"));
                match rootfs.get(&merged_usr(&target)).map(|e| &e.kind) {
                    Some(EntryKind::File(data)) => EntryKind::File(data.clone()),
                    _ => panic!("{path} of {} links to missing {target}", deb.display()),
                }
            }
            other => panic!("{path} of {} is a {other:?}", deb.display()),
        };
        let path = merged_usr(&path);
        match rootfs.get(&path) {
            Some(existing) if matches!(existing.kind, EntryKind::Dir) => {
                assert!(matches!(kind, EntryKind::Dir), "{path} is a dir and a file");
            }
            Some(_) => panic!("{path} of {} is in another package too", deb.display()),
            None => {
                rootfs.insert(
                    path,
                    RootfsEntry {
                        kind,
                        mode,
                        uid,
                        gid,
                    },
                );
            }
        }
    }

    let info = |suffix: &str| format!("{DPKG_DB}/info/{info_name}.{suffix}");
    rootfs.insert(
        info("list"),
        RootfsEntry::file(format!("{}\n", list.join("\n")).into(), 0o644),
    );
    for (member, (data, mode)) in control {
        if member != "control" {
            rootfs.insert(info(&member), RootfsEntry::file(data, mode));
        }
    }
    // What dpkg records once a package is installed: the control fields, its status, and the
    // checksum each conffile was installed with.
    let mut paragraph = format!("Package: {package}\nStatus: install ok installed\n");
    for line in fields.trim_end().lines() {
        if !line.starts_with("Package:") {
            paragraph.push_str(line);
            paragraph.push('\n');
        }
    }
    if !conffile_sums.is_empty() {
        paragraph.push_str("Conffiles:\n");
        paragraph.push_str(&conffile_sums.join("\n"));
        paragraph.push('\n');
    }
    (package, paragraph)
}

/// A path of a .deb's tar (`./usr/bin/`) as a rootfs path (`usr/bin`).
fn package_path(raw: &[u8]) -> String {
    let path = String::from_utf8_lossy(raw);
    let path = path.strip_prefix("./").unwrap_or(&path);
    path.trim_end_matches('/').to_string()
}

/// Where merged /usr puts a package's `path`.
fn merged_usr(path: &str) -> String {
    let top = path.split('/').next().unwrap_or_default();
    if ALIASED_DIRS.contains(&top) {
        format!("usr/{path}")
    } else {
        path.to_string()
    }
}

/// dpkg `path-exclude` globs of Debian's `-slim` images: manuals, info pages, translations
/// and documentation, except copyright files (the `path-include`; SBOMs read licences from
/// them). Translations alone are more than a third of the unpacked size.
const SLIM_EXCLUDES: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/info/*",
    "/usr/share/lintian/overrides/*",
    "/usr/share/locale/*",
    "/usr/share/man/*",
];
const SLIM_INCLUDE: &str = "/usr/share/doc/*/copyright";

/// Whether the slim rules leave the package path `path` out. Like dpkg, this keeps the list
/// of the package's files whole, and keeps a copyright file's directory.
fn excluded(path: &str) -> bool {
    if let Some(doc) = path.strip_prefix("usr/share/doc/") {
        return doc
            .split_once('/')
            .is_some_and(|(_, rest)| rest != "copyright");
    }
    SLIM_EXCLUDES
        .iter()
        .any(|glob| path.starts_with(&glob[1..glob.len() - 1]))
}

/// The dpkg configuration that keeps packages a build step installs slim too.
fn slim_dpkg_config() -> String {
    let mut config =
        String::from("# Debian's -slim rules, which the kiln-testkit image follows.\n");
    for glob in SLIM_EXCLUDES {
        config.push_str(&format!("path-exclude {glob}\n"));
    }
    config.push_str(&format!("path-include {SLIM_INCLUDE}\n"));
    config
}

/// The members of `deb`'s control tar (`control`, `md5sums`, `postinst`...): data and mode.
fn control_members(deb: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let control = dpkg_deb("--ctrl-tarfile", deb);
    let mut archive = tar::Archive::new(&control[..]);
    let mut members = BTreeMap::new();
    for entry in archive.entries().expect("reading a .deb's control tar") {
        let mut entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", deb.display()));
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = package_path(&entry.path_bytes());
        let mode = entry.header().mode().expect("tar entry mode") & 0o7777;
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .unwrap_or_else(|e| panic!("reading {name} of {}: {e}", deb.display()));
        members.insert(name, (data, mode));
    }
    assert!(
        members.contains_key("control"),
        "{} has no control file",
        deb.display()
    );
    members
}

/// `dpkg-deb <flag> <deb>`'s output: `--fsys-tarfile` or `--ctrl-tarfile`.
fn dpkg_deb(flag: &str, deb: &Path) -> Vec<u8> {
    let output = Command::new("dpkg-deb")
        .arg(flag)
        .arg(deb)
        .output()
        .unwrap_or_else(|e| panic!("running dpkg-deb: {e} (run scripts/install-deps.sh)"));
    assert!(
        output.status.success(),
        "dpkg-deb {flag} {} failed: {}",
        deb.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The MD5 of `data` in hex, as dpkg records conffiles, from coreutils' `md5sum`.
fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running md5sum: {e}"));
    // md5sum reads while this writes and prints only at EOF, so the pipes cannot deadlock.
    let mut stdin = child.stdin.take().expect("md5sum stdin");
    stdin.write_all(data).expect("writing to md5sum");
    drop(stdin);
    let output = child.wait_with_output().expect("waiting for md5sum");
    assert!(output.status.success(), "md5sum failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .split_whitespace()
        .next()
        .expect("md5sum prints a sum")
        .to_string()
}

/// One `update-alternatives --install` of a maintainer script: name, link, path, priority
/// and the (name, link, path) of each slave.
struct Alternative {
    name: &'static str,
    link: &'static str,
    path: &'static str,
    priority: u32,
    slaves: &'static [(&'static str, &'static str, &'static str)],
}

const ALTERNATIVES: &[Alternative] = &[
    // mawk's postinst.
    Alternative {
        name: "awk",
        link: "/usr/bin/awk",
        path: "/usr/bin/mawk",
        priority: 5,
        slaves: &[
            (
                "awk.1.gz",
                "/usr/share/man/man1/awk.1.gz",
                "/usr/share/man/man1/mawk.1.gz",
            ),
            ("nawk", "/usr/bin/nawk", "/usr/bin/mawk"),
            (
                "nawk.1.gz",
                "/usr/share/man/man1/nawk.1.gz",
                "/usr/share/man/man1/mawk.1.gz",
            ),
        ],
    },
    // debianutils' postinst (its other slaves are translated manuals).
    Alternative {
        name: "which",
        link: "/usr/bin/which",
        path: "/usr/bin/which.debianutils",
        priority: 0,
        slaves: &[(
            "which.1.gz",
            "/usr/share/man/man1/which.1.gz",
            "/usr/share/man/man1/which.debianutils.1.gz",
        )],
    },
    // tar's postinst.
    Alternative {
        name: "rmt",
        link: "/usr/sbin/rmt",
        path: "/usr/sbin/rmt-tar",
        priority: 50,
        slaves: &[(
            "rmt.8.gz",
            "/usr/share/man/man8/rmt.8.gz",
            "/usr/share/man/man8/rmt-tar.8.gz",
        )],
    },
];

/// Makes what the packages' maintainer scripts make on a first install and a build step
/// notices (see [`debian_fixtures`]).
fn configure(rootfs: &mut Rootfs) {
    let copy = |rootfs: &mut Rootfs, from: &str, to: &str| {
        let data = match rootfs.get(from).map(|e| &e.kind) {
            Some(EntryKind::File(data)) => data.clone(),
            _ => panic!("the Debian rootfs has no {from}"),
        };
        rootfs.insert(to.to_string(), RootfsEntry::file(data, 0o644));
    };
    // base-passwd's preinst, libc-bin's postinst, then base-files' postinst.
    copy(rootfs, "usr/share/base-passwd/passwd.master", "etc/passwd");
    copy(rootfs, "usr/share/base-passwd/group.master", "etc/group");
    copy(
        rootfs,
        "usr/share/libc-bin/nsswitch.conf",
        "etc/nsswitch.conf",
    );
    copy(rootfs, "usr/share/base-files/dot.profile", "root/.profile");
    copy(rootfs, "usr/share/base-files/dot.bashrc", "root/.bashrc");
    copy(rootfs, "usr/share/base-files/profile", "etc/profile");
    copy(rootfs, "usr/share/base-files/motd", "etc/motd");
    for dir in [
        "mnt",
        "srv",
        "opt",
        "etc/opt",
        "var/opt",
        "media",
        "usr/local",
        "usr/local/share",
        "usr/local/share/man",
        "usr/local/bin",
        "usr/local/games",
        "usr/local/lib",
        "usr/local/include",
        "usr/local/sbin",
        "usr/local/src",
        "usr/local/etc",
    ] {
        rootfs
            .entry(dir.to_string())
            .or_insert_with(|| RootfsEntry::dir(0o755));
    }
    let mail = group_id(rootfs, "mail");
    let utmp = group_id(rootfs, "utmp");
    rootfs.insert(
        "var/mail".into(),
        RootfsEntry {
            gid: mail,
            ..RootfsEntry::dir(0o2775)
        },
    );
    rootfs.insert("run/lock".into(), RootfsEntry::dir(0o1777));
    for (link, target) in [
        ("var/spool/mail", "../mail"),
        ("var/run", "/run"),
        ("var/lock", "/run/lock"),
        ("usr/local/man", "share/man"),
        ("etc/dpkg/origins/default", "debian"),
    ] {
        rootfs.insert(link.into(), RootfsEntry::symlink(target));
    }
    for (log, mode) in [("wtmp", 0o664), ("btmp", 0o660), ("lastlog", 0o664)] {
        rootfs.insert(
            format!("var/log/{log}"),
            RootfsEntry {
                gid: utmp,
                ..RootfsEntry::file(Vec::new(), mode)
            },
        );
    }
    for alternative in ALTERNATIVES {
        install_alternative(rootfs, alternative);
    }
}

/// The links of `alternative` (a slave only if its path exists, as update-alternatives skips
/// the others), and its state file in `var/lib/dpkg/alternatives`.
fn install_alternative(rootfs: &mut Rootfs, alternative: &Alternative) {
    let exists = |rootfs: &Rootfs, path: &str| rootfs.contains_key(&merged_usr(&path[1..]));
    assert!(
        exists(rootfs, alternative.path),
        "the Debian rootfs has no {}",
        alternative.path
    );
    let mut state = format!("auto\n{}\n", alternative.link);
    let mut choice = format!("{}\n{}\n", alternative.path, alternative.priority);
    let master = (alternative.name, alternative.link, alternative.path);
    for (i, &(name, link, path)) in std::iter::once(&master)
        .chain(alternative.slaves)
        .enumerate()
    {
        if i > 0 {
            state.push_str(&format!("{name}\n{link}\n"));
            choice.push_str(&format!("{path}\n"));
        }
        if exists(rootfs, path) {
            let managed = format!("/etc/alternatives/{name}");
            rootfs.insert(link[1..].to_string(), RootfsEntry::symlink(&managed));
            rootfs.insert(managed[1..].to_string(), RootfsEntry::symlink(path));
        }
    }
    rootfs.insert(
        format!("{DPKG_DB}/alternatives/{}", alternative.name),
        RootfsEntry::file(format!("{state}\n{choice}\n").into(), 0o644),
    );
}

/// The gid of `group` in the rootfs's `/etc/group`.
fn group_id(rootfs: &Rootfs, group: &str) -> u64 {
    let Some(EntryKind::File(data)) = rootfs.get("etc/group").map(|e| &e.kind) else {
        panic!("the Debian rootfs has no etc/group");
    };
    String::from_utf8_lossy(data)
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&group)).then(|| fields.get(2)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("etc/group has no {group}"))
}

/// Checks that every entry's parent is a directory of the rootfs, so the layer unpacks
/// without a runtime creating directories or following a symlink.
fn check_parents(rootfs: &Rootfs) {
    for path in rootfs.keys() {
        if let Some((parent, _)) = path.rsplit_once('/') {
            assert!(
                matches!(rootfs.get(parent).map(|e| &e.kind), Some(EntryKind::Dir)),
                "{path} of the Debian rootfs is not inside a directory"
            );
        }
    }
}

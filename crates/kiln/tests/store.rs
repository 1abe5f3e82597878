//! The store (kiln's root), seen from outside: who else on the machine can reach the files
//! that images put there, and what kiln says about a root that others can enter.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;

const NOBODY: u32 = 65534;

#[test]
fn image_files_in_the_store_are_out_of_other_users_reach() {
    let env = Env::new();
    // Everything above the store is open to everyone, so only the store's own modes count.
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = parent.path().join("store");
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             RUN cp /bin/busybox /kiln-suid && chmod 4755 /kiln-suid\n",
        )],
    );
    let o = kiln_with_root(&root, &["build", ctx.to_str().unwrap()]);
    assert_ok(&o);
    let suid = std::fs::read_dir(root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("kiln-suid"))
        .find(|p| p.exists())
        .expect("the step's layer dir holds the setuid file");
    assert_eq!(std::fs::metadata(&suid).unwrap().mode() & 0o7777, 0o4755);

    let as_nobody = |program: &Path, args: &[&str]| {
        Command::new(program)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
    };
    let stat = as_nobody(Path::new("stat"), &[suid.to_str().unwrap()]).unwrap();
    assert!(!stat.status.success(), "nobody can stat {}", suid.display());
    assert!(
        stderr(&stat).contains("Permission denied"),
        "{}",
        stderr(&stat)
    );
    let exec = as_nobody(&suid, &["true"]);
    assert_eq!(
        exec.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::PermissionDenied),
        "nobody could run the setuid file"
    );
    assert!(!stderr(&o).contains("can be entered"), "{}", stderr(&o));
    for dir in ["", "blobs", "layers", "tmp", "cache"] {
        assert_eq!(mode(&root.join(dir)), 0o700, "{dir:?}");
    }
}

#[test]
fn a_root_others_can_enter_gets_a_warning_and_keeps_its_mode() {
    let env = Env::new();
    let root = env.path("shared-root");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM $REG/busybox\n")]);
    // An output, so that the one warning is about the root.
    let dest = format!("type=oci,dest={}", env.path("out.tar").display());
    let o = kiln_with_root(
        &root,
        &[
            "build",
            "--progress",
            "quiet",
            "-o",
            &dest,
            ctx.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    let canonical = root.canonicalize().unwrap();
    let warnings: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("[warning]"))
        .map(str::to_string)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_contains_all(
        &warnings[0],
        &[
            &format!(
                "the kiln root {} can be entered by other users",
                canonical.display()
            ),
            &format!("`chmod 700 {}`", canonical.display()),
        ],
    );
    assert_eq!(
        mode(&root),
        0o755,
        "kiln changed the mode of the user's dir"
    );
}

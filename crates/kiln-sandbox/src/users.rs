//! Resolves a Dockerfile `USER` value through the rootfs's /etc/passwd and /etc/group, and
//! reads those files as kiln reads them everywhere (RUN here, `COPY --chown` in kiln-build):
//! regular files of bounded size only, so that an image cannot hang or exhaust kiln with a
//! FIFO, a device or an endless file there.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest passwd or group file kiln reads. Real ones are kilobytes; this leaves room for
/// images with many thousands of accounts.
pub const ACCOUNT_FILE_LIMIT: u64 = 4 << 20;

/// Why a passwd or group file could not be read. The messages name no path: callers add the
/// image path they asked for.
#[derive(Debug, thiserror::Error)]
pub enum AccountFileError {
    #[error("is a {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("is larger than {ACCOUNT_FILE_LIMIT} bytes")]
    TooLarge,
    #[error("cannot be read: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a passwd or group file; `Ok(None)` when there is none. `path` itself must not be a
/// symlink (resolve it first, inside the rootfs): it is opened with `O_NOFOLLOW`. Anything but
/// a regular file is refused before it is opened (opening a FIFO blocks, opening a device can
/// act on it), and checked again on the open file; more than [`ACCOUNT_FILE_LIMIT`] bytes is
/// an error. Bytes that are not UTF-8 are replaced, as the parsers only look for ASCII.
pub fn read_account_file(path: &Path) -> Result<Option<String>, AccountFileError> {
    let kind = match path.symlink_metadata() {
        Ok(meta) => meta.file_type(),
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    refuse_non_regular(kind)?;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    // The file may have been replaced since the look above.
    refuse_non_regular(file.metadata()?.file_type())?;
    let mut bytes = Vec::new();
    file.take(ACCOUNT_FILE_LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > ACCOUNT_FILE_LIMIT {
        return Err(AccountFileError::TooLarge);
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn refuse_non_regular(kind: std::fs::FileType) -> Result<(), AccountFileError> {
    let kind = match kind {
        kind if kind.is_file() => return Ok(()),
        kind if kind.is_dir() => "directory",
        kind if kind.is_symlink() => "symlink",
        kind if kind.is_fifo() => "FIFO",
        kind if kind.is_char_device() => "character device",
        kind if kind.is_block_device() => "block device",
        kind if kind.is_socket() => "socket",
        _ => "special file",
    };
    Err(AccountFileError::NotRegular { kind })
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, primary gid included.
    pub groups: Vec<u32>,
    /// The user's home directory from /etc/passwd; `/` for a uid it does not list (runc's
    /// default).
    pub home: String,
}

/// One line of /etc/passwd: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, PartialEq, Eq)]
pub struct PasswdEntry<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a str,
}

/// One line of /etc/group: `name:password:gid:member,member`.
#[derive(Debug, PartialEq, Eq)]
pub struct GroupEntry<'a> {
    pub name: &'a str,
    pub gid: u32,
    pub members: Vec<&'a str>,
}

/// The entries of a passwd file; lines without a numeric uid and gid are skipped.
pub fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        Some(PasswdEntry {
            name: fields.first()?,
            uid: fields.get(2)?.parse().ok()?,
            gid: fields.get(3)?.parse().ok()?,
            home: fields.get(5).copied().unwrap_or(""),
        })
    })
}

/// The entries of a group file; lines without a numeric gid are skipped.
pub fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        Some(GroupEntry {
            name: fields.first()?,
            gid: fields.get(2)?.parse().ok()?,
            members: fields
                .get(3)
                .map(|members| members.split(',').filter(|m| !m.is_empty()).collect())
                .unwrap_or_default(),
        })
    })
}

/// `user` is `name`, `uid`, `name:group` or `uid:gid`; empty means root. Like Docker: a numeric
/// uid absent from passwd runs with gid 0, a name absent from passwd or group is an error, and
/// supplementary groups come from /etc/group only when no group is given.
pub(crate) fn resolve(user: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((user_part, group_part)) => (user_part, Some(group_part)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let (uid, entry) = match user_part.parse::<u32>() {
        Ok(uid) => (uid, passwd_entries(passwd).find(|entry| entry.uid == uid)),
        Err(_) => {
            let entry = passwd_entries(passwd)
                .find(|entry| entry.name == user_part)
                .ok_or_else(|| {
                    format!("unable to find user {user_part}: no matching entries in passwd file")
                })?;
            (entry.uid, Some(entry))
        }
    };
    let primary_gid = entry.as_ref().map_or(0, |entry| entry.gid);
    let home = entry.as_ref().map_or("/", |entry| entry.home).to_string();

    match group_part {
        Some(group_part) => {
            let gid = match group_part.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_entries(group)
                    .find(|entry| entry.name == group_part)
                    .ok_or_else(|| {
                        format!(
                            "unable to find group {group_part}: no matching entries in group file"
                        )
                    })?
                    .gid,
            };
            Ok(Identity {
                uid,
                gid,
                groups: vec![gid],
                home,
            })
        }
        None => {
            let mut groups = vec![primary_gid];
            if let Some(entry) = &entry {
                for member_of in group_entries(group).filter(|g| g.members.contains(&entry.name)) {
                    if !groups.contains(&member_of.gid) {
                        groups.push(member_of.gid);
                    }
                }
            }
            Ok(Identity {
                uid,
                gid: primary_gid,
                groups,
                home,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ACCOUNT_FILE_LIMIT, AccountFileError, Identity, read_account_file, resolve};

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          builder:x:1000:1000::/home/builder:/bin/sh\n\
                          nobody:x:65534:65534::/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:builder,other\nbuilder:x:1000:\nnogroup:x:65534:\n";

    fn identity(uid: u32, gid: u32, groups: &[u32], home: &str) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.to_string(),
        }
    }

    #[test]
    fn empty_user_is_root() {
        assert_eq!(
            resolve("", PASSWD, GROUP),
            Ok(identity(0, 0, &[0], "/root"))
        );
    }

    #[test]
    fn name_gets_primary_and_member_groups() {
        assert_eq!(
            resolve("builder", PASSWD, GROUP),
            Ok(identity(1000, 1000, &[1000, 10], "/home/builder"))
        );
    }

    #[test]
    fn numeric_uid_in_passwd_gets_its_groups() {
        assert_eq!(
            resolve("1000", PASSWD, GROUP),
            Ok(identity(1000, 1000, &[1000, 10], "/home/builder"))
        );
    }

    #[test]
    fn numeric_uid_absent_from_passwd_runs_with_gid_0() {
        assert_eq!(
            resolve("4321", PASSWD, GROUP),
            Ok(identity(4321, 0, &[0], "/"))
        );
    }

    #[test]
    fn explicit_group_by_name_or_number_replaces_supplementary_groups() {
        assert_eq!(
            resolve("builder:nogroup", PASSWD, GROUP),
            Ok(identity(1000, 65534, &[65534], "/home/builder"))
        );
        assert_eq!(
            resolve("77:88", PASSWD, GROUP),
            Ok(identity(77, 88, &[88], "/"))
        );
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let err = resolve("ghost", PASSWD, GROUP).unwrap_err();
        assert!(err.contains("ghost"), "{err}");
        let err = resolve("builder:ghosts", PASSWD, GROUP).unwrap_err();
        assert!(err.contains("ghosts"), "{err}");
    }

    #[test]
    fn account_files_are_read_only_when_regular_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("passwd"), PASSWD).unwrap();
        assert_eq!(
            read_account_file(&path("passwd")).unwrap().as_deref(),
            Some(PASSWD)
        );
        assert!(read_account_file(&path("missing")).unwrap().is_none());

        nix::unistd::mkfifo(
            &path("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink("passwd", path("link")).unwrap();
        std::fs::create_dir(path("dir")).unwrap();
        for (name, kind) in [("fifo", "FIFO"), ("link", "symlink"), ("dir", "directory")] {
            match read_account_file(&path(name)) {
                Err(err @ AccountFileError::NotRegular { .. }) => {
                    assert_eq!(err.to_string(), format!("is a {kind}, not a regular file"));
                }
                other => panic!("{name}: expected NotRegular, got {other:?}"),
            }
        }

        let big = std::fs::File::create(path("big")).unwrap();
        big.set_len(ACCOUNT_FILE_LIMIT + 1).unwrap();
        assert!(matches!(
            read_account_file(&path("big")),
            Err(AccountFileError::TooLarge)
        ));
        big.set_len(ACCOUNT_FILE_LIMIT).unwrap();
        assert_eq!(
            read_account_file(&path("big"))
                .unwrap()
                .map(|text| text.len() as u64),
            Some(ACCOUNT_FILE_LIMIT)
        );
    }
}

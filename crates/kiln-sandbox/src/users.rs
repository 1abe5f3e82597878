//! Resolves a Dockerfile `USER` value through the rootfs's /etc/passwd and /etc/group.

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

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
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

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
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
    use super::{Identity, resolve};

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
}

//! `--user` resolution against the image's /etc/passwd and /etc/group,
//! following runc's rules (which docker uses).
//!
//! * empty or absent: root (uid 0, gid 0);
//! * `name` or `uid`: the passwd entry gives uid, primary gid and home; a
//!   numeric uid without an entry runs with gid 0 and home `/`;
//! * `…:group` or `…:gid`: that primary group, and no supplementary groups;
//! * without a group, the user's supplementary groups are every /etc/group
//!   entry listing the user's name as a member.
//!
//! Parsing is pure: the caller reads the files (bounded) and passes the text.

use std::path::Path;

use crate::Error;

/// The identity the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, passed to setgroups(2) (may be empty).
    pub groups: Vec<u32>,
    /// Home directory from /etc/passwd, used for `HOME` when unset.
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
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves `user` (`None` = root) with the image's passwd and group text;
/// `passwd_path`/`group_path` only name the files in errors.
pub(crate) fn resolve(
    user: Option<&str>,
    passwd: &str,
    group: &str,
    passwd_path: &Path,
    group_path: &Path,
) -> Result<Identity, Error> {
    let spec = user.unwrap_or("");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let numeric_uid = user_part.parse::<u32>().ok();
    let entry = passwd_entries(passwd).find(|e| match numeric_uid {
        Some(uid) => e.uid == uid,
        None => e.name == user_part,
    });
    let (uid, mut gid, home, name) = match (entry, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_owned(), Some(e.name.to_owned())),
        (None, Some(uid)) => (uid, 0, "/".to_owned(), None),
        (None, None) => {
            return Err(Error::UnknownUser {
                what: "user",
                name: user_part.to_owned(),
                path: passwd_path.to_owned(),
            });
        }
    };

    let mut groups = Vec::new();
    match group_part.filter(|g| !g.is_empty()) {
        Some(g) => {
            gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    group_entries(group)
                        .find(|e| e.name == g)
                        .ok_or_else(|| Error::UnknownUser {
                            what: "group",
                            name: g.to_owned(),
                            path: group_path.to_owned(),
                        })?
                        .gid
                }
            };
        }
        None => {
            if let Some(name) = &name {
                for e in group_entries(group) {
                    if e.members.contains(&name.as_str()) && !groups.contains(&e.gid) {
                        groups.push(e.gid);
                    }
                }
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken line\n\
        bad:x:notanumber:1:x:/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        app:x:1000:\n\
        audio:x:29:app,other\n\
        video:x:44:other\n\
        staff:x:50:app\n";

    fn id(uid: u32, gid: u32, groups: &[u32], home: &str) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.to_owned(),
        }
    }

    #[test]
    fn resolves_like_runc() {
        let cases: &[(Option<&str>, Option<Identity>)] = &[
            (None, Some(id(0, 0, &[], "/root"))),
            (Some(""), Some(id(0, 0, &[], "/root"))),
            (Some("app"), Some(id(1000, 1000, &[29, 50], "/home/app"))),
            (Some("1000"), Some(id(1000, 1000, &[29, 50], "/home/app"))),
            (Some("app:audio"), Some(id(1000, 29, &[], "/home/app"))),
            (Some("app:7"), Some(id(1000, 7, &[], "/home/app"))),
            (Some("4242"), Some(id(4242, 0, &[], "/"))),
            (Some("4242:4343"), Some(id(4242, 4343, &[], "/"))),
            (Some("nobody"), None),
            (Some("app:nogroup"), None),
            (Some("bad"), None),
        ];
        for (user, want) in cases {
            let got = resolve(
                *user,
                PASSWD,
                GROUP,
                Path::new("/etc/passwd"),
                Path::new("/etc/group"),
            )
            .ok();
            assert_eq!(&got, want, "{user:?}");
        }
    }

    #[test]
    fn unknown_user_error_names_user_and_file() {
        let err = resolve(
            Some("ghost"),
            PASSWD,
            GROUP,
            Path::new("/img/etc/passwd"),
            Path::new("/g"),
        )
        .expect_err("ghost is unknown");
        let msg = err.to_string();
        assert!(
            msg.contains("ghost") && msg.contains("/img/etc/passwd"),
            "{msg}"
        );
    }
}

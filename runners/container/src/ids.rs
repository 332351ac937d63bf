//! Started by root, the sandbox must not run the lifecycle as host root (uid 0
//! without capabilities may still write /proc/sys, leave setuid-root files on the
//! host and is root to every host service that trusts `SO_PEERCRED`). The build
//! user is mapped to an unprivileged host id instead, and the writable directories
//! are lent to that id for the run.
//!
//! The id is the first of root's subordinate ids (a `root:` or `0:` line of
//! /etc/subuid and /etc/subgid: an administrator chooses it by adding such a line),
//! else [`FALLBACK_ID`], far above the ids of real users.

use std::io;
use std::path::PathBuf;

pub(crate) use locald_core::fsutil::chown_tree;

use crate::config::HostIds;

/// The host uid and gid of the build when /etc/subuid or /etc/subgid has no range
/// for root.
pub(crate) const FALLBACK_ID: u32 = 2_147_000_000;

/// The first id of root's range in a subordinate id file (`name:first:count`
/// lines, `name` a user name or a uid).
pub(crate) fn first_subordinate_id(text: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (name, first, count) = (fields.next()?, fields.next()?, fields.next()?);
        if name != "root" && name != "0" {
            return None;
        }
        let first = first.parse::<u32>().ok()?;
        let count = count.parse::<u32>().ok()?;
        // Never root itself, never the invalid id -1.
        (count > 0 && first != 0 && first != u32::MAX).then_some(first)
    })
}

/// The host ids a build started by root runs as; `None` when they do not exist
/// here (root of a user namespace that maps only some ids, as `unshare -r` or a
/// rootless container, is no host root: the sandbox maps it alone, as any user).
pub(crate) fn for_root() -> Option<HostIds> {
    let first = |file: &str| {
        std::fs::read_to_string(file)
            .ok()
            .as_deref()
            .and_then(first_subordinate_id)
            .unwrap_or(FALLBACK_ID)
    };
    let ids = HostIds {
        uid: first("/etc/subuid"),
        gid: first("/etc/subgid"),
    };
    let mapped =
        |file: &str, id: u32| std::fs::read_to_string(file).is_ok_and(|map| id_mapped(&map, id));
    (mapped("/proc/self/uid_map", ids.uid) && mapped("/proc/self/gid_map", ids.gid)).then_some(ids)
}

/// Whether an id map (`/proc/self/uid_map`: `inside outside count` lines) has `id`.
fn id_mapped(map: &str, id: u32) -> bool {
    map.lines().any(|line| {
        let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().ok());
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Some(inside)), Some(Some(_)), Some(Some(count))) => {
                (inside..inside + count).contains(&u64::from(id))
            }
            _ => false,
        }
    })
}

/// Directories lent to the build's host ids: each one and everything in it
/// belongs to them until [`Lent::give_back`] (or the drop) gives the trees back to
/// the owner each directory had. Root's `chown` also clears the setuid and setgid
/// bits and the file capabilities the build may have set.
pub(crate) struct Lent {
    /// Each directory and its owner before the build.
    dirs: Vec<(PathBuf, u32, u32)>,
    given_back: bool,
}

impl Lent {
    /// Lend `dirs` to `ids`.
    pub(crate) fn lend(dirs: &[PathBuf], ids: HostIds) -> Result<Self, (PathBuf, io::Error)> {
        let mut lent = Lent {
            dirs: Vec::new(),
            given_back: false,
        };
        for dir in dirs {
            let owner = rustix::fs::lstat(dir).map_err(|e| (dir.clone(), e.into()))?;
            lent.dirs.push((dir.clone(), owner.st_uid, owner.st_gid));
            chown_tree(dir, ids.uid, ids.gid).map_err(|e| (dir.clone(), e))?;
        }
        Ok(lent)
    }

    /// Give every directory back to its owner; the first failure is returned (after
    /// trying the others).
    pub(crate) fn give_back(mut self) -> Result<(), (PathBuf, io::Error)> {
        self.give_back_all()
    }

    fn give_back_all(&mut self) -> Result<(), (PathBuf, io::Error)> {
        self.given_back = true;
        let mut first_error = None;
        for (dir, uid, gid) in &self.dirs {
            if let Err(e) = chown_tree(dir, *uid, *gid) {
                first_error.get_or_insert((dir.clone(), e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.given_back {
            return;
        }
        if let Err((dir, e)) = self.give_back_all() {
            tracing::warn!(
                "could not give {} back to its owner after the build: {e}",
                dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ids() {
        let cases = [
            ("root:100000:65536\n", Some(100000)),
            ("lbtest:100000:65536\n0:300000:10\n", Some(300000)),
            ("lbtest:100000:65536\n", None),
            ("root:0:65536\n", None),
            ("root:100000:0\nroot:5:1\n", Some(5)),
            ("root:4294967295:1\n", None),
            ("root:x:1\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(first_subordinate_id(text), want, "{text:?}");
        }
    }

    #[test]
    fn mapped_ids() {
        let host = "         0          0 4294967295\n";
        let unshared = "         0       1001          1\n";
        let rootless = "0 1001 1\n1 100000 65536\n";
        assert!(id_mapped(host, FALLBACK_ID));
        assert!(!id_mapped(unshared, FALLBACK_ID));
        assert!(!id_mapped(rootless, 100000));
        assert!(id_mapped(rootless, 65536));
        assert!(!id_mapped(rootless, 65537));
        assert!(!id_mapped("", 0));
    }
}

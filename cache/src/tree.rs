//! Fingerprints of extracted trees, so a cached tree that was changed on disk is
//! noticed instead of silently used.
//!
//! Three checks, from cheap to thorough:
//!
//! - the *seal* ([`seal`]): the status (inode, type, mode, size, change times)
//!   of the tree's root and the entries at most two levels below it, at most
//!   [`SEAL_ENTRIES`] of them: a few dozen `lstat`s whatever the tree's size.
//!   Adding, removing or renaming anything in those directories, or changing
//!   one of those entries, breaks it; a change deeper down does not.
//! - the metadata fingerprint: a walk with one `lstat` per entry (paths, types,
//!   permission bits, sizes, link targets), no reads. Done when the tree is
//!   made, when its seal is broken, when its last walk is older than the
//!   cache's walk interval, and on `--pull always`.
//! - the content fingerprint also hashes every file: `locald builder verify`.

use std::ffi::{CStr, CString, OsStr};
use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use locald_core::digest::{Algorithm, Hasher};
use locald_core::error::{Error, Result};

/// What a walk of a tree found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// Entries below the root.
    pub entries: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    /// Bytes the tree takes on disk.
    pub disk_bytes: u64,
    /// Hash over every entry's path, type, permission bits, size and link target.
    pub meta: String,
    /// Hash over the metadata and every file's content, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// How many entries the seal covers at most.
pub const SEAL_ENTRIES: usize = 512;

/// The seal of the tree at `root`: a hash over the status of the root and of the
/// entries one and two levels below it (in name order, at most
/// [`SEAL_ENTRIES`]), change times included, so that anything done to them
/// since (even put back as it was) breaks it. Costs the same for a tree of a
/// hundred entries and of a million.
pub fn seal(root: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut count = 0usize;
    let mut stamp = |rel: &[u8], m: &std::fs::Metadata| {
        hasher.update(rel);
        hasher.update(
            format!(
                "\0{} {} {:o} {} {} {}.{} {}.{}\n",
                m.dev(),
                m.ino(),
                m.mode(),
                m.nlink(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            )
            .as_bytes(),
        );
    };
    let meta = std::fs::symlink_metadata(root).map_err(Error::io("inspect", root))?;
    if !meta.is_dir() {
        return Err(Error::io("seal", root)(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    stamp(b"", &meta);
    let sorted = |dir: &Path| -> Result<Vec<std::ffi::OsString>> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(Error::io("read directory", dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(Error::io("read directory", dir))?;
        names.sort();
        Ok(names)
    };
    let mut level = vec![(root.to_path_buf(), Vec::new())];
    for _depth in 0..2 {
        let mut next = Vec::new();
        for (dir, rel) in level {
            for name in sorted(&dir)? {
                if count == SEAL_ENTRIES {
                    return Ok(hasher.finish().hex().to_owned());
                }
                count += 1;
                let path = dir.join(&name);
                let m = std::fs::symlink_metadata(&path).map_err(Error::io("inspect", &path))?;
                let mut r: Vec<u8> = rel.clone();
                r.push(b'/');
                r.extend_from_slice(name.as_bytes());
                stamp(&r, &m);
                if m.is_dir() {
                    next.push((path, r));
                }
            }
        }
        level = next;
    }
    Ok(hasher.finish().hex().to_owned())
}

/// Walks `root` (never following symlinks) and fingerprints it; with `content`,
/// every regular file is read and hashed too.
pub fn fingerprint(root: &Path, content: bool) -> Result<Fingerprint> {
    let mut walk = Walk {
        meta: Hasher::new(Algorithm::Sha256),
        content: content.then(|| Hasher::new(Algorithm::Sha256)),
        entries: 0,
        bytes: 0,
        disk_bytes: 0,
        buf: if content {
            vec![0; 1 << 20]
        } else {
            Vec::new()
        },
        links: std::collections::HashMap::new(),
    };
    let meta = std::fs::symlink_metadata(root).map_err(Error::io("inspect", root))?;
    if !meta.is_dir() {
        return Err(Error::io("walk", root)(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    let top = rustix::fs::open(root, DIR_FLAGS, Mode::empty())
        .map_err(|e| Error::io("open directory", root)(e.into()))?;
    walk.dir(top, root, &mut Vec::new())?;
    Ok(Fingerprint {
        entries: walk.entries,
        bytes: walk.bytes,
        disk_bytes: walk.disk_bytes,
        meta: walk.meta.finish().hex().to_owned(),
        content: walk.content.map(|h| h.finish().hex().to_owned()),
    })
}

struct Walk {
    meta: Hasher,
    content: Option<Hasher>,
    entries: u64,
    bytes: u64,
    disk_bytes: u64,
    buf: Vec<u8>,
    /// The first path seen of each multiply-linked inode.
    links: std::collections::HashMap<(u64, u64), Vec<u8>>,
}

impl Walk {
    fn feed(&mut self, bytes: &[u8]) {
        self.meta.update(bytes);
        if let Some(c) = &mut self.content {
            c.update(bytes);
        }
    }

    /// Walks the directory open as `fd` (at `dir`, named in errors only): every
    /// entry is looked at relative to its directory's descriptor, never through
    /// a path walked again from the root, and never through a symlink.
    fn dir(&mut self, fd: OwnedFd, dir: &Path, rel: &mut Vec<u8>) -> Result<()> {
        let mut stream = rustix::fs::Dir::new(fd).map_err(io_err("read directory", dir))?;
        let mut names: Vec<CString> = Vec::new();
        while let Some(entry) = stream.read() {
            let entry = entry.map_err(io_err("read directory", dir))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let fd = stream.fd().map_err(io_err("read directory", dir))?;
        for name in names {
            let path = || dir.join(OsStr::from_bytes(name.as_bytes()));
            let m = rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io("inspect", path())(e.into()))?;
            let len = rel.len();
            rel.push(b'/');
            rel.extend_from_slice(name.as_bytes());
            self.entries += 1;
            self.disk_bytes += (m.st_blocks as u64) * 512;
            let ft = FileType::from_raw_mode(m.st_mode);
            let kind = match ft {
                FileType::Directory => b'd',
                FileType::Symlink => b'l',
                FileType::RegularFile => b'f',
                _ => b'o',
            };
            let mode = m.st_mode & 0o7777;
            let size = m.st_size as u64;
            let mut record = Vec::with_capacity(rel.len() + 48);
            record.extend_from_slice(rel);
            record.push(0);
            record.push(kind);
            record.extend_from_slice(format!("{mode:o}").as_bytes());
            if ft == FileType::RegularFile {
                record.extend_from_slice(format!(" {size}").as_bytes());
                self.bytes += size;
            }
            if ft == FileType::Symlink {
                let target = rustix::fs::readlinkat(fd, &name, Vec::new())
                    .map_err(|e| Error::io("read link", path())(e.into()))?;
                record.push(b' ');
                record.extend_from_slice(target.as_bytes());
            }
            record.push(b'\n');
            self.feed(&record);
            if ft == FileType::RegularFile && self.content.is_some() {
                // A hard-linked file is read once; its other names hash as links
                // to the first (the link structure is part of the tree).
                let first = (m.st_nlink > 1)
                    .then(|| {
                        self.links
                            .entry((m.st_dev as u64, m.st_ino as u64))
                            .or_insert_with(|| rel.clone())
                            .clone()
                    })
                    .filter(|first| first != rel);
                match first {
                    Some(first) => {
                        if let Some(c) = &mut self.content {
                            c.update(b"\0link\0");
                            c.update(&first);
                        }
                    }
                    None => self.file(fd, &name, &path())?,
                }
            }
            if ft == FileType::Directory {
                let sub = rustix::fs::openat(fd, &name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| Error::io("open directory", path())(e.into()))?;
                self.dir(sub, &path(), rel)?;
            }
            rel.truncate(len);
        }
        Ok(())
    }

    fn file(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<()> {
        let Some(content) = &mut self.content else {
            return Ok(());
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut f = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => std::fs::File::from(fd),
            // A file the image made unreadable (mode 000) for an unprivileged
            // owner: its metadata is still covered.
            Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
                content.update(b"\0unreadable\0");
                return Ok(());
            }
            Err(e) => return Err(Error::io("open", path)(e.into())),
        };
        loop {
            let n = f.read(&mut self.buf).map_err(Error::io("read", path))?;
            if n == 0 {
                return Ok(());
            }
            content.update(&self.buf[..n]);
        }
    }
}

/// How directories are opened: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(rustix::io::Errno) -> Error + 'a {
    move |e| Error::io(op, path)(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("cnb/lifecycle")).unwrap();
        std::fs::write(d.path().join("cnb/lifecycle/creator"), b"#!/bin/sh\n").unwrap();
        std::fs::write(d.path().join("cnb/order.toml"), b"[[order]]\n").unwrap();
        std::os::unix::fs::symlink("lifecycle/creator", d.path().join("cnb/c")).unwrap();
        d
    }

    #[test]
    fn the_seal_covers_two_levels() {
        let t = tree();
        let s0 = seal(t.path()).unwrap();
        assert_eq!(seal(t.path()).unwrap(), s0, "stable");
        // A name added or removed one or two levels down breaks it.
        std::fs::write(t.path().join("cnb/new"), b"x").unwrap();
        let s1 = seal(t.path()).unwrap();
        assert_ne!(s1, s0);
        std::fs::remove_file(t.path().join("cnb/new")).unwrap();
        let s2 = seal(t.path()).unwrap();
        assert_ne!(s2, s1);
        assert_ne!(s2, s0, "put back as it was: the change times still differ");
        // A mode changed two levels down breaks it.
        let order = t.path().join("cnb/order.toml");
        std::fs::set_permissions(&order, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s3 = seal(t.path()).unwrap();
        assert_ne!(s3, s2);
        // Three levels down it does not: the walk finds that.
        let deep = t.path().join("cnb/lifecycle/creator");
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(seal(t.path()).unwrap(), s3);
        // Not a directory: an error.
        assert!(seal(&order).is_err());
    }

    #[test]
    fn the_seal_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..SEAL_ENTRIES + 10 {
            std::fs::write(d.path().join(format!("f{i:05}")), b"").unwrap();
        }
        let s0 = seal(d.path()).unwrap();
        // The last names (in order) are past the bound.
        std::fs::write(d.path().join(format!("f{:05}", SEAL_ENTRIES + 5)), b"x").unwrap();
        assert_eq!(seal(d.path()).unwrap(), s0);
        std::fs::write(d.path().join("f00000"), b"x").unwrap();
        assert_ne!(seal(d.path()).unwrap(), s0);
    }

    #[test]
    fn same_tree_same_fingerprint() {
        let (a, b) = (tree(), tree());
        let fa = fingerprint(a.path(), true).unwrap();
        let fb = fingerprint(b.path(), true).unwrap();
        assert_eq!(fa.meta, fb.meta);
        assert_eq!(fa.content, fb.content);
        assert_eq!(fa.entries, 5);
        assert_eq!(fa.bytes, 10 + 10);
        assert_eq!(fingerprint(a.path(), false).unwrap().content, None);
    }

    #[test]
    fn changes_are_seen() {
        let base = tree();
        let f0 = fingerprint(base.path(), true).unwrap();
        type Change = fn(&Path);
        let changes: [(&str, Change); 5] = [
            ("delete", |p| {
                std::fs::remove_file(p.join("cnb/order.toml")).unwrap()
            }),
            ("add", |p| std::fs::write(p.join("cnb/new"), b"").unwrap()),
            ("chmod", |p| {
                std::fs::set_permissions(
                    p.join("cnb/order.toml"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap()
            }),
            ("retarget", |p| {
                std::fs::remove_file(p.join("cnb/c")).unwrap();
                std::os::unix::fs::symlink("/etc/passwd", p.join("cnb/c")).unwrap();
            }),
            ("grow", |p| {
                std::fs::write(p.join("cnb/order.toml"), b"[[order]]\n\n").unwrap()
            }),
        ];
        for (what, change) in changes {
            let t = tree();
            change(t.path());
            let f = fingerprint(t.path(), false).unwrap();
            assert_ne!(f.meta, f0.meta, "{what}");
        }
        // Same size, other bytes: only the content fingerprint sees it.
        let t = tree();
        std::fs::write(t.path().join("cnb/order.toml"), b"[[ORDER]]\n").unwrap();
        let f = fingerprint(t.path(), true).unwrap();
        assert_eq!(f.meta, f0.meta);
        assert_ne!(f.content, f0.content);
    }

    #[test]
    fn hard_links_are_part_of_the_content_fingerprint() {
        let (a, b) = (tree(), tree());
        std::fs::hard_link(a.path().join("cnb/order.toml"), a.path().join("cnb/o2")).unwrap();
        std::fs::copy(b.path().join("cnb/order.toml"), b.path().join("cnb/o2")).unwrap();
        let fa = fingerprint(a.path(), true).unwrap();
        let fb = fingerprint(b.path(), true).unwrap();
        assert_eq!(fa.meta, fb.meta, "same names, sizes and modes");
        assert_ne!(fa.content, fb.content, "linked vs copied");
        assert_eq!(fa.content, fingerprint(a.path(), true).unwrap().content);
    }

    #[test]
    fn missing_root_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = fingerprint(&d.path().join("nope"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}

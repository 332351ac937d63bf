//! A tar archive read in place: one pass over the headers (seeking over member
//! data) records each member's offset and size; members are then read with
//! positioned reads (`pread`) on one shared file descriptor, so the archive is
//! never copied or unpacked and concurrent blob readers do not share a file
//! position. Symlinked and hard-linked members are followed inside the archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{ArchiveError, MAX_LINKS};

/// A member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// Data at `offset`, `size` bytes long.
    File {
        /// Where the data starts in the archive file.
        offset: u64,
        /// How long it is.
        size: u64,
    },
    /// A symbolic link (target relative to the member's directory).
    Symlink(Vec<u8>),
    /// A hard link (target is a member name).
    HardLink(Vec<u8>),
    /// Anything else we cannot read as a file (a directory, a device, a sparse
    /// file), recorded so that asking for it gets a clear error.
    Other(String),
}

/// Where a file member's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Offset in the archive file.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// Normalises a member name to `a/b/c`: drops `.` and empty components;
/// refuses absolute names, `..` and NUL bytes (no OCI layout has them, and an
/// archive that does is not to be trusted).
pub fn normalise_member(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.contains(&0) {
        return Err("it contains a NUL byte".to_owned());
    }
    if raw.starts_with(b"/") {
        return Err("it is absolute; an oci-archive holds relative names only".to_owned());
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("it contains '..'".to_owned()),
            other => out.push(other),
        }
    }
    Ok(out.join(&b'/'))
}

/// Resolves a link target against the directory `base` (a normalised member
/// name's parent), refusing targets that leave the archive's root.
fn resolve_inside(base: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    if target.starts_with(b"/") || target.contains(&0) {
        return None;
    }
    let mut out: Vec<&[u8]> = base
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            other => out.push(other),
        }
    }
    Some(out.join(&b'/'))
}

/// Follows links from `name` to a file member. `Ok(None)` when there is no
/// such member (so callers can say what was missing in their own terms).
pub fn locate(
    members: &HashMap<Vec<u8>, Member>,
    name: &str,
) -> Result<Option<Location>, ArchiveError> {
    let mut key =
        normalise_member(name.as_bytes()).map_err(|reason| ArchiveError::UnsafeMember {
            name: name.to_owned(),
            reason,
        })?;
    let shown = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    for _ in 0..=MAX_LINKS {
        let outside = |target: &[u8]| ArchiveError::LinkOutside {
            name: shown(&key),
            target: shown(target),
        };
        key = match members.get(&key) {
            None => return Ok(None),
            Some(Member::File { offset, size }) => {
                return Ok(Some(Location {
                    offset: *offset,
                    size: *size,
                }))
            }
            Some(Member::Other(kind)) => {
                return Err(ArchiveError::NotAFile {
                    name: shown(&key),
                    kind: kind.clone(),
                })
            }
            Some(Member::Symlink(target)) => {
                let dir = match key.iter().rposition(|&b| b == b'/') {
                    Some(i) => &key[..i],
                    None => &[][..],
                };
                resolve_inside(dir, target).ok_or_else(|| outside(target))?
            }
            Some(Member::HardLink(target)) => {
                resolve_inside(b"", target).ok_or_else(|| outside(target))?
            }
        };
    }
    Err(ArchiveError::LinkLoop {
        name: name.to_owned(),
    })
}

/// An indexed tar archive.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    file: Arc<File>,
    members: HashMap<Vec<u8>, Member>,
}

/// The first bytes of gzip, zstd, bzip2 and xz streams, with what to say.
const COMPRESSED: [(&[u8], &str); 4] = [
    (&[0x1f, 0x8b], "gzip"),
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    (b"BZh", "bzip2"),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
];

impl Archive {
    /// Opens `path` and indexes its members in one pass over the headers.
    pub fn open(path: &Path) -> Result<Archive, ArchiveError> {
        let io = |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        let not = |reason: String| ArchiveError::NotAnArchive {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(not("it is not a regular file".to_owned()));
        }
        let len = meta.len();
        let mut magic = [0u8; 6];
        let n = file.read_at(&mut magic, 0).map_err(io)?;
        for (m, what) in COMPRESSED {
            if magic[..n].starts_with(m) {
                return Err(not(format!(
                    "it is {what}-compressed; this plugin reads the plain tar that \
                     `skopeo copy ... oci-archive:` and `podman save --format oci-archive` \
                     write (decompress it first)"
                )));
            }
        }
        let members = index(path, &file, len)?;
        Ok(Archive {
            path: path.to_path_buf(),
            file: Arc::new(file),
            members,
        })
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where member `name` is (links followed); `Ok(None)` when it is absent.
    pub fn locate(&self, name: &str) -> Result<Option<Location>, ArchiveError> {
        locate(&self.members, name)
    }

    /// A reader over a member's bytes.
    pub fn reader(&self, loc: Location) -> MemberReader {
        MemberReader {
            file: Arc::clone(&self.file),
            pos: loc.offset,
            end: loc.offset + loc.size,
        }
    }

    /// Reads a small member whole, refusing more than `limit` bytes.
    pub fn read(&self, loc: Location, limit: u64, what: &str) -> Result<Vec<u8>, ArchiveError> {
        if loc.size > limit {
            return Err(ArchiveError::TooLarge {
                path: self.path.clone(),
                what: what.to_owned(),
                size: loc.size,
                limit,
            });
        }
        let mut buf = Vec::with_capacity(loc.size as usize);
        self.reader(loc)
            .read_to_end(&mut buf)
            .map_err(|source| ArchiveError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }
}

/// One pass over the tar headers, seeking over member data.
fn index(path: &Path, file: &File, len: u64) -> Result<HashMap<Vec<u8>, Member>, ArchiveError> {
    let not = |reason: String| ArchiveError::NotAnArchive {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| not(format!("it is not a tar archive ({e})")))?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.to_string().contains("entire block")
            {
                not(format!(
                    "it is truncated: it ends inside a member header ({e})"
                ))
            } else {
                not(format!("it is not a tar archive ({e})"))
            }
        })?;
        let raw = entry.path_bytes().into_owned();
        let key = normalise_member(&raw).map_err(|reason| ArchiveError::UnsafeMember {
            name: String::from_utf8_lossy(&raw).into_owned(),
            reason,
        })?;
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default()
        };
        let member = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let offset = entry.raw_file_position();
                let size = entry.size();
                let end = offset.saturating_add(size);
                if end > len {
                    return Err(ArchiveError::Truncated {
                        path: path.to_path_buf(),
                        name: String::from_utf8_lossy(&key).into_owned(),
                        needed: end,
                        actual: len,
                    });
                }
                Member::File { offset, size }
            }
            tar::EntryType::Symlink => Member::Symlink(link()),
            tar::EntryType::Link => Member::HardLink(link()),
            tar::EntryType::Directory => Member::Other("directory".to_owned()),
            tar::EntryType::GNUSparse => Member::Other("sparse file".to_owned()),
            other => Member::Other(format!("{other:?} entry").to_lowercase()),
        };
        // A later member of the same name replaces an earlier one, as extracting
        // the tar would.
        members.insert(key, member);
    }
    Ok(members)
}

/// A member's bytes, read with positioned reads from the shared archive file.
#[derive(Debug)]
pub struct MemberReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for MemberReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end - self.pos;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the archive ends {left} bytes before this member does (was it changed while in use?)"
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_table() {
        for (raw, want) in [
            (&b"index.json"[..], &b"index.json"[..]),
            (b"./index.json", b"index.json"),
            (b"blobs//sha256/./ab", b"blobs/sha256/ab"),
            (b"blobs/", b"blobs"),
            (b".", b""),
        ] {
            assert_eq!(normalise_member(raw).unwrap(), want, "{raw:?}");
        }
        for (raw, why) in [
            (&b"../index.json"[..], "'..'"),
            (b"blobs/../../x", "'..'"),
            (b"blobs/..", "'..'"),
            (b"/index.json", "absolute"),
            (b"in\0dex", "NUL"),
        ] {
            let e = normalise_member(raw).unwrap_err();
            assert!(e.contains(why), "{raw:?}: {e}");
        }
    }

    fn file(offset: u64) -> Member {
        Member::File { offset, size: 1 }
    }

    #[test]
    fn link_following_table() {
        let mut m = HashMap::new();
        m.insert(b"blobs/sha256/aa".to_vec(), file(7));
        m.insert(b"blobs/sha256/bb".to_vec(), Member::Symlink(b"aa".to_vec()));
        m.insert(
            b"blobs/sha256/cc".to_vec(),
            Member::Symlink(b"../../data/c".to_vec()),
        );
        m.insert(
            b"data/c".to_vec(),
            Member::HardLink(b"./blobs/sha256/bb".to_vec()),
        );
        m.insert(
            b"out".to_vec(),
            Member::Symlink(b"../../etc/passwd".to_vec()),
        );
        m.insert(b"hout".to_vec(), Member::HardLink(b"../x".to_vec()));
        m.insert(b"abs".to_vec(), Member::Symlink(b"/etc/passwd".to_vec()));
        m.insert(b"x".to_vec(), Member::Symlink(b"y".to_vec()));
        m.insert(b"y".to_vec(), Member::HardLink(b"x".to_vec()));
        m.insert(b"dir".to_vec(), Member::Other("directory".to_owned()));
        m.insert(b"dangling".to_vec(), Member::Symlink(b"nowhere".to_vec()));
        let at = |n: &str| {
            locate(&m, n)
                .map(|l| l.map(|l| l.offset))
                .map_err(|e| e.to_string())
        };
        assert_eq!(at("blobs/sha256/aa"), Ok(Some(7)));
        assert_eq!(at("blobs/sha256/bb"), Ok(Some(7)));
        assert_eq!(at("./blobs/sha256/cc"), Ok(Some(7)));
        assert_eq!(at("nope"), Ok(None));
        assert_eq!(at("dangling"), Ok(None));
        for (name, why) in [
            ("out", "outside the archive"),
            ("hout", "outside the archive"),
            ("abs", "outside the archive"),
            ("x", "a loop"),
            ("dir", "is a directory"),
            ("../x", "'..'"),
        ] {
            let e = at(name).unwrap_err();
            assert!(e.contains(why), "{name}: {e}");
        }
    }
}

//! Small filesystem helpers shared by the build's parts.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, Uid};

/// locald's data directory, which holds the cache and the plugins:
/// `$XDG_DATA_HOME/locald`, else `$HOME/.local/share/locald`.
pub fn data_root() -> crate::Result<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("locald"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/locald")),
        None => Err(crate::Error::CacheUnusable {
            path: PathBuf::from("~/.local/share/locald"),
            source: std::io::Error::other("neither XDG_DATA_HOME nor HOME is set"),
        }),
    }
}

/// `(parent, file name)` of an output path (parent `.` for a bare name).
pub fn split_target(path: &Path) -> crate::Result<(std::path::PathBuf, String)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| crate::Error::OutputRefused {
            path: path.to_path_buf(),
            reason: "it names no file or directory (ends in `..` or `/`?)".to_owned(),
        })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Makes `path` an empty directory (mode 0755): whatever is there is removed
/// first, without following any symlink (a symlink is removed itself, never
/// what it points to).
pub fn fresh_dir(path: &Path) -> crate::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    remove_path(path)?;
    std::fs::create_dir(path).map_err(crate::Error::io("create directory", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(crate::Error::io("set the mode of", path))
}

/// How directories are opened: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// `lchown` `dir` and everything under it to `uid:gid`. Each directory is opened
/// relative to its parent with `O_NOFOLLOW` and everything else is changed with
/// `AT_SYMLINK_NOFOLLOW`, so no symlink (even one swapped in meanwhile) leads out.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let top = rustix::fs::open(dir, DIR_FLAGS, Mode::empty())?;
    rustix::fs::fchown(&top, uid, gid)?;
    let mut stack = vec![Dir::new(top)?];
    while let Some(current) = stack.last_mut() {
        let Some(entry) = current.read() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let parent = current.fd()?;
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if !is_dir {
            rustix::fs::chownat(parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
            continue;
        }
        let sub = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
        rustix::fs::fchown(&sub, uid, gid)?;
        stack.push(Dir::new(sub)?);
    }
    Ok(())
}

/// Whether opening a path follows a symlink in its last component (a symlink
/// in a directory above it is always followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSymlink {
    /// Follow it: a layout the user points at may link its files elsewhere.
    Follow,
    /// Refuse it (`O_NOFOLLOW`, the open fails with `ELOOP`): for trees someone
    /// else wrote, whose paths the caller resolved itself.
    Refuse,
}

/// Opens the regular file `path` for reading without blocking on a FIFO or
/// device someone put in its place: the open is non-blocking, anything but a
/// regular file is refused (`InvalidInput`, "not a regular file"), and the file
/// is switched back to blocking reads.
pub fn open_regular(path: &Path, link: FinalSymlink) -> io::Result<File> {
    open_checked(path, link, false)
}

/// [`open_regular`], also accepting a FIFO (a stream piped in by the user); its
/// reads block, so read it off the async runtime.
pub fn open_regular_or_fifo(path: &Path, link: FinalSymlink) -> io::Result<File> {
    open_checked(path, link, true)
}

fn open_checked(path: &Path, link: FinalSymlink, accept_fifo: bool) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut flags = OFlags::NONBLOCK;
    if link == FinalSymlink::Refuse {
        flags |= OFlags::NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    let ft = f.metadata()?.file_type();
    if !(ft.is_file() || (accept_fifo && ft.is_fifo())) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    rustix::fs::fcntl_setfl(&f, OFlags::empty())?;
    Ok(f)
}

/// Reads the regular file `path` ([`open_regular`]) whole, refusing more than
/// `limit` bytes (`FileTooLarge`, "more than `limit` bytes") however large its
/// metadata says it is.
pub fn read_small(path: &Path, limit: u64, link: FinalSymlink) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path, link)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("more than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// Gives the owner `rwx` (mode 0700) on `dir` and every directory under it, so
/// that a tree holding read-only directories (an image's or a build's 0555) can
/// be emptied. Never through a symlink: a `dir` that is not a directory itself
/// is left alone, and only real subdirectories are walked. Best effort: errors
/// Removes a file or a whole directory tree (not following a symlink given as
/// `path`); missing is fine.
pub fn remove_path(path: &Path) -> crate::Result<()> {
    let r = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => remove_tree(path),
        Ok(_) => std::fs::remove_file(path),
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(crate::Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// `remove_dir_all`, first making directories writable when refused: an image
/// may hold read-only directories (mode 0555), which an unprivileged owner
/// cannot empty.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            std::fs::remove_dir_all(path)
        }
        r => r,
    }
}

/// are ignored, the removal that follows reports what is still in its way.
pub fn make_dirs_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_dirs_writable(&e.path());
        }
    }
}

/// How much [`WriteBehind`] writes between two page-cache hints.
const BEHIND_STEP: u64 = 8 << 20;
/// How far back [`WriteBehind`] hints: pages older than this were asked to be
/// written back (and then dropped) a few times already.
const BEHIND_WINDOW: u64 = 64 << 20;

/// A file writer for large streams that nobody reads back soon (blobs kept for
/// later, extracted files): every [`BEHIND_STEP`] bytes it tells the kernel that
/// the bytes written before are not needed ([`drop_cached`]), which starts their
/// write-back and, on a later call once they are clean, drops them from the page
/// cache. The file's footprint in memory stays at about [`BEHIND_WINDOW`] instead
/// of its whole size, and the pages freed are reused for the next writes: on
/// virtual machines, where a page the guest has not touched for a while costs a
/// trip to the host, writing a gigabyte this way costs a fifth of the CPU time of
/// plain buffered writes. Unbuffered: wrap it in a `BufWriter` for small writes.
#[derive(Debug)]
pub struct WriteBehind<F: Write + AsFd> {
    inner: F,
    /// Bytes written so far.
    written: u64,
    /// The position at which to hint next.
    next_hint: u64,
}

impl<F: Write + AsFd> WriteBehind<F> {
    /// Wraps `file`, written from its current position (normally 0).
    pub fn new(inner: F) -> Self {
        WriteBehind {
            inner,
            written: 0,
            next_hint: BEHIND_STEP,
        }
    }

    /// The file.
    pub fn into_inner(self) -> F {
        self.inner
    }
}

impl<F: Write + AsFd> Write for WriteBehind<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.written >= self.next_hint {
            self.next_hint = self.written + BEHIND_STEP;
            let from = self.written.saturating_sub(BEHIND_WINDOW);
            drop_cached(&self.inner, from, self.written - from);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Advises the kernel that `len` bytes of `file` from `offset` are not needed in
/// the page cache (`POSIX_FADV_DONTNEED`): dirty pages start being written back,
/// clean ones are dropped. Advice only: it never loses data, and an error (a
/// filesystem or file that does not take the advice) changes nothing.
pub fn drop_cached(file: impl AsFd, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_target_refuses_nameless() {
        assert!(split_target(Path::new("/")).is_err());
        assert!(split_target(Path::new("a/..")).is_err());
        assert_eq!(
            split_target(Path::new("x.tar")).expect("split"),
            (std::path::PathBuf::from("."), "x.tar".to_owned())
        );
    }

    #[test]
    fn write_behind_writes_every_byte_across_hints() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        // Odd write sizes around and across the hint steps; 3 windows' worth.
        let data: Vec<u8> = (0..(3 * BEHIND_WINDOW as usize + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut out = io::BufWriter::new(WriteBehind::new(std::fs::File::create(&path).unwrap()));
        let mut rest = &data[..];
        let mut step = 1usize;
        while !rest.is_empty() {
            let n = step.min(rest.len());
            out.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            step = step * 7 % 3_000_017 + 1;
        }
        let behind = out.into_inner().map_err(|e| e.into_error()).unwrap();
        assert_eq!(behind.written, data.len() as u64);
        assert!(behind.next_hint > 3 * BEHIND_WINDOW, "hinted along the way");
        drop(behind.into_inner());
        let mut back = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data, "the file holds exactly what was written");
    }

    #[test]
    fn write_behind_passes_write_errors_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let read_only = std::fs::File::open(&path).unwrap();
        let mut out = WriteBehind::new(read_only);
        assert!(out.write_all(b"hello").is_err());
        assert_eq!(out.written, 0);
    }

    #[test]
    fn read_small_reads_only_small_regular_files() {
        use FinalSymlink::{Follow, Refuse};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("f"), b"12345").unwrap();
        std::os::unix::fs::symlink("f", d.join("link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let kind =
            |path: &str, limit, link| read_small(&d.join(path), limit, link).map_err(|e| e.kind());
        assert_eq!(kind("f", 5, Refuse), Ok(b"12345".to_vec()));
        assert_eq!(kind("f", 4, Refuse), Err(io::ErrorKind::FileTooLarge));
        assert_eq!(kind("link", 5, Follow), Ok(b"12345".to_vec()));
        assert_eq!(
            rustix::io::Errno::from_io_error(&read_small(&d.join("link"), 5, Refuse).unwrap_err()),
            Some(rustix::io::Errno::LOOP)
        );
        for link in [Follow, Refuse] {
            // Neither waits for a writer on the FIFO.
            assert_eq!(kind("fifo", 5, link), Err(io::ErrorKind::InvalidInput));
            assert_eq!(kind("", 5, link), Err(io::ErrorKind::InvalidInput));
            assert_eq!(kind("missing", 5, link), Err(io::ErrorKind::NotFound));
        }
        let e = read_small(d, 5, Follow).unwrap_err().to_string();
        assert_eq!(e, "not a regular file");
        let e = read_small(&d.join("f"), 4, Follow).unwrap_err().to_string();
        assert_eq!(e, "more than 4 bytes");
        assert!(open_regular_or_fifo(&d.join("fifo"), Follow).is_ok());
        assert!(open_regular(&d.join("fifo"), Follow).is_err());
    }

    #[test]
    fn make_dirs_writable_opens_real_directories_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        let set =
            |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        set(&outside, 0o555);
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/f"), "x").unwrap();
        set(&tree.join("a/f"), 0o444);
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        for d in ["a/b", "a", ""] {
            set(&tree.join(d), 0o555);
        }
        make_dirs_writable(&tree);
        for d in ["", "a", "a/b"] {
            assert_eq!(mode(&tree.join(d)), 0o700, "{d}");
        }
        assert_eq!(mode(&tree.join("a/f")), 0o444, "files keep their mode");
        assert_eq!(mode(&outside), 0o555, "not through a symlink below");
        make_dirs_writable(&tree.join("a/link"));
        assert_eq!(mode(&outside), 0o555, "not through a symlink given");
        std::fs::remove_dir_all(&tree).unwrap();
        set(&outside, 0o755);
    }

    #[test]
    fn chown_tree_never_follows_symlinks() {
        use std::os::unix::fs::MetadataExt;
        // As root a foreign owner proves the change; otherwise our own ids at least
        // prove the walk.
        let (uid, gid) = if rustix::process::geteuid().is_root() {
            (4242, 4243)
        } else {
            let uid = rustix::process::geteuid().as_raw();
            (uid, rustix::process::getegid().as_raw())
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("file"), "x").expect("write");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).expect("mkdir");
        std::fs::write(tree.join("a/b/file"), "x").expect("write");
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("file"), tree.join("flink")).expect("symlink");
        chown_tree(&tree, uid, gid).expect("chown");
        for path in ["", "a", "a/b", "a/b/file", "a/link", "flink"] {
            let meta = std::fs::symlink_metadata(tree.join(path)).expect("lstat");
            assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{path}");
        }
        let me = rustix::process::geteuid().as_raw();
        for path in [outside.clone(), outside.join("file")] {
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            assert_eq!(meta.uid(), me, "{}", path.display());
        }
        // A symlink is no directory to walk.
        assert!(chown_tree(&tree.join("a/link"), uid, gid).is_err());
    }
}

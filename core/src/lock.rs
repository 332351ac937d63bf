//! Advisory file locks (`flock(2)`) that concurrent `locald` processes share the
//! cache, a project's state and an output layout's directory with. A lock is
//! released when its [`FileLock`] is dropped or the process dies, so a `kill -9`
//! never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, Result};

/// A held lock on a lock file (or on a directory itself, [`FileLock::acquire_dir`]).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

/// Shared (readers) or exclusive (one writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Many holders at once.
    Shared,
    /// One holder, no shared ones.
    Exclusive,
}

impl FileLock {
    /// Waits for the lock on `path` (created if missing).
    pub fn acquire(path: &Path, mode: Mode) -> Result<FileLock> {
        let file = Self::open_lock_file(path)?;
        Self::wait(file, path, mode)
    }

    /// Waits for the lock on the directory `dir` itself, which must exist: no lock
    /// file is created or left behind. Errors name `dir` (`could not open` or
    /// `could not lock`).
    pub fn acquire_dir(dir: &Path, mode: Mode) -> Result<FileLock> {
        let file = File::open(dir).map_err(Error::io("open", dir))?;
        Self::wait(file, dir, mode)
    }

    /// Takes the lock on `path` if nobody holds it in a conflicting mode.
    pub fn try_acquire(path: &Path, mode: Mode) -> Result<Option<FileLock>> {
        let op = match mode {
            Mode::Shared => FlockOperation::NonBlockingLockShared,
            Mode::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        Self::lock(Self::open_lock_file(path)?, path, op)
    }

    /// The lock file (the directory for [`FileLock::acquire_dir`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_lock_file(path: &Path) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::io("open lock file", path))
    }

    /// Blocks until `file` (opened from `path`) is locked in `mode`.
    fn wait(file: File, path: &Path, mode: Mode) -> Result<FileLock> {
        let op = match mode {
            Mode::Shared => FlockOperation::LockShared,
            Mode::Exclusive => FlockOperation::LockExclusive,
        };
        Self::lock(file, path, op)?.ok_or_else(|| {
            Error::io("lock", path)(std::io::Error::from(std::io::ErrorKind::WouldBlock))
        })
    }

    /// `flock(file, op)`, retried on `EINTR`; `None` if a non-blocking `op` would
    /// block.
    fn lock(file: File, path: &Path, op: FlockOperation) -> Result<Option<FileLock>> {
        loop {
            match flock(&file, op) {
                Ok(()) => {
                    return Ok(Some(FileLock {
                        _file: file,
                        path: path.to_path_buf(),
                    }))
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::io("lock", path)(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_drop_releases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = FileLock::acquire(&p, Mode::Exclusive).unwrap();
        // flock locks belong to the open file description: a second open conflicts
        // even within one process.
        assert!(FileLock::try_acquire(&p, Mode::Exclusive)
            .unwrap()
            .is_none());
        assert!(FileLock::try_acquire(&p, Mode::Shared).unwrap().is_none());
        drop(a);
        let s1 = FileLock::try_acquire(&p, Mode::Shared).unwrap();
        let s2 = FileLock::try_acquire(&p, Mode::Shared).unwrap();
        assert!(s1.is_some() && s2.is_some());
        assert!(FileLock::try_acquire(&p, Mode::Exclusive)
            .unwrap()
            .is_none());
    }

    #[test]
    fn directory_lock_excludes_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("layouts");
        std::fs::create_dir(&d).unwrap();
        let held = FileLock::acquire_dir(&d, Mode::Exclusive).unwrap();
        assert_eq!(held.path(), d);
        let other = File::open(&d).unwrap();
        assert_eq!(
            flock(&other, FlockOperation::NonBlockingLockShared),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
        drop(held);
        flock(&other, FlockOperation::NonBlockingLockExclusive).unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "no lock file");
        let e = FileLock::acquire_dir(&dir.path().join("missing"), Mode::Exclusive)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("could not open ") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn unopenable_lock_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("x.lock");
        let e = FileLock::acquire(&p, Mode::Shared).unwrap_err().to_string();
        assert!(e.contains("x.lock"), "{e}");
    }
}

//! A small pool of threads that writes small regular files for the applier.
//!
//! Creating a file costs a few hundred microseconds of kernel time on common
//! filesystems (measured ~225 µs here, journal and inode allocation), far more
//! than writing a small file's bytes; creations on several threads overlap
//! (~1.7x with 4 threads). The applier keeps every decision (confinement,
//! replacing, whiteouts) on its own thread and hands the pool only the creation
//! of a new file at an already resolved path. Ordering is kept by the applier:
//! it waits for a path's pending write before it looks at that path, and for all
//! pending writes before it removes anything, at the end of each layer and
//! before it sets directory metadata.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use crate::error::{Error, Result};

/// Files up to this size go to the pool (bigger ones are streamed by the applier).
pub const SMALL_FILE: u64 = 256 * 1024;
const THREADS: usize = 4;
/// Jobs queued at most (bounds memory to `QUEUE * SMALL_FILE`).
const QUEUE: usize = 64;

/// One file to create.
pub struct Job {
    /// Relative to the root (what the applier waits on).
    pub rel: PathBuf,
    /// Absolute path; its parent exists and is a real directory inside the root.
    pub full: PathBuf,
    /// Contents.
    pub data: Vec<u8>,
    /// Owner to set (privileged only).
    pub owner: Option<(u32, u32)>,
    /// Extended attributes to set (already filtered).
    pub xattrs: Vec<(OsString, Vec<u8>)>,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (Unix seconds).
    pub mtime: i64,
}

#[derive(Default)]
struct State {
    pending: HashSet<PathBuf>,
    error: Option<Error>,
}

/// The pool.
pub struct Writers {
    tx: Option<mpsc::SyncSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Writers {
    /// Starts the threads.
    pub fn start() -> Writers {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let threads = (0..THREADS)
            .filter_map(|i| {
                let rx = rx.clone();
                let state = state.clone();
                std::thread::Builder::new()
                    .name(format!("locald-writer-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().map(|r| r.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return,
                        };
                        let result = write(&job);
                        let (lock, cvar) = &*state;
                        if let Ok(mut s) = lock.lock() {
                            s.pending.remove(&job.rel);
                            if let Err(e) = result {
                                s.error.get_or_insert(Error::Entry {
                                    entry: job.rel.display().to_string(),
                                    source: Box::new(e),
                                });
                            }
                        }
                        cvar.notify_all();
                    })
                    .ok()
            })
            .collect();
        Writers {
            tx: Some(tx),
            threads,
            state,
        }
    }

    /// Queues a file. Fails with the error of an earlier job, if one failed.
    pub fn submit(&self, job: Job) -> Result<()> {
        let (lock, _) = &*self.state;
        {
            let mut s = lock.lock().map_err(|_| poisoned())?;
            if let Some(e) = s.error.take() {
                return Err(e);
            }
            s.pending.insert(job.rel.clone());
        }
        match &self.tx {
            Some(tx) if !self.threads.is_empty() => tx.send(job).map_err(|_| poisoned()),
            // No thread could be started: write it here.
            _ => {
                let r = write(&job);
                if let Ok(mut s) = lock.lock() {
                    s.pending.remove(&job.rel);
                }
                r
            }
        }
    }

    /// Waits until `rel` is not being written.
    pub fn wait_for(&self, rel: &Path) {
        let (lock, cvar) = &*self.state;
        let Ok(mut s) = lock.lock() else { return };
        while s.pending.contains(rel) {
            s = match cvar.wait(s) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }

    /// Waits until every queued file is written; the first failure, if any.
    pub fn drain(&self) -> Result<()> {
        let (lock, cvar) = &*self.state;
        let mut s = lock.lock().map_err(|_| poisoned())?;
        while !s.pending.is_empty() {
            s = cvar.wait(s).map_err(|_| poisoned())?;
        }
        match s.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether a failure to set an xattr means the filesystem or kernel refuses this
/// one (no support, an unknown SELinux label, too large): the entry stays,
/// without it.
pub fn xattr_refused(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [
        Errno::PERM,
        Errno::NOTSUP,
        Errno::INVAL,
        Errno::TOOBIG,
        Errno::RANGE,
        Errno::NOSPC,
    ]
    .contains(&e)
}

fn poisoned() -> Error {
    Error::Join("a file writer thread failed".to_owned())
}

/// Creates one file (never following a symlink, never replacing anything) and
/// sets its owner, xattrs, mode and mtime through the open descriptor, in the
/// applier's order (chown clears capabilities; a read-only mode would refuse
/// user xattrs).
fn write(job: &Job) -> Result<()> {
    let full = &job.full;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(full)
        .map_err(Error::io("create file", full))?;
    file.write_all(&job.data)
        .map_err(Error::io("write", full))?;
    if let Some((uid, gid)) = job.owner {
        rustix::fs::fchown(
            &file,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| Error::io("change owner of", full)(e.into()))?;
    }
    for (name, value) in &job.xattrs {
        match rustix::fs::fsetxattr(
            &file,
            name.as_os_str(),
            value,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {}
            Err(e) if xattr_refused(e) => {
                tracing::debug!(
                    "skipped xattr {} on {}: {e}",
                    name.to_string_lossy(),
                    full.display()
                );
            }
            Err(e) => return Err(Error::io("set extended attribute on", full)(e.into())),
        }
    }
    file.set_permissions(fs::Permissions::from_mode(job.mode))
        .map_err(Error::io("set permissions of", full))?;
    let t = filetime::FileTime::from_unix_time(job.mtime, 0);
    filetime::set_file_handle_times(&file, Some(t), Some(t))
        .map_err(Error::io("set times of", full))?;
    Ok(())
}

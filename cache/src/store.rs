//! The blob store: `blobs/<algorithm>/<hex>`, each file complete and verified.
//!
//! A blob is written to `blobs/tmp/` while it streams past the extractor and
//! renamed into place only after the whole blob matched its digest, under a
//! per-blob lock so two processes never write the same blob. A file in place is
//! therefore complete unless it was changed after the fact, which readers catch:
//! every extraction hashes what it reads.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::fsutil::WriteBehind;
use locald_core::lock::{FileLock, Mode};

/// Blobs by digest.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
    locks: PathBuf,
}

impl BlobStore {
    /// The store in `dir` (`<cache>/blobs`), locking in `locks`; creates its folders.
    pub fn open(dir: PathBuf, locks: PathBuf) -> Result<BlobStore> {
        let store = Self::at(dir, locks);
        std::fs::create_dir_all(&store.tmp).map_err(Error::io("create directory", &store.tmp))?;
        Ok(store)
    }

    /// The store in `dir`, as it is (for reading only).
    pub fn at(dir: PathBuf, locks: PathBuf) -> BlobStore {
        let tmp = dir.join("tmp");
        BlobStore { dir, tmp, locks }
    }

    /// Where `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// The lock file of `digest`'s writer.
    fn lock_path(&self, digest: &Digest) -> PathBuf {
        self.locks.join(format!(
            "blob-{}-{}.lock",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Whether `digest` is stored with the size `size` (the cheap check: a
    /// changed file of the same size is caught when it is read and hashed).
    pub fn has(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Opens a stored blob of the given size.
    pub fn open_blob(&self, digest: &Digest, size: u64) -> Option<File> {
        let file = File::open(self.path(digest)).ok()?;
        let meta = file.metadata().ok()?;
        (meta.is_file() && meta.len() == size).then_some(file)
    }

    /// Reads a small stored blob whole, verifying its digest; `None` when it is
    /// missing or damaged (a damaged one is removed).
    pub fn read_verified(&self, digest: &Digest, limit: u64) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let mut bytes = Vec::new();
        File::open(&path)
            .ok()?
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        let mut h = digest.hasher();
        h.update(&bytes);
        if bytes.len() as u64 > limit || h.finish() != *digest {
            tracing::warn!("cached blob {digest} is damaged; removing it");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(bytes)
    }

    /// Stores bytes already verified against `digest` (manifests, configs).
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if self.has(digest, bytes.len() as u64) {
            return Ok(());
        }
        if let Some(mut pending) = self.begin(digest)? {
            pending.write_all(bytes);
            pending.commit()?;
        }
        Ok(())
    }

    /// Starts writing `digest`. `None` when it is already stored or another
    /// process is writing it right now (that process will store it).
    pub fn begin(&self, digest: &Digest) -> Result<Option<PendingBlob>> {
        let Some(lock) = FileLock::try_acquire(&self.lock_path(digest), Mode::Exclusive)? else {
            return Ok(None);
        };
        let target = self.path(digest);
        if target.is_file() {
            return Ok(None);
        }
        // Leftovers of a writer that was killed: we hold the lock, they are dead.
        self.remove_temporaries(digest);
        let file = tempfile::Builder::new()
            .prefix(&format!("{}.", digest.hex()))
            .tempfile_in(&self.tmp)
            .map_err(Error::io("create a temporary file in", &self.tmp))?;
        Ok(Some(PendingBlob {
            out: Some(BufWriter::with_capacity(1 << 20, WriteBehind::new(file))),
            target,
            error: None,
            _lock: lock,
        }))
    }

    fn remove_temporaries(&self, digest: &Digest) {
        let prefix = format!("{}.", digest.hex());
        if let Ok(entries) = std::fs::read_dir(&self.tmp) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Removes a stored blob (missing is fine).
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path)(e)),
        }
    }

    /// Hashes a stored blob whole: `Ok(true)` when it matches its digest and size.
    pub fn verify(&self, digest: &Digest, size: Option<u64>) -> Result<bool> {
        let path = self.path(digest);
        let mut file = File::open(&path).map_err(Error::io("open", &path))?;
        let mut h = digest.hasher();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(Error::io("read", &path))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            h.update(&buf[..n]);
        }
        Ok(h.finish() == *digest && size.is_none_or(|s| s == total))
    }

    /// Every stored blob: digest, size on disk.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        let algorithms = match std::fs::read_dir(&self.dir) {
            Ok(a) => a,
            Err(e) => return Err(Error::io("read directory", &self.dir)(e)),
        };
        for alg in algorithms.flatten() {
            let name = alg.file_name().to_string_lossy().into_owned();
            if name == "tmp" || !alg.path().is_dir() {
                continue;
            }
            for blob in std::fs::read_dir(alg.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = format!("{name}:{}", blob.file_name().to_string_lossy());
                if let (Ok(d), Ok(m)) = (Digest::parse(&text), blob.metadata()) {
                    out.push((d, disk_usage(&m)));
                }
            }
        }
        Ok(out)
    }

    /// Removes temporaries no live writer holds; returns the bytes freed.
    pub fn clean_temporaries(&self) -> u64 {
        let mut freed = 0;
        for e in std::fs::read_dir(&self.tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((hex, _)) = name.split_once('.') else {
                continue;
            };
            let lock = self.locks.join(format!("blob-sha256-{hex}.lock"));
            let held_elsewhere = lock.exists()
                && FileLock::try_acquire(&lock, Mode::Exclusive)
                    .map(|l| l.is_none())
                    .unwrap_or(true);
            if !held_elsewhere {
                freed += e.metadata().map(|m| disk_usage(&m)).unwrap_or(0);
                let _ = std::fs::remove_file(e.path());
            }
        }
        freed
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Bytes a file takes on disk.
pub(crate) fn disk_usage(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512
}

/// A blob being written; renamed into the store by [`PendingBlob::commit`],
/// deleted if dropped uncommitted.
#[derive(Debug)]
pub struct PendingBlob {
    out: Option<BufWriter<WriteBehind<tempfile::NamedTempFile>>>,
    target: PathBuf,
    error: Option<std::io::Error>,
    _lock: FileLock,
}

impl PendingBlob {
    /// Appends bytes. The first failure (a full disk) is kept for
    /// [`PendingBlob::commit`] and later writes are dropped.
    pub fn write_all(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(out) = &mut self.out {
            if let Err(e) = out.write_all(bytes) {
                self.error = Some(e);
                self.out = None;
            }
        }
    }

    /// Moves the complete blob into the store. Call only once the bytes written
    /// were verified against the digest.
    pub fn commit(mut self) -> Result<()> {
        let what = "write a blob into the cache at";
        if let Some(e) = self.error.take() {
            return Err(Error::io(what, &self.target)(e));
        }
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out
            .into_inner()
            .map_err(|e| Error::io(what, &self.target)(e.into_error()))?
            .into_inner();
        if let Some(parent) = self.target.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io("create directory", parent))?;
        }
        file.persist(&self.target)
            .map_err(|e| Error::io(what, &self.target)(e.error))?;
        Ok(())
    }
}

impl locald_extract::BlobKeeper for BlobStore {
    fn begin(&self, digest: &Digest) -> Result<Option<Box<dyn locald_extract::BlobCopy>>> {
        Ok(BlobStore::begin(self, digest)?
            .map(|p| Box::new(p) as Box<dyn locald_extract::BlobCopy>))
    }
}

impl locald_extract::BlobCopy for PendingBlob {
    fn write_all(&mut self, bytes: &[u8]) {
        PendingBlob::write_all(self, bytes);
    }

    fn commit(self: Box<Self>) -> Result<()> {
        PendingBlob::commit(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> BlobStore {
        let locks = dir.join("locks");
        std::fs::create_dir_all(&locks).unwrap();
        BlobStore::open(dir.join("blobs"), locks).unwrap()
    }

    #[test]
    fn begin_commit_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let d = Digest::sha256_of(b"hello");
        assert!(!s.has(&d, 5));
        let mut p = s.begin(&d).unwrap().unwrap();
        // A second writer of the same blob is turned away while the first writes.
        assert!(s.begin(&d).unwrap().is_none());
        p.write_all(b"hel");
        p.write_all(b"lo");
        p.commit().unwrap();
        assert!(s.has(&d, 5));
        assert!(!s.has(&d, 6));
        assert!(dir.path().join("blobs/sha256").join(d.hex()).is_file());
        assert_eq!(s.list().unwrap().len(), 1);
        assert!(s.begin(&d).unwrap().is_none(), "already stored");
        assert!(s.verify(&d, Some(5)).unwrap());
        assert_eq!(s.read_verified(&d, 100).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let d = Digest::sha256_of(b"x");
        let mut p = s.begin(&d).unwrap().unwrap();
        p.write_all(b"x");
        drop(p);
        assert!(!s.path(&d).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn damaged_blob_is_detected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let d = Digest::sha256_of(b"hello");
        s.put(&d, b"hello").unwrap();
        std::fs::write(s.path(&d), b"jello").unwrap();
        assert!(s.has(&d, 5), "the cheap check only looks at the size");
        assert!(!s.verify(&d, Some(5)).unwrap());
        assert!(s.read_verified(&d, 100).is_none());
        assert!(!s.path(&d).exists());
    }

    #[test]
    fn killed_writer_temporaries_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let d = Digest::sha256_of(b"y");
        let stale = dir.path().join(format!("blobs/tmp/{}.abc", d.hex()));
        std::fs::write(&stale, b"partial").unwrap();
        assert!(s.clean_temporaries() > 0 || !stale.exists());
        assert!(!stale.exists());
        // And a writer starting over removes them too.
        std::fs::write(&stale, b"partial").unwrap();
        let p = s.begin(&d).unwrap().unwrap();
        assert!(!stale.exists());
        drop(p);
    }
}

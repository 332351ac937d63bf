//! The builder cache: `$XDG_DATA_HOME/locald` (default `~/.local/share/locald`).
//!
//! ```text
//! blobs/sha256/<hex>      verified blobs: layers of remote images, every manifest and config
//! blobs/tmp/              blobs being written (renamed into place once verified)
//! trees/<key>/            an extracted tree; key = sha256(manifest digest + path filter)
//! trees/<key>.json        its record (fingerprints, sizes, last use), written last
//! refs/<key>.json         source + image + platform -> digests, when checked and used
//! locks/                  flock(2) files
//! ```
//!
//! Content-addressed and append-mostly: a tree or blob in place is complete (it
//! was renamed there after it verified), and a tree counts only once its record
//! exists, so a killed pull leaves nothing that looks complete. Concurrent
//! processes share the cache under file locks: a pull holds `cache.lock` shared
//! and the image's lock exclusively while it extracts (a second puller waits and
//! then uses the first one's result); `prune`, `rm` and `verify` hold `cache.lock`
//! exclusively.

mod gc;
/// The lock type moved to [`locald_core::lock`]; still reachable here.
pub use locald_core::lock;
mod pull;
mod rebase;
pub mod store;
pub mod tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use gc::{CachedImage, CachedTree, PruneOptions, Pruned, VerifyReport};
pub use pull::{Freshness, PullOptions, PullPolicy, Pulled};

use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::lock::{FileLock, Mode};
use locald_extract::PathFilter;
use store::BlobStore;
use tree::Fingerprint;

/// The cache directory and its stores.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    blobs: Arc<BlobStore>,
    trees: PathBuf,
    refs: PathBuf,
    locks: PathBuf,
}

/// Format version of the records; a record of another version is ignored.
const RECORD_VERSION: u32 = 1;

/// Reference record: what a source + image + platform resolved to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RefRecord {
    /// Format version.
    pub version: u32,
    /// The source it came from (`registry`, `oci-layout:/abs/dir`, ...).
    pub source: String,
    /// The image name, canonical for the source (`None`: the source's only image).
    pub image: Option<String>,
    /// The name the source gave the image (for a source's only image, which
    /// was not named), for messages.
    #[serde(default)]
    pub name: Option<String>,
    /// The platform asked for.
    pub platform: String,
    /// Digest of the top-level document (an index for multi-platform images).
    pub root_digest: String,
    /// Digest of the image manifest for the platform.
    pub manifest_digest: String,
    /// When the source was last asked for the digest (Unix seconds).
    pub checked_at: u64,
    /// When the image was last pulled or used (Unix seconds).
    pub used_at: u64,
}

/// Tree record: an extracted tree that is complete.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TreeRecord {
    /// Format version.
    pub version: u32,
    /// The image manifest it was extracted from.
    pub manifest_digest: String,
    /// The image paths extracted (`/` for the whole root filesystem).
    pub paths: Vec<String>,
    /// When it was extracted (Unix seconds).
    pub created_at: u64,
    /// What it looked like when it was extracted.
    pub fingerprint: Fingerprint,
    /// When its metadata fingerprint was last found unchanged by a walk (Unix
    /// seconds; 0: never since it was made).
    #[serde(default)]
    pub walked_at: u64,
    /// Its [`tree::seal`] as of that walk.
    #[serde(default)]
    pub seal: Option<String>,
}

impl Cache {
    /// `$XDG_DATA_HOME/locald`, else `$HOME/.local/share/locald`.
    pub fn default_root() -> Result<PathBuf> {
        locald_core::fsutil::data_root()
    }

    /// Opens (creating) the cache at `root` and checks that it is writable.
    pub fn open(root: &Path) -> Result<Cache> {
        let unusable = |source| Error::CacheUnusable {
            path: root.to_path_buf(),
            source,
        };
        let blobs = root.join("blobs");
        let trees = root.join("trees");
        let refs = root.join("refs");
        let locks = root.join("locks");
        for d in [&blobs, &trees, &refs, &locks] {
            std::fs::create_dir_all(d).map_err(unusable)?;
        }
        // A read-only cache (a read-only mount, a directory of another user) is
        // found now, with a clear message, not in the middle of a pull.
        tempfile::tempfile_in(&locks).map_err(unusable)?;
        let store = BlobStore::open(blobs, locks.clone()).map_err(|e| match e {
            Error::Io { source, .. } => unusable(source),
            e => e,
        })?;
        Ok(Cache {
            root: root.to_path_buf(),
            blobs: Arc::new(store),
            trees,
            refs,
            locks,
        })
    }

    /// The cache at `root` as it is, for commands that only read it (`ls`): no
    /// directory is created and a read-only cache is fine. `None` when there is
    /// no cache there yet.
    pub fn open_existing(root: &Path) -> Result<Option<Cache>> {
        let unusable = |source| Error::CacheUnusable {
            path: root.to_path_buf(),
            source,
        };
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(unusable(std::io::Error::from(
                    std::io::ErrorKind::NotADirectory,
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unusable(e)),
        }
        let locks = root.join("locks");
        Ok(Some(Cache {
            root: root.to_path_buf(),
            blobs: Arc::new(BlobStore::at(root.join("blobs"), locks.clone())),
            trees: root.join("trees"),
            refs: root.join("refs"),
            locks,
        }))
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<BlobStore> {
        &self.blobs
    }

    /// Takes a lock in `locks/`, waiting on a blocking thread.
    /// Holds `manifest`'s cached trees for as long as the lock lives (a build
    /// running in one): `prune` and `rm` keep them, and an update of the builder
    /// extracts afresh instead of taking the tree over. Waits while a pull is
    /// extracting the image.
    pub fn hold_image(&self, manifest: &Digest) -> Result<FileLock> {
        FileLock::acquire(
            &self.locks.join(format!("image-{}.lock", manifest.hex())),
            Mode::Shared,
        )
    }

    async fn lock(&self, name: &str, mode: Mode) -> Result<FileLock> {
        let path = self.locks.join(name);
        match FileLock::try_acquire(&path, mode)? {
            Some(l) => Ok(l),
            None => tokio::task::spawn_blocking(move || FileLock::acquire(&path, mode))
                .await
                .map_err(|e| Error::Join(e.to_string()))?,
        }
    }

    fn ref_path(&self, source: &str, image: Option<&str>, platform: &str) -> PathBuf {
        let key =
            Digest::sha256_of(format!("{source}\n{}\n{platform}", image.unwrap_or("")).as_bytes());
        self.refs.join(format!("{}.json", key.hex()))
    }

    fn tree_key(manifest: &Digest, filter: &PathFilter) -> String {
        let paths = tree_paths(filter).join("\n");
        Digest::sha256_of(format!("{manifest}\n{paths}").as_bytes())
            .hex()
            .to_owned()
    }

    /// Where the tree of `manifest` with `filter` is (or would be) kept.
    pub fn tree_dir(&self, manifest: &Digest, filter: &PathFilter) -> PathBuf {
        self.trees.join(Self::tree_key(manifest, filter))
    }

    fn tree_record_path(&self, manifest: &Digest, filter: &PathFilter) -> PathBuf {
        self.trees
            .join(format!("{}.json", Self::tree_key(manifest, filter)))
    }
}

/// The paths a tree record lists for a filter.
fn tree_paths(filter: &PathFilter) -> Vec<String> {
    if filter.is_everything() {
        vec!["/".to_owned()]
    } else {
        let mut p = filter.paths();
        p.sort();
        p
    }
}

/// Now, in Unix seconds.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A record kept as JSON in the cache, with its format version.
pub(crate) trait Record: serde::de::DeserializeOwned {
    /// The format version it was written with.
    fn version(&self) -> u32;
}

impl Record for RefRecord {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Record for TreeRecord {
    fn version(&self) -> u32 {
        self.version
    }
}

/// Reads a JSON record; a missing, unreadable or foreign one is `None` (and a
/// damaged one is logged: the cache recovers by fetching again).
fn read_record<T: Record>(path: &Path) -> Option<T> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring cache record {}: {e}", path.display());
            return None;
        }
    };
    match serde_json::from_slice::<T>(&bytes) {
        Ok(r) if r.version() == RECORD_VERSION => Some(r),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("ignoring damaged cache record {}: {e}", path.display());
            None
        }
    }
}

/// Every record (`*.json`) in `dir`, with its path.
fn records_in<T: Record>(dir: &Path) -> Vec<(PathBuf, T)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| read_record(&p).map(|r| (p, r)))
        .collect()
}

/// Writes a JSON record atomically (temporary file + rename).
fn write_record<T: serde::Serialize>(path: &Path, record: &T) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let bytes =
        serde_json::to_vec_pretty(record).map_err(|e| Error::io("write", path)(e.into()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".record-")
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(Error::io("write", path))?;
    tmp.persist(path)
        .map_err(|e| Error::io("write", path)(e.error))?;
    Ok(())
}

pub(crate) use locald_core::fsutil::{remove_path, remove_tree};

//! Listing, removing, pruning and verifying cache entries.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::store::disk_usage;
use super::{now, records_in, remove_path, tree, Cache, RefRecord, TreeRecord};
use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::lock::{FileLock, Mode};
use locald_core::manifest::{self, MAX_JSON_BYTES};
use locald_core::source::ImageSource;
use locald_extract::PathFilter;

/// One extracted tree of a cached image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedTree {
    /// The image paths it holds (`/` for the whole root filesystem).
    pub paths: Vec<String>,
    /// Where it is.
    pub path: PathBuf,
    /// Entries in it.
    pub entries: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// When it was extracted (Unix seconds).
    pub created_at: u64,
}

/// One cached reference and what it takes on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedImage {
    /// The image name (`None`: the only image of its source).
    pub image: Option<String>,
    /// The name the source gave it (differs from `image` for an unnamed image).
    pub name: Option<String>,
    /// The source it came from.
    pub source: String,
    /// The platform it was pulled for.
    pub platform: String,
    /// The image manifest digest.
    pub manifest_digest: String,
    /// The digest of the document the reference names (index or manifest).
    pub root_digest: String,
    /// Its extracted trees.
    pub trees: Vec<CachedTree>,
    /// Bytes of its blobs in the store (layers of remote images, manifest, config).
    pub blob_bytes: u64,
    /// Trees plus blobs, on disk.
    pub disk_bytes: u64,
    /// When the source was last asked for its digest (Unix seconds).
    pub checked_at: u64,
    /// When it was last pulled or used (Unix seconds).
    pub used_at: u64,
}

impl CachedImage {
    /// The name to show: the image, or the source for a source's only image.
    pub fn display_name(&self) -> String {
        match (&self.image, &self.name) {
            (Some(i), _) | (None, Some(i)) => i.clone(),
            (None, None) => format!("({})", self.source),
        }
    }
}

/// What `prune` removes.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Everything, referenced or not.
    pub all: bool,
    /// Also references not used for this long.
    pub older_than: Option<Duration>,
}

/// What was removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pruned {
    /// References removed (image names).
    pub images: Vec<String>,
    /// Trees removed (complete or left over by killed pulls).
    pub trees: usize,
    /// Blobs removed (incl. partial downloads).
    pub blobs: usize,
    /// Bytes freed on disk.
    pub bytes: u64,
    /// Unreferenced trees kept because a running build uses them
    /// ([`Cache::hold_image`]); the next prune removes them.
    pub in_use: usize,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Images checked.
    pub images: usize,
    /// Blobs hashed.
    pub blobs: usize,
    /// Trees read and hashed.
    pub trees: usize,
    /// Each problem found; the damaged entry was removed, so the next pull
    /// fetches it again.
    pub problems: Vec<String>,
    /// Trees whose contents could not be checked, and why (their source is
    /// gone and their layers are not cached: only their metadata was checked).
    pub unchecked: Vec<String>,
}

impl Cache {
    pub(super) fn ref_records(&self) -> Vec<(PathBuf, RefRecord)> {
        let mut out: Vec<(PathBuf, RefRecord)> = records_in(&self.refs);
        out.sort_by(|a, b| (&a.1.image, &a.1.source).cmp(&(&b.1.image, &b.1.source)));
        out
    }

    fn tree_records(&self) -> Vec<(PathBuf, TreeRecord)> {
        records_in(&self.trees)
    }

    /// The blobs an image manifest references (itself included), when the
    /// manifest is stored.
    fn image_blobs(&self, manifest_digest: &str) -> Vec<(Digest, Option<u64>)> {
        let Ok(digest) = Digest::parse(manifest_digest) else {
            return Vec::new();
        };
        let mut out = vec![(digest.clone(), None)];
        let Some(bytes) = self.blobs.read_verified(&digest, MAX_JSON_BYTES) else {
            return out;
        };
        if let Ok(m) = manifest::parse_manifest(&bytes, manifest_digest) {
            for d in std::iter::once(m.config()).chain(m.layers().iter()) {
                if let Ok(x) = Digest::parse(d.digest().as_ref()) {
                    out.push((x, Some(d.size())));
                }
            }
        }
        out
    }

    /// Every cached reference, with its trees and size on disk.
    pub fn list(&self) -> Result<Vec<CachedImage>> {
        let trees = self.tree_records();
        let mut out = Vec::new();
        for (_, r) in self.ref_records() {
            let mine: Vec<CachedTree> = trees
                .iter()
                .filter(|(_, t)| t.manifest_digest == r.manifest_digest)
                .map(|(p, t)| CachedTree {
                    paths: t.paths.clone(),
                    path: p.with_extension(""),
                    entries: t.fingerprint.entries,
                    disk_bytes: t.fingerprint.disk_bytes,
                    created_at: t.created_at,
                })
                .collect();
            let blob_bytes: u64 = self
                .image_blobs(&r.manifest_digest)
                .iter()
                .filter_map(|(d, _)| std::fs::metadata(self.blobs.path(d)).ok())
                .map(|m| disk_usage(&m))
                .sum();
            let tree_bytes: u64 = mine.iter().map(|t| t.disk_bytes).sum();
            out.push(CachedImage {
                image: r.image,
                name: r.name,
                source: r.source,
                platform: r.platform,
                manifest_digest: r.manifest_digest,
                root_digest: r.root_digest,
                trees: mine,
                blob_bytes,
                disk_bytes: blob_bytes + tree_bytes,
                checked_at: r.checked_at,
                used_at: r.used_at,
            });
        }
        Ok(out)
    }

    /// Removes the references named `names` (any of the spellings given) and
    /// everything only they used. An unknown name is an error.
    pub async fn remove(&self, names: &[String]) -> Result<Pruned> {
        let _lock = self.lock("cache.lock", Mode::Exclusive).await?;
        let mut pruned = Pruned::default();
        for (path, r) in self.ref_records() {
            if r.image
                .as_ref()
                .or(r.name.as_ref())
                .is_some_and(|i| names.contains(i))
            {
                remove_path(&path)?;
                pruned.images.push(r.image.or(r.name).unwrap_or_default());
            }
        }
        if pruned.images.is_empty() {
            return Err(Error::UnknownCached(
                names.first().cloned().unwrap_or_default(),
            ));
        }
        self.collect_garbage(&mut pruned)?;
        Ok(pruned)
    }

    /// Removes what no reference uses, leftovers of killed pulls, and with the
    /// options, references themselves.
    pub async fn prune(&self, options: &PruneOptions) -> Result<Pruned> {
        let _lock = self.lock("cache.lock", Mode::Exclusive).await?;
        let mut pruned = Pruned::default();
        let cutoff = options
            .older_than
            .map(|d| now().saturating_sub(d.as_secs()));
        for (path, r) in self.ref_records() {
            if options.all || cutoff.is_some_and(|c| r.used_at < c) {
                remove_path(&path)?;
                pruned
                    .images
                    .push(r.image.clone().unwrap_or_else(|| format!("({})", r.source)));
            }
        }
        self.collect_garbage(&mut pruned)?;
        Ok(pruned)
    }

    /// Whether a build holds the image's trees ([`Cache::hold_image`]).
    fn in_use(&self, manifest_digest: &str) -> Result<bool> {
        let Ok(digest) = manifest_digest.parse::<Digest>() else {
            return Ok(false);
        };
        let path = self.locks.join(format!("image-{}.lock", digest.hex()));
        Ok(FileLock::try_acquire(&path, Mode::Exclusive)?.is_none())
    }

    /// Deletes trees and blobs no reference reaches. Caller holds `cache.lock`
    /// exclusively.
    fn collect_garbage(&self, pruned: &mut Pruned) -> Result<()> {
        let live_manifests: HashSet<String> = self
            .ref_records()
            .into_iter()
            .map(|(_, r)| r.manifest_digest)
            .collect();
        let mut live_trees = HashSet::new();
        for (path, t) in self.tree_records() {
            let dir = path.with_extension("");
            if live_manifests.contains(&t.manifest_digest) || self.in_use(&t.manifest_digest)? {
                if !live_manifests.contains(&t.manifest_digest) {
                    pruned.in_use += 1;
                }
                live_trees.insert(dir);
                continue;
            }
            pruned.bytes += t.fingerprint.disk_bytes;
            remove_path(&dir)?;
            remove_path(&dir.with_extension("listing"))?;
            remove_path(&path)?;
            pruned.trees += 1;
        }
        // Trees without a record, extraction temporaries, half-written records.
        for e in std::fs::read_dir(&self.trees)
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path();
            let is_record = p.extension().is_some_and(|x| x == "json")
                && !e.file_name().to_string_lossy().starts_with('.');
            let is_live_listing = p.extension().is_some_and(|x| x == "listing")
                && live_trees.contains(&p.with_extension(""));
            if is_record || is_live_listing || live_trees.contains(&p) {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pruned.bytes += tree::fingerprint(&p, false)
                    .map(|f| f.disk_bytes)
                    .unwrap_or(0);
                pruned.trees += 1;
            }
            remove_path(&p)?;
        }
        let live_blobs: HashSet<Digest> = live_manifests
            .iter()
            .flat_map(|m| self.image_blobs(m))
            .map(|(d, _)| d)
            .collect();
        for (d, bytes) in self.blobs.list()? {
            if !live_blobs.contains(&d) {
                self.blobs.remove(&d)?;
                pruned.blobs += 1;
                pruned.bytes += bytes;
            }
        }
        let freed = self.blobs.clean_temporaries();
        if freed > 0 {
            pruned.blobs += 1;
            pruned.bytes += freed;
        }
        Ok(())
    }

    /// Hashes every blob of the cached references (all, or those named) and
    /// checks every tree byte by byte against a fresh extraction of its image
    /// (from the cached blobs, or from the source `open` returns for a reference's
    /// source spec), removing what is damaged so the next pull fetches it again.
    pub async fn verify(
        &self,
        names: Option<&[String]>,
        open: &(dyn Fn(&str) -> Option<Box<dyn ImageSource>> + Sync),
    ) -> Result<VerifyReport> {
        let _lock = self.lock("cache.lock", Mode::Exclusive).await?;
        let mut report = VerifyReport::default();
        let trees = self.tree_records();
        let mut seen = HashSet::new();
        let mut refs = BTreeMap::new();
        for (_, r) in self.ref_records() {
            let named = r.image.as_ref().or(r.name.as_ref());
            if names.is_some_and(|n| !named.is_some_and(|i| n.contains(i))) {
                continue;
            }
            report.images += 1;
            refs.entry(r.manifest_digest.clone()).or_insert_with(|| {
                let shown = r
                    .image
                    .clone()
                    .or(r.name.clone())
                    .unwrap_or_else(|| format!("({})", r.source));
                (shown, r)
            });
        }
        if let (Some(n), true) = (names, refs.is_empty()) {
            return Err(Error::UnknownCached(n.first().cloned().unwrap_or_default()));
        }
        for (manifest_digest, (shown, record)) in &refs {
            for (d, size) in self.image_blobs(manifest_digest) {
                if !seen.insert(d.clone()) || !self.blobs.path(&d).exists() {
                    continue;
                }
                report.blobs += 1;
                let blob = self.blobs.clone();
                let digest = d.clone();
                let ok = tokio::task::spawn_blocking(move || blob.verify(&digest, size))
                    .await
                    .map_err(|e| Error::Join(e.to_string()))??;
                if !ok {
                    self.blobs.remove(&d)?;
                    report.problems.push(format!(
                        "{shown}: blob {d} does not match its digest (removed)"
                    ));
                }
            }
            for (path, t) in trees
                .iter()
                .filter(|(_, t)| &t.manifest_digest == manifest_digest)
            {
                report.trees += 1;
                let dir = path.with_extension("");
                let why = match self.check_tree(&dir, t, record, shown, open).await? {
                    Ok(why) => why,
                    Err(unchecked) => {
                        report.unchecked.push(format!(
                            "{shown}: contents of {} not checked: {unchecked}",
                            dir.display()
                        ));
                        None
                    }
                };
                if let Some(why) = why {
                    remove_path(path)?;
                    remove_path(&dir.with_extension("listing"))?;
                    remove_path(&dir)?;
                    report.problems.push(format!(
                        "{shown}: tree {} ({}) is damaged: {why} (removed)",
                        dir.display(),
                        t.paths.join(", ")
                    ));
                }
            }
        }
        Ok(report)
    }

    /// Why the tree at `dir` is damaged (`Ok(None)`: it is not), or why its
    /// contents could not be checked.
    async fn check_tree(
        &self,
        dir: &Path,
        t: &TreeRecord,
        record: &RefRecord,
        shown: &str,
        open: &(dyn Fn(&str) -> Option<Box<dyn ImageSource>> + Sync),
    ) -> Result<std::result::Result<Option<String>, String>> {
        let walk = dir.to_path_buf();
        let found = tokio::task::spawn_blocking(move || tree::fingerprint(&walk, true))
            .await
            .map_err(|e| Error::Join(e.to_string()))?;
        let found = match found {
            Ok(f) if f.meta != t.fingerprint.meta => {
                return Ok(Ok(Some("files were added, removed or changed".to_owned())))
            }
            Ok(f) => f,
            Err(e) => return Ok(Ok(Some(locald_core::error::chain(&e)))),
        };
        let Some(image) = self.load(record, shown) else {
            return Ok(Err("its manifest is not cached".to_owned()));
        };
        let filter = if t.paths.iter().any(|p| p == "/") {
            PathFilter::default()
        } else {
            match PathFilter::new(&t.paths) {
                Ok(f) => f,
                Err(e) => return Ok(Err(format!("its record lists bad paths: {e}"))),
            }
        };
        let scratch = tempfile::Builder::new()
            .prefix(".verify-")
            .tempdir_in(&self.trees)
            .map_err(Error::io("create a temporary directory in", &self.trees))?;
        let again = scratch.path().join("tree");
        let source = open(&record.source);
        if let Err(e) = self
            .extract_again(source.as_deref(), &image, &filter, &again)
            .await
        {
            return Ok(Err(locald_core::error::chain(&e)));
        }
        let fresh = tokio::task::spawn_blocking(move || tree::fingerprint(&again, true))
            .await
            .map_err(|e| Error::Join(e.to_string()))??;
        let _ = super::remove_tree(scratch.path());
        Ok(Ok(if fresh.meta != found.meta {
            Some("it differs from a fresh extraction of its image".to_owned())
        } else if fresh.content != found.content {
            Some("file contents were changed".to_owned())
        } else {
            None
        }))
    }
}

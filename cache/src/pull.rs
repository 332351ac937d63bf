//! `Cache::pull`: make sure an image's tree is in the cache, fetching only what
//! is missing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::image::Descriptor;

use super::rebase::{self, Listings};
use super::store::BlobStore;
use super::{now, read_record, remove_path, tree, tree_paths, write_record, Cache};
use super::{RefRecord, TreeRecord, RECORD_VERSION};
use locald_core::cancel::Cancel;
use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::lock::Mode;
use locald_core::manifest::MAX_JSON_BYTES;
use locald_core::platform::Platform;
use locald_core::progress::Reporter;
use locald_core::source::{self, BlobReader, BoxFuture, Document, ImageSource, ResolvedImage};
use locald_extract::{ExtractOptions, Listed, PathFilter};

/// When a cached reference is checked against its source again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Check every time (one `HEAD` request for a registry).
    Always,
    /// Use what is cached; check a tag at most once per interval (local sources,
    /// which are cheap to read, every time). Fetch what is not cached.
    #[default]
    Missing,
    /// Never contact the source: use the cache or fail.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(PullPolicy::Always),
            "missing" | "if-not-present" => Ok(PullPolicy::Missing),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!(
                "unknown pull policy {s:?}: use always, missing or never"
            )),
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "always",
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
        })
    }
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Which image paths to keep (`/cnb` for builds, everything for the sandbox).
    pub filter: PathFilter,
    /// When to re-check the reference.
    pub policy: PullPolicy,
    /// With [`PullPolicy::Missing`]: how long a remote tag's check stays fresh.
    pub check_interval: Duration,
    /// The platform to select.
    pub platform: Platform,
    /// Whether the platform was asked for (a mismatch is then an error).
    pub explicit_platform: bool,
    /// Set to stop.
    pub cancel: Cancel,
    /// Keep the compressed layers of a remote image beside its tree (about as
    /// many bytes again), so that a tree changed on disk is repaired, and
    /// `builder verify` checks it, without the network. Off by default: a pull
    /// writes only the tree (plus the manifest and config).
    pub keep_layers: bool,
}

/// How the cached reference stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freshness {
    /// Used as cached, without asking the source.
    Cached,
    /// The source was asked and still has the same digest.
    Unchanged,
    /// The source was asked and has a new digest.
    Updated,
    /// Not cached before.
    New,
}

/// What [`Cache::pull`] did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image.
    pub image: ResolvedImage,
    /// The extracted tree (holds the filter's paths, e.g. `<tree>/cnb`).
    pub tree: PathBuf,
    /// The tree's record.
    pub record: TreeRecord,
    /// How the reference stood.
    pub freshness: Freshness,
    /// When the reference was last checked against the source (Unix seconds).
    pub checked_at: u64,
    /// Whether the tree was extracted now (else it was in the cache).
    pub extracted: bool,
    /// Layers read from the source (the rest came from the cache).
    pub fetched_layers: usize,
    /// Their bytes.
    pub fetched_bytes: u64,
}

impl Cache {
    /// Makes sure `image` from `source` is in the cache, extracted with the
    /// options' filter, and returns where. Only what is missing is fetched: a warm
    /// pull asks the source at most for the reference's digest, an updated image
    /// downloads only its new layers.
    pub async fn pull(
        &self,
        source: &dyn ImageSource,
        image: Option<&str>,
        options: &PullOptions,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Pulled> {
        let _shared = self.lock("cache.lock", Mode::Shared).await?;
        let name = source.canonical_name(image);
        let describe = source.describe();
        let platform = options.platform.to_string();
        let ref_path = self.ref_path(&describe, name.as_deref(), &platform);
        let record: Option<RefRecord> = read_record(&ref_path);
        let shown = name
            .clone()
            .or_else(|| record.as_ref().and_then(|r| r.name.clone()))
            .unwrap_or_else(|| format!("the image in {describe}"));
        let now = now();

        let fresh = |r: &RefRecord| {
            name.as_deref().is_some_and(|n| n.contains("@sha256:"))
                || (source.is_remote()
                    && now.saturating_sub(r.checked_at) < options.check_interval.as_secs())
        };
        let (resolved, freshness, checked_at) = match (options.policy, &record) {
            (PullPolicy::Never, None) => {
                return Err(Error::NotCached {
                    what: shown,
                    why: "it was never pulled from this source for this platform, and the pull policy is never".to_owned(),
                })
            }
            (PullPolicy::Never, Some(r)) => match self.load(r, &shown) {
                Some(img) => (img, Freshness::Cached, r.checked_at),
                None => {
                    return Err(Error::NotCached {
                        what: shown,
                        why: "its manifest is no longer in the cache, and the pull policy is never".to_owned(),
                    })
                }
            },
            (PullPolicy::Missing, Some(r)) if fresh(r) => match self.load(r, &shown) {
                Some(img) => (img, Freshness::Cached, r.checked_at),
                None => (self.resolve(source, image, options).await?, Freshness::Unchanged, now),
            },
            (_, Some(r)) => {
                let current = source.current_digest(image).await?;
                let same = current.to_string() == r.root_digest;
                let cached = if same { self.load(r, &shown) } else { None };
                match cached {
                    Some(img) => (img, Freshness::Unchanged, now),
                    None => {
                        let img = self.resolve(source, image, options).await?;
                        let f = if img.root_digest.to_string() == r.root_digest {
                            Freshness::Unchanged
                        } else {
                            Freshness::Updated
                        };
                        (img, f, now)
                    }
                }
            }
            (_, None) => (self.resolve(source, image, options).await?, Freshness::New, now),
        };
        if freshness == Freshness::Updated {
            if let Some(r) = &record {
                tracing::info!(
                    "{shown} changed: {} -> {}",
                    r.manifest_digest,
                    resolved.manifest_digest
                );
            }
        }

        let update = Update {
            offline: options.policy == PullPolicy::Never && source.is_remote(),
            previous: record
                .as_ref()
                .filter(|r| r.manifest_digest != resolved.manifest_digest.to_string())
                .and_then(|r| Digest::parse(&r.manifest_digest).ok())
                .map(|d| (d, ref_path.clone())),
        };
        let (tree, tree_record, fetched) = self
            .ensure_tree(source, image, &resolved, options, update, reporter)
            .await?;
        write_record(
            &ref_path,
            &RefRecord {
                version: RECORD_VERSION,
                source: describe,
                image: name,
                name: Some(resolved.name.clone()),
                platform,
                root_digest: resolved.root_digest.to_string(),
                manifest_digest: resolved.manifest_digest.to_string(),
                checked_at,
                used_at: now,
            },
        )?;
        Ok(Pulled {
            image: resolved,
            tree,
            record: tree_record,
            freshness,
            checked_at,
            extracted: fetched.is_some(),
            fetched_layers: fetched.map(|f| f.0).unwrap_or(0),
            fetched_bytes: fetched.map(|f| f.1).unwrap_or(0),
        })
    }

    /// Resolves from the source and stores the manifest and config.
    async fn resolve(
        &self,
        source: &dyn ImageSource,
        image: Option<&str>,
        options: &PullOptions,
    ) -> Result<ResolvedImage> {
        let img =
            source::resolve(source, image, &options.platform, options.explicit_platform).await?;
        self.blobs.put(&img.manifest_digest, &img.manifest_bytes)?;
        self.blobs.put(&img.config_digest, &img.config_bytes)?;
        Ok(img)
    }

    /// The image a reference record names, from the stored manifest and config.
    pub(super) fn load(&self, r: &RefRecord, shown: &str) -> Option<ResolvedImage> {
        let manifest_digest = Digest::parse(&r.manifest_digest).ok()?;
        let root_digest = Digest::parse(&r.root_digest).ok()?;
        let manifest = self.blobs.read_verified(&manifest_digest, MAX_JSON_BYTES)?;
        let config_digest = locald_core::manifest::parse_manifest(&manifest, shown)
            .ok()?
            .config()
            .digest()
            .to_string();
        let config = self
            .blobs
            .read_verified(&Digest::parse(&config_digest).ok()?, MAX_JSON_BYTES)?;
        match source::from_parts(
            shown.to_owned(),
            root_digest,
            manifest_digest,
            manifest,
            config,
        ) {
            Ok(img) => Some(img),
            Err(e) => {
                tracing::warn!("ignoring the cached manifest of {shown}: {e}");
                None
            }
        }
    }

    /// The tree of `image` for the options' filter: the cached one when it is
    /// intact, else extracted now (from cached blobs where there are). Returns the
    /// layers and bytes read from the source when it extracted.
    async fn ensure_tree(
        &self,
        source: &dyn ImageSource,
        wanted: Option<&str>,
        image: &ResolvedImage,
        options: &PullOptions,
        update: Update,
        reporter: Arc<dyn Reporter>,
    ) -> Result<(PathBuf, TreeRecord, Option<(usize, u64)>)> {
        let offline = update.offline;
        let filter = &options.filter;
        let manifest = &image.manifest_digest;
        let check = if options.policy == PullPolicy::Always {
            TreeCheck::Walk
        } else {
            TreeCheck::Sealed
        };
        // --keep-layers on a tree extracted without them: extract it again,
        // keeping them (only the layers the store lacks are fetched).
        let layers_wanted = options.keep_layers
            && source.is_remote()
            && image
                .layers
                .iter()
                .any(|l| self.blobs.open_blob(&l.digest, l.size).is_none());
        // A whole-root tree serves any filter.
        if !filter.is_everything() && !layers_wanted {
            if let Some(found) = self.intact_tree(manifest, &PathFilter::default(), true, check) {
                return Ok((found.0, found.1, None));
            }
        }
        if let Some(found) = self
            .intact_tree(manifest, filter, true, check)
            .filter(|_| !layers_wanted)
        {
            return Ok((found.0, found.1, None));
        }
        let lock_name = format!("image-{}.lock", manifest.hex());
        let _lock = match locald_core::lock::FileLock::try_acquire(
            &self.locks.join(&lock_name),
            Mode::Exclusive,
        )? {
            Some(l) => l,
            None => {
                reporter.note(&format!(
                    "waiting for another locald process that is pulling {}",
                    image.name
                ));
                self.lock(&lock_name, Mode::Exclusive).await?
            }
        };
        // The other process may have finished it while we waited.
        if let Some(found) = self
            .intact_tree(manifest, filter, false, check)
            .filter(|_| !layers_wanted)
        {
            return Ok((found.0, found.1, None));
        }
        let dir = self.tree_dir(manifest, filter);
        let record_path = self.tree_record_path(manifest, filter);
        // Leftovers of a killed or damaged pull: we hold the image lock, so nobody
        // else is writing them.
        remove_path(&record_path)?;
        remove_path(&dir)?;
        self.remove_stale_temporaries(&dir);

        let store_first = StoreFirst::new(source, self.blobs.clone(), offline, image, wanted);
        let extract_options = ExtractOptions {
            filter: filter.clone(),
            cancel: options.cancel.clone(),
            keep_blobs: (source.is_remote() && options.keep_layers)
                .then(|| self.blobs.clone() as Arc<dyn locald_extract::BlobKeeper>),
            list_entries: true,
        };
        let listing_path = dir.with_extension("listing");
        remove_path(&listing_path)?;
        let mut listings = None;
        if let Some((previous, ref_path)) = &update.previous {
            let job = RebaseJob {
                source: &store_first,
                image,
                previous,
                ref_path,
                dir: &dir,
                options: &extract_options,
            };
            match self.rebase(job, reporter.clone()).await {
                Ok(l) => listings = Some(l),
                Err(why) => tracing::debug!("extracting {} from scratch: {why}", image.name),
            }
        }
        let mut retried = HashSet::new();
        while listings.is_none() {
            match locald_extract::extract_image(
                &store_first,
                image,
                &dir,
                &extract_options,
                reporter.clone(),
            )
            .await
            {
                Ok(stats) => listings = Some(stats.listings),
                // A cached blob that no longer matches its digest: drop it and
                // fetch it from the source again.
                Err(Error::Layer {
                    digest,
                    source: cause,
                    index,
                }) if matches!(
                    *cause,
                    Error::DigestMismatch { .. } | Error::SizeMismatch { .. }
                ) && store_first.served_from_store(&digest)
                    && !offline
                    && retried.insert(digest.clone()) =>
                {
                    tracing::warn!(
                        "cached layer {index} ({digest}) of {} does not match its digest; fetching it again",
                        image.name
                    );
                    self.blobs.remove(&digest)?;
                    store_first.forget(&digest);
                }
                Err(e) => return Err(e),
            }
        }
        let listings = listings.unwrap_or_default();
        let record = self
            .finish_tree(&dir, &record_path, &listing_path, image, filter, listings)
            .await?;
        let fetched = (
            store_first.fetched.load(Ordering::Relaxed),
            store_first.fetched_bytes.load(Ordering::Relaxed),
        );
        Ok((dir, record, Some(fetched)))
    }

    /// Extracts `image` with `filter` into `target` from the cached blobs, reading
    /// missing ones from `source` when there is one (for `verify`).
    pub(super) async fn extract_again(
        &self,
        source: Option<&dyn ImageSource>,
        image: &ResolvedImage,
        filter: &PathFilter,
        target: &Path,
    ) -> Result<()> {
        let none = NoSource;
        let store_first = StoreFirst::new(
            source.unwrap_or(&none),
            self.blobs.clone(),
            source.is_none(),
            image,
            Some(&image.name),
        );
        let options = ExtractOptions {
            filter: filter.clone(),
            ..Default::default()
        };
        locald_extract::extract_image(
            &store_first,
            image,
            target,
            &options,
            Arc::new(locald_core::progress::Silent),
        )
        .await?;
        Ok(())
    }

    /// Fingerprints a finished tree and writes its listing, then its record (the
    /// record last: it is what makes the tree count as complete).
    async fn finish_tree(
        &self,
        dir: &Path,
        record_path: &Path,
        listing_path: &Path,
        image: &ResolvedImage,
        filter: &PathFilter,
        listings: Listings,
    ) -> Result<TreeRecord> {
        let walk_dir = dir.to_path_buf();
        // The seal first: a change made during the walk then breaks it.
        let (fingerprint, seal) = tokio::task::spawn_blocking(move || {
            let seal = tree::seal(&walk_dir)?;
            Ok::<_, Error>((tree::fingerprint(&walk_dir, false)?, seal))
        })
        .await
        .map_err(|e| Error::Join(e.to_string()))??;
        if listings.len() == image.layers.len() {
            write_record(
                listing_path,
                &ListingRecord {
                    version: RECORD_VERSION,
                    layers: image.layers.iter().map(|l| l.digest.to_string()).collect(),
                    listings,
                },
            )?;
        }
        let record = TreeRecord {
            version: RECORD_VERSION,
            manifest_digest: image.manifest_digest.to_string(),
            paths: tree_paths(filter),
            created_at: now(),
            fingerprint,
            walked_at: now(),
            seal: Some(seal),
        };
        write_record(record_path, &record)?;
        Ok(record)
    }

    /// Makes the tree of `job.image` from the cached tree of the image it
    /// updates, applying only the changed layers (see [`super::rebase`]). The old
    /// tree is consumed: it is used only when no other reference needs it. On
    /// `Err` (a reason, for the log) nothing was published and the caller
    /// extracts from scratch.
    async fn rebase(
        &self,
        job: RebaseJob<'_>,
        reporter: Arc<dyn Reporter>,
    ) -> std::result::Result<Listings, String> {
        let filter = &job.options.filter;
        let old_dir = self.tree_dir(job.previous, filter);
        let old_record = self.tree_record_path(job.previous, filter);
        let old_listing_path = old_dir.with_extension("listing");
        let old: ListingRecord =
            read_record(&old_listing_path).ok_or("the previous tree has no listing")?;
        let new_layers: Vec<String> = job
            .image
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect();
        let changed = rebase::changed_positions(&old.layers, &new_layers)
            .ok_or("the layers differ too much")?;
        if old.listings.len() != old.layers.len() {
            return Err("the previous listing is incomplete".into());
        }
        if self
            .intact_tree(job.previous, filter, false, TreeCheck::Walk)
            .is_none()
        {
            return Err("the previous tree is not intact".into());
        }
        let shared = self
            .ref_records()
            .into_iter()
            .any(|(p, r)| p != *job.ref_path && r.manifest_digest == job.previous.to_string());
        if shared {
            return Err("another reference uses the previous tree".into());
        }
        let lock_path = self
            .locks
            .join(format!("image-{}.lock", job.previous.hex()));
        let _old_lock = locald_core::lock::FileLock::try_acquire(&lock_path, Mode::Exclusive)
            .map_err(|e| e.to_string())?
            .ok_or("the previous image is busy")?;
        // From here the old tree is ours: without its record it no longer counts.
        remove_path(&old_record).map_err(|e| e.to_string())?;
        remove_path(&old_listing_path).map_err(|e| e.to_string())?;
        let name = job
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self
            .trees
            .join(format!(".{name}.locald-tmp-rebase-{}", std::process::id()));
        std::fs::rename(&old_dir, &tmp).map_err(|e| e.to_string())?;
        let result = self.rebase_in(&job, &old, &changed, &tmp, reporter).await;
        match result {
            Ok(listings) => {
                std::fs::rename(&tmp, job.dir).map_err(|e| {
                    let _ = remove_path(&tmp);
                    e.to_string()
                })?;
                tracing::debug!(
                    "updated {} by applying {} changed layers to the previous tree",
                    job.image.name,
                    changed.len()
                );
                Ok(listings)
            }
            Err(e) => {
                let _ = remove_path(&tmp);
                Err(e)
            }
        }
    }

    async fn rebase_in(
        &self,
        job: &RebaseJob<'_>,
        old: &ListingRecord,
        changed: &[usize],
        tmp: &Path,
        reporter: Arc<dyn Reporter>,
    ) -> std::result::Result<Listings, String> {
        let mut sub = job.image.clone();
        sub.layers = changed
            .iter()
            .map(|&i| job.image.layers[i].clone())
            .collect();
        let stats = locald_extract::apply_layers(job.source, &sub, tmp, job.options, reporter)
            .await
            .map_err(|e| locald_core::error::chain(&e))?;
        let new_changed = stats.listings;
        rebase::check(&old.listings, changed, &new_changed)?;
        let mut listings = old.listings.clone();
        for (k, &i) in changed.iter().enumerate() {
            listings[i] = new_changed[k].clone();
        }
        let all: Vec<Vec<Listed>> = listings
            .iter()
            .map(|l| l.clone().unwrap_or_default())
            .collect();
        let old_changed: Vec<Vec<Listed>> = changed
            .iter()
            .map(|&i| old.listings[i].clone().unwrap_or_default())
            .collect();
        let new_flat: Vec<Vec<Listed>> = new_changed
            .iter()
            .map(|l| l.clone().unwrap_or_default())
            .collect();
        let root = tmp.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let touched = rebase::remove_old(&root, &old_changed, &new_flat, &all)?;
            rebase::restore_dir_meta(&root, &touched, &all, rustix::process::geteuid().is_root())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok(listings)
    }

    /// The tree of `manifest` with `filter` if it is complete and unchanged since
    /// it was extracted. With [`TreeCheck::Sealed`], a tree walked less than
    /// [`TREE_WALK_INTERVAL`] ago whose seal holds is taken without a walk (a few
    /// dozen `lstat`s whatever its size); otherwise, and with
    /// [`TreeCheck::Walk`], its metadata fingerprint is computed again (one
    /// `lstat` per entry) and, when it matches, the walk is recorded. A changed
    /// one is reported (and replaced by the caller).
    fn intact_tree(
        &self,
        manifest: &Digest,
        filter: &PathFilter,
        warn: bool,
        check: TreeCheck,
    ) -> Option<(PathBuf, TreeRecord)> {
        let record_path = self.tree_record_path(manifest, filter);
        let record: TreeRecord = read_record(&record_path)?;
        let dir = self.tree_dir(manifest, filter);
        let now = now();
        let recent = now.saturating_sub(record.walked_at) < TREE_WALK_INTERVAL.as_secs();
        // Taken once, before any walk: a change made during the walk breaks it.
        let seal = tree::seal(&dir).ok();
        if check == TreeCheck::Sealed && recent {
            if seal.is_some() && seal == record.seal {
                tracing::debug!(
                    "cached tree {}: sealed, walked {}s ago",
                    dir.display(),
                    now.saturating_sub(record.walked_at)
                );
                return Some((dir, record));
            }
            tracing::debug!("cached tree {}: seal broken, walking it", dir.display());
        }
        match walk_tree(&dir, &record_path, record, seal) {
            Ok(Some(record)) => Some((dir, record)),
            Ok(None) if warn => {
                tracing::warn!(
                    "the cached tree {} was changed on disk; extracting it again",
                    dir.display()
                );
                None
            }
            Err(e) if warn => {
                tracing::warn!(
                    "the cached tree {} is damaged ({}); extracting it again",
                    dir.display(),
                    locald_core::error::chain(&e)
                );
                None
            }
            _ => None,
        }
    }

    /// Walks `tree` (a [`Pulled::tree`]) after a build that could write to it: the
    /// native runner runs buildpacks on the host, as the tree's owner when that is
    /// not root. Unchanged, the walk is recorded (the next use goes by the seal);
    /// changed, the tree's record is removed, so the next use extracts it again.
    /// Returns whether it was unchanged.
    pub fn walk_after_use(&self, tree: &Path) -> Result<bool> {
        let record_path = tree.with_extension("json");
        let Some(record) = read_record::<TreeRecord>(&record_path) else {
            return Ok(false);
        };
        let seal = Some(tree::seal(tree)?);
        let unchanged = matches!(walk_tree(tree, &record_path, record, seal), Ok(Some(_)));
        if !unchanged {
            remove_path(&record_path)?;
            remove_path(&tree.with_extension("listing"))?;
        }
        Ok(unchanged)
    }

    /// Removes extraction temporaries of `dir` left by a killed process.
    fn remove_stale_temporaries(&self, dir: &std::path::Path) {
        let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return;
        };
        let prefix = format!(".{name}.locald-tmp-");
        for e in std::fs::read_dir(&self.trees)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = remove_path(&e.path());
            }
        }
    }
}

/// Walks the tree at `dir` (one `lstat` per entry) against `record`, read from
/// `record_path`; `seal` is the tree's seal taken before the walk. Unchanged,
/// the walk is recorded and `Some(record)` returned as it is now; changed,
/// `None`; unreadable, the error.
fn walk_tree(
    dir: &Path,
    record_path: &Path,
    mut record: TreeRecord,
    seal: Option<String>,
) -> Result<Option<TreeRecord>> {
    let found = tree::fingerprint(dir, false)?;
    if found.meta != record.fingerprint.meta {
        return Ok(None);
    }
    tracing::debug!(
        "cached tree {}: walked {} entries, unchanged",
        dir.display(),
        found.entries
    );
    if let Some(seal) = seal {
        record.walked_at = now();
        record.seal = Some(seal);
        record_walk(record_path, &record);
    }
    Ok(Some(record))
}

/// Writes `record` (a walk's result) over the tree's record, unless that record
/// changed or went since it was read (a re-extraction or update of the tree by
/// another process): its word then stands.
fn record_walk(path: &Path, record: &TreeRecord) {
    let current: Option<TreeRecord> = read_record(path);
    let same = current
        .is_some_and(|c| c.created_at == record.created_at && c.fingerprint == record.fingerprint);
    if same {
        if let Err(e) = write_record(path, record) {
            tracing::debug!("could not record the walk in {}: {e}", path.display());
        }
    }
}

/// How long a walked tree is taken on its seal alone (see [`tree::seal`]).
pub const TREE_WALK_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How [`Cache::intact_tree`] checks a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TreeCheck {
    /// On its seal when it was walked recently, else by a walk.
    Sealed,
    /// By a walk.
    Walk,
}

/// A source that serves blobs from the blob store when it has them and from the
/// real source otherwise, counting what the real source served.
struct StoreFirst<'a> {
    inner: &'a dyn ImageSource,
    store: Arc<BlobStore>,
    /// Never ask the inner source for a blob (`--pull never` on a remote source).
    offline: bool,
    name: String,
    /// The image as the source knows it, for [`ImageSource::prepare`].
    image: Option<String>,
    prepared: tokio::sync::OnceCell<()>,
    fetched: AtomicUsize,
    fetched_bytes: AtomicU64,
    from_store: Mutex<HashSet<Digest>>,
}

impl<'a> StoreFirst<'a> {
    /// Serves `image`'s blobs from `store`, else from `inner` (never, when
    /// `offline`); `wanted` is the image as `inner` knows it.
    fn new(
        inner: &'a dyn ImageSource,
        store: Arc<BlobStore>,
        offline: bool,
        image: &ResolvedImage,
        wanted: Option<&str>,
    ) -> Self {
        StoreFirst {
            inner,
            store,
            offline,
            name: image.name.clone(),
            image: wanted.map(str::to_owned),
            prepared: tokio::sync::OnceCell::new(),
            fetched: AtomicUsize::new(0),
            fetched_bytes: AtomicU64::new(0),
            from_store: Mutex::new(HashSet::new()),
        }
    }

    fn stored(&self, d: &Descriptor) -> Option<std::fs::File> {
        let digest = Digest::parse(d.digest().as_ref()).ok()?;
        let file = self.store.open_blob(&digest, d.size())?;
        if let Ok(mut s) = self.from_store.lock() {
            s.insert(digest);
        }
        Some(file)
    }

    fn served_from_store(&self, d: &Digest) -> bool {
        self.from_store.lock().is_ok_and(|s| s.contains(d))
    }

    fn forget(&self, d: &Digest) {
        if let Ok(mut s) = self.from_store.lock() {
            s.remove(d);
        }
    }

    fn count(&self, d: &Descriptor) {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        self.fetched_bytes.fetch_add(d.size(), Ordering::Relaxed);
    }
}

impl ImageSource for StoreFirst<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn root<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, Result<Document>> {
        self.inner.root(image)
    }

    fn open_blob<'a>(&'a self, descriptor: &'a Descriptor) -> BoxFuture<'a, Result<BlobReader>> {
        Box::pin(async move {
            if let Some(f) = self.stored(descriptor) {
                let reader: BlobReader = Box::pin(tokio::fs::File::from_std(f));
                return Ok(reader);
            }
            if self.offline {
                return Err(Error::NotCached {
                    what: format!("layer {} of {}", descriptor.digest(), self.name),
                    why: "the pull policy is never".to_owned(),
                });
            }
            self.prepared
                .get_or_try_init(|| self.inner.prepare(self.image.as_deref()))
                .await?;
            self.count(descriptor);
            self.inner.open_blob(descriptor).await
        })
    }

    fn open_blob_blocking(
        &self,
        descriptor: &Descriptor,
    ) -> Option<Result<Box<dyn std::io::Read + Send>>> {
        if let Some(f) = self.stored(descriptor) {
            return Some(Ok(Box::new(f)));
        }
        if self.offline {
            return None;
        }
        let r = self.inner.open_blob_blocking(descriptor)?;
        self.count(descriptor);
        Some(r)
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
}

/// How [`Cache::ensure_tree`] may use what is already cached.
struct Update {
    /// Never read blobs from the (remote) source.
    offline: bool,
    /// The manifest this reference had before, and the reference's record.
    previous: Option<(Digest, PathBuf)>,
}

/// What [`Cache::rebase`] works on.
struct RebaseJob<'a> {
    source: &'a dyn ImageSource,
    image: &'a ResolvedImage,
    previous: &'a Digest,
    ref_path: &'a Path,
    dir: &'a Path,
    options: &'a ExtractOptions,
}

/// Which paths each layer of a tree touched (`trees/<key>.listing`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ListingRecord {
    version: u32,
    /// The layer digests, bottom first.
    layers: Vec<String>,
    /// Each layer's entries.
    listings: Listings,
}

/// No source at all: every blob must come from the store.
struct NoSource;

impl ImageSource for NoSource {
    fn describe(&self) -> String {
        "the cache".to_owned()
    }

    fn root<'a>(&'a self, _: Option<&'a str>) -> BoxFuture<'a, Result<Document>> {
        Box::pin(async { Err(Error::source("the image's source is not available")) })
    }

    fn open_blob<'a>(&'a self, d: &'a Descriptor) -> BoxFuture<'a, Result<BlobReader>> {
        Box::pin(async move {
            Err(Error::NotCached {
                what: format!("blob {}", d.digest()),
                why: "the image's source is not available".to_owned(),
            })
        })
    }
}

impl super::Record for ListingRecord {
    fn version(&self) -> u32 {
        self.version
    }
}

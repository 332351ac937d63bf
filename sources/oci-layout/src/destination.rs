//! OCI image layouts written: [`OciLayoutDestination`], the [`ImageDestination`]
//! for `oci-layout:DIR`, and [`read_single_image`], which reads the one image of
//! a layout (what the CNB lifecycle exports).
//!
//! Nothing here trusts what it copies: blobs are hashed and sized on the way, and
//! a mismatch fails the write with nothing published.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use locald_core::destination::{check_blob, write_blob_file, BlobPut, ImageDestination, Written};
use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::fsutil::{self, FinalSymlink};
use locald_core::lock::{FileLock, Mode};
use locald_core::manifest::{
    self, index_entry, manifest_media_type, read_marker, to_json, valid_ref_name, DocumentKind,
    MAX_JSON_BYTES, OCI_INDEX, OCI_LAYOUT_MARKER, REF_NAME,
};
use locald_core::oci_spec::image::Descriptor;
use locald_core::source::{self, BoxFuture, ResolvedImage, ResolvedIndex};
use locald_core::stream::HashingReader;

/// What [`OciLayoutDestination::open`] does with a layout already at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Merge into it: an entry with the same name is replaced, every other entry
    /// kept (blobs only they used stay, as with skopeo; `umoci gc` removes
    /// unreferenced ones). An empty directory is used; anything else refused.
    Merge,
    /// Replace it with a layout holding exactly this image (what the lifecycle
    /// reads a run image from: imgutil refuses an index with several entries).
    /// Names that are not valid `ref.name`s are left out rather than refused.
    Replace,
}

/// An OCI layout being written.
///
/// A new layout (missing or empty directory, or [`Existing::Replace`]) is built
/// in a temporary sibling and renamed into place by
/// [`ImageDestination::put_manifest`]; an existing one gets its blobs in place
/// (each hashed on a temporary name, then renamed) and its `index.json` replaced
/// atomically, last. Blobs are hard-linked from a source that keeps them as our
/// own files, else copied, and hashed either way; a blob already in the layout is
/// kept when it hashes right. The parent directory is locked while the
/// destination is open: two writers of the same layout take turns.
pub struct OciLayoutDestination {
    path: PathBuf,
    names: Vec<String>,
    /// Where blobs go: the temporary directory or the layout itself.
    root: PathBuf,
    /// The new layout being built, until it is published.
    fresh: Mutex<Option<tempfile::TempDir>>,
    /// The index of the layout merged into.
    existing_index: Option<serde_json::Value>,
    _lock: FileLock,
}

impl OciLayoutDestination {
    /// Opens `path` to receive one image under `names` (each written verbatim
    /// as an `org.opencontainers.image.ref.name`; pass the full normalised
    /// reference, `docker.io/library/app:latest`: skopeo and umoci find the image
    /// by that name, our source by any spelling that normalises to it, and a bare
    /// tag would clash between two images with the same tag).
    pub async fn open(path: &Path, names: Vec<String>, existing: Existing) -> Result<Self> {
        let (path, names_owned) = (path.to_path_buf(), names);
        tokio::task::spawn_blocking(move || Self::open_blocking(path, names_owned, existing))
            .await
            .map_err(|e| Error::Join(e.to_string()))?
    }

    fn open_blocking(path: PathBuf, names: Vec<String>, existing: Existing) -> Result<Self> {
        let names = match existing {
            Existing::Merge => {
                if let Some(bad) = names.iter().find(|n| !valid_ref_name(n)) {
                    return Err(Error::BadName {
                        what: "image name for an OCI layout",
                        name: bad.clone(),
                        reason: "org.opencontainers.image.ref.name allows letters, digits and single -._:@+ (or --) between them, in /-separated components".to_owned(),
                    });
                }
                names
            }
            Existing::Replace => names.into_iter().filter(|n| valid_ref_name(n)).collect(),
        };
        let (parent, name) = fsutil::split_target(&path)?;
        std::fs::create_dir_all(&parent).map_err(Error::io("create directory", &parent))?;
        let lock = FileLock::acquire_dir(&parent, Mode::Exclusive)?;
        remove_stale(&parent, &name);
        let target = match existing {
            Existing::Merge => classify_target(&path)?,
            Existing::Replace => Target::Missing,
        };
        let (root, fresh, existing_index) = match target {
            Target::Missing | Target::Empty => {
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".{name}.locald-tmp-"))
                    .tempdir_in(&parent)
                    .map_err(Error::io("create a temporary directory in", &parent))?;
                write_file(&tmp.path().join("oci-layout"), OCI_LAYOUT_MARKER)?;
                (tmp.path().to_path_buf(), Some(tmp), None)
            }
            Target::Layout => {
                remove_stale_blobs(&path);
                (path.clone(), None, Some(read_existing_index(&path)?))
            }
        };
        Ok(OciLayoutDestination {
            path,
            names,
            root,
            fresh: Mutex::new(fresh),
            existing_index,
            _lock: lock,
        })
    }

    /// The layout's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where blob `digest` goes, and a fresh temporary name beside it (its
    /// directory made).
    fn blob_paths(&self, digest: &Digest) -> Result<(PathBuf, PathBuf)> {
        let dest = self.root.join(digest.blob_path());
        let dir = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
        let tmp = dir.join(temp_name(digest.hex()));
        Ok((dest, tmp))
    }

    /// Puts `blob` as a hard link to `src`, verified (its size only, when the
    /// source vouches for the file:
    /// [`locald_core::source::ImageSource::blob_file_verified`]).
    fn link_blob(&self, blob: &BlobPut<'_>, src: &Path) -> Result<()> {
        let (dest, tmp) = self.blob_paths(blob.digest)?;
        let vouched = blob.source.blob_file_verified(blob.descriptor);
        let result = std::fs::hard_link(src, &tmp)
            .map_err(Error::io("link", &tmp))
            .and_then(|()| {
                if vouched {
                    check_size(&tmp, blob.size, &blob.what)
                } else {
                    verify_file(&tmp, blob.digest, blob.size, &blob.what)
                }
            })
            .and_then(|()| {
                std::fs::rename(&tmp, &dest).map_err(Error::io("move a blob into", &dest))
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

impl ImageDestination for OciLayoutDestination {
    fn describe(&self) -> String {
        format!("{}:{}", crate::SCHEME, self.path.display())
    }

    fn has_blob<'a>(&'a self, digest: &'a Digest, size: u64) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let path = self.root.join(digest.blob_path());
            if std::fs::symlink_metadata(&path).is_err() {
                return Ok(false);
            }
            let (digest, what) = (
                digest.clone(),
                format!("blob {digest} of {}", self.describe()),
            );
            let checked = tokio::task::spawn_blocking(move || {
                match verify_file(&path, &digest, size, &what) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(
                            "{} is damaged ({}); replacing it",
                            path.display(),
                            locald_core::error::chain(&e)
                        );
                        false
                    }
                }
            })
            .await
            .map_err(|e| Error::Join(e.to_string()))?;
            Ok(checked)
        })
    }

    fn put_blob<'a>(&'a self, blob: BlobPut<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // A hard link shares the inode: only for blobs we own, so that
            // whoever owns the source (the build user, for a native build run
            // by root) cannot change the published output afterwards.
            let linkable = blob
                .bytes
                .is_none()
                .then(|| blob.source.blob_file(blob.descriptor));
            let linkable = linkable.flatten().filter(|src| {
                use std::os::unix::fs::MetadataExt;
                std::fs::symlink_metadata(src)
                    .is_ok_and(|m| m.is_file() && m.uid() == rustix::process::geteuid().as_raw())
            });
            if let Some(src) = linkable {
                match block_in_place_or_inline(|| self.link_blob(&blob, &src)) {
                    Ok(()) => return Ok(()),
                    Err(e @ (Error::DigestMismatch { .. } | Error::SizeMismatch { .. })) => {
                        return Err(e)
                    }
                    Err(e) => tracing::debug!("not hard-linking ({e}); copying"),
                }
            }
            let (dest, tmp) = self.blob_paths(blob.digest)?;
            let result = write_blob_file(&blob, &tmp).await.and_then(|()| {
                std::fs::rename(&tmp, &dest).map_err(Error::io("move a blob into", &dest))
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
    }

    fn put_manifest<'a>(&'a self, image: &'a ResolvedImage) -> BoxFuture<'a, Result<Written>> {
        Box::pin(async move {
            let manifest_path = self.root.join(image.manifest_digest.blob_path());
            write_atomic(&manifest_path, &image.manifest_bytes)?;
            let index = merged_index(self.existing_index.clone(), &self.names, |annotations| {
                index_entry(
                    &manifest_media_type(&image.manifest),
                    &image.manifest_digest,
                    image.manifest_bytes.len() as u64,
                    &image.config,
                    annotations,
                )
            })?;
            self.publish(&index)?;
            Ok(Written::of(image))
        })
    }

    fn put_child_manifest<'a>(&'a self, image: &'a ResolvedImage) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.root.join(image.manifest_digest.blob_path());
            write_atomic(&path, &image.manifest_bytes)
        })
    }

    fn put_index<'a>(&'a self, index: &'a ResolvedIndex) -> BoxFuture<'a, Result<Written>> {
        Box::pin(async move {
            write_atomic(&self.root.join(index.digest.blob_path()), &index.bytes)?;
            let merged = merged_index(self.existing_index.clone(), &self.names, |annotations| {
                let mut v = serde_json::json!({
                    "mediaType": index.media_type,
                    "digest": index.digest.to_string(),
                    "size": index.bytes.len(),
                });
                if !annotations.is_empty() {
                    v["annotations"] = serde_json::json!(annotations);
                }
                v
            })?;
            self.publish(&merged)?;
            Ok(Written {
                manifest_digest: index.digest.clone(),
                config_digest: index.digest.clone(),
                size: index.bytes.len() as u64,
            })
        })
    }
}

impl OciLayoutDestination {
    /// Writes the new `index.json`: into the new layout, then renamed into
    /// place; or over the existing one, atomically.
    fn publish(&self, index: &[u8]) -> Result<()> {
        let fresh = self.fresh.lock().map(|mut f| f.take()).unwrap_or(None);
        match fresh {
            Some(tmp) => {
                write_file(&tmp.path().join("index.json"), index)?;
                set_mode(tmp.path(), 0o755)?;
                publish_dir(tmp, &self.path)
            }
            None => write_atomic(&self.path.join("index.json"), index),
        }
    }
}

/// Runs blocking work from async code: through
/// [`tokio::task::block_in_place`] on a multi-threaded runtime (the worker's
/// other tasks move elsewhere meanwhile), inline on any other.
fn block_in_place_or_inline<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Reads the only image of the layout at `dir` (its index.json must list one
/// image manifest, not an index), every document verified.
pub fn read_single_image(dir: &Path) -> Result<ResolvedImage> {
    let bad = |reason: String| Error::BadLayout {
        path: dir.to_path_buf(),
        reason,
    };
    read_marker(dir).map_err(bad)?;
    let index_path = dir.join("index.json");
    let what = format!("index.json of layout {}", dir.display());
    let bytes = read_json_file(&index_path, &what)?;
    let index = manifest::parse_index(&bytes, &what)?;
    let mut entries: Vec<&Descriptor> = Vec::new();
    for d in index.manifests() {
        if !entries.iter().any(|e| e.digest() == d.digest()) {
            entries.push(d);
        }
    }
    let entry = match entries.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(bad("it holds no image".to_owned())),
        many => {
            return Err(bad(format!(
                "it holds {} images; expected exactly one",
                many.len()
            )))
        }
    };
    let manifest_what = format!("manifest {} in layout {}", entry.digest(), dir.display());
    let manifest_digest = manifest::descriptor_digest(&entry, &manifest_what)?;
    manifest::check_size(entry.size(), &manifest_what)?;
    let manifest_bytes = read_blob_small(dir, &manifest_digest, &manifest_what)?;
    if manifest_bytes.len() as u64 != entry.size() {
        return Err(Error::SizeMismatch {
            what: manifest_what,
            expected: entry.size(),
            actual: manifest_bytes.len() as u64,
        });
    }
    let media_type = entry.media_type().to_string();
    if manifest::classify(Some(&media_type), &manifest_bytes, &manifest_what)?
        == DocumentKind::Index
    {
        return Err(bad(format!(
            "its image {manifest_digest} is an image index; expected a single image manifest"
        )));
    }
    let parsed = manifest::parse_manifest(&manifest_bytes, &manifest_what)?;
    let config_what = format!("config of {manifest_what}");
    let config_digest = manifest::descriptor_digest(parsed.config(), &config_what)?;
    manifest::check_size(parsed.config().size(), &config_what)?;
    let config_bytes = read_blob_small(dir, &config_digest, &config_what)?;
    let name = entry
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .cloned()
        .unwrap_or_else(|| format!("the image in layout {}", dir.display()));
    source::from_parts(
        name,
        manifest_digest.clone(),
        manifest_digest,
        manifest_bytes,
        config_bytes,
    )
}

/// What is at an output path.
enum Target {
    Missing,
    Empty,
    Layout,
}

fn classify_target(to: &Path) -> Result<Target> {
    let refuse = |reason: String| Error::OutputRefused {
        path: to.to_path_buf(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(to) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Target::Missing),
        Err(e) => return Err(Error::io("inspect", to)(e)),
    };
    if !meta.is_dir() {
        return Err(refuse(
            "it exists and is not a directory (an OCI layout is a directory)".to_owned(),
        ));
    }
    if to.join("oci-layout").exists() {
        read_marker(to).map_err(|reason| Error::BadLayout {
            path: to.to_path_buf(),
            reason,
        })?;
        return Ok(Target::Layout);
    }
    let mut entries = std::fs::read_dir(to).map_err(Error::io("read directory", to))?;
    if entries.next().is_none() {
        return Ok(Target::Empty);
    }
    Err(refuse(
        "it is a directory that is neither empty nor an OCI image layout (no oci-layout file)"
            .to_owned(),
    ))
}

/// The index.json of the layout `to` (an empty one when it has none).
fn read_existing_index(to: &Path) -> Result<serde_json::Value> {
    let index_path = to.join("index.json");
    if !index_path.exists() {
        return Ok(empty_index());
    }
    let what = format!("index.json of layout {}", to.display());
    let bytes = read_json_file(&index_path, &what)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: what.clone(),
        source,
    })?;
    if !v.get("manifests").is_none_or(|m| m.is_array()) {
        return Err(Error::BadLayout {
            path: to.to_path_buf(),
            reason: "its index.json has a \"manifests\" that is not a list".to_owned(),
        });
    }
    Ok(v)
}

fn empty_index() -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    })
}

/// `existing` index.json (or a new one) with an entry (made by `entry` from its
/// annotations) per name, replacing any entry of that name (one unnamed entry
/// when there is no name).
fn merged_index(
    existing: Option<serde_json::Value>,
    names: &[String],
    entry: impl Fn(BTreeMap<String, String>) -> serde_json::Value,
) -> Result<Vec<u8>> {
    let mut index = existing.unwrap_or_else(empty_index);
    let mut manifests: Vec<serde_json::Value> = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    if names.is_empty() {
        manifests.push(entry(BTreeMap::new()));
    }
    for name in names {
        manifests.retain(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(|n| n.as_str())
                != Some(name.as_str())
        });
        manifests.push(entry(BTreeMap::from([(REF_NAME.to_owned(), name.clone())])));
    }
    index["manifests"] = serde_json::Value::Array(manifests);
    if index.get("schemaVersion").is_none() {
        index["schemaVersion"] = 2.into();
    }
    to_json(&index, "index.json")
}

/// Checks the size of the file at `path` only.
fn check_size(path: &Path, size: u64, what: &str) -> Result<()> {
    let actual = std::fs::metadata(path)
        .map_err(Error::io("inspect", path))?
        .len();
    if actual == size {
        Ok(())
    } else {
        Err(Error::SizeMismatch {
            what: what.to_owned(),
            expected: size,
            actual,
        })
    }
}

/// Hashes the file at `path` and checks it is `size` bytes of `digest`.
fn verify_file(path: &Path, digest: &Digest, size: u64, what: &str) -> Result<()> {
    use std::io::Read;
    let file = fsutil::open_regular(path, FinalSymlink::Follow).map_err(Error::io("open", path))?;
    let reader = HashingReader::new(file.take(size.saturating_add(1)), digest);
    let (actual, count) = reader.finish().map_err(Error::ReadBlob)?;
    check_blob(digest, size, actual, count, what)
}

/// Blob temporaries of a killed earlier run, inside an output layout.
fn remove_stale_blobs(layout: &Path) {
    for alg in std::fs::read_dir(layout.join("blobs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in std::fs::read_dir(alg.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') && n.contains(".locald-tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for e in std::fs::read_dir(layout).into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(".index.json.locald-tmp-")
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A temporary file name for `hex` unique in this process.
fn temp_name(hex: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{hex}.locald-tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes `.NAME.locald-tmp-*` left in `parent` by a killed run. Only called
/// under the directory's lock, so no live writer owns one.
fn remove_stale(parent: &Path, name: &str) {
    let prefix = format!(".{name}.locald-tmp-");
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let p = e.path();
            tracing::debug!("removing {} left by an earlier run", p.display());
            let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(err) = removed {
                tracing::warn!("could not remove {}: {err}", p.display());
            }
        }
    }
}

/// Moves the finished `tmp` to `dest`, replacing what is there: atomically
/// exchanged when `dest` exists (`renameat2(RENAME_EXCHANGE)`), else renamed.
fn publish_dir(tmp: tempfile::TempDir, dest: &Path) -> Result<()> {
    let path = tmp.keep();
    let result = (|| {
        match std::fs::rename(&path, dest) {
            Ok(()) => return Ok(()),
            Err(e) if std::fs::symlink_metadata(dest).is_err() => {
                return Err(Error::io("move the finished layout to", dest)(e))
            }
            Err(_) => {}
        }
        let exchanged = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &path,
            rustix::fs::CWD,
            dest,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        if exchanged.is_err() {
            // A filesystem without RENAME_EXCHANGE: move the old one aside first.
            let aside = path.with_file_name(format!(
                "{}-old",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ));
            std::fs::rename(dest, &aside).map_err(Error::io("move aside", dest))?;
            std::fs::rename(&path, dest).map_err(Error::io("move the finished layout to", dest))?;
            remove_any(&aside);
        }
        Ok(())
    })();
    // After an exchange `path` holds the old layout; after a failure, ours.
    remove_any(&path);
    result
}

fn remove_any(p: &Path) {
    let _ = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    };
}

/// Writes `bytes` to the new file `path`.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    }
    std::fs::write(path, bytes).map_err(Error::io("write", path))
}

/// Replaces `path` with `bytes` atomically (temporary sibling, renamed).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (parent, name) = fsutil::split_target(path)?;
    std::fs::create_dir_all(&parent).map_err(Error::io("create directory", &parent))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.locald-tmp-"))
        .tempfile_in(&parent)
        .map_err(Error::io("create a temporary file in", &parent))?;
    tmp.write_all(bytes)
        .map_err(Error::io("write", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(Error::io("write", tmp.path()))?;
    set_mode(tmp.path(), 0o644)?;
    tmp.persist(path)
        .map_err(|e| Error::io("replace", path)(e.error))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("set permissions of", path))
}

/// Reads a JSON document of a layout, capped at [`MAX_JSON_BYTES`].
fn read_json_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    fsutil::read_small(path, MAX_JSON_BYTES, FinalSymlink::Follow).map_err(|e| {
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            Error::TooLarge {
                what: what.to_owned(),
                size: MAX_JSON_BYTES + 1,
                limit: MAX_JSON_BYTES,
            }
        } else {
            Error::io("read", path)(e)
        }
    })
}

/// Reads a small blob of the layout `dir`; its digest is checked by the caller
/// ([`source::from_parts`]).
fn read_blob_small(dir: &Path, digest: &Digest, what: &str) -> Result<Vec<u8>> {
    let path = dir.join(digest.blob_path());
    match read_json_file(&path, what) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::BadLayout {
                path: dir.to_path_buf(),
                reason: format!("blob {digest} ({what}) is missing"),
            })
        }
        other => other,
    }
}

/// Removes the blobs of the OCI layout at `layout` that nothing its `index.json`
/// names reaches (manifests, nested indexes, configs, layers): what an exporter
/// that rewrites `index.json` on every build (the lifecycle's does) leaves
/// behind. Returns the bytes freed. Only files named like a sha256 digest are
/// considered; a layout whose documents cannot be read is left alone.
pub fn prune_layout_blobs(layout: &Path) -> Result<u64> {
    let index_path = layout.join("index.json");
    let read_json = |path: &Path| -> Option<serde_json::Value> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_file() || meta.len() > MAX_JSON_BYTES {
            return None;
        }
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    };
    let Some(index) = read_json(&index_path) else {
        return Ok(0);
    };
    let mut live: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut documents = vec![index];
    while let Some(doc) = documents.pop() {
        let descriptors = ["manifests", "layers"]
            .iter()
            .filter_map(|k| doc.get(*k).and_then(|v| v.as_array()))
            .flatten()
            .chain(doc.get("config"));
        for d in descriptors {
            let Some(digest) = d.get("digest").and_then(|v| v.as_str()) else {
                continue;
            };
            let Ok(parsed) = digest.parse::<Digest>() else {
                continue;
            };
            if !live.insert(parsed.hex().to_owned()) {
                continue;
            }
            let media = d.get("mediaType").and_then(|v| v.as_str()).unwrap_or("");
            if media.contains("manifest") || media.contains("index") {
                match read_json(&layout.join(parsed.blob_path())) {
                    Some(child) => documents.push(child),
                    // Unreadable: do not guess what it references.
                    None => return Ok(0),
                }
            }
        }
    }
    let dir = layout.join("blobs/sha256");
    let mut freed = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_digest = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_digest || live.contains(&name) {
            continue;
        }
        if let Ok(meta) = entry.metadata() {
            if meta.is_file() {
                freed += meta.len();
                std::fs::remove_file(entry.path()).map_err(Error::io("remove", &entry.path()))?;
            }
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn publish_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        for round in ["one", "two"] {
            let tmp = tempfile::Builder::new()
                .prefix(".d.locald-tmp-")
                .tempdir_in(dir.path())
                .unwrap();
            std::fs::write(tmp.path().join("f"), round).unwrap();
            publish_dir(tmp, &dest).unwrap();
            assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), round);
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("d")]);
        }
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".d.locald-tmp-abc")).unwrap();
        std::fs::write(dir.path().join(".d.locald-tmp-x"), "x").unwrap();
        std::fs::write(dir.path().join(".e.locald-tmp-x"), "x").unwrap();
        remove_stale(dir.path(), "d");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![".e.locald-tmp-x"]);
    }
}

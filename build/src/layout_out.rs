//! Writing images out: the run image placed where the CNB lifecycle looks for it
//! in a `-layout-dir`, and the app image the lifecycle exported copied into an OCI
//! layout or a `docker load`-able archive.
//!
//! - [`layout_path_for`]: where in a layout dir the lifecycle reads and writes an
//!   image (pure).
//! - [`place_image`]: a source's image for one platform as a single-manifest OCI
//!   layout at that path, every byte verified while it is written, built in a
//!   temporary sibling and renamed into place; reused when already complete.
//! - [`write_oci_layout`]: the single image of a layout copied into a new or
//!   existing OCI layout under a `org.opencontainers.image.ref.name`.
//! - [`write_docker_archive`]: the same image as a Docker 25+ style `docker save`
//!   tarball (an OCI layout plus `manifest.json` and `repositories`).
//!
//! Nothing here trusts what it copies: blobs are hashed and sized on the way, and a
//! mismatch fails the write with nothing published.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, ImageConfiguration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use locald_core::cancel::Cancel;
use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::fsutil::{self, FinalSymlink};
use locald_core::lock::{FileLock, Mode};
use locald_core::manifest::{
    self, DocumentKind, MAX_JSON_BYTES, OCI_INDEX, OCI_MANIFEST, REF_NAME,
};
use locald_core::platform::Platform;
use locald_core::progress::Reporter;
use locald_core::reference::{ImageReference, DOCKER_HUB};
use locald_core::source::{self, ImageSource, ResolvedImage};
use locald_core::stream::HashingReader;

/// The `oci-layout` marker file every layout written here gets.
pub const OCI_LAYOUT_MARKER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The annotation containerd and `docker load` (25+) name an imported image by.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// The registry go-containerregistry (and so the lifecycle) names Docker Hub by.
const GGCR_DOCKER_HUB: &str = "index.docker.io";

/// Read and write buffer size.
const BUF: usize = 128 * 1024;

/// Layers fetched at once by [`place_image`].
const PARALLEL_LAYERS: usize = 4;

// ---------------------------------------------------------------------------
// Where the lifecycle looks

/// The path, relative to a CNB `-layout-dir`, where the lifecycle (Platform API
/// 0.12+, `-layout`) reads an image named `reference` (the run image, a previous
/// image) and writes the app image it exports.
///
/// The rule is imgutil's `layout.ParseRefToPath` (buildpacks/imgutil
/// `layout/layout.go`, called by buildpacks/lifecycle `image/layout_handler.go`
/// and the exporter in `cmd/lifecycle/exporter.go`): the name is parsed by
/// go-containerregistry `name.ParseReference(ref, name.WeakValidation)`, and the
/// path is `RegistryStr()/RepositoryStr()/` followed by the tag, or for a digest
/// reference (a tag next to a digest is ignored) by `ALGORITHM/HEX`. In
/// go-containerregistry (`pkg/name/registry.go`, `repository.go`):
///
/// - Docker Hub is `index.docker.io` (`docker.io` is rewritten to it), and a
///   one-component Docker Hub repository gets `library/`;
/// - the first component is a registry only when it contains `.` or `:`, so
///   `localhost/foo` (a registry for Docker) is the Docker Hub repository
///   `localhost/foo` there.
///
/// | reference | path |
/// |---|---|
/// | `docker.io/library/ubuntu:22.04` (`ubuntu:22.04`) | `index.docker.io/library/ubuntu/22.04` |
/// | `heroku/heroku:22` | `index.docker.io/heroku/heroku/22` |
/// | `127.0.0.1:5000/a/b:1` | `127.0.0.1:5000/a/b/1` |
/// | `ghcr.io/x/y@sha256:HEX` | `ghcr.io/x/y/sha256/HEX` |
/// | `localhost/foo` | `index.docker.io/localhost/foo/latest` |
///
/// The path is exact for the lifecycle given `reference.to_string()` (the
/// normalised spelling): pass that string to the lifecycle, not the user's.
/// Every component is a validated name part, so the path never holds `..`.
pub fn layout_path_for(reference: &ImageReference) -> PathBuf {
    let registry = reference.registry();
    let mut path = PathBuf::new();
    if registry == DOCKER_HUB {
        path.push(GGCR_DOCKER_HUB);
    } else if registry.contains('.') || registry.contains(':') {
        path.push(registry);
    } else {
        // `localhost`: not a registry to go-containerregistry.
        path.push(GGCR_DOCKER_HUB);
        path.push(registry);
    }
    for part in reference.repository().split('/') {
        path.push(part);
    }
    match (reference.digest(), reference.tag()) {
        (Some(d), _) => {
            path.push(d.algorithm().as_str());
            path.push(d.hex());
        }
        (None, Some(t)) => path.push(t),
        (None, None) => path.push("latest"),
    }
    path
}

// ---------------------------------------------------------------------------
// Names

/// Whether `name` is a valid `org.opencontainers.image.ref.name` (the grammar of
/// the image-spec's annotations: components of `[A-Za-z0-9]+` joined by one of
/// `-._:@+` or `--`, separated by `/`). skopeo and umoci refuse other names.
pub fn valid_ref_name(name: &str) -> bool {
    !name.is_empty() && name.split('/').all(valid_ref_component)
}

fn valid_ref_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "--" || (sep.len() == 1 && "-._:@+".contains(sep))) {
            return false;
        }
    }
    true
}

/// A reference as `docker save` writes it in `RepoTags` and `docker images` shows
/// it: Docker Hub's `docker.io/` and `library/` left out (`app:latest`,
/// `heroku/builder:22`), other registries kept (`127.0.0.1:5000/a/b:1`).
pub fn familiar_name(reference: &ImageReference) -> String {
    let repo = reference.repository();
    let mut s = if reference.registry() == DOCKER_HUB {
        match repo.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => repo.to_owned(),
        }
    } else {
        format!("{}/{repo}", reference.registry())
    };
    if let Some(t) = reference.tag() {
        s.push(':');
        s.push_str(t);
    }
    s
}

/// [`familiar_name`] without the tag.
fn familiar_repository(reference: &ImageReference) -> String {
    let full = familiar_name(reference);
    match reference.tag() {
        Some(t) => full[..full.len() - t.len() - 1].to_owned(),
        None => full,
    }
}

// ---------------------------------------------------------------------------
// Placing an image for the lifecycle

/// What [`place_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The layout directory (`layout_dir/`[`layout_path_for`]).
    pub path: PathBuf,
    /// The digest of the image manifest it holds.
    pub manifest_digest: Digest,
    /// The same manifest was there already, complete; nothing was fetched.
    pub reused: bool,
}

/// Options of [`place_image_with`].
#[derive(Clone, Default)]
pub struct PlaceOptions {
    /// The platform was asked for by the user: a single-platform image for
    /// another one is an error instead of a warning (see [`source::resolve`]).
    pub explicit_platform: bool,
    /// Checked between chunks; set it to stop.
    pub cancel: Cancel,
    /// Told about each layer fetched.
    pub reporter: Option<Arc<dyn Reporter>>,
}

/// Places `image` of `source`, for `platform`, at `layout_dir/`
/// [`layout_path_for`]`(reference)` as a single-manifest OCI layout: `oci-layout`,
/// `index.json` listing exactly the image manifest (never an index: imgutil's
/// layout reader refuses an index with several entries), and its blobs.
///
/// Documents come through [`source::resolve`] (platform chosen, digests checked);
/// layers are streamed from [`ImageSource::open_blob`] and hashed and counted
/// while written. The layout is built in a temporary sibling and renamed into
/// place, replacing an older one, so the path never shows a half-written layout;
/// a failure leaves nothing there. Temporaries of a killed earlier run are
/// removed. When the path already holds this manifest with all its blobs, no blob
/// is read and [`Placed::reused`] is set (layer contents are then not re-hashed:
/// only this function writes there, and it publishes verified layouts only).
pub async fn place_image(
    source: &dyn ImageSource,
    image: Option<&str>,
    platform: &Platform,
    layout_dir: &Path,
    reference: &ImageReference,
) -> Result<Placed> {
    place_image_with(
        source,
        image,
        platform,
        layout_dir,
        reference,
        &PlaceOptions::default(),
    )
    .await
}

/// [`place_image`] with options (progress, cancellation, platform strictness).
pub async fn place_image_with(
    source: &dyn ImageSource,
    image: Option<&str>,
    platform: &Platform,
    layout_dir: &Path,
    reference: &ImageReference,
    options: &PlaceOptions,
) -> Result<Placed> {
    let resolved = source::resolve(source, image, platform, options.explicit_platform).await?;
    let dest = layout_dir.join(layout_path_for(reference));
    let (parent, name) = split_target(&dest)?;
    std::fs::create_dir_all(&parent).map_err(Error::io("create directory", &parent))?;
    let _lock = lock_dir_async(&parent).await?;
    remove_stale(&parent, &name);
    if is_placed(&dest, &resolved) {
        tracing::debug!(path = %dest.display(), digest = %resolved.manifest_digest, "image already placed");
        return Ok(Placed {
            path: dest,
            manifest_digest: resolved.manifest_digest,
            reused: true,
        });
    }
    let tmp = temp_dir_in(&parent, &name)?;
    write_placed(source, &resolved, tmp.path(), reference, options).await?;
    publish_dir(tmp, &dest)?;
    Ok(Placed {
        path: dest,
        manifest_digest: resolved.manifest_digest,
        reused: false,
    })
}

/// Writes the whole layout of `image` into the empty directory `root`.
async fn write_placed(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    root: &Path,
    reference: &ImageReference,
    options: &PlaceOptions,
) -> Result<()> {
    write_file(&root.join("oci-layout"), OCI_LAYOUT_MARKER)?;
    put_bytes(root, &image.manifest_digest, &image.manifest_bytes)?;
    put_bytes(root, &image.config_digest, &image.config_bytes)?;
    let total = image.layers.len();
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<(usize, &source::LayerInfo)> = image
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| seen.insert(l.digest.clone()))
        .collect();
    futures::stream::iter(unique)
        .map(|(i, layer)| async move {
            fetch_layer(source, image, layer, i + 1, total, root, options)
                .await
                .map_err(|e| Error::Layer {
                    index: i + 1,
                    digest: layer.digest.clone(),
                    source: Box::new(e),
                })
        })
        .buffer_unordered(PARALLEL_LAYERS)
        .try_collect::<Vec<()>>()
        .await?;
    let mut annotations = BTreeMap::new();
    let full = reference.to_string();
    if valid_ref_name(&full) {
        annotations.insert(REF_NAME.to_owned(), full);
    }
    let entry = index_entry(
        &manifest_media_type(image),
        &image.manifest_digest,
        image.manifest_bytes.len() as u64,
        &image.config,
        annotations,
    );
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry],
    });
    write_file(&root.join("index.json"), &to_json(&index, "index.json")?)?;
    set_mode(root, 0o755)
}

/// Streams one layer from the source into `root/blobs/...`, checking its size
/// and digest on the way.
async fn fetch_layer(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    layer: &source::LayerInfo,
    index: usize,
    total: usize,
    root: &Path,
    options: &PlaceOptions,
) -> Result<()> {
    let what = format!("layer {index} of {}", image.name);
    if let Some(r) = &options.reporter {
        r.layer_started(index, total, &layer.digest, layer.size);
    }
    let path = root.join(layer.digest.blob_path());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    }
    let mut out = tokio::fs::File::create(&path)
        .await
        .map_err(Error::io("create", &path))?;
    let reader = source.open_blob(&layer.descriptor).await?;
    let mut reader = reader.take(layer.size.saturating_add(1));
    let mut hasher = layer.digest.hasher();
    let mut count = 0u64;
    let mut buf = vec![0u8; BUF];
    loop {
        options.cancel.check()?;
        let n = reader.read(&mut buf).await.map_err(Error::ReadBlob)?;
        if n == 0 {
            break;
        }
        count += n as u64;
        if count > layer.size {
            return Err(Error::SizeMismatch {
                what,
                expected: layer.size,
                actual: count,
            });
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .await
            .map_err(Error::io("write", &path))?;
        if let Some(r) = &options.reporter {
            r.layer_progress(index, n as u64);
        }
    }
    if count != layer.size {
        return Err(Error::SizeMismatch {
            what,
            expected: layer.size,
            actual: count,
        });
    }
    let actual = hasher.finish();
    if actual != layer.digest {
        return Err(Error::DigestMismatch {
            what,
            expected: layer.digest.clone(),
            actual,
        });
    }
    out.flush().await.map_err(Error::io("write", &path))?;
    if let Some(r) = &options.reporter {
        r.layer_finished(index);
    }
    Ok(())
}

/// Whether `dest` is a complete layout of exactly `image`: its index lists only
/// this manifest, the manifest and config blobs hold the verified bytes, and
/// every layer blob is a regular file of the right size.
fn is_placed(dest: &Path, image: &ResolvedImage) -> bool {
    let check = || -> Option<()> {
        read_marker(dest).ok()?;
        let bytes = read_small(&dest.join("index.json"), MAX_JSON_BYTES).ok()?;
        let index = manifest::parse_index(&bytes, "index.json").ok()?;
        match index.manifests().as_slice() {
            [only] if only.digest().to_string() == image.manifest_digest.to_string() => {}
            _ => return None,
        }
        for (digest, bytes) in [
            (&image.manifest_digest, &image.manifest_bytes),
            (&image.config_digest, &image.config_bytes),
        ] {
            let found = read_small(&dest.join(digest.blob_path()), MAX_JSON_BYTES).ok()?;
            (found == *bytes).then_some(())?;
        }
        for l in &image.layers {
            let m = std::fs::symlink_metadata(dest.join(l.digest.blob_path())).ok()?;
            (m.is_file() && m.len() == l.size).then_some(())?;
        }
        Some(())
    };
    check().is_some()
}

fn manifest_media_type(image: &ResolvedImage) -> String {
    image
        .manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| OCI_MANIFEST.to_owned())
}

// ---------------------------------------------------------------------------
// Reading the image the lifecycle wrote

/// The single image of a layout, its documents verified.
struct LayoutImage {
    dir: PathBuf,
    /// The index.json entry.
    entry: Descriptor,
    image: ResolvedImage,
}

impl LayoutImage {
    /// Every blob of the image (manifest, config, layers; each once) with its size.
    fn blobs(&self) -> Vec<(Digest, u64)> {
        let mut out = vec![
            (
                self.image.manifest_digest.clone(),
                self.image.manifest_bytes.len() as u64,
            ),
            (
                self.image.config_digest.clone(),
                self.image.config_bytes.len() as u64,
            ),
        ];
        for l in &self.image.layers {
            if !out.iter().any(|(d, _)| *d == l.digest) {
                out.push((l.digest.clone(), l.size));
            }
        }
        out
    }

    fn total_size(&self) -> u64 {
        self.blobs().iter().map(|(_, s)| s).sum()
    }
}

/// The manifest digest of the single image placed at `dir` by an earlier
/// [`place_image`] (or written there by anyone in that shape), `None` when
/// there is none or it cannot be read.
pub fn placed_manifest(dir: &Path) -> Option<Digest> {
    read_layout_image(dir)
        .ok()
        .map(|image| image.image.manifest_digest)
}

/// Reads the only image of the layout at `dir` (its index.json must list one
/// image manifest).
fn read_layout_image(dir: &Path) -> Result<LayoutImage> {
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
            "its image {} is an image index; expected a single image manifest",
            manifest_digest
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
    let image = source::from_parts(
        name,
        manifest_digest.clone(),
        manifest_digest,
        manifest_bytes,
        config_bytes,
    )?;
    Ok(LayoutImage {
        dir: dir.to_path_buf(),
        entry,
        image,
    })
}

// ---------------------------------------------------------------------------
// OCI layout output

/// What [`write_oci_layout`] or [`write_docker_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The image manifest's digest.
    pub manifest_digest: Digest,
    /// The image config's digest (the image ID `docker images` shows).
    pub config_digest: Digest,
    /// Bytes: of the image's blobs for a layout (whether copied or already
    /// there), of the archive file for an archive.
    pub size: u64,
}

/// Copies the single image of the layout `image_layout` into the OCI layout `to`
/// under the name `ref_name`.
///
/// `to` is created when missing (built in a temporary sibling, then renamed) or
/// when an empty directory; an existing layout is merged into: an entry with the
/// same `org.opencontainers.image.ref.name` is replaced, every other entry kept
/// (blobs only they used stay, as with skopeo; `umoci gc` removes unreferenced
/// ones). Anything else at `to` is refused. Blobs are hard-linked from
/// `image_layout` when possible, else copied, and hashed either way; a blob
/// already in `to` is kept when it hashes right. `index.json` is replaced
/// atomically, last.
///
/// `ref_name` is written verbatim and must follow the image-spec grammar (see
/// [`valid_ref_name`]). Pass the full normalised reference
/// (`docker.io/library/app:latest`, [`ImageReference`]'s `Display`): skopeo
/// (`oci:DIR:docker.io/library/app:latest`) and umoci (`--image
/// DIR:docker.io/library/app:latest`; both split at the first `:`) find it by
/// that name, and the `oci-layout` source by it or by any spelling that
/// normalises to it (`app`, `app:latest`). A bare tag, as skopeo and the
/// lifecycle write, would clash between two images with the same tag.
pub fn write_oci_layout(image_layout: &Path, to: &Path, ref_name: &str) -> Result<Written> {
    if !valid_ref_name(ref_name) {
        return Err(Error::BadName {
            what: "image name for an OCI layout",
            name: ref_name.to_owned(),
            reason: "org.opencontainers.image.ref.name allows letters, digits and single -._:@+ (or --) between them, in /-separated components".to_owned(),
        });
    }
    let src = read_layout_image(image_layout)?;
    let (parent, name) = split_target(to)?;
    std::fs::create_dir_all(&parent).map_err(Error::io("create directory", &parent))?;
    let _lock = lock_dir(&parent)?;
    remove_stale(&parent, &name);
    let written = Written {
        manifest_digest: src.image.manifest_digest.clone(),
        config_digest: src.image.config_digest.clone(),
        size: src.total_size(),
    };
    match classify_target(to)? {
        Target::Missing | Target::Empty => {
            let tmp = temp_dir_in(&parent, &name)?;
            write_file(&tmp.path().join("oci-layout"), OCI_LAYOUT_MARKER)?;
            for (digest, size) in src.blobs() {
                copy_blob(&src.dir, tmp.path(), &digest, size)?;
            }
            let index = merged_index(None, &src, ref_name)?;
            write_file(&tmp.path().join("index.json"), &index)?;
            set_mode(tmp.path(), 0o755)?;
            publish_dir(tmp, to)?;
        }
        Target::Layout => {
            remove_stale_blobs(to);
            let index_path = to.join("index.json");
            let existing = if index_path.exists() {
                let what = format!("index.json of layout {}", to.display());
                let bytes = read_json_file(&index_path, &what)?;
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                        what: what.clone(),
                        source,
                    })?;
                if !v.get("manifests").is_none_or(|m| m.is_array()) {
                    return Err(Error::BadLayout {
                        path: to.to_path_buf(),
                        reason: "its index.json has a \"manifests\" that is not a list".to_owned(),
                    });
                }
                Some(v)
            } else {
                None
            };
            for (digest, size) in src.blobs() {
                copy_blob(&src.dir, to, &digest, size)?;
            }
            let index = merged_index(existing, &src, ref_name)?;
            write_atomic(&index_path, &index)?;
        }
    }
    Ok(written)
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

/// `existing` index.json (or a new one) with `src`'s entry named `ref_name`
/// replacing any entry of that name.
fn merged_index(
    existing: Option<serde_json::Value>,
    src: &LayoutImage,
    ref_name: &str,
) -> Result<Vec<u8>> {
    let mut index = existing.unwrap_or_else(|| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [],
        })
    });
    let mut annotations: BTreeMap<String, String> = src
        .entry
        .annotations()
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    annotations.insert(REF_NAME.to_owned(), ref_name.to_owned());
    let media_type = match src.entry.media_type().to_string() {
        m if !m.is_empty() => m,
        _ => manifest_media_type(&src.image),
    };
    let entry = index_entry(
        &media_type,
        &src.image.manifest_digest,
        src.image.manifest_bytes.len() as u64,
        &src.image.config,
        annotations,
    );
    let mut manifests: Vec<serde_json::Value> = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    manifests.retain(|m| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(|n| n.as_str())
            != Some(ref_name)
    });
    manifests.push(entry);
    index["manifests"] = serde_json::Value::Array(manifests);
    if index.get("schemaVersion").is_none() {
        index["schemaVersion"] = 2.into();
    }
    to_json(&index, "index.json")
}

/// Puts blob `digest` of the layout `from` into the layout `to`: kept when
/// already there and right, else hard-linked (or copied) to a temporary name,
/// verified, and renamed into place.
fn copy_blob(from: &Path, to: &Path, digest: &Digest, size: u64) -> Result<()> {
    let what = format!("blob {digest} of layout {}", from.display());
    let dest = to.join(digest.blob_path());
    let dir = dest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| to.to_path_buf());
    std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
    if std::fs::symlink_metadata(&dest).is_ok() {
        match verify_file(&dest, digest, size, &what) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(
                    "{} is damaged ({}); replacing it",
                    dest.display(),
                    locald_core::error::chain(&e)
                );
            }
        }
    }
    let src = from.join(digest.blob_path());
    match std::fs::symlink_metadata(&src) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Error::BadLayout {
                path: from.to_path_buf(),
                reason: format!("blob {digest} is not a regular file"),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BadLayout {
                path: from.to_path_buf(),
                reason: format!("blob {digest} is missing (expected at {})", src.display()),
            })
        }
        Err(e) => return Err(Error::io("inspect", &src)(e)),
    }
    let tmp = dir.join(temp_name(digest.hex()));
    // A hard link shares the inode: only for blobs we own, so that whoever owns
    // the source (the build user, for a native build run by root) cannot change
    // the published output afterwards.
    let ours = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&src)
            .is_ok_and(|m| m.uid() == rustix::process::geteuid().as_raw())
    };
    let linked = if ours {
        std::fs::hard_link(&src, &tmp)
    } else {
        Err(std::io::Error::other("the blob belongs to another user"))
    };
    let result = match linked {
        Ok(()) => verify_file(&tmp, digest, size, &what),
        Err(e) => {
            tracing::debug!("not hard-linking {} ({e}); copying", src.display());
            copy_verified(&src, &tmp, digest, size, &what)
        }
    };
    let result = result
        .and_then(|()| std::fs::rename(&tmp, &dest).map_err(Error::io("move a blob into", &dest)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies `src` to the new file `dst`, hashing and counting on the way.
fn copy_verified(src: &Path, dst: &Path, digest: &Digest, size: u64, what: &str) -> Result<()> {
    let file = open_regular(src).map_err(Error::io("open", src))?;
    let mut reader = HashingReader::new(file.take(size.saturating_add(1)), digest);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(Error::io("create", dst))?;
    copy_with_buf(&mut reader, &mut out).map_err(|e| match e {
        CopyError::Read(e) => Error::ReadBlob(e),
        CopyError::Write(e) => Error::io("write", dst)(e),
    })?;
    let (actual, count) = reader.finish().map_err(Error::ReadBlob)?;
    check_blob(digest, size, actual, count, what)
}

/// Hashes the file at `path` and checks it is `size` bytes of `digest`.
fn verify_file(path: &Path, digest: &Digest, size: u64, what: &str) -> Result<()> {
    let file = open_regular(path).map_err(Error::io("open", path))?;
    let reader = HashingReader::new(file.take(size.saturating_add(1)), digest);
    let (actual, count) = reader.finish().map_err(Error::ReadBlob)?;
    check_blob(digest, size, actual, count, what)
}

fn check_blob(digest: &Digest, size: u64, actual: Digest, count: u64, what: &str) -> Result<()> {
    if count != size {
        return Err(Error::SizeMismatch {
            what: what.to_owned(),
            expected: size,
            actual: count,
        });
    }
    if actual != *digest {
        return Err(Error::DigestMismatch {
            what: what.to_owned(),
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

fn copy_with_buf(r: &mut impl Read, w: &mut impl Write) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
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

// ---------------------------------------------------------------------------
// docker-archive output

/// Writes the single image of the layout `image_layout` as a `docker load`-able
/// tarball at `to`, tagged `repo_tag` (a tag reference such as
/// `docker.io/library/app:latest`; a digest is refused: `RepoTags` holds tags).
///
/// The archive is what Docker 25+ `docker save` writes: an OCI layout
/// (`oci-layout`, `index.json` whose entry carries `io.containerd.image.name` =
/// the full reference and `org.opencontainers.image.ref.name` = the tag,
/// `blobs/sha256/...`) plus `manifest.json` (`Config`, `RepoTags` in Docker's
/// short spelling, `app:latest` or `registry:5000/repo:tag`, and `Layers`
/// pointing at the blob paths) and `repositories` (repository -> tag -> the
/// last layer's diff_id, as moby's `image/tarexport/save.go` writes it). Layers
/// are stored as they are (compressed): `docker load` decompresses them, skopeo
/// too. No `LayerSources`: Docker records layers listed there as foreign ones.
///
/// Deterministic: entries sorted, mtimes 0, owner 0:0, fixed modes. Written to a
/// temporary file beside `to` and renamed over it; `-` (standard output) is not
/// supported.
pub fn write_docker_archive(image_layout: &Path, to: &Path, repo_tag: &str) -> Result<Written> {
    if to.as_os_str() == "-" {
        return Err(Error::OutputRefused {
            path: to.to_path_buf(),
            reason: "writing the archive to standard output is not supported; name a file"
                .to_owned(),
        });
    }
    let reference = ImageReference::parse(repo_tag).map_err(|e| Error::BadName {
        what: "image name for a docker archive",
        name: repo_tag.to_owned(),
        reason: e.to_string(),
    })?;
    let Some(tag) = reference.tag().filter(|_| reference.digest().is_none()) else {
        return Err(Error::BadName {
            what: "image name for a docker archive",
            name: repo_tag.to_owned(),
            reason: "a docker archive names images by tag (RepoTags), not by digest".to_owned(),
        });
    };
    if std::fs::metadata(to).is_ok_and(|m| m.is_dir()) {
        return Err(Error::OutputRefused {
            path: to.to_path_buf(),
            reason: "it is a directory; a docker archive is a file".to_owned(),
        });
    }
    let src = read_layout_image(image_layout)?;
    let (parent, name) = split_target(to)?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.locald-tmp-"))
        .tempfile_in(&parent)
        .map_err(Error::io("create a temporary file in", &parent))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(BUF, tmp.as_file()));
    let tar_err = |e: std::io::Error| Error::io("write", tmp.path())(e);

    // Every entry, by archive path; sorted by the map.
    enum Content<'a> {
        Dir,
        Bytes(Vec<u8>),
        Blob(&'a Digest, u64),
    }
    let mut entries: BTreeMap<String, Content<'_>> = BTreeMap::new();
    let blobs = src.blobs();
    for (digest, size) in &blobs {
        let alg = digest.algorithm().as_str();
        entries.insert("blobs/".to_owned(), Content::Dir);
        entries.insert(format!("blobs/{alg}/"), Content::Dir);
        entries.insert(blob_member(digest), Content::Blob(digest, *size));
    }
    entries.insert(
        "oci-layout".to_owned(),
        Content::Bytes(OCI_LAYOUT_MARKER.to_vec()),
    );
    let mut annotations = BTreeMap::new();
    annotations.insert(CONTAINERD_IMAGE_NAME.to_owned(), reference.to_string());
    annotations.insert(REF_NAME.to_owned(), tag.to_owned());
    let media_type = match src.entry.media_type().to_string() {
        m if !m.is_empty() => m,
        _ => manifest_media_type(&src.image),
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [index_entry(
            &media_type,
            &src.image.manifest_digest,
            src.image.manifest_bytes.len() as u64,
            &src.image.config,
            annotations,
        )],
    });
    entries.insert(
        "index.json".to_owned(),
        Content::Bytes(to_json(&index, "index.json")?),
    );
    let manifest = serde_json::json!([{
        "Config": blob_member(&src.image.config_digest),
        "RepoTags": [familiar_name(&reference)],
        "Layers": src.image.layers.iter().map(|l| blob_member(&l.digest)).collect::<Vec<_>>(),
    }]);
    entries.insert(
        "manifest.json".to_owned(),
        Content::Bytes(to_json(&manifest, "manifest.json")?),
    );
    if let Some(top) = src.image.layers.last().and_then(|l| l.diff_id.as_ref()) {
        let mut tags = serde_json::Map::new();
        tags.insert(tag.to_owned(), top.hex().into());
        let mut repos = serde_json::Map::new();
        repos.insert(familiar_repository(&reference), tags.into());
        entries.insert(
            "repositories".to_owned(),
            Content::Bytes(to_json(&serde_json::Value::Object(repos), "repositories")?),
        );
    }

    for (path, content) in &entries {
        match content {
            Content::Dir => {
                let h = tar_header(path, tar::EntryType::Directory, 0, 0o755).map_err(tar_err)?;
                builder.append(&h, std::io::empty()).map_err(tar_err)?;
            }
            Content::Bytes(b) => {
                let h = tar_header(path, tar::EntryType::Regular, b.len() as u64, 0o644)
                    .map_err(tar_err)?;
                builder.append(&h, b.as_slice()).map_err(tar_err)?;
            }
            Content::Blob(digest, size) => {
                let what = format!("blob {digest} of layout {}", src.dir.display());
                let path_in = src.dir.join(digest.blob_path());
                let file = open_regular(&path_in).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::BadLayout {
                            path: src.dir.clone(),
                            reason: format!("blob {digest} is missing"),
                        }
                    } else {
                        Error::io("open", &path_in)(e)
                    }
                })?;
                let len = file
                    .metadata()
                    .map_err(Error::io("inspect", &path_in))?
                    .len();
                if len != *size {
                    return Err(Error::SizeMismatch {
                        what,
                        expected: *size,
                        actual: len,
                    });
                }
                let h = tar_header(path, tar::EntryType::Regular, *size, 0o644).map_err(tar_err)?;
                let mut reader = HashingReader::new(file.take(*size), digest);
                builder.append(&h, &mut reader).map_err(tar_err)?;
                let (actual, count) = reader.finish().map_err(Error::ReadBlob)?;
                check_blob(digest, *size, actual, count, &what)?;
            }
        }
    }
    let out = builder.into_inner().map_err(tar_err)?;
    let file = out.into_inner().map_err(|e| tar_err(e.into_error()))?;
    file.sync_all().map_err(tar_err)?;
    set_mode(tmp.path(), 0o644)?;
    let size = file.metadata().map_err(tar_err)?.len();
    tmp.persist(to)
        .map_err(|e| Error::io("move the archive into", to)(e.error))?;
    Ok(Written {
        manifest_digest: src.image.manifest_digest.clone(),
        config_digest: src.image.config_digest.clone(),
        size,
    })
}

fn blob_member(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

fn tar_header(
    path: &str,
    kind: tar::EntryType,
    size: u64,
    mode: u32,
) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}

// ---------------------------------------------------------------------------
// Shared plumbing

/// An index.json entry, with the platform the config declares (as written
/// there: `arm64/v8` stays `v8`).
fn index_entry(
    media_type: &str,
    digest: &Digest,
    size: u64,
    config: &ImageConfiguration,
    annotations: BTreeMap<String, String>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
    });
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if !os.is_empty() && !arch.is_empty() {
        let mut p = serde_json::json!({"architecture": arch, "os": os});
        if let Some(var) = config.variant().as_deref().filter(|v| !v.is_empty()) {
            p["variant"] = var.into();
        }
        v["platform"] = p;
    }
    if !annotations.is_empty() {
        v["annotations"] = serde_json::json!(annotations);
    }
    v
}

fn to_json(v: &serde_json::Value, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

/// `(parent, file name)` of an output path (parent `.` for a bare name).
fn split_target(path: &Path) -> Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::OutputRefused {
            path: path.to_path_buf(),
            reason: "it names no file or directory (ends in `..` or `/`?)".to_owned(),
        })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// A fresh temporary directory `.NAME.locald-tmp-XXXXXX` in `parent`.
fn temp_dir_in(parent: &Path, name: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!(".{name}.locald-tmp-"))
        .tempdir_in(parent)
        .map_err(Error::io("create a temporary directory in", parent))
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

/// Writes a blob whose bytes are already verified into `root/blobs/...`.
fn put_bytes(root: &Path, digest: &Digest, bytes: &[u8]) -> Result<()> {
    write_file(&root.join(digest.blob_path()), bytes)
}

/// Replaces `path` with `bytes` atomically (temporary sibling, renamed).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (parent, name) = split_target(path)?;
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

/// Checks a layout's `oci-layout` file (`imageLayoutVersion` 1.x).
fn read_marker(dir: &Path) -> std::result::Result<(), String> {
    let bytes = read_small(&dir.join("oci-layout"), 64 * 1024)
        .map_err(|e| format!("cannot read its oci-layout file ({e})"))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("its oci-layout file is not JSON ({e})"))?;
    match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(ver) if ver.starts_with("1.") => Ok(()),
        Some(ver) => Err(format!("unsupported imageLayoutVersion {ver:?}")),
        None => Err("its oci-layout file has no imageLayoutVersion".to_owned()),
    }
}

/// Reads a JSON document of a layout, capped at [`MAX_JSON_BYTES`].
fn read_json_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    read_small(path, MAX_JSON_BYTES).map_err(|e| {
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

/// Opens a regular file of a layout ([`fsutil::open_regular`], symlinks
/// followed).
fn open_regular(path: &Path) -> std::io::Result<File> {
    fsutil::open_regular(path, FinalSymlink::Follow)
}

/// Reads a regular file of a layout of at most `limit` bytes
/// ([`fsutil::read_small`], symlinks followed).
fn read_small(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    fsutil::read_small(path, limit, FinalSymlink::Follow)
}

/// An exclusive `flock` on a directory, held until dropped (no lock file left
/// behind: the directory itself is locked).
fn lock_dir(dir: &Path) -> Result<FileLock> {
    FileLock::acquire_dir(dir, Mode::Exclusive)
}

async fn lock_dir_async(dir: &Path) -> Result<FileLock> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || lock_dir(&dir))
        .await
        .map_err(|e| Error::Join(e.to_string()))?
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
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn layout_path_table() {
        for (input, want) in [
            ("ubuntu:22.04", "index.docker.io/library/ubuntu/22.04"),
            (
                "docker.io/library/ubuntu:22.04",
                "index.docker.io/library/ubuntu/22.04",
            ),
            (
                "index.docker.io/library/ubuntu",
                "index.docker.io/library/ubuntu/latest",
            ),
            ("heroku/heroku:22", "index.docker.io/heroku/heroku/22"),
            ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000/a/b/1"),
            ("localhost:5000/run:x", "localhost:5000/run/x"),
            ("localhost/foo", "index.docker.io/localhost/foo/latest"),
            ("ghcr.io/x/y/z:v1.2_3", "ghcr.io/x/y/z/v1.2_3"),
            (
                &format!("ghcr.io/x/y@sha256:{HEX}"),
                &format!("ghcr.io/x/y/sha256/{HEX}"),
            ),
            (
                &format!("ghcr.io/x/y:tag@sha256:{HEX}"),
                &format!("ghcr.io/x/y/sha256/{HEX}"),
            ),
            (
                &format!("busybox@sha256:{HEX}"),
                &format!("index.docker.io/library/busybox/sha256/{HEX}"),
            ),
        ] {
            let r = ImageReference::parse(input).unwrap();
            let p = layout_path_for(&r);
            assert_eq!(p, PathBuf::from(want), "{input}");
            assert!(
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "{input}"
            );
        }
    }

    #[test]
    fn familiar_name_table() {
        for (input, want, repo) in [
            ("docker.io/library/app:latest", "app:latest", "app"),
            ("app", "app:latest", "app"),
            ("heroku/builder:22", "heroku/builder:22", "heroku/builder"),
            ("docker.io/library/a/b:1", "library/a/b:1", "library/a/b"),
            (
                "127.0.0.1:5000/a/b:1",
                "127.0.0.1:5000/a/b:1",
                "127.0.0.1:5000/a/b",
            ),
            (
                "ghcr.io/library/x:2",
                "ghcr.io/library/x:2",
                "ghcr.io/library/x",
            ),
        ] {
            let r = ImageReference::parse(input).unwrap();
            assert_eq!(familiar_name(&r), want, "{input}");
            assert_eq!(familiar_repository(&r), repo, "{input}");
        }
    }

    #[test]
    fn ref_name_grammar() {
        for (name, ok) in [
            ("latest", true),
            ("docker.io/library/app:latest", true),
            ("127.0.0.1:5000/a/b:1", true),
            (&*format!("a/b@sha256:{HEX}"), true),
            ("v1.0--rc+1", true),
            ("", false),
            ("a//b", false),
            ("/a", false),
            ("a/", false),
            ("-a", false),
            ("a..b", false),
            ("a b", false),
            ("[::1]:5000/x:y", false),
            ("a---b", false),
        ] {
            assert_eq!(valid_ref_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn split_target_refuses_nameless() {
        assert!(split_target(Path::new("/")).is_err());
        assert!(split_target(Path::new("a/..")).is_err());
        assert_eq!(
            split_target(Path::new("x.tar")).unwrap(),
            (PathBuf::from("."), "x.tar".to_owned())
        );
    }

    #[test]
    fn publish_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        for round in ["one", "two"] {
            let tmp = temp_dir_in(dir.path(), "d").unwrap();
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

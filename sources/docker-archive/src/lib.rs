//! `locald-source-docker-archive`: images from `docker save` / `podman save` /
//! `skopeo copy ... docker-archive:` tarballs, read in place.
//!
//! One pass over the tar headers (seeking over member data) indexes every member's
//! offset and size; blobs are then streamed straight from their offsets, so the
//! archive is never copied or unpacked. Symlinked and hard-linked members (skopeo
//! writes `<id>/layer.tar` as a symlink to `<digest>.tar`) are followed inside the
//! archive, with loop detection.
//!
//! Every flavour writes `manifest.json` (`Config`, `RepoTags`, `Layers`, and since
//! Docker 25 `LayerSources`); it is what this source reads, whatever else the
//! archive holds (an OCI layout in Docker 25+, `repositories` in legacy ones). The
//! source presents the selected image as an OCI manifest it builds from that
//! entry: layers keep their digest where the archive gives one (`LayerSources`,
//! `blobs/sha256/HEX`, `HEX.tar`), and uncompressed layers without one are named by
//! their diff_id, so the core verifies every byte either way.

mod destination;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use locald_core::digest::Digest;
use locald_core::manifest::{self, MAX_JSON_BYTES};
use locald_core::oci_spec::image::Descriptor;
use locald_core::source::{
    BlobReader, BoxFuture, Document, ImageSource, SchemeRegistry, SourceFactory,
};
use locald_core::ImageReference;
use locald_extract::path::normalise;

pub use destination::{familiar_name, DockerArchiveDestination, CONTAINERD_IMAGE_NAME};

/// The scheme this crate serves.
pub const SCHEME: &str = "docker-archive";

/// How many links one member lookup may follow.
const MAX_LINKS: usize = 40;

/// What can go wrong reading a docker archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file could not be read.
    #[error("could not read {}", path.display())]
    Io {
        /// The archive (or member) path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not a tar archive at all.
    #[error("{} is not a tar archive: {reason}", path.display())]
    NotATar {
        /// The archive.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The archive has no manifest.json.
    #[error("{} has no manifest.json: it is not a docker-archive (`docker save`) tarball", path.display())]
    NoManifest {
        /// The archive.
        path: PathBuf,
    },
    /// A member name we refuse (`..`, absolute, NUL).
    #[error("archive member {name:?} is refused: {reason}")]
    UnsafeMember {
        /// The member name as found.
        name: String,
        /// Why.
        reason: String,
    },
    /// A member's data runs past the end of the file.
    #[error("archive {} is truncated: member {name:?} needs {needed} bytes, the file has {actual}", path.display())]
    Truncated {
        /// The archive.
        path: PathBuf,
        /// The member.
        name: String,
        /// Where its data ends.
        needed: u64,
        /// The file's size.
        actual: u64,
    },
    /// manifest.json names a member that is not there.
    #[error("{referrer} names {name:?}, which is not in the archive")]
    MissingMember {
        /// The member.
        name: String,
        /// Who named it.
        referrer: String,
    },
    /// A symlinked member points outside the archive.
    #[error("archive member {name:?} is a link to {target:?}, outside the archive")]
    LinkOutside {
        /// The member.
        name: String,
        /// Its target.
        target: String,
    },
    /// Symlinked members form a loop.
    #[error("archive member {name:?}: more than {MAX_LINKS} links (a loop?)")]
    LinkLoop {
        /// The member.
        name: String,
    },
    /// manifest.json is not what docker writes.
    #[error("manifest.json of {} is not valid: {reason}", path.display())]
    BadManifest {
        /// The archive.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No image with that name.
    #[error("archive {} has no image named {image:?} (it holds: {})", path.display(), list(available))]
    NoSuchImage {
        /// The archive.
        path: PathBuf,
        /// What was asked for.
        image: String,
        /// Its RepoTags.
        available: Vec<String>,
    },
    /// Several images match.
    #[error("image name {image:?} matches several images in archive {} ({}); use the exact name", path.display(), list(candidates))]
    Ambiguous {
        /// The archive.
        path: PathBuf,
        /// What was asked for.
        image: String,
        /// The matches.
        candidates: Vec<String>,
    },
    /// No name given and several images.
    #[error("archive {} holds {} images; name one of: {}", path.display(), available.len(), list(available))]
    NeedName {
        /// The archive.
        path: PathBuf,
        /// Its RepoTags.
        available: Vec<String>,
    },
    /// A layer's size disagrees with `LayerSources`.
    #[error("layer {name:?} is {actual} bytes but manifest.json says {expected}")]
    LayerSize {
        /// The member.
        name: String,
        /// Declared.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// A blob was asked for that the selected image does not have.
    #[error("blob {0} is not part of the selected image")]
    UnknownBlob(String),
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".to_owned()
    } else {
        v.join(", ")
    }
}

impl From<ArchiveError> for locald_core::Error {
    fn from(e: ArchiveError) -> Self {
        locald_core::Error::source(e)
    }
}

/// A member of the archive.
#[derive(Debug, Clone)]
enum Member {
    /// Data at `offset`, `size` bytes long.
    File { offset: u64, size: u64 },
    /// A symlink (target relative to the member's directory, or absolute).
    Symlink(Vec<u8>),
    /// A hard link (target is an archive path).
    HardLink(Vec<u8>),
}

/// Where a blob's bytes are.
#[derive(Debug, Clone, Copy)]
struct Location {
    offset: u64,
    size: u64,
}

/// One entry of manifest.json.
#[derive(Debug, Clone, serde::Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "LayerSources", default)]
    layer_sources: Option<HashMap<String, LayerSource>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct LayerSource {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    size: u64,
    digest: String,
}

/// A docker-archive tarball.
pub struct DockerArchive {
    path: PathBuf,
    /// How the archive is named in messages (`-` for standard input).
    shown: String,
    /// A spooled copy of standard input, removed when the source goes.
    _spool: Option<tempfile::NamedTempFile>,
    members: HashMap<Vec<u8>, Member>,
    manifest: Vec<ManifestEntry>,
    /// Blob digest -> bytes in the archive, for the selected image.
    blobs: Mutex<HashMap<Digest, Location>>,
}

impl DockerArchive {
    /// Opens an archive, indexing its members in one pass. `-` reads standard
    /// input, spooled to a temporary file first (a tar stream cannot be read in
    /// place).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, ArchiveError> {
        let path = path.into();
        if path.as_os_str() == "-" {
            let mut spool = tempfile::NamedTempFile::new().map_err(|source| ArchiveError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
            std::io::copy(&mut std::io::stdin().lock(), &mut spool).map_err(|source| {
                ArchiveError::Io {
                    path: PathBuf::from("standard input"),
                    source,
                }
            })?;
            let mut a = Self::open_file(spool.path().to_path_buf())?;
            a._spool = Some(spool);
            a.shown = "- (standard input)".to_owned();
            return Ok(a);
        }
        Self::open_file(path)
    }

    fn open_file(path: PathBuf) -> Result<Self, ArchiveError> {
        let io = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(ArchiveError::NotATar {
                path: path.clone(),
                reason: "not a regular file".to_owned(),
            });
        }
        let len = meta.len();
        let members = index(&path, file, len)?;
        let manifest_bytes = read_member(
            &path,
            &members,
            b"manifest.json",
            "the archive",
            MAX_JSON_BYTES,
        )
        .map_err(|e| match e {
            ArchiveError::MissingMember { .. } => ArchiveError::NoManifest { path: path.clone() },
            other => other,
        })?;
        let manifest: Vec<ManifestEntry> =
            serde_json::from_slice(&manifest_bytes).map_err(|e| ArchiveError::BadManifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.is_empty() {
            return Err(ArchiveError::BadManifest {
                path,
                reason: "it lists no images".to_owned(),
            });
        }
        Ok(DockerArchive {
            shown: path.display().to_string(),
            path,
            _spool: None,
            members,
            manifest,
            blobs: Mutex::new(HashMap::new()),
        })
    }

    /// Every RepoTag in the archive (or `(untagged image N)`), for listings.
    fn available(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, e) in self.manifest.iter().enumerate() {
            match e.repo_tags.as_deref() {
                Some(tags) if !tags.is_empty() => out.extend(tags.iter().cloned()),
                _ => out.push(format!("(untagged image {})", i + 1)),
            }
        }
        out
    }

    /// The manifest.json entry `image` names (see the crate docs).
    fn select(
        &self,
        image: Option<&str>,
    ) -> Result<(&ManifestEntry, Option<String>), ArchiveError> {
        let Some(image) = image else {
            return match self.manifest.as_slice() {
                [only] => Ok((
                    only,
                    only.repo_tags.as_ref().and_then(|t| t.first().cloned()),
                )),
                _ => Err(ArchiveError::NeedName {
                    path: self.path.clone(),
                    available: self.available(),
                }),
            };
        };
        let wanted = ImageReference::parse(image).ok();
        let mut hits: Vec<(&ManifestEntry, String)> = Vec::new();
        for e in &self.manifest {
            for tag in e.repo_tags.iter().flatten() {
                let same = tag == image
                    || match (&wanted, ImageReference::parse(tag)) {
                        (Some(w), Ok(t)) => *w == t,
                        _ => false,
                    };
                if same && !hits.iter().any(|(h, _)| h.config == e.config) {
                    hits.push((e, tag.clone()));
                }
            }
        }
        match hits.as_slice() {
            [(e, tag)] => Ok((e, Some(tag.clone()))),
            [] => {
                // A single untagged image serves whatever name was asked for.
                if let [only] = self.manifest.as_slice() {
                    if only.repo_tags.as_ref().is_none_or(|t| t.is_empty()) {
                        return Ok((only, None));
                    }
                }
                Err(ArchiveError::NoSuchImage {
                    path: self.path.clone(),
                    image: image.to_owned(),
                    available: self.available(),
                })
            }
            many => Err(ArchiveError::Ambiguous {
                path: self.path.clone(),
                image: image.to_owned(),
                candidates: many.iter().map(|(_, t)| t.clone()).collect(),
            }),
        }
    }

    /// Follows links from `name` to a file member.
    fn locate(&self, name: &str, referrer: &str) -> Result<(Vec<u8>, Location), ArchiveError> {
        locate(&self.members, name.as_bytes(), referrer)
    }

    /// Builds the OCI manifest for a manifest.json entry and records where each
    /// of its blobs is.
    fn build_manifest(&self, entry: &ManifestEntry) -> Result<Vec<u8>, locald_core::Error> {
        let config_bytes = read_member(
            &self.path,
            &self.members,
            entry.config.as_bytes(),
            "manifest.json",
            MAX_JSON_BYTES,
        )?;
        let config_digest = Digest::sha256_of(&config_bytes);
        let (_, config_loc) = self.locate(&entry.config, "manifest.json")?;
        let config: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|e| locald_core::Error::Json {
                what: format!("config {:?} in {}", entry.config, self.path.display()),
                source: e,
            })?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut blobs = HashMap::new();
        blobs.insert(config_digest.clone(), config_loc);
        let mut layers = Vec::new();
        for (i, layer) in entry.layers.iter().enumerate() {
            let referrer = format!("manifest.json (layer {})", i + 1);
            let (real, loc) = self.locate(layer, &referrer)?;
            let diff_id = diff_ids.get(i).cloned();
            let source = diff_id
                .as_ref()
                .and_then(|d| entry.layer_sources.as_ref().and_then(|s| s.get(d)));
            let magic = peek(&self.path, loc)?;
            let compressed =
                locald_core::stream::detect(&magic) != locald_core::stream::Compression::None;
            let (digest, media_type) = if let Some(src) = source {
                if src.size != loc.size {
                    return Err(ArchiveError::LayerSize {
                        name: layer.clone(),
                        expected: src.size,
                        actual: loc.size,
                    }
                    .into());
                }
                (src.digest.clone(), src.media_type.clone())
            } else if let Some(hex) = digest_from_name(&real) {
                (format!("sha256:{hex}"), None)
            } else if let (Some(d), false) = (&diff_id, compressed) {
                // An uncompressed layer's blob digest is its diff_id.
                (d.clone(), None)
            } else {
                (hash_member(&self.path, loc)?.to_string(), None)
            };
            let digest =
                Digest::parse(&digest).map_err(|source| locald_core::Error::BadDigest {
                    what: format!("layer {} of {}", i + 1, self.path.display()),
                    source,
                })?;
            let media_type = media_type.unwrap_or_else(|| {
                match locald_core::stream::detect(&magic) {
                    locald_core::stream::Compression::Gzip => {
                        "application/vnd.oci.image.layer.v1.tar+gzip"
                    }
                    locald_core::stream::Compression::Zstd => {
                        "application/vnd.oci.image.layer.v1.tar+zstd"
                    }
                    locald_core::stream::Compression::None => {
                        "application/vnd.oci.image.layer.v1.tar"
                    }
                }
                .to_owned()
            });
            blobs.insert(digest.clone(), loc);
            layers.push(serde_json::json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": loc.size,
            }));
        }
        if let Ok(mut b) = self.blobs.lock() {
            *b = blobs;
        }
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {
                "mediaType": manifest::OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config_bytes.len(),
            },
            "layers": layers,
        });
        serde_json::to_vec(&m).map_err(|e| locald_core::Error::Json {
            what: "the manifest built from manifest.json".to_owned(),
            source: e,
        })
    }

    fn location(&self, d: &Descriptor) -> Result<Location, ArchiveError> {
        let digest = Digest::parse(d.digest().as_ref())
            .map_err(|_| ArchiveError::UnknownBlob(d.digest().to_string()))?;
        self.blobs
            .lock()
            .ok()
            .and_then(|b| b.get(&digest).copied())
            .ok_or_else(|| ArchiveError::UnknownBlob(d.digest().to_string()))
    }

    fn open_at(&self, loc: Location) -> Result<std::io::Take<File>, ArchiveError> {
        open_member(&self.path, loc)
    }
}

/// `blobs/sha256/HEX` or `HEX.tar` (skopeo) names carry the blob's digest.
fn digest_from_name(name: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(name).ok()?;
    let hex = s
        .strip_prefix("blobs/sha256/")
        .or_else(|| s.strip_suffix(".tar").filter(|h| !h.contains('/')))?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| hex.to_owned())
}

/// One pass over the tar headers, seeking over member data.
fn index(path: &Path, file: File, len: u64) -> Result<HashMap<Vec<u8>, Member>, ArchiveError> {
    let not_tar = |reason: String| ArchiveError::NotATar {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| not_tar(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            // The tar reader says "failed to read entire block" when the file ends
            // inside a header: a cut download, not a different format.
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.to_string().contains("entire block")
            {
                not_tar(format!(
                    "it is truncated: it ends inside a member header ({e})"
                ))
            } else {
                not_tar(e.to_string())
            }
        })?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if raw.starts_with(b"/") {
            return Err(ArchiveError::UnsafeMember {
                name: shown,
                reason: "absolute member names have no place in an image archive".to_owned(),
            });
        }
        let comps = normalise(&raw).map_err(|reason| ArchiveError::UnsafeMember {
            name: shown.clone(),
            reason,
        })?;
        let key = join(&comps);
        let member = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let offset = entry.raw_file_position();
                let size = entry.size();
                if offset + size > len {
                    return Err(ArchiveError::Truncated {
                        path: path.to_path_buf(),
                        name: shown,
                        needed: offset + size,
                        actual: len,
                    });
                }
                Member::File { offset, size }
            }
            tar::EntryType::Symlink => Member::Symlink(
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            ),
            tar::EntryType::Link => Member::HardLink(
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            ),
            _ => continue,
        };
        members.insert(key, member);
    }
    Ok(members)
}

fn join(comps: &[std::ffi::OsString]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c.as_bytes());
    }
    out
}

/// Follows symlinks and hard links from `name` to a file member, inside the archive.
fn locate(
    members: &HashMap<Vec<u8>, Member>,
    name: &[u8],
    referrer: &str,
) -> Result<(Vec<u8>, Location), ArchiveError> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let comps = normalise(name).map_err(|reason| ArchiveError::UnsafeMember {
        name: shown.clone(),
        reason,
    })?;
    let mut key = join(&comps);
    for _ in 0..=MAX_LINKS {
        match members.get(&key) {
            None => {
                return Err(ArchiveError::MissingMember {
                    name: String::from_utf8_lossy(&key).into_owned(),
                    referrer: referrer.to_owned(),
                })
            }
            Some(Member::File { offset, size }) => {
                return Ok((
                    key,
                    Location {
                        offset: *offset,
                        size: *size,
                    },
                ))
            }
            Some(Member::Symlink(target)) => {
                let outside = || ArchiveError::LinkOutside {
                    name: String::from_utf8_lossy(&key).into_owned(),
                    target: String::from_utf8_lossy(target).into_owned(),
                };
                if target.starts_with(b"/") {
                    return Err(outside());
                }
                let mut joined = match key.iter().rposition(|&b| b == b'/') {
                    Some(i) => key[..=i].to_vec(),
                    None => Vec::new(),
                };
                joined.extend_from_slice(target);
                let comps = normalise(&joined).map_err(|_| outside())?;
                key = join(&comps);
            }
            Some(Member::HardLink(target)) => {
                let comps = normalise(target).map_err(|_| ArchiveError::LinkOutside {
                    name: String::from_utf8_lossy(&key).into_owned(),
                    target: String::from_utf8_lossy(target).into_owned(),
                })?;
                key = join(&comps);
            }
        }
    }
    Err(ArchiveError::LinkLoop { name: shown })
}

/// Reads a (small) member whole, refusing more than `limit` bytes.
fn read_member(
    path: &Path,
    members: &HashMap<Vec<u8>, Member>,
    name: &[u8],
    referrer: &str,
    limit: u64,
) -> Result<Vec<u8>, ArchiveError> {
    let (real, loc) = locate(members, name, referrer)?;
    if loc.size > limit {
        return Err(ArchiveError::BadManifest {
            path: path.to_path_buf(),
            reason: format!(
                "member {:?} is {} bytes, more than the {limit} byte limit for JSON documents",
                String::from_utf8_lossy(&real),
                loc.size
            ),
        });
    }
    let mut buf = Vec::with_capacity(loc.size as usize);
    open_member(path, loc)?
        .read_to_end(&mut buf)
        .map_err(|source| io_error(path, source))?;
    Ok(buf)
}

/// A reader over one member's bytes.
fn open_member(path: &Path, loc: Location) -> Result<std::io::Take<File>, ArchiveError> {
    let mut f = File::open(path).map_err(|source| io_error(path, source))?;
    f.seek(SeekFrom::Start(loc.offset))
        .map_err(|source| io_error(path, source))?;
    Ok(f.take(loc.size))
}

fn io_error(path: &Path, source: std::io::Error) -> ArchiveError {
    ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The first bytes of a member, for compression detection.
fn peek(path: &Path, loc: Location) -> Result<Vec<u8>, ArchiveError> {
    let mut buf = Vec::new();
    open_member(
        path,
        Location {
            offset: loc.offset,
            size: loc.size.min(8),
        },
    )?
    .read_to_end(&mut buf)
    .map_err(|source| io_error(path, source))?;
    Ok(buf)
}

/// The SHA-256 of a member (for compressed layers the archive names no digest for).
fn hash_member(path: &Path, loc: Location) -> Result<Digest, ArchiveError> {
    let reader =
        locald_core::stream::HashingReader::new(open_member(path, loc)?, &Digest::sha256_of(b""));
    let (digest, _) = reader.finish().map_err(|source| io_error(path, source))?;
    Ok(digest)
}

impl ImageSource for DockerArchive {
    fn describe(&self) -> String {
        format!("{SCHEME}:{}", self.shown)
    }

    fn root<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, locald_core::Result<Document>> {
        Box::pin(async move {
            let (entry, name) = self.select(image)?;
            let bytes = self.build_manifest(entry)?;
            Ok(Document {
                bytes,
                media_type: Some(manifest::OCI_MANIFEST.to_owned()),
                digest: None,
                name,
            })
        })
    }

    fn open_blob_blocking(
        &self,
        descriptor: &Descriptor,
    ) -> Option<locald_core::Result<Box<dyn Read + Send>>> {
        Some(
            self.location(descriptor)
                .and_then(|loc| self.open_at(loc))
                .map(|r| Box::new(r) as Box<dyn Read + Send>)
                .map_err(Into::into),
        )
    }

    fn open_blob<'a>(
        &'a self,
        descriptor: &'a Descriptor,
    ) -> BoxFuture<'a, locald_core::Result<BlobReader>> {
        Box::pin(async move {
            let loc = self.location(descriptor)?;
            let file = self.open_at(loc)?.into_inner();
            let file = tokio::fs::File::from_std(file);
            use tokio::io::AsyncReadExt;
            let reader: BlobReader = Box::pin(file.take(loc.size));
            Ok(reader)
        })
    }
}

/// Opens `docker-archive:PATH` sources (`-` for standard input).
pub struct Factory;

impl SourceFactory for Factory {
    fn provider(&self) -> String {
        "built-in docker-archive source".to_owned()
    }

    fn open(&self, location: &str) -> locald_core::Result<Box<dyn ImageSource>> {
        if location.is_empty() {
            return Err(locald_core::Error::source(
                "docker-archive needs a file: --source docker-archive:FILE (or - for standard input)",
            ));
        }
        Ok(Box::new(DockerArchive::open(location)?))
    }
}

/// Adds the `docker-archive` scheme to a registry.
pub fn register(registry: &mut SchemeRegistry) -> locald_core::Result<()> {
    registry.register(SCHEME, Box::new(Factory))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(offset: u64) -> Member {
        Member::File { offset, size: 1 }
    }

    #[test]
    fn link_following_table() {
        let mut m = HashMap::new();
        m.insert(b"aaa.tar".to_vec(), file(7));
        m.insert(
            b"id/layer.tar".to_vec(),
            Member::Symlink(b"../aaa.tar".to_vec()),
        );
        m.insert(b"hard".to_vec(), Member::HardLink(b"id/layer.tar".to_vec()));
        m.insert(
            b"out".to_vec(),
            Member::Symlink(b"../../etc/passwd".to_vec()),
        );
        m.insert(b"abs".to_vec(), Member::Symlink(b"/etc/passwd".to_vec()));
        m.insert(b"x".to_vec(), Member::Symlink(b"y".to_vec()));
        m.insert(b"y".to_vec(), Member::Symlink(b"x".to_vec()));
        assert_eq!(locate(&m, b"id/layer.tar", "t").unwrap().1.offset, 7);
        assert_eq!(locate(&m, b"./hard", "t").unwrap().1.offset, 7);
        assert!(matches!(
            locate(&m, b"out", "t"),
            Err(ArchiveError::LinkOutside { .. })
        ));
        assert!(matches!(
            locate(&m, b"abs", "t"),
            Err(ArchiveError::LinkOutside { .. })
        ));
        assert!(matches!(
            locate(&m, b"x", "t"),
            Err(ArchiveError::LinkLoop { .. })
        ));
        assert!(matches!(
            locate(&m, b"nope", "t"),
            Err(ArchiveError::MissingMember { .. })
        ));
        assert!(matches!(
            locate(&m, b"../x", "t"),
            Err(ArchiveError::UnsafeMember { .. })
        ));
    }

    #[test]
    fn digests_from_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_from_name(format!("blobs/sha256/{hex}").as_bytes()),
            Some(hex.clone())
        );
        assert_eq!(
            digest_from_name(format!("{hex}.tar").as_bytes()),
            Some(hex.clone())
        );
        assert_eq!(digest_from_name(format!("x/{hex}.tar").as_bytes()), None);
        assert_eq!(digest_from_name(b"abc/layer.tar"), None);
        assert_eq!(
            digest_from_name(format!("blobs/sha256/{}", "A".repeat(64)).as_bytes()),
            None
        );
    }
}

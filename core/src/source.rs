//! Image sources: the [`ImageSource`] trait, source specs (`[SCHEME:]LOCATION`) and
//! the scheme registry, and [`resolve`], which turns a source + image name +
//! platform into a verified [`ResolvedImage`].
//!
//! Sources only fetch bytes. Selecting a platform, verifying digests and sizes and
//! parsing documents is done here, once, for every source.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{self, DocumentKind, MAX_JSON_BYTES};
use crate::platform::Platform;

/// A boxed, sendable future (keeps [`ImageSource`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A blob's bytes as an async stream.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send + 'static>>;

/// A small JSON document (index or manifest) as a source found it.
#[derive(Debug, Clone)]
pub struct Document {
    /// The raw bytes.
    pub bytes: Vec<u8>,
    /// The media type the source reported, if any.
    pub media_type: Option<String>,
    /// The digest the source says the bytes have; verified by the core.
    pub digest: Option<Digest>,
    /// The name this document was found under (e.g. a layout's ref.name), for messages.
    pub name: Option<String>,
}

/// Where images come from: a registry, a layout directory, an archive, a plugin.
///
/// Required: [`ImageSource::describe`], [`ImageSource::root`] and
/// [`ImageSource::open_blob`]. The rest have defaults built on those.
pub trait ImageSource: Send + Sync {
    /// A short description for messages, e.g. `oci-layout:./builder`.
    fn describe(&self) -> String;

    /// The top-level document (index or manifest) that `image` names in this source.
    /// `None` asks for the only image the source holds.
    fn root<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, Result<Document>>;

    /// [`ImageSource::root`] for a platform, for sources that select the platform
    /// themselves (plugins resolve an image for a platform in one call). The
    /// core always calls this one.
    fn root_for<'a>(
        &'a self,
        image: Option<&'a str>,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<Document>> {
        let _ = platform;
        self.root(image)
    }

    /// Opens a blob (layer, config, nested manifest) as a byte stream. The core
    /// verifies size and digest; the source need not.
    fn open_blob<'a>(&'a self, descriptor: &'a Descriptor) -> BoxFuture<'a, Result<BlobReader>>;

    /// A blob as a plain blocking reader, for sources that have it on local disk.
    /// The core prefers it to [`ImageSource::open_blob`] when given: it reads from
    /// the extraction thread without a hop through the async runtime per read.
    fn open_blob_blocking(
        &self,
        descriptor: &Descriptor,
    ) -> Option<Result<Box<dyn std::io::Read + Send>>> {
        let _ = descriptor;
        None
    }

    /// The file holding a blob, for sources that keep blobs as files on local
    /// disk: a local destination may hard-link it rather than copy it (and still
    /// verifies it). `None` when there is no such file.
    fn blob_file(&self, descriptor: &Descriptor) -> Option<std::path::PathBuf> {
        let _ = descriptor;
        None
    }

    /// Whether [`ImageSource::blob_file`]'s file for this blob was verified
    /// against its digest when it was written, by us, into a place only we write
    /// (the whole images a build keeps): a destination hard-linking it may then
    /// check its size only. `false` unless a source knows.
    fn blob_file_verified(&self, descriptor: &Descriptor) -> bool {
        let _ = descriptor;
        false
    }

    /// For a registry, `(registry, repository)` of the image it serves now: a
    /// destination in the same registry can mount blobs from that repository
    /// instead of uploading them.
    fn registry_origin(&self) -> Option<(String, String)> {
        None
    }

    /// A nested manifest or index named by a descriptor. Registries override this
    /// (manifests live at a different endpoint than blobs).
    fn fetch_manifest<'a>(&'a self, descriptor: &'a Descriptor) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            let what = format!("document {}", descriptor.digest());
            manifest::check_size(descriptor.size(), &what)?;
            let reader = self.open_blob(descriptor).await?;
            read_capped(reader, MAX_JSON_BYTES, &what).await
        })
    }

    /// Readies the source to serve blobs of `image` without resolving it again
    /// (a registry logs in to the image's repository). The cache calls it before
    /// fetching missing blobs of an image it resolved on an earlier run.
    fn prepare<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, Result<()>> {
        let _ = image;
        Box::pin(async { Ok(()) })
    }

    /// Whether blobs come over the network (then the cache keeps a copy of each
    /// and re-checks references only as often as the pull policy says). Local
    /// sources (directories, archives) are cheap to re-read and are not copied.
    fn is_remote(&self) -> bool {
        false
    }

    /// `image` in the canonical spelling the cache records it under (a registry
    /// normalises `ubuntu` to `docker.io/library/ubuntu:latest`). Must not do I/O.
    fn canonical_name(&self, image: Option<&str>) -> Option<String> {
        image.map(str::to_owned)
    }

    /// The current digest of what `image` names, as cheaply as the source can tell.
    fn current_digest<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, Result<Digest>> {
        Box::pin(async move {
            let doc = self.root(image).await?;
            Ok(doc.digest.unwrap_or_else(|| Digest::sha256_of(&doc.bytes)))
        })
    }
}

/// Reads a whole small stream, refusing more than `limit` bytes.
pub async fn read_capped(reader: BlobReader, limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut limited = reader.take(limit + 1);
    limited
        .read_to_end(&mut buf)
        .await
        .map_err(|e| Error::source(format!("{what}: read failed: {e}")))?;
    manifest::check_size(buf.len() as u64, what)?;
    Ok(buf)
}

/// One layer of a resolved image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerInfo {
    /// Its (compressed) digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// The digest of its uncompressed tar, from the config, when known.
    pub diff_id: Option<Digest>,
    /// The descriptor, to hand back to [`ImageSource::open_blob`].
    #[serde(skip)]
    pub descriptor: Descriptor,
}

/// An image resolved to one manifest for one platform, every document verified.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// What was asked for (or the name the source found), for messages.
    pub name: String,
    /// The digest of the top-level document (an index for multi-platform images).
    pub root_digest: Digest,
    /// The digest of the image manifest.
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: ImageManifest,
    /// Its raw bytes (digest-verified).
    pub manifest_bytes: Vec<u8>,
    /// The config digest.
    pub config_digest: Digest,
    /// The config.
    pub config: ImageConfiguration,
    /// The config's raw bytes (digest-verified).
    pub config_bytes: Vec<u8>,
    /// The platform the config declares.
    pub platform: Platform,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
}

/// A library that was refused, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefusedPlugin {
    /// The library.
    pub path: std::path::PathBuf,
    /// Why it was refused: a sentence.
    pub reason: String,
    /// Whether the library was opened (loaded) before it was refused. A library
    /// refused by the trust check (the host's trust check) never is.
    pub opened: bool,
}

/// How deep nested indexes are followed.
const MAX_INDEX_DEPTH: usize = 4;

fn verify_bytes(bytes: &[u8], expected: Option<&Digest>, what: &str) -> Result<Digest> {
    let actual = match expected {
        Some(e) => {
            let mut h = e.hasher();
            h.update(bytes);
            h.finish()
        }
        None => Digest::sha256_of(bytes),
    };
    if let Some(e) = expected {
        if *e != actual {
            return Err(Error::DigestMismatch {
                what: what.to_owned(),
                expected: e.clone(),
                actual,
            });
        }
    }
    Ok(actual)
}

fn verify_size(bytes: &[u8], d: &Descriptor, what: &str) -> Result<()> {
    if bytes.len() as u64 != d.size() {
        return Err(Error::SizeMismatch {
            what: what.to_owned(),
            expected: d.size(),
            actual: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Resolves `image` in `source` to one verified manifest and config for `platform`.
///
/// `explicit_platform` says whether the user asked for the platform (then a
/// single-platform image built for another one is an error) or it is the default
/// (then it is a warning).
pub async fn resolve(
    source: &dyn ImageSource,
    image: Option<&str>,
    platform: &Platform,
    explicit_platform: bool,
) -> Result<ResolvedImage> {
    let root = source.root_for(image, platform).await?;
    let name = image
        .map(str::to_owned)
        .or(root.name.clone())
        .unwrap_or_else(|| "the image".to_owned());
    let what = format!("{name} in {}", source.describe());
    let root_digest = verify_bytes(
        &root.bytes,
        root.digest.as_ref(),
        &format!("manifest of {what}"),
    )?;
    let mut bytes = root.bytes;
    let mut media_type = root.media_type;
    let mut digest = root_digest.clone();
    for depth in 0.. {
        if depth > MAX_INDEX_DEPTH {
            return Err(Error::IndexTooDeep {
                what,
                limit: MAX_INDEX_DEPTH,
            });
        }
        let doc_what = format!("{} of {what}", digest.short());
        match manifest::classify(media_type.as_deref(), &bytes, &doc_what)? {
            DocumentKind::Manifest => break,
            DocumentKind::Index => {
                let index = manifest::parse_index(&bytes, &format!("image index {doc_what}"))?;
                let chosen = manifest::select_manifest(&index, platform, &what)?.clone();
                let child_what = format!("manifest {} of {what}", chosen.digest());
                let child_digest = manifest::descriptor_digest(&chosen, &child_what)?;
                manifest::check_size(chosen.size(), &child_what)?;
                let child = source.fetch_manifest(&chosen).await?;
                verify_size(&child, &chosen, &child_what)?;
                verify_bytes(&child, Some(&child_digest), &child_what)?;
                tracing::debug!(digest = %child_digest, "selected {} for {platform}", manifest::descriptor_platform(&chosen).unwrap_or_default());
                bytes = child;
                media_type = chosen.media_type().to_string().into();
                digest = child_digest;
            }
        }
    }
    let manifest_what = format!("manifest {digest} of {what}");
    let manifest = manifest::parse_manifest(&bytes, &manifest_what)?;
    let config_desc = manifest.config().clone();
    let config_what = format!("config {} of {what}", config_desc.digest());
    manifest::descriptor_digest(&config_desc, &config_what)?;
    manifest::check_size(config_desc.size(), &config_what)?;
    let config_bytes = source.fetch_manifest(&config_desc).await?;
    let image = from_parts(name, root_digest, digest, bytes, config_bytes)?;
    let image_platform = &image.platform;
    if !platform.matches(
        &image_platform.os,
        &image_platform.architecture,
        image_platform.variant.as_deref(),
    ) {
        if explicit_platform {
            return Err(Error::PlatformMismatch {
                what,
                wanted: platform.to_string(),
                actual: image_platform.to_string(),
            });
        }
        tracing::warn!("{what} is built for {image_platform}, not for this machine ({platform})");
    }
    Ok(image)
}

/// An image index with every image it lists, each verified.
#[derive(Debug, Clone)]
pub struct ResolvedIndex {
    /// What was asked for (or the name the source found), for messages.
    pub name: String,
    /// The index's digest.
    pub digest: Digest,
    /// Its raw bytes (digest-verified).
    pub bytes: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// The images it lists, in its order.
    pub images: Vec<ResolvedImage>,
}

/// What an image name resolves to with every platform kept.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A single image.
    Image(Box<ResolvedImage>),
    /// A multi-platform image.
    Index(ResolvedIndex),
}

/// [`resolve`] keeping every platform: the top-level document as it is, and for
/// an index each image it lists (nested indexes are refused). Every document
/// is verified as `resolve` verifies it.
pub async fn resolve_all(source: &dyn ImageSource, image: Option<&str>) -> Result<Resolved> {
    let root = source.root(image).await?;
    let name = image
        .map(str::to_owned)
        .or(root.name.clone())
        .unwrap_or_else(|| "the image".to_owned());
    let what = format!("{name} in {}", source.describe());
    let digest = verify_bytes(
        &root.bytes,
        root.digest.as_ref(),
        &format!("manifest of {what}"),
    )?;
    let doc_what = format!("{} of {what}", digest.short());
    if manifest::classify(root.media_type.as_deref(), &root.bytes, &doc_what)?
        == DocumentKind::Manifest
    {
        let platform = Platform::host();
        return Ok(Resolved::Image(Box::new(
            resolve(source, image, &platform, false).await?,
        )));
    }
    let index = manifest::parse_index(&root.bytes, &format!("image index {doc_what}"))?;
    let mut images = Vec::new();
    for d in index.manifests() {
        let child_what = format!("manifest {} of {what}", d.digest());
        let child_digest = manifest::descriptor_digest(d, &child_what)?;
        manifest::check_size(d.size(), &child_what)?;
        let child = source.fetch_manifest(d).await?;
        verify_size(&child, d, &child_what)?;
        verify_bytes(&child, Some(&child_digest), &child_what)?;
        if manifest::classify(Some(d.media_type().as_ref()), &child, &child_what)?
            == DocumentKind::Index
        {
            return Err(Error::IndexTooDeep { what, limit: 1 });
        }
        let parsed = manifest::parse_manifest(&child, &child_what)?;
        let config_desc = parsed.config().clone();
        let config_what = format!("config {} of {child_what}", config_desc.digest());
        manifest::descriptor_digest(&config_desc, &config_what)?;
        manifest::check_size(config_desc.size(), &config_what)?;
        let config_bytes = source.fetch_manifest(&config_desc).await?;
        images.push(from_parts(
            name.clone(),
            digest.clone(),
            child_digest,
            child,
            config_bytes,
        )?);
    }
    let media_type = index
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .or(root.media_type)
        .unwrap_or_else(|| manifest::OCI_INDEX.to_owned());
    Ok(Resolved::Index(ResolvedIndex {
        name,
        digest,
        bytes: root.bytes,
        media_type,
        images,
    }))
}

/// Builds a [`ResolvedImage`] from an image manifest's and its config's bytes
/// (as the cache stores them), verifying the config against the manifest's
/// descriptor and the layers against the config's diff_ids. `root_digest` is the
/// digest of the document the image was found by (an index, or the manifest).
pub fn from_parts(
    name: String,
    root_digest: Digest,
    manifest_digest: Digest,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
) -> Result<ResolvedImage> {
    let what = name.clone();
    let manifest_what = format!("manifest {manifest_digest} of {what}");
    let digest = verify_bytes(&manifest_bytes, Some(&manifest_digest), &manifest_what)?;
    let bytes = manifest_bytes;
    let manifest = manifest::parse_manifest(&bytes, &manifest_what)?;
    let config_desc = manifest.config().clone();
    let config_what = format!("config {} of {what}", config_desc.digest());
    let config_digest = manifest::descriptor_digest(&config_desc, &config_what)?;
    verify_size(&config_bytes, &config_desc, &config_what)?;
    verify_bytes(&config_bytes, Some(&config_digest), &config_what)?;
    let config = manifest::parse_config(&config_bytes, &config_what)?;
    let image_platform = manifest::config_platform(&config);
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::LayerCountMismatch {
            what,
            layers: manifest.layers().len(),
            diff_ids: diff_ids.len(),
        });
    }
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for (i, l) in manifest.layers().iter().enumerate() {
        let lwhat = format!("layer {} of {what}", i + 1);
        let digest = manifest::descriptor_digest(l, &lwhat)?;
        let diff_id = match diff_ids.get(i) {
            Some(d) => Some(Digest::parse(d).map_err(|source| Error::BadDigest {
                what: format!("diff_id of {lwhat}"),
                source,
            })?),
            None => None,
        };
        layers.push(LayerInfo {
            digest,
            size: l.size(),
            media_type: l.media_type().to_string(),
            diff_id,
            descriptor: l.clone(),
        });
    }
    Ok(ResolvedImage {
        name,
        root_digest,
        manifest_digest: digest,
        manifest,
        manifest_bytes: bytes,
        config_digest,
        config,
        config_bytes,
        platform: image_platform,
        layers,
    })
}

/// A parsed `[SCHEME:]LOCATION` source spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// The scheme, `registry` when none was written.
    pub scheme: String,
    /// Everything after the first `:` (may be empty for the registry).
    pub location: String,
}

/// The scheme used when a spec names none.
pub const DEFAULT_SCHEME: &str = "registry";

impl SourceSpec {
    /// Parses a spec. A scheme is a leading `[a-z][a-z0-9+.-]*` followed by `:`;
    /// anything else is a registry location.
    pub fn parse(spec: &str) -> SourceSpec {
        if let Some((scheme, location)) = spec.split_once(':') {
            let valid = scheme
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b));
            if valid {
                return SourceSpec {
                    scheme: scheme.to_owned(),
                    location: location.to_owned(),
                };
            }
        }
        SourceSpec {
            scheme: DEFAULT_SCHEME.to_owned(),
            location: spec.to_owned(),
        }
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.scheme, self.location)
    }
}

/// Makes sources for one scheme.
pub trait SourceFactory: Send + Sync {
    /// Who provides this scheme (a crate or plugin path), for messages.
    fn provider(&self) -> String;
    /// Opens a source at `location`.
    fn open(&self, location: &str) -> Result<Box<dyn ImageSource>>;
}

/// Schemes and the factories that serve them; built-in crates and plugins add to it.
#[derive(Default)]
pub struct SchemeRegistry {
    factories: BTreeMap<String, Box<dyn SourceFactory>>,
}

impl SchemeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `scheme`; a scheme registered twice is an error naming both.
    pub fn register(&mut self, scheme: &str, factory: Box<dyn SourceFactory>) -> Result<()> {
        if let Some(existing) = self.factories.get(scheme) {
            return Err(Error::SchemeClash {
                scheme: scheme.to_owned(),
                first: existing.provider(),
                second: factory.provider(),
            });
        }
        self.factories.insert(scheme.to_owned(), factory);
        Ok(())
    }

    /// Whether a registered factory serves `scheme`.
    pub fn serves(&self, scheme: &str) -> bool {
        self.factories.contains_key(scheme)
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// Opens the source a spec names.
    pub fn open(&self, spec: &str) -> Result<Box<dyn ImageSource>> {
        let parsed = SourceSpec::parse(spec);
        match self.factories.get(&parsed.scheme) {
            Some(f) => f.open(&parsed.location),
            None => Err(Error::UnknownScheme {
                scheme: parsed.scheme,
                spec: spec.to_owned(),
                known: self.schemes(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_table() {
        for (input, scheme, loc) in [
            ("oci-layout:./dir", "oci-layout", "./dir"),
            ("docker-archive:/tmp/a.tar", "docker-archive", "/tmp/a.tar"),
            ("docker-archive:-", "docker-archive", "-"),
            ("registry:", "registry", ""),
            ("./just/a/path", "registry", "./just/a/path"),
            ("Weird:x", "registry", "Weird:x"),
            ("oci-layout:C:/x", "oci-layout", "C:/x"),
            ("my+scheme.v2:loc", "my+scheme.v2", "loc"),
        ] {
            let s = SourceSpec::parse(input);
            assert_eq!(
                (s.scheme.as_str(), s.location.as_str()),
                (scheme, loc),
                "{input}"
            );
        }
    }

    struct Named(&'static str);
    impl SourceFactory for Named {
        fn provider(&self) -> String {
            self.0.to_owned()
        }
        fn open(&self, location: &str) -> Result<Box<dyn ImageSource>> {
            Err(Error::source(format!("{} cannot open {location}", self.0)))
        }
    }

    #[test]
    fn registry_clash_and_unknown() {
        let mut r = SchemeRegistry::new();
        r.register("x", Box::new(Named("first"))).unwrap();
        let e = r
            .register("x", Box::new(Named("second")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("first") && e.contains("second"), "{e}");
        let e = r.open("nope:loc").err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("known: x"), "{e}");
        let e = r.open("x:loc").err().unwrap().to_string();
        assert_eq!(e, "first cannot open loc");
        assert!(r.serves("x") && !r.serves("nope") && !r.serves("registry"));
    }
}

//! The core's error type. Variants carry what they are about (layer, digest, path),
//! so the CLI can print one sentence and the cause chain.

use std::path::PathBuf;

use crate::digest::{Digest, DigestError};

/// A boxed error from a source or other pluggable part.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A JSON document could not be parsed.
    #[error("{what} is not valid JSON of the expected shape")]
    Json {
        /// Which document, e.g. `index.json of layout ./dir`.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON document is larger than we are willing to parse.
    #[error("{what} is {size} bytes, more than the {limit} byte limit for JSON documents")]
    TooLarge {
        /// Which document.
        what: String,
        /// Its size (or a lower bound).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A manifest or index whose media type we do not handle.
    #[error("{what} has media type {media_type:?}, which is not an OCI or Docker schema-2 image manifest or index")]
    UnsupportedMediaType {
        /// Which document.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// No manifest in an index serves the wanted platform.
    #[error("{what} has no image for platform {wanted} (available: {})", if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
    NoMatchingPlatform {
        /// Which index.
        what: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// A single-platform image built for another platform than the one asked for.
    #[error("{what} is built for {actual}, not for the requested platform {wanted}")]
    PlatformMismatch {
        /// Which image.
        what: String,
        /// The platform asked for.
        wanted: String,
        /// The image's platform.
        actual: String,
    },
    /// Image indexes nested deeper than we follow.
    #[error("{what}: image indexes are nested more than {limit} deep")]
    IndexTooDeep {
        /// Which image.
        what: String,
        /// The depth limit.
        limit: usize,
    },
    /// A digest string in a document is not well formed.
    #[error("{what} names a malformed digest")]
    BadDigest {
        /// Where the digest was found.
        what: String,
        /// What is wrong with it.
        #[source]
        source: DigestError,
    },
    /// Content does not hash to the digest it was named by.
    #[error("{what}: content does not match its digest (expected {expected}, got {actual}); the source is corrupt or was tampered with")]
    DigestMismatch {
        /// Which blob or document.
        what: String,
        /// The digest it was named by.
        expected: Digest,
        /// The digest of what was read.
        actual: Digest,
    },
    /// Content is not the size its descriptor says.
    #[error("{what}: size is {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// The size in the descriptor.
        expected: u64,
        /// The number of bytes read (or a lower bound when it is too long).
        actual: u64,
    },
    /// The config's `rootfs.diff_ids` do not correspond to the manifest's layers.
    #[error("{what}: the manifest lists {layers} layers but the config has {diff_ids} diff_ids; the image is inconsistent")]
    LayerCountMismatch {
        /// Which image.
        what: String,
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
    /// A layer failed to apply; `source` says why.
    #[error("layer {index} ({digest}) could not be applied")]
    Layer {
        /// 1-based layer number.
        index: usize,
        /// The layer's digest.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A layer could not be copied to a destination; `source` says why.
    #[error("layer {index} ({digest}) could not be copied")]
    LayerCopy {
        /// 1-based layer number.
        index: usize,
        /// The layer's digest.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// An archive entry that we refuse to apply.
    #[error("entry {entry:?}: {reason}")]
    BadEntry {
        /// The entry name as found in the archive.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Applying an acceptable entry failed (a full disk, a permission).
    #[error("entry {entry:?}")]
    Entry {
        /// The entry name as found in the archive.
        entry: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// A directory path of an entry cannot be resolved inside the root.
    #[error("cannot resolve directory {path}: {reason}")]
    Unresolvable {
        /// The directory path (as in the image).
        path: String,
        /// Why.
        reason: String,
    },
    /// The layer's compressed stream cannot be decompressed.
    #[error("the {compression} stream of the layer is corrupt or truncated")]
    Decompress {
        /// The compression (`gzip`, `zstd`, `uncompressed`), or `layer` before it is known.
        compression: &'static str,
        /// The decompressor's complaint.
        #[source]
        source: std::io::Error,
    },
    /// Reading a blob from its source failed.
    #[error("could not read the blob from its source")]
    ReadBlob(#[source] std::io::Error),
    /// The layer is not a readable tar stream.
    #[error("the layer is not a valid tar stream (truncated or corrupt?)")]
    Tar(#[source] std::io::Error),
    /// A filesystem operation failed.
    #[error("could not {op} {}", path.display())]
    Io {
        /// What we were doing, e.g. `create directory`.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The extraction target exists and is not empty.
    #[error("target directory {} already exists and is not empty", .0.display())]
    TargetNotEmpty(PathBuf),
    /// The image source reported an error.
    #[error(transparent)]
    Source(BoxError),
    /// A source spec names a scheme nobody serves.
    #[error("unknown source scheme {scheme:?} in {spec:?} (known: {})", known.join(", "))]
    UnknownScheme {
        /// The scheme.
        scheme: String,
        /// The whole spec.
        spec: String,
        /// The schemes that are registered.
        known: Vec<String>,
    },
    /// No built-in source serves a spec's scheme, and no plugin does either
    /// (after the plugins were loaded to find one).
    #[error("no built-in source or plugin serves scheme {scheme:?} of {spec:?} (schemes: {}; plugins are looked for in {}){}", known.join(", "), plugin_dirs(dirs), refused_plugins(refused))]
    NoSourceForScheme {
        /// The scheme.
        scheme: String,
        /// The whole spec.
        spec: String,
        /// The schemes that are served, built-in and by plugins.
        known: Vec<String>,
        /// The plugin directories searched.
        dirs: Vec<PathBuf>,
        /// The plugins that were refused (one of them may have been meant).
        refused: Vec<crate::source::RefusedPlugin>,
    },
    /// Two parties registered the same scheme.
    #[error("source scheme {scheme:?} is registered twice: by {first} and by {second}")]
    SchemeClash {
        /// The scheme.
        scheme: String,
        /// Who registered it first.
        first: String,
        /// Who tried again.
        second: String,
    },
    /// A builder image's metadata (a file under `/cnb`, a label, the config's Env)
    /// is malformed or unsafe to read.
    #[error("{what}: {reason}")]
    Builder {
        /// Which file, label or variable, e.g. `/cnb/order.toml`.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The cache directory cannot be created or written.
    #[error("the cache directory {} cannot be used", path.display())]
    CacheUnusable {
        /// The cache directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Something is not in the cache and may not be fetched.
    #[error("{what} is not in the cache: {why}")]
    NotCached {
        /// What was wanted.
        what: String,
        /// Why it cannot be fetched.
        why: String,
    },
    /// A name that no cached reference has.
    #[error("no cached builder is named {0}")]
    UnknownCached(String),
    /// The application directory cannot be built from.
    #[error("application directory {}: {reason}", path.display())]
    AppDir {
        /// The directory as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the application could not be copied into the build workspace.
    #[error("cannot {op} {}: {reason}{}", path.display(), hint.map(|h| format!("; {h}")).unwrap_or_default())]
    AppCopy {
        /// What we were doing, e.g. `read app file`.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why, e.g. `permission denied`.
        reason: String,
        /// What the user can do about it.
        hint: Option<&'static str>,
    },
    /// The app's `project.toml` (CNB project descriptor) is malformed.
    #[error("{}: {reason}", path.display())]
    ProjectDescriptor {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A build environment variable (`--env KEY=VALUE`) that cannot be passed.
    #[error("environment variable {key:?}: {reason}")]
    EnvVar {
        /// The variable name as given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An OCI layout that is read or written to is malformed or not what was
    /// expected (several images where one was wanted, a missing blob).
    #[error("OCI layout {}: {reason}", path.display())]
    BadLayout {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An output path holds something that must not be overwritten, or cannot
    /// be written to.
    #[error("refusing to write to {}: {reason}", path.display())]
    OutputRefused {
        /// The output path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A name that cannot be written where it was asked for.
    #[error("{what} {name:?} is not valid: {reason}")]
    BadName {
        /// What kind of name, e.g. `image name for a docker archive`.
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The work was cancelled (Ctrl-C).
    #[error("cancelled")]
    Cancelled,
    /// A background task died.
    #[error("internal error: a worker task failed: {0}")]
    Join(String),
}

fn plugin_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no directory".to_owned();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn refused_plugins(refused: &[crate::source::RefusedPlugin]) -> String {
    if refused.is_empty() {
        return String::new();
    }
    let list = refused
        .iter()
        .map(|p| format!("{}: {}", p.path.display(), p.reason))
        .collect::<Vec<_>>()
        .join("; ");
    let n = refused.len();
    format!(
        "; {n} plugin{} refused: {list}",
        if n == 1 { " was" } else { "s were" }
    )
}

/// Shorthand for core results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its whole cause chain as one line (`a: b: c`), each cause once:
/// a cause whose text its parent already shows is not repeated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Error {
    /// Wraps an I/O error with what we were doing and where.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// Wraps any source error.
    pub fn source(e: impl Into<BoxError>) -> Error {
        Error::Source(e.into())
    }
}

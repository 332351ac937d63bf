//! The plugin host: finds plugin libraries, checks that they can be trusted,
//! loads them, and registers the schemes they serve as image sources.
//!
//! Plugins live in `$XDG_DATA_HOME/locald/plugins` (default
//! `~/.local/share/locald/plugins`) and in the directories of `LOCALD_PLUGIN_PATH`
//! (colon-separated), as `*.so` files. They are opened only when asked for:
//! [`ensure_scheme`] loads them only when no registered (built-in) source serves
//! a spec's scheme, and `locald plugin ls` loads them to list them. Before a
//! library is opened, [`trust`] checks that nobody but the user and root could
//! have written it (owner and modes of the file and of every directory above
//! it, no symlink), and the host loads the very file it checked, through its
//! descriptor. A library that is not trusted, is not a plugin, was built for
//! another ABI version, whose entry point fails or whose scheme is taken is
//! refused with a reason; `locald` keeps working without it. Resolving and blob
//! reads run on the blocking pool (opening a location runs where the source is
//! opened), and what a plugin returns goes through the same digest and size
//! checks as every source (see [`locald_core::source::resolve`]). A loaded plugin stays
//! loaded for the life of the process.

mod ffi;
pub mod trust;

use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::image::Descriptor;
use tokio::io::AsyncRead;

use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::manifest::MAX_JSON_BYTES;
use locald_core::platform::Platform;
use locald_core::source::{
    BlobReader, BoxFuture, Document, ImageSource, SchemeRegistry, SourceFactory, SourceSpec,
};

/// The environment variable with extra plugin directories.
pub const PLUGIN_PATH_ENV: &str = "LOCALD_PLUGIN_PATH";

/// A plugin that was loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedPlugin {
    /// The library.
    pub path: PathBuf,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The schemes it serves.
    pub schemes: Vec<String>,
}

pub use locald_core::source::RefusedPlugin;

/// What [`load_plugins`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PluginReport {
    /// Loaded and registered.
    pub loaded: Vec<LoadedPlugin>,
    /// Refused.
    pub refused: Vec<RefusedPlugin>,
}

/// The plugin directories: `$XDG_DATA_HOME/locald/plugins` (when the data
/// directory is known), then each directory of `LOCALD_PLUGIN_PATH`.
pub fn plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(root) = locald_core::fsutil::data_root() {
        dirs.push(root.join("plugins"));
    }
    if let Some(extra) = std::env::var_os(PLUGIN_PATH_ENV) {
        dirs.extend(std::env::split_paths(&extra).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

/// The entries named `*.so` in `dirs`, each directory's sorted by name; missing
/// directories are skipped. Whatever their type: a symlink, directory or FIFO
/// named `*.so` is listed so that it is refused with a reason, not skipped
/// without one.
pub fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        let mut found: Vec<PathBuf> = std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "so"))
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

/// Where a process's open descriptors are, as paths.
const PROC_FDS: &str = "/proc/self/fd";

/// Loads every trusted plugin in `dirs` and registers its schemes in
/// `registry`; the untrusted ones are refused without being opened.
pub fn load_plugins(registry: &mut SchemeRegistry, dirs: &[PathBuf]) -> PluginReport {
    let mut report = PluginReport::default();
    let paths = discover(dirs);
    let have_proc = Path::new(PROC_FDS).is_dir();
    for path in paths {
        let refuse = |reason: String, opened: bool| RefusedPlugin {
            path: path.clone(),
            reason,
            opened,
        };
        if !have_proc {
            report.refused.push(refuse(
                format!("locald loads plugins through {PROC_FDS}, and /proc is not mounted here"),
                false,
            ));
            continue;
        }
        let fd = match trust::open_checked(&path) {
            Ok(fd) => fd,
            Err(e) => {
                report.refused.push(refuse(e.to_string(), false));
                continue;
            }
        };
        match load_one(registry, &path, fd) {
            Ok(p) => report.loaded.push(p),
            Err(reason) => report.refused.push(refuse(reason, true)),
        }
    }
    report
}

/// How [`ensure_scheme`] found a source for a spec's scheme.
#[derive(Debug)]
pub enum Served {
    /// A registered (built-in) source serves it; no plugin was looked at.
    Registered,
    /// A plugin serves it: the plugins were loaded, with this outcome.
    ByPlugin(PluginReport),
}

/// Makes `registry` serve the scheme of `spec`. Plugins are loaded (from
/// `dirs`) only when no registered source serves the scheme, so a command whose
/// source is built in never opens a plugin. When no plugin serves it either, the
/// error names the schemes there are and the plugins that were refused.
pub fn ensure_scheme(
    registry: &mut SchemeRegistry,
    spec: &str,
    dirs: &[PathBuf],
) -> Result<Served> {
    let scheme = SourceSpec::parse(spec).scheme;
    if registry.serves(&scheme) {
        return Ok(Served::Registered);
    }
    let report = load_plugins(registry, dirs);
    if registry.serves(&scheme) {
        return Ok(Served::ByPlugin(report));
    }
    Err(Error::NoSourceForScheme {
        scheme,
        spec: spec.to_owned(),
        known: registry.schemes(),
        dirs: dirs.to_vec(),
        refused: report.refused,
    })
}

/// Loads the library `fd` is open on (`path`, checked by [`trust`]).
fn load_one(
    registry: &mut SchemeRegistry,
    path: &Path,
    fd: OwnedFd,
) -> std::result::Result<LoadedPlugin, String> {
    // Load the very file that was checked, through its descriptor rather than
    // by name: whatever is put at `path` after the check is not what gets
    // loaded. dlopen opens `/proc/self/fd/N`, which reaches that descriptor's
    // file whatever its name is now (an O_PATH descriptor can be reopened so).
    // The descriptor is never closed: glibc knows loaded libraries by the name
    // they were opened under, so a later plugin given the same descriptor
    // number, and so the same name, would be taken for this one and not loaded.
    let raw = fd.into_raw_fd();
    let through = PathBuf::from(format!("{PROC_FDS}/{raw}"));
    let lib = Arc::new(ffi::Library::load(&through, path)?);
    let (name, version, schemes) = lib.describe()?;
    if schemes.is_empty() {
        return Err("the plugin serves no scheme".to_owned());
    }
    let mut unique = schemes.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != schemes.len() {
        return Err("the plugin lists a scheme twice".to_owned());
    }
    for s in &schemes {
        let valid = locald_core::source::SourceSpec::parse(&format!("{s}:x")).scheme == *s;
        if !valid {
            return Err(format!(
                "the plugin's scheme {s:?} is not a valid scheme name"
            ));
        }
    }
    let plugin = LoadedPlugin {
        path: path.to_path_buf(),
        name,
        version,
        schemes: schemes.clone(),
    };
    // All or nothing: check every scheme before registering any.
    let taken: Vec<String> = registry.schemes();
    if let Some(s) = schemes.iter().find(|s| taken.contains(s)) {
        let e = registry
            .register(
                s,
                Box::new(PluginFactory {
                    lib: lib.clone(),
                    plugin: plugin.clone(),
                    scheme: s.clone(),
                }),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(e);
    }
    for s in &schemes {
        registry
            .register(
                s,
                Box::new(PluginFactory {
                    lib: lib.clone(),
                    plugin: plugin.clone(),
                    scheme: s.clone(),
                }),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(plugin)
}

/// Opens sources of one plugin scheme.
struct PluginFactory {
    lib: Arc<ffi::Library>,
    plugin: LoadedPlugin,
    scheme: String,
}

impl SourceFactory for PluginFactory {
    fn provider(&self) -> String {
        format!(
            "plugin {} ({})",
            self.plugin.name,
            self.plugin.path.display()
        )
    }

    fn open(&self, location: &str) -> Result<Box<dyn ImageSource>> {
        let source = ffi::Source::open(self.lib.clone(), &self.plugin.name, location)
            .map_err(|e| self.error(e))?;
        Ok(Box::new(PluginSource {
            inner: Arc::new(Mutex::new(source)),
            describe: format!("{}:{location}", self.scheme),
            plugin: self.plugin.name.clone(),
            resolved: Mutex::new(None),
            platform: Mutex::new(None),
        }))
    }
}

impl PluginFactory {
    fn error(&self, e: ffi::CallError) -> Error {
        Error::source(PluginError {
            plugin: self.plugin.name.clone(),
            call: e,
        })
    }
}

/// A plugin's failure, naming the plugin.
#[derive(Debug)]
pub struct PluginError {
    /// The plugin's name.
    pub plugin: String,
    call: ffi::CallError,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {}: {}", self.plugin, self.call)
    }
}

impl std::error::Error for PluginError {}

/// One open location of a plugin, as an [`ImageSource`].
struct PluginSource {
    inner: Arc<Mutex<ffi::Source>>,
    describe: String,
    plugin: String,
    /// The last resolve: its config is served by `fetch_manifest`.
    resolved: Mutex<Option<ffi::ResolvedCopy>>,
    /// The platform of the last `root_for` (for `current_digest`).
    platform: Mutex<Option<Platform>>,
}

impl PluginSource {
    fn error(&self, call: ffi::CallError) -> Error {
        Error::source(PluginError {
            plugin: self.plugin.clone(),
            call,
        })
    }

    async fn resolve(&self, image: Option<&str>, platform: &Platform) -> Result<ffi::ResolvedCopy> {
        let inner = self.inner.clone();
        let image = image.map(str::to_owned);
        let platform = platform.to_string();
        let r = tokio::task::spawn_blocking(move || {
            let mut s = inner.lock().map_err(|_| ffi::CallError {
                status: locald_plugin::Status::Error,
                op: "resolve".into(),
                message: "an earlier call panicked".into(),
            })?;
            s.resolve(image.as_deref(), &platform, MAX_JSON_BYTES as usize)
        })
        .await
        .map_err(|e| Error::Join(e.to_string()))?
        .map_err(|e| self.error(e))?;
        tracing::debug!(
            "plugin {} resolved {} to manifest {} (top-level document {})",
            self.plugin,
            if r.name.is_empty() {
                "the image"
            } else {
                &r.name
            },
            r.manifest_digest,
            r.root_digest
        );
        if let Ok(mut g) = self.resolved.lock() {
            *g = Some(r.clone());
        }
        Ok(r)
    }

    fn blob(&self, descriptor: &Descriptor) -> Result<ffi::Blob> {
        let mut s = self
            .inner
            .lock()
            .map_err(|_| Error::source("the plugin source is unusable after a panic"))?;
        s.open_blob(descriptor.digest().as_ref(), descriptor.size())
            .map_err(|e| self.error(e))
    }
}

impl ImageSource for PluginSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn root<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, Result<Document>> {
        Box::pin(async move { self.root_for(image, &Platform::host()).await })
    }

    fn root_for<'a>(
        &'a self,
        image: Option<&'a str>,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<Document>> {
        Box::pin(async move {
            if let Ok(mut g) = self.platform.lock() {
                *g = Some(platform.clone());
            }
            let r = self.resolve(image, platform).await?;
            let digest = Digest::parse(&r.manifest_digest).map_err(|source| Error::BadDigest {
                what: format!("manifest digest from plugin {}", self.plugin),
                source,
            })?;
            Ok(Document {
                bytes: r.manifest,
                media_type: None,
                digest: Some(digest),
                name: (!r.name.is_empty()).then_some(r.name),
            })
        })
    }

    fn fetch_manifest<'a>(&'a self, descriptor: &'a Descriptor) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            // The config came with the resolve; the core checks it against the
            // manifest's descriptor.
            let cached = self
                .resolved
                .lock()
                .ok()
                .and_then(|g| g.as_ref().map(|r| r.config.clone()));
            match cached {
                Some(c) => Ok(c),
                None => Err(Error::source(format!(
                    "plugin {}: {} was asked for before the image was resolved",
                    self.plugin,
                    descriptor.digest()
                ))),
            }
        })
    }

    fn open_blob_blocking(
        &self,
        descriptor: &Descriptor,
    ) -> Option<Result<Box<dyn std::io::Read + Send>>> {
        Some(
            self.blob(descriptor)
                .map(|b| Box::new(b) as Box<dyn std::io::Read + Send>),
        )
    }

    fn open_blob<'a>(&'a self, descriptor: &'a Descriptor) -> BoxFuture<'a, Result<BlobReader>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            let digest = descriptor.digest().to_string();
            let size = descriptor.size();
            let plugin = self.plugin.clone();
            let blob = tokio::task::spawn_blocking(move || {
                inner
                    .lock()
                    .map_err(|_| Error::source("the plugin source is unusable after a panic"))?
                    .open_blob(&digest, size)
                    .map_err(|call| Error::source(PluginError { plugin, call }))
            })
            .await
            .map_err(|e| Error::Join(e.to_string()))??;
            Ok(Box::pin(BlockingReader::spawn(blob)) as BlobReader)
        })
    }

    fn current_digest<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, Result<Digest>> {
        Box::pin(async move {
            let platform = self
                .platform
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_else(Platform::host);
            let r = self.resolve(image, &platform).await?;
            // The digest of the bytes, not the plugin's word for it.
            let claimed = Digest::parse(&r.manifest_digest).map_err(|source| Error::BadDigest {
                what: format!("manifest digest from plugin {}", self.plugin),
                source,
            })?;
            let mut h = claimed.hasher();
            h.update(&r.manifest);
            Ok(h.finish())
        })
    }
}

/// An async reader over a blocking one: a blocking task reads chunks into a
/// bounded channel.
struct BlockingReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl BlockingReader {
    fn spawn(mut r: impl std::io::Read + Send + 'static) -> BlockingReader {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::task::spawn_blocking(move || loop {
            let mut buf = vec![0u8; 64 * 1024];
            match r.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf.into())).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        });
        BlockingReader {
            rx,
            chunk: bytes::Bytes::new(),
        }
    }
}

impl AsyncRead for BlockingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.chunk.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(c))) => self.chunk = c,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(self.chunk.len());
        let part = self.chunk.split_to(n);
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

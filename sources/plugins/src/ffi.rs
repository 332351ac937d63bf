//! The one place the host touches the plugin C ABI: loading a library, reading
//! its table and calling its operations. Everything here is `unsafe` by nature
//! (a shared library can do anything); what we can check, we check: the ABI
//! version before anything else, null pointers, the table's size, UTF-8.
//! Outside this module plugins are safe Rust values.
#![allow(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use locald_plugin::{
    BlobHandle, Buf, PluginV1, Resolved, SourceHandle, Status, Str, ABI_VERSION,
    ABI_VERSION_SYMBOL, ENTRY_SYMBOL,
};

/// A loaded plugin library and its table.
pub struct Library {
    /// Valid for the rest of the process: a loaded plugin is never unloaded
    /// (its thread-local destructors may still run on pooled threads, and
    /// nothing is gained by unloading in a short-lived CLI).
    table: &'static PluginV1,
}

// SAFETY: the table is immutable data and function pointers; the ABI requires
// plugins to accept calls from any thread (one at a time per handle, which the
// callers below guarantee with a mutex per source and ownership per blob).
unsafe impl Send for Library {}
// SAFETY: as above; `&Library` only reads the immutable table.
unsafe impl Sync for Library {}

fn str_of(s: &str) -> Str {
    Str {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

/// Copies a plugin string (static for the library's life) into an owned one.
fn owned(s: &Str, what: &str) -> Result<String, String> {
    if s.len == 0 {
        return Ok(String::new());
    }
    if s.ptr.is_null() {
        return Err(format!("the plugin's {what} is a null pointer"));
    }
    if s.len > 4096 {
        return Err(format!("the plugin's {what} is {} bytes long", s.len));
    }
    // SAFETY: the ABI says `ptr` points to `len` bytes valid while the library
    // is loaded, and it is (we hold the Library).
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("the plugin's {what} is not UTF-8"))
}

impl Library {
    /// Loads `path` and checks that it is a plugin of our ABI version. `shown`
    /// is the path to name in messages (the host loads through
    /// `/proc/self/fd/N`, which means nothing to a user).
    pub fn load(path: &Path, shown: &Path) -> Result<Library, String> {
        // SAFETY: loading runs the library's initialisers. This is the trust the
        // user gave by putting it in a plugin directory, which the host checked
        // (owner and modes of the file and its directories) before calling this.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
            let e = e
                .to_string()
                .replace(&*path.to_string_lossy(), &shown.to_string_lossy());
            format!("cannot be loaded: {e}")
        })?;
        // SAFETY: the symbol, when present, is `extern "C" fn() -> u32` by the ABI.
        let version: libloading::Symbol<'_, extern "C" fn() -> u32> =
            unsafe { lib.get(ABI_VERSION_SYMBOL.as_bytes()) }
                .map_err(|_| format!("not a locald plugin (no {ABI_VERSION_SYMBOL} symbol)"))?;
        let v = version();
        if v != ABI_VERSION {
            return Err(format!(
                "built for plugin ABI version {v}, but this locald speaks version {ABI_VERSION}; rebuild it against locald-plugin with ABI {ABI_VERSION}"
            ));
        }
        // SAFETY: for ABI version 1 the symbol is `extern "C" fn() -> *const PluginV1`.
        let entry: libloading::Symbol<'_, extern "C" fn() -> *const PluginV1> =
            unsafe { lib.get(ENTRY_SYMBOL.as_bytes()) }
                .map_err(|_| format!("no entry point {ENTRY_SYMBOL}"))?;
        let table = entry();
        if table.is_null() {
            return Err(format!(
                "the entry point failed: {}",
                last_error_raw(None).unwrap_or_else(|| "no message".to_owned())
            ));
        }
        // SAFETY: non-null, and by the ABI a table that starts with its size;
        // only that first field is read before the size is known to cover the
        // whole table.
        let size = unsafe { std::ptr::addr_of!((*table).size).read() };
        if size < std::mem::size_of::<PluginV1>() {
            return Err(format!(
                "the plugin table is {size} bytes, smaller than the {} of ABI version {ABI_VERSION}",
                std::mem::size_of::<PluginV1>()
            ));
        }
        // The library stays loaded for the rest of the process.
        std::mem::forget(lib);
        // SAFETY: non-null, at least `size_of::<PluginV1>()` bytes (checked), and
        // by the ABI valid while the library is loaded, which is forever now.
        let table: &'static PluginV1 = unsafe { &*table };
        Ok(Library { table })
    }

    /// The plugin's name, version and schemes.
    pub fn describe(&self) -> Result<(String, String, Vec<String>), String> {
        let t = self.table;
        let name = owned(&t.name, "name")?;
        let version = owned(&t.version, "version")?;
        if t.scheme_count > 0 && t.schemes.is_null() {
            return Err("the plugin's scheme list is a null pointer".to_owned());
        }
        if t.scheme_count > 64 {
            return Err(format!("the plugin claims {} schemes", t.scheme_count));
        }
        let mut schemes = Vec::new();
        for i in 0..t.scheme_count {
            // SAFETY: `schemes` points to `scheme_count` Strs (checked non-null).
            let s = unsafe { &*t.schemes.add(i) };
            schemes.push(owned(s, "scheme")?);
        }
        Ok((name, version, schemes))
    }

    /// The message of this thread's last failed call.
    fn last_error(&self) -> String {
        last_error_raw(Some(self.table)).unwrap_or_else(|| "no message".to_owned())
    }

    fn check(&self, status: Status, op: &str) -> Result<(), CallError> {
        match status {
            Status::Ok => Ok(()),
            s => Err(CallError {
                status: s,
                op: op.to_owned(),
                message: self.last_error(),
            }),
        }
    }
}

fn last_error_raw(table: Option<&PluginV1>) -> Option<String> {
    let t = table?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is valid for `buf.len()` bytes; the function writes at most
    // `cap` bytes and returns the full length.
    let n = unsafe { (t.last_error)(buf.as_mut_ptr(), buf.len()) };
    buf.truncate(n.min(buf.len()));
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A failed plugin call.
#[derive(Debug, Clone)]
pub struct CallError {
    /// What the plugin returned.
    pub status: Status,
    /// The operation.
    pub op: String,
    /// The plugin's message.
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Status::Panic => {
                // The plugin side may already say where it panicked.
                let m = self
                    .message
                    .strip_prefix(&format!("{} panicked: ", self.op))
                    .unwrap_or(&self.message);
                write!(f, "the plugin panicked in {}: {m}", self.op)
            }
            Status::NotFound | Status::Error => write!(f, "{}", self.message),
            Status::InvalidArgument => {
                write!(f, "{} was refused as invalid: {}", self.op, self.message)
            }
            s => write!(
                f,
                "{} returned the unknown status code {}: {}",
                self.op, s.0, self.message
            ),
        }
    }
}

impl std::error::Error for CallError {}

/// An open source of a plugin.
pub struct Source {
    opened: Arc<Opened>,
    lib: Arc<Library>,
    handle: SourceHandle,
    /// The plugin's name, for messages.
    plugin: Arc<str>,
}

// SAFETY: the handle is only used through `&mut self` (callers hold it in a
// mutex), which is the ABI's "one thread at a time per handle".
unsafe impl Send for Source {}

/// Owns an open source handle and closes it when the last of the `Source` and
/// its blobs is gone: the ABI wants every blob closed before its source.
struct Opened {
    lib: Arc<Library>,
    handle: SourceHandle,
}

// SAFETY: `Opened` is only dropped (closing the handle) and never calls the
// plugin otherwise; calls on the handle go through `Source` (`&mut`).
unsafe impl Send for Opened {}
// SAFETY: as above: shared references to it do nothing with the handle.
unsafe impl Sync for Opened {}

impl Drop for Opened {
    fn drop(&mut self) {
        // SAFETY: the handle came from `open` and is closed once, after every
        // blob (each blob holds this `Opened`).
        unsafe { (self.lib.table.close)(self.handle) };
    }
}

/// What `resolve` returned, copied into host memory.
#[derive(Debug, Clone)]
pub struct ResolvedCopy {
    /// The name the plugin found the image under.
    pub name: String,
    /// Manifest bytes.
    pub manifest: Vec<u8>,
    /// Manifest digest as the plugin says (verified by the core).
    pub manifest_digest: String,
    /// Digest of the top-level document.
    pub root_digest: String,
    /// Config bytes.
    pub config: Vec<u8>,
}

fn buf_copy(b: &Buf, limit: usize, what: &str) -> Result<Vec<u8>, String> {
    if b.len == 0 {
        return Ok(Vec::new());
    }
    if b.ptr.is_null() {
        return Err(format!("the plugin returned a null {what}"));
    }
    if b.len > limit {
        return Err(format!(
            "the plugin returned a {what} of {} bytes, more than the {limit} allowed",
            b.len
        ));
    }
    // SAFETY: by the ABI `ptr` holds `len` initialised bytes until free_resolved.
    Ok(unsafe { std::slice::from_raw_parts(b.ptr, b.len) }.to_vec())
}

impl Source {
    /// Opens `location` with the plugin.
    pub fn open(lib: Arc<Library>, plugin: &str, location: &str) -> Result<Source, CallError> {
        let mut handle: SourceHandle = std::ptr::null_mut();
        // SAFETY: `location` outlives the call; `handle` is a valid out-pointer.
        let status = unsafe { (lib.table.open)(str_of(location), &mut handle) };
        lib.check(status, "open")?;
        if handle.is_null() {
            return Err(CallError {
                status: Status::Error,
                op: "open".into(),
                message: "the plugin returned no source".into(),
            });
        }
        Ok(Source {
            opened: Arc::new(Opened {
                lib: lib.clone(),
                handle,
            }),
            lib,
            handle,
            plugin: plugin.into(),
        })
    }

    /// Resolves `image` for `platform`.
    pub fn resolve(
        &mut self,
        image: Option<&str>,
        platform: &str,
        limit: usize,
    ) -> Result<ResolvedCopy, CallError> {
        let empty = || Buf {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        };
        let mut out = Resolved {
            name: empty(),
            manifest: empty(),
            manifest_digest: empty(),
            root_digest: empty(),
            config: empty(),
        };
        // SAFETY: the handle is open and used by this thread only (`&mut self`);
        // the strings outlive the call; `out` is a valid out-pointer.
        let status = unsafe {
            (self.lib.table.resolve)(
                self.handle,
                str_of(image.unwrap_or("")),
                str_of(platform),
                &mut out,
            )
        };
        self.lib.check(status, "resolve")?;
        let copy = (|| -> Result<ResolvedCopy, String> {
            let text = |b: &Buf, what: &str| {
                String::from_utf8(buf_copy(b, 4096, what)?)
                    .map_err(|_| format!("the plugin returned a {what} that is not UTF-8"))
            };
            Ok(ResolvedCopy {
                name: text(&out.name, "name")?,
                manifest: buf_copy(&out.manifest, limit, "manifest")?,
                manifest_digest: text(&out.manifest_digest, "manifest digest")?,
                root_digest: text(&out.root_digest, "root digest")?,
                config: buf_copy(&out.config, limit, "config")?,
            })
        })();
        // SAFETY: `out` was filled by this plugin's resolve and is freed once.
        unsafe { (self.lib.table.free_resolved)(&mut out) };
        copy.map_err(|message| CallError {
            status: Status::Error,
            op: "resolve".into(),
            message,
        })
    }

    /// Opens a blob.
    pub fn open_blob(&mut self, digest: &str, size: u64) -> Result<Blob, CallError> {
        let mut handle: BlobHandle = std::ptr::null_mut();
        // SAFETY: as in `resolve`.
        let status =
            unsafe { (self.lib.table.open_blob)(self.handle, str_of(digest), size, &mut handle) };
        self.lib.check(status, "open_blob")?;
        if handle.is_null() {
            return Err(CallError {
                status: Status::Error,
                op: "open_blob".into(),
                message: "the plugin returned no blob".into(),
            });
        }
        Ok(Blob {
            lib: self.lib.clone(),
            handle,
            plugin: self.plugin.clone(),
            _source: self.opened.clone(),
        })
    }
}

/// An open blob of a plugin.
pub struct Blob {
    lib: Arc<Library>,
    handle: BlobHandle,
    plugin: Arc<str>,
    /// Keeps the source open until this blob is closed (in `drop`, before the
    /// fields go).
    _source: Arc<Opened>,
}

// SAFETY: a blob is read by whoever owns it, one thread at a time.
unsafe impl Send for Blob {}

impl std::io::Read for Blob {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0usize;
        // SAFETY: `buf` is valid for `buf.len()` bytes; `n` is a valid out-pointer.
        let status =
            unsafe { (self.lib.table.read_blob)(self.handle, buf.as_mut_ptr(), buf.len(), &mut n) };
        self.lib
            .check(status, "read_blob")
            .map_err(|e| std::io::Error::other(format!("plugin {}: {e}", self.plugin)))?;
        if n > buf.len() {
            return Err(std::io::Error::other(format!(
                "plugin {}: claims to have read {n} bytes into a {}-byte buffer",
                self.plugin,
                buf.len()
            )));
        }
        Ok(n)
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        // SAFETY: the handle came from `open_blob` and is closed once.
        unsafe { (self.lib.table.close_blob)(self.handle) };
    }
}

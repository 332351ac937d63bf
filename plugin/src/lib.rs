//! `locald-plugin`: the stable C ABI that third-party image sources build against.
//!
//! A plugin is a shared library (`crate-type = ["cdylib"]`) that `locald` loads at
//! run time from `$XDG_DATA_HOME/locald/plugins` and the directories in
//! `LOCALD_PLUGIN_PATH`. Rust trait objects cannot cross a `dlopen` boundary
//! safely, so the boundary is `#[repr(C)]` types and `extern "C"` functions only;
//! this crate depends on nothing else of `locald`, so it stays stable while the
//! host changes.
//!
//! # The ABI (version 1)
//!
//! The library exports two symbols:
//!
//! - [`ABI_VERSION_SYMBOL`] `extern "C" fn() -> u32`: the ABI version it was built
//!   for. The host calls it first and refuses the library (with a warning, and
//!   keeps working) when it is not [`ABI_VERSION`].
//! - [`ENTRY_SYMBOL`] `extern "C" fn() -> *const PluginV1`: the plugin's table,
//!   valid for as long as the library is loaded. A null pointer means the plugin
//!   failed to initialise; [`PluginV1::last_error`] may say why.
//!
//! [`PluginV1`] holds the plugin's name, version and URL schemes (`oci-archive`
//! serves `--source oci-archive:FILE`), and its operations:
//!
//! | operation | does |
//! |---|---|
//! | `open(location) -> source` | opens a location (what follows `SCHEME:`) |
//! | `resolve(source, image, platform) -> Resolved` | one image manifest for the platform, its config, their digests |
//! | `open_blob(source, digest, size) -> blob` | starts reading a blob (layers) |
//! | `read_blob(blob, buf) -> n` | reads the next bytes (`n == 0`: the end) |
//! | `close_blob`, `close`, `free_resolved` | release what the plugin handed out |
//! | `last_error(buf)` | the message of this thread's last failed call |
//!
//! Every operation returns a [`Status`]; on anything but [`Status::Ok`] the host
//! calls `last_error` on the same thread for the message. Strings cross as
//! [`Str`] (pointer + length, UTF-8, borrowed for the duration of the call);
//! byte buffers the plugin hands out cross as [`Buf`] and go back to the plugin
//! to be freed. The host calls a source's operations from one thread at a time
//! per handle (it may use several handles from several threads).
//!
//! The host trusts nothing it receives: manifests, configs and blobs go through
//! the same digest and size verification and the same confined extraction as
//! every built-in source. A plugin that lies about a digest or a size fails the
//! pull with a clear message; it cannot write outside the target directory.
//!
//! # Versioning rules
//!
//! - [`ABI_VERSION`] changes whenever a type or function signature of the table
//!   changes in a way an old host or plugin would misread; hosts refuse other
//!   versions outright (no guessing).
//! - Within one version the table may only grow at its end; [`PluginV1::size`]
//!   tells the host how much of it the plugin filled, so a newer host can tell an
//!   older plugin of the same version by its size. [`Resolved`], [`Str`] and
//!   [`Buf`] are written across the boundary in memory the other side owns, so
//!   they are frozen for a version.
//! - [`Status`] is an `i32` on the wire; a code a host does not know is reported
//!   as such, never misread.
//! - Known limits of version 1, for version 2: a null entry point cannot say why
//!   (the host has no table to call `last_error` through); the root digest of a
//!   multi-platform image is taken on the plugin's word (the host never sees the
//!   index bytes, so it is used only for messages, never as a cache key); the
//!   manifest's media type is detected from its bytes.
//!
//! # Writing a plugin
//!
//! Implement [`Plugin`] and [`Source`] in safe Rust and call [`export_plugin!`]
//! once; the macro writes the `extern "C"` functions, catches every panic (no
//! unwinding crosses the boundary) and turns errors into status codes and
//! messages. `plugins/oci-archive` in the locald repository is a complete example.
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! locald-plugin = "0.1"
//! ```
//!
//! ```no_run
//! use std::fs::File;
//! use std::path::PathBuf;
//!
//! use locald_plugin::{export_plugin, Error, Plugin, ResolvedImage, Source};
//!
//! /// Serves `flat:DIR`, a directory holding `manifest.json`, `config.json` and
//! /// the layers as `sha256:HEX` files.
//! pub struct Flat;
//!
//! /// One open `flat:DIR`.
//! pub struct FlatDir(PathBuf);
//!
//! impl Plugin for Flat {
//!     type Source = FlatDir;
//!     const NAME: &'static str = "flat";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const SCHEMES: &'static [&'static str] = &["flat"];
//!
//!     fn open(location: &str) -> Result<FlatDir, Error> {
//!         let dir = PathBuf::from(location);
//!         if !dir.is_dir() {
//!             return Err(Error::new(format!("{location} is not a directory")));
//!         }
//!         Ok(FlatDir(dir))
//!     }
//! }
//!
//! impl Source for FlatDir {
//!     type Blob = File;
//!
//!     fn resolve(&self, image: Option<&str>, _platform: &str) -> Result<ResolvedImage, Error> {
//!         if image.is_some() {
//!             return Err(Error::not_found("a flat directory holds one unnamed image"));
//!         }
//!         let manifest = std::fs::read(self.0.join("manifest.json"))?;
//!         // A real plugin computes this (e.g. with the sha2 crate); the host
//!         // verifies it either way.
//!         let digest = std::fs::read_to_string(self.0.join("manifest.digest"))?;
//!         Ok(ResolvedImage {
//!             name: None,
//!             manifest,
//!             manifest_digest: digest.trim().to_owned(),
//!             root_digest: digest.trim().to_owned(),
//!             config: std::fs::read(self.0.join("config.json"))?,
//!         })
//!     }
//!
//!     fn open_blob(&self, digest: &str, _size: u64) -> Result<File, Error> {
//!         if digest.contains('/') {
//!             return Err(Error::new(format!("malformed digest {digest:?}")));
//!         }
//!         File::open(self.0.join(digest)).map_err(|e| match e.kind() {
//!             std::io::ErrorKind::NotFound => Error::not_found(format!("no blob {digest}")),
//!             _ => Error::from(e),
//!         })
//!     }
//! }
//!
//! export_plugin!(Flat);
//! # fn main() {}
//! ```
//!
//! What the generated functions guarantee, so a plugin need not:
//!
//! - no panic unwinds into the host: every export runs under
//!   [`std::panic::catch_unwind`] and a panic becomes [`Status::Panic`] with the
//!   panic message as the thread's last error. A source or blob whose operation
//!   panicked is *poisoned*: later calls on it fail (closing it still works).
//! - null pointers and strings that are not UTF-8 are refused with
//!   [`Status::InvalidArgument`] before plugin code runs.
//! - an [`Error`] becomes its [`Status`] ([`Status::Error`] or
//!   [`Status::NotFound`]) and its message the thread's last error.
//! - handles are `Box`es of the plugin's own types and buffers are `Vec<u8>`s,
//!   freed by the plugin that allocated them.
//!
//! The macro's expansion exports two symbols with `#[unsafe(no_mangle)]`, and
//! nothing else in it is `unsafe`. Lints are not reported inside another crate's
//! macros, so a plugin crate may `#![deny(unsafe_code)]` or even `forbid` it (the
//! expansion deliberately carries no `#[allow(unsafe_code)]`, which `forbid`
//! would reject). All other `unsafe` is in this crate's [`ffi`] module.
//!
//! # Host obligations (beyond the table's signatures)
//!
//! - `read_blob`'s `buf` must be initialised memory (a Rust plugin sees it as
//!   `&mut [u8]`); reuse one zeroed buffer. `cap == 0` reads nothing and is not
//!   the end of the blob.
//! - [`Buf`]s and [`Str`]s with `len == 0` may have a null `ptr`: never build a
//!   slice from a null pointer.
//! - On anything but [`Status::Ok`] the out-parameters are left untouched.
//! - Handles are closed exactly once, blobs before their source.

#![warn(missing_docs)]

use std::ffi::c_void;

/// The ABI version this crate describes. A host refuses plugins built for another.
pub const ABI_VERSION: u32 = 1;
/// The symbol of `extern "C" fn() -> u32` returning the plugin's ABI version.
pub const ABI_VERSION_SYMBOL: &str = "locald_plugin_abi_version";
/// The symbol of `extern "C" fn() -> *const PluginV1`.
pub const ENTRY_SYMBOL: &str = "locald_plugin_entry_v1";

/// What an operation says about how it went: an `i32` on the wire. A struct, not
/// an enum, so that a code this side does not know (a newer plugin, a C plugin's
/// bug) is a value to report, not undefined behaviour.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub i32);

#[allow(non_upper_case_globals)]
impl Status {
    /// Done; the out-parameters are set.
    pub const Ok: Status = Status(0);
    /// Failed; `last_error` says why.
    pub const Error: Status = Status(1);
    /// What was asked for does not exist (no such image or blob).
    pub const NotFound: Status = Status(2);
    /// The plugin panicked; `last_error` has the panic message.
    pub const Panic: Status = Status(3);
    /// The host passed something invalid (a null pointer, bad UTF-8).
    pub const InvalidArgument: Status = Status(4);

    /// The code's name (`unknown` for a code this version does not define).
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::NotFound => "not found",
            Status::Panic => "panic",
            Status::InvalidArgument => "invalid argument",
            _ => "unknown",
        }
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Status({} {})", self.0, self.name())
    }
}

/// A borrowed UTF-8 string: valid for the duration of the call it is passed to
/// (or, in [`PluginV1`], for as long as the library is loaded).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Str {
    /// The first byte (may be null when `len` is 0).
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

/// A byte buffer the plugin allocated; the host returns it through the
/// operation that frees its owner (`free_resolved`).
#[repr(C)]
#[derive(Debug)]
pub struct Buf {
    /// The first byte (null when empty).
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
    /// Allocation capacity (the plugin's business).
    pub cap: usize,
}

/// An image resolved by a plugin: the manifest for one platform and its config.
#[repr(C)]
#[derive(Debug)]
pub struct Resolved {
    /// The name the image was found under (may be empty).
    pub name: Buf,
    /// The image manifest's bytes.
    pub manifest: Buf,
    /// Its digest, `sha256:<hex>` (verified by the host).
    pub manifest_digest: Buf,
    /// The digest of the document the reference names (an index for a
    /// multi-platform image; the manifest's otherwise).
    pub root_digest: Buf,
    /// The config's bytes.
    pub config: Buf,
}

/// Opaque handle of an open source.
pub type SourceHandle = *mut c_void;
/// Opaque handle of an open blob.
pub type BlobHandle = *mut c_void;

/// The plugin's table (ABI version 1).
#[repr(C)]
pub struct PluginV1 {
    /// `size_of::<PluginV1>()` as the plugin was built.
    pub size: usize,
    /// The plugin's name, e.g. `oci-archive`.
    pub name: Str,
    /// Its version, e.g. `0.1.0`.
    pub version: Str,
    /// The schemes it serves.
    pub schemes: *const Str,
    /// How many.
    pub scheme_count: usize,
    /// Opens `location`; sets `*out` to the source.
    pub open: unsafe extern "C" fn(location: Str, out: *mut SourceHandle) -> Status,
    /// Closes a source (and nothing else: its blobs are closed first).
    pub close: unsafe extern "C" fn(source: SourceHandle),
    /// Resolves `image` (empty: the source's only image) for `platform`
    /// (`os/arch[/variant]`) into `*out`, to be freed with `free_resolved`.
    pub resolve: unsafe extern "C" fn(
        source: SourceHandle,
        image: Str,
        platform: Str,
        out: *mut Resolved,
    ) -> Status,
    /// Frees what `resolve` wrote.
    pub free_resolved: unsafe extern "C" fn(resolved: *mut Resolved),
    /// Opens the blob `digest` of `size` bytes; sets `*out`.
    pub open_blob: unsafe extern "C" fn(
        source: SourceHandle,
        digest: Str,
        size: u64,
        out: *mut BlobHandle,
    ) -> Status,
    /// Reads up to `cap` bytes into `buf`; sets `*read` (0 at the end).
    pub read_blob: unsafe extern "C" fn(
        blob: BlobHandle,
        buf: *mut u8,
        cap: usize,
        read: *mut usize,
    ) -> Status,
    /// Closes a blob.
    pub close_blob: unsafe extern "C" fn(blob: BlobHandle),
    /// Copies this thread's last error message (UTF-8) into `buf` (at most `cap`
    /// bytes) and returns its full length.
    pub last_error: unsafe extern "C" fn(buf: *mut u8, cap: usize) -> usize,
}

pub mod ffi;

/// A plugin: its identity and how it opens a location. Implemented on a marker
/// type (`pub struct MyPlugin;`) and exported with [`export_plugin!`].
pub trait Plugin: 'static {
    /// What [`Plugin::open`] returns.
    type Source: Source;
    /// The plugin's name, for messages and `locald plugin ls` (e.g. `oci-archive`).
    const NAME: &'static str;
    /// The plugin's version, usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// The schemes it serves: `oci-archive` makes `--source oci-archive:FILE`
    /// reach [`Plugin::open`] with `FILE`. Lower-case `[a-z][a-z0-9+.-]*`.
    const SCHEMES: &'static [&'static str];

    /// Opens `location` (what follows `SCHEME:` in the source spec). Do the
    /// expensive, fallible work here (open files, index archives), so that a bad
    /// location fails early.
    fn open(location: &str) -> Result<Self::Source, Error>;
}

/// An open location. The host calls a source from one thread at a time (hence
/// `Send`, not `Sync`); blobs it opened are read independently of it.
pub trait Source: Send + 'static {
    /// A blob's bytes, read to the end by the host (which verifies size and
    /// digest itself).
    type Blob: std::io::Read + Send + 'static;

    /// Resolves `image` (`None`: the source's only image, or the one its location
    /// names) for `platform` (`os/arch[/variant]`, e.g. `linux/arm64`) to one
    /// image manifest and its config. Follow image indexes to the platform's
    /// manifest here; the host does not. [`Error::not_found`] when there is no
    /// such image, with the names there are in the message.
    fn resolve(&self, image: Option<&str>, platform: &str) -> Result<ResolvedImage, Error>;

    /// Opens the blob `digest` (`ALG:HEX`) of `size` bytes: a layer, usually.
    /// [`Error::not_found`] when the source does not have it.
    fn open_blob(&self, digest: &str, size: u64) -> Result<Self::Blob, Error>;
}

/// What [`Source::resolve`] found: the bytes the host verifies and parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The name the image was found under (a `ref.name` annotation, a tag), if any.
    pub name: Option<String>,
    /// The image manifest's bytes, exactly as stored (the host hashes them).
    pub manifest: Vec<u8>,
    /// The manifest's digest, `ALG:HEX`.
    pub manifest_digest: String,
    /// The digest of the document the reference names: an image index for a
    /// multi-platform image, else the manifest's own digest.
    pub root_digest: String,
    /// The config's bytes, exactly as stored.
    pub config: Vec<u8>,
}

/// A plugin operation's failure: a [`Status`] and a message for the user.
///
/// The message is shown as it is (the host adds which plugin and operation), so
/// make it a sentence that names the thing: the file, the image, the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: Status,
    message: String,
}

impl Error {
    /// A failure ([`Status::Error`]).
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            kind: Status::Error,
            message: message.into(),
        }
    }

    /// What was asked for does not exist ([`Status::NotFound`]): no such image,
    /// no such blob.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error {
            kind: Status::NotFound,
            message: message.into(),
        }
    }

    /// The host passed something invalid (used by the generated functions).
    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Error {
            kind: Status::InvalidArgument,
            message: message.into(),
        }
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }

    /// The status the host will see.
    pub fn kind(&self) -> Status {
        self.kind
    }

    /// The message the host will see.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An I/O error is a [`Status::Error`] with the error's message, whatever its
/// kind: a missing *file* is a broken source, not a missing image (return
/// [`Error::not_found`] yourself where it is one).
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(e.to_string())
    }
}

/// Exports a [`Plugin`] as a locald plugin: the two symbols the host looks up
/// ([`ABI_VERSION_SYMBOL`], [`ENTRY_SYMBOL`]), with a [`PluginV1`] table built once
/// from the plugin's consts and the generic functions in [`ffi`].
///
/// Call it once, at the root of a `cdylib` crate: `export_plugin!(MyPlugin);`.
/// The plugin must name itself and serve at least one scheme (checked at compile
/// time).
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            assert!(
                !<$plugin as $crate::Plugin>::NAME.is_empty(),
                "a locald plugin needs a NAME"
            );
            assert!(
                !<$plugin as $crate::Plugin>::SCHEMES.is_empty(),
                "a locald plugin must serve at least one scheme"
            );
        };

        /// The locald plugin ABI version this library was built for.
        #[unsafe(no_mangle)]
        pub extern "C" fn locald_plugin_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        /// The locald plugin table (ABI version 1); null if it could not be built.
        #[unsafe(no_mangle)]
        pub extern "C" fn locald_plugin_entry_v1() -> *const $crate::PluginV1 {
            static TABLE: $crate::ffi::Table = $crate::ffi::Table::new();
            TABLE.get::<$plugin>()
        }
    };
}

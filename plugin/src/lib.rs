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
//!   older plugin of the same version by its size.
//!
//! # Writing a plugin
//!
//! Implement [`Plugin`] and [`Source`] in safe Rust and call [`export_plugin!`]
//! once; the macro writes the `extern "C"` functions, catches every panic (no
//! unwinding crosses the boundary) and turns errors into status codes and
//! messages. `plugins/oci-archive` in the locald repository is a complete example.

use std::ffi::c_void;

/// The ABI version this crate describes. A host refuses plugins built for another.
pub const ABI_VERSION: u32 = 1;
/// The symbol of `extern "C" fn() -> u32` returning the plugin's ABI version.
pub const ABI_VERSION_SYMBOL: &str = "locald_plugin_abi_version";
/// The symbol of `extern "C" fn() -> *const PluginV1`.
pub const ENTRY_SYMBOL: &str = "locald_plugin_entry_v1";

/// What an operation says about how it went.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done; the out-parameters are set.
    Ok = 0,
    /// Failed; `last_error` says why.
    Error = 1,
    /// What was asked for does not exist (no such image or blob).
    NotFound = 2,
    /// The plugin panicked; `last_error` has the panic message.
    Panic = 3,
    /// The host passed something invalid (a null pointer, bad UTF-8).
    InvalidArgument = 4,
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
    pub read_blob:
        unsafe extern "C" fn(blob: BlobHandle, buf: *mut u8, cap: usize, read: *mut usize) -> Status,
    /// Closes a blob.
    pub close_blob: unsafe extern "C" fn(blob: BlobHandle),
    /// Copies this thread's last error message (UTF-8) into `buf` (at most `cap`
    /// bytes) and returns its full length.
    pub last_error: unsafe extern "C" fn(buf: *mut u8, cap: usize) -> usize,
}

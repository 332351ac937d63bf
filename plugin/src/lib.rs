//! `locald-plugin`: the stable C ABI that third-party image sources build against.
//!
//! **Status: not yet implemented** (tracked by the plugins issue). A plugin is a
//! shared library exporting `locald_plugin_abi_version() -> u32` and one entry point
//! returning a `#[repr(C)]` table of `extern "C"` operations (open a location,
//! resolve a reference, open/read/close a blob, last error). This crate depends on
//! nothing else of `locald`, so the boundary stays stable while the host changes.

/// The ABI version this crate describes. A host refuses plugins built for another.
pub const ABI_VERSION: u32 = 0;

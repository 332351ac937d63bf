//! `locald-core`: the model and the machinery every other `locald` crate shares.
//!
//! - the model: [`reference`] (Docker-normalised image references), [`digest`]
//!   (validated digests that can safely become paths), [`platform`], and
//!   [`manifest`] (index/manifest/config parsing and platform selection, pure);
//! - [`source`]: the object-safe [`source::ImageSource`] trait, source specs and the
//!   scheme registry that built-in sources and plugins add to, and
//!   [`source::resolve`], which verifies every document a source returns;
//! - [`cache`]: the content-addressed builder cache (blobs, extracted trees,
//!   reference records) shared by concurrent processes under file locks;
//! - [`plugin_host`]: loads third-party sources (shared libraries speaking the
//!   `locald-plugin` C ABI) and registers their schemes;
//! - [`extract`]: the streaming, confined layer applier with OCI whiteout semantics
//!   and atomic publish. The `tar` crate only reads entries here: its own `unpack`
//!   applies no whiteouts and resolves paths against the host;
//! - [`builder`]: a CNB builder image's lifecycle, APIs, buildpacks, order and run
//!   images, read from its extracted `/cnb` files and its config labels.
//!
//! Dependencies point inward: sources, runners and the CLI depend on this crate,
//! and it depends on none of them. `oci_spec` is re-exported so all agree on one
//! version.

pub use oci_spec;

pub mod cancel;
pub mod destination;
pub mod digest;
pub mod error;
pub mod fsutil;
pub mod lifecycle;
pub mod lock;
pub mod manifest;
pub mod platform;
pub mod progress;
pub mod reference;
pub mod source;
pub mod stream;

pub use digest::Digest;
pub use error::{Error, Result};
pub use platform::Platform;
pub use reference::ImageReference;

/// What the unit tests share.
#[doc(hidden)]
pub mod test_support {
    /// Whether the test runs as root; else one `SKIP` line, or under `CI=true`
    /// (which runs as root) a failure: never a quiet pass.
    pub fn root_or_skip() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "cannot run under CI=true: needs root");
        eprintln!("SKIP: needs root");
        false
    }
}

//! `locald-source-registry`: images from OCI distribution registries over HTTP(S).
//!
//! **Status: not yet implemented** (tracked by the registry-source issue). This crate
//! will implement [`locald_core::source::ImageSource`] on top of `oci-client`, with
//! `docker_credential` for authentication, streaming blobs, concurrent layer
//! downloads, retries and resumable blob reads. Until then, [`SCHEME`] is the name
//! the CLI reserves for it, and asking for it gives a clear error.

/// The source-spec scheme this crate will serve (also the default scheme).
pub const SCHEME: &str = "registry";

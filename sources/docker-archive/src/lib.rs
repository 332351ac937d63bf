//! `locald-source-docker-archive`: images from `docker save` / `podman save` /
//! `skopeo copy docker-archive:` tarballs, read in place.
//!
//! **Status: not yet implemented** (tracked by the docker-archive issue). It will
//! index member offsets in one pass over the tar (following symlinked members) and
//! stream each layer from its offset, never copying the archive, implementing
//! [`locald_core::source::ImageSource`] for the `docker-archive:PATH` scheme.

/// The source-spec scheme this crate will serve.
pub const SCHEME: &str = "docker-archive";

//! `locald-source-oci-archive`: a third-party image source for `oci-archive:FILE`
//! (a tar of an OCI image layout, as `skopeo copy ... oci-archive:` writes), written
//! only against `locald-plugin` and built as a `cdylib`.
//!
//! **Status: not yet implemented** (tracked by the plugins issue). It exists now so
//! the workspace has its final shape; it will be the worked example for plugin
//! authors.

/// The scheme this plugin will register.
pub const SCHEME: &str = "oci-archive";

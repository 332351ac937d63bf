//! Integration tests of extraction against real peers (umoci, skopeo) and a
//! hostile-input corpus. One test binary for the crate, as uv and ripgrep do.
#![allow(clippy::unwrap_used)]

mod common;
mod conformance;
mod docker_archive;
mod hostile;
mod layout_out;
mod registry;

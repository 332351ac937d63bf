//! `locald-tests`: test support for locald's integration tests: an exact OCI layout
//! writer for hand-crafted (including hostile) layers, tree snapshots and
//! comparison, and thin wrappers around real peers (`umoci`, `skopeo`).
#![allow(clippy::unwrap_used)]

pub mod archive;
pub mod builder;
pub mod fixture;
pub mod peers;
pub mod registry;
pub mod require;
pub mod standin;
pub mod tree;

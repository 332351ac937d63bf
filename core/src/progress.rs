//! Progress reporting. Libraries call a [`Reporter`]; only the CLI draws bars.

use crate::digest::Digest;

/// Receives progress of long operations. Every method has an empty default.
pub trait Reporter: Send + Sync {
    /// Layer `index` of `total` (1-based) starts; `size` is its blob size.
    fn layer_started(&self, index: usize, total: usize, digest: &Digest, size: u64) {
        let _ = (index, total, digest, size);
    }
    /// `bytes` more bytes of layer `index` were read.
    fn layer_progress(&self, index: usize, bytes: u64) {
        let _ = (index, bytes);
    }
    /// Layer `index` is applied and verified.
    fn layer_finished(&self, index: usize) {
        let _ = index;
    }
    /// Something the user should know while waiting (e.g. for another process).
    fn note(&self, message: &str) {
        let _ = message;
    }
}

/// A reporter that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {}

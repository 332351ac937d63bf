//! Extraction: every source's layers go through here.
//!
//! blob bytes -> size + digest check -> decompression (by magic bytes) -> diff_id
//! check -> tar entries -> [`apply::Applier`] -> a temporary sibling of the target,
//! renamed into place only when every layer verified. A failure or a kill leaves no
//! target that looks complete.

pub mod apply;
pub mod path;
pub mod stream;

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio_util::io::SyncIoBridge;

pub use apply::{Applier, Stats};
pub use path::PathFilter;

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::progress::Reporter;
use crate::source::{ImageSource, LayerInfo, ResolvedImage};

/// Read buffer between the blob stream and the decompressor.
const READ_BUF: usize = 128 * 1024;

/// Options for [`extract_image`].
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Image paths to extract (empty = the whole root filesystem).
    pub filter: PathFilter,
    /// Checked between entries and while copying; set it to stop early.
    pub cancel: Cancel,
}

/// Extracts `image` from `source` into `target`, which must not exist or be an empty
/// directory. The tree is built in a temporary sibling directory and renamed into
/// place only after every layer applied and verified.
pub async fn extract_image(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    target: &Path,
    options: &ExtractOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Stats> {
    check_target(target)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(Error::io("create directory", &parent))?;
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "target".to_owned());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}.locald-tmp-"))
        .tempdir_in(&parent)
        .map_err(Error::io("create temporary directory in", &parent))?;
    let stats = apply_layers(source, image, tmp.path(), options, reporter).await?;
    publish(tmp, target)?;
    Ok(stats)
}

/// Applies all layers of `image` into the existing empty directory `root`.
pub async fn apply_layers(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    root: &Path,
    options: &ExtractOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Stats> {
    let mut applier =
        Applier::new(root, options.filter.clone()).with_cancel(options.cancel.clone());
    let total = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        let index = i + 1;
        options.cancel.check()?;
        reporter.layer_started(index, total, &layer.digest, layer.size);
        let wrap = |e: Error| match e {
            Error::Cancelled => e,
            e => Error::Layer {
                index,
                digest: layer.digest.clone(),
                source: Box::new(e),
            },
        };
        let blob = source.open_blob(&layer.descriptor).await.map_err(wrap)?;
        // Never read more than one byte past the declared size: a lying or endless
        // stream is caught without reading it all.
        let blob = blob.take(layer.size.saturating_add(1));
        let bridge = SyncIoBridge::new(blob);
        let layer_info = layer.clone();
        let rep = reporter.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = apply_one(&mut applier, bridge, &layer_info, index, rep);
            (applier, r)
        })
        .await
        .map_err(|e| Error::Join(e.to_string()))?;
        applier = result.0;
        result.1.map_err(wrap)?;
        reporter.layer_finished(index);
    }
    tokio::task::spawn_blocking(move || applier.finish())
        .await
        .map_err(|e| Error::Join(e.to_string()))?
}

fn apply_one<R: Read>(
    applier: &mut Applier,
    blob: R,
    layer: &LayerInfo,
    index: usize,
    reporter: Arc<dyn Reporter>,
) -> Result<()> {
    let raw = stream::HashingReader::new(blob, &layer.digest)
        .with_progress(Box::new(move |n| reporter.layer_progress(index, n)));
    let mut raw = BufReader::with_capacity(READ_BUF, raw);
    let (compression, decompressed) = stream::decompress(&mut raw).map_err(Error::Tar)?;
    tracing::debug!(
        layer = index,
        ?compression,
        "applying layer {}",
        layer.digest
    );
    let like = layer
        .diff_id
        .clone()
        .unwrap_or_else(|| layer.digest.clone());
    let uncompressed = stream::HashingReader::new(decompressed, &like);
    let uncompressed = applier.apply_layer(uncompressed)?;
    // Read to the very end: the tar may end before the compressed stream does.
    let (diff_id, _) = uncompressed.finish().map_err(Error::Tar)?;
    let raw = raw.into_inner();
    let (digest, size) = raw.finish().map_err(Error::Tar)?;
    if size != layer.size {
        return Err(Error::SizeMismatch {
            what: "layer blob".to_owned(),
            expected: layer.size,
            actual: size,
        });
    }
    if digest != layer.digest {
        return Err(Error::DigestMismatch {
            what: "layer blob".to_owned(),
            expected: layer.digest.clone(),
            actual: digest,
        });
    }
    if let Some(expected) = &layer.diff_id {
        if *expected != diff_id {
            return Err(Error::DigestMismatch {
                what: "uncompressed layer (diff_id in the image config)".to_owned(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(())
}

fn check_target(target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("inspect", target)(e)),
        Ok(m) if m.is_dir() => {
            let mut it = std::fs::read_dir(target).map_err(Error::io("read directory", target))?;
            if it.next().is_some() {
                Err(Error::TargetNotEmpty(target.to_path_buf()))
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(Error::TargetNotEmpty(target.to_path_buf())),
    }
}

/// Renames the finished temporary tree onto `target` (an absent path or an empty
/// directory, which rename(2) replaces atomically).
fn publish(tmp: tempfile::TempDir, target: &Path) -> Result<()> {
    let path = tmp.keep();
    match std::fs::rename(&path, target) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&path);
            Err(Error::io("move the extracted tree into", target)(e))
        }
    }
}

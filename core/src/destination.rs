//! Where images go: the object-safe [`ImageDestination`] trait (the mirror of
//! [`ImageSource`]) and [`copy_image`], which copies one resolved image from any
//! source into any destination.
//!
//! A destination is opened for the names the image gets there (an OCI layout's
//! `org.opencontainers.image.ref.name`, a docker archive's `RepoTags`, a
//! registry's tag). The copy puts every blob the destination lacks, each verified
//! against its descriptor while it is written, then the manifest: putting the
//! manifest is what makes the image visible under its names, so a copy that
//! fails before it leaves no name pointing at a partial image.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_spec::image::Descriptor;
use tokio::io::AsyncReadExt;

use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::progress::{Reporter, Silent};
use crate::source::{BoxFuture, ImageSource, LayerInfo, ResolvedImage, ResolvedIndex};

/// What a copy wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The image manifest's digest (kept from the source).
    pub manifest_digest: Digest,
    /// The image config's digest (the image ID `docker images` shows).
    pub config_digest: Digest,
    /// Bytes: of the image's blobs for a layout (whether copied or already
    /// there), of the file for an archive.
    pub size: u64,
}

/// One blob to put: where it comes from and what it must be.
pub struct BlobPut<'a> {
    /// The source to read it from.
    pub source: &'a dyn ImageSource,
    /// Its descriptor in the image.
    pub descriptor: &'a Descriptor,
    /// Its digest, validated.
    pub digest: &'a Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes when the copy holds them already, verified (the config).
    pub bytes: Option<&'a [u8]>,
    /// Checked while the blob is read; set it to stop.
    pub cancel: &'a Cancel,
    /// Told the number of bytes of every read.
    pub progress: &'a (dyn Fn(u64) + Send + Sync),
    /// For messages: `layer 2 of NAME`.
    pub what: String,
}

impl Written {
    /// What putting `image` wrote: its digests, and the bytes of its manifest,
    /// config and layers (each once).
    pub fn of(image: &ResolvedImage) -> Written {
        let mut size = image.manifest_bytes.len() as u64 + image.config_bytes.len() as u64;
        let mut seen = HashSet::new();
        for l in &image.layers {
            if seen.insert(&l.digest) {
                size += l.size;
            }
        }
        Written {
            manifest_digest: image.manifest_digest.clone(),
            config_digest: image.config_digest.clone(),
            size,
        }
    }
}

/// An image destination: an OCI layout, a docker archive, a registry.
pub trait ImageDestination: Send + Sync {
    /// A short description for messages, e.g. `oci-layout:./app.oci`.
    fn describe(&self) -> String;

    /// Whether the destination already holds blob `digest` of `size` bytes,
    /// intact (a copy skips it).
    fn has_blob<'a>(&'a self, digest: &'a Digest, size: u64) -> BoxFuture<'a, Result<bool>>;

    /// Stores a blob. Its bytes are checked against its digest and size as they
    /// are written; nothing of a blob that does not match is kept. Several puts
    /// of different blobs may run at once.
    fn put_blob<'a>(&'a self, blob: BlobPut<'a>) -> BoxFuture<'a, Result<()>>;

    /// Stores `image`'s manifest, after all of its blobs, under the names the
    /// destination was opened for, and makes the image visible there.
    fn put_manifest<'a>(&'a self, image: &'a ResolvedImage) -> BoxFuture<'a, Result<Written>>;

    /// Stores `image`'s manifest, after its blobs, without naming it: one
    /// platform of an index put next.
    fn put_child_manifest<'a>(&'a self, image: &'a ResolvedImage) -> BoxFuture<'a, Result<()>> {
        let _ = image;
        Box::pin(async { Err(self.no_index()) })
    }

    /// Stores `index` (after every manifest it lists) under the destination's
    /// names and makes it visible there.
    fn put_index<'a>(&'a self, index: &'a ResolvedIndex) -> BoxFuture<'a, Result<Written>> {
        let _ = index;
        Box::pin(async { Err(self.no_index()) })
    }

    /// The error of a destination that holds one platform only.
    fn no_index(&self) -> Error {
        Error::source(format!(
            "{} holds a single-platform image; pick one platform with --platform",
            self.describe()
        ))
    }
}

/// How [`copy_image`] copies.
#[derive(Clone)]
pub struct CopyOptions {
    /// Checked between reads; set it to stop.
    pub cancel: Cancel,
    /// Told about each layer put.
    pub reporter: Arc<dyn Reporter>,
    /// Blobs put at once.
    pub parallel: usize,
    /// Only these layers (`None`: all of them). The destination then holds a
    /// sparse image: manifest and config, and of the layers only these (what
    /// the CNB lifecycle reads fastest: it takes a missing layer's diff ID from
    /// the config instead of hashing the blob).
    pub only_layers: Option<HashSet<Digest>>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            cancel: Cancel::default(),
            reporter: Arc::new(Silent),
            parallel: 4,
            only_layers: None,
        }
    }
}

/// Copies `image` (resolved from `source`) into `destination`: the config and
/// the layers it lacks, several at once, then the manifest. The manifest
/// digest is kept.
pub async fn copy_image(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    destination: &dyn ImageDestination,
    options: &CopyOptions,
) -> Result<Written> {
    copy_blobs(source, image, destination, options).await?;
    options.cancel.check()?;
    destination.put_manifest(image).await
}

/// Copies a multi-platform image whole: each image's blobs and manifest, then
/// the index under the destination's names. The index digest is kept.
pub async fn copy_index(
    source: &dyn ImageSource,
    index: &ResolvedIndex,
    destination: &dyn ImageDestination,
    options: &CopyOptions,
) -> Result<Written> {
    let mut size = index.bytes.len() as u64;
    for image in &index.images {
        copy_blobs(source, image, destination, options).await?;
        options.cancel.check()?;
        destination.put_child_manifest(image).await?;
        size += image.manifest_bytes.len() as u64 + image.config_bytes.len() as u64;
        size += image.layers.iter().map(|l| l.size).sum::<u64>();
    }
    let mut written = destination.put_index(index).await?;
    written.size = written.size.max(size);
    Ok(written)
}

/// Puts the config and the layers of `image` that `destination` lacks.
async fn copy_blobs(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    destination: &dyn ImageDestination,
    options: &CopyOptions,
) -> Result<()> {
    options.cancel.check()?;
    let config = image.manifest.config();
    if !destination
        .has_blob(&image.config_digest, image.config_bytes.len() as u64)
        .await?
    {
        destination
            .put_blob(BlobPut {
                source,
                descriptor: config,
                digest: &image.config_digest,
                size: image.config_bytes.len() as u64,
                bytes: Some(&image.config_bytes),
                cancel: &options.cancel,
                progress: &|_| {},
                what: format!("config of {}", image.name),
            })
            .await?;
    }
    let total = image.layers.len();
    let mut seen = HashSet::new();
    let unique: Vec<(usize, &LayerInfo)> = image
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| seen.insert(l.digest.clone()))
        .filter(|(_, l)| {
            options
                .only_layers
                .as_ref()
                .is_none_or(|only| only.contains(&l.digest))
        })
        .collect();
    futures::stream::iter(unique)
        .map(|(i, layer)| async move {
            let index = i + 1;
            let put = async {
                if destination.has_blob(&layer.digest, layer.size).await? {
                    return Ok(());
                }
                options
                    .reporter
                    .layer_started(index, total, &layer.digest, layer.size);
                let reporter = options.reporter.clone();
                let progress = move |n: u64| reporter.layer_progress(index, n);
                destination
                    .put_blob(BlobPut {
                        source,
                        descriptor: &layer.descriptor,
                        digest: &layer.digest,
                        size: layer.size,
                        bytes: None,
                        cancel: &options.cancel,
                        progress: &progress,
                        what: format!("layer {index} of {}", image.name),
                    })
                    .await?;
                options.reporter.layer_finished(index);
                Ok(())
            };
            put.await.map_err(|e| Error::LayerCopy {
                index,
                digest: layer.digest.clone(),
                source: Box::new(e),
            })
        })
        .buffer_unordered(options.parallel.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Read and write buffer size of blob copies.
const BUF: usize = 128 * 1024;

/// Writes `blob` into the new file `path`, checking size and digest on the
/// way (the source's blocking reader when it has one, else its stream). On an
/// error the file may hold a part: the caller removes it.
pub async fn write_blob_file(blob: &BlobPut<'_>, path: &Path) -> Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Error::io("create", path))?;
    if let Some(bytes) = blob.bytes {
        let mut hasher = blob.digest.hasher();
        hasher.update(bytes);
        check_blob(
            blob.digest,
            blob.size,
            hasher.finish(),
            bytes.len() as u64,
            &blob.what,
        )?;
        out.write_all(bytes).map_err(Error::io("write", path))?;
        return Ok(());
    }
    let mut hasher = blob.digest.hasher();
    let mut count = 0u64;
    let mut buf = vec![0u8; BUF];
    let mut write = |chunk: &[u8]| -> Result<()> {
        count += chunk.len() as u64;
        if count > blob.size {
            return Err(Error::SizeMismatch {
                what: blob.what.clone(),
                expected: blob.size,
                actual: count,
            });
        }
        hasher.update(chunk);
        out.write_all(chunk).map_err(Error::io("write", path))?;
        (blob.progress)(chunk.len() as u64);
        Ok(())
    };
    match blob.source.open_blob_blocking(blob.descriptor) {
        Some(reader) => {
            let mut reader = reader?.take(blob.size.saturating_add(1));
            loop {
                blob.cancel.check()?;
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::ReadBlob(e)),
                };
                write(&buf[..n])?;
            }
        }
        None => {
            let reader = blob.source.open_blob(blob.descriptor).await?;
            let mut reader = reader.take(blob.size.saturating_add(1));
            loop {
                blob.cancel.check()?;
                let n = reader.read(&mut buf).await.map_err(Error::ReadBlob)?;
                if n == 0 {
                    break;
                }
                write(&buf[..n])?;
            }
        }
    }
    check_blob(blob.digest, blob.size, hasher.finish(), count, &blob.what)
}

/// Checks that `count` bytes hashing to `actual` are the `size` bytes of
/// `digest`; `what` names the blob in the error.
pub fn check_blob(
    digest: &Digest,
    size: u64,
    actual: Digest,
    count: u64,
    what: &str,
) -> Result<()> {
    if count != size {
        return Err(Error::SizeMismatch {
            what: what.to_owned(),
            expected: size,
            actual: count,
        });
    }
    if actual != *digest {
        return Err(Error::DigestMismatch {
            what: what.to_owned(),
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}

//! Extraction: every source's layers go through here.
//!
//! blob bytes -> size + digest check -> decompression (by magic bytes) -> diff_id
//! check -> tar entries -> [`apply::Applier`] -> a temporary sibling of the target,
//! renamed into place only when every layer verified. A failure or a kill leaves no
//! target that looks complete.

pub mod apply;
pub mod guard;
pub mod path;
pub use locald_core::stream;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use tokio_util::io::SyncIoBridge;

pub use apply::{Applier, Listed, ListedKind, Stats};
pub use path::PathFilter;

use locald_core::cancel::Cancel;
use locald_core::error::{Error, Result};
use locald_core::progress::Reporter;
use locald_core::source::{ImageSource, LayerInfo, ResolvedImage};

/// Where the layer blobs read during an extraction are kept (the cache's blob
/// store): a copy is begun per blob and committed once the blob matched its digest.
pub trait BlobKeeper: Send + Sync + std::fmt::Debug {
    /// Starts a copy of blob `digest`; `None` when it is kept already.
    fn begin(&self, digest: &locald_core::Digest) -> Result<Option<Box<dyn BlobCopy>>>;
}

/// A copy of one blob being written while it is read. A failed write does not
/// fail the read: [`BlobCopy::commit`] reports it.
pub trait BlobCopy: Send {
    /// Appends bytes read from the blob.
    fn write_all(&mut self, bytes: &[u8]);
    /// Publishes the copy (the blob verified); reports an earlier write error.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Options for [`extract_image`].
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Image paths to extract (empty = the whole root filesystem).
    pub filter: PathFilter,
    /// Checked between entries and while copying; set it to stop early.
    pub cancel: Cancel,
    /// Keep a copy of every layer blob read that this store does not hold yet,
    /// committed once the blob matched its digest (the cache's downloads).
    pub keep_blobs: Option<Arc<dyn BlobKeeper>>,
    /// Record each layer's entries in [`Stats::listings`].
    pub list_entries: bool,
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

/// Layers downloaded ahead of the one being applied (remote sources only).
const PREFETCH_LAYERS: usize = 4;
/// Chunks buffered per prefetched layer (each at most [`PREFETCH_READ`] bytes), so
/// prefetching holds at most `PREFETCH_LAYERS * 4 MiB` whatever the image size
/// (64 KiB reads stay below glibc's mmap threshold: no mmap/munmap per chunk).
const PREFETCH_CHUNKS: usize = 64;
/// Read size of the prefetching downloads.
const PREFETCH_READ: usize = 64 * 1024;

type Chunk = std::io::Result<Vec<u8>>;

/// Applies all layers of `image` into the existing empty directory `root`.
///
/// Local sources ([`ImageSource::open_blob_blocking`]) are read by the extraction
/// threads directly. Remote ones are downloaded up to [`PREFETCH_LAYERS`] layers
/// ahead, concurrently, into bounded buffers, while layers are applied in order as
/// they arrive: download, decompression and disk writes overlap.
pub async fn apply_layers(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    root: &Path,
    options: &ExtractOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Stats> {
    // A local source hands out blocking readers; keep the first one (a FIFO must
    // not be opened twice).
    let first = image
        .layers
        .first()
        .and_then(|l| source.open_blob_blocking(&l.descriptor));
    if first.is_some() || image.layers.is_empty() {
        return apply_in_order(source, image, root, options, reporter, Vec::new(), first).await;
    }
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in &image.layers {
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(PREFETCH_CHUNKS);
        senders.push(tx);
        receivers.push(Some(rx));
    }
    let downloads = futures::stream::iter(image.layers.iter().zip(senders))
        .map(|(layer, tx)| download(source, layer, tx))
        .buffered(PREFETCH_LAYERS)
        .try_for_each(|()| async { Ok(()) });
    let applied = apply_in_order(source, image, root, options, reporter, receivers, None);
    // The applier's verdict is the one that counts; a download error reaches it
    // through its layer's channel, and a failed applier stops the downloads.
    let (applied, _) = futures::future::join(applied, downloads).await;
    applied
}

/// Downloads one layer into its channel. Errors go down the channel (the applier
/// reports them for the right layer); a closed channel stops the download.
async fn download(
    source: &dyn ImageSource,
    layer: &LayerInfo,
    tx: tokio::sync::mpsc::Sender<Chunk>,
) -> std::result::Result<(), ()> {
    use tokio::io::AsyncReadExt as _;
    let mut blob = match source.open_blob(&layer.descriptor).await {
        Ok(b) => b.take(layer.size.saturating_add(1)),
        Err(e) => {
            let _ = tx.send(Err(std::io::Error::other(e))).await;
            return Err(());
        }
    };
    loop {
        let mut buf = Vec::with_capacity(PREFETCH_READ);
        match (&mut blob)
            .take(PREFETCH_READ as u64)
            .read_to_end(&mut buf)
            .await
        {
            Ok(0) => return Ok(()),
            Ok(_) => {
                if tx.send(Ok(buf)).await.is_err() {
                    return Err(());
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Err(());
            }
        }
    }
}

/// A blocking reader over a prefetched layer's channel.
struct PrefetchReader {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for PrefetchReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Applies the layers in order, reading each from its prefetch channel when there
/// is one, else from the source.
async fn apply_in_order(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    root: &Path,
    options: &ExtractOptions,
    reporter: Arc<dyn Reporter>,
    mut prefetched: Vec<Option<tokio::sync::mpsc::Receiver<Chunk>>>,
    mut first: Option<Result<Box<dyn Read + Send>>>,
) -> Result<Stats> {
    let mut applier =
        Applier::new(root, options.filter.clone()).with_cancel(options.cancel.clone());
    if options.list_entries {
        applier = applier.with_listing();
    }
    let mut listings = Vec::new();
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
        // Never read more than one byte past the declared size: a lying or endless
        // stream is caught without reading it all.
        let limit = layer.size.saturating_add(1);
        let blob: Box<dyn Read + Send> = match prefetched.get_mut(i).and_then(Option::take) {
            Some(rx) => Box::new(PrefetchReader {
                rx,
                chunk: Vec::new(),
                pos: 0,
            }),
            None => match first
                .take()
                .or_else(|| source.open_blob_blocking(&layer.descriptor))
            {
                Some(r) => Box::new(r.map_err(wrap)?.take(limit)),
                None => {
                    let blob = source.open_blob(&layer.descriptor).await.map_err(wrap)?;
                    Box::new(SyncIoBridge::new(blob.take(limit)))
                }
            },
        };
        let layer_info = layer.clone();
        let rep = reporter.clone();
        let cancel = options.cancel.clone();
        let keep = match &options.keep_blobs {
            Some(store) => store.begin(&layer.digest).map_err(wrap)?,
            None => None,
        };
        let result = tokio::task::spawn_blocking(move || {
            let blob = Tee::new(blob, keep);
            let r = apply_one(&mut applier, blob, &layer_info, index, rep, &cancel);
            (applier, r)
        })
        .await
        .map_err(|e| Error::Join(e.to_string()))?;
        applier = result.0;
        result.1.map_err(wrap)?;
        if options.list_entries {
            listings.push(applier.take_listing());
        }
        reporter.layer_finished(index);
    }
    // Close the remaining channels so no download waits on a reader that is gone.
    drop(prefetched);
    let mut stats = tokio::task::spawn_blocking(move || applier.finish())
        .await
        .map_err(|e| Error::Join(e.to_string()))??;
    stats.listings = listings;
    Ok(stats)
}

/// Size of the chunks handed from thread to thread (reading -> decompressing ->
/// applying): large enough that handing over costs little next to the work on
/// the bytes.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between two threads (bounds memory to a few MiB per pair).
const CHUNKS_IN_FLIGHT: usize = 16;

/// Applies one layer with two threads: this one parses tar entries and writes
/// files while a helper reads, hashes and decompresses the next bytes. Whatever
/// fails, the helper reads the blob to its end, so a corrupt blob is reported as
/// such rather than as the tar or decompression error it causes.
fn apply_one<R: Read + Send>(
    applier: &mut Applier,
    blob: Tee<R>,
    layer: &LayerInfo,
    index: usize,
    reporter: Arc<dyn Reporter>,
    cancel: &Cancel,
) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    // Set by the helper, before it sends a byte, when the layer is uncompressed and
    // its blob digest is its diff_id: the blob check already covers those bytes.
    let skip_diff = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (produced, applied) = std::thread::scope(|scope| {
        let same = skip_diff.clone();
        let producer =
            scope.spawn(move || decompress_layer(blob, layer, index, reporter, tx, cancel, &same));
        // This thread also hashes the uncompressed stream (for the diff_id), which
        // balances the work: the helper inflates and hashes the blob, this one
        // hashes the tar and writes files.
        let like = layer
            .diff_id
            .clone()
            .unwrap_or_else(|| layer.digest.clone());
        let hashed =
            stream::HashingReader::new(ChannelReader::new(rx), &like).skippable(skip_diff.clone());
        let applied = applier.apply_layer(hashed).and_then(|rest| {
            // Take the tail after the tar's end blocks too: the diff_id covers it.
            let (diff_id, _) = rest.finish().map_err(Error::Tar)?;
            Ok(diff_id)
        });
        let produced = producer.join().unwrap_or_else(|_| {
            Err(Error::Join(
                "layer decompression thread panicked".to_owned(),
            ))
        });
        (produced, applied)
    });
    // A bad blob explains everything else that went wrong; then a bad stream; then
    // what the applier found; last, an uncompressed digest that does not match.
    let diff_id = match (produced?, applied) {
        (Err(decode), _) => return Err(decode),
        (Ok(_), Err(apply)) => return Err(apply),
        (Ok(false), Ok(_)) => {
            return Err(Error::Join("the layer applier stopped early".to_owned()))
        }
        (Ok(true), Ok(diff_id)) => diff_id,
    };
    if skip_diff.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(());
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

/// Reads, hashes and decompresses a layer blob, sending the tar bytes to `tx`.
///
/// Two threads: one reads the blob (hashing it and keeping a copy when asked),
/// the other (this one) decompresses what it hands over. The outer result is the
/// blob check (size, digest), always made over the whole blob; the inner one is
/// the decompression: `true` when the whole stream was handed over, `false` when
/// the applier stopped reading (its error is the one to report).
fn decompress_layer<R: Read + Send>(
    blob: Tee<R>,
    layer: &LayerInfo,
    index: usize,
    reporter: Arc<dyn Reporter>,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    cancel: &Cancel,
    skip_diff: &std::sync::atomic::AtomicBool,
) -> Result<Result<bool>> {
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (read, decoded) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_blob(blob, layer, index, reporter, raw_tx, cancel));
        let decoded = inflate(
            ChannelReader::new(raw_rx),
            layer,
            index,
            tx,
            cancel,
            skip_diff,
        );
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Join("layer reading thread panicked".to_owned())));
        (read, decoded)
    });
    // A cancelled decompression says so, whatever the reader found meanwhile.
    if let Err(Error::Cancelled) = decoded {
        return Err(Error::Cancelled);
    }
    read?;
    Ok(decoded)
}

/// Decompresses the blob bytes arriving on `raw` (compression told by their first
/// bytes) and sends the result to `tx` in chunks; an uncompressed blob's chunks are
/// passed on as they are.
fn inflate(
    mut raw: ChannelReader,
    layer: &LayerInfo,
    index: usize,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    cancel: &Cancel,
    skip_diff: &std::sync::atomic::AtomicBool,
) -> Result<bool> {
    let compression = stream::detect(raw.peek(stream::MAGIC_LEN));
    tracing::debug!(
        layer = index,
        ?compression,
        "applying layer {}",
        layer.digest
    );
    if compression == stream::Compression::None {
        if layer.diff_id.as_ref() == Some(&layer.digest) {
            skip_diff.store(true, std::sync::atomic::Ordering::Release);
        }
        for chunk in raw.into_chunks() {
            cancel.check()?;
            if tx.send(chunk).is_err() {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    let mut uncompressed = stream::decoder(compression, raw).map_err(|e| Error::Decompress {
        compression: compression.name(),
        source: e,
    })?;
    loop {
        cancel.check()?;
        let chunk = next_chunk(&mut uncompressed).map_err(|e| Error::Decompress {
            compression: compression.name(),
            source: e,
        })?;
        let Some(chunk) = chunk else {
            return Ok(true);
        };
        if tx.send(chunk).is_err() {
            return Ok(false);
        }
    }
}

/// Reads the whole blob (hashing it, keeping the copy `blob` makes), sends its
/// bytes to `tx` for as long as the other side takes them, then checks its size
/// and digest and commits the copy.
fn read_blob<R: Read>(
    blob: Tee<R>,
    layer: &LayerInfo,
    index: usize,
    reporter: Arc<dyn Reporter>,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    cancel: &Cancel,
) -> Result<()> {
    let mut raw = stream::HashingReader::new(blob, &layer.digest)
        .with_progress(Box::new(move |n| reporter.layer_progress(index, n)));
    loop {
        cancel.check()?;
        let Some(chunk) = next_chunk(&mut raw).map_err(Error::ReadBlob)? else {
            break;
        };
        if tx.send(chunk).is_err() {
            // The decompression stopped: the rest is read (and hashed) below.
            break;
        }
    }
    drop(tx);
    let (digest, size, tee) = raw.finish_into_inner().map_err(Error::ReadBlob)?;
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
    if let Some(keep) = tee.keep {
        keep.commit()?;
    }
    Ok(())
}

/// A blob reader that copies what it reads into a [`BlobCopy`] (when there is
/// one). A failed copy does not fail the read: the blob is still applied and the
/// copy's error is reported by [`BlobCopy::commit`].
struct Tee<R> {
    inner: R,
    keep: Option<Box<dyn BlobCopy>>,
}

impl<R> Tee<R> {
    fn new(inner: R, keep: Option<Box<dyn BlobCopy>>) -> Self {
        Tee { inner, keep }
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(keep) = &mut self.keep {
            keep.write_all(&buf[..n]);
        }
        Ok(n)
    }
}

/// The next [`CHUNK`] bytes of `r` (fewer only at its end), `None` at its end.
fn next_chunk(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut chunk = vec![0u8; CHUNK];
    let n = read_full(r, &mut chunk)?;
    chunk.truncate(n);
    Ok((n > 0).then_some(chunk))
}

/// Fills `buf` unless the stream ends first; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The applying side of the channel: a `Read` over the chunks sent to it. The
/// stream ends when the sender is gone.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl ChannelReader {
    /// At least `min` bytes not read yet (fewer only at the end of the stream),
    /// joining the chunks that arrive until there are.
    fn peek(&mut self, min: usize) -> &[u8] {
        while self.chunk.len() - self.pos < min {
            let Ok(next) = self.rx.recv() else {
                break;
            };
            self.chunk.drain(..self.pos);
            self.pos = 0;
            self.chunk.extend_from_slice(&next);
        }
        &self.chunk[self.pos..]
    }

    /// The rest of the stream as the chunks that arrive (the current one's unread
    /// part first).
    fn into_chunks(mut self) -> impl Iterator<Item = Vec<u8>> {
        let first = self.chunk.split_off(self.pos);
        std::iter::once(first)
            .filter(|c| !c.is_empty())
            .chain(self.rx)
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_joins_chunks_until_it_has_enough() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let blob = b"\x28\xb5\x2f\xfdrest of the stream";
        for b in &blob[..5] {
            tx.send(vec![*b]).unwrap();
        }
        tx.send(blob[5..].to_vec()).unwrap();
        drop(tx);
        let mut r = ChannelReader::new(rx);
        assert_eq!(r.peek(stream::MAGIC_LEN), &blob[..4]);
        assert_eq!(
            stream::detect(r.peek(stream::MAGIC_LEN)),
            stream::Compression::Zstd
        );
        let rest: Vec<u8> = r.into_chunks().flatten().collect();
        assert_eq!(rest, blob.to_vec(), "peeking consumes nothing");
    }

    #[test]
    fn peek_stops_at_the_end_of_a_short_stream() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        tx.send(vec![0x1f]).unwrap();
        drop(tx);
        let mut r = ChannelReader::new(rx);
        assert_eq!(r.peek(stream::MAGIC_LEN), &[0x1f]);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, vec![0x1f]);
    }
}

//! Byte-stream plumbing for layers: hashing and counting readers and decompression
//! chosen by magic bytes (never by media type, which archives get wrong).

use std::io::{self, Read};

use crate::digest::{Digest, Hasher};

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
    on_read: Option<Box<dyn FnMut(u64) + Send>>,
    /// The first read error, returned again by every later read: a failed stream
    /// never turns into a clean (short) end.
    failed: Option<(io::ErrorKind, String)>,
    /// When set (by another thread), bytes are counted but not hashed.
    skip: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl<R: Read> HashingReader<R> {
    /// Hashes with the algorithm of `like`.
    pub fn new(inner: R, like: &Digest) -> Self {
        HashingReader {
            inner,
            hasher: like.hasher(),
            count: 0,
            on_read: None,
            failed: None,
            skip: None,
        }
    }

    /// Stops hashing (but not counting) once `skip` is set, e.g. when another
    /// thread finds the digest already covered elsewhere.
    pub fn skippable(mut self, skip: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.skip = Some(skip);
        self
    }

    /// Calls `f` with the number of bytes of every read.
    pub fn with_progress(mut self, f: Box<dyn FnMut(u64) + Send>) -> Self {
        self.on_read = Some(f);
        self
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads the rest of the stream (so the digest covers every byte) and returns
    /// the digest and total byte count.
    pub fn finish(self) -> io::Result<(Digest, u64)> {
        let (digest, count, _) = self.finish_into_inner()?;
        Ok((digest, count))
    }

    /// [`HashingReader::finish`], also handing back the inner reader.
    pub fn finish_into_inner(mut self) -> io::Result<(Digest, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.finish(), self.count, self.inner))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = Some((e.kind(), crate::error::chain(&e)));
                return Err(e);
            }
        };
        if !self
            .skip
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Acquire))
        {
            self.hasher.update(&buf[..n]);
        }
        self.count += n as u64;
        if let Some(f) = &mut self.on_read {
            f(n as u64);
        }
        Ok(n)
    }
}

/// A layer's compression, as told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// How many first bytes [`detect`] looks at.
pub const MAGIC_LEN: usize = 4;

/// Tells the compression from a stream's first [`MAGIC_LEN`] bytes (fewer when the
/// stream is shorter).
pub fn detect(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps `input`, whose compression is known, in its decompressor.
pub fn decoder<'a, R: Read + 'a>(
    compression: Compression,
    input: R,
) -> io::Result<Box<dyn Read + 'a>> {
    let input = io::BufReader::with_capacity(128 * 1024, input);
    Ok(match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Hands out one byte per read, as a slow network might.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.is_empty()) {
                (Some((b, rest)), false) => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// The compression its first bytes tell, and its decoder.
    fn decompress<'a, R: Read + 'a>(blob: &[u8], input: R) -> (Compression, Box<dyn Read + 'a>) {
        let c = detect(&blob[..blob.len().min(MAGIC_LEN)]);
        (c, decoder(c, input).unwrap())
    }

    fn roundtrip(blob: &[u8]) -> (Compression, Vec<u8>) {
        let mut out = Vec::new();
        let (c, mut r) = decompress(blob, Trickle(blob));
        r.read_to_end(&mut out).unwrap();
        let trickled = (c, out);
        let (c, mut r) = decompress(blob, blob);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(
            trickled,
            (c, out.clone()),
            "a trickling stream decodes the same"
        );
        (c, out)
    }

    #[test]
    fn by_magic() {
        let data = b"hello world, this is a tar stream pretending".repeat(100);
        assert_eq!(roundtrip(&data), (Compression::None, data.clone()));
        assert_eq!(roundtrip(&gz(&data)), (Compression::Gzip, data.clone()));
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(roundtrip(&z), (Compression::Zstd, data.clone()));
        // multi-member gzip and multi-frame zstd
        let mut multi = gz(&data[..1000]);
        multi.extend(gz(&data[1000..]));
        assert_eq!(roundtrip(&multi), (Compression::Gzip, data.clone()));
        let mut multi = zstd::encode_all(&data[..1000], 3).unwrap();
        multi.extend(zstd::encode_all(&data[1000..], 3).unwrap());
        assert_eq!(roundtrip(&multi), (Compression::Zstd, data.clone()));
        assert_eq!(roundtrip(b""), (Compression::None, vec![]));
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let data = b"abcdefgh".repeat(10_000);
        let z = gz(&data);
        let half = &z[..z.len() / 2];
        let (_, mut r) = decompress(half, half);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
    }

    #[test]
    fn read_errors_are_sticky() {
        struct FailOnce(bool);
        impl Read for FailOnce {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                if self.0 {
                    Ok(0)
                } else {
                    self.0 = true;
                    Err(io::Error::other("connection reset"))
                }
            }
        }
        let d = Digest::sha256_of(b"");
        let mut r = HashingReader::new(FailOnce(false), &d);
        assert!(r.read(&mut [0u8; 4]).is_err());
        let e = r.finish().unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
    }

    #[test]
    fn hashing_reader_drains() {
        let data = b"0123456789".repeat(1000);
        let d = Digest::sha256_of(&data);
        let mut r = HashingReader::new(&data[..], &d);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        assert_eq!(r.count(), 10);
        let (got, n) = r.finish().unwrap();
        assert_eq!((got, n), (d, data.len() as u64));
    }
}

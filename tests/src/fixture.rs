//! A byte-exact OCI image layout writer for hand-made (and hostile) layers.
//!
//! Tar headers are written by hand: names and link targets go into the archive
//! byte for byte, without validation or normalisation, so `../../etc/x`, `/abs`,
//! `a/../../b`, `./x` and `dir/` all reach the reader as written. Names or link
//! targets longer than 100 bytes are carried by a PAX extended header (default) or
//! by GNU `L`/`K` long-name headers ([`LongNames`]).
//!
//! ```no_run
//! use locald_tests::fixture::{Compression, Entry, ImageSpec, Layer, LayoutBuilder};
//! let mut b = LayoutBuilder::new("/tmp/layout");
//! b.add_image(ImageSpec::new(vec![
//!     Layer::new(vec![Entry::dir("cnb/"), Entry::file("cnb/x", "hi")], Compression::Gzip),
//!     Layer::new(vec![Entry::whiteout("cnb", "x")], Compression::Zstd),
//! ]).ref_name("latest"));
//! b.write().unwrap();
//! ```

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The mtime every entry gets unless told otherwise (2020-09-13T12:26:40Z).
pub const DEFAULT_MTIME: u64 = 1_600_000_000;
/// `created` of every config, matching [`DEFAULT_MTIME`].
pub const CREATED: &str = "2020-09-13T12:26:40Z";

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The annotation that names an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `n` deterministic bytes (xorshift from `seed`) that do not compress and are
/// never zero.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 255) as u8 + 1
        })
        .collect()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// ---------------------------------------------------------------------------
// Entries

/// Metadata common to every tar entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, setuid/setgid/sticky included (the header's mode field).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Written to the ustar `uname` field; empty by default.
    pub uname: String,
    /// Written to the ustar `gname` field; empty by default.
    pub gname: String,
    /// Extra PAX records written (after any generated `path`/`linkpath`) in an
    /// extended header before this entry, e.g. `SCHILY.xattr.user.x`.
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// Owner 0:0, mtime [`DEFAULT_MTIME`], the given mode.
    pub fn new(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            uname: String::new(),
            gname: String::new(),
            pax: Vec::new(),
        }
    }
}

/// One tar entry. Paths and link targets are raw bytes, written exactly as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File {
        path: Vec<u8>,
        content: Vec<u8>,
        meta: Meta,
    },
    Dir {
        path: Vec<u8>,
        meta: Meta,
    },
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
        meta: Meta,
    },
    HardLink {
        path: Vec<u8>,
        target: Vec<u8>,
        meta: Meta,
    },
    Fifo {
        path: Vec<u8>,
        meta: Meta,
    },
    CharDev {
        path: Vec<u8>,
        major: u32,
        minor: u32,
        meta: Meta,
    },
    BlockDev {
        path: Vec<u8>,
        major: u32,
        minor: u32,
        meta: Meta,
    },
    /// Any typeflag (`b'7'`, `b'g'`, `b'S'`, an unknown one...) with a link name
    /// and content of your choosing; the size field is `content.len()`.
    Custom {
        path: Vec<u8>,
        typeflag: u8,
        link: Vec<u8>,
        content: Vec<u8>,
        meta: Meta,
    },
}

impl Entry {
    /// A regular file, mode 0o644.
    pub fn file(path: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> Self {
        Entry::File {
            path: path.as_ref().to_vec(),
            content: content.as_ref().to_vec(),
            meta: Meta::new(0o644),
        }
    }
    /// A directory, mode 0o755. No trailing `/` is added: pass `"dir/"` for one.
    pub fn dir(path: impl AsRef<[u8]>) -> Self {
        Entry::Dir {
            path: path.as_ref().to_vec(),
            meta: Meta::new(0o755),
        }
    }
    /// A symbolic link, mode 0o777.
    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Entry::Symlink {
            path: path.as_ref().to_vec(),
            target: target.as_ref().to_vec(),
            meta: Meta::new(0o777),
        }
    }
    /// A hard link to `target` (a path in the archive), mode 0o644.
    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Entry::HardLink {
            path: path.as_ref().to_vec(),
            target: target.as_ref().to_vec(),
            meta: Meta::new(0o644),
        }
    }
    /// A named pipe, mode 0o644.
    pub fn fifo(path: impl AsRef<[u8]>) -> Self {
        Entry::Fifo {
            path: path.as_ref().to_vec(),
            meta: Meta::new(0o644),
        }
    }
    /// A character device, mode 0o666.
    pub fn char_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Entry::CharDev {
            path: path.as_ref().to_vec(),
            major,
            minor,
            meta: Meta::new(0o666),
        }
    }
    /// A block device, mode 0o660.
    pub fn block_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Entry::BlockDev {
            path: path.as_ref().to_vec(),
            major,
            minor,
            meta: Meta::new(0o660),
        }
    }
    /// An entry with an arbitrary typeflag, mode 0o644.
    pub fn custom(
        path: impl AsRef<[u8]>,
        typeflag: u8,
        link: impl AsRef<[u8]>,
        content: impl AsRef<[u8]>,
    ) -> Self {
        Entry::Custom {
            path: path.as_ref().to_vec(),
            typeflag,
            link: link.as_ref().to_vec(),
            content: content.as_ref().to_vec(),
            meta: Meta::new(0o644),
        }
    }
    /// The whiteout `dir/.wh.name` (an empty file); `dir` may be empty for the root.
    pub fn whiteout(dir: impl AsRef<[u8]>, name: impl AsRef<[u8]>) -> Self {
        let mut p = join_dir(dir.as_ref());
        p.extend_from_slice(b".wh.");
        p.extend_from_slice(name.as_ref());
        Entry::file(p, b"")
    }
    /// The opaque marker `dir/.wh..wh..opq` (an empty file).
    pub fn opaque(dir: impl AsRef<[u8]>) -> Self {
        let mut p = join_dir(dir.as_ref());
        p.extend_from_slice(b".wh..wh..opq");
        Entry::file(p, b"")
    }

    /// The path as written in the archive.
    pub fn path(&self) -> &[u8] {
        match self {
            Entry::File { path, .. }
            | Entry::Dir { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::HardLink { path, .. }
            | Entry::Fifo { path, .. }
            | Entry::CharDev { path, .. }
            | Entry::BlockDev { path, .. }
            | Entry::Custom { path, .. } => path,
        }
    }
    pub fn meta(&self) -> &Meta {
        match self {
            Entry::File { meta, .. }
            | Entry::Dir { meta, .. }
            | Entry::Symlink { meta, .. }
            | Entry::HardLink { meta, .. }
            | Entry::Fifo { meta, .. }
            | Entry::CharDev { meta, .. }
            | Entry::BlockDev { meta, .. }
            | Entry::Custom { meta, .. } => meta,
        }
    }
    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Entry::File { meta, .. }
            | Entry::Dir { meta, .. }
            | Entry::Symlink { meta, .. }
            | Entry::HardLink { meta, .. }
            | Entry::Fifo { meta, .. }
            | Entry::CharDev { meta, .. }
            | Entry::BlockDev { meta, .. }
            | Entry::Custom { meta, .. } => meta,
        }
    }
    /// Sets the mode field (permission bits incl. setuid/setgid/sticky).
    pub fn mode(mut self, mode: u32) -> Self {
        self.meta_mut().mode = mode;
        self
    }
    pub fn uid(mut self, uid: u64) -> Self {
        self.meta_mut().uid = uid;
        self
    }
    pub fn gid(mut self, gid: u64) -> Self {
        self.meta_mut().gid = gid;
        self
    }
    pub fn owner(self, uid: u64, gid: u64) -> Self {
        self.uid(uid).gid(gid)
    }
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.meta_mut().mtime = mtime;
        self
    }
    pub fn uname(mut self, name: impl Into<String>) -> Self {
        self.meta_mut().uname = name.into();
        self
    }
    pub fn gname(mut self, name: impl Into<String>) -> Self {
        self.meta_mut().gname = name.into();
        self
    }
    /// Adds a PAX record (forces an extended header before this entry).
    pub fn pax(mut self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.meta_mut()
            .pax
            .push((key.into(), value.as_ref().to_vec()));
        self
    }
    /// Shorthand for the PAX record `SCHILY.xattr.<name>=<value>`.
    pub fn xattr(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.pax(format!("SCHILY.xattr.{name}"), value)
    }
}

fn join_dir(dir: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() && !p.ends_with(b"/") {
        p.push(b'/');
    }
    p
}

// ---------------------------------------------------------------------------
// Tar writing

/// How names and link targets longer than 100 bytes are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongNames {
    /// ustar headers; a PAX extended header (`x`) carries `path=`/`linkpath=`.
    #[default]
    Pax,
    /// GNU headers (`ustar  \0` magic); `L`/`K` long-name headers carry them, and
    /// oversized numbers are written in base-256.
    Gnu,
}

const BLOCK: usize = 512;

/// The tar stream for `entries`, ended by two zero blocks.
pub fn tar_bytes(entries: &[Entry], long_names: LongNames) -> Vec<u8> {
    let mut out = tar_entries(entries, long_names);
    out.extend_from_slice(&[0u8; 2 * BLOCK]);
    out
}

/// The tar stream for `entries` without the end-of-archive blocks.
pub fn tar_entries(entries: &[Entry], long_names: LongNames) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        write_entry(&mut out, e, long_names);
    }
    out
}

fn write_entry(out: &mut Vec<u8>, e: &Entry, long_names: LongNames) {
    let gnu = long_names == LongNames::Gnu;
    let empty: &[u8] = b"";
    let (typeflag, link, content, dev): (u8, &[u8], &[u8], (u32, u32)) = match e {
        Entry::File { content, .. } => (b'0', empty, content, (0, 0)),
        Entry::Dir { .. } => (b'5', empty, empty, (0, 0)),
        Entry::Symlink { target, .. } => (b'2', target, empty, (0, 0)),
        Entry::HardLink { target, .. } => (b'1', target, empty, (0, 0)),
        Entry::Fifo { .. } => (b'6', empty, empty, (0, 0)),
        Entry::CharDev { major, minor, .. } => (b'3', empty, empty, (*major, *minor)),
        Entry::BlockDev { major, minor, .. } => (b'4', empty, empty, (*major, *minor)),
        Entry::Custom {
            typeflag,
            link,
            content,
            ..
        } => (*typeflag, link, content, (0, 0)),
    };
    let path = e.path();
    let meta = e.meta();

    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if path.len() > 100 {
        if gnu {
            write_gnu_long(out, b'L', path);
        } else {
            pax.push(("path".into(), path.to_vec()));
        }
    }
    if link.len() > 100 {
        if gnu {
            write_gnu_long(out, b'K', link);
        } else {
            pax.push(("linkpath".into(), link.to_vec()));
        }
    }
    if !gnu {
        if meta.uid > OCTAL7_MAX {
            pax.push(("uid".into(), meta.uid.to_string().into_bytes()));
        }
        if meta.gid > OCTAL7_MAX {
            pax.push(("gid".into(), meta.gid.to_string().into_bytes()));
        }
    }
    pax.extend(meta.pax.iter().cloned());
    if !pax.is_empty() {
        let data = pax_records(&pax);
        let h = Header {
            name: b"././@PaxHeader",
            link: b"",
            typeflag: b'x',
            size: data.len() as u64,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            uname: b"",
            gname: b"",
            dev: (0, 0),
            gnu,
        };
        out.extend_from_slice(&h.block());
        push_padded(out, &data);
    }

    let h = Header {
        name: &path[..path.len().min(100)],
        link: &link[..link.len().min(100)],
        typeflag,
        size: content.len() as u64,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        mtime: meta.mtime,
        uname: meta.uname.as_bytes(),
        gname: meta.gname.as_bytes(),
        dev,
        gnu,
    };
    out.extend_from_slice(&h.block());
    push_padded(out, content);
}

fn write_gnu_long(out: &mut Vec<u8>, typeflag: u8, name: &[u8]) {
    let mut data = name.to_vec();
    data.push(0);
    let h = Header {
        name: b"././@LongLink",
        link: b"",
        typeflag,
        size: data.len() as u64,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        uname: b"",
        gname: b"",
        dev: (0, 0),
        gnu: true,
    };
    out.extend_from_slice(&h.block());
    push_padded(out, &data);
}

/// A header block alone, for streams built piece by piece (too large to hold, or
/// lying): `typeflag`, `path` (at most 100 bytes), mode 0o644, owner 0:0, mtime 0,
/// and a size field saying `size` whatever follows.
pub fn header_block(path: &[u8], typeflag: u8, size: u64, long_names: LongNames) -> [u8; 512] {
    assert!(
        path.len() <= 100,
        "header_block takes names of at most 100 bytes"
    );
    Header {
        name: path,
        link: b"",
        typeflag,
        size,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        uname: b"",
        gname: b"",
        dev: (0, 0),
        gnu: long_names == LongNames::Gnu,
    }
    .block()
}

/// An old-GNU sparse file entry (typeflag `S`, as `tar --sparse --format=gnu`
/// writes it): a file of `size` bytes holding `regions` (offset, data) and holes
/// elsewhere. The header's four map slots take the first regions, extension
/// blocks of 21 slots the rest; then the regions' data, back to back, padded to
/// a block. No end-of-archive blocks. GNU tar ends the map with an empty region
/// at `size`: pass `(size, vec![])` to do the same.
pub fn gnu_sparse(path: &[u8], size: u64, regions: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let data: Vec<u8> = regions
        .iter()
        .flat_map(|(_, d)| d.iter().copied())
        .collect();
    let mut h = header_block(path, b'S', data.len() as u64, LongNames::Gnu);
    let slot = |b: &mut [u8], (offset, d): &(u64, Vec<u8>)| {
        put_num(&mut b[..12], *offset, true);
        put_num(&mut b[12..24], d.len() as u64, true);
    };
    // GNU header: 4 slots of (offset, numbytes) from 386, isextended at 482,
    // realsize at 483.
    for (i, r) in regions.iter().take(4).enumerate() {
        slot(&mut h[386 + 24 * i..386 + 24 * (i + 1)], r);
    }
    h[482] = u8::from(regions.len() > 4);
    put_num(&mut h[483..495], size, true);
    set_checksum(&mut h);
    let mut out = h.to_vec();
    let rest: Vec<&(u64, Vec<u8>)> = regions.iter().skip(4).collect();
    let blocks: Vec<&[&(u64, Vec<u8>)]> = rest.chunks(21).collect();
    for (n, chunk) in blocks.iter().enumerate() {
        // 21 slots, then isextended at 504.
        let mut b = [0u8; BLOCK];
        for (i, r) in chunk.iter().enumerate() {
            slot(&mut b[24 * i..24 * (i + 1)], r);
        }
        b[504] = u8::from(n + 1 < blocks.len());
        out.extend_from_slice(&b);
    }
    push_padded(&mut out, &data);
    out
}

fn set_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rem = data.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// PAX records `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
pub fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

const OCTAL7_MAX: u64 = 0o7777777;

struct Header<'a> {
    name: &'a [u8],
    link: &'a [u8],
    typeflag: u8,
    size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    uname: &'a [u8],
    gname: &'a [u8],
    dev: (u32, u32),
    gnu: bool,
}

impl Header<'_> {
    fn block(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        put_bytes(&mut b[0..100], self.name);
        put_num(
            &mut b[100..108],
            u64::from(self.mode & 0o7777_7777),
            self.gnu,
        );
        put_num(&mut b[108..116], self.uid, self.gnu);
        put_num(&mut b[116..124], self.gid, self.gnu);
        put_num(&mut b[124..136], self.size, self.gnu);
        put_num(&mut b[136..148], self.mtime, self.gnu);
        b[156] = self.typeflag;
        put_bytes(&mut b[157..257], self.link);
        if self.gnu {
            b[257..265].copy_from_slice(b"ustar  \0");
        } else {
            b[257..265].copy_from_slice(b"ustar\x0000");
        }
        put_bytes(&mut b[265..297], self.uname);
        put_bytes(&mut b[297..329], self.gname);
        put_num(&mut b[329..337], u64::from(self.dev.0), self.gnu);
        put_num(&mut b[337..345], u64::from(self.dev.1), self.gnu);
        set_checksum(&mut b);
        b
    }
}

fn put_bytes(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// Octal, NUL-terminated; when it does not fit, base-256 (GNU) or 0 (a PAX
/// record carries the value).
fn put_num(field: &mut [u8], v: u64, gnu: bool) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() <= digits {
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else if gnu {
        field.fill(0);
        let be = v.to_be_bytes();
        let n = field.len();
        let take = be.len().min(n - 1);
        field[n - take..].copy_from_slice(&be[be.len() - take..]);
        field[0] = 0x80;
    } else {
        field[..digits].fill(b'0');
        field[digits] = 0;
    }
}

// ---------------------------------------------------------------------------
// Layers

/// How a layer's tar stream is compressed into its blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// The tar bytes cut in three uneven chunks (not on block boundaries), each
    /// gzip-compressed on its own, the members concatenated.
    GzipMultiMember,
    Zstd,
}

impl Compression {
    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => gzip(data),
            Compression::GzipMultiMember => {
                let (a, b) = (data.len() / 3, data.len() * 2 / 3);
                let mut out = gzip(&data[..a]);
                out.extend(gzip(&data[a..b]));
                out.extend(gzip(&data[b..]));
                out
            }
            Compression::Zstd => zstd::encode_all(data, 3).expect("zstd into memory"),
        }
    }

    /// Guesses by magic bytes (a multi-member gzip reads as [`Compression::Gzip`]).
    pub fn detect(blob: &[u8]) -> Compression {
        if blob.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Decompresses `blob` (all gzip members).
    pub fn decompress(self, blob: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Compression::None => out.extend_from_slice(blob),
            Compression::Gzip | Compression::GzipMultiMember => {
                flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut out)?;
            }
            Compression::Zstd => out = zstd::decode_all(blob)?,
        }
        Ok(out)
    }

    /// The layer media type for this compression (Docker types have no zstd; the
    /// OCI zstd type is used then).
    pub fn layer_media_type(self, docker: bool) -> &'static str {
        match (self, docker) {
            (Compression::None, false) => MEDIA_OCI_LAYER,
            (Compression::Gzip | Compression::GzipMultiMember, false) => MEDIA_OCI_LAYER_GZIP,
            (Compression::Zstd, _) => MEDIA_OCI_LAYER_ZSTD,
            (Compression::None, true) => MEDIA_DOCKER_LAYER,
            (Compression::Gzip | Compression::GzipMultiMember, true) => MEDIA_DOCKER_LAYER_GZIP,
        }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// Overrides for the descriptor that points at a blob. The blob itself is still
/// stored under its real digest; only the descriptor lies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DescOverride {
    pub media_type: Option<String>,
    /// Any string, e.g. `sha256:../../etc/passwd`.
    pub digest: Option<String>,
    pub size: Option<i64>,
}

impl DescOverride {
    fn apply(&self, d: &mut Desc) {
        if let Some(m) = &self.media_type {
            d.media_type.clone_from(m);
        }
        if let Some(x) = &self.digest {
            d.digest.clone_from(x);
        }
        if let Some(s) = self.size {
            d.size = s;
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LayerContent {
    Entries {
        entries: Vec<Entry>,
        long_names: LongNames,
        end: Vec<u8>,
    },
    Raw(Vec<u8>),
}

/// One layer: entries and a compression, or raw blob bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    content: LayerContent,
    compression: Compression,
    diff_id: Option<String>,
    stored: Option<Vec<u8>>,
    /// Overrides for the descriptor of this layer in the manifest.
    pub desc: DescOverride,
    /// Annotations on the layer descriptor.
    pub annotations: BTreeMap<String, String>,
}

impl Layer {
    pub fn new(entries: Vec<Entry>, compression: Compression) -> Self {
        Self {
            content: LayerContent::Entries {
                entries,
                long_names: LongNames::Pax,
                end: vec![0; 2 * BLOCK],
            },
            compression,
            diff_id: None,
            stored: None,
            desc: DescOverride::default(),
            annotations: BTreeMap::new(),
        }
    }
    /// A layer whose blob is exactly `blob` (hand-corrupted, truncated...). Its
    /// compression (so its media type and diff_id) is guessed from magic bytes;
    /// see [`Layer::with_compression`].
    pub fn raw(blob: impl Into<Vec<u8>>) -> Self {
        let blob = blob.into();
        let compression = Compression::detect(&blob);
        Self {
            content: LayerContent::Raw(blob),
            compression,
            diff_id: None,
            stored: None,
            desc: DescOverride::default(),
            annotations: BTreeMap::new(),
        }
    }
    /// For entry layers: how the blob is compressed. For raw layers: what the
    /// blob is taken to be (media type, diff_id).
    pub fn with_compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }
    /// Long-name form for entry layers (PAX by default).
    pub fn with_long_names(mut self, l: LongNames) -> Self {
        if let LayerContent::Entries { long_names, .. } = &mut self.content {
            *long_names = l;
        }
        self
    }
    /// What follows the last entry instead of two zero blocks (`vec![]` for a tar
    /// with no end marker, or zeros plus trailing garbage).
    pub fn with_end(mut self, bytes: Vec<u8>) -> Self {
        if let LayerContent::Entries { end, .. } = &mut self.content {
            *end = bytes;
        }
        self
    }
    /// The `rootfs.diff_ids` entry written into the config for this layer.
    pub fn with_diff_id(mut self, diff_id: impl Into<String>) -> Self {
        self.diff_id = Some(diff_id.into());
        self
    }
    /// Stores these bytes in `blobs/` under the layer's real digest (a blob
    /// whose bytes do not match its digest).
    pub fn with_stored_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stored = Some(bytes.into());
        self
    }
    /// Stores the real blob with one byte in the middle flipped.
    pub fn corrupted(self) -> Self {
        let mut b = self.blob();
        let i = b.len() / 2;
        b[i] ^= 0xff;
        self.with_stored_bytes(b)
    }
    pub fn with_media_type(mut self, m: impl Into<String>) -> Self {
        self.desc.media_type = Some(m.into());
        self
    }
    /// Descriptor digest override (any string).
    pub fn with_desc_digest(mut self, d: impl Into<String>) -> Self {
        self.desc.digest = Some(d.into());
        self
    }
    /// Descriptor size override.
    pub fn with_desc_size(mut self, s: i64) -> Self {
        self.desc.size = Some(s);
        self
    }
    pub fn with_annotation(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }
    /// The uncompressed tar stream (for raw layers: the blob decompressed as
    /// its compression says, or the blob itself when that fails).
    pub fn tar(&self) -> Vec<u8> {
        match &self.content {
            LayerContent::Entries {
                entries,
                long_names,
                end,
            } => {
                let mut t = tar_entries(entries, *long_names);
                t.extend_from_slice(end);
                t
            }
            LayerContent::Raw(b) => self.compression.decompress(b).unwrap_or_else(|_| b.clone()),
        }
    }
    /// The blob bytes the digest is computed over.
    pub fn blob(&self) -> Vec<u8> {
        match &self.content {
            LayerContent::Entries { .. } => self.compression.compress(&self.tar()),
            LayerContent::Raw(b) => b.clone(),
        }
    }
    /// The bytes written to `blobs/` (differ from [`Layer::blob`] when corrupted).
    pub fn stored_bytes(&self) -> Vec<u8> {
        self.stored.clone().unwrap_or_else(|| self.blob())
    }
    /// `sha256:<hex>` of the blob.
    pub fn digest(&self) -> String {
        sha256_digest(&self.blob())
    }
    /// `sha256:<hex>` of the uncompressed tar, unless overridden.
    pub fn diff_id(&self) -> String {
        self.diff_id
            .clone()
            .unwrap_or_else(|| sha256_digest(&self.tar()))
    }
    /// The manifest's descriptor of this layer, overrides applied.
    pub fn descriptor(&self, docker: bool) -> Desc {
        let blob = self.blob();
        let mut d = Desc::new(
            self.compression.layer_media_type(docker),
            sha256_digest(&blob),
            blob.len() as i64,
        );
        d.annotations.clone_from(&self.annotations);
        self.desc.apply(&mut d);
        d
    }
}

// ---------------------------------------------------------------------------
// Descriptors and images

/// A platform as in an index's descriptors and a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }
    fn to_json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::new("linux", "amd64", None)
    }
}

/// An OCI descriptor; every field is free to be wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

impl Desc {
    pub fn new(media_type: &str, digest: String, size: i64) -> Self {
        Self {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
    /// Sets `org.opencontainers.image.ref.name`.
    pub fn with_ref_name(mut self, name: impl Into<String>) -> Self {
        self.annotations.insert(REF_NAME.into(), name.into());
        self
    }
    pub fn with_platform(mut self, p: Option<Platform>) -> Self {
        self.platform = p;
        self
    }
    pub fn with_digest(mut self, d: impl Into<String>) -> Self {
        self.digest = d.into();
        self
    }
    pub fn with_size(mut self, s: i64) -> Self {
        self.size = s;
        self
    }
    /// The JSON object written into manifests and indexes.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size});
        if let Some(p) = &self.platform {
            v["platform"] = p.to_json();
        }
        if !self.annotations.is_empty() {
            v["annotations"] = json!(self.annotations);
        }
        v
    }
}

/// What [`LayoutBuilder::add_image`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The descriptor of the manifest as it would go into an index (with the
    /// ref name and platform of the spec, overrides applied).
    pub manifest: Desc,
    pub config: Desc,
    pub layers: Vec<Desc>,
    pub diff_ids: Vec<String>,
}

/// What [`LayoutBuilder::add_index`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexInfo {
    pub index: Desc,
    pub images: Vec<ImageInfo>,
}

/// One image: layers, config, platform, and how it is referenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// `org.opencontainers.image.ref.name` on the manifest descriptor.
    pub ref_name: Option<String>,
    pub platform: Platform,
    pub layers: Vec<Layer>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// Docker schema-2 media types for manifest, config and layers.
    pub docker: bool,
    pub manifest_annotations: BTreeMap<String, String>,
    /// The config blob verbatim instead of the generated one.
    pub config_bytes: Option<Vec<u8>>,
    /// Overrides for the config descriptor in the manifest.
    pub config_desc: DescOverride,
    /// Overrides for the descriptor pointing at the manifest (in index.json or
    /// in the nested index).
    pub manifest_desc: DescOverride,
}

impl ImageSpec {
    pub fn new(layers: Vec<Layer>) -> Self {
        Self {
            ref_name: None,
            platform: Platform::default(),
            layers,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            labels: BTreeMap::new(),
            user: None,
            working_dir: None,
            entrypoint: None,
            cmd: None,
            docker: false,
            manifest_annotations: BTreeMap::new(),
            config_bytes: None,
            config_desc: DescOverride::default(),
            manifest_desc: DescOverride::default(),
        }
    }
    pub fn ref_name(mut self, name: impl Into<String>) -> Self {
        self.ref_name = Some(name.into());
        self
    }
    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> Self {
        self.platform = Platform::new(os, arch, variant);
        self
    }
    /// Appends `KEY=VALUE` to the config's `Env`.
    pub fn env(mut self, kv: impl Into<String>) -> Self {
        self.env.push(kv.into());
        self
    }
    pub fn label(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    pub fn user(mut self, u: impl Into<String>) -> Self {
        self.user = Some(u.into());
        self
    }
    pub fn working_dir(mut self, d: impl Into<String>) -> Self {
        self.working_dir = Some(d.into());
        self
    }
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    /// The config JSON (unless `config_bytes` is set, which wins).
    pub fn config_json(&self) -> Vec<u8> {
        if let Some(b) = &self.config_bytes {
            return b.clone();
        }
        let mut cfg = json!({});
        if !self.env.is_empty() {
            cfg["Env"] = json!(self.env);
        }
        if !self.labels.is_empty() {
            cfg["Labels"] = json!(self.labels);
        }
        if let Some(u) = &self.user {
            cfg["User"] = json!(u);
        }
        if let Some(w) = &self.working_dir {
            cfg["WorkingDir"] = json!(w);
        }
        if let Some(e) = &self.entrypoint {
            cfg["Entrypoint"] = json!(e);
        }
        if let Some(c) = &self.cmd {
            cfg["Cmd"] = json!(c);
        }
        let diff_ids: Vec<String> = self.layers.iter().map(Layer::diff_id).collect();
        let history: Vec<Value> = self
            .layers
            .iter()
            .map(|_| json!({"created": CREATED, "created_by": "locald-tests fixture"}))
            .collect();
        let mut v = json!({
            "created": CREATED,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(var) = &self.platform.variant {
            v["variant"] = json!(var);
        }
        serde_json::to_vec(&v).expect("json")
    }
}

/// Several images behind one image index blob (a multi-platform image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSpec {
    /// Ref name of the index's descriptor in index.json.
    pub ref_name: Option<String>,
    /// Each image's platform goes into its descriptor in the index.
    pub images: Vec<ImageSpec>,
    /// Docker manifest-list media type instead of the OCI index one.
    pub docker: bool,
    pub annotations: BTreeMap<String, String>,
    /// Overrides for the descriptor pointing at this index.
    pub desc: DescOverride,
}

impl IndexSpec {
    pub fn new(images: Vec<ImageSpec>) -> Self {
        Self {
            ref_name: None,
            images,
            docker: false,
            annotations: BTreeMap::new(),
            desc: DescOverride::default(),
        }
    }
    pub fn ref_name(mut self, name: impl Into<String>) -> Self {
        self.ref_name = Some(name.into());
        self
    }
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }
}

// ---------------------------------------------------------------------------
// The layout

/// Collects blobs and index.json entries, then writes an OCI image layout.
#[derive(Clone, Debug)]
pub struct LayoutBuilder {
    dir: PathBuf,
    blobs: BTreeMap<String, Vec<u8>>,
    index: Vec<Desc>,
    /// Annotations of index.json itself.
    pub index_annotations: BTreeMap<String, String>,
    raw_files: Vec<(PathBuf, Vec<u8>)>,
}

impl LayoutBuilder {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            blobs: BTreeMap::new(),
            index: Vec::new(),
            index_annotations: BTreeMap::new(),
            raw_files: Vec::new(),
        }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `bytes` under their digest (unless something, say a corrupt
    /// blob, is already stored there); returns the digest.
    pub fn add_blob(&mut self, bytes: impl Into<Vec<u8>>) -> String {
        let bytes = bytes.into();
        let d = sha256_digest(&bytes);
        self.blobs.entry(d.clone()).or_insert(bytes);
        d
    }
    /// Stores `bytes` under `digest` whatever they hash to (a corrupt blob).
    /// `digest` must be `alg:hex`-shaped enough to be a safe file name.
    pub fn put_blob(&mut self, digest: &str, bytes: impl Into<Vec<u8>>) {
        blob_rel_path(digest);
        self.blobs.insert(digest.to_owned(), bytes.into());
    }
    /// Drops a stored blob (a descriptor pointing at nothing).
    pub fn remove_blob(&mut self, digest: &str) -> Option<Vec<u8>> {
        self.blobs.remove(digest)
    }
    /// The bytes stored for `digest`.
    pub fn blob(&self, digest: &str) -> Option<&[u8]> {
        self.blobs.get(digest).map(Vec::as_slice)
    }

    /// Writes an image's blobs without listing it in index.json.
    pub fn image(&mut self, spec: &ImageSpec) -> ImageInfo {
        let mut layers = Vec::new();
        for l in &spec.layers {
            // Corrupt bytes win over good ones under the same digest, whichever
            // image came first.
            match &l.stored {
                Some(bytes) => {
                    self.blobs.insert(l.digest(), bytes.clone());
                }
                None => {
                    self.blobs.entry(l.digest()).or_insert_with(|| l.blob());
                }
            }
            layers.push(l.descriptor(spec.docker));
        }
        let cfg = spec.config_json();
        let cfg_media = if spec.docker {
            MEDIA_DOCKER_CONFIG
        } else {
            MEDIA_OCI_CONFIG
        };
        let mut config = Desc::new(cfg_media, sha256_digest(&cfg), cfg.len() as i64);
        self.add_blob(cfg);
        spec.config_desc.apply(&mut config);

        let man_media = if spec.docker {
            MEDIA_DOCKER_MANIFEST
        } else {
            MEDIA_OCI_MANIFEST
        };
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": man_media,
            "config": config.to_json(),
            "layers": layers.iter().map(Desc::to_json).collect::<Vec<_>>(),
        });
        if !spec.manifest_annotations.is_empty() {
            m["annotations"] = json!(spec.manifest_annotations);
        }
        let mb = serde_json::to_vec(&m).expect("json");
        let mut manifest = Desc::new(man_media, sha256_digest(&mb), mb.len() as i64)
            .with_platform(Some(spec.platform.clone()));
        self.add_blob(mb);
        if let Some(r) = &spec.ref_name {
            manifest = manifest.with_ref_name(r);
        }
        spec.manifest_desc.apply(&mut manifest);
        let diff_ids = spec.layers.iter().map(Layer::diff_id).collect();
        ImageInfo {
            manifest,
            config,
            layers,
            diff_ids,
        }
    }

    /// Writes an image and lists its manifest in index.json (with its ref name,
    /// without a platform).
    pub fn add_image(&mut self, spec: ImageSpec) -> ImageInfo {
        let info = self.image(&spec);
        self.index.push(info.manifest.clone().with_platform(None));
        info
    }

    /// Writes an image index blob and its images without listing it in
    /// index.json.
    pub fn index(&mut self, spec: &IndexSpec) -> IndexInfo {
        let images: Vec<ImageInfo> = spec.images.iter().map(|i| self.image(i)).collect();
        let media = if spec.docker {
            MEDIA_DOCKER_LIST
        } else {
            MEDIA_OCI_INDEX
        };
        let mut v = json!({
            "schemaVersion": 2,
            "mediaType": media,
            "manifests": images.iter().map(|i| i.manifest.to_json()).collect::<Vec<_>>(),
        });
        if !spec.annotations.is_empty() {
            v["annotations"] = json!(spec.annotations);
        }
        let b = serde_json::to_vec(&v).expect("json");
        let mut index = Desc::new(media, sha256_digest(&b), b.len() as i64);
        self.add_blob(b);
        if let Some(r) = &spec.ref_name {
            index = index.with_ref_name(r);
        }
        spec.desc.apply(&mut index);
        IndexInfo { index, images }
    }

    /// Writes a multi-platform image and lists its index in index.json.
    pub fn add_index(&mut self, spec: IndexSpec) -> IndexInfo {
        let info = self.index(&spec);
        self.index.push(info.index.clone());
        info
    }

    /// Lists any descriptor in index.json.
    pub fn push_index_entry(&mut self, desc: Desc) {
        self.index.push(desc);
    }

    /// A file written verbatim (relative to the layout) after everything else,
    /// e.g. a hand-written `index.json`.
    pub fn raw_file(&mut self, rel: impl Into<PathBuf>, bytes: impl Into<Vec<u8>>) {
        self.raw_files.push((rel.into(), bytes.into()));
    }

    /// The index.json that [`LayoutBuilder::write`] writes.
    pub fn index_json(&self) -> Vec<u8> {
        let mut v = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": self.index.iter().map(Desc::to_json).collect::<Vec<_>>(),
        });
        if !self.index_annotations.is_empty() {
            v["annotations"] = json!(self.index_annotations);
        }
        serde_json::to_vec_pretty(&v).expect("json")
    }

    /// Creates the directory (and parents) and writes the layout.
    pub fn write(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.dir.join("blobs"))?;
        std::fs::write(
            self.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        for (digest, bytes) in &self.blobs {
            let p = self.dir.join(blob_rel_path(digest));
            std::fs::create_dir_all(p.parent().expect("blob has a parent"))?;
            std::fs::write(p, bytes)?;
        }
        std::fs::write(self.dir.join("index.json"), self.index_json())?;
        for (rel, bytes) in &self.raw_files {
            let p = self.dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, bytes)?;
        }
        Ok(())
    }
}

/// `blobs/<alg>/<hex>`; panics when the digest would not make a plain file name
/// (bad digests belong in descriptors, never on disk).
fn blob_rel_path(digest: &str) -> PathBuf {
    let (alg, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("blob digest without ':': {digest:?}"));
    let p = Path::new("blobs").join(alg).join(hex);
    let plain = !alg.is_empty()
        && !hex.is_empty()
        && p.components().count() == 3
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    assert!(plain, "blob digest is not a safe file name: {digest:?}");
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers;
    use crate::tree::{self, Kind};

    /// (raw path, typeflag, link name, header uid, content) of an entry.
    type ReadEntry = (Vec<u8>, u8, Option<Vec<u8>>, u64, Vec<u8>);

    /// Every entry as the `tar` crate reads it.
    fn read_back(tar: &[u8]) -> Vec<ReadEntry> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                (
                    e.path_bytes().into_owned(),
                    e.header().entry_type().as_byte(),
                    e.link_name_bytes().map(|l| l.into_owned()),
                    e.header().uid().unwrap(),
                    content,
                )
            })
            .collect()
    }

    /// Typeflags of every header block, walking sizes by hand.
    fn typeflags(tar: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + BLOCK <= tar.len() && tar[off..off + BLOCK].iter().any(|&b| b != 0) {
            let h = &tar[off..off + BLOCK];
            let size_field = std::str::from_utf8(&h[124..135]).unwrap();
            let size = u64::from_str_radix(size_field, 8).unwrap() as usize;
            out.push(h[156]);
            off += BLOCK + size.div_ceil(BLOCK) * BLOCK;
        }
        out
    }

    #[test]
    fn hostile_names_pass_through_byte_for_byte() {
        let names: &[&[u8]] = &[
            b"../../etc/x",
            b"/abs/path",
            b"a/../../b",
            b"./x",
            b"dir/",
            b"//double//slash",
            b"name\xffnot-utf8",
            b"",
        ];
        let mut entries: Vec<Entry> = names.iter().map(|n| Entry::file(n, b"data")).collect();
        entries.push(Entry::symlink("l", "../../../../etc/passwd"));
        entries.push(Entry::hardlink("h", "/etc/shadow"));
        entries.push(Entry::dir("../up/"));
        let tar = tar_bytes(&entries, LongNames::Pax);
        assert_eq!(tar.len() % BLOCK, 0);
        assert!(tar.ends_with(&[0; 2 * BLOCK]));
        let got = read_back(&tar);
        assert_eq!(got.len(), entries.len());
        for (e, g) in entries.iter().zip(&got) {
            assert_eq!(
                e.path(),
                &g.0[..],
                "{:?}",
                String::from_utf8_lossy(e.path())
            );
        }
        assert_eq!(got[names.len()].1, b'2');
        assert_eq!(
            got[names.len()].2.as_deref(),
            Some(&b"../../../../etc/passwd"[..])
        );
        assert_eq!(got[names.len() + 1].1, b'1');
        assert_eq!(got[names.len() + 1].2.as_deref(), Some(&b"/etc/shadow"[..]));
        assert_eq!(got[names.len() + 2].1, b'5');
        // No extended headers for short names.
        assert!(!typeflags(&tar).contains(&b'x'));
    }

    #[test]
    fn metadata_fields_read_back() {
        let entries = vec![
            Entry::file("f", "x")
                .mode(0o4755)
                .owner(1000, 2000)
                .mtime(12345),
            Entry::dir("d").mode(0o1777),
            Entry::char_dev("c", 1, 3),
            Entry::block_dev("b", 8, 1),
            Entry::fifo("p"),
            Entry::file("u", "").uname("alice").gname("staff"),
        ];
        let tar = tar_bytes(&entries, LongNames::Pax);
        let mut a = tar::Archive::new(&tar[..]);
        let hs: Vec<tar::Header> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().clone())
            .collect();
        assert_eq!(hs[0].mode().unwrap(), 0o4755);
        assert_eq!((hs[0].uid().unwrap(), hs[0].gid().unwrap()), (1000, 2000));
        assert_eq!(hs[0].mtime().unwrap(), 12345);
        assert_eq!(hs[1].mode().unwrap(), 0o1777);
        assert_eq!(hs[1].mtime().unwrap(), DEFAULT_MTIME);
        assert_eq!(hs[2].entry_type(), tar::EntryType::Char);
        assert_eq!(
            (hs[2].device_major().unwrap(), hs[2].device_minor().unwrap()),
            (Some(1), Some(3))
        );
        assert_eq!(hs[3].entry_type(), tar::EntryType::Block);
        assert_eq!(hs[4].entry_type(), tar::EntryType::Fifo);
        assert_eq!(hs[5].username().unwrap(), Some("alice"));
        assert_eq!(hs[5].groupname().unwrap(), Some("staff"));
        for h in &hs {
            assert!(h.as_ustar().is_some(), "ustar magic");
            assert_eq!(
                h.cksum().unwrap(),
                h.as_bytes()
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| if (148..156).contains(&i) {
                        32
                    } else {
                        u32::from(b)
                    })
                    .sum::<u32>()
            );
        }
    }

    #[test]
    fn long_names_pax_and_gnu() {
        let long = format!("{}/file", "d".repeat(150));
        let target = format!("../{}", "t".repeat(200));
        let entries = vec![
            Entry::file(&long, "content"),
            Entry::symlink("s", &target),
            Entry::hardlink(format!("{long}.link"), &long),
            Entry::file("big-uid", "").owner(3_000_000_000, 4_000_000),
        ];
        for (mode, ext) in [(LongNames::Pax, b'x'), (LongNames::Gnu, b'L')] {
            let tar = tar_bytes(&entries, mode);
            let got = read_back(&tar);
            assert_eq!(got.len(), 4, "{mode:?}");
            assert_eq!(got[0].0, long.as_bytes());
            assert_eq!(got[0].4, b"content");
            assert_eq!(got[1].2.as_deref(), Some(target.as_bytes()));
            assert_eq!(got[2].0, format!("{long}.link").as_bytes());
            assert_eq!(got[2].2.as_deref(), Some(long.as_bytes()));
            let flags = typeflags(&tar);
            assert!(
                flags.contains(&ext),
                "{mode:?}: {:?}",
                String::from_utf8_lossy(&flags)
            );
            if mode == LongNames::Gnu {
                assert!(flags.contains(&b'K'));
                assert!(!flags.contains(&b'x'));
                assert_eq!(got[3].3, 3_000_000_000, "base-256 uid");
            } else {
                assert!(!flags.contains(&b'L') && !flags.contains(&b'K'));
                let mut a = tar::Archive::new(&tar[..]);
                let mut e = a.entries().unwrap().nth(3).unwrap().unwrap();
                let pax: Vec<(String, String)> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| {
                        let x = x.unwrap();
                        (x.key().unwrap().to_owned(), x.value().unwrap().to_owned())
                    })
                    .collect();
                assert_eq!(
                    pax,
                    [
                        ("uid".into(), "3000000000".into()),
                        ("gid".into(), "4000000".into())
                    ]
                );
            }
        }
    }

    #[test]
    fn pax_record_lengths_are_self_consistent() {
        for n in 0..1100 {
            let rec = pax_records(&[("path".into(), vec![b'a'; n])]);
            let sp = rec.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rec[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, rec.len(), "value length {n}");
            assert!(rec.ends_with(b"\n"));
        }
    }

    #[test]
    fn whiteout_helpers() {
        assert_eq!(Entry::whiteout("a/b", "c").path(), b"a/b/.wh.c");
        assert_eq!(Entry::whiteout("a/b/", "c").path(), b"a/b/.wh.c");
        assert_eq!(Entry::whiteout("", "c").path(), b".wh.c");
        assert_eq!(Entry::opaque("a").path(), b"a/.wh..wh..opq");
    }

    #[test]
    fn compressions_round_trip() {
        let entries: Vec<Entry> = (0..50)
            .map(|i| Entry::file(format!("f{i}"), vec![i as u8; 700]))
            .collect();
        let plain = tar_bytes(&entries, LongNames::Pax);
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::GzipMultiMember,
            Compression::Zstd,
        ] {
            let l = Layer::new(entries.clone(), c);
            assert_eq!(l.tar(), plain);
            assert_eq!(l.diff_id(), sha256_digest(&plain));
            assert_eq!(l.digest(), sha256_digest(&l.blob()));
            assert_eq!(
                Compression::detect(&l.blob())
                    .decompress(&l.blob())
                    .unwrap(),
                plain,
                "{c:?}"
            );
            let raw = Layer::raw(l.blob());
            assert_eq!(raw.diff_id(), l.diff_id(), "{c:?}");
            assert_eq!(raw.digest(), l.digest());
        }
        // A single-member decoder stops at the end of the first member.
        let multi = Layer::new(entries, Compression::GzipMultiMember).blob();
        let mut first = Vec::new();
        flate2::read::GzDecoder::new(&multi[..])
            .read_to_end(&mut first)
            .unwrap();
        assert_eq!(first.len(), plain.len() / 3);
        assert_ne!(plain.len() / 3 % BLOCK, 0);
    }

    #[test]
    fn corrupt_and_lying_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let layer = Layer::new(vec![Entry::file("a", "a")], Compression::Gzip);
        let good = layer.clone().with_desc_size(3);
        let bad = layer.clone().corrupted();
        let mut b = LayoutBuilder::new(dir.path());
        let info = b.add_image(ImageSpec::new(vec![good]).ref_name("sized"));
        assert_eq!(info.layers[0].size, 3);
        assert_eq!(info.layers[0].digest, layer.digest());
        let info = b.add_image(ImageSpec::new(vec![bad]).ref_name("corrupt"));
        assert_ne!(
            sha256_digest(b.blob(&info.layers[0].digest).unwrap()),
            info.layers[0].digest
        );
        let mut lying = ImageSpec::new(vec![layer]).ref_name("evil");
        lying.manifest_desc.digest = Some("sha256:../../etc/passwd".into());
        b.add_image(lying);
        b.write().unwrap();
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][2]["digest"], "sha256:../../etc/passwd");
        assert_eq!(index["manifests"][2]["annotations"][REF_NAME], "evil");
        let stored = std::fs::read(
            dir.path()
                .join("blobs/sha256")
                .join(&info.layers[0].digest[7..]),
        )
        .unwrap();
        assert_ne!(sha256_digest(&stored), info.layers[0].digest);
    }

    #[test]
    #[should_panic(expected = "not a safe file name")]
    fn bad_digest_never_becomes_a_path() {
        LayoutBuilder::new("/nonexistent").put_blob("sha256:../../x", b"x".to_vec());
    }

    /// Layers exercising whiteouts, opaque dirs, hard links, symlinks, long
    /// names (both forms) and all compressions (umoci 0.4 and docker-archive
    /// know no zstd).
    fn sample_layout(dir: &Path, zstd: bool) -> ImageInfo {
        let long = format!("long/{}", "n".repeat(120));
        let l1 = Layer::new(
            vec![
                Entry::dir("etc/"),
                Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
                Entry::dir("gone/"),
                Entry::file("gone/a", "a"),
                Entry::dir("opq/"),
                Entry::file("opq/old", "old"),
                Entry::file("keep", "keep").mode(0o600).owner(1000, 1000),
                Entry::file("removed", "removed"),
                Entry::dir("long/"),
                Entry::file(&long, "long"),
                Entry::file("bin/tool", "#!/bin/sh\n").mode(0o4755),
            ],
            Compression::Gzip,
        );
        let l2 = Layer::new(
            vec![
                Entry::whiteout("", "removed"),
                Entry::whiteout("", "gone"),
                Entry::opaque("opq"),
                Entry::file("opq/new", "new"),
                Entry::hardlink("keep-link", "keep"),
                Entry::symlink("etc/link", "../keep"),
                Entry::symlink(format!("{long}.sym"), format!("/{long}")),
                Entry::fifo("fifo"),
            ],
            Compression::GzipMultiMember,
        )
        .with_long_names(LongNames::Gnu);
        let l3 = Layer::new(vec![Entry::file("plain-file", "p")], Compression::None);
        let mut layers = vec![l1, l2, l3];
        if zstd {
            layers.push(Layer::new(
                vec![Entry::file("zstd-file", "z")],
                Compression::Zstd,
            ));
        }
        let mut b = LayoutBuilder::new(dir);
        let info = b.add_image(
            ImageSpec::new(layers)
                .ref_name("latest")
                .env("A=B")
                .label("k", "v")
                .user("1000:1000")
                .working_dir("/w"),
        );
        b.write().unwrap();
        info
    }

    #[test]
    fn umoci_unpacks_generated_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        sample_layout(&layout, false);
        let rootfs = peers::umoci_unpack(&layout, "latest", &tmp.path().join("bundle")).unwrap();
        let s = tree::snapshot(&rootfs);
        let long = format!("long/{}", "n".repeat(120));
        for gone in ["removed", "gone", "gone/a", "opq/old"] {
            assert!(
                !s.contains_key(gone),
                "{gone} should be whited out:\n{}",
                tree::render(&s)
            );
        }
        for wh in s.keys() {
            assert!(!wh.contains(".wh."), "whiteout left: {wh}");
        }
        assert_eq!(s["opq/new"].kind, Kind::File);
        assert_eq!(s["keep"].inode, s["keep-link"].inode);
        assert_eq!(s["keep"].mode, 0o600);
        assert_eq!(s["bin/tool"].mode, 0o4755);
        assert_eq!(s["etc/link"].target.as_deref(), Some("../keep"));
        assert_eq!(
            s[&format!("{long}.sym")].target.as_deref(),
            Some(&*format!("/{long}"))
        );
        assert_eq!(s[&long].sha256, Some(sha256_digest(b"long")));
        assert_eq!(s["fifo"].kind, Kind::Fifo);
        assert_eq!(s["plain-file"].size, 1);
        assert_eq!(s["etc/passwd"].mtime, Some(DEFAULT_MTIME as i64));
        if peers::is_root() {
            assert_eq!((s["keep"].uid, s["keep"].gid), (1000, 1000));
        }
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("bundle/config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["process"]["cwd"], "/w");
        assert!(cfg["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "A=B"));
    }

    #[test]
    fn skopeo_copies_generated_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let info = sample_layout(&layout, true);
        let src = format!("oci:{}:latest", layout.display());
        let dst = format!("oci:{}:copy", tmp.path().join("copy").display());
        peers::skopeo_copy(&src, &dst, &[]).unwrap();
        let raw = peers::skopeo(&["inspect", "--raw", &src]).unwrap();
        assert_eq!(sha256_digest(raw.as_bytes()), info.manifest.digest);
        sample_layout(&tmp.path().join("layout-gz"), false);
        let src = format!("oci:{}:latest", tmp.path().join("layout-gz").display());
        let archive = format!(
            "docker-archive:{}:x/y:z",
            tmp.path().join("a.tar").display()
        );
        peers::skopeo_copy(&src, &archive, &[]).unwrap();

        // Docker media types (skopeo 1.9 skips docker manifests in index.json,
        // so check the JSON itself).
        let mut b = LayoutBuilder::new(tmp.path().join("docker"));
        let l = Layer::new(vec![Entry::file("x", "x")], Compression::Gzip);
        let info = b.add_image(ImageSpec::new(vec![l]).ref_name("d").docker());
        assert_eq!(info.layers[0].media_type, MEDIA_DOCKER_LAYER_GZIP);
        assert_eq!(info.manifest.media_type, MEDIA_DOCKER_MANIFEST);
        let m: Value = serde_json::from_slice(b.blob(&info.manifest.digest).unwrap()).unwrap();
        assert_eq!(m["mediaType"], MEDIA_DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], MEDIA_DOCKER_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], MEDIA_DOCKER_LAYER_GZIP);
        let c: Value = serde_json::from_slice(b.blob(&info.config.digest).unwrap()).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], info.diff_ids[0]);

        // A multi-platform image behind a nested index.
        let mut b = LayoutBuilder::new(tmp.path().join("multi"));
        let img = |arch: &str, variant: Option<&str>| {
            ImageSpec::new(vec![Layer::new(
                vec![Entry::file("arch", arch)],
                Compression::Gzip,
            )])
            .platform("linux", arch, variant)
        };
        let info = b.add_index(
            IndexSpec::new(vec![img("amd64", None), img("arm64", Some("v8"))]).ref_name("multi"),
        );
        b.write().unwrap();
        let src = format!("oci:{}:multi", tmp.path().join("multi").display());
        let raw = peers::skopeo(&["inspect", "--raw", &src]).unwrap();
        assert_eq!(sha256_digest(raw.as_bytes()), info.index.digest);
        assert!(raw.contains("\"variant\":\"v8\""), "{raw}");
        let dst = format!("oci:{}:multi", tmp.path().join("multi-copy").display());
        peers::skopeo_copy(&src, &dst, &["--all"]).unwrap();
        peers::skopeo_copy(
            &src,
            &format!("oci:{}:arm", tmp.path().join("arm").display()),
            &["--override-arch", "arm64"],
        )
        .unwrap();
    }

    #[test]
    fn skopeo_rejects_corrupt_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = LayoutBuilder::new(tmp.path().join("l"));
        b.add_image(
            ImageSpec::new(vec![Layer::new(
                vec![Entry::file("a", "a")],
                Compression::Gzip,
            )
            .corrupted()])
            .ref_name("c"),
        );
        b.write().unwrap();
        let src = format!("oci:{}:c", tmp.path().join("l").display());
        let err = peers::skopeo_copy(
            &src,
            &format!("oci:{}:c", tmp.path().join("o").display()),
            &[],
        )
        .unwrap_err();
        assert!(err.to_lowercase().contains("digest did not match"), "{err}");
    }
}

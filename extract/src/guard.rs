//! A guard between a layer's uncompressed bytes and the `tar` crate, against
//! resource bombs.
//!
//! The tar crate reads the whole data of a PAX extended header (`x`) or a GNU
//! long name or long link name (`L`, `K`) into memory before it yields the entry
//! they describe, whatever size their header declares: a 2 MB gzip layer can make
//! it hold half a gigabyte. And it hands out a GNU sparse entry (`S`) as its full
//! apparent size, the holes as zero bytes (a 10 KB layer becomes gigabytes of
//! zeros to write, and a long sparse map costs it quadratic time). So the
//! [`TarGuard`] reads the stream just ahead of the tar crate, block by block as
//! the tar crate does, and:
//!
//! - refuses an `x`, `g`, `L` or `K` entry declaring more than [`MAX_METADATA`]
//!   bytes before a byte of its data is read ([`Refused`]);
//! - takes each GNU sparse entry off the tar crate's hands: it reads the sparse
//!   map (the header's four slots and the extension blocks after it) itself,
//!   checks it, and hands the tar crate a regular-file header over the stored
//!   data instead (the extension blocks left out), leaving the map in
//!   [`Shared::sparse`] for the applier, which writes each data region at its
//!   offset and leaves the holes as holes.
//!
//! Every other byte passes through untouched. The guard must agree with the tar
//! crate on where every header starts, or a header it took for data could slip
//! past it: it parses headers with the tar crate's own functions (sizes in octal
//! or base 256, the checksum, the PAX `size` record that overrides the next
//! entry's size, the ustar/GNU magic that decides whether an `x`, `L` or `K` is
//! one), and the applier checks for every entry that the tar crate's position
//! of its header is the one the guard recorded ([`Shared::entry_header`]).
//! Where the tar crate would stop with an error (a bad checksum, two PAX headers
//! in a row, a size that does not parse), the guard lets the header through for
//! the tar crate to report and fails every read after it.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;

use tar::EntryType;

/// The largest PAX header (`x`, `g`), GNU long name (`L`) or long link name
/// (`K`) accepted, in bytes of entry data. Go's archive/tar reads such entries
/// through `io.LimitReader(r, maxSpecialFileSize+1)` with `maxSpecialFileSize =
/// 1 << 20` and fails when it got more than that: exactly 1 MiB is accepted, one
/// byte more is refused. libarchive has the same limit.
pub const MAX_METADATA: u64 = 1 << 20;

/// The size of a tar block.
const BLOCK: usize = 512;

/// The most sparse-map extension blocks one GNU sparse entry may have: as much
/// map (1 MiB, 43 008 regions) as [`MAX_METADATA`] allows other metadata, since
/// the map is held in memory too. Go's archive/tar has no limit; GNU tar writes
/// one block per 21 data regions.
pub const MAX_SPARSE_BLOCKS: u64 = MAX_METADATA / BLOCK as u64;

/// The layout of a GNU sparse file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    /// The file's size (its holes included).
    pub size: u64,
    /// The data regions as (offset, length): in order, not overlapping, inside
    /// `size`, their lengths adding up to the data stored in the archive (in this
    /// order).
    pub regions: Vec<(u64, u64)>,
}

/// What the guard knows about the entry the tar crate yields next.
#[derive(Debug, Default)]
pub struct Shared {
    /// Where the header of the entry the tar crate yields next starts, counted
    /// as the tar crate counts (in the guard's output).
    pub entry_header: Option<u64>,
    /// That entry's sparse map, when it was a GNU sparse entry (the tar crate
    /// sees a regular file holding only the data regions).
    pub sparse: Option<SparseMap>,
}

impl Shared {
    /// The sparse map of the entry whose header the tar crate found at
    /// `header_pos`, after checking that the guard found the same header there.
    pub fn take_entry(&mut self, header_pos: u64) -> Result<Option<SparseMap>, String> {
        if self.entry_header.take() != Some(header_pos) {
            return Err(format!(
                "the tar reader found an entry at byte {header_pos} of the layer where the \
                 stream guard did not expect one"
            ));
        }
        Ok(self.sparse.take())
    }
}

/// An entry the guard refuses, carried inside the `io::Error` it returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The name field of the refused entry's header (empty for many PAX headers).
    pub name: Vec<u8>,
    /// Where that header starts in the layer's uncompressed stream.
    pub offset: u64,
    /// What is wrong with it, e.g. the limit it is over.
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (header at byte {} of the uncompressed layer)",
            self.reason, self.offset
        )
    }
}

impl std::error::Error for Refused {}

/// What an `x`, `g`, `L` or `K` entry is, for messages.
fn metadata_kind(t: EntryType) -> Option<&'static str> {
    match t {
        EntryType::XHeader => Some("PAX extended header"),
        EntryType::XGlobalHeader => Some("PAX global header"),
        EntryType::GNULongName => Some("GNU long name"),
        EntryType::GNULongLink => Some("GNU long link name"),
        _ => None,
    }
}

/// The entries describing the next one (what the tar crate collects before it
/// yields an entry).
#[derive(Debug, Default)]
struct Chain {
    pax: bool,
    long_name: bool,
    long_link: bool,
    /// The `size` record of the PAX header, as the tar crate reads it.
    pax_size: Option<u64>,
}

/// What the guard does with the bytes after the header block it hands out.
#[derive(Debug)]
enum Mode {
    /// Walking entries: data, padding, then the next header.
    Walking,
    /// After the end-of-archive block (or the end of the stream): pass through.
    End,
    /// Every read fails with this (after the pending block, if any).
    Failed(String),
}

/// The guard: a `Read` over a layer's uncompressed tar stream; see the module
/// documentation.
pub struct TarGuard<R> {
    inner: R,
    /// Bytes read from `inner` (the sparse extension blocks included).
    read: u64,
    /// Bytes handed out (the positions the tar crate sees).
    out: u64,
    /// A header block being handed out, and how much of it is out.
    block: [u8; BLOCK],
    block_at: usize,
    block_len: usize,
    /// Entry data still to pass, then padding.
    data: u64,
    pad: u64,
    /// A PAX header's data, kept while it passes (at most [`MAX_METADATA`]).
    capture: Option<Vec<u8>>,
    chain: Chain,
    mode: Mode,
    shared: Rc<RefCell<Shared>>,
}

impl<R: Read> TarGuard<R> {
    /// Guards `inner`, a tar stream read from its start.
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            read: 0,
            out: 0,
            block: [0; BLOCK],
            block_at: 0,
            block_len: 0,
            data: 0,
            pad: 0,
            capture: None,
            chain: Chain::default(),
            mode: Mode::Walking,
            shared: Rc::default(),
        }
    }

    /// What the guard records for the applier.
    pub fn shared(&self) -> Rc<RefCell<Shared>> {
        self.shared.clone()
    }

    /// The guarded stream, positioned after what the guard read.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads up to a whole block into `buf`; fewer bytes only at the end.
    fn fill(&mut self, buf: &mut [u8; BLOCK]) -> io::Result<usize> {
        let mut n = 0;
        while n < BLOCK {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The bytes read so far are lost to the caller: nothing may
                    // be read after this.
                    self.mode = Mode::Failed(format!("reading the layer failed: {e}"));
                    return Err(e);
                }
            }
        }
        self.read += n as u64;
        Ok(n)
    }

    /// Reads and looks at the next header block; afterwards the block (perhaps
    /// rewritten) is pending in `self.block`.
    fn next_header(&mut self) -> io::Result<()> {
        let mut block = [0u8; BLOCK];
        let at = self.read;
        let n = self.fill(&mut block)?;
        self.block = block;
        self.block_at = 0;
        if n < BLOCK || block.iter().all(|&b| b == 0) {
            // The end of the stream (the tar crate reports a partial block) or
            // the end-of-archive marker, where the tar crate stops.
            self.block_len = n;
            self.mode = Mode::End;
            return Ok(());
        }
        // Not handed out when refused.
        self.block_len = 0;
        if let Err(tar_fails) = self.look_at(at)? {
            // The tar crate stops at this header with its own error.
            self.mode = Mode::Failed(format!(
                "the tar stream goes on after a header the tar reader refuses ({tar_fails})"
            ));
        }
        self.block_len = BLOCK;
        Ok(())
    }

    /// Looks at the header in `self.block` (read at `at`) and sets up what
    /// follows it. The outer error refuses the entry; the inner one is where the
    /// tar crate itself would stop.
    fn look_at(&mut self, at: u64) -> io::Result<Result<(), String>> {
        self.capture = None;
        let header = tar::Header::from_byte_slice(&self.block);
        // The checksum, exactly as the tar crate checks it.
        let sum = header.as_bytes()[..148]
            .iter()
            .chain(&header.as_bytes()[156..])
            .fold(0u32, |a, b| a + u32::from(*b))
            + 8 * 32;
        match header.cksum() {
            Ok(c) if c == sum => {}
            _ => return Ok(Err("header checksum mismatch".to_owned())),
        }
        let kind = header.entry_type();
        let declared = match header.entry_size() {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let name = header.as_old().name;
        let name = name.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
        let refuse = |reason: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                Refused {
                    name: name.clone(),
                    offset: at,
                    reason,
                },
            )
        };
        let metadata = metadata_kind(kind);
        if let Some(what) = metadata {
            if declared > MAX_METADATA {
                return Err(refuse(format!(
                    "a {what} of {declared} bytes, more than the limit of 1 MiB \
                     ({MAX_METADATA} bytes) for PAX headers, GNU long names and long link names"
                )));
            }
        }
        // A PAX `size` record overrides the size of the next entry that is not
        // itself metadata (tar crate: `next_entry_raw`).
        let size = match (metadata, self.chain.pax_size) {
            (None, Some(s)) => s,
            _ => declared,
        };
        let Some(padded) = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s & !(BLOCK as u64 - 1))
        else {
            return Ok(Err("entry size overflows".to_owned()));
        };
        let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
        let (data, pad) = (size, padded - size);
        if recognised && kind == EntryType::GNULongName {
            if std::mem::replace(&mut self.chain.long_name, true) {
                return Ok(Err("two long names for one entry".to_owned()));
            }
        } else if recognised && kind == EntryType::GNULongLink {
            if std::mem::replace(&mut self.chain.long_link, true) {
                return Ok(Err("two long link names for one entry".to_owned()));
            }
        } else if recognised && kind == EntryType::XHeader {
            if std::mem::replace(&mut self.chain.pax, true) {
                return Ok(Err("two PAX headers for one entry".to_owned()));
            }
            // Bounded by MAX_METADATA above; empty data has no size record.
            self.chain.pax_size = None;
            self.capture = (size > 0).then(|| Vec::with_capacity(size as usize));
        } else {
            // The entry the tar crate yields next.
            self.chain = Chain::default();
            let sparse = if kind == EntryType::GNUSparse && header.as_gnu().is_some() {
                match self.take_sparse(size) {
                    Ok(map) => Some(map),
                    Err(SparseError::Io(e)) => return Err(e),
                    Err(SparseError::Bad(reason)) => return Err(refuse(reason)),
                }
            } else {
                None
            };
            let mut shared = self.shared.borrow_mut();
            shared.entry_header = Some(self.out);
            shared.sparse = sparse;
        }
        self.data = data;
        self.pad = pad;
        Ok(Ok(()))
    }

    /// Reads the sparse map of the GNU sparse header in `self.block` (and its
    /// extension blocks, which the tar crate will not see), checks it against
    /// the `stored` bytes of data, and turns the block into a regular-file
    /// header for those bytes.
    fn take_sparse(&mut self, stored: u64) -> Result<SparseMap, SparseError> {
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&self.block);
        let Some(gnu) = header.as_gnu() else {
            return Err(SparseError::Bad(
                "a sparse entry without a GNU header".to_owned(),
            ));
        };
        let size = gnu
            .real_size()
            .map_err(|e| SparseError::Bad(format!("GNU sparse header: {e}")))?;
        let mut regions = Vec::new();
        read_slots(&gnu.sparse, &mut regions)?;
        let mut more = gnu.is_extended();
        let mut blocks = 0u64;
        while more {
            blocks += 1;
            if blocks > MAX_SPARSE_BLOCKS {
                return Err(SparseError::Bad(format!(
                    "a GNU sparse map of more than {MAX_SPARSE_BLOCKS} extension blocks \
                     (1 MiB), the limit"
                )));
            }
            let mut ext = tar::GnuExtSparseHeader::new();
            let n = self.fill(ext.as_mut_bytes()).map_err(SparseError::Io)?;
            if n < BLOCK {
                self.mode = Mode::Failed("the layer ends inside a GNU sparse map".to_owned());
                return Err(SparseError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the layer ends inside a GNU sparse map",
                )));
            }
            read_slots(ext.sparse(), &mut regions)?;
            more = ext.is_extended();
        }
        let map = check_sparse(size, regions, stored).map_err(SparseError::Bad)?;
        header.set_entry_type(EntryType::Regular);
        if let Some(gnu) = header.as_gnu_mut() {
            gnu.set_is_extended(false);
        }
        header.set_cksum();
        self.block.copy_from_slice(header.as_bytes());
        Ok(map)
    }

    fn fail(&self) -> Option<io::Error> {
        match &self.mode {
            Mode::Failed(msg) => Some(io::Error::new(io::ErrorKind::InvalidData, msg.clone())),
            _ => None,
        }
    }
}

enum SparseError {
    Io(io::Error),
    Bad(String),
}

/// Appends the regions of one block's sparse slots. A slot whose offset or
/// length field starts with NUL ends the block's list (GNU tar stops at an empty
/// length, Go's archive/tar at an empty offset).
fn read_slots(
    slots: &[tar::GnuSparseHeader],
    out: &mut Vec<(u64, u64)>,
) -> Result<(), SparseError> {
    for slot in slots {
        if slot.is_empty() {
            break;
        }
        let bad = |e: io::Error| SparseError::Bad(format!("GNU sparse map: {e}"));
        out.push((slot.offset().map_err(bad)?, slot.length().map_err(bad)?));
    }
    Ok(())
}

/// Checks a sparse map as Go's archive/tar does (`validateSparseEntries`):
/// regions in order, not overlapping, inside the file; and their lengths must
/// add up to the `stored` data, as the tar crate and Go's reader require.
pub fn check_sparse(size: u64, regions: Vec<(u64, u64)>, stored: u64) -> Result<SparseMap, String> {
    if size > i64::MAX as u64 {
        return Err(format!("GNU sparse map: a file size of {size} bytes"));
    }
    let mut end = 0u64;
    let mut data = 0u64;
    for &(offset, len) in &regions {
        if offset < end {
            return Err(format!(
                "GNU sparse map: the region at {offset} overlaps the one before or is out of order"
            ));
        }
        end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                format!(
                    "GNU sparse map: the region of {len} bytes at {offset} ends beyond the file's \
                     size ({size} bytes)"
                )
            })?;
        data += len;
    }
    if data != stored {
        return Err(format!(
            "GNU sparse map: its regions hold {data} bytes but the entry stores {stored}"
        ));
    }
    Ok(SparseMap { size, regions })
}

/// The `size` record of PAX header data, as the tar crate reads it
/// (`pax_extensions_value`): the first `size` record, `None` when it does not
/// parse or a malformed record comes before it.
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.block_at < self.block_len {
                let n = buf.len().min(self.block_len - self.block_at);
                buf[..n].copy_from_slice(&self.block[self.block_at..self.block_at + n]);
                self.block_at += n;
                self.out += n as u64;
                return Ok(n);
            }
            if let Some(e) = self.fail() {
                return Err(e);
            }
            if let Mode::End = self.mode {
                let n = self.inner.read(buf)?;
                self.read += n as u64;
                self.out += n as u64;
                return Ok(n);
            }
            let (left, capturing) = match (self.data, self.pad) {
                (0, 0) => {
                    self.next_header().inspect_err(|e| {
                        if self.fail().is_none() {
                            self.mode = Mode::Failed(e.to_string());
                        }
                    })?;
                    continue;
                }
                (0, pad) => (pad, false),
                (data, _) => (data, true),
            };
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match self.inner.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::Interrupted {
                        self.mode = Mode::Failed(format!("reading the layer failed: {e}"));
                    }
                    return Err(e);
                }
            };
            if n == 0 {
                // Cut short: the tar crate reports it.
                self.mode = Mode::End;
                return Ok(0);
            }
            self.read += n as u64;
            self.out += n as u64;
            if capturing {
                self.data -= n as u64;
                if let Some(c) = &mut self.capture {
                    c.extend_from_slice(&buf[..n]);
                    if self.data == 0 {
                        self.chain.pax_size = pax_size(c);
                        self.capture = None;
                    }
                }
            } else {
                self.pad -= n as u64;
            }
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block (GNU or ustar magic) with the given fields.
    fn header(kind: EntryType, name: &str, size: u64, gnu: bool) -> tar::Header {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    /// A stream under construction.
    #[derive(Default, Clone)]
    struct Tar(Vec<u8>);

    impl Tar {
        /// Appends a header and `data` (padded), with the header's own size field.
        fn entry(mut self, kind: EntryType, name: &str, data: &[u8]) -> Self {
            self.0
                .extend_from_slice(header(kind, name, data.len() as u64, true).as_bytes());
            self.data(data)
        }
        /// Appends a header whose size field says `size`, and no data.
        fn header(mut self, h: tar::Header) -> Self {
            self.0.extend_from_slice(h.as_bytes());
            self
        }
        /// Appends raw bytes padded to a block.
        fn data(mut self, data: &[u8]) -> Self {
            self.0.extend_from_slice(data);
            let rem = self.0.len() % BLOCK;
            if rem != 0 {
                self.0.resize(self.0.len() + BLOCK - rem, 0);
            }
            self
        }
        fn file(self, name: &str, data: &[u8]) -> Self {
            self.entry(EntryType::Regular, name, data)
        }
        fn pax(self, records: &[(&str, &str)]) -> Self {
            let mut data = Vec::new();
            for (k, v) in records {
                let rest = k.len() + v.len() + 3;
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {k}={v}\n").as_bytes());
            }
            self.entry(EntryType::XHeader, "././@PaxHeader", &data)
        }
        fn end(mut self) -> Vec<u8> {
            self.0.extend_from_slice(&[0; 2 * BLOCK]);
            self.0
        }
    }

    /// Hands out at most `step` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        /// An entry: its name, type, data, and its sparse map if any.
        Entry(String, EntryType, Vec<u8>, Option<SparseMap>),
    }

    /// What the tar crate yields through the guard (reading `step` bytes at a
    /// time from the stream), checking positions as the applier does; `Err` is
    /// the error, with `refused:` before a refusal.
    fn walk(stream: &[u8], step: usize) -> Result<Vec<Seen>, String> {
        let guard = TarGuard::new(Trickle(stream, step));
        let shared = guard.shared();
        let mut archive = tar::Archive::new(guard);
        let mut seen = Vec::new();
        let explain = |e: io::Error| match e.get_ref().and_then(|i| i.downcast_ref::<Refused>()) {
            Some(r) => format!(
                "refused: {:?} at {}: {}",
                String::from_utf8_lossy(&r.name),
                r.offset,
                r.reason
            ),
            None => e.to_string(),
        };
        for entry in archive.entries().map_err(explain)? {
            let mut entry = entry.map_err(explain)?;
            let sparse = shared
                .borrow_mut()
                .take_entry(entry.raw_header_position())?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(explain)?;
            seen.push(Seen::Entry(name, kind, data, sparse));
        }
        Ok(seen)
    }

    /// [`walk`] in whole reads and in trickles; both must agree.
    fn walk_all(stream: &[u8]) -> Result<Vec<Seen>, String> {
        let whole = walk(stream, usize::MAX);
        for step in [1, 7, 511, 513] {
            assert_eq!(walk(stream, step), whole, "read {step} bytes at a time");
        }
        whole
    }

    fn file(name: &str, data: &[u8]) -> Seen {
        Seen::Entry(name.to_owned(), EntryType::Regular, data.to_vec(), None)
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn ordinary_archives_pass_through_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "a", &b"abc"[..]).unwrap();
        let long = "d/".repeat(80) + "file";
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.x", &b"1"[..])])
            .unwrap();
        b.append_data(&mut h, "b", &b"abc"[..]).unwrap();
        let stream = b.into_inner().unwrap();
        let mut out = Vec::new();
        TarGuard::new(&stream[..]).read_to_end(&mut out).unwrap();
        assert!(out == stream, "the guard changed an ordinary archive");
        assert_eq!(
            walk_all(&stream).unwrap(),
            vec![file("a", b"abc"), file(&long, b"abc"), file("b", b"abc")]
        );
    }

    /// Metadata entries at and over the limit, by type, size encoding and magic.
    #[test]
    fn metadata_over_one_mib_is_refused_before_it_is_read() {
        let name_of = |len: usize| {
            // "./././…/x": a name of exactly `len` bytes with its NUL.
            let mut n = "./".repeat((len - 2) / 2);
            if len % 2 == 1 {
                n.insert(0, '/');
            }
            n.push('x');
            n.push('\0');
            assert_eq!(n.len(), len);
            n.into_bytes()
        };
        for kind in [
            EntryType::XHeader,
            EntryType::XGlobalHeader,
            EntryType::GNULongName,
            EntryType::GNULongLink,
        ] {
            for gnu in [true, false] {
                // Exactly 1 MiB: accepted (Go's boundary).
                let data = if matches!(kind, EntryType::XHeader | EntryType::XGlobalHeader) {
                    let mut d = format!("{MIB} comment=").into_bytes();
                    d.resize(MIB - 1, b'a');
                    d.push(b'\n');
                    d
                } else {
                    name_of(MIB)
                };
                assert_eq!(data.len(), MIB);
                let stream = Tar::default()
                    .header(header(kind, "meta", MIB as u64, gnu))
                    .data(&data)
                    .file("f", b"hi")
                    .end();
                let seen = walk(&stream, usize::MAX)
                    .unwrap_or_else(|e| panic!("{kind:?} gnu={gnu} of 1 MiB: {e}"));
                match seen.last() {
                    Some(Seen::Entry(_, EntryType::Regular, data, None)) if data == b"hi" => {}
                    other => panic!("{kind:?} gnu={gnu}: the file after it is {other:?}"),
                }
                // One byte more, declared in octal or base 256 (the data is not
                // even there: it must not be read).
                for size in [MIB as u64 + 1, 1 << 29, 1 << 40] {
                    let mut h = header(kind, "meta", size, gnu);
                    if size == MIB as u64 + 1 && gnu {
                        // Base 256 for a size octal could hold.
                        let field = &mut h.as_old_mut().size;
                        field.fill(0);
                        field[0] = 0x80;
                        field[8..].copy_from_slice(&(size as u32).to_be_bytes());
                        h.set_cksum();
                    }
                    assert_eq!(h.entry_size().unwrap(), size);
                    let stream = Tar::default().file("before", b"1").header(h).end();
                    let e = walk(&stream, usize::MAX).unwrap_err();
                    assert!(
                        e.starts_with("refused: \"meta\" at 1024: a ")
                            && e.contains(&size.to_string())
                            && e.contains("1 MiB"),
                        "{kind:?} gnu={gnu} size={size}: {e}"
                    );
                }
            }
        }
    }

    /// The PAX `size` record decides where the next header is, for the guard as
    /// for the tar crate.
    #[test]
    fn pax_size_overrides_are_followed() {
        let bomb = header(EntryType::XHeader, "bomb", 512 << 20, true);
        // The header says 0 bytes, the PAX record 1024: what looks like a bomb
        // header is the file's data.
        let mut data = bomb.as_bytes().to_vec();
        data.resize(1024, b'z');
        let stream = Tar::default()
            .pax(&[("size", "1024")])
            .header(header(EntryType::Regular, "f", 0, false))
            .data(&data)
            .file("g", b"g")
            .end();
        assert_eq!(
            walk_all(&stream).unwrap(),
            vec![file("f", &data), file("g", b"g")]
        );
        // The other way round: the header says 1024, the record 0, so the bomb
        // is the next header.
        let stream = Tar::default()
            .pax(&[("size", "0")])
            .header(header(EntryType::Regular, "f", 1024, false))
            .header(bomb.clone())
            .end();
        let e = walk_all(&stream).unwrap_err();
        assert!(e.starts_with("refused: \"bomb\" at 1536:"), "{e}");
        // Only the first size record counts, and not past a malformed record;
        // a PAX header applies across long names to the entry they describe.
        let with = |records: &[(&str, &str)], data_len: usize| {
            let mut data = bomb.as_bytes().to_vec();
            data.resize(data_len, b'z');
            let stream = Tar::default()
                .pax(records)
                .entry(EntryType::GNULongName, "././@LongLink", b"long-name\0")
                .header(header(EntryType::Regular, "f", 0, true))
                .data(&data)
                .end();
            walk_all(&stream)
        };
        assert!(with(&[("size", "512"), ("size", "0")], 512).is_ok());
        assert!(with(&[("mtime", "1"), ("size", "+512")], 512).is_ok());
        let e = with(&[("size", "x512")], 512).unwrap_err();
        assert!(e.starts_with("refused: \"bomb\""), "{e}");
        // A PAX header does not apply to a global header after it (which the tar
        // crate yields as an entry, ending the chain), nor across it.
        let stream = Tar::default()
            .pax(&[("size", "1024")])
            .entry(EntryType::XGlobalHeader, "g", b"")
            .header(header(EntryType::Regular, "f", 0, true))
            .header(bomb.clone())
            .end();
        let e = walk_all(&stream).unwrap_err();
        assert!(e.starts_with("refused: \"bomb\" at 2048"), "{e}");
        // An empty PAX header has no size record, and what follows it is no PAX
        // data, whatever it holds.
        let stream = Tar::default()
            .pax(&[])
            .file("f", b"12 size=512\n")
            .header(header(EntryType::Regular, "g", 0, true))
            .header(bomb.clone())
            .end();
        let e = walk_all(&stream).unwrap_err();
        assert!(e.starts_with("refused: \"bomb\" at 2048"), "{e}");
        // An `x` with the old (v7) magic is no PAX header to the tar crate: it is
        // yielded as an entry and its records apply to nothing.
        let mut old = header(EntryType::XHeader, "old", 12, true);
        old.as_mut_bytes()[257..265].fill(0);
        old.set_cksum();
        let stream = Tar::default()
            .header(old)
            .data(b"12 size=512\n")
            .header(header(EntryType::Regular, "f", 0, true))
            .header(bomb)
            .end();
        let e = walk_all(&stream).unwrap_err();
        assert!(e.starts_with("refused: \"bomb\" at 1536"), "{e}");
    }

    /// A GNU sparse header with `slots` in its own map (at most 4) and the rest in
    /// extension blocks, then `data`.
    fn sparse(name: &str, size: u64, regions: &[(u64, u64)], data: &[u8]) -> Tar {
        let mut h = header(EntryType::GNUSparse, name, data.len() as u64, true);
        let gnu = h.as_gnu_mut().unwrap();
        for (slot, (o, l)) in gnu.sparse.iter_mut().zip(regions) {
            slot.set_offset(*o);
            slot.set_length(*l);
        }
        gnu.set_is_extended(regions.len() > 4);
        if size < 8u64.pow(11) {
            gnu.realsize
                .copy_from_slice(format!("{size:011o}\0").as_bytes());
        } else {
            gnu.realsize = [0; 12];
            gnu.realsize[0] = 0x80;
            gnu.realsize[4..].copy_from_slice(&size.to_be_bytes());
        }
        h.set_cksum();
        let mut t = Tar::default().header(h);
        let ext: Vec<_> = regions.iter().skip(4).collect();
        let chunks: Vec<_> = ext.chunks(21).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut e = tar::GnuExtSparseHeader::new();
            for (slot, (o, l)) in e.sparse_mut().iter_mut().zip(chunk.iter()) {
                slot.set_offset(*o);
                slot.set_length(*l);
            }
            e.set_is_extended(i + 1 < chunks.len());
            t.0.extend_from_slice(e.as_bytes());
        }
        t.data(data)
    }

    #[test]
    fn sparse_entries_become_regular_files_with_a_map() {
        // 2 GiB with one byte, as GNU tar writes it (a last empty region at the
        // end of the file).
        let size = 2u64 << 30;
        let stream = sparse("big", size, &[(size - 1, 1), (size, 0)], b"x")
            .file("after", b"a")
            .end();
        let map = SparseMap {
            size,
            regions: vec![(size - 1, 1), (size, 0)],
        };
        assert_eq!(
            walk_all(&stream).unwrap(),
            vec![
                Seen::Entry("big".into(), EntryType::Regular, b"x".to_vec(), Some(map)),
                file("after", b"a"),
            ]
        );
        // Extension blocks: 4 + 21 + 5 regions of 2 bytes every 1000 bytes.
        let regions: Vec<(u64, u64)> = (0..30).map(|i| (i * 1000, 2)).collect();
        let data: Vec<u8> = (0..60u8).collect();
        let stream = sparse("ext", 40_000, &regions, &data)
            .file("after", b"a")
            .end();
        let seen = walk_all(&stream).unwrap();
        assert_eq!(
            seen,
            vec![
                Seen::Entry(
                    "ext".into(),
                    EntryType::Regular,
                    data,
                    Some(SparseMap {
                        size: 40_000,
                        regions
                    })
                ),
                file("after", b"a"),
            ]
        );
    }

    #[test]
    fn bad_sparse_maps_are_refused() {
        /// Name, file size, regions, stored data length, what the refusal says.
        type Case = (&'static str, u64, Vec<(u64, u64)>, usize, &'static str);
        let cases: Vec<Case> = vec![
            ("overlap", 100, vec![(0, 10), (5, 10)], 20, "overlaps"),
            ("order", 100, vec![(50, 10), (0, 10)], 20, "out of order"),
            ("beyond", 100, vec![(95, 10)], 10, "beyond the file's size"),
            (
                "short",
                100,
                vec![(0, 10)],
                20,
                "hold 10 bytes but the entry stores 20",
            ),
            ("long", 100, vec![(0, 30)], 20, "hold 30 bytes"),
            ("huge", u64::MAX, vec![(0, 1)], 1, "file size"),
        ];
        for (what, size, regions, data, reason) in cases {
            let stream = sparse(what, size, &regions, &vec![0; data]).end();
            let e = walk_all(&stream).unwrap_err();
            assert!(
                e.starts_with(&format!("refused: {what:?} at 0: GNU sparse map"))
                    && e.contains(reason),
                "{what}: {e}"
            );
        }
        // Just at the extension block limit, and one block over it.
        for (blocks, ok) in [(MAX_SPARSE_BLOCKS, true), (MAX_SPARSE_BLOCKS + 1, false)] {
            let n = 4 + blocks * 21;
            let regions: Vec<(u64, u64)> = (0..n).map(|i| (i * 2, 1)).collect();
            let stream = sparse("many", n * 2, &regions, &vec![7; n as usize]).end();
            let r = walk(&stream, usize::MAX);
            assert_eq!(r.is_ok(), ok, "{blocks} blocks: {:?}", r.map(|_| ()));
            if !ok {
                let e = r.unwrap_err();
                assert!(e.contains("extension blocks"), "{e}");
            }
        }
    }

    /// Cut anywhere, a stream fails cleanly (never a panic or a refusal of what
    /// was not there).
    #[test]
    fn truncated_streams_fail() {
        let stream = Tar::default()
            .pax(&[("path", "p")])
            .entry(EntryType::GNULongName, "././@LongLink", b"long\0")
            .file("f", &[5; 700])
            .0;
        let regions: Vec<(u64, u64)> = (0..30).map(|i| (i * 10, 1)).collect();
        let stream = [stream, sparse("s", 300, &regions, &[1; 30]).0].concat();
        let complete = walk_all(&[stream.clone(), vec![0; 1024]].concat()).unwrap();
        assert_eq!(complete.len(), 2);
        for cut in (0..stream.len())
            .step_by(97)
            .chain([1, 511, 512, 1023, 1024])
        {
            let r = walk(&stream[..cut], usize::MAX);
            match r {
                // A cut at a block boundary between entries reads as a shorter
                // archive (the tar crate accepts a missing end marker).
                Ok(seen) => assert!(seen.len() < 2, "cut at {cut}: {seen:?}"),
                Err(e) => assert!(!e.starts_with("refused"), "cut at {cut}: {e}"),
            }
        }
    }

    #[test]
    fn bad_checksums_stop_the_tar_crate_and_the_guard() {
        let mut stream = Tar::default().file("a", b"a").file("b", b"b").end();
        stream[1024] ^= 1; // in the second header's name
        let e = walk_all(&stream).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        // Read by hand past that header, the guard refuses to go on.
        let mut g = TarGuard::new(&stream[..]);
        let mut buf = vec![0; 1536];
        g.read_exact(&mut buf).unwrap();
        assert_eq!(buf, stream[..1536]);
        let e = g.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn refusals_are_sticky() {
        let stream = Tar::default()
            .header(header(EntryType::GNULongName, "l", 2 << 20, true))
            .end();
        let mut g = TarGuard::new(&stream[..]);
        let mut buf = [0u8; 512];
        let first = g.read(&mut buf).unwrap_err();
        assert!(first.get_ref().unwrap().is::<Refused>());
        assert!(g.read(&mut buf).unwrap_err().to_string().contains("1 MiB"));
    }

    #[test]
    fn reads_after_the_end_pass_through() {
        let mut stream = Tar::default().file("a", b"a").end();
        stream.extend_from_slice(b"trailing bytes");
        let mut out = Vec::new();
        TarGuard::new(&stream[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, stream);
    }
}

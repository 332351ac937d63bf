//! The C side of the ABI, written once for every plugin: generic `extern "C"`
//! functions that [`export_plugin!`](crate::export_plugin) monomorphises for a
//! [`Plugin`] type and puts in its [`PluginV1`] table. Plugin authors do not call
//! these; the host calls them through the table.
//!
//! This is the only module of the crate with `unsafe` code. Each function:
//!
//! - runs the plugin's code under [`catch_unwind`]: a panic is [`Status::Panic`]
//!   with the panic's message (as it is) as the thread's last error, and
//!   poisons the handle;
//! - refuses null pointers and non-UTF-8 strings with [`Status::InvalidArgument`];
//! - turns an [`Error`] into its status and its message into the last error;
//! - writes out-parameters only on [`Status::Ok`].
//!
//! Handles are `Box`es of [`SourceCell`]/[`BlobCell`] (the plugin's value and
//! a poisoned flag); buffers are `Vec<u8>`s taken apart into [`Buf`] and put
//! back together to be freed.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::any::Any;
use std::cell::RefCell;
use std::io::Read;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::{
    BlobHandle, Buf, Error, Plugin, PluginV1, Resolved, ResolvedImage, Source, SourceHandle,
    Status, Str,
};

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `message` as this thread's last error.
fn set_last_error(message: String) {
    // During thread teardown the slot may be gone; then there is nobody to ask.
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = message;
        }
    });
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

thread_local! {
    /// Set while plugin code runs under [`guard`].
    static IN_GUARD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic caught by [`guard`] reaches the user as the host's error message;
/// this keeps the plugin's copy of the standard library from also printing it
/// ("thread panicked at ...") on the host's stderr. Other panics of the plugin
/// are printed as before.
fn quiet_panics_in_guard() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_GUARD.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
}

/// Drops a panic payload without letting a panic in its destructor escape.
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Runs `f`, turning its error or panic into a status and the last error (for
/// a panic, its message as it is: the host says which operation panicked).
fn guard(f: impl FnOnce() -> Result<(), Error>) -> Status {
    quiet_panics_in_guard();
    IN_GUARD.with(|g| g.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_GUARD.with(|g| g.set(false));
    match result {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(e)) => {
            let kind = e.kind;
            set_last_error(e.message);
            kind
        }
        Err(payload) => {
            set_last_error(panic_message(&*payload));
            drop_payload(payload);
            Status::Panic
        }
    }
}

/// A `Str` argument as a `&str`.
///
/// # Safety
///
/// Unless `s.len` is 0, `s.ptr` is null or points to `s.len` readable bytes that
/// stay valid and unchanged for `'a`.
unsafe fn str_arg<'a>(s: Str, what: &str) -> Result<&'a str, Error> {
    if s.len == 0 {
        return Ok("");
    }
    if s.ptr.is_null() {
        return Err(Error::invalid_argument(format!(
            "{what} is a null pointer with length {}",
            s.len
        )));
    }
    if s.len > isize::MAX as usize {
        return Err(Error::invalid_argument(format!(
            "{what} has an impossible length {}",
            s.len
        )));
    }
    // SAFETY: non-null, length within isize::MAX, and by the caller's contract
    // `len` readable bytes valid for 'a.
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
    std::str::from_utf8(bytes)
        .map_err(|e| Error::invalid_argument(format!("{what} is not UTF-8 ({e})")))
}

/// A `&'static str` as a `Str` (for the table).
fn static_str(s: &'static str) -> Str {
    Str {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

/// An empty `Buf` (null pointer).
pub fn empty_buf() -> Buf {
    Buf {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    }
}

/// Hands a `Vec<u8>` out as a `Buf` (empty vectors as a null pointer); the
/// plugin takes it back with [`free_buf`].
pub fn buf_from_vec(v: Vec<u8>) -> Buf {
    if v.is_empty() {
        return empty_buf();
    }
    let mut v = ManuallyDrop::new(v);
    Buf {
        ptr: v.as_mut_ptr(),
        len: v.len(),
        cap: v.capacity(),
    }
}

/// Frees a `Buf` made by [`buf_from_vec`] and leaves it empty (so freeing twice
/// is harmless).
///
/// # Safety
///
/// `buf` is empty (null pointer) or came from [`buf_from_vec`] in this library,
/// unchanged.
pub unsafe fn free_buf(buf: &mut Buf) {
    let b = std::mem::replace(buf, empty_buf());
    if b.ptr.is_null() {
        return;
    }
    // SAFETY: by the contract, ptr/len/cap are those of a Vec<u8> this library
    // allocated and gave up with ManuallyDrop; rebuilding it frees it once (the
    // Buf was emptied above).
    drop(unsafe { Vec::from_raw_parts(b.ptr, b.len, b.cap) });
}

/// What a source handle points to.
pub struct SourceCell<S> {
    source: S,
    poisoned: bool,
}

/// What a blob handle points to.
pub struct BlobCell<B> {
    blob: B,
    poisoned: bool,
}

fn poisoned(what: &str) -> Error {
    Error::new(format!(
        "this {what} is unusable: an earlier operation on it panicked"
    ))
}

/// The plugin's source type.
type SourceOf<P> = <P as Plugin>::Source;
/// The plugin's blob type.
type BlobOf<P> = <<P as Plugin>::Source as Source>::Blob;

/// `PluginV1::open` for plugin `P`.
///
/// # Safety
///
/// `location` is a valid [`Str`] for the duration of the call; `out` is null or
/// valid for writing a handle.
pub unsafe extern "C" fn open<P: Plugin>(location: Str, out: *mut SourceHandle) -> Status {
    guard(|| {
        if out.is_null() {
            return Err(Error::invalid_argument("open: the out-pointer is null"));
        }
        // SAFETY: the caller's contract: `location` is valid for this call.
        let location = unsafe { str_arg(location, "the location") }?;
        let source = P::open(location)?;
        let cell = Box::new(SourceCell {
            source,
            poisoned: false,
        });
        let handle: SourceHandle = Box::into_raw(cell).cast();
        // SAFETY: `out` is non-null and by the contract valid for writes.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// `PluginV1::close` for plugin `P`.
///
/// # Safety
///
/// `source` is null or a handle `open::<P>` returned, not yet closed; it is not
/// used again.
pub unsafe extern "C" fn close<P: Plugin>(source: SourceHandle) {
    if source.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: by the contract, a live handle from `open::<P>`, which is a
        // Box<SourceCell<P::Source>>; it is taken back exactly once, here.
        drop(unsafe { Box::from_raw(source.cast::<SourceCell<SourceOf<P>>>()) });
        Ok(())
    });
}

/// The source behind a handle, checked for null and poison.
///
/// # Safety
///
/// `source` is null or a live handle from `open::<P>` that no other thread uses
/// during `'a`.
unsafe fn source_cell<'a, P: Plugin>(
    source: SourceHandle,
) -> Result<&'a mut SourceCell<SourceOf<P>>, Error> {
    if source.is_null() {
        return Err(Error::invalid_argument("the source handle is null"));
    }
    // SAFETY: by the contract, a live Box<SourceCell<P::Source>> used by this
    // thread only (the ABI's one thread at a time per handle).
    let cell = unsafe { &mut *source.cast::<SourceCell<SourceOf<P>>>() };
    if cell.poisoned {
        return Err(poisoned("source"));
    }
    Ok(cell)
}

fn resolved_to_c(r: ResolvedImage) -> Resolved {
    Resolved {
        name: buf_from_vec(r.name.map(String::into_bytes).unwrap_or_default()),
        manifest: buf_from_vec(r.manifest),
        manifest_digest: buf_from_vec(r.manifest_digest.into_bytes()),
        root_digest: buf_from_vec(r.root_digest.into_bytes()),
        config: buf_from_vec(r.config),
    }
}

/// `PluginV1::resolve` for plugin `P`.
///
/// # Safety
///
/// `source` is null or a live handle from `open::<P>`, used by no other thread
/// during the call; `image` and `platform` are valid [`Str`]s for the call;
/// `out` is null or valid for writing a [`Resolved`].
pub unsafe extern "C" fn resolve<P: Plugin>(
    source: SourceHandle,
    image: Str,
    platform: Str,
    out: *mut Resolved,
) -> Status {
    let mut cell: Option<&mut SourceCell<SourceOf<P>>> = None;
    let status = guard(|| {
        // SAFETY: the caller's contract on `source`.
        let c = cell.insert(unsafe { source_cell::<P>(source) }?);
        if out.is_null() {
            return Err(Error::invalid_argument("resolve: the out-pointer is null"));
        }
        // SAFETY: the caller's contract: both strings are valid for this call.
        let image = unsafe { str_arg(image, "the image name") }?;
        // SAFETY: as above.
        let platform = unsafe { str_arg(platform, "the platform") }?;
        let image = (!image.is_empty()).then_some(image);
        let resolved = resolved_to_c(c.source.resolve(image, platform)?);
        // SAFETY: `out` is non-null and by the contract valid for writes; what
        // it held before is not ours to drop.
        unsafe { out.write(resolved) };
        Ok(())
    });
    if status == Status::Panic {
        if let Some(c) = cell {
            c.poisoned = true;
        }
    }
    status
}

/// `PluginV1::free_resolved` for plugin `P`.
///
/// # Safety
///
/// `resolved` is null or points to a [`Resolved`] that `resolve::<P>` wrote (or
/// one whose buffers are all empty); its buffers are not used afterwards.
pub unsafe extern "C" fn free_resolved<P: Plugin>(resolved: *mut Resolved) {
    if resolved.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: non-null, and by the contract a Resolved this library wrote,
        // exclusively ours for the call.
        let r = unsafe { &mut *resolved };
        for b in [
            &mut r.name,
            &mut r.manifest,
            &mut r.manifest_digest,
            &mut r.root_digest,
            &mut r.config,
        ] {
            // SAFETY: each Buf came from buf_from_vec in `resolve` (or is
            // empty); free_buf empties it, so a second free_resolved is harmless.
            unsafe { free_buf(b) };
        }
        Ok(())
    });
}

/// `PluginV1::open_blob` for plugin `P`.
///
/// # Safety
///
/// `source` as for [`resolve`]; `digest` is a valid [`Str`] for the call; `out`
/// is null or valid for writing a handle.
pub unsafe extern "C" fn open_blob<P: Plugin>(
    source: SourceHandle,
    digest: Str,
    size: u64,
    out: *mut BlobHandle,
) -> Status {
    let mut cell: Option<&mut SourceCell<SourceOf<P>>> = None;
    let status = guard(|| {
        // SAFETY: the caller's contract on `source`.
        let c = cell.insert(unsafe { source_cell::<P>(source) }?);
        if out.is_null() {
            return Err(Error::invalid_argument(
                "open_blob: the out-pointer is null",
            ));
        }
        // SAFETY: the caller's contract: `digest` is valid for this call.
        let digest = unsafe { str_arg(digest, "the blob digest") }?;
        let blob = c.source.open_blob(digest, size)?;
        let handle: BlobHandle = Box::into_raw(Box::new(BlobCell {
            blob,
            poisoned: false,
        }))
        .cast();
        // SAFETY: `out` is non-null and by the contract valid for writes.
        unsafe { out.write(handle) };
        Ok(())
    });
    if status == Status::Panic {
        if let Some(c) = cell {
            c.poisoned = true;
        }
    }
    status
}

/// `PluginV1::read_blob` for plugin `P`.
///
/// # Safety
///
/// `blob` is null or a live handle from `open_blob::<P>`, used by no other
/// thread during the call; `buf` is null or valid for reads and writes of `cap`
/// initialised bytes; `read` is null or valid for writing a `usize`.
pub unsafe extern "C" fn read_blob<P: Plugin>(
    blob: BlobHandle,
    buf: *mut u8,
    cap: usize,
    read: *mut usize,
) -> Status {
    let mut cell: Option<&mut BlobCell<BlobOf<P>>> = None;
    let status = guard(|| {
        if blob.is_null() {
            return Err(Error::invalid_argument("the blob handle is null"));
        }
        if read.is_null() {
            return Err(Error::invalid_argument(
                "read_blob: the out-pointer is null",
            ));
        }
        // SAFETY: by the contract, a live Box<BlobCell<Blob>> from open_blob::<P>,
        // used by this thread only.
        let c = cell.insert(unsafe { &mut *blob.cast::<BlobCell<BlobOf<P>>>() });
        if c.poisoned {
            return Err(poisoned("blob"));
        }
        if cap == 0 {
            // SAFETY: `read` is non-null and by the contract valid for writes.
            unsafe { read.write(0) };
            return Ok(());
        }
        if buf.is_null() {
            return Err(Error::invalid_argument(format!(
                "read_blob: the buffer is a null pointer with capacity {cap}"
            )));
        }
        if cap > isize::MAX as usize {
            return Err(Error::invalid_argument(format!(
                "read_blob: impossible buffer capacity {cap}"
            )));
        }
        // SAFETY: non-null, cap within isize::MAX, and by the contract `cap`
        // initialised bytes that only this call touches.
        let out = unsafe { std::slice::from_raw_parts_mut(buf, cap) };
        let n = loop {
            match c.blob.read(out) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from(e)),
            }
        };
        if n > cap {
            return Err(Error::new(format!(
                "the blob reader claims {n} bytes read into a {cap}-byte buffer"
            )));
        }
        // SAFETY: `read` is non-null and by the contract valid for writes.
        unsafe { read.write(n) };
        Ok(())
    });
    if status == Status::Panic {
        if let Some(c) = cell {
            c.poisoned = true;
        }
    }
    status
}

/// `PluginV1::close_blob` for plugin `P`.
///
/// # Safety
///
/// `blob` is null or a handle `open_blob::<P>` returned, not yet closed; it is
/// not used again.
pub unsafe extern "C" fn close_blob<P: Plugin>(blob: BlobHandle) {
    if blob.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: by the contract, a live handle from open_blob::<P>, which is a
        // Box<BlobCell<Blob>>; it is taken back exactly once, here.
        drop(unsafe { Box::from_raw(blob.cast::<BlobCell<BlobOf<P>>>()) });
        Ok(())
    });
}

/// `PluginV1::last_error`: copies this thread's last error message into `buf`
/// (at most `cap` bytes, no terminating NUL) and returns its full length, so a
/// caller can retry with a larger buffer. A null `buf` copies nothing.
///
/// # Safety
///
/// `buf` is null or valid for writing `cap` bytes.
pub unsafe extern "C" fn last_error(buf: *mut u8, cap: usize) -> usize {
    let copy = || {
        LAST_ERROR
            .try_with(|e| {
                let Ok(e) = e.try_borrow() else { return 0 };
                let n = e.len().min(cap);
                if !buf.is_null() && n > 0 {
                    // SAFETY: `buf` is non-null and by the contract valid for
                    // `cap >= n` bytes; the message is our own allocation, so the
                    // two cannot overlap.
                    unsafe { std::ptr::copy_nonoverlapping(e.as_ptr(), buf, n) };
                }
                e.len()
            })
            .unwrap_or(0)
    };
    catch_unwind(copy).unwrap_or(0)
}

/// The table of one plugin library, built on first use.
/// [`export_plugin!`](crate::export_plugin) keeps one in a `static`.
pub struct Table {
    cell: OnceLock<Built>,
}

/// A built table and the scheme array it points to.
struct Built {
    table: PluginV1,
    /// Pointed to by `table.schemes`; a boxed slice does not move.
    _schemes: Box<[Str]>,
}

// SAFETY: `Built` is never changed after it is made; its raw pointers point to
// `'static` strings and to its own boxed slice, all read-only, so sharing and
// sending it between threads is sound.
unsafe impl Send for Built {}
// SAFETY: as above.
unsafe impl Sync for Built {}

impl Table {
    /// An empty table, filled by the first [`Table::get`].
    pub const fn new() -> Self {
        Table {
            cell: OnceLock::new(),
        }
    }

    /// The table for `P`, built on the first call; null (with the reason as the
    /// last error) if building it panicked. Always call it with the same `P`.
    pub fn get<P: Plugin>(&'static self) -> *const PluginV1 {
        match catch_unwind(|| &self.cell.get_or_init(build::<P>).table) {
            Ok(t) => t,
            Err(payload) => {
                set_last_error(format!(
                    "building the plugin table panicked: {}",
                    panic_message(&*payload)
                ));
                drop_payload(payload);
                std::ptr::null()
            }
        }
    }
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

fn build<P: Plugin>() -> Built {
    let schemes: Box<[Str]> = P::SCHEMES.iter().map(|s| static_str(s)).collect();
    let table = PluginV1 {
        size: std::mem::size_of::<PluginV1>(),
        name: static_str(P::NAME),
        version: static_str(P::VERSION),
        schemes: if schemes.is_empty() {
            std::ptr::null()
        } else {
            schemes.as_ptr()
        },
        scheme_count: schemes.len(),
        open: open::<P>,
        close: close::<P>,
        resolve: resolve::<P>,
        free_resolved: free_resolved::<P>,
        open_blob: open_blob::<P>,
        read_blob: read_blob::<P>,
        close_blob: close_blob::<P>,
        last_error,
    };
    Built {
        table,
        _schemes: schemes,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::ABI_VERSION;

    /// A plugin whose behaviour the test chooses through names: `missing`
    /// is not found, `panic` panics, anything else works.
    struct TestPlugin;
    struct TestSource {
        location: String,
    }

    const BLOB: &[u8] = b"the quick brown fox jumps over the lazy dog";

    /// A reader that panics on its first read.
    struct PanickyReader;
    impl Read for PanickyReader {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("reader exploded")
        }
    }

    /// Either a good blob or a panicking one.
    enum TestBlob {
        Good(Cursor<&'static [u8]>),
        Panicky(PanickyReader),
    }
    impl Read for TestBlob {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self {
                TestBlob::Good(c) => c.read(buf),
                TestBlob::Panicky(p) => p.read(buf),
            }
        }
    }

    impl Plugin for TestPlugin {
        type Source = TestSource;
        const NAME: &'static str = "test";
        const VERSION: &'static str = "1.2.3";
        const SCHEMES: &'static [&'static str] = &["test", "test-too"];
        fn open(location: &str) -> Result<TestSource, Error> {
            match location {
                "missing" => Err(Error::not_found("no such place: missing")),
                "panic" => panic!("boom in open"),
                "fail" => Err(Error::from(std::io::Error::other("disk on fire"))),
                _ => Ok(TestSource {
                    location: location.to_owned(),
                }),
            }
        }
    }

    impl Source for TestSource {
        type Blob = TestBlob;
        fn resolve(&self, image: Option<&str>, platform: &str) -> Result<ResolvedImage, Error> {
            match image {
                Some("panic") => panic!("boom in resolve"),
                Some("missing") => Err(Error::not_found(format!(
                    "{} has no image named missing (it holds: only)",
                    self.location
                ))),
                _ => Ok(ResolvedImage {
                    name: image.map(str::to_owned),
                    manifest: format!("manifest for {platform}").into_bytes(),
                    manifest_digest: "sha256:m".to_owned(),
                    root_digest: "sha256:r".to_owned(),
                    config: Vec::new(),
                }),
            }
        }
        fn open_blob(&self, digest: &str, size: u64) -> Result<TestBlob, Error> {
            match digest {
                "sha256:good" if size == BLOB.len() as u64 => Ok(TestBlob::Good(Cursor::new(BLOB))),
                "sha256:panicky" => Ok(TestBlob::Panicky(PanickyReader)),
                "sha256:panic" => panic!("boom in open_blob"),
                _ => Err(Error::not_found(format!("no blob {digest}"))),
            }
        }
    }

    fn s(v: &str) -> Str {
        Str {
            ptr: v.as_ptr(),
            len: v.len(),
        }
    }

    fn bytes(v: &[u8]) -> Str {
        Str {
            ptr: v.as_ptr(),
            len: v.len(),
        }
    }

    fn last() -> String {
        // SAFETY: a null buffer is allowed and copies nothing.
        let n = unsafe { last_error(std::ptr::null_mut(), 0) };
        let mut buf = vec![0u8; n];
        // SAFETY: `buf` is valid for `n` bytes.
        let m = unsafe { last_error(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(m, n);
        String::from_utf8(buf).unwrap()
    }

    fn empty_resolved() -> Resolved {
        Resolved {
            name: empty_buf(),
            manifest: empty_buf(),
            manifest_digest: empty_buf(),
            root_digest: empty_buf(),
            config: empty_buf(),
        }
    }

    fn buf_bytes(b: &Buf) -> Vec<u8> {
        if b.len == 0 {
            return Vec::new();
        }
        // SAFETY: a non-empty Buf from buf_from_vec holds `len` bytes.
        unsafe { std::slice::from_raw_parts(b.ptr, b.len) }.to_vec()
    }

    static TABLE: Table = Table::new();

    fn table() -> &'static PluginV1 {
        let t = TABLE.get::<TestPlugin>();
        assert!(!t.is_null());
        // SAFETY: a non-null table from a static Table lives forever.
        unsafe { &*t }
    }

    fn open_ok(t: &PluginV1, location: &str) -> SourceHandle {
        let mut h: SourceHandle = std::ptr::null_mut();
        // SAFETY: valid string and out-pointer.
        assert_eq!(unsafe { (t.open)(s(location), &mut h) }, Status::Ok);
        assert!(!h.is_null());
        h
    }

    fn read_all(t: &PluginV1, blob: BlobHandle, chunk: usize) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let mut n = usize::MAX;
            // SAFETY: live blob handle, `buf` valid for `chunk` bytes, valid out-pointer.
            let st = unsafe { (t.read_blob)(blob, buf.as_mut_ptr(), buf.len(), &mut n) };
            if st != Status::Ok {
                return Err(st);
            }
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn table_describes_the_plugin() {
        let t = table();
        assert_eq!(t.size, std::mem::size_of::<PluginV1>());
        // Built once: the same table every time.
        assert!(std::ptr::eq(t, table()));
        let text = |x: &Str| {
            // SAFETY: the table's strings are 'static.
            std::str::from_utf8(unsafe { std::slice::from_raw_parts(x.ptr, x.len) })
                .unwrap()
                .to_owned()
        };
        assert_eq!(text(&t.name), "test");
        assert_eq!(text(&t.version), "1.2.3");
        assert_eq!(t.scheme_count, 2);
        // SAFETY: `schemes` points to `scheme_count` Strs.
        let schemes = unsafe { std::slice::from_raw_parts(t.schemes, t.scheme_count) };
        let schemes: Vec<String> = schemes.iter().map(text).collect();
        assert_eq!(schemes, ["test", "test-too"]);
        assert_eq!(ABI_VERSION, 1);
    }

    #[test]
    fn happy_path() {
        let t = table();
        let src = open_ok(t, "somewhere");

        let mut r = empty_resolved();
        // SAFETY: live handle, valid strings and out-pointer.
        let st = unsafe { (t.resolve)(src, s("img"), s("linux/amd64"), &mut r) };
        assert_eq!(st, Status::Ok);
        assert_eq!(buf_bytes(&r.name), b"img");
        assert_eq!(buf_bytes(&r.manifest), b"manifest for linux/amd64");
        assert_eq!(buf_bytes(&r.manifest_digest), b"sha256:m");
        assert_eq!(buf_bytes(&r.root_digest), b"sha256:r");
        // An empty config crosses as a null pointer.
        assert!(r.config.ptr.is_null() && r.config.len == 0);
        // SAFETY: `r` was written by resolve; freeing twice is harmless.
        unsafe {
            (t.free_resolved)(&mut r);
            (t.free_resolved)(&mut r);
        }
        assert!(r.manifest.ptr.is_null());

        // An empty image name is "none": the source's only image.
        let mut r = empty_resolved();
        // SAFETY: as above; a zero-length Str may have a null pointer.
        let st = unsafe {
            (t.resolve)(
                src,
                Str {
                    ptr: std::ptr::null(),
                    len: 0,
                },
                s("linux/arm64"),
                &mut r,
            )
        };
        assert_eq!(st, Status::Ok);
        assert!(r.name.ptr.is_null());
        // SAFETY: written by resolve.
        unsafe { (t.free_resolved)(&mut r) };

        let mut blob: BlobHandle = std::ptr::null_mut();
        // SAFETY: live handle, valid string and out-pointer.
        let st = unsafe { (t.open_blob)(src, s("sha256:good"), BLOB.len() as u64, &mut blob) };
        assert_eq!(st, Status::Ok);
        assert_eq!(read_all(t, blob, 5).unwrap(), BLOB);
        // cap 0 reads nothing and succeeds.
        let mut n = 7;
        // SAFETY: cap 0 needs no buffer.
        let st = unsafe { (t.read_blob)(blob, std::ptr::null_mut(), 0, &mut n) };
        assert_eq!((st, n), (Status::Ok, 0));
        // SAFETY: each handle closed once, the blob first; null is a no-op.
        unsafe {
            (t.close_blob)(blob);
            (t.close)(src);
            (t.close)(std::ptr::null_mut());
            (t.close_blob)(std::ptr::null_mut());
        }
    }

    #[test]
    fn errors_and_not_found() {
        let t = table();
        let mut h: SourceHandle = std::ptr::null_mut();
        // SAFETY: valid string and out-pointer.
        assert_eq!(unsafe { (t.open)(s("missing"), &mut h) }, Status::NotFound);
        assert!(h.is_null(), "out-parameters are untouched on failure");
        assert_eq!(last(), "no such place: missing");
        // SAFETY: as above.
        assert_eq!(unsafe { (t.open)(s("fail"), &mut h) }, Status::Error);
        assert_eq!(last(), "disk on fire");

        let src = open_ok(t, "here");
        let mut r = empty_resolved();
        // SAFETY: live handle, valid strings and out-pointer.
        let st = unsafe { (t.resolve)(src, s("missing"), s("linux/amd64"), &mut r) };
        assert_eq!(st, Status::NotFound);
        assert!(last().contains("here has no image named missing"));
        assert!(r.manifest.ptr.is_null());
        let mut blob: BlobHandle = std::ptr::null_mut();
        // SAFETY: as above.
        let st = unsafe { (t.open_blob)(src, s("sha256:nope"), 1, &mut blob) };
        assert_eq!(st, Status::NotFound);
        assert_eq!(last(), "no blob sha256:nope");
        assert!(blob.is_null());
        // A success leaves the last error alone.
        // SAFETY: as above.
        let st = unsafe { (t.resolve)(src, s(""), s("linux/amd64"), &mut r) };
        assert_eq!(st, Status::Ok);
        assert_eq!(last(), "no blob sha256:nope");
        // SAFETY: written by resolve; handle closed once.
        unsafe {
            (t.free_resolved)(&mut r);
            (t.close)(src);
        }
    }

    #[test]
    fn panics_are_caught_and_poison_the_handle() {
        let t = table();
        let mut h: SourceHandle = std::ptr::null_mut();
        // SAFETY: valid string and out-pointer.
        assert_eq!(unsafe { (t.open)(s("panic"), &mut h) }, Status::Panic);
        assert_eq!(last(), "boom in open");
        assert!(h.is_null());

        // A panicking read poisons the blob, not the source.
        let src = open_ok(t, "here");
        let mut blob: BlobHandle = std::ptr::null_mut();
        // SAFETY: live handle, valid string and out-pointer.
        let st = unsafe { (t.open_blob)(src, s("sha256:panicky"), 0, &mut blob) };
        assert_eq!(st, Status::Ok);
        assert_eq!(read_all(t, blob, 8), Err(Status::Panic));
        assert_eq!(last(), "reader exploded");
        assert_eq!(read_all(t, blob, 8), Err(Status::Error));
        assert!(last().contains("blob is unusable"), "{}", last());
        // SAFETY: closed once; closing a poisoned blob works.
        unsafe { (t.close_blob)(blob) };

        let mut blob: BlobHandle = std::ptr::null_mut();
        // SAFETY: as above.
        let st = unsafe { (t.open_blob)(src, s("sha256:panic"), 0, &mut blob) };
        assert_eq!(st, Status::Panic);
        assert_eq!(last(), "boom in open_blob");

        // The source is poisoned now: even a good request fails.
        let mut r = empty_resolved();
        // SAFETY: as above.
        let st = unsafe { (t.resolve)(src, s("img"), s("linux/amd64"), &mut r) };
        assert_eq!(st, Status::Error);
        assert!(last().contains("source is unusable"), "{}", last());
        // SAFETY: closed once.
        unsafe { (t.close)(src) };

        let src = open_ok(t, "here");
        // SAFETY: as above.
        let st = unsafe { (t.resolve)(src, s("panic"), s("linux/amd64"), &mut r) };
        assert_eq!(st, Status::Panic);
        assert_eq!(last(), "boom in resolve");
        // SAFETY: closed once.
        unsafe { (t.close)(src) };
    }

    #[test]
    fn null_pointers_are_refused() {
        let t = table();
        // SAFETY: every call below passes a null pointer where one is refused.
        unsafe {
            assert_eq!(
                (t.open)(s("x"), std::ptr::null_mut()),
                Status::InvalidArgument
            );
            assert!(last().contains("out-pointer is null"));
            let mut h: SourceHandle = std::ptr::null_mut();
            let dangling = Str {
                ptr: std::ptr::null(),
                len: 3,
            };
            assert_eq!((t.open)(dangling, &mut h), Status::InvalidArgument);
            assert!(last().contains("the location is a null pointer with length 3"));

            let mut r = empty_resolved();
            let st = (t.resolve)(std::ptr::null_mut(), s("i"), s("p"), &mut r);
            assert_eq!(st, Status::InvalidArgument);
            assert!(last().contains("source handle is null"));
            let src = open_ok(t, "here");
            let st = (t.resolve)(src, s("i"), s("p"), std::ptr::null_mut());
            assert_eq!(st, Status::InvalidArgument);
            let mut b: BlobHandle = std::ptr::null_mut();
            let st = (t.open_blob)(std::ptr::null_mut(), s("sha256:good"), 1, &mut b);
            assert_eq!(st, Status::InvalidArgument);
            let st = (t.open_blob)(src, s("sha256:good"), 43, std::ptr::null_mut());
            assert_eq!(st, Status::InvalidArgument);

            let mut n = 0;
            let mut buf = [0u8; 4];
            let st = (t.read_blob)(std::ptr::null_mut(), buf.as_mut_ptr(), 4, &mut n);
            assert_eq!(st, Status::InvalidArgument);
            assert_eq!((t.open_blob)(src, s("sha256:good"), 43, &mut b), Status::Ok);
            let st = (t.read_blob)(b, std::ptr::null_mut(), 4, &mut n);
            assert_eq!(st, Status::InvalidArgument);
            assert!(last().contains("buffer is a null pointer"));
            let st = (t.read_blob)(b, buf.as_mut_ptr(), 4, std::ptr::null_mut());
            assert_eq!(st, Status::InvalidArgument);
            // The refusals did not poison anything.
            assert_eq!(read_all(t, b, 4).unwrap(), BLOB);
            (t.close_blob)(b);
            (t.free_resolved)(std::ptr::null_mut());
            (t.close)(src);
        }
    }

    #[test]
    fn bad_utf8_is_refused() {
        let t = table();
        let mut h: SourceHandle = std::ptr::null_mut();
        // SAFETY: valid (if not UTF-8) bytes and out-pointer.
        let st = unsafe { (t.open)(bytes(b"caf\xe9"), &mut h) };
        assert_eq!(st, Status::InvalidArgument);
        assert!(
            last().starts_with("the location is not UTF-8"),
            "{}",
            last()
        );
        assert!(h.is_null());

        let src = open_ok(t, "here");
        let mut r = empty_resolved();
        // SAFETY: as above.
        let st = unsafe { (t.resolve)(src, s("img"), bytes(b"linux/\xff"), &mut r) };
        assert_eq!(st, Status::InvalidArgument);
        assert!(last().starts_with("the platform is not UTF-8"));
        let mut b: BlobHandle = std::ptr::null_mut();
        // SAFETY: as above.
        let st = unsafe { (t.open_blob)(src, bytes(b"sha256:\xc3"), 1, &mut b) };
        assert_eq!(st, Status::InvalidArgument);
        assert!(last().starts_with("the blob digest is not UTF-8"));
        // SAFETY: closed once.
        unsafe { (t.close)(src) };
    }

    #[test]
    fn last_error_truncates_and_reports_the_full_length() {
        set_last_error("0123456789".to_owned());
        let mut buf = [b'#'; 16];
        // SAFETY: `buf` is valid for 4 (and 16) bytes.
        let n = unsafe { last_error(buf.as_mut_ptr(), 4) };
        assert_eq!(n, 10);
        assert_eq!(&buf[..6], b"0123##");
        // SAFETY: as above.
        let n = unsafe { last_error(buf.as_mut_ptr(), 16) };
        assert_eq!(n, 10);
        assert_eq!(&buf[..12], b"0123456789##");
        // SAFETY: a null buffer copies nothing, whatever the capacity.
        assert_eq!(unsafe { last_error(std::ptr::null_mut(), 100) }, 10);
        // Per thread: another thread has its own (empty) last error.
        let other = std::thread::spawn(|| {
            // SAFETY: null buffer.
            unsafe { last_error(std::ptr::null_mut(), 0) }
        })
        .join()
        .unwrap();
        assert_eq!(other, 0);
    }

    #[test]
    fn bufs_round_trip() {
        let mut b = buf_from_vec(Vec::with_capacity(32));
        assert!(b.ptr.is_null() && b.len == 0 && b.cap == 0);
        let mut v = Vec::with_capacity(100);
        v.extend_from_slice(b"abc");
        let mut c = buf_from_vec(v);
        assert_eq!((c.len, c.cap), (3, 100));
        assert_eq!(buf_bytes(&c), b"abc");
        // SAFETY: both came from buf_from_vec; freeing empties them.
        unsafe {
            free_buf(&mut b);
            free_buf(&mut c);
            free_buf(&mut c);
        }
        assert!(c.ptr.is_null());
    }
}

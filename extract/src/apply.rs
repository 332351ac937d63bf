//! The layer applier: tar entries of successive layers applied to a target tree with
//! OCI whiteout semantics, confined to the target root.
//!
//! Confinement rule: every parent directory of an entry is resolved inside the root
//! (absolute symlinks are taken relative to the root, `..` stops at the root), and
//! the last component is never followed. So every create, replace and remove happens
//! at a path whose every directory is a real directory inside the root, whatever the
//! archive says. The target is a fresh temporary directory that only we write to.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::guard::{Refused, SparseMap, TarGuard};
use super::path::{self, PathFilter, Relation, Whiteout};
use locald_core::cancel::Cancel;
use locald_core::error::{Error, Result};

/// How many symlinks one path resolution may follow (as the kernel's ELOOP limit).
const MAX_SYMLINKS: usize = 40;
/// Copy buffer for file contents.
const COPY_BUF: usize = 128 * 1024;

/// What one extraction did, for summaries and tests.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// Regular files written.
    pub files: u64,
    /// Directories made or updated.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Hard links made.
    pub hardlinks: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes skipped because we are not privileged.
    pub skipped_devices: u64,
    /// Entries outside the path filter.
    pub filtered_out: u64,
    /// Bytes of file content written (of a sparse file, its data: its holes are
    /// not written).
    pub bytes: u64,
    /// Each applied layer's entries, when asked for (`None` for a layer that
    /// could not be listed).
    #[serde(skip)]
    pub listings: Vec<Option<Vec<Listed>>>,
}

/// What one layer entry was, by its path in the image (as written in the layer,
/// normalised, not resolved through symlinks): the cache's record of which
/// paths each layer touches, so an updated image can be applied incrementally.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    /// `a/b/c` (`""` for the root).
    #[serde(rename = "p")]
    pub path: String,
    /// What the entry is.
    #[serde(rename = "k")]
    pub kind: ListedKind,
    /// A hard link's target path.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A directory's `[mode, uid, gid, mtime, xattrs]` from its header (the last
    /// is a hash of its extended attributes, 0 for none).
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Vec<i64>>,
}

/// The kind of a [`Listed`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ListedKind {
    /// A directory.
    #[serde(rename = "d")]
    Dir,
    /// A regular file.
    #[serde(rename = "f")]
    File,
    /// A symbolic link.
    #[serde(rename = "l")]
    Symlink,
    /// A hard link.
    #[serde(rename = "h")]
    Hardlink,
    /// A whiteout of this path.
    #[serde(rename = "w")]
    Whiteout,
    /// An opaque marker in this directory.
    #[serde(rename = "o")]
    Opaque,
    /// A device, FIFO or unsupported entry.
    #[serde(rename = "x")]
    Other,
}

#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: i64,
}

/// Applies layers, in order, to one target root.
pub struct Applier {
    root: PathBuf,
    filter: PathFilter,
    privileged: bool,
    /// Directories' final mode and mtime, applied last (keys are resolved paths
    /// relative to the root).
    dir_meta: BTreeMap<PathBuf, DirMeta>,
    /// Resolved paths written by the current layer, with their ancestors.
    touched: HashSet<PathBuf>,
    stats: Stats,
    buf: Vec<u8>,
    cancel: Cancel,
    /// The current layer's entries, when asked for ([`Applier::with_listing`]);
    /// `None` inside once a path is not UTF-8 (the layer cannot be listed).
    listing: Option<Option<Vec<Listed>>>,
    /// Recently written large files, already asked to leave the page cache once
    /// (which starts their write-back); asked again, which drops them once clean,
    /// when [`BEHIND_KEEP`] more bytes of large files were written. See
    /// [`locald_core::fsutil::WriteBehind`] for why.
    behind: std::collections::VecDeque<(fs::File, u64)>,
    behind_bytes: u64,
}

/// Files at least this large are asked out of the page cache once written.
const BEHIND_MIN: u64 = 1 << 20;
/// Bytes of large files written between the two requests.
const BEHIND_KEEP: u64 = 64 << 20;

impl Applier {
    /// An applier writing under `root`, which must exist and be empty.
    pub fn new(root: impl Into<PathBuf>, filter: PathFilter) -> Self {
        Applier {
            root: root.into(),
            filter,
            privileged: rustix::process::geteuid().is_root(),
            dir_meta: BTreeMap::new(),
            touched: HashSet::new(),
            stats: Stats::default(),
            buf: vec![0; COPY_BUF],
            cancel: Cancel::new(),
            listing: None,
            behind: std::collections::VecDeque::new(),
            behind_bytes: 0,
        }
    }

    /// Asks a large file just written out of the page cache, and the one written
    /// [`BEHIND_KEEP`] bytes ago again (see the `behind` field).
    fn write_behind(&mut self, file: fs::File, len: u64) {
        if len < BEHIND_MIN {
            return;
        }
        locald_core::fsutil::drop_cached(&file, 0, len);
        self.behind.push_back((file, len));
        self.behind_bytes += len;
        // The file just written stays at least until the next one (its pages are
        // still dirty: asking again now would only repeat the first request).
        while self.behind_bytes > BEHIND_KEEP && self.behind.len() > 1 {
            let Some((old, old_len)) = self.behind.pop_front() else {
                break;
            };
            locald_core::fsutil::drop_cached(&old, 0, old_len);
            self.behind_bytes -= old_len;
        }
    }

    /// Records every applied entry of each layer; see [`Applier::take_listing`].
    pub fn with_listing(mut self) -> Self {
        self.listing = Some(Some(Vec::new()));
        self
    }

    /// The entries of the layer applied last (and starts a new list); `None`
    /// when listing is off or a path of the layer is not UTF-8.
    pub fn take_listing(&mut self) -> Option<Vec<Listed>> {
        let taken = self.listing.as_mut()?.replace(Vec::new());
        taken
    }

    fn list(
        &mut self,
        comps: &[OsString],
        kind: ListedKind,
        link: Option<&[OsString]>,
        header: Option<(&tar::Header, i64)>,
    ) {
        let Some(Some(entries)) = &mut self.listing else {
            return;
        };
        let join = |c: &[OsString]| -> Option<String> {
            let parts: Option<Vec<&str>> = c.iter().map(|p| p.to_str()).collect();
            parts.map(|p| p.join("/"))
        };
        let (Some(path), link) = (join(comps), link.map(join)) else {
            self.listing = Some(None);
            return;
        };
        if link == Some(None) {
            self.listing = Some(None);
            return;
        }
        let meta = header.map(|(h, xattrs)| {
            vec![
                h.mode().unwrap_or(0) as i64,
                h.uid().unwrap_or(0) as i64,
                h.gid().unwrap_or(0) as i64,
                h.mtime().unwrap_or(0) as i64,
                xattrs,
            ]
        });
        entries.push(Listed {
            path,
            kind,
            link: link.flatten(),
            meta,
        });
    }

    /// Records an entry that passed the filter (only called with listing on).
    fn list_entry<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        comps: &[OsString],
        header: &tar::Header,
        xattrs: &[(OsString, Vec<u8>)],
    ) {
        match header.entry_type() {
            EntryType::Directory => self.list(
                comps,
                ListedKind::Dir,
                None,
                Some((header, xattr_hash(xattrs))),
            ),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.list(comps, ListedKind::File, None, None)
            }
            EntryType::Symlink => self.list(comps, ListedKind::Symlink, None, None),
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .and_then(|t| path::normalise(&t).ok());
                match target {
                    Some(t) => self.list(comps, ListedKind::Hardlink, Some(&t), None),
                    None => self.listing = Some(None),
                }
            }
            _ => self.list(comps, ListedKind::Other, None, None),
        }
    }

    /// Stops with [`Error::Cancelled`] once `cancel` is set.
    pub fn with_cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    /// Applies one uncompressed layer tar stream. Returns the stream, read up to the
    /// end of the archive, so the caller can drain and verify it.
    ///
    /// The stream reaches the tar crate through a [`TarGuard`], which refuses
    /// oversized metadata entries before the tar crate holds them in memory and
    /// hands over GNU sparse entries as their data plus a map (see
    /// [`super::guard`]).
    pub fn apply_layer<R: Read>(&mut self, tar_stream: R) -> Result<R> {
        self.touched.clear();
        let guard = TarGuard::new(tar_stream);
        let shared = guard.shared();
        let mut archive = tar::Archive::new(guard);
        let entries = archive.entries().map_err(Error::Tar)?;
        // The name of the entry before, for refusals of unnamed headers.
        let mut previous: Option<Vec<u8>> = None;
        for entry in entries {
            self.cancel.check()?;
            let mut entry = entry.map_err(|e| tar_error(e, previous.as_deref()))?;
            let raw_name = entry.path_bytes().into_owned();
            let sparse = shared
                .borrow_mut()
                .take_entry(entry.raw_header_position())
                .map_err(|e| Error::Tar(io::Error::other(e)))?;
            self.apply_entry(&mut entry, &raw_name, sparse)
                .map_err(|e| match e {
                    e @ (Error::BadEntry { .. } | Error::Tar(_) | Error::Cancelled) => e,
                    other => Error::Entry {
                        entry: String::from_utf8_lossy(&raw_name).into_owned(),
                        source: Box::new(other),
                    },
                })?;
            previous = Some(raw_name);
        }
        Ok(archive.into_inner().into_inner())
    }

    /// Sets directory modes and mtimes (last, since writing into a directory changes
    /// its mtime) and returns what was done.
    pub fn finish(self) -> Result<Stats> {
        // Deepest first, so a read-only parent does not stop us changing its children.
        for (rel, meta) in self.dir_meta.iter().rev() {
            let p = self.root.join(rel);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            fs::set_permissions(&p, fs::Permissions::from_mode(meta.mode))
                .map_err(Error::io("set permissions of", &p))?;
            let t = filetime::FileTime::from_unix_time(meta.mtime, 0);
            filetime::set_symlink_file_times(&p, t, t).map_err(Error::io("set times of", &p))?;
        }
        Ok(self.stats)
    }

    fn bad(raw: &[u8], reason: impl Into<String>) -> Error {
        Error::BadEntry {
            entry: String::from_utf8_lossy(raw).into_owned(),
            reason: reason.into(),
        }
    }

    /// Applies one entry; `sparse` is its map when it is a GNU sparse file (whose
    /// data regions the entry reads out, one after the other).
    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        sparse: Option<SparseMap>,
    ) -> Result<()> {
        let kind = entry.header().entry_type();
        if kind == EntryType::GNUSparse {
            // The guard hands every GNU sparse entry over as a regular file, so
            // the tar crate never expands holes into zeros.
            return Err(Self::bad(
                raw,
                "a GNU sparse entry the stream guard did not see",
            ));
        }
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let comps = path::normalise(raw).map_err(|r| Self::bad(raw, r))?;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): only its metadata can change. Unprivileged,
            // the root keeps its private 0700 mode, so an image's world-writable
            // directories are out of other local users' reach.
            if kind.is_dir() {
                if self.listing.is_some() {
                    let header = entry.header().clone();
                    let xattrs = xattrs_of(entry).map_err(Error::Tar)?;
                    self.list(
                        &[],
                        ListedKind::Dir,
                        None,
                        Some((&header, xattr_hash(&xattrs))),
                    );
                }
                if self.privileged {
                    let mode = self.mode_of(entry.header())?;
                    let mtime = entry.header().mtime().unwrap_or(0) as i64;
                    self.chown(Path::new(""), entry.header())?;
                    self.dir_meta
                        .insert(PathBuf::new(), DirMeta { mode, mtime });
                }
                return Ok(());
            }
            return Err(Self::bad(raw, "a non-directory entry for the image root"));
        };
        if parent
            .iter()
            .any(|c| path::whiteout(c) == Whiteout::Metadata)
        {
            // Inside an AUFS bookkeeping directory (`.wh..wh.plnk/...`).
            return Ok(());
        }
        match path::whiteout(name) {
            Whiteout::No => {}
            Whiteout::Metadata => return Ok(()),
            Whiteout::Invalid => {
                return Err(Self::bad(
                    raw,
                    "a whiteout must name a file: '.wh.', '.wh..' and '.wh...' are not allowed",
                ));
            }
            Whiteout::Opaque => {
                if self.filter.relation(parent) == Relation::Outside {
                    return Ok(());
                }
                self.stats.whiteouts += 1;
                self.list(parent, ListedKind::Opaque, None, None);
                if let Some(dir) = self.resolve_dir(parent, false)? {
                    self.prune_lower(&dir)?;
                }
                return Ok(());
            }
            Whiteout::Remove(target) => {
                let mut logical = parent.to_vec();
                logical.push(target.to_owned());
                if self.filter.relation(&logical) == Relation::Outside {
                    return Ok(());
                }
                self.stats.whiteouts += 1;
                self.list(&logical, ListedKind::Whiteout, None, None);
                let Some(dir) = self.resolve_dir(parent, false)? else {
                    return Ok(());
                };
                let victim = dir.join(target);
                if self.touched.contains(&victim) {
                    // Written by this same layer: whiteouts only hide lower layers.
                    if self.lstat(&victim)?.is_some_and(|m| m.is_dir()) {
                        self.prune_lower(&victim)?;
                    }
                } else {
                    self.remove(&victim)?;
                }
                return Ok(());
            }
        }
        let relation = self.filter.relation(&comps);
        match relation {
            Relation::Outside => {
                self.stats.filtered_out += 1;
                return Ok(());
            }
            Relation::Ancestor if !kind.is_dir() && !kind.is_symlink() => {
                self.stats.filtered_out += 1;
                return Ok(());
            }
            _ => {}
        }
        let dir = self
            .resolve_dir(parent, true)?
            .ok_or_else(|| Self::bad(raw, "its parent directory could not be made"))?;
        let rel = dir.join(name);
        let full = self.root.join(&rel);
        let header = entry.header().clone();
        let xattrs = xattrs_of(entry).map_err(Error::Tar)?;
        if self.listing.is_some() {
            self.list_entry(entry, &comps, &header, &xattrs);
        }
        match kind {
            EntryType::Directory => {
                match self.lstat(&rel)? {
                    // The upper entry's metadata replaces the lower one's.
                    Some(m) if m.is_dir() => self.clear_xattrs(&rel, &xattrs)?,
                    Some(_) => {
                        self.remove(&rel)?;
                        self.mkdir(&rel)?;
                    }
                    None => self.mkdir(&rel)?,
                }
                self.chown(&rel, &header)?;
                self.set_xattrs(&rel, &xattrs)?;
                let mode = self.mode_of(&header)?;
                let mtime = header.mtime().unwrap_or(0) as i64;
                self.dir_meta.insert(rel.clone(), DirMeta { mode, mtime });
                self.stats.dirs += 1;
            }
            EntryType::Regular | EntryType::Continuous => {
                if sparse.is_none() && has_pax_sparse_records(entry) {
                    tracing::warn!(
                        "{} is a GNU sparse file in PAX format (GNU.sparse.* records), which \
                         is not supported: extracted as stored (its data regions back to back)",
                        path::display(&comps)
                    );
                }
                self.replace(&rel)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&full)
                    .map_err(Error::io("create file", &full))?;
                let copied = match &sparse {
                    None => copy(
                        entry,
                        &mut locald_core::fsutil::WriteBehind::new(&mut file),
                        &mut self.buf,
                        &self.cancel,
                    )
                    .map(|n| (n, n)),
                    Some(map) => copy_sparse(entry, &file, map, &mut self.buf, &self.cancel)
                        .map(|n| (n, map.size)),
                };
                let (n, len) = copied.map_err(|e| match e {
                    CopyError::Cancelled => Error::Cancelled,
                    CopyError::Read(e) => Error::Tar(e),
                    CopyError::Write(e) => Error::Io {
                        op: "write",
                        path: full.clone(),
                        source: e,
                    },
                })?;
                self.stats.bytes += n;
                self.write_behind(file, len);
                // Owner, then xattrs (chown clears file capabilities; a read-only
                // mode would refuse user.* xattrs), then mode.
                self.chown(&rel, &header)?;
                self.set_xattrs(&rel, &xattrs)?;
                let mode = self.mode_of(&header)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                    .map_err(Error::io("set permissions of", &full))?;
                self.set_mtime(&rel, &header)?;
                self.stats.files += 1;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Self::bad(raw, "a symlink without a target"))?
                    .into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(Self::bad(
                        raw,
                        "a symlink with an empty or NUL-containing target",
                    ));
                }
                self.replace(&rel)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
                    .map_err(Error::io("create symlink", &full))?;
                self.chown(&rel, &header)?;
                self.set_xattrs(&rel, &xattrs)?;
                self.set_mtime(&rel, &header)?;
                self.stats.symlinks += 1;
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| Self::bad(raw, "a hard link without a target"))?
                    .into_owned();
                let target = path::normalise(&target_raw).map_err(|r| {
                    Self::bad(
                        raw,
                        format!(
                            "hard link target {:?}: {r}",
                            String::from_utf8_lossy(&target_raw)
                        ),
                    )
                })?;
                let Some((tname, tparent)) = target.split_last() else {
                    return Err(Self::bad(raw, "a hard link to the image root"));
                };
                let source = self.resolve_dir(tparent, false)?.map(|d| d.join(tname));
                let source_meta = match &source {
                    Some(s) => self.lstat(s)?,
                    None => None,
                };
                let (source, meta) = match (source, source_meta) {
                    (Some(s), Some(m)) => (s, m),
                    _ if self.filter.relation(&target) != Relation::Inside => {
                        tracing::warn!(
                            "skipped hard link {} -> {}: its target is outside the extracted paths ({})",
                            path::display(&comps),
                            path::display(&target),
                            self.filter.paths().join(", ")
                        );
                        self.stats.filtered_out += 1;
                        return Ok(());
                    }
                    _ => {
                        return Err(Self::bad(
                            raw,
                            format!(
                                "hard link to {}, which does not exist in this or a lower layer",
                                path::display(&target)
                            ),
                        ))
                    }
                };
                if meta.is_dir() {
                    return Err(Self::bad(raw, "a hard link to a directory"));
                }
                if source == rel {
                    return Ok(());
                }
                self.replace(&rel)?;
                fs::hard_link(self.root.join(&source), &full)
                    .map_err(Error::io("create hard link", &full))?;
                self.stats.hardlinks += 1;
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                if kind != EntryType::Fifo && !self.privileged {
                    tracing::debug!(
                        "skipped device node {} (not running as root)",
                        path::display(&comps)
                    );
                    self.stats.skipped_devices += 1;
                    return Ok(());
                }
                self.replace(&rel)?;
                let (ftype, dev) = match kind {
                    EntryType::Fifo => (rustix::fs::FileType::Fifo, 0),
                    EntryType::Char => (rustix::fs::FileType::CharacterDevice, self.dev(&header)?),
                    _ => (rustix::fs::FileType::BlockDevice, self.dev(&header)?),
                };
                let mode = self.mode_of(&header)?;
                match rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &full,
                    ftype,
                    rustix::fs::Mode::from_raw_mode(mode & 0o777),
                    dev,
                ) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::PERM) if kind != EntryType::Fifo => {
                        tracing::debug!(
                            "skipped device node {}: not permitted here",
                            path::display(&comps)
                        );
                        self.stats.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(Error::io("create special file", &full)(e.into())),
                }
                self.chown(&rel, &header)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                    .map_err(Error::io("set permissions of", &full))?;
                self.set_xattrs(&rel, &xattrs)?;
                self.set_mtime(&rel, &header)?;
                self.stats.files += 1;
            }
            other => {
                tracing::warn!(
                    "skipped {} entry of unsupported type {:?}",
                    path::display(&comps),
                    other
                );
                return Ok(());
            }
        }
        self.touch(&rel);
        Ok(())
    }

    fn dev(&self, h: &tar::Header) -> Result<rustix::fs::Dev> {
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        Ok(rustix::fs::makedev(major, minor))
    }

    fn mode_of(&self, h: &tar::Header) -> Result<u32> {
        let mode = h.mode().map_err(Error::Tar)? & 0o7777;
        Ok(if self.privileged { mode } else { mode & 0o1777 })
    }

    fn chown(&self, rel: &Path, h: &tar::Header) -> Result<()> {
        if !self.privileged {
            return Ok(());
        }
        let p = self.root.join(rel);
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| Error::BadEntry {
                    entry: rel.display().to_string(),
                    reason: format!("{what} {v} is out of range"),
                })
        };
        let uid = id(h.uid().map_err(Error::Tar)?, "uid")?;
        let gid = id(h.gid().map_err(Error::Tar)?, "gid")?;
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .map_err(Error::io("change owner of", &p))
    }

    /// Applies extended attributes from PAX `SCHILY.xattr.*` records: all of them
    /// when privileged, only `user.*` otherwise (the rest need capabilities). A
    /// filesystem that refuses one is not an error: the entry stays, without it.
    fn set_xattrs(&self, rel: &Path, xattrs: &[(OsString, Vec<u8>)]) -> Result<()> {
        let p = self.root.join(rel);
        for (name, value) in xattrs {
            if !self.xattr_allowed(name) {
                continue;
            }
            match rustix::fs::lsetxattr(
                &p,
                name.as_os_str(),
                value,
                rustix::fs::XattrFlags::empty(),
            ) {
                Ok(()) => {}
                // The filesystem or the kernel refuses this one (no support, an
                // unknown SELinux label, too large): the entry stays, without it.
                Err(
                    e @ (rustix::io::Errno::PERM
                    | rustix::io::Errno::NOTSUP
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::TOOBIG
                    | rustix::io::Errno::RANGE
                    | rustix::io::Errno::NOSPC),
                ) => {
                    tracing::debug!(
                        "skipped xattr {} on {}: {e}",
                        name.to_string_lossy(),
                        p.display()
                    );
                }
                Err(e) => return Err(Error::io("set extended attribute on", &p)(e.into())),
            }
        }
        Ok(())
    }

    /// Whether we set this xattr at all: `user.*` only when unprivileged, and never
    /// the host-specific ones (SELinux labels, NFS ACLs, overlayfs bookkeeping),
    /// as umoci does.
    fn xattr_allowed(&self, name: &OsStr) -> bool {
        let n = name.as_bytes();
        if !self.privileged {
            return n.starts_with(b"user.");
        }
        !(n == b"security.selinux" || n == b"system.nfs4_acl" || n.starts_with(b"trusted.overlay."))
    }

    /// Removes the xattrs of an existing directory that a re-declaring entry does
    /// not carry.
    fn clear_xattrs(&self, rel: &Path, keep: &[(OsString, Vec<u8>)]) -> Result<()> {
        let p = self.root.join(rel);
        let mut names = vec![0u8; 64 * 1024];
        let n = match rustix::fs::llistxattr(&p, &mut names) {
            Ok(n) => n,
            Err(_) => return Ok(()),
        };
        for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let name = OsStr::from_bytes(name);
            if self.xattr_allowed(name) && !keep.iter().any(|(k, _)| k == name) {
                let _ = rustix::fs::lremovexattr(&p, name);
            }
        }
        Ok(())
    }

    fn set_mtime(&self, rel: &Path, h: &tar::Header) -> Result<()> {
        let mtime = h.mtime().unwrap_or(0) as i64;
        let t = filetime::FileTime::from_unix_time(mtime, 0);
        let p = self.root.join(rel);
        filetime::set_symlink_file_times(&p, t, t).map_err(Error::io("set times of", &p))
    }

    /// Records `rel` and its ancestors as written by the current layer.
    fn touch(&mut self, rel: &Path) {
        let mut p = rel.to_path_buf();
        loop {
            if !self.touched.insert(p.clone()) {
                break;
            }
            if !p.pop() {
                break;
            }
        }
    }

    fn lstat(&self, rel: &Path) -> Result<Option<fs::Metadata>> {
        let p = self.root.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("inspect", p)(e)),
        }
    }

    fn mkdir(&mut self, rel: &Path) -> Result<()> {
        let p = self.root.join(rel);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&p)
            .map_err(Error::io("create directory", &p))
    }

    /// Removes whatever is at `rel` (never following a symlink) so a new entry can
    /// take its place; a directory is kept only if the new entry is one.
    fn replace(&mut self, rel: &Path) -> Result<()> {
        if self.lstat(rel)?.is_some() {
            self.remove(rel)?;
        }
        Ok(())
    }

    /// Removes `rel` and everything below it. Symlinks are removed, not followed.
    fn remove(&mut self, rel: &Path) -> Result<()> {
        let p = self.root.join(rel);
        let Some(meta) = self.lstat(rel)? else {
            return Ok(());
        };
        if meta.is_dir() {
            // Directory modes are only applied in finish(), so every directory
            // here is still writable by us.
            fs::remove_dir_all(&p).map_err(Error::io("remove directory", &p))?;
            let stale: Vec<PathBuf> = self
                .dir_meta
                .range(rel.to_path_buf()..)
                .take_while(|(k, _)| k.starts_with(rel))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                self.dir_meta.remove(&k);
            }
        } else {
            fs::remove_file(&p).map_err(Error::io("remove", &p))?;
        }
        Ok(())
    }

    /// Removes everything under `dir` that the current layer did not write
    /// (opaque directories, and whiteouts of directories this layer also writes).
    fn prune_lower(&mut self, dir: &Path) -> Result<()> {
        let full = self.root.join(dir);
        let children = fs::read_dir(&full).map_err(Error::io("read directory", &full))?;
        let mut names: Vec<OsString> = Vec::new();
        for c in children {
            names.push(c.map_err(Error::io("read directory", &full))?.file_name());
        }
        for n in names {
            let rel = dir.join(&n);
            if self.touched.contains(&rel) {
                if self.lstat(&rel)?.is_some_and(|m| m.is_dir()) {
                    self.prune_lower(&rel)?;
                }
            } else {
                self.remove(&rel)?;
            }
        }
        Ok(())
    }

    /// Resolves directory components inside the root, following symlinks with the
    /// root as `/`, and returns the real path relative to the root. Missing
    /// directories are created when `create` is set, else `None` is returned.
    fn resolve_dir(&mut self, comps: &[OsString], create: bool) -> Result<Option<PathBuf>> {
        let mut todo: Vec<OsString> = comps.iter().rev().cloned().collect();
        let mut cur = PathBuf::new();
        let mut followed = 0;
        while let Some(c) = todo.pop() {
            let b = c.as_bytes();
            if b.is_empty() || b == b"." {
                continue;
            }
            if b == b".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            match self.lstat(&next)? {
                Some(m) if m.is_dir() => cur = next,
                Some(m) if m.file_type().is_symlink() => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(Error::Unresolvable {
                            path: path::display(comps),
                            reason: format!(
                                "more than {MAX_SYMLINKS} symlinks on the way (a loop?)"
                            ),
                        });
                    }
                    let full = self.root.join(&next);
                    let target = fs::read_link(&full).map_err(Error::io("read symlink", &full))?;
                    let tb = target.as_os_str().as_bytes();
                    if tb.starts_with(b"/") {
                        cur = PathBuf::new();
                    }
                    for part in tb.split(|&x| x == b'/').rev() {
                        todo.push(OsStr::from_bytes(part).to_owned());
                    }
                }
                Some(_) => {
                    return Err(Error::Unresolvable {
                        path: path::display(comps),
                        reason: format!("/{} is not a directory", cur.join(&c).display()),
                    })
                }
                None if create => {
                    self.mkdir(&next)?;
                    self.touch(&next);
                    cur = next;
                }
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }
}

/// A stable hash of an entry's extended attributes, for listings (0: none).
fn xattr_hash(xattrs: &[(OsString, Vec<u8>)]) -> i64 {
    if xattrs.is_empty() {
        return 0;
    }
    let mut bytes = Vec::new();
    for (name, value) in xattrs {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value);
        bytes.push(0);
    }
    let d = locald_core::digest::Digest::sha256_of(&bytes);
    i64::from_str_radix(&d.hex()[..15], 16).unwrap_or(1)
}

/// The extended attributes an entry carries in PAX `SCHILY.xattr.NAME` records.
fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                if !name.is_empty() {
                    out.push((
                        OsStr::from_bytes(name).to_owned(),
                        ext.value_bytes().to_vec(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Whether an entry carries GNU's PAX sparse records (`GNU.sparse.*`), which
/// the tar crate does not read.
fn has_pax_sparse_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> bool {
    match entry.pax_extensions() {
        Ok(Some(records)) => records
            .filter_map(|r| r.ok())
            .any(|r| r.key_bytes().starts_with(b"GNU.sparse.")),
        _ => false,
    }
}

/// The error of the tar crate as ours: a refusal by the [`TarGuard`] names the
/// entry (by its header name, or as the one after `previous` when its header has
/// none); anything else means the stream is not valid tar.
fn tar_error(e: io::Error, previous: Option<&[u8]>) -> Error {
    let Some(refused) = e.get_ref().and_then(|i| i.downcast_ref::<Refused>()) else {
        return Error::Tar(e);
    };
    let (entry, reason) = match (refused.name.is_empty(), previous) {
        (false, _) => (refused.name.as_slice(), refused.to_string()),
        (true, Some(previous)) => (previous, format!("the unnamed entry after it: {refused}")),
        (true, None) => (&[][..], format!("the layer's first entry: {refused}")),
    };
    Error::BadEntry {
        entry: String::from_utf8_lossy(entry).into_owned(),
        reason,
    }
}

/// Writes a GNU sparse file: each data region of `map`, read from `r` in
/// order, at its offset; the holes are never written (they stay holes, taking
/// no disk space) and the file gets the map's size. Returns the data bytes
/// written.
fn copy_sparse(
    r: &mut impl Read,
    file: &fs::File,
    map: &SparseMap,
    buf: &mut [u8],
    cancel: &Cancel,
) -> std::result::Result<u64, CopyError> {
    use std::os::unix::fs::FileExt;
    let mut written = 0u64;
    for &(offset, len) in &map.regions {
        let mut done = 0u64;
        while done < len {
            if cancel.is_cancelled() {
                return Err(CopyError::Cancelled);
            }
            let want = buf
                .len()
                .min(usize::try_from(len - done).unwrap_or(usize::MAX));
            let k = match r.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(CopyError::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the layer ends inside a sparse file's data",
                    )))
                }
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            file.write_all_at(&buf[..k], offset + done)
                .map_err(CopyError::Write)?;
            done += k as u64;
        }
        written += len;
    }
    file.set_len(map.size).map_err(CopyError::Write)?;
    Ok(written)
}

enum CopyError {
    Cancelled,
    Read(io::Error),
    Write(io::Error),
}

fn copy(
    r: &mut impl Read,
    w: &mut impl io::Write,
    buf: &mut [u8],
    cancel: &Cancel,
) -> std::result::Result<u64, CopyError> {
    let mut n = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(CopyError::Cancelled);
        }
        let k = match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..k]).map_err(CopyError::Write)?;
        n += k as u64;
    }
}

//! Snapshots of directory trees and a field-by-field diff between two of them.
//!
//! A snapshot records what an extractor is responsible for: kind, permission
//! bits, owner, size, content digest, symlink target, device number, mtime and
//! hard-link grouping. Inode numbers are recorded (for grouping) but never compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Paths relative to the root (`/`-separated, the root itself excluded) to nodes.
pub type Snapshot = BTreeMap<String, Node>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDev => "chardev",
            Kind::BlockDev => "blockdev",
            Kind::Socket => "socket",
        };
        f.write_str(s)
    }
}

/// One path of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File and symlink sizes; 0 for everything else (directory sizes are the
    /// filesystem's business).
    pub size: u64,
    /// `sha256:<hex>` of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target (non-UTF-8 bytes escaped as `\xNN`).
    pub target: Option<String>,
    /// `(major, minor)` of a device node.
    pub rdev: Option<(u32, u32)>,
    /// Seconds, for regular files and directories.
    pub mtime: Option<i64>,
    pub nlink: u64,
    pub inode: u64,
    /// Extended attributes (name -> value), not following symlinks.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Snapshot of everything under `root`, not following symlinks. Panics on I/O errors.
pub fn snapshot(root: &Path) -> Snapshot {
    try_snapshot(root).unwrap_or_else(|e| panic!("snapshot of {}: {e}", root.display()))
}

/// [`snapshot`] returning I/O errors.
pub fn try_snapshot(root: &Path) -> io::Result<Snapshot> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Snapshot) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let key = format!("{prefix}{}", escape(name.as_bytes()));
        let node = node(&path)?;
        let is_dir = node.kind == Kind::Dir;
        out.insert(key.clone(), node);
        if is_dir {
            walk(&path, &format!("{key}/"), out)?;
        }
    }
    Ok(())
}

/// The node for one path (not following a final symlink).
pub fn node(path: &Path) -> io::Result<Node> {
    let md = fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else {
        Kind::Socket
    };
    let sha256 = match kind {
        Kind::File => Some(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(fs::read(path)?))
        )),
        _ => None,
    };
    let target = match kind {
        Kind::Symlink => Some(escape(fs::read_link(path)?.as_os_str().as_bytes())),
        _ => None,
    };
    let rdev = match kind {
        Kind::CharDev | Kind::BlockDev => {
            Some((rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())))
        }
        _ => None,
    };
    Ok(Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if matches!(kind, Kind::File | Kind::Symlink) {
            md.size()
        } else {
            0
        },
        sha256,
        target,
        rdev,
        mtime: if matches!(kind, Kind::File | Kind::Dir) {
            Some(md.mtime())
        } else {
            None
        },
        nlink: md.nlink(),
        inode: md.ino(),
        xattrs: xattrs(path)?,
    })
}

/// All extended attributes of `path` (the symlink itself for symlinks).
fn xattrs(path: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(path, name, &mut value)?;
        value.truncate(len);
        out.insert(name.to_string_lossy().into_owned(), value);
    }
    Ok(out)
}

/// UTF-8 as is, other bytes as `\xNN` (and `\` as `\\`), so keys never collide.
fn escape(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out
}

/// What [`diff`] leaves out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffOpts {
    /// Ignore all mtimes.
    pub ignore_mtime: bool,
    /// Ignore directory mtimes only.
    pub ignore_dir_mtime: bool,
    /// Ignore uid and gid.
    pub ignore_owner: bool,
    /// Ignore hard-link grouping.
    pub ignore_hardlinks: bool,
    /// Paths (and everything under them) left out of the comparison.
    pub ignore_paths: Vec<String>,
    /// Extended attribute names left out of the comparison.
    pub ignore_xattrs: Vec<String>,
}

impl DiffOpts {
    /// Compare everything.
    pub fn exact() -> Self {
        Self::default()
    }
    /// What a rootless extraction can be expected to keep: no ownership (umoci
    /// records it in a `user.rootlesscontainers` xattr instead).
    pub fn rootless() -> Self {
        Self {
            ignore_owner: true,
            ignore_xattrs: vec!["user.rootlesscontainers".to_owned()],
            ..Self::default()
        }
    }
    fn ignored(&self, path: &str) -> bool {
        self.ignore_paths.iter().any(|p| {
            path == p
                || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'))
        })
    }
}

/// Differences between `a` and `b`, one human-readable line each; empty when equal.
pub fn diff(a: &Snapshot, b: &Snapshot, opts: &DiffOpts) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| !opts.ignored(k))
        .collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(format!("only in a: {k} ({})", x.kind)),
            (None, Some(y)) => out.push(format!("only in b: {k} ({})", y.kind)),
            (Some(x), Some(y)) => node_diff(k, x, y, opts, &mut out),
            (None, None) => {}
        }
    }
    if !opts.ignore_hardlinks {
        out.extend(link_diff(a, b, opts));
    }
    out
}

/// One line per set of paths (present in both) whose hard-link grouping differs.
fn link_diff(a: &Snapshot, b: &Snapshot, opts: &DiffOpts) -> Vec<String> {
    let (ga, gb) = (link_groups(a, opts), link_groups(b, opts));
    let group = |g: &BTreeMap<String, BTreeSet<String>>, k: &String| -> BTreeSet<String> {
        match g.get(k) {
            Some(grp) => grp
                .iter()
                .filter(|p| a.contains_key(*p) && b.contains_key(*p))
                .cloned()
                .collect(),
            None => BTreeSet::from([k.clone()]),
        }
    };
    let mut out = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let linked: BTreeSet<&String> = ga
        .keys()
        .chain(gb.keys())
        .filter(|k| a.contains_key(*k) && b.contains_key(*k))
        .collect();
    for k in linked {
        if done.contains(k) || group(&ga, k) == group(&gb, k) {
            continue;
        }
        // Everything connected to k by either tree's links.
        let mut comp = BTreeSet::from([k.clone()]);
        loop {
            let next: BTreeSet<String> = comp
                .iter()
                .flat_map(|m| group(&ga, m).into_iter().chain(group(&gb, m)))
                .collect();
            if next == comp {
                break;
            }
            comp = next;
        }
        let groups = |g| comp.iter().map(|m| group(g, m)).collect::<BTreeSet<_>>();
        out.push(format!(
            "hard links differ: a={:?} b={:?}",
            groups(&ga),
            groups(&gb)
        ));
        done.extend(comp);
    }
    out
}

/// For each non-directory path sharing its inode with another path in the
/// snapshot: the set of all paths with that inode.
fn link_groups(s: &Snapshot, opts: &DiffOpts) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (k, n) in s {
        if n.kind != Kind::Dir && !opts.ignored(k) {
            by_ino.entry(n.inode).or_default().insert(k.clone());
        }
    }
    let mut out = BTreeMap::new();
    for grp in by_ino.into_values().filter(|g| g.len() > 1) {
        for k in &grp {
            out.insert(k.clone(), grp.clone());
        }
    }
    out
}

fn node_diff(k: &str, x: &Node, y: &Node, opts: &DiffOpts, out: &mut Vec<String>) {
    if x.kind != y.kind {
        out.push(format!("{k}: kind a={} b={}", x.kind, y.kind));
        return;
    }
    if x.mode != y.mode {
        out.push(format!("{k}: mode a={:#o} b={:#o}", x.mode, y.mode));
    }
    if !opts.ignore_owner && (x.uid, x.gid) != (y.uid, y.gid) {
        out.push(format!(
            "{k}: owner a={}:{} b={}:{}",
            x.uid, x.gid, y.uid, y.gid
        ));
    }
    if x.size != y.size {
        out.push(format!("{k}: size a={} b={}", x.size, y.size));
    }
    if x.sha256 != y.sha256 {
        out.push(format!(
            "{k}: content a={} b={}",
            x.sha256.as_deref().unwrap_or("-"),
            y.sha256.as_deref().unwrap_or("-")
        ));
    }
    if x.target != y.target {
        out.push(format!(
            "{k}: target a={:?} b={:?}",
            x.target.as_deref().unwrap_or(""),
            y.target.as_deref().unwrap_or("")
        ));
    }
    if x.rdev != y.rdev {
        out.push(format!("{k}: rdev a={:?} b={:?}", x.rdev, y.rdev));
    }
    let keep = |m: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        m.iter()
            .filter(|(n, _)| !opts.ignore_xattrs.contains(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    };
    let (xa, ya) = (keep(&x.xattrs), keep(&y.xattrs));
    if xa != ya {
        out.push(format!("{k}: xattrs a={xa:?} b={ya:?}"));
    }
    let skip_mtime = opts.ignore_mtime || (opts.ignore_dir_mtime && x.kind == Kind::Dir);
    if !skip_mtime && x.mtime != y.mtime {
        out.push(format!("{k}: mtime a={:?} b={:?}", x.mtime, y.mtime));
    }
}

/// Panics, showing the first 50 differences, unless the trees under `a` and `b`
/// are the same under `opts`.
pub fn assert_same_tree(a: &Path, b: &Path, opts: &DiffOpts) {
    let d = diff(&snapshot(a), &snapshot(b), opts);
    if !d.is_empty() {
        panic!(
            "trees differ\n  a = {}\n  b = {}\n{}",
            a.display(),
            b.display(),
            format_diff(&d)
        );
    }
}

/// [`assert_same_tree`] for snapshots already taken.
pub fn assert_same_snapshot(a: &Snapshot, b: &Snapshot, opts: &DiffOpts) {
    let d = diff(a, b, opts);
    if !d.is_empty() {
        panic!("snapshots differ\n{}", format_diff(&d));
    }
}

fn format_diff(d: &[String]) -> String {
    let mut s: String = d.iter().take(50).map(|l| format!("  {l}\n")).collect();
    if d.len() > 50 {
        s.push_str(&format!("  ... and {} more\n", d.len() - 50));
    }
    s
}

/// One line a node, for eyeballing a snapshot in a failure message.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    for (k, n) in s {
        out.push_str(&format!(
            "{} {:04o} {}:{} {k}",
            n.kind, n.mode, n.uid, n.gid
        ));
        if let Some(t) = &n.target {
            out.push_str(&format!(" -> {t}"));
        }
        if let Some(h) = &n.sha256 {
            out.push_str(&format!(" {}", &h[..19]));
        }
        if let Some((ma, mi)) = n.rdev {
            out.push_str(&format!(" {ma},{mi}"));
        }
        out.push('\n');
    }
    out
}

/// A digest of everything [`snapshot`] sees under `p`, inode numbers and mtimes
/// included (not `p`'s own metadata): equal before and after means nothing under
/// `p` was created, removed, replaced or modified.
pub fn fingerprint_dir(p: &Path) -> String {
    let mut h = Sha256::new();
    for (k, n) in snapshot(p) {
        h.update(format!("{k:?} {n:?}\n").as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::{Duration, SystemTime};

    fn build(root: &Path) {
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::write(root.join("d/f"), "hello").unwrap();
        fs::write(root.join("x"), "x").unwrap();
        fs::hard_link(root.join("x"), root.join("y")).unwrap();
        fs::write(root.join("z"), "x").unwrap();
        symlink("../x", root.join("d/l")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            root.join("p"),
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o640)).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        for f in ["d/f", "x", "z"] {
            fs::File::options()
                .write(true)
                .open(root.join(f))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        for d in ["d/sub", "d"] {
            fs::File::open(root.join(d))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }

    fn pair() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        build(&a);
        build(&b);
        (t, a, b)
    }

    fn diff_dirs(a: &Path, b: &Path, opts: &DiffOpts) -> Vec<String> {
        diff(&snapshot(a), &snapshot(b), opts)
    }

    #[test]
    fn snapshot_records_fields() {
        let (_t, a, _) = pair();
        let s = snapshot(&a);
        let keys: Vec<&str> = s.keys().map(String::as_str).collect();
        assert_eq!(keys, ["d", "d/f", "d/l", "d/sub", "p", "x", "y", "z"]);
        assert_eq!(s["d/f"].kind, Kind::File);
        assert_eq!(s["d/f"].mode, 0o640);
        assert_eq!(s["d/f"].size, 5);
        assert_eq!(s["d/f"].mtime, Some(1_600_000_000));
        assert_eq!(
            s["d/f"].sha256.as_deref(),
            Some(&*crate::fixture::sha256_digest(b"hello"))
        );
        assert_eq!(s["d/l"].kind, Kind::Symlink);
        assert_eq!(s["d/l"].target.as_deref(), Some("../x"));
        assert_eq!(s["d"].kind, Kind::Dir);
        assert_eq!(s["p"].kind, Kind::Fifo);
        assert_eq!(s["x"].nlink, 2);
        assert_eq!(s["x"].inode, s["y"].inode);
    }

    #[test]
    fn identical_trees_have_no_diff() {
        let (_t, a, b) = pair();
        assert_eq!(diff_dirs(&a, &b, &DiffOpts::exact()), Vec::<String>::new());
        assert_same_tree(&a, &b, &DiffOpts::exact());
    }

    #[test]
    fn detects_mode_content_target_and_presence() {
        let (_t, a, b) = pair();
        fs::set_permissions(b.join("d/f"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(b.join("z"), "y").unwrap();
        fs::remove_file(b.join("d/l")).unwrap();
        symlink("/x", b.join("d/l")).unwrap();
        fs::remove_file(b.join("p")).unwrap();
        fs::write(b.join("new"), "").unwrap();
        let d = diff_dirs(
            &a,
            &b,
            &DiffOpts {
                ignore_mtime: true,
                ..DiffOpts::default()
            },
        );
        assert_eq!(d.len(), 6, "{d:#?}");
        let joined = d.join("\n");
        for want in [
            "d/f: mode a=0o640 b=0o4755",
            "d/l: target a=\"../x\" b=\"/x\"",
            "only in b: new (file)",
            "only in a: p (fifo)",
            "d/l: size a=4 b=2",
            "z: content a=sha256:2d71",
        ] {
            assert!(joined.contains(want), "missing {want:?} in\n{joined}");
        }
        // mtime of z changed too, and of the root's children dirs: not ignored now.
        assert!(diff_dirs(&a, &b, &DiffOpts::exact())
            .iter()
            .any(|l| l.starts_with("z: mtime")));
        // ignore_paths
        let opts = DiffOpts {
            ignore_mtime: true,
            ignore_paths: vec!["d".into(), "z".into(), "p".into(), "new".into()],
            ..DiffOpts::default()
        };
        assert_eq!(diff_dirs(&a, &b, &opts), Vec::<String>::new());
    }

    #[test]
    fn detects_hard_link_grouping() {
        let (_t, a, b) = pair();
        // Same content, same everything, but y is a copy, not a link.
        fs::remove_file(b.join("y")).unwrap();
        fs::copy(b.join("x"), b.join("y")).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        fs::File::options()
            .write(true)
            .open(b.join("y"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        let d = diff_dirs(
            &a,
            &b,
            &DiffOpts {
                ignore_dir_mtime: true,
                ..DiffOpts::default()
            },
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0],
            r#"hard links differ: a={{"x", "y"}} b={{"x"}, {"y"}}"#
        );
        let opts = DiffOpts {
            ignore_hardlinks: true,
            ignore_dir_mtime: true,
            ..DiffOpts::default()
        };
        assert_eq!(diff_dirs(&a, &b, &opts), Vec::<String>::new());

        // Regrouping: y linked to z instead of x.
        fs::remove_file(b.join("y")).unwrap();
        fs::hard_link(b.join("z"), b.join("y")).unwrap();
        let d = diff_dirs(
            &a,
            &b,
            &DiffOpts {
                ignore_dir_mtime: true,
                ..DiffOpts::default()
            },
        );
        assert_eq!(
            d,
            [r#"hard links differ: a={{"x", "y"}, {"z"}} b={{"x"}, {"y", "z"}}"#]
        );
    }

    #[test]
    fn ownership_and_mtime_options() {
        let (_t, a, b) = pair();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        fs::File::options()
            .write(true)
            .open(b.join("x"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(
            diff_dirs(&a, &b, &DiffOpts::exact()),
            [
                "x: mtime a=Some(1600000000) b=Some(1700000000)",
                "y: mtime a=Some(1600000000) b=Some(1700000000)",
            ]
        );
        assert_eq!(
            diff_dirs(
                &a,
                &b,
                &DiffOpts {
                    ignore_mtime: true,
                    ..DiffOpts::default()
                }
            ),
            Vec::<String>::new()
        );
        if crate::peers::is_root() {
            std::os::unix::fs::lchown(b.join("d/l"), Some(7), Some(8)).unwrap();
            let opts = DiffOpts {
                ignore_mtime: true,
                ..DiffOpts::default()
            };
            assert_eq!(diff_dirs(&a, &b, &opts), ["d/l: owner a=0:0 b=7:8"]);
            assert_eq!(
                diff_dirs(
                    &a,
                    &b,
                    &DiffOpts {
                        ignore_mtime: true,
                        ..DiffOpts::rootless()
                    }
                ),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    #[should_panic(expected = "d/f: mode a=0o640 b=0o600")]
    fn assert_same_tree_panics_with_diff() {
        let (_t, a, b) = pair();
        fs::set_permissions(b.join("d/f"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_same_tree(&a, &b, &DiffOpts::exact());
    }

    #[test]
    fn fingerprint_sees_any_change_below() {
        let (_t, a, _) = pair();
        let before = fingerprint_dir(&a);
        assert_eq!(before, fingerprint_dir(&a));
        // Replacing a file by an identical one is still a change (new inode).
        fs::copy(a.join("z"), a.join("z2")).unwrap();
        assert_ne!(before, fingerprint_dir(&a));
        fs::rename(a.join("z2"), a.join("z")).unwrap();
        assert_ne!(before, fingerprint_dir(&a));
    }

    #[test]
    fn escapes_non_utf8_names() {
        assert_eq!(escape(b"a\xffb\\"), "a\\xffb\\\\");
    }
}

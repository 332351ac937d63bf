//! Whether a plugin library may be opened at all, decided before a byte of it is
//! loaded: loading a shared library runs its code with our rights, so a library
//! that someone else could have written is refused, as ssh's `StrictModes`
//! refuses a key file.
//!
//! The rules, checked on file descriptors so that what is checked is what is
//! loaded:
//!
//! - the plugin is a regular file, reached without following a symbolic link (a
//!   symlink named `*.so` in a plugin directory is refused, whatever it points
//!   to: copy the library instead); FIFOs, devices and directories are refused
//!   without being opened for reading;
//! - it is owned by the effective user or by root, and is not writable by group
//!   or others;
//! - its directory, after resolving symbolic links in the directory's path
//!   (the canonical path, as ssh checks the `realpath`), and every ancestor of it
//!   up to `/`, is owned by the effective user or by root and is not writable by
//!   group or others, except when it has the sticky bit (as `/tmp`): in a sticky
//!   directory only an entry's owner can rename or remove it, so nobody else can
//!   put another file in the place of ours. That such a directory is owned by
//!   us or root is checked like any other's.
//!
//! The walk opens `/` and then each component of the canonical directory with
//! `openat(O_PATH | O_NOFOLLOW | O_DIRECTORY)` relative to the one before, and
//! the plugin with `openat(O_PATH | O_NOFOLLOW)`, checking each with `fstat`:
//! a component swapped for a symlink after the path was resolved makes the walk
//! fail instead of checking one file and reaching another. `O_PATH` opens
//! nothing for reading, so a FIFO cannot block and a device sees no `open`.
//! [`open_checked`] returns the plugin's descriptor; the host loads the library
//! through it (see `load_one` in the parent module).

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// Why a plugin library is not trusted, or could not be checked. Each message is
/// a sentence naming the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The plugin is a symbolic link.
    #[error("plugin {} is a symbolic link{}; locald loads only regular files, never through a link: copy the library into the plugin directory instead", path.display(), target.as_ref().map(|t| format!(" (to {})", t.display())).unwrap_or_default())]
    Symlink {
        /// The link.
        path: PathBuf,
        /// What it points to, when it could be read.
        target: Option<PathBuf>,
    },
    /// The plugin is a directory, FIFO, socket or device.
    #[error("plugin {} is {kind}, not a regular file: remove it, or rename it so that its name does not end in .so", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is, e.g. `a directory`.
        kind: &'static str,
    },
    /// The plugin belongs to another user.
    #[error("plugin {} is owned by uid {owner}, not by you (uid {me}) or root: remove it, or `chown {me} {}` if you trust it", path.display(), path.display())]
    FileOwner {
        /// The library.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        me: u32,
    },
    /// The plugin can be changed by group or others.
    #[error("plugin {} is writable by group or others (mode {mode:04o}): chmod go-w {}", path.display(), path.display())]
    FileWritable {
        /// The library.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory on the way to the plugin belongs to another user.
    #[error("directory {} is owned by uid {owner}, not by you (uid {me}) or root, so its owner can replace the plugins below it: keep plugins in a directory of yours", path.display())]
    DirOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        me: u32,
    },
    /// A directory on the way to the plugin can be changed by group or others.
    #[error("directory {} is writable by group or others (mode {mode:04o}) and is not sticky, so they can replace the plugins below it: chmod go-w {}", path.display(), path.display())]
    DirWritable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The plugin's path has no file name (`..`, `/`).
    #[error("plugin path {} names no file", path.display())]
    NoFileName {
        /// The path.
        path: PathBuf,
    },
    /// A file or directory on the way could not be opened or examined.
    #[error("cannot check plugin {}: {what} {}: {source}", plugin.display(), path.display())]
    Io {
        /// The plugin being checked.
        plugin: PathBuf,
        /// What was done, e.g. `opening directory`.
        what: &'static str,
        /// What it was done to.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// What the checks need to know of a file or directory (from `fstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Its type.
    pub kind: FileType,
    /// Its owner.
    pub uid: u32,
    /// Its permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

impl Facts {
    fn of(st: &rustix::fs::Stat) -> Facts {
        Facts {
            kind: FileType::from_raw_mode(st.st_mode),
            uid: st.st_uid,
            mode: Mode::from_raw_mode(st.st_mode).bits() & 0o7777,
        }
    }
}

const GROUP_OR_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

fn trusted_owner(uid: u32, me: u32) -> bool {
    uid == me || uid == 0
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown type",
    }
}

/// Judges the plugin file itself: a regular file owned by `me` or root, not
/// writable by group or others. Pure: the facts come from the caller.
pub fn check_file(path: &Path, f: Facts, me: u32) -> Result<(), TrustError> {
    let path = path.to_path_buf();
    match f.kind {
        FileType::RegularFile => {}
        FileType::Symlink => return Err(TrustError::Symlink { path, target: None }),
        kind => {
            return Err(TrustError::NotRegular {
                path,
                kind: kind_name(kind),
            })
        }
    }
    if !trusted_owner(f.uid, me) {
        return Err(TrustError::FileOwner {
            path,
            owner: f.uid,
            me,
        });
    }
    if f.mode & GROUP_OR_OTHER_WRITE != 0 {
        return Err(TrustError::FileWritable { path, mode: f.mode });
    }
    Ok(())
}

/// Judges one directory on the way to a plugin: owned by `me` or root, and not
/// writable by group or others unless sticky. Pure.
pub fn check_dir(path: &Path, f: Facts, me: u32) -> Result<(), TrustError> {
    let path = path.to_path_buf();
    if f.kind != FileType::Directory {
        // The walk opens with O_DIRECTORY, so this is a caller's mistake.
        return Err(TrustError::NotRegular {
            path,
            kind: kind_name(f.kind),
        });
    }
    if !trusted_owner(f.uid, me) {
        return Err(TrustError::DirOwner {
            path,
            owner: f.uid,
            me,
        });
    }
    if f.mode & GROUP_OR_OTHER_WRITE != 0 && f.mode & STICKY == 0 {
        return Err(TrustError::DirWritable { path, mode: f.mode });
    }
    Ok(())
}

/// Opens `plugin` with `O_PATH` after checking it and every directory above it
/// (see the module docs), as the effective user. The first fault found, the
/// plugin's own before its directories' and a deeper directory's before a
/// higher one's (as ssh reports them), is the error.
pub fn open_checked(plugin: &Path) -> Result<OwnedFd, TrustError> {
    open_checked_as(plugin, rustix::process::geteuid().as_raw())
}

/// [`open_checked`] judging ownership against `me` instead of the effective uid.
pub fn open_checked_as(plugin: &Path, me: u32) -> Result<OwnedFd, TrustError> {
    let io = |what: &'static str, path: &Path| {
        let plugin = plugin.to_path_buf();
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| TrustError::Io {
            plugin,
            what,
            path,
            source: e.into(),
        }
    };
    let name = match plugin.components().next_back() {
        Some(Component::Normal(n)) => n,
        _ => {
            return Err(TrustError::NoFileName {
                path: plugin.to_path_buf(),
            })
        }
    };
    let parent = match plugin.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(parent).map_err(|source| TrustError::Io {
        plugin: plugin.to_path_buf(),
        what: "resolving directory",
        path: parent.to_path_buf(),
        source,
    })?;

    const DIR: OFlags = OFlags::PATH
        .union(OFlags::DIRECTORY)
        .union(OFlags::NOFOLLOW)
        .union(OFlags::CLOEXEC);
    let mut faults = Vec::new();
    let mut at = PathBuf::from("/");
    let mut fd = rustix::fs::open(&at, DIR, Mode::empty()).map_err(io("opening directory", &at))?;
    let st = rustix::fs::fstat(&fd).map_err(io("examining directory", &at))?;
    faults.extend(check_dir(&at, Facts::of(&st), me).err());
    for c in dir.components() {
        let Component::Normal(c) = c else {
            // A canonical path is `/` followed by plain names.
            continue;
        };
        at.push(c);
        fd =
            rustix::fs::openat(&fd, c, DIR, Mode::empty()).map_err(io("opening directory", &at))?;
        let st = rustix::fs::fstat(&fd).map_err(io("examining directory", &at))?;
        faults.extend(check_dir(&at, Facts::of(&st), me).err());
    }
    let file = rustix::fs::openat(
        &fd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("opening", plugin))?;
    let st = rustix::fs::fstat(&file).map_err(io("examining", plugin))?;
    let facts = Facts::of(&st);
    if facts.kind == FileType::Symlink {
        let target = rustix::fs::readlinkat(&fd, name, Vec::new())
            .ok()
            .map(|t| PathBuf::from(std::ffi::OsString::from_vec(t.into_bytes())));
        return Err(TrustError::Symlink {
            path: plugin.to_path_buf(),
            target,
        });
    }
    check_file(plugin, facts, me)?;
    match faults.pop() {
        Some(deepest) => Err(deepest),
        None => Ok(file),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ME: u32 = 1000;

    fn facts(kind: FileType, uid: u32, mode: u32) -> Facts {
        Facts { kind, uid, mode }
    }

    #[test]
    fn file_rules() {
        use FileType::*;
        let p = Path::new("/p/x.so");
        for (f, want) in [
            (facts(RegularFile, ME, 0o755), None),
            (facts(RegularFile, 0, 0o644), None),
            (facts(RegularFile, ME, 0o4755), None),
            (
                facts(RegularFile, ME, 0o775),
                Some("plugin /p/x.so is writable by group or others (mode 0775): chmod go-w /p/x.so"),
            ),
            (
                facts(RegularFile, ME, 0o646),
                Some("plugin /p/x.so is writable by group or others (mode 0646): chmod go-w /p/x.so"),
            ),
            (
                facts(RegularFile, 0, 0o666),
                Some("plugin /p/x.so is writable by group or others (mode 0666): chmod go-w /p/x.so"),
            ),
            (
                facts(RegularFile, 1234, 0o755),
                Some("plugin /p/x.so is owned by uid 1234, not by you (uid 1000) or root: remove it, or `chown 1000 /p/x.so` if you trust it"),
            ),
            // The owner is reported before the mode.
            (
                facts(RegularFile, 1234, 0o777),
                Some("plugin /p/x.so is owned by uid 1234, not by you (uid 1000) or root: remove it, or `chown 1000 /p/x.so` if you trust it"),
            ),
            (
                facts(Directory, ME, 0o755),
                Some("plugin /p/x.so is a directory, not a regular file: remove it, or rename it so that its name does not end in .so"),
            ),
            (
                facts(Fifo, ME, 0o644),
                Some("plugin /p/x.so is a FIFO, not a regular file: remove it, or rename it so that its name does not end in .so"),
            ),
            (
                facts(CharacterDevice, 0, 0o666),
                Some("plugin /p/x.so is a character device, not a regular file: remove it, or rename it so that its name does not end in .so"),
            ),
            (
                facts(Symlink, ME, 0o777),
                Some("plugin /p/x.so is a symbolic link; locald loads only regular files, never through a link: copy the library into the plugin directory instead"),
            ),
        ] {
            let got = check_file(p, f, ME).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{f:?}");
        }
    }

    #[test]
    fn dir_rules() {
        use FileType::*;
        let p = Path::new("/p");
        for (f, want) in [
            (facts(Directory, ME, 0o755), None),
            (facts(Directory, ME, 0o700), None),
            (facts(Directory, 0, 0o755), None),
            // /tmp: root-owned, world-writable, sticky.
            (facts(Directory, 0, 0o1777), None),
            // Sticky and ours: nobody else can replace our entries either.
            (facts(Directory, ME, 0o1777), None),
            (
                facts(Directory, ME, 0o775),
                Some("directory /p is writable by group or others (mode 0775) and is not sticky, so they can replace the plugins below it: chmod go-w /p"),
            ),
            (
                facts(Directory, 0, 0o757),
                Some("directory /p is writable by group or others (mode 0757) and is not sticky, so they can replace the plugins below it: chmod go-w /p"),
            ),
            (
                facts(Directory, 1234, 0o755),
                Some("directory /p is owned by uid 1234, not by you (uid 1000) or root, so its owner can replace the plugins below it: keep plugins in a directory of yours"),
            ),
            // Sticky does not make another user's directory ours.
            (
                facts(Directory, 1234, 0o1777),
                Some("directory /p is owned by uid 1234, not by you (uid 1000) or root, so its owner can replace the plugins below it: keep plugins in a directory of yours"),
            ),
        ] {
            let got = check_dir(p, f, ME).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{f:?}");
        }
    }

    /// A private directory under the system's temporary directory, with a
    /// plugin-shaped file `x.so` (mode 0755) in `dir/`.
    fn scratch() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let so = dir.join("x.so");
        std::fs::write(&so, b"not really a library").unwrap();
        std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o755)).unwrap();
        (t, so)
    }

    fn me() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The walk on real files: what it refuses and what it lets through.
    #[test]
    fn walk_on_disk() {
        type Setup = fn(&Path, &Path) -> PathBuf;
        let cases: &[(&str, Setup, Option<&str>)] = &[
            ("a trusted file", |_, so| so.to_path_buf(), None),
            (
                "a group-writable file",
                |_, so| {
                    chmod(so, 0o775);
                    so.to_path_buf()
                },
                Some("is writable by group or others (mode 0775)"),
            ),
            (
                "an others-writable directory",
                |_, so| {
                    chmod(so.parent().unwrap(), 0o757);
                    so.to_path_buf()
                },
                Some("dir is writable by group or others (mode 0757) and is not sticky"),
            ),
            (
                "a sticky world-writable directory",
                |_, so| {
                    chmod(so.parent().unwrap(), 0o1777);
                    so.to_path_buf()
                },
                None,
            ),
            (
                "a symlink to a trusted file",
                |t, so| {
                    let link = t.join("dir/link.so");
                    std::os::unix::fs::symlink(so, &link).unwrap();
                    link
                },
                Some("link.so is a symbolic link (to "),
            ),
            (
                "a directory",
                |t, _| {
                    let d = t.join("dir/d.so");
                    std::fs::create_dir(&d).unwrap();
                    d
                },
                Some("d.so is a directory, not a regular file"),
            ),
            (
                "a FIFO (never opened for reading, so never blocks)",
                |t, _| {
                    let f = t.join("dir/f.so");
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        &f,
                        FileType::Fifo,
                        Mode::from_raw_mode(0o644),
                        0,
                    )
                    .unwrap();
                    f
                },
                Some("f.so is a FIFO, not a regular file"),
            ),
            (
                // The file's fault is reported before its directory's.
                "a writable file in a writable directory",
                |_, so| {
                    chmod(so, 0o666);
                    chmod(so.parent().unwrap(), 0o777);
                    so.to_path_buf()
                },
                Some("x.so is writable by group or others (mode 0666)"),
            ),
            (
                // Symlinks in the directory's path are resolved, and the target
                // directory is what is checked.
                "a trusted file through a symlinked directory",
                |t, so| {
                    std::os::unix::fs::symlink(t.join("dir"), t.join("via")).unwrap();
                    t.join("via").join(so.file_name().unwrap())
                },
                None,
            ),
            (
                "a file through a symlink to a writable directory",
                |t, so| {
                    chmod(so.parent().unwrap(), 0o775);
                    std::os::unix::fs::symlink(t.join("dir"), t.join("via")).unwrap();
                    t.join("via").join(so.file_name().unwrap())
                },
                Some("/dir is writable by group or others (mode 0775)"),
            ),
            (
                "a missing file",
                |t, _| t.join("dir/missing.so"),
                Some("cannot check plugin"),
            ),
        ];
        let mut failures = Vec::new();
        for (what, setup, want) in cases {
            let (t, so) = scratch();
            let plugin = setup(t.path(), &so);
            let got = open_checked_as(&plugin, me());
            match (got, want) {
                (Ok(fd), None) => {
                    let st = rustix::fs::fstat(&fd).unwrap();
                    let orig = std::fs::metadata(&so).unwrap();
                    use std::os::unix::fs::MetadataExt;
                    if st.st_ino != orig.ino() {
                        failures.push(format!("{what}: the descriptor is not of the file"));
                    }
                }
                (Ok(_), Some(w)) => failures.push(format!("{what}: accepted, want {w:?}")),
                (Err(e), None) => failures.push(format!("{what}: refused: {e}")),
                (Err(e), Some(w)) => {
                    if !e.to_string().contains(w) {
                        failures.push(format!("{what}: {e}\n  does not contain {w:?}"));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Plugins and directories of other users. As root, with real owners; as
    /// anyone else (who cannot give files away), by judging our own files as
    /// another user.
    #[test]
    fn walk_refuses_other_owners() {
        let me = me();
        let (_t, so) = scratch();
        let dir = so.parent().unwrap().to_path_buf();
        if me == 0 {
            let nobody = Some(rustix::fs::Uid::from_raw(65534));
            rustix::fs::chown(&so, nobody, None).unwrap();
            let e = open_checked_as(&so, 0).unwrap_err().to_string();
            let want = format!(
                "plugin {} is owned by uid 65534, not by you (uid 0) or root",
                so.display()
            );
            assert!(e.contains(&want), "{e}");
            rustix::fs::chown(&so, Some(rustix::fs::Uid::ROOT), None).unwrap();
            open_checked_as(&so, 0).unwrap();
            rustix::fs::chown(&dir, nobody, None).unwrap();
            let e = open_checked_as(&so, 0).unwrap_err().to_string();
            let want = format!(
                "directory {} is owned by uid 65534, not by you (uid 0) or root",
                dir.display()
            );
            assert!(e.contains(&want), "{e}");
        } else {
            let other = me + 1;
            let e = open_checked_as(&so, other).unwrap_err().to_string();
            let want = format!(
                "plugin {} is owned by uid {me}, not by you (uid {other}) or root",
                so.display()
            );
            assert!(e.contains(&want), "{e}");
        }
    }

    #[test]
    fn no_file_name() {
        for p in ["/", "..", "/x/.."] {
            let e = open_checked_as(Path::new(p), 0).unwrap_err();
            assert!(matches!(e, TrustError::NoFileName { .. }), "{p}: {e}");
        }
    }
}

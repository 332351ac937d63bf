//! Copying the application source into the build workspace.
//!
//! A build never runs in the user's directory: the lifecycle writes into `-app`,
//! and buildpacks may delete or rewrite files there. [`copy_app`] makes a fresh
//! copy in the project's state directory instead, leaving out what `git` would
//! leave out and what the CNB project descriptor asks to leave out:
//!
//! - `.gitignore` files, at the root and nested, with git's semantics (negation,
//!   anchored and directory-only patterns), whether or not the app is a git
//!   repository; `.gitignore` files above the app directory, the global excludes
//!   file and `.git/info/exclude` are not read, so a build does not depend on the
//!   machine it runs on;
//! - `.git` (directory, or the file of a submodule or worktree), at any depth;
//! - `project.toml`'s `exclude` or `include` list (schema 0.2: `[io.buildpacks]`;
//!   0.1 or no schema version: `[build]`), gitignore-style patterns relative to the
//!   app directory, as `pack` applies them. With `include`, only files that match
//!   (or lie under a matching directory) are copied. `project.toml` itself is
//!   always copied.
//!
//! Symlinks are copied as symlinks and never followed; regular files keep their
//! permission bits plus owner-write, directories get owner `rwx`; fifos, sockets
//! and devices are skipped and counted; hard links become separate files;
//! modification times are kept. The parsing of `project.toml` is pure
//! ([`parse_project_descriptor`]) and separate from the walk.

use std::collections::HashSet;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use locald_core::error::{Error, Result};

/// The CNB project descriptor's file name, at the root of the app.
pub const PROJECT_DESCRIPTOR: &str = "project.toml";

/// How many skipped paths [`CopyStats`] keeps as examples.
const SKIPPED_EXAMPLES: usize = 5;

/// What [`copy_app`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files copied.
    pub files: u64,
    /// Directories created (the workspace root not counted).
    pub dirs: u64,
    /// Symlinks copied.
    pub symlinks: u64,
    /// Bytes of regular file content copied.
    pub bytes: u64,
    /// Special files (fifos, sockets, devices) left out.
    pub skipped: u64,
    /// A few of them, relative to the app directory.
    pub skipped_examples: Vec<PathBuf>,
}

/// Which files `project.toml` lets into the build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FileFilter {
    /// No `exclude` or `include` list (or an empty one): everything.
    #[default]
    All,
    /// Everything but what these gitignore-style patterns match.
    Exclude(Vec<String>),
    /// Only what these gitignore-style patterns match.
    Include(Vec<String>),
}

/// Parses a project descriptor's file filter. `path` is only for messages.
///
/// Schema `0.2` (`[_] schema-version = "0.2"`) keeps the lists in
/// `[io.buildpacks]`; schema `0.1`, or a file without a schema version, in
/// `[build]`. Both lists at once is an error: the specification makes them
/// mutually exclusive.
pub fn parse_project_descriptor(path: &Path, text: &str) -> Result<FileFilter> {
    let bad = |reason: String| Error::ProjectDescriptor {
        path: path.to_path_buf(),
        reason,
    };
    let doc: toml::Table = toml::from_str(text).map_err(|e| bad(toml_problem(text, &e)))?;
    let version = match doc.get("_").and_then(|t| t.get("schema-version")) {
        None => None,
        Some(toml::Value::String(v)) => Some(v.as_str()),
        Some(_) => return Err(bad("`_.schema-version` must be a string".to_owned())),
    };
    let (table, name) = match version {
        None | Some("0.1") => (doc.get("build"), "[build]"),
        Some("0.2") => (
            doc.get("io").and_then(|io| io.get("buildpacks")),
            "[io.buildpacks]",
        ),
        Some(v) => {
            return Err(bad(format!(
                "unknown project descriptor schema-version {v:?} (locald reads 0.1 and 0.2)"
            )))
        }
    };
    let Some(table) = table else {
        return Ok(FileFilter::All);
    };
    let Some(table) = table.as_table() else {
        return Err(bad(format!("{name} must be a table")));
    };
    let list = |key: &str| -> Result<Option<Vec<String>>> {
        let Some(v) = table.get(key) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad(format!("{key} in {name} must be an array of strings")))?;
        Ok(Some(items))
    };
    match (list("exclude")?, list("include")?) {
        (Some(_), Some(_)) => Err(bad(format!(
            "{name} has both include and exclude; they are mutually exclusive, keep one"
        ))),
        (Some(ex), None) if !ex.is_empty() => Ok(FileFilter::Exclude(ex)),
        (None, Some(inc)) if !inc.is_empty() => Ok(FileFilter::Include(inc)),
        _ => Ok(FileFilter::All),
    }
}

/// A TOML error as one line with its position.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.as_bytes().get(..span.start).unwrap_or(text.as_bytes());
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

/// Reads the file filter of the app in `app_dir` (none without a `project.toml`).
pub fn read_file_filter(app_dir: &Path) -> Result<FileFilter> {
    read_filter_from(&app_dir.join(PROJECT_DESCRIPTOR))
}

/// Reads the file filter of the descriptor at `path` (none when it is missing).
pub fn read_filter_from(path: &Path) -> Result<FileFilter> {
    let path = path.to_path_buf();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| Error::ProjectDescriptor {
                path: path.clone(),
                reason: "not valid UTF-8".to_owned(),
            })?;
            parse_project_descriptor(&path, &text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileFilter::All),
        Err(e) => Err(app_error("read app file", &path, &e)),
    }
}

/// Compiles the patterns of a filter, relative to `root`.
fn compile(root: &Path, patterns: &[String]) -> Result<Gitignore> {
    let path = root.join(PROJECT_DESCRIPTOR);
    let mut b = GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p).map_err(|e| Error::ProjectDescriptor {
            path: path.clone(),
            reason: format!("bad pattern {p:?}: {e}"),
        })?;
    }
    b.build().map_err(|e| Error::ProjectDescriptor {
        path,
        reason: e.to_string(),
    })
}

/// Copies the app in `src` into `dest`, which is emptied (or created) first.
/// `src` is never modified. With `owner` (only when running as root), everything
/// copied is chowned to that uid and gid, so the build user can write it.
pub fn copy_app(src: &Path, dest: &Path, owner: Option<(u32, u32)>) -> Result<CopyStats> {
    copy_app_excluding(src, dest, owner, &[])
}

/// [`copy_app`], leaving out `skip` (absolute paths, e.g. the build's own output
/// when it lands inside the app) and the temporaries written beside them
/// (`.NAME.locald-tmp-*`), so one build's output never becomes the next build's
/// input.
pub fn copy_app_excluding(
    src: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    skip: &[PathBuf],
) -> Result<CopyStats> {
    copy_app_with(src, dest, owner, skip, None)
}

/// [`copy_app_excluding`] with the include/exclude lists of `descriptor`
/// instead of the app's own `project.toml` (`--descriptor`).
pub fn copy_app_with(
    src: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    skip: &[PathBuf],
    descriptor: Option<&Path>,
) -> Result<CopyStats> {
    let src = app_root(src)?;
    let filter = match descriptor {
        Some(d) => read_filter_from(d)?,
        None => read_file_filter(&src)?,
    };
    let dest = absolute_dest(dest)?;
    if src.starts_with(&dest) {
        return Err(Error::AppDir {
            path: src,
            reason: format!(
                "is inside the build workspace {}, which is emptied before each build",
                dest.display()
            ),
        });
    }
    let root_meta = std::fs::metadata(&src).map_err(|e| app_error("read app file", &src, &e))?;
    locald_core::fsutil::fresh_dir(&dest)?;

    let (exclude, include) = match &filter {
        FileFilter::All => (None, None),
        FileFilter::Exclude(p) => (Some(compile(&src, p)?), None),
        FileFilter::Include(p) => (None, Some(compile(&src, p)?)),
    };
    let mut copier = Copier {
        src: src.clone(),
        dest: dest.clone(),
        owner,
        stats: CopyStats::default(),
        created: HashSet::new(),
        dir_times: Vec::new(),
    };
    copier.finish_dir(&dest, &root_meta)?;
    copier.dir_times.push((dest.clone(), times(&root_meta)));

    let descriptor = src.join(PROJECT_DESCRIPTOR);
    let walk = {
        let dest = dest.clone();
        let descriptor = descriptor.clone();
        let skip = skip.to_vec();
        let skipped = move |path: &Path| {
            skip.iter().any(|s| {
                path == s
                    || (path.parent() == s.parent()
                        && s.file_name().zip(path.file_name()).is_some_and(|(s, p)| {
                            p.to_string_lossy()
                                .starts_with(&format!(".{}.locald-tmp", s.to_string_lossy()))
                        }))
            })
        };
        ignore::WalkBuilder::new(&src)
            .standard_filters(false)
            .git_ignore(true)
            .require_git(false)
            .follow_links(false)
            .sort_by_file_name(|a, b| a.cmp(b))
            .filter_entry(move |ent| {
                if ent.depth() == 0 {
                    return true;
                }
                let path = ent.path();
                let is_dir = ent.file_type().is_some_and(|t| t.is_dir());
                // `project.toml` is copied after the walk, whatever the filters say.
                let descriptor = path == descriptor && !is_dir;
                !(ent.file_name() == ".git"
                    || descriptor
                    || path == dest
                    || skipped(path)
                    || exclude
                        .as_ref()
                        .is_some_and(|g| g.matched(path, is_dir).is_ignore()))
            })
            .build()
    };
    for ent in walk {
        let ent = ent.map_err(|e| walk_error(&src, e))?;
        if let Some(e) = ent.error() {
            // A problem with a `.gitignore` in this directory.
            if let Some(io) = e.io_error() {
                let path = error_path(e).unwrap_or(ent.path()).to_path_buf();
                return Err(app_error("read app file", &path, io));
            }
            tracing::warn!("{}: {e}", ent.path().display());
        }
        if ent.depth() == 0 {
            continue;
        }
        let rel = ent.path().strip_prefix(&src).unwrap_or(ent.path());
        let meta = std::fs::symlink_metadata(ent.path())
            .map_err(|e| app_error("read app file", ent.path(), &e))?;
        if let Some(include) = &include {
            let wanted = include
                .matched_path_or_any_parents(rel, meta.is_dir())
                .is_ignore();
            if !wanted {
                continue;
            }
            if let Some(parent) = rel.parent() {
                copier.ensure_dir(parent)?;
            }
        }
        copier.copy_entry(rel, &meta)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(&descriptor) {
        if !meta.is_dir() {
            copier.copy_entry(Path::new(PROJECT_DESCRIPTOR), &meta)?;
        }
    }
    // Last, and children first: creating entries changes a directory's mtime.
    for (dir, (atime, mtime)) in copier.dir_times.iter().rev() {
        filetime::set_file_times(dir, *atime, *mtime)
            .map_err(|e| app_error("set the times of", dir, &e))?;
    }
    Ok(copier.stats)
}

/// The app directory, canonical; an error unless it is a directory.
pub(crate) fn app_root(src: &Path) -> Result<PathBuf> {
    let not_usable = |reason: String| Error::AppDir {
        path: src.to_path_buf(),
        reason,
    };
    let canonical = std::fs::canonicalize(src).map_err(|e| {
        not_usable(if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist".to_owned()
        } else {
            io_reason(&e)
        })
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|e| not_usable(io_reason(&e)))?;
    if !meta.is_dir() {
        return Err(not_usable(
            "is not a directory (give the directory that holds the app's source)".to_owned(),
        ));
    }
    Ok(canonical)
}

/// `dest` with a canonical parent (created if missing), so that it can be
/// compared with the canonical `src`.
fn absolute_dest(dest: &Path) -> Result<PathBuf> {
    let name = dest.file_name().ok_or_else(|| Error::AppDir {
        path: dest.to_path_buf(),
        reason: "is not a usable build workspace path".to_owned(),
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(Error::io("create directory", parent))?;
    let parent = std::fs::canonicalize(parent).map_err(Error::io("resolve", parent))?;
    Ok(parent.join(name))
}

/// Access and modification time of `meta`.
fn times(meta: &Metadata) -> (FileTime, FileTime) {
    (
        FileTime::from_last_access_time(meta),
        FileTime::from_last_modification_time(meta),
    )
}

struct Copier {
    src: PathBuf,
    dest: PathBuf,
    owner: Option<(u32, u32)>,
    stats: CopyStats,
    /// Directories created, relative.
    created: HashSet<PathBuf>,
    /// Directories whose times are set at the end, in creation order.
    dir_times: Vec<(PathBuf, (FileTime, FileTime))>,
}

impl Copier {
    fn copy_entry(&mut self, rel: &Path, meta: &Metadata) -> Result<()> {
        let ft = meta.file_type();
        if ft.is_dir() {
            self.ensure_dir(rel)
        } else if ft.is_symlink() {
            self.copy_symlink(rel, meta)
        } else if ft.is_file() {
            self.copy_file(rel)
        } else {
            self.skip(rel);
            Ok(())
        }
    }

    fn skip(&mut self, rel: &Path) {
        tracing::debug!("not copying special file {}", rel.display());
        self.stats.skipped += 1;
        if self.stats.skipped_examples.len() < SKIPPED_EXAMPLES {
            self.stats.skipped_examples.push(rel.to_path_buf());
        }
    }

    /// Creates `rel` and any missing parent, each with its source's mode.
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        if rel.as_os_str().is_empty() || self.created.contains(rel) {
            return Ok(());
        }
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent)?;
        }
        let from = self.src.join(rel);
        let to = self.dest.join(rel);
        let meta =
            std::fs::symlink_metadata(&from).map_err(|e| app_error("read app file", &from, &e))?;
        std::fs::create_dir(&to).map_err(|e| app_error("create workspace directory", &to, &e))?;
        self.finish_dir(&to, &meta)?;
        self.dir_times.push((to, times(&meta)));
        self.created.insert(rel.to_path_buf());
        self.stats.dirs += 1;
        Ok(())
    }

    /// Owner and mode of a created directory.
    fn finish_dir(&self, to: &Path, meta: &Metadata) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(to, Some(uid), Some(gid))
                .map_err(|e| app_error("change the owner of", to, &e))?;
        }
        let mode = (meta.mode() & 0o777) | 0o700;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
            .map_err(|e| app_error("set the mode of", to, &e))
    }

    fn copy_symlink(&mut self, rel: &Path, meta: &Metadata) -> Result<()> {
        let from = self.src.join(rel);
        let to = self.dest.join(rel);
        let target =
            std::fs::read_link(&from).map_err(|e| app_error("read app file", &from, &e))?;
        std::os::unix::fs::symlink(&target, &to)
            .map_err(|e| app_error("create workspace symlink", &to, &e))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(&to, Some(uid), Some(gid))
                .map_err(|e| app_error("change the owner of", &to, &e))?;
        }
        let (atime, mtime) = times(meta);
        filetime::set_symlink_file_times(&to, atime, mtime)
            .map_err(|e| app_error("set the times of", &to, &e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn copy_file(&mut self, rel: &Path) -> Result<()> {
        let from = self.src.join(rel);
        let to = self.dest.join(rel);
        // No following a symlink swapped in since the walk saw a file, and no
        // blocking on a fifo swapped in: O_NONBLOCK does nothing to regular files.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let mut input = OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(&from)
            .map_err(|e| app_error("read app file", &from, &e))?;
        let meta = input
            .metadata()
            .map_err(|e| app_error("read app file", &from, &e))?;
        if !meta.is_file() {
            self.skip(rel);
            return Ok(());
        }
        let mut output: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&to)
            .map_err(|e| app_error("write workspace file", &to, &e))?;
        let n = std::io::copy(&mut input, &mut output)
            .map_err(|e| app_error("copy app file", &from, &e))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&output, Some(uid), Some(gid))
                .map_err(|e| app_error("change the owner of", &to, &e))?;
        }
        let mode = (meta.mode() & 0o777) | 0o200;
        output
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| app_error("set the mode of", &to, &e))?;
        let (atime, mtime) = times(&meta);
        filetime::set_file_handle_times(&output, Some(atime), Some(mtime))
            .map_err(|e| app_error("set the times of", &to, &e))?;
        self.stats.files += 1;
        self.stats.bytes += n;
        Ok(())
    }
}

/// An I/O error about an app or workspace path, with a hint where there is one.
fn app_error(op: &'static str, path: &Path, e: &std::io::Error) -> Error {
    use std::io::ErrorKind;
    let reading = op.contains("app file");
    let hint = match e.kind() {
        ErrorKind::PermissionDenied if reading => {
            Some("make it readable, or leave it out with .gitignore or project.toml's exclude")
        }
        ErrorKind::StorageFull => Some("free some disk space"),
        _ => None,
    };
    Error::AppCopy {
        op,
        path: path.to_path_buf(),
        reason: io_reason(e),
        hint,
    }
}

/// `permission denied`, not `Permission denied (os error 13)`.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

/// The path an `ignore` error is about.
fn error_path(e: &ignore::Error) -> Option<&Path> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errs) => errs.iter().find_map(error_path),
        _ => None,
    }
}

fn walk_error(src: &Path, e: ignore::Error) -> Error {
    let path = error_path(&e).unwrap_or(src).to_path_buf();
    match e.io_error() {
        Some(io) => app_error("read app file", &path, io),
        None => Error::AppCopy {
            op: "read app file",
            path,
            reason: e.to_string(),
            hint: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Writes `files` (path, content) under `root`, creating parents.
    fn write(root: &Path, files: &[(&str, &str)]) {
        for (p, c) in files {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
    }

    /// Every path under `root`, relative, sorted; directories end with `/`.
    fn listing(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &e.path(), out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    fn copy(files: &[(&str, &str)]) -> (tempfile::TempDir, Vec<String>) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        write(&src, files);
        let dest = t.path().join("state/workspace");
        copy_app(&src, &dest, None).unwrap();
        let l = listing(&dest);
        (t, l)
    }

    #[test]
    fn skips_the_build_output_and_its_temporaries() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src").canonicalize().unwrap_or_else(|_| {
            std::fs::create_dir(t.path().join("src")).unwrap();
            t.path().join("src").canonicalize().unwrap()
        });
        write(
            &src,
            &[
                ("app.oci/index.json", "{}"),
                (".app.oci.locald-tmp-12/blob", ""),
                ("sub/app.oci/kept", ""),
                ("app.oci.txt", ""),
                ("main.sh", ""),
            ],
        );
        let dest = t.path().join("state/workspace");
        copy_app_excluding(&src, &dest, None, &[src.join("app.oci")]).unwrap();
        assert_eq!(
            listing(&dest),
            [
                "app.oci.txt",
                "main.sh",
                "sub/",
                "sub/app.oci/",
                "sub/app.oci/kept"
            ]
        );
        copy_app(&src, &dest, None).unwrap();
        assert!(listing(&dest).contains(&"app.oci/index.json".to_owned()));
    }

    #[test]
    fn gitignore_semantics() {
        let (_t, got) = copy(&[
            (
                ".gitignore",
                "*.log\n!keep.log\n/anchored.txt\nbuild/\n# comment\n\\#hash\n",
            ),
            ("a.log", ""),
            ("keep.log", ""),
            ("anchored.txt", ""),
            ("sub/anchored.txt", ""),
            ("sub/x.log", ""),
            ("build/out", ""),
            ("sub/build/out", ""),
            ("notdir/build", ""), // a file named build: dir-only pattern does not match
            ("#hash", ""),
            ("nested/.gitignore", "secret\n!/a.log\n/only-here\n"),
            ("nested/secret", ""),
            ("nested/deeper/secret", ""),
            ("nested/a.log", ""),
            ("nested/deeper/a.log", ""),
            ("nested/only-here", ""),
            ("nested/deeper/only-here", ""),
            ("secret", ""), // nested rules do not apply above
            ("src/main.rs", ""),
        ]);
        assert_eq!(
            got,
            [
                ".gitignore",
                "keep.log",
                "nested/",
                "nested/.gitignore",
                "nested/a.log",
                "nested/deeper/",
                "nested/deeper/only-here",
                "notdir/",
                "notdir/build",
                "secret",
                "src/",
                "src/main.rs",
                "sub/",
                "sub/anchored.txt",
            ]
        );
    }

    #[test]
    fn negation_cannot_reinclude_below_an_ignored_directory() {
        let (_t, got) = copy(&[
            (".gitignore", "logs/\n!logs/keep\n"),
            ("logs/keep", ""),
            ("logs/drop", ""),
            ("a", ""),
        ]);
        assert_eq!(got, [".gitignore", "a"]);
    }

    #[test]
    fn git_is_always_excluded() {
        let (_t, got) = copy(&[
            (".git/HEAD", "ref: refs/heads/main\n"),
            (".git/config", ""),
            ("vendor/lib/.git", "gitdir: ../../.git/modules/lib\n"),
            ("vendor/lib/x", ""),
            (".github/workflow", ""),
            (".env", "A=1"),
        ]);
        assert_eq!(
            got,
            [
                ".env",
                ".github/",
                ".github/workflow",
                "vendor/",
                "vendor/lib/",
                "vendor/lib/x"
            ]
        );
    }

    #[test]
    fn project_toml_v02_exclude() {
        let (_t, got) = copy(&[
            (
                "project.toml",
                "[_]\nschema-version = \"0.2\"\n[io.buildpacks]\nexclude = [\"*.md\", \"/docs\", \"tmp/\"]\n[build]\ninclude = [\"ignored-in-0.2\"]\n",
            ),
            ("README.md", ""),
            ("sub/NOTES.md", ""),
            ("docs/a", ""),
            ("sub/docs/a", ""),
            ("tmp/x", ""),
            ("main.go", ""),
        ]);
        assert_eq!(
            got,
            ["main.go", "project.toml", "sub/", "sub/docs/", "sub/docs/a"]
        );
    }

    #[test]
    fn project_toml_v01_include() {
        let (_t, got) = copy(&[
            (
                "project.toml",
                "[build]\ninclude = [\"*.jar\", \"/config\", \"!config/secret\"]\n",
            ),
            ("target/app.jar", ""),
            ("app.jar", ""),
            ("config/a.yml", ""),
            ("config/secret", ""),
            ("src/Main.java", ""),
            ("empty/x.txt", ""),
        ]);
        assert_eq!(
            got,
            [
                "app.jar",
                "config/",
                "config/a.yml",
                "project.toml",
                "target/",
                "target/app.jar"
            ]
        );
    }

    #[test]
    fn project_toml_is_copied_even_when_ignored() {
        let (_t, got) = copy(&[
            (".gitignore", "project.toml\n"),
            (
                "project.toml",
                "[[build.env]]\nname = \"A\"\nvalue = \"1\"\n",
            ),
        ]);
        assert_eq!(got, [".gitignore", "project.toml"]);
    }

    #[test]
    fn descriptor_table() {
        let p = Path::new("/app/project.toml");
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok: &[(&str, FileFilter)] = &[
            ("", FileFilter::All),
            ("[build]\nexclude = [\"a\"]", FileFilter::Exclude(s(&["a"]))),
            (
                "[_]\nschema-version = \"0.1\"\n[build]\ninclude = [\"a\", \"b\"]",
                FileFilter::Include(s(&["a", "b"])),
            ),
            (
                "[_]\nschema-version = \"0.2\"\n[io.buildpacks]\ninclude = [\"x\"]",
                FileFilter::Include(s(&["x"])),
            ),
            (
                "[_]\nschema-version = \"0.2\"\n[build]\nexclude = [\"x\"]",
                FileFilter::All,
            ),
            ("[build]\ninclude = []", FileFilter::All),
            ("[io.buildpacks]\nexclude = [\"x\"]", FileFilter::All),
        ];
        for (text, want) in ok {
            assert_eq!(&parse_project_descriptor(p, text).unwrap(), want, "{text}");
        }
        let bad: &[(&str, &str)] = &[
            (
                "[build]\ninclude = [\"a\"]\nexclude = [\"b\"]",
                "mutually exclusive",
            ),
            (
                "[_]\nschema-version = \"0.2\"\n[io.buildpacks]\ninclude = []\nexclude = []",
                "mutually exclusive",
            ),
            ("[build]\nexclude = \"a\"", "array of strings"),
            ("[build]\nexclude = [1]", "array of strings"),
            ("[_]\nschema-version = \"9.9\"", "schema-version"),
            ("[build\nexclude = []", "invalid TOML at line 1"),
            ("a = 1\nb = = 2", "invalid TOML at line 2"),
        ];
        for (text, want) in bad {
            let e = parse_project_descriptor(p, text).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("/app/project.toml"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn bad_project_toml_fails_the_copy_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("app");
        write(
            &src,
            &[(
                "project.toml",
                "[build]\ninclude = [\"a\"]\nexclude = [\"b\"]\n",
            )],
        );
        let e = copy_app(&src, &t.path().join("ws"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("project.toml") && e.contains("mutually exclusive"),
            "{e}"
        );
        write(&src, &[("project.toml", "[build\n")]);
        let e = copy_app(&src, &t.path().join("ws"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("project.toml") && e.contains("invalid TOML"),
            "{e}"
        );
    }

    #[test]
    fn symlinks_are_copied_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("app");
        write(&src, &[("real/f", "data")]);
        write(t.path(), &[("outside/secret", "s"), ("outside/dir/x", "x")]);
        symlink("real/f", src.join("rel")).unwrap();
        symlink(t.path().join("outside/secret"), src.join("abs")).unwrap();
        symlink("../outside/dir", src.join("up")).unwrap();
        symlink("nowhere", src.join("dangling")).unwrap();
        symlink("real", src.join("dirlink")).unwrap();
        let dest = t.path().join("ws");
        let stats = copy_app(&src, &dest, None).unwrap();
        assert_eq!(stats.symlinks, 5);
        for (name, target) in [
            ("rel", PathBuf::from("real/f")),
            ("abs", t.path().join("outside/secret")),
            ("up", PathBuf::from("../outside/dir")),
            ("dangling", PathBuf::from("nowhere")),
            ("dirlink", PathBuf::from("real")),
        ] {
            let p = dest.join(name);
            assert!(
                std::fs::symlink_metadata(&p).unwrap().is_symlink(),
                "{name}"
            );
            assert_eq!(std::fs::read_link(&p).unwrap(), target);
        }
        assert_eq!(
            listing(&dest),
            ["abs", "dangling", "dirlink", "real/", "real/f", "rel", "up"]
        );
    }

    #[test]
    fn special_files_are_skipped_and_counted() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("app");
        write(&src, &[("a", "x")]);
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            src.join("pipe"),
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
        let dest = t.path().join("ws");
        let stats = copy_app(&src, &dest, None).unwrap();
        assert_eq!(stats.skipped, 2);
        assert_eq!(
            stats.skipped_examples,
            [PathBuf::from("pipe"), PathBuf::from("sock")]
        );
        assert_eq!(stats.files, 1);
        assert_eq!(listing(&dest), ["a"]);
    }

    #[test]
    fn modes_times_and_stats() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("app");
        write(&src, &[("ro", "12345"), ("bin/run", "#!/bin/sh\n")]);
        let set = |p: &str, m: u32| {
            std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        set("ro", 0o444);
        set("bin/run", 0o4755); // setuid is dropped
        set("bin", 0o555);
        let old = FileTime::from_unix_time(1_000_000_000, 0);
        filetime::set_file_times(src.join("ro"), old, old).unwrap();
        filetime::set_file_times(src.join("bin"), old, old).unwrap();
        let dest = t.path().join("ws");
        let stats = copy_app(&src, &dest, None).unwrap();
        set("bin", 0o755);
        let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("ro"), 0o644);
        assert_eq!(mode("bin/run"), 0o755);
        assert_eq!(mode("bin"), 0o755);
        let mtime =
            |p: &Path| FileTime::from_last_modification_time(&std::fs::metadata(p).unwrap());
        assert_eq!(mtime(&dest.join("ro")), old);
        assert_eq!(mtime(&dest.join("bin")), old);
        assert_eq!(mtime(&dest), mtime(&src));
        assert_eq!(
            stats,
            CopyStats {
                files: 2,
                dirs: 1,
                symlinks: 0,
                bytes: 15,
                skipped: 0,
                skipped_examples: vec![],
            }
        );
    }

    #[test]
    fn owner_is_applied_everywhere() {
        if !locald_core::test_support::root_or_skip() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("app");
        write(&src, &[("d/f", "x")]);
        symlink("/etc/passwd", src.join("d/l")).unwrap();
        let dest = t.path().join("ws");
        copy_app(&src, &dest, Some((1234, 1234))).unwrap();
        for p in ["", "d", "d/f", "d/l"] {
            let m = std::fs::symlink_metadata(dest.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 1234), "{p:?}");
        }
        // The symlink's target was not chowned.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
        assert_eq!(std::fs::metadata(src.join("d/f")).unwrap().uid(), 0);
    }

    #[test]
    fn source_is_untouched_and_dest_is_emptied() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("app");
        write(&src, &[(".gitignore", "x\n"), ("x", "1"), ("y", "2")]);
        std::fs::set_permissions(src.join("y"), std::fs::Permissions::from_mode(0o400)).unwrap();
        let dest = t.path().join("ws");
        write(&dest, &[("stale", ""), ("old/deep", "")]);
        let before = listing(&src);
        let mode_before = std::fs::metadata(src.join("y")).unwrap().mode();
        copy_app(&src, &dest, None).unwrap();
        assert_eq!(listing(&dest), [".gitignore", "y"]);
        assert_eq!(listing(&src), before);
        assert_eq!(
            std::fs::metadata(src.join("y")).unwrap().mode(),
            mode_before
        );
        // A second copy starts from empty again.
        std::fs::remove_file(src.join("y")).unwrap();
        copy_app(&src, &dest, None).unwrap();
        assert_eq!(listing(&dest), [".gitignore"]);
    }

    #[test]
    fn dest_inside_src_is_not_copied_into_itself() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("app");
        write(&src, &[("a", "1")]);
        let dest = src.join(".state/ws");
        copy_app(&src, &dest, None).unwrap();
        assert_eq!(listing(&dest), [".state/", "a"]);
        // src inside dest would be emptied: refused.
        let e = copy_app(&src, t.path(), None).unwrap_err().to_string();
        assert!(e.contains("inside the build workspace"), "{e}");
        assert!(src.join("a").exists());
    }

    #[test]
    fn src_must_be_a_directory() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("ws");
        let e = copy_app(&t.path().join("missing"), &dest, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("does not exist"), "{e}");
        write(t.path(), &[("file", "")]);
        let e = copy_app(&t.path().join("file"), &dest, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a directory"), "{e}");
    }

    #[test]
    fn io_reasons_read_as_sentences() {
        let e = std::io::Error::from_raw_os_error(13);
        let err = app_error("read app file", Path::new("/a/b"), &e).to_string();
        assert_eq!(
            err,
            "cannot read app file /a/b: permission denied; make it readable, or leave it out with .gitignore or project.toml's exclude"
        );
    }
}

//! Per-project build state, kept in the cache between builds of one app.
//!
//! ```text
//! projects/<key>/           key = first 16 hex digits of sha256(canonical app path)
//!   workspace/              the copy of the app (-app), made fresh each build
//!   layers/                 -layers, fresh each build
//!   platform/               -platform (env/NAME files), fresh each build
//!   cache/                  -cache-dir, the buildpacks' cache: kept
//!   layout/                 -layout-dir: what the lifecycle reads of the run image and
//!                           the previous app image (sparse layouts), where it exports: kept
//!   images/                 the run image and the last app image whole (OCI layouts): kept
//!   project.json            app path, created, last build started, builds
//! locks/project-<key>.lock  held exclusively while a build of the app runs
//! ```
//!
//! Layers and platform start empty each build, as `pack` gives each build fresh
//! volumes; what carries over between builds is the buildpacks' cache and the
//! layout. Two builds of the same app wait for each other (the lock); builds of
//! different apps run side by side.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::fsutil;
use locald_core::lifecycle::HostDirs;
use locald_core::lock::{FileLock, Mode};
use locald_core::progress::{Reporter, Silent};

/// Format version of `project.json`.
const RECORD_VERSION: u32 = 1;

/// The message given when another build of the same app holds the lock.
const WAITING: &str = "waiting for another build of this app to finish";

/// The state of one app's builds, locked for as long as it lives.
#[derive(Debug)]
pub struct Project {
    key: String,
    app: PathBuf,
    dir: PathBuf,
    _lock: FileLock,
}

/// The host directories of a build, but the builder's (the caller adds it with
/// [`ProjectDirs::with_builder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectDirs {
    /// `workspace/`: where the app is copied (`-app`).
    pub app: PathBuf,
    /// `layers/`.
    pub layers: PathBuf,
    /// `platform/`.
    pub platform: PathBuf,
    /// `cache/`, kept between builds.
    pub cache: PathBuf,
    /// `layout/`, kept between builds.
    pub layout: PathBuf,
    /// `images/`, kept between builds: the whole images the layout's sparse
    /// ones are filled from (see [`crate::sparse`]).
    pub images: PathBuf,
}

impl ProjectDirs {
    /// The full set of host directories, with the builder tree.
    pub fn with_builder(self, builder: PathBuf) -> HostDirs {
        HostDirs {
            builder,
            app: self.app,
            layers: self.layers,
            platform: self.platform,
            cache: self.cache,
            layout: self.layout,
        }
    }
}

/// What `project.json` records (and [`list_projects`] returns).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProjectInfo {
    /// Format version.
    pub version: u32,
    /// The state directory's key.
    pub key: String,
    /// The app directory (canonical).
    pub app: PathBuf,
    /// When the state was created (Unix seconds).
    pub created: u64,
    /// When the last build started (Unix seconds).
    pub last_build_started: Option<u64>,
    /// How many builds were started.
    pub builds: u64,
}

impl Project {
    /// Opens (creating) the state of the app in `app_dir` under `cache_root`, and
    /// locks it; if another build of the app holds the lock, waits for it (saying
    /// so once). Blocking: call it from a blocking thread.
    pub fn open(cache_root: &Path, app_dir: &Path) -> Result<Project> {
        Self::open_reporting(cache_root, app_dir, &Silent)
    }

    /// [`Project::open`], telling `reporter` (as well as the log) when it waits.
    pub fn open_reporting(
        cache_root: &Path,
        app_dir: &Path,
        reporter: &dyn Reporter,
    ) -> Result<Project> {
        let app = crate::appcopy::app_root(app_dir)?;
        let key = project_key(&app);
        let unusable = |source| Error::CacheUnusable {
            path: cache_root.to_path_buf(),
            source,
        };
        let locks = cache_root.join("locks");
        let dir = cache_root.join("projects").join(&key);
        std::fs::create_dir_all(&locks).map_err(unusable)?;
        std::fs::create_dir_all(&dir).map_err(unusable)?;
        let lock_path = locks.join(format!("project-{key}.lock"));
        let lock = match FileLock::try_acquire(&lock_path, Mode::Exclusive)? {
            Some(l) => l,
            None => {
                tracing::info!("{WAITING} ({})", app.display());
                reporter.note(WAITING);
                FileLock::acquire(&lock_path, Mode::Exclusive)?
            }
        };
        let project = Project {
            key,
            app,
            dir,
            _lock: lock,
        };
        let record = project.record_path();
        match read_info(&record) {
            Some(info) if info.app == project.app => {}
            _ => write_info(
                &record,
                &ProjectInfo {
                    version: RECORD_VERSION,
                    key: project.key.clone(),
                    app: project.app.clone(),
                    created: now(),
                    last_build_started: None,
                    builds: 0,
                },
            )?,
        }
        Ok(project)
    }

    /// The state directory's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The app directory (canonical).
    pub fn app_dir(&self) -> &Path {
        &self.app
    }

    /// The state directory, `<cache root>/projects/<key>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directories of a build, as they are (nothing is created).
    pub fn dirs(&self) -> ProjectDirs {
        ProjectDirs {
            app: self.dir.join("workspace"),
            layers: self.dir.join("layers"),
            platform: self.dir.join("platform"),
            cache: self.dir.join("cache"),
            layout: self.dir.join("layout"),
            images: self.dir.join("images"),
        }
    }

    /// What `project.json` says now.
    pub fn info(&self) -> Option<ProjectInfo> {
        read_info(&self.record_path())
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("project.json")
    }

    /// Gets the directories ready for a build: `workspace/`, `layers/` and
    /// `platform/` empty, `cache/` and `layout/` kept (`cache/` emptied when
    /// `clear_cache`); with `owner` (when running as root), all of them and
    /// everything in `cache/` and `layout/` owned by that uid and gid. Counts the
    /// build in `project.json`. The app is not copied: see
    /// [`crate::appcopy::copy_app`].
    pub fn prepare(&self, clear_cache: bool, owner: Option<(u32, u32)>) -> Result<ProjectDirs> {
        self.prepare_with_cache(clear_cache, owner, None)
    }

    /// [`Project::prepare`] with the buildpacks' cache in `cache_dir` (made
    /// when missing; what CI keeps between jobs) instead of the app's state.
    pub fn prepare_with_cache(
        &self,
        clear_cache: bool,
        owner: Option<(u32, u32)>,
        cache_dir: Option<&Path>,
    ) -> Result<ProjectDirs> {
        let mut dirs = self.dirs();
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
            dirs.cache = dir.to_path_buf();
        }
        for d in [&dirs.app, &dirs.layers, &dirs.platform] {
            fsutil::fresh_dir(d)?;
        }
        if clear_cache {
            fsutil::fresh_dir(&dirs.cache)?;
        }
        for d in [&dirs.cache, &dirs.layout, &dirs.images] {
            ensure_real_dir(d)?;
        }
        if let Some(owner) = owner {
            for d in [&dirs.app, &dirs.layers, &dirs.platform] {
                chown_one(d, owner)?;
            }
            for d in [&dirs.cache, &dirs.layout] {
                chown_tree(d, owner)?;
            }
        }
        let record = self.record_path();
        let mut info = read_info(&record).unwrap_or_else(|| ProjectInfo {
            version: RECORD_VERSION,
            key: self.key.clone(),
            app: self.app.clone(),
            created: now(),
            last_build_started: None,
            builds: 0,
        });
        info.last_build_started = Some(now());
        info.builds += 1;
        write_info(&record, &info)?;
        Ok(dirs)
    }
}

/// The key of an app's state: the first 16 hex digits of the SHA-256 of its
/// canonical path.
pub fn project_key(canonical_app: &Path) -> String {
    Digest::sha256_of(canonical_app.as_os_str().as_bytes()).hex()[..16].to_owned()
}

/// Writes the user's build environment (`--env KEY=VALUE`) as the lifecycle reads
/// it: one file `<platform>/env/KEY` holding exactly VALUE. A later duplicate key
/// wins.
pub fn write_platform_env(platform: &Path, env: &[(String, String)]) -> Result<()> {
    for (key, _) in env {
        check_env_key(key)?;
    }
    let dir = platform.join("env");
    std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
    for (key, value) in env {
        let path = dir.join(key);
        std::fs::write(&path, value.as_bytes()).map_err(Error::io("write", &path))?;
    }
    Ok(())
}

/// Parses `KEY=VALUE`, or `KEY` alone for the value of `KEY` in this process's
/// environment (as `pack build --env` does; an error when it is not set).
pub fn parse_env_arg(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((key, value)) => {
            check_env_key(key)?;
            Ok((key.to_owned(), value.to_owned()))
        }
        None => {
            check_env_key(s)?;
            let bad = |reason: &str| Error::EnvVar {
                key: s.to_owned(),
                reason: reason.to_owned(),
            };
            match std::env::var_os(s) {
                None => Err(bad(
                    "is not set in this environment (give a value with KEY=VALUE)",
                )),
                Some(v) => v
                    .into_string()
                    .map(|v| (s.to_owned(), v))
                    .map_err(|_| bad("has a value that is not valid UTF-8")),
            }
        }
    }
}

/// Parses an env file (`--env-file`): `KEY=VALUE` lines, `KEY` alone for this
/// environment's value, blank lines and `#` comments skipped. A bad line is an
/// error naming the file and the line number.
pub fn parse_env_file(
    text: &str,
    file: &Path,
) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let entry = line.trim_end_matches('\r');
        let entry = entry.trim_start();
        let key = entry.split_once('=').map_or(entry, |(k, _)| k);
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(format!(
                "{}:{}: {entry:?} is not KEY=VALUE (names have no spaces; # starts a comment)",
                file.display(),
                n + 1
            ));
        }
        let pair =
            parse_env_arg(entry).map_err(|e| format!("{}:{}: {e}", file.display(), n + 1))?;
        out.push(pair);
    }
    Ok(out)
}

/// A descriptor's build env (name, value) and buildpack group (`ID[@VERSION]`
/// or a local directory).
pub type DescriptorBuild = (Vec<(String, String)>, Vec<String>);

/// What a project descriptor (`project.toml`) says of the build: its `env`
/// (`[[io.buildpacks.build.env]]`, schema 0.1 `[[build.env]]`) and its
/// buildpack group (`[[io.buildpacks.group]]`, 0.1 `[[build.buildpacks]]`),
/// each entry `id` with an optional `version`, or a `uri` to a local directory.
pub fn parse_descriptor_build(
    text: &str,
    file: &Path,
) -> std::result::Result<DescriptorBuild, String> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e| format!("{} is not valid TOML: {e}", file.display()))?;
    let io_buildpacks = doc
        .get("io")
        .and_then(|v| v.get("buildpacks"))
        .and_then(|v| v.as_table());
    let build = doc.get("build").and_then(|v| v.as_table());
    let env_entries = io_buildpacks
        .and_then(|t| t.get("build"))
        .and_then(|b| b.get("env"))
        .or_else(|| build.and_then(|b| b.get("env")));
    let mut env = Vec::new();
    for e in env_entries.and_then(|v| v.as_array()).into_iter().flatten() {
        let name = e.get("name").and_then(|v| v.as_str());
        let value = e.get("value").and_then(|v| v.as_str());
        match (name, value) {
            (Some(n), Some(v)) => {
                check_env_key(n).map_err(|e| format!("{}: {e}", file.display()))?;
                env.push((n.to_owned(), v.to_owned()));
            }
            _ => {
                return Err(format!(
                    "{}: a build env entry needs a name and a value",
                    file.display()
                ))
            }
        }
    }
    let group_entries = io_buildpacks
        .and_then(|t| t.get("group"))
        .or_else(|| build.and_then(|b| b.get("buildpacks")));
    let mut group = Vec::new();
    for g in group_entries
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let id = g.get("id").and_then(|v| v.as_str());
        let version = g.get("version").and_then(|v| v.as_str());
        let uri = g.get("uri").and_then(|v| v.as_str());
        match (id, version, uri) {
            (_, _, Some(uri)) => {
                let rel = uri.strip_prefix("file://").unwrap_or(uri);
                let base = file.parent().unwrap_or(Path::new("."));
                group.push(base.join(rel).to_string_lossy().into_owned());
            }
            (Some(id), Some(v), None) => group.push(format!("{id}@{v}")),
            (Some(id), None, None) => group.push(id.to_owned()),
            _ => {
                return Err(format!(
                    "{}: a buildpack of the group needs an id or a uri",
                    file.display()
                ))
            }
        }
    }
    Ok((env, group))
}

/// A name that can be a file in `<platform>/env`.
fn check_env_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "the name is empty (write KEY=VALUE)"
    } else if key == "." || key == ".." {
        "is not a usable variable name"
    } else if key.contains('/') {
        "a variable name cannot contain '/'"
    } else if key.contains('\0') {
        "a variable name cannot contain a NUL character"
    } else if key.contains('=') {
        "a variable name cannot contain '='"
    } else {
        return Ok(());
    };
    Err(Error::EnvVar {
        key: key.to_owned(),
        reason: reason.to_owned(),
    })
}

/// Every project with state under `cache_root`, by app path. Unreadable or
/// foreign `project.json` files are left out.
pub fn list_projects(cache_root: &Path) -> Result<Vec<ProjectInfo>> {
    let dir = cache_root.join("projects");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", &dir)(e)),
    };
    let mut out: Vec<ProjectInfo> = entries
        .flatten()
        .filter_map(|e| read_info(&e.path().join("project.json")))
        .collect();
    out.sort_by(|a, b| a.app.cmp(&b.app));
    Ok(out)
}

fn read_info(path: &Path) -> Option<ProjectInfo> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            return None;
        }
    };
    match serde_json::from_slice::<ProjectInfo>(&bytes) {
        Ok(i) if i.version == RECORD_VERSION => Some(i),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("ignoring damaged {}: {e}", path.display());
            None
        }
    }
}

/// Writes `project.json` atomically (temporary file + rename).
fn write_info(path: &Path, info: &ProjectInfo) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let bytes = serde_json::to_vec_pretty(info).map_err(|e| Error::io("write", path)(e.into()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".project-")
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(Error::io("write", path))?;
    tmp.persist(path)
        .map_err(|e| Error::io("write", path)(e.error))?;
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `path` as a directory: created if missing; anything else there (a symlink, a
/// file) is replaced.
fn ensure_real_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        _ => fsutil::fresh_dir(path),
    }
}

/// `lchown` when the owner differs.
fn chown_one(path: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    let m = std::fs::symlink_metadata(path).map_err(Error::io("inspect", path))?;
    if m.uid() != uid || m.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(Error::io("change the owner of", path))?;
    }
    Ok(())
}

/// `dir` and everything under it handed to `owner`, never through a symlink.
fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    locald_core::fsutil::chown_tree(dir, uid, gid).map_err(Error::io("change the owner of", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cache");
        let app = t.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("main.go"), "package main").unwrap();
        (t, root, app)
    }

    #[test]
    fn same_app_same_state_kept_between_builds() {
        let (t, root, app) = setup();
        let p = Project::open(&root, &app).unwrap();
        let key = p.key().to_owned();
        assert_eq!(key.len(), 16);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(p.dir(), root.join("projects").join(&key));
        assert_eq!(p.app_dir(), std::fs::canonicalize(&app).unwrap());
        let d = p.prepare(false, None).unwrap();
        for x in [&d.app, &d.layers, &d.platform, &d.cache, &d.layout] {
            assert!(x.is_dir() && x.starts_with(p.dir()), "{}", x.display());
        }
        std::fs::write(d.cache.join("keep"), "c").unwrap();
        std::fs::create_dir_all(d.layout.join("index")).unwrap();
        std::fs::write(d.layers.join("drop"), "l").unwrap();
        std::fs::write(d.app.join("drop"), "a").unwrap();
        std::fs::create_dir_all(d.platform.join("env")).unwrap();
        // A read-only directory the build left behind.
        std::fs::create_dir_all(d.layers.join("ro/sub")).unwrap();
        std::fs::set_permissions(d.layers.join("ro"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        // A symlink out of the state dir: removing must not follow it.
        std::fs::write(t.path().join("victim"), "v").unwrap();
        std::os::unix::fs::symlink(t.path(), d.layers.join("out")).unwrap();
        drop(p);

        // The same app by another spelling of its path.
        let other_spelling = app.join("..").join("app");
        let p = Project::open(&root, &other_spelling).unwrap();
        assert_eq!(p.key(), key);
        let d2 = p.prepare(false, None).unwrap();
        assert_eq!(d2, d);
        assert_eq!(std::fs::read(d.cache.join("keep")).unwrap(), b"c");
        assert!(d.layout.join("index").is_dir());
        for x in [&d.app, &d.layers, &d.platform] {
            assert_eq!(std::fs::read_dir(x).unwrap().count(), 0, "{}", x.display());
        }
        assert_eq!(std::fs::read(t.path().join("victim")).unwrap(), b"v");
        assert!(app.join("main.go").exists());
        let info = p.info().unwrap();
        assert_eq!(info.builds, 2);
        assert_eq!(info.app, p.app_dir());
        assert!(info.last_build_started.is_some());

        // Clearing the cache empties it and keeps the layout.
        p.prepare(true, None).unwrap();
        assert_eq!(std::fs::read_dir(&d.cache).unwrap().count(), 0);
        assert!(d.layout.join("index").is_dir());

        // Another app, another key.
        let app2 = t.path().join("app2");
        std::fs::create_dir(&app2).unwrap();
        let p2 = Project::open(&root, &app2).unwrap();
        assert_ne!(p2.key(), key);
        let listed = list_projects(&root).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].app, p.app_dir());
        assert_eq!(listed[0].builds, 3);
        assert_eq!(listed[1].app, p2.app_dir());
        assert_eq!(listed[1].builds, 0);
    }

    #[test]
    fn missing_app_and_empty_cache_listing() {
        let (t, root, _app) = setup();
        assert!(list_projects(&root).unwrap().is_empty());
        let e = Project::open(&root, &t.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
        let e = Project::open(&root, &t.path().join("app/main.go"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn second_open_waits_for_the_first() {
        let (_t, root, app) = setup();
        let first = Project::open(&root, &app).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let noted = Arc::new(AtomicBool::new(false));
        struct Note(Arc<AtomicBool>);
        impl Reporter for Note {
            fn note(&self, m: &str) {
                assert_eq!(m, WAITING);
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let handle = {
            let (root, app, done, noted) = (root.clone(), app.clone(), done.clone(), noted.clone());
            std::thread::spawn(move || {
                let p = Project::open_reporting(&root, &app, &Note(noted)).unwrap();
                done.store(true, Ordering::SeqCst);
                p.key().to_owned()
            })
        };
        // The second open finds the lock taken and says so...
        let start = std::time::Instant::now();
        while !noted.load(Ordering::SeqCst) {
            assert!(
                start.elapsed() < Duration::from_secs(20) && !done.load(Ordering::SeqCst),
                "second open did not wait"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // ...and stays blocked while the first lives.
        std::thread::sleep(Duration::from_millis(300));
        assert!(!done.load(Ordering::SeqCst), "second open did not wait");
        drop(first);
        let key = handle.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(key.len(), 16);
    }

    #[test]
    fn owner_applies_to_state_dirs() {
        if !locald_core::test_support::root_or_skip() {
            return;
        }
        let (_t, root, app) = setup();
        let p = Project::open(&root, &app).unwrap();
        let d = p.dirs();
        std::fs::create_dir_all(d.cache.join("bp/layer")).unwrap();
        std::fs::write(d.cache.join("bp/layer/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.cache.join("link")).unwrap();
        let d = p.prepare(false, Some((1234, 1234))).unwrap();
        for x in [
            d.app.clone(),
            d.layers.clone(),
            d.platform.clone(),
            d.layout.clone(),
            d.cache.clone(),
            d.cache.join("bp/layer/f"),
            d.cache.join("link"),
        ] {
            let m = std::fs::symlink_metadata(&x).unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 1234), "{}", x.display());
        }
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }

    #[test]
    fn env_files_hold_exactly_the_value() {
        let t = tempfile::tempdir().unwrap();
        let env = [
            ("A".to_owned(), "1".to_owned()),
            ("EMPTY".to_owned(), String::new()),
            ("MULTI".to_owned(), "line 1\nline 2\n".to_owned()),
            ("SPACES".to_owned(), "  x = y  ".to_owned()),
            ("A".to_owned(), "2".to_owned()),
        ];
        write_platform_env(t.path(), &env).unwrap();
        let read = |k: &str| std::fs::read(t.path().join("env").join(k)).unwrap();
        assert_eq!(read("A"), b"2");
        assert_eq!(read("EMPTY"), b"");
        assert_eq!(read("MULTI"), b"line 1\nline 2\n");
        assert_eq!(read("SPACES"), b"  x = y  ");
        assert_eq!(std::fs::read_dir(t.path().join("env")).unwrap().count(), 4);
    }

    #[test]
    fn bad_env_keys_are_refused() {
        let t = tempfile::tempdir().unwrap();
        for key in ["", ".", "..", "a/b", "../x", "a\0b", "a=b"] {
            let e = write_platform_env(t.path(), &[(key.to_owned(), "v".to_owned())])
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{key:?}")), "{key:?}: {e}");
        }
        // Nothing was written for a list with one bad key.
        let e = write_platform_env(
            t.path(),
            &[
                ("GOOD".to_owned(), "v".to_owned()),
                ("b/ad".to_owned(), "v".to_owned()),
            ],
        );
        assert!(e.is_err());
        assert!(!t.path().join("env/GOOD").exists());
    }

    #[test]
    fn env_args() {
        let ok = [
            ("A=1", ("A", "1")),
            ("A=", ("A", "")),
            ("A=b=c", ("A", "b=c")),
            ("PATH_X= spaced ", ("PATH_X", " spaced ")),
        ];
        for (arg, (k, v)) in ok {
            assert_eq!(
                parse_env_arg(arg).unwrap(),
                (k.to_owned(), v.to_owned()),
                "{arg}"
            );
        }
        for arg in ["=1", "", "a/b=1", "..=x"] {
            assert!(parse_env_arg(arg).is_err(), "{arg:?}");
        }
        // KEY alone takes the value from the environment. `HOME`-like variables
        // differ between machines: use one that every test process has.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(parse_env_arg("PATH").unwrap(), ("PATH".to_owned(), path));
        let e = parse_env_arg("LOCALD_TEST_SURELY_UNSET_VARIABLE")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LOCALD_TEST_SURELY_UNSET_VARIABLE") && e.contains("not set"),
            "{e}"
        );
    }

    #[test]
    fn key_is_sha256_prefix_of_the_path() {
        // printf %s /srv/app | sha256sum
        assert_eq!(project_key(Path::new("/srv/app")), "dae668e4084f07b6");
        assert_ne!(project_key(Path::new("/a")), project_key(Path::new("/b")));
    }
}

//! Image-source plugins as a user meets them: shared libraries in
//! `LOCALD_PLUGIN_PATH` (and `$XDG_DATA_HOME/locald/plugins`), built here from
//! the workspace (`plugins/oci-archive`, `tests/plugins/misbehaving`,
//! `tests/plugins/no-entry`) and copied into a plugin directory per test.
//!
//! - `oci-archive:` against skopeo-made archives, compared with `umoci unpack`;
//! - `locald plugin ls [--json]` with good and broken libraries;
//! - a plugin that panics, lies about digests or sizes: exit 1 with a message
//!   naming it, nothing published, built-in sources and good plugins unaffected;
//! - refused libraries never stop other commands, they only warn;
//! - plugins are opened only when a source's scheme is not built in, or by
//!   `plugin ls` (the misbehaving plugin marks a file when it is loaded);
//! - untrusted plugins (another user's, writable by group or others, in such a
//!   directory, symlinks, not regular files) are refused with the reason and
//!   never opened.
//!
//! Not covered: an entry point that fails (returns null), which needs a library
//! of its own.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use locald_tests::fixture::{Compression, Entry, ImageSpec, Layer, LayoutBuilder};
use locald_tests::tree::{self, DiffOpts};
use locald_tests::{peers, require};

use super::Run;

/// The libraries as cargo names them.
const OCI_ARCHIVE: &str = "liblocald_source_oci_archive.so";
const MISBEHAVING: &str = "liblocald_test_plugin_misbehaving.so";
const NO_ENTRY: &str = "liblocald_test_plugin_no_entry.so";
const NULL_ENTRY: &str = "liblocald_test_plugin_null_entry.so";

/// A shared library that is not a plugin.
const NOT_A_PLUGIN: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/libz.so.1",
    "/lib/x86_64-linux-gnu/libz.so.1",
    "/usr/lib64/libz.so.1",
];

/// The directory holding the built plugin libraries; builds them once per test
/// binary, into the target directory and profile `locald` was built in.
fn built() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_plugins) {
        Ok(dir) => dir,
        Err(e) => panic!("building the plugins failed:\n{e}"),
    }
}

fn build_plugins() -> Result<PathBuf, String> {
    // target/<profile>/locald
    let out = Path::new(env!("CARGO_BIN_EXE_locald"))
        .parent()
        .ok_or("locald has no parent directory")?
        .to_path_buf();
    let target = out.parent().ok_or("no target directory")?;
    let profile = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("no profile directory")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace")?;
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target)
        .args([
            "build",
            "--quiet",
            "-p",
            "locald-source-oci-archive",
            "-p",
            "locald-test-plugin-misbehaving",
            "-p",
            "locald-test-plugin-no-entry",
            "-p",
            "locald-test-plugin-null-entry",
        ]);
    if profile != "debug" {
        cargo.args(["--profile", profile]);
    }
    let shown = format!("{cargo:?}");
    let o = cargo.output().map_err(|e| format!("{shown}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{shown}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    for lib in [OCI_ARCHIVE, MISBEHAVING, NO_ENTRY] {
        if !out.join(lib).is_file() {
            return Err(format!("{shown} made no {}", out.join(lib).display()));
        }
    }
    Ok(out)
}

/// The environment variable that makes the misbehaving plugin mark its loading.
const LOAD_MARKER: &str = "LOCALD_TEST_LOAD_MARKER";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether this process can give files away to another user, which the cases
/// with another user's files need (a `require::root` skip otherwise).
#[track_caller]
fn can_chown(test: &str) -> bool {
    require::root(&format!(
        "{test}: the cases with files of another user (to chown)"
    ))
}

/// Another user's uid (nobody).
const OTHER_UID: u32 = 65534;

fn chown_other(p: &Path) {
    rustix::fs::chown(p, Some(rustix::fs::Uid::from_raw(OTHER_UID)), None).unwrap();
}

/// A plain shared library of this system (zlib).
fn not_a_plugin() -> &'static Path {
    NOT_A_PLUGIN
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("no libz.so.1 to use as a library that is not a plugin")
}

/// How long one locald command of these tests may take.
const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `c` to its end, or kills it after `limit` (then no status): its exit
/// status, stdout and stderr.
fn output_within(
    mut c: Command,
    limit: std::time::Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Copies the built library `lib` to `to`, mode 0755.
fn place(lib: &str, to: &Path) {
    std::fs::copy(built().join(lib), to).unwrap();
    chmod(to, 0o755);
}

/// One test's world: a plugin directory, a data home, room for files.
struct Lab {
    t: tempfile::TempDir,
}

impl Lab {
    /// A lab whose plugin directory holds the built libraries `libs`.
    fn new(libs: &[&str]) -> Lab {
        let lab = Lab {
            t: tempfile::tempdir().unwrap(),
        };
        // Modes set, not left to the umask: a group-writable plugin directory
        // would be refused.
        lab.mkdir("plugins");
        lab.mkdir("data");
        for lib in libs {
            lab.add(lib, lib);
        }
        lab
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.t.path().join(rel)
    }

    fn plugins(&self) -> PathBuf {
        self.path("plugins")
    }

    /// Creates `rel` and the directories up to it in the lab, mode 0755.
    fn mkdir(&self, rel: &str) -> PathBuf {
        let to = self.path(rel);
        std::fs::create_dir_all(&to).unwrap();
        for d in to.ancestors().take_while(|d| *d != self.t.path()) {
            chmod(d, 0o755);
        }
        to
    }

    /// Copies the built library `lib` into the plugin directory as `name`.
    fn add(&self, lib: &str, name: &str) -> PathBuf {
        let to = self.plugins().join(name);
        place(lib, &to);
        to
    }

    /// Copies any file into the plugin directory as `name`.
    fn add_file(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.plugins().join(name);
        std::fs::copy(from, &to).unwrap();
        chmod(&to, 0o644);
        to
    }

    /// Runs locald with this lab's plugin directory and data home, plus `env`.
    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_locald"));
        c.args(args)
            .env_remove("LOCALD_LOG")
            .env_remove("LOCALD_TEST_ABI")
            .env_remove(LOAD_MARKER)
            .env("LOCALD_PLUGIN_PATH", self.plugins())
            .env("XDG_DATA_HOME", self.path("data"))
            .env("HOME", self.t.path());
        for (k, v) in env {
            c.env(k, v);
        }
        let (status, stdout, stderr) = output_within(c, RUN_LIMIT);
        let Some(status) = status else {
            // Hung (say, opening a FIFO named *.so): a failure, not a hang.
            return Run {
                code: -1,
                stdout,
                stderr: format!(
                    "{stderr}\n(locald {args:?} did not finish in {} s and was killed)",
                    RUN_LIMIT.as_secs()
                ),
            };
        };
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        };
        if status.code().is_none() {
            panic!(
                "locald {args:?} was killed by a signal ({status}):\n{}",
                run.stderr
            );
        }
        run
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// `image extract [IMAGE] --source SOURCE --to TO [--path P]...`.
    fn extract(&self, image: Option<&str>, source: &str, to: &Path, paths: &[&str]) -> Run {
        let mut args = vec!["image", "extract"];
        args.extend(image);
        args.extend(["--source", source, "--to", to.to_str().unwrap()]);
        for p in paths {
            args.extend(["--path", p]);
        }
        self.run(&args)
    }
}

/// Layers with whiteouts, an opaque directory, symlinks, hard links (in one
/// layer and across layers), owners, special modes and a FIFO. Every directory
/// is named, so no mtime depends on when the extractor ran.
fn layers() -> Vec<Layer> {
    vec![
        Layer::new(
            vec![
                Entry::dir("cnb/").owner(1000, 1000),
                Entry::dir("cnb/lifecycle/"),
                Entry::file("cnb/lifecycle/lifecycle", "LIFECYCLE v1")
                    .mode(0o755)
                    .mtime(1_500_000_000),
                Entry::symlink("cnb/lifecycle/creator", "lifecycle"),
                Entry::symlink("cnb/lifecycle/detector", "/cnb/lifecycle/lifecycle"),
                Entry::dir("etc/"),
                Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
                Entry::file("etc/shadow", "secret").mode(0o640).owner(0, 42),
                Entry::dir("usr/"),
                Entry::dir("usr/bin/"),
                Entry::file("usr/bin/sudo", "setuid tool").mode(0o4755),
                Entry::dir("tmp/").mode(0o1777),
                Entry::fifo("tmp/fifo").mode(0o600),
                Entry::dir("wh/"),
                Entry::file("wh/file", "to be removed"),
                Entry::dir("wh/dir/"),
                Entry::file("wh/dir/child", "removed with its dir"),
                Entry::file("wh/keep", "kept"),
                Entry::dir("opaque/"),
                Entry::file("opaque/lower", "hidden by the opaque marker"),
                Entry::dir("hard/"),
                Entry::file("hard/original", "shared bytes").mode(0o700),
                Entry::hardlink("hard/same-layer", "hard/original"),
                Entry::dir("readonly/").mode(0o555),
                Entry::file("readonly/a", "a"),
            ],
            Compression::Gzip,
        ),
        Layer::new(
            vec![
                Entry::whiteout("wh", "file"),
                Entry::whiteout("wh", "dir"),
                Entry::dir("opaque/"),
                Entry::opaque("opaque"),
                Entry::file("opaque/new", "new"),
                Entry::hardlink("hard/from-upper", "hard/original"),
                Entry::dir("cnb/").owner(1000, 1000),
                Entry::file("cnb/lifecycle/lifecycle", "LIFECYCLE v2").mode(0o755),
                Entry::file("cnb/order.toml", "[[order]]\n"),
                Entry::file("readonly/b", "b"),
            ],
            // umoci cannot read zstd layers.
            Compression::GzipMultiMember,
        ),
        Layer::new(
            vec![
                Entry::dir("cnb/").owner(1000, 1000),
                Entry::dir("cnb/buildpacks/"),
                Entry::file(
                    "cnb/buildpacks/big",
                    locald_tests::fixture::noise(300_000, 7),
                ),
                Entry::hardlink("cnb/passwd-link", "etc/passwd"),
                Entry::file("cnb/owned", "by cnb")
                    .owner(1000, 1000)
                    .mode(0o600),
                Entry::symlink("cnb/lifecycle/rebaser", "../../etc/passwd"),
            ],
            Compression::None,
        ),
    ]
}

/// Writes the layout with image `builder` into `dir`.
fn write_layout(dir: &Path) {
    let mut b = LayoutBuilder::new(dir);
    b.add_image(ImageSpec::new(layers()).ref_name("builder"));
    b.write().unwrap();
}

/// The layout `T/layout` and `skopeo copy`'s oci-archive of it, `T/builder.tar`
/// (image name `builder`).
fn layout_and_archive(t: &Path) -> (PathBuf, PathBuf) {
    let layout = t.join("layout");
    write_layout(&layout);
    let archive = t.join("builder.tar");
    peers::skopeo_copy(
        &format!("oci:{}:builder", layout.display()),
        &format!("oci-archive:{}:builder", archive.display()),
        &[],
    )
    .unwrap();
    (layout, archive)
}

/// `umoci unpack` of `layout:builder` into `T/bundle`: the rootfs.
fn umoci_rootfs(layout: &Path, t: &Path) -> PathBuf {
    peers::umoci_unpack(layout, "builder", &t.join("bundle")).unwrap()
}

/// The `subtree` of a snapshot (the directory itself and what is below).
fn subtree(s: &tree::Snapshot, subtree: &str) -> tree::Snapshot {
    s.iter()
        .filter(|(k, _)| *k == subtree || k.starts_with(&format!("{subtree}/")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The `panicked at` lines of `stderr` that do not come from the misbehaving
/// plugin's own panic hook (which prints where the plugin panicked).
fn host_panics(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("panicked at") && !l.contains("tests/plugins/misbehaving"))
        .collect()
}

fn assert_no_host_panic(r: &Run) {
    let p = host_panics(&r.stderr);
    assert!(p.is_empty(), "locald itself panicked: {p:?}\n{}", r.stderr);
}

#[test]
fn oci_archive_matches_umoci_unpack() {
    let lab = Lab::new(&[OCI_ARCHIVE]);
    let (layout, archive) = layout_and_archive(lab.t.path());
    let rootfs = umoci_rootfs(&layout, lab.t.path());
    let theirs = tree::snapshot(&rootfs);
    let source = format!("oci-archive:{}", archive.display());

    // The whole image.
    let ours = lab.path("ours");
    let r = lab.extract(Some("builder"), &source, &ours, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("Extracted builder"), "{}", r.stderr);
    assert_no_host_panic(&r);
    tree::assert_same_snapshot(&tree::snapshot(&ours), &theirs, &DiffOpts::default());
    // Spot checks, whatever umoci does.
    let s = tree::snapshot(&ours);
    for gone in ["wh/file", "wh/dir", "opaque/lower"] {
        assert!(!s.contains_key(gone), "{gone} should be whited out");
    }
    assert_eq!(s["hard/original"].inode, s["hard/from-upper"].inode);
    assert_eq!(s["etc/passwd"].inode, s["cnb/passwd-link"].inode);
    assert_eq!(s["usr/bin/sudo"].mode, 0o4755);
    assert_eq!(
        std::fs::read_to_string(ours.join("cnb/lifecycle/creator")).unwrap(),
        "LIFECYCLE v2"
    );

    // --path /cnb: umoci's cnb subtree, but the hard link to /etc/passwd (outside
    // --path) is skipped, so hard-link grouping is not compared.
    let cnb = lab.path("cnb");
    let r = lab.extract(Some("builder"), &source, &cnb, &["/cnb"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut mine = tree::snapshot(&cnb);
    assert!(!mine.contains_key("etc"), "--path /cnb extracted /etc");
    mine.retain(|k, _| k == "cnb" || k.starts_with("cnb/"));
    let mut want = subtree(&theirs, "cnb");
    assert!(
        !mine.contains_key("cnb/passwd-link"),
        "a hard link to a path outside --path is skipped"
    );
    want.remove("cnb/passwd-link");
    tree::assert_same_snapshot(
        &mine,
        &want,
        &DiffOpts {
            ignore_hardlinks: true,
            ..DiffOpts::default()
        },
    );

    // The same image through the built-in oci-layout source: the same tree.
    let builtin = lab.path("builtin");
    let r = lab.extract(
        Some("builder"),
        &format!("oci-layout:{}", layout.display()),
        &builtin,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    tree::assert_same_snapshot(
        &tree::snapshot(&builtin),
        &tree::snapshot(&ours),
        &DiffOpts::default(),
    );
}

#[test]
fn oci_archive_ref_forms_and_errors() {
    let lab = Lab::new(&[OCI_ARCHIVE]);
    let (layout, archive) = layout_and_archive(lab.t.path());
    let rootfs = umoci_rootfs(&layout, lab.t.path());
    let theirs = tree::snapshot(&rootfs);

    // oci-archive:FILE:REF names the image in the source.
    let out = lab.path("by-ref");
    let r = lab.extract(
        None,
        &format!("oci-archive:{}:builder", archive.display()),
        &out,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    tree::assert_same_snapshot(&tree::snapshot(&out), &theirs, &DiffOpts::default());

    // An archive of one unnamed image: no name needed.
    let unnamed = lab.path("unnamed.tar");
    peers::skopeo_copy(
        &format!("oci:{}:builder", layout.display()),
        &format!("oci-archive:{}", unnamed.display()),
        &[],
    )
    .unwrap();
    let out = lab.path("unnamed");
    let r = lab.extract(
        None,
        &format!("oci-archive:{}", unnamed.display()),
        &out,
        &["/cnb"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("cnb/order.toml")).unwrap(),
        "[[order]]\n"
    );

    // inspect --json through the plugin.
    let r = lab.run(&[
        "image",
        "inspect",
        "builder",
        "--source",
        &format!("oci-archive:{}", archive.display()),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["layers"].as_array().unwrap().len(), 3, "{v}");
    assert!(
        v["manifest_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{v}"
    );

    // A name the archive does not hold: a clear error listing what it holds.
    let out = lab.path("missing");
    let r = lab.extract(
        Some("nope"),
        &format!("oci-archive:{}", archive.display()),
        &out,
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("error: "), "{}", r.stderr);
    assert!(
        r.stderr.contains("nope") && r.stderr.contains("builder"),
        "the error should name the missing image and the ones there are:\n{}",
        r.stderr
    );
    assert!(!out.exists());
    assert_no_host_panic(&r);
    let r = lab.extract(
        None,
        &format!("oci-archive:{}:nope", archive.display()),
        &out,
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("nope") && r.stderr.contains("builder"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());

    // A file that is not an archive, and a file that is not there.
    let junk = lab.path("junk.tar");
    std::fs::write(&junk, b"not a tar archive at all").unwrap();
    let r = lab.run(&[
        "image",
        "inspect",
        "--source",
        &format!("oci-archive:{}", junk.display()),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("junk.tar"), "{}", r.stderr);
    assert!(r.stderr.contains("oci-archive"), "{}", r.stderr);
    assert_no_host_panic(&r);
    // A tar that is not an OCI layout.
    let plain = lab.path("plain.tar");
    std::fs::write(
        &plain,
        locald_tests::fixture::tar_bytes(
            &[Entry::file("hello.txt", "hi")],
            locald_tests::fixture::LongNames::Pax,
        ),
    )
    .unwrap();
    let r = lab.run(&[
        "image",
        "inspect",
        "--source",
        &format!("oci-archive:{}", plain.display()),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("plain.tar"), "{}", r.stderr);
    assert_no_host_panic(&r);
    let r = lab.run(&[
        "image",
        "inspect",
        "--source",
        &format!("oci-archive:{}", lab.path("absent.tar").display()),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("absent.tar"), "{}", r.stderr);
}

/// `podman save --format oci-archive`, when podman works here.
#[test]
fn oci_archive_from_podman_save() {
    if !require::tool("podman") {
        return;
    }
    let lab = Lab::new(&[OCI_ARCHIVE]);
    let layout = lab.path("layout");
    write_layout(&layout);
    let root = lab.path("podman-root");
    let runroot = lab.path("podman-run");
    let podman = |args: &[&str]| -> Result<String, String> {
        let mut all = vec![
            "--root",
            root.to_str().unwrap(),
            "--runroot",
            runroot.to_str().unwrap(),
            "--storage-driver",
            "vfs",
        ];
        all.extend_from_slice(args);
        peers::run("podman", all)
    };
    if require::ok(podman(&["info"]), "podman").is_none() {
        return;
    }
    // podman cannot pull from a layout under a dot-named temporary directory
    // (it derives an invalid name from the path): go through a docker archive.
    let loadable = lab.path("loadable.tar");
    peers::skopeo_copy(
        &format!("oci:{}:builder", layout.display()),
        &format!(
            "docker-archive:{}:localhost/builder:latest",
            loadable.display()
        ),
        &[],
    )
    .unwrap();
    podman(&["load", "-q", "-i", loadable.to_str().unwrap()]).unwrap();
    let saved = lab.path("saved.tar");
    podman(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        saved.to_str().unwrap(),
        "localhost/builder:latest",
    ])
    .unwrap();
    let out = lab.path("ours");
    let r = lab.extract(
        None,
        &format!("oci-archive:{}", saved.display()),
        &out,
        &["/cnb"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let theirs = tree::snapshot(&umoci_rootfs(&layout, lab.t.path()));
    let mut mine = tree::snapshot(&out);
    mine.retain(|k, _| k == "cnb" || k.starts_with("cnb/"));
    let mut want = subtree(&theirs, "cnb");
    want.remove("cnb/passwd-link");
    tree::assert_same_snapshot(
        &mine,
        &want,
        &DiffOpts {
            ignore_hardlinks: true,
            ..DiffOpts::default()
        },
    );
}

#[test]
fn plugin_ls_lists_loaded_and_refused() {
    let lab = Lab::new(&[OCI_ARCHIVE, MISBEHAVING]);
    let archive = lab.plugins().join(OCI_ARCHIVE);
    let misbehaving = lab.plugins().join(MISBEHAVING);
    let libz = lab.add_file(not_a_plugin(), "libz.so");
    let no_entry = lab.add(NO_ENTRY, NO_ENTRY);
    let null_entry = lab.add(NULL_ENTRY, NULL_ENTRY);
    // Sorted after the first copy: the second to claim oci-archive.
    let clash = lab.add(OCI_ARCHIVE, "zz-oci-archive-again.so");
    // Not *.so: never looked at.
    lab.add_file(not_a_plugin(), "libz.so.1");
    std::fs::write(lab.plugins().join("README"), "not a library").unwrap();

    let r = lab.run(&["plugin", "ls"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_no_host_panic(&r);
    let line = |needle: &str| -> String {
        r.stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", r.stdout))
            .to_owned()
    };
    let l = line(&misbehaving.display().to_string());
    for want in ["misbehaving", "0.1.0"] {
        assert!(l.contains(want), "{want:?} missing from {l:?}");
    }
    let l = line(&archive.display().to_string());
    for want in ["oci-archive", "0.1.0"] {
        assert!(l.contains(want), "{want:?} missing from {l:?}");
    }
    let l = line(&format!("{}:", libz.display()));
    assert!(l.contains("not a locald plugin"), "{l}");
    let l = line(&format!("{}:", no_entry.display()));
    assert!(l.contains("no entry point locald_plugin_entry_v1"), "{l}");
    let l = line(&format!("{}:", null_entry.display()));
    assert!(l.contains("the entry point failed"), "{l}");
    let l = line(&format!("{}:", clash.display()));
    assert!(
        l.contains("source scheme \"oci-archive\" is registered twice")
            && l.contains(&archive.display().to_string()),
        "the clash should name both libraries: {l}"
    );
    assert!(
        !r.stdout.contains("libz.so.1") && !r.stdout.contains("README"),
        "only *.so files are plugins:\n{}",
        r.stdout
    );

    let r = lab.run(&["plugin", "ls", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let dirs: Vec<&str> = v["directories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        dirs.contains(&lab.plugins().to_str().unwrap())
            && dirs.contains(&lab.path("data/locald/plugins").to_str().unwrap()),
        "{dirs:?}"
    );
    let loaded = v["loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 2, "{v:#}");
    let by_name = |name: &str| {
        loaded
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not loaded: {v:#}"))
    };
    let p = by_name("oci-archive");
    assert_eq!(p["path"], archive.to_str().unwrap());
    assert_eq!(p["version"], "0.1.0");
    assert_eq!(p["schemes"], serde_json::json!(["oci-archive"]));
    let p = by_name("misbehaving");
    assert_eq!(p["path"], misbehaving.to_str().unwrap());
    assert_eq!(p["version"], "0.1.0");
    assert_eq!(p["schemes"], serde_json::json!(["misbehaving"]));
    let refused = v["refused"].as_array().unwrap();
    let reason = |path: &Path| -> String {
        refused
            .iter()
            .find(|p| p["path"] == path.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} not refused: {v:#}", path.display()))["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(refused.len(), 4, "{v:#}");
    for p in refused {
        // Trusted files, refused after loading.
        assert_eq!(p["opened"], true, "{p:#}");
    }
    assert!(reason(&libz).contains("not a locald plugin"), "{v:#}");
    assert!(
        reason(&null_entry).contains("the entry point failed"),
        "{v:#}"
    );
    assert!(reason(&no_entry).contains("no entry point"), "{v:#}");
    let clash_reason = reason(&clash);
    assert!(
        clash_reason.contains("registered twice")
            && clash_reason.contains(archive.to_str().unwrap())
            && clash_reason.contains(clash.to_str().unwrap()),
        "{clash_reason}"
    );

    // The same library claiming another ABI version.
    let r = lab.run_env(&["plugin", "ls", "--json"], &[("LOCALD_TEST_ABI", "99")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let reason = v["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == no_entry.to_str().unwrap())
        .unwrap_or_else(|| panic!("{v:#}"))["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("built for plugin ABI version 99")
            && reason.contains("this locald speaks version 1"),
        "{reason}"
    );
    let r = lab.run_env(&["plugin", "ls"], &[("LOCALD_TEST_ABI", "99")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("built for plugin ABI version 99"),
        "{}",
        r.stdout
    );
}

#[test]
fn plugin_ls_without_plugins_and_with_several_directories() {
    let lab = Lab::new(&[]);
    let r = lab.run(&["plugin", "ls"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(r.stderr.contains("No plugins"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&lab.plugins().display().to_string()),
        "it should say where it looked: {}",
        r.stderr
    );
    let r = lab.run(&["plugin", "ls", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["loaded"], serde_json::json!([]));
    assert_eq!(v["refused"], serde_json::json!([]));

    // LOCALD_PLUGIN_PATH is colon-separated (a missing directory is fine), and
    // $XDG_DATA_HOME/locald/plugins is searched too.
    let a = lab.mkdir("a");
    let data_plugins = lab.mkdir("data/locald/plugins");
    place(MISBEHAVING, &a.join(MISBEHAVING));
    place(OCI_ARCHIVE, &data_plugins.join(OCI_ARCHIVE));
    let path = format!(
        "{}:{}:{}",
        lab.path("missing").display(),
        a.display(),
        lab.plugins().display()
    );
    let r = lab.run_env(
        &["plugin", "ls", "--json"],
        &[("LOCALD_PLUGIN_PATH", &path)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut names: Vec<&str> = v["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["misbehaving", "oci-archive"], "{v:#}");
    assert_eq!(v["refused"], serde_json::json!([]), "{v:#}");
}

/// Each misbehaviour: exit 1 with a message naming the plugin and what went
/// wrong, nothing published, no temporary directory left; the plugin behaving,
/// and the built-in source, still work from the same plugin directory.
#[test]
fn misbehaving_plugins_fail_cleanly() {
    let lab = Lab::new(&[MISBEHAVING, OCI_ARCHIVE]);
    let layout = lab.path("layout");
    write_layout(&layout);
    let cases: &[(&str, &[&str])] = &[
        (
            "panic-open",
            &["panicked", "misbehaving on purpose in open"],
        ),
        (
            "panic-resolve",
            &["panicked", "misbehaving on purpose in resolve"],
        ),
        (
            "panic-read",
            &["panicked", "misbehaving on purpose in read_blob"],
        ),
        ("bad-manifest-digest", &["digest"]),
        ("bad-config", &["digest"]),
        ("short-blob", &["size"]),
        ("long-blob", &["size"]),
        ("bad-blob", &["digest"]),
    ];
    let mut failures = Vec::new();
    for (mode, wants) in cases {
        let work = lab.path(&format!("work-{mode}"));
        std::fs::create_dir_all(&work).unwrap();
        let out = work.join("out");
        let source = format!("misbehaving:{mode}:{}", layout.display());
        let r = lab.extract(Some("builder"), &source, &out, &[]);
        let mut problems = Vec::new();
        if r.code != 1 {
            problems.push(format!("exit code {} (want 1)", r.code));
        }
        if !r.stderr.contains("error: ") {
            problems.push("no `error: ` line".to_owned());
        }
        // The plugin's name, or the source spec (which starts with its scheme):
        // the user must learn which of their plugins failed.
        let named = r.stderr.contains("plugin misbehaving") || r.stderr.contains(&source);
        if !named {
            problems.push("the message names neither the plugin nor the source".to_owned());
        }
        for want in *wants {
            if !r.stderr.to_lowercase().contains(want) {
                problems.push(format!("the message does not say {want:?}"));
            }
        }
        let panics = host_panics(&r.stderr);
        if !panics.is_empty() {
            problems.push(format!("locald itself panicked: {panics:?}"));
        }
        let left: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if !left.is_empty() {
            problems.push(format!("left behind in the target's directory: {left:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "misbehaving:{mode}: {}\n--- stderr:\n{}",
                problems.join("; "),
                r.stderr.trim_end()
            ));
        }
    }

    // Unaffected: the built-in source, the plugin behaving, another plugin.
    let theirs = tree::snapshot(&umoci_rootfs(&layout, lab.t.path()));
    for source in [
        format!("oci-layout:{}", layout.display()),
        format!("misbehaving:ok:{}", layout.display()),
    ] {
        let out = lab.path(&format!("good-{}", source.split(':').next().unwrap()));
        let r = lab.extract(Some("builder"), &source, &out, &[]);
        assert_eq!(r.code, 0, "{source}: {}", r.stderr);
        assert!(
            !r.stderr.contains("ignoring plugin"),
            "no library here is refused: {}",
            r.stderr
        );
        tree::assert_same_snapshot(&tree::snapshot(&out), &theirs, &DiffOpts::default());
    }
    let r = lab.run(&["plugin", "ls", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["loaded"].as_array().unwrap().len(), 2, "{v:#}");

    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// A plugin's own errors (not misbehaviour): a bad location, a missing image.
#[test]
fn plugin_errors_are_sentences() {
    let lab = Lab::new(&[MISBEHAVING]);
    let layout = lab.path("layout");
    write_layout(&layout);
    let r = lab.run(&[
        "image",
        "inspect",
        "--source",
        &format!("misbehaving:sideways:{}", layout.display()),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("plugin misbehaving") && r.stderr.contains("unknown mode \"sideways\""),
        "{}",
        r.stderr
    );
    let r = lab.run(&[
        "image",
        "inspect",
        "nope",
        "--source",
        &format!("misbehaving:ok:{}", layout.display()),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no image named \"nope\"") && r.stderr.contains("it holds: builder"),
        "{}",
        r.stderr
    );
    assert_no_host_panic(&r);
}

/// Broken libraries in the plugin directory are warned about and skipped when
/// plugins are loaded; every other command works, through plugins and built-in
/// sources alike (which do not look at plugins at all).
#[test]
fn refused_libraries_do_not_stop_other_commands() {
    let lab = Lab::new(&[OCI_ARCHIVE, MISBEHAVING, NO_ENTRY]);
    let libz = lab.add_file(not_a_plugin(), "libz.so");
    let clash = lab.add(OCI_ARCHIVE, "zz-oci-archive-again.so");
    let no_entry = lab.plugins().join(NO_ENTRY);
    let (layout, archive) = layout_and_archive(lab.t.path());
    let theirs = tree::snapshot(&umoci_rootfs(&layout, lab.t.path()));

    for (abi, no_entry_reason) in [
        (None, "no entry point"),
        (Some("99"), "built for plugin ABI version 99"),
    ] {
        let env: Vec<(&str, &str)> = abi.map(|v| ("LOCALD_TEST_ABI", v)).into_iter().collect();
        for (i, source) in [
            format!("oci-archive:{}", archive.display()),
            format!("oci-layout:{}", layout.display()),
            format!("misbehaving:ok:{}", layout.display()),
        ]
        .iter()
        .enumerate()
        {
            let out = lab.path(&format!("out-{}-{i}", abi.unwrap_or("1")));
            let r = lab.run_env(
                &[
                    "image",
                    "extract",
                    "builder",
                    "--source",
                    source,
                    "--to",
                    out.to_str().unwrap(),
                ],
                &env,
            );
            assert_eq!(r.code, 0, "{source}: {}", r.stderr);
            assert_no_host_panic(&r);
            tree::assert_same_snapshot(&tree::snapshot(&out), &theirs, &DiffOpts::default());
            if source.starts_with("oci-layout:") {
                // A built-in source: the plugins are not even looked at.
                assert!(
                    !r.stderr.contains("plugin"),
                    "{source}: plugins were looked at:\n{}",
                    r.stderr
                );
                continue;
            }
            for (lib, reason) in [
                (&libz, "not a locald plugin"),
                (&no_entry, no_entry_reason),
                (&clash, "registered twice"),
            ] {
                let warned = r.stderr.lines().any(|l| {
                    l.contains("ignoring plugin")
                        && l.contains(lib.to_str().unwrap())
                        && l.contains(reason)
                });
                assert!(
                    warned,
                    "{source}: no warning about {} ({reason}):\n{}",
                    lib.display(),
                    r.stderr
                );
            }
            let warnings = r
                .stderr
                .lines()
                .filter(|l| l.contains("ignoring plugin"))
                .count();
            assert_eq!(
                warnings, 3,
                "one warning per refused library:\n{}",
                r.stderr
            );
        }
    }
    // --json output stays data only, the warnings go to stderr.
    let r = lab.run(&[
        "image",
        "inspect",
        "builder",
        "--source",
        &format!("oci-archive:{}", archive.display()),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap();
    assert!(r.stderr.contains("ignoring plugin"), "{}", r.stderr);
}

/// A command whose source is built in (oci-layout:, docker-archive:, the
/// registry by default) never opens a plugin: the misbehaving plugin, which
/// marks a file when loaded, stays unloaded, and the broken libraries beside it
/// are not even warned about. A plugin scheme then loads it (the marker works).
#[test]
fn builtin_sources_never_open_plugins() {
    if !require::tool("skopeo") {
        return;
    }
    let lab = Lab::new(&[MISBEHAVING, NO_ENTRY]);
    lab.add_file(not_a_plugin(), "libz.so");
    let layout = lab.path("layout");
    write_layout(&layout);
    let docker = lab.path("builder-docker.tar");
    peers::skopeo_copy(
        &format!("oci:{}:builder", layout.display()),
        &format!("docker-archive:{}:builder:latest", docker.display()),
        &[],
    )
    .unwrap();
    let marker = lab.path("loaded");
    let marker_env = [(LOAD_MARKER, marker.to_str().unwrap())];
    let oci_layout = format!("oci-layout:{}", layout.display());
    let docker_archive = format!("docker-archive:{}", docker.display());
    let out = lab.path("out");
    let cases: &[(&str, Vec<&str>, i32)] = &[
        (
            "image inspect, oci-layout:",
            vec!["image", "inspect", "builder", "--source", &oci_layout],
            0,
        ),
        (
            "image inspect, docker-archive:",
            vec!["image", "inspect", "--source", &docker_archive, "--json"],
            0,
        ),
        (
            "image extract, oci-layout:",
            vec![
                "image",
                "extract",
                "builder",
                "--source",
                &oci_layout,
                "--to",
                out.to_str().unwrap(),
            ],
            0,
        ),
        // The default source; nothing listens there, so it fails, but as the
        // registry, without looking for plugins.
        (
            "image inspect, the registry (default)",
            vec!["image", "inspect", "127.0.0.1:1/nothing/here:latest"],
            1,
        ),
    ];
    for (what, args, code) in cases {
        let r = lab.run_env(args, &marker_env);
        assert_eq!(r.code, *code, "{what}: {}", r.stderr);
        assert_no_host_panic(&r);
        assert!(
            !marker.exists(),
            "{what}: a plugin was loaded:\n{}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("plugin"),
            "{what}: plugins were looked at:\n{}",
            r.stderr
        );
        if *code != 0 {
            // The registry's failure, not an unknown scheme.
            assert!(r.stderr.contains("127.0.0.1:1"), "{what}: {}", r.stderr);
        }
    }

    // Control: a plugin scheme loads the plugins, and the marker shows it.
    let r = lab.run_env(
        &[
            "image",
            "inspect",
            "builder",
            "--source",
            &format!("misbehaving:ok:{}", layout.display()),
        ],
        &marker_env,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "misbehaving loaded\n",
        "the plugin scheme should load the plugin once"
    );
    // Loading the plugins warns about the broken ones.
    assert!(r.stderr.contains("ignoring plugin"), "{}", r.stderr);
}

/// A scheme that neither a built-in source nor a plugin serves: the error says
/// so, lists the schemes there are and the refused plugins with their reasons,
/// and points at `locald plugin ls`. Fixing what the reason says makes it work.
#[test]
fn unknown_scheme_names_refused_plugins() {
    let lab = Lab::new(&[OCI_ARCHIVE, MISBEHAVING]);
    let misbehaving = lab.plugins().join(MISBEHAVING);
    chmod(&misbehaving, 0o775);
    let libz = lab.add_file(not_a_plugin(), "libz.so");
    let layout = lab.path("layout");
    write_layout(&layout);
    let marker = lab.path("loaded");
    let marker_env = [(LOAD_MARKER, marker.to_str().unwrap())];

    let r = lab.run_env(
        &["image", "inspect", "--source", "nope:somewhere"],
        &marker_env,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_no_host_panic(&r);
    let m = misbehaving.display().to_string();
    for want in [
        "error: could not open image source \"nope:somewhere\"".to_owned(),
        "no built-in source or plugin serves scheme \"nope\"".to_owned(),
        // The loaded plugin's scheme is among the known ones.
        "schemes: docker-archive, oci-archive, oci-layout, registry".to_owned(),
        format!(
            "plugins are looked for in {}, {})",
            lab.path("data/locald/plugins").display(),
            lab.plugins().display()
        ),
        "2 plugins were refused".to_owned(),
        format!("{m}: plugin {m} is writable by group or others (mode 0775): chmod go-w {m}"),
        format!("{}: not a locald plugin", libz.display()),
        "hint: `locald plugin ls` lists the plugins found and why any was refused".to_owned(),
    ] {
        assert!(
            r.stderr.contains(&want),
            "{want:?} missing from:\n{}",
            r.stderr
        );
    }
    assert!(!marker.exists(), "the untrusted plugin was loaded");

    // The refused plugin's own scheme: the same error, saying why.
    let source = format!("misbehaving:ok:{}", layout.display());
    let r = lab.run_env(&["image", "inspect", "--source", &source], &marker_env);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for want in [
        "no built-in source or plugin serves scheme \"misbehaving\"".to_owned(),
        format!("chmod go-w {m}"),
    ] {
        assert!(
            r.stderr.contains(&want),
            "{want:?} missing from:\n{}",
            r.stderr
        );
    }
    assert!(!marker.exists(), "the untrusted plugin was loaded");

    // Done as the message says: trusted, loaded, working.
    chmod(&misbehaving, 0o755);
    let r = lab.run_env(&["image", "inspect", "--source", &source], &marker_env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(marker.exists(), "the plugin was not loaded");
}

/// Where a test plugin is put, and what `locald` must say about it.
struct Placement {
    what: &'static str,
    /// Arranges the case in its (empty, mode 0755) directory; returns the
    /// plugin's path, whose directory is then the only plugin directory.
    setup: fn(&Path) -> PathBuf,
    /// `None`: trusted and loaded; else the refusal's words.
    refused: Option<&'static [&'static str]>,
    /// Gives files to another user.
    needs_root: bool,
}

/// `DIR/plugins/NAME`: a trusted copy of the misbehaving plugin.
fn trusted_copy(case: &Path, name: &str) -> PathBuf {
    let dir = case.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o755);
    let so = dir.join(name);
    place(MISBEHAVING, &so);
    so
}

const PLACEMENTS: &[Placement] = &[
    Placement {
        what: "a trusted plugin (the control)",
        setup: |c| trusted_copy(c, "ok.so"),
        refused: None,
        needs_root: false,
    },
    Placement {
        what: "a plugin in a sticky world-writable directory (as /tmp)",
        setup: |c| {
            let so = trusted_copy(c, "sticky.so");
            chmod(so.parent().unwrap(), 0o1777);
            so
        },
        refused: None,
        needs_root: false,
    },
    Placement {
        what: "a plugin writable by group",
        setup: |c| {
            let so = trusted_copy(c, "group-writable.so");
            chmod(&so, 0o775);
            so
        },
        refused: Some(&["is writable by group or others (mode 0775): chmod go-w "]),
        needs_root: false,
    },
    Placement {
        what: "a plugin writable by others",
        setup: |c| {
            let so = trusted_copy(c, "other-writable.so");
            chmod(&so, 0o757);
            so
        },
        refused: Some(&["is writable by group or others (mode 0757): chmod go-w "]),
        needs_root: false,
    },
    Placement {
        what: "a plugin owned by another user",
        setup: |c| {
            let so = trusted_copy(c, "theirs.so");
            chown_other(&so);
            so
        },
        refused: Some(&["is owned by uid 65534, not by you (uid 0) or root"]),
        needs_root: true,
    },
    Placement {
        what: "a plugin directory writable by others",
        setup: |c| {
            let so = trusted_copy(c, "in-open-dir.so");
            chmod(so.parent().unwrap(), 0o757);
            so
        },
        refused: Some(&[
            "/plugins is writable by group or others (mode 0757) and is not sticky",
            "chmod go-w ",
        ]),
        needs_root: false,
    },
    Placement {
        what: "a plugin directory writable by group",
        setup: |c| {
            let so = trusted_copy(c, "in-group-dir.so");
            chmod(so.parent().unwrap(), 0o775);
            so
        },
        refused: Some(&["/plugins is writable by group or others (mode 0775) and is not sticky"]),
        needs_root: false,
    },
    Placement {
        what: "a plugin below a directory of another user",
        setup: |c| {
            let theirs = c.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            chmod(&theirs, 0o755);
            let so = trusted_copy(&theirs, "below-theirs.so");
            chown_other(&theirs);
            so
        },
        refused: Some(&["/theirs is owned by uid 65534, not by you (uid 0) or root"]),
        needs_root: true,
    },
    Placement {
        what: "a symlink to a trusted plugin",
        setup: |c| {
            let real = trusted_copy(&c.join("elsewhere"), "real.so");
            let dir = c.join("plugins");
            std::fs::create_dir(&dir).unwrap();
            chmod(&dir, 0o755);
            let link = dir.join("link.so");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            link
        },
        refused: Some(&[
            "is a symbolic link (to ",
            "elsewhere/plugins/real.so)",
            "copy the library into the plugin directory instead",
        ]),
        needs_root: false,
    },
    Placement {
        what: "a directory named *.so",
        setup: |c| {
            let so = trusted_copy(c, "unused.so");
            std::fs::remove_file(&so).unwrap();
            let d = so.with_file_name("dir.so");
            std::fs::create_dir(&d).unwrap();
            chmod(&d, 0o755);
            d
        },
        refused: Some(&["is a directory, not a regular file"]),
        needs_root: false,
    },
    Placement {
        // Opening a FIFO for reading would block (the test would hang).
        what: "a FIFO named *.so",
        setup: |c| {
            let so = trusted_copy(c, "unused.so");
            std::fs::remove_file(&so).unwrap();
            let f = so.with_file_name("fifo.so");
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &f,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap();
            f
        },
        refused: Some(&["is a FIFO, not a regular file"]),
        needs_root: false,
    },
];

/// Each way a plugin can be untrusted: refused with a sentence naming the path,
/// the reason and the fix, by `plugin ls` (text and JSON) and by a command using
/// its scheme, and never opened (the plugin marks a file when loaded, and the
/// trusted placements show that it does).
#[test]
fn untrusted_plugins_are_refused_and_never_opened() {
    let test = "untrusted_plugins_are_refused_and_never_opened";
    let root = can_chown(test);
    let lab = Lab::new(&[]);
    let layout = lab.path("layout");
    write_layout(&layout);
    let source = format!("misbehaving:ok:{}", layout.display());
    let mut failures = Vec::new();
    for (i, case) in PLACEMENTS.iter().enumerate() {
        if case.needs_root && !root {
            continue;
        }
        let what = case.what;
        let dir = lab.mkdir(&format!("case-{i}"));
        let plugin = (case.setup)(&dir);
        let plugin_dir = plugin.parent().unwrap().to_str().unwrap().to_owned();
        let marker = lab.path(&format!("loaded-{i}"));
        let env = [
            ("LOCALD_PLUGIN_PATH", plugin_dir.as_str()),
            (LOAD_MARKER, marker.to_str().unwrap()),
        ];
        let mut problems = Vec::new();

        let r = lab.run_env(&["plugin", "ls", "--json"], &env);
        if r.code != 0 {
            failures.push(format!(
                "{what}: plugin ls --json exit {}: {}",
                r.code, r.stderr
            ));
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let loaded = v["loaded"].as_array().unwrap();
        let refused = v["refused"].as_array().unwrap();
        let ls = lab.run_env(&["plugin", "ls"], &env);
        let inspect = lab.run_env(&["image", "inspect", "--source", &source], &env);
        let p = plugin.to_str().unwrap();
        match case.refused {
            None => {
                if !(loaded.len() == 1 && loaded[0]["path"] == p && refused.is_empty()) {
                    problems.push(format!("not loaded alone: {v:#}"));
                }
                if !marker.exists() {
                    problems.push("loaded, but the marker is missing".to_owned());
                }
                if inspect.code != 0 {
                    problems.push(format!("inspect through it failed: {}", inspect.stderr));
                }
            }
            Some(words) => {
                if !loaded.is_empty() || refused.len() != 1 {
                    problems.push(format!("want one refusal and nothing loaded: {v:#}"));
                } else {
                    let reason = refused[0]["reason"].as_str().unwrap_or_default();
                    if refused[0]["path"] != p {
                        problems.push(format!("refused the wrong path: {v:#}"));
                    }
                    if refused[0]["opened"] != false {
                        problems.push(format!("says it was opened: {v:#}"));
                    }
                    // The sentence names the plugin or the directory at fault.
                    if !(reason.contains(p)
                        || reason.contains(&plugin_dir)
                        || reason.contains(dir.to_str().unwrap()))
                    {
                        problems.push(format!("the reason names no path: {reason}"));
                    }
                    for w in words {
                        if !reason.contains(w) {
                            problems.push(format!("the reason {reason:?} does not say {w:?}"));
                        }
                    }
                    let line = format!("refused {p} (not opened): {reason}");
                    if !ls.stdout.lines().any(|l| l == line) {
                        problems.push(format!("plugin ls has no line {line:?}:\n{}", ls.stdout));
                    }
                    if inspect.code != 1
                        || !inspect
                            .stderr
                            .contains("no built-in source or plugin serves scheme \"misbehaving\"")
                        || !inspect.stderr.contains(reason)
                    {
                        problems.push(format!(
                            "using its scheme: exit {}, want 1 with the reason:\n{}",
                            inspect.code, inspect.stderr
                        ));
                    }
                }
                if marker.exists() {
                    problems.push("the plugin was opened (it marked its loading)".to_owned());
                }
            }
        }
        if ls.code != 0 {
            problems.push(format!("plugin ls exit {}: {}", ls.code, ls.stderr));
        }
        for r in [&r, &ls, &inspect] {
            if !host_panics(&r.stderr).is_empty() {
                problems.push(format!("locald panicked: {}", r.stderr));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{what} ({}):\n  {}",
                plugin.display(),
                problems.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// A build whose builder and run image come from a plugin's source
/// (`oci-archive:`, one archive holding both): the stand-in or a real lifecycle
/// builds from it as from any built-in source.
#[test]
fn builds_from_a_plugin_source() {
    let Some(spec) = require::ok(
        locald_tests::builder::BuilderSpec::busybox("locald-test/run:1"),
        "the busybox test builder",
    ) else {
        return;
    };
    // Run natively by root, the lifecycle switches to the build user.
    locald_tests::standin::ensure_host_uid(spec.uid).unwrap();
    let lab = Lab::new(&[OCI_ARCHIVE]);
    let layout = lab.path("layout");
    spec.write_build_layout(&layout, "locald-test/builder:1")
        .unwrap();
    // An oci-archive is an OCI layout in a tar; this one names both images.
    let archive = lab.path("images.tar");
    peers::run(
        "tar",
        [
            "-C".as_ref(),
            layout.as_os_str(),
            "-cf".as_ref(),
            archive.as_os_str(),
            ".".as_ref(),
        ],
    )
    .unwrap();
    let app = lab.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("hello.txt"), "from a plugin's source\n").unwrap();
    let out = lab.path("out");
    let r = lab.run(&[
        "build",
        app.to_str().unwrap(),
        "--builder",
        "locald-test/builder:1",
        "--source",
        &format!("oci-archive:{}", archive.display()),
        "--runner",
        "native",
        "--image",
        "locald-test/from-plugin:1",
        "--output",
        &format!("oci-layout:{}", out.display()),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["runner"], "native", "{v}");
    assert!(out.join("index.json").is_file(), "{}", r.stderr);
    let paths = locald_tests::standin::app_layer_paths(&out).unwrap();
    assert!(
        paths.iter().any(|p| p.ends_with("workspace/hello.txt")),
        "{paths:?}"
    );
}

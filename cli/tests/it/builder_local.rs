//! `locald builder ...` against local sources (OCI layouts, docker archives):
//! the cache under `$XDG_DATA_HOME/locald`, pull policies, `inspect`, and what a
//! user sees when the cache cannot be written (bad directory, read-only, full).
//!
//! Every run gets its own `XDG_DATA_HOME` in a temporary directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use locald_tests::archive::{ArchiveBuilder, Format};
use locald_tests::builder::{default_rootfs, BuilderSpec, DEFAULT_CREATOR};
use locald_tests::fixture::{
    noise, Compression, Entry, ImageInfo, ImageSpec, Layer, LayoutBuilder,
};
use locald_tests::require;
use locald_tests::tree::{self, DiffOpts};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_locald");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// `locald` with only our environment: `NO_COLOR`, no `LOCALD_*` defaults.
fn command() -> Command {
    let mut c = Command::new(BIN);
    c.env("NO_COLOR", "1")
        .env_remove("LOCALD_LOG")
        .env_remove("LOCALD_PULL")
        .env_remove("LOCALD_PULL_INTERVAL");
    c
}

fn output(c: &mut Command) -> Out {
    let o = c.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A temporary directory holding the test's sources and its `XDG_DATA_HOME`.
struct World {
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let w = World {
            tmp: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(w.data()).unwrap();
        w
    }

    /// `path` in the world, with symlinks in the temporary directory resolved
    /// (locald records canonical source paths).
    fn path(&self, rel: &str) -> PathBuf {
        std::fs::canonicalize(self.tmp.path()).unwrap().join(rel)
    }

    fn data(&self) -> PathBuf {
        self.path("data")
    }

    /// The cache directory: `$XDG_DATA_HOME/locald`.
    fn cache(&self) -> PathBuf {
        self.data().join("locald")
    }

    fn run(&self, args: &[&str]) -> Out {
        output(command().args(args).env("XDG_DATA_HOME", self.data()))
    }

    fn run_in(&self, cwd: &Path, args: &[&str]) -> Out {
        output(
            command()
                .args(args)
                .env("XDG_DATA_HOME", self.data())
                .current_dir(cwd),
        )
    }

    /// The names (hex digests) of the stored blobs, wherever they are under
    /// `<cache>/blobs` (temporaries in `blobs/tmp` aside), sorted.
    fn blobs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .blob_paths()
            .iter()
            .map(|p| p.rsplit('/').next().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    /// The stored blobs' paths relative to `<cache>/blobs` (`tmp/` aside), sorted.
    fn blob_paths(&self) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            for name in names(dir) {
                let path = dir.join(&name);
                let rel = format!("{rel}{name}");
                if rel == "tmp" {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, &format!("{rel}/"), out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.cache().join("blobs"), "", &mut out);
        out.sort();
        out
    }
}

/// Collects failed checks, so one run reports all of them.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn done(self) {
        assert!(
            self.0.is_empty(),
            "{} check(s) failed:\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn oci(dir: &Path) -> String {
    format!("oci-layout:{}", dir.display())
}

fn hex(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap().to_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn tree_of(v: &Value) -> PathBuf {
    PathBuf::from(v["tree"].as_str().unwrap())
}

/// The digests a local pull of `info` may keep in the blob store: its manifest
/// and its config, nothing else.
fn manifest_and_config(info: &ImageInfo) -> Vec<String> {
    let mut v = vec![hex(&info.manifest.digest), hex(&info.config.digest)];
    v.sort();
    v
}

/// Whether `unshare --user --map-root-user --mount` works here.
fn namespaces() -> Result<(), String> {
    match Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "unshare --user --map-root-user --mount failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

/// A builder with values that are nobody's default.
fn custom_spec() -> BuilderSpec {
    let s = |v: &str| v.to_owned();
    BuilderSpec {
        lifecycle_version: s("0.19.3"),
        // Unsorted on purpose: the APIs are listed in version order.
        platform_apis: vec![s("0.13"), s("0.10"), s("0.12"), s("0.11")],
        buildpack_apis: vec![s("0.9"), s("0.10"), s("0.11")],
        buildpacks: vec![
            (s("acme/ruby"), s("1.0.0")),
            (s("acme/ruby"), s("2.0.0")),
            (s("solo"), s("0.1.0")),
        ],
        order: vec![
            vec![(s("acme/ruby"), s("2.0.0"), false)],
            vec![
                (s("acme/ruby"), s("1.0.0"), true),
                (s("solo"), s("0.1.0"), false),
            ],
        ],
        run_image: s("reg.example/acme/run:7"),
        run_mirrors: vec![s("m1.example/acme/run:7"), s("m2.example/acme/run:7")],
        stack_id: s("io.example.stack"),
        uid: 1234,
        gid: 1235,
        creator: b"#!/bin/sh\nexit 7\n".to_vec(),
        rootfs: default_rootfs(1234, 1235),
        stack_toml: false,
        run_toml: true,
        ..BuilderSpec::default()
    }
}

// 1. ------------------------------------------------------------------------

/// A pull from an OCI layout extracts /cnb into the cache, copies no layer blob
/// (the layout is read in place), re-reads the layout on the next pull, and
/// `--full` extracts the whole root filesystem into a tree of its own.
#[test]
fn pull_from_oci_layout() {
    let w = World::new();
    let spec = BuilderSpec::default();
    let layout = w.path("layout");
    let info = spec.write_layout(&layout, "builder").unwrap();
    let src = oci(&layout);

    let r = w
        .run(&["builder", "pull", "builder", "--source", &src, "--json"])
        .ok();
    let v = r.json();
    assert_eq!(v["image"], "builder", "{v:#}");
    assert_eq!(v["manifest_digest"], info.manifest.digest.as_str(), "{v:#}");
    assert_eq!(v["freshness"], "new", "{v:#}");
    assert_eq!(v["extracted"], true, "{v:#}");
    assert_eq!(v["paths"], json!(["/cnb"]), "{v:#}");
    // rootfs, dirs, lifecycle, 2 buildpacks, order, stack.toml, run.toml.
    assert_eq!(v["layers"], 8, "{v:#}");
    assert_eq!(v["fetched_layers"], 8, "{v:#}");
    assert!(v["disk_bytes"].as_u64().unwrap() > 0, "{v:#}");
    let tree = tree_of(&v);
    assert_eq!(tree.parent().unwrap(), w.cache().join("trees"), "{v:#}");
    // Every path in the tree is counted (the root itself aside).
    let snap = tree::snapshot(&tree);
    assert_eq!(v["entries"].as_u64().unwrap(), snap.len() as u64, "{v:#}");
    assert_eq!(names(&tree), ["cnb"], "only /cnb is extracted");

    let creator = tree.join("cnb/lifecycle/creator");
    assert_eq!(mode(&creator), 0o755);
    assert_eq!(std::fs::read(&creator).unwrap(), DEFAULT_CREATOR.as_bytes());
    assert_eq!(
        std::fs::read_to_string(tree.join("cnb/order.toml")).unwrap(),
        spec.order_toml()
    );
    assert_eq!(
        std::fs::read_link(tree.join("cnb/lifecycle/analyzer")).unwrap(),
        Path::new("creator")
    );
    // The layout's layers stay in the layout: only manifest and config.
    assert_eq!(w.blobs(), manifest_and_config(&info));

    // Again: the layout is read again (it is cheap), nothing is extracted.
    let v = w
        .run(&["builder", "pull", "builder", "--source", &src, "--json"])
        .ok()
        .json();
    assert_eq!(v["freshness"], "unchanged", "{v:#}");
    assert_eq!(v["extracted"], false, "{v:#}");
    assert_eq!(v["fetched_layers"], 0, "{v:#}");
    assert_eq!(tree_of(&v), tree);

    // Text: the tree on stdout, the talk on stderr.
    let r = w
        .run(&["builder", "pull", "builder", "--source", &src])
        .ok();
    assert_eq!(r.stdout, format!("{}\n", tree.display()), "{}", r.stderr);
    assert!(r.stderr.contains("builder"), "{}", r.stderr);
    assert!(r.stderr.contains("up to date"), "{}", r.stderr);

    // --full: the whole root filesystem, in a tree of its own.
    let v = w
        .run(&[
            "builder", "pull", "builder", "--source", &src, "--full", "--json",
        ])
        .ok()
        .json();
    assert_eq!(v["paths"], json!(["/"]), "{v:#}");
    assert_eq!(v["extracted"], true, "{v:#}");
    let full = tree_of(&v);
    assert_ne!(full, tree);
    assert_eq!(full.parent().unwrap(), w.cache().join("trees"));
    assert!(
        std::fs::read_to_string(full.join("etc/passwd"))
            .unwrap()
            .contains("cnb:x:1002:1000:"),
        "etc/passwd of the full tree"
    );
    assert_eq!(mode(&full.join("cnb/lifecycle/creator")), 0o755);
    assert_eq!(mode(&full.join("tmp")), 0o1777);
    // Still no layer blob.
    assert_eq!(w.blobs(), manifest_and_config(&info));
    // The /cnb tree is still where it was.
    assert!(tree.join("cnb/order.toml").is_file());
    // Where the cache's documentation (core/src/cache/mod.rs) says blobs are:
    // `<cache>/blobs/sha256/<hex>`.
    let want: Vec<String> = manifest_and_config(&info)
        .iter()
        .map(|h| format!("sha256/{h}"))
        .collect();
    assert_eq!(
        w.blob_paths(),
        want,
        "blobs are not at <cache>/blobs/sha256/<hex> (paths relative to <cache>/blobs)"
    );
}

/// `builder prune --all` removes the trees and the blobs of a pull.
#[test]
fn prune_all_empties_the_cache() {
    let w = World::new();
    let layout = w.path("layout");
    BuilderSpec::default()
        .write_layout(&layout, "builder")
        .unwrap();
    let src = oci(&layout);
    w.run(&["builder", "pull", "builder", "--source", &src])
        .ok();
    w.run(&["builder", "pull", "builder", "--source", &src, "--full"])
        .ok();
    assert_eq!(w.blobs().len(), 2);
    let v = w.run(&["builder", "prune", "--all", "--json"]).ok().json();
    let mut c = Checks::default();
    c.check(v["images"] == json!(["builder"]), || {
        format!("images: {v:#}")
    });
    c.check(v["trees"] == 2, || format!("trees: {v:#}"));
    c.check(v["blobs"] == 2, || {
        format!("blobs (manifest + config): {v:#}")
    });
    let left = w.blob_paths();
    c.check(left.is_empty(), || {
        format!("`builder prune --all` left blobs under <cache>/blobs: {left:?}")
    });
    let trees = names(&w.cache().join("trees"));
    c.check(trees.is_empty(), || format!("trees left: {trees:?}"));
    let ls = w.run(&["builder", "ls", "--json"]).ok().json();
    c.check(ls == json!([]), || format!("ls after prune --all: {ls:#}"));
    c.done();
}

/// A relative `oci-layout:` path is recorded as its absolute directory: pulls
/// from different working directories are one cache entry.
#[test]
fn relative_layout_path_is_one_source() {
    let w = World::new();
    let layout = w.path("work/layout");
    let sub = w.path("work/sub/deeper");
    std::fs::create_dir_all(&sub).unwrap();
    BuilderSpec::default()
        .write_layout(&layout, "builder")
        .unwrap();

    let pull = |cwd: &Path, spec: &str| {
        w.run_in(
            cwd,
            &["builder", "pull", "builder", "--source", spec, "--json"],
        )
        .ok()
        .json()
    };
    let a = pull(&w.path("work"), "oci-layout:./layout");
    let b = pull(&sub, "oci-layout:../../layout");
    let c = pull(Path::new("/"), &oci(&layout));
    assert_eq!(a["freshness"], "new", "{a:#}");
    assert_eq!(b["freshness"], "unchanged", "{b:#}");
    assert_eq!(c["freshness"], "unchanged", "{c:#}");
    assert_eq!(b["extracted"], false, "{b:#}");
    assert_eq!(tree_of(&a), tree_of(&b));
    assert_eq!(tree_of(&a), tree_of(&c));

    let ls = w.run(&["builder", "ls", "--json"]).ok().json();
    let entries = ls.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{ls:#}");
    assert_eq!(entries[0]["source"], oci(&layout), "{ls:#}");
    assert_eq!(entries[0]["image"], "builder", "{ls:#}");
    assert_eq!(entries[0]["trees"].as_array().unwrap().len(), 1, "{ls:#}");
    // Text: one row, after the header.
    let r = w.run(&["builder", "ls"]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(lines[0].starts_with("IMAGE"), "{}", r.stdout);
    assert!(lines[1].starts_with("builder "), "{}", r.stdout);
    assert!(lines[1].contains(&oci(&layout)), "{}", r.stdout);
}

// 2. ------------------------------------------------------------------------

/// `--pull never` serves a cached tree without the layout (it was moved away),
/// and refuses an image that was never pulled, saying so.
#[test]
fn pull_never_uses_the_cache_only() {
    let w = World::new();
    let layout = w.path("layout");
    let info = BuilderSpec::default()
        .write_layout(&layout, "builder")
        .unwrap();
    let src = oci(&layout);
    let first = w
        .run(&["builder", "pull", "builder", "--source", &src, "--json"])
        .ok()
        .json();

    // Never pulled: a clear refusal, and no reference recorded.
    let other = w.path("other");
    BuilderSpec {
        lifecycle_version: "0.1.0".into(),
        ..BuilderSpec::default()
    }
    .write_layout(&other, "builder")
    .unwrap();
    let refs_before = names(&w.cache().join("refs"));
    let r = w.run(&[
        "builder",
        "pull",
        "builder",
        "--source",
        &oci(&other),
        "--pull",
        "never",
    ]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(r.stderr.contains("error: "), "{}", r.stderr);
    assert!(r.stderr.contains("not in the cache"), "{}", r.stderr);
    assert!(r.stderr.contains("never"), "{}", r.stderr);
    assert!(
        r.stderr.contains("hint: pull it first") && r.stderr.contains("--pull missing"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(names(&w.cache().join("refs")), refs_before);
    // inspect says the same.
    let r = w.run(&[
        "builder",
        "inspect",
        "builder",
        "--source",
        &oci(&other),
        "--pull",
        "never",
    ]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("not in the cache"), "{}", r.stderr);

    // The layout is moved away: the cached tree still serves, whether the
    // layout is named by its absolute path or relative to the working directory.
    std::fs::rename(&layout, w.path("layout.moved")).unwrap();
    let root = w.path("");
    let mut c = Checks::default();
    for (cwd, spec) in [
        (Path::new("/"), src.clone()),
        (root.as_path(), "oci-layout:./layout".to_owned()),
    ] {
        let r = w.run_in(
            cwd,
            &[
                "builder", "pull", "builder", "--source", &spec, "--pull", "never", "--json",
            ],
        );
        c.check(r.code == 0, || {
            format!(
                "`builder pull builder --source {spec} --pull never --json` (in {}) with the \
                 layout moved away but its tree cached: expected exit 0 and the cached tree, got exit {}:\n{}",
                cwd.display(),
                r.code,
                r.stderr
            )
        });
        if r.code == 0 {
            let v = r.json();
            c.check(v["extracted"] == false, || {
                format!("{spec}: extracted: {v:#}")
            });
            c.check(v["freshness"] == "cached", || {
                format!("{spec}: freshness: {v:#}")
            });
            c.check(
                v["manifest_digest"] == info.manifest.digest.as_str(),
                || format!("{spec}: manifest_digest: {v:#}"),
            );
            c.check(tree_of(&v) == tree_of(&first), || {
                format!("{spec}: tree: {v:#}")
            });
        }
    }
    let r = w.run(&[
        "builder", "inspect", "builder", "--source", &src, "--pull", "never", "--json",
    ]);
    c.check(r.code == 0, || {
        format!(
            "`builder inspect builder --source {src} --pull never --json` with the layout moved \
             away: expected exit 0, got exit {}:\n{}",
            r.code, r.stderr
        )
    });
    if r.code == 0 {
        let v = r.json();
        c.check(v["builder"]["lifecycle_version"] == "0.20.5", || {
            format!("{v:#}")
        });
    }
    c.done();
}

// 3. ------------------------------------------------------------------------

/// A docker-archive of a builder gives the same /cnb as the OCI layout of the
/// same image, in every archive format, and its layers stay in the archive.
#[test]
fn docker_archive_matches_oci_layout() {
    let w = World::new();
    let spec = BuilderSpec::default();
    let layout = w.path("layout");
    let info = spec.write_layout(&layout, "builder").unwrap();
    let v = w
        .run(&[
            "builder",
            "pull",
            "builder",
            "--source",
            &oci(&layout),
            "--json",
        ])
        .ok()
        .json();
    let want = tree::snapshot(&tree_of(&v).join("cnb"));
    assert!(want.contains_key("lifecycle/creator"));
    let mut blobs = w.blobs().len();
    let mut seen = vec![info.manifest.digest.clone()];
    assert_eq!(blobs, 2);

    for format in Format::ALL {
        let file = w.path(&format!("builder-{}.tar", format.name()));
        ArchiveBuilder::new(format)
            .image(spec.image(), &["acme/builder:22"])
            .build()
            .write(&file)
            .unwrap();
        let src = format!("docker-archive:{}", file.display());
        let r = w.run(&[
            "builder",
            "pull",
            "acme/builder:22",
            "--source",
            &src,
            "--json",
        ]);
        assert_eq!(r.code, 0, "{}: {}", format.name(), r.stderr);
        let v = r.json();
        assert_eq!(v["freshness"], "new", "{}: {v:#}", format.name());
        // Formats holding the same (uncompressed) layers may give the same
        // manifest digest: its tree is then in the cache already.
        let digest = v["manifest_digest"].as_str().unwrap().to_owned();
        assert_eq!(
            v["extracted"],
            !seen.contains(&digest),
            "{}: {v:#}",
            format.name()
        );
        seen.push(digest);
        assert_eq!(v["paths"], json!(["/cnb"]), "{}: {v:#}", format.name());
        assert_eq!(v["layers"], 8, "{}: {v:#}", format.name());
        let tree = tree_of(&v);
        assert_eq!(names(&tree), ["cnb"], "{}", format.name());
        let got = tree::snapshot(&tree.join("cnb"));
        let d = tree::diff(&want, &got, &DiffOpts::exact());
        assert!(
            d.is_empty(),
            "{}: /cnb differs from the OCI layout's:\n{}",
            format.name(),
            d.join("\n")
        );
        // Manifest and config at most: no layer was copied.
        let now = w.blobs().len();
        assert!(
            now - blobs <= 2,
            "{}: {} blobs added: {:?}",
            format.name(),
            now - blobs,
            w.blobs()
        );
        blobs = now;
        for l in &info.layers {
            assert!(
                !w.blobs().contains(&hex(&l.digest)),
                "{}: layer {} copied",
                format.name(),
                l.digest
            );
        }
        // Again: re-read, unchanged.
        let v = w
            .run(&[
                "builder",
                "pull",
                "acme/builder:22",
                "--source",
                &src,
                "--json",
            ])
            .ok()
            .json();
        assert_eq!(v["freshness"], "unchanged", "{}: {v:#}", format.name());
        assert_eq!(v["extracted"], false, "{}: {v:#}", format.name());
        assert_eq!(tree_of(&v), tree, "{}", format.name());
    }
    // Every archive is a source of its own in `ls`, plus the layout.
    let ls = w.run(&["builder", "ls", "--json"]).ok().json();
    assert_eq!(
        ls.as_array().unwrap().len(),
        1 + Format::ALL.len(),
        "{ls:#}"
    );
}

// 4. ------------------------------------------------------------------------

/// `builder inspect` shows every value of a builder, in text and JSON.
#[test]
fn inspect_shows_every_value() {
    let w = World::new();
    let spec = custom_spec();
    let layout = w.path("layout");
    let info = spec.write_layout(&layout, "acme").unwrap();
    let src = oci(&layout);

    let r = w
        .run(&["builder", "inspect", "acme", "--source", &src, "--json"])
        .ok();
    let v = r.json();
    assert_eq!(v["image"], "acme", "{v:#}");
    assert_eq!(v["manifest_digest"], info.manifest.digest.as_str(), "{v:#}");
    assert_eq!(v["platform"], "linux/amd64", "{v:#}");
    assert!(
        tree_of(&v).join("cnb/lifecycle/lifecycle.toml").is_file(),
        "{v:#}"
    );
    let b = &v["builder"];
    assert_eq!(b["lifecycle_version"], "0.19.3", "{b:#}");
    assert_eq!(
        b["platform_apis"],
        json!({"supported": ["0.10", "0.11", "0.12", "0.13"], "deprecated": []}),
        "{b:#}"
    );
    assert_eq!(
        b["buildpack_apis"],
        json!({"supported": ["0.9", "0.10", "0.11"], "deprecated": []}),
        "{b:#}"
    );
    let bps: Vec<(String, String)> = b["buildpacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(bps, spec.buildpacks, "{b:#}");
    assert_eq!(b["buildpacks"][2]["name"], "Stand-in solo", "{b:#}");
    assert_eq!(
        b["buildpacks"][0]["homepage"], "https://github.com/acme/ruby",
        "{b:#}"
    );
    assert_eq!(
        b["order"],
        json!([
            {"group": [{"id": "acme/ruby", "version": "2.0.0", "optional": false}]},
            {"group": [
                {"id": "acme/ruby", "version": "1.0.0", "optional": true},
                {"id": "solo", "version": "0.1.0", "optional": false}
            ]}
        ]),
        "{b:#}"
    );
    assert_eq!(
        b["run_images"],
        json!([{
            "image": "reg.example/acme/run:7",
            "mirrors": ["m1.example/acme/run:7", "m2.example/acme/run:7"]
        }]),
        "{b:#}"
    );
    assert_eq!(b["stack_id"], "io.example.stack", "{b:#}");
    assert_eq!(b["user_id"], 1234, "{b:#}");
    assert_eq!(b["group_id"], 1235, "{b:#}");
    assert_eq!(
        b["description"], "Tiny CNB builder for locald tests",
        "{b:#}"
    );
    assert_eq!(b["targets"][0]["os"], "linux", "{b:#}");
    assert_eq!(b["targets"][0]["arch"], "amd64", "{b:#}");
    let created = b["created_by"].as_str().unwrap_or_default();
    assert!(
        created.contains("Pack CLI") && created.contains("0.36.4"),
        "{b:#}"
    );
    // stdout is the JSON only.
    assert!(!r.stdout.contains("Pulled"), "{}", r.stdout);

    let r = w
        .run(&["builder", "inspect", "acme", "--source", &src])
        .ok();
    let t = &r.stdout;
    for want in [
        "Builder:        acme",
        &format!("Digest:         {}", info.manifest.digest),
        "Platform:       linux/amd64",
        "Lifecycle:      0.19.3",
        "Platform APIs:  0.10, 0.11, 0.12, 0.13",
        "Buildpack APIs: 0.9, 0.10, 0.11",
        "Stack:          io.example.stack",
        "CNB_USER_ID=1234 CNB_GROUP_ID=1235",
        "Run image:      reg.example/acme/run:7 (mirrors: m1.example/acme/run:7, m2.example/acme/run:7)",
        "Buildpacks:     3",
        "Order:          2 groups",
        "1. acme/ruby@2.0.0\n",
        "2. acme/ruby@1.0.0 (optional), solo@0.1.0\n",
        "Tiny CNB builder for locald tests",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    for (id, version) in &spec.buildpacks {
        assert!(
            t.lines()
                .any(|l| l.trim_start().starts_with(id.as_str()) && l.contains(version.as_str())),
            "no line for {id} {version} in:\n{t}"
        );
    }
}

/// An image without /cnb: `inspect` does not panic and does not pass it off
/// as a builder.
#[test]
fn inspect_plain_image() {
    let w = World::new();
    let layout = w.path("plain");
    let mut b = LayoutBuilder::new(&layout);
    b.add_image(
        ImageSpec::new(vec![Layer::new(
            vec![
                Entry::dir("etc/"),
                Entry::file("etc/os-release", "ID=plain\n"),
            ],
            Compression::Gzip,
        )])
        .ref_name("plain"),
    );
    b.write().unwrap();
    let src = oci(&layout);
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["builder", "inspect", "plain", "--source", &src];
        args.extend_from_slice(extra);
        let r = w.run(&args);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr
                .contains("plain is not a CNB builder image: it has no /cnb/lifecycle"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("hint: "), "{}", r.stderr);
        assert!(r.stdout.is_empty(), "{}", r.stdout);
    }
}

// 5. ------------------------------------------------------------------------

/// XDG_DATA_HOME naming a regular file: exit 1, the directory named, a hint.
#[test]
fn cache_under_a_regular_file() {
    let w = World::new();
    let file = w.path("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let layout = w.path("layout");
    BuilderSpec::default()
        .write_layout(&layout, "builder")
        .unwrap();
    let src = oci(&layout);
    let cache = file.join("locald");
    for args in [
        vec!["builder", "pull", "builder", "--source", &src],
        vec!["builder", "inspect", "builder", "--source", &src],
        vec!["builder", "ls"],
    ] {
        let r = output(command().args(&args).env("XDG_DATA_HOME", &file));
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        assert!(
            r.stderr.contains(&format!(
                "the cache directory {} cannot be used",
                cache.display()
            )),
            "{args:?}: {}",
            r.stderr
        );
        let hint = r
            .stderr
            .lines()
            .find(|l| l.starts_with("hint: "))
            .unwrap_or_else(|| panic!("{args:?}: no hint in {}", r.stderr));
        assert!(hint.contains("XDG_DATA_HOME"), "{args:?}: {hint}");
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

/// A read-only cache (a populated one bind-mounted read-only, and a fresh
/// read-only mount): exit 1 with the directory named and the hint.
#[test]
fn read_only_cache() {
    if require::ok(namespaces(), "user namespaces").is_none() {
        return;
    }
    let w = World::new();
    let layout = w.path("layout");
    BuilderSpec::default()
        .write_layout(&layout, "builder")
        .unwrap();
    let src = oci(&layout);
    w.run(&["builder", "pull", "builder", "--source", &src])
        .ok();
    let empty = w.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let log = w.path("log");
    std::fs::create_dir_all(&log).unwrap();

    // $1 cache data dir, $2 empty dir, $3 locald, $4 source, $5 log dir.
    let script = r#"
        set -u
        mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 90
        mount -t tmpfs -o ro,size=64k tmpfs "$2" || exit 91
        XDG_DATA_HOME="$1" "$3" builder pull builder --source "$4" >"$5/populated.out" 2>"$5/populated.err"
        echo $? >"$5/populated.rc"
        XDG_DATA_HOME="$2" "$3" builder pull builder --source "$4" >"$5/fresh.out" 2>"$5/fresh.err"
        echo $? >"$5/fresh.rc"
    "#;
    let r = output(
        Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(w.data())
            .arg(&empty)
            .arg(BIN)
            .arg(&src)
            .arg(&log)
            .env("NO_COLOR", "1")
            .env_remove("LOCALD_LOG")
            .env_remove("LOCALD_PULL"),
    );
    assert_eq!(r.code, 0, "namespace script: {}", r.stderr);
    for (case, dir) in [("populated", w.cache()), ("fresh", empty.join("locald"))] {
        let read = |ext: &str| std::fs::read_to_string(log.join(format!("{case}.{ext}"))).unwrap();
        let (rc, stdout, stderr) = (read("rc"), read("out"), read("err"));
        assert_eq!(rc.trim(), "1", "{case}: {stderr}");
        assert!(stdout.is_empty(), "{case}: {stdout}");
        assert!(
            stderr.contains(&format!(
                "the cache directory {} cannot be used",
                dir.display()
            )),
            "{case}: {stderr}"
        );
        assert!(stderr.contains("Read-only file system"), "{case}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("hint: ") && l.contains("XDG_DATA_HOME")),
            "{case}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}

// 6. ------------------------------------------------------------------------

/// A disk that fills up during a `--full` pull: exit 1, the OS error and a hint
/// about the disk, and no record that would make the tree or the reference look
/// complete.
#[test]
fn full_disk() {
    if require::ok(namespaces(), "user namespaces").is_none() {
        return;
    }
    let w = World::new();
    let layout = w.path("big");
    let mut entries = vec![Entry::dir("cnb/"), Entry::file("cnb/order.toml", "")];
    entries.push(Entry::dir("data/"));
    for i in 0..4 {
        entries.push(Entry::file(
            format!("data/blob{i}"),
            noise(1024 * 1024, i + 1),
        ));
    }
    let mut b = LayoutBuilder::new(&layout);
    b.add_image(ImageSpec::new(vec![Layer::new(entries, Compression::None)]).ref_name("big"));
    b.write().unwrap();
    let mnt = w.path("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let log = w.path("log");
    std::fs::create_dir_all(&log).unwrap();

    // $1 mount point, $2 locald, $3 source, $4 log dir.
    let script = r#"
        set -u
        mount -t tmpfs -o size=512k tmpfs "$1" || exit 90
        XDG_DATA_HOME="$1" "$2" builder pull big --full --source "$3" >"$4/out" 2>"$4/err"
        echo $? >"$4/rc"
        cd "$1" && find . >"$4/files"
    "#;
    let r = output(
        Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&mnt)
            .arg(BIN)
            .arg(oci(&layout))
            .arg(&log)
            .env("NO_COLOR", "1")
            .env_remove("LOCALD_LOG")
            .env_remove("LOCALD_PULL"),
    );
    assert_eq!(r.code, 0, "namespace script: {}", r.stderr);
    let read = |name: &str| std::fs::read_to_string(log.join(name)).unwrap();
    let (rc, stdout, stderr, files) = (read("rc"), read("out"), read("err"), read("files"));
    println!("stderr of the full-disk pull:\n{stderr}\nleft on the tmpfs:\n{files}");
    let files: Vec<&str> = files.lines().collect();
    let mut c = Checks::default();
    c.check(rc.trim() == "1", || format!("exit {}: {stderr}", rc.trim()));
    c.check(stdout.is_empty(), || format!("stdout: {stdout}"));
    c.check(stderr.contains("No space left on device"), || {
        format!("no \"No space left on device\" in:\n{stderr}")
    });
    c.check(
        stderr
            .lines()
            .any(|l| l.starts_with("hint: ") && l.contains("disk is full")),
        || format!("no `hint: ... disk is full ...` line in:\n{stderr}"),
    );
    c.check(!stderr.contains("panicked"), || stderr.clone());
    c.check(
        files.contains(&"./locald/refs") && files.contains(&"./locald/trees"),
        || format!("{files:?}"),
    );
    let complete: Vec<&&str> = files
        .iter()
        .filter(|f| {
            (f.starts_with("./locald/refs/") || f.starts_with("./locald/trees/"))
                && f.ends_with(".json")
        })
        .collect();
    c.check(complete.is_empty(), || {
        format!("records left: {complete:?}")
    });
    // Nor a partial tree.
    let partial: Vec<&&str> = files
        .iter()
        .filter(|f| f.starts_with("./locald/trees/"))
        .collect();
    c.check(partial.is_empty(), || {
        format!("left in trees/: {partial:?}")
    });
    c.done();
}

// 7. ------------------------------------------------------------------------

#[test]
fn ls_of_an_empty_cache() {
    let w = World::new();
    let r = w.run(&["builder", "ls"]).ok();
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_eq!(
        r.stderr.trim(),
        format!("No builders cached in {}", w.cache().display())
    );
    let r = w.run(&["builder", "ls", "--json"]).ok();
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.stdout.trim(), "[]");
}

// 8. ------------------------------------------------------------------------

#[test]
fn help_explains_policies_cache_and_durations() {
    let w = World::new();
    let help = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--help");
        let r = w.run(&all).ok();
        assert!(r.stderr.is_empty(), "{args:?}: {}", r.stderr);
        r.stdout
    };
    let h = help(&["builder"]);
    for want in [
        "$XDG_DATA_HOME/locald",
        "~/.local/share/locald",
        "pull",
        "ls",
        "inspect",
        "prune",
    ] {
        assert!(h.contains(want), "builder --help lacks {want:?}:\n{h}");
    }
    let h = help(&["builder", "pull"]);
    for want in [
        "--pull <POLICY>",
        "always:",
        "missing:",
        "never:",
        "[default: missing]",
        "--pull-interval <DURATION>",
        "30m",
        "[default: 1h]",
        "LOCALD_PULL",
        "--full",
        "/cnb",
        "stdout",
    ] {
        assert!(h.contains(want), "builder pull --help lacks {want:?}:\n{h}");
    }
    let h = help(&["builder", "prune"]);
    for want in ["--older-than <DURATION>", "30d", "12h", "--all"] {
        assert!(
            h.contains(want),
            "builder prune --help lacks {want:?}:\n{h}"
        );
    }
    // A bad policy and a bad duration are usage errors that name the values.
    let r = w.run(&["builder", "pull", "x", "--pull", "sometimes"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("always") && r.stderr.contains("never"),
        "{}",
        r.stderr
    );
    let r = w.run(&["builder", "pull", "x", "--pull-interval", "soon"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--pull-interval"), "{}", r.stderr);
}

/// `verify` checks a local source's tree against the source itself (its layers
/// are not cached): a changed byte is found; with the source gone, the contents
/// are reported as not checked instead of passing silently.
#[test]
fn verify_checks_local_trees_against_their_source() {
    let w = World::new();
    let layout = w.path("layout");
    BuilderSpec::default()
        .write_layout(&layout, "builder")
        .unwrap();
    let src = oci(&layout);
    let v = w
        .run(&["builder", "pull", "builder", "--source", &src, "--json"])
        .ok()
        .json();
    let tree = tree_of(&v);
    let order = tree.join("cnb/order.toml");
    let mut bytes = std::fs::read(&order).unwrap();
    bytes[0] ^= 0x20; // same size: only a content check sees it
    std::fs::write(&order, &bytes).unwrap();
    let r = w.run(&["builder", "verify"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("file contents were changed"),
        "{}",
        r.stdout
    );
    assert!(!tree.exists(), "the damaged tree was not removed");

    w.run(&["builder", "pull", "builder", "--source", &src])
        .ok();
    let r = w.run(&["builder", "verify", "--json"]).ok();
    let report = r.json();
    assert_eq!(report["problems"], json!([]), "{report:#}");
    assert_eq!(report["unchecked"], json!([]), "{report:#}");

    std::fs::rename(&layout, w.path("moved")).unwrap();
    let report = w.run(&["builder", "verify", "--json"]).ok().json();
    let unchecked = report["unchecked"].as_array().unwrap();
    assert_eq!(unchecked.len(), 1, "{report:#}");
    assert!(
        unchecked[0].as_str().unwrap().contains("not checked"),
        "{report:#}"
    );
}

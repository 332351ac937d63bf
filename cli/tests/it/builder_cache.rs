//! `locald builder pull|ls|rm|prune|verify` against a real registry: what a warm
//! pull asks the registry for, what an updated tag downloads, offline use,
//! concurrent and killed pulls, a tampered cache, and garbage collection. Each
//! test has its own cache (`XDG_DATA_HOME` in a temporary directory) and its own
//! registry, usually behind a counting proxy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use locald_tests::fixture::{
    noise, sha256_digest, Compression, Entry, ImageSpec, Layer, LayoutBuilder,
};
use locald_tests::registry::{Auth, Proxy, Registry};
use locald_tests::tree::{assert_same_tree, DiffOpts};

use super::Run;

/// Environment variables of the caller that would change what locald does.
const SCRUBBED: &[&str] = &[
    "LOCALD_LOG",
    "LOCALD_PULL",
    "LOCALD_PULL_INTERVAL",
    "LOCALD_REGISTRY_CREDS",
    "LOCALD_INSECURE_REGISTRIES",
    "DOCKER_CONFIG",
    "REGISTRY_AUTH_FILE",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A home directory with its own locald cache.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("locald-cache-it-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        Home { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `$XDG_DATA_HOME/locald`.
    fn cache(&self) -> PathBuf {
        self.path().join("data/locald")
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_locald"));
        c.args(args);
        for k in SCRUBBED {
            c.env_remove(k);
        }
        c.env("HOME", self.path())
            .env("XDG_DATA_HOME", self.path().join("data"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let o = self.command(args, env).output().unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// `builder pull IMAGE --json EXTRA...`, which must succeed.
    fn pull_json(&self, image: &str, extra: &[&str]) -> Value {
        self.pull_json_env(image, extra, &[])
    }

    fn pull_json_env(&self, image: &str, extra: &[&str], env: &[(&str, &str)]) -> Value {
        let mut args = vec!["builder", "pull", image, "--json"];
        args.extend_from_slice(extra);
        let r = self.run_env(&args, env);
        assert_eq!(r.code, 0, "{args:?} failed:\n{}", r.stderr);
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}):\n{}", r.stdout))
    }

    /// `builder ls --json`.
    fn ls(&self) -> Vec<Value> {
        let r = self.run(&["builder", "ls", "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str::<Value>(&r.stdout)
            .unwrap_or_else(|e| panic!("ls --json is not JSON ({e}):\n{}", r.stdout))
            .as_array()
            .unwrap_or_else(|| panic!("ls --json is not an array:\n{}", r.stdout))
            .clone()
    }

    /// `image extract IMAGE --path /cnb --to DIR` (no cache involved): the tree
    /// a pull must produce.
    fn reference_extract(&self, image: &str, name: &str) -> PathBuf {
        let to = self.path().join(name);
        let r = self.run(&[
            "image",
            "extract",
            image,
            "--path",
            "/cnb",
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "reference extract failed:\n{}", r.stderr);
        to
    }

    /// `<cache>/blobs/sha256/<hex>`, where the cache keeps a blob.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.cache().join("blobs/sha256").join(hex)
    }

    /// Every stored blob.
    fn stored_blobs(&self) -> Vec<String> {
        self.names("blobs/sha256")
    }

    /// Names in a cache subdirectory (empty when it does not exist).
    fn names(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache().join(sub))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A builder-shaped image of four layers: the lifecycle and /etc (gzip), two
/// layers of `big` bytes of noise each (uncompressed, one also holding a file
/// outside /cnb), and `cnb/order.toml` holding `order` (gzip).
fn builder_image(order: &str, big: usize) -> ImageSpec {
    ImageSpec::new(vec![
        Layer::new(
            vec![
                Entry::dir("cnb/"),
                Entry::dir("cnb/lifecycle/"),
                Entry::file("cnb/lifecycle/lifecycle", "#!/bin/sh\necho lifecycle\n").mode(0o755),
                Entry::symlink("cnb/lifecycle/creator", "lifecycle"),
                Entry::dir("etc/"),
                Entry::file("etc/os-release", "ID=test\n"),
            ],
            Compression::Gzip,
        ),
        Layer::new(
            vec![
                Entry::dir("cnb/buildpacks/"),
                Entry::dir("cnb/buildpacks/a/"),
                Entry::file("cnb/buildpacks/a/payload", noise(big, 1)),
            ],
            Compression::None,
        ),
        Layer::new(
            vec![
                Entry::dir("cnb/buildpacks/b/"),
                Entry::file("cnb/buildpacks/b/payload", noise(big, 2)).mode(0o600),
                Entry::dir("usr/"),
                Entry::file("usr/outside", noise(4096, 3)),
            ],
            Compression::None,
        ),
        Layer::new(
            vec![Entry::file("cnb/order.toml", order)],
            Compression::Gzip,
        ),
    ])
    .label("io.buildpacks.builder.metadata", "{}")
}

/// Digests of an image as the registry holds it. skopeo rewrites what it pushes
/// (it compresses uncompressed layers and re-serialises the manifest), so the
/// layout's digests are not the registry's.
struct Pushed {
    manifest: String,
    config: String,
    /// `(digest, size)` of each layer, in order.
    layers: Vec<(String, u64)>,
}

impl Pushed {
    fn layer(&self, i: usize) -> &str {
        &self.layers[i].0
    }
}

/// Writes `spec` as a layout under `dir`, pushes it as `repo_tag`, and reads
/// back what the registry stored.
fn push(reg: &Registry, dir: &Path, spec: ImageSpec, repo_tag: &str) -> Pushed {
    let mut b = LayoutBuilder::new(dir);
    b.add_image(spec.ref_name("img"));
    b.write().unwrap();
    reg.push_layout(dir, "img", repo_tag).unwrap();
    let raw = reg.inspect_raw(repo_tag).unwrap();
    let m: Value = serde_json::from_str(&raw).unwrap();
    Pushed {
        manifest: sha256_digest(raw.as_bytes()),
        config: m["config"]["digest"].as_str().unwrap().to_owned(),
        layers: m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap().to_owned(),
                    l["size"].as_u64().unwrap(),
                )
            })
            .collect(),
    }
}

/// A registry with `builder_image("v1", big)` pushed as `cache/builder:v1`, a
/// proxy in front of it, and the image's name as seen through the proxy.
struct Setup {
    reg: Arc<Registry>,
    proxy: Proxy,
    image: String,
    info: Pushed,
    layouts: tempfile::TempDir,
}

impl Setup {
    fn new(big: usize) -> Setup {
        let reg = Arc::new(Registry::start(Auth::None));
        let layouts = tempfile::tempdir().unwrap();
        let info = push(
            &reg,
            &layouts.path().join("v1"),
            builder_image("[[order]]\n# v1\n", big),
            "cache/builder:v1",
        );
        let proxy = Proxy::start(&reg.addr());
        let image = format!("{}/cache/builder:v1", proxy.addr());
        Setup {
            reg,
            proxy,
            image,
            info,
            layouts,
        }
    }

    /// GETs of this blob through the proxy.
    fn gets_of(&self, digest: &str) -> usize {
        self.proxy.count("GET", &format!("/blobs/{digest}"))
    }

    /// Manifest requests with this method through the proxy.
    fn manifests(&self, method: &str) -> usize {
        self.proxy.count(method, "/manifests/")
    }

    fn layer_digests(&self) -> Vec<String> {
        self.info.layers.iter().map(|l| l.0.clone()).collect()
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v:#}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

/// Everything about a pulled /cnb tree: its only top-level entry is `cnb`, and
/// it equals what `image extract --path /cnb` writes.
fn assert_tree_matches(tree: &Path, reference: &Path) {
    let top: Vec<String> = std::fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        top,
        ["cnb"],
        "a /cnb tree holds only cnb/: {}",
        tree.display()
    );
    assert_same_tree(tree, reference, &DiffOpts::exact());
}

/// (1) A cold pull: the tree equals a plain extract of /cnb, the JSON summary and
/// `builder ls` agree with it.
#[test]
fn cold_pull_matches_extract_and_is_listed() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let r = home.run(&["builder", "pull", &st.image]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tree = PathBuf::from(r.stdout.trim_end());
    assert_eq!(
        r.stdout.lines().count(),
        1,
        "stdout is the tree only: {}",
        r.stdout
    );
    assert!(tree.is_dir(), "{}", tree.display());
    assert!(
        tree.starts_with(home.cache().join("trees")),
        "{} is not in the cache",
        tree.display()
    );
    assert!(r.stderr.contains("Pulled"), "{}", r.stderr);
    let reference = home.reference_extract(&st.image, "ref");
    assert_tree_matches(&tree, &reference);
    assert_eq!(
        std::fs::read(tree.join("cnb/buildpacks/a/payload")).unwrap(),
        noise(64 << 10, 1)
    );

    // The same pull in a second, empty cache, with --json.
    let home2 = Home::new();
    let v = home2.pull_json(&st.image, &[]);
    assert_eq!(s(&v, "image"), st.image, "{v:#}");
    assert_eq!(s(&v, "manifest_digest"), st.info.manifest, "{v:#}");
    assert_eq!(s(&v, "root_digest"), st.info.manifest, "{v:#}");
    assert_eq!(s(&v, "platform"), "linux/amd64", "{v:#}");
    assert_eq!(s(&v, "freshness"), "new", "{v:#}");
    assert_eq!(v["extracted"], true, "{v:#}");
    assert_eq!(v["paths"], serde_json::json!(["/cnb"]), "{v:#}");
    assert_eq!(n(&v, "layers"), 4, "{v:#}");
    assert_eq!(n(&v, "fetched_layers"), n(&v, "layers"), "{v:#}");
    let layer_bytes: u64 = st.info.layers.iter().map(|l| l.1).sum();
    assert_eq!(n(&v, "fetched_bytes"), layer_bytes, "{v:#}");
    // cnb, lifecycle/{lifecycle,creator}, buildpacks/{a,b}/payload, order.toml.
    assert_eq!(n(&v, "entries"), 10, "{v:#}");
    assert!(n(&v, "disk_bytes") >= 2 * (64 << 10), "{v:#}");
    assert!(v["seconds"].as_f64().is_some(), "{v:#}");
    let tree2 = PathBuf::from(s(&v, "tree"));
    assert!(tree2.starts_with(home2.cache().join("trees")), "{v:#}");
    assert_tree_matches(&tree2, &reference);
    // Manifest and config are kept; the layers are not (the tree is what a
    // build reads: keeping them too would double the bytes written).
    let mut want = vec![st.info.manifest.clone(), st.info.config.clone()];
    want.sort();
    let mut stored: Vec<String> = home2
        .stored_blobs()
        .into_iter()
        .map(|h| format!("sha256:{h}"))
        .collect();
    stored.sort();
    assert_eq!(stored, want, "layers {:?}", st.info.layers);

    let ls = home2.ls();
    assert_eq!(ls.len(), 1, "{ls:#?}");
    let e = &ls[0];
    assert_eq!(s(e, "image"), st.image, "{e:#}");
    assert_eq!(s(e, "manifest_digest"), st.info.manifest, "{e:#}");
    assert_eq!(s(e, "platform"), "linux/amd64", "{e:#}");
    assert!(n(e, "disk_bytes") > 0, "{e:#}");
    assert!(n(e, "blob_bytes") < layer_bytes, "{e:#}");
    let trees = e["trees"].as_array().unwrap();
    assert_eq!(trees.len(), 1, "{e:#}");
    assert_eq!(s(&trees[0], "path"), tree2.to_str().unwrap(), "{e:#}");
    assert_eq!(trees[0]["paths"], serde_json::json!(["/cnb"]), "{e:#}");
    // Text listing names it too.
    let r = home2.run(&["builder", "ls"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&st.image), "{}", r.stdout);

    // With --keep-layers the layers are kept too, in the documented layout:
    // `<cache>/blobs/sha256/<hex>`.
    let home3 = Home::new();
    let v = home3.pull_json(&st.image, &["--keep-layers"]);
    assert_tree_matches(Path::new(s(&v, "tree")), &reference);
    let e = &home3.ls()[0];
    assert!(n(e, "blob_bytes") >= layer_bytes, "{e:#}");
    for d in st.layer_digests() {
        let p = home3.blob_path(&d);
        assert!(
            p.is_file(),
            "layer blob not at {}; the cache holds: {:?}",
            p.display(),
            walk(&home3.cache())
                .into_iter()
                .filter(|p| p.starts_with("blobs"))
                .collect::<Vec<_>>()
        );
    }
}

/// Every path under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let rel = p.strip_prefix(dir).unwrap().display().to_string();
        if p.is_dir() {
            out.extend(walk(&p).into_iter().map(|c| format!("{rel}/{c}")));
        }
        out.push(rel);
    }
    out.sort();
    out
}

/// (2) A warm pull transfers no blob; with the default policy it does not even
/// ask for the manifest; `--pull always` and an interval of 0s make one HEAD.
#[test]
fn warm_pull_asks_at_most_one_head() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let first = home.pull_json(&st.image, &[]);
    assert_eq!(s(&first, "freshness"), "new");
    assert!(st.proxy.blob_gets() >= 4, "{:?}", st.proxy.requests());

    // Default policy, within the interval: nothing at all.
    st.proxy.clear_log();
    let v = home.pull_json(&st.image, &[]);
    assert_eq!(s(&v, "freshness"), "cached", "{v:#}");
    assert_eq!(v["extracted"], false, "{v:#}");
    assert_eq!(n(&v, "fetched_layers"), 0, "{v:#}");
    assert_eq!(s(&v, "tree"), s(&first, "tree"));
    assert_eq!(
        st.proxy.requests(),
        Vec::<(String, String)>::new(),
        "a pull within the interval must not contact the registry"
    );
    // The text form says it is cached and still prints the tree.
    let r = home.run(&["builder", "pull", &st.image]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim_end(), s(&first, "tree"));
    assert!(r.stderr.contains("is cached"), "{}", r.stderr);
    assert!(st.proxy.requests().is_empty(), "{:?}", st.proxy.requests());

    // --pull always: one HEAD of the manifest, no GET of anything else.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 3] = [
        (&["--pull", "always"], &[]),
        (&["--pull-interval", "0s"], &[]),
        (&[], &[("LOCALD_PULL_INTERVAL", "0s")]),
    ];
    for (extra, env) in cases {
        st.proxy.clear_log();
        let v = home.pull_json_env(&st.image, extra, env);
        let what = format!("{extra:?} {env:?}: {:?}", st.proxy.requests());
        assert_eq!(s(&v, "freshness"), "unchanged", "{what}\n{v:#}");
        assert_eq!(v["extracted"], false, "{what}");
        assert_eq!(st.manifests("HEAD"), 1, "{what}");
        assert_eq!(st.manifests("GET"), 0, "{what}");
        assert_eq!(st.proxy.blob_gets(), 0, "{what}");
        assert_eq!(s(&v, "tree"), s(&first, "tree"), "{what}");
    }
    // The env var for the policy works as --pull does.
    st.proxy.clear_log();
    let v = home.pull_json_env(&st.image, &[], &[("LOCALD_PULL", "always")]);
    assert_eq!(s(&v, "freshness"), "unchanged", "{v:#}");
    assert_eq!(st.manifests("HEAD"), 1, "{:?}", st.proxy.requests());
    // And after a check, the default policy is quiet again.
    st.proxy.clear_log();
    let v = home.pull_json(&st.image, &[]);
    assert_eq!(s(&v, "freshness"), "cached", "{v:#}");
    assert!(st.proxy.requests().is_empty(), "{:?}", st.proxy.requests());
}

/// Pushes v2 of the tag: the same image with a different `cnb/order.toml`
/// layer (the other three layers are shared).
fn push_v2(st: &Setup) -> Pushed {
    push(
        &st.reg,
        &st.layouts.path().join("v2"),
        builder_image("[[order]]\n# v2, updated\n", 64 << 10),
        "cache/builder:v1",
    )
}

/// (3) An updated tag that shares three of four layers: only the changed layer
/// (and the new config) is downloaded.
#[test]
fn updated_tag_fetches_only_the_changed_layer() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let v1 = home.pull_json(&st.image, &[]);
    let v2info = push_v2(&st);
    let changed: Vec<usize> = (0..4)
        .filter(|&i| v2info.layer(i) != st.info.layer(i))
        .collect();
    assert_eq!(changed, [3], "fixture: only the last layer differs");

    // Within the interval, the default policy does not notice.
    st.proxy.clear_log();
    let v = home.pull_json(&st.image, &[]);
    assert_eq!(s(&v, "freshness"), "cached", "{v:#}");
    assert_eq!(s(&v, "manifest_digest"), st.info.manifest);

    st.proxy.clear_log();
    let v = home.pull_json(&st.image, &["--pull", "always"]);
    let log = format!("{:?}", st.proxy.requests());
    assert_eq!(s(&v, "freshness"), "updated", "{v:#}");
    assert_eq!(s(&v, "manifest_digest"), v2info.manifest, "{v:#}");
    assert_eq!(v["extracted"], true, "{v:#}");
    assert_eq!(n(&v, "fetched_layers"), 1, "{v:#}");
    assert_eq!(n(&v, "fetched_bytes"), v2info.layers[3].1, "{v:#}");
    assert_eq!(st.gets_of(v2info.layer(3)), 1, "{log}");
    for (d, _) in &v2info.layers[..3] {
        assert_eq!(st.gets_of(d), 0, "shared layer {d} fetched: {log}");
    }
    // Besides the changed layer only the new config is a blob GET.
    assert_eq!(st.proxy.blob_gets(), 2, "{log}");
    assert_eq!(st.gets_of(&v2info.config), 1, "{log}");
    assert_ne!(s(&v, "tree"), s(&v1, "tree"));
    let tree = PathBuf::from(s(&v, "tree"));
    assert_eq!(
        std::fs::read_to_string(tree.join("cnb/order.toml")).unwrap(),
        "[[order]]\n# v2, updated\n"
    );
    let reference = home.reference_extract(&st.image, "ref-v2");
    assert_tree_matches(&tree, &reference);
    // The listing has the one reference, now at v2.
    let ls = home.ls();
    assert_eq!(ls.len(), 1, "{ls:#?}");
    assert_eq!(s(&ls[0], "manifest_digest"), v2info.manifest);
}

/// (4) `--pull never` and a registry that is down.
#[test]
fn pull_never_and_offline() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let first = home.pull_json(&st.image, &["--keep-layers"]);
    // A cache without the layers, for what needs them offline.
    let lean = Home::new();
    lean.pull_json(&st.image, &[]);
    st.reg.kill();
    // The proxy stays up: a connection to it would mean locald went online.
    let conns = st.proxy.connections();

    let v = home.pull_json(&st.image, &["--pull", "never"]);
    assert_eq!(s(&v, "freshness"), "cached", "{v:#}");
    assert_eq!(s(&v, "tree"), s(&first, "tree"));
    let v = home.pull_json(&st.image, &[]);
    assert_eq!(s(&v, "freshness"), "cached", "{v:#}");
    assert_eq!(s(&v, "tree"), s(&first, "tree"));

    // Never pulled: a clear error and a hint, no network needed to say so.
    let other = format!("{}/cache/other:v1", st.proxy.addr());
    let r = home.run(&["builder", "pull", &other, "--pull", "never"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not in the cache"), "{}", r.stderr);
    assert!(r.stderr.contains(&other), "{}", r.stderr);
    assert!(r.stderr.contains("\nhint: "), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);

    // The whole root, offline: not from a cache that kept only the /cnb tree
    // (a clear error naming the layer and the policy, nothing left behind)...
    let r = lean.run(&["builder", "pull", &st.image, "--full", "--pull", "never"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not in the cache"), "{}", r.stderr);
    assert!(r.stderr.contains("pull policy is never"), "{}", r.stderr);
    assert_eq!(lean.ls()[0]["trees"].as_array().map(Vec::len), Some(1));
    // ...but from the layer blobs a --keep-layers pull of /cnb kept.
    let v = home.pull_json(&st.image, &["--full", "--pull", "never"]);
    assert_eq!(v["extracted"], true, "{v:#}");
    assert_eq!(n(&v, "fetched_layers"), 0, "{v:#}");
    assert_eq!(v["paths"], serde_json::json!(["/"]), "{v:#}");
    let full = PathBuf::from(s(&v, "tree"));
    assert_ne!(full.to_str().unwrap(), s(&first, "tree"));
    assert_eq!(
        std::fs::read_to_string(full.join("etc/os-release")).unwrap(),
        "ID=test\n"
    );
    assert_eq!(
        std::fs::read(full.join("usr/outside")).unwrap(),
        noise(4096, 3)
    );
    assert_same_tree(
        &full.join("cnb"),
        &PathBuf::from(s(&first, "tree")).join("cnb"),
        &DiffOpts::exact(),
    );
    assert_eq!(
        st.proxy.connections(),
        conns,
        "an offline pull connected to the registry"
    );
}

/// Starts `builder pull IMAGE --json` without waiting.
fn spawn_pull(home: &Home, image: &str) -> std::process::Child {
    home.command(&["builder", "pull", image, "--json"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (5) Two pulls of the same image at once: both succeed with the same tree,
/// and every layer is downloaded once.
#[test]
fn concurrent_pulls_share_the_work() {
    let st = Setup::new(3 << 20);
    let home = Home::new();
    let a = spawn_pull(&home, &st.image);
    let b = spawn_pull(&home, &st.image);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let log = format!("{:?}", st.proxy.requests());
    let mut trees = Vec::new();
    let mut extracted = 0;
    for o in [&a, &b] {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        trees.push(s(&v, "tree").to_owned());
        if v["extracted"] == true {
            extracted += 1;
        }
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(extracted, 1, "exactly one process extracts: {log}");
    for d in st.layer_digests() {
        assert_eq!(st.gets_of(&d), 1, "layer {d}: {log}");
    }
    let reference = home.reference_extract(&st.image, "ref");
    assert_tree_matches(Path::new(&trees[0]), &reference);
    assert_eq!(home.ls().len(), 1);
}

/// (6) SIGKILL in the middle of a layer: nothing looks complete, the next pull
/// works, and prune removes what the killed one left.
#[test]
fn killed_pull_leaves_nothing_complete() {
    let st = Setup::new(3 << 20);
    let home = Home::new();
    let pid = Arc::new(AtomicI32::new(0));
    let hook_pid = pid.clone();
    // The first blob GET is the config: let it through whole (the cut comes after
    // its last byte). The second, a layer, is killed after 1 MiB.
    st.proxy.fail_next_blob_after(u64::MAX);
    st.proxy.on_next_blob_after(1 << 20, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while hook_pid.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let raw = hook_pid.load(Ordering::SeqCst);
        if let Some(p) = rustix::process::Pid::from_raw(raw) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    });
    let child = spawn_pull(&home, &st.image);
    pid.store(child.id() as i32, Ordering::SeqCst);
    let out = child.wait_with_output().unwrap();
    let log = st.proxy.records();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "the pull was not killed ({:?}); stderr:\n{}\nrequests: {log:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // It was killed in a layer, not in the config.
    let killed: Vec<_> = log.iter().filter(|r| r.injected).map(|r| &r.path).collect();
    assert_eq!(killed.len(), 2, "{log:?}");
    assert!(
        killed[0].ends_with(&st.info.config),
        "the first blob GET was not the config: {log:?}"
    );
    assert!(
        st.layer_digests()
            .iter()
            .any(|d| killed[1].ends_with(d.as_str())),
        "killed in {}, not in a layer",
        killed[1]
    );

    // Nothing complete: no reference, no tree record, no listing.
    let refs = home.names("refs");
    assert!(refs.iter().all(|n| !n.ends_with(".json")), "refs: {refs:?}");
    let trees = home.names("trees");
    assert!(
        trees
            .iter()
            .all(|n| !n.ends_with(".json") || n.starts_with('.')),
        "trees: {trees:?}"
    );
    assert_eq!(home.ls(), Vec::<Value>::new());
    // The killed pull left temporaries behind (what prune must clean later).
    let tmp_blobs = home.names("blobs/tmp");
    let tmp_trees: Vec<_> = trees.iter().filter(|n| n.starts_with('.')).collect();
    assert!(
        !tmp_blobs.is_empty() || !tmp_trees.is_empty(),
        "nothing was left behind, so the kill came too late: trees {trees:?}"
    );

    // The next pull works and the tree is right.
    st.proxy.clear_log();
    let v = home.pull_json(&st.image, &[]);
    assert_eq!(s(&v, "freshness"), "new", "{v:#}");
    let reference = home.reference_extract(&st.image, "ref");
    assert_tree_matches(Path::new(s(&v, "tree")), &reference);
    assert_eq!(home.ls().len(), 1);

    // Prune leaves no temporaries, and the image is still whole.
    let r = home.run(&["builder", "prune", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(p["images"], serde_json::json!([]), "{p:#}");
    assert_eq!(home.names("blobs/tmp"), Vec::<String>::new());
    let left: Vec<String> = home
        .names("trees")
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporaries left in trees/: {left:?}");
    assert_tree_matches(Path::new(s(&v, "tree")), &reference);
    st.proxy.clear_log();
    let v2 = home.pull_json(&st.image, &["--pull", "never"]);
    assert_eq!(v2["extracted"], false, "{v2:#}");
    assert_eq!(s(&v2, "tree"), s(&v, "tree"));
}

fn is_warning(stderr: &str) -> bool {
    stderr.contains("WARN") || stderr.contains("warning")
}

/// (7a) A file deleted from a cached tree: noticed and re-extracted, with its
/// layers fetched from the registry again (the cache kept only the tree); with
/// `--keep-layers`, from the cached layers, without a request.
#[test]
fn deleted_tree_file_is_noticed_and_restored() {
    let st = Setup::new(64 << 10);
    for keep in [false, true] {
        let extra: &[&str] = if keep { &["--keep-layers"] } else { &[] };
        let home = Home::new();
        let v = home.pull_json(&st.image, extra);
        let tree = PathBuf::from(s(&v, "tree"));
        let reference = home.reference_extract(&st.image, "ref");
        std::fs::remove_file(tree.join("cnb/order.toml")).unwrap();

        st.proxy.clear_log();
        let r = home.run(&["builder", "pull", &st.image, "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(is_warning(&r.stderr), "no warning:\n{}", r.stderr);
        assert!(r.stderr.contains(tree.to_str().unwrap()), "{}", r.stderr);
        let v2: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v2["extracted"], true, "{v2:#}");
        let layers = st.layer_digests().len();
        let (fetched, gets) = if keep {
            (0, 0)
        } else {
            (layers as u64, layers)
        };
        assert_eq!(n(&v2, "fetched_layers"), fetched, "keep {keep}: {v2:#}");
        assert_eq!(
            st.proxy.blob_gets(),
            gets,
            "keep {keep}: {:?}",
            st.proxy.requests()
        );
        assert_eq!(s(&v2, "tree"), tree.to_str().unwrap());
        assert_tree_matches(&tree, &reference);
        // And now it is intact again: no warning.
        let r = home.run(&["builder", "pull", &st.image]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!is_warning(&r.stderr), "{}", r.stderr);
    }
}

/// (7a') A change deep in a cached tree (a mode, three directories down): a
/// warm pull takes the tree on its seal, without walking it (what keeps a warm
/// pull's cost flat); `--pull always` walks it, notices the change and
/// extracts again; the walk is recorded, so the next warm pull is sealed again.
#[test]
fn deep_change_is_found_by_a_walk() {
    use std::os::unix::fs::PermissionsExt;
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let debug = [("LOCALD_LOG", "locald_cache=debug")];
    let v = home.pull_json(&st.image, &[]);
    let tree = PathBuf::from(s(&v, "tree"));
    let reference = home.reference_extract(&st.image, "ref");
    let deep = tree.join("cnb/buildpacks/a/payload");
    let mode = std::fs::metadata(&deep).unwrap().permissions().mode() & 0o7777;
    std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_ne!(mode, 0o600);

    let r = home.run_env(&["builder", "pull", &st.image, "--json"], &debug);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("sealed, walked"), "{}", r.stderr);
    assert!(!r.stderr.contains("entries, unchanged"), "{}", r.stderr);
    let v2: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v2["extracted"], false, "{v2:#}");

    let r = home.run_env(
        &["builder", "pull", &st.image, "--pull", "always", "--json"],
        &debug,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(is_warning(&r.stderr), "no warning:\n{}", r.stderr);
    let v3: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v3["extracted"], true, "{v3:#}");
    assert_eq!(
        std::fs::metadata(&deep).unwrap().permissions().mode() & 0o7777,
        mode
    );
    assert_tree_matches(&tree, &reference);

    // A walk that finds the tree unchanged is recorded too.
    let r = home.run_env(&["builder", "pull", &st.image, "--pull", "always"], &debug);
    assert!(r.stderr.contains("entries, unchanged"), "{}", r.stderr);
    let r = home.run_env(&["builder", "pull", &st.image], &debug);
    assert!(r.stderr.contains("sealed, walked"), "{}", r.stderr);
    assert!(!is_warning(&r.stderr), "{}", r.stderr);
}

/// `--keep-layers` on a tree already cached without its layers: the tree is
/// extracted again, keeping them; once they are kept, the next such pull is
/// warm.
#[test]
fn keep_layers_on_a_cached_tree() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let v = home.pull_json(&st.image, &[]);
    let tree = PathBuf::from(s(&v, "tree"));
    let reference = home.reference_extract(&st.image, "ref");
    assert!(st
        .layer_digests()
        .iter()
        .all(|d| !home.blob_path(d).exists()));

    let v = home.pull_json(&st.image, &["--keep-layers"]);
    assert_eq!(v["extracted"], true, "{v:#}");
    for d in st.layer_digests() {
        assert!(home.blob_path(&d).is_file(), "{d} not kept");
    }
    assert_eq!(s(&v, "tree"), tree.to_str().unwrap());
    assert_tree_matches(&tree, &reference);

    st.proxy.clear_log();
    let v = home.pull_json(&st.image, &["--keep-layers"]);
    assert_eq!(v["extracted"], false, "{v:#}");
    assert_eq!(st.proxy.blob_gets(), 0, "{:?}", st.proxy.requests());
}

/// (7b) A cached layer blob overwritten with garbage of the same size, and the
/// tree deleted: the blob is fetched again (only it), the pull succeeds.
#[test]
fn damaged_cached_blob_is_fetched_again() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let v = home.pull_json(&st.image, &["--keep-layers"]);
    let tree = PathBuf::from(s(&v, "tree"));
    let reference = home.reference_extract(&st.image, "ref");
    let victim = st.info.layer(1).to_owned();
    let blob = home.blob_path(&victim);
    let len = std::fs::metadata(&blob).unwrap().len() as usize;
    std::fs::write(&blob, noise(len, 99)).unwrap();
    std::fs::remove_dir_all(&tree).unwrap();

    st.proxy.clear_log();
    let r = home.run(&["builder", "pull", &st.image, "--json", "--keep-layers"]);
    let log = format!("{:?}", st.proxy.requests());
    assert_eq!(r.code, 0, "{}\n{log}", r.stderr);
    let v2: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v2["extracted"], true, "{v2:#}");
    assert_eq!(n(&v2, "fetched_layers"), 1, "{v2:#}");
    assert_eq!(st.gets_of(&victim), 1, "{log}");
    assert_eq!(st.proxy.blob_gets(), 1, "{log}");
    assert_tree_matches(&tree, &reference);
    // The store holds the right bytes again.
    let bytes = std::fs::read(&blob).unwrap();
    assert_eq!(sha256_digest(&bytes), victim);
}

/// (7c) One byte of a tree file changed (same size): the cheap check on use does
/// not see it; `builder verify` does, removes the tree, and the next pull
/// restores it.
#[test]
fn verify_finds_changed_content() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let v = home.pull_json(&st.image, &[]);
    let tree = PathBuf::from(s(&v, "tree"));
    let reference = home.reference_extract(&st.image, "ref");

    // An intact cache verifies: the manifest and config it holds, and the tree
    // against a fresh extraction of layers fetched from the registry again (the
    // cache did not keep them).
    st.proxy.clear_log();
    let r = home.run(&["builder", "verify", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(n(&rep, "images"), 1, "{rep:#}");
    assert_eq!(n(&rep, "trees"), 1, "{rep:#}");
    assert_eq!(n(&rep, "blobs"), 2, "{rep:#}");
    assert_eq!(rep["unchecked"], serde_json::json!([]), "{rep:#}");
    assert_eq!(
        st.proxy.blob_gets(),
        st.layer_digests().len(),
        "{:?}",
        st.proxy.requests()
    );
    assert_eq!(rep["problems"], serde_json::json!([]), "{rep:#}");

    let file = tree.join("cnb/buildpacks/a/payload");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let v2 = home.pull_json(&st.image, &[]);
    assert_eq!(v2["extracted"], false, "the cheap check reads no content");
    assert_eq!(s(&v2, "tree"), tree.to_str().unwrap());

    let r = home.run(&["builder", "verify"]);
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains(&st.image), "{all}");
    assert!(all.contains("damaged"), "{all}");
    assert!(r.stderr.contains("error: "), "{}", r.stderr);
    assert!(!tree.exists(), "the damaged tree was not removed");

    let r = home.run(&["builder", "pull", &st.image, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v3: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v3["extracted"], true, "{v3:#}");
    assert_eq!(
        n(&v3, "fetched_layers"),
        st.layer_digests().len() as u64,
        "{v3:#}"
    );
    assert_tree_matches(&tree, &reference);
    let r = home.run(&["builder", "verify", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

/// (8a) After a tag moved from v1 to v2, prune frees what only v1 used and
/// keeps v2 whole (offline too).
#[test]
fn prune_frees_what_only_the_old_version_used() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    let v1 = home.pull_json(&st.image, &["--keep-layers"]);
    let v2info = push_v2(&st);
    let v2 = home.pull_json(&st.image, &["--pull", "always", "--keep-layers"]);
    assert_eq!(s(&v2, "freshness"), "updated", "{v2:#}");
    let v1_only = [
        st.info.layer(3).to_owned(),
        st.info.config.clone(),
        st.info.manifest.clone(),
    ];
    let v2_blobs: Vec<String> = v2info
        .layers
        .iter()
        .map(|l| l.0.clone())
        .chain([v2info.config.clone(), v2info.manifest.clone()])
        .collect();
    for d in v1_only.iter().chain(&v2_blobs) {
        assert!(home.blob_path(d).is_file(), "{d} not cached before prune");
    }

    let r = home.run(&["builder", "prune", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(p["images"], serde_json::json!([]), "{p:#}");
    // v1's tree was turned into v2's by the incremental update: no tree is left
    // for prune, only v1's blobs.
    assert_eq!(n(&p, "trees"), 0, "{p:#}");
    assert_eq!(n(&p, "blobs"), 3, "{p:#}");
    assert!(n(&p, "bytes") > 0, "{p:#}");
    assert!(!Path::new(s(&v1, "tree")).exists(), "v1 tree still there");
    for d in &v2_blobs {
        assert!(home.blob_path(d).is_file(), "{d} of v2 was pruned");
    }
    assert_eq!(home.ls().len(), 1);

    // v2 still works offline, whole root included (from its kept blobs).
    st.reg.kill();
    let v = home.pull_json(&st.image, &["--pull", "never"]);
    assert_eq!(s(&v, "tree"), s(&v2, "tree"));
    assert_eq!(v["extracted"], false, "{v:#}");
    let v = home.pull_json(&st.image, &["--pull", "never", "--full"]);
    assert_eq!(v["extracted"], true, "{v:#}");
    assert_eq!(
        std::fs::read_to_string(Path::new(s(&v, "tree")).join("cnb/order.toml")).unwrap(),
        "[[order]]\n# v2, updated\n"
    );

    // Last, the blobs: v1's layer, config and manifest are gone.
    assert_eq!(n(&p, "blobs"), 3, "{p:#}");
    for d in &v1_only {
        assert!(
            !home.blob_path(d).exists(),
            "{d} (v1 only) not pruned: {}",
            home.blob_path(d).display()
        );
    }
    // A second prune has nothing to do.
    let r = home.run(&["builder", "prune", "--json"]);
    let p: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((n(&p, "blobs"), n(&p, "trees")), (0, 0), "{p:#}");
}

/// (8b) rm removes an image and everything only it used; rm of an unknown image
/// is an error; prune --all empties the cache.
#[test]
fn rm_and_prune_all() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    home.pull_json(&st.image, &["--keep-layers"]);
    home.pull_json(&st.image, &["--full"]);

    // rm of an unknown image: exit 1 and a sentence naming it; nothing removed.
    let unknown = format!("{}/cache/nope:v9", st.proxy.addr());
    let r = home.run(&["builder", "rm", &unknown]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("error: "), "{}", r.stderr);
    assert!(r.stderr.contains(&unknown), "{}", r.stderr);
    assert!(
        r.stderr.contains("no cached builder is named"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("hint: `locald builder ls` lists"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_eq!(home.ls().len(), 1, "a failed rm removed something");

    let r = home.run(&["builder", "rm", &st.image, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(p["images"], serde_json::json!([st.image]), "{p:#}");
    assert_eq!(n(&p, "trees"), 2, "{p:#}");
    assert!(n(&p, "bytes") > 0, "{p:#}");
    assert_eq!(home.ls(), Vec::<Value>::new());
    assert_eq!(home.names("trees"), Vec::<String>::new());
    assert_eq!(home.names("refs"), Vec::<String>::new());
    // Removing it again: it is no longer there.
    let r = home.run(&["builder", "rm", &st.image]);
    assert_eq!(r.code, 1, "{}", r.stderr);

    // prune --all empties a cache holding something.
    home.pull_json(&st.image, &["--keep-layers"]);
    assert_eq!(home.ls().len(), 1);
    let r = home.run(&["builder", "prune", "--all", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pa: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(pa["images"], serde_json::json!([st.image]), "{pa:#}");
    assert_eq!(n(&pa, "trees"), 1, "{pa:#}");
    assert_eq!(home.ls(), Vec::<Value>::new());
    assert_eq!(home.names("trees"), Vec::<String>::new());
    assert_eq!(home.names("refs"), Vec::<String>::new());
    assert_eq!(home.names("blobs/tmp"), Vec::<String>::new());

    // Last, the blobs: rm freed the image's 6 blobs, prune --all left none.
    assert_eq!(n(&p, "blobs"), 6, "rm: {p:#}");
    assert_eq!(n(&pa, "blobs"), 6, "prune --all: {pa:#}");
    assert_eq!(home.stored_blobs(), Vec::<String>::new());
}

/// `builder_image` with buildpack b (the middle layer) replaced: new payload,
/// one file more, one file fewer. With `clash`, the layer also writes
/// `cnb/order.toml`, which the top layer writes too.
fn builder_image_b2(big: usize, clash: bool) -> ImageSpec {
    let mut b = vec![
        Entry::dir("cnb/buildpacks/b/"),
        Entry::dir("cnb/buildpacks/b/bin/"),
        Entry::file("cnb/buildpacks/b/bin/build", noise(big / 2, 7)).mode(0o755),
        Entry::dir("usr/"),
        Entry::file("usr/outside", noise(4096, 3)),
    ];
    if clash {
        b.push(Entry::file("cnb/order.toml", "# from layer 3\n"));
    }
    let mut spec = builder_image("[[order]]\n# v1\n", big);
    spec.layers[2] = Layer::new(b, Compression::None);
    spec
}

/// An update that changes a middle layer is applied to the previous tree
/// (only that layer is read) and gives exactly what a fresh extraction gives;
/// one whose layer shares a path with another layer is extracted from scratch,
/// just as correctly.
#[test]
fn update_applies_only_the_changed_layer() {
    let st = Setup::new(64 << 10);
    let home = Home::new();
    home.pull_json(&st.image, &[]);
    let debug = [("LOCALD_LOG", "locald_cache=debug")];
    for (round, clash) in [(2, false), (3, true)] {
        let pushed = push(
            &st.reg,
            &st.layouts.path().join(format!("v{round}")),
            builder_image_b2(64 << 10, clash),
            "cache/builder:v1",
        );
        let r = home.run_env(
            &["builder", "pull", &st.image, "--json", "--pull", "always"],
            &debug,
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(s(&v, "manifest_digest"), pushed.manifest, "{v:#}");
        assert_eq!(s(&v, "freshness"), "updated", "{v:#}");
        let incremental = r.stderr.contains("by applying 1 changed layers");
        assert_eq!(incremental, !clash, "round {round}:\n{}", r.stderr);
        if clash {
            assert!(
                r.stderr
                    .contains("from scratch: layer 3 and another layer both touch cnb/order.toml"),
                "{}",
                r.stderr
            );
        }
        let tree = PathBuf::from(s(&v, "tree"));
        let reference = home.reference_extract(&st.image, &format!("ref-v{round}"));
        assert_tree_matches(&tree, &reference);
        assert!(!tree.join("cnb/buildpacks/b/payload").exists());
        // The tree it replaced is gone (consumed), and verify finds nothing wrong.
        let trees: Vec<String> = home
            .names("trees")
            .into_iter()
            .filter(|n| !n.contains('.'))
            .collect();
        assert_eq!(trees.len(), 1, "{trees:?}");
        let r = home.run(&["builder", "verify", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    }
}

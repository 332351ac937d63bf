//! `locald build` end to end, with a builder that can really run: a busybox root
//! filesystem and the stand-in `creator` (`locald_tests::standin`), which checks
//! the contract locald gives the lifecycle and exports an image the way the real
//! one does. Builders come from an OCI layout, docker archives and a real
//! registry; both runners are used; the image is checked with skopeo and umoci.
//!
//! Every test has its own `XDG_DATA_HOME` and image name. Tests skip (saying
//! why) where a peer is missing: busybox-static, skopeo, umoci, user namespaces
//! for the container runner, root for the runs as another user.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use locald_core::ImageReference;
use serde_json::Value;

use locald_tests::builder::{
    skip_marker, BuilderSpec, BUSYBOX_BUILDPACKS, BUSYBOX_GID, BUSYBOX_UID,
};
use locald_tests::fixture::{LayoutBuilder, REF_NAME};
use locald_tests::registry::{Auth, Registry};
use locald_tests::standin::{
    self, app_layer_paths, chown_tree, probe_value, TestUser, FAIL_BUILD, FAIL_DETECT,
    PROBE_SANDBOX, WAIT_FOR_SIGNAL,
};
use locald_tests::{peers, require};

const BIN: &str = env!("CARGO_BIN_EXE_locald");
/// The builder's name in the test layouts.
const BUILDER: &str = "locald-test/builder:1";
/// The run image the builder's run.toml names (layout and archive tests).
const RUN: &str = "locald-test/run:1";
/// The Platform API locald (0.12-0.14) and the busybox builder with the
/// stand-in (to 0.13) share (checked through the stand-in's contract probe).
const API: &str = "0.13";

/// Environment variables of the caller that would change what locald does.
const SCRUBBED: &[&str] = &[
    "LOCALD_LOG",
    "LOCALD_PULL",
    "LOCALD_PULL_INTERVAL",
    "LOCALD_REGISTRY_CREDS",
    "LOCALD_INSECURE_REGISTRIES",
    "LOCALD_PLUGIN_PATH",
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

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    /// Both streams: where the lifecycle's lines went is the runner's choice.
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// stderr without the lifecycle's lines: what locald itself says.
    fn own_stderr(&self) -> String {
        self.stderr
            .lines()
            .filter(|l| !l.starts_with("[creator]"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `--json` document: stdout, or (should the lifecycle's lines be on
    /// stdout too) from the first line that is just `{`.
    fn json(&self) -> Value {
        if let Ok(v) = serde_json::from_str(&self.stdout) {
            return v;
        }
        let start = self
            .stdout
            .find("\n{\n")
            .map(|i| i + 1)
            .or_else(|| self.stdout.starts_with("{\n").then_some(0));
        start
            .and_then(|i| serde_json::from_str(&self.stdout[i..]).ok())
            .unwrap_or_else(|| panic!("no JSON document on stdout:\n{self}"))
    }

    fn probe(&self, key: &str) -> Option<String> {
        probe_value(&self.all(), key)
    }
}

fn output(c: &mut Command) -> Out {
    let o = c.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory holding a test's fixtures, apps, outputs, `HOME` and
/// `XDG_DATA_HOME`, and a name unique to it.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    id: String,
    /// Run locald as this user (its files made theirs by [`World::hand_to`]).
    user: Option<TestUser>,
    bin: PathBuf,
}

impl World {
    fn new() -> World {
        // Native builds started by root run the lifecycle as the builder's user,
        // which it looks up in this host's /etc/passwd.
        standin::ensure_host_uid(BUSYBOX_UID).unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::Builder::new()
            .prefix("locald-build-it-")
            .tempdir()
            .unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let id = format!(
            "{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::SeqCst)
        );
        for d in ["data", "home"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // LOCALD_TEST_KEEP=1 leaves the world behind to look at.
        let mut tmp = tmp;
        if std::env::var_os("LOCALD_TEST_KEEP").is_some() {
            eprintln!("LOCALD_TEST_KEEP: keeping {}", root.display());
            tmp.disable_cleanup(true);
        }
        World {
            _tmp: tmp,
            root,
            id,
            user: None,
            bin: PathBuf::from(BIN),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The image name of this world's builds (unique: it shows in the
    /// lifecycle's command line).
    fn image(&self) -> String {
        format!("locald-test/app-{}:1", self.id)
    }

    /// An app directory `name` holding `files`.
    fn app(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, content) in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    /// From now on locald runs as `user`, and everything in the world is
    /// theirs; the binary is copied into the world when they cannot reach it.
    fn hand_to(&mut self, user: TestUser) {
        let reachable = Command::new("test")
            .arg("-x")
            .arg(BIN)
            .uid(user.uid)
            .gid(user.gid)
            .status()
            .is_ok_and(|s| s.success());
        if !reachable {
            let copy = self.path("bin/locald");
            std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
            std::fs::copy(BIN, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            self.bin = copy;
        }
        chown_tree(&self.root, user.uid, user.gid).unwrap();
        self.user = Some(user);
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args);
        for k in SCRUBBED {
            c.env_remove(k);
        }
        c.env("HOME", self.path("home"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env_remove("XDG_RUNTIME_DIR")
            .env("NO_COLOR", "1")
            .current_dir(&self.root)
            .stdin(Stdio::null());
        if let Some(u) = &self.user {
            c.uid(u.uid).gid(u.gid);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        output(&mut self.command(args))
    }

    /// `locald build APP --builder B --runner R --image I --output
    /// oci-layout:OUT EXTRA... --json`.
    fn build(&self, app: &Path, runner: Runner, out: &Path, extra: &[&str]) -> Out {
        self.run(
            &self
                .build_args(app, runner, out, extra)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    }

    fn build_args(&self, app: &Path, runner: Runner, out: &Path, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "build".into(),
            app.to_str().unwrap().into(),
            "--runner".into(),
            runner.name().into(),
            "--image".into(),
            self.image(),
            "--output".into(),
            format!("oci-layout:{}", out.display()),
            "--json".into(),
        ];
        if !extra.contains(&"--builder") {
            a.push("--builder".into());
            a.push(BUILDER.into());
        }
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runner {
    Native,
    Container,
}

impl Runner {
    fn name(self) -> &'static str {
        match self {
            Runner::Native => "native",
            Runner::Container => "container",
        }
    }
}

/// Whether the container runner can work here (user namespaces, as `user`).
fn sandbox_possible(user: Option<&TestUser>) -> Result<(), String> {
    let mut c = Command::new("unshare");
    c.args([
        "--user",
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "true",
    ]);
    if let Some(u) = user {
        c.uid(u.uid).gid(u.gid);
    }
    match c.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "user namespaces unavailable: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

/// The container runner where it can work, else the native one (said on stderr).
/// Every runner that works here: native always, the sandbox where user
/// namespaces do.
fn all_runners() -> Vec<Runner> {
    match sandbox_possible(None) {
        Ok(()) => vec![Runner::Native, Runner::Container],
        Err(e) => {
            require::skip(format_args!(
                "the container runner, only the native one runs: {e}"
            ));
            vec![Runner::Native]
        }
    }
}

fn any_runner() -> Runner {
    match sandbox_possible(None) {
        Ok(()) => Runner::Container,
        Err(e) => {
            require::skip(format_args!(
                "the container runner, the native one runs instead: {e}"
            ));
            Runner::Native
        }
    }
}

/// The busybox builder naming `run` as its run image; None (said) without a
/// static busybox.
fn busybox_spec(run: &str) -> Option<BuilderSpec> {
    require::ok(BuilderSpec::busybox(run), "the busybox test builder")
}

/// The busybox builder and its run image in one OCI layout (`BUILDER`, `RUN`);
/// returns the layout's `--source` spec.
fn layout_source(w: &World, spec: &BuilderSpec) -> String {
    let dir = w.path("builder-layout");
    spec.write_build_layout(&dir, BUILDER).unwrap();
    format!("oci-layout:{}", dir.display())
}

/// The standard setup: busybox builder in a layout, an app with `files`.
fn setup(w: &World, files: &[(&str, &str)]) -> Option<(BuilderSpec, String, PathBuf)> {
    let spec = busybox_spec(RUN)?;
    let src = layout_source(w, &spec);
    let app = w.app("app", files);
    Some((spec, src, app))
}

/// Whether skopeo (and umoci) can check outputs; said when not.
fn have_peers() -> (bool, bool) {
    (require::tool("skopeo"), require::tool("umoci"))
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks an `oci-layout:` output: one image, its manifest digest `digest`
/// (when given), three layers (the run image's two and the app's), the
/// build-metadata label; unpacked with umoci, the app's `files` under
/// /workspace and the run image's marker file. Returns `skopeo inspect`'s JSON
/// (Null without skopeo).
fn check_layout_output(
    w: &World,
    out: &Path,
    digest: Option<&str>,
    files: &[(&str, &str)],
) -> Value {
    let index = read_json(&out.join("index.json"));
    let manifests = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("index.json without manifests: {index}"));
    assert_eq!(manifests.len(), 1, "{index}");
    if let Some(d) = digest {
        assert_eq!(
            manifests[0]["digest"], d,
            "--json digest vs index.json: {index}"
        );
    }
    let src = match manifests[0]["annotations"][REF_NAME].as_str() {
        Some(r) => format!("oci:{}:{r}", out.display()),
        None => format!("oci:{}", out.display()),
    };
    let (skopeo, umoci) = have_peers();
    if !skopeo {
        return Value::Null;
    }
    let v = inspect(&src);
    if umoci {
        unpack_and_check(w, &src, files);
    }
    v
}

/// The image at `src` (a skopeo source) copied by skopeo, unpacked by umoci and
/// checked with [`check_rootfs`].
fn unpack_and_check(w: &World, src: &str, files: &[(&str, &str)]) {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    let copy = w.path(&format!("check-{n}/layout"));
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    peers::skopeo_copy(src, &format!("oci:{}:app", copy.display()), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let bundle = w.path(&format!("check-{n}/bundle"));
    let rootfs = peers::umoci_unpack(&copy, "app", &bundle).unwrap_or_else(|e| panic!("{e}"));
    check_rootfs(&rootfs, &read_json(&bundle.join("config.json")), files);
}

/// `skopeo inspect SRC`, checked as any CNB image: the run image's two layers
/// first, then more (the buildpack's launch layer, the app, the launcher, the
/// launch config, the process types); the build metadata names the buildpack
/// and its `web` process; the entrypoint is that default process.
fn inspect(src: &str) -> Value {
    let raw = peers::skopeo(&["inspect", src]).unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_str(&raw).unwrap();
    let layers = v["Layers"].as_array().map(Vec::len).unwrap_or(0);
    assert!(layers >= 2 + 5, "{layers} layers: {v:#}");
    let md = v["Labels"]["io.buildpacks.build.metadata"]
        .as_str()
        .unwrap_or_else(|| panic!("no build metadata label: {v:#}"));
    let md: Value = serde_json::from_str(md).unwrap_or_else(|e| panic!("{e}: {md}"));
    assert_eq!(md["buildpacks"][0]["id"], BUSYBOX_BUILDPACKS[0].0, "{md:#}");
    assert_eq!(md["processes"][0]["type"], "web", "{md:#}");
    let raw = peers::skopeo(&["inspect", "--config", src]).unwrap_or_else(|e| panic!("{e}"));
    let config: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/cnb/process/web"]),
        "{config:#}"
    );
    v
}

/// The app's files under the image's working directory (`/workspace` in the
/// sandbox; run natively, the lifecycle keeps the host path it was given), the
/// `web` process's program in its launch layer and `/cnb/process/web`.
fn check_rootfs(rootfs: &Path, bundle_config: &Value, files: &[(&str, &str)]) {
    let cwd = bundle_config["process"]["cwd"]
        .as_str()
        .unwrap_or_else(|| panic!("no working directory: {bundle_config:#}"));
    let env: Vec<&str> = bundle_config["process"]["env"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let layers = env
        .iter()
        .find_map(|e| e.strip_prefix("CNB_LAYERS_DIR="))
        .unwrap_or_else(|| panic!("no CNB_LAYERS_DIR: {env:?}"));
    let web = rootfs
        .join(layers.trim_start_matches('/'))
        .join(BUSYBOX_BUILDPACKS[0].0.replace('/', "_"))
        .join("web/bin/locald-web");
    assert!(web.is_file(), "no {} in the image", web.display());
    assert!(
        rootfs.join("cnb/process/web").symlink_metadata().is_ok(),
        "no /cnb/process/web in the image"
    );
    for (f, content) in files {
        let p = rootfs.join(cwd.trim_start_matches('/')).join(f);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            *content,
            "{f}"
        );
    }
    assert!(
        rootfs.join("etc/locald-run-image").is_file(),
        "the run image's layers are not in the image"
    );
}

/// The checks every successful build passes: exit 0, `--json` fields, the
/// lifecycle's lines prefixed, the contract accepted with the negotiated API.
fn check_build(w: &World, r: &Out, runner: Runner, out: &Path) -> Value {
    assert_eq!(r.code, 0, "the build failed:\n{r}");
    let v = r.json();
    assert_eq!(v["runner"], runner.name(), "{v:#}");
    assert!(
        v["image"]
            .as_str()
            .is_some_and(|i| i.contains(&format!("locald-test/app-{}", w.id))),
        "{v:#}"
    );
    assert!(
        v["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:") && d.len() == 71),
        "{v:#}"
    );
    assert_eq!(
        v["output"],
        format!("oci-layout:{}", out.display()),
        "{v:#}"
    );
    let all = r.all();
    for want in ["[creator] ===> DETECTING", "[creator] ===> EXPORTING"] {
        assert!(all.contains(want), "{want:?} missing:\n{r}");
    }
    check_timings(&v, &all);
    assert!(!all.contains('\u{1b}'), "colour codes in the output:\n{r}");
    // What locald passed, as the stand-in checked it (a real lifecycle says
    // nothing of it: the build's success is its word).
    if !require::real_lifecycle() {
        assert!(
            r.probe("contract ok")
                .is_some_and(|c| c.contains(&format!("platform-api={API} "))),
            "the lifecycle did not get Platform API {API}:\n{r}"
        );
        check_launcher(r, runner);
    }
    v
}

/// What the lifecycle reads is sparse: the run image and the previous app image
/// in the app's layout dir hold their manifest and config and, of the layers,
/// only the previous image's SBOM layer (the one whose diff ID the lifecycle's
/// metadata label names as `sbom.sha`; the stand-in writes none), while the
/// app's `images/` keeps both whole: every layer blob there, of the right size.
fn check_sparse_layout(v: &Value) {
    let project = Path::new(
        v["project"]
            .as_str()
            .unwrap_or_else(|| panic!("no project: {v:#}")),
    );
    // (layers as (hex, size), the SBOM layer's hex if the label names one)
    let read = |dir: &Path| -> (Vec<(String, u64)>, Option<String>) {
        let index = read_json(&dir.join("index.json"));
        let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        let manifest = read_json(&dir.join("blobs/sha256").join(&digest[7..]));
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config = read_json(&dir.join("blobs/sha256").join(&config_digest[7..]));
        let layers: Vec<(String, u64)> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap()[7..].to_owned(),
                    l["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let sbom = config["config"]["Labels"]["io.buildpacks.lifecycle.metadata"]
            .as_str()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .and_then(|md| md["sbom"]["sha"].as_str().map(str::to_owned))
            .and_then(|sha| {
                config["rootfs"]["diff_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .position(|d| d.as_str() == Some(sha.as_str()))
            })
            .map(|i| layers[i].0.clone());
        (layers, sbom)
    };
    let image = ImageReference::parse(v["image"].as_str().unwrap()).unwrap();
    let run = ImageReference::parse(v["run_image"].as_str().unwrap()).unwrap();
    for r in [&image, &run] {
        let rel = locald_build::placement::layout_path_for(r);
        let sparse = project.join("layout").join(&rel);
        let (layers, sbom) = read(&sparse);
        assert!(!layers.is_empty(), "{}", sparse.display());
        if require::real_lifecycle() && r == &image {
            assert!(
                sbom.is_some(),
                "the real lifecycle's image has no SBOM layer"
            );
        }
        for (hex, _) in &layers {
            assert_eq!(
                sparse.join("blobs/sha256").join(hex).exists(),
                sbom.as_deref() == Some(hex.as_str()),
                "layer {hex} in the lifecycle's layout {} (the SBOM layer is {sbom:?})",
                sparse.display()
            );
        }
        let whole = project.join("images").join(&rel);
        assert_eq!(read(&whole), (layers.clone(), sbom), "{}", whole.display());
        for (hex, size) in &layers {
            let m = std::fs::metadata(whole.join("blobs/sha256").join(hex))
                .unwrap_or_else(|e| panic!("layer {hex} missing from {}: {e}", whole.display()));
            assert_eq!(m.len(), *size, "{hex}");
        }
    }
}

/// `timings` accounts for the build by stage, and the lifecycle's part by the
/// phase headings it printed, in the order printed.
fn check_timings(v: &Value, all: &str) {
    let t = &v["timings"];
    let secs = |k: &str| {
        t[k].as_f64()
            .unwrap_or_else(|| panic!("timings.{k} missing: {t:#}"))
    };
    let stages = ["builder", "app_copy", "run_image", "lifecycle", "output"];
    let sum: f64 = stages.iter().map(|k| secs(k)).sum();
    assert!(
        sum <= secs("total") + 1e-6,
        "stages exceed the total: {t:#}"
    );
    assert!(secs("lifecycle") > 0.0, "{t:#}");
    let printed: Vec<String> = all
        .lines()
        .filter_map(|l| l.split("===> ").nth(1))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    let phases = t["lifecycle_phases"]
        .as_array()
        .unwrap_or_else(|| panic!("no lifecycle_phases: {t:#}"));
    let names: Vec<&str> = phases.iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(names[0], "starting", "{t:#}");
    assert_eq!(names[1..], printed, "phases vs the headings printed: {t:#}");
    let in_phases: f64 = phases.iter().filter_map(|p| p["seconds"].as_f64()).sum();
    assert!(
        (in_phases - secs("lifecycle")).abs() < 0.05,
        "the phases ({in_phases}) do not add up to the lifecycle ({}): {t:#}",
        secs("lifecycle")
    );
}

/// `-launcher` names the builder's launcher (which the stand-in found
/// executable): `/cnb/lifecycle/launcher` in the sandbox, the builder tree's
/// natively, where `CNB_BUILD_CONFIG_DIR` names the same tree's
/// `cnb/build-config`.
fn check_launcher(r: &Out, runner: Runner) {
    let launcher = r
        .probe("launcher")
        .unwrap_or_else(|| panic!("no launcher probe:\n{r}"));
    match runner {
        Runner::Container => assert_eq!(launcher, "/cnb/lifecycle/launcher", "{r}"),
        Runner::Native => {
            let tree = launcher
                .strip_suffix("/cnb/lifecycle/launcher")
                .filter(|t| t.starts_with('/') && !t.is_empty())
                .unwrap_or_else(|| panic!("-launcher {launcher} is not in a builder tree:\n{r}"));
            assert_eq!(
                r.probe("build-config-dir"),
                Some(format!("{tree}/cnb/build-config")),
                "CNB_BUILD_CONFIG_DIR is not the builder tree's build-config:\n{r}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Sources and runners

fn build_from_layout(runner: Runner) {
    let w = World::new();
    let files = [
        ("hello.txt", "hello from the app\n"),
        ("src/main.sh", "echo hi\n"),
    ];
    let Some((_, src, app)) = setup(&w, &files) else {
        return;
    };
    let out = w.path("out");
    let r = w.build(&app, runner, &out, &["--source", &src]);
    let v = check_build(&w, &r, runner, &out);
    check_layout_output(&w, &out, v["digest"].as_str(), &files);
    // The app itself was not built in place.
    let names: Vec<_> = std::fs::read_dir(&app)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "the app directory changed: {names:?}");
}

#[test]
fn builds_from_an_oci_layout_natively() {
    build_from_layout(Runner::Native);
}

#[test]
fn builds_from_an_oci_layout_in_the_sandbox() {
    if require::ok(sandbox_possible(None), "the container runner").is_none() {
        return;
    }
    build_from_layout(Runner::Container);
}

/// stdout is data: with `--json` it holds the document and nothing else (the
/// lifecycle's lines are talk, for stderr).
#[test]
fn json_stdout_is_only_the_document() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let runner = any_runner();
    let out = w.path("out");
    let r = w.build(&app, runner, &out, &["--source", &src]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        serde_json::from_str::<Value>(&r.stdout).is_ok(),
        "--json stdout is not only the JSON document:\n{r}"
    );
    assert!(r.stderr.contains("[creator] ===> EXPORTING"), "{r}");
}

/// Builder and run image each in a `docker save`-style archive made by skopeo;
/// the run image from `--run-image-source`.
#[test]
fn builds_from_docker_archives() {
    if !require::tool("skopeo") {
        return;
    }
    let w = World::new();
    let files = [("hello.txt", "from an archive\n")];
    let Some((_, src, app)) = setup(&w, &files) else {
        return;
    };
    let layout = src.strip_prefix("oci-layout:").unwrap();
    let (builder_tar, run_tar) = (w.path("builder.tar"), w.path("run.tar"));
    for (name, tar) in [(BUILDER, &builder_tar), (RUN, &run_tar)] {
        peers::skopeo_copy(
            &format!("oci:{layout}:{name}"),
            &format!("docker-archive:{}:{name}", tar.display()),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    for runner in all_runners() {
        let out = w.path(&format!("out-{runner:?}"));
        let r = w.build(
            &app,
            runner,
            &out,
            &[
                "--source",
                &format!("docker-archive:{}", builder_tar.display()),
                "--run-image-source",
                &format!("docker-archive:{}", run_tar.display()),
            ],
        );
        let v = check_build(&w, &r, runner, &out);
        check_layout_output(&w, &out, v["digest"].as_str(), &files);
    }
}

/// Builder and run image pushed to a real registry; the builder's run.toml
/// names the registry's run image.
#[test]
fn builds_from_a_registry() {
    if !require::tool("skopeo") || !require::tool("docker-registry") {
        return;
    }
    let reg = Registry::start(Auth::None);
    let run = format!("{}/locald-test/run:1", reg.addr());
    let builder = format!("{}/locald-test/builder:1", reg.addr());
    let Some(spec) = busybox_spec(&run) else {
        return;
    };
    let w = World::new();
    let layout = w.path("push-layout");
    let mut b = LayoutBuilder::new(&layout);
    b.add_image(spec.runnable_image().ref_name("builder"));
    b.add_image(spec.run_image_spec().ref_name("run"));
    b.write().unwrap();
    reg.push_layout(&layout, "builder", "locald-test/builder:1")
        .unwrap_or_else(|e| panic!("{e}"));
    reg.push_layout(&layout, "run", "locald-test/run:1")
        .unwrap_or_else(|e| panic!("{e}"));
    let files = [("hello.txt", "from a registry\n")];
    let app = w.app("app", &files);
    for runner in all_runners() {
        let out = w.path(&format!("out-{runner:?}"));
        let r = w.build(&app, runner, &out, &["--builder", &builder]);
        let v = check_build(&w, &r, runner, &out);
        if !require::real_lifecycle() {
            assert!(
                r.probe("contract ok")
                    .is_some_and(|c| c.contains(&format!("run-image={run}"))),
                "{r}"
            );
        }
        check_layout_output(&w, &out, v["digest"].as_str(), &files);
    }
    // A layer of the run image the app's state keeps, gone (by hand): within
    // --pull-interval the placed run image would be used as it is, but an
    // incomplete one is placed again.
    let runner = any_runner();
    let out = w.path("out-replaced");
    let r = w.build(&app, runner, &out, &["--builder", &builder]);
    let v = check_build(&w, &r, runner, &out);
    let remove_a_layer = || std::fs::remove_file(largest_kept_run_layer(&v)).unwrap();
    remove_a_layer();
    let r = w.build(&app, runner, &out, &["--builder", &builder]);
    let v = check_build(&w, &r, runner, &out);
    assert!(!r.stderr.contains("already in place"), "{r}");
    check_layout_output(&w, &out, v["digest"].as_str(), &files);
    // The registry gone: within --pull-interval neither the builder nor the run
    // image is asked for again, and with --pull never nothing is.
    reg.kill();
    for policy in ["missing", "never"] {
        let out = w.path(&format!("out-offline-{policy}"));
        let runner = any_runner();
        let r = w.build(
            &app,
            runner,
            &out,
            &["--builder", &builder, "--pull", policy],
        );
        check_build(&w, &r, runner, &out);
        assert!(r.stderr.contains("already in place"), "{r}");
    }
    // Offline, an incomplete run image is refused with what to do, not used.
    remove_a_layer();
    let r = w.build(
        &app,
        any_runner(),
        &w.path("out-incomplete"),
        &["--builder", &builder, "--pull", "never"],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains("is not (whole) in this app's build state"),
        "{r}"
    );
    assert!(r.stderr.contains("hint: "), "{r}");
    // --pull always has to ask, and says what failed.
    let r = w.build(
        &app,
        any_runner(),
        &w.path("out-always"),
        &["--builder", &builder, "--pull", "always"],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains(&builder), "{r}");
}

/// `-v` passes `-log-level debug` to the lifecycle; without it the lifecycle
/// logs at its default level.
#[test]
fn verbose_asks_the_lifecycle_for_debug_logs() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let runner = any_runner();
    let r = w.build(&app, runner, &w.path("out-quiet"), &["--source", &src]);
    assert_eq!(r.code, 0, "{r}");
    assert!(!r.stderr.contains("Running build for buildpack"), "{r}");
    let r = w.build(
        &app,
        runner,
        &w.path("out-verbose"),
        &["--source", &src, "-v"],
    );
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stderr.contains(&format!(
            "[creator] Running build for buildpack {}@{}",
            BUSYBOX_BUILDPACKS[0].0, BUSYBOX_BUILDPACKS[0].1
        )),
        "{r}"
    );
}

/// `--output docker-archive:FILE`: a tarball skopeo reads, holding the app.
#[test]
fn writes_a_docker_archive() {
    let w = World::new();
    let files = [("hello.txt", "archived\n")];
    let Some((_, src, app)) = setup(&w, &files) else {
        return;
    };
    let runner = any_runner();
    let archive = w.path("app.tar");
    let mut args = w.build_args(&app, runner, &w.path("unused"), &["--source", &src]);
    let i = args.iter().position(|a| a == "--output").unwrap();
    args[i + 1] = format!("docker-archive:{}", archive.display());
    let r = w.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{r}");
    let v = r.json();
    assert_eq!(
        v["output"],
        format!("docker-archive:{}", archive.display()),
        "{v:#}"
    );
    assert!(archive.is_file(), "no archive at {}", archive.display());
    assert!(!w.path("unused").exists());
    let (skopeo, umoci) = have_peers();
    if !skopeo {
        return;
    }
    let src = format!("docker-archive:{}", archive.display());
    inspect(&src);
    if umoci {
        unpack_and_check(&w, &src, &files);
    }
}

/// The `locald run ...` line of the hint on stderr, as words.
fn run_hint(r: &Out) -> Vec<String> {
    let line = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Run it:  "))
        .unwrap_or_else(|| panic!("no `Run it:` hint:\n{r}"));
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_owned())
        .collect();
    assert_eq!(words[..2], ["locald", "run"], "{line}");
    words
}

/// The app directory is the current directory and there is no `--output`: the
/// image lands in the app (`./<name>.oci`), and the next build of the app must
/// not put the previous image into the new one. The printed hint's
/// `oci:DIR:REF` is one skopeo reads.
#[test]
fn default_output_inside_the_app_is_not_built_into_the_next_image() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let runner = any_runner();
    let image = w.image();
    let build = || {
        let mut c = w.command(&[
            "build",
            ".",
            "--runner",
            runner.name(),
            "--builder",
            BUILDER,
            "--source",
            &src,
            "--image",
            &image,
        ]);
        c.current_dir(&app);
        let r = output(&mut c);
        assert_eq!(r.code, 0, "the build failed:\n{r}");
        if !require::real_lifecycle() {
            check_launcher(&r, runner);
        }
        r
    };
    let out = app.join(format!("app-{}.oci", w.id));

    let r = build();
    assert!(
        r.stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("sha256:") && l.len() == 71),
        "stdout does not end with the digest:\n{r}"
    );
    assert!(
        out.join("index.json").is_file(),
        "no image at {}:\n{r}",
        out.display()
    );
    let first = app_layer_paths(&out).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        first.iter().any(|p| p.ends_with("workspace/hello.txt")),
        "{first:?}"
    );
    // The hint is a `locald run` line that runs the image as printed.
    let words = run_hint(&r);
    assert!(
        words.contains(&format!("oci-layout:{}", out.display())),
        "{words:?}"
    );
    if require::ok(sandbox_possible(None), "the container runner").is_some() {
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let ran = w.run(&args);
        assert_eq!(ran.code, 0, "{words:?}: {ran}");
        assert!(ran.stdout.contains("web process of"), "{ran}");
        assert!(ran.stdout.contains("hi"), "the app's file: {ran}");
        // --process picks another type; the types are listed by inspect.
        let mut worker = args.clone();
        worker.extend(["--process", "worker"]);
        let ran = w.run(&worker);
        assert_eq!(ran.code, 0, "{ran}");
        assert!(ran.stdout.contains("web process of"), "{ran}");
        let mut nope = args.clone();
        nope.extend(["--process", "nope"]);
        let ran = w.run(&nope);
        assert_eq!(ran.code, 1, "{ran}");
        assert!(ran.stderr.contains("web, worker"), "{ran}");
        let inspected = w.run(&["image", "inspect", &words[2], "--source", &words[4]]);
        assert!(
            inspected.stdout.contains("Processes: web, worker"),
            "{inspected}"
        );
    }

    std::fs::write(app.join("hello.txt"), "hi again\n").unwrap();
    let r = build();
    let second = app_layer_paths(&out).unwrap_or_else(|e| panic!("{e}"));
    let leaked: Vec<_> = second.iter().filter(|p| p.contains(".oci")).collect();
    assert!(
        leaked.is_empty(),
        "the previous output went into the image: {leaked:?}\n{r}"
    );
    assert_eq!(second, first, "the app layer changed its files:\n{r}");
    check_layout_output(&w, &out, None, &[("hello.txt", "hi again\n")]);
}

// ---------------------------------------------------------------------------
// The sandbox

/// One sandboxed build of an app holding `probe-sandbox`, as the world's user;
/// checks what the lifecycle could see and do.
fn probe_sandbox(mut w: World, user: Option<TestUser>) {
    let Some((_, src, app)) = setup(&w, &[(PROBE_SANDBOX, ""), ("hello.txt", "hi\n")]) else {
        return;
    };
    // A file only the host has, readable by anyone there.
    let secret = w.path("host-only/secret.txt");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, "host secret\n").unwrap();
    let who = match &user {
        Some(u) => {
            w.hand_to(u.clone());
            u.uid
        }
        None => rustix::process::geteuid().as_raw(),
    };
    for p in [&w.root, &secret.parent().unwrap().to_path_buf()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let host_pid = std::process::id().to_string();
    let out = w.path("out");
    let r = w.build(
        &app,
        Runner::Container,
        &out,
        &[
            "--source",
            &src,
            "--env",
            &format!("PROBE_HOST_PATH={}", secret.display()),
            "--env",
            &format!("PROBE_HOST_PID={host_pid}"),
        ],
    );
    check_build(&w, &r, Runner::Container, &out);
    let p = |k: &str| r.probe(k).unwrap_or_else(|| panic!("no {k} probe:\n{r}"));
    let mut failed = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failed.push(what);
        }
    };
    let hp = p("host-path");
    check(
        hp.starts_with("hidden "),
        format!("the host file is not hidden: {hp}"),
    );
    let hpid = p("host-pid");
    check(
        hpid.starts_with("hidden "),
        format!("the host's processes are visible: {hpid}"),
    );
    let cnb = p("write /cnb");
    check(cnb == "denied", format!("/cnb is writable: {cnb}"));
    let usr = p("write /usr");
    check(usr == "denied", format!("/usr is writable: {usr}"));
    let id = p("id");
    check(
        id == format!("uid={BUSYBOX_UID} gid={BUSYBOX_GID}"),
        format!("not the builder's user {BUSYBOX_UID}:{BUSYBOX_GID}: {id}"),
    );
    let host_pid1 = String::from_utf8_lossy(&std::fs::read("/proc/1/cmdline").unwrap_or_default())
        .replace('\0', " ");
    let pid1 = p("pid1");
    check(
        pid1 != host_pid1 && !pid1.contains("systemd") && pid1 != "unreadable",
        format!("pid 1 is not the sandbox's init: {pid1:?} (host: {host_pid1:?})"),
    );
    // A pid namespace of its own (not only a /proc of its own).
    let pidns = p("pidns");
    let host_pidns = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    check(
        pidns.starts_with("pid:[") && pidns != host_pidns,
        format!("the lifecycle's pid namespace {pidns} is the host's {host_pidns}"),
    );
    let dn = p("dev-null");
    check(dn == "ok", format!("/dev/null: {dn}"));
    // What the lifecycle wrote in the sandbox is the invoking user's on the host.
    // The buildpacks' cache (the lifecycle keeps its cache layers there).
    let cached: Vec<PathBuf> = files_under(&w.path("data/locald/projects"))
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "cache"))
        .collect();
    check(!cached.is_empty(), "nothing in the build cache".to_owned());
    for c in &cached {
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(c).unwrap());
        check(
            owner == who,
            format!("{} is owned by {owner}, not {who}", c.display()),
        );
    }
    assert!(failed.is_empty(), "{}\n\n{r}", failed.join("\n"));
}

/// Every file (not directory) under `dir`, symlinks not followed.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            found.extend(files_under(&p));
        } else if t.is_file() {
            found.push(p);
        }
    }
    found
}

/// Run natively by root, the lifecycle switches to the builder's build user and
/// looks it up in this host's /etc/passwd: a uid the host does not know is
/// refused before anything runs, with what to do.
#[test]
fn native_as_root_needs_the_build_user_in_the_host_passwd() {
    if !require::root("a native build that switches users") {
        return;
    }
    let w = World::new();
    let Some(mut spec) = busybox_spec(RUN) else {
        return;
    };
    let unknown = 3_999_999;
    assert!(!std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .contains(&format!(":{unknown}:")));
    spec.uid = unknown;
    let src = layout_source(&w, &spec);
    let app = w.app("app", &[("hello.txt", "hi\n")]);
    let out = w.path("out");
    let r = w.build(&app, Runner::Native, &out, &["--source", &src]);
    assert_eq!(r.code, 1, "{r}");
    let own = r.own_stderr();
    assert!(
        own.contains(&format!("uid {unknown}")) && own.contains("/etc/passwd"),
        "{r}"
    );
    assert!(
        own.contains("hint: ") && own.contains("container runner"),
        "{r}"
    );
    assert!(!r.all().contains("[creator]"), "the lifecycle ran:\n{r}");
    assert!(!out.exists());
}

/// Started by an unprivileged user (as root, the tests' own user), a build works
/// with every runner: the lifecycle runs as that user, natively or mapped to
/// the builder's user in the sandbox.
#[test]
fn builds_as_an_unprivileged_user() {
    let mut w = World::new();
    let files = [("hello.txt", "built by a user\n")];
    let Some((_, src, app)) = setup(&w, &files) else {
        return;
    };
    let mut runners = vec![Runner::Native];
    if peers::is_root() {
        let Some(user) = require::ok(standin::test_user(), "the unprivileged test user") else {
            return;
        };
        if require::ok(sandbox_possible(Some(&user)), "the container runner").is_some() {
            runners.push(Runner::Container);
        }
        w.hand_to(user);
    } else if require::ok(sandbox_possible(None), "the container runner").is_some() {
        runners.push(Runner::Container);
    }
    for runner in runners {
        let out = w.path(&format!("out-{runner:?}"));
        let r = w.build(&app, runner, &out, &["--source", &src]);
        let v = check_build(&w, &r, runner, &out);
        check_layout_output(&w, &out, v["digest"].as_str(), &files);
    }
}

#[test]
fn sandbox_hides_the_host_as_root() {
    if !require::root("the sandbox started by root (the unprivileged test runs as this user)") {
        return;
    }
    if require::ok(sandbox_possible(None), "the container runner").is_none() {
        return;
    }
    probe_sandbox(World::new(), None);
}

#[test]
fn sandbox_hides_the_host_as_an_unprivileged_user() {
    let user = if peers::is_root() {
        let Some(u) = require::ok(standin::test_user(), "the unprivileged test user") else {
            return;
        };
        Some(u)
    } else {
        None
    };
    if require::ok(sandbox_possible(user.as_ref()), "the container runner").is_none() {
        return;
    }
    probe_sandbox(World::new(), user);
}

// ---------------------------------------------------------------------------
// Failures, signals, cache, environment

#[test]
fn detection_failure_is_a_sentence_naming_the_groups() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[(FAIL_DETECT, "")]) else {
        return;
    };
    let runner = any_runner();
    let out = w.path("out");
    let r = w.build(&app, runner, &out, &["--source", &src]);
    // The lifecycle's own code, passed through.
    assert_eq!(r.code, standin::EXIT_FAILED_DETECT, "{r}");
    let own = r.own_stderr();
    assert!(own.contains("No buildpack group passed detection"), "{r}");
    for (id, _) in BUSYBOX_BUILDPACKS {
        assert!(
            own.contains(id),
            "the groups tried are not listed ({id}):\n{r}"
        );
    }
    assert!(
        r.all()
            .contains("[creator] ERROR: No buildpack groups passed detection."),
        "the lifecycle's own output is not shown:\n{r}"
    );
    assert!(!out.exists(), "a failed build wrote {}", out.display());
    assert!(
        r.stdout.trim().is_empty() || !r.stdout.contains("sha256:"),
        "{r}"
    );
}

/// A buildpack fails (exit 51, passed through): the sentence names it. At the
/// lifecycle's default log level it does not say which buildpack it runs, so
/// locald names the group that passed detection (`<layers>/group.toml`); with
/// `-v` the last `Running build for buildpack` line.
#[test]
fn build_failure_is_a_sentence_naming_the_buildpack() {
    let w = World::new();
    // The second group's buildpack fails (the first group's does not detect):
    // the sentence must name it, not guess the first of the order.
    let (failing, version) = BUSYBOX_BUILDPACKS[1];
    let skip_first = skip_marker(BUSYBOX_BUILDPACKS[0].0);
    let Some((_, src, app)) = setup(&w, &[(FAIL_BUILD, failing), (&skip_first, "")]) else {
        return;
    };
    let runner = any_runner();
    for verbose in [false, true] {
        let out = w.path(&format!("out-{verbose}"));
        let mut extra = vec!["--source", src.as_str()];
        if verbose {
            extra.push("-v");
        }
        let r = w.build(&app, runner, &out, &extra);
        assert_eq!(r.code, standin::EXIT_FAILED_BUILD, "-v {verbose}: {r}");
        let own = r.own_stderr();
        assert!(
            own.contains(&format!(
                "buildpack {failing}@{version} failed during build (exit 51)"
            )),
            "-v {verbose}: the failing buildpack {failing}@{version} is not named:\n{r}"
        );
        assert!(
            !own.contains(BUSYBOX_BUILDPACKS[0].0),
            "-v {verbose}: a buildpack that did not fail is blamed:\n{r}"
        );
        let running = format!("[creator] Running build for buildpack {failing}@{version}");
        assert_eq!(
            r.all().contains(&running),
            verbose,
            "-v {verbose}: the lifecycle's debug line {running:?}:\n{r}"
        );
        assert!(!out.exists(), "a failed build wrote {}", out.display());
    }
}

/// A group of two buildpacks passes detection and its second fails: without
/// `-v` locald can only name the group; with `-v` the lifecycle's `Running
/// build` line names the one.
#[test]
fn build_failure_in_a_group_of_two() {
    let w = World::new();
    let Some(mut spec) = busybox_spec(RUN) else {
        return;
    };
    spec.order = vec![BUSYBOX_BUILDPACKS
        .iter()
        .map(|(id, v)| ((*id).to_owned(), (*v).to_owned(), false))
        .collect()];
    let src = layout_source(&w, &spec);
    let (first, v1) = BUSYBOX_BUILDPACKS[0];
    let (second, v2) = BUSYBOX_BUILDPACKS[1];
    let app = w.app("app", &[(FAIL_BUILD, second)]);
    let runner = any_runner();

    let r = w.build(&app, runner, &w.path("out-quiet"), &["--source", &src]);
    assert_eq!(r.code, standin::EXIT_FAILED_BUILD, "{r}");
    assert!(
        r.own_stderr().contains(&format!(
            "a buildpack of the group {first}@{v1}, {second}@{v2} failed during build (exit 51)"
        )),
        "the group is not named:\n{r}"
    );
    assert!(
        r.all().contains(&format!("stand-in build: {first}@{v1}")),
        "the first buildpack of the group did not build:\n{r}"
    );

    let r = w.build(
        &app,
        runner,
        &w.path("out-verbose"),
        &["--source", &src, "-v"],
    );
    assert_eq!(r.code, standin::EXIT_FAILED_BUILD, "{r}");
    let own = r.own_stderr();
    assert!(
        own.contains(&format!(
            "buildpack {second}@{v2} failed during build (exit 51)"
        )),
        "-v: the buildpack of the last Running line is not named:\n{r}"
    );
    assert!(
        !own.contains("a buildpack of the group"),
        "-v: the group is named, not the buildpack:\n{r}"
    );
}

/// Processes (other than this one) whose command line holds `marker` or whose
/// environment holds `env_marker`: what a build of this world left running.
fn leftovers(marker: &str, env_marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) || String::from_utf8_lossy(&environ).contains(env_marker) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// A spawned locald that is stopped when dropped, so that a test that panics
/// leaves nothing running: SIGINT first (locald passes it on and stops its
/// lifecycle), SIGKILL after 5 s, then reaped.
struct KillOnDrop(Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            rustix::process::kill_process(
                rustix::process::Pid::from_child(&self.0),
                rustix::process::Signal::INT,
            )
            .ok();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.0.kill().ok();
        }
        self.0.wait().ok();
    }
}

/// Spawns locald with both streams read line by line into a channel.
fn spawn_lines(
    mut c: Command,
) -> (
    KillOnDrop,
    mpsc::Receiver<String>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let mut child = KillOnDrop(
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for s in streams {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
    }
    (child, rx, readers)
}

fn interrupt(runner: Runner) {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[(WAIT_FOR_SIGNAL, "")]) else {
        return;
    };
    let out = w.path("out");
    let args = w.build_args(&app, runner, &out, &["--source", &src]);
    let (mut child, rx, readers) =
        spawn_lines(w.command(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = line.contains("[probe] waiting");
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(status) = child.try_wait().unwrap() {
            seen.extend(rx.try_iter());
            panic!(
                "locald ended ({status}) before the lifecycle waited:\n{}",
                seen.join("\n")
            );
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("the lifecycle never said it waits:\n{}", seen.join("\n"));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(8) {
            child.kill().ok();
            child.wait().ok();
            seen.extend(rx.try_iter());
            panic!(
                "locald still running 8 s after SIGINT:\n{}",
                seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let took = sent.elapsed();
    for r in readers {
        r.join().unwrap();
    }
    seen.extend(rx.try_iter());
    let text = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{status}:\n{text}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to stop:\n{text}"
    );
    // The stand-in passes the signal on to its buildpack, which says so; a real
    // lifecycle dies of it, and the buildpack's words die with its pipe.
    if !require::real_lifecycle() {
        assert!(
            text.contains("[probe] got signal"),
            "the lifecycle was not sent the signal:\n{text}"
        );
    }
    let marker = w.image();
    let marker = marker.split(':').next().unwrap();
    let root = w.root.to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = leftovers(marker, &root);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = leftovers(marker, &root);
    }
    assert!(left.is_empty(), "processes left behind: {left:#?}\n{text}");
    assert!(
        !out.exists(),
        "an interrupted build wrote {}",
        out.display()
    );
    // The cache is intact.
    let r = w.run(&["builder", "verify", "--json"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.json()["problems"], serde_json::json!([]), "{r}");
}

#[test]
fn sigint_stops_a_native_build() {
    interrupt(Runner::Native);
}

#[test]
fn sigint_stops_a_sandboxed_build() {
    if require::ok(sandbox_possible(None), "the container runner").is_none() {
        return;
    }
    interrupt(Runner::Container);
}

#[test]
fn second_build_sees_the_cache() {
    for runner in all_runners() {
        second_build_sees_the_cache_with(runner);
    }
}

fn second_build_sees_the_cache_with(runner: Runner) {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "v1\n")]) else {
        return;
    };
    let build = |out: &str, extra: &[&str]| {
        let out = w.path(out);
        let mut args = vec!["--source", src.as_str()];
        args.extend_from_slice(extra);
        let r = w.build(&app, runner, &out, &args);
        check_build(&w, &r, runner, &out);
        r
    };
    let r = build("out1", &[]);
    assert_eq!(r.probe("cache builds").as_deref(), Some("1"), "{r}");
    std::fs::write(app.join("hello.txt"), "v2\n").unwrap();
    let r = build("out2", &[]);
    assert_eq!(
        r.probe("cache builds").as_deref(),
        Some("2"),
        "the second build did not see the first one's cache:\n{r}"
    );
    // The previous image is read back: what did not change is reused, the app
    // (which did) is not.
    let all = r.all();
    for want in [
        format!("Reusing layer '{}:web'", BUSYBOX_BUILDPACKS[0].0),
        "Reusing layer 'buildpacksio/lifecycle:launcher'".to_owned(),
        "Adding 1/1 app layer(s)".to_owned(),
    ] {
        assert!(all.contains(&want), "{want:?} missing:\n{r}");
    }
    check_layout_output(&w, &w.path("out2"), None, &[("hello.txt", "v2\n")]);
    check_sparse_layout(&r.json());
    // The whole images removed by hand: the lifecycle must not reuse layers of a
    // previous image nobody has any more; the build still makes a whole image.
    let project = PathBuf::from(r.json()["project"].as_str().unwrap());
    std::fs::remove_dir_all(project.join("images")).unwrap();
    std::fs::write(app.join("hello.txt"), "v3\n").unwrap();
    let r = build("out2b", &[]);
    assert!(
        !r.all().contains("Reusing layer"),
        "reused a layer nobody has:\n{r}"
    );
    check_layout_output(&w, &w.path("out2b"), None, &[("hello.txt", "v3\n")]);
    check_sparse_layout(&r.json());
    let r = build("out3", &["--clear-cache"]);
    assert_eq!(
        r.probe("cache builds").as_deref(),
        Some("1"),
        "--clear-cache kept the cache:\n{r}"
    );
}

/// Files named `name` anywhere under `dir`.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    locald_tests::tree::snapshot(dir)
        .into_keys()
        .filter(|k| k.rsplit('/').next() == Some(name))
        .map(|k| dir.join(k))
        .collect()
}

/// The largest layer blob of the run image a build (`--json` document `v`)
/// keeps whole in the app's `images/`.
fn largest_kept_run_layer(v: &Value) -> PathBuf {
    let run = ImageReference::parse(v["run_image"].as_str().unwrap()).unwrap();
    let blobs = Path::new(v["project"].as_str().unwrap())
        .join("images")
        .join(locald_build::placement::layout_path_for(&run))
        .join("blobs/sha256");
    std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// A buildpack run natively (as the tree's owner) writes a file deep in its own
/// directory of the cached builder tree, deeper than the tree's seal sees: the
/// walk after the build notices it, says so, and the next build uses a freshly
/// extracted tree.
#[test]
fn a_native_build_that_changes_the_builder_tree() {
    let mut w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n"), ("write-buildpack-dir", "")])
    else {
        return;
    };
    if peers::is_root() {
        let Some(user) = require::ok(standin::test_user(), "the unprivileged test user") else {
            return;
        };
        w.hand_to(user);
    }
    let trees = w.path("data").join("locald/trees");
    let out = w.path("out1");
    let r = w.build(&app, Runner::Native, &out, &["--source", &src]);
    check_build(&w, &r, Runner::Native, &out);
    assert_eq!(
        r.probe("buildpack-dir-write").as_deref(),
        Some("allowed"),
        "{r}"
    );
    assert_eq!(
        find_named(&trees, "written").len(),
        1,
        "the write did not land in the tree"
    );
    assert!(
        r.stderr.contains("changed the cached builder tree"),
        "no warning:\n{r}"
    );

    std::fs::remove_file(app.join("write-buildpack-dir")).unwrap();
    let out = w.path("out2");
    let r = w.build(&app, Runner::Native, &out, &["--source", &src]);
    check_build(&w, &r, Runner::Native, &out);
    assert!(!r.stderr.contains("changed the cached builder tree"), "{r}");
    assert_eq!(
        find_named(&trees, "written"),
        Vec::<PathBuf>::new(),
        "the second build used the changed tree"
    );
}

/// A layer of the run image the app's state keeps whole, changed on disk (same
/// size): the build refuses to write an image with it (the output is verified),
/// says what happened, removes the damaged copy, and the next build places the
/// run image again and succeeds.
#[test]
fn a_damaged_kept_run_image_is_placed_again() {
    let w = World::new();
    let files = [("hello.txt", "hi\n")];
    let Some((_, src, app)) = setup(&w, &files) else {
        return;
    };
    let runner = any_runner();
    let r = w.build(&app, runner, &w.path("out1"), &["--source", &src]);
    let v = check_build(&w, &r, runner, &w.path("out1"));
    let biggest = largest_kept_run_layer(&v);
    let mut bytes = std::fs::read(&biggest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    // A new file in its place: the placed blob may share its inode with the
    // source layout's (a hard link), which must stay intact.
    let tmp = biggest.with_extension("tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &biggest).unwrap();

    let out2 = w.path("out2");
    let r = w.build(&app, runner, &out2, &["--source", &src]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("does not match its digest"), "{r}");
    assert!(r.stderr.contains("was damaged and is removed"), "{r}");
    assert!(r.stderr.contains("hint: build again"), "{r}");
    assert!(
        !out2.join("index.json").exists(),
        "an image was written with a damaged layer"
    );
    assert!(!biggest.exists(), "the damaged copy is still there");

    let r = w.build(&app, runner, &out2, &["--source", &src]);
    let v = check_build(&w, &r, runner, &out2);
    check_layout_output(&w, &out2, v["digest"].as_str(), &files);

    // The same with a docker archive output, which checks blobs as it writes
    // its tar: refused, nothing written, the damaged copy removed.
    let mut bytes = std::fs::read(&biggest).unwrap();
    bytes[middle] ^= 0x01;
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &biggest).unwrap();
    let archive = w.path("out.tar");
    let mut args = w.build_args(&app, runner, &w.path("unused"), &["--source", &src]);
    let at = args.iter().position(|a| a == "--output").unwrap();
    args[at + 1] = format!("docker-archive:{}", archive.display());
    let r = w.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("was damaged and is removed"), "{r}");
    assert!(
        !archive.exists(),
        "an archive was written with a damaged layer"
    );
    assert!(!biggest.exists(), "the damaged copy is still there");
    let r = w.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{r}");
    assert!(archive.is_file());
}

/// The lifecycle's export does not hold together (a blob of the wrong size, a
/// fault of the stand-in's): the build fails naming it, writes nothing, and drops
/// that export, so the next build starts without it as a previous image and
/// succeeds.
#[test]
fn a_broken_export_is_not_kept() {
    if require::standin_only("it injects a fault into the stand-in's export") {
        return;
    }
    let w = World::new();
    let files = [("hello.txt", "hi\n")];
    let Some((_, src, app)) = setup(&w, &files) else {
        return;
    };
    let runner = any_runner();
    std::fs::write(app.join("corrupt-export"), "").unwrap();
    let out = w.path("out");
    let r = w.build(&app, runner, &out, &["--source", &src]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains("could not keep the image the lifecycle exported"),
        "{r}"
    );
    assert!(
        r.stderr
            .contains("the next build starts without a previous image"),
        "{r}"
    );
    assert!(!out.join("index.json").exists(), "an image was written");
    let layouts: Vec<PathBuf> = find_named(&w.path("data").join("locald/projects"), "index.json")
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains("/layout/") && p.to_string_lossy().contains("/app-")
        })
        .collect();
    assert_eq!(layouts, Vec::<PathBuf>::new(), "the broken export was kept");

    std::fs::remove_file(app.join("corrupt-export")).unwrap();
    let r = w.build(&app, runner, &out, &["--source", &src]);
    let v = check_build(&w, &r, runner, &out);
    check_layout_output(&w, &out, v["digest"].as_str(), &files);
}

#[test]
fn env_reaches_the_platform_dir() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let runner = any_runner();
    let out = w.path("out");
    let args = w.build_args(
        &app,
        runner,
        &out,
        &[
            "--source",
            &src,
            "--env",
            "FOO=bar",
            "--env",
            "SPACED=a b=c",
            "--env",
            "FROM_HOST",
        ],
    );
    let mut c = w.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    c.env("FROM_HOST", "host value");
    let r = output(&mut c);
    check_build(&w, &r, runner, &out);
    assert_eq!(r.probe("env FOO").as_deref(), Some("bar"), "{r}");
    assert_eq!(r.probe("env SPACED").as_deref(), Some("a b=c"), "{r}");
    assert_eq!(
        r.probe("env FROM_HOST").as_deref(),
        Some("host value"),
        "{r}"
    );
}

#[test]
fn old_platform_api_is_refused() {
    if require::standin_only("the builder must list Platform APIs older than its lifecycle's") {
        return;
    }
    let w = World::new();
    let Some(mut spec) = busybox_spec(RUN) else {
        return;
    };
    spec.platform_apis = vec!["0.10".into(), "0.11".into()];
    let src = layout_source(&w, &spec);
    let app = w.app("app", &[("hello.txt", "hi\n")]);
    let out = w.path("out");
    let r = w.build(&app, Runner::Native, &out, &["--source", &src]);
    assert_eq!(r.code, 1, "{r}");
    let own = r.own_stderr();
    assert!(own.contains("error: "), "{r}");
    assert!(
        own.contains("0.12"),
        "the refusal does not say 0.12 is needed:\n{r}"
    );
    assert!(
        own.contains("0.11"),
        "the refusal does not say what the builder has:\n{r}"
    );
    assert!(!r.all().contains("[creator]"), "the lifecycle ran:\n{r}");
    assert!(!out.exists());
}

/// A running build holds its builder's tree: `builder prune --all` (and so `rm`)
/// removes the references but keeps the tree until the build ends; the next
/// prune removes it.
#[test]
fn prune_keeps_the_tree_of_a_running_build() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[(WAIT_FOR_SIGNAL, "")]) else {
        return;
    };
    let trees = || -> Vec<String> {
        std::fs::read_dir(w.path("data/locald/trees"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = w.build_args(&app, Runner::Native, &w.path("out"), &["--source", &src]);
    let (mut child, rx, readers) =
        spawn_lines(w.command(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seen.iter().any(|l: &String| l.contains("[probe] waiting")) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            child.kill().ok();
            panic!("the lifecycle never said it waits:\n{}", seen.join("\n"));
        }
    }
    let before = trees();
    assert_eq!(before.len(), 1, "{before:?}");
    let r = w.run(&["builder", "prune", "--all"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("kept 1 unreferenced trees"), "{r}");
    assert_eq!(trees(), before, "prune removed the tree of a running build");

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(status.code(), Some(130));
    let r = w.run(&["builder", "prune", "--all"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        trees().is_empty(),
        "the tree outlived the build: {:?}",
        trees()
    );
}

/// Bad input: a sentence naming the problem, exit 1 (2 for usage errors),
/// nothing built and no build state made.
#[test]
fn bad_input_is_refused_with_a_sentence() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let app_s = app.to_str().unwrap().to_owned();
    let missing = w.path("no-such-app");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                missing.to_str().unwrap().into(),
                "--source".into(),
                src.clone(),
            ],
            "does not exist or is not a directory",
        ),
        (
            vec![
                app_s.clone(),
                "--source".into(),
                src.clone(),
                "--output".into(),
                "ftp:foo".into(),
            ],
            "is not a destination locald can write",
        ),
        (
            vec![
                app_s.clone(),
                "--source".into(),
                src.clone(),
                "--output".into(),
                "docker-archive:-".into(),
            ],
            "docker-archive:- is not supported",
        ),
        (
            vec![
                app_s.clone(),
                "--source".into(),
                src.clone(),
                "--image".into(),
                "Bad Name!".into(),
            ],
            "is not a valid image name",
        ),
        (
            vec![
                app_s.clone(),
                "--source".into(),
                src.clone(),
                "--env".into(),
                "A/B=1".into(),
            ],
            "A/B",
        ),
        (
            vec![
                app_s.clone(),
                "--source".into(),
                src.clone(),
                "--env".into(),
                "LOCALD_SURELY_UNSET_VAR".into(),
            ],
            "LOCALD_SURELY_UNSET_VAR",
        ),
        (
            vec![app_s.clone(), "--source".into(), format!("{src}-missing")],
            "could not",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["build".to_owned(), "--runner".into(), "native".into()];
        full.extend(args);
        let r = w.run(&full.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r.code, 1, "{full:?}: {r}");
        assert!(r.stderr.contains(want), "{full:?}: wanted {want:?} in\n{r}");
        assert!(!r.stderr.contains("panicked"), "{r}");
    }
    assert!(
        !w.path("data/locald/projects").exists()
            || std::fs::read_dir(w.path("data/locald/projects"))
                .unwrap()
                .count()
                == 0,
        "bad input left build state behind"
    );
}

/// Where user namespaces are disabled (here: inside a user namespace whose
/// `user.max_user_namespaces` is 0; the host is not touched), `--runner
/// container` is refused naming the setting, and the default runner falls back
/// to native with a warning saying why.
#[test]
fn disabled_user_namespaces_are_named() {
    if require::ok(sandbox_possible(None), "the container runner").is_none() {
        return;
    }
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let in_disabled_userns = |args: &[String]| -> Out {
        // The same program and environment as any test run, behind `unshare`.
        let locald = w.command(&[]);
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["--user", "--map-root-user", "--", "sh", "-c"])
            .arg("echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"")
            .arg("sh")
            .arg(locald.get_program())
            .args(args)
            .current_dir(&w.root)
            .stdin(Stdio::null());
        for (k, v) in locald.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        output(&mut wrapped)
    };
    let mut args = w.build_args(&app, Runner::Container, &w.path("out"), &["--source", &src]);
    let r = in_disabled_userns(&args);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("user.max_user_namespaces"), "{r}");
    assert!(r.stderr.contains("--runner native"), "{r}");
    assert!(!w.path("out").exists());

    // No --runner: the sandbox is not possible, so native, said once.
    let i = args.iter().position(|a| a == "--runner").unwrap();
    args.drain(i..i + 2);
    let r = in_disabled_userns(&args);
    assert!(
        r.stderr.contains(
            "running the lifecycle natively on the host, because the sandbox cannot start here"
        ) && r.stderr.contains("user.max_user_namespaces"),
        "{r}"
    );
}

/// Run natively by root, the lifecycle drops to the build user: when the cache
/// sits where that user cannot go (root's 0700 home, here a 0700 world), the
/// build stops before running anything, naming the closed directory.
#[test]
fn native_as_root_needs_dirs_the_build_user_can_reach() {
    use std::os::unix::fs::PermissionsExt;
    if !require::root("a native build that switches users") {
        return;
    }
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    std::fs::set_permissions(&w.root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = w.path("out");
    let r = w.build(&app, Runner::Native, &out, &["--source", &src]);
    std::fs::set_permissions(&w.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("the build user (uid 1001) cannot reach")
            && r.stderr
                .contains(&format!("{} is closed to it", w.root.display())),
        "{r}"
    );
    assert!(r.stderr.contains("hint:"), "{r}");
    assert!(
        !r.all().contains("===> DETECTING"),
        "the lifecycle ran:\n{r}"
    );
    assert!(!out.exists());
}

/// `--publish`: the build pushes to the registry `--image` names, with the
/// digest the build reports; a registry that is down fails the push, keeps the
/// built image and prints a `locald image copy` line that works as printed.
/// Nothing is pushed when the build fails.
#[test]
fn publishes_to_a_registry() {
    if !require::tool("skopeo") || !require::tool("docker-registry") {
        return;
    }
    let w = World::new();
    let files = [("hello.txt", "published\n")];
    let Some((_, src, app)) = setup(&w, &files) else {
        return;
    };
    let reg = Registry::start(Auth::htpasswd("ci", "secret"));
    let image = format!("{}/team/app-{}:1", reg.addr(), w.id);
    let runner = any_runner();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "build",
            app.to_str().unwrap(),
            "--runner",
            runner.name(),
            "--builder",
            BUILDER,
            "--source",
            &src,
            "--image",
            &image,
            "--json",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let run = |args: Vec<String>| w.run(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // A failed build pushes nothing.
    std::fs::write(app.join(FAIL_DETECT), "").unwrap();
    let r = run(base(&["--publish", "--creds", "ci:secret"]));
    assert_ne!(r.code, 0, "{r}");
    std::fs::remove_file(app.join(FAIL_DETECT)).unwrap();
    assert!(
        reg.inspect_raw(&format!("team/app-{}:1", w.id)).is_err(),
        "a failed build pushed"
    );

    let latest = format!("{}/team/app-{}:latest", reg.addr(), w.id);
    let r = run(base(&[
        "--publish",
        "--creds",
        "ci:secret",
        "--tag",
        &latest,
    ]));
    assert_eq!(r.code, 0, "{r}");
    let v = r.json();
    let digest = v["digest"].as_str().unwrap().to_owned();
    assert_eq!(v["output"], format!("registry:{image}"), "{v:#}");
    assert_eq!(v["published"], format!("{image}@{digest}"), "{v:#}");
    for tag in ["1", "latest"] {
        let raw = reg
            .inspect_raw(&format!("team/app-{}:{tag}", w.id))
            .unwrap();
        assert_eq!(
            locald_tests::fixture::sha256_digest(raw.as_bytes()),
            digest,
            "{tag}"
        );
    }

    // The registry gone: the push fails, the image stays, the hint works.
    reg.kill();
    let r = run(base(&["--publish", "--creds", "ci:secret"]));
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains(&format!("could not write the image to registry:{image}")),
        "{r}"
    );
    let hint = r
        .stderr
        .lines()
        .find(|l| l.contains("locald image copy"))
        .unwrap_or_else(|| panic!("no retry line:\n{r}"));
    let retry = hint[hint.find('`').unwrap() + 1..hint.rfind('`').unwrap()].to_owned();
    reg.restart();
    let mut args: Vec<String> = retry
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect();
    args.extend(["--creds".to_owned(), "ci:secret".to_owned()]);
    let r = w.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{retry}: {r}");
    let raw = reg.inspect_raw(&format!("team/app-{}:1", w.id)).unwrap();
    assert_eq!(
        locald_tests::fixture::sha256_digest(raw.as_bytes()),
        r.stdout.trim()
    );
}

/// `--publish` needs a registry in `--image`, and says so.
#[test]
fn publish_without_a_registry_is_refused() {
    let w = World::new();
    let app = w.app("app", &[("hello.txt", "x\n")]);
    for image in [None, Some("app:1"), Some("team/app:1")] {
        let mut args = vec!["build", app.to_str().unwrap(), "--publish"];
        if let Some(i) = image {
            args.extend(["--image", i]);
        }
        let r = w.run(&args);
        assert_eq!(r.code, 1, "{image:?}: {r}");
        assert!(
            r.stderr
                .contains("--publish pushes to the registry --image names"),
            "{r}"
        );
        assert!(
            r.stderr.contains("hint: name the image with its registry"),
            "{r}"
        );
    }
    let r = w.run(&[
        "build",
        app.to_str().unwrap(),
        "--publish",
        "--output",
        "oci-layout:x",
    ]);
    assert_eq!(r.code, 2, "{r}");
}

// ---------------------------------------------------------------------------
// The flags pack users script with.

/// The image config of the only image of the OCI layout `out`, with its
/// index.json.
fn layout_config(out: &Path) -> (Value, Value) {
    let index = read_json(&out.join("index.json"));
    let blob = |d: &str| {
        out.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest = read_json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = read_json(&blob(manifest["config"]["digest"].as_str().unwrap()));
    (config, index)
}

/// `[probe] env NAME=VALUE` lines the first buildpack printed.
fn probed_env(r: &Out) -> Vec<String> {
    locald_tests::standin::probes(&r.all())
        .into_iter()
        .filter_map(|p| p.strip_prefix("env ").map(str::to_owned))
        .collect()
}

/// The descriptor's build env, then the env files in order, then --env: the
/// later wins; `KEY` alone takes this environment's value; comments and blank
/// lines are skipped; a bad line is named with its number.
#[test]
fn env_file_descriptor_and_env() {
    let w = World::new();
    let descriptor = "[_]\nschema-version = \"0.2\"\n\n[[io.buildpacks.build.env]]\nname = \"FROM_DESC\"\nvalue = \"desc\"\n\n[[io.buildpacks.build.env]]\nname = \"OVER\"\nvalue = \"desc\"\n";
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n"), ("project.toml", descriptor)])
    else {
        return;
    };
    let env1 = w.path("one.env");
    std::fs::write(
        &env1,
        "# CI settings\n\nOVER=file1\nFROM_FILE=a=b c\nPASSED\n",
    )
    .unwrap();
    let env2 = w.path("two.env");
    std::fs::write(&env2, "OVER=file2\nFLAG=file\n").unwrap();
    let mut args = w.build_args(&app, any_runner(), &w.path("out"), &["--source", &src]);
    args.extend(
        [
            "--env-file",
            env1.to_str().unwrap(),
            "--env-file",
            env2.to_str().unwrap(),
            "--env",
            "FLAG=flag",
        ]
        .map(str::to_owned),
    );
    let r = output(
        w.command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .env("PASSED", "from the environment"),
    );
    assert_eq!(r.code, 0, "{r}");
    let mut env = probed_env(&r);
    env.sort();
    assert_eq!(
        env,
        [
            "FLAG=flag",
            "FROM_DESC=desc",
            "FROM_FILE=a=b c",
            "OVER=file2",
            "PASSED=from the environment",
        ],
        "{r}"
    );
    // A bad line, named.
    std::fs::write(&env2, "OK=1\n\nnot a line\n").unwrap();
    let r = w.run(
        &w.build_args(
            &app,
            any_runner(),
            &w.path("out2"),
            &["--source", &src, "--env-file", env2.to_str().unwrap()],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("two.env:3:"), "{r}");
    assert!(r.stderr.contains("hint: "), "{r}");
    // --descriptor names another file; a missing one is refused.
    let other = w.path("other.toml");
    std::fs::write(
        &other,
        "[build]\nexclude = [\"secret.txt\"]\n\n[[build.env]]\nname = \"FROM_OTHER\"\nvalue = \"v0.1\"\n",
    )
    .unwrap();
    std::fs::write(app.join("secret.txt"), "not for the image").unwrap();
    let r = w.build(
        &app,
        any_runner(),
        &w.path("out3"),
        &["--source", &src, "--descriptor", other.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(probed_env(&r), ["FROM_OTHER=v0.1"], "{r}");
    let paths = app_layer_paths(&w.path("out3")).unwrap();
    assert!(paths.iter().any(|p| p.ends_with("hello.txt")), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.ends_with("secret.txt")),
        "{paths:?}"
    );
    let r = w.build(
        &app,
        any_runner(),
        &w.path("out4"),
        &["--source", &src, "--descriptor", "/nonexistent.toml"],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("--descriptor /nonexistent.toml"), "{r}");
}

/// --default-process, --creation-time and --tag, seen on the output image; an
/// unknown process type fails the export with the lifecycle's sentence.
#[test]
fn default_process_creation_time_and_tags() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let out = w.path("plain");
    let r = w.build(&app, any_runner(), &out, &["--source", &src]);
    assert_eq!(r.code, 0, "{r}");
    let (config, _) = layout_config(&out);
    assert_eq!(
        config["created"], "1980-01-01T00:00:01Z",
        "reproducible by default"
    );
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/cnb/process/web"])
    );

    let out = w.path("flags");
    let tag = format!("docker.io/locald-test/other-{}:2", w.id);
    let r = w.build(
        &app,
        any_runner(),
        &out,
        &[
            "--source",
            &src,
            "--default-process",
            "worker",
            "--creation-time",
            "1700000000",
            "--tag",
            &tag,
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    let (config, index) = layout_config(&out);
    assert_eq!(config["created"], "2023-11-14T22:13:20Z", "{config}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/cnb/process/worker"])
    );
    let mut names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"][REF_NAME].as_str().unwrap())
        .collect();
    names.sort();
    let image = format!("docker.io/{}", w.image());
    let mut want = vec![image.as_str(), tag.as_str()];
    want.sort();
    assert_eq!(names, want, "{index}");

    let r = w.build(
        &app,
        any_runner(),
        &w.path("now"),
        &["--source", &src, "--creation-time", "now"],
    );
    assert_eq!(r.code, 0, "{r}");
    let (config, _) = layout_config(&w.path("now"));
    let year: i32 = config["created"].as_str().unwrap()[..4].parse().unwrap();
    assert!(year >= 2026, "{config}");
    for bad in ["yesterday", "-5"] {
        let r = w.build(
            &app,
            any_runner(),
            &w.path("bad"),
            &["--source", &src, &format!("--creation-time={bad}")],
        );
        assert_eq!(r.code, 1, "{r}");
        assert!(r.stderr.contains("--creation-time"), "{r}");
    }

    let r = w.build(
        &app,
        any_runner(),
        &w.path("nope"),
        &["--source", &src, "--default-process", "nope"],
    );
    assert_eq!(r.code, 62, "{r}");
    assert!(r.stderr.contains("tried to set nope to default"), "{r}");
}

/// --sbom-output-dir gets the SBOM files the lifecycle collected.
#[test]
fn sbom_output_dir() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let sbom = w.path("sbom");
    let r = w.build(
        &app,
        any_runner(),
        &w.path("out"),
        &[
            "--source",
            &src,
            "--sbom-output-dir",
            sbom.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    let bp = BUSYBOX_BUILDPACKS[0].0.replace('/', "_");
    let file = sbom.join("launch").join(&bp).join("web/sbom.cdx.json");
    let doc = read_json(&file);
    assert_eq!(doc["bomFormat"], "CycloneDX", "{doc}");
}

/// --cache-dir holds the buildpacks' cache (kept between builds, emptied by
/// --clear-cache); the app's own state is not used for it.
#[test]
fn cache_dir_is_used_and_cleared() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let cache = w.path("ci-cache");
    let c = cache.to_str().unwrap();
    for (round, extra, want) in [
        (1, None, "1"),
        (2, None, "2"),
        (3, Some("--clear-cache"), "1"),
    ] {
        let mut args = vec!["--source", src.as_str(), "--cache-dir", c];
        args.extend(extra);
        let r = w.build(&app, any_runner(), &w.path(&format!("out{round}")), &args);
        assert_eq!(r.code, 0, "{r}");
        assert_eq!(
            r.probe("cache builds").as_deref(),
            Some(want),
            "round {round}: {r}"
        );
        assert!(
            std::fs::read_dir(&cache).unwrap().count() > 0,
            "nothing in {c}"
        );
    }
    // Without it, the app's own cache starts from nothing.
    let r = w.build(&app, any_runner(), &w.path("out4"), &["--source", &src]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.probe("cache builds").as_deref(), Some("1"), "{r}");
}

/// --network none: the buildpacks see loopback only (container runner); the
/// native runner refuses it.
#[test]
fn network_none_is_loopback_only() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n"), ("probe-network", "")]) else {
        return;
    };
    let r = w.build(
        &app,
        Runner::Native,
        &w.path("n"),
        &["--source", &src, "--network", "none"],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("native runner") && r.stderr.contains("hint: use --runner container"),
        "{r}"
    );
    if require::ok(sandbox_possible(None), "the container runner").is_none() {
        return;
    }
    let r = w.build(
        &app,
        Runner::Container,
        &w.path("c"),
        &["--source", &src, "--network", "none"],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        r.probe("netdev").as_deref().map(str::trim),
        Some("lo"),
        "{r}"
    );
    let host: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_owned()))
        .collect();
    let r = w.build(&app, Runner::Container, &w.path("h"), &["--source", &src]);
    assert_eq!(r.code, 0, "{r}");
    let seen = r.probe("netdev").unwrap_or_default();
    for iface in &host {
        assert!(
            seen.split_whitespace().any(|s| s == iface),
            "{iface} missing from {seen:?}"
        );
    }
}

/// --volume: read-only by default, writable with :rw (container runner);
/// targets over what the lifecycle needs are refused; the native runner
/// refuses volumes.
#[test]
fn volumes_for_the_buildpacks() {
    let w = World::new();
    let data = w.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello"), "from the host").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n"), ("probe-volume", "/data")]) else {
        return;
    };
    let d = data.to_str().unwrap();
    for (target, want) in [
        ("/cnb", "over /cnb"),
        ("/workspace/x", "over /workspace"),
        ("/proc", "over /proc"),
        ("/", "root filesystem"),
        ("relative", "absolute path"),
    ] {
        let r = w.build(
            &app,
            any_runner(),
            &w.path("bad"),
            &["--source", &src, "--volume", &format!("{d}:{target}")],
        );
        assert_eq!(r.code, 1, "{target}: {r}");
        assert!(r.stderr.contains(want), "{target}: {r}");
    }
    let r = w.build(
        &app,
        Runner::Native,
        &w.path("n"),
        &["--source", &src, "--volume", &format!("{d}:/data")],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("native runner"), "{r}");
    if require::ok(sandbox_possible(None), "the container runner").is_none() {
        return;
    }
    let r = w.build(
        &app,
        Runner::Container,
        &w.path("ro"),
        &["--source", &src, "--volume", &format!("{d}:/data")],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        r.probe("volume-read").as_deref(),
        Some("from the host"),
        "{r}"
    );
    assert_eq!(r.probe("volume-write").as_deref(), Some("denied"), "{r}");
    assert!(!data.join("written").exists());
    let r = w.build(
        &app,
        Runner::Container,
        &w.path("rw"),
        &["--source", &src, "--volume", &format!("{d}:/data:rw")],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.probe("volume-write").as_deref(), Some("allowed"), "{r}");
    assert!(
        data.join("written").exists(),
        "the write did not reach the host"
    );
}

/// --buildpack: exactly these, in this order; one the builder has by id, a
/// local directory; unknown ids list what the builder has; a directory
/// without buildpack.toml is refused.
#[test]
fn buildpack_flag_sets_the_group() {
    let w = World::new();
    let Some((_, src, app)) = setup(&w, &[("hello.txt", "hi\n")]) else {
        return;
    };
    let (first, second) = (BUSYBOX_BUILDPACKS[0], BUSYBOX_BUILDPACKS[1]);
    let local = w.path("my-buildpack");
    std::fs::create_dir_all(local.join("bin")).unwrap();
    std::fs::write(
        local.join("buildpack.toml"),
        "api = \"0.10\"\n\n[buildpack]\n  id = \"me/local\"\n  version = \"0.0.1\"\n\n[[targets]]\n  os = \"linux\"\n",
    )
    .unwrap();
    for (name, body) in [
        ("detect", "#!/bin/sh\nexit 0\n"),
        (
            "build",
            "#!/bin/sh\necho \"local buildpack ran in $(pwd)\"\n",
        ),
    ] {
        let p = local.join("bin").join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&w.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for runner in all_runners() {
        let r = w.build(
            &app,
            runner,
            &w.path(&format!("two-{runner:?}")),
            &[
                "--source",
                &src,
                "--buildpack",
                second.0,
                "--buildpack",
                local.to_str().unwrap(),
            ],
        );
        assert_eq!(r.code, 0, "{r}");
        let all = r.all();
        let s2 = all
            .find(&format!("stand-in build: {}@{}", second.0, second.1))
            .unwrap_or_else(|| panic!("{r}"));
        let sl = all
            .find("local buildpack ran")
            .unwrap_or_else(|| panic!("{r}"));
        assert!(s2 < sl, "order: {r}");
        assert!(
            !all.contains(&format!("stand-in build: {}@", first.0)),
            "{r}"
        );
    }
    let r = w.build(
        &app,
        any_runner(),
        &w.path("x"),
        &["--source", &src, "--buildpack", "nobody/here@9"],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("no such buildpack")
            && r.stderr.contains(&format!("{}@{}", first.0, first.1)),
        "{r}"
    );
    let empty = w.path("empty-bp");
    std::fs::create_dir_all(&empty).unwrap();
    let r = w.build(
        &app,
        any_runner(),
        &w.path("y"),
        &["--source", &src, "--buildpack", empty.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("buildpack.toml"), "{r}");
}

/// `build --help` groups its options and shows an example of each new flag.
#[test]
fn build_help_groups_options() {
    let w = World::new();
    let r = w.run(&["build", "--help"]);
    assert_eq!(r.code, 0, "{r}");
    for want in [
        "Input:",
        "Builder:",
        "Output:",
        "Runtime:",
        "--env-file ci.env",
        "--network none",
        "--publish",
        "--sbom-output-dir ./sbom",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?}:\n{}", r.stdout);
    }
}

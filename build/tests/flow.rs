//! The build flow through the library API, without the `locald` binary: a
//! busybox builder from an OCI layout (the stand-in creator, or the real
//! lifecycle with `LOCALD_TEST_LIFECYCLE`), the native runner, an OCI layout
//! output. The image that comes out is read back with our own source and its
//! app layer checked; a failed detection comes back as a refusal with the
//! lifecycle's exit code.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use locald_build::{BuildError, BuildEvents, BuildOptions, ImageInput, Output};
use locald_cache::{Cache, PullPolicy};
use locald_core::cancel::Cancel;
use locald_core::destination::ImageDestination;
use locald_core::source::{self, ImageSource};
use locald_core::{Digest, ImageReference, Platform};
use locald_extract::{extract_image, ExtractOptions};
use locald_source_oci_layout::{Existing, OciLayout, OciLayoutDestination};
use locald_tests::builder::{BuilderSpec, BUSYBOX_UID};
use locald_tests::require;
use locald_tests::standin::{self, FAIL_DETECT};

const BUILDER: &str = "locald-test/builder:1";
const RUN: &str = "locald-test/run:1";

/// What the flow told the user, in order.
#[derive(Default)]
struct Recorded(Mutex<Vec<String>>);

impl BuildEvents for Recorded {
    fn builder(&self, name: &str, digest: &Digest, _: Option<&str>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("builder {name} {digest}"));
    }
    fn run_image(&self, name: &str, _: &Digest, reused: bool) {
        self.0
            .lock()
            .unwrap()
            .push(format!("run-image {name} reused={reused}"));
    }
    fn building(&self, image: &ImageReference, runner: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("building {image} {runner}"));
    }
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl World {
    fn new() -> Option<World> {
        let spec = require::ok(BuilderSpec::busybox(RUN), "the busybox test builder")?;
        // Run by root, the lifecycle runs as the builder's user, looked up in
        // this host's /etc/passwd, who must reach the build's directories.
        standin::ensure_host_uid(BUSYBOX_UID).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        spec.write_build_layout(&root.join("builder"), BUILDER)
            .unwrap();
        Some(World { _tmp: tmp, root })
    }

    fn app(&self, files: &[(&str, &str)]) -> PathBuf {
        let app = self.root.join("app");
        std::fs::create_dir_all(&app).unwrap();
        for (name, content) in files {
            std::fs::write(app.join(name), content).unwrap();
        }
        app
    }

    fn source(&self) -> Box<dyn ImageSource> {
        Box::new(OciLayout::open(self.root.join("builder")).unwrap())
    }

    fn options(&self, app: &Path, out: &Path) -> BuildOptions {
        let out_dir = out.to_path_buf();
        BuildOptions {
            app: app.to_path_buf(),
            image: locald_build::image_name(app, Some("locald-test/flow:1")).unwrap(),
            builder: ImageInput {
                source: self.source(),
                image: Some(BUILDER.to_owned()),
            },
            run_image: None,
            run_image_source: self.source(),
            platform: None,
            pull: PullPolicy::Missing,
            pull_interval: Duration::from_secs(3600),
            env: vec![("FLOW_TEST".to_owned(), "1".to_owned())],
            clear_cache: false,
            runner: Box::new(locald_runner_native::NativeRunner),
            output: Output {
                describe: format!("oci-layout:{}", out.display()),
                path: Some(out.to_path_buf()),
                open: Box::new(move |names| {
                    Box::pin(async move {
                        let d =
                            OciLayoutDestination::open(&out_dir, names, Existing::Merge).await?;
                        Ok(Box::new(d) as Box<dyn ImageDestination>)
                    })
                }),
            },
            debug: false,
            color: false,
            lifecycle_stdout_to_stderr: false,
            cancel: Cancel::default(),
            tags: Vec::new(),
            default_process: None,
            creation_time: None,
            cache_dir: None,
            sbom_output_dir: None,
            network: Default::default(),
            volumes: Vec::new(),
            buildpacks: Vec::new(),
            descriptor: None,
        }
    }

    fn cache(&self) -> Cache {
        Cache::open(&self.root.join("data/locald")).unwrap()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every regular file of `root` whose name is `name`, with its content.
fn find(root: &Path, name: &str) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && e.file_name() == name {
                found.push((e.path(), std::fs::read_to_string(e.path()).unwrap()));
            }
        }
    }
    found
}

#[test]
fn builds_an_app_through_the_library() {
    let Some(w) = World::new() else { return };
    let app = w.app(&[("hello.txt", "hello from the library\n")]);
    let out = w.root.join("out.oci");
    let events = Recorded::default();
    let built = rt()
        .block_on(locald_build::build(
            &w.cache(),
            w.options(&app, &out),
            &events,
        ))
        .unwrap_or_else(|e| panic!("the build failed: {e:?}"));

    assert_eq!(built.runner, "native");
    assert_eq!(built.image.to_string(), "docker.io/locald-test/flow:1");
    assert_eq!(built.run_image.to_string(), format!("docker.io/{RUN}"));
    assert!(
        built.timings.total >= built.timings.lifecycle,
        "{:?}",
        built.timings
    );
    assert!(built.timings.lifecycle > 0.0, "{:?}", built.timings);
    let said = events.0.lock().unwrap().clone();
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said[0].starts_with(&format!("builder {BUILDER}")),
        "{said:?}"
    );
    assert_eq!(said[1], format!("run-image {RUN} reused=false"));
    assert_eq!(said[2], "building docker.io/locald-test/flow:1 native");

    // The output holds the image under its full name, with the digest the
    // build reported, and its tree has the app.
    let layout = OciLayout::open(&out).unwrap();
    let rt = rt();
    let image = rt
        .block_on(source::resolve(
            &layout,
            Some("docker.io/locald-test/flow:1"),
            &Platform::host(),
            false,
        ))
        .unwrap();
    assert_eq!(image.manifest_digest, built.written.manifest_digest);
    assert_eq!(image.config_digest, built.written.config_digest);
    let tree = w.root.join("tree");
    rt.block_on(extract_image(
        &layout,
        &image,
        &tree,
        &ExtractOptions::default(),
        std::sync::Arc::new(locald_core::progress::Silent),
    ))
    .unwrap();
    let hello = find(&tree, "hello.txt");
    assert_eq!(hello.len(), 1, "{hello:?}");
    assert_eq!(hello[0].1, "hello from the library\n");
    // The app directory was not built in place.
    assert_eq!(std::fs::read_dir(&app).unwrap().count(), 1);
}

#[test]
fn failed_detection_is_a_refusal_with_the_exit_code() {
    let Some(w) = World::new() else { return };
    let app = w.app(&[("hello.txt", "hi\n"), (FAIL_DETECT, "")]);
    let out = w.root.join("out.oci");
    let err = rt()
        .block_on(locald_build::build(
            &w.cache(),
            w.options(&app, &out),
            &Recorded::default(),
        ))
        .expect_err("detection fails");
    match err {
        BuildError::Refused {
            message,
            hint,
            exit_code,
        } => {
            assert!(
                matches!(exit_code, Some(20) | Some(21)),
                "{exit_code:?}: {message}"
            );
            assert!(message.contains("detect"), "{message}");
            assert!(hint.contains("locald builder inspect"), "{hint}");
        }
        other => panic!("not a refusal: {other:?}"),
    }
    assert!(!out.exists(), "nothing written for a failed build");
}

#[test]
fn bad_image_names_are_refused_before_anything_runs() {
    let app = Path::new("/nonexistent/app");
    for bad in ["UPPER/case", "a@sha256:0000"] {
        match locald_build::image_name(app, Some(bad)) {
            Err(BuildError::Refused { message, hint, .. }) => {
                assert!(message.contains(bad), "{message}");
                assert!(hint.contains("--image"), "{hint}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    match locald_build::flow::app_dir(app) {
        Err(BuildError::Refused { message, .. }) => {
            assert!(message.contains("/nonexistent/app"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

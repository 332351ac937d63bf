//! CLI tests: the `locald` binary run as a user would, exit codes included.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use locald_tests::fixture::{Compression, Entry, ImageSpec, IndexSpec, Layer, LayoutBuilder};
mod build;
mod builder_cache;
mod builder_local;
mod copy;
mod plugins;
mod run;

fn locald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_locald"))
        .args(args)
        .env_remove("LOCALD_LOG")
        .output()
        .unwrap()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let o = locald(args);
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A small builder-shaped layout with two named images.
fn layout(dir: &Path) -> String {
    let mut b = LayoutBuilder::new(dir);
    b.add_image(
        ImageSpec::new(vec![
            Layer::new(
                vec![
                    Entry::dir("cnb/"),
                    Entry::dir("cnb/lifecycle/"),
                    Entry::file("cnb/lifecycle/lifecycle", "#!/bin/sh\n").mode(0o755),
                    Entry::symlink("cnb/lifecycle/creator", "lifecycle"),
                    Entry::dir("etc/"),
                    Entry::file("etc/os-release", "ID=test\n"),
                ],
                Compression::Gzip,
            ),
            Layer::new(
                vec![Entry::file("cnb/order.toml", "[[order]]\n")],
                Compression::Zstd,
            ),
        ])
        .ref_name("builder")
        .env("CNB_USER_ID=1000")
        .label("io.buildpacks.stack.id", "heroku-22")
        .user("1000:1000"),
    );
    b.add_image(
        ImageSpec::new(vec![Layer::new(
            vec![Entry::file("x", "y")],
            Compression::None,
        )])
        .ref_name("other"),
    );
    b.write().unwrap();
    format!("oci-layout:{}", dir.display())
}

#[test]
fn extract_path_writes_under_dir_and_reports() {
    let t = tempfile::tempdir().unwrap();
    let src = layout(&t.path().join("layout"));
    let out = t.path().join("out");
    let r = run(&[
        "image",
        "extract",
        "builder",
        "--source",
        &src,
        "--path",
        "/cnb",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("Extracted builder"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "stdout is for data: {}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(out.join("cnb/order.toml")).unwrap(),
        "[[order]]\n"
    );
    assert_eq!(
        std::fs::read_link(out.join("cnb/lifecycle/creator")).unwrap(),
        Path::new("lifecycle")
    );
    assert!(
        !out.join("etc").exists(),
        "--path /cnb must not extract /etc"
    );
}

#[test]
fn extract_json_summary() {
    let t = tempfile::tempdir().unwrap();
    let src = layout(&t.path().join("layout"));
    let out = t.path().join("out");
    let r = run(&[
        "image",
        "extract",
        "builder",
        "--source",
        &src,
        "--to",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["image"], "builder");
    assert!(v["manifest_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(v["stats"]["files"], 3);
    assert_eq!(v["stats"]["symlinks"], 1);
    assert!(out.join("etc/os-release").is_file());
}

#[test]
fn inspect_text_and_json() {
    let t = tempfile::tempdir().unwrap();
    let src = layout(&t.path().join("layout"));
    let r = run(&["image", "inspect", "builder", "--source", &src]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in [
        "Digest:    sha256:",
        "Platform:  linux/amd64",
        "User:      1000:1000",
        "CNB_USER_ID=1000",
        "io.buildpacks.stack.id=heroku-22",
        "Layers:    2",
        "tar+zstd",
    ] {
        assert!(
            r.stdout.contains(want),
            "missing {want:?} in:\n{}",
            r.stdout
        );
    }
    let r = run(&["image", "inspect", "builder", "--source", &src, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["platform"]["architecture"], "amd64");
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["layers"][1]["media_type"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(v["user"], "1000:1000");
    assert!(
        v["env"]
            .as_array()
            .unwrap()
            .contains(&"CNB_USER_ID=1000".into()),
        "{}",
        v["env"]
    );
}

#[test]
fn errors_are_sentences_with_hints_and_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let src = layout(&t.path().join("layout"));
    let out = t.path().join("out");
    let o = out.to_str().unwrap();

    let r = run(&["image", "extract", "nope", "--source", &src, "--to", o]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("error: could not resolve image \"nope\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("it holds: builder, other"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hint: "), "{}", r.stderr);
    assert!(!out.exists(), "a failed extract must leave no target");

    // Two images and no name.
    let r = run(&["image", "inspect", "--source", &src]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("holds 2 images; name one of: builder, other"),
        "{}",
        r.stderr
    );

    // Target not empty.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep"), "mine").unwrap();
    let r = run(&["image", "extract", "builder", "--source", &src, "--to", o]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("already exists and is not empty"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("hint: choose a new directory"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(out.join("keep")).unwrap(), "mine");

    // Not a layout.
    let r = run(&[
        "image",
        "inspect",
        "x",
        "--source",
        &format!("oci-layout:{}", t.path().display()),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("is not an OCI image layout"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("hint: --source oci-layout:DIR expects"),
        "{}",
        r.stderr
    );

    // Unknown scheme.
    let r = run(&["image", "inspect", "x", "--source", "ftp:somewhere"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("no built-in source or plugin serves scheme \"ftp\"")
            && r.stderr.contains("hint: `locald plugin ls`"),
        "{}",
        r.stderr
    );

    // A registry that is not there: a clear error naming it, after retries.
    let r = run(&["image", "inspect", "127.0.0.1:9/nobody/here:1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("127.0.0.1:9"), "{}", r.stderr);
    assert!(r.stderr.contains("after 5 attempts"), "{}", r.stderr);

    // Bad platform and bad --path.
    let r = run(&[
        "image",
        "inspect",
        "builder",
        "--source",
        &src,
        "--platform",
        "linux",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("OS/ARCH"), "{}", r.stderr);
    let r = run(&[
        "image",
        "extract",
        "builder",
        "--source",
        &src,
        "--path",
        "../..",
        "--to",
        t.path().join("o2").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--path \"../..\""), "{}", r.stderr);

    // Usage errors are clap's exit 2.
    let r = run(&["image", "extract", "builder", "--source", &src]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--to"), "{}", r.stderr);
}

#[test]
fn corrupt_layer_says_digest_and_hints() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let mut b = LayoutBuilder::new(&dir);
    b.add_image(
        ImageSpec::new(vec![
            Layer::new(vec![Entry::file("ok", "fine")], Compression::Gzip),
            Layer::new(
                vec![Entry::file("bad", "x".repeat(10_000))],
                Compression::Gzip,
            )
            .corrupted(),
        ])
        .ref_name("img"),
    );
    b.write().unwrap();
    let out = t.path().join("out");
    let r = run(&[
        "image",
        "extract",
        "img",
        "--source",
        &format!("oci-layout:{}", dir.display()),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("layer 2 (sha256:"), "{}", r.stderr);
    assert!(
        r.stderr.contains("content does not match its digest"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("hint: the image source is corrupt"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        1,
        "only the layout is left"
    );
}

/// `docker-archive:FILE` and `docker-archive:-` (standard input, spooled).
#[test]
fn docker_archive_from_file_and_stdin() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    // Docker archives cannot hold zstd layers: a gzip-only image.
    let dir = t.path().join("layout");
    let mut b = LayoutBuilder::new(&dir);
    b.add_image(
        ImageSpec::new(vec![
            Layer::new(
                vec![
                    Entry::dir("cnb/"),
                    Entry::symlink("cnb/creator", "lifecycle"),
                ],
                Compression::Gzip,
            ),
            Layer::new(
                vec![
                    Entry::dir("cnb/"),
                    Entry::file("cnb/order.toml", "[[order]]\n"),
                ],
                Compression::None,
            ),
        ])
        .ref_name("builder"),
    );
    b.write().unwrap();
    let archive = t.path().join("builder.tar");
    locald_tests::peers::skopeo_copy(
        &format!("oci:{}:builder", dir.display()),
        &format!("docker-archive:{}:heroku/builder:22", archive.display()),
        &[],
    )
    .unwrap();
    let spec = format!("docker-archive:{}", archive.display());
    let out = t.path().join("out");
    let r = run(&[
        "image",
        "extract",
        "heroku/builder:22",
        "--source",
        &spec,
        "--path",
        "/cnb",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("cnb/order.toml")).unwrap(),
        "[[order]]\n"
    );
    // From standard input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_locald"))
        .args(["image", "inspect", "--source", "docker-archive:-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&archive).unwrap())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["source"], "docker-archive:- (standard input)");
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    // A name the archive does not hold, and a file that is not an archive.
    let r = run(&["image", "inspect", "other:1", "--source", &spec]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("has no image named \"other:1\"")
            && r.stderr.contains("heroku/builder:22"),
        "{}",
        r.stderr
    );
    std::fs::write(t.path().join("junk.tar"), b"not a tar at all").unwrap();
    let r = run(&[
        "image",
        "inspect",
        "--source",
        &format!("docker-archive:{}", t.path().join("junk.tar").display()),
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("junk.tar"), "{}", r.stderr);
}

#[test]
fn platform_selection_lists_available() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let mut b = LayoutBuilder::new(&dir);
    let img = |arch: &str, variant: Option<&str>, content: &str| {
        ImageSpec::new(vec![Layer::new(
            vec![Entry::file("arch", content)],
            Compression::Gzip,
        )])
        .platform("linux", arch, variant)
    };
    b.add_index(
        IndexSpec::new(vec![
            img("amd64", None, "amd64"),
            img("arm64", Some("v8"), "arm64"),
        ])
        .ref_name("multi"),
    );
    b.write().unwrap();
    let src = format!("oci-layout:{}", dir.display());
    let out = t.path().join("out");
    let r = run(&[
        "image",
        "extract",
        "multi",
        "--source",
        &src,
        "--platform",
        "linux/arm64",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(out.join("arch")).unwrap(), "arm64");
    let r = run(&[
        "image",
        "inspect",
        "multi",
        "--source",
        &src,
        "--platform",
        "linux/s390x",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("no image for platform linux/s390x (available: linux/amd64, linux/arm64/v8)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("hint: pick one of the available platforms"),
        "{}",
        r.stderr
    );
    let r = run(&[
        "image",
        "inspect",
        "multi",
        "--source",
        &src,
        "--platform",
        "linux/arm64",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["index_digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn help_explains() {
    let r = run(&["image", "extract", "--help"]);
    assert_eq!(r.code, 0);
    for want in [
        "--path",
        "--source",
        "--to",
        "--platform",
        "oci-layout:DIR",
        "Examples",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?}:\n{}", r.stdout);
    }
    let r = run(&["--help"]);
    assert!(r.stdout.contains("LOCALD_LOG"), "{}", r.stdout);
}

/// Ctrl-C in the middle of a layer: exit 130, no target, no temporary directory.
#[test]
fn ctrl_c_publishes_nothing_and_leaves_no_temp_dir() {
    use std::io::Write;
    use std::time::{Duration, Instant};

    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let mut b = LayoutBuilder::new(&dir);
    let big = vec![7u8; 4 << 20];
    let info = b.add_image(
        ImageSpec::new(vec![Layer::new(
            vec![Entry::file("a", &big), Entry::file("b", &big)],
            Compression::None,
        )])
        .ref_name("img"),
    );
    b.write().unwrap();
    // The layer blob becomes a FIFO that delivers the first file, then stalls, as
    // a slow disk or network would.
    let blob = dir.join("blobs/sha256").join(&info.layers[0].digest[7..]);
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::remove_file(&blob).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &blob,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
        let _ = f.write_all(&bytes[..(5 << 20)]);
        let _ = stop_rx.recv_timeout(Duration::from_secs(30));
    });
    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_locald"))
        .args([
            "image",
            "extract",
            "img",
            "--source",
            &format!("oci-layout:{}", dir.display()),
        ])
        .arg("--to")
        .arg(work.join("out"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the extraction has written into its temporary directory.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = std::fs::read_dir(&work)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.path().join("a").exists());
        if started {
            break;
        }
        assert!(Instant::now() < deadline, "extraction never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = stop_tx.send(());
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted; nothing was published"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

mod registry_auth {
    //! Where credentials come from, as a user sets them up: docker config.json
    //! (auths, credential helpers, identity tokens), podman's auth.json, --creds
    //! and LOCALD_REGISTRY_CREDS. Each runs the binary with its own environment.

    use std::path::Path;
    use std::process::Command;

    use locald_tests::peers;
    use locald_tests::registry::{self, Auth, Registry};

    use super::*;

    fn push(reg: &Registry, t: &Path) -> String {
        let dir = t.join("layout");
        super::layout(&dir);
        reg.push_layout(&dir, "builder", "heroku/builder:22")
            .unwrap();
        format!("{}/heroku/builder:22", reg.addr())
    }

    /// Runs locald with a clean credential environment plus `env`.
    fn run_env(args: &[&str], home: &Path, env: &[(&str, &str)]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_locald"));
        c.args(args)
            .env_remove("LOCALD_LOG")
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("LOCALD_REGISTRY_CREDS")
            .env("HOME", home)
            .env("XDG_RUNTIME_DIR", home.join("run"));
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn inspect(image: &str, home: &Path, env: &[(&str, &str)]) -> Run {
        run_env(&["image", "inspect", image, "--json"], home, env)
    }

    #[test]
    fn docker_config_auths_and_wrong_ones() {
        let reg = Registry::start(Auth::htpasswd("ci", "pw-in-config"));
        let t = tempfile::tempdir().unwrap();
        let image = push(&reg, t.path());
        let cfg = t.path().join("docker");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(
            cfg.join("config.json"),
            registry::docker_config_auths(&reg.addr(), "ci", "pw-in-config"),
        )
        .unwrap();
        let r = inspect(
            &image,
            t.path(),
            &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("manifest_digest"));
        // The default location, ~/.docker/config.json, works too.
        let home_docker = t.path().join(".docker");
        std::fs::create_dir_all(&home_docker).unwrap();
        std::fs::copy(cfg.join("config.json"), home_docker.join("config.json")).unwrap();
        let r = inspect(&image, t.path(), &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        // Wrong password in the config: a sentence naming the registry and the
        // credential's origin, never the password.
        std::fs::write(
            cfg.join("config.json"),
            registry::docker_config_auths(&reg.addr(), "ci", "stale-pw"),
        )
        .unwrap();
        let r = inspect(
            &image,
            t.path(),
            &[
                ("DOCKER_CONFIG", cfg.to_str().unwrap()),
                ("LOCALD_LOG", "trace"),
            ],
        );
        assert_eq!(r.code, 1);
        assert!(
            r.stderr.contains(&format!(
                "authentication failed for registry {}",
                reg.addr()
            )),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("docker config.json"), "{}", r.stderr);
        assert!(
            !r.stderr.contains("stale-pw"),
            "password leaked in -v output:\n{}",
            r.stderr
        );
        // No credentials at all.
        let empty = tempfile::tempdir().unwrap();
        let r = inspect(&image, empty.path(), &[]);
        assert_eq!(r.code, 1);
        assert!(
            r.stderr.contains("authentication failed") && r.stderr.contains("anonymous"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("hint: log in with `docker login`"),
            "{}",
            r.stderr
        );
    }

    #[test]
    fn credential_helper_on_path() {
        let reg = Registry::start(Auth::token("ci", "helper-secret"));
        let t = tempfile::tempdir().unwrap();
        let image = push(&reg, t.path());
        let bin = t.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        registry::write_credential_helper(&bin, "test", &reg.addr(), "ci", "helper-secret");
        let cfg = t.path().join("docker");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(
            cfg.join("config.json"),
            registry::docker_config_cred_helper(&reg.addr(), "test"),
        )
        .unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let out = t.path().join("out");
        let r = run_env(
            &[
                "image",
                "extract",
                &image,
                "--path",
                "/cnb",
                "--to",
                out.to_str().unwrap(),
                "-v",
            ],
            t.path(),
            &[("DOCKER_CONFIG", cfg.to_str().unwrap()), ("PATH", &path)],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(out.join("cnb/order.toml").is_file());
        let calls = std::fs::read_to_string(bin.join("test.calls")).unwrap();
        assert!(calls.contains(&format!("get {}", reg.addr())), "{calls}");
        assert!(
            !r.stderr.contains("helper-secret"),
            "secret leaked:\n{}",
            r.stderr
        );
    }

    #[test]
    fn identity_token_is_exchanged_at_the_realm() {
        let reg = Registry::start(Auth::token("ci", "pw"));
        let t = tempfile::tempdir().unwrap();
        let image = push(&reg, t.path());
        let refresh = reg.token_server().unwrap().issue_refresh_token();
        let cfg = t.path().join("docker");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(
            cfg.join("config.json"),
            registry::docker_config_identity_token(&reg.addr(), &refresh),
        )
        .unwrap();
        let r = inspect(
            &image,
            t.path(),
            &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let grants: Vec<String> = reg
            .token_server()
            .unwrap()
            .log()
            .into_iter()
            .map(|l| l.grant)
            .collect();
        assert!(grants.iter().any(|g| g == "refresh_token"), "{grants:?}");
        // A revoked refresh token: authentication fails, clearly.
        reg.token_server().unwrap().revoke_refresh_tokens();
        let r = inspect(
            &image,
            t.path(),
            &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
        );
        assert_eq!(r.code, 1);
        assert!(
            r.stderr.contains("authentication failed") && r.stderr.contains("identity token"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains(&refresh), "token leaked:\n{}", r.stderr);
    }

    #[test]
    fn podman_auth_file_and_explicit_creds() {
        let reg = Registry::start(Auth::htpasswd("pod", "man"));
        let t = tempfile::tempdir().unwrap();
        let image = push(&reg, t.path());
        let auth = t.path().join("auth.json");
        std::fs::write(
            &auth,
            registry::docker_config_auths(&reg.addr(), "pod", "man"),
        )
        .unwrap();
        let r = inspect(
            &image,
            t.path(),
            &[("REGISTRY_AUTH_FILE", auth.to_str().unwrap())],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        // $XDG_RUNTIME_DIR/containers/auth.json
        std::fs::create_dir_all(t.path().join("run/containers")).unwrap();
        std::fs::copy(&auth, t.path().join("run/containers/auth.json")).unwrap();
        let r = inspect(&image, t.path(), &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        // Explicit credentials win over configured ones, from the flag or the env.
        let empty = tempfile::tempdir().unwrap();
        let r = run_env(
            &["image", "inspect", &image, "--creds", "pod:man"],
            empty.path(),
            &[],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = inspect(
            &image,
            empty.path(),
            &[("LOCALD_REGISTRY_CREDS", "pod:man")],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = run_env(
            &["image", "inspect", &image, "--creds", "pod:wrong"],
            t.path(),
            &[],
        );
        assert_eq!(r.code, 1, "--creds must win over auth.json: {}", r.stderr);
        assert!(r.stderr.contains("--creds"), "{}", r.stderr);
        let r = run_env(
            &["image", "inspect", &image, "--creds", "nocolon"],
            t.path(),
            &[],
        );
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("must be USER:PASSWORD"), "{}", r.stderr);
    }

    /// `credsStore` (one helper for every registry) is used when nothing more
    /// specific is configured.
    #[test]
    fn creds_store_helper() {
        let reg = Registry::start(Auth::htpasswd("store", "pw"));
        let t = tempfile::tempdir().unwrap();
        let image = push(&reg, t.path());
        let bin = t.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        registry::write_credential_helper(&bin, "store", &reg.addr(), "store", "pw");
        let cfg = t.path().join("docker");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("config.json"), r#"{"credsStore":"store"}"#).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let r = inspect(
            &image,
            t.path(),
            &[("DOCKER_CONFIG", cfg.to_str().unwrap()), ("PATH", &path)],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(std::fs::read_to_string(bin.join("store.calls"))
            .unwrap()
            .contains("get"));
    }

    /// An HTTPS registry with a private CA: refused without the CA, accepted with
    /// --ca-cert or SSL_CERT_FILE. Uses this machine's host name (which must
    /// resolve to a loopback address; loopback *addresses* are spoken to over HTTP).
    #[test]
    fn tls_registry_with_extra_ca_certificate() {
        let host = peers::run("hostname", std::iter::empty::<&str>())
            .unwrap()
            .trim()
            .to_owned();
        let resolves_to_loopback = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 1))
            .map(|mut a| a.any(|a| a.ip().is_loopback()))
            .unwrap_or(false);
        if host.is_empty() || !resolves_to_loopback {
            locald_tests::require::skip(format_args!(
                "the host name {host:?} does not resolve to a loopback address (add it to /etc/hosts)"
            ));
            return;
        }
        let t = tempfile::tempdir().unwrap();
        // A private CA and a server certificate it signed for this host name.
        let p = |name: &str| t.path().join(name).to_str().unwrap().to_owned();
        let (ca_key, ca, key, csr, cert, ext) = (
            p("ca.key"),
            p("ca.pem"),
            p("key.pem"),
            p("leaf.csr"),
            p("cert.pem"),
            p("leaf.ext"),
        );
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        for args in [
            vec![
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
                "-subj",
                "/CN=locald test CA",
            ],
            vec![
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                "/CN=leaf",
            ],
            vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
        ] {
            peers::run("openssl", args).unwrap();
        }
        let (key, cert) = (
            std::path::PathBuf::from(key),
            std::path::PathBuf::from(cert),
        );
        let ca = std::path::PathBuf::from(ca);
        let port = registry::free_port();
        let config = t.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
                t.path().join("data").display(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _reg = Kill(
            Command::new("docker-registry")
                .args(["serve", config.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let dir = t.path().join("layout");
        super::layout(&dir);
        let image = format!("{host}:{port}/tls/builder:1");
        let mut pushed = Err(String::new());
        for _ in 0..50 {
            pushed = peers::skopeo_copy(
                &format!("oci:{}:builder", dir.display()),
                &format!("docker://{image}"),
                &["--dest-tls-verify=false"],
            );
            if pushed.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        pushed.unwrap();
        let r = inspect(&image, t.path(), &[]);
        assert_eq!(r.code, 1, "an unknown CA must be refused: {}", r.stdout);
        assert!(
            r.stderr.to_lowercase().contains("certificate"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("hint: ") && r.stderr.contains("--ca-cert"),
            "{}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("after 5 attempts"),
            "certificate errors are not retried: {}",
            r.stderr
        );
        let r = run_env(
            &[
                "image",
                "inspect",
                &image,
                "--ca-cert",
                ca.to_str().unwrap(),
            ],
            t.path(),
            &[],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = inspect(&image, t.path(), &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }

    /// HTTP_PROXY is honoured: a registry host that does not resolve is reached
    /// through the proxy named in the environment.
    #[test]
    fn proxy_from_the_environment() {
        let reg = Registry::start(Auth::None);
        let proxy = registry::Proxy::start(&reg.addr());
        let t = tempfile::tempdir().unwrap();
        push(&reg, t.path());
        let image = "registry.invalid:5000/heroku/builder:22";
        let proxy_url = format!("http://{}", proxy.addr());
        let out = t.path().join("out");
        let r = run_env(
            &[
                "image",
                "extract",
                image,
                "--insecure-registry",
                "registry.invalid:5000",
                "--path",
                "/cnb",
                "--to",
                out.to_str().unwrap(),
            ],
            t.path(),
            &[
                ("HTTP_PROXY", &proxy_url),
                ("http_proxy", &proxy_url),
                ("NO_PROXY", ""),
                ("no_proxy", ""),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(out.join("cnb/order.toml").is_file());
        let through: Vec<(String, String)> = proxy.requests();
        assert!(
            through
                .iter()
                .any(|(_, p)| p.contains("registry.invalid:5000/v2/heroku/builder/blobs/")),
            "blob requests did not go through the proxy: {through:?}"
        );
        assert!(
            through
                .iter()
                .any(|(_, p)| p.contains("registry.invalid:5000/v2/heroku/builder/manifests/")),
            "manifest requests did not go through the proxy: {through:?}"
        );
        // Without the proxy the host does not resolve: a clear error.
        let r = run_env(
            &[
                "image",
                "inspect",
                image,
                "--insecure-registry",
                "registry.invalid:5000",
            ],
            t.path(),
            &[],
        );
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("registry.invalid:5000"), "{}", r.stderr);
    }
}

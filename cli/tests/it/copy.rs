//! `locald image copy`: any source into any destination, against the real
//! distribution registry (no auth, htpasswd, token auth) and read back with
//! skopeo. Digests must survive every copy between layouts and registries; a
//! second push uploads nothing; a blob another repository of the registry has
//! is mounted; an upload cut mid-way resumes; bad credentials are named.

use std::path::Path;
use std::process::Command;

use locald_tests::fixture::{
    sha256_digest, Compression, Entry, ImageSpec, IndexSpec, Layer, LayoutBuilder,
};
use locald_tests::registry::{Auth, Proxy, Registry};
use locald_tests::{peers, require};
use serde_json::Value;

use super::Run;

/// Runs locald with no credentials from the environment and its own cache.
fn locald(home: &Path, args: &[&str]) -> Run {
    let o = Command::new(env!("CARGO_BIN_EXE_locald"))
        .args(args)
        .env_remove("LOCALD_LOG")
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("LOCALD_REGISTRY_CREDS")
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("DOCKER_CONFIG", home.join("docker"))
        .output()
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn peers_here() -> bool {
    require::tool("skopeo") && require::tool("docker-registry")
}

/// Incompressible bytes (a layer that stays large when gzipped).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A layout with one image `app`: a small layer, a large one (`big` bytes,
/// chunked uploads above 8 MiB) and a zstd one. Returns the manifest digest.
fn app_layout(dir: &Path, big: usize) -> String {
    let mut b = LayoutBuilder::new(dir);
    let info = b.add_image(
        ImageSpec::new(vec![
            Layer::new(
                vec![Entry::dir("app/"), Entry::file("app/hello", "hello\n")],
                Compression::Gzip,
            ),
            Layer::new(
                vec![Entry::file("app/blob.bin", noise(big, 7))],
                Compression::Gzip,
            ),
            Layer::new(vec![Entry::file("app/z", "zstd\n")], Compression::Zstd),
        ])
        .ref_name("app"),
    );
    b.write().unwrap();
    info.manifest.digest
}

fn json(r: &Run) -> Value {
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// The digest of what skopeo reads at `docker://ADDR/REPO_TAG`.
fn registry_digest(reg: &Registry, repo_tag: &str) -> String {
    sha256_digest(reg.inspect_raw(repo_tag).unwrap().as_bytes())
}

/// Upload requests the registry logged (`POST`/`PATCH`/`PUT` of
/// `/blobs/uploads/`), and how many of them mounted.
fn uploads(reg: &Registry) -> (usize, usize) {
    let reqs = reg.requests();
    let up = reqs
        .iter()
        .filter(|(m, uri, _)| m != "GET" && m != "HEAD" && uri.contains("/blobs/uploads/"))
        .count();
    let mounts = reqs
        .iter()
        .filter(|(m, uri, _)| m == "POST" && uri.contains("mount="))
        .count();
    (up, mounts)
}

#[test]
fn layout_to_registry_and_back_keeps_the_digest() {
    if !peers_here() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    let layout = t.path().join("layout");
    // 20 MiB: a chunked upload.
    let digest = app_layout(&layout, 20 << 20);
    let target = format!("{}/team/app:1", reg.addr());
    let v = json(&locald(
        t.path(),
        &[
            "image",
            "copy",
            "app",
            "--source",
            &format!("oci-layout:{}", layout.display()),
            "--to",
            &format!("registry:{target}"),
            "--json",
        ],
    ));
    assert_eq!(v["digest"], digest.as_str(), "{v}");
    assert_eq!(registry_digest(&reg, "team/app:1"), digest);
    // skopeo reads it back whole into a layout, with the same digest.
    let back = t.path().join("back");
    peers::skopeo_copy(
        &format!("docker://{target}"),
        &format!("oci:{}:x", back.display()),
        &["--src-tls-verify=false"],
    )
    .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    // And our copy from the registry into a new layout, then a docker archive.
    let ours = t.path().join("ours");
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            &target,
            "--to",
            &format!("oci-layout:{}", ours.display()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), digest);
    let index: Value =
        serde_json::from_slice(&std::fs::read(ours.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        target.as_str()
    );
    let archive = t.path().join("app.tar");
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            &target,
            "--source",
            &format!("oci-layout:{}", ours.display()),
            "--to",
            &format!("docker-archive:{}", archive.display()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let inspected: Value = serde_json::from_str(
        &peers::skopeo(&["inspect", &format!("docker-archive:{}", archive.display())]).unwrap(),
    )
    .unwrap();
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
    // A docker archive as the source, pushed to another repository.
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            "--source",
            &format!("docker-archive:{}", archive.display()),
            "--to",
            &format!("registry:{}/from/archive:1", reg.addr()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    reg.inspect_raw("from/archive:1").unwrap();
}

#[test]
fn a_second_push_uploads_nothing_and_other_repositories_mount() {
    if !peers_here() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    let layout = t.path().join("layout");
    let digest = app_layout(&layout, 1 << 20);
    let src = format!("oci-layout:{}", layout.display());
    let to = format!("registry:{}/team/app:1", reg.addr());
    let r = locald(
        t.path(),
        &["image", "copy", "app", "--source", &src, "--to", &to],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (first, _) = uploads(&reg);
    assert!(first >= 4, "config and three layers uploaded: {first}");
    let r = locald(
        t.path(),
        &["image", "copy", "app", "--source", &src, "--to", &to],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (second, _) = uploads(&reg);
    assert_eq!(second, first, "the second push uploaded blobs again");
    // Registry to another repository of the same registry: every blob mounted.
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            &format!("{}/team/app:1", reg.addr()),
            "--to",
            &format!("registry:{}/other/app:2", reg.addr()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (after, mounts) = uploads(&reg);
    assert_eq!(mounts, 4, "config and three layers mounted");
    assert_eq!(after - second, mounts, "nothing but mounts");
    assert_eq!(registry_digest(&reg, "other/app:2"), digest);
}

#[test]
fn an_upload_cut_midway_resumes() {
    if !peers_here() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    let proxy = Proxy::start(&reg.addr());
    let layout = t.path().join("layout");
    // 40 MiB: two chunks; the first is cut after 5 MiB reached the registry.
    let digest = app_layout(&layout, 40 << 20);
    proxy.cut_next_upload_after(5 << 20);
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            "app",
            "--source",
            &format!("oci-layout:{}", layout.display()),
            "--to",
            &format!("registry:{}/cut/app:1", proxy.addr()),
            "-v",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(proxy.pending_upload_cuts(), 0, "the fault was not hit");
    assert_eq!(registry_digest(&reg, "cut/app:1"), digest);
    // The upload was resumed (a GET of its status), not begun again.
    assert!(
        proxy.count("GET", "/blobs/uploads/") >= 1,
        "{:?}",
        proxy.requests()
    );
}

#[test]
fn credentials_are_checked_before_anything_is_pushed() {
    if !peers_here() {
        return;
    }
    for auth in [Auth::htpasswd("ci", "right"), Auth::token("ci", "right")] {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry::start(auth.clone());
        let layout = t.path().join("layout");
        let digest = app_layout(&layout, 1 << 20);
        let src = format!("oci-layout:{}", layout.display());
        let to = format!("registry:{}/team/app:1", reg.addr());
        let r = locald(
            t.path(),
            &[
                "image", "copy", "app", "--source", &src, "--to", &to, "--creds", "ci:wrong",
            ],
        );
        assert_eq!(r.code, 1, "{auth:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("authentication failed for registry")
                && r.stderr.contains(&reg.addr())
                && r.stderr.contains("\"ci\""),
            "{auth:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("hint: log in"), "{}", r.stderr);
        assert_eq!(
            uploads(&reg).0,
            0,
            "{auth:?}: uploaded with wrong credentials"
        );
        assert!(reg.inspect_raw("team/app:1").is_err(), "a tag appeared");
        // No credentials at all.
        let r = locald(
            t.path(),
            &["image", "copy", "app", "--source", &src, "--to", &to],
        );
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("authentication failed"), "{}", r.stderr);
        // The right ones.
        let r = locald(
            t.path(),
            &[
                "image", "copy", "app", "--source", &src, "--to", &to, "--creds", "ci:right",
            ],
        );
        assert_eq!(r.code, 0, "{auth:?}: {}", r.stderr);
        assert_eq!(registry_digest(&reg, "team/app:1"), digest);
    }
}

#[test]
fn all_platforms_copies_the_index_whole() {
    if !peers_here() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    let dir = t.path().join("layout");
    let mut b = LayoutBuilder::new(&dir);
    let img = |arch: &str| {
        ImageSpec::new(vec![Layer::new(
            vec![Entry::file("arch", arch)],
            Compression::Gzip,
        )])
        .platform("linux", arch, None)
    };
    let info = b.add_index(IndexSpec::new(vec![img("amd64"), img("arm64")]).ref_name("multi"));
    b.write().unwrap();
    let target = format!("{}/multi/app:1", reg.addr());
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            "multi",
            "--source",
            &format!("oci-layout:{}", dir.display()),
            "--all-platforms",
            "--to",
            &format!("registry:{target}"),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), info.index.digest);
    assert_eq!(registry_digest(&reg, "multi/app:1"), info.index.digest);
    // Back into a layout, whole.
    let back = t.path().join("back");
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            &target,
            "--all-platforms",
            "--to",
            &format!("oci-layout:{}", back.display()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for arch in ["amd64", "arm64"] {
        let out = peers::skopeo(&[
            "inspect",
            "--override-arch",
            arch,
            &format!("oci:{}:{target}", back.display()),
        ])
        .unwrap();
        assert!(out.contains(arch), "{out}");
    }
    // A docker archive holds one platform: said so.
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            &target,
            "--all-platforms",
            "--to",
            &format!("docker-archive:{}", t.path().join("a.tar").display()),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("single-platform"), "{}", r.stderr);
    assert!(!t.path().join("a.tar").exists());
}

#[test]
fn bad_destinations_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    app_layout(&layout, 1024);
    let src = format!("oci-layout:{}", layout.display());
    for (to, want) in [
        ("ftp:somewhere", "not a destination locald can write"),
        ("registry:Not A Ref", "--to \"registry:Not A Ref\""),
        ("docker-archive:-", "not supported"),
    ] {
        let r = locald(
            t.path(),
            &["image", "copy", "app", "--source", &src, "--to", to],
        );
        assert_eq!(r.code, 1, "{to}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{to}: {}", r.stderr);
        assert!(r.stderr.contains("hint: "), "{to}: {}", r.stderr);
    }
    let r = locald(t.path(), &["image", "copy", "--help"]);
    assert!(
        r.stdout.contains("registry:REF") && r.stdout.contains("Examples"),
        "{}",
        r.stdout
    );
}

/// Uploads that keep failing: the copy gives up with a sentence, and no tag
/// names a partial image.
#[test]
fn a_copy_that_fails_leaves_no_tag() {
    if !peers_here() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    let proxy = Proxy::start(&reg.addr());
    let layout = t.path().join("layout");
    app_layout(&layout, 12 << 20);
    for _ in 0..12 {
        proxy.cut_next_upload_after(1 << 20);
    }
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            "app",
            "--source",
            &format!("oci-layout:{}", layout.display()),
            "--to",
            &format!("registry:{}/broken/app:1", proxy.addr()),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("could not copy the image to registry:")
            && r.stderr.contains("layer 2 (sha256:")
            && r.stderr.contains("could not be copied"),
        "{}",
        r.stderr
    );
    assert!(reg.inspect_raw("broken/app:1").is_err(), "a tag appeared");
    assert!(
        !reg.requests()
            .iter()
            .any(|(m, uri, _)| m == "PUT" && uri.contains("/manifests/")),
        "a manifest was pushed"
    );
}

/// Layout to layout keeps the digest and adds the name beside what is there.
#[test]
fn layout_to_layout_keeps_the_digest() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let digest = app_layout(&layout, 4096);
    let out = t.path().join("out");
    for name in ["one:1", "two:2"] {
        let r = locald(
            t.path(),
            &[
                "image",
                "copy",
                "app",
                "--source",
                &format!("oci-layout:{}", layout.display()),
                "--name",
                name,
                "--to",
                &format!("oci-layout:{}", out.display()),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout.trim(), digest);
    }
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["digest"], digest.as_str());
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["docker.io/library/one:1", "docker.io/library/two:2"]
    );
}

/// A registry that refuses the manifest: the copy says what it refused and
/// quotes the registry.
#[test]
fn a_refused_manifest_is_said() {
    if !peers_here() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    let proxy = Proxy::start(&reg.addr());
    let layout = t.path().join("layout");
    app_layout(&layout, 4096);
    proxy.answer_next(
        "PUT",
        "/manifests/",
        400,
        r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"unsupported media type"}]}"#,
    );
    let r = locald(
        t.path(),
        &[
            "image",
            "copy",
            "app",
            "--source",
            &format!("oci-layout:{}", layout.display()),
            "--to",
            &format!("registry:{}/refused/app:1", proxy.addr()),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("pushing the manifest of")
            && r.stderr.contains("refused it: HTTP 400")
            && r.stderr.contains("MANIFEST_INVALID"),
        "{}",
        r.stderr
    );
    assert!(reg.inspect_raw("refused/app:1").is_err(), "a tag appeared");
}

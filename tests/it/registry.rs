//! The registry source against the real distribution registry (Debian's
//! `docker-registry`), with no auth, htpasswd basic auth and token auth, and a
//! fault-injecting proxy in front of it for the resilience cases.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use locald_source_registry::{Credential, RegistryOptions, RegistrySource};
use locald_tests::fixture::{Compression, Entry, ImageSpec, IndexSpec, Layer, LayoutBuilder};
use locald_tests::peers;
use locald_tests::registry::{Auth, Proxy, Registry};
use locald_tests::tree::{self, DiffOpts};

use crate::common;

/// A builder-shaped image with a few layers big enough to be cut mid-blob.
fn layout(dir: &Path) {
    let big: Vec<u8> = (0..600_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let mut b = LayoutBuilder::new(dir);
    b.add_image(
        ImageSpec::new(vec![
            Layer::new(
                vec![
                    Entry::dir("cnb/"),
                    Entry::dir("cnb/lifecycle/"),
                    Entry::file("cnb/lifecycle/lifecycle", &big).mode(0o755),
                    Entry::symlink("cnb/lifecycle/creator", "lifecycle"),
                    Entry::dir("etc/"),
                    Entry::file("etc/os-release", "ID=test\n"),
                ],
                Compression::Gzip,
            ),
            Layer::new(
                vec![
                    Entry::dir("cnb/"),
                    Entry::file("cnb/order.toml", "[[order]]\n"),
                    // Every layer is big enough to be cut mid-blob, whichever the
                    // proxy's fault lands on (layers are fetched concurrently).
                    Entry::file("cnb/big2", &big),
                    Entry::whiteout("etc", "os-release"),
                ],
                Compression::Gzip,
            ),
            Layer::new(
                vec![Entry::dir("cnb/"), Entry::file("cnb/big", &big)],
                Compression::None,
            ),
        ])
        .ref_name("builder"),
    );
    b.write().unwrap();
}

fn options(credential: Option<(&str, &str)>) -> RegistryOptions {
    RegistryOptions {
        credential: credential.map(|(u, p)| Credential::Basic {
            user: u.to_owned(),
            password: p.to_owned(),
            origin: "test",
        }),
        backoff: Duration::from_millis(50),
        ..RegistryOptions::default()
    }
}

fn source(credential: Option<(&str, &str)>) -> RegistrySource {
    RegistrySource::new(options(credential)).unwrap()
}

/// Pushes the test image and returns the layout it came from.
fn pushed(reg: &Registry, t: &Path) -> std::path::PathBuf {
    let dir = t.join("layout");
    layout(&dir);
    reg.push_layout(&dir, "builder", "heroku/builder:22")
        .unwrap();
    dir
}

/// The tree locald extracts from the layout itself: what every pull must give.
fn expected(layout: &Path, t: &Path) -> tree::Snapshot {
    let out = t.join("expected");
    common::extract(layout, Some("builder"), &[], &out).unwrap();
    tree::snapshot(&out)
}

#[test]
fn anonymous_pull_matches_the_layout_and_umoci() {
    let reg = Registry::start(Auth::None);
    let t = tempfile::tempdir().unwrap();
    let dir = pushed(&reg, t.path());
    let out = t.path().join("out");
    let image = format!("{}/heroku/builder:22", reg.addr());
    common::extract_from(&source(None), Some(&image), &[], &out).unwrap();
    tree::assert_same_snapshot(
        &tree::snapshot(&out),
        &expected(&dir, t.path()),
        &DiffOpts::default(),
    );
    let rootfs = peers::umoci_unpack(&dir, "builder", &t.path().join("bundle")).unwrap();
    tree::assert_same_tree(&out, &rootfs, &DiffOpts::default());
    // --path /cnb through the registry too.
    let cnb = t.path().join("cnb");
    common::extract_from(&source(None), Some(&image), &["/cnb"], &cnb).unwrap();
    assert!(cnb.join("cnb/big").is_file() && !cnb.join("etc").exists());
}

#[test]
fn basic_auth_with_right_wrong_and_missing_credentials() {
    let reg = Registry::start(Auth::htpasswd("ci", "s3cret"));
    let t = tempfile::tempdir().unwrap();
    pushed(&reg, t.path());
    let image = format!("{}/heroku/builder:22", reg.addr());
    common::extract_from(
        &source(Some(("ci", "s3cret"))),
        Some(&image),
        &["/cnb"],
        &t.path().join("ok"),
    )
    .unwrap();
    for (creds, what) in [(Some(("ci", "wrong")), "user \"ci\""), (None, "anonymous")] {
        let out = t.path().join("no");
        let e = common::extract_from(&source(creds), Some(&image), &[], &out).unwrap_err();
        let msg = common::chain(&e);
        assert!(
            msg.contains(&format!(
                "authentication failed for registry {}",
                reg.addr()
            )),
            "{msg}"
        );
        assert!(msg.contains(what), "{msg}");
        assert!(
            !msg.contains("wrong") || creds.is_none(),
            "the password leaked: {msg}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn bearer_token_auth() {
    let reg = Registry::start(Auth::token("ci", "t0ken-pass"));
    let t = tempfile::tempdir().unwrap();
    let dir = pushed(&reg, t.path());
    let image = format!("{}/heroku/builder:22", reg.addr());
    let out = t.path().join("out");
    let before = reg.token_requests();
    common::extract_from(&source(Some(("ci", "t0ken-pass"))), Some(&image), &[], &out).unwrap();
    assert!(reg.token_requests() > before, "no token was requested");
    tree::assert_same_snapshot(
        &tree::snapshot(&out),
        &expected(&dir, t.path()),
        &DiffOpts::default(),
    );
    let e = common::extract_from(
        &source(Some(("ci", "nope"))),
        Some(&image),
        &[],
        &t.path().join("x"),
    )
    .unwrap_err();
    let msg = common::chain(&e);
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(!msg.contains("nope"), "the password leaked: {msg}");
    let e =
        common::extract_from(&source(None), Some(&image), &[], &t.path().join("y")).unwrap_err();
    assert!(
        common::chain(&e).contains("authentication failed"),
        "{}",
        common::chain(&e)
    );
}

#[test]
fn multi_platform_index_selection() {
    let reg = Registry::start(Auth::None);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let img = |arch: &str, variant: Option<&str>| {
        ImageSpec::new(vec![Layer::new(
            vec![Entry::file("arch", arch)],
            Compression::Gzip,
        )])
        .platform("linux", arch, variant)
    };
    let mut b = LayoutBuilder::new(&dir);
    b.add_index(
        IndexSpec::new(vec![img("amd64", None), img("arm64", Some("v8"))]).ref_name("multi"),
    );
    b.write().unwrap();
    reg.push_layout_all(&dir, "multi", "multi:1").unwrap();
    let image = format!("{}/multi:1", reg.addr());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = source(None);
    for (p, want) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        let out = t.path().join(want);
        let platform = p.parse().unwrap();
        rt.block_on(async {
            let img = locald_core::source::resolve(&src, Some(&image), &platform, true)
                .await
                .unwrap();
            locald_extract::extract_image(
                &src,
                &img,
                &out,
                &Default::default(),
                Arc::new(locald_core::progress::Silent),
            )
            .await
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(out.join("arch")).unwrap(), want);
    }
    let e = rt
        .block_on(locald_core::source::resolve(
            &src,
            Some(&image),
            &"linux/s390x".parse().unwrap(),
            true,
        ))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("available: linux/amd64, linux/arm64/v8"),
        "{e}"
    );
}

/// The connection drops mid-blob: the download resumes with a Range request and
/// the result is complete and verified.
#[test]
fn dropped_connection_resumes_with_range() {
    let reg = Registry::start(Auth::None);
    let proxy = Proxy::start(&reg.addr());
    let t = tempfile::tempdir().unwrap();
    let dir = pushed(&reg, t.path());
    let image = format!("{}/heroku/builder:22", proxy.addr());
    let out = t.path().join("out");
    let src = source(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let img = locald_core::source::resolve(
            &src,
            Some(&image),
            &"linux/amd64".parse().unwrap(),
            false,
        )
        .await
        .unwrap();
        // Armed after the config was fetched, so the cut hits a layer.
        proxy.fail_next_blob_after(100_000);
        locald_extract::extract_image(
            &src,
            &img,
            &out,
            &Default::default(),
            Arc::new(locald_core::progress::Silent),
        )
        .await
    })
    .unwrap();
    tree::assert_same_snapshot(
        &tree::snapshot(&out),
        &expected(&dir, t.path()),
        &DiffOpts::default(),
    );
    let ranged = proxy
        .records()
        .iter()
        .filter(|r| {
            r.path.contains("/blobs/")
                && r.headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("range"))
        })
        .count();
    assert!(
        ranged >= 1,
        "no Range request after the cut: {:?}",
        proxy.requests()
    );
}

/// 503 and 429 (with Retry-After) are retried.
#[test]
fn server_errors_and_rate_limits_are_retried() {
    let reg = Registry::start(Auth::None);
    let proxy = Proxy::start(&reg.addr());
    let t = tempfile::tempdir().unwrap();
    pushed(&reg, t.path());
    let image = format!("{}/heroku/builder:22", proxy.addr());
    proxy.fail_next_blobs_with_status(2, 503, None);
    common::extract_from(&source(None), Some(&image), &[], &t.path().join("a")).unwrap();
    proxy.fail_next_blobs_with_status(1, 429, Some(1));
    let started = std::time::Instant::now();
    common::extract_from(&source(None), Some(&image), &[], &t.path().join("b")).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured"
    );
    // Too many failures: a clear error, nothing published.
    proxy.fail_next_blobs_with_status(50, 503, None);
    let out = t.path().join("c");
    let e = common::extract_from(&source(None), Some(&image), &[], &out).unwrap_err();
    let msg = common::chain(&e);
    assert!(
        msg.contains("after 5 attempts") && msg.contains("503"),
        "{msg}"
    );
    assert!(!out.exists());
    proxy.clear_faults();
}

/// The registry dies mid-blob and comes back: the pull resumes and succeeds.
#[test]
fn registry_killed_mid_blob_then_restarted() {
    let reg = Arc::new(Registry::start(Auth::None));
    let proxy = Proxy::start(&reg.addr());
    let t = tempfile::tempdir().unwrap();
    let dir = pushed(&reg, t.path());
    let image = format!("{}/heroku/builder:22", proxy.addr());
    let r = reg.clone();
    proxy.on_next_blob_after(50_000, move || {
        r.kill();
        let r2 = r.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            r2.restart();
        });
    });
    let out = t.path().join("out");
    let src = RegistrySource::new(RegistryOptions {
        backoff: Duration::from_millis(400),
        ..RegistryOptions::default()
    })
    .unwrap();
    common::extract_from(&src, Some(&image), &[], &out).unwrap();
    tree::assert_same_snapshot(
        &tree::snapshot(&out),
        &expected(&dir, t.path()),
        &DiffOpts::default(),
    );
}

/// A registry that stays dead: a clear error naming it, nothing published, no
/// temporary directory left.
#[test]
fn registry_dying_for_good_fails_cleanly() {
    let reg = Arc::new(Registry::start(Auth::None));
    let proxy = Proxy::start(&reg.addr());
    let t = tempfile::tempdir().unwrap();
    pushed(&reg, t.path());
    let image = format!("{}/heroku/builder:22", proxy.addr());
    let r = reg.clone();
    proxy.on_next_blob_after(50_000, move || r.kill());
    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let e = common::extract_from(&source(None), Some(&image), &[], &work.join("out")).unwrap_err();
    let msg = common::chain(&e);
    eprintln!("registry died: {msg}");
    assert!(
        msg.contains("layer 1 (sha256:") && msg.contains(&proxy.addr()),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "something was left in {work:?}"
    );
}

/// A blob whose bytes do not match its digest is refused.
#[test]
fn corrupt_blob_is_refused() {
    let reg = Registry::start(Auth::None);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    layout(&dir);
    reg.push_layout(&dir, "builder", "heroku/builder:22")
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&reg.inspect_raw("heroku/builder:22").unwrap()).unwrap();
    let digest = manifest["layers"][1]["digest"].as_str().unwrap().to_owned();
    reg.corrupt_stored_blob(&digest);
    let out = t.path().join("out");
    let e = common::extract_from(
        &source(None),
        Some(&format!("{}/heroku/builder:22", reg.addr())),
        &[],
        &out,
    )
    .unwrap_err();
    let msg = common::chain(&e);
    assert!(
        msg.contains(&format!("layer 2 ({digest})")) && msg.contains("does not match its digest"),
        "{msg}"
    );
    assert!(!out.exists());
}

#[test]
fn unknown_image_is_a_clear_error() {
    let reg = Registry::start(Auth::None);
    let t = tempfile::tempdir().unwrap();
    pushed(&reg, t.path());
    let e = common::extract_from(
        &source(None),
        Some(&format!("{}/heroku/builder:nope", reg.addr())),
        &[],
        &t.path().join("o"),
    )
    .unwrap_err();
    let msg = common::chain(&e);
    assert!(msg.contains("was not found in registry"), "{msg}");
}

/// The current digest of a tag costs one HEAD request, no GET.
#[test]
fn current_digest_is_one_head_request() {
    let reg = Registry::start(Auth::None);
    let proxy = Proxy::start(&reg.addr());
    let t = tempfile::tempdir().unwrap();
    pushed(&reg, t.path());
    let image = format!("{}/heroku/builder:22", proxy.addr());
    let src = source(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let resolved = rt
        .block_on(locald_core::source::resolve(
            &src,
            Some(&image),
            &"linux/amd64".parse().unwrap(),
            false,
        ))
        .unwrap();
    proxy.clear_log();
    let digest = rt
        .block_on(locald_core::source::ImageSource::current_digest(
            &src,
            Some(&image),
        ))
        .unwrap();
    assert_eq!(digest, resolved.root_digest);
    assert_eq!(
        proxy.count("HEAD", "/manifests/22"),
        1,
        "{:?}",
        proxy.requests()
    );
    assert_eq!(
        proxy.count("GET", "/manifests/"),
        0,
        "{:?}",
        proxy.requests()
    );
    assert_eq!(proxy.count("GET", "/blobs/"), 0, "{:?}", proxy.requests());
}

//! The tree fingerprint is stored in every cached tree's record and recomputed on
//! each use: if its bytes changed between versions, every cache written by an
//! earlier locald would look tampered with and be extracted again. These values
//! were computed by the first implementation (path-based walk, 600a7eb) for the
//! tree below; any walk must reproduce them.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use locald_cache::tree::fingerprint;

fn build(root: &Path) {
    let mk = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    let file = |p: &str, data: &[u8], mode: u32| {
        std::fs::write(root.join(p), data).unwrap();
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mk("cnb/lifecycle");
    mk("cnb/buildpacks/heroku_go/1.0/bin");
    mk("empty");
    file("cnb/lifecycle/creator", b"#!/bin/sh\nexit 0\n", 0o755);
    file("cnb/order.toml", b"[[order]]\n", 0o644);
    file(
        "cnb/buildpacks/heroku_go/1.0/bin/build",
        &[7u8; 70_000],
        0o750,
    );
    file(
        "cnb/buildpacks/heroku_go/1.0/buildpack.toml",
        b"api = \"0.10\"\n",
        0o640,
    );
    file("b-before-a", b"", 0o600);
    std::os::unix::fs::symlink("lifecycle/creator", root.join("cnb/c")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    std::fs::hard_link(
        root.join("cnb/order.toml"),
        root.join("cnb/order-link.toml"),
    )
    .unwrap();
    for d in [
        "cnb",
        "cnb/lifecycle",
        "cnb/buildpacks",
        "cnb/buildpacks/heroku_go",
        "cnb/buildpacks/heroku_go/1.0",
        "cnb/buildpacks/heroku_go/1.0/bin",
        "empty",
    ] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn fingerprint_bytes_are_stable_across_versions() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let f = fingerprint(dir.path(), true).unwrap();
    assert_eq!(f.entries, 15);
    assert_eq!(
        f.meta,
        "7bcde4ff2adfb8945bfecd95a0bdc86126893ba74daf901c7d4238036dfe71cf"
    );
    assert_eq!(
        f.content.as_deref(),
        Some("0b4d81ce5023369a57d1cc07fbe2f6e58e5c4b44c5c97d9ec00762f44b918886")
    );
    assert_eq!(f.meta, fingerprint(dir.path(), false).unwrap().meta);
}

//! Layer semantics cross-checked against real peers: a layout is extracted by
//! locald and by `umoci unpack`, and the two trees must be equal (types, modes,
//! owners, link targets, contents, hard-link grouping, mtimes).

use std::path::Path;

use locald_tests::fixture::{Compression, Entry, ImageSpec, Layer, LayoutBuilder, LongNames};
use locald_tests::peers;
use locald_tests::tree::{self, DiffOpts};

use crate::common;

/// A `vfs_cap_data` v2 value granting cap_net_raw, effective.
pub(crate) const CAP_NET_RAW_EP: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Files, links, whiteouts and opaque directories in every combination the OCI
/// spec and real builders produce.
pub(crate) fn semantic_layers() -> Vec<Layer> {
    semantic_layers_with(true)
}

/// [`semantic_layers`], optionally without the same-layer whiteout case
/// (`same/kept` and `same/.wh.kept` in one layer), which podman's store applies
/// on load and then cannot save again.
pub(crate) fn semantic_layers_with(same_layer_whiteout: bool) -> Vec<Layer> {
    let long = format!(
        "cnb/buildpacks/{}/bin/build",
        "very-long-buildpack-id-".repeat(6)
    );
    vec![
        Layer::new(
            vec![
                Entry::dir("./"),
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
                Entry::file("usr/bin/wall", "setgid tool")
                    .mode(0o2755)
                    .owner(0, 5),
                // File capabilities (cap_net_raw+ep, as Ubuntu's ping) and user xattrs.
                Entry::file("usr/bin/ping", "ping")
                    .mode(0o755)
                    .xattr("security.capability", CAP_NET_RAW_EP),
                Entry::file("etc/tagged", "x").xattr("user.locald.test", "hello"),
                Entry::dir("etc/tagged-dir/").xattr("user.locald.dir", [0u8, 1, 2]),
                Entry::dir("tmp/").mode(0o1777),
                Entry::dir("opaque/"),
                Entry::file("opaque/lower-file", "gone"),
                Entry::dir("opaque/lower-dir/"),
                Entry::file("opaque/lower-dir/deep", "gone too"),
                Entry::dir("wh/"),
                Entry::file("wh/file", "to be removed"),
                Entry::dir("wh/dir/"),
                Entry::file("wh/dir/child", "removed with its dir"),
                Entry::file("wh/keep", "kept"),
                Entry::file("replace-file-with-dir", "file"),
                Entry::dir("replace-dir-with-file/"),
                Entry::file("replace-dir-with-file/child", "x"),
                Entry::dir("readonly/").mode(0o555),
                Entry::file("readonly/a", "a"),
                Entry::fifo("tmp/fifo").mode(0o600),
                Entry::file("data/implicit/parents", "no dir entries above me"),
                Entry::file("hard/original", "shared bytes").mode(0o700),
                Entry::hardlink("hard/same-layer", "hard/original"),
            ],
            Compression::Gzip,
        ),
        Layer::new(
            vec![
                // Whiteouts of a file and of a directory from the layer below.
                Entry::whiteout("wh", "file"),
                Entry::whiteout("wh", "dir"),
                // An opaque directory with new content before and after the marker.
                Entry::dir("opaque/"),
                Entry::file("opaque/new-before", "new"),
                Entry::opaque("opaque"),
                Entry::dir("opaque/lower-dir/"),
                Entry::file("opaque/lower-dir/new-deep", "new deep"),
                Entry::file("opaque/new-after", "new"),
                // Type changes.
                Entry::dir("replace-file-with-dir/"),
                Entry::file("replace-file-with-dir/inside", "now a dir"),
                Entry::file("replace-dir-with-file", "now a file"),
                // Content in a read-only directory of a lower layer.
                Entry::file("readonly/b", "b"),
                // A re-declared directory's xattrs replace the lower ones; a
                // read-only file still gets its user xattr.
                Entry::dir("etc/").xattr("user.locald.other", "2"),
                Entry::dir("etc/tagged-dir/").xattr("user.locald.other", "2"),
                Entry::file("etc/read-only", "ro")
                    .mode(0o444)
                    .xattr("user.locald.ro", "1"),
                // Hard link to a file of a lower layer.
                Entry::hardlink("hard/from-upper", "hard/original"),
                // A lifecycle update replacing the symlink target.
                Entry::file("cnb/lifecycle/lifecycle", "LIFECYCLE v2").mode(0o755),
                Entry::dir("cnb/").owner(1000, 1000),
                Entry::dir("cnb/buildpacks/"),
                Entry::dir(format!(
                    "cnb/buildpacks/{}/",
                    "very-long-buildpack-id-".repeat(6)
                )),
                Entry::dir(format!(
                    "cnb/buildpacks/{}/bin/",
                    "very-long-buildpack-id-".repeat(6)
                )),
                Entry::file(&long, "long name").mode(0o755),
                Entry::symlink("cnb/long-link", &long),
            ],
            Compression::GzipMultiMember,
        ),
        Layer::new(
            [
                // Same-layer rule: a whiteout never removes an entry of its own layer.
                Entry::dir("same/"),
                Entry::file("same/kept", "written in this layer"),
                Entry::whiteout("same", "kept"),
            ]
            .into_iter()
            .filter(|_| same_layer_whiteout)
            .chain([
                // Whiteout then re-create (replaces the lower directory).
                Entry::whiteout("wh", "keep"),
                Entry::dir("wh/keep/"),
                Entry::file("wh/keep/fresh", "fresh"),
                Entry::dir("cnb/").owner(1000, 1000),
                Entry::dir("cnb/gnu/"),
                Entry::file(format!("cnb/gnu/{}", "g".repeat(150)), "gnu long name"),
                Entry::hardlink("cnb/owned-link", "etc/passwd"),
                Entry::file("cnb/owned", "by cnb")
                    .owner(1000, 1000)
                    .mode(0o600),
            ])
            .collect(),
            Compression::None,
        )
        .with_long_names(LongNames::Gnu),
    ]
}

fn write_semantic_layout(dir: &Path) {
    let mut b = LayoutBuilder::new(dir);
    b.add_image(ImageSpec::new(semantic_layers()).ref_name("semantic"));
    b.write().unwrap();
}

/// Directories the fixture never names (made implicitly as parents): their mtime is
/// "now" for every extractor, so it is not compared.
const IMPLICIT_DIRS: [&str; 3] = ["data", "data/implicit", "hard"];

/// A snapshot without the mtimes of implicitly made directories.
pub(crate) fn strip_implicit(mut s: tree::Snapshot) -> tree::Snapshot {
    for d in IMPLICIT_DIRS {
        if let Some(n) = s.get_mut(d) {
            n.mtime = None;
        }
    }
    s
}

/// Compares two extractions of the semantic image (locald's, umoci's, or two of
/// locald's), everything but the mtimes of implicitly made directories.
fn assert_matches_umoci(ours: &Path, theirs: &Path) {
    tree::assert_same_snapshot(
        &strip_implicit(tree::snapshot(ours)),
        &strip_implicit(tree::snapshot(theirs)),
        &DiffOpts::default(),
    );
}

#[test]
fn whole_root_matches_umoci_unpack() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    write_semantic_layout(&layout);
    let ours = t.path().join("ours");
    let stats = common::extract(&layout, Some("semantic"), &[], &ours).unwrap();
    assert!(stats.whiteouts >= 5, "{stats:?}");
    let rootfs = peers::umoci_unpack(&layout, "semantic", &t.path().join("bundle")).unwrap();
    assert_matches_umoci(&ours, &rootfs);

    // Spot checks that make the expectations explicit, whatever umoci does.
    let s = tree::snapshot(&ours);
    for gone in [
        "wh/file",
        "wh/dir",
        "opaque/lower-file",
        "opaque/lower-dir/deep",
    ] {
        assert!(!s.contains_key(gone), "{gone} should be whited out");
    }
    for kept in [
        "same/kept",
        "opaque/new-before",
        "opaque/new-after",
        "opaque/lower-dir/new-deep",
        "wh/keep/fresh",
        "readonly/a",
        "readonly/b",
    ] {
        assert!(s.contains_key(kept), "{kept} should exist");
    }
    assert_eq!(s["usr/bin/sudo"].mode, 0o4755);
    assert_eq!(s["etc/tagged"].xattrs["user.locald.test"], b"hello");
    assert_eq!(s["etc/read-only"].xattrs["user.locald.ro"], b"1");
    let dir_xattrs: Vec<&String> = s["etc/tagged-dir"].xattrs.keys().collect();
    assert_eq!(dir_xattrs, ["user.locald.other"]);
    if peers::is_root() {
        assert_eq!(
            s["usr/bin/ping"].xattrs["security.capability"],
            CAP_NET_RAW_EP
        );
    }
    assert_eq!(s["readonly"].mode, 0o555);
    assert_eq!(s["hard/original"].inode, s["hard/from-upper"].inode);
    assert_eq!(s["hard/original"].inode, s["hard/same-layer"].inode);
    assert_eq!(
        std::fs::read_to_string(ours.join("cnb/lifecycle/creator")).unwrap(),
        "LIFECYCLE v2"
    );
}

#[test]
fn path_filter_matches_umoci_subtree() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    write_semantic_layout(&layout);
    let rootfs = peers::umoci_unpack(&layout, "semantic", &t.path().join("bundle")).unwrap();
    for (paths, subtrees) in [
        (vec!["/cnb"], vec!["cnb"]),
        (vec!["/cnb", "/etc/"], vec!["cnb", "etc"]),
        (vec!["opaque"], vec!["opaque"]),
        (vec!["/wh/keep"], vec!["wh/keep"]),
    ] {
        let ours = t
            .path()
            .join(format!("ours-{}", paths.join("+").replace('/', "_")));
        common::extract(&layout, Some("semantic"), &paths, &ours).unwrap();
        let mut mine = tree::snapshot(&ours);
        let all = tree::snapshot(&rootfs);
        let mut want: tree::Snapshot = all
            .iter()
            .filter(|(k, _)| {
                subtrees
                    .iter()
                    .any(|s| *k == s || k.starts_with(&format!("{s}/")))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Ancestors of the filter paths are plain directories made for them.
        mine.retain(|k, _| {
            subtrees
                .iter()
                .any(|s| k == s || k.starts_with(&format!("{s}/")))
        });
        // The cnb/owned-link hard link points at /etc/passwd, outside --path /cnb:
        // extracted alone it is a single file, not a link, so compare without grouping.
        let opts = DiffOpts {
            ignore_hardlinks: true,
            ..DiffOpts::default()
        };
        if paths == ["/cnb"] {
            assert!(
                !mine.contains_key("cnb/owned-link"),
                "a hard link to a path outside --path is skipped (with a warning)"
            );
            want.remove("cnb/owned-link");
        }
        tree::assert_same_snapshot(&mine, &want, &opts);
    }
}

/// A layout umoci made itself, with its own whiteouts for deletions.
#[test]
fn umoci_made_layout_matches() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let layers: Vec<peers::LayerChange> = vec![
        Box::new(|root: &Path| {
            std::fs::create_dir_all(root.join("cnb/lifecycle")).unwrap();
            std::fs::write(root.join("cnb/lifecycle/lifecycle"), "v1").unwrap();
            std::os::unix::fs::symlink("lifecycle", root.join("cnb/lifecycle/creator")).unwrap();
            std::fs::create_dir_all(root.join("cnb/buildpacks/a/1.0/bin")).unwrap();
            std::fs::write(root.join("cnb/buildpacks/a/1.0/bin/build"), "build").unwrap();
            std::fs::hard_link(
                root.join("cnb/buildpacks/a/1.0/bin/build"),
                root.join("cnb/buildpacks/a/1.0/bin/detect"),
            )
            .unwrap();
            std::fs::create_dir_all(root.join("old/dir")).unwrap();
            std::fs::write(root.join("old/dir/file"), "old").unwrap();
            std::fs::write(root.join("old/file"), "old").unwrap();
        }),
        Box::new(|root: &Path| {
            std::fs::remove_dir_all(root.join("old/dir")).unwrap();
            std::fs::remove_file(root.join("old/file")).unwrap();
            std::fs::write(root.join("cnb/lifecycle/lifecycle"), "v2").unwrap();
            std::fs::remove_dir_all(root.join("cnb/buildpacks/a")).unwrap();
            std::fs::create_dir_all(root.join("cnb/buildpacks/b/2.0")).unwrap();
            std::fs::write(
                root.join("cnb/buildpacks/b/2.0/buildpack.toml"),
                "api = \"0.10\"",
            )
            .unwrap();
        }),
    ];
    peers::umoci_build(&layout, "peer", layers).unwrap();
    let rootfs = peers::umoci_unpack(&layout, "peer", &t.path().join("bundle")).unwrap();
    let ours = t.path().join("ours");
    let stats = common::extract(&layout, Some("peer"), &[], &ours).unwrap();
    assert!(
        stats.whiteouts >= 2,
        "umoci should have written whiteouts: {stats:?}"
    );
    assert_matches_umoci(&ours, &rootfs);
    assert!(!ours.join("old/dir").exists() && !ours.join("cnb/buildpacks/a").exists());
}

/// skopeo re-compresses layers to zstd and rewrites the manifest: same tree.
#[test]
fn skopeo_zstd_copy_gives_same_tree() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    write_semantic_layout(&layout);
    let zstd = t.path().join("zstd");
    peers::skopeo_copy(
        &format!("oci:{}:semantic", layout.display()),
        &format!("oci:{}:semantic", zstd.display()),
        &["--dest-compress-format", "zstd", "--dest-compress"],
    )
    .unwrap();
    let manifest = peers::skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:semantic", zstd.display()),
    ])
    .unwrap();
    assert!(
        manifest.contains("tar+zstd"),
        "skopeo did not recompress: {manifest}"
    );
    let a = t.path().join("a");
    let b = t.path().join("b");
    common::extract(&layout, Some("semantic"), &[], &a).unwrap();
    common::extract(&zstd, Some("semantic"), &[], &b).unwrap();
    assert_matches_umoci(&a, &b);
}

/// Docker schema-2 media types (manifest, config, layers) are read like OCI ones.
#[test]
fn docker_media_types_give_same_tree() {
    let t = tempfile::tempdir().unwrap();
    let oci = t.path().join("oci");
    let docker = t.path().join("docker");
    write_semantic_layout(&oci);
    let mut b = LayoutBuilder::new(&docker);
    b.add_image(
        ImageSpec::new(semantic_layers())
            .ref_name("semantic")
            .docker(),
    );
    b.write().unwrap();
    let a = t.path().join("a");
    let d = t.path().join("d");
    common::extract(&oci, Some("semantic"), &[], &a).unwrap();
    common::extract(&docker, None, &[], &d).unwrap();
    assert_matches_umoci(&a, &d);
}

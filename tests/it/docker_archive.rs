//! The `docker-archive:` source: every archive layout found in the wild, made by
//! the real tools where they run here (skopeo, podman) and by hand from the
//! documented structure ([`locald_tests::archive`]) otherwise, extracted by
//! locald and compared with `umoci unpack` of the same image; image selection in
//! multi-image archives; and hostile archives, each refused with a clear error
//! and without a write outside the target.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use locald_core::manifest::MAX_JSON_BYTES;
use locald_extract::Stats;
use locald_source_docker_archive::DockerArchive;
use locald_tests::archive::{self, Archive, ArchiveBuilder, Format};
use locald_tests::fixture::{Compression, Entry, ImageSpec, Layer, LayoutBuilder};
use locald_tests::tree::{self, DiffOpts, Snapshot};
use locald_tests::{peers, require};

use crate::common;

/// The name the single-image archives are saved under.
const TAG: &str = "heroku/builder:22";
/// How long one extraction may take before the test calls it a hang.
const DEADLINE: Duration = Duration::from_secs(60);
/// What the sentinel file holds.
const VICTIM: &str = "the victim's original content\n";

// ---------------------------------------------------------------------------
// The image: the layer list of conformance.rs

use crate::conformance::{semantic_layers, semantic_layers_with, strip_implicit};

fn semantic_spec() -> ImageSpec {
    semantic_spec_with(semantic_layers())
}

fn semantic_spec_with(layers: Vec<Layer>) -> ImageSpec {
    ImageSpec::new(layers)
        .env("CNB_USER_ID=1000")
        .label("io.buildpacks.builder.metadata", "{}")
}

/// Writes `spec` as an OCI layout at `dir/layout` (ref name `ref`) and returns
/// `umoci unpack` of it: the tree every archive of that image must give.
fn umoci_reference(dir: &Path, spec: &ImageSpec) -> PathBuf {
    let layout = dir.join("layout");
    let mut b = LayoutBuilder::new(&layout);
    b.add_image(spec.clone().ref_name("ref"));
    b.write().unwrap();
    peers::umoci_unpack(&layout, "ref", &dir.join("bundle")).unwrap()
}

// ---------------------------------------------------------------------------
// Extraction through the source

/// Opens the archive and extracts `image` (`paths`, all when empty) into `target`.
fn extract_archive(
    archive: &Path,
    image: Option<&str>,
    paths: &[&str],
    target: &Path,
) -> Result<Stats, String> {
    let src =
        DockerArchive::open(archive).map_err(|e| common::chain(&locald_core::Error::from(e)))?;
    common::extract_from(&src, image, paths, target).map_err(|e| common::chain(&e))
}

/// The whole root of `image` in `archive` equals `rootfs`, and `--path /cnb`
/// gives exactly its `cnb` subtree.
fn assert_archive_matches(archive: &Path, image: Option<&str>, rootfs: &Path, label: &str) {
    let work = tempfile::tempdir().unwrap();
    let all = work.path().join("all");
    let stats = extract_archive(archive, image, &[], &all)
        .unwrap_or_else(|e| panic!("{label}: extracting {image:?}: {e}"));
    assert!(stats.whiteouts >= 4, "{label}: {stats:?}");
    eprintln!("{label}: whole root");
    tree::assert_same_snapshot(
        &strip_implicit(tree::snapshot(&all)),
        &strip_implicit(tree::snapshot(rootfs)),
        &DiffOpts::default(),
    );
    let s = tree::snapshot(&all);
    assert_eq!(s["usr/bin/sudo"].mode, 0o4755, "{label}");
    assert_eq!(
        s["hard/original"].inode, s["hard/from-upper"].inode,
        "{label}"
    );
    assert!(!s.contains_key("wh/file") && !s.contains_key("opaque/lower-file"));

    let cnb = work.path().join("cnb");
    extract_archive(archive, image, &["/cnb"], &cnb)
        .unwrap_or_else(|e| panic!("{label}: extracting {image:?} --path /cnb: {e}"));
    let mine = tree::snapshot(&cnb);
    let stray: Vec<&String> = mine
        .keys()
        .filter(|k| *k != "cnb" && !k.starts_with("cnb/"))
        .collect();
    assert!(stray.is_empty(), "{label}: --path /cnb wrote {stray:?}");
    // cnb/owned-link is a hard link to /etc/passwd, outside --path /cnb: skipped.
    assert!(!mine.contains_key("cnb/owned-link"), "{label}");
    let want: Snapshot = tree::snapshot(rootfs)
        .into_iter()
        .filter(|(k, _)| (k == "cnb" || k.starts_with("cnb/")) && k != "cnb/owned-link")
        .collect();
    assert!(want.len() > 10, "{label}: {want:?}");
    eprintln!("{label}: --path /cnb");
    tree::assert_same_snapshot(
        &mine,
        &want,
        &DiffOpts {
            ignore_hardlinks: true,
            ..DiffOpts::default()
        },
    );
}

/// Builds the semantic image in `format`, writes it and checks it against umoci.
fn check_format(build: impl FnOnce(ImageSpec) -> Archive, label: &str) {
    let t = tempfile::tempdir().unwrap();
    let spec = semantic_spec();
    let rootfs = umoci_reference(t.path(), &spec);
    let a = build(spec);
    let file = t.path().join("archive.tar");
    a.write(&file).unwrap();
    assert_archive_matches(&file, Some(TAG), &rootfs, label);
    assert_archive_matches(&file, None, &rootfs, &format!("{label}, no name"));
}

// ---------------------------------------------------------------------------
// Formats

#[test]
fn legacy_docker_save_matches_umoci() {
    check_format(|s| archive::legacy(&s, &[TAG]), "legacy");
}

#[test]
fn docker25_save_matches_umoci() {
    check_format(|s| archive::docker25(&s, &[TAG]), "docker25");
}

#[test]
fn containerd_store_save_matches_umoci() {
    check_format(
        |s| {
            ArchiveBuilder::new(Format::ContainerdStore)
                .image(s, &[TAG])
                .absent_platform()
                .build()
        },
        "containerd-store",
    );
}

/// The containerd store saves Docker media types for images pulled as such.
#[test]
fn containerd_store_with_docker_media_types_matches_umoci() {
    check_format(
        |s| archive::containerd_store(&s.docker(), &[TAG]),
        "containerd-store, docker media types",
    );
}

#[test]
fn skopeo_style_matches_umoci() {
    check_format(|s| archive::skopeo_style(&s, &[TAG]), "skopeo-style");
}

/// An extracted `docker save` re-packed with `tar -C dir -cf x.tar .`: every name
/// starts with `./`.
#[test]
fn repacked_archive_with_dot_slash_names_matches_umoci() {
    for format in Format::ALL {
        check_format(
            |s| {
                ArchiveBuilder::new(format)
                    .image(s, &[TAG])
                    .dot_slash()
                    .build()
            },
            &format!("{} with ./ names", format.name()),
        );
    }
}

/// `manifest.json` naming the legacy `<id>/layer.tar` symlinks of a skopeo
/// archive, and layers reached through a chain of symlinked members.
#[test]
fn symlinked_members_are_followed() {
    check_format(
        |s| {
            let mut a = archive::skopeo_style(&s, &[TAG]);
            let ids: Vec<String> = a
                .names()
                .into_iter()
                .filter_map(|n| n.strip_suffix("/VERSION").map(str::to_owned))
                .collect();
            // Point Layers at the `<id>/layer.tar` symlinks, in chain order.
            let mut m = a.manifest();
            let links: Vec<String> = a.images[0]
                .layer_members
                .iter()
                .map(|root| {
                    ids.iter()
                        .map(|id| format!("{id}/layer.tar"))
                        .find(|l| match a.member(l) {
                            Some(Entry::Symlink { target, .. }) => {
                                target == format!("../{root}").as_bytes()
                            }
                            _ => false,
                        })
                        .unwrap()
                })
                .collect();
            m[0]["Layers"] = serde_json::json!(links);
            a.set_manifest(&m);
            a
        },
        "skopeo-style via <id>/layer.tar",
    );
    for format in Format::ALL {
        check_format(
            |s| {
                let mut a = ArchiveBuilder::new(format).image(s, &[TAG]).build();
                for i in 0..3 {
                    let name = a.layer_member(0, i).to_owned();
                    let bytes = a.remove_member(&name);
                    let Entry::File { content, .. } = bytes else {
                        panic!("{name} is not a file")
                    };
                    let real = format!("store/layer-{i}.tar");
                    a.push_member(Entry::file(&real, content));
                    // member -> hop-i -> store/hop -> store/layer-i.tar
                    a.push_member(Entry::symlink(
                        &name,
                        format!("{}hop-{i}", up_to_root(&name)),
                    ));
                    a.push_member(Entry::symlink(format!("hop-{i}"), format!("store/hop-{i}")));
                    a.push_member(Entry::symlink(
                        format!("store/hop-{i}"),
                        format!("./layer-{i}.tar"),
                    ));
                }
                a
            },
            &format!("{}: layers behind symlink chains", format.name()),
        );
    }
}

/// `skopeo copy oci:... docker-archive:...`: uncompressed `<diff_id>.tar` at
/// the root, `<id>/layer.tar` symlinks, `RepoTags` fully qualified.
#[test]
fn skopeo_made_archive_matches_umoci() {
    let t = tempfile::tempdir().unwrap();
    let spec = semantic_spec();
    let rootfs = umoci_reference(t.path(), &spec);
    let file = t.path().join("skopeo.tar");
    peers::skopeo_copy(
        &format!("oci:{}:ref", t.path().join("layout").display()),
        &format!("docker-archive:{}:{TAG}", file.display()),
        &[],
    )
    .unwrap();
    let names = tar_names(&file);
    assert!(
        names
            .iter()
            .any(|(n, link)| n.ends_with("/layer.tar") && link.is_some()),
        "skopeo should write symlinked members: {names:?}"
    );
    assert_archive_matches(&file, Some(TAG), &rootfs, "skopeo");
    assert_archive_matches(
        &file,
        Some(&format!("docker.io/{TAG}")),
        &rootfs,
        "skopeo, qualified name",
    );
    assert_archive_matches(&file, None, &rootfs, "skopeo, no name");
}

/// `podman save --format docker-archive`, single and multi-image (`-m`), from
/// an isolated store. Skipped, with the reason printed, where podman cannot run.
#[test]
fn podman_saved_archives_match_umoci() {
    if !require::tool("podman") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("podman");
    let podman = |args: &[&str]| -> Result<String, String> {
        let root = store.join("root");
        let run = store.join("run");
        let mut all: Vec<&str> = vec![
            "--root",
            root.to_str().unwrap(),
            "--runroot",
            run.to_str().unwrap(),
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
        ];
        all.extend_from_slice(args);
        peers::run("podman", all)
    };
    if require::ok(podman(&["info"]), "podman").is_none() {
        return;
    }
    // podman 4.3 applies a layer's own whiteouts to its own entries on load,
    // then fails to save it again ("reading blob ...: open .../same/kept: no
    // such file or directory"): leave that case out.
    let spec = semantic_spec_with(semantic_layers_with(false));
    let rootfs = umoci_reference(t.path(), &spec);
    let other = ImageSpec::new(vec![Layer::new(
        vec![Entry::dir("cnb/"), Entry::file("cnb/other", "other image")],
        Compression::Gzip,
    )]);
    let other_dir = t.path().join("other");
    fs::create_dir(&other_dir).unwrap();
    let other_rootfs = umoci_reference(&other_dir, &other);
    let src = t.path().join("skopeo.tar");
    let src_other = t.path().join("skopeo-other.tar");
    peers::skopeo_copy(
        &format!("oci:{}:ref", t.path().join("layout").display()),
        &format!("docker-archive:{}:{TAG}", src.display()),
        &[],
    )
    .unwrap();
    peers::skopeo_copy(
        &format!("oci:{}:ref", other_dir.join("layout").display()),
        &format!("docker-archive:{}:localhost/other:1", src_other.display()),
        &[],
    )
    .unwrap();
    let result = (|| -> Result<(), String> {
        podman(&["load", "-q", "-i", src.to_str().unwrap()])?;
        podman(&["load", "-q", "-i", src_other.to_str().unwrap()])?;
        podman(&["tag", &format!("docker.io/{TAG}"), "localhost/second:2"])?;
        let single = t.path().join("single.tar");
        let multi = t.path().join("multi.tar");
        podman(&[
            "save",
            "--format",
            "docker-archive",
            "-o",
            single.to_str().unwrap(),
            TAG,
        ])?;
        podman(&[
            "save",
            "-m",
            "--format",
            "docker-archive",
            "-o",
            multi.to_str().unwrap(),
            TAG,
            "localhost/second:2",
            "localhost/other:1",
        ])?;
        assert_archive_matches(&single, Some(TAG), &rootfs, "podman save");
        assert_archive_matches(&single, None, &rootfs, "podman save, no name");
        assert_archive_matches(&multi, Some(TAG), &rootfs, "podman save -m");
        assert_archive_matches(
            &multi,
            Some("localhost/second:2"),
            &rootfs,
            "podman save -m, second tag",
        );
        let out = t.path().join("other-out");
        extract_archive(&multi, Some("localhost/other:1"), &[], &out)?;
        tree::assert_same_tree(&out, &other_rootfs, &DiffOpts::default());
        let err = extract_archive(&multi, None, &[], &t.path().join("none")).unwrap_err();
        assert_mentions(&err, &[TAG, "localhost/other:1"]);
        Ok(())
    })();
    let _ = podman(&["rmi", "-a", "-f"]);
    result.unwrap();
}

/// An `oci-archive:` (a tarred OCI layout, no `manifest.json`) is another
/// format: refused with a message that says what is missing.
#[test]
fn oci_archive_is_not_a_docker_archive() {
    let t = tempfile::tempdir().unwrap();
    umoci_reference(t.path(), &semantic_spec());
    let file = t.path().join("oci.tar");
    peers::skopeo_copy(
        &format!("oci:{}:ref", t.path().join("layout").display()),
        &format!("oci-archive:{}:{TAG}", file.display()),
        &[],
    )
    .unwrap();
    let err = extract_archive(&file, None, &[], &t.path().join("out")).unwrap_err();
    assert_mentions(&err, &["manifest.json"]);
    assert!(!t.path().join("out").exists());
    let junk = t.path().join("junk.tar");
    fs::write(&junk, b"this is not a tar archive at all\n".repeat(40)).unwrap();
    let err = extract_archive(&junk, None, &[], &t.path().join("out")).unwrap_err();
    assert_mentions(&err, &[junk.to_str().unwrap()]);
}

// ---------------------------------------------------------------------------
// Multi-image archives

/// A small image whose top layer says which image it is.
fn marked(base: &Layer, which: &str) -> ImageSpec {
    ImageSpec::new(vec![
        base.clone(),
        Layer::new(
            vec![
                Entry::dir("cnb/"),
                Entry::file("cnb/which", which),
                Entry::file(format!("cnb/{which}"), which),
            ],
            Compression::Gzip,
        ),
    ])
}

/// The image a multi-image archive holds under each selector, per format, and
/// the errors for no name and unknown names.
#[test]
fn multi_image_archives_select_by_repo_tag() {
    let base = Layer::new(
        vec![
            Entry::dir("etc/"),
            Entry::file("etc/os-release", "ID=test\n"),
        ],
        Compression::Gzip,
    );
    let a = marked(&base, "a");
    let b = marked(&base, "b");
    // The top layer of `a` at the bottom of `c`: the same bytes under another
    // legacy id (docker writes a symlink to the first copy).
    let c = ImageSpec::new(vec![
        a.layers[1].clone(),
        Layer::new(vec![Entry::file("cnb/c", "c")], Compression::Gzip),
    ]);
    let t = tempfile::tempdir().unwrap();
    let mut refs = Vec::new();
    for (name, spec) in [("a", &a), ("b", &b), ("c", &c)] {
        let dir = t.path().join(name);
        fs::create_dir(&dir).unwrap();
        refs.push(umoci_reference(&dir, spec));
    }
    for format in Format::ALL {
        let archive = ArchiveBuilder::new(format)
            .image(a.clone(), &["heroku/builder:22"])
            .image(b.clone(), &["heroku/builder:24", "localhost:5000/b:1"])
            .image(c.clone(), &["busybox:latest"])
            .build();
        let file = t.path().join(format!("{}.tar", format.name()));
        archive.write(&file).unwrap();
        let label = format.name();
        for (selector, want) in [
            ("heroku/builder:22", 0),
            ("docker.io/heroku/builder:22", 0),
            ("heroku/builder:24", 1),
            ("docker.io/heroku/builder:24", 1),
            ("localhost:5000/b:1", 1),
            ("busybox:latest", 2),
            ("docker.io/library/busybox:latest", 2),
            ("busybox", 2),
        ] {
            let out = t
                .path()
                .join(format!("{label}-{}", selector.replace(['/', ':'], "_")));
            extract_archive(&file, Some(selector), &[], &out)
                .unwrap_or_else(|e| panic!("{label}: selecting {selector}: {e}"));
            eprintln!("{label}: {selector}");
            tree::assert_same_tree(&out, &refs[want], &DiffOpts::default());
        }
        let holds = ["heroku/builder:22", "heroku/builder:24", "busybox"];
        let err = extract_archive(&file, None, &[], &t.path().join("none")).unwrap_err();
        assert_mentions(&err, &holds);
        for unknown in [
            "heroku/builder:23",
            "builder:22",
            "other/heroku/builder:22",
            "ghcr.io/heroku/builder:22",
        ] {
            let err =
                extract_archive(&file, Some(unknown), &[], &t.path().join("none")).unwrap_err();
            assert_mentions(&err, &[unknown]);
            assert_mentions(&err, &holds);
        }
        assert!(!t.path().join("none").exists());
    }
}

/// One image under two tags is one image: no name is fine; an untagged image
/// (`docker save IMAGE-ID`) is used when it is the only one; one tag on two
/// entries is ambiguous.
#[test]
fn single_untagged_and_ambiguous_archives() {
    let base = Layer::new(vec![Entry::file("base", "base")], Compression::Gzip);
    let a = marked(&base, "a");
    let b = marked(&base, "b");
    let t = tempfile::tempdir().unwrap();
    let ra = umoci_reference(t.path(), &a);
    for format in Format::ALL {
        let label = format.name();
        let file = t.path().join(format!("{label}.tar"));
        ArchiveBuilder::new(format)
            .image(a.clone(), &["x/y:1", "x/y:latest"])
            .build()
            .write(&file)
            .unwrap();
        for selector in [
            None,
            Some("x/y:1"),
            Some("x/y"),
            Some("docker.io/x/y:latest"),
        ] {
            let out = t.path().join(format!("{label}-two-tags-{selector:?}"));
            extract_archive(&file, selector, &[], &out)
                .unwrap_or_else(|e| panic!("{label}: {selector:?}: {e}"));
            tree::assert_same_tree(&out, &ra, &DiffOpts::default());
        }

        ArchiveBuilder::new(format)
            .image(a.clone(), &[])
            .build()
            .write(&file)
            .unwrap();
        let out = t.path().join(format!("{label}-untagged"));
        extract_archive(&file, None, &[], &out).unwrap_or_else(|e| panic!("{label}: {e}"));
        tree::assert_same_tree(&out, &ra, &DiffOpts::default());
        // A name with nothing to match it against: either the only image is
        // used (what the CLI, which always passes a name, needs for archives
        // saved by id), or the error names what was asked for.
        let named = t.path().join(format!("{label}-untagged-named"));
        match extract_archive(&file, Some("x/y:1"), &[], &named) {
            Ok(_) => tree::assert_same_tree(&named, &ra, &DiffOpts::default()),
            Err(e) => assert_mentions(&e, &["x/y:1"]),
        }

        ArchiveBuilder::new(format)
            .image(a.clone(), &["dup:1"])
            .image(b.clone(), &["dup:1"])
            .build()
            .write(&file)
            .unwrap();
        let err = extract_archive(&file, Some("dup:1"), &[], &t.path().join("none")).unwrap_err();
        assert_mentions(&err, &["dup:1"]);
        let err = extract_archive(&file, None, &[], &t.path().join("none")).unwrap_err();
        assert_mentions(&err, &["dup:1"]);
        assert!(!t.path().join("none").exists());
    }
}

// ---------------------------------------------------------------------------
// Hostile archives

type Outcome = Result<Stats, String>;

/// `tmp/archive.tar`, sentinels in `tmp/outside/`, the target `tmp/work/out`.
/// After every extraction nothing but the target may have changed, and `work/`
/// holds exactly `out` after a success and nothing after a failure.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("outside");
        fs::create_dir_all(out.join("dir")).unwrap();
        fs::write(out.join("victim"), VICTIM).unwrap();
        fs::write(out.join("dir/inner"), "inner\n").unwrap();
        fs::create_dir(tmp.path().join("work")).unwrap();
        Sandbox { tmp }
    }
    fn path(&self) -> &Path {
        self.tmp.path()
    }
    fn archive(&self) -> PathBuf {
        self.path().join("archive.tar")
    }
    fn work(&self) -> PathBuf {
        self.path().join("work")
    }
    fn target(&self) -> PathBuf {
        self.work().join("out")
    }
    fn world(&self) -> Snapshot {
        let mut s = tree::snapshot(self.path());
        s.retain(|k, _| k != "work" && k != "work/out" && !k.starts_with("work/out/"));
        s
    }
    fn clear_target(&self) {
        if self.target().exists() {
            make_writable(&self.target());
            fs::remove_dir_all(self.target()).unwrap();
        }
    }

    /// Writes `bytes` as the archive, extracts `image` from it, and checks the
    /// world outside the target.
    fn extract(&self, bytes: &[u8], image: Option<&str>, what: &str) -> Outcome {
        self.clear_target();
        fs::write(self.archive(), bytes).unwrap();
        let before = self.world();
        let (file, target) = (self.archive(), self.target());
        let image = image.map(str::to_owned);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(extract_archive(&file, image.as_deref(), &[], &target));
        });
        let outcome = match rx.recv_timeout(DEADLINE) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the extraction panicked"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what}: the extraction did not finish within {DEADLINE:?} (a loop?)")
            }
        };
        let after = self.world();
        if !tree::diff(&before, &after, &DiffOpts::exact()).is_empty() {
            eprintln!("{what}: outcome: {outcome:?}");
            tree::assert_same_snapshot(&before, &after, &DiffOpts::exact());
        }
        let listing: Vec<String> = fs::read_dir(self.work())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        match &outcome {
            Ok(_) => assert_eq!(listing, ["out"], "{what}: after a success"),
            Err(e) => {
                assert!(
                    listing.is_empty(),
                    "{what}: after a failure ({e}) the target's parent holds {listing:?}"
                );
                for bad in ["panicked", "internal error"] {
                    assert!(!e.contains(bad), "{what}: {e}");
                }
            }
        }
        outcome
    }

    fn refused(&self, a: &Archive, what: &str) -> String {
        self.refused_bytes(&a.bytes(), what)
    }

    fn refused_bytes(&self, bytes: &[u8], what: &str) -> String {
        match self.extract(bytes, Some(TAG), what) {
            Ok(stats) => panic!("{what}: expected a refusal, the extraction succeeded: {stats:?}"),
            Err(e) => {
                eprintln!("{what}: {e}");
                e
            }
        }
    }
}

fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for (k, n) in tree::snapshot(p) {
        if n.kind == tree::Kind::Dir {
            let _ = fs::set_permissions(p.join(k), fs::Permissions::from_mode(0o755));
        }
    }
}

/// Every needle occurs in `msg` (case-insensitive).
#[track_caller]
fn assert_mentions(msg: &str, needles: &[&str]) {
    let lower = msg.to_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_lowercase()),
            "message should mention {n:?}: {msg}"
        );
    }
}

/// At least one needle occurs in `msg` (case-insensitive).
#[track_caller]
fn assert_mentions_any(msg: &str, needles: &[&str]) {
    let lower = msg.to_lowercase();
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "message should mention one of {needles:?}: {msg}"
    );
}

/// `../` once per directory level of `member`: from its directory to the root.
fn up_to_root(member: &str) -> String {
    "../".repeat(member.matches('/').count())
}

/// A small two-layer image, for the hostile cases.
fn small_spec() -> ImageSpec {
    ImageSpec::new(vec![
        Layer::new(
            vec![
                Entry::dir("cnb/"),
                Entry::file("cnb/lifecycle", "lifecycle"),
                Entry::file("cnb/big", vec![b'x'; 5000]),
            ],
            Compression::Gzip,
        ),
        Layer::new(
            vec![Entry::file("cnb/second", "second layer")],
            Compression::Gzip,
        ),
    ])
}

fn small(format: Format) -> Archive {
    ArchiveBuilder::new(format)
        .image(small_spec(), &[TAG])
        .build()
}

/// Fragments that identify layer `i` in a message: its member name, and for
/// formats with a layout inside, its digest (a source may look blobs up by it).
fn layer_ids(a: &Archive, i: usize) -> Vec<String> {
    let mut v = vec![a.layer_member(0, i).to_owned()];
    if a.format.has_oci_layout() {
        let d = &a.images[0].layer_digests[i];
        v.push(d.trim_start_matches("sha256:").to_owned());
    }
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn sound_archives_pass_the_sandbox() {
    let sb = Sandbox::new();
    for format in Format::ALL {
        let what = format!("{}: sound", format.name());
        sb.extract(&small(format).bytes(), Some(TAG), &what)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            fs::read_to_string(sb.target().join("cnb/second")).unwrap(),
            "second layer"
        );
    }
}

#[test]
fn members_named_outside_the_archive_are_refused() {
    let sb = Sandbox::new();
    for format in Format::ALL {
        for bad in [
            "../escape/layer.tar",
            "../../outside/victim",
            "/abs/layer.tar",
            "x/../../y.tar",
            "/../outside/victim",
        ] {
            for (i, kind) in [(0, "layer"), (usize::MAX, "config")] {
                let mut a = small(format);
                let (old, mut ids) = if i == usize::MAX {
                    let c = a.config_member(0).to_owned();
                    let hex = a.images[0].config_digest[7..].to_owned();
                    (c, vec![hex])
                } else {
                    (a.layer_member(0, i).to_owned(), layer_ids(&a, i))
                };
                a.rename_member(&old, bad);
                ids.push(bad.to_owned());
                let what = format!("{}: {kind} member named {bad:?}", format.name());
                let e = sb.refused(&a, &what);
                assert_mentions_any(&e, &strs(&ids));
            }
        }
    }
}

/// Hostile members nothing refers to: harmless if ignored, refused if not; never
/// written anywhere.
#[test]
fn unreferenced_hostile_members_are_never_written() {
    let sb = Sandbox::new();
    let host = PathBuf::from(format!(
        "/tmp/locald-docker-archive-hostile-{}",
        std::process::id()
    ));
    for format in Format::ALL {
        let mut a = small(format);
        a.prepend_member(Entry::file("../../outside/victim", "pwned"));
        a.push_member(Entry::file("../../outside/new", "pwned"));
        a.push_member(Entry::file(host.to_str().unwrap(), "pwned"));
        a.push_member(Entry::symlink("evil-link", "/etc/passwd"));
        a.push_member(Entry::symlink("evil-rel", "../../outside/victim"));
        a.push_member(Entry::symlink("loop-1", "loop-2"));
        a.push_member(Entry::symlink("loop-2", "loop-1"));
        let what = format!("{}: unreferenced hostile members", format.name());
        match sb.extract(&a.bytes(), Some(TAG), &what) {
            Ok(_) => assert_eq!(
                fs::read_to_string(sb.target().join("cnb/second")).unwrap(),
                "second layer"
            ),
            Err(e) => assert_mentions_any(
                &e,
                &[
                    "../../outside/victim",
                    "../../outside/new",
                    host.to_str().unwrap(),
                    "evil-link",
                    "evil-rel",
                    "loop-1",
                    "loop-2",
                ],
            ),
        }
        assert!(
            fs::symlink_metadata(&host).is_err(),
            "{what}: wrote {}",
            host.display()
        );
    }
}

#[test]
fn symlinked_members_pointing_outside_are_refused() {
    let sb = Sandbox::new();
    for format in Format::ALL {
        for i in 0..2 {
            let a0 = small(format);
            let member = a0.layer_member(0, i).to_owned();
            for target in [
                format!("{}../outside/victim", up_to_root(&member)),
                format!("{}../../../../../../etc/passwd", up_to_root(&member)),
                "/etc/passwd".to_owned(),
                sb.path()
                    .join("outside/victim")
                    .to_str()
                    .unwrap()
                    .to_owned(),
            ] {
                let mut a = a0.clone();
                a.symlink_member(&member, &target);
                let what = format!("{}: layer {i} -> {target:?}", format.name());
                let e = sb.refused(&a, &what);
                assert_mentions_any(&e, &strs(&layer_ids(&a, i)));
            }
            // A hop inside the archive first, then out.
            let mut a = a0.clone();
            a.symlink_member(&member, &format!("{}hop", up_to_root(&member)));
            a.push_member(Entry::symlink("hop", "../outside/victim"));
            let what = format!("{}: layer {i} -> hop -> outside", format.name());
            let e = sb.refused(&a, &what);
            let mut ids = layer_ids(&a, i);
            ids.push("hop".into());
            assert_mentions_any(&e, &strs(&ids));
        }
    }
}

#[test]
fn symlinked_member_loops_are_refused() {
    let sb = Sandbox::new();
    for format in Format::ALL {
        let a0 = small(format);
        let member = a0.layer_member(0, 1).to_owned();
        let up = up_to_root(&member);
        let base = member.rsplit('/').next().unwrap().to_owned();
        let cases: Vec<(&str, Vec<Entry>, String)> = vec![
            (
                "a -> b -> a",
                vec![
                    Entry::symlink("loop-a", "loop-b"),
                    Entry::symlink("loop-b", "loop-a"),
                ],
                format!("{up}loop-a"),
            ),
            ("itself", vec![], base),
            (
                "back to the member",
                vec![Entry::symlink("loop-a", &member)],
                format!("{up}loop-a"),
            ),
            (
                "a long chain",
                (0..100)
                    .map(|n| Entry::symlink(format!("c{n}"), format!("c{}", n + 1)))
                    .chain([Entry::symlink("c100", "c0")])
                    .collect(),
                format!("{up}c0"),
            ),
        ];
        for (case, extra, target) in cases {
            let mut a = a0.clone();
            a.symlink_member(&member, &target);
            for e in extra {
                a.push_member(e);
            }
            let what = format!("{}: symlink loop, {case}", format.name());
            let e = sb.refused(&a, &what);
            assert_mentions_any(&e, &["loop", "cycle", "too many", "links"]);
        }
    }
}

#[test]
fn missing_members_are_refused() {
    let sb = Sandbox::new();
    for format in Format::ALL {
        // manifest.json names a member that is not there.
        let mut a = small(format);
        let mut m = a.manifest();
        m[0]["Layers"][1] = serde_json::json!("missing/layer.tar");
        a.set_manifest(&m);
        let what = format!("{}: manifest.json names a missing layer", format.name());
        match sb.extract(&a.bytes(), Some(TAG), &what) {
            Err(e) => assert_mentions(&e, &["missing/layer.tar"]),
            // A Docker 25 archive is also an OCI layout, complete without it.
            Ok(_) if format.has_oci_layout() => {}
            Ok(s) => panic!("{what}: succeeded: {s:?}"),
        }

        let mut a = small(format);
        let mut m = a.manifest();
        m[0]["Config"] = serde_json::json!("missing.json");
        a.set_manifest(&m);
        let what = format!("{}: manifest.json names a missing config", format.name());
        match sb.extract(&a.bytes(), Some(TAG), &what) {
            Err(e) => assert_mentions(&e, &["missing.json"]),
            Ok(_) if format.has_oci_layout() => {}
            Ok(s) => panic!("{what}: succeeded: {s:?}"),
        }

        // The layer member itself is gone.
        let mut a = small(format);
        let l = a.layer_member(0, 1).to_owned();
        a.remove_member(&l);
        let e = sb.refused(&a, &format!("{}: layer member removed", format.name()));
        assert_mentions_any(&e, &strs(&layer_ids(&a, 1)));

        // The config member is gone.
        let mut a = small(format);
        let c = a.config_member(0).to_owned();
        a.remove_member(&c);
        let e = sb.refused(&a, &format!("{}: config member removed", format.name()));
        assert_mentions_any(&e, &[c.as_str(), &a.images[0].config_digest[7..]]);

        // A symlinked member pointing at nothing.
        let mut a = small(format);
        let l = a.layer_member(0, 0).to_owned();
        a.symlink_member(&l, &format!("{}nowhere.tar", up_to_root(&l)));
        let e = sb.refused(&a, &format!("{}: dangling symlink member", format.name()));
        let mut ids = layer_ids(&a, 0);
        ids.push("nowhere.tar".into());
        assert_mentions_any(&e, &strs(&ids));
    }
}

#[test]
fn oversized_json_is_refused() {
    let sb = Sandbox::new();
    let limit = usize::try_from(MAX_JSON_BYTES).unwrap();
    for format in Format::ALL {
        let mut a = small(format);
        a.pad_manifest(limit + 1);
        let what = format!("{}: manifest.json of {} bytes", format.name(), limit + 1);
        let e = sb.refused(&a, &what);
        assert_mentions(&e, &["manifest.json"]);
        assert_mentions_any(
            &e,
            &["too large", "too big", "limit", "exceed", "bytes", "MiB"],
        );
    }
    // The limit itself is fine (valid JSON padded with spaces).
    let mut a = small(Format::Legacy);
    a.pad_manifest(1024 * 1024);
    sb.extract(&a.bytes(), Some(TAG), "manifest.json of 1 MiB")
        .unwrap_or_else(|e| panic!("a 1 MiB manifest.json: {e}"));
}

#[test]
fn truncated_archives_are_refused() {
    let sb = Sandbox::new();
    for format in Format::ALL {
        let a = small(format);
        let l = a.layer_member(0, 0).to_owned();
        let e = sb.refused_bytes(
            &a.truncated_in(&l),
            &format!("{}: cut mid-layer", format.name()),
        );
        assert_mentions_any(&e, &["truncated", "unexpected end", "eof", "short"]);
        // Cut inside the header of the last member.
        let last = a.names().last().unwrap().clone();
        let (start, _) = a.content_range(&last);
        let cut = a.bytes()[..start - 300].to_vec();
        let e = sb.refused_bytes(&cut, &format!("{}: cut in a header", format.name()));
        // A cut download, not "not a tar archive".
        assert_mentions_any(&e, &["truncated", "unexpected end", "eof", "short"]);
        // Nothing but the first half of the first member.
        let first = a.names()[0].clone();
        let (start, len) = a.content_range(&first);
        let cut = a.bytes()[..start + len / 2].to_vec();
        sb.refused_bytes(&cut, &format!("{}: cut in the first member", format.name()));
    }
}

#[test]
fn layers_not_matching_their_digests_are_refused() {
    let sb = Sandbox::new();
    for format in Format::ALL {
        // A valid layer, but not the one the config's diff_id names.
        let mut a = small(format);
        let l = a.layer_member(0, 1).to_owned();
        let evil = Layer::new(
            vec![Entry::file("cnb/second", "EVIL!! layer")],
            if format == Format::ContainerdStore {
                Compression::Gzip
            } else {
                Compression::None
            },
        );
        a.set_content(&l, evil.blob());
        let what = format!("{}: layer 2 replaced", format.name());
        let e = sb.refused(&a, &what);
        assert_mentions_any(&e, &["digest", "diff_id", "mismatch", "size", "bytes but"]);

        // One flipped byte in file content (the middle of the 5000 x's).
        let mut a = small(format);
        let l = a.layer_member(0, 0).to_owned();
        if format == Format::ContainerdStore {
            a.corrupt_member(&l);
        } else {
            let mut c = a.content(&l).unwrap().to_vec();
            let at = c
                .windows(100)
                .position(|w| w.iter().all(|&b| b == b'x'))
                .unwrap();
            c[at + 50] = b'y';
            a.set_content(&l, c);
        }
        let what = format!("{}: one byte of layer 1 flipped", format.name());
        let e = sb.refused(&a, &what);
        assert_mentions_any(
            &e,
            &[
                "digest", "diff_id", "mismatch", "gzip", "deflate", "corrupt",
            ],
        );
    }
}

/// The layers of an archive go through the same confinement as any other.
#[test]
fn hostile_layer_entries_stay_confined() {
    let sb = Sandbox::new();
    let spec = ImageSpec::new(vec![Layer::new(
        vec![Entry::file("../../outside/victim", "pwned")],
        Compression::Gzip,
    )]);
    for format in Format::ALL {
        let a = ArchiveBuilder::new(format)
            .image(spec.clone(), &[TAG])
            .build();
        let e = sb.refused(
            &a,
            &format!("{}: layer entry ../../outside/victim", format.name()),
        );
        assert_mentions(&e, &["../../outside/victim"]);
    }
    let spec = ImageSpec::new(vec![
        Layer::new(
            vec![Entry::symlink("esc", "../../outside")],
            Compression::None,
        ),
        Layer::new(vec![Entry::file("esc/victim", "pwned")], Compression::None),
    ]);
    // Confined (or refused): the sandbox checks that nothing outside changed.
    for format in Format::ALL {
        let a = ArchiveBuilder::new(format)
            .image(spec.clone(), &[TAG])
            .build();
        let what = format!("{}: write through a symlink", format.name());
        let outcome = sb.extract(&a.bytes(), Some(TAG), &what);
        eprintln!("{what}: {outcome:?}");
    }
    // The sentinel is what it was.
    assert_eq!(
        fs::read_to_string(sb.path().join("outside/victim")).unwrap(),
        VICTIM
    );
}

// ---------------------------------------------------------------------------
// Helpers

/// `(name, link target)` of every member of the tar at `path`.
fn tar_names(path: &Path) -> Vec<(String, Option<String>)> {
    let bytes = fs::read(path).unwrap();
    tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned()),
            )
        })
        .collect()
}

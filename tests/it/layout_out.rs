//! Images written: the run image placed where the lifecycle reads it
//! (`locald_build::placement`), and the app image the lifecycle exported copied
//! into an OCI layout or a docker archive (the `ImageDestination`s of
//! `locald_source_oci_layout` and `locald_source_docker_archive`), each checked by
//! real peers (skopeo, umoci) and by our own sources.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use locald_build::placement::{layout_path_for, place_image, Placed};
use locald_core::destination::{copy_image, CopyOptions, ImageDestination, Written};
use locald_core::manifest::valid_ref_name;
use locald_core::oci_spec::image::Descriptor;
use locald_core::source::{self, BlobReader, BoxFuture, Document, ImageSource};
use locald_core::{ImageReference, Platform};
use locald_source_docker_archive::{familiar_name, DockerArchive, DockerArchiveDestination};
use locald_source_oci_layout::{
    prune_layout_blobs, read_single_image, Existing, OciLayout, OciLayoutDestination,
};
use locald_tests::fixture::{
    Compression, Entry, ImageInfo, ImageSpec, IndexInfo, IndexSpec, Layer, LayoutBuilder,
};
use locald_tests::tree::{self, DiffOpts};
use locald_tests::{peers, require};
use serde_json::Value;

use crate::common;
use crate::conformance::{semantic_layers, strip_implicit};

const RUN_REF: &str = "docker.io/library/run:22";
const APP_REF: &str = "docker.io/library/app:latest";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The single image of the layout `image_layout` (what the lifecycle exports)
/// copied into `destination`, as a build's output step does.
fn copy_single(
    image_layout: &Path,
    destination: &dyn ImageDestination,
) -> locald_core::Result<Written> {
    let image = read_single_image(image_layout)?;
    let source = OciLayout::open(image_layout)?;
    rt().block_on(copy_image(
        &source,
        &image,
        destination,
        &CopyOptions::default(),
    ))
}

/// The build's OCI layout output: the lifecycle's image into the layout `to`
/// under `name`.
fn write_oci_layout(image_layout: &Path, to: &Path, name: &str) -> locald_core::Result<Written> {
    let image = read_single_image(image_layout)?;
    let destination = rt().block_on(OciLayoutDestination::open(
        to,
        vec![name.to_owned()],
        Existing::Merge,
    ))?;
    let source = OciLayout::open(image_layout)?;
    rt().block_on(copy_image(
        &source,
        &image,
        &destination,
        &CopyOptions::default(),
    ))
}

/// The build's docker archive output.
fn write_docker_archive(
    image_layout: &Path,
    to: &Path,
    name: &str,
) -> locald_core::Result<Written> {
    let destination = DockerArchiveDestination::create(to, &[name.to_owned()])?;
    copy_single(image_layout, &destination)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

/// Every blob file of a layout is named by its content's digest.
fn assert_blobs_verified(layout: &Path) {
    for alg in fs::read_dir(layout.join("blobs")).unwrap() {
        let alg = alg.unwrap();
        assert_eq!(alg.file_name(), "sha256");
        for b in fs::read_dir(alg.path()).unwrap() {
            let b = b.unwrap();
            let bytes = fs::read(b.path()).unwrap();
            assert_eq!(
                locald_tests::fixture::sha256_digest(&bytes),
                format!("sha256:{}", b.file_name().to_string_lossy()),
                "{}",
                b.path().display()
            );
        }
    }
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// A source wrapper that counts blob reads and can lie

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// One byte of the blob changed (same size, wrong digest).
    Flip,
    /// The blob cut short by one byte.
    Short,
    /// One byte more than the descriptor says.
    Long,
}

struct Wrapped<'a> {
    inner: &'a dyn ImageSource,
    opened: AtomicUsize,
    lie: Option<(String, Lie)>,
}

impl<'a> Wrapped<'a> {
    fn new(inner: &'a dyn ImageSource) -> Self {
        Wrapped {
            inner,
            opened: AtomicUsize::new(0),
            lie: None,
        }
    }
    fn lying(inner: &'a dyn ImageSource, digest: &str, lie: Lie) -> Self {
        Wrapped {
            lie: Some((digest.to_owned(), lie)),
            ..Wrapped::new(inner)
        }
    }
    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }
}

impl ImageSource for Wrapped<'_> {
    fn describe(&self) -> String {
        format!("wrapped {}", self.inner.describe())
    }
    fn root<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, locald_core::Result<Document>> {
        self.inner.root(image)
    }
    fn root_for<'a>(
        &'a self,
        image: Option<&'a str>,
        platform: &'a Platform,
    ) -> BoxFuture<'a, locald_core::Result<Document>> {
        self.inner.root_for(image, platform)
    }
    // Documents come through the inner source: only layer reads are counted.
    fn fetch_manifest<'a>(
        &'a self,
        descriptor: &'a Descriptor,
    ) -> BoxFuture<'a, locald_core::Result<Vec<u8>>> {
        self.inner.fetch_manifest(descriptor)
    }
    fn open_blob<'a>(
        &'a self,
        descriptor: &'a Descriptor,
    ) -> BoxFuture<'a, locald_core::Result<BlobReader>> {
        Box::pin(async move {
            self.opened.fetch_add(1, Ordering::SeqCst);
            let lie = self
                .lie
                .as_ref()
                .filter(|(d, _)| *d == descriptor.digest().to_string())
                .map(|(_, l)| *l);
            let Some(lie) = lie else {
                return self.inner.open_blob(descriptor).await;
            };
            let mut r = self.inner.open_blob(descriptor).await?;
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut bytes)
                .await
                .unwrap();
            match lie {
                Lie::Flip => {
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 0x55;
                }
                Lie::Short => {
                    bytes.pop();
                }
                Lie::Long => bytes.push(0),
            }
            let reader: BlobReader = Box::pin(std::io::Cursor::new(bytes));
            Ok(reader)
        })
    }
}

// ---------------------------------------------------------------------------
// Fixtures

fn amd_layers() -> Vec<Layer> {
    vec![
        Layer::new(
            vec![Entry::dir("etc/"), Entry::file("etc/os", "amd64 base\n")],
            Compression::Gzip,
        ),
        Layer::new(
            vec![Entry::dir("cnb/"), Entry::file("cnb/run", "amd")],
            Compression::None,
        ),
    ]
}

fn arm_layers() -> Vec<Layer> {
    vec![
        Layer::new(
            vec![Entry::dir("etc/"), Entry::file("etc/os", "arm64 base\n")],
            Compression::Gzip,
        ),
        Layer::new(
            vec![
                Entry::dir("cnb/"),
                Entry::file("cnb/run", "arm"),
                Entry::symlink("cnb/link", "run"),
            ],
            Compression::Gzip,
        ),
        Layer::new(vec![Entry::whiteout("etc", "os")], Compression::None),
    ]
}

/// A multi-platform run image (linux/amd64 + linux/arm64/v8) named `run`.
fn multi_platform_layout(dir: &Path) -> IndexInfo {
    let mut b = LayoutBuilder::new(dir);
    let info = b.add_index(
        IndexSpec::new(vec![
            ImageSpec::new(amd_layers()).platform("linux", "amd64", None),
            ImageSpec::new(arm_layers()).platform("linux", "arm64", Some("v8")),
        ])
        .ref_name("run"),
    );
    b.write().unwrap();
    info
}

fn arm64() -> Platform {
    "linux/arm64".parse().unwrap()
}

fn place(
    src: &dyn ImageSource,
    platform: &Platform,
    layout_dir: &Path,
) -> locald_core::Result<Placed> {
    let reference = ImageReference::parse(RUN_REF).unwrap();
    rt().block_on(place_image(
        src,
        Some("run"),
        platform,
        layout_dir,
        &reference,
    ))
}

/// A single-image layout as the lifecycle leaves the app image (ref name = the
/// tag), holding the semantic layers.
fn app_layout(dir: &Path) -> ImageInfo {
    let mut b = LayoutBuilder::new(dir);
    let info = b.add_image(
        ImageSpec::new(semantic_layers())
            .env("CNB_APP_DIR=/workspace")
            .ref_name("latest"),
    );
    b.write().unwrap();
    info
}

/// `umoci unpack` of `layout:reference` into `dir/name`.
fn unpack(layout: &Path, reference: &str, dir: &Path, name: &str) -> PathBuf {
    peers::umoci_unpack(layout, reference, &dir.join(name))
        .unwrap_or_else(|e| panic!("umoci unpack {}:{reference}: {e}", layout.display()))
}

fn same_tree_as_umoci(want: &Path, got: &Path) {
    let opts = DiffOpts {
        ignore_dir_mtime: true,
        ..DiffOpts::default()
    };
    tree::assert_same_tree(want, got, &opts);
}

// ---------------------------------------------------------------------------
// place_image

#[test]
fn place_picks_the_platform_and_writes_a_single_manifest_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src");
    let info = multi_platform_layout(&src_dir);
    let arm = &info.images[1];
    let src = common::layout(&src_dir);
    let counted = Wrapped::new(src.as_ref());
    let layout_dir = tmp.path().join("layout-repo");

    let placed = place(&counted, &arm64(), &layout_dir).unwrap();
    let dest = layout_dir.join("index.docker.io/library/run/22");
    assert_eq!(placed.path, dest);
    assert_eq!(placed.manifest_digest.to_string(), arm.manifest.digest);
    assert!(!placed.reused);
    assert_eq!(counted.opened(), arm.layers.len(), "one read per layer");

    // One image manifest (not an index), with its platform and name.
    let index = json(&dest.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let entry = &manifests[0];
    assert_eq!(entry["digest"], arm.manifest.digest.as_str());
    assert_eq!(
        entry["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(entry["platform"]["architecture"], "arm64");
    assert_eq!(entry["platform"]["variant"], "v8");
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        RUN_REF
    );
    assert_eq!(
        json(&dest.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    // Exactly the arm64 image's blobs, each named by its content.
    assert_blobs_verified(&dest);
    let mut want: Vec<String> = arm
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .chain([arm.config.digest.clone(), arm.manifest.digest.clone()])
        .map(|d| d[7..].to_owned())
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(names(&dest.join("blobs/sha256")), want);
    // Nothing else beside it.
    assert_eq!(names(dest.parent().unwrap()), vec!["22"]);

    // Peers read it: skopeo without a name (one image), umoci by the name.
    let raw = peers::skopeo(&["inspect", "--raw", &format!("oci:{}", dest.display())]).unwrap();
    assert_eq!(
        locald_tests::fixture::sha256_digest(raw.as_bytes()),
        arm.manifest.digest
    );
    let inspect = peers::skopeo(&["inspect", &format!("oci:{}", dest.display())]).unwrap();
    let inspect: Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Architecture"], "arm64", "{inspect}");
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3);
    let ours = unpack(&dest, RUN_REF, tmp.path(), "placed");
    let theirs = {
        // The same image straight from the source layout, through a name umoci
        // can select: the arm64 manifest listed on its own.
        let mut b = LayoutBuilder::new(tmp.path().join("arm-only"));
        b.add_image(
            ImageSpec::new(arm_layers())
                .platform("linux", "arm64", Some("v8"))
                .ref_name("x"),
        );
        b.write().unwrap();
        unpack(&tmp.path().join("arm-only"), "x", tmp.path(), "direct")
    };
    same_tree_as_umoci(&theirs, &ours);

    // Our own layout source reads it back to the same manifest.
    let again = common::layout(&dest);
    let resolved = rt()
        .block_on(source::resolve(
            again.as_ref(),
            Some("run:22"),
            &arm64(),
            true,
        ))
        .unwrap();
    assert_eq!(resolved.manifest_digest.to_string(), arm.manifest.digest);
}

#[test]
fn place_reuses_a_complete_placement_without_reading_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src");
    let info = multi_platform_layout(&src_dir);
    let src = common::layout(&src_dir);
    let layout_dir = tmp.path().join("layout-repo");
    let first = place(&Wrapped::new(src.as_ref()), &arm64(), &layout_dir).unwrap();
    assert!(!first.reused);
    let before = tree::snapshot(&first.path);

    let counted = Wrapped::new(src.as_ref());
    let second = place(&counted, &arm64(), &layout_dir).unwrap();
    assert!(second.reused);
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert_eq!(counted.opened(), 0, "a reused placement reads no blob");
    tree::assert_same_snapshot(&before, &tree::snapshot(&second.path), &DiffOpts::exact());

    // A missing layer blob makes it incomplete: placed again, fully.
    let layer = &info.images[1].layers[1].digest;
    fs::remove_file(blob_path(&first.path, layer)).unwrap();
    let counted = Wrapped::new(src.as_ref());
    let third = place(&counted, &arm64(), &layout_dir).unwrap();
    assert!(!third.reused);
    assert_eq!(counted.opened(), 3);
    assert_blobs_verified(&third.path);

    // Another platform's image replaces the one placed there.
    let amd: Platform = "linux/amd64".parse().unwrap();
    let fourth = place(&Wrapped::new(src.as_ref()), &amd, &layout_dir).unwrap();
    assert!(!fourth.reused);
    assert_eq!(
        fourth.manifest_digest.to_string(),
        info.images[0].manifest.digest
    );
    let index = json(&fourth.path.join("index.json"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        index["manifests"][0]["digest"],
        info.images[0].manifest.digest.as_str()
    );
    assert!(!blob_path(&fourth.path, &info.images[1].manifest.digest).exists());
    assert_eq!(names(fourth.path.parent().unwrap()), vec!["22"]);
}

#[test]
fn place_refuses_a_lying_source_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src");
    let info = multi_platform_layout(&src_dir);
    let src = common::layout(&src_dir);
    let layer = info.images[1].layers[1].digest.clone();
    for (i, (lie, expect)) in [
        (Lie::Flip, "does not match its digest"),
        (Lie::Short, "size is"),
        (Lie::Long, "size is"),
    ]
    .into_iter()
    .enumerate()
    {
        let layout_dir = tmp.path().join(format!("repo-{i}"));
        let lying = Wrapped::lying(src.as_ref(), &layer, lie);
        let err = place(&lying, &arm64(), &layout_dir).unwrap_err();
        let chain = common::chain(&err);
        assert!(chain.contains(expect), "{chain}");
        assert!(chain.contains("layer 2"), "{chain}");
        let parent = layout_dir.join("index.docker.io/library/run");
        assert_eq!(names(&parent), Vec::<String>::new(), "nothing published");
    }

    // A lie while replacing an older placement keeps the older one intact.
    let layout_dir = tmp.path().join("repo-replace");
    let amd: Platform = "linux/amd64".parse().unwrap();
    let old = place(&Wrapped::new(src.as_ref()), &amd, &layout_dir).unwrap();
    let before = tree::snapshot(&old.path);
    let lying = Wrapped::lying(src.as_ref(), &layer, Lie::Flip);
    place(&lying, &arm64(), &layout_dir).unwrap_err();
    tree::assert_same_snapshot(&before, &tree::snapshot(&old.path), &DiffOpts::exact());
    assert_eq!(names(old.path.parent().unwrap()), vec!["22"]);
}

#[test]
fn place_cleans_a_dead_temporary() {
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src");
    multi_platform_layout(&src_dir);
    let src = common::layout(&src_dir);
    let layout_dir = tmp.path().join("layout-repo");
    let parent = layout_dir.join("index.docker.io/library/run");
    let dead = parent.join(".22.locald-tmp-dead01");
    fs::create_dir_all(dead.join("blobs/sha256")).unwrap();
    fs::write(dead.join("oci-layout"), "half").unwrap();
    fs::write(parent.join(".other.locald-tmp-x"), "not ours").unwrap();
    let placed = place(src.as_ref(), &arm64(), &layout_dir).unwrap();
    assert_eq!(names(&parent), vec![".other.locald-tmp-x", "22"]);
    assert!(placed.path.join("index.json").is_file());
}

#[test]
fn layout_paths_follow_the_lifecycle() {
    for (r, p) in [
        ("ubuntu:22.04", "index.docker.io/library/ubuntu/22.04"),
        (
            "heroku/heroku:22-cnb",
            "index.docker.io/heroku/heroku/22-cnb",
        ),
        ("127.0.0.1:5000/cnb/run:base", "127.0.0.1:5000/cnb/run/base"),
    ] {
        assert_eq!(
            layout_path_for(&ImageReference::parse(r).unwrap()),
            PathBuf::from(p)
        );
    }
}

// ---------------------------------------------------------------------------
// write_oci_layout

#[test]
fn oci_layout_output_is_read_by_skopeo_umoci_and_our_source() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let info = app_layout(&app);
    let out = tmp.path().join("out");

    let written = write_oci_layout(&app, &out, APP_REF).unwrap();
    assert_eq!(written.manifest_digest.to_string(), info.manifest.digest);
    assert_eq!(written.config_digest.to_string(), info.config.digest);
    assert!(written.size > 0);
    assert_blobs_verified(&out);
    let index = json(&out.join("index.json"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        APP_REF
    );
    assert_eq!(names(tmp.path()), vec!["app", "out"], "no temporary left");

    // umoci by the full reference gives the tree umoci gives from the source.
    let want = unpack(&app, "latest", tmp.path(), "want");
    let got = unpack(&out, APP_REF, tmp.path(), "got");
    same_tree_as_umoci(&want, &got);

    // skopeo by the full reference.
    let copied = tmp.path().join("copied");
    peers::skopeo_copy(
        &format!("oci:{}:{APP_REF}", out.display()),
        &format!("oci:{}:x", copied.display()),
        &[],
    )
    .unwrap();
    let again = unpack(&copied, "x", tmp.path(), "again");
    same_tree_as_umoci(&want, &again);

    // Our source by any spelling of the name.
    for name in ["app", "app:latest", APP_REF] {
        let target = tmp.path().join(format!("ours-{}", name.len()));
        common::extract(&out, Some(name), &[], &target).unwrap();
        tree::assert_same_snapshot(
            &strip_implicit(tree::snapshot(&want)),
            &strip_implicit(tree::snapshot(&target)),
            &DiffOpts::rootless(),
        );
    }
}

#[test]
fn oci_layout_output_merges_into_an_existing_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A layout umoci made, holding an image of its own.
    peers::umoci_build(
        &out,
        "theirs",
        vec![Box::new(|r: &Path| {
            fs::write(r.join("theirs"), "x").unwrap()
        })],
    )
    .unwrap();
    let theirs_before = unpack(&out, "theirs", tmp.path(), "theirs-before");

    let app = tmp.path().join("app");
    let info = app_layout(&app);
    write_oci_layout(&app, &out, APP_REF).unwrap();

    // A second app image under another name, then the first name replaced.
    let app2 = tmp.path().join("app2");
    let mut b = LayoutBuilder::new(&app2);
    let info2 = b.add_image(
        ImageSpec::new(vec![Layer::new(
            vec![Entry::file("second", "2")],
            Compression::Gzip,
        )])
        .ref_name("latest"),
    );
    b.write().unwrap();
    write_oci_layout(&app2, &out, "docker.io/library/app:2").unwrap();
    write_oci_layout(&app2, &out, APP_REF).unwrap();

    let index = json(&out.join("index.json"));
    let entries: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(entries.len(), 3, "{index}");
    assert_eq!(entries[0].0, "theirs");
    assert!(entries.contains(&(
        "docker.io/library/app:2".to_owned(),
        info2.manifest.digest.clone()
    )));
    assert!(entries.contains(&(APP_REF.to_owned(), info2.manifest.digest.clone())));
    assert!(!entries.iter().any(|(_, d)| *d == info.manifest.digest));
    assert_blobs_verified(&out);
    assert!(
        !names(&out.join("blobs/sha256"))
            .iter()
            .any(|n| n.starts_with('.')),
        "no blob temporaries left"
    );

    // The other image is untouched, and every name reads.
    let theirs_after = unpack(&out, "theirs", tmp.path(), "theirs-after");
    same_tree_as_umoci(&theirs_before, &theirs_after);
    let s = tree::snapshot(&unpack(&out, APP_REF, tmp.path(), "app"));
    assert!(s.contains_key("second"));
    peers::skopeo(&[
        "inspect",
        &format!("oci:{}:docker.io/library/app:2", out.display()),
    ])
    .unwrap();
}

#[test]
fn oci_layout_output_refuses_what_is_not_a_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    app_layout(&app);

    let busy = tmp.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("notes.txt"), "mine").unwrap();
    let err = write_oci_layout(&app, &busy, APP_REF)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither empty nor an OCI image layout"),
        "{err}"
    );
    assert_eq!(names(&busy), vec!["notes.txt"]);

    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let err = write_oci_layout(&app, &file, APP_REF)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a directory"), "{err}");

    let err = write_oci_layout(&app, &tmp.path().join("n"), "bad name!")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad name!"), "{err}");

    // An empty directory is fine.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    write_oci_layout(&app, &empty, APP_REF).unwrap();
    assert!(empty.join("oci-layout").is_file());
}

#[test]
fn oci_layout_output_verifies_what_it_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let info = app_layout(&app);
    // The lifecycle's layout got a layer damaged (same size).
    let layer = blob_path(&app, &info.layers[0].digest);
    let mut bytes = fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&layer, bytes).unwrap();
    let out = tmp.path().join("out");
    let err = common::chain(&write_oci_layout(&app, &out, APP_REF).unwrap_err());
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(!out.exists());
    assert_eq!(names(tmp.path()), vec!["app"], "no temporary left");
    // And into an existing layout: nothing named, no stray blob.
    let existing = tmp.path().join("existing");
    peers::umoci_init(&existing).unwrap();
    let index_before = fs::read(existing.join("index.json")).unwrap();
    write_oci_layout(&app, &existing, APP_REF).unwrap_err();
    assert_eq!(fs::read(existing.join("index.json")).unwrap(), index_before);
    assert!(!blob_path(&existing, &info.layers[0].digest).exists());
    assert!(
        !names(&existing.join("blobs/sha256"))
            .iter()
            .any(|n| n.starts_with('.')),
        "no blob temporaries left"
    );

    // A layout of two images is not "the" image.
    let two = tmp.path().join("two");
    let mut b = LayoutBuilder::new(&two);
    b.add_image(ImageSpec::new(vec![]).ref_name("a"));
    b.add_image(
        ImageSpec::new(vec![Layer::new(
            vec![Entry::file("f", "f")],
            Compression::Gzip,
        )])
        .ref_name("b"),
    );
    b.write().unwrap();
    let err = write_oci_layout(&two, &tmp.path().join("o2"), APP_REF)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds 2 images"), "{err}");
}

// ---------------------------------------------------------------------------
// write_docker_archive

#[test]
fn docker_archive_output_is_read_by_skopeo_and_our_source() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let info = app_layout(&app);
    let archive = tmp.path().join("app.tar");

    let written = write_docker_archive(&app, &archive, APP_REF).unwrap();
    assert_eq!(written.manifest_digest.to_string(), info.manifest.digest);
    assert_eq!(written.config_digest.to_string(), info.config.digest);
    assert_eq!(written.size, fs::metadata(&archive).unwrap().len());
    assert_eq!(
        names(tmp.path()),
        vec!["app", "app.tar"],
        "no temporary left"
    );

    // The members, sorted, with fixed metadata; manifest.json as docker writes it.
    let bytes = fs::read(&archive).unwrap();
    let mut a = tar::Archive::new(&bytes[..]);
    let mut members = Vec::new();
    let mut manifest = Value::Null;
    let mut repositories = Value::Null;
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let h = e.header();
        assert_eq!(
            (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
            (0, 0, 0),
            "{name}"
        );
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut content).unwrap();
        match name.as_str() {
            "manifest.json" => manifest = serde_json::from_slice(&content).unwrap(),
            "repositories" => repositories = serde_json::from_slice(&content).unwrap(),
            _ => {}
        }
        members.push(name.trim_end_matches('/').to_owned());
    }
    let mut sorted = members.clone();
    sorted.sort();
    assert_eq!(members, sorted);
    for m in [
        "oci-layout",
        "index.json",
        "manifest.json",
        "repositories",
        "blobs/sha256",
    ] {
        assert!(members.contains(&m.to_owned()), "{m} in {members:?}");
    }
    let blob = |d: &str| format!("blobs/sha256/{}", &d[7..]);
    assert_eq!(manifest[0]["Config"], blob(&info.config.digest).as_str());
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["app:latest"]));
    let layers: Vec<String> = info.layers.iter().map(|l| blob(&l.digest)).collect();
    assert_eq!(manifest[0]["Layers"], serde_json::json!(layers));
    assert!(manifest[0].get("LayerSources").is_none());
    assert_eq!(
        repositories["app"]["latest"],
        &info.diff_ids.last().unwrap()[7..]
    );

    // Deterministic.
    let again = tmp.path().join("again.tar");
    write_docker_archive(&app, &again, APP_REF).unwrap();
    assert_eq!(fs::read(&again).unwrap(), bytes);
    // Rewritten in place.
    write_docker_archive(&app, &archive, APP_REF).unwrap();
    assert_eq!(fs::read(&archive).unwrap(), bytes);

    // skopeo reads it, and gets the tree umoci gives from the source layout.
    let inspect =
        peers::skopeo(&["inspect", &format!("docker-archive:{}", archive.display())]).unwrap();
    let inspect: Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        inspect["Layers"].as_array().unwrap().len(),
        info.layers.len()
    );
    let copied = tmp.path().join("copied");
    peers::skopeo_copy(
        &format!("docker-archive:{}:app:latest", archive.display()),
        &format!("oci:{}:x", copied.display()),
        &[],
    )
    .unwrap();
    let want = unpack(&app, "latest", tmp.path(), "want");
    let got = unpack(&copied, "x", tmp.path(), "got");
    same_tree_as_umoci(&want, &got);

    // Our docker-archive source, by the repo tag as written and as a full name.
    for name in ["app:latest", APP_REF, "app"] {
        let src = DockerArchive::open(&archive).unwrap();
        let target = tmp.path().join(format!("ours-{}", name.len()));
        common::extract_from(&src, Some(name), &[], &target).unwrap();
        tree::assert_same_snapshot(
            &strip_implicit(tree::snapshot(&want)),
            &strip_implicit(tree::snapshot(&target)),
            &DiffOpts::rootless(),
        );
        let resolved = rt()
            .block_on(source::resolve(
                &src,
                Some(name),
                &"linux/amd64".parse().unwrap(),
                true,
            ))
            .unwrap();
        assert_eq!(resolved.config_digest.to_string(), info.config.digest);
        let digests: Vec<String> = resolved
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect();
        let want_digests: Vec<String> = info.layers.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(digests, want_digests, "layers keep their blob digests");
    }
    // The archive's OCI layout half reads too.
    let unpacked = tmp.path().join("unpacked-archive");
    fs::create_dir(&unpacked).unwrap();
    tar::Archive::new(&bytes[..]).unpack(&unpacked).unwrap();
    let src = common::layout(&unpacked);
    rt().block_on(source::resolve(
        src.as_ref(),
        Some("app:latest"),
        &"linux/amd64".parse().unwrap(),
        true,
    ))
    .unwrap();
    peers::skopeo(&["inspect", &format!("oci:{}:latest", unpacked.display())]).unwrap();
}

#[test]
fn docker_archive_repo_tags_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    app_layout(&app);
    for (name, tag) in [
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000/team/app:v1"),
        ("heroku/app:22", "heroku/app:22"),
    ] {
        let archive = tmp.path().join(format!("{}.tar", tag.len()));
        write_docker_archive(&app, &archive, name).unwrap();
        let src = DockerArchive::open(&archive).unwrap();
        let resolved = rt()
            .block_on(source::resolve(
                &src,
                Some(tag),
                &"linux/amd64".parse().unwrap(),
                true,
            ))
            .unwrap();
        assert_eq!(resolved.layers.len(), semantic_layers().len());
        assert_eq!(familiar_name(&ImageReference::parse(name).unwrap()), tag);
        // skopeo finds it by that tag.
        peers::skopeo(&[
            "inspect",
            &format!("docker-archive:{}:{tag}", archive.display()),
        ])
        .unwrap();
    }

    let err = write_docker_archive(&app, Path::new("-"), APP_REF)
        .unwrap_err()
        .to_string();
    assert!(err.contains("standard output"), "{err}");
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let err = write_docker_archive(
        &app,
        &tmp.path().join("d.tar"),
        &format!("app@sha256:{hex}"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not by digest"), "{err}");
    let err = write_docker_archive(&app, tmp.path(), APP_REF)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a directory"), "{err}");

    // A damaged blob: no archive, no temporary.
    let info_layer = {
        let index = json(&app.join("index.json"));
        let m = json(&blob_path(
            &app,
            index["manifests"][0]["digest"].as_str().unwrap(),
        ));
        m["layers"][1]["digest"].as_str().unwrap().to_owned()
    };
    let p = blob_path(&app, &info_layer);
    let mut bytes = fs::read(&p).unwrap();
    bytes[0] ^= 1;
    fs::write(&p, bytes).unwrap();
    let out = tmp.path().join("bad.tar");
    let err = common::chain(&write_docker_archive(&app, &out, APP_REF).unwrap_err());
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(!out.exists());
    assert!(
        !names(tmp.path()).iter().any(|n| n.contains("locald-tmp")),
        "{:?}",
        names(tmp.path())
    );
}

#[test]
fn ref_names_are_what_skopeo_and_umoci_accept() {
    // Our check agrees with the peers on names they take and refuse.
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("l");
    peers::umoci_init(&layout).unwrap();
    for name in [
        "docker.io/library/app:latest",
        "127.0.0.1:5000/a/b:1",
        "v1.0--rc+1",
    ] {
        assert!(valid_ref_name(name), "{name}");
        peers::umoci_new(&layout, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["a//b", "-a", "a b"] {
        assert!(!valid_ref_name(name), "{name}");
        assert!(
            peers::umoci_new(&layout, name).is_err(),
            "umoci took {name:?}"
        );
    }
}

/// Blobs we own are hard-linked into the output; blobs of another user (the
/// build user, after a native build run by root) are copied, so their owner
/// cannot change the published image afterwards.
#[test]
fn oci_layout_output_links_only_our_own_blobs() {
    use std::os::unix::fs::MetadataExt;
    if !require::root("chowning a blob to another user") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let info = app_layout(&app);
    let theirs = blob_path(&app, &info.layers[0].digest);
    let ours = blob_path(&app, &info.layers[1].digest);
    std::os::unix::fs::lchown(&theirs, Some(4321), Some(4321)).unwrap();
    let out = tmp.path().join("out");
    write_oci_layout(&app, &out, APP_REF).unwrap();
    let out_theirs = fs::metadata(blob_path(&out, &info.layers[0].digest)).unwrap();
    let out_ours = fs::metadata(blob_path(&out, &info.layers[1].digest)).unwrap();
    assert_ne!(
        out_theirs.ino(),
        fs::metadata(&theirs).unwrap().ino(),
        "linked another user's blob"
    );
    assert_eq!(out_theirs.uid(), 0);
    assert_eq!(
        out_ours.ino(),
        fs::metadata(&ours).unwrap().ino(),
        "our own blob was copied, not linked"
    );
}

/// What the exporter left behind (blobs `index.json` no longer reaches) goes;
/// everything an image needs stays.
#[test]
fn pruning_a_layout_keeps_what_its_index_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let info = app_layout(&app);
    let stray = app.join("blobs/sha256").join("ab".repeat(32));
    fs::write(&stray, vec![7u8; 1000]).unwrap();
    let not_a_blob = app.join("blobs/sha256/notes.txt");
    fs::write(&not_a_blob, "kept").unwrap();
    let freed = prune_layout_blobs(&app).unwrap();
    assert_eq!(freed, 1000);
    assert!(!stray.exists());
    assert!(not_a_blob.exists());
    fs::remove_file(&not_a_blob).unwrap();
    assert_blobs_verified(&app);
    for layer in &info.layers {
        assert!(blob_path(&app, &layer.digest).exists());
    }
    // The layout still reads, as a whole.
    let out = tmp.path().join("out");
    write_oci_layout(&app, &out, APP_REF).unwrap();
    // A damaged index: nothing is removed.
    fs::write(&stray, b"x").unwrap();
    fs::write(app.join("index.json"), "{not json").unwrap();
    assert_eq!(prune_layout_blobs(&app).unwrap(), 0);
    assert!(stray.exists());
}

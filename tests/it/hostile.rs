//! The hostile-input corpus: archives and layouts built to escape the target,
//! confuse the applier or slip past verification.
//!
//! Every case runs in its own sandbox:
//!
//! ```text
//! tmp/
//!   layout/            the OCI layout under test
//!   outside/victim     sentinels a confined extraction never touches
//!   outside/dir/inner
//!   work/out           the target (its temporary sibling `.out.locald-tmp-*` too)
//! ```
//!
//! After every extraction, [`Sandbox::extract`] checks that nothing in the sandbox
//! but the target changed (inode numbers and mtimes included), and that `work/`
//! holds exactly `out` after a success and nothing after a failure (no published
//! tree, no leftover temporary directory). Relative symlinks in the cases are
//! chosen so that, resolved against the host instead of the image root, they land
//! on the sentinels (`../../outside` from the target root is `tmp/outside`).
//! Extractions run on a thread with a deadline, so a hang fails the test. The
//! resource bombs at the end run theirs in a child process (this test binary
//! again, running `measured_extraction_child`) whose peak memory they measure.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use locald_core::manifest::MAX_JSON_BYTES;
use locald_extract::Stats;
use locald_tests::fixture::{
    self, noise, sha256_digest, Compression, Desc, Entry, ImageInfo, ImageSpec, Layer,
    LayoutBuilder, LongNames, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, REF_NAME,
};
use locald_tests::tree::{self, DiffOpts, Kind, Snapshot};
use locald_tests::{peers, require};
use serde_json::json;
use sha2::{Digest as _, Sha512};

use crate::common;

/// The ref name every test image gets.
const NAME: &str = "name";
/// What the sentinel file holds.
const VICTIM: &str = "the victim's original content\n";
/// How long one extraction may take before the test calls it a hang.
const DEADLINE: Duration = Duration::from_secs(60);

type Outcome = Result<Stats, String>;

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
    fn layout(&self) -> PathBuf {
        self.path().join("layout")
    }
    fn outside(&self) -> PathBuf {
        self.path().join("outside")
    }
    /// The absolute host path of `outside/`, as a symlink or link target.
    fn outside_abs(&self) -> String {
        self.outside().to_str().unwrap().to_owned()
    }
    /// The absolute host path of the victim file.
    fn victim_abs(&self) -> String {
        format!("{}/victim", self.outside_abs())
    }
    fn work(&self) -> PathBuf {
        self.path().join("work")
    }
    fn target(&self) -> PathBuf {
        self.work().join("out")
    }

    /// Writes a layout holding one image named [`NAME`].
    fn image(&self, layers: Vec<Layer>) -> ImageInfo {
        let mut b = LayoutBuilder::new(self.layout());
        let info = b.add_image(ImageSpec::new(layers).ref_name(NAME));
        b.write().unwrap();
        info
    }

    /// Everything in the sandbox except the target and the metadata of its parent
    /// (the target is never read: it may hold files of many gigabytes).
    fn world(&self) -> Snapshot {
        let mut s = Snapshot::new();
        let mut add = |key: String, path: &Path| {
            let node = tree::node(path).unwrap();
            let is_dir = node.kind == Kind::Dir;
            s.insert(key.clone(), node);
            if is_dir {
                for (k, n) in tree::snapshot(path) {
                    s.insert(format!("{key}/{k}"), n);
                }
            }
        };
        let names = |dir: &Path| -> Vec<String> {
            let mut n: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        for name in names(self.path()) {
            if name != "work" {
                add(name.clone(), &self.path().join(&name));
            }
        }
        for name in names(&self.work()) {
            if name != "out" {
                add(format!("work/{name}"), &self.work().join(&name));
            }
        }
        s
    }

    /// Extracts image [`NAME`] with the given path filter, then checks that
    /// nothing but the target changed and that no temporary directory is left.
    fn extract(&self, paths: &[&str]) -> Outcome {
        self.extract_image(Some(NAME), paths)
    }

    fn extract_image(&self, image: Option<&str>, paths: &[&str]) -> Outcome {
        let (layout, target) = (self.layout(), self.target());
        let image = image.map(str::to_owned);
        let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        self.checked(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
                let r = common::extract(&layout, image.as_deref(), &paths, &target)
                    .map_err(|e| common::chain(&e));
                let _ = tx.send(r);
            });
            match rx.recv_timeout(DEADLINE) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the extraction panicked"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let readers = self.unblock_fifos();
                    panic!(
                        "the extraction did not finish within {DEADLINE:?} (a hang?); \
                         FIFOs it had open for reading: {readers:?}"
                    );
                }
            }
        })
    }

    /// Extracts image [`NAME`] (all of it) in a child process, this test binary
    /// running [`measured_extraction_child`], with the checks of
    /// [`Sandbox::extract`]; also returns the child's peak memory.
    fn extract_measured(&self) -> (Result<(), String>, Measured) {
        let mut measured = None;
        let outcome = self.checked(|| {
            let (outcome, m) = run_measured_child(&self.layout(), &self.target());
            measured = Some(m);
            outcome
        });
        let measured = measured.expect("measured");
        eprintln!(
            "child extraction: peak memory {:.1} MiB ({:.1} MiB before extracting), {}",
            measured.peak as f64 / MIB as f64,
            measured.before as f64 / MIB as f64,
            match &outcome {
                Ok(()) => "succeeded".to_owned(),
                Err(e) => format!("failed: {e}"),
            }
        );
        (outcome, measured)
    }

    /// Runs an extraction, then checks that nothing in the sandbox but the
    /// target changed and that no temporary directory is left.
    fn checked<T: std::fmt::Debug>(
        &self,
        extraction: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        let before = self.world();
        let outcome = extraction();
        let after = self.world();
        if !tree::diff(&before, &after, &DiffOpts::exact()).is_empty() {
            eprintln!("outcome: {outcome:?}");
            tree::assert_same_snapshot(&before, &after, &DiffOpts::exact());
        }
        let mut listing: Vec<String> = fs::read_dir(self.work())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        listing.sort();
        match &outcome {
            Ok(_) => assert_eq!(
                listing,
                ["out"],
                "after a success the target's parent holds {listing:?}"
            ),
            Err(e) => assert!(
                listing.is_empty(),
                "after a failure ({e}) the target's parent holds {listing:?}: \
                 a published tree or a leftover temporary directory"
            ),
        }
        if let Err(e) = &outcome {
            for bad in ["panicked", "internal error"] {
                assert!(!e.contains(bad), "{e}");
            }
        }
        outcome
    }

    /// Opens the write end of every FIFO in the sandbox that has a reader (which
    /// unblocks that reader) and returns their paths.
    fn unblock_fifos(&self) -> Vec<String> {
        let mut readers = Vec::new();
        for (k, n) in tree::snapshot(self.path()) {
            if n.kind != Kind::Fifo {
                continue;
            }
            let p = self.path().join(&k);
            let flags = rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::CLOEXEC;
            if rustix::fs::open(&p, flags, rustix::fs::Mode::empty()).is_ok() {
                readers.push(k);
            }
        }
        readers
    }

    /// A snapshot of the extracted tree.
    fn tree(&self) -> Snapshot {
        tree::snapshot(&self.target())
    }

    /// Makes a FIFO at `p` (a reader of it would block: proof it was opened).
    fn fifo(&self, p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
    }
}

/// The snapshot key, inside the image root, of an absolute host path taken as an
/// image path (absolute symlink targets are relative to the root).
fn in_root(abs: &str) -> String {
    abs.trim_start_matches('/').to_owned()
}

fn gz(entries: Vec<Entry>) -> Layer {
    Layer::new(entries, Compression::Gzip)
}

fn plain(entries: Vec<Entry>) -> Layer {
    Layer::new(entries, Compression::None)
}

fn succeeded(outcome: Outcome, what: &str) -> Stats {
    outcome.unwrap_or_else(|e| panic!("{what}: expected a confined success, got: {e}"))
}

fn refused(outcome: Outcome, what: &str) -> String {
    match outcome {
        Ok(stats) => panic!("{what}: expected a refusal, but the extraction succeeded: {stats:?}"),
        Err(e) => e,
    }
}

/// The message names layer `n` of `info` the way the applier does.
fn assert_names_layer(msg: &str, info: &ImageInfo, n: usize) {
    let want = format!("layer {n} ({})", info.layers[n - 1].digest);
    assert!(msg.contains(&want), "message should name {want:?}: {msg}");
}

/// Every needle occurs in `msg` (case-insensitive).
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
fn assert_mentions_any(msg: &str, needles: &[&str]) {
    let lower = msg.to_lowercase();
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "message should give a reason (one of {needles:?}): {msg}"
    );
}

/// The message names the archive entry (as `entry "NAME"`).
fn assert_names_entry(msg: &str, entry: &str) {
    let want = format!("{entry:?}");
    assert!(
        msg.contains(&want),
        "message should name the entry {want}: {msg}"
    );
}

fn file_content(s: &Snapshot, key: &str) -> Option<String> {
    s.get(key).and_then(|n| {
        assert_eq!(
            n.kind,
            Kind::File,
            "{key} should be a regular file:\n{}",
            tree::render(s)
        );
        n.sha256.clone()
    })
}

#[track_caller]
fn assert_file(s: &Snapshot, key: &str, content: &str) {
    assert_eq!(
        file_content(s, key),
        Some(sha256_digest(content.as_bytes())),
        "{key} should be a file holding {content:?}:\n{}",
        tree::render(s)
    );
}

#[track_caller]
fn assert_symlink(s: &Snapshot, key: &str, target: &str) {
    let n = s
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing:\n{}", tree::render(s)));
    assert_eq!(n.kind, Kind::Symlink, "{key}:\n{}", tree::render(s));
    assert_eq!(n.target.as_deref(), Some(target), "{key}");
}

/// A host path that a confined extraction can never create.
struct HostPath(PathBuf);

impl HostPath {
    fn unique(dir: &str, tag: &str) -> Self {
        HostPath(Path::new(dir).join(format!("locald-hostile-{tag}-{}", std::process::id())))
    }
    fn name(&self) -> String {
        self.0.file_name().unwrap().to_str().unwrap().to_owned()
    }
    #[track_caller]
    fn assert_absent(&self) {
        if fs::symlink_metadata(&self.0).is_ok() {
            let _ = fs::remove_file(&self.0);
            panic!("the extraction wrote {} on the host", self.0.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Names

#[test]
fn names_climbing_out_of_the_root_are_refused() {
    let cases: Vec<(&str, Entry)> = vec![
        (
            "../../outside/victim",
            Entry::file("../../outside/victim", "pwned"),
        ),
        ("a/../../x", Entry::file("a/../../x", "pwned")),
        ("../x", Entry::file("../x", "pwned")),
        (
            "/../outside/victim",
            Entry::file("/../outside/victim", "pwned"),
        ),
        (
            "./../../outside/victim",
            Entry::file("./../../outside/victim", "pwned"),
        ),
        ("../../outside/newdir/", Entry::dir("../../outside/newdir/")),
        (
            "../../outside/evil",
            Entry::symlink("../../outside/evil", "victim"),
        ),
        ("../../outside/fifo", Entry::fifo("../../outside/fifo")),
        (
            "../../outside/null",
            Entry::char_dev("../../outside/null", 1, 3),
        ),
        ("..", Entry::dir("..")),
    ];
    for (name, entry) in cases {
        let sb = Sandbox::new();
        let info = sb.image(vec![
            gz(vec![Entry::file("lower", "lower")]),
            gz(vec![Entry::file("ok", "ok"), entry]),
        ]);
        let msg = refused(sb.extract(&[]), name);
        assert_names_layer(&msg, &info, 2);
        assert_names_entry(&msg, name);
        assert_mentions_any(&msg, &["climb", "escape", "outside the", "root"]);
    }
}

#[test]
fn absolute_and_dot_names_land_inside() {
    let sb = Sandbox::new();
    sb.image(vec![gz(vec![
        Entry::dir("./"),
        Entry::dir("/"),
        Entry::file("/abs/path", "abs"),
        Entry::file("./x", "dot"),
        Entry::file("//double//slash", "double"),
        Entry::file("a/../inside", "lexical"),
        Entry::file(format!("{}/host-abs", sb.outside_abs()), "host-abs"),
    ])]);
    succeeded(sb.extract(&[]), "absolute and dot names");
    let s = sb.tree();
    assert_file(&s, "abs/path", "abs");
    assert_file(&s, "x", "dot");
    assert_file(&s, "double/slash", "double");
    assert_file(&s, "inside", "lexical");
    assert_file(
        &s,
        &format!("{}/host-abs", in_root(&sb.outside_abs())),
        "host-abs",
    );
    assert!(!s.contains_key("a"), "{}", tree::render(&s));
}

#[test]
fn the_root_cannot_become_a_file_or_symlink() {
    for (name, entry) in [
        ("./", Entry::symlink("./", "/")),
        ("/", Entry::symlink("/", "../../outside")),
        (".", Entry::file(".", "pwned")),
        ("a/..", Entry::symlink("a/..", "/tmp")),
    ] {
        let sb = Sandbox::new();
        let info = sb.image(vec![gz(vec![Entry::file("f", "f"), entry])]);
        let msg = refused(sb.extract(&[]), name);
        assert_names_layer(&msg, &info, 1);
        assert_names_entry(&msg, name);
        assert_mentions(&msg, &["root"]);
    }
}

// ---------------------------------------------------------------------------
// Symlinks leaving the root

#[test]
fn absolute_symlinks_are_relative_to_the_root() {
    let sb = Sandbox::new();
    let out = sb.outside_abs();
    sb.image(vec![gz(vec![
        Entry::symlink("evil", &out),
        Entry::file("evil/victim", "pwned"),
        Entry::dir("evil/newdir/"),
        Entry::file("evil/dir/inner", "pwned-inner"),
        Entry::symlink("cnb", "/"),
        Entry::file("cnb/at-root", "root"),
        Entry::symlink("up", "/../../.."),
        Entry::file("up/via-up", "up"),
    ])]);
    succeeded(sb.extract(&[]), "absolute symlinks");
    let s = sb.tree();
    let o = in_root(&out);
    assert_symlink(&s, "evil", &out);
    assert_file(&s, &format!("{o}/victim"), "pwned");
    assert_file(&s, &format!("{o}/dir/inner"), "pwned-inner");
    assert_eq!(s[&format!("{o}/newdir")].kind, Kind::Dir);
    assert_symlink(&s, "cnb", "/");
    assert_file(&s, "at-root", "root");
    assert_file(&s, "via-up", "up");
}

#[test]
fn relative_symlinks_climbing_out_are_confined() {
    let sb = Sandbox::new();
    sb.image(vec![gz(vec![
        Entry::symlink("evil", "../../outside"),
        Entry::file("evil/victim", "pwned"),
        Entry::dir("a/b/"),
        Entry::symlink("a/b/up", "../../../../../../../outside/dir"),
        Entry::file("a/b/up/inner", "pwned-inner"),
        Entry::symlink("a/b/top", "../../.."),
        Entry::file("a/b/top/at-root", "root"),
    ])]);
    succeeded(sb.extract(&[]), "relative symlinks");
    let s = sb.tree();
    assert_symlink(&s, "evil", "../../outside");
    assert_file(&s, "outside/victim", "pwned");
    assert_file(&s, "outside/dir/inner", "pwned-inner");
    assert_file(&s, "at-root", "root");
}

#[test]
fn chained_symlinks_are_confined() {
    let sb = Sandbox::new();
    let out = sb.outside_abs();
    let mut entries = vec![
        Entry::symlink("a", "b"),
        Entry::symlink("b", "../.."),
        Entry::file("a/x", "via-a"),
        // absolute, then relative climbing out
        Entry::symlink("c", "d/e"),
        Entry::symlink("d", &out),
        Entry::file("c/x", "via-c"),
        Entry::symlink("f", "/g"),
        Entry::symlink("g", "../../outside"),
        Entry::file("f/victim", "via-f"),
        Entry::dir("real/"),
    ];
    // A chain of 20 hops stays under any sane limit.
    for i in 0..20 {
        entries.push(Entry::symlink(format!("l{i}"), format!("l{}", i + 1)));
    }
    entries.push(Entry::symlink("l20", "real"));
    entries.push(Entry::file("l0/deep", "deep"));
    sb.image(vec![gz(entries)]);
    succeeded(sb.extract(&[]), "chained symlinks");
    let s = sb.tree();
    assert_file(&s, "x", "via-a");
    assert_file(&s, &format!("{}/e/x", in_root(&out)), "via-c");
    assert_file(&s, "outside/victim", "via-f");
    assert_file(&s, "real/deep", "deep");
}

/// Entries whose parent cannot be resolved: (entry as written, layer entries,
/// a word of the expected reason).
fn unresolvable_cases() -> Vec<(&'static str, Vec<Entry>, &'static str)> {
    vec![
        (
            "a/x",
            vec![
                Entry::symlink("a", "b"),
                Entry::symlink("b", "a"),
                Entry::file("a/x", "x"),
            ],
            "loop",
        ),
        (
            "s/x",
            vec![Entry::symlink("s", "s"), Entry::file("s/x", "x")],
            "loop",
        ),
        (
            "p/q/",
            vec![
                Entry::symlink("p", "/p/q"),
                Entry::dir("p/q/"),
                Entry::file("p/q/x", "x"),
            ],
            "loop",
        ),
        (
            "h",
            vec![
                Entry::symlink("a", "b"),
                Entry::symlink("b", "/a"),
                Entry::hardlink("h", "a/x"),
            ],
            "loop",
        ),
        (
            "a/.wh.x",
            vec![
                Entry::symlink("a", "b"),
                Entry::symlink("b", "a"),
                Entry::whiteout("a", "x"),
            ],
            "loop",
        ),
        (
            "f/x",
            vec![Entry::file("f", "f"), Entry::file("f/x", "x")],
            "not a directory",
        ),
        (
            "h",
            vec![Entry::file("f", "f"), Entry::hardlink("h", "f/x")],
            "not a directory",
        ),
    ]
}

#[test]
fn symlink_loops_and_non_directories_are_refused_without_hanging() {
    for (name, entries, reason) in unresolvable_cases() {
        let sb = Sandbox::new();
        let info = sb.image(vec![gz(vec![Entry::file("lower", "lower")]), gz(entries)]);
        let msg = refused(sb.extract(&[]), name);
        assert_names_layer(&msg, &info, 2);
        assert_mentions(&msg, &[reason]);
    }
}

/// The entry as written in the archive, not the directory on the way (the
/// committed core said `entry "/a"` for `a/x`).
#[test]
fn resolution_errors_name_the_archive_entry() {
    let mut wrong = Vec::new();
    for (name, entries, _) in unresolvable_cases() {
        let sb = Sandbox::new();
        sb.image(vec![gz(entries)]);
        let msg = refused(sb.extract(&[]), name);
        if !msg.contains(&format!("{name:?}")) {
            wrong.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "messages not naming the entry:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn writing_through_a_symlink_from_a_lower_layer_is_confined() {
    let sb = Sandbox::new();
    let out = sb.outside_abs();
    sb.image(vec![
        gz(vec![
            Entry::symlink("link", &out),
            Entry::symlink("rel", "../../outside"),
        ]),
        gz(vec![
            Entry::file("link/victim", "pwned"),
            Entry::dir("link/dir/"),
            Entry::file("link/dir/inner", "pwned-inner"),
            Entry::fifo("link/fifo"),
            Entry::file("rel/victim", "pwned-rel"),
            Entry::hardlink("rel/hard", "link/victim"),
        ]),
    ]);
    succeeded(sb.extract(&[]), "write through a lower symlink");
    let s = sb.tree();
    let o = in_root(&out);
    assert_symlink(&s, "link", &out);
    assert_symlink(&s, "rel", "../../outside");
    assert_file(&s, &format!("{o}/victim"), "pwned");
    assert_file(&s, &format!("{o}/dir/inner"), "pwned-inner");
    assert_eq!(s[&format!("{o}/fifo")].kind, Kind::Fifo);
    assert_file(&s, "outside/victim", "pwned-rel");
    assert_eq!(s["outside/hard"].inode, s[&format!("{o}/victim")].inode);
}

#[test]
fn replacing_a_symlink_to_outside_never_writes_through_it() {
    let sb = Sandbox::new();
    let (out, victim) = (sb.outside_abs(), sb.victim_abs());
    sb.image(vec![
        gz(vec![
            Entry::symlink("x", &victim),
            Entry::symlink("y", "../../outside/victim"),
            Entry::symlink("d", &out),
            Entry::symlink("e", "../../outside/dir"),
        ]),
        gz(vec![
            Entry::file("x", "new-x"),
            Entry::file("y", "new-y"),
            Entry::dir("d/").mode(0o700),
            Entry::file("d/inner", "new-inner"),
            Entry::symlink("z", &victim),
            Entry::file("z", "new-z"),
            Entry::fifo("e"),
        ]),
    ]);
    succeeded(sb.extract(&[]), "replace symlinks");
    let s = sb.tree();
    assert_file(&s, "x", "new-x");
    assert_file(&s, "y", "new-y");
    assert_file(&s, "z", "new-z");
    assert_eq!((s["d"].kind, s["d"].mode), (Kind::Dir, 0o700));
    assert_file(&s, "d/inner", "new-inner");
    assert_eq!(s["e"].kind, Kind::Fifo);
}

// ---------------------------------------------------------------------------
// Hard links

#[test]
fn hard_links_leaving_the_root_are_refused() {
    type Case = (&'static str, &'static str, fn(&Sandbox) -> Vec<Layer>);
    let cases: Vec<Case> = vec![
        ("climbing", "climbs", |_| {
            vec![gz(vec![Entry::hardlink("h", "../../outside/victim")])]
        }),
        ("climbing after a real dir", "climbs", |_| {
            vec![gz(vec![
                Entry::dir("a/"),
                Entry::hardlink("h", "a/../../../outside/victim"),
            ])]
        }),
        ("host /etc/passwd, not in the image", "not exist", |_| {
            vec![gz(vec![
                Entry::file("f", "f"),
                Entry::hardlink("h", "/etc/passwd"),
            ])]
        }),
        ("absolute host path of the victim", "not exist", |sb| {
            vec![gz(vec![Entry::hardlink("h", sb.victim_abs())])]
        }),
        ("relative symlinked parent", "not exist", |_| {
            vec![
                gz(vec![Entry::symlink("d", "../../outside")]),
                gz(vec![Entry::hardlink("h", "d/victim")]),
            ]
        }),
        ("absolute symlinked parent", "not exist", |sb| {
            vec![
                gz(vec![Entry::symlink("d", sb.outside_abs())]),
                gz(vec![Entry::hardlink("h", "d/victim")]),
            ]
        }),
    ];
    for (what, reason, layers) in cases {
        let sb = Sandbox::new();
        let layers = layers(&sb);
        let n = layers.len();
        let info = sb.image(layers);
        let msg = refused(sb.extract(&[]), what);
        assert_names_layer(&msg, &info, n);
        assert_names_entry(&msg, "h");
        assert_mentions(&msg, &[reason]);
    }
}

#[test]
fn hard_link_to_an_absolute_path_uses_the_images_own_file() {
    let sb = Sandbox::new();
    sb.image(vec![
        gz(vec![
            Entry::dir("etc/"),
            Entry::file("etc/passwd", "image-passwd"),
        ]),
        gz(vec![
            Entry::hardlink("h", "/etc/passwd"),
            Entry::hardlink("h2", "//etc/./passwd"),
            Entry::hardlink("h3", "/etc/../etc/passwd"),
        ]),
    ]);
    succeeded(sb.extract(&[]), "hard links to /etc/passwd");
    let s = sb.tree();
    for h in ["h", "h2", "h3"] {
        assert_file(&s, h, "image-passwd");
        assert_eq!(s[h].inode, s["etc/passwd"].inode, "{h}");
    }
    assert_eq!(s["h"].nlink, 4);
    if let Ok(host) = fs::metadata("/etc/passwd") {
        assert_ne!(s["h"].inode, host.ino(), "linked to the host's /etc/passwd");
    }

    // `/../etc/passwd` climbs above the root like `../x` does: refused.
    let sb = Sandbox::new();
    let info = sb.image(vec![gz(vec![
        Entry::dir("etc/"),
        Entry::file("etc/passwd", "image-passwd"),
        Entry::hardlink("h", "/../etc/passwd"),
    ])]);
    let msg = refused(sb.extract(&[]), "hard link to /../etc/passwd");
    assert_names_layer(&msg, &info, 1);
    assert_names_entry(&msg, "h");
    assert_mentions(&msg, &["/../etc/passwd", "climbs"]);
}

#[test]
fn hard_link_through_a_symlinked_parent_resolves_inside_the_root() {
    let sb = Sandbox::new();
    let out = sb.outside_abs();
    sb.image(vec![
        gz(vec![
            Entry::file(format!("{out}/victim"), "image-copy"),
            Entry::file("outside/victim", "image-rel-copy"),
            Entry::symlink("d", &out),
            Entry::symlink("r", "../../outside"),
        ]),
        gz(vec![
            Entry::hardlink("h", "d/victim"),
            Entry::hardlink("hr", "r/victim"),
            Entry::hardlink("d/h-in", "r/victim"),
        ]),
    ]);
    succeeded(sb.extract(&[]), "hard link via symlinked parent");
    let s = sb.tree();
    let o = in_root(&out);
    assert_file(&s, "h", "image-copy");
    assert_eq!(s["h"].inode, s[&format!("{o}/victim")].inode);
    assert_file(&s, "hr", "image-rel-copy");
    assert_eq!(s["hr"].inode, s["outside/victim"].inode);
    assert_eq!(s[&format!("{o}/h-in")].inode, s["outside/victim"].inode);
}

#[test]
fn hard_link_to_a_symlink_pointing_outside_links_the_symlink() {
    let sb = Sandbox::new();
    let victim = sb.victim_abs();
    sb.image(vec![
        gz(vec![
            Entry::symlink("s", &victim),
            Entry::symlink("r", "../../outside/victim"),
        ]),
        gz(vec![
            Entry::hardlink("h", "s"),
            Entry::hardlink("hr", "r"),
            Entry::hardlink("h2", "s"),
            Entry::file("h2", "replaced"),
        ]),
        gz(vec![Entry::file("hr", "replaced-r")]),
    ]);
    succeeded(sb.extract(&[]), "hard link to a symlink");
    let s = sb.tree();
    assert_symlink(&s, "h", &victim);
    assert_eq!(s["h"].inode, s["s"].inode);
    assert_file(&s, "h2", "replaced");
    assert_file(&s, "hr", "replaced-r");
    assert_symlink(&s, "r", "../../outside/victim");
}

// ---------------------------------------------------------------------------
// Whiteouts

#[test]
fn whiteouts_through_a_symlinked_parent_stay_inside() {
    let sb = Sandbox::new();
    let out = sb.outside_abs();
    let o = in_root(&out);
    sb.image(vec![
        gz(vec![
            Entry::symlink("d", &out),
            Entry::symlink("r", "../../outside"),
            Entry::file(format!("{out}/victim"), "image-copy"),
            Entry::file(format!("{out}/keep"), "keep"),
        ]),
        gz(vec![
            Entry::whiteout("d", "victim"),
            Entry::whiteout("d", "dir"),
            Entry::whiteout("r", "victim"),
            Entry::whiteout("r", "dir"),
        ]),
    ]);
    succeeded(sb.extract(&[]), "whiteouts through symlinks");
    let s = sb.tree();
    assert_symlink(&s, "d", &out);
    assert_symlink(&s, "r", "../../outside");
    assert!(
        !s.contains_key(&format!("{o}/victim")),
        "{}",
        tree::render(&s)
    );
    assert_file(&s, &format!("{o}/keep"), "keep");
    assert!(!s.contains_key("outside"), "{}", tree::render(&s));
}

#[test]
fn invalid_whiteout_names_are_refused() {
    for name in [".wh.", ".wh..", ".wh...", "d/.wh..", "d/.wh...", "d/.wh."] {
        let sb = Sandbox::new();
        let info = sb.image(vec![
            gz(vec![
                Entry::dir("d/"),
                Entry::file("d/f", "f"),
                Entry::file("g", "g"),
            ]),
            gz(vec![Entry::file("new", "new"), Entry::file(name, "")]),
        ]);
        let msg = refused(sb.extract(&[]), name);
        assert_names_layer(&msg, &info, 2);
        assert_names_entry(&msg, name);
        assert_mentions(&msg, &["whiteout"]);
    }
}

#[test]
fn opaque_markers_in_symlinked_dirs_stay_inside() {
    let sb = Sandbox::new();
    let out = sb.outside_abs();
    sb.image(vec![
        gz(vec![
            Entry::symlink("d", &out),
            Entry::symlink("r", "../../outside"),
            Entry::dir("o/"),
            Entry::symlink("o/l", &out),
            Entry::symlink("o/r", "../../../outside"),
            Entry::symlink("o/rd", "../../../outside/dir"),
            Entry::file("o/f", "f"),
        ]),
        gz(vec![
            Entry::opaque("d"),
            Entry::opaque("r"),
            Entry::opaque("o"),
            Entry::file("o/new", "new"),
            Entry::opaque("o/l"),
            Entry::opaque("o/rd"),
        ]),
    ]);
    succeeded(sb.extract(&[]), "opaque markers through symlinks");
    let s = sb.tree();
    assert_symlink(&s, "d", &out);
    assert_symlink(&s, "r", "../../outside");
    let under_o: Vec<&String> = s.keys().filter(|k| k.starts_with("o/")).collect();
    assert_eq!(under_o, ["o/new"], "{}", tree::render(&s));
}

#[test]
fn whiteouts_of_dirs_holding_symlinks_out_remove_only_the_links() {
    let sb = Sandbox::new();
    let out = sb.outside_abs();
    sb.image(vec![
        gz(vec![
            Entry::dir("w/"),
            Entry::symlink("w/l", &out),
            Entry::symlink("w/r", "../../../outside"),
            Entry::dir("w/sub/"),
            Entry::symlink("w/sub/ll", format!("{out}/dir")),
            Entry::symlink("w/sub/vv", "../../../../outside/victim"),
            Entry::symlink("x", &out),
            Entry::symlink("y", "../../outside/victim"),
            Entry::file("keep", "keep"),
        ]),
        gz(vec![
            Entry::whiteout("", "w"),
            Entry::whiteout("", "x"),
            Entry::whiteout("", "y"),
        ]),
    ]);
    succeeded(sb.extract(&[]), "whiteouts of links out");
    let s = sb.tree();
    let keys: Vec<&String> = s.keys().collect();
    assert_eq!(keys, ["keep"], "{}", tree::render(&s));
}

// ---------------------------------------------------------------------------
// /cnb replaced by a symlink, with and without a path filter

#[test]
fn cnb_replaced_by_a_symlink_is_confined() {
    let etc_probe = HostPath::unique("/etc", "cnb");
    // `../../..` from the temporary root (tmp/work/.out.locald-tmp-*) is the
    // system temporary directory.
    let tmp_probe = HostPath::unique(std::env::temp_dir().to_str().unwrap(), "cnb");
    assert_eq!(etc_probe.name(), tmp_probe.name());
    let name = etc_probe.name();
    for filter in [vec!["/cnb"], vec![]] {
        for link in ["/etc", "../../..", "../..", "/", "OUTSIDE"] {
            let sb = Sandbox::new();
            let link = if link == "OUTSIDE" {
                sb.outside_abs()
            } else {
                link.to_owned()
            };
            sb.image(vec![
                gz(vec![
                    Entry::dir("cnb/"),
                    Entry::dir("cnb/lifecycle/"),
                    Entry::file("cnb/lifecycle/creator", "creator"),
                    Entry::file("etc/passwd", "image-passwd"),
                ]),
                gz(vec![
                    Entry::symlink("cnb", &link),
                    Entry::file(format!("cnb/{name}"), "pwned"),
                    Entry::dir("cnb/lifecycle/"),
                    Entry::file("cnb/lifecycle/creator", "new-creator"),
                ]),
            ]);
            let what = format!("cnb -> {link} with filter {filter:?}");
            succeeded(sb.extract(&filter), &what);
            etc_probe.assert_absent();
            tmp_probe.assert_absent();
            let s = sb.tree();
            assert_symlink(&s, "cnb", &link);
            // Where `cnb/NAME` resolves inside the root.
            let base = match link.as_str() {
                "/etc" => "etc/".to_owned(),
                "/" | "../../.." | "../.." => String::new(),
                abs => format!("{}/", in_root(abs)),
            };
            let resolved = format!("{base}{name}");
            let hits: Vec<&String> = s.keys().filter(|k| k.ends_with(&name)).collect();
            if filter.is_empty() {
                assert_eq!(hits, [&resolved], "{what}:\n{}", tree::render(&s));
                assert_file(&s, &resolved, "pwned");
                assert_file(&s, &format!("{base}lifecycle/creator"), "new-creator");
                assert_file(&s, "etc/passwd", "image-passwd");
            } else {
                // Written where the image says, or left out: never elsewhere.
                assert!(
                    hits.is_empty() || hits == [&resolved],
                    "{what}: {hits:?}:\n{}",
                    tree::render(&s)
                );
                if !hits.is_empty() {
                    assert_file(&s, &resolved, "pwned");
                }
                assert!(!s.contains_key("etc/passwd"), "{what}: filter ignored");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Device nodes

#[test]
fn device_nodes_are_made_or_skipped_never_files() {
    let sb = Sandbox::new();
    let out = sb.outside_abs();
    sb.image(vec![gz(vec![
        Entry::dir("dev/"),
        Entry::char_dev("dev/null", 1, 3),
        Entry::block_dev("dev/loop-hostile", 7, 200),
        Entry::fifo("dev/fifo"),
        Entry::symlink("s", &out),
        Entry::char_dev("s/zero", 1, 5),
        Entry::file("dev/tty", "was a file"),
        Entry::char_dev("dev/tty", 5, 0),
    ])]);
    let stats = succeeded(sb.extract(&[]), "device nodes");
    let s = sb.tree();
    let o = in_root(&out);
    let mut skipped = 0;
    for (key, kind, rdev) in [
        ("dev/null".to_owned(), Kind::CharDev, (1, 3)),
        ("dev/loop-hostile".to_owned(), Kind::BlockDev, (7, 200)),
        (format!("{o}/zero"), Kind::CharDev, (1, 5)),
        ("dev/tty".to_owned(), Kind::CharDev, (5, 0)),
    ] {
        match s.get(&key) {
            Some(n) => {
                assert_eq!(n.kind, kind, "{key}:\n{}", tree::render(&s));
                assert_eq!(n.rdev, Some(rdev), "{key}");
            }
            None => skipped += 1,
        }
    }
    assert_eq!(stats.skipped_devices, skipped, "{stats:?}");
    assert_eq!(s["dev/fifo"].kind, Kind::Fifo);
}

// ---------------------------------------------------------------------------
// Corrupt inputs

#[test]
fn corrupt_layer_blobs_fail() {
    for c in [
        Compression::Gzip,
        Compression::GzipMultiMember,
        Compression::Zstd,
        Compression::None,
    ] {
        let sb = Sandbox::new();
        let good = gz(vec![Entry::file("good", "good")]);
        let bad = Layer::new(
            vec![
                Entry::file("big", vec![b'a'; 8192]),
                Entry::file("noise", noise(8192, 7)),
            ],
            c,
        )
        .corrupted();
        let info = sb.image(vec![good, bad]);
        let msg = refused(sb.extract(&[]), &format!("corrupt {c:?}"));
        assert_names_layer(&msg, &info, 2);
        if c == Compression::None {
            // The tar still parses: only the digest can catch it.
            assert_mentions(&msg, &["does not match its digest", "corrupt"]);
        } else {
            assert_mentions_any(&msg, &["corrupt", "digest", "truncated"]);
        }
    }
}

#[test]
fn truncated_layers_fail() {
    // gzip cut in the middle; the descriptor matches the cut bytes, the diff_id
    // is the original's.
    let full = gz(vec![
        Entry::file("a", noise(64 * 1024, 1)),
        Entry::file("b", noise(64 * 1024, 2)),
    ]);
    let blob = full.blob();
    let cut = Layer::raw(blob[..blob.len() / 2].to_vec()).with_diff_id(full.diff_id());
    let sb = Sandbox::new();
    let info = sb.image(vec![cut]);
    assert_eq!(
        info.layers[0].digest,
        sha256_digest(&blob[..blob.len() / 2])
    );
    let msg = refused(sb.extract(&[]), "truncated gzip");
    assert_names_layer(&msg, &info, 1);
    assert_mentions_any(&msg, &["truncated", "corrupt", "diff_id", "eof"]);

    // A plain tar cut at a block boundary after its first entry (no end marker):
    // the tar reads as complete, only the diff_id catches it.
    let full = plain(vec![Entry::file("a", "a"), Entry::file("b", "b")]);
    let tar = full.blob();
    let cut = Layer::raw(tar[..1024].to_vec())
        .with_compression(Compression::None)
        .with_diff_id(full.diff_id());
    let sb = Sandbox::new();
    let info = sb.image(vec![cut]);
    let msg = refused(sb.extract(&[]), "truncated plain tar");
    assert_names_layer(&msg, &info, 1);
    assert_mentions(&msg, &["diff_id", &full.diff_id()]);
}

#[test]
fn lying_descriptor_sizes_fail() {
    for c in [Compression::Gzip, Compression::None, Compression::Zstd] {
        let base = Layer::new(
            vec![Entry::file("a", noise(4096, 3)), Entry::file("b", "b")],
            c,
        );
        let len = base.blob().len() as i64;
        for size in [len + 1, len + 100_000, len - 1, len - 600, 1, 0] {
            let sb = Sandbox::new();
            let info = sb.image(vec![
                gz(vec![Entry::file("first", "first")]),
                base.clone().with_desc_size(size),
            ]);
            let what = format!("{c:?} blob of {len} bytes, descriptor says {size}");
            let msg = refused(sb.extract(&[]), &what);
            assert_names_layer(&msg, &info, 2);
            if size > len {
                // The whole blob reads fine: only the size check can catch it.
                assert_mentions(&msg, &["size", &len.to_string(), &size.to_string()]);
            } else {
                // Cut short by the declared size: the tar or the decompressor
                // may notice first.
                assert_mentions_any(&msg, &["size", "truncated", "corrupt"]);
            }
        }
    }
}

#[test]
fn trailing_garbage_after_the_tar_is_verified() {
    let garbage = noise(300 * 1024 + 17, 9);
    // Covered by the digest: fine (tools write padding after the end blocks).
    for c in [Compression::None, Compression::Gzip] {
        let mut end = vec![0u8; 1024];
        end.extend_from_slice(&garbage);
        let sb = Sandbox::new();
        sb.image(vec![
            Layer::new(vec![Entry::file("a", "a")], c).with_end(end)
        ]);
        succeeded(sb.extract(&[]), &format!("{c:?} with covered garbage"));
        assert_file(&sb.tree(), "a", "a");
    }
    // Appended after the digest was computed: the descriptor's size and digest
    // are the clean blob's.
    let base = plain(vec![Entry::file("a", "a")]);
    let mut stored = base.blob();
    stored.extend_from_slice(&garbage);
    for (what, layer, reason) in [
        (
            "appended garbage, original size",
            base.clone().with_stored_bytes(stored.clone()),
            "size",
        ),
        (
            "appended garbage, size covering it",
            base.clone()
                .with_stored_bytes(stored.clone())
                .with_desc_size(stored.len() as i64),
            "does not match its digest",
        ),
    ] {
        let sb = Sandbox::new();
        let info = sb.image(vec![layer]);
        let msg = refused(sb.extract(&[]), what);
        assert_names_layer(&msg, &info, 1);
        assert_mentions(&msg, &[reason]);
    }
}

#[test]
fn missing_blobs_fail() {
    let layers = || {
        vec![
            gz(vec![Entry::file("a", "a")]),
            gz(vec![Entry::file("b", "b")]),
        ]
    };
    // A missing layer.
    let sb = Sandbox::new();
    let mut b = LayoutBuilder::new(sb.layout());
    let info = b.add_image(ImageSpec::new(layers()).ref_name(NAME));
    b.remove_blob(&info.layers[1].digest).unwrap();
    b.write().unwrap();
    let msg = refused(sb.extract(&[]), "missing layer");
    assert_names_layer(&msg, &info, 2);
    assert_mentions(&msg, &["missing"]);
    // A missing config, a missing manifest.
    for which in ["config", "manifest"] {
        let sb = Sandbox::new();
        let mut b = LayoutBuilder::new(sb.layout());
        let info = b.add_image(ImageSpec::new(layers()).ref_name(NAME));
        let d = if which == "config" {
            &info.config.digest
        } else {
            &info.manifest.digest
        };
        b.remove_blob(d).unwrap();
        b.write().unwrap();
        let msg = refused(sb.extract(&[]), which);
        assert_mentions(&msg, &["missing", d]);
    }
}

/// Where a bad digest string goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The manifest descriptor in index.json.
    Manifest,
    /// An extra index.json entry.
    IndexEntry,
    /// The config descriptor in the manifest.
    Config,
    /// A layer descriptor in the manifest.
    Layer,
}

/// The bad digest strings, each naming a FIFO when taken as a path under
/// `layout/blobs/ALG/` (`ABS` stands for the sandbox's absolute FIFO path).
const BAD_DIGESTS: [(Place, &str); 9] = [
    (Place::Manifest, "sha256:../../../outside/fifo"),
    (Place::Manifest, "sha256:../../etc/passwd"),
    (Place::Manifest, "sha256:ABS"),
    (Place::IndexEntry, "sha256:../../../outside/fifo"),
    (Place::Config, "sha256:../../../outside/fifo"),
    (Place::Config, "sha256:../../etc/passwd"),
    (Place::Layer, "sha256:../../../outside/fifo"),
    (Place::Layer, "sha256:../../etc/passwd"),
    (Place::Layer, "sha256:ABS"),
];

/// A sandbox whose layout puts `digest` at `place`, with FIFOs where the digest
/// would point if it became a path; returns the digest as written.
fn bad_digest_layout(place: Place, digest: &str) -> (Sandbox, String) {
    let sb = Sandbox::new();
    sb.fifo(&sb.outside().join("fifo"));
    sb.fifo(&sb.layout().join("etc/passwd"));
    let host_fifo = sb.outside().join("abs-fifo");
    sb.fifo(&host_fifo);
    let digest = digest.replace("ABS", host_fifo.to_str().unwrap());
    let mut b = LayoutBuilder::new(sb.layout());
    let layer = gz(vec![Entry::file("a", "a")]);
    let mut spec = ImageSpec::new(vec![layer.clone()]).ref_name(NAME);
    match place {
        Place::Manifest => spec.manifest_desc.digest = Some(digest.clone()),
        Place::Config => spec.config_desc.digest = Some(digest.clone()),
        Place::Layer => spec.layers = vec![layer.with_desc_digest(&digest)],
        Place::IndexEntry => {}
    }
    if place == Place::IndexEntry {
        b.image(&spec);
        b.push_index_entry(Desc::new(MEDIA_OCI_MANIFEST, digest.clone(), 100).with_ref_name(NAME));
    } else {
        b.add_image(spec);
    }
    b.write().unwrap();
    (sb, digest)
}

#[test]
fn bad_digest_strings_never_become_paths() {
    // Opening any of the FIFOs would block: a hang here (reported with the FIFO
    // that had a reader) means a digest became a path.
    for (place, digest) in BAD_DIGESTS {
        let (sb, digest) = bad_digest_layout(place, digest);
        let what = format!("{digest} in the {place:?}");
        let msg = refused(sb.extract(&[]), &what);
        let encoded = digest.split_once(':').unwrap().1;
        assert_mentions(&msg, &[encoded]);
        assert_mentions_any(&msg, &["digest", "malformed", "invalid"]);
        match place {
            Place::Manifest | Place::IndexEntry => assert_mentions(&msg, &["index.json"]),
            Place::Config | Place::Layer => assert_mentions(&msg, &["manifest"]),
        }
    }
}

/// The committed core said only `not valid JSON of the expected shape: Invalid
/// encoded value ../../../outside/fifo at line 7 column 46`.
#[test]
fn bad_digest_messages_say_digest() {
    for (place, digest) in BAD_DIGESTS {
        let (sb, digest) = bad_digest_layout(place, digest);
        let msg = refused(sb.extract(&[]), &digest);
        assert_mentions(&msg, &["digest", &digest]);
    }
}

#[test]
fn digest_algorithms() {
    let layer = || gz(vec![Entry::file("a", "sha512 layer")]);
    let sha512 = |b: &[u8]| format!("sha512:{}", hex::encode(Sha512::digest(b)));

    // sha512 is supported: verified with sha512 and applied.
    let sb = Sandbox::new();
    let l = layer();
    let d = sha512(&l.blob());
    let mut b = LayoutBuilder::new(sb.layout());
    b.put_blob(&d, l.blob());
    b.add_image(ImageSpec::new(vec![l.with_desc_digest(&d)]).ref_name(NAME));
    b.write().unwrap();
    succeeded(sb.extract(&[]), "sha512 layer");
    assert_file(&sb.tree(), "a", "sha512 layer");

    // sha512 that does not match.
    let sb = Sandbox::new();
    let l = layer();
    let d = sha512(&l.blob());
    let mut b = LayoutBuilder::new(sb.layout());
    let mut bad = l.blob();
    let i = bad.len() / 2;
    bad[i] ^= 0xff;
    b.put_blob(&d, bad);
    let info = b.add_image(ImageSpec::new(vec![l.with_desc_digest(&d)]).ref_name(NAME));
    b.write().unwrap();
    let msg = refused(sb.extract(&[]), "corrupt sha512 layer");
    assert_names_layer(&msg, &info, 1);

    // Unknown algorithms, even with a blob stored where they point.
    for d in [
        format!("sha384:{}", "ab".repeat(48)),
        format!("md5:{}", "ab".repeat(16)),
        format!("SHA256:{}", "ab".repeat(32)),
        format!("sha256:{}", "AB".repeat(32)),
        format!("sha256:{}", "ab".repeat(31)),
        format!("sha256+b64u:{}", "ab".repeat(32)),
    ] {
        let sb = Sandbox::new();
        let l = layer();
        let mut b = LayoutBuilder::new(sb.layout());
        b.put_blob(&d, l.blob());
        b.add_image(ImageSpec::new(vec![l.with_desc_digest(&d)]).ref_name(NAME));
        b.write().unwrap();
        let msg = refused(sb.extract(&[]), &d);
        let (alg, encoded) = d.split_once(':').unwrap();
        assert_mentions_any(&msg, &["layer 1", "manifest"]);
        assert_mentions_any(&msg, &[&d, alg, encoded]);
        assert_mentions_any(
            &msg,
            &["unsupported algorithm", "not well formed", "invalid"],
        );
    }
}

/// A JSON document of exactly `size` bytes: `doc` with a padding field.
fn padded_json(mut doc: serde_json::Value, size: usize) -> Vec<u8> {
    doc["annotations"] = json!({"pad": ""});
    let base = serde_json::to_vec(&doc).unwrap().len();
    doc["annotations"]["pad"] = json!("x".repeat(size - base));
    let bytes = serde_json::to_vec(&doc).unwrap();
    assert_eq!(bytes.len(), size);
    bytes
}

#[test]
fn oversized_json_documents_are_refused() {
    let max = MAX_JSON_BYTES as usize;
    let limit = MAX_JSON_BYTES.to_string();
    let index_doc = |b: &LayoutBuilder| -> serde_json::Value {
        serde_json::from_slice(&b.index_json()).unwrap()
    };

    // index.json one byte over the limit, and exactly at it.
    for (size, ok) in [(max + 1, false), (max, true)] {
        let sb = Sandbox::new();
        let mut b = LayoutBuilder::new(sb.layout());
        b.add_image(ImageSpec::new(vec![gz(vec![Entry::file("a", "a")])]).ref_name(NAME));
        let doc = index_doc(&b);
        assert_eq!(doc["mediaType"], MEDIA_OCI_INDEX);
        b.raw_file("index.json", padded_json(doc, size));
        b.write().unwrap();
        let r = sb.extract(&[]);
        if ok {
            succeeded(r, "index.json at the limit");
        } else {
            let msg = refused(r, "index.json over the limit");
            assert_mentions(&msg, &["index.json", &limit]);
        }
    }

    // A manifest over the limit, honestly sized and with a lying small size.
    let big = "m".repeat(max + 1);
    for lie in [None, Some(1000)] {
        let sb = Sandbox::new();
        let mut b = LayoutBuilder::new(sb.layout());
        let mut spec = ImageSpec::new(vec![gz(vec![Entry::file("a", "a")])]).ref_name(NAME);
        spec.manifest_annotations.insert("pad".into(), big.clone());
        spec.manifest_desc.size = lie;
        let info = b.add_image(spec);
        b.write().unwrap();
        let msg = refused(sb.extract(&[]), &format!("big manifest, size {lie:?}"));
        assert_mentions(&msg, &["manifest", &info.manifest.digest]);
        if lie.is_none() {
            assert_mentions(&msg, &[&limit]);
        } else {
            assert_mentions_any(&msg, &[&limit, "size"]);
        }
    }
}

/// A layout whose config blob is one byte over the JSON limit; returns its digest.
fn big_config_layout(sb: &Sandbox) -> String {
    let mut b = LayoutBuilder::new(sb.layout());
    let layer = gz(vec![Entry::file("a", "a")]);
    let mut spec = ImageSpec::new(vec![layer.clone()]).ref_name(NAME);
    let cfg = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id()]},
    });
    spec.config_bytes = Some(padded_json(cfg, MAX_JSON_BYTES as usize + 1));
    let info = b.add_image(spec);
    b.write().unwrap();
    info.config.digest
}

#[test]
fn oversized_config_is_refused() {
    let sb = Sandbox::new();
    let digest = big_config_layout(&sb);
    let msg = refused(sb.extract(&[]), "big config");
    assert_mentions(&msg, &[&digest, &MAX_JSON_BYTES.to_string()]);
}

/// The committed core called the config `manifest sha256:<config digest>`.
#[test]
fn oversized_config_message_says_config() {
    let sb = Sandbox::new();
    big_config_layout(&sb);
    let msg = refused(sb.extract(&[]), "big config");
    assert_mentions(&msg, &["config"]);
}

#[test]
fn negative_sizes_are_refused() {
    let sb = Sandbox::new();
    sb.image(vec![gz(vec![Entry::file("a", "a")]).with_desc_size(-1)]);
    let msg = refused(sb.extract(&[]), "negative layer size");
    assert_mentions(&msg, &["manifest"]);
}

// ---------------------------------------------------------------------------
// Long names and NUL bytes

#[test]
fn long_names_with_escapes_are_refused() {
    for ln in [LongNames::Pax, LongNames::Gnu] {
        let file = format!("{}/../../outside/victim", "d".repeat(150));
        let dir = format!("{}/{}/", "e".repeat(60), "../".repeat(40));
        let link_target = format!("{}/../../../outside/victim", "t".repeat(150));
        let cases: Vec<(String, Entry)> = vec![
            (file.clone(), Entry::file(&file, "pwned")),
            (dir.clone(), Entry::dir(&dir)),
            ("h".to_owned(), Entry::hardlink("h", &link_target)),
        ];
        for (name, entry) in cases {
            let sb = Sandbox::new();
            let info = sb.image(vec![
                gz(vec![Entry::file("ok", "ok"), entry]).with_long_names(ln)
            ]);
            let msg = refused(sb.extract(&[]), &format!("{ln:?} {name}"));
            assert_names_layer(&msg, &info, 1);
            assert_names_entry(&msg, &name);
            assert_mentions_any(&msg, &["climb", "escape", "outside the", "root"]);
        }
        // Long names that stay inside work, and a long symlink target climbing
        // out is just a symlink (resolved inside the root when followed).
        let sb = Sandbox::new();
        let long = format!("{}/ok", "d".repeat(150));
        sb.image(vec![gz(vec![
            Entry::file(&long, "ok"),
            Entry::symlink("s", &link_target),
            Entry::file(format!("{}/../x", "f".repeat(150)), "x"),
        ])
        .with_long_names(ln)]);
        succeeded(sb.extract(&[]), &format!("{ln:?} long names"));
        let s = sb.tree();
        assert_file(&s, &long, "ok");
        assert_symlink(&s, "s", &link_target);
        assert_file(&s, "x", "x");
    }
}

#[test]
fn nul_bytes_in_names_are_refused() {
    let gnu_name = format!("{}\0{}", "a".repeat(60), "b".repeat(60));
    let cases: Vec<(&str, LongNames, Entry)> = vec![
        (
            "PAX path",
            LongNames::Pax,
            Entry::file("innocent", "x").pax("path", b"evil\0/../../outside/victim"),
        ),
        ("GNU long name", LongNames::Gnu, Entry::file(&gnu_name, "x")),
        (
            "PAX symlink target",
            LongNames::Pax,
            Entry::symlink("s", "innocent").pax("linkpath", b"/etc\0/passwd"),
        ),
        (
            "PAX hard link target",
            LongNames::Pax,
            Entry::hardlink("h", "f").pax("linkpath", b"f\0../../outside/victim"),
        ),
    ];
    for (what, ln, entry) in cases {
        let sb = Sandbox::new();
        let info = sb.image(vec![
            gz(vec![Entry::file("f", "f")]),
            gz(vec![entry]).with_long_names(ln),
        ]);
        let msg = refused(sb.extract(&[]), what);
        assert_names_layer(&msg, &info, 2);
        assert_mentions(&msg, &["NUL"]);
        assert_mentions_any(&msg, &["evil", "aaaa", "\"s\"", "\"h\""]);
    }
}

#[test]
fn ref_names_are_not_paths() {
    // The image name is matched against annotations, never used as a path.
    let sb = Sandbox::new();
    let mut b = LayoutBuilder::new(sb.layout());
    b.add_image(
        ImageSpec::new(vec![gz(vec![Entry::file("a", "a")])]).ref_name("../../outside/victim"),
    );
    b.write().unwrap();
    let msg = refused(sb.extract_image(Some("../outside/dir"), &[]), "bad name");
    assert_mentions(&msg, &["no image named"]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(sb.layout().join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"][REF_NAME],
        "../../outside/victim"
    );
}

/// Special files where the layout should have plain files: refused at once, never
/// read forever or blocked on.
#[test]
fn special_files_in_the_layout_are_refused() {
    // index.json as a FIFO (reading it would block) and as /dev/zero (endless).
    for special in ["fifo", "zero"] {
        let sb = Sandbox::new();
        sb.image(vec![gz(vec![Entry::file("x", "x")])]);
        let index = sb.layout().join("index.json");
        fs::remove_file(&index).unwrap();
        match special {
            "fifo" => sb.fifo(&index),
            _ => std::os::unix::fs::symlink("/dev/zero", &index).unwrap(),
        }
        let msg = refused(sb.extract(&[]), special);
        assert_mentions(&msg, &["index.json", "not a regular file"]);
    }
    // A layer blob that is /dev/zero: refused, not read without end.
    let sb = Sandbox::new();
    let info = sb.image(vec![gz(vec![Entry::file("x", "x")])]);
    let blob = sb
        .layout()
        .join("blobs/sha256")
        .join(&info.layers[0].digest[7..]);
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &blob).unwrap();
    let msg = refused(sb.extract(&[]), "blob /dev/zero");
    assert_names_layer(&msg, &info, 1);
    assert_mentions(&msg, &["not a regular file"]);
}

/// Owner ids that do not fit a uid_t are refused rather than truncated to root.
#[test]
fn out_of_range_owner_ids_are_refused() {
    if !require::root("ownership (only applied as root)") {
        return;
    }
    for (uid, gid) in [(1u64 << 32, 0u64), (0, u64::from(u32::MAX))] {
        let sb = Sandbox::new();
        let info = sb.image(vec![Layer::new(
            vec![Entry::file("x", "x").owner(uid, gid)],
            Compression::Gzip,
        )
        .with_long_names(LongNames::Gnu)]);
        let msg = refused(sb.extract(&[]), "big owner");
        assert_names_layer(&msg, &info, 1);
        assert_mentions(&msg, &["out of range"]);
    }
}

/// AUFS hard-link bookkeeping (`.wh..wh.plnk/...`) never reaches the tree.
#[test]
fn aufs_metadata_directories_are_not_extracted() {
    let sb = Sandbox::new();
    sb.image(vec![gz(vec![
        Entry::dir(".wh..wh.plnk/"),
        Entry::file(".wh..wh.plnk/1234.5678", "aufs"),
        Entry::dir("d/.wh..wh.aufs/"),
        Entry::file("d/.wh..wh.aufs/x", "aufs"),
        Entry::file("d/kept", "kept"),
    ])]);
    sb.extract(&[]).unwrap();
    let keys: Vec<String> = sb.tree().into_keys().collect();
    assert_eq!(keys, ["d", "d/kept"]);
}

// ---------------------------------------------------------------------------
// Resource bombs: small layers that ask for a lot of memory, disk or time.

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The most memory an extraction may take at its peak (VmHWM), this test
/// binary's own included.
const PEAK_LIMIT: u64 = 100 * MIB;

/// What [`measured_extraction_child`] extracts: the layout and the target.
const CHILD_LAYOUT: &str = "LOCALD_TEST_CHILD_LAYOUT";
const CHILD_TARGET: &str = "LOCALD_TEST_CHILD_TARGET";
/// The start of the lines the child reports on.
const CHILD_SAYS: &str = "locald-test-child: ";

/// What an extraction in a child process took.
#[derive(Debug)]
struct Measured {
    /// The child's peak resident memory (VmHWM) before the extraction, bytes.
    before: u64,
    /// Its peak resident memory over the whole extraction, bytes.
    peak: u64,
}

/// Runs [`measured_extraction_child`] in a child process and reads its report.
fn run_measured_child(layout: &Path, target: &Path) -> (Result<(), String>, Measured) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hostile::measured_extraction_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_LAYOUT, layout)
        .env(CHILD_TARGET, target)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_child(&child);
    let (tx, rx) = mpsc::channel();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        let read = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
        let status = child.wait().unwrap();
        let _ = tx.send((status, out.join().unwrap(), err.join().unwrap()));
    });
    let (status, stdout, stderr) = match rx.recv_timeout(DEADLINE) {
        Ok(r) => r,
        Err(_) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            panic!("the child extraction did not finish within {DEADLINE:?}");
        }
    };
    let said = |what: &str| {
        stdout.lines().find_map(|l| {
            // libtest may have written the test's name on the same line first.
            l.split_once(CHILD_SAYS)
                .and_then(|(_, l)| l.strip_prefix(what))
                .map(str::to_owned)
        })
    };
    let kib = |what: &str| -> u64 {
        let v = said(what).unwrap_or_else(|| {
            panic!("the child ({status}) did not report {what:?}:\n{stdout}\n{stderr}")
        });
        v.trim().parse::<u64>().unwrap() * 1024
    };
    let measured = Measured {
        before: kib("before-kib "),
        peak: kib("peak-kib "),
    };
    let outcome = match (said("ok"), said("err ")) {
        (Some(_), None) => Ok(()),
        (None, Some(e)) => Err(e),
        _ => panic!("the child ({status}) reported no outcome:\n{stdout}\n{stderr}"),
    };
    assert!(
        status.success(),
        "the child failed ({status}):\n{stdout}\n{stderr}"
    );
    (outcome, measured)
}

/// This process's peak resident memory so far (VmHWM), KiB.
fn vm_hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// The extraction that [`Sandbox::extract_measured`] runs in a child process
/// (this test binary again), reporting its outcome and peak memory on stdout.
/// Without its environment it does nothing.
#[test]
#[ignore = "run in a child process by Sandbox::extract_measured"]
fn measured_extraction_child() {
    let (Some(layout), Some(target)) = (
        std::env::var_os(CHILD_LAYOUT),
        std::env::var_os(CHILD_TARGET),
    ) else {
        return;
    };
    println!("{CHILD_SAYS}before-kib {}", vm_hwm_kib());
    let r = common::extract(Path::new(&layout), Some(NAME), &[], Path::new(&target));
    println!("{CHILD_SAYS}peak-kib {}", vm_hwm_kib());
    match r {
        Ok(_) => println!("{CHILD_SAYS}ok"),
        Err(e) => println!("{CHILD_SAYS}err {}", common::chain(&e).replace('\n', " ")),
    }
}

#[track_caller]
fn assert_peak_bounded(m: &Measured, what: &str) {
    assert!(
        m.peak < PEAK_LIMIT,
        "{what}: the extraction's peak memory was {} bytes, over {PEAK_LIMIT}",
        m.peak
    );
}

/// Disk space a file takes (its allocated blocks), bytes.
fn disk_use(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().blocks() * 512
}

fn read_at(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// A 10 KB layer whose GNU sparse entries declare 2 GiB and 64 GiB: written
/// sparse, as GNU tar does (holes stay holes), taking the disk space of their
/// data, the memory of a small layer and no time for the holes.
#[test]
fn gnu_sparse_files_are_written_sparse() {
    // What `tar --sparse --format=gnu` (1.34) writes for a 2 GiB file whose last
    // byte is an `x`: the last 4 KiB as data, an empty region at the end.
    let big = 2 * GIB;
    let mut last = vec![0u8; 4096];
    last[4095] = b'x';
    let mut tar = fixture::gnu_sparse(b"big", big, &[(big - 4096, last.clone()), (big, vec![])]);
    // 64 GiB of holes around 40 short regions at odd offsets; the map spills
    // into two extension blocks.
    let huge = 64 * GIB;
    let regions: Vec<(u64, Vec<u8>)> = (0..40u64)
        .map(|i| {
            (
                i * (huge / 40) + 7 * i + 3,
                format!("region {i}").into_bytes(),
            )
        })
        .collect();
    tar.extend(fixture::gnu_sparse(b"dir/huge", huge, &regions));
    tar.extend(fixture::tar_bytes(
        &[Entry::file("after", "after")],
        LongNames::Gnu,
    ));
    // GNU tar's 10 KiB records.
    tar.resize(tar.len().next_multiple_of(10240), 0);
    assert_eq!(tar.len(), 10240);

    let sb = Sandbox::new();
    sb.image(vec![Layer::raw(tar)]);
    let (outcome, m) = sb.extract_measured();
    outcome.unwrap_or_else(|e| panic!("the sparse layer: {e}"));
    assert_peak_bounded(&m, "2 GiB and 64 GiB sparse files");

    let root = sb.target();
    let p = root.join("big");
    assert_eq!(fs::metadata(&p).unwrap().len(), big);
    assert_eq!(read_at(&p, big - 4096, 4096), last);
    assert_eq!(read_at(&p, 0, 4096), vec![0; 4096]);
    assert_eq!(read_at(&p, GIB + 17, 3), vec![0; 3]);
    let p = root.join("dir/huge");
    assert_eq!(fs::metadata(&p).unwrap().len(), huge);
    for (offset, data) in &regions {
        assert_eq!(read_at(&p, *offset, data.len()), *data);
        assert_eq!(read_at(&p, offset + data.len() as u64, 1), [0]);
    }
    assert_eq!(read_at(&p, huge - 1, 1), [0]);
    assert_eq!(fs::read(root.join("after")).unwrap(), b"after");
    // The disk space of the data (a filesystem block per region), not of the
    // holes.
    let (big_disk, huge_disk) = (disk_use(&root.join("big")), disk_use(&p));
    eprintln!("disk use: big {big_disk} bytes, dir/huge {huge_disk} bytes");
    assert!(big_disk < MIB, "big takes {big_disk} bytes of disk");
    assert!(huge_disk < MIB, "dir/huge takes {huge_disk} bytes of disk");
}

/// A sparse file larger than any filesystem holds (4 EiB, one byte at its end)
/// costs nothing to try: it is written sparse where the filesystem takes it,
/// else refused by the filesystem with an error naming the layer and the
/// entry; either way at once and taking no space. Sizes over 2^63 - 1 bytes
/// (which no file can have) are refused before anything is written.
#[test]
fn absurdly_large_sparse_files_cost_nothing() {
    let size = 1u64 << 62;
    let mut tar = fixture::gnu_sparse(b"absurd", size, &[(size - 1, b"x".to_vec())]);
    tar.extend(fixture::tar_bytes(&[], LongNames::Gnu));
    let sb = Sandbox::new();
    let info = sb.image(vec![
        gz(vec![Entry::file("first", "first")]),
        Layer::raw(tar),
    ]);
    match sb.extract(&[]) {
        Ok(_) => {
            let p = sb.target().join("absurd");
            assert_eq!(fs::metadata(&p).unwrap().len(), size);
            assert_eq!(read_at(&p, size - 1, 1), b"x");
            assert!(disk_use(&p) < MIB, "{} bytes of disk", disk_use(&p));
        }
        Err(msg) => {
            eprintln!("a 4 EiB sparse file: {msg}");
            assert_names_layer(&msg, &info, 2);
            assert_names_entry(&msg, "absurd");
            assert_mentions_any(&msg, &["too large", "invalid argument"]);
        }
    }
    let mut tar = fixture::gnu_sparse(b"impossible", u64::MAX, &[(0, b"x".to_vec())]);
    tar.extend(fixture::tar_bytes(&[], LongNames::Gnu));
    let sb = Sandbox::new();
    let info = sb.image(vec![Layer::raw(tar)]);
    let msg = refused(sb.extract(&[]), "a sparse file of 2^64 - 1 bytes");
    assert_names_layer(&msg, &info, 1);
    assert_names_entry(&msg, "impossible");
    assert_mentions(&msg, &["GNU sparse map", &u64::MAX.to_string()]);
}

/// The same, from GNU tar itself: a sparse file archived by `tar --sparse` comes
/// out as it went in (old GNU format). GNU tar's PAX formats (`GNU.sparse.*`
/// records) are not read as sparse by the tar crate: such an entry is extracted
/// as stored, its data regions back to back (and, for format 1.0, its map in
/// front) under the name in its header (`GNUSparseFile.<pid>/<name>` for 0.1 and
/// 1.0), with a warning. Go's archive/tar (so umoci) expands them. Either way,
/// no bomb: what lands on disk is what the layer holds.
#[test]
fn sparse_files_from_gnu_tar() {
    if !require::tool("tar") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let size = 2 * GIB;
    let f = fs::File::create(src.path().join("big")).unwrap();
    f.set_len(size).unwrap();
    {
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"middle", GIB).unwrap();
        f.write_all_at(b"x", size - 1).unwrap();
    }
    drop(f);
    let gnu_tar = |format: &[&str]| -> Vec<u8> {
        let out = src.path().join("layer.tar");
        let mut args = vec!["--sparse", "-cf", out.to_str().unwrap()];
        args.extend_from_slice(format);
        args.extend(["-C", src.path().to_str().unwrap(), "big"]);
        peers::run("tar", args).unwrap();
        fs::read(out).unwrap()
    };

    let sb = Sandbox::new();
    sb.image(vec![Layer::raw(gnu_tar(&["--format=gnu"]))]);
    succeeded(sb.extract(&[]), "GNU tar's sparse file");
    let p = sb.target().join("big");
    assert_eq!(fs::metadata(&p).unwrap().len(), size);
    assert_eq!(read_at(&p, GIB - 1, 8), b"\0middle\0");
    assert_eq!(read_at(&p, size - 2, 2), b"\0x");
    assert!(disk_use(&p) < MIB, "{} bytes of disk", disk_use(&p));

    for version in ["0.0", "0.1", "1.0"] {
        let sb = Sandbox::new();
        let tar = gnu_tar(&["--format=posix", &format!("--sparse-version={version}")]);
        let stored = tar.len() as u64;
        sb.image(vec![Layer::raw(tar)]);
        succeeded(sb.extract(&[]), &format!("PAX sparse {version}"));
        let files: Vec<(String, u64)> = sb
            .tree()
            .into_iter()
            .filter(|(_, n)| n.kind == Kind::File)
            .map(|(k, _)| {
                let len = fs::metadata(sb.target().join(&k)).unwrap().len();
                (k, len)
            })
            .collect();
        // Only the stored data: 2 × 4 KiB regions (plus the map in 1.0).
        let [(name, len)] = &files[..] else {
            panic!("PAX sparse {version}: {files:?}");
        };
        assert!(
            *len <= stored,
            "PAX sparse {version}: {name} is {len} bytes"
        );
        match version {
            "0.0" => assert_eq!(name, "big"),
            _ => assert!(name.starts_with("GNUSparseFile."), "{version}: {name}"),
        }
    }
}

/// A PAX header of `record` bytes (one `comment` record) in a gzip layer,
/// after one file and before another, built and hashed in pieces: the layer
/// is a few hundred KB, the record never in memory.
fn huge_pax_layer(record: u64) -> Layer {
    use std::io::Write as _;
    struct Out {
        gz: flate2::write::GzEncoder<Vec<u8>>,
        diff_id: sha2::Sha256,
    }
    impl Out {
        fn put(&mut self, bytes: &[u8]) {
            self.gz.write_all(bytes).unwrap();
            self.diff_id.update(bytes);
        }
    }
    let mut out = Out {
        gz: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()),
        diff_id: sha2::Sha256::new(),
    };
    out.put(&fixture::tar_entries(
        &[Entry::file("before", "before")],
        LongNames::Pax,
    ));
    out.put(&fixture::header_block(
        b"././@PaxHeader",
        b'x',
        record,
        LongNames::Pax,
    ));
    let head = format!("{record} comment=");
    out.put(head.as_bytes());
    let chunk = vec![b'a'; MIB as usize];
    let mut left = record - head.len() as u64 - 1;
    while left > 0 {
        let n = left.min(MIB);
        out.put(&chunk[..n as usize]);
        left -= n;
    }
    out.put(b"\n");
    out.put(&vec![0; (record.next_multiple_of(512) - record) as usize]);
    out.put(&fixture::tar_bytes(
        &[Entry::file("after", "after")],
        LongNames::Pax,
    ));
    let diff_id = format!("sha256:{}", hex::encode(out.diff_id.finalize()));
    Layer::raw(out.gz.finish().unwrap()).with_diff_id(diff_id)
}

/// A 512 MiB PAX record (a gzip layer of half a megabyte) is refused before it
/// is read: the error names the layer and the entry, the extraction's memory
/// stays small, and nothing is published.
#[test]
fn huge_pax_records_are_refused_without_holding_them() {
    let record = 512 * MIB;
    let layer = huge_pax_layer(record);
    let blob = layer.blob().len();
    eprintln!("a {record}-byte PAX record in a {blob}-byte gzip layer");
    assert!(blob < 2 * MIB as usize, "{blob}");
    let sb = Sandbox::new();
    let info = sb.image(vec![gz(vec![Entry::file("first", "first")]), layer.clone()]);
    let (outcome, m) = sb.extract_measured();
    let msg = outcome.expect_err("a 512 MiB PAX header was accepted");
    assert_names_layer(&msg, &info, 2);
    assert_names_entry(&msg, "././@PaxHeader");
    assert_mentions(&msg, &["PAX extended header", &record.to_string(), "1 MiB"]);
    assert_peak_bounded(&m, "512 MiB PAX record");
    assert!(!sb.target().exists(), "the target was published");
    // After the refusal the rest of the blob is still read and checked: a blob
    // whose last byte (the gzip trailer, far past the refused header) was
    // changed is reported as corrupt.
    let mut stored = layer.blob();
    *stored.last_mut().unwrap() ^= 1;
    let sb = Sandbox::new();
    let info = sb.image(vec![layer.with_stored_bytes(stored)]);
    let msg = refused(sb.extract(&[]), "a corrupt layer with a 512 MiB PAX record");
    assert_names_layer(&msg, &info, 1);
    assert_mentions(&msg, &["does not match its digest"]);
}

/// `./././…/x` (normalised to `x`) of exactly `len` bytes.
fn dotted(len: usize) -> String {
    let mut name = "./".repeat((len - 1) / 2);
    if len.is_multiple_of(2) {
        name.insert(0, '/');
    }
    name.push('x');
    assert_eq!(name.len(), len);
    name
}

/// PAX records of exactly `len` bytes (one `comment`).
fn pax_of(len: usize) -> Vec<u8> {
    // `<len> comment=<a…>\n` for a 7-digit len.
    let records = fixture::pax_records(&[("comment".to_owned(), vec![b'a'; len - 17])]);
    assert_eq!(records.len(), len);
    records
}

/// PAX headers (`x`, `g`), GNU long names (`L`) and long link names (`K`) of
/// more than 1 MiB are refused with an error naming the layer and the entry;
/// exactly 1 MiB is accepted. The boundary is Go's archive/tar's: it reads such
/// entries through `io.LimitReader(r, maxSpecialFileSize+1)`, `maxSpecialFileSize
/// = 1 << 20`, and fails when it got more than `maxSpecialFileSize` bytes.
#[test]
fn metadata_entries_over_one_mib_are_refused() {
    let limit = MIB as usize;
    type Case = (
        &'static str,
        &'static str,
        LongNames,
        fn(usize) -> Vec<Entry>,
    );
    let cases: [Case; 4] = [
        ("GNU long name", "././@LongLink", LongNames::Gnu, |len| {
            // The name and its NUL.
            vec![Entry::file(dotted(len - 1), "long")]
        }),
        (
            "GNU long link name",
            "././@LongLink",
            LongNames::Gnu,
            |len| {
                vec![
                    Entry::file("x", "long"),
                    Entry::hardlink("y", dotted(len - 1)),
                ]
            },
        ),
        (
            "PAX extended header",
            "././@PaxHeader",
            LongNames::Pax,
            |len| vec![Entry::file("x", "long").pax("comment", vec![b'a'; len - 17])],
        ),
        (
            "PAX global header",
            "pax_global_header",
            LongNames::Pax,
            |len| {
                vec![
                    Entry::custom("pax_global_header", b'g', "", pax_of(len)),
                    Entry::file("x", "long"),
                ]
            },
        ),
    ];
    for (what, header_name, long_names, entries) in cases {
        // Exactly 1 MiB.
        let sb = Sandbox::new();
        sb.image(vec![gz(entries(limit)).with_long_names(long_names)]);
        succeeded(sb.extract(&[]), &format!("a {what} of 1 MiB"));
        assert_file(&sb.tree(), "x", "long");
        // One byte more.
        let sb = Sandbox::new();
        let info = sb.image(vec![
            gz(vec![Entry::file("first", "first")]),
            gz(entries(limit + 1)).with_long_names(long_names),
        ]);
        let msg = refused(sb.extract(&[]), &format!("a {what} of 1 MiB + 1"));
        assert_names_layer(&msg, &info, 2);
        assert_names_entry(&msg, header_name);
        assert_mentions(&msg, &[what, &(limit + 1).to_string(), "1 MiB"]);
    }
    // A header without a name is named by the entry before it.
    let mut tar = fixture::tar_entries(&[Entry::file("previous", "p")], LongNames::Gnu);
    tar.extend(fixture::header_block(b"", b'L', 2 * MIB, LongNames::Gnu));
    tar.extend(vec![0; 1024]);
    let sb = Sandbox::new();
    let info = sb.image(vec![Layer::raw(tar)]);
    let msg = refused(sb.extract(&[]), "an unnamed 2 MiB long name");
    assert_names_layer(&msg, &info, 1);
    assert_names_entry(&msg, "previous");
    assert_mentions(
        &msg,
        &["unnamed entry after it", "GNU long name", "2097152"],
    );
}

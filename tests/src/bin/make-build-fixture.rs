//! Writes what a build benchmark needs: an OCI layout holding the busybox test
//! builder (`locald-test/builder:1`, with the real lifecycle in `--lifecycle DIR`
//! or `LOCALD_TEST_LIFECYCLE`, else the stand-in) and its run image
//! (`locald-test/run:1`, grown by `--run-mb N` megabytes of library-like files in
//! one more layer, as real run images carry), and a one-file app.
//!
//! `cargo run --release -p locald-tests --bin make-build-fixture -- DIR [--lifecycle DIR] [--run-mb N]`
//!
//! Writes `DIR/builder-layout` and `DIR/app/hello.txt`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use locald_tests::builder::BuilderSpec;
use locald_tests::fixture::{Compression, Entry, Layer, LayoutBuilder};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = None;
    let mut lifecycle = std::env::var_os("LOCALD_TEST_LIFECYCLE").map(PathBuf::from);
    let mut run_mb = 0usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--lifecycle" => lifecycle = it.next().map(PathBuf::from),
            "--run-mb" => run_mb = it.next().and_then(|n| n.parse().ok()).expect("--run-mb N"),
            "-h" | "--help" => {
                eprintln!("usage: make-build-fixture DIR [--lifecycle DIR] [--run-mb N]");
                return;
            }
            _ if dir.is_none() && !a.starts_with('-') => dir = Some(PathBuf::from(a)),
            _ => panic!("unexpected argument {a:?}"),
        }
    }
    let dir = dir.expect("usage: make-build-fixture DIR [--lifecycle DIR] [--run-mb N]");
    let busybox = locald_tests::builder::find_busybox().unwrap();
    let busybox = std::fs::read(busybox).unwrap();
    let mut spec = BuilderSpec::busybox_with(&busybox, "locald-test/run:1");
    if let Some(l) = &lifecycle {
        spec = spec.with_real_lifecycle(l).unwrap();
    }
    let mut run = spec.run_image_spec();
    if run_mb > 0 {
        let mut entries = vec![Entry::dir("usr/"), Entry::dir("usr/lib/")];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..run_mb {
            let mut bytes = Vec::with_capacity(1 << 20);
            while bytes.len() < 1 << 20 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half incompressible, half text: about 2:1 under gzip.
                if x.is_multiple_of(2) {
                    bytes.extend_from_slice(&x.to_le_bytes());
                } else {
                    bytes.extend_from_slice(b"GLIBC_2.17\0");
                }
            }
            bytes.truncate(1 << 20);
            entries.push(Entry::file(format!("usr/lib/lib{i}.so"), bytes).mode(0o644));
        }
        run.layers.push(Layer::new(entries, Compression::Gzip));
    }
    let layout = dir.join("builder-layout");
    let _ = std::fs::remove_dir_all(&layout);
    let mut b = LayoutBuilder::new(&layout);
    b.add_image(spec.runnable_image().ref_name("locald-test/builder:1"));
    b.add_image(run.ref_name("locald-test/run:1"));
    b.write().unwrap();
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("hello.txt"), "hello\n").unwrap();
    println!(
        "{} (lifecycle: {})",
        layout.display(),
        lifecycle
            .map(|l| l.display().to_string())
            .unwrap_or_else(|| "the stand-in".to_owned())
    );
}

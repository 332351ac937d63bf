//! Writes an OCI layout holding one image whose `/cnb` has about `--entries N`
//! entries (directories of 100 small files each, as node_modules or a JDK spread
//! theirs), for the warm-pull benchmark (`scripts/bench-warm-pull`).
//!
//! `cargo run --release -p locald-tests --bin make-tree-image -- DIR --entries N`
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use locald_tests::fixture::{Compression, Entry, ImageSpec, Layer, LayoutBuilder};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: make-tree-image DIR --entries N";
    let mut dir = None;
    let mut entries = 100usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--entries" => entries = it.next().and_then(|n| n.parse().ok()).expect(usage),
            _ if dir.is_none() && !a.starts_with('-') => dir = Some(PathBuf::from(a)),
            _ => panic!("{usage}"),
        }
    }
    let dir = dir.expect(usage);
    let mut list = vec![
        Entry::dir("cnb/"),
        Entry::dir("cnb/lifecycle/"),
        Entry::file("cnb/lifecycle/creator", b"#!/bin/sh\n").mode(0o755),
        Entry::dir("cnb/buildpacks/"),
    ];
    let mut n = list.len();
    let mut d = 0;
    while n < entries {
        list.push(Entry::dir(format!("cnb/buildpacks/bp{d}/")));
        n += 1;
        for f in 0..99 {
            if n >= entries {
                break;
            }
            list.push(
                Entry::file(
                    format!("cnb/buildpacks/bp{d}/f{f}.js"),
                    format!("module.exports = {f};\n"),
                )
                .mode(0o644),
            );
            n += 1;
        }
        d += 1;
    }
    let image = ImageSpec::new(vec![Layer::new(list, Compression::Gzip)])
        .platform("linux", locald_tests::builder::host_arch(), None)
        .ref_name("tree");
    let _ = std::fs::remove_dir_all(&dir);
    let mut b = LayoutBuilder::new(&dir);
    b.add_image(image);
    b.write().unwrap();
    println!("{} ({n} entries under /cnb)", dir.display());
}

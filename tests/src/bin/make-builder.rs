//! Writes a realistic builder-shaped OCI layout for benchmarks and the
//! "done when" cross-check: ~15 layers, ~1 GB uncompressed (scaled by
//! `--scale`), a base OS with symlinked lib dirs, buildpacks under /cnb with
//! symlinked and hard-linked files, a lifecycle with symlinked phases, whiteouts
//! and an opaque directory.
//!
//! `cargo run --release -p locald-tests --bin make-builder -- DIR [--scale F] [--name NAME] [--update]`
//!
//! `--update` writes the same builder with one buildpack layer changed (a new
//! version of buildpack 5), every other layer byte-identical: an updated builder.
#![allow(clippy::unwrap_used)]

use locald_tests::fixture::{Compression, Entry, ImageSpec, Layer, LayoutBuilder};

/// Deterministic pseudo-random bytes (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `len` bytes: a mix like real binaries and text (about 2.5:1 under gzip).
    fn content(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let words: [&[u8]; 8] = [
            b"lib",
            b"_start ",
            b"GLIBC_2.17 ",
            b"\0\0\0\0",
            b"main",
            b"/usr/lib/x86_64 ",
            b"buildpack ",
            b"\n",
        ];
        while out.len() < len {
            let r = self.next();
            if r.is_multiple_of(3) {
                // an incompressible run
                for _ in 0..16 {
                    out.extend_from_slice(&self.next().to_le_bytes());
                }
            } else {
                for i in 0..8 {
                    out.extend_from_slice(words[((r >> (i * 3)) & 7) as usize]);
                }
            }
        }
        out.truncate(len);
        out
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = None;
    let mut scale = 1.0f64;
    let mut name = "builder".to_owned();
    let mut update = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--scale" => {
                scale = args[i + 1].parse().expect("--scale takes a number");
                i += 1;
            }
            "--name" => {
                name = args[i + 1].clone();
                i += 1;
            }
            "--update" => update = true,
            d => dir = Some(d.to_owned()),
        }
        i += 1;
    }
    let dir = dir.expect("usage: make-builder DIR [--scale F] [--name NAME] [--update]");
    let sz = |n: usize| ((n as f64) * scale).max(1.0) as usize;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut layers = Vec::new();

    // 1. Base OS: many small and mid-sized files, usrmerge symlinks, hard links.
    let mut base = vec![
        Entry::dir("./"),
        Entry::dir("usr/"),
        Entry::dir("usr/bin/"),
        Entry::dir("usr/lib/"),
        Entry::dir("usr/share/"),
        Entry::dir("usr/share/doc/"),
        Entry::dir("etc/"),
        Entry::dir("etc/apt/"),
        Entry::dir("etc/apt/sources.list.d/"),
        Entry::dir("tmp/").mode(0o1777),
        Entry::dir("root/").mode(0o700),
        Entry::symlink("bin", "usr/bin"),
        Entry::symlink("lib", "usr/lib"),
        Entry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\ncnb:x:1000:1000::/home/cnb:/bin/bash\n",
        ),
        Entry::file(
            "etc/apt/sources.list.d/old.list",
            "deb http://old stable main\n",
        ),
        Entry::file("usr/bin/sudo", rng.content(200_000)).mode(0o4755),
    ];
    for p in 0..sz(70) {
        base.push(Entry::dir(format!("usr/lib/pkg{p}/")));
        for f in 0..40 {
            let len = (rng.next() % 200_000) as usize + 100;
            base.push(
                Entry::file(format!("usr/lib/pkg{p}/lib{f}.so.1"), rng.content(len)).mode(0o755),
            );
            if f % 10 == 0 {
                base.push(Entry::symlink(
                    format!("usr/lib/pkg{p}/lib{f}.so"),
                    format!("lib{f}.so.1"),
                ));
            }
        }
        base.push(Entry::dir(format!("usr/share/doc/pkg{p}/")));
        base.push(Entry::file(
            format!("usr/share/doc/pkg{p}/copyright"),
            rng.content(3000),
        ));
    }
    for b in 0..sz(500) {
        let len = (rng.next() % 300_000) as usize + 1000;
        base.push(Entry::file(format!("usr/bin/tool{b}"), rng.content(len)).mode(0o755));
    }
    base.push(Entry::hardlink("usr/bin/tool0-alias", "usr/bin/tool0"));
    layers.push(Layer::new(base, Compression::Gzip));

    // 2. OS update: whiteouts (removed docs) and an opaque directory.
    let mut os_update = vec![
        Entry::opaque("etc/apt/sources.list.d"),
        Entry::file(
            "etc/apt/sources.list.d/new.list",
            "deb http://new stable main\n",
        ),
    ];
    for p in (0..sz(70)).step_by(3) {
        os_update.push(Entry::whiteout("usr/share/doc", format!("pkg{p}")));
    }
    os_update.push(Entry::file("usr/bin/tool1", rng.content(sz(5_000_000))).mode(0o755));
    layers.push(Layer::new(os_update, Compression::Gzip));

    // 3-13. Buildpacks, each its own layer, as `pack builder create` lays them out.
    let cnb_dirs = vec![
        Entry::dir("cnb/").owner(1000, 1000),
        Entry::dir("cnb/buildpacks/").owner(1000, 1000),
    ];
    for bp in 0..11 {
        let id = format!("heroku_{bp}");
        // The update bumps buildpack 5 without touching the random stream, so
        // every other layer stays byte-identical.
        let patch = if update && bp == 5 { 1 } else { 0 };
        let root = format!("cnb/buildpacks/{id}/1.{bp}.{patch}");
        let mut e = cnb_dirs.clone();
        e.push(Entry::dir(format!("cnb/buildpacks/{id}/")));
        e.push(Entry::dir(format!("{root}/")));
        e.push(Entry::dir(format!("{root}/bin/")));
        e.push(Entry::file(
            format!("{root}/buildpack.toml"),
            format!(
                "api = \"0.10\"\n[buildpack]\nid = \"heroku/{bp}\"\nversion = \"1.{bp}.{patch}\"\n"
            ),
        ));
        e.push(Entry::file(format!("{root}/bin/main"), rng.content(sz(20_000_000))).mode(0o755));
        e.push(Entry::symlink(format!("{root}/bin/detect"), "main"));
        e.push(Entry::symlink(format!("{root}/bin/build"), "main"));
        e.push(Entry::dir(format!("{root}/lib/")));
        for f in 0..sz(400) {
            let len = (rng.next() % 150_000) as usize + 10;
            e.push(Entry::file(format!("{root}/lib/f{f}.rb"), rng.content(len)));
        }
        e.push(Entry::hardlink(
            format!("{root}/bin/main-copy"),
            format!("{root}/bin/main"),
        ));
        // gzip everywhere: umoci 0.4 (the peer) refuses zstd layers.
        layers.push(Layer::new(e, Compression::Gzip));
    }

    // 14. Lifecycle with symlinked phases.
    let mut lc = cnb_dirs.clone();
    lc.push(Entry::dir("cnb/lifecycle/"));
    lc.push(Entry::file("cnb/lifecycle/lifecycle", rng.content(sz(30_000_000))).mode(0o755));
    for phase in [
        "analyzer", "builder", "creator", "detector", "exporter", "restorer", "extender", "rebaser",
    ] {
        lc.push(Entry::symlink(
            format!("cnb/lifecycle/{phase}"),
            "lifecycle",
        ));
    }
    lc.push(Entry::file("cnb/lifecycle/launcher", rng.content(sz(2_000_000))).mode(0o755));
    lc.push(Entry::file("cnb/lifecycle/lifecycle.toml", "[apis]\n[apis.platform]\nsupported = [\"0.12\", \"0.13\"]\n[apis.buildpack]\nsupported = [\"0.10\", \"0.11\"]\n[lifecycle]\nversion = \"0.20.0\"\n"));
    layers.push(Layer::new(lc, Compression::Gzip));

    // 15. Builder metadata.
    let mut md = cnb_dirs;
    md.push(Entry::file(
        "cnb/order.toml",
        "[[order]]\n[[order.group]]\nid = \"heroku/0\"\nversion = \"1.0.0\"\n",
    ));
    md.push(Entry::file(
        "cnb/run.toml",
        "[[images]]\nimage = \"heroku/heroku:22-cnb\"\n",
    ));
    md.push(Entry::file(
        "cnb/stack.toml",
        "[run-image]\nimage = \"heroku/heroku:22-cnb\"\n",
    ));
    md.push(Entry::whiteout(
        "cnb/buildpacks/heroku_10/1.10.0/lib",
        "f0.rb",
    ));
    layers.push(Layer::new(md, Compression::Gzip));

    let uncompressed: usize = layers.iter().map(|l| l.tar().len()).sum();
    let mut b = LayoutBuilder::new(&dir);
    let info = b.add_image(
        ImageSpec::new(layers)
            .ref_name(name)
            .env("CNB_USER_ID=1000")
            .env("CNB_GROUP_ID=1000")
            .env("PATH=/usr/local/bin:/usr/bin:/bin")
            .user("1000:1000")
            .label(
                "io.buildpacks.builder.metadata",
                "{\"description\":\"bench builder\"}",
            ),
    );
    b.write().unwrap();
    let compressed: i64 = info.layers.iter().map(|l| l.size).sum();
    eprintln!(
        "wrote {dir}: {} layers, {:.0} MB uncompressed, {:.0} MB compressed",
        info.layers.len(),
        uncompressed as f64 / 1e6,
        compressed as f64 / 1e6
    );
}

//! Compares two extracted trees the way the conformance tests do (types, modes,
//! owners, link targets, contents, hard-link grouping, mtimes) and exits 1 when
//! they differ. `tree-diff A B [--ignore-dir-mtime]`
#![allow(clippy::unwrap_used)]

use locald_tests::tree::{self, DiffOpts};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if paths.len() != 2 {
        eprintln!("usage: tree-diff A B [--ignore-dir-mtime]");
        std::process::exit(2);
    }
    let opts = DiffOpts {
        ignore_dir_mtime: args.iter().any(|a| a == "--ignore-dir-mtime"),
        ..DiffOpts::default()
    };
    let a = tree::snapshot(paths[0].as_ref());
    let b = tree::snapshot(paths[1].as_ref());
    let d = tree::diff(&a, &b, &opts);
    if d.is_empty() {
        println!("identical: {} entries", a.len());
    } else {
        for line in d.iter().take(50) {
            println!("{line}");
        }
        println!("{} differences", d.len());
        std::process::exit(1);
    }
}

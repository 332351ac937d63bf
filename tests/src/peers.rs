//! Thin wrappers around the real tools locald is checked against (`umoci`,
//! `skopeo`). Each returns `Err` with the command line and the tool's stderr
//! when it fails.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::tree::fingerprint_dir;

/// Whether the effective uid is 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `tool` is an executable file on `PATH`.
pub fn have(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).map(|d| d.join(tool)).any(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Runs `program args...`; stdout on success, the command and its stderr on failure.
pub fn run<I, S>(program: &str, args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

fn image_arg(layout: &Path, tag: &str) -> String {
    format!("{}:{tag}", layout.display())
}

/// `umoci unpack [--rootless] --image LAYOUT:REF BUNDLE`, `--rootless` when not
/// root. Returns the rootfs (`BUNDLE/rootfs`).
pub fn umoci_unpack(layout: &Path, reference: &str, bundle: &Path) -> Result<PathBuf, String> {
    umoci_unpack_opts(layout, reference, bundle, !is_root())
}

/// [`umoci_unpack`] choosing `--rootless` explicitly (rootless as root drops
/// ownership and device nodes, as a rootless extractor does).
pub fn umoci_unpack_opts(
    layout: &Path,
    reference: &str,
    bundle: &Path,
    rootless: bool,
) -> Result<PathBuf, String> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("unpack")];
    if rootless {
        args.push(OsStr::new("--rootless"));
    }
    let image = image_arg(layout, reference);
    args.extend([
        OsStr::new("--image"),
        OsStr::new(&image),
        bundle.as_os_str(),
    ]);
    run("umoci", args)?;
    Ok(bundle.join("rootfs"))
}

/// `umoci init --layout LAYOUT` (LAYOUT must not exist).
pub fn umoci_init(layout: &Path) -> Result<(), String> {
    run(
        "umoci",
        [
            OsStr::new("init"),
            OsStr::new("--layout"),
            layout.as_os_str(),
        ],
    )
    .map(drop)
}

/// `umoci new --image LAYOUT:TAG`: an image with no layers.
pub fn umoci_new(layout: &Path, tag: &str) -> Result<(), String> {
    run("umoci", ["new", "--image", &image_arg(layout, tag)]).map(drop)
}

/// `umoci repack --image LAYOUT:TAG BUNDLE`: the changes to `BUNDLE/rootfs` since
/// it was unpacked become a new layer (deletions as whiteouts).
pub fn umoci_repack(layout: &Path, tag: &str, bundle: &Path) -> Result<(), String> {
    let image = image_arg(layout, tag);
    run(
        "umoci",
        [
            OsStr::new("repack"),
            OsStr::new("--image"),
            OsStr::new(&image),
            bundle.as_os_str(),
        ],
    )
    .map(drop)
}

/// `umoci config --image LAYOUT:TAG ARGS...`, e.g. `["--config.env=A=B"]`.
pub fn umoci_config(layout: &Path, tag: &str, args: &[&str]) -> Result<(), String> {
    let image = image_arg(layout, tag);
    let mut all = vec!["config", "--image", &image];
    all.extend_from_slice(args);
    run("umoci", all).map(drop)
}

/// Adds one layer to `LAYOUT:TAG` the way a user of umoci would: unpack to a
/// temporary bundle, let `change` modify the rootfs, repack.
pub fn umoci_layer(layout: &Path, tag: &str, change: impl FnOnce(&Path)) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let bundle = tmp.path().join("bundle");
    let rootfs = umoci_unpack(layout, tag, &bundle)?;
    change(&rootfs);
    umoci_repack(layout, tag, &bundle)
}

/// One change to a rootfs, made between `umoci unpack` and `umoci repack`.
pub type LayerChange = Box<dyn FnOnce(&Path)>;

/// A peer-made layout: `umoci init` (unless LAYOUT already is a layout), `umoci
/// new`, then one [`umoci_layer`] per closure.
pub fn umoci_build(layout: &Path, tag: &str, layers: Vec<LayerChange>) -> Result<(), String> {
    if !layout.join("oci-layout").exists() {
        umoci_init(layout)?;
    }
    umoci_new(layout, tag)?;
    for change in layers {
        umoci_layer(layout, tag, change)?;
    }
    Ok(())
}

/// `skopeo --insecure-policy copy EXTRA... SRC DST`, e.g.
/// `skopeo_copy("oci:/l:latest", "docker-archive:/a.tar:x:y", &[])`.
pub fn skopeo_copy(src: &str, dst: &str, extra_args: &[&str]) -> Result<(), String> {
    let mut args = vec!["--insecure-policy", "copy"];
    args.extend_from_slice(extra_args);
    args.extend([src, dst]);
    run("skopeo", args).map(drop)
}

/// `skopeo --insecure-policy ARGS...`, stdout on success (e.g. `inspect --raw`).
pub fn skopeo(args: &[&str]) -> Result<String, String> {
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    run("skopeo", all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{self, Compression, Entry, ImageSpec, Layer, LayoutBuilder};
    use crate::tree::{self, DiffOpts, Kind};
    use std::fs;
    use std::io::Read;

    #[test]
    fn tools_are_found() {
        assert!(have("umoci") && have("skopeo") && have("sh"));
        assert!(!have("no-such-tool-locald"));
        let err = run("sh", ["-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert!(
            err.contains("oops") && err.contains("exit status: 3"),
            "{err}"
        );
    }

    #[test]
    fn umoci_made_layout_has_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        umoci_build(
            &layout,
            "v1",
            vec![
                Box::new(|r: &Path| {
                    fs::create_dir_all(r.join("cnb/buildpacks")).unwrap();
                    fs::write(r.join("cnb/buildpacks/a"), "a").unwrap();
                    fs::write(r.join("cnb/old"), "old").unwrap();
                }),
                Box::new(|r: &Path| {
                    fs::remove_file(r.join("cnb/old")).unwrap();
                    fs::write(r.join("cnb/new"), "new").unwrap();
                }),
            ],
        )
        .unwrap();
        umoci_config(&layout, "v1", &["--config.env=CNB_USER_ID=1000"]).unwrap();

        let rootfs = umoci_unpack(&layout, "v1", &tmp.path().join("bundle")).unwrap();
        let s = tree::snapshot(&rootfs);
        assert!(!s.contains_key("cnb/old"));
        assert_eq!(s["cnb/new"].kind, Kind::File);
        assert_eq!(s["cnb/buildpacks/a"].size, 1);

        // The last layer umoci wrote deletes cnb/old with a whiteout.
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let blob = |d: &serde_json::Value| {
            fs::read(layout.join("blobs/sha256").join(&d.as_str().unwrap()[7..])).unwrap()
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(&index["manifests"][0]["digest"])).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        let gz = blob(&layers[1]["digest"]);
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .unwrap();
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.ends_with("cnb/.wh.old")),
            "{names:?}"
        );
    }

    #[test]
    fn umoci_unpack_is_reproducible_and_rootless_drops_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let mut b = LayoutBuilder::new(&layout);
        b.add_image(
            ImageSpec::new(vec![Layer::new(
                vec![
                    Entry::dir("cnb/"),
                    Entry::file("cnb/f", "f").owner(1000, 1000),
                    Entry::hardlink("cnb/g", "cnb/f"),
                    Entry::symlink("cnb/s", "f"),
                ],
                Compression::Gzip,
            )])
            .ref_name("latest"),
        );
        b.write().unwrap();
        let outside = fingerprint_dir(&layout);
        let one = umoci_unpack(&layout, "latest", &tmp.path().join("one")).unwrap();
        let two = umoci_unpack(&layout, "latest", &tmp.path().join("two")).unwrap();
        tree::assert_same_tree(&one, &two, &DiffOpts::exact());
        let rootless =
            umoci_unpack_opts(&layout, "latest", &tmp.path().join("three"), true).unwrap();
        tree::assert_same_tree(&one, &rootless, &DiffOpts::rootless());
        let s = tree::snapshot(&rootless);
        let me = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        assert_eq!(
            (s["cnb/f"].uid, s["cnb/f"].gid),
            me,
            "rootless: owned by the caller"
        );
        if is_root() {
            assert_eq!(tree::snapshot(&one)["cnb/f"].uid, 1000);
        }
        assert_eq!(s["cnb/f"].inode, s["cnb/g"].inode);
        assert_eq!(
            s["cnb/f"].sha256.as_deref(),
            Some(&*fixture::sha256_digest(b"f"))
        );
        assert_eq!(
            fingerprint_dir(&layout),
            outside,
            "unpacking must not touch the layout"
        );
    }
}

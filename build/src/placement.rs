//! The run image placed where the CNB lifecycle looks for it in a `-layout-dir`.
//!
//! - [`layout_path_for`]: where in a layout dir the lifecycle reads and writes an
//!   image (pure).
//! - [`place_image`]: a source's image for one platform as a single-manifest OCI
//!   layout at that path, every byte verified while it is written, built in a
//!   temporary sibling and renamed into place; reused when already complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use locald_core::cancel::Cancel;
use locald_core::destination::{copy_image, CopyOptions};
use locald_core::digest::Digest;
use locald_core::error::Result;
use locald_core::fsutil::{self, FinalSymlink};
use locald_core::manifest::{self, read_marker, MAX_JSON_BYTES};
use locald_core::platform::Platform;
use locald_core::progress::{Reporter, Silent};
use locald_core::reference::{ImageReference, DOCKER_HUB};
use locald_core::source::{self, ImageSource, ResolvedImage};
use locald_source_oci_layout::{read_single_image, Existing, OciLayoutDestination};

/// The registry go-containerregistry (and so the lifecycle) names Docker Hub by.
const GGCR_DOCKER_HUB: &str = "index.docker.io";

/// Layers fetched at once by [`place_image`].
const PARALLEL_LAYERS: usize = 4;

/// The path, relative to a CNB `-layout-dir`, where the lifecycle (Platform API
/// 0.12+, `-layout`) reads an image named `reference` (the run image, a previous
/// image) and writes the app image it exports.
///
/// The rule is imgutil's `layout.ParseRefToPath` (buildpacks/imgutil
/// `layout/layout.go`, called by buildpacks/lifecycle `image/layout_handler.go`
/// and the exporter in `cmd/lifecycle/exporter.go`): the name is parsed by
/// go-containerregistry `name.ParseReference(ref, name.WeakValidation)`, and the
/// path is `RegistryStr()/RepositoryStr()/` followed by the tag, or for a digest
/// reference (a tag next to a digest is ignored) by `ALGORITHM/HEX`. In
/// go-containerregistry (`pkg/name/registry.go`, `repository.go`):
///
/// - Docker Hub is `index.docker.io` (`docker.io` is rewritten to it), and a
///   one-component Docker Hub repository gets `library/`;
/// - the first component is a registry only when it contains `.` or `:`, so
///   `localhost/foo` (a registry for Docker) is the Docker Hub repository
///   `localhost/foo` there.
///
/// | reference | path |
/// |---|---|
/// | `docker.io/library/ubuntu:22.04` (`ubuntu:22.04`) | `index.docker.io/library/ubuntu/22.04` |
/// | `heroku/heroku:22` | `index.docker.io/heroku/heroku/22` |
/// | `127.0.0.1:5000/a/b:1` | `127.0.0.1:5000/a/b/1` |
/// | `ghcr.io/x/y@sha256:HEX` | `ghcr.io/x/y/sha256/HEX` |
/// | `localhost/foo` | `index.docker.io/localhost/foo/latest` |
///
/// The path is exact for the lifecycle given `reference.to_string()` (the
/// normalised spelling): pass that string to the lifecycle, not the user's.
/// Every component is a validated name part, so the path never holds `..`.
pub fn layout_path_for(reference: &ImageReference) -> PathBuf {
    let registry = reference.registry();
    let mut path = PathBuf::new();
    if registry == DOCKER_HUB {
        path.push(GGCR_DOCKER_HUB);
    } else if registry.contains('.') || registry.contains(':') {
        path.push(registry);
    } else {
        // `localhost`: not a registry to go-containerregistry.
        path.push(GGCR_DOCKER_HUB);
        path.push(registry);
    }
    for part in reference.repository().split('/') {
        path.push(part);
    }
    match (reference.digest(), reference.tag()) {
        (Some(d), _) => {
            path.push(d.algorithm().as_str());
            path.push(d.hex());
        }
        (None, Some(t)) => path.push(t),
        (None, None) => path.push("latest"),
    }
    path
}

/// What [`place_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The layout directory (`layout_dir/`[`layout_path_for`]).
    pub path: PathBuf,
    /// The digest of the image manifest it holds.
    pub manifest_digest: Digest,
    /// The same manifest was there already, complete; nothing was fetched.
    pub reused: bool,
}

/// Options of [`place_image_with`].
#[derive(Clone, Default)]
pub struct PlaceOptions {
    /// The platform was asked for by the user: a single-platform image for
    /// another one is an error instead of a warning (see [`source::resolve`]).
    pub explicit_platform: bool,
    /// Checked between chunks; set it to stop.
    pub cancel: Cancel,
    /// Told about each layer fetched.
    pub reporter: Option<Arc<dyn Reporter>>,
}

/// Places `image` of `source`, for `platform`, at `layout_dir/`
/// [`layout_path_for`]`(reference)` as a single-manifest OCI layout: `oci-layout`,
/// `index.json` listing exactly the image manifest (never an index: imgutil's
/// layout reader refuses an index with several entries), and its blobs.
///
/// Documents come through [`source::resolve`] (platform chosen, digests checked);
/// layers are streamed from [`ImageSource::open_blob`] and hashed and counted
/// while written. The layout is built in a temporary sibling and renamed into
/// place, replacing an older one, so the path never shows a half-written layout;
/// a failure leaves nothing there. Temporaries of a killed earlier run are
/// removed. When the path already holds this manifest with all its blobs, no blob
/// is read and [`Placed::reused`] is set (layer contents are then not re-hashed:
/// only this function writes there, and it publishes verified layouts only).
pub async fn place_image(
    source: &dyn ImageSource,
    image: Option<&str>,
    platform: &Platform,
    layout_dir: &Path,
    reference: &ImageReference,
) -> Result<Placed> {
    place_image_with(
        source,
        image,
        platform,
        layout_dir,
        reference,
        &PlaceOptions::default(),
    )
    .await
}

/// [`place_image`] with options (progress, cancellation, platform strictness).
pub async fn place_image_with(
    source: &dyn ImageSource,
    image: Option<&str>,
    platform: &Platform,
    layout_dir: &Path,
    reference: &ImageReference,
    options: &PlaceOptions,
) -> Result<Placed> {
    let resolved = source::resolve(source, image, platform, options.explicit_platform).await?;
    let dest = layout_dir.join(layout_path_for(reference));
    // Opening it takes the directory's lock: the check and the write are one.
    let destination =
        OciLayoutDestination::open(&dest, vec![reference.to_string()], Existing::Replace).await?;
    if is_placed(&dest, &resolved) {
        tracing::debug!(path = %dest.display(), digest = %resolved.manifest_digest, "image already placed");
        return Ok(Placed {
            path: dest,
            manifest_digest: resolved.manifest_digest,
            reused: true,
        });
    }
    let copy = CopyOptions {
        cancel: options.cancel.clone(),
        reporter: options.reporter.clone().unwrap_or_else(|| Arc::new(Silent)),
        parallel: PARALLEL_LAYERS,
        ..CopyOptions::default()
    };
    copy_image(source, &resolved, &destination, &copy).await?;
    Ok(Placed {
        path: dest,
        manifest_digest: resolved.manifest_digest,
        reused: false,
    })
}

/// The manifest digest of the single image placed at `dir` by an earlier
/// [`place_image`] (or written there by anyone in that shape), `None` when
/// there is none, it cannot be read, or a layer blob is missing or of another
/// size (a damaged one removed): then it must be placed again.
pub fn placed_manifest(dir: &Path) -> Option<Digest> {
    let image = read_single_image(dir).ok()?;
    has_layers(&image, &[dir]).then_some(image.manifest_digest)
}

/// Whether every layer blob of `image` is a regular file of the right size in
/// one of the layouts `dirs` (its contents are not read).
pub fn has_layers(image: &ResolvedImage, dirs: &[&Path]) -> bool {
    image.layers.iter().all(|l| {
        dirs.iter().any(|dir| {
            std::fs::symlink_metadata(dir.join(l.digest.blob_path()))
                .is_ok_and(|m| m.is_file() && m.len() == l.size)
        })
    })
}

/// Whether `dest` is a complete layout of exactly `image`: its index lists only
/// this manifest, the manifest and config blobs hold the verified bytes, and
/// every layer blob is a regular file of the right size.
fn is_placed(dest: &Path, image: &ResolvedImage) -> bool {
    let check = || -> Option<()> {
        read_marker(dest).ok()?;
        let bytes = fsutil::read_small(
            &dest.join("index.json"),
            MAX_JSON_BYTES,
            FinalSymlink::Follow,
        )
        .ok()?;
        let index = manifest::parse_index(&bytes, "index.json").ok()?;
        match index.manifests().as_slice() {
            [only] if only.digest().to_string() == image.manifest_digest.to_string() => {}
            _ => return None,
        }
        for (digest, bytes) in [
            (&image.manifest_digest, &image.manifest_bytes),
            (&image.config_digest, &image.config_bytes),
        ] {
            let found = fsutil::read_small(
                &dest.join(digest.blob_path()),
                MAX_JSON_BYTES,
                FinalSymlink::Follow,
            )
            .ok()?;
            (found == *bytes).then_some(())?;
        }
        has_layers(image, &[dest]).then_some(())
    };
    check().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn layout_path_table() {
        for (input, want) in [
            ("ubuntu:22.04", "index.docker.io/library/ubuntu/22.04"),
            (
                "docker.io/library/ubuntu:22.04",
                "index.docker.io/library/ubuntu/22.04",
            ),
            (
                "index.docker.io/library/ubuntu",
                "index.docker.io/library/ubuntu/latest",
            ),
            ("heroku/heroku:22", "index.docker.io/heroku/heroku/22"),
            ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000/a/b/1"),
            ("localhost:5000/run:x", "localhost:5000/run/x"),
            ("localhost/foo", "index.docker.io/localhost/foo/latest"),
            ("ghcr.io/x/y/z:v1.2_3", "ghcr.io/x/y/z/v1.2_3"),
            (
                &format!("ghcr.io/x/y@sha256:{HEX}"),
                &format!("ghcr.io/x/y/sha256/{HEX}"),
            ),
            (
                &format!("ghcr.io/x/y:tag@sha256:{HEX}"),
                &format!("ghcr.io/x/y/sha256/{HEX}"),
            ),
            (
                &format!("busybox@sha256:{HEX}"),
                &format!("index.docker.io/library/busybox/sha256/{HEX}"),
            ),
        ] {
            let r = ImageReference::parse(input).unwrap();
            let p = layout_path_for(&r);
            assert_eq!(p, PathBuf::from(want), "{input}");
            assert!(
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "{input}"
            );
        }
    }
}

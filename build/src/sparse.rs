//! What the lifecycle reads in its layout directory, made as small as it can be.
//!
//! The CNB lifecycle (0.18, imgutil's `layout` package over go-containerregistry)
//! takes a layer's diff ID from the image config only when the layer's blob is
//! *missing*; a blob that is there is decompressed and hashed each time a diff ID
//! is asked for. It asks often: the analyzer walks the previous image's layers to
//! find the SBOM layer, and the exporter walks them again for every layer it
//! reuses, and hashes the run image's top layer. So a rebuild with whole images
//! in the layout directory hashes the run image and the previous app image many
//! times over, and a rebuild was slower than a first build.
//!
//! So the build keeps whole images in the app's `images/` directory and gives the
//! lifecycle *sparse* layouts (`oci-layout`, `index.json`, manifest, config; of
//! the layers only the previous image's SBOM layer, which the analyzer restores):
//!
//! - the run image: no layers at all. The exporter then writes none of them
//!   either (it skips a layer it has no bytes for);
//! - the previous app image, which is where the lifecycle exported the last
//!   build (the default `-previous-image`): sparse once the build has kept the
//!   whole image. Reused layers are then not written again either.
//!
//! The image the lifecycle exports is therefore sparse too; [`FilledLayout`]
//! reads it with the missing layers taken from the whole images (every blob is
//! verified against its digest on the way, as any copy is).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use locald_core::destination::{copy_image, CopyOptions, Written};
use locald_core::digest::Digest;
use locald_core::error::Result;
use locald_core::oci_spec::image::Descriptor;
use locald_core::source::{BlobReader, BoxFuture, Document, ImageSource, ResolvedImage};
use locald_source_oci_layout::{Existing, OciLayout, OciLayoutDestination};

/// The label the lifecycle records the app image's build metadata in.
const LIFECYCLE_METADATA: &str = "io.buildpacks.lifecycle.metadata";

/// An OCI layout whose missing blobs are read from other layouts: the sparse
/// image the lifecycle exported, filled from the whole run image and previous
/// image the build keeps.
pub struct FilledLayout {
    layouts: Vec<OciLayout>,
    link: bool,
}

impl FilledLayout {
    /// `primary` (its `index.json` names the image), then each of `fallbacks`
    /// that is a layout (one that is not yet, as the previous image on a first
    /// build, is left out).
    pub fn open(primary: &Path, fallbacks: &[&Path]) -> Result<FilledLayout> {
        let mut layouts = vec![OciLayout::open(primary)?];
        layouts.extend(
            fallbacks
                .iter()
                .filter(|p| p.join("index.json").is_file())
                .filter_map(|p| OciLayout::open(*p).ok()),
        );
        Ok(FilledLayout {
            layouts,
            link: true,
        })
    }

    /// The same, but never offering a blob's file for a hard link: a
    /// destination copies the bytes (for layouts handed to another user, who
    /// must not share an inode with what the build keeps).
    pub fn copying(mut self) -> FilledLayout {
        self.link = false;
        self
    }

    /// The first layout that holds the blob (else the first, whose error then
    /// names the blob as missing there), and its position.
    fn holder(&self, descriptor: &Descriptor) -> (usize, &OciLayout) {
        self.layouts
            .iter()
            .enumerate()
            .find(|(_, l)| {
                l.blob_file(descriptor)
                    .is_some_and(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
            })
            .unwrap_or((0, &self.layouts[0]))
    }
}

impl ImageSource for FilledLayout {
    fn describe(&self) -> String {
        self.layouts[0].describe()
    }

    fn root<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, Result<Document>> {
        self.layouts[0].root(image)
    }

    fn open_blob<'a>(&'a self, descriptor: &'a Descriptor) -> BoxFuture<'a, Result<BlobReader>> {
        self.holder(descriptor).1.open_blob(descriptor)
    }

    fn open_blob_blocking(
        &self,
        descriptor: &Descriptor,
    ) -> Option<Result<Box<dyn std::io::Read + Send>>> {
        self.holder(descriptor).1.open_blob_blocking(descriptor)
    }

    fn blob_file(&self, descriptor: &Descriptor) -> Option<PathBuf> {
        if self.link {
            self.holder(descriptor).1.blob_file(descriptor)
        } else {
            None
        }
    }

    /// The fallbacks are the whole images the build keeps: every blob in them
    /// was verified when a build copied it there, and only builds write there.
    /// The primary layout (what the lifecycle wrote) is verified as it is read.
    fn blob_file_verified(&self, descriptor: &Descriptor) -> bool {
        self.link && self.holder(descriptor).0 > 0
    }
}

/// Writes `image`, kept whole in the layout at `whole`, at `dir` as a
/// single-image layout named `name` holding its manifest, its config and, of
/// its layers, only `keep`; replaces what was at `dir`. Blobs are copied, never
/// hard-linked (the lifecycle's layout directory may be handed to the build
/// user).
pub async fn write_sparse(
    whole: &Path,
    image: &ResolvedImage,
    dir: &Path,
    name: &str,
    keep: HashSet<Digest>,
) -> Result<Written> {
    let source = FilledLayout::open(whole, &[])?;
    let destination =
        OciLayoutDestination::open(dir, vec![name.to_owned()], Existing::Replace).await?;
    copy_image(
        &source.copying(),
        image,
        &destination,
        &CopyOptions {
            only_layers: Some(keep),
            ..CopyOptions::default()
        },
    )
    .await
}

/// Whether the previous image in the lifecycle's layout at `sparse` can be
/// filled: each of its layer blobs is there or in the whole copy at `whole`.
/// When not (the app's `images/` was removed by hand), the lifecycle must not
/// see it: it would reuse layers nobody has. `true` when there is none.
pub fn previous_is_fillable(sparse: &Path, whole: &Path) -> bool {
    if !sparse.join("index.json").exists() {
        return true;
    }
    let Ok(image) = locald_source_oci_layout::read_single_image(sparse) else {
        return false;
    };
    crate::placement::has_layers(&image, &[sparse, whole])
}

/// The layer holding the SBOM files of an app image the lifecycle exported
/// (`sbom.sha` of its `io.buildpacks.lifecycle.metadata` label is that layer's
/// diff ID), if it has one.
pub fn sbom_layer(image: &ResolvedImage) -> Option<Digest> {
    let label = image
        .config
        .config()
        .as_ref()?
        .labels()
        .as_ref()?
        .get(LIFECYCLE_METADATA)?;
    let metadata: serde_json::Value = serde_json::from_str(label).ok()?;
    let diff_id = metadata.get("sbom")?.get("sha")?.as_str()?;
    let position = image
        .config
        .rootfs()
        .diff_ids()
        .iter()
        .position(|d| d == diff_id)?;
    image.layers.get(position).map(|l| l.digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with(label: Option<&str>, diff_ids: &[&str]) -> ResolvedImage {
        let layers: Vec<serde_json::Value> = (0..diff_ids.len())
            .map(|i| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{:064x}", i + 1),
                    "size": 10
                })
            })
            .collect();
        let mut config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {}
        });
        if let Some(l) = label {
            config["config"]["Labels"] = serde_json::json!({ LIFECYCLE_METADATA: l });
        }
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::sha256_of(&config).to_string(),
                "size": config.len()
            },
            "layers": layers
        }))
        .unwrap();
        let digest = Digest::sha256_of(&manifest);
        locald_core::source::from_parts("app".into(), digest.clone(), digest, manifest, config)
            .unwrap()
    }

    #[test]
    fn the_sbom_layer_is_found_by_its_diff_id() {
        let a = format!("sha256:{:064x}", 0xa);
        let b = format!("sha256:{:064x}", 0xb);
        let label = format!(r#"{{"sbom":{{"sha":"{b}"}},"app":[]}}"#);
        let image = image_with(Some(&label), &[&a, &b]);
        assert_eq!(sbom_layer(&image), Some(image.layers[1].digest.clone()));
        // No label, no sbom in it, a diff ID the image does not have, a
        // label that is not JSON: none.
        assert_eq!(sbom_layer(&image_with(None, &[&a, &b])), None);
        assert_eq!(sbom_layer(&image_with(Some(r#"{"app":[]}"#), &[&a])), None);
        assert_eq!(sbom_layer(&image_with(Some(&label), &[&a])), None);
        assert_eq!(sbom_layer(&image_with(Some("{"), &[&a, &b])), None);
    }
}

//! Shared helpers: run locald's extraction through the library, as the CLI does.

use std::path::Path;
use std::sync::Arc;

use locald_core::progress::Silent;
use locald_core::source::{self, ImageSource};
use locald_core::Platform;
use locald_extract::{ExtractOptions, PathFilter, Stats};

/// Opens an OCI layout as a source.
pub fn layout(dir: &Path) -> Box<dyn ImageSource> {
    Box::new(locald_source_oci_layout::OciLayout::open(dir).unwrap())
}

/// Resolves `image` in the layout at `dir` and extracts `paths` (all when empty)
/// into `target`, for linux/amd64.
pub fn extract(
    dir: &Path,
    image: Option<&str>,
    paths: &[&str],
    target: &Path,
) -> Result<Stats, locald_core::Error> {
    extract_from(layout(dir).as_ref(), image, paths, target)
}

/// Like [`extract`], from any source.
pub fn extract_from(
    src: &dyn ImageSource,
    image: Option<&str>,
    paths: &[&str],
    target: &Path,
) -> Result<Stats, locald_core::Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let platform: Platform = "linux/amd64".parse().unwrap();
        let img = source::resolve(src, image, &platform, false).await?;
        let options = ExtractOptions {
            filter: PathFilter::new(paths).unwrap(),
            ..ExtractOptions::default()
        };
        locald_extract::extract_image(src, &img, target, &options, Arc::new(Silent)).await
    })
}

/// The full cause chain of an error, for assertions on messages.
pub fn chain(e: &locald_core::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

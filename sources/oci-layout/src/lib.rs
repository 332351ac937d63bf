//! `locald-source-oci-layout`: images from OCI image layout directories
//! (`oci-layout`, `index.json`, `blobs/ALG/HEX`), as written by `skopeo copy ...
//! oci:DIR:REF`, `umoci`, `crane` and `docker buildx --output type=oci`.
//!
//! The image name selects an `index.json` entry by its
//! `org.opencontainers.image.ref.name` annotation: as written (`builder`, `22`), as a
//! normalised reference (`heroku/builder:22` matches `docker.io/heroku/builder:22`),
//! or by tag (skopeo writes only the tag). A layout holding one image needs no name.
//! Nested indexes and platform selection are the core's job
//! ([`locald_core::source::resolve`]); this crate only finds and reads bytes.

mod destination;

use std::path::{Path, PathBuf};

use locald_core::digest::Digest;
use locald_core::fsutil::{open_regular_or_fifo, read_small, FinalSymlink};
use locald_core::manifest::{self, MAX_JSON_BYTES, REF_NAME};
use locald_core::oci_spec::image::{Descriptor, ImageIndex};
use locald_core::source::{
    BlobReader, BoxFuture, Document, ImageSource, SchemeRegistry, SourceFactory,
};
use locald_core::ImageReference;

pub use destination::{prune_layout_blobs, read_single_image, Existing, OciLayoutDestination};

/// The scheme this crate serves.
pub const SCHEME: &str = "oci-layout";

/// What can go wrong reading a layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The directory is not an OCI layout.
    #[error("{} is not an OCI image layout: {reason}", path.display())]
    NotALayout {
        /// The directory.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A file could not be read.
    #[error("could not read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No index entry has the name asked for.
    #[error("layout {} has no image named {image:?} (it holds: {})", layout.display(), list(available))]
    NoSuchImage {
        /// The layout.
        layout: PathBuf,
        /// The name asked for.
        image: String,
        /// What it holds.
        available: Vec<String>,
    },
    /// Several entries match the name.
    #[error("image name {image:?} matches several images in layout {} ({}); use the exact name", layout.display(), list(candidates))]
    Ambiguous {
        /// The layout.
        layout: PathBuf,
        /// The name asked for.
        image: String,
        /// The matching names.
        candidates: Vec<String>,
    },
    /// No name given and the layout holds several images.
    #[error("layout {} holds {} images; name one of: {}", layout.display(), available.len(), list(available))]
    NeedName {
        /// The layout.
        layout: PathBuf,
        /// What it holds.
        available: Vec<String>,
    },
    /// The layout's index is empty.
    #[error("layout {} holds no images (index.json lists no manifests)", layout.display())]
    Empty {
        /// The layout.
        layout: PathBuf,
    },
    /// A blob named by the layout is not there.
    #[error("layout {} is missing blob {digest} (expected at {})", layout.display(), path.display())]
    MissingBlob {
        /// The layout.
        layout: PathBuf,
        /// The blob.
        digest: Digest,
        /// Where it should be.
        path: PathBuf,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

impl From<LayoutError> for locald_core::Error {
    fn from(e: LayoutError) -> Self {
        locald_core::Error::source(e)
    }
}

/// An OCI image layout directory.
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens a layout, checking its `oci-layout` marker file.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, LayoutError> {
        let dir = dir.into();
        let not = |reason: String| LayoutError::NotALayout {
            path: dir.clone(),
            reason,
        };
        if !dir.is_dir() {
            return Err(not("no such directory".to_owned()));
        }
        manifest::read_marker(&dir).map_err(not)?;
        Ok(OciLayout { dir })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads and parses `index.json` (capped at [`MAX_JSON_BYTES`]).
    pub async fn read_index(&self) -> Result<ImageIndex, locald_core::Error> {
        let path = self.dir.join("index.json");
        let what = format!("index.json of layout {}", self.dir.display());
        let bytes = read_small(&path, MAX_JSON_BYTES, FinalSymlink::Follow).map_err(|source| {
            if source.kind() == std::io::ErrorKind::FileTooLarge {
                locald_core::Error::TooLarge {
                    what: what.clone(),
                    size: MAX_JSON_BYTES + 1,
                    limit: MAX_JSON_BYTES,
                }
            } else {
                LayoutError::Io {
                    path: path.clone(),
                    source,
                }
                .into()
            }
        })?;
        manifest::parse_index(&bytes, &what)
    }

    fn blob_path(&self, d: &Descriptor) -> Result<(Digest, PathBuf), locald_core::Error> {
        let digest = manifest::descriptor_digest(
            d,
            &format!("a descriptor in layout {}", self.dir.display()),
        )?;
        let path = self.dir.join(digest.blob_path());
        Ok((digest, path))
    }

    async fn open_file(&self, d: &Descriptor) -> Result<tokio::fs::File, locald_core::Error> {
        self.open_file_blocking(d).map(tokio::fs::File::from_std)
    }
}

impl OciLayout {
    fn open_file_blocking(&self, d: &Descriptor) -> Result<std::fs::File, locald_core::Error> {
        let (digest, path) = self.blob_path(d)?;
        match open_regular_or_fifo(&path, FinalSymlink::Follow) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(LayoutError::MissingBlob {
                layout: self.dir.clone(),
                digest,
                path,
            }
            .into()),
            Err(source) => Err(LayoutError::Io { path, source }.into()),
        }
    }
}

/// The name an index entry is known by, for listings.
fn entry_name(d: &Descriptor) -> String {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .cloned()
        .unwrap_or_else(|| format!("(unnamed {})", d.digest()))
}

/// Chooses the `index.json` entry that `image` names (pure; see the crate docs for
/// the matching rules).
pub fn select_entry<'a>(
    index: &'a ImageIndex,
    image: Option<&str>,
    layout: &Path,
) -> Result<&'a Descriptor, LayoutError> {
    let entries = index.manifests();
    let available: Vec<String> = entries.iter().map(entry_name).collect();
    let distinct = |ds: &[&'a Descriptor]| {
        let mut seen: Vec<&'a Descriptor> = Vec::new();
        for d in ds {
            if !seen.iter().any(|s| s.digest() == d.digest()) {
                seen.push(d);
            }
        }
        seen
    };
    if entries.is_empty() {
        return Err(LayoutError::Empty {
            layout: layout.to_path_buf(),
        });
    }
    let all: Vec<&Descriptor> = entries.iter().collect();
    let Some(image) = image else {
        return match distinct(&all).as_slice() {
            [only] => Ok(only),
            _ => Err(LayoutError::NeedName {
                layout: layout.to_path_buf(),
                available,
            }),
        };
    };
    let name_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let wanted = ImageReference::parse(image).ok();
    type Rule<'r> = Box<dyn Fn(&str) -> bool + 'r>;
    let rules: Vec<Rule<'_>> = vec![
        Box::new(|n: &str| n == image),
        Box::new(|n: &str| match (&wanted, ImageReference::parse(n)) {
            (Some(w), Ok(r)) => *w == r,
            _ => false,
        }),
        Box::new(|n: &str| {
            !n.contains('/') && !n.contains(':') && wanted.as_ref().and_then(|w| w.tag()) == Some(n)
        }),
    ];
    for rule in &rules {
        let hits: Vec<&Descriptor> = entries
            .iter()
            .filter(|d| name_of(d).is_some_and(|n| rule(&n)))
            .collect();
        match distinct(&hits).as_slice() {
            [] => continue,
            [one] => return Ok(one),
            many => {
                return Err(LayoutError::Ambiguous {
                    layout: layout.to_path_buf(),
                    image: image.to_owned(),
                    candidates: many.iter().map(|d| entry_name(d)).collect(),
                })
            }
        }
    }
    // A layout with a single unnamed image serves whatever name was asked for.
    if let [only] = distinct(&all).as_slice() {
        if name_of(only).is_none() {
            tracing::debug!(
                "using the only (unnamed) image of layout {} for {image}",
                layout.display()
            );
            return Ok(only);
        }
    }
    Err(LayoutError::NoSuchImage {
        layout: layout.to_path_buf(),
        image: image.to_owned(),
        available,
    })
}

impl ImageSource for OciLayout {
    fn describe(&self) -> String {
        format!("{SCHEME}:{}", self.dir.display())
    }

    fn root<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, locald_core::Result<Document>> {
        Box::pin(async move {
            let index = self.read_index().await?;
            let entry = select_entry(&index, image, &self.dir)?.clone();
            let (digest, _) = self.blob_path(&entry)?;
            let what = format!("manifest {digest} in layout {}", self.dir.display());
            manifest::check_size(entry.size(), &what)?;
            let file = self.open_file(&entry).await?;
            let bytes =
                locald_core::source::read_capped(Box::pin(file), MAX_JSON_BYTES, &what).await?;
            if bytes.len() as u64 != entry.size() {
                return Err(locald_core::Error::SizeMismatch {
                    what,
                    expected: entry.size(),
                    actual: bytes.len() as u64,
                });
            }
            Ok(Document {
                bytes,
                media_type: Some(entry.media_type().to_string()),
                digest: Some(digest),
                name: entry
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .cloned(),
            })
        })
    }

    fn blob_file(&self, descriptor: &Descriptor) -> Option<PathBuf> {
        self.blob_path(descriptor).ok().map(|(_, path)| path)
    }

    fn open_blob_blocking(
        &self,
        descriptor: &Descriptor,
    ) -> Option<locald_core::Result<Box<dyn std::io::Read + Send>>> {
        Some(
            self.open_file_blocking(descriptor)
                .map(|f| Box::new(f) as Box<dyn std::io::Read + Send>),
        )
    }

    fn open_blob<'a>(
        &'a self,
        descriptor: &'a Descriptor,
    ) -> BoxFuture<'a, locald_core::Result<BlobReader>> {
        Box::pin(async move {
            let file = self.open_file(descriptor).await?;
            let reader: BlobReader =
                Box::pin(tokio::io::BufReader::with_capacity(128 * 1024, file));
            Ok(reader)
        })
    }
}

/// Opens `oci-layout:PATH` sources.
pub struct Factory;

impl SourceFactory for Factory {
    fn provider(&self) -> String {
        "built-in OCI layout source".to_owned()
    }

    fn open(&self, location: &str) -> locald_core::Result<Box<dyn ImageSource>> {
        if location.is_empty() {
            return Err(locald_core::Error::source(
                "oci-layout needs a directory: --source oci-layout:PATH",
            ));
        }
        Ok(Box::new(OciLayout::open(location)?))
    }
}

/// Adds the `oci-layout` scheme to a registry.
pub fn register(registry: &mut SchemeRegistry) -> locald_core::Result<()> {
    registry.register(SCHEME, Box::new(Factory))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(names: &[(Option<&str>, u8)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = names
            .iter()
            .map(|(n, d)| {
                let mut m = serde_json::json!({
                    "mediaType": manifest::OCI_MANIFEST,
                    "digest": format!("sha256:{}", hex(*d)),
                    "size": 10,
                });
                if let Some(n) = n {
                    m["annotations"] = serde_json::json!({ REF_NAME: n });
                }
                m
            })
            .collect();
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    fn hex(b: u8) -> String {
        format!("{b:02x}").repeat(32)
    }

    fn pick(idx: &ImageIndex, image: Option<&str>) -> Result<String, String> {
        select_entry(idx, image, Path::new("L"))
            .map(|d| d.digest().to_string()[7..9].to_owned())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn selection_table() {
        let idx = index(&[
            (Some("builder"), 1),
            (Some("docker.io/heroku/builder:22"), 2),
            (Some("24"), 3),
            (Some("127.0.0.1:5000/run:latest"), 4),
        ]);
        assert_eq!(pick(&idx, Some("builder")).unwrap(), "01");
        assert_eq!(pick(&idx, Some("heroku/builder:22")).unwrap(), "02");
        assert_eq!(
            pick(&idx, Some("docker.io/heroku/builder:22")).unwrap(),
            "02"
        );
        assert_eq!(pick(&idx, Some("heroku/builder:24")).unwrap(), "03");
        assert_eq!(pick(&idx, Some("127.0.0.1:5000/run")).unwrap(), "04");
        let e = pick(&idx, Some("nope:1")).unwrap_err();
        assert!(
            e.contains("no image named \"nope:1\"")
                && e.contains("builder, docker.io/heroku/builder:22, 24"),
            "{e}"
        );
        let e = pick(&idx, None).unwrap_err();
        assert!(e.contains("holds 4 images"), "{e}");
    }

    #[test]
    fn single_and_ambiguous() {
        let idx = index(&[(None, 1)]);
        assert_eq!(pick(&idx, None).unwrap(), "01");
        assert_eq!(pick(&idx, Some("anything")).unwrap(), "01");
        let idx = index(&[(Some("a"), 1)]);
        assert_eq!(pick(&idx, None).unwrap(), "01");
        assert!(pick(&idx, Some("b")).is_err());
        // The same image under two names is still one image.
        let idx = index(&[(Some("a"), 1), (Some("b"), 1)]);
        assert_eq!(pick(&idx, None).unwrap(), "01");
        let idx = index(&[(Some("x/a:1"), 1), (Some("docker.io/x/a:1"), 2)]);
        assert_eq!(pick(&idx, Some("x/a:1")).unwrap(), "01");
        let idx = index(&[
            (Some("docker.io/x/a:1"), 1),
            (Some("index.docker.io/x/a:1"), 2),
        ]);
        assert!(pick(&idx, Some("x/a:1"))
            .unwrap_err()
            .contains("matches several"));
        assert!(pick(&index(&[]), None)
            .unwrap_err()
            .contains("holds no images"));
    }
}

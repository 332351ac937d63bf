//! `locald-source-oci-archive`: images from `oci-archive:FILE[:REF]`, a tar of an
//! OCI image layout as `skopeo copy ... oci-archive:FILE:REF` and `podman save
//! --format oci-archive` write. It is a locald *plugin*: a `cdylib` written only
//! against `locald-plugin` (no locald internals), and the worked example for
//! third parties who add sources without forking locald.
//!
//! Shape, and why:
//!
//! - [`OciArchivePlugin`] implements [`locald_plugin::Plugin`], [`OciArchive`]
//!   implements [`locald_plugin::Source`], and `export_plugin!` does the C side.
//!   The work is in inherent methods returning the typed [`ArchiveError`];
//!   the trait impls only convert to [`locald_plugin::Error`] (which decides
//!   [`Status::NotFound`](locald_plugin::Status::NotFound) for missing images,
//!   platforms and blobs).
//! - The archive is read **in place**: opening indexes the tar's headers once
//!   (member -> offset, size; links followed inside the archive); documents and
//!   blobs are positioned reads of the original file. Nothing is extracted or
//!   copied. Compressed outer archives are refused with a hint.
//! - The layout model (digests, names, platforms, `FILE[:REF]`) is pure code in
//!   `layout`, table-tested; `archive` does the tar I/O.
//! - Every archive is hostile: member names with `..`, absolute names and NULs are
//!   refused; links may not leave the archive; JSON documents are capped at
//!   16 MiB; documents read here are checked against their digest and size (the
//!   host verifies manifests, configs and blobs again; it cannot verify the
//!   indexes it never sees).
//!
//! Image selection: the image name (or, when the host passes none, the REF of the
//! location) picks an `index.json` entry by its `org.opencontainers.image.ref.name`
//! annotation: as written, as the same reference in canonical spelling (`busybox`
//! finds `docker.io/library/busybox:latest`), or by its tag (skopeo records just
//! the REF, often a bare tag). An archive of one image needs no name. Nested
//! indexes are followed to the manifest for the requested platform.

#![warn(missing_docs)]

mod archive;
mod error;
mod layout;

use std::path::Path;

use locald_plugin::{export_plugin, Plugin, ResolvedImage, Source};
use sha2::Digest as _;

pub use archive::MemberReader;
pub use error::ArchiveError;
pub use layout::MAX_JSON_BYTES;

use archive::{Archive, Location};
use layout::{Descriptor, Index, Kind, Manifest, Platform};

/// The scheme this plugin serves.
pub const SCHEME: &str = "oci-archive";

/// The plugin: `oci-archive:FILE[:REF]`.
pub struct OciArchivePlugin;

impl Plugin for OciArchivePlugin {
    type Source = OciArchive;
    const NAME: &'static str = "oci-archive";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SCHEMES: &'static [&'static str] = &[SCHEME];

    fn open(location: &str) -> Result<OciArchive, locald_plugin::Error> {
        Ok(OciArchive::open_location(location)?)
    }
}

export_plugin!(OciArchivePlugin);

/// An open oci-archive.
#[derive(Debug)]
pub struct OciArchive {
    archive: Archive,
    /// The REF of `FILE:REF`.
    reference: Option<String>,
}

impl OciArchive {
    /// Opens `FILE` or `FILE:REF` (split at the rightmost `:` whose left side
    /// is an existing file; otherwise the whole location is the file).
    pub fn open_location(location: &str) -> Result<Self, ArchiveError> {
        if location.is_empty() {
            return Err(ArchiveError::NoFile);
        }
        let (file, reference) = layout::split_location(location, |p| Path::new(p).is_file());
        Self::open(Path::new(file), reference.map(str::to_owned))
    }

    /// Opens the archive at `path`, indexing it and checking that it holds an
    /// OCI layout; `reference` is the image to use when none is asked for.
    pub fn open(path: &Path, reference: Option<String>) -> Result<Self, ArchiveError> {
        let archive = Archive::open(path)?;
        let not = |reason: String| ArchiveError::NotAnArchive {
            path: path.to_path_buf(),
            reason,
        };
        let Some(marker) = archive.locate("oci-layout")? else {
            return Err(not(if archive.locate("manifest.json")?.is_some() {
                "it has no oci-layout file but a manifest.json: it looks like a \
                 docker-archive (`docker save`); use --source docker-archive:FILE"
                    .to_owned()
            } else {
                "it has no oci-layout file (is it a tar of an OCI image layout?)".to_owned()
            }));
        };
        let bytes = archive.read(marker, 64 * 1024, "the oci-layout file")?;
        let version = serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| not(format!("its oci-layout file is not JSON ({e})")))?
            .get("imageLayoutVersion")
            .and_then(|v| v.as_str().map(str::to_owned));
        match version {
            Some(v) if v.starts_with("1.") => {}
            Some(v) => return Err(not(format!("unsupported imageLayoutVersion {v:?}"))),
            None => {
                return Err(not(
                    "its oci-layout file has no imageLayoutVersion".to_owned()
                ))
            }
        }
        if archive.locate("index.json")?.is_none() {
            return Err(not("it has no index.json".to_owned()));
        }
        Ok(OciArchive { archive, reference })
    }

    /// A member that must be there.
    fn member(&self, name: &str, referrer: &str) -> Result<Location, ArchiveError> {
        self.archive
            .locate(name)?
            .ok_or_else(|| ArchiveError::MissingMember {
                path: self.archive.path().to_path_buf(),
                name: name.to_owned(),
                referrer: referrer.to_owned(),
            })
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: &str,
    ) -> Result<T, ArchiveError> {
        serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadDocument {
            path: self.archive.path().to_path_buf(),
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Reads the JSON document a descriptor names, checking its size and digest.
    fn read_document(&self, d: &Descriptor, what: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = self.archive.path();
        let digest = layout::parse_digest(&d.digest).ok_or_else(|| ArchiveError::BadDigest {
            what: what.to_owned(),
            digest: d.digest.clone(),
        })?;
        if d.size > MAX_JSON_BYTES {
            return Err(ArchiveError::TooLarge {
                path: path.to_path_buf(),
                what: what.to_owned(),
                size: d.size,
                limit: MAX_JSON_BYTES,
            });
        }
        let loc = self.member(&digest.member(), what)?;
        if loc.size != d.size {
            return Err(ArchiveError::SizeMismatch {
                path: path.to_path_buf(),
                what: what.to_owned(),
                expected: d.size,
                actual: loc.size,
            });
        }
        let bytes = self.archive.read(loc, MAX_JSON_BYTES, what)?;
        let actual = match digest.algorithm {
            "sha512" => format!("sha512:{:x}", sha2::Sha512::digest(&bytes)),
            _ => format!("sha256:{:x}", sha2::Sha256::digest(&bytes)),
        };
        if actual != d.digest {
            return Err(ArchiveError::DigestMismatch {
                path: path.to_path_buf(),
                what: what.to_owned(),
                expected: d.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Resolves `image` (else the location's REF, else the only image) for
    /// `platform` to its manifest and config (see the crate docs).
    pub fn resolve_image(
        &self,
        image: Option<&str>,
        platform: &str,
    ) -> Result<ResolvedImage, ArchiveError> {
        let platform = Platform::parse(platform)?;
        let path = self.archive.path();
        let loc = self.member("index.json", "the OCI layout")?;
        let bytes = self.archive.read(loc, MAX_JSON_BYTES, "index.json")?;
        let index: Index = self.parse(&bytes, "index.json")?;
        let wanted = image.or(self.reference.as_deref());
        let entry = layout::select_entry(&index, wanted, path)?;
        let name = entry.ref_name().map(str::to_owned);
        let shown = wanted
            .map(str::to_owned)
            .or_else(|| name.clone())
            .unwrap_or_else(|| "the image".to_owned());
        let root_digest = entry.digest.clone();
        let mut desc = entry.clone();
        for _ in 0..=layout::MAX_INDEX_DEPTH {
            let what = format!("document {} of {shown}", desc.digest);
            let bytes = self.read_document(&desc, &what)?;
            let kind =
                layout::classify(desc.media_type.as_deref(), &bytes).map_err(|media_type| {
                    ArchiveError::UnsupportedMediaType {
                        path: path.to_path_buf(),
                        what: what.clone(),
                        media_type,
                    }
                })?;
            match kind {
                Kind::Index => {
                    let what = format!("image index {} of {shown}", desc.digest);
                    let index: Index = self.parse(&bytes, &what)?;
                    desc = layout::select_platform(&index, &platform, path, &what)?.clone();
                }
                Kind::Manifest => {
                    let what = format!("manifest {} of {shown}", desc.digest);
                    let manifest: Manifest = self.parse(&bytes, &what)?;
                    let config = self.read_document(
                        &manifest.config,
                        &format!("config {} of {shown}", manifest.config.digest),
                    )?;
                    return Ok(ResolvedImage {
                        name,
                        manifest: bytes,
                        manifest_digest: desc.digest,
                        root_digest,
                        config,
                    });
                }
            }
        }
        Err(ArchiveError::IndexTooDeep {
            path: path.to_path_buf(),
            image: shown,
            limit: layout::MAX_INDEX_DEPTH,
        })
    }

    /// Opens blob `digest` (`blobs/ALG/HEX` in the archive), which must be
    /// `size` bytes, for reading in place.
    pub fn open_blob_reader(&self, digest: &str, size: u64) -> Result<MemberReader, ArchiveError> {
        let path = self.archive.path();
        let d = layout::parse_digest(digest).ok_or_else(|| ArchiveError::BadDigest {
            what: "blob requested".to_owned(),
            digest: digest.to_owned(),
        })?;
        let loc = self
            .archive
            .locate(&d.member())?
            .ok_or_else(|| ArchiveError::MissingBlob {
                path: path.to_path_buf(),
                digest: digest.to_owned(),
            })?;
        if loc.size != size {
            return Err(ArchiveError::SizeMismatch {
                path: path.to_path_buf(),
                what: format!("blob {digest}"),
                expected: size,
                actual: loc.size,
            });
        }
        Ok(self.archive.reader(loc))
    }
}

impl Source for OciArchive {
    type Blob = MemberReader;

    fn resolve(
        &self,
        image: Option<&str>,
        platform: &str,
    ) -> Result<ResolvedImage, locald_plugin::Error> {
        Ok(self.resolve_image(image, platform)?)
    }

    fn open_blob(&self, digest: &str, size: u64) -> Result<MemberReader, locald_plugin::Error> {
        Ok(self.open_blob_reader(digest, size)?)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::path::PathBuf;

    use locald_plugin::Status;
    use serde_json::json;

    use super::*;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn sha(b: &[u8]) -> String {
        format!("sha256:{:x}", sha2::Sha256::digest(b))
    }

    enum Entry {
        File(Vec<u8>),
        Symlink(&'static str),
        HardLink(&'static str),
        Dir,
    }

    /// A tar written entry by entry with raw names (the tar crate's own path
    /// setters refuse the hostile names some tests need).
    #[derive(Default)]
    struct Tar(Vec<(String, Entry)>);

    impl Tar {
        fn file(&mut self, name: &str, data: impl Into<Vec<u8>>) -> &mut Self {
            self.0.push((name.to_owned(), Entry::File(data.into())));
            self
        }

        fn link(&mut self, name: &str, entry: Entry) -> &mut Self {
            self.0.push((name.to_owned(), entry));
            self
        }

        /// Adds `blobs/sha256/HEX`; returns the digest.
        fn blob(&mut self, data: &[u8]) -> String {
            let d = sha(data);
            self.file(&format!("blobs/sha256/{}", &d[7..]), data);
            d
        }

        fn write(&self, path: &Path) {
            let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
            for (name, entry) in &self.0 {
                let mut h = tar::Header::new_ustar();
                h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_mode(0o644);
                let data: &[u8] = match entry {
                    Entry::File(d) => {
                        h.set_entry_type(tar::EntryType::Regular);
                        d
                    }
                    Entry::Symlink(t) | Entry::HardLink(t) => {
                        h.set_entry_type(if matches!(entry, Entry::Symlink(_)) {
                            tar::EntryType::Symlink
                        } else {
                            tar::EntryType::Link
                        });
                        h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                        &[]
                    }
                    Entry::Dir => {
                        h.set_entry_type(tar::EntryType::Directory);
                        &[]
                    }
                };
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data).unwrap();
            }
            b.into_inner().unwrap().flush().unwrap();
        }
    }

    /// One single-platform image's documents, added to a tar.
    struct Image {
        manifest: Vec<u8>,
        digest: String,
        config: Vec<u8>,
        layer: Vec<u8>,
        layer_digest: String,
    }

    fn image(tar: &mut Tar, platform: &str, layer: &[u8]) -> Image {
        let p: Vec<&str> = platform.split('/').collect();
        let mut config = json!({
            "os": p[0], "architecture": p[1],
            "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
            "config": {"Env": ["PATH=/bin"]},
        });
        if let Some(v) = p.get(2) {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = tar.blob(&config);
        let layer_digest = tar.blob(layer);
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap();
        let digest = tar.blob(&manifest);
        Image {
            manifest,
            digest,
            config,
            layer: layer.to_vec(),
            layer_digest,
        }
    }

    fn desc(
        media_type: &str,
        digest: &str,
        size: usize,
        name: Option<&str>,
        platform: Option<&str>,
    ) -> serde_json::Value {
        let mut d = json!({"mediaType": media_type, "digest": digest, "size": size});
        if let Some(n) = name {
            d["annotations"] = json!({ layout::REF_NAME: n });
        }
        if let Some(p) = platform {
            let p: Vec<&str> = p.split('/').collect();
            d["platform"] = json!({"os": p[0], "architecture": p[1]});
            if let Some(v) = p.get(2) {
                d["platform"]["variant"] = json!(v);
            }
        }
        d
    }

    fn manifest_desc(i: &Image, name: Option<&str>) -> serde_json::Value {
        desc(OCI_MANIFEST, &i.digest, i.manifest.len(), name, None)
    }

    /// Adds `oci-layout` and an `index.json` listing `entries`.
    fn finish(tar: &mut Tar, entries: Vec<serde_json::Value>) {
        tar.file("oci-layout", r#"{"imageLayoutVersion": "1.0.0"}"#);
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        tar.file("index.json", serde_json::to_vec(&index).unwrap());
    }

    fn write(dir: &Path, name: &str, tar: &Tar) -> PathBuf {
        let path = dir.join(name);
        tar.write(&path);
        path
    }

    fn open(location: &Path) -> Result<OciArchive, locald_plugin::Error> {
        OciArchivePlugin::open(location.to_str().unwrap())
    }

    fn read_blob(src: &OciArchive, digest: &str, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        src.open_blob(digest, size as u64)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn single_image_as_skopeo_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = Tar::default();
        tar.link("blobs", Entry::Dir)
            .link("blobs/sha256", Entry::Dir);
        let img = image(&mut tar, "linux/amd64", b"layer bytes, not really a tar");
        finish(&mut tar, vec![manifest_desc(&img, Some("latest"))]);
        let path = write(dir.path(), "one.tar", &tar);

        let src = open(&path).unwrap();
        let r = src.resolve(None, "linux/amd64").unwrap();
        assert_eq!(r.name.as_deref(), Some("latest"));
        assert_eq!(r.manifest, img.manifest);
        assert_eq!(r.manifest_digest, img.digest);
        assert_eq!(r.root_digest, img.digest);
        assert_eq!(r.config, img.config);
        // The platform is the host's to check for a single-platform image.
        assert_eq!(
            src.resolve(None, "linux/arm64").unwrap().manifest_digest,
            img.digest
        );
        // By tag, and the only image's name.
        assert_eq!(
            src.resolve(Some("busybox:latest"), "linux/amd64").unwrap(),
            r
        );
        let e = src.resolve(Some("other"), "linux/amd64").unwrap_err();
        assert_eq!(e.kind(), Status::NotFound);
        assert!(
            e.message()
                .contains("has no image named \"other\" (it holds: latest)"),
            "{e}"
        );

        assert_eq!(
            read_blob(&src, &img.layer_digest, img.layer.len()),
            img.layer
        );
        // Readers are independent (positioned reads on one descriptor).
        let mut a = src
            .open_blob(&img.layer_digest, img.layer.len() as u64)
            .unwrap();
        let mut b = src
            .open_blob(&r.manifest_digest, img.manifest.len() as u64)
            .unwrap();
        let (mut x, mut y) = ([0u8; 5], [0u8; 1]);
        a.read_exact(&mut x).unwrap();
        b.read_exact(&mut y).unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).unwrap();
        assert_eq!([&x[..], &rest].concat(), img.layer);
        assert_eq!(y[0], img.manifest[0]);
    }

    #[test]
    fn multi_platform_index_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = Tar::default();
        let amd = image(&mut tar, "linux/amd64", b"amd64 layer");
        let arm = image(&mut tar, "linux/arm64/v8", b"arm64 layer");
        let att = tar.blob(br#"{"schemaVersion":2,"config":{}}"#);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                desc(OCI_MANIFEST, &amd.digest, amd.manifest.len(), None, Some("linux/amd64")),
                desc(OCI_MANIFEST, &arm.digest, arm.manifest.len(), None, Some("linux/arm64/v8")),
                desc(OCI_MANIFEST, &att, 31, None, Some("unknown/unknown")),
            ],
        }))
        .unwrap();
        let index_digest = tar.blob(&index);
        finish(
            &mut tar,
            vec![desc(
                OCI_INDEX,
                &index_digest,
                index.len(),
                Some("docker.io/library/multi:1.0"),
                None,
            )],
        );
        let path = write(dir.path(), "multi.tar", &tar);
        let src = open(&path).unwrap();

        for (platform, want) in [
            ("linux/amd64", &amd),
            ("linux/arm64", &arm),
            ("linux/aarch64/v8", &arm),
        ] {
            let r = src.resolve(Some("multi:1.0"), platform).unwrap();
            assert_eq!(r.manifest_digest, want.digest, "{platform}");
            assert_eq!(r.root_digest, index_digest);
            assert_eq!(r.config, want.config);
            assert_eq!(r.name.as_deref(), Some("docker.io/library/multi:1.0"));
        }
        let e = src.resolve(None, "linux/s390x").unwrap_err();
        assert_eq!(e.kind(), Status::NotFound);
        assert!(
            e.message()
                .contains("has no manifest for linux/s390x (it has: linux/amd64, linux/arm64/v8)"),
            "{e}"
        );
        let e = src.resolve(None, "linux").unwrap_err();
        assert_eq!(e.kind(), Status::Error);
        assert!(e.message().contains("is not of the form OS/ARCH"), "{e}");
        assert_eq!(
            read_blob(&src, &arm.layer_digest, arm.layer.len()),
            arm.layer
        );
    }

    #[test]
    fn location_ref_and_image_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = Tar::default();
        let a = image(&mut tar, "linux/amd64", b"a");
        let b = image(&mut tar, "linux/amd64", b"b");
        finish(
            &mut tar,
            vec![
                manifest_desc(&a, Some("docker.io/library/app:1")),
                manifest_desc(&b, Some("docker.io/library/app:2")),
            ],
        );
        std::fs::create_dir(dir.path().join("odd:dir")).unwrap();
        let path = write(dir.path(), "odd:dir/two.tar", &tar);
        let loc = path.to_str().unwrap();

        let src = OciArchivePlugin::open(loc).unwrap();
        let e = src.resolve(None, "linux/amd64").unwrap_err();
        assert_eq!(e.kind(), Status::Error);
        assert!(
            e.message().contains("holds 2 images; name one (oci-archive:FILE:REF) of: docker.io/library/app:1, docker.io/library/app:2"),
            "{e}"
        );
        assert_eq!(
            src.resolve(Some("app:2"), "linux/amd64")
                .unwrap()
                .manifest_digest,
            b.digest
        );

        for (location, want) in [
            (format!("{loc}:app:1"), &a),
            (format!("{loc}:docker.io/library/app:2"), &b),
        ] {
            let src = OciArchivePlugin::open(&location).unwrap();
            assert_eq!(
                src.resolve(None, "linux/amd64").unwrap().manifest_digest,
                want.digest,
                "{location}"
            );
            // An image name from the host wins over the location's REF.
            assert_eq!(
                src.resolve(Some("app:1"), "linux/amd64")
                    .unwrap()
                    .manifest_digest,
                a.digest
            );
        }
        let src = OciArchivePlugin::open(&format!("{loc}:app:3")).unwrap();
        let e = src.resolve(None, "linux/amd64").unwrap_err();
        assert_eq!(e.kind(), Status::NotFound);
        assert!(e.message().contains("no image named \"app:3\""), "{e}");

        let e = OciArchivePlugin::open("").unwrap_err();
        assert!(e.message().contains("needs a file"), "{e}");
        let e =
            OciArchivePlugin::open(&format!("{}/nope.tar:1", dir.path().display())).unwrap_err();
        assert!(e.message().contains("nope.tar:1: No such file"), "{e}");
    }

    #[test]
    fn links_dot_slash_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut staged = Tar::default();
        let img = image(&mut staged, "linux/amd64", b"linked layer");
        // Re-add the same documents under other names, reached through links.
        let mut tar = Tar::default();
        tar.link("./", Entry::Dir)
            .link("./blobs/", Entry::Dir)
            .file("./store/config.json", img.config.clone())
            .file("./store/layer", img.layer.clone())
            .file(
                &format!("./blobs/sha256/{}", &img.digest[7..]),
                img.manifest.clone(),
            )
            .link(
                &format!("./blobs/sha256/{}", &sha(&img.config)[7..]),
                Entry::Symlink("../../store/config.json"),
            )
            .link(
                &format!("blobs/sha256/{}", &img.layer_digest[7..]),
                Entry::HardLink("./store/layer"),
            );
        finish(&mut tar, vec![manifest_desc(&img, None)]);
        let path = write(dir.path(), "links.tar", &tar);
        let src = open(&path).unwrap();
        let r = src.resolve(Some("whatever"), "linux/amd64").unwrap();
        assert_eq!(r.config, img.config);
        assert_eq!(r.name, None);
        assert_eq!(
            read_blob(&src, &img.layer_digest, img.layer.len()),
            img.layer
        );
        let e = src.open_blob(&img.layer_digest, 3).unwrap_err();
        assert!(
            e.message()
                .contains("is 12 bytes, but its descriptor says 3"),
            "{e}"
        );
    }

    /// A good archive with one change, and what opening or resolving it says.
    #[test]
    fn hostile_and_broken_archives() {
        let dir = tempfile::tempdir().unwrap();
        let good = |extra: &dyn Fn(&mut Tar, &Image)| {
            let mut tar = Tar::default();
            let img = image(&mut tar, "linux/amd64", b"layer");
            extra(&mut tar, &img);
            finish(&mut tar, vec![manifest_desc(&img, Some("latest"))]);
            tar
        };
        let check = |name: &str, tar: &Tar, want: &str| {
            let path = write(dir.path(), name, tar);
            let e = open(&path)
                .and_then(|s| s.resolve(None, "linux/amd64"))
                .unwrap_err();
            assert!(e.message().contains(want), "{name}: {e}");
            assert_eq!(e.kind(), Status::Error, "{name}");
        };
        check(
            "dotdot.tar",
            &good(&|t, _| {
                t.file("blobs/../../evil", "x");
            }),
            "archive member \"blobs/../../evil\" is refused: it contains '..'",
        );
        check(
            "abs.tar",
            &good(&|t, _| {
                t.file("/etc/evil", "x");
            }),
            "is refused: it is absolute",
        );
        check(
            "loop.tar",
            &good(&|t, img| {
                t.link(
                    &format!("blobs/sha256/{}", &sha(&img.config)[7..]),
                    Entry::Symlink("a"),
                );
                t.link("blobs/sha256/a", Entry::Symlink("b"));
                t.link("blobs/sha256/b", Entry::HardLink("blobs/sha256/a"));
            }),
            "more than 40 links (a loop?)",
        );
        check(
            "outside.tar",
            &good(&|t, img| {
                t.link(
                    &format!("blobs/sha256/{}", &sha(&img.config)[7..]),
                    Entry::Symlink("../../../etc/passwd"),
                );
            }),
            "is a link to \"../../../etc/passwd\", outside the archive",
        );
        check(
            "corrupt.tar",
            &good(&|t, img| {
                // Same size, other bytes: a later member replaces the earlier.
                let mut bad = img.manifest.clone();
                bad[0] = b' ';
                t.file(&format!("blobs/sha256/{}", &img.digest[7..]), bad);
            }),
            "is corrupt: its digest is sha256:",
        );
        check(
            "short.tar",
            &good(&|t, img| {
                t.file(&format!("blobs/sha256/{}", &sha(&img.config)[7..]), "{}");
            }),
            "is 2 bytes, but its descriptor says",
        );
        check(
            "noconfig.tar",
            &good(&|t, img| {
                t.link(
                    &format!("blobs/sha256/{}", &sha(&img.config)[7..]),
                    Entry::Dir,
                );
            }),
            "is a directory, not a file",
        );
        let mut tar = Tar::default();
        finish(&mut tar, vec![]);
        check("empty.tar", &tar, "holds no images");
        let mut tar = Tar::default();
        tar.file("manifest.json", "[]");
        check("docker.tar", &tar, "looks like a docker-archive");
        let mut tar = Tar::default();
        tar.file("oci-layout", r#"{"imageLayoutVersion": "2.0.0"}"#);
        check("v2.tar", &tar, "unsupported imageLayoutVersion \"2.0.0\"");
        let mut tar = Tar::default();
        tar.file("oci-layout", r#"{"imageLayoutVersion": "1.0.0"}"#);
        check("noindex.tar", &tar, "it has no index.json");
        let mut tar = Tar::default();
        tar.file("oci-layout", r#"{"imageLayoutVersion": "1.0.0"}"#)
            .file("index.json", vec![b' '; MAX_JSON_BYTES as usize + 1]);
        check(
            "huge.tar",
            &tar,
            "more than the 16777216-byte limit for JSON documents",
        );
        let mut tar = Tar::default();
        tar.file("oci-layout", r#"{"imageLayoutVersion": "1.0.0"}"#)
            .file("index.json", r#"{"manifests": "no"}"#);
        check("badindex.tar", &tar, "index.json in");

        // Not tars at all, or cut short.
        let gz = dir.path().join("a.tar.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        let e = open(&gz).unwrap_err();
        assert!(
            e.message()
                .contains("it is gzip-compressed; this plugin reads the plain tar"),
            "{e}"
        );
        let junk = dir.path().join("junk.tar");
        std::fs::write(&junk, vec![b'x'; 2048]).unwrap();
        assert!(open(&junk)
            .unwrap_err()
            .message()
            .contains("is not a tar archive"));
        let cut = write(dir.path(), "cut.tar", &good(&|_, _| {}));
        let len = std::fs::metadata(&cut).unwrap().len();
        // The last member (index.json) starts 3 blocks before the end padding.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&cut)
            .unwrap()
            .set_len(len - 1024 - 512 - 100)
            .unwrap();
        let e = open(&cut).unwrap_err();
        assert!(e.message().contains("is truncated"), "{e}");
        let e = open(dir.path()).unwrap_err();
        assert!(
            e.message()
                .contains("is not an oci-archive: it is not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn blob_requests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = Tar::default();
        let img = image(&mut tar, "linux/amd64", b"layer");
        finish(&mut tar, vec![manifest_desc(&img, None)]);
        let src = open(&write(dir.path(), "a.tar", &tar)).unwrap();
        let hex = &img.layer_digest[7..];
        for bad in [
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:../../{}", &hex[6..]),
            format!("sha384:{hex}"),
            hex.to_owned(),
            String::new(),
        ] {
            let e = src.open_blob(&bad, 5).unwrap_err();
            assert_eq!(e.kind(), Status::Error, "{bad}");
            assert!(e.message().contains("is not a valid digest"), "{bad}: {e}");
        }
        let missing = format!("sha256:{}", "0".repeat(64));
        let e = src.open_blob(&missing, 5).unwrap_err();
        assert_eq!(e.kind(), Status::NotFound);
        assert!(
            e.message().ends_with(&format!("has no blob {missing}")),
            "{e}"
        );
        let e = src
            .open_blob(&format!("sha512:{}", "0".repeat(128)), 5)
            .unwrap_err();
        assert_eq!(e.kind(), Status::NotFound);
        assert_eq!(read_blob(&src, &img.layer_digest, 5), b"layer");
    }

    #[test]
    fn exports_the_plugin_symbols() {
        assert_eq!(locald_plugin_abi_version(), locald_plugin::ABI_VERSION);
        let t = locald_plugin_entry_v1();
        assert!(!t.is_null());
        assert_eq!(t, locald_plugin_entry_v1());
    }
}

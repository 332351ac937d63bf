//! `docker-archive:FILE` written: [`DockerArchiveDestination`], a `docker
//! load`-able tarball.
//!
//! The archive is what Docker 25+ `docker save` writes: an OCI layout
//! (`oci-layout`, `index.json` whose entries carry `io.containerd.image.name` =
//! the full reference and `org.opencontainers.image.ref.name` = the tag,
//! `blobs/sha256/...`) plus `manifest.json` (`Config`, `RepoTags` in Docker's
//! short spelling, `app:latest` or `registry:5000/repo:tag`, and `Layers`
//! pointing at the blob paths) and `repositories` (repository -> tag -> the last
//! layer's diff_id, as moby's `image/tarexport/save.go` writes it). Layers are
//! stored as they are (compressed): `docker load` decompresses them, skopeo too.
//! No `LayerSources`: Docker records layers listed there as foreign ones.
//!
//! Deterministic: entries sorted, mtimes 0, owner 0:0, fixed modes. Blobs are
//! gathered first (a source's own files are used in place, others are written
//! to a temporary directory beside the archive, verified); the tar is written
//! when the manifest is put, to a temporary file beside the archive that is
//! renamed over it. `-` (standard output) is not supported.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use locald_core::destination::{check_blob, write_blob_file, BlobPut, ImageDestination, Written};
use locald_core::digest::Digest;
use locald_core::error::{Error, Result};
use locald_core::fsutil::{self, FinalSymlink};
use locald_core::manifest::{
    index_entry, manifest_media_type, to_json, OCI_INDEX, OCI_LAYOUT_MARKER, REF_NAME,
};
use locald_core::reference::DOCKER_HUB;
use locald_core::source::{BoxFuture, ResolvedImage};
use locald_core::stream::HashingReader;
use locald_core::ImageReference;

/// The annotation containerd and `docker load` (25+) name an imported image by.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// Write buffer size.
const BUF: usize = 128 * 1024;

/// A docker archive being written.
pub struct DockerArchiveDestination {
    path: PathBuf,
    /// The image's names, parsed, each with a tag.
    names: Vec<ImageReference>,
    /// Where blobs not on local disk are gathered.
    staging: tempfile::TempDir,
    /// Every blob put: its file and whether it still has to be verified.
    blobs: Mutex<HashMap<Digest, (PathBuf, bool)>>,
}

impl DockerArchiveDestination {
    /// Opens `path` to receive one image tagged `names` (tag references such as
    /// `docker.io/library/app:latest`; a digest is refused: `RepoTags` holds
    /// tags).
    pub fn create(path: &Path, names: &[String]) -> Result<Self> {
        if path.as_os_str() == "-" {
            return Err(Error::OutputRefused {
                path: path.to_path_buf(),
                reason: "writing the archive to standard output is not supported; name a file"
                    .to_owned(),
            });
        }
        let mut parsed = Vec::new();
        for name in names {
            let reference = ImageReference::parse(name).map_err(|e| Error::BadName {
                what: "image name for a docker archive",
                name: name.clone(),
                reason: e.to_string(),
            })?;
            if reference.tag().is_none() || reference.digest().is_some() {
                return Err(Error::BadName {
                    what: "image name for a docker archive",
                    name: name.clone(),
                    reason: "a docker archive names images by tag (RepoTags), not by digest"
                        .to_owned(),
                });
            }
            parsed.push(reference);
        }
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(Error::OutputRefused {
                path: path.to_path_buf(),
                reason: "it is a directory; a docker archive is a file".to_owned(),
            });
        }
        let (parent, name) = fsutil::split_target(path)?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.locald-tmp-"))
            .tempdir_in(&parent)
            .map_err(Error::io("create a temporary directory in", &parent))?;
        Ok(DockerArchiveDestination {
            path: path.to_path_buf(),
            names: parsed,
            staging,
            blobs: Mutex::new(HashMap::new()),
        })
    }

    fn put(&self, digest: &Digest, file: PathBuf, verify: bool) {
        if let Ok(mut blobs) = self.blobs.lock() {
            blobs.insert(digest.clone(), (file, verify));
        }
    }

    /// Writes the tar of `image` from the gathered blobs.
    fn write(&self, image: &ResolvedImage) -> Result<Written> {
        let blobs = self
            .blobs
            .lock()
            .map(|b| b.clone())
            .map_err(|_| Error::Join("a blob writer panicked".to_owned()))?;
        let (parent, name) = fsutil::split_target(&self.path)?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.locald-tmp-"))
            .tempfile_in(&parent)
            .map_err(Error::io("create a temporary file in", &parent))?;
        let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(BUF, tmp.as_file()));
        let tar_err = |e: std::io::Error| Error::io("write", tmp.path())(e);

        // Every entry, by archive path; sorted by the map.
        enum Content {
            Dir,
            Bytes(Vec<u8>),
            Blob(Digest, u64),
        }
        let mut entries: BTreeMap<String, Content> = BTreeMap::new();
        let mut add_blob = |digest: &Digest, size: u64| {
            let alg = digest.algorithm().as_str();
            entries.insert("blobs/".to_owned(), Content::Dir);
            entries.insert(format!("blobs/{alg}/"), Content::Dir);
            entries.insert(blob_member(digest), Content::Blob(digest.clone(), size));
        };
        add_blob(&image.config_digest, image.config_bytes.len() as u64);
        for l in &image.layers {
            add_blob(&l.digest, l.size);
        }
        entries.insert(
            blob_member(&image.manifest_digest),
            Content::Bytes(image.manifest_bytes.clone()),
        );
        entries.insert(
            "oci-layout".to_owned(),
            Content::Bytes(OCI_LAYOUT_MARKER.to_vec()),
        );
        let media_type = manifest_media_type(&image.manifest);
        let manifests: Vec<serde_json::Value> = self
            .names
            .iter()
            .map(|reference| {
                let mut annotations = BTreeMap::new();
                annotations.insert(CONTAINERD_IMAGE_NAME.to_owned(), reference.to_string());
                annotations.insert(
                    REF_NAME.to_owned(),
                    reference.tag().unwrap_or("latest").to_owned(),
                );
                index_entry(
                    &media_type,
                    &image.manifest_digest,
                    image.manifest_bytes.len() as u64,
                    &image.config,
                    annotations,
                )
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        entries.insert(
            "index.json".to_owned(),
            Content::Bytes(to_json(&index, "index.json")?),
        );
        let manifest = serde_json::json!([{
            "Config": blob_member(&image.config_digest),
            "RepoTags": self.names.iter().map(familiar_name).collect::<Vec<_>>(),
            "Layers": image.layers.iter().map(|l| blob_member(&l.digest)).collect::<Vec<_>>(),
        }]);
        entries.insert(
            "manifest.json".to_owned(),
            Content::Bytes(to_json(&manifest, "manifest.json")?),
        );
        if let Some(top) = image.layers.last().and_then(|l| l.diff_id.as_ref()) {
            let mut repos = serde_json::Map::new();
            for reference in &self.names {
                let tags = repos
                    .entry(familiar_repository(reference))
                    .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                if let Some(tags) = tags.as_object_mut() {
                    tags.insert(
                        reference.tag().unwrap_or("latest").to_owned(),
                        top.hex().into(),
                    );
                }
            }
            entries.insert(
                "repositories".to_owned(),
                Content::Bytes(to_json(&serde_json::Value::Object(repos), "repositories")?),
            );
        }

        for (path, content) in &entries {
            match content {
                Content::Dir => {
                    let h =
                        tar_header(path, tar::EntryType::Directory, 0, 0o755).map_err(tar_err)?;
                    builder.append(&h, std::io::empty()).map_err(tar_err)?;
                }
                Content::Bytes(b) => {
                    let h = tar_header(path, tar::EntryType::Regular, b.len() as u64, 0o644)
                        .map_err(tar_err)?;
                    builder.append(&h, b.as_slice()).map_err(tar_err)?;
                }
                Content::Blob(digest, size) => {
                    let Some((file_path, verify)) = blobs.get(digest) else {
                        return Err(Error::source(format!(
                            "blob {digest} of {} was not put before its manifest",
                            image.name
                        )));
                    };
                    let what = format!("blob {digest} of {}", image.name);
                    let file = fsutil::open_regular(file_path, FinalSymlink::Follow)
                        .map_err(Error::io("open", file_path))?;
                    let len = file
                        .metadata()
                        .map_err(Error::io("inspect", file_path))?
                        .len();
                    if len != *size {
                        return Err(Error::SizeMismatch {
                            what,
                            expected: *size,
                            actual: len,
                        });
                    }
                    let h =
                        tar_header(path, tar::EntryType::Regular, *size, 0o644).map_err(tar_err)?;
                    if *verify {
                        let mut reader = HashingReader::new(file.take(*size), digest);
                        builder.append(&h, &mut reader).map_err(tar_err)?;
                        let (actual, count) = reader.finish().map_err(Error::ReadBlob)?;
                        check_blob(digest, *size, actual, count, &what)?;
                    } else {
                        builder.append(&h, file.take(*size)).map_err(tar_err)?;
                    }
                }
            }
        }
        let out = builder.into_inner().map_err(tar_err)?;
        let file = out.into_inner().map_err(|e| tar_err(e.into_error()))?;
        file.sync_all().map_err(tar_err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
                .map_err(Error::io("set permissions of", tmp.path()))?;
        }
        let size = file.metadata().map_err(tar_err)?.len();
        tmp.persist(&self.path)
            .map_err(|e| Error::io("move the archive into", &self.path)(e.error))?;
        Ok(Written {
            manifest_digest: image.manifest_digest.clone(),
            config_digest: image.config_digest.clone(),
            size,
        })
    }
}

impl ImageDestination for DockerArchiveDestination {
    fn describe(&self) -> String {
        format!("{}:{}", crate::SCHEME, self.path.display())
    }

    fn has_blob<'a>(&'a self, _: &'a Digest, _: u64) -> BoxFuture<'a, Result<bool>> {
        // A new archive holds nothing yet.
        Box::pin(async { Ok(false) })
    }

    fn put_blob<'a>(&'a self, blob: BlobPut<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // A source's own file is read (and verified) when the tar is written.
            if blob.bytes.is_none() {
                if let Some(file) = blob.source.blob_file(blob.descriptor) {
                    if std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file()) {
                        self.put(blob.digest, file, true);
                        return Ok(());
                    }
                }
            }
            let file = self.staging.path().join(format!(
                "{}-{}",
                blob.digest.algorithm().as_str(),
                blob.digest.hex()
            ));
            let written = write_blob_file(&blob, &file).await;
            if let Err(e) = written {
                let _ = std::fs::remove_file(&file);
                return Err(e);
            }
            self.put(blob.digest, file, false);
            Ok(())
        })
    }

    fn put_manifest<'a>(&'a self, image: &'a ResolvedImage) -> BoxFuture<'a, Result<Written>> {
        Box::pin(async move { self.write(image) })
    }
}

/// A reference as `docker save` writes it in `RepoTags` and `docker images` shows
/// it: Docker Hub's `docker.io/` and `library/` left out (`app:latest`,
/// `heroku/builder:22`), other registries kept (`127.0.0.1:5000/a/b:1`).
pub fn familiar_name(reference: &ImageReference) -> String {
    let repo = reference.repository();
    let mut s = if reference.registry() == DOCKER_HUB {
        match repo.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => repo.to_owned(),
        }
    } else {
        format!("{}/{repo}", reference.registry())
    };
    if let Some(t) = reference.tag() {
        s.push(':');
        s.push_str(t);
    }
    s
}

/// [`familiar_name`] without the tag.
fn familiar_repository(reference: &ImageReference) -> String {
    let full = familiar_name(reference);
    match reference.tag() {
        Some(t) => full[..full.len() - t.len() - 1].to_owned(),
        None => full,
    }
}

fn blob_member(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

fn tar_header(
    path: &str,
    kind: tar::EntryType,
    size: u64,
    mode: u32,
) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_name_table() {
        for (input, want, repo) in [
            ("docker.io/library/app:latest", "app:latest", "app"),
            ("app", "app:latest", "app"),
            ("heroku/builder:22", "heroku/builder:22", "heroku/builder"),
            ("docker.io/library/a/b:1", "library/a/b:1", "library/a/b"),
            (
                "127.0.0.1:5000/a/b:1",
                "127.0.0.1:5000/a/b:1",
                "127.0.0.1:5000/a/b",
            ),
            (
                "ghcr.io/library/x:2",
                "ghcr.io/library/x:2",
                "ghcr.io/library/x",
            ),
        ] {
            let r = ImageReference::parse(input).expect("reference");
            assert_eq!(familiar_name(&r), want, "{input}");
            assert_eq!(familiar_repository(&r), repo, "{input}");
        }
    }
}

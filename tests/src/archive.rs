//! docker-archive tarballs (`docker save`, `podman save`, `skopeo copy ...
//! docker-archive:`) built byte for byte from their documented structure, for
//! the images of [`ImageSpec`]s, and hostile variants of them.
//!
//! Four layouts are found in the wild ([`Format`]):
//!
//! - [`Format::Legacy`], `docker save` up to Docker 24: `<id>/layer.tar` (the
//!   uncompressed layer), `<id>/VERSION` (`1.0`), `<id>/json` (a v1 image
//!   config) for every layer, `<config hex>.json`, `manifest.json`
//!   (`[{"Config","RepoTags","Layers"}]`, `Layers` naming `<id>/layer.tar`),
//!   `repositories` (`{"repo":{"tag":"<top layer id>"}}`, only when an image is
//!   tagged). When a layer's bytes were already saved under another id, the later
//!   `<id>/layer.tar` is a symlink to `../<first id>/layer.tar`, as moby does.
//! - [`Format::Docker25`], `docker save` from Docker 25 on: an OCI image layout
//!   inside the tar (`oci-layout`, `index.json` with one descriptor a tag
//!   annotated `io.containerd.image.name` = `docker.io/library/name:tag` and
//!   `org.opencontainers.image.ref.name` = `tag`, `blobs/sha256/...` holding
//!   uncompressed layers as `application/vnd.oci.image.layer.v1.tar`, the config
//!   and an OCI manifest), plus `manifest.json` (whose `Layers` name
//!   `blobs/sha256/<hex>` and whose `LayerSources` map each diff_id to its layer
//!   descriptor) and `repositories`.
//! - [`Format::ContainerdStore`], Docker with the containerd image store: like
//!   Docker 25 but gzip layers as pulled (blob digests differ from diff_ids;
//!   `LayerSources` map a diff_id to the gzip descriptor), each `index.json` entry
//!   pointing to a nested image index that lists the platform manifest, no
//!   `repositories`.
//! - [`Format::Skopeo`], `skopeo copy ... docker-archive:` and `podman save
//!   --format docker-archive` (both containers/image): uncompressed layers as
//!   `<diff_id hex>.tar` at the root, `<config hex>.json`, and for every layer
//!   `<id>/layer.tar` as a *symlink* to `../<hex>.tar` plus `<id>/VERSION` and
//!   `<id>/json`; `manifest.json` names the root `<hex>.tar` files. Members are
//!   mode 0444 (symlinks 0), mtime 0, no directory entries; layers first, then
//!   the config, then the legacy directories, `manifest.json`, `repositories`
//!   (checked against skopeo 1.9 and podman 4.3 in the tests below).
//!
//! Members are [`Entry`]s written by [`fixture::tar_bytes`], so hostile names
//! (`../x`, `/abs`) reach the reader exactly as written.
//!
//! ```no_run
//! use locald_tests::archive::{self, Format};
//! use locald_tests::fixture::{Compression, Entry, ImageSpec, Layer};
//! let spec = ImageSpec::new(vec![Layer::new(vec![Entry::file("a", "a")], Compression::Gzip)]);
//! let mut a = archive::legacy(&spec, &["heroku/builder:22"]);
//! let layer = a.layer_member(0, 0).to_owned();
//! a.symlink_member(&layer, "../../etc/passwd");
//! a.write("/tmp/evil.tar").unwrap();
//! let two = archive::ArchiveBuilder::new(Format::Skopeo)
//!     .image(spec.clone(), &["a:1"])
//!     .image(spec, &["b:2", "b:latest"])
//!     .build();
//! two.write("/tmp/two.tar").unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use serde_json::{json, Value};

use crate::fixture::{
    self, sha256_digest, Compression, Desc, Entry, ImageSpec, Layer, LayoutBuilder, LongNames,
    Meta, Platform, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
    REF_NAME,
};

/// The annotation containerd (and Docker 25+) put on `index.json` entries: the
/// fully qualified image name.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// `oci-layout` as Docker writes it.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Which tool (and version) the archive looks like it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `docker save`, Docker up to 24.
    Legacy,
    /// `docker save`, Docker 25 and later (graph-driver store).
    Docker25,
    /// `docker save` with the containerd image store.
    ContainerdStore,
    /// `skopeo copy ... docker-archive:` / `podman save --format docker-archive`.
    Skopeo,
}

impl Format {
    /// Every format, for loops over all of them.
    pub const ALL: [Format; 4] = [
        Format::Legacy,
        Format::Docker25,
        Format::ContainerdStore,
        Format::Skopeo,
    ];

    /// A short name for messages and file names.
    pub fn name(self) -> &'static str {
        match self {
            Format::Legacy => "legacy",
            Format::Docker25 => "docker25",
            Format::ContainerdStore => "containerd-store",
            Format::Skopeo => "skopeo",
        }
    }

    /// Whether `index.json` and `blobs/` (an OCI layout) are in the archive.
    pub fn has_oci_layout(self) -> bool {
        matches!(self, Format::Docker25 | Format::ContainerdStore)
    }
}

/// What was saved for one image of an [`Archive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedImage {
    /// `RepoTags` as written in `manifest.json` (verbatim, unnormalised).
    pub repo_tags: Vec<String>,
    /// The member `manifest.json` names as `Config`.
    pub config_member: String,
    /// `sha256:<hex>` of the config bytes.
    pub config_digest: String,
    /// The members `manifest.json` names as `Layers`, bottom first.
    pub layer_members: Vec<String>,
    /// `rootfs.diff_ids` of the config.
    pub diff_ids: Vec<String>,
    /// The digest of each layer member's bytes (= the diff_id, except for
    /// [`Format::ContainerdStore`]'s gzip blobs and overridden diff_ids).
    pub layer_digests: Vec<String>,
    /// The image manifest blob (formats with an OCI layout inside).
    pub manifest_digest: Option<String>,
    /// The nested image index blob ([`Format::ContainerdStore`]).
    pub index_digest: Option<String>,
}

/// A docker-archive as a list of tar members, free to be edited before it is
/// written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive {
    pub format: Format,
    /// The tar members, in archive order.
    pub members: Vec<Entry>,
    /// One per `manifest.json` entry, in order.
    pub images: Vec<SavedImage>,
}

/// Builds an [`Archive`] of one or more images.
#[derive(Clone, Debug)]
pub struct ArchiveBuilder {
    format: Format,
    images: Vec<(ImageSpec, Vec<String>)>,
    dot_slash: bool,
    absent_platform: bool,
}

/// A single-image Docker ≤24 `docker save` archive.
pub fn legacy(spec: &ImageSpec, repo_tags: &[&str]) -> Archive {
    ArchiveBuilder::new(Format::Legacy)
        .image(spec.clone(), repo_tags)
        .build()
}

/// A single-image Docker 25+ `docker save` archive.
pub fn docker25(spec: &ImageSpec, repo_tags: &[&str]) -> Archive {
    ArchiveBuilder::new(Format::Docker25)
        .image(spec.clone(), repo_tags)
        .build()
}

/// A single-image `docker save` archive from the containerd image store.
pub fn containerd_store(spec: &ImageSpec, repo_tags: &[&str]) -> Archive {
    ArchiveBuilder::new(Format::ContainerdStore)
        .image(spec.clone(), repo_tags)
        .build()
}

/// A single-image archive laid out as skopeo / podman write it.
pub fn skopeo_style(spec: &ImageSpec, repo_tags: &[&str]) -> Archive {
    ArchiveBuilder::new(Format::Skopeo)
        .image(spec.clone(), repo_tags)
        .build()
}

impl ArchiveBuilder {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            images: Vec::new(),
            dot_slash: false,
            absent_platform: false,
        }
    }

    /// Adds an image with these `RepoTags` (written verbatim; none gives
    /// `"RepoTags": null`, as `docker save IMAGE-ID` does).
    ///
    /// Layers are decompressed for every format but
    /// [`Format::ContainerdStore`], which gzips the layers that are not gzip
    /// already. The config (so the diff_ids, overrides included) is the spec's.
    pub fn image(mut self, spec: ImageSpec, repo_tags: &[&str]) -> Self {
        self.images
            .push((spec, repo_tags.iter().map(|t| (*t).to_owned()).collect()));
        self
    }

    /// Every member name prefixed with `./` (and a `./` directory entry first),
    /// as `tar -C extracted -cf x.tar .` writes a re-packed archive.
    pub fn dot_slash(mut self) -> Self {
        self.dot_slash = true;
        self
    }

    /// [`Format::ContainerdStore`]: the nested index also lists a linux/arm64/v8
    /// manifest whose blobs are not in the archive (containerd exports every
    /// platform of the index, with the content of those present locally only).
    pub fn absent_platform(mut self) -> Self {
        self.absent_platform = true;
        self
    }

    pub fn build(&self) -> Archive {
        let mut a = match self.format {
            Format::Legacy => self.build_legacy(),
            Format::Docker25 => self.build_oci(false),
            Format::ContainerdStore => self.build_oci(true),
            Format::Skopeo => self.build_skopeo(),
        };
        if self.dot_slash {
            for m in &mut a.members {
                let p = m.path().to_vec();
                set_path(m, [b"./".as_slice(), &p].concat());
            }
            a.members.insert(0, dir_entry("./", fixture::DEFAULT_MTIME));
        }
        a
    }

    fn build_legacy(&self) -> Archive {
        let mut files: BTreeMap<String, Entry> = BTreeMap::new();
        let mut ids: BTreeSet<String> = BTreeSet::new();
        // diff_id -> the member that holds its bytes.
        let mut saved: BTreeMap<String, String> = BTreeMap::new();
        let mut manifest = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut images = Vec::new();
        let mtime = fixture::DEFAULT_MTIME;
        for (spec, tags) in &self.images {
            let spec = uncompressed(spec, spec.docker);
            let config = spec.config_json();
            let config_digest = sha256_digest(&config);
            let config_member = format!("{}.json", hex_of(&config_digest));
            files.insert(
                config_member.clone(),
                file_entry(&config_member, &config, 0o644, mtime),
            );
            let mut parent: Option<String> = None;
            let mut layer_members = Vec::new();
            let mut layer_digests = Vec::new();
            let n = spec.layers.len();
            for (i, l) in spec.layers.iter().enumerate() {
                let diff_id = l.diff_id();
                let top = i + 1 == n;
                let id = v1_id(&diff_id, parent.as_deref(), top.then_some(&config_digest));
                let name = format!("{id}/layer.tar");
                if ids.insert(id.clone()) {
                    files.insert(format!("{id}/"), dir_entry(&format!("{id}/"), mtime));
                    let v = format!("{id}/VERSION");
                    files.insert(v.clone(), file_entry(&v, b"1.0", 0o644, mtime));
                    let j = format!("{id}/json");
                    let json = v1_json(&id, parent.as_deref(), top.then_some(&config));
                    files.insert(j.clone(), file_entry(&j, &json, 0o644, mtime));
                    let entry = match saved.get(&diff_id) {
                        Some(first) => symlink_entry(&name, &format!("../{first}"), 0o777, mtime),
                        None => {
                            saved.insert(diff_id.clone(), name.clone());
                            file_entry(&name, &l.tar(), 0o644, mtime)
                        }
                    };
                    files.insert(name.clone(), entry);
                }
                layer_digests.push(sha256_digest(&l.tar()));
                layer_members.push(name);
                parent = Some(id);
            }
            for t in tags {
                let (repo, tag) = split_repo_tag(t);
                repositories
                    .entry(repo.to_owned())
                    .or_default()
                    .insert(tag.to_owned(), parent.clone().unwrap_or_default());
            }
            manifest.push(json!({
                "Config": config_member,
                "RepoTags": repo_tags_json(tags),
                "Layers": layer_members,
            }));
            images.push(SavedImage {
                repo_tags: tags.clone(),
                config_member,
                config_digest,
                layer_members,
                diff_ids: spec.layers.iter().map(Layer::diff_id).collect(),
                layer_digests,
                manifest_digest: None,
                index_digest: None,
            });
        }
        files.insert(
            "manifest.json".into(),
            file_entry(
                "manifest.json",
                &manifest_json(&json!(manifest)),
                0o644,
                mtime,
            ),
        );
        if !repositories.is_empty() {
            files.insert(
                "repositories".into(),
                file_entry("repositories", &to_json(&repositories), 0o644, mtime),
            );
        }
        Archive {
            format: Format::Legacy,
            members: files.into_values().collect(),
            images,
        }
    }

    fn build_oci(&self, containerd: bool) -> Archive {
        let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut index = Vec::new();
        let mut manifest = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut images = Vec::new();
        let mtime = fixture::DEFAULT_MTIME;
        for (spec, tags) in &self.images {
            let spec = if containerd {
                gzipped(spec)
            } else {
                uncompressed(spec, false)
            };
            let mut lb = LayoutBuilder::new("/nonexistent");
            let info = lb.image(&spec);
            let mut keep = |d: &str| {
                let bytes = lb.blob(d).expect("blob the builder just made").to_vec();
                blobs.insert(hex_of(d).to_owned(), bytes);
            };
            keep(&info.config.digest);
            keep(&info.manifest.digest);
            for l in &info.layers {
                keep(&l.digest);
            }
            let mut manifest_desc = info.manifest.clone();
            manifest_desc.annotations.clear();
            manifest_desc.platform = None;
            let (top, index_digest) = if containerd {
                let media = if spec.docker {
                    MEDIA_DOCKER_LIST
                } else {
                    MEDIA_OCI_INDEX
                };
                let mut children = vec![manifest_desc
                    .clone()
                    .with_platform(Some(spec.platform.clone()))];
                if self.absent_platform {
                    let media = if spec.docker {
                        MEDIA_DOCKER_MANIFEST
                    } else {
                        MEDIA_OCI_MANIFEST
                    };
                    children.push(
                        Desc::new(
                            media,
                            sha256_digest(b"the arm64 manifest, not exported"),
                            1234,
                        )
                        .with_platform(Some(Platform::new(
                            "linux",
                            "arm64",
                            Some("v8"),
                        ))),
                    );
                }
                let nested = serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": media,
                    "manifests": children.iter().map(Desc::to_json).collect::<Vec<_>>(),
                }))
                .expect("json");
                let d = sha256_digest(&nested);
                let desc = Desc::new(media, d.clone(), nested.len() as i64);
                blobs.insert(hex_of(&d).to_owned(), nested);
                (desc, Some(d))
            } else {
                (manifest_desc, None)
            };
            if tags.is_empty() {
                index.push(top.to_json());
            }
            for t in tags {
                let full = normalize(t);
                let (_, tag) = split_repo_tag(&full);
                let mut d = top.clone();
                d.annotations.insert(REF_NAME.into(), tag.to_owned());
                d.annotations.insert(CONTAINERD_IMAGE_NAME.into(), full);
                index.push(d.to_json());
                if !containerd {
                    let (repo, tag) = split_repo_tag(t);
                    let top_layer = info.layers.last().map(|l| hex_of(&l.digest).to_owned());
                    repositories
                        .entry(repo.to_owned())
                        .or_default()
                        .insert(tag.to_owned(), top_layer.unwrap_or_default());
                }
            }
            let layer_members: Vec<String> = info
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", hex_of(&l.digest)))
                .collect();
            let sources: serde_json::Map<String, Value> = info
                .diff_ids
                .iter()
                .zip(&info.layers)
                .map(|(diff_id, l)| {
                    (
                        diff_id.clone(),
                        json!({"mediaType": l.media_type, "size": l.size, "digest": l.digest}),
                    )
                })
                .collect();
            let config_member = format!("blobs/sha256/{}", hex_of(&info.config.digest));
            manifest.push(json!({
                "Config": config_member,
                "RepoTags": repo_tags_json(tags),
                "Layers": layer_members,
                "LayerSources": sources,
            }));
            images.push(SavedImage {
                repo_tags: tags.clone(),
                config_member,
                config_digest: info.config.digest.clone(),
                layer_members,
                diff_ids: info.diff_ids.clone(),
                layer_digests: info.layers.iter().map(|l| l.digest.clone()).collect(),
                manifest_digest: Some(info.manifest.digest.clone()),
                index_digest,
            });
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": index,
        });
        let mut members = vec![
            dir_entry("blobs/", mtime),
            dir_entry("blobs/sha256/", mtime),
        ];
        let blob_mode = if containerd { 0o444 } else { 0o644 };
        for (hex, bytes) in &blobs {
            members.push(file_entry(
                &format!("blobs/sha256/{hex}"),
                bytes,
                blob_mode,
                mtime,
            ));
        }
        let mut tail = vec![
            ("index.json", to_json(&index)),
            ("manifest.json", manifest_json(&json!(manifest))),
            ("oci-layout", OCI_LAYOUT.to_vec()),
        ];
        if !containerd && !repositories.is_empty() {
            tail.push(("repositories", to_json(&repositories)));
        }
        if containerd {
            // containerd's exporter: the layout file, the index, then manifest.json.
            tail.sort_by_key(|(n, _)| match *n {
                "oci-layout" => 0,
                "index.json" => 1,
                _ => 2,
            });
        }
        for (name, bytes) in tail {
            members.push(file_entry(name, &bytes, blob_mode, mtime));
        }
        Archive {
            format: if containerd {
                Format::ContainerdStore
            } else {
                Format::Docker25
            },
            members,
            images,
        }
    }

    fn build_skopeo(&self) -> Archive {
        let mut members = Vec::new();
        let mut written: BTreeSet<String> = BTreeSet::new();
        let mut legacy = Vec::new();
        let mut ids: BTreeSet<String> = BTreeSet::new();
        let mut manifest = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut images = Vec::new();
        for (spec, tags) in &self.images {
            let spec = uncompressed(spec, spec.docker);
            let mut layer_members = Vec::new();
            let mut layer_digests = Vec::new();
            for l in &spec.layers {
                let tar = l.tar();
                let d = sha256_digest(&tar);
                let name = format!("{}.tar", hex_of(&d));
                if written.insert(name.clone()) {
                    members.push(file_entry(&name, &tar, 0o444, 0));
                }
                layer_members.push(name);
                layer_digests.push(d);
            }
            let config = spec.config_json();
            let config_digest = sha256_digest(&config);
            let config_member = format!("{}.json", hex_of(&config_digest));
            if written.insert(config_member.clone()) {
                members.push(file_entry(&config_member, &config, 0o444, 0));
            }
            let mut parent: Option<String> = None;
            let n = spec.layers.len();
            for (i, (l, member)) in spec.layers.iter().zip(&layer_members).enumerate() {
                let top = i + 1 == n;
                let id = v1_id(
                    &l.diff_id(),
                    parent.as_deref(),
                    top.then_some(&config_digest),
                );
                if ids.insert(id.clone()) {
                    legacy.push(symlink_entry(
                        &format!("{id}/layer.tar"),
                        &format!("../{member}"),
                        0,
                        0,
                    ));
                    legacy.push(file_entry(&format!("{id}/VERSION"), b"1.0", 0o444, 0));
                    let json = v1_json(&id, parent.as_deref(), top.then_some(&config));
                    legacy.push(file_entry(&format!("{id}/json"), &json, 0o444, 0));
                }
                parent = Some(id);
            }
            for t in tags {
                let (repo, tag) = split_repo_tag(t);
                repositories
                    .entry(repo.to_owned())
                    .or_default()
                    .insert(tag.to_owned(), parent.clone().unwrap_or_default());
            }
            manifest.push(json!({
                "Config": config_member,
                "RepoTags": repo_tags_json(tags),
                "Layers": layer_members,
            }));
            images.push(SavedImage {
                repo_tags: tags.clone(),
                config_member,
                config_digest,
                layer_members,
                diff_ids: spec.layers.iter().map(Layer::diff_id).collect(),
                layer_digests,
                manifest_digest: None,
                index_digest: None,
            });
        }
        members.extend(legacy);
        members.push(file_entry(
            "manifest.json",
            &manifest_json(&json!(manifest)),
            0o444,
            0,
        ));
        if !repositories.is_empty() {
            members.push(file_entry(
                "repositories",
                &compact(&repositories),
                0o444,
                0,
            ));
        }
        Archive {
            format: Format::Skopeo,
            members,
            images,
        }
    }
}

impl Archive {
    /// The tar stream.
    pub fn bytes(&self) -> Vec<u8> {
        fixture::tar_bytes(&self.members, LongNames::Pax)
    }

    /// Writes the tar stream to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.bytes())
    }

    /// Member names in archive order (lossy UTF-8).
    pub fn names(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| String::from_utf8_lossy(m.path()).into_owned())
            .collect()
    }

    /// The index of member `name` (also found as `./name`).
    pub fn position(&self, name: &str) -> Option<usize> {
        let dotted = format!("./{name}");
        self.members
            .iter()
            .position(|m| m.path() == name.as_bytes())
            .or_else(|| {
                self.members
                    .iter()
                    .position(|m| m.path() == dotted.as_bytes())
            })
    }

    fn index_of(&self, name: &str) -> usize {
        self.position(name)
            .unwrap_or_else(|| panic!("no member {name:?} in {:?}", self.names()))
    }

    pub fn member(&self, name: &str) -> Option<&Entry> {
        self.position(name).map(|i| &self.members[i])
    }

    /// The content of file member `name`.
    pub fn content(&self, name: &str) -> Option<&[u8]> {
        match self.member(name)? {
            Entry::File { content, .. } => Some(content),
            _ => None,
        }
    }

    /// Replaces the content of file member `name` (panics if it is not a file).
    pub fn set_content(&mut self, name: &str, bytes: impl Into<Vec<u8>>) {
        let i = self.index_of(name);
        match &mut self.members[i] {
            Entry::File { content, .. } => *content = bytes.into(),
            other => panic!("member {name:?} is not a file: {other:?}"),
        }
    }

    /// Flips one byte in the middle of file member `name`.
    pub fn corrupt_member(&mut self, name: &str) {
        let mut c = self
            .content(name)
            .unwrap_or_else(|| panic!("{name:?} is not a file member"))
            .to_vec();
        let i = c.len() / 2;
        c[i] ^= 0xff;
        self.set_content(name, c);
    }

    /// Replaces member `name`, keeping its position.
    pub fn replace_member(&mut self, name: &str, entry: Entry) {
        let i = self.index_of(name);
        self.members[i] = entry;
    }

    /// Replaces member `name` by a symlink member (mode 0777) to `target`.
    pub fn symlink_member(&mut self, name: &str, target: &str) {
        let i = self.index_of(name);
        let path = self.members[i].path().to_vec();
        self.members[i] = Entry::Symlink {
            path,
            target: target.as_bytes().to_vec(),
            meta: meta(0o777, fixture::DEFAULT_MTIME),
        };
    }

    /// Removes member `name`.
    pub fn remove_member(&mut self, name: &str) -> Entry {
        let i = self.index_of(name);
        self.members.remove(i)
    }

    /// Appends a member (before nothing: at the end of the archive).
    pub fn push_member(&mut self, entry: Entry) {
        self.members.push(entry);
    }

    /// Inserts a member at the start of the archive.
    pub fn prepend_member(&mut self, entry: Entry) {
        self.members.insert(0, entry);
    }

    /// Renames member `from` to `to` (written verbatim: `../x`, `/abs` are fine)
    /// and every `manifest.json` string equal to `from` (`Config`, `Layers`),
    /// so the manifest names the new member.
    pub fn rename_member(&mut self, from: &str, to: &str) {
        let i = self.index_of(from);
        set_path(&mut self.members[i], to.as_bytes().to_vec());
        let mut m = self.manifest();
        replace_strings(&mut m, from, to);
        self.set_manifest(&m);
        for img in &mut self.images {
            if img.config_member == from {
                to.clone_into(&mut img.config_member);
            }
            for l in &mut img.layer_members {
                if l == from {
                    to.clone_into(l);
                }
            }
        }
    }

    /// `manifest.json`, parsed.
    pub fn manifest(&self) -> Value {
        serde_json::from_slice(self.content("manifest.json").expect("manifest.json member"))
            .expect("manifest.json is JSON")
    }

    /// Replaces `manifest.json` (written compact, the keys of each entry in
    /// Docker's order).
    pub fn set_manifest(&mut self, v: &Value) {
        self.set_content("manifest.json", manifest_json(v));
    }

    /// Pads `manifest.json` with trailing spaces (still valid JSON) to `total`
    /// bytes, e.g. past the 20 MiB JSON limit.
    pub fn pad_manifest(&mut self, total: usize) {
        let mut m = self
            .content("manifest.json")
            .expect("manifest.json")
            .to_vec();
        if m.len() < total {
            m.resize(total, b' ');
        }
        self.set_content("manifest.json", m);
    }

    /// The member `manifest.json` names as layer `layer` of image `image`
    /// (0-based both).
    pub fn layer_member(&self, image: usize, layer: usize) -> &str {
        &self.images[image].layer_members[layer]
    }

    /// The member `manifest.json` names as the config of image `image`.
    pub fn config_member(&self, image: usize) -> &str {
        &self.images[image].config_member
    }

    /// Where member `name`'s content starts in [`Archive::bytes`], and its length.
    pub fn content_range(&self, name: &str) -> (usize, usize) {
        let i = self.index_of(name);
        let end = fixture::tar_entries(&self.members[..=i], LongNames::Pax).len();
        let len = match &self.members[i] {
            Entry::File { content, .. } | Entry::Custom { content, .. } => content.len(),
            _ => 0,
        };
        (end - len.div_ceil(512) * 512, len)
    }

    /// [`Archive::bytes`] cut in the middle of member `name`'s content.
    pub fn truncated_in(&self, name: &str) -> Vec<u8> {
        let (start, len) = self.content_range(name);
        let mut b = self.bytes();
        b.truncate(start + len / 2);
        b
    }
}

// ---------------------------------------------------------------------------
// Names

/// `name[:tag]` as Docker normalises it: `docker.io/` before a first component
/// that is not a host, `library/` before a single-component name, `:latest`
/// when no tag (a `@digest` is kept as is).
pub fn normalize(name: &str) -> String {
    let (first, _) = name.split_once('/').unwrap_or(("", name));
    let has_host =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut out = if has_host {
        name.to_owned()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = out.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        out.push_str(":latest");
    }
    out
}

/// `repo:tag` split at the tag's `:` (a registry port is not a tag).
pub fn split_repo_tag(name: &str) -> (&str, &str) {
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], &name[slash + i + 1..]),
        None => (name, "latest"),
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, h)| h)
}

fn meta(mode: u32, mtime: u64) -> Meta {
    let mut m = Meta::new(mode);
    m.mtime = mtime;
    m
}

fn file_entry(name: &str, content: &[u8], mode: u32, mtime: u64) -> Entry {
    Entry::File {
        path: name.as_bytes().to_vec(),
        content: content.to_vec(),
        meta: meta(mode, mtime),
    }
}

fn dir_entry(name: &str, mtime: u64) -> Entry {
    Entry::Dir {
        path: name.as_bytes().to_vec(),
        meta: meta(0o755, mtime),
    }
}

fn symlink_entry(name: &str, target: &str, mode: u32, mtime: u64) -> Entry {
    Entry::Symlink {
        path: name.as_bytes().to_vec(),
        target: target.as_bytes().to_vec(),
        meta: meta(mode, mtime),
    }
}

fn set_path(e: &mut Entry, new: Vec<u8>) {
    match e {
        Entry::File { path, .. }
        | Entry::Dir { path, .. }
        | Entry::Symlink { path, .. }
        | Entry::HardLink { path, .. }
        | Entry::Fifo { path, .. }
        | Entry::CharDev { path, .. }
        | Entry::BlockDev { path, .. }
        | Entry::Custom { path, .. } => *path = new,
    }
}

fn replace_strings(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s == from => *s = to.to_owned(),
        Value::Array(a) => a.iter_mut().for_each(|x| replace_strings(x, from, to)),
        Value::Object(o) => o.values_mut().for_each(|x| replace_strings(x, from, to)),
        _ => {}
    }
}

fn to_json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn compact(v: &impl serde::Serialize) -> Vec<u8> {
    to_json(v)
}

/// `manifest.json` as Docker and containers/image write it: compact, each
/// entry's keys in the order `Config`, `RepoTags`, `Layers`, `LayerSources`
/// (then any others, sorted). serde_json would sort them all.
pub fn manifest_json(v: &Value) -> Vec<u8> {
    const ORDER: [&str; 4] = ["Config", "RepoTags", "Layers", "LayerSources"];
    let Value::Array(entries) = v else {
        return compact(v);
    };
    let mut out = b"[".to_vec();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Value::Object(o) = e else {
            out.extend(compact(e));
            continue;
        };
        let mut keys: Vec<&String> = o.keys().collect();
        keys.sort_by_key(|k| {
            (
                ORDER.iter().position(|x| x == k).unwrap_or(ORDER.len()),
                (*k).clone(),
            )
        });
        out.push(b'{');
        for (j, k) in keys.into_iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend(compact(k));
            out.push(b':');
            out.extend(compact(&o[k]));
        }
        out.push(b'}');
    }
    out.push(b']');
    out
}

fn repo_tags_json(tags: &[String]) -> Value {
    if tags.is_empty() {
        Value::Null
    } else {
        json!(tags)
    }
}

/// A v1 layer id: a digest over the chain (parent, diff_id, and the config for
/// the top layer), so equal chains share ids across images, as Docker's do.
fn v1_id(diff_id: &str, parent: Option<&str>, config: Option<&String>) -> String {
    let v = json!({"parent": parent, "diff_id": diff_id, "config": config});
    hex_of(&sha256_digest(&to_json(&v))).to_owned()
}

/// The `<id>/json` v1 config: the image config (minus rootfs and history) for
/// the top layer, a stub for the others.
fn v1_json(id: &str, parent: Option<&str>, config: Option<&Vec<u8>>) -> Vec<u8> {
    let mut v = match config.and_then(|c| serde_json::from_slice::<Value>(c).ok()) {
        Some(Value::Object(mut o)) => {
            o.remove("rootfs");
            o.remove("history");
            Value::Object(o)
        }
        _ => json!({"created": fixture::CREATED, "container_config": {"Cmd": null}}),
    };
    v["id"] = json!(id);
    if let Some(p) = parent {
        v["parent"] = json!(p);
    }
    to_json(&v)
}

/// `spec` with every layer stored uncompressed (diff_ids kept, overrides too).
fn uncompressed(spec: &ImageSpec, docker: bool) -> ImageSpec {
    let mut s = spec.clone();
    s.docker = docker;
    s.layers = spec
        .layers
        .iter()
        .map(|l| {
            Layer::raw(l.tar())
                .with_compression(Compression::None)
                .with_diff_id(l.diff_id())
        })
        .collect();
    s
}

/// `spec` with every layer gzip (gzip and multi-member gzip kept as they are).
fn gzipped(spec: &ImageSpec) -> ImageSpec {
    let mut s = spec.clone();
    s.layers = spec
        .layers
        .iter()
        .map(|l| match l.compression() {
            Compression::Gzip | Compression::GzipMultiMember => {
                Layer::raw(l.blob()).with_diff_id(l.diff_id())
            }
            Compression::None | Compression::Zstd => {
                Layer::raw(Compression::Gzip.compress(&l.tar())).with_diff_id(l.diff_id())
            }
        })
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers;
    use crate::tree::{self, DiffOpts};
    use std::path::PathBuf;

    fn spec() -> ImageSpec {
        ImageSpec::new(vec![
            Layer::new(
                vec![
                    Entry::dir("cnb/"),
                    Entry::file("cnb/a", "a"),
                    Entry::file("cnb/old", "old"),
                    Entry::file("bin/su", "su").mode(0o4755),
                ],
                Compression::Gzip,
            ),
            Layer::new(
                vec![
                    Entry::whiteout("cnb", "old"),
                    Entry::file("cnb/b", "b"),
                    Entry::symlink("cnb/c", "b"),
                    Entry::hardlink("cnb/h", "cnb/a"),
                ],
                Compression::GzipMultiMember,
            ),
            Layer::new(vec![Entry::file("z", "zstd")], Compression::None),
        ])
        .label("io.buildpacks.builder.metadata", "{}")
    }

    fn layout(dir: &Path, spec: &ImageSpec, tag: &str) {
        let mut b = LayoutBuilder::new(dir);
        b.add_image(spec.clone().ref_name(tag));
        b.write().unwrap();
    }

    fn untar(bytes: &[u8], dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut a = tar::Archive::new(bytes);
        a.set_preserve_permissions(true);
        a.unpack(dir).unwrap();
    }

    /// The names of an archive with 64-hex ids replaced by `<id>` (legacy ids
    /// are each tool's own), with type flag, mode, mtime and link target.
    fn shape(bytes: &[u8], ids: &BTreeSet<String>) -> Vec<String> {
        let mask = |s: &str| {
            let mut s = s.to_owned();
            for id in ids {
                s = s.replace(id.as_str(), "<id>");
            }
            s
        };
        tar::Archive::new(bytes)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                format!(
                    "{} {:?} {:o} {} {}",
                    mask(&String::from_utf8_lossy(&e.path_bytes())),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    e.link_name_bytes()
                        .map(|l| mask(&String::from_utf8_lossy(&l)))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    fn legacy_ids(bytes: &[u8]) -> BTreeSet<String> {
        tar::Archive::new(bytes)
            .entries()
            .unwrap()
            .filter_map(|e| {
                let p = String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned();
                p.strip_suffix("/VERSION").map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn names_normalise_as_docker_does() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(
            normalize("heroku/builder:22"),
            "docker.io/heroku/builder:22"
        );
        assert_eq!(normalize("localhost:5000/a"), "localhost:5000/a:latest");
        assert_eq!(normalize("ghcr.io/a/b:c"), "ghcr.io/a/b:c");
        assert_eq!(
            split_repo_tag("localhost:5000/a:1"),
            ("localhost:5000/a", "1")
        );
        assert_eq!(
            split_repo_tag("localhost:5000/a"),
            ("localhost:5000/a", "latest")
        );
    }

    /// Our skopeo-style archive is what skopeo itself writes for the same
    /// image, member for member (legacy ids aside: they are skopeo's own).
    #[test]
    fn skopeo_style_is_what_skopeo_writes() {
        let t = tempfile::tempdir().unwrap();
        let spec = spec();
        layout(&t.path().join("l"), &spec, "t");
        let theirs = t.path().join("skopeo.tar");
        let tag = "docker.io/heroku/builder:22";
        peers::skopeo_copy(
            &format!("oci:{}:t", t.path().join("l").display()),
            &format!("docker-archive:{}:{tag}", theirs.display()),
            &[],
        )
        .unwrap();
        let theirs = std::fs::read(theirs).unwrap();
        let ours = skopeo_style(&spec, &[tag]);
        let ours_bytes = ours.bytes();
        let (ti, oi) = (legacy_ids(&theirs), legacy_ids(&ours_bytes));
        assert_eq!(ti.len(), 3);
        assert_eq!(shape(&theirs, &ti), shape(&ours_bytes, &oi));
        let member = |bytes: &[u8], name: &str| {
            let mut a = tar::Archive::new(bytes);
            let mut e = a
                .entries()
                .unwrap()
                .map(Result::unwrap)
                .find(|e| &*e.path_bytes() == name.as_bytes())
                .unwrap();
            let mut v = Vec::new();
            io::Read::read_to_end(&mut e, &mut v).unwrap();
            v
        };
        assert_eq!(
            member(&theirs, "manifest.json"),
            member(&ours_bytes, "manifest.json")
        );
        for name in ours.images[0]
            .layer_members
            .iter()
            .chain([&ours.images[0].config_member])
        {
            assert_eq!(member(&theirs, name), member(&ours_bytes, name), "{name}");
        }
        assert_eq!(ours.images[0].layer_digests, ours.images[0].diff_ids);
    }

    fn unpack_both(t: &Path, spec: &ImageSpec, copied: &Path, tag: &str) {
        layout(&t.join("src"), spec, "t");
        let want = peers::umoci_unpack(&t.join("src"), "t", &t.join("want")).unwrap();
        let got = peers::umoci_unpack(copied, tag, &t.join("got")).unwrap();
        // Directories without an entry of their own are made by umoci at unpack
        // time: two unpacks a second apart differ in their mtimes only.
        let opts = DiffOpts {
            ignore_dir_mtime: true,
            ..DiffOpts::default()
        };
        tree::assert_same_tree(&want, &got, &opts);
    }

    /// skopeo reads every format we write (through manifest.json, following the
    /// symlinked members) and gets the image umoci unpacks from the source.
    #[test]
    fn skopeo_reads_every_format() {
        for format in Format::ALL {
            let t = tempfile::tempdir().unwrap();
            let spec = spec();
            let a = ArchiveBuilder::new(format)
                .image(spec.clone(), &["heroku/builder:22"])
                .build();
            let file = t.path().join("a.tar");
            a.write(&file).unwrap();
            let copy = t.path().join("copy");
            peers::skopeo_copy(
                &format!("docker-archive:{}:heroku/builder:22", file.display()),
                &format!("oci:{}:x", copy.display()),
                &[],
            )
            .unwrap_or_else(|e| panic!("{}: {e}", format.name()));
            unpack_both(t.path(), &spec, &copy, "x");
        }
    }

    /// The Docker 25 and containerd-store archives hold an OCI layout: untarred,
    /// skopeo reads it by tag.
    #[test]
    fn oci_formats_hold_a_layout() {
        for format in [Format::Docker25, Format::ContainerdStore] {
            let t = tempfile::tempdir().unwrap();
            let spec = spec();
            let a = ArchiveBuilder::new(format)
                .image(spec.clone(), &["builder:22"])
                .absent_platform()
                .build();
            let dir: PathBuf = t.path().join("layout");
            untar(&a.bytes(), &dir);
            let index: Value =
                serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
            let d = &index["manifests"][0];
            assert_eq!(
                d["annotations"][CONTAINERD_IMAGE_NAME],
                "docker.io/library/builder:22"
            );
            assert_eq!(d["annotations"][REF_NAME], "22");
            let m = a.manifest();
            let sources = m[0]["LayerSources"].as_object().unwrap();
            assert_eq!(sources.len(), 3);
            for (i, diff_id) in a.images[0].diff_ids.iter().enumerate() {
                assert_eq!(sources[diff_id]["digest"], a.images[0].layer_digests[i]);
                let blob = a.content(a.layer_member(0, i)).unwrap();
                assert_eq!(sha256_digest(blob), a.images[0].layer_digests[i]);
                let gz = Compression::detect(blob) == Compression::Gzip;
                assert_eq!(gz, format == Format::ContainerdStore);
                assert_eq!(gz, a.images[0].layer_digests[i] != *diff_id);
            }
            assert_eq!(
                a.member("repositories").is_some(),
                format == Format::Docker25
            );
            let copy = t.path().join("copy");
            peers::skopeo_copy(
                &format!("oci:{}:22", dir.display()),
                &format!("oci:{}:x", copy.display()),
                &[],
            )
            .unwrap_or_else(|e| panic!("{}: {e}", format.name()));
            unpack_both(t.path(), &spec, &copy, "x");
        }
    }

    #[test]
    fn legacy_layers_are_diff_tars_and_shared_ones_symlinks() {
        let base = Layer::new(vec![Entry::file("base", "b")], Compression::Gzip);
        let top = Layer::new(vec![Entry::file("top", "t")], Compression::Gzip);
        let one = ImageSpec::new(vec![base.clone(), top.clone()]);
        // The same top layer on another base: another id, the same bytes.
        let two = ImageSpec::new(vec![top.clone()]);
        let a = ArchiveBuilder::new(Format::Legacy)
            .image(one, &["one:1"])
            .image(two, &["two:2", "two:latest"])
            .build();
        assert_eq!(a.images[0].layer_members[0], a.layer_member(0, 0));
        for img in &a.images {
            for (m, d) in img.layer_members.iter().zip(&img.diff_ids) {
                assert!(m.ends_with("/layer.tar"), "{m}");
                if let Some(c) = a.content(m) {
                    assert_eq!(&sha256_digest(c), d);
                }
            }
        }
        let shared = a.layer_member(1, 0);
        match a.member(shared).unwrap() {
            Entry::Symlink { target, .. } => {
                assert_eq!(
                    String::from_utf8_lossy(target),
                    format!("../{}", a.layer_member(0, 1))
                );
            }
            other => panic!("{other:?}"),
        }
        let repos: Value = serde_json::from_slice(a.content("repositories").unwrap()).unwrap();
        let top_id = a.layer_member(1, 0).trim_end_matches("/layer.tar");
        assert_eq!(repos["two"]["latest"], top_id);
        assert_eq!(repos["two"]["2"], top_id);
        let m = a.manifest();
        assert_eq!(m[1]["RepoTags"], json!(["two:2", "two:latest"]));
        // Untagged: RepoTags null, no repositories.
        let untagged = legacy(&ImageSpec::new(vec![base]), &[]);
        assert_eq!(untagged.manifest()[0]["RepoTags"], Value::Null);
        assert!(untagged.member("repositories").is_none());
    }

    #[test]
    fn edits_and_truncation() {
        let mut a = skopeo_style(&spec(), &["x:y"]);
        let l = a.layer_member(0, 1).to_owned();
        let (start, len) = a.content_range(&l);
        let bytes = a.bytes();
        assert_eq!(&bytes[start..start + len], a.content(&l).unwrap());
        let cut = a.truncated_in(&l);
        assert_eq!(cut.len(), start + len / 2);
        a.rename_member(&l, "../escape.tar");
        assert_eq!(a.manifest()[0]["Layers"][1], "../escape.tar");
        assert_eq!(a.layer_member(0, 1), "../escape.tar");
        assert!(a.member(&l).is_none());
        a.pad_manifest(1000);
        assert_eq!(a.content("manifest.json").unwrap().len(), 1000);
        assert_eq!(a.manifest()[0]["Layers"][1], "../escape.tar");
        let dotted = ArchiveBuilder::new(Format::Legacy)
            .image(spec(), &["x:y"])
            .dot_slash()
            .build();
        assert!(dotted.names().iter().all(|n| n.starts_with("./")));
        assert!(dotted.content("manifest.json").is_some());
    }
}

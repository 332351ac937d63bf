//! The OCI image layout model, without I/O: digests, descriptors, which
//! `index.json` entry a name selects, which index entry serves a platform, and
//! how a `FILE[:REF]` location splits. Everything here is table-tested.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::ArchiveError;

/// The largest JSON document (index, manifest, config, `index.json`) we read.
pub const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;
/// How deep nested indexes are followed.
pub const MAX_INDEX_DEPTH: usize = 4;
/// The annotation naming an `index.json` entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A validated digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest<'a> {
    /// `sha256` or `sha512`.
    pub algorithm: &'a str,
    /// The lower-case hex digits.
    pub hex: &'a str,
}

impl Digest<'_> {
    /// The archive member holding the blob: `blobs/ALG/HEX`.
    pub fn member(&self) -> String {
        format!("blobs/{}/{}", self.algorithm, self.hex)
    }
}

/// Parses `sha256:` + 64 or `sha512:` + 128 lower-case hex digits; nothing else.
pub fn parse_digest(s: &str) -> Option<Digest<'_>> {
    let (algorithm, hex) = s.split_once(':')?;
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return None,
    };
    (hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(Digest { algorithm, hex })
}

/// A platform as a descriptor writes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DescriptorPlatform {
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub architecture: String,
    /// Variant.
    #[serde(default)]
    pub variant: Option<String>,
}

/// An OCI content descriptor (the fields we use).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Descriptor {
    /// Its media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Its platform (index entries).
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
}

impl Descriptor {
    /// Its `org.opencontainers.image.ref.name`.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
    }

    /// The name it is listed under in messages.
    pub fn shown_name(&self) -> String {
        self.ref_name()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("(unnamed {})", self.digest))
    }

    /// Its platform as `os/arch[/variant]`, for messages.
    pub fn shown_platform(&self) -> String {
        match &self.platform {
            Some(p) => {
                let mut s = format!("{}/{}", p.os, p.architecture);
                if let Some(v) = p.variant.as_deref().filter(|v| !v.is_empty()) {
                    s.push('/');
                    s.push_str(v);
                }
                s
            }
            None => "(unspecified)".to_owned(),
        }
    }

    /// Whether it is an attestation or other non-image entry BuildKit writes
    /// (`unknown/unknown`), never to be chosen as the image.
    fn is_attestation(&self) -> bool {
        self.annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("vnd.docker.reference.type"))
            || self.platform.as_ref().is_some_and(|p| p.os == "unknown")
    }
}

/// An image index (or `index.json`, or a Docker manifest list).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Index {
    /// Its entries.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (the field we use).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Manifest {
    /// The config's descriptor.
    pub config: Descriptor,
}

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image index / manifest list.
    Index,
    /// An image manifest.
    Manifest,
}

/// Classifies a document by the media type its descriptor gives, else its own
/// `mediaType` field, else its shape (OCI lets the media type be absent). `Err`
/// carries the unsupported media type.
pub fn classify(descriptor_media_type: Option<&str>, bytes: &[u8]) -> Result<Kind, String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| format!("(not JSON: {e})"))?;
    let mt = descriptor_media_type
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .or(probe.media_type);
    match mt.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => Ok(Kind::Index),
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => Ok(Kind::Manifest),
        Some(other) if other != "application/json" => Err(other.to_owned()),
        _ if probe.manifests.is_some() => Ok(Kind::Index),
        _ if probe.config.is_some() => Ok(Kind::Manifest),
        _ => Err("(none)".to_owned()),
    }
}

/// A target platform, architecture aliases normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// Makes a platform, as locald's core does: `x86_64` is `amd64`, `aarch64`
    /// is `arm64`, `arm64/v8` is plain `arm64` and `amd64/v1` plain `amd64`
    /// (their defaults), plain `arm` is `arm/v7`.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let arch = architecture.to_ascii_lowercase();
        let variant = variant
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase);
        let (architecture, variant) = match arch.as_str() {
            "x86_64" | "x86-64" | "amd64" => ("amd64".to_owned(), variant.filter(|v| v != "v1")),
            "aarch64" | "arm64" => (
                "arm64".to_owned(),
                variant
                    .map(|v| if v == "8" { "v8".to_owned() } else { v })
                    .filter(|v| v != "v8"),
            ),
            "armhf" => ("arm".to_owned(), Some("v7".to_owned())),
            "armel" => ("arm".to_owned(), Some("v6".to_owned())),
            "arm" => (
                "arm".to_owned(),
                Some(variant.map_or("v7".to_owned(), |v| {
                    if v.starts_with('v') {
                        v
                    } else {
                        format!("v{v}")
                    }
                })),
            ),
            "i386" | "i686" | "386" => ("386".to_owned(), variant),
            _ => (arch, variant),
        };
        Platform {
            os: os.to_ascii_lowercase(),
            architecture,
            variant,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, ArchiveError> {
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match s.split('/').collect::<Vec<_>>().as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, var] if valid(os) && valid(arch) && valid(var) => {
                Ok(Platform::new(os, arch, Some(var)))
            }
            _ => Err(ArchiveError::BadPlatform(s.to_owned())),
        }
    }

    fn of(d: &Descriptor) -> Option<Platform> {
        d.platform
            .as_ref()
            .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()))
    }

    /// Whether `other` serves this platform: same OS and architecture, and the
    /// same variant when both name one.
    fn serves(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Chooses the entry of an index that serves `platform`: an entry whose
/// variant is exactly the one asked for first, then any compatible one; an
/// entry without a platform only when it is the index's only image.
/// Attestations are never chosen.
pub fn select_platform<'a>(
    index: &'a Index,
    platform: &Platform,
    archive: &Path,
    what: &str,
) -> Result<&'a Descriptor, ArchiveError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| !d.is_attestation())
        .collect();
    let compatible: Vec<(&Descriptor, Platform)> = candidates
        .iter()
        .filter_map(|d| Platform::of(d).map(|p| (*d, p)))
        .filter(|(_, p)| platform.serves(p))
        .collect();
    let chosen = compatible
        .iter()
        .find(|(_, p)| p.variant == platform.variant)
        .or(compatible.first())
        .map(|(d, _)| *d);
    if let Some(d) = chosen {
        return Ok(d);
    }
    if let [only] = candidates.as_slice() {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    Err(ArchiveError::NoMatchingPlatform {
        path: archive.to_path_buf(),
        what: what.to_owned(),
        wanted: platform.to_string(),
        available: candidates.iter().map(|d| d.shown_platform()).collect(),
    })
}

/// The tag of a reference (`name:tag`, `host:port/name:tag`), if it has one.
fn tag_of(reference: &str) -> Option<&str> {
    let name = reference.split('@').next().unwrap_or(reference);
    let (before, tag) = name.rsplit_once(':')?;
    (!tag.contains('/') && !before.is_empty() && !tag.is_empty()).then_some(tag)
}

/// A reference in Docker's canonical spelling: `busybox` is
/// `docker.io/library/busybox:latest`. `None` for what is not a reference.
pub fn normalise_reference(reference: &str) -> Option<String> {
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let tag = tag_of(name_tag);
    let name = match tag {
        Some(t) => &name_tag[..name_tag.len() - t.len() - 1],
        None => name_tag,
    };
    if name.is_empty()
        || name.split('/').any(str::is_empty)
        || name
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        || name.bytes().any(|b| b.is_ascii_whitespace())
    {
        return None;
    }
    let mut full = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            let host = if first == "index.docker.io" {
                "docker.io"
            } else {
                first
            };
            if host == "docker.io" && !rest.contains('/') {
                format!("docker.io/library/{rest}")
            } else {
                format!("{host}/{rest}")
            }
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    match (tag, digest) {
        (Some(t), _) => {
            full.push(':');
            full.push_str(t);
        }
        (None, None) => full.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        full.push('@');
        full.push_str(d);
    }
    Some(full)
}

/// Chooses the `index.json` entry `image` names, trying in turn: the exact
/// `ref.name`; the same reference in canonical spelling (`busybox` finds
/// `docker.io/library/busybox:latest`); the tag alone (skopeo writes only the
/// REF, often a tag: `heroku/builder:24` finds `24`). `None` asks for the only
/// image. The same digest under several names is one image; an archive holding
/// one unnamed image serves any name.
pub fn select_entry<'a>(
    index: &'a Index,
    image: Option<&str>,
    archive: &Path,
) -> Result<&'a Descriptor, ArchiveError> {
    let entries = &index.manifests;
    let available = || entries.iter().map(Descriptor::shown_name).collect();
    let distinct = |ds: Vec<&'a Descriptor>| {
        let mut seen: Vec<&'a Descriptor> = Vec::new();
        for d in ds {
            if !seen.iter().any(|s| s.digest == d.digest) {
                seen.push(d);
            }
        }
        seen
    };
    if entries.is_empty() {
        return Err(ArchiveError::Empty {
            path: archive.to_path_buf(),
        });
    }
    let all = distinct(entries.iter().collect());
    let Some(image) = image else {
        return match all.as_slice() {
            [only] => Ok(only),
            _ => Err(ArchiveError::NeedName {
                path: archive.to_path_buf(),
                available: available(),
            }),
        };
    };
    let wanted = normalise_reference(image);
    let wanted_tag = tag_of(image);
    type Rule<'r> = Box<dyn Fn(&str) -> bool + 'r>;
    let rules: [Rule<'_>; 3] = [
        Box::new(|n| n == image),
        Box::new(|n| wanted.is_some() && normalise_reference(n) == wanted),
        Box::new(|n| !n.contains('/') && !n.contains(':') && wanted_tag == Some(n)),
    ];
    for rule in &rules {
        let hits = distinct(
            entries
                .iter()
                .filter(|d| d.ref_name().is_some_and(rule))
                .collect(),
        );
        match hits.as_slice() {
            [] => continue,
            [one] => return Ok(one),
            many => {
                return Err(ArchiveError::Ambiguous {
                    path: archive.to_path_buf(),
                    image: image.to_owned(),
                    candidates: many.iter().map(|d| d.shown_name()).collect(),
                })
            }
        }
    }
    if let [only] = all.as_slice() {
        if only.ref_name().is_none() {
            return Ok(only);
        }
    }
    Err(ArchiveError::NoSuchImage {
        path: archive.to_path_buf(),
        image: image.to_owned(),
        available: available(),
    })
}

/// Splits `FILE[:REF]`: at the rightmost `:` whose left side is an existing
/// file, so that neither paths with a `:` (`a:b.tar`) nor references with one
/// (`a.tar:busybox:latest`) need quoting. Without such a `:` the whole location
/// is the file. An empty REF is none.
pub fn split_location(location: &str, is_file: impl Fn(&str) -> bool) -> (&str, Option<&str>) {
    for (i, _) in location.rmatch_indices(':') {
        let (file, reference) = (&location[..i], &location[i + 1..]);
        if !file.is_empty() && is_file(file) {
            return (file, (!reference.is_empty()).then_some(reference));
        }
    }
    (location, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_table() {
        let h64 = "0123456789abcdef".repeat(4);
        let h128 = h64.repeat(2);
        for (input, ok) in [
            (format!("sha256:{h64}"), true),
            (format!("sha512:{h128}"), true),
            (format!("sha256:{}", h64.to_uppercase()), false),
            (format!("sha256:{}", &h64[1..]), false),
            (format!("sha256:{h64}0"), false),
            (format!("sha512:{h64}"), false),
            (format!("md5:{}", &h64[..32]), false),
            (format!("sha256:../../{}", &h64[6..]), false),
            (format!("sha256:{}/", &h64[1..]), false),
            (h64.clone(), false),
            (String::new(), false),
        ] {
            assert_eq!(parse_digest(&input).is_some(), ok, "{input}");
        }
        let d =
            parse_digest("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
                .unwrap();
        assert_eq!(d.member(), format!("blobs/sha256/{h64}"));
    }

    #[test]
    fn reference_table() {
        for (input, want) in [
            ("busybox", Some("docker.io/library/busybox:latest")),
            ("busybox:1.36", Some("docker.io/library/busybox:1.36")),
            ("heroku/builder:24", Some("docker.io/heroku/builder:24")),
            (
                "docker.io/heroku/builder:24",
                Some("docker.io/heroku/builder:24"),
            ),
            (
                "index.docker.io/busybox",
                Some("docker.io/library/busybox:latest"),
            ),
            (
                "docker.io/busybox",
                Some("docker.io/library/busybox:latest"),
            ),
            ("localhost/x", Some("localhost/x:latest")),
            ("127.0.0.1:5000/run", Some("127.0.0.1:5000/run:latest")),
            ("127.0.0.1:5000/run:2", Some("127.0.0.1:5000/run:2")),
            ("quay.io/a/b@sha256:ab", Some("quay.io/a/b@sha256:ab")),
            ("a//b", None),
            ("", None),
            (":latest", None),
            ("has space", None),
        ] {
            assert_eq!(normalise_reference(input).as_deref(), want, "{input}");
        }
        assert_eq!(tag_of("host:5000/x"), None);
        assert_eq!(tag_of("host:5000/x:1"), Some("1"));
        assert_eq!(tag_of("x@sha256:ab"), None);
    }

    fn desc(name: Option<&str>, d: u8, platform: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": format!("sha256:{}", format!("{d:02x}").repeat(32)),
            "size": 1,
        });
        if let Some(n) = name {
            v["annotations"] = serde_json::json!({ REF_NAME: n });
        }
        if let Some(p) = platform {
            let parts: Vec<&str> = p.split('/').collect();
            v["platform"] = serde_json::json!({"os": parts[0], "architecture": parts[1]});
            if let Some(var) = parts.get(2) {
                v["platform"]["variant"] = serde_json::json!(var);
            }
        }
        v
    }

    fn index(entries: Vec<serde_json::Value>) -> Index {
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": entries}))
            .unwrap()
    }

    fn pick(idx: &Index, image: Option<&str>) -> Result<u8, String> {
        select_entry(idx, image, Path::new("A.tar"))
            .map(|d| u8::from_str_radix(&d.digest[7..9], 16).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn entry_selection_table() {
        let idx = index(vec![
            desc(Some("builder"), 1, None),
            desc(Some("docker.io/heroku/builder:22"), 2, None),
            desc(Some("24"), 3, None),
            desc(Some("127.0.0.1:5000/run:latest"), 4, None),
            desc(Some("docker.io/library/busybox:latest"), 5, None),
        ]);
        for (image, want) in [
            ("builder", 1),
            ("heroku/builder:22", 2),
            ("docker.io/heroku/builder:22", 2),
            ("heroku/builder:24", 3),
            ("24", 3),
            ("127.0.0.1:5000/run", 4),
            ("busybox", 5),
            ("busybox:latest", 5),
        ] {
            assert_eq!(pick(&idx, Some(image)), Ok(want), "{image}");
        }
        let e = pick(&idx, Some("nope:1")).unwrap_err();
        assert!(
            e.contains("no image named \"nope:1\"")
                && e.contains("builder, docker.io/heroku/builder:22, 24"),
            "{e}"
        );
        let e = pick(&idx, None).unwrap_err();
        assert!(e.contains("holds 5 images; name one"), "{e}");
    }

    #[test]
    fn single_unnamed_and_ambiguous() {
        assert_eq!(pick(&index(vec![desc(None, 1, None)]), None), Ok(1));
        assert_eq!(pick(&index(vec![desc(None, 1, None)]), Some("x")), Ok(1));
        assert_eq!(pick(&index(vec![desc(Some("a"), 1, None)]), None), Ok(1));
        assert!(pick(&index(vec![desc(Some("a"), 1, None)]), Some("b")).is_err());
        // One digest under two names is one image.
        let idx = index(vec![desc(Some("a"), 1, None), desc(Some("b"), 1, None)]);
        assert_eq!(pick(&idx, None), Ok(1));
        let idx = index(vec![
            desc(Some("docker.io/x/a:1"), 1, None),
            desc(Some("index.docker.io/x/a:1"), 2, None),
        ]);
        assert!(pick(&idx, Some("x/a:1"))
            .unwrap_err()
            .contains("matches several"));
        assert!(pick(&index(vec![]), None)
            .unwrap_err()
            .contains("holds no images"));
    }

    fn pick_platform(idx: &Index, p: &str) -> Result<u8, String> {
        let p = Platform::parse(p).map_err(|e| e.to_string())?;
        select_platform(idx, &p, Path::new("A.tar"), "index X")
            .map(|d| u8::from_str_radix(&d.digest[7..9], 16).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn platform_selection_table() {
        let idx = index(vec![
            desc(None, 9, Some("unknown/unknown")),
            desc(None, 1, Some("linux/amd64/v3")),
            desc(None, 2, Some("linux/amd64")),
            desc(None, 3, Some("linux/arm64/v8")),
            desc(None, 4, Some("linux/arm/v6")),
            desc(None, 5, Some("linux/arm/v7")),
        ]);
        for (p, want) in [
            ("linux/amd64", Ok(2)),
            ("linux/x86_64", Ok(2)),
            ("linux/amd64/v3", Ok(1)),
            ("linux/arm64", Ok(3)),
            ("linux/aarch64", Ok(3)),
            ("linux/arm64/v8", Ok(3)),
            ("linux/arm/v7", Ok(5)),
            ("linux/arm/v6", Ok(4)),
            ("linux/arm", Ok(5)),
            ("linux/armhf", Ok(5)),
            ("linux/arm/6", Ok(4)),
            ("LINUX/AMD64", Ok(2)),
        ] {
            assert_eq!(pick_platform(&idx, p), want, "{p}");
        }
        let e = pick_platform(&idx, "linux/s390x").unwrap_err();
        assert!(
            e.contains("no manifest for linux/s390x")
                && e.contains("linux/amd64/v3, linux/amd64, linux/arm64/v8")
                && !e.contains("unknown"),
            "{e}"
        );
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
            "",
        ] {
            assert!(
                pick_platform(&idx, bad)
                    .unwrap_err()
                    .contains("is not of the form"),
                "{bad}"
            );
        }
        // An index with one image and no platform serves any platform.
        let idx = index(vec![
            desc(None, 7, None),
            desc(None, 9, Some("unknown/unknown")),
        ]);
        assert_eq!(pick_platform(&idx, "linux/riscv64"), Ok(7));
    }

    #[test]
    fn classification_table() {
        for (mt, doc, want) in [
            (Some(OCI_INDEX), "{}", Ok(Kind::Index)),
            (Some(DOCKER_LIST), "{}", Ok(Kind::Index)),
            (Some(OCI_MANIFEST), "{}", Ok(Kind::Manifest)),
            (Some(DOCKER_MANIFEST), "{}", Ok(Kind::Manifest)),
            (
                None,
                r#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                Ok(Kind::Index),
            ),
            (Some(""), r#"{"manifests":[]}"#, Ok(Kind::Index)),
            (None, r#"{"config":{}}"#, Ok(Kind::Manifest)),
            (
                Some("application/json"),
                r#"{"config":{}}"#,
                Ok(Kind::Manifest),
            ),
            (Some("text/plain"), "{}", Err("text/plain".to_owned())),
            (None, "{}", Err("(none)".to_owned())),
        ] {
            assert_eq!(classify(mt, doc.as_bytes()), want, "{mt:?} {doc}");
        }
        assert!(classify(None, b"nope").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn location_table() {
        let files = ["a.tar", "dir/a:b.tar", "x", "x:y"];
        let is_file = |p: &str| files.contains(&p);
        for (input, want) in [
            ("a.tar", ("a.tar", None)),
            ("a.tar:latest", ("a.tar", Some("latest"))),
            ("a.tar:busybox:latest", ("a.tar", Some("busybox:latest"))),
            (
                "a.tar:127.0.0.1:5000/run:2",
                ("a.tar", Some("127.0.0.1:5000/run:2")),
            ),
            ("a.tar:", ("a.tar", None)),
            ("dir/a:b.tar", ("dir/a:b.tar", None)),
            ("dir/a:b.tar:22", ("dir/a:b.tar", Some("22"))),
            ("missing.tar:22", ("missing.tar:22", None)),
            (":22", (":22", None)),
            // Both `x` and `x:y` exist: the rightmost split wins, as documented.
            ("x:y", ("x", Some("y"))),
            ("x:y:z", ("x:y", Some("z"))),
        ] {
            assert_eq!(split_location(input, is_file), want, "{input}");
        }
    }
}

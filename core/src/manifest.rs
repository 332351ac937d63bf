//! Parsing image documents (index, manifest, config) with a size cap, and choosing a
//! manifest from an index by platform. Pure functions: no I/O here.

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::platform::Platform;

/// The largest JSON document (index, manifest, config) we parse: 20 MiB.
pub const MAX_JSON_BYTES: u64 = 20 * 1024 * 1024;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker manifest list (schema 2).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The annotation naming an image in an OCI layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// An image index / manifest list.
    Index,
    /// An image manifest.
    Manifest,
}

/// Classifies a document by its media type, falling back to its own `mediaType`
/// field and then to its shape (OCI allows the media type to be absent).
pub fn classify(media_type: Option<&str>, bytes: &[u8], what: &str) -> Result<DocumentKind> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    check_size(bytes.len() as u64, what)?;
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })?;
    let mt = media_type
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .or(probe.media_type);
    match mt.as_deref() {
        Some(OCI_INDEX) | Some(DOCKER_LIST) => Ok(DocumentKind::Index),
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => Ok(DocumentKind::Manifest),
        Some(other) if other != "application/json" => Err(Error::UnsupportedMediaType {
            what: what.to_owned(),
            media_type: other.to_owned(),
        }),
        _ if probe.manifests.is_some() => Ok(DocumentKind::Index),
        _ if probe.layers.is_some() => Ok(DocumentKind::Manifest),
        _ => Err(Error::UnsupportedMediaType {
            what: what.to_owned(),
            media_type: "(none)".to_owned(),
        }),
    }
}

/// Refuses sizes over [`MAX_JSON_BYTES`].
pub fn check_size(size: u64, what: &str) -> Result<()> {
    if size > MAX_JSON_BYTES {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            size,
            limit: MAX_JSON_BYTES,
        });
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    check_size(bytes.len() as u64, what)?;
    let json = |source| Error::Json {
        what: what.to_owned(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json)?;
    // Check digests ourselves first, so a malformed one is reported as a digest
    // problem (and where it is), not as a shapeless JSON error.
    check_digests(&value, &mut String::new(), what)?;
    serde_json::from_value(value).map_err(json)
}

/// Validates every `"digest": "..."` string in a document.
fn check_digests(v: &serde_json::Value, at: &mut String, what: &str) -> Result<()> {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                let len = at.len();
                at.push('.');
                at.push_str(k);
                if let (true, Some(d)) = (k == "digest", child.as_str()) {
                    Digest::parse(d).map_err(|source| Error::BadDigest {
                        what: format!("{what} (at {})", &at[1..]),
                        source,
                    })?;
                }
                check_digests(child, at, what)?;
                at.truncate(len);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("[{i}]"));
                check_digests(child, at, what)?;
                at.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses an image index (OCI or Docker manifest list).
pub fn parse_index(bytes: &[u8], what: &str) -> Result<ImageIndex> {
    parse(bytes, what)
}

/// Parses an image manifest (OCI or Docker schema 2).
pub fn parse_manifest(bytes: &[u8], what: &str) -> Result<ImageManifest> {
    parse(bytes, what)
}

/// Parses an image configuration.
pub fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfiguration> {
    parse(bytes, what)
}

/// Our validated digest of a descriptor (`what` names it in errors).
pub fn descriptor_digest(d: &Descriptor, what: &str) -> Result<Digest> {
    Digest::parse(d.digest().as_ref()).map_err(|source| Error::BadDigest {
        what: what.to_owned(),
        source,
    })
}

/// Whether an index entry is an attestation or other non-image artifact that must
/// never be chosen as "the image" (BuildKit writes `unknown/unknown` entries).
fn is_attestation(d: &Descriptor) -> bool {
    d.annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key("vnd.docker.reference.type"))
        || d.platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == "unknown")
}

/// A platform as written in a descriptor, for messages.
pub fn descriptor_platform(d: &Descriptor) -> Option<String> {
    d.platform().as_ref().map(|p| {
        let mut s = format!("{}/{}", p.os(), p.architecture());
        if let Some(v) = p.variant().as_ref().filter(|v| !v.is_empty()) {
            s.push('/');
            s.push_str(v);
        }
        s
    })
}

/// Chooses the entry of an index that serves `platform`.
///
/// Entries without a platform are taken only when the index has exactly one image
/// entry (single-image layouts often omit it). Attestations are never chosen.
pub fn select_manifest<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
    what: &str,
) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| !is_attestation(d))
        .collect();
    let platform_of = |d: &Descriptor| {
        d.platform().as_ref().map(|p| {
            Platform::new(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            )
        })
    };
    let compatible: Vec<&&Descriptor> = candidates
        .iter()
        .filter(|d| {
            platform_of(d)
                .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .collect();
    // Prefer the entry whose variant is exactly the one asked for (none for a
    // plain `linux/amd64`), so `amd64/v3` is not picked for a machine that did
    // not ask for it just because it is listed first.
    let matching = compatible
        .iter()
        .find(|d| platform_of(d).is_some_and(|p| p.variant == platform.variant))
        .or(compatible.first())
        .copied();
    if let Some(d) = matching {
        return Ok(d);
    }
    if let [only] = candidates.as_slice() {
        if only.platform().is_none() {
            return Ok(only);
        }
    }
    Err(Error::NoMatchingPlatform {
        what: what.to_owned(),
        wanted: platform.to_string(),
        available: candidates
            .iter()
            .map(|d| descriptor_platform(d).unwrap_or_else(|| "(unspecified)".to_owned()))
            .collect(),
    })
}

/// The platform an image configuration declares.
pub fn config_platform(config: &ImageConfiguration) -> Platform {
    Platform::new(
        &config.os().to_string(),
        &config.architecture().to_string(),
        config.variant().as_deref(),
    )
}

/// The `oci-layout` marker file of every layout locald writes.
pub const OCI_LAYOUT_MARKER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Whether `name` is a valid `org.opencontainers.image.ref.name` (the grammar of
/// the image-spec's annotations: components of `[A-Za-z0-9]+` joined by one of
/// `-._:@+` or `--`, separated by `/`). skopeo and umoci refuse other names.
pub fn valid_ref_name(name: &str) -> bool {
    !name.is_empty() && name.split('/').all(valid_ref_component)
}

fn valid_ref_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "--" || (sep.len() == 1 && "-._:@+".contains(sep))) {
            return false;
        }
    }
    true
}

/// An index.json entry, with the platform the config declares (as written
/// there: `arm64/v8` stays `v8`).
pub fn index_entry(
    media_type: &str,
    digest: &Digest,
    size: u64,
    config: &ImageConfiguration,
    annotations: BTreeMap<String, String>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
    });
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if !os.is_empty() && !arch.is_empty() {
        let mut p = serde_json::json!({"architecture": arch, "os": os});
        if let Some(var) = config.variant().as_deref().filter(|v| !v.is_empty()) {
            p["variant"] = var.into();
        }
        v["platform"] = p;
    }
    if !annotations.is_empty() {
        v["annotations"] = serde_json::json!(annotations);
    }
    v
}

/// The media type `manifest` declares, OCI's when it declares none.
pub fn manifest_media_type(manifest: &ImageManifest) -> String {
    manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| OCI_MANIFEST.to_owned())
}

/// `v` as JSON bytes.
pub fn to_json(v: &serde_json::Value, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

/// Checks a layout's `oci-layout` file (`imageLayoutVersion` 1.x).
pub fn read_marker(dir: &Path) -> std::result::Result<(), String> {
    let bytes = crate::fsutil::read_small(
        &dir.join("oci-layout"),
        64 * 1024,
        crate::fsutil::FinalSymlink::Follow,
    )
    .map_err(|e| format!("cannot read its oci-layout file ({e})"))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("its oci-layout file is not JSON ({e})"))?;
    match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(ver) if ver.starts_with("1.") => Ok(()),
        Some(ver) => Err(format!("unsupported imageLayoutVersion {ver:?}")),
        None => Err("its oci-layout file has no imageLayoutVersion".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    #[test]
    fn ref_name_grammar() {
        for (name, ok) in [
            ("latest", true),
            ("docker.io/library/app:latest", true),
            ("127.0.0.1:5000/a/b:1", true),
            (&*format!("a/b@sha256:{REF_HEX}"), true),
            ("v1.0--rc+1", true),
            ("", false),
            ("a//b", false),
            ("/a", false),
            ("a/", false),
            ("-a", false),
            ("a..b", false),
            ("a b", false),
            ("[::1]:5000/x:y", false),
            ("a---b", false),
        ] {
            assert_eq!(valid_ref_name(name), ok, "{name:?}");
        }
    }

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn index_json(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (plat, annot))| {
                let mut m = serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": digest(i as u8),
                    "size": 100,
                });
                if !plat.is_empty() {
                    let p: Vec<&str> = plat.split('/').collect();
                    let mut pj = serde_json::json!({"os": p[0], "architecture": p[1]});
                    if let Some(v) = p.get(2) {
                        pj["variant"] = (*v).into();
                    }
                    m["platform"] = pj;
                }
                if let Some(a) = annot {
                    m["annotations"] = serde_json::json!({ *a: "x" });
                }
                m
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))
        .unwrap()
    }

    #[test]
    fn select_by_platform_table() {
        let idx = parse_index(
            &index_json(&[
                ("linux/amd64", None),
                ("linux/arm64/v8", None),
                ("linux/arm/v7", None),
                ("unknown/unknown", Some("vnd.docker.reference.type")),
            ]),
            "test",
        )
        .unwrap();
        let pick = |p: &str| {
            select_manifest(&idx, &p.parse().unwrap(), "test").map(|d| d.digest().to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), digest(0));
        assert_eq!(pick("linux/arm64").unwrap(), digest(1));
        assert_eq!(pick("linux/arm64/v8").unwrap(), digest(1));
        assert_eq!(pick("linux/arm").unwrap(), digest(2));
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(err.contains("linux/s390x"), "{err}");
        assert!(
            err.contains("linux/amd64, linux/arm64/v8, linux/arm/v7"),
            "{err}"
        );
        assert!(!err.contains("unknown"), "{err}");
    }

    #[test]
    fn exact_variant_preferred() {
        let idx = parse_index(
            &index_json(&[
                ("linux/amd64/v3", None),
                ("linux/amd64", None),
                ("linux/arm64/v8", None),
            ]),
            "t",
        )
        .unwrap();
        let pick = |p: &str| {
            select_manifest(&idx, &p.parse().unwrap(), "t").map(|d| d.digest().to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), digest(1));
        assert_eq!(pick("linux/amd64/v3").unwrap(), digest(0));
        // A baseline image serves a v2 machine; the v3 one would not.
        assert_eq!(pick("linux/amd64/v2").unwrap(), digest(1));
    }

    #[test]
    fn single_entry_without_platform() {
        let idx = parse_index(&index_json(&[("", None)]), "t").unwrap();
        assert!(select_manifest(&idx, &"linux/arm64".parse().unwrap(), "t").is_ok());
        let idx = parse_index(&index_json(&[("", None), ("", None)]), "t").unwrap();
        assert!(select_manifest(&idx, &"linux/arm64".parse().unwrap(), "t").is_err());
    }

    #[test]
    fn classify_table() {
        let idx = index_json(&[]);
        assert_eq!(classify(None, &idx, "t").unwrap(), DocumentKind::Index);
        assert_eq!(
            classify(Some(DOCKER_LIST), b"{}", "t").unwrap(),
            DocumentKind::Index
        );
        assert_eq!(
            classify(Some(DOCKER_MANIFEST), b"{}", "t").unwrap(),
            DocumentKind::Manifest
        );
        assert_eq!(
            classify(None, br#"{"layers":[]}"#, "t").unwrap(),
            DocumentKind::Manifest
        );
        let e = classify(
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            b"{}",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("v1+prettyjws"));
        assert!(classify(None, b"{}", "t").is_err());
        assert!(classify(None, b"not json", "t").is_err());
    }

    #[test]
    fn size_cap() {
        let big = vec![b' '; (MAX_JSON_BYTES + 1) as usize];
        let e = parse_index(&big, "index.json").unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("index.json"));
    }

    #[test]
    fn bad_digest_in_descriptor_is_refused() {
        for (digest, why) in [
            ("sha256:../../etc/passwd", "not well formed"),
            ("sha1:abcd", "unsupported algorithm"),
            ("sha256", "ALGORITHM:HEX"),
        ] {
            let json = format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{digest}","size":1}}]}}"#
            );
            let e = parse_index(json.as_bytes(), "index.json").unwrap_err();
            assert!(matches!(e, Error::BadDigest { .. }), "{e}");
            let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            assert!(
                chain.contains("index.json (at manifests[0].digest) names a malformed digest"),
                "{chain}"
            );
            assert!(chain.contains(why), "{chain}");
        }
    }
}

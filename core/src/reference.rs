//! Image references with Docker's normalisation rules.
//!
//! `ubuntu` is `docker.io/library/ubuntu:latest`, `heroku/builder:22` is
//! `docker.io/heroku/builder:22`, and the first path component is a registry host
//! only when it contains `.` or `:` or is `localhost`.
//!
//! The grammar and the normalisation are `oci_spec::distribution::Reference`'s (the
//! type `oci_client::Reference` re-exports), so the registry source hands
//! [`ImageReference::oci`] to `oci-client` as is. On top of it we are stricter
//! where a reference ends up in a URL or a path: a registry must be a real
//! `host[:port]` (the library takes `foo_bar.com/x` and any number of port
//! digits), a tag ASCII (the library's `\w` is Unicode), a digest one we can
//! verify (sha256/sha512, lowercase hex). We also accept a bracketed IPv6 host
//! (`[::1]:5000/x`), which the library's grammar lacks, and treat
//! `registry-1.docker.io` as Docker Hub as well as `index.docker.io`.
//!
//! The library checks its grammar with one large regex whose Unicode `\w`
//! takes about 30 ms to compile, once per process: most of a warm `builder pull`.
//! So a reference in the plain ASCII form almost every one has is split by
//! [`plain`] and built with the library's constructors; anything else still
//! goes through the library's parser, which stays the authority (a test checks,
//! over every reference of the tables and many thousand generated ones, that
//! [`plain`] never accepts one the library parses differently or refuses).

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::Reference;

use crate::digest::{Digest, DigestError};

/// The registry Docker Hub references resolve to.
pub const DOCKER_HUB: &str = "docker.io";

/// Docker Hub's registry API host, which Docker also accepts as a name for it.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Stands in for a bracketed IPv6 host while the library parses the rest.
const IPV6_PLACEHOLDER: &str = "ipv6.locald.invalid";

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty input.
    #[error("image reference is empty")]
    Empty,
    /// Not of the form `[host[:port]/]path[:tag][@digest]`.
    #[error("image reference {reference:?} is not valid: {reason} (expected [host[:port]/]path[:tag][@digest]: path components of lowercase letters and digits joined by single . _ __ - separators; a tag of up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-')")]
    Invalid {
        /// The whole input.
        reference: String,
        /// What the parser said.
        reason: String,
    },
    /// A bad tag.
    #[error("image reference {reference:?}: tag {tag:?} is not valid (up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-')")]
    BadTag {
        /// The whole input.
        reference: String,
        /// The tag part.
        tag: String,
    },
    /// A bad registry host.
    #[error("image reference {reference:?}: registry {registry:?} is not a valid host[:port]")]
    BadRegistry {
        /// The whole input.
        reference: String,
        /// The registry part.
        registry: String,
    },
    /// A bad digest after `@`.
    #[error("image reference {reference:?}: {source}")]
    BadDigest {
        /// The whole input.
        reference: String,
        /// Why the digest was refused.
        source: DigestError,
    },
}

/// A normalised image reference: `registry/repository[:tag][@digest]`.
///
/// An `oci_spec::distribution::Reference` (= `oci_client::Reference`) that passed
/// our extra checks, with its digest validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    inner: Reference,
    digest: Option<Digest>,
}

impl ImageReference {
    /// Parses and normalises a reference the way `docker pull` does.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        // Checked first for its precise message; the library's digest is then this one.
        let digest = match input.split_once('@') {
            Some((_, d)) => Some(
                Digest::parse(d).map_err(|source| ReferenceError::BadDigest {
                    reference: input.to_owned(),
                    source,
                })?,
            ),
            None => None,
        };
        let bad_registry = |registry: &str| ReferenceError::BadRegistry {
            reference: input.to_owned(),
            registry: registry.to_owned(),
        };
        // The host component, rewritten where the library would not take it as we do.
        let mut ipv6_host = None;
        let rewritten = match input.split_once('/') {
            Some((host, rest)) if host.starts_with('[') => {
                if !valid_registry(host) {
                    return Err(bad_registry(host));
                }
                ipv6_host = Some(host);
                format!("{IPV6_PLACEHOLDER}/{rest}")
            }
            Some((DOCKER_HUB_API, rest)) => format!("{DOCKER_HUB}/{rest}"),
            _ => input.to_owned(),
        };
        let inner = match plain(&rewritten) {
            Some(r) => r,
            None => Reference::from_str(&rewritten).map_err(|e| ReferenceError::Invalid {
                reference: input.to_owned(),
                reason: e.to_string(),
            })?,
        };
        let inner = match ipv6_host {
            Some(host) => with_registry(&inner, host),
            None if !valid_registry(inner.registry()) => {
                return Err(bad_registry(inner.registry()));
            }
            None => inner,
        };
        // Docker's grammar: repository names are lowercase (the library lets
        // `UPPER/case` through as a Docker Hub repository).
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Invalid {
                reference: input.to_owned(),
                reason: "repository name must be lowercase".to_owned(),
            });
        }
        if let Some(t) = inner.tag().filter(|t| !t.is_ascii()) {
            return Err(ReferenceError::BadTag {
                reference: input.to_owned(),
                tag: t.to_owned(),
            });
        }
        Ok(ImageReference { inner, digest })
    }

    /// The registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path, e.g. `library/ubuntu`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The same reference as `oci_spec`'s (and `oci_client`'s) type.
    pub fn oci(&self) -> &Reference {
        &self.inner
    }
}

impl From<ImageReference> for Reference {
    fn from(r: ImageReference) -> Self {
        r.inner
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl FromStr for ImageReference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageReference::parse(s)
    }
}

/// The library's parse of `input` when `input` is in the plain form:
/// `[host[:port]/]path[:tag][@sha256:hex]` with a DNS-like host, lowercase path
/// components, an ASCII tag. `None` for anything else (the library decides
/// then). Same normalisation as the library's: Docker Hub for a first
/// component that is not a host, `library/` for its one-component names,
/// `latest` when neither tag nor digest is given.
fn plain(input: &str) -> Option<Reference> {
    let (rest, digest) = match input.split_once('@') {
        Some((r, d)) => {
            let hex = d.strip_prefix("sha256:")?;
            (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
            (r, Some(d))
        }
        None => (input, None),
    };
    // A tag is after the last ':' that follows the last '/'.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let b = t.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        (!b.is_empty()
            && b.len() <= 128
            && word(b[0])
            && b.iter().all(|&c| word(c) || c == b'.' || c == b'-'))
        .then_some(())?;
    }
    let (first, remainder) = name.split_once('/').unwrap_or(("", name));
    let host =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let (registry, path) = if host {
        plain_host(first).then_some(())?;
        (first, remainder)
    } else {
        (DOCKER_HUB, name)
    };
    path.split('/').all(plain_component).then_some(())?;
    let registry = if registry == "index.docker.io" {
        DOCKER_HUB
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_owned()
    };
    (repository.len() <= 255).then_some(())?;
    Some(reference(registry.to_owned(), repository, tag, digest))
}

/// `host[:port]` in the library's grammar: dot-separated labels of letters,
/// digits and inner dashes, an optional port of digits.
fn plain_host(h: &str) -> bool {
    let (host, port) = match h.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) && dns_host(host)
}

/// Dot-separated labels of ASCII letters, digits and inner dashes.
fn dns_host(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A path component in the library's grammar: runs of `[a-z0-9]` joined by a
/// single `.` or `_`, by `__`, or by any number of `-`.
fn plain_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `r` with another registry (the library has no setter).
fn with_registry(r: &Reference, registry: &str) -> Reference {
    reference(
        registry.to_owned(),
        r.repository().to_owned(),
        r.tag(),
        r.digest(),
    )
}

/// The library's reference of these parts (tag `latest` when neither tag nor
/// digest is given, as its parser makes it).
fn reference(
    registry: String,
    repository: String,
    tag: Option<&str>,
    digest: Option<&str>,
) -> Reference {
    match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").to_owned()),
    }
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (r, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if let Some(v6) = host.strip_prefix('[') {
        return v6.strip_suffix(']').is_some_and(|a| {
            !a.is_empty() && a.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        });
    }
    dns_host(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// Wherever [`plain`] gives an answer it is the library's, on the tables'
    /// references and on many generated near-references (a fixed-seed xorshift
    /// over the characters that matter).
    #[test]
    fn plain_agrees_with_the_library() {
        let same = |input: &str| {
            let Some(ours) = plain(input) else {
                return false;
            };
            let theirs = Reference::from_str(input).unwrap_or_else(|e| {
                panic!("{input:?}: plain accepts what the library refuses ({e})")
            });
            assert_eq!(
                (
                    ours.registry(),
                    ours.repository(),
                    ours.tag(),
                    ours.digest()
                ),
                (
                    theirs.registry(),
                    theirs.repository(),
                    theirs.tag(),
                    theirs.digest()
                ),
                "{input:?}"
            );
            assert_eq!(ours.whole(), theirs.whole(), "{input:?}");
            true
        };
        let fixed = [
            "ubuntu",
            "ubuntu:22.04",
            "heroku/builder:22",
            "index.docker.io/library/busybox",
            "docker.io/busybox",
            "localhost/foo",
            "localhost:5000/foo/bar:1",
            "127.0.0.1:5000/heroku/builder:22",
            "ghcr.io/a/b/c/d:v1.2-x_y",
            "test.com:5000",
            "foo_bar.com:8080",
            "foo/foo_bar.com:8080",
            "a--b__c.d_e/f",
            "b.gcr.io/test.example.com/my-app:test.example.com",
        ];
        let mut accepted = 0;
        for f in fixed {
            accepted += usize::from(same(f));
            accepted += usize::from(same(&format!("{f}@{D}")));
        }
        assert!(accepted >= 25, "plain took only {accepted} of the table");
        let alphabet = b"ab0Z.-_:/@";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut generated = 0;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 14) as usize;
            let mut input = String::new();
            let mut y = x;
            for _ in 0..len {
                y = y
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                input.push(alphabet[(y >> 33) as usize % alphabet.len()] as char);
            }
            if input.ends_with('@') {
                input.push_str(D);
            }
            generated += usize::from(same(&input));
        }
        assert!(
            generated > 1000,
            "plain took only {generated} generated references"
        );
    }

    #[test]
    fn normalisation_table() {
        let d = format!("@{D}");
        let cases: Vec<(String, String)> = vec![
            ("ubuntu".into(), "docker.io/library/ubuntu:latest".into()),
            (
                "ubuntu:22.04".into(),
                "docker.io/library/ubuntu:22.04".into(),
            ),
            (
                "heroku/builder:22".into(),
                "docker.io/heroku/builder:22".into(),
            ),
            (
                "docker.io/heroku/builder:22".into(),
                "docker.io/heroku/builder:22".into(),
            ),
            (
                "index.docker.io/library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            ("localhost/foo".into(), "localhost/foo:latest".into()),
            (
                "localhost:5000/foo/bar:1".into(),
                "localhost:5000/foo/bar:1".into(),
            ),
            (
                "127.0.0.1:5000/heroku/builder:22".into(),
                "127.0.0.1:5000/heroku/builder:22".into(),
            ),
            (format!("host:5000/a/b{d}"), format!("host:5000/a/b{d}")),
            (
                format!("host:5000/a/b:tag{d}"),
                format!("host:5000/a/b:tag{d}"),
            ),
            (
                format!("busybox{d}"),
                format!("docker.io/library/busybox{d}"),
            ),
            (
                "ghcr.io/a/b/c/d:v1.2-x_y".into(),
                "ghcr.io/a/b/c/d:v1.2-x_y".into(),
            ),
            (
                "my-reg.example.com/a__b/c--d:1".into(),
                "my-reg.example.com/a__b/c--d:1".into(),
            ),
            ("[::1]:5000/x:y".into(), "[::1]:5000/x:y".into()),
        ];
        for (input, want) in cases {
            let r = ImageReference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), want, "{input}");
        }
    }

    #[test]
    fn parts() {
        let r = ImageReference::parse(&format!("host:5000/a/b:t@{D}")).unwrap();
        assert_eq!(r.registry(), "host:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.name(), "host:5000/a/b");
        let r = ImageReference::parse(&format!("a/b@{D}")).unwrap();
        assert_eq!(r.tag(), None);
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "Ubuntu",
            "heroku/Builder:22",
            "a//b",
            "a/b:",
            "a/b:-x",
            "a/b:.x",
            "a/b@sha256:abc",
            "a/b@sha256:../../etc/passwd",
            "-a/b",
            "a/b-",
            "a...b",
            "host:99999999/a",
            "host:/a",
            "a/b:t t",
        ] {
            assert!(
                ImageReference::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    /// Where we are stricter or wider than the library we delegate to.
    #[test]
    fn beyond_the_library() {
        for bad in [
            "foo_bar.com/x",
            "host:123456/a",
            "a/b:\u{e9}t\u{e9}",
            "a/b@sha384:000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
            "a/b@sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "UPPER/case",
        ] {
            assert!(Reference::from_str(bad).is_ok(), "{bad:?}: library now refuses");
            assert!(
                ImageReference::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(ImageReference::parse("ghcr.io/Org/app").is_err());
        let r = ImageReference::parse("registry-1.docker.io/busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = ImageReference::parse(&format!("[::1]:5000/x:y@{D}")).unwrap();
        let oci = r.oci();
        assert_eq!(oci.registry(), "[::1]:5000");
        assert_eq!(oci.repository(), "x");
        assert_eq!(oci.tag(), Some("y"));
        assert_eq!(oci.digest(), Some(D));
        assert_eq!(oci.to_string(), r.to_string());
    }
}

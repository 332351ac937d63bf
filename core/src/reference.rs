//! Image references with Docker's normalisation rules.
//!
//! `ubuntu` is `docker.io/library/ubuntu:latest`, `heroku/builder:22` is
//! `docker.io/heroku/builder:22`, and the first path component is a registry host
//! only when it contains `.` or `:` or is `localhost`.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry Docker Hub references resolve to.
pub const DOCKER_HUB: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty input.
    #[error("image reference is empty")]
    Empty,
    /// A repository path component that Docker would refuse.
    #[error("image reference {reference:?}: repository {repository:?} is not valid (lowercase letters, digits and single . _ __ - separators between path components)")]
    BadRepository {
        /// The whole input.
        reference: String,
        /// The repository part.
        repository: String,
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageReference {
    /// Parses and normalises a reference the way `docker pull` does.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let digest = Digest::parse(d).map_err(|source| ReferenceError::BadDigest {
                    reference: input.to_owned(),
                    source,
                })?;
                (n, Some(digest))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_registry(&registry) {
            return Err(ReferenceError::BadRegistry {
                reference: input.to_owned(),
                registry,
            });
        }
        if !valid_repository(&repository) {
            return Err(ReferenceError::BadRepository {
                reference: input.to_owned(),
                repository,
            });
        }
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::BadTag {
                    reference: input.to_owned(),
                    tag: t.to_owned(),
                });
            }
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `library/ubuntu`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageReference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageReference::parse(s)
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

fn valid_repository(repo: &str) -> bool {
    !repo.is_empty() && repo.len() <= 255 && repo.split('/').all(valid_path_component)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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
}

//! Where images go: destination specs (`registry:REF`, `oci-layout:DIR`,
//! `docker-archive:FILE`) parsed, and opened as an [`ImageDestination`] (for
//! `image copy`) or as the build's [`locald_build::Output`].

use std::path::PathBuf;

use locald_core::destination::ImageDestination;
use locald_core::source::SourceSpec;
use locald_core::ImageReference;
use locald_source_docker_archive::DockerArchiveDestination;
use locald_source_oci_layout::{Existing, OciLayoutDestination};
use locald_source_registry::RegistryDestination;

use crate::args::RegistryArgs;
use crate::UserError;

/// Where an image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A registry, under this reference.
    Registry(ImageReference),
    /// An OCI image layout directory.
    Layout(PathBuf),
    /// A `docker load`-able tarball.
    Archive(PathBuf),
}

impl Output {
    /// Parses a destination spec (`what` names the option, for errors).
    pub fn parse(spec: &str, what: &str) -> anyhow::Result<Output> {
        let parsed = SourceSpec::parse(spec);
        let path = PathBuf::from(&parsed.location);
        if parsed.location.is_empty() {
            return Err(bad_output(spec, what));
        }
        match parsed.scheme.as_str() {
            "registry" | "docker" => {
                let reference = parsed.location.trim_start_matches("//");
                let reference = ImageReference::parse(reference).map_err(|e| {
                    UserError::with_hint(
                        format!("{what} {spec:?}: {e}"),
                        "name the image to push, e.g. registry:ghcr.io/me/app:1.0",
                    )
                })?;
                Ok(Output::Registry(reference))
            }
            "oci-layout" | "oci" => Ok(Output::Layout(std::path::absolute(&path)?)),
            "docker-archive" if parsed.location == "-" => Err(UserError::with_hint(
                format!("{what} docker-archive:- is not supported: the archive is written to a file and renamed into place"),
                "write it to a file, then `docker load -i FILE`",
            )
            .into()),
            "docker-archive" => Ok(Output::Archive(std::path::absolute(&path)?)),
            _ => Err(bad_output(spec, what)),
        }
    }

    /// `scheme:location`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Output::Registry(r) => format!("{}:{r}", locald_source_registry::SCHEME),
            Output::Layout(dir) => {
                format!("{}:{}", locald_source_oci_layout::SCHEME, dir.display())
            }
            Output::Archive(file) => format!(
                "{}:{}",
                locald_source_docker_archive::SCHEME,
                file.display()
            ),
        }
    }

    /// The local path written, if any.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Output::Registry(_) => None,
            Output::Layout(p) | Output::Archive(p) => Some(p.clone()),
        }
    }

    /// Opens the destination for an image called `names` (a registry
    /// destination names the image by its own reference, then by the names
    /// after the first).
    pub async fn open_destination(
        &self,
        names: Vec<String>,
        registry: &RegistryArgs,
    ) -> locald_core::Result<Box<dyn ImageDestination>> {
        Ok(match self {
            Output::Registry(r) => {
                let options = crate::commands::registry_options(registry)
                    .map_err(|e| locald_core::Error::source(format!("{e:#}")))?;
                // Its own reference first; the other names (a build's --tag) after.
                let mut all = vec![r.to_string()];
                all.extend(names.into_iter().skip(1));
                Box::new(RegistryDestination::open(options, &all).await?)
            }
            Output::Layout(dir) => {
                Box::new(OciLayoutDestination::open(dir, names, Existing::Merge).await?)
            }
            Output::Archive(file) => Box::new(DockerArchiveDestination::create(file, &names)?),
        })
    }

    /// The build's output: this destination, opened once the image is built.
    pub fn for_build(&self, registry: &RegistryArgs) -> locald_build::Output {
        let (output, registry) = (self.clone(), registry.clone());
        locald_build::Output {
            describe: self.describe(),
            path: self.path(),
            open: Box::new(move |names| {
                Box::pin(async move { output.open_destination(names, &registry).await })
            }),
        }
    }
}

fn bad_output(spec: &str, what: &str) -> anyhow::Error {
    UserError::with_hint(
        format!("{what} {spec:?} is not a destination locald can write"),
        "use registry:REF (push to a registry), oci-layout:DIR (an OCI image layout directory) or docker-archive:FILE (for `docker load`)",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs() {
        let abs = |p: &str| std::path::absolute(p).expect("absolute");
        assert_eq!(
            Output::parse("oci-layout:out", "--output").expect("layout"),
            Output::Layout(abs("out"))
        );
        assert_eq!(
            Output::parse("docker-archive:a.tar", "--output").expect("archive"),
            Output::Archive(abs("a.tar"))
        );
        assert_eq!(
            Output::parse("registry:127.0.0.1:5000/a/b:1", "--output").expect("registry"),
            Output::Registry(ImageReference::parse("127.0.0.1:5000/a/b:1").expect("ref"))
        );
        assert!(Output::parse("docker-archive:-", "--output").is_err());
        assert!(Output::parse("registry:Not A Ref", "--output").is_err());
        assert!(Output::parse("ftp:foo", "--output").is_err());
        assert!(Output::parse("oci-layout:", "--output").is_err());
    }
}

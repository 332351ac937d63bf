//! Where images go: `--output` specs (`oci-layout:DIR`, `docker-archive:FILE`)
//! parsed, and opened as the build's [`locald_build::Output`].

use std::path::PathBuf;

use locald_core::destination::ImageDestination;
use locald_core::source::SourceSpec;
use locald_source_docker_archive::DockerArchiveDestination;
use locald_source_oci_layout::{Existing, OciLayoutDestination};

use crate::UserError;

/// Where the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An OCI image layout directory.
    Layout(PathBuf),
    /// A `docker load`-able tarball.
    Archive(PathBuf),
}

impl Output {
    /// Parses `--output SPEC`.
    pub fn parse(spec: &str) -> anyhow::Result<Output> {
        let parsed = SourceSpec::parse(spec);
        let path = PathBuf::from(&parsed.location);
        if parsed.location.is_empty() {
            return Err(bad_output(spec));
        }
        match parsed.scheme.as_str() {
            "oci-layout" | "oci" => Ok(Output::Layout(path)),
            "docker-archive" if parsed.location == "-" => Err(UserError::with_hint(
                "--output docker-archive:- is not supported: the archive is written to a file and renamed into place",
                "write it to a file, then `docker load -i FILE`",
            )
            .into()),
            "docker-archive" => Ok(Output::Archive(path)),
            _ => Err(bad_output(spec)),
        }
    }

    /// The build's output: this destination, opened once the image is built.
    pub fn open(&self) -> locald_build::Output {
        match self.clone() {
            Output::Layout(dir) => locald_build::Output {
                describe: format!("{}:{}", locald_source_oci_layout::SCHEME, dir.display()),
                path: Some(dir.clone()),
                open: Box::new(move |names| {
                    Box::pin(async move {
                        let d = OciLayoutDestination::open(&dir, names, Existing::Merge).await?;
                        Ok(Box::new(d) as Box<dyn ImageDestination>)
                    })
                }),
            },
            Output::Archive(file) => locald_build::Output {
                describe: format!(
                    "{}:{}",
                    locald_source_docker_archive::SCHEME,
                    file.display()
                ),
                path: Some(file.clone()),
                open: Box::new(move |names| {
                    Box::pin(async move {
                        let d = DockerArchiveDestination::create(&file, &names)?;
                        Ok(Box::new(d) as Box<dyn ImageDestination>)
                    })
                }),
            },
        }
    }
}

fn bad_output(spec: &str) -> anyhow::Error {
    UserError::with_hint(
        format!("--output {spec:?} is not an output locald can write"),
        "use oci-layout:DIR (an OCI image layout directory) or docker-archive:FILE (for `docker load`)",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs() {
        assert_eq!(
            Output::parse("oci-layout:out").expect("layout"),
            Output::Layout("out".into())
        );
        assert_eq!(
            Output::parse("docker-archive:a.tar").expect("archive"),
            Output::Archive("a.tar".into())
        );
        assert!(Output::parse("docker-archive:-").is_err());
        assert!(Output::parse("registry:foo").is_err());
        assert!(Output::parse("oci-layout:").is_err());
    }
}

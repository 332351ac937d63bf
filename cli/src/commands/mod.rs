//! Command implementations, and the source wiring they share.

pub mod image;

use anyhow::Context;
use locald_core::source::{ImageSource, SchemeRegistry};
use locald_core::Platform;

/// The scheme registry with every built-in source.
pub fn schemes() -> anyhow::Result<SchemeRegistry> {
    let mut r = SchemeRegistry::new();
    locald_source_oci_layout::register(&mut r)?;
    Ok(r)
}

/// Opens the source `--source` names (the registry when absent).
pub fn open_source(spec: Option<&str>) -> anyhow::Result<Box<dyn ImageSource>> {
    let spec = spec.unwrap_or("registry:");
    let parsed = locald_core::source::SourceSpec::parse(spec);
    if parsed.scheme == locald_source_registry::SCHEME {
        anyhow::bail!(crate::UserError::with_hint(
            "pulling from a registry is not available in this version of locald yet",
            "save the image as an OCI layout (e.g. `skopeo copy docker://IMAGE oci:DIR:NAME`) and pass --source oci-layout:DIR",
        ));
    }
    schemes()?
        .open(spec)
        .with_context(|| format!("could not open image source {spec:?}"))
}

/// The platform asked for (and whether it was asked for), or this machine's.
pub fn platform(arg: Option<&str>) -> anyhow::Result<(Platform, bool)> {
    match arg {
        Some(p) => Ok((p.parse()?, true)),
        None => Ok((Platform::host(), false)),
    }
}

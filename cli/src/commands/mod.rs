//! Command implementations, and the source wiring they share.

pub mod image;

use anyhow::Context;

use crate::args::RegistryArgs;
use locald_core::source::{ImageSource, SchemeRegistry};
use locald_core::Platform;

/// The scheme registry with every built-in source.
pub fn schemes(registry: &RegistryArgs) -> anyhow::Result<SchemeRegistry> {
    let mut r = SchemeRegistry::new();
    locald_source_oci_layout::register(&mut r)?;
    locald_source_docker_archive::register(&mut r)?;
    let credential = registry
        .creds
        .as_deref()
        .map(|c| {
            locald_source_registry::Credential::parse_explicit(c, "--creds/LOCALD_REGISTRY_CREDS")
        })
        .transpose()?;
    let options = locald_source_registry::RegistryOptions {
        credential,
        insecure: registry.insecure_registries.clone(),
        ca_certs: registry.ca_certs.clone(),
        ..Default::default()
    };
    r.register(
        locald_source_registry::SCHEME,
        Box::new(locald_source_registry::Factory::new(options)),
    )?;
    Ok(r)
}

/// Opens the source `--source` names (the registry when absent).
pub fn open_source(
    spec: Option<&str>,
    registry: &RegistryArgs,
) -> anyhow::Result<Box<dyn ImageSource>> {
    let spec = spec.unwrap_or("registry:");
    schemes(registry)?
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

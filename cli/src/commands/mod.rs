//! Command implementations, and the source wiring they share.

pub mod build;
mod build_inputs;
pub mod builder;
pub mod image;
pub mod plugin;
pub mod run;

use anyhow::Context;

use crate::args::{RegistryArgs, RunnerKind};
use crate::UserError;
use locald_core::lifecycle::LifecycleRunner;
use locald_core::source::{ImageSource, SchemeRegistry, SourceSpec};
use locald_core::Platform;

/// The registry options `--creds`, `--insecure-registry` and `--ca-cert` give.
pub fn registry_options(
    registry: &RegistryArgs,
) -> anyhow::Result<locald_source_registry::RegistryOptions> {
    let credential = registry
        .creds
        .as_deref()
        .map(|c| {
            locald_source_registry::Credential::parse_explicit(c, "--creds/LOCALD_REGISTRY_CREDS")
        })
        .transpose()?;
    Ok(locald_source_registry::RegistryOptions {
        credential,
        insecure: registry.insecure_registries.clone(),
        ca_certs: registry.ca_certs.clone(),
        ..Default::default()
    })
}

/// Registers the built-in sources.
pub fn builtin_schemes(r: &mut SchemeRegistry, registry: &RegistryArgs) -> anyhow::Result<()> {
    locald_source_oci_layout::register(r)?;
    locald_source_docker_archive::register(r)?;
    r.register(
        locald_source_registry::SCHEME,
        Box::new(locald_source_registry::Factory::new(registry_options(
            registry,
        )?)),
    )?;
    Ok(())
}

/// Opens the source `--source` names (the registry when absent). With
/// `absolute`, a local source's path is made absolute first, so the cache records
/// the same source whatever directory locald runs in.
pub fn open_source(
    spec: Option<&str>,
    registry: &RegistryArgs,
    absolute: bool,
) -> anyhow::Result<Box<dyn ImageSource>> {
    let spec = spec.unwrap_or("registry:");
    let opened = if absolute {
        absolute_spec(spec)
    } else {
        spec.to_owned()
    };
    let context = || format!("could not open image source {spec:?}");
    let mut schemes = SchemeRegistry::new();
    builtin_schemes(&mut schemes, registry)?;
    // Plugins are opened only here, when no built-in source serves the scheme.
    let served = locald_source_plugins::ensure_scheme(
        &mut schemes,
        &opened,
        &locald_source_plugins::plugin_dirs(),
    )
    .with_context(context)?;
    if let locald_source_plugins::Served::ByPlugin(report) = served {
        for p in &report.refused {
            tracing::warn!(
                "ignoring plugin {}: {} (`locald plugin ls` lists plugins)",
                p.path.display(),
                p.reason
            );
        }
    }
    schemes.open(&opened).with_context(context)
}

/// `spec` with a local source's path made absolute (symlinks resolved when the
/// path exists).
pub fn absolute_spec(spec: &str) -> String {
    let mut parsed = SourceSpec::parse(spec);
    let local = [
        locald_source_oci_layout::SCHEME,
        locald_source_docker_archive::SCHEME,
    ];
    if local.contains(&parsed.scheme.as_str()) && parsed.location != "-" {
        let path = std::path::Path::new(&parsed.location);
        if let Ok(p) = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)) {
            parsed.location = p.to_string_lossy().into_owned();
        }
        return parsed.to_string();
    }
    spec.to_owned()
}

/// The platform asked for (and whether it was asked for), or this machine's.
pub fn platform(arg: Option<&str>) -> anyhow::Result<(Platform, bool)> {
    match arg {
        Some(p) => Ok((p.parse()?, true)),
        None => Ok((Platform::host(), false)),
    }
}

/// Picks the runner: the asked one, else the container where user namespaces
/// work, else native with a warning saying why.
pub fn choose_runner(asked: Option<RunnerKind>) -> anyhow::Result<Box<dyn LifecycleRunner>> {
    let container = || -> anyhow::Result<Box<dyn LifecycleRunner>> {
        let exe = sandbox_helper()?;
        Ok(Box::new(locald_runner_container::ContainerRunner::new(exe)))
    };
    match asked {
        Some(RunnerKind::Native) => Ok(Box::new(locald_runner_native::NativeRunner)),
        Some(RunnerKind::Container) => {
            if let Err(e) = locald_runner_container::probe() {
                return Err(runner_error(e));
            }
            container()
        }
        None => match locald_runner_container::probe() {
            Ok(()) => container(),
            Err(e) => {
                tracing::warn!(
                    "running the lifecycle natively on the host, because the sandbox cannot start here: {e}"
                );
                Ok(Box::new(locald_runner_native::NativeRunner))
            }
        },
    }
}

pub fn runner_error(e: locald_core::lifecycle::RunnerError) -> anyhow::Error {
    match e {
        locald_core::lifecycle::RunnerError::Unavailable { message, hint } => {
            UserError::with_hint(message, hint).into()
        }
        other => anyhow::Error::new(other),
    }
}

/// The sandbox helper: `locald-sandbox` beside this executable (a small binary
/// that starts in a fraction of locald's time), else locald itself.
pub fn sandbox_helper() -> anyhow::Result<std::path::PathBuf> {
    let exe =
        std::env::current_exe().context("cannot find the locald executable for the sandbox")?;
    let small = exe.with_file_name("locald-sandbox");
    if small.is_file() {
        return Ok(small);
    }
    Ok(exe)
}

/// The `KEY=VALUE` pairs of `--env-file`s, in order (a bad line is named with
/// its file and line number).
pub fn read_env_files(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| {
            UserError::with_hint(
                format!("cannot read --env-file {}: {e}", file.display()),
                "name an existing file of KEY=VALUE lines",
            )
        })?;
        env.extend(
            locald_build::project::parse_env_file(&text, file).map_err(|e| {
                UserError::with_hint(
                    e,
                    "write KEY=VALUE, or KEY alone for this environment's value",
                )
            })?,
        );
    }
    Ok(env)
}

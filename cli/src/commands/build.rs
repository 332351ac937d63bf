//! `locald build`: app directory in, OCI image out, with a CNB builder's lifecycle.

use std::sync::Arc;

use locald_build::{BuildError, BuildEvents, BuildOptions, ImageInput};
use locald_core::cancel::Cancel;
use locald_core::progress::{Reporter, Silent};
use locald_core::{Digest, ImageReference};

use super::build_inputs::{self as inputs, shell_quote};
use super::builder::{cache, open_builder_source};
use super::{choose_runner, open_source};
use crate::args::BuildArgs;
use crate::output::Output;
use crate::UserError;

/// `locald build`
pub async fn build(
    args: BuildArgs,
    verbose: u8,
    quiet: bool,
    cancel: Cancel,
) -> anyhow::Result<()> {
    let app = locald_build::flow::app_dir(&args.app).map_err(build_error)?;
    let image = locald_build::image_name(&app, args.image.as_deref()).map_err(build_error)?;
    let output = inputs::output(&args, &image)?;
    let inputs::Inputs {
        env,
        buildpacks,
        tags,
        creation_time,
        volumes,
    } = inputs::inputs(&args, &app)?;
    let runner = choose_runner(args.runner)?;
    let builder = open_builder_source(args.source.as_deref(), &args.registry, args.policy.policy)?;
    let run_spec = args
        .run_image_source
        .clone()
        .or_else(|| args.source.clone());
    let run_image_source = open_source(run_spec.as_deref(), &args.registry, true)?;
    let platform = args.platform.as_deref().map(str::parse).transpose()?;
    let options = BuildOptions {
        app,
        image: image.clone(),
        builder: ImageInput {
            source: builder,
            image: Some(args.builder.clone()),
        },
        run_image: args.run_image.clone(),
        run_image_source,
        platform,
        pull: args.policy.policy,
        pull_interval: args.policy.pull_interval,
        env,
        clear_cache: args.clear_cache,
        runner,
        output: output.for_build(&args.registry),
        debug: verbose > 0,
        color: std::env::var_os(crate::env::NO_COLOR).is_none()
            && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        lifecycle_stdout_to_stderr: args.json,
        cancel,
        tags,
        default_process: args.default_process.clone(),
        creation_time,
        cache_dir: args
            .cache_dir
            .as_deref()
            .map(std::path::absolute)
            .transpose()?,
        sbom_output_dir: args
            .sbom_output_dir
            .as_deref()
            .map(std::path::absolute)
            .transpose()?,
        network: match args.network {
            crate::args::NetworkKind::Host => locald_core::lifecycle::Network::Host,
            crate::args::NetworkKind::None => locald_core::lifecycle::Network::None,
        },
        volumes,
        buildpacks,
        descriptor: args
            .descriptor
            .as_deref()
            .map(std::path::absolute)
            .transpose()?,
    };
    let built = locald_build::build(&cache()?, options, &Events { quiet })
        .await
        .map_err(build_error)?;
    if args.json {
        let out = serde_json::json!({
            "image": built.image.to_string(),
            "digest": built.written.manifest_digest.to_string(),
            "config_digest": built.written.config_digest.to_string(),
            "output": built.output,
            "published": match &output {
                Output::Registry(r) => Some(format!("{r}@{}", built.written.manifest_digest)),
                _ => None,
            },
            "runner": built.runner,
            "builder": built.builder.0,
            "builder_digest": built.builder.1.to_string(),
            "run_image": built.run_image.to_string(),
            "project": built.project,
            "seconds": built.timings.total,
            "timings": built.timings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if !quiet {
        eprintln!(
            "Built {image} ({}) in {:.1}s -> {}",
            built.written.manifest_digest, built.timings.total, built.output
        );
        // A command line that runs it, as printed (quoted for a POSIX shell).
        let run = match &output {
            Output::Registry(r) => {
                eprintln!("Pushed {r}@{}", built.written.manifest_digest);
                format!("locald run {}", shell_quote(&r.to_string()))
            }
            Output::Layout(dir) => format!(
                "locald run {} --source {}",
                shell_quote(&image.to_string()),
                shell_quote(&format!("oci-layout:{}", dir.display()))
            ),
            Output::Archive(file) => format!(
                "locald run {} --source {}",
                shell_quote(&image.to_string()),
                shell_quote(&format!("docker-archive:{}", file.display()))
            ),
        };
        eprintln!("Run it:  {run}");
    }
    println!("{}", built.written.manifest_digest);
    Ok(())
}

/// What the user sees of a build: one line per step on stderr.
struct Events {
    quiet: bool,
}

impl BuildEvents for Events {
    fn builder(&self, name: &str, digest: &Digest, lifecycle_version: Option<&str>) {
        if !self.quiet {
            eprintln!(
                "Builder {name} ({}, lifecycle {})",
                digest.short(),
                lifecycle_version.unwrap_or("of unknown version")
            );
        }
    }

    fn run_image(&self, name: &str, digest: &Digest, reused: bool) {
        if !self.quiet {
            let note = if reused { ", already in place" } else { "" };
            eprintln!("Run image {name} ({}{note})", digest.short());
        }
    }

    fn building(&self, image: &ImageReference, runner: &str) {
        if !self.quiet {
            eprintln!("Building {image} with the {runner} runner");
        }
    }

    fn pull_reporter(&self) -> Arc<dyn Reporter> {
        if self.quiet {
            Arc::new(Silent)
        } else {
            crate::progress::notes_only()
        }
    }

    fn notes(&self) -> Arc<dyn Reporter> {
        crate::progress::notes_only()
    }

    fn push_reporter(&self) -> Arc<dyn Reporter> {
        crate::progress::reporter(self.quiet, 0)
    }
}

/// A build error as the CLI shows it: a sentence with a hint (and the
/// lifecycle's exit code), or the chain of causes.
fn build_error(e: BuildError) -> anyhow::Error {
    match e {
        BuildError::Refused {
            message,
            hint,
            exit_code,
        } => {
            let mut error = UserError::with_hint(message, hint);
            if let Some(code) = exit_code {
                error = error.with_exit_code(code);
            }
            error.into()
        }
        BuildError::Failed { context, source } => anyhow::Error::new(*source).context(context),
        BuildError::Output(failed) => {
            let locald_build::flow::OutputFailed {
                output,
                image,
                layout,
                source,
            } = *failed;
            let retry = format!(
                "the image is built and kept in this app's build state; retry with `locald image copy {image} --source oci-layout:{} --to {output}`",
                layout.display()
            );
            anyhow::Error::new(source).context(UserError::with_hint(
                format!("could not write the image to {output}"),
                retry,
            ))
        }
        BuildError::Runner(e) => anyhow::Error::new(*e),
        BuildError::Core(e) => anyhow::Error::new(*e),
    }
}

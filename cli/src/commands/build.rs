//! `locald build`: app directory in, OCI image out, with a CNB builder's lifecycle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use locald_build::builder::{read_builder, BuilderInfo};
use locald_build::{explain_exit, plan_creator, CreatorOptions};
use locald_cache::PullPolicy;
use locald_core::cancel::Cancel;
use locald_core::lifecycle::{HostDirs, LifecycleRunner, LineWatcher, RunStatus};
use locald_core::source::SourceSpec;
use locald_core::ImageReference;
use locald_extract::PathFilter;

use super::builder::{cache, pull_into_cache};
use super::{open_source, platform};
use crate::args::{BuildArgs, RunnerKind, SourceArgs};
use crate::UserError;

/// Where the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    Layout(PathBuf),
    Archive(PathBuf),
}

impl Output {
    fn parse(spec: &str) -> anyhow::Result<Output> {
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

    fn path(&self) -> &Path {
        match self {
            Output::Layout(p) | Output::Archive(p) => p,
        }
    }

    fn describe(&self) -> String {
        match self {
            Output::Layout(p) => format!("oci-layout:{}", p.display()),
            Output::Archive(p) => format!("docker-archive:{}", p.display()),
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

/// The default image name: the app directory's name, made a valid repository.
fn default_image_name(app: &Path) -> String {
    let base = app
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    // Other characters become `-`; separators may not repeat or mix (`a..b`,
    // `a.-b`): the first of a run is kept.
    let mut name = String::with_capacity(base.len());
    for c in base.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
            c
        } else {
            '-'
        };
        let separator = !c.is_ascii_alphanumeric();
        if separator && name.ends_with(|p: char| !p.is_ascii_alphanumeric()) {
            continue;
        }
        name.push(c);
    }
    name = name
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    if name.is_empty() {
        name = "app".to_owned();
    }
    format!("{name}:latest")
}

/// Picks the runner: the asked one, else the container where user namespaces
/// work, else native with a warning saying why.
fn choose_runner(
    asked: Option<RunnerKind>,
) -> anyhow::Result<(Box<dyn LifecycleRunner>, RunnerKind)> {
    let container = || -> anyhow::Result<Box<dyn LifecycleRunner>> {
        let exe =
            std::env::current_exe().context("cannot find the locald executable for the sandbox")?;
        Ok(Box::new(locald_runner_container::ContainerRunner::new(exe)))
    };
    match asked {
        Some(RunnerKind::Native) => Ok((
            Box::new(locald_runner_native::NativeRunner),
            RunnerKind::Native,
        )),
        Some(RunnerKind::Container) => {
            if let Err(e) = locald_runner_container::probe() {
                return Err(runner_error(e));
            }
            Ok((container()?, RunnerKind::Container))
        }
        None => match locald_runner_container::probe() {
            Ok(()) => Ok((container()?, RunnerKind::Container)),
            Err(e) => {
                tracing::warn!(
                    "running the lifecycle natively on the host, because the sandbox cannot start here: {e}"
                );
                Ok((
                    Box::new(locald_runner_native::NativeRunner),
                    RunnerKind::Native,
                ))
            }
        },
    }
}

/// A builder no plan can be made for, in a sentence with a hint.
fn plan_error(e: locald_build::PlanError) -> anyhow::Error {
    let hint = match e {
        locald_build::PlanError::NoBuildUser => {
            "builders made by `pack builder create` declare them; is this a CNB builder?"
        }
        locald_build::PlanError::PlatformApi(_) => {
            "`locald builder inspect` shows the builder's lifecycle and APIs"
        }
    };
    UserError::with_hint(e.to_string(), hint).into()
}

fn runner_error(e: locald_core::lifecycle::RunnerError) -> anyhow::Error {
    match e {
        locald_core::lifecycle::RunnerError::Unavailable { message, hint } => {
            UserError::with_hint(message, hint).into()
        }
        other => anyhow::Error::new(other),
    }
}

/// `locald build`
pub async fn build(
    args: BuildArgs,
    verbose: u8,
    quiet: bool,
    cancel: Cancel,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |msg: String| {
        if !quiet {
            eprintln!("{msg}");
        }
    };
    if !args.app.is_dir() {
        return Err(UserError::with_hint(
            format!(
                "the app directory {} does not exist or is not a directory",
                args.app.display()
            ),
            "pass the directory holding the app's source, e.g. `locald build ./app`",
        )
        .into());
    }
    let app = std::fs::canonicalize(&args.app)
        .with_context(|| format!("cannot resolve the app directory {}", args.app.display()))?;
    let (image_name, what) = match &args.image {
        Some(name) => (name.clone(), "--image".to_owned()),
        None => (
            default_image_name(&app),
            format!("the name made from the app directory {}", app.display()),
        ),
    };
    let image_ref = ImageReference::parse(&image_name).map_err(|e| {
        UserError::with_hint(
            format!("{what} {image_name:?} is not a valid image name: {e}"),
            "name the image with --image, e.g. --image myapp:1.0",
        )
    })?;
    if image_ref.digest().is_some() {
        return Err(UserError::with_hint(
            format!("{what} {image_name:?} has a digest: the image being built has none yet"),
            "name it by tag, e.g. --image myapp:1.0",
        )
        .into());
    }
    let output = match &args.output {
        Some(spec) => Output::parse(spec)?,
        None => Output::Layout(PathBuf::from(format!(
            "{}.oci",
            image_ref.repository().rsplit('/').next().unwrap_or("app")
        ))),
    };
    let output = match output {
        Output::Layout(p) => Output::Layout(std::path::absolute(&p)?),
        Output::Archive(p) => Output::Archive(std::path::absolute(&p)?),
    };
    let env: Vec<(String, String)> = args
        .env
        .iter()
        .map(|e| locald_build::project::parse_env_arg(e))
        .collect::<Result<_, _>>()?;

    let (runner, kind) = choose_runner(args.runner)?;
    let cache = cache()?;

    // 1. The builder: /cnb for the native runner, the whole root for the sandbox.
    let filter = match kind {
        RunnerKind::Container => PathFilter::default(),
        RunnerKind::Native => PathFilter::new(&["/cnb"]).map_err(anyhow::Error::msg)?,
    };
    let builder_args = SourceArgs {
        image: Some(args.builder.clone()),
        source: args.source.clone(),
        platform: args.platform.clone(),
        registry: args.registry.clone(),
    };
    // The build reads the tree until the lifecycle ends: hold it so that prune, rm
    // and builder updates keep it. A prune between the pull and the hold may have
    // removed it: then pull again (once; it is rare).
    let mut attempt = 0;
    let (pulled, _held) = loop {
        attempt += 1;
        let pulled = pull_into_cache(
            &cache,
            &builder_args,
            &args.policy,
            filter.clone(),
            quiet,
            true,
            cancel.clone(),
        )
        .await?;
        let held = {
            let (cache, digest) = (cache.clone(), pulled.image.manifest_digest.clone());
            tokio::task::spawn_blocking(move || cache.hold_image(&digest))
                .await
                .context("the cache lock thread failed")??
        };
        if pulled.tree.is_dir() || attempt > 1 {
            break (pulled, held);
        }
    };
    let builder = &pulled.image;
    if !pulled.tree.join("cnb/lifecycle").is_dir() {
        return Err(UserError::with_hint(
            format!(
                "{} is not a CNB builder image: it has no /cnb/lifecycle",
                builder.name
            ),
            "builders are images made by `pack builder create`, e.g. heroku/builder:22",
        )
        .into());
    }
    let info = read_builder(&pulled.tree, &builder.config)
        .with_context(|| format!("could not read the builder metadata of {}", builder.name))?;
    // Refuse an unusable builder before anything of the app's state changes.
    let (_, build_uid, build_gid) = locald_build::check_builder(&info).map_err(plan_error)?;
    if kind == RunnerKind::Native {
        for warning in locald_build::host::host_mismatches(&info) {
            tracing::warn!("{warning}");
        }
    }
    say(format!(
        "Builder {} ({}, lifecycle {})",
        builder.name,
        builder.manifest_digest.short(),
        info.lifecycle_version
            .as_deref()
            .unwrap_or("of unknown version")
    ));

    // 2. The run image reference, and the plan (which refuses old lifecycles
    // before anything is copied).
    let run_image = match (&args.run_image, info.run_images.first()) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) => r.image.clone(),
        (None, None) => {
            return Err(UserError::with_hint(
                format!(
                    "the builder {} names no run image (no /cnb/run.toml or /cnb/stack.toml)",
                    builder.name
                ),
                "pass one with --run-image IMAGE",
            )
            .into())
        }
    };
    let run_ref = ImageReference::parse(&run_image)
        .with_context(|| format!("the run image name {run_image:?} is not a valid reference"))?;

    // 3. Per-project state, the app copy, the platform env.
    let project = {
        let (root, app) = (cache.root().to_path_buf(), app.clone());
        let notes = crate::progress::notes_only();
        tokio::task::spawn_blocking(move || {
            locald_build::project::Project::open_reporting(&root, &app, notes.as_ref())
        })
        .await
        .context("the project lock thread failed")??
    };
    let as_root = rustix::process::geteuid().is_root();
    // Run natively by root, the lifecycle drops to the build user, who must own
    // the build's directories; the sandbox maps us to that user instead, so there
    // they stay (or become again, after a native build) ours.
    let owner = match (kind, as_root) {
        (RunnerKind::Native, true) => Some((build_uid, build_gid)),
        (RunnerKind::Container, true) => Some((0, 0)),
        _ => None,
    };
    let dirs = project.prepare(args.clear_cache, owner)?;
    let host: HostDirs = dirs.clone().with_builder(pulled.tree.clone());
    let plan = plan_creator(
        &info,
        CreatorOptions {
            image: image_ref.to_string(),
            run_image: run_ref.to_string(),
            builder_env: builder
                .config
                .config()
                .as_ref()
                .and_then(|c| c.env().clone())
                .unwrap_or_default(),
            debug: verbose > 0,
            no_color: std::env::var_os(crate::env::NO_COLOR).is_some()
                || !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            skip_restore: args.clear_cache,
            host,
        },
    )
    .map_err(plan_error)?;
    let skip = vec![canonical_output(output.path())];
    let copied = {
        let (app, dest, platform) = (app.clone(), dirs.app.clone(), dirs.platform.clone());
        tokio::task::spawn_blocking(move || -> locald_core::Result<_> {
            let copied = locald_build::appcopy::copy_app_excluding(&app, &dest, owner, &skip)?;
            locald_build::project::write_platform_env(&platform, &env)?;
            Ok(copied)
        })
        .await
        .context("the app copy thread failed")??
    };
    tracing::debug!(?copied, "app copied");
    cancel.check()?;

    // 4. The run image, in the layout dir where the lifecycle looks for it.
    let run_spec = args
        .run_image_source
        .clone()
        .or_else(|| args.source.clone());
    let run_source = open_source(run_spec.as_deref(), &args.registry, true)?;
    let (plat, _) = platform(args.platform.as_deref())?;
    let plat = if args.platform.is_some() {
        plat
    } else {
        builder.platform.clone()
    };
    let placed_path = dirs
        .layout
        .join(locald_build::layout_out::layout_path_for(&run_ref));
    let offline = args.policy.policy == PullPolicy::Never && run_source.is_remote();
    // With --pull missing, a run image from a registry placed less than
    // --pull-interval ago is used as it is (as builders are); local sources are
    // re-read, they are cheap.
    let fresh = args.policy.policy == PullPolicy::Missing
        && run_source.is_remote()
        && std::fs::metadata(placed_path.join("index.json"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < args.policy.pull_interval);
    let placed = match locald_build::layout_out::placed_manifest(&placed_path) {
        // Offline (or recently checked), the run image placed by an earlier build
        // is the one to use.
        Some(digest) if offline || fresh => locald_build::layout_out::Placed {
            path: placed_path,
            manifest_digest: digest,
            reused: true,
        },
        None if offline => {
            return Err(UserError::with_hint(
                format!("--pull never: the run image {run_image} is not in this app's build state yet and would have to be fetched from {}", run_source.describe()),
                "build once with --pull missing, or give a local run image with --run-image-source",
            )
            .into())
        }
        _ => locald_build::layout_out::place_image_with(
            run_source.as_ref(),
            Some(run_image.as_str()),
            &plat,
            &dirs.layout,
            &run_ref,
            &locald_build::layout_out::PlaceOptions {
                explicit_platform: args.platform.is_some(),
                cancel: cancel.clone(),
                reporter: None,
            },
        )
        .await
        .with_context(|| format!("could not place the run image {run_image} from {}", run_source.describe()))
        .inspect(|placed| {
            // Checked now: the interval of --pull missing starts again.
            let _ = std::fs::File::options()
                .append(true)
                .open(placed.path.join("index.json"))
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        })?,
    };
    if let Some((uid, gid)) = owner {
        // The exporter, running as the build user, adds the app image beside it.
        locald_core::fsutil::chown_tree(&dirs.layout, uid, gid)
            .with_context(|| format!("cannot hand {} to the build user", dirs.layout.display()))?;
    }
    say(format!(
        "Run image {run_image} ({}{})",
        placed.manifest_digest.short(),
        if placed.reused {
            ", already in place"
        } else {
            ""
        }
    ));
    cancel.check()?;

    // 5. The lifecycle (it rewrites the image's index.json when it exports).
    let image_layout = dirs
        .layout
        .join(locald_build::layout_out::layout_path_for(&image_ref));
    let image_index = image_layout.join("index.json");
    let index_before = written_at(&image_index);
    let runner_name = runner.name();
    say(format!(
        "Building {image_ref} with the {runner_name} runner"
    ));
    let watcher = Arc::new(if args.json {
        LineWatcher::stdout_to_stderr()
    } else {
        LineWatcher::new()
    });
    let status = {
        let plan = plan.clone();
        let watcher = watcher.clone();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || runner.run(&plan, &watcher, &cancel))
            .await
            .context("the runner thread failed")?
            .map_err(runner_error)?
    };
    if let Some(sentence) = explain_exit(status, &plan, &info, &watcher) {
        if status == RunStatus::Interrupted {
            return Err(anyhow::Error::new(locald_core::Error::Cancelled).context(sentence));
        }
        let mut error = UserError::with_hint(sentence, hint_for(status, &info));
        if let Some(code) = status.exit_code() {
            error = error.with_exit_code(code);
        }
        return Err(error.into());
    }

    // 6. The output.
    if written_at(&image_index) == index_before {
        return Err(anyhow::anyhow!(
            "the lifecycle succeeded but wrote no image at {} (where Platform API {} puts -layout exports)",
            image_layout.display(),
            plan.env_var("CNB_PLATFORM_API").unwrap_or("?")
        ));
    }
    let written = {
        let (output, name) = (output.clone(), image_ref.to_string());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            if let Some(parent) = output.path().parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let written = match &output {
                Output::Layout(dir) => {
                    locald_build::layout_out::write_oci_layout(&image_layout, dir, &name)?
                }
                Output::Archive(file) => {
                    locald_build::layout_out::write_docker_archive(&image_layout, file, &name)?
                }
            };
            // The lifecycle keeps the previous image's blobs beside the new one
            // (to reuse its layers); what neither needs any more goes.
            let freed = locald_build::layout_out::prune_layout_blobs(&image_layout)?;
            tracing::debug!(freed, "pruned the app's build layout");
            Ok(written)
        })
        .await
        .context("the output thread failed")??
    };
    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "image": image_ref.to_string(),
            "digest": written.manifest_digest.to_string(),
            "config_digest": written.config_digest.to_string(),
            "output": output.describe(),
            "runner": runner_name,
            "builder": builder.name,
            "builder_digest": builder.manifest_digest.to_string(),
            "run_image": run_ref.to_string(),
            "project": project.dir(),
            "seconds": elapsed,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if !quiet {
        eprintln!(
            "Built {image_ref} ({}) in {elapsed:.1}s -> {}",
            written.manifest_digest,
            output.describe()
        );
        let short = locald_build::layout_out::familiar_name(&image_ref);
        match &output {
            Output::Layout(dir) => {
                // The layout names the image by its full reference.
                eprintln!(
                    "Run it with podman:  podman run --rm oci:{}:{image_ref}",
                    dir.display()
                );
                eprintln!(
                    "or with Docker:      skopeo copy oci:{}:{image_ref} docker-daemon:{short} && docker run --rm {short}",
                    dir.display()
                );
            }
            Output::Archive(file) => {
                eprintln!(
                    "Run it with Docker:  docker load -i {} && docker run --rm {short}",
                    file.display()
                );
            }
        }
    }
    println!("{}", written.manifest_digest);
    Ok(())
}

/// When `path` last changed, as the kernel keeps it: inode and status-change
/// time (which, unlike the modification time, no tool can set back: a copy that
/// preserves timestamps, such as `mv` across filesystems, still shows).
fn written_at(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
        .ok()
}

/// `path` with its parent's symlinks resolved where it exists, as the app
/// copy's walk sees paths.
fn canonical_output(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

fn hint_for(status: RunStatus, info: &BuilderInfo) -> String {
    match status {
        RunStatus::Exited(20) | RunStatus::Exited(21) => {
            if info.order.is_empty() {
                "`locald builder inspect` lists the builder's buildpacks".to_owned()
            } else {
                "`locald builder inspect` lists the builder's buildpacks and order; another builder may suit this app".to_owned()
            }
        }
        RunStatus::Exited(51) => {
            "fix the problem the buildpack reported above, then build again".to_owned()
        }
        RunStatus::Exited(11) | RunStatus::Exited(12) => {
            "use a builder with a newer lifecycle".to_owned()
        }
        _ => "run with -v for the lifecycle's debug output".to_owned(),
    }
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

    #[test]
    fn default_names() {
        assert_eq!(
            default_image_name(Path::new("/src/My App")),
            "my-app:latest"
        );
        assert_eq!(
            default_image_name(Path::new("/src/node.js-app")),
            "node.js-app:latest"
        );
        assert_eq!(default_image_name(Path::new("/")), "app:latest");
        assert_eq!(default_image_name(Path::new("/x/__")), "app:latest");
        assert_eq!(default_image_name(Path::new("/x/a..b.-c")), "a.b.c:latest");
        for dir in ["x..y", "x.-y", "--x--", "Ünï cödé", "a__b"] {
            let name = default_image_name(&Path::new("/src").join(dir));
            assert!(ImageReference::parse(&name).is_ok(), "{dir} -> {name}");
        }
    }
}

//! The build: an app directory in, an image out, with a CNB builder's lifecycle.
//!
//! [`build`] is the one entry point. The caller opens the sources, picks the
//! runner and names the output; the flow does the rest, in this order, so that
//! nothing of the app's state changes before the builder is known to be usable:
//!
//! 1. the builder, pulled into the cache (`/cnb` for a runner on the host, the
//!    whole root filesystem for a sandbox) and held there until the build ends;
//!    its metadata read and checked;
//! 2. the run image's name, and the plan (which refuses old lifecycles);
//! 3. the app's build state: the app copied, the platform env written;
//! 4. the run image placed where the lifecycle looks for it;
//! 5. the lifecycle, run by the runner; a failure explained in a sentence;
//! 6. the image the lifecycle exported, copied into the output destination.
//!
//! What the user sees goes through [`BuildEvents`]; the lifecycle's own output
//! is streamed by the runner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locald_cache::{Cache, PullOptions, PullPolicy, Pulled};
use locald_core::cancel::Cancel;
use locald_core::destination::{copy_image, CopyOptions, ImageDestination, Written};
use locald_core::digest::Digest;
use locald_core::lifecycle::{
    HostDirs, LifecycleRunner, LineWatcher, Network, PhaseTime, RunStatus, RunnerError, Volume,
};
use locald_core::progress::Reporter;
use locald_core::source::{BoxFuture, ImageSource};
use locald_core::{Error, ImageReference, Platform};
use locald_extract::PathFilter;

use crate::builder::{read_builder, BuilderInfo};
use crate::placement::{layout_path_for, place_image_with, placed_manifest, PlaceOptions, Placed};
use crate::plan::{check_builder, plan_creator, CreatorOptions, PlanError};
use crate::project::{write_platform_env, Project};
use crate::sparse::{self, write_sparse, FilledLayout};
use crate::{appcopy, explain_exit};
use locald_source_oci_layout::{Existing, OciLayoutDestination};
use std::collections::HashSet;

/// Why a build did not produce an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Something the user can fix: a sentence, what to do, and for a failed
    /// lifecycle its exit code.
    #[error("{message}")]
    Refused {
        /// What is wrong.
        message: String,
        /// What to do about it.
        hint: String,
        /// The lifecycle's exit code, when it failed.
        exit_code: Option<u8>,
    },
    /// A step failed; `context` says which.
    #[error("{context}")]
    Failed {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
    /// The image was built but could not be written to the output; it is kept
    /// in the app's build state, to copy from.
    #[error(transparent)]
    Output(Box<OutputFailed>),
    /// The runner could not run the lifecycle.
    #[error(transparent)]
    Runner(Box<RunnerError>),
    /// Anything else.
    #[error(transparent)]
    Core(Box<Error>),
}

/// A built image that could not be written to the output.
#[derive(Debug, thiserror::Error)]
#[error("could not write the image to {output}")]
pub struct OutputFailed {
    /// The output, described.
    pub output: String,
    /// The image's name.
    pub image: ImageReference,
    /// The OCI layout in the app's build state that holds the built image.
    pub layout: PathBuf,
    /// The cause.
    #[source]
    pub source: Error,
}

impl From<Error> for BuildError {
    fn from(e: Error) -> Self {
        BuildError::Core(Box::new(e))
    }
}

impl BuildError {
    fn refused(message: impl Into<String>, hint: impl Into<String>) -> Self {
        BuildError::Refused {
            message: message.into(),
            hint: hint.into(),
            exit_code: None,
        }
    }
}

/// `Result` with a [`BuildError`].
pub type Result<T> = std::result::Result<T, BuildError>;

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BuildError::Failed {
            context: what(),
            source: Box::new(source),
        })
    }
}

/// Opens the output destination for the image's names, once the image is built
/// (so that no lock or temporary of the output exists while the lifecycle runs).
pub type OpenOutput = Box<
    dyn FnOnce(Vec<String>) -> BoxFuture<'static, locald_core::Result<Box<dyn ImageDestination>>>
        + Send,
>;

/// Where the image goes.
pub struct Output {
    /// For messages and the result, e.g. `oci-layout:/src/app.oci`.
    pub describe: String,
    /// The local path it writes, kept out of the app copy when it lies inside
    /// the app directory.
    pub path: Option<PathBuf>,
    /// Opens it.
    pub open: OpenOutput,
}

/// An image to read: from which source, and which one there.
pub struct ImageInput {
    /// The source.
    pub source: Box<dyn ImageSource>,
    /// The image's name in it (`None`: the only one).
    pub image: Option<String>,
}

/// What to build, and how.
pub struct BuildOptions {
    /// The app's source directory.
    pub app: PathBuf,
    /// The image's name (checked with [`image_name`]).
    pub image: ImageReference,
    /// The builder.
    pub builder: ImageInput,
    /// The run image, when not the builder's (from its run.toml or stack.toml).
    pub run_image: Option<String>,
    /// Where the run image is read from.
    pub run_image_source: Box<dyn ImageSource>,
    /// The platform to build for; `None`: this machine's for the builder, the
    /// builder's for the run image.
    pub platform: Option<Platform>,
    /// When cached references are checked again.
    pub pull: PullPolicy,
    /// With [`PullPolicy::Missing`], how long a check stays fresh.
    pub pull_interval: Duration,
    /// Environment variables for the buildpacks.
    pub env: Vec<(String, String)>,
    /// Start without the buildpacks' cache from earlier builds.
    pub clear_cache: bool,
    /// Where the lifecycle runs.
    pub runner: Box<dyn LifecycleRunner>,
    /// Where the image goes.
    pub output: Output,
    /// The lifecycle's debug output.
    pub debug: bool,
    /// Colour in the lifecycle's output.
    pub color: bool,
    /// Send the lifecycle's standard output to standard error (when standard
    /// output carries data, `--json`).
    pub lifecycle_stdout_to_stderr: bool,
    /// Set to stop.
    pub cancel: Cancel,
    /// More names for the image (`--tag`).
    pub tags: Vec<ImageReference>,
    /// The image's default process (`--default-process`).
    pub default_process: Option<String>,
    /// The image's created time, Unix seconds (`--creation-time`); `None`
    /// keeps the lifecycle's reproducible default.
    pub creation_time: Option<i64>,
    /// The buildpacks' cache in this directory instead of the app's state.
    pub cache_dir: Option<PathBuf>,
    /// Where the build's SBOM files (`<layers>/sbom`) are copied afterwards.
    pub sbom_output_dir: Option<PathBuf>,
    /// The lifecycle's network.
    pub network: Network,
    /// Host directories mounted for the buildpacks.
    pub volumes: Vec<Volume>,
    /// Exactly these buildpacks, in one group, in this order (`--buildpack`).
    pub buildpacks: Vec<BuildpackRef>,
    /// The project descriptor whose include/exclude lists pick the app's files
    /// (`None`: the app's own `project.toml`).
    pub descriptor: Option<PathBuf>,
}

/// A buildpack asked for with `--buildpack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildpackRef {
    /// One the builder carries: `ID[@VERSION]`.
    Builder {
        /// Its id.
        id: String,
        /// Its version (`None`: the builder's, when it has one).
        version: Option<String>,
    },
    /// A directory holding a `buildpack.toml`.
    Local(PathBuf),
}

impl BuildpackRef {
    /// `./dir`, `/dir` or an existing directory is a local buildpack; anything
    /// else `ID[@VERSION]`.
    pub fn parse(spec: &str) -> BuildpackRef {
        let path = Path::new(spec);
        if spec.starts_with('.') || spec.starts_with('/') || path.is_dir() {
            return BuildpackRef::Local(path.to_path_buf());
        }
        match spec.split_once('@') {
            Some((id, v)) => BuildpackRef::Builder {
                id: id.to_owned(),
                version: Some(v.to_owned()),
            },
            None => BuildpackRef::Builder {
                id: spec.to_owned(),
                version: None,
            },
        }
    }
}

/// What the user is told along the way.
pub trait BuildEvents: Send + Sync {
    /// The builder is ready.
    fn builder(&self, name: &str, digest: &Digest, lifecycle_version: Option<&str>) {
        let _ = (name, digest, lifecycle_version);
    }
    /// The run image is in place (`reused`: it was already).
    fn run_image(&self, name: &str, digest: &Digest, reused: bool) {
        let _ = (name, digest, reused);
    }
    /// The lifecycle starts.
    fn building(&self, image: &ImageReference, runner: &str) {
        let _ = (image, runner);
    }
    /// Progress of downloads (the builder's layers).
    fn pull_reporter(&self) -> Arc<dyn Reporter> {
        Arc::new(locald_core::progress::Silent)
    }
    /// Progress of the output's writes (a push's blobs).
    fn push_reporter(&self) -> Arc<dyn Reporter> {
        Arc::new(locald_core::progress::Silent)
    }
    /// Notes while waiting (for another process's lock).
    fn notes(&self) -> Arc<dyn Reporter> {
        Arc::new(locald_core::progress::Silent)
    }
}

/// Where the time went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Pulling (or finding) the builder, reading its metadata.
    pub builder: f64,
    /// The app's build state and the app copy.
    pub app_copy: f64,
    /// Placing the run image.
    pub run_image: f64,
    /// The lifecycle.
    pub lifecycle: f64,
    /// The lifecycle's time by the phases it announced (`===> ANALYZING`, ...), in
    /// order; the first, `starting`, is its time before the first heading.
    pub lifecycle_phases: Vec<PhaseTime>,
    /// Copying the image to the output.
    pub output: f64,
    /// All of it.
    pub total: f64,
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image's name.
    pub image: ImageReference,
    /// What the output got.
    pub written: Written,
    /// The output, described.
    pub output: String,
    /// The runner's name.
    pub runner: &'static str,
    /// The builder's name and manifest digest.
    pub builder: (String, Digest),
    /// The run image.
    pub run_image: ImageReference,
    /// The app's build state directory.
    pub project: PathBuf,
    /// Where the time went, in seconds.
    pub timings: Timings,
}

/// The image's name: `name` when given, else the app directory's name made a
/// valid repository, `:latest`. Refused when invalid or a digest.
pub fn image_name(app: &Path, name: Option<&str>) -> Result<ImageReference> {
    let (name, what) = match name {
        Some(n) => (n.to_owned(), "--image".to_owned()),
        None => (
            default_image_name(app),
            format!("the name made from the app directory {}", app.display()),
        ),
    };
    let reference = ImageReference::parse(&name).map_err(|e| {
        BuildError::refused(
            format!("{what} {name:?} is not a valid image name: {e}"),
            "name the image with --image, e.g. --image myapp:1.0",
        )
    })?;
    if reference.digest().is_some() {
        return Err(BuildError::refused(
            format!("{what} {name:?} has a digest: the image being built has none yet"),
            "name it by tag, e.g. --image myapp:1.0",
        ));
    }
    Ok(reference)
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

/// The app directory, checked and with symlinks resolved.
pub fn app_dir(app: &Path) -> Result<PathBuf> {
    if !app.is_dir() {
        return Err(BuildError::refused(
            format!(
                "the app directory {} does not exist or is not a directory",
                app.display()
            ),
            "pass the directory holding the app's source, e.g. `locald build ./app`",
        ));
    }
    std::fs::canonicalize(app)
        .map_err(Error::io("resolve the app directory", app))
        .map_err(BuildError::from)
}

/// Pulls `input` into the cache (with `options`), saying what could not be pulled.
pub async fn pull(
    cache: &Cache,
    input: &ImageInput,
    options: &PullOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<Pulled> {
    let source = input.source.as_ref();
    cache
        .pull(source, input.image.as_deref(), options, reporter)
        .await
        .context(|| match &input.image {
            Some(i) => format!("could not pull {i} from {}", source.describe()),
            None => format!("could not pull the image in {}", source.describe()),
        })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> locald_core::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Join(e.to_string()))?
        .map_err(BuildError::from)
}

/// Builds the app: see the [module documentation](self).
pub async fn build(
    cache: &Cache,
    options: BuildOptions,
    events: &dyn BuildEvents,
) -> Result<Built> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let BuildOptions {
        app,
        image: image_ref,
        builder: builder_input,
        run_image,
        run_image_source,
        platform,
        pull: policy,
        pull_interval,
        env,
        clear_cache,
        runner,
        output,
        debug,
        color,
        lifecycle_stdout_to_stderr,
        cancel,
        tags,
        default_process,
        creation_time,
        cache_dir,
        sbom_output_dir,
        network,
        volumes,
        buildpacks,
        descriptor,
    } = options;
    let on_host = runner.on_host();
    // What the runner cannot do is refused before anything is fetched.
    if on_host && network != Network::Host {
        return Err(BuildError::refused(
            format!(
                "--network none needs a sandbox: the {} runner runs the lifecycle on the host, in the host's network",
                runner.name()
            ),
            "use --runner container",
        ));
    }
    if on_host && !volumes.is_empty() {
        return Err(BuildError::refused(
            format!(
                "--volume needs a sandbox: the {} runner runs the lifecycle on the host, which sees the host's files as they are",
                runner.name()
            ),
            "use --runner container",
        ));
    }
    for volume in &volumes {
        volume.check().map_err(|message| {
            BuildError::refused(
                message,
                "mount it somewhere else, e.g. --volume ./data:/data",
            )
        })?;
    }

    // 1. The builder: /cnb on the host, the whole root for a sandbox.
    let filter = if on_host {
        PathFilter::new(&["/cnb"]).map_err(|e| Error::source(e.to_string()))?
    } else {
        PathFilter::default()
    };
    let pull_options = PullOptions {
        filter,
        policy,
        check_interval: pull_interval,
        platform: platform.clone().unwrap_or_else(Platform::host),
        explicit_platform: platform.is_some(),
        cancel: cancel.clone(),
        keep_layers: false,
    };
    // The build reads the tree until the lifecycle ends: hold it so that prune, rm
    // and builder updates keep it. A prune between the pull and the hold may have
    // removed it: then pull again (once; it is rare).
    let mut attempt = 0;
    let (pulled, _held) = loop {
        attempt += 1;
        let pulled = pull(cache, &builder_input, &pull_options, events.pull_reporter()).await?;
        let held = {
            let (cache, digest) = (cache.clone(), pulled.image.manifest_digest.clone());
            blocking(move || cache.hold_image(&digest)).await?
        };
        if pulled.tree.is_dir() || attempt > 1 {
            break (pulled, held);
        }
    };
    let builder = &pulled.image;
    if !pulled.tree.join("cnb/lifecycle").is_dir() {
        return Err(BuildError::refused(
            format!(
                "{} is not a CNB builder image: it has no /cnb/lifecycle",
                builder.name
            ),
            "builders are images made by `pack builder create`, e.g. heroku/builder:22",
        ));
    }
    let info = read_builder(&pulled.tree, &builder.config)
        .context(|| format!("could not read the builder metadata of {}", builder.name))?;
    // Refuse an unusable builder before anything of the app's state changes.
    let (_, build_uid, build_gid) = check_builder(&info).map_err(plan_error)?;
    if on_host {
        for warning in crate::host::host_mismatches(&info) {
            tracing::warn!("{warning}");
        }
    }
    events.builder(
        &builder.name,
        &builder.manifest_digest,
        info.lifecycle_version.as_deref(),
    );
    timings.builder = started.elapsed().as_secs_f64();

    // 2. The run image reference, and the plan (which refuses old lifecycles
    // before anything is copied).
    let step = Instant::now();
    let run_image = match (run_image, info.run_images.first()) {
        (Some(r), _) => r,
        (None, Some(r)) => r.image.clone(),
        (None, None) => {
            return Err(BuildError::refused(
                format!(
                    "the builder {} names no run image (no /cnb/run.toml or /cnb/stack.toml)",
                    builder.name
                ),
                "pass one with --run-image IMAGE",
            ))
        }
    };
    let run_ref = ImageReference::parse(&run_image).map_err(|e| {
        BuildError::refused(
            format!("the run image name {run_image:?} is not a valid reference: {e}"),
            "pass a valid one with --run-image IMAGE",
        )
    })?;

    // 3. Per-project state, the app copy, the platform env.
    let project = {
        let (root, app, notes) = (cache.root().to_path_buf(), app.clone(), events.notes());
        blocking(move || Project::open_reporting(&root, &app, notes.as_ref())).await?
    };
    let as_root = rustix::process::geteuid().is_root();
    // Run on the host by root, the lifecycle drops to the build user, who must
    // own the build's directories; the sandbox maps us to that user instead, so
    // there they stay (or become again, after a native build) ours.
    let owner = match (on_host, as_root) {
        (true, true) => Some((build_uid, build_gid)),
        (false, true) => Some((0, 0)),
        _ => None,
    };
    let dirs = project.prepare_with_cache(clear_cache, owner, cache_dir.as_deref())?;
    let host: HostDirs = dirs.clone().with_builder(pulled.tree.clone());
    let group = if buildpacks.is_empty() {
        None
    } else {
        let tree = pulled.tree.clone();
        Some(write_group(
            &buildpacks,
            &info,
            &tree,
            &dirs.platform,
            on_host,
        )?)
    };
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
            debug,
            no_color: !color,
            skip_restore: clear_cache,
            host,
            process_type: default_process,
            source_date_epoch: creation_time,
            order: group.as_ref().map(|_| PathBuf::from(GROUP_ORDER)),
            buildpacks: group.as_ref().map(|_| PathBuf::from(GROUP_BUILDPACKS)),
            network,
            volumes,
        },
    )
    .map_err(plan_error)?;
    let skip: Vec<PathBuf> = output.path.iter().map(|p| canonical_output(p)).collect();
    let copied = {
        let (app, dest, platform_dir) = (app.clone(), dirs.app.clone(), dirs.platform.clone());
        blocking(move || {
            let copied = appcopy::copy_app_with(&app, &dest, owner, &skip, descriptor.as_deref())?;
            write_platform_env(&platform_dir, &env)?;
            if let Some((uid, gid)) = owner {
                locald_core::fsutil::chown_tree(&platform_dir, uid, gid)
                    .map_err(Error::io("hand to the build user", &platform_dir))?;
            }
            Ok(copied)
        })
        .await?
    };
    tracing::debug!(?copied, "app copied");
    cancel.check()?;
    timings.app_copy = step.elapsed().as_secs_f64();

    // 4. The run image: whole in the app's images, and sparse in the layout
    // dir, where the lifecycle reads it (see `crate::sparse`).
    let step = Instant::now();
    let run_platform = platform.clone().unwrap_or_else(|| builder.platform.clone());
    let placed_path = dirs.images.join(layout_path_for(&run_ref));
    let offline = policy == PullPolicy::Never && run_image_source.is_remote();
    // With --pull missing, a run image from a registry placed less than
    // --pull-interval ago is used as it is (as builders are); local sources are
    // re-read, they are cheap.
    let fresh = policy == PullPolicy::Missing
        && run_image_source.is_remote()
        && std::fs::metadata(placed_path.join("index.json"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < pull_interval);
    let placed = match placed_manifest(&placed_path) {
        // Offline (or recently checked), the run image placed by an earlier build
        // is the one to use.
        Some(digest) if offline || fresh => Placed {
            path: placed_path,
            manifest_digest: digest,
            reused: true,
        },
        None if offline => {
            return Err(BuildError::refused(
                format!(
                    "--pull never: the run image {run_image} is not (whole) in this app's build state and would have to be fetched from {}",
                    run_image_source.describe()
                ),
                "build once with --pull missing, or give a local run image with --run-image-source",
            ))
        }
        _ => {
            let placed = place_image_with(
                run_image_source.as_ref(),
                Some(run_image.as_str()),
                &run_platform,
                &dirs.images,
                &run_ref,
                &PlaceOptions {
                    explicit_platform: platform.is_some(),
                    cancel: cancel.clone(),
                    reporter: None,
                },
            )
            .await
            .context(|| {
                format!(
                    "could not place the run image {run_image} from {}",
                    run_image_source.describe()
                )
            })?;
            // Checked now: the interval of --pull missing starts again.
            let _ = std::fs::File::options()
                .append(true)
                .open(placed.path.join("index.json"))
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            placed
        }
    };
    let run_whole = placed.path.clone();
    {
        let image = {
            let dir = run_whole.clone();
            blocking(move || locald_source_oci_layout::read_single_image(&dir)).await?
        };
        let view = dirs.layout.join(layout_path_for(&run_ref));
        write_sparse(
            &run_whole,
            &image,
            &view,
            &run_ref.to_string(),
            HashSet::new(),
        )
        .await?;
    }
    if let Some((uid, gid)) = owner {
        // The exporter, running as the build user, adds the app image beside it.
        locald_core::fsutil::chown_tree(&dirs.layout, uid, gid)
            .map_err(Error::io("hand to the build user", &dirs.layout))?;
    }
    events.run_image(&run_image, &placed.manifest_digest, placed.reused);
    cancel.check()?;
    timings.run_image = step.elapsed().as_secs_f64();

    // 5. The lifecycle (it rewrites the image's index.json when it exports).
    let step = Instant::now();
    let image_layout = dirs.layout.join(layout_path_for(&image_ref));
    let kept = dirs.images.join(layout_path_for(&image_ref));
    if !sparse::previous_is_fillable(&image_layout, &kept) {
        tracing::info!(
            "the previous image of {image_ref} is no longer kept whole in {}: building without it",
            dirs.images.display()
        );
        locald_core::fsutil::remove_path(&image_layout)?;
    }
    let image_index = image_layout.join("index.json");
    let index_before = written_at(&image_index);
    let runner_name = runner.name();
    events.building(&image_ref, runner_name);
    let watcher = Arc::new(if lifecycle_stdout_to_stderr {
        LineWatcher::stdout_to_stderr()
    } else {
        LineWatcher::new()
    });
    let status = {
        let (plan, watcher, cancel) = (plan.clone(), watcher.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || runner.run(&plan, &watcher, &cancel))
            .await
            .map_err(|e| Error::Join(e.to_string()))?
            .map_err(runner_error)?
    };
    // Run on the host, buildpacks could write into the builder tree: it is
    // walked (beside the output's copy) so that the next build never uses a
    // changed one.
    let walked = on_host.then(|| {
        let (cache, tree) = (cache.clone(), pulled.tree.clone());
        tokio::task::spawn_blocking(move || (cache.walk_after_use(&tree), tree))
    });
    let outcome: Result<Written> = async {
        if let Some(sentence) = explain_exit(status, &plan, &info, &watcher) {
            if status == RunStatus::Interrupted {
                return Err(BuildError::Failed {
                    context: sentence,
                    source: Box::new(Error::Cancelled),
                });
            }
            return Err(BuildError::Refused {
                message: sentence,
                hint: hint_for(status, &info),
                exit_code: status.exit_code(),
            });
        }
        if written_at(&image_index) == index_before {
            return Err(BuildError::from(Error::source(format!(
                "the lifecycle succeeded but wrote no image at {} (where Platform API {} puts -layout exports)",
                image_layout.display(),
                plan.env_var("CNB_PLATFORM_API").unwrap_or("?")
            ))));
        }
        let ended = Instant::now();
        timings.lifecycle = ended.duration_since(step).as_secs_f64();
        timings.lifecycle_phases = watcher.phases(step, ended);
        if let Some(out) = &sbom_output_dir {
            copy_sbom(&dirs.layers.join("sbom"), out)?;
        }

        // 6. The output. The lifecycle exported a sparse image (what it reused of
        // the run image and the previous image it did not write): it is kept whole
        // in the app's images, filled from there, and copied to the output from
        // that whole copy. Then the exported layout becomes the sparse previous
        // image of the next build.
        let step = Instant::now();
        let exported = {
            let dir = image_layout.clone();
            blocking(move || locald_source_oci_layout::read_single_image(&dir)).await?
        };
        {
            let filled = FilledLayout::open(&image_layout, &[&run_whole, &kept])?;
            let destination =
                OciLayoutDestination::open(&kept, vec![image_ref.to_string()], Existing::Replace)
                    .await?;
            copy_image(
                &filled,
                &exported,
                &destination,
                &CopyOptions {
                    cancel: cancel.clone(),
                    ..CopyOptions::default()
                },
            )
            .await
            .inspect_err(|_| {
                // What the lifecycle wrote does not hold together (a blob
                // changed or gone): the next build starts without it.
                let _ = locald_core::fsutil::remove_path(&image_layout);
            })
            .context(|| {
                format!(
                    "could not keep the image the lifecycle exported at {} (removed: the next build starts without a previous image)",
                    image_layout.display()
                )
            })?;
        }
        if let Some(parent) = output.path.as_deref().and_then(Path::parent) {
            std::fs::create_dir_all(parent).map_err(Error::io("create directory", parent))?;
        }
        let written = async {
            let source = locald_source_oci_layout::OciLayout::open(&kept)?;
            let mut names = vec![image_ref.to_string()];
            names.extend(tags.iter().map(ToString::to_string));
            let destination = (output.open)(names).await?;
            copy_image(
                &source,
                &exported,
                destination.as_ref(),
                &CopyOptions {
                    cancel: cancel.clone(),
                    reporter: events.push_reporter(),
                    ..CopyOptions::default()
                },
            )
            .await
        }
        .await
        .map_err(|source| {
            // A blob of the whole images kept in the app's state that does not
            // match its digest (changed on disk) is removed, so that the next
            // build fetches and places it again instead of failing the same way.
            if let Some(digest) = damaged_blob(&source) {
                let removed: Vec<PathBuf> = [&kept, &run_whole]
                    .iter()
                    .map(|d| d.join(digest.blob_path()))
                    .filter(|p| std::fs::remove_file(p).is_ok())
                    .collect();
                if !removed.is_empty() {
                    return BuildError::refused(
                        format!(
                            "could not write the image to {}: {}; the app's kept copy of {digest} was damaged and is removed",
                            output.describe,
                            locald_core::error::chain(&source)
                        ),
                        "build again: the next build fetches it again",
                    );
                }
            }
            BuildError::Output(Box::new(OutputFailed {
                output: output.describe.clone(),
                image: image_ref.clone(),
                layout: kept.clone(),
                source,
            }))
        })?;
        // The next build's previous image: sparse, but for its SBOM layer (the
        // analyzer restores the launch layers' SBOM files from it).
        // The image is built and written: a failure here costs the next build
        // its speed (it reads the lifecycle's whole export), not this one.
        let keep: HashSet<Digest> = sparse::sbom_layer(&exported).into_iter().collect();
        let name = image_ref.to_string();
        if let Err(e) = write_sparse(&kept, &exported, &image_layout, &name, keep).await {
            tracing::warn!(
                "could not make {} sparse for the next build: {}",
                image_layout.display(),
                locald_core::error::chain(&e)
            );
        }
        timings.output = step.elapsed().as_secs_f64();
        Ok(written)
    }
    .await;
    if let Some(walk) = walked {
        match walk.await.map_err(|e| Error::Join(e.to_string()))? {
            (Ok(true), _) => {}
            (Ok(false), tree) => tracing::warn!(
                "the build changed the cached builder tree {}: it is extracted again before the next build uses it",
                tree.display()
            ),
            (Err(e), tree) => tracing::warn!(
                "could not check the cached builder tree {} after the build: {}",
                tree.display(),
                locald_core::error::chain(&e)
            ),
        }
    }
    let written = outcome?;
    timings.total = started.elapsed().as_secs_f64();

    Ok(Built {
        image: image_ref,
        written,
        output: output.describe,
        runner: runner_name,
        builder: (builder.name.clone(), builder.manifest_digest.clone()),
        run_image: run_ref,
        project: project.dir().to_path_buf(),
        timings,
    })
}

/// The blob a copy failed on because its bytes do not match its digest or size.
fn damaged_blob(e: &Error) -> Option<&Digest> {
    match e {
        Error::LayerCopy { digest, source, .. }
            if matches!(
                **source,
                Error::DigestMismatch { .. } | Error::SizeMismatch { .. }
            ) =>
        {
            Some(digest)
        }
        // Destinations that check blobs as they write them out (a docker
        // archive's tar) report the mismatch alone.
        Error::DigestMismatch { expected, .. } => Some(expected),
        _ => None,
    }
}

/// The group file `--buildpack` writes, relative to the platform directory.
const GROUP_ORDER: &str = "locald/order.toml";
/// The buildpacks directory `--buildpack` makes, relative to the platform
/// directory.
const GROUP_BUILDPACKS: &str = "locald/buildpacks";

/// Writes the order of `--buildpack` (one group, exactly these, in this order)
/// and a buildpacks directory holding them under the platform directory: the
/// builder's as links into its `/cnb/buildpacks` (host paths for a runner on
/// the host, sandbox paths otherwise), local ones copied. Returns the group.
fn write_group(
    refs: &[BuildpackRef],
    info: &BuilderInfo,
    tree: &Path,
    platform: &Path,
    on_host: bool,
) -> Result<Vec<(String, String)>> {
    let dir = platform.join(GROUP_BUILDPACKS);
    std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
    let has = || {
        let mut all: Vec<String> = info
            .buildpacks
            .iter()
            .map(|b| format!("{}@{}", b.id, b.version))
            .collect();
        all.sort();
        if all.is_empty() {
            "none".to_owned()
        } else {
            all.join(", ")
        }
    };
    let mut group = Vec::new();
    for r in refs {
        let (id, version) = match r {
            BuildpackRef::Builder { id, version } => {
                let found: Vec<&crate::builder::BuildpackInfo> = info
                    .buildpacks
                    .iter()
                    .filter(|b| b.id == *id && version.as_ref().is_none_or(|v| *v == b.version))
                    .collect();
                let Some(bp) = found.last() else {
                    return Err(BuildError::refused(
                        format!(
                            "--buildpack {}: the builder has no such buildpack (it has: {})",
                            match version {
                                Some(v) => format!("{id}@{v}"),
                                None => id.clone(),
                            },
                            has()
                        ),
                        "name one the builder has, or a directory holding a buildpack.toml (./my-buildpack)",
                    ));
                };
                let rel = Path::new("cnb/buildpacks")
                    .join(escape_id(&bp.id))
                    .join(&bp.version);
                let target = if on_host {
                    tree.join(&rel)
                } else {
                    Path::new("/").join(&rel)
                };
                let link_dir = dir.join(escape_id(&bp.id));
                std::fs::create_dir_all(&link_dir)
                    .map_err(Error::io("create directory", &link_dir))?;
                let link = link_dir.join(&bp.version);
                std::os::unix::fs::symlink(&target, &link).map_err(Error::io("link", &link))?;
                (bp.id.clone(), bp.version.clone())
            }
            BuildpackRef::Local(path) => {
                let descriptor = path.join("buildpack.toml");
                let text = std::fs::read_to_string(&descriptor).map_err(|e| {
                    BuildError::refused(
                        format!(
                            "--buildpack {}: no readable buildpack.toml there ({e})",
                            path.display()
                        ),
                        "a local buildpack is a directory holding buildpack.toml, bin/detect and bin/build",
                    )
                })?;
                let (id, version) = local_buildpack_id(&text).ok_or_else(|| {
                    BuildError::refused(
                        format!(
                            "--buildpack {}: its buildpack.toml has no [buildpack] id and version",
                            path.display()
                        ),
                        "a buildpack.toml starts with [buildpack] id = \"me/example\" version = \"1.0.0\"",
                    )
                })?;
                let dest = dir.join(escape_id(&id)).join(&version);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(Error::io("create directory", parent))?;
                }
                copy_tree(path, &dest)?;
                (id, version)
            }
        };
        group.push((id, version));
    }
    let mut order = String::from("[[order]]\n");
    for (id, version) in &group {
        order.push_str(&format!(
            "\n  [[order.group]]\n    id = {}\n    version = {}\n",
            toml_string(id),
            toml_string(version)
        ));
    }
    let path = platform.join(GROUP_ORDER);
    std::fs::write(&path, order).map_err(Error::io("write", &path))?;
    Ok(group)
}

/// A buildpack id as a directory name: `/` becomes `_` (as pack and the
/// lifecycle lay buildpacks out).
fn escape_id(id: &str) -> String {
    id.replace('/', "_")
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `[buildpack] id` and `version` of a buildpack.toml.
fn local_buildpack_id(text: &str) -> Option<(String, String)> {
    let doc: toml::Table = text.parse().ok()?;
    let bp = doc.get("buildpack")?.as_table()?;
    Some((
        bp.get("id")?.as_str()?.to_owned(),
        bp.get("version")?.as_str()?.to_owned(),
    ))
}

/// Copies the tree at `from` to the new `to` (files, directories with their
/// modes, symlinks as they are).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(from).map_err(Error::io("inspect", from))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = std::fs::read_link(from).map_err(Error::io("read link", from))?;
        std::os::unix::fs::symlink(&target, to).map_err(Error::io("link", to))?;
    } else if kind.is_dir() {
        std::fs::create_dir(to).map_err(Error::io("create directory", to))?;
        for entry in std::fs::read_dir(from).map_err(Error::io("read directory", from))? {
            let entry = entry.map_err(Error::io("read directory", from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, meta.permissions())
            .map_err(Error::io("set the mode of", to))?;
    } else if kind.is_file() {
        std::fs::copy(from, to).map_err(Error::io("copy", from))?;
    }
    Ok(())
}

/// Copies the build's SBOM files to `out` (made when missing).
fn copy_sbom(sbom: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(Error::io("create directory", out))?;
    if !sbom.is_dir() {
        tracing::warn!("the build wrote no SBOM files (no buildpack made any)");
        return Ok(());
    }
    for entry in std::fs::read_dir(sbom).map_err(Error::io("read directory", sbom))? {
        let entry = entry.map_err(Error::io("read directory", sbom))?;
        let dest = out.join(entry.file_name());
        if std::fs::symlink_metadata(&dest).is_ok() {
            locald_core::fsutil::remove_path(&dest)?;
        }
        copy_tree(&entry.path(), &dest)?;
    }
    Ok(())
}

/// A builder no plan can be made for, in a sentence with a hint.
fn plan_error(e: PlanError) -> BuildError {
    let hint = match e {
        PlanError::NoBuildUser => {
            "builders made by `pack builder create` declare them; is this a CNB builder?"
        }
        PlanError::PlatformApi(_) => {
            "`locald builder inspect` shows the builder's lifecycle and APIs"
        }
    };
    BuildError::refused(e.to_string(), hint)
}

fn runner_error(e: RunnerError) -> BuildError {
    match e {
        RunnerError::Unavailable { message, hint } => BuildError::refused(message, hint),
        other => BuildError::Runner(Box::new(other)),
    }
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

    #[test]
    fn image_names_refused() {
        let app = Path::new("/src/app");
        assert_eq!(
            image_name(app, None).unwrap().to_string(),
            "docker.io/library/app:latest"
        );
        for bad in [
            "Bad Name",
            "app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            match image_name(app, Some(bad)) {
                Err(BuildError::Refused { message, .. }) => {
                    assert!(message.contains(bad), "{message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}

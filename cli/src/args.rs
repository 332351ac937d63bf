//! Command-line arguments (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Cloud Native Buildpacks builds without a Docker daemon, and the fastest safe way
/// to get files out of container images.
#[derive(Debug, Parser)]
#[command(name = "locald", version, propagate_version = true)]
#[command(
    after_help = "Environment:\n  LOCALD_LOG     log filter (e.g. debug, locald_cache=trace); overrides -v\n  NO_COLOR       no colour and no progress bars\n  XDG_DATA_HOME  the cache lives in $XDG_DATA_HOME/locald (default ~/.local/share/locald)\n  LOCALD_PLUGIN_PATH  more plugin directories (colon-separated; see `locald plugin --help`)"
)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// No progress bars or summaries; errors only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an app into an OCI image with a CNB builder, no Docker daemon needed.
    ///
    /// Gets the builder (cached: see `locald builder`), copies the app (honouring
    /// .gitignore and project.toml excludes; never builds in place), places the run
    /// image, runs the builder's lifecycle (`creator`) in a rootless sandbox or on
    /// the host, and writes the image where --output says.
    #[command(after_help = BUILD_HELP)]
    Build(Box<BuildArgs>),
    /// Run an image's process rootless, with no daemon: the image from any
    /// source, through the cache, with a throwaway writable layer.
    #[command(after_help = RUN_HELP)]
    Run(Box<RunArgs>),
    /// Work with images: extract files, inspect metadata.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage the builder cache: pull builders once, reuse them offline.
    #[command(subcommand)]
    Builder(BuilderCommand),
    /// Image-source plugins: shared libraries that add `--source` schemes.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

const BUILD_HELP: &str = "\
Examples:
  locald build ./app
  locald build ./app --builder heroku/builder:24 --image myapp:1.0
  locald build ./app --source oci-layout:./builder-layout --pull never
  locald build ./app --source docker-archive:./builder.tar --output docker-archive:app.tar
  locald build ./app --env NODE_ENV=production --env API_KEY
  locald build ./app --image ghcr.io/me/app:1.0 --publish --tag ghcr.io/me/app:latest
  locald build ./app --env-file ci.env --buildpack heroku/nodejs --buildpack ./my-buildpack
  locald build ./app --network none --volume ./certs:/certs --cache-dir .cache/cnb
  locald build ./app --default-process worker --creation-time now --sbom-output-dir ./sbom

Runners:
  container  (default where user namespaces work) the lifecycle runs in a rootless
             sandbox whose root is the builder image's own file system, as the
             builder's user (CNB_USER_ID); nothing else of the host is visible but
             the network. No root, no daemon, no setuid helper.
  native     the lifecycle runs on the host, with the host's tools and libraries:
             only for hosts that resemble the builder's stack.

State kept between builds of the same app (the buildpacks' cache, the previous
image) lives under $XDG_DATA_HOME/locald/projects; --clear-cache starts over.

Exit status: 0 built; the lifecycle's own code when it failed (20/21 no buildpack
group passed detection, 51 a buildpack failed, 62 export failed, ...; the reason is
printed as a sentence); 1 when locald itself failed; 130 interrupted.";

/// `locald build`
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The app's source directory.
    #[arg(default_value = ".", value_name = "APP_DIR")]
    pub app: PathBuf,
    /// An environment variable for the buildpacks, KEY=VALUE, or KEY to pass this
    /// environment's value (repeatable; wins over --env-file and the descriptor).
    #[arg(
        long = "env",
        short = 'e',
        value_name = "KEY=VALUE",
        help_heading = "Input"
    )]
    pub env: Vec<String>,
    /// A file of KEY=VALUE lines (KEY alone: this environment's value; # comments),
    /// e.g. --env-file ci.env (repeatable, later files win).
    #[arg(long = "env-file", value_name = "FILE", help_heading = "Input")]
    pub env_files: Vec<PathBuf>,
    /// The project descriptor (default: the app's project.toml): its build env,
    /// its buildpack group and its include/exclude lists, e.g. --descriptor ci/project.toml.
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub descriptor: Option<PathBuf>,
    /// The builder image.
    #[arg(
        long,
        default_value = "heroku/builder:22",
        value_name = "IMAGE",
        help_heading = "Builder"
    )]
    pub builder: String,
    /// Where to read the builder (and, unless --run-image-source says otherwise,
    /// the run image) from: `registry:` (default), `oci-layout:DIR`,
    /// `docker-archive:FILE` or a plugin's scheme.
    #[arg(long, value_name = "SPEC", help_heading = "Builder")]
    pub source: Option<String>,
    /// Use exactly these buildpacks, in one group, in this order (repeatable):
    /// ID[@VERSION] of one the builder has, or a directory with a buildpack.toml,
    /// e.g. --buildpack heroku/nodejs --buildpack ./my-buildpack.
    #[arg(
        long = "buildpack",
        short = 'b',
        value_name = "REF",
        help_heading = "Builder"
    )]
    pub buildpacks: Vec<String>,
    /// The run image (default: the builder's, from its run.toml or stack.toml).
    #[arg(long, value_name = "IMAGE", help_heading = "Builder")]
    pub run_image: Option<String>,
    /// Where to read the run image from (default: the builder's --source).
    #[arg(long, value_name = "SPEC", help_heading = "Builder")]
    pub run_image_source: Option<String>,
    /// The platform to build for, OS/ARCH[/VARIANT]. Default: this machine's.
    #[arg(long, value_name = "PLATFORM", help_heading = "Builder")]
    pub platform: Option<String>,
    #[command(flatten)]
    pub policy: PullPolicyArgs,
    /// The output image's name (default: the app directory's name, `:latest`).
    #[arg(long, value_name = "NAME", help_heading = "Output")]
    pub image: Option<String>,
    /// More names for the same image (repeatable), e.g. --tag myapp:latest: in the
    /// output layout or archive, or pushed with --publish.
    #[arg(long = "tag", short = 't', value_name = "REF", help_heading = "Output")]
    pub tags: Vec<String>,
    /// Where to write the image: `oci-layout:DIR` (default `oci-layout:./<name>.oci`),
    /// `docker-archive:FILE` (a `docker load`-able tarball) or `registry:REF` (pushed).
    #[arg(long, value_name = "SPEC", help_heading = "Output")]
    pub output: Option<String>,
    /// Push the image to the registry --image names (which must name one, e.g.
    /// ghcr.io/me/app:1.0). locald pushes after the lifecycle exported, with the
    /// credentials of --creds or your docker/podman login: they never enter the
    /// build. The app's build state keeps the image for the next build.
    #[arg(long, conflicts_with = "output", help_heading = "Output")]
    pub publish: bool,
    /// The image's default process, e.g. --default-process worker.
    #[arg(long, value_name = "TYPE", help_heading = "Output")]
    pub default_process: Option<String>,
    /// The image's creation time: `now` or Unix seconds, e.g. --creation-time now
    /// (default: 1980-01-01, so that builds are reproducible).
    #[arg(long, value_name = "now|SECONDS", help_heading = "Output")]
    pub creation_time: Option<String>,
    /// Copy the build's SBOM files (the lifecycle's <layers>/sbom) here, e.g.
    /// --sbom-output-dir ./sbom.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub sbom_output_dir: Option<PathBuf>,
    /// Print a JSON summary on stdout (image, digest, output, runner, timings).
    #[arg(long, help_heading = "Output")]
    pub json: bool,
    /// Where to run the lifecycle (default: container where user namespaces
    /// work, else native, with a warning).
    #[arg(long, value_enum, value_name = "RUNNER", help_heading = "Runtime")]
    pub runner: Option<RunnerKind>,
    /// The buildpacks' network: host (default) or none (container runner only: a
    /// network of its own with only loopback, for offline builds), e.g. --network none.
    #[arg(
        long,
        value_enum,
        default_value = "host",
        value_name = "NETWORK",
        help_heading = "Runtime"
    )]
    pub network: NetworkKind,
    /// Mount a host directory for the buildpacks, HOST:TARGET[:ro|rw], read-only
    /// unless :rw (container runner only; repeatable), e.g. --volume ./certs:/certs.
    #[arg(
        long = "volume",
        value_name = "HOST:TARGET[:ro|rw]",
        help_heading = "Runtime"
    )]
    pub volumes: Vec<String>,
    /// Start without the buildpacks' cache from earlier builds of this app (or
    /// empty --cache-dir).
    #[arg(long, help_heading = "Runtime")]
    pub clear_cache: bool,
    /// Keep the buildpacks' cache in this directory instead of the app's build
    /// state (what CI caches between jobs), e.g. --cache-dir .cache/cnb.
    #[arg(long, value_name = "DIR", help_heading = "Runtime")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

const RUN_HELP: &str = "\
Examples:
  locald run ./app.oci                                   # the layout's only image
  locald run busybox:1.36 -- echo hello
  locald run ghcr.io/me/app:1.0 --process worker -e LOG=debug --network none
  locald run app:1 --source oci-layout:./images --volume ./data:/data:rw --user 1000

The image's whole root filesystem is extracted into the cache once and reused:
a warm start touches no network and extracts nothing. The root is that tree,
read-only, under a writable layer thrown away when the process exits (as with
`docker run --rm`). Fresh /proc, a minimal /dev, tmpfs /tmp, the host's
resolv.conf and localhost in /etc/hosts; nothing else of the host unless
--volume names it. The image config is honoured: User (names through the
image's /etc/passwd and /etc/group), Env (then --env-file and -e), WorkingDir,
Entrypoint and Cmd (-- ARGS replaces Cmd, --entrypoint replaces Entrypoint).
The process's stdio are locald's; SIGINT, SIGTERM and SIGHUP are forwarded;
its exit code (128 + signal) is locald's.";

/// `locald run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image: a reference, the name of an image in --source, or the path of
    /// an OCI layout holding one image (`locald run ./app.oci`).
    pub image: Option<String>,
    /// Where to read it from: `registry:` (default), `oci-layout:DIR`,
    /// `docker-archive:FILE` or a plugin's scheme.
    #[arg(long, value_name = "SPEC")]
    pub source: Option<String>,
    /// The platform to pick from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// For a CNB image: run /cnb/process/TYPE (the types are in `locald image inspect`).
    #[arg(long, value_name = "TYPE")]
    pub process: Option<String>,
    /// An environment variable, KEY=VALUE or KEY (this environment's value); over
    /// the image's Env and --env-file (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A file of KEY=VALUE lines (repeatable).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Mount a host directory, HOST:TARGET[:ro|rw] (read-only unless :rw; repeatable).
    #[arg(long = "volume", value_name = "HOST:TARGET[:ro|rw]")]
    pub volumes: Vec<String>,
    /// host (default: a server in the image listens on the host's ports) or none
    /// (loopback only).
    #[arg(long, value_enum, default_value = "host", value_name = "NETWORK")]
    pub network: NetworkKind,
    /// The working directory (default: the image's WorkingDir, else /).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user, UID[:GID] or NAME[:GROUP] of the image (default: the image's User).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Replace the image's Entrypoint (and its Cmd, unless -- ARGS are given).
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    #[command(flatten)]
    pub policy: PullPolicyArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Arguments: they replace the image's Cmd.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// The buildpacks' network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkKind {
    /// The host's.
    Host,
    /// Loopback only.
    None,
}

/// Where the lifecycle runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunnerKind {
    /// A rootless namespace sandbox with the builder's root file system.
    Container,
    /// Directly on the host.
    Native,
}

/// `locald plugin ...`
#[derive(Debug, Subcommand)]
#[command(
    after_help = "Plugins are *.so files in $XDG_DATA_HOME/locald/plugins (default\n~/.local/share/locald/plugins) and in the directories of LOCALD_PLUGIN_PATH\n(colon-separated). Each adds the schemes it serves to --source, e.g.\n--source oci-archive:./image.tar. Plugins are opened only when --source names\na scheme no built-in source serves, and by `plugin ls`.\n\nA plugin is trusted, as ssh trusts a key file, only if it is a regular file (not\na symlink) owned by you or root and not writable by group or others, in a\ndirectory that, with every directory above it, is owned by you or root and not\nwritable by group or others (unless sticky, as /tmp). Others are refused\nwithout being opened; libraries that are not plugins, were built for another\nABI version or fail to start are ignored with a warning."
)]
pub enum PluginCommand {
    /// List plugins: name, version, schemes, path; and the ones refused, with why.
    Ls(PluginLsArgs),
}

/// `locald plugin ls`
#[derive(Debug, Args)]
pub struct PluginLsArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `locald builder ...`
#[derive(Debug, Subcommand)]
#[command(
    after_help = "The cache is $XDG_DATA_HOME/locald (default ~/.local/share/locald): blobs by digest,\nextracted trees by (manifest digest, paths), and which digest each reference had when\nit was last checked. Several locald processes may use it at once."
)]
pub enum BuilderCommand {
    /// Pull a builder into the cache and print where its files are.
    ///
    /// Extracts /cnb (or with --full the whole root filesystem, which the sandbox
    /// runner needs). Only what the cache lacks is fetched: pulling an unchanged
    /// builder again transfers no layer, an updated one only its new layers.
    #[command(
        after_help = "Examples:\n  locald builder pull heroku/builder:22\n  locald builder pull heroku/builder:22 --full --pull always\n  locald builder pull --source oci-layout:./builder --pull never\n  ls \"$(locald builder pull -q heroku/builder:22)/cnb/buildpacks\"\n\nThe tree's directory is printed on stdout (the summary goes to stderr)."
    )]
    Pull(BuilderPullArgs),
    /// List cached builders: reference, digest, size on disk, last use.
    Ls(BuilderLsArgs),
    /// Show a builder's lifecycle, Platform/Buildpack APIs, buildpacks, order,
    /// run image, stack and build user (pulling its /cnb first if needed).
    Inspect(BuilderInspectArgs),
    /// Remove builders from the cache, with everything only they use.
    Rm(BuilderRmArgs),
    /// Free space: remove what no cached builder uses (and leftovers of
    /// interrupted pulls); with --older-than or --all, builders too.
    Prune(BuilderPruneArgs),
    /// Check every cached blob and tree byte by byte (each tree against a fresh
    /// extraction of its image from the kept layers, or fetched from its source again);
    /// damaged entries are removed so the next pull fetches them again. (Each use
    /// checks a tree's seal, and walks its file list, types, sizes and permissions
    /// when that was not done in the last 10 minutes or --pull always is given.)
    Verify(BuilderVerifyArgs),
}

/// When to ask the source whether a cached reference changed.
#[derive(Debug, Args, Clone)]
pub struct PullPolicyArgs {
    /// always: check the reference every time (one HEAD request); missing: use the
    /// cache, re-checking a tag at most once per --pull-interval (local sources:
    /// every time); never: use only the cache, no network at all.
    #[arg(long = "pull", value_name = "POLICY", default_value = "missing", env = crate::env::LOCALD_PULL)]
    pub policy: locald_cache::PullPolicy,
    /// With --pull missing: how long a tag's check stays fresh (e.g. 30m, 12h, 0s).
    #[arg(long, value_name = "DURATION", default_value = "1h", env = crate::env::LOCALD_PULL_INTERVAL, value_parser = humantime::parse_duration)]
    pub pull_interval: std::time::Duration,
}

/// `locald builder pull`
#[derive(Debug, Args)]
pub struct BuilderPullArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub policy: PullPolicyArgs,
    /// Extract the whole root filesystem, not only /cnb.
    #[arg(long)]
    pub full: bool,
    /// Keep the image's compressed layers in the cache too (about as many bytes
    /// again as the tree): a tree changed on disk is then repaired, and `builder
    /// verify` checks it, without asking the source again (offline, air-gapped).
    /// A tree already cached without them is extracted again, keeping them.
    #[arg(long)]
    pub keep_layers: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `locald builder ls`
#[derive(Debug, Args)]
pub struct BuilderLsArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `locald builder inspect`
#[derive(Debug, Args)]
pub struct BuilderInspectArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub policy: PullPolicyArgs,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `locald builder rm`
#[derive(Debug, Args)]
pub struct BuilderRmArgs {
    /// The builders, as `locald builder ls` shows them or as pulled.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `locald builder prune`
#[derive(Debug, Args)]
pub struct BuilderPruneArgs {
    /// Remove everything, builders included.
    #[arg(long, conflicts_with = "older_than")]
    pub all: bool,
    /// Also remove builders not used for this long (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `locald builder verify`
#[derive(Debug, Args)]
pub struct BuilderVerifyArgs {
    /// Only these builders (default: all).
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `locald image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Extract an image's files (all of them, or the paths given with --path) into a
    /// directory, applying layers, whiteouts and links exactly as a container
    /// runtime would, and never writing outside the directory.
    #[command(
        after_help = "Examples:\n  locald image extract builder --source oci-layout:./layout --path /cnb --to ./out\n      (writes ./out/cnb/...)\n  locald image extract --source oci-layout:./layout --to ./rootfs\n      (the layout's only image, whole root filesystem)"
    )]
    Extract(ExtractArgs),
    /// Show an image's manifest digest, platform, layers and config.
    #[command(
        after_help = "Examples:\n  locald image inspect builder --source oci-layout:./layout\n  locald image inspect --source oci-layout:./layout --json | jq .layers"
    )]
    Inspect(InspectArgs),
    /// Copy an image from any source into any destination: a registry
    /// (`registry:REF`, pushed), an OCI layout (`oci-layout:DIR`) or a docker
    /// archive (`docker-archive:FILE`).
    ///
    /// Blobs the destination has are skipped (a registry answers HEAD, and mounts
    /// blobs from another repository of the same registry); every byte copied is
    /// checked against its digest; the manifest goes last, so an interrupted copy
    /// names nothing. The manifest digest is kept (docker archives read by the
    /// docker-archive source get an OCI manifest made from `manifest.json`).
    #[command(
        after_help = "Examples:\n  locald image copy --source oci-layout:./app.oci --to registry:ghcr.io/me/app:1.0\n  locald image copy ghcr.io/me/app:1.0 --to registry:ghcr.io/me/app:stable\n  locald image copy busybox:1.36 --all-platforms --to oci-layout:./busybox\n  locald image copy app:latest --source oci-layout:./app.oci --to docker-archive:app.tar\n\nThe copied image's digest is printed on stdout."
    )]
    Copy(CopyArgs),
}

/// `locald image copy`
#[derive(Debug, Args)]
pub struct CopyArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where to copy it: `registry:REF`, `oci-layout:DIR` or `docker-archive:FILE`.
    #[arg(long, value_name = "SPEC")]
    pub to: String,
    /// The image's name in an oci-layout or docker-archive destination (default:
    /// IMAGE, or the name the source holds it under, normalised).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Copy every platform of a multi-platform image (the index whole) instead
    /// of one.
    #[arg(long, conflicts_with = "platform")]
    pub all_platforms: bool,
    /// Print JSON on stdout (source, destination, digest, size).
    #[arg(long)]
    pub json: bool,
}

/// Where the image comes from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The image: a reference (`heroku/builder:22`) or, in a layout, the name it is
    /// stored under (`org.opencontainers.image.ref.name`). May be omitted when the
    /// source holds exactly one image.
    pub image: Option<String>,
    /// Where to read the image from: `registry:` (the default: the registry the
    /// reference names, e.g. docker.io), `oci-layout:DIR` (an OCI image layout
    /// directory) or `docker-archive:FILE` (a `docker save` / `podman save` /
    /// skopeo tarball, read in place; `docker-archive:-` reads standard input,
    /// which is first copied to a temporary file), or a scheme a plugin adds
    /// (`locald plugin ls`).
    #[arg(long, value_name = "SPEC")]
    pub source: Option<String>,
    /// The platform to select from a multi-platform image, OS/ARCH[/VARIANT].
    /// Default: this machine's.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How to talk to registries.
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// Registry credentials, USER:PASSWORD; they win over docker/podman config
    /// files, which are used otherwise ($DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json incl. credential helpers, then $REGISTRY_AUTH_FILE or
    /// $XDG_RUNTIME_DIR/containers/auth.json).
    #[arg(long, value_name = "USER:PASSWORD", env = crate::env::LOCALD_REGISTRY_CREDS, hide_env_values = true)]
    pub creds: Option<String>,
    /// Speak plain HTTP to this registry host[:port] (repeatable). Loopback
    /// registries (localhost, 127.0.0.1) always are.
    #[arg(long = "insecure-registry", value_name = "HOST", env = crate::env::LOCALD_INSECURE_REGISTRIES, value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// Trust this extra CA certificate (PEM; repeatable). SSL_CERT_FILE is also read.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,
}

/// `locald image extract`
#[derive(Debug, Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only extract this image path and what is below it (repeatable). `--path /cnb`
    /// writes DIR/cnb/...
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// The directory to write to. It must not exist or be empty; it appears only
    /// once the whole image is extracted and verified.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `locald image inspect`
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

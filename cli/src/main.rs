//! `locald`: the command-line front end. Wires sources to the core, draws progress,
//! sets up logging, and turns errors into one sentence, the cause chain, a hint and
//! an exit code.

mod args;
mod commands;
mod env;
mod human;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use args::{BuilderCommand, Cli, Command, ImageCommand, PluginCommand};

/// Exit codes, in one place.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// Everything worked.
    Success = 0,
    /// The operation failed: bad input, a corrupt or missing image, a refused archive.
    Failure = 1,
    // 2 is clap's: a usage error.
    /// Stopped by SIGINT (128 + 2, as shells report it).
    Interrupted = 130,
}

/// An error the user can act on, with a hint line.
#[derive(Debug)]
pub struct UserError {
    message: String,
    hint: String,
    /// The exit code, when not [`Exit::Failure`]: the lifecycle's own, passed
    /// through.
    code: Option<u8>,
}

impl UserError {
    /// An error with a hint.
    pub fn with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        UserError {
            message: message.into(),
            hint: hint.into(),
            code: None,
        }
    }

    /// The same error, exiting with `code` (the lifecycle's own exit code).
    pub fn with_exit_code(mut self, code: u8) -> Self {
        self.code = Some(code);
        self
    }
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

fn init_logging(verbose: u8, quiet: bool) {
    // Our own crates only, unless -vv: dependencies' logs (TLS, HTTP) are noise to
    // a user and their failures reach our errors anyway.
    let ours = |level: &str| {
        [
            "locald",
            "locald_core",
            "locald_extract",
            "locald_cache",
            "locald_build",
            "locald_source_registry",
            "locald_source_oci_layout",
            "locald_source_plugins",
        ]
        .iter()
        .map(|c| format!("{c}={level}"))
        .collect::<Vec<_>>()
        .join(",")
    };
    let default = match (quiet, verbose) {
        (true, _) => ours("error"),
        (false, 0) => ours("warn"),
        (false, 1) => ours("debug"),
        (false, _) => "trace".to_owned(),
    };
    let filter = std::env::var(env::LOCALD_LOG).unwrap_or_else(|_| default.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 1)
        .without_time()
        .with_ansi(
            std::env::var_os(env::NO_COLOR).is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .init();
}

fn main() -> ExitCode {
    // The sandbox's own stages re-execute this binary: they must run before
    // anything starts a thread.
    locald_runner_container::sandbox_main_if_requested();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    let cancel = locald_core::cancel::Cancel::new();
    // `locald run` hands its exit code on, and forwards signals itself.
    let cli = match cli.command {
        Command::Run(args) => {
            let result = runtime.block_on(commands::run::run(*args, cli.quiet));
            runtime.shutdown_background();
            return match result {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    if let Some(hint) = hint(&e) {
                        eprintln!("hint: {hint}");
                    }
                    ExitCode::from(Exit::Failure as u8)
                }
            };
        }
        command => Cli { command, ..cli },
    };
    let result = runtime.block_on(run(cli, cancel));
    // Do not wait for blocking workers still unwinding after an interrupt.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::from(Exit::Success as u8),
        Err(e) if is_cancelled(&e) => {
            eprintln!("error: interrupted; nothing was published");
            ExitCode::from(Exit::Interrupted as u8)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            let passed_through = e
                .chain()
                .find_map(|c| c.downcast_ref::<UserError>().and_then(|u| u.code));
            ExitCode::from(passed_through.unwrap_or(Exit::Failure as u8))
        }
    }
}

/// Runs the command; on Ctrl-C asks the work to stop and gives it a moment to
/// clean up its temporary directories, then gives up on it.
async fn run(cli: Cli, cancel: locald_core::cancel::Cancel) -> anyhow::Result<()> {
    // A build forwards Ctrl-C to the lifecycle and waits for it to stop (killing
    // it after a grace period); everything else only has temporaries to remove.
    let grace = match cli.command {
        Command::Build(_) => {
            locald_core::lifecycle::supervise::GRACE + std::time::Duration::from_secs(5)
        }
        _ => std::time::Duration::from_secs(3),
    };
    let work = async {
        match cli.command {
            Command::Build(a) => {
                commands::build::build(*a, cli.verbose, cli.quiet, cancel.clone()).await
            }
            Command::Image(ImageCommand::Extract(a)) => {
                commands::image::extract(a, cli.quiet, cancel.clone()).await
            }
            Command::Image(ImageCommand::Inspect(a)) => commands::image::inspect(a).await,
            Command::Image(ImageCommand::Copy(a)) => {
                commands::image::copy(a, cli.quiet, cancel.clone()).await
            }
            Command::Plugin(PluginCommand::Ls(a)) => commands::plugin::ls(a),
            Command::Run(_) => unreachable!("handled in main"),
            Command::Builder(c) => {
                use commands::builder;
                match c {
                    BuilderCommand::Pull(a) => builder::pull(a, cli.quiet, cancel.clone()).await,
                    BuilderCommand::Ls(a) => builder::ls(a).await,
                    BuilderCommand::Inspect(a) => {
                        builder::inspect(a, cli.quiet, cancel.clone()).await
                    }
                    BuilderCommand::Rm(a) => builder::rm(a).await,
                    BuilderCommand::Prune(a) => builder::prune(a).await,
                    BuilderCommand::Verify(a) => builder::verify(a).await,
                }
            }
        }
    };
    tokio::pin!(work);
    // SIGTERM (CI cancelling a job) and SIGHUP (a closed terminal) stop the work as
    // Ctrl-C does, so a build never leaves its lifecycle running behind us.
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        // No signal handling here: just do the work.
        return work.await;
    };
    tokio::select! {
        r = &mut work => return r,
        r = tokio::signal::ctrl_c() => {
            if r.is_err() {
                return work.await;
            }
        }
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    cancel.cancel();
    match tokio::time::timeout(grace, &mut work).await {
        Ok(r) => r,
        Err(_) => Err(locald_core::Error::Cancelled.into()),
    }
}

fn is_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<locald_core::Error>(),
            Some(locald_core::Error::Cancelled)
        )
    })
}

/// A line telling the user what to do, where we know one.
fn hint(e: &anyhow::Error) -> Option<String> {
    // A `UserError` given as context (over the error it explains) is not seen
    // by `chain()`'s downcasts.
    if let Some(u) = e.downcast_ref::<UserError>() {
        return Some(u.hint.clone());
    }
    for cause in e.chain() {
        if let Some(u) = cause.downcast_ref::<UserError>() {
            return Some(u.hint.clone());
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc_enospc()) {
                return Some(
                    "the disk is full: free some space, e.g. with `locald builder prune`"
                        .to_owned(),
                );
            }
        }
        // A layer's error is boxed inside `Error::Layer`; look through the box.
        let core = cause.downcast_ref::<locald_core::Error>().or_else(|| {
            cause
                .downcast_ref::<Box<locald_core::Error>>()
                .map(|b| &**b)
        });
        if let Some(core) = core {
            use locald_core::Error as E;
            let h = match core {
                E::Source(inner) => {
                    let h = inner
                        .downcast_ref::<locald_source_oci_layout::LayoutError>()
                        .and_then(layout_hint)
                        .or_else(|| {
                            inner
                                .downcast_ref::<locald_source_registry::RegistryError>()
                                .and_then(registry_hint)
                        });
                    match h {
                        Some(h) => h,
                        None => continue,
                    }
                }
                E::TargetNotEmpty(_) => "choose a new directory, or remove this one first",
                E::NoMatchingPlatform { .. } => {
                    "pick one of the available platforms with --platform"
                }
                E::PlatformMismatch { .. } => "omit --platform or pick the image's platform",
                E::DigestMismatch { .. } | E::SizeMismatch { .. } => {
                    "the image source is corrupt (or, for a plugin's scheme, the plugin is faulty); fetch or save the image again"
                }
                E::UnknownScheme { .. } => "use --source oci-layout:DIR",
                E::NoSourceForScheme { .. } => {
                    "`locald plugin ls` lists the plugins found and why any was refused; the built-in sources are registry:, oci-layout:DIR and docker-archive:FILE"
                }
                E::CacheUnusable { .. } => {
                    "the cache lives in $XDG_DATA_HOME/locald (default ~/.local/share/locald); point XDG_DATA_HOME at a writable directory"
                }
                E::UnknownCached(_) => "`locald builder ls` lists the cached builders",
                E::NotCached { .. } => {
                    "pull it first (`locald builder pull`), or use --pull missing to fetch what is missing"
                }
                _ => continue,
            };
            return Some(h.to_owned());
        }
    }
    None
}

fn registry_hint(e: &locald_source_registry::RegistryError) -> Option<&'static str> {
    use locald_source_registry::RegistryError as R;
    match e {
        R::AuthFailed { .. } => Some("log in with `docker login` (or podman login), or pass --creds USER:PASSWORD"),
        R::NotFound { .. } => Some("check the repository and tag (`skopeo list-tags docker://REPO` lists tags)"),
        R::Request { reason, .. } if reason.to_ascii_lowercase().contains("certificate") => {
            Some("if the registry uses a private CA, pass --ca-cert FILE (or set SSL_CERT_FILE)")
        }
        R::Request { .. } => Some(
            "check that the registry is reachable; plain-HTTP registries need --insecure-registry HOST",
        ),
        R::NeedImage => Some("name the image, e.g. heroku/builder:22"),
        _ => None,
    }
}

fn layout_hint(l: &locald_source_oci_layout::LayoutError) -> Option<&'static str> {
    use locald_source_oci_layout::LayoutError as L;
    match l {
        L::NoSuchImage { .. } | L::NeedName { .. } | L::Ambiguous { .. } => Some(
            "name the image exactly as the layout lists it (its org.opencontainers.image.ref.name)",
        ),
        L::NotALayout { .. } => Some(
            "--source oci-layout:DIR expects a directory holding oci-layout and index.json files",
        ),
        L::MissingBlob { .. } => Some("the layout is incomplete; copy or save the image again"),
        _ => None,
    }
}

/// `ENOSPC` (no space left on device) on Linux.
const fn libc_enospc() -> i32 {
    28
}

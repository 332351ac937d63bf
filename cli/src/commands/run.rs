//! `locald run`: an image's process in the rootless sandbox, with no daemon.

use std::path::Path;

use anyhow::Context;
use locald_cache::PullOptions;
use locald_core::cancel::Cancel;
use locald_core::lifecycle::Volume;
use locald_extract::PathFilter;
use locald_runner_container::{home_of, resolve_user, ContainerRunner, RunSpec};

use super::builder::{cache, open_builder_source};
use super::platform;
use crate::args::{NetworkKind, RunArgs};
use crate::UserError;

/// The process types of a CNB image, from its `io.buildpacks.build.metadata`
/// label (empty for other images).
pub fn process_types(config: &locald_core::oci_spec::image::ImageConfiguration) -> Vec<String> {
    let label = config
        .config()
        .as_ref()
        .and_then(|c| c.labels().as_ref())
        .and_then(|l| l.get("io.buildpacks.build.metadata").cloned());
    let Some(v) = label.and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok()) else {
        return Vec::new();
    };
    v["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str().map(str::to_owned))
        .collect()
}

/// `locald run`: returns the process's exit code.
pub async fn run(args: RunArgs, quiet: bool) -> anyhow::Result<i32> {
    // `locald run ./app.oci`: a layout path is its only image.
    let (image, source) = match (&args.image, &args.source) {
        (Some(i), None) if Path::new(i).join("oci-layout").is_file() => {
            (None, Some(format!("oci-layout:{i}")))
        }
        _ => (args.image.clone(), args.source.clone()),
    };
    if image.is_none() && source.is_none() {
        return Err(UserError::with_hint(
            "name the image to run",
            "e.g. `locald run busybox:1.36 -- echo hi` or `locald run ./app.oci`",
        )
        .into());
    }
    let volumes = args
        .volumes
        .iter()
        .map(|v| {
            Volume::parse(v).map_err(|e| UserError::with_hint(e, "e.g. --volume ./data:/data"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cache = cache()?;
    let src = open_builder_source(source.as_deref(), &args.registry, args.policy.policy)?;
    let (plat, explicit) = platform(args.platform.as_deref())?;
    let input = locald_build::ImageInput { source: src, image };
    let options = PullOptions {
        filter: PathFilter::default(),
        policy: args.policy.policy,
        check_interval: args.policy.pull_interval,
        platform: plat,
        explicit_platform: explicit,
        cancel: Cancel::new(),
        keep_layers: false,
    };
    let reporter = if quiet {
        crate::progress::reporter(true, 0)
    } else {
        crate::progress::notes_only()
    };
    let pulled = locald_build::flow::pull(&cache, &input, &options, reporter)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _held = {
        let (cache, digest) = (cache.clone(), pulled.image.manifest_digest.clone());
        tokio::task::spawn_blocking(move || cache.hold_image(&digest))
            .await
            .context("the cache lock thread failed")??
    };
    let image = &pulled.image;
    let cfg = image.config.config().clone().unwrap_or_default();

    // The command: Entrypoint + Cmd, as a runtime combines them.
    let (entrypoint, cmd): (Vec<String>, Vec<String>) = match (&args.process, &args.entrypoint) {
        (Some(_), Some(_)) => {
            return Err(UserError::with_hint(
                "--process and --entrypoint both say what to run",
                "use one",
            )
            .into())
        }
        (Some(t), None) => {
            let types = process_types(&image.config);
            if !types.iter().any(|x| x == t) {
                return Err(UserError::with_hint(
                    format!(
                        "{} has no process type {t:?} (it has: {})",
                        image.name,
                        if types.is_empty() {
                            "none: it is not a CNB image".to_owned()
                        } else {
                            types.join(", ")
                        }
                    ),
                    "`locald image inspect IMAGE` lists the process types",
                )
                .into());
            }
            (vec![format!("/cnb/process/{t}")], Vec::new())
        }
        (None, Some(e)) => (vec![e.clone()], Vec::new()),
        (None, None) => (
            cfg.entrypoint().clone().unwrap_or_default(),
            cfg.cmd().clone().unwrap_or_default(),
        ),
    };
    let cmd = if args.args.is_empty() {
        cmd
    } else {
        args.args.clone()
    };
    let mut argv = entrypoint;
    argv.extend(cmd);
    if argv.is_empty() {
        return Err(UserError::with_hint(
            format!(
                "{} has no entrypoint and no cmd: nothing to run",
                image.name
            ),
            "give the command after --, e.g. `locald run IMAGE -- /bin/sh -c 'echo hi'`",
        )
        .into());
    }
    let program = argv.remove(0);

    let user = args
        .user
        .clone()
        .or_else(|| cfg.user().clone())
        .unwrap_or_default();
    let (uid, gid) = resolve_user(&pulled.tree, &user)
        .map_err(|e| UserError::with_hint(e, "name a user of the image, or UID[:GID]"))?;
    let mut env: Vec<(String, String)> = cfg
        .env()
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push((
            "HOME".to_owned(),
            home_of(&pulled.tree, uid).unwrap_or_else(|| "/".to_owned()),
        ));
    }
    env.extend(super::read_env_files(&args.env_files)?);
    for e in &args.env {
        env.push(locald_build::project::parse_env_arg(e)?);
    }
    let cwd = args
        .workdir
        .clone()
        .or_else(|| cfg.working_dir().clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_owned());
    let spec = RunSpec {
        rootfs: pulled.tree.clone(),
        program,
        args: argv,
        env,
        cwd,
        uid,
        gid,
        network_none: args.network == NetworkKind::None,
        volumes,
        tty: std::io::IsTerminal::is_terminal(&std::io::stdin()),
    };
    let exe = super::sandbox_helper()?;
    let runner = ContainerRunner::new(exe);
    let mut running = runner.start_image(&spec).map_err(super::runner_error)?;
    let pid =
        rustix::process::Pid::from_raw(running.pid() as i32).context("the sandbox has no pid")?;
    // With a terminal: ours in raw mode, its keys relayed to the process's own
    // terminal and its output back (Ctrl-C becomes the process's SIGINT there).
    let relay = running.take_pty().map(Relay::start).transpose()?;
    let mut wait = tokio::task::spawn_blocking(move || running.wait());
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
    let mut winch = signal(SignalKind::window_change()).context("handling SIGWINCH")?;
    use rustix::process::Signal;
    loop {
        let sig = tokio::select! {
            done = &mut wait => {
                let code = done.context("the sandbox thread failed")?.map_err(super::runner_error);
                if let Some(relay) = relay {
                    relay.finish();
                }
                return code;
            }
            _ = int.recv() => Signal::INT,
            _ = term.recv() => Signal::TERM,
            _ = hup.recv() => Signal::HUP,
            _ = winch.recv() => {
                if let Some(r) = &relay {
                    r.resize();
                }
                continue;
            }
        };
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// The relay between our terminal and the process's pty.
struct Relay {
    master: std::sync::Arc<std::os::fd::OwnedFd>,
    saved: Option<rustix::termios::Termios>,
    output: std::thread::JoinHandle<()>,
}

impl Relay {
    fn start(master: std::os::fd::OwnedFd) -> anyhow::Result<Relay> {
        use std::io::{Read, Write};
        let saved = rustix::termios::tcgetattr(std::io::stdin()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                &raw,
            );
        }
        let master = std::sync::Arc::new(master);
        let input = std::fs::File::from(master.try_clone().context("sharing the pty")?);
        std::thread::spawn(move || {
            let mut input = input;
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut input);
        });
        let mut output = std::fs::File::from(master.try_clone().context("sharing the pty")?);
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut out = std::io::stdout();
            // Until the process's side is gone (EIO).
            while let Ok(n) = output.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        });
        Ok(Relay {
            master,
            saved,
            output,
        })
    }

    /// Our terminal's size, given to the process's.
    fn resize(&self) {
        if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdout()) {
            let _ = rustix::termios::tcsetwinsize(&*self.master, size);
        }
    }

    /// Waits for the process's last output and gives our terminal back.
    fn finish(self) {
        let _ = self.output.join();
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

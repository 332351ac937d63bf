//! `locald-runner-container`: runs the builder's CNB lifecycle inside a rootless
//! user + mount + pid + ipc + uts namespace sandbox whose root is the cached
//! builder root filesystem, mounted read-only.
//!
//! Rootless by construction: no setuid helper, no daemon. The runner re-executes
//! the `locald` binary as a small single-threaded helper ([`sandbox_main_if_requested`]
//! must be the first thing `main` does); the helper creates the namespaces, maps the
//! host user to the build user (`CNB_USER_ID`/`CNB_GROUP_ID`), builds the root and
//! runs the lifecycle as pid 2 under its own init (see `sandbox.rs` for the three
//! processes). The runner talks to it through a temporary directory: the
//! configuration in, a report of failures and signals out, so the lifecycle's own
//! exit codes pass through untouched.
//!
//! The root is a read-only overlayfs (a tmpfs skeleton of mount points over the
//! builder tree, no upper directory), or, where the kernel refuses overlayfs in a
//! user namespace, a read-only tmpfs of read-only bind mounts. Either way nothing is
//! ever created or changed in the cached tree.
//!
//! Started by root, the lifecycle does not run as host root: the build user is
//! mapped to an unprivileged host id (the first of root's subordinate ids, else
//! 2147000000, see `ids.rs`) and the writable directories are lent to it for the
//! run, then given back (which clears any setuid bit or file capability).
//!
//! The namespace system calls live in `sys.rs`, the only module allowed `unsafe`.

mod config;
mod ids;
mod probe;
mod rootfs;
mod run;
mod sandbox;
mod sys;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use locald_core::cancel::Cancel;
use locald_core::lifecycle::{
    supervise, Dir, LifecyclePlan, LifecycleRunner, LineWatcher, RunStatus, RunnerError,
};

pub use config::RootMode;
pub use probe::probe;
pub use run::{home_of, resolve_user, RunSpec, Running};

use config::{Bind, SandboxConfig};
use ids::Lent;
use sandbox::{Record, CONFIG_FILE, MARKER, REPORT_FILE, STAGE_DIR};

/// If this process was started as the sandbox helper (its first argument is the
/// hidden marker), run the sandbox and exit with its code; otherwise return.
///
/// Call it first thing in `main`, before any thread is started (the sandbox forks
/// and creates a user namespace, which needs a single-threaded process).
pub fn sandbox_main_if_requested() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(MARKER)) {
        return;
    }
    let rest: Vec<_> = args.collect();
    std::process::exit(sandbox::main(&rest));
}

/// Runs the lifecycle in a rootless namespace sandbox whose root is the builder's
/// root filesystem ([`locald_core::lifecycle::HostDirs::builder`] must be the full
/// tree, not only `/cnb`).
///
/// The sandbox is killed when the thread that called [`LifecycleRunner::run`]
/// exits (the kernel's parent-death signal follows the spawning thread), so `run`
/// must stay on its thread until it returns, as a blocking call does.
#[derive(Debug, Clone)]
pub struct ContainerRunner {
    helper_exe: PathBuf,
    root_mode: RootMode,
}

impl ContainerRunner {
    /// A runner that starts `helper_exe` (the `locald` binary, whose `main` calls
    /// [`sandbox_main_if_requested`]) as the sandbox helper.
    pub fn new(helper_exe: PathBuf) -> Self {
        Self {
            helper_exe,
            root_mode: RootMode::Auto,
        }
    }

    /// How to build the read-only root ([`RootMode::Auto`] unless told otherwise:
    /// overlayfs, else bind mounts).
    pub fn with_root_mode(mut self, root_mode: RootMode) -> Self {
        self.root_mode = root_mode;
        self
    }

    /// Check the plan against the builder tree and turn it into the helper's
    /// configuration.
    fn configure(&self, plan: &LifecyclePlan) -> Result<SandboxConfig, RunnerError> {
        let root = &plan.host.builder;
        if !root.is_dir() {
            return Err(RunnerError::Other(format!(
                "the builder root filesystem {} does not exist",
                root.display()
            )));
        }
        let program = Path::new("/").join(&plan.program);
        let full = "the container runner needs the builder's full root filesystem (`locald builder pull --full`)";
        if rootfs::resolve_in_root(root, &program).is_none_or(|p| !p.is_file()) {
            return Err(RunnerError::Other(format!(
                "the builder tree {} has no {}: {full}",
                root.display(),
                program.display()
            )));
        }
        if rootfs::resolve_in_root(root, Path::new("/bin/sh")).is_none_or(|p| !p.is_file()) {
            return Err(RunnerError::Other(format!(
                "the builder tree {} has no shell (/bin/sh), so it is not a root filesystem: {full}",
                root.display()
            )));
        }

        let mut binds = Vec::new();
        for dir in Dir::WRITABLE {
            let host = plan.host.get(dir);
            let what = match dir {
                Dir::App => "app directory",
                Dir::Layers => "layers directory",
                Dir::Platform => "platform directory",
                Dir::Cache => "cache directory",
                Dir::Layout => "layout directory",
                Dir::Builder => "builder",
            };
            if !host.is_dir() {
                return Err(RunnerError::Other(format!(
                    "the {what} {} does not exist",
                    host.display()
                )));
            }
            let host = std::fs::canonicalize(host).map_err(|source| RunnerError::Io {
                what: format!("resolving the {what} {}", host.display()),
                source,
            })?;
            binds.push(Bind {
                what: what.to_owned(),
                host,
                target: dir.sandbox_path().to_owned(),
                read_only: false,
            });
        }

        for volume in &plan.volumes {
            volume.check().map_err(RunnerError::Other)?;
            let host = std::fs::canonicalize(&volume.host).map_err(|source| RunnerError::Io {
                what: format!("resolving the volume {}", volume.host.display()),
                source,
            })?;
            binds.push(Bind {
                what: "volume".to_owned(),
                host,
                target: volume.target.clone(),
                read_only: volume.read_only,
            });
        }

        let passwd = rootfs::resolve_in_root(root, Path::new("/etc/passwd"))
            .and_then(|p| rootfs::read_small_file(&p));
        let passwd_home = passwd
            .as_deref()
            .and_then(|text| config::home_from_passwd(text, plan.uid));
        let home = config::choose_home(plan.env_var("HOME"), passwd_home.as_deref());
        let home_mount = config::home_mount(&home, &binds);
        let rootfs = std::fs::canonicalize(root).map_err(|source| RunnerError::Io {
            what: format!("resolving the builder root {}", root.display()),
            source,
        })?;

        Ok(SandboxConfig {
            parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
            rootfs,
            root_mode: self.root_mode,
            binds,
            home_mount,
            uid: plan.uid,
            gid: plan.gid,
            host_ids: if rustix::process::geteuid().is_root() {
                ids::for_root()
            } else {
                None
            },
            program: program.to_string_lossy().into_owned(),
            args: plan.render_args(|dir, rel| Path::new(dir.sandbox_path()).join(rel)),
            env: config::sandbox_env(&plan.env, &home),
            cwd: Dir::App.sandbox_path().to_owned(),
            hostname: sandbox::HOSTNAME.to_owned(),
            network_none: plan.network == locald_core::lifecycle::Network::None,
            writable_root: false,
            controlling_tty: false,
        })
    }
}

/// A private temporary directory for one sandbox: its configuration and an
/// empty staging directory.
fn sandbox_dir(config: &SandboxConfig, prefix: &str) -> Result<tempfile::TempDir, RunnerError> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|source| RunnerError::Io {
            what: "creating the sandbox's temporary directory".into(),
            source,
        })?;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| RunnerError::Io { what, source }
    };
    let json = serde_json::to_vec(config).map_err(|e| {
        RunnerError::Other(format!("the sandbox configuration cannot be written: {e}"))
    })?;
    std::fs::write(dir.path().join(CONFIG_FILE), json)
        .map_err(io("writing the sandbox configuration"))?;
    std::fs::create_dir(dir.path().join(STAGE_DIR))
        .map_err(io("creating the sandbox's staging directory"))?;
    Ok(dir)
}

/// The records the sandbox left in the report file.
fn read_report(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// How the run ended, given the helper's status and the sandbox's report.
fn outcome(status: RunStatus, records: &[Record], phase: &str) -> Result<RunStatus, RunnerError> {
    for record in records {
        match record {
            Record::Failed {
                message,
                errno,
                userns,
            } => {
                if let (Some(step), Some(errno)) = (userns, errno) {
                    return Err(probe::diagnose(
                        (*step).into(),
                        *errno,
                        &probe::Settings::read(),
                    ));
                }
                return Err(RunnerError::Other(format!(
                    "the sandbox for the {phase} could not be set up: {message}"
                )));
            }
            Record::Root(mode) => tracing::debug!("sandbox root: {mode:?}"),
            Record::Signaled(_) => {}
        }
    }
    let signaled = records.iter().find_map(|r| match r {
        Record::Signaled(sig) => Some(*sig),
        _ => None,
    });
    Ok(match (status, signaled) {
        (RunStatus::Exited(code), Some(sig)) if code == 128 + sig => RunStatus::Signaled(sig),
        (status, _) => status,
    })
}

impl LifecycleRunner for ContainerRunner {
    fn name(&self) -> &'static str {
        "container"
    }

    fn on_host(&self) -> bool {
        false
    }

    fn run(
        &self,
        plan: &LifecyclePlan,
        watcher: &LineWatcher,
        cancel: &Cancel,
    ) -> Result<RunStatus, RunnerError> {
        let config = self.configure(plan)?;
        let Some(host_ids) = config.host_ids else {
            return self.run_configured(&config, plan, watcher, cancel);
        };
        let writable: Vec<PathBuf> = config.binds.iter().map(|b| b.host.clone()).collect();
        let lent = Lent::lend(&writable, host_ids).map_err(|(dir, source)| RunnerError::Io {
            what: format!(
                "lending {} to the build's host user {}:{}",
                dir.display(),
                host_ids.uid,
                host_ids.gid
            ),
            source,
        })?;
        let result = self.run_configured(&config, plan, watcher, cancel);
        // Whatever the outcome: nothing the build made may stay its own.
        lent.give_back().map_err(|(dir, source)| RunnerError::Io {
            what: format!("giving {} back to its owner after the build", dir.display()),
            source,
        })?;
        result
    }
}

impl ContainerRunner {
    /// Run the helper with `config` and tell how it went.
    fn run_configured(
        &self,
        config: &SandboxConfig,
        plan: &LifecyclePlan,
        watcher: &LineWatcher,
        cancel: &Cancel,
    ) -> Result<RunStatus, RunnerError> {
        let dir = sandbox_dir(config, "locald-sandbox-")?;
        let child = Command::new(&self.helper_exe)
            .arg(MARKER)
            .arg(dir.path())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| RunnerError::Io {
                what: format!("starting the sandbox helper {}", self.helper_exe.display()),
                source,
            })?;
        let status = supervise(child, &plan.phase, true, watcher, cancel)?;
        let records = read_report(&dir.path().join(REPORT_FILE));
        if status == RunStatus::Interrupted {
            return Ok(status);
        }
        outcome(status, &records, &plan.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_table() {
        let failed = |userns| Record::Failed {
            message: "mounting /proc: Operation not permitted".into(),
            errno: Some(libc::EPERM),
            userns,
        };
        let root = Record::Root(RootMode::Overlay);
        let ok = |s: RunStatus, r: &[Record]| outcome(s, r, "creator").expect("status");

        assert_eq!(
            ok(RunStatus::Exited(0), std::slice::from_ref(&root)),
            RunStatus::Exited(0)
        );
        // The lifecycle's own 125 passes through when nothing failed.
        assert_eq!(
            ok(RunStatus::Exited(125), std::slice::from_ref(&root)),
            RunStatus::Exited(125)
        );
        assert_eq!(
            ok(RunStatus::Exited(137), &[root.clone(), Record::Signaled(9)]),
            RunStatus::Signaled(9)
        );
        assert_eq!(
            ok(RunStatus::Exited(137), std::slice::from_ref(&root)),
            RunStatus::Exited(137)
        );

        match outcome(RunStatus::Exited(125), &[failed(None)], "creator") {
            Err(RunnerError::Other(m)) => {
                assert_eq!(
                    m,
                    "the sandbox for the creator could not be set up: mounting /proc: Operation not permitted"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome(
                RunStatus::Exited(125),
                &[failed(Some(sandbox::UsernsStep::Unshare))],
                "creator"
            ),
            Err(RunnerError::Unavailable { .. })
        ));
    }
}

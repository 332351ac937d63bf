//! Running a builder's CNB lifecycle: the [`LifecyclePlan`] the core builds (which
//! phase, its arguments in terms of logical directories, its environment, the build
//! user) and the [`LifecycleRunner`] trait the runners implement. A runner only
//! decides where the logical directories live and how the process is isolated; the
//! plan is the same for all of them.
//!
//! [`supervise`] is the part both runners share: stream the child's stdout and
//! stderr line by line with the phase prefix (`[creator] ...`, as `pack` does),
//! forward a cancellation as SIGINT (then SIGKILL after a grace period), and return
//! how the child ended.

pub mod supervise;

use std::path::{Path, PathBuf};

pub use supervise::{supervise, LineWatcher, PhaseTime, RunStatus};

use crate::cancel::Cancel;

/// A logical build directory. Runners map each to a path the lifecycle sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The builder's files: the root of the extracted tree (it holds `cnb/`, and for
    /// the container runner the whole root filesystem). Read-only.
    Builder,
    /// The copy of the application source (`-app`).
    App,
    /// The build's layers (`-layers`).
    Layers,
    /// The platform directory (`-platform`): `env/NAME` files.
    Platform,
    /// The buildpacks' cache, kept between builds (`-cache-dir`).
    Cache,
    /// The OCI layout directory (`-layout-dir`): the run image in, the app image out.
    Layout,
}

impl Dir {
    /// Every directory a build writes to (all but [`Dir::Builder`]).
    pub const WRITABLE: [Dir; 5] = [
        Dir::App,
        Dir::Layers,
        Dir::Platform,
        Dir::Cache,
        Dir::Layout,
    ];

    /// Where the container runner mounts it inside the sandbox (the paths `pack`
    /// uses in its build containers).
    pub fn sandbox_path(self) -> &'static str {
        match self {
            Dir::Builder => "/",
            Dir::App => "/workspace",
            Dir::Layers => "/layers",
            Dir::Platform => "/platform",
            Dir::Cache => "/cache",
            Dir::Layout => "/layout-repo",
        }
    }
}

/// One argument of the lifecycle command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// Passed as is.
    Text(String),
    /// A path inside a logical directory (`rel` is relative, may be empty for the
    /// directory itself); the runner turns it into the path the lifecycle sees.
    Path(Dir, PathBuf),
}

/// The host directories behind the logical directories.
#[derive(Debug, Clone)]
pub struct HostDirs {
    /// The cached builder tree (`/cnb` only for the native runner; the full root
    /// filesystem for the container runner).
    pub builder: PathBuf,
    /// The app copy.
    pub app: PathBuf,
    /// The layers directory.
    pub layers: PathBuf,
    /// The platform directory.
    pub platform: PathBuf,
    /// The buildpack cache directory.
    pub cache: PathBuf,
    /// The OCI layout directory.
    pub layout: PathBuf,
}

impl HostDirs {
    /// The host path of a logical directory.
    pub fn get(&self, dir: Dir) -> &Path {
        match dir {
            Dir::Builder => &self.builder,
            Dir::App => &self.app,
            Dir::Layers => &self.layers,
            Dir::Platform => &self.platform,
            Dir::Cache => &self.cache,
            Dir::Layout => &self.layout,
        }
    }
}

/// What to run: built by [`plan_creator`], carried out by a [`LifecycleRunner`].
#[derive(Debug, Clone)]
pub struct LifecyclePlan {
    /// The phase, for the output prefix and messages (`creator`).
    pub phase: String,
    /// The program, relative to [`Dir::Builder`] (`cnb/lifecycle/creator`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<Arg>,
    /// Its environment, in order (later entries win): the builder image's config
    /// `Env`, then `CNB_PLATFORM_API`, `CNB_EXPERIMENTAL_MODE`, ... Nothing of the
    /// host's environment is inherited unless a runner adds it.
    pub env: Vec<(String, String)>,
    /// The build user (`CNB_USER_ID`).
    pub uid: u32,
    /// The build group (`CNB_GROUP_ID`).
    pub gid: u32,
    /// The host directories.
    pub host: HostDirs,
    /// The network the lifecycle gets.
    pub network: Network,
    /// Host paths mounted for the buildpacks (sandboxes only).
    pub volumes: Vec<Volume>,
}

/// The network a sandboxed process gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// The host's (buildpacks can download).
    #[default]
    Host,
    /// A network namespace of its own with only loopback (offline builds).
    None,
}

/// A host path mounted into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The host path (absolute, existing).
    pub host: PathBuf,
    /// Where it appears (absolute).
    pub target: String,
    /// Read-only (the default, as in pack).
    pub read_only: bool,
}

impl Volume {
    /// Parses `HOST:TARGET[:ro|rw]` (`HOST` made absolute against the working
    /// directory; read-only unless `rw`).
    pub fn parse(spec: &str) -> std::result::Result<Volume, String> {
        let mut parts: Vec<&str> = spec.split(':').collect();
        let read_only = match parts.last() {
            Some(&"ro") if parts.len() == 3 => {
                parts.pop();
                true
            }
            Some(&"rw") if parts.len() == 3 => {
                parts.pop();
                false
            }
            _ => true,
        };
        let [host, target] = parts.as_slice() else {
            return Err(format!("--volume {spec:?} is not HOST:TARGET[:ro|rw]"));
        };
        if host.is_empty() || target.is_empty() {
            return Err(format!("--volume {spec:?} is not HOST:TARGET[:ro|rw]"));
        }
        if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
            return Err(format!(
                "--volume {spec:?}: the target {target:?} must be an absolute path without `..`"
            ));
        }
        let host = std::path::absolute(host).map_err(|e| format!("--volume {spec:?}: {e}"))?;
        Ok(Volume {
            host,
            target: (*target).to_owned(),
            read_only,
        })
    }
}

impl Volume {
    /// Refuses a target that would hide or replace what the lifecycle needs:
    /// the root, its own directories (`/workspace`, `/layers`, `/platform`,
    /// `/cache`, `/layout-repo`), `/cnb`, `/proc` or `/dev`, or anything below
    /// them; and a host path that is not a directory.
    pub fn check(&self) -> std::result::Result<(), String> {
        let target = self.target.trim_end_matches('/');
        let reserved: Vec<&str> = Dir::WRITABLE
            .iter()
            .map(|d| d.sandbox_path())
            .chain(["/cnb", "/proc", "/dev"])
            .collect();
        if target.is_empty() {
            return Err("--volume cannot mount over the root filesystem".to_owned());
        }
        if let Some(r) = reserved
            .iter()
            .find(|r| target == **r || target.starts_with(&format!("{r}/")))
        {
            return Err(format!(
                "--volume target {} is over {r}, which the lifecycle needs (its own directories, /cnb, /proc and /dev are reserved)",
                self.target
            ));
        }
        if !self.host.is_dir() {
            return Err(format!(
                "--volume host path {} is not a directory",
                self.host.display()
            ));
        }
        Ok(())
    }
}

impl LifecyclePlan {
    /// The value of an environment variable of the plan (the last one set).
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The arguments as strings, each path mapped by `map` (a runner's view of the
    /// logical directories).
    pub fn render_args(&self, map: impl Fn(Dir, &Path) -> PathBuf) -> Vec<String> {
        self.args
            .iter()
            .map(|arg| match arg {
                Arg::Text(text) => text.clone(),
                Arg::Path(dir, rel) => {
                    let path = map(*dir, rel).to_string_lossy().into_owned();
                    // `Path::join("")` leaves a trailing slash: the directory itself
                    // is meant.
                    match path.strip_suffix('/') {
                        Some(trimmed) if !trimmed.is_empty() => trimmed.to_owned(),
                        _ => path,
                    }
                }
            })
            .collect()
    }
}

/// Why a runner could not run the plan (as opposed to the lifecycle failing,
/// which is a [`RunStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The runner cannot work on this machine (user namespaces disabled, ...).
    #[error("{message}")]
    Unavailable {
        /// What is missing.
        message: String,
        /// What to do about it.
        hint: String,
    },
    /// Starting or supervising the process failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, in a sentence.
    #[error("{0}")]
    Other(String),
}

/// Runs a [`LifecyclePlan`] to completion.
pub trait LifecycleRunner: Send + Sync {
    /// `native` or `container`.
    fn name(&self) -> &'static str;

    /// Whether the lifecycle runs on the host itself rather than in a sandbox
    /// with the builder's root filesystem. On the host it needs only the
    /// builder's `/cnb`, uses the host's tools, and started by root runs as the
    /// build user, who must own the build's directories.
    fn on_host(&self) -> bool;

    /// Run the plan: stream its output (prefixed with `[phase] `) to this process's
    /// stdout/stderr as it comes, feed each line to `watcher`, stop it when `cancel`
    /// is set (SIGINT first, SIGKILL after a grace period), and return how it ended.
    /// Blocking: call it from a blocking thread.
    fn run(
        &self,
        plan: &LifecyclePlan,
        watcher: &LineWatcher,
        cancel: &Cancel,
    ) -> std::result::Result<RunStatus, RunnerError>;
}

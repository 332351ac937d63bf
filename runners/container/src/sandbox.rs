//! The sandbox itself, run by the helper process (the `locald` binary re-executed
//! with [`MARKER`]). Three processes, each single-threaded:
//!
//! 1. The **helper** (outside): unshares user, mount, pid, ipc, uts and cgroup
//!    namespaces, maps the host user to root of the new user namespace (started by
//!    root: root to root, plus the build's unprivileged host ids onto themselves,
//!    written by a short-lived child left outside), forks the init, then forwards
//!    SIGINT/SIGTERM to it and exits with its status.
//! 2. The **init** (pid 1 of the new pid namespace): builds the read-only root,
//!    mounts the writable directories, /proc, /dev, /tmp, HOME and resolv.conf,
//!    makes /proc/sys read-only and masks the dangerous files of /proc (its mounts
//!    are locked for the lifecycle), `pivot_root`s into it, forks the lifecycle,
//!    reaps every child, forwards
//!    SIGINT/SIGTERM to the lifecycle and exits with its status (128 + signal when
//!    it was killed). Its exit kills whatever is left in the namespace.
//! 3. The **lifecycle**: enters a nested user namespace that maps the build user
//!    (`CNB_USER_ID`/`CNB_GROUP_ID`) to the root of the outer one (started by root:
//!    to the build's host ids, which it becomes first), so it runs as the build
//!    user without capabilities, joins a fresh session keyring, then `exec`s the
//!    builder's program (the host binary cannot be re-executed: its loader is not
//!    in the builder root).
//!
//! A failure in any of them is one sentence on stderr, a JSON record in the report
//! file the runner reads, and exit code [`SETUP_FAILED`].

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::StatVfsMountFlags;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{DumpableBehavior, Gid, Pid, Signal, Uid, WaitOptions, WaitStatus};
use rustix::thread::UnshareFlags;
use serde::{Deserialize, Serialize};

use crate::config::{HostIds, Kind, MountTree, RootMode, SandboxConfig, RESOLV_CONF};
use crate::sys::{self, Forked, ProbeStep};

/// The hidden first argument that makes the `locald` binary the sandbox helper.
pub(crate) const MARKER: &str = "__locald-sandbox";

/// The exit code of a sandbox that could not be set up (as `docker run`).
pub(crate) const SETUP_FAILED: i32 = 125;

/// The configuration file in the run directory.
pub(crate) const CONFIG_FILE: &str = "config.json";
/// The report file in the run directory (JSON lines, see [`Record`]).
pub(crate) const REPORT_FILE: &str = "report";
/// The directory the staging tmpfs is mounted on.
pub(crate) const STAGE_DIR: &str = "stage";

/// The host name inside the sandbox.
pub(crate) const HOSTNAME: &str = "locald-build";

/// What the sandbox tells the runner, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Record {
    /// Setting up the sandbox failed; `userns` when it was creating or mapping the
    /// user namespace (the runner then explains why namespaces do not work).
    Failed {
        message: String,
        errno: Option<i32>,
        userns: Option<UsernsStep>,
    },
    /// The lifecycle was killed by this signal (the exit code is 128 + it).
    Signaled(i32),
    /// How the root was made.
    Root(RootMode),
}

/// The user-namespace steps whose failure means "namespaces do not work here".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum UsernsStep {
    Unshare,
    IdMap,
    Proc,
}

impl From<UsernsStep> for ProbeStep {
    fn from(step: UsernsStep) -> Self {
        match step {
            UsernsStep::Unshare => ProbeStep::Unshare,
            UsernsStep::IdMap => ProbeStep::IdMap,
            UsernsStep::Proc => ProbeStep::Proc,
        }
    }
}

/// A failure inside the sandbox: what was being done and the cause.
#[derive(Debug)]
struct Failure {
    what: String,
    source: io::Error,
    userns: Option<UsernsStep>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

/// Attach "what was being done" to an error.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T, E: Into<io::Error>> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            what: what(),
            source: e.into(),
            userns: None,
        })
    }
}

fn userns(step: UsernsStep, mut failure: Failure) -> Failure {
    failure.userns = Some(step);
    failure
}

/// The report file, opened by the helper and inherited by the init and the
/// lifecycle process (close-on-exec, so the lifecycle program never sees it).
struct Report(File);

impl Report {
    fn open(path: &Path) -> io::Result<Self> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map(Report)
    }

    fn record(&self, record: &Record) {
        if let Ok(mut line) = serde_json::to_vec(record) {
            line.push(b'\n');
            // One write: the records of different processes never interleave.
            let _ = (&self.0).write_all(&line);
        }
    }

    /// Record a failure, say it on stderr, and give the exit code.
    fn fail(&self, failure: &Failure) -> i32 {
        self.record(&Record::Failed {
            message: failure.to_string(),
            errno: failure.source.raw_os_error(),
            userns: failure.userns,
        });
        eprintln!("locald sandbox: {failure}");
        SETUP_FAILED
    }
}

/// The helper's entry point: `args` are the arguments after [`MARKER`] (the run
/// directory). Returns the exit code.
pub(crate) fn main(args: &[OsString]) -> i32 {
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("locald sandbox: missing the run directory argument");
        return SETUP_FAILED;
    };
    // Nothing the parent leaked may reach the lifecycle.
    if let Err(e) = sys::cloexec_from(3) {
        eprintln!("locald sandbox: marking the inherited file descriptors close-on-exec: {e}");
        return SETUP_FAILED;
    }
    let report = match Report::open(&dir.join(REPORT_FILE)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!(
                "locald sandbox: opening the report file in {}: {e}",
                dir.display()
            );
            return SETUP_FAILED;
        }
    };
    match helper(&dir, &report) {
        Ok(code) => code,
        Err(failure) => report.fail(&failure),
    }
}

/// The exit code that stands for a wait status (128 + signal for a kill).
fn exit_code(status: WaitStatus) -> i32 {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => SETUP_FAILED,
    }
}

/// The signals the helper and the init handle (blocked, then waited for).
const SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD];

fn die_with_parent() -> Result<(), Failure> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .context(|| "asking to be killed with the parent process".into())
}

/// Write `setgroups`, `uid_map` and `gid_map` of this process.
fn map_ids(
    inside_uid: u32,
    outside_uid: u32,
    inside_gid: u32,
    outside_gid: u32,
) -> Result<(), Failure> {
    let write = |file: &str, content: String| {
        fs::write(format!("/proc/self/{file}"), content)
            .context(|| format!("writing /proc/self/{file}"))
            .map_err(|f| userns(UsernsStep::IdMap, f))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{inside_uid} {outside_uid} 1\n"))?;
    write("gid_map", format!("{inside_gid} {outside_gid} 1\n"))
}

fn helper(dir: &Path, report: &Report) -> Result<i32, Failure> {
    let bytes =
        fs::read(dir.join(CONFIG_FILE)).context(|| "reading the sandbox configuration".into())?;
    let config: SandboxConfig = serde_json::from_slice(&bytes)
        .map_err(io::Error::other)
        .context(|| "reading the sandbox configuration".into())?;

    die_with_parent()?;
    if rustix::process::getppid()
        .map(Pid::as_raw_nonzero)
        .map(|p| p.get())
        != Some(config.parent_pid)
    {
        // locald is already gone: nothing to run for.
        return Ok(SETUP_FAILED);
    }
    sys::block_signals(&SIGNALS).context(|| "blocking signals".into())?;

    match config.host_ids {
        None => {
            let uid = rustix::process::geteuid().as_raw();
            let gid = rustix::process::getegid().as_raw();
            unshare_namespaces()?;
            map_ids(0, uid, 0, gid)?;
        }
        Some(ids) => unshare_as_root(ids)?,
    }
    // Changing credentials may clear the death signal: set it again.
    die_with_parent()?;

    // The init's lifeline: should we die before the init asks for the death
    // signal, it reads end-of-file here.
    let (lifeline, init_end) =
        UnixStream::pair().context(|| "creating the init's lifeline".into())?;
    let init = match sys::fork().context(|| "starting the sandbox's init process".into())? {
        Forked::Child => {
            drop(lifeline);
            std::process::exit(match init(&config, dir, report, init_end) {
                Ok(code) => code,
                Err(failure) => report.fail(&failure),
            })
        }
        Forked::Parent(pid) => pid,
    };
    drop(init_end);

    loop {
        let sig = sys::wait_signal(&SIGNALS).context(|| "waiting for signals".into())?;
        if sig == libc::SIGCHLD {
            match rustix::process::waitpid(Some(init), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => return Ok(exit_code(status)),
                Ok(None) => {}
                Err(e) => return Err(e).context(|| "waiting for the sandbox's init".into()),
            }
        } else if let Some(sig) = Signal::from_named_raw(sig) {
            let _ = rustix::process::kill_process(init, sig);
        }
    }
}

/// The namespaces of the sandbox.
const NAMESPACES: UnshareFlags = UnshareFlags::NEWUSER
    .union(UnshareFlags::NEWNS)
    .union(UnshareFlags::NEWPID)
    .union(UnshareFlags::NEWIPC)
    .union(UnshareFlags::NEWUTS)
    .union(UnshareFlags::NEWCGROUP);

fn unshare_namespaces() -> Result<(), Failure> {
    sys::unshare(NAMESPACES)
        .context(|| "creating the user, mount, pid, ipc, uts and cgroup namespaces".into())
        .map_err(|f| userns(UsernsStep::Unshare, f))
}

/// Started by root: drop root's supplementary groups (every process of the sandbox
/// would keep them), unshare, and have a child left outside write the id maps: root
/// to root (the init mounts as host root, so the builder tree stays reachable under
/// root's private home) and the build's host ids onto themselves. Only a process
/// with `CAP_SETUID` in the parent namespace may map more than its own id, and we
/// lose it by unsharing.
fn unshare_as_root(ids: HostIds) -> Result<(), Failure> {
    rustix::thread::set_thread_groups(&[])
        .context(|| "dropping the supplementary groups".into())?;
    let (mut go, mut wait) =
        UnixStream::pair().context(|| "creating a socket pair for the id mapper".into())?;
    let helper = rustix::process::getpid();
    let mapper = match sys::fork().context(|| "starting the id mapper".into())? {
        Forked::Child => {
            drop(go);
            std::process::exit(match write_maps_from_outside(&mut wait, helper, ids) {
                Ok(()) => 0,
                Err(failure) => {
                    eprintln!("locald sandbox: {failure}");
                    failure
                        .source
                        .raw_os_error()
                        .unwrap_or(libc::EIO)
                        .clamp(1, 255)
                }
            })
        }
        Forked::Parent(pid) => pid,
    };
    drop(wait);
    let unshared = unshare_namespaces();
    if unshared.is_ok() {
        // Should this fail, the mapper sees end-of-file, and so do we below.
        let _ = go.write_all(b"u");
    }
    drop(go);
    let status = rustix::process::waitpid(Some(mapper), WaitOptions::empty())
        .context(|| "waiting for the id mapper".into())?;
    unshared?;
    match status.and_then(|(_, s)| s.exit_status()) {
        Some(0) => Ok(()),
        code => Err(userns(
            UsernsStep::IdMap,
            Failure {
                what: "writing the sandbox's id maps".into(),
                source: io::Error::from_raw_os_error(code.unwrap_or(libc::EIO)),
                userns: None,
            },
        )),
    }
}

/// The id mapper of [`unshare_as_root`]: once the helper says it has unshared,
/// write its `setgroups`, `uid_map` and `gid_map`.
fn write_maps_from_outside(go: &mut UnixStream, helper: Pid, ids: HostIds) -> Result<(), Failure> {
    die_with_parent()?;
    let mut byte = [0u8; 1];
    let n = go
        .read(&mut byte)
        .context(|| "waiting for the namespaces".into())?;
    if n == 0 {
        // The helper could not unshare (it says why) or is gone.
        return Ok(());
    }
    let proc = format!("/proc/{}", helper.as_raw_nonzero());
    let write = |file: &str, content: String| {
        fs::write(format!("{proc}/{file}"), content)
            .context(|| format!("writing the sandbox's {file}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 0 1\n{0} {0} 1\n", ids.uid))?;
    write("gid_map", format!("0 0 1\n{0} {0} 1\n", ids.gid))
}

/// Pid 1 of the sandbox.
fn init(
    config: &SandboxConfig,
    dir: &Path,
    report: &Report,
    lifeline: UnixStream,
) -> Result<i32, Failure> {
    die_with_parent()?;
    // The helper may have died before we asked for the death signal: then its end
    // of the lifeline is closed.
    lifeline
        .set_nonblocking(true)
        .context(|| "checking the helper is alive".into())?;
    if matches!((&lifeline).read(&mut [0u8; 1]), Ok(0)) {
        return Ok(SETUP_FAILED);
    }
    drop(lifeline);
    // Our own session and process group: a signal to the helper's group does not
    // reach the lifecycle twice (the helper forwards it through us).
    rustix::process::setsid().context(|| "starting a new session".into())?;

    let mode = build_root(config, dir)?;
    report.record(&Record::Root(mode));
    enter_root()?;
    rustix::system::sethostname(config.hostname.as_bytes())
        .context(|| format!("setting the host name to {}", config.hostname))?;
    if config.network_none {
        sys::unshare(UnshareFlags::NEWNET)
            .context(|| "creating the build's own network namespace (--network none)".into())?;
        sys::loopback_up().context(|| "bringing up loopback in the build's network".into())?;
    }

    let lifecycle = match sys::fork().context(|| format!("starting {}", config.program))? {
        Forked::Child => std::process::exit(match lifecycle(config) {
            Ok(never) => match never {},
            Err(failure) => report.fail(&failure),
        }),
        Forked::Parent(pid) => pid,
    };

    loop {
        let sig = sys::wait_signal(&SIGNALS).context(|| "waiting for signals".into())?;
        if sig != libc::SIGCHLD {
            if let Some(sig) = Signal::from_named_raw(sig) {
                let _ = rustix::process::kill_process(lifecycle, sig);
            }
            continue;
        }
        // Reap every child that ended (orphans are ours as pid 1).
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) if pid == lifecycle => {
                    if let Some(sig) = status.terminating_signal() {
                        report.record(&Record::Signaled(sig));
                    }
                    // Exiting kills whatever is left in the namespace.
                    return Ok(exit_code(status));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// The lifecycle process: become the build user, then `exec` the program.
fn lifecycle(config: &SandboxConfig) -> Result<std::convert::Infallible, Failure> {
    // Started by root we are host root: the build user is mapped onto the build's
    // host ids instead, which we become first.
    let (outer_uid, outer_gid) = match config.host_ids {
        Some(ids) => {
            become_ids(ids)?;
            (ids.uid, ids.gid)
        }
        None => (0, 0),
    };
    sys::unshare(UnshareFlags::NEWUSER).context(|| "creating the build user's namespace".into())?;
    map_ids(config.uid, outer_uid, config.gid, outer_gid).map_err(|mut f| {
        f.userns = None;
        f.what = format!(
            "mapping the build user {}:{} ({})",
            config.uid, config.gid, f.what
        );
        f
    })?;
    die_with_parent()?;
    sys::join_new_session_keyring().context(|| "joining a new session keyring".into())?;
    sys::reset_signal_dispositions();
    sys::unblock_all_signals().context(|| "unblocking signals".into())?;
    if config.controlling_tty {
        // A session of its own, whose controlling terminal is the pty on stdin.
        rustix::process::setsid().context(|| "starting the process's session".into())?;
        rustix::process::ioctl_tiocsctty(std::io::stdin())
            .context(|| "making the terminal the process's controlling terminal".into())?;
    }
    let error = Command::new(&config.program)
        .args(&config.args)
        .env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&config.cwd)
        .exec();
    Err(error).context(|| format!("starting {} in {}", config.program, config.cwd))
}

/// Become `ids` (mapped onto themselves in the sandbox) for good, and dumpable
/// again: the change of credentials gives /proc/self to root, and the build user's
/// id maps are written there.
fn become_ids(ids: HostIds) -> Result<(), Failure> {
    let (uid, gid) = (Uid::from_raw(ids.uid), Gid::from_raw(ids.gid));
    rustix::thread::set_thread_res_gid(gid, gid, gid)
        .context(|| format!("becoming the group {}", ids.gid))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)
        .context(|| format!("becoming the user {}", ids.uid))?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::Dumpable)
        .context(|| "making the process dumpable".into())
}

/// A path of the new root, relative to the staging directory (our cwd).
fn in_root(target: &str) -> PathBuf {
    Path::new("root").join(target.trim_start_matches('/'))
}

/// Make a bind mount read-only, nosuid and nodev (see [`remount_bind`]).
fn remount_read_only(path: &Path) -> Result<(), Failure> {
    remount_bind(path, MountFlags::RDONLY)
        .context(|| format!("making {} read-only", path.display()))
}

/// Remount a bind mount nosuid and nodev (no setuid file, no device node of the
/// builder tree or of a writable directory works) with `extra` flags, keeping the
/// flags the kernel locks for mounts that came from a more privileged namespace
/// (read-only, noexec; atime flags are kept by leaving them out).
fn remount_bind(path: &Path, extra: MountFlags) -> io::Result<()> {
    let flags = rustix::fs::statvfs(path)?.f_flag;
    let mut mount_flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV | extra;
    for (from, to) in [
        (StatVfsMountFlags::RDONLY, MountFlags::RDONLY),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
    ] {
        if flags.contains(from) {
            mount_flags |= to;
        }
    }
    rustix::mount::mount_remount(path, mount_flags, "")?;
    Ok(())
}

fn tmpfs(target: &Path, flags: MountFlags, options: &str, what: &str) -> Result<(), Failure> {
    let options = std::ffi::CString::new(options)
        .map_err(io::Error::other)
        .context(|| what.into())?;
    rustix::mount::mount("tmpfs", target, "tmpfs", flags, Some(options.as_c_str()))
        .context(|| format!("mounting a tmpfs for {what}"))
}

/// Build the sandbox root at `<dir>/stage/root` (and chdir to `<dir>/stage`).
fn build_root(config: &SandboxConfig, dir: &Path) -> Result<RootMode, Failure> {
    // Nothing we mount may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .context(|| "making the mounts private".into())?;
    let stage = dir.join(STAGE_DIR);
    tmpfs(
        &stage,
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=0700",
        "staging",
    )?;
    std::env::set_current_dir(&stage).context(|| format!("entering {}", stage.display()))?;
    for name in ["lower", "root"] {
        fs::create_dir(name).context(|| format!("creating the staging directory {name}"))?;
    }
    // The builder tree, read-only: the overlay's lowest layer or the source of the
    // bind mounts.
    rustix::mount::mount_bind_recursive(&config.rootfs, "lower")
        .context(|| format!("mounting the builder root {}", config.rootfs.display()))?;
    remount_read_only(Path::new("lower"))?;

    let tree = config.mount_tree();
    if config.writable_root {
        writable_overlay_root(&tree)?;
        system_mounts(config)?;
        localhost_in_hosts()?;
        return Ok(RootMode::Overlay);
    }
    let mode = match config.root_mode {
        RootMode::Overlay => {
            overlay_root(&tree)?;
            RootMode::Overlay
        }
        RootMode::BindMounts => {
            bind_root(&tree)?;
            RootMode::BindMounts
        }
        RootMode::Auto => match overlay_root(&tree) {
            Ok(()) => RootMode::Overlay,
            Err(overlay) => {
                bind_root(&tree).map_err(|mut binds| {
                    binds.what =
                        format!("{} (after an overlay was refused: {overlay})", binds.what);
                    binds
                })?;
                RootMode::BindMounts
            }
        },
    };
    system_mounts(config)?;
    Ok(mode)
}

/// A read-only overlay: a skeleton holding only the mount points, over the builder
/// tree, no upper directory. Relative layer paths avoid escaping `:` and `,`.
fn overlay_root(tree: &MountTree) -> Result<(), Failure> {
    fs::create_dir("skel").context(|| "creating the overlay skeleton".into())?;
    copy_mode(Path::new("lower"), Path::new("skel"))?;
    mirror(Some(Path::new("lower")), Path::new("skel"), tree, false)?;
    rustix::mount::mount(
        "overlay",
        "root",
        "overlay",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"lowerdir=skel:lower"),
    )
    .context(|| "mounting the builder root read-only (overlayfs)".into())
}

/// A writable overlay for `locald run`: the skeleton and the image tree below, an
/// upper layer on the staging tmpfs, so every change is gone with the sandbox.
fn writable_overlay_root(tree: &MountTree) -> Result<(), Failure> {
    fs::create_dir("skel").context(|| "creating the overlay skeleton".into())?;
    copy_mode(Path::new("lower"), Path::new("skel"))?;
    mirror(Some(Path::new("lower")), Path::new("skel"), tree, false)?;
    for name in ["upper", "work"] {
        fs::create_dir(name).context(|| format!("creating the overlay's {name} directory"))?;
    }
    copy_mode(Path::new("lower"), Path::new("upper"))?;
    rustix::mount::mount(
        "overlay",
        "root",
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"lowerdir=skel:lower,upperdir=upper,workdir=work"),
    )
    .context(|| "mounting the image root with a throwaway writable layer (overlayfs)".into())
}

/// `/etc/hosts` of a writable root names localhost (written into the throwaway
/// layer when the image's does not).
fn localhost_in_hosts() -> Result<(), Failure> {
    let hosts = in_root("/etc/hosts");
    let text = fs::read_to_string(&hosts).unwrap_or_default();
    if text.split_whitespace().any(|w| w == "localhost") {
        return Ok(());
    }
    if let Some(dir) = hosts.parent() {
        fs::create_dir_all(dir).context(|| "creating /etc".into())?;
    }
    let mut out = text;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    fs::write(&hosts, out).context(|| "writing /etc/hosts".into())
}

/// A tmpfs with read-only bind mounts of the builder tree's entries (copies of its
/// symlinks), then made read-only itself.
fn bind_root(tree: &MountTree) -> Result<(), Failure> {
    let root = Path::new("root");
    tmpfs(root, MountFlags::empty(), "mode=0755", "the root")?;
    copy_mode(Path::new("lower"), root)?;
    mirror(Some(Path::new("lower")), root, tree, true)?;
    let flags = MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
    rustix::mount::mount_remount(root, flags, "").context(|| "making the root read-only".into())
}

/// Give `to` the permission bits of `from`.
fn copy_mode(from: &Path, to: &Path) -> Result<(), Failure> {
    let mode = fs::metadata(from)
        .context(|| format!("inspecting {}", from.display()))?
        .permissions()
        .mode();
    fs::set_permissions(to, fs::Permissions::from_mode(mode & 0o7777))
        .context(|| format!("setting the mode of {}", to.display()))
}

/// Create in `dst` the mount points of `tree`, with the modes the builder tree has
/// for them, and (with `bind_entries`) bind-mount every other entry of `src`.
fn mirror(
    src: Option<&Path>,
    dst: &Path,
    tree: &MountTree,
    bind_entries: bool,
) -> Result<(), Failure> {
    if let (Some(src), true) = (src, bind_entries) {
        let entries = fs::read_dir(src).context(|| format!("reading {}", src.display()))?;
        for entry in entries {
            let entry = entry.context(|| format!("reading {}", src.display()))?;
            let name = entry.file_name();
            if tree.children.contains_key(&*name.to_string_lossy()) {
                continue;
            }
            let (from, to) = (entry.path(), dst.join(&name));
            let file_type = entry
                .file_type()
                .context(|| format!("inspecting {}", from.display()))?;
            let bind = |to: &Path| {
                rustix::mount::mount_bind_recursive(&from, to)
                    .context(|| format!("bind-mounting {}", from.display()))
            };
            if file_type.is_symlink() {
                let target =
                    fs::read_link(&from).context(|| format!("reading {}", from.display()))?;
                symlink(&target, &to)
                    .context(|| format!("copying the symlink {}", from.display()))?;
            } else if file_type.is_dir() {
                fs::create_dir(&to).context(|| format!("creating {}", to.display()))?;
                bind(&to)?;
            } else if file_type.is_file() {
                File::create(&to).context(|| format!("creating {}", to.display()))?;
                bind(&to)?;
            }
            // Device nodes, fifos and sockets of an image have no use in a build.
        }
    }
    for (name, node) in &tree.children {
        let to = dst.join(name);
        let from = src
            .map(|s| s.join(name))
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()));
        match node.kind {
            Kind::File => {
                File::create(&to)
                    .context(|| format!("creating the mount point {}", to.display()))?;
            }
            Kind::Dir => {
                fs::create_dir(&to)
                    .context(|| format!("creating the mount point {}", to.display()))?;
                let mode = from
                    .as_ref()
                    .and_then(|p| fs::metadata(p).ok())
                    .map_or(0o755, |m| m.permissions().mode() & 0o7777);
                fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                    .context(|| format!("setting the mode of {}", to.display()))?;
                if !node.tree.children.is_empty() {
                    mirror(from.as_deref(), &to, &node.tree, bind_entries)?;
                }
            }
        }
    }
    Ok(())
}

/// The writable directories, /proc, /dev, /tmp, HOME and resolv.conf.
fn system_mounts(config: &SandboxConfig) -> Result<(), Failure> {
    for bind in &config.binds {
        let target = in_root(&bind.target);
        let what = || {
            format!(
                "mounting the {} {} at {}",
                bind.what,
                bind.host.display(),
                bind.target
            )
        };
        rustix::mount::mount_bind_recursive(&bind.host, &target).context(what)?;
        let flags = if bind.read_only {
            MountFlags::RDONLY
        } else {
            MountFlags::empty()
        };
        remount_bind(&target, flags).context(|| format!("{} (nosuid, nodev)", what()))?;
    }
    rustix::mount::mount(
        "proc",
        in_root("/proc"),
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .context(|| "mounting /proc".into())
    .map_err(|f| match f.source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => userns(UsernsStep::Proc, f),
        _ => f,
    })?;
    dev(&in_root("/dev"))?;
    lock_proc()?;
    tmpfs(
        &in_root("/tmp"),
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777",
        "/tmp",
    )?;
    if let Some(home) = &config.home_mount {
        // The build user's: ours, or, started by root, the build's host ids'.
        let options = match config.host_ids {
            Some(ids) => format!("mode=0755,uid={},gid={}", ids.uid, ids.gid),
            None => "mode=0755".to_owned(),
        };
        tmpfs(
            &in_root(home),
            MountFlags::NOSUID | MountFlags::NODEV,
            &options,
            home,
        )?;
    }
    let resolv = Path::new(RESOLV_CONF);
    if resolv.is_file() {
        let target = in_root(RESOLV_CONF);
        rustix::mount::mount_bind(resolv, &target)
            .context(|| format!("mounting the host's {RESOLV_CONF}"))?;
        remount_read_only(&target)?;
    }
    Ok(())
}

/// The files of /proc masked (as container runtimes do): they show or change the
/// host's kernel, not the sandbox's.
const MASKED_PROC: [&str; 8] = [
    "/proc/sysrq-trigger",
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/acpi",
    "/proc/scsi",
];

/// Make /proc/sys read-only and mask [`MASKED_PROC`] (files with /dev/null,
/// directories with an empty read-only tmpfs). Mounted by the init, these are
/// locked for the lifecycle, which has no capability over this mount namespace.
fn lock_proc() -> Result<(), Failure> {
    let sys = in_root("/proc/sys");
    rustix::mount::mount_bind(&sys, &sys).context(|| "binding /proc/sys".into())?;
    remount_bind(&sys, MountFlags::RDONLY | MountFlags::NOEXEC)
        .context(|| "making /proc/sys read-only".into())?;
    for path in MASKED_PROC {
        let target = in_root(path);
        let Ok(meta) = fs::symlink_metadata(&target) else {
            continue;
        };
        if meta.is_dir() {
            tmpfs(
                &target,
                MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                "mode=0555",
                path,
            )?;
        } else {
            rustix::mount::mount_bind("/dev/null", &target)
                .context(|| format!("masking {path}"))?;
        }
    }
    Ok(())
}

/// A minimal /dev: the host's harmless character devices bound into a tmpfs
/// (`mknod` is not allowed in a user namespace), the usual symlinks, /dev/shm and,
/// when the kernel allows it, a private /dev/pts.
fn dev(dev: &Path) -> Result<(), Failure> {
    tmpfs(
        dev,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=0755,size=65536k",
        "/dev",
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        File::create(&target).context(|| format!("creating /dev/{name}"))?;
        rustix::mount::mount_bind(&host, &target).context(|| format!("mounting /dev/{name}"))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).context(|| format!("creating /dev/{name}"))?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).context(|| "creating /dev/shm".into())?;
    tmpfs(
        &shm,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "mode=1777,size=65536k",
        "/dev/shm",
    )?;
    let pts = dev.join("pts");
    fs::create_dir(&pts).context(|| "creating /dev/pts".into())?;
    let devpts = rustix::mount::mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    );
    if devpts.is_ok() {
        symlink("pts/ptmx", dev.join("ptmx")).context(|| "creating /dev/ptmx".into())?;
    } else {
        let _ = fs::remove_dir(&pts);
    }
    Ok(())
}

/// `pivot_root` into `root` (relative to the cwd) and drop the old root.
fn enter_root() -> Result<(), Failure> {
    std::env::set_current_dir("root").context(|| "entering the new root".into())?;
    rustix::process::pivot_root(".", ".").context(|| "pivot_root into the builder root".into())?;
    // The old root is now stacked on ".": detach it and everything under it.
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .context(|| "detaching the host's root".into())?;
    std::env::set_current_dir("/").context(|| "entering /".into())
}

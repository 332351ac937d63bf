//! `locald run`: an image's own process in the sandbox. The image tree from the
//! cache is the read-only lower layer of an overlay whose upper layer is a tmpfs
//! (what the process writes is gone when it exits); fresh /proc, a minimal /dev,
//! tmpfs /tmp, the host's resolv.conf, localhost in /etc/hosts, the volumes asked
//! for, the host's network or none. The process's stdio are locald's own, and
//! its exit code (128 + signal when a signal ended it) is what [`ContainerRunner::run_image`]
//! returns.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use locald_core::lifecycle::{RunnerError, Volume};

use crate::config::{passwd_entries, Bind, RootMode, SandboxConfig, DEFAULT_PATH};
use crate::sandbox::{HOSTNAME, MARKER, REPORT_FILE};
use crate::{ids, read_report, rootfs, ContainerRunner};

/// What to run, as the image config and the user's flags decided.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The image's root filesystem (the cached tree).
    pub rootfs: PathBuf,
    /// The program (absolute, or looked up in the image's `PATH`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment, in order (later entries win).
    pub env: Vec<(String, String)>,
    /// Its working directory (absolute).
    pub cwd: String,
    /// The user and group it runs as inside.
    pub uid: u32,
    /// The group.
    pub gid: u32,
    /// A network namespace with loopback only.
    pub network_none: bool,
    /// Host directories mounted in.
    pub volumes: Vec<Volume>,
    /// Give the process a terminal of its own (a pty whose master
    /// [`Running::take_pty`] hands out), as its controlling terminal.
    pub tty: bool,
}

/// A started image process.
pub struct Running {
    child: Child,
    dir: tempfile::TempDir,
    pty: Option<std::os::fd::OwnedFd>,
}

impl Running {
    /// The master side of the process's terminal, when it has one: what is
    /// written to it is the process's input, what is read its output.
    pub fn take_pty(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.pty.take()
    }

    /// The helper's pid: signals sent to it reach the process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process and returns its exit code (128 + signal when a
    /// signal ended it), or why the sandbox could not be set up.
    pub fn wait(mut self) -> Result<i32, RunnerError> {
        let status = self.child.wait().map_err(|source| RunnerError::Io {
            what: "waiting for the sandbox".into(),
            source,
        })?;
        let records = read_report(&self.dir.path().join(REPORT_FILE));
        for record in &records {
            if let crate::sandbox::Record::Failed {
                message,
                errno,
                userns,
            } = record
            {
                // User namespaces refused: say why, as the build's probe does.
                if let (Some(step), Some(errno)) = (userns, errno) {
                    return Err(crate::probe::diagnose(
                        (*step).into(),
                        *errno,
                        &crate::probe::Settings::read(),
                    ));
                }
                return Err(RunnerError::Other(format!(
                    "the sandbox for the image could not be set up: {message}"
                )));
            }
        }
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            _ => 1,
        })
    }
}

/// Targets a volume may not cover in `locald run`.
const RESERVED: [&str; 2] = ["/proc", "/dev"];

impl ContainerRunner {
    /// Starts `spec` in a sandbox with the caller's stdin, stdout and stderr.
    pub fn start_image(&self, spec: &RunSpec) -> Result<Running, RunnerError> {
        let mut binds = Vec::new();
        for v in &spec.volumes {
            let target = v.target.trim_end_matches('/');
            if target.is_empty()
                || RESERVED
                    .iter()
                    .any(|r| target == *r || target.starts_with(&format!("{r}/")))
            {
                return Err(RunnerError::Unavailable {
                    message: format!(
                        "--volume target {} would cover {}: the sandbox's own /, /proc and /dev are not replaceable",
                        v.target,
                        if target.is_empty() { "/" } else { target }
                    ),
                    hint: "mount it somewhere else, e.g. --volume ./data:/data".to_owned(),
                });
            }
            if !v.host.is_dir() {
                return Err(RunnerError::Unavailable {
                    message: format!("--volume host path {} is not a directory", v.host.display()),
                    hint: "name an existing directory".to_owned(),
                });
            }
            let host = std::fs::canonicalize(&v.host).map_err(|source| RunnerError::Io {
                what: format!("resolving the volume {}", v.host.display()),
                source,
            })?;
            binds.push(Bind {
                what: "volume".to_owned(),
                host,
                target: v.target.clone(),
                read_only: v.read_only,
            });
        }
        let rootfs = std::fs::canonicalize(&spec.rootfs).map_err(|source| RunnerError::Io {
            what: format!("resolving the image root {}", spec.rootfs.display()),
            source,
        })?;
        let mut env = spec.env.clone();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
        }
        let program = resolve_program(&rootfs, &spec.program, &env)?;
        let config = SandboxConfig {
            parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
            rootfs,
            root_mode: RootMode::Overlay,
            binds,
            home_mount: None,
            uid: spec.uid,
            gid: spec.gid,
            host_ids: if rustix::process::geteuid().is_root() {
                ids::for_root()
            } else {
                None
            },
            program,
            args: spec.args.clone(),
            env,
            cwd: spec.cwd.clone(),
            hostname: HOSTNAME.to_owned(),
            network_none: spec.network_none,
            writable_root: true,
            controlling_tty: spec.tty,
        };
        let dir = crate::sandbox_dir(&config, "locald-run-")?;
        let mut command = Command::new(&self.helper_exe);
        command.arg(MARKER).arg(dir.path()).env_clear();
        // The sandbox gets a process group of its own; the caller forwards
        // signals. With a terminal, the process gets a pty of its own (its
        // controlling terminal) whose master the caller relays.
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let pty = if spec.tty {
            let (master, slave) = open_pty().map_err(|source| RunnerError::Io {
                what: "opening a terminal for the process".into(),
                source,
            })?;
            let io_err = |source| RunnerError::Io {
                what: "sharing the process's terminal".into(),
                source,
            };
            command
                .stdin(Stdio::from(slave.try_clone().map_err(io_err)?))
                .stdout(Stdio::from(slave.try_clone().map_err(io_err)?))
                .stderr(Stdio::from(slave));
            Some(master)
        } else {
            command
                .stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
            None
        };
        let child = command.spawn().map_err(|source| RunnerError::Io {
            what: format!("starting the sandbox helper {}", self.helper_exe.display()),
            source,
        })?;
        drop(command);
        Ok(Running { child, dir, pty })
    }
}

/// A new pty: (master, slave), the slave opened without becoming our
/// controlling terminal, with the window size of our own terminal.
fn open_pty() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdout()) {
        let _ = rustix::termios::tcsetwinsize(&slave, size);
    }
    Ok((master, slave))
}

/// `program` as an absolute path inside the image: as it is when absolute, else
/// the first match in the image's `PATH` (as a runtime looks it up). A program
/// the image does not have is an error naming it.
fn resolve_program(
    root: &Path,
    program: &str,
    env: &[(String, String)],
) -> Result<String, RunnerError> {
    let missing = |what: String| {
        RunnerError::Unavailable {
        message: what,
        hint: "`locald image inspect IMAGE` shows the image's entrypoint and cmd; pass --entrypoint or a command after --".to_owned(),
    }
    };
    if program.contains('/') {
        let abs = if program.starts_with('/') {
            program.to_owned()
        } else {
            format!("/{program}")
        };
        return match rootfs::resolve_in_root(root, Path::new(&abs)) {
            Some(p) if p.is_file() => Ok(abs),
            _ => Err(missing(format!("the image has no program {program}"))),
        };
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{}/{program}", dir.trim_end_matches('/'));
        if let Some(p) = rootfs::resolve_in_root(root, Path::new(&candidate)) {
            if p.is_file()
                && std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
            {
                return Ok(candidate);
            }
        }
    }
    Err(missing(format!(
        "the image has no program {program} in its PATH ({path})"
    )))
}

/// `uid`/`gid` for the image config's `User` (or `--user`): numbers as they
/// are, names through the image's own `/etc/passwd` and `/etc/group`. Empty:
/// root.
pub fn resolve_user(root: &Path, user: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |file: &str| {
        rootfs::resolve_in_root(root, Path::new(file))
            .and_then(|p| rootfs::read_small_file(&p))
            .unwrap_or_default()
    };
    let passwd = read("/etc/passwd");
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => {
            let gid = passwd_entries(&passwd).find(|e| e.uid == n).map(|e| e.gid);
            (n, gid.unwrap_or(n))
        }
        Err(_) => passwd_entries(&passwd)
            .find(|e| e.name == u)
            .map(|e| (e.uid, e.gid))
            .ok_or_else(|| format!("the image has no user {u:?} in its /etc/passwd"))?,
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let group = read("/etc/group");
                group
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse().ok())
                            .flatten()
                    })
                    .ok_or_else(|| format!("the image has no group {g:?} in its /etc/group"))?
            }
        },
    };
    Ok((uid, gid))
}

/// The home directory of `uid` in the image's /etc/passwd.
pub fn home_of(root: &Path, uid: u32) -> Option<String> {
    let passwd = rootfs::resolve_in_root(root, Path::new("/etc/passwd"))
        .and_then(|p| rootfs::read_small_file(&p))?;
    crate::config::home_from_passwd(&passwd, uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_by_name_and_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:app\n").expect("group");
        let r = dir.path();
        assert_eq!(resolve_user(r, ""), Ok((0, 0)));
        assert_eq!(resolve_user(r, "app"), Ok((1000, 1001)));
        assert_eq!(resolve_user(r, "1000"), Ok((1000, 1001)));
        assert_eq!(resolve_user(r, "4242"), Ok((4242, 4242)));
        assert_eq!(resolve_user(r, "app:staff"), Ok((1000, 50)));
        assert_eq!(resolve_user(r, "app:7"), Ok((1000, 7)));
        assert!(resolve_user(r, "nobody-here").is_err());
        assert!(resolve_user(r, "app:nogroup").is_err());
        assert_eq!(home_of(r, 1000).as_deref(), Some("/home/app"));
    }
}

//! `locald-runner-native`: runs the builder's CNB lifecycle (`/cnb/lifecycle/creator`)
//! directly on the host, with host paths for the logical build directories.
//!
//! No isolation at all: buildpacks run with the host's libraries and tools, so a
//! build only works where the host resembles the builder's stack (`locald_build::host`
//! says where it does not). The environment is the plan's (the builder image's
//! config `Env` and the CNB variables) except `PATH` and `HOME`, which stay the
//! host's: the builder's `PATH` names directories of its own root filesystem.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use locald_core::cancel::Cancel;
use locald_core::lifecycle::{
    Dir, LifecyclePlan, LifecycleRunner, LineWatcher, Network, RunStatus, RunnerError,
};

/// Runs the lifecycle on the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct NativeRunner;

/// Host variables kept for the lifecycle: what locates things on the host.
const HOST_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

impl NativeRunner {
    /// The command line the lifecycle gets: the plan's arguments with host paths.
    /// Run by anyone but root, the lifecycle cannot switch to the builder's user,
    /// so `-uid`/`-gid` become the caller's own ids.
    pub fn command_line(plan: &LifecyclePlan) -> Vec<String> {
        let mut args = plan.render_args(|dir, rel| plan.host.get(dir).join(rel));
        let uid = rustix::process::geteuid().as_raw();
        if uid != 0 {
            let gid = rustix::process::getegid().as_raw();
            let mut i = 0;
            while i + 1 < args.len() {
                match args[i].as_str() {
                    "-uid" => args[i + 1] = uid.to_string(),
                    "-gid" => args[i + 1] = gid.to_string(),
                    _ => {}
                }
                i += 1;
            }
        }
        args
    }
}

impl LifecycleRunner for NativeRunner {
    fn name(&self) -> &'static str {
        "native"
    }

    fn on_host(&self) -> bool {
        true
    }

    fn run(
        &self,
        plan: &LifecyclePlan,
        watcher: &LineWatcher,
        cancel: &Cancel,
    ) -> Result<RunStatus, RunnerError> {
        if plan.network != Network::Host || !plan.volumes.is_empty() {
            return Err(RunnerError::Unavailable {
                message: "the native runner runs the lifecycle on the host, in the host's network and file system: it cannot give it --network none or --volume mounts".to_owned(),
                hint: "use --runner container".to_owned(),
            });
        }
        let program = plan.host.builder.join(&plan.program);
        check_program(&program, &plan.program)?;
        let uid = rustix::process::geteuid().as_raw();
        if uid == 0 && plan.uid != 0 {
            // The lifecycle drops to the build user: it must reach every directory.
            for dir in [
                Dir::Builder,
                Dir::App,
                Dir::Layers,
                Dir::Platform,
                Dir::Cache,
                Dir::Layout,
            ] {
                if let Err(blocked) = reachable_by(plan.host.get(dir), plan.uid, plan.gid) {
                    return Err(RunnerError::Unavailable {
                        message: format!(
                            "the build user (uid {}) cannot reach {}: {} is closed to it",
                            plan.uid,
                            plan.host.get(dir).display(),
                            blocked.display()
                        ),
                        hint: "run locald as a normal user, use the container runner, or put the cache where the build user can reach it (XDG_DATA_HOME=/var/tmp/locald-data, say)".to_owned(),
                    });
                }
            }
            tracing::warn!(
                "running buildpacks natively as host uid {}: they can read whatever that user can (the container runner isolates them)",
                plan.uid
            );
        }
        // The lifecycle looks the user it runs as (root: the build user it
        // switches to; anyone else: themselves) up in this host's /etc/passwd
        // for HOME and USER, and stops on an unknown uid: say so before it runs.
        let runs_as = if uid == 0 { plan.uid } else { uid };
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        if passwd_home(&passwd, runs_as).is_none() {
            let (message, hint) = if uid == 0 {
                (
                    format!(
                        "the builder's build user (uid {runs_as}) is not in this host's \
                         /etc/passwd: run natively by root, the lifecycle switches to it and \
                         looks it up there"
                    ),
                    format!(
                        "use the container runner, run locald as a normal user, or add the user \
                         (useradd --uid {runs_as} --no-create-home cnb-build)"
                    ),
                )
            } else {
                (
                    format!(
                        "you (uid {runs_as}) are not in this host's /etc/passwd: the lifecycle \
                         looks the user it runs as up there (HOME and USER) and stops on an \
                         unknown uid"
                    ),
                    "use the container runner (it maps you to the builder's user), or give \
                     your uid an /etc/passwd entry"
                        .to_owned(),
                )
            };
            return Err(RunnerError::Unavailable { message, hint });
        }
        if uid != 0 && uid != plan.uid {
            tracing::info!(
                "running the {} as you (uid {uid}) rather than the builder's user {}: only root can switch users (the container runner maps you to it)",
                plan.phase,
                plan.uid
            );
        }
        let mut command = Command::new(&program);
        command
            .args(Self::command_line(plan))
            .env_clear()
            .envs(
                plan.env
                    .iter()
                    .filter(|(k, _)| !HOST_ENV.contains(&k.as_str()))
                    .map(|(k, v)| (k, v)),
            )
            .envs(
                HOST_ENV
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            // The lifecycle reads the builder's build.env from /cnb/build-config by
            // default; here the builder tree is elsewhere.
            .env(
                "CNB_BUILD_CONFIG_DIR",
                plan.host.builder.join("cnb/build-config"),
            )
            .current_dir(&plan.host.app)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches locald alone, which forwards it
            // (and can then kill whatever the lifecycle left behind).
            .process_group(0);
        if uid != 0 {
            // As with -uid/-gid (see `command_line`): the build runs as the caller.
            let gid = rustix::process::getegid().as_raw();
            command
                .env("CNB_USER_ID", uid.to_string())
                .env("CNB_GROUP_ID", gid.to_string());
        }
        tracing::debug!(?command, "starting the lifecycle natively");
        let child = command.spawn().map_err(|source| RunnerError::Io {
            what: format!("cannot start {}", program.display()),
            source,
        })?;
        locald_core::lifecycle::supervise(child, &plan.phase, true, watcher, cancel)
    }
}

/// The home directory of `uid` in the text of an `/etc/passwd`, if it has one.
fn passwd_home(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse::<u32>() == Ok(uid)).then(|| f[5])
    })
}

/// Whether `uid`/`gid` may search every directory from `/` down to `path`
/// (ownership and mode bits; ACLs are not read). The first closed directory
/// otherwise.
fn reachable_by(path: &Path, uid: u32, gid: u32) -> Result<(), std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut dirs: Vec<&Path> = path.ancestors().collect();
    dirs.reverse();
    for dir in dirs {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        let bit = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid {
            0o010
        } else {
            0o001
        };
        if meta.is_dir() && mode & bit == 0 {
            return Err(dir.to_path_buf());
        }
    }
    Ok(())
}

/// The lifecycle program must be an executable regular file in the builder tree.
fn check_program(program: &Path, rel: &Path) -> Result<(), RunnerError> {
    let meta = std::fs::metadata(program).map_err(|e| {
        RunnerError::Other(format!(
            "the builder has no /{}: {} ({e}); is the image a CNB builder?",
            rel.display(),
            program.display()
        ))
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(RunnerError::Other(format!(
            "the builder's /{} is not an executable file ({})",
            rel.display(),
            program.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      # comment\n\
                      short:x:5\n\
                      cnb:x:1001:1002:CNB user,,,:/home/cnb:/bin/sh\n";
        for (uid, want) in [
            (0, Some("/root")),
            (1001, Some("/home/cnb")),
            (5, None),
            (7, None),
        ] {
            assert_eq!(passwd_home(passwd, uid), want, "uid {uid}");
        }
    }

    #[test]
    fn reachability() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open/inner");
        std::fs::create_dir_all(&open).expect("mkdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(
            dir.path().join("open"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        // Owned by whoever runs the test; a stranger goes by the "other" bits.
        assert_eq!(reachable_by(&open, 54321, 54321), Ok(()));
        std::fs::set_permissions(
            dir.path().join("open"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        assert_eq!(
            reachable_by(&open, 54321, 54321),
            Err(dir.path().join("open"))
        );
    }

    #[test]
    fn missing_or_non_executable_program() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rel = Path::new("cnb/lifecycle/creator");
        let err = check_program(&dir.path().join(rel), rel).expect_err("missing");
        assert!(
            err.to_string().contains("has no /cnb/lifecycle/creator"),
            "{err}"
        );
        std::fs::create_dir_all(dir.path().join("cnb/lifecycle")).expect("mkdir");
        std::fs::write(dir.path().join(rel), "#!/bin/sh\n").expect("write");
        let err = check_program(&dir.path().join(rel), rel).expect_err("not executable");
        assert!(err.to_string().contains("not an executable"), "{err}");
    }
}

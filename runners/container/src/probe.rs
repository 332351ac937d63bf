//! Whether user namespaces work here, and if not, why, in a sentence the user can
//! act on. The probe forks a child that tries what the sandbox does first; the
//! diagnosis is a pure function of the failing step, its errno and the sysctls.

use locald_core::lifecycle::RunnerError;

use crate::sys::{self, ProbeStep};

/// The kernel settings that decide whether user namespaces are allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `kernel.unprivileged_userns_clone` (Debian's patch; absent elsewhere).
    pub unprivileged_userns_clone: Option<String>,
    /// `user.max_user_namespaces`.
    pub max_user_namespaces: Option<String>,
    /// `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu 23.10 and later).
    pub apparmor_restrict: Option<String>,
    /// The `Seccomp:` mode of this process (2 = filtered).
    pub seccomp: Option<String>,
    /// Whether we run as root (the Debian and AppArmor switches only restrict
    /// unprivileged users).
    pub root: bool,
}

impl Settings {
    /// Read them from /proc.
    pub(crate) fn read() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let seccomp = read("/proc/self/status").and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map(|v| v.trim().to_owned())
        });
        Settings {
            unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            max_user_namespaces: read("/proc/sys/user/max_user_namespaces"),
            apparmor_restrict: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
            seccomp,
            root: rustix::process::geteuid().is_root(),
        }
    }
}

/// The hint every diagnosis ends with.
const NATIVE: &str = "or build with `--runner native` (no isolation)";

/// Why the sandbox cannot start, from the step that failed and its errno.
pub(crate) fn diagnose(step: ProbeStep, errno: i32, s: &Settings) -> RunnerError {
    let is = |v: &Option<String>, want: &str| v.as_deref() == Some(want);
    let unavailable = |message: String, hint: String| RunnerError::Unavailable { message, hint };
    let cause = std::io::Error::from_raw_os_error(errno);

    if is(&s.max_user_namespaces, "0") {
        return unavailable(
            "user namespaces are disabled on this machine (the sysctl `user.max_user_namespaces` is 0)".into(),
            format!("enable them as root with `sysctl -w user.max_user_namespaces=15000`, {NATIVE}"),
        );
    }
    if errno == libc::ENOSPC {
        let limit = s.max_user_namespaces.as_deref().unwrap_or("?");
        return unavailable(
            format!("no more user namespaces can be created (the sysctl `user.max_user_namespaces` is {limit} and it is reached)"),
            format!("raise it as root with `sysctl -w user.max_user_namespaces=15000`, {NATIVE}"),
        );
    }
    if errno == libc::EINVAL && step == ProbeStep::Unshare {
        return unavailable(
            "this kernel has no user namespaces (built without CONFIG_USER_NS)".into(),
            format!("use a kernel with user namespaces, {NATIVE}"),
        );
    }
    if errno == libc::EPERM || errno == libc::EACCES {
        if !s.root && is(&s.unprivileged_userns_clone, "0") {
            return unavailable(
                "unprivileged user namespaces are disabled (the sysctl `kernel.unprivileged_userns_clone` is 0)".into(),
                format!("enable them as root with `sysctl -w kernel.unprivileged_userns_clone=1`, {NATIVE}"),
            );
        }
        if !s.root && is(&s.apparmor_restrict, "1") {
            return unavailable(
                "AppArmor restricts unprivileged user namespaces (the sysctl `kernel.apparmor_restrict_unprivileged_userns` is 1, as on Ubuntu 23.10 and later)".into(),
                format!(
                    "allow them as root with `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile for locald that grants `userns`, {NATIVE}"
                ),
            );
        }
        if is(&s.seccomp, "2") {
            return unavailable(
                format!("creating a user namespace is forbidden here, probably by a seccomp filter (a container?): {cause}"),
                format!("allow user namespaces in the container's seccomp profile (docker: `--security-opt seccomp=unconfined`), {NATIVE}"),
            );
        }
    }
    if step == ProbeStep::Proc && (errno == libc::EPERM || errno == libc::EACCES) {
        return unavailable(
            format!("mounting a fresh /proc for the sandbox is not allowed here ({cause}), as in a container whose /proc is partly masked"),
            format!("run the container with an unmasked /proc (docker: `--security-opt systempaths=unconfined`), {NATIVE}"),
        );
    }
    let what = match step {
        ProbeStep::Unshare => "creating a user and mount namespace",
        ProbeStep::IdMap => "mapping our user into a user namespace",
        ProbeStep::Mount => "mounting inside a user namespace",
        ProbeStep::Proc => "mounting /proc in a new pid namespace",
    };
    unavailable(
        format!("user namespaces do not work here: {what} failed: {cause}"),
        format!("check the kernel's user namespace settings (`user.max_user_namespaces`, `kernel.unprivileged_userns_clone`, AppArmor, seccomp), {NATIVE}"),
    )
}

/// Tell quickly whether the container runner can work here: a forked child tries a
/// new user and mount namespace, maps our user, changes a mount and mounts a fresh
/// /proc in a new pid namespace. On failure,
/// [`RunnerError::Unavailable`] names the cause (`user.max_user_namespaces=0`,
/// Debian's `kernel.unprivileged_userns_clone=0`, AppArmor's
/// `kernel.apparmor_restrict_unprivileged_userns=1`, a seccomp filter) and the
/// hint says what to change or to use `--runner native`.
pub fn probe() -> Result<(), RunnerError> {
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    match sys::probe_userns(uid, gid) {
        Ok(None) => Ok(()),
        Ok(Some((step, errno))) => Err(diagnose(step, errno, &Settings::read())),
        Err(source) => Err(RunnerError::Io {
            what: "probing whether user namespaces work".into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = Settings {
            unprivileged_userns_clone: None,
            max_user_namespaces: Some("63000".into()),
            apparmor_restrict: None,
            seccomp: Some("0".into()),
            root: false,
        };
        f(&mut s);
        s
    }

    fn texts(e: RunnerError) -> (String, String) {
        match e {
            RunnerError::Unavailable { message, hint } => (message, hint),
            other => panic!("not Unavailable: {other:?}"),
        }
    }

    #[test]
    fn diagnosis_table() {
        use ProbeStep::*;
        let cases: Vec<(ProbeStep, i32, Settings, &str, &str)> = vec![
            (
                Unshare,
                libc::ENOSPC,
                settings(|s| s.max_user_namespaces = Some("0".into())),
                "`user.max_user_namespaces` is 0",
                "sysctl -w user.max_user_namespaces=",
            ),
            (
                Unshare,
                libc::ENOSPC,
                settings(|_| {}),
                "is 63000 and it is reached",
                "sysctl -w user.max_user_namespaces=",
            ),
            (
                Unshare,
                libc::EPERM,
                settings(|s| s.unprivileged_userns_clone = Some("0".into())),
                "`kernel.unprivileged_userns_clone` is 0",
                "sysctl -w kernel.unprivileged_userns_clone=1",
            ),
            (
                IdMap,
                libc::EPERM,
                settings(|s| s.apparmor_restrict = Some("1".into())),
                "AppArmor",
                "kernel.apparmor_restrict_unprivileged_userns=0",
            ),
            (
                Unshare,
                libc::EPERM,
                settings(|s| s.seccomp = Some("2".into())),
                "seccomp",
                "seccomp=unconfined",
            ),
            (
                Unshare,
                libc::EINVAL,
                settings(|_| {}),
                "CONFIG_USER_NS",
                "--runner native",
            ),
            (
                Mount,
                libc::EPERM,
                settings(|_| {}),
                "mounting inside a user namespace failed",
                "--runner native",
            ),
            (
                Proc,
                libc::EPERM,
                settings(|_| {}),
                "/proc is partly masked",
                "systempaths=unconfined",
            ),
            // Root is not concerned by the unprivileged-only switches.
            (
                Unshare,
                libc::EPERM,
                settings(|s| {
                    s.root = true;
                    s.unprivileged_userns_clone = Some("0".into());
                    s.apparmor_restrict = Some("1".into());
                }),
                "creating a user and mount namespace failed",
                "--runner native",
            ),
        ];
        for (step, errno, s, message_has, hint_has) in cases {
            let (message, hint) = texts(diagnose(step, errno, &s));
            assert!(
                message.contains(message_has),
                "{message:?} lacks {message_has:?}"
            );
            assert!(hint.contains(hint_has), "{hint:?} lacks {hint_has:?}");
            assert!(hint.contains("--runner native"), "{hint:?}");
        }
    }
}

//! What a test needs from the machine, and what happens when it is missing.
//!
//! A test that cannot run where it is started must never pass quietly. Outside CI
//! it prints one `SKIP` line with the reason and returns; under `CI=true` it fails,
//! naming what is missing and how to get it (`scripts/test` installs and creates
//! everything the suite needs, so in CI a missing piece is a bug of the script).
//!
//! Use it as `let Some(x) = require::ok(thing(), "what it is for") else { return };`
//! or `if !require::tool("skopeo") { return; }`.

use std::fmt::Display;

/// The environment variable that makes every skip a failure.
pub const CI_ENV: &str = "CI";

/// Whether the suite runs under CI (`CI=true` or `CI=1`): skips are failures.
pub fn in_ci() -> bool {
    std::env::var(CI_ENV).is_ok_and(|v| v == "true" || v == "1")
}

/// This test cannot run here because of `why`: under CI a panic naming it, else
/// one `SKIP` line on stderr.
#[track_caller]
pub fn skip(why: impl Display) {
    let at = std::panic::Location::caller();
    if in_ci() {
        panic!(
            "cannot run under CI=true: {why} ({at}). `scripts/test` installs the packages \
             and creates the users the tests need: run the suite through it"
        );
    }
    say(format_args!("SKIP ({at}): {why}"));
}

/// One line on the real stderr: libtest captures `eprintln!` of passing tests,
/// and a skip must show in the run's output.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `Some(value)`, or `None` after [`skip`] with the error and what it was for.
#[track_caller]
pub fn ok<T, E: Display>(r: Result<T, E>, for_what: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            skip(format_args!("{for_what}: {e}"));
            None
        }
    }
}

/// Whether `tool` is on `PATH`; [`skip`]s (naming its Debian package) when not.
#[track_caller]
pub fn tool(tool: &str) -> bool {
    if crate::peers::have(tool) {
        return true;
    }
    skip(format_args!(
        "`{tool}` is not installed (apt-get install {})",
        package_of(tool)
    ));
    false
}

/// Whether the tests run as root; [`skip`]s when not.
#[track_caller]
pub fn root(for_what: &str) -> bool {
    if crate::peers::is_root() {
        return true;
    }
    skip(format_args!("{for_what} needs root"));
    false
}

/// The Debian package that installs `tool`.
pub fn package_of(tool: &str) -> &str {
    match tool {
        "htpasswd" => "apache2-utils",
        "keyctl" => "keyutils",
        "busybox" => "busybox-static",
        "unshare" | "nsenter" => "util-linux",
        other => other,
    }
}

/// The real lifecycle the tests use instead of the stand-in, when
/// `LOCALD_TEST_LIFECYCLE` names one.
pub const REAL_LIFECYCLE_ENV: &str = "LOCALD_TEST_LIFECYCLE";

/// Whether the tests run against a real lifecycle (`LOCALD_TEST_LIFECYCLE`).
pub fn real_lifecycle() -> bool {
    std::env::var_os(REAL_LIFECYCLE_ENV).is_some_and(|v| !v.is_empty())
}

/// `true` when the test makes sense only with the stand-in and a real lifecycle is
/// in use: prints why it does not run (not a failure, even in CI: the mode is a
/// choice, not a missing piece).
pub fn standin_only(why: &str) -> bool {
    if real_lifecycle() {
        say(format_args!(
            "SKIP with a real lifecycle ({REAL_LIFECYCLE_ENV}): {why}"
        ));
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_of_tools() {
        for (tool, package) in [
            ("htpasswd", "apache2-utils"),
            ("keyctl", "keyutils"),
            ("busybox", "busybox-static"),
            ("skopeo", "skopeo"),
        ] {
            assert_eq!(package_of(tool), package, "{tool}");
        }
    }
}

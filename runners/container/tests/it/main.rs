//! Integration tests of the container runner, in real namespaces.
//!
//! A harness of its own (`harness = false`, libtest's arguments through
//! `libtest-mimic`: filters, `--exact`, `--skip`, `--list`, `--test-threads`,
//! `--nocapture`, `--format`, ...): this binary is also the sandbox helper
//! (`sandbox_main_if_requested` runs first, so `current_exe()` serves as the
//! runner's helper), and when started as root it runs the whole suite a second
//! time as an unprivileged user (`locald-test`, made when missing, or
//! `LOCALD_IT_USER`), with the same arguments.
//!
//! The tests run one at a time unless `--test-threads` says otherwise (they run
//! sandboxes and kill processes; each finds its own by a token, so they can also
//! run side by side).

mod fixture;
mod hardening;
mod sandbox;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use libtest_mimic::{Arguments, Trial};
use locald_tests::require;

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    ("probe_works", sandbox::probe_works),
    ("inspect_auto", sandbox::inspect_auto),
    ("inspect_overlay", sandbox::inspect_overlay),
    ("inspect_bind_mounts", sandbox::inspect_bind_mounts),
    ("plan_home", sandbox::plan_home),
    ("exit_codes", sandbox::exit_codes),
    ("output", sandbox::output),
    ("cancel", sandbox::cancel),
    ("helper_killed", sandbox::helper_killed),
    ("locald_killed", sandbox::locald_killed),
    ("bad_builder", sandbox::bad_builder),
    ("userns_disabled", sandbox::userns_disabled),
    ("masked_proc", sandbox::masked_proc),
    ("proc_locked", hardening::proc_locked),
    ("root_build_ids", hardening::root_build_ids),
    ("device_nodes", hardening::device_nodes),
    ("leaked_fd", hardening::leaked_fd),
    ("keyring", hardening::keyring),
    ("fifo_passwd", hardening::fifo_passwd),
];

/// Set in the environment of the suite's second run, as the unprivileged user.
const CHILD_ENV: &str = "LOCALD_IT_UNPRIVILEGED_CHILD";

/// Environment passed on to the second run (its environment is otherwise cleared).
const PASSED_ON: &[&str] = &[
    require::CI_ENV,
    require::REAL_LIFECYCLE_ENV,
    "RUST_BACKTRACE",
];

fn main() {
    locald_runner_container::sandbox_main_if_requested();

    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--child") {
        let result = match raw.get(1).map(String::as_str) {
            Some(name @ "userns-disabled") => {
                sandbox::unavailable_child(name, "user.max_user_namespaces")
            }
            Some(name @ "masked-proc") => {
                sandbox::unavailable_child(name, "/proc is partly masked")
            }
            Some("leaked-fd") => hardening::leaked_fd_child(),
            Some("keyring") => hardening::keyring_child(),
            other => Err(format!("unknown child mode {other:?}")),
        };
        if let Err(e) = result {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    if raw.first().map(String::as_str) == Some("--run-until-killed") {
        sandbox::run_until_killed();
        return;
    }

    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let root = rustix::process::geteuid().is_root();
    let who = if root {
        "root".to_owned()
    } else {
        format!("uid {}", rustix::process::geteuid().as_raw())
    };
    let missing = missing_prerequisite();
    if let (Some(why), false) = (&missing, require::in_ci()) {
        println!("SKIP every test (ignored): {why}");
    }
    let trials: Vec<Trial> = TESTS
        .iter()
        .map(|&(name, test)| {
            let ignored = missing.is_some() && !require::in_ci();
            let missing = missing.clone();
            Trial::test(name, move || {
                if let Some(why) = missing {
                    require::skip(why);
                    return Ok(());
                }
                let _watchdog = watchdog(name, Duration::from_secs(120));
                test();
                Ok(())
            })
            .with_kind(who.clone())
            .with_ignored_flag(ignored)
        })
        .collect();
    let listing = args.list;
    let mut failed = libtest_mimic::run(&args, trials).has_failed();

    if root && std::env::var_os(CHILD_ENV).is_none() && !listing {
        let user = std::env::var("LOCALD_IT_USER").ok();
        match run_as(user.as_deref()) {
            Ok(true) => {}
            Ok(false) => failed = true,
            Err(e) => {
                require::skip(format_args!("the run as an unprivileged user: {e}"));
            }
        }
    }
    if failed {
        std::process::exit(101);
    }
}

/// What the whole suite needs from the host, when something is missing.
fn missing_prerequisite() -> Option<String> {
    if !std::path::Path::new("/usr/bin/busybox").is_file() {
        return Some(
            "the fixture's root is /usr/bin/busybox: apt-get install busybox-static".to_owned(),
        );
    }
    None
}

/// Kills the process if a test hangs (a stuck sandbox must not stall CI).
struct Watchdog {
    _done: std::sync::mpsc::Sender<()>,
}

fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            println!("test {name} ... TIMED OUT after {limit:?}");
            std::process::exit(2);
        }
    });
    Watchdog { _done: tx }
}

/// Run the suite again, with this run's arguments, as `user` (the tests' own
/// unprivileged user by default), from a copy of this binary that the user can
/// read and execute. `Ok(passed)`, or why it could not start.
fn run_as(user: Option<&str>) -> Result<bool, String> {
    let u = match user {
        Some(name) => locald_tests::standin::lookup_user(name)
            .map_err(|e| format!("LOCALD_IT_USER={name}: {e}"))?,
        None => locald_tests::standin::test_user()?,
    };
    let (name, uid, gid) = (u.name, u.uid, u.gid);
    let dir = tempfile::Builder::new()
        .prefix("locald-it-bin-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let exe = dir.path().join("it");
    std::fs::copy(std::env::current_exe().map_err(|e| e.to_string())?, &exe)
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;

    println!("\nrunning the suite again as {name} (uid {uid})");
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/tmp")
        .env("TMPDIR", "/tmp")
        .env(CHILD_ENV, "1");
    for var in PASSED_ON {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let status = cmd
        .status()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    Ok(status.success())
}

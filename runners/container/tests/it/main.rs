//! Integration tests of the container runner, in real namespaces.
//!
//! A custom harness (`harness = false`): this binary is also the sandbox helper
//! (`sandbox_main_if_requested` runs first, so `current_exe()` serves as the
//! runner's helper), and when started as root it runs the whole suite a second
//! time as the unprivileged user `lbtest` (or `LOCALD_IT_USER`).
//!
//! Arguments: an optional name filter (substring); `--list`.

mod fixture;
mod hardening;
mod sandbox;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

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

/// The user the suite is repeated as when it runs as root.
const DEFAULT_USER: &str = "lbtest";

fn main() {
    locald_runner_container::sandbox_main_if_requested();

    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let result = match args.get(1).map(String::as_str) {
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
    if args.first().map(String::as_str) == Some("--run-until-killed") {
        sandbox::run_until_killed();
        return;
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    let unprivileged_child = args.iter().any(|a| a == "--unprivileged-child");
    // Flags cargo passes to every test binary are ignored.
    let filter: Option<&str> = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(String::as_str);

    let who = if rustix::process::geteuid().is_root() {
        "root".to_owned()
    } else {
        format!("uid {}", rustix::process::geteuid().as_raw())
    };
    let mut failed = run_suite(filter, &who);

    if rustix::process::geteuid().is_root() && !unprivileged_child {
        let user = std::env::var("LOCALD_IT_USER").unwrap_or_else(|_| DEFAULT_USER.to_owned());
        match run_as(&user, filter) {
            Ok(true) => {}
            Ok(false) => failed += 1,
            Err(e) => {
                println!("unprivileged run as {user}: FAILED: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        println!("\n{failed} failed");
        std::process::exit(1);
    }
}

fn run_suite(filter: Option<&str>, who: &str) -> usize {
    let mut failed = 0;
    for (name, test) in TESTS {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let started = Instant::now();
        let watchdog = watchdog(name, Duration::from_secs(120));
        let result = std::panic::catch_unwind(AssertUnwindSafe(test));
        drop(watchdog);
        match result {
            Ok(()) => println!("test {name} ({who}) ... ok ({:.1?})", started.elapsed()),
            Err(_) => {
                println!("test {name} ({who}) ... FAILED");
                failed += 1;
            }
        }
    }
    failed
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

/// Run the suite again as `user`, from a copy of this binary that the user can
/// read and execute.
fn run_as(user: &str, filter: Option<&str>) -> Result<bool, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    let (uid, gid) = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == user).then(|| (f[2].parse::<u32>(), f[3].parse::<u32>()))
        })
        .and_then(|(u, g)| Some((u.ok()?, g.ok()?)))
        .ok_or_else(|| format!("no user {user} in /etc/passwd"))?;
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

    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--unprivileged-child")
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/tmp")
        .env("TMPDIR", "/tmp");
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    Ok(status.success())
}

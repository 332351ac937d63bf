//! The sandbox, in real namespaces.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use locald_core::cancel::Cancel;
use locald_core::lifecycle::{LifecycleRunner, LineWatcher, RunStatus, RunnerError};
use locald_runner_container::RootMode;

use crate::fixture::{self, assert_no_process_left, run, run_with, snapshot, Fixture, GID, UID};

/// The script that reports what the lifecycle sees.
fn inspect_script(host_marker: &str) -> String {
    format!(
        r#"
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "pid=$$"
echo "args=$*"
echo "pwd=$(pwd)"
echo "home=$HOME"
echo "hostname=$(hostname)"
echo "etc-hostname=$(cat /etc/hostname)"
echo "pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\n' ' ')"
echo "pgid-sid=$(cut -d' ' -f5,6 /proc/$$/stat)"
echo "init-cmd=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "sigblk=$(awk '/^SigBlk:/ {{print $2}}' /proc/self/status)"
echo "sigign=$(awk '/^SigIgn:/ {{print $2}}' /proc/self/status)"
echo "init-ppid=$(awk '/^PPid:/ {{print $2}}' /proc/1/status)"
if test -e '{host_marker}'; then echo "marker=visible"; else echo "marker=hidden"; fi
if ls /root >/dev/null 2>&1; then echo "root-dir=visible"; else echo "root-dir=hidden"; fi
echo "app=$(cat /workspace/app.txt)"
for d in /workspace /layers /platform /cache /layout-repo /tmp "$HOME" /dev/shm; do
  if echo data > "$d/written-by-lifecycle" 2>/dev/null; then echo "write $d=ok"; else echo "write $d=fail"; fi
done
mkdir -p /layers/sub/dir && echo "mkdir-layers=ok"
for p in /x /cnb/x /cnb/lifecycle/x /usr/x /etc/x /home/x /bin/x /var/empty/x; do
  if touch "$p" 2>/dev/null; then echo "write $p=ok"; else echo "write $p=fail"; fi
done
if echo more >> /cnb/order.toml 2>/dev/null; then echo "append=ok"; else echo "append=fail"; fi
if rm -f /usr/bin/busybox.bak /etc/os-release 2>/dev/null && ! test -e /etc/os-release; then echo "rm=ok"; else echo "rm=fail"; fi
if chmod 777 /usr 2>/dev/null; then echo "chmod=ok"; else echo "chmod=fail"; fi
if mount -t tmpfs tmpfs /tmp 2>/dev/null; then echo "mount=ok"; else echo "mount=fail"; fi
if echo hi > /dev/null; then echo "devnull=ok"; else echo "devnull=fail"; fi
echo "zero=$(head -c 7 /dev/zero | wc -c)"
echo "urandom=$(head -c 9 /dev/urandom | wc -c)"
echo "dev=$(ls /dev | tr '\n' ' ')"
echo "stat-workspace=$(stat -c %u:%g /workspace)"
echo "profile=$(test -e /home/cnb/.profile && echo present || echo hidden)"
sed 's/^/resolv: /' /etc/resolv.conf
sed 's/^/mount: /' /proc/mounts
env | sed 's/^/env: /'
echo "done="
"#
    )
}

/// Everything the lifecycle sees and may do, as root or not, in a root mode.
fn inspect(mode: RootMode) {
    let f = Fixture::new();
    let marker = f.dir.path().join("host-marker");
    std::fs::write(&marker, "host only").expect("marker");
    f.creator(&inspect_script(&marker.display().to_string()));
    let before = snapshot(&f.host.builder);

    let out = run_with(&f.plan(), mode, &Cancel::new());
    assert_eq!(
        out.status(),
        RunStatus::Exited(0),
        "{}",
        out.lines.join("\n")
    );
    assert_eq!(out.value("uid"), UID.to_string());
    assert_eq!(out.value("gid"), GID.to_string());
    // The lifecycle is the init's first child; the init's parent is outside.
    assert_eq!(out.value("pid"), "2");
    assert_eq!(out.value("init-ppid"), "0");
    // Nothing of the sandbox's signal handling leaks into the lifecycle.
    assert_eq!(out.value("sigblk"), "0000000000000000");
    assert_eq!(out.value("sigign"), "0000000000000000");
    assert!(
        out.value("init-cmd").contains("__locald-sandbox"),
        "{}",
        out.value("init-cmd")
    );
    // In the init's session and process group, not in the helper's (a signal to
    // the helper's group must reach the lifecycle once, through the init).
    assert_eq!(out.value("pgid-sid"), "1 1");
    let pids: Vec<u32> = out
        .value("pids")
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert!(pids.contains(&1) && pids.contains(&2), "{pids:?}");
    assert!(
        pids.iter().all(|&p| p < 20),
        "host processes visible: {pids:?}"
    );
    assert_eq!(
        out.value("args"),
        format!(
            "-app /workspace -layers /layers -platform /platform/env {}",
            f.token
        )
    );
    assert_eq!(out.value("pwd"), "/workspace");
    assert_eq!(out.value("home"), "/home/cnb");
    assert_eq!(out.value("hostname"), "locald-build");
    assert_eq!(out.value("etc-hostname"), "builder-etc-hostname");
    assert_eq!(out.value("marker"), "hidden");
    assert_eq!(out.value("root-dir"), "hidden");
    assert_eq!(out.value("app"), "hello from the app");
    for d in [
        "/workspace",
        "/layers",
        "/platform",
        "/cache",
        "/layout-repo",
        "/tmp",
        "/home/cnb",
        "/dev/shm",
    ] {
        assert_eq!(out.value(&format!("write {d}")), "ok", "{d}");
    }
    assert_eq!(out.value("mkdir-layers"), "ok");
    for p in [
        "/x",
        "/cnb/x",
        "/cnb/lifecycle/x",
        "/usr/x",
        "/etc/x",
        "/home/x",
        "/bin/x",
        "/var/empty/x",
    ] {
        assert_eq!(out.value(&format!("write {p}")), "fail", "{p}");
    }
    for key in ["append", "rm", "chmod", "mount"] {
        assert_eq!(out.value(key), "fail", "{key}");
    }
    assert_eq!(out.value("devnull"), "ok");
    assert_eq!(out.value("zero"), "7");
    assert_eq!(out.value("urandom"), "9");
    let dev = out.value("dev");
    for name in [
        "null", "zero", "full", "random", "urandom", "fd", "stdin", "stdout", "stderr", "shm",
    ] {
        assert!(
            dev.split_whitespace().any(|n| n == name),
            "/dev lacks {name}: {dev}"
        );
    }
    assert_eq!(out.value("stat-workspace"), format!("{UID}:{GID}"));
    // HOME is a fresh tmpfs.
    assert_eq!(out.value("profile"), "hidden");
    assert_eq!(out.value("done"), "");

    // The host's resolv.conf, read-only.
    if let Ok(host) = std::fs::read_to_string("/etc/resolv.conf") {
        let want: Vec<String> = host.lines().map(str::to_owned).collect();
        assert_eq!(out.prefixed("resolv: "), want);
    }
    // The root is what the mode says, read-only.
    let mounts = out.prefixed("mount: ");
    let root = mounts
        .iter()
        .find(|m| m.split_whitespace().nth(1) == Some("/"))
        .expect("a / mount");
    let fstype = root.split_whitespace().nth(2).expect("fstype");
    match mode {
        RootMode::Overlay | RootMode::Auto => assert_eq!(fstype, "overlay", "{mounts:?}"),
        RootMode::BindMounts => assert_eq!(fstype, "tmpfs", "{mounts:?}"),
    }
    let options = root.split_whitespace().nth(3).expect("options");
    assert!(options.split(',').any(|o| o == "ro"), "{root}");
    assert!(
        !mounts
            .iter()
            .any(|m| m.contains(&f.dir.path().display().to_string())),
        "host paths in the mount table: {mounts:?}"
    );
    // Exactly the plan's environment, plus HOME and PATH.
    let env = out.prefixed("env: ");
    for want in [
        "CNB_PLATFORM_API=0.12",
        "FOO=bar baz",
        "HOME=/home/cnb",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
    }
    let allowed = [
        "CNB_PLATFORM_API",
        "FOO",
        "HOME",
        "PATH",
        "PWD",
        "SHLVL",
        "OLDPWD",
        "_",
    ];
    for e in &env {
        let name = e.split('=').next().unwrap_or_default();
        assert!(allowed.contains(&name), "unexpected variable {e}");
    }

    // The files the lifecycle wrote belong to the host user.
    let me = rustix::process::geteuid().as_raw();
    let my_group = rustix::process::getegid().as_raw();
    for dir in [
        &f.host.app,
        &f.host.layers,
        &f.host.platform,
        &f.host.cache,
        &f.host.layout,
    ] {
        let file = dir.join("written-by-lifecycle");
        let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            (meta.uid(), meta.gid()),
            (me, my_group),
            "{}",
            file.display()
        );
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "data\n");
    }
    assert!(f.host.layers.join("sub/dir").is_dir());
    // The builder tree is untouched, mount points included.
    assert_eq!(snapshot(&f.host.builder), before);
    for missing in [
        "workspace",
        "layers",
        "platform",
        "cache",
        "layout-repo",
        "proc",
        "dev",
        "tmp",
        "etc/resolv.conf",
    ] {
        assert!(
            !f.host.builder.join(missing).exists(),
            "{missing} created in the builder tree"
        );
    }
}

pub fn inspect_auto() {
    inspect(RootMode::Auto);
}

pub fn inspect_overlay() {
    inspect(RootMode::Overlay);
}

pub fn inspect_bind_mounts() {
    inspect(RootMode::BindMounts);
}

/// HOME from the plan, missing from the builder tree: a tmpfs there, nothing
/// created in the tree.
pub fn plan_home() {
    let f = Fixture::new();
    f.creator("echo \"home=$HOME\"; touch \"$HOME/x\" && echo home-write=ok; ls -ld /srv/home | awk '{print \"mode=\" $1}'\n");
    let before = snapshot(&f.host.builder);
    let mut plan = f.plan();
    plan.env.push(("HOME".into(), "/srv/home".into()));
    for mode in [RootMode::Overlay, RootMode::BindMounts] {
        let out = run_with(&plan, mode, &Cancel::new());
        assert_eq!(
            out.status(),
            RunStatus::Exited(0),
            "{mode:?}: {:?}",
            out.lines
        );
        assert_eq!(out.value("home"), "/srv/home");
        assert_eq!(out.value("home-write"), "ok");
        assert_eq!(out.value("mode"), "drwxr-xr-x");
    }
    assert_eq!(snapshot(&f.host.builder), before);
    assert!(!f.host.builder.join("srv").exists());
}

pub fn exit_codes() {
    let f = Fixture::new();
    let token = f.token.clone();
    // A background process that ignores the polite signals must not outlive the
    // build.
    f.creator(&format!(
        "sh -c 'trap \"\" INT TERM HUP; while :; do sleep 1; done' {token}-orphan &\nexit \"$CODE\"\n"
    ));
    for (code, want) in [
        ("0", RunStatus::Exited(0)),
        ("51", RunStatus::Exited(51)),
        // The lifecycle's own 125 is not a sandbox failure.
        ("125", RunStatus::Exited(125)),
        ("20", RunStatus::Exited(20)),
    ] {
        let mut plan = f.plan();
        plan.env.push(("CODE".into(), code.into()));
        let out = run(&plan);
        assert_eq!(out.status(), want, "exit {code}: {:?}", out.lines);
        assert_no_process_left(&token);
    }
    f.creator("kill -9 $$\n");
    assert_eq!(run(&f.plan()).status(), RunStatus::Signaled(9));
    f.creator("kill -TERM $$\n");
    assert_eq!(run(&f.plan()).status(), RunStatus::Signaled(15));
}

/// Output goes through line by line, stdout and stderr.
pub fn output() {
    let f = Fixture::new();
    f.creator("echo to-stdout; echo to-stderr >&2; printf no-newline\n");
    let out = run(&f.plan());
    assert_eq!(out.status(), RunStatus::Exited(0));
    let mut lines = out.lines.clone();
    lines.sort();
    assert_eq!(lines, ["no-newline", "to-stderr", "to-stdout"]);
}

pub fn cancel() {
    let f = Fixture::new();
    let token = f.token.clone();
    f.creator(&format!(
        "trap 'echo got-int; sleep 0.3; exit 7' INT\nsh -c 'trap \"\" INT TERM HUP; while :; do sleep 1; done' {token}-orphan &\necho ready\nwhile :; do sleep 0.05; done\n"
    ));
    let plan = f.plan();
    let watcher = LineWatcher::new();
    let cancel = Cancel::new();
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let (c, w) = (cancel.clone(), &watcher);
        s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !w.lines().iter().any(|l| l == "ready") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            c.cancel();
        });
        fixture::runner(RootMode::Auto).run(&plan, &watcher, &cancel)
    });
    assert_eq!(result.expect("run"), RunStatus::Interrupted);
    // SIGINT reached the lifecycle (through the helper and the init), once.
    let lines = watcher.lines();
    assert_eq!(
        lines.iter().filter(|l| *l == "got-int").count(),
        1,
        "{lines:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_no_process_left(&token);
}

/// Killing the helper (as if locald died) takes the whole sandbox with it.
pub fn helper_killed() {
    let f = Fixture::new();
    let token = f.token.clone();
    f.creator(&endless(&token));
    let plan = f.plan();
    let watcher = LineWatcher::new();
    let cancel = Cancel::new();
    let me = std::process::id();
    let result = std::thread::scope(|s| {
        let w = &watcher;
        let token = &token;
        s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !w.lines().iter().any(|l| l == "ready") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let helper = helper_pid(me, token).expect("the helper process");
            rustix::process::kill_process(helper, rustix::process::Signal::KILL).expect("kill");
        });
        fixture::runner(RootMode::Auto).run(&plan, &watcher, &cancel)
    });
    assert_eq!(result.expect("run"), RunStatus::Signaled(9));
    assert_no_process_left(&token);
}

/// Our child that runs the sandbox helper.
/// The sandbox helper of the run whose processes carry `token`: the ancestor of
/// the token's process that is `parent`'s child (found from the token, not from
/// `parent` alone, so tests running side by side each find their own).
fn helper_pid(parent: u32, token: &str) -> Option<rustix::process::Pid> {
    let ppid_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
    };
    let mut pid = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(token))
        })?;
    loop {
        let up = ppid_of(pid)?;
        if up == parent {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            return String::from_utf8_lossy(&cmdline)
                .contains("__locald-sandbox")
                .then(|| rustix::process::Pid::from_raw(pid as i32))
                .flatten();
        }
        if up <= 1 {
            return None;
        }
        pid = up;
    }
}

fn expect_other(result: &Result<RunStatus, RunnerError>, needles: &[&str]) {
    match result {
        Err(RunnerError::Other(message)) => {
            for needle in needles {
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            }
        }
        other => panic!("expected RunnerError::Other, got {other:?}"),
    }
}

/// Builder trees that are not a full root, a program that cannot start.
pub fn bad_builder() {
    let f = Fixture::new();
    // No lifecycle.
    let out = run(&f.plan());
    expect_other(
        &out.result,
        &["/cnb/lifecycle/creator", "locald builder pull --full"],
    );

    // No shell.
    f.creator("exit 0\n");
    std::fs::remove_file(f.host.builder.join("usr/bin/sh")).expect("rm sh");
    let out = run(&f.plan());
    expect_other(&out.result, &["no shell", "locald builder pull --full"]);
    std::os::unix::fs::symlink("busybox", f.host.builder.join("usr/bin/sh")).expect("sh");

    // A lifecycle that cannot be executed: the failure comes from inside the
    // sandbox, as a sentence, not as the lifecycle's exit code.
    let creator = f.host.builder.join("cnb/lifecycle/creator");
    std::fs::set_permissions(&creator, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(&f.plan());
    expect_other(
        &out.result,
        &[
            "sandbox for the creator",
            "starting /cnb/lifecycle/creator",
            "ermission denied",
        ],
    );
    assert!(
        out.lines
            .iter()
            .any(|l| l.starts_with("locald sandbox: starting /cnb/lifecycle/creator")),
        "{:?}",
        out.lines
    );

    // A missing host directory.
    std::fs::set_permissions(&creator, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut plan = f.plan();
    plan.host.cache = f.dir.path().join("missing-cache");
    expect_other(&run(&plan).result, &["cache directory", "does not exist"]);
}

/// The probe says yes here.
pub fn probe_works() {
    locald_runner_container::probe().expect("user namespaces work here");
}

/// Run this binary's child mode `name` through `unshare` with `unshare_args`
/// (`sh -c` script that ends by running the binary), expecting it to succeed.
fn in_namespace(unshare_args: &[&str], setup: &str, name: &str) {
    let exe = std::env::current_exe().expect("exe");
    let script = format!("{setup} exec \"$0\" --child {name}");
    let out = std::process::Command::new("unshare")
        .args(unshare_args)
        .args(["--", "sh", "-c", &script])
        .arg(&exe)
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{name}: ok")),
        "{stdout}\n{stderr}"
    );
}

/// Inside a user namespace whose `user.max_user_namespaces` is 0 (the host is not
/// touched), the probe and the runner both say why the sandbox cannot work.
pub fn userns_disabled() {
    in_namespace(
        &["--user", "--map-root-user"],
        "echo 0 > /proc/sys/user/max_user_namespaces &&",
        "userns-disabled",
    );
}

/// Where the host's /proc is partly masked (as docker does, a bind mount over
/// /proc/keys here), a fresh /proc cannot be mounted: the probe says so up front.
pub fn masked_proc() {
    in_namespace(
        &["--user", "--map-root-user", "--mount"],
        "mount --bind /dev/null /proc/keys &&",
        "masked-proc",
    );
}

/// The child half of [`userns_disabled`] and [`masked_proc`]: the probe and a run
/// both give `Unavailable` with a message containing `needle`.
pub fn unavailable_child(name: &str, needle: &str) -> Result<(), String> {
    let check = |what: &str, e: RunnerError| match e {
        RunnerError::Unavailable { message, hint } => {
            if !message.contains(needle) || !hint.contains("--runner native") {
                return Err(format!("{what}: unexpected texts: {message:?} / {hint:?}"));
            }
            Ok(())
        }
        other => Err(format!("{what}: expected Unavailable, got {other:?}")),
    };
    match locald_runner_container::probe() {
        Ok(()) => return Err("probe said yes".into()),
        Err(e) => check("probe", e)?,
    }
    let f = Fixture::new();
    f.creator("echo should-not-run\n");
    let out = run(&f.plan());
    match out.result {
        Ok(status) => return Err(format!("run gave {status:?}: {:?}", out.lines)),
        Err(e) => check("run", e)?,
    }
    if out.lines.iter().any(|l| l == "should-not-run") {
        return Err("the lifecycle ran".into());
    }
    println!("{name}: ok");
    Ok(())
}

/// The script of a lifecycle that runs until it is killed, with a stubborn child.
fn endless(token: &str) -> String {
    format!(
        "sh -c 'trap \"\" INT TERM HUP; while :; do sleep 1; done' {token}-orphan &\necho ready\nwhile :; do sleep 1; done\n"
    )
}

/// If locald itself dies (SIGKILL, no cleanup), the sandbox dies with it.
pub fn locald_killed() {
    use std::io::BufRead;
    let tmp = tempfile::Builder::new()
        .prefix("locald-it-killed-")
        .tempdir()
        .expect("tempdir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--run-until-killed")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut token = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(t) = line.strip_prefix("token=") {
            token = Some(t.to_owned());
        }
        if line == "[creator] ready" {
            break;
        }
    }
    let token = token.expect("the child's token");
    assert!(
        !fixture::processes_with(&token).is_empty(),
        "the sandbox is not running"
    );
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert_no_process_left(&token);
}

/// The child half of [`locald_killed`]: run an endless lifecycle.
pub fn run_until_killed() {
    let f = Fixture::new();
    f.creator(&endless(&f.token));
    println!("token={}", f.token);
    let out = run(&f.plan());
    panic!("the endless lifecycle ended: {:?}", out.result);
}

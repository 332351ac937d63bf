//! What a hostile lifecycle or builder must not get: the host's kernel settings,
//! host root, device nodes, descriptors or keys of locald, a hung locald.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use locald_core::cancel::Cancel;
use locald_core::lifecycle::{LifecycleRunner, LineWatcher, RunStatus};
use locald_runner_container::RootMode;

use crate::fixture::{self, run, run_with, Fixture, Outcome};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn assert_exited(out: &Outcome, code: i32) {
    assert_eq!(
        out.status(),
        RunStatus::Exited(code),
        "{}",
        out.lines.join("\n")
    );
}

/// The mount options of the sandbox's mount at `target`, from `mount: ` lines.
fn mount_options(out: &Outcome, target: &str) -> String {
    out.prefixed("mount: ")
        .iter()
        .rfind(|m| m.split_whitespace().nth(1) == Some(target))
        .and_then(|m| m.split_whitespace().nth(3).map(str::to_owned))
        .unwrap_or_else(|| panic!("no mount at {target}: {:?}", out.lines))
}

fn has_option(options: &str, option: &str) -> bool {
    options.split(',').any(|o| o == option)
}

/// /proc/sys is read-only and the host's kernel files of /proc are masked, for
/// good: the lifecycle cannot undo it.
pub fn proc_locked() {
    let f = Fixture::new();
    f.creator(
        r#"
d=/proc/sys/kernel/domainname
if v=$(cat $d) && echo "$v" > $d 2>/dev/null; then echo "write-sysctl=ok"; else echo "write-sysctl=fail"; fi
for p in sysrq-trigger kcore keys timer_list latency_stats sched_debug; do
  if ! test -e /proc/$p; then echo "$p=absent"
  elif test -c /proc/$p && test "$(wc -c < /proc/$p)" = 0; then echo "$p=masked"
  else echo "$p=visible"; fi
done
for p in acpi scsi; do
  if ! test -e /proc/$p; then echo "$p=absent"
  elif test -z "$(ls -A /proc/$p)" && ! touch /proc/$p/x 2>/dev/null; then echo "$p=masked"
  else echo "$p=visible"; fi
done
if umount /proc/sys 2>/dev/null || umount -l /proc/keys 2>/dev/null; then echo "umount=ok"; else echo "umount=fail"; fi
if mount -o remount,rw /proc/sys 2>/dev/null; then echo "remount=ok"; else echo "remount=fail"; fi
echo "cgroup=$(tr '\n' ' ' < /proc/self/cgroup)"
sed 's/^/mount: /' /proc/self/mounts
"#,
    );
    let out = run(&f.plan());
    assert_exited(&out, 0);
    assert_eq!(out.value("write-sysctl"), "fail");
    let options = mount_options(&out, "/proc/sys");
    for option in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(has_option(&options, option), "/proc/sys: {options}");
    }
    for p in [
        "sysrq-trigger",
        "kcore",
        "keys",
        "timer_list",
        "latency_stats",
        "sched_debug",
        "acpi",
        "scsi",
    ] {
        let state = out.value(p);
        assert!(state == "masked" || state == "absent", "/proc/{p}: {state}");
    }
    // Whatever this kernel has is masked.
    for p in ["sysrq-trigger", "kcore", "keys", "timer_list", "acpi"] {
        if Path::new("/proc").join(p).exists() {
            assert_eq!(out.value(p), "masked", "/proc/{p}");
        }
    }
    assert_eq!(out.value("umount"), "fail");
    assert_eq!(out.value("remount"), "fail");
    // A cgroup namespace of its own.
    let cgroups = out.value("cgroup");
    assert!(
        cgroups.split_whitespace().all(|c| c.ends_with(":/")),
        "{cgroups}"
    );
}

/// The host ids the build runs as when locald runs as root (as the runner picks
/// them: the first of root's subordinate ids, else 2147000000).
fn expected_root_build_ids() -> (u32, u32) {
    let first = |file: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let ok = f.len() >= 3 && (f[0] == "root" || f[0] == "0");
                let first = f.get(1)?.parse::<u32>().ok()?;
                let count = f.get(2)?.parse::<u32>().ok()?;
                (ok && count > 0 && first != 0).then_some(first)
            })
            .unwrap_or(2_147_000_000)
    };
    (first("/etc/subuid"), first("/etc/subgid"))
}

/// The `Uid:`/`Gid:` values of a host process.
fn host_ids_of(pid: &str) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"))
}

/// Started by root, the lifecycle is no host root: it runs as an unprivileged host
/// id that owns the writable directories for the run only; afterwards they are
/// root's again, without the setuid bits the build planted.
pub fn root_build_ids() {
    let f = Fixture::new();
    f.creator(
        r#"
echo x > /layers/suid && chmod 6755 /layers/suid
mkdir -p /cache/d && echo x > /cache/d/f && chmod 4755 /cache/d/f
echo "stat-layers=$(stat -c %u:%g /layers/suid)"
echo ready
while ! test -e /workspace/go; do sleep 0.05; done
exit 3
"#,
    );
    // As root, a symlink to a file of someone else: lending and giving back must
    // not follow it.
    let outside = f.dir.path().join("outside");
    std::fs::write(&outside, "not the build's").expect("outside");
    std::os::unix::fs::symlink(&outside, f.host.cache.join("link")).expect("symlink");
    if is_root() {
        std::os::unix::fs::chown(&outside, Some(4242), Some(4243)).expect("chown");
    }
    let plan = f.plan();
    let watcher = LineWatcher::new();
    let cancel = Cancel::new();
    let during = std::thread::scope(|s| {
        let (w, f) = (&watcher, &f);
        let seen = s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !w.lines().iter().any(|l| l == "ready") {
                assert!(Instant::now() < deadline, "no ready: {:?}", w.lines());
                std::thread::sleep(Duration::from_millis(10));
            }
            let lifecycle = fixture::processes_with(&f.token)
                .into_iter()
                .find(|p| p.contains("/cnb/lifecycle/creator"))
                .expect("the lifecycle process");
            let pid = lifecycle.split(':').next().expect("pid").to_owned();
            let ids = host_ids_of(&pid);
            let app = std::fs::metadata(&f.host.app).expect("stat app");
            std::fs::write(f.host.app.join("go"), "").expect("go");
            (ids, (app.uid(), app.gid()))
        });
        let result = fixture::runner(RootMode::Auto).run(&plan, &watcher, &cancel);
        (result, seen.join())
    });
    let (result, seen) = during;
    let out = Outcome {
        result,
        lines: watcher.lines(),
    };
    assert_exited(&out, 3);
    let ((uids, gids), app_owner) = seen.expect("the watching thread");
    assert_eq!(
        out.value("stat-layers"),
        format!("{}:{}", fixture::UID, fixture::GID)
    );

    let me = rustix::process::geteuid().as_raw();
    let group = rustix::process::getegid().as_raw();
    let (uid, gid) = if is_root() {
        expected_root_build_ids()
    } else {
        (me, group)
    };
    assert_ne!(uid, 0);
    assert_eq!(uids, format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(gids, format!("{gid} {gid} {gid} {gid}"));
    assert_eq!(app_owner, (uid, gid));

    // Given back, whatever the outcome.
    for dir in [
        &f.host.app,
        &f.host.layers,
        &f.host.platform,
        &f.host.cache,
        &f.host.layout,
    ] {
        for (path, meta) in walk(dir) {
            assert_eq!((meta.uid(), meta.gid()), (me, group), "{}", path.display());
            if is_root() && meta.is_file() {
                assert_eq!(meta.mode() & 0o6000, 0, "{} keeps setuid", path.display());
            }
        }
    }
    let outside = std::fs::metadata(&outside).expect("outside");
    let want = if is_root() { (4242, 4243) } else { (me, group) };
    assert_eq!((outside.uid(), outside.gid()), want);
}

/// Every entry of a tree, itself included, without following symlinks.
fn walk(dir: &Path) -> Vec<(std::path::PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("readdir") {
                stack.push(entry.expect("entry").path());
            }
        }
        out.push((path, meta));
    }
    out
}

/// Device nodes of the builder tree or of a writable directory do not work, in
/// either root mode; the writable directories are nosuid and nodev.
pub fn device_nodes() {
    let f = Fixture::new();
    f.creator(
        r#"
for p in /cnb/zero-node /workspace/zero-node; do
  if test -e $p; then
    if head -c 1 $p >/dev/null 2>&1; then echo "open $p=ok"; else echo "open $p=fail"; fi
  else echo "open $p=absent"; fi
done
sed 's/^/mount: /' /proc/self/mounts
"#,
    );
    let nodes = is_root();
    if nodes {
        for dir in [&f.host.builder.join("cnb"), &f.host.app] {
            let status = std::process::Command::new("mknod")
                .args(["-m", "0666"])
                .arg(dir.join("zero-node"))
                .args(["c", "1", "5"])
                .status()
                .expect("mknod");
            assert!(status.success());
        }
    } else {
        println!("device_nodes: no device nodes (mknod needs root), mount options only");
    }
    for mode in [RootMode::BindMounts, RootMode::Overlay] {
        let out = run_with(&f.plan(), mode, &Cancel::new());
        assert_exited(&out, 0);
        for p in ["/cnb/zero-node", "/workspace/zero-node"] {
            let want = if nodes { "fail" } else { "absent" };
            assert_eq!(out.value(&format!("open {p}")), want, "{mode:?} {p}");
        }
        for target in [
            "/",
            "/workspace",
            "/layers",
            "/platform",
            "/cache",
            "/layout-repo",
            "/etc/resolv.conf",
        ] {
            if target == "/etc/resolv.conf" && !Path::new("/etc/resolv.conf").is_file() {
                continue;
            }
            let options = mount_options(&out, target);
            for option in ["nosuid", "nodev"] {
                assert!(has_option(&options, option), "{mode:?} {target}: {options}");
            }
        }
    }
}

/// The script that lists the lifecycle's descriptors and their targets.
/// (The listing goes through files: a command substitution would add its pipe.)
const LIST_FDS: &str = r#"
ls /proc/$$/fd > /tmp/fds
echo "fds=$(tr '\n' ' ' < /tmp/fds)"
ls -l /proc/$$/fd > /tmp/fds
sed 's/^/fd: /' /tmp/fds
"#;

/// Run a lifecycle with a descriptor leaked (no close-on-exec) by locald; `Err`
/// says what reached the lifecycle.
fn leak_check() -> Result<(), String> {
    let f = Fixture::new();
    f.creator(LIST_FDS);
    let name = format!("leak-{}", f.token);
    let file = std::fs::File::create(f.dir.path().join(&name)).map_err(|e| e.to_string())?;
    rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
    let out = run(&f.plan());
    drop(file);
    match &out.result {
        Ok(RunStatus::Exited(0)) => {}
        other => return Err(format!("run: {other:?}: {:?}", out.lines)),
    }
    if out.lines.iter().any(|l| l.contains(&name)) {
        return Err(format!(
            "the leaked descriptor reached the lifecycle: {:?}",
            out.lines
        ));
    }
    // The shell's own descriptors (the script, at 10 or above) aside: only 0-2.
    let low: Vec<String> = out
        .value("fds")
        .split_whitespace()
        .filter(|fd| fd.parse::<u32>().is_ok_and(|n| n < 10))
        .map(str::to_owned)
        .collect();
    if low != ["0", "1", "2"] {
        return Err(format!("descriptors {low:?}: {:?}", out.lines));
    }
    Ok(())
}

/// A seccomp filter that makes `close_range` fail with ENOSYS (as on a kernel
/// before 5.11 or under a container's filter), then `exec` of the arguments.
const NO_CLOSE_RANGE: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
prog = [(0x20, 0, 0, 0), (0x15, 0, 1, 436), (0x06, 0, 0, 0x00050000 | 38), (0x06, 0, 0, 0x7fff0000)]
buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog), ctypes.addressof(buf))
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit("seccomp: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"#;

/// Nothing locald leaked reaches the lifecycle, even where `close_range` is
/// refused.
pub fn leaked_fd() {
    leak_check().expect("with close_range");
    let python = Path::new("/usr/bin/python3");
    let arch_ok = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));
    if !arch_ok {
        locald_tests::require::skip(
            "leaked_fd without close_range: its seccomp filter is written for x86_64 and aarch64",
        );
        return;
    }
    if !python.exists() {
        locald_tests::require::skip(
            "leaked_fd without close_range needs /usr/bin/python3 (apt-get install python3)",
        );
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new(python)
        .args(["-c", NO_CLOSE_RANGE])
        .arg(&exe)
        .args(["--child", "leaked-fd"])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("leaked-fd: ok"), "{stdout}\n{stderr}");
}

/// The child half of [`leaked_fd`], under the seccomp filter.
pub fn leaked_fd_child() -> Result<(), String> {
    leak_check()?;
    println!("leaked-fd: ok");
    Ok(())
}

/// The host's `keyctl` and the libraries it needs, copied into the builder tree.
fn install_keyctl(f: &Fixture) -> Result<(), String> {
    let keyctl = Path::new("/usr/bin/keyctl");
    let ldd = std::process::Command::new("ldd")
        .arg(keyctl)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let mut files = vec![keyctl.to_path_buf()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(std::path::PathBuf::from);
        files.extend(path);
    }
    for file in files {
        let to = f
            .host
            .builder
            .join(file.strip_prefix("/").map_err(|e| e.to_string())?);
        if let Some(parent) = to.parent() {
            // `/bin`-style symlinks of the fixture are followed, as in the sandbox.
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let _ = std::fs::remove_file(&to);
        std::fs::copy(&file, &to).map_err(|e| format!("{}: {e}", file.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The lifecycle does not share locald's session keyring (and its keys).
pub fn keyring() {
    if !Path::new("/usr/bin/keyctl").exists() {
        locald_tests::require::skip("no /usr/bin/keyctl on this host (apt-get install keyutils)");
        return;
    }
    // In a session keyring of its own, so the key goes nowhere else.
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new("/usr/bin/keyctl")
        .args(["session", "-"])
        .arg(&exe)
        .args(["--child", "keyring"])
        .output()
        .expect("keyctl session");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("keyring: ok"), "{stdout}\n{stderr}");
}

/// The child half of [`keyring`], in a fresh session keyring.
pub fn keyring_child() -> Result<(), String> {
    let f = Fixture::new();
    install_keyctl(&f)?;
    let key = format!("locald-it-key-{}", std::process::id());
    let added = std::process::Command::new("/usr/bin/keyctl")
        .args(["add", "user", &key, "secret", "@s"])
        .output()
        .map_err(|e| e.to_string())?;
    if !added.status.success() {
        return Err(format!("keyctl add: {added:?}"));
    }
    f.creator(&format!(
        "if keyctl search @s user {key} >/dev/null 2>&1; then echo keyring=inherited; else echo keyring=fresh; fi\nkeyctl show @s | sed 's/^/show: /'\n"
    ));
    let out = run(&f.plan());
    match &out.result {
        Ok(RunStatus::Exited(0)) => {}
        other => return Err(format!("run: {other:?}: {:?}", out.lines)),
    }
    // The lifecycle's keyctl works (it would find the key it can possess).
    if !out.lines.iter().any(|l| l.starts_with("show: ")) {
        return Err(format!(
            "keyctl does not work in the sandbox: {:?}",
            out.lines
        ));
    }
    if out.value("keyring") != "fresh" {
        return Err(format!(
            "the session keyring was inherited: {:?}",
            out.lines
        ));
    }
    println!("keyring: ok");
    Ok(())
}

/// A FIFO as the builder's /etc/passwd (read on the host for HOME) hangs nothing.
pub fn fifo_passwd() {
    let f = Fixture::new();
    f.creator("echo \"home=$HOME\"\n");
    let passwd = f.host.builder.join("etc/passwd");
    std::fs::remove_file(&passwd).expect("rm passwd");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &passwd,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    let plan = f.plan();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(&plan));
    });
    let out = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out,
        Err(_) => {
            // Let the stuck open go, then fail.
            let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK;
            let _ = rustix::fs::open(&passwd, flags, rustix::fs::Mode::empty());
            panic!("the run hangs on a FIFO /etc/passwd");
        }
    };
    assert_exited(&out, 0);
    assert_eq!(out.value("home"), "/home/cnb");
}

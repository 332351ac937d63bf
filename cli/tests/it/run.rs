//! `locald run`: hand-made busybox-static images run in the rootless sandbox,
//! as root and (from the CI's root) as the unprivileged test user.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use locald_tests::builder::find_busybox;
use locald_tests::fixture::{Compression, Entry, ImageSpec, Layer, LayoutBuilder};
use locald_tests::require;

use super::Run;

/// A world with its own cache and an OCI layout holding `app`: busybox-static
/// as /bin/*, a passwd with `app` (1000:1000, /home/app) and a group `staff`,
/// Entrypoint ["/bin/echo"], Cmd ["hello from cmd"], Env GREETING, WorkingDir
/// /home/app, User app.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "pwd", "env", "sleep", "touch", "ls", "wc", "test", "nc", "kill",
];

impl World {
    fn new() -> Option<World> {
        let busybox = require::ok(find_busybox(), "busybox-static")?;
        require::ok(
            locald_runner_container::probe().map_err(|e| e.to_string()),
            "the sandbox (user namespaces)",
        )?;
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut entries = vec![
            Entry::dir("bin/"),
            Entry::file("bin/busybox", std::fs::read(busybox).unwrap()).mode(0o755),
            Entry::dir("etc/"),
            Entry::file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            ),
            Entry::file("etc/group", "root:x:0:\napp:x:1000:\nstaff:x:50:app\n"),
            Entry::dir("home/"),
            Entry::dir("home/app/").mode(0o777),
            Entry::file("home/app/note", "in the image\n"),
            Entry::dir("tmp/").mode(0o1777),
        ];
        for a in APPLETS {
            entries.push(Entry::symlink(format!("bin/{a}"), "busybox"));
        }
        let mut spec = ImageSpec::new(vec![Layer::new(entries, Compression::Gzip)])
            .ref_name("app")
            .env("PATH=/bin")
            .env("GREETING=from the image")
            .user("app")
            .working_dir("/home/app");
        spec.entrypoint = Some(vec!["/bin/echo".into()]);
        spec.cmd = Some(vec!["hello from cmd".into()]);
        let mut b = LayoutBuilder::new(root.join("app.oci"));
        b.add_image(spec);
        b.write().unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        Some(World { _tmp: tmp, root })
    }

    fn layout(&self) -> String {
        self.root.join("app.oci").to_string_lossy().into_owned()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_locald"));
        c.arg("run")
            .args(args)
            .env_remove("LOCALD_LOG")
            .env("XDG_DATA_HOME", self.root.join("data"))
            .env("HOME", &self.root)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let o = self.command(args).output().unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

#[test]
fn entrypoint_cmd_args_env_user_and_workdir() {
    let Some(w) = World::new() else { return };
    let l = w.layout();
    // Entrypoint + Cmd, the process's own stdout, no prefix.
    let r = w.run(&[&l]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "hello from cmd\n"),
        "{}",
        r.stderr
    );
    // -- ARGS replace Cmd.
    let r = w.run(&[&l, "--", "one", "two"]);
    assert_eq!(r.stdout, "one two\n", "{}", r.stderr);
    // --entrypoint replaces Entrypoint (and Cmd).
    let r = w.run(&[&l, "--entrypoint", "pwd"]);
    assert_eq!(r.stdout, "/home/app\n", "WorkingDir: {}", r.stderr);
    let r = w.run(&[&l, "--entrypoint", "id", "--workdir", "/tmp"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("uid=1000(app) gid=1000(app)"),
        "User by name: {}",
        r.stdout
    );
    let r = w.run(&[&l, "--entrypoint", "id", "--user", "0"]);
    assert!(r.stdout.contains("uid=0(root)"), "{}", r.stdout);
    let r = w.run(&[&l, "--entrypoint", "id", "--user", "app:staff"]);
    assert!(
        r.stdout.contains("uid=1000(app) gid=50(staff)"),
        "{}",
        r.stdout
    );
    let r = w.run(&[&l, "--entrypoint", "/bin/sh", "--", "-c", "pwd"]);
    assert_eq!(r.stdout, "/home/app\n", "{}", r.stderr);
    let r = w.run(&[&l, "--workdir", "/tmp", "--entrypoint", "pwd"]);
    assert_eq!(r.stdout, "/tmp\n");
    // Env: the image's, then --env-file, then -e.
    let env_file = w.root.join("run.env");
    std::fs::write(&env_file, "FROM_FILE=file\nGREETING=file\n").unwrap();
    let r = w.run(&[
        &l,
        "--env-file",
        env_file.to_str().unwrap(),
        "-e",
        "FROM_FLAG=flag",
        "--entrypoint",
        "env",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in [
        "GREETING=file",
        "FROM_FILE=file",
        "FROM_FLAG=flag",
        "HOME=/home/app",
        "PATH=/bin",
    ] {
        assert!(
            r.stdout.lines().any(|l| l == want),
            "{want} missing:\n{}",
            r.stdout
        );
    }
    let r = w.run(&[&l, "-e", "GREETING=flag", "--entrypoint", "env"]);
    assert!(
        r.stdout.lines().any(|l| l == "GREETING=flag"),
        "{}",
        r.stdout
    );
}

#[test]
fn exit_codes_signals_and_isolation() {
    let Some(w) = World::new() else { return };
    let l = w.layout();
    let r = w.run(&[&l, "--entrypoint", "sh", "--", "-c", "exit 7"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    let r = w.run(&[&l, "--entrypoint", "sh", "--", "-c", "kill -TERM $$"]);
    assert_eq!(r.code, 128 + 15, "{}", r.stderr);
    // SIGTERM to locald reaches the process.
    let mut child = w
        .command(&[
            &l,
            "--entrypoint",
            "sh",
            "--",
            "-c",
            "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(status.code(), Some(3), "{rest}");
    assert!(rest.contains("got TERM"), "{rest}");
    // Host files are not there; writes are gone after exit.
    let secret = w.root.join("host-secret");
    std::fs::write(&secret, "x").unwrap();
    let r = w.run(&[
        &l,
        "--entrypoint",
        "sh",
        "--",
        "-c",
        &format!(
            "test -e {} && echo visible || echo hidden",
            secret.display()
        ),
    ]);
    assert_eq!(r.stdout, "hidden\n", "{}", r.stderr);
    let r = w.run(&[
        &l,
        "--entrypoint",
        "sh",
        "--",
        "-c",
        "echo changed > /home/app/written; echo t > /tmp/t; cat /home/app/written",
    ]);
    assert_eq!(r.stdout, "changed\n", "{}", r.stderr);
    let r = w.run(&[&l, "--entrypoint", "sh", "--", "-c", "cat /home/app/note; test -e /home/app/written && echo kept || echo gone; test -e /tmp/t && echo kept || echo gone"]);
    assert_eq!(r.stdout, "in the image\ngone\ngone\n", "{}", r.stderr);
    // stdin is passed when it is not a terminal.
    let mut child = w
        .command(&[&l, "--entrypoint", "wc", "--", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"12345").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "5");
}

#[test]
fn volumes_and_networks() {
    let Some(w) = World::new() else { return };
    let l = w.layout();
    let host = w.root.join("vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(host.join("in"), "from the host\n").unwrap();
    let h = host.to_str().unwrap();
    let script = "cat /v/in; (echo w > /v/out) 2>/dev/null && echo writable || echo read-only";
    let r = w.run(&[
        &l,
        "--volume",
        &format!("{h}:/v"),
        "--entrypoint",
        "sh",
        "--",
        "-c",
        script,
    ]);
    assert_eq!(r.stdout, "from the host\nread-only\n", "{}", r.stderr);
    let r = w.run(&[
        &l,
        "--volume",
        &format!("{h}:/v:rw"),
        "--entrypoint",
        "sh",
        "--",
        "-c",
        script,
    ]);
    assert_eq!(r.stdout, "from the host\nwritable\n", "{}", r.stderr);
    assert!(host.join("out").exists());
    for bad in ["/proc", "/dev/x", "/"] {
        let r = w.run(&[&l, "--volume", &format!("{h}:{bad}")]);
        assert_eq!(r.code, 1, "{bad}: {}", r.stderr);
        assert!(r.stderr.contains("--volume target"), "{}", r.stderr);
    }
    // --network none: loopback only.
    let netdev = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '";
    let r = w.run(&[
        &l,
        "--network",
        "none",
        "--entrypoint",
        "sh",
        "--",
        "-c",
        netdev,
    ]);
    assert_eq!(r.stdout.trim(), "lo", "{}", r.stderr);
    // The host network by default: a server inside answers on the host's loopback.
    let port = locald_tests::registry::free_port();
    let mut server = w
        .command(&[
            &l,
            "--entrypoint",
            "sh",
            "--",
            "-c",
            &format!("echo served | nc -l -p {port} 127.0.0.1"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = std::io::Read::read_to_string(&mut s, &mut got);
            if !got.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(got, "served\n");
}

#[test]
fn bad_input_is_said() {
    let Some(w) = World::new() else { return };
    let l = w.layout();
    let r = w.run(&[&l, "--process", "web"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no process type \"web\"") && r.stderr.contains("not a CNB image"),
        "{}",
        r.stderr
    );
    let r = w.run(&[&l, "--entrypoint", "no-such-program"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("has no program no-such-program"),
        "{}",
        r.stderr
    );
    let r = w.run(&[&l, "--user", "nobody-here"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no user \"nobody-here\""), "{}", r.stderr);
    // A warm start extracts nothing: the cache holds one tree after many runs.
    let trees = std::fs::read_dir(w.root.join("data/locald/trees"))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains('.')
        })
        .count();
    assert_eq!(trees, 1, "one tree for all runs of the image");
    // An image with no entrypoint and no cmd.
    let dir = w.root.join("bare.oci");
    let mut b = LayoutBuilder::new(&dir);
    b.add_image(ImageSpec::new(vec![Layer::new(
        vec![Entry::file("x", "y")],
        Compression::Gzip,
    )]));
    b.write().unwrap();
    let r = w.run(&[dir.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no entrypoint and no cmd"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hint: "), "{}", r.stderr);
}

/// Images from a registry and from a docker archive run as from a layout.
#[test]
fn images_from_a_registry_and_a_docker_archive() {
    if !require::tool("skopeo") || !require::tool("docker-registry") {
        return;
    }
    let Some(w) = World::new() else { return };
    let reg = locald_tests::registry::Registry::start(locald_tests::registry::Auth::None);
    reg.push_layout(&w.root.join("app.oci"), "app", "run/app:1")
        .unwrap();
    let r = w.run(&[
        &format!("{}/run/app:1", reg.addr()),
        "--",
        "from",
        "a",
        "registry",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "from a registry\n"),
        "{}",
        r.stderr
    );
    // Warm: the registry gone, the cached tree is used with --pull never.
    reg.kill();
    let r = w.run(&[
        &format!("{}/run/app:1", reg.addr()),
        "--pull",
        "never",
        "--",
        "offline",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "offline\n"),
        "{}",
        r.stderr
    );
    let archive = w.root.join("app.tar");
    locald_tests::peers::skopeo_copy(
        &format!("oci:{}:app", w.root.join("app.oci").display()),
        &format!("docker-archive:{}:run/app:1", archive.display()),
        &[],
    )
    .unwrap();
    let r = w.run(&[
        "run/app:1",
        "--source",
        &format!("docker-archive:{}", archive.display()),
        "--",
        "from an archive",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "from an archive\n"),
        "{}",
        r.stderr
    );
}

/// Run by an unprivileged user (the CI's root runs it as the test user): the
/// same image, the same isolation.
#[test]
fn runs_as_an_unprivileged_user() {
    use std::os::unix::process::CommandExt;
    if !locald_tests::peers::is_root() {
        return; // run as that user already
    }
    let Some(w) = World::new() else { return };
    let Some(user) = require::ok(locald_tests::standin::test_user(), "the test user") else {
        return;
    };
    locald_tests::standin::chown_tree(&w.root, user.uid, user.gid).unwrap();
    let bin = w.root.join("locald");
    std::fs::copy(env!("CARGO_BIN_EXE_locald"), &bin).unwrap();
    std::os::unix::fs::chown(&bin, Some(user.uid), Some(user.gid)).unwrap();
    let secret = w.root.join("secret");
    std::fs::write(&secret, "host").unwrap();
    let o = Command::new(&bin)
        .args([
            "run",
            &w.layout(),
            "--entrypoint",
            "sh",
            "--",
            "-c",
            &format!(
                "id; test -e {} && echo visible || echo hidden",
                secret.display()
            ),
        ])
        .env_clear()
        .env("HOME", &w.root)
        .env("XDG_DATA_HOME", w.root.join("data-user"))
        .env("PATH", "/usr/bin:/bin")
        .uid(user.uid)
        .gid(user.gid)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("uid=1000(app)"), "{stdout}");
    assert!(stdout.contains("hidden"), "{stdout}");
}

/// At a terminal (here one `script` makes), the process gets a terminal of its
/// own as its controlling terminal, reads what is typed there, and a Ctrl-C
/// typed there is its SIGINT.
#[test]
fn a_terminal_becomes_the_process_controlling_terminal() {
    if !require::tool("script") {
        return;
    }
    let Some(w) = World::new() else { return };
    let bin = env!("CARGO_BIN_EXE_locald");
    // tty_nr (field 7 of /proc/self/stat) is 0 without a controlling terminal.
    let inner = format!(
        "XDG_DATA_HOME={} {bin} run {} --entrypoint sh -- -c 'test -t 0 && echo stdin-is-a-tty; read -r a < /proc/self/stat; set -- $a; echo tty_nr=$7; read -r line; echo got=$line'",
        w.root.join("data").display(),
        w.layout()
    );
    let mut child = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env_remove("LOCALD_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(b"typed\n").unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("stdin-is-a-tty"), "{out}");
    assert!(out.contains("got=typed"), "{out}");
    let nr: i64 = out
        .split("tty_nr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert_ne!(nr, 0, "no controlling terminal: {out}");
}

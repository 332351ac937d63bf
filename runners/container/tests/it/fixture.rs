//! A builder root filesystem made of busybox, the host directories of a build, and
//! running a plan through the container runner.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use locald_core::cancel::Cancel;
use locald_core::lifecycle::{
    Arg, Dir, HostDirs, LifecyclePlan, LifecycleRunner, LineWatcher, RunStatus, RunnerError,
};
use locald_runner_container::{ContainerRunner, RootMode};

/// The build user and group of the fixture's passwd.
pub const UID: u32 = 1001;
pub const GID: u32 = 1002;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub host: HostDirs,
    /// A unique word for this fixture (to find its processes on the host).
    pub token: String,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("locald-it-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("rootfs");
        let d = |p: &str| {
            let path = root.join(p);
            std::fs::create_dir_all(&path).expect("mkdir");
            path
        };
        let bin = d("usr/bin");
        std::fs::copy("/usr/bin/busybox", bin.join("busybox")).expect("copy busybox");
        let list = std::process::Command::new("/usr/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.contains('/') && !applet.is_empty() {
                symlink("busybox", bin.join(applet)).expect("applet symlink");
            }
        }
        // Merged /usr, with an absolute symlink as real images often have.
        symlink("usr/bin", root.join("bin")).expect("bin symlink");
        symlink("/usr/bin", root.join("sbin")).expect("sbin symlink");
        let etc = d("etc");
        std::fs::write(
            etc.join("passwd"),
            format!("root:x:0:0:root:/root:/bin/sh\ncnb:x:{UID}:{GID}::/home/cnb:/bin/sh\n"),
        )
        .expect("passwd");
        std::fs::write(etc.join("group"), format!("root:x:0:\ncnb:x:{GID}:\n")).expect("group");
        std::fs::write(etc.join("hostname"), "builder-etc-hostname\n").expect("hostname");
        std::fs::write(etc.join("os-release"), "ID=busybox\n").expect("os-release");
        d("home/cnb");
        std::fs::write(root.join("home/cnb/.profile"), "# builder's profile\n").expect("profile");
        d("cnb/lifecycle");
        d("cnb/buildpacks");
        d("var/empty");
        std::fs::set_permissions(
            root.join("var/empty"),
            std::fs::Permissions::from_mode(0o711),
        )
        .expect("chmod");
        std::fs::write(root.join("cnb/order.toml"), "[[order]]\n").expect("order");

        let mut dirs = BTreeMap::new();
        for name in ["app", "layers", "platform", "cache", "layout"] {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).expect("mkdir");
            dirs.insert(name, path);
        }
        std::fs::write(dirs["app"].join("app.txt"), "hello from the app\n").expect("app file");
        let host = HostDirs {
            builder: root,
            app: dirs["app"].clone(),
            layers: dirs["layers"].clone(),
            platform: dirs["platform"].clone(),
            cache: dirs["cache"].clone(),
            layout: dirs["layout"].clone(),
        };
        let token = format!(
            "locald-it-token-{}-{}",
            std::process::id(),
            dir.path().file_name().expect("name").to_string_lossy()
        );
        Fixture { dir, host, token }
    }

    /// Write the lifecycle program (a shell script).
    pub fn creator(&self, script: &str) {
        let path = self.host.builder.join("cnb/lifecycle/creator");
        std::fs::write(&path, format!("#!/bin/sh\n{script}")).expect("creator");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    pub fn plan(&self) -> LifecyclePlan {
        LifecyclePlan {
            phase: "creator".into(),
            program: "cnb/lifecycle/creator".into(),
            args: vec![
                Arg::Text("-app".into()),
                Arg::Path(Dir::App, PathBuf::new()),
                Arg::Text("-layers".into()),
                Arg::Path(Dir::Layers, PathBuf::new()),
                Arg::Text("-platform".into()),
                Arg::Path(Dir::Platform, "env".into()),
                Arg::Text(self.token.clone()),
            ],
            env: vec![
                ("CNB_PLATFORM_API".into(), "0.12".into()),
                ("FOO".into(), "bar baz".into()),
            ],
            uid: UID,
            gid: GID,
            host: self.host.clone(),
            network: Default::default(),
            volumes: Vec::new(),
        }
    }
}

/// What a run gave.
pub struct Outcome {
    pub result: Result<RunStatus, RunnerError>,
    pub lines: Vec<String>,
}

impl Outcome {
    pub fn status(&self) -> RunStatus {
        match &self.result {
            Ok(status) => *status,
            Err(e) => panic!("run failed: {e:?}\noutput:\n{}", self.lines.join("\n")),
        }
    }

    /// The value of the first `key=value` line.
    pub fn value(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key}= line in:\n{}", self.lines.join("\n")))
            .to_owned()
    }

    /// Every line starting with `prefix`, without it.
    pub fn prefixed(&self, prefix: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .collect()
    }
}

pub fn runner(mode: RootMode) -> ContainerRunner {
    ContainerRunner::new(std::env::current_exe().expect("current_exe")).with_root_mode(mode)
}

pub fn run_with(plan: &LifecyclePlan, mode: RootMode, cancel: &Cancel) -> Outcome {
    let watcher = LineWatcher::new();
    let result = runner(mode).run(plan, &watcher, cancel);
    Outcome {
        result,
        lines: watcher.lines(),
    }
}

pub fn run(plan: &LifecyclePlan) -> Outcome {
    run_with(plan, RootMode::Auto, &Cancel::new())
}

/// Everything about a tree, to prove it unchanged.
pub fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let rel = path
            .strip_prefix(root)
            .expect("inside")
            .display()
            .to_string();
        let mut line = format!(
            "{rel} mode={:o} uid={} gid={} mtime={}.{} ctime={}.{}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        if meta.file_type().is_symlink() {
            line += &format!(
                " -> {}",
                std::fs::read_link(&path).expect("readlink").display()
            );
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).expect("read");
            line += &format!(" size={} sum={}", bytes.len(), checksum(&bytes));
        } else if meta.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .expect("readdir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            names.sort();
            line += &format!(" entries={names:?}");
            stack.extend(names.into_iter().map(|n| path.join(n)));
        }
        out.push(line);
    }
    out.sort();
    out
}

/// FNV-1a: enough to notice a changed byte.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// The host processes whose command line contains `token`.
pub fn processes_with(token: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(token) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

/// Wait up to 5 s for no process to carry `token`.
pub fn assert_no_process_left(token: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(token);
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("processes left behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

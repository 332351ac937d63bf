//! What the runner hands the sandbox helper (as JSON in the run's temporary
//! directory), and the pure decisions behind it: the sandbox environment, HOME, the
//! mount points the root needs. No I/O here beyond reading the builder's passwd.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How the read-only root is put together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootMode {
    /// Overlay first, bind mounts if the kernel refuses the overlay.
    #[default]
    Auto,
    /// A read-only overlayfs: a small skeleton of mount points over the builder tree,
    /// no upper directory.
    Overlay,
    /// A tmpfs holding read-only bind mounts of the builder tree's entries (and
    /// copies of its top-level symlinks), made read-only once the mount points exist.
    BindMounts,
}

/// A host directory bind-mounted read-write in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bind {
    /// What it is, for messages (`layers directory`).
    pub what: String,
    /// The host directory.
    pub host: PathBuf,
    /// Where the lifecycle sees it (absolute).
    pub target: String,
    /// Mounted read-only (a `--volume` without `:rw`).
    #[serde(default)]
    pub read_only: bool,
}

/// The unprivileged host user and group the lifecycle of a sandbox started by root
/// runs as (see `ids.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostIds {
    pub uid: u32,
    pub gid: u32,
}

/// Everything the helper needs, decided by the runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SandboxConfig {
    /// The runner's pid: the helper checks it is still its parent.
    pub parent_pid: i32,
    /// The builder's root filesystem on the host.
    pub rootfs: PathBuf,
    /// How to make the root.
    pub root_mode: RootMode,
    /// The writable directories.
    pub binds: Vec<Bind>,
    /// HOME, when it needs its own tmpfs (absolute).
    pub home_mount: Option<String>,
    /// The build user and group inside the sandbox.
    pub uid: u32,
    pub gid: u32,
    /// Started by root: the host ids the build user is mapped to (else to the
    /// host user who started it).
    pub host_ids: Option<HostIds>,
    /// The absolute program path inside the sandbox.
    pub program: String,
    /// Its arguments (without argv[0]).
    pub args: Vec<String>,
    /// Its whole environment, in order (later entries win).
    pub env: Vec<(String, String)>,
    /// Its working directory.
    pub cwd: String,
    /// The sandbox's host name.
    pub hostname: String,
    /// A network namespace of its own with only loopback (`--network none`).
    #[serde(default)]
    pub network_none: bool,
    /// The root is writable, its changes thrown away at the end (`locald run`:
    /// an overlay with a tmpfs upper layer) instead of read-only.
    #[serde(default)]
    pub writable_root: bool,
    /// The process's stdin is a terminal (a pty's slave): it becomes the
    /// process's controlling terminal, in a session of its own.
    #[serde(default)]
    pub controlling_tty: bool,
}

/// The `PATH` a lifecycle gets when the plan has none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Mount points that are always there, besides the writable directories.
pub(crate) const SYSTEM_MOUNTS: [&str; 3] = ["/proc", "/dev", "/tmp"];

/// Where the host's resolv.conf is mounted.
pub(crate) const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The lexical normal form of an absolute sandbox path: `None` unless it is
/// absolute and free of `..` (which has no place in a mount point).
pub(crate) fn normalize(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// One entry of a passwd file: `name:password:uid:gid:gecos:home:shell`.
pub(crate) struct PasswdEntry<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    /// The home directory, on complete (seven-field) lines.
    pub home: Option<&'a str>,
}

/// The entries of a passwd file's text with a name and numeric ids (others
/// are skipped).
pub(crate) fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: (fields.len() >= 7).then(|| fields[5]),
        })
    })
}

/// The home directory of `uid` in a passwd file's text.
pub(crate) fn home_from_passwd(passwd: &str, uid: u32) -> Option<String> {
    passwd_entries(passwd)
        .find(|e| e.uid == uid && e.home.is_some())
        .and_then(|e| e.home)
        .filter(|home| !home.is_empty())
        .map(str::to_owned)
}

/// HOME for the lifecycle: the plan's, else the build user's home in the builder's
/// passwd, else `/home/cnb` (the CNB convention).
pub(crate) fn choose_home(plan_home: Option<&str>, passwd_home: Option<&str>) -> String {
    let set = |home: &&str| !home.is_empty();
    plan_home
        .filter(set)
        .or(passwd_home.filter(set))
        .unwrap_or("/home/cnb")
        .to_owned()
}

/// Whether HOME needs its own tmpfs: not when it is already writable (inside /tmp
/// or a bind-mounted directory), not when it is no sensible mount point (`/`,
/// relative, `..`, inside /proc or /dev, above another mount point such as `/etc`).
pub(crate) fn home_mount(home: &str, binds: &[Bind]) -> Option<String> {
    let home = normalize(home)?;
    if home == Path::new("/") {
        return None;
    }
    let covered = binds
        .iter()
        .map(|b| b.target.as_str())
        .chain(SYSTEM_MOUNTS)
        .any(|mount| home.starts_with(mount));
    let above = binds
        .iter()
        .map(|b| b.target.as_str())
        .chain(SYSTEM_MOUNTS)
        .chain([RESOLV_CONF])
        .any(|mount| Path::new(mount).starts_with(&home));
    if covered || above {
        return None;
    }
    Some(home.to_string_lossy().into_owned())
}

/// The environment of the lifecycle: the plan's, then HOME and PATH when absent.
pub(crate) fn sandbox_env(plan_env: &[(String, String)], home: &str) -> Vec<(String, String)> {
    let mut env = plan_env.to_vec();
    let has = |key: &str| plan_env.iter().any(|(k, _)| k == key);
    if !has("HOME") {
        env.push(("HOME".to_owned(), home.to_owned()));
    }
    if !has("PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    env
}

/// What a mount point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory.
    Dir,
    /// A regular file (resolv.conf).
    File,
}

/// The mount points of the sandbox root as a tree of names: intermediate
/// directories have children; a leaf is a mount point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MountTree {
    /// The entries under this directory.
    pub children: BTreeMap<String, MountNode>,
}

/// One entry of a [`MountTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountNode {
    /// A directory or a file.
    pub kind: Kind,
    /// Whether something is mounted here (else it only leads to a mount point).
    pub mount_point: bool,
    /// The entries under it.
    pub tree: MountTree,
}

impl MountTree {
    /// Add a mount point (an absolute, normalised path other than `/`).
    pub(crate) fn add(&mut self, path: &Path, kind: Kind) {
        let names: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let Some((last, parents)) = names.split_last() else {
            return;
        };
        let mut tree = self;
        for name in parents {
            let node = tree.children.entry(name.clone()).or_insert(MountNode {
                kind: Kind::Dir,
                mount_point: false,
                tree: MountTree::default(),
            });
            // A mount point that also leads to another one must be a directory.
            node.kind = Kind::Dir;
            tree = &mut node.tree;
        }
        let node = tree.children.entry(last.clone()).or_insert(MountNode {
            kind,
            mount_point: true,
            tree: MountTree::default(),
        });
        node.mount_point = true;
        if !node.tree.children.is_empty() {
            node.kind = Kind::Dir;
        }
    }
}

impl SandboxConfig {
    /// Every mount point the root must have (created in a skeleton, never in the
    /// builder tree).
    pub(crate) fn mount_tree(&self) -> MountTree {
        let mut tree = MountTree::default();
        let dirs = self
            .binds
            .iter()
            .map(|b| b.target.as_str())
            .chain(SYSTEM_MOUNTS)
            .chain(self.home_mount.as_deref());
        for dir in dirs {
            if let Some(path) = normalize(dir) {
                tree.add(&path, Kind::Dir);
            }
        }
        tree.add(Path::new(RESOLV_CONF), Kind::File);
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(target: &str) -> Bind {
        Bind {
            what: "x".into(),
            host: "/h".into(),
            target: target.into(),
            read_only: false,
        }
    }

    #[test]
    fn normalize_table() {
        let cases = [
            ("/home/cnb", Some("/home/cnb")),
            ("/home//cnb/./", Some("/home/cnb")),
            ("/", Some("/")),
            ("home", None),
            ("/home/../etc", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want.map(PathBuf::from), "{input}");
        }
    }

    #[test]
    fn passwd_table() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      cnb:x:1001:1002::/home/cnb:/bin/bash\n\
                      odd:x:7:7\n\
                      nohome:x:9:9:::/bin/sh\n";
        let cases = [
            (0, Some("/root")),
            (1001, Some("/home/cnb")),
            (7, None),
            (9, None),
            (42, None),
        ];
        for (uid, want) in cases {
            assert_eq!(home_from_passwd(passwd, uid).as_deref(), want, "{uid}");
        }
    }

    #[test]
    fn home_choice_and_mount() {
        assert_eq!(choose_home(Some("/h"), Some("/p")), "/h");
        assert_eq!(choose_home(None, Some("/p")), "/p");
        assert_eq!(choose_home(None, None), "/home/cnb");
        assert_eq!(choose_home(Some(""), Some("/p")), "/p");

        let binds = [bind("/workspace"), bind("/layers")];
        let cases = [
            ("/home/cnb", Some("/home/cnb")),
            ("/home/cnb/", Some("/home/cnb")),
            ("/", None),
            ("relative", None),
            ("/tmp", None),
            ("/tmp/home", None),
            ("/workspace", None),
            ("/layers/x", None),
            ("/layersx", Some("/layersx")),
            ("/proc/1", None),
            ("/a/../b", None),
            ("/etc", None),
        ];
        for (home, want) in cases {
            assert_eq!(home_mount(home, &binds).as_deref(), want, "{home}");
        }
    }

    #[test]
    fn env_adds_home_and_path_only_when_absent() {
        let plan = vec![
            ("A".to_owned(), "1".to_owned()),
            ("PATH".to_owned(), "/cnb/bin".to_owned()),
        ];
        let env = sandbox_env(&plan, "/home/cnb");
        assert_eq!(
            env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("PATH".to_owned(), "/cnb/bin".to_owned()),
                ("HOME".to_owned(), "/home/cnb".to_owned()),
            ]
        );
        let env = sandbox_env(&[("HOME".to_owned(), "/x".to_owned())], "/ignored");
        assert_eq!(
            env,
            [
                ("HOME".to_owned(), "/x".to_owned()),
                ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
            ]
        );
    }

    #[test]
    fn mount_tree_shape() {
        let config = SandboxConfig {
            parent_pid: 1,
            rootfs: "/r".into(),
            root_mode: RootMode::Auto,
            binds: vec![bind("/workspace"), bind("/layers")],
            home_mount: Some("/home/cnb".into()),
            uid: 1,
            gid: 1,
            host_ids: None,
            program: "/cnb/lifecycle/creator".into(),
            args: vec![],
            env: vec![],
            cwd: "/workspace".into(),
            hostname: "h".into(),
            network_none: false,
            writable_root: false,
            controlling_tty: false,
        };
        let tree = config.mount_tree();
        let names: Vec<&str> = tree.children.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["dev", "etc", "home", "layers", "proc", "tmp", "workspace"]
        );
        let etc = &tree.children["etc"];
        assert!(!etc.mount_point);
        assert_eq!(etc.kind, Kind::Dir);
        let resolv = &etc.tree.children["resolv.conf"];
        assert!(resolv.mount_point);
        assert_eq!(resolv.kind, Kind::File);
        let home = &tree.children["home"];
        assert!(!home.mount_point);
        assert!(home.tree.children["cnb"].mount_point);

        // A mount point under another one makes the outer one a directory.
        let mut tree = MountTree::default();
        tree.add(Path::new("/a"), Kind::File);
        tree.add(Path::new("/a/b"), Kind::Dir);
        assert_eq!(tree.children["a"].kind, Kind::Dir);
        assert!(tree.children["a"].mount_point);
    }
}

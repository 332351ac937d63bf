//! Looking at the builder tree from the host as the sandbox will see it: paths are
//! resolved inside the tree (absolute symlinks are relative to it, `..` stops at
//! it), so `/bin -> usr/bin` and `/bin/sh -> /bin/busybox` resolve as in the sandbox.

use std::path::{Component, Path, PathBuf};

use locald_core::fsutil::{self, FinalSymlink};

/// How many symlinks a resolution follows before giving up (as the kernel does).
const MAX_LINKS: usize = 40;

/// The largest file of the builder tree read on the host ([`read_small_file`]).
const MAX_READ: u64 = 1 << 20;

/// The text of a small regular file of the builder tree, `None` (with a debug
/// line) for anything else. A hostile builder must not hang or exhaust locald: no
/// symlink is followed, a FIFO is not waited for (`O_NONBLOCK`), only a regular
/// file is read, and no more than [`MAX_READ`] bytes of it
/// ([`fsutil::read_small`] with [`FinalSymlink::Refuse`]).
pub(crate) fn read_small_file(path: &Path) -> Option<String> {
    let skip = |why: String| {
        tracing::debug!("ignoring {} of the builder tree: {why}", path.display());
        None
    };
    let bytes = match fsutil::read_small(path, MAX_READ, FinalSymlink::Refuse) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            return skip(format!("it is larger than {MAX_READ} bytes"))
        }
        Err(e) => return skip(format!("cannot read it: {e}")),
    };
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) => skip(format!("cannot read it: {e}")),
    }
}

/// The host path of `path` (absolute, as seen in the sandbox) inside `root`, with
/// every symlink resolved inside `root`; `None` if it does not exist or loops.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    // Components still to walk, in reverse order (the next one last).
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut current = root.to_path_buf();
    let mut depth = 0usize; // components of `current` below `root`
    let mut links = 0usize;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if depth > 0 {
                current.pop();
                depth -= 1;
            }
            continue;
        }
        let candidate = current.join(&name);
        let meta = std::fs::symlink_metadata(&candidate).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = std::fs::read_link(&candidate).ok()?;
            if target.is_absolute() {
                current = root.to_path_buf();
                depth = 0;
            }
            push_components(&mut pending, &target);
        } else {
            current = candidate;
            depth += 1;
        }
    }
    Some(current)
}

/// Push the normal and `..` components of `path` onto `pending` so that the first
/// one is popped first.
fn push_components(pending: &mut Vec<std::ffi::OsString>, path: &Path) {
    let names: Vec<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    pending.extend(names.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{FileType, Mode};
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_only_small_regular_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("passwd"), "root:x:0:0::/root:/bin/sh\n").expect("write");
        symlink("passwd", d.join("link")).expect("symlink");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        std::fs::write(d.join("big"), vec![b'x'; MAX_READ as usize + 1]).expect("write");
        std::fs::write(d.join("limit"), vec![b'x'; MAX_READ as usize]).expect("write");
        assert_eq!(
            read_small_file(&d.join("passwd")).as_deref(),
            Some("root:x:0:0::/root:/bin/sh\n")
        );
        for name in ["link", "fifo", "big", "missing"] {
            assert_eq!(read_small_file(&d.join(name)), None, "{name}");
        }
        assert!(read_small_file(d).is_none());
        assert_eq!(
            read_small_file(&d.join("limit")).map(|t| t.len()),
            Some(MAX_READ as usize)
        );
    }

    #[test]
    fn resolves_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::fs::write(root.join("usr/bin/busybox"), b"").expect("write");
        symlink("usr/bin", root.join("bin")).expect("symlink");
        symlink("/usr/bin/busybox", root.join("usr/bin/sh")).expect("symlink");
        symlink("../../../../etc", root.join("usr/bin/escape")).expect("symlink");
        symlink("loop", root.join("loop")).expect("symlink");
        std::fs::create_dir(root.join("etc")).expect("mkdir");

        let cases: [(&str, Option<&str>); 7] = [
            ("/bin/sh", Some("usr/bin/busybox")),
            ("/usr/bin/sh", Some("usr/bin/busybox")),
            ("/bin/../bin/busybox", Some("usr/bin/busybox")),
            ("/usr/bin/escape", Some("etc")),
            ("/bin/missing", None),
            ("/loop", None),
            ("/", Some("")),
        ];
        for (path, want) in cases {
            assert_eq!(
                resolve_in_root(root, Path::new(path)),
                want.map(|w| if w.is_empty() {
                    root.to_path_buf()
                } else {
                    root.join(w)
                }),
                "{path}"
            );
        }
    }
}

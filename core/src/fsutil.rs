//! Small filesystem helpers shared by the build's parts.

use std::io;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, Uid};

/// How directories are opened: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// `lchown` `dir` and everything under it to `uid:gid`. Each directory is opened
/// relative to its parent with `O_NOFOLLOW` and everything else is changed with
/// `AT_SYMLINK_NOFOLLOW`, so no symlink (even one swapped in meanwhile) leads out.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let top = rustix::fs::open(dir, DIR_FLAGS, Mode::empty())?;
    rustix::fs::fchown(&top, uid, gid)?;
    let mut stack = vec![Dir::new(top)?];
    while let Some(current) = stack.last_mut() {
        let Some(entry) = current.read() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let parent = current.fd()?;
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if !is_dir {
            rustix::fs::chownat(parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
            continue;
        }
        let sub = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
        rustix::fs::fchown(&sub, uid, gid)?;
        stack.push(Dir::new(sub)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chown_tree_never_follows_symlinks() {
        use std::os::unix::fs::MetadataExt;
        // As root a foreign owner proves the change; otherwise our own ids at least
        // prove the walk.
        let (uid, gid) = if rustix::process::geteuid().is_root() {
            (4242, 4243)
        } else {
            let uid = rustix::process::geteuid().as_raw();
            (uid, rustix::process::getegid().as_raw())
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("file"), "x").expect("write");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).expect("mkdir");
        std::fs::write(tree.join("a/b/file"), "x").expect("write");
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("file"), tree.join("flink")).expect("symlink");
        chown_tree(&tree, uid, gid).expect("chown");
        for path in ["", "a", "a/b", "a/b/file", "a/link", "flink"] {
            let meta = std::fs::symlink_metadata(tree.join(path)).expect("lstat");
            assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{path}");
        }
        let me = rustix::process::geteuid().as_raw();
        for path in [outside.clone(), outside.join("file")] {
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            assert_eq!(meta.uid(), me, "{}", path.display());
        }
        // A symlink is no directory to walk.
        assert!(chown_tree(&tree.join("a/link"), uid, gid).is_err());
    }
}

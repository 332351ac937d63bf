//! Incremental updates: the tree of an updated image made from the tree of the
//! version it replaces, by applying only the layers that changed.
//!
//! This is only done when it is provably the same as extracting the new image
//! from scratch. Every tree keeps a listing of which image paths each of its
//! layers touched. A changed layer (old `a` at position i, new `b`) may be swapped
//! in place when no other layer touches its paths: none writes, removes, links to
//! or redirects (through a symlinked parent) a path that `a` or `b` holds, and
//! neither `a` nor `b` holds whiteouts or special files. Then the tree without
//! `a`'s paths plus `b`'s entries is what a fresh extraction gives; the only
//! state shared with other layers is directory metadata, which is set afterwards
//! from the last layer that names each directory. Anything else is refused with a
//! reason and the caller extracts from scratch.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use locald_extract::{Listed, ListedKind};

/// Each layer's entries, bottom first (`None`: a layer that could not be listed).
pub type Listings = Vec<Option<Vec<Listed>>>;

/// The positions whose layer digests differ, when the two images have the same
/// number of layers and at most half of them changed.
pub fn changed_positions(old: &[String], new: &[String]) -> Option<Vec<usize>> {
    if old.len() != new.len() || old.is_empty() {
        return None;
    }
    let changed: Vec<usize> = (0..old.len()).filter(|&i| old[i] != new[i]).collect();
    (!changed.is_empty() && changed.len() * 2 <= old.len()).then_some(changed)
}

fn parents(path: &str) -> impl Iterator<Item = &str> {
    let mut p = path;
    std::iter::from_fn(move || {
        if p.is_empty() {
            return None;
        }
        p = p.rfind('/').map(|i| &p[..i]).unwrap_or("");
        Some(p)
    })
}

/// The members of `set` strictly below `path`.
fn below<'a>(set: &'a BTreeSet<&'a str>, path: &str) -> impl Iterator<Item = &'a str> + 'a {
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    set.range::<str, _>((
        std::ops::Bound::Included(prefix.as_str()),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |p| p.starts_with(&prefix))
    .filter(|p| !p.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .into_iter()
}

/// Checks that the layers at `changed` (old listings in `old`, new ones in
/// `new_changed`, same order) can be swapped without touching anything else.
pub fn check(old: &Listings, changed: &[usize], new_changed: &Listings) -> Result<(), String> {
    let get = |l: &Option<Vec<Listed>>, what: &str| -> Result<Vec<Listed>, String> {
        l.clone()
            .ok_or_else(|| format!("{what} has paths that are not UTF-8"))
    };
    let mut pairs = Vec::new();
    for (k, &i) in changed.iter().enumerate() {
        let a = get(&old[i], &format!("old layer {}", i + 1))?;
        let b = get(
            new_changed.get(k).ok_or("missing listing")?,
            &format!("new layer {}", i + 1),
        )?;
        pairs.push((i, a, b));
    }
    let everything: Vec<Vec<Listed>> = old
        .iter()
        .enumerate()
        .map(|(j, l)| get(l, &format!("layer {}", j + 1)))
        .collect::<Result<_, _>>()?;
    let everything: Vec<&Vec<Listed>> = everything
        .iter()
        .chain(pairs.iter().map(|(_, _, b)| b))
        .collect();
    // Nothing anywhere is written through a symlink: then every path is where
    // its name says, and comparing names is comparing places.
    let symlinks: HashSet<&str> = everything
        .iter()
        .flat_map(|l| l.iter())
        .filter(|e| e.kind == ListedKind::Symlink)
        .map(|e| e.path.as_str())
        .collect();
    for e in everything.iter().flat_map(|l| l.iter()) {
        let through = |p: &str| parents(p).any(|q| symlinks.contains(q));
        if through(&e.path)
            || e.link
                .as_deref()
                .is_some_and(|t| through(t) || symlinks.contains(t))
        {
            return Err(format!("{} goes through a symlink", e.path));
        }
    }
    for (i, a, b) in &pairs {
        // A directory the changed layer names that other layers also use must
        // be declared identically wherever it is declared (mode, owner, mtime,
        // xattrs): then swapping the layer cannot change it.
        let others: Vec<&Listed> = old
            .iter()
            .enumerate()
            .filter(|(j, _)| j != i)
            .filter_map(|(_, l)| l.as_ref())
            .chain(pairs.iter().filter(|(j, _, _)| j != i).map(|(_, _, b)| b))
            .flat_map(|l| l.iter())
            .collect();
        let other_paths: BTreeSet<&str> = others.iter().map(|e| e.path.as_str()).collect();
        let dirs: BTreeSet<&str> = a
            .iter()
            .chain(b.iter())
            .filter(|e| e.kind == ListedKind::Dir)
            .map(|e| e.path.as_str())
            .collect();
        for d in dirs {
            let shared = other_paths.contains(d) || below(&other_paths, d).next().is_some();
            if !shared {
                continue;
            }
            let metas: Vec<Option<&Vec<i64>>> = everything
                .iter()
                .flat_map(|l| l.iter())
                .filter(|e| e.path == d)
                .map(|e| {
                    if e.kind == ListedKind::Dir {
                        e.meta.as_ref()
                    } else {
                        None
                    }
                })
                .collect();
            let declared_in =
                |l: &Vec<Listed>| l.iter().any(|e| e.path == d && e.kind == ListedKind::Dir);
            if !(declared_in(a) && declared_in(b))
                || metas.windows(2).any(|w| w[0] != w[1] || w[0].is_none())
            {
                return Err(format!(
                    "directory {} is shared with other layers and not declared identically",
                    if d.is_empty() { "/" } else { d }
                ));
            }
        }
    }
    for (i, a, b) in &pairs {
        let mine: Vec<&Listed> = a.iter().chain(b.iter()).collect();
        let mut non_dirs: BTreeSet<&str> = BTreeSet::new();
        let mut all: BTreeSet<&str> = BTreeSet::new();
        for e in &mine {
            match e.kind {
                ListedKind::Dir => {}
                ListedKind::File | ListedKind::Symlink | ListedKind::Hardlink => {
                    non_dirs.insert(&e.path);
                }
                _ => {
                    return Err(format!(
                        "layer {} has whiteouts or special files ({})",
                        i + 1,
                        e.path
                    ))
                }
            }
            all.insert(&e.path);
        }
        for layer in [a, b] {
            let own: BTreeSet<&str> = layer
                .iter()
                .filter(|e| e.kind != ListedKind::Dir)
                .map(|e| e.path.as_str())
                .collect();
            for e in layer.iter() {
                if e.kind == ListedKind::Symlink && below(&all, &e.path).next().is_some() {
                    return Err(format!(
                        "layer {} writes through its symlink {}",
                        i + 1,
                        e.path
                    ));
                }
                if let Some(t) = &e.link {
                    if !own.contains(t.as_str()) {
                        return Err(format!("layer {} links to {t}, outside itself", i + 1));
                    }
                }
            }
        }
        // Every other layer, old and new versions of the other changed ones too.
        let others = old
            .iter()
            .enumerate()
            .filter(|(j, _)| j != i)
            .map(|(j, l)| get(l, &format!("layer {}", j + 1)))
            .chain(
                pairs
                    .iter()
                    .filter(|(j, _, _)| j != i)
                    .map(|(_, _, b)| Ok(b.clone())),
            );
        for layer in others {
            for e in layer? {
                let p = e.path.as_str();
                let conflict = match e.kind {
                    // A shared directory is fine unless one of ours is a file there.
                    ListedKind::Dir => {
                        non_dirs.contains(p) || parents(p).any(|q| non_dirs.contains(q))
                    }
                    ListedKind::Whiteout => {
                        all.contains(p)
                            || below(&all, p).next().is_some()
                            || parents(p).any(|q| non_dirs.contains(q))
                    }
                    ListedKind::Opaque | ListedKind::Symlink => {
                        all.contains(p)
                            || below(&all, p).next().is_some()
                            || parents(p).any(|q| non_dirs.contains(q))
                    }
                    _ => {
                        all.contains(p)
                            || below(&all, p).next().is_some()
                            || parents(p).any(|q| non_dirs.contains(q))
                            || e.link.as_deref().is_some_and(|t| all.contains(t))
                    }
                };
                if conflict {
                    return Err(format!("layer {} and another layer both touch {p}", i + 1));
                }
            }
        }
    }
    Ok(())
}

/// Removes what the old versions of the changed layers held that the new
/// versions do not, in `root`, where the new versions are already applied.
/// Directories only the old version named (or needed as parents) go when empty.
/// Returns the directories whose contents changed.
pub fn remove_old(
    root: &Path,
    old_changed: &[Vec<Listed>],
    new_changed: &[Vec<Listed>],
    new_all: &[Vec<Listed>],
) -> std::io::Result<BTreeSet<String>> {
    let kept: HashSet<&str> = new_changed
        .iter()
        .flatten()
        .map(|e| e.path.as_str())
        .collect();
    // Paths some layer of the new image has an entry at or below.
    let mut mentioned: BTreeSet<&str> = BTreeSet::new();
    // (A whiteout or opaque marker creates nothing, so it keeps nothing alive.)
    for e in new_all.iter().flatten() {
        if matches!(e.kind, ListedKind::Whiteout | ListedKind::Opaque) {
            continue;
        }
        mentioned.insert(&e.path);
        for p in parents(&e.path) {
            mentioned.insert(p);
        }
    }
    let mut dirs = BTreeSet::new();
    let mut touched = BTreeSet::new();
    for e in old_changed.iter().flatten() {
        if kept.contains(e.path.as_str()) {
            continue;
        }
        if e.kind == ListedKind::Dir {
            dirs.insert(e.path.clone());
        } else {
            let p = root.join(&e.path);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        for q in parents(&e.path) {
            touched.insert(q.to_owned());
            if !mentioned.contains(q) {
                dirs.insert(q.to_owned());
            }
        }
    }
    // Deepest first; a directory some new layer still names stays.
    for d in dirs.iter().rev() {
        if d.is_empty() || mentioned.contains(d.as_str()) {
            continue;
        }
        match std::fs::remove_dir(root.join(d)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    for e in new_changed.iter().flatten() {
        for q in parents(&e.path) {
            touched.insert(q.to_owned());
        }
        if e.kind == ListedKind::Dir {
            touched.insert(e.path.clone());
        }
    }
    Ok(touched)
}

/// Sets each directory in `dirs` that exists to the mode and mtime (and, when
/// privileged, owner) of the last layer of the new image that names it.
pub fn restore_dir_meta(
    root: &Path,
    dirs: &BTreeSet<String>,
    new_all: &[Vec<Listed>],
    privileged: bool,
) -> std::io::Result<()> {
    let mut last: BTreeMap<&str, &[i64]> = BTreeMap::new();
    for e in new_all.iter().flatten() {
        if let (ListedKind::Dir, Some(m)) = (e.kind, &e.meta) {
            if m.len() >= 4 {
                last.insert(&e.path, m);
            }
        }
    }
    for d in dirs.iter().rev() {
        if d.is_empty() && !privileged {
            continue; // the root stays private
        }
        let Some(m) = last.get(d.as_str()) else {
            continue;
        };
        let p: PathBuf = root.join(d);
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {}
            _ => continue,
        }
        if privileged {
            rustix::fs::chown(
                &p,
                Some(rustix::fs::Uid::from_raw(m[1] as u32)),
                Some(rustix::fs::Gid::from_raw(m[2] as u32)),
            )?;
        }
        let mode = (m[0] as u32) & if privileged { 0o7777 } else { 0o1777 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        let t = filetime::FileTime::from_unix_time(m[3], 0);
        filetime::set_symlink_file_times(&p, t, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(path: &str, kind: ListedKind) -> Listed {
        Listed {
            path: path.to_owned(),
            kind,
            link: None,
            meta: (kind == ListedKind::Dir).then(|| vec![0o755, 0, 0, 1, 0]),
        }
    }
    use ListedKind::*;

    fn base() -> Listings {
        vec![
            Some(vec![l("", Dir), l("cnb", Dir), l("cnb/buildpacks", Dir)]),
            Some(vec![
                l("cnb", Dir),
                l("cnb/buildpacks/a", Dir),
                l("cnb/buildpacks/a/1", File),
            ]),
            Some(vec![
                l("cnb", Dir),
                l("cnb/buildpacks/b", Dir),
                l("cnb/buildpacks/b/1", File),
            ]),
        ]
    }

    fn new_b() -> Listings {
        vec![Some(vec![
            l("cnb", Dir),
            l("cnb/buildpacks/b", Dir),
            l("cnb/buildpacks/b/2", File),
        ])]
    }

    #[test]
    fn positions() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            changed_positions(&s(&["a", "b", "c"]), &s(&["a", "x", "c"])),
            Some(vec![1])
        );
        assert_eq!(
            changed_positions(&s(&["a", "b"]), &s(&["a", "b", "c"])),
            None
        );
        assert_eq!(
            changed_positions(&s(&["a", "b", "c"]), &s(&["x", "y", "c"])),
            None,
            "more than half"
        );
        assert_eq!(changed_positions(&s(&["a"]), &s(&["a"])), None);
    }

    #[test]
    fn independent_layer_passes() {
        assert_eq!(check(&base(), &[2], &new_b()), Ok(()));
    }

    #[test]
    fn conflicts_are_refused() {
        type Edit = fn(&mut Listings, &mut Listings);
        let cases: [(&str, Edit); 8] = [
            ("other layer writes our file", |o, _| {
                o[1].as_mut().unwrap().push(l("cnb/buildpacks/b/1", File))
            }),
            ("other layer writes below our file", |o, _| {
                o[0].as_mut().unwrap().push(l("cnb/buildpacks/b/2/x", File))
            }),
            ("whiteout of our dir", |o, _| {
                o[1].as_mut().unwrap().push(l("cnb/buildpacks/b", Whiteout))
            }),
            ("opaque parent", |o, _| {
                o[1].as_mut().unwrap().push(l("cnb/buildpacks", Opaque))
            }),
            ("symlinked parent", |o, _| {
                o[0].as_mut().unwrap().push(l("cnb/buildpacks/b", Symlink))
            }),
            ("hard link into us", |o, _| {
                let mut h = l("cnb/h", Hardlink);
                h.link = Some("cnb/buildpacks/b/1".into());
                o[1].as_mut().unwrap().push(h)
            }),
            ("whiteout in the new layer", |_, n| {
                n[0].as_mut().unwrap().push(l("cnb/buildpacks/a", Whiteout))
            }),
            ("new layer links outside", |_, n| {
                let mut h = l("cnb/buildpacks/b/h", Hardlink);
                h.link = Some("cnb/buildpacks/a/1".into());
                n[0].as_mut().unwrap().push(h)
            }),
        ];
        for (what, edit) in cases {
            let (mut o, mut n) = (base(), new_b());
            edit(&mut o, &mut n);
            assert!(check(&o, &[2], &n).is_err(), "{what}");
        }
        let mut o = base();
        o[1] = None;
        assert!(check(&o, &[2], &new_b()).is_err(), "unlistable layer");

        // Another layer writes into our files through its own symlink.
        let mut o = base();
        o[1].as_mut().unwrap().push(l("cnb/current", Symlink));
        o[1].as_mut().unwrap().push(l("cnb/current/extra", File));
        let e = check(&o, &[2], &new_b()).unwrap_err();
        assert!(e.contains("goes through a symlink"), "{e}");

        // A directory we name, used by another layer, declared differently.
        let mut o = base();
        let mut ext = l("cnb/buildpacks/b", Dir);
        ext.meta = Some(vec![0o700, 0, 0, 1, 0]);
        o[2].as_mut().unwrap()[1] = ext;
        o[1].as_mut()
            .unwrap()
            .push(l("cnb/buildpacks/b/other", File));
        let e = check(&o, &[2], &new_b()).unwrap_err();
        assert!(e.contains("not declared identically"), "{e}");

        // The root, named by the new layer only.
        let mut n = new_b();
        n[0].as_mut().unwrap().push(l("", Dir));
        assert!(
            check(&base(), &[2], &n).is_err(),
            "root named by the new layer only"
        );
    }

    #[test]
    fn removal_keeps_shared_and_new() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for p in ["cnb/buildpacks/a", "cnb/buildpacks/b/old-only/deep"] {
            std::fs::create_dir_all(r.join(p)).unwrap();
        }
        std::fs::write(r.join("cnb/buildpacks/a/1"), "a").unwrap();
        std::fs::write(r.join("cnb/buildpacks/b/1"), "old").unwrap();
        std::fs::write(r.join("cnb/buildpacks/b/old-only/deep/f"), "old").unwrap();
        std::fs::write(r.join("cnb/buildpacks/b/2"), "new").unwrap();
        let old_b = vec![
            l("cnb", Dir),
            l("cnb/buildpacks/b", Dir),
            l("cnb/buildpacks/b/1", File),
            // its parents came without entries of their own
            l("cnb/buildpacks/b/old-only/deep/f", File),
        ];
        let new = new_b().into_iter().flatten().collect::<Vec<_>>();
        let all: Vec<Vec<Listed>> = vec![
            base()[0].clone().unwrap(),
            base()[1].clone().unwrap(),
            new[0].clone(),
        ];
        let touched = remove_old(r, &[old_b], &[new[0].clone()], &all).unwrap();
        assert!(!r.join("cnb/buildpacks/b/1").exists());
        assert!(!r.join("cnb/buildpacks/b/old-only").exists());
        assert!(r.join("cnb/buildpacks/b/2").exists());
        assert!(r.join("cnb/buildpacks/a/1").exists());
        assert!(touched.contains("cnb/buildpacks/b") && touched.contains("cnb"));
        restore_dir_meta(r, &touched, &all, false).unwrap();
        let m = std::fs::metadata(r.join("cnb/buildpacks/b")).unwrap();
        assert_eq!(
            filetime::FileTime::from_last_modification_time(&m).unix_seconds(),
            1
        );
    }
}

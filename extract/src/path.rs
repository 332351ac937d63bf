//! Pure rules for archive entry names: normalisation, whiteout names and the path
//! filter. No I/O here, so all of it is table-tested.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Path components of an entry relative to the image root, with `.`, empty
/// components and leading `/` removed and `..` applied lexically.
pub type Components = Vec<OsString>;

/// Normalises a raw tar entry name (or hard-link target).
///
/// Refuses NUL bytes and names whose `..` components climb above the root: such a
/// name has no meaning inside an image and only shows up in hostile archives.
pub fn normalise(raw: &[u8]) -> Result<Components, String> {
    if raw.contains(&0) {
        return Err("name contains a NUL byte".to_owned());
    }
    let mut out: Components = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("name climbs out of the image root with '..'".to_owned());
                }
            }
            other => out.push(OsStr::from_bytes(other).to_owned()),
        }
    }
    Ok(out)
}

/// Displays components as an absolute image path, for messages.
pub fn display(c: &[OsString]) -> String {
    let mut s = String::new();
    for part in c {
        s.push('/');
        s.push_str(&part.to_string_lossy());
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// The whiteout prefix.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque-directory marker.
pub const OPAQUE: &str = ".wh..wh..opq";

/// What an entry's file name means under the OCI whiteout rules.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// An ordinary entry.
    No,
    /// `.wh..wh..opq`: the parent directory hides all lower-layer content.
    Opaque,
    /// `.wh.NAME`: NAME is removed from lower layers.
    Remove(&'a OsStr),
    /// Other `.wh..wh.` names (AUFS hard-link bookkeeping): ignored, never extracted.
    Metadata,
    /// A whiteout whose NAME is empty, `.` or `..`.
    Invalid,
}

/// Classifies the last component of an entry name.
pub fn whiteout(name: &OsStr) -> Whiteout<'_> {
    let b = name.as_bytes();
    if b == OPAQUE.as_bytes() {
        return Whiteout::Opaque;
    }
    if b.starts_with(b".wh..wh.") {
        return Whiteout::Metadata;
    }
    match b.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        None => Whiteout::No,
        Some(b"") | Some(b".") | Some(b"..") => Whiteout::Invalid,
        Some(rest) => Whiteout::Remove(OsStr::from_bytes(rest)),
    }
}

/// How a path stands to the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// At or below a filter path: extracted.
    Inside,
    /// Above a filter path (e.g. `/` or `/cnb` for `/cnb/lifecycle`): only
    /// directories are made, so the filtered paths have their parents.
    Ancestor,
    /// Elsewhere: skipped.
    Outside,
}

/// The set of image paths to extract (`--path /cnb`, repeatable). Empty = everything.
#[derive(Debug, Clone, Default)]
pub struct PathFilter {
    prefixes: Vec<Components>,
}

impl PathFilter {
    /// Builds a filter from absolute or relative image paths. `/` means everything.
    pub fn new<S: AsRef<str>>(paths: &[S]) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        for p in paths {
            let c = normalise(p.as_ref().as_bytes())
                .map_err(|e| format!("--path {:?}: {e}", p.as_ref()))?;
            if c.is_empty() {
                return Ok(PathFilter::default());
            }
            prefixes.push(c);
        }
        Ok(PathFilter { prefixes })
    }

    /// Whether this filter lets everything through.
    pub fn is_everything(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The filter's paths, for messages.
    pub fn paths(&self) -> Vec<String> {
        self.prefixes.iter().map(|p| display(p)).collect()
    }

    /// How `path` stands to the filter.
    pub fn relation(&self, path: &[OsString]) -> Relation {
        if self.prefixes.is_empty() {
            return Relation::Inside;
        }
        let mut ancestor = false;
        for p in &self.prefixes {
            if path.starts_with(p) {
                return Relation::Inside;
            }
            if p.starts_with(path) {
                ancestor = true;
            }
        }
        if ancestor {
            Relation::Ancestor
        } else {
            Relation::Outside
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(s: &str) -> Vec<String> {
        normalise(s.as_bytes())
            .unwrap()
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn normalise_table() {
        let ok: &[(&str, &[&str])] = &[
            ("a/b", &["a", "b"]),
            ("./a/b/", &["a", "b"]),
            ("/abs/path", &["abs", "path"]),
            ("a//b/./c", &["a", "b", "c"]),
            ("a/../b", &["b"]),
            ("a/b/../../c", &["c"]),
            ("./", &[]),
            ("/", &[]),
            ("", &[]),
            ("a/..", &[]),
        ];
        for (input, want) in ok {
            assert_eq!(comps(input), *want, "{input}");
        }
        for bad in [
            "..",
            "../x",
            "a/../../x",
            "/../etc/passwd",
            "./../x",
            "a\0b",
        ] {
            assert!(normalise(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn whiteout_table() {
        fn w(s: &str) -> Whiteout<'_> {
            whiteout(OsStr::new(s))
        }
        assert_eq!(w("file"), Whiteout::No);
        assert_eq!(w(".wh.file"), Whiteout::Remove(OsStr::new("file")));
        assert_eq!(w(".wh..hidden"), Whiteout::Remove(OsStr::new(".hidden")));
        assert_eq!(w(".wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(w(".wh..wh.plnk"), Whiteout::Metadata);
        assert_eq!(w(".wh."), Whiteout::Invalid);
        assert_eq!(w(".wh.."), Whiteout::Invalid);
        assert_eq!(w(".wh..."), Whiteout::Invalid);
        assert_eq!(w(".whfile"), Whiteout::No);
        assert_eq!(w("wh.file"), Whiteout::No);
    }

    #[test]
    fn filter_table() {
        let f = PathFilter::new(&["/cnb", "usr/local/bin/"]).unwrap();
        let rel = |s: &str| f.relation(&normalise(s.as_bytes()).unwrap());
        assert_eq!(rel("cnb"), Relation::Inside);
        assert_eq!(rel("cnb/lifecycle/creator"), Relation::Inside);
        assert_eq!(rel("cnbx"), Relation::Outside);
        assert_eq!(rel("/"), Relation::Ancestor);
        assert_eq!(rel("usr"), Relation::Ancestor);
        assert_eq!(rel("usr/local"), Relation::Ancestor);
        assert_eq!(rel("usr/local/bin/x"), Relation::Inside);
        assert_eq!(rel("usr/lib"), Relation::Outside);
        assert_eq!(rel("etc/passwd"), Relation::Outside);
        assert!(PathFilter::new(&["/"]).unwrap().is_everything());
        assert!(PathFilter::new::<&str>(&[]).unwrap().is_everything());
        assert!(PathFilter::new(&["/cnb/../.."]).is_err());
        assert_eq!(f.paths(), vec!["/cnb", "/usr/local/bin"]);
    }
}

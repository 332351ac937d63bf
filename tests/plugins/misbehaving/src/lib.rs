//! `locald-test-plugin-misbehaving`: a plugin that serves the images of an OCI
//! image layout directory and, on request, misbehaves in one way, so the tests can
//! check that locald survives it with a clear message.
//!
//! The location is `MODE:DIR` (`--source misbehaving:MODE:DIR`), MODE one of:
//!
//! | mode | does |
//! |---|---|
//! | `ok` | behaves |
//! | `panic-open`, `panic-resolve`, `panic-read` | panics inside that operation |
//! | `bad-manifest-digest` | claims a wrong manifest digest |
//! | `bad-config` | returns altered config bytes (same length) |
//! | `short-blob` | returns fewer bytes than a blob has |
//! | `long-blob` | appends bytes to every blob |
//! | `bad-blob` | flips a byte in the middle of every blob |
//!
//! Loading the library has a visible effect when `LOCALD_TEST_LOAD_MARKER` names a
//! file: an ELF constructor, which `dlopen` runs before the host sees a symbol,
//! appends a line to it. The host's tests use it to show that a library was (or
//! was never) opened.
//!
//! It depends on `locald-plugin` only, so it carries a small JSON reader of its
//! own and takes digests from the layout's descriptors instead of hashing.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use locald_plugin::{export_plugin, Error, Plugin, ResolvedImage, Source};

/// The plugin.
pub struct Misbehaving;

/// How the plugin misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    PanicOpen,
    PanicResolve,
    PanicRead,
    BadManifestDigest,
    BadConfig,
    ShortBlob,
    LongBlob,
    BadBlob,
}

const MODES: &[(&str, Mode)] = &[
    ("ok", Mode::Ok),
    ("panic-open", Mode::PanicOpen),
    ("panic-resolve", Mode::PanicResolve),
    ("panic-read", Mode::PanicRead),
    ("bad-manifest-digest", Mode::BadManifestDigest),
    ("bad-config", Mode::BadConfig),
    ("short-blob", Mode::ShortBlob),
    ("long-blob", Mode::LongBlob),
    ("bad-blob", Mode::BadBlob),
];

/// One open `MODE:DIR`.
pub struct Layout {
    mode: Mode,
    dir: PathBuf,
}

impl Plugin for Misbehaving {
    type Source = Layout;
    const NAME: &'static str = "misbehaving";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SCHEMES: &'static [&'static str] = &["misbehaving"];

    fn open(location: &str) -> Result<Layout, Error> {
        let (mode, dir) = location.split_once(':').ok_or_else(|| {
            Error::new(format!(
                "location {location:?} is not MODE:DIR (modes: {})",
                mode_names()
            ))
        })?;
        let mode = MODES
            .iter()
            .find(|(name, _)| *name == mode)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                Error::new(format!("unknown mode {mode:?} (modes: {})", mode_names()))
            })?;
        if mode == Mode::PanicOpen {
            panic!("misbehaving on purpose in open");
        }
        let dir = PathBuf::from(dir);
        if !dir.join("index.json").is_file() {
            return Err(Error::new(format!(
                "{} is not an OCI image layout (no index.json)",
                dir.display()
            )));
        }
        Ok(Layout { mode, dir })
    }
}

fn mode_names() -> String {
    MODES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

impl Layout {
    fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| Error::new(format!("malformed digest {digest:?}")))?;
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !plain(alg) || !plain(hex) {
            return Err(Error::new(format!("malformed digest {digest:?}")));
        }
        Ok(self.dir.join("blobs").join(alg).join(hex))
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::not_found(format!("no blob {digest}")),
            _ => Error::new(format!("{}: {e}", path.display())),
        })
    }

    fn read_json(&self, path: &Path) -> Result<Json, Error> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
        Json::parse(&bytes).map_err(|e| Error::new(format!("{}: {e}", path.display())))
    }
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn ref_name(d: &Json) -> Option<&str> {
    d.get("annotations")?.get(REF_NAME)?.as_str()
}

fn digest_of(d: &Json) -> Result<&str, Error> {
    d.get("digest")
        .and_then(Json::as_str)
        .ok_or_else(|| Error::new("a descriptor has no digest"))
}

/// Whether a descriptor's platform is `platform` (`os/arch[/variant]`); a
/// descriptor without one matches anything.
fn platform_matches(d: &Json, platform: &str) -> bool {
    let Some(p) = d.get("platform") else {
        return true;
    };
    let mut want = platform.split('/');
    let field = |k: &str| p.get(k).and_then(Json::as_str);
    let os_ok = want.next() == field("os");
    let arch_ok = want.next() == field("architecture");
    let variant_ok = match (want.next(), field("variant")) {
        (Some(w), Some(v)) => w == v,
        _ => true,
    };
    os_ok && arch_ok && variant_ok
}

impl Source for Layout {
    type Blob = Misread;

    fn resolve(&self, image: Option<&str>, platform: &str) -> Result<ResolvedImage, Error> {
        if self.mode == Mode::PanicResolve {
            panic!("misbehaving on purpose in resolve");
        }
        let index = self.read_json(&self.dir.join("index.json"))?;
        let entries = index
            .get("manifests")
            .and_then(Json::as_array)
            .ok_or_else(|| Error::new("index.json has no manifests"))?;
        let names: Vec<&str> = entries.iter().filter_map(ref_name).collect();
        let top = match image {
            Some(name) => entries.iter().find(|d| ref_name(d) == Some(name)),
            None if entries.len() == 1 => entries.first(),
            None => {
                return Err(Error::new(format!(
                    "{} holds {} images; name one of: {}",
                    self.dir.display(),
                    entries.len(),
                    names.join(", ")
                )))
            }
        }
        .ok_or_else(|| {
            Error::not_found(format!(
                "{} has no image named {:?}; it holds: {}",
                self.dir.display(),
                image.unwrap_or_default(),
                names.join(", ")
            ))
        })?;
        let root_digest = digest_of(top)?.to_owned();
        let is_index = top
            .get("mediaType")
            .and_then(Json::as_str)
            .is_some_and(|m| INDEX_TYPES.contains(&m));
        let manifest_digest = if is_index {
            let list = Json::parse(&self.read_blob(&root_digest)?)
                .map_err(|e| Error::new(format!("index {root_digest}: {e}")))?;
            let chosen = list
                .get("manifests")
                .and_then(Json::as_array)
                .and_then(|m| m.iter().find(|d| platform_matches(d, platform)))
                .ok_or_else(|| {
                    Error::not_found(format!("no image for platform {platform} in {root_digest}"))
                })?;
            digest_of(chosen)?.to_owned()
        } else {
            root_digest.clone()
        };
        let manifest = self.read_blob(&manifest_digest)?;
        let parsed = Json::parse(&manifest)
            .map_err(|e| Error::new(format!("manifest {manifest_digest}: {e}")))?;
        let config_digest = parsed
            .get("config")
            .ok_or_else(|| Error::new(format!("manifest {manifest_digest} has no config")))
            .and_then(digest_of)?;
        let mut config = self.read_blob(config_digest)?;
        let mut resolved = ResolvedImage {
            name: image
                .map(str::to_owned)
                .or_else(|| ref_name(top).map(str::to_owned)),
            manifest,
            manifest_digest: manifest_digest.clone(),
            root_digest,
            config: Vec::new(),
        };
        match self.mode {
            Mode::BadManifestDigest => {
                let lie = flip_last_hex(&manifest_digest);
                if resolved.root_digest == manifest_digest {
                    resolved.root_digest = lie.clone();
                }
                resolved.manifest_digest = lie;
            }
            Mode::BadConfig => {
                // Same length, still JSON: upper-case the first letter of a value.
                if let Some(i) = config.iter().position(|b| *b == b':').and_then(|colon| {
                    config[colon..]
                        .iter()
                        .position(u8::is_ascii_lowercase)
                        .map(|j| colon + j)
                }) {
                    config[i] = config[i].to_ascii_uppercase();
                }
            }
            _ => {}
        }
        resolved.config = config;
        Ok(resolved)
    }

    fn open_blob(&self, digest: &str, size: u64) -> Result<Misread, Error> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::not_found(format!("no blob {digest}")),
            _ => Error::new(format!("{}: {e}", path.display())),
        })?;
        Ok(Misread {
            mode: self.mode,
            file,
            pos: 0,
            size,
            extra: 4096,
        })
    }
}

/// `sha256:...0` for `sha256:...1`: a well-formed digest of something else.
fn flip_last_hex(digest: &str) -> String {
    let mut s = digest.to_owned();
    if let Some(last) = s.pop() {
        s.push(if last == '0' { '1' } else { '0' });
    }
    s
}

/// A blob, read as the mode says.
pub struct Misread {
    mode: Mode,
    file: File,
    /// Bytes handed out so far.
    pos: u64,
    /// The size the host asked for.
    size: u64,
    /// Extra bytes still to append (`long-blob`).
    extra: usize,
}

impl Read for Misread {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.mode {
            Mode::PanicRead => panic!("misbehaving on purpose in read_blob"),
            Mode::ShortBlob => {
                let left = (self.size / 2).saturating_sub(self.pos);
                let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.file.read(&mut buf[..cap])?;
                self.pos += n as u64;
                Ok(n)
            }
            Mode::LongBlob => {
                let n = self.file.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                let n = buf.len().min(self.extra);
                buf[..n].fill(b'!');
                self.extra -= n;
                Ok(n)
            }
            Mode::BadBlob => {
                let n = self.file.read(buf)?;
                let middle = self.size / 2;
                if (self.pos..self.pos + n as u64).contains(&middle) {
                    let i = usize::try_from(middle - self.pos).unwrap_or(0);
                    buf[i] ^= 0xff;
                }
                self.pos += n as u64;
                Ok(n)
            }
            _ => self.file.read(buf),
        }
    }
}

export_plugin!(Misbehaving);

/// Runs when the library is loaded (see the crate docs): a pointer in
/// `.init_array`, which the dynamic loader calls on `dlopen`.
#[used]
#[allow(unsafe_code)]
// SAFETY: `.init_array` holds pointers to functions the loader calls with no
// arguments before `dlopen` returns; `mark_load` is such a function, takes
// nothing, cannot unwind (it only appends to a file, ignoring errors), and uses
// no state that needs initialising first.
#[unsafe(link_section = ".init_array")]
static MARK_LOAD: extern "C" fn() = mark_load;

extern "C" fn mark_load() {
    use std::io::Write;
    if let Some(marker) = std::env::var_os("LOCALD_TEST_LOAD_MARKER") {
        // Nothing here may panic (there is no unwinding out of a constructor);
        // a marker that cannot be written shows as "not loaded" in the tests.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(marker)
            .and_then(|mut f| f.write_all(b"misbehaving loaded\n"));
    }
}

/// Just enough JSON for index.json and manifests.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    /// `null`, `true`, `false` or a number: nothing here reads their value.
    Scalar,
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(bytes: &[u8]) -> Result<Json, String> {
        let mut p = Parser { s: bytes, i: 0 };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing bytes at offset {}", p.i));
        }
        Ok(v)
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("invalid JSON at offset {}: {what}", self.i))
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return self.err("nested too deeply");
        }
        self.ws();
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.eat(b"}") {
                    return Ok(Json::Object(members));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.ws();
                    if !self.eat(b":") {
                        return self.err("expected ':'");
                    }
                    members.push((key, self.value(depth + 1)?));
                    self.ws();
                    if self.eat(b"}") {
                        return Ok(Json::Object(members));
                    }
                    if !self.eat(b",") {
                        return self.err("expected ',' or '}'");
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b"]") {
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(b"]") {
                        return Ok(Json::Array(items));
                    }
                    if !self.eat(b",") {
                        return self.err("expected ',' or ']'");
                    }
                }
            }
            Some(b'"') => self.string().map(Json::String),
            Some(_) if self.eat(b"null") || self.eat(b"true") || self.eat(b"false") => {
                Ok(Json::Scalar)
            }
            Some(_) => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| b"+-.eE0123456789".contains(b))
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .map_or_else(|| self.err("expected a value"), |_| Ok(Json::Scalar))
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if !self.eat(b"\"") {
            return self.err("expected a string");
        }
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let unit = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&unit) && self.eat(b"\\u") {
                                let low = self.hex4()?;
                                0x10000 + ((unit - 0xd800) << 10) + low.saturating_sub(0xdc00)
                            } else {
                                unit
                            };
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).or_else(|_| self.err("string is not UTF-8"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.s.get(self.i..self.i + 4).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
        });
        match digits {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_descriptors() {
        let v = Json::parse(
            br#" {"manifests":[{"digest":"sha256:ab","size":12,"annotations":{"org.opencontainers.image.ref.name":"a\u00e9\n"}}],"x":[true,false,null,-1.5e3]} "#,
        )
        .unwrap_or(Json::Scalar);
        let m = &v.get("manifests").and_then(Json::as_array).unwrap_or(&[])[0];
        assert_eq!(digest_of(m).ok(), Some("sha256:ab"));
        assert_eq!(ref_name(m), Some("a\u{e9}\n"));
        assert!(Json::parse(b"{\"a\":}").is_err());
        assert!(Json::parse(b"[1] 2").is_err());
    }

    #[test]
    fn platforms_match() {
        let d =
            Json::parse(br#"{"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}"#)
                .unwrap_or(Json::Scalar);
        assert!(platform_matches(&d, "linux/arm64"));
        assert!(platform_matches(&d, "linux/arm64/v8"));
        assert!(!platform_matches(&d, "linux/arm64/v7"));
        assert!(!platform_matches(&d, "linux/amd64"));
        assert!(platform_matches(&Json::Scalar, "linux/amd64"));
    }

    #[test]
    fn flipped_digest_differs() {
        assert_eq!(flip_last_hex("sha256:a1"), "sha256:a0");
        assert_eq!(flip_last_hex("sha256:a0"), "sha256:a1");
    }
}

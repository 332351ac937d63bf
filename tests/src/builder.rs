//! Tiny Cloud Native Buildpacks builder images, laid out the way `pack builder
//! create` lays out a real one.
//!
//! A [`BuilderSpec`] turns into an [`ImageSpec`] whose layers, in order, are:
//!
//! 1. the base root filesystem ([`BuilderSpec::rootfs`]);
//! 2. pack's default directories: `workspace/` and `layers/` owned by the CNB
//!    user, `cnb/`, `cnb/buildpacks/`, `cnb/extensions/`, `platform/` and
//!    `platform/env/` owned by root;
//! 3. the lifecycle: `cnb/lifecycle/creator` (mode 0755, the bytes of
//!    [`BuilderSpec::creator`]), `cnb/lifecycle/lifecycle.toml`, the other
//!    phases (`analyzer`, `builder`, ...) as symlinks to `creator`, and the
//!    compatibility symlink `lifecycle -> /cnb/lifecycle`;
//! 4. one layer per buildpack (sorted by `id@version`, as pack adds them):
//!    `cnb/buildpacks/<id, '/' as '_'>/<version>/` with `buildpack.toml`,
//!    `bin/detect` and `bin/build`;
//! 5. `cnb/order.toml`;
//! 6. `cnb/stack.toml` (when [`BuilderSpec::stack_toml`]);
//! 7. `cnb/run.toml` (when [`BuilderSpec::run_toml`]).
//!
//! Entry names carry no leading `/`. Every layer is gzip-compressed.
//!
//! ```no_run
//! use locald_tests::builder::BuilderSpec;
//! use locald_tests::fixture::LayoutBuilder;
//! let spec = BuilderSpec {
//!     run_mirrors: vec!["mirror.example/heroku:22-cnb".into()],
//!     ..BuilderSpec::default()
//! };
//! let mut b = LayoutBuilder::new("/tmp/builder-layout");
//! b.add_image(spec.image().ref_name("builder"));
//! b.write().unwrap();
//! ```

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde_json::{json, Value};

use crate::fixture::{Compression, Entry, ImageInfo, ImageSpec, Layer, LayoutBuilder};

/// Label holding the builder metadata JSON.
pub const METADATA_LABEL: &str = "io.buildpacks.builder.metadata";
/// Label holding the stack id.
pub const STACK_ID_LABEL: &str = "io.buildpacks.stack.id";
/// Label holding the stack mixins (a JSON array).
pub const MIXINS_LABEL: &str = "io.buildpacks.stack.mixins";
/// Label holding the buildpack order JSON.
pub const ORDER_LABEL: &str = "io.buildpacks.buildpack.order";
/// Label mapping buildpack id -> version -> layer information.
pub const LAYERS_LABEL: &str = "io.buildpacks.buildpack.layers";
/// The `createdBy.name` pack writes.
pub const CREATED_BY_NAME: &str = "Pack CLI";
/// The `createdBy.version` written into the metadata label.
pub const CREATED_BY_VERSION: &str = "0.36.4";
/// The lifecycle phases besides `creator`, written as symlinks to `creator`.
pub const PHASES: &[&str] = &[
    "analyzer", "builder", "detector", "exporter", "extender", "launcher", "rebaser", "restorer",
];

/// A builder image description; every field has a realistic default (see
/// [`BuilderSpec::default`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuilderSpec {
    /// `[lifecycle] version` of `lifecycle.toml` and the metadata label.
    pub lifecycle_version: String,
    /// Supported Platform API versions of the lifecycle.
    pub platform_apis: Vec<String>,
    /// Supported Buildpack API versions of the lifecycle; the last one is the
    /// `api` of every buildpack.
    pub buildpack_apis: Vec<String>,
    /// The buildpacks on the builder, `(id, version)`.
    pub buildpacks: Vec<(String, String)>,
    /// Detection order: groups of `(id, version, optional)`.
    pub order: Vec<Vec<(String, String, bool)>>,
    /// The run image reference.
    pub run_image: String,
    /// Mirrors of the run image.
    pub run_mirrors: Vec<String>,
    /// `CNB_STACK_ID` and the `io.buildpacks.stack.id` label.
    pub stack_id: String,
    /// `CNB_USER_ID`.
    pub uid: u32,
    /// `CNB_GROUP_ID`.
    pub gid: u32,
    /// The bytes of `/cnb/lifecycle/creator` (mode 0755).
    pub creator: Vec<u8>,
    /// The entries of the base root filesystem layer.
    pub rootfs: Vec<Entry>,
    /// Whether `/cnb/stack.toml` (the pre-Platform-API-0.12 file) is written.
    pub stack_toml: bool,
    /// Whether `/cnb/run.toml` is written.
    pub run_toml: bool,
}

/// The creator stand-in: a shell script that prints `stand-in creator`.
pub const DEFAULT_CREATOR: &str = "#!/bin/sh\necho \"stand-in creator\"\nexit 0\n";

/// A minimal base filesystem: `etc/` with `passwd` and `group` naming root and
/// the CNB user (`cnb`, `uid:gid`, home `/home/cnb`), `home/cnb/` owned by it,
/// `tmp/` (mode 1777), `usr/` and `usr/bin/`.
pub fn default_rootfs(uid: u32, gid: u32) -> Vec<Entry> {
    let passwd =
        format!("root:x:0:0:root:/root:/bin/sh\ncnb:x:{uid}:{gid}:CNB user:/home/cnb:/bin/sh\n");
    let group = format!("root:x:0:\ncnb:x:{gid}:\n");
    vec![
        Entry::dir("etc/"),
        Entry::file("etc/passwd", passwd),
        Entry::file("etc/group", group),
        Entry::dir("home/"),
        Entry::dir("home/cnb/").owner(u64::from(uid), u64::from(gid)),
        Entry::dir("tmp/").mode(0o1777),
        Entry::dir("usr/"),
        Entry::dir("usr/bin/"),
    ]
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for BuilderSpec {
    /// Lifecycle 0.20.5 (Platform APIs 0.7–0.14, Buildpack APIs 0.7–0.11),
    /// `heroku/nodejs@3.2.1` and `heroku/procfile@4.0.0` in one group (procfile
    /// optional), run image `heroku/heroku:22-cnb`, stack `heroku-22`, user
    /// 1002:1000, both `stack.toml` and `run.toml`.
    fn default() -> Self {
        let (uid, gid) = (1002, 1000);
        let nodejs = ("heroku/nodejs".to_owned(), "3.2.1".to_owned());
        let procfile = ("heroku/procfile".to_owned(), "4.0.0".to_owned());
        Self {
            lifecycle_version: "0.20.5".into(),
            platform_apis: strings(&["0.7", "0.8", "0.9", "0.10", "0.11", "0.12", "0.13", "0.14"]),
            buildpack_apis: strings(&["0.7", "0.8", "0.9", "0.10", "0.11"]),
            order: vec![vec![
                (nodejs.0.clone(), nodejs.1.clone(), false),
                (procfile.0.clone(), procfile.1.clone(), true),
            ]],
            buildpacks: vec![nodejs, procfile],
            run_image: "heroku/heroku:22-cnb".into(),
            run_mirrors: Vec::new(),
            stack_id: "heroku-22".into(),
            uid,
            gid,
            creator: DEFAULT_CREATOR.as_bytes().to_vec(),
            rootfs: default_rootfs(uid, gid),
            stack_toml: true,
            run_toml: true,
        }
    }
}

/// `/cnb/buildpacks/<id>/<version>` without the leading `/`, `/` in the id
/// written as `_` (as pack and the lifecycle do).
pub fn buildpack_dir(id: &str, version: &str) -> String {
    format!("cnb/buildpacks/{}/{version}", id.replace('/', "_"))
}

/// The `homepage` given to a buildpack.
pub fn buildpack_homepage(id: &str) -> String {
    format!("https://github.com/{id}")
}

/// The `name` given to a buildpack.
pub fn buildpack_name(id: &str) -> String {
    format!("Stand-in {id}")
}

impl BuilderSpec {
    /// The builder image: layers as described in the [module docs](self),
    /// config `Env` with `PATH`, `CNB_USER_ID`, `CNB_GROUP_ID` and
    /// `CNB_STACK_ID`, `User` `uid:gid`, `WorkingDir` `/layers`, and the labels
    /// pack writes. No ref name is set.
    pub fn image(&self) -> ImageSpec {
        let mut layers = vec![
            gz(self.rootfs.clone()),
            gz(self.dirs_entries()),
            gz(self.lifecycle_entries()),
        ];
        let bp_layers = self.buildpack_layers();
        layers.extend(bp_layers.iter().map(|(_, _, l)| l.clone()));
        layers.push(gz(vec![Entry::file("cnb/order.toml", self.order_toml())]));
        if self.stack_toml {
            layers.push(gz(vec![Entry::file("cnb/stack.toml", self.stack_toml())]));
        }
        if self.run_toml {
            layers.push(gz(vec![Entry::file("cnb/run.toml", self.run_toml())]));
        }
        ImageSpec::new(layers)
            .env(format!("CNB_USER_ID={}", self.uid))
            .env(format!("CNB_GROUP_ID={}", self.gid))
            .env(format!("CNB_STACK_ID={}", self.stack_id))
            .user(format!("{}:{}", self.uid, self.gid))
            .working_dir("/layers")
            .label(METADATA_LABEL, self.metadata_label())
            .label(STACK_ID_LABEL, self.stack_id.clone())
            .label(MIXINS_LABEL, "[]")
            .label(ORDER_LABEL, self.order_label())
            .label(
                LAYERS_LABEL,
                layers_label_json(self, &bp_layers).to_string(),
            )
    }

    /// Writes [`BuilderSpec::image`] as the only image of an OCI layout at
    /// `dir`, named `ref_name`.
    pub fn write_layout(&self, dir: &Path, ref_name: &str) -> io::Result<ImageInfo> {
        let mut b = LayoutBuilder::new(dir);
        let info = b.add_image(self.image().ref_name(ref_name));
        b.write()?;
        Ok(info)
    }

    /// `/cnb/lifecycle/lifecycle.toml`: `[apis.buildpack]` and `[apis.platform]`
    /// (`deprecated` empty, `supported` from the spec) and `[lifecycle] version`.
    pub fn lifecycle_toml(&self) -> String {
        format!(
            "[apis]\n[apis.buildpack]\n  deprecated = []\n  supported = {}\n\
             [apis.platform]\n  deprecated = []\n  supported = {}\n\n\
             [lifecycle]\n  version = {}\n",
            toml_array(&self.buildpack_apis),
            toml_array(&self.platform_apis),
            toml_str(&self.lifecycle_version),
        )
    }

    /// `/cnb/order.toml`: one `[[order]]` per group, one `[[order.group]]` per
    /// buildpack with `id`, `version` and `optional = true` when optional.
    pub fn order_toml(&self) -> String {
        let mut out = String::new();
        for group in &self.order {
            out.push_str("[[order]]\n");
            for (id, version, optional) in group {
                out.push_str("\n  [[order.group]]\n");
                out.push_str(&format!("    id = {}\n", toml_str(id)));
                out.push_str(&format!("    version = {}\n", toml_str(version)));
                if *optional {
                    out.push_str("    optional = true\n");
                }
            }
            out.push('\n');
        }
        out
    }

    /// `/cnb/run.toml`: one `[[images]]` with `image` and `mirrors`.
    pub fn run_toml(&self) -> String {
        format!(
            "[[images]]\n  image = {}\n  mirrors = {}\n",
            toml_str(&self.run_image),
            toml_array(&self.run_mirrors)
        )
    }

    /// `/cnb/stack.toml`: `[run-image]` with `image` and `mirrors`.
    pub fn stack_toml(&self) -> String {
        format!(
            "[run-image]\n  image = {}\n  mirrors = {}\n",
            toml_str(&self.run_image),
            toml_array(&self.run_mirrors)
        )
    }

    /// `buildpack.toml` of one buildpack: `api` (the last of
    /// [`BuilderSpec::buildpack_apis`]), `[buildpack]` id/version/name/homepage,
    /// `[[targets]]` linux/amd64 and `[[stacks]]` with the stack id.
    pub fn buildpack_toml(&self, id: &str, version: &str) -> String {
        format!(
            "api = {}\n\n[buildpack]\n  id = {}\n  version = {}\n  name = {}\n  homepage = {}\n\n\
             [[targets]]\n  os = \"linux\"\n  arch = \"amd64\"\n\n[[stacks]]\n  id = {}\n",
            toml_str(&self.buildpack_api()),
            toml_str(id),
            toml_str(version),
            toml_str(&buildpack_name(id)),
            toml_str(&buildpack_homepage(id)),
            toml_str(&self.stack_id),
        )
    }

    /// The `io.buildpacks.builder.metadata` label (JSON): `description`,
    /// `buildpacks` (`id`, `name`, `version`, `homepage`), `extensions`,
    /// `stack.runImage`, `images`, `lifecycle` (`version`, the deprecated `api`
    /// with the earliest versions, `apis`) and `createdBy`.
    pub fn metadata_label(&self) -> String {
        let run = json!({"image": self.run_image, "mirrors": self.run_mirrors});
        let buildpacks: Vec<Value> = self
            .buildpacks
            .iter()
            .map(|(id, version)| {
                json!({
                    "id": id,
                    "name": buildpack_name(id),
                    "version": version,
                    "homepage": buildpack_homepage(id),
                })
            })
            .collect();
        json!({
            "description": "Tiny CNB builder for locald tests",
            "buildpacks": buildpacks,
            "extensions": [],
            "stack": {"runImage": run},
            "images": [run],
            "lifecycle": {
                "version": self.lifecycle_version,
                "api": {
                    "buildpack": earliest(&self.buildpack_apis),
                    "platform": earliest(&self.platform_apis),
                },
                "apis": {
                    "buildpack": {"deprecated": [], "supported": self.buildpack_apis},
                    "platform": {"deprecated": [], "supported": self.platform_apis},
                },
            },
            "createdBy": {"name": CREATED_BY_NAME, "version": CREATED_BY_VERSION},
        })
        .to_string()
    }

    /// The `io.buildpacks.buildpack.order` label (JSON): `[{"group": [{"id",
    /// "version", "optional"?}]}]`.
    pub fn order_label(&self) -> String {
        let groups: Vec<Value> = self
            .order
            .iter()
            .map(|g| {
                let refs: Vec<Value> = g
                    .iter()
                    .map(|(id, version, optional)| {
                        let mut r = json!({"id": id, "version": version});
                        if *optional {
                            r["optional"] = json!(true);
                        }
                        r
                    })
                    .collect();
                json!({ "group": refs })
            })
            .collect();
        Value::Array(groups).to_string()
    }

    /// The `io.buildpacks.buildpack.layers` label (JSON): id -> version ->
    /// `{api, stacks, targets, layerDiffID, homepage, name}`, `layerDiffID`
    /// being the diff id of the buildpack's layer in [`BuilderSpec::image`].
    pub fn layers_label(&self) -> String {
        layers_label_json(self, &self.buildpack_layers()).to_string()
    }

    /// The `api` written into every `buildpack.toml`.
    fn buildpack_api(&self) -> String {
        self.buildpack_apis
            .last()
            .cloned()
            .unwrap_or_else(|| "0.10".into())
    }

    fn dirs_entries(&self) -> Vec<Entry> {
        let (uid, gid) = (u64::from(self.uid), u64::from(self.gid));
        vec![
            Entry::dir("workspace/").owner(uid, gid),
            Entry::dir("layers/").owner(uid, gid),
            Entry::dir("cnb/"),
            Entry::dir("cnb/buildpacks/"),
            Entry::dir("cnb/extensions/"),
            Entry::dir("platform/"),
            Entry::dir("platform/env/"),
        ]
    }

    fn lifecycle_entries(&self) -> Vec<Entry> {
        let mut e = vec![
            Entry::dir("cnb/lifecycle/"),
            Entry::file("cnb/lifecycle/creator", &self.creator).mode(0o755),
            Entry::file("cnb/lifecycle/lifecycle.toml", self.lifecycle_toml()),
        ];
        e.extend(
            PHASES
                .iter()
                .map(|p| Entry::symlink(format!("cnb/lifecycle/{p}"), "creator")),
        );
        e.push(Entry::symlink("lifecycle", "/cnb/lifecycle"));
        e
    }

    /// `(id, version, layer)` per buildpack, sorted by `id@version` (pack's
    /// order); a repeated `id@version` keeps its last definition.
    fn buildpack_layers(&self) -> Vec<(String, String, Layer)> {
        let mut by_name: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (id, version) in &self.buildpacks {
            by_name.insert(format!("{id}@{version}"), (id.clone(), version.clone()));
        }
        by_name
            .into_values()
            .map(|(id, version)| {
                let layer = gz(self.buildpack_entries(&id, &version));
                (id, version, layer)
            })
            .collect()
    }

    fn buildpack_entries(&self, id: &str, version: &str) -> Vec<Entry> {
        let escaped = id.replace('/', "_");
        let dir = buildpack_dir(id, version);
        let detect = "#!/bin/sh\n# stand-in detect\nexit 0\n";
        let build = format!(
            "#!/bin/sh\necho {}\nexit 0\n",
            sh_quote(&format!("stand-in build: {id}@{version}"))
        );
        vec![
            Entry::dir("cnb/"),
            Entry::dir("cnb/buildpacks/"),
            Entry::dir(format!("cnb/buildpacks/{escaped}/")),
            Entry::dir(format!("{dir}/")),
            Entry::file(
                format!("{dir}/buildpack.toml"),
                self.buildpack_toml(id, version),
            ),
            Entry::dir(format!("{dir}/bin/")),
            Entry::file(format!("{dir}/bin/detect"), detect).mode(0o755),
            Entry::file(format!("{dir}/bin/build"), build).mode(0o755),
        ]
    }
}

fn gz(entries: Vec<Entry>) -> Layer {
    Layer::new(entries, Compression::Gzip)
}

fn layers_label_json(spec: &BuilderSpec, layers: &[(String, String, Layer)]) -> Value {
    let mut map = serde_json::Map::new();
    for (id, version, layer) in layers {
        let info = json!({
            "api": spec.buildpack_api(),
            "stacks": [{"id": spec.stack_id}],
            "targets": [{"os": "linux", "arch": "amd64"}],
            "layerDiffID": layer.diff_id(),
            "homepage": buildpack_homepage(id),
            "name": buildpack_name(id),
        });
        map.entry(id.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(version.clone(), info);
    }
    Value::Object(map)
}

/// The numerically smallest `major.minor` version of `versions` (the
/// deprecated single-version `api` fields), `null` when there is none.
fn earliest(versions: &[String]) -> Value {
    let key = |v: &String| -> (u64, u64) {
        let mut it = v.split('.').map(|p| p.parse().unwrap_or(u64::MAX));
        (it.next().unwrap_or(u64::MAX), it.next().unwrap_or(0))
    };
    versions
        .iter()
        .min_by_key(|v| key(v))
        .map_or(Value::Null, |v| json!(v))
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of basic strings.
fn toml_array(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// `s` single-quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{sha256_digest, REF_NAME};
    use std::io::Read;

    /// One tar entry as read back: type, mode, uid, gid, link target, content.
    #[derive(Debug, Clone)]
    struct Got {
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        link: Option<String>,
        content: Vec<u8>,
    }

    /// What a layout holds for one image, read from disk only.
    struct ReadLayout {
        config: Value,
        /// Per layer (manifest order): path -> entry.
        layers: Vec<BTreeMap<String, Got>>,
        /// Per layer: sha256 of the uncompressed tar.
        diff_ids: Vec<String>,
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn blob(dir: &Path, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256_digest(&bytes), digest);
        bytes
    }

    fn read_layout(dir: &Path, ref_name: &str) -> ReadLayout {
        let index = read_json(&dir.join("index.json"));
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"][REF_NAME] == ref_name)
            .unwrap_or_else(|| panic!("no {ref_name} in {index}"));
        let manifest: Value =
            serde_json::from_slice(&blob(dir, desc["digest"].as_str().unwrap())).unwrap();
        let config: Value =
            serde_json::from_slice(&blob(dir, manifest["config"]["digest"].as_str().unwrap()))
                .unwrap();
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for l in manifest["layers"].as_array().unwrap() {
            assert_eq!(
                l["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let raw = blob(dir, l["digest"].as_str().unwrap());
            let tar_bytes = Compression::Gzip.decompress(&raw).unwrap();
            diff_ids.push(sha256_digest(&tar_bytes));
            let mut entries = BTreeMap::new();
            let mut a = tar::Archive::new(&tar_bytes[..]);
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                let h = e.header();
                let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let got = Got {
                    kind: h.entry_type(),
                    mode: h.mode().unwrap(),
                    uid: h.uid().unwrap(),
                    gid: h.gid().unwrap(),
                    link: e
                        .link_name_bytes()
                        .map(|l| String::from_utf8(l.into_owned()).unwrap()),
                    content,
                };
                assert!(entries.insert(path.clone(), got).is_none(), "dup {path}");
            }
            layers.push(entries);
        }
        ReadLayout {
            config,
            layers,
            diff_ids,
        }
    }

    impl ReadLayout {
        fn label(&self, k: &str) -> Value {
            let s = self.config["config"]["Labels"][k]
                .as_str()
                .unwrap_or_else(|| panic!("label {k} missing"));
            serde_json::from_str(s).unwrap_or_else(|e| panic!("label {k} is not JSON: {e}: {s}"))
        }
        /// The last layer holding `path` (what the merged root shows), and its index.
        fn find(&self, path: &str) -> Option<(usize, &Got)> {
            self.layers
                .iter()
                .enumerate()
                .rev()
                .find_map(|(i, l)| l.get(path).map(|g| (i, g)))
        }
        fn text(&self, path: &str) -> String {
            let (_, g) = self.find(path).unwrap_or_else(|| panic!("{path} missing"));
            assert_eq!(g.kind, tar::EntryType::Regular, "{path}");
            String::from_utf8(g.content.clone()).unwrap()
        }
        fn env(&self) -> Vec<String> {
            self.config["config"]["Env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        }
    }

    fn toml_value(s: &str) -> toml::Value {
        toml::from_str(s).unwrap_or_else(|e| panic!("not TOML: {e}\n{s}"))
    }

    fn write(spec: &BuilderSpec) -> (tempfile::TempDir, ReadLayout) {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        spec.write_layout(&layout, "builder").unwrap();
        let r = read_layout(&layout, "builder");
        (tmp, r)
    }

    #[test]
    fn default_builder_layout_labels_and_files() {
        let spec = BuilderSpec::default();
        let (_tmp, r) = write(&spec);

        // Config: rootfs diff ids are the layers' real ones.
        let cfg_ids: Vec<&str> = r.config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(cfg_ids, r.diff_ids);
        // rootfs, dirs, lifecycle, 2 buildpacks, order, stack, run.
        assert_eq!(r.layers.len(), 8);
        assert_eq!(r.config["config"]["User"], "1002:1000");
        assert_eq!(r.config["config"]["WorkingDir"], "/layers");
        let env = r.env();
        for want in [
            "CNB_USER_ID=1002",
            "CNB_GROUP_ID=1000",
            "CNB_STACK_ID=heroku-22",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} not in {env:?}");
        }
        assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");

        // Labels.
        let md = r.label(METADATA_LABEL);
        let ids: Vec<(&str, &str)> = md["buildpacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["id"].as_str().unwrap(), b["version"].as_str().unwrap()))
            .collect();
        assert_eq!(
            ids,
            [("heroku/nodejs", "3.2.1"), ("heroku/procfile", "4.0.0")]
        );
        assert!(md["buildpacks"][0]["homepage"].is_string());
        assert_eq!(md["stack"]["runImage"]["image"], "heroku/heroku:22-cnb");
        assert_eq!(md["images"][0]["image"], "heroku/heroku:22-cnb");
        assert_eq!(md["lifecycle"]["version"], "0.20.5");
        assert_eq!(md["lifecycle"]["api"]["platform"], "0.7");
        assert_eq!(md["lifecycle"]["apis"]["platform"]["supported"][7], "0.14");
        assert_eq!(md["lifecycle"]["apis"]["buildpack"]["supported"][4], "0.11");
        assert_eq!(
            md["lifecycle"]["apis"]["buildpack"]["deprecated"],
            json!([])
        );
        assert_eq!(md["createdBy"]["name"], "Pack CLI");
        assert_eq!(r.config["config"]["Labels"][STACK_ID_LABEL], "heroku-22");
        assert_eq!(
            r.label(ORDER_LABEL),
            json!([{"group": [
                {"id": "heroku/nodejs", "version": "3.2.1"},
                {"id": "heroku/procfile", "version": "4.0.0", "optional": true},
            ]}])
        );
        let layers = r.label(LAYERS_LABEL);
        for (id, version) in &spec.buildpacks {
            let info = &layers[id][version];
            assert_eq!(info["api"], "0.11");
            let diff_id = info["layerDiffID"].as_str().unwrap();
            let i = r
                .diff_ids
                .iter()
                .position(|d| d == diff_id)
                .unwrap_or_else(|| panic!("{id}: layerDiffID {diff_id} is no layer"));
            let bp_toml = format!("{}/buildpack.toml", buildpack_dir(id, version));
            assert!(
                r.layers[i].contains_key(&bp_toml),
                "{id} layer lacks {bp_toml}"
            );
        }
        assert_eq!(
            spec.layers_label(),
            r.config["config"]["Labels"][LAYERS_LABEL]
        );

        // Lifecycle.
        let (li, creator) = r.find("cnb/lifecycle/creator").unwrap();
        assert_eq!(creator.kind, tar::EntryType::Regular);
        assert_eq!(creator.mode, 0o755);
        assert_eq!(creator.content, DEFAULT_CREATOR.as_bytes());
        for p in PHASES {
            let g = &r.layers[li][&format!("cnb/lifecycle/{p}")];
            assert_eq!(g.kind, tar::EntryType::Symlink, "{p}");
            assert_eq!(g.link.as_deref(), Some("creator"), "{p}");
        }
        let lt = toml_value(&r.text("cnb/lifecycle/lifecycle.toml"));
        assert_eq!(lt["lifecycle"]["version"].as_str(), Some("0.20.5"));
        assert_eq!(
            lt["apis"]["platform"]["supported"]
                .as_array()
                .unwrap()
                .len(),
            8
        );
        assert_eq!(
            lt["apis"]["buildpack"]["supported"][0].as_str(),
            Some("0.7")
        );
        assert!(lt["apis"]["platform"]["deprecated"]
            .as_array()
            .unwrap()
            .is_empty());

        // order.toml.
        let order = toml_value(&r.text("cnb/order.toml"));
        let groups = order["order"].as_array().unwrap();
        assert_eq!(groups.len(), 1);
        let group = groups[0]["group"].as_array().unwrap();
        let got: Vec<(&str, &str, bool)> = group
            .iter()
            .map(|g| {
                (
                    g["id"].as_str().unwrap(),
                    g["version"].as_str().unwrap(),
                    g.get("optional")
                        .and_then(toml::Value::as_bool)
                        .unwrap_or(false),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("heroku/nodejs", "3.2.1", false),
                ("heroku/procfile", "4.0.0", true)
            ]
        );

        // run.toml and stack.toml.
        let run = toml_value(&r.text("cnb/run.toml"));
        assert_eq!(
            run["images"][0]["image"].as_str(),
            Some("heroku/heroku:22-cnb")
        );
        let stack = toml_value(&r.text("cnb/stack.toml"));
        assert_eq!(
            stack["run-image"]["image"].as_str(),
            Some("heroku/heroku:22-cnb")
        );

        // Buildpacks.
        let dir = buildpack_dir("heroku/nodejs", "3.2.1");
        assert_eq!(dir, "cnb/buildpacks/heroku_nodejs/3.2.1");
        let bp = toml_value(&r.text(&format!("{dir}/buildpack.toml")));
        assert_eq!(bp["api"].as_str(), Some("0.11"));
        assert_eq!(bp["buildpack"]["id"].as_str(), Some("heroku/nodejs"));
        assert_eq!(bp["buildpack"]["version"].as_str(), Some("3.2.1"));
        assert_eq!(bp["targets"][0]["os"].as_str(), Some("linux"));
        assert_eq!(bp["stacks"][0]["id"].as_str(), Some("heroku-22"));
        for script in ["detect", "build"] {
            let (_, g) = r.find(&format!("{dir}/bin/{script}")).unwrap();
            assert_eq!(g.mode, 0o755, "{script}");
            assert!(g.content.starts_with(b"#!/bin/sh\n"), "{script}");
        }

        // Base filesystem and pack's directories.
        assert_eq!(r.find("tmp/").unwrap().1.mode, 0o1777);
        assert!(r.text("etc/passwd").contains("cnb:x:1002:1000:"));
        for d in ["workspace/", "layers/"] {
            let g = r.find(d).unwrap().1;
            assert_eq!((g.uid, g.gid), (1002, 1000), "{d}");
        }
        assert_eq!(r.find("platform/env/").unwrap().1.uid, 0);
    }

    #[test]
    fn custom_builder_round_trips() {
        let spec = BuilderSpec {
            lifecycle_version: "0.17.0".into(),
            platform_apis: strings(&["0.10", "0.9", "0.12"]),
            buildpack_apis: strings(&["0.9", "0.10"]),
            buildpacks: vec![
                ("acme/ruby".into(), "1.0.0".into()),
                ("acme/ruby".into(), "2.0.0".into()),
                ("solo".into(), "0.1.0".into()),
            ],
            order: vec![
                vec![("acme/ruby".into(), "2.0.0".into(), false)],
                vec![
                    ("acme/ruby".into(), "1.0.0".into(), true),
                    ("solo".into(), "0.1.0".into(), false),
                ],
            ],
            run_image: "reg.example/run \"quoted\" \\ image".into(),
            run_mirrors: vec!["m1.example/run".into(), "m2.example/run".into()],
            stack_id: "io.example.stack".into(),
            uid: 2000,
            gid: 3000,
            creator: b"#!/bin/sh\nexit 7\n".to_vec(),
            rootfs: default_rootfs(2000, 3000),
            stack_toml: false,
            run_toml: true,
        };
        let (_tmp, r) = write(&spec);
        // rootfs, dirs, lifecycle, 3 buildpacks, order, run.
        assert_eq!(r.layers.len(), 8);
        assert!(r.find("cnb/stack.toml").is_none());
        assert_eq!(r.config["config"]["User"], "2000:3000");

        let md = r.label(METADATA_LABEL);
        assert_eq!(md["buildpacks"].as_array().unwrap().len(), 3);
        assert_eq!(md["lifecycle"]["api"]["platform"], "0.9");
        assert_eq!(md["lifecycle"]["api"]["buildpack"], "0.9");
        assert_eq!(md["stack"]["runImage"]["image"], spec.run_image.as_str());
        assert_eq!(md["stack"]["runImage"]["mirrors"][1], "m2.example/run");

        let layers = r.label(LAYERS_LABEL);
        assert_eq!(layers["acme/ruby"].as_object().unwrap().len(), 2);
        assert_ne!(
            layers["acme/ruby"]["1.0.0"]["layerDiffID"],
            layers["acme/ruby"]["2.0.0"]["layerDiffID"]
        );

        let run = toml_value(&r.text("cnb/run.toml"));
        assert_eq!(run["images"][0]["image"].as_str(), Some(&*spec.run_image));
        assert_eq!(
            run["images"][0]["mirrors"][0].as_str(),
            Some("m1.example/run")
        );
        let stack = toml_value(&spec.stack_toml());
        assert_eq!(stack["run-image"]["image"].as_str(), Some(&*spec.run_image));

        let order = toml_value(&r.text("cnb/order.toml"));
        let groups = order["order"].as_array().unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0]["group"][0]["version"].as_str(), Some("2.0.0"));
        assert!(groups[0]["group"][0].get("optional").is_none());
        assert_eq!(groups[1]["group"][0]["optional"].as_bool(), Some(true));
        assert_eq!(groups[1]["group"][1]["id"].as_str(), Some("solo"));
        assert!(r.find("cnb/buildpacks/solo/0.1.0/buildpack.toml").is_some());
        assert!(r.find("cnb/buildpacks/acme_ruby/1.0.0/bin/build").is_some());
        assert_eq!(
            r.find("cnb/lifecycle/creator").unwrap().1.content,
            b"#!/bin/sh\nexit 7\n"
        );
    }

    #[test]
    fn toml_strings_escape_everything() {
        let nasty = "a\"b\\c\nd\te\u{1}f\u{7f}g é";
        let doc = format!(
            "k = {}\nl = {}\n",
            toml_str(nasty),
            toml_array(&[nasty.into()])
        );
        let v = toml_value(&doc);
        assert_eq!(v["k"].as_str(), Some(nasty));
        assert_eq!(v["l"][0].as_str(), Some(nasty));
    }

    #[test]
    fn stand_in_scripts_run() {
        if !crate::peers::have("sh") {
            eprintln!("skipping: no sh");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let spec = BuilderSpec::default();
        let creator = tmp.path().join("creator");
        std::fs::write(&creator, &spec.creator).unwrap();
        let out = std::process::Command::new("sh")
            .arg(&creator)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"stand-in creator\n");
        let build = tmp.path().join("build");
        let entries = spec.buildpack_entries("it's/odd", "1");
        let content = entries
            .iter()
            .find_map(|e| match e {
                Entry::File { path, content, .. } if path.ends_with(b"bin/build") => {
                    Some(content.clone())
                }
                _ => None,
            })
            .unwrap();
        std::fs::write(&build, content).unwrap();
        let out = std::process::Command::new("sh")
            .arg(&build)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"stand-in build: it's/odd@1\n");
    }
}

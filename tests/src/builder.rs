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
//! [`BuilderSpec::busybox`] is a builder that can really run a build: a root
//! filesystem of busybox-static ([`busybox_rootfs`]), the stand-in creator of
//! [`crate::standin`], and, with [`BuilderSpec::runnable_image`], the config
//! `Env` a lifecycle must see ([`BUILDER_PATH`], [`BUILDER_ENV_MARKER`]) for this
//! machine's architecture. [`run_image`] is the run image its run.toml names;
//! [`BuilderSpec::write_build_layout`] writes both into one layout.
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
use std::path::{Path, PathBuf};

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
    /// Files added to the run image in a layer of their own (the busybox
    /// builder's: busybox as `/bin/sh` and its applets, so that its app images
    /// run).
    pub run_extra: Vec<Entry>,
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
    /// `bin/detect` and `bin/build` of each buildpack, by id; buildpacks not
    /// named get scripts that pass detection and print `stand-in build: ID@VERSION`.
    pub scripts: BTreeMap<String, (String, String)>,
    /// A real lifecycle laid out as its release tarball (`lifecycle`, `launcher`,
    /// `lifecycle.toml`): when set, `/cnb/lifecycle` holds it instead of
    /// [`BuilderSpec::creator`] (see [`real_lifecycle`]).
    pub real_lifecycle: Option<PathBuf>,
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
            run_extra: Vec::new(),
            stack_id: "heroku-22".into(),
            uid,
            gid,
            creator: DEFAULT_CREATOR.as_bytes().to_vec(),
            rootfs: default_rootfs(uid, gid),
            stack_toml: true,
            run_toml: true,
            scripts: BTreeMap::new(),
            real_lifecycle: None,
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
            "api = {}\n\n[buildpack]\n  id = {}\n  version = {}\n  name = {}\n  homepage = {}\n  sbom-formats = [\"application/vnd.cyclonedx+json\"]\n\n\
             [[targets]]\n  os = \"linux\"\n  arch = {}\n\n[[stacks]]\n  id = {}\n",
            toml_str(&self.buildpack_api()),
            toml_str(id),
            toml_str(version),
            toml_str(&buildpack_name(id)),
            toml_str(&buildpack_homepage(id)),
            toml_str(host_arch()),
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
        if let Some(dir) = &self.real_lifecycle {
            return real_lifecycle_entries(dir).unwrap_or_else(|e| panic!("{e}"));
        }
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
        let (detect, build) = self.scripts.get(id).cloned().unwrap_or_else(|| {
            (
                "#!/bin/sh\n# stand-in detect\nexit 0\n".to_owned(),
                format!(
                    "#!/bin/sh\necho {}\nexit 0\n",
                    sh_quote(&format!("stand-in build: {id}@{version}"))
                ),
            )
        });
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

// ---------------------------------------------------------------------------
// Builders that can run a build

/// In the config `Env` of a [runnable](BuilderSpec::runnable_image) builder:
/// the stand-in creator refuses to run without it, as proof that the builder
/// image's environment reached the lifecycle.
pub const BUILDER_ENV_MARKER: &str = "LOCALD_TEST_BUILDER_ENV=from-builder-config";
/// The `PATH` in the config `Env` of a runnable builder (pack's, without sbin).
pub const BUILDER_PATH: &str = "PATH=/cnb/process:/cnb/lifecycle:/usr/local/bin:/usr/bin:/bin";
/// `CNB_USER_ID` of [`BuilderSpec::busybox`].
pub const BUSYBOX_UID: u32 = 1001;
/// `CNB_GROUP_ID` of [`BuilderSpec::busybox`].
pub const BUSYBOX_GID: u32 = 1002;
/// The Platform APIs [`BuilderSpec::busybox`] advertises: up to 0.13, so
/// locald (0.12-0.14) must negotiate 0.13.
pub const BUSYBOX_PLATFORM_APIS: &[&str] = &["0.7", "0.8", "0.9", "0.10", "0.11", "0.12", "0.13"];
/// The buildpacks of [`BuilderSpec::busybox`]: `(id, version)`; the order has
/// one group per buildpack, in this order.
pub const BUSYBOX_BUILDPACKS: &[(&str, &str)] = &[
    ("locald-test/first", "1.0.0"),
    ("locald-test/second", "2.0.0"),
];
/// `bin/detect` of the busybox builder's buildpacks (POSIX sh, Buildpack API
/// 0.7+; run by the stand-in and by a real lifecycle alike, in the app
/// directory; `@ID@` is replaced): fails (100) when the app holds
/// [`crate::standin::FAIL_DETECT`], or the marker file [`skip_marker`] of this
/// buildpack.
pub const BUSYBOX_DETECT: &str = r#"#!/bin/sh
# locald-tests buildpack @ID@: detection passes unless the app asks it not to.
if [ -e fail-detect ]; then
    echo "fail-detect in the app: not participating"
    exit 100
fi
if [ -e "no-$(basename "@ID@")" ]; then
    echo "no-$(basename "@ID@") in the app: not participating"
    exit 100
fi
exit 0
"#;

/// The app file that makes buildpack `id` of the busybox builder fail detection:
/// `no-` and the last part of the id (`no-first` for `locald-test/first`).
pub fn skip_marker(id: &str) -> String {
    format!("no-{}", id.rsplit('/').next().unwrap_or(id))
}

/// `bin/build` of the busybox builder's buildpacks (`@ID@` and `@VERSION@` are
/// replaced): `stand-in build: ID@VERSION`; fails (exit 1) when the app's
/// [`crate::standin::FAIL_BUILD`] names this buildpack or is empty; a cache layer
/// counting builds (`[probe] cache builds=N`), a launch layer with the program of
/// a `web` process (the default), `[probe] env NAME=VALUE` for each platform env
/// file; `write-buildpack-dir` in the app writes a file two directories down
/// in the buildpack's own directory (`[probe] buildpack-dir-write allowed`,
/// `denied` or `unset`); the app's [`crate::standin::PROBE_SANDBOX`] and
/// [`crate::standin::WAIT_FOR_SIGNAL`] behaviours (the first buildpack only).
pub const BUSYBOX_BUILD: &str = r#"#!/bin/sh
# locald-tests buildpack @ID@@@VERSION@: what a build sees and leaves behind.
set -u
layers=$1
platform=$2
probe() {
    echo "[probe] $*"
}
echo "stand-in build: @ID@@@VERSION@"
if [ -e fail-build ]; then
    named=$(tr -d ' \n' <fail-build)
    if [ -z "$named" ] || [ "$named" = "@ID@" ]; then
        echo "@ID@: failing on purpose (fail-build)" >&2
        exit 1
    fi
fi
[ "@FIRST@" = true ] || exit 0

if [ -d "$platform/env" ]; then
    for f in "$platform/env"/*; do
        [ -f "$f" ] || continue
        probe "env $(basename "$f")=$(cat "$f")"
    done
fi

# A cache layer: the lifecycle keeps it between builds.
mkdir -p "$layers/counter" || exit 1
builds=$(cat "$layers/counter/builds" 2>/dev/null || echo 0)
builds=$((builds + 1))
echo "$builds" >"$layers/counter/builds" || exit 1
printf '[types]\n  cache = true\n' >"$layers/counter.toml" || exit 1
probe "cache builds=$builds"

# A launch layer holding the program of the default `web` process.
mkdir -p "$layers/web/bin" || exit 1
printf '#!/bin/sh\necho "web process of @ID@"\ncat /workspace/hello.txt 2>/dev/null\nexit 0\n' \
    >"$layers/web/bin/locald-web" || exit 1
chmod 755 "$layers/web/bin/locald-web"
printf '[types]\n  launch = true\n' >"$layers/web.toml" || exit 1
printf '[[processes]]\n  type = "web"\n  command = ["locald-web"]\n  default = true\n\n[[processes]]\n  type = "worker"\n  command = ["locald-web"]\n' \
    >"$layers/launch.toml" || exit 1
# Its SBOM (CycloneDX, declared in buildpack.toml's sbom-formats).
printf '{"bomFormat":"CycloneDX","specVersion":"1.4","version":1,"components":[{"type":"application","name":"locald-web"}]}' \
    >"$layers/web.sbom.cdx.json" || exit 1

if [ -e write-buildpack-dir ]; then
    d=${CNB_BUILDPACK_DIR:-}
    if [ -z "$d" ]; then
        probe "buildpack-dir-write unset"
    elif (mkdir -p "$d/locald-deep" && : >"$d/locald-deep/written") 2>/dev/null; then
        probe "buildpack-dir-write allowed"
    else
        probe "buildpack-dir-write denied"
    fi
fi
if [ -e probe-network ]; then
    probe "netdev $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')"
fi
if [ -e probe-volume ]; then
    v=$(cat probe-volume)
    probe "volume-read $(cat "$v/hello" 2>/dev/null || echo unreadable)"
    if (: >"$v/written") 2>/dev/null; then probe "volume-write allowed"; else probe "volume-write denied"; fi
fi

platform_value() { # NAME: the environment's value, else the platform env file's
    eval "pv=\${$1:-}"
    if [ -z "$pv" ] && [ -r "$platform/env/$1" ]; then
        pv=$(cat "$platform/env/$1")
    fi
    echo "$pv"
}

if [ -e probe-sandbox ]; then
    host_path=$(platform_value PROBE_HOST_PATH)
    if [ -z "$host_path" ]; then
        probe "host-path unset"
    elif [ -e "$host_path" ]; then
        if cat "$host_path" >/dev/null 2>&1; then
            probe "host-path readable $host_path"
        else
            probe "host-path visible $host_path"
        fi
    else
        probe "host-path hidden $host_path"
    fi
    for d in /cnb /usr; do
        if (: >"$d/probe") 2>/dev/null; then
            rm -f "$d/probe"
            probe "write $d allowed"
        else
            probe "write $d denied"
        fi
    done
    probe "id uid=$(id -u) gid=$(id -g)"
    probe "pid $$"
    probe "pidns $(readlink /proc/self/ns/pid 2>/dev/null || echo unreadable)"
    if [ -r /proc/1/cmdline ]; then
        probe "pid1 $(tr '\000' ' ' </proc/1/cmdline)"
    else
        probe "pid1 unreadable"
    fi
    host_pid=$(platform_value PROBE_HOST_PID)
    if [ -n "$host_pid" ]; then
        if [ -d "/proc/$host_pid" ]; then
            probe "host-pid visible $host_pid"
        else
            probe "host-pid hidden $host_pid"
        fi
    fi
    if [ -c /dev/null ] && echo x >/dev/null 2>&1 && [ -z "$(cat /dev/null)" ]; then
        probe "dev-null ok"
    else
        probe "dev-null broken"
    fi
fi

if [ -e wait-for-signal ]; then
    sleeper=
    on_signal() {
        probe "got signal"
        [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null
        exit 130
    }
    trap on_signal INT TERM
    probe "waiting"
    while :; do
        sleep 1 &
        sleeper=$!
        wait "$sleeper"
        sleeper=
    done
fi
exit 0
"#;

/// The busybox builder's `(detect, build)` for buildpack `id@version`; `first`
/// for the one that leaves layers and probes.
pub fn busybox_scripts(id: &str, version: &str, first: bool) -> (String, String) {
    let build = BUSYBOX_BUILD
        .replace("@ID@", id)
        .replace("@VERSION@", version)
        .replace("@FIRST@", if first { "true" } else { "false" });
    (BUSYBOX_DETECT.replace("@ID@", id), build)
}

/// The real lifecycle directory `LOCALD_TEST_LIFECYCLE` names, if any.
pub fn real_lifecycle() -> Option<PathBuf> {
    std::env::var_os(crate::require::REAL_LIFECYCLE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `[apis.platform]`, `[apis.buildpack]` supported lists and `[lifecycle] version`
/// of a real lifecycle's `lifecycle.toml`.
pub fn real_lifecycle_descriptor(dir: &Path) -> Result<(Vec<String>, Vec<String>, String), String> {
    let path = dir.join("lifecycle.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: toml::Value = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let list = |kind: &str| -> Vec<String> {
        v.get("apis")
            .and_then(|a| a.get(kind))
            .and_then(|a| a.get("supported"))
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let version = v
        .get("lifecycle")
        .and_then(|l| l.get("version"))
        .and_then(|x| x.as_str())
        .unwrap_or_default()
        .to_owned();
    Ok((list("platform"), list("buildpack"), version))
}

/// `/cnb/lifecycle` from a real lifecycle directory: `lifecycle`, `launcher`,
/// `lifecycle.toml`, every phase a symlink to `lifecycle` (as the release
/// tarball has them).
fn real_lifecycle_entries(dir: &Path) -> Result<Vec<Entry>, String> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| format!("{} (LOCALD_TEST_LIFECYCLE): {e}", p.display()))
    };
    let mut e = vec![
        Entry::dir("cnb/lifecycle/"),
        Entry::file("cnb/lifecycle/lifecycle", read("lifecycle")?).mode(0o755),
        Entry::file("cnb/lifecycle/launcher", read("launcher")?).mode(0o755),
        Entry::file("cnb/lifecycle/lifecycle.toml", read("lifecycle.toml")?),
    ];
    e.extend(
        [
            "analyzer", "builder", "creator", "detector", "exporter", "extender", "rebaser",
            "restorer",
        ]
        .iter()
        .map(|p| Entry::symlink(format!("cnb/lifecycle/{p}"), "lifecycle")),
    );
    Ok(e)
}

/// The stack id of [`BuilderSpec::busybox`] and [`run_image`].
pub const BUSYBOX_STACK_ID: &str = "io.locald.test.busybox";
/// Names a static busybox binary, overriding the default places.
pub const BUSYBOX_ENV: &str = "LOCALD_TEST_BUSYBOX";
/// The applets [`busybox_rootfs`] links into `/bin`: what a POSIX shell
/// script (the stand-in creator, a buildpack) needs.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "[",
    "[[",
    "awk",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dirname",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "grep",
    "gunzip",
    "gzip",
    "head",
    "id",
    "kill",
    "ln",
    "ls",
    "mkdir",
    "mktemp",
    "mv",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "realpath",
    "rm",
    "rmdir",
    "sed",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tar",
    "tee",
    "test",
    "touch",
    "tr",
    "true",
    "uname",
    "uniq",
    "wc",
    "which",
    "whoami",
    "xargs",
    "zcat",
];

/// A static busybox binary: `$LOCALD_TEST_BUSYBOX`, else `/usr/bin/busybox` or
/// `/bin/busybox` (Debian's `busybox-static`). Err says why there is none; a
/// dynamically linked busybox is refused (it could not run in a builder's root).
pub fn find_busybox() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os(BUSYBOX_ENV) {
        Some(p) => vec![PathBuf::from(p)],
        None => vec!["/usr/bin/busybox".into(), "/bin/busybox".into()],
    };
    let mut why = Vec::new();
    for c in candidates {
        match std::fs::read(&c) {
            Ok(bytes) if is_static_elf(&bytes) => return Ok(c),
            Ok(_) => why.push(format!("{} is not a static ELF executable", c.display())),
            Err(e) => why.push(format!("{}: {e}", c.display())),
        }
    }
    Err(format!(
        "no static busybox ({}); apt-get install busybox-static or set {BUSYBOX_ENV}",
        why.join("; ")
    ))
}

/// Whether `bytes` are an ELF executable without a program interpreter (no
/// `PT_INTERP`: statically linked, runs in any root filesystem).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return false;
    }
    let little = match bytes[5] {
        1 => true,
        2 => false,
        _ => return false,
    };
    let int = |at: usize, len: usize| -> Option<u64> {
        let b = bytes.get(at..at + len)?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if little { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    // (e_phoff, e_phentsize, e_phnum) for ELF32 and ELF64.
    let (phoff, phentsize, phnum) = match bytes[4] {
        1 => (int(0x1c, 4), int(0x2a, 2), int(0x2c, 2)),
        2 => (int(0x20, 8), int(0x36, 2), int(0x38, 2)),
        _ => return false,
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        usize::try_from(at)
            .ok()
            .and_then(|at| int(at, 4))
            .is_some_and(|p_type| p_type != u64::from(PT_INTERP))
    })
}

/// The OCI architecture of this machine (`amd64`, `arm64`, ...): the static
/// busybox in a runnable builder is the host's, so the images say so.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A root filesystem a POSIX shell script can run in: [`default_rootfs`] plus
/// `bin/busybox` (the given bytes, mode 0755) with a relative symlink per
/// [`BUSYBOX_APPLETS`] entry, `usr/bin/env -> /bin/busybox`, `usr/local/bin/`,
/// `etc/os-release`, `root/` and the mount points a container root has (`dev/`,
/// `proc/`, `sys/`, `run/`, `var/tmp/`).
pub fn busybox_rootfs(busybox: &[u8], uid: u32, gid: u32) -> Vec<Entry> {
    let mut e = default_rootfs(uid, gid);
    e.push(Entry::file(
        "etc/os-release",
        "ID=locald-test\nVERSION_ID=\"1\"\nNAME=\"locald test busybox\"\n",
    ));
    e.push(Entry::dir("bin/"));
    e.push(Entry::file("bin/busybox", busybox).mode(0o755));
    e.extend(
        BUSYBOX_APPLETS
            .iter()
            .map(|a| Entry::symlink(format!("bin/{a}"), "busybox")),
    );
    e.push(Entry::symlink("usr/bin/env", "/bin/busybox"));
    e.extend([
        Entry::dir("usr/local/"),
        Entry::dir("usr/local/bin/"),
        Entry::dir("root/").mode(0o700),
        Entry::dir("dev/"),
        Entry::dir("proc/"),
        Entry::dir("sys/"),
        Entry::dir("run/"),
        Entry::dir("var/"),
        Entry::dir("var/tmp/").mode(0o1777),
    ]);
    e
}

/// A small run image for `stack_id`, for this machine's architecture: a gzip
/// layer with `etc/os-release`, `etc/passwd` and `etc/group` (the CNB user
/// `uid:gid`) and `home/cnb/`, and an uncompressed layer with
/// `etc/locald-run-image` (`run image for <stack_id>\n`); config `User`
/// `uid:gid` and the `io.buildpacks.stack.id` label. No ref name is set.
pub fn run_image(stack_id: &str, uid: u32, gid: u32) -> ImageSpec {
    let passwd =
        format!("root:x:0:0:root:/root:/bin/sh\ncnb:x:{uid}:{gid}:CNB user:/home/cnb:/bin/sh\n");
    let group = format!("root:x:0:\ncnb:x:{gid}:\n");
    ImageSpec::new(vec![
        gz(vec![
            Entry::dir("etc/"),
            Entry::file("etc/os-release", "ID=locald-test-run\nVERSION_ID=\"1\"\n"),
            Entry::file("etc/passwd", passwd),
            Entry::file("etc/group", group),
            Entry::dir("home/"),
            Entry::dir("home/cnb/").owner(u64::from(uid), u64::from(gid)),
        ]),
        Layer::new(
            vec![
                Entry::dir("etc/"),
                Entry::file(
                    "etc/locald-run-image",
                    format!("run image for {stack_id}\n"),
                ),
            ],
            Compression::None,
        ),
    ])
    .platform("linux", host_arch(), None)
    .env(format!("CNB_USER_ID={uid}"))
    .env(format!("CNB_GROUP_ID={gid}"))
    .user(format!("{uid}:{gid}"))
    .label(STACK_ID_LABEL, stack_id)
}

impl BuilderSpec {
    /// [`BuilderSpec::busybox_with`] with the busybox [`find_busybox`] finds, and
    /// the real lifecycle `LOCALD_TEST_LIFECYCLE` names, if any.
    pub fn busybox(run_image: &str) -> Result<BuilderSpec, String> {
        let path = find_busybox()?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec = Self::busybox_with(&bytes, run_image);
        match real_lifecycle() {
            Some(dir) => spec.with_real_lifecycle(&dir),
            None => Ok(spec),
        }
    }

    /// A builder that can really run a build, with [`BuilderSpec::runnable_image`]:
    /// root filesystem [`busybox_rootfs`], the stand-in creator
    /// ([`crate::standin::CREATOR`]), user [`BUSYBOX_UID`]:[`BUSYBOX_GID`],
    /// Platform APIs [`BUSYBOX_PLATFORM_APIS`], buildpacks
    /// [`BUSYBOX_BUILDPACKS`] (one order group each), stack
    /// [`BUSYBOX_STACK_ID`], `run_image` in run.toml and stack.toml. Every field
    /// may be changed afterwards (the stand-in reads lifecycle.toml and
    /// order.toml; it has nothing baked in).
    pub fn busybox_with(busybox: &[u8], run_image: &str) -> BuilderSpec {
        let (uid, gid) = (BUSYBOX_UID, BUSYBOX_GID);
        let buildpacks: Vec<(String, String)> = BUSYBOX_BUILDPACKS
            .iter()
            .map(|(id, v)| ((*id).to_owned(), (*v).to_owned()))
            .collect();
        let scripts = buildpacks
            .iter()
            .enumerate()
            .map(|(i, (id, v))| (id.clone(), busybox_scripts(id, v, i == 0)))
            .collect();
        BuilderSpec {
            platform_apis: strings(BUSYBOX_PLATFORM_APIS),
            order: buildpacks
                .iter()
                .map(|(id, v)| vec![(id.clone(), v.clone(), false)])
                .collect(),
            buildpacks,
            scripts,
            run_image: run_image.to_owned(),
            run_mirrors: Vec::new(),
            run_extra: {
                let mut e = vec![
                    Entry::dir("bin/"),
                    Entry::file("bin/busybox", busybox).mode(0o755),
                ];
                e.extend(
                    BUSYBOX_APPLETS
                        .iter()
                        .map(|a| Entry::symlink(format!("bin/{a}"), "busybox")),
                );
                e
            },
            stack_id: BUSYBOX_STACK_ID.to_owned(),
            uid,
            gid,
            creator: crate::standin::CREATOR.as_bytes().to_vec(),
            rootfs: busybox_rootfs(busybox, uid, gid),
            ..BuilderSpec::default()
        }
    }

    /// This builder with the real lifecycle in `dir` instead of the stand-in: its
    /// binaries, its `lifecycle.toml` and the APIs and version it lists.
    pub fn with_real_lifecycle(mut self, dir: &Path) -> Result<BuilderSpec, String> {
        let (platform, buildpack, version) = real_lifecycle_descriptor(dir)?;
        self.platform_apis = platform;
        self.buildpack_apis = buildpack;
        self.lifecycle_version = version;
        self.real_lifecycle = Some(dir.to_path_buf());
        Ok(self)
    }

    /// [`BuilderSpec::image`] as a build needs it: config `Env` `PATH` is
    /// [`BUILDER_PATH`] and [`BUILDER_ENV_MARKER`] is added (real builders'
    /// config carries env the lifecycle must see), and the platform is this
    /// machine's ([`host_arch`]). No ref name is set.
    pub fn runnable_image(&self) -> ImageSpec {
        let mut image = self.image().platform("linux", host_arch(), None);
        image.env.retain(|e| !e.starts_with("PATH="));
        image.env.insert(0, BUILDER_PATH.to_owned());
        image.env(BUILDER_ENV_MARKER)
    }

    /// The run image [`BuilderSpec::run_image`] names: [`run_image`] for this
    /// builder's stack and user. No ref name is set.
    pub fn run_image_spec(&self) -> ImageSpec {
        let mut spec = run_image(&self.stack_id, self.uid, self.gid);
        if !self.run_extra.is_empty() {
            spec.layers.push(gz(self.run_extra.clone()));
        }
        spec
    }

    /// Writes an OCI layout at `dir` holding [`BuilderSpec::runnable_image`]
    /// named `builder_ref` and [`BuilderSpec::run_image_spec`] named
    /// [`BuilderSpec::run_image`] (what `locald build --source oci-layout:DIR`
    /// reads). Returns (builder, run image).
    pub fn write_build_layout(
        &self,
        dir: &Path,
        builder_ref: &str,
    ) -> io::Result<(ImageInfo, ImageInfo)> {
        let mut b = LayoutBuilder::new(dir);
        let builder = b.add_image(self.runnable_image().ref_name(builder_ref));
        let run = b.add_image(self.run_image_spec().ref_name(self.run_image.clone()));
        b.write()?;
        Ok((builder, run))
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
            "targets": [{"os": "linux", "arch": host_arch()}],
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
        /// Per layer: the manifest's media type.
        media_types: Vec<String>,
    }

    /// Every builder layer is gzip-compressed (module docs).
    fn assert_all_gzip(r: &ReadLayout) {
        for m in &r.media_types {
            assert_eq!(m, "application/vnd.oci.image.layer.v1.tar+gzip");
        }
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
        let mut media_types = Vec::new();
        for l in manifest["layers"].as_array().unwrap() {
            let media_type = l["mediaType"].as_str().unwrap().to_owned();
            let compression = match media_type.as_str() {
                "application/vnd.oci.image.layer.v1.tar+gzip" => Compression::Gzip,
                "application/vnd.oci.image.layer.v1.tar" => Compression::None,
                other => panic!("unexpected layer media type {other}"),
            };
            media_types.push(media_type);
            let raw = blob(dir, l["digest"].as_str().unwrap());
            let tar_bytes = compression.decompress(&raw).unwrap();
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
            media_types,
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
        assert_all_gzip(&r);
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
            ..BuilderSpec::default()
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
        if !crate::require::tool("sh") {
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

    fn busybox_or_skip() -> Option<PathBuf> {
        crate::require::ok(find_busybox(), "the static busybox")
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b""));
        assert!(!is_static_elf(b"#!/bin/sh\nexit 0\n"));
        assert!(!is_static_elf(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]));
        // The test binary itself is dynamically linked (it has PT_INTERP).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        if let Some(bb) = busybox_or_skip() {
            assert!(is_static_elf(&std::fs::read(bb).unwrap()));
        }
    }

    #[test]
    fn busybox_builder_image() {
        let Some(bb) = busybox_or_skip() else { return };
        let applets = crate::peers::run(bb.to_str().unwrap(), ["--list"]).unwrap();
        let applets: Vec<&str> = applets.lines().collect();
        for a in BUSYBOX_APPLETS {
            assert!(applets.contains(a), "busybox has no {a} applet");
        }

        let run = "127.0.0.1:5000/locald-test/run:1";
        let spec = BuilderSpec::busybox(run).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let (builder, run_info) = spec.write_build_layout(&layout, "builder").unwrap();
        let r = read_layout(&layout, "builder");
        assert_all_gzip(&r);
        assert_eq!(r.config["architecture"], host_arch());
        let env = r.env();
        for want in [
            BUILDER_PATH,
            BUILDER_ENV_MARKER,
            "CNB_USER_ID=1001",
            "CNB_GROUP_ID=1002",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} not in {env:?}");
        }
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert_eq!(r.config["config"]["User"], "1001:1002");
        let (_, bin) = r.find("bin/busybox").unwrap();
        assert_eq!(bin.mode, 0o755);
        assert!(is_static_elf(&bin.content));
        let (_, sh) = r.find("bin/sh").unwrap();
        assert_eq!(sh.link.as_deref(), Some("busybox"));
        assert!(r.text("etc/passwd").contains("cnb:x:1001:1002:"));
        assert!(r.text("etc/group").contains("cnb:x:1002:"));
        let home = r.find("home/cnb/").unwrap().1;
        assert_eq!((home.uid, home.gid), (1001, 1002));
        assert_eq!(r.find("tmp/").unwrap().1.mode, 0o1777);
        for d in ["dev/", "proc/", "sys/"] {
            assert!(r.find(d).is_some(), "{d}");
        }
        match &spec.real_lifecycle {
            None => {
                assert_eq!(
                    r.find("cnb/lifecycle/creator").unwrap().1.content,
                    crate::standin::CREATOR.as_bytes()
                );
                let lt = toml_value(&r.text("cnb/lifecycle/lifecycle.toml"));
                let apis: Vec<&str> = lt["apis"]["platform"]["supported"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert!(apis.contains(&"0.12") && apis.contains(&"0.13"), "{apis:?}");
                assert!(!apis.contains(&"0.14"), "{apis:?}");
            }
            // LOCALD_TEST_LIFECYCLE: its files, as its release tarball lays them.
            Some(dir) => {
                let (_, creator) = r.find("cnb/lifecycle/creator").unwrap();
                assert_eq!(creator.link.as_deref(), Some("lifecycle"));
                for f in ["lifecycle", "launcher", "lifecycle.toml"] {
                    assert_eq!(
                        r.find(&format!("cnb/lifecycle/{f}")).unwrap().1.content,
                        std::fs::read(dir.join(f)).unwrap(),
                        "{f}"
                    );
                }
            }
        }
        let runtoml = toml_value(&r.text("cnb/run.toml"));
        assert_eq!(runtoml["images"][0]["image"].as_str(), Some(run));
        let order = toml_value(&r.text("cnb/order.toml"));
        assert_eq!(order["order"].as_array().unwrap().len(), 2);
        assert_eq!(
            order["order"][1]["group"][0]["id"].as_str(),
            Some("locald-test/second")
        );

        // The run image, named as run.toml says, in the same layout.
        let index = read_json_file(&layout.join("index.json"));
        let names: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["annotations"][REF_NAME].as_str().unwrap())
            .collect();
        assert_eq!(names, ["builder", run]);
        assert_ne!(builder.manifest.digest, run_info.manifest.digest);
        let rr = read_layout(&layout, run);
        // The run image's two layers, and busybox (so that app images run).
        assert_eq!(
            rr.media_types,
            [
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.oci.image.layer.v1.tar+gzip"
            ]
        );
        assert_eq!(rr.config["architecture"], host_arch());
        assert_eq!(
            rr.config["config"]["Labels"][STACK_ID_LABEL],
            BUSYBOX_STACK_ID
        );
        assert!(rr.text("etc/os-release").contains("ID="));
        assert!(rr.text("etc/passwd").contains("cnb:x:1001:1002:"));
    }

    /// The absolute path of `tool` on this process's `PATH`.
    fn which(tool: &str) -> String {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} not on PATH"))
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn read_json_file(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// The builder's own root filesystem runs the stand-in creator, with nothing
    /// of locald involved: unpacked with umoci, entered with unshare + chroot
    /// (as the builder's user when root), /dev bound in.
    #[test]
    fn busybox_builder_runs_the_stand_in_in_its_own_root() {
        if crate::require::standin_only("it checks the stand-in's own probes") {
            return;
        }
        let Some(_) = busybox_or_skip() else { return };
        for tool in ["umoci", "unshare", "chroot"] {
            if !crate::require::tool(tool) {
                return;
            }
        }
        let root_user = crate::peers::is_root();
        if !root_user
            && crate::peers::run("unshare", ["--user", "--map-root-user", "--mount", "true"])
                .is_err()
        {
            crate::require::skip("user namespaces (unshare --user --map-root-user failed)");
            return;
        }
        let run = "registry.example/locald-test/run:1";
        let image = "locald-test/app:1";
        let spec = BuilderSpec::busybox(run).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        spec.write_build_layout(&layout, "builder").unwrap();
        let rootfs =
            crate::peers::umoci_unpack(&layout, "builder", &tmp.path().join("bundle")).unwrap();
        std::fs::write(rootfs.join("workspace/hello.txt"), "hi\n").unwrap();
        for d in ["cache", "layout-repo"] {
            std::fs::create_dir(rootfs.join(d)).unwrap();
        }
        std::fs::write(rootfs.join("platform/env/FOO"), "bar").unwrap();
        let mut b = LayoutBuilder::new(
            rootfs
                .join("layout-repo")
                .join(crate::standin::layout_path_for(run)),
        );
        b.add_image(spec.run_image_spec().ref_name(run));
        b.write().unwrap();
        if root_user {
            for d in ["workspace", "layers", "cache", "layout-repo"] {
                crate::standin::chown_tree(&rootfs.join(d), spec.uid, spec.gid).unwrap();
            }
        }
        // Not root, the namespace maps only the caller (as uid 0): the creator
        // is told to stay that user, as it could not switch to another.
        let (uid, gid) = if root_user {
            (spec.uid.to_string(), spec.gid.to_string())
        } else {
            ("0".to_owned(), "0".to_owned())
        };
        let args = [
            "-app",
            "/workspace",
            "-layers",
            "/layers",
            "-platform",
            "/platform",
            "-cache-dir",
            "/cache",
            "-run-image",
            run,
            "-layout",
            "-layout-dir",
            "/layout-repo",
            "-uid",
            &uid,
            "-gid",
            &gid,
            image,
        ];
        // The environment is the image's: the tools by absolute path.
        let chroot = which("chroot");
        let mount = which("mount");
        let chroot = if root_user {
            format!("exec {chroot} --userspec={uid}:{gid} \"$0\" \"$@\"")
        } else {
            format!("exec {chroot} \"$0\" \"$@\"")
        };
        let mut c = std::process::Command::new(which("unshare"));
        if !root_user {
            c.args(["--user", "--map-root-user"]);
        }
        c.args(["--mount", "sh", "-c"])
            .arg(format!("{mount} --rbind /dev \"$0/dev\" && {chroot}"))
            .arg(&rootfs)
            .arg("/cnb/lifecycle/creator")
            .args(args)
            .env_clear()
            .envs(
                spec.runnable_image()
                    .env
                    .iter()
                    .filter_map(|e| e.split_once('=')),
            )
            .env("CNB_PLATFORM_API", "0.13")
            .env("CNB_EXPERIMENTAL_MODE", "warn");
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
        let want_uid = if root_user { uid.as_str() } else { "0" };
        assert!(
            stdout.contains(&format!(
                "[probe] contract ok platform-api=0.13 uid={want_uid} "
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains("stand-in build: locald-test/first@1.0.0"),
            "{stdout}"
        );
        assert!(stdout.contains("[probe] env FOO=bar"), "{stdout}");
        assert!(stdout.contains("Saving locald-test/app:1..."), "{stdout}");
        let out_dir = rootfs
            .join("layout-repo")
            .join(crate::standin::layout_path_for(image));
        let index = read_json_file(&out_dir.join("index.json"));
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        if crate::require::tool("skopeo") {
            crate::peers::skopeo(&["inspect", &format!("oci:{}", out_dir.display())]).unwrap();
        }
    }
}

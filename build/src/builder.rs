//! What a Cloud Native Buildpacks builder image carries: its lifecycle and the
//! platform/buildpack APIs that lifecycle speaks, its buildpacks and detection
//! order, its run images, target, and the build user.
//!
//! Two kinds of source describe a builder, and they are read in this order:
//!
//! 1. the files the platform spec puts in the image: `/cnb/lifecycle/lifecycle.toml`,
//!    `/cnb/order.toml`, `/cnb/run.toml`, `/cnb/stack.toml` (deprecated since
//!    platform API 0.12) and `/cnb/buildpacks/<id>/<version>/buildpack.toml`;
//! 2. the labels `pack` writes on the config: `io.buildpacks.builder.metadata`,
//!    `io.buildpacks.buildpack.order`, `io.buildpacks.buildpack.layers`,
//!    `io.buildpacks.stack.id` and `io.buildpacks.base.distro.*`.
//!
//! Files win over labels, field by field: a source that is absent or names nothing
//! falls through to the next. The buildpack list is the one exception: the labels
//! come first and the `buildpack.toml` files are only scanned when neither label
//! lists any, because the labels are what `pack` itself reads and the scan touches
//! every buildpack directory.
//!
//! Parsing is pure (the private `parse_*` functions take text); [`read_builder`]
//! does the reading. The tree comes from an image, so it is treated as hostile: only
//! regular files are read, at most [`MAX_FILE_BYTES`] each, and a symlink anywhere on
//! the way to one is refused rather than followed (real builders have none there),
//! so nothing outside `root` is ever read.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::ImageConfiguration;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use locald_core::error::{Error, Result};

/// The largest metadata file we read from a builder: 1 MiB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The label `pack` writes with the builder's description, buildpacks, lifecycle
/// and run images (JSON).
pub const METADATA_LABEL: &str = "io.buildpacks.builder.metadata";
/// The label with the detection order (JSON), a copy of `/cnb/order.toml`.
pub const ORDER_LABEL: &str = "io.buildpacks.buildpack.order";
/// The label mapping buildpack id to version to layer (JSON).
pub const LAYERS_LABEL: &str = "io.buildpacks.buildpack.layers";
/// The label with the (deprecated) stack id.
pub const STACK_ID_LABEL: &str = "io.buildpacks.stack.id";
/// The label with the base image's distribution name, e.g. `ubuntu`.
pub const DISTRO_NAME_LABEL: &str = "io.buildpacks.base.distro.name";
/// The label with the base image's distribution version, e.g. `22.04`.
pub const DISTRO_VERSION_LABEL: &str = "io.buildpacks.base.distro.version";

const LIFECYCLE_TOML: &str = "cnb/lifecycle/lifecycle.toml";
const ORDER_TOML: &str = "cnb/order.toml";
const RUN_TOML: &str = "cnb/run.toml";
const STACK_TOML: &str = "cnb/stack.toml";
const BUILDPACKS_DIR: &str = "cnb/buildpacks";

/// A CNB API version (platform or buildpack API): `MAJOR.MINOR`.
///
/// The spec also allows a bare `MAJOR`, meaning `MAJOR.0`; anything else
/// (`0.12.0`, `v0.12`, `0.12-rc1`) is refused. Ordered by major, then minor, and
/// displayed and serialised as `MAJOR.MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    major: u32,
    minor: u32,
}

/// Why an API version string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid API version {0:?}: expected MAJOR.MINOR, e.g. \"0.12\"")]
pub struct ApiVersionError(pub String);

impl ApiVersion {
    /// Makes a version.
    pub const fn new(major: u32, minor: u32) -> Self {
        ApiVersion { major, minor }
    }

    /// The major version.
    pub const fn major(self) -> u32 {
        self.major
    }

    /// The minor version.
    pub const fn minor(self) -> u32 {
        self.minor
    }

    /// Whether something implementing API `self` serves a peer that asks for
    /// `wanted`, by the CNB rule: majors must match; in the `0.x` line minors must
    /// match too (every 0.x is its own API); from `1.0` on, `x.n` also serves
    /// `x.0` to `x.n`.
    pub const fn supports(self, wanted: ApiVersion) -> bool {
        self.major == wanted.major
            && (self.minor == wanted.minor || (self.major != 0 && self.minor >= wanted.minor))
    }
}

impl FromStr for ApiVersion {
    type Err = ApiVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ApiVersionError(s.to_owned());
        let number = |part: &str| -> Result<u32, ApiVersionError> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        match s.split_once('.') {
            Some((major, minor)) => Ok(ApiVersion::new(number(major)?, number(minor)?)),
            None => Ok(ApiVersion::new(number(s)?, 0)),
        }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for ApiVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The versions of one API (platform or buildpack) a lifecycle implements. Both
/// lists are sorted and free of duplicates. By the lifecycle's own rule the
/// deprecated versions are also listed as supported, but this is not relied on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApiSet {
    /// Versions the lifecycle implements.
    pub supported: Vec<ApiVersion>,
    /// Versions it still implements but will drop.
    pub deprecated: Vec<ApiVersion>,
}

impl ApiSet {
    /// Whether nothing is known about this API.
    pub fn is_empty(&self) -> bool {
        self.supported.is_empty() && self.deprecated.is_empty()
    }

    /// Every version listed, supported or deprecated, sorted and without
    /// duplicates.
    pub fn all_supported(&self) -> Vec<ApiVersion> {
        let mut all: Vec<ApiVersion> = self
            .supported
            .iter()
            .chain(&self.deprecated)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether a peer asking for `wanted` is served by some listed version, by the
    /// rule of [`ApiVersion::supports`].
    pub fn supports(&self, wanted: ApiVersion) -> bool {
        self.supported
            .iter()
            .chain(&self.deprecated)
            .any(|v| v.supports(wanted))
    }
}

/// The highest version in `ours` that `theirs` serves (see [`ApiSet::supports`]):
/// for `0.x`, one of their supported or deprecated versions must be exactly it; from
/// `1.0` on, a listed `x.n` serves every `x.m` with `m <= n`. `None` when there is
/// no version in common.
pub fn highest_common(ours: &[ApiVersion], theirs: &ApiSet) -> Option<ApiVersion> {
    ours.iter().copied().filter(|v| theirs.supports(*v)).max()
}

/// A builder image, as far as its files and labels describe it. Everything is
/// optional: a field no source mentions is `None` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuilderInfo {
    /// The builder's description (metadata label).
    pub description: Option<String>,
    /// The lifecycle's version, e.g. `0.20.5`.
    pub lifecycle_version: Option<String>,
    /// The platform API versions the lifecycle implements.
    pub platform_apis: ApiSet,
    /// The buildpack API versions the lifecycle implements.
    pub buildpack_apis: ApiSet,
    /// The buildpacks in the image, sorted by id, then version.
    pub buildpacks: Vec<BuildpackInfo>,
    /// The detection order: groups tried in turn until one passes.
    pub order: Vec<OrderGroup>,
    /// The run images an app built with this builder may be based on.
    pub run_images: Vec<RunImage>,
    /// The (deprecated) stack id, e.g. `io.buildpacks.stacks.jammy`.
    pub stack_id: Option<String>,
    /// The platforms the builder's base serves (os and architecture from the config).
    pub targets: Vec<Target>,
    /// The user the build runs as (`CNB_USER_ID` in the config's Env).
    pub user_id: Option<u32>,
    /// The group the build runs as (`CNB_GROUP_ID` in the config's Env).
    pub group_id: Option<u32>,
    /// The tool that created the builder, e.g. `Pack CLI 0.36.0`.
    pub created_by: Option<String>,
}

/// A buildpack in the builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildpackInfo {
    /// Its id, e.g. `paketo-buildpacks/node-engine`.
    pub id: String,
    /// Its version.
    pub version: String,
    /// Its human-readable name.
    pub name: Option<String>,
    /// Its homepage.
    pub homepage: Option<String>,
}

/// One group of the detection order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderGroup {
    /// The buildpacks of the group, in detection order.
    pub group: Vec<GroupEntry>,
}

/// A buildpack reference in an order group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupEntry {
    /// The buildpack id.
    pub id: String,
    /// The version, if pinned.
    pub version: Option<String>,
    /// Whether the group may pass without this buildpack passing detection.
    pub optional: bool,
}

/// A run image and its mirrors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunImage {
    /// The image reference.
    pub image: String,
    /// Other references to the same image.
    pub mirrors: Vec<String>,
}

/// A platform the builder serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture, e.g. `amd64`.
    pub arch: String,
    /// Architecture variant, e.g. `v8`.
    pub variant: Option<String>,
    /// Distribution name, e.g. `ubuntu`.
    pub distro_name: Option<String>,
    /// Distribution version, e.g. `22.04`.
    pub distro_version: Option<String>,
}

/// Reads a builder's metadata from `root`, a directory holding the image's
/// extracted tree (so `root/cnb/order.toml` is the image's `/cnb/order.toml`), and
/// from its config. Missing files and labels are not errors; malformed ones,
/// oversized or non-regular files and symlinks on the way to them are.
pub fn read_builder(root: &Path, config: &ImageConfiguration) -> Result<BuilderInfo> {
    let empty = HashMap::new();
    let labels = config
        .config()
        .as_ref()
        .and_then(|c| c.labels().as_ref())
        .unwrap_or(&empty);
    let label = |key: &str| labels.get(key).map(String::as_str).and_then(non_empty);

    let meta: MetadataLabel = match label(METADATA_LABEL) {
        Some(json) => parse_json(json, METADATA_LABEL)?,
        None => MetadataLabel::default(),
    };
    let label_lifecycle = lifecycle_from_label(&meta.lifecycle)?;
    let file_lifecycle =
        read_parsed(root, LIFECYCLE_TOML, parse_lifecycle_toml)?.unwrap_or_default();
    let prefer = |file: ApiSet, label: ApiSet| if file.is_empty() { label } else { file };

    let mut order = read_parsed(root, ORDER_TOML, parse_order_toml)?.unwrap_or_default();
    if order.is_empty() {
        if let Some(json) = label(ORDER_LABEL) {
            order = parse_order_label(json)?;
        }
    }

    let mut run_images = read_parsed(root, RUN_TOML, parse_run_toml)?.unwrap_or_default();
    if run_images.is_empty() {
        run_images = read_parsed(root, STACK_TOML, parse_stack_toml)?.unwrap_or_default();
    }
    if run_images.is_empty() {
        run_images = run_images_from_label(&meta);
    }

    let mut buildpacks = buildpacks_from_label(&meta);
    if buildpacks.is_empty() {
        if let Some(json) = label(LAYERS_LABEL) {
            buildpacks = parse_layers_label(json)?;
        }
    }
    if buildpacks.is_empty() {
        buildpacks = scan_buildpacks(root)?;
    }
    buildpacks.sort_by(|a, b| (&a.id, &a.version).cmp(&(&b.id, &b.version)));
    buildpacks.dedup_by(|a, b| a.id == b.id && a.version == b.version);

    let os = config.os().to_string();
    let arch = config.architecture().to_string();
    let targets = if os.is_empty() || arch.is_empty() {
        Vec::new()
    } else {
        vec![Target {
            os,
            arch,
            variant: config.variant().as_deref().and_then(owned_non_empty),
            distro_name: label(DISTRO_NAME_LABEL).map(str::to_owned),
            distro_version: label(DISTRO_VERSION_LABEL).map(str::to_owned),
        }]
    };

    let created_by = [meta.created_by.name.trim(), meta.created_by.version.trim()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");

    Ok(BuilderInfo {
        description: owned_non_empty(&meta.description),
        lifecycle_version: file_lifecycle.version.or(label_lifecycle.version),
        platform_apis: prefer(file_lifecycle.platform, label_lifecycle.platform),
        buildpack_apis: prefer(file_lifecycle.buildpack, label_lifecycle.buildpack),
        buildpacks,
        order,
        run_images,
        stack_id: label(STACK_ID_LABEL).map(str::to_owned),
        targets,
        user_id: env_id(config, "CNB_USER_ID")?,
        group_id: env_id(config, "CNB_GROUP_ID")?,
        created_by: non_empty(&created_by).map(str::to_owned),
    })
}

// ---------------------------------------------------------------------------
// Raw shapes, as `pack` and the lifecycle write them. Go writes nil slices and
// pointers as JSON `null`, so every field tolerates `null` as its default.

/// Deserialises `null` (or an absent field, with `#[serde(default)]`) as the default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Default, Deserialize)]
struct RawApiLists {
    #[serde(default, deserialize_with = "nullable")]
    supported: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    deprecated: Vec<String>,
}

/// `apis.{buildpack,platform}.{supported,deprecated}`.
#[derive(Debug, Default, Deserialize)]
struct RawApis {
    #[serde(default, deserialize_with = "nullable")]
    buildpack: RawApiLists,
    #[serde(default, deserialize_with = "nullable")]
    platform: RawApiLists,
}

/// The old single-version form, `api.{buildpack,platform}` (RFC 0011).
#[derive(Debug, Default, Deserialize)]
struct RawApi {
    #[serde(default, deserialize_with = "nullable")]
    buildpack: String,
    #[serde(default, deserialize_with = "nullable")]
    platform: String,
}

#[derive(Debug, Default, Deserialize)]
struct RawLifecycleInfo {
    #[serde(default, deserialize_with = "nullable")]
    version: String,
}

/// `/cnb/lifecycle/lifecycle.toml`.
#[derive(Debug, Default, Deserialize)]
struct LifecycleToml {
    #[serde(default)]
    apis: RawApis,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    lifecycle: RawLifecycleInfo,
}

/// `lifecycle` in the metadata label: the version sits beside the APIs.
#[derive(Debug, Default, Deserialize)]
struct LabelLifecycle {
    #[serde(default, deserialize_with = "nullable")]
    version: String,
    #[serde(default, deserialize_with = "nullable")]
    apis: RawApis,
    #[serde(default, deserialize_with = "nullable")]
    api: RawApi,
}

#[derive(Debug, Default, Deserialize)]
struct RawRunImage {
    #[serde(default, deserialize_with = "nullable")]
    image: String,
    #[serde(default, deserialize_with = "nullable")]
    mirrors: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct LabelStack {
    #[serde(default, rename = "runImage", deserialize_with = "nullable")]
    run_image: RawRunImage,
}

#[derive(Debug, Default, Deserialize)]
struct LabelCreatedBy {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    version: String,
}

/// A buildpack as in the metadata label's `buildpacks` and in `buildpack.toml`'s
/// `[buildpack]`.
#[derive(Debug, Default, Deserialize)]
struct RawModule {
    #[serde(default, deserialize_with = "nullable")]
    id: String,
    #[serde(default, deserialize_with = "nullable")]
    version: String,
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    homepage: String,
}

/// The `io.buildpacks.builder.metadata` label.
#[derive(Debug, Default, Deserialize)]
struct MetadataLabel {
    #[serde(default, deserialize_with = "nullable")]
    description: String,
    #[serde(default, deserialize_with = "nullable")]
    buildpacks: Vec<RawModule>,
    #[serde(default, deserialize_with = "nullable")]
    stack: LabelStack,
    #[serde(default, deserialize_with = "nullable")]
    images: Vec<RawRunImage>,
    #[serde(default, deserialize_with = "nullable")]
    lifecycle: LabelLifecycle,
    #[serde(default, rename = "createdBy", deserialize_with = "nullable")]
    created_by: LabelCreatedBy,
}

#[derive(Debug, Default, Deserialize)]
struct RawGroupEntry {
    #[serde(default, deserialize_with = "nullable")]
    id: String,
    #[serde(default, deserialize_with = "nullable")]
    version: String,
    #[serde(default, deserialize_with = "nullable")]
    optional: bool,
}

#[derive(Debug, Default, Deserialize)]
struct RawOrderGroup {
    #[serde(default, deserialize_with = "nullable")]
    group: Vec<RawGroupEntry>,
}

/// `/cnb/order.toml`.
#[derive(Debug, Default, Deserialize)]
struct OrderToml {
    #[serde(default)]
    order: Vec<RawOrderGroup>,
}

/// `/cnb/run.toml`.
#[derive(Debug, Default, Deserialize)]
struct RunToml {
    #[serde(default)]
    images: Vec<RawRunImage>,
}

/// `/cnb/stack.toml`.
#[derive(Debug, Default, Deserialize)]
struct StackToml {
    #[serde(default, rename = "run-image")]
    run_image: RawRunImage,
}

/// `buildpack.toml`.
#[derive(Debug, Default, Deserialize)]
struct BuildpackToml {
    #[serde(default)]
    buildpack: RawModule,
}

/// A value of the `io.buildpacks.buildpack.layers` label: `{id: {version: this}}`.
#[derive(Debug, Default, Deserialize)]
struct RawLayerInfo {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    homepage: String,
}

/// The `io.buildpacks.buildpack.layers` label (any level may be `null`).
type LayersLabel = BTreeMap<String, Option<BTreeMap<String, Option<RawLayerInfo>>>>;

// ---------------------------------------------------------------------------
// Pure parsing.

/// The lifecycle facts, from `lifecycle.toml` or the metadata label.
#[derive(Debug, Default, PartialEq, Eq)]
struct Lifecycle {
    version: Option<String>,
    platform: ApiSet,
    buildpack: ApiSet,
}

fn parse_lifecycle_toml(text: &str, what: &str) -> Result<Lifecycle> {
    let raw: LifecycleToml = parse_toml(text, what)?;
    Ok(Lifecycle {
        version: owned_non_empty(&raw.lifecycle.version),
        platform: api_set(&raw.apis.platform, &raw.api.platform, what, "", "platform")?,
        buildpack: api_set(
            &raw.apis.buildpack,
            &raw.api.buildpack,
            what,
            "",
            "buildpack",
        )?,
    })
}

fn lifecycle_from_label(raw: &LabelLifecycle) -> Result<Lifecycle> {
    let what = format!("label {METADATA_LABEL}");
    let p = "lifecycle.";
    Ok(Lifecycle {
        version: owned_non_empty(&raw.version),
        platform: api_set(&raw.apis.platform, &raw.api.platform, &what, p, "platform")?,
        buildpack: api_set(
            &raw.apis.buildpack,
            &raw.api.buildpack,
            &what,
            p,
            "buildpack",
        )?,
    })
}

/// One API's versions: the `apis` lists, or else the old single `api` value as
/// the one supported version.
fn api_set(
    lists: &RawApiLists,
    single: &str,
    what: &str,
    prefix: &str,
    kind: &str,
) -> Result<ApiSet> {
    let mut set = ApiSet {
        supported: api_list(
            &lists.supported,
            what,
            &format!("{prefix}apis.{kind}.supported"),
        )?,
        deprecated: api_list(
            &lists.deprecated,
            what,
            &format!("{prefix}apis.{kind}.deprecated"),
        )?,
    };
    if set.is_empty() && !single.trim().is_empty() {
        set.supported = api_list(&[single.to_owned()], what, &format!("{prefix}api.{kind}"))?;
    }
    Ok(set)
}

fn api_list(raw: &[String], what: &str, field: &str) -> Result<Vec<ApiVersion>> {
    let mut list = raw
        .iter()
        .map(|s| {
            s.trim().parse::<ApiVersion>().map_err(|e| Error::Builder {
                what: what.to_owned(),
                reason: format!("{field}: {e}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    list.sort_unstable();
    list.dedup();
    Ok(list)
}

fn order_groups(raw: Vec<RawOrderGroup>) -> Vec<OrderGroup> {
    raw.into_iter()
        .map(|g| OrderGroup {
            group: g
                .group
                .into_iter()
                .map(|e| GroupEntry {
                    version: owned_non_empty(&e.version),
                    id: e.id,
                    optional: e.optional,
                })
                .collect(),
        })
        .filter(|g| !g.group.is_empty())
        .collect()
}

fn parse_order_toml(text: &str, what: &str) -> Result<Vec<OrderGroup>> {
    let raw: OrderToml = parse_toml(text, what)?;
    Ok(order_groups(raw.order))
}

fn parse_order_label(json: &str) -> Result<Vec<OrderGroup>> {
    let raw: Option<Vec<RawOrderGroup>> = parse_json(json, ORDER_LABEL)?;
    Ok(order_groups(raw.unwrap_or_default()))
}

fn run_image(raw: RawRunImage) -> Option<RunImage> {
    let image = non_empty(&raw.image)?.to_owned();
    let mirrors = raw
        .mirrors
        .iter()
        .filter_map(|m| owned_non_empty(m))
        .collect();
    Some(RunImage { image, mirrors })
}

fn parse_run_toml(text: &str, what: &str) -> Result<Vec<RunImage>> {
    let raw: RunToml = parse_toml(text, what)?;
    Ok(raw.images.into_iter().filter_map(run_image).collect())
}

fn parse_stack_toml(text: &str, what: &str) -> Result<Vec<RunImage>> {
    let raw: StackToml = parse_toml(text, what)?;
    Ok(run_image(raw.run_image).into_iter().collect())
}

/// The label's `images`, or else its `stack.runImage`.
fn run_images_from_label(meta: &MetadataLabel) -> Vec<RunImage> {
    let clone = |r: &RawRunImage| RawRunImage {
        image: r.image.clone(),
        mirrors: r.mirrors.clone(),
    };
    let images: Vec<RunImage> = meta
        .images
        .iter()
        .map(clone)
        .filter_map(run_image)
        .collect();
    if !images.is_empty() {
        return images;
    }
    run_image(clone(&meta.stack.run_image))
        .into_iter()
        .collect()
}

fn buildpack_info(raw: &RawModule) -> Option<BuildpackInfo> {
    Some(BuildpackInfo {
        id: non_empty(&raw.id)?.to_owned(),
        version: raw.version.trim().to_owned(),
        name: owned_non_empty(&raw.name),
        homepage: owned_non_empty(&raw.homepage),
    })
}

fn buildpacks_from_label(meta: &MetadataLabel) -> Vec<BuildpackInfo> {
    meta.buildpacks.iter().filter_map(buildpack_info).collect()
}

fn parse_layers_label(json: &str) -> Result<Vec<BuildpackInfo>> {
    let raw: Option<LayersLabel> = parse_json(json, LAYERS_LABEL)?;
    let mut out = Vec::new();
    for (id, versions) in raw.unwrap_or_default() {
        if id.trim().is_empty() {
            continue;
        }
        for (version, info) in versions.unwrap_or_default() {
            let info = info.unwrap_or_default();
            out.push(BuildpackInfo {
                id: id.clone(),
                version,
                name: owned_non_empty(&info.name),
                homepage: owned_non_empty(&info.homepage),
            });
        }
    }
    Ok(out)
}

fn parse_buildpack_toml(text: &str, what: &str) -> Result<BuildpackInfo> {
    let raw: BuildpackToml = parse_toml(text, what)?;
    buildpack_info(&raw.buildpack).ok_or_else(|| Error::Builder {
        what: what.to_owned(),
        reason: "[buildpack] has no id".to_owned(),
    })
}

/// A user or group id from the config's `Env` (the last entry wins, as in a
/// container's environment).
fn env_id(config: &ImageConfiguration, name: &str) -> Result<Option<u32>> {
    let env = config.config().as_ref().and_then(|c| c.env().as_ref());
    let value = env.and_then(|env| {
        env.iter()
            .rev()
            .find_map(|e| e.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    });
    match value {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|_| Error::Builder {
                what: format!("image config Env {name}"),
                reason: format!("{v:?} is not a numeric id"),
            }),
    }
}

fn parse_toml<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        let reason = match e.span() {
            Some(span) => {
                let before = text.as_bytes().get(..span.start).unwrap_or(text.as_bytes());
                let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
                format!("invalid TOML at line {line}, column {column}: {message}")
            }
            None => format!("invalid TOML: {message}"),
        };
        Error::Builder {
            what: what.to_owned(),
            reason,
        }
    })
}

fn parse_json<T: DeserializeOwned>(json: &str, label: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|source| Error::Json {
        what: format!("label {label}"),
        source,
    })
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

fn owned_non_empty(s: &str) -> Option<String> {
    non_empty(s).map(str::to_owned)
}

// ---------------------------------------------------------------------------
// Confined reading.

/// How an image path is shown: `/cnb/order.toml`.
fn image_path(rel: &Path) -> String {
    format!("/{}", rel.to_string_lossy())
}

/// Walks `rel` (plain names only) below `root` without following anything: every
/// component must exist (else `None`) and be no symlink, and every one but the last
/// a directory. Returns the host path and the last component's metadata.
fn walk_confined(root: &Path, rel: &Path) -> Result<Option<(PathBuf, fs::Metadata)>> {
    let what = image_path(rel);
    let mut path = root.to_path_buf();
    let mut shown = PathBuf::from("/");
    let mut components = rel.components().peekable();
    let mut last = None;
    while let Some(component) = components.next() {
        let Component::Normal(name) = component else {
            return Err(Error::Builder {
                what,
                reason: "not a plain relative path".to_owned(),
            });
        };
        path.push(name);
        shown.push(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("inspect", &path)(e)),
        };
        if meta.file_type().is_symlink() {
            return Err(Error::Builder {
                what,
                reason: format!(
                    "{} is a symbolic link; builder metadata is only read from regular files and directories inside the image",
                    shown.display()
                ),
            });
        }
        if components.peek().is_some() && !meta.is_dir() {
            return Err(Error::Builder {
                what,
                reason: format!("{} is not a directory", shown.display()),
            });
        }
        last = Some(meta);
    }
    Ok(last.map(|meta| (path, meta)))
}

/// Reads `root/rel` as UTF-8 text if it exists; see [`walk_confined`]. Refuses
/// anything but a regular file of at most [`MAX_FILE_BYTES`].
fn read_confined(root: &Path, rel: &Path) -> Result<Option<String>> {
    let what = image_path(rel);
    let Some((path, meta)) = walk_confined(root, rel)? else {
        return Ok(None);
    };
    let too_large = |size: u64| Error::Builder {
        what: what.clone(),
        reason: format!(
            "{size} bytes is more than the {MAX_FILE_BYTES} byte limit for builder metadata files"
        ),
    };
    if !meta.is_file() {
        return Err(Error::Builder {
            what,
            reason: "not a regular file".to_owned(),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let file = fs::File::open(&path).map_err(Error::io("open", &path))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io("read", &path))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| Error::Builder {
            what,
            reason: format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
        })
}

/// Reads `root/rel` with [`read_confined`] and parses it with `parse(text, what)`,
/// where `what` is the path in the image.
fn read_parsed<T>(
    root: &Path,
    rel: &str,
    parse: impl FnOnce(&str, &str) -> Result<T>,
) -> Result<Option<T>> {
    let rel = Path::new(rel);
    read_confined(root, rel)?
        .map(|text| parse(&text, &image_path(rel)))
        .transpose()
}

/// The entries of directory `root/rel` that are themselves directories (not
/// symlinks to one), sorted by name; empty when it does not exist.
fn subdirectories(root: &Path, rel: &Path) -> Result<Vec<std::ffi::OsString>> {
    let Some((path, meta)) = walk_confined(root, rel)? else {
        return Ok(Vec::new());
    };
    if !meta.is_dir() {
        return Err(Error::Builder {
            what: image_path(rel),
            reason: "not a directory".to_owned(),
        });
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(&path).map_err(Error::io("list", &path))? {
        let entry = entry.map_err(Error::io("list", &path))?;
        // `file_type` does not follow symlinks: a symlinked directory is skipped.
        let file_type = entry
            .file_type()
            .map_err(Error::io("inspect", entry.path()))?;
        if file_type.is_dir() {
            names.push(entry.file_name());
        }
    }
    names.sort();
    Ok(names)
}

/// Every `/cnb/buildpacks/<escaped id>/<version>/buildpack.toml`. The directory
/// names are only a layout (ids have `/` escaped as `_`); id and version come
/// from the file.
fn scan_buildpacks(root: &Path) -> Result<Vec<BuildpackInfo>> {
    let dir = Path::new(BUILDPACKS_DIR);
    let mut out = Vec::new();
    for id in subdirectories(root, dir)? {
        for version in subdirectories(root, &dir.join(&id))? {
            let rel = dir.join(&id).join(&version).join("buildpack.toml");
            if let Some(text) = read_confined(root, &rel)? {
                out.push(parse_buildpack_toml(&text, &image_path(&rel))?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32) -> ApiVersion {
        ApiVersion::new(major, minor)
    }

    fn vs(list: &[(u32, u32)]) -> Vec<ApiVersion> {
        list.iter().map(|&(a, b)| v(a, b)).collect()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A config with the given labels and Env, for linux/arm64/v8.
    fn config(labels: &[(&str, &str)], env: &[&str]) -> ImageConfiguration {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        let json = serde_json::json!({
            "architecture": "arm64",
            "variant": "v8",
            "os": "linux",
            "config": { "Env": env, "Labels": labels },
            "rootfs": { "type": "layers", "diff_ids": [] },
        });
        serde_json::from_value(json).unwrap()
    }

    fn message(e: &Error) -> String {
        locald_core::error::chain(e)
    }

    const LIFECYCLE: &str = r#"
[apis]
[apis.buildpack]
  deprecated = ["0.2", "0.3"]
  supported = ["0.2", "0.3", "0.10", "0.9"]
[apis.platform]
  deprecated = []
  supported = ["0.3", "0.12", "0.13"]

[api]
  platform = "0.3"
  buildpack = "0.2"

[lifecycle]
  version = "0.20.5"
"#;

    const ORDER: &str = r#"
[[order]]
  [[order.group]]
    id = "paketo-buildpacks/node-engine"
    version = "3.2.1"
  [[order.group]]
    id = "paketo-buildpacks/procfile"
    optional = true

[[order]]
  [[order.group]]
    id = "paketo-buildpacks/go"
"#;

    const METADATA: &str = r#"{
      "description": "Ubuntu 22.04 Jammy base image with buildpacks",
      "buildpacks": [
        {"id": "paketo-buildpacks/procfile", "version": "5.6.0", "homepage": "https://github.com/paketo-buildpacks/procfile"},
        {"id": "paketo-buildpacks/node-engine", "version": "3.2.1", "name": "Node Engine"},
        {"id": "paketo-buildpacks/go", "version": "4.0.0"}
      ],
      "stack": {"runImage": {"image": "old/run:stack", "mirrors": null}},
      "images": [{"image": "paketobuildpacks/run-jammy-base:latest", "mirrors": ["gcr.io/paketo/run"]}],
      "lifecycle": {
        "version": "0.19.0",
        "api": {"buildpack": "0.2", "platform": "0.3"},
        "apis": {
          "buildpack": {"deprecated": null, "supported": ["0.2", "0.11"]},
          "platform": {"deprecated": ["0.3"], "supported": ["0.3", "0.11"]}
        },
        "unknown": 1
      },
      "createdBy": {"name": "Pack CLI", "version": "0.36.0+git-abc"},
      "extensions": []
    }"#;

    #[test]
    fn api_version_parse_and_display() {
        for (input, want) in [
            ("0.12", v(0, 12)),
            ("0.3", v(0, 3)),
            ("1", v(1, 0)),
            ("1.10", v(1, 10)),
            ("0.01", v(0, 1)),
        ] {
            assert_eq!(input.parse::<ApiVersion>(), Ok(want), "{input}");
        }
        for bad in [
            "",
            "0.12.0",
            "v0.12",
            "0.",
            ".1",
            "0.12-rc1",
            "a.b",
            "0.-1",
            "+1.2",
            "99999999999.0",
        ] {
            assert_eq!(
                bad.parse::<ApiVersion>(),
                Err(ApiVersionError(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(v(0, 12).to_string(), "0.12");
        assert_eq!(serde_json::to_string(&v(1, 2)).unwrap(), "\"1.2\"");
        let mut list = vs(&[(0, 10), (1, 0), (0, 9), (0, 2)]);
        list.sort();
        assert_eq!(list, vs(&[(0, 2), (0, 9), (0, 10), (1, 0)]));
    }

    #[test]
    fn highest_common_cases() {
        let set = |supported: &[(u32, u32)], deprecated: &[(u32, u32)]| ApiSet {
            supported: vs(supported),
            deprecated: vs(deprecated),
        };
        let ours = vs(&[(0, 10), (0, 11), (0, 12), (0, 13)]);
        for (theirs, want) in [
            // 0.x: exact matches only; the highest common one wins.
            (set(&[(0, 3), (0, 12), (0, 13)], &[]), Some(v(0, 13))),
            (
                set(&[(0, 3), (0, 4), (0, 11), (0, 14)], &[]),
                Some(v(0, 11)),
            ),
            // Deprecated versions still count.
            (set(&[(0, 14)], &[(0, 10)]), Some(v(0, 10))),
            // 0.14 does not serve 0.13.
            (set(&[(0, 14), (0, 15)], &[]), None),
            (set(&[], &[]), None),
        ] {
            assert_eq!(highest_common(&ours, &theirs), want, "{theirs:?}");
        }
        // 1.x: a listed 1.3 serves 1.0..=1.3 but not 1.4 or 2.0.
        let ours = vs(&[(0, 13), (1, 0), (1, 2), (1, 4), (2, 0)]);
        assert_eq!(
            highest_common(&ours, &set(&[(0, 13), (1, 3)], &[])),
            Some(v(1, 2))
        );
        assert_eq!(highest_common(&ours, &set(&[(0, 13)], &[])), Some(v(0, 13)));
        assert_eq!(
            highest_common(&ours, &set(&[(1, 9), (2, 0)], &[])),
            Some(v(2, 0))
        );
        assert_eq!(highest_common(&[], &set(&[(0, 13)], &[])), None);

        let s = set(&[(0, 12), (0, 3)], &[(0, 3), (0, 2)]);
        assert_eq!(s.all_supported(), vs(&[(0, 2), (0, 3), (0, 12)]));
        assert!(s.supports(v(0, 2)));
        assert!(!s.supports(v(0, 4)));
    }

    #[test]
    fn modern_builder_with_all_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, LIFECYCLE_TOML, LIFECYCLE);
        write(root, ORDER_TOML, ORDER);
        write(
            root,
            RUN_TOML,
            r#"
[[images]]
  image = "index.docker.io/paketobuildpacks/run-jammy-base:latest"
  mirrors = ["ghcr.io/paketo/run:latest", ""]
[[images]]
  image = "other/run"
"#,
        );
        write(root, STACK_TOML, "[run-image]\nimage = \"not/used\"\n");
        let cfg = config(
            &[
                (METADATA_LABEL, METADATA),
                (ORDER_LABEL, r#"[{"group":[{"id":"not/used"}]}]"#),
                (STACK_ID_LABEL, "io.buildpacks.stacks.jammy"),
                (DISTRO_NAME_LABEL, "ubuntu"),
                (DISTRO_VERSION_LABEL, "22.04"),
            ],
            &[
                "PATH=/usr/bin",
                "CNB_USER_ID=1001",
                "CNB_GROUP_ID=1000",
                "CNB_USER_ID=1002",
            ],
        );
        let info = read_builder(root, &cfg).unwrap();
        let want = BuilderInfo {
            description: Some("Ubuntu 22.04 Jammy base image with buildpacks".to_owned()),
            lifecycle_version: Some("0.20.5".to_owned()),
            platform_apis: ApiSet {
                supported: vs(&[(0, 3), (0, 12), (0, 13)]),
                deprecated: vec![],
            },
            buildpack_apis: ApiSet {
                supported: vs(&[(0, 2), (0, 3), (0, 9), (0, 10)]),
                deprecated: vs(&[(0, 2), (0, 3)]),
            },
            buildpacks: vec![
                BuildpackInfo {
                    id: "paketo-buildpacks/go".to_owned(),
                    version: "4.0.0".to_owned(),
                    name: None,
                    homepage: None,
                },
                BuildpackInfo {
                    id: "paketo-buildpacks/node-engine".to_owned(),
                    version: "3.2.1".to_owned(),
                    name: Some("Node Engine".to_owned()),
                    homepage: None,
                },
                BuildpackInfo {
                    id: "paketo-buildpacks/procfile".to_owned(),
                    version: "5.6.0".to_owned(),
                    name: None,
                    homepage: Some("https://github.com/paketo-buildpacks/procfile".to_owned()),
                },
            ],
            order: vec![
                OrderGroup {
                    group: vec![
                        GroupEntry {
                            id: "paketo-buildpacks/node-engine".to_owned(),
                            version: Some("3.2.1".to_owned()),
                            optional: false,
                        },
                        GroupEntry {
                            id: "paketo-buildpacks/procfile".to_owned(),
                            version: None,
                            optional: true,
                        },
                    ],
                },
                OrderGroup {
                    group: vec![GroupEntry {
                        id: "paketo-buildpacks/go".to_owned(),
                        version: None,
                        optional: false,
                    }],
                },
            ],
            run_images: vec![
                RunImage {
                    image: "index.docker.io/paketobuildpacks/run-jammy-base:latest".to_owned(),
                    mirrors: vec!["ghcr.io/paketo/run:latest".to_owned()],
                },
                RunImage {
                    image: "other/run".to_owned(),
                    mirrors: vec![],
                },
            ],
            stack_id: Some("io.buildpacks.stacks.jammy".to_owned()),
            targets: vec![Target {
                os: "linux".to_owned(),
                arch: "arm64".to_owned(),
                variant: Some("v8".to_owned()),
                distro_name: Some("ubuntu".to_owned()),
                distro_version: Some("22.04".to_owned()),
            }],
            user_id: Some(1002),
            group_id: Some(1000),
            created_by: Some("Pack CLI 0.36.0+git-abc".to_owned()),
        };
        assert_eq!(info, want);

        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(
            json["platform_apis"]["supported"],
            serde_json::json!(["0.3", "0.12", "0.13"])
        );
        assert_eq!(
            json["order"][0]["group"][1]["optional"],
            serde_json::json!(true)
        );
    }

    #[test]
    fn old_lifecycle_single_api_form() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            LIFECYCLE_TOML,
            "[api]\n  platform = \"0.3\"\n  buildpack = \"0.2\"\n\n[lifecycle]\n  version = \"0.7.2\"\n",
        );
        let info = read_builder(dir.path(), &config(&[], &[])).unwrap();
        assert_eq!(info.lifecycle_version.as_deref(), Some("0.7.2"));
        assert_eq!(
            info.platform_apis,
            ApiSet {
                supported: vs(&[(0, 3)]),
                deprecated: vec![]
            }
        );
        assert_eq!(
            info.buildpack_apis,
            ApiSet {
                supported: vs(&[(0, 2)]),
                deprecated: vec![]
            }
        );
    }

    #[test]
    fn labels_only() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            &[
                (METADATA_LABEL, METADATA),
                (
                    ORDER_LABEL,
                    r#"[{"group":[{"id":"paketo-buildpacks/go","version":"4.0.0","optional":true},{"id":"x/y"}]}]"#,
                ),
            ],
            &[],
        );
        let info = read_builder(dir.path(), &cfg).unwrap();
        assert_eq!(info.lifecycle_version.as_deref(), Some("0.19.0"));
        assert_eq!(
            info.platform_apis,
            ApiSet {
                supported: vs(&[(0, 3), (0, 11)]),
                deprecated: vs(&[(0, 3)])
            }
        );
        assert_eq!(
            info.buildpack_apis,
            ApiSet {
                supported: vs(&[(0, 2), (0, 11)]),
                deprecated: vec![]
            }
        );
        assert_eq!(
            info.order,
            vec![OrderGroup {
                group: vec![
                    GroupEntry {
                        id: "paketo-buildpacks/go".to_owned(),
                        version: Some("4.0.0".to_owned()),
                        optional: true,
                    },
                    GroupEntry {
                        id: "x/y".to_owned(),
                        version: None,
                        optional: false
                    },
                ],
            }]
        );
        // `images` wins over the older `stack.runImage`.
        assert_eq!(
            info.run_images,
            vec![RunImage {
                image: "paketobuildpacks/run-jammy-base:latest".to_owned(),
                mirrors: vec!["gcr.io/paketo/run".to_owned()],
            }]
        );
        let ids: Vec<_> = info.buildpacks.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "paketo-buildpacks/go",
                "paketo-buildpacks/node-engine",
                "paketo-buildpacks/procfile"
            ]
        );
        assert_eq!(info.user_id, None);
        assert_eq!(info.stack_id, None);
        assert_eq!(info.targets[0].distro_name, None);
    }

    #[test]
    fn old_label_forms() {
        let dir = tempfile::tempdir().unwrap();
        let meta = r#"{"description":"","buildpacks":null,
            "stack":{"runImage":{"image":"cnbs/run:bionic","mirrors":["m/run"]}},
            "lifecycle":{"version":"0.6.1","api":{"buildpack":"0.2","platform":"0.2"}},
            "createdBy":{"name":"","version":""}}"#;
        let layers = r#"{"io.buildpacks.samples.hello":{"0.0.1":{"api":"0.2","layerDiffID":"sha256:ab","homepage":"https://h"}},
            "a/b":{"2.0":{"name":"B"},"1.0":{}}}"#;
        let cfg = config(&[(METADATA_LABEL, meta), (LAYERS_LABEL, layers)], &[]);
        let info = read_builder(dir.path(), &cfg).unwrap();
        assert_eq!(info.description, None);
        assert_eq!(info.created_by, None);
        assert_eq!(info.platform_apis.supported, vs(&[(0, 2)]));
        assert_eq!(
            info.run_images,
            vec![RunImage {
                image: "cnbs/run:bionic".to_owned(),
                mirrors: vec!["m/run".to_owned()]
            }]
        );
        let got: Vec<_> = info
            .buildpacks
            .iter()
            .map(|b| {
                (
                    b.id.as_str(),
                    b.version.as_str(),
                    b.name.as_deref(),
                    b.homepage.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a/b", "1.0", None, None),
                ("a/b", "2.0", Some("B"), None),
                (
                    "io.buildpacks.samples.hello",
                    "0.0.1",
                    None,
                    Some("https://h")
                ),
            ]
        );
    }

    #[test]
    fn stack_toml_fallback_and_buildpack_scan() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            STACK_TOML,
            "[run-image]\n  image = \"cnbs/sample-stack-run:jammy\"\n  mirrors = [\"mirror/run\"]\n\n[build-image]\n  image = \"cnbs/build\"\n",
        );
        // run.toml exists but names no image: it falls through.
        write(root, RUN_TOML, "");
        write(
            root,
            "cnb/buildpacks/samples_java-maven/0.0.2/buildpack.toml",
            "api = \"0.8\"\n[buildpack]\n  id = \"samples/java-maven\"\n  version = \"0.0.2\"\n  name = \"Java Maven\"\n",
        );
        write(
            root,
            "cnb/buildpacks/samples_hello/0.0.1/buildpack.toml",
            "api = \"0.8\"\n[buildpack]\n  id = \"samples/hello\"\n  version = \"0.0.1\"\n  homepage = \"https://x\"\n[[stacks]]\n  id = \"*\"\n",
        );
        // A version directory without buildpack.toml is skipped.
        fs::create_dir_all(root.join("cnb/buildpacks/samples_hello/0.0.0")).unwrap();
        let info = read_builder(root, &config(&[], &[])).unwrap();
        assert_eq!(
            info.run_images,
            vec![RunImage {
                image: "cnbs/sample-stack-run:jammy".to_owned(),
                mirrors: vec!["mirror/run".to_owned()],
            }]
        );
        assert_eq!(
            info.buildpacks,
            vec![
                BuildpackInfo {
                    id: "samples/hello".to_owned(),
                    version: "0.0.1".to_owned(),
                    name: None,
                    homepage: Some("https://x".to_owned()),
                },
                BuildpackInfo {
                    id: "samples/java-maven".to_owned(),
                    version: "0.0.2".to_owned(),
                    name: Some("Java Maven".to_owned()),
                    homepage: None,
                },
            ]
        );
    }

    #[test]
    fn missing_everything_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: ImageConfiguration = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let info = read_builder(dir.path(), &cfg).unwrap();
        assert_eq!(
            info,
            BuilderInfo {
                targets: vec![Target {
                    os: "linux".to_owned(),
                    arch: "amd64".to_owned(),
                    variant: None,
                    distro_name: None,
                    distro_version: None,
                }],
                ..BuilderInfo::default()
            }
        );
        // A root that does not exist at all reads as empty too.
        let info = read_builder(&dir.path().join("nope"), &cfg).unwrap();
        assert!(info.buildpacks.is_empty() && info.platform_apis.is_empty());
    }

    #[test]
    fn invalid_toml_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            ORDER_TOML,
            "[[order]]\n[[order.group]]\nid = \n",
        );
        let err = read_builder(dir.path(), &config(&[], &[])).unwrap_err();
        let msg = message(&err);
        assert!(matches!(err, Error::Builder { .. }), "{msg}");
        assert!(
            msg.starts_with("/cnb/order.toml: invalid TOML at line 3, column "),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");

        // Well-formed TOML of the wrong shape.
        write(dir.path(), ORDER_TOML, "");
        write(
            dir.path(),
            LIFECYCLE_TOML,
            "[apis.platform]\nsupported = \"0.12\"\n",
        );
        let msg = message(&read_builder(dir.path(), &config(&[], &[])).unwrap_err());
        assert!(
            msg.starts_with("/cnb/lifecycle/lifecycle.toml: invalid TOML at line 2"),
            "{msg}"
        );

        // A bad API version names the field and the value.
        write(
            dir.path(),
            LIFECYCLE_TOML,
            "[apis.platform]\nsupported = [\"0.12.0\"]\n",
        );
        let msg = message(&read_builder(dir.path(), &config(&[], &[])).unwrap_err());
        assert_eq!(
            msg,
            "/cnb/lifecycle/lifecycle.toml: apis.platform.supported: invalid API version \"0.12.0\": expected MAJOR.MINOR, e.g. \"0.12\""
        );
    }

    #[test]
    fn invalid_label_json_names_the_label() {
        let dir = tempfile::tempdir().unwrap();
        for (label, value) in [
            (METADATA_LABEL, "{not json"),
            (METADATA_LABEL, r#"{"buildpacks": 3}"#),
            (ORDER_LABEL, r#"{"group": []}"#),
            (LAYERS_LABEL, "[1]"),
        ] {
            let err = read_builder(dir.path(), &config(&[(label, value)], &[])).unwrap_err();
            let msg = message(&err);
            assert!(matches!(err, Error::Json { .. }), "{msg}");
            assert!(
                msg.starts_with(&format!("label {label} is not valid JSON")),
                "{msg}"
            );
        }
        let meta = r#"{"lifecycle":{"apis":{"platform":{"supported":["x"]}}}}"#;
        let msg = message(
            &read_builder(dir.path(), &config(&[(METADATA_LABEL, meta)], &[])).unwrap_err(),
        );
        assert_eq!(
            msg,
            "label io.buildpacks.builder.metadata: lifecycle.apis.platform.supported: invalid API version \"x\": expected MAJOR.MINOR, e.g. \"0.12\""
        );
    }

    #[test]
    fn bad_user_and_group_ids() {
        let dir = tempfile::tempdir().unwrap();
        for (env, name) in [
            ("CNB_USER_ID=abc", "CNB_USER_ID"),
            ("CNB_USER_ID=", "CNB_USER_ID"),
            ("CNB_GROUP_ID=-1", "CNB_GROUP_ID"),
        ] {
            let msg = message(&read_builder(dir.path(), &config(&[], &[env])).unwrap_err());
            assert!(
                msg.starts_with(&format!("image config Env {name}: ")),
                "{msg}"
            );
            assert!(msg.ends_with("is not a numeric id"), "{msg}");
        }
        // A variable that merely starts with the name is someone else's.
        let info = read_builder(dir.path(), &config(&[], &["CNB_USER_IDX=abc"])).unwrap();
        assert_eq!(info.user_id, None);
    }

    #[test]
    fn oversize_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = "# padding\n".repeat((MAX_FILE_BYTES / 10) as usize + 1);
        write(dir.path(), RUN_TOML, &big);
        let msg = message(&read_builder(dir.path(), &config(&[], &[])).unwrap_err());
        assert_eq!(
            msg,
            format!(
                "/cnb/run.toml: {} bytes is more than the 1048576 byte limit for builder metadata files",
                big.len()
            )
        );
        // Exactly at the limit is fine.
        write(dir.path(), RUN_TOML, &" ".repeat(MAX_FILE_BYTES as usize));
        assert!(read_builder(dir.path(), &config(&[], &[])).is_ok());
    }

    #[test]
    fn symlinks_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "lifecycle.toml", LIFECYCLE);
        let root = dir.path();
        fs::create_dir_all(root.join("cnb/lifecycle")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("lifecycle.toml"),
            root.join(LIFECYCLE_TOML),
        )
        .unwrap();
        let msg = message(&read_builder(root, &config(&[], &[])).unwrap_err());
        assert_eq!(
            msg,
            "/cnb/lifecycle/lifecycle.toml: /cnb/lifecycle/lifecycle.toml is a symbolic link; builder metadata is only read from regular files and directories inside the image"
        );

        // A symlinked directory on the way is refused as well.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("cnb")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("cnb/lifecycle")).unwrap();
        let msg = message(&read_builder(dir.path(), &config(&[], &[])).unwrap_err());
        assert!(msg.contains(": /cnb/lifecycle is a symbolic link"), "{msg}");

        // A directory where a file belongs.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(ORDER_TOML)).unwrap();
        let msg = message(&read_builder(dir.path(), &config(&[], &[])).unwrap_err());
        assert_eq!(msg, "/cnb/order.toml: not a regular file");
    }

    #[test]
    fn symlinked_buildpack_directories_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "cnb/buildpacks/a_b/1.0/buildpack.toml",
            "[buildpack]\nid = \"a/b\"\nversion = \"1.0\"\n",
        );
        std::os::unix::fs::symlink(
            root.join("cnb/buildpacks/a_b/1.0"),
            root.join("cnb/buildpacks/a_b/latest"),
        )
        .unwrap();
        let info = read_builder(root, &config(&[], &[])).unwrap();
        assert_eq!(info.buildpacks.len(), 1);
        assert_eq!(info.buildpacks[0].id, "a/b");

        write(
            root,
            "cnb/buildpacks/c/1/buildpack.toml",
            "[buildpack]\nversion = \"1\"\n",
        );
        let msg = message(&read_builder(root, &config(&[], &[])).unwrap_err());
        assert_eq!(
            msg,
            "/cnb/buildpacks/c/1/buildpack.toml: [buildpack] has no id"
        );
    }
}

//! Building the `creator` invocation from a builder's metadata, by the CNB platform
//! specification (Platform API 0.12 and later: export into an OCI layout).

use std::path::PathBuf;

use crate::builder::{highest_common, ApiVersion, BuilderInfo};
use locald_core::lifecycle::{Arg, Dir, HostDirs, LifecyclePlan, Network, Volume};

/// The Platform API versions this `locald` speaks, oldest first. 0.12 is the first
/// whose `creator` can export into an OCI layout (`-layout -layout-dir`).
pub const PLATFORM_APIS: &[ApiVersion] = &[
    ApiVersion::new(0, 12),
    ApiVersion::new(0, 13),
    ApiVersion::new(0, 14),
];

/// The lifecycle phase `locald build` runs: all of detect, analyze, restore, build
/// and export in one process.
pub const CREATOR: &str = "creator";

/// What the build asks of the creator beyond what the builder says.
#[derive(Debug, Clone)]
pub struct CreatorOptions {
    /// The output image's name (a full reference, e.g. `docker.io/library/app:latest`):
    /// the last argument, and where the app image lands in the layout dir.
    pub image: String,
    /// The run image reference, as placed in the layout dir.
    pub run_image: String,
    /// The builder image's config `Env` (`KEY=VALUE` strings).
    pub builder_env: Vec<String>,
    /// `-log-level debug`.
    pub debug: bool,
    /// `-no-color`: the lifecycle's output goes somewhere that is not a terminal
    /// (or `NO_COLOR` asked), so no ANSI colour codes.
    pub no_color: bool,
    /// `-skip-restore`: do not restore layer metadata or the cache (`--clear-cache`).
    pub skip_restore: bool,
    /// The host directories.
    pub host: HostDirs,
    /// `-process-type`: the image's default process.
    pub process_type: Option<String>,
    /// `SOURCE_DATE_EPOCH`: the image's created time (Unix seconds).
    pub source_date_epoch: Option<i64>,
    /// `-order`: a group of the build's own (a file in the platform dir)
    /// instead of the builder's order.
    pub order: Option<PathBuf>,
    /// `-buildpacks`: a buildpacks directory of the build's own (in the
    /// platform dir) instead of the builder's.
    pub buildpacks: Option<PathBuf>,
    /// The network the lifecycle gets.
    pub network: Network,
    /// Host paths mounted for the buildpacks.
    pub volumes: Vec<Volume>,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The builder's lifecycle and `locald` have no Platform API in common.
    #[error("{0}")]
    PlatformApi(String),
    /// The builder does not say who the build runs as.
    #[error(
        "the builder does not declare its build user: CNB_USER_ID and CNB_GROUP_ID are missing from its config's Env"
    )]
    NoBuildUser,
}

fn list(versions: &[ApiVersion]) -> String {
    if versions.is_empty() {
        return "none".to_owned();
    }
    versions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pick the Platform API: the highest version both `locald` and the builder's
/// lifecycle support.
pub fn negotiate_platform_api(info: &BuilderInfo) -> Result<ApiVersion, PlanError> {
    if let Some(api) = highest_common(PLATFORM_APIS, &info.platform_apis) {
        return Ok(api);
    }
    let theirs = info.platform_apis.all_supported();
    let lifecycle = info
        .lifecycle_version
        .as_deref()
        .map(|v| format!("lifecycle {v}"))
        .unwrap_or_else(|| "lifecycle".to_owned());
    let why = if theirs.is_empty() {
        format!("the builder's {lifecycle} does not say which Platform APIs it supports (no /cnb/lifecycle/lifecycle.toml and no io.buildpacks.builder.metadata label)")
    } else {
        format!(
            "the builder's {lifecycle} supports Platform API {}",
            list(&theirs)
        )
    };
    let newer = theirs.iter().any(|v| v > PLATFORM_APIS.last().unwrap_or(v));
    let advice = if newer {
        "this locald is older than the builder's lifecycle: update locald"
    } else {
        "exporting into an OCI layout needs Platform API 0.12 or newer (lifecycle 0.17+): use a newer builder"
    };
    Err(PlanError::PlatformApi(format!(
        "{why}; locald speaks {}: {advice}",
        list(PLATFORM_APIS)
    )))
}

/// Whether a plan can be made for `info`'s builder, before anything is prepared
/// for it: the negotiated Platform API and the build user's uid and gid.
pub fn check_builder(info: &BuilderInfo) -> Result<(ApiVersion, u32, u32), PlanError> {
    let api = negotiate_platform_api(info)?;
    match (info.user_id, info.group_id) {
        (Some(uid), Some(gid)) => Ok((api, uid, gid)),
        _ => Err(PlanError::NoBuildUser),
    }
}

/// The creator invocation for `info`'s builder.
///
/// Arguments by the platform spec: `-app -layers -platform -cache-dir -run-image
/// -layout -layout-dir -uid -gid`, the builder's own `-buildpacks -order` (and
/// `-run` when it has a run.toml) given as paths in the builder tree so that a
/// runner may put that tree anywhere (likewise `-launcher`, which the exporter
/// copies into the image), and the output image name last. Environment:
/// the builder's config `Env`, then `CNB_PLATFORM_API` and
/// `CNB_EXPERIMENTAL_MODE=warn` (layout export is experimental).
pub fn plan_creator(info: &BuilderInfo, opts: CreatorOptions) -> Result<LifecyclePlan, PlanError> {
    let (api, uid, gid) = check_builder(info)?;
    let text = |s: &str| Arg::Text(s.to_owned());
    let path = |dir: Dir, rel: &str| Arg::Path(dir, PathBuf::from(rel));
    let mut args = vec![
        text("-app"),
        path(Dir::App, ""),
        text("-layers"),
        path(Dir::Layers, ""),
        text("-platform"),
        path(Dir::Platform, ""),
        text("-cache-dir"),
        path(Dir::Cache, ""),
        text("-buildpacks"),
        match &opts.buildpacks {
            Some(rel) => Arg::Path(Dir::Platform, rel.clone()),
            None => path(Dir::Builder, "cnb/buildpacks"),
        },
        text("-order"),
        match &opts.order {
            Some(rel) => Arg::Path(Dir::Platform, rel.clone()),
            None => path(Dir::Builder, "cnb/order.toml"),
        },
        text("-launcher"),
        path(Dir::Builder, "cnb/lifecycle/launcher"),
    ];
    if opts.host.builder.join("cnb/run.toml").is_file() {
        args.extend([text("-run"), path(Dir::Builder, "cnb/run.toml")]);
    }
    args.extend([
        text("-run-image"),
        Arg::Text(opts.run_image.clone()),
        text("-layout"),
        text("-layout-dir"),
        path(Dir::Layout, ""),
        text("-uid"),
        Arg::Text(uid.to_string()),
        text("-gid"),
        Arg::Text(gid.to_string()),
    ]);
    if opts.skip_restore {
        args.push(text("-skip-restore"));
    }
    if let Some(t) = &opts.process_type {
        args.extend([text("-process-type"), Arg::Text(t.clone())]);
    }
    if opts.debug {
        args.extend([text("-log-level"), text("debug")]);
    }
    if opts.no_color {
        args.push(text("-no-color"));
    }
    args.push(Arg::Text(opts.image.clone()));

    let mut env: Vec<(String, String)> = opts
        .builder_env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.push(("CNB_PLATFORM_API".to_owned(), api.to_string()));
    env.push(("CNB_EXPERIMENTAL_MODE".to_owned(), "warn".to_owned()));
    if let Some(epoch) = opts.source_date_epoch {
        env.push(("SOURCE_DATE_EPOCH".to_owned(), epoch.to_string()));
    }

    Ok(LifecyclePlan {
        phase: CREATOR.to_owned(),
        program: PathBuf::from("cnb/lifecycle").join(CREATOR),
        args,
        env,
        uid,
        gid,
        host: opts.host,
        network: opts.network,
        volumes: opts.volumes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ApiSet;
    use std::path::Path;

    fn info(apis: &[&str]) -> BuilderInfo {
        BuilderInfo {
            lifecycle_version: Some("0.20.1".into()),
            platform_apis: ApiSet {
                supported: apis.iter().map(|v| v.parse().expect("version")).collect(),
                deprecated: vec![],
            },
            user_id: Some(1001),
            group_id: Some(1002),
            ..BuilderInfo::default()
        }
    }

    fn opts(builder: &Path) -> CreatorOptions {
        let d = |n: &str| PathBuf::from("/host").join(n);
        CreatorOptions {
            image: "docker.io/library/app:latest".into(),
            run_image: "docker.io/heroku/heroku:22".into(),
            builder_env: vec![
                "PATH=/cnb/process:/usr/bin".into(),
                "CNB_USER_ID=1001".into(),
                "junk".into(),
            ],
            debug: true,
            no_color: true,
            skip_restore: false,
            host: HostDirs {
                builder: builder.to_path_buf(),
                app: d("app"),
                layers: d("layers"),
                platform: d("platform"),
                cache: d("cache"),
                layout: d("layout"),
            },
            process_type: None,
            source_date_epoch: None,
            order: None,
            buildpacks: None,
            network: Network::Host,
            volumes: Vec::new(),
        }
    }

    #[test]
    fn highest_common_api_and_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("cnb")).expect("mkdir");
        std::fs::write(dir.path().join("cnb/run.toml"), "").expect("write");
        let plan =
            plan_creator(&info(&["0.9", "0.12", "0.13", "0.99"]), opts(dir.path())).expect("plan");
        assert_eq!(plan.env_var("CNB_PLATFORM_API"), Some("0.13"));
        assert_eq!(plan.env_var("CNB_EXPERIMENTAL_MODE"), Some("warn"));
        assert_eq!(plan.env_var("PATH"), Some("/cnb/process:/usr/bin"));
        assert_eq!((plan.uid, plan.gid), (1001, 1002));
        let args = plan.render_args(|d, rel| Path::new(d.sandbox_path()).join(rel));
        let joined = args.join(" ");
        for want in [
            "-app /workspace ",
            "-layers /layers ",
            "-platform /platform ",
            "-cache-dir /cache ",
            "-buildpacks /cnb/buildpacks ",
            "-order /cnb/order.toml ",
            "-launcher /cnb/lifecycle/launcher ",
            "-run /cnb/run.toml ",
            "-run-image docker.io/heroku/heroku:22 ",
            "-layout -layout-dir /layout-repo ",
            "-uid 1001 -gid 1002 ",
            "-log-level debug ",
            "-no-color ",
        ] {
            assert!(joined.contains(want), "{want:?} missing from {joined}");
        }
        assert_eq!(
            args.last().map(String::as_str),
            Some("docker.io/library/app:latest")
        );
        assert!(!joined.contains("-skip-restore"));
    }

    #[test]
    fn refuses_old_lifecycles_and_missing_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = plan_creator(&info(&["0.10", "0.11"]), opts(dir.path())).expect_err("too old");
        let text = err.to_string();
        assert!(
            text.contains("0.10, 0.11") && text.contains("0.12"),
            "{text}"
        );
        assert!(!opts(dir.path()).host.builder.join("cnb/run.toml").exists());

        let err = plan_creator(&info(&["1.0"]), opts(dir.path())).expect_err("too new");
        assert!(err.to_string().contains("update locald"), "{err}");

        let mut no_user = info(&["0.12"]);
        no_user.user_id = None;
        assert_eq!(
            plan_creator(&no_user, opts(dir.path())).expect_err("no user"),
            PlanError::NoBuildUser
        );
    }
}

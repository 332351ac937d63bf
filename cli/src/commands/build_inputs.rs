//! `locald build`'s arguments turned into the library's inputs: where the
//! image goes, and what the buildpacks get.

use std::path::{Path, PathBuf};

use locald_core::ImageReference;

use crate::args::BuildArgs;
use crate::output::Output;
use crate::UserError;

/// Where the image goes: `--output`, or with `--publish` the registry `--image`
/// names, else `./<name>.oci`.
pub fn output(args: &BuildArgs, image: &ImageReference) -> anyhow::Result<Output> {
    Ok(match (&args.output, args.publish) {
        (Some(_), true) => {
            return Err(UserError::with_hint(
                "--publish and --output both say where the image goes",
                "use one: --publish pushes to the registry --image names (the same as --output registry:IMAGE)",
            )
            .into())
        }
        (Some(spec), false) => Output::parse(spec, "--output")?,
        (None, true) => {
            if !names_a_registry(args.image.as_deref()) {
                return Err(UserError::with_hint(
                    format!(
                        "--publish pushes to the registry --image names, and {} names none",
                        match &args.image {
                            Some(i) => format!("--image {i:?}"),
                            None => "no --image".to_owned(),
                        }
                    ),
                    "name the image with its registry, e.g. --image ghcr.io/me/app:1.0 (or --image docker.io/me/app for Docker Hub)",
                )
                .into());
            }
            Output::Registry(image.clone())
        }
        (None, false) => Output::Layout(std::path::absolute(PathBuf::from(format!(
            "{}.oci",
            image.repository().rsplit('/').next().unwrap_or("app")
        )))?),
    })
}

/// What the buildpacks get, from the descriptor, the env files and the flags.
pub struct Inputs {
    /// Their environment (later sources win).
    pub env: Vec<(String, String)>,
    /// `--buildpack`, else the descriptor's group.
    pub buildpacks: Vec<locald_build::BuildpackRef>,
    /// `--tag`.
    pub tags: Vec<ImageReference>,
    /// `--creation-time`, Unix seconds.
    pub creation_time: Option<i64>,
    /// `--volume`.
    pub volumes: Vec<locald_core::lifecycle::Volume>,
}

/// Reads and checks the build's inputs.
pub fn inputs(args: &BuildArgs, app: &Path) -> anyhow::Result<Inputs> {
    // The descriptor's env, then the env files in order, then --env: later wins.
    let descriptor = args
        .descriptor
        .clone()
        .unwrap_or_else(|| app.join(locald_build::appcopy::PROJECT_DESCRIPTOR));
    let (mut env, descriptor_group) = match std::fs::read_to_string(&descriptor) {
        Ok(text) => {
            locald_build::project::parse_descriptor_build(&text, &descriptor).map_err(|e| {
                UserError::with_hint(
                    e,
                    "see https://buildpacks.io/docs/reference/config/project-descriptor/",
                )
            })?
        }
        Err(e) if args.descriptor.is_some() => {
            return Err(UserError::with_hint(
                format!("cannot read --descriptor {}: {e}", descriptor.display()),
                "name an existing project.toml",
            )
            .into())
        }
        Err(_) => (Vec::new(), Vec::new()),
    };
    env.extend(super::read_env_files(&args.env_files)?);
    for e in &args.env {
        env.push(locald_build::project::parse_env_arg(e)?);
    }
    let mut seen = std::collections::HashSet::new();
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    env.reverse();
    let buildpacks: Vec<locald_build::BuildpackRef> = if args.buildpacks.is_empty() {
        descriptor_group
            .iter()
            .map(|b| locald_build::BuildpackRef::parse(b))
            .collect()
    } else {
        args.buildpacks
            .iter()
            .map(|b| locald_build::BuildpackRef::parse(b))
            .collect()
    };
    let tags = args
        .tags
        .iter()
        .map(|t| {
            ImageReference::parse(t).map_err(|e| {
                UserError::with_hint(format!("--tag {t:?}: {e}"), "e.g. --tag myapp:latest")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let creation_time = match args.creation_time.as_deref() {
        None => None,
        Some("now") => Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        ),
        Some(s) => Some(s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            UserError::with_hint(
                format!("--creation-time {s:?} is neither `now` nor Unix seconds"),
                "e.g. --creation-time now or --creation-time 1700000000",
            )
        })?),
    };
    let volumes = args
        .volumes
        .iter()
        .map(|v| {
            locald_core::lifecycle::Volume::parse(v).map_err(|e| {
                UserError::with_hint(e, "e.g. --volume ./certs:/certs or --volume /data:/data:rw")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Inputs {
        env,
        buildpacks,
        tags,
        creation_time,
        volumes,
    })
}

/// `s` as one word of a POSIX shell command line.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Whether `image` names its registry (`ghcr.io/me/app`, `localhost:5000/app`,
/// `docker.io/me/app`), as `--publish` needs: a first component with a `.` or a
/// `:`, or `localhost`.
pub fn names_a_registry(image: Option<&str>) -> bool {
    image
        .and_then(|i| i.split_once('/'))
        .is_some_and(|(first, _)| {
            first.contains('.') || first.contains(':') || first == "localhost"
        })
}

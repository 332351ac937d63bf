//! The lifecycle's exit codes, as sentences (the codes are the platform
//! specification's: 11/12 API mismatch, 20/21 detection, 3x analyze, 4x restore,
//! 5x build, 6x export).

use crate::builder::BuilderInfo;
use locald_core::lifecycle::{LifecyclePlan, LineWatcher, RunStatus};

/// A sentence for how the lifecycle ended, `None` when it succeeded.
pub fn explain_exit(
    status: RunStatus,
    plan: &LifecyclePlan,
    builder: &BuilderInfo,
    watcher: &LineWatcher,
) -> Option<String> {
    let phase = &plan.phase;
    let code = match status {
        RunStatus::Exited(0) => return None,
        RunStatus::Interrupted => {
            return Some(format!(
            "the build was interrupted; the {phase} was stopped (the builder cache is untouched)"
        ))
        }
        RunStatus::Signaled(sig) => {
            let hint = if sig == 9 {
                " (SIGKILL: out of memory, or killed by someone else)"
            } else {
                ""
            };
            return Some(format!("the {phase} was killed by signal {sig}{hint}"));
        }
        RunStatus::Exited(code) => code,
    };
    let lines = watcher.lines();
    let error_line = lines
        .iter()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("ERROR:"))
        .map(|e| format!(": {}", e.trim()))
        .unwrap_or_default();
    let sentence = match code {
        11 => format!(
            "the builder's lifecycle does not support Platform API {} that locald asked for (exit 11){error_line}",
            plan.env_var("CNB_PLATFORM_API").unwrap_or("?")
        ),
        12 => format!(
            "a buildpack in this builder needs a Buildpack API its lifecycle does not support (exit 12){error_line}"
        ),
        20 => format!(
            "No buildpack group passed detection: none of the builder's groups recognised this app (exit 20). Groups tried: {}. Check that the app has the files these buildpacks look for",
            groups(builder)
        ),
        21 => format!(
            "No buildpack group passed detection, and a buildpack's detect failed with an error (exit 21; its output is above). Groups tried: {}",
            groups(builder)
        ),
        22..=29 => format!("detection failed (exit {code}){error_line}"),
        30..=39 => format!("analyzing the previous image failed (exit {code}){error_line}"),
        40..=49 => format!("restoring the build cache failed (exit {code}){error_line}; `--clear-cache` builds without it"),
        51 => match failed_buildpack(&lines, builder, &plan.host.layers) {
            Failed::One(bp) => format!("buildpack {bp} failed during build (exit 51); its output is above"),
            Failed::Group(group) => format!("a buildpack of the group {group} failed during build (exit 51); its output is above (-v shows which one ran last)"),
            Failed::Unknown => "a buildpack failed during build (exit 51); its output is above (run with -v to see which buildpack ran last)".to_owned(),
        },
        50..=59 => format!("the build phase failed (exit {code}){error_line}"),
        62 => format!("exporting the image failed (exit 62){error_line}"),
        60..=69 => format!("exporting the image failed (exit {code}){error_line}"),
        3 => format!("the {phase} refused its arguments (exit 3){error_line}"),
        _ => format!("the {phase} failed (exit {code}){error_line}"),
    };
    Some(sentence)
}

/// The builder's order groups, as `1) a@1, b@2 (optional); 2) ...`.
fn groups(builder: &BuilderInfo) -> String {
    if builder.order.is_empty() {
        return "(the builder declares no order)".to_owned();
    }
    builder
        .order
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let members = group
                .group
                .iter()
                .map(|e| {
                    let mut s = e.id.clone();
                    if let Some(v) = &e.version {
                        s.push('@');
                        s.push_str(v);
                    }
                    if e.optional {
                        s.push_str(" (optional)");
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("{}) {members}", i + 1)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What is known about the buildpack that failed.
enum Failed {
    /// This one.
    One(String),
    /// One of these (`a@1, b@2`).
    Group(String),
    /// Nothing.
    Unknown,
}

/// Which buildpack failed: the last one the lifecycle said it ran (`Running build
/// for buildpack ID@VERSION`, printed at debug level), else the group that passed
/// detection (`<layers>/group.toml`, written by the detector), else the last of
/// the builder's buildpack ids mentioned after `===> BUILDING`.
fn failed_buildpack(lines: &[String], builder: &BuilderInfo, layers: &std::path::Path) -> Failed {
    const RUNNING: &str = "Running build for buildpack ";
    if let Some(bp) = lines.iter().rev().find_map(|l| {
        l.find(RUNNING)
            .map(|at| l[at + RUNNING.len()..].trim().to_owned())
    }) {
        return Failed::One(bp);
    }
    let group = read_group(&layers.join("group.toml"));
    match group.as_slice() {
        [one] => return Failed::One(one.clone()),
        [] => {}
        many => return Failed::Group(many.join(", ")),
    }
    let building = lines
        .iter()
        .rposition(|l| l.contains("===> BUILDING"))
        .map_or(0, |i| i + 1);
    lines[building..]
        .iter()
        .rev()
        .find_map(|line| {
            builder
                .buildpacks
                .iter()
                .filter(|bp| !bp.id.is_empty() && line.contains(&bp.id))
                .max_by_key(|bp| bp.id.len())
                .map(|bp| format!("{}@{}", bp.id, bp.version))
        })
        .map_or(Failed::Unknown, Failed::One)
}

/// `id@version` of each buildpack in a `group.toml` (empty when absent or
/// unreadable: it only improves a message).
fn read_group(path: &std::path::Path) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Group {
        #[serde(default)]
        group: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        version: Option<String>,
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Vec::new();
    };
    if !meta.is_file() || meta.len() > 1 << 20 {
        return Vec::new();
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str::<Group>(&text).ok())
        .map(|g| {
            g.group
                .into_iter()
                .map(|e| match e.version {
                    Some(v) => format!("{}@{v}", e.id),
                    None => e.id,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{BuildpackInfo, GroupEntry, OrderGroup};
    use locald_core::lifecycle::HostDirs;
    use std::path::PathBuf;

    fn plan() -> LifecyclePlan {
        let p = PathBuf::from("/x");
        LifecyclePlan {
            phase: "creator".into(),
            program: "cnb/lifecycle/creator".into(),
            args: vec![],
            env: vec![("CNB_PLATFORM_API".into(), "0.13".into())],
            uid: 1,
            gid: 1,
            host: HostDirs {
                builder: p.clone(),
                app: p.clone(),
                layers: p.clone(),
                platform: p.clone(),
                cache: p.clone(),
                layout: p,
            },
            network: Default::default(),
            volumes: Vec::new(),
        }
    }

    fn builder() -> BuilderInfo {
        let entry = |id: &str, optional| GroupEntry {
            id: id.into(),
            version: Some("1.0".into()),
            optional,
        };
        BuilderInfo {
            order: vec![
                OrderGroup {
                    group: vec![entry("acme/node", false), entry("acme/procfile", true)],
                },
                OrderGroup {
                    group: vec![entry("acme/go", false)],
                },
            ],
            buildpacks: vec![
                BuildpackInfo {
                    id: "acme/node".into(),
                    version: "1.0".into(),
                    name: None,
                    homepage: None,
                },
                BuildpackInfo {
                    id: "acme/go".into(),
                    version: "2.0".into(),
                    name: None,
                    homepage: None,
                },
            ],
            ..BuilderInfo::default()
        }
    }

    fn explain(code: i32, lines: &[&str]) -> String {
        let w = LineWatcher::new();
        for l in lines {
            w.push(l);
        }
        explain_exit(RunStatus::Exited(code), &plan(), &builder(), &w).expect("a failure")
    }

    #[test]
    fn sentences() {
        let w = LineWatcher::new();
        assert_eq!(
            explain_exit(RunStatus::Exited(0), &plan(), &builder(), &w),
            None
        );
        let s = explain(20, &[]);
        assert!(s.contains("No buildpack group passed detection"), "{s}");
        assert!(
            s.contains("1) acme/node@1.0, acme/procfile@1.0 (optional); 2) acme/go@1.0"),
            "{s}"
        );
        assert!(explain(21, &[]).contains("with an error"));
        assert!(explain(11, &[]).contains("Platform API 0.13"));
        let s = explain(62, &["ERROR: failed to export: no space"]);
        assert!(
            s.contains("exporting") && s.contains("failed to export: no space"),
            "{s}"
        );
        assert!(explain(99, &[]).contains("exit 99"));
    }

    #[test]
    fn which_buildpack_failed() {
        let s = explain(
            51,
            &[
                "Running build for buildpack acme/node@1.0",
                "Running build for buildpack acme/go@2.0",
                "boom",
            ],
        );
        assert!(s.contains("buildpack acme/go@2.0 failed"), "{s}");
        let s = explain(
            51,
            &[
                "acme/go noise before",
                "===> BUILDING",
                "acme/node 1.0: compiling",
                "boom",
            ],
        );
        assert!(s.contains("buildpack acme/node@1.0 failed"), "{s}");
        let s = explain(51, &["===> BUILDING", "boom"]);
        assert!(s.contains("a buildpack failed"), "{s}");
    }

    #[test]
    fn failed_buildpack_from_group_toml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = plan();
        p.host.layers = dir.path().to_path_buf();
        let w = LineWatcher::new();
        w.push("===> BUILDING");
        let group = dir.path().join("group.toml");
        let explain = |p: &LifecyclePlan| {
            explain_exit(RunStatus::Exited(51), p, &builder(), &w).expect("failure")
        };
        std::fs::write(
            &group,
            "[[group]]\nid = \"acme/node\"\nversion = \"1.0\"\napi = \"0.10\"\n",
        )
        .expect("write");
        let s = explain(&p);
        assert!(s.contains("buildpack acme/node@1.0 failed"), "{s}");
        std::fs::write(
            &group,
            "[[group]]\nid = \"acme/node\"\nversion = \"1.0\"\n[[group]]\nid = \"acme/go\"\nversion = \"2.0\"\n",
        )
        .expect("write");
        let s = explain(&p);
        assert!(
            s.contains("a buildpack of the group acme/node@1.0, acme/go@2.0 failed"),
            "{s}"
        );
        std::fs::write(&group, "not toml [").expect("write");
        let s = explain(&p);
        assert!(s.contains("a buildpack failed"), "{s}");
    }
}

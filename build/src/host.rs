//! Whether this host resembles a builder's stack: the native runner runs the
//! builder's lifecycle and buildpacks on the host itself, so a build warns when the
//! host's architecture or distribution differs from the builder's targets.

use std::path::Path;

use crate::builder::BuilderInfo;

/// Ways this host differs from the builder's stack, as sentences (empty when it
/// looks alike): CPU architecture, OS, and distribution name/version from
/// `/etc/os-release` against the builder's targets (`stack_id` when it declares no
/// distribution).
pub fn host_mismatches(info: &BuilderInfo) -> Vec<String> {
    host_mismatches_with(
        info,
        std::env::consts::ARCH,
        &read_os_release(Path::new("/etc/os-release")),
    )
}

/// `(ID, VERSION_ID)` from an os-release file, lowercase; empty strings when absent.
fn read_os_release(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_lowercase())
            .unwrap_or_default()
    };
    (get("ID"), get("VERSION_ID"))
}

fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn host_mismatches_with(
    info: &BuilderInfo,
    rust_arch: &str,
    os_release: &(String, String),
) -> Vec<String> {
    let mut out = Vec::new();
    let arch = oci_arch(rust_arch);
    if !info.targets.is_empty() {
        if !info
            .targets
            .iter()
            .any(|t| t.os.is_empty() || t.os == "linux")
        {
            out.push("the builder targets another operating system than Linux".to_owned());
        }
        if !info
            .targets
            .iter()
            .any(|t| t.arch.is_empty() || t.arch == arch)
        {
            let theirs: Vec<&str> = info.targets.iter().map(|t| t.arch.as_str()).collect();
            out.push(format!(
                "the builder is for {} but this host is {arch}: its lifecycle and buildpacks will not run here",
                theirs.join("/")
            ));
        }
    }
    let (id, version) = os_release;
    let distros: Vec<(String, String)> = info
        .targets
        .iter()
        .filter_map(|t| {
            t.distro_name.as_ref().map(|n| {
                (
                    n.to_lowercase(),
                    t.distro_version.clone().unwrap_or_default(),
                )
            })
        })
        .collect();
    if !distros.is_empty() {
        let matches = distros
            .iter()
            .any(|(n, v)| n == id && (v.is_empty() || v == version));
        if !matches {
            let theirs: Vec<String> = distros
                .iter()
                .map(|(n, v)| {
                    if v.is_empty() {
                        n.clone()
                    } else {
                        format!("{n} {v}")
                    }
                })
                .collect();
            out.push(format!(
                "the builder's stack is {} but this host runs {} {}: buildpacks may miss libraries or tools (the container runner uses the builder's own root filesystem)",
                theirs.join(" or "),
                if id.is_empty() { "an unknown distribution" } else { id },
                version
            ));
        }
    } else if let Some(stack) = &info.stack_id {
        // Stack ids carry the distribution by convention: io.buildpacks.stacks.jammy,
        // heroku-22, ...
        let known = [
            ("jammy", "ubuntu", "22.04"),
            ("noble", "ubuntu", "24.04"),
            ("focal", "ubuntu", "20.04"),
            ("bionic", "ubuntu", "18.04"),
            ("heroku-20", "ubuntu", "20.04"),
            ("heroku-22", "ubuntu", "22.04"),
            ("heroku-24", "ubuntu", "24.04"),
        ];
        if let Some((_, want_id, want_version)) = known.iter().find(|(k, _, _)| stack.ends_with(k))
        {
            if want_id != id || want_version != version {
                out.push(format!(
                    "the builder's stack {stack} is {want_id} {want_version} but this host runs {id} {version}: buildpacks may miss libraries or tools"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Target;

    fn target(arch: &str, distro: Option<(&str, &str)>) -> Target {
        Target {
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
            distro_name: distro.map(|d| d.0.into()),
            distro_version: distro.map(|d| d.1.into()),
        }
    }

    #[test]
    fn mismatches() {
        let ubuntu = ("ubuntu".to_owned(), "22.04".to_owned());
        let mut info = BuilderInfo {
            targets: vec![target("amd64", Some(("ubuntu", "22.04")))],
            ..BuilderInfo::default()
        };
        assert!(host_mismatches_with(&info, "x86_64", &ubuntu).is_empty());
        let found = host_mismatches_with(&info, "aarch64", &ubuntu);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("amd64") && found[0].contains("arm64"));
        let debian = ("debian".to_owned(), "12".to_owned());
        let found = host_mismatches_with(&info, "x86_64", &debian);
        assert!(
            found[0].contains("ubuntu 22.04") && found[0].contains("debian 12"),
            "{found:?}"
        );

        info.targets.clear();
        info.stack_id = Some("heroku-22".into());
        assert!(host_mismatches_with(&info, "x86_64", &ubuntu).is_empty());
        assert_eq!(host_mismatches_with(&info, "x86_64", &debian).len(), 1);
        info.stack_id = Some("example.custom".into());
        assert!(host_mismatches_with(&info, "x86_64", &debian).is_empty());
    }

    #[test]
    fn os_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("os-release");
        std::fs::write(
            &path,
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        )
        .expect("write");
        assert_eq!(read_os_release(&path), ("debian".into(), "12".into()));
        assert_eq!(
            read_os_release(&dir.path().join("none")),
            (String::new(), String::new())
        );
    }
}

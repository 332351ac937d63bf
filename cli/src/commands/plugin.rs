//! `locald plugin ls`.

use locald_core::source::SchemeRegistry;
use locald_source_plugins::PluginReport;

use crate::args::{PluginLsArgs, RegistryArgs};

/// `locald plugin ls`: loads every trusted plugin to list it (the only command
/// that opens plugins whatever its source), and lists the refused ones with the
/// reason; untrusted ones are listed without being opened.
pub fn ls(args: PluginLsArgs) -> anyhow::Result<()> {
    // Built-in schemes first, so a plugin claiming one is reported as refused.
    let mut registry = SchemeRegistry::new();
    super::builtin_schemes(&mut registry, &RegistryArgs::default())?;
    let dirs = locald_source_plugins::plugin_dirs();
    let report: PluginReport = locald_source_plugins::load_plugins(&mut registry, &dirs);
    if args.json {
        let out = serde_json::json!({
            "directories": dirs,
            "loaded": report.loaded,
            "refused": report.refused,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if report.loaded.is_empty() && report.refused.is_empty() {
        eprintln!(
            "No plugins. Plugins are *.so files in: {} (more directories: {})",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            crate::env::LOCALD_PLUGIN_PATH
        );
        return Ok(());
    }
    let w = report
        .loaded
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let v = report
        .loaded
        .iter()
        .map(|p| p.version.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let sw = report
        .loaded
        .iter()
        .map(|p| p.schemes.join(",").len())
        .max()
        .unwrap_or(0)
        .max(7);
    if !report.loaded.is_empty() {
        println!(
            "{:<w$}  {:<v$}  {:<sw$}  PATH",
            "NAME", "VERSION", "SCHEMES"
        );
    }
    for p in &report.loaded {
        println!(
            "{:<w$}  {:<v$}  {:<sw$}  {}",
            p.name,
            p.version,
            p.schemes.join(","),
            p.path.display()
        );
    }
    for p in &report.refused {
        let when = if p.opened { "" } else { " (not opened)" };
        println!("refused {}{when}: {}", p.path.display(), p.reason);
    }
    Ok(())
}

//! Every environment variable `locald` reads, declared once (and named in `--help`).

/// Log filter in `tracing` syntax, e.g. `debug` or `locald_cache=trace`.
pub const LOCALD_LOG: &str = "LOCALD_LOG";
/// When set (to anything), no colour and no progress bars.
pub const NO_COLOR: &str = "NO_COLOR";
/// Registry credentials `USER:PASSWORD` (the `--creds` flag's variable).
pub const LOCALD_REGISTRY_CREDS: &str = "LOCALD_REGISTRY_CREDS";
/// Comma-separated registry hosts spoken to over plain HTTP.
pub const LOCALD_INSECURE_REGISTRIES: &str = "LOCALD_INSECURE_REGISTRIES";
/// The default of `--pull` (always, missing, never).
pub const LOCALD_PULL: &str = "LOCALD_PULL";
/// The default of `--pull-interval`.
pub const LOCALD_PULL_INTERVAL: &str = "LOCALD_PULL_INTERVAL";
/// Extra plugin directories, colon-separated (read by the core's plugin host).
pub const LOCALD_PLUGIN_PATH: &str = locald_source_plugins::PLUGIN_PATH_ENV;

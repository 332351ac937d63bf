//! Every environment variable `locald` reads, declared once (and named in `--help`).

/// Log filter in `tracing` syntax, e.g. `debug` or `locald_core=trace`.
pub const LOCALD_LOG: &str = "LOCALD_LOG";
/// When set (to anything), no colour and no progress bars.
pub const NO_COLOR: &str = "NO_COLOR";

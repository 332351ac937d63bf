//! `locald-test-plugin-no-entry`: a library that says which plugin ABI version it
//! was built for but has no entry point, for locald's plugin tests.
//!
//! With the default ABI version (1) the host finds no `locald_plugin_entry_v1`
//! and refuses it for that; with `LOCALD_TEST_ABI=99` in the environment of the
//! loading process it claims version 99 and is refused as built for another ABI.

/// The plugin ABI version this library claims: `$LOCALD_TEST_ABI`, else 1.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn locald_plugin_abi_version() -> u32 {
    std::env::var("LOCALD_TEST_ABI")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

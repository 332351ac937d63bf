//! `locald-test-plugin-null-entry`: a library of the right ABI version whose entry
//! point fails (returns a null table), for locald's plugin tests. The host must
//! refuse it and keep working.

/// The plugin ABI version: the host's.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn locald_plugin_abi_version() -> u32 {
    1
}

/// The entry point, failing: no table.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn locald_plugin_entry_v1() -> *const u8 {
    std::ptr::null()
}

//! Arbitrary text as a containerd `hosts.toml` (`certs.d/<registry>/hosts.toml`, a file the
//! daemon reads at start-up): parsing must end in hosts or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs_registry::fuzz_api;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for is_default in [false, true] {
        if let Ok(n) = fuzz_api::hosts_toml(text, is_default) {
            // Mirrors first, then the origin, which is always there.
            assert!(n >= 1);
        }
    }
});

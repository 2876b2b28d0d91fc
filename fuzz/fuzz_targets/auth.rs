//! Arbitrary bytes as a registry's `WWW-Authenticate` header value and as a token endpoint's
//! JSON reply (both come straight off the network before any credential is sent), and as a
//! docker `config.json` looked up for a registry (a file any user can write for their own runs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs_registry::fuzz_api;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz_api::token_reply(data);
    let Ok(value) = std::str::from_utf8(data) else { return };
    for host in ["docker.io", "127.0.0.1:5000"] {
        let _ = fuzz_api::docker_config(value, host);
    }
    if let Some(Some((realm, _service))) = fuzz_api::www_authenticate(value) {
        // Keys are matched case-insensitively, so the value must have named a realm.
        assert!(value.to_ascii_lowercase().contains("realm"));
        let _ = realm.len();
    }
});

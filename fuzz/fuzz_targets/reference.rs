//! Arbitrary strings as image references and platforms (`regfs run IMAGE`, `--platform`, and the
//! references written into manifests and hosts files): parsing must not panic, and every parsed
//! reference prints to a string that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs_registry::{Platform, Reference};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = s.parse::<Reference>() {
        let printed = r.to_string();
        let again: Reference = printed.parse().expect("a printed reference parses");
        assert_eq!(again, r, "{printed}");
        let _ = r.manifest_key();
        let _ = r.repository_ref("other/repo");
    }
    if let Ok(p) = s.parse::<Platform>() {
        let again: Platform = p.to_string().parse().expect("a printed platform parses");
        assert_eq!(again, p);
    }
});

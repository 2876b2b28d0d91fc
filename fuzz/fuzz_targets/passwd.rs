//! Arbitrary text as an image's `/etc/passwd` and `/etc/group` and as the `User` to run as: the
//! files come from image layers, so they are as hostile as any registry bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs_container::fuzz_api;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Layout: the user spec, then passwd, then group, separated by NUL.
    let mut parts = text.splitn(3, '\0');
    let spec = parts.next().unwrap_or("");
    let passwd = parts.next().unwrap_or("");
    let group = parts.next().unwrap_or("");
    for user in [None, Some(spec)] {
        if let Ok((uid, _gid, groups, _home)) = fuzz_api::user(user, passwd, group) {
            // A numeric uid always means itself, whatever the files say.
            if let Some(Ok(n)) = user.map(|u| u.split(':').next().unwrap_or("").parse::<u32>()) {
                assert_eq!(uid, n);
            }
            let mut sorted = groups.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), groups.len(), "supplementary groups are distinct");
        }
    }
});

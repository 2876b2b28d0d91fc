//! Arbitrary bytes as the JSON of an OCI image layout (`index.json`, manifests, indexes) and
//! arbitrary strings as `oci:DIR[:TAG]` locations, read by `regfs-image` for `oci:` sources:
//! parsing must not panic, and a location that parses names what it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = regfs_image::ManifestBody::parse(data, "fuzz") {
        for d in body.layers.iter().chain(&body.manifests).chain(&body.config) {
            let _ = d.digest.hex();
        }
    }
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some((dir, tag)) = regfs_image::parse_location(s) {
        assert!(s.starts_with("oci:"));
        assert!(tag.is_none_or(|t| !t.is_empty() && !t.contains('/')));
        let _ = dir;
    }
    let _ = regfs_image::ImageLocation::parse(s);
});

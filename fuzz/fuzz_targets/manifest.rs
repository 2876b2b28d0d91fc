//! Arbitrary bytes as a manifest reply and as an image config: media-type detection (body,
//! `Content-Type`, shape), index parsing and the platform pick, manifest parsing and its config
//! digest, exactly as `Client::resolve` runs them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs_registry::{Platform, fuzz_api};

/// `Content-Type` values the registry may send, chosen by the first input byte.
const CONTENT_TYPES: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
    Some("application/json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let platforms = [
        Platform::host(),
        Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) },
        Platform { os: "linux".into(), architecture: "arm".into(), variant: None },
    ];
    for platform in &platforms {
        let _ = fuzz_api::manifest(body, content_type, platform);
    }
    let _ = fuzz_api::config(body);
});

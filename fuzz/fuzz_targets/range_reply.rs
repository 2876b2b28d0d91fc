//! Arbitrary bytes as a ranged GET's reply: a `Content-Range` header, a `multipart/byteranges`
//! content type and its body. Parts must be exactly as long as their ranges say, and a slice cut
//! out of them must be the bytes asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs_registry::fuzz_api;

fuzz_target!(|data: &[u8]| {
    // Layout: one line of header value, then the body.
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else { return };
    if let Some((start, end, total)) = fuzz_api::content_range(head) {
        assert!(start < end);
        assert!(total.is_none_or(|t| end <= t));
    }
    if let Ok(parts) = fuzz_api::multipart(head, body) {
        for (start, end, bytes) in &parts {
            assert_eq!(bytes.len() as u64, end - start);
        }
        if let Some((start, end, _)) = parts.first() {
            let mid = start + (end - start) / 2;
            for (a, b) in [(*start, *end), (mid, *end), (*start, mid)] {
                let boundary = head.rsplit('=').next().unwrap_or("").trim_matches('"');
                if let Some(s) = fuzz_api::slice_multipart(boundary, body, a, b) {
                    assert_eq!(s.len() as u64, b - a);
                }
            }
        }
    }
    // The body alone, with a fixed boundary, reaches the part parser on every input.
    let _ = fuzz_api::slice_multipart("B", data, 0, 1);
});

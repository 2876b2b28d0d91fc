//! Arbitrary bytes as a chunk's gzip member (what the blob cache fetches by range and hands to
//! `decode_chunk`), and as a layer stream through `decompress_input` (gzip, zstd or plain tar).
//! A member built from the input must decode to exactly the chunk's bytes.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use regfs_estargz::{Chunk, Digest, decode_chunk, decompress_input};

/// Reads at most this much of a decompressed layer, so a bomb stays a fast input.
const MAX_LAYER_READ: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // Layout: inner offset (2 bytes), chunk size (2 bytes), then the member or payload bytes.
    if data.len() < 4 {
        return;
    }
    let inner = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let size = usize::from(u16::from_le_bytes([data[2], data[3]]));
    let payload = &data[4..];
    let mut chunk = Chunk {
        offset: 0,
        inner_offset: inner as u64,
        next_offset: payload.len() as u64,
        chunk_offset: 0,
        chunk_size: size as u64,
        digest: None,
    };

    // The payload as a hostile member, unverified and with a wrong digest.
    let _ = decode_chunk(payload, &chunk);
    chunk.digest = Some(Digest::sha256(payload));
    let _ = decode_chunk(payload, &chunk);

    // The payload as the uncompressed member: the chunk's bytes must come back verified.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(payload).expect("in-memory gzip");
    let member = gz.finish().expect("in-memory gzip");
    match payload.get(inner..inner + size) {
        Some(want) => {
            chunk.digest = Some(Digest::sha256(want));
            assert_eq!(decode_chunk(&member, &chunk).expect("a well-formed member decodes"), want);
        }
        None => assert!(decode_chunk(&member, &chunk).is_err()),
    }

    if let Ok(r) = decompress_input(data) {
        let mut out = Vec::new();
        let _ = r.take(MAX_LAYER_READ).read_to_end(&mut out);
    }
});

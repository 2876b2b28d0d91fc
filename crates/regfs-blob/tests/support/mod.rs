//! Test blobs: eStargz-shaped layers built from gzip members, with their chunk index.
#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::sync::Arc;

use flate2::Compression;
use flate2::write::GzEncoder;
use regfs_blob::{BlobSource, Chunk, LayerBlob};
use regfs_estargz::Digest;

/// A blob laid out like an eStargz layer: one gzip member per chunk (each followed by a tar
/// header's worth of bytes inside the same member), a TOC member and a footer.
pub struct TestBlob {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub chunks: Vec<Chunk>,
    pub data: Vec<Vec<u8>>,
    pub toc_offset: u64,
}

impl TestBlob {
    pub fn layer(&self, source: Arc<dyn BlobSource>) -> LayerBlob {
        LayerBlob {
            digest: self.digest,
            size: self.bytes.len() as u64,
            toc_offset: self.toc_offset,
            source,
            verify: true,
        }
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Pseudo-random bytes (xorshift), compressible enough to be realistic but distinct per seed.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            if i % 3 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            (x >> (8 * (i % 3))) as u8 % 64 + b' '
        })
        .collect()
}

/// Builds a blob whose members hold the given groups of chunks; a group of several chunks is
/// one packed member (chunks at increasing inner offsets).
pub fn build_packed(groups: &[Vec<Vec<u8>>]) -> TestBlob {
    let mut bytes = Vec::new();
    let mut chunks = Vec::new();
    let mut data = Vec::new();
    for group in groups {
        let offset = bytes.len() as u64;
        let mut member = Vec::new();
        for (i, d) in group.iter().enumerate() {
            chunks.push(Chunk {
                offset,
                inner_offset: member.len() as u64,
                next_offset: 0,
                chunk_offset: i as u64 * 1000,
                chunk_size: d.len() as u64,
                digest: Some(Digest::sha256(d)),
            });
            member.extend_from_slice(d);
            data.push(d.clone());
        }
        // The tar header of the next entry lives at the tail of the member.
        member.extend_from_slice(&[0u8; 512]);
        bytes.extend_from_slice(&gzip(&member));
    }
    let toc_offset = bytes.len() as u64;
    bytes.extend_from_slice(&gzip(br#"{"version":1,"entries":[]}"#));
    // A 51-byte stand-in for the footer: nothing here reads it.
    bytes.extend_from_slice(&[0u8; 51]);
    // As the reader's index does: next_offset is the next member start, and the blob size for
    // the last data member (so it covers the TOC unless the cache clamps it).
    let size = bytes.len() as u64;
    let starts: Vec<u64> = chunks.iter().map(|c| c.offset).collect();
    for c in &mut chunks {
        c.next_offset = starts
            .iter()
            .copied()
            .find(|&s| s > c.offset)
            .unwrap_or(size);
    }
    let digest = Digest::sha256(&bytes);
    TestBlob {
        bytes,
        digest,
        chunks,
        data,
        toc_offset,
    }
}

/// One chunk per member.
pub fn build(data: &[Vec<u8>]) -> TestBlob {
    let groups: Vec<Vec<Vec<u8>>> = data.iter().map(|d| vec![d.clone()]).collect();
    build_packed(&groups)
}

/// `n` distinct chunks of `len` bytes, seeds starting at `seed`.
pub fn chunks(seed: u64, n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n as u64).map(|i| content(seed + i, len)).collect()
}

//! Gzip members: header parsing and whole-member decompression with libdeflate.
//!
//! Every eStargz chunk lives in exactly one gzip member (a member closes only at chunk
//! boundaries), so the read path never streams: it decompresses one member into a buffer sized
//! from the TOC and grows the buffer only when the member also carries trailing tar headers.

use std::cell::RefCell;
use std::ops::Range;

use libdeflater::{DecompressionError, Decompressor};

/// Upper bound on one decompressed member. Real members hold one chunk (4 MiB by default) plus
/// the tar headers that follow it; packed members (MinChunkSize) a few chunks. 1 GiB leaves room
/// for chunk sizes far above any converter default while refusing a hostile member that claims
/// to inflate without bound.
pub const MAX_MEMBER_SIZE: usize = 1 << 30;

/// Deflate's worst-case expansion: a 258-byte match costs at least 2 bits, ~1032:1.
const MAX_DEFLATE_RATIO: usize = 1032;

const FTEXT_RESERVED: u8 = 0xe0;
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// The parts of an RFC 1952 member header the format cares about.
pub(crate) struct GzipHeader {
    /// Byte range of the FEXTRA payload inside the input.
    pub extra: Option<Range<usize>>,
}

/// Parses the gzip member header at the start of `b`.
pub(crate) fn parse_gzip_header(b: &[u8]) -> Result<GzipHeader, String> {
    if b.len() < 10 {
        return Err(format!("{} bytes are too short for a gzip header", b.len()));
    }
    if b[0] != 0x1f || b[1] != 0x8b {
        return Err("no gzip magic".into());
    }
    if b[2] != 8 {
        return Err(format!("compression method {}, want deflate (8)", b[2]));
    }
    let flags = b[3];
    if flags & FTEXT_RESERVED != 0 {
        return Err(format!("reserved gzip flags set ({flags:#x})"));
    }
    let mut pos = 10usize;
    let mut extra = None;
    if flags & FEXTRA != 0 {
        let len = b
            .get(10..12)
            .map(|x| u16::from_le_bytes([x[0], x[1]]) as usize)
            .ok_or("truncated gzip extra length")?;
        let end = 12 + len;
        if end > b.len() {
            return Err("truncated gzip extra field".into());
        }
        extra = Some(12..end);
        pos = end;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let nul = b[pos..]
                .iter()
                .position(|&c| c == 0)
                .ok_or("unterminated gzip name or comment")?;
            pos += nul + 1;
        }
    }
    if flags & FHCRC != 0 && pos + 2 > b.len() {
        return Err("truncated gzip header crc".into());
    }
    Ok(GzipHeader { extra })
}

thread_local! {
    // One decompressor per thread: allocation costs more than decoding a small chunk.
    static DECOMPRESSOR: RefCell<Decompressor> = RefCell::new(Decompressor::new());
}

/// Decompresses the one gzip member at the start of `bytes` (trailing bytes are ignored).
///
/// `size_hint` is the expected output size; the buffer doubles on demand up to `max`.
pub(crate) fn inflate_member(
    bytes: &[u8],
    size_hint: usize,
    max: usize,
) -> Result<Vec<u8>, String> {
    parse_gzip_header(bytes)?;
    // Deflate expands at most ~1032:1, so a short member cannot need a large buffer; this keeps
    // a hostile TOC's huge chunk size from allocating up to `max` for a few compressed bytes.
    let max = max.min(
        bytes
            .len()
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(1024),
    );
    let mut cap = size_hint.clamp(64, max.max(64));
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        loop {
            let mut out = vec![0u8; cap];
            match d.gzip_decompress(bytes, &mut out) {
                Ok(n) => {
                    out.truncate(n);
                    return Ok(out);
                }
                Err(DecompressionError::InsufficientSpace) if cap < max => {
                    cap = cap.saturating_mul(2).min(max);
                }
                Err(DecompressionError::InsufficientSpace) => {
                    return Err(format!("member inflates beyond {max} bytes"));
                }
                Err(DecompressionError::BadData) => {
                    return Err("corrupt deflate data or gzip trailer".into());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
        let mut out = vec![0; c.gzip_compress_bound(data.len())];
        let n = c.gzip_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn inflates_one_member_and_ignores_what_follows() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut m = gzip(&data);
        m.extend_from_slice(&gzip(b"next member"));
        m.extend_from_slice(b"garbage");
        assert_eq!(inflate_member(&m, 10, MAX_MEMBER_SIZE).unwrap(), data);
    }

    #[test]
    fn bounded_and_corrupt_members_are_errors() {
        let m = gzip(&[0u8; 10_000]);
        assert!(inflate_member(&m, 10, 5_000).is_err());
        let mut bad = m.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(inflate_member(&bad, 10_000, MAX_MEMBER_SIZE).is_err());
        assert!(inflate_member(&m[..m.len() - 3], 10_000, MAX_MEMBER_SIZE).is_err());
        assert!(inflate_member(b"\x1f\x8b\x08\x1c", 10, 100).is_err());
    }
}

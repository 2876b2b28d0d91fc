//! The footer: an empty gzip member at the blob end whose FEXTRA field carries the TOC offset.
//!
//! ```text
//! eStargz (51 B)  1f8b 08 04 00000000 00 ff | 1a00 | 'S' 'G' 1600 | %016x "STARGZ" | 01 0000 ffff | 00*8
//!                 gzip header, FLG=FEXTRA     XLEN   subfield hdr   22-byte payload   empty stored   CRC,ISIZE
//! legacy  (47 B)  same without the 4-byte subfield header (XLEN = 22)
//! ```
//!
//! The parser tries eStargz first, then legacy (spec §1.3): the last 47 bytes of an eStargz blob
//! never start with `1f 8b`, and the last 51 bytes of a legacy blob start inside the TOC member's
//! trailer, so the two never collide. External-TOC and zstd:chunked footers are recognised only
//! to refuse them with a clear message.

use crate::Error;
use crate::member::parse_gzip_header;

/// Size of the eStargz footer.
pub const FOOTER_SIZE: usize = 51;
/// Size of the legacy (CRFS) stargz footer.
pub const LEGACY_FOOTER_SIZE: usize = 47;

const EXTERNAL_TOC_FOOTER_SIZE: usize = 46;
const ZSTD_CHUNKED_FOOTER_SIZE: usize = 40;
const ZSTD_CHUNKED_STORAGE_FOOTER_SIZE: usize = 64;

/// The 22-byte payload is 16 hex digits of the offset followed by this magic.
const MAGIC: &[u8; 6] = b"STARGZ";
const EXTERNAL_TOC_MAGIC: &[u8; 17] = b"STARGZEXTERNALTOC";

/// Which footer the blob carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobFormat {
    /// eStargz, 51-byte footer.
    Estargz,
    /// CRFS stargz, 47-byte footer (no TOC digest annotation, no chunk digests).
    LegacyStargz,
}

impl BlobFormat {
    /// The footer size of this format.
    pub fn footer_size(self) -> usize {
        match self {
            BlobFormat::Estargz => FOOTER_SIZE,
            BlobFormat::LegacyStargz => LEGACY_FOOTER_SIZE,
        }
    }
}

/// A parsed footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Which footer layout was found: eStargz or legacy stargz.
    pub format: BlobFormat,
    /// Blob offset of the TOC member's gzip header.
    pub toc_offset: u64,
    /// Bytes the footer occupies at the blob end.
    pub footer_size: usize,
}

/// The 51-byte eStargz footer pointing at `toc_offset`.
pub fn encode_footer(toc_offset: u64) -> [u8; FOOTER_SIZE] {
    let mut out = [0u8; FOOTER_SIZE];
    out[..12].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0]);
    out[12..16].copy_from_slice(&[b'S', b'G', 22, 0]);
    out[16..38].copy_from_slice(&payload(toc_offset));
    out[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    out
}

/// The 47-byte legacy stargz footer (what CRFS wrote); used by tests and by fixtures.
pub fn encode_legacy_footer(toc_offset: u64) -> [u8; LEGACY_FOOTER_SIZE] {
    let mut out = [0u8; LEGACY_FOOTER_SIZE];
    out[..12].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0]);
    out[12..34].copy_from_slice(&payload(toc_offset));
    out[34..39].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    out
}

fn payload(toc_offset: u64) -> [u8; 22] {
    let mut p = [0u8; 22];
    p[..16].copy_from_slice(format!("{toc_offset:016x}").as_bytes());
    p[16..].copy_from_slice(MAGIC);
    p
}

/// Parses the footer from `tail`, the last bytes of the blob (at least [`FOOTER_SIZE`] of them,
/// or the whole blob when it is smaller).
pub fn parse_footer(tail: &[u8]) -> Result<Footer, Error> {
    let last = |n: usize| tail.len().checked_sub(n).map(|start| &tail[start..]);
    let estargz_err = match last(FOOTER_SIZE).map(parse_estargz) {
        Some(Ok(toc_offset)) => {
            return Ok(Footer {
                format: BlobFormat::Estargz,
                toc_offset,
                footer_size: FOOTER_SIZE,
            });
        }
        Some(Err(e)) => e,
        None => format!("blob of {} bytes is shorter than a footer", tail.len()),
    };
    if let Some(Ok(toc_offset)) = last(LEGACY_FOOTER_SIZE).map(parse_legacy) {
        return Ok(Footer {
            format: BlobFormat::LegacyStargz,
            toc_offset,
            footer_size: LEGACY_FOOTER_SIZE,
        });
    }
    if let Some(f) = last(EXTERNAL_TOC_FOOTER_SIZE)
        && parse_gzip_extra(f).is_ok_and(|x| x.len() == 21 && &x[4..] == EXTERNAL_TOC_MAGIC)
    {
        return Err(Error::Unsupported(
            "eStargz with an external TOC (46-byte footer) is not supported yet".into(),
        ));
    }
    if let Some(f) = last(ZSTD_CHUNKED_STORAGE_FOOTER_SIZE)
        && &f[56..] == b"GNUlInUx"
    {
        return Err(Error::Unsupported(
            "zstd:chunked (containers/storage 64-byte footer) is not supported yet".into(),
        ));
    }
    if let Some(f) = last(ZSTD_CHUNKED_FOOTER_SIZE)
        && &f[32..] == b"GnUlInUx"
    {
        return Err(Error::Unsupported(
            "zstd:chunked (40-byte footer) is not supported yet".into(),
        ));
    }
    Err(Error::BadFooter(estargz_err))
}

fn parse_gzip_extra(footer: &[u8]) -> Result<&[u8], String> {
    let header = parse_gzip_header(footer)?;
    header
        .extra
        .map(|r| &footer[r])
        .ok_or_else(|| "gzip header has no extra field".to_string())
}

fn parse_estargz(footer: &[u8]) -> Result<u64, String> {
    let extra = parse_gzip_extra(footer)?;
    if extra.len() < 4 {
        return Err(format!("extra field of {} bytes is too short", extra.len()));
    }
    if extra[..2] != *b"SG" {
        return Err("extra subfield id is not \"SG\"".into());
    }
    let len = u16::from_le_bytes([extra[2], extra[3]]);
    let sub = &extra[4..];
    if len != 22 || sub.len() != 22 {
        return Err(format!("extra subfield length {len}, want 22"));
    }
    parse_payload(sub)
}

fn parse_legacy(footer: &[u8]) -> Result<u64, String> {
    let extra = parse_gzip_extra(footer)?;
    if extra.len() != 22 {
        return Err(format!("extra field of {} bytes, want 22", extra.len()));
    }
    parse_payload(extra)
}

fn parse_payload(p: &[u8]) -> Result<u64, String> {
    if &p[16..] != MAGIC {
        return Err("magic \"STARGZ\" not found".into());
    }
    let hex = &p[..16];
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "toc offset {:?} is not 16 hex digits",
            String::from_utf8_lossy(hex)
        ));
    }
    // Safe: 16 ASCII hex digits always parse into a u64.
    let v = u64::from_str_radix(std::str::from_utf8(hex).unwrap_or("x"), 16)
        .map_err(|e| e.to_string())?;
    // The reference parses with ParseInt(.., 64): anything above i64::MAX is invalid there.
    if v > i64::MAX as u64 {
        return Err(format!("toc offset {v:#x} does not fit in int64"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_footers_match_the_spec() {
        assert_eq!(
            hex::encode(encode_footer(784)),
            "1f8b08040000000000ff1a00534716003030303030303030303030303033313053544152475a010000ffff0000000000000000"
        );
        assert_eq!(
            hex::encode(encode_legacy_footer(784)),
            "1f8b08040000000000ff16003030303030303030303030303033313053544152475a010000ffff0000000000000000"
        );
    }

    #[test]
    fn round_trip_both_formats() {
        for off in (0..200_000u64).step_by(1023) {
            let f = parse_footer(&encode_footer(off)).unwrap();
            assert_eq!(
                f,
                Footer {
                    format: BlobFormat::Estargz,
                    toc_offset: off,
                    footer_size: 51
                }
            );
            // The legacy footer preceded by unrelated bytes, as at the end of a real blob.
            let mut blob = vec![0u8; 10];
            blob.extend_from_slice(&encode_legacy_footer(off));
            let f = parse_footer(&blob).unwrap();
            assert_eq!(
                f,
                Footer {
                    format: BlobFormat::LegacyStargz,
                    toc_offset: off,
                    footer_size: 47
                }
            );
            let f = parse_footer(&encode_legacy_footer(off)).unwrap();
            assert_eq!(f.format, BlobFormat::LegacyStargz);
        }
    }

    /// A 51-byte gzip block whose extra field is `extra`, padded so the block stays 51 bytes.
    fn with_extra(extra: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0xff];
        if let Some(x) = extra {
            b[3] = 0x04;
            b.extend_from_slice(&(x.len() as u16).to_le_bytes());
            b.extend_from_slice(x);
        }
        b.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
        b.resize(51, 0);
        b
    }

    #[test]
    fn invalid_extra_is_an_error_not_a_panic() {
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("nil", None),
            ("empty", Some(b"")),
            ("2 bytes", Some(b"SG")),
            ("wrong id", Some(b"XY\x16\x000000000000000310STARGZ")),
            ("bad hex", Some(b"SG\x16\x00000000000000031zSTARGZ")),
            ("negative", Some(b"SG\x16\x00-00000000000031STARGZ")),
            ("bad magic", Some(b"SG\x16\x000000000000000310STARGX")),
            ("too large", Some(b"SG\x16\x00ffffffffffffffffSTARGZ")),
        ];
        for (name, extra) in cases {
            assert!(parse_footer(&with_extra(*extra)).is_err(), "{name}");
        }
    }

    #[test]
    fn upper_case_hex_is_accepted() {
        let mut f = encode_footer(0xabc);
        f[16..32].copy_from_slice(b"0000000000000ABC");
        assert_eq!(parse_footer(&f).unwrap().toc_offset, 0xabc);
    }

    #[test]
    fn short_or_garbage_tails_are_errors() {
        for tail in [&b""[..], b"\x1f\x8b", &[0u8; 51], &[0xffu8; 100]] {
            assert!(
                matches!(parse_footer(tail), Err(Error::BadFooter(_))),
                "{tail:?}"
            );
        }
    }

    #[test]
    fn other_formats_are_named() {
        let external = hex::decode(
            "1f8b08040000000000ff15005347110053544152475a45585445524e414c544f43010000ffff0000000000000000",
        )
        .unwrap();
        let mut zstd40 = vec![0u8; 32];
        zstd40.extend_from_slice(b"GnUlInUx");
        let mut zstd64 = vec![0u8; 56];
        zstd64.extend_from_slice(b"GNUlInUx");
        for (tail, want) in [
            (external, "external TOC"),
            (zstd40, "zstd:chunked"),
            (zstd64, "zstd:chunked"),
        ] {
            let mut blob = vec![7u8; 100];
            blob.extend_from_slice(&tail);
            match parse_footer(&blob) {
                Err(Error::Unsupported(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }
}

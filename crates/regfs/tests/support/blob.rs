//! Blob surgery for negative tests, written independently of `regfs_estargz` from the byte
//! layout in the spec (§1.2, §1.4): read the footer, pull the TOC JSON out of its gzip member,
//! swap in a forged TOC member, rewrite the footer (eStargz 51 bytes or legacy 47 bytes).

use std::io::{Read, Write};

/// Size of the eStargz footer.
pub const FOOTER_SIZE: usize = 51;

/// The TOC offset written in the 51-byte eStargz footer of `blob`.
pub fn toc_offset(blob: &[u8]) -> u64 {
    assert!(blob.len() >= FOOTER_SIZE, "blob shorter than a footer");
    let f = &blob[blob.len() - FOOTER_SIZE..];
    assert_eq!(&f[12..16], b"SG\x16\x00", "not an eStargz footer");
    assert_eq!(&f[32..38], b"STARGZ", "not an eStargz footer");
    u64::from_str_radix(std::str::from_utf8(&f[16..32]).expect("hex"), 16).expect("hex offset")
}

/// The 51-byte eStargz footer for `toc_offset`.
pub fn estargz_footer(toc_offset: u64) -> Vec<u8> {
    let mut f = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    f.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(f.len(), FOOTER_SIZE);
    f
}

/// The 47-byte legacy (CRFS) stargz footer for `toc_offset`.
pub fn legacy_footer(toc_offset: u64) -> Vec<u8> {
    let mut f = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0];
    f.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(f.len(), 47);
    f
}

/// `blob` with its eStargz footer replaced by a legacy one (what peers/smoke.sh does).
pub fn to_legacy(blob: &[u8]) -> Vec<u8> {
    let off = toc_offset(blob);
    let mut out = blob[..blob.len() - FOOTER_SIZE].to_vec();
    out.extend_from_slice(&legacy_footer(off));
    out
}

/// `blob` with its footer rewritten to point at `toc_offset`.
pub fn with_footer_offset(blob: &[u8], toc_offset: u64) -> Vec<u8> {
    let mut out = blob[..blob.len() - FOOTER_SIZE].to_vec();
    out.extend_from_slice(&estargz_footer(toc_offset));
    out
}

/// The TOC member's tar entry: `(name, JSON bytes)`, decompressing exactly one gzip member.
pub fn toc_entry(blob: &[u8]) -> (String, Vec<u8>) {
    let off = usize::try_from(toc_offset(blob)).expect("offset");
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob[off..])
        .read_to_end(&mut tar)
        .expect("gunzip TOC member");
    let header = tar::Header::from_byte_slice(&tar[..512]);
    let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
    let size = usize::try_from(header.size().expect("size")).expect("size");
    (name, tar[512..512 + size].to_vec())
}

/// The TOC JSON bytes of `blob`.
pub fn toc_json(blob: &[u8]) -> Vec<u8> {
    toc_entry(blob).1
}

/// `blob` with its TOC member replaced by one holding `json` under tar name `name`; the data
/// members are kept, so the TOC offset (and footer) stay the same.
pub fn forge_toc(blob: &[u8], name: &str, json: &[u8]) -> Vec<u8> {
    let off = toc_offset(blob);
    let mut header = tar::Header::new_ustar();
    header.set_path(name).expect("toc name");
    header.set_size(json.len() as u64);
    header.set_mode(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut member = Vec::new();
    member.extend_from_slice(header.as_bytes());
    member.extend_from_slice(json);
    member.resize(member.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&member).expect("gzip");
    let mut out = blob[..usize::try_from(off).expect("offset")].to_vec();
    out.extend_from_slice(&gz.finish().expect("gzip"));
    out.extend_from_slice(&estargz_footer(off));
    out
}

/// The TOC JSON as a `serde_json::Value` for field-level edits.
pub fn toc_value(blob: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&toc_json(blob)).expect("TOC JSON")
}

//! The input tar, scanned block by block without copying: where each entry's raw header blocks
//! and payload lie, plus the header fields the TOC needs.
//!
//! ```text
//! input tar   [x hdr][x data] [L hdr][L data] [hdr] [payload][pad] [hdr] ... [0 x 1024]
//!             |<---------------- TarEntry::header ------------->|
//!                                                  TarEntry::data  TarEntry::end
//! ```
//!
//! The converter copies `header` byte for byte (PAX `x` and GNU `L`/`K` extension blocks
//! included), so headers survive lossless; the parsed fields only feed the TOC. Payloads are
//! never read here, so the scan costs one checksum per 512-byte header block.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::toc::go_lossy_utf8;
use crate::{EntryKind, Error};

pub(crate) const BLOCK: usize = 512;

/// One entry of the input tar.
pub(crate) struct TarEntry {
    /// Raw header blocks: extension headers and their data, then the entry's own header.
    pub header: Range<usize>,
    /// The payload (`size` bytes; empty for header-only types).
    pub data: Range<usize>,
    /// End of the payload's padding to a block boundary.
    pub end: usize,
    pub name: Vec<u8>,
    pub link_name: Vec<u8>,
    pub kind: EntryKind,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Unix seconds and nanoseconds.
    pub mtime: (i64, u32),
    pub dev_major: i64,
    pub dev_minor: i64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl TarEntry {
    pub fn display_name(&self) -> String {
        go_lossy_utf8(&self.name)
    }
}

/// Extension records that apply to the next real entry.
#[derive(Default)]
struct Pending {
    start: Option<usize>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Vec<PaxRecord>,
}

/// Scans a whole uncompressed tar. Stops at the first zero block (end-of-archive) or at the end
/// of the input when it ends on a block boundary without a trailer.
pub(crate) fn scan(tar: &[u8]) -> Result<Vec<TarEntry>, Error> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut pending = Pending::default();
    while pos < tar.len() {
        let err = |reason: String| Error::Tar {
            entry: format!("<header block at {pos}>"),
            offset: pos as u64,
            reason,
        };
        let Some(block) = tar.get(pos..pos + BLOCK) else {
            return Err(err(format!(
                "truncated header: {} bytes left",
                tar.len() - pos
            )));
        };
        if block.iter().all(|&b| b == 0) {
            if pending.start.is_some() {
                return Err(err("extension header without a following entry".into()));
            }
            return Ok(out);
        }
        verify_checksum(block).map_err(err)?;
        let typeflag = block[156];
        let size = parse_numeric(&block[124..136]).map_err(|e| err(format!("size field: {e}")))?;
        let size = usize::try_from(size).map_err(|_| err(format!("negative size {size}")))?;
        let header_only = matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
        let data_start = pos + BLOCK;
        if matches!(typeflag, b'x' | b'L' | b'K') {
            let data_end = data_start
                .checked_add(size)
                .filter(|&e| e <= tar.len())
                .ok_or_else(|| {
                    err(format!(
                        "extension payload of {size} bytes runs past the end of the input"
                    ))
                })?;
            let padded = data_end.div_ceil(BLOCK) * BLOCK;
            if padded > tar.len() {
                return Err(err(
                    "extension padding runs past the end of the input".into()
                ));
            }
            pending.start.get_or_insert(pos);
            let data = &tar[data_start..data_end];
            match typeflag {
                b'x' => pending.pax.extend(parse_pax(data).map_err(err)?),
                b'L' => pending.long_name = Some(c_string(data).to_vec()),
                _ => pending.long_link = Some(c_string(data).to_vec()),
            }
            pos = padded;
            continue;
        }
        let header_start = pending.start.take().unwrap_or(pos);
        let mut entry =
            parse_header(block, std::mem::take(&mut pending), size).map_err(|reason| {
                Error::Tar {
                    entry: go_lossy_utf8(c_string(&block[..100])),
                    offset: pos as u64,
                    reason,
                }
            })?;
        let data_len = if header_only {
            0
        } else {
            usize::try_from(entry.1).unwrap_or(usize::MAX)
        };
        let data_end = data_start
            .checked_add(data_len)
            .filter(|&e| e <= tar.len())
            .ok_or_else(|| Error::Tar {
                entry: entry.0.display_name(),
                offset: pos as u64,
                reason: format!("payload of {data_len} bytes runs past the end of the input"),
            })?;
        let end = data_end.div_ceil(BLOCK) * BLOCK;
        if end > tar.len() {
            return Err(Error::Tar {
                entry: entry.0.display_name(),
                offset: pos as u64,
                reason: "payload padding runs past the end of the input".into(),
            });
        }
        entry.0.header = header_start..data_start;
        entry.0.data = data_start..data_end;
        entry.0.end = end;
        out.push(entry.0);
        pos = end;
    }
    if pending.start.is_some() {
        return Err(Error::Tar {
            entry: "<end of input>".into(),
            offset: pos as u64,
            reason: "extension header without a following entry".into(),
        });
    }
    Ok(out)
}

/// Parses the entry's own header block with its pending extensions; returns it with its size.
fn parse_header(b: &[u8], p: Pending, size: usize) -> Result<(TarEntry, u64), String> {
    let typeflag = b[156];
    let ustar = &b[257..263] == b"ustar\0" && &b[263..265] == b"00";
    let gnu = &b[257..263] == b"ustar " && &b[263..265] == b" \0";
    let star = ustar && &b[508..512] == b"tar\0";
    let mut name = c_string(&b[..100]).to_vec();
    if ustar {
        let prefix = c_string(if star { &b[345..476] } else { &b[345..500] });
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    let num = |r: Range<usize>, what: &str| {
        parse_numeric(&b[r]).map_err(|e| format!("{what} field: {e}"))
    };
    let mut e = TarEntry {
        header: 0..0,
        data: 0..0,
        end: 0,
        name,
        link_name: c_string(&b[157..257]).to_vec(),
        kind: EntryKind::Reg,
        mode: num(100..108, "mode")?,
        uid: num(108..116, "uid")?,
        gid: num(116..124, "gid")?,
        uname: Vec::new(),
        gname: Vec::new(),
        mtime: (num(136..148, "mtime")?, 0),
        dev_major: 0,
        dev_minor: 0,
        xattrs: BTreeMap::new(),
    };
    let mut size = size as u64;
    if ustar || gnu {
        e.uname = c_string(&b[265..297]).to_vec();
        e.gname = c_string(&b[297..329]).to_vec();
        if matches!(typeflag, b'3' | b'4') {
            e.dev_major = num(329..337, "devmajor")?;
            e.dev_minor = num(337..345, "devminor")?;
        }
    }
    for (k, v) in p.pax {
        let int = |v: &[u8]| -> Result<i64, String> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("pax record {:?} is not an integer", go_lossy_utf8(&k)))
        };
        match k.as_slice() {
            b"path" => e.name = v,
            b"linkpath" => e.link_name = v,
            b"uname" => e.uname = v,
            b"gname" => e.gname = v,
            b"uid" => e.uid = int(&v)?,
            b"gid" => e.gid = int(&v)?,
            b"size" => {
                size = u64::try_from(int(&v)?).map_err(|_| "negative pax size".to_string())?
            }
            b"mtime" => e.mtime = parse_pax_time(&v)?,
            k if k.starts_with(b"GNU.sparse.") => {
                return Err("GNU sparse files are not supported".into());
            }
            k if k.starts_with(b"SCHILY.xattr.") => {
                e.xattrs
                    .insert(go_lossy_utf8(&k[b"SCHILY.xattr.".len()..]), v);
            }
            _ => {}
        }
    }
    if let Some(n) = p.long_name {
        e.name = n;
    }
    if let Some(l) = p.long_link {
        e.link_name = l;
    }
    e.kind = match typeflag {
        b'0' => EntryKind::Reg,
        0 if e.name.ends_with(b"/") => EntryKind::Dir,
        0 => EntryKind::Reg,
        b'1' => EntryKind::Hardlink,
        b'2' => EntryKind::Symlink,
        b'3' => EntryKind::Char,
        b'4' => EntryKind::Block,
        b'5' => EntryKind::Dir,
        b'6' => EntryKind::Fifo,
        b'g' => return Err("global PAX headers ('g') are not supported".into()),
        b'S' => return Err("GNU sparse files ('S') are not supported".into()),
        t => return Err(format!("unsupported entry type {:?}", t as char)),
    };
    Ok((e, size))
}

/// The bytes up to the first NUL.
pub(crate) fn c_string(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

/// A numeric header field: octal (space/NUL padded) or base-256 (high bit set), as Go reads it.
pub(crate) fn parse_numeric(b: &[u8]) -> Result<i64, String> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        let inv = if b[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return Err("base-256 value overflows int64".into());
            }
            x = x << 8 | u64::from(c);
        }
        if x >> 63 != 0 {
            return Err("base-256 value overflows int64".into());
        }
        // x < 2^63, so the cast is exact.
        return Ok(if inv == 0xff { !(x as i64) } else { x as i64 });
    }
    let start = b
        .iter()
        .position(|&c| c != b' ' && c != 0)
        .unwrap_or(b.len());
    let t = c_string(&b[start..]);
    let t = &t[..t.iter().rposition(|&c| c != b' ').map_or(0, |n| n + 1)];
    if t.is_empty() {
        return Ok(0);
    }
    let mut x: u64 = 0;
    for &c in t {
        if !(b'0'..=b'7').contains(&c) {
            return Err(format!("invalid octal {:?}", String::from_utf8_lossy(t)));
        }
        x = x
            .checked_mul(8)
            .and_then(|x| x.checked_add(u64::from(c - b'0')))
            .ok_or("octal overflows")?;
    }
    i64::try_from(x).map_err(|_| "octal overflows int64".into())
}

fn verify_checksum(b: &[u8]) -> Result<(), String> {
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    let want = parse_numeric(&b[148..156]).map_err(|e| format!("checksum field: {e}"))?;
    if want != unsigned && want != signed {
        return Err(format!(
            "header checksum {want} does not match computed {unsigned}"
        ));
    }
    Ok(())
}

/// A PAX record's raw key and value.
type PaxRecord = (Vec<u8>, Vec<u8>);

/// PAX records: `"<len> <key>=<value>\n"` repeated.
fn parse_pax(mut data: &[u8]) -> Result<Vec<PaxRecord>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let bad = || "malformed PAX record".to_string();
        let sp = data.iter().position(|&c| c == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec.iter().position(|&c| c == b'=').ok_or_else(bad)?;
        if eq == 0 {
            return Err(bad());
        }
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// A PAX time `[-]secs[.frac]` as Unix (secs, nanos) with nanos in `0..1e9`.
fn parse_pax_time(v: &[u8]) -> Result<(i64, u32), String> {
    let s = std::str::from_utf8(v).map_err(|_| "pax mtime is not UTF-8".to_string())?;
    let bad = || format!("invalid pax mtime {s:?}");
    let (neg, s2) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s2.split_once('.').unwrap_or((s2, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let secs: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut nanos: u32 = 0;
    for c in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + u32::from(c - b'0');
    }
    if !neg {
        return Ok((secs, nanos));
    }
    if nanos == 0 {
        return Ok((-secs, 0));
    }
    Ok((-secs - 1, 1_000_000_000 - nanos))
}

/// A USTAR header as Go's `archive/tar` writes `Header{Name, Typeflag: '0', Size}` (spec §1.4):
/// used for the TOC entry and the landmarks.
pub(crate) fn ustar_header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    for r in [100..108, 108..116, 116..124, 329..337, 337..345] {
        h[r.start..r.end - 1].fill(b'0');
    }
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].fill(b'0');
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(c)
            }
        })
        .sum();
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields_like_go() {
        let cases: &[(&[u8], Result<i64, ()>)] = &[
            (b"0000644\0", Ok(0o644)),
            (b"   644 \0", Ok(0o644)),
            (b"\0\0\0\0\0\0\0\0", Ok(0)),
            (b"00000000043\0", Ok(35)),
            (b"0000009\0", Err(())),
            (&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00], Ok(256)),
            (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Ok(-1)),
            (&[0x80, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Err(())),
        ];
        for (b, want) in cases {
            assert_eq!(parse_numeric(b).map_err(|_| ()), *want, "{b:?}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1234.5"), Ok((1234, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.5"), Ok((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"7"), Ok((7, 0)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Ok((1, 123_456_789)));
        assert!(parse_pax_time(b"x").is_err());
        assert!(parse_pax_time(b"").is_err());
    }

    #[test]
    fn toc_header_is_byte_exact() {
        let h = ustar_header("stargz.index.json", 35);
        assert_eq!(&h[124..136], b"00000000043\0");
        assert_eq!(&h[100..108], b"0000000\0");
        assert_eq!(h[155], b' ');
        verify_checksum(&h).unwrap();
        // Go's archive/tar reads it back as the same header.
        let mut blob = h.to_vec();
        blob.extend_from_slice(&[0u8; 1536]);
        let mut ar = tar::Archive::new(&blob[..]);
        let e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("stargz.index.json"));
        assert_eq!(e.header().size().unwrap(), 35);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut h = ustar_header("a", 5000);
        assert!(scan(&h).is_err(), "payload past end");
        h[0] = b'b';
        assert!(scan(&h).is_err(), "bad checksum");
        assert!(scan(&[1u8; 100]).is_err(), "short");
        assert!(scan(&[0u8; 1024]).unwrap().is_empty());
        assert!(scan(&[]).unwrap().is_empty());
    }
}

//! Finding and parsing the TOC: footer → TOC offset → one gzip member holding
//! `[tar header "stargz.index.json"][JSON][pad][1024 zero bytes]`.
//!
//! The lazy mount reads the blob tail once, large enough to usually hold the TOC member too
//! ([`locate_toc`] then parses it in place); only when the TOC is larger than that read does the
//! caller fetch the exact range [`TocLocation::NeedRange`] names and call [`parse_toc_member`].

use std::io::Read;

use crate::archive::{BLOCK, c_string, parse_numeric};
use crate::footer::{BlobFormat, parse_footer};
use crate::toc::MAX_TOC_SIZE;
use crate::{Digest, Error, Toc};

/// The name the TOC's tar entry must have.
pub const TOC_TAR_NAME: &str = "stargz.index.json";

/// Where the TOC is, or the TOC itself when the tail already held it.
#[derive(Debug)]
pub enum TocLocation {
    /// The tail held the whole TOC member.
    Parsed {
        /// The parsed TOC.
        toc: Toc,
        /// sha256 of the TOC JSON bytes (what the `toc.digest` annotation names).
        digest: Digest,
        /// Blob offset of the TOC member, from the footer.
        toc_offset: u64,
        /// Which footer layout the blob ends with.
        format: BlobFormat,
    },
    /// Fetch blob bytes `[start, end)` (TOC member up to the footer) and call [`parse_toc_member`].
    NeedRange {
        /// Blob offset of the TOC member's first byte.
        start: u64,
        /// Blob offset one past the TOC member (where the footer starts).
        end: u64,
    },
}

/// Parses the footer in `tail` (the last `tail.len()` bytes of a blob of `blob_size` bytes) and,
/// if the TOC member lies inside `tail`, the TOC too.
pub fn locate_toc(tail: &[u8], blob_size: u64) -> Result<TocLocation, Error> {
    let tail_len = tail.len() as u64;
    if tail_len > blob_size {
        return Err(Error::BadFooter(format!(
            "tail of {tail_len} bytes is longer than the blob of {blob_size} bytes"
        )));
    }
    let footer = parse_footer(tail)?;
    let out_of_range = || Error::TocOffsetOutOfRange {
        toc_offset: footer.toc_offset,
        blob_size,
        footer_size: footer.footer_size,
    };
    // parse_footer only succeeds on at least footer_size bytes, so this cannot underflow.
    let toc_end = blob_size - footer.footer_size as u64;
    if footer.toc_offset >= toc_end {
        return Err(out_of_range());
    }
    let tail_start = blob_size - tail_len;
    if footer.toc_offset < tail_start {
        return Ok(TocLocation::NeedRange {
            start: footer.toc_offset,
            end: toc_end,
        });
    }
    // Both bounds are inside `tail` (checked above), so the casts are lossless.
    let member = &tail[(footer.toc_offset - tail_start) as usize..tail.len() - footer.footer_size];
    let (toc, digest) = parse_toc_member_at(member, footer.toc_offset)?;
    Ok(TocLocation::Parsed {
        toc,
        digest,
        toc_offset: footer.toc_offset,
        format: footer.format,
    })
}

/// Gunzips the one gzip member at `member[0]` (bytes after it are ignored), checks that its
/// first tar entry is `stargz.index.json`, and parses its JSON. The digest is sha256 of the JSON.
pub fn parse_toc_member(member: &[u8]) -> Result<(Toc, Digest), Error> {
    parse_toc_member_at(member, 0)
}

pub(crate) fn parse_toc_member_at(member: &[u8], offset: u64) -> Result<(Toc, Digest), Error> {
    let json = toc_json(member, offset)?;
    let toc = Toc::from_json(&json)?;
    Ok((toc, Digest::sha256(&json)))
}

fn toc_json(member: &[u8], offset: u64) -> Result<Vec<u8>, Error> {
    let gz_err = |reason: String| Error::Gzip { offset, reason };
    crate::member::parse_gzip_header(member).map_err(gz_err)?;
    // flate2's GzDecoder reads exactly one member; we stop after the JSON payload.
    let mut r = flate2::read::GzDecoder::new(member);
    let mut header = [0u8; BLOCK];
    r.read_exact(&mut header)
        .map_err(|e| gz_err(format!("toc tar header: {e}")))?;
    let name = c_string(&header[..100]);
    let prefix = if &header[257..263] == b"ustar\0" {
        c_string(&header[345..500])
    } else {
        b""
    };
    if name != TOC_TAR_NAME.as_bytes() || !prefix.is_empty() || !matches!(header[156], b'0' | 0) {
        let mut shown = prefix.to_vec();
        if !shown.is_empty() {
            shown.push(b'/');
        }
        shown.extend_from_slice(name);
        return Err(Error::TocName(crate::toc::go_lossy_utf8(&shown)));
    }
    let size = parse_numeric(&header[124..136])
        .map_err(|e| gz_err(format!("toc tar header size: {e}")))?;
    let size = u64::try_from(size).map_err(|_| gz_err(format!("negative toc size {size}")))?;
    if size > MAX_TOC_SIZE {
        return Err(Error::TocTooLarge {
            size,
            max: MAX_TOC_SIZE,
        });
    }
    let mut json = Vec::new();
    r.take(size)
        .read_to_end(&mut json)
        .map_err(|e| gz_err(format!("toc json: {e}")))?;
    if json.len() as u64 != size {
        return Err(gz_err(format!(
            "toc json truncated: {} of {size} bytes",
            json.len()
        )));
    }
    Ok(json)
}

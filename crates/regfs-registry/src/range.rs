//! Pure parsers for HTTP range replies: `Content-Range` and `multipart/byteranges` bodies.
//!
//! A multipart body is walked by the lengths its parts' `Content-Range` headers announce, never by
//! searching for the boundary inside part data (blob bytes may contain it). Anything else that
//! does not fit the RFC 9110 shape is an error; the caller then falls back to single ranges.

use bytes::Bytes;

/// A part header block longer than this is not a range reply (Go's is ~100 bytes).
const MAX_PART_HEADER_LEN: usize = 8 * 1024;

/// One answered byte range: `start..end` (end exclusive) of the blob, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangePart {
    pub start: u64,
    pub end: u64,
    pub data: Bytes,
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) as `(start, end_exclusive, total)`.
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.trim().split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let last: u64 = b.trim().parse().ok()?;
    if last < start {
        return None;
    }
    let end = last.checked_add(1)?;
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if end > t {
                return None;
            }
            Some(t)
        }
    };
    Some((start, end, total))
}

/// The `boundary` parameter of a `multipart/byteranges` content type.
pub(crate) fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/byteranges")
    {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        // RFC 2046: 1..70 characters.
        (!v.is_empty() && v.len() <= 70).then(|| v.to_owned())
    })
}

/// Splits a `multipart/byteranges` body into its parts. Errors are short reasons.
pub(crate) fn parse_multipart(body: &Bytes, boundary: &str) -> Result<Vec<RangePart>, String> {
    let delim = format!("--{boundary}");
    let mut pos = find(body, delim.as_bytes(), 0).ok_or("no opening boundary")?;
    let mut parts = Vec::new();
    loop {
        pos += delim.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        pos = skip_line_end(body, pos).ok_or("boundary not followed by CRLF")?;
        let header_end = find(body, b"\r\n\r\n", pos)
            .filter(|&e| e - pos <= MAX_PART_HEADER_LEN)
            .ok_or("part headers unterminated or too long")?;
        let headers =
            std::str::from_utf8(&body[pos..header_end]).map_err(|_| "part headers not utf-8")?;
        let range = headers
            .split("\r\n")
            .find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-range").then_some(v)
            })
            .ok_or("part without Content-Range")?;
        let (start, end, _) = parse_content_range(range).ok_or("bad part Content-Range")?;
        let data_start = header_end + 4;
        let len = usize::try_from(end - start).map_err(|_| "part too large")?;
        let data_end = data_start.checked_add(len).ok_or("part too large")?;
        if data_end > body.len() {
            return Err(format!("part {start}-{end} truncated"));
        }
        parts.push(RangePart {
            start,
            end,
            data: body.slice(data_start..data_end),
        });
        pos = skip_line_end(body, data_end).ok_or("part data not followed by CRLF")?;
        if body.get(pos..pos + delim.len()) != Some(delim.as_bytes()) {
            return Err("part data not followed by boundary".into());
        }
    }
}

fn skip_line_end(body: &[u8], pos: usize) -> Option<usize> {
    match body.get(pos..) {
        Some([b'\r', b'\n', ..]) => Some(pos + 2),
        Some([b'\n', ..]) => Some(pos + 1),
        _ => None,
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Cuts `start..end` out of whichever part covers it.
pub(crate) fn slice_from_parts(parts: &[RangePart], start: u64, end: u64) -> Option<Bytes> {
    parts.iter().find_map(|p| {
        if p.start <= start && end <= p.end {
            let a = usize::try_from(start - p.start).ok()?;
            let b = usize::try_from(end - p.start).ok()?;
            Some(p.data.slice(a..b))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Span = (u64, u64, Option<u64>);

    #[test]
    fn content_range_table() {
        let cases: &[(&str, Option<Span>)] = &[
            ("bytes 0-9/100", Some((0, 10, Some(100)))),
            ("bytes 5-5/*", Some((5, 6, None))),
            ("bytes 9-0/100", None),
            ("bytes 0-100/100", None),
            ("bytes 0-18446744073709551615/*", None),
            ("items 0-1/2", None),
            ("bytes */100", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_content_range(input), *want, "{input}");
        }
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            multipart_boundary("multipart/byteranges; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            multipart_boundary("Multipart/Byteranges;boundary=\"q r\"").as_deref(),
            Some("q r")
        );
        assert_eq!(multipart_boundary("application/octet-stream"), None);
    }

    #[test]
    fn parses_multipart_with_boundary_inside_data() {
        let body = Bytes::from_static(
            b"preamble\r\n--XB\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-5/100\r\n\r\n--XB\r\n\r\n--XB\r\nContent-Range: bytes 50-51/100\r\n\r\nhi\r\n--XB--\r\n",
        );
        let parts = parse_multipart(&body, "XB").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0].data[..], b"--XB\r\n");
        assert_eq!((parts[1].start, parts[1].end), (50, 52));
        assert_eq!(&slice_from_parts(&parts, 51, 52).unwrap()[..], b"i");
        assert!(slice_from_parts(&parts, 5, 7).is_none());
    }

    #[test]
    fn rejects_truncated_and_malformed_multipart() {
        let bad: &[&[u8]] = &[
            b"",
            b"--XB\r\nContent-Range: bytes 0-9/100\r\n\r\nshort",
            b"--XB\r\n\r\nno range\r\n--XB--",
            b"--XB\r\nContent-Range: bytes 0-1/100\r\n\r\nabX--XB--",
        ];
        for b in bad {
            assert!(parse_multipart(&Bytes::copy_from_slice(b), "XB").is_err());
        }
    }

    proptest::proptest! {
        /// Hostile bodies never panic, and every part returned lies inside the body.
        #[test]
        fn multipart_parser_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), cr in ".{0,40}") {
            let body = Bytes::from(body);
            if let Ok(parts) = parse_multipart(&body, "B") {
                for p in parts {
                    proptest::prop_assert_eq!(p.data.len() as u64, p.end - p.start);
                }
            }
            let _ = parse_content_range(&cr);
            let _ = multipart_boundary(&cr);
        }

        /// Well-formed replies with arbitrary part data (boundary look-alikes included) parse back.
        #[test]
        fn multipart_round_trips(parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..64), 1..6)) {
            let mut body = Vec::new();
            let mut offset = 0u64;
            for p in &parts {
                body.extend_from_slice(format!("--B\r\nContent-Range: bytes {}-{}/*\r\n\r\n", offset, offset + p.len() as u64 - 1).as_bytes());
                body.extend_from_slice(p);
                body.extend_from_slice(b"\r\n");
                offset += p.len() as u64 + 7;
            }
            body.extend_from_slice(b"--B--\r\n");
            let got = parse_multipart(&Bytes::from(body), "B").unwrap();
            proptest::prop_assert_eq!(got.len(), parts.len());
            for (g, p) in got.iter().zip(&parts) {
                proptest::prop_assert_eq!(&g.data[..], &p[..]);
            }
        }
    }
}

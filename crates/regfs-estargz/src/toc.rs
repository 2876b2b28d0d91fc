//! The TOC (`stargz.index.json`): entry kinds and fields as the reference writes them.
//!
//! Field order in [`TocEntry`] is the JSON emission order of the reference (spec §2.2). The
//! Go-identical serialiser and the tolerant parser live in this module too.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{Digest, Error};

/// Largest uncompressed TOC JSON accepted. A TOC costs roughly 300-500 bytes per entry, so
/// 512 MiB covers layers with a million files several times over, while a hostile blob cannot
/// make the reader allocate more than this (plus the parsed entries) before failing.
pub const MAX_TOC_SIZE: u64 = 512 << 20;

/// Largest number of TOC entries accepted (files + extra chunks). 4 Mi entries is ~10x the
/// largest real layers (a full distro `/usr` has ~100 k files, and a 1 TiB layer at the 4 MiB
/// default chunk size adds 256 Ki chunk entries); it bounds the index memory at ~1-2 GiB.
pub const MAX_TOC_ENTRIES: usize = 4 << 20;

/// The kind of a TOC entry (spec §2.2, `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A directory (`"dir"`).
    Dir,
    /// A regular file (`"reg"`); its first chunk when the file is split.
    Reg,
    /// A symbolic link to `linkName` (`"symlink"`).
    Symlink,
    /// A hard link to the earlier entry named by `linkName` (`"hardlink"`).
    Hardlink,
    /// A character device (`"char"`).
    Char,
    /// A block device (`"block"`).
    Block,
    /// A named pipe (`"fifo"`).
    Fifo,
    /// A continuation chunk of the preceding `reg` entry.
    Chunk,
}

impl EntryKind {
    /// The JSON spelling (`"dir"`, `"reg"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::Reg => "reg",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
            EntryKind::Chunk => "chunk",
        }
    }

    /// Parses the JSON spelling.
    pub fn from_name(s: &str) -> Option<EntryKind> {
        Some(match s {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::Reg,
            "symlink" => EntryKind::Symlink,
            "hardlink" => EntryKind::Hardlink,
            "char" => EntryKind::Char,
            "block" => EntryKind::Block,
            "fifo" => EntryKind::Fifo,
            "chunk" => EntryKind::Chunk,
            _ => return None,
        })
    }
}

/// One entry of the TOC, exactly the fields of spec §2.2 in emission order.
///
/// Zero / empty values mean "absent" as in the Go struct with `omitempty`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// Raw tar name (not cleaned). For `chunk` entries the file name repeated.
    pub name: String,
    /// The entry's `type`.
    pub kind: EntryKind,
    /// Logical file size (`reg`).
    pub size: i64,
    /// RFC 3339 modification time as stored (`None` when absent).
    pub modtime: Option<String>,
    /// `linkName`: the symlink target, or the path a hardlink points at.
    pub link_name: String,
    /// Raw tar mode value (may carry `S_IF*` bits).
    pub mode: i64,
    /// Owner user id.
    pub uid: i64,
    /// Owner group id.
    pub gid: i64,
    /// `userName`: owner user name from the tar header.
    pub user_name: String,
    /// `groupName`: owner group name from the tar header.
    pub group_name: String,
    /// Compressed blob offset of the member holding the payload (0 = absent).
    pub offset: i64,
    /// Uncompressed offset of the payload inside that member (packed members only).
    pub inner_offset: i64,
    /// `devMajor`: major device number (`char`, `block`).
    pub dev_major: i64,
    /// `devMinor`: minor device number (`char`, `block`).
    pub dev_minor: i64,
    /// Extended attributes (raw values; base64 in JSON), sorted by key.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Digest of the whole file payload (`reg`).
    pub digest: Option<Digest>,
    /// Offset of this chunk inside the uncompressed file.
    pub chunk_offset: i64,
    /// Size of this chunk (0 = to the end of the file).
    pub chunk_size: i64,
    /// Digest of this chunk's uncompressed bytes.
    pub chunk_digest: Option<Digest>,
}

impl TocEntry {
    /// An entry of `kind` named `name` with every other field absent.
    pub fn new(name: impl Into<String>, kind: EntryKind) -> TocEntry {
        TocEntry {
            name: name.into(),
            kind,
            size: 0,
            modtime: None,
            link_name: String::new(),
            mode: 0,
            uid: 0,
            gid: 0,
            user_name: String::new(),
            group_name: String::new(),
            offset: 0,
            inner_offset: 0,
            dev_major: 0,
            dev_minor: 0,
            xattrs: BTreeMap::new(),
            digest: None,
            chunk_offset: 0,
            chunk_size: 0,
            chunk_digest: None,
        }
    }
}

/// The whole TOC document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toc {
    /// TOC format version; eStargz writes 1.
    pub version: i64,
    /// `None` serialises as `null` (what Go writes for an empty layer).
    pub entries: Option<Vec<TocEntry>>,
}

impl Toc {
    /// Blob offset of the root `.prefetch.landmark` entry: everything before it is worth
    /// prefetching. `None` without one.
    pub fn prefetch_landmark(&self) -> Option<u64> {
        self.entries
            .as_deref()?
            .iter()
            .find(|e| crate::clean_name(&e.name) == crate::PREFETCH_LANDMARK)
            .and_then(|e| u64::try_from(e.offset).ok())
    }

    /// Parses TOC JSON as tolerantly as the reference reader (spec §2.2, §8): `null` or `[]`
    /// entries, unknown keys ignored (`NumLink`, `endOffset`, ...), keys matched
    /// ASCII-case-insensitively with the last duplicate winning, absent fields defaulted.
    pub fn from_json(json: &[u8]) -> Result<Toc, Error> {
        if json.len() as u64 > MAX_TOC_SIZE {
            return Err(Error::TocTooLarge {
                size: json.len() as u64,
                max: MAX_TOC_SIZE,
            });
        }
        let mut de = serde_json::Deserializer::from_slice(json);
        let toc = de.deserialize_map(TocVisitor).map_err(json_error)?;
        de.end().map_err(json_error)?;
        Ok(toc)
    }

    /// Serialises byte-identically to Go's `json.MarshalIndent(toc, "", "\t")` (spec §2.3).
    pub fn to_json(&self) -> Vec<u8> {
        let n = self.entries.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(64 + n * 320);
        out.extend_from_slice(b"{\n\t\"version\": ");
        push_int(&mut out, self.version);
        out.extend_from_slice(b",\n\t\"entries\": ");
        match &self.entries {
            None => out.extend_from_slice(b"null"),
            Some(e) if e.is_empty() => out.extend_from_slice(b"[]"),
            Some(entries) => {
                out.extend_from_slice(b"[\n");
                for (i, e) in entries.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b",\n");
                    }
                    write_entry(&mut out, e);
                }
                out.extend_from_slice(b"\n\t]");
            }
        }
        out.extend_from_slice(b"\n}");
        out
    }
}

fn json_error(e: serde_json::Error) -> Error {
    match e.to_string() {
        m if m.contains("more than") && m.contains("entries") => Error::TooManyEntries {
            max: MAX_TOC_ENTRIES,
        },
        m => Error::TocJson(m),
    }
}

fn write_entry(out: &mut Vec<u8>, e: &TocEntry) {
    out.extend_from_slice(b"\t\t{");
    let mut field = |out: &mut Vec<u8>, key: &str| {
        out.extend_from_slice(b"\n\t\t\t\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\": ");
    };
    let ints = |out: &mut Vec<u8>, field: &mut dyn FnMut(&mut Vec<u8>, &str), key: &str, v: i64| {
        if v != 0 {
            field(out, key);
            push_int(out, v);
            out.push(b',');
        }
    };
    field(out, "name");
    push_str(out, &e.name);
    out.push(b',');
    field(out, "type");
    push_str(out, e.kind.as_str());
    out.push(b',');
    ints(out, &mut field, "size", e.size);
    if let Some(m) = e.modtime.as_deref().filter(|m| !m.is_empty()) {
        field(out, "modtime");
        push_str(out, m);
        out.push(b',');
    }
    if !e.link_name.is_empty() {
        field(out, "linkName");
        push_str(out, &e.link_name);
        out.push(b',');
    }
    ints(out, &mut field, "mode", e.mode);
    ints(out, &mut field, "uid", e.uid);
    ints(out, &mut field, "gid", e.gid);
    for (key, v) in [("userName", &e.user_name), ("groupName", &e.group_name)] {
        if !v.is_empty() {
            field(out, key);
            push_str(out, v);
            out.push(b',');
        }
    }
    ints(out, &mut field, "offset", e.offset);
    ints(out, &mut field, "innerOffset", e.inner_offset);
    ints(out, &mut field, "devMajor", e.dev_major);
    ints(out, &mut field, "devMinor", e.dev_minor);
    if !e.xattrs.is_empty() {
        field(out, "xattrs");
        out.push(b'{');
        for (i, (k, v)) in e.xattrs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"\n\t\t\t\t");
            push_str(out, k);
            out.extend_from_slice(b": \"");
            out.extend_from_slice(BASE64.encode(v).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"\n\t\t\t},");
    }
    if let Some(d) = &e.digest {
        field(out, "digest");
        push_str(out, &d.to_string());
        out.push(b',');
    }
    ints(out, &mut field, "chunkOffset", e.chunk_offset);
    ints(out, &mut field, "chunkSize", e.chunk_size);
    if let Some(d) = &e.chunk_digest {
        field(out, "chunkDigest");
        push_str(out, &d.to_string());
        out.push(b',');
    }
    // Every field above ends in ','; the last one must not.
    if out.last() == Some(&b',') {
        out.pop();
    }
    out.extend_from_slice(b"\n\t\t}");
}

fn push_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(v.to_string().as_bytes());
}

/// Go `encoding/json` string escaping with HTML escaping on (spec §2.3).
///
/// U+FFFD is written as the escape `\ufffd`: Go writes that escape for every invalid UTF-8 byte
/// of a tar name, and our names reach here already replaced (see [`go_lossy_utf8`]). A name with
/// a genuine U+FFFD therefore serialises differently from Go, which is far rarer than
/// non-UTF-8 names.
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let esc: Option<&[u8]> = match c {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            _ => None,
        };
        let (escape, len): (Option<Vec<u8>>, usize) = if let Some(e) = esc {
            (Some(e.to_vec()), 1)
        } else if c < 0x20 || c == b'<' || c == b'>' || c == b'&' {
            (
                Some(vec![
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ]),
                1,
            )
        } else if c == 0xe2
            && b.get(i + 1) == Some(&0x80)
            && matches!(b.get(i + 2), Some(0xa8 | 0xa9))
        {
            let last = if b[i + 2] == 0xa8 { b'8' } else { b'9' };
            (Some(vec![b'\\', b'u', b'2', b'0', b'2', last]), 3)
        } else if c == 0xef && b.get(i + 1) == Some(&0xbf) && b.get(i + 2) == Some(&0xbd) {
            (Some(b"\\ufffd".to_vec()), 3)
        } else {
            (None, 1)
        };
        if let Some(e) = escape {
            out.extend_from_slice(&b[start..i]);
            out.extend_from_slice(&e);
            i += len;
            start = i;
        } else {
            i += 1;
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Bytes to a string the way Go's JSON encoder sees them: every byte that does not start a
/// valid UTF-8 sequence becomes one U+FFFD (Go decodes invalid input one byte at a time, unlike
/// [`String::from_utf8_lossy`], which replaces maximal invalid subsequences).
pub fn go_lossy_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // Safe: `good` is the valid prefix reported by from_utf8.
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                out.push('\u{fffd}');
                rest = &bad[1..];
            }
        }
    }
}

/// Formats a Unix time as the TOC `modtime` (spec §2.2): UTC, rounded to the nearest second
/// (halves up, like Go's `Time.Round`), `None` for the Unix epoch second, which Go omits.
pub fn format_modtime(secs: i64, nanos: u32) -> Option<String> {
    // Go checks `t.Unix() == 0` before rounding.
    if secs == 0 {
        return None;
    }
    let secs = if nanos >= 500_000_000 {
        secs.saturating_add(1)
    } else {
        secs
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let year = if y < 0 {
        format!("-{:04}", -y)
    } else {
        format!("{y:04}")
    };
    Some(format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    ))
}

/// Parses an RFC 3339 time (`YYYY-MM-DDThh:mm:ss[.frac](Z|±hh:mm)`) into Unix (secs, nanos).
pub fn parse_modtime(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0i64, |a, &c| a * 10 + i64::from(c - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return None;
    }
    let mut pos = 19;
    let mut nanos = 0u32;
    if b[pos] == b'.' || b[pos] == b',' {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 9 {
                nanos = nanos * 10 + u32::from(b[pos] - b'0');
            }
            pos += 1;
        }
        if pos == start {
            return None;
        }
        for _ in (pos - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match &b[pos..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(pos + 1..pos + 3)?, num(pos + 4..pos + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some((secs, nanos))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---- tolerant deserialisation -------------------------------------------------------------

struct TocVisitor;

impl<'de> Visitor<'de> for TocVisitor {
    type Value = Toc;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOC object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Toc, A::Error> {
        let mut toc = Toc {
            version: 0,
            entries: None,
        };
        while let Some(key) = map.next_key::<Key>()? {
            match key.0.as_str() {
                "version" => toc.version = map.next_value::<Option<i64>>()?.unwrap_or(0),
                "entries" => toc.entries = map.next_value_seed(EntriesSeed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(toc)
    }
}

/// A JSON object key, ASCII-lower-cased (Go matches struct fields case-insensitively).
struct Key(String);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                // Keys we know are short; don't copy long unknown keys.
                Ok(Key(if v.len() <= 16 {
                    v.to_ascii_lowercase()
                } else {
                    String::new()
                }))
            }
        }
        d.deserialize_str(V)
    }
}

struct EntriesSeed;

impl<'de> DeserializeSeed<'de> for EntriesSeed {
    type Value = Option<Vec<TocEntry>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed {
    type Value = Option<Vec<TocEntry>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of TOC entries or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(e) = seq.next_element_seed(EntrySeed)? {
            if out.len() >= MAX_TOC_ENTRIES {
                return Err(de::Error::custom(format!(
                    "more than {MAX_TOC_ENTRIES} entries"
                )));
            }
            out.push(e);
        }
        Ok(Some(out))
    }
}

struct EntrySeed;

impl<'de> DeserializeSeed<'de> for EntrySeed {
    type Value = TocEntry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TocEntry, D::Error> {
        d.deserialize_map(self)
    }
}

fn digest_field<E: de::Error>(s: Option<String>) -> Result<Option<Digest>, E> {
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e: Error| E::custom(e)),
    }
}

impl<'de> Visitor<'de> for EntrySeed {
    type Value = TocEntry;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOC entry object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TocEntry, A::Error> {
        let mut e = TocEntry::new("", EntryKind::Reg);
        let mut kind: Option<String> = None;
        while let Some(key) = map.next_key::<Key>()? {
            let int = |m: &mut A| m.next_value::<Option<i64>>().map(Option::unwrap_or_default);
            let string = |m: &mut A| {
                m.next_value::<Option<String>>()
                    .map(Option::unwrap_or_default)
            };
            match key.0.as_str() {
                "name" => e.name = string(&mut map)?,
                "type" => kind = Some(string(&mut map)?),
                "size" => e.size = int(&mut map)?,
                "modtime" => {
                    e.modtime = map
                        .next_value::<Option<String>>()?
                        .filter(|s| !s.is_empty())
                }
                "linkname" => e.link_name = string(&mut map)?,
                "mode" => e.mode = int(&mut map)?,
                "uid" => e.uid = int(&mut map)?,
                "gid" => e.gid = int(&mut map)?,
                "username" => e.user_name = string(&mut map)?,
                "groupname" => e.group_name = string(&mut map)?,
                "offset" => e.offset = int(&mut map)?,
                "inneroffset" => e.inner_offset = int(&mut map)?,
                "devmajor" => e.dev_major = int(&mut map)?,
                "devminor" => e.dev_minor = int(&mut map)?,
                "xattrs" => {
                    let raw = map.next_value::<Option<BTreeMap<String, Option<String>>>>()?;
                    let mut x = BTreeMap::new();
                    for (k, v) in raw.unwrap_or_default() {
                        let v = BASE64.decode(v.unwrap_or_default()).map_err(|err| {
                            de::Error::custom(format!("xattr {k:?}: invalid base64: {err}"))
                        })?;
                        x.insert(k, v);
                    }
                    e.xattrs = x;
                }
                "digest" => e.digest = digest_field(map.next_value()?)?,
                "chunkoffset" => e.chunk_offset = int(&mut map)?,
                "chunksize" => e.chunk_size = int(&mut map)?,
                "chunkdigest" => e.chunk_digest = digest_field(map.next_value()?)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let kind = kind.unwrap_or_default();
        e.kind = EntryKind::from_name(&kind).ok_or_else(|| {
            de::Error::custom(format!("entry {:?} has unknown type {kind:?}", e.name))
        })?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toc_matches_the_golden_vector() {
        let toc = Toc {
            version: 1,
            entries: None,
        };
        let json = toc.to_json();
        assert_eq!(json, b"{\n\t\"version\": 1,\n\t\"entries\": null\n}");
        assert_eq!(json.len(), 35);
        assert_eq!(
            Digest::sha256(&json).to_string(),
            "sha256:34389139a1c1b35477be831e2253885fa98a9fc3906b16880a391631786dd194"
        );
        assert_eq!(Toc::from_json(&json).unwrap(), toc);
    }

    #[test]
    fn empty_entries_array_stays_an_array() {
        let toc = Toc::from_json(br#"{"version":1,"entries":[]}"#).unwrap();
        assert_eq!(toc.entries, Some(vec![]));
        assert_eq!(toc.to_json(), b"{\n\t\"version\": 1,\n\t\"entries\": []\n}");
    }

    fn sample() -> Toc {
        let mut reg = TocEntry::new("foo/bar.txt", EntryKind::Reg);
        reg.size = 13;
        reg.modtime = format_modtime(1_614_834_367, 0);
        reg.mode = 0o644;
        reg.uid = 1000;
        reg.gid = 1000;
        reg.user_name = "u".into();
        reg.offset = 222;
        reg.xattrs.insert("user.foo".into(), b"bar".to_vec());
        reg.xattrs.insert("user.bin".into(), vec![0xff, 0xfe]);
        reg.digest = Some(Digest::sha256(b"Some contents"));
        reg.chunk_size = 4;
        reg.chunk_digest = Some(Digest::sha256(b"Some"));
        let mut chunk = TocEntry::new("foo/bar.txt", EntryKind::Chunk);
        chunk.offset = 255;
        chunk.chunk_offset = 4;
        chunk.chunk_digest = Some(Digest::sha256(b" contents"));
        let mut odd = TocEntry::new(
            "a&b<c>.txt\u{2028}\"\\\n\u{8}\u{c}\u{1}\u{7f}é\u{fffd}",
            EntryKind::Symlink,
        );
        odd.link_name = "../x".into();
        odd.mode = -1;
        let mut dev = TocEntry::new("dev/c", EntryKind::Char);
        dev.dev_major = 5;
        dev.dev_minor = 6;
        Toc {
            version: 1,
            entries: Some(vec![
                reg,
                chunk,
                odd,
                dev,
                TocEntry::new("d/", EntryKind::Dir),
            ]),
        }
    }

    #[test]
    fn serialisation_is_go_identical() {
        let json = String::from_utf8(sample().to_json()).unwrap();
        insta::assert_snapshot!(json);
    }

    #[test]
    fn json_round_trips() {
        let toc = sample();
        assert_eq!(Toc::from_json(&toc.to_json()).unwrap(), toc);
    }

    #[test]
    fn parser_is_tolerant() {
        let json = br#"{"Version": 1, "unknown": {"x": [1,2]}, "entries": [
            {"NAME": "a", "Type": "reg", "NumLink": 0, "endOffset": 9, "size": null, "xattrs": {"k": null},
             "digest": "", "modtime": "2021-03-04T06:06:07.5+01:00", "mode": 1, "mode": 2},
            {"type": "dir"}
        ]}"#;
        let toc = Toc::from_json(json).unwrap();
        let e = &toc.entries.as_ref().unwrap()[0];
        assert_eq!(toc.version, 1);
        assert_eq!(
            (e.name.as_str(), e.kind, e.size, e.mode),
            ("a", EntryKind::Reg, 0, 2)
        );
        assert_eq!(e.xattrs.get("k"), Some(&vec![]));
        assert_eq!(e.digest, None);
        assert_eq!(
            parse_modtime(e.modtime.as_deref().unwrap()),
            Some((1_614_834_367, 500_000_000))
        );
        assert_eq!(toc.entries.as_ref().unwrap()[1].name, "");
    }

    #[test]
    fn malformed_json_is_an_error() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"entries\": {}}",
            b"{\"entries\": [{\"type\": \"sock\"}]}",
            b"{\"entries\": [{\"type\": \"reg\", \"size\": 1.5}]}",
            b"{\"entries\": [{\"type\": \"reg\", \"digest\": \"md5:00\"}]}",
            b"{\"entries\": [{\"type\": \"reg\", \"xattrs\": {\"a\": \"!!\"}}]}",
            b"{\"version\": 1} trailing",
        ] {
            assert!(
                Toc::from_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn modtime_formatting_rounds_like_go() {
        let cases = [
            (0, 999_999_999, None),
            (-1, 0, Some("1969-12-31T23:59:59Z")),
            (1_614_834_367, 499_999_999, Some("2021-03-04T05:06:07Z")),
            (1_614_834_367, 500_000_000, Some("2021-03-04T05:06:08Z")),
            (951_782_400, 0, Some("2000-02-29T00:00:00Z")),
        ];
        for (s, n, want) in cases {
            assert_eq!(format_modtime(s, n).as_deref(), want, "{s}.{n}");
            if let Some(w) = want {
                assert_eq!(
                    parse_modtime(w).map(|t| t.0),
                    Some(s + i64::from(n >= 500_000_000))
                );
            }
        }
        for bad in [
            "",
            "2021-02-30T00:00:00Z",
            "2021-03-04 05:06:07Z",
            "2021-03-04T05:06:07",
            "2021-03-04T05:06:07.Z",
        ] {
            assert_eq!(parse_modtime(bad), None, "{bad}");
        }
    }

    #[test]
    fn lossy_utf8_replaces_each_invalid_byte() {
        assert_eq!(
            go_lossy_utf8(b"a\xe2\x82b\xff"),
            "a\u{fffd}\u{fffd}b\u{fffd}"
        );
        assert_eq!(go_lossy_utf8("é".as_bytes()), "é");
    }
}

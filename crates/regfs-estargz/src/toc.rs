//! The TOC (`stargz.index.json`): entry kinds and fields as the reference writes them.
//!
//! Field order in [`TocEntry`] is the JSON emission order of the reference (spec §2.2). The
//! Go-identical serialiser and the tolerant parser live in this module too.

use std::collections::BTreeMap;

use crate::Digest;

/// The kind of a TOC entry (spec §2.2, `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
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
    pub kind: EntryKind,
    /// Logical file size (`reg`).
    pub size: i64,
    /// RFC 3339 modification time as stored (`None` when absent).
    pub modtime: Option<String>,
    pub link_name: String,
    /// Raw tar mode value (may carry `S_IF*` bits).
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub user_name: String,
    pub group_name: String,
    /// Compressed blob offset of the member holding the payload (0 = absent).
    pub offset: i64,
    /// Uncompressed offset of the payload inside that member (packed members only).
    pub inner_offset: i64,
    pub dev_major: i64,
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
    pub version: i64,
    /// `None` serialises as `null` (what Go writes for an empty layer).
    pub entries: Option<Vec<TocEntry>>,
}

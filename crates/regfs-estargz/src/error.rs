//! The error enum of the format crate.

use crate::Digest;

/// Everything that can go wrong reading or writing eStargz.
///
/// Messages name the offset, entry or digest involved; callers add the layer and file context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A digest string that is not `sha256:<64 hex>`.
    #[error("invalid digest {0:?}: want sha256:<64 hex digits>")]
    BadDigest(String),

    /// A recognised variant of the format that this crate does not read (yet).
    #[error("unsupported blob: {0}")]
    Unsupported(String),

    /// The blob tail is not an eStargz or legacy stargz footer.
    #[error("invalid footer: {0}")]
    BadFooter(String),

    /// The footer points the TOC outside the blob.
    #[error(
        "toc offset {toc_offset} is outside the blob of {blob_size} bytes (footer {footer_size} bytes)"
    )]
    TocOffsetOutOfRange {
        /// The TOC offset the footer names.
        toc_offset: u64,
        /// Size of the whole blob.
        blob_size: u64,
        /// Size of the footer found (eStargz or legacy).
        footer_size: usize,
    },

    /// The first tar entry of the TOC member is not `stargz.index.json`.
    #[error("toc member's first tar entry is {0:?}, want \"stargz.index.json\"")]
    TocName(String),

    /// The TOC (uncompressed JSON) exceeds [`crate::MAX_TOC_SIZE`].
    #[error("toc json of {size} bytes exceeds the limit of {max} bytes")]
    TocTooLarge {
        /// Size of the TOC JSON (announced by its tar header or counted while inflating).
        size: u64,
        /// The limit it exceeds.
        max: u64,
    },

    /// The TOC lists more entries than [`crate::MAX_TOC_ENTRIES`].
    #[error("toc has more than {max} entries")]
    TooManyEntries {
        /// The limit exceeded.
        max: usize,
    },

    /// The TOC JSON does not parse.
    #[error("invalid toc json: {0}")]
    TocJson(String),

    /// The TOC parses but an entry is unusable (negative size, overlapping chunks, ...).
    #[error("invalid toc entry {name:?}: {reason}")]
    InvalidEntry {
        /// The entry's name as written in the TOC.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A hardlink whose target is not in the TOC (or a hardlink cycle).
    #[error("{name:?} is a hardlink but the linkname {link_name:?} isn't found")]
    HardlinkTargetMissing {
        /// The hardlink's name.
        name: String,
        /// The target it names, which no earlier entry has.
        link_name: String,
    },

    /// A gzip member that does not decode.
    #[error("invalid gzip member at blob offset {offset}: {reason}")]
    Gzip {
        /// Blob offset of the member.
        offset: u64,
        /// What the decoder or the bounds check rejected.
        reason: String,
    },

    /// The TOC JSON digest differs from the expected one (the manifest annotation).
    #[error("invalid toc json digest {got}; want {want}")]
    TocDigestMismatch {
        /// The digest expected (from the manifest annotation).
        want: Digest,
        /// The digest of the TOC JSON actually read.
        got: Digest,
    },

    /// A chunk's uncompressed bytes do not hash to its TOC digest.
    #[error(
        "chunk at file offset {chunk_offset} (member at blob offset {offset}) has digest {got}; want {want}"
    )]
    ChunkDigestMismatch {
        /// Blob offset of the member holding the chunk.
        offset: u64,
        /// Offset of the chunk inside its file.
        chunk_offset: u64,
        /// The digest the TOC records for the chunk.
        want: Digest,
        /// The digest of the bytes decoded.
        got: Digest,
    },

    /// A chunk without `chunkDigest` (and no whole-file `digest` to fall back on).
    #[error("chunk at file offset {chunk_offset} (member at blob offset {offset}) has no digest")]
    MissingChunkDigest {
        /// Blob offset of the member holding the chunk.
        offset: u64,
        /// Offset of the chunk inside its file.
        chunk_offset: u64,
    },

    /// An input tar entry the converter cannot represent or parse.
    #[error("tar entry {entry:?} at input offset {offset}: {reason}")]
    Tar {
        /// The entry's name as far as it could be read.
        entry: String,
        /// Offset of the entry's header in the input tar.
        offset: u64,
        /// What could not be represented or parsed.
        reason: String,
    },

    /// The random-access source failed.
    #[error("reading {len} bytes at blob offset {offset}: {source}")]
    Read {
        /// Blob offset of the read.
        offset: u64,
        /// Number of bytes asked for.
        len: u64,
        /// The source's error.
        source: std::io::Error,
    },

    /// Writing the converted blob failed.
    #[error("writing the converted blob: {0}")]
    Write(std::io::Error),

    /// Invalid converter options.
    #[error("invalid conversion options: {0}")]
    Options(String),

    /// Decompressing the converter input failed.
    #[error("decompressing the input layer: {0}")]
    Input(std::io::Error),
}

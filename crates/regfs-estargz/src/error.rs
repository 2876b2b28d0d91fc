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
        toc_offset: u64,
        blob_size: u64,
        footer_size: usize,
    },

    /// The first tar entry of the TOC member is not `stargz.index.json`.
    #[error("toc member's first tar entry is {0:?}, want \"stargz.index.json\"")]
    TocName(String),

    /// The TOC (uncompressed JSON) exceeds [`crate::MAX_TOC_SIZE`].
    #[error("toc json of {size} bytes exceeds the limit of {max} bytes")]
    TocTooLarge { size: u64, max: u64 },

    /// The TOC lists more entries than [`crate::MAX_TOC_ENTRIES`].
    #[error("toc has more than {max} entries")]
    TooManyEntries { max: usize },

    /// The TOC JSON does not parse.
    #[error("invalid toc json: {0}")]
    TocJson(String),

    /// The TOC parses but an entry is unusable (negative size, overlapping chunks, ...).
    #[error("invalid toc entry {name:?}: {reason}")]
    InvalidEntry { name: String, reason: String },

    /// A hardlink whose target is not in the TOC (or a hardlink cycle).
    #[error("{name:?} is a hardlink but the linkname {link_name:?} isn't found")]
    HardlinkTargetMissing { name: String, link_name: String },

    /// A gzip member that does not decode.
    #[error("invalid gzip member at blob offset {offset}: {reason}")]
    Gzip { offset: u64, reason: String },

    /// The TOC JSON digest differs from the expected one (the manifest annotation).
    #[error("invalid toc json digest {got}; want {want}")]
    TocDigestMismatch { want: Digest, got: Digest },

    /// A chunk's uncompressed bytes do not hash to its TOC digest.
    #[error(
        "chunk at file offset {chunk_offset} (member at blob offset {offset}) has digest {got}; want {want}"
    )]
    ChunkDigestMismatch {
        offset: u64,
        chunk_offset: u64,
        want: Digest,
        got: Digest,
    },

    /// A chunk without `chunkDigest` (and no whole-file `digest` to fall back on).
    #[error("chunk at file offset {chunk_offset} (member at blob offset {offset}) has no digest")]
    MissingChunkDigest { offset: u64, chunk_offset: u64 },

    /// An input tar entry the converter cannot represent or parse.
    #[error("tar entry {entry:?} at input offset {offset}: {reason}")]
    Tar {
        entry: String,
        offset: u64,
        reason: String,
    },

    /// The random-access source failed.
    #[error("reading {len} bytes at blob offset {offset}: {source}")]
    Read {
        offset: u64,
        len: u64,
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

//! The error enum of the blob crate.
//!
//! Errors are `Clone` because one failed fetch is reported to every reader waiting on it
//! (single-flight); non-`Clone` causes are shared behind an `Arc`.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use regfs_estargz::Digest;

/// Everything that can go wrong reading blobs and chunks.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The source has no blob with this digest.
    #[error("blob {blob} not found in {source_name}")]
    BlobNotFound {
        /// Digest of the blob read.
        blob: Digest,
        /// Which kind of source was asked (`memory`, `file`, `oci-layout`, `registry`).
        source_name: &'static str,
    },

    /// A local file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`open`, `rename`, ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error, shared by every waiter.
        source: Arc<std::io::Error>,
    },

    /// A range that does not fit inside the blob, or is larger than we are willing to buffer.
    #[error("range {}..{} of blob {blob} is invalid: {reason}", range.start, range.end)]
    BadRange {
        /// Digest of the blob read.
        blob: Digest,
        /// The byte range asked for.
        range: Range<u64>,
        /// Why it is refused.
        reason: &'static str,
    },

    /// The source returned a different number of bytes than requested.
    #[error("short read of blob {blob} range {}..{}: got {got} bytes", range.start, range.end)]
    ShortRead {
        /// Digest of the blob read.
        blob: Digest,
        /// The byte range asked for.
        range: Range<u64>,
        /// Number of bytes the source returned.
        got: u64,
    },

    /// The source answered with a different number of ranges than requested.
    #[error("blob {blob}: asked for {asked} ranges, source returned {got}")]
    RangeCount {
        /// Digest of the blob read.
        blob: Digest,
        /// Number of ranges requested.
        asked: usize,
        /// Number of ranges returned.
        got: usize,
    },

    /// A chunk description that cannot be right for this layer (hostile or corrupt TOC).
    #[error("chunk at offset {offset} of layer {layer} is invalid: {reason}")]
    BadChunk {
        /// Digest of the layer blob the chunk belongs to.
        layer: Digest,
        /// Blob offset of the chunk's compressed member.
        offset: u64,
        /// What makes it impossible.
        reason: &'static str,
    },

    /// A chunk without a digest in a layer that must be verified.
    #[error(
        "chunk at offset {offset} of layer {layer} has no digest and the layer is not marked unverified"
    )]
    MissingDigest {
        /// Digest of the layer blob the chunk belongs to.
        layer: Digest,
        /// Blob offset of the chunk's compressed member.
        offset: u64,
    },

    /// The fetched bytes did not decompress to the chunk the TOC promised.
    #[error("chunk at offset {offset} of layer {layer} failed verification: {detail}")]
    Verification {
        /// Digest of the layer blob the chunk belongs to.
        layer: Digest,
        /// Blob offset of the chunk's compressed member.
        offset: u64,
        /// What did not match: the decoder's error, the length, or the digest.
        detail: String,
    },

    /// A remote source (the registry client) failed.
    #[error("{source_name} read of blob {blob}: {source}")]
    Source {
        /// Digest of the blob read.
        blob: Digest,
        /// Which kind of source failed (`registry`).
        source_name: &'static str,
        /// The source's own error (for the registry: a `regfs_registry::Error`).
        source: Arc<dyn std::error::Error + Send + Sync>,
    },

    /// A fault injected by [`FaultySource`](crate::FaultySource).
    #[error("injected fault reading blob {blob}: {what}")]
    Injected {
        /// Digest of the blob read.
        blob: Digest,
        /// Which fault was injected.
        what: String,
    },

    /// The task fetching a chunk went away without an answer (runtime shutting down).
    #[error("fetch of chunk at offset {offset} of layer {layer} was abandoned")]
    Abandoned {
        /// Digest of the layer blob the chunk belongs to.
        layer: Digest,
        /// Blob offset of the chunk's compressed member.
        offset: u64,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

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
        blob: Digest,
        source_name: &'static str,
    },

    /// A local file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: Arc<std::io::Error>,
    },

    /// A range that does not fit inside the blob, or is larger than we are willing to buffer.
    #[error("range {}..{} of blob {blob} is invalid: {reason}", range.start, range.end)]
    BadRange {
        blob: Digest,
        range: Range<u64>,
        reason: &'static str,
    },

    /// The source returned a different number of bytes than requested.
    #[error("short read of blob {blob} range {}..{}: got {got} bytes", range.start, range.end)]
    ShortRead {
        blob: Digest,
        range: Range<u64>,
        got: u64,
    },

    /// The source answered with a different number of ranges than requested.
    #[error("blob {blob}: asked for {asked} ranges, source returned {got}")]
    RangeCount {
        blob: Digest,
        asked: usize,
        got: usize,
    },

    /// A chunk description that cannot be right for this layer (hostile or corrupt TOC).
    #[error("chunk at offset {offset} of layer {layer} is invalid: {reason}")]
    BadChunk {
        layer: Digest,
        offset: u64,
        reason: &'static str,
    },

    /// A chunk without a digest in a layer that must be verified.
    #[error(
        "chunk at offset {offset} of layer {layer} has no digest and the layer is not marked unverified"
    )]
    MissingDigest { layer: Digest, offset: u64 },

    /// The fetched bytes did not decompress to the chunk the TOC promised.
    #[error("chunk at offset {offset} of layer {layer} failed verification: {detail}")]
    Verification {
        layer: Digest,
        offset: u64,
        detail: String,
    },

    /// A remote source (the registry client) failed.
    #[error("{source_name} read of blob {blob}: {source}")]
    Source {
        blob: Digest,
        source_name: &'static str,
        source: Arc<dyn std::error::Error + Send + Sync>,
    },

    /// A fault injected by [`FaultySource`](crate::FaultySource).
    #[error("injected fault reading blob {blob}: {what}")]
    Injected { blob: Digest, what: String },

    /// The task fetching a chunk went away without an answer (runtime shutting down).
    #[error("fetch of chunk at offset {offset} of layer {layer} was abandoned")]
    Abandoned { layer: Digest, offset: u64 },
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

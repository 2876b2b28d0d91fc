//! The error enum of the filesystem crate and its one mapping to errno.

use std::path::PathBuf;
use std::sync::Arc;

use regfs_estargz::Digest;

use crate::Ino;

/// Everything that can go wrong building or reading an [`ImageFs`](crate::ImageFs).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No entry `name` in directory `parent`.
    #[error("no entry {name:?} in directory inode {parent}")]
    NotFound {
        /// The directory searched.
        parent: Ino,
        /// The name looked up.
        name: String,
    },

    /// An inode number this filesystem never handed out.
    #[error("no inode {0}")]
    BadInode(Ino),

    /// A directory operation on something that is not a directory.
    #[error("inode {0} is not a directory")]
    NotADirectory(Ino),

    /// A file operation (open, read) on a directory.
    #[error("inode {0} is a directory")]
    IsADirectory(Ino),

    /// `readlink` of something that is not a symlink.
    #[error("inode {0} is not a symlink")]
    NotASymlink(Ino),

    /// A read of something that is neither a regular file nor a directory (device, fifo).
    #[error("inode {0} has no readable content")]
    NotReadable(Ino),

    /// `getxattr` of an attribute the inode does not have.
    #[error("inode {ino} has no extended attribute {name:?}")]
    NoXattr {
        /// The inode asked.
        ino: Ino,
        /// The attribute name asked for.
        name: String,
    },

    /// The layer's TOC cannot be indexed (spec §2.7 failures such as a dangling hardlink).
    #[error("layer {layer}: cannot index its TOC: {source}")]
    Index {
        /// Digest of the layer concerned.
        layer: Digest,
        /// The format crate's reason.
        source: Arc<regfs_estargz::Error>,
    },

    /// The image is larger than the inode table's fixed-width fields can address.
    #[error("image too large: {what} exceeds {limit}")]
    TooLarge {
        /// Which count overflowed (inodes, names, chunks, ...).
        what: &'static str,
        /// The largest value the table can hold.
        limit: u64,
    },

    /// More layers than the inode table can name.
    #[error("image has {0} layers, at most {max} are supported", max = crate::inode::MAX_LAYERS)]
    TooManyLayers(usize),

    /// A TOC chunk that cannot describe the file it belongs to.
    #[error(
        "layer {layer}: file {path:?} has an invalid chunk at file offset {chunk_offset}: {reason}"
    )]
    BadChunk {
        /// Digest of the layer concerned.
        layer: Digest,
        /// The file's path in the image.
        path: String,
        /// Offset of the chunk inside the file.
        chunk_offset: u64,
        /// What makes the chunk impossible.
        reason: &'static str,
    },

    /// Fetching or verifying chunk bytes failed.
    #[error("layer {layer}: reading {path:?} at chunk offset {chunk_offset}: {source}")]
    Blob {
        /// Digest of the layer concerned.
        layer: Digest,
        /// The file's path in the image.
        path: String,
        /// Offset of the chunk inside the file.
        chunk_offset: u64,
        /// Boxed: the cache's error is large and this one travels through every `Result`.
        source: Box<regfs_blob::Error>,
    },

    /// The FUSE session could not be set up or torn down.
    #[error("{op} {path}: {source}")]
    Mount {
        /// What was being done (`mounting`, `unmounting`, ...).
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The operating system's error.
        source: Arc<std::io::Error>,
    },

    /// Mounting needs a tokio runtime to run reads on.
    #[error("mounting {0} needs a tokio runtime: call it from inside one or pass a handle")]
    NoRuntime(PathBuf),
}

impl Error {
    /// The errno a FUSE reply carries for this error.
    ///
    /// One exhaustive match: a new variant does not compile until it has an errno.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound { .. } => libc::ENOENT,
            Error::BadInode(_) => libc::ENOENT,
            Error::NotADirectory(_) => libc::ENOTDIR,
            Error::IsADirectory(_) => libc::EISDIR,
            Error::NotASymlink(_) => libc::EINVAL,
            Error::NotReadable(_) => libc::EINVAL,
            Error::NoXattr { .. } => libc::ENODATA,
            Error::Index { .. } => libc::EIO,
            Error::TooLarge { .. } => libc::EFBIG,
            Error::TooManyLayers(_) => libc::EINVAL,
            Error::BadChunk { .. } => libc::EIO,
            Error::Blob { .. } => libc::EIO,
            Error::Mount { .. } => libc::EIO,
            Error::NoRuntime(_) => libc::EIO,
        }
    }

    pub(crate) fn mount(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Mount {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

//! regfs-blob

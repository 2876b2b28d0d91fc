//! regfs-fs

//! regfs-registry

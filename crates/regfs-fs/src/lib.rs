//! The read-only filesystem of an image: the merged tree of its layers' TOCs, with file content
//! read lazily through the verified chunk cache.
//!
//! Principal types:
//! - [`ImageFs`]: the filesystem as a plain API (`lookup`, `getattr`, `readdir`, `readlink`,
//!   `getxattr`, `open`, async `read`, `statfs`), built once from [`FsLayer`]s; tests drive it
//!   without FUSE. [`ImageFs::single_layer`] shows one layer the way overlayfs expects a lower
//!   directory (whiteouts as 0/0 devices, opaque directories by xattr).
//! - [`Ino`], [`Attr`], [`FileKind`], [`DirEntry`]: what the API answers.
//! - [`mount`] / [`MountGuard`]: the thin `fuser` adapter; dropping the guard unmounts.
//! - [`handover`]: FUSE connections that outlive their server (a keeper process holds the
//!   device; a restarted server takes over and gets the unanswered requests again).
//! - [`FsStats`]: per-layer fetch and cache counters for `regfs stats`.
//! - [`Error`]: one enum; [`Error::errno`] is the single mapping to errno.
//!
//! The crate knows nothing of HTTP: bytes come from `regfs_blob::LayerHandle`, whatever its
//! source.
//!
//! ```no_run
//! # async fn demo(layers: Vec<regfs_fs::FsLayer>) -> Result<(), regfs_fs::Error> {
//! use std::ffi::OsStr;
//! use std::sync::Arc;
//! use regfs_fs::{FsOptions, ImageFs, Ino, MountOptions};
//!
//! let fs = Arc::new(ImageFs::new(layers, FsOptions::default())?);
//! let etc = fs.lookup(Ino::ROOT, OsStr::new("etc"))?;
//! let passwd = fs.lookup(etc.ino, OsStr::new("passwd"))?;
//! let head = fs.read(passwd.ino, 0, 4096).await?;
//! println!("{} bytes of /etc/passwd", head.len());
//!
//! let guard = regfs_fs::mount(fs, "/mnt/image".as_ref(), MountOptions::default())?;
//! guard.unmount()?;
//! # Ok(()) }
//! ```
//!
//! Inside: the inode table layout is drawn in the `inode` module docs, the overlay merge is
//! explained in `build`, the life of a `read()` in `read`, and the kernel settings in `fuse`.

mod access;
mod build;
mod error;
mod fuse;
pub mod handover;
mod image;
mod inode;
mod read;
mod stats;

pub use error::Error;
pub use fuse::{MountGuard, MountOptions, Unmount, is_mounted, mount, unmount};
pub use image::{FsLayer, FsOptions, ImageFs, OpenFile, StatFs};
pub use inode::{Attr, DirEntry, FileKind, Ino, MAX_LAYERS};
pub use read::{MAX_READ, SMALL_FILE};
pub use stats::{FsStats, LayerStats};

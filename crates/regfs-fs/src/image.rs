//! [`ImageFs`]: the plain filesystem API over the inode table, driven directly by tests and by
//! the FUSE adapter.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use regfs_blob::{ChunkCache, LayerHandle};
use regfs_estargz::{Digest, TocIndex};

use crate::Error;
use crate::access::AccessLog;
use crate::build::{self, View};
use crate::inode::{Attr, DirEntry, FileKind, Ino, Inode, InodeTable};
use crate::stats::{FsStats, LayerCounters};

/// One layer of an image, as the filesystem needs it.
pub struct FsLayer {
    /// The layer (compressed blob) digest.
    pub digest: Digest,
    /// The layer's TOC, indexed. Dropped after the inode table is built.
    pub index: TocIndex,
    /// Verified chunk reads of this layer.
    pub handle: LayerHandle,
}

impl FsLayer {
    /// Indexes `toc` (spec §2.7) for a blob of `blob_size` bytes.
    pub fn from_toc(
        digest: Digest,
        toc: &regfs_estargz::Toc,
        blob_size: u64,
        handle: LayerHandle,
    ) -> Result<FsLayer, Error> {
        let index = TocIndex::new(toc, blob_size).map_err(|e| Error::Index {
            layer: digest,
            source: Arc::new(e),
        })?;
        Ok(FsLayer {
            digest,
            index,
            handle,
        })
    }
}

/// Options of an [`ImageFs`].
#[derive(Clone, Default)]
pub struct FsOptions {
    /// Record the path and layer of every file on first open or read
    /// ([`ImageFs::take_access_log`]).
    pub record_access: bool,
    /// The cache the layer handles read through; lets the FUSE adapter pass fully cached
    /// single-chunk files to the kernel (`FUSE_PASSTHROUGH`). `None` disables passthrough.
    pub cache: Option<Arc<ChunkCache>>,
}

/// What `statfs(2)` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Size in `block_size` units: each regular file rounded up, one block for every other inode
    /// (nothing is free: read-only).
    pub blocks: u64,
    /// Number of inodes in the image.
    pub files: u64,
    /// Block size the counts are in, in bytes.
    pub block_size: u32,
    /// Longest file name, in bytes.
    pub name_max: u32,
}

/// An open regular file. Reads are stateless, so the handle is just the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// The opened regular file.
    pub ino: Ino,
}

pub(crate) struct Layer {
    pub digest: Digest,
    pub handle: LayerHandle,
    pub counters: LayerCounters,
}

/// A read-only filesystem over the layers of one image; see the crate docs.
pub struct ImageFs {
    pub(crate) table: InodeTable,
    pub(crate) layers: Vec<Layer>,
    pub(crate) access: Option<AccessLog>,
    pub(crate) options: FsOptions,
}

impl ImageFs {
    /// The merged view of `layers` (bottom first), with whiteouts applied.
    pub fn new(layers: Vec<FsLayer>, options: FsOptions) -> Result<ImageFs, Error> {
        ImageFs::build(layers, options, View::Merged)
    }

    /// One layer on its own, whiteouts shown as overlayfs expects them in a lower directory:
    /// `.wh.NAME` as a character device 0/0 named NAME, and `.wh..wh..opq` as the xattr
    /// `trusted.overlay.opaque=y` on its directory.
    pub fn single_layer(layer: FsLayer, options: FsOptions) -> Result<ImageFs, Error> {
        ImageFs::build(vec![layer], options, View::SingleLayer)
    }

    fn build(layers: Vec<FsLayer>, options: FsOptions, view: View) -> Result<ImageFs, Error> {
        let table = {
            let refs: Vec<(&Digest, &TocIndex)> =
                layers.iter().map(|l| (&l.digest, &l.index)).collect();
            build::build(&refs, view)?
        };
        // The indexes go out of scope here; only the compact table stays.
        let layers = layers
            .into_iter()
            .map(|l| Layer {
                digest: l.digest,
                handle: l.handle,
                counters: LayerCounters::default(),
            })
            .collect();
        let access = options
            .record_access
            .then(|| AccessLog::new(table.inodes.len()));
        Ok(ImageFs {
            table,
            layers,
            access,
            options,
        })
    }

    pub(crate) fn inode(&self, ino: Ino) -> Result<&Inode, Error> {
        self.table.inode(ino).ok_or(Error::BadInode(ino))
    }

    fn dir(&self, ino: Ino) -> Result<&Inode, Error> {
        let inode = self.inode(ino)?;
        if inode.kind() != FileKind::Dir {
            return Err(Error::NotADirectory(ino));
        }
        Ok(inode)
    }

    /// The attributes of `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, Error> {
        let dir = self.dir(parent)?;
        let index = match name.as_bytes() {
            b"." => parent.index(),
            b".." => Some(dir.parent),
            bytes => self.table.lookup(dir, bytes),
        }
        .ok_or_else(|| Error::NotFound {
            parent,
            name: name.to_string_lossy().into_owned(),
        })?;
        self.getattr(Ino::from_index(index))
    }

    /// The attributes of an inode.
    pub fn getattr(&self, ino: Ino) -> Result<Attr, Error> {
        let inode = self.inode(ino)?;
        // ino is valid, so index() is Some.
        Ok(self.table.attr(ino.index().unwrap_or(0), inode))
    }

    /// The entries of a directory in name order, without `.` and `..`.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>, Error> {
        let dir = self.dir(ino)?;
        Ok(self
            .table
            .children(dir)
            .iter()
            .map(|d| DirEntry {
                ino: Ino::from_index(d.ino),
                kind: self.table.inodes[d.ino as usize].kind(),
                name: OsStr::from_bytes(self.table.name_of(d)).to_owned(),
            })
            .collect())
    }

    /// The parent of a directory (the root is its own parent).
    pub fn parent(&self, ino: Ino) -> Result<Ino, Error> {
        Ok(Ino::from_index(self.dir(ino)?.parent))
    }

    /// Number of entries of a directory, without `.` and `..`.
    pub fn dir_len(&self, ino: Ino) -> Result<usize, Error> {
        Ok(self.dir(ino)?.data_len as usize)
    }

    /// Entry `i` of a directory (in name order), for paged listings.
    pub fn dir_entry(&self, ino: Ino, i: usize) -> Result<Option<(Attr, &OsStr)>, Error> {
        let dir = self.dir(ino)?;
        Ok(self.table.children(dir).get(i).map(|d| {
            let child = &self.table.inodes[d.ino as usize];
            (
                self.table.attr(d.ino, child),
                OsStr::from_bytes(self.table.name_of(d)),
            )
        }))
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<&OsStr, Error> {
        let inode = self.inode(ino)?;
        if inode.kind() != FileKind::Symlink {
            return Err(Error::NotASymlink(ino));
        }
        Ok(OsStr::from_bytes(self.table.link_target(inode)))
    }

    /// The value of one extended attribute.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<&[u8], Error> {
        let no = || Error::NoXattr {
            ino,
            name: name.to_string_lossy().into_owned(),
        };
        self.inode(ino)?;
        let index = ino.index().ok_or_else(no)?;
        self.table
            .xattrs_of(index)
            .iter()
            .find(|(k, _)| k.as_bytes() == name.as_bytes())
            .map(|(_, v)| &v[..])
            .ok_or_else(no)
    }

    /// The names of an inode's extended attributes, sorted.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<&OsStr>, Error> {
        self.inode(ino)?;
        let index = ino.index().unwrap_or(0);
        Ok(self
            .table
            .xattrs_of(index)
            .iter()
            .map(|(k, _)| OsStr::new(&**k))
            .collect())
    }

    /// Filesystem totals, as `df` shows them.
    pub fn statfs(&self) -> StatFs {
        let block = u64::from(BLOCK_SIZE);
        // A regular file takes its size rounded up to blocks; every other inode (directory,
        // link, whiteout, device) one block, as on a disk filesystem. So even a layer of only
        // directories and whiteouts has a non-zero capacity (kubelet and cAdvisor warn on 0).
        let blocks: u64 = self
            .table
            .inodes
            .iter()
            .map(|i| match i.kind() {
                FileKind::Reg => i.size.div_ceil(block),
                _ => 1,
            })
            .fold(0, u64::saturating_add);
        StatFs {
            blocks,
            files: self.table.inodes.len() as u64,
            block_size: BLOCK_SIZE,
            name_max: crate::inode::NAME_MAX as u32,
        }
    }

    /// Opens a regular file for reading; records the access when recording is on.
    pub fn open(&self, ino: Ino) -> Result<OpenFile, Error> {
        let inode = self.inode(ino)?;
        match inode.kind() {
            FileKind::Reg => {}
            FileKind::Dir => return Err(Error::IsADirectory(ino)),
            _ => return Err(Error::NotReadable(ino)),
        }
        self.record_access(ino);
        Ok(OpenFile { ino })
    }

    /// The path of an inode from the root (its first name, if it has several).
    pub fn path(&self, ino: Ino) -> Result<String, Error> {
        self.inode(ino)?;
        Ok(self.table.path_of(ino.index().unwrap_or(0)))
    }

    /// The digest of the layer an inode comes from (the topmost for merged directories).
    pub fn layer_of(&self, ino: Ino) -> Result<Digest, Error> {
        let inode = self.inode(ino)?;
        Ok(self.layers[usize::from(inode.layer)].digest)
    }

    /// A local file holding exactly the content of `ino`, if there is one: the file is a single
    /// chunk and that chunk is in the store. What FUSE passthrough hands to the kernel.
    pub fn passthrough_path(&self, ino: Ino) -> Option<PathBuf> {
        let cache = self.options.cache.as_ref()?;
        let inode = self.table.inode(ino)?;
        if inode.kind() != FileKind::Reg {
            return None;
        }
        let [chunk] = self.table.chunks_of(inode) else {
            return None;
        };
        let chunk = chunk.unpack();
        if chunk.chunk_offset != 0 || chunk.chunk_size != inode.size {
            return None;
        }
        cache.store().path_of(&chunk.digest?)
    }

    /// The access log so far, in first-access order, and starts a new one. Empty when
    /// recording is off.
    pub fn take_access_log(&self) -> Vec<(String, Digest)> {
        self.access
            .as_ref()
            .map(AccessLog::take)
            .unwrap_or_default()
    }

    pub(crate) fn record_access(&self, ino: Ino) {
        let (Some(log), Some(index)) = (&self.access, ino.index()) else {
            return;
        };
        if log.first_touch(index) {
            let layer = self.layers[usize::from(self.table.inodes[index as usize].layer)].digest;
            log.push(self.table.path_of(index), layer);
        }
    }

    /// Bytes of memory held by the inode table (names, inodes, chunks, side tables).
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes() + self.access.as_ref().map_or(0, AccessLog::memory_bytes)
    }

    /// Number of inodes (the root included).
    pub fn inode_count(&self) -> usize {
        self.table.inodes.len()
    }

    /// Per-layer fetch and cache statistics.
    pub fn stats(&self) -> FsStats {
        crate::stats::collect(self)
    }
}

/// The block size reported by `stat` and `statfs`, as the reference does.
pub(crate) const BLOCK_SIZE: u32 = 4096;

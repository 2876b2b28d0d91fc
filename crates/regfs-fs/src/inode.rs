//! The inode table: the whole merged tree of an image, flattened once at mount time.
//!
//! An image never changes while mounted, so every inode, directory entry and chunk is computed
//! up front and stored in a handful of flat vectors indexed by `u32`. Nothing is allocated per
//! entry after the build, lookups are binary searches, and the per-layer `TocIndex` (hundreds of
//! bytes per entry) is dropped once the table is built.
//!
//! ```text
//! InodeTable
//! ├── inodes:  Vec<Inode>        52 bytes each; index i is inode number i + 1 (FUSE root = 1)
//! │     .parent ──────────────▶  index of the parent directory (the root is its own parent)
//! │     .dirent ──────────────▶  dirents[..] naming this inode first (for paths in logs)
//! │     .data, .data_len         meaning depends on the kind:
//! │        dir      ──────────▶  dirents[data .. data + data_len], sorted by name
//! │        reg      ──────────▶  chunks[data .. data + data_len], sorted by file offset
//! │        symlink  ──────────▶  arena[data .. data + data_len], the link target
//! │        char/blk              data = major, data_len = minor
//! ├── dirents: Vec<Dirent>       8 bytes: name (arena offset of length byte + name) → inode;
//! │                              hardlinks are several dirents naming one inode
//! ├── arena:   Vec<u8>           every name and link target, back to back
//! ├── chunks:  Vec<StoredChunk>  60 bytes per chunk: where the bytes are, and their digest
//! └── xattrs:  Vec<(u32, Box<[Xattr]>)>
//!                                sorted by inode index; rare, so a binary search per call
//! ```
//!
//! A regular file of one chunk thus costs 52 (inode) + 8 (dirent) + 1 + its name + 60 (chunk)
//! bytes; the `memory` test prints the measured figure for a one-million-entry image.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regfs_blob::Chunk;
use regfs_estargz::Digest;
use serde::Serialize;

/// Layers are numbered with a `u16` in every inode; OCI images stop at 127 layers in practice
/// (overlayfs' lowerdir limit), so this is far beyond any real image.
pub const MAX_LAYERS: usize = u16::MAX as usize;

/// Names and link targets share one arena addressed by `u32`: 4 GiB of names is far beyond any
/// image we could hold in memory anyway.
const MAX_ARENA: u64 = u32::MAX as u64;

/// Linux' `NAME_MAX`: longer components cannot be looked up through the VFS at all.
pub(crate) const NAME_MAX: usize = 255;

/// A FUSE inode number. The root directory is [`Ino::ROOT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory (FUSE fixes it at 1).
    pub const ROOT: Ino = Ino(1);

    pub(crate) fn from_index(index: u32) -> Ino {
        Ino(u64::from(index) + 1)
    }

    pub(crate) fn index(self) -> Option<u32> {
        self.0.checked_sub(1).and_then(|i| u32::try_from(i).ok())
    }
}

impl std::fmt::Display for Ino {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The kind of a file in the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file (hardlinks are regular files sharing an inode).
    Reg,
    /// A symbolic link.
    Symlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Reg => libc::S_IFREG,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Char => libc::S_IFCHR,
            FileKind::Block => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
        }
    }

    fn from_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::Char,
            libc::S_IFBLK => FileKind::Block,
            libc::S_IFIFO => FileKind::Fifo,
            _ => FileKind::Reg,
        }
    }
}

/// The attributes of one inode, as `stat(2)` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// The inode these attributes belong to.
    pub ino: Ino,
    /// File type (the `S_IFMT` part of `st_mode`).
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub perm: u16,
    /// File size; for a symlink the length of its target.
    pub size: u64,
    /// Hard link count (for a directory: 2 plus its subdirectories).
    pub nlink: u32,
    /// Owner user id, as recorded in the layer.
    pub uid: u32,
    /// Owner group id, as recorded in the layer.
    pub gid: u32,
    /// `makedev(major, minor)` for devices, else 0.
    pub rdev: u64,
    /// Modification time; also reported as atime and ctime.
    pub mtime: SystemTime,
}

impl Attr {
    /// 512-byte blocks, as `stat` reports them.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The inode the name refers to.
    pub ino: Ino,
    /// File type of that inode, for `d_type`.
    pub kind: FileKind,
    /// The name inside the directory: one path component.
    pub name: std::ffi::OsString,
}

/// Packed to 4-byte alignment (and the two u16 side by side): 52 bytes instead of 56 (every byte here is multiplied by the
/// number of entries). Fields are only ever copied, never borrowed, so no reference is unaligned.
#[derive(Clone, Copy, Debug)]
#[repr(C, packed(4))]
pub(crate) struct Inode {
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// `S_IFMT` bits and `0o7777` permission bits: exactly 16 bits.
    pub mode: u16,
    pub layer: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub parent: u32,
    pub dirent: u32,
    pub data: u32,
    pub data_len: u32,
}

impl Inode {
    pub fn kind(&self) -> FileKind {
        FileKind::from_mode(u32::from(self.mode))
    }
}

/// A name in a directory. `name` points at a length byte followed by the name in the arena
/// (names are at most `NAME_MAX` = 255 bytes), which keeps the dirent at 8 bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dirent {
    pub name: u32,
    pub ino: u32,
}

/// Bit 31 of [`StoredChunk::inner`]: the chunk has a digest. Inner offsets are below
/// `MAX_MEMBER_SIZE` (1 GiB), so the bit is free.
const HAS_DIGEST: u32 = 1 << 31;

/// A [`Chunk`] packed into 60 bytes: the compressed span (`next_offset - offset`) as 32 bits
/// (the cache refuses members above `MAX_MEMBER_BYTES` = 128 MiB anyway), 4-byte alignment.
#[derive(Clone, Copy, Debug)]
#[repr(C, packed(4))]
pub(crate) struct StoredChunk {
    offset: u64,
    span: u32,
    chunk_offset: u64,
    chunk_size: u32,
    inner: u32,
    digest: [u8; 32],
}

impl StoredChunk {
    /// Packs `c`, or says why it cannot be part of a file.
    pub fn pack(c: &regfs_estargz::Chunk) -> Result<StoredChunk, &'static str> {
        let chunk_size =
            u32::try_from(c.chunk_size).map_err(|_| "chunk size does not fit 32 bits")?;
        let inner = u32::try_from(c.inner_offset)
            .ok()
            .filter(|i| i & HAS_DIGEST == 0)
            .ok_or("inner offset beyond the member size limit")?;
        let span = c
            .next_offset
            .checked_sub(c.offset)
            .ok_or("chunk ends before it starts in the blob")?;
        let span = u32::try_from(span).map_err(|_| "compressed member spans more than 4 GiB")?;
        if c.chunk_offset.checked_add(c.chunk_size).is_none() {
            return Err("chunk end overflows");
        }
        let (inner, digest) = match c.digest {
            Some(d) => (inner | HAS_DIGEST, *d.as_bytes()),
            None => (inner, [0; 32]),
        };
        Ok(StoredChunk {
            offset: c.offset,
            span,
            chunk_offset: c.chunk_offset,
            chunk_size,
            inner,
            digest,
        })
    }

    pub fn unpack(&self) -> Chunk {
        Chunk {
            offset: self.offset,
            inner_offset: u64::from(self.inner & !HAS_DIGEST),
            next_offset: self.offset + u64::from(self.span),
            chunk_offset: self.chunk_offset,
            chunk_size: u64::from(self.chunk_size),
            digest: (self.inner & HAS_DIGEST != 0).then(|| Digest::from_bytes(self.digest)),
        }
    }

    pub fn chunk_offset(&self) -> u64 {
        self.chunk_offset
    }

    pub fn end(&self) -> u64 {
        self.chunk_offset + u64::from(self.chunk_size)
    }
}

/// One extended attribute.
pub(crate) type Xattr = (Box<str>, Box<[u8]>);

/// The flattened tree; see the module docs for the layout.
#[derive(Default)]
pub(crate) struct InodeTable {
    pub inodes: Vec<Inode>,
    pub dirents: Vec<Dirent>,
    pub arena: Vec<u8>,
    pub chunks: Vec<StoredChunk>,
    pub xattrs: Vec<(u32, Box<[Xattr]>)>,
}

impl InodeTable {
    pub fn inode(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(ino.index()? as usize)
    }

    /// Appends `bytes` to the arena and returns their offset.
    pub fn intern(&mut self, bytes: &[u8]) -> Result<u32, crate::Error> {
        let start = self.arena.len();
        let end = start as u64 + bytes.len() as u64;
        if end > MAX_ARENA {
            return Err(crate::Error::TooLarge {
                what: "names and link targets",
                limit: MAX_ARENA,
            });
        }
        self.arena.extend_from_slice(bytes);
        Ok(start as u32)
    }

    /// Appends a name with its length byte; `name` is at most `NAME_MAX` bytes.
    pub fn intern_name(&mut self, name: &[u8]) -> Result<u32, crate::Error> {
        let len = u8::try_from(name.len()).map_err(|_| crate::Error::TooLarge {
            what: "name",
            limit: NAME_MAX as u64,
        })?;
        let at = self.intern(&[len])?;
        self.intern(name)?;
        Ok(at)
    }

    pub fn name_of(&self, d: &Dirent) -> &[u8] {
        let start = d.name as usize;
        let len = usize::from(self.arena[start]);
        &self.arena[start + 1..start + 1 + len]
    }

    pub fn children(&self, dir: &Inode) -> &[Dirent] {
        let start = dir.data as usize;
        &self.dirents[start..start + dir.data_len as usize]
    }

    /// Binary search of a directory's sorted entries.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Option<u32> {
        let children = self.children(dir);
        children
            .binary_search_by(|d| self.name_of(d).cmp(name))
            .ok()
            .map(|i| children[i].ino)
    }

    pub fn chunks_of(&self, file: &Inode) -> &[StoredChunk] {
        let start = file.data as usize;
        &self.chunks[start..start + file.data_len as usize]
    }

    pub fn link_target(&self, link: &Inode) -> &[u8] {
        let start = link.data as usize;
        &self.arena[start..start + link.data_len as usize]
    }

    pub fn xattrs_of(&self, index: u32) -> &[Xattr] {
        match self.xattrs.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(i) => &self.xattrs[i].1,
            Err(_) => &[],
        }
    }

    /// The path of an inode from the root, by its first name (for logs and the access log).
    pub fn path_of(&self, mut index: u32) -> String {
        let mut parts: Vec<&[u8]> = Vec::new();
        // Bounded by the table size: a corrupt parent chain cannot loop forever.
        for _ in 0..self.inodes.len() {
            let Some(inode) = self.inodes.get(index as usize) else {
                break;
            };
            if inode.parent == index {
                break;
            }
            if let Some(d) = self.dirents.get(inode.dirent as usize) {
                parts.push(self.name_of(d));
            }
            index = inode.parent;
        }
        let mut path = String::new();
        for part in parts.iter().rev() {
            path.push('/');
            path.push_str(&String::from_utf8_lossy(part));
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }

    pub fn attr(&self, index: u32, inode: &Inode) -> Attr {
        let kind = inode.kind();
        let rdev = match kind {
            FileKind::Char | FileKind::Block => libc::makedev(inode.data, inode.data_len),
            _ => 0,
        };
        Attr {
            ino: Ino::from_index(index),
            kind,
            perm: inode.mode & 0o7777,
            size: inode.size,
            nlink: inode.nlink.max(1),
            uid: inode.uid,
            gid: inode.gid,
            rdev,
            mtime: system_time(inode.mtime_secs, inode.mtime_nanos),
        }
    }

    /// Bytes held by the table, counting vector capacity and the xattr boxes.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let xattr_heap: usize = self
            .xattrs
            .iter()
            .map(|(_, xs)| {
                xs.len() * size_of::<Xattr>()
                    + xs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            })
            .sum();
        self.inodes.capacity() * size_of::<Inode>()
            + self.dirents.capacity() * size_of::<Dirent>()
            + self.arena.capacity()
            + self.chunks.capacity() * size_of::<StoredChunk>()
            + self.xattrs.capacity() * size_of::<(u32, Box<[Xattr]>)>()
            + xattr_heap
    }

    pub fn shrink_to_fit(&mut self) {
        self.inodes.shrink_to_fit();
        self.dirents.shrink_to_fit();
        self.arena.shrink_to_fit();
        self.chunks.shrink_to_fit();
        self.xattrs.shrink_to_fit();
    }
}

fn system_time(secs: i64, nanos: u32) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(nanos.min(999_999_999)));
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes_stay_small() {
        assert_eq!(std::mem::size_of::<Inode>(), 52);
        assert_eq!(std::mem::size_of::<Dirent>(), 8);
        assert_eq!(std::mem::size_of::<StoredChunk>(), 60);
    }

    #[test]
    fn chunk_packing_round_trips_with_and_without_digest() {
        for digest in [None, Some(Digest::sha256(b"x"))] {
            let c = regfs_estargz::Chunk {
                offset: 10,
                inner_offset: 512,
                next_offset: 99,
                chunk_offset: 4 << 20,
                chunk_size: 4 << 20,
                digest,
            };
            let u = StoredChunk::pack(&c).unwrap().unpack();
            let fields = |o, i, n, co, cs, d| (o, i, n, co, cs, d);
            assert_eq!(
                fields(
                    u.offset,
                    u.inner_offset,
                    u.next_offset,
                    u.chunk_offset,
                    u.chunk_size,
                    u.digest
                ),
                fields(
                    c.offset,
                    c.inner_offset,
                    c.next_offset,
                    c.chunk_offset,
                    c.chunk_size,
                    c.digest
                )
            );
        }
    }

    #[test]
    fn hostile_chunks_are_rejected_not_truncated() {
        let base = regfs_estargz::Chunk {
            offset: 10,
            inner_offset: 0,
            next_offset: 20,
            chunk_offset: 0,
            chunk_size: 1,
            digest: None,
        };
        let bad = [
            regfs_estargz::Chunk {
                chunk_size: u64::from(u32::MAX) + 1,
                ..base.clone()
            },
            regfs_estargz::Chunk {
                inner_offset: 1 << 31,
                ..base.clone()
            },
            regfs_estargz::Chunk {
                next_offset: 5,
                ..base.clone()
            },
            regfs_estargz::Chunk {
                chunk_offset: u64::MAX,
                ..base.clone()
            },
        ];
        for c in bad {
            assert!(StoredChunk::pack(&c).is_err(), "{c:?}");
        }
    }
}

//! Building the inode table from the layers' TOC indexes: the overlay merge, done once.
//!
//! The merge walks the image breadth-first. Each merged directory carries its *sources*: the
//! same directory in every layer that still contributes to it, topmost first. For one merged
//! directory:
//!
//! 1. Walk the sources top to bottom. In each layer, first take the layer's entries: a name seen
//!    for the first time is decided by this layer (upper layers win); a name already decided as a
//!    directory keeps collecting lower directories of the same name (they merge), while a lower
//!    non-directory under it, or any lower entry under a decided non-directory, is hidden.
//! 2. Then apply the layer's whiteouts, which act on *lower* layers only: `.wh.NAME` closes NAME
//!    (an entry of the same layer named NAME survives), and `.wh..wh..opq` stops the walk, so
//!    nothing below shows through the directory.
//! 3. Emit the decided names in byte order as one contiguous run of dirents; directories are
//!    queued with their collected sources.
//!
//! A layer entry reached through several names (a hardlink, already resolved to its target by
//! the index) becomes one inode; link counts are counted from the finished tree, so a name
//! removed by an upper whiteout no longer counts. In the per-layer view (`single_layer`) nothing
//! is merged and whiteouts are shown the way overlayfs expects them in a lower directory: a
//! character device 0/0 named NAME, and `trusted.overlay.opaque=y` on an opaque directory.
//!
//! The landmarks and `stargz.index.json` are hidden in the root only, as the reference does.
//!
//! A directory that a layer only implies (its files are listed but it has no entry of its own)
//! does not override the attributes of the same directory in a lower layer, as with a layer
//! applier that finds the directory already there.

use std::collections::{BTreeMap, HashMap, VecDeque};

use regfs_estargz::{Digest, EntryId, EntryKind, TocIndex};

use crate::Error;
use crate::inode::{Dirent, Inode, InodeTable, MAX_LAYERS, NAME_MAX, StoredChunk, Xattr};

/// Names that exist in a layer's root for the format's sake, not the image's.
const HIDDEN_ROOT_NAMES: [&str; 3] = [
    ".prefetch.landmark",
    ".no.prefetch.landmark",
    "stargz.index.json",
];

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a lower directory as opaque.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How whiteouts are treated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Layers merged; whiteouts applied and invisible.
    Merged,
    /// One layer as overlayfs expects a lower directory: whiteouts as devices and xattrs.
    SingleLayer,
}

/// What a name in a merged directory resolves to.
enum Slot {
    /// Decided by `top`; `lower` are directories of the same name merged under it.
    Entry {
        top: (u16, EntryId),
        is_dir: bool,
        lower: Vec<(u16, EntryId)>,
        closed: bool,
    },
    /// Whited out before any layer provided it.
    Gone,
    /// `SingleLayer` only: a whiteout shown as a 0/0 character device.
    Whiteout,
}

struct PendingDir {
    inode: u32,
    sources: Vec<(u16, EntryId)>,
}

/// Builds the table for `layers` (bottom first).
pub(crate) fn build(layers: &[(&Digest, &TocIndex)], view: View) -> Result<InodeTable, Error> {
    if layers.len() > MAX_LAYERS {
        return Err(Error::TooManyLayers(layers.len()));
    }
    let mut b = Builder {
        layers,
        view,
        table: InodeTable::default(),
        shared: HashMap::new(),
        xattrs: Vec::new(),
        explicit: layers
            .iter()
            .map(|(_, index)| explicit_entries(index))
            .collect(),
    };
    // Sources are topmost first.
    let roots: Vec<(u16, EntryId)> = layers
        .iter()
        .enumerate()
        .rev()
        .map(|(i, (_, index))| (i as u16, index.root()))
        .collect();
    let root_attrs = b.attribute_source(&roots);
    let mut root = match root_attrs {
        Some((layer, id)) => b.inode_for(layer, id, 0)?,
        None => empty_root(),
    };
    root.parent = 0;
    root.dirent = u32::MAX;
    b.table.inodes.push(root);
    if let Some((layer, id)) = root_attrs {
        b.push_xattrs(0, layer, id);
    }

    let mut queue = VecDeque::from([PendingDir {
        inode: 0,
        sources: roots,
    }]);
    while let Some(dir) = queue.pop_front() {
        b.emit_dir(dir, &mut queue)?;
    }
    b.finish()
}

struct Builder<'a> {
    layers: &'a [(&'a Digest, &'a TocIndex)],
    view: View,
    table: InodeTable,
    /// Layer entries that already have an inode (hardlinks).
    shared: HashMap<(u16, EntryId), u32>,
    xattrs: Vec<(u32, Box<[Xattr]>)>,
    /// Per layer, one bit per index entry: listed in the TOC (not an implicit directory).
    explicit: Vec<Vec<u64>>,
}

impl<'a> Builder<'a> {
    /// Whose attributes a merged directory shows: the topmost source the TOC lists, because an
    /// implicit directory (only implied by its files' names) does not change the directory a
    /// layer applier already has. Falls back to the topmost source.
    fn attribute_source(&self, sources: &[(u16, EntryId)]) -> Option<(u16, EntryId)> {
        sources
            .iter()
            .copied()
            .find(|&(layer, id)| {
                let bits = &self.explicit[usize::from(layer)];
                let i = id.index();
                bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
            })
            .or_else(|| sources.first().copied())
    }

    fn index(&self, layer: u16) -> &'a TocIndex {
        self.layers[usize::from(layer)].1
    }

    /// Steps 1 and 2 of the module docs: decide every name of one merged directory.
    fn collect(&self, dir: &PendingDir) -> (BTreeMap<&'a str, Slot>, bool) {
        let mut slots: BTreeMap<&'a str, Slot> = BTreeMap::new();
        let mut opaque_here = false;
        for &(layer, id) in &dir.sources {
            let index = self.index(layer);
            let mut whiteouts: Vec<&'a str> = Vec::new();
            let mut opaque = false;
            for (name, child) in index.children(id) {
                if dir.inode == 0 && HIDDEN_ROOT_NAMES.contains(&name) {
                    continue;
                }
                if !acceptable_name(name) {
                    tracing::warn!(
                        layer = %self.layers[usize::from(layer)].0,
                        name,
                        "skipping an entry whose name cannot exist in a directory"
                    );
                    continue;
                }
                if name == OPAQUE_MARKER {
                    opaque = true;
                    continue;
                }
                if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
                    whiteouts.push(target);
                    continue;
                }
                let is_dir = index.entry(child).kind == EntryKind::Dir;
                match slots.get_mut(name) {
                    None => {
                        slots.insert(
                            name,
                            Slot::Entry {
                                top: (layer, child),
                                is_dir,
                                lower: Vec::new(),
                                closed: !is_dir,
                            },
                        );
                    }
                    Some(Slot::Entry {
                        is_dir: true,
                        lower,
                        closed: closed @ false,
                        ..
                    }) => {
                        if is_dir {
                            lower.push((layer, child));
                        } else {
                            *closed = true;
                        }
                    }
                    Some(_) => {}
                }
            }
            match self.view {
                View::Merged => {
                    for w in whiteouts {
                        match slots.get_mut(w) {
                            None => {
                                slots.insert(w, Slot::Gone);
                            }
                            Some(Slot::Entry { closed, .. }) => *closed = true,
                            Some(_) => {}
                        }
                    }
                    if opaque {
                        break;
                    }
                }
                View::SingleLayer => {
                    for w in whiteouts {
                        if !w.is_empty() {
                            slots.entry(w).or_insert(Slot::Whiteout);
                        }
                    }
                    opaque_here |= opaque;
                }
            }
        }
        (slots, opaque_here)
    }

    /// Step 3: one contiguous run of dirents for the directory.
    fn emit_dir(&mut self, dir: PendingDir, queue: &mut VecDeque<PendingDir>) -> Result<(), Error> {
        let (slots, opaque) = self.collect(&dir);
        let start = self.table.dirents.len();
        for (name, slot) in slots {
            let ino = match slot {
                Slot::Gone => continue,
                Slot::Whiteout => self.new_inode(whiteout_device(dir.inode))?,
                Slot::Entry {
                    top: (layer, id),
                    is_dir,
                    lower,
                    ..
                } => {
                    let existing = if is_dir {
                        None
                    } else {
                        self.shared.get(&(layer, id)).copied()
                    };
                    match existing {
                        Some(ino) => ino,
                        None => {
                            let mut sources = Vec::with_capacity(1 + lower.len());
                            sources.push((layer, id));
                            sources.extend(lower);
                            // Only directories have lower sources.
                            let (attr_layer, attr_id) =
                                self.attribute_source(&sources).unwrap_or((layer, id));
                            let inode = self.inode_for(attr_layer, attr_id, dir.inode)?;
                            let ino = self.new_inode(inode)?;
                            self.push_xattrs(ino, attr_layer, attr_id);
                            if is_dir {
                                queue.push_back(PendingDir {
                                    inode: ino,
                                    sources,
                                });
                            } else if self.index(layer).entry(id).num_link > 1 {
                                self.shared.insert((layer, id), ino);
                            }
                            ino
                        }
                    }
                }
            };
            let name_off = self.table.intern_name(name.as_bytes())?;
            let dirent_index = to_u32(self.table.dirents.len(), "directory entries")?;
            self.table.dirents.push(Dirent {
                name: name_off,
                ino,
            });
            let inode = &mut self.table.inodes[ino as usize];
            if inode.dirent == u32::MAX {
                inode.dirent = dirent_index;
            }
        }
        let len = self.table.dirents.len() - start;
        let d = &mut self.table.inodes[dir.inode as usize];
        d.data = to_u32(start, "directory entries")?;
        d.data_len = to_u32(len, "directory entries")?;
        if opaque {
            self.xattrs.push((
                dir.inode,
                Box::new([(OPAQUE_XATTR.into(), Box::from(&b"y"[..]))]),
            ));
        }
        Ok(())
    }

    fn new_inode(&mut self, inode: Inode) -> Result<u32, Error> {
        let ino = to_u32(self.table.inodes.len(), "inodes")?;
        // u32::MAX marks "no dirent yet"; inode numbers stay below it.
        if ino == u32::MAX {
            return Err(Error::TooLarge {
                what: "inodes",
                limit: u64::from(u32::MAX),
            });
        }
        self.table.inodes.push(inode);
        Ok(ino)
    }

    /// The inode of one layer entry (data ranges filled in; no dirent yet).
    fn inode_for(&mut self, layer: u16, id: EntryId, parent: u32) -> Result<Inode, Error> {
        let (digest, index) = self.layers[usize::from(layer)];
        let e = index.entry(id);
        let kind = match e.kind {
            EntryKind::Dir => libc::S_IFDIR,
            EntryKind::Reg | EntryKind::Hardlink | EntryKind::Chunk => libc::S_IFREG,
            EntryKind::Symlink => libc::S_IFLNK,
            EntryKind::Char => libc::S_IFCHR,
            EntryKind::Block => libc::S_IFBLK,
            EntryKind::Fifo => libc::S_IFIFO,
        };
        let (secs, nanos) = e.modtime;
        let mut inode = Inode {
            size: 0,
            mtime_secs: secs,
            mtime_nanos: nanos,
            // S_IFMT and 0o7777 together fit 16 bits.
            mode: (kind | (e.mode & 0o7777)) as u16,
            uid: e.uid,
            gid: e.gid,
            nlink: 0,
            parent,
            dirent: u32::MAX,
            layer,
            data: 0,
            data_len: 0,
        };
        match kind {
            libc::S_IFREG => {
                inode.size = e.size;
                let start = to_u32(self.table.chunks.len(), "chunks")?;
                for c in index.chunks(id) {
                    let packed = StoredChunk::pack(c).map_err(|reason| Error::BadChunk {
                        layer: *digest,
                        path: e.name.to_string(),
                        chunk_offset: c.chunk_offset,
                        reason,
                    })?;
                    self.table.chunks.push(packed);
                }
                inode.data = start;
                inode.data_len = to_u32(self.table.chunks.len() - start as usize, "chunks")?;
            }
            libc::S_IFLNK => {
                let target = e.link_name.as_bytes();
                inode.size = target.len() as u64;
                inode.data = self.table.intern(target)?;
                inode.data_len = to_u32(target.len(), "link target")?;
            }
            libc::S_IFCHR | libc::S_IFBLK => {
                inode.data = e.dev_major;
                inode.data_len = e.dev_minor;
            }
            _ => {}
        }
        Ok(inode)
    }

    fn push_xattrs(&mut self, ino: u32, layer: u16, id: EntryId) {
        let e = self.index(layer).entry(id);
        if e.xattrs.is_empty() {
            return;
        }
        let list: Box<[Xattr]> = e
            .xattrs
            .iter()
            .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_slice())))
            .collect();
        self.xattrs.push((ino, list));
    }

    /// Link counts from the finished tree; xattrs sorted into the side table.
    fn finish(mut self) -> Result<InodeTable, Error> {
        let t = &mut self.table;
        for inode in &mut t.inodes {
            inode.nlink = 0;
        }
        for d in &t.dirents {
            let child = &t.inodes[d.ino as usize];
            if child.kind() != crate::FileKind::Dir {
                t.inodes[d.ino as usize].nlink += 1;
            }
        }
        for i in 0..t.inodes.len() {
            if t.inodes[i].kind() == crate::FileKind::Dir {
                let subdirs = t
                    .children(&t.inodes[i])
                    .iter()
                    .filter(|d| t.inodes[d.ino as usize].kind() == crate::FileKind::Dir)
                    .count();
                t.inodes[i].nlink = to_u32(subdirs.saturating_add(2), "subdirectories")?;
            }
        }
        // Merge duplicates (an opaque marker on a directory that has xattrs of its own).
        self.xattrs.sort_by_key(|(i, _)| *i);
        let mut merged: Vec<(u32, Box<[Xattr]>)> = Vec::with_capacity(self.xattrs.len());
        for (ino, list) in self.xattrs {
            match merged.last_mut() {
                Some((last, existing)) if *last == ino => {
                    let mut all: BTreeMap<Box<str>, Box<[u8]>> =
                        std::mem::take(existing).into_vec().into_iter().collect();
                    all.extend(list.into_vec());
                    *existing = all.into_iter().collect();
                }
                _ => merged.push((ino, list)),
            }
        }
        t.xattrs = merged;
        t.shrink_to_fit();
        Ok(self.table)
    }
}

fn explicit_entries(index: &TocIndex) -> Vec<u64> {
    let mut bits = vec![0u64; index.len().div_ceil(64)];
    for id in index.entries_in_toc_order() {
        let i = id.index();
        if let Some(w) = bits.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    bits
}

fn acceptable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

fn empty_root() -> Inode {
    Inode {
        size: 0,
        mtime_secs: 0,
        mtime_nanos: 0,
        mode: (libc::S_IFDIR | 0o755) as u16,
        uid: 0,
        gid: 0,
        nlink: 2,
        parent: 0,
        dirent: u32::MAX,
        layer: 0,
        data: 0,
        data_len: 0,
    }
}

/// What overlayfs reads as a whiteout: a character device 0/0.
fn whiteout_device(parent: u32) -> Inode {
    Inode {
        mode: libc::S_IFCHR as u16,
        parent,
        ..empty_root()
    }
}

fn to_u32(n: usize, what: &'static str) -> Result<u32, Error> {
    u32::try_from(n).map_err(|_| Error::TooLarge {
        what,
        limit: u64::from(u32::MAX),
    })
}

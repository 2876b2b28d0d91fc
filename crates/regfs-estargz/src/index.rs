//! The reader's view of a TOC: cleaned names, a directory tree, per-file chunk lists.
//!
//! Built exactly as the reference reader's `initFields` (spec §2.7), in two passes over the TOC:
//!
//! 1. entries in TOC order: clean names, attach `chunk` entries to the preceding file,
//!    normalise `chunkSize`, propagate user/group names by id, last duplicate name wins;
//! 2. the tree: parents (implicit dirs `0755` when absent), link counts, hardlinks resolved to
//!    their final target (the child slot points at the target entry).
//!
//! Then every chunk gets its `next_offset`: the next member start, or the blob size for the last.
//! Differences from the reference, all on inputs the reference mishandles: hardlink cycles and
//! chunk lists that do not tile the file are errors (the reference recurses forever or returns
//! wrong bytes); group names propagate by gid (the reference looks them up in the user map); an
//! absent `modtime` reads as the Unix epoch rather than year 1, since writers omit it for 0.

use std::collections::{BTreeMap, HashMap};

use crate::chunk::Chunk;
use crate::toc::parse_modtime;
use crate::{Digest, EntryKind, Error, Toc};

/// Name of the landmark after the prioritized files; its offset ends the prefetch range.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Name of the landmark that tells readers not to prefetch.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";

/// Longest hardlink chain followed before declaring a cycle.
const MAX_HARDLINK_HOPS: usize = 256;

/// Longest cleaned path accepted: Linux `PATH_MAX`. Longer names cannot be opened through a
/// mount anyway, and the bound keeps the implicit parents of one entry (each storing its full
/// path) at a few MiB.
pub const MAX_PATH_LEN: usize = 4096;

/// Budget for the names of implicit directories, which a hostile TOC can make quadratic in its
/// size (one deep path per entry); the TOC size limit is a natural scale for it.
const MAX_IMPLICIT_NAME_BYTES: u64 = crate::toc::MAX_TOC_SIZE;

/// A compact handle to an entry of a [`TocIndex`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(u32);

impl EntryId {
    /// The position in the index (stable for the index's lifetime; usable as an inode seed).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One file, directory, link or device as the filesystem shows it.
#[derive(Clone, Debug)]
pub struct IndexEntry {
    /// Cleaned full path (`""` for the root).
    pub name: String,
    /// File type, as the TOC entry's `type` says.
    pub kind: EntryKind,
    /// File size (`reg`); 0 for other kinds.
    pub size: u64,
    /// Permission bits plus setuid/setgid/sticky (`mode & 0o7777`); the type comes from `kind`.
    pub mode: u32,
    /// Owner user id (a TOC value outside `u32` is rejected).
    pub uid: u32,
    /// Owner group id (a TOC value outside `u32` is rejected).
    pub gid: u32,
    /// Owner user name: the TOC's `userName`, else the last one seen for this uid.
    pub uname: String,
    /// Owner group name: the TOC's `groupName`, else the last one seen for this gid.
    pub gname: String,
    /// Unix seconds and nanoseconds.
    pub modtime: (i64, u32),
    /// Symlink target, or the raw hardlink target.
    pub link_name: String,
    /// Major device number (`char`, `block`).
    pub dev_major: u32,
    /// Minor device number (`char`, `block`).
    pub dev_minor: u32,
    /// Extended attributes, raw values, sorted by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Whole-file digest (`reg`).
    pub digest: Option<Digest>,
    /// Link count (never 0 for reachable entries).
    pub num_link: u32,
    chunks: Vec<Chunk>,
    children: Vec<(Box<str>, EntryId)>,
    /// For hardlinks: the resolved final target.
    link_target: Option<EntryId>,
}

impl IndexEntry {
    /// `st_mode` with the file type bits from `kind` (spec §2.8).
    pub fn st_mode(&self) -> u32 {
        let ty = match self.kind {
            EntryKind::Dir => 0o040000,
            EntryKind::Symlink => 0o120000,
            EntryKind::Char => 0o020000,
            EntryKind::Block => 0o060000,
            EntryKind::Fifo => 0o010000,
            EntryKind::Reg | EntryKind::Hardlink | EntryKind::Chunk => 0o100000,
        };
        ty | self.mode
    }

    fn implicit_dir(name: String, num_link: u32) -> IndexEntry {
        IndexEntry {
            name,
            kind: EntryKind::Dir,
            size: 0,
            mode: 0o755,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            modtime: (0, 0),
            link_name: String::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: BTreeMap::new(),
            digest: None,
            num_link,
            chunks: Vec::new(),
            children: Vec::new(),
            link_target: None,
        }
    }
}

/// The lookup structure over a TOC.
#[derive(Clone, Debug)]
pub struct TocIndex {
    entries: Vec<IndexEntry>,
    by_name: HashMap<String, EntryId>,
    toc_order: Vec<EntryId>,
    root: EntryId,
    implicit_name_bytes: u64,
}

/// `path.Clean("/" + name)` without the leading `/`: the root is `""`.
pub fn clean_name(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn parent_dir(name: &str) -> &str {
    name.rfind('/').map_or("", |i| &name[..i])
}

fn base_name(name: &str) -> &str {
    name.rfind('/').map_or(name, |i| &name[i + 1..])
}

impl TocIndex {
    /// Builds the index of `toc` for a blob of `blob_size` bytes.
    pub fn new(toc: &Toc, blob_size: u64) -> Result<TocIndex, Error> {
        let toc_entries: &[crate::TocEntry] = toc.entries.as_deref().unwrap_or(&[]);
        let next = next_offsets(toc_entries, blob_size)?;
        let mut ix = TocIndex {
            entries: Vec::new(),
            by_name: HashMap::new(),
            toc_order: Vec::new(),
            root: EntryId(0),
            implicit_name_bytes: 0,
        };
        let mut children: Vec<BTreeMap<Box<str>, EntryId>> = Vec::new();
        let mut unames: HashMap<u32, String> = HashMap::new();
        let mut gnames: HashMap<u32, String> = HashMap::new();
        let mut last_file: Option<EntryId> = None;
        let mut last_reg_size: Option<i64> = None;

        for (i, te) in toc_entries.iter().enumerate() {
            let invalid = |reason: String| Error::InvalidEntry {
                name: te.name.clone(),
                reason,
            };
            if te.kind == EntryKind::Chunk {
                let file = last_file
                    .ok_or_else(|| invalid("chunk entry without a preceding file".into()))?;
                let mut size = te.chunk_size;
                if size == 0
                    && let Some(reg) = last_reg_size
                {
                    size = reg.saturating_sub(te.chunk_offset);
                }
                let c = make_chunk(te, size, next[i]).map_err(invalid)?;
                ix.entries[file.index()].chunks.push(c);
                continue;
            }
            let name = clean_name(&te.name);
            if name.len() > MAX_PATH_LEN {
                return Err(invalid(format!(
                    "cleaned path of {} bytes exceeds {MAX_PATH_LEN}",
                    name.len()
                )));
            }
            let u32_field = |v: i64, what: &str| {
                u32::try_from(v).map_err(|_| invalid(format!("{what} {v} out of range")))
            };
            let uid = u32_field(te.uid, "uid")?;
            let gid = u32_field(te.gid, "gid")?;
            let uname = if te.user_name.is_empty() {
                unames.get(&uid).cloned().unwrap_or_default()
            } else {
                unames.insert(uid, te.user_name.clone());
                te.user_name.clone()
            };
            let gname = if te.group_name.is_empty() {
                gnames.get(&gid).cloned().unwrap_or_default()
            } else {
                gnames.insert(gid, te.group_name.clone());
                te.group_name.clone()
            };
            let size = u64::try_from(te.size)
                .map_err(|_| invalid(format!("negative size {}", te.size)))?;
            let mut chunks = Vec::new();
            if te.kind == EntryKind::Reg {
                last_reg_size = Some(te.size);
                if size > 0 {
                    let cs = if te.chunk_size == 0 {
                        te.size
                    } else {
                        te.chunk_size
                    };
                    chunks.push(make_chunk(te, cs, next[i]).map_err(invalid)?);
                }
            }
            if ix.entries.len() >= u32::MAX as usize {
                return Err(Error::TooManyEntries {
                    max: u32::MAX as usize,
                });
            }
            let id = EntryId(ix.entries.len() as u32);
            ix.entries.push(IndexEntry {
                name: name.clone(),
                kind: te.kind,
                size: if te.kind == EntryKind::Reg { size } else { 0 },
                // Only permission and suid/sgid/sticky bits; the cast keeps the low bits of
                // negative values as Go's uint32 conversion does.
                mode: (te.mode as u64 & 0o7777) as u32,
                uid,
                gid,
                uname,
                gname,
                modtime: te
                    .modtime
                    .as_deref()
                    .and_then(parse_modtime)
                    .unwrap_or((0, 0)),
                link_name: te.link_name.clone(),
                dev_major: u32_field(te.dev_major, "devMajor")?,
                dev_minor: u32_field(te.dev_minor, "devMinor")?,
                xattrs: te.xattrs.clone(),
                digest: te.digest,
                num_link: u32::from(te.kind == EntryKind::Dir),
                chunks,
                children: Vec::new(),
                link_target: None,
            });
            children.push(BTreeMap::new());
            ix.by_name.insert(name, id);
            ix.toc_order.push(id);
            last_file = Some(id);
        }

        for e in &mut ix.entries {
            check_chunks(e)?;
        }

        // Pass 2: the tree.
        for pos in 0..ix.toc_order.len() {
            let id = ix.toc_order[pos];
            let name = ix.entries[id.index()].name.clone();
            let pdir = parent_dir(&name);
            if name == pdir {
                continue;
            }
            let pdir_id = ix.get_or_create_dir(pdir, &mut children)?;
            bump(&mut ix.entries[id.index()].num_link);
            let mut target = id;
            if ix.entries[id.index()].kind == EntryKind::Hardlink {
                target = ix.resolve_hardlink(id)?;
                ix.entries[id.index()].link_target = Some(target);
                bump(&mut ix.entries[target.index()].num_link);
            }
            ix.add_child(pdir_id, base_name(&name), target, &mut children);
        }
        ix.root = match ix.by_name.get("") {
            Some(&r) => r,
            None => ix.push_implicit_dir(String::new(), 1, &mut children),
        };
        let root = &ix.entries[ix.root.index()];
        if root.kind != EntryKind::Dir {
            return Err(Error::InvalidEntry {
                name: root.name.clone(),
                reason: "the root is not a directory".into(),
            });
        }
        for (e, c) in ix.entries.iter_mut().zip(children) {
            e.children = c.into_iter().collect();
        }
        Ok(ix)
    }

    fn push_implicit_dir(
        &mut self,
        name: String,
        num_link: u32,
        children: &mut Vec<BTreeMap<Box<str>, EntryId>>,
    ) -> EntryId {
        let id = EntryId(self.entries.len() as u32);
        self.entries
            .push(IndexEntry::implicit_dir(name.clone(), num_link));
        children.push(BTreeMap::new());
        self.by_name.insert(name, id);
        id
    }

    /// The entry named `d`, creating it and its missing ancestors as implicit dirs.
    fn get_or_create_dir(
        &mut self,
        d: &str,
        children: &mut Vec<BTreeMap<Box<str>, EntryId>>,
    ) -> Result<EntryId, Error> {
        if let Some(&id) = self.by_name.get(d) {
            return Ok(id);
        }
        // Iterative, not recursive: names can be deep enough to overflow the stack.
        let mut missing = vec![d.to_string()];
        let mut cur = d;
        while !cur.is_empty() {
            let p = parent_dir(cur);
            if self.by_name.contains_key(p) {
                break;
            }
            missing.push(p.to_string());
            cur = p;
        }
        self.implicit_name_bytes += missing.iter().map(|m| m.len() as u64 + 64).sum::<u64>();
        if self.implicit_name_bytes > MAX_IMPLICIT_NAME_BYTES
            || self.entries.len() + missing.len() > 2 * crate::toc::MAX_TOC_ENTRIES
        {
            return Err(Error::InvalidEntry {
                name: d.to_string(),
                reason: "too many implicit parent directories".into(),
            });
        }
        let mut id = EntryId(0);
        for m in missing.into_iter().rev() {
            id = self.push_implicit_dir(m.clone(), 2, children);
            if !m.is_empty() {
                let parent = self.by_name[parent_dir(&m)];
                self.add_child(parent, base_name(&m), id, children);
            }
        }
        Ok(id)
    }

    fn add_child(
        &mut self,
        dir: EntryId,
        base: &str,
        child: EntryId,
        children: &mut [BTreeMap<Box<str>, EntryId>],
    ) {
        if self.entries[child.index()].kind == EntryKind::Dir {
            bump(&mut self.entries[dir.index()].num_link);
        }
        children[dir.index()].insert(base.into(), child);
    }

    fn resolve_hardlink(&self, id: EntryId) -> Result<EntryId, Error> {
        let mut cur = id;
        for _ in 0..MAX_HARDLINK_HOPS {
            let e = &self.entries[cur.index()];
            if e.kind != EntryKind::Hardlink {
                return Ok(cur);
            }
            cur = *self.by_name.get(&clean_name(&e.link_name)).ok_or_else(|| {
                Error::HardlinkTargetMissing {
                    name: e.name.clone(),
                    link_name: e.link_name.clone(),
                }
            })?;
        }
        let e = &self.entries[id.index()];
        Err(Error::HardlinkTargetMissing {
            name: e.name.clone(),
            link_name: format!("{} (hardlink cycle)", e.link_name),
        })
    }

    /// The root directory.
    pub fn root(&self) -> EntryId {
        self.root
    }

    /// The entry at `path` (cleaned first); hardlinks resolve to their target.
    pub fn lookup(&self, path: &str) -> Option<EntryId> {
        let id = *self.by_name.get(clean_name(path).as_str())?;
        let e = &self.entries[id.index()];
        if e.kind == EntryKind::Hardlink {
            return e.link_target;
        }
        Some(id)
    }

    /// The entry behind `id`.
    ///
    /// # Panics
    /// If `id` comes from another index.
    pub fn entry(&self, id: EntryId) -> &IndexEntry {
        &self.entries[id.index()]
    }

    /// Number of entries (ids are `0..len()`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index has no entries at all (never true: the root always exists).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Children of a directory as (base name, entry), sorted by name; hardlinks appear as their
    /// target entry.
    pub fn children(&self, id: EntryId) -> impl Iterator<Item = (&str, EntryId)> + '_ {
        self.entries[id.index()]
            .children
            .iter()
            .map(|(n, c)| (&**n, *c))
    }

    /// The child `name` of directory `dir`.
    pub fn child(&self, dir: EntryId, name: &str) -> Option<EntryId> {
        let c = &self.entries[dir.index()].children;
        c.binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| c[i].1)
    }

    /// The chunks of a regular file in file order (empty for empty files and other kinds).
    pub fn chunks(&self, id: EntryId) -> &[Chunk] {
        &self.entries[id.index()].chunks
    }

    /// The chunk holding byte `offset` of the file, `None` past the end.
    pub fn chunk_for_offset(&self, id: EntryId, offset: u64) -> Option<&Chunk> {
        let chunks = self.chunks(id);
        let i = chunks
            .partition_point(|c| c.chunk_offset <= offset)
            .checked_sub(1)?;
        let c = &chunks[i];
        (offset < c.end()).then_some(c)
    }

    /// Every TOC entry except chunks, in TOC order (superseded duplicates included, as `tar -x`
    /// would write them); implicit directories are not listed.
    pub fn entries_in_toc_order(&self) -> impl Iterator<Item = EntryId> + '_ {
        self.toc_order.iter().copied()
    }

    /// End of the prefetch range: the blob offset of the root's `.prefetch.landmark`.
    pub fn prefetch_landmark(&self) -> Option<u64> {
        let id = self.child(self.root, PREFETCH_LANDMARK)?;
        self.chunks(id).first().map(|c| c.offset)
    }

    /// Whether the root holds `.no.prefetch.landmark` (the producer asks for no prefetch).
    pub fn has_no_prefetch_landmark(&self) -> bool {
        self.child(self.root, NO_PREFETCH_LANDMARK).is_some()
    }
}

fn bump(n: &mut u32) {
    *n = n.saturating_add(1);
}

/// NextOffset (spec §2.6) for every TOC entry.
fn next_offsets(entries: &[crate::TocEntry], blob_size: u64) -> Result<Vec<u64>, Error> {
    let mut next = vec![0u64; entries.len()];
    let mut last = blob_size;
    for (i, e) in entries.iter().enumerate().rev() {
        let offset = u64::try_from(e.offset)
            .ok()
            .filter(|&o| o < blob_size || (o == 0 && blob_size == 0))
            .ok_or_else(|| Error::InvalidEntry {
                name: e.name.clone(),
                reason: format!(
                    "offset {} is outside the blob of {blob_size} bytes",
                    e.offset
                ),
            })?;
        if matches!(e.kind, EntryKind::Reg | EntryKind::Chunk) {
            next[i] = last;
        }
        if offset != 0 && e.inner_offset == 0 {
            last = offset;
        }
    }
    Ok(next)
}

fn make_chunk(te: &crate::TocEntry, chunk_size: i64, next_offset: u64) -> Result<Chunk, String> {
    let nonneg = |v: i64, what: &str| u64::try_from(v).map_err(|_| format!("negative {what} {v}"));
    let offset = nonneg(te.offset, "offset")?;
    if next_offset < offset {
        return Err(format!(
            "offset {offset} is past the next member at {next_offset}"
        ));
    }
    Ok(Chunk {
        offset,
        inner_offset: nonneg(te.inner_offset, "innerOffset")?,
        next_offset,
        chunk_offset: nonneg(te.chunk_offset, "chunkOffset")?,
        chunk_size: nonneg(chunk_size, "chunkSize")?,
        digest: te.chunk_digest,
    })
}

/// Chunks must tile `[0, size)` in order; single chunks fall back to the file digest.
fn check_chunks(e: &mut IndexEntry) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidEntry {
        name: e.name.clone(),
        reason,
    };
    let mut pos = 0u64;
    for c in &e.chunks {
        if c.chunk_offset != pos || c.chunk_size == 0 {
            return Err(invalid(format!(
                "chunk at {} of {} bytes does not continue at {pos}",
                c.chunk_offset, c.chunk_size
            )));
        }
        pos = c
            .chunk_offset
            .checked_add(c.chunk_size)
            .ok_or_else(|| invalid("chunk end overflows".into()))?;
    }
    if pos != e.size && !(e.chunks.is_empty() && e.kind != EntryKind::Reg) {
        return Err(invalid(format!(
            "chunks cover {pos} bytes of a {}-byte file",
            e.size
        )));
    }
    if let [only] = e.chunks.as_mut_slice()
        && only.digest.is_none()
    {
        only.digest = e.digest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TocEntry;

    #[test]
    fn clean_names_like_go() {
        for (raw, want) in [
            ("./foo/bar", "foo/bar"),
            ("/foo/", "foo"),
            ("../foo", "foo"),
            ("bar/../bar///////////////////foo", "bar/foo"),
            ("./", ""),
            ("/", ""),
            ("", ""),
            ("a/./b/../../..", ""),
        ] {
            assert_eq!(clean_name(raw), want, "{raw}");
        }
    }

    fn reg(name: &str, size: i64, offset: i64, chunk_size: i64) -> TocEntry {
        let mut e = TocEntry::new(name, EntryKind::Reg);
        e.size = size;
        e.offset = offset;
        e.chunk_size = chunk_size;
        e
    }

    fn chunk(name: &str, offset: i64, chunk_offset: i64, chunk_size: i64) -> TocEntry {
        let mut e = TocEntry::new(name, EntryKind::Chunk);
        e.offset = offset;
        e.chunk_offset = chunk_offset;
        e.chunk_size = chunk_size;
        e
    }

    #[test]
    fn chunk_entry_for_offset() {
        // Reference TestChunkEntryForOffset with chunk size 4.
        let toc = Toc {
            version: 1,
            entries: Some(vec![
                reg("one", 4, 10, 0),
                reg("two", 8, 20, 4),
                chunk("two", 30, 4, 0),
            ]),
        };
        let ix = TocIndex::new(&toc, 100).unwrap();
        let one = ix.lookup("one").unwrap();
        let two = ix.lookup("./two").unwrap();
        assert_eq!(ix.chunk_for_offset(one, 0).map(|c| c.offset), Some(10));
        assert!(ix.chunk_for_offset(one, 4).is_none());
        assert_eq!(ix.chunk_for_offset(two, 0).map(|c| c.offset), Some(20));
        let c = ix.chunk_for_offset(two, 7).unwrap();
        assert_eq!(
            (c.offset, c.chunk_offset, c.chunk_size, c.next_offset),
            (30, 4, 4, 100)
        );
        assert!(ix.chunk_for_offset(two, 8).is_none());
        assert_eq!(ix.chunks(one)[0].next_offset, 20);
        assert_eq!(ix.chunks(two)[0].next_offset, 30);
    }

    #[test]
    fn tree_links_and_implicit_dirs() {
        let mut d = TocEntry::new("foo/", EntryKind::Dir);
        d.mode = 0o1777;
        let mut link = TocEntry::new("bar/foolink", EntryKind::Hardlink);
        link.link_name = "foo/foo1".into();
        let mut link2 = TocEntry::new("bar/foolink2", EntryKind::Hardlink);
        link2.link_name = "bar/foolink".into();
        let toc = Toc {
            version: 1,
            entries: Some(vec![
                d,
                TocEntry::new("foo/bar/", EntryKind::Dir),
                link,
                reg("foo/foo1", 0, 0, 0),
                link2,
                TocEntry::new("a/b/c/", EntryKind::Dir),
            ]),
        };
        let ix = TocIndex::new(&toc, 10).unwrap();
        let root = ix.entry(ix.root());
        assert_eq!(
            (root.kind, root.mode, root.num_link),
            (EntryKind::Dir, 0o755, 5)
        );
        let foo1 = ix.lookup("foo/foo1").unwrap();
        assert_eq!(ix.lookup("bar/foolink"), Some(foo1));
        assert_eq!(ix.lookup("/bar/foolink2/"), Some(foo1));
        assert_eq!(ix.entry(foo1).num_link, 3);
        let bar = ix.lookup("bar").unwrap();
        assert_eq!(ix.entry(bar).num_link, 2);
        let kids: Vec<_> = ix.children(bar).collect();
        assert_eq!(kids, vec![("foolink", foo1), ("foolink2", foo1)]);
        assert_eq!(ix.entry(ix.lookup("foo").unwrap()).num_link, 3);
        assert_eq!(ix.entry(ix.lookup("foo").unwrap()).st_mode(), 0o041777);
        assert_eq!(ix.entry(ix.lookup("a/b").unwrap()).num_link, 3);
        let names: Vec<_> = ix.children(ix.root()).map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "bar", "foo"]);
    }

    #[test]
    fn explicit_root_and_empty_toc() {
        let toc = Toc {
            version: 1,
            entries: Some(vec![
                TocEntry::new("./", EntryKind::Dir),
                TocEntry::new("./d/", EntryKind::Dir),
            ]),
        };
        let ix = TocIndex::new(&toc, 10).unwrap();
        assert_eq!(ix.entry(ix.root()).num_link, 2);
        let ix = TocIndex::new(
            &Toc {
                version: 1,
                entries: None,
            },
            0,
        )
        .unwrap();
        assert_eq!(ix.entry(ix.root()).num_link, 1);
        assert_eq!(ix.children(ix.root()).count(), 0);
    }

    #[test]
    fn user_names_propagate_and_duplicates_last_win() {
        let mut a = reg("a", 0, 0, 0);
        a.uid = 7;
        a.user_name = "seven".into();
        a.gid = 8;
        a.group_name = "eight".into();
        let mut b = reg("b", 0, 0, 0);
        b.uid = 7;
        b.gid = 8;
        let mut a2 = reg("./a", 0, 0, 0);
        a2.mode = 0o4755;
        let toc = Toc {
            version: 1,
            entries: Some(vec![a, b, a2]),
        };
        let ix = TocIndex::new(&toc, 10).unwrap();
        let b = ix.entry(ix.lookup("b").unwrap());
        assert_eq!((b.uname.as_str(), b.gname.as_str()), ("seven", "eight"));
        assert_eq!(ix.entry(ix.lookup("a").unwrap()).mode, 0o4755);
        assert_eq!(ix.entries_in_toc_order().count(), 3);
    }

    #[test]
    fn hostile_tocs_are_errors() {
        let mut missing = TocEntry::new("l", EntryKind::Hardlink);
        missing.link_name = "nope".into();
        let mut cyc_a = TocEntry::new("a", EntryKind::Hardlink);
        cyc_a.link_name = "b".into();
        let mut cyc_b = TocEntry::new("b", EntryKind::Hardlink);
        cyc_b.link_name = "a".into();
        let cases: Vec<(&str, Vec<TocEntry>)> = vec![
            ("missing hardlink target", vec![missing]),
            ("hardlink cycle", vec![cyc_a, cyc_b]),
            ("chunk first", vec![chunk("x", 1, 0, 1)]),
            ("gap", vec![reg("f", 8, 1, 4), chunk("f", 2, 5, 3)]),
            ("overlong", vec![reg("f", 8, 1, 4), chunk("f", 2, 4, 9)]),
            ("negative size", vec![reg("f", -1, 0, 0)]),
            ("offset past blob", vec![reg("f", 1, 1000, 0)]),
            (
                "decreasing offsets",
                vec![reg("f", 4, 50, 2), chunk("f", 10, 2, 2)],
            ),
            ("root is a file", vec![reg("./", 0, 0, 0)]),
        ];
        for (what, entries) in cases {
            let toc = Toc {
                version: 1,
                entries: Some(entries),
            };
            assert!(TocIndex::new(&toc, 100).is_err(), "{what}");
        }
    }

    #[test]
    fn deep_paths_do_not_overflow_the_stack() {
        let name = "a/".repeat(MAX_PATH_LEN / 2 - 1) + "f";
        let toc = Toc {
            version: 1,
            entries: Some(vec![reg(&name, 0, 0, 0)]),
        };
        let ix = TocIndex::new(&toc, 10).unwrap();
        assert!(ix.lookup(&name).is_some());
        let toc = Toc {
            version: 1,
            entries: Some(vec![reg(&(name + "/g"), 0, 0, 0)]),
        };
        assert!(TocIndex::new(&toc, 10).is_err());
    }
}

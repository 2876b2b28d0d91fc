//! The converter: an uncompressed tar in memory → an eStargz blob.
//!
//! ```text
//! scan      tar ──► [TarEntry {raw header range, payload range, fields}]      (archive.rs)
//! order     drop stargz.index.json + root landmarks, last duplicate wins,
//!           prioritized files first, then the landmark, then the rest         (spec §3)
//! plan      members: member 0 = headers up to the first payload; each chunk of each
//!           non-empty file opens a member; padding + next headers tail it    (spec §1.5)
//! compress  members in batches on `threads` workers (one libdeflate Compressor each),
//!           written in order while the next batch compresses
//! finish    TOC member [ustar hdr][JSON][pad][1024 x 0] + 51-byte footer
//! ```
//!
//! Headers are copied byte for byte from the input (PAX and GNU extension blocks included), so
//! `gunzip` of the blob yields the input's entries unchanged, then the TOC entry and one
//! end-of-archive trailer. The input's own trailer is dropped because the TOC entry must stay
//! reachable by `tar -x`, exactly as in the reference `Build` output. Every member is compressed
//! independently, so the output bytes do not depend on the thread count or on batching.
//!
//! Speed (`examples/convert.rs`, `/usr/lib/python3*` tar of 99.4 MB, 2-core build machine):
//! level 9 takes 3.2 s on one thread and 1.7 s on two; the reference `estargz.Build`
//! (`esgz-oracle build --level 9`, Go 1.19) takes 20.4 s at GOMAXPROCS 1 or 2, so 6x / 12x.
//! The reference verifies our blobs (`esgz-oracle verify`), and for the same tar both produce
//! the same TOC apart from compressed offsets (`tests/oracle.rs`).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use libdeflater::{CompressionLvl, Compressor};

use crate::archive::{BLOCK, TarEntry, scan, ustar_header};
use crate::footer::encode_footer;
use crate::index::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TocIndex};
use crate::locate::TOC_TAR_NAME;
use crate::member::MAX_MEMBER_SIZE;
use crate::toc::{format_modtime, go_lossy_utf8};
use crate::{Digest, DigestWriter, EntryKind, Error, Toc, TocEntry};

/// Default chunk size, as the reference: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// Default libdeflate level: 6, the knee of the curve.
///
/// Measured with `examples/level_sweep.rs` on `tar -cf /tmp/usr.tar /usr/lib/python3*`
/// (99.4 MB, 4 MiB chunks, one thread, release build, 2026-11 build machine):
///
/// ```text
/// level  blob bytes  ratio   MB/s      level  blob bytes  ratio   MB/s
///     1    33731223  0.3392  124.0         7    30968721  0.3114   56.4
///     2    32633827  0.3282   94.1         8    30817521  0.3099   36.9
///     3    32254065  0.3244   90.1         9    30783014  0.3096   26.2
///     4    32024581  0.3220   94.8        10    30068093  0.3024   10.4
///     5    31298975  0.3148   67.0        11    30017048  0.3019    7.8
///     6    31106438  0.3128   75.0        12    30008272  0.3018    5.6
/// ```
///
/// Level 6 is faster than 5 and smaller; going to 9 (the reference's gzip level) buys 1.0 %
/// smaller blobs for 2.9x the CPU time, and 12 buys 3.5 % for 13x. Lazy pulls fetch only the
/// chunks they touch, so 1 % of blob size is worth less than conversion time here; callers that
/// publish once and pull often can still ask for 9 or 12.
pub const DEFAULT_LEVEL: u32 = 6;

/// The lowest gzip level libdeflate honours.
pub const MIN_LEVEL: u32 = 1;
/// The highest gzip level libdeflate honours (above zlib's 9: slower, slightly smaller).
pub const MAX_LEVEL: u32 = 12;

/// The level `level` asks for (`None` = [`DEFAULT_LEVEL`]), or an error naming a level
/// outside [`MIN_LEVEL`]..=[`MAX_LEVEL`]. Front ends validate options with it before any work.
pub fn validate_level(level: Option<u32>) -> Result<u32, Error> {
    let level = level.unwrap_or(DEFAULT_LEVEL);
    if (MIN_LEVEL..=MAX_LEVEL).contains(&level) {
        Ok(level)
    } else {
        Err(Error::Options(format!(
            "compression level {level} is not in {MIN_LEVEL}..={MAX_LEVEL}"
        )))
    }
}

fn compression_level(level: Option<u32>) -> Result<CompressionLvl, Error> {
    let level = validate_level(level)?;
    i32::try_from(level)
        .ok()
        .and_then(|l| CompressionLvl::new(l).ok())
        .ok_or_else(|| Error::Options(format!("compression level {level} is not supported")))
}

/// Content of both landmark files.
const LANDMARK_CONTENTS: u8 = 0x0f;

/// Uncompressed bytes handed to the workers per batch and per thread: large enough that thread
/// start-up is noise, small enough that two batches in flight stay far below the input size.
const BATCH_BYTES_PER_THREAD: usize = 16 << 20;

/// Members per batch and per thread, bounding batches of tiny members (headers-only layers).
const BATCH_MEMBERS_PER_THREAD: usize = 256;

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Uncompressed bytes per chunk (0 = [`DEFAULT_CHUNK_SIZE`]).
    pub chunk_size: u64,
    /// libdeflate level, 1..=12 ([`MIN_LEVEL`]..=[`MAX_LEVEL`]); `None` = [`DEFAULT_LEVEL`].
    /// A level outside the range is an error, never silently replaced.
    pub level: Option<u32>,
    /// Files to place first (parents and hardlink targets pulled ahead), followed by
    /// `.prefetch.landmark`; `None` or empty puts `.no.prefetch.landmark` first instead. Paths
    /// not in the layer are skipped and listed in [`ConvertReport::missed_prioritized`]. Unlike
    /// the reference, a file whose parent directory has no tar entry (umoci layers) is still
    /// prioritized; the missing parent is skipped.
    pub prioritized_files: Option<Vec<String>>,
    /// Compression threads (0 = all cores).
    pub threads: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: None,
            prioritized_files: None,
            threads: 0,
        }
    }
}

/// What [`convert`] produced.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// sha256 of the blob bytes written.
    pub blob_digest: Digest,
    /// Number of blob bytes written (compressed data, TOC member and footer).
    pub blob_size: u64,
    /// sha256 of the decompressed blob (the layer's new DiffID).
    pub diff_id: Digest,
    /// sha256 of the TOC JSON (the `containerd.io/snapshot/stargz/toc.digest` annotation).
    pub toc_digest: Digest,
    /// Size of the decompressed blob (`io.containers.estargz.uncompressed-size`).
    pub uncompressed_size: u64,
    /// The TOC written into the blob, as a value (the same document `toc_digest` hashes).
    pub toc: Toc,
    /// Prioritized paths not found in the layer (as given), skipped.
    pub missed_prioritized: Vec<String>,
    /// Blob offset of the TOC gzip member (what the footer points at).
    pub toc_offset: u64,
    /// Blob offset of `.prefetch.landmark` when prioritized files put one in: everything
    /// before it is worth prefetching.
    pub prefetch_landmark: Option<u64>,
}

/// Wraps a possibly compressed layer stream into a reader of the plain tar: gzip
/// (`1f 8b 08`, all members), zstd (`28 b5 2f fd`) or anything else as is.
pub fn decompress_input<'a>(mut r: impl Read + 'a) -> Result<Box<dyn Read + 'a>, Error> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match r.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Input(e)),
        }
    }
    let r = std::io::Cursor::new(magic[..n].to_vec()).chain(r);
    Ok(if magic[..n].starts_with(&[0x1f, 0x8b, 0x08]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(r).map_err(Error::Input)?)
    } else {
        Box::new(r)
    })
}

/// One output entry.
#[derive(Clone, Copy)]
enum Item {
    Tar(usize),
    Landmark(&'static str),
}

/// The final entry order (spec §3).
fn order(entries: &[TarEntry], prioritized: &[String], missed: &mut Vec<String>) -> Vec<Item> {
    // Import: drop the TOC and root landmarks; a later duplicate replaces an earlier one.
    let mut slots: Vec<Option<usize>> = Vec::with_capacity(entries.len());
    let mut by_name: HashMap<Vec<u8>, usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let name = clean_bytes(&e.name);
        if [TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK]
            .map(str::as_bytes)
            .contains(&name.as_slice())
        {
            continue;
        }
        if let Some(old) = by_name.insert(name, slots.len()) {
            slots[old] = None;
        }
        slots.push(Some(i));
    }
    if prioritized.is_empty() {
        let mut out = vec![Item::Landmark(NO_PREFETCH_LANDMARK)];
        out.extend(slots.iter().flatten().map(|&i| Item::Tar(i)));
        return out;
    }
    let mut sorter = Sorter {
        entries,
        slots,
        by_name,
        out: Vec::new(),
        moved: HashSet::new(),
    };
    for p in prioritized {
        if !sorter.move_path(p) {
            missed.push(p.clone());
        }
    }
    let mut out = sorter.out;
    out.push(Item::Landmark(PREFETCH_LANDMARK));
    out.extend(sorter.slots.iter().flatten().map(|&i| Item::Tar(i)));
    out
}

/// Longest hardlink chain followed when pulling link targets forward.
const MAX_LINK_DEPTH: usize = 64;

struct Sorter<'a> {
    entries: &'a [TarEntry],
    slots: Vec<Option<usize>>,
    by_name: HashMap<Vec<u8>, usize>,
    out: Vec<Item>,
    moved: HashSet<Vec<u8>>,
}

impl Sorter<'_> {
    /// Moves `raw` (parents and hardlink targets first) to the output; false if it does not
    /// exist. Unlike the reference, a parent directory without a tar entry (umoci layers omit
    /// them) is skipped rather than making the child count as missing.
    fn move_path(&mut self, raw: &str) -> bool {
        let name = clean_bytes(raw.as_bytes());
        if !name.is_empty() && !self.alive(&name) && !self.moved.contains(&name) {
            return false;
        }
        self.move_rec(&name, 0);
        true
    }

    fn alive(&self, name: &[u8]) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|&s| self.slots[s].is_some())
    }

    fn move_rec(&mut self, name: &[u8], depth: usize) {
        self.move_one(b"", depth);
        let mut end = 0;
        // Ancestors top-down, iteratively (paths may be deep).
        while let Some(i) = name[end..].iter().position(|&c| c == b'/') {
            end += i;
            let ancestor = &name[..end];
            self.move_one(ancestor, depth);
            end += 1;
        }
        if !name.is_empty() {
            self.move_one(name, depth);
        }
    }

    fn move_one(&mut self, name: &[u8], depth: usize) {
        let Some(&slot) = self.by_name.get(name) else {
            return;
        };
        let Some(i) = self.slots[slot] else { return };
        let e = &self.entries[i];
        if e.kind == EntryKind::Hardlink && depth < MAX_LINK_DEPTH {
            let target = clean_bytes(&e.link_name);
            self.move_rec(&target, depth + 1);
        }
        // The recursion may have moved this very entry (a link cycle).
        if let Some(i) = self.slots[slot].take() {
            self.out.push(Item::Tar(i));
            self.moved.insert(name.to_vec());
        }
    }
}

/// [`crate::clean_name`] on raw bytes: tar names need not be UTF-8, and two names that differ
/// only in invalid bytes are still different files.
fn clean_bytes(name: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in name.split(|&c| c == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

/// One gzip member to compress: its uncompressed bytes as slices of the input (or of the
/// landmark blocks), the first `chunk_len` of which are a file chunk.
struct MemberPlan<'a> {
    segs: Vec<&'a [u8]>,
    len: usize,
    chunk_len: usize,
    /// Whole payload of a multi-chunk file whose first chunk opens this member.
    file_data: Option<&'a [u8]>,
}

impl<'a> MemberPlan<'a> {
    fn new() -> Self {
        MemberPlan {
            segs: Vec::new(),
            len: 0,
            chunk_len: 0,
            file_data: None,
        }
    }

    /// Appends `s`; when it continues the previous slice inside `input`, the two merge, so most
    /// members compress straight from the input without a copy.
    fn push(&mut self, input: &'a [u8], s: &'a [u8]) {
        if s.is_empty() {
            return;
        }
        self.len += s.len();
        if let Some(last) = self.segs.last_mut()
            && let (Some(a), Some(b)) = (offset_in(input, last), offset_in(input, s))
            && a + last.len() == b
        {
            *last = &input[a..b + s.len()];
            return;
        }
        self.segs.push(s);
    }
}

/// The offset of `s` inside `input`, if it is a sub-slice of it.
fn offset_in(input: &[u8], s: &[u8]) -> Option<usize> {
    let (base, p) = (input.as_ptr() as usize, s.as_ptr() as usize);
    (p >= base && p + s.len() <= base + input.len()).then(|| p - base)
}

/// Where a TOC entry's member-derived fields come from.
struct Fixup {
    toc_idx: usize,
    member: usize,
    /// The TOC index of the `reg` entry whose `digest` this member supplies, and whether from the
    /// chunk digest (single-chunk file) or the whole-file digest.
    file_digest: Option<(usize, bool)>,
}

struct Compressed {
    gz: Vec<u8>,
    chunk_digest: Option<Digest>,
    file_digest: Option<Digest>,
}

fn compress_member(
    c: &mut Compressor,
    m: &MemberPlan<'_>,
    scratch: &mut Vec<u8>,
) -> Result<Compressed, Error> {
    let input: &[u8] = if m.segs.len() == 1 {
        m.segs[0]
    } else {
        scratch.clear();
        for s in &m.segs {
            scratch.extend_from_slice(s);
        }
        scratch
    };
    let chunk_digest = (m.chunk_len > 0).then(|| Digest::sha256(&input[..m.chunk_len]));
    let file_digest = m.file_data.map(Digest::sha256);
    let mut gz = vec![0u8; c.gzip_compress_bound(input.len())];
    // The buffer has the bound libdeflate asked for, so this cannot fail short of a libdeflate bug.
    let n = c.gzip_compress(input, &mut gz).map_err(|e| Error::Gzip {
        offset: 0,
        reason: format!("compressing a member of {} bytes: {e:?}", input.len()),
    })?;
    gz.truncate(n);
    Ok(Compressed {
        gz,
        chunk_digest,
        file_digest,
    })
}

/// Counts and hashes what goes to `out`.
struct BlobWriter<'w, W: Write> {
    out: &'w mut W,
    hash: DigestWriter,
    written: u64,
}

impl<W: Write> BlobWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> Result<(), Error> {
        self.out.write_all(b).map_err(Error::Write)?;
        self.hash.update(b);
        self.written += b.len() as u64;
        Ok(())
    }
}

/// Converts `tar` (uncompressed) into an eStargz blob written to `out`.
///
/// `progress` is called after each batch with the number of uncompressed bytes done so far.
pub fn convert(
    tar: &[u8],
    opts: &ConvertOptions,
    out: &mut impl Write,
    progress: &dyn Fn(u64),
) -> Result<ConvertReport, Error> {
    let chunk_size = if opts.chunk_size == 0 {
        DEFAULT_CHUNK_SIZE
    } else {
        opts.chunk_size
    };
    // Readers refuse members above MAX_MEMBER_SIZE; leave room for trailing headers.
    if chunk_size > (MAX_MEMBER_SIZE / 2) as u64 {
        return Err(Error::Options(format!(
            "chunk size {chunk_size} exceeds {}",
            MAX_MEMBER_SIZE / 2
        )));
    }
    let chunk_size = chunk_size as usize;
    let lvl = compression_level(opts.level)?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    let entries = scan(tar)?;
    let mut missed = Vec::new();
    let items = order(
        &entries,
        opts.prioritized_files.as_deref().unwrap_or(&[]),
        &mut missed,
    );

    // Landmark blocks: header, 1 payload byte, padding.
    let mut landmark_blocks = [[0u8; 2 * BLOCK]; 2];
    for (block, name) in landmark_blocks
        .iter_mut()
        .zip([PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK])
    {
        block[..BLOCK].copy_from_slice(&ustar_header(name, 1));
        block[BLOCK] = LANDMARK_CONTENTS;
    }

    // Plan members and TOC entries.
    let mut members: Vec<MemberPlan<'_>> = Vec::new();
    let mut toc: Vec<TocEntry> = Vec::with_capacity(items.len() + 1);
    let mut fixups: Vec<Fixup> = Vec::new();
    let mut unames: HashMap<i64, Vec<u8>> = HashMap::new();
    let mut gnames: HashMap<i64, Vec<u8>> = HashMap::new();
    let empty_digest = Digest::sha256(b"");
    for item in &items {
        let (header, data, padding, mut ent) = match *item {
            Item::Tar(i) => {
                let e = &entries[i];
                let mut t = TocEntry::new(go_lossy_utf8(&e.name), e.kind);
                t.mode = e.mode;
                t.uid = e.uid;
                t.gid = e.gid;
                t.user_name = name_if_changed(&mut unames, e.uid, &e.uname);
                t.group_name = name_if_changed(&mut gnames, e.gid, &e.gname);
                t.modtime = format_modtime(e.mtime.0, e.mtime.1);
                t.xattrs = e.xattrs.clone();
                match e.kind {
                    EntryKind::Hardlink | EntryKind::Symlink => {
                        t.link_name = go_lossy_utf8(&e.link_name)
                    }
                    EntryKind::Char | EntryKind::Block => {
                        t.dev_major = e.dev_major;
                        t.dev_minor = e.dev_minor;
                    }
                    EntryKind::Reg => t.size = e.data.len() as i64,
                    _ => {}
                }
                (
                    &tar[e.header.clone()],
                    &tar[e.data.clone()],
                    &tar[e.data.end..e.end],
                    t,
                )
            }
            Item::Landmark(name) => {
                let b = if name == PREFETCH_LANDMARK {
                    &landmark_blocks[0]
                } else {
                    &landmark_blocks[1]
                };
                let mut t = TocEntry::new(name, EntryKind::Reg);
                t.size = 1;
                (&b[..BLOCK], &b[BLOCK..BLOCK + 1], &b[BLOCK + 1..], t)
            }
        };
        // Member 0 opens with the first header; afterwards a member is always open.
        if members.is_empty() {
            members.push(MemberPlan::new());
        }
        let last = members.len() - 1;
        members[last].push(tar, header);
        if ent.kind == EntryKind::Reg {
            if data.is_empty() {
                ent.digest = Some(empty_digest);
            }
            let reg_idx = toc.len();
            let chunks = data.len().div_ceil(chunk_size);
            for (k, piece) in data.chunks(chunk_size).enumerate() {
                if piece.len() == chunk_size {
                    ent.chunk_size = chunk_size as i64;
                }
                ent.chunk_offset = (k * chunk_size) as i64;
                let mut m = MemberPlan::new();
                m.push(tar, piece);
                m.chunk_len = piece.len();
                let file_digest = if chunks == 1 {
                    Some((reg_idx, true))
                } else if k == 0 {
                    m.file_data = Some(data);
                    Some((reg_idx, false))
                } else {
                    None
                };
                members.push(m);
                fixups.push(Fixup {
                    toc_idx: toc.len(),
                    member: members.len() - 1,
                    file_digest,
                });
                let next = TocEntry::new(ent.name.clone(), EntryKind::Chunk);
                toc.push(std::mem::replace(&mut ent, next));
            }
            if chunks == 0 {
                toc.push(ent);
            }
        } else {
            toc.push(ent);
        }
        let last = members.len() - 1;
        members[last].push(tar, padding);
    }
    if members.last().is_some_and(|m| m.len == 0) {
        members.pop();
    }
    // Compress and write, in order.
    let mut blob = BlobWriter {
        out,
        hash: DigestWriter::new(),
        written: 0,
    };
    let mut diff = DigestWriter::new();
    let mut uncompressed: u64 = 0;
    let mut member_offsets = vec![0u64; members.len()];
    let mut results: Vec<Option<Compressed>> = Vec::with_capacity(members.len());
    let mut compressors: Vec<Compressor> = (0..threads).map(|_| Compressor::new(lvl)).collect();
    let mut scratches: Vec<Vec<u8>> = vec![Vec::new(); threads];
    let batches = batch_ranges(&members, threads);
    let mut pending: Option<(std::ops::Range<usize>, Vec<Compressed>)> = None;
    let mut emit = |range: std::ops::Range<usize>,
                    done: Vec<Compressed>,
                    blob: &mut BlobWriter<'_, _>,
                    results: &mut Vec<Option<Compressed>>|
     -> Result<(), Error> {
        for (m, mut c) in range.zip(done) {
            for s in &members[m].segs {
                diff.update(s);
            }
            uncompressed += members[m].len as u64;
            member_offsets[m] = blob.written;
            blob.write(&c.gz)?;
            c.gz = Vec::new();
            results.push(Some(c));
        }
        progress(uncompressed);
        Ok(())
    };
    for range in batches {
        let done = if threads == 1 {
            let (c, s) = (&mut compressors[0], &mut scratches[0]);
            let done: Vec<Compressed> = members[range.clone()]
                .iter()
                .map(|m| compress_member(c, m, s))
                .collect::<Result<_, _>>()?;
            if let Some((r, d)) = pending.take() {
                emit(r, d, &mut blob, &mut results)?;
            }
            done
        } else {
            let next = AtomicUsize::new(range.start);
            let members = &members;
            let (done, emitted) = std::thread::scope(|scope| {
                let workers: Vec<_> = compressors
                    .iter_mut()
                    .zip(scratches.iter_mut())
                    .map(|(c, s)| {
                        let (next, end) = (&next, range.end);
                        scope.spawn(move || {
                            let mut mine = Vec::new();
                            loop {
                                let m = next.fetch_add(1, Ordering::Relaxed);
                                if m >= end {
                                    return mine;
                                }
                                mine.push((m, compress_member(c, &members[m], s)));
                            }
                        })
                    })
                    .collect();
                // Write the previous batch while this one compresses.
                let emitted = match pending.take() {
                    Some((r, d)) => emit(r, d, &mut blob, &mut results),
                    None => Ok(()),
                };
                let mut all: Vec<(usize, Result<Compressed, Error>)> =
                    Vec::with_capacity(range.len());
                for w in workers {
                    // A worker only panics on a bug; re-raise it here.
                    all.extend(w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                }
                all.sort_unstable_by_key(|(m, _)| *m);
                let done = all
                    .into_iter()
                    .map(|(_, c)| c)
                    .collect::<Result<Vec<_>, _>>();
                (done, emitted)
            });
            emitted?;
            done?
        };
        pending = Some((range, done));
    }
    if let Some((r, d)) = pending.take() {
        emit(r, d, &mut blob, &mut results)?;
    }

    // Member-derived TOC fields.
    for f in &fixups {
        let c = results[f.member].as_ref();
        let chunk_digest = c.and_then(|c| c.chunk_digest);
        let e = &mut toc[f.toc_idx];
        e.offset = member_offsets[f.member] as i64;
        e.chunk_digest = chunk_digest;
        match f.file_digest {
            Some((reg, true)) => toc[reg].digest = chunk_digest,
            Some((reg, false)) => toc[reg].digest = c.and_then(|c| c.file_digest),
            None => {}
        }
    }

    // TOC member and footer.
    let toc = Toc {
        version: 1,
        entries: Some(toc),
    };
    // Refuse to publish a blob readers would reject (hardlink to a missing target, a root that
    // is a file, ids out of range, paths beyond PATH_MAX): index it as a reader will.
    TocIndex::new(&toc, toc_offset_bound(&toc).max(blob.written + 1))?;
    let json = toc.to_json();
    let toc_digest = Digest::sha256(&json);
    let mut toc_tar = Vec::with_capacity(json.len() + 3 * BLOCK);
    toc_tar.extend_from_slice(&ustar_header(TOC_TAR_NAME, json.len() as u64));
    toc_tar.extend_from_slice(&json);
    toc_tar.resize(toc_tar.len().div_ceil(BLOCK) * BLOCK + 2 * BLOCK, 0);
    diff.update(&toc_tar);
    uncompressed += toc_tar.len() as u64;
    let toc_offset = blob.written;
    let mut toc_plan = MemberPlan::new();
    toc_plan.push(&toc_tar, &toc_tar);
    let gz = compress_member(&mut compressors[0], &toc_plan, &mut scratches[0])?.gz;
    blob.write(&gz)?;
    blob.write(&encode_footer(toc_offset))?;
    blob.out.flush().map_err(Error::Write)?;
    progress(uncompressed);
    Ok(ConvertReport {
        blob_digest: blob.hash.finish(),
        blob_size: blob.written,
        diff_id: diff.finish(),
        toc_digest,
        uncompressed_size: uncompressed,
        prefetch_landmark: toc.prefetch_landmark(),
        toc,
        missed_prioritized: missed,
        toc_offset,
    })
}

/// A blob size larger than every offset in `toc`, for indexing before the blob is complete.
fn toc_offset_bound(toc: &Toc) -> u64 {
    toc.entries
        .iter()
        .flatten()
        .map(|e| e.offset.max(0) as u64 + 1)
        .max()
        .unwrap_or(0)
}

/// The reference's `nameIfChanged`: a user/group name is written only when it differs from the
/// last one written for the same id.
fn name_if_changed(last: &mut HashMap<i64, Vec<u8>>, id: i64, name: &[u8]) -> String {
    if name.is_empty() || last.get(&id).is_some_and(|n| n == name) {
        return String::new();
    }
    last.insert(id, name.to_vec());
    go_lossy_utf8(name)
}

/// Splits members into batches of bounded size.
fn batch_ranges(members: &[MemberPlan<'_>], threads: usize) -> Vec<std::ops::Range<usize>> {
    let max_bytes = BATCH_BYTES_PER_THREAD.saturating_mul(threads);
    let max_members = BATCH_MEMBERS_PER_THREAD.saturating_mul(threads);
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, m) in members.iter().enumerate() {
        bytes += m.len;
        if bytes >= max_bytes || i + 1 - start >= max_members {
            out.push(start..i + 1);
            start = i + 1;
            bytes = 0;
        }
    }
    if start < members.len() {
        out.push(start..members.len());
    }
    out
}

//! The life of a `read()`.
//!
//! ```text
//! read(ino, offset, size)
//!  ├─ inode table: the file's layer and its chunks (sorted by file offset)
//!  ├─ pick chunks: a small file (≤ SMALL_FILE) → all its chunks, so the first touch
//!  │               fetches it whole; a large file → the chunks overlapping the range
//!  ├─ read-around: if a small file misses the cache, the following small files of
//!  │               the same directory and layer that also miss are added, up to
//!  │               READ_AROUND_BYTES — tar order keeps them next to each other in the
//!  │               blob, so the planner fetches them in the same request
//!  ├─ LayerHandle::read_chunks(chunks, OnDemand)  (store hit, or ranged fetch, gunzip,
//!  │               sha256 against the TOC; concurrent readers of a chunk share one fetch)
//!  │     └─ failure with read-around chunks in it → retried with the file's own chunks,
//!  │        so a corrupt neighbour never fails this file
//!  └─ slice the verified chunk bytes to [offset, offset + size); a read inside one chunk
//!     is a zero-copy `Bytes::slice`
//! ```
//!
//! A failure is logged once with the layer digest, the file path and the chunk offset — never
//! any data — and becomes `EIO` at the FUSE boundary.

use bytes::{Bytes, BytesMut};
use regfs_blob::{Chunk, RequestSource};

use crate::image::Layer;
use crate::inode::{FileKind, Ino, Inode};
use crate::{Error, ImageFs};

/// Files up to this size are fetched whole on first touch: most files of an image are small and
/// read entirely once opened, so one request beats several page-sized ones.
pub const SMALL_FILE: u64 = 1 << 20;

/// Budget of neighbouring files added to a small file's request. It trades up to 1 MiB of
/// possibly unneeded transfer for fewer round trips when a program opens a directory's files in
/// order (interpreters loading modules, dynamic loaders).
const READ_AROUND_BYTES: u64 = 1 << 20;

/// At most this many neighbours join one request, bounding the planning work per read.
const READ_AROUND_FILES: usize = 64;

/// The largest read served by one call. FUSE asks for at most `max_read` (1 MiB); direct callers
/// asking for more get a short read, which bounds the memory one call can pin.
pub const MAX_READ: u32 = 16 << 20;

/// The file a read is for: its inode index (for its path in logs) and its layer.
struct FileRef<'a> {
    index: u32,
    layer: &'a Layer,
}

impl ImageFs {
    /// Reads up to `size` bytes of a regular file at `offset` (fewer at end of file).
    pub async fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Bytes, Error> {
        let inode = *self.inode(ino)?;
        match inode.kind() {
            FileKind::Reg => {}
            FileKind::Dir => return Err(Error::IsADirectory(ino)),
            _ => return Err(Error::NotReadable(ino)),
        }
        self.record_access(ino);
        if offset >= inode.size || size == 0 {
            return Ok(Bytes::new());
        }
        let end = offset
            .saturating_add(u64::from(size.min(MAX_READ)))
            .min(inode.size);

        let all = self.table.chunks_of(&inode);
        let layer = &self.layers[usize::from(inode.layer)];
        let own: Vec<Chunk> = if inode.size <= SMALL_FILE {
            all.iter().map(|c| c.unpack()).collect()
        } else {
            let first = all.partition_point(|c| c.end() <= offset);
            let last = all.partition_point(|c| c.chunk_offset() < end);
            // Read-ahead: start fetching the chunk after this read's last one now, so that a
            // sequential reader finds it arriving instead of paying a round trip per chunk.
            if let Some(next) = all.get(last).map(|c| c.unpack())
                && !layer.handle.is_cached(&next)
            {
                let handle = layer.handle.clone();
                tokio::spawn(async move {
                    // A failure here surfaces when the reader actually reaches the chunk.
                    let _ = handle.read_chunks(&[next], RequestSource::ReadAhead).await;
                });
            }
            all[first..last.max(first)]
                .iter()
                .map(|c| c.unpack())
                .collect()
        };
        let file = FileRef {
            // self.inode(ino) succeeded, so the index exists.
            index: ino.index().unwrap_or(0),
            layer,
        };
        let mut request = own.clone();
        if inode.size <= SMALL_FILE && own.iter().any(|c| !layer.handle.is_cached(c)) {
            self.read_around(ino, &inode, &mut request);
        }
        layer.counters.note_read(request.len() - own.len());

        let fetched = match layer
            .handle
            .read_chunks(&request, RequestSource::OnDemand)
            .await
        {
            Ok(bytes) => bytes,
            Err(_) if request.len() > own.len() => layer
                .handle
                .read_chunks(&own, RequestSource::OnDemand)
                .await
                .map_err(|e| self.read_failed(&file, &own, e))?,
            Err(e) => return Err(self.read_failed(&file, &own, e)),
        };
        // `fetched` holds own chunks first; zip stops after them (and a short answer is an error).
        self.assemble(&file, &own, &fetched, offset, end)
    }

    /// Adds the chunks of the small, uncached files that follow `inode` in its directory.
    fn read_around(&self, ino: Ino, inode: &Inode, request: &mut Vec<Chunk>) {
        let Some(parent) = self.table.inodes.get(inode.parent as usize) else {
            return;
        };
        let siblings = self.table.children(parent);
        let Some(here) = siblings.iter().position(|d| Some(d.ino) == ino.index()) else {
            return;
        };
        let layer = &self.layers[usize::from(inode.layer)];
        let mut budget = READ_AROUND_BYTES;
        for d in siblings[here + 1..].iter().take(READ_AROUND_FILES) {
            let next = &self.table.inodes[d.ino as usize];
            if next.kind() != FileKind::Reg || next.size == 0 {
                continue;
            }
            if next.layer != inode.layer || next.size > SMALL_FILE || next.size > budget {
                break;
            }
            let chunks: Vec<Chunk> = self
                .table
                .chunks_of(next)
                .iter()
                .map(|c| c.unpack())
                .collect();
            if chunks.iter().all(|c| layer.handle.is_cached(c)) {
                continue;
            }
            budget -= next.size;
            request.extend(chunks);
        }
    }

    fn read_failed(&self, file: &FileRef<'_>, own: &[Chunk], source: regfs_blob::Error) -> Error {
        let path = self.table.path_of(file.index);
        let chunk_offset = own.first().map_or(0, |c| c.chunk_offset);
        file.layer.counters.note_error();
        tracing::error!(
            layer = %file.layer.digest,
            path,
            chunk_offset,
            error = %source,
            "read failed"
        );
        Error::Blob {
            layer: file.layer.digest,
            path,
            chunk_offset,
            source: Box::new(source),
        }
    }

    /// Cuts `[offset, end)` out of the verified chunk bytes.
    fn assemble(
        &self,
        file: &FileRef<'_>,
        chunks: &[Chunk],
        bytes: &[Bytes],
        offset: u64,
        end: u64,
    ) -> Result<Bytes, Error> {
        let bad = |chunk_offset: u64, reason: &'static str| {
            let path = self.table.path_of(file.index);
            file.layer.counters.note_error();
            tracing::error!(layer = %file.layer.digest, path, chunk_offset, reason, "read failed");
            Error::BadChunk {
                layer: file.layer.digest,
                path,
                chunk_offset,
                reason,
            }
        };
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut pos = offset;
        for (c, b) in chunks.iter().zip(bytes) {
            if c.end() <= pos || c.chunk_offset >= end {
                continue;
            }
            if b.len() as u64 != c.chunk_size {
                return Err(bad(
                    c.chunk_offset,
                    "cache returned a chunk of the wrong length",
                ));
            }
            if c.chunk_offset > pos {
                return Err(bad(c.chunk_offset, "the file's chunks leave a gap"));
            }
            let from = (pos - c.chunk_offset) as usize;
            let to = (c.end().min(end) - c.chunk_offset) as usize;
            pieces.push(b.slice(from..to));
            pos = c.end().min(end);
        }
        if pos < end {
            return Err(bad(pos, "the file's chunks end before its size"));
        }
        if pieces.len() == 1 {
            return Ok(pieces.pop().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for p in pieces {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }
}

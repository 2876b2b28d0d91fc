//! Reading a blob through a random-access source: footer and TOC in (usually) one tail read,
//! then file bytes chunk by chunk, each decompressed from its own member and verified.

use std::sync::Arc;

use crate::chunk::{Chunk, decode_chunk};
use crate::footer::{BlobFormat, FOOTER_SIZE};
use crate::index::{EntryId, TocIndex};
use crate::locate::{TocLocation, locate_toc, parse_toc_member_at};
use crate::member::MAX_MEMBER_SIZE;
use crate::toc::MAX_TOC_SIZE;
use crate::{Digest, EntryKind, Error, Toc};

/// How much of the blob end [`Reader::open`] reads first. TOCs of typical layers compress to
/// a few KiB up to ~1 MiB; 512 KiB holds most of them, so one request usually fetches footer
/// and TOC together while costing little when it does not.
pub const TAIL_READ_SIZE: u64 = 512 * 1024 + FOOTER_SIZE as u64;

/// Largest compressed TOC member fetched by the second read: deflate never expands data by more
/// than a small fraction, so a member beyond this cannot hold a TOC within [`MAX_TOC_SIZE`].
const MAX_TOC_MEMBER: u64 = MAX_TOC_SIZE + MAX_TOC_SIZE / 64 + 4096;

/// A random-access byte source: a file, a buffer, a remote blob with a cache in front.
pub trait ReadAt {
    /// Total size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`, failing if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(buf.len())?))
            .and_then(|r| self.get(r))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "read past the end of the buffer",
                )
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl ReadAt for std::fs::File {
    /// The file's length (0 if it cannot be stat'ed; reads then fail with the real error).
    fn size(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

fn read_range<R: ReadAt + ?Sized>(src: &R, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let n = usize::try_from(len).map_err(|_| Error::Read {
        offset,
        len,
        source: std::io::Error::other("range larger than the address space"),
    })?;
    // Check the range before allocating: a hostile TOC can name ranges far past the blob.
    if offset.checked_add(len).is_none_or(|end| end > src.size()) {
        return Err(Error::Read {
            offset,
            len,
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("range ends past the blob of {} bytes", src.size()),
            ),
        });
    }
    let mut buf = vec![0u8; n];
    src.read_exact_at(&mut buf, offset)
        .map_err(|source| Error::Read {
            offset,
            len,
            source,
        })?;
    Ok(buf)
}

/// An opened eStargz (or legacy stargz) blob.
pub struct Reader<R: ReadAt> {
    src: R,
    size: u64,
    toc: Toc,
    toc_digest: Digest,
    toc_offset: u64,
    format: BlobFormat,
    index: TocIndex,
}

impl<R: ReadAt> Reader<R> {
    /// Reads footer and TOC (one read of the last [`TAIL_READ_SIZE`] bytes, a second only for a
    /// larger TOC) and builds the index.
    pub fn open(src: R) -> Result<Self, Error> {
        let size = src.size();
        let tail_len = size.min(TAIL_READ_SIZE);
        let tail = read_range(&src, size - tail_len, tail_len)?;
        let (toc, toc_digest, toc_offset, format) = match locate_toc(&tail, size)? {
            TocLocation::Parsed {
                toc,
                digest,
                toc_offset,
                format,
            } => (toc, digest, toc_offset, format),
            TocLocation::NeedRange { start, end } => {
                let len = end - start;
                if len > MAX_TOC_MEMBER {
                    return Err(Error::TocTooLarge {
                        size: len,
                        max: MAX_TOC_MEMBER,
                    });
                }
                let format = crate::footer::parse_footer(&tail)?.format;
                let member = read_range(&src, start, len)?;
                let (toc, digest) = parse_toc_member_at(&member, start)?;
                (toc, digest, start, format)
            }
        };
        let index = TocIndex::new(&toc, size)?;
        Ok(Reader {
            src,
            size,
            toc,
            toc_digest,
            toc_offset,
            format,
            index,
        })
    }

    /// The parsed TOC.
    pub fn toc(&self) -> &Toc {
        &self.toc
    }

    /// sha256 of the TOC JSON.
    pub fn toc_digest(&self) -> Digest {
        self.toc_digest
    }

    /// Footer format.
    pub fn format(&self) -> BlobFormat {
        self.format
    }

    /// Blob offset of the TOC member.
    pub fn toc_offset(&self) -> u64 {
        self.toc_offset
    }

    /// Blob size.
    pub fn blob_size(&self) -> u64 {
        self.size
    }

    /// The entry index.
    pub fn index(&self) -> &TocIndex {
        &self.index
    }

    /// The source the reader reads from.
    pub fn source(&self) -> &R {
        &self.src
    }

    /// Checks the TOC digest against the expected one (the `toc.digest` annotation).
    pub fn verify_toc_digest(&self, want: &Digest) -> Result<(), Error> {
        if self.toc_digest != *want {
            return Err(Error::TocDigestMismatch {
                want: *want,
                got: self.toc_digest,
            });
        }
        Ok(())
    }

    /// Reads and verifies one chunk. eStargz chunks must carry a digest; legacy stargz chunks
    /// have none and are returned unverified.
    pub fn read_chunk(&self, chunk: &Chunk) -> Result<Vec<u8>, Error> {
        if chunk.digest.is_none() && self.format == BlobFormat::Estargz {
            return Err(Error::MissingChunkDigest {
                offset: chunk.offset,
                chunk_offset: chunk.chunk_offset,
            });
        }
        // The last data member's bound is the blob size; the TOC member is not needed.
        let end = if chunk.offset < self.toc_offset {
            chunk.next_offset.min(self.toc_offset)
        } else {
            chunk.next_offset
        };
        let len = end.saturating_sub(chunk.offset);
        if len > MAX_MEMBER_SIZE as u64 {
            return Err(Error::Gzip {
                offset: chunk.offset,
                reason: format!(
                    "member span of {len} bytes exceeds the limit of {MAX_MEMBER_SIZE} bytes"
                ),
            });
        }
        let member = read_range(&self.src, chunk.offset, len)?;
        decode_chunk(&member, chunk)
    }

    /// Reads file bytes at `offset` into `buf`; returns the count (0 at or past the end).
    /// Only the members holding the requested range are fetched and decompressed.
    pub fn read_file(&self, id: EntryId, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let e = self.index.entry(id);
        if e.kind != EntryKind::Reg || offset >= e.size {
            return Ok(0);
        }
        let want = (e.size - offset).min(buf.len() as u64) as usize;
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let Some(chunk) = self.index.chunk_for_offset(id, pos) else {
                break;
            };
            let data = self.read_chunk(chunk)?;
            let from = (pos - chunk.chunk_offset) as usize;
            let n = (data.len() - from).min(want - done);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
        }
        Ok(done)
    }

    /// Reads a whole regular file, chunk by chunk (convenience for small files and tests).
    pub fn read_to_vec(&self, id: EntryId) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        for chunk in self.index.chunks(id) {
            out.extend_from_slice(&self.read_chunk(chunk)?);
        }
        Ok(out)
    }
}

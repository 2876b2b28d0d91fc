//! Chunks: the unit of random access. One chunk = one verified slice of one gzip member.

use crate::member::{MAX_MEMBER_SIZE, inflate_member};
use crate::{Digest, Error};

/// Where one piece of a regular file lives in the blob, and its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Blob offset of the gzip member holding this chunk.
    pub offset: u64,
    /// Uncompressed offset of the chunk inside that member (non-zero only in packed blobs).
    pub inner_offset: u64,
    /// Exclusive upper bound of the compressed bytes needed (the next member start, or the blob
    /// size for the last data member).
    pub next_offset: u64,
    /// Offset of the chunk inside the file.
    pub chunk_offset: u64,
    /// Uncompressed length of the chunk.
    pub chunk_size: u64,
    /// `chunkDigest`, else the file `digest` for single-chunk files; `None` in legacy blobs.
    pub digest: Option<Digest>,
}

impl Chunk {
    /// File offset one past the chunk's last byte.
    pub fn end(&self) -> u64 {
        self.chunk_offset.saturating_add(self.chunk_size)
    }
}

/// Decompresses the chunk's member from `member_bytes` (blob bytes starting at `chunk.offset`,
/// at least through the member's end) and returns the chunk's verified bytes.
///
/// A chunk without a digest (legacy stargz) is returned unverified; callers that require
/// verification check [`Chunk::digest`] first.
pub fn decode_chunk(member_bytes: &[u8], chunk: &Chunk) -> Result<Vec<u8>, Error> {
    let start = usize::try_from(chunk.inner_offset).ok();
    let len = usize::try_from(chunk.chunk_size).ok();
    let end = start
        .zip(len)
        .and_then(|(s, l)| s.checked_add(l))
        .filter(|&e| e <= MAX_MEMBER_SIZE);
    let (Some(start), Some(end)) = (start, end) else {
        return Err(Error::Gzip {
            offset: chunk.offset,
            reason: format!(
                "chunk at inner offset {} of {} bytes exceeds the member limit of {MAX_MEMBER_SIZE} bytes",
                chunk.inner_offset, chunk.chunk_size
            ),
        });
    };
    // Room for the tar headers that usually trail the chunk in the same member.
    let hint = end.saturating_add(16 * 1024);
    let mut data =
        inflate_member(member_bytes, hint, MAX_MEMBER_SIZE).map_err(|reason| Error::Gzip {
            offset: chunk.offset,
            reason,
        })?;
    if data.len() < end {
        return Err(Error::Gzip {
            offset: chunk.offset,
            reason: format!(
                "member inflates to {} bytes, chunk needs bytes {start}..{end}",
                data.len()
            ),
        });
    }
    data.truncate(end);
    data.drain(..start);
    verify_chunk(&data, chunk)?;
    Ok(data)
}

/// Checks `data` against the chunk's digest (a no-op for digest-less legacy chunks).
pub fn verify_chunk(data: &[u8], chunk: &Chunk) -> Result<(), Error> {
    let Some(want) = chunk.digest else {
        return Ok(());
    };
    let got = Digest::sha256(data);
    if got != want {
        return Err(Error::ChunkDigestMismatch {
            offset: chunk.offset,
            chunk_offset: chunk.chunk_offset,
            want,
            got,
        });
    }
    Ok(())
}

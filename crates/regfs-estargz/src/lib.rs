//! eStargz, the format: footer, TOC, chunk index, writer and verification, free of I/O.
//!
//! An eStargz blob is a gzip-compressed tar whose files start new gzip members, followed by a
//! table of contents (TOC, `stargz.index.json`) and a 51-byte footer pointing at it:
//!
//! ```text
//! | member 0: headers | file chunk + next headers | ... | TOC member | footer (51 B) |
//! ```
//!
//! so one HTTP range read of the blob end yields the TOC, and one more per chunk yields any
//! file byte. This crate is that format and nothing else: no HTTP, no FUSE, no async.
//!
//! * Reading: [`parse_footer`] / [`locate_toc`] / [`parse_toc_member`] turn fetched bytes into a
//!   [`Toc`]; [`TocIndex`] is the tree the filesystem serves (cleaned names, link counts,
//!   hardlinks, per-file [`Chunk`] lists); [`decode_chunk`] inflates and verifies one chunk.
//!   [`Reader`] ties them together over any [`ReadAt`] source (a file, a buffer).
//! * Writing: [`convert`] turns an uncompressed tar into a blob, with lossless headers,
//!   prioritized files and landmarks, compressed in parallel; [`decompress_input`] unwraps
//!   gzip or zstd layers first.
//! * Every byte read is treated as hostile: sizes are bounded ([`MAX_TOC_SIZE`],
//!   [`MAX_TOC_ENTRIES`], [`MAX_MEMBER_SIZE`], [`MAX_PATH_LEN`]) and every chunk is checked
//!   against its TOC digest before it is returned. All failures are one [`Error`] enum.
//!
//! ```
//! use regfs_estargz::{ConvertOptions, Reader, convert};
//!
//! // A one-file tar, built in memory.
//! let mut tar = tar::Builder::new(Vec::new());
//! let mut header = tar::Header::new_ustar();
//! header.set_size(5);
//! header.set_mode(0o644);
//! tar.append_data(&mut header, "hello.txt", &b"hello"[..])?;
//! let tar = tar.into_inner()?;
//!
//! let mut blob = Vec::new();
//! let report = convert(&tar, &ConvertOptions::default(), &mut blob, &|_done| {})?;
//!
//! let reader = Reader::open(blob)?;
//! reader.verify_toc_digest(&report.toc_digest)?;
//! let file = reader.index().lookup("hello.txt").expect("converted file");
//! let mut buf = [0u8; 16];
//! let n = reader.read_file(file, 0, &mut buf)?;
//! assert_eq!(&buf[..n], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod archive;
mod chunk;
mod convert;
mod digest;
mod error;
mod footer;
mod index;
mod locate;
mod member;
mod reader;
mod toc;

pub use chunk::{Chunk, decode_chunk, verify_chunk};
pub use convert::{
    ConvertOptions, ConvertReport, DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL, MAX_LEVEL, MIN_LEVEL,
    convert, decompress_input, validate_level,
};
pub use digest::{Digest, DigestWriter};
pub use error::Error;
pub use footer::{
    BlobFormat, FOOTER_SIZE, Footer, LEGACY_FOOTER_SIZE, encode_footer, encode_legacy_footer,
    parse_footer,
};
pub use index::{
    EntryId, IndexEntry, MAX_PATH_LEN, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TocIndex,
    clean_name,
};
pub use locate::{TOC_TAR_NAME, TocLocation, locate_toc, parse_toc_member};
pub use member::MAX_MEMBER_SIZE;
pub use reader::{ReadAt, Reader, TAIL_READ_SIZE};
pub use toc::{
    EntryKind, MAX_TOC_ENTRIES, MAX_TOC_SIZE, Toc, TocEntry, format_modtime, go_lossy_utf8,
    parse_modtime,
};

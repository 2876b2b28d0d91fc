//! eStargz, the format: footer, TOC, chunk index, writer and verification, free of I/O.
//!
//! (Front page to be completed by the format work.)

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

pub use convert::{ConvertOptions, ConvertReport, DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL, convert, decompress_input};
pub use chunk::{Chunk, decode_chunk, verify_chunk};
pub use digest::{Digest, DigestWriter};
pub use error::Error;
pub use footer::{BlobFormat, FOOTER_SIZE, Footer, LEGACY_FOOTER_SIZE, encode_footer, encode_legacy_footer, parse_footer};
pub use index::{EntryId, IndexEntry, MAX_PATH_LEN, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TocIndex, clean_name};
pub use locate::{TOC_TAR_NAME, TocLocation, locate_toc, parse_toc_member};
pub use member::MAX_MEMBER_SIZE;
pub use reader::{ReadAt, Reader, TAIL_READ_SIZE};
pub use toc::{EntryKind, MAX_TOC_ENTRIES, MAX_TOC_SIZE, Toc, TocEntry, format_modtime, parse_modtime};

//! eStargz, the format: footer, TOC, chunk index, writer and verification, free of I/O.
//!
//! (Front page to be completed by the format work.)

mod digest;
mod error;
mod toc;

pub use digest::{Digest, DigestWriter};
pub use error::Error;
pub use toc::{EntryKind, Toc, TocEntry};

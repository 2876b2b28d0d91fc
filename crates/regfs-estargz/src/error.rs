//! The error enum of the format crate.

/// Everything that can go wrong reading or writing eStargz.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A digest string that is not `sha256:<64 hex>`.
    #[error("invalid digest {0:?}: want sha256:<64 hex digits>")]
    BadDigest(String),
}

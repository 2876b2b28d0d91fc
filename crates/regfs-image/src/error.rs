//! The one error type of the crate, and the `context` helpers that build it.
//!
//! Variants a caller acts on are their own (a layer refused for verification, a layer that is
//! not eStargz, no image of that tag); the rest wrap the error of the crate below with a
//! sentence saying what was being done, so that the chain printed by a front end reads
//! "opening layer sha256:…: reading the TOC at 10..20: range not satisfiable".

use regfs_estargz::Digest;

/// Everything that can go wrong opening, converting or extracting an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A layer's TOC does not hash to the digest its manifest annotation names: the layer or
    /// the manifest was tampered with, and nothing of it is served.
    #[error("layer {layer}: TOC digest {actual} does not match the manifest annotation {expected}")]
    TocDigestMismatch {
        /// The layer blob.
        layer: Digest,
        /// What the manifest annotation says.
        expected: Digest,
        /// What the TOC fetched hashes to.
        actual: Digest,
    },
    /// An eStargz layer without a `toc.digest` annotation, while verification is required.
    #[error(
        "layer {layer} has no {annotation} annotation, so its TOC cannot be verified \
         (use --insecure-skip-verify to mount it anyway)"
    )]
    UnverifiedToc {
        /// The layer blob.
        layer: Digest,
        /// The annotation that is missing.
        annotation: &'static str,
    },
    /// The layer is not eStargz (no footer/TOC) and the caller asked for lazy layers only.
    #[error("layer {layer} is not eStargz: {reason}")]
    NotEstargz {
        /// The layer blob.
        layer: Digest,
        /// Why its tail is not an eStargz footer and TOC.
        reason: String,
    },
    /// The image has no layer with this digest.
    #[error("image {image} has no layer {layer}")]
    NoSuchLayer {
        /// The image, as named by the caller.
        image: String,
        /// The layer asked for.
        layer: Digest,
    },
    /// Input that is well-formed at its own level but not what regfs can use: an option out of
    /// range, a layout without the tag, a config without diff_ids.
    #[error("{0}")]
    Invalid(String),
    /// The registry (or a registry-side parser: reference, manifest, platform) failed.
    #[error("{context}")]
    Registry {
        /// What was being done.
        context: String,
        /// The registry client's error.
        #[source]
        source: regfs_registry::Error,
    },
    /// A registry-side rule refused the input (no manifest for the platform, a nested index).
    #[error(transparent)]
    Manifest(#[from] regfs_registry::Error),
    /// Fetching or verifying blob bytes failed.
    #[error("{context}")]
    Blob {
        /// What was being done.
        context: String,
        /// The chunk cache's error.
        #[source]
        source: regfs_blob::Error,
    },
    /// The eStargz format refused the bytes.
    #[error("{context}")]
    Format {
        /// What was being done.
        context: String,
        /// The format crate's error.
        #[source]
        source: regfs_estargz::Error,
    },
    /// Building the filesystem failed.
    #[error("{context}")]
    Fs {
        /// What was being done.
        context: String,
        /// The filesystem crate's error.
        #[source]
        source: regfs_fs::Error,
    },
    /// A file or system call failed.
    #[error("{context}")]
    Io {
        /// What was being done (names the path).
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// JSON that is not what it claims to be (a config, a manifest, an OCI index).
    #[error("{context}")]
    Json {
        /// What was being parsed.
        context: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An error of this crate, with what was being done around it.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// The inner error.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// The innermost error of this crate's own kinds (through [`Error::Context`] layers), for
    /// callers that decide by kind (the snapshotter's fallback reasons).
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            other => other,
        }
    }
}

/// Turns an error of a crate below into this crate's [`Error`], with a context sentence.
pub(crate) trait IntoError {
    fn into_error(self, context: String) -> Error;
}

macro_rules! into_error {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl IntoError for $ty {
            fn into_error(self, context: String) -> Error {
                Error::$variant { context, source: self }
            }
        }
    )*};
}

into_error! {
    regfs_registry::Error => Registry,
    regfs_blob::Error => Blob,
    regfs_estargz::Error => Format,
    regfs_fs::Error => Fs,
    std::io::Error => Io,
    serde_json::Error => Json,
}

impl IntoError for nix::Error {
    fn into_error(self, context: String) -> Error {
        Error::Io {
            context,
            source: std::io::Error::from(self),
        }
    }
}

impl IntoError for tempfile::PersistError {
    fn into_error(self, context: String) -> Error {
        Error::Io {
            context,
            source: self.error,
        }
    }
}

impl IntoError for tempfile::PathPersistError {
    fn into_error(self, context: String) -> Error {
        Error::Io {
            context,
            source: self.error,
        }
    }
}

impl IntoError for Error {
    fn into_error(self, context: String) -> Error {
        Error::Context {
            context,
            source: Box::new(self),
        }
    }
}

/// `anyhow`-style context on results of the crates below (and of this one).
pub(crate) trait Context<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl Into<String>) -> Result<T, Error>;
    /// Wraps the error with a context computed only on failure.
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T, Error>;
}

impl<T, E: IntoError> Context<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, Error> {
        self.map_err(|e| e.into_error(context.into()))
    }

    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T, Error> {
        self.map_err(|e| e.into_error(f().into()))
    }
}

/// Returns early with [`Error::Invalid`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// Unwraps an `Option`, or fails with [`Error::Invalid`] built like `format!`.
macro_rules! required {
    ($opt:expr, $($arg:tt)*) => {
        match $opt {
            Some(v) => v,
            None => return Err($crate::Error::Invalid(format!($($arg)*))),
        }
    };
}
pub(crate) use required;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_chains_read_outside_in() {
        let io: Result<(), std::io::Error> = Err(std::io::Error::other("disk on fire"));
        let err = io
            .context("writing /x")
            .context("extracting y")
            .unwrap_err();
        let chain: Vec<String> =
            std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect();
        assert_eq!(chain, ["extracting y", "writing /x", "disk on fire"]);
    }

    #[test]
    fn root_sees_through_context() {
        let layer = Digest::sha256(b"l");
        let err = Err::<(), _>(Error::UnverifiedToc {
            layer,
            annotation: "a",
        })
        .context("opening")
        .unwrap_err();
        assert!(matches!(err.root(), Error::UnverifiedToc { .. }));
    }
}

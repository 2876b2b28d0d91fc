//! The crate's one error type and its one mapping to gRPC status codes.

use std::path::PathBuf;

use crate::snapshot::Kind;

/// Everything that can go wrong in the snapshotter, shaped for callers to match on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has this key.
    #[error("snapshot {key:?} not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// The parent named in Prepare/View does not exist.
    #[error("parent snapshot {parent:?} not found")]
    ParentNotFound {
        /// The missing parent key.
        parent: String,
    },
    /// A snapshot with this key already exists (also how a ready remote layer is announced).
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The existing key.
        key: String,
    },
    /// Prepare/View named a parent that is not committed.
    #[error("parent snapshot {parent:?} is {kind}, not committed")]
    ParentNotCommitted {
        /// The parent key.
        parent: String,
        /// Its kind.
        kind: Kind,
    },
    /// Commit of a snapshot that is not active.
    #[error("snapshot {key:?} is {kind}, not active")]
    NotActive {
        /// The key given to Commit.
        key: String,
        /// Its kind.
        kind: Kind,
    },
    /// Mounts of a committed snapshot: only active snapshots and views are mountable.
    #[error("snapshot {key:?} is committed: only active snapshots and views have mounts")]
    NotMountable {
        /// The committed key.
        key: String,
    },
    /// Remove of a snapshot that still has children.
    #[error("cannot remove snapshot {key:?}: it has {children} child snapshot(s)")]
    HasChildren {
        /// The key.
        key: String,
        /// How many children it has.
        children: usize,
    },
    /// A request without a key (or name).
    #[error("{what} must not be empty")]
    EmptyKey {
        /// Which argument was empty.
        what: &'static str,
    },
    /// Update with a field path other than `labels` or `labels.<key>`.
    #[error("cannot update field {path:?} of snapshot {key:?}: only labels are mutable")]
    ImmutableField {
        /// The snapshot.
        key: String,
        /// The rejected field path.
        path: String,
    },
    /// Remote-layer labels that are present but malformed.
    #[error("bad remote-layer label {label:?}: {reason}")]
    BadRemoteLabel {
        /// The label key.
        label: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A remote snapshot (or an ancestor of the requested one) whose lazy mount is not working.
    #[error("remote snapshot {key:?} is not mounted: {reason}")]
    RemoteUnavailable {
        /// The remote snapshot.
        key: String,
        /// Why it is not mounted.
        reason: String,
    },
    /// A CRI `PullImage` whose image or credentials the proxy cannot read.
    #[error("CRI PullImage of {image:?}: {reason}")]
    BadCriAuth {
        /// The image as kubelet named it.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// The metadata database failed.
    #[error("metadata database {path}: {source}")]
    Metadata {
        /// `<root>/metadata.db`.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record that does not decode.
    #[error("corrupt metadata record for snapshot {key:?}: {source}")]
    CorruptRecord {
        /// The snapshot key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration file is not valid TOML of the expected shape.
    #[error("config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and key.
        reason: String,
    },
    /// A filesystem operation on the snapshotter's root failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC transport (server or client) failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A blocking task of the snapshotter panicked or was cancelled.
    #[error("snapshotter task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> tonic::Status {
        use tonic::Code;
        // containerd's errdefs turn these codes back into ErrNotFound, ErrAlreadyExists, ...; the
        // metadata layer and the unpacker branch on them, so each variant's code is deliberate.
        let code = match &err {
            Error::NotFound { .. } | Error::ParentNotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::ParentNotCommitted { .. }
            | Error::EmptyKey { .. }
            | Error::ImmutableField { .. }
            | Error::BadRemoteLabel { .. }
            | Error::BadCriAuth { .. } => Code::InvalidArgument,
            Error::NotActive { .. } | Error::NotMountable { .. } | Error::HasChildren { .. } => {
                Code::FailedPrecondition
            }
            Error::RemoteUnavailable { .. } => Code::Unavailable,
            Error::Metadata { .. }
            | Error::CorruptRecord { .. }
            | Error::Io { .. }
            | Error::Config { .. }
            | Error::Transport(_)
            | Error::Task(_) => Code::Internal,
        };
        tonic::Status::new(code, err.to_string())
    }
}

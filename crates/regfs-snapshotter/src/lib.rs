//! A containerd snapshotter (proxy plugin over gRPC) with a seam for lazily mounted layers.
//!
//! [`Snapshotter`] implements the semantics of containerd's overlayfs snapshotter (active,
//! view and committed snapshots, parent chains, labels, usage, cleanup) over a root directory
//! and a redb metadata database; [`serve`] exposes it as containerd's
//! `containerd.services.snapshots.v1.Snapshots` service on a unix socket; [`Client`] is the
//! typed client tests and tools use. Lazily pulled layers come in through the
//! [`RemoteLayers`] trait, which this crate only calls: the eStargz FUSE mount plugs in there.
//! [`cri`] is the CRI image-service proxy a Kubernetes node puts in front of containerd, so that
//! kubelet's per-pull credentials reach those lazily mounted layers.
//!
//! containerd loads it with:
//!
//! ```toml
//! [proxy_plugins.regfs]
//!   type = "snapshot"
//!   address = "/run/regfs/snapshotter.sock"
//! ```
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), regfs_snapshotter::Error> {
//! use std::sync::Arc;
//! let snapshotter = Arc::new(regfs_snapshotter::Snapshotter::open(
//!     std::path::Path::new("/var/lib/regfs/snapshotter"),
//!     None, // no remote layers: every layer is downloaded and unpacked by containerd
//! )?);
//! let listener = tokio::net::UnixListener::bind("/run/regfs/snapshotter.sock")
//!     .map_err(|e| regfs_snapshotter::Error::Io {
//!         op: "bind",
//!         path: "/run/regfs/snapshotter.sock".into(),
//!         source: e,
//!     })?;
//! regfs_snapshotter::serve(listener, snapshotter, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! # On-disk layout of the root
//!
//! ```text
//! <root>/
//! ├── metadata.db            redb: key -> {id, kind, parent, labels, times, usage, remote layer}
//! └── snapshots/
//!     └── <id>/              one per snapshot; ids are never reused
//!         ├── fs/            active: the overlay upperdir (or the bind-mounted root when it has
//!         │                  no parent); committed: a lowerdir of its children; remote: the
//!         │                  mountpoint of the lazy layer
//!         └── work/          active only: the overlay workdir
//! ```
//!
//! Mounts follow containerd's overlay snapshotter: an active snapshot without parent is a `rw`
//! bind of its `fs`; with parents it is `overlay` with `upperdir`, `workdir` and `lowerdir` of
//! the parents' `fs`, nearest parent first; a view is `overlay` with lowerdirs only, or a
//! read-only bind when it has exactly one parent (or none).
//!
//! # The remote flow
//!
//! 1. containerd calls Prepare(key, parent) with [`TARGET_LABEL`] (the chain ID it wants to end
//!    up with) and, for lazily pullable images, the stargz or CRI remote-layer labels.
//! 2. The snapshotter creates the active snapshot `key` as usual, parses the labels into a
//!    [`RemoteLayer`] and awaits [`RemoteLayers::mount`] on its `fs` directory (no lock held,
//!    so the layers of an image mount concurrently).
//! 3. On success, `key` becomes the committed snapshot named by the target label (labels kept,
//!    plus [`REMOTE_MARKER_LABEL`]), the [`RemoteMount`] guard is kept, and Prepare answers
//!    ALREADY_EXISTS: containerd finds the target by List/Stat and skips the download.
//! 4. On failure (no provider, bad labels, mount error) the reason is logged, counted in
//!    [`RemoteStatsSnapshot`] ([`Snapshotter::remote_stats`]), the directory is emptied and Prepare returns the ordinary mounts of
//!    `key`: containerd downloads and unpacks the layer as with any snapshotter.
//! 5. Remove unmounts the guard. At start-up [`serve`] mounts every persisted remote snapshot
//!    again before accepting connections; one that fails stays listed but its children's
//!    Mounts fail with [`Error::RemoteUnavailable`] naming it. Shutdown unmounts them all.
#![deny(missing_docs)]

mod client;
mod config;
pub mod cri;
mod error;
mod filter;
mod lazy;
mod metadata;
mod proto;
mod remote;
mod service;
mod snapshot;
mod snapshotter;

pub use client::Client;
pub use config::SnapshotterConfig;
pub use error::Error;
pub use lazy::{FailureKind, LazyLayers};
pub use remote::{
    CRI_IMAGE_LAYERS_LABEL, CRI_IMAGE_REF_LABEL, CRI_LAYER_DIGEST_LABEL, FallbackReason,
    REMOTE_MARKER_LABEL, RemoteError, RemoteLayer, RemoteLayers, RemoteMount, RemoteStatsSnapshot,
    STARGZ_DIGEST_LABEL, STARGZ_LAYERS_LABEL, STARGZ_REFERENCE_LABEL,
};
pub use service::serve;
pub use snapshot::{Info, Kind, Mount, TARGET_LABEL, Usage};
pub use snapshotter::Snapshotter;

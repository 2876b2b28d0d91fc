//! The seam for lazily mounted layers.
//!
//! containerd passes what it knows about a layer as Prepare labels: the stargz set
//! (`containerd.io/snapshot/remote/stargz.{reference,digest,layers}`, set by `ctr-remote image
//! rpull` and by stargz-aware pullers) or the CRI set
//! (`containerd.io/snapshot/cri.{image-ref,layer-digest,image-layers}`, set by the CRI plugin).
//! [`RemoteLayer::from_labels`] turns either into one typed value; a [`RemoteLayers`]
//! implementation mounts it on the snapshot's `fs` directory and hands back a [`RemoteMount`]
//! guard that the snapshotter keeps for as long as the snapshot exists.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::snapshot::Usage;

/// Image reference label of the stargz set.
pub const STARGZ_REFERENCE_LABEL: &str = "containerd.io/snapshot/remote/stargz.reference";
/// Layer digest label of the stargz set.
pub const STARGZ_DIGEST_LABEL: &str = "containerd.io/snapshot/remote/stargz.digest";
/// Comma-separated layer digests of the image, stargz set.
pub const STARGZ_LAYERS_LABEL: &str = "containerd.io/snapshot/remote/stargz.layers";
/// Image reference label of the CRI set.
pub const CRI_IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
/// Layer digest label of the CRI set.
pub const CRI_LAYER_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";
/// Comma-separated layer digests of the image, CRI set.
pub const CRI_IMAGE_LAYERS_LABEL: &str = "containerd.io/snapshot/cri.image-layers";
/// Set on every snapshot whose `fs` directory is a remote mount (value `regfs`).
pub const REMOTE_MARKER_LABEL: &str = "containerd.io/snapshot/remote";

/// `sha256:` digests are the only ones OCI images use in practice; their hex part is 64 chars.
const SHA256_HEX_LEN: usize = 64;

/// A layer to mount lazily, as named by containerd's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The image reference the layer belongs to (`registry/repo:tag`).
    pub image_ref: String,
    /// The layer's (compressed) digest, `sha256:<hex>`.
    pub layer_digest: String,
    /// All layer digests of the image, bottom first; may be truncated or empty (labels are
    /// size-limited, so pullers cut this list short).
    pub image_layers: Vec<String>,
}

impl RemoteLayer {
    /// The remote layer named by `labels`: `Ok(None)` when no remote-layer label is present, an
    /// [`Error::BadRemoteLabel`] when some are but they are incomplete or malformed. The stargz
    /// set wins over the CRI set when both are present.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Option<RemoteLayer>, Error> {
        let sets = [
            (
                STARGZ_REFERENCE_LABEL,
                STARGZ_DIGEST_LABEL,
                STARGZ_LAYERS_LABEL,
            ),
            (
                CRI_IMAGE_REF_LABEL,
                CRI_LAYER_DIGEST_LABEL,
                CRI_IMAGE_LAYERS_LABEL,
            ),
        ];
        let Some((reference, digest, layers)) = sets
            .into_iter()
            .find(|(r, d, l)| [r, d, l].iter().any(|k| labels.contains_key(**k)))
        else {
            return Ok(None);
        };
        let bad = |label: &str, reason: &str| Error::BadRemoteLabel {
            label: label.to_owned(),
            reason: reason.to_owned(),
        };
        let image_ref = labels
            .get(reference)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(reference, "missing or empty"))?;
        if image_ref.contains(char::is_whitespace) {
            return Err(bad(reference, "contains whitespace"));
        }
        let layer_digest = labels
            .get(digest)
            .ok_or_else(|| bad(digest, "missing"))?
            .trim();
        check_digest(layer_digest).map_err(|reason| bad(digest, &reason))?;
        let image_layers = match labels.get(layers) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(|d| {
                    check_digest(d)
                        .map(|()| d.to_owned())
                        .map_err(|reason| bad(layers, &reason))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Some(RemoteLayer {
            image_ref: image_ref.to_owned(),
            layer_digest: layer_digest.to_owned(),
            image_layers,
        }))
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {d:?} is not sha256:<hex>"))?;
    if hex.len() != SHA256_HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("digest {d:?} is not sha256:<64 hex>"));
    }
    Ok(())
}

/// Why a remote mount failed: a message plus the implementation's own error, if any.
pub type RemoteError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Mounts layers lazily (the eStargz FUSE filesystem, or a fake in tests).
pub trait RemoteLayers: Send + Sync + 'static {
    /// Mounts `layer` lazily at `mountpoint` (an existing empty directory). The returned guard
    /// unmounts on [`RemoteMount::unmount`] and on drop. Called concurrently for the layers of
    /// one image; the snapshotter holds no lock while the future runs.
    fn mount(
        &self,
        layer: RemoteLayer,
        mountpoint: PathBuf,
    ) -> BoxFuture<'static, Result<Box<dyn RemoteMount>, RemoteError>>;
}

/// A live remote mount, owned by the snapshotter for the lifetime of its snapshot.
pub trait RemoteMount: Send + Sync {
    /// Unmounts, reporting failure (dropping the guard also unmounts, silently).
    fn unmount(self: Box<Self>) -> Result<(), RemoteError>;
    /// What the layer occupies locally (cached bytes, inodes), for Usage.
    fn usage(&self) -> Usage;
}

/// Why a Prepare with a target and remote-layer labels fell back to an ordinary download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// No [`RemoteLayers`] was given to the snapshotter.
    NotConfigured,
    /// The remote-layer labels were incomplete or malformed.
    BadLabels,
    /// [`RemoteLayers::mount`] failed.
    MountFailed,
    /// The mount worked but recording the committed snapshot failed.
    CommitFailed,
}

/// Counters of the remote path (atomics: bumped from concurrent Prepares without a lock).
#[derive(Debug, Default)]
pub(crate) struct RemoteStats {
    mounted: AtomicU64,
    remounted: AtomicU64,
    remount_failed: AtomicU64,
    fallback_not_configured: AtomicU64,
    fallback_bad_labels: AtomicU64,
    fallback_mount_failed: AtomicU64,
    fallback_commit_failed: AtomicU64,
}

/// The remote-path counters at one moment ([`crate::Snapshotter::remote_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteStatsSnapshot {
    /// Prepares answered with a remote mount (ALREADY_EXISTS).
    pub mounted: u64,
    /// Remote snapshots mounted again at start-up.
    pub remounted: u64,
    /// Remote snapshots that could not be mounted again at start-up (now unavailable).
    pub remount_failed: u64,
    /// Fallbacks: no remote provider configured.
    pub fallback_not_configured: u64,
    /// Fallbacks: malformed remote labels.
    pub fallback_bad_labels: u64,
    /// Fallbacks: the provider's mount failed.
    pub fallback_mount_failed: u64,
    /// Fallbacks: committing the mounted snapshot failed.
    pub fallback_commit_failed: u64,
}

impl RemoteStats {
    pub(crate) fn mounted(&self) {
        self.mounted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn remounted(&self, ok: bool) {
        let counter = if ok {
            &self.remounted
        } else {
            &self.remount_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fallback(&self, reason: FallbackReason) {
        let counter = match reason {
            FallbackReason::NotConfigured => &self.fallback_not_configured,
            FallbackReason::BadLabels => &self.fallback_bad_labels,
            FallbackReason::MountFailed => &self.fallback_mount_failed,
            FallbackReason::CommitFailed => &self.fallback_commit_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> RemoteStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RemoteStatsSnapshot {
            mounted: get(&self.mounted),
            remounted: get(&self.remounted),
            remount_failed: get(&self.remount_failed),
            fallback_not_configured: get(&self.fallback_not_configured),
            fallback_bad_labels: get(&self.fallback_bad_labels),
            fallback_mount_failed: get(&self.fallback_mount_failed),
            fallback_commit_failed: get(&self.fallback_commit_failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn label_sets_parse_into_one_type() {
        let layers = format!("{D1},{D2}");
        let cases: Vec<(BTreeMap<String, String>, Option<RemoteLayer>)> = vec![
            (labels(&[("other", "x")]), None),
            (
                labels(&[
                    (STARGZ_REFERENCE_LABEL, "r:5000/busybox:1"),
                    (STARGZ_DIGEST_LABEL, D2),
                    (STARGZ_LAYERS_LABEL, &layers),
                ]),
                Some(RemoteLayer {
                    image_ref: "r:5000/busybox:1".into(),
                    layer_digest: D2.into(),
                    image_layers: vec![D1.into(), D2.into()],
                }),
            ),
            (
                labels(&[(CRI_IMAGE_REF_LABEL, "img"), (CRI_LAYER_DIGEST_LABEL, D1)]),
                Some(RemoteLayer {
                    image_ref: "img".into(),
                    layer_digest: D1.into(),
                    image_layers: vec![],
                }),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                RemoteLayer::from_labels(&input).ok(),
                Some(want),
                "{input:?}"
            );
        }
    }

    #[test]
    fn bad_labels_name_the_label() {
        let cases = [
            (labels(&[(STARGZ_DIGEST_LABEL, D1)]), STARGZ_REFERENCE_LABEL),
            (
                labels(&[
                    (STARGZ_REFERENCE_LABEL, "img"),
                    (STARGZ_DIGEST_LABEL, "sha256:12"),
                ]),
                STARGZ_DIGEST_LABEL,
            ),
            (
                labels(&[
                    (CRI_IMAGE_REF_LABEL, "img"),
                    (CRI_LAYER_DIGEST_LABEL, D1),
                    (CRI_IMAGE_LAYERS_LABEL, "md5:abc"),
                ]),
                CRI_IMAGE_LAYERS_LABEL,
            ),
        ];
        for (input, label) in cases {
            match RemoteLayer::from_labels(&input) {
                Err(Error::BadRemoteLabel { label: l, .. }) => assert_eq!(l, label),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }
}

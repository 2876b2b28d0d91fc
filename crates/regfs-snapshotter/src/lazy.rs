//! [`LazyLayers`]: the [`RemoteLayers`] that mounts eStargz layers through `regfs-image`.
//!
//! ```text
//! Prepare(layer 1 of img) ─┐
//! Prepare(layer 2 of img) ─┼─▶ one shared open of img (manifest, every tail + TOC, verified)
//! Prepare(layer 3 of img) ─┘        │ each layer taken out once
//!                                   ▼
//!            LazyImage::from_opened(one layer, per-layer view) ─▶ FUSE mount on the snapshot's fs
//!                                   └─▶ its landmark prefetch starts, as in `regfs mount`
//! ```
//!
//! containerd prepares the layers of one image concurrently; the first Prepare starts the open
//! of the whole image and the others wait for it, so the image costs one manifest fetch and one
//! tail read per layer, over one client (one connection pool, one token per registry scope). A
//! layer that is not eStargz, an unreachable registry or a TOC that fails verification is an
//! error: the snapshotter then logs it, counts it, and lets containerd download the layer. Each
//! layer fails alone: of an image mixing eStargz and plain layers, the eStargz ones are still
//! mounted lazily.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use regfs_blob::ChunkCache;
use regfs_estargz::Digest;
use regfs_image::{
    ImageLocation, LayerOutcomes, LazyImage, LazyOptions, OpenedImage, OpenedLayer, control,
};
use regfs_registry::Client;

use crate::remote::{RemoteError, RemoteLayer, RemoteLayers, RemoteMount};
use crate::snapshot::Usage;

/// An image being opened, or opened, for the layers still to be mounted.
type Opening = Shared<BoxFuture<'static, Result<Arc<OpenedLayers>, Arc<Failure>>>>;

/// Why a layer could not be mounted lazily (each is a fallback to a normal download).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The layer is not eStargz (a plain gzip/zstd layer).
    NotEstargz,
    /// Its TOC did not verify, or it has no TOC digest to verify against.
    Verification,
    /// The registry could not be reached or refused the requests.
    Registry,
    /// Anything else (a bad reference, a local error).
    Other,
}

impl FailureKind {
    /// The label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NotEstargz => "not_estargz",
            FailureKind::Verification => "verification",
            FailureKind::Registry => "registry",
            FailureKind::Other => "other",
        }
    }

    fn of(err: &regfs_image::Error) -> FailureKind {
        match err.root() {
            regfs_image::Error::NotEstargz { .. } => FailureKind::NotEstargz,
            regfs_image::Error::TocDigestMismatch { .. }
            | regfs_image::Error::UnverifiedToc { .. } => FailureKind::Verification,
            regfs_image::Error::Registry { .. }
            | regfs_image::Error::Manifest(_)
            | regfs_image::Error::Blob { .. } => FailureKind::Registry,
            _ => FailureKind::Other,
        }
    }

    const ALL: [FailureKind; 4] = [
        FailureKind::NotEstargz,
        FailureKind::Verification,
        FailureKind::Registry,
        FailureKind::Other,
    ];
}

/// A failed open: its kind (for the metrics) and the whole error chain (for the log).
#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    message: String,
}

/// An opened image whose layers are taken out one by one as containerd prepares them.
struct OpenedLayers {
    name: String,
    manifest_digest: Digest,
    config: oci_spec::image::ImageConfiguration,
    started: Instant,
    /// Each layer not taken yet: opened, or why not (a layer of a mixed image that is not
    /// eStargz fails alone; the image's other layers are still served lazily).
    layers: Mutex<HashMap<Digest, Result<OpenedLayer, Arc<Failure>>>>,
}

/// Mounts eStargz layers lazily, sharing one client and one chunk cache.
pub struct LazyLayers {
    client: Client,
    cache: Arc<ChunkCache>,
    options: LazyOptions,
    images: Mutex<HashMap<String, Opening>>,
    mounts: Arc<Mutex<HashMap<PathBuf, Arc<LazyImage>>>>,
    failures: Mutex<HashMap<FailureKind, u64>>,
}

impl LazyLayers {
    /// Layers opened with `client`, cached in `cache`; `options` says how (verification,
    /// prefetch, background fetch). `options.open.lazy_only` is forced on: a layer that is not
    /// eStargz is containerd's to download.
    pub fn new(client: Client, cache: Arc<ChunkCache>, mut options: LazyOptions) -> LazyLayers {
        options.open.lazy_only = true;
        LazyLayers {
            client,
            cache,
            options,
            images: Mutex::new(HashMap::new()),
            mounts: Arc::new(Mutex::new(HashMap::new())),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Layer mounts that failed (and fell back to a download), by kind.
    pub fn failures(&self) -> Vec<(FailureKind, u64)> {
        let f = lock(&self.failures);
        FailureKind::ALL
            .iter()
            .map(|k| (*k, f.get(k).copied().unwrap_or(0)))
            .collect()
    }

    /// Prometheus text: the snapshotter's remote counters, the failures by kind, and every live
    /// lazy mount's per-layer counters (labelled by mountpoint).
    pub fn prometheus(&self, remote: &crate::RemoteStatsSnapshot) -> String {
        let mut out = String::new();
        let counters = [
            (
                "regfs_snapshotter_remote_mounted_total",
                "layers mounted lazily",
                remote.mounted,
            ),
            (
                "regfs_snapshotter_remounted_total",
                "lazy layers mounted again at start-up",
                remote.remounted,
            ),
            (
                "regfs_snapshotter_remount_failed_total",
                "lazy layers that could not be mounted again at start-up",
                remote.remount_failed,
            ),
            (
                "regfs_snapshotter_fallback_bad_labels_total",
                "fallbacks to a download: malformed labels",
                remote.fallback_bad_labels,
            ),
            (
                "regfs_snapshotter_fallback_mount_failed_total",
                "fallbacks to a download: the lazy mount failed",
                remote.fallback_mount_failed,
            ),
            (
                "regfs_snapshotter_fallback_commit_failed_total",
                "fallbacks to a download: recording the snapshot failed",
                remote.fallback_commit_failed,
            ),
        ];
        for (name, help, value) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        }
        let name = "regfs_snapshotter_lazy_failures_total";
        out.push_str(&format!(
            "# HELP {name} lazy mounts that failed, by reason\n# TYPE {name} counter\n"
        ));
        for (kind, n) in self.failures() {
            out.push_str(&format!("{name}{{reason=\"{}\"}} {n}\n", kind.as_str()));
        }
        for (dir, image) in self.mounts() {
            let report = control::report(&image, &dir);
            out.push_str(&control::prometheus_labelled(
                &report,
                &[("mountpoint", &dir.display().to_string())],
            ));
        }
        out
    }

    fn failed(&self, failure: &Failure) -> RemoteError {
        *lock(&self.failures).entry(failure.kind).or_default() += 1;
        RemoteError::from(failure.message.clone())
    }

    /// The live mounts and their images, for `regfs stats` and the metrics endpoint.
    pub fn mounts(&self) -> Vec<(PathBuf, Arc<LazyImage>)> {
        lock(&self.mounts)
            .iter()
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect()
    }

    /// The shared open of `image_ref`, started by the first caller.
    fn opening(&self, image_ref: &str) -> Result<Opening, RemoteError> {
        let mut images = lock(&self.images);
        if let Some(o) = images.get(image_ref) {
            // A failed open is retried by the next Prepare, not remembered.
            if !matches!(o.peek(), Some(Err(_))) {
                return Ok(o.clone());
            }
        }
        let source = ImageLocation::parse(image_ref)?.source(&self.client)?;
        let (cache, options) = (self.cache.clone(), self.options.open.clone());
        let opening = async move {
            let started = Instant::now();
            let failure = |e: regfs_image::Error| {
                Arc::new(Failure {
                    kind: FailureKind::of(&e),
                    message: regfs_image::error_chain(&e),
                })
            };
            let LayerOutcomes {
                name,
                manifest_digest,
                config,
                layers,
            } = regfs_image::open_image_layers(&source, &cache, &options)
                .await
                .map_err(failure)?;
            Ok(Arc::new(OpenedLayers {
                name,
                manifest_digest,
                config,
                started,
                layers: Mutex::new(
                    layers
                        .into_iter()
                        .map(|(digest, layer)| (digest, layer.map_err(failure)))
                        .collect(),
                ),
            }))
        }
        .boxed()
        .shared();
        images.insert(image_ref.to_owned(), opening.clone());
        Ok(opening)
    }

    async fn mount_layer(
        self: Arc<Self>,
        layer: RemoteLayer,
        mountpoint: PathBuf,
    ) -> Result<Box<dyn RemoteMount>, RemoteError> {
        let digest: Digest = layer.layer_digest.parse()?;
        let opened = self
            .opening(&layer.image_ref)?
            .await
            .map_err(|e| self.failed(&e))?;
        let taken = lock(&opened.layers).remove(&digest);
        let (taken, started) = match taken {
            Some(l) => (l, opened.started),
            None => {
                // Mounted before (a remount after a restart, or the same layer twice): open
                // the image again for this layer alone.
                lock(&self.images).remove(&layer.image_ref);
                let again = self
                    .opening(&layer.image_ref)?
                    .await
                    .map_err(|e| self.failed(&e))?;
                let l = lock(&again.layers).remove(&digest).ok_or_else(|| {
                    RemoteError::from(format!("image {} has no layer {digest}", layer.image_ref))
                })?;
                (l, again.started)
            }
        };
        if lock(&opened.layers).is_empty() {
            lock(&self.images).remove(&layer.image_ref);
        }
        let taken = taken.map_err(|e| self.failed(&e))?;
        let image = OpenedImage {
            name: opened.name.clone(),
            manifest_digest: opened.manifest_digest,
            config: opened.config.clone(),
            layers: vec![taken],
        };
        let options = LazyOptions {
            layer: Some(digest),
            ..self.options.clone()
        };
        let image = Arc::new(LazyImage::from_opened(
            image,
            &self.cache,
            &options,
            started,
        )?);
        let guard = regfs_fs::mount(
            image.fs.clone(),
            &mountpoint,
            regfs_fs::MountOptions {
                allow_other: true,
                passthrough: true,
                fsname: format!("regfs:{}", image.name),
                ..Default::default()
            },
        )?;
        let control = control::socket_path(&mountpoint)
            .map_err(RemoteError::from)
            .and_then(|socket| {
                let task =
                    control::serve_socket(socket.clone(), image.clone(), mountpoint.clone())?;
                Ok((socket, tokio::spawn(task)))
            });
        let control = match control {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(dir = %mountpoint.display(), error = %e, "no stats socket for this mount");
                None
            }
        };
        lock(&self.mounts).insert(mountpoint.clone(), image.clone());
        tracing::info!(layer = %digest, image = %image.name, dir = %mountpoint.display(),
            open_ms = image.open_time.as_millis() as u64, "remote layer mounted");
        Ok(Box::new(LazyMount {
            guard: Some(guard),
            image,
            mountpoint,
            control,
            mounts: self.mounts.clone(),
        }))
    }
}

impl RemoteLayers for Arc<LazyLayers> {
    fn mount(
        &self,
        layer: RemoteLayer,
        mountpoint: PathBuf,
    ) -> BoxFuture<'static, Result<Box<dyn RemoteMount>, RemoteError>> {
        self.clone().mount_layer(layer, mountpoint).boxed()
    }
}

/// One mounted layer: unmounts, stops its stats socket and forgets itself when dropped.
struct LazyMount {
    guard: Option<regfs_fs::MountGuard>,
    image: Arc<LazyImage>,
    mountpoint: PathBuf,
    control: Option<(PathBuf, tokio::task::JoinHandle<regfs_image::Result<()>>)>,
    mounts: Arc<Mutex<HashMap<PathBuf, Arc<LazyImage>>>>,
}

impl LazyMount {
    fn release(&mut self) {
        if let Some((socket, task)) = self.control.take() {
            task.abort();
            let _ = std::fs::remove_file(socket);
        }
        lock(&self.mounts).remove(&self.mountpoint);
    }
}

impl RemoteMount for LazyMount {
    fn unmount(mut self: Box<Self>) -> Result<(), RemoteError> {
        self.release();
        match self.guard.take() {
            Some(guard) => guard.unmount().map_err(RemoteError::from),
            None => Ok(()),
        }
    }

    fn usage(&self) -> Usage {
        let stats = self.image.fs.stats();
        let fetched: u64 = stats.layers.iter().map(|l| l.bytes_fetched).sum();
        Usage {
            size: i64::try_from(fetched).unwrap_or(i64::MAX),
            inodes: i64::try_from(self.image.fs.inode_count()).unwrap_or(i64::MAX),
        }
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        self.release();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a map insert/remove: a panic cannot leave one half done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

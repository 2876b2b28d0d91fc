//! A lazily served image: registry → verified TOCs → [`ImageFs`], plus its prefetch tasks.
//!
//! Shared by `mount`, `run` and `optimize`. The filesystem is usable as soon as [`LazyImage::open`]
//! returns: the landmark prefetch and the optional whole-layer background fetch run as tokio
//! tasks owned by the [`LazyImage`]; dropping it aborts them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use oci_spec::image::ImageConfiguration;
use regfs_blob::{ChunkCache, ChunkStore, PlannerConfig};
use regfs_estargz::Digest;
use regfs_fs::{FsLayer, FsOptions, ImageFs};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::error::Context;
use crate::open::{OpenOptions, OpenedImage, open_image};
use crate::prefetch::{PrefetchPlan, all_chunks, fill_layer};
use crate::source::ImageSource;
use crate::{Error, Result};

/// Default cache directory (overridable by `--cache-dir` or `$REGFS_CACHE_DIR`).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/regfs/cache";

/// Subdirectory of the cache directory that holds the chunk store (`regfs cache` reads it too).
pub const STORE_SUBDIR: &str = "store";

/// The cache directory from `explicit`, `$REGFS_CACHE_DIR`, or the default.
pub fn cache_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("REGFS_CACHE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

/// Options of a lazily served image.
#[derive(Clone, Debug, Default)]
pub struct LazyOptions {
    /// How layers are opened (verification, platform, fallback).
    pub open: OpenOptions,
    /// Don't prefetch the prioritized files (`.prefetch.landmark` range) of each layer.
    pub no_prefetch: bool,
    /// After the prefetch, fetch whole layers at low priority (yielding to on-demand reads).
    pub background_fetch: bool,
    /// Record every file's first access (for `regfs optimize`).
    pub record_access: bool,
    /// Serve only this layer, the way overlayfs wants a lower directory (whiteouts as 0/0
    /// devices), instead of the merged view.
    pub layer: Option<Digest>,
}

/// The chunk cache under `cache_dir` (created if missing): shared by every layer and image
/// opened with it.
pub fn open_cache(cache_dir: &std::path::Path) -> Result<Arc<ChunkCache>> {
    open_capped_cache(cache_dir, None)
}

/// [`open_cache`] holding at most `max_bytes` of chunks (least recently used ones are evicted;
/// `None` = unbounded).
pub fn open_capped_cache(
    cache_dir: &std::path::Path,
    max_bytes: Option<u64>,
) -> Result<Arc<ChunkCache>> {
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating cache dir {}", cache_dir.display()))?;
    let store = ChunkStore::open(cache_dir.join(STORE_SUBDIR), max_bytes)
        .with_context(|| format!("opening chunk store in {}", cache_dir.display()))?;
    Ok(ChunkCache::new(store, PlannerConfig::default()))
}

/// Per-layer facts for stats and records.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerInfo {
    /// The layer blob.
    pub digest: Digest,
    /// Its compressed size.
    pub size: u64,
    /// Whether it is served lazily (`false`: not eStargz, fetched whole).
    pub lazy: bool,
    /// Bytes of its landmark prefetch range (0 without a landmark).
    pub prefetch_size: u64,
}

/// An image served by an [`ImageFs`], with its background tasks.
pub struct LazyImage {
    /// The image's name pinned to its manifest.
    pub name: String,
    /// The platform manifest's digest.
    pub manifest_digest: Digest,
    /// The image config (entrypoint, env, user…).
    pub config: ImageConfiguration,
    /// The filesystem, ready to serve or mount.
    pub fs: Arc<ImageFs>,
    /// Per-layer facts.
    pub layers: Vec<LayerInfo>,
    /// Time from the start of [`LazyImage::open`] to a usable filesystem.
    pub open_time: std::time::Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for LazyImage {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl LazyImage {
    /// Opens the image `source` names with the chunk cache `cache` and builds its filesystem
    /// (the merged view, or one layer's view); the prefetch starts at once, in tasks owned by
    /// the returned image.
    pub async fn open(
        source: &Arc<dyn ImageSource>,
        cache: &Arc<ChunkCache>,
        options: &LazyOptions,
    ) -> Result<LazyImage> {
        let start = Instant::now();
        let image = open_image(source, cache, &options.open)
            .await
            .with_context(|| format!("opening {}", source.name()))?;
        LazyImage::from_opened(image, cache, options, start)
    }

    /// Builds the filesystem of an image already opened (its TOCs verified), e.g. one layer
    /// taken out of an image whose layers are served separately; `start` is when the open
    /// began, for [`LazyImage::open_time`]. Must run inside a tokio runtime (the prefetch
    /// tasks start here).
    pub fn from_opened(
        image: OpenedImage,
        cache: &Arc<ChunkCache>,
        options: &LazyOptions,
        start: Instant,
    ) -> Result<LazyImage> {
        let mut tasks = Vec::new();
        let mut infos = Vec::new();
        let mut fs_layers = Vec::new();
        for l in image.layers {
            if !l.lazy {
                tracing::warn!(layer = %l.digest, "layer is not eStargz: served from a local copy, not lazily");
            }
            let plan = PrefetchPlan::of(&l.index);
            infos.push(LayerInfo {
                digest: l.digest,
                size: l.descriptor.size(),
                lazy: l.lazy,
                prefetch_size: plan.as_ref().map_or(0, |p| p.end),
            });
            let wanted = options.layer.is_none_or(|want| want == l.digest);
            let rest = if options.background_fetch && wanted {
                all_chunks(&l.index)
            } else {
                Vec::new()
            };
            let prefetch = plan.filter(|_| !options.no_prefetch && l.lazy && wanted);
            if prefetch.is_some() || !rest.is_empty() {
                tasks.push(tokio::spawn(fill_layer(
                    l.handle.clone(),
                    l.digest,
                    prefetch,
                    rest,
                )));
            }
            fs_layers.push(FsLayer {
                digest: l.digest,
                index: l.index,
                handle: l.handle,
            });
        }
        let fs_opts = FsOptions {
            record_access: options.record_access,
            cache: Some(cache.clone()),
        };
        tracing::debug!(ms = start.elapsed().as_millis() as u64, "layers opened");
        let fs = match options.layer {
            None => ImageFs::new(fs_layers, fs_opts),
            Some(want) => {
                let Some(pos) = fs_layers.iter().position(|l| l.digest == want) else {
                    return Err(Error::NoSuchLayer {
                        image: image.name,
                        layer: want,
                    });
                };
                ImageFs::single_layer(fs_layers.swap_remove(pos), fs_opts)
            }
        }
        .with_context(|| format!("building the filesystem of {}", image.name))?;
        tracing::debug!(ms = start.elapsed().as_millis() as u64, "filesystem built");
        Ok(LazyImage {
            name: image.name,
            manifest_digest: image.manifest_digest,
            config: image.config,
            fs: Arc::new(fs),
            layers: infos,
            open_time: start.elapsed(),
            tasks,
        })
    }
}

//! A lazily served image: registry → verified TOCs → [`ImageFs`], plus its prefetch tasks.
//!
//! Shared by `mount`, `run` and `optimize`. The filesystem is usable as soon as [`LazyImage::open`]
//! returns: the landmark prefetch and the optional whole-layer background fetch run as tokio
//! tasks owned by the [`LazyImage`]; dropping it aborts them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use oci_spec::image::ImageConfiguration;
use regfs_blob::{ChunkCache, ChunkStore, LayerHandle, PlannerConfig, RequestSource};
use regfs_estargz::{Chunk, Digest};
use regfs_fs::{FsLayer, FsOptions, ImageFs};
use regfs_registry::{Client, Reference};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::registry_args::RegistryArgs;
use crate::remote::{self, OpenOptions};

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

/// Options of a lazy image, shared by the subcommands that serve one.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LazyArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Chunk cache directory (default $REGFS_CACHE_DIR or /var/lib/regfs/cache).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Don't prefetch the prioritized files (`.prefetch.landmark` range) of each layer.
    #[arg(long)]
    pub no_prefetch: bool,
    /// After the prefetch, fetch whole layers at low priority (yielding to on-demand reads).
    #[arg(long)]
    pub background_fetch: bool,
    /// Mount layers whose TOC digest cannot be verified (no toc.digest annotation).
    #[arg(long)]
    pub insecure_skip_verify: bool,
}

/// Per-layer facts for stats and records.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerInfo {
    pub digest: Digest,
    pub size: u64,
    pub lazy: bool,
    pub prefetch_size: u64,
}

/// An image served by an [`ImageFs`], with its background tasks.
pub struct LazyImage {
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub config: ImageConfiguration,
    pub fs: Arc<ImageFs>,
    pub layers: Vec<LayerInfo>,
    pub client: Client,
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
    /// Opens `reference` and builds its filesystem (the merged view, or one layer's view).
    pub async fn open(
        args: &LazyArgs,
        reference: &str,
        layer: Option<Digest>,
        record_access: bool,
    ) -> anyhow::Result<LazyImage> {
        let start = Instant::now();
        let reference: Reference = reference
            .parse()
            .with_context(|| format!("invalid image reference {reference:?}"))?;
        let client = args.registry.client()?;
        let cache_dir = cache_dir(args.cache_dir.clone());
        std::fs::create_dir_all(&cache_dir)
            .with_context(|| format!("creating cache dir {}", cache_dir.display()))?;
        let store = ChunkStore::open(cache_dir.join(STORE_SUBDIR), None)
            .with_context(|| format!("opening chunk store in {}", cache_dir.display()))?;
        let cache = ChunkCache::new(store, PlannerConfig::default());
        let opts = OpenOptions {
            insecure_skip_verify: args.insecure_skip_verify,
            cache_dir: cache_dir.clone(),
        };
        let image = remote::open_image(
            &client,
            &reference,
            args.registry.platform.as_ref(),
            &cache,
            &opts,
        )
        .await?;

        let mut tasks = Vec::new();
        let mut infos = Vec::new();
        let mut fs_layers = Vec::new();
        for l in image.layers {
            if !l.lazy {
                tracing::warn!(layer = %l.digest, "layer is not eStargz: served from a local copy, not lazily");
            }
            let plan = remote::prefetch_plan(&l);
            infos.push(LayerInfo {
                digest: l.digest,
                size: l.descriptor.size(),
                lazy: l.lazy,
                prefetch_size: plan.as_ref().map_or(0, |(_, end)| *end),
            });
            let all_chunks: Vec<Chunk> = if args.background_fetch {
                l.index
                    .entries_in_toc_order()
                    .flat_map(|id| l.index.chunks(id).iter().cloned())
                    .collect()
            } else {
                Vec::new()
            };
            let prefetch = plan.filter(|_| !args.no_prefetch && l.lazy);
            if prefetch.is_some() || !all_chunks.is_empty() {
                tasks.push(tokio::spawn(fill_layer(
                    l.handle.clone(),
                    l.digest,
                    prefetch,
                    all_chunks,
                )));
            }
            fs_layers.push(FsLayer {
                digest: l.digest,
                index: l.index,
                handle: l.handle,
            });
        }
        let fs_opts = FsOptions {
            record_access,
            cache: Some(cache.clone()),
        };
        tracing::debug!(ms = start.elapsed().as_millis() as u64, "layers opened");
        let fs = match layer {
            None => ImageFs::new(fs_layers, fs_opts)?,
            Some(want) => {
                let Some(pos) = fs_layers.iter().position(|l| l.digest == want) else {
                    bail!("image {reference} has no layer {want}");
                };
                ImageFs::single_layer(fs_layers.swap_remove(pos), fs_opts)?
            }
        };
        tracing::debug!(ms = start.elapsed().as_millis() as u64, "filesystem built");
        Ok(LazyImage {
            reference: image.reference,
            manifest_digest: image.manifest_digest,
            config: image.config,
            fs: Arc::new(fs),
            layers: infos,
            client,
            open_time: start.elapsed(),
            tasks,
        })
    }
}

/// How many chunks one background request asks for; small enough that an on-demand read
/// arriving meanwhile waits for little.
const BACKGROUND_BATCH: usize = 32;

async fn fill_layer(
    handle: LayerHandle,
    digest: Digest,
    prefetch: Option<(Vec<Chunk>, u64)>,
    all_chunks: Vec<Chunk>,
) {
    if let Some((chunks, end)) = prefetch
        && let Err(e) = handle.prefetch(&chunks, end).await
    {
        tracing::warn!(layer = %digest, error = %e, "prefetch failed; reads will fetch on demand");
    }
    for batch in all_chunks.chunks(BACKGROUND_BATCH) {
        let missing: Vec<Chunk> = batch
            .iter()
            .filter(|c| !handle.is_cached(c))
            .cloned()
            .collect();
        if missing.is_empty() {
            continue;
        }
        if let Err(e) = handle
            .read_chunks(&missing, RequestSource::Background)
            .await
        {
            tracing::warn!(layer = %digest, error = %e, "background fetch stopped");
            return;
        }
    }
}

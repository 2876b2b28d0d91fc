//! `regfs snapshotter --address SOCK --root DIR [--config FILE]`: the containerd remote
//! snapshotter (proxy plugin `regfs`), serving eStargz layers lazily and every other layer as
//! containerd's overlayfs snapshotter would. SIGTERM or SIGINT stop it cleanly (its lazy mounts
//! are unmounted; a restart mounts them again before the socket opens).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use regfs_image::{LazyOptions, OpenOptions};
use regfs_snapshotter::{LazyLayers, RemoteLayers, Snapshotter, SnapshotterConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::args::RegistryArgs;

/// A registry name to set the client up for at start-up (its hosts.toml is read, if any);
/// which one does not matter as long as it needs no special TLS settings.
const TLS_WARM_REGISTRY: &str = "docker.io";

#[derive(clap::Args)]
pub struct Args {
    /// The unix socket containerd's `proxy_plugins.regfs.address` names.
    #[arg(
        long,
        value_name = "SOCK",
        default_value = "/run/regfs/snapshotter.sock"
    )]
    address: PathBuf,
    /// Snapshot data and metadata (`metadata.db`, `snapshots/`).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/regfs/snapshotter")]
    root: PathBuf,
    /// TOML configuration (cache, prefetch, hosts dir, metrics address; see docs).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The log filter the config asks for (REGFS_LOG wins); read before tracing is set up.
pub fn log_level(args: &Args) -> Option<String> {
    let path = args.config.as_ref()?;
    SnapshotterConfig::load(path).ok().map(|c| c.log_level)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => SnapshotterConfig::load(path)?,
        None => SnapshotterConfig::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, config))
}

async fn serve(args: Args, config: SnapshotterConfig) -> anyhow::Result<ExitCode> {
    let client = RegistryArgs {
        hosts_dir: config.hosts_dir.clone(),
        ..RegistryArgs::default()
    }
    .client()?;
    // The client builds its HTTP stack at the first use of a registry, and that loads the
    // system's root certificates (every file in /etc/ssl/certs): 40 ms to 200 ms here, the more
    // the busier the machine, all of it in the first Prepare before its manifest request goes
    // out (BENCHMARKS.md). Built now, at start-up, it is shared by every registry that has no
    // CA or client certificate of its own in hosts.toml. Asking for 0 connections, this opens
    // none: it touches no network.
    {
        let client = client.clone();
        tokio::spawn(async move { client.warm_up(TLS_WARM_REGISTRY, 0).await });
    }
    let cache_dir = regfs_image::cache_dir(config.cache_dir.clone());
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let store = regfs_blob::ChunkStore::open(
        cache_dir.join(regfs_image::STORE_SUBDIR),
        config.cache_max_bytes,
    )
    .with_context(|| format!("opening the chunk store in {}", cache_dir.display()))?;
    let cache = regfs_blob::ChunkCache::new(store, regfs_blob::PlannerConfig::default());
    let layers = Arc::new(LazyLayers::new(
        client,
        cache,
        LazyOptions {
            open: OpenOptions {
                insecure_skip_verify: config.insecure_skip_verify,
                cache_dir,
                lazy_only: true,
                platform: None,
            },
            no_prefetch: !config.prefetch,
            background_fetch: config.background_fetch,
            record_access: false,
            layer: None,
        },
    ));
    let remote: Arc<dyn RemoteLayers> = Arc::new(layers.clone());
    let snapshotter = Arc::new(Snapshotter::open(&args.root, Some(remote))?);
    if let Some(parent) = args.address.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(&args.address);
    let listener = tokio::net::UnixListener::bind(&args.address)
        .with_context(|| format!("binding {}", args.address.display()))?;
    let metrics = match config.metrics_address {
        Some(addr) => {
            let (layers, snapshotter) = (layers.clone(), snapshotter.clone());
            let task = regfs_image::control::serve_text(addr, move || {
                layers.prometheus(&snapshotter.remote_stats())
            })?;
            Some(tokio::spawn(task))
        }
        None => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(address = %args.address.display(), root = %args.root.display(), "snapshotter serving");
    regfs_snapshotter::serve(listener, snapshotter, async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
    .await?;
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&args.address);
    Ok(ExitCode::SUCCESS)
}

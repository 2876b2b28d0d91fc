//! `regfs snapshotter --address SOCK --root DIR [--config FILE] [--cri-proxy SOCK
//! --cri-upstream SOCK]`: the containerd remote snapshotter (proxy plugin `regfs`), serving
//! eStargz layers lazily and every other layer as containerd's overlayfs snapshotter would;
//! optionally also the CRI image-service proxy that hands kubelet's pull credentials to the lazy
//! layers. SIGTERM or SIGINT stop it cleanly (its lazy mounts are unmounted; a restart mounts
//! them again before the socket opens).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use regfs_image::{LazyOptions, OpenOptions};
use regfs_registry::{Client, Keychain};
use regfs_snapshotter::cri::CriKeychain;
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
    /// Also serve the CRI image service on this socket (kubelet's `--image-service-endpoint`),
    /// forwarding every call to containerd and keeping each PullImage's credentials for the
    /// image's lazily pulled layers.
    #[arg(long, value_name = "SOCK", requires = "cri_upstream")]
    cri_proxy: Option<PathBuf>,
    /// containerd's CRI socket the proxy forwards to (its `grpc.address`).
    #[arg(long, value_name = "SOCK", requires = "cri_proxy")]
    cri_upstream: Option<PathBuf>,
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
    let keychain = args
        .cri_proxy
        .as_ref()
        .map(|_| Arc::new(CriKeychain::new()));
    let mut client_config = RegistryArgs {
        hosts_dir: config.hosts_dir.clone(),
        ..RegistryArgs::default()
    }
    .config();
    client_config.keychain = keychain.clone().map(|k| k as Arc<dyn Keychain>);
    let client = Client::new(client_config).context("setting up the registry client")?;
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
    let listener = bind(&args.address)?;
    let metrics = match config.metrics_address {
        Some(addr) => {
            let (layers, snapshotter, keychain) =
                (layers.clone(), snapshotter.clone(), keychain.clone());
            let task = regfs_image::control::serve_text(addr, move || {
                let mut text = layers.prometheus(&snapshotter.remote_stats());
                if let Some(k) = &keychain {
                    text.push_str(&k.prometheus());
                }
                text
            })?;
            Some(tokio::spawn(task))
        }
        None => None,
    };
    // One signal stops both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let cri = match (&args.cri_proxy, &args.cri_upstream, keychain) {
        (Some(sock), Some(upstream), Some(keychain)) => {
            let listener = bind(sock)?;
            tracing::info!(address = %sock.display(), upstream = %upstream.display(), "CRI image-service proxy serving");
            Some(tokio::spawn(regfs_snapshotter::cri::serve_cri_proxy(
                listener,
                upstream.clone(),
                keychain,
                stopped(),
            )))
        }
        _ => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    tracing::info!(address = %args.address.display(), root = %args.root.display(), "snapshotter serving");
    let served = regfs_snapshotter::serve(listener, snapshotter, stopped()).await;
    if let Some(task) = cri {
        task.await.context("the CRI proxy task")??;
    }
    if let Some(m) = metrics {
        m.abort();
    }
    for sock in std::iter::once(&args.address).chain(&args.cri_proxy) {
        let _ = std::fs::remove_file(sock);
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Listens on the unix socket `path`, replacing a stale socket file a previous run left.
fn bind(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

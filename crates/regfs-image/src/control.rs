//! The control socket of a live mount: `regfs stats DIR` and `--metrics-addr` read it.
//!
//! ```text
//! /run/regfs/
//! └── <first 32 hex of sha256(canonical mount dir)>.sock   one per live mount; connect → JSON, EOF
//! ```
//! The mount process owns the socket and removes it on exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use regfs_estargz::Digest;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Result;
use crate::error::Context;
use crate::lazy::LazyImage;

/// Directory of the control sockets.
pub const RUN_DIR: &str = "/run/regfs";

/// The control socket of the mount at `dir`.
pub fn socket_path(dir: &Path) -> Result<PathBuf> {
    let canon = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    Ok(canonical_socket_path(&canon))
}

/// [`socket_path`] of a mount point already canonical, without touching it: a server taking
/// over a mount must not stat its own mount point before it serves it.
pub fn canonical_socket_path(canon: &Path) -> PathBuf {
    let d = Digest::sha256(canon.as_os_str().as_encoded_bytes());
    Path::new(RUN_DIR).join(format!("{}.sock", &d.hex()[..32]))
}

/// Servers of this process's mount before this one (see [`set_restarts`]).
static RESTARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records that `n` servers ran this process's mount before it (a keeper restarted it), for
/// [`MountReport::restarts`].
pub fn set_restarts(n: u64) {
    RESTARTS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// Everything `regfs stats` shows.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountReport {
    /// The image, pinned to its manifest.
    pub reference: String,
    /// Its manifest digest.
    pub manifest_digest: Digest,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The process serving the mount (`pid`, kept for older readers, is the same).
    pub server_pid: u32,
    /// The process serving the mount.
    pub pid: u32,
    /// How many servers of this mount died or were replaced before this one (a keeper restarts
    /// them without unmounting).
    pub restarts: u64,
    /// Milliseconds from the start of the open to a usable filesystem.
    pub open_ms: u128,
    /// Inodes in the merged tree.
    pub inodes: usize,
    /// Bytes of metadata held for them.
    pub metadata_bytes: usize,
    /// Layers that were not eStargz and were fetched whole.
    pub fallbacks: usize,
    /// Per-layer counters.
    pub layers: Vec<LayerReport>,
}

/// One layer's part of a [`MountReport`].
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerReport {
    /// The layer blob.
    pub digest: Digest,
    /// Its compressed size.
    pub size: u64,
    /// Whether it is served lazily.
    pub lazy: bool,
    /// Bytes of its landmark prefetch range.
    pub prefetch_size: u64,
    /// Its fetch and cache counters.
    #[serde(flatten)]
    pub stats: regfs_fs::LayerStats,
}

/// A snapshot of `image`'s counters.
pub fn report(image: &LazyImage, mountpoint: &Path) -> MountReport {
    let stats = image.fs.stats();
    let layers = image
        .layers
        .iter()
        .map(|info| {
            let stats = stats
                .layers
                .iter()
                .find(|s| s.digest == info.digest)
                .cloned()
                .unwrap_or_else(|| empty_stats(info.digest, info.size));
            LayerReport {
                digest: info.digest,
                size: info.size,
                lazy: info.lazy,
                prefetch_size: info.prefetch_size,
                stats,
            }
        })
        .collect();
    MountReport {
        reference: image.name.clone(),
        manifest_digest: image.manifest_digest,
        mountpoint: mountpoint.to_owned(),
        server_pid: std::process::id(),
        pid: std::process::id(),
        restarts: RESTARTS.load(std::sync::atomic::Ordering::Relaxed),
        open_ms: image.open_time.as_millis(),
        inodes: image.fs.inode_count(),
        metadata_bytes: image.fs.memory_bytes(),
        fallbacks: image.layers.iter().filter(|l| !l.lazy).count(),
        layers,
    }
}

fn empty_stats(digest: Digest, size: u64) -> regfs_fs::LayerStats {
    regfs_fs::LayerStats {
        digest,
        size,
        bytes_fetched: 0,
        requests: 0,
        cache_hits: 0,
        cache_misses: 0,
        prefetch: "not_started",
        verification_failures: 0,
        reads: 0,
        read_around_chunks: 0,
        read_errors: 0,
    }
}

/// Prometheus text exposition of `r`.
pub fn prometheus(r: &MountReport) -> String {
    prometheus_labelled(r, &[])
}

/// Prometheus text exposition of `r`, with `extra` labels on every sample (a process that
/// serves several mounts labels them by mountpoint).
pub fn prometheus_labelled(r: &MountReport, extra: &[(&str, &str)]) -> String {
    let extra: String = extra
        .iter()
        .map(|(k, v)| format!(",{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let mut out = String::new();
    type Metric = (&'static str, &'static str, fn(&LayerReport) -> u64);
    let metrics: [Metric; 8] = [
        ("regfs_layer_size_bytes", "compressed layer size", |l| {
            l.size
        }),
        (
            "regfs_layer_fetched_bytes",
            "compressed bytes fetched",
            |l| l.stats.bytes_fetched,
        ),
        (
            "regfs_layer_requests_total",
            "requests to the registry",
            |l| l.stats.requests,
        ),
        (
            "regfs_layer_cache_hits_total",
            "chunks served from the cache",
            |l| l.stats.cache_hits,
        ),
        ("regfs_layer_cache_misses_total", "chunks fetched", |l| {
            l.stats.cache_misses
        }),
        (
            "regfs_layer_verification_failures_total",
            "chunks with a wrong digest",
            |l| l.stats.verification_failures,
        ),
        ("regfs_layer_reads_total", "read() calls", |l| l.stats.reads),
        ("regfs_layer_lazy", "1 if the layer is served lazily", |l| {
            u64::from(l.lazy)
        }),
    ];
    for (name, help, get) in metrics {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for l in &r.layers {
            out.push_str(&format!(
                "{name}{{layer=\"{}\"{extra}}} {}\n",
                l.digest,
                get(l)
            ));
        }
    }
    let fallback_labels = extra
        .strip_prefix(',')
        .map(|l| format!("{{{l}}}"))
        .unwrap_or_default();
    out.push_str(&format!(
        "# HELP regfs_fallback_layers layers fetched whole (not eStargz)\n# TYPE regfs_fallback_layers gauge\nregfs_fallback_layers{fallback_labels} {}\n",
        r.fallbacks
    ));
    out
}

/// Binds `socket` now (so that `regfs stats` works as soon as the mount reports ready) and
/// returns the task serving JSON reports on it until aborted.
pub fn serve_socket(
    socket: PathBuf,
    image: Arc<LazyImage>,
    mountpoint: PathBuf,
) -> Result<impl std::future::Future<Output = Result<()>>> {
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    Ok(async move {
        loop {
            let (mut conn, _) = listener
                .accept()
                .await
                .context("accepting a stats client")?;
            let body = serde_json::to_vec(&report(&image, &mountpoint))
                .context("encoding the mount report")?;
            let _ = conn.write_all(&body).await;
        }
    })
}

/// Binds `addr` now (a taken address fails the mount) and returns the task serving
/// `GET /metrics` (Prometheus text) for `image` on it until aborted.
pub fn serve_metrics(
    addr: std::net::SocketAddr,
    image: Arc<LazyImage>,
    mountpoint: PathBuf,
) -> Result<impl std::future::Future<Output = Result<()>>> {
    serve_text(addr, move || prometheus(&report(&image, &mountpoint)))
}

/// Binds `addr` now and returns the task answering every HTTP request on it with `body()`
/// (Prometheus text) until aborted.
pub fn serve_text(
    addr: std::net::SocketAddr,
    body: impl Fn() -> String + Send + 'static,
) -> Result<impl std::future::Future<Output = Result<()>>> {
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding metrics address {addr}"))?;
    std_listener
        .set_nonblocking(true)
        .context("setting up the metrics listener")?;
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .context("setting up the metrics listener")?;
    Ok(async move {
        loop {
            let (mut conn, _) = listener
                .accept()
                .await
                .context("accepting a metrics client")?;
            let body = body();
            tokio::spawn(async move {
                // One request per connection: read the request head (bounded), answer, close.
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    })
}

/// Reads the report of the mount at `dir` from its control socket.
pub fn query(dir: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let socket = socket_path(dir)?;
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).with_context(|| {
        format!(
            "{} is not a live regfs mount (no {})",
            dir.display(),
            socket.display()
        )
    })?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body)
        .with_context(|| format!("reading {}", socket.display()))?;
    serde_json::from_slice(&body).context("parsing the mount's report")
}

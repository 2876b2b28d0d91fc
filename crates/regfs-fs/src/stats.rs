//! Per-layer statistics for `regfs stats`: the blob cache's counters plus the filesystem's own.

use std::sync::atomic::{AtomicU64, Ordering};

use regfs_blob::PrefetchState;
use regfs_estargz::Digest;
use serde::Serialize;

use crate::ImageFs;

/// Counters the filesystem keeps per layer, beside the cache's.
#[derive(Default)]
pub(crate) struct LayerCounters {
    reads: AtomicU64,
    read_around_chunks: AtomicU64,
    read_errors: AtomicU64,
}

impl LayerCounters {
    pub fn note_read(&self, read_around_chunks: usize) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_around_chunks
            .fetch_add(read_around_chunks as u64, Ordering::Relaxed);
    }

    pub fn note_error(&self) {
        self.read_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Statistics of every layer of a mounted image, bottom layer first.
#[derive(Clone, Debug, Serialize)]
pub struct FsStats {
    /// One entry per layer, in the image's layer order.
    pub layers: Vec<LayerStats>,
}

/// Statistics of one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerStats {
    /// Digest of the layer's compressed blob.
    pub digest: Digest,
    /// Compressed blob size.
    pub size: u64,
    /// Compressed bytes fetched from the source so far.
    pub bytes_fetched: u64,
    /// Requests made to the source.
    pub requests: u64,
    /// Chunks served from the local store.
    pub cache_hits: u64,
    /// Chunks fetched by this layer.
    pub cache_misses: u64,
    /// `not_started`, `running`, `done` or `failed`.
    pub prefetch: &'static str,
    /// Chunks whose bytes did not match their TOC digest.
    pub verification_failures: u64,
    /// `read()` calls served from this layer.
    pub reads: u64,
    /// Chunks of neighbouring files added to reads (read-around).
    pub read_around_chunks: u64,
    /// Reads that failed (each one was an `EIO`).
    pub read_errors: u64,
}

pub(crate) fn collect(fs: &ImageFs) -> FsStats {
    let layers = fs
        .layers
        .iter()
        .map(|l| {
            let s = l.handle.stats();
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            LayerStats {
                digest: l.digest,
                size: l.handle.blob().size,
                bytes_fetched: s.bytes_fetched,
                requests: s.requests,
                cache_hits: s.hits,
                cache_misses: s.misses,
                prefetch: match s.prefetch {
                    PrefetchState::NotStarted => "not_started",
                    PrefetchState::Running => "running",
                    PrefetchState::Done => "done",
                    PrefetchState::Failed => "failed",
                },
                verification_failures: s.verification_failures,
                reads: get(&l.counters.reads),
                read_around_chunks: get(&l.counters.read_around_chunks),
                read_errors: get(&l.counters.read_errors),
            }
        })
        .collect();
    FsStats { layers }
}

//! What a freshly opened layer fetches before anyone asks: the one prefetch planner.
//!
//! A layer converted with prioritized files carries `.prefetch.landmark`: every chunk whose
//! gzip member starts before it belongs to a file the workload is known to read at start-up,
//! and the whole range `[0, landmark)` is fetched in a few large requests as soon as the TOC is
//! in ([`PrefetchPlan`]). With background fetch, the rest of the layer follows in small
//! batches at the lowest priority, so that an on-demand read waits for little.

use regfs_blob::{LayerHandle, RequestSource};
use regfs_estargz::{Chunk, Digest, TocIndex};

/// How many chunks one background request asks for; small enough that an on-demand read
/// arriving meanwhile waits for little.
const BACKGROUND_BATCH: usize = 32;

/// The landmark prefetch of one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchPlan {
    /// The chunks whose members lie before the landmark, in TOC order.
    pub chunks: Vec<Chunk>,
    /// The landmark's blob offset: the range `[0, end)` is fetched.
    pub end: u64,
}

impl PrefetchPlan {
    /// The plan of a layer whose TOC has a `.prefetch.landmark`; `None` without one.
    pub fn of(index: &TocIndex) -> Option<PrefetchPlan> {
        let end = index.prefetch_landmark()?;
        let chunks = index
            .entries_in_toc_order()
            .flat_map(|id| index.chunks(id).iter())
            .filter(|c| c.offset < end)
            .cloned()
            .collect();
        Some(PrefetchPlan { chunks, end })
    }
}

/// Every chunk of the layer, in TOC order (for the background fetch).
pub fn all_chunks(index: &TocIndex) -> Vec<Chunk> {
    index
        .entries_in_toc_order()
        .flat_map(|id| index.chunks(id).iter().cloned())
        .collect()
}

/// Runs a layer's prefetch, then (if given) fetches `rest` in the background. Failures are
/// logged, never fatal: reads fetch on demand whatever happened here.
pub async fn fill_layer(
    handle: LayerHandle,
    digest: Digest,
    prefetch: Option<PrefetchPlan>,
    rest: Vec<Chunk>,
) {
    if let Some(plan) = prefetch
        && let Err(e) = handle.prefetch(&plan.chunks, plan.end).await
    {
        tracing::warn!(layer = %digest, error = %e, "prefetch failed; reads will fetch on demand");
    }
    for batch in rest.chunks(BACKGROUND_BATCH) {
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

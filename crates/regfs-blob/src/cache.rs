//! The verified chunk cache: store lookups, single-flight, planned fetches, priorities.
//!
//! Life of a [`LayerHandle::read_chunks`] call:
//!
//! 1. Every chunk is checked against the layer (bounded sizes, member inside the data area,
//!    digest present unless the layer is unverified) and keyed by its digest.
//! 2. Chunks in the [`ChunkStore`] are read from disk (a hit; a *dedup hit* if another layer
//!    fetched it).
//! 3. For the rest, the in-flight map decides: if another call is already fetching the chunk, we
//!    *join* it and wait for its result; otherwise we *claim* it. Identical chunks of different
//!    layers share one key, so they are fetched once.
//! 4. Claimed chunks' gzip members (`[offset, min(next_offset, toc_offset))`) go through the
//!    [planner](crate::PlannerConfig) and each planned request runs as its own task: it takes a
//!    permit of its class, calls [`BlobSource::read_ranges`] once, then decompresses and verifies
//!    every member on the blocking pool in parallel, stores verified chunks, and publishes each
//!    result to all waiters. Nothing unverified is ever stored or returned.
//!
//! Fetch tasks are spawned, so a reader that gives up (an interrupted `read(2)`) does not cancel
//! a fetch other readers wait on.
//!
//! Priority: each [`RequestSource`] class has its own semaphore, so on-demand requests never queue
//! behind prefetch or background ones. Prefetch and background requests additionally wait until no
//! on-demand read is in flight before they start. If an on-demand read joins a chunk that a queued
//! prefetch or background request has claimed, it *boosts* that request: the request then takes an
//! on-demand permit at once instead of waiting for its own class.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use regfs_estargz::{Chunk, Digest, decode_chunk};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::planner::{self, PlannerConfig};
use crate::store::MAX_CHUNK_SIZE;
use crate::{BlobSource, ChunkStore, Error, RequestSource};

/// The largest compressed member we fetch for one chunk. A member holds one chunk (deflate grows
/// incompressible data by well under 1 %) plus a few tar headers, or several small packed chunks;
/// twice the largest chunk is generous and still bounds what a hostile TOC can make us download.
pub const MAX_MEMBER_BYTES: u64 = 2 * MAX_CHUNK_SIZE;

/// How often one read looks for a chunk in the store before it claims it for fetching: each
/// extra round only happens when eviction deleted the chunk between two looks.
const MAX_STORE_ROUNDS: usize = 3;

/// One layer blob as the cache needs it.
#[derive(Clone)]
pub struct LayerBlob {
    /// The compressed blob's digest (the layer digest).
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Where the TOC member starts; chunk members are clamped to end here.
    pub toc_offset: u64,
    /// Where the bytes come from.
    pub source: Arc<dyn BlobSource>,
    /// `false` allows chunks without a digest (legacy stargz mounted as unverified); such chunks
    /// are never written to the content-addressed store. Chunks with a digest are always verified.
    pub verify: bool,
}

impl std::fmt::Debug for LayerBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBlob")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("toc_offset", &self.toc_offset)
            .field("source", &self.source.name())
            .field("verify", &self.verify)
            .finish()
    }
}

/// Progress of a layer's landmark prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefetchState {
    /// [`LayerHandle::prefetch`] has not been called on this layer.
    NotStarted,
    /// A prefetch is fetching the chunks before the landmark.
    Running,
    /// The last prefetch stored every chunk it was asked for.
    Done,
    /// The last prefetch ended with an error; on-demand reads still work.
    Failed,
}

/// Counters of one layer handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LayerStats {
    /// `read_ranges` calls made for this layer.
    pub requests: u64,
    /// Compressed bytes received for this layer.
    pub bytes_fetched: u64,
    /// Chunks served from the store.
    pub hits: u64,
    /// Of the hits, chunks that another layer had fetched (identical content, stored once).
    pub dedup_hits: u64,
    /// Chunks this layer claimed and fetched.
    pub misses: u64,
    /// Chunks another in-flight fetch was already getting (single-flight).
    pub joined: u64,
    /// Chunks whose bytes failed to decompress or hash to their digest.
    pub verification_failures: u64,
    /// Landmark prefetch progress.
    pub prefetch: PrefetchState,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes_fetched: AtomicU64,
    hits: AtomicU64,
    dedup_hits: AtomicU64,
    misses: AtomicU64,
    joined: AtomicU64,
    verification_failures: AtomicU64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ChunkKey {
    Verified(Digest),
    /// A digest-less chunk of an unverified layer: single-flighted by position, never stored.
    Unverified {
        layer: Digest,
        offset: u64,
        inner_offset: u64,
        size: u64,
    },
}

type Outcome = Option<Result<Bytes, Error>>;

struct Flight {
    tx: watch::Sender<Outcome>,
    /// Shared by every chunk of one planned request; see the module doc.
    boost: Arc<Notify>,
    layer: Digest,
}

struct CacheInner {
    store: ChunkStore,
    cfg: PlannerConfig,
    flights: Mutex<HashMap<ChunkKey, Arc<Flight>>>,
    /// Which layer first fetched each chunk in this process (for the dedup counter).
    fetched_by: Mutex<HashMap<Digest, Digest>>,
    on_demand: Arc<Semaphore>,
    prefetch: Arc<Semaphore>,
    background: Arc<Semaphore>,
    on_demand_active: watch::Sender<usize>,
}

impl CacheInner {
    fn flights(&self) -> MutexGuard<'_, HashMap<ChunkKey, Arc<Flight>>> {
        // Map updates cannot panic midway; a poisoned lock still guards a consistent map.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fetched_by(&self) -> MutexGuard<'_, HashMap<Digest, Digest>> {
        self.fetched_by.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn permit(&self, class: RequestSource, boost: &Notify) -> Option<OwnedSemaphorePermit> {
        let own = match class {
            RequestSource::OnDemand | RequestSource::ReadAhead => {
                return self.on_demand.clone().acquire_owned().await.ok();
            }
            RequestSource::Prefetch => self.prefetch.clone(),
            RequestSource::Background => self.background.clone(),
        };
        let mut active = self.on_demand_active.subscribe();
        tokio::select! {
            biased;
            _ = boost.notified() => self.on_demand.clone().acquire_owned().await.ok(),
            permit = async {
                // The sender lives in self, so this cannot fail while we run.
                let _ = active.wait_for(|n| *n == 0).await;
                own.acquire_owned().await.ok()
            } => permit,
        }
    }
}

/// Counts an on-demand read in flight for as long as it lives.
struct OnDemandGuard(Arc<CacheInner>);

impl OnDemandGuard {
    fn new(cache: &Arc<CacheInner>) -> OnDemandGuard {
        cache.on_demand_active.send_modify(|n| *n += 1);
        OnDemandGuard(cache.clone())
    }
}

impl Drop for OnDemandGuard {
    fn drop(&mut self) {
        self.0
            .on_demand_active
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One planned request: its ranges, its boost signal, and the chunks it will publish.
type PlannedRequest = (Vec<Range<u64>>, Arc<Notify>, Vec<Claim>);

/// A claimed chunk: the fetch task owns it and must publish a result. Dropping it without one
/// publishes [`Error::Abandoned`].
struct Claim {
    cache: Arc<CacheInner>,
    key: ChunkKey,
    flight: Arc<Flight>,
    chunk: Chunk,
    member: Range<u64>,
}

impl Claim {
    fn finish(self, result: Result<Bytes, Error>) {
        self.publish(result);
    }

    /// Leaves the in-flight map first, then answers the waiters: a reader arriving in between
    /// finds the chunk in the store (stored before this call) or claims it anew, and never joins
    /// a fetch that already failed.
    fn publish(&self, result: Result<Bytes, Error>) {
        {
            let mut flights = self.cache.flights();
            if flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&self.key);
            }
        }
        self.flight.tx.send_replace(Some(result));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.flight.tx.borrow().is_none() {
            self.publish(Err(Error::Abandoned {
                layer: self.flight.layer,
                offset: self.chunk.offset,
            }));
        }
    }
}

/// Chunk store + single-flight + request planner + counters. Shared as `Arc<ChunkCache>`.
pub struct ChunkCache {
    inner: Arc<CacheInner>,
}

impl ChunkCache {
    /// A cache over `store` using `cfg` for planning and concurrency.
    pub fn new(store: ChunkStore, cfg: PlannerConfig) -> Arc<ChunkCache> {
        // A zero budget would deadlock every read of that class.
        let sem = |n: usize| Arc::new(Semaphore::new(n.max(1)));
        Arc::new(ChunkCache {
            inner: Arc::new(CacheInner {
                store,
                on_demand: sem(cfg.on_demand_requests),
                prefetch: sem(cfg.prefetch_requests),
                background: sem(cfg.background_requests),
                cfg,
                flights: Mutex::new(HashMap::new()),
                fetched_by: Mutex::new(HashMap::new()),
                on_demand_active: watch::Sender::new(0),
            }),
        })
    }

    /// The store underneath.
    pub fn store(&self) -> &ChunkStore {
        &self.inner.store
    }

    /// A handle reading chunks of one layer blob.
    pub fn layer(&self, blob: LayerBlob) -> LayerHandle {
        LayerHandle {
            cache: self.inner.clone(),
            layer: Arc::new(LayerState {
                blob,
                counters: Counters::default(),
                prefetch: AtomicU8::new(PREFETCH_NOT_STARTED),
            }),
        }
    }
}

const PREFETCH_NOT_STARTED: u8 = 0;
const PREFETCH_RUNNING: u8 = 1;
const PREFETCH_DONE: u8 = 2;
const PREFETCH_FAILED: u8 = 3;

struct LayerState {
    blob: LayerBlob,
    counters: Counters,
    prefetch: AtomicU8,
}

/// Reads verified chunks of one layer through the cache. Cheap to clone.
#[derive(Clone)]
pub struct LayerHandle {
    cache: Arc<CacheInner>,
    layer: Arc<LayerState>,
}

/// How one unique chunk of a call is satisfied.
enum Plan {
    Hit(Bytes),
    Wait(watch::Receiver<Outcome>),
}

impl LayerHandle {
    /// The layer this handle reads.
    pub fn blob(&self) -> &LayerBlob {
        &self.layer.blob
    }

    /// Each chunk's verified uncompressed bytes, in order. See the module doc for the path a
    /// miss takes.
    pub async fn read_chunks(
        &self,
        chunks: &[Chunk],
        src: RequestSource,
    ) -> Result<Vec<Bytes>, Error> {
        let found = self.fetch(chunks, src, true).await?;
        found
            .into_iter()
            .zip(chunks)
            .map(|(b, c)| {
                b.ok_or(Error::Abandoned {
                    layer: self.layer.blob.digest,
                    offset: c.offset,
                })
            })
            .collect()
    }

    /// Fetches and stores every chunk whose member starts in `[0, end)` (the landmark prefetch
    /// range), in few large requests.
    pub async fn prefetch(&self, chunks: &[Chunk], end: u64) -> Result<(), Error> {
        self.layer
            .prefetch
            .store(PREFETCH_RUNNING, Ordering::SeqCst);
        let wanted: Vec<Chunk> = chunks
            .iter()
            .filter(|c| c.offset < end && !self.is_cached(c))
            .cloned()
            .collect();
        let result = self
            .fetch(&wanted, RequestSource::Prefetch, false)
            .await
            .map(drop);
        let state = if result.is_ok() {
            PREFETCH_DONE
        } else {
            PREFETCH_FAILED
        };
        self.layer.prefetch.store(state, Ordering::SeqCst);
        result
    }

    /// Whether the chunk is in the store now.
    pub fn is_cached(&self, chunk: &Chunk) -> bool {
        chunk.digest.is_some_and(|d| self.cache.store.contains(&d))
    }

    /// This handle's counters.
    pub fn stats(&self) -> LayerStats {
        let c = &self.layer.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LayerStats {
            requests: get(&c.requests),
            bytes_fetched: get(&c.bytes_fetched),
            hits: get(&c.hits),
            dedup_hits: get(&c.dedup_hits),
            misses: get(&c.misses),
            joined: get(&c.joined),
            verification_failures: get(&c.verification_failures),
            prefetch: match self.layer.prefetch.load(Ordering::SeqCst) {
                PREFETCH_RUNNING => PrefetchState::Running,
                PREFETCH_DONE => PrefetchState::Done,
                PREFETCH_FAILED => PrefetchState::Failed,
                _ => PrefetchState::NotStarted,
            },
        }
    }

    /// The compressed member range of `c` and its single-flight key, after bounds checks.
    fn check(&self, c: &Chunk) -> Result<(Range<u64>, ChunkKey), Error> {
        let blob = &self.layer.blob;
        let bad = |reason| Error::BadChunk {
            layer: blob.digest,
            offset: c.offset,
            reason,
        };
        if c.chunk_size > MAX_CHUNK_SIZE {
            return Err(bad("chunk size exceeds MAX_CHUNK_SIZE"));
        }
        if blob.toc_offset > blob.size {
            return Err(bad("layer toc offset is past the blob end"));
        }
        if c.offset >= blob.toc_offset {
            return Err(bad("member starts at or after the toc"));
        }
        let end = c.next_offset.min(blob.toc_offset);
        if end <= c.offset {
            return Err(bad("member ends before it starts"));
        }
        if end - c.offset > MAX_MEMBER_BYTES {
            return Err(bad("member exceeds MAX_MEMBER_BYTES"));
        }
        if c.inner_offset.checked_add(c.chunk_size).is_none() {
            return Err(bad("inner offset plus chunk size overflows"));
        }
        let key = match (c.digest, blob.verify) {
            (Some(d), _) => ChunkKey::Verified(d),
            (None, true) => {
                return Err(Error::MissingDigest {
                    layer: blob.digest,
                    offset: c.offset,
                });
            }
            (None, false) => ChunkKey::Unverified {
                layer: blob.digest,
                offset: c.offset,
                inner_offset: c.inner_offset,
                size: c.chunk_size,
            },
        };
        Ok((c.offset..end, key))
    }

    /// The engine behind `read_chunks` (`collect`) and `prefetch` (results dropped as they come,
    /// so a large prefetch does not hold every chunk in memory).
    async fn fetch(
        &self,
        chunks: &[Chunk],
        src: RequestSource,
        collect: bool,
    ) -> Result<Vec<Option<Bytes>>, Error> {
        let me = self.layer.blob.digest;
        let counters = &self.layer.counters;
        let mut checked = Vec::with_capacity(chunks.len());
        for c in chunks {
            checked.push(self.check(c)?);
        }

        // Unique keys, in first-seen order; `slot[i]` maps chunk i to its unique key.
        let mut unique: Vec<(ChunkKey, usize)> = Vec::new();
        let mut slot_of_key: HashMap<ChunkKey, usize> = HashMap::new();
        let mut slot = Vec::with_capacity(chunks.len());
        for (i, (_, key)) in checked.iter().enumerate() {
            let s = *slot_of_key.entry(key.clone()).or_insert_with(|| {
                unique.push((key.clone(), i));
                unique.len() - 1
            });
            slot.push(s);
        }

        let mut plans: Vec<Option<Plan>> = (0..unique.len()).map(|_| None).collect();
        self.read_hits(&unique, &mut plans, collect).await?;

        let _guard = (src == RequestSource::OnDemand && plans.iter().any(Option::is_none))
            .then(|| OnDemandGuard::new(&self.cache));

        // Join or claim every chunk not found in the store, all under the in-flight lock so
        // that two calls never claim the same chunk. A chunk that appeared in the store meanwhile
        // is read from there; if eviction removes it again before we read it, go around again
        // (and claim it regardless on the last round).
        for round in 0..=MAX_STORE_ROUNDS {
            let mut requests: Vec<PlannedRequest> = Vec::new();
            let mut recheck = false;
            {
                let mut flights = self.cache.flights();
                let mut to_claim = Vec::new();
                for (s, (key, _)) in unique.iter().enumerate() {
                    if plans[s].is_some() {
                        continue;
                    }
                    if let Some(f) = flights.get(key) {
                        counters.joined.fetch_add(1, Ordering::Relaxed);
                        if f.layer != me {
                            counters.dedup_hits.fetch_add(1, Ordering::Relaxed);
                        }
                        if src == RequestSource::OnDemand {
                            f.boost.notify_one();
                        }
                        plans[s] = Some(Plan::Wait(f.tx.subscribe()));
                        continue;
                    }
                    // A fetch that finished since `read_hits` stored the chunk before leaving the map.
                    if let ChunkKey::Verified(d) = key
                        && round < MAX_STORE_ROUNDS
                        && self.cache.store.contains(d)
                    {
                        recheck = true;
                        continue;
                    }
                    to_claim.push(s);
                }
                let members: Vec<Range<u64>> = to_claim
                    .iter()
                    .map(|&s| checked[unique[s].1].0.clone())
                    .collect();
                for request in planner::plan(&members, &self.cache.cfg) {
                    requests.push((request.ranges, Arc::new(Notify::new()), Vec::new()));
                }
                for &s in &to_claim {
                    let (key, i) = &unique[s];
                    let member = checked[*i].0.clone();
                    // The planner covers every member, so a request is always found.
                    let Some((_, boost, claims)) = requests.iter_mut().find(|(ranges, _, _)| {
                        ranges
                            .iter()
                            .any(|r| r.start <= member.start && member.end <= r.end)
                    }) else {
                        return Err(Error::Abandoned {
                            layer: me,
                            offset: chunks[*i].offset,
                        });
                    };
                    let flight = Arc::new(Flight {
                        tx: watch::Sender::new(None),
                        boost: boost.clone(),
                        layer: me,
                    });
                    flights.insert(key.clone(), flight.clone());
                    plans[s] = Some(Plan::Wait(flight.tx.subscribe()));
                    counters.misses.fetch_add(1, Ordering::Relaxed);
                    claims.push(Claim {
                        cache: self.cache.clone(),
                        key: key.clone(),
                        flight,
                        chunk: chunks[*i].clone(),
                        member,
                    });
                }
            }
            for (ranges, boost, claims) in requests {
                let cache = self.cache.clone();
                let layer = self.layer.clone();
                tokio::spawn(async move {
                    let _permit = cache.permit(src, &boost).await;
                    run_request(&layer, ranges, claims).await;
                });
            }

            if !recheck {
                break;
            }
            self.read_hits(&unique, &mut plans, collect).await?;
        }

        // Collect results. Without `collect`, each result is dropped as soon as it arrives.
        let offsets: Vec<u64> = unique.iter().map(|(_, i)| chunks[*i].offset).collect();
        let offsets = &offsets;
        let mut pending: FuturesUnordered<_> = plans
            .into_iter()
            .enumerate()
            .map(|(s, p)| async move {
                match p {
                    Some(Plan::Hit(b)) => (s, Ok(Some(b))),
                    Some(Plan::Wait(mut rx)) => {
                        let r = match rx.wait_for(Option::is_some).await {
                            Ok(v) => v.clone().map(|r| r.map(Some)),
                            Err(_) => None,
                        };
                        let abandoned = Error::Abandoned {
                            layer: me,
                            offset: offsets[s],
                        };
                        (s, r.unwrap_or(Err(abandoned)))
                    }
                    None => (s, Ok(None)),
                }
            })
            .collect();
        let mut by_slot: Vec<Option<Bytes>> = vec![None; unique.len()];
        let mut first_err = None;
        while let Some((s, r)) = pending.next().await {
            match r {
                Ok(b) if collect => by_slot[s] = b,
                Ok(_) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(slot.into_iter().map(|s| by_slot[s].clone()).collect())
    }

    /// Fills `plans[s]` with `Plan::Hit` for every verified key found in the store. Without
    /// `collect`, presence is enough and nothing is read.
    async fn read_hits(
        &self,
        unique: &[(ChunkKey, usize)],
        plans: &mut [Option<Plan>],
        collect: bool,
    ) -> Result<(), Error> {
        let present: Vec<(usize, Digest)> = unique
            .iter()
            .enumerate()
            .filter_map(|(s, (k, _))| match k {
                ChunkKey::Verified(d) if plans[s].is_none() && self.cache.store.contains(d) => {
                    Some((s, *d))
                }
                _ => None,
            })
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        let found: Vec<(usize, Digest, Option<Bytes>)> = if collect {
            let store = self.cache.store.clone();
            tokio::task::spawn_blocking(move || {
                present
                    .into_iter()
                    .map(|(s, d)| Ok((s, d, store.get(&d)?)))
                    .collect::<Result<Vec<_>, Error>>()
            })
            .await
            .map_err(|e| Error::io("read chunk", "<blocking task>", std::io::Error::other(e)))??
        } else {
            present
                .into_iter()
                .map(|(s, d)| (s, d, Some(Bytes::new())))
                .collect()
        };
        let me = self.layer.blob.digest;
        let counters = &self.layer.counters;
        let fetched_by = self.cache.fetched_by();
        for (s, d, bytes) in found {
            let Some(bytes) = bytes else { continue };
            counters.hits.fetch_add(1, Ordering::Relaxed);
            if fetched_by.get(&d).is_some_and(|l| *l != me) {
                counters.dedup_hits.fetch_add(1, Ordering::Relaxed);
            }
            plans[s] = Some(Plan::Hit(bytes));
        }
        Ok(())
    }
}

/// One planned request: fetch, check lengths, decode + verify + store each chunk in parallel,
/// publish results.
async fn run_request(layer: &Arc<LayerState>, ranges: Vec<Range<u64>>, claims: Vec<Claim>) {
    let blob = &layer.blob;
    let counters = &layer.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let parts = match blob.source.read_ranges(&blob.digest, &ranges).await {
        Ok(parts) => parts,
        Err(e) => {
            claims.into_iter().for_each(|c| c.finish(Err(e.clone())));
            return;
        }
    };
    let received: u64 = parts.iter().map(|p| p.len() as u64).sum();
    counters
        .bytes_fetched
        .fetch_add(received, Ordering::Relaxed);
    if parts.len() != ranges.len() {
        let e = Error::RangeCount {
            blob: blob.digest,
            asked: ranges.len(),
            got: parts.len(),
        };
        claims.into_iter().for_each(|c| c.finish(Err(e.clone())));
        return;
    }
    if let Some((r, p)) = ranges
        .iter()
        .zip(&parts)
        .find(|(r, p)| p.len() as u64 != r.end - r.start)
    {
        let e = Error::ShortRead {
            blob: blob.digest,
            range: r.clone(),
            got: p.len() as u64,
        };
        claims.into_iter().for_each(|c| c.finish(Err(e.clone())));
        return;
    }

    let mut decodes = FuturesUnordered::new();
    for claim in claims {
        let Some((r, part)) = ranges
            .iter()
            .zip(&parts)
            .find(|(r, _)| r.start <= claim.member.start && claim.member.end <= r.end)
        else {
            // Unreachable by construction of the plan; dropping the claim reports it abandoned.
            continue;
        };
        // Both bounds are inside a part whose length equals its range (checked above).
        let member = part
            .slice((claim.member.start - r.start) as usize..(claim.member.end - r.start) as usize);
        let layer = layer.clone();
        decodes.push(async move {
            let chunk = claim.chunk.clone();
            let key = claim.key.clone();
            let cache = claim.cache.clone();
            let digest = layer.blob.digest;
            let result = tokio::task::spawn_blocking(move || {
                let data = decode(&digest, &member, &chunk)?;
                if let ChunkKey::Verified(d) = key {
                    if let Err(e) = cache.store.put_verified(&d, &data) {
                        // The bytes are verified and kept in memory; failing to write them only
                        // costs a refetch later. The store warns once per failing spell.
                        tracing::debug!(error = %e, "cannot store chunk");
                    } else {
                        cache.fetched_by().entry(d).or_insert(digest);
                    }
                }
                Ok(data)
            })
            .await
            .unwrap_or_else(|e| {
                Err(Error::Verification {
                    layer: layer.blob.digest,
                    offset: claim.chunk.offset,
                    detail: format!("decoder task failed: {e}"),
                })
            });
            if matches!(result, Err(Error::Verification { .. })) {
                layer
                    .counters
                    .verification_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            claim.finish(result);
        });
    }
    while decodes.next().await.is_some() {}
}

/// Decompresses one chunk out of its member and checks it is exactly what the TOC promised:
/// `decode_chunk` hashes the bytes against the chunk digest (when the chunk has one), and a
/// wrong length is refused here as well.
fn decode(layer: &Digest, member: &[u8], chunk: &Chunk) -> Result<Bytes, Error> {
    let fail = |detail: String| Error::Verification {
        layer: *layer,
        offset: chunk.offset,
        detail,
    };
    let data = decode_chunk(member, chunk).map_err(|e| fail(e.to_string()))?;
    if data.len() as u64 != chunk.chunk_size {
        return Err(fail(format!(
            "decoded {} bytes, toc says {}",
            data.len(),
            chunk.chunk_size
        )));
    }
    Ok(Bytes::from(data))
}

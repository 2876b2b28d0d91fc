//! The chunk cache through its public API: correctness, request counts, single-flight, dedup,
//! eviction, restarts, verification, fault propagation and on-demand-vs-prefetch priority.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use bytes::Bytes;
use regfs_blob::{
    BlobSource, ChunkCache, ChunkStore, Error, FaultySource, LayerHandle, MemorySource,
    PlannerConfig, PrefetchState, RequestSource,
};
use support::TestBlob;

type Faulty = Arc<FaultySource<MemorySource>>;

struct Rig {
    dir: tempfile::TempDir,
    cache: Arc<ChunkCache>,
}

impl Rig {
    fn new(cfg: PlannerConfig, cap: Option<u64>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store"), cap).unwrap();
        Rig {
            cache: ChunkCache::new(store, cfg),
            dir,
        }
    }

    fn layer(&self, blob: &TestBlob) -> (LayerHandle, Faulty) {
        let mut mem = MemorySource::new();
        mem.insert(blob.bytes.clone());
        let src = Arc::new(FaultySource::new(mem));
        let handle = self
            .cache
            .layer(blob.layer(src.clone() as Arc<dyn BlobSource>));
        (handle, src)
    }
}

fn as_vecs(b: &[Bytes]) -> Vec<Vec<u8>> {
    b.iter().map(|b| b.to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_all_chunks_in_one_request_then_hits() {
    let blob = support::build(&support::chunks(1, 6, 10_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);

    let got = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(as_vecs(&got), blob.data);
    assert_eq!(src.calls(), 1, "adjacent members should be one request");
    let s = layer.stats();
    assert_eq!((s.requests, s.misses, s.hits), (1, 6, 0));
    assert_eq!(
        s.bytes_fetched, blob.toc_offset,
        "everything up to the toc, nothing after"
    );

    let again = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(as_vecs(&again), blob.data);
    assert_eq!(src.calls(), 1);
    assert_eq!(layer.stats().hits, 6);
    assert!(blob.chunks.iter().all(|c| layer.is_cached(c)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_chunk_miss_does_not_download_the_toc() {
    let blob = support::build(&support::chunks(2, 3, 5_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    let last = blob.chunks.last().unwrap();
    assert_eq!(last.next_offset, blob.bytes.len() as u64);
    let got = layer
        .read_chunks(std::slice::from_ref(last), RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(got[0], blob.data[2]);
    assert_eq!(src.log(), vec![vec![last.offset..blob.toc_offset]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distant_chunks_become_ranges_of_one_request_and_duplicates_are_read_once() {
    let mut data = support::chunks(3, 3, 4_000);
    // A large incompressible-ish middle chunk puts a gap above max_gap between the outer two.
    data.insert(1, support::content(99, 200_000));
    let blob = support::build(&data);
    let cfg = PlannerConfig {
        max_gap: 1_000,
        min_fetch: 0,
        ..PlannerConfig::default()
    };
    let rig = Rig::new(cfg, None);
    let (layer, src) = rig.layer(&blob);
    let want = [
        blob.chunks[0].clone(),
        blob.chunks[2].clone(),
        blob.chunks[0].clone(),
    ];
    let got = layer
        .read_chunks(&want, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(
        as_vecs(&got),
        vec![data[0].clone(), data[2].clone(), data[0].clone()]
    );
    let log = src.log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0],
        vec![
            blob.chunks[0].offset..blob.chunks[0].next_offset,
            blob.chunks[2].offset..blob.chunks[2].next_offset
        ]
    );
    assert_eq!(layer.stats().misses, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_chunks_share_one_member_fetch() {
    let groups = vec![support::chunks(4, 3, 700), support::chunks(8, 1, 900)];
    let blob = support::build_packed(&groups);
    assert_eq!(blob.chunks[1].offset, blob.chunks[0].offset);
    assert!(blob.chunks[1].inner_offset > 0);
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    let got = layer
        .read_chunks(&blob.chunks[..3], RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(as_vecs(&got), blob.data[..3].to_vec());
    assert_eq!(
        src.log(),
        vec![vec![blob.chunks[0].offset..blob.chunks[3].offset]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_on_one_chunk_fetch_once() {
    const READERS: u64 = 16;
    let blob = support::build(&support::chunks(5, 2, 20_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    src.hold(|_| true);

    let chunk = blob.chunks[1].clone();
    let mut tasks = Vec::new();
    for _ in 0..READERS {
        let layer = layer.clone();
        let chunk = chunk.clone();
        tasks.push(tokio::spawn(async move {
            layer.read_chunks(&[chunk], RequestSource::OnDemand).await
        }));
    }
    src.wait_held(1).await;
    // Wait until every other reader has joined the held fetch.
    while layer.stats().joined + layer.stats().misses < READERS {
        tokio::task::yield_now().await;
    }
    src.release();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap()[0], blob.data[1]);
    }
    assert_eq!(src.calls(), 1);
    let s = layer.stats();
    assert_eq!((s.misses, s.joined), (1, READERS - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_chunks_of_two_layers_are_fetched_and_stored_once() {
    let shared = support::content(77, 30_000);
    let a = support::build(&[support::content(10, 5_000), shared.clone()]);
    let b = support::build(&[
        shared.clone(),
        support::content(11, 9_000),
        support::content(12, 100),
    ]);
    assert_ne!(a.digest, b.digest);
    let rig = Rig::new(PlannerConfig::default(), None);
    let (la, sa) = rig.layer(&a);
    let (lb, sb) = rig.layer(&b);

    // Concurrent: b joins a's held fetch of the shared chunk.
    sa.hold(|_| true);
    let la2 = la.clone();
    let ca = a.chunks[1].clone();
    let ta = tokio::spawn(async move { la2.read_chunks(&[ca], RequestSource::OnDemand).await });
    sa.wait_held(1).await;
    let lb2 = lb.clone();
    let cb = b.chunks[0].clone();
    let tb = tokio::spawn(async move { lb2.read_chunks(&[cb], RequestSource::OnDemand).await });
    while lb.stats().joined < 1 {
        tokio::task::yield_now().await;
    }
    sa.release();
    assert_eq!(ta.await.unwrap().unwrap()[0], shared);
    assert_eq!(tb.await.unwrap().unwrap()[0], shared);
    assert_eq!((sa.calls(), sb.calls()), (1, 0));
    assert_eq!(lb.stats().dedup_hits, 1);

    // Sequential: now it is in the store; b reads it again as a dedup hit.
    let got = lb
        .read_chunks(&b.chunks[..1], RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(got[0], shared);
    assert_eq!(sb.calls(), 0);
    assert_eq!(lb.stats().dedup_hits, 2);
    assert_eq!(rig.cache.store().du().chunks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_a_size_cap_races_with_readers() {
    const CHUNK: usize = 8_000;
    let blob = support::build(&support::chunks(20, 24, CHUNK));
    // Room for 5 chunks: nearly every read races an eviction by another reader.
    let rig = Rig::new(
        PlannerConfig {
            max_gap: 0,
            min_fetch: 0,
            ..PlannerConfig::default()
        },
        Some(5 * CHUNK as u64),
    );
    let (layer, _src) = rig.layer(&blob);
    let mut tasks = Vec::new();
    for t in 0..6usize {
        let layer = layer.clone();
        let chunks = blob.chunks.clone();
        let data = blob.data.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..40usize {
                let i = (t * 7 + round * 5) % chunks.len();
                let j = (i + 1 + t) % chunks.len();
                let got = layer
                    .read_chunks(
                        &[chunks[i].clone(), chunks[j].clone()],
                        RequestSource::OnDemand,
                    )
                    .await
                    .unwrap();
                assert_eq!(got[0], data[i], "chunk {i}");
                assert_eq!(got[1], data[j], "chunk {j}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let usage = rig.cache.store().du();
    assert!(usage.bytes <= 5 * CHUNK as u64, "{usage:?}");
    let on_disk: u64 = walk(&rig.dir.path().join("store/chunks"));
    assert_eq!(on_disk, usage.bytes, "index and disk agree");
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_survive_a_restart() {
    let blob = support::build(&support::chunks(30, 4, 6_000));
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = ChunkCache::new(
            ChunkStore::open(dir.path(), None).unwrap(),
            PlannerConfig::default(),
        );
        let mut mem = MemorySource::new();
        mem.insert(blob.bytes.clone());
        let layer = cache.layer(blob.layer(Arc::new(mem)));
        layer
            .read_chunks(&blob.chunks, RequestSource::OnDemand)
            .await
            .unwrap();
    }
    let cache = ChunkCache::new(
        ChunkStore::open(dir.path(), None).unwrap(),
        PlannerConfig::default(),
    );
    let mut mem = MemorySource::new();
    mem.insert(blob.bytes.clone());
    let src = Arc::new(FaultySource::new(mem));
    let layer = cache.layer(blob.layer(src.clone()));
    let got = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(as_vecs(&got), blob.data);
    assert_eq!(src.calls(), 0);
    assert_eq!(layer.stats().hits, 4);
    let p = cache
        .store()
        .path_of(&blob.chunks[2].digest.unwrap())
        .unwrap();
    assert_eq!(std::fs::read(p).unwrap(), blob.data[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_bytes_fail_verification_store_nothing_and_a_retry_succeeds() {
    let blob = support::build(&support::chunks(40, 2, 12_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    // Inside the deflate stream of chunk 1's member, past its 10-byte gzip header.
    src.corrupt_at(Some(blob.chunks[1].offset + 40));
    let err = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap_err();
    match &err {
        Error::Verification {
            layer: l, offset, ..
        } => {
            assert_eq!(*l, blob.digest);
            assert_eq!(*offset, blob.chunks[1].offset);
        }
        other => panic!("want a verification error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&blob.digest.to_string()) && msg.contains(&blob.chunks[1].offset.to_string()),
        "{msg}"
    );
    assert_eq!(layer.stats().verification_failures, 1);
    assert!(!layer.is_cached(&blob.chunks[1]));
    assert!(
        layer.is_cached(&blob.chunks[0]),
        "the good chunk of the same request is kept"
    );

    src.corrupt_at(None);
    let got = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(as_vecs(&got), blob.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toc_digest_that_does_not_match_is_a_verification_error() {
    let mut blob = support::build(&support::chunks(41, 2, 3_000));
    let wrong = regfs_estargz::Digest::sha256(b"something else");
    blob.chunks[0].digest = Some(wrong);
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, _src) = rig.layer(&blob);
    let err = layer
        .read_chunks(&blob.chunks[..1], RequestSource::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Verification { .. }), "{err}");
    assert!(err.to_string().contains(&wrong.to_string()), "{err}");
    assert_eq!(rig.cache.store().du().chunks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_reads_and_source_errors_propagate_then_a_later_read_succeeds() {
    let blob = support::build(&support::chunks(50, 3, 5_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);

    src.short_read_next(1);
    let err = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ShortRead { .. }), "{err}");

    src.fail_next(1);
    let err = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Injected { .. }), "{err}");
    assert_eq!(rig.cache.store().du().chunks, 0);

    let got = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(as_vecs(&got), blob.data);
    assert_eq!(src.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_without_digest_need_an_unverified_layer_and_are_never_stored() {
    let mut blob = support::build(&support::chunks(60, 2, 2_000));
    for c in &mut blob.chunks {
        c.digest = None;
    }
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, _src) = rig.layer(&blob);
    let err = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingDigest { .. }), "{err}");

    let mut mem = MemorySource::new();
    mem.insert(blob.bytes.clone());
    let mut lb = blob.layer(Arc::new(mem));
    lb.verify = false;
    let unverified = rig.cache.layer(lb);
    let got = unverified
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(as_vecs(&got), blob.data);
    assert_eq!(rig.cache.store().du().chunks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chunk_descriptions_are_errors() {
    let blob = support::build(&support::chunks(70, 2, 1_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    let base = blob.chunks[0].clone();
    let cases = [
        (
            "huge chunk",
            regfs_blob::Chunk {
                chunk_size: u64::MAX,
                ..base.clone()
            },
        ),
        (
            "member at the toc",
            regfs_blob::Chunk {
                offset: blob.toc_offset,
                ..base.clone()
            },
        ),
        (
            "member ends before start",
            regfs_blob::Chunk {
                next_offset: base.offset,
                ..base.clone()
            },
        ),
        (
            "inner offset overflow",
            regfs_blob::Chunk {
                inner_offset: u64::MAX - 10,
                ..base.clone()
            },
        ),
        (
            "offset past the blob",
            regfs_blob::Chunk {
                offset: u64::MAX - 1,
                next_offset: u64::MAX,
                ..base.clone()
            },
        ),
    ];
    for (name, c) in cases {
        let err = layer
            .read_chunks(&[c], RequestSource::OnDemand)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BadChunk { .. }), "{name}: {err}");
    }
    // Lies the bounds cannot catch are caught by decoding: a chunk larger than its member.
    let too_big = regfs_blob::Chunk {
        chunk_size: base.chunk_size + 5_000,
        ..base.clone()
    };
    let err = layer
        .read_chunks(&[too_big], RequestSource::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Verification { .. }), "{err}");
    assert_eq!(src.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_fetches_the_landmark_range_in_few_requests() {
    let blob = support::build(&support::chunks(80, 10, 9_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    assert_eq!(layer.stats().prefetch, PrefetchState::NotStarted);
    let end = blob.chunks[6].offset;
    layer.prefetch(&blob.chunks, end).await.unwrap();
    assert_eq!(layer.stats().prefetch, PrefetchState::Done);
    assert_eq!(src.calls(), 1);
    for (i, c) in blob.chunks.iter().enumerate() {
        assert_eq!(layer.is_cached(c), i < 6, "chunk {i}");
    }
    // Prefetched chunks are hits for on-demand reads.
    layer
        .read_chunks(&blob.chunks[..6], RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!((layer.stats().hits, src.calls()), (6, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prefetch_is_reported() {
    let blob = support::build(&support::chunks(81, 3, 9_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    src.fail_next(1);
    assert!(layer.prefetch(&blob.chunks, blob.toc_offset).await.is_err());
    assert_eq!(layer.stats().prefetch, PrefetchState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_prefetch_does_not_delay_an_on_demand_read() {
    let blob = support::build(&support::chunks(90, 8, 9_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    let end = blob.chunks[4].offset;
    // Hold every request that starts inside the prefetch range.
    src.hold(move |ranges| ranges.iter().any(|r| r.start < end));
    let pl = layer.clone();
    let chunks = blob.chunks.clone();
    let prefetch = tokio::spawn(async move { pl.prefetch(&chunks, end).await });
    src.wait_held(1).await;

    let got = layer
        .read_chunks(&blob.chunks[6..7], RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(got[0], blob.data[6]);
    assert!(!prefetch.is_finished(), "the prefetch is still held");
    assert_eq!(layer.stats().prefetch, PrefetchState::Running);

    src.release();
    prefetch.await.unwrap().unwrap();
    assert_eq!(layer.stats().prefetch, PrefetchState::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_read_boosts_a_queued_prefetch_request_it_needs() {
    let blob = support::build(&support::chunks(95, 6, 9_000));
    // One prefetch request at a time, one member per request.
    let cfg = PlannerConfig {
        max_gap: 0,
        min_fetch: 0,
        max_request: 1,
        prefetch_requests: 1,
        ..PlannerConfig::default()
    };
    let rig = Rig::new(cfg, None);
    let (layer, src) = rig.layer(&blob);
    // Hold only the first request to reach the source; it keeps the single prefetch permit.
    let first_call = std::sync::atomic::AtomicBool::new(true);
    src.hold(move |_| first_call.swap(false, std::sync::atomic::Ordering::SeqCst));
    let pl = layer.clone();
    let chunks = blob.chunks.clone();
    let end = blob.toc_offset;
    let prefetch = tokio::spawn(async move { pl.prefetch(&chunks, end).await });
    src.wait_held(1).await;
    while layer.stats().misses < 6 {
        tokio::task::yield_now().await;
    }
    // Any chunk outside the held request is claimed by a prefetch request queued behind it.
    let held = src.log()[0][0].clone();
    let i = (0..6)
        .find(|&i| !held.contains(&blob.chunks[i].offset))
        .unwrap();
    let got = layer
        .read_chunks(&blob.chunks[i..i + 1], RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(got[0], blob.data[i]);
    assert_eq!(layer.stats().joined, 1);
    assert!(!prefetch.is_finished());
    src.release();
    prefetch.await.unwrap().unwrap();
    assert_eq!(src.calls(), 6, "every member fetched exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_gives_up_does_not_cancel_the_fetch_others_wait_on() {
    let blob = support::build(&support::chunks(97, 2, 7_000));
    let rig = Rig::new(PlannerConfig::default(), None);
    let (layer, src) = rig.layer(&blob);
    src.hold(|_| true);
    let (l1, c1) = (layer.clone(), blob.chunks[0].clone());
    let first = tokio::spawn(async move { l1.read_chunks(&[c1], RequestSource::OnDemand).await });
    src.wait_held(1).await;
    // Like an interrupted read(2): the first reader goes away mid-fetch.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    let (l2, c2) = (layer.clone(), blob.chunks[0].clone());
    let second = tokio::spawn(async move { l2.read_chunks(&[c2], RequestSource::OnDemand).await });
    while layer.stats().joined < 1 {
        tokio::task::yield_now().await;
    }
    src.release();
    assert_eq!(second.await.unwrap().unwrap()[0], blob.data[0]);
    assert_eq!(src.calls(), 1);
}

/// A speculative read-ahead waiting on the network must not pause the landmark prefetch, while
/// a real on-demand read does (the start-up is waiting on the prefetch; nobody waits on a
/// read-ahead yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_read_ahead_does_not_pause_the_prefetch_but_an_on_demand_read_does() {
    for (source, pauses) in [
        (RequestSource::ReadAhead, false),
        (RequestSource::OnDemand, true),
    ] {
        let blob = support::build(&support::chunks(99, 8, 9_000));
        let rig = Rig::new(PlannerConfig::default(), None);
        let (layer, src) = rig.layer(&blob);
        let end = blob.chunks[4].offset;
        let late = blob.chunks[7].offset;
        // Hold the request of the read outside the prefetch range.
        src.hold(move |ranges| ranges.iter().any(|r| r.start >= late));
        let rl = layer.clone();
        let ahead = blob.chunks[7..8].to_vec();
        let reader = tokio::spawn(async move { rl.read_chunks(&ahead, source).await });
        src.wait_held(1).await;

        let pl = layer.clone();
        let chunks = blob.chunks[..4].to_vec();
        let mut prefetch = tokio::spawn(async move { pl.prefetch(&chunks, end).await });
        let finished = tokio::time::timeout(std::time::Duration::from_secs(2), &mut prefetch).await;
        assert_eq!(
            finished.is_err(),
            pauses,
            "{source:?}: the prefetch {} while the read waits",
            if pauses { "must pause" } else { "must go on" }
        );
        src.release();
        if pauses {
            prefetch.await.unwrap().unwrap();
        }
        assert_eq!(layer.stats().prefetch, PrefetchState::Done);
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got[0], blob.data[7]);
    }
}

/// Two caches over one directory, as two mounts of one host share it, each capped at ten
/// chunks, each reading forty chunks of its own layer one by one: every read is right, and the
/// directory ends within the cap plus its margin (an eighth per other writer), not at twice the
/// cap as two indexes that each only count their own chunks would leave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_sharing_a_capped_store_keep_the_cap() {
    const CHUNK: usize = 8_000;
    const CAP: u64 = 10 * CHUNK as u64;
    let dir = tempfile::tempdir().unwrap();
    let cfg = PlannerConfig {
        max_gap: 0,
        min_fetch: 0,
        ..PlannerConfig::default()
    };
    let mut readers = Vec::new();
    for seed in [100u64, 200] {
        let cache = ChunkCache::new(
            ChunkStore::open(dir.path(), Some(CAP)).unwrap(),
            cfg.clone(),
        );
        let blob = support::build(&support::chunks(seed, 40, CHUNK));
        let mut mem = MemorySource::new();
        mem.insert(blob.bytes.clone());
        let layer = cache.layer(blob.layer(Arc::new(mem)));
        readers.push(tokio::spawn(async move {
            for (i, c) in blob.chunks.iter().enumerate() {
                let got = layer
                    .read_chunks(std::slice::from_ref(c), RequestSource::OnDemand)
                    .await
                    .unwrap();
                assert_eq!(got[0], blob.data[i], "seed {seed} chunk {i}");
                tokio::task::yield_now().await;
            }
            cache
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    let on_disk = walk(&dir.path().join("chunks"));
    assert!(
        on_disk <= CAP + CAP / 4,
        "{on_disk} bytes on disk for a cap of {CAP}"
    );
}

/// `regfs cache gc --max-size 0` (another process opening the store and evicting everything)
/// run over and over while readers go through the cache: every read returns the right bytes,
/// and the temp file a live writer is filling is never swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gc_of_a_shared_store_never_breaks_a_read() {
    const CHUNK: usize = 8_000;
    let blob = support::build(&support::chunks(70, 24, CHUNK));
    let rig = Rig::new(
        PlannerConfig {
            max_gap: 0,
            min_fetch: 0,
            ..PlannerConfig::default()
        },
        Some(8 * CHUNK as u64),
    );
    let store_dir = rig.dir.path().join("store");
    // A chunk being written by this (live) process when the gc opens the store.
    let in_flight = store_dir.join(format!(
        "tmp/{}.{}.999",
        "ab".repeat(32),
        std::process::id()
    ));
    std::fs::write(&in_flight, b"half a chunk").unwrap();
    let (layer, _src) = rig.layer(&blob);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (dir, stop) = (store_dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || runs < 5 {
                ChunkStore::open(&dir, None).unwrap().gc(0).unwrap();
                runs += 1;
            }
            runs
        })
    };
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let (layer, chunks, data) = (layer.clone(), blob.chunks.clone(), blob.data.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..30usize {
                let i = (t * 5 + round * 7) % chunks.len();
                let got = layer
                    .read_chunks(std::slice::from_ref(&chunks[i]), RequestSource::OnDemand)
                    .await
                    .unwrap();
                assert_eq!(got[0], data[i], "chunk {i}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(gc.join().unwrap() >= 5);
    assert!(in_flight.exists(), "a live writer's temp file was swept");
}

/// Disk full: the store sits on a 64 KiB tmpfs and the layer is ten times that. Every read
/// returns the right bytes (never an error), and the chunks that could not be written are
/// served from memory: reading them again costs no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_reads_answer_from_memory_and_the_network() {
    regfs_testkit::require_root();
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "regfs-test-full"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.path().to_owned());

    let blob = support::build(&support::chunks(80, 20, 32_000));
    let cache = ChunkCache::new(
        ChunkStore::open(dir.path().join("store"), None).unwrap(),
        PlannerConfig {
            max_gap: 0,
            min_fetch: 0,
            ..PlannerConfig::default()
        },
    );
    let mut mem = MemorySource::new();
    mem.insert(blob.bytes.clone());
    let src = Arc::new(FaultySource::new(mem));
    let layer = cache.layer(blob.layer(src.clone()));
    for (i, c) in blob.chunks.iter().enumerate() {
        let got = layer
            .read_chunks(std::slice::from_ref(c), RequestSource::OnDemand)
            .await
            .unwrap_or_else(|e| panic!("chunk {i} with the disk full: {e}"));
        assert_eq!(got[0], blob.data[i], "chunk {i}");
    }
    let stored = cache.store().du();
    assert!(stored.chunks < 20, "the tmpfs held every chunk: {stored:?}");
    let calls = src.calls();
    let again = layer
        .read_chunks(&blob.chunks, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(as_vecs(&again), blob.data);
    assert_eq!(
        src.calls(),
        calls,
        "chunks that did not fit were fetched again"
    );
}

//! The cache over a real Debian `docker-registry` on a free loopback port: chunks of a pushed
//! blob are read with ranged GETs, merged into few requests, verified and cached.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use regfs_blob::{
    BlobSource, ChunkCache, ChunkStore, FaultySource, PlannerConfig, RegistrySource, RequestSource,
};
use regfs_registry::{Client, ClientConfig, Reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_come_from_a_real_registry_in_few_requests() {
    let registry = regfs_testkit::Registry::start();
    let docker_dir = tempfile::tempdir().unwrap();
    let client = Client::new(ClientConfig {
        docker_config_dir: Some(docker_dir.path().to_owned()),
        ..ClientConfig::default()
    })
    .unwrap();
    let repo: Reference = format!("{}/regfs/blob-test:1", registry.addr)
        .parse()
        .unwrap();

    let mut data = support::chunks(7, 5, 50_000);
    // A far chunk: the gap before it is larger than max_gap, so it is a second range.
    data.push(support::content(1234, 600_000));
    data.push(support::content(8, 20_000));
    let blob = support::build(&data);
    client
        .push_blob(&repo, &blob.digest, blob.bytes.clone().into())
        .await
        .unwrap();

    let src = Arc::new(FaultySource::new(RegistrySource::new(client.clone(), repo)));
    assert_eq!(
        src.size(&blob.digest).await.unwrap(),
        blob.bytes.len() as u64
    );
    let absent = regfs_estargz::Digest::sha256(b"never pushed");
    let first_byte = std::slice::from_ref(&(0..1));
    let err = src.read_ranges(&absent, first_byte).await.unwrap_err();
    assert!(
        matches!(err, regfs_blob::Error::BlobNotFound { .. }),
        "{err}"
    );
    let calls_before = src.calls();
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(
        ChunkStore::open(dir.path(), None).unwrap(),
        PlannerConfig::default(),
    );
    let layer = cache.layer(blob.layer(src.clone()));

    // Chunks 0..5 are adjacent; chunk 6 lies beyond the 600 KB chunk 5.
    let mut want = blob.chunks[..5].to_vec();
    want.push(blob.chunks[6].clone());
    let before = client.stats().requests;
    let got = layer
        .read_chunks(&want, RequestSource::OnDemand)
        .await
        .unwrap();
    for (i, g) in [0, 1, 2, 3, 4, 6].into_iter().zip(&got) {
        assert_eq!(g[..], blob.data[i][..], "chunk {i}");
    }
    assert_eq!(
        src.calls() - calls_before,
        1,
        "one read_ranges call for the whole read"
    );
    assert_eq!(
        src.log().last().unwrap().len(),
        2,
        "two ranges: the adjacent run and the far chunk"
    );
    let http = client.stats().requests - before;
    assert!(http <= 2, "{http} HTTP requests for one multi-range read");
    assert_eq!(layer.stats().misses, 6);

    // Everything read is now local.
    let again = layer
        .read_chunks(&want, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(again, got);
    assert_eq!(src.calls() - calls_before, 1);
    assert_eq!(layer.stats().hits, 6);

    // The remaining chunk: one single-range GET.
    let before = client.stats().requests;
    let last = layer
        .read_chunks(&blob.chunks[5..6], RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(last[0][..], blob.data[5][..]);
    assert_eq!(client.stats().requests - before, 1);
}

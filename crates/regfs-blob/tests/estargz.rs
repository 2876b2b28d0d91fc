//! Real eStargz blobs made by `regfs_estargz::convert`, served from an OCI image layout and a
//! blob directory: every file read through the cache equals the reference reader's bytes, the
//! landmark prefetch caches exactly the prioritized files, and a second layer sharing files
//! with the first is answered from the store.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use regfs_blob::{
    BlobSource, Chunk, ChunkCache, ChunkStore, FaultySource, FileSource, LayerBlob,
    OciLayoutSource, PlannerConfig, PrefetchState, RequestSource,
};
use regfs_estargz::{ConvertOptions, Digest, EntryKind, Reader, convert};

/// Small chunks so that files span several members.
const CHUNK_SIZE: u64 = 16 * 1024;

struct Converted {
    blob: Vec<u8>,
    digest: Digest,
    reader: Reader<Vec<u8>>,
}

fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, &data[..]).unwrap();
    }
    tar.into_inner().unwrap()
}

fn convert_files(files: &[(&str, Vec<u8>)], prioritized: Option<Vec<String>>) -> Converted {
    let mut blob = Vec::new();
    let opts = ConvertOptions {
        chunk_size: CHUNK_SIZE,
        prioritized_files: prioritized,
        ..ConvertOptions::default()
    };
    let report = convert(&tar_of(files), &opts, &mut blob, &|_| {}).unwrap();
    assert_eq!(report.blob_digest, Digest::sha256(&blob));
    let reader = Reader::open(blob.clone()).unwrap();
    Converted {
        digest: report.blob_digest,
        blob,
        reader,
    }
}

fn layer_blob(c: &Converted, source: Arc<dyn BlobSource>) -> LayerBlob {
    LayerBlob {
        digest: c.digest,
        size: c.blob.len() as u64,
        toc_offset: c.reader.toc_offset(),
        source,
        verify: true,
    }
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("bin/app", support::content(1, 100_000)),
        ("etc/config", support::content(2, 300)),
        ("lib/libshared.so", support::content(3, 70_000)),
        ("empty", Vec::new()),
        ("usr/share/doc", support::content(4, 40_000)),
    ]
}

fn write_oci_layout(dir: &Path, blobs: &[&Converted]) {
    let b = dir.join("blobs/sha256");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for c in blobs {
        std::fs::write(b.join(c.digest.hex()), &c.blob).unwrap();
    }
}

fn regular_files(c: &Converted) -> Vec<(String, Vec<Chunk>, Vec<u8>)> {
    let index = c.reader.index();
    index
        .entries_in_toc_order()
        .filter(|&id| index.entry(id).kind == EntryKind::Reg)
        .map(|id| {
            (
                index.entry(id).name.clone(),
                index.chunks(id).to_vec(),
                c.reader.read_to_vec(id).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_from_an_oci_layout_matches_the_reference_reader() {
    let c = convert_files(&files(), None);
    let layout = tempfile::tempdir().unwrap();
    write_oci_layout(layout.path(), &[&c]);
    let src = Arc::new(FaultySource::new(
        OciLayoutSource::open(layout.path()).unwrap(),
    ));
    assert_eq!(src.size(&c.digest).await.unwrap(), c.blob.len() as u64);

    let store = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(
        ChunkStore::open(store.path(), None).unwrap(),
        PlannerConfig::default(),
    );
    let layer = cache.layer(layer_blob(&c, src.clone()));
    let files = regular_files(&c);
    assert!(
        files.iter().any(|(_, chunks, _)| chunks.len() > 3),
        "multi-chunk files"
    );
    for (name, chunks, want) in &files {
        let got = layer
            .read_chunks(chunks, RequestSource::OnDemand)
            .await
            .unwrap();
        assert_eq!(got.concat(), *want, "{name}");
    }
    // Every member was fetched at most once, and none past the TOC.
    let fetched: u64 = src
        .log()
        .iter()
        .flatten()
        .map(|r| {
            assert!(r.end <= c.reader.toc_offset(), "{r:?} reaches into the toc");
            r.end - r.start
        })
        .sum();
    assert!(fetched <= c.reader.toc_offset(), "{fetched}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landmark_prefetch_caches_the_prioritized_files_only() {
    let c = convert_files(&files(), Some(vec!["etc/config".into(), "bin/app".into()]));
    let landmark = c.reader.index().prefetch_landmark().expect("landmark");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(c.digest.hex()), &c.blob).unwrap();
    let src = Arc::new(FaultySource::new(FileSource::dir(dir.path())));
    let store = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(
        ChunkStore::open(store.path(), None).unwrap(),
        PlannerConfig::default(),
    );
    let layer = cache.layer(layer_blob(&c, src.clone()));

    let files = regular_files(&c);
    let all: Vec<Chunk> = files.iter().flat_map(|(_, ch, _)| ch.clone()).collect();
    layer.prefetch(&all, landmark).await.unwrap();
    assert_eq!(layer.stats().prefetch, PrefetchState::Done);
    assert_eq!(
        src.calls(),
        1,
        "the landmark range is small enough for one request"
    );
    for (name, chunks, _) in &files {
        let prioritized = name == "etc/config" || name == "bin/app";
        for ch in chunks {
            assert_eq!(
                layer.is_cached(ch),
                prioritized,
                "{name} at {}",
                ch.chunk_offset
            );
        }
    }
    let (_, app, want) = files.iter().find(|(n, _, _)| n == "bin/app").unwrap();
    let got = layer
        .read_chunks(app, RequestSource::OnDemand)
        .await
        .unwrap();
    assert_eq!(got.concat(), *want);
    assert_eq!(src.calls(), 1, "prefetched file read without fetching");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_layer_with_the_same_file_is_served_from_the_store() {
    let a = convert_files(&files(), None);
    let shared = files()
        .into_iter()
        .find(|(n, _)| *n == "lib/libshared.so")
        .unwrap();
    let b = convert_files(
        &[
            ("other/file", support::content(9, 50_000)),
            ("lib/libshared.so", shared.1.clone()),
        ],
        None,
    );
    assert_ne!(a.digest, b.digest);
    let layout = tempfile::tempdir().unwrap();
    write_oci_layout(layout.path(), &[&a, &b]);
    let oci = OciLayoutSource::open(layout.path()).unwrap();
    let sa = Arc::new(FaultySource::new(oci.clone()));
    let sb = Arc::new(FaultySource::new(oci));
    let store = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(
        ChunkStore::open(store.path(), None).unwrap(),
        PlannerConfig::default(),
    );
    let la = cache.layer(layer_blob(&a, sa.clone()));
    let lb = cache.layer(layer_blob(&b, sb.clone()));
    let chunks_of = |c: &Converted| {
        let id = c.reader.index().lookup("lib/libshared.so").unwrap();
        c.reader.index().chunks(id).to_vec()
    };
    let ca = chunks_of(&a);
    let cb = chunks_of(&b);
    la.read_chunks(&ca, RequestSource::OnDemand).await.unwrap();
    let got = lb.read_chunks(&cb, RequestSource::OnDemand).await.unwrap();
    assert_eq!(got.concat(), shared.1);
    assert_eq!(sb.calls(), 0);
    assert_eq!(lb.stats().dedup_hits, cb.len() as u64);
}

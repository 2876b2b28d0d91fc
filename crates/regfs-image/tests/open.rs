//! Opening images through the `ImageSource` seam, on `MemoryImage`: TOC verification, refusal
//! of unverified layers, the fallback for plain layers and prefetch planning (tail sizing is
//! tested beside `tail_len`) —
//! without a network, FUSE or root.

// Test code: a panic is how a test fails; clippy's test allowance covers `#[test]` functions
// only, not the helpers here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

use bytes::Bytes;
use regfs_blob::{ChunkCache, ChunkStore, PlannerConfig};
use regfs_estargz::{ConvertOptions, Digest};
use regfs_fs::Ino;
use regfs_image::annotation::{PREFETCH_SIZE, TOC_DIGEST, TOC_OFFSET};
use regfs_image::{
    Error, ImageSource, LazyImage, LazyOptions, MemoryImage, OpenOptions, PrefetchPlan, open_image,
};
use regfs_testkit::pattern;

const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;

/// A tar of `files` (path, bytes), directories implied.
fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

struct Layer {
    blob: Bytes,
    toc_digest: Digest,
    toc_offset: u64,
    landmark: Option<u64>,
}

fn estargz(files: &[(&str, Vec<u8>)], prioritized: Option<Vec<String>>) -> Layer {
    let opts = ConvertOptions {
        chunk_size: 16 * 1024,
        threads: 1,
        prioritized_files: prioritized,
        ..ConvertOptions::default()
    };
    let mut blob = Vec::new();
    let report = regfs_estargz::convert(&tar_of(files), &opts, &mut blob, &|_| {}).unwrap();
    Layer {
        blob: Bytes::from(blob),
        toc_digest: report.toc_digest,
        toc_offset: report.toc_offset,
        landmark: report.prefetch_landmark,
    }
}

fn annotated(l: &Layer) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(TOC_DIGEST.to_owned(), l.toc_digest.to_string());
    a.insert(TOC_OFFSET.to_owned(), l.toc_offset.to_string());
    if let Some(p) = l.landmark {
        a.insert(PREFETCH_SIZE.to_owned(), p.to_string());
    }
    a
}

fn cache(dir: &std::path::Path) -> Arc<ChunkCache> {
    ChunkCache::new(
        ChunkStore::open(dir.join("store"), None).unwrap(),
        PlannerConfig::default(),
    )
}

fn options(dir: &std::path::Path) -> OpenOptions {
    OpenOptions {
        cache_dir: dir.to_owned(),
        ..OpenOptions::default()
    }
}

fn image(layers: Vec<(Bytes, BTreeMap<String, String>)>) -> Arc<dyn ImageSource> {
    Arc::new(MemoryImage::new("mem/test", CONFIG, layers).unwrap())
}

#[tokio::test]
async fn a_verified_image_opens_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let l = estargz(&[("a/x", pattern(50_000, 1)), ("b", pattern(10, 2))], None);
    let src = image(vec![(l.blob.clone(), annotated(&l))]);
    let img = open_image(&src, &cache(dir.path()), &options(dir.path()))
        .await
        .unwrap();
    assert_eq!(img.layers.len(), 1);
    assert!(img.layers[0].lazy);
    assert!(img.name.starts_with("mem/test@sha256:"));
    let lazy = LazyImage::open(
        &src,
        &cache(dir.path()),
        &LazyOptions {
            open: options(dir.path()),
            ..LazyOptions::default()
        },
    )
    .await
    .unwrap();
    let fs = &lazy.fs;
    let a = fs.lookup(Ino::ROOT, OsStr::new("a")).unwrap();
    let x = fs.lookup(a.ino, OsStr::new("x")).unwrap();
    assert_eq!(
        &fs.read(x.ino, 0, 100_000).await.unwrap()[..],
        &pattern(50_000, 1)[..]
    );
}

#[tokio::test]
async fn a_toc_that_does_not_match_its_annotation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let l = estargz(&[("f", pattern(1000, 3))], None);
    let mut ann = annotated(&l);
    let wrong = Digest::sha256(b"not the toc");
    ann.insert(TOC_DIGEST.to_owned(), wrong.to_string());
    let src = image(vec![(l.blob.clone(), ann)]);
    let err = open_image(&src, &cache(dir.path()), &options(dir.path()))
        .await
        .err()
        .expect("refused");
    match err.root() {
        Error::TocDigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, wrong);
            assert_eq!(*actual, l.toc_digest);
        }
        other => panic!("wrong error: {other}"),
    }
}

#[tokio::test]
async fn an_estargz_layer_without_annotation_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let l = estargz(&[("f", pattern(1000, 4))], None);
    let src = image(vec![(l.blob.clone(), BTreeMap::new())]);
    let err = open_image(&src, &cache(dir.path()), &options(dir.path()))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err.root(), Error::UnverifiedToc { .. }), "{err}");
    assert!(err.to_string().contains("--insecure-skip-verify"), "{err}");
    let insecure = OpenOptions {
        insecure_skip_verify: true,
        ..options(dir.path())
    };
    let img = open_image(&src, &cache(dir.path()), &insecure)
        .await
        .unwrap();
    assert!(img.layers[0].lazy);
}

#[tokio::test]
async fn a_plain_gzip_layer_falls_back_or_is_refused_when_lazy_only() {
    let dir = tempfile::tempdir().unwrap();
    let tar = tar_of(&[("plain", pattern(5000, 5))]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let blob = Bytes::from(gz.finish().unwrap());
    let src = image(vec![(blob, BTreeMap::new())]);
    let lazy_only = OpenOptions {
        lazy_only: true,
        ..options(dir.path())
    };
    let err = open_image(&src, &cache(dir.path()), &lazy_only)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err.root(), Error::NotEstargz { .. }), "{err}");
    // Without lazy_only it is fetched whole, converted, and served.
    let img = LazyImage::open(
        &src,
        &cache(dir.path()),
        &LazyOptions {
            open: options(dir.path()),
            ..LazyOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(!img.layers[0].lazy);
    let f = img.fs.lookup(Ino::ROOT, OsStr::new("plain")).unwrap();
    assert_eq!(
        &img.fs.read(f.ino, 0, 10_000).await.unwrap()[..],
        &pattern(5000, 5)[..]
    );
}

#[tokio::test]
async fn a_missing_layer_view_names_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let l = estargz(&[("f", pattern(10, 6))], None);
    let src = image(vec![(l.blob.clone(), annotated(&l))]);
    let want = Digest::sha256(b"no such layer");
    let err = LazyImage::open(
        &src,
        &cache(dir.path()),
        &LazyOptions {
            open: options(dir.path()),
            layer: Some(want),
            ..LazyOptions::default()
        },
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(err.root(), Error::NoSuchLayer { layer, .. } if *layer == want),
        "{err}"
    );
}

#[tokio::test]
async fn the_prefetch_plan_covers_exactly_the_prioritised_files() {
    let files = [
        ("d/a", pattern(10_000, 10)),
        ("d/big", pattern(200_000, 12)),
        ("d/c", pattern(30_000, 13)),
    ];
    let l = estargz(&files, Some(vec!["d/c".into()]));
    let end = l.landmark.expect("landmark");
    let index = regfs_estargz::TocIndex::new(
        &regfs_estargz::Reader::open(l.blob.to_vec())
            .unwrap()
            .toc()
            .clone(),
        l.blob.len() as u64,
    )
    .unwrap();
    let plan = PrefetchPlan::of(&index).expect("plan");
    assert_eq!(plan.end, end);
    let c = index.lookup("d/c").unwrap();
    let big = index.lookup("d/big").unwrap();
    for chunk in index.chunks(c) {
        assert!(plan.chunks.contains(chunk), "d/c is prioritised");
    }
    for chunk in index.chunks(big) {
        assert!(!plan.chunks.contains(chunk), "d/big is not");
    }
    // Without a landmark: no plan.
    let plain = estargz(&files, None);
    let index = regfs_estargz::TocIndex::new(
        regfs_estargz::Reader::open(plain.blob.to_vec())
            .unwrap()
            .toc(),
        plain.blob.len() as u64,
    )
    .unwrap();
    assert_eq!(PrefetchPlan::of(&index), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_image_prefetches_the_prioritised_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("d/a", pattern(10_000, 10)),
        ("d/big", pattern(200_000, 12)),
        ("d/c", pattern(30_000, 13)),
    ];
    let l = estargz(&files, Some(vec!["d/c".into()]));
    let src = image(vec![(l.blob.clone(), annotated(&l))]);
    let img = LazyImage::open(
        &src,
        &cache(dir.path()),
        &LazyOptions {
            open: options(dir.path()),
            ..LazyOptions::default()
        },
    )
    .await
    .unwrap();
    let fs = &img.fs;
    assert!(
        fs.lookup(Ino::ROOT, OsStr::new(".prefetch.landmark"))
            .is_err(),
        "landmark hidden"
    );
    // Wait for the prefetch task.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fs.stats().layers[0].prefetch != "done" {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let after = fs.stats().layers[0].clone();
    let d = fs.lookup(Ino::ROOT, OsStr::new("d")).unwrap();
    let c = fs.lookup(d.ino, OsStr::new("c")).unwrap();
    assert_eq!(
        &fs.read(c.ino, 0, 40_000).await.unwrap()[..],
        &pattern(30_000, 13)[..]
    );
    assert_eq!(
        fs.stats().layers[0].requests,
        after.requests,
        "d/c came with the prefetch"
    );
    let big = fs.lookup(d.ino, OsStr::new("big")).unwrap();
    fs.read(big.ino, 0, 10).await.unwrap();
    assert!(
        fs.stats().layers[0].requests > after.requests,
        "d/big did not"
    );
}

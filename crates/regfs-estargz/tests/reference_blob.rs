//! A blob written by the reference (`estargz.Build`, stargz-snapshotter v0.12.0 via
//! `esgz-oracle build --chunk-size 4096 --prioritized ./usr/bin/big,etc/hardlink`, GOMAXPROCS=1)
//! from a GNU tar (PAX format) of a small tree: we open it, verify it, and re-serialise its TOC
//! byte for byte. Values below are what the reference printed for it.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use regfs_estargz::{ConvertOptions, Digest, EntryKind, Reader, convert};
use support::{gunzip, sha};

const BLOB: &[u8] = include_bytes!("data/reference-v0.12.esgz");
const TOC_DIGEST: &str = "sha256:096fe8b3911c0bd28691a39b6109c0b28b4593813a3dac4378f2d80fcd3b622c";
const DIFF_ID: &str = "sha256:0df48512014b922390faff9cf68809edb0678cd5c28aa1cce62244953bd334bf";
const BIG_DIGEST: &str = "sha256:859f14cbc534369bb4c0e1401ee9a1d4de3f07213058eaecf8b128d4005e133e";

#[test]
fn reference_blob_opens_verifies_and_round_trips() {
    let r = Reader::open(BLOB.to_vec()).unwrap();
    let want: Digest = TOC_DIGEST.parse().unwrap();
    r.verify_toc_digest(&want).unwrap();
    // Our serialisation of the parsed TOC is byte-identical to Go's.
    assert_eq!(sha(&r.toc().to_json()), want);
    assert_eq!(sha(&gunzip(BLOB)).to_string(), DIFF_ID);

    let ix = r.index();
    let big = ix.lookup("usr/bin/big").unwrap();
    assert_eq!(sha(&r.read_to_vec(big).unwrap()).to_string(), BIG_DIGEST);
    assert_eq!(ix.chunks(big).len(), 5);
    assert_eq!(ix.entry(big).mode, 0o4755);
    assert_eq!(ix.entry(ix.lookup("usr").unwrap()).mode, 0o1777);
    let hello = ix.lookup("./etc/hello").unwrap();
    assert_eq!(r.read_to_vec(hello).unwrap(), b"hello\n");
    assert_eq!(ix.lookup("etc/hardlink"), Some(hello));
    assert_eq!(ix.entry(hello).num_link, 2);
    assert_eq!(ix.entry(ix.lookup("fifo").unwrap()).kind, EntryKind::Fifo);
    let link = ix.entry(ix.lookup("usr/bin/link").unwrap());
    assert_eq!(
        (link.kind, link.link_name.as_str()),
        (EntryKind::Symlink, "../etc/hello")
    );
    assert_eq!(ix.entry(big).modtime, (1_614_834_367, 0));
    assert_eq!(ix.entry(ix.root()).uname, "root");
    // Prioritized files lie before the landmark.
    let end = ix.prefetch_landmark().unwrap();
    assert!(ix.chunks(big).iter().all(|c| c.offset < end));
    assert!(!ix.has_no_prefetch_landmark());
}

#[test]
fn reconverting_the_reference_stream_drops_its_toc_and_landmarks() {
    let plain = gunzip(BLOB);
    let opts = ConvertOptions {
        chunk_size: 4096,
        threads: 2,
        ..ConvertOptions::default()
    };
    let mut blob = Vec::new();
    let rep = convert(&plain, &opts, &mut blob, &|_| {}).unwrap();
    let names: Vec<&str> = rep
        .toc
        .entries
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(!names.contains(&"stargz.index.json"));
    assert!(!names.contains(&".prefetch.landmark"));
    assert_eq!(names[0], ".no.prefetch.landmark");
    let r = Reader::open(blob).unwrap();
    let big = r.index().lookup("usr/bin/big").unwrap();
    assert_eq!(sha(&r.read_to_vec(big).unwrap()).to_string(), BIG_DIGEST);
}

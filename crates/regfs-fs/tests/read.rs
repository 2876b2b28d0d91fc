//! The read path through the plain API: concurrent random reads, corruption, read-around.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::ffi::OsStr;

use regfs_blob::MemorySource;
use regfs_fs::{FsOptions, ImageFs, Ino};
use support::{LayerTar, image_from_blobs, layer_parts, pattern, to_estargz};

const CHUNK: u64 = 64 * 1024;
/// Larger than `SMALL_FILE`, so reads fetch only the chunks they overlap.
const BIG: usize = 3 * 1024 * 1024 + 12_345;

fn layer() -> Vec<u8> {
    let mut l = LayerTar::new();
    l.dir("d", 0o755)
        .file("d/a", &pattern(10_000, 10))
        .file("d/b", &pattern(20_000, 11))
        .file("d/big", &pattern(BIG, 12))
        .file("d/c", &pattern(30_000, 13));
    l.finish()
}

fn lookup(fs: &ImageFs, path: &str) -> Ino {
    path.split('/').fold(Ino::ROOT, |ino, part| {
        fs.lookup(ino, OsStr::new(part)).expect(path).ino
    })
}

/// The blob with one byte flipped inside the member of chunk `chunk` of `path`.
fn corrupt(blob: &[u8], path: &str, chunk: usize) -> Vec<u8> {
    let parts = layer_parts(blob.to_vec(), &mut MemorySource::new());
    let id = parts.index.lookup(path).expect("path in index");
    let c = &parts.index.chunks(id)[chunk];
    let mut bad = blob.to_vec();
    // Past the 10-byte gzip header, inside the deflate stream.
    bad[c.offset as usize + 40] ^= 0xff;
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_random_reads_return_the_file() {
    let img = image_from_blobs(
        vec![to_estargz(&layer(), CHUNK)],
        FsOptions::default(),
        false,
    );
    let fs = img.fs.clone();
    let big = lookup(&fs, "d/big");
    let want = std::sync::Arc::new(pattern(BIG, 12));
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let fs = fs.clone();
        let want = want.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = t.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
            for _ in 0..20 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = x % (BIG as u64 + 100);
                let len = (x >> 40) as u32 % 300_000 + 1;
                let got = fs.read(big, off, len).await.expect("read");
                let start = (off as usize).min(BIG);
                let end = (start + len as usize).min(BIG);
                assert_eq!(&got[..], &want[start..end], "read {off}+{len}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_fails_its_reads_only() {
    let blob = to_estargz(&layer(), CHUNK);
    let bad = corrupt(&corrupt(&blob, "d/big", 3), "d/b", 0);
    let img = image_from_blobs(vec![bad], FsOptions::default(), false);
    let fs = &img.fs;
    let big = lookup(fs, "d/big");
    // Chunk 3 of the big file is corrupt: EIO there, good data elsewhere in the file.
    let err = fs.read(big, 3 * CHUNK + 5, 100).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert_eq!(
        &fs.read(big, 0, 1000).await.unwrap()[..],
        &pattern(BIG, 12)[..1000]
    );
    // d/a's read-around pulls in the corrupt d/b; d/a must still read.
    let a = fs.read(lookup(fs, "d/a"), 0, 20_000).await.unwrap();
    assert_eq!(&a[..], &pattern(10_000, 10)[..]);
    assert_eq!(
        fs.read(lookup(fs, "d/b"), 0, 10).await.unwrap_err().errno(),
        libc::EIO
    );
    let c = fs.read(lookup(fs, "d/c"), 0, 40_000).await.unwrap();
    assert_eq!(&c[..], &pattern(30_000, 13)[..]);
    let stats = &fs.stats().layers[0];
    assert!(stats.verification_failures >= 2, "{stats:?}");
    assert!(stats.read_errors >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_file_read_fetches_its_neighbours_in_one_request() {
    let img = image_from_blobs(
        vec![to_estargz(&layer(), CHUNK)],
        FsOptions::default(),
        false,
    );
    let fs = &img.fs;
    let a = fs.read(lookup(fs, "d/a"), 0, 100).await.unwrap();
    assert_eq!(&a[..], &pattern(10_000, 10)[..100]);
    let after_a = fs.stats().layers[0].clone();
    assert!(after_a.read_around_chunks >= 1, "{after_a:?}");
    // d/b came with d/a: reading it needs no new request.
    let b = fs.read(lookup(fs, "d/b"), 0, 20_000).await.unwrap();
    assert_eq!(&b[..], &pattern(20_000, 11)[..]);
    let after_b = fs.stats().layers[0].clone();
    assert_eq!(after_b.requests, after_a.requests, "{after_b:?}");
    assert!(after_b.cache_hits > after_a.cache_hits, "{after_b:?}");
}

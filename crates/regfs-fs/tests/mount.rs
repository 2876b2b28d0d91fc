//! Real FUSE mounts (root, /dev/fuse): the mounted tree against the oracle, concurrent reads,
//! corruption, passthrough, and unmounting with reads in flight.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use regfs_blob::{BlobSource, FaultySource, MemorySource};
use regfs_fs::{FsOptions, MountOptions, mount};
use support::{
    LayerTar, compare_real_trees, image, image_from_blobs, image_with_source, layer_parts,
    oracle_extract, pattern, require_fuse, three_layers, to_estargz,
};

const CHUNK: u64 = 64 * 1024;
const BIG: usize = 5 * 1024 * 1024 + 777;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_three_layer_image_equals_oracle() {
    require_fuse();
    let tars = three_layers();
    let img = image(&tars, CHUNK);
    let dir = tempfile::tempdir().unwrap();
    let (tree, mnt) = (dir.path().join("tree"), dir.path().join("mnt"));
    std::fs::create_dir(&tree).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    oracle_extract(&tars, &tree);
    let guard = mount(img.fs.clone(), &mnt, MountOptions::default()).expect("mount");
    let n = tokio::task::spawn_blocking({
        let (tree, mnt) = (tree.clone(), mnt.clone());
        move || compare_real_trees(&tree, &mnt)
    })
    .await
    .unwrap();
    assert_eq!(n, 28, "the walk must reach every entry");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .expect("in /proc/mounts");
    assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");
    // Read-only: writes are refused by the kernel.
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("etc/passwd"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let st = nix::sys::statvfs::statvfs(&mnt).expect("statvfs of the mount");
    assert_eq!(st.files(), img.fs.statfs().files);
    assert_eq!(st.blocks(), img.fs.statfs().blocks);
    assert!(
        st.blocks() > 0 && st.blocks_free() == 0,
        "read-only, never empty"
    );
    tokio::task::spawn_blocking(move || guard.unmount())
        .await
        .unwrap()
        .expect("unmount");
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(mnt.to_str().unwrap())
    );
}

fn big_layer() -> Vec<u8> {
    let mut l = LayerTar::new();
    l.dir("d", 0o755)
        .file("d/big", &pattern(BIG, 7))
        .file("d/small", &pattern(50_000, 8))
        .file("d/other", &pattern(70_000, 9));
    l.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_threads_of_random_reads_see_the_file() {
    require_fuse();
    let img = image(&[big_layer()], CHUNK);
    let mnt = tempfile::tempdir().unwrap();
    let guard = mount(img.fs.clone(), mnt.path(), MountOptions::default()).expect("mount");
    let path = mnt.path().join("d/big");
    let want = Arc::new(pattern(BIG, 7));
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let (path, want) = (path.clone(), want.clone());
            std::thread::spawn(move || {
                let f = std::fs::File::open(&path).expect("open");
                let mut x = (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for _ in 0..30 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = x % BIG as u64;
                    let len = ((x >> 32) % 400_000 + 1) as usize;
                    let mut buf = vec![0u8; len];
                    let mut got = 0;
                    while got < len {
                        let n = f.read_at(&mut buf[got..], off + got as u64).expect("pread");
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    let end = (off as usize + len).min(BIG);
                    assert_eq!(&buf[..got], &want[off as usize..end], "pread {off}+{len}");
                }
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for t in threads {
            t.join().expect("reader thread");
        }
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || guard.unmount())
        .await
        .unwrap()
        .expect("unmount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_gives_eio_and_other_files_read() {
    require_fuse();
    let mut blob = to_estargz(&big_layer(), CHUNK);
    let parts = layer_parts(blob.clone(), &mut MemorySource::new());
    let id = parts.index.lookup("d/small").expect("d/small");
    let c = parts.index.chunks(id)[0].clone();
    blob[c.offset as usize + 40] ^= 0xff;
    let img = image_from_blobs(vec![blob], FsOptions::default(), false);
    let mnt = tempfile::tempdir().unwrap();
    let guard = mount(img.fs.clone(), mnt.path(), MountOptions::default()).expect("mount");
    let root = mnt.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let err = std::fs::read(root.join("d/small")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert_eq!(
            std::fs::read(root.join("d/other")).unwrap(),
            pattern(70_000, 9)
        );
        let mut head = vec![0u8; 4096];
        std::fs::File::open(root.join("d/big"))
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(head, pattern(BIG, 7)[..4096]);
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || guard.unmount())
        .await
        .unwrap()
        .expect("unmount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_single_chunk_file_is_read_by_the_kernel() {
    require_fuse();
    let img = image(&[big_layer()], 1 << 20);
    let fs = img.fs.clone();
    let small = fs.lookup(regfs_fs::Ino::ROOT, "d".as_ref()).unwrap();
    let small = fs.lookup(small.ino, "small".as_ref()).unwrap();
    // Cache the file through the plain API; no FUSE read has happened yet.
    fs.read(small.ino, 0, 10).await.unwrap();
    assert!(
        fs.passthrough_path(small.ino).is_some(),
        "single chunk in the store"
    );
    let reads_before = fs.stats().layers[0].reads;
    let mnt = tempfile::tempdir().unwrap();
    let opts = MountOptions {
        passthrough: true,
        ..MountOptions::default()
    };
    let guard = mount(fs.clone(), mnt.path(), opts).expect("mount");
    let path = mnt.path().join("d/small");
    let data = tokio::task::spawn_blocking(move || std::fs::read(path).unwrap())
        .await
        .unwrap();
    assert_eq!(data, pattern(50_000, 8));
    assert_eq!(
        fs.stats().layers[0].reads,
        reads_before,
        "the kernel read the store file itself (FUSE passthrough)"
    );
    // A multi-chunk file still reads through userspace.
    let big = mnt.path().join("d/big");
    let data = tokio::task::spawn_blocking(move || std::fs::read(big).unwrap())
        .await
        .unwrap();
    assert_eq!(data, pattern(BIG, 7));
    assert!(fs.stats().layers[0].reads > reads_before);
    // An inode open in userspace mode stays so while open: the kernel refuses mixed modes, so
    // a second open after the content got cached must not pick passthrough.
    let other = mnt.path().join("d/other");
    tokio::task::spawn_blocking(move || {
        let mut first = std::fs::File::open(&other).unwrap();
        let mut data = Vec::new();
        first.read_to_end(&mut data).unwrap();
        assert_eq!(data, pattern(70_000, 9));
        assert_eq!(
            std::fs::read(&other).unwrap(),
            pattern(70_000, 9),
            "second open while the first is open"
        );
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || guard.unmount())
        .await
        .unwrap()
        .expect("unmount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmount_with_reads_in_flight_neither_hangs_nor_panics() {
    require_fuse();
    let blob = to_estargz(&big_layer(), CHUNK);
    let mut faulty: Option<Arc<FaultySource<MemorySource>>> = None;
    let img = image_with_source(vec![blob], FsOptions::default(), false, |m| {
        let f = Arc::new(FaultySource::new(m));
        // Every fetch waits at the gate: the reads below are stuck in flight.
        f.hold(|_| true);
        faulty = Some(f.clone());
        f as Arc<dyn BlobSource>
    });
    let faulty = faulty.unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let guard = mount(img.fs.clone(), mnt.path(), MountOptions::default()).expect("mount");
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let readers: Vec<_> = ["d/big", "d/small", "d/other"]
        .into_iter()
        .map(|name| {
            let path = mnt.path().join(name);
            let opened = opened_tx.clone();
            std::thread::spawn(move || {
                // Opened before the unmount, so the read below always reaches the filesystem.
                let mut f = std::fs::File::open(path)?;
                opened.send(()).expect("test alive");
                let mut data = Vec::new();
                f.read_to_end(&mut data).map(|_| data.len())
            })
        })
        .collect();
    for _ in 0..3 {
        tokio::task::block_in_place(|| opened_rx.recv().expect("reader opened its file"));
    }
    faulty.wait_held(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(move || guard.unmount())
        .await
        .unwrap()
        .expect("unmount");
    for r in readers {
        let res = tokio::task::spawn_blocking(move || r.join())
            .await
            .unwrap()
            .expect("reader did not panic");
        let err = res.expect_err("a read held at the gate cannot succeed");
        assert!(
            matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ENOTCONN)),
            "{err}"
        );
    }
    faulty.release();
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(mnt.path().to_str().unwrap())
    );
}

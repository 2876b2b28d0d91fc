//! Memory per entry of the inode table for a one-million-entry image (printed; the target of
//! < 150 bytes per entry is asserted because it is a size, not a timing).

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::ffi::OsStr;
use std::sync::Arc;

use regfs_blob::{ChunkCache, ChunkStore, LayerBlob, MemorySource, PlannerConfig};
use regfs_estargz::{Digest, EntryKind, Toc, TocEntry, TocIndex};
use regfs_fs::{FsLayer, FsOptions, ImageFs, Ino};

const DIRS: usize = 1000;
const FILES_PER_DIR: usize = 999;

/// A TOC shaped like a large distribution image: 1000 directories of 999 small files, one in
/// 50 a symlink, one in 100 with an xattr.
fn synthetic_toc() -> (Toc, u64) {
    let mut entries = Vec::with_capacity(DIRS * (FILES_PER_DIR + 1));
    let mut offset = 0u64;
    for d in 0..DIRS {
        let mut dir = TocEntry::new(format!("usr/lib/pkg{d:04}/"), EntryKind::Dir);
        dir.mode = 0o755;
        dir.modtime = Some("2021-01-01T00:00:00Z".into());
        entries.push(dir);
        for f in 0..FILES_PER_DIR {
            let name = format!("usr/lib/pkg{d:04}/libmodule-{f:05}.so");
            let mut e = if f % 50 == 0 {
                let mut e = TocEntry::new(name, EntryKind::Symlink);
                e.link_name = format!("libmodule-{:05}.so", f + 1);
                e
            } else {
                let mut e = TocEntry::new(name, EntryKind::Reg);
                let size = 1000 + (f as i64 % 7) * 100;
                e.size = size;
                offset += 600;
                e.offset = offset as i64;
                let d = Digest::sha256(format!("{d}/{f}").as_bytes());
                e.digest = Some(d);
                e.chunk_digest = Some(d);
                e
            };
            e.mode = 0o644;
            e.modtime = Some("2021-01-01T00:00:00Z".into());
            if f % 100 == 1 {
                e.xattrs
                    .insert("user.mime_type".into(), b"application/x-sharedlib".to_vec());
            }
            entries.push(e);
        }
    }
    (
        Toc {
            version: 1,
            entries: Some(entries),
        },
        offset + 10_000,
    )
}

#[test]
fn one_million_entries_stay_under_150_bytes_each() {
    let (toc, blob_size) = synthetic_toc();
    let index = TocIndex::new(&toc, blob_size).expect("index");
    drop(toc);
    let store = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(
        ChunkStore::open(store.path(), None).unwrap(),
        PlannerConfig::default(),
    );
    let handle = cache.layer(LayerBlob {
        digest: Digest::sha256(b"synthetic"),
        size: blob_size,
        toc_offset: blob_size - 100,
        source: Arc::new(MemorySource::new()),
        verify: true,
    });
    let fs = ImageFs::new(
        vec![FsLayer {
            digest: Digest::sha256(b"synthetic"),
            index,
            handle,
        }],
        FsOptions::default(),
    )
    .expect("build");
    let entries = fs.inode_count();
    // Root, usr, usr/lib, the package directories and their files.
    assert_eq!(entries, 3 + DIRS * (FILES_PER_DIR + 1));
    let per_entry = fs.memory_bytes() as f64 / entries as f64;
    println!(
        "inode table: {entries} entries, {} bytes, {per_entry:.1} bytes/entry",
        fs.memory_bytes()
    );
    assert!(per_entry < 150.0, "{per_entry:.1} bytes per entry");
    // The table answers like the TOC says.
    let usr = fs.lookup(Ino::ROOT, OsStr::new("usr")).unwrap();
    let lib = fs.lookup(usr.ino, OsStr::new("lib")).unwrap();
    let pkg = fs.lookup(lib.ino, OsStr::new("pkg0999")).unwrap();
    let f = fs
        .lookup(pkg.ino, OsStr::new("libmodule-00998.so"))
        .unwrap();
    assert_eq!(f.size, 1000 + (998 % 7) * 100);
    let l = fs
        .lookup(pkg.ino, OsStr::new("libmodule-00950.so"))
        .unwrap();
    assert_eq!(fs.readlink(l.ino).unwrap(), "libmodule-00951.so");
}

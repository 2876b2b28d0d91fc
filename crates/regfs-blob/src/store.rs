//! The on-disk chunk store: verified, uncompressed chunk bytes, content-addressed by chunk digest.
//!
//! ```text
//! <root>/
//! ├── chunks/
//! │   └── sha256/
//! │       ├── 3f/
//! │       │   └── 3f9a…c1      uncompressed bytes of the chunk whose sha256 is 3f9a…c1;
//! │       │                    its mtime is the chunk's last use (the LRU clock)
//! │       └── e0/
//! │           └── e04b…77
//! └── tmp/
//!     └── 3f9a…c1.<pid>.<n>    a chunk being written; renamed into chunks/ when complete,
//!                              swept when the store is opened
//! ```
//!
//! Why content-addressed: identical chunks of different layers and images (same base image,
//! same shared library) are stored once and fetched once. Why uncompressed: a warm read costs a
//! `pread` and no gunzip or sha256, and a whole file's chunk can be handed to FUSE passthrough
//! ([`ChunkStore::path_of`]).
//!
//! Writes go to `tmp/` and are renamed into place, so a reader never sees a half-written chunk
//! under its final name. The store survives restarts: [`ChunkStore::open`] rebuilds the in-memory
//! index (size and last use of every chunk) from a directory scan. Nothing is fsynced — this is a
//! cache — so after a crash a file could hold the wrong bytes; therefore the first read of each
//! chunk in a process re-hashes it, and a mismatch deletes it and reports a miss.
//!
//! Size cap: after every insert, least recently used chunks are deleted until the total is under
//! the cap. The LRU order is kept in memory and persisted as file mtimes (updated on every hit),
//! so it survives restarts. Eviction may race with readers: a reader that already opened the file
//! keeps reading it (unlinked files stay readable), one holding the bytes in memory keeps them; a
//! reader that did not yet open it sees a miss and fetches again. A chunk file is never written
//! in place, only renamed over, so eviction or a concurrent store never shows anyone a torn chunk.
//!
//! Several processes may share a store (each mount, `regfs cache gc`): each re-reads the
//! directory after writing an eighth of its cap, so the cap holds within that margin per writing
//! process, and `open` sweeps only the temp files of processes that no longer run.
//!
//! Disk full: a chunk that cannot be written stays in the in-memory tier (verified bytes), a
//! warning is logged once, and reads go on from memory and the network.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, FileTimes};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use regfs_estargz::Digest;

use crate::Error;

/// The largest chunk the store accepts. The reference chunk size is 4 MiB; 64 MiB leaves room for
/// custom converters while bounding what one hostile TOC entry can make us buffer.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// Usage of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreUsage {
    /// Number of chunks stored.
    pub chunks: u64,
    /// Total bytes of chunk data.
    pub bytes: u64,
}

/// What a [`ChunkStore::gc`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Chunks deleted.
    pub removed_chunks: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Usage afterwards.
    pub usage: StoreUsage,
}

#[derive(Default)]
struct Index {
    /// chunk -> (size, last use in ns since the epoch)
    entries: HashMap<Digest, (u64, u128)>,
    /// LRU order: oldest first.
    lru: BTreeSet<(u128, Digest)>,
    bytes: u64,
    /// Chunks whose file content was written or re-hashed by this process.
    trusted: HashSet<Digest>,
}

impl Index {
    fn insert(&mut self, digest: Digest, size: u64, used: u128) {
        self.remove(&digest);
        self.entries.insert(digest, (size, used));
        self.lru.insert((used, digest));
        self.bytes = self.bytes.saturating_add(size);
    }

    fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let (size, used) = self.entries.remove(digest)?;
        self.lru.remove(&(used, *digest));
        self.bytes = self.bytes.saturating_sub(size);
        self.trusted.remove(digest);
        Some(size)
    }

    fn touch(&mut self, digest: &Digest, now: u128) {
        if let Some((_, used)) = self.entries.get_mut(digest) {
            self.lru.remove(&(*used, *digest));
            *used = now;
            self.lru.insert((now, *digest));
        }
    }

    fn usage(&self) -> StoreUsage {
        StoreUsage {
            chunks: self.entries.len() as u64,
            bytes: self.bytes,
        }
    }
}

struct StoreInner {
    root: PathBuf,
    max_bytes: Option<u64>,
    index: Mutex<Index>,
    tmp_seq: AtomicU64,
    /// Bytes this process stored since it last looked at the directory; see [`RESCAN_SHARE`].
    written_since_scan: AtomicU64,
    /// Set while storing fails (disk full): the warning is logged once per failing spell.
    store_failing: AtomicBool,
    /// Recently used chunks in memory. A FUSE read asks for at most 1 MiB while a chunk is up to
    /// 4 MiB: without this, reading one chunk sequentially would read (and after a restart,
    /// hash) the whole chunk file once per request.
    hot: quick_cache::sync::Cache<Digest, Bytes, ChunkWeighter>,
}

/// Several processes may share one store (every `regfs mount` of a host, `regfs cache gc`), and
/// each one's index only sees its own inserts. Each process therefore re-reads the directory
/// after storing this share of the cap (1/8: the cap then holds within 1/8 of itself per other
/// writing process), learning the others' chunks before it evicts.
const RESCAN_SHARE: u64 = 8;

/// Memory kept for hot chunks: the working set of a container start-up (python reads ~11 MB)
/// many times over, a small share of the machine's memory.
pub const HOT_CHUNK_BYTES: u64 = 256 << 20;

/// Weighs a cached chunk by its length (at least 1, so empty chunks are evictable too).
#[derive(Clone)]
struct ChunkWeighter;

impl quick_cache::Weighter<Digest, Bytes> for ChunkWeighter {
    fn weight(&self, _digest: &Digest, data: &Bytes) -> u64 {
        (data.len() as u64).max(1)
    }
}

/// Verified chunks on disk, content-addressed, size-capped with LRU eviction. Cheap to clone.
#[derive(Clone)]
pub struct ChunkStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("root", &self.inner.root)
            .field("max_bytes", &self.inner.max_bytes)
            .finish()
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos()
}

impl ChunkStore {
    /// Opens (creating if needed) the store at `root`, capped at `max_bytes` of chunk data
    /// (`None` = unbounded). Sweeps leftover temp files, indexes existing chunks, and evicts down
    /// to the cap.
    pub fn open(root: impl Into<PathBuf>, max_bytes: Option<u64>) -> Result<ChunkStore, Error> {
        let root = root.into();
        let chunks = root.join("chunks").join("sha256");
        let tmp = root.join("tmp");
        for dir in [&chunks, &tmp] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create store dir", dir, e))?;
        }
        for entry in fs::read_dir(&tmp).map_err(|e| Error::io("list", &tmp, e))? {
            let entry = entry.map_err(|e| Error::io("list", &tmp, e))?;
            // A leftover from a crash; losing it only costs a refetch. Another process sharing
            // the store (a second mount, `regfs cache gc`) may be writing it right now: only the
            // temp files of processes that are gone are swept.
            if !writer_alive(&entry.file_name()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let mut index = Index::default();
        for (digest, (size, used)) in scan(&root)? {
            index.insert(digest, size, used);
        }
        let store = ChunkStore {
            inner: Arc::new(StoreInner {
                root,
                max_bytes,
                index: Mutex::new(index),
                tmp_seq: AtomicU64::new(0),
                written_since_scan: AtomicU64::new(0),
                store_failing: AtomicBool::new(false),
                // ~1 MiB average chunk for the item estimate; the weight cap is what binds.
                hot: quick_cache::sync::Cache::with_weighter(
                    (HOT_CHUNK_BYTES >> 20) as usize,
                    HOT_CHUNK_BYTES,
                    ChunkWeighter,
                ),
            }),
        };
        if let Some(cap) = max_bytes {
            store.gc(cap)?;
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The size cap given to [`ChunkStore::open`].
    pub fn max_bytes(&self) -> Option<u64> {
        self.inner.max_bytes
    }

    /// Chunks and bytes currently stored.
    pub fn du(&self) -> StoreUsage {
        self.index().usage()
    }

    /// Whether the chunk is stored on disk or held in memory (it may still be evicted before it
    /// is read).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.index().entries.contains_key(digest) || self.inner.hot.contains_key(digest)
    }

    /// The file holding the chunk's uncompressed bytes, for FUSE passthrough; marks it used.
    /// Eviction may delete it at any time after this returns: callers must handle `ENOENT` on
    /// open by falling back to a normal read.
    pub fn path_of(&self, digest: &Digest) -> Option<PathBuf> {
        let path = shard_path(&self.inner.root, digest);
        let now = now_ns();
        {
            let mut index = self.index();
            if !index.entries.contains_key(digest) {
                return None;
            }
            index.touch(digest, now);
        }
        // The mtime is only the persisted LRU hint; failing to set it is harmless.
        let _ = File::open(&path).and_then(|f| f.set_times(file_times(now)));
        Some(path)
    }

    /// The chunk's bytes, or `None` if it is not stored (or was evicted or found damaged).
    /// Blocking: call from a blocking context.
    pub fn get(&self, digest: &Digest) -> Result<Option<Bytes>, Error> {
        if let Some(data) = self.inner.hot.get(digest) {
            // Verified bytes, whether or not the file still exists: a chunk that could not be
            // written (disk full) lives only here, and one evicted a moment ago is still right.
            let now = now_ns();
            let indexed = {
                let mut index = self.index();
                let indexed = index.entries.contains_key(digest);
                if indexed {
                    index.touch(digest, now);
                }
                indexed
            };
            if indexed {
                // The mtime is the LRU order that survives a restart (cheap next to a read).
                let path = shard_path(&self.inner.root, digest);
                let _ = File::open(&path).and_then(|f| f.set_times(file_times(now)));
            }
            return Ok(Some(data));
        }
        let trusted = {
            let index = self.index();
            if !index.entries.contains_key(digest) {
                return Ok(None);
            }
            index.trusted.contains(digest)
        };
        let path = shard_path(&self.inner.root, digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Evicted (or deleted by hand) after the index lookup.
                self.index().remove(digest);
                return Ok(None);
            }
            Err(e) => return Err(Error::io("open chunk", &path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat chunk", &path, e))?
            .len();
        if len > MAX_CHUNK_SIZE {
            self.discard(digest, &path);
            return Ok(None);
        }
        let mut data = Vec::with_capacity(len as usize);
        file.read_to_end(&mut data)
            .map_err(|e| Error::io("read chunk", &path, e))?;
        if !trusted {
            if Digest::sha256(&data) != *digest {
                tracing::warn!(path = %path.display(), "damaged chunk in store, deleting");
                self.discard(digest, &path);
                return Ok(None);
            }
            self.index().trusted.insert(*digest);
        }
        let now = now_ns();
        self.index().touch(digest, now);
        let _ = file.set_times(file_times(now));
        let data = Bytes::from(data);
        self.inner.hot.insert(*digest, data.clone());
        Ok(Some(data))
    }

    /// Stores a chunk whose bytes the caller has verified against `digest`, then evicts down to
    /// the cap. Blocking.
    pub(crate) fn put_verified(&self, digest: &Digest, data: &Bytes) -> Result<(), Error> {
        if self.index().entries.contains_key(digest) {
            return Ok(());
        }
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.inner.root.join("tmp").join(format!(
            "{}.{}.{seq}",
            digest.hex(),
            std::process::id()
        ));
        let dest = shard_path(&self.inner.root, digest);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&tmp, &dest)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            // Verified bytes: keep them in memory so that the reads of this chunk that follow
            // (FUSE asks for 128 KiB at a time) do not fetch it again.
            self.inner.hot.insert(*digest, data.clone());
            if !self.inner.store_failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    store = %self.inner.root.display(),
                    error = %e,
                    "cannot write chunks to the cache (disk full?): serving them from memory and the network until writes work again"
                );
            }
            return Err(Error::io("store chunk", &dest, e));
        }
        if self.inner.store_failing.swap(false, Ordering::Relaxed) {
            tracing::info!(store = %self.inner.root.display(), "writing chunks to the cache works again");
        }
        {
            let mut index = self.index();
            index.insert(*digest, data.len() as u64, now_ns());
            index.trusted.insert(*digest);
        }
        // The reader that fetched it usually reads the rest of the chunk next.
        self.inner.hot.insert(*digest, data.clone());
        if let Some(cap) = self.inner.max_bytes {
            let written = self
                .inner
                .written_since_scan
                .fetch_add(data.len() as u64, Ordering::Relaxed)
                + data.len() as u64;
            if written >= cap / RESCAN_SHARE {
                self.inner.written_since_scan.store(0, Ordering::Relaxed);
                self.rescan()?;
            }
            self.gc(cap)?;
        }
        Ok(())
    }

    /// Brings the index in line with the directory: learns the chunks other processes stored,
    /// forgets the ones they evicted. Blocking.
    pub fn rescan(&self) -> Result<(), Error> {
        let started = now_ns();
        let on_disk = scan(&self.inner.root)?;
        let mut index = self.index();
        // Entries used since the scan started may have been stored after it looked: keep them.
        let gone: Vec<Digest> = index
            .entries
            .iter()
            .filter(|(d, (_, used))| *used < started && !on_disk.contains_key(*d))
            .map(|(d, _)| *d)
            .collect();
        for d in gone {
            index.remove(&d);
        }
        for (d, (size, used)) in on_disk {
            if !index.entries.contains_key(&d) {
                index.insert(d, size, used);
            }
        }
        Ok(())
    }

    /// Deletes least recently used chunks until at most `max_bytes` remain. Blocking.
    pub fn gc(&self, max_bytes: u64) -> Result<GcReport, Error> {
        let mut removed_chunks = 0;
        let mut freed_bytes = 0u64;
        loop {
            let victim = {
                let mut index = self.index();
                if index.bytes <= max_bytes {
                    break;
                }
                let Some(&(_, digest)) = index.lru.first() else {
                    break;
                };
                index.remove(&digest).map(|size| (digest, size))
            };
            let Some((digest, size)) = victim else { break };
            self.inner.hot.remove(&digest);
            let path = shard_path(&self.inner.root, &digest);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("evict chunk", &path, e)),
            }
            removed_chunks += 1;
            freed_bytes = freed_bytes.saturating_add(size);
        }
        Ok(GcReport {
            removed_chunks,
            freed_bytes,
            usage: self.du(),
        })
    }

    fn discard(&self, digest: &Digest, path: &Path) {
        self.index().remove(digest);
        self.inner.hot.remove(digest);
        let _ = fs::remove_file(path);
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Index updates never panic midway, so a poisoned lock still guards consistent data.
        self.inner.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every chunk file under `root` with its size and mtime (its last use).
fn scan(root: &Path) -> Result<HashMap<Digest, (u64, u128)>, Error> {
    let chunks = root.join("chunks").join("sha256");
    let mut found = HashMap::new();
    for shard in fs::read_dir(&chunks).map_err(|e| Error::io("list", &chunks, e))? {
        let shard = shard.map_err(|e| Error::io("list", &chunks, e))?.path();
        if !shard.is_dir() {
            continue;
        }
        let entries = match fs::read_dir(&shard) {
            Ok(e) => e,
            // Another process may remove an empty shard between the two listings.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("list", &shard, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &shard, e))?;
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|name| format!("sha256:{name}").parse::<Digest>().ok())
            else {
                continue;
            };
            if entry.path() != shard_path(root, &digest) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Evicted by another process since the listing.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", entry.path(), e)),
            };
            let used = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            found.insert(digest, (meta.len(), used));
        }
    }
    Ok(found)
}

/// Whether the process that named temp file `name` (`<hex>.<pid>.<seq>`) still runs. Names not
/// of that shape are nobody's.
fn writer_alive(name: &std::ffi::OsStr) -> bool {
    let pid = name
        .to_str()
        .and_then(|n| n.split('.').nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if pid == std::process::id() => true,
        Some(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        None => false,
    }
}

fn shard_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join("chunks").join("sha256").join(&hex[..2]).join(hex)
}

fn file_times(ns: u128) -> FileTimes {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
    FileTimes::new().set_modified(t).set_accessed(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: usize) -> (Digest, Vec<u8>) {
        let data = vec![n; len];
        (Digest::sha256(&data), data)
    }

    #[test]
    fn put_get_survives_reopen_and_keeps_lru_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), None).unwrap();
        let (a, da) = chunk(1, 100);
        let (b, db) = chunk(2, 100);
        let (c, dc) = chunk(3, 100);
        store.put_verified(&a, &Bytes::from(da.clone())).unwrap();
        store.put_verified(&b, &Bytes::from(db.clone())).unwrap();
        store.put_verified(&c, &Bytes::from(dc.clone())).unwrap();
        // Use `a` last so `b` is the oldest.
        assert_eq!(store.get(&a).unwrap().unwrap(), da);
        drop(store);

        let store = ChunkStore::open(dir.path(), Some(250)).unwrap();
        assert_eq!(
            store.du(),
            StoreUsage {
                chunks: 2,
                bytes: 200
            }
        );
        assert!(!store.contains(&b), "oldest chunk should be evicted");
        assert_eq!(store.get(&a).unwrap().unwrap(), da);
        assert_eq!(store.get(&c).unwrap().unwrap(), dc);
        let p = store.path_of(&a).unwrap();
        assert!(p.ends_with(format!("chunks/sha256/{}/{}", &a.hex()[..2], a.hex())));
    }

    #[test]
    fn damaged_file_is_a_miss_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), None).unwrap();
        let (a, da) = chunk(7, 64);
        store.put_verified(&a, &Bytes::from(da.clone())).unwrap();
        let path = store.path_of(&a).unwrap();
        fs::write(&path, b"not the chunk").unwrap();
        drop(store);
        let store = ChunkStore::open(dir.path(), None).unwrap();
        assert!(store.contains(&a));
        assert_eq!(store.get(&a).unwrap(), None);
        assert!(!store.contains(&a));
        assert!(!path.exists());
    }

    #[test]
    fn open_sweeps_only_the_temp_files_of_dead_writers() {
        let dir = tempfile::tempdir().unwrap();
        ChunkStore::open(dir.path(), None).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let hex = "ab".repeat(32);
        let mine = dir
            .path()
            .join(format!("tmp/{hex}.{}.1", std::process::id()));
        let init = dir.path().join(format!("tmp/{hex}.1.2"));
        let gone = dir.path().join(format!("tmp/{hex}.{dead}.3"));
        for p in [&mine, &init, &gone] {
            fs::write(p, b"partial").unwrap();
        }
        ChunkStore::open(dir.path(), None).unwrap();
        assert!(
            mine.exists() && init.exists(),
            "a live writer's file was swept"
        );
        assert!(!gone.exists(), "a dead writer's file was kept");
    }

    #[test]
    fn gc_reports_and_open_sweeps_tmp_and_ignores_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), None).unwrap();
        for n in 0..4 {
            let (d, data) = chunk(n, 10);
            store.put_verified(&d, &Bytes::from(data.clone())).unwrap();
        }
        fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        fs::write(dir.path().join("chunks/sha256/ab/not-a-digest"), b"x")
            .or_else(|_| {
                fs::create_dir_all(dir.path().join("chunks/sha256/ab"))?;
                fs::write(dir.path().join("chunks/sha256/ab/not-a-digest"), b"x")
            })
            .unwrap();
        drop(store);
        let store = ChunkStore::open(dir.path(), None).unwrap();
        assert!(!dir.path().join("tmp/leftover").exists());
        assert_eq!(store.du().chunks, 4);
        let report = store.gc(15).unwrap();
        assert_eq!(report.removed_chunks, 3);
        assert_eq!(report.freed_bytes, 30);
        assert_eq!(
            report.usage,
            StoreUsage {
                chunks: 1,
                bytes: 10
            }
        );
    }
}

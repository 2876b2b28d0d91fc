//! Where blob bytes come from: the [`BlobSource`] seam and its local implementations.
//!
//! A source answers two questions about a blob named by its digest: how big is it, and what are
//! the bytes in these ranges. `read_ranges` takes several ranges at once so that a remote source
//! can answer them with one request (an HTTP multi-range GET); local sources just `pread` each.
//! Sources do not verify anything: the cache verifies decompressed chunks against the TOC.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::future::BoxFuture;
use regfs_estargz::Digest;

use crate::Error;

/// Who asked for bytes; decides which concurrency budget a fetch uses.
///
/// `OnDemand` reads (a process is blocked in `read(2)`) are never queued behind prefetch or
/// background fetches, and while one is waiting for the network those two pause. `ReadAhead`
/// shares the on-demand budget (the reader will want the bytes soon) but pauses nothing: a
/// speculative read must not hold up the landmark prefetch that a start-up is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestSource {
    /// A reader is waiting for these bytes right now.
    OnDemand,
    /// The chunk after the one a sequential reader is reading: wanted soon, not yet.
    ReadAhead,
    /// The landmark prefetch of a freshly mounted layer.
    Prefetch,
    /// Filling the rest of the layer while nobody is waiting.
    Background,
}

/// Random access to blobs by digest. Object safe: shared as `Arc<dyn BlobSource>`.
pub trait BlobSource: Send + Sync + 'static {
    /// A short name for error messages ("registry", "oci-layout", ...).
    fn name(&self) -> &'static str;

    /// The blob's size in bytes.
    fn size<'a>(&'a self, blob: &'a Digest) -> BoxFuture<'a, Result<u64, Error>>;

    /// The bytes of each range, in order, each exactly as long as its range. Sources that can
    /// answer several ranges in one request do so.
    fn read_ranges<'a>(
        &'a self,
        blob: &'a Digest,
        ranges: &'a [Range<u64>],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, Error>>;
}

/// The largest single range a source will buffer. Chunk members are at most a few MiB and the
/// planner caps merged requests far below this; anything larger is a bug or an attack.
pub const MAX_RANGE_BYTES: u64 = 256 << 20;

/// Checks `range` against the blob size and [`MAX_RANGE_BYTES`].
pub(crate) fn check_range(blob: &Digest, range: &Range<u64>, size: u64) -> Result<(), Error> {
    let bad = |reason| Error::BadRange {
        blob: *blob,
        range: range.clone(),
        reason,
    };
    if range.start > range.end {
        return Err(bad("start after end"));
    }
    if range.end > size {
        return Err(bad("past the end of the blob"));
    }
    if range.end - range.start > MAX_RANGE_BYTES {
        return Err(bad("larger than MAX_RANGE_BYTES"));
    }
    Ok(())
}

/// Blobs held in memory; the fake beside the real sources.
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    blobs: HashMap<Digest, Bytes>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    /// Adds a blob under its own digest and returns that digest.
    pub fn insert(&mut self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let digest = Digest::sha256(&data);
        self.blobs.insert(digest, data);
        digest
    }
}

impl BlobSource for MemorySource {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn size<'a>(&'a self, blob: &'a Digest) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move { Ok(self.blob(blob)?.len() as u64) })
    }

    fn read_ranges<'a>(
        &'a self,
        blob: &'a Digest,
        ranges: &'a [Range<u64>],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, Error>> {
        Box::pin(async move {
            let data = self.blob(blob)?;
            ranges
                .iter()
                .map(|r| {
                    check_range(blob, r, data.len() as u64)?;
                    // check_range bounded both ends by the length, so they fit in usize.
                    Ok(data.slice(r.start as usize..r.end as usize))
                })
                .collect()
        })
    }
}

impl MemorySource {
    fn blob(&self, blob: &Digest) -> Result<&Bytes, Error> {
        self.blobs.get(blob).ok_or(Error::BlobNotFound {
            blob: *blob,
            source_name: "memory",
        })
    }
}

/// Blobs in local files: either a directory holding one file per blob named by its hex digest,
/// or explicitly listed files.
#[derive(Clone, Debug, Default)]
pub struct FileSource {
    dir: Option<PathBuf>,
    files: HashMap<Digest, PathBuf>,
}

impl FileSource {
    /// Blobs are `<dir>/<hex digest>`.
    pub fn dir(dir: impl Into<PathBuf>) -> FileSource {
        FileSource {
            dir: Some(dir.into()),
            files: HashMap::new(),
        }
    }

    /// No directory; only files added with [`FileSource::with_file`].
    pub fn new() -> FileSource {
        FileSource::default()
    }

    /// Serves `blob` from `path` (which is trusted to hold it; the cache verifies chunks).
    pub fn with_file(mut self, blob: Digest, path: impl Into<PathBuf>) -> FileSource {
        self.files.insert(blob, path.into());
        self
    }

    fn path(&self, blob: &Digest) -> Result<PathBuf, Error> {
        if let Some(p) = self.files.get(blob) {
            return Ok(p.clone());
        }
        match &self.dir {
            Some(dir) => Ok(dir.join(blob.hex())),
            None => Err(Error::BlobNotFound {
                blob: *blob,
                source_name: "file",
            }),
        }
    }
}

impl BlobSource for FileSource {
    fn name(&self) -> &'static str {
        "file"
    }

    fn size<'a>(&'a self, blob: &'a Digest) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move { file_size(blob, self.path(blob)?, "file").await })
    }

    fn read_ranges<'a>(
        &'a self,
        blob: &'a Digest,
        ranges: &'a [Range<u64>],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, Error>> {
        Box::pin(
            async move { pread_ranges(*blob, self.path(blob)?, ranges.to_vec(), "file").await },
        )
    }
}

/// Blobs of an OCI image layout directory (`<dir>/blobs/sha256/<hex>`), as written by
/// `skopeo copy ... oci:<dir>` or `umoci`.
#[derive(Clone, Debug)]
pub struct OciLayoutSource {
    dir: PathBuf,
}

impl OciLayoutSource {
    /// Opens a layout; fails if `<dir>/blobs/sha256` is not a directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<OciLayoutSource, Error> {
        let dir = dir.into();
        let blobs = dir.join("blobs").join("sha256");
        match std::fs::metadata(&blobs) {
            Ok(m) if m.is_dir() => Ok(OciLayoutSource { dir }),
            Ok(_) => Err(Error::io(
                "open oci layout",
                blobs,
                std::io::Error::other("not a directory"),
            )),
            Err(e) => Err(Error::io("open oci layout", blobs, e)),
        }
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, blob: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(blob.hex())
    }
}

impl BlobSource for OciLayoutSource {
    fn name(&self) -> &'static str {
        "oci-layout"
    }

    fn size<'a>(&'a self, blob: &'a Digest) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move { file_size(blob, self.path(blob), "oci-layout").await })
    }

    fn read_ranges<'a>(
        &'a self,
        blob: &'a Digest,
        ranges: &'a [Range<u64>],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, Error>> {
        Box::pin(pread_ranges(
            *blob,
            self.path(blob),
            ranges.to_vec(),
            "oci-layout",
        ))
    }
}

fn not_found_or_io(
    blob: Digest,
    path: &Path,
    e: std::io::Error,
    source_name: &'static str,
) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::BlobNotFound { blob, source_name }
    } else {
        Error::io("open blob", path, e)
    }
}

async fn file_size(blob: &Digest, path: PathBuf, source_name: &'static str) -> Result<u64, Error> {
    match tokio::fs::metadata(&path).await {
        Ok(m) => Ok(m.len()),
        Err(e) => Err(not_found_or_io(*blob, &path, e, source_name)),
    }
}

async fn pread_ranges(
    blob: Digest,
    path: PathBuf,
    ranges: Vec<Range<u64>>,
    source_name: &'static str,
) -> Result<Vec<Bytes>, Error> {
    tokio::task::spawn_blocking(move || {
        let file = File::open(&path).map_err(|e| not_found_or_io(blob, &path, e, source_name))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat blob", &path, e))?
            .len();
        ranges
            .iter()
            .map(|r| {
                check_range(&blob, r, size)?;
                // Bounded by MAX_RANGE_BYTES above.
                let mut buf = vec![0u8; (r.end - r.start) as usize];
                file.read_exact_at(&mut buf, r.start)
                    .map_err(|e| Error::io("read blob", &path, e))?;
                Ok(Bytes::from(buf))
            })
            .collect()
    })
    .await
    .unwrap_or_else(|e| {
        Err(Error::io(
            "read blob",
            "<blocking task>",
            std::io::Error::other(e.to_string()),
        ))
    })
}

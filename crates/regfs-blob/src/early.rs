//! [`EarlySource`]: a range fetched before anyone asks for it.
//!
//! A mount knows a layer's landmark range (the prioritized files) from a manifest annotation
//! before it has the TOC. Starting that range in the same round trip as the TOC read saves a
//! whole round trip on the start-up path; the chunk reads that follow are answered from it.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use regfs_estargz::Digest;

use crate::{BlobSource, Error};

type SharedFetch = Shared<BoxFuture<'static, Result<Bytes, Arc<Error>>>>;

/// A source that starts fetching one range of one blob at once, and answers reads inside that
/// range from it; everything else (and everything, should the early fetch fail) goes to the
/// inner source.
pub struct EarlySource {
    inner: Arc<dyn BlobSource>,
    blob: Digest,
    range: Range<u64>,
    fetch: SharedFetch,
}

impl EarlySource {
    /// Starts fetching `range` of `blob` now, on the current tokio runtime.
    pub fn start(inner: Arc<dyn BlobSource>, blob: Digest, range: Range<u64>) -> EarlySource {
        let fetch = spawn_range(inner.clone(), blob, range.clone(), "early fetch");
        EarlySource {
            inner,
            blob,
            range,
            fetch,
        }
    }
}

/// Spawns the read of one range as a shareable future: several waiters, one request.
pub fn spawn_range(
    source: Arc<dyn BlobSource>,
    blob: Digest,
    range: Range<u64>,
    what: &'static str,
) -> Shared<BoxFuture<'static, Result<Bytes, Arc<Error>>>> {
    let task = tokio::spawn(async move {
        source
            .read_ranges(&blob, std::slice::from_ref(&range))
            .await
            .map(|mut parts| parts.pop().unwrap_or_default())
    });
    async move {
        match task.await {
            Ok(r) => r.map_err(Arc::new),
            Err(e) => Err(Arc::new(Error::Source {
                blob,
                source_name: what,
                source: Arc::new(e),
            })),
        }
    }
    .boxed()
    .shared()
}

impl BlobSource for EarlySource {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn size<'a>(&'a self, blob: &'a Digest) -> BoxFuture<'a, Result<u64, Error>> {
        self.inner.size(blob)
    }

    fn read_ranges<'a>(
        &'a self,
        blob: &'a Digest,
        ranges: &'a [Range<u64>],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, Error>> {
        async move {
            let inside = *blob == self.blob
                && ranges
                    .iter()
                    .all(|r| r.start >= self.range.start && r.end <= self.range.end);
            if inside
                && let Ok(bytes) = self.fetch.clone().await
                && bytes.len() as u64 == self.range.end - self.range.start
            {
                let base = self.range.start;
                return Ok(ranges
                    .iter()
                    .map(|r| bytes.slice((r.start - base) as usize..(r.end - base) as usize))
                    .collect());
            }
            self.inner.read_ranges(blob, ranges).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FaultySource, MemorySource};

    #[tokio::test]
    async fn answers_inside_its_range_from_one_request() {
        let mut mem = MemorySource::new();
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let digest = mem.insert(data.clone());
        let faulty = Arc::new(FaultySource::new(mem));
        let early = EarlySource::start(faulty.clone(), digest, 100..5000);
        let parts = early
            .read_ranges(&digest, &[100..200, 4000..5000])
            .await
            .unwrap();
        assert_eq!(&parts[0][..], &data[100..200]);
        assert_eq!(&parts[1][..], &data[4000..5000]);
        let again = early
            .read_ranges(&digest, std::slice::from_ref(&(300..400)))
            .await
            .unwrap();
        assert_eq!(&again[0][..], &data[300..400]);
        assert_eq!(
            faulty.calls(),
            1,
            "reads inside the range reuse the early fetch"
        );
        // Outside the range: the inner source.
        let outside = early
            .read_ranges(&digest, std::slice::from_ref(&(4990..5010)))
            .await
            .unwrap();
        assert_eq!(&outside[0][..], &data[4990..5010]);
        assert_eq!(faulty.calls(), 2);
    }

    #[tokio::test]
    async fn a_failed_early_fetch_falls_back_to_the_inner_source() {
        let mut mem = MemorySource::new();
        let data = vec![7u8; 4096];
        let digest = mem.insert(data.clone());
        let faulty = Arc::new(FaultySource::new(mem));
        faulty.fail_next(1);
        let early = EarlySource::start(faulty.clone(), digest, 0..4096);
        let parts = early
            .read_ranges(&digest, std::slice::from_ref(&(10..20)))
            .await
            .unwrap();
        assert_eq!(&parts[0][..], &data[10..20]);
    }
}

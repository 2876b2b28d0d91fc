//! Fault injection around any [`BlobSource`], for tests: failures, held (delayed) calls, short
//! reads, corrupted bytes, and a log of every call.
//!
//! Delays are gates, not timers: a held call waits until the test releases it, so tests that
//! race two reads assert on order of events rather than on wall-clock time.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use regfs_estargz::Digest;
use tokio::sync::watch;

use crate::{BlobSource, Error};

type RangePredicate = Box<dyn Fn(&[Range<u64>]) -> bool + Send + Sync>;

#[derive(Default)]
struct Faults {
    fail_next: u32,
    short_next: u32,
    corrupt_next: u32,
    corrupt_at: Option<u64>,
    delay: Option<Duration>,
    hold: Option<RangePredicate>,
    log: Vec<Vec<Range<u64>>>,
}

/// A [`BlobSource`] wrapper that injects faults and counts calls.
pub struct FaultySource<S> {
    inner: S,
    faults: Mutex<Faults>,
    calls: AtomicU64,
    /// Number of calls currently held at the gate.
    held: watch::Sender<usize>,
    /// Flipped to true to let held calls through.
    released: watch::Sender<bool>,
}

impl<S: BlobSource> FaultySource<S> {
    /// Wraps `inner` with no faults armed.
    pub fn new(inner: S) -> FaultySource<S> {
        FaultySource {
            inner,
            faults: Mutex::new(Faults::default()),
            calls: AtomicU64::new(0),
            held: watch::Sender::new(0),
            released: watch::Sender::new(false),
        }
    }

    /// The wrapped source.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The next `n` `read_ranges` calls fail with [`Error::Injected`].
    pub fn fail_next(&self, n: u32) {
        self.faults().fail_next = n;
    }

    /// The next `n` `read_ranges` calls return the last range one byte short.
    pub fn short_read_next(&self, n: u32) {
        self.faults().short_next = n;
    }

    /// The next `n` `read_ranges` calls return the first byte of every range inverted.
    pub fn corrupt_next(&self, n: u32) {
        self.faults().corrupt_next = n;
    }

    /// Every answer covering blob offset `offset` has that byte inverted (until cleared with `None`).
    pub fn corrupt_at(&self, offset: Option<u64>) {
        self.faults().corrupt_at = offset;
    }

    /// Every call sleeps this long before answering (for soak tests; races use [`Self::hold`]).
    pub fn delay(&self, delay: Option<Duration>) {
        self.faults().delay = delay;
    }

    /// Calls whose ranges satisfy `pred` wait until [`Self::release`]. Re-arms the gate.
    pub fn hold(&self, pred: impl Fn(&[Range<u64>]) -> bool + Send + Sync + 'static) {
        self.released.send_replace(false);
        self.faults().hold = Some(Box::new(pred));
    }

    /// Lets every held call (and future matching calls) through.
    pub fn release(&self) {
        self.faults().hold = None;
        self.released.send_replace(true);
    }

    /// Waits until at least `n` calls are waiting at the gate.
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.held.subscribe();
        // The sender lives in self, so the channel cannot close while we borrow self.
        let _ = rx.wait_for(|held| *held >= n).await;
    }

    /// Number of `read_ranges` calls so far (including failed ones).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The ranges of every `read_ranges` call so far, in call order.
    pub fn log(&self) -> Vec<Vec<Range<u64>>> {
        self.faults().log.clone()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        // A panic while holding this lock can only come from a test assertion; the data is
        // still consistent, so keep going rather than poisoning every later call.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn gate(&self, ranges: &[Range<u64>]) {
        let held = self.faults().hold.as_ref().is_some_and(|p| p(ranges));
        if !held {
            return;
        }
        self.held.send_modify(|n| *n += 1);
        let mut rx = self.released.subscribe();
        let _ = rx.wait_for(|r| *r).await;
        self.held.send_modify(|n| *n -= 1);
    }
}

impl<S: BlobSource> BlobSource for FaultySource<S> {
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
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let (fail, short, corrupt, corrupt_at, delay) = {
                let mut f = self.faults();
                f.log.push(ranges.to_vec());
                let take = |n: &mut u32| {
                    let hit = *n > 0;
                    *n = n.saturating_sub(1);
                    hit
                };
                (
                    take(&mut f.fail_next),
                    take(&mut f.short_next),
                    take(&mut f.corrupt_next),
                    f.corrupt_at,
                    f.delay,
                )
            };
            self.gate(ranges).await;
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if fail {
                return Err(Error::Injected {
                    blob: *blob,
                    what: "failed call".into(),
                });
            }
            let mut parts = self.inner.read_ranges(blob, ranges).await?;
            for (part, range) in parts.iter_mut().zip(ranges) {
                let flip = corrupt_at
                    .filter(|o| range.contains(o))
                    .map(|o| (o - range.start) as usize)
                    .or(corrupt.then_some(0))
                    .filter(|i| *i < part.len());
                if let Some(i) = flip {
                    let mut b = BytesMut::from(&part[..]);
                    b[i] = !b[i];
                    *part = b.freeze();
                }
            }
            if short && let Some(last) = parts.last_mut() {
                last.truncate(last.len().saturating_sub(1));
            }
            Ok(parts)
        })
    }
}

//! The access recorder: which files a workload touches, in first-touch order (issue #5 uses it
//! to choose the files to prioritise when converting an image).
//!
//! One bit per inode says "seen"; only the first touch of each file takes the log's lock, so
//! recording costs an atomic `fetch_or` per read once the working set is known.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use regfs_estargz::Digest;

pub(crate) struct AccessLog {
    seen: Box<[AtomicU64]>,
    log: Mutex<Vec<(String, Digest)>>,
}

impl AccessLog {
    pub fn new(inodes: usize) -> AccessLog {
        AccessLog {
            seen: (0..inodes.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            log: Mutex::new(Vec::new()),
        }
    }

    /// True exactly once per inode.
    pub fn first_touch(&self, index: u32) -> bool {
        let Some(word) = self.seen.get(index as usize / 64) else {
            return false;
        };
        let bit = 1u64 << (index % 64);
        word.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    pub fn push(&self, path: String, layer: Digest) {
        // A poisoned lock only means another reader panicked mid-push; the log is still valid.
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.push((path, layer));
    }

    pub fn take(&self) -> Vec<(String, Digest)> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *log)
    }

    pub fn memory_bytes(&self) -> usize {
        self.seen.len() * 8
    }
}

//! A fake [`RemoteLayers`]: mounting writes `layer.txt` (the layer digest) into the mountpoint;
//! unmounting removes it. Failures and a delay can be injected; counters show what happened.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use regfs_snapshotter::{RemoteError, RemoteLayer, RemoteLayers, RemoteMount, Usage};

pub const MARKER: &str = "layer.txt";

#[derive(Default)]
pub struct FakeLayers {
    /// Layer digests whose mount fails.
    pub fail: Mutex<HashSet<String>>,
    pub delay: Mutex<Duration>,
    pub mounts: AtomicUsize,
    pub unmounts: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Mountpoints currently "mounted".
    pub live: Arc<Mutex<HashSet<PathBuf>>>,
}

impl FakeLayers {
    pub fn new() -> Arc<FakeLayers> {
        Arc::new(FakeLayers::default())
    }

    pub fn fail_on(&self, digest: &str) {
        self.fail.lock().unwrap().insert(digest.to_owned());
    }

    pub fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

struct Shared(Arc<FakeLayers>);

/// The trait object handed to the snapshotter, sharing counters with the test.
pub fn provider(fake: &Arc<FakeLayers>) -> Arc<dyn RemoteLayers> {
    Arc::new(Shared(Arc::clone(fake)))
}

impl RemoteLayers for Shared {
    fn mount(
        &self,
        layer: RemoteLayer,
        mountpoint: PathBuf,
    ) -> BoxFuture<'static, Result<Box<dyn RemoteMount>, RemoteError>> {
        let fake = Arc::clone(&self.0);
        Box::pin(async move {
            let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let delay = *fake.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            fake.in_flight.fetch_sub(1, Ordering::SeqCst);
            // The contract: an existing, empty directory.
            let entries = std::fs::read_dir(&mountpoint)?.count();
            if entries != 0 {
                return Err(format!("mountpoint {} is not empty", mountpoint.display()).into());
            }
            if fake.fail.lock().unwrap().contains(&layer.layer_digest) {
                // A half-done mount leaves debris the snapshotter must clean up.
                std::fs::write(mountpoint.join("debris"), b"x")?;
                return Err(format!("injected failure for {}", layer.layer_digest).into());
            }
            std::fs::write(mountpoint.join(MARKER), layer.layer_digest.as_bytes())?;
            fake.mounts.fetch_add(1, Ordering::SeqCst);
            fake.live.lock().unwrap().insert(mountpoint.clone());
            Ok(Box::new(FakeMount {
                fake,
                mountpoint: Some(mountpoint),
            }) as Box<dyn RemoteMount>)
        })
    }
}

struct FakeMount {
    fake: Arc<FakeLayers>,
    mountpoint: Option<PathBuf>,
}

impl FakeMount {
    fn release(&mut self) {
        if let Some(m) = self.mountpoint.take() {
            let _ = std::fs::remove_file(m.join(MARKER));
            self.fake.live.lock().unwrap().remove(&m);
            self.fake.unmounts.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl RemoteMount for FakeMount {
    fn unmount(mut self: Box<Self>) -> Result<(), RemoteError> {
        self.release();
        Ok(())
    }

    fn usage(&self) -> Usage {
        Usage {
            size: 4242,
            inodes: 7,
        }
    }
}

impl Drop for FakeMount {
    fn drop(&mut self) {
        self.release();
    }
}

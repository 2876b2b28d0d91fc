//! Test support: a snapshotter served on a unix socket in a temp dir ([`Harness`]) and a fake
//! [`RemoteLayers`] ([`FakeLayers`]) that "mounts" a layer by writing a marker file into the
//! mountpoint, with injectable failures and delay, and counters to observe concurrency.
#![allow(dead_code)]

pub mod containerd;
pub mod fake;
pub mod image;
pub mod registry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regfs_snapshotter::{Client, RemoteLayers, Snapshotter};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A served snapshotter; `stop` shuts it down and releases the database.
pub struct Harness {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub snapshotter: Arc<Snapshotter>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), regfs_snapshotter::Error>>>,
}

impl Harness {
    /// Opens a snapshotter on `dir/root` and serves it on `dir/s.sock`.
    pub async fn start(dir: &Path, remote: Option<Arc<dyn RemoteLayers>>) -> Harness {
        let root = dir.join("root");
        let socket = dir.join("s.sock");
        let _ = std::fs::remove_file(&socket);
        let snapshotter = Arc::new(Snapshotter::open(&root, remote).expect("open snapshotter"));
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind socket");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(regfs_snapshotter::serve(
            listener,
            Arc::clone(&snapshotter),
            async move {
                let _ = rx.await;
            },
        ));
        Harness {
            root,
            socket,
            snapshotter,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await.expect("connect")
    }

    /// Shuts the server down and drops the snapshotter (the database can be opened again).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("serve");
        }
        assert_eq!(
            Arc::strong_count(&self.snapshotter),
            1,
            "the server must not keep the snapshotter alive after shutdown"
        );
    }

    pub fn fs(&self, id: u64) -> PathBuf {
        self.root.join(format!("snapshots/{id}/fs"))
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// `sha256:` + 64 hex digits made of `c`.
pub fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// The stargz label set plus the target label, as `ctr-remote image rpull` sends them.
pub fn remote_labels(target: &str, layer: &str) -> BTreeMap<String, String> {
    labels(&[
        (regfs_snapshotter::TARGET_LABEL, target),
        (
            regfs_snapshotter::STARGZ_REFERENCE_LABEL,
            "127.0.0.1:5000/img:1",
        ),
        (regfs_snapshotter::STARGZ_DIGEST_LABEL, layer),
        (regfs_snapshotter::STARGZ_LAYERS_LABEL, layer),
    ])
}

pub use regfs_testkit::run_ok;

//! The snapshotter under a real containerd 1.6 + runc, against a real `docker-registry`:
//! `ctr images pull`/`ctr run` through the `regfs` proxy plugin, `ctr snapshots` views, a
//! snapshotter restart between runs, removal leaving no mounts; and the remote-layer path
//! through `ctr-remote image rpull` with a provider that fetches and bind-mounts layers itself.
//!
//! Needs root, containerd, runc, ctr, ctr-remote, docker-registry, skopeo and busybox-static;
//! a missing tool fails the test with its name.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the support modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use regfs_snapshotter::{
    Client, Info, Kind, REMOTE_MARKER_LABEL, RemoteError, RemoteLayer, RemoteLayers, RemoteMount,
    Usage,
};
use support::Harness;
use support::containerd::{Containerd, mounts_under};
use support::image;
use support::registry::{self, Registry};

/// containerd's garbage collection of snapshots runs after `images rm --sync` returns in 1.6;
/// it finishes in well under a second, so this bound only catches a hang.
const GC_LIMIT: Duration = Duration::from_secs(30);

/// grpc-go's reconnect backoff starts at 1 s and grows by 1.6x with jitter: a few attempts fit.
const RECONNECT_LIMIT: Duration = Duration::from_secs(30);

const HELLO: &str = "hello from a regfs snapshot\n";

struct Setup {
    rt: tokio::runtime::Runtime,
    registry: Registry,
    reference: String,
    chain: Vec<String>,
    dir: tempfile::TempDir,
}

fn setup(repo: &str) -> Setup {
    support::containerd::require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = Registry::start();
    let dir = tempfile::Builder::new()
        .prefix("snap-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch");
    let layout = dir.path().join("layout");
    let diff_ids = image::write_layout(
        &layout,
        "1",
        &[
            image::busybox_tar(),
            image::file_tar("hello.txt", HELLO.as_bytes()),
        ],
    );
    let reference = format!("{}/{repo}:1", registry.addr);
    image::skopeo_push(&layout, "1", &reference);
    Setup {
        rt,
        registry,
        reference,
        chain: image::chain_ids(&diff_ids),
        dir,
    }
}

fn list(rt: &tokio::runtime::Runtime, h: &Harness) -> Vec<Info> {
    rt.block_on(async {
        let mut c = Client::connect(&h.socket).await.expect("connect");
        c.list(&[]).await.expect("list")
    })
}

/// `ctr snapshots ls` rows: (key, parent, kind).
fn ctr_ls(ctrd: &Containerd) -> Vec<(String, String, String)> {
    ctrd.snapshots(&["ls"])
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [key, kind] => (key.to_string(), String::new(), kind.to_string()),
                [key, parent, kind] => (key.to_string(), parent.to_string(), kind.to_string()),
                _ => panic!("unexpected `ctr snapshots ls` line {l:?}"),
            }
        })
        .collect()
}

/// Removes the image, lets containerd's GC remove its snapshots (removing leftovers with
/// `ctr snapshots rm`, children first), and checks that nothing stays in the snapshotter and
/// nothing stays mounted under its root.
fn remove_everything(s: &Setup, ctrd: &Containerd, h: &Harness) {
    support::run_ok(ctrd.ctr().args(["images", "rm", "--sync", &s.reference]));
    let deadline = Instant::now() + GC_LIMIT;
    while !list(&s.rt, h).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    for (key, _, _) in ctr_ls(ctrd).into_iter().rev() {
        support::run_ok(
            ctrd.ctr()
                .args(["snapshots", "--snapshotter", "regfs", "rm", &key]),
        );
    }
    assert!(ctr_ls(ctrd).is_empty());
    assert_eq!(list(&s.rt, h), vec![], "snapshots left in the snapshotter");
    assert_eq!(
        mounts_under(&h.root),
        Vec::<String>::new(),
        "mounts left behind"
    );
    s.rt.block_on(async {
        let mut c = Client::connect(&h.socket).await.expect("connect");
        c.cleanup().await.expect("cleanup");
    });
    assert_eq!(
        std::fs::read_dir(h.root.join("snapshots"))
            .expect("snapshots dir")
            .count(),
        0,
        "directories left behind"
    );
}

#[test]
fn containerd_pulls_and_runs_through_regfs() {
    let s = setup("regfs/plain");
    let mut h = s.rt.block_on(Harness::start(s.dir.path(), None));
    let ctrd = Containerd::start(&h.socket);

    support::run_ok(ctrd.ctr().args([
        "images",
        "pull",
        "--snapshotter",
        "regfs",
        "--plain-http",
        &s.reference,
    ]));

    // containerd's view: the two layers, committed, chained by chain ID.
    let rows = ctr_ls(&ctrd);
    let mut want = vec![
        (s.chain[0].clone(), String::new(), "Committed".to_string()),
        (
            s.chain[1].clone(),
            s.chain[0].clone(),
            "Committed".to_string(),
        ),
    ];
    want.sort();
    let mut got = rows.clone();
    got.sort();
    assert_eq!(got, want, "{}", ctrd.log());
    // Ours: the same two, under containerd's backend keys (`<namespace>/<n>/<chain ID>`),
    // chained the same way.
    let ours = list(&s.rt, &h);
    assert_eq!(ours.len(), 2, "{ours:?}");
    let backend = |chain: &str| -> Info {
        ours.iter()
            .find(|i| i.name.ends_with(&format!("/{chain}")))
            .unwrap_or_else(|| panic!("no snapshot for {chain} in {ours:?}"))
            .clone()
    };
    let (bottom, top) = (backend(&s.chain[0]), backend(&s.chain[1]));
    assert_eq!((bottom.kind, top.kind), (Kind::Committed, Kind::Committed));
    assert_eq!(bottom.parent, None);
    assert_eq!(top.parent.as_ref(), Some(&bottom.name));
    let info: serde_json::Value =
        serde_json::from_str(&ctrd.snapshots(&["info", &s.chain[1]])).expect("info JSON");
    assert_eq!(info["Kind"], "Committed", "{info}");
    assert_eq!(info["Parent"], s.chain[0].as_str(), "{info}");
    // `ctr snapshots usage` reports what our Usage computed at commit.
    let usage_out = ctrd.snapshots(&["usage", &s.chain[1]]);
    let usage: Usage = s.rt.block_on(async {
        let mut c = Client::connect(&h.socket).await.expect("connect");
        c.usage(&top.name).await.expect("usage")
    });
    assert_eq!(usage.inodes, 2, "layer dir + hello.txt");
    let row: Vec<&str> = usage_out
        .lines()
        .nth(1)
        .expect("usage row")
        .split_whitespace()
        .collect();
    assert_eq!(row.first(), Some(&s.chain[1].as_str()), "{usage_out}");
    assert_eq!(row.last(), Some(&"2"), "inodes column: {usage_out}");
    let unpacked = h.root.join("snapshots");
    assert!(
        walk_contains(&unpacked, "hello.txt"),
        "the layer was unpacked into a snapshot directory"
    );

    let out = ctrd.run(&s.reference, "first", &["cat", "/hello.txt"]);
    assert_eq!(out, HELLO);
    // containerd forgets the container's snapshot at once; it removes it from the backend at
    // its next garbage collection (deletions alone do not trigger one in 1.6).
    assert_eq!(ctr_ls(&ctrd).len(), 2);
    let committed = list(&s.rt, &h)
        .iter()
        .filter(|i| i.kind == Kind::Committed)
        .count();
    assert_eq!(committed, 2);

    // Restart the snapshotter: containerd reconnects and the metadata is all there.
    s.rt.block_on(h.stop());
    h = s.rt.block_on(Harness::start(s.dir.path(), None));
    wait_reconnected(&ctrd, &s.chain[1]);
    let out = ctrd.run(
        &s.reference,
        "second",
        &[
            "sh",
            "-c",
            "cat /hello.txt; echo written > /tmp/x; cat /tmp/x; ls /bin/busybox",
        ],
    );
    assert_eq!(out, format!("{HELLO}written\n/bin/busybox\n"));

    remove_everything(&s, &ctrd, &h);
    drop(ctrd);
    s.rt.block_on(h.stop());
}

/// After a snapshotter restart, containerd's gRPC client to it may sit in its reconnect
/// backoff (it dialled while the socket was closed; grpc-go waits 1 s, then longer). Polls a
/// call that reaches the snapshotter (`snapshots usage`) until it works.
fn wait_reconnected(ctrd: &Containerd, key: &str) {
    let deadline = Instant::now() + RECONNECT_LIMIT;
    loop {
        let out = ctrd
            .ctr()
            .args(["snapshots", "--snapshotter", "regfs", "usage", key])
            .output()
            .expect("spawn ctr");
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containerd did not reconnect to the snapshotter: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn walk_contains(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name() == name
                || (e.file_type().is_ok_and(|t| t.is_dir()) && walk_contains(&e.path(), name))
        })
}

/// A [`RemoteLayers`] that stands in for the lazy eStargz mount: it fetches the whole layer
/// from the registry, unpacks it once into a cache directory and bind-mounts that on the
/// mountpoint (read-only), so that the mount guard, the overlay over it and the unmounts are
/// real.
struct FetchAndBind {
    registry: String,
    cache: PathBuf,
    mounts: AtomicUsize,
    /// Refuse every mount (the fallback test).
    refuse: bool,
}

/// The trait object given to the snapshotter; the test keeps the `Arc` to read the counter.
struct Provider(Arc<FetchAndBind>);

impl RemoteLayers for Provider {
    fn mount(
        &self,
        layer: RemoteLayer,
        mountpoint: PathBuf,
    ) -> BoxFuture<'static, Result<Box<dyn RemoteMount>, RemoteError>> {
        let this = Arc::clone(&self.0);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.mount_blocking(&layer, &mountpoint)).await?
        })
    }
}

impl FetchAndBind {
    fn mount_blocking(
        &self,
        layer: &RemoteLayer,
        mountpoint: &Path,
    ) -> Result<Box<dyn RemoteMount>, RemoteError> {
        if self.refuse {
            return Err("refused by the test".into());
        }
        // image_ref is `host:port/repo:tag`.
        let (host, rest) = layer
            .image_ref
            .split_once('/')
            .ok_or("no host in image ref")?;
        if host != self.registry {
            return Err(format!("unexpected registry {host}").into());
        }
        let repo = rest.rsplit_once(':').map_or(rest, |(r, _)| r);
        let dir = self.cache.join(layer.layer_digest.replace(':', "-"));
        if !dir.exists() {
            let (status, blob) =
                registry::get(host, &format!("/v2/{repo}/blobs/{}", layer.layer_digest))?;
            if status != 200 {
                return Err(format!("blob {}: HTTP {status}", layer.layer_digest).into());
            }
            if image::sha256(&blob) != layer.layer_digest {
                return Err("blob digest mismatch".into());
            }
            let tmp = dir.with_extension("tmp");
            std::fs::create_dir_all(&tmp)?;
            let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(&blob[..]));
            archive.set_preserve_permissions(true);
            archive.set_preserve_ownerships(true);
            archive.unpack(&tmp)?;
            std::fs::rename(&tmp, &dir)?;
        }
        nix::mount::mount(
            Some(&dir),
            mountpoint,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        self.mounts.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(BindMount(Some(mountpoint.to_owned()))))
    }
}

struct BindMount(Option<PathBuf>);

impl RemoteMount for BindMount {
    fn unmount(mut self: Box<Self>) -> Result<(), RemoteError> {
        match self.0.take() {
            Some(p) => Ok(nix::mount::umount2(&p, nix::mount::MntFlags::empty())?),
            None => Ok(()),
        }
    }

    fn usage(&self) -> Usage {
        Usage::default()
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn containerd_accepts_remote_layers_from_ctr_remote_rpull() {
    let s = setup("regfs/remote");
    let provider = Arc::new(FetchAndBind {
        registry: s.registry.addr.clone(),
        cache: s.dir.path().join("layer-cache"),
        mounts: AtomicUsize::new(0),
        refuse: false,
    });
    let remote = || Some(Arc::new(Provider(Arc::clone(&provider))) as Arc<dyn RemoteLayers>);
    let mut h = s.rt.block_on(Harness::start(s.dir.path(), remote()));
    let ctrd = Containerd::start(&h.socket);

    support::run_ok(ctrd.ctr_remote().args([
        "images",
        "rpull",
        "--snapshotter",
        "regfs",
        "--plain-http",
        &s.reference,
    ]));
    let stats = h.snapshotter.remote_stats();
    assert_eq!(stats.mounted, 2, "{stats:?}\n{}", ctrd.log());
    assert_eq!(
        (
            stats.fallback_bad_labels,
            stats.fallback_mount_failed,
            stats.fallback_commit_failed
        ),
        (0, 0, 0)
    );
    // containerd accepted ALREADY_EXISTS and recorded both layers as committed.
    let mut rows = ctr_ls(&ctrd);
    rows.sort();
    let mut want = vec![
        (s.chain[0].clone(), String::new(), "Committed".to_string()),
        (
            s.chain[1].clone(),
            s.chain[0].clone(),
            "Committed".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(rows, want);
    let ours = list(&s.rt, &h);
    assert_eq!(ours.len(), 2, "{ours:?}");
    for info in &ours {
        assert_eq!(
            info.labels.get(REMOTE_MARKER_LABEL).map(String::as_str),
            Some("regfs")
        );
        assert_eq!(info.kind, Kind::Committed);
    }
    assert_eq!(mounts_under(&h.root).len(), 2, "one bind mount per layer");

    let out = ctrd.run(&s.reference, "remote1", &["cat", "/hello.txt"]);
    assert_eq!(out, HELLO);

    // Restart: the layers are mounted again before containerd is served.
    s.rt.block_on(h.stop());
    assert_eq!(
        mounts_under(&s.dir.path().join("root")),
        Vec::<String>::new()
    );
    h = s.rt.block_on(Harness::start(s.dir.path(), remote()));
    wait_reconnected(&ctrd, &s.chain[1]);
    let out = ctrd.run(
        &s.reference,
        "remote2",
        &["sh", "-c", "cat /hello.txt; ls /bin/sh"],
    );
    assert_eq!(out, format!("{HELLO}/bin/sh\n"));
    assert_eq!(h.snapshotter.remote_stats().remounted, 2);
    assert_eq!(provider.mounts.load(Ordering::SeqCst), 4);

    remove_everything(&s, &ctrd, &h);
    drop(ctrd);
    s.rt.block_on(h.stop());
}

/// When the remote mount fails, containerd is told nothing special: it gets the active
/// snapshot's mounts, downloads and unpacks the layer itself, and the image runs.
#[test]
fn containerd_downloads_when_the_remote_mount_fails() {
    let s = setup("regfs/fallback");
    let provider = Arc::new(FetchAndBind {
        registry: s.registry.addr.clone(),
        cache: s.dir.path().join("layer-cache"),
        mounts: AtomicUsize::new(0),
        refuse: true,
    });
    let remote = Some(Arc::new(Provider(Arc::clone(&provider))) as Arc<dyn RemoteLayers>);
    let h = s.rt.block_on(Harness::start(s.dir.path(), remote));
    let ctrd = Containerd::start(&h.socket);

    support::run_ok(ctrd.ctr_remote().args([
        "images",
        "rpull",
        "--snapshotter",
        "regfs",
        "--plain-http",
        &s.reference,
    ]));
    let stats = h.snapshotter.remote_stats();
    assert_eq!(
        (stats.mounted, stats.fallback_mount_failed),
        (0, 2),
        "{stats:?}"
    );
    let ours = list(&s.rt, &h);
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert!(
        ours.iter()
            .all(|i| i.kind == Kind::Committed && !i.labels.contains_key(REMOTE_MARKER_LABEL)),
        "{ours:?}"
    );
    assert!(mounts_under(&h.root).is_empty());
    assert!(
        walk_contains(&h.root.join("snapshots"), "hello.txt"),
        "unpacked by containerd"
    );
    let out = ctrd.run(&s.reference, "fallback", &["cat", "/hello.txt"]);
    assert_eq!(out, HELLO);

    remove_everything(&s, &ctrd, &h);
    drop(ctrd);
    s.rt.block_on(h.stop());
}

//! `regfs snapshotter` under a real containerd 1.6 + runc against a real `docker-registry`:
//! `ctr-remote image rpull --snapshotter regfs` of a regfs-converted and of a
//! `ctr-remote`-converted image mounts their layers lazily (far less fetched than the image),
//! `ctr run --snapshotter regfs` runs them; a plain gzip image falls back to a download, visibly;
//! the snapshotter restarted between two runs; removal leaves no mount behind.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::image::{
    LayoutLayer, busybox_tar, convert_image, files_tar, require_fuse, skopeo_push, write_layout,
};
use support::layers::noise;
use support::registry::{Registry, free_port};
use support::{regfs, run_ok, scratch};

const NAMESPACE: &str = "regfs-snapshotter-cli";
const SNAPSHOTTER: &str = "regfs";
/// Incompressible, never read by the workload: a lazy pull must not fetch it.
const BIG: usize = 6 << 20;

/// A `regfs snapshotter` process, stopped with SIGTERM on drop.
struct Snapshotter {
    child: Child,
    socket: PathBuf,
    root: PathBuf,
    config: PathBuf,
    metrics: String,
    log: PathBuf,
}

impl Snapshotter {
    fn start(dir: &Path) -> Snapshotter {
        let metrics = format!("127.0.0.1:{}", free_port());
        let config = dir.join("snapshotter.toml");
        std::fs::write(
            &config,
            format!(
                "cache_dir = \"{}\"\nmetrics_address = \"{metrics}\"\nlog_level = \"debug\"\n",
                dir.join("cache").display()
            ),
        )
        .unwrap();
        let mut s = Snapshotter {
            child: Command::new("true").spawn().unwrap(),
            socket: dir.join("snap.sock"),
            root: dir.join("root"),
            config,
            metrics,
            log: dir.join("snapshotter.log"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = regfs()
            .arg("snapshotter")
            .arg("--address")
            .arg(&self.socket)
            .arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the snapshotter did not listen; log:\n{}",
                self.log()
            );
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the snapshotter exited; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the snapshotter did not stop cleanly: {status}; log:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn scrape(&self) -> String {
        let (status, body) = regfs_testkit::http_get(&self.metrics, "/metrics", &[]).unwrap();
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// The sum of a metric's samples (all label sets) in a Prometheus scrape.
fn metric(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The value of `name{reason="..."}`.
fn metric_with(scrape: &str, name: &str, label: &str) -> u64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// FUSE mounts served by regfs below `dir` (per /proc/self/mountinfo).
fn regfs_mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let source = right.split(' ').nth(1)?;
            (point.starts_with(&prefix) && source.starts_with("regfs:")).then(|| point.to_owned())
        })
        .collect()
}

fn ctr_snapshots(ctrd: &regfs_testkit::Containerd, args: &[&str]) -> String {
    let out = run_ok(
        ctrd.ctr()
            .args(["snapshots", "--snapshotter", SNAPSHOTTER])
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rpull(ctrd: &regfs_testkit::Containerd, reference: &str) {
    run_ok(ctrd.ctr_remote().args([
        "image",
        "rpull",
        "--snapshotter",
        SNAPSHOTTER,
        "--plain-http",
        reference,
    ]));
}

fn run_cat(ctrd: &regfs_testkit::Containerd, reference: &str, id: &str) -> String {
    let out = run_ok(ctrd.ctr().args([
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        reference,
        id,
        "cat",
        "/app/hello.txt",
    ]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn containerd_runs_images_lazily_through_regfs_snapshotter() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();

    // A busybox base layer and an app layer with a small file the workload reads and a big
    // one it never reads.
    let big = noise(BIG, 77);
    let tars = [
        busybox_tar(&[]),
        files_tar(&[
            ("app/hello.txt", b"hello from a lazy layer\n"),
            ("app/big.bin", &big),
        ]),
    ];
    let layout = work.path().join("layout");
    let layers: Vec<LayoutLayer> = tars.iter().map(|t| LayoutLayer::gzip(t)).collect();
    write_layout(&layout, "v1", &layers, &["/bin/sh"]);
    let plain = format!("{}/snap:plain", reg.addr);
    skopeo_push(&layout, "v1", &plain);
    let ours = format!("{}/snap:regfs", reg.addr);
    convert_image(&plain, &ours, &[]);

    let mut snap = Snapshotter::start(work.path());
    let ctrd =
        regfs_testkit::Containerd::start_with_snapshotter(NAMESPACE, SNAPSHOTTER, &snap.socket);

    // 1. regfs-converted: every layer mounted lazily, the big file not fetched.
    rpull(&ctrd, &ours);
    assert_eq!(run_cat(&ctrd, &ours, "ours-1"), "hello from a lazy layer\n");
    let scrape = snap.scrape();
    assert_eq!(
        metric(&scrape, "regfs_snapshotter_remote_mounted_total"),
        2,
        "{scrape}\n{}",
        snap.log()
    );
    let fetched = metric(&scrape, "regfs_layer_fetched_bytes");
    let size = metric(&scrape, "regfs_layer_size_bytes");
    assert!(
        size > BIG as u64 && fetched < size / 2,
        "fetched {fetched} of {size} bytes: not lazy\n{scrape}"
    );
    // `regfs stats` answers for a snapshotter mount too.
    let mounts = regfs_mounts_under(&snap.root);
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    let stats = run_ok(regfs().args(["stats", "--json"]).arg(&mounts[0]));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["layers"].as_array().map(Vec::len), Some(1), "{stats}");
    // containerd's view agrees: the committed chain, marked remote.
    let ls = ctr_snapshots(&ctrd, &["ls"]);
    assert_eq!(
        ls.lines().filter(|l| l.contains("Committed")).count(),
        2,
        "{ls}"
    );
    let chain: Vec<String> = ls
        .lines()
        .skip(1)
        .filter(|l| l.contains("Committed"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    let info = ctr_snapshots(&ctrd, &["info", &chain[0]]);
    assert!(info.contains("containerd.io/snapshot/remote"), "{info}");

    // 2. The same image converted by the reference `ctr-remote image convert`.
    let theirs = format!("{}/snap:ctr-remote", reg.addr);
    run_ok(
        ctrd.ctr_remote()
            .args(["images", "pull", "--plain-http", &plain]),
    );
    run_ok(
        ctrd.ctr_remote()
            .args(["images", "convert", "--estargz", "--oci", &plain, &theirs]),
    );
    run_ok(
        ctrd.ctr_remote()
            .args(["images", "push", "--plain-http", &theirs]),
    );
    run_ok(ctrd.ctr().args(["images", "rm", "--sync", &theirs]));
    rpull(&ctrd, &theirs);
    assert_eq!(
        run_cat(&ctrd, &theirs, "theirs-1"),
        "hello from a lazy layer\n"
    );
    let scrape = snap.scrape();
    assert_eq!(
        metric(&scrape, "regfs_snapshotter_remote_mounted_total"),
        4,
        "{scrape}"
    );

    // 3. A plain gzip image: not eStargz, so containerd downloads it; counted, still runs.
    run_ok(ctrd.ctr().args(["images", "rm", "--sync", &plain]));
    rpull(&ctrd, &plain);
    assert_eq!(
        run_cat(&ctrd, &plain, "plain-1"),
        "hello from a lazy layer\n"
    );
    let scrape = snap.scrape();
    assert!(
        metric_with(
            &scrape,
            "regfs_snapshotter_lazy_failures_total",
            "not_estargz"
        ) >= 1,
        "{scrape}"
    );
    assert!(
        metric(&scrape, "regfs_snapshotter_fallback_mount_failed_total") >= 1,
        "{scrape}"
    );
    assert!(snap.log().contains("not eStargz"), "{}", snap.log());

    // 4. Restarted between two runs: its lazy mounts come back, the image runs again.
    snap.stop();
    assert!(regfs_mounts_under(&snap.root).is_empty());
    snap.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctrd
        .ctr()
        .args(["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "containerd never reconnected");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(regfs_mounts_under(&snap.root).len(), 4);
    assert_eq!(run_cat(&ctrd, &ours, "ours-2"), "hello from a lazy layer\n");

    // 5. Removing the images releases every mount.
    for r in [&ours, &theirs, &plain] {
        run_ok(ctrd.ctr().args(["images", "rm", "--sync", r]));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !regfs_mounts_under(&snap.root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "mounts left: {:?}\n{}",
            regfs_mounts_under(&snap.root),
            ctr_snapshots(&ctrd, &["ls"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let scrape = snap.scrape();
    assert_eq!(
        metric(&scrape, "regfs_layer_size_bytes"),
        0,
        "no live mount is reported: {scrape}"
    );
    drop(ctrd);
    snap.stop();
}

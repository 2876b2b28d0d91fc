//! `regfs snapshotter` under a real containerd 1.6 + runc against a real `docker-registry`:
//! `ctr-remote image rpull --snapshotter regfs` of a regfs-converted and of a
//! `ctr-remote`-converted image mounts their layers lazily (far less fetched than the image),
//! `ctr run --snapshotter regfs` runs them; a plain gzip image falls back to a download, visibly,
//! and of a mixed image only the plain layer does;
//! the snapshotter restarted between two runs; removal leaves no mount behind.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regfs_snapshotter::cri::api as cri;
use support::image::{
    LayoutLayer, OCI_GZIP, TOC_DIGEST, busybox_tar, convert_image, files_tar, require_fuse,
    skopeo_push, write_layout,
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
    /// Extra command-line arguments (the CRI proxy's).
    extra: Vec<std::ffi::OsString>,
}

impl Snapshotter {
    fn start(dir: &Path) -> Snapshotter {
        Snapshotter::start_with(dir, Vec::new(), "")
    }

    /// With extra arguments and extra lines of config.
    fn start_with(dir: &Path, extra: Vec<std::ffi::OsString>, config_lines: &str) -> Snapshotter {
        let metrics = format!("127.0.0.1:{}", free_port());
        let config = dir.join("snapshotter.toml");
        std::fs::write(
            &config,
            format!(
                "cache_dir = \"{}\"\nmetrics_address = \"{metrics}\"\nlog_level = \"debug\"\n{config_lines}",
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
            extra,
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
            .args(&self.extra)
            // No credentials but those handed over at run time (the CRI proxy's).
            .env("DOCKER_CONFIG", self.root.with_extension("docker"))
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

/// Writes an OCI layout (tag `v1`, gzip layers) of a busybox base layer and an app layer with
/// `app/hello.txt` (what the workloads read) and a big incompressible `app/big.bin` (never
/// read: a lazy pull must not fetch it); returns the two tars.
fn app_layout(dir: &Path, hello: &[u8], seed: u64) -> [Vec<u8>; 2] {
    let big = noise(BIG, seed);
    let tars = [
        busybox_tar(&[]),
        files_tar(&[("app/hello.txt", hello), ("app/big.bin", &big)]),
    ];
    let layers: Vec<LayoutLayer> = tars.iter().map(|t| LayoutLayer::gzip(t)).collect();
    write_layout(dir, "v1", &layers, &["/bin/sh"]);
    tars
}

#[test]
fn containerd_runs_images_lazily_through_regfs_snapshotter() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();

    let layout = work.path().join("layout");
    app_layout(&layout, b"hello from a lazy layer\n", 77);
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

    // 3b. A mixed image: an eStargz base layer under a plain gzip one. The eStargz layer is
    // mounted lazily, only the gzip one is downloaded.
    let base = busybox_tar(&[("etc/mixed-base", b"a base of its own\n")]);
    let base_tar = work.path().join("mixed-base.tar");
    std::fs::write(&base_tar, &base).unwrap();
    let base_esgz = work.path().join("mixed-base.esgz");
    let conv = support::convert(&base_tar, &base_esgz, &[]);
    let mixed_layout = work.path().join("mixed");
    write_layout(
        &mixed_layout,
        "v1",
        &[
            LayoutLayer {
                media_type: OCI_GZIP.into(),
                blob: std::fs::read(&base_esgz).unwrap(),
                diff_id: conv.diff_id.clone(),
                annotations: [(TOC_DIGEST.to_owned(), conv.toc_digest.clone())].into(),
            },
            LayoutLayer::gzip(&files_tar(&[(
                "app/hello.txt",
                b"hello from a downloaded layer\n",
            )])),
        ],
        &["/bin/sh"],
    );
    let mixed = format!("{}/snap:mixed", reg.addr);
    skopeo_push(&mixed_layout, "v1", &mixed);
    rpull(&ctrd, &mixed);
    assert_eq!(
        run_cat(&ctrd, &mixed, "mixed-1"),
        "hello from a downloaded layer\n"
    );
    let scrape = snap.scrape();
    assert_eq!(
        metric(&scrape, "regfs_snapshotter_remote_mounted_total"),
        5,
        "the eStargz layer of the mixed image is lazy: {scrape}\n{}",
        snap.log()
    );
    assert_eq!(
        metric_with(
            &scrape,
            "regfs_snapshotter_lazy_failures_total",
            "not_estargz"
        ),
        3,
        "plain's 2 layers, then mixed's gzip layer: {scrape}"
    );

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
    assert_eq!(regfs_mounts_under(&snap.root).len(), 5);
    assert_eq!(run_cat(&ctrd, &ours, "ours-2"), "hello from a lazy layer\n");

    // 5. Removing the images releases every mount.
    for r in [&ours, &theirs, &plain, &mixed] {
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

/// A `PullImage` request as kubelet sends it for a pod with an image pull secret.
fn pull_request(image: &str, user: &str, password: &str) -> cri::PullImageRequest {
    cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        auth: Some(cri::AuthConfig {
            username: user.to_owned(),
            password: password.to_owned(),
            ..Default::default()
        }),
        sandbox_config: None,
    }
}

#[test]
fn cri_proxy_hands_kubelets_pull_credentials_to_the_lazy_layers() {
    const USER: &str = "kubelet";
    const PASS: &str = "pull-secret";
    require_fuse();
    let work = scratch();
    // A private registry: every request needs the pull secret, the snapshotter's lazy ones too.
    let reg = Registry::start_basic_auth(USER, PASS);
    let layout = work.path().join("layout");
    let tars = app_layout(&layout, b"hello from a private lazy layer\n", 78);
    // The control image differs in its app layer, so containerd has to prepare that one again.
    let other = files_tar(&[("app/hello.txt", b"the control image\n")]);
    let control = work.path().join("control");
    write_layout(
        &control,
        "v1",
        &[LayoutLayer::gzip(&tars[0]), LayoutLayer::gzip(&other)],
        &["/bin/sh"],
    );
    let docker = work.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASS}"),
    );
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{basic}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let via_proxy = format!("{}/cri/app:regfs", reg.addr);
    let direct = format!("{}/cri/direct:regfs", reg.addr);
    for (src, dst) in [(&layout, &via_proxy), (&control, &direct)] {
        run_ok(
            regfs()
                .env("DOCKER_CONFIG", &docker)
                .arg("convert-image")
                .arg(format!("oci:{}:v1", src.display()))
                .arg(dst),
        );
    }
    // containerd (CRI plugin on, as on a Kubernetes node) and regfs reach it over plain HTTP.
    let hosts = work.path().join("certs.d");
    std::fs::create_dir_all(hosts.join(&reg.addr)).unwrap();
    std::fs::write(
        hosts.join(&reg.addr).join("hosts.toml"),
        format!(
            "server = \"http://{a}\"\n[host.\"http://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            a = reg.addr
        ),
    )
    .unwrap();
    let ctrd =
        regfs_testkit::Containerd::start_cri(SNAPSHOTTER, &work.path().join("snap.sock"), &hosts);
    let cri_socket = work.path().join("cri.sock");
    let mut snap = Snapshotter::start_with(
        work.path(),
        vec![
            "--cri-proxy".into(),
            cri_socket.clone().into(),
            "--cri-upstream".into(),
            ctrd.socket.clone().into(),
        ],
        &format!("hosts_dir = \"{}\"\n", hosts.display()),
    );
    while !cri_socket.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();

    runtime.block_on(async {
        let mut kubelet = regfs_snapshotter::cri::image_service_client(&cri_socket)
            .await
            .unwrap();
        // Any ImageService call is forwarded.
        let fs = kubelet
            .image_fs_info(cri::ImageFsInfoRequest::default())
            .await
            .unwrap_or_else(|e| panic!("ImageFsInfo: {e}\n{}", ctrd.log()))
            .into_inner();
        assert!(!fs.image_filesystems.is_empty(), "{fs:?}");
        // A wrong secret: containerd's refusal comes back through the proxy unchanged.
        let err = kubelet
            .pull_image(pull_request(&via_proxy, USER, "wrong"))
            .await
            .unwrap_err();
        assert!(
            err.message().contains("401") || err.message().contains("nauthorized"),
            "{err}"
        );
        // The right one: pulled, and every layer mounted lazily with it.
        let pulled = kubelet
            .pull_image(pull_request(&via_proxy, USER, PASS))
            .await
            .unwrap_or_else(|e| panic!("PullImage: {e}\n{}", snap.log()))
            .into_inner();
        assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");
        let status = kubelet
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: via_proxy.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.image.map(|i| i.id),
            Some(pulled.image_ref.clone()),
            "ImageStatus through the proxy"
        );
    });
    let scrape = snap.scrape();
    assert_eq!(
        metric(&scrape, "regfs_snapshotter_remote_mounted_total"),
        2,
        "{scrape}\n{}",
        snap.log()
    );
    assert_eq!(
        metric(&scrape, "regfs_cri_pulls_with_credentials_total"),
        2,
        "{scrape}"
    );
    let fetched = metric(&scrape, "regfs_layer_fetched_bytes");
    let size = metric(&scrape, "regfs_layer_size_bytes");
    assert!(
        size > BIG as u64 && fetched < size / 2,
        "fetched {fetched} of {size} bytes: not lazy\n{scrape}"
    );
    let out = run_ok(ctrd.ctr().args([
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        &via_proxy,
        "cri-1",
        "cat",
        "/app/hello.txt",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from a private lazy layer\n"
    );

    // The control: the same kind of pull sent to containerd directly, bypassing the proxy.
    // containerd has the secret and downloads the image; regfs never saw it, so its lazy open
    // is refused by the registry, and that fallback is logged and counted.
    runtime.block_on(async {
        let mut direct_cri = regfs_snapshotter::cri::image_service_client(&ctrd.socket)
            .await
            .unwrap();
        direct_cri
            .pull_image(pull_request(&direct, USER, PASS))
            .await
            .unwrap_or_else(|e| panic!("direct PullImage: {e}"));
    });
    let scrape = snap.scrape();
    assert_eq!(
        metric(&scrape, "regfs_snapshotter_remote_mounted_total"),
        2,
        "{scrape}"
    );
    assert!(
        metric_with(&scrape, "regfs_snapshotter_lazy_failures_total", "registry") >= 1,
        "{scrape}\n{}",
        snap.log()
    );

    // RemoveImage through the proxy releases the lazy mounts.
    runtime.block_on(async {
        let mut kubelet = regfs_snapshotter::cri::image_service_client(&cri_socket)
            .await
            .unwrap();
        for image in [&via_proxy, &direct] {
            kubelet
                .remove_image(cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
    });
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
    drop(ctrd);
    snap.stop();
    assert!(
        !cri_socket.exists(),
        "the proxy's socket is removed on exit"
    );
}

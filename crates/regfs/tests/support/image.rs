//! Images for the lazy-mount and run tests: layer tars built entry by entry ([`TarBuilder`]),
//! OCI layouts written from them ([`write_layout`]), pushed by skopeo (plain gzip, as any builder
//! would) or converted by `regfs convert-image`; a `regfs mount --daemon` guard ([`Mount`]) with
//! its stats; and the overlay oracle ([`overlay_oracle`]): GNU `tar -x` of the layers in order,
//! applying whiteouts and opaque directories the way a runtime's snapshotter does.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::registry::which;
use super::{regfs, run_ok, sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// A generous bound for things that must happen but whose speed is not under test (a prefetch
/// finishing, a process exiting): exceeding it means a hang, not slowness.
pub const HANG_LIMIT: Duration = Duration::from_secs(120);

/// Fixed mtime base: deterministic layers.
const MTIME: u64 = 1_650_000_000;

/// A layer tar built entry by entry (GNU headers, PAX xattrs, numbered mtimes).
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
    n: u64,
}

impl Default for TarBuilder {
    fn default() -> Self {
        TarBuilder::new()
    }
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
            n: 0,
        }
    }

    fn header(&mut self, kind: tar::EntryType, mode: u32, owner: (u64, u64)) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        self.n += 1;
        h.set_mtime(MTIME + self.n * 60);
        h.set_size(0);
        h
    }

    /// PAX xattrs for the next entry.
    pub fn xattrs(&mut self, pairs: &[(&str, &[u8])]) -> &mut Self {
        let records: Vec<(String, &[u8])> = pairs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("pax");
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32, owner: (u64, u64)) -> &mut Self {
        let mut h = self.header(tar::EntryType::Directory, mode, owner);
        self.b
            .append_data(&mut h, name, std::io::empty())
            .expect("dir");
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, owner: (u64, u64), data: &[u8]) -> &mut Self {
        let mut h = self.header(tar::EntryType::Regular, mode, owner);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, name, data).expect("file");
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, (0, 0));
        self.b.append_link(&mut h, name, target).expect("symlink");
        self
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = self.header(tar::EntryType::Link, 0o644, (0, 0));
        self.b.append_link(&mut h, name, target).expect("hardlink");
        self
    }

    pub fn node(
        &mut self,
        kind: tar::EntryType,
        name: &str,
        mode: u32,
        dev: (u32, u32),
    ) -> &mut Self {
        let mut h = self.header(kind, mode, (0, 0));
        h.set_device_major(dev.0).expect("major");
        h.set_device_minor(dev.1).expect("minor");
        self.b
            .append_data(&mut h, name, std::io::empty())
            .expect("node");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

/// A tar of `(path, content)` files (mode 0644, root) under explicitly named parent directories.
pub fn files_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = TarBuilder::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data) in files {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            acc.push_str(p);
            acc.push('/');
            if dirs.insert(acc.clone()) {
                t.dir(&acc, 0o755, (0, 0));
            }
        }
        t.file(path, 0o644, (0, 0), data);
    }
    t.finish()
}

/// A busybox root (`busybox-static`'s binary plus applet symlinks) with `/tmp`, `/etc/passwd`.
pub fn busybox_tar(extra: &[(&str, &[u8])]) -> Vec<u8> {
    let busybox = fs::read("/bin/busybox")
        .expect("the test needs a static /bin/busybox (apt-get install busybox-static)");
    let mut t = TarBuilder::new();
    t.dir("bin/", 0o755, (0, 0));
    t.file("bin/busybox", 0o755, (0, 0), &busybox);
    for applet in [
        "sh", "cat", "ls", "echo", "id", "pwd", "env", "ip", "touch", "test", "true", "false",
        "head", "wc", "sleep",
    ] {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.dir("etc/", 0o755, (0, 0));
    t.file(
        "etc/passwd",
        0o644,
        (0, 0),
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    );
    t.dir("tmp/", 0o1777, (0, 0));
    t.dir("root/", 0o700, (0, 0));
    t.file("bin/not-exec", 0o644, (0, 0), b"#!/bin/sh\necho nope\n");
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data) in extra {
        let parts: Vec<&str> = path.split('/').collect();
        let mut acc = String::new();
        for p in &parts[..parts.len() - 1] {
            acc.push_str(p);
            acc.push('/');
            if dirs.insert(acc.clone()) && acc != "bin/" && acc != "etc/" && acc != "tmp/" {
                t.dir(&acc, 0o755, (0, 0));
            }
        }
        t.file(path, 0o644, (0, 0), data);
    }
    t.finish()
}

#[allow(unused_imports)] // each test binary uses a subset
pub use regfs_testkit::{gunzip_all, gzip};

/// One layer of a layout: its blob as stored and the sha256 of its uncompressed tar.
pub struct LayoutLayer {
    pub media_type: String,
    pub blob: Vec<u8>,
    pub diff_id: String,
    pub annotations: BTreeMap<String, String>,
}

impl LayoutLayer {
    /// A plain gzip layer of `tar`.
    pub fn gzip(tar: &[u8]) -> LayoutLayer {
        LayoutLayer {
            media_type: OCI_GZIP.into(),
            blob: gzip(tar),
            diff_id: sha256(tar),
            annotations: BTreeMap::new(),
        }
    }
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Go architecture name for {other}"),
    }
}

/// Writes an OCI layout at `dir` holding one image tagged `tag` with `layers` and `cmd`.
pub fn write_layout(dir: &Path, tag: &str, layers: &[LayoutLayer], cmd: &[&str]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("mkdir layout");
    let put = |data: &[u8]| -> String {
        let d = sha256(data);
        fs::write(blobs.join(&d["sha256:".len()..]), data).expect("write blob");
        d
    };
    let descs: Vec<Value> = layers
        .iter()
        .map(|l| {
            let mut d =
                json!({"mediaType": l.media_type, "digest": put(&l.blob), "size": l.blob.len()});
            if !l.annotations.is_empty() {
                d["annotations"] = json!(l.annotations);
            }
            d
        })
        .collect();
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).expect("config");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": put(&config), "size": config.len()},
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": put(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
}

/// Pushes `oci:layout:tag` to `reference` with skopeo, blobs and annotations as they are.
pub fn skopeo_push(layout: &Path, tag: &str, reference: &str) {
    which("skopeo").expect("the test needs `skopeo` (apt-get install skopeo)");
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "--insecure-policy",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{reference}")),
    );
}

/// `regfs convert-image src dst extra..`, returning its JSON summary.
pub fn convert_image(src: &str, dst: &str, extra: &[&str]) -> Value {
    let out = run_ok(regfs().arg("convert-image").arg(src).arg(dst).args(extra));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "convert-image stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Fails the test unless FUSE is usable here.
#[track_caller]
pub fn require_fuse() {
    regfs_testkit::require_fuse();
    assert!(
        which("fusermount3").is_some() || which("fusermount").is_some(),
        "this test needs fusermount3 (apt-get install fuse3)"
    );
}

/// Whether `dir` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let want = canon.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A `regfs mount --daemon` of an image, unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
    /// The process printed by `--daemon`: the keeper of the mount when run as root, else the
    /// serving process.
    pub pid: i32,
}

impl Mount {
    /// `regfs mount --daemon REF DIR extra..`; fails the test when it does not succeed.
    #[track_caller]
    pub fn start(reference: &str, dir: &Path, extra: &[&str]) -> Mount {
        require_fuse();
        fs::create_dir_all(dir).expect("mount dir");
        let out = run_ok(
            regfs()
                .args(["mount", "--daemon"])
                .arg(reference)
                .arg(dir)
                .args(extra),
        );
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("mount --daemon printed no pid ({e}): {out:?}"));
        assert!(
            is_mounted(dir),
            "{} not mounted after mount --daemon",
            dir.display()
        );
        Mount {
            dir: dir.to_owned(),
            pid,
        }
    }

    /// `regfs stats DIR --json`.
    pub fn stats(&self) -> Value {
        let out = run_ok(regfs().arg("stats").arg(&self.dir).arg("--json"));
        serde_json::from_slice(&out.stdout).expect("stats JSON")
    }

    /// Sum of `requests` over the layers.
    pub fn requests(&self) -> u64 {
        sum_layers(&self.stats(), "requests")
    }

    /// Waits until no layer's prefetch is `running`/`not_started` (with a prefetch configured);
    /// returns the final stats.
    pub fn wait_prefetch_done(&self) -> Value {
        let start = Instant::now();
        loop {
            let s = self.stats();
            let states: Vec<String> = s["layers"]
                .as_array()
                .expect("layers")
                .iter()
                .map(|l| l["prefetch"].as_str().unwrap_or("").to_owned())
                .collect();
            if states.iter().all(|p| p == "done") {
                return s;
            }
            assert!(
                !states.iter().any(|p| p == "failed"),
                "prefetch failed: {s}"
            );
            assert!(start.elapsed() < HANG_LIMIT, "prefetch never finished: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the serving process is still alive.
    pub fn process_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
            && fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
    }

    /// Waits (up to [`HANG_LIMIT`]) for the serving process to exit; fails the test if it hangs.
    #[track_caller]
    pub fn wait_exit(&self) {
        let start = Instant::now();
        while self.process_alive() {
            assert!(
                start.elapsed() < HANG_LIMIT,
                "mount process {} did not exit",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `regfs umount DIR` (must succeed), then waits for the process to exit.
    #[track_caller]
    pub fn umount(self) {
        run_ok(regfs().arg("umount").arg(&self.dir));
        assert!(!is_mounted(&self.dir), "still mounted after regfs umount");
        self.wait_exit();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = regfs().args(["umount", "--lazy"]).arg(&self.dir).output();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
    }
}

/// Sum of the numeric field `key` over the `layers` of a stats report.
pub fn sum_layers(stats: &Value, key: &str) -> u64 {
    stats["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l[key].as_u64().unwrap_or_else(|| panic!("no {key} in {l}")))
        .sum()
}

/// The overlay oracle: applies `tars` in order into `dir` with GNU `tar -x`, a layer's
/// whiteouts (`.wh.NAME`) removing NAME of the lower layers and an opaque marker
/// (`.wh..wh..opq`) emptying its directory of lower content first; the markers themselves are
/// removed afterwards and their directories' mtimes put back.
pub fn overlay_oracle(tars: &[Vec<u8>], dir: &Path, work: &Path) {
    fs::create_dir_all(dir).expect("oracle dir");
    for (i, tar_bytes) in tars.iter().enumerate() {
        let mut markers = Vec::new();
        for entry in tar::Archive::new(&tar_bytes[..]).entries().expect("tar") {
            let entry = entry.expect("entry");
            let name = super::layers::clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
            let (parent, base) = name.rsplit_once('/').unwrap_or(("", name.as_str()));
            if base == ".wh..wh..opq" {
                let d = dir.join(parent);
                if d.is_dir() {
                    for child in fs::read_dir(&d).expect("read_dir") {
                        remove_any(&child.expect("dirent").path());
                    }
                }
                markers.push(name.clone());
            } else if let Some(victim) = base.strip_prefix(".wh.") {
                remove_any(&dir.join(parent).join(victim));
                markers.push(name.clone());
            }
        }
        let tar_path = work.join(format!("oracle-layer-{i}.tar"));
        fs::write(&tar_path, tar_bytes).expect("write layer tar");
        super::oracle::gnu_tar_extract(&tar_path, dir);
        for m in markers {
            let p = dir.join(&m);
            let parent = p.parent().expect("parent").to_owned();
            let meta = fs::symlink_metadata(&parent).expect("stat marker parent");
            fs::remove_file(&p).unwrap_or_else(|e| panic!("remove marker {}: {e}", p.display()));
            set_mtime(&parent, meta.mtime(), meta.mtime_nsec());
        }
    }
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).expect("remove dir"),
        Ok(_) => fs::remove_file(p).expect("remove file"),
        Err(_) => {}
    }
}

/// Sets the mtime of `p` (not following symlinks), keeping its atime.
pub fn set_mtime(p: &Path, secs: i64, nsecs: i64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(secs, nsecs),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

/// The blob file of `digest` in a registry's filesystem storage root.
pub fn registry_blob_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

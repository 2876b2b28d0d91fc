//! A small busybox image: layer tars, an OCI layout, pushed with skopeo as plain gzip. Trimmed
//! copy of the parts of `crates/regfs/tests/support/image.rs` these tests need.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use super::registry::which;

/// Fixed mtime: deterministic layers.
const MTIME: u64 = 1_650_000_000;

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

/// A busybox root (`busybox-static`'s binary plus applet symlinks) with /tmp and /etc/passwd.
pub fn busybox_tar() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox")
        .expect("the test needs a static /bin/busybox (apt-get install busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| {
        let mut h = header(tar::EntryType::Directory, mode);
        b.append_data(&mut h, name, std::io::empty()).expect("dir");
    };
    dir(&mut b, "bin/", 0o755);
    dir(&mut b, "etc/", 0o755);
    dir(&mut b, "tmp/", 0o1777);
    dir(&mut b, "proc/", 0o555);
    dir(&mut b, "dev/", 0o755);
    dir(&mut b, "sys/", 0o555);
    let mut h = header(tar::EntryType::Regular, 0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .expect("busybox");
    for applet in ["sh", "cat", "ls", "echo", "true"] {
        let mut h = header(tar::EntryType::Symlink, 0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("symlink");
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = header(tar::EntryType::Regular, 0o644);
    h.set_size(passwd.len() as u64);
    b.append_data(&mut h, "etc/passwd", &passwd[..])
        .expect("passwd");
    b.into_inner().expect("finish tar")
}

/// A tar with one regular file at `name`.
pub fn file_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data).expect("file");
    b.into_inner().expect("finish tar")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// The chain IDs of layers with these diff IDs (OCI image spec: chain(n) =
/// sha256(chain(n-1) + " " + diff(n))).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Go architecture name for {other}"),
    }
}

/// Writes an OCI layout at `dir` with one image tagged `tag` of gzip layers of `tars`; returns
/// the diff IDs.
pub fn write_layout(dir: &Path, tag: &str, tars: &[Vec<u8>]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("mkdir layout");
    let put = |data: &[u8]| -> String {
        let d = sha256(data);
        fs::write(blobs.join(&d["sha256:".len()..]), data).expect("write blob");
        d
    };
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let layers: Vec<serde_json::Value> = tars
        .iter()
        .map(|t| {
            let blob = gzip(t);
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(&blob), "size": blob.len()})
        })
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len()},
        "layers": layers,
    }))
    .expect("manifest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
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
    diff_ids
}

/// Pushes `oci:layout:tag` to `reference` with skopeo, blobs as they are.
pub fn skopeo_push(layout: &Path, tag: &str, reference: &str) {
    which("skopeo").expect("the test needs `skopeo` (apt-get install skopeo)");
    super::run_ok(
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

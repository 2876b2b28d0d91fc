//! End-to-end tests of `regfs convert-image`, `regfs inspect REF` and `regfs cache`, run on the
//! real binary against a real Debian `docker-registry` started per test on a free loopback port,
//! with a real image built here (busybox-static rootfs, a layer adding files, a layer with a
//! whiteout; gzip, plain tar and zstd layers), pushed by skopeo, and the converted image run by a
//! private containerd + runc. Layers are checked by the reference Go implementation
//! (`esgz-oracle verify --toc-digest`).

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::image::{gunzip_all, gzip};
use support::oracle::{esgz_oracle, require_root};
use support::registry::{Registry, free_port, which};
use support::{blob, layers, regfs, run_fail, run_ok, scratch, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
const UNCOMPRESSED: &str = "io.containers.estargz.uncompressed-size";
const TOC_OFFSET: &str = "io.regfs.estargz.toc-offset";
const PREFETCH: &str = "io.regfs.estargz.prefetch-size";

/// What the test image's files say, and the command that prints them.
const MSG: &str = "hello from layer two\n";
const THREE: &str = "written by layer three\n";
const RUN_ARGS: [&str; 3] = [
    "/bin/sh",
    "-c",
    "cat /data/msg.txt /data/three.txt; ls /data",
];
/// Files left in /data after layer 3 whites out old.txt (ls order).
const DATA_FILES: [&str; 4] = ["big.bin", "keep.txt", "msg.txt", "three.txt"];
/// Bigger than one 4 MiB chunk, so that layer 2 has a chunked file.
const BIG_SIZE: usize = 5 << 20;

fn expected_output() -> String {
    let mut s = format!("{MSG}{THREE}");
    for f in DATA_FILES {
        s.push_str(f);
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Building the test image

struct Entry {
    path: &'static str,
    kind: EntryKind,
}

enum EntryKind {
    Dir,
    File(Vec<u8>, u32),
    Symlink(&'static str),
}

fn tar_of(entries: Vec<Entry>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, e.path, std::io::empty())
                    .expect("tar dir");
            }
            EntryKind::File(data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, e.path, &data[..]).expect("tar file");
            }
            EntryKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, e.path, target).expect("tar symlink");
            }
        }
    }
    b.into_inner().expect("tar finish")
}

fn dir(path: &'static str) -> Entry {
    Entry {
        path,
        kind: EntryKind::Dir,
    }
}
fn file(path: &'static str, data: &[u8]) -> Entry {
    Entry {
        path,
        kind: EntryKind::File(data.to_vec(), 0o644),
    }
}
fn link(path: &'static str, target: &'static str) -> Entry {
    Entry {
        path,
        kind: EntryKind::Symlink(target),
    }
}

/// The three source layers: (media type, blob, uncompressed tar).
fn source_layers() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let busybox = fs::read("/bin/busybox")
        .expect("the test needs a static /bin/busybox (apt-get install busybox-static)");
    let mut base = vec![
        dir("bin/"),
        dir("etc/"),
        dir("data/"),
        Entry {
            path: "bin/busybox",
            kind: EntryKind::File(busybox, 0o755),
        },
    ];
    for applet in ["bin/sh", "bin/cat", "bin/ls", "bin/echo"] {
        base.push(link(applet, "busybox"));
    }
    base.push(file("data/old.txt", b"to be whited out\n"));
    base.push(file("data/keep.txt", b"kept\n"));
    let base = tar_of(base);

    let added = tar_of(vec![
        dir("data/"),
        file("data/msg.txt", MSG.as_bytes()),
        file("data/big.bin", &layers::noise(BIG_SIZE, 7)),
        file("etc/motd", b"regfs test image\n"),
    ]);

    let whiteout = tar_of(vec![
        dir("data/"),
        file("data/.wh.old.txt", b""),
        file("data/three.txt", THREE.as_bytes()),
    ]);
    let zstd = zstd::encode_all(&whiteout[..], 3).expect("zstd");

    vec![
        (OCI_GZIP, gzip(&base), base),
        (
            "application/vnd.oci.image.layer.v1.tar",
            added.clone(),
            added,
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            zstd,
            whiteout,
        ),
    ]
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Go architecture name for {other}"),
    }
}

/// Writes the source image as an OCI layout tagged `tag` under `dir`; returns its config.
fn write_source_layout(dir: &Path, tag: &str) -> Value {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("mkdir layout");
    let put = |data: &[u8]| -> String {
        let d = sha256(data);
        fs::write(blobs.join(&d["sha256:".len()..]), data).expect("write blob");
        d
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (media_type, blob, tar) in source_layers() {
        layer_descs
            .push(json!({"mediaType": media_type, "digest": put(&blob), "size": blob.len()}));
        diff_ids.push(sha256(&tar));
    }
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created_by": "busybox rootfs"},
            {"created_by": "add data"},
            {"created_by": "white out old.txt"}
        ],
    });
    let config_bytes = serde_json::to_vec(&config).expect("config json");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": put(&config_bytes), "size": config_bytes.len()},
        "layers": layer_descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": put(&manifest_bytes),
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index.json");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    config
}

/// Pushes `oci:layout:tag` to `reference` with skopeo (an implementation independent of regfs),
/// keeping the blobs as they are.
fn skopeo_push(layout: &Path, tag: &str, reference: &str, creds: Option<&str>) {
    which("skopeo").expect("the test needs `skopeo` (apt-get install skopeo)");
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--insecure-policy",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{reference}"));
    run_ok(&mut cmd);
}

/// A registry holding the source image as `src:v1`; returns it with the source config.
fn registry_with_source(work: &Path) -> (Registry, Value) {
    let reg = Registry::start();
    let layout = work.join("src-layout");
    let config = write_source_layout(&layout, "v1");
    skopeo_push(&layout, "v1", &format!("{}/src:v1", reg.addr), None);
    (reg, config)
}

fn convert_image(src: &str, dst: &str, extra: &[&str]) -> Value {
    let out = run_ok(regfs().arg("convert-image").arg(src).arg(dst).args(extra));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "convert-image stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Checking a converted image

/// Checks a converted manifest + config + layer blobs (given by a blob getter) against the
/// source config and the convert summary; returns the layer blobs.
#[track_caller]
fn check_converted(
    work: &Path,
    manifest_bytes: &[u8],
    get_blob: &dyn Fn(&str) -> Vec<u8>,
    source_config: &Value,
    summary: &Value,
) -> Vec<Vec<u8>> {
    let manifest: Value = serde_json::from_slice(manifest_bytes).expect("manifest json");
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG);
    assert_eq!(
        summary["manifestDigest"],
        sha256(manifest_bytes),
        "summary names the pushed manifest"
    );
    let config_bytes = get_blob(
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    );
    assert_eq!(sha256(&config_bytes), manifest["config"]["digest"]);
    let config: Value = serde_json::from_slice(&config_bytes).expect("config json");
    assert_eq!(config["history"], source_config["history"], "history kept");
    assert_eq!(config["config"], source_config["config"], "run config kept");

    let layers = manifest["layers"].as_array().expect("layers");
    let summary_layers = summary["layers"].as_array().expect("summary layers");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(layers.len(), 3);
    assert_eq!(summary_layers.len(), 3);
    assert_eq!(diff_ids.len(), 3);
    let mut blobs = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(layer["mediaType"], OCI_GZIP, "layer {i}");
        let digest = layer["digest"].as_str().expect("digest");
        let data = get_blob(digest);
        assert_eq!(sha256(&data), digest, "layer {i} digest");
        assert_eq!(layer["size"], data.len(), "layer {i} size");
        let ann = &layer["annotations"];
        let toc_digest = ann[TOC_DIGEST].as_str().expect("toc.digest annotation");
        assert_eq!(
            toc_digest,
            sha256(&blob::toc_json(&data)),
            "layer {i} toc digest"
        );
        let stream = gunzip_all(&data);
        assert_eq!(
            diff_ids[i],
            sha256(&stream),
            "layer {i} diff_id is sha256 of the gunzipped blob"
        );
        assert_eq!(
            ann[UNCOMPRESSED],
            stream.len().to_string(),
            "layer {i} uncompressed size"
        );
        assert_eq!(
            ann[TOC_OFFSET],
            blob::toc_offset(&data).to_string(),
            "layer {i} toc offset hint"
        );
        let landmark = blob::toc_value(&data)["entries"]
            .as_array()
            .expect("toc entries")
            .iter()
            .find(|e| e["name"] == ".prefetch.landmark")
            .map(|e| e["offset"].as_u64().expect("landmark offset").to_string());
        assert_eq!(
            ann[PREFETCH].as_str().map(str::to_owned),
            landmark,
            "layer {i} prefetch hint"
        );

        let s = &summary_layers[i];
        assert_eq!(s["digest"], digest);
        assert_eq!(s["size"], data.len());
        assert_eq!(s["diffID"], diff_ids[i]);
        assert_eq!(s["tocDigest"], toc_digest);
        assert_eq!(s["uncompressedSize"], stream.len());

        let path = work.join(format!("layer-{i}-{}", &digest[7..19]));
        fs::write(&path, &data).expect("write layer");
        run_ok(
            Command::new(esgz_oracle())
                .arg("verify")
                .arg(&path)
                .args(["--toc-digest", toc_digest]),
        );
        blobs.push(data);
    }
    blobs
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn registry_to_registry_conversion_runs_under_plain_containerd() {
    require_root();
    let work = scratch();
    let (reg, source_config) = registry_with_source(work.path());
    let src = format!("{}/src:v1", reg.addr);
    let dst = format!("{}/dst:v1", reg.addr);
    let summary = convert_image(&src, &dst, &["--chunk-size", "1048576"]);
    assert!(
        summary["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["kept"] == false)
    );

    let manifest = reg.manifest("dst", "v1");
    let blobs = check_converted(
        work.path(),
        &manifest,
        &|d| reg.blob("dst", d),
        &source_config,
        &summary,
    );
    // The uncompressed tar and zstd layers carried the same files as their eStargz versions.
    for (i, (_, _, tar)) in source_layers().into_iter().enumerate() {
        let names = |t: &[u8]| -> Vec<String> {
            tar::Archive::new(t)
                .entries()
                .expect("tar")
                .map(|e| {
                    e.expect("entry")
                        .path()
                        .expect("path")
                        .display()
                        .to_string()
                })
                .filter(|n| {
                    !n.starts_with(".prefetch")
                        && !n.starts_with(".no.prefetch")
                        && n != "stargz.index.json"
                })
                .collect()
        };
        let mut want = names(&tar);
        let mut got = names(&gunzip_all(&blobs[i]));
        want.sort();
        got.sort();
        assert_eq!(got, want, "layer {i} entries");
    }

    let ctrd = support::containerd::start();
    ctrd.pull(&dst);
    let out = ctrd.run(&dst, "regfs-image-cli-run", &RUN_ARGS);
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected_output());

    // Converting the converted image keeps every layer (they are eStargz already).
    let again = convert_image(&dst, &format!("{}/again:v1", reg.addr), &[]);
    for (a, b) in again["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(summary["layers"].as_array().unwrap())
    {
        assert_eq!(a["kept"], true);
        assert_eq!(a["digest"], b["digest"]);
        assert_eq!(a["diffID"], b["diffID"]);
    }
    let again_manifest = reg.manifest("again", "v1");
    check_converted(
        work.path(),
        &again_manifest,
        &|d| reg.blob("again", d),
        &source_config,
        &again,
    );
    // ... unless forced.
    let forced = convert_image(&dst, &format!("{}/forced:v1", reg.addr), &["--force"]);
    assert!(
        forced["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["kept"] == false)
    );
}

#[test]
fn inspect_toc_reads_one_range_per_layer() {
    let work = scratch();
    let (reg, _) = registry_with_source(work.path());
    let dst = format!("{}/dst:v1", reg.addr);
    convert_image(&format!("{}/src:v1", reg.addr), &dst, &[]);
    let manifest: Value = serde_json::from_slice(&reg.manifest("dst", "v1")).unwrap();

    let out = run_ok(regfs().args(["inspect", &dst, "--toc", "--json"]));
    let report: Value = serde_json::from_slice(&out.stdout).expect("inspect --json output");
    assert_eq!(report["manifestDigest"], sha256(&reg.manifest("dst", "v1")));
    assert_eq!(report["mediaType"], OCI_MANIFEST);
    assert_eq!(report["configDigest"], manifest["config"]["digest"]);
    assert_eq!(report["platform"], format!("linux/{}", host_arch()));
    let layers = report["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 3);
    // Manifest + config, then exactly one ranged read per layer thanks to the offset hint.
    assert_eq!(report["requests"], 2 + layers.len() as u64, "{report:#}");
    for (i, l) in layers.iter().enumerate() {
        let want = &manifest["layers"][i];
        assert_eq!(l["digest"], want["digest"]);
        assert_eq!(l["size"], want["size"]);
        assert_eq!(l["estargz"], true);
        let toc = &l["toc"];
        assert_eq!(toc["verified"], true, "layer {i}: {toc}");
        assert_eq!(toc["reads"], 1);
        assert_eq!(toc["tocDigest"], want["annotations"][TOC_DIGEST]);
        let data = reg.blob("dst", want["digest"].as_str().unwrap());
        let entries = blob::toc_value(&data)["entries"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(toc["entries"], entries.len());
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        for e in &entries {
            *by_type
                .entry(e["type"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        assert_eq!(toc["byType"], json!(by_type));
    }

    // The unconverted source: not eStargz; the footer check says so without failing.
    let out = run_ok(regfs().args([
        "inspect",
        &format!("{}/src:v1", reg.addr),
        "--toc",
        "--json",
    ]));
    let report: Value = serde_json::from_slice(&out.stdout).expect("inspect --json output");
    for l in report["layers"].as_array().unwrap() {
        assert_eq!(l["estargz"], false, "{l}");
        assert_eq!(l["toc"]["footer"], false, "{l}");
    }

    // Text output names the same facts.
    let out = run_ok(regfs().args(["inspect", &dst, "--toc"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verified against the annotation"), "{text}");
    assert!(
        text.contains(&format!("requests      {}", 2 + layers.len())),
        "{text}"
    );
}

#[test]
fn prioritized_files_put_a_prefetch_hint_on_the_layers_that_have_them() {
    let work = scratch();
    let (reg, source_config) = registry_with_source(work.path());
    let list = work.path().join("prioritized.txt");
    // msg.txt is in layer 1 only, three.txt in layer 2 only; bin/sh nowhere past layer 0.
    fs::write(&list, "data/msg.txt\ndata/three.txt\nbin/sh\n").unwrap();
    let dst = format!("{}/prio:v1", reg.addr);
    let summary = convert_image(
        &format!("{}/src:v1", reg.addr),
        &dst,
        &["--prioritized-files", list.to_str().unwrap()],
    );
    let manifest = reg.manifest("prio", "v1");
    // check_converted ties each prefetch hint to the TOC's landmark.
    check_converted(
        work.path(),
        &manifest,
        &|d| reg.blob("prio", d),
        &source_config,
        &summary,
    );
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    for i in 0..3 {
        let hint = &manifest["layers"][i]["annotations"][PREFETCH];
        assert!(
            hint.is_string(),
            "layer {i} has prioritized files and a landmark: {hint}"
        );
    }
    let missed = &summary["layers"][1]["missedPrioritized"];
    assert!(
        missed
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "data/three.txt"),
        "{missed}"
    );
}

#[test]
fn oci_layouts_as_source_and_destination() {
    let work = scratch();
    let src_layout = work.path().join("src-layout");
    let source_config = write_source_layout(&src_layout, "v1");
    let dst_layout = work.path().join("dst-layout");
    let summary = convert_image(
        &format!("oci:{}:v1", src_layout.display()),
        &format!("oci:{}:converted", dst_layout.display()),
        &[],
    );
    let index: Value =
        serde_json::from_slice(&fs::read(dst_layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "converted")
        .unwrap_or_else(|| panic!("no converted tag in {index}"));
    assert_eq!(entry["mediaType"], OCI_MANIFEST);
    let blob_path = |d: &str| dst_layout.join("blobs/sha256").join(&d["sha256:".len()..]);
    let manifest = fs::read(blob_path(entry["digest"].as_str().unwrap())).unwrap();
    assert_eq!(entry["size"], manifest.len());
    check_converted(
        work.path(),
        &manifest,
        &|d| fs::read(blob_path(d)).unwrap(),
        &source_config,
        &summary,
    );

    // Layout → registry: the layers are eStargz already and are kept byte for byte.
    let reg = Registry::start();
    let pushed = convert_image(
        &format!("oci:{}:converted", dst_layout.display()),
        &format!("{}/from-layout:v1", reg.addr),
        &[],
    );
    assert_eq!(
        pushed["manifestDigest"], summary["manifestDigest"],
        "same image, same manifest"
    );
    let manifest = reg.manifest("from-layout", "v1");
    check_converted(
        work.path(),
        &manifest,
        &|d| reg.blob("from-layout", d),
        &source_config,
        &pushed,
    );

    // Registry → layout.
    let back = work.path().join("back-layout");
    let pulled = convert_image(
        &format!("{}/from-layout:v1", reg.addr),
        &format!("oci:{}", back.display()),
        &[],
    );
    assert_eq!(pulled["manifestDigest"], summary["manifestDigest"]);
    let index: Value = serde_json::from_slice(&fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );

    // A tag the layout does not have.
    let err = run_fail(
        regfs()
            .arg("convert-image")
            .arg(format!("oci:{}:nope", src_layout.display()))
            .arg(format!("oci:{}", work.path().join("x").display())),
    );
    assert!(err.contains("nope"), "{err}");
}

/// Turns the layout's one tagged manifest into a two-platform index: the host's image and a
/// `linux/s390x` one, which is the same image under another architecture when `valid_other`,
/// else one whose only layer is missing from the layout.
fn make_multi_platform(layout: &Path, tag: &str, valid_other: bool) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let host = index["manifests"][0].clone();
    let put = |data: &[u8]| -> String {
        let d = sha256(data);
        fs::write(
            layout.join("blobs/sha256").join(&d["sha256:".len()..]),
            data,
        )
        .unwrap();
        d
    };
    let other = if valid_other {
        let read =
            |d: &str| fs::read(layout.join("blobs/sha256").join(&d["sha256:".len()..])).unwrap();
        let mut manifest: Value =
            serde_json::from_slice(&read(host["digest"].as_str().unwrap())).unwrap();
        let mut config: Value =
            serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        config["architecture"] = json!("s390x");
        let config = serde_json::to_vec(&config).unwrap();
        manifest["config"] =
            json!({"mediaType": OCI_CONFIG, "digest": put(&config), "size": config.len()});
        serde_json::to_vec(&manifest).unwrap()
    } else {
        let missing_layer = sha256(b"not in this layout");
        let other_config = serde_json::to_vec(&json!({
            "architecture": "s390x",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [missing_layer]},
        }))
        .unwrap();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": put(&other_config), "size": other_config.len()},
            "layers": [{"mediaType": OCI_GZIP, "digest": missing_layer, "size": 18}],
        }))
        .unwrap()
    };
    let mut host_entry = host.clone();
    host_entry.as_object_mut().unwrap().remove("annotations");
    host_entry["platform"] = json!({"os": "linux", "architecture": host_arch()});
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": put(&other), "size": other.len(),
             "platform": {"os": "linux", "architecture": "s390x"}},
            host_entry,
        ],
    }))
    .unwrap();
    index["manifests"] = json!([{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": put(&nested),
        "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn multi_platform_source_converts_the_chosen_platform_only() {
    let work = scratch();
    let src_layout = work.path().join("src-layout");
    let source_config = write_source_layout(&src_layout, "multi");
    make_multi_platform(&src_layout, "multi", false);
    let src = format!("oci:{}:multi", src_layout.display());

    // Default: this host's platform; the result is a plain manifest.
    let dst_layout = work.path().join("dst-layout");
    let summary = convert_image(&src, &format!("oci:{}:host", dst_layout.display()), &[]);
    let manifest = fs::read(
        dst_layout
            .join("blobs/sha256")
            .join(&summary["manifestDigest"].as_str().unwrap()["sha256:".len()..]),
    )
    .unwrap();
    let blob_path = |d: &str| dst_layout.join("blobs/sha256").join(&d["sha256:".len()..]);
    check_converted(
        work.path(),
        &manifest,
        &|d| fs::read(blob_path(d)).unwrap(),
        &source_config,
        &summary,
    );

    // The other platform is really chosen when asked for: its layer is missing, by name.
    let err = run_fail(
        regfs()
            .arg("convert-image")
            .arg(&src)
            .arg(format!("oci:{}:s390x", dst_layout.display()))
            .args(["--platform", "linux/s390x"]),
    );
    assert!(
        err.contains(&sha256(b"not in this layout")["sha256:".len()..]),
        "{err}"
    );
}

#[test]
fn all_platforms_converts_every_platform_into_an_index() {
    let work = scratch();
    let src_layout = work.path().join("src-layout");
    let source_config = write_source_layout(&src_layout, "multi");
    make_multi_platform(&src_layout, "multi", true);
    let reg = Registry::start();
    which("skopeo").expect("the test needs `skopeo` (apt-get install skopeo)");
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--insecure-policy",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:multi", src_layout.display()))
            .arg(format!("docker://{}/multi:v1", reg.addr)),
    );

    let summary = convert_image(
        &format!("{}/multi:v1", reg.addr),
        &format!("{}/multi-esgz:v1", reg.addr),
        &["--all-platforms"],
    );
    let index_bytes = reg.manifest("multi-esgz", "v1");
    assert_eq!(summary["indexDigest"], sha256(&index_bytes));
    let index: Value = serde_json::from_slice(&index_bytes).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    let archs: Vec<&str> = entries
        .iter()
        .map(|e| e["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(
        archs,
        ["s390x", host_arch()],
        "every platform, in the source order"
    );
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry["mediaType"], OCI_MANIFEST);
        let manifest = reg.manifest("multi-esgz", entry["digest"].as_str().unwrap());
        assert_eq!(entry["size"], manifest.len());
        let one = &summary["manifests"][i];
        assert_eq!(one["platform"], entry["platform"]);
        check_converted(
            work.path(),
            &manifest,
            &|d| reg.blob("multi-esgz", d),
            &source_config,
            one,
        );
    }

    // The same into a layout: its tag names the index.
    let dst_layout = work.path().join("dst-layout");
    let from_layout = convert_image(
        &format!("oci:{}:multi", src_layout.display()),
        &format!("oci:{}:all", dst_layout.display()),
        &["--all-platforms"],
    );
    assert_eq!(
        from_layout["indexDigest"], summary["indexDigest"],
        "same images, same index"
    );
    let layout_index: Value =
        serde_json::from_slice(&fs::read(dst_layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        layout_index["manifests"][0]["digest"],
        summary["indexDigest"]
    );
    assert_eq!(
        layout_index["manifests"][0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
}

#[test]
fn kept_layers_are_copied_across_registries() {
    let work = scratch();
    let src_layout = work.path().join("src-layout");
    let source_config = write_source_layout(&src_layout, "v1");
    let a = Registry::start();
    let b = Registry::start();
    let first = convert_image(
        &format!("oci:{}:v1", src_layout.display()),
        &format!("{}/img:v1", a.addr),
        &[],
    );
    // A → B: nothing to convert, and no mount is possible across registries: every blob is
    // fetched from A and pushed to B.
    let copied = convert_image(
        &format!("{}/img:v1", a.addr),
        &format!("{}/img:v1", b.addr),
        &[],
    );
    assert_eq!(copied["manifestDigest"], first["manifestDigest"]);
    assert!(
        copied["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["kept"] == true)
    );
    let manifest = b.manifest("img", "v1");
    check_converted(
        work.path(),
        &manifest,
        &|d| b.blob("img", d),
        &source_config,
        &copied,
    );
}

#[test]
fn unknown_image_and_unreachable_registry_fail_clearly() {
    let reg = Registry::start();
    let work = scratch();
    let missing = format!("{}/nothing-here:v1", reg.addr);
    let err = run_fail(
        regfs()
            .arg("convert-image")
            .arg(&missing)
            .arg(format!("{}/out:v1", reg.addr)),
    );
    assert!(
        err.contains("nothing-here") && err.contains("not found"),
        "{err}"
    );
    let err = run_fail(regfs().args(["inspect", &missing]));
    assert!(
        err.contains("nothing-here") && err.contains("not found"),
        "{err}"
    );

    // A loopback port nobody listens on.
    let dead = format!("127.0.0.1:{}", free_port());
    let err = run_fail(
        regfs()
            .arg("convert-image")
            .arg(format!("{dead}/img:v1"))
            .arg(format!("oci:{}", work.path().join("out").display())),
    );
    assert!(err.contains(&dead) && err.contains("cannot reach"), "{err}");
    let err = run_fail(regfs().args(["inspect", &format!("{dead}/img:v1")]));
    assert!(err.contains(&dead), "{err}");
}

#[test]
fn basic_auth_registry_with_docker_config_credentials() {
    let work = scratch();
    let reg = Registry::start_basic_auth("regfs", "s3cret-pass");
    let layout = work.path().join("src-layout");
    let source_config = write_source_layout(&layout, "v1");
    skopeo_push(
        &layout,
        "v1",
        &format!("{}/src:v1", reg.addr),
        Some("regfs:s3cret-pass"),
    );
    let src = format!("{}/src:v1", reg.addr);
    let dst = format!("{}/dst:v1", reg.addr);

    // No credentials: refused, naming the host.
    let empty = work.path().join("no-docker-config");
    fs::create_dir_all(&empty).unwrap();
    let err = run_fail(
        regfs()
            .env("DOCKER_CONFIG", &empty)
            .arg("convert-image")
            .arg(&src)
            .arg(&dst),
    );
    assert!(err.contains(&reg.addr), "{err}");

    let docker_config = work.path().join("docker-config");
    fs::create_dir_all(&docker_config).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("regfs:s3cret-pass");
    fs::write(
        docker_config.join("config.json"),
        serde_json::to_vec(&json!({"auths": {reg.addr.clone(): {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    let out = run_ok(
        regfs()
            .env("DOCKER_CONFIG", &docker_config)
            .arg("convert-image")
            .arg(&src)
            .arg(&dst),
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = reg.manifest("dst", "v1");
    check_converted(
        work.path(),
        &manifest,
        &|d| reg.blob("dst", d),
        &source_config,
        &summary,
    );
}

/// Writes a content-addressed chunk file into a cache dir (the chunk store's on-disk layout, in
/// the cache dir's `store/`), with a given last-use time.
fn put_chunk(cache: &Path, data: &[u8], mtime_secs: u64) -> PathBuf {
    let hex = sha256(data)["sha256:".len()..].to_owned();
    let dir = cache.join("store/chunks/sha256").join(&hex[..2]);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(&hex);
    fs::write(&path, data).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime_secs);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    path
}

#[test]
fn cache_du_and_gc_on_a_populated_cache() {
    let work = scratch();
    let cache = work.path().join("cache");
    let sizes = [3000usize, 5000, 7000, 11000];
    let mut paths = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        // Oldest first: chunk 0 was used longest ago.
        paths.push(put_chunk(
            &cache,
            &layers::noise(*size, i as u64 + 1),
            1_700_000_000 + i as u64 * 100,
        ));
    }
    let total: usize = sizes.iter().sum();

    let du = |cmd: &mut Command| -> Value { serde_json::from_slice(&run_ok(cmd).stdout).unwrap() };
    let v = du(regfs()
        .args(["cache", "du", "--json", "--cache-dir"])
        .arg(&cache)
        .env_remove("REGFS_CACHE_DIR"));
    assert_eq!(v["chunks"], sizes.len());
    assert_eq!(v["bytes"], total);
    // The environment variable names the cache too.
    let v = du(regfs()
        .args(["cache", "du", "--json"])
        .env("REGFS_CACHE_DIR", &cache));
    assert_eq!(v["bytes"], total);

    // Trim to what the two newest chunks need: the two oldest go.
    let keep = sizes[2] + sizes[3];
    let out = run_ok(
        regfs()
            .args([
                "cache",
                "gc",
                "--json",
                "--max-size",
                &keep.to_string(),
                "--cache-dir",
            ])
            .arg(&cache),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["removedChunks"], 2);
    assert_eq!(v["freedBytes"], sizes[0] + sizes[1]);
    assert_eq!(v["bytes"], keep);
    assert!(!paths[0].exists() && !paths[1].exists() && paths[2].exists() && paths[3].exists());
    let v = du(regfs()
        .args(["cache", "du", "--json", "--cache-dir"])
        .arg(&cache));
    assert_eq!(v["chunks"], 2);

    // A missing cache dir is an error, not an empty cache created on the spot.
    let missing = work.path().join("no-cache");
    let err = run_fail(regfs().args(["cache", "du", "--cache-dir"]).arg(&missing));
    assert!(err.contains("no-cache"), "{err}");
    assert!(!missing.exists());
}

//! End-to-end tests of `regfs run` and `regfs optimize` (issue #5): the real binary against a
//! real Debian `docker-registry` started per test on a free loopback port, with a busybox image
//! (busybox-static + applet symlinks) plus an app layer of many files, converted to eStargz by
//! `regfs convert-image`. Runs are real (private mount namespace, FUSE lower, overlay).

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::image::{
    LayoutLayer, Mount, busybox_tar, convert_image, files_tar, require_fuse, skopeo_push,
    sum_layers, write_layout,
};
use support::layers::noise;
use support::registry::Registry;
use support::{blob, regfs, run_ok, scratch};

/// Files of the app layer besides a.txt and b.txt: enough that a prioritized order is visible.
const APP_FILES: usize = 60;
const A_TXT: &[u8] = b"contents of a\n";
const B_TXT: &[u8] = b"contents of b\n";
/// The last (non-prioritized) app file, big enough to sit well past any prefetch range.
const TAIL_FILE: &str = "app/zz-tail.bin";

fn app_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..APP_FILES / 2 {
        files.push((format!("app/f{i:03}.bin"), noise(8_000, 2 * i as u64 + 101)));
    }
    files.push(("app/a.txt".into(), A_TXT.to_vec()));
    for i in APP_FILES / 2..APP_FILES {
        files.push((format!("app/f{i:03}.bin"), noise(8_000, 2 * i as u64 + 101)));
    }
    files.push(("app/b.txt".into(), B_TXT.to_vec()));
    files.push((TAIL_FILE.into(), noise(600_000, 9_999)));
    files
}

fn source_tars() -> Vec<Vec<u8>> {
    let app = app_files();
    let refs: Vec<(&str, &[u8])> = app
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    vec![busybox_tar(&[]), files_tar(&refs)]
}

/// Pushes the plain gzip image to `repo:src` (skopeo) and its eStargz conversion to `repo:v1`;
/// returns `(plain ref, converted ref)`.
fn push_images(work: &Path, reg: &Registry, repo: &str) -> (String, String) {
    let layout = work.join(format!("layout-{repo}"));
    let layers: Vec<LayoutLayer> = source_tars().iter().map(|t| LayoutLayer::gzip(t)).collect();
    write_layout(&layout, "src", &layers, &["/bin/sh"]);
    let plain = format!("{}/{repo}:src", reg.addr);
    skopeo_push(&layout, "src", &plain);
    let converted = format!("{}/{repo}:v1", reg.addr);
    convert_image(&plain, &converted, &["--chunk-size", "65536"]);
    (plain, converted)
}

/// `regfs run --cache-dir CACHE opts.. REF cmd..`, returning its output whatever the status.
fn run(work: &Path, opts: &[&str], reference: &str, cmd: &[&str]) -> Output {
    require_fuse();
    regfs()
        .arg("run")
        .arg("--cache-dir")
        .arg(work.join("cache"))
        .args(opts)
        .arg(reference)
        .args(cmd)
        .output()
        .expect("spawn regfs run")
}

#[track_caller]
fn stdout_of(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "regfs run failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host mounts that a run of `reference` could leave behind: any regfs FUSE mount of it, its
/// temp mount points, and overlays.
fn suspicious_mounts(reference: &str) -> BTreeSet<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(reference) || l.contains("regfs-image-") || l.contains(" overlay "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn exit_statuses_follow_docker_run() {
    let work = scratch();
    let reg = Registry::start();
    let (_, image) = push_images(work.path(), &reg, "status");
    let w = work.path();

    assert_eq!(
        stdout_of(&run(w, &[], &image, &["echo", "hello"])),
        "hello\n"
    );
    let out = run(w, &["--rm"], &image, &["sh", "-c", "exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(w, &[], &image, &["no-such-command"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(w, &[], &image, &["/bin/not-exec"]);
    assert_eq!(
        out.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = format!("{}/no-such-image:v1", reg.addr);
    let out = run(w, &[], &missing, &["echo", "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("no-such-image"),
        "the error must name the image: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The image's own Cmd (/bin/sh) runs when no command is given; stdin is the script.
    let out = regfs()
        .arg("run")
        .arg("--cache-dir")
        .arg(w.join("cache"))
        .arg(&image)
        .stdin(
            fs::File::open(support::write_file(
                w,
                "script",
                b"echo from stdin; exit 3\n",
            ))
            .expect("script"),
        )
        .output()
        .expect("spawn");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\n");
}

#[test]
fn writes_stay_in_their_run_and_runs_leave_no_mounts() {
    let work = scratch();
    let reg = Registry::start();
    let (_, image) = push_images(work.path(), &reg, "writes");
    let w = work.path();
    let before = suspicious_mounts(&image);

    let out = run(
        w,
        &["--rm"],
        &image,
        &[
            "sh",
            "-c",
            "echo written > /app/new.txt && echo changed > /app/a.txt && cat /app/new.txt /app/a.txt",
        ],
    );
    assert_eq!(stdout_of(&out), "written\nchanged\n");
    assert_eq!(
        suspicious_mounts(&image),
        before,
        "a --rm run left mounts behind"
    );
    let out = run(
        w,
        &[],
        &image,
        &["sh", "-c", "test -e /app/new.txt; echo $?; cat /app/a.txt"],
    );
    assert_eq!(
        stdout_of(&out),
        format!("1\n{}", String::from_utf8_lossy(A_TXT))
    );
    assert_eq!(
        suspicious_mounts(&image),
        before,
        "a run left mounts behind"
    );
    // A failing command and a missing one leave nothing either.
    let _ = run(w, &[], &image, &["sh", "-c", "exit 9"]);
    let _ = run(w, &[], &image, &["no-such-command"]);
    assert_eq!(
        suspicious_mounts(&image),
        before,
        "a failed run left mounts behind"
    );

    let mnt = w.join("mnt");
    let m = Mount::start(
        &image,
        &mnt,
        &["--cache-dir", &w.join("cache").display().to_string()],
    );
    assert!(
        !mnt.join("app/new.txt").exists(),
        "a container's write reached the image"
    );
    assert_eq!(fs::read(mnt.join("app/a.txt")).expect("read a.txt"), A_TXT);
    m.umount();
}

#[test]
fn env_workdir_user_and_network_options_apply() {
    let work = scratch();
    let reg = Registry::start();
    let (_, image) = push_images(work.path(), &reg, "opts");
    let w = work.path();

    let out = run(
        w,
        &["-e", "FOO=bar baz", "-e", "EMPTY="],
        &image,
        &["sh", "-c", "echo \"$FOO|$EMPTY|$PATH\""],
    );
    assert_eq!(stdout_of(&out), "bar baz||/bin\n");
    assert_eq!(
        stdout_of(&run(w, &["-w", "/app"], &image, &["pwd"])),
        "/app\n"
    );
    assert_eq!(stdout_of(&run(w, &[], &image, &["pwd"])), "/\n");
    let out = run(
        w,
        &["-u", "1000:1000"],
        &image,
        &["sh", "-c", "id -u; id -g; touch /tmp/x && ls -n /tmp/x"],
    );
    let text = stdout_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], ["1000", "1000"], "{text}");
    assert!(
        lines[2].contains(" 1000 "),
        "file created as 1000:1000: {text}"
    );
    assert_eq!(stdout_of(&run(w, &[], &image, &["id", "-u"])), "0\n");

    let host_ns = fs::read_link("/proc/self/ns/net").expect("host netns");
    let host_ns = host_ns.to_string_lossy();
    let ifaces = |out: &str| -> Vec<String> {
        out.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|s| s.trim().to_owned())
            .collect()
    };
    let script = "readlink /proc/self/ns/net; cat /proc/net/dev";
    let none = stdout_of(&run(w, &["--net", "none"], &image, &["sh", "-c", script]));
    let (ns, dev) = none.split_once('\n').expect("two parts");
    assert_ne!(
        ns, host_ns,
        "--net none ran in the host's network namespace"
    );
    assert_eq!(ifaces(dev), ["lo"], "--net none: {dev}");
    let host = stdout_of(&run(w, &["--net", "host"], &image, &["sh", "-c", script]));
    let (ns, _) = host.split_once('\n').expect("two parts");
    assert_eq!(ns, host_ns, "--net host left the host's network namespace");
}

/// The JSON-lines record of a run.
fn read_record(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("record {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("record line {l:?}: {e}")))
        .collect()
}

fn position(record: &[Value], path: &str) -> usize {
    record
        .iter()
        .position(|r| r["path"].as_str().map(|p| p.trim_start_matches('/')) == Some(path))
        .unwrap_or_else(|| panic!("{path} not in the record: {record:?}"))
}

fn manifest_layers(reg: &Registry, repo: &str, tag: &str) -> Vec<String> {
    let m: Value = serde_json::from_slice(&reg.manifest(repo, tag)).expect("manifest");
    m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_owned())
        .collect()
}

#[test]
fn record_lists_accessed_files_in_first_access_order() {
    let work = scratch();
    let reg = Registry::start();
    let (_, image) = push_images(work.path(), &reg, "record");
    let w = work.path();
    let record = w.join("record.jsonl");
    let out = run(
        w,
        &["--record", &record.display().to_string()],
        &image,
        &["sh", "-c", "cat /app/b.txt /app/a.txt"],
    );
    assert_eq!(
        stdout_of(&out),
        format!(
            "{}{}",
            String::from_utf8_lossy(B_TXT),
            String::from_utf8_lossy(A_TXT)
        )
    );
    let rec = read_record(&record);
    let layers = manifest_layers(&reg, "record", "v1");
    for r in &rec {
        let i = r["layerIndex"].as_u64().expect("layerIndex") as usize;
        assert_eq!(
            r["layerDigest"], layers[i],
            "layerDigest/layerIndex disagree: {r}"
        );
    }
    let (busybox, b, a) = (
        position(&rec, "bin/busybox"),
        position(&rec, "app/b.txt"),
        position(&rec, "app/a.txt"),
    );
    assert!(busybox < b && b < a, "not in first-access order: {rec:?}");
    assert_eq!(rec[a]["layerIndex"], 1);
    assert_eq!(rec[busybox]["layerIndex"], 0);
    assert!(
        !rec.iter()
            .any(|r| r["path"].as_str().unwrap_or("").ends_with("f010.bin")),
        "a file the command never touched was recorded: {rec:?}"
    );
    let paths: BTreeSet<&str> = rec.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(paths.len(), rec.len(), "a path recorded twice: {rec:?}");
}

/// Names of a layer's TOC entries, in TOC order.
fn toc_names(reg: &Registry, repo: &str, digest: &str) -> Vec<String> {
    blob::toc_value(&reg.blob(repo, digest))["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            e["name"]
                .as_str()
                .expect("name")
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect()
}

#[track_caller]
fn assert_before_landmark(names: &[String], files: &[&str]) {
    let landmark = names
        .iter()
        .position(|n| n == ".prefetch.landmark")
        .unwrap_or_else(|| panic!("no .prefetch.landmark: {names:?}"));
    for f in files {
        let p = names
            .iter()
            .position(|n| n == f)
            .unwrap_or_else(|| panic!("{f} not in the TOC"));
        assert!(p < landmark, "{f} at {p}, after the landmark at {landmark}");
    }
    assert!(
        landmark < names.len() / 2,
        "the landmark should come early in a layer of many unread files: {landmark} of {}",
        names.len()
    );
}

#[test]
fn optimize_puts_the_workload_files_first_and_a_mount_prefetches_them() {
    let work = scratch();
    let reg = Registry::start();
    let (plain, image) = push_images(work.path(), &reg, "opt");
    let w = work.path();
    let record_out = w.join("opt.jsonl");
    let dst = format!("{}/opt:optimized", reg.addr);
    run_ok(
        regfs()
            .args(["optimize", &image, &dst, "--cache-dir"])
            .arg(w.join("cache"))
            .arg("--record-out")
            .arg(&record_out)
            .args([
                "--chunk-size",
                "65536",
                "--",
                "sh",
                "-c",
                "cat /app/a.txt /app/b.txt",
            ]),
    );
    let rec = read_record(&record_out);
    position(&rec, "app/a.txt");
    let layers = manifest_layers(&reg, "opt", "optimized");
    assert_eq!(layers.len(), 2);
    assert_before_landmark(
        &toc_names(&reg, "opt", &layers[1]),
        &["app/a.txt", "app/b.txt"],
    );
    let base = toc_names(&reg, "opt", &layers[0]);
    assert!(
        base.iter().any(|n| n == ".prefetch.landmark"),
        "busybox layer: {base:?}"
    );
    let bb = base
        .iter()
        .position(|n| n == "bin/busybox")
        .expect("busybox");
    assert!(bb < base.iter().position(|n| n == ".prefetch.landmark").unwrap());

    // A fresh mount of DST prefetches the recorded files: reading them costs no request.
    let mnt = w.join("mnt");
    let m = Mount::start(
        &dst,
        &mnt,
        &["--cache-dir", &w.join("cache-mount").display().to_string()],
    );
    let done = m.wait_prefetch_done();
    let before = sum_layers(&done, "requests");
    assert_eq!(fs::read(mnt.join("app/a.txt")).expect("a"), A_TXT);
    assert_eq!(fs::read(mnt.join("app/b.txt")).expect("b"), B_TXT);
    assert_eq!(
        m.requests(),
        before,
        "reading prefetched files made requests: {}",
        m.stats()
    );
    let tail = fs::File::open(mnt.join(TAIL_FILE)).expect("open tail file");
    let mut buf = vec![0u8; 1000];
    tail.read_exact_at(&mut buf, 599_000).expect("read tail");
    assert_eq!(buf, noise(600_000, 9_999)[599_000..]);
    assert!(
        m.requests() > before,
        "a non-recorded file came without a request: {}",
        m.stats()
    );
    drop(tail);
    m.umount();
    // And DST still runs.
    assert_eq!(
        stdout_of(&run(w, &[], &dst, &["cat", "/app/a.txt"])).as_bytes(),
        A_TXT
    );

    // A plain gzip (non-eStargz) source optimizes too.
    let dst2 = format!("{}/opt:from-plain", reg.addr);
    run_ok(
        regfs()
            .args(["optimize", &plain, &dst2, "--cache-dir"])
            .arg(w.join("cache-plain"))
            .args(["--", "sh", "-c", "cat /app/b.txt"]),
    );
    let layers2 = manifest_layers(&reg, "opt", "from-plain");
    assert_before_landmark(&toc_names(&reg, "opt", &layers2[1]), &["app/b.txt"]);
    assert_eq!(
        stdout_of(&run(w, &[], &dst2, &["cat", "/app/b.txt"])).as_bytes(),
        B_TXT
    );
}

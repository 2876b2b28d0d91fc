//! End-to-end tests of `regfs mount | umount | stats` (issue #4): the real binary against a real
//! Debian `docker-registry` started per test on a free loopback port, real FUSE mounts as root.
//! Mounted trees are compared with the overlay oracle: GNU `tar -x` of the same layers applied in
//! order with their whiteouts ([`support::image::overlay_oracle`]).

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use support::containerd::NAMESPACE;
use support::image::{
    HANG_LIMIT, LayoutLayer, Mount, OCI_GZIP, TOC_DIGEST, TarBuilder, convert_image, files_tar,
    is_mounted, overlay_oracle, registry_blob_path, require_fuse, skopeo_push, sum_layers,
    write_layout,
};
use support::layers::{dirs_tar_x_touches_late, implicit_dirs, noise};
use support::registry::{Registry, free_port, which};
use support::tree::{CompareOptions, Tree, assert_same_tree};
use support::{blob, regfs, run_fail, run_ok, scratch, sha256};

/// Chunk size of the converted test images: small, so that small files span several chunks.
const CHUNK: &str = "65536";
const BIG_SIZE: usize = 5 * 65536 + 123;

/// The three layers of the corner-case image.
fn rich_layers() -> Vec<Vec<u8>> {
    let mut l1 = TarBuilder::new();
    l1.xattrs(&[("user.dir", b"yes")])
        .dir("etc/", 0o755, (0, 0));
    l1.xattrs(&[("user.greeting", b"hi")]).file(
        "etc/hello.txt",
        0o644,
        (1000, 1000),
        b"hello world\n",
    );
    l1.symlink("etc/link", "hello.txt")
        .symlink("abs", "/etc/hello.txt")
        .symlink("dangling", "nowhere/at/all");
    l1.dir("bin/", 0o755, (0, 0))
        .file("bin/big", 0o755, (0, 0), &noise(BIG_SIZE, 1))
        .file("bin/suid", 0o4755, (0, 0), b"#!/bin/sh\necho suid\n")
        .file("bin/sgid", 0o2711, (0, 50), b"#!/bin/sh\necho sgid\n");
    l1.dir("data/", 0o755, (0, 0))
        .hardlink("data/hello-hard", "etc/hello.txt")
        .file("data/gone.txt", 0o644, (0, 0), b"to be whited out\n")
        .file("data/keep.txt", 0o600, (7, 8), b"kept\n")
        .dir("data/sub/", 0o750, (0, 0))
        .file("data/sub/x", 0o644, (0, 0), b"in a whited-out dir\n");
    l1.dir("opq/", 0o755, (0, 0))
        .file("opq/a.txt", 0o644, (0, 0), b"hidden by opaque\n")
        .dir("opq/old/", 0o755, (0, 0))
        .file("opq/old/b.txt", 0o644, (0, 0), b"hidden too\n");
    l1.dir("tmp/", 0o1777, (0, 0));
    l1.dir("dev/", 0o755, (0, 0))
        .node(tar::EntryType::Char, "dev/null", 0o666, (1, 3))
        .node(tar::EntryType::Fifo, "dev/fifo", 0o644, (0, 0));

    let mut l2 = TarBuilder::new();
    l2.dir("data/", 0o755, (0, 0))
        .file("data/.wh.gone.txt", 0o644, (0, 0), b"")
        .file("data/new.txt", 0o644, (0, 0), b"added by layer two\n");
    l2.dir("opq/", 0o755, (0, 0))
        .file("opq/.wh..wh..opq", 0o644, (0, 0), b"")
        .file("opq/c.txt", 0o644, (0, 0), b"the only file left in opq\n");
    l2.dir("bin/", 0o755, (0, 0))
        .file("bin/big2", 0o755, (0, 0), &noise(3 * 65536 + 7, 2));
    l2.xattrs(&[("user.dir", b"yes")])
        .dir("etc/", 0o755, (0, 0));
    l2.hardlink("etc/big2-hard", "bin/big2");

    let mut l3 = TarBuilder::new();
    l3.dir("data/", 0o755, (0, 0))
        .file("data/.wh.sub", 0o644, (0, 0), b"");
    l3.dir("bin/", 0o755, (0, 0))
        .file("bin/suid", 0o4711, (0, 0), b"#!/bin/sh\necho replaced\n");
    vec![l1.finish(), l2.finish(), l3.finish()]
}

/// The mtimes a comparison can't hold the mount to: directories no layer names (the root among
/// them) and those GNU tar touches after setting them.
fn skip_mtimes(tars: &[Vec<u8>]) -> CompareOptions {
    let mut skip: BTreeSet<String> = BTreeSet::from([String::new()]);
    for t in tars {
        skip.extend(implicit_dirs(t));
        skip.extend(dirs_tar_x_touches_late(t));
    }
    // A directory named by any layer has that layer's mtime; only never-named ones stay skipped.
    let mut named = BTreeSet::new();
    for t in tars {
        for e in tar::Archive::new(&t[..]).entries().expect("tar") {
            let e = e.expect("entry");
            if e.header().entry_type() == tar::EntryType::Directory {
                named.insert(support::layers::clean_name(&String::from_utf8_lossy(
                    &e.path_bytes(),
                )));
            }
        }
    }
    let touched: BTreeSet<String> = tars
        .iter()
        .flat_map(|t| dirs_tar_x_touches_late(t))
        .collect();
    CompareOptions {
        skip_mtime: skip
            .into_iter()
            .filter(|d| !named.contains(d) || touched.contains(d))
            .collect(),
    }
}

/// The oracle tree of `tars` (root mode normalised to the mount root's 0755).
fn oracle_tree(tars: &[Vec<u8>], work: &Path) -> Tree {
    let dir = work.join("oracle");
    overlay_oracle(tars, &dir, work);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod oracle root");
    Tree::capture(&dir)
}

/// Writes `tars` as a gzip image layout tagged v1 and converts it into `reference` (eStargz,
/// 64 KiB chunks); returns the convert summary.
fn push_converted(work: &Path, tars: &[Vec<u8>], reference: &str, extra: &[&str]) -> Value {
    let layout = work.join(format!(
        "layout-{}",
        sha256(reference.as_bytes()).split_at(15).0.replace(':', "")
    ));
    let layers: Vec<LayoutLayer> = tars.iter().map(|t| LayoutLayer::gzip(t)).collect();
    write_layout(&layout, "v1", &layers, &["/bin/sh"]);
    let mut args = vec!["--chunk-size", CHUNK];
    args.extend_from_slice(extra);
    convert_image(&format!("oci:{}:v1", layout.display()), reference, &args)
}

/// A fresh registry serving `REGISTRY/repo:v1`, one layer holding `big.bin`: `len` bytes of
/// noise from `seed`. Returns the registry (stopped on drop), the reference and the bytes.
fn big_file_image(
    work: &Path,
    repo: &str,
    len: usize,
    seed: u64,
) -> (Registry, String, Arc<Vec<u8>>) {
    let reg = Registry::start();
    let data = Arc::new(noise(len, seed));
    let reference = format!("{}/{repo}:v1", reg.addr);
    push_converted(work, &[files_tar(&[("big.bin", &data)])], &reference, &[]);
    (reg, reference, data)
}

fn layer_digests(summary: &Value) -> Vec<String> {
    summary["layers"]
        .as_array()
        .expect("summary layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_owned())
        .collect()
}

fn cache_arg(work: &Path, name: &str) -> String {
    work.join(format!("cache-{name}")).display().to_string()
}

#[test]
fn rich_multi_layer_image_mounts_like_the_overlay_oracle() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();
    let tars = rich_layers();
    let reference = format!("{}/rich:v1", reg.addr);
    let summary = push_converted(work.path(), &tars, &reference, &[]);
    let expected = oracle_tree(&tars, work.path());
    // The oracle itself applied the whiteouts, the opaque dir and the replacement.
    for gone in ["data/gone.txt", "data/sub", "opq/a.txt", "opq/old"] {
        assert!(!expected.nodes.contains_key(gone), "oracle kept {gone}");
    }
    for kept in [
        "data/keep.txt",
        "data/new.txt",
        "opq/c.txt",
        "etc/big2-hard",
        "dev/fifo",
    ] {
        assert!(expected.nodes.contains_key(kept), "oracle lost {kept}");
    }
    assert_eq!(expected.nodes["bin/suid"].mode, 0o4711);
    assert_eq!(expected.nodes["etc/hello.txt"].nlink, 2);

    let cache = cache_arg(work.path(), "rich");
    let mnt = work.path().join("mnt");
    let m = Mount::start(&reference, &mnt, &["--cache-dir", &cache]);
    let actual = Tree::capture(&mnt);
    assert_same_tree("merged mount", &expected, &actual, &skip_mtimes(&tars));
    let stats = m.stats();
    assert!(
        sum_layers(&stats, "requests") > 0,
        "reading file content made no requests: {stats}"
    );
    assert_eq!(stats["fallbacks"], 0, "{stats}");
    m.umount();

    // One layer's view, as overlayfs expects a lower dir.
    let l2 = &layer_digests(&summary)[1];
    let mnt2 = work.path().join("mnt-layer");
    let m2 = Mount::start(&reference, &mnt2, &["--cache-dir", &cache, "--layer", l2]);
    let view = Tree::capture(&mnt2);
    let gone = view
        .nodes
        .get("data/gone.txt")
        .expect("whiteout of data/gone.txt shown");
    assert_eq!(gone.kind, support::tree::Kind::Char, "whiteout kind");
    assert_eq!(gone.rdev, Some((0, 0)), "whiteout device");
    assert!(
        !view.nodes.contains_key("data/.wh.gone.txt"),
        "raw whiteout name shown"
    );
    assert!(
        !view.nodes.contains_key("opq/.wh..wh..opq"),
        "raw opaque marker shown"
    );
    assert_eq!(
        view.nodes["opq"]
            .xattrs
            .get("trusted.overlay.opaque")
            .map(Vec::as_slice),
        Some(&b"y"[..]),
        "opaque dir xattr: {:?}",
        view.nodes["opq"].xattrs
    );
    assert!(
        !view.nodes["data"]
            .xattrs
            .contains_key("trusted.overlay.opaque")
    );
    assert!(
        !view.nodes.contains_key("data/keep.txt"),
        "a lower layer's file in the layer view"
    );
    assert_eq!(
        view.nodes["opq/c.txt"].sha256,
        expected.nodes["opq/c.txt"].sha256
    );
    assert_eq!(
        view.nodes["bin/big2"].sha256,
        expected.nodes["bin/big2"].sha256
    );
    assert_eq!(view.nodes["bin/big2"].nlink, 2);
    m2.umount();
}

#[test]
fn real_tree_mounts_like_tar_x_with_regfs_and_reference_conversion() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();
    let source = Path::new("/usr/lib/python3.11");
    assert!(
        source.is_dir(),
        "this test tars {} (apt-get install python3.11)",
        source.display()
    );
    let tar_path = work.path().join("real.tar");
    support::oracle::gnu_tar_create(Path::new("/"), "usr/lib/python3.11", &tar_path);
    let tar_bytes = fs::read(&tar_path).expect("read real tar");
    let tars = vec![tar_bytes];
    let expected = oracle_tree(&tars, work.path());
    assert!(
        expected.len() > 1000,
        "the real tree is small: {}",
        expected.len()
    );
    let opts = skip_mtimes(&tars);

    // Plain gzip source, converted by regfs.
    let layout = work.path().join("real-layout");
    write_layout(&layout, "v1", &[LayoutLayer::gzip(&tars[0])], &["/bin/sh"]);
    let src = format!("{}/real:v1", reg.addr);
    skopeo_push(&layout, "v1", &src);
    let ours = format!("{}/real:regfs", reg.addr);
    convert_image(&src, &ours, &[]);
    let mnt = work.path().join("mnt");
    let m = Mount::start(
        &ours,
        &mnt,
        &[
            "--cache-dir",
            &cache_arg(work.path(), "ours"),
            "--no-prefetch",
        ],
    );
    assert_same_tree(
        "regfs-converted real tree",
        &expected,
        &Tree::capture(&mnt),
        &opts,
    );
    m.umount();

    // The same source converted by the reference `ctr-remote image convert --estargz --oci`.
    which("ctr-remote").expect("the test needs `ctr-remote` (apt-get install stargz-snapshotter)");
    let ctrd = support::containerd::start();
    let ctr_remote = || {
        let mut c = Command::new("ctr-remote");
        c.arg("--address")
            .arg(&ctrd.socket)
            .args(["--namespace", NAMESPACE]);
        c
    };
    let theirs = format!("{}/real:ctr-remote", reg.addr);
    run_ok(ctr_remote().args(["images", "pull", "--plain-http", &src]));
    run_ok(ctr_remote().args(["images", "convert", "--estargz", "--oci", &src, &theirs]));
    run_ok(ctr_remote().args(["images", "push", "--plain-http", &theirs]));
    let mnt2 = work.path().join("mnt2");
    let m2 = Mount::start(
        &theirs,
        &mnt2,
        &["--cache-dir", &cache_arg(work.path(), "theirs")],
    );
    let stats = m2.stats();
    assert_eq!(
        stats["fallbacks"], 0,
        "the ctr-remote image must mount lazily: {stats}"
    );
    assert_same_tree(
        "ctr-remote-converted real tree",
        &expected,
        &Tree::capture(&mnt2),
        &opts,
    );
    m2.umount();
}

/// A one-layer image with two prioritized files and a bigger one that is not.
fn prefetch_image(work: &Path, reg: &Registry) -> (String, Vec<u8>, Vec<u8>, Vec<u8>) {
    // Distinct odd seeds: noise() uses `seed | 1`, and equal chunks would dedup in the cache.
    let a = noise(150_000, 11);
    let b = noise(70_000, 21);
    let c = noise(300_000, 31);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("app/a.bin".into(), a.clone()),
        ("app/b.bin".into(), b.clone()),
        ("app/c.bin".into(), c.clone()),
    ];
    for i in 0..20 {
        files.push((format!("app/filler/{i}.bin"), noise(30_000, 1001 + 2 * i)));
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let list = work.join("prioritized.txt");
    fs::write(&list, "app/a.bin\napp/b.bin\n").expect("write list");
    let reference = format!("{}/prefetch:v1", reg.addr);
    push_converted(
        work,
        &[files_tar(&refs)],
        &reference,
        &["--prioritized-files", &list.display().to_string()],
    );
    (reference, a, b, c)
}

#[test]
fn prefetch_caches_the_prioritized_files_and_no_prefetch_fetches_on_read() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();
    let (reference, a, b, c) = prefetch_image(work.path(), &reg);

    let mnt = work.path().join("mnt");
    let m = Mount::start(
        &reference,
        &mnt,
        &["--cache-dir", &cache_arg(work.path(), "pf")],
    );
    let done = m.wait_prefetch_done();
    let before = sum_layers(&done, "requests");
    assert!(
        sum_layers(&done, "prefetchSize") > 0,
        "no prefetch size: {done}"
    );
    assert_eq!(fs::read(mnt.join("app/a.bin")).expect("read a"), a);
    assert_eq!(fs::read(mnt.join("app/b.bin")).expect("read b"), b);
    let after_prioritized = m.requests();
    assert_eq!(
        after_prioritized,
        before,
        "reading prefetched files made registry requests: {}",
        m.stats()
    );
    assert_eq!(fs::read(mnt.join("app/c.bin")).expect("read c"), c);
    assert!(
        m.requests() > after_prioritized,
        "reading a non-prioritized file made no request: {}",
        m.stats()
    );
    m.umount();

    let mnt2 = work.path().join("mnt2");
    let m2 = Mount::start(
        &reference,
        &mnt2,
        &[
            "--cache-dir",
            &cache_arg(work.path(), "nopf"),
            "--no-prefetch",
        ],
    );
    let r0 = m2.requests();
    assert_eq!(fs::read(mnt2.join("app/a.bin")).expect("read a"), a);
    assert!(
        m2.requests() > r0,
        "--no-prefetch: the read of a prioritized file made no request"
    );
    assert!(
        m2.stats()["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["prefetch"] != "done"),
        "--no-prefetch still prefetched: {}",
        m2.stats()
    );
    m2.umount();
}

#[test]
fn sixty_four_threads_of_random_reads_see_the_original_bytes() {
    require_fuse();
    let work = scratch();
    let (_reg, reference, data) = big_file_image(work.path(), "threads", 2 << 20, 42);
    let mnt = work.path().join("mnt");
    let m = Mount::start(
        &reference,
        &mnt,
        &[
            "--cache-dir",
            &cache_arg(work.path(), "threads"),
            "--no-prefetch",
        ],
    );
    let file = Arc::new(fs::File::open(mnt.join("big.bin")).expect("open big.bin"));
    random_reads(&file, &data, 64, 40, 0, 200_000);
    drop(file);
    m.umount();
}

#[test]
fn corrupted_chunk_gives_eio_for_its_file_only_and_counts_a_verification_failure() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();
    let victim = noise(200_000, 5);
    let reference = format!("{}/corrupt:v1", reg.addr);
    let summary = push_converted(
        work.path(),
        &[files_tar(&[
            ("good.txt", b"fine\n"),
            ("victim.bin", &victim),
            ("later.txt", b"also fine\n"),
        ])],
        &reference,
        &[],
    );
    let digest = &layer_digests(&summary)[0];
    let path = registry_blob_path(&reg.storage_root(), digest);
    let mut data = fs::read(&path).unwrap_or_else(|e| panic!("blob {}: {e}", path.display()));
    let toc = blob::toc_value(&data);
    let entries = toc["entries"].as_array().expect("entries");
    let pos = entries
        .iter()
        .position(|e| e["name"] == "victim.bin")
        .expect("victim.bin in the TOC");
    let start = entries[pos]["offset"].as_u64().expect("offset");
    let end = entries[pos + 1..]
        .iter()
        .find_map(|e| e["offset"].as_u64().filter(|o| *o > start))
        .unwrap_or_else(|| blob::toc_offset(&data));
    let flip = usize::try_from((start + end) / 2).expect("offset");
    data[flip] ^= 0x5a;
    fs::write(&path, &data).expect("tamper blob");

    let mnt = work.path().join("mnt");
    let m = Mount::start(
        &reference,
        &mnt,
        &[
            "--cache-dir",
            &cache_arg(work.path(), "corrupt"),
            "--no-prefetch",
        ],
    );
    assert_eq!(
        fs::read(mnt.join("good.txt")).expect("read good.txt"),
        b"fine\n"
    );
    let err = fs::read(mnt.join("victim.bin")).expect_err("reading the corrupted file succeeded");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        fs::read(mnt.join("later.txt")).expect("read later.txt"),
        b"also fine\n"
    );
    let stats = m.stats();
    assert!(sum_layers(&stats, "verification_failures") > 0, "{stats}");
    m.umount();
}

#[test]
fn registry_down_gives_eio_and_reads_recover_after_restart() {
    require_fuse();
    let work = scratch();
    let mut reg = Registry::start();
    // Distinct seeds (noise() uses `seed | 1`): chunks are content-addressed, equal ones dedup.
    let one = noise(100_000, 11);
    let two = noise(100_000, 21);
    let reference = format!("{}/restart:v1", reg.addr);
    // A filler wider than the planner's gap bridging, and separate directories (read-around
    // takes the next siblings), keep two.bin out of one.bin's requests.
    let filler = noise(2 << 20, 31);
    let tar = files_tar(&[
        ("one/one.bin", &one),
        ("filler.bin", &filler),
        ("two/two.bin", &two),
    ]);
    push_converted(work.path(), &[tar], &reference, &[]);
    let mnt = work.path().join("mnt");
    let m = Mount::start(
        &reference,
        &mnt,
        &[
            "--cache-dir",
            &cache_arg(work.path(), "restart"),
            "--no-prefetch",
        ],
    );
    assert_eq!(fs::read(mnt.join("one/one.bin")).expect("read one"), one);
    reg.stop();
    let err = match fs::read(mnt.join("two/two.bin")) {
        Ok(_) => panic!("read succeeded with the registry down: {}", m.stats()),
        Err(e) => e,
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        fs::read(mnt.join("one/one.bin")).expect("cached file while down"),
        one
    );
    reg.restart();
    assert_eq!(
        fs::read(mnt.join("two/two.bin")).expect("read two after restart"),
        two
    );
    assert!(is_mounted(&mnt));
    m.umount();
}

#[test]
fn umount_with_reads_in_flight_ends_the_mount_process() {
    require_fuse();
    let work = scratch();
    let (_reg, reference, _data) = big_file_image(work.path(), "busy", 4 << 20, 9);
    let mnt = work.path().join("mnt");
    let m = Mount::start(
        &reference,
        &mnt,
        &[
            "--cache-dir",
            &cache_arg(work.path(), "busy"),
            "--no-prefetch",
        ],
    );
    let file = Arc::new(fs::File::open(mnt.join("big.bin")).expect("open"));
    // Busy: a plain umount is refused with a hint, and the mount keeps serving.
    let stderr = run_fail(regfs().arg("umount").arg(&mnt));
    assert!(stderr.contains("--lazy"), "{stderr}");
    assert!(is_mounted(&mnt));

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..8u64 {
        let (file, stop, tx) = (file.clone(), stop.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut off = t * 300_000;
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if file.read_at(&mut buf, off % (4 << 20)).is_err() {
                    break;
                }
                off += 65536 * 7;
            }
            let _ = tx.send(t);
        });
    }
    drop(tx);
    run_ok(regfs().args(["umount", "--lazy"]).arg(&mnt));
    assert!(!is_mounted(&mnt), "still mounted after umount --lazy");
    m.wait_exit();
    stop.store(true, Ordering::Relaxed);
    for _ in 0..8 {
        rx.recv_timeout(HANG_LIMIT)
            .expect("a reader hung after the mount went away");
    }
    // The control socket went with the process; a second umount is a clear error.
    let stderr = run_fail(regfs().arg("stats").arg(&mnt));
    assert!(stderr.contains("not a live regfs mount"), "{stderr}");
    let stderr = run_fail(regfs().arg("umount").arg(&mnt));
    assert!(stderr.contains("not mounted"), "{stderr}");
}

#[test]
fn plain_gzip_image_mounts_by_fetching_whole_layers() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();
    let tars = rich_layers();
    let layout = work.path().join("plain");
    let layers: Vec<LayoutLayer> = tars.iter().map(|t| LayoutLayer::gzip(t)).collect();
    write_layout(&layout, "v1", &layers, &["/bin/sh"]);
    let reference = format!("{}/plain:v1", reg.addr);
    skopeo_push(&layout, "v1", &reference);
    let expected = oracle_tree(&tars, work.path());
    let mnt = work.path().join("mnt");
    let m = Mount::start(
        &reference,
        &mnt,
        &["--cache-dir", &cache_arg(work.path(), "plain")],
    );
    assert_same_tree(
        "plain gzip mount",
        &expected,
        &Tree::capture(&mnt),
        &skip_mtimes(&tars),
    );
    let stats = m.stats();
    assert_eq!(stats["fallbacks"], 3, "{stats}");
    assert!(
        stats["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["lazy"] == false),
        "{stats}"
    );
    m.umount();
}

#[test]
fn toc_digest_annotation_is_required_and_checked() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();
    let tar_bytes = files_tar(&[("etc/motd", b"unverified\n")]);
    let tar_path = support::write_file(work.path(), "layer.tar", &tar_bytes);
    let esgz = work.path().join("layer.esgz");
    let conv = support::convert(&tar_path, &esgz, &["--chunk-size", CHUNK]);
    let blob_bytes = fs::read(&esgz).expect("read esgz");
    let push = |tag: &str, annotation: Option<&str>| {
        let mut annotations = BTreeMap::new();
        if let Some(a) = annotation {
            annotations.insert(TOC_DIGEST.to_owned(), a.to_owned());
        }
        let layout = work.path().join(format!("layout-{tag}"));
        let layer = LayoutLayer {
            media_type: OCI_GZIP.into(),
            blob: blob_bytes.clone(),
            diff_id: conv.diff_id.clone(),
            annotations,
        };
        write_layout(&layout, tag, &[layer], &["/bin/sh"]);
        let reference = format!("{}/verify:{tag}", reg.addr);
        skopeo_push(&layout, tag, &reference);
        reference
    };
    let cache = cache_arg(work.path(), "verify");
    let mnt = work.path().join("mnt");
    fs::create_dir_all(&mnt).expect("mnt");

    let bare = push("bare", None);
    let stderr = run_fail(
        regfs()
            .args(["mount", "--daemon", &bare])
            .arg(&mnt)
            .args(["--cache-dir", &cache]),
    );
    assert!(
        stderr.contains("--insecure-skip-verify") && stderr.contains(TOC_DIGEST),
        "{stderr}"
    );
    assert!(!is_mounted(&mnt));
    let m = Mount::start(
        &bare,
        &mnt,
        &["--cache-dir", &cache, "--insecure-skip-verify"],
    );
    assert_eq!(
        fs::read(mnt.join("etc/motd")).expect("read"),
        b"unverified\n"
    );
    assert_eq!(m.stats()["layers"][0]["lazy"], true);
    m.umount();

    let wrong = push("wrong", Some(&sha256(b"not the toc")));
    let stderr = run_fail(
        regfs()
            .args(["mount", &wrong])
            .arg(&mnt)
            .args(["--cache-dir", &cache]),
    );
    assert!(
        stderr.contains(&conv.digest),
        "the error must name layer {}: {stderr}",
        conv.digest
    );
    let stderr = run_fail(
        regfs()
            .args(["mount", "--daemon", &wrong])
            .arg(&mnt)
            .args(["--cache-dir", &cache]),
    );
    assert!(
        stderr.contains(&conv.digest),
        "--daemon: the error must name layer {}: {stderr}",
        conv.digest
    );
    assert!(!is_mounted(&mnt));

    let right = push("right", Some(&conv.toc_digest));
    let m = Mount::start(&right, &mnt, &["--cache-dir", &cache]);
    assert_eq!(
        fs::read(mnt.join("etc/motd")).expect("read"),
        b"unverified\n"
    );
    m.umount();
}

#[test]
fn metrics_address_serves_prometheus_text() {
    require_fuse();
    let work = scratch();
    let reg = Registry::start();
    let data = noise(200_000, 3);
    let reference = format!("{}/metrics:v1", reg.addr);
    let summary = push_converted(
        work.path(),
        &[files_tar(&[("f.bin", &data)])],
        &reference,
        &[],
    );
    let digest = &layer_digests(&summary)[0];
    let addr = format!("127.0.0.1:{}", free_port());
    let mnt = work.path().join("mnt");
    let m = Mount::start(
        &reference,
        &mnt,
        &[
            "--cache-dir",
            &cache_arg(work.path(), "metrics"),
            "--no-prefetch",
            "--metrics-addr",
            &addr,
        ],
    );
    assert_eq!(fs::read(mnt.join("f.bin")).expect("read"), data);
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect metrics");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut resp = String::new();
    conn.read_to_string(&mut resp).expect("read metrics");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let line = resp
        .lines()
        .find(|l| l.starts_with(&format!("regfs_layer_fetched_bytes{{layer=\"{digest}\"}}")))
        .unwrap_or_else(|| panic!("no fetched-bytes line for {digest}: {resp}"));
    let value: u64 = line
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("metric value");
    assert!(value > 0, "{line}");
    assert!(resp.contains("# TYPE regfs_layer_fetched_bytes"), "{resp}");
    m.umount();
}

/// Random `pread`s of up to `max_len` bytes of `file` checked against `data`, on `threads` threads
/// of `rounds` reads.
fn random_reads(
    file: &Arc<fs::File>,
    data: &Arc<Vec<u8>>,
    threads: u64,
    rounds: usize,
    seed: u64,
    max_len: u64,
) {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (file, data) = (file.clone(), data.clone());
            std::thread::spawn(move || {
                let mut x = (seed + t) * 2654435761 + 1;
                for _ in 0..rounds {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % data.len() as u64) as usize;
                    let len = (((x >> 32) % max_len) as usize + 1).min(data.len() - off);
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, off as u64)
                        .unwrap_or_else(|e| panic!("thread {t}: pread {len} at {off}: {e}"));
                    assert!(
                        buf == data[off..off + len],
                        "thread {t}: bytes at {off}+{len} differ"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("reader thread");
    }
}

/// A `--cache-size` a sixth of what the workload reads, two mounts of one image sharing that
/// cache, and `regfs cache gc --max-size 0` run over and over while they read: every read
/// returns the original bytes, and once the reads stop the cache is within its cap plus the
/// margin of one other writer (an eighth of the cap, and a chunk).
#[test]
fn capped_cache_shared_by_two_mounts_with_concurrent_gc_serves_every_read() {
    require_fuse();
    let work = scratch();
    let (_reg, reference, data) = big_file_image(work.path(), "pressure", 3 << 20, 51);
    const CAP: u64 = 512 << 10;
    let cache = cache_arg(work.path(), "pressure");
    let mounts: Vec<Mount> = ["a", "b"]
        .iter()
        .map(|name| {
            Mount::start(
                &reference,
                &work.path().join(format!("mnt-{name}")),
                &[
                    "--cache-dir",
                    &cache,
                    "--cache-size",
                    "512K",
                    "--no-prefetch",
                ],
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let gc = {
        let (cache, stop) = (cache.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(Ordering::SeqCst) {
                run_ok(regfs().args(["cache", "gc", "--cache-dir", &cache, "--max-size", "0"]));
                runs += 1;
            }
            runs
        })
    };
    let files: Vec<Arc<fs::File>> = mounts
        .iter()
        .map(|m| Arc::new(fs::File::open(m.dir.join("big.bin")).expect("open big.bin")))
        .collect();
    let readers: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (f, data) = (f.clone(), data.clone());
            std::thread::spawn(move || random_reads(&f, &data, 4, 25, 100 * i as u64, 300_000))
        })
        .collect();
    for r in readers {
        r.join().expect("readers");
    }
    stop.store(true, Ordering::SeqCst);
    assert!(gc.join().expect("gc thread") > 0);

    // Without gc: both mounts read the whole file (six times the cap) once more.
    for f in &files {
        let mut all = vec![0u8; data.len()];
        f.read_exact_at(&mut all, 0).expect("read all");
        assert!(all == *data, "whole-file read differs");
    }
    let du: Value = serde_json::from_slice(
        &run_ok(regfs().args(["cache", "du", "--json", "--cache-dir", &cache])).stdout,
    )
    .expect("du json");
    let bytes = du["bytes"].as_u64().expect("bytes");
    let chunk: u64 = CHUNK.parse().expect("chunk size");
    assert!(
        bytes <= CAP + CAP / 8 + chunk,
        "cache holds {bytes} bytes for a cap of {CAP}"
    );
    drop(files);
    for m in mounts {
        m.umount();
    }
}

/// The cache directory is a 256 KiB tmpfs and the image file 3 MiB: writing chunks fails with
/// ENOSPC, yet every read through the mount returns the original bytes (never EIO).
#[test]
fn full_cache_disk_never_fails_a_read() {
    require_fuse();
    let work = scratch();
    let (_reg, reference, data) = big_file_image(work.path(), "diskfull", 3 << 20, 61);
    let cache = work.path().join("tiny-cache");
    fs::create_dir_all(&cache).expect("cache dir");
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "regfs-full-cache"])
            .arg(&cache),
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(cache.clone());
    let m = Mount::start(
        &reference,
        &work.path().join("mnt"),
        &["--cache-dir", &cache.display().to_string(), "--no-prefetch"],
    );
    let file = Arc::new(fs::File::open(m.dir.join("big.bin")).expect("open big.bin"));
    random_reads(&file, &data, 4, 20, 7, 300_000);
    assert_eq!(fs::read(m.dir.join("big.bin")).expect("read all"), *data);
    drop(file);
    m.umount();
}

/// A token-auth registry whose tokens live 3 s, and a mount reading a new part of a 3 MiB file
/// every 250 ms for 13 s (over four token lifetimes), each part from the network: every read
/// returns the original bytes, and the mount went through several tokens to do it.
#[test]
fn mount_reads_through_several_token_lifetimes_without_a_failed_read() {
    use base64::Engine as _;
    require_fuse();
    let work = scratch();
    // POSTs get 404: the mount fetches every token by GET, as from an old token server.
    let tokens = regfs_testkit::TokenServer::start(regfs_testkit::TokenOptions {
        user: "reader".into(),
        password: "pw".into(),
        post: false,
        lifetime: 3,
        expires_in: Some(3),
    });
    let reg = regfs_testkit::Registry::start_with(regfs_testkit::RegistryConfig {
        auth: tokens.registry_auth(),
        ..Default::default()
    });
    let docker = work.path().join("docker");
    fs::create_dir_all(&docker).expect("docker config dir");
    let auth = base64::engine::general_purpose::STANDARD.encode("reader:pw");
    fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .expect("docker config");

    let data = noise(3 << 20, 71);
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &[LayoutLayer::gzip(&files_tar(&[("big.bin", &data)]))],
        &["/bin/sh"],
    );
    let reference = format!("{}/tokens:v1", reg.addr);
    run_ok(
        regfs()
            .env("DOCKER_CONFIG", &docker)
            .arg("convert-image")
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(&reference)
            .args(["--chunk-size", CHUNK]),
    );

    let mnt = work.path().join("mnt");
    fs::create_dir_all(&mnt).expect("mount dir");
    let out = run_ok(
        regfs()
            .env("DOCKER_CONFIG", &docker)
            .args(["mount", "--daemon", "--no-prefetch", "--cache-dir"])
            .arg(work.path().join("cache"))
            .arg(&reference)
            .arg(&mnt),
    );
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("mount --daemon prints its pid");
    let m = Mount { dir: mnt, pid };
    let before = tokens.issued();
    let file = fs::File::open(m.dir.join("big.bin")).expect("open big.bin");
    let part = 3 << 20 >> 6; // 48 KiB: 64 parts, 52 read over 13 s
    for i in 0..52usize {
        let off = i * part;
        let mut buf = vec![0u8; part];
        file.read_exact_at(&mut buf, off as u64)
            .unwrap_or_else(|e| panic!("read {i} at {off} failed: {e}"));
        assert!(buf == data[off..off + part], "bytes at {off} differ");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let renewed = tokens.issued() - before;
    assert!(renewed >= 3, "only {renewed} tokens issued while reading");
    drop(file);
    m.umount();
}

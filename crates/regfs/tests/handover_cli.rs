//! Mounts that outlive their server: `regfs mount --daemon` (as root) keeps the FUSE connection
//! in a keeper process, so `kill -9` of the serving process is a pause for readers, not
//! `ENOTCONN`; `regfs takeover DIR` hands the mount to a new server without a failed read.
//! Checked with 16 threads reading and verifying files in a loop against a real registry.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use support::image::{LayoutLayer, Mount, busybox_tar, files_tar, skopeo_push, write_layout};
use support::layers::noise;
use support::registry::Registry;
use support::{regfs, run_ok, scratch};

const READERS: usize = 16;
/// No read may take longer than this, restart included.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// What the readers saw.
#[derive(Default)]
struct Tally {
    /// Whole files read and verified.
    ok: AtomicU64,
    /// Reads that failed with EIO (allowed while a server dies).
    eio: AtomicU64,
    /// Anything else: wrong bytes, ENOTCONN, other errors. Must stay empty.
    bad: Mutex<Vec<String>>,
    /// Longest single file read.
    slowest_ms: AtomicU64,
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Reads and verifies `path`.
fn check(path: &Path, want: &[u8; 32], tally: &Tally) {
    let started = Instant::now();
    let got = std::fs::read(path);
    let ms = started.elapsed().as_millis() as u64;
    tally.slowest_ms.fetch_max(ms, Ordering::Relaxed);
    count(&path.display().to_string(), got, want, tally);
}

/// Counts one read of `what`: right bytes, EIO (allowed while a server dies) or anything else.
fn count(what: &str, got: std::io::Result<Vec<u8>>, want: &[u8; 32], tally: &Tally) {
    match got {
        Ok(data) if sha(&data) == *want => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(data) => tally
            .bad
            .lock()
            .unwrap()
            .push(format!("{what}: wrong bytes ({} bytes read)", data.len())),
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
            tally.eio.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tally.bad.lock().unwrap().push(format!("{what}: {e}")),
    }
}

/// 16 threads reading every file in turn, plus one long-lived open descriptor each that is
/// read again from the start at every round.
struct Readers {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    fn start(dir: &Path, files: &BTreeMap<String, [u8; 32]>) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let files: Arc<Vec<(PathBuf, [u8; 32])>> =
            Arc::new(files.iter().map(|(n, h)| (dir.join(n), *h)).collect());
        let threads = (0..READERS)
            .map(|i| {
                let (stop, tally, files) = (stop.clone(), tally.clone(), files.clone());
                std::thread::spawn(move || {
                    let (held_path, held_sha) = files[i % files.len()].clone();
                    let mut held = std::fs::File::open(&held_path).unwrap();
                    let mut k = i;
                    while !stop.load(Ordering::Relaxed) {
                        let (path, want) = &files[k % files.len()];
                        check(path, want, &tally);
                        k += 7;
                        // The descriptor opened before any restart keeps working.
                        let mut data = Vec::new();
                        let read = held
                            .seek(SeekFrom::Start(0))
                            .and_then(|_| held.read_to_end(&mut data))
                            .map(|_| data);
                        count(
                            &format!("held {}", held_path.display()),
                            read,
                            &held_sha,
                            &tally,
                        );
                    }
                })
            })
            .collect();
        Readers {
            stop,
            tally,
            threads,
        }
    }

    /// Waits until `n` more files were verified than now (every thread is making progress).
    fn wait_progress(&self, n: u64, what: &str) {
        let start = self.tally.ok.load(Ordering::Relaxed);
        let deadline = Instant::now() + READ_LIMIT;
        while self.tally.ok.load(Ordering::Relaxed) < start + n {
            assert!(
                Instant::now() < deadline,
                "{what}: reads did not resume within {READ_LIMIT:?} ({} bad: {:?})",
                self.tally.eio.load(Ordering::Relaxed),
                self.tally.bad.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + READ_LIMIT;
        for t in self.threads {
            while !t.is_finished() {
                assert!(Instant::now() < deadline, "a reader hangs");
                std::thread::sleep(Duration::from_millis(20));
            }
            t.join().unwrap();
        }
        self.tally
    }
}

fn server_pid(m: &Mount) -> (i64, u64) {
    let s = m.stats();
    (
        s["serverPid"].as_i64().unwrap(),
        s["restarts"].as_u64().unwrap(),
    )
}

/// Waits for `stats` to name a new server with `restarts` restarts.
fn wait_new_server(m: &Mount, old: i64, restarts: u64) -> i64 {
    let deadline = Instant::now() + READ_LIMIT;
    loop {
        let out = regfs()
            .arg("stats")
            .arg(&m.dir)
            .arg("--json")
            .output()
            .unwrap();
        if out.status.success() {
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let pid = s["serverPid"].as_i64().unwrap();
            if pid != old && s["restarts"].as_u64() == Some(restarts) {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new server after {READ_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_of_the_server_and_a_takeover_are_pauses_not_failures() {
    support::image::require_fuse();
    regfs_testkit::require_root();
    let work = scratch();
    let reg = Registry::start();
    // 48 files over several chunks each, never cached before the kill (no prefetch): the readers'
    // requests really are in flight to the server when it dies.
    let mut files = BTreeMap::new();
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..48 {
        let data = noise(96 * 1024 + i * 4099, 900 + i as u64);
        let name = format!("data/f{i:02}.bin");
        files.insert(name.clone(), sha(&data));
        entries.push((name, data));
    }
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &[
            LayoutLayer::gzip(&busybox_tar(&[])),
            LayoutLayer::gzip(&files_tar(&refs)),
        ],
        &["/bin/sh"],
    );
    let plain = format!("{}/handover:plain", reg.addr);
    skopeo_push(&layout, "v1", &plain);
    let lazy = format!("{}/handover:lazy", reg.addr);
    run_ok(
        regfs()
            .args(["convert-image", "--chunk-size", "65536"])
            .arg(&plain)
            .arg(&lazy),
    );
    let mnt = work.path().join("mnt");
    let cache = work.path().join("cache");
    let m = Mount::start(
        &lazy,
        &mnt,
        &["--no-prefetch", "--cache-dir", cache.to_str().unwrap()],
    );
    let (first, restarts) = server_pid(&m);
    assert_eq!(restarts, 0);
    assert_ne!(
        i64::from(m.pid),
        first,
        "a keeper holds the mount, a server serves it"
    );

    let readers = Readers::start(&mnt, &files);
    readers.wait_progress(50, "before the kill");

    // 1. kill -9 of the server: no command from anyone, reads resume.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let second = wait_new_server(&m, first, 1);
    readers.wait_progress(200, "after kill -9");
    assert!(
        readers.tally.bad.lock().unwrap().is_empty(),
        "{:?}",
        readers.tally.bad.lock().unwrap()
    );

    // 2. A planned handover: not one failed read.
    let eio_before = readers.tally.eio.load(Ordering::Relaxed);
    run_ok(regfs().arg("takeover").arg(&mnt));
    let third = wait_new_server(&m, second, 2);
    assert!(
        !Path::new(&format!("/proc/{second}")).exists()
            || std::fs::read_to_string(format!("/proc/{second}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the old server {second} is gone"
    );
    readers.wait_progress(200, "after the takeover");
    let tally = readers.stop();
    eprintln!(
        "verified {} reads, {} EIO, slowest {} ms",
        tally.ok.load(Ordering::Relaxed),
        tally.eio.load(Ordering::Relaxed),
        tally.slowest_ms.load(Ordering::Relaxed)
    );
    assert!(
        tally.bad.lock().unwrap().is_empty(),
        "{:?}",
        tally.bad.lock().unwrap()
    );
    assert_eq!(
        tally.eio.load(Ordering::Relaxed),
        eio_before,
        "a takeover fails no read"
    );
    assert!(
        tally.slowest_ms.load(Ordering::Relaxed) < READ_LIMIT.as_millis() as u64,
        "a read hung"
    );
    assert_ne!(third, i64::from(m.pid));
    // The file descriptors and the tree are still right after both.
    for (name, want) in &files {
        assert_eq!(
            &sha(&std::fs::read(mnt.join(name)).unwrap()),
            want,
            "{name}"
        );
    }

    // 3. `regfs umount` still cleans up everything: keeper, server, sockets and records.
    let run_dir_before: Vec<_> = std::fs::read_dir("/run/regfs")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        run_dir_before
            .iter()
            .any(|n| n.to_string_lossy().ends_with(".keeper")),
        "{run_dir_before:?}"
    );
    let keeper = m.pid;
    m.umount();
    let gone = |pid: i64| {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    };
    let deadline = Instant::now() + READ_LIMIT;
    while !(gone(i64::from(keeper)) && gone(third)) {
        assert!(Instant::now() < deadline, "keeper or server left running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let socket = regfs_image::control::canonical_socket_path(&mnt.canonicalize().unwrap());
    for ext in ["sock", "init", "keeper"] {
        assert!(
            !socket.with_extension(ext).exists(),
            "{} left behind",
            socket.with_extension(ext).display()
        );
    }
}

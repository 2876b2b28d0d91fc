//! Conformance against the Go reference (`estargz` v0.12.0 through `esgz-oracle`, see
//! `../shared/peers` beside the repository): the reference opens and verifies our blobs; we open its blobs; its TOC
//! JSON re-serialises byte for byte; and for the same tar both converters produce the same TOC
//! apart from compressed offsets.
//!
//! Needs the oracle: `REGFS_ESGZ_ORACLE` or `ESGZ_ORACLE=/path/to/esgz-oracle`, or `go` (Debian
//! golang-go + golang-github-containerd-stargz-snapshotter-dev, installed by `.ci/install`) plus
//! the peers sources in `../shared/peers` beside the repository to build it. Without them the
//! test fails and says what is missing.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use regfs_estargz::{ConvertOptions, Reader, Toc};
use support::{E, convert_to_vec, tar_of};

/// The peers sources: `shared/peers` beside the repository (as CI lays it out).
const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/peers");

fn oracle(dir: &Path) -> PathBuf {
    for var in ["REGFS_ESGZ_ORACLE", "ESGZ_ORACLE"] {
        if let Ok(p) = std::env::var(var) {
            return PathBuf::from(p);
        }
    }
    assert!(
        Path::new(PEERS).join("esgz-oracle").exists(),
        "esgz-oracle sources not found at {PEERS}/esgz-oracle; set REGFS_ESGZ_ORACLE"
    );
    let out = dir.join("esgz-oracle");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./esgz-oracle")
        .current_dir(PEERS)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .status()
        .unwrap_or_else(|e| panic!("running `go` (package golang-go) to build esgz-oracle: {e}"));
    assert!(status.success(), "go build of esgz-oracle failed");
    out
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

fn rich_tar() -> Vec<u8> {
    let big: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(110));
    tar_of(&[
        E::Dir("./", 0o755),
        E::Dir("./etc/", 0o755),
        E::FileOwner("./etc/passwd", b"root:x:0:0", 0, 0, "root", "root"),
        E::FileOwner("./etc/group", b"root:x:0:", 0, 0, "root", "root"),
        E::FileMode("./bin-suid", b"#!", 0o4755),
        E::Dir("./tmp/", 0o1777),
        E::FileX(
            "./etc/x",
            b"xattrs",
            &[("user.a", b"1"), ("trusted.bin", b"\xff\x00")],
        ),
        E::File("./big", &big),
        E::File("./empty", b""),
        E::Sym("./etc/link", "../big"),
        E::Link("./etc/hard", "./big"),
        E::Char("./dev-null", 1, 3),
        E::Block("./dev-sda", 8, 0),
        E::Fifo("./fifo"),
        E::File(&long, b"long name"),
        E::File("./a&b<c>.txt", b"html escapes"),
        E::File("./usr/implicit/parent", b"no parent entries"),
    ])
}

#[test]
fn reference_reads_ours_and_we_read_the_references() {
    let dir = tempfile::tempdir().unwrap();
    let oracle = oracle(dir.path());
    let tar = rich_tar();
    let tar_path = dir.path().join("in.tar");
    std::fs::write(&tar_path, &tar).unwrap();
    // The reference skips a prioritized file whose parent dir has no tar entry (we keep it), so
    // the lists compared here name only files with explicit parents.
    let lists = [
        None,
        Some(vec![
            "./etc/hard".to_string(),
            "tmp".into(),
            "/etc/x".into(),
            "big".into(),
        ]),
    ];
    for prioritized in lists {
        let opts = ConvertOptions {
            chunk_size: 4096,
            level: Some(9),
            prioritized_files: prioritized.clone(),
            threads: 2,
        };
        let (ours, rep) = convert_to_vec(&tar, &opts);
        let ours_path = dir.path().join("ours.esgz");
        std::fs::write(&ours_path, &ours).unwrap();
        // The reference opens our blob, verifies the TOC digest and every chunk.
        let out = run(Command::new(&oracle)
            .arg("verify")
            .arg(&ours_path)
            .arg("--toc-digest")
            .arg(rep.toc_digest.to_string()));
        let summary = String::from_utf8_lossy(&out);
        assert!(
            summary.lines().last().unwrap().contains("\"ok\":true"),
            "{summary}"
        );

        // The reference's blob for the same tar.
        let go_path = dir.path().join("go.esgz");
        let mut build = Command::new(&oracle);
        build
            .arg("build")
            .arg(&tar_path)
            .arg(&go_path)
            .args(["--chunk-size", "4096", "--level", "9"])
            .env("GOMAXPROCS", "1");
        if let Some(p) = &prioritized {
            build.arg("--prioritized").arg(p.join(","));
        }
        run(&mut build);
        let go_blob = std::fs::read(&go_path).unwrap();
        let go_json = run(Command::new(&oracle).arg("toc").arg(&go_path));
        let go_toc = Toc::from_json(&go_json).unwrap();
        assert!(
            go_toc.to_json() == go_json,
            "Go TOC JSON re-serialises byte for byte"
        );

        // We read the reference's blob, and it holds what ours holds.
        let r = Reader::open(go_blob).unwrap();
        r.verify_toc_digest(&regfs_estargz::Digest::sha256(&go_json))
            .unwrap();
        let ours_r = Reader::open(ours.clone()).unwrap();
        for id in ours_r.index().entries_in_toc_order() {
            let name = ours_r.index().entry(id).name.clone();
            let id = ours_r.index().lookup(&name).unwrap();
            let e = ours_r.index().entry(id);
            let theirs = r
                .index()
                .lookup(&name)
                .unwrap_or_else(|| panic!("{name} missing in Go blob"));
            let t = r.index().entry(theirs);
            assert_eq!(
                (t.kind, t.size, t.mode, t.num_link, t.modtime),
                (e.kind, e.size, e.mode, e.num_link, e.modtime),
                "{}",
                e.name
            );
            assert_eq!(
                r.read_to_vec(theirs).unwrap(),
                ours_r.read_to_vec(id).unwrap(),
                "{}",
                e.name
            );
        }

        // Same TOC apart from compressed offsets.
        let strip = |t: &Toc| {
            let mut t = t.clone();
            for e in t.entries.iter_mut().flatten() {
                e.offset = 0;
            }
            t
        };
        let (a, b) = (strip(&rep.toc), strip(&go_toc));
        let (ae, be) = (a.entries.as_ref().unwrap(), b.entries.as_ref().unwrap());
        assert_eq!(ae.len(), be.len(), "prioritized {prioritized:?}");
        for (x, y) in ae.iter().zip(be) {
            assert_eq!(x, y, "prioritized {prioritized:?}");
        }
    }
}

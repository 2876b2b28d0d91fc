//! End-to-end tests of `regfs convert`, `regfs inspect` and `regfs extract`, run on the real
//! binary as root against two oracles: GNU `tar -x` of the same blob (what a runtime that knows
//! nothing of eStargz does with it) and the reference Go implementation (`esgz-oracle`).

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::image::{gunzip_all, gzip};
use support::layers::{self, BIG_FILE, BIG_FILE_SIZE};
use support::oracle::{esgz_oracle, gnu_tar_create, gnu_tar_extract, require_root};
use support::tree::{CompareOptions, Tree, assert_same_tree};
use support::{blob, regfs, run_fail, run_ok, scratch, sha256, write_file};

/// Small chunks so that test files span several gzip members.
const CHUNK: &str = "65536";

/// `regfs extract` of `blob` must equal `tar -x` of it (minus the TOC and landmark files).
///
/// Mtimes are compared exactly, sub-second PAX times included. Directory mtimes that tar -x
/// does not take from the layer (implicit parents, and directories
/// GNU tar re-enters after setting their times, see [`layers::dirs_tar_x_touches_late`]) are
/// checked against the tar headers of the blob's own stream instead.
#[track_caller]
fn assert_extract_matches_tar(what: &str, work: &Path, blob_path: &Path) -> Tree {
    let by_tar = work.join(format!("{what}.tar-x"));
    let by_regfs = work.join(format!("{what}.regfs-x"));
    gnu_tar_extract(blob_path, &by_tar);
    fs::create_dir(&by_regfs).expect("mkdir");
    run_ok(regfs().arg("extract").arg(blob_path).arg(&by_regfs));
    let stream = gunzip_all(&fs::read(blob_path).expect("blob"));
    let mut skip_mtime = layers::implicit_dirs(&stream);
    skip_mtime.extend(layers::dirs_tar_x_touches_late(&stream));
    let expected = Tree::capture(&by_tar).without_layer_metadata();
    let actual = Tree::capture(&by_regfs);
    assert_same_tree(what, &expected, &actual, &CompareOptions { skip_mtime });
    for (dir, mtime) in layers::dir_mtimes(&stream) {
        let node = actual
            .nodes
            .get(&dir)
            .unwrap_or_else(|| panic!("{what}: dir {dir:?} missing"));
        assert_eq!(
            node.mtime, mtime,
            "{what}: mtime of dir {dir:?} vs its tar header"
        );
    }
    expected
}

/// The convert JSON must describe the blob that was written.
#[track_caller]
fn assert_convert_output_describes(out: &support::ConvertOutput, blob_bytes: &[u8]) {
    assert_eq!(out.digest, sha256(blob_bytes), "digest");
    assert_eq!(out.size, blob_bytes.len() as u64, "size");
    assert_eq!(
        out.toc_digest,
        sha256(&blob::toc_json(blob_bytes)),
        "tocDigest"
    );
    let stream = gunzip_all(blob_bytes);
    assert_eq!(out.diff_id, sha256(&stream), "diffID");
    assert_eq!(
        out.uncompressed_size,
        stream.len() as u64,
        "uncompressedSize"
    );
}

#[test]
fn rich_layer_from_plain_gzip_zstd_and_stdin_extracts_like_gnu_tar() {
    require_root();
    let work = scratch();
    let tar = layers::rich_layer();
    let inputs = [
        ("plain", tar.clone()),
        ("gzip", gzip(&tar)),
        ("zstd", zstd::encode_all(tar.as_slice(), 3).expect("zstd")),
    ];
    // The converted layer must also be the input layer: tar -x of the input is the first oracle.
    let input_tree = {
        let p = write_file(work.path(), "input.tar", &tar);
        let d = work.path().join("input.tar-x");
        gnu_tar_extract(&p, &d);
        Tree::capture(&d)
    };
    let mut skip_mtime = layers::implicit_dirs(&tar);
    skip_mtime.extend(layers::dirs_tar_x_touches_late(&tar));
    let opts = CompareOptions { skip_mtime };
    for (kind, bytes) in &inputs {
        let input = write_file(work.path(), &format!("in-{kind}"), bytes);
        let out = work.path().join(format!("{kind}.esgz"));
        let res = run_ok(
            regfs()
                .arg("convert")
                .arg(&input)
                .arg(&out)
                .args(["--chunk-size", CHUNK]),
        );
        assert!(
            res.stderr.is_empty(),
            "no progress bar or chatter when stderr is not a terminal"
        );
        let conv = support::parse_convert_output(&res.stdout);
        let blob_bytes = fs::read(&out).expect("read blob");
        assert_convert_output_describes(&conv, &blob_bytes);
        let extracted = assert_extract_matches_tar(kind, work.path(), &out);
        assert_same_tree(
            &format!("{kind}: blob vs input"),
            &input_tree,
            &extracted,
            &opts,
        );
    }
    // stdin input, compressed.
    let out = work.path().join("stdin.esgz");
    let mut child = regfs()
        .args(["convert", "-"])
        .arg(&out)
        .args(["--chunk-size", CHUNK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn convert");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&inputs[1].1)
        .expect("feed stdin");
    let res = child.wait_with_output().expect("convert from stdin");
    assert!(
        res.status.success(),
        "convert -: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let conv = support::parse_convert_output(&res.stdout);
    assert_convert_output_describes(&conv, &fs::read(&out).expect("blob"));
    assert_extract_matches_tar("stdin", work.path(), &out);

    // The big file really is chunked: one reg entry + 4 chunk entries at 64 KiB.
    let toc = blob::toc_value(&fs::read(work.path().join("plain.esgz")).expect("blob"));
    let pieces = toc["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["name"] == BIG_FILE)
        .count();
    assert_eq!(
        pieces,
        BIG_FILE_SIZE.div_ceil(65536),
        "{BIG_FILE} chunk entries"
    );
}

#[test]
fn umoci_style_layer_without_dir_entries_extracts_like_gnu_tar() {
    require_root();
    let work = scratch();
    let tar = layers::umoci_layer();
    let input = write_file(work.path(), "umoci.tar", &tar);
    let out = work.path().join("umoci.esgz");
    support::convert(&input, &out, &["--chunk-size", CHUNK]);
    let tree = assert_extract_matches_tar("umoci", work.path(), &out);
    assert!(
        tree.nodes.contains_key("etc/.wh.old.conf"),
        "whiteouts are plain files in a layer"
    );
}

#[test]
fn docker_style_layer_with_root_entry_extracts_like_gnu_tar() {
    require_root();
    let work = scratch();
    let tar = layers::dot_slash_layer();
    let input = write_file(work.path(), "docker.tar", &tar);
    let out = work.path().join("docker.esgz");
    support::convert(&input, &out, &["--chunk-size", CHUNK]);
    let tree = assert_extract_matches_tar("docker", work.path(), &out);
    let root = &tree.nodes[""];
    assert_eq!(
        (root.mode, root.gid),
        (0o750, 7),
        "the ./ entry applies to DIR itself"
    );
    assert_eq!(tree.nodes["etc"].mode, 0o700, "the later dir entry wins");
    assert_eq!(
        tree.nodes["etc/os-release"].size,
        Some(12),
        "the later duplicate wins"
    );
}

#[test]
fn real_tree_python_stdlib_extracts_like_gnu_tar() {
    require_root();
    let work = scratch();
    let src = fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("python3"))
        .max()
        .expect("a /usr/lib/python3* tree on this machine (apt-get install python3)");
    let input = work.path().join("python.tar");
    gnu_tar_create(Path::new("/usr/lib"), &src, &input);
    let out = work.path().join("python.esgz");
    let conv = support::convert(&input, &out, &[]);
    assert_extract_matches_tar("python", work.path(), &out);
    // The Go reader accepts the same blob with our TOC digest.
    run_ok(
        Command::new(esgz_oracle())
            .arg("verify")
            .arg(&out)
            .args(["--toc-digest", &conv.toc_digest]),
    );
}

/// `name -> sha256(content)` of every regular file in a tar (lossy UTF-8, cleaned names).
fn tar_contents(tar: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = layers::clean_name(&String::from_utf8_lossy(&e.path_bytes()));
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("payload");
        out.insert(name, sha256(&data));
    }
    out
}

fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

#[test]
fn regfs_blobs_pass_the_go_reader_and_agree_entry_by_entry() {
    require_root();
    let work = scratch();
    let etc_tar = work.path().join("etc.tar");
    gnu_tar_create(Path::new("/"), "etc", &etc_tar);
    let cases = [
        ("rich", layers::rich_layer()),
        ("umoci", layers::umoci_layer()),
        ("etc", fs::read(&etc_tar).expect("etc tar")),
    ];
    for (what, tar) in &cases {
        let input = write_file(work.path(), &format!("{what}.in"), tar);
        let out = work.path().join(format!("{what}.esgz"));
        let conv = support::convert(&input, &out, &["--chunk-size", CHUNK]);
        let blob_bytes = fs::read(&out).expect("blob");

        // Byte-identical TOC: the Go reader returns exactly our bytes, whose digest we printed.
        let go_toc = run_ok(Command::new(esgz_oracle()).arg("toc").arg(&out)).stdout;
        assert_eq!(
            go_toc,
            blob::toc_json(&blob_bytes),
            "{what}: esgz-oracle toc != our TOC bytes"
        );
        assert_eq!(sha256(&go_toc), conv.toc_digest, "{what}: TOC digest");

        let verify = run_ok(
            Command::new(esgz_oracle())
                .arg("verify")
                .arg(&out)
                .args(["--toc-digest", &conv.toc_digest]),
        );
        let lines = json_lines(&verify.stdout);
        let (summary, entries) = lines.split_last().expect("oracle output");
        assert_eq!(summary["ok"], true, "{what}: {summary}");
        assert_eq!(summary["tocVerified"], true, "{what}: {summary}");
        assert_eq!(summary["format"], "estargz-gzip", "{what}: {summary}");

        // Our own view of the TOC: one JSON line per entry, identical to the TOC's entries.
        let ours = json_lines(&run_ok(regfs().args(["inspect", "--json"]).arg(&out)).stdout);
        let toc = blob::toc_value(&blob_bytes);
        assert_eq!(
            &ours,
            toc["entries"].as_array().expect("entries"),
            "{what}: inspect --json"
        );
        let by_name: BTreeMap<String, &serde_json::Value> = ours
            .iter()
            .filter(|e| e["type"] != "chunk")
            .map(|e| (layers::clean_name(e["name"].as_str().expect("name")), e))
            .collect();

        let contents = tar_contents(tar);
        let mut files = 0;
        for e in entries {
            let path = e["path"].as_str().expect("path").to_string();
            assert_eq!(
                e["error"].as_str().unwrap_or(""),
                "",
                "{what}: oracle error on {path}"
            );
            let Some(t) = by_name.get(&path) else {
                assert_eq!(
                    e["type"], "dir",
                    "{what}: oracle entry {path} missing from our TOC"
                );
                continue;
            };
            if e["type"] == "hardlink" {
                continue; // the oracle prints the link source's attributes
            }
            assert_eq!(e["type"], t["type"], "{what}: type of {path}");
            assert_eq!(
                e["mode"],
                t.get("mode").cloned().unwrap_or(0.into()),
                "{what}: mode of {path}"
            );
            if e["type"] == "reg" {
                files += 1;
                assert_eq!(
                    e["size"],
                    t.get("size").cloned().unwrap_or(0.into()),
                    "{what}: size {path}"
                );
                assert_eq!(e["tocFileDigest"], t["digest"], "{what}: digest of {path}");
                assert_eq!(e["sha256"], t["digest"], "{what}: content of {path}");
                if let Some(want) = contents.get(&path) {
                    assert_eq!(
                        e["sha256"].as_str(),
                        Some(want.as_str()),
                        "{what}: {path} vs input tar"
                    );
                }
            }
        }
        assert!(files >= 3, "{what}: the oracle saw only {files} files");
    }
}

/// `esgz-oracle build` with GOMAXPROCS=1; returns (blob path, the build JSON).
fn go_build(work: &Path, name: &str, tar: &Path, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let out = work.join(name);
    let res = run_ok(
        Command::new(esgz_oracle())
            .env("GOMAXPROCS", "1")
            .arg("build")
            .arg(tar)
            .arg(&out)
            .args(extra),
    );
    (
        out,
        serde_json::from_slice(&res.stdout).expect("build JSON"),
    )
}

#[test]
fn go_built_blobs_extract_like_gnu_tar() {
    require_root();
    let work = scratch();
    let rich = layers::rich_layer();
    let rich_path = write_file(work.path(), "rich.tar", &rich);
    let etc_path = work.path().join("etc.tar");
    gnu_tar_create(Path::new("/"), "etc", &etc_path);

    let (plain, _) = go_build(
        work.path(),
        "go-rich.esgz",
        &rich_path,
        &["--chunk-size", CHUNK],
    );
    assert_extract_matches_tar("go-rich", work.path(), &plain);
    let summary =
        String::from_utf8_lossy(&run_ok(regfs().arg("inspect").arg(&plain)).stdout).into_owned();
    assert!(summary.contains("no-prefetch"), "landmark in: {summary}");

    let prioritized = format!("etc/hello.txt,{BIG_FILE},dev/null");
    let (prio, build) = go_build(
        work.path(),
        "go-rich-prio.esgz",
        &rich_path,
        &["--chunk-size", CHUNK, "--prioritized", &prioritized],
    );
    assert_extract_matches_tar("go-rich-prio", work.path(), &prio);
    let out = run_ok(regfs().arg("inspect").arg(&prio));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains("prefetch") && !summary.contains("no-prefetch"),
        "{summary}"
    );
    let landmark = landmark_offset(&fs::read(&prio).expect("blob"));
    assert!(
        summary.contains(&format!("prefetch size:  {landmark} bytes")),
        "prefetch size = the landmark's offset {landmark}: {summary}"
    );
    // With --toc-digest, the digest Go printed is accepted.
    let dir = work.path().join("go-rich-prio.with-digest");
    fs::create_dir(&dir).expect("mkdir");
    let toc_digest = build["tocDigest"].as_str().expect("tocDigest");
    run_ok(
        regfs()
            .arg("extract")
            .arg(&prio)
            .arg(&dir)
            .args(["--toc-digest", toc_digest]),
    );

    let (go_etc, _) = go_build(work.path(), "go-etc.esgz", &etc_path, &[]);
    assert_extract_matches_tar("go-etc", work.path(), &go_etc);
}

#[test]
fn legacy_footer_blobs_extract_like_gnu_tar() {
    require_root();
    let work = scratch();
    let rich = layers::rich_layer();
    let rich_path = write_file(work.path(), "rich.tar", &rich);
    let (go_blob, _) = go_build(work.path(), "go.esgz", &rich_path, &["--chunk-size", CHUNK]);
    let ours = work.path().join("ours.esgz");
    support::convert(&rich_path, &ours, &["--chunk-size", CHUNK]);
    for (what, src) in [("legacy-go", go_blob), ("legacy-ours", ours)] {
        let legacy = blob::to_legacy(&fs::read(&src).expect("blob"));
        let path = write_file(work.path(), what, &legacy);
        assert_extract_matches_tar(what, work.path(), &path);
        let summary =
            String::from_utf8_lossy(&run_ok(regfs().arg("inspect").arg(&path)).stdout).into_owned();
        assert!(summary.contains("legacy-stargz"), "{what}: {summary}");
    }
}

#[test]
fn inspect_summarises_format_toc_counts_and_landmark() {
    require_root();
    let work = scratch();
    let rich = layers::rich_layer();
    let input = write_file(work.path(), "rich.tar", &rich);
    let out = work.path().join("rich.esgz");
    let conv = support::convert(&input, &out, &["--chunk-size", CHUNK]);
    let blob_bytes = fs::read(&out).expect("blob");
    let text =
        String::from_utf8_lossy(&run_ok(regfs().arg("inspect").arg(&out)).stdout).into_owned();
    assert!(text.contains("estargz"), "{text}");
    assert!(!text.contains("legacy"), "{text}");
    assert!(text.contains(&conv.toc_digest), "TOC digest in: {text}");
    assert!(
        text.contains(&blob::toc_offset(&blob_bytes).to_string()),
        "TOC offset in: {text}"
    );
    let toc = blob::toc_value(&blob_bytes);
    let entries = toc["entries"].as_array().expect("entries");
    for kind in [
        "reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk",
    ] {
        let n = entries.iter().filter(|e| e["type"] == kind).count();
        assert!(n > 0, "the rich layer has {kind} entries");
        let line = text
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .any(|w| w.trim_end_matches(':') == kind)
            })
            .unwrap_or_else(|| panic!("no {kind} count line in: {text}"));
        assert!(
            line.split_whitespace().any(|w| w == n.to_string()),
            "{kind} count {n}: {line}"
        );
    }
    assert!(
        text.contains("no-prefetch"),
        "a converted layer without priorities: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken blobs: a clear error, exit 1, never a panic.

/// A good small blob made by regfs, plus its work dir.
fn good_blob() -> (tempfile::TempDir, Vec<u8>) {
    let work = scratch();
    let input = write_file(work.path(), "umoci.tar", &layers::umoci_layer());
    let out = work.path().join("good.esgz");
    support::convert(&input, &out, &["--chunk-size", CHUNK]);
    let bytes = fs::read(&out).expect("blob");
    (work, bytes)
}

fn edit_toc(b: &[u8], edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> Vec<u8> {
    let mut toc = blob::toc_value(b);
    edit(toc["entries"].as_array_mut().expect("entries"));
    blob::forge_toc(
        b,
        "stargz.index.json",
        serde_json::to_string_pretty(&toc).expect("json").as_bytes(),
    )
}

#[test]
fn broken_blobs_are_rejected_with_a_clear_error() {
    require_root();
    let (work, good) = good_blob();
    let toc_off = blob::toc_offset(&good);
    let json = blob::toc_json(&good);
    let mut bad_footer = good.clone();
    let n = bad_footer.len();
    bad_footer[n - 19] = b'X'; // "STARGZ" -> "STARGX"
    // (name, blob, extra extract args, words one of which the error must contain)
    type Case<'a> = (&'a str, Vec<u8>, Vec<&'a str>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "truncated",
            good[..good.len() - 100].to_vec(),
            vec![],
            &["footer", "toc", "gzip"],
        ),
        ("empty", Vec::new(), vec![], &["footer", "short", "small"]),
        ("bad-footer", bad_footer, vec![], &["footer"]),
        (
            "toc-offset-past-end",
            blob::with_footer_offset(&good, good.len() as u64 + 1000),
            vec![],
            &["offset", "outside"],
        ),
        (
            "toc-not-named-index",
            blob::forge_toc(&good, "other.json", &json),
            vec![],
            &["stargz.index.json"],
        ),
        (
            "malformed-json",
            blob::forge_toc(&good, "stargz.index.json", &json[..json.len() / 2]),
            vec![],
            &["json"],
        ),
        (
            "hardlink-to-missing",
            edit_toc(&good, |e| {
                let link = e
                    .iter_mut()
                    .find(|e| e["type"] == "hardlink")
                    .expect("hardlink entry");
                link["linkName"] = "usr/local/bin/missing".into();
            }),
            vec![],
            &["missing", "hardlink"],
        ),
        (
            "wrong-toc-digest",
            good.clone(),
            vec![
                "--toc-digest",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ],
            &["digest"],
        ),
    ];
    assert!(toc_off > 0);
    for (what, bytes, extra, words) in cases {
        let path = write_file(work.path(), what, &bytes);
        let dir = work.path().join(format!("{what}.x"));
        fs::create_dir(&dir).expect("mkdir");
        let err = run_fail(regfs().arg("extract").arg(&path).arg(&dir).args(&extra));
        eprintln!("{what}: {err}");
        let lower = err.to_lowercase();
        assert!(
            words.iter().any(|w| lower.contains(w)),
            "{what}: error should mention one of {words:?}: {err}"
        );
        if extra.is_empty() {
            let err = run_fail(regfs().arg("inspect").arg(&path));
            assert!(!err.contains("panicked"), "{what}: inspect: {err}");
        }
    }
}

/// The uncompressed chunk bytes are corrupted in two ways: a flipped byte in the compressed
/// member (deflate/CRC failure) and a forged chunk digest (digest mismatch). Either way extract
/// fails naming the file, and the file is not left behind.
#[test]
fn corrupted_chunk_fails_naming_the_file_and_leaves_no_file() {
    require_root();
    let work = scratch();
    let input = write_file(work.path(), "rich.tar", &layers::rich_layer());
    let out = work.path().join("rich.esgz");
    support::convert(&input, &out, &["--chunk-size", CHUNK]);
    let good = fs::read(&out).expect("blob");
    let toc = blob::toc_value(&good);
    let entries = toc["entries"].as_array().expect("entries");
    let chunks: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["name"] == BIG_FILE).collect();
    let second = chunks[1]["offset"].as_u64().expect("offset");
    let third = chunks[2]["offset"].as_u64().expect("offset");

    let mut flipped = good.clone();
    flipped[usize::try_from((second + third) / 2).expect("offset")] ^= 0x55;
    let forged = edit_toc(&good, |e| {
        let c = e
            .iter_mut()
            .filter(|e| e["name"] == BIG_FILE)
            .nth(2)
            .expect("third chunk");
        c["chunkDigest"] = sha256(b"not the chunk").into();
    });
    for (what, bytes, chunk_offset) in [
        ("flipped", flipped, 65536u64),
        ("forged-digest", forged, 131072),
    ] {
        let path = write_file(work.path(), what, &bytes);
        let dir = work.path().join(format!("{what}.x"));
        fs::create_dir(&dir).expect("mkdir");
        let err = run_fail(regfs().arg("extract").arg(&path).arg(&dir));
        eprintln!("{what}: {err}");
        assert!(
            err.contains(BIG_FILE),
            "{what}: the error must name the file: {err}"
        );
        if what == "forged-digest" {
            assert!(
                err.contains(&chunk_offset.to_string()),
                "{what}: chunk offset in: {err}"
            );
        }
        assert!(
            !dir.join(BIG_FILE).exists(),
            "{what}: {BIG_FILE} left behind"
        );
        assert!(
            !dir.join("bin/big-hard").exists(),
            "{what}: hardlink to a bad file left behind"
        );
        let leftovers: Vec<String> = Tree::capture(&dir)
            .nodes
            .keys()
            .filter(|k| k.starts_with("bin/") && !["bin/suid", "bin/sgid"].contains(&k.as_str()))
            .cloned()
            .collect();
        assert!(
            leftovers.is_empty(),
            "{what}: temp files left: {leftovers:?}"
        );
    }
}

#[test]
fn writes_cannot_escape_the_target_dir() {
    require_root();
    let (work, good) = good_blob();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    // `esc` is a symlink to a directory outside DIR, then a file is written "inside" it.
    let escape_by_symlink = edit_toc(&good, |e| {
        let readme = e
            .iter()
            .position(|e| e["name"] == "usr/share/doc/tool/README")
            .expect("README entry");
        e[readme]["name"] = "esc/pwned".into();
        let link = serde_json::json!({
            "name": "esc", "type": "symlink", "linkName": outside.to_str().expect("utf8"), "mode": 511
        });
        e.insert(readme, link);
    });
    let path = write_file(work.path(), "escape-symlink", &escape_by_symlink);
    let dir = work.path().join("escape-symlink.x");
    fs::create_dir(&dir).expect("mkdir");
    let err = run_fail(regfs().arg("extract").arg(&path).arg(&dir));
    assert!(
        err.contains("esc"),
        "the error names the symlinked component: {err}"
    );
    assert!(
        !outside.join("pwned").exists(),
        "extract wrote through a symlink out of DIR"
    );
    assert_eq!(
        fs::read_dir(&outside).expect("ls").count(),
        0,
        "nothing written outside DIR"
    );

    // `../../name` is cleaned to `name` inside DIR.
    let dotdot = edit_toc(&good, |e| {
        let readme = e
            .iter_mut()
            .find(|e| e["name"] == "usr/share/doc/tool/README")
            .expect("README");
        readme["name"] = "../../../dotdot-escape".into();
    });
    let path = write_file(work.path(), "escape-dotdot", &dotdot);
    let dir = work.path().join("sub/escape-dotdot.x");
    fs::create_dir_all(&dir).expect("mkdir");
    run_ok(regfs().arg("extract").arg(&path).arg(&dir));
    assert!(
        dir.join("dotdot-escape").is_file(),
        "the cleaned name lands inside DIR"
    );
    assert!(
        !work.path().join("dotdot-escape").exists()
            && !work.path().join("sub/dotdot-escape").exists()
    );
}

#[test]
fn convert_writes_atomically_and_leaves_nothing_on_failure() {
    let work = scratch();
    let outdir = work.path().join("out");
    fs::create_dir(&outdir).expect("mkdir");
    let garbage = write_file(work.path(), "garbage", &layers::noise(10_000, 5));
    let err = run_fail(
        regfs()
            .arg("convert")
            .arg(&garbage)
            .arg(outdir.join("x.esgz")),
    );
    assert!(err.contains("garbage"), "the error names the input: {err}");
    let left: Vec<_> = fs::read_dir(&outdir).expect("ls").collect();
    assert!(left.is_empty(), "a failed convert left {left:?}");

    let input = write_file(work.path(), "umoci.tar", &layers::umoci_layer());
    let out = outdir.join("ok.esgz");
    support::convert(&input, &out, &[]);
    let names: Vec<String> = fs::read_dir(&outdir)
        .expect("ls")
        .map(|e| {
            e.expect("dirent")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        vec!["ok.esgz".to_string()],
        "only the blob is left in the output dir"
    );
    let missing = write_file(work.path(), "prio.txt", b"usr/local/bin/tool\nnot/there\n");
    let conv = support::convert(
        &input,
        &outdir.join("prio.esgz"),
        &["--prioritized-files", missing.to_str().expect("utf8")],
    );
    assert_eq!(
        conv.raw["missedPrioritized"],
        serde_json::json!(["not/there"]),
        "{}",
        conv.raw
    );
    // The prioritized file comes first, then the landmark whose offset ends the prefetch range.
    let prio = fs::read(outdir.join("prio.esgz")).expect("blob");
    let toc = blob::toc_value(&prio);
    let names: Vec<&str> = toc["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        &names[..2],
        ["usr/local/bin/tool", ".prefetch.landmark"],
        "{names:?}"
    );
    let landmark = landmark_offset(&prio);
    let text = String::from_utf8_lossy(
        &run_ok(regfs().arg("inspect").arg(outdir.join("prio.esgz"))).stdout,
    )
    .into_owned();
    assert!(
        text.contains(&format!("prefetch size:  {landmark} bytes")) && landmark > 0,
        "prefetch size = landmark offset {landmark}: {text}"
    );
}

/// The blob offset of the root `.prefetch.landmark` entry, read straight from the TOC JSON.
fn landmark_offset(blob_bytes: &[u8]) -> u64 {
    let toc = blob::toc_value(blob_bytes);
    toc["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["name"] == ".prefetch.landmark")
        .and_then(|e| e["offset"].as_u64())
        .expect("a .prefetch.landmark entry with an offset")
}

//! Test support shared by the `regfs` CLI test binaries: running the real binary, the tar and
//! Go oracles ([`oracle`]), tree capture and comparison ([`tree`]), corner-case layers
//! ([`layers`]) and blob surgery for negative tests ([`blob`]).
//!
//! Each test binary compiles this module on its own and uses a part of it.
#![allow(dead_code)]

pub mod blob;
pub mod containerd;
pub mod image;
pub mod layers;
pub mod oracle;
pub mod registry;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A `Command` for the `regfs` binary under test.
pub fn regfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_regfs"))
}

/// A scratch directory under cargo's per-target temp dir (a real disk filesystem: xattrs and
/// device nodes work there, unlike on some tmpfs setups).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("format-cli-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch dir")
}

pub use regfs_testkit::run_ok;

/// Runs `cmd`, requires a non-zero exit without a panic, and returns stderr.
#[track_caller]
pub fn run_fail(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{cmd:?} unexpectedly succeeded; stderr: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{cmd:?} must exit 1 (not a signal/crash): {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{cmd:?} panicked: {stderr}");
    assert!(
        !stderr.trim().is_empty(),
        "{cmd:?} failed without a message"
    );
    stderr
}

/// The JSON object a `regfs convert` printed.
#[derive(Debug, Clone)]
pub struct ConvertOutput {
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub toc_digest: String,
    pub uncompressed_size: u64,
    pub raw: serde_json::Value,
}

/// `regfs convert input out extra_args..`, parsing its one-object stdout.
#[track_caller]
pub fn convert(input: &Path, out: &Path, extra: &[&str]) -> ConvertOutput {
    let o = run_ok(regfs().arg("convert").arg(input).arg(out).args(extra));
    parse_convert_output(&o.stdout)
}

/// Parses `regfs convert` stdout (exactly one JSON object).
#[track_caller]
pub fn parse_convert_output(stdout: &[u8]) -> ConvertOutput {
    let raw: serde_json::Value = serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("convert stdout is not one JSON object ({e}): {stdout:?}"));
    let s = |k: &str| {
        raw[k]
            .as_str()
            .unwrap_or_else(|| panic!("no string {k} in {raw}"))
            .to_string()
    };
    let n = |k: &str| {
        raw[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no number {k} in {raw}"))
    };
    ConvertOutput {
        digest: s("digest"),
        size: n("size"),
        diff_id: s("diffID"),
        toc_digest: s("tocDigest"),
        uncompressed_size: n("uncompressedSize"),
        raw: raw.clone(),
    }
}

/// `sha256:<hex>` of bytes.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

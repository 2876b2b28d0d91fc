//! Test-only helpers shared by the workspace's tests: the real parts tests run against and the
//! small utilities every test binary needs, in one place instead of a copy per crate.
//!
//! - [`Registry`]: Debian's `docker-registry` on a free 127.0.0.1 port, owned by the test and
//!   killed by PID on drop; anonymous, htpasswd or token auth, optionally over TLS.
//! - [`Containerd`]: Debian's containerd + runc with their own root, state and socket in a temp
//!   dir (CRI off, isolated content), stopped on drop; extra config (a proxy snapshotter) can be
//!   appended.
//! - [`TokenServer`]: a docker token server (GET and OAuth2 POST, refresh tokens) whose tokens
//!   live as long as [`TokenOptions`] say, with counters of what clients asked.
//! - [`pattern`]: deterministic pseudo-random bytes; [`gzip`] / [`gunzip_all`].
//! - [`which`], [`require_tool`], [`require_root`], [`free_port`]: the environment checks.
//!
//! Tests fail loudly (with the package to install) when a part is missing: a test that silently
//! skips is a test that cannot fail.
//!
//! ```no_run
//! let registry = regfs_testkit::Registry::start();
//! let (status, _) = registry.get("/v2/", None);
//! assert_eq!(status, 200);
//! ```

// Test helpers panic with a message instead of returning errors: a failed set-up is a failed
// test, and the message says what to install or look at.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod containerd;
mod registry;
mod token;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use containerd::{Containerd, mounts_under, run_ok};
pub use registry::{Auth, Registry, RegistryConfig, http_get};
pub use token::{TOKEN_ISSUER, TOKEN_SERVICE, TokenOptions, TokenServer};

/// Deterministic pseudo-random bytes (xorshift): contents differ between files and offsets, and
/// compression has work to do.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One gzip member of `data` (fast level: tests want the bytes, not the ratio).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// The whole decompressed stream of a multi-member gzip blob (what a runtime unpacks).
pub fn gunzip_all(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(data), &mut out)
        .expect("gunzip blob");
    out
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The path of `tool` on `$PATH` (or in the sbin directories root has).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path of `tool`, or a failed test naming the Debian `package` to install.
#[track_caller]
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    which(tool).unwrap_or_else(|| panic!("the test needs `{tool}`: apt-get install {package}"))
}

/// Fails the test unless FUSE mounts are possible here (root and /dev/fuse).
#[track_caller]
pub fn require_fuse() {
    require_root();
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE mount tests need /dev/fuse (modprobe fuse)"
    );
}

/// Fails the test unless it runs as root (mounts, device nodes, ownership, namespaces).
#[track_caller]
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .expect("effective uid in /proc/self/status");
    assert_eq!(
        euid, "0",
        "this test needs root (mounts, device nodes, ownership); run it as root, as CI does"
    );
}

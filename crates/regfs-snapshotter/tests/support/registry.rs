//! The registry harness is the workspace's shared one (`regfs-testkit`).

#[allow(unused_imports)] // each test binary uses a subset
pub use regfs_testkit::{Registry, free_port, which};

/// `GET http://addr/path`: (status, body).
pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    regfs_testkit::http_get(addr, path, &[])
}

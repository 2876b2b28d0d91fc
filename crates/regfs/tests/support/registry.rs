//! The registry harness is the workspace's shared one (`regfs-testkit`).

#[allow(unused_imports)] // each test binary uses a subset
pub use regfs_testkit::{Registry, free_port, which};

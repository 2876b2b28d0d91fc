//! The containerd harness is the workspace's shared one (`regfs-testkit`); these tests use their
//! own namespace.

pub use regfs_testkit::Containerd;

/// The namespace the tests use.
pub const NAMESPACE: &str = "regfs-image-cli";

/// A private containerd for one test.
pub fn start() -> Containerd {
    Containerd::start(NAMESPACE)
}

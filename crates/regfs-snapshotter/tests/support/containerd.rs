//! containerd with this snapshotter as the proxy plugin `regfs`: the workspace's shared harness
//! (`regfs-testkit`) plus the `--snapshotter regfs` commands the tests use.

use std::ops::Deref;
use std::path::Path;

#[allow(unused_imports)] // each test binary uses a subset
pub use regfs_testkit::{mounts_under, require_root};

/// The namespace the tests use.
pub const NAMESPACE: &str = "regfs-snapshotter";
/// The proxy plugin's name, as given to `--snapshotter`.
pub const SNAPSHOTTER: &str = "regfs";

/// A private containerd that knows the snapshotter on `snapshotter_socket` as `regfs`.
pub struct Containerd(regfs_testkit::Containerd);

impl Deref for Containerd {
    type Target = regfs_testkit::Containerd;

    fn deref(&self) -> &regfs_testkit::Containerd {
        &self.0
    }
}

impl Containerd {
    /// Starts containerd with the snapshotter listening on `snapshotter_socket` as `regfs`.
    pub fn start(snapshotter_socket: &Path) -> Containerd {
        Containerd(regfs_testkit::Containerd::start_with_snapshotter(
            NAMESPACE,
            SNAPSHOTTER,
            snapshotter_socket,
        ))
    }

    /// `ctr snapshots --snapshotter regfs ARGS..`, stdout.
    #[track_caller]
    pub fn snapshots(&self, args: &[&str]) -> String {
        let out = super::run_ok(
            self.ctr()
                .args(["snapshots", "--snapshotter", SNAPSHOTTER])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run --rm --snapshotter regfs REF ID ARGS..`, stdout.
    #[track_caller]
    pub fn run(&self, reference: &str, id: &str, args: &[&str]) -> String {
        let out = super::run_ok(
            self.ctr()
                .args(["run", "--rm", "--snapshotter", SNAPSHOTTER, reference, id])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

//! The snapshot vocabulary shared by the store, the service and the client: kinds, info, mounts
//! and usage, independent of protobuf.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The label containerd sets on Prepare to name the committed snapshot it wants in the end (the
/// layer's chain ID); a snapshotter that already has it answers ALREADY_EXISTS.
pub const TARGET_LABEL: &str = "containerd.io/snapshot.ref";

/// What a snapshot is, as containerd defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of a committed parent; cannot be committed.
    View,
    /// A writable snapshot; can be committed.
    Active,
    /// An immutable snapshot usable as a parent.
    Committed,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        })
    }
}

/// What Stat, Update and List report about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The snapshot's key.
    pub name: String,
    /// The parent's key, if any.
    pub parent: Option<String>,
    /// Its kind.
    pub kind: Kind,
    /// When it was created (committed snapshots: when they were committed).
    pub created: SystemTime,
    /// When its labels were last changed.
    pub updated: SystemTime,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// One mount containerd performs to assemble a snapshot, in the shape of mount(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind`.
    pub fs_type: String,
    /// Source path (`overlay` for overlay mounts).
    pub source: String,
    /// Mount options (`ro`, `rbind`, `lowerdir=...`).
    pub options: Vec<String>,
}

/// Disk usage of a snapshot's own directory, counted the way containerd's `fs.DiskUsage` does:
/// allocated blocks and distinct inodes, the directory itself included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes allocated.
    pub size: i64,
    /// Distinct inodes.
    pub inodes: i64,
}

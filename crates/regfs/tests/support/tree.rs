//! A directory tree captured entry by entry (`lstat` + content hash + xattrs), and the comparison
//! that every extraction test uses to say "these two trees are the same layer".
//!
//! Paths are keyed by their lossy UTF-8 form relative to the root (`""` is the root itself):
//! eStargz TOCs are JSON strings, so a non-UTF-8 tar name reaches the TOC (and therefore any
//! TOC-driven extraction or mount) with the invalid bytes replaced by U+FFFD, exactly as the Go
//! reference writes it. Keying both trees lossily compares what can be compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The kind of a filesystem object, as `lstat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Reg,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

/// Everything about one path that a layer defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File size (regular files and symlinks; directory sizes are a filesystem detail).
    pub size: Option<u64>,
    /// `sha256:<hex>` of the content of a regular file.
    pub sha256: Option<String>,
    /// Symlink target (lossy UTF-8).
    pub link_target: Option<String>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// `(major, minor)` of a device node.
    pub rdev: Option<(u64, u64)>,
    /// `(seconds, nanoseconds)` modification time.
    pub mtime: (i64, i64),
    pub nlink: u64,
    /// The other paths of the tree that are the same inode (hardlinks), sorted.
    pub hardlink_peers: Vec<String>,
}

/// A captured tree: relative path (lossy UTF-8, `""` = root) to node.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
}

/// Names that `tar -x` of an eStargz blob materialises but that are layer metadata, not layer
/// content: the TOC entry and the two landmarks (root level only).
pub const LAYER_METADATA: [&str; 3] = [
    "stargz.index.json",
    ".prefetch.landmark",
    ".no.prefetch.landmark",
];

impl Tree {
    /// Walks `root` without following symlinks.
    pub fn capture(root: &Path) -> Tree {
        let mut nodes = BTreeMap::new();
        let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((path, key)) = stack.pop() {
            let meta = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_file() {
                Kind::Reg
            } else if ft.is_char_device() {
                Kind::Char
            } else if ft.is_block_device() {
                Kind::Block
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            let (size, sha256, link_target, rdev) = match kind {
                Kind::Reg => (Some(meta.len()), Some(sha256_file(&path)), None, None),
                Kind::Symlink => {
                    let t = fs::read_link(&path).expect("readlink");
                    let t = String::from_utf8_lossy(t.as_os_str().as_bytes()).into_owned();
                    (Some(meta.len()), None, Some(t), None)
                }
                Kind::Char | Kind::Block => {
                    let r = meta.rdev();
                    (
                        None,
                        None,
                        None,
                        Some((libc::major(r) as u64, libc::minor(r) as u64)),
                    )
                }
                _ => (None, None, None, None),
            };
            if kind != Kind::Dir {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(key.clone());
            }
            nodes.insert(
                key.clone(),
                Node {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size,
                    sha256,
                    link_target,
                    xattrs: xattrs(&path),
                    rdev,
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    nlink: meta.nlink(),
                    hardlink_peers: Vec::new(),
                },
            );
            if kind == Kind::Dir {
                for child in fs::read_dir(&path).expect("read_dir") {
                    let child = child.expect("dirent");
                    let name = String::from_utf8_lossy(child.file_name().as_bytes()).into_owned();
                    let child_key = if key.is_empty() {
                        name
                    } else {
                        format!("{key}/{name}")
                    };
                    stack.push((child.path(), child_key));
                }
            }
        }
        for paths in inodes.values().filter(|p| p.len() > 1) {
            for p in paths {
                let mut peers: Vec<String> = paths.iter().filter(|q| *q != p).cloned().collect();
                peers.sort();
                nodes.get_mut(p).expect("captured").hardlink_peers = peers;
            }
        }
        Tree { nodes }
    }

    /// Drops the root-level layer metadata files (see [`LAYER_METADATA`]) that `tar -x` of a blob
    /// creates. Their link counts cannot involve other paths (they are never hardlinked).
    pub fn without_layer_metadata(mut self) -> Tree {
        for name in LAYER_METADATA {
            self.nodes.remove(name);
        }
        self
    }

    /// Every mtime rounded to the nearest second (halves up): the precision of the TOC's
    /// `modtime`, so the most any TOC-driven extraction or mount can reproduce.
    pub fn with_mtimes_rounded_to_seconds(mut self) -> Tree {
        for n in self.nodes.values_mut() {
            n.mtime = (n.mtime.0 + i64::from(n.mtime.1 >= 500_000_000), 0);
        }
        self
    }

    /// Paths of the tree, for messages.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// What a comparison may ignore.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// Directories whose mtime is not defined by the layer (implicit parents that both extractors
    /// create on demand, and the root when the layer has no root entry): compared for everything
    /// but mtime.
    pub skip_mtime: BTreeSet<String>,
}

/// Lists every difference between `expected` and `actual`, one line each (empty = same).
pub fn diff_trees(expected: &Tree, actual: &Tree, opts: &CompareOptions) -> Vec<String> {
    let mut out = Vec::new();
    for (path, e) in &expected.nodes {
        let Some(a) = actual.nodes.get(path) else {
            out.push(format!("{path:?}: missing (expected {:?})", e.kind));
            continue;
        };
        let mut field = |name: &str, ev: String, av: String| {
            if ev != av {
                out.push(format!("{path:?}: {name} expected {ev} got {av}"));
            }
        };
        field("kind", format!("{:?}", e.kind), format!("{:?}", a.kind));
        if e.kind != a.kind {
            continue;
        }
        // Symlink permission bits are always 0777 on Linux; compare them anyway, they must agree.
        field("mode", format!("{:o}", e.mode), format!("{:o}", a.mode));
        field("uid", e.uid.to_string(), a.uid.to_string());
        field("gid", e.gid.to_string(), a.gid.to_string());
        field("size", format!("{:?}", e.size), format!("{:?}", a.size));
        field(
            "sha256",
            format!("{:?}", e.sha256),
            format!("{:?}", a.sha256),
        );
        field(
            "link target",
            format!("{:?}", e.link_target),
            format!("{:?}", a.link_target),
        );
        field(
            "xattrs",
            format!("{:?}", e.xattrs),
            format!("{:?}", a.xattrs),
        );
        field("rdev", format!("{:?}", e.rdev), format!("{:?}", a.rdev));
        if !opts.skip_mtime.contains(path) {
            field("mtime", format!("{:?}", e.mtime), format!("{:?}", a.mtime));
        }
        if e.kind != Kind::Dir {
            field("nlink", e.nlink.to_string(), a.nlink.to_string());
            field(
                "hardlink peers",
                format!("{:?}", e.hardlink_peers),
                format!("{:?}", a.hardlink_peers),
            );
        }
    }
    for (path, a) in &actual.nodes {
        if !expected.nodes.contains_key(path) {
            out.push(format!("{path:?}: unexpected {:?}", a.kind));
        }
    }
    out
}

/// Panics with the first differences when the trees differ.
#[track_caller]
pub fn assert_same_tree(what: &str, expected: &Tree, actual: &Tree, opts: &CompareOptions) {
    assert!(
        expected.len() > 1,
        "{what}: the expected tree is empty; the oracle extracted nothing"
    );
    let diffs = diff_trees(expected, actual, opts);
    assert!(
        diffs.is_empty(),
        "{what}: {} differences over {} paths, first ones:\n{}",
        diffs.len(),
        expected.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn sha256_file(path: &PathBuf) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// All extended attributes of `path` itself (not following a symlink).
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let names = xattr::list(path).unwrap_or_else(|e| panic!("llistxattr {}: {e}", path.display()));
    for name in names {
        let value = xattr::get(path, &name)
            .unwrap_or_else(|e| panic!("lgetxattr {}: {e}", path.display()))
            .unwrap_or_default();
        out.insert(name.to_string_lossy().into_owned(), value);
    }
    out
}

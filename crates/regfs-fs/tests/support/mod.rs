//! Shared test support: layer tars built with the `tar` crate, images built with the real
//! converter and cache, and the oracle — GNU `tar -x` of the same layers applied in order with
//! whiteouts — plus a tree comparison.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use regfs_blob::{ChunkCache, ChunkStore, LayerBlob, MemorySource, PlannerConfig};
use regfs_estargz::{ConvertOptions, Digest, TocIndex, TocLocation, convert, locate_toc};
use regfs_fs::{FileKind, FsLayer, FsOptions, ImageFs, Ino};

/// The mtime every test entry gets unless it says otherwise (2021-01-01).
pub const MTIME: u64 = 1_609_459_200;

/// One layer tar under construction.
pub struct LayerTar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        LayerTar::new()
    }
}

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(0);
        h
    }

    fn append(&mut self, mut h: tar::Header, path: &str, data: &[u8]) -> &mut Self {
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).expect("append");
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.append(LayerTar::header(tar::EntryType::Directory, mode), path, b"")
    }

    pub fn dir_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = LayerTar::header(tar::EntryType::Directory, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.append(h, path, b"")
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, 0o644, 0, 0, MTIME)
    }

    pub fn file_with(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = LayerTar::header(tar::EntryType::Regular, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.append(h, path, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = LayerTar::header(tar::EntryType::Symlink, 0o777);
        h.set_link_name(target).expect("link name");
        self.append(h, path, b"")
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = LayerTar::header(tar::EntryType::Link, 0o644);
        h.set_link_name(target).expect("link name");
        self.append(h, path, b"")
    }

    pub fn device(&mut self, path: &str, block: bool, major: u32, minor: u32) -> &mut Self {
        let kind = if block {
            tar::EntryType::Block
        } else {
            tar::EntryType::Char
        };
        let mut h = LayerTar::header(kind, 0o600);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.append(h, path, b"")
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        self.append(LayerTar::header(tar::EntryType::Fifo, 0o640), path, b"")
    }

    /// A regular file preceded by a PAX header carrying `SCHILY.xattr.*` records.
    pub fn file_with_xattrs(
        &mut self,
        path: &str,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut pax = Vec::new();
        for (k, v) in xattrs {
            let mut body = format!("SCHILY.xattr.{k}=").into_bytes();
            body.extend_from_slice(v);
            body.push(b'\n');
            // The record length counts its own digits.
            let mut len = body.len() + 2;
            while format!("{len} ").len() + body.len() != len {
                len = format!("{len} ").len() + body.len();
            }
            pax.extend_from_slice(format!("{len} ").as_bytes());
            pax.extend_from_slice(&body);
        }
        let h = LayerTar::header(tar::EntryType::XHeader, 0o644);
        self.append(h, "PaxHeaders/x", &pax);
        self.file(path, data)
    }

    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&path, b"")
    }

    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

/// An image built from layer tars through the real converter, TOC reader, index and cache.
pub struct TestImage {
    pub fs: Arc<ImageFs>,
    pub cache: Arc<ChunkCache>,
    pub blobs: Vec<(Digest, Bytes)>,
    pub store_dir: tempfile::TempDir,
}

/// Converts a tar into an eStargz blob.
pub fn to_estargz(tar: &[u8], chunk_size: u64) -> Vec<u8> {
    let mut blob = Vec::new();
    let opts = ConvertOptions {
        chunk_size,
        threads: 1,
        ..ConvertOptions::default()
    };
    convert(tar, &opts, &mut blob, &|_| {}).expect("convert");
    blob
}

pub struct LayerParts {
    pub digest: Digest,
    pub index: TocIndex,
    pub blob: LayerBlob,
}

/// Reads the blob's footer and TOC the way a mount does, and indexes it.
pub fn layer_parts(blob: Vec<u8>, source: &mut MemorySource) -> LayerParts {
    let size = blob.len() as u64;
    let (toc, toc_offset) = match locate_toc(&blob, size).expect("locate toc") {
        TocLocation::Parsed {
            toc, toc_offset, ..
        } => (toc, toc_offset),
        TocLocation::NeedRange { .. } => panic!("the whole blob was given as the tail"),
    };
    let index = TocIndex::new(&toc, size).expect("index");
    let digest = source.insert(blob);
    LayerParts {
        digest,
        index,
        blob: LayerBlob {
            digest,
            size,
            toc_offset,
            source: Arc::new(MemorySource::new()),
            verify: true,
        },
    }
}

/// Builds an image of `blobs` (bottom first) over one memory source and a fresh store.
pub fn image_from_blobs(blobs: Vec<Vec<u8>>, opts: FsOptions, single: bool) -> TestImage {
    image_with_source(blobs, opts, single, |m| Arc::new(m))
}

/// As [`image_from_blobs`], with the memory source wrapped by `wrap` (fault injection).
pub fn image_with_source(
    blobs: Vec<Vec<u8>>,
    opts: FsOptions,
    single: bool,
    wrap: impl FnOnce(MemorySource) -> Arc<dyn regfs_blob::BlobSource>,
) -> TestImage {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let cache = ChunkCache::new(
        ChunkStore::open(store_dir.path(), None).expect("store"),
        PlannerConfig::default(),
    );
    let mut source = MemorySource::new();
    let raw: Vec<Bytes> = blobs.iter().map(|b| Bytes::from(b.clone())).collect();
    let parts: Vec<LayerParts> = blobs
        .into_iter()
        .map(|b| layer_parts(b, &mut source))
        .collect();
    let source = wrap(source);
    let layers: Vec<FsLayer> = parts
        .into_iter()
        .map(|p| FsLayer {
            digest: p.digest,
            handle: cache.layer(LayerBlob {
                source: source.clone(),
                ..p.blob
            }),
            index: p.index,
        })
        .collect();
    let digests: Vec<Digest> = layers.iter().map(|l| l.digest).collect();
    let opts = FsOptions {
        cache: Some(cache.clone()),
        ..opts
    };
    let fs = if single {
        ImageFs::single_layer(layers.into_iter().next().expect("one layer"), opts)
    } else {
        ImageFs::new(layers, opts)
    }
    .expect("build image fs");
    TestImage {
        fs: Arc::new(fs),
        cache,
        blobs: digests.into_iter().zip(raw).collect(),
        store_dir,
    }
}

pub fn image(tars: &[Vec<u8>], chunk_size: u64) -> TestImage {
    let blobs = tars.iter().map(|t| to_estargz(t, chunk_size)).collect();
    image_from_blobs(blobs, FsOptions::default(), false)
}

/// Fails the test, naming the tool, when a required program is missing.
pub fn require_tool(name: &str) {
    regfs_testkit::require_tool(name, name);
}

/// The oracle: extracts each layer with GNU tar into `dir`, applying the layer's whiteouts and
/// opaque markers to what lower layers left, and replacing a directory by a non-directory (and
/// back) the way a container runtime's layer applier does.
pub fn oracle_extract(tars: &[Vec<u8>], dir: &Path) {
    require_tool("tar");
    for (i, t) in tars.iter().enumerate() {
        let mut archive = tar::Archive::new(&t[..]);
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let path = entry.path().expect("path").into_owned();
            let name = path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            let parent = dir.join(path.parent().unwrap_or(Path::new("")));
            let name_bytes = name.as_bytes();
            if name_bytes == b".wh..wh..opq" {
                if let Ok(rd) = std::fs::read_dir(&parent) {
                    for e in rd {
                        remove_any(&e.expect("dirent").path());
                    }
                }
            } else if let Some(target) = name_bytes.strip_prefix(b".wh.") {
                remove_any(&parent.join(OsStr::from_bytes(target)));
            } else {
                let target = dir.join(&path);
                let is_dir = entry.header().entry_type().is_dir();
                if let Ok(m) = std::fs::symlink_metadata(&target)
                    && m.is_dir() != is_dir
                {
                    remove_any(&target);
                }
            }
        }
        let tar_path = dir.with_extension(format!("layer{i}.tar"));
        std::fs::write(&tar_path, t).expect("write layer tar");
        let out = Command::new("tar")
            // Whiteout files are never created (removing them afterwards would touch the
            // directories' mtimes).
            .args([
                "-x",
                "--exclude=.wh.*",
                "--xattrs",
                "--xattrs-include=*",
                "--same-owner",
                "--numeric-owner",
                "-p",
                "-f",
            ])
            .arg(&tar_path)
            .arg("-C")
            .arg(dir)
            .output()
            .expect("run tar");
        assert!(
            out.status.success(),
            "tar -x failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&tar_path).expect("remove layer tar");
    }
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).expect("rm -r"),
        Ok(_) => std::fs::remove_file(p).expect("rm"),
        Err(_) => {}
    }
}

/// Everything compared about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Observed {
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub mtime: i64,
    pub rdev: u64,
    pub link: Option<OsString>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub content_digest: Option<Digest>,
}

fn kind_of(ft: std::fs::FileType) -> FileKind {
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_char_device() {
        FileKind::Char
    } else if ft.is_block_device() {
        FileKind::Block
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else {
        FileKind::Reg
    }
}

/// The xattrs of a path on a real filesystem (not following symlinks).
// nix has no xattr calls and no xattr crate is in the workspace; the two libc calls below only
// write into buffers of the length they are given.
#[allow(unsafe_code)]
pub fn real_xattrs(p: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: c is NUL-terminated, the buffer is valid for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).expect("name");
        let mut val = vec![0u8; 64 * 1024];
        // SAFETY: as above.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        assert!(m >= 0, "lgetxattr {}", p.display());
        val.truncate(m as usize);
        out.insert(OsStr::from_bytes(name).to_owned(), val);
    }
    out
}

/// Observes a path of a real directory tree (the oracle or a mount).
pub fn observe_real(p: &Path) -> Observed {
    let m = std::fs::symlink_metadata(p).expect("lstat");
    let kind = kind_of(m.file_type());
    Observed {
        kind,
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: if kind == FileKind::Dir { 0 } else { m.size() },
        nlink: m.nlink(),
        mtime: m.mtime(),
        rdev: m.rdev(),
        link: (kind == FileKind::Symlink)
            .then(|| std::fs::read_link(p).expect("readlink").into_os_string()),
        xattrs: real_xattrs(p),
        content_digest: (kind == FileKind::Reg)
            .then(|| Digest::sha256(&std::fs::read(p).expect("read"))),
    }
}

/// Observes an inode through the plain API, reading content in pieces of `piece` bytes.
pub async fn observe_fs(fs: &ImageFs, ino: Ino) -> Observed {
    let a = fs.getattr(ino).expect("getattr");
    let mut xattrs = BTreeMap::new();
    for n in fs.listxattr(ino).expect("listxattr") {
        xattrs.insert(
            n.to_owned(),
            fs.getxattr(ino, n).expect("getxattr").to_vec(),
        );
    }
    let content_digest = if a.kind == FileKind::Reg {
        fs.open(ino).expect("open");
        let mut data = Vec::new();
        while (data.len() as u64) < a.size {
            let b = fs
                .read(ino, data.len() as u64, 128 * 1024)
                .await
                .expect("read");
            assert!(!b.is_empty(), "short read at {}", data.len());
            data.extend_from_slice(&b);
        }
        Some(Digest::sha256(&data))
    } else {
        None
    };
    let mtime = a
        .mtime
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Observed {
        kind: a.kind,
        perm: u32::from(a.perm),
        uid: a.uid,
        gid: a.gid,
        size: if a.kind == FileKind::Dir { 0 } else { a.size },
        nlink: u64::from(a.nlink),
        mtime,
        rdev: a.rdev,
        link: (a.kind == FileKind::Symlink).then(|| fs.readlink(ino).expect("readlink").to_owned()),
        xattrs,
        content_digest,
    }
}

/// Compares the whole tree under `dir` (the oracle) with the filesystem, entry by entry; returns
/// the number of entries compared. The root's own attributes are not compared (the oracle's root
/// is a temporary directory).
pub async fn compare_with_oracle(fs: &ImageFs, dir: &Path) -> usize {
    let mut count = 0;
    let mut stack: Vec<(PathBuf, Ino)> = vec![(dir.to_path_buf(), Ino::ROOT)];
    while let Some((real, ino)) = stack.pop() {
        let mut want: Vec<OsString> = std::fs::read_dir(&real)
            .expect("read_dir")
            .map(|e| e.expect("dirent").file_name())
            .collect();
        want.sort();
        let got: Vec<OsString> = fs
            .readdir(ino)
            .expect("readdir")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(got, want, "entries of {}", real.display());
        for name in want {
            let path = real.join(&name);
            let attr = fs.lookup(ino, &name).expect("lookup");
            let expected = observe_real(&path);
            let observed = observe_fs(fs, attr.ino).await;
            assert_eq!(observed, expected, "{}", path.display());
            count += 1;
            if expected.kind == FileKind::Dir {
                stack.push((path, attr.ino));
            }
        }
    }
    count
}

#[allow(unused_imports)] // each test binary uses a subset
pub use regfs_testkit::{pattern, require_fuse};

/// Compares two real trees (the oracle and a mount) entry by entry; returns the count.
pub fn compare_real_trees(want: &Path, got: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![(want.to_path_buf(), got.to_path_buf())];
    while let Some((w, g)) = stack.pop() {
        let names = |d: &Path| {
            let mut v: Vec<OsString> = std::fs::read_dir(d)
                .expect("read_dir")
                .map(|e| e.expect("dirent").file_name())
                .collect();
            v.sort();
            v
        };
        let wn = names(&w);
        assert_eq!(names(&g), wn, "entries of {}", g.display());
        for n in wn {
            let (wp, gp) = (w.join(&n), g.join(&n));
            let expected = observe_real(&wp);
            assert_eq!(observe_real(&gp), expected, "{}", gp.display());
            count += 1;
            if expected.kind == FileKind::Dir {
                stack.push((wp, gp));
            }
        }
    }
    count
}

/// The chunk size `three_layers` is meant for: small, so a few hundred KiB make multi-chunk files.
pub const THREE_LAYERS_CHUNK: u64 = 64 * 1024;

/// Three layers exercising every merge rule; see the comments per layer.
pub fn three_layers() -> Vec<Vec<u8>> {
    let mut l0 = LayerTar::new();
    l0.dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        .file_with(
            "etc/hosts",
            b"127.0.0.1 localhost\n",
            0o644,
            0,
            0,
            MTIME - 100,
        )
        .hardlink("etc/hosts.link", "etc/hosts")
        .file_with_xattrs(
            "etc/x",
            b"xattrs",
            &[("user.a", b"1"), ("user.bin", b"\x00\x01\xff")],
        )
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file_with("usr/bin/tool", &pattern(5000, 1), 0o4755, 0, 0, MTIME)
        .file_with("usr/bin/sg", b"#!/bin/sh\n", 0o2755, 0, 5, MTIME)
        .symlink("usr/bin/link", "tool")
        .dir("data", 0o750)
        .file("data/big", &pattern(300_000, 2))
        .file("data/empty", b"")
        .hardlink("data/hl_across", "etc/passwd")
        .dir("opq", 0o755)
        .file("opq/a", b"a")
        .dir("opq/sub", 0o755)
        .file("opq/sub/b", b"b")
        .dir("replace_dir", 0o755)
        .dir("replace_dir/sub", 0o755)
        .file("replace_dir/sub/x", b"x")
        .file("file_to_dir", b"was a file")
        .dir("var", 0o755)
        .file("var/gone", b"deleted later")
        .dir("var/gonedir", 0o755)
        .file("var/gonedir/f", b"deleted later too")
        .file("var/keep", b"kept")
        .dir("dev", 0o755)
        .device("dev/null", false, 1, 3)
        .device("dev/sda", true, 8, 0)
        .fifo("dev/fifo")
        .dir_owned("tmp", 0o1777, 0, 0, MTIME)
        .dir_owned("home", 0o700, 1000, 1000, MTIME - 5);
    // Upper layer: whiteouts, an opaque dir, replaced files, type changes.
    let mut l1 = LayerTar::new();
    l1.dir("etc", 0o755)
        .file_with(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/bash\nuser:x:1000:1000::/home:/bin/sh\n",
            0o640,
            1000,
            1000,
            MTIME + 10,
        )
        .whiteout("etc", "hosts.link")
        .dir("var", 0o755)
        .whiteout("var", "gone")
        .whiteout("var", "gonedir")
        .dir("opq", 0o711)
        .opaque("opq")
        .file("opq/c", b"c")
        .file("replace_dir", b"now a file")
        .dir("file_to_dir", 0o755)
        .file("file_to_dir/inside", b"inside")
        .whiteout("", "nonexistent");
    // Top layer: upper dir attributes win, more files, a whole dir whited out and recreated.
    let mut l2 = LayerTar::new();
    l2.dir_owned("usr", 0o755, 0, 0, MTIME + 20)
        .dir_owned("usr/bin", 0o700, 0, 0, MTIME + 20)
        .file(
            "usr/bin/new",
            &pattern(2 * THREE_LAYERS_CHUNK as usize + 17, 3),
        )
        .whiteout("", "home")
        .dir_owned("home", 0o755, 0, 0, MTIME + 30)
        .file("home/fresh", b"fresh");
    vec![l0.finish(), l1.finish(), l2.finish()]
}

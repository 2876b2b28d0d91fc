//! Deterministic layer tars with the corner cases a layer format must carry, built with the
//! `tar` crate, plus the one fact every tree comparison needs from a tar: which directories it
//! never names (their mtimes are whatever the extractor's clock said).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{Builder, EntryType, Header};

/// The size of the multi-chunk file in [`rich_layer`]: with a 64 KiB chunk it spans 5 chunks,
/// the last one short.
pub const BIG_FILE_SIZE: usize = 4 * 65536 + 12345;

/// Name of the multi-chunk file in [`rich_layer`].
pub const BIG_FILE: &str = "bin/big";

/// A name longer than the 100-byte tar name field (one component, so no USTAR prefix split can
/// hold it: the `tar` crate has to emit a GNU `././@LongLink` entry).
pub fn long_name() -> String {
    format!("long/{}.txt", "n".repeat(120))
}

/// Pseudo-random bytes so that compression has work to do and chunks differ.
pub use regfs_testkit::pattern as noise;

/// Fixed mtimes keep the layers deterministic; distinct ones catch a mixed-up assignment.
const MTIME: u64 = 1_600_000_000;

struct LayerBuilder {
    b: Builder<Vec<u8>>,
    n: u64,
}

impl LayerBuilder {
    fn new() -> LayerBuilder {
        LayerBuilder {
            b: Builder::new(Vec::new()),
            n: 0,
        }
    }

    fn header(&mut self, kind: EntryType, mode: u32, owner: (u64, u64), gnu: bool) -> Header {
        let mut h = if gnu {
            Header::new_gnu()
        } else {
            Header::new_ustar()
        };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        self.n += 1;
        h.set_mtime(MTIME + self.n * 3600);
        h.set_size(0);
        h
    }

    fn xattrs(&mut self, pairs: &[(&str, &[u8])]) {
        let records: Vec<(String, &[u8])> = pairs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("pax");
    }

    /// A PAX `mtime` record (with its fraction) for the next entry.
    fn pax_mtime(&mut self, value: &str) {
        self.b
            .append_pax_extensions([("mtime", value.as_bytes())])
            .expect("pax");
    }

    fn dir(&mut self, name: &str, mode: u32, owner: (u64, u64)) {
        let mut h = self.header(EntryType::Directory, mode, owner, false);
        self.b
            .append_data(&mut h, name, std::io::empty())
            .expect("dir");
    }

    fn file(&mut self, name: &[u8], mode: u32, owner: (u64, u64), data: &[u8]) {
        let gnu = name.len() > 100;
        let mut h = self.header(EntryType::Regular, mode, owner, gnu);
        h.set_size(data.len() as u64);
        self.b
            .append_data(&mut h, Path::new(OsStr::from_bytes(name)), data)
            .expect("file");
    }

    fn link(&mut self, kind: EntryType, name: &str, target: &str) {
        let gnu = name.len() > 100 || target.len() > 100;
        let mut h = self.header(kind, 0o777, (0, 0), gnu);
        self.b.append_link(&mut h, name, target).expect("link");
    }

    fn node(&mut self, kind: EntryType, name: &str, mode: u32, dev: (u32, u32)) {
        let mut h = self.header(kind, mode, (0, 0), false);
        h.set_device_major(dev.0).expect("major");
        h.set_device_minor(dev.1).expect("minor");
        self.b
            .append_data(&mut h, name, std::io::empty())
            .expect("node");
    }

    /// An entry whose name bytes go into the header as given (the `tar` crate would normalise
    /// `./` away).
    fn raw_name_entry(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        owner: (u64, u64),
        data: &[u8],
    ) {
        let mut h = self.header(kind, mode, owner, false);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).expect("raw entry");
    }

    fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

/// Every entry kind and attribute a layer can carry: PAX xattrs (also on dirs, and a non-UTF-8
/// value), a GNU long name and long symlink target, a non-UTF-8 name, hardlinks (to a
/// multi-chunk file and to a file with xattrs), absolute/relative/dangling symlinks, char/block
/// devices, a fifo, setuid/setgid/sticky, non-root owners, an empty file, a file of several
/// chunks ([`BIG_FILE`]), names with JSON-escaped characters and a directory that only appears
/// implicitly (`long/`).
pub fn rich_layer() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.dir("etc/", 0o755, (0, 0));
    l.xattrs(&[("user.greeting", b"hi"), ("user.bin", b"\xff\xfe\xfd")]);
    l.file(b"etc/hello.txt", 0o644, (1000, 1000), b"hello world\n");
    l.file(b"etc/empty", 0o600, (0, 0), b"");
    l.file(b"etc/a&b<c>.txt", 0o640, (0, 42), b"escaped json name\n");
    l.xattrs(&[("user.dir", b"yes")]);
    l.dir("bin/", 0o755, (0, 0));
    l.file(BIG_FILE.as_bytes(), 0o755, (0, 0), &noise(BIG_FILE_SIZE, 7));
    l.file(b"bin/suid", 0o4755, (0, 0), b"#!/bin/sh\necho suid\n");
    l.file(b"bin/sgid", 0o2711, (0, 50), b"#!/bin/sh\necho sgid\n");
    l.dir("tmp/", 0o1777, (0, 0));
    l.dir("srv/", 0o2775, (1000, 50));
    l.link(EntryType::Symlink, "etc/link", "hello.txt");
    l.link(EntryType::Symlink, "abs", "/etc/hello.txt");
    l.link(EntryType::Symlink, "dangling", "nowhere/at/all");
    l.link(
        EntryType::Symlink,
        "longlink",
        &format!("/{}", "t".repeat(150)),
    );
    l.link(EntryType::Link, "bin/big-hard", BIG_FILE);
    l.link(EntryType::Link, "etc/hello-hard", "etc/hello.txt");
    l.dir("dev/", 0o755, (0, 0));
    l.node(EntryType::Char, "dev/null", 0o666, (1, 3));
    l.node(EntryType::Block, "dev/loop0", 0o660, (7, 0));
    l.node(EntryType::Fifo, "dev/fifo", 0o644, (0, 0));
    l.file(long_name().as_bytes(), 0o644, (0, 0), b"long name\n");
    l.dir("weird/", 0o755, (0, 0));
    l.file(b"weird/caf\xe9.txt", 0o644, (0, 0), b"latin-1 name\n");
    // Sub-second PAX mtimes, one rounding up and one down, on a directory and on files: the TOC
    // keeps whole seconds, `tar -x` (and `regfs extract`) the exact time.
    l.pax_mtime("1796277857.677720136");
    l.dir("subsecond/", 0o755, (0, 0));
    l.pax_mtime("1796277857.677720136");
    l.file(b"subsecond/up", 0o644, (0, 0), b"rounds up\n");
    l.pax_mtime("1796277000.25");
    l.file(b"subsecond/down", 0o644, (0, 0), b"rounds down\n");
    l.finish()
}

/// A layer as umoci and many builders write it: files only, no directory entries at all, and a
/// whiteout file.
pub fn umoci_layer() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.file(b"usr/local/bin/tool", 0o755, (0, 0), &noise(70_000, 3));
    l.file(b"usr/share/doc/tool/README", 0o644, (0, 0), b"read me\n");
    l.file(b"etc/.wh.old.conf", 0o644, (0, 0), b"");
    l.link(EntryType::Link, "usr/local/bin/tool2", "usr/local/bin/tool");
    l.finish()
}

/// A layer as `docker save` writes it: every name under `./`, with an explicit `./` root entry
/// (unusual mode and owner, so that applying it to DIR is visible), and duplicate file and
/// directory entries whose later entry wins.
pub fn dot_slash_layer() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.raw_name_entry(b"./", EntryType::Directory, 0o750, (0, 7), b"");
    l.raw_name_entry(b"./etc/", EntryType::Directory, 0o755, (0, 0), b"");
    l.raw_name_entry(
        b"./etc/os-release",
        EntryType::Regular,
        0o644,
        (0, 0),
        b"first\n",
    );
    l.raw_name_entry(
        b"./etc/os-release",
        EntryType::Regular,
        0o600,
        (0, 0),
        b"second wins\n",
    );
    l.raw_name_entry(b"./usr/bin/", EntryType::Directory, 0o755, (0, 0), b"");
    l.raw_name_entry(
        b"./usr/bin/app",
        EntryType::Regular,
        0o755,
        (0, 0),
        &noise(100_000, 11),
    );
    // A second entry for a directory: its mode and mtime replace the first one's.
    l.raw_name_entry(b"./etc/", EntryType::Directory, 0o700, (0, 0), b"");
    l.finish()
}

/// Cleans a tar name the way the eStargz reader does (§2.7 of the spec): no leading `/` or `./`,
/// no trailing `/`, `..` cannot climb above the root; the root is `""`.
pub fn clean_name(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Directories that a tar never names (including the root `""` when it has no root entry): both
/// extractors create them on demand, so their mtimes are not part of the layer.
pub fn implicit_dirs(tar: &[u8]) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut parents = BTreeSet::from([String::new()]);
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let name = clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
        if entry.header().entry_type() == EntryType::Directory {
            named.insert(name.clone());
        }
        let mut p = name.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            parents.insert(parent.to_string());
            p = parent;
        }
        std::io::copy(&mut entry, &mut std::io::sink()).expect("skip payload");
    }
    parents.difference(&named).cloned().collect()
}

/// The exact header mtime (seconds, nanoseconds) of every directory a tar names (last entry
/// wins).
pub fn dir_mtimes(tar: &[u8]) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        if entry.header().entry_type() == EntryType::Directory {
            let name = clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
            let mut mtime = (
                i64::try_from(entry.header().mtime().expect("mtime")).expect("mtime"),
                0,
            );
            // A PAX `mtime` record overrides the header field (and may carry a fraction).
            if let Some(exts) = entry.pax_extensions().expect("pax") {
                for ext in exts {
                    let ext = ext.expect("pax record");
                    if ext.key() == Ok("mtime") {
                        mtime = exact_pax_time(ext.value().expect("pax mtime"));
                    }
                }
            }
            out.insert(name, mtime);
        }
    }
    out
}

/// Directories whose mtime GNU `tar -x` leaves at extraction time instead of the header's.
///
/// GNU tar sets a directory's attributes as soon as the archive moves on to an entry outside it
/// (`apply_nonancestor_delayed_set_stat`); an entry that later lands in that directory again (a
/// hardlink or symlink listed after a sibling directory, as in [`rich_layer`]) bumps its mtime to
/// "now". An extractor that sets directory mtimes last keeps the header's value, which is what
/// the layer says; tests compare these directories against the header instead of against tar.
pub fn dirs_tar_x_touches_late(tar: &[u8]) -> BTreeSet<String> {
    let mut delayed: Vec<String> = Vec::new();
    let mut finalized = BTreeSet::new();
    let mut touched = BTreeSet::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("tar entries") {
        let entry = entry.expect("tar entry");
        let name = clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
        delayed.retain(|d| {
            let ancestor = d.is_empty() || name.starts_with(&format!("{d}/"));
            if !ancestor {
                finalized.insert(d.clone());
            }
            ancestor
        });
        let parent = name.rsplit_once('/').map_or("", |(p, _)| p).to_string();
        if finalized.contains(&parent) {
            touched.insert(parent);
        }
        if entry.header().entry_type() == EntryType::Directory {
            finalized.remove(&name);
            delayed.push(name);
        }
    }
    touched
}

/// A non-negative PAX time (`secs[.frac]`) as (seconds, nanoseconds).
pub fn exact_pax_time(v: &str) -> (i64, i64) {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().expect("pax seconds");
    let nanos: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    (secs, nanos.parse().expect("pax fraction"))
}

//! Extraction: materialise a layer through the random-access reader, the same path a lazy
//! mount takes, verifying every chunk against the TOC.
//!
//! The result equals GNU `tar -x --xattrs --same-owner -p --numeric-owner` of the same blob,
//! minus the layer metadata (`stargz.index.json` and the root landmarks):
//!
//! 1. entries in TOC order; every path is created relative to an open directory fd
//!    (`openat(O_NOFOLLOW)` per component), so neither `..` (names are cleaned) nor a symlink in
//!    the tree can send a write outside DIR; missing parents are created `0755 root:root`;
//! 2. a regular file is written to a temp name beside its final name, every chunk verified,
//!    the whole-file digest checked, owner/mode/xattrs/mtime set on the open fd, then renamed:
//!    a file with wrong content never appears under its name;
//! 3. hardlinks last (a TOC may name a link before its target);
//! 4. directory mtimes last, in TOC order (a later duplicate entry wins), since creating
//!    children changes them.
//!
//! Names are the TOC's: a non-UTF-8 tar name reaches the TOC (a JSON string) with U+FFFD in
//! place of each invalid byte, as the reference writer does, so it is created that way here and
//! in a lazy mount alike.
//!
//! Modification times: the TOC rounds them to whole seconds, `tar -x` restores the exact time of
//! the tar header (PAX `mtime=1796277857.677720136`). So extraction also reads the blob's tar
//! stream once, front to back, and takes each entry's exact mtime from its header, provided it
//! rounds to the TOC's second (the TOC is what was verified; a header that disagrees with it is
//! an error, not a silent choice). A lazy mount serves the TOC's whole seconds, as the reference
//! does. Access times are not restored, as with `tar -x`.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, makedev,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use regfs_estargz::{
    Digest, DigestWriter, EntryId, EntryKind, IndexEntry, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK,
    Reader, clean_name,
};

use crate::error::{Context, bail, required};
use crate::{Error, Result};

/// Root-level names that are layer metadata, not layer content (spec §3).
const LANDMARKS: [&str; 2] = [PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK];

/// An entry's modification time: seconds and nanoseconds since the epoch.
type Mtime = (i64, u32);

/// Extracts the eStargz blob at `blob` into `dir` (created if missing), verifying every chunk;
/// with `toc_digest`, the TOC must hash to it first.
pub fn extract(blob: &Path, dir: &Path, toc_digest: Option<&Digest>) -> Result<()> {
    let file = File::open(blob).with_context(|| format!("opening {}", blob.display()))?;
    let reader = Reader::open(file).with_context(|| format!("reading {}", blob.display()))?;
    if let Some(want) = toc_digest {
        reader
            .verify_toc_digest(want)
            .with_context(|| format!("verifying the TOC of {}", blob.display()))?;
    }
    // A corrupt stream stops this pass early; the verifying pass below then names what is
    // wrong (a file, a chunk), and should it somehow succeed, the stream error still fails the
    // extraction, as it fails `tar -x`.
    let mut exact = HashMap::new();
    let headers = exact_mtimes(blob, &mut exact)
        .with_context(|| format!("reading the tar headers of {}", blob.display()));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let mut x = Extraction {
        reader: &reader,
        root: OwnedFd::from(root),
        exact,
        dir_times: Vec::new(),
        tmp_seq: 0,
    };
    x.run()
        .with_context(|| format!("extracting {} into {}", blob.display(), dir.display()))?;
    headers
}

/// The exact mtime of every tar entry of the blob into `times`, by cleaned name (a later
/// duplicate wins, as in the TOC), from one sequential pass over the decompressed stream.
fn exact_mtimes(blob: &Path, times: &mut HashMap<String, Mtime>) -> Result<()> {
    let file = File::open(blob).with_context(|| format!("opening {}", blob.display()))?;
    let stream = flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(1 << 20, file));
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().context("reading the tar stream")? {
        let mut entry = entry.context("reading a tar header")?;
        let name = clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
        let mut mtime = None;
        if let Some(pax) = entry.pax_extensions().context("reading PAX headers")? {
            for ext in pax {
                let ext = ext.context("reading a PAX record")?;
                if ext.key_bytes() == b"mtime" {
                    mtime = std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(parse_pax_time);
                }
            }
        }
        let mtime = match mtime {
            Some(t) => t,
            None => (
                i64::try_from(entry.header().mtime().context("reading an mtime")?).unwrap_or(0),
                0,
            ),
        };
        times.insert(name, mtime);
        // Skip the payload without buffering it.
        io::copy(&mut entry, &mut io::sink()).context("reading a tar entry")?;
    }
    Ok(())
}

/// A PAX time (`1796277857.677720136`, `-1.5`, `12`) as seconds and nanoseconds, or `None`.
fn parse_pax_time(s: &str) -> Option<Mtime> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    // Nanoseconds: the first nine fraction digits, right-padded.
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + d;
    }
    Some(if !neg {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    })
}

/// Whether `exact` rounds to the TOC's `whole` second (half away from zero, as the reference
/// writes it).
fn rounds_to(exact: Mtime, whole: Mtime) -> bool {
    let (secs, nanos) = exact;
    let rounded = if secs >= 0 {
        if nanos >= 500_000_000 { secs + 1 } else { secs }
    } else if nanos > 0 && nanos <= 500_000_000 {
        // e.g. -1.5 is (-2, 500_000_000): rounds away from zero to -2.
        secs
    } else if nanos > 0 {
        secs + 1
    } else {
        secs
    };
    rounded == whole.0
}

struct Extraction<'r> {
    reader: &'r Reader<File>,
    root: OwnedFd,
    /// Exact mtimes from the tar headers.
    exact: HashMap<String, Mtime>,
    /// Directories and their mtimes, in creation order.
    dir_times: Vec<(String, Mtime)>,
    tmp_seq: u64,
}

impl Extraction<'_> {
    fn run(&mut self) -> Result<()> {
        let index = self.reader.index();
        let mut hardlinks = Vec::new();
        for id in index.entries_in_toc_order() {
            let item = index.entry(id);
            if LANDMARKS.contains(&item.name.as_str()) {
                continue;
            }
            match item.kind {
                EntryKind::Hardlink => hardlinks.push(item),
                _ => self
                    .create(id, item)
                    .with_context(|| format!("entry {:?}", item.name))?,
            }
        }
        for item in hardlinks {
            let target = required!(
                index
                    .lookup(&item.link_name)
                    .map(|id| index.entry(id))
                    .filter(
                        |t| t.kind != EntryKind::Hardlink && !LANDMARKS.contains(&t.name.as_str())
                    ),
                "{:?} is a hardlink but the linkname {:?} isn't found",
                item.name,
                item.link_name
            );
            self.hardlink(item, &target.name)
                .with_context(|| format!("linking {:?} to {:?}", item.name, item.link_name))?;
        }
        for (name, mtime) in &self.dir_times {
            let (parent, base) = self.parent_of(name)?;
            match &base {
                None => set_times_fd(self.root.as_fd(), *mtime),
                Some(base) => set_times_at(parent.as_fd(), base, *mtime),
            }
            .with_context(|| format!("setting the mtime of {name:?}"))?;
        }
        Ok(())
    }

    /// The entry's exact mtime: its tar header's, when that agrees with the TOC.
    fn mtime(&self, item: &IndexEntry) -> Result<Mtime> {
        match self.exact.get(&item.name) {
            Some(&exact) if rounds_to(exact, item.modtime) => Ok(exact),
            Some(&exact) => bail!(
                "{:?}: the tar header's mtime {}.{:09} does not round to the TOC's {}",
                item.name,
                exact.0,
                exact.1,
                item.modtime.0
            ),
            None => Ok(item.modtime),
        }
    }

    fn create(&mut self, id: EntryId, item: &IndexEntry) -> Result<()> {
        let mtime = self.mtime(item)?;
        let (parent, base) = self.parent_of(&item.name)?;
        let Some(base) = base else {
            // The root entry: its attributes apply to DIR itself, as with tar -x.
            if item.kind != EntryKind::Dir {
                bail!(
                    "the root entry is a {}, want a directory",
                    item.kind.as_str()
                );
            }
            let root = self.root.try_clone().context("duplicating the root fd")?;
            set_owner_mode_xattrs_fd(root.as_fd(), item)?;
            self.dir_times.push((item.name.clone(), mtime));
            return Ok(());
        };
        let pfd = parent.as_fd();
        match item.kind {
            EntryKind::Dir => {
                match mkdirat(pfd, base.as_c_str(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        if !is_dir_at(pfd, &base)? {
                            unlinkat(pfd, base.as_c_str(), UnlinkatFlags::NoRemoveDir)
                                .context("removing a non-directory in the way")?;
                            mkdirat(pfd, base.as_c_str(), Mode::from_bits_truncate(0o700))
                                .context("mkdir")?;
                        }
                    }
                    Err(e) => return Err(e).context("mkdir"),
                }
                let dir = open_dir_at(pfd, &base).context("opening a directory")?;
                set_owner_mode_xattrs_fd(dir.as_fd(), item)?;
                self.dir_times.push((item.name.clone(), mtime));
            }
            EntryKind::Reg => self.write_file(id, item, pfd, &base, mtime)?,
            EntryKind::Symlink => {
                remove_non_dir(pfd, &base)?;
                symlinkat(cstring(&item.link_name)?.as_c_str(), pfd, base.as_c_str())
                    .context("symlink")?;
                self.set_attrs_at(pfd, &base, item, false, mtime)?;
            }
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                remove_non_dir(pfd, &base)?;
                let kind = match item.kind {
                    EntryKind::Char => SFlag::S_IFCHR,
                    EntryKind::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = makedev(u64::from(item.dev_major), u64::from(item.dev_minor));
                mknodat(
                    pfd,
                    base.as_c_str(),
                    kind,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .context("mknod")?;
                self.set_attrs_at(pfd, &base, item, true, mtime)?;
            }
            EntryKind::Hardlink | EntryKind::Chunk => {}
        }
        Ok(())
    }

    /// Writes a regular file under a temp name, verifying every chunk, then renames it.
    fn write_file(
        &mut self,
        id: EntryId,
        item: &IndexEntry,
        pfd: BorrowedFd<'_>,
        base: &CStr,
        mtime: Mtime,
    ) -> Result<()> {
        self.tmp_seq += 1;
        let tmp = cstring(&format!(
            ".regfs-extract.{}.{}",
            std::process::id(),
            self.tmp_seq
        ))?;
        let fd = openat(
            pfd,
            tmp.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .context("creating a temp file")?;
        let mut file = File::from(fd);
        let result = self.fill_file(id, item, &mut file).and_then(|()| {
            set_owner_mode_xattrs_fd(file.as_fd(), item)?;
            set_times_fd(file.as_fd(), mtime).context("setting the mtime")?;
            Ok(())
        });
        drop(file);
        if let Err(e) = result {
            let _ = unlinkat(pfd, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        if let Err(e) = renameat(pfd, tmp.as_c_str(), pfd, base) {
            let _ = unlinkat(pfd, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e).context("renaming into place");
        }
        Ok(())
    }

    fn fill_file(&self, id: EntryId, item: &IndexEntry, file: &mut File) -> Result<()> {
        let chunks = self.reader.index().chunks(id);
        let mut whole = DigestWriter::new();
        let mut written = 0u64;
        let mut out = io::BufWriter::with_capacity(1 << 20, file);
        for chunk in chunks {
            if chunk.chunk_offset != written {
                bail!(
                    "{:?}: chunk at file offset {} follows byte {written}",
                    item.name,
                    chunk.chunk_offset
                );
            }
            if chunk.digest.is_none() && item.digest.is_none() {
                bail!(
                    "{:?}: chunk at file offset {} has no digest to verify",
                    item.name,
                    chunk.chunk_offset
                );
            }
            // A digest mismatch already names the chunk; decode errors name only the member.
            let data = match self.reader.read_chunk(chunk) {
                Ok(d) => d,
                Err(e @ regfs_estargz::Error::ChunkDigestMismatch { .. }) => {
                    return Err(e).context(format!("{:?}", item.name));
                }
                Err(e) => {
                    return Err(e).context(format!("chunk at file offset {}", chunk.chunk_offset));
                }
            };
            whole.update(&data);
            out.write_all(&data)
                .with_context(|| format!("writing {:?}", item.name))?;
            written = written.saturating_add(data.len() as u64);
        }
        out.flush()
            .with_context(|| format!("writing {:?}", item.name))?;
        if written != item.size {
            bail!(
                "{:?}: chunks hold {written} bytes, the TOC says {}",
                item.name,
                item.size
            );
        }
        if let Some(want) = item.digest {
            let got = whole.finish();
            if got != want {
                bail!("{:?}: file digest {got}, want {want}", item.name);
            }
        }
        Ok(())
    }

    fn hardlink(&mut self, item: &IndexEntry, target: &str) -> Result<()> {
        let (tparent, tbase) = self.parent_of(target)?;
        let tbase = required!(tbase, "a hardlink to the root directory");
        let (parent, base) = self.parent_of(&item.name)?;
        let base = required!(base, "the root entry is a hardlink");
        remove_non_dir(parent.as_fd(), &base)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, as tar -x does.
        linkat(
            tparent.as_fd(),
            tbase.as_c_str(),
            parent.as_fd(),
            base.as_c_str(),
            AtFlags::empty(),
        )
        .context("link")?;
        Ok(())
    }

    /// Owner, mode (not for symlinks), xattrs and mtime of a non-regular, non-dir entry.
    fn set_attrs_at(
        &self,
        pfd: BorrowedFd<'_>,
        base: &CStr,
        item: &IndexEntry,
        chmod: bool,
        mtime: Mtime,
    ) -> Result<()> {
        fchownat(
            pfd,
            base,
            Some(Uid::from_raw(item.uid)),
            Some(Gid::from_raw(item.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .context("chown")?;
        if chmod {
            // base is a device node or fifo just created (no symlink to follow).
            fchmodat(
                pfd,
                base,
                Mode::from_bits_truncate(item.mode),
                FchmodatFlags::FollowSymlink,
            )
            .context("chmod")?;
        }
        if !item.xattrs.is_empty() {
            // The node cannot be opened for fsetxattr without side effects (a fifo blocks, a
            // device opens hardware); name it through the parent fd instead.
            let path = format!(
                "/proc/self/fd/{}/{}",
                pfd.as_raw_fd(),
                required!(base.to_str().ok(), "non-UTF-8 name {base:?}")
            );
            for (k, v) in &item.xattrs {
                xattr::set(&path, k, v).with_context(|| format!("setting xattr {k}"))?;
            }
        }
        set_times_at(pfd, base, mtime).context("setting the mtime")?;
        Ok(())
    }

    /// Opens the parent directory of `name` under the root, component by component without
    /// following symlinks, creating missing parents. Returns it with the base name (`None` for
    /// the root itself).
    fn parent_of(&self, name: &str) -> Result<(OwnedFd, Option<CString>)> {
        let mut fd = self.root.try_clone().context("duplicating the root fd")?;
        if name.is_empty() {
            return Ok((fd, None));
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let base = parts.pop().unwrap_or_default();
        for (i, part) in parts.iter().enumerate() {
            let c = cstring(part)?;
            let next = match open_dir_at(fd.as_fd(), &c) {
                Ok(d) => d,
                Err(Errno::ENOENT) => {
                    mkdirat(fd.as_fd(), c.as_c_str(), Mode::from_bits_truncate(0o755))
                        .context("mkdir")?;
                    // Without the umask: 0755 exactly, as tar -x makes missing parents.
                    fchmodat(
                        fd.as_fd(),
                        c.as_c_str(),
                        Mode::from_bits_truncate(0o755),
                        FchmodatFlags::FollowSymlink,
                    )
                    .context("chmod")?;
                    open_dir_at(fd.as_fd(), &c).context("opening a directory")?
                }
                Err(e) => {
                    bail!(
                        "{:?} is not a directory inside the target (a symlink or file is in the way): {e}",
                        parts[..=i].join("/")
                    )
                }
            };
            fd = next;
        }
        Ok((fd, Some(cstring(base)?)))
    }
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Invalid(format!("name {s:?} contains a NUL byte")))
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn is_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).context("stat")?;
    Ok(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// Removes an existing non-directory at `name` (later entries replace earlier ones, as tar -x).
fn remove_non_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            bail!("a directory is in the way of {name:?}")
        }
        Ok(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).context("unlink"),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).context("stat"),
    }
}

/// chown, then chmod (chown clears setuid/setgid), then xattrs (after chown, which clears
/// `security.capability`), on an open file or directory.
fn set_owner_mode_xattrs_fd(fd: BorrowedFd<'_>, item: &IndexEntry) -> Result<()> {
    fchown(
        fd,
        Some(Uid::from_raw(item.uid)),
        Some(Gid::from_raw(item.gid)),
    )
    .context("chown")?;
    fchmod(fd, Mode::from_bits_truncate(item.mode)).context("chmod")?;
    if !item.xattrs.is_empty() {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        for (k, v) in &item.xattrs {
            // The fd is a file or directory, never a symlink: following /proc's link is right.
            xattr::set_deref(&path, k, v).with_context(|| format!("setting xattr {k}"))?;
        }
    }
    Ok(())
}

fn times(mtime: Mtime) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::UTIME_OMIT,
        TimeSpec::new(mtime.0, i64::from(mtime.1)),
    )
}

fn set_times_fd(fd: BorrowedFd<'_>, mtime: Mtime) -> nix::Result<()> {
    let (atime, mtime) = times(mtime);
    futimens(fd, &atime, &mtime)
}

fn set_times_at(dir: BorrowedFd<'_>, name: &CStr, mtime: Mtime) -> nix::Result<()> {
    let (atime, mtime) = times(mtime);
    // NoFollowSymlink sets a symlink's own times.
    utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let cases = [
            ("1796277857.677720136", Some((1796277857, 677720136))),
            ("12", Some((12, 0))),
            ("12.5", Some((12, 500_000_000))),
            ("0.000000001", Some((0, 1))),
            ("1.1234567899", Some((1, 123456789))),
            ("-1.5", Some((-2, 500_000_000))),
            ("-3", Some((-3, 0))),
            ("", None),
            ("abc", None),
            ("1.2x", None),
            (".5", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_pax_time(input), want, "{input:?}");
        }
    }

    #[test]
    fn rounding_matches_the_reference_writer() {
        assert!(rounds_to((10, 499_999_999), (10, 0)));
        assert!(rounds_to((10, 500_000_000), (11, 0)));
        assert!(!rounds_to((10, 500_000_000), (10, 0)));
        assert!(rounds_to((10, 0), (10, 0)));
        // -1.5 rounds away from zero to -2; -1.25 = (-2, 750_000_000) rounds to -1.
        assert!(rounds_to((-2, 500_000_000), (-2, 0)));
        assert!(rounds_to((-2, 750_000_000), (-1, 0)));
    }
}

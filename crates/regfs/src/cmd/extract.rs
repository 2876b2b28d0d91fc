//! `regfs extract BLOB DIR`: materialise a layer through the random-access reader, the same
//! path a lazy mount takes, verifying every chunk against the TOC.
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
//! in a lazy mount alike; mtimes have the TOC's whole-second precision.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use regfs_estargz::{
    Digest, DigestWriter, EntryId, EntryKind, IndexEntry, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK,
    Reader,
};

/// Root-level names that are layer metadata, not layer content (spec §3).
const LANDMARKS: [&str; 2] = [PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK];

#[derive(clap::Args)]
pub struct Args {
    /// The eStargz (or legacy stargz) blob.
    blob: PathBuf,
    /// Target directory (created if missing).
    dir: PathBuf,
    /// Require the TOC JSON to have this digest (the layer's `toc.digest` annotation).
    #[arg(long)]
    toc_digest: Option<Digest>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file =
        File::open(&args.blob).with_context(|| format!("opening {}", args.blob.display()))?;
    let reader = Reader::open(file).with_context(|| format!("reading {}", args.blob.display()))?;
    if let Some(want) = &args.toc_digest {
        reader
            .verify_toc_digest(want)
            .with_context(|| format!("verifying the TOC of {}", args.blob.display()))?;
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let root = File::open(&args.dir).with_context(|| format!("opening {}", args.dir.display()))?;
    let mut x = Extraction {
        reader: &reader,
        root: OwnedFd::from(root),
        dir_times: Vec::new(),
        tmp_seq: 0,
    };
    x.run().with_context(|| {
        format!(
            "extracting {} into {}",
            args.blob.display(),
            args.dir.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

struct Extraction<'r> {
    reader: &'r Reader<File>,
    root: OwnedFd,
    /// Directories and their mtimes, in creation order.
    dir_times: Vec<(String, (i64, u32))>,
    tmp_seq: u64,
}

impl Extraction<'_> {
    fn run(&mut self) -> anyhow::Result<()> {
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
            let target = index
                .lookup(&item.link_name)
                .map(|id| index.entry(id))
                .filter(|t| t.kind != EntryKind::Hardlink && !LANDMARKS.contains(&t.name.as_str()))
                .with_context(|| {
                    format!(
                        "{:?} is a hardlink but the linkname {:?} isn't found",
                        item.name, item.link_name
                    )
                })?;
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

    fn create(&mut self, id: EntryId, item: &IndexEntry) -> anyhow::Result<()> {
        let (parent, base) = self.parent_of(&item.name)?;
        let Some(base) = base else {
            // The root entry: its attributes apply to DIR itself, as with tar -x.
            if item.kind != EntryKind::Dir {
                bail!(
                    "the root entry is a {}, want a directory",
                    item.kind.as_str()
                );
            }
            let root = self.root.try_clone()?;
            set_owner_mode_xattrs_fd(root.as_fd(), item)?;
            self.dir_times.push((item.name.clone(), item.modtime));
            return Ok(());
        };
        let pfd = parent.as_fd();
        match item.kind {
            EntryKind::Dir => {
                match mkdirat(pfd, &base, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if !is_dir_at(pfd, &base)? {
                            unlinkat(pfd, &base, false)?;
                            mkdirat(pfd, &base, 0o700)?;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                let dir = open_dir_at(pfd, &base)?;
                set_owner_mode_xattrs_fd(dir.as_fd(), item)?;
                self.dir_times.push((item.name.clone(), item.modtime));
            }
            EntryKind::Reg => self.write_file(id, item, pfd, &base)?,
            EntryKind::Symlink => {
                remove_non_dir(pfd, &base)?;
                symlinkat(&cstring(&item.link_name)?, pfd, &base)?;
                self.set_attrs_at(pfd, &base, item, false)?;
            }
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                remove_non_dir(pfd, &base)?;
                let kind = match item.kind {
                    EntryKind::Char => libc::S_IFCHR,
                    EntryKind::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let dev = libc::makedev(item.dev_major, item.dev_minor);
                // SAFETY: pfd is a valid directory fd and base a NUL-terminated name.
                cvt(unsafe { libc::mknodat(pfd.as_raw_fd(), base.as_ptr(), kind | 0o600, dev) })?;
                self.set_attrs_at(pfd, &base, item, true)?;
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
    ) -> anyhow::Result<()> {
        self.tmp_seq += 1;
        let tmp = CString::new(format!(
            ".regfs-extract.{}.{}",
            std::process::id(),
            self.tmp_seq
        ))?;
        // SAFETY: pfd is a valid directory fd and tmp a NUL-terminated name.
        let fd = cvt(unsafe {
            libc::openat(
                pfd.as_raw_fd(),
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })?;
        // SAFETY: openat returned a fresh fd that nothing else owns.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let result = self.fill_file(id, item, &mut file).and_then(|()| {
            set_owner_mode_xattrs_fd(file.as_fd(), item)?;
            set_times_fd(file.as_fd(), item.modtime)?;
            Ok(())
        });
        drop(file);
        if let Err(e) = result {
            let _ = unlinkat(pfd, &tmp, false);
            return Err(e);
        }
        // SAFETY: both names are NUL-terminated and relative to the same valid directory fd.
        let rc = unsafe {
            libc::renameat(
                pfd.as_raw_fd(),
                tmp.as_ptr(),
                pfd.as_raw_fd(),
                base.as_ptr(),
            )
        };
        if let Err(e) = cvt(rc) {
            let _ = unlinkat(pfd, &tmp, false);
            return Err(e.into());
        }
        Ok(())
    }

    fn fill_file(&self, id: EntryId, item: &IndexEntry, file: &mut File) -> anyhow::Result<()> {
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
            let data = self.reader.read_chunk(chunk).map_err(|e| match e {
                e @ regfs_estargz::Error::ChunkDigestMismatch { .. } => anyhow::Error::new(e),
                e => anyhow::Error::new(e)
                    .context(format!("chunk at file offset {}", chunk.chunk_offset)),
            })?;
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

    fn hardlink(&mut self, item: &IndexEntry, target: &str) -> anyhow::Result<()> {
        let (tparent, tbase) = self.parent_of(target)?;
        let Some(tbase) = tbase else {
            bail!("a hardlink to the root directory")
        };
        let (parent, base) = self.parent_of(&item.name)?;
        let Some(base) = base else {
            bail!("the root entry is a hardlink")
        };
        remove_non_dir(parent.as_fd(), &base)?;
        // SAFETY: both names are NUL-terminated, both fds valid directories; flags 0 = do not
        // follow a symlink target.
        cvt(unsafe {
            libc::linkat(
                tparent.as_raw_fd(),
                tbase.as_ptr(),
                parent.as_raw_fd(),
                base.as_ptr(),
                0,
            )
        })?;
        Ok(())
    }

    /// Owner, mode (not for symlinks), xattrs and mtime of a non-regular, non-dir entry.
    fn set_attrs_at(
        &self,
        pfd: BorrowedFd<'_>,
        base: &CStr,
        item: &IndexEntry,
        chmod: bool,
    ) -> anyhow::Result<()> {
        // SAFETY: valid dir fd + NUL-terminated name.
        cvt(unsafe {
            libc::fchownat(
                pfd.as_raw_fd(),
                base.as_ptr(),
                item.uid,
                item.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        if chmod {
            // SAFETY: as above; base is a device node or fifo we just created (no symlink).
            cvt(unsafe { libc::fchmodat(pfd.as_raw_fd(), base.as_ptr(), item.mode, 0) })?;
        }
        if !item.xattrs.is_empty() {
            // The node cannot be opened for fsetxattr without side effects (a fifo blocks, a
            // device opens hardware); name it through the parent fd instead.
            let path = CString::new(format!(
                "/proc/self/fd/{}/{}",
                pfd.as_raw_fd(),
                base.to_str().context("non-UTF-8 name")?
            ))?;
            for (k, v) in &item.xattrs {
                let key = cstring(k)?;
                // SAFETY: NUL-terminated strings and a valid buffer of v.len() bytes.
                cvt(unsafe {
                    libc::lsetxattr(path.as_ptr(), key.as_ptr(), v.as_ptr().cast(), v.len(), 0)
                })
                .with_context(|| format!("setting xattr {k}"))?;
            }
        }
        set_times_at(pfd, base, item.modtime)?;
        Ok(())
    }

    /// Opens the parent directory of `name` under the root, component by component without
    /// following symlinks, creating missing parents. Returns it with the base name (`None` for
    /// the root itself).
    fn parent_of(&self, name: &str) -> anyhow::Result<(OwnedFd, Option<CString>)> {
        let mut fd = self.root.try_clone()?;
        if name.is_empty() {
            return Ok((fd, None));
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let base = parts.pop().unwrap_or_default();
        for (i, part) in parts.iter().enumerate() {
            let c = cstring(part)?;
            let next = match open_dir_at(fd.as_fd(), &c) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    mkdirat(fd.as_fd(), &c, 0o755)?;
                    // SAFETY: valid dir fd + NUL-terminated name of the dir just made.
                    cvt(unsafe { libc::fchmodat(fd.as_raw_fd(), c.as_ptr(), 0o755, 0) })?;
                    open_dir_at(fd.as_fd(), &c)?
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

fn cstring(s: &str) -> anyhow::Result<CString> {
    CString::new(s).with_context(|| format!("name {s:?} contains a NUL byte"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid dir fd + NUL-terminated name.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid dir fd + NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings, valid dir fd.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid dir fd + NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid dir fd, NUL-terminated name, and st points to writable stat storage.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled st.
    Ok(unsafe { st.assume_init() })
}

fn is_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<bool> {
    Ok(lstat_at(dir, name)?.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Removes an existing non-directory at `name` (later entries replace earlier ones, as tar -x).
fn remove_non_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match lstat_at(dir, name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way",
        )),
        Ok(_) => unlinkat(dir, name, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// chown, then chmod (chown clears setuid/setgid), then xattrs (after chown, which clears
/// `security.capability`), on an open file or directory.
fn set_owner_mode_xattrs_fd(fd: BorrowedFd<'_>, item: &IndexEntry) -> anyhow::Result<()> {
    // SAFETY: fd is a valid open file descriptor.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), item.uid, item.gid) }).context("chown")?;
    // SAFETY: as above.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), item.mode) }).context("chmod")?;
    for (k, v) in &item.xattrs {
        let key = cstring(k)?;
        // SAFETY: valid fd, NUL-terminated key, buffer of v.len() bytes.
        cvt(unsafe {
            libc::fsetxattr(fd.as_raw_fd(), key.as_ptr(), v.as_ptr().cast(), v.len(), 0)
        })
        .with_context(|| format!("setting xattr {k}"))?;
    }
    Ok(())
}

fn timespecs(mtime: (i64, u32)) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: i64::from(mtime.1),
        },
    ]
}

fn set_times_fd(fd: BorrowedFd<'_>, mtime: (i64, u32)) -> io::Result<()> {
    let ts = timespecs(mtime);
    // SAFETY: valid fd and a two-element timespec array.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) }).map(drop)
}

fn set_times_at(dir: BorrowedFd<'_>, name: &CStr, mtime: (i64, u32)) -> io::Result<()> {
    let ts = timespecs(mtime);
    // SAFETY: valid dir fd, NUL-terminated name, two-element timespec array; NOFOLLOW sets a
    // symlink's own times.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

//! The FUSE adapter: a thin translation from `fuser` 0.18 callbacks to [`ImageFs`] calls.
//!
//! Everything but `read` answers from the inode table on the FUSE thread that received the
//! request. `read` is spawned onto the tokio runtime and the task replies itself, so a read
//! waiting for the network never blocks a FUSE thread (fuser replies are `Send`).
//!
//! Kernel settings and why:
//! - several FUSE threads, each with its own cloned `/dev/fuse` fd (`n_threads`, `clone_fd`);
//! - reads and readahead of up to 1 MiB (`max_pages` 256, from `max_write`/`max_readahead`),
//!   the size of a small file fetched whole;
//! - `FOPEN_KEEP_CACHE` and long attribute/entry TTLs: the image never changes while mounted;
//! - `readdirplus`, so `ls -l` and `find` get attributes without one lookup per name;
//! - `FUSE_PASSTHROUGH` with `max_stack_depth` 1 (2 would make overlayfs on top of this mount
//!   fail with EINVAL): a file that is a single chunk already in the store is handed to the
//!   kernel, which reads the store file directly. If the kernel refuses, reads stay in userspace.
//!   The kernel fails an open that mixes modes on one inode, so an inode already open in
//!   userspace mode is opened so again until its last handle is released; passthrough opens
//!   carry no `FOPEN_KEEP_CACHE` (the kernel answers EIO to that combination).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, SessionACL,
};

use crate::image::BLOCK_SIZE;
use crate::{Attr, Error, FileKind, ImageFs, Ino};

/// FUSE request size: 1 MiB = 256 pages, the most the kernel allows by default.
const MAX_REQUEST: u32 = 1 << 20;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Runtime the reads run on; `None` = the runtime `mount` is called from.
    pub runtime: Option<tokio::runtime::Handle>,
    /// FUSE worker threads (each with its own `/dev/fuse` fd).
    pub threads: usize,
    /// Let other users (containers) access the mount.
    pub allow_other: bool,
    /// Try `FUSE_PASSTHROUGH` for fully cached single-chunk files (needs init-namespace root,
    /// Linux ≥ 6.9 and a store on a non-stacked filesystem).
    pub passthrough: bool,
    /// Attribute and entry cache lifetime.
    pub ttl: Duration,
    /// The source name shown in `/proc/mounts`.
    pub fsname: String,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            runtime: None,
            // Enough to keep lookups flowing while reads wait on tokio; the CPU has few cores.
            threads: 4,
            allow_other: false,
            passthrough: false,
            // The image is immutable; a day is "forever" without overflow risk in the kernel.
            ttl: Duration::from_secs(24 * 3600),
            fsname: "regfs".into(),
        }
    }
}

/// A mounted image. Dropping it unmounts (and waits for the FUSE threads).
///
/// Unmounting never waits for the network: reads still in flight are answered `EIO` first, then
/// the mount is detached (lazily if a process still has a file open; the FUSE threads end when
/// the last such file is closed).
pub struct MountGuard {
    pub(crate) session: Option<fuser::BackgroundSession>,
    pub(crate) dir: PathBuf,
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// The FUSE device of a handed-over connection (see `handover`), for resends.
    pub(crate) device: Option<std::os::fd::OwnedFd>,
}

impl MountGuard {
    /// Where the image is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Asks the kernel to send again the requests an earlier server of this connection read and
    /// never answered (after a handover; a no-op for an ordinary mount).
    pub fn resend_pending(&self) -> Result<(), Error> {
        match &self.device {
            Some(d) => crate::handover::resend_pending(std::os::fd::AsFd::as_fd(d))
                .map_err(|e| Error::mount("resending pending requests of", &self.dir, e.into())),
            None => Ok(()),
        }
    }

    /// Unmounts and waits for the FUSE threads, reporting failures (drop ignores them).
    pub fn unmount(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.shutdown.send_replace(true);
        unmount(&self.dir, Unmount::DetachIfBusy)
            .map_err(|e| Error::mount("unmounting", &self.dir, e))?;
        session
            .join()
            .map_err(|e| Error::mount("joining the FUSE threads of", &self.dir, e))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "unmount failed");
        }
    }
}

/// How [`unmount`] treats a mount that a process still uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmount {
    /// Fail with EBUSY.
    Strict,
    /// Detach it (`MNT_DETACH`) when busy: it disappears now and dies with its last user.
    DetachIfBusy,
    /// Detach it at once.
    Detach,
}

/// Unmounts `dir`: the one unmount routine of regfs (the mount guard and `regfs umount`).
pub fn unmount(dir: &Path, how: Unmount) -> io::Result<()> {
    use nix::mount::{MntFlags, umount2};
    let first = match how {
        Unmount::Detach => MntFlags::MNT_DETACH,
        Unmount::Strict | Unmount::DetachIfBusy => MntFlags::empty(),
    };
    match umount2(dir, first) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) if how == Unmount::DetachIfBusy => {
            umount2(dir, MntFlags::MNT_DETACH).map_err(io::Error::from)
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Whether `dir` is a mount point right now (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts `fs` read-only on `dir`.
pub fn mount(fs: Arc<ImageFs>, dir: &Path, opts: MountOptions) -> Result<MountGuard, Error> {
    let (adapter, mut cfg, shutdown) = session_parts(fs, dir, &opts)?;
    // Each FUSE thread reads its own cloned fd: no contention on one request queue.
    cfg.clone_fd = true;
    let session =
        fuser::spawn_mount(adapter, dir, &cfg).map_err(|e| Error::mount("mounting", dir, e))?;
    Ok(MountGuard {
        session: Some(session),
        dir: dir.to_path_buf(),
        shutdown,
        device: None,
    })
}

/// The adapter, fuser's configuration and the shutdown switch of a mount of `fs` on `dir`:
/// what [`mount`] and a handed-over connection (`handover`) have in common.
pub(crate) fn session_parts(
    fs: Arc<ImageFs>,
    dir: &Path,
    opts: &MountOptions,
) -> Result<(FuseFs, fuser::Config, tokio::sync::watch::Sender<bool>), Error> {
    let runtime = match opts.runtime.clone() {
        Some(rt) => rt,
        None => tokio::runtime::Handle::try_current()
            .map_err(|_| Error::NoRuntime(dir.to_path_buf()))?,
    };
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("regfs".into()),
        // The kernel checks permissions against the modes and owners from the TOC.
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    if opts.allow_other {
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(opts.threads.max(1));
    let (shutdown, stopping) = tokio::sync::watch::channel(false);
    let adapter = FuseFs {
        fs,
        runtime,
        ttl: opts.ttl,
        passthrough: AtomicBool::new(opts.passthrough),
        opens: Mutex::new(HashMap::new()),
        stopping,
    };
    Ok((adapter, cfg, shutdown))
}

pub(crate) struct FuseFs {
    fs: Arc<ImageFs>,
    runtime: tokio::runtime::Handle,
    ttl: Duration,
    /// Cleared when the kernel lacks passthrough or refuses a backing file.
    passthrough: AtomicBool,
    /// Open inodes: their mode and handle count (see `open_mode`).
    opens: Mutex<HashMap<u64, OpenInode>>,
    /// Becomes true when unmounting: reads still waiting are answered EIO.
    stopping: tokio::sync::watch::Receiver<bool>,
}

struct OpenInode {
    /// `Some` when the inode is open in passthrough mode.
    backing: Option<Arc<BackingId>>,
    count: u64,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Dir => FileType::Directory,
        FileKind::Reg => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Char => FileType::CharDevice,
        FileKind::Block => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks(),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        // FUSE carries the 32-bit encoding (12-bit major, 20-bit minor as the kernel's
        // new_encode_dev); glibc's 64-bit makedev differs above major 255 / minor 255.
        rdev: fuse_rdev(a.rdev),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn fuse_rdev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

impl FuseFs {
    /// Registers one open of `ino` and decides its mode. The kernel refuses to mix modes on one
    /// inode, so an inode open in userspace mode stays so until its last handle is released,
    /// and one open in passthrough mode reuses its backing id.
    fn open_mode(&self, ino: Ino, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        let mut opens = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = opens.get_mut(&ino.0) {
            open.count += 1;
            return open.backing.clone();
        }
        let backing = self.backing_for(ino, reply).map(Arc::new);
        opens.insert(
            ino.0,
            OpenInode {
                backing: backing.clone(),
                count: 1,
            },
        );
        backing
    }

    fn backing_for(&self, ino: Ino, reply: &ReplyOpen) -> Option<BackingId> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let path = self.fs.passthrough_path(ino)?;
        let file = File::open(&path).ok()?;
        match reply.open_backing(&file) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::info!(error = %e, "kernel refused a passthrough backing file; reading in userspace");
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    fn fill_dir(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(u64, Attr, &OsStr) -> bool,
    ) -> Result<(), Error> {
        let ino = Ino(ino.0);
        // Offsets: 1 = ".", 2 = "..", 3 + i = entry i; the kernel passes back the last one seen.
        let mut next = offset;
        if next == 0 {
            let attr = self.fs.getattr(ino)?;
            if add(1, attr, OsStr::new(".")) {
                return Ok(());
            }
            next = 1;
        }
        if next == 1 {
            let attr = self.fs.getattr(self.fs.parent(ino)?)?;
            if add(2, attr, OsStr::new("..")) {
                return Ok(());
            }
            next = 2;
        }
        let mut i = (next - 2) as usize;
        while let Some((attr, name)) = self.fs.dir_entry(ino, i)? {
            if add(i as u64 + 3, attr, name) {
                break;
            }
            i += 1;
        }
        Ok(())
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, cfg: &mut KernelConfig) -> io::Result<()> {
        let _ = cfg.set_max_readahead(MAX_REQUEST);
        let _ = cfg.set_max_write(MAX_REQUEST);
        let _ = cfg.add_capabilities(
            InitFlags::FUSE_MAX_PAGES
                | InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_CACHE_SYMLINKS,
        );
        if self.passthrough.load(Ordering::Relaxed) {
            let ok = cfg.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && cfg.set_max_stack_depth(1).is_ok();
            if !ok {
                tracing::info!("kernel lacks FUSE passthrough; reading in userspace");
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(Ino(parent.0), name) {
            Ok(a) => reply.entry(&self.ttl, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(Ino(ino.0)) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let ino = Ino(ino.0);
        if let Err(e) = self.fs.open(ino) {
            reply.error(errno(&e));
            return;
        }
        match self.open_mode(ino, &reply) {
            // KEEP_CACHE is not combined with passthrough: the kernel fails such opens with EIO.
            Some(id) => reply.opened_passthrough(FileHandle(ino.0), FopenFlags::empty(), &id),
            None => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let mut stopping = self.stopping.clone();
        self.runtime.spawn(async move {
            tokio::select! {
                read = fs.read(Ino(ino.0), offset, size) => match read {
                    Ok(bytes) => reply.data(&bytes),
                    Err(e) => reply.error(errno(&e)),
                },
                _ = stopping.wait_for(|stop| *stop) => reply.error(Errno::EIO),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut opens = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = opens.get_mut(&ino.0) {
            open.count = open.count.saturating_sub(1);
            if open.count == 0 {
                // Drops the backing id once no handle uses it.
                opens.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.dir_len(Ino(ino.0)) {
            // The listing never changes: let the kernel cache it.
            Ok(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.fill_dir(ino, offset, |off, attr, name| {
            reply.add(INodeNo(attr.ino.0), off, file_type(attr.kind), name)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl;
        let res = self.fill_dir(ino, offset, |off, attr, name| {
            reply.add(
                INodeNo(attr.ino.0),
                off,
                name,
                &ttl,
                &file_attr(&attr),
                Generation(0),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            0,
            0,
            s.files,
            0,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(Ino(ino.0), name) {
            Ok(v) => xattr_reply(reply, v, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(Ino(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(n));
                    buf.push(0);
                }
                xattr_reply(reply, &buf, size);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions makes the kernel check modes; only existence is ours to answer.
        match self.fs.getattr(Ino(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// `size == 0` asks for the length; a too-small buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len <= size {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

#[cfg(test)]
mod mountinfo_tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        let cases = [
            (r"/plain", "/plain"),
            (r"/with\040space", "/with space"),
            (r"/tab\011and\134backslash", "/tab\tand\\backslash"),
            (r"/short\04", r"/short\04"),
        ];
        for (raw, want) in cases {
            assert_eq!(unescape_mountinfo(raw), want, "{raw}");
        }
    }

    #[test]
    fn the_root_is_a_mountpoint_and_a_fresh_dir_is_not() {
        assert!(is_mounted(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
    }
}

//! FUSE connections that outlive the process serving them.
//!
//! ```text
//!  keeper (tiny, holds the /dev/fuse fd, never serves)
//!    │ stdin = the same open /dev/fuse
//!    ▼
//!  server 1: mount(2) with fd=0 ─ reads INIT ─ saves it ─ fuser session ─ serves ─ ✗ killed
//!  server 2: (takeover) replays the saved INIT to a new fuser session ─ FUSE_NOTIFY_RESEND ─ serves
//! ```
//!
//! The kernel keeps a FUSE connection alive as long as one file refers to its `/dev/fuse`
//! device: requests then wait in the kernel instead of failing with `ENOTCONN`. So the
//! [`keep`]er opens the device, hands it to a server process as its stdin, and outlives it;
//! when the server dies while the directory is still mounted, the keeper starts another one
//! with `takeover`. All servers share one open file description (no `FUSE_DEV_IOC_CLONE`), so
//! requests a dead server had read but not answered stay on that description's processing list,
//! and [`resend_pending`] (`FUSE_NOTIFY_RESEND`, Linux 6.9) puts them back in the queue for the
//! new server: a read in flight completes after the restart instead of failing.
//!
//! A new fuser session insists on a `FUSE_INIT` handshake, which the kernel sends only once per
//! connection. So every server runs its handshake over a socket pair: the first one reads the
//! kernel's INIT from the device, records it ([`InitRequest`]), feeds it to fuser and passes
//! fuser's reply on to the kernel; a takeover feeds the recorded INIT and drops the reply (the
//! kernel already has one). Then the session's socket is replaced by the device in place
//! (`dup2`), and the session serves the device.
//!
//! What the new server must answer the same way, it does: inode numbers come from the TOCs
//! (deterministic), file handles are the inode numbers, directory offsets are indexes.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::fuse::{MountGuard, MountOptions, is_mounted, session_parts};
use crate::{Error, ImageFs};

/// `FUSE_INIT`'s opcode.
const FUSE_INIT: u32 = 26;
/// `FUSE_NOTIFY_RESEND`: the kernel queues again every request read but not answered.
const FUSE_NOTIFY_RESEND: i32 = 7;
/// `fuse_in_header`: len u32, opcode u32, unique u64, nodeid u64, uid, gid, pid u32, extlen u16,
/// padding u16.
const IN_HEADER_LEN: usize = 40;
/// The kernel refuses reads of `/dev/fuse` into a smaller buffer than a whole request.
const READ_BUFFER: usize = (1 << 20) + 4096;
/// A server that dies this often within [`CRASH_WINDOW`] is not restarted again.
const MAX_CRASHES: usize = 5;
/// See [`MAX_CRASHES`].
const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// The kernel's `FUSE_INIT` request of a connection, as the first server read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitRequest(Vec<u8>);

impl InitRequest {
    /// Checks that `bytes` are one whole `FUSE_INIT` request.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<InitRequest, Error> {
        let bad = |why: String| Error::mount("reading the FUSE INIT record", "", invalid(why));
        if bytes.len() < IN_HEADER_LEN {
            return Err(bad(format!(
                "{} bytes is shorter than a header",
                bytes.len()
            )));
        }
        let word = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if word(0) as usize != bytes.len() {
            return Err(bad(format!(
                "header says {} bytes, record has {}",
                word(0),
                bytes.len()
            )));
        }
        if word(4) != FUSE_INIT {
            return Err(bad(format!("opcode {} is not FUSE_INIT", word(4))));
        }
        Ok(InitRequest(bytes))
    }

    /// The request's bytes, as stored for a takeover.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Opens a new FUSE device (one connection, not mounted yet).
pub fn open_device() -> Result<OwnedFd, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(OwnedFd::from)
        .map_err(|e| Error::mount("opening /dev/fuse for", "", e))
}

/// Mounts the connection `device` read-only on `dir` with `mount(2)` (needs root), and reads
/// the kernel's INIT request that mounting sends.
pub fn mount_device(
    device: BorrowedFd<'_>,
    dir: &Path,
    opts: &MountOptions,
) -> Result<InitRequest, Error> {
    use nix::mount::{MsFlags, mount};
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        device.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    mount(
        Some(opts.fsname.as_str()),
        dir,
        Some("fuse.regfs"),
        MsFlags::MS_RDONLY,
        Some(data.as_str()),
    )
    .map_err(|e| Error::mount("mounting", dir, e.into()))?;
    let mut buf = vec![0u8; READ_BUFFER];
    let n = nix::unistd::read(device, &mut buf)
        .map_err(|e| Error::mount("reading FUSE INIT of", dir, e.into()))?;
    buf.truncate(n);
    InitRequest::from_bytes(buf)
}

/// Whether a server starts a connection or takes one over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The first server: its INIT reply goes to the kernel.
    Fresh,
    /// A later server: the kernel is initialized already; requests an earlier server left
    /// unanswered are sent again.
    Takeover,
}

/// Serves `fs` on the FUSE connection `device`, already mounted on `dir` and initialized with
/// `init` (see the module doc). Dropping the guard unmounts, as with [`crate::mount`].
pub fn serve_device(
    fs: Arc<ImageFs>,
    device: OwnedFd,
    dir: &Path,
    opts: &MountOptions,
    init: &InitRequest,
    start: Start,
) -> Result<MountGuard, Error> {
    let io = |op: &'static str| move |e: nix::Error| Error::mount(op, dir, e.into());
    let (adapter, cfg, shutdown) = session_parts(fs, dir, opts)?;
    let acl = cfg.acl;
    let (session_end, our_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io("creating the handshake socket of"))?;
    nix::unistd::write(&our_end, init.as_bytes()).map_err(io("replaying FUSE INIT to"))?;
    let session = fuser::Session::from_fd(adapter, session_end, acl, cfg)
        .map_err(|e| Error::mount("starting the FUSE session of", dir, e))?;
    let mut reply = vec![0u8; 64 * 1024];
    let n = nix::unistd::read(&our_end, &mut reply).map_err(io("reading the INIT reply for"))?;
    if start == Start::Fresh {
        nix::unistd::write(&device, &reply[..n]).map_err(io("answering FUSE INIT of"))?;
    }
    drop(our_end);
    replace_fd(&session, &device).map_err(|e| Error::mount("handing the device to", dir, e))?;
    let session = session
        .spawn()
        .map_err(|e| Error::mount("starting the FUSE threads of", dir, e))?;
    if start == Start::Takeover {
        resend_pending(device.as_fd()).map_err(io("resending pending requests of"))?;
    }
    Ok(MountGuard {
        session: Some(session),
        dir: dir.to_path_buf(),
        shutdown,
        device: Some(device),
    })
}

/// Serves `fs` on the kept connection `device`, as a server started by the [`keep`]er does:
/// [`Start::Fresh`] mounts it on `dir` and records the kernel's INIT in the file `record`;
/// [`Start::Takeover`] replays the INIT recorded there.
pub fn serve_kept(
    fs: Arc<ImageFs>,
    device: OwnedFd,
    dir: &Path,
    opts: &MountOptions,
    record: &Path,
    start: Start,
) -> Result<MountGuard, Error> {
    let init = match start {
        Start::Takeover => {
            let bytes = std::fs::read(record)
                .map_err(|e| Error::mount("reading the INIT record", record, e))?;
            InitRequest::from_bytes(bytes)?
        }
        Start::Fresh => {
            let init = mount_device(device.as_fd(), dir, opts)?;
            if let Some(parent) = record.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::mount("creating the directory of", record, e))?;
            }
            std::fs::write(record, init.as_bytes())
                .map_err(|e| Error::mount("writing the INIT record", record, e))?;
            init
        }
    };
    serve_device(fs, device, dir, opts, &init, start)
}

/// Makes the session's handshake socket refer to `device` instead, keeping its fd number, so
/// that the session (which owns that number) reads the device from now on.
#[allow(unsafe_code)] // dup2 onto an fd owned elsewhere; see the SAFETY comment
fn replace_fd(session: &impl AsFd, device: &OwnedFd) -> std::io::Result<()> {
    let target = session.as_fd().as_raw_fd();
    // SAFETY: dup2 only touches the fd table: `target` stays open (it atomically refers to the
    // device's file instead of the socket, whose last reference this closes), and its owner,
    // the session, keeps owning and eventually closing it. No memory is involved.
    let rc = unsafe { libc::dup2(device.as_raw_fd(), target) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to queue again every request of `device`'s connection that was read but
/// never answered (by a server that died).
pub fn resend_pending(device: BorrowedFd<'_>) -> nix::Result<()> {
    // fuse_out_header: len u32, error i32 (the notification code), unique u64 (0 = notify).
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    nix::unistd::write(device, &msg).map(drop)
}

/// What the keeper tells a server it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerStart {
    /// How this server starts.
    pub start: Start,
    /// How many servers ran before it on this connection.
    pub restarts: u64,
}

/// Keeps the FUSE connection `device` (not mounted yet) served until `dir` is unmounted.
///
/// Each server is `command(start)` with the device as its stdin and a pipe as its stdout, on
/// which it writes `ready` once it serves; the first one mounts. `ready(pid)` is called once
/// the first server is ready. Whenever a server dies while `dir` is still mounted, another is
/// started with [`Start::Takeover`]; after [`MAX_CRASHES`] deaths within a minute the keeper
/// gives up and detaches the mount (so that readers get errors instead of waiting forever).
/// SIGTERM, SIGINT and SIGHUP are passed on to the server (which unmounts); SIGUSR1 hands the
/// connection over to a new server started from `command` (an upgrade: the new binary takes
/// over, then the old server is stopped and the requests it left are sent again).
pub fn keep(
    device: OwnedFd,
    dir: &Path,
    mut command: impl FnMut(ServerStart) -> Command,
    ready: impl FnOnce(u32),
) -> Result<(), Error> {
    let io = |op: &'static str| move |e: std::io::Error| Error::mount(op, dir, e);
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        mask.add(s);
    }
    // Children get a clean signal mask from std's spawn.
    mask.thread_block()
        .map_err(|e| io("blocking signals of the keeper of")(e.into()))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| io("watching signals of the keeper of")(e.into()))?;
    let mut restarts = 0;
    let mut server = spawn_server(
        &mut command,
        &device,
        ServerStart {
            start: Start::Fresh,
            restarts,
        },
    )
    .map_err(io("starting the server of"))?;
    if !server.ready {
        let status = server
            .child
            .wait()
            .map_err(io("waiting for the server of"))?;
        return Err(io("starting the server of")(std::io::Error::other(
            format!("the server exited ({status}) before it was ready"),
        )));
    }
    ready(server.child.id());
    let mut crashes: Vec<Instant> = Vec::new();
    loop {
        let sig = signals
            .read_signal()
            .map_err(|e| io("reading signals of the keeper of")(e.into()))?;
        let Some(sig) = sig.and_then(|s| Signal::try_from(s.ssi_signo as i32).ok()) else {
            continue;
        };
        match sig {
            Signal::SIGCHLD => {
                let Some(status) = server
                    .child
                    .try_wait()
                    .map_err(io("waiting for the server of"))?
                else {
                    continue;
                };
                if !is_mounted(dir) {
                    return Ok(());
                }
                crashes.retain(|t| t.elapsed() < CRASH_WINDOW);
                crashes.push(Instant::now());
                if crashes.len() > MAX_CRASHES {
                    tracing::error!(dir = %dir.display(), %status, "the server keeps dying; detaching the mount");
                    let _ = crate::unmount(dir, crate::Unmount::Detach);
                    return Err(io("serving")(std::io::Error::other(format!(
                        "the server died {} times within a minute (last: {status})",
                        crashes.len()
                    ))));
                }
                restarts += 1;
                tracing::warn!(dir = %dir.display(), %status, restarts, "the server died; starting another that takes over");
                server = spawn_server(
                    &mut command,
                    &device,
                    ServerStart {
                        start: Start::Takeover,
                        restarts,
                    },
                )
                .map_err(io("restarting the server of"))?;
            }
            Signal::SIGUSR1 => {
                restarts += 1;
                tracing::info!(dir = %dir.display(), restarts, "handing the mount over to a new server");
                let next = spawn_server(
                    &mut command,
                    &device,
                    ServerStart {
                        start: Start::Takeover,
                        restarts,
                    },
                )
                .map_err(io("starting the new server of"))?;
                if !next.ready {
                    // The new one failed: the old one keeps serving.
                    restarts -= 1;
                    let mut next = next;
                    let _ = next.child.kill();
                    let _ = next.child.wait();
                    tracing::error!(dir = %dir.display(), "the new server failed to start; the old one keeps serving");
                    continue;
                }
                let mut old = std::mem::replace(&mut server, next);
                let _ = old.child.kill();
                let _ = old.child.wait();
                // What the old server had read and not answered goes to the new one.
                if let Err(e) = resend_pending(device.as_fd()) {
                    tracing::warn!(dir = %dir.display(), error = %e, "resending pending requests failed");
                }
            }
            _ => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(server.child.id() as i32),
                    Signal::SIGTERM,
                );
            }
        }
    }
}

/// A started server and whether it reported ready.
struct Server {
    child: Child,
    ready: bool,
}

fn spawn_server(
    command: &mut impl FnMut(ServerStart) -> Command,
    device: &OwnedFd,
    start: ServerStart,
) -> std::io::Result<Server> {
    let mut child = command(start)
        .stdin(Stdio::from(device.try_clone()?))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    Ok(Server {
        child,
        ready: line.starts_with("ready"),
    })
}

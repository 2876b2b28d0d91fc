//! `run`: one container, from namespaces to exit status.
//!
//! `run` keeps the calling thread untouched. It spawns a *container thread*
//! which unshares mount, UTS, IPC, PID (and with `--net none` network)
//! namespaces — all of which Linux lets a single thread of a multi-threaded
//! process enter, unlike a user namespace — builds the root there (see
//! [`rootfs`](crate::rootfs)), pivots into it and forks the init (see
//! [`init`](crate::init)), which becomes PID 1 of the new PID namespace.
//!
//! Every mount lives only in the thread's private mount namespace, which
//! dies when the thread and the container's processes are gone: nothing
//! needs unmounting, and nothing is left on the host even when the command
//! (or this process) is killed. Only the empty scratch directory exists on
//! the host, removed when `run` returns.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::init::{ExecPlan, REPORT_LEN, Stage};
use crate::signals::Forwarding;
use crate::terminal::Terminal;
use crate::{ContainerSpec, Error, NetMode, rootfs, user};

/// Bound on the image's /etc/passwd and /etc/group: real ones are a few KiB;
/// a hostile image must not make us read gigabytes.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// Runs `spec` like `docker run` and returns the command's exit status
/// (128+N when it was killed by signal N).
///
/// Needs root. The lower directory is never modified; writes go to a tmpfs
/// or to `spec.upper`. Signals listed in the crate docs sent to this process
/// are forwarded to the command while it runs. Safe to call from several
/// threads at once: each call forks only after preparing everything the
/// child needs.
pub fn run(spec: &ContainerSpec) -> Result<i32, Error> {
    validate(spec)?;
    let lower = fs::canonicalize(&spec.lower)
        .map_err(|e| Error::io("resolve lower dir", &spec.lower, e))?;
    if !lower.is_dir() {
        return Err(Error::InvalidSpec {
            reason: format!("the lower dir {} is not a directory", lower.display()),
        });
    }
    let mut spec = spec.clone();
    if let Some(upper) = &spec.upper {
        fs::create_dir_all(upper).map_err(|e| Error::io("create upper dir", upper, e))?;
        spec.upper =
            Some(fs::canonicalize(upper).map_err(|e| Error::io("resolve upper dir", upper, e))?);
    }
    let scratch = tempfile::Builder::new()
        .prefix("regfs-run-")
        .tempdir()
        .map_err(|e| Error::io("create scratch dir in", std::env::temp_dir(), e))?;

    let spec = &spec;
    let scratch_path = scratch.path();
    let status = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("regfs-container".to_owned())
            .spawn_scoped(s, || contain(spec, &lower, scratch_path))
            .map_err(|e| Error::io("spawn container thread for", &lower, e))?
            .join()
            .map_err(|_| Error::ThreadPanicked)?
    });
    drop(scratch);
    status
}

fn validate(spec: &ContainerSpec) -> Result<(), Error> {
    let invalid = |reason: String| Err(Error::InvalidSpec { reason });
    if spec.args.is_empty() {
        return invalid("no command given and the image has no Entrypoint or Cmd".to_owned());
    }
    if !spec.workdir.starts_with('/') {
        return invalid(format!(
            "the working directory {:?} must be an absolute path",
            spec.workdir
        ));
    }
    if spec.hostname.is_empty() || spec.hostname.len() > 64 {
        return invalid(format!(
            "the hostname {:?} must have 1 to 64 bytes",
            spec.hostname
        ));
    }
    Ok(())
}

/// The container thread: namespaces, root, init, wait.
fn contain(spec: &ContainerSpec, lower: &Path, scratch: &Path) -> Result<i32, Error> {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.net == NetMode::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(|e| Error::sys("unshare namespaces of", lower, e))?;
    // The host's mounts are usually shared (systemd): make all of ours
    // private before mounting anything, or the mounts would leak out.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| Error::sys("make mounts private under", "/", e))?;

    let merged = rootfs::build(spec, lower, scratch)?;
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| Error::sys("set hostname", &spec.hostname, e))?;
    if spec.net == NetMode::None {
        loopback_up()?;
    }
    let argv_area = crate::init::own_argv_area();
    rootfs::pivot(&merged)?;

    let identity = user::resolve(
        spec.user.as_deref(),
        &read_account_file(Path::new("/etc/passwd"))?,
        &read_account_file(Path::new("/etc/group"))?,
        Path::new("/etc/passwd"),
        Path::new("/etc/group"),
    )?;
    let workdir = Path::new(&spec.workdir);
    if !workdir.is_dir() {
        fs::create_dir_all(workdir)
            .map_err(|e| Error::io("create working directory", workdir, e))?;
    }
    // Variables docker adds when the image and -e leave them unset.
    let mut env = spec.env.clone();
    let mut defaults = vec![
        format!("HOSTNAME={}", spec.hostname),
        format!("HOME={}", identity.home),
    ];
    if spec.tty {
        defaults.push("TERM=xterm".to_owned());
    }
    for default in defaults {
        let key = default.split('=').next().unwrap_or_default();
        if !env.iter().any(|e| e.split('=').next() == Some(key)) {
            env.push(default);
        }
    }
    let terminal = if spec.tty {
        Some(Terminal::open()?)
    } else {
        None
    };
    let plan = ExecPlan::new(
        &spec.args,
        &env,
        &spec.workdir,
        (identity.uid, identity.gid, &identity.groups),
        terminal.as_ref().map(|t| t.slave_fd()),
        argv_area,
    )
    .map_err(|_| Error::InvalidSpec {
        reason: "the command, environment or working directory contains a NUL byte".to_owned(),
    })?;

    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("create report pipe for", lower, e))?;
    let (start_read, start_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("create start pipe for", lower, e))?;
    let mut forwarding = Forwarding::install();
    // Block every signal across fork so the init starts with them queued
    // for its sigwaitinfo loop, never running this process's handlers.
    let mut saved = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut saved),
    )
    .map_err(|e| Error::sys("block signals for", lower, e))?;
    // SAFETY: the child only runs init_main, which makes async-signal-safe
    // system calls on the prepared plan and never returns.
    let fork = unsafe { nix::unistd::fork() };
    if let Ok(ForkResult::Child) = fork {
        // SAFETY: we are the forked child, signals blocked, root pivoted.
        unsafe { crate::init::init_main(&plan, report_write.as_raw_fd(), start_read.as_raw_fd()) }
    }
    // This thread keeps SIGPIPE blocked for good: writing the start byte to
    // an init that already died, or relaying to a closed stdout, must be an
    // EPIPE error, not a signal that kills the whole process. A pending
    // thread-directed SIGPIPE is discarded when the thread exits.
    let mut thread_mask = saved;
    thread_mask.add(nix::sys::signal::Signal::SIGPIPE);
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&thread_mask), None);
    let init = match fork {
        Ok(ForkResult::Parent { child }) => child,
        Ok(ForkResult::Child) => unreachable!("the child never returns from init_main"),
        Err(e) => return Err(Error::sys("fork the container init for", lower, e)),
    };
    drop(report_write);
    drop(start_read);
    forwarding.register(init.as_raw(), terminal.as_ref().map(|t| t.master_fd()));
    // A failed write means the init is already gone; wait_init reports it.
    let _ = nix::unistd::write(&start_write, b"g");
    drop(start_write);

    let report = read_report(report_read);
    let relayed = match (&report, terminal) {
        (None, Some(terminal)) => terminal.relay(),
        _ => Ok(()),
    };
    let status = wait_init(init, &mut forwarding);
    if let Some((stage, errno)) = report {
        return Err(report_error(stage, errno, spec));
    }
    relayed?;
    status
}

/// Reads the init's failure report; `None` means the command was exec'd.
fn read_report(pipe: OwnedFd) -> Option<(Stage, Errno)> {
    let mut buf = Vec::with_capacity(REPORT_LEN);
    let _ = fs::File::from(pipe)
        .take(REPORT_LEN as u64)
        .read_to_end(&mut buf);
    if buf.len() != REPORT_LEN {
        return None;
    }
    let stage = u32::from_ne_bytes(buf[..4].try_into().ok()?);
    let errno = i32::from_ne_bytes(buf[4..].try_into().ok()?);
    Some((Stage::from_u32(stage)?, Errno::from_raw(errno)))
}

fn report_error(stage: Stage, errno: Errno, spec: &ContainerSpec) -> Error {
    let command = spec.args.first().cloned().unwrap_or_default();
    match (stage, errno) {
        (Stage::Exec, Errno::ENOENT | Errno::ENOTDIR) => Error::CommandNotFound { command },
        (Stage::Exec, source) => Error::NotExecutable { command, source },
        (stage, source) => Error::Init {
            stage: stage.describe(),
            source,
        },
    }
}

/// Waits for the init; stops forwarding before reaping so a signal can
/// never reach a recycled pid.
fn wait_init(init: Pid, forwarding: &mut Forwarding) -> Result<i32, Error> {
    loop {
        match waitid(Id::Pid(init), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::sys(
                    "wait for the container init",
                    format!("pid {init}"),
                    e,
                ));
            }
        }
    }
    forwarding.unregister();
    loop {
        match waitpid(init, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::sys(
                    "reap the container init",
                    format!("pid {init}"),
                    e,
                ));
            }
        }
    }
}

fn read_account_file(path: &Path) -> Result<String, Error> {
    match fs::File::open(path) {
        Ok(file) => {
            let mut text = Vec::new();
            file.take(MAX_ACCOUNT_FILE)
                .read_to_end(&mut text)
                .map_err(|e| Error::io("read", path, e))?;
            Ok(String::from_utf8_lossy(&text).into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io("open", path, e)),
    }
}

/// Brings `lo` up in a fresh network namespace, as docker's `--net none` has it.
fn loopback_up() -> Result<(), Error> {
    let lo = PathBuf::from("lo");
    // SAFETY: a plain socket and two ioctls on a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::sys("open a socket to configure", lo, Errno::last()));
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Error::sys("read the flags of", lo, Errno::last()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Error::sys("bring up", lo, Errno::last()));
        }
    }
    Ok(())
}

//! The container's processes: a tiny init (PID 1) and the command (PID 2).
//!
//! # Why an init, and why it is written like this
//!
//! The container thread forks the init straight from this (possibly
//! multi-threaded) process, so between fork and exec only
//! async-signal-safe code may run: no allocation, no locks, no Rust I/O.
//! Everything the children need is therefore prepared beforehand in an
//! [`ExecPlan`] (C strings, pointer arrays, ids), and the children only make
//! raw system calls. This is what lets `run()` be called from any thread of
//! any program, the test harness included, without re-executing a helper
//! binary.
//!
//! The init, like `docker run --init` (tini):
//! 1. asks to be SIGKILLed if the container thread dies, closes every
//!    inherited descriptor but stdio and the report pipe, starts a session;
//! 2. mounts a fresh /proc (only a process inside the new PID namespace
//!    sees the namespace's own pids there);
//! 3. forks the command, which sets up its terminal, groups, gid, uid and
//!    working directory, unblocks signals and execs the first `$PATH`
//!    candidate that works;
//! 4. waits in sigwaitinfo(2): every signal but SIGCHLD is forwarded to the
//!    command, SIGCHLD reaps zombies (orphans are re-parented to PID 1), and
//!    when the command is reaped the init exits with its status (128+N for
//!    signal N), which makes the kernel kill what is left in the namespace.
//!
//! With the command as PID 2, SIGTERM/SIGINT without a handler still
//! terminate it, as on a host, instead of being ignored as they would be by
//! a PID 1.
//!
//! A failure before exec is reported as `(stage, errno)` on a close-on-exec
//! pipe: a successful exec closes it empty.

use std::ffi::CString;
use std::os::fd::RawFd;

use libc::{c_char, c_int};

/// The steps a child can fail at, as written to the report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    MountProc = 1,
    ForkCommand = 2,
    Terminal = 3,
    SetGroups = 4,
    SetGid = 5,
    SetUid = 6,
    Chdir = 7,
    Exec = 8,
}

impl Stage {
    pub(crate) fn from_u32(n: u32) -> Option<Stage> {
        [
            Stage::MountProc,
            Stage::ForkCommand,
            Stage::Terminal,
            Stage::SetGroups,
            Stage::SetGid,
            Stage::SetUid,
            Stage::Chdir,
            Stage::Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == n)
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stage::MountProc => "mount /proc",
            Stage::ForkCommand => "fork the command",
            Stage::Terminal => "attach the terminal",
            Stage::SetGroups => "set supplementary groups",
            Stage::SetGid => "set gid",
            Stage::SetUid => "set uid",
            Stage::Chdir => "enter the working directory",
            Stage::Exec => "exec the command",
        }
    }
}

/// Size of one report: stage (u32) then errno (i32), native endian.
pub(crate) const REPORT_LEN: usize = 8;

/// What the init's name shows as in the container's `ps`.
const INIT_NAME: &[u8] = b"regfs-init\0";

/// Everything the children need, prepared before fork so that they never
/// allocate.
pub(crate) struct ExecPlan {
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    /// Paths to try in order: argv[0] itself when it has a '/', else argv[0]
    /// under each `$PATH` entry.
    candidates: Vec<CString>,
    workdir: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// The pty slave to become the command's stdio and controlling terminal.
    tty_slave: Option<RawFd>,
}

impl ExecPlan {
    /// Fails only on an interior NUL byte, reported by the caller.
    pub(crate) fn new(
        args: &[String],
        env: &[String],
        workdir: &str,
        ids: (u32, u32, &[u32]),
        tty_slave: Option<RawFd>,
    ) -> Result<ExecPlan, std::ffi::NulError> {
        let argv = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = env
            .iter()
            .map(|e| CString::new(e.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let program = args.first().map(String::as_str).unwrap_or_default();
        let candidates = if program.contains('/') {
            vec![CString::new(program)?]
        } else {
            let path = env
                .iter()
                .rev()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or(crate::config::DEFAULT_PATH);
            path.split(':')
                .map(|dir| {
                    let dir = if dir.is_empty() { "." } else { dir };
                    CString::new(format!("{dir}/{program}"))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const c_char> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(ExecPlan {
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            candidates,
            workdir: CString::new(workdir)?,
            uid: ids.0,
            gid: ids.1,
            groups: ids.2.to_vec(),
            tty_slave,
        })
    }
}

fn errno() -> c_int {
    nix::errno::Errno::last_raw()
}

/// Writes `(stage, errno)` to the report pipe and exits with `status`.
fn fail(report: RawFd, stage: Stage, err: c_int, status: c_int) -> ! {
    let mut buf = [0u8; REPORT_LEN];
    buf[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&err.to_ne_bytes());
    // SAFETY: write(2) and _exit(2) are async-signal-safe; buf outlives the call.
    unsafe {
        libc::write(report, buf.as_ptr().cast(), REPORT_LEN);
        libc::_exit(status)
    }
}

/// Closes every descriptor from 3 up except those in `keep`.
///
/// # Safety
/// Only for a freshly forked child: it closes descriptors other code may own.
unsafe fn close_inherited(keep: &[RawFd; 2]) {
    let mut keep = *keep;
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for fd in keep {
        if fd < 0 || (fd as libc::c_uint) < first {
            continue;
        }
        if fd as libc::c_uint > first {
            // SAFETY: close_range(2) on a range of plain descriptors.
            unsafe { libc::syscall(libc::SYS_close_range, first, fd as libc::c_uint - 1, 0) };
        }
        first = fd as libc::c_uint + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
}

/// Runs the init in a freshly forked child. Never returns.
///
/// # Safety
/// Must be called only in the child of fork(2), with all signals blocked and
/// the calling thread in the container's namespaces with its root pivoted.
pub(crate) unsafe fn init_main(plan: &ExecPlan, report: RawFd) -> ! {
    // SAFETY: only async-signal-safe system calls on prepared data below.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        close_inherited(&[report, plan.tty_slave.unwrap_or(-1)]);
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, INIT_NAME.as_ptr() as libc::c_ulong);
        // Best effort: show "regfs-init" instead of the host program's
        // command line in the container's ps; needs CAP_SYS_RESOURCE.
        let start = INIT_NAME.as_ptr() as libc::c_ulong;
        let end = start + INIT_NAME.len() as libc::c_ulong;
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_ARG_START as libc::c_ulong,
            start,
            0,
            0,
        );
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_ARG_END as libc::c_ulong,
            end,
            0,
            0,
        );

        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            fail(report, Stage::MountProc, errno(), 125);
        }

        let command = libc::fork();
        if command < 0 {
            fail(report, Stage::ForkCommand, errno(), 125);
        }
        if command == 0 {
            exec_command(plan, report);
        }
        libc::close(report);
        if let Some(slave) = plan.tty_slave {
            libc::close(slave);
        }
        reap_and_forward(command)
    }
}

/// The signals the init leaves alone: they are synchronous (faults) and
/// only ever meant for the init itself.
const SYNCHRONOUS: [c_int; 7] = [
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// # Safety
/// Child of fork only (see [`init_main`]).
unsafe fn reap_and_forward(command: libc::pid_t) -> ! {
    // SAFETY: signal-set manipulation, sigwaitinfo, kill and waitpid are
    // async-signal-safe and only touch local data.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in SYNCHRONOUS {
            libc::sigdelset(&mut set, sig);
        }
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&set, &mut info);
            if sig < 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(command, sig);
                continue;
            }
            loop {
                let mut status: c_int = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == command {
                    let code = if libc::WIFSIGNALED(status) {
                        128 + libc::WTERMSIG(status)
                    } else {
                        libc::WEXITSTATUS(status)
                    };
                    libc::_exit(code);
                }
            }
        }
    }
}

/// Highest signal number on Linux (SIGRTMAX); dispositions 1..=64 are reset.
const MAX_SIGNAL: c_int = 64;

/// # Safety
/// Child of fork only (see [`init_main`]).
unsafe fn exec_command(plan: &ExecPlan, report: RawFd) -> ! {
    // SAFETY: raw system calls on data prepared before fork. setgroups,
    // setresgid and setresuid are issued as raw syscalls: this process has
    // one thread, and glibc's wrappers would try to sync other threads.
    unsafe {
        if let Some(slave) = plan.tty_slave {
            if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
                fail(report, Stage::Terminal, errno(), 125);
            }
            for fd in 0..3 {
                if libc::dup2(slave, fd) < 0 {
                    fail(report, Stage::Terminal, errno(), 125);
                }
            }
            if slave > 2 {
                libc::close(slave);
            }
        }
        if libc::chdir(plan.workdir.as_ptr()) != 0 {
            fail(report, Stage::Chdir, errno(), 125);
        }
        if libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()) != 0 {
            fail(report, Stage::SetGroups, errno(), 125);
        }
        if libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid) != 0 {
            fail(report, Stage::SetGid, errno(), 125);
        }
        if libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid) != 0 {
            fail(report, Stage::SetUid, errno(), 125);
        }
        // Start the command as on a host: default dispositions (this
        // process ignores SIGPIPE, as Rust programs do) and nothing blocked.
        for sig in 1..=MAX_SIGNAL {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        // execvp's rules: skip candidates that do not exist, remember that
        // one existed but was not executable, stop at any other error.
        let mut err = libc::ENOENT;
        let mut denied = false;
        for candidate in &plan.candidates {
            libc::execve(
                candidate.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            );
            err = errno();
            match err {
                libc::ENOENT | libc::ENOTDIR => continue,
                libc::EACCES => denied = true,
                _ => break,
            }
        }
        if denied && matches!(err, libc::ENOENT | libc::ENOTDIR) {
            err = libc::EACCES;
        }
        let status = if matches!(err, libc::ENOENT | libc::ENOTDIR) {
            127
        } else {
            126
        };
        fail(report, Stage::Exec, err, status)
    }
}

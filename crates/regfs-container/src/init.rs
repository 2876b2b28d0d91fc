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
//!    inherited descriptor but stdio and its two pipes, starts a session;
//! 2. mounts a fresh /proc (only a process inside the new PID namespace
//!    sees the namespace's own pids there);
//!    and hides or write-protects the same /proc entries as docker
//!    ([`MASKED_PATHS`], [`READONLY_PATHS`]);
//! 3. forks the command, which sets up its terminal, working directory,
//!    capability bounding set, groups, gid, uid and capabilities (docker's
//!    default set, [`DEFAULT_CAPABILITIES`]), unblocks signals and execs the
//!    first `$PATH` candidate that works;
//! 4. waits in sigwaitinfo(2): every signal but SIGCHLD is forwarded to the
//!    command, SIGCHLD reaps zombies (orphans are re-parented to PID 1), and
//!    when the command is reaped the init exits with its status (128+N for
//!    signal N), which makes the kernel kill what is left in the namespace.
//!
//! With the command as PID 2, SIGTERM/SIGINT without a handler still
//! terminate it, as on a host, instead of being ignored as they would be by
//! a PID 1.
//!
//! Before forking the command the init waits for one byte on the *start*
//! pipe: the container thread sends it once it has registered the init for
//! signal forwarding, so no signal sent after the command started is lost.
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
    Capabilities = 9,
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
            Stage::Capabilities,
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
            Stage::Capabilities => "drop capabilities",
        }
    }
}

/// Size of one report: stage (u32) then errno (i32), native endian.
pub(crate) const REPORT_LEN: usize = 8;

/// Docker's default capabilities: a root command keeps only these, and
/// setuid programs in the image can gain no other (bounding set).
/// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
/// NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
pub(crate) const DEFAULT_CAPABILITIES: u64 = 0xa804_25fb;

/// Highest capability number tried when dropping the bounding set; the
/// kernel answers EINVAL past its own last one (40 on 6.x).
const MAX_CAPABILITY: c_int = 63;

/// /proc entries docker hides (a file gets /dev/null bound over it, a
/// directory an empty read-only tmpfs): kernel memory, keys, timers.
const MASKED_PATHS: [&std::ffi::CStr; 9] = [
    c"/proc/asound",
    c"/proc/acpi",
    c"/proc/kcore",
    c"/proc/keys",
    c"/proc/latency_stats",
    c"/proc/timer_list",
    c"/proc/timer_stats",
    c"/proc/sched_debug",
    c"/proc/scsi",
];

/// /proc entries docker makes read-only: kernel tunables and triggers.
const READONLY_PATHS: [&std::ffi::CStr; 5] = [
    c"/proc/bus",
    c"/proc/fs",
    c"/proc/irq",
    c"/proc/sys",
    c"/proc/sysrq-trigger",
];

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
    /// Address and length of this process's command line strings (see
    /// [`argv_area`]), which the init overwrites.
    argv_area: Option<(usize, usize)>,
}

impl ExecPlan {
    /// Fails only on an interior NUL byte, reported by the caller.
    pub(crate) fn new(
        args: &[String],
        env: &[String],
        workdir: &str,
        ids: (u32, u32, &[u32]),
        tty_slave: Option<RawFd>,
        argv_area: Option<(usize, usize)>,
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
            argv_area,
        })
    }
}

/// Most bytes of command line worth overwriting: Linux caps a command
/// line at 2 MiB (MAX_ARG_STRLEN × …); anything larger is not a real area.
const MAX_ARGV_AREA: usize = 2 << 20;

/// Where this process's command line lives, for [`ExecPlan::new`]; read
/// from /proc, so call it before pivot_root.
pub(crate) fn own_argv_area() -> Option<(usize, usize)> {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| argv_area(&s))
}

/// The `arg_start` and `arg_end` fields (48 and 49) of /proc/self/stat, as
/// address and length. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its last ')'.
fn argv_area(stat: &str) -> Option<(usize, usize)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(48 - 3);
    let start: usize = fields.next()?.parse().ok()?;
    let end: usize = fields.next()?.parse().ok()?;
    let len = end.checked_sub(start)?;
    (start != 0 && len > 0 && len <= MAX_ARGV_AREA).then_some((start, len))
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
unsafe fn close_inherited(keep: &[RawFd; 3]) {
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
pub(crate) unsafe fn init_main(plan: &ExecPlan, report: RawFd, start: RawFd) -> ! {
    // SAFETY: only async-signal-safe system calls on prepared data below.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        close_inherited(&[report, start, plan.tty_slave.unwrap_or(-1)]);
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, INIT_NAME.as_ptr() as libc::c_ulong);
        // Overwrite our copy of this program's command line, as
        // setproctitle does: the container's `ps` and /proc/1/cmdline must
        // show neither the host's program path nor its arguments.
        if let Some((start, len)) = plan.argv_area {
            let area = start as *mut u8;
            std::ptr::write_bytes(area, 0, len);
            std::ptr::copy_nonoverlapping(
                INIT_NAME.as_ptr(),
                area,
                INIT_NAME.len().min(len.saturating_sub(1)),
            );
        }

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
        protect_proc();

        let mut go = 0u8;
        loop {
            match libc::read(start, (&mut go as *mut u8).cast(), 1) {
                1 => break,
                n if n < 0 && errno() == libc::EINTR => continue,
                // The container thread gave up (or died): never start.
                _ => libc::_exit(125),
            }
        }
        libc::close(start);

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

/// Masks and write-protects /proc entries; entries this kernel lacks are
/// skipped, like runc does.
///
/// # Safety
/// Child of fork only (see [`init_main`]).
unsafe fn protect_proc() {
    // SAFETY: mount(2) on static C strings.
    unsafe {
        let null = std::ptr::null();
        for path in MASKED_PATHS {
            if libc::mount(
                c"/dev/null".as_ptr(),
                path.as_ptr(),
                null,
                libc::MS_BIND,
                null.cast(),
            ) != 0
                && errno() == libc::ENOTDIR
            {
                let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                libc::mount(
                    c"tmpfs".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    flags,
                    null.cast(),
                );
            }
        }
        for path in READONLY_PATHS {
            if libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                null.cast(),
            ) == 0
            {
                let flags = libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC;
                libc::mount(path.as_ptr(), path.as_ptr(), null, flags, null.cast());
            }
        }
    }
}

/// `struct __user_cap_header_struct` of <linux/capability.h>.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two (64 bits).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable capabilities to `caps`.
///
/// # Safety
/// Child of fork only (see [`init_main`]).
unsafe fn set_capabilities(caps: u64) -> c_int {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |bits: u32| CapData {
        effective: bits,
        permitted: bits,
        inheritable: bits,
    };
    let data = [half(caps as u32), half((caps >> 32) as u32)];
    // SAFETY: capset(2) reads one header and two data structs.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as c_int }
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
        // The bounding set can only be lowered while CAP_SETPCAP is
        // effective, i.e. before switching to a non-root uid.
        for cap in 0..=MAX_CAPABILITY {
            if DEFAULT_CAPABILITIES & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && errno() != libc::EINVAL
            {
                fail(report, Stage::Capabilities, errno(), 125);
            }
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
        // A non-root uid has just lost every capability; root keeps
        // docker's defaults only.
        if plan.uid == 0 && set_capabilities(DEFAULT_CAPABILITIES) != 0 {
            fail(report, Stage::Capabilities, errno(), 125);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_area_is_read_after_the_command_name() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "1000".into();
        fields[49 - 3] = "1024".into();
        let stat = format!("42 (we) ird (name) {}", fields.join(" "));
        assert_eq!(argv_area(&stat), Some((1000, 24)));
        fields[49 - 3] = "999".into();
        assert_eq!(argv_area(&format!("42 (x) {}", fields.join(" "))), None);
        assert_eq!(argv_area("42 (x) R 1"), None);
        assert!(argv_area(&std::fs::read_to_string("/proc/self/stat").expect("stat")).is_some());
    }
}

//! Signal forwarding from this process to running containers.
//!
//! While at least one container runs, this process handles [`FORWARDED`]
//! with a handler that re-sends the signal to every registered container
//! init (by host pid); the init passes it on to the command. The handler is
//! async-signal-safe: it only loads atomics and calls kill(2) and ioctl(2).
//! When the last container ends, the previous dispositions are restored,
//! so a library caller's own handlers come back.
//!
//! `SIGWINCH` additionally copies this process's terminal size to each
//! container's pseudo-terminal, whose kernel then signals the foreground job.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The signals `docker run` forwards (with its default `--sig-proxy`).
pub(crate) const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// How many containers one process can run at once with forwarding; a
/// fixed table because a signal handler must not allocate. Far above what
/// one `regfs run` (one container) or the test suite (a few threads) uses.
const MAX_CONTAINERS: usize = 64;

struct Slot {
    pid: AtomicI32,
    pty_master: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    pid: AtomicI32::new(0),
    pty_master: AtomicI32::new(-1),
};
static SLOTS: [Slot; MAX_CONTAINERS] = [EMPTY; MAX_CONTAINERS];

/// How many registrations are live, and the dispositions to restore.
static INSTALLED: Mutex<(usize, Vec<(Signal, SigAction)>)> = Mutex::new((0, Vec::new()));

extern "C" fn forward(sig: libc::c_int) {
    for slot in &SLOTS {
        let pid = slot.pid.load(Ordering::Acquire);
        if pid <= 0 {
            continue;
        }
        if sig == libc::SIGWINCH {
            let master = slot.pty_master.load(Ordering::Acquire);
            if master >= 0 {
                // SAFETY: winsize is plain data; both ioctls only read/write it.
                unsafe {
                    let mut ws: libc::winsize = std::mem::zeroed();
                    if libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 {
                        libc::ioctl(master, libc::TIOCSWINSZ, &ws);
                    }
                }
            }
        }
        // SAFETY: kill(2) is async-signal-safe; a stale pid is harmless
        // because the slot is cleared before the init is reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// One container's registration; dropping it stops forwarding to it.
pub(crate) struct Forwarding {
    slot: Option<usize>,
}

impl Forwarding {
    /// Installs the handlers if this is the first live registration.
    pub(crate) fn install() -> Forwarding {
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        if installed.0 == 0 {
            let action = SigAction::new(
                SigHandler::Handler(forward),
                SaFlags::SA_RESTART,
                SigSet::empty(),
            );
            for sig in FORWARDED {
                // SAFETY: the handler is async-signal-safe (see module doc).
                if let Ok(old) = unsafe { sigaction(sig, &action) } {
                    installed.1.push((sig, old));
                }
            }
        }
        installed.0 += 1;
        Forwarding { slot: None }
    }

    /// Starts forwarding to `pid` (and window sizes to `pty_master`).
    /// Without a free slot the container still runs, just without forwarding.
    pub(crate) fn register(&mut self, pid: i32, pty_master: Option<i32>) {
        for (i, slot) in SLOTS.iter().enumerate() {
            if slot
                .pid
                .compare_exchange(0, -1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.pty_master
                    .store(pty_master.unwrap_or(-1), Ordering::Release);
                slot.pid.store(pid, Ordering::Release);
                self.slot = Some(i);
                return;
            }
        }
        tracing::warn!(
            pid,
            "too many containers: signals are not forwarded to this one"
        );
    }

    /// Stops forwarding; called before the init is reaped so its pid
    /// cannot be reused under us.
    pub(crate) fn unregister(&mut self) {
        if let Some(i) = self.slot.take() {
            SLOTS[i].pty_master.store(-1, Ordering::Release);
            SLOTS[i].pid.store(0, Ordering::Release);
        }
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.unregister();
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        installed.0 -= 1;
        if installed.0 == 0 {
            for (sig, old) in installed.1.drain(..) {
                // SAFETY: restoring a disposition this process had before.
                let _ = unsafe { sigaction(sig, &old) };
            }
        }
    }
}

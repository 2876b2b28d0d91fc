//! `--tty`: a pseudo-terminal for the command, relayed to this process's
//! stdio like `docker run -it` does.
//!
//! The pty comes from the container's own devpts instance (opened after
//! pivot_root through /dev/ptmx), so the command sees `/dev/pts/0`. The
//! command makes the slave its controlling terminal; this side puts the host
//! terminal in raw mode (restored on drop) and copies bytes both ways until
//! every slave descriptor is closed, i.e. the container is gone.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::Error;

/// Copy buffer of the relay: one terminal burst.
const RELAY_BUFFER: usize = 16 * 1024;

pub(crate) struct Terminal {
    master: File,
    slave: OwnedFd,
}

impl Terminal {
    /// Opens a pty pair from the (already pivoted) container's /dev/ptmx.
    pub(crate) fn open() -> Result<Terminal, Error> {
        let master = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/ptmx")
            .map_err(|e| Error::io("open", "/dev/ptmx", e))?;
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER returns a new fd.
        let slave = unsafe {
            if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
                return Err(Error::sys("unlock the pty of", "/dev/ptmx", Errno::last()));
            }
            let fd = libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(Error::sys(
                    "open the pty slave of",
                    "/dev/ptmx",
                    Errno::last(),
                ));
            }
            OwnedFd::from_raw_fd(fd)
        };
        Ok(Terminal { master, slave })
    }

    pub(crate) fn slave_fd(&self) -> RawFd {
        self.slave.as_raw_fd()
    }

    pub(crate) fn master_fd(&self) -> RawFd {
        self.master.as_raw_fd()
    }

    /// Relays stdin → pty and pty → stdout until the container side closes.
    pub(crate) fn relay(self) -> Result<(), Error> {
        let Terminal { mut master, slave } = self;
        drop(slave);
        let stdin = std::io::stdin();
        let _raw = RawMode::enter(stdin.as_fd());
        copy_window_size(master.as_raw_fd());
        let mut buf = vec![0u8; RELAY_BUFFER];
        let mut stdin_open = true;
        let mut stdout = std::io::stdout();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: master.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if stdin_open { libc::STDIN_FILENO } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a valid array of two pollfd.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                match Errno::last() {
                    Errno::EINTR => continue,
                    e => return Err(Error::sys("poll", "/dev/ptmx", e)),
                }
            }
            if fds[0].revents != 0 {
                match master.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        stdout
                            .write_all(&buf[..n])
                            .map_err(|e| Error::io("write", "stdout", e))?;
                        stdout
                            .flush()
                            .map_err(|e| Error::io("write", "stdout", e))?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // EIO: every slave descriptor is closed, the container ended.
                    Err(_) => return Ok(()),
                }
            }
            if fds[1].revents != 0 {
                let mut input = std::io::stdin().lock();
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => master
                        .write_all(&buf[..n])
                        .map_err(|e| Error::io("write", "/dev/ptmx", e))?,
                }
            }
        }
    }
}

fn copy_window_size(master: RawFd) {
    // SAFETY: winsize is plain data; both ioctls only read/write it.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// The host terminal in raw mode, restored on drop; nothing when stdin is
/// not a terminal.
struct RawMode<'a> {
    fd: std::os::fd::BorrowedFd<'a>,
    saved: Option<Termios>,
}

impl<'a> RawMode<'a> {
    fn enter(fd: std::os::fd::BorrowedFd<'a>) -> RawMode<'a> {
        let saved = tcgetattr(fd).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(fd, SetArg::TCSANOW, &raw);
        }
        RawMode { fd, saved }
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = tcsetattr(self.fd, SetArg::TCSADRAIN, saved);
        }
    }
}

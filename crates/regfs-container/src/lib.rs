//! Runs a command in a directory holding a container root filesystem, like
//! `docker run`, without containerd or runc: the runtime half of `regfs run`.
//!
//! The root (normally the lazily-mounted, read-only regfs image) becomes the
//! lower layer of an overlayfs whose upper layer is a tmpfs or `--upper DIR`;
//! the command runs as PID 2 under a tiny init in new mount, PID, UTS, IPC
//! (and optionally network) namespaces, with a fresh /proc, a minimal /dev,
//! read-only /sys, the host's /etc/resolv.conf and /etc/hosts, and volumes.
//! As in docker, a root command keeps only docker's default capabilities and
//! sensitive /proc and /sys entries are masked or read-only.
//!
//! Principal items:
//! * [`ContainerSpec`] — what to run ([`NetMode`], [`Volume`]);
//! * [`run`] — run it, returning the exit status (128+N when killed by signal N);
//! * [`command_from_config`] / [`env_from_config`] — the command line and
//!   environment from an OCI image config, merged as docker merges them;
//! * [`preflight`] — clear errors up front when this host cannot run containers;
//! * [`Error`] — with [`Error::exit_status`] giving docker's 125/126/127.
//!
//! SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH sent to this
//! process while a container runs are forwarded to its command. How `run`
//! forks safely from a multi-threaded process is told in the `init` module.
//!
//! ```no_run
//! use regfs_container::{ContainerSpec, NetMode, preflight, run};
//!
//! # fn main() -> Result<(), regfs_container::Error> {
//! preflight()?;
//! let mut spec = ContainerSpec::new("/mnt/image", vec!["sh".into(), "-c".into(), "echo hello".into()]);
//! spec.net = NetMode::None;
//! spec.volumes.push("/srv/data:/data:ro".parse()?);
//! let status = run(&spec)?;
//! assert_eq!(status, 0);
//! # Ok(())
//! # }
//! ```

// Running a container is system programming that safe wrappers do not cover: `fork` in a
// multi-threaded process (only async-signal-safe calls until `execve`), raw syscalls nix does
// not wrap (`close_range`, `capset`), `sigaction` handlers that forward signals (`kill`, the
// window-size ioctls), the pty ioctls (`TIOCGPTPEER`), and `SIOCSIFFLAGS` for the loopback of
// `--net none`. Each `unsafe` block carries its own SAFETY comment.
#![allow(unsafe_code)]

mod config;
mod container;
mod error;
#[doc(hidden)]
pub mod fuzz_api;
mod init;
mod preflight;
mod rootfs;
mod signals;
mod spec;
mod terminal;
mod user;

pub use config::{DEFAULT_PATH, command_from_config, env_from_config};
pub use container::run;
pub use error::Error;
pub use preflight::preflight;
pub use spec::{ContainerSpec, NetMode, Volume};

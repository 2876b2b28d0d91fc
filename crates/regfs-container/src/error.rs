//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// Everything that can go wrong while preparing or running a container.
///
/// Callers map it to an exit status with [`Error::exit_status`], which follows
/// `docker run`: 127 when the command does not exist, 126 when it cannot be
/// executed, 125 for every failure of the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Containers need mount, PID and UTS namespaces, which only root may create.
    #[error("regfs run must be run as root (effective uid is {euid})")]
    NotRoot {
        /// The effective uid of this process.
        euid: u32,
    },
    /// The FUSE device is missing, so the image cannot be mounted lazily.
    #[error("fuse device {path} is missing: load the fuse module (modprobe fuse)")]
    MissingFuse {
        /// The device path that was checked.
        path: PathBuf,
    },
    /// The kernel does not list overlayfs in /proc/filesystems.
    #[error("overlayfs is not supported by this kernel (not in {path}): try modprobe overlay")]
    OverlayUnsupported {
        /// The file that was read.
        path: PathBuf,
    },
    /// A namespace kind the container needs is not available.
    #[error("the kernel has no {kind} namespaces ({path} is missing)")]
    NamespaceUnsupported {
        /// `mnt`, `pid`, `uts`, `ipc` or `net`.
        kind: &'static str,
        /// The /proc file that was checked.
        path: PathBuf,
    },
    /// The spec cannot be run as given.
    #[error("invalid container spec: {reason}")]
    InvalidSpec {
        /// What is wrong with it.
        reason: String,
    },
    /// A `-v HOST:CTR[:ro]` argument could not be parsed.
    #[error("invalid volume {spec:?}: expected HOST:CONTAINER[:ro|rw] with absolute paths")]
    InvalidVolume {
        /// The argument as given.
        spec: String,
    },
    /// A `--net` argument could not be parsed.
    #[error("invalid network mode {mode:?}: expected host or none")]
    InvalidNetMode {
        /// The argument as given.
        mode: String,
    },
    /// A file operation on the host or in the container root failed.
    #[error("failed to {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A system call setting up namespaces or mounts failed.
    #[error("failed to {op} {path}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The path (or namespace) involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// overlayfs refused the image dir as lower or the upper dir.
    #[error("failed to mount overlayfs with lower dir {lower} and upper dir {upper}")]
    Overlay {
        /// The image root.
        lower: PathBuf,
        /// The upper dir (on the scratch tmpfs or under `--upper`).
        upper: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// `--user NAME` names no entry of the image's /etc/passwd (or group of /etc/group).
    #[error("unable to find {what} {name:?} in the image's {path}")]
    UnknownUser {
        /// `user` or `group`.
        what: &'static str,
        /// The name looked up.
        name: String,
        /// The image file that was searched.
        path: PathBuf,
    },
    /// The command was not found in the container (exit status 127).
    #[error("{}", not_found_message(command))]
    CommandNotFound {
        /// The command as given.
        command: String,
    },
    /// The command exists but cannot be executed (exit status 126).
    #[error("exec {command:?}: cannot execute")]
    NotExecutable {
        /// The command as given.
        command: String,
        /// Why the kernel refused it.
        #[source]
        source: Errno,
    },
    /// The container's init failed before the command could start.
    #[error("container init failed to {stage}")]
    Init {
        /// The step that failed.
        stage: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The thread that owns the container's namespaces panicked.
    #[error("the container thread panicked")]
    ThreadPanicked,
}

/// Docker's wording: a bare name was searched on `$PATH`, a path was not.
fn not_found_message(command: &str) -> String {
    if command.contains('/') {
        format!("exec {command:?}: no such file or directory in the container")
    } else {
        format!("exec {command:?}: executable file not found in $PATH of the container")
    }
}

impl Error {
    /// The exit status `docker run` uses for this failure: 127 for a command
    /// that does not exist, 126 for one that cannot be executed, 125 otherwise.
    pub fn exit_status(&self) -> i32 {
        match self {
            Error::CommandNotFound { .. } => 127,
            Error::NotExecutable { .. } => 126,
            Error::NotRoot { .. }
            | Error::MissingFuse { .. }
            | Error::OverlayUnsupported { .. }
            | Error::NamespaceUnsupported { .. }
            | Error::InvalidSpec { .. }
            | Error::InvalidVolume { .. }
            | Error::InvalidNetMode { .. }
            | Error::Io { .. }
            | Error::Sys { .. }
            | Error::Overlay { .. }
            | Error::UnknownUser { .. }
            | Error::Init { .. }
            | Error::ThreadPanicked => 125,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(op: &'static str, path: impl Into<PathBuf>, source: Errno) -> Self {
        Error::Sys {
            op,
            path: path.into(),
            source,
        }
    }
}

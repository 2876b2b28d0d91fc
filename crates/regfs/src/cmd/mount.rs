//! `regfs mount REF DIR`: serve an image from its registry, lazily, as a read-only FUSE mount.
//!
//! Foreground by default: Ctrl-C, SIGTERM or `regfs umount DIR` unmount cleanly. `--daemon`
//! re-executes the same command in the background (a fresh process: a tokio runtime and FUSE
//! threads don't survive `fork`) and returns once the child reports the mount ready on a pipe.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use regfs_estargz::Digest;
use tokio::signal::unix::{SignalKind, signal};

use crate::control;
use crate::lazy::{LazyArgs, LazyImage};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference, `host[:port]/repo[:tag][@digest]`.
    reference: String,
    /// Mount point (an existing directory).
    dir: PathBuf,
    #[command(flatten)]
    lazy: LazyArgs,
    /// Serve only this layer, the way overlayfs expects a lower dir (whiteouts as 0/0 devices).
    #[arg(long, value_name = "DIGEST")]
    layer: Option<Digest>,
    /// Return once the mount is ready, leaving it served in the background.
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9150).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Let other users read the mount.
    #[arg(long)]
    allow_other: bool,
    /// Internal: the fd to report readiness on (set by --daemon).
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.dir.is_dir() {
        bail!("mount point {} is not a directory", args.dir.display());
    }
    if args.daemon {
        return daemonize(&args.dir);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let ready = args.ready_fd.map(|fd| {
        // SAFETY: the parent passed us this fd for exactly this purpose and nothing else owns it.
        std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })
    });
    let image = Arc::new(LazyImage::open(&args.lazy, &args.reference, args.layer, false).await?);
    let guard = regfs_fs::mount(
        image.fs.clone(),
        &args.dir,
        regfs_fs::MountOptions {
            allow_other: args.allow_other,
            passthrough: true,
            fsname: format!("regfs:{}", image.reference),
            ..Default::default()
        },
    )?;
    let socket = control::socket_path(&args.dir)?;
    let mut tasks = vec![tokio::spawn(control::serve_socket(
        socket.clone(),
        image.clone(),
        args.dir.clone(),
    )?)];
    if let Some(addr) = args.metrics_addr {
        tasks.push(tokio::spawn(control::serve_metrics(
            addr,
            image.clone(),
            args.dir.clone(),
        )?));
    }
    tracing::info!(reference = %image.reference, dir = %args.dir.display(), open_ms = image.open_time.as_millis() as u64, "mounted");
    if let Some(mut f) = ready {
        use std::io::Write;
        let _ = f.write_all(b"ready\n");
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let external = loop {
        tokio::select! {
            _ = term.recv() => break false,
            _ = int.recv() => break false,
            _ = hup.recv() => break false,
            _ = tick.tick() => if !is_mounted(&args.dir) { break true },
        }
    };
    for t in &tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket);
    if external {
        drop(guard);
    } else {
        tokio::task::spawn_blocking(move || guard.unmount()).await??;
    }
    Ok(ExitCode::SUCCESS)
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

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Re-executes this command without `--daemon`, waits for readiness, and leaves it running.
fn daemonize(dir: &Path) -> anyhow::Result<ExitCode> {
    let (rd, wr) = nix::unistd::pipe().context("creating the readiness pipe")?;
    let exe = std::env::current_exe().context("locating the regfs binary")?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "-d" && a != "--daemon")
        .collect();
    std::fs::create_dir_all(control::RUN_DIR)?;
    let log_path = control::socket_path(dir)?.with_extension("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let wr_fd = wr.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .arg("--ready-fd")
        .arg(wr_fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, fcntl) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            let flags = libc::fcntl(wr_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(wr_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the background mount")?;
    drop(wr);
    let mut answer = String::new();
    std::fs::File::from(rd).read_to_string(&mut answer)?;
    if answer.starts_with("ready") {
        println!("{}", child.id());
        return Ok(ExitCode::SUCCESS);
    }
    // The pipe closes as soon as the child drops it, before it prints its error: wait for it.
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    bail!(
        "the background mount failed:\n{}",
        log.lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    )
}

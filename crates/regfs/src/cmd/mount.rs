//! `regfs mount REF DIR`: serve an image from its registry, lazily, as a read-only FUSE mount.
//!
//! Foreground by default: Ctrl-C, SIGTERM or `regfs umount DIR` unmount cleanly. `--daemon`
//! re-executes the same command in the background (a fresh process: a tokio runtime and FUSE
//! threads don't survive `fork`) and returns once the child reports the mount ready: it writes
//! `ready` on its stdout, a pipe to the parent, then points its stdout at /dev/null.
//!
//! Run as root, the background child is a keeper (`regfs_fs::handover::keep`): it holds the
//! mount's `/dev/fuse` connection and starts the server (`--serve-device`: the device is its
//! stdin), again with `--takeover` whenever one dies while the directory is mounted, so that
//! readers see a pause, not `ENOTCONN`. `regfs takeover DIR` hands a running mount over
//! to a server started from the binary now installed (an upgrade).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use regfs_estargz::Digest;
use regfs_fs::is_mounted;
use regfs_image::{LazyImage, control};
use tokio::signal::unix::{SignalKind, signal};

use crate::args::LazyArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference, `host[:port]/repo[:tag][@digest]` or `oci:DIR[:TAG]`.
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
    /// Internal: started by --daemon; report readiness on stdout and leave the session.
    #[arg(long, hide = true)]
    daemon_child: bool,
    /// Internal: serve the FUSE device on stdin, started by a keeper.
    #[arg(long, hide = true)]
    serve_device: bool,
    /// Internal: with --serve-device, take over a mounted connection (replay its INIT).
    #[arg(long, hide = true)]
    takeover: bool,
    /// Internal: with --serve-device, how many servers ran before this one.
    #[arg(long, hide = true, default_value_t = 0)]
    restarts: u64,
    /// Internal: with --serve-device, the mount point as the keeper resolved it (a server
    /// taking over must not stat its own mount point before it serves it).
    #[arg(long, hide = true, value_name = "DIR")]
    canonical_dir: Option<PathBuf>,
}

/// `regfs takeover DIR`: hand a running `--daemon` mount over to a new server.
#[derive(clap::Args, Debug)]
pub struct TakeoverArgs {
    /// The mount point of a running `regfs mount --daemon`.
    dir: PathBuf,
}

pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    if let (true, Some(dir)) = (args.serve_device, args.canonical_dir.take()) {
        args.dir = dir;
    } else if !args.dir.is_dir() {
        bail!("mount point {} is not a directory", args.dir.display());
    }
    if args.daemon {
        return daemonize(&args.dir);
    }
    if args.daemon_child {
        // Out of the caller's session, so that closing its terminal does not hang us up.
        nix::unistd::setsid().context("starting a new session")?;
        if nix::unistd::geteuid().is_root() {
            return keeper(&args.dir);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let mut lazy = args.lazy.wire(&args.reference)?;
    lazy.options.layer = args.layer;
    let image = Arc::new(LazyImage::open(&lazy.source, &lazy.cache, &lazy.options).await?);
    let options = regfs_fs::MountOptions {
        allow_other: args.allow_other,
        passthrough: true,
        fsname: format!("regfs:{}", image.name),
        ..Default::default()
    };
    let socket = if args.serve_device {
        control::canonical_socket_path(&args.dir)
    } else {
        control::socket_path(&args.dir)?
    };
    let init_record = socket.with_extension("init");
    let guard = if args.serve_device {
        control::set_restarts(args.restarts);
        serve_device(&image, &args, &options, &init_record)?
    } else {
        regfs_fs::mount(image.fs.clone(), &args.dir, options)?
    };
    // A stale socket of a dead server is replaced.
    let _ = std::fs::remove_file(&socket);
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
    tracing::info!(reference = %image.name, dir = %args.dir.display(), open_ms = image.open_time.as_millis() as u64, "mounted");
    if args.daemon_child || args.serve_device {
        report_ready().context("reporting readiness")?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // From the keeper after a handover: the old server's unanswered requests are ours now.
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let external = loop {
        tokio::select! {
            _ = term.recv() => break false,
            _ = int.recv() => break false,
            _ = hup.recv() => break false,
            _ = usr2.recv() => if let Err(e) = guard.resend_pending() {
                tracing::warn!(error = %e, "resending pending requests failed");
            },
            _ = tick.tick() => if !is_mounted(&args.dir) { break true },
        }
    };
    for t in &tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&init_record);
    if external {
        drop(guard);
    } else {
        tokio::task::spawn_blocking(move || guard.unmount()).await??;
    }
    Ok(ExitCode::SUCCESS)
}

/// The server of a kept connection: the device is stdin; the first server mounts it and
/// records the kernel's INIT, a takeover replays the record.
fn serve_device(
    image: &Arc<LazyImage>,
    args: &Args,
    options: &regfs_fs::MountOptions,
    init_record: &Path,
) -> anyhow::Result<regfs_fs::MountGuard> {
    use regfs_fs::handover::{Start, serve_kept};
    use std::os::fd::AsFd;
    let device = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("taking the FUSE device from stdin")?;
    let devnull = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&devnull)?;
    let start = if args.takeover {
        Start::Takeover
    } else {
        Start::Fresh
    };
    Ok(serve_kept(
        image.fs.clone(),
        device,
        &args.dir,
        options,
        init_record,
        start,
    )?)
}

/// The keeper of a `--daemon` mount run as root: holds the FUSE device, runs the servers.
fn keeper(dir: &Path) -> anyhow::Result<ExitCode> {
    use regfs_fs::handover::{ServerStart, Start, keep, open_device};
    let exe = std::env::current_exe().context("locating the regfs binary")?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--daemon-child")
        .collect();
    let canon = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let dir = canon.as_path();
    let device = open_device()?;
    std::fs::create_dir_all(control::RUN_DIR)?;
    let pid_file = keeper_pid_path(dir);
    std::fs::write(&pid_file, std::process::id().to_string())?;
    let kept = keep(
        device,
        dir,
        |start: ServerStart| {
            // The path, not /proc/self/exe: after an upgrade it names the new binary.
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(&args)
                .arg("--serve-device")
                .arg("--restarts")
                .arg(start.restarts.to_string())
                .arg("--canonical-dir")
                .arg(dir);
            if start.start == Start::Takeover {
                cmd.arg("--takeover");
            }
            cmd
        },
        |_| {
            if let Err(e) = report_ready() {
                tracing::warn!(error = %e, "reporting readiness");
            }
        },
    );
    let _ = std::fs::remove_file(&pid_file);
    kept?;
    Ok(ExitCode::SUCCESS)
}

/// Where the keeper of the mount on the canonical path `dir` writes its pid.
fn keeper_pid_path(dir: &Path) -> PathBuf {
    control::canonical_socket_path(dir).with_extension("keeper")
}

/// `regfs takeover DIR`: tells the mount's keeper to start a server from the binary
/// installed now and hand the connection over to it.
pub fn takeover(args: TakeoverArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let path = keeper_pid_path(&dir);
    let pid: i32 = std::fs::read_to_string(&path)
        .with_context(|| {
            format!(
                "{} has no keeper (not a `regfs mount --daemon` run as root?)",
                args.dir.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("reading {}", path.display()))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .with_context(|| format!("signalling the keeper {pid}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Tells the parent of a `--daemon` mount that the mount is ready, then detaches stdout.
fn report_ready() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(b"ready\n")?;
    out.flush()?;
    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&devnull)?;
    Ok(())
}

/// Re-executes this command without `--daemon`, waits for readiness, and leaves it running.
fn daemonize(dir: &Path) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the regfs binary")?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "-d" && a != "--daemon")
        .collect();
    std::fs::create_dir_all(control::RUN_DIR)?;
    let log_path = control::socket_path(dir)?.with_extension("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = std::process::Command::new(exe)
        .args(&args)
        .arg("--daemon-child")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting the background mount")?;
    let mut answer = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut answer);
    }
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

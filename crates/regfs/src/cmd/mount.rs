//! `regfs mount REF DIR`: serve an image from its registry, lazily, as a read-only FUSE mount.
//!
//! Foreground by default: Ctrl-C, SIGTERM or `regfs umount DIR` unmount cleanly. `--daemon`
//! re-executes the same command in the background (a fresh process: a tokio runtime and FUSE
//! threads don't survive `fork`) and returns once the child reports the mount ready: it writes
//! `ready` on its stdout, a pipe to the parent, then points its stdout at /dev/null.

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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.dir.is_dir() {
        bail!("mount point {} is not a directory", args.dir.display());
    }
    if args.daemon {
        return daemonize(&args.dir);
    }
    if args.daemon_child {
        // Out of the caller's session, so that closing its terminal does not hang us up.
        nix::unistd::setsid().context("starting a new session")?;
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
    let guard = regfs_fs::mount(
        image.fs.clone(),
        &args.dir,
        regfs_fs::MountOptions {
            allow_other: args.allow_other,
            passthrough: true,
            fsname: format!("regfs:{}", image.name),
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
    tracing::info!(reference = %image.name, dir = %args.dir.display(), open_ms = image.open_time.as_millis() as u64, "mounted");
    if args.daemon_child {
        report_ready().context("reporting readiness")?;
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

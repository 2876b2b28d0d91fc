//! `regfs run REF [CMD...]`: run an image straight from its registry, without a runtime.
//!
//! The whole process first moves into a private mount namespace (while it is still
//! single-threaded), so the lazy FUSE mount of the image is invisible to the host and vanishes
//! with the process even when it is killed. The mount is the read-only lower layer of the
//! container's overlay (see `regfs_container`). Exit status: the command's; 125 when regfs
//! itself fails, 126/127 when the command can't be executed / isn't found, as `docker run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use regfs_container::{ContainerSpec, NetMode, Volume};
use serde::Serialize;

use regfs_image::LazyImage;

use crate::args::LazyArgs;

/// `docker run` exits with this when the runtime itself fails.
pub const EXIT_RUNTIME_FAILURE: u8 = 125;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Remove everything when the command exits (always the case; accepted for docker parity).
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable (`K=V`, or `K` to copy the host's).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: `uid[:gid]` or a name from the image's /etc/passwd.
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// `host` (default) or `none` (a new network namespace with only `lo`).
    #[arg(long, default_value = "host")]
    pub net: NetMode,
    /// Bind mount `HOST:CTR[:ro]`.
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volumes: Vec<Volume>,
    /// Keep the container's writes in DIR (DIR/upper) instead of a throw-away tmpfs.
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open (always the case; accepted for docker parity).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[command(flatten)]
    pub lazy: LazyArgs,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Write the files the workload opened or read, in first-access order, one JSON object per
    /// line (`path`, `layerDigest`, `layerIndex`).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Write what the run fetched (per layer and from the registry) and its timings as JSON.
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Image reference.
    reference: String,
    /// Command and arguments (default: the image's Entrypoint + Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// One recorded file access.
#[derive(Serialize, serde::Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    pub path: String,
    pub layer_digest: regfs_estargz::Digest,
    pub layer_index: usize,
}

/// What a run fetched and how long it took, for `--stats-file` and the benchmarks.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// From the start of the image open to a usable filesystem (manifest, TOCs).
    pub open_ms: u128,
    /// The workload's own wall time (container start to exit).
    pub workload_ms: u128,
    pub registry_requests: u64,
    pub registry_bytes: u64,
    pub layers: Vec<regfs_fs::LayerStats>,
}

/// The outcome of [`run_recorded`].
pub struct RunOutcome {
    pub status: u8,
    pub accesses: Vec<Access>,
    pub report: RunReport,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match run_recorded(
        &args.run,
        &args.reference,
        &args.command,
        args.record.is_some(),
        None,
    ) {
        Ok(out) => {
            if let Some(path) = &args.record {
                write_record(path, &out.accesses)?;
            }
            if let Some(path) = &args.stats_file {
                std::fs::write(path, serde_json::to_vec_pretty(&out.report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::from(out.status))
        }
        Err(e) => {
            eprintln!("regfs: {e:#}");
            let code = e
                .downcast_ref::<regfs_container::Error>()
                .map_or(EXIT_RUNTIME_FAILURE, |c| c.exit_status() as u8);
            Ok(ExitCode::from(code))
        }
    }
}

/// Writes `accesses` as JSON lines to `path`.
pub fn write_record(path: &std::path::Path, accesses: &[Access]) -> anyhow::Result<()> {
    let mut out = String::new();
    for a in accesses {
        out.push_str(&serde_json::to_string(a)?);
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Moves this (still single-threaded) process into a private mount namespace.
pub fn private_mount_namespace() -> anyhow::Result<()> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("creating a private mount namespace (regfs run needs root)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private")?;
    Ok(())
}

/// Runs the workload; returns its exit status and, when `record`, the files it accessed.
/// `period` stops the workload after that long (for servers), with SIGTERM.
pub fn run_recorded(
    args: &RunArgs,
    reference: &str,
    command: &[String],
    record: bool,
    period: Option<std::time::Duration>,
) -> anyhow::Result<RunOutcome> {
    regfs_container::preflight()?;
    private_mount_namespace()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut lazy = args.lazy.wire(reference)?;
        lazy.options.record_access = record;
        let image = Arc::new(LazyImage::open(&lazy.source, &lazy.cache, &lazy.options).await?);
        let mnt = tempfile::Builder::new()
            .prefix("regfs-image-")
            .tempdir()
            .context("creating the image mount point")?;
        let guard = regfs_fs::mount(
            image.fs.clone(),
            mnt.path(),
            regfs_fs::MountOptions {
                allow_other: true,
                passthrough: true,
                fsname: format!("regfs:{}", image.name),
                ..Default::default()
            },
        )?;
        tracing::debug!("mounted");
        let spec = container_spec(args, &image, mnt.path().to_owned(), command)?;
        if spec.args.is_empty() {
            anyhow::bail!("no command given and image {reference} has no Entrypoint or Cmd");
        }
        let stopper = period.map(|p| {
            tokio::spawn(async move {
                tokio::time::sleep(p).await;
                // SIGTERM to ourselves is forwarded to the workload by the container runtime.
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
            })
        });
        let started = std::time::Instant::now();
        let status = tokio::task::spawn_blocking(move || regfs_container::run(&spec)).await??;
        let workload_ms = started.elapsed().as_millis();
        if let Some(s) = stopper {
            s.abort();
        }
        let accesses = if record {
            let positions = image
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (l.digest, i))
                .collect::<std::collections::HashMap<_, _>>();
            image
                .fs
                .take_access_log()
                .into_iter()
                .map(|(path, layer_digest)| Access {
                    layer_index: positions.get(&layer_digest).copied().unwrap_or(0),
                    path,
                    layer_digest,
                })
                .collect()
        } else {
            Vec::new()
        };
        tracing::debug!("workload done");
        let registry = lazy.client.stats();
        let report = RunReport {
            open_ms: image.open_time.as_millis(),
            workload_ms,
            registry_requests: registry.requests,
            registry_bytes: registry.bytes_received,
            layers: image.fs.stats().layers,
        };
        tokio::task::spawn_blocking(move || guard.unmount()).await??;
        Ok(RunOutcome {
            status: u8::try_from(status).unwrap_or(EXIT_RUNTIME_FAILURE),
            accesses,
            report,
        })
    })
}

fn container_spec(
    args: &RunArgs,
    image: &LazyImage,
    lower: PathBuf,
    command: &[String],
) -> anyhow::Result<ContainerSpec> {
    let cfg = image.config.config().clone().unwrap_or_default();
    let mut spec = ContainerSpec::new(lower, regfs_container::command_from_config(&cfg, command));
    spec.env = regfs_container::env_from_config(&cfg, &args.env);
    spec.workdir = args
        .workdir
        .clone()
        .or_else(|| cfg.working_dir().clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    spec.user = args
        .user
        .clone()
        .or_else(|| cfg.user().clone().filter(|u| !u.is_empty()));
    spec.net = args.net;
    spec.volumes = args.volumes.clone();
    spec.upper = args.upper.clone();
    spec.tty = args.tty;
    Ok(spec)
}

//! `regfs umount DIR`: unmount a regfs mount; its serving process then exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use regfs_fs::{Unmount, is_mounted, unmount};
use regfs_image::control;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The mount point.
    dir: PathBuf,
    /// Detach now even if files are in use (MNT_DETACH).
    #[arg(long)]
    lazy: bool,
}

/// How long to wait for the serving process to notice and remove its control socket.
const EXIT_WAIT: Duration = Duration::from_secs(10);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !is_mounted(&args.dir) {
        bail!("{} is not mounted", args.dir.display());
    }
    let socket = control::socket_path(&args.dir)?;
    let how = if args.lazy {
        Unmount::Detach
    } else {
        Unmount::Strict
    };
    unmount(&args.dir, how)
        .with_context(|| format!("unmounting {} (busy? try --lazy)", args.dir.display()))?;
    let start = Instant::now();
    while socket.exists() && start.elapsed() < EXIT_WAIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ExitCode::SUCCESS)
}

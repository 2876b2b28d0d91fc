//! `regfs optimize SRC DST [-- CMD...]`: record what a workload reads, then rebuild the image
//! with those files first in each layer, so a lazy mount prefetches them in a few requests.
//!
//! 1. `regfs run --record` of SRC (lazily; a plain non-eStargz SRC works, fetched whole) until
//!    the workload exits, or for `--period` seconds for servers;
//! 2. every layer is reconverted with the files recorded *for that layer* prioritized, parents and
//!    hardlink targets first, followed by `.prefetch.landmark` (as `regfs convert
//!    --prioritized-files`); layers with nothing recorded get `.no.prefetch.landmark`;
//! 3. DST is pushed with the eStargz annotations (and regfs's TOC-offset / prefetch-size hints).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use regfs_image::{ImageConversion, ImageLocation};

use super::convert_image;
use super::run::{RunArgs, run_recorded, write_record};
use crate::args::ConvertArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source image (eStargz or not).
    src: String,
    /// Destination image reference (or `oci:DIR[:TAG]`).
    dst: String,
    /// Stop the workload after this many seconds (for servers that never exit).
    #[arg(long, value_name = "SECONDS")]
    period: Option<u64>,
    /// Also write the recorded accesses (JSON lines) here.
    #[arg(long, value_name = "FILE")]
    record_out: Option<PathBuf>,
    /// Chunk size and level of the rebuilt layers.
    #[command(flatten)]
    convert: ConvertArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Workload (default: the image's Entrypoint + Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Checked before the workload runs, not after.
    let options = args.convert.options(None)?;
    let src = ImageLocation::parse(&args.src)?;
    let dst = ImageLocation::parse(&args.dst)?;
    let period = args.period.map(Duration::from_secs);
    let outcome = run_recorded(&args.run, &args.src, &args.command, true, period)
        .with_context(|| format!("running the workload of {}", args.src))?;
    if period.is_none() && outcome.status != 0 {
        if (125..=127).contains(&outcome.status) {
            bail!(
                "the workload could not run (exit status {})",
                outcome.status
            );
        }
        tracing::warn!(
            status = outcome.status,
            "the workload exited with a non-zero status; using what it read"
        );
    }
    if let Some(path) = &args.record_out {
        write_record(path, &outcome.accesses)?;
    }
    let layers = outcome.report.layers.len();
    let mut per_layer: Vec<Vec<String>> = vec![Vec::new(); layers];
    for a in &outcome.accesses {
        if let Some(list) = per_layer.get_mut(a.layer_index) {
            list.push(a.path.clone());
        }
    }
    eprintln!(
        "recorded {} file accesses over {} layers; rebuilding {}",
        outcome.accesses.len(),
        layers,
        args.dst
    );
    let registry = &args.run.lazy.registry;
    convert_image::execute(
        registry,
        &ImageConversion {
            src,
            dst,
            options,
            per_layer: Some(per_layer),
            all_platforms: false,
            force: true,
            jobs: regfs_image::DEFAULT_JOBS,
            tmp_dir: std::env::temp_dir(),
            platform: registry.platform(),
        },
    )
}

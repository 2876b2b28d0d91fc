//! `regfs convert-image SRC DST`: every layer of an image to eStargz, pushed as an OCI image
//! (see `regfs_image::convert_image`); progress bars on a terminal, the JSON summary on stdout.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use regfs_image::{ImageConversion, ImageLocation, LayerProgress, Progress};

use crate::args::{ConvertArgs, RegistryArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Source image: a registry reference or `oci:DIR[:TAG]`.
    src: String,
    /// Destination image: a registry reference or `oci:DIR[:TAG]`.
    dst: String,
    #[command(flatten)]
    convert: ConvertArgs,
    /// File listing paths to put first in each layer (one per line); paths a layer lacks are fine.
    #[arg(long, value_name = "FILE")]
    prioritized_files: Option<PathBuf>,
    /// Convert layers that already are eStargz too.
    #[arg(long)]
    force: bool,
    /// Convert every platform of a multi-platform source and push an index of the results
    /// (default: only the --platform one, pushed as a plain manifest).
    #[arg(long)]
    all_platforms: bool,
    /// Layers converted in parallel.
    #[arg(long, default_value_t = regfs_image::DEFAULT_JOBS as u64, value_parser = clap::value_parser!(u64).range(1..=64))]
    jobs: u64,
    /// Directory for temp files (decompressed layers, new blobs); default: the system temp dir.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conversion = ImageConversion {
        src: ImageLocation::parse(&args.src)?,
        dst: ImageLocation::parse(&args.dst)?,
        options: args.convert.options(args.prioritized_files.as_deref())?,
        per_layer: None,
        all_platforms: args.all_platforms,
        force: args.force,
        jobs: usize::try_from(args.jobs).unwrap_or(1),
        tmp_dir: args.tmp_dir.unwrap_or_else(std::env::temp_dir),
        platform: args.registry.platform(),
    };
    execute(&args.registry, &conversion)
}

/// Runs `conversion` and prints its summary (shared with `regfs optimize`).
pub fn execute(registry: &RegistryArgs, conversion: &ImageConversion) -> anyhow::Result<ExitCode> {
    let client = registry.client()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(regfs_image::convert_image(
        &client,
        conversion,
        progress_bars(),
    ))?;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// One progress bar per layer on a terminal; nothing otherwise.
fn progress_bars() -> Option<Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let multi = indicatif::MultiProgress::new();
    let bars: Mutex<HashMap<usize, indicatif::ProgressBar>> = Mutex::new(HashMap::new());
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {msg:10} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    Some(Arc::new(move |p: &LayerProgress| {
        let mut bars = bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bar = bars.entry(p.layer).or_insert_with(|| {
            let bar = multi.add(indicatif::ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(format!("layer {} {}", p.layer, &p.digest.hex()[..12]));
            bar
        });
        bar.set_message(p.phase);
        if p.total > 0 {
            bar.set_length(p.total);
        }
        bar.set_position(p.done);
        if matches!(p.phase, "done" | "kept") {
            bar.finish();
        }
    }))
}

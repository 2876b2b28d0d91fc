//! `regfs convert IN OUT`: turn a tar layer (plain, gzip or zstd, sniffed) into an eStargz blob.
//!
//! The converter wants the whole tar as one slice (it hands files to parallel compressors), so a
//! plain tar file is memory-mapped as is and anything else (compressed input, stdin) is first
//! decompressed into an unlinked temp file that is then mapped. OUT is written to a temp file
//! beside it and renamed into place, so OUT is either the complete blob or untouched.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::args::ConvertArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Input layer: a tar, tar+gzip or tar+zstd file, or `-` for stdin.
    input: String,
    /// Output eStargz blob.
    output: PathBuf,
    #[command(flatten)]
    convert: ConvertArgs,
    /// File listing the paths to put first (one per line), e.g. from a startup trace.
    #[arg(long, value_name = "FILE")]
    prioritized_files: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = args
        .convert
        .options(args.prioritized_files.as_deref())?
        .estargz()?;
    let dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let bar = progress_bar();
    let progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let converted = if args.input == "-" {
        regfs_image::convert_reader(std::io::stdin().lock(), "stdin", &dir, &options, &progress)?
    } else {
        regfs_image::convert_layer(Path::new(&args.input), &dir, &options, &progress)?
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    converted
        .blob
        .persist(&args.output)
        .with_context(|| format!("renaming the blob to {}", args.output.display()))?;

    let json = serde_json::json!({
        "digest": converted.digest.to_string(),
        "size": converted.size,
        "diffID": converted.diff_id.to_string(),
        "tocDigest": converted.toc_digest.to_string(),
        "uncompressedSize": converted.uncompressed_size,
        "chunkSize": options.chunk_size,
        "level": regfs_estargz::validate_level(options.level)?,
        "missedPrioritized": converted.missed_prioritized,
    });
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

/// A bar on stderr, only for a human watching a terminal.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

//! `regfs convert IN OUT`: turn a tar layer (plain, gzip or zstd, sniffed) into an eStargz blob.
//!
//! The converter wants the whole tar as one slice (it hands files to parallel compressors), so a
//! plain tar file is memory-mapped as is and anything else (compressed input, stdin) is first
//! decompressed into an unlinked temp file that is then mapped. OUT is written to a temp file
//! beside it and renamed into place, so OUT is either the complete blob or untouched.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use regfs_estargz::{ConvertOptions, DEFAULT_CHUNK_SIZE};

/// Gzip magic and zstd frame magic: anything else is taken to be a plain tar.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(clap::Args)]
pub struct Args {
    /// Input layer: a tar, tar+gzip or tar+zstd file, or `-` for stdin.
    input: String,
    /// Output eStargz blob.
    output: PathBuf,
    /// Uncompressed bytes per chunk (a gzip member each).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// Gzip level 1-12 (libdeflate; default 6; 9 = the reference's default, 10-12 smaller
    /// and slower).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=12))]
    level: Option<u32>,
    /// File listing the paths to put first (one per line), e.g. from a startup trace.
    #[arg(long)]
    prioritized_files: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let prioritized_files = args
        .prioritized_files
        .as_deref()
        .map(read_prioritized)
        .transpose()?;
    let tar = map_input(&args.input)?;

    let mut options = ConvertOptions {
        chunk_size: args.chunk_size,
        prioritized_files,
        ..ConvertOptions::default()
    };
    if let Some(level) = args.level {
        options.level = level;
    }

    let dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".regfs-convert.")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;

    let bar = progress_bar(tar.len() as u64);
    let progress = |done: u64| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    };
    let report = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let report = regfs_estargz::convert(&tar, &options, &mut out, &progress)
            .with_context(|| format!("converting {}", args.input))?;
        out.flush()
            .with_context(|| format!("writing {}", args.output.display()))?;
        report
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", args.output.display()))?;
    tmp.persist(&args.output)
        .with_context(|| format!("renaming the blob to {}", args.output.display()))?;

    let json = serde_json::json!({
        "digest": report.blob_digest.to_string(),
        "size": report.blob_size,
        "diffID": report.diff_id.to_string(),
        "tocDigest": report.toc_digest.to_string(),
        "uncompressedSize": report.uncompressed_size,
        "chunkSize": options.chunk_size,
        "level": options.level,
        "missedPrioritized": report.missed_prioritized,
    });
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

/// Paths to prioritize: one per line, blank lines ignored.
pub(crate) fn read_prioritized(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the prioritized files list {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The input tar, uncompressed, as one mapped slice.
fn map_input(input: &str) -> anyhow::Result<memmap2::Mmap> {
    if input == "-" {
        return decompress_to_map(std::io::stdin().lock(), "stdin");
    }
    let mut file = File::open(input).with_context(|| format!("opening {input}"))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).with_context(|| format!("reading {input}"))?;
    if magic[..n].starts_with(&GZIP_MAGIC) || magic[..n] == ZSTD_MAGIC {
        let file = File::open(input).with_context(|| format!("opening {input}"))?;
        return decompress_to_map(file, input);
    }
    if n == 0 {
        anyhow::bail!("{input} is empty, want a tar layer");
    }
    // SAFETY: the mapping is read-only and lives for this process; a concurrent writer could
    // change bytes under us, which at worst yields a corrupt blob, as reading it would.
    unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {input}"))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Decompresses (gzip/zstd/plain, sniffed) into an unlinked temp file and maps it.
fn decompress_to_map(input: impl Read, what: &str) -> anyhow::Result<memmap2::Mmap> {
    let mut reader =
        regfs_estargz::decompress_input(input).with_context(|| format!("reading {what}"))?;
    let mut tmp = tempfile::tempfile().context("creating a temp file for the decompressed tar")?;
    std::io::copy(&mut reader, &mut tmp).with_context(|| format!("decompressing {what}"))?;
    // SAFETY: the temp file is unlinked and private to this process.
    unsafe { memmap2::Mmap::map(&tmp) }.context("mapping the decompressed tar")
}

/// A bar on stderr, only for a human watching a terminal.
fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

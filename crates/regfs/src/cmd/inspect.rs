//! `regfs inspect BLOB`: what a blob is (format, TOC location and digest, entry counts, prefetch
//! landmark) or, with `--json`, its TOC entries one JSON object per line.
//!
//! An argument that is not an existing file is an image reference, handed to `inspect_ref`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use regfs_estargz::{BlobFormat, EntryKind, Reader, Toc};

use crate::args::RegistryArgs;

#[derive(clap::Args)]
pub struct Args {
    /// A local eStargz blob file, or an image reference (`registry/repo:tag`).
    target: String,
    /// Blob: print the TOC entries as JSON lines (the TOC's own field names). Image: JSON report.
    #[arg(long)]
    json: bool,
    /// Image: also fetch and check every layer's TOC.
    #[arg(long)]
    toc: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = Path::new(&args.target);
    if !path.is_file() {
        return super::inspect_ref::run(&args.target, args.json, args.toc, &args.registry);
    }
    let file = File::open(path).with_context(|| format!("opening {}", args.target))?;
    let blob_size = file
        .metadata()
        .with_context(|| format!("stat {}", args.target))?
        .len();
    let reader = Reader::open(file).with_context(|| format!("reading {}", args.target))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        for entry in reader.toc().entries.iter().flatten() {
            let one = Toc {
                version: reader.toc().version,
                entries: Some(vec![entry.clone()]),
            };
            out.write_all(&entry_line(&one.to_json()))?;
            out.write_all(b"\n")?;
        }
    } else {
        write_summary(&mut out, &reader, blob_size)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The one entry of a single-entry TOC document as a compact JSON line, keys in TOC order.
///
/// The TOC serialiser writes Go's indented JSON; Go escapes every control character inside
/// strings, so each raw newline and tab in its output is layout and can be dropped.
fn entry_line(doc: &[u8]) -> Vec<u8> {
    let start = doc.iter().position(|&b| b == b'[').map_or(0, |i| i + 1);
    let end = doc.iter().rposition(|&b| b == b']').unwrap_or(doc.len());
    doc[start..end]
        .iter()
        .copied()
        .filter(|b| *b != b'\n' && *b != b'\t')
        .collect()
}

fn write_summary(
    out: &mut impl Write,
    reader: &Reader<File>,
    blob_size: u64,
) -> anyhow::Result<()> {
    let format = match reader.format() {
        BlobFormat::Estargz => "estargz",
        BlobFormat::LegacyStargz => "legacy-stargz",
    };
    let index = reader.index();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for e in reader.toc().entries.iter().flatten() {
        *counts.entry(e.kind.as_str()).or_default() += 1;
    }
    writeln!(out, "format:         {format}")?;
    writeln!(out, "blob size:      {blob_size} bytes")?;
    writeln!(out, "toc offset:     {}", reader.toc_offset())?;
    writeln!(out, "toc digest:     {}", reader.toc_digest())?;
    writeln!(
        out,
        "toc entries:    {}",
        reader.toc().entries.as_ref().map_or(0, Vec::len)
    )?;
    for kind in [
        EntryKind::Dir,
        EntryKind::Reg,
        EntryKind::Chunk,
        EntryKind::Symlink,
        EntryKind::Hardlink,
        EntryKind::Char,
        EntryKind::Block,
        EntryKind::Fifo,
    ] {
        let name = kind.as_str();
        writeln!(out, "  {name}: {}", counts.get(name).copied().unwrap_or(0))?;
    }
    let (landmark, prefetch) = match (index.prefetch_landmark(), index.has_no_prefetch_landmark()) {
        (Some(end), _) => ("prefetch", end),
        (None, true) => ("no-prefetch", 0),
        (None, false) => ("none", 0),
    };
    writeln!(out, "landmark:       {landmark}")?;
    writeln!(out, "prefetch size:  {prefetch} bytes")?;
    Ok(())
}

//! One layer blob in, one eStargz blob out: the unit of work of `convert-image`.
//!
//! ```text
//! source blob (gzip | zstd | tar, sniffed) ──decompress──▶ unlinked temp file ──mmap──▶ &[u8]
//!     ──regfs_estargz::convert──▶ named temp file (the new blob) ──footer──▶ TOC offset
//! ```
//!
//! The converter wants the whole tar as one slice (it hands files to parallel compressors), hence
//! the decompressed temp file. The new blob stays a temp file until the caller has pushed or
//! stored it; dropping [`ConvertedLayer`] deletes it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context;
use regfs_estargz::{
    ConvertOptions, Digest, FOOTER_SIZE, PREFETCH_LANDMARK, Toc, clean_name, parse_footer,
};

/// What converting one layer produced.
pub struct ConvertedLayer {
    /// The eStargz blob, deleted when dropped.
    pub blob: tempfile::TempPath,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub toc_digest: Digest,
    pub uncompressed_size: u64,
    /// Blob offset of the TOC gzip member (from the footer just written).
    pub toc_offset: u64,
    /// Offset of `.prefetch.landmark`, when prioritized files put one in.
    pub prefetch_size: Option<u64>,
    /// Prioritized paths this layer does not contain.
    pub missed_prioritized: Vec<String>,
}

/// Converts the layer blob at `source` into an eStargz blob in `tmp_dir`. `bar`, if any, shows
/// uncompressed tar bytes done.
pub fn convert_layer(
    source: &Path,
    tmp_dir: &Path,
    options: &ConvertOptions,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<ConvertedLayer> {
    let input =
        File::open(source).with_context(|| format!("opening layer {}", source.display()))?;
    let mut reader = regfs_estargz::decompress_input(input)
        .with_context(|| format!("reading layer {}", source.display()))?;
    let mut tar_file = tempfile::tempfile_in(tmp_dir)
        .with_context(|| format!("creating a temp file in {}", tmp_dir.display()))?;
    std::io::copy(&mut reader, &mut tar_file)
        .with_context(|| format!("decompressing layer {}", source.display()))?;
    // SAFETY: the temp file is unlinked and private to this process; nobody else can change it.
    let tar = unsafe { memmap2::Mmap::map(&tar_file) }.context("mapping the decompressed layer")?;

    if let Some(b) = bar {
        b.set_length(tar.len() as u64);
        b.set_position(0);
    }
    let progress = |done: u64| {
        if let Some(b) = bar {
            b.set_position(done);
        }
    };
    let mut out = tempfile::NamedTempFile::new_in(tmp_dir)
        .with_context(|| format!("creating a temp file in {}", tmp_dir.display()))?;
    let report = {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.as_file_mut());
        let report = regfs_estargz::convert(&tar, options, &mut w, &progress)
            .with_context(|| format!("converting layer {}", source.display()))?;
        w.flush().context("writing the converted layer")?;
        report
    };
    let toc_offset = read_toc_offset(out.as_file_mut(), report.blob_size)
        .with_context(|| format!("reading back the footer of {}", report.blob_digest))?;
    let prefetch_size = prefetch_landmark(&report.toc);
    Ok(ConvertedLayer {
        blob: out.into_temp_path(),
        digest: report.blob_digest,
        size: report.blob_size,
        diff_id: report.diff_id,
        toc_digest: report.toc_digest,
        uncompressed_size: report.uncompressed_size,
        toc_offset,
        prefetch_size,
        missed_prioritized: report.missed_prioritized,
    })
}

/// The TOC offset the eStargz footer at the end of `file` (of `size` bytes) names.
pub fn read_toc_offset(file: &mut File, size: u64) -> anyhow::Result<u64> {
    let tail_len = size.min(FOOTER_SIZE as u64);
    file.seek(SeekFrom::Start(size - tail_len))?;
    let mut tail = Vec::with_capacity(FOOTER_SIZE);
    file.take(tail_len).read_to_end(&mut tail)?;
    Ok(parse_footer(&tail)?.toc_offset)
}

/// Offset of the root `.prefetch.landmark` entry: everything before it is worth prefetching.
pub fn prefetch_landmark(toc: &Toc) -> Option<u64> {
    toc.entries
        .as_deref()?
        .iter()
        .find(|e| clean_name(&e.name) == PREFETCH_LANDMARK)
        .and_then(|e| u64::try_from(e.offset).ok())
}

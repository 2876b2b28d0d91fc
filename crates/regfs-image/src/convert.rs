//! One layer blob in, one eStargz blob out: the unit of work of image conversion.
//!
//! ```text
//! source blob (gzip | zstd | tar, sniffed) ──decompress──▶ unlinked temp file ──mmap──▶ &[u8]
//!     ──regfs_estargz::convert──▶ named temp file (the new blob) + report (TOC offset, landmark)
//! ```
//!
//! The converter wants the whole tar as one slice (it hands files to parallel compressors), hence
//! the decompressed temp file. The new blob stays a temp file until the caller has pushed or
//! stored it; dropping [`ConvertedLayer`] deletes it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use regfs_estargz::{ConvertOptions, Digest};

use crate::Result;
use crate::error::{Context, bail};

/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a gzip layer (eStargz layers are gzip layers to everyone else).
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker's media type of a gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The options of every conversion (`convert`, `convert-image`, `optimize`): one struct, one
/// validation, so the three cannot drift apart.
#[derive(Clone, Debug, Default)]
pub struct ConversionOptions {
    /// Uncompressed bytes per chunk; `None` = the reference's 4 MiB.
    pub chunk_size: Option<u64>,
    /// Gzip level ([`regfs_estargz::MIN_LEVEL`]..=[`regfs_estargz::MAX_LEVEL`]); `None` = the
    /// format crate's default.
    pub level: Option<u32>,
    /// Paths to put first in each layer, followed by `.prefetch.landmark`.
    pub prioritized_files: Option<Vec<String>>,
}

impl ConversionOptions {
    /// The format crate's options, after checking that the codec can honour them.
    pub fn estargz(&self) -> Result<ConvertOptions> {
        regfs_estargz::validate_level(self.level).context("invalid conversion options")?;
        let defaults = ConvertOptions::default();
        Ok(ConvertOptions {
            chunk_size: self.chunk_size.unwrap_or(defaults.chunk_size),
            level: self.level,
            prioritized_files: self.prioritized_files.clone(),
            ..defaults
        })
    }
}

/// The prioritized files list at `path`: one path per line, blank lines skipped.
pub fn read_prioritized(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the prioritized files list {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// What converting one layer produced.
pub struct ConvertedLayer {
    /// The eStargz blob, deleted when dropped.
    pub blob: tempfile::TempPath,
    /// The new blob's digest.
    pub digest: Digest,
    /// The new blob's size.
    pub size: u64,
    /// The new layer's DiffID.
    pub diff_id: Digest,
    /// sha256 of its TOC JSON.
    pub toc_digest: Digest,
    /// Size of the decompressed blob.
    pub uncompressed_size: u64,
    /// Blob offset of the TOC gzip member.
    pub toc_offset: u64,
    /// Offset of `.prefetch.landmark`, when prioritized files put one in.
    pub prefetch_size: Option<u64>,
    /// Prioritized paths this layer does not contain.
    pub missed_prioritized: Vec<String>,
}

/// Gzip magic and zstd frame magic: anything else is taken to be a plain tar.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Converts the layer blob at `source` (tar, tar+gzip or tar+zstd, sniffed) into an eStargz
/// blob in `tmp_dir`; `progress(done, total)` follows the uncompressed tar bytes. A plain tar
/// is mapped as it is; compressed input is first decompressed into an unlinked temp file.
pub fn convert_layer(
    source: &Path,
    tmp_dir: &Path,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ConvertedLayer> {
    let what = source.display().to_string();
    let mut file = File::open(source).with_context(|| format!("opening layer {what}"))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).with_context(|| format!("reading layer {what}"))?;
    if n == 0 {
        bail!("{what} is empty, want a tar layer");
    }
    if magic[..n].starts_with(&GZIP_MAGIC) || magic[..n] == ZSTD_MAGIC {
        let file = File::open(source).with_context(|| format!("opening layer {what}"))?;
        return convert_reader(file, &what, tmp_dir, options, progress);
    }
    let tar = map_private(&file).with_context(|| format!("mapping {what}"))?;
    convert_mapped(&tar, &what, tmp_dir, options, progress)
}

/// [`convert_layer`] for a stream (stdin, say) named `what` in messages.
pub fn convert_reader(
    input: impl Read,
    what: &str,
    tmp_dir: &Path,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ConvertedLayer> {
    let mut reader =
        regfs_estargz::decompress_input(input).with_context(|| format!("reading layer {what}"))?;
    let mut tar_file = tempfile::tempfile_in(tmp_dir)
        .with_context(|| format!("creating a temp file in {}", tmp_dir.display()))?;
    std::io::copy(&mut reader, &mut tar_file)
        .with_context(|| format!("decompressing layer {what}"))?;
    let tar = map_private(&tar_file).context("mapping the decompressed layer")?;
    convert_mapped(&tar, what, tmp_dir, options, progress)
}

fn convert_mapped(
    tar: &[u8],
    what: &str,
    tmp_dir: &Path,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ConvertedLayer> {
    let total = tar.len() as u64;
    progress(0, total);
    let mut out = tempfile::Builder::new()
        .prefix(".regfs-convert.")
        .tempfile_in(tmp_dir)
        .with_context(|| format!("creating a temp file in {}", tmp_dir.display()))?;
    let report = {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.as_file_mut());
        let report = regfs_estargz::convert(tar, options, &mut w, &|done| progress(done, total))
            .with_context(|| format!("converting {what}"))?;
        w.flush().context("writing the converted layer")?;
        report
    };
    out.as_file()
        .sync_all()
        .context("syncing the converted layer")?;
    Ok(ConvertedLayer {
        blob: out.into_temp_path(),
        digest: report.blob_digest,
        size: report.blob_size,
        diff_id: report.diff_id,
        toc_digest: report.toc_digest,
        uncompressed_size: report.uncompressed_size,
        toc_offset: report.toc_offset,
        prefetch_size: report.prefetch_landmark,
        missed_prioritized: report.missed_prioritized,
    })
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

/// Maps a file that only this process can change (an unlinked temp file, or a content-addressed
/// blob whose bytes are re-hashed by whoever reads the map).
#[allow(unsafe_code)] // memmap2's map is unsafe because another process could change the file
// under the map; the callers' files are private or verified, and the alternative — reading
// whole layers into the heap — would cost their size in RSS.
pub(crate) fn map_private(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: see the function doc: nobody else writes the file while it is mapped.
    unsafe { memmap2::Mmap::map(file) }
}

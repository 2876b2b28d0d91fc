//! `regfs convert-image SRC DST`: every layer of an image to eStargz, pushed as an OCI image.
//!
//! Same output as `ctr-remote image convert --estargz --oci`: an OCI manifest and config, layers
//! `application/vnd.oci.image.layer.v1.tar+gzip` annotated with the TOC digest and uncompressed
//! size, the config's `rootfs.diff_ids` replaced and its history kept. On top, two regfs hints
//! per layer let a lazy mount skip a round trip: the TOC member's offset and the prefetch size.
//!
//! ```text
//! resolve SRC (registry ref | oci:DIR[:TAG]; index → --platform manifest)
//!   └─ per layer, up to --jobs at once:
//!        already eStargz (toc.digest annotation + footer) and no --force → copy/mount as is
//!        else fetch to a temp file → layer_convert (blocking thread) → push from the temp file
//!   └─ config with new diff_ids → push; manifest → push under DST's tag
//! ```
//!
//! Multi-platform sources: only the platform chosen by `--platform` (default: this host's) is
//! converted and DST is a plain manifest, not an index.
//!
//! Blobs are pushed from memory-mapped temp files (the page cache, not the heap, holds them);
//! blobs the destination already has are skipped (the client HEADs first), and within one
//! registry layers kept as they are are mounted across repositories instead of copied.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use regfs_estargz::{ConvertOptions, Digest, FOOTER_SIZE, parse_footer};
use regfs_registry::{Client, MEDIA_TYPE_OCI_MANIFEST as OCI_MANIFEST, Reference};
use serde_json::json;

use super::inspect_ref::{
    PREFETCH_SIZE_ANNOTATION, TOC_DIGEST_ANNOTATION, TOC_OFFSET_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
};
use crate::layer_convert::{ConvertedLayer, convert_layer};
use crate::oci_layout::{self, Descriptor, ManifestBody, OciLayout};
use crate::registry_args::RegistryArgs;

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The reference converter's chunk size (4 MiB): one chunk is the unit of a lazy read.
const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// Layers converted at once. Each conversion already spreads over all cores; two at a time keeps
/// the network busy while the other compresses, without holding many decompressed layers on disk.
const DEFAULT_JOBS: u64 = 2;

#[derive(clap::Args)]
pub struct Args {
    /// Source image: a registry reference or `oci:DIR[:TAG]`.
    src: String,
    /// Destination image: a registry reference or `oci:DIR[:TAG]`.
    dst: String,
    /// File listing paths to put first in each layer (one per line); paths a layer lacks are fine.
    #[arg(long)]
    prioritized_files: Option<PathBuf>,
    /// Uncompressed bytes per chunk (a gzip member each).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// Gzip level 0-9 (default: the format crate's default).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=9))]
    level: Option<u32>,
    /// Convert layers that already are eStargz too.
    #[arg(long)]
    force: bool,
    /// Layers converted in parallel.
    #[arg(long, default_value_t = DEFAULT_JOBS, value_parser = clap::value_parser!(u64).range(1..=64))]
    jobs: u64,
    /// Directory for temp files (decompressed layers, new blobs); default: the system temp dir.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Where an image is read from or written to.
enum Location {
    Registry(Reference),
    Layout { dir: PathBuf, tag: Option<String> },
}

impl Location {
    fn parse(s: &str) -> anyhow::Result<Location> {
        if let Some((dir, tag)) = oci_layout::parse_location(s) {
            return Ok(Location::Layout { dir, tag });
        }
        Ok(Location::Registry(
            s.parse()
                .with_context(|| format!("image reference {s:?}"))?,
        ))
    }
}

/// The resolved source image.
struct Source {
    location: Location,
    layout: Option<OciLayout>,
    manifest: ManifestBody,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
}

/// Everything the per-layer tasks share.
struct Job {
    client: Client,
    src: Source,
    dst: Location,
    dst_layout: Option<OciLayout>,
    options: ConvertOptions,
    /// Per-layer prioritized files (`regfs optimize`); replaces `options.prioritized_files`.
    per_layer: Option<Vec<Vec<String>>>,
    force: bool,
    tmp_dir: PathBuf,
    bars: Option<indicatif::MultiProgress>,
    permits: tokio::sync::Semaphore,
}

/// One layer of the result.
struct LayerOut {
    desc: Descriptor,
    diff_id: String,
    toc_digest: String,
    uncompressed_size: Option<u64>,
    kept: bool,
    missed_prioritized: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let prioritized_files = args
        .prioritized_files
        .as_deref()
        .map(read_prioritized)
        .transpose()?;
    let mut options = ConvertOptions {
        chunk_size: args.chunk_size,
        prioritized_files,
        ..ConvertOptions::default()
    };
    if let Some(level) = args.level {
        options.level = level;
    }
    execute(Plan {
        src: args.src,
        dst: args.dst,
        registry: args.registry,
        options,
        per_layer: None,
        force: args.force,
        jobs: args.jobs,
        tmp_dir: args.tmp_dir,
    })
}

/// For `regfs optimize`: converts every layer of `src` (eStargz or not) with its own prioritized
/// files (`per_layer[i]`; an empty or missing list puts `.no.prefetch.landmark` first) and
/// pushes the result to `dst`, printing the same JSON summary as `convert-image`.
pub fn convert_prioritized(
    src: &str,
    dst: &str,
    registry: &RegistryArgs,
    per_layer: Vec<Vec<String>>,
    chunk_size: Option<u64>,
    level: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let mut options = ConvertOptions::default();
    if let Some(c) = chunk_size {
        options.chunk_size = c;
    }
    if let Some(l) = level {
        options.level = l;
    }
    execute(Plan {
        src: src.to_owned(),
        dst: dst.to_owned(),
        registry: registry.clone(),
        options,
        per_layer: Some(per_layer),
        force: true,
        jobs: DEFAULT_JOBS,
        tmp_dir: None,
    })
}

/// One conversion, however it was asked for.
struct Plan {
    src: String,
    dst: String,
    registry: RegistryArgs,
    options: ConvertOptions,
    /// Prioritized files per layer, overriding `options.prioritized_files`.
    per_layer: Option<Vec<Vec<String>>>,
    force: bool,
    jobs: u64,
    tmp_dir: Option<PathBuf>,
}

fn execute(plan: Plan) -> anyhow::Result<ExitCode> {
    let src = Location::parse(&plan.src)?;
    let dst = Location::parse(&plan.dst)?;
    let client = plan.registry.client()?;
    let platform = plan
        .registry
        .platform
        .clone()
        .unwrap_or_else(regfs_registry::Platform::host);
    let tmp_dir = plan.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let src = resolve_source(&client, src, &platform)
            .await
            .with_context(|| format!("resolving {}", plan.src))?;
        let dst_layout = match &dst {
            Location::Layout { dir, .. } => Some(OciLayout::create(dir)?),
            Location::Registry(_) => None,
        };
        let job = Arc::new(Job {
            client,
            src,
            dst,
            dst_layout,
            options: plan.options,
            per_layer: plan.per_layer,
            force: plan.force,
            tmp_dir,
            bars: std::io::stderr()
                .is_terminal()
                .then(indicatif::MultiProgress::new),
            permits: tokio::sync::Semaphore::new(usize::try_from(plan.jobs).unwrap_or(1)),
        });
        let summary = convert_image(&job)
            .await
            .with_context(|| format!("converting {} to {}", plan.src, plan.dst))?;
        println!("{summary}");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn resolve_source(
    client: &Client,
    location: Location,
    platform: &regfs_registry::Platform,
) -> anyhow::Result<Source> {
    match location {
        Location::Registry(r) => {
            let image = client.resolve(&r).await?;
            let manifest = serde_json::from_slice(&image.manifest_bytes)
                .with_context(|| format!("parsing manifest {}", image.manifest_digest))?;
            Ok(Source {
                location: Location::Registry(image.reference.clone()),
                layout: None,
                manifest,
                manifest_bytes: image.manifest_bytes,
                config_bytes: image.config_bytes,
            })
        }
        Location::Layout { dir, tag } => {
            let layout = OciLayout::open(&dir)?;
            let image = layout.resolve(tag.as_deref(), platform)?;
            Ok(Source {
                location: Location::Layout { dir, tag },
                layout: Some(layout),
                manifest: image.manifest,
                manifest_bytes: image.manifest_bytes,
                config_bytes: image.config_bytes,
            })
        }
    }
}

async fn convert_image(job: &Arc<Job>) -> anyhow::Result<serde_json::Value> {
    let src_manifest: serde_json::Value = serde_json::from_slice(&job.src.manifest_bytes)?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&job.src.config_bytes).context("parsing the source image config")?;
    // Checked so that the rewrite below cannot index into a non-object (serde_json would panic).
    if !config["rootfs"].is_object() {
        bail!("the source image config has no rootfs object");
    }
    let src_diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if src_diff_ids.len() != job.src.manifest.layers.len() {
        bail!(
            "the source config lists {} diff_ids for {} layers",
            src_diff_ids.len(),
            job.src.manifest.layers.len()
        );
    }

    let tasks = job.src.manifest.layers.iter().enumerate().map(|(i, desc)| {
        let job = job.clone();
        let desc = desc.clone();
        let diff_id = src_diff_ids[i].clone();
        async move {
            let _permit = job.permits.acquire().await?;
            layer(&job, i, desc, diff_id)
                .await
                .with_context(|| format!("layer {i}"))
        }
    });
    let layers: Vec<LayerOut> = futures::future::try_join_all(tasks).await?;

    config["rootfs"]["diff_ids"] =
        json!(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>());
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = Digest::sha256(&config_bytes);
    push_bytes(job, &config_digest, Bytes::from(config_bytes.clone())).await?;

    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": layers.iter().map(|l| &l.desc).collect::<Vec<_>>(),
    });
    if let Some(a) = src_manifest.get("annotations") {
        manifest["annotations"] = a.clone();
    }
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = push_manifest(job, manifest_bytes).await?;

    Ok(json!({
        "manifestDigest": manifest_digest.to_string(),
        "configDigest": config_digest.to_string(),
        "layers": layers.iter().map(|l| json!({
            "digest": l.desc.digest,
            "size": l.desc.size,
            "diffID": l.diff_id,
            "tocDigest": l.toc_digest,
            "uncompressedSize": l.uncompressed_size,
            "kept": l.kept,
            "missedPrioritized": l.missed_prioritized,
        })).collect::<Vec<_>>(),
    }))
}

/// Converts (or keeps) layer `i` and puts its blob into the destination.
async fn layer(
    job: &Arc<Job>,
    i: usize,
    desc: Descriptor,
    diff_id: String,
) -> anyhow::Result<LayerOut> {
    let digest = desc.digest()?;
    let bar = job.bars.as_ref().map(|m| {
        let bar = m.add(indicatif::ProgressBar::new(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} {msg:10} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("layer {i} {}", &digest.hex()[..12]));
        bar
    });
    let status = |msg: &'static str| {
        if let Some(b) = &bar {
            b.set_message(msg);
        }
    };

    if !job.force
        && let Some(toc_digest) = desc.annotations.get(TOC_DIGEST_ANNOTATION).cloned()
        && let Some(toc_offset) = estargz_footer(job, &desc, &digest).await?
    {
        status("copying");
        copy_blob(job, &desc, &digest).await?;
        let mut out = desc.clone();
        if out.media_type == DOCKER_LAYER_GZIP {
            out.media_type = OCI_LAYER_GZIP.to_owned();
        }
        out.annotations
            .entry(TOC_OFFSET_ANNOTATION.to_owned())
            .or_insert_with(|| toc_offset.to_string());
        if let Some(b) = &bar {
            b.finish_with_message("kept");
        }
        return Ok(LayerOut {
            uncompressed_size: desc
                .annotations
                .get(UNCOMPRESSED_SIZE_ANNOTATION)
                .and_then(|s| s.parse().ok()),
            desc: out,
            diff_id,
            toc_digest,
            kept: true,
            missed_prioritized: Vec::new(),
        });
    }

    status("fetching");
    if let Some(b) = &bar {
        b.set_length(desc.size);
    }
    let (source_path, _fetched) = fetch_to_file(job, &digest).await?;
    status("converting");
    let converted: ConvertedLayer = {
        let job = job.clone();
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || {
            let options = match job.per_layer.as_ref().and_then(|p| p.get(i)) {
                Some(list) => &ConvertOptions {
                    prioritized_files: Some(list.clone()),
                    ..job.options.clone()
                },
                None => &job.options,
            };
            convert_layer(&source_path, &job.tmp_dir, options, bar.as_ref())
        })
        .await??
    };
    status("pushing");
    put_file(job, &converted.digest, &converted.blob).await?;
    if let Some(b) = &bar {
        b.finish_with_message("done");
    }

    let mut annotations = BTreeMap::new();
    annotations.insert(
        TOC_DIGEST_ANNOTATION.to_owned(),
        converted.toc_digest.to_string(),
    );
    annotations.insert(
        UNCOMPRESSED_SIZE_ANNOTATION.to_owned(),
        converted.uncompressed_size.to_string(),
    );
    annotations.insert(
        TOC_OFFSET_ANNOTATION.to_owned(),
        converted.toc_offset.to_string(),
    );
    if let Some(p) = converted.prefetch_size {
        annotations.insert(PREFETCH_SIZE_ANNOTATION.to_owned(), p.to_string());
    }
    Ok(LayerOut {
        desc: Descriptor {
            media_type: OCI_LAYER_GZIP.to_owned(),
            digest: converted.digest.to_string(),
            size: converted.size,
            platform: None,
            annotations,
        },
        diff_id: converted.diff_id.to_string(),
        toc_digest: converted.toc_digest.to_string(),
        uncompressed_size: Some(converted.uncompressed_size),
        kept: false,
        missed_prioritized: converted.missed_prioritized,
    })
}

/// The TOC offset if the source blob ends in an eStargz footer.
async fn estargz_footer(
    job: &Job,
    desc: &Descriptor,
    digest: &Digest,
) -> anyhow::Result<Option<u64>> {
    let size = desc.size;
    let start = size.saturating_sub(FOOTER_SIZE as u64);
    let tail = match (&job.src.location, &job.src.layout) {
        (Location::Registry(r), _) => job
            .client
            .read_range(r, digest, start..size)
            .await?
            .to_vec(),
        (_, Some(layout)) => {
            use std::io::{Read, Seek, SeekFrom};
            let path = layout.blob_path(digest);
            let mut f = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            f.seek(SeekFrom::Start(start))?;
            let mut tail = Vec::new();
            f.take(FOOTER_SIZE as u64).read_to_end(&mut tail)?;
            tail
        }
        (Location::Layout { .. }, None) => bail!("source layout not open"),
    };
    Ok(parse_footer(&tail).ok().map(|f| f.toc_offset))
}

/// A local file with the source blob: the layout's own file, or a verified download into a
/// temp file (returned too, so that it lives as long as the path is used).
async fn fetch_to_file(
    job: &Job,
    digest: &Digest,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempPath>)> {
    match (&job.src.location, &job.src.layout) {
        (Location::Registry(r), _) => {
            let tmp = tempfile::NamedTempFile::new_in(&job.tmp_dir)
                .with_context(|| format!("creating a temp file in {}", job.tmp_dir.display()))?;
            let mut file = tokio::fs::File::from_std(tmp.reopen()?);
            job.client
                .fetch_blob_to(r, digest, &mut file)
                .await
                .with_context(|| format!("fetching {digest}"))?;
            let path = tmp.into_temp_path();
            Ok((path.to_path_buf(), Some(path)))
        }
        (_, Some(layout)) => Ok((layout.blob_path(digest), None)),
        (Location::Layout { .. }, None) => bail!("source layout not open"),
    }
}

/// Makes a kept source blob available in the destination.
async fn copy_blob(job: &Job, desc: &Descriptor, digest: &Digest) -> anyhow::Result<()> {
    if let (Location::Registry(src), Location::Registry(dst)) = (&job.src.location, &job.dst) {
        if src.registry == dst.registry {
            if src.repository == dst.repository {
                return Ok(());
            }
            if job.client.mount_blob(dst, &src.repository, digest).await? {
                return Ok(());
            }
        }
        if job.client.blob_size(dst, digest).await.is_ok() {
            return Ok(());
        }
    }
    if let (Some(src), Some(dst)) = (&job.src.layout, &job.dst_layout)
        && src.dir() == dst.dir()
    {
        return Ok(());
    }
    let (path, _tmp) = fetch_to_file(job, digest).await?;
    let size = std::fs::metadata(&path)?.len();
    if size != desc.size {
        bail!(
            "blob {digest} has {size} bytes, the manifest says {}",
            desc.size
        );
    }
    put_file(job, digest, &path).await
}

/// Puts the blob file at `path` into the destination.
async fn put_file(job: &Job, digest: &Digest, path: &Path) -> anyhow::Result<()> {
    match (&job.dst, &job.dst_layout) {
        (Location::Registry(r), _) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the file is our own temp file or a layout blob named by its digest; the
            // client re-hashes the bytes before pushing, so a concurrent change is caught.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("mapping {}", path.display()))?;
            job.client
                .push_blob(r, digest, Bytes::from_owner(map))
                .await
                .with_context(|| format!("pushing {digest} to {r}"))?;
            Ok(())
        }
        (_, Some(layout)) => {
            let dest = layout.blob_path(digest);
            if !dest.exists() {
                let tmp = tempfile::NamedTempFile::new_in(layout.dir().join("blobs/sha256"))?;
                std::fs::copy(path, tmp.path())
                    .with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
                tmp.persist(&dest)
                    .with_context(|| format!("renaming into {}", dest.display()))?;
            }
            Ok(())
        }
        (Location::Layout { .. }, None) => bail!("destination layout not open"),
    }
}

async fn push_bytes(job: &Job, digest: &Digest, data: Bytes) -> anyhow::Result<()> {
    match (&job.dst, &job.dst_layout) {
        (Location::Registry(r), _) => Ok(job
            .client
            .push_blob(r, digest, data)
            .await
            .with_context(|| format!("pushing {digest} to {r}"))?),
        (_, Some(layout)) => {
            layout.put_blob_bytes(&data)?;
            Ok(())
        }
        (Location::Layout { .. }, None) => bail!("destination layout not open"),
    }
}

async fn push_manifest(job: &Job, body: Vec<u8>) -> anyhow::Result<Digest> {
    match (&job.dst, &job.dst_layout) {
        (Location::Registry(r), _) => Ok(job
            .client
            .push_manifest(r, OCI_MANIFEST, Bytes::from(body))
            .await
            .with_context(|| format!("pushing the manifest to {r}"))?),
        (Location::Layout { tag, .. }, Some(layout)) => {
            let size = body.len() as u64;
            let digest = layout.put_blob_bytes(&body)?;
            let desc = Descriptor {
                media_type: OCI_MANIFEST.to_owned(),
                digest: digest.to_string(),
                size,
                platform: None,
                annotations: BTreeMap::new(),
            };
            layout.set_tag(tag.as_deref().unwrap_or("latest"), desc)?;
            Ok(digest)
        }
        (Location::Layout { .. }, None) => bail!("destination layout not open"),
    }
}

/// Paths to prioritize: one per line, blank lines ignored.
fn read_prioritized(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the prioritized files list {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

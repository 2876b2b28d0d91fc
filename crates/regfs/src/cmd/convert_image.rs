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
//! converted and DST is a plain manifest; with `--all-platforms` every platform is converted,
//! its manifest pushed by digest, and DST is an OCI index of them.
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
use regfs_registry::{
    Client, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST as OCI_MANIFEST, Reference, is_index,
};
use serde_json::json;

use crate::layer_convert::{ConvertedLayer, convert_layer};
use crate::oci_layout::{self, Descriptor, ManifestBody, OciLayout};
use crate::registry_args::RegistryArgs;
use crate::remote::{
    PREFETCH_SIZE_ANNOTATION, TOC_DIGEST_ANNOTATION, TOC_OFFSET_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
};

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
    /// Convert every platform of a multi-platform source and push an index of the results
    /// (default: only the --platform one, pushed as a plain manifest).
    #[arg(long)]
    all_platforms: bool,
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
#[derive(Clone)]
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
        .map(super::convert::read_prioritized)
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
        all_platforms: args.all_platforms,
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
        all_platforms: false,
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
    all_platforms: bool,
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
    let dst_layout = match &dst {
        Location::Layout { dir, .. } => Some(OciLayout::create(dir)?),
        Location::Registry(_) => None,
    };
    let bars = std::io::stderr()
        .is_terminal()
        .then(indicatif::MultiProgress::new);
    let jobs = usize::try_from(plan.jobs).unwrap_or(1);
    let what = || format!("converting {} to {}", plan.src, plan.dst);
    let summary = runtime.block_on(async {
        let platforms = if plan.all_platforms {
            source_platforms(&client, &src)
                .await
                .with_context(|| format!("listing the platforms of {}", plan.src))?
        } else {
            None
        };
        let make_job = |src: Source| {
            Arc::new(Job {
                client: client.clone(),
                src,
                dst: dst.clone(),
                dst_layout: dst_layout.clone(),
                options: plan.options.clone(),
                per_layer: plan.per_layer.clone(),
                force: plan.force,
                tmp_dir: tmp_dir.clone(),
                bars: bars.clone(),
                permits: tokio::sync::Semaphore::new(jobs),
            })
        };
        let Some(platforms) = platforms else {
            let src = resolve_source(&client, src.clone(), &platform, None)
                .await
                .with_context(|| format!("resolving {}", plan.src))?;
            let job = make_job(src);
            let (summary, _) = convert_image(&job, true).await.with_context(what)?;
            return anyhow::Ok(summary);
        };
        let mut entries = Vec::new();
        let mut summaries = Vec::new();
        let mut last_job = None;
        for desc in platforms {
            let digest = desc.digest()?;
            let src = resolve_source(&client, src.clone(), &platform, Some(digest))
                .await
                .with_context(|| format!("resolving {}@{digest}", plan.src))?;
            let job = make_job(src);
            let (mut summary, manifest) = convert_image(&job, false).await.with_context(what)?;
            summary["platform"] = desc.platform.clone().unwrap_or_default();
            entries.push(json!({
                "mediaType": OCI_MANIFEST,
                "digest": Digest::sha256(&manifest).to_string(),
                "size": manifest.len(),
                "platform": desc.platform,
            }));
            summaries.push(summary);
            last_job = Some(job);
        }
        let Some(job) = last_job else {
            bail!("{} is an index without platform manifests", plan.src);
        };
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": entries,
        }))?;
        let index_digest = push_manifest(&job, MEDIA_TYPE_OCI_INDEX, index, true).await?;
        Ok(json!({"indexDigest": index_digest.to_string(), "manifests": summaries}))
    })?;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// The source image; `pinned` names one manifest of a multi-platform source directly.
async fn resolve_source(
    client: &Client,
    location: Location,
    platform: &regfs_registry::Platform,
    pinned: Option<Digest>,
) -> anyhow::Result<Source> {
    match location {
        Location::Registry(r) => {
            let r = match pinned {
                Some(d) => r.with_digest(d),
                None => r,
            };
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
            let image = match pinned {
                Some(d) => layout.resolve_manifest(&d)?,
                None => layout.resolve(tag.as_deref(), platform)?,
            };
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

/// The per-platform manifests when the source is a multi-platform index, else `None`.
async fn source_platforms(
    client: &Client,
    location: &Location,
) -> anyhow::Result<Option<Vec<Descriptor>>> {
    match location {
        Location::Registry(r) => {
            let (body, media_type, _) = client.fetch_manifest(r).await?;
            if !is_index(&media_type) {
                return Ok(None);
            }
            let index: ManifestBody =
                serde_json::from_slice(&body).with_context(|| format!("parsing index {r}"))?;
            Ok(Some(
                index
                    .manifests
                    .into_iter()
                    .filter(|d| d.platform.is_some())
                    .collect(),
            ))
        }
        Location::Layout { dir, tag } => OciLayout::open(dir)?.platform_manifests(tag.as_deref()),
    }
}

/// Converts the job's image and pushes config and manifest (under DST's tag when `tagged`,
/// else by digest only); returns the summary and the manifest bytes.
async fn convert_image(
    job: &Arc<Job>,
    tagged: bool,
) -> anyhow::Result<(serde_json::Value, Vec<u8>)> {
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
    let manifest_digest = push_manifest(job, OCI_MANIFEST, manifest_bytes.clone(), tagged).await?;

    let summary = json!({
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
    });
    Ok((summary, manifest_bytes))
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
    let (source_path, _fetched) = fetch_to_file(job, &digest, bar.as_ref()).await?;
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
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempPath>)> {
    match (&job.src.location, &job.src.layout) {
        (Location::Registry(r), _) => {
            let tmp = tempfile::NamedTempFile::new_in(&job.tmp_dir)
                .with_context(|| format!("creating a temp file in {}", job.tmp_dir.display()))?;
            let mut file = Metered {
                inner: tokio::fs::File::from_std(tmp.reopen()?),
                bar: bar.cloned(),
            };
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

/// A writer that advances a progress bar by the bytes passing through it.
struct Metered<W> {
    inner: W,
    bar: Option<indicatif::ProgressBar>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Metered<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (std::task::Poll::Ready(Ok(n)), Some(bar)) = (&polled, &this.bar) {
            bar.inc(*n as u64);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
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
    let (path, _tmp) = fetch_to_file(job, digest, None).await?;
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

/// Pushes a manifest or index: under DST's tag when `tagged`, else by digest only (the
/// per-platform manifests of an index).
async fn push_manifest(
    job: &Job,
    media_type: &str,
    body: Vec<u8>,
    tagged: bool,
) -> anyhow::Result<Digest> {
    let digest = Digest::sha256(&body);
    match (&job.dst, &job.dst_layout) {
        (Location::Registry(r), _) => {
            let target = if tagged {
                r.clone()
            } else {
                r.with_digest(digest)
            };
            Ok(job
                .client
                .push_manifest(&target, media_type, Bytes::from(body))
                .await
                .with_context(|| format!("pushing the manifest to {target}"))?)
        }
        (Location::Layout { tag, .. }, Some(layout)) => {
            let size = body.len() as u64;
            layout.put_blob_bytes(&body)?;
            if tagged {
                let desc = Descriptor {
                    media_type: media_type.to_owned(),
                    digest: digest.to_string(),
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                };
                layout.set_tag(tag.as_deref().unwrap_or("latest"), desc)?;
            }
            Ok(digest)
        }
        (Location::Layout { .. }, None) => bail!("destination layout not open"),
    }
}

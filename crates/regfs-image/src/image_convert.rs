//! Image conversion: every layer of an image to eStargz, pushed as an OCI image.
//!
//! Same output as `ctr-remote image convert --estargz --oci`: an OCI manifest and config, layers
//! `application/vnd.oci.image.layer.v1.tar+gzip` annotated with the TOC digest and uncompressed
//! size, the config's `rootfs.diff_ids` replaced and its history kept. On top, two regfs hints
//! per layer let a lazy mount skip a round trip: the TOC member's offset and the prefetch size.
//!
//! ```text
//! resolve SRC (registry ref | oci:DIR[:TAG]; index → --platform manifest)
//!   └─ per layer, up to `jobs` at once:
//!        already eStargz (toc.digest annotation + footer) and no --force → copy/mount as is
//!        else fetch to a temp file → convert_layer (blocking thread) → push from the temp file
//!   └─ config with new diff_ids → push; manifest → push under DST's tag
//! ```
//!
//! Multi-platform sources: only the chosen platform (default: this host's) is converted and DST
//! is a plain manifest; with `all_platforms` every platform is converted,
//! its manifest pushed by digest, and DST is an OCI index of them.
//!
//! Blobs are pushed from memory-mapped temp files (the page cache, not the heap, holds them);
//! blobs the destination already has are skipped (the client HEADs first), and within one
//! registry layers kept as they are are mounted across repositories instead of copied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use regfs_estargz::{ConvertOptions, Digest, FOOTER_SIZE, parse_footer};
use regfs_registry::{
    Client, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST as OCI_MANIFEST, Platform, Reference,
    is_index,
};
use serde_json::json;

use crate::annotation::{
    PREFETCH_SIZE as PREFETCH_SIZE_ANNOTATION, TOC_DIGEST as TOC_DIGEST_ANNOTATION,
    TOC_OFFSET as TOC_OFFSET_ANNOTATION, UNCOMPRESSED_SIZE as UNCOMPRESSED_SIZE_ANNOTATION,
};
use crate::convert::{
    ConversionOptions, ConvertedLayer, DOCKER_LAYER_GZIP, OCI_CONFIG, OCI_LAYER_GZIP,
    convert_layer, map_private,
};
use crate::error::{Context, bail, required};
use crate::layout::{Descriptor, ManifestBody, OciLayout};
use crate::source::ImageLocation;
use crate::{Error, Result};

/// Layers converted at once by default. Each conversion already spreads over all cores; two at
/// a time keeps the network busy while the other compresses, without holding many decompressed
/// layers on disk.
pub const DEFAULT_JOBS: usize = 2;

/// One image conversion, however it was asked for (`convert-image`, `optimize`).
#[derive(Clone, Debug)]
pub struct ImageConversion {
    /// The image to convert.
    pub src: ImageLocation,
    /// Where the result goes (its tag names the result).
    pub dst: ImageLocation,
    /// Chunk size, level, prioritized files.
    pub options: ConversionOptions,
    /// Prioritized files per layer (`regfs optimize`), overriding `options.prioritized_files`;
    /// an empty list puts `.no.prefetch.landmark` first.
    pub per_layer: Option<Vec<Vec<String>>>,
    /// Convert every platform of an index and push an index of the results.
    pub all_platforms: bool,
    /// Convert layers that already are eStargz too.
    pub force: bool,
    /// Layers converted in parallel.
    pub jobs: usize,
    /// Directory for temp files (decompressed layers, new blobs).
    pub tmp_dir: PathBuf,
    /// The platform to convert from an index (when not `all_platforms`).
    pub platform: Platform,
}

/// Where a layer's conversion is, for a front end's progress display.
#[derive(Clone, Debug)]
pub struct LayerProgress {
    /// Position of the layer in its manifest.
    pub layer: usize,
    /// The source layer.
    pub digest: Digest,
    /// "fetching", "converting", "pushing", "copying", "done" or "kept".
    pub phase: &'static str,
    /// Bytes done in this phase.
    pub done: u64,
    /// Bytes in this phase (0 when unknown).
    pub total: u64,
}

/// Receives [`LayerProgress`] updates.
pub type Progress = Arc<dyn Fn(&LayerProgress) + Send + Sync>;

/// An opened image store: a registry repository or an OCI layout, with the tag of the image.
#[derive(Clone)]
enum Store {
    Registry(Reference),
    Layout {
        layout: OciLayout,
        tag: Option<String>,
    },
}

impl Store {
    fn open(location: &ImageLocation, create: bool) -> Result<Store> {
        Ok(match location {
            ImageLocation::Registry(r) => Store::Registry(r.clone()),
            ImageLocation::Layout { dir, tag } => Store::Layout {
                layout: if create {
                    OciLayout::create(dir)?
                } else {
                    OciLayout::open(dir)?
                },
                tag: tag.clone(),
            },
        })
    }
}

/// The resolved source image.
struct Source {
    store: Store,
    manifest: ManifestBody,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
}

/// Everything the per-layer tasks share.
struct Job {
    client: Client,
    src: Source,
    dst: Store,
    options: ConvertOptions,
    per_layer: Option<Vec<Vec<String>>>,
    force: bool,
    tmp_dir: PathBuf,
    progress: Option<Progress>,
    permits: tokio::sync::Semaphore,
}

impl Job {
    fn report(&self, layer: usize, digest: Digest, phase: &'static str, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(&LayerProgress {
                layer,
                digest,
                phase,
                done,
                total,
            });
        }
    }
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

/// Converts `conv.src` and pushes it to `conv.dst`; returns the JSON summary the CLI prints
/// (digests of the result, per layer: sizes, TOC digest, kept or converted, missed paths).
pub async fn convert_image(
    client: &Client,
    conv: &ImageConversion,
    progress: Option<Progress>,
) -> Result<serde_json::Value> {
    let options = conv.options.estargz()?;
    let src_store = Store::open(&conv.src, false)?;
    let dst = Store::open(&conv.dst, true)?;
    let jobs = conv.jobs.max(1);
    let what = || format!("converting {} to {}", conv.src, conv.dst);
    let make_job = |src: Source| {
        Arc::new(Job {
            client: client.clone(),
            src,
            dst: dst.clone(),
            options: options.clone(),
            per_layer: conv.per_layer.clone(),
            force: conv.force,
            tmp_dir: conv.tmp_dir.clone(),
            progress: progress.clone(),
            permits: tokio::sync::Semaphore::new(jobs),
        })
    };
    let platforms = if conv.all_platforms {
        source_platforms(client, &src_store)
            .await
            .with_context(|| format!("listing the platforms of {}", conv.src))?
    } else {
        None
    };
    let Some(platforms) = platforms else {
        let src = resolve_source(client, &src_store, &conv.platform, None)
            .await
            .with_context(|| format!("resolving {}", conv.src))?;
        let (summary, _) = convert_one(&make_job(src), true).await.with_context(what)?;
        return Ok(summary);
    };
    let mut entries = Vec::new();
    let mut summaries = Vec::new();
    let mut last_job = None;
    for desc in platforms {
        let digest = desc.digest;
        let src = resolve_source(client, &src_store, &conv.platform, Some(digest))
            .await
            .with_context(|| format!("resolving {}@{digest}", conv.src))?;
        let job = make_job(src);
        let (mut summary, manifest) = convert_one(&job, false).await.with_context(what)?;
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
    let job = required!(
        last_job,
        "{} is an index without platform manifests",
        conv.src
    );
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": entries,
    }))
    .context("encoding the index")?;
    let index_digest = push_manifest(&job, MEDIA_TYPE_OCI_INDEX, index, true).await?;
    Ok(json!({"indexDigest": index_digest.to_string(), "manifests": summaries}))
}

/// The source image; `pinned` names one manifest of a multi-platform source directly.
async fn resolve_source(
    client: &Client,
    store: &Store,
    platform: &Platform,
    pinned: Option<Digest>,
) -> Result<Source> {
    match store {
        Store::Registry(r) => {
            let r = match pinned {
                Some(d) => r.with_digest(d),
                None => r.clone(),
            };
            let image = client
                .resolve_for(&r, platform)
                .await
                .with_context(|| format!("resolving {r}"))?;
            let manifest = ManifestBody::parse(
                &image.manifest_bytes,
                &format!("manifest {}", image.manifest_digest),
            )?;
            Ok(Source {
                store: Store::Registry(image.reference.clone()),
                manifest,
                manifest_bytes: image.manifest_bytes,
                config_bytes: image.config_bytes,
            })
        }
        Store::Layout { layout, tag } => {
            let image = match pinned {
                Some(d) => layout.resolve_manifest(&d)?,
                None => layout.resolve(tag.as_deref(), platform).await?,
            };
            Ok(Source {
                store: store.clone(),
                manifest: image.manifest,
                manifest_bytes: image.manifest_bytes,
                config_bytes: image.config_bytes,
            })
        }
    }
}

/// The per-platform manifests when the source is a multi-platform index, else `None`.
async fn source_platforms(client: &Client, store: &Store) -> Result<Option<Vec<Descriptor>>> {
    match store {
        Store::Registry(r) => {
            let (body, media_type, _) = client
                .fetch_manifest(r)
                .await
                .with_context(|| format!("fetching the manifest of {r}"))?;
            if !is_index(&media_type) {
                return Ok(None);
            }
            let index = ManifestBody::parse(&body, &format!("index {r}"))?;
            Ok(Some(
                index
                    .manifests
                    .into_iter()
                    .filter(|d| d.platform.is_some())
                    .collect(),
            ))
        }
        Store::Layout { layout, tag } => layout.platform_manifests(tag.as_deref()),
    }
}

/// Converts the job's image and pushes config and manifest (under DST's tag when `tagged`,
/// else by digest only); returns the summary and the manifest bytes.
async fn convert_one(job: &Arc<Job>, tagged: bool) -> Result<(serde_json::Value, Vec<u8>)> {
    let src_manifest: serde_json::Value =
        serde_json::from_slice(&job.src.manifest_bytes).context("parsing the source manifest")?;
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

    let tasks = job
        .src
        .manifest
        .layers
        .iter()
        .zip(src_diff_ids)
        .enumerate()
        .map(|(i, (desc, diff_id))| {
            let job = job.clone();
            let desc = desc.clone();
            async move {
                let _permit = job
                    .permits
                    .acquire()
                    .await
                    .map_err(|e| Error::Invalid(format!("conversion cancelled: {e}")))?;
                layer(&job, i, desc, diff_id)
                    .await
                    .with_context(|| format!("layer {i}"))
            }
        });
    let layers: Vec<LayerOut> = futures::future::try_join_all(tasks).await?;

    config["rootfs"]["diff_ids"] =
        json!(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>());
    let config_bytes = serde_json::to_vec(&config).context("encoding the config")?;
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
    let manifest_bytes = serde_json::to_vec(&manifest).context("encoding the manifest")?;
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
async fn layer(job: &Arc<Job>, i: usize, desc: Descriptor, diff_id: String) -> Result<LayerOut> {
    let digest = desc.digest;
    if !job.force
        && let Some(toc_digest) = desc.annotations.get(TOC_DIGEST_ANNOTATION).cloned()
        && let Some(toc_offset) = estargz_footer(job, &desc).await?
    {
        job.report(i, digest, "copying", 0, desc.size);
        copy_blob(job, i, &desc).await?;
        let mut out = desc.clone();
        if out.media_type == DOCKER_LAYER_GZIP {
            out.media_type = OCI_LAYER_GZIP.to_owned();
        }
        out.annotations
            .entry(TOC_OFFSET_ANNOTATION.to_owned())
            .or_insert_with(|| toc_offset.to_string());
        job.report(i, digest, "kept", desc.size, desc.size);
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

    job.report(i, digest, "fetching", 0, desc.size);
    let (source_path, _fetched) = fetch_to_file(job, i, &digest).await?;
    let converted: ConvertedLayer = {
        let job = job.clone();
        tokio::task::spawn_blocking(move || {
            let options = match job.per_layer.as_ref().and_then(|p| p.get(i)) {
                Some(list) => &ConvertOptions {
                    prioritized_files: Some(list.clone()),
                    ..job.options.clone()
                },
                None => &job.options,
            };
            convert_layer(&source_path, &job.tmp_dir, options, &|done, total| {
                job.report(i, digest, "converting", done, total)
            })
        })
        .await
        .map_err(|e| Error::Invalid(format!("the conversion task failed: {e}")))??
    };
    job.report(i, digest, "pushing", 0, converted.size);
    put_file(job, &converted.digest, &converted.blob).await?;
    job.report(i, digest, "done", converted.size, converted.size);

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
            digest: converted.digest,
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
async fn estargz_footer(job: &Job, desc: &Descriptor) -> Result<Option<u64>> {
    let size = desc.size;
    let digest = &desc.digest;
    let start = size.saturating_sub(FOOTER_SIZE as u64);
    let tail = match &job.src.store {
        Store::Registry(r) => job
            .client
            .read_range(r, digest, start..size)
            .await
            .with_context(|| format!("reading the footer of {digest}"))?
            .to_vec(),
        Store::Layout { layout, .. } => {
            use std::io::{Read, Seek, SeekFrom};
            let path = layout.blob_path(digest);
            let mut f = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            f.seek(SeekFrom::Start(start))
                .with_context(|| format!("reading {}", path.display()))?;
            let mut tail = Vec::new();
            f.take(FOOTER_SIZE as u64)
                .read_to_end(&mut tail)
                .with_context(|| format!("reading {}", path.display()))?;
            tail
        }
    };
    Ok(parse_footer(&tail).ok().map(|f| f.toc_offset))
}

/// A local file with the source blob: the layout's own file, or a verified download into a
/// temp file (returned too, so that it lives as long as the path is used).
async fn fetch_to_file(
    job: &Arc<Job>,
    layer: usize,
    digest: &Digest,
) -> Result<(PathBuf, Option<tempfile::TempPath>)> {
    match &job.src.store {
        Store::Registry(r) => {
            let tmp = tempfile::NamedTempFile::new_in(&job.tmp_dir)
                .with_context(|| format!("creating a temp file in {}", job.tmp_dir.display()))?;
            let file = tokio::fs::File::from_std(
                tmp.reopen()
                    .with_context(|| format!("opening {}", tmp.path().display()))?,
            );
            let mut file = Metered {
                inner: file,
                done: 0,
                on_write: {
                    let (job, digest) = (job.clone(), *digest);
                    Box::new(move |done| job.report(layer, digest, "fetching", done, 0))
                },
            };
            job.client
                .fetch_blob_to(r, digest, &mut file)
                .await
                .with_context(|| format!("fetching {digest}"))?;
            let path = tmp.into_temp_path();
            Ok((path.to_path_buf(), Some(path)))
        }
        Store::Layout { layout, .. } => Ok((layout.blob_path(digest), None)),
    }
}

/// A writer that reports the bytes passing through it.
struct Metered<W> {
    inner: W,
    done: u64,
    on_write: Box<dyn Fn(u64) + Send + Sync>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Metered<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            this.done += *n as u64;
            (this.on_write)(this.done);
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
async fn copy_blob(job: &Arc<Job>, layer: usize, desc: &Descriptor) -> Result<()> {
    let digest = &desc.digest;
    match (&job.src.store, &job.dst) {
        (Store::Registry(src), Store::Registry(dst)) => {
            if src.registry == dst.registry {
                if src.repository == dst.repository {
                    return Ok(());
                }
                if job
                    .client
                    .mount_blob(dst, &src.repository, digest)
                    .await
                    .with_context(|| format!("mounting {digest} into {dst}"))?
                {
                    return Ok(());
                }
            }
            if job.client.blob_size(dst, digest).await.is_ok() {
                return Ok(());
            }
        }
        (Store::Layout { layout: src, .. }, Store::Layout { layout: dst, .. })
            if src.dir() == dst.dir() =>
        {
            return Ok(());
        }
        _ => {}
    }
    let (path, _tmp) = fetch_to_file(job, layer, digest).await?;
    let size = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size != desc.size {
        bail!(
            "blob {digest} has {size} bytes, the manifest says {}",
            desc.size
        );
    }
    put_file(job, digest, &path).await
}

/// Puts the blob file at `path` into the destination.
async fn put_file(job: &Job, digest: &Digest, path: &Path) -> Result<()> {
    match &job.dst {
        Store::Registry(r) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // Our own temp file or a layout blob named by its digest; the client re-hashes the
            // bytes before pushing, so a concurrent change is caught.
            let map = map_private(&file).with_context(|| format!("mapping {}", path.display()))?;
            job.client
                .push_blob(r, digest, Bytes::from_owner(map))
                .await
                .with_context(|| format!("pushing {digest} to {r}"))?;
            Ok(())
        }
        Store::Layout { layout, .. } => {
            let dest = layout.blob_path(digest);
            if !dest.exists() {
                let tmp = tempfile::NamedTempFile::new_in(layout.dir().join("blobs/sha256"))
                    .with_context(|| {
                        format!("creating a temp file in {}", layout.dir().display())
                    })?;
                std::fs::copy(path, tmp.path())
                    .with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
                tmp.persist(&dest)
                    .with_context(|| format!("renaming into {}", dest.display()))?;
            }
            Ok(())
        }
    }
}

async fn push_bytes(job: &Job, digest: &Digest, data: Bytes) -> Result<()> {
    match &job.dst {
        Store::Registry(r) => job
            .client
            .push_blob(r, digest, data)
            .await
            .with_context(|| format!("pushing {digest} to {r}")),
        Store::Layout { layout, .. } => layout.put_blob_bytes(&data).map(drop),
    }
}

/// Pushes a manifest or index: under DST's tag when `tagged`, else by digest only (the
/// per-platform manifests of an index).
async fn push_manifest(job: &Job, media_type: &str, body: Vec<u8>, tagged: bool) -> Result<Digest> {
    let digest = Digest::sha256(&body);
    match &job.dst {
        Store::Registry(r) => {
            let target = if tagged {
                r.clone()
            } else {
                r.with_digest(digest)
            };
            job.client
                .push_manifest(&target, media_type, Bytes::from(body))
                .await
                .with_context(|| format!("pushing the manifest to {target}"))
        }
        Store::Layout { layout, tag } => {
            let size = body.len() as u64;
            layout.put_blob_bytes(&body)?;
            if tagged {
                let desc = Descriptor {
                    media_type: media_type.to_owned(),
                    digest,
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                };
                layout.set_tag(tag.as_deref().unwrap_or("latest"), desc)?;
            }
            Ok(digest)
        }
    }
}

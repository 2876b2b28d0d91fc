//! Opening an image into verified layers, designed around round trips.
//!
//! After auth, a mount costs:
//!
//! 1. the manifest (plus one more for an index → platform manifest);
//! 2. in parallel: the config blob and, per layer, ONE ranged read of the blob's tail sized to
//!    hold the footer and the TOC ([`tail_len`]); a second read only when the TOC turns out to be
//!    bigger than the guess. Layers converted by regfs carry `io.regfs.estargz.toc-offset`, which
//!    makes the tail read exact. When a layer also carries `io.regfs.estargz.prefetch-size`, its
//!    landmark range is requested in this same round trip ([`EarlySource`]);
//! 3. the `.prefetch.landmark` range of each layer (unless it started in 2), in one request per
//!    layer, started as soon as that layer's TOC is parsed; the mount is ready without waiting.
//!
//! The steps are the same for every [`ImageSource`]; the round trips are a registry's.
//!
//! Every TOC is verified against the manifest's `containerd.io/snapshot/stargz/toc.digest`
//! annotation; a layer without it is refused unless `insecure_skip_verify`. A layer that is not
//! eStargz at all (plain gzip/zstd/tar) is fetched whole, converted locally into the cache
//! directory and served from there: it works, but it is not lazy, and the caller is told.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use oci_spec::image::{Descriptor, ImageConfiguration};
use regfs_blob::{BlobSource, ChunkCache, EarlySource, FileSource, LayerBlob, LayerHandle};
use regfs_estargz::{Digest, Toc, TocIndex, TocLocation};
use regfs_registry::{MAX_CONFIG_SIZE, Platform};

use crate::annotation::{
    PREFETCH_SIZE as PREFETCH_SIZE_ANNOTATION, TOC_DIGEST as TOC_DIGEST_ANNOTATION,
    TOC_OFFSET as TOC_OFFSET_ANNOTATION,
};
use crate::error::{Context, bail};
use crate::source::ImageSource;
use crate::{Error, Result};

/// Smallest tail read without a hint: the footer and a small TOC, for one round trip.
pub const MIN_TAIL: u64 = 64 * 1024;
/// Largest tail read without a hint; a bigger TOC costs a second, exact read instead.
pub const MAX_TAIL: u64 = 8 << 20;
/// Largest TOC member read at all: TOC JSON compresses about 8x, so 64 MiB holds a TOC at the
/// format crate's 512 MiB limit, while a hostile hint cannot make us buffer a whole big blob.
pub const MAX_TOC_READ: u64 = 64 << 20;
/// Share of the blob read as its tail without a hint.
///
/// A TOC costs ~45 compressed bytes per entry and layers average a few KiB per entry, so the TOC
/// is well under 1 % of its blob (python's base layer: 309 KB of 52 MB, 0.6 %). Reading 1/128
/// of the blob plus [`MIN_TAIL`] covers that, and over-reads at most a round trip's worth of
/// bandwidth (250 KB at 100 Mbit/s and 20 ms RTT) for layers up to ~25 MB, while a second read
/// always costs a full round trip.
pub const TAIL_DIVISOR: u64 = 128;

/// How many bytes at the end of a `blob_size`-byte blob to read first: exactly the TOC member
/// and footer when `toc_offset_hint` is a plausible TOC offset, else a guess (see
/// [`TAIL_DIVISOR`]).
pub fn tail_len(blob_size: u64, toc_offset_hint: Option<u64>) -> u64 {
    if let Some(off) =
        toc_offset_hint.filter(|&off| off < blob_size && blob_size - off <= MAX_TOC_READ)
    {
        return blob_size - off;
    }
    (blob_size / TAIL_DIVISOR + MIN_TAIL)
        .min(MAX_TAIL)
        .min(blob_size)
}

/// A layer's TOC, found from the tail of its blob.
pub struct FoundToc {
    /// The TOC.
    pub toc: Toc,
    /// sha256 of the TOC JSON (what the `toc.digest` annotation must name).
    pub digest: Digest,
    /// Blob offset of the TOC member.
    pub offset: u64,
    /// Whether the tail was too short and the TOC member needed a second read.
    pub second_read: bool,
}

/// Parses the TOC out of `tail`, the last bytes of the `size`-byte blob `blob`; when the TOC
/// starts before the tail, reads exactly its member with `read` (at most [`MAX_TOC_READ`]).
pub async fn toc_from_tail<F, Fut>(
    blob: &Digest,
    size: u64,
    tail: &[u8],
    read: F,
) -> Result<FoundToc>
where
    F: FnOnce(Range<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<Bytes>>,
{
    match regfs_estargz::locate_toc(tail, size).with_context(|| format!("layer {blob}"))? {
        TocLocation::Parsed {
            toc,
            digest,
            toc_offset,
            ..
        } => Ok(FoundToc {
            toc,
            digest,
            offset: toc_offset,
            second_read: false,
        }),
        TocLocation::NeedRange { start, end } => {
            if end.saturating_sub(start) > MAX_TOC_READ {
                bail!(
                    "the TOC member at {start}..{end} of {blob} is larger than the {MAX_TOC_READ}-byte limit"
                );
            }
            let member = read(start..end)
                .await
                .with_context(|| format!("reading the TOC at {start}..{end} of {blob}"))?;
            let (toc, digest) = regfs_estargz::parse_toc_member(&member)
                .with_context(|| format!("layer {blob}"))?;
            Ok(FoundToc {
                toc,
                digest,
                offset: start,
                second_read: true,
            })
        }
    }
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Serve eStargz layers without a verifiable TOC digest (no `toc.digest` annotation).
    pub insecure_skip_verify: bool,
    /// Where non-eStargz layers are converted to (inside the cache dir).
    pub cache_dir: PathBuf,
    /// Refuse a layer that is not eStargz ([`Error::NotEstargz`]) instead of fetching it whole;
    /// the snapshotter wants this, so that containerd pulls such a layer itself.
    pub lazy_only: bool,
    /// The platform to pick from an index (default: this host's).
    pub platform: Option<Platform>,
}

/// One layer of an opened image.
pub struct OpenedLayer {
    /// Its manifest descriptor.
    pub descriptor: Descriptor,
    /// Its blob digest.
    pub digest: Digest,
    /// Its TOC, indexed.
    pub index: TocIndex,
    /// Its chunk reads through the shared cache.
    pub handle: LayerHandle,
    /// `false` when the layer was not eStargz and had to be fetched whole.
    pub lazy: bool,
}

/// An image whose layers' TOCs are all fetched, verified and indexed.
pub struct OpenedImage {
    /// The image's name pinned to its manifest digest.
    pub name: String,
    /// The platform manifest's digest.
    pub manifest_digest: Digest,
    /// The image config.
    pub config: ImageConfiguration,
    /// The layers, bottom first.
    pub layers: Vec<OpenedLayer>,
}

fn annotation<'a>(desc: &'a Descriptor, key: &str) -> Option<&'a str> {
    desc.annotations().as_ref()?.get(key).map(String::as_str)
}

/// An image opened layer by layer: each layer has its own outcome, so that a caller that can
/// download some layers itself (the snapshotter) still serves the others lazily.
pub struct LayerOutcomes {
    /// The image's name pinned to its manifest digest.
    pub name: String,
    /// The platform manifest's digest.
    pub manifest_digest: Digest,
    /// The image config.
    pub config: ImageConfiguration,
    /// Each layer's digest and its opened layer or why it could not be opened, bottom first.
    pub layers: Vec<(Digest, Result<OpenedLayer>)>,
}

/// Opens every layer of the image `source` names (see the module doc for the round trips);
/// the first layer that fails fails the whole open.
pub async fn open_image(
    source: &Arc<dyn ImageSource>,
    cache: &Arc<ChunkCache>,
    opts: &OpenOptions,
) -> Result<OpenedImage> {
    let LayerOutcomes {
        name,
        manifest_digest,
        config,
        layers,
    } = open_image_layers(source, cache, opts).await?;
    Ok(OpenedImage {
        name,
        manifest_digest,
        config,
        layers: layers
            .into_iter()
            .map(|(_, layer)| layer)
            .collect::<Result<Vec<_>>>()?,
    })
}

/// Opens every layer of the image `source` names, as [`open_image`] does, but reports each
/// layer's failure on its own; only what the whole image needs (manifest, config, descriptors)
/// fails the call.
pub async fn open_image_layers(
    source: &Arc<dyn ImageSource>,
    cache: &Arc<ChunkCache>,
    opts: &OpenOptions,
) -> Result<LayerOutcomes> {
    let t0 = std::time::Instant::now();
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    // While the manifest is on its way, open the connections the parallel TOC reads will use.
    let (resolved, ()) = tokio::join!(source.resolve(&platform), source.warm_up());
    let resolved = resolved?;
    let manifest = &resolved.manifest;
    let manifest_digest = resolved.digest;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "manifest");
    let config_digest = parse_digest(manifest.config().digest().as_ref(), "config")?;
    // Round trip 2: the config and every layer's tail (small). The landmark ranges (large) go
    // out as soon as the first tail is in: by then the other tails are on the wire, so on a
    // shared link no TOC is queued behind megabytes of prefetch, and the link is kept busy.
    // Measured through the shaper (python, `regfs run`): sending the ranges 2 ms after the
    // tails gave 0.54–0.61 s with mount-ready anywhere in 135–500 ms; after *every* tail,
    // 0.60 s (the link idles a round trip); after the first tail, see BENCHMARKS.md.
    let config_task = {
        let source = source.clone();
        tokio::spawn(async move { source.fetch_blob(&config_digest, MAX_CONFIG_SIZE).await })
    };
    let registry = source.blobs();
    let starts = manifest
        .layers()
        .iter()
        .map(|desc| start_layer(&registry, desc))
        .collect::<Result<Vec<_>>>()?;
    if starts.iter().any(|s| s.prefetch_hint.is_some()) {
        // The first tail in means the rest are streaming; errors are reported per layer below.
        let _ = futures::future::select_all(starts.iter().map(|s| s.tail.clone())).await;
    }
    let image_source = source;
    let layer_futs = starts.into_iter().map(|start| {
        let source: Arc<dyn BlobSource> = match start.prefetch_hint {
            Some(end) => Arc::new(EarlySource::start(registry.clone(), start.digest, 0..end)),
            None => registry.clone(),
        };
        let digest = start.digest;
        finish_layer(image_source, registry.clone(), source, start, cache, opts)
            .map(move |layer| (digest, layer))
    });
    let config_fut = async {
        let bytes = config_task
            .await
            .map_err(|e| Error::Invalid(format!("the config fetch task failed: {e}")))?
            .with_context(|| format!("fetching config {config_digest} of {}", resolved.name))?;
        ImageConfiguration::from_reader(&bytes[..]).map_err(|e| {
            Error::Invalid(format!(
                "parsing config {config_digest} of {}: {e}",
                resolved.name
            ))
        })
    };
    let (config, layers) = tokio::join!(config_fut, futures::future::join_all(layer_futs));
    tracing::debug!(
        ms = t0.elapsed().as_millis() as u64,
        "config and layer TOCs"
    );
    Ok(LayerOutcomes {
        name: resolved.name.clone(),
        manifest_digest,
        config: config?,
        layers,
    })
}

/// A layer whose tail read is under way.
struct LayerStart {
    desc: Descriptor,
    digest: Digest,
    size: u64,
    want_toc: Option<Digest>,
    prefetch_hint: Option<u64>,
    tail: TailRead,
}

/// A tail read under way; shared so that the image can wait for every tail before it starts
/// the landmark ranges while each layer still takes its own.
type TailRead = Shared<BoxFuture<'static, Result<Bytes, Arc<regfs_blob::Error>>>>;

/// Reads the layer's annotations and sends its tail read.
///
/// Without a TOC digest the tail is still read: an eStargz layer must then be refused (its TOC
/// can't be verified) rather than silently fetched whole; a plain layer falls back later.
fn start_layer(registry: &Arc<dyn BlobSource>, desc: &Descriptor) -> Result<LayerStart> {
    let digest = parse_digest(desc.digest().as_ref(), "layer")?;
    let size = desc.size();
    let want_toc = annotation(desc, TOC_DIGEST_ANNOTATION)
        .map(|s| {
            s.parse::<Digest>()
                .with_context(|| format!("layer {digest}: bad {TOC_DIGEST_ANNOTATION} annotation"))
        })
        .transpose()?;
    let toc_hint = annotation(desc, TOC_OFFSET_ANNOTATION).and_then(|s| s.parse::<u64>().ok());
    let prefetch_hint = annotation(desc, PREFETCH_SIZE_ANNOTATION)
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&p| p > 0 && p <= size);
    let tail_start = size - tail_len(size, toc_hint);
    let tail = regfs_blob::spawn_range(registry.clone(), digest, tail_start..size, "tail read");
    Ok(LayerStart {
        desc: desc.clone(),
        digest,
        size,
        want_toc,
        prefetch_hint,
        tail,
    })
}

/// Parses and verifies the layer's TOC from its tail and sets up its chunk reads from `source`.
async fn finish_layer(
    image: &Arc<dyn ImageSource>,
    registry: Arc<dyn BlobSource>,
    source: Arc<dyn BlobSource>,
    start: LayerStart,
    cache: &Arc<ChunkCache>,
    opts: &OpenOptions,
) -> Result<OpenedLayer> {
    let LayerStart {
        desc,
        digest,
        size,
        want_toc,
        tail,
        ..
    } = start;
    let desc = &desc;
    let tail = tail.await.map_err(|e| Error::Blob {
        context: format!("reading the tail of layer {digest}"),
        source: Arc::unwrap_or_clone(e),
    })?;
    let found = toc_from_tail(&digest, size, &tail, |range| async move {
        let mut parts = registry
            .read_ranges(&digest, std::slice::from_ref(&range))
            .await
            .context("ranged read")?;
        Ok(parts.pop().unwrap_or_default())
    })
    .await;
    let (toc, toc_digest, toc_offset) = match found {
        Ok(f) => (f.toc, f.digest, f.offset),
        Err(e) if want_toc.is_none() && opts.lazy_only => {
            return Err(Error::NotEstargz {
                layer: digest,
                reason: error_chain(&e),
            });
        }
        Err(e) if want_toc.is_none() => {
            tracing::warn!(layer = %digest, error = %error_chain(&e), "layer is not eStargz; fetching it whole");
            return open_non_lazy(image, desc, digest, cache, opts).await;
        }
        Err(e) => return Err(e),
    };
    verify_toc(digest, toc_digest, want_toc, opts.insecure_skip_verify)?;
    tracing::debug!(layer = %digest, tail = tail.len(), "TOC fetched");
    let index =
        TocIndex::new(&toc, size).with_context(|| format!("indexing the TOC of layer {digest}"))?;
    drop(toc);
    tracing::debug!(layer = %digest, entries = index.len(), "TOC indexed");
    let handle = cache.layer(LayerBlob {
        digest,
        size,
        toc_offset,
        source,
        verify: !opts.insecure_skip_verify || want_toc.is_some(),
    });
    Ok(OpenedLayer {
        descriptor: desc.clone(),
        digest,
        index,
        handle,
        lazy: true,
    })
}

/// Fetches a non-eStargz layer whole, converts it into `<cache>/converted/<digest>.esgz` and
/// serves that file. Verification holds: the blob digest is checked on download, and the local
/// conversion computes every chunk digest itself.
async fn open_non_lazy(
    image: &Arc<dyn ImageSource>,
    desc: &Descriptor,
    digest: Digest,
    cache: &Arc<ChunkCache>,
    opts: &OpenOptions,
) -> Result<OpenedLayer> {
    tracing::warn!(layer = %digest, "layer is not eStargz: fetching it whole (not lazy)");
    let dir = opts.cache_dir.join("converted");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("{}.esgz", digest.hex()));
    let report_path = dir.join(format!("{}.json", digest.hex()));
    let (toc_digest, blob_digest) = if let Some(d) = read_report(&report_path) {
        d
    } else {
        let raw = dir.join(format!("{}.download", digest.hex()));
        let mut file = tokio::fs::File::create(&raw)
            .await
            .with_context(|| format!("creating {}", raw.display()))?;
        image
            .fetch_blob_to(&digest, &mut file)
            .await
            .with_context(|| format!("fetching non-eStargz layer {digest}"))?;
        drop(file);
        let (raw2, dir2) = (raw.clone(), dir.clone());
        let converted = tokio::task::spawn_blocking(move || {
            crate::convert::convert_layer(&raw2, &dir2, &Default::default(), &|_, _| {})
        })
        .await
        .map_err(|e| Error::Invalid(format!("the conversion task of {digest} failed: {e}")))??;
        let _ = std::fs::remove_file(&raw);
        converted
            .blob
            .persist(&out)
            .with_context(|| format!("storing {}", out.display()))?;
        std::fs::write(
            &report_path,
            format!("{} {}", converted.toc_digest, converted.digest),
        )
        .with_context(|| format!("writing {}", report_path.display()))?;
        (converted.toc_digest, converted.digest)
    };
    let source: Arc<dyn BlobSource> = Arc::new(FileSource::new().with_file(blob_digest, &out));
    let size = std::fs::metadata(&out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    let file = std::fs::File::open(&out).with_context(|| format!("opening {}", out.display()))?;
    let reader = regfs_estargz::Reader::open(file)
        .with_context(|| format!("reading locally converted layer {}", out.display()))?;
    if reader.toc_digest() != toc_digest {
        bail!("locally converted layer {} changed on disk", out.display());
    }
    let index = TocIndex::new(reader.toc(), size)
        .with_context(|| format!("indexing locally converted layer {}", out.display()))?;
    let handle = cache.layer(LayerBlob {
        digest: blob_digest,
        size,
        toc_offset: reader.toc_offset(),
        source,
        verify: true,
    });
    Ok(OpenedLayer {
        descriptor: desc.clone(),
        digest,
        index,
        handle,
        lazy: false,
    })
}

/// `<toc digest> <blob digest>` of a layer converted earlier.
fn read_report(path: &Path) -> Option<(Digest, Digest)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (toc, blob) = text.trim().split_once(' ')?;
    Some((toc.parse().ok()?, blob.parse().ok()?))
}

/// Checks a layer's TOC digest against its manifest annotation: the one place that decides
/// whether a layer may be served.
pub fn verify_toc(
    layer: Digest,
    actual: Digest,
    expected: Option<Digest>,
    insecure_skip_verify: bool,
) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => Err(Error::TocDigestMismatch {
            layer,
            expected,
            actual,
        }),
        Some(_) => Ok(()),
        None if insecure_skip_verify => {
            tracing::warn!(layer = %layer, "no {TOC_DIGEST_ANNOTATION} annotation: TOC not verified");
            Ok(())
        }
        None => Err(Error::UnverifiedToc {
            layer,
            annotation: TOC_DIGEST_ANNOTATION,
        }),
    }
}

/// `err` and its sources on one line (what a log line or a fallback reason shows).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

fn parse_digest(s: &str, what: &str) -> Result<Digest> {
    s.parse()
        .map_err(|_| Error::Invalid(format!("{what} digest {s:?} is not a sha256 digest")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_len_sizes() {
        // Small blob: all of it.
        assert_eq!(tail_len(1000, None), 1000);
        // Proportional tail over the minimum.
        assert_eq!(tail_len(1 << 20, None), (1 << 13) + MIN_TAIL);
        assert_eq!(tail_len(64 << 20, None), (512 << 10) + MIN_TAIL);
        // Capped tail.
        assert_eq!(tail_len(1 << 40, None), MAX_TAIL);
        // The hint wins; a hint past the blob or asking for more than a TOC can be is ignored.
        assert_eq!(tail_len(1 << 30, Some((1 << 30) - 12345)), 12345);
        assert_eq!(tail_len(1000, Some(5000)), 1000);
        assert_eq!(tail_len(1 << 30, Some(0)), MAX_TAIL);
    }
}

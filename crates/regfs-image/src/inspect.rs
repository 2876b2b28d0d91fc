//! `regfs inspect REF`: an image in a registry, layer by layer, read with as few requests as
//! possible.
//!
//! Without the TOCs this costs the manifest (plus the index when REF names one) and the config.
//! With them each layer costs ONE ranged read of its tail, sized so that it usually holds the
//! TOC member as well as the footer:
//!
//! ```text
//! toc-offset hint annotation present  →  read [toc_offset, size): exactly the TOC + footer
//! otherwise                           →  read the tail_len() guess
//! TOC starts before that tail         →  a second read of exactly [toc_offset, size - footer)
//! ```
//!
//! and the TOC digest is recomputed and checked against the `toc.digest` annotation.

use std::collections::BTreeMap;

use regfs_estargz::{Digest, NO_PREFETCH_LANDMARK, clean_name};
use regfs_registry::{Client, Reference};

use crate::annotation::{TOC_DIGEST as TOC_DIGEST_ANNOTATION, TOC_OFFSET as TOC_OFFSET_ANNOTATION};
use crate::error::{Context, bail};
use crate::{Descriptor, ManifestBody, Result, tail_len};

/// An image in a registry as `regfs inspect` shows it.
pub struct ImageReport {
    /// The reference asked for.
    pub reference: String,
    /// The platform manifest's digest.
    pub manifest_digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The config blob's digest.
    pub config_digest: String,
    /// `os/arch[/variant]` from the config.
    pub platform: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerReport>,
}

/// One layer of an [`ImageReport`].
pub struct LayerReport {
    /// Its manifest descriptor.
    pub desc: Descriptor,
    /// Its footer and TOC, when asked for.
    pub toc: Option<TocReport>,
}

/// What the tail of a layer says.
pub struct TocReport {
    /// Footer found (the blob really is eStargz).
    pub footer: bool,
    /// Why the TOC could not be read, if it could not.
    pub error: Option<String>,
    /// Blob offset of the TOC member.
    pub toc_offset: Option<u64>,
    /// sha256 of the TOC JSON.
    pub toc_digest: Option<Digest>,
    /// TOC entries.
    pub entries: usize,
    /// TOC entries by type.
    pub by_type: BTreeMap<&'static str, usize>,
    /// Offset of `.prefetch.landmark`.
    pub prefetch_size: Option<u64>,
    /// Whether the layer has `.no.prefetch.landmark`.
    pub no_prefetch: bool,
    /// TOC digest equals the annotation; `None` without an annotation.
    pub verified: Option<bool>,
    /// Ranged reads spent.
    pub reads: u32,
}

impl LayerReport {
    /// Whether the manifest annotates the layer as eStargz.
    pub fn annotated_estargz(&self) -> bool {
        self.desc.annotations.contains_key(TOC_DIGEST_ANNOTATION)
    }
}

/// Resolves `reference` and, with `want_toc`, reads every layer's footer and TOC by ranged reads
/// (one per layer, two when the TOC is bigger than the tail guessed); a layer whose TOC cannot be
/// read says why in its report instead of failing the whole inspection.
pub async fn inspect(
    client: &Client,
    reference: &Reference,
    want_toc: bool,
) -> Result<ImageReport> {
    let image = client
        .resolve(reference)
        .await
        .with_context(|| format!("resolving {reference}"))?;
    let manifest = ManifestBody::parse(
        &image.manifest_bytes,
        &format!("manifest {}", image.manifest_digest),
    )?;
    let config: serde_json::Value = serde_json::from_slice(&image.config_bytes).unwrap_or_default();
    let mut platform = format!(
        "{}/{}",
        config["os"].as_str().unwrap_or("?"),
        config["architecture"].as_str().unwrap_or("?")
    );
    if let Some(v) = config["variant"].as_str() {
        platform = format!("{platform}/{v}");
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for desc in manifest.layers {
        let toc = if want_toc {
            Some(read_toc(client, &image.reference, &desc).await)
        } else {
            None
        };
        layers.push(LayerReport { desc, toc });
    }
    Ok(ImageReport {
        reference: reference.to_string(),
        manifest_digest: image.manifest_digest,
        media_type: image.media_type,
        config_digest: manifest
            .config
            .map(|c| c.digest.to_string())
            .unwrap_or_default(),
        platform,
        layers,
    })
}

/// The first read: exact with the hint, else a tail share of the blob.
fn first_read(desc: &Descriptor) -> u64 {
    let hint = desc
        .annotations
        .get(TOC_OFFSET_ANNOTATION)
        .and_then(|s| s.parse::<u64>().ok());
    desc.size - tail_len(desc.size, hint)
}

/// Footer + TOC of one layer by range reads; failures are reported in the result, not raised,
/// so that one odd layer does not hide the others.
async fn read_toc(client: &Client, image: &Reference, desc: &Descriptor) -> TocReport {
    let mut report = TocReport {
        footer: false,
        error: None,
        toc_offset: None,
        toc_digest: None,
        entries: 0,
        by_type: BTreeMap::new(),
        prefetch_size: None,
        no_prefetch: false,
        verified: None,
        reads: 0,
    };
    if let Err(e) = read_toc_into(client, image, desc, &mut report).await {
        report.error = Some(crate::error_chain(&e));
    }
    report
}

async fn read_toc_into(
    client: &Client,
    image: &Reference,
    desc: &Descriptor,
    report: &mut TocReport,
) -> Result<()> {
    let digest = desc.digest;
    let size = desc.size;
    let start = first_read(desc);
    report.reads += 1;
    let tail = client
        .read_range(image, &digest, start..size)
        .await
        .with_context(|| format!("reading bytes {start}..{size} of {digest}"))?;
    if tail.len() as u64 != size - start {
        bail!(
            "registry returned {} bytes for {start}..{size} of {digest}",
            tail.len()
        );
    }
    let found = crate::toc_from_tail(&digest, size, &tail, |range| async move {
        client
            .read_range(image, &digest, range)
            .await
            .with_context(|| format!("reading the TOC of {digest}"))
    })
    .await?;
    if found.second_read {
        report.reads += 1;
    }
    let (toc, toc_digest, toc_offset) = (found.toc, found.digest, found.offset);
    report.footer = true;
    report.toc_offset = Some(toc_offset);
    report.toc_digest = Some(toc_digest);
    report.prefetch_size = toc.prefetch_landmark();
    for e in toc.entries.as_deref().unwrap_or_default() {
        report.entries += 1;
        *report.by_type.entry(e.kind.as_str()).or_default() += 1;
        if clean_name(&e.name) == NO_PREFETCH_LANDMARK {
            report.no_prefetch = true;
        }
    }
    report.verified = desc
        .annotations
        .get(TOC_DIGEST_ANNOTATION)
        .map(|want| *want == toc_digest.to_string());
    Ok(())
}

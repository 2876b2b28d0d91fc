//! `regfs inspect REF`: an image in a registry, layer by layer, read with as few requests as
//! possible.
//!
//! Without `--toc` this costs the manifest (plus the index when REF names one) and the config.
//! With `--toc` each layer costs ONE ranged read of its tail, sized so that it usually holds the
//! TOC member as well as the footer:
//!
//! ```text
//! toc-offset hint annotation present  →  read [toc_offset, size): exactly the TOC + footer
//! otherwise                           →  read the last clamp(size / 32, 64 KiB, 8 MiB) bytes
//! TOC starts before that tail         →  a second read of exactly [toc_offset, size - footer)
//! ```
//!
//! and the TOC digest is recomputed and checked against the `toc.digest` annotation. The request
//! and byte counts the registry client spent are printed at the end.
//!
//! The blob half of `regfs inspect` (a local eStargz file) lives in `inspect.rs`, which calls
//! [`run`] when its argument is not an existing file.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use regfs_estargz::{Digest, NO_PREFETCH_LANDMARK, clean_name};
use regfs_registry::{Client, Reference};
use serde_json::json;

use regfs_image::annotation::{
    TOC_DIGEST as TOC_DIGEST_ANNOTATION, TOC_OFFSET as TOC_OFFSET_ANNOTATION,
};
use regfs_image::{Descriptor, ManifestBody, tail_len};

use crate::args::RegistryArgs;

/// `regfs inspect REF [--json] [--toc]` for a registry reference.
pub fn run(
    reference: &str,
    json: bool,
    toc: bool,
    registry: &RegistryArgs,
) -> anyhow::Result<ExitCode> {
    let reference: Reference = reference.parse()?;
    let client = registry.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(inspect(&client, &reference, toc))?;
    let stats = client.stats();
    if json {
        let mut v = report.to_json();
        v["requests"] = json!(stats.requests);
        v["bytesReceived"] = json!(stats.bytes_received);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        report.print_text();
        println!(
            "requests      {} ({} bytes received, {} retries)",
            stats.requests, stats.bytes_received, stats.retries
        );
    }
    // A TOC that contradicts its annotation is an image problem the caller must notice.
    if report
        .layers
        .iter()
        .any(|l| l.toc.as_ref().is_some_and(|t| t.verified == Some(false)))
    {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

struct ImageReport {
    reference: String,
    manifest_digest: Digest,
    media_type: String,
    config_digest: String,
    platform: String,
    layers: Vec<LayerReport>,
}

struct LayerReport {
    desc: Descriptor,
    toc: Option<TocReport>,
}

struct TocReport {
    /// Footer found (the blob really is eStargz).
    footer: bool,
    error: Option<String>,
    toc_offset: Option<u64>,
    toc_digest: Option<Digest>,
    entries: usize,
    by_type: BTreeMap<&'static str, usize>,
    prefetch_size: Option<u64>,
    no_prefetch: bool,
    /// TOC digest equals the annotation; `None` without an annotation.
    verified: Option<bool>,
    reads: u32,
}

impl LayerReport {
    fn annotated_estargz(&self) -> bool {
        self.desc.annotations.contains_key(TOC_DIGEST_ANNOTATION)
    }
}

async fn inspect(
    client: &Client,
    reference: &Reference,
    want_toc: bool,
) -> anyhow::Result<ImageReport> {
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
        report.error = Some(format!("{e:#}"));
    }
    report
}

async fn read_toc_into(
    client: &Client,
    image: &Reference,
    desc: &Descriptor,
    report: &mut TocReport,
) -> anyhow::Result<()> {
    let digest = desc.digest;
    let size = desc.size;
    let start = first_read(desc);
    report.reads += 1;
    let tail = client
        .read_range(image, &digest, start..size)
        .await
        .with_context(|| format!("reading bytes {start}..{size} of {digest}"))?;
    if tail.len() as u64 != size - start {
        anyhow::bail!(
            "registry returned {} bytes for {start}..{size} of {digest}",
            tail.len()
        );
    }
    let found = regfs_image::toc_from_tail(&digest, size, &tail, |range| async move {
        client
            .read_range(image, &digest, range)
            .await
            .map_err(|source| regfs_image::Error::Registry {
                context: format!("reading the TOC of {digest}"),
                source,
            })
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

impl ImageReport {
    fn to_json(&self) -> serde_json::Value {
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| {
                let mut v = json!({
                    "digest": l.desc.digest,
                    "size": l.desc.size,
                    "mediaType": l.desc.media_type,
                    "estargz": l.annotated_estargz() || l.toc.as_ref().is_some_and(|t| t.footer),
                    "tocDigestAnnotation": l.desc.annotations.get(TOC_DIGEST_ANNOTATION),
                    "annotations": l.desc.annotations,
                });
                if let Some(t) = &l.toc {
                    v["toc"] = json!({
                        "footer": t.footer,
                        "error": t.error,
                        "tocOffset": t.toc_offset,
                        "tocDigest": t.toc_digest.map(|d| d.to_string()),
                        "entries": t.entries,
                        "byType": t.by_type,
                        "prefetchSize": t.prefetch_size,
                        "noPrefetch": t.no_prefetch,
                        "verified": t.verified,
                        "reads": t.reads,
                    });
                }
                v
            })
            .collect();
        json!({
            "reference": self.reference,
            "manifestDigest": self.manifest_digest.to_string(),
            "mediaType": self.media_type,
            "configDigest": self.config_digest,
            "platform": self.platform,
            "layers": layers,
        })
    }

    fn print_text(&self) {
        println!("reference     {}", self.reference);
        println!(
            "manifest      {} ({})",
            self.manifest_digest, self.media_type
        );
        println!("config        {}", self.config_digest);
        println!("platform      {}", self.platform);
        println!("layers        {}", self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let kind = match (l.annotated_estargz(), l.toc.as_ref().map(|t| t.footer)) {
                (_, Some(true)) => "eStargz",
                (true, None) => "eStargz (annotated)",
                (true, Some(false)) => "annotated eStargz but no footer",
                (false, _) => "not eStargz",
            };
            println!(
                "  #{i} {} {} {} {kind}",
                l.desc.digest,
                humansize::format_size(l.desc.size, humansize::BINARY),
                l.desc.media_type
            );
            if let Some(d) = l.desc.annotations.get(TOC_DIGEST_ANNOTATION) {
                println!("     toc.digest annotation {d}");
            }
            let Some(t) = &l.toc else { continue };
            if let Some(err) = &t.error {
                println!("     toc: {err}");
                continue;
            }
            let types: Vec<String> = t.by_type.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let prefetch = match (t.prefetch_size, t.no_prefetch) {
                (Some(n), _) => humansize::format_size(n, humansize::BINARY),
                (None, true) => "none (no-prefetch landmark)".to_owned(),
                (None, false) => "no landmark".to_owned(),
            };
            let verified = match t.verified {
                Some(true) => "verified against the annotation",
                Some(false) => "MISMATCH with the annotation",
                None => "no annotation to verify against",
            };
            println!(
                "     toc: {} entries ({}), prefetch {prefetch}, digest {} {verified}, {} read(s)",
                t.entries,
                types.join(", "),
                t.toc_digest.map(|d| d.to_string()).unwrap_or_default(),
                t.reads
            );
        }
    }
}

//! `regfs inspect REF`: an image in a registry, layer by layer, read with as few requests as
//! possible.
//!
//! Without `--toc` this costs the manifest (plus the index when REF names one) and the config.
//! With `--toc` each layer costs one ranged read of its tail (see `regfs_image::inspect`).
//! The TOC digest is recomputed and checked against the `toc.digest` annotation. The request
//! and byte counts the registry client spent are printed at the end.
//!
//! The blob half of `regfs inspect` (a local eStargz file) lives in `inspect.rs`, which calls
//! [`run`] when its argument is not an existing file.

use std::process::ExitCode;

use anyhow::Context;
use regfs_registry::Reference;
use serde_json::json;

use regfs_image::annotation::TOC_DIGEST as TOC_DIGEST_ANNOTATION;
use regfs_image::inspect::{ImageReport, inspect};

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
        let mut v = to_json(&report);
        v["requests"] = json!(stats.requests);
        v["bytesReceived"] = json!(stats.bytes_received);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_text(&report);
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

/// The JSON of `regfs inspect --json`.
fn to_json(report: &ImageReport) -> serde_json::Value {
    {
        let layers: Vec<_> = report
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
            "reference": report.reference,
            "manifestDigest": report.manifest_digest.to_string(),
            "mediaType": report.media_type,
            "configDigest": report.config_digest,
            "platform": report.platform,
            "layers": layers,
        })
    }
}

/// The text of `regfs inspect`.
fn print_text(report: &ImageReport) {
    {
        println!("reference     {}", report.reference);
        println!(
            "manifest      {} ({})",
            report.manifest_digest, report.media_type
        );
        println!("config        {}", report.config_digest);
        println!("platform      {}", report.platform);
        println!("layers        {}", report.layers.len());
        for (i, l) in report.layers.iter().enumerate() {
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

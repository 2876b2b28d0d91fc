//! `regfs stats DIR`: what a live mount has fetched, per layer.

use std::path::PathBuf;
use std::process::ExitCode;

use humansize::{BINARY, format_size};

use regfs_image::control;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The mount point.
    dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = control::query(&args.dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &serde_json::Value, k: &str| v.get(k).cloned().unwrap_or_default();
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    println!(
        "image      {}",
        s(&report, "reference").as_str().unwrap_or("")
    );
    println!(
        "manifest   {}",
        s(&report, "manifestDigest").as_str().unwrap_or("")
    );
    println!(
        "mounted in {} ms, fallbacks {}, served by pid {} (restarts {})",
        n(&report, "openMs"),
        n(&report, "fallbacks"),
        n(&report, "serverPid"),
        n(&report, "restarts")
    );
    println!(
        "{:<20} {:>10} {:>10} {:>6} {:>8} {:>6} {:>6} {:>11} {:>5}",
        "layer", "size", "fetched", "%", "requests", "hits", "misses", "prefetch", "bad"
    );
    for l in report
        .get("layers")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
    {
        let digest = l.get("digest").and_then(|d| d.as_str()).unwrap_or("");
        let (size, fetched) = (n(l, "size"), n(l, "bytes_fetched"));
        let lazy = l.get("lazy").and_then(|x| x.as_bool()).unwrap_or(true);
        println!(
            "{:<20} {:>10} {:>10} {:>5.1}% {:>8} {:>6} {:>6} {:>11} {:>5}{}",
            &digest[..digest.len().min(19)],
            format_size(size, BINARY),
            format_size(fetched, BINARY),
            if size > 0 {
                fetched as f64 * 100.0 / size as f64
            } else {
                0.0
            },
            n(l, "requests"),
            n(l, "cache_hits"),
            n(l, "cache_misses"),
            l.get("prefetch").and_then(|x| x.as_str()).unwrap_or(""),
            n(l, "verification_failures"),
            if lazy {
                ""
            } else {
                "  (not eStargz: fetched whole)"
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}

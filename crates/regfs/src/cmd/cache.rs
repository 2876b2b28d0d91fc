//! `regfs cache du|gc`: look at and trim the on-disk chunk store that lazy mounts fill.
//!
//! The cache directory (`--cache-dir`, else `$REGFS_CACHE_DIR`, else `/var/lib/regfs/cache`: the
//! same rule as the lazy mounts, [`regfs_image::cache_dir`]) holds the [`regfs_blob::ChunkStore`]
//! in its `store/` subdirectory (`store/chunks/sha256/..` + `store/tmp/`). `gc`
//! evicts least recently used chunks until the store holds at most `--max-size` bytes; a mount
//! reading a chunk being evicted still reads it (unlinked files stay readable) or refetches it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use regfs_blob::ChunkStore;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// The cache directory (default: $REGFS_CACHE_DIR, else /var/lib/regfs/cache).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Chunks and bytes in the cache.
    Du,
    /// Evict least recently used chunks until the cache holds at most --max-size.
    Gc {
        /// Size to trim to: bytes, or with a K/M/G/T suffix (powers of 1024); 0 empties the cache.
        #[arg(long, value_parser = crate::args::parse_size)]
        max_size: u64,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = regfs_image::cache_dir(args.cache_dir).join(regfs_image::STORE_SUBDIR);
    // Opening a store creates it: `du` must not invent an empty cache where there is none (that
    // would hide a wrong path).
    if !dir.is_dir() {
        bail!("no chunk store at {}", dir.display());
    }
    let store = ChunkStore::open(&dir, None)
        .with_context(|| format!("opening the chunk store {}", dir.display()))?;
    match args.action {
        Action::Du => {
            let usage = store.du();
            if args.json {
                println!(
                    "{}",
                    json!({"store": dir, "chunks": usage.chunks, "bytes": usage.bytes})
                );
            } else {
                println!(
                    "{}: {} chunks, {} ({} bytes)",
                    dir.display(),
                    usage.chunks,
                    humansize::format_size(usage.bytes, humansize::BINARY),
                    usage.bytes
                );
            }
        }
        Action::Gc { max_size } => {
            let report = store
                .gc(max_size)
                .with_context(|| format!("trimming the cache {}", dir.display()))?;
            if args.json {
                println!(
                    "{}",
                    json!({
                        "store": dir,
                        "removedChunks": report.removed_chunks,
                        "freedBytes": report.freed_bytes,
                        "chunks": report.usage.chunks,
                        "bytes": report.usage.bytes,
                    })
                );
            } else {
                println!(
                    "{}: removed {} chunks, freed {}; {} chunks, {} left",
                    dir.display(),
                    report.removed_chunks,
                    humansize::format_size(report.freed_bytes, humansize::BINARY),
                    report.usage.chunks,
                    humansize::format_size(report.usage.bytes, humansize::BINARY)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

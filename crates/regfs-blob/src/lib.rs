//! Random access to remote layer blobs through a verified, deduplicating chunk cache.
//!
//! The lazy filesystem asks for eStargz chunks ([`Chunk`]s of a layer);
//! this crate answers with their verified, uncompressed bytes. Principal types:
//!
//! - [`BlobSource`]: where blob bytes come from — [`RegistrySource`] (ranged GETs),
//!   [`OciLayoutSource`], [`FileSource`], [`MemorySource`], [`EarlySource`] (a range started
//!   before it is asked for), and [`FaultySource`] for tests.
//! - [`ChunkStore`]: verified chunks on disk, content-addressed by chunk digest, LRU-capped.
//! - [`ChunkCache`] / [`LayerHandle`]: store lookups, single-flight fetches, the request planner
//!   ([`PlannerConfig`]), on-demand-first priorities ([`RequestSource`]), landmark prefetch.
//!
//! ```no_run
//! # async fn demo(chunks: Vec<regfs_blob::Chunk>, blob: bytes::Bytes) -> Result<(), regfs_blob::Error> {
//! use std::sync::Arc;
//! use regfs_blob::{ChunkCache, ChunkStore, LayerBlob, MemorySource, PlannerConfig, RequestSource};
//!
//! let mut source = MemorySource::new();
//! let size = blob.len() as u64;
//! let digest = source.insert(blob);
//! let cache = ChunkCache::new(ChunkStore::open("/var/cache/regfs", Some(10 << 30))?, PlannerConfig::default());
//! let layer = cache.layer(LayerBlob {
//!     digest,
//!     size,
//!     toc_offset: size - 51, // from the footer
//!     source: Arc::new(source),
//!     verify: true,
//! });
//! let bytes = layer.read_chunks(&chunks, RequestSource::OnDemand).await?;
//! assert_eq!(bytes.len(), chunks.len());
//! # Ok(()) }
//! ```

mod cache;
mod early;
mod error;
mod fault;
mod planner;
mod registry;
mod source;
mod store;

pub use cache::{ChunkCache, LayerBlob, LayerHandle, LayerStats, MAX_MEMBER_BYTES, PrefetchState};
pub use early::{EarlySource, spawn_range};
pub use error::Error;
pub use fault::FaultySource;
pub use planner::PlannerConfig;
pub use regfs_estargz::Chunk;
pub use registry::RegistrySource;
pub use source::{
    BlobSource, FileSource, MAX_RANGE_BYTES, MemorySource, OciLayoutSource, RequestSource,
};
pub use store::{ChunkStore, GcReport, MAX_CHUNK_SIZE, StoreUsage};

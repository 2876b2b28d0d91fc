//! Images as a library: turn an image reference (registry or `oci:` layout) into verified,
//! openable layers and a merged filesystem; convert and extract images.
//!
//! Every front end — the `regfs` CLI (`mount`, `run`, `optimize`), the containerd snapshotter —
//! opens images through this crate, so TOC verification, the refusal of unverified layers, tail
//! sizing and prefetch planning exist once. Principal types:
//!
//! - [`ImageLocation`] parses what a user writes; [`ImageSource`] is where an image comes from:
//!   [`RegistryImage`], [`LayoutImage`], and [`MemoryImage`] for tests (no I/O at all).
//! - [`open_image`] fetches and verifies every layer's TOC ([`OpenedImage`]; per layer:
//!   [`open_image_layers`]); [`LazyImage`]
//!   builds the [`regfs_fs::ImageFs`] on top and starts each layer's [`PrefetchPlan`].
//! - [`convert_image`] / [`convert_layer`] write eStargz ([`ConversionOptions`] is shared by
//!   every conversion); [`extract`] materialises a layer like `tar -x`.
//! - [`control`] is the per-mount report (`regfs stats`, Prometheus).
//! - [`Error`]: one enum; [`Error::root`] tells a refused layer from a network failure.
//!
//! ```no_run
//! # async fn demo() -> Result<(), regfs_image::Error> {
//! use std::sync::Arc;
//! use regfs_image::{ImageLocation, LazyImage, LazyOptions, open_cache};
//! use regfs_registry::{Client, ClientConfig};
//!
//! let client = Client::new(ClientConfig::default()).expect("client");
//! let source = ImageLocation::parse("127.0.0.1:5000/python:esgz")?.source(&client)?;
//! let cache = open_cache("/var/lib/regfs/cache".as_ref())?;
//! let image = LazyImage::open(&source, &cache, &LazyOptions::default()).await?;
//! println!("{} ready in {:?}: {} inodes", image.name, image.open_time, image.fs.inode_count());
//! # Ok(()) }
//! ```
//!
//! Where a new front end plugs in: build an [`ImageSource`] (or use [`ImageLocation::source`]),
//! share one chunk cache ([`open_cache`]) across everything it opens, and either take the merged
//! [`LazyImage`] or per-layer views (`LazyOptions::layer`) for an overlayfs of its own.

pub mod annotation;
pub mod control;
mod convert;
mod error;
mod extract;
mod image_convert;
pub mod inspect;
mod layout;
mod lazy;
mod open;
mod prefetch;
mod source;

pub use convert::{
    ConversionOptions, ConvertedLayer, DOCKER_LAYER_GZIP, OCI_CONFIG, OCI_LAYER_GZIP,
    convert_layer, convert_reader, read_prioritized,
};
pub use error::Error;
pub use extract::extract;
pub use image_convert::{DEFAULT_JOBS, ImageConversion, LayerProgress, Progress, convert_image};
pub use layout::{Descriptor, LayoutManifest, ManifestBody, OciLayout, parse_location};
pub use lazy::{
    DEFAULT_CACHE_DIR, LayerInfo, LazyImage, LazyOptions, STORE_SUBDIR, cache_dir, open_cache,
    open_capped_cache,
};
pub use open::{
    FoundToc, LayerOutcomes, MAX_TAIL, MAX_TOC_READ, MIN_TAIL, OpenOptions, OpenedImage,
    OpenedLayer, TAIL_DIVISOR, error_chain, open_image, open_image_layers, tail_len, toc_from_tail,
    verify_toc,
};
pub use prefetch::{PrefetchPlan, all_chunks, fill_layer};
pub use source::{
    ImageLocation, ImageSource, LayoutImage, MemoryImage, RegistryImage, ResolvedManifest,
};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

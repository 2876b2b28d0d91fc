//! The OCI distribution client of regfs: resolve images, read blob byte ranges, push.
//!
//! [`Client`] talks to registries: it resolves a [`Reference`] to a [`ResolvedImage`] (index →
//! [`Platform`] manifest → config, all digest-verified), reads byte ranges of blobs (single or
//! `multipart/byteranges`), fetches whole verified blobs, and pushes blobs and manifests. Around
//! every request it does auth (Basic; Bearer tokens from `WWW-Authenticate`, anonymous or with
//! credentials from [`ClientConfig`] or docker's `config.json` and credential helpers), retries
//! with backoff, manual redirects (cached per blob), and containerd `hosts.toml` mirrors.
//! Configuration is a [`ClientConfig`]; failures are one [`Error`] enum; [`RequestStats`] counts
//! what went over the wire.
//!
//! ```no_run
//! # async fn demo() -> Result<(), regfs_registry::Error> {
//! use regfs_registry::{Client, ClientConfig, Reference};
//!
//! let client = Client::new(ClientConfig::default())?;
//! let image: Reference = "127.0.0.1:5000/library/busybox:latest".parse()?;
//! let resolved = client.resolve(&image).await?;
//! let layer = resolved.manifest.layers()[0].digest().to_string().parse().expect("sha256 layer");
//! let footer = client.read_range(&image, &layer, 0..51).await?;
//! println!("{} bytes of {layer} ({} requests)", footer.len(), client.stats().requests);
//! # Ok(()) }
//! ```

mod auth;
mod blob;
mod client;
mod error;
#[doc(hidden)]
pub mod fuzz_api;
mod hosts;
mod manifest;
mod platform;
mod push;
mod range;
mod reference;

pub use auth::{Credentials, Keychain};
pub use blob::MAX_IN_MEMORY_BLOB;
pub use client::{Client, ClientConfig, MIN_RANGE_RATE, RequestStats, RetryPolicy};
pub use error::Error;
pub use manifest::{
    MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, PlatformManifest, ResolvedImage,
    choose_platform, is_index, manifest_media_type, resolve_platform,
};
pub use platform::Platform;
pub use reference::Reference;
pub use regfs_estargz::Digest;

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}

    /// Callers spawn these futures on tokio's multi-thread runtime and share the client.
    #[test]
    fn client_and_futures_are_send() {
        let c = Client::new(ClientConfig::default()).unwrap();
        send_sync(&c);
        let r: Reference = "127.0.0.1:1/a/b:c".parse().unwrap();
        let d = Digest::sha256(b"");
        send(c.resolve(&r));
        send(c.fetch_manifest(&r));
        send(c.blob_size(&r, &d));
        send(c.read_range(&r, &d, 0..1));
        send(c.read_ranges(&r, &d, &[0..1, 2..3]));
        send(c.fetch_blob(&r, &d));
        let mut sink = Vec::new();
        send(c.fetch_blob_to(&r, &d, &mut sink));
        send(c.push_blob(&r, &d, bytes::Bytes::new()));
        send(c.mount_blob(&r, "x", &d));
        send(c.push_manifest(&r, MEDIA_TYPE_OCI_MANIFEST, bytes::Bytes::new()));
    }
}

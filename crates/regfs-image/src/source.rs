//! Where images come from: the [`ImageSource`] seam and its three sides.
//!
//! ```text
//! ImageLocation::parse("127.0.0.1:5000/py:3")  ─▶ RegistryImage  (manifests, blobs: HTTP)
//! ImageLocation::parse("oci:/img:3")            ─▶ LayoutImage    (index.json, blobs/sha256)
//! MemoryImage::new(..)                          ─▶ MemoryImage    (tests: no I/O at all)
//! ```
//!
//! Opening an image ([`crate::open_image`]) asks a source for four things only: the platform
//! manifest, a small blob (the config), ranged reads of layers (a `BlobSource`), and a whole
//! layer copied to a file (for a layer that is not eStargz). Everything else — tail sizing, TOC
//! verification, prefetch planning — is the same code for every source, and is tested on
//! [`MemoryImage`] without a network, FUSE or root.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use regfs_blob::{BlobSource, MemorySource, OciLayoutSource, RegistrySource};
use regfs_estargz::{Digest, DigestWriter};
use regfs_registry::{Client, Platform, Reference};
use tokio::io::AsyncWriteExt;

use crate::error::{Context, bail, required};
use crate::layout::{Descriptor, OciLayout};
use crate::{Error, Result};

/// Connections opened ahead of the parallel requests that follow the manifest (config + a tail
/// read and a landmark range per layer): enough for a typical 3-layer image.
const WARM_CONNECTIONS: usize = 6;

/// A platform manifest, resolved and verified.
#[derive(Clone, Debug)]
pub struct ResolvedManifest {
    /// The image's name pinned to this manifest (`reg/repo@sha256:…`, `oci:DIR@sha256:…`).
    pub name: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest.
    pub manifest: oci_spec::image::ImageManifest,
}

/// Where an image's manifest and blobs come from.
pub trait ImageSource: Send + Sync + 'static {
    /// The image as the user named it, for messages and `regfs stats`.
    fn name(&self) -> String;
    /// The manifest for `platform`, following an index (verified).
    fn resolve<'a>(&'a self, platform: &'a Platform) -> BoxFuture<'a, Result<ResolvedManifest>>;
    /// A small blob (the config), verified against its digest, at most `limit` bytes.
    fn fetch_blob<'a>(&'a self, digest: &'a Digest, limit: u64) -> BoxFuture<'a, Result<Bytes>>;
    /// Ranged reads of the image's blobs.
    fn blobs(&self) -> Arc<dyn BlobSource>;
    /// The whole blob `digest` written to `file`, verified against its digest.
    fn fetch_blob_to<'a>(
        &'a self,
        digest: &'a Digest,
        file: &'a mut tokio::fs::File,
    ) -> BoxFuture<'a, Result<()>>;
    /// Opens connections while the manifest is on its way; local sources have nothing to do.
    fn warm_up(&self) -> BoxFuture<'_, ()> {
        futures::future::ready(()).boxed()
    }
}

/// An image location as a user writes it: a registry reference or `oci:DIR[:TAG]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageLocation {
    /// `host[:port]/repo[:tag|@digest]`.
    Registry(Reference),
    /// An OCI image layout directory and, optionally, the tag of one image in it.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` of the image (or the only image).
        tag: Option<String>,
    },
}

impl ImageLocation {
    /// Parses `oci:DIR[:TAG]` or a registry reference.
    pub fn parse(s: &str) -> Result<ImageLocation> {
        if let Some((dir, tag)) = crate::layout::parse_location(s) {
            return Ok(ImageLocation::Layout { dir, tag });
        }
        s.parse()
            .map(ImageLocation::Registry)
            .with_context(|| format!("invalid image reference {s:?}"))
    }

    /// The source that reads this image (`client` for a registry).
    pub fn source(&self, client: &Client) -> Result<Arc<dyn ImageSource>> {
        Ok(match self {
            ImageLocation::Registry(r) => Arc::new(RegistryImage::new(client.clone(), r.clone())),
            ImageLocation::Layout { dir, tag } => {
                Arc::new(LayoutImage::open(OciLayout::open(dir)?, tag.clone())?)
            }
        })
    }
}

impl std::fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageLocation::Registry(r) => write!(f, "{r}"),
            ImageLocation::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageLocation::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
        }
    }
}

/// An image in a registry.
pub struct RegistryImage {
    client: Client,
    reference: Reference,
    blobs: Arc<dyn BlobSource>,
}

impl RegistryImage {
    /// The image `reference`, reached through `client`.
    pub fn new(client: Client, reference: Reference) -> RegistryImage {
        let blobs = Arc::new(RegistrySource::new(client.clone(), reference.clone()));
        RegistryImage {
            client,
            reference,
            blobs,
        }
    }
}

impl ImageSource for RegistryImage {
    fn name(&self) -> String {
        self.reference.to_string()
    }

    fn resolve<'a>(&'a self, platform: &'a Platform) -> BoxFuture<'a, Result<ResolvedManifest>> {
        async move {
            let r = &self.reference;
            let chosen =
                regfs_registry::resolve_platform(&r.to_string(), platform, |d| async move {
                    match d {
                        None => self.client.fetch_manifest(r).await,
                        Some(d) => self.client.fetch_manifest(&r.with_digest(d)).await,
                    }
                })
                .await
                .with_context(|| format!("resolving {r}"))?;
            Ok(ResolvedManifest {
                name: r.with_digest(chosen.digest).to_string(),
                digest: chosen.digest,
                manifest: chosen.manifest,
            })
        }
        .boxed()
    }

    fn fetch_blob<'a>(&'a self, digest: &'a Digest, limit: u64) -> BoxFuture<'a, Result<Bytes>> {
        async move {
            let bytes = self
                .client
                .fetch_blob(&self.reference, digest)
                .await
                .with_context(|| format!("fetching {digest} of {}", self.reference))?;
            if bytes.len() as u64 > limit {
                bail!(
                    "blob {digest} has {} bytes, more than the {limit}-byte limit",
                    bytes.len()
                );
            }
            Ok(bytes)
        }
        .boxed()
    }

    fn blobs(&self) -> Arc<dyn BlobSource> {
        self.blobs.clone()
    }

    fn fetch_blob_to<'a>(
        &'a self,
        digest: &'a Digest,
        file: &'a mut tokio::fs::File,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            self.client
                .fetch_blob_to(&self.reference, digest, file)
                .await
                .with_context(|| format!("fetching {digest} of {}", self.reference))?;
            Ok(())
        }
        .boxed()
    }

    fn warm_up(&self) -> BoxFuture<'_, ()> {
        self.client
            .warm_up(&self.reference.registry, WARM_CONNECTIONS)
            .boxed()
    }
}

/// An image in an OCI image layout directory.
pub struct LayoutImage {
    layout: OciLayout,
    tag: Option<String>,
    blobs: Arc<dyn BlobSource>,
}

impl LayoutImage {
    /// The image tagged `tag` (or the only image) in `layout`.
    pub fn open(layout: OciLayout, tag: Option<String>) -> Result<LayoutImage> {
        let blobs = Arc::new(
            OciLayoutSource::open(layout.dir())
                .with_context(|| format!("opening {}", layout.dir().display()))?,
        );
        Ok(LayoutImage { layout, tag, blobs })
    }
}

impl ImageSource for LayoutImage {
    fn name(&self) -> String {
        ImageLocation::Layout {
            dir: self.layout.dir().to_owned(),
            tag: self.tag.clone(),
        }
        .to_string()
    }

    fn resolve<'a>(&'a self, platform: &'a Platform) -> BoxFuture<'a, Result<ResolvedManifest>> {
        async move {
            let m = self.layout.resolve(self.tag.as_deref(), platform).await?;
            let manifest = oci_spec::image::ImageManifest::from_reader(&m.manifest_bytes[..])
                .map_err(|e| Error::Invalid(format!("parsing manifest {}: {e}", m.digest)))?;
            Ok(ResolvedManifest {
                name: format!("oci:{}@{}", self.layout.dir().display(), m.digest),
                digest: m.digest,
                manifest,
            })
        }
        .boxed()
    }

    fn fetch_blob<'a>(&'a self, digest: &'a Digest, _limit: u64) -> BoxFuture<'a, Result<Bytes>> {
        // read_json_blob bounds the size itself (manifests and configs only).
        async move { Ok(Bytes::from(self.layout.read_json_blob(digest)?)) }.boxed()
    }

    fn blobs(&self) -> Arc<dyn BlobSource> {
        self.blobs.clone()
    }

    fn fetch_blob_to<'a>(
        &'a self,
        digest: &'a Digest,
        file: &'a mut tokio::fs::File,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let path = self.layout.blob_path(digest);
            let mut src = tokio::fs::File::open(&path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            copy_verified(&mut src, file, digest)
                .await
                .with_context(|| format!("copying {}", path.display()))
        }
        .boxed()
    }
}

/// Copies `src` to `dst` while hashing it; fails when the bytes do not hash to `digest`.
async fn copy_verified(
    src: &mut tokio::fs::File,
    dst: &mut tokio::fs::File,
    digest: &Digest,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut hash = DigestWriter::new();
    // Large enough to keep syscalls per byte low, small enough to stay in cache while hashed.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).await.context("reading")?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        dst.write_all(&buf[..n]).await.context("writing")?;
    }
    dst.flush().await.context("writing")?;
    let actual = hash.finish();
    if actual != *digest {
        bail!("blob has digest {actual}, expected {digest}");
    }
    Ok(())
}

/// An image held in memory, for tests of everything above the network: build the layers,
/// the config and the manifest annotations, and open it like any other image.
pub struct MemoryImage {
    name: String,
    manifest_bytes: Bytes,
    blobs: Arc<MemorySource>,
    small: HashMap<Digest, Bytes>,
}

impl MemoryImage {
    /// An image of `layers` (blob bytes and their manifest annotations, bottom first) and
    /// `config` (the config JSON).
    pub fn new(
        name: &str,
        config: &[u8],
        layers: Vec<(Bytes, std::collections::BTreeMap<String, String>)>,
    ) -> Result<MemoryImage> {
        let mut source = MemorySource::new();
        let mut small = HashMap::new();
        let config_digest = Digest::sha256(config);
        small.insert(config_digest, Bytes::copy_from_slice(config));
        let mut descs = Vec::new();
        for (blob, annotations) in layers {
            let size = blob.len() as u64;
            let digest = source.insert(blob);
            descs.push(Descriptor {
                media_type: crate::convert::OCI_LAYER_GZIP.to_owned(),
                digest,
                size,
                platform: None,
                annotations,
            });
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": regfs_registry::MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": crate::convert::OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": descs,
        });
        let manifest_bytes =
            Bytes::from(serde_json::to_vec(&manifest).context("encoding the manifest")?);
        Ok(MemoryImage {
            name: name.to_owned(),
            manifest_bytes,
            blobs: Arc::new(source),
            small,
        })
    }

    /// The source of its blobs, to wrap (in a `FaultySource`, say) or count.
    pub fn memory_blobs(&self) -> Arc<MemorySource> {
        self.blobs.clone()
    }
}

impl ImageSource for MemoryImage {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn resolve<'a>(&'a self, _platform: &'a Platform) -> BoxFuture<'a, Result<ResolvedManifest>> {
        async move {
            let digest = Digest::sha256(&self.manifest_bytes);
            let manifest = oci_spec::image::ImageManifest::from_reader(&self.manifest_bytes[..])
                .map_err(|e| Error::Invalid(format!("parsing manifest {digest}: {e}")))?;
            Ok(ResolvedManifest {
                name: format!("{}@{digest}", self.name),
                digest,
                manifest,
            })
        }
        .boxed()
    }

    fn fetch_blob<'a>(&'a self, digest: &'a Digest, _limit: u64) -> BoxFuture<'a, Result<Bytes>> {
        async move {
            Ok(required!(
                self.small.get(digest).cloned(),
                "no blob {digest} in {}",
                self.name
            ))
        }
        .boxed()
    }

    fn blobs(&self) -> Arc<dyn BlobSource> {
        self.blobs.clone()
    }

    fn fetch_blob_to<'a>(
        &'a self,
        digest: &'a Digest,
        file: &'a mut tokio::fs::File,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let size = self
                .blobs
                .size(digest)
                .await
                .with_context(|| format!("blob {digest}"))?;
            let mut parts = self
                .blobs
                .read_ranges(digest, std::slice::from_ref(&(0..size)))
                .await
                .with_context(|| format!("blob {digest}"))?;
            let bytes = parts.pop().unwrap_or_default();
            file.write_all(&bytes).await.context("writing a blob")?;
            Ok(())
        }
        .boxed()
    }
}

//! Blobs of one registry repository, read with HTTP Range requests.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use regfs_estargz::Digest;
use regfs_registry::{Client, Reference};

use crate::{BlobSource, Error};

/// A [`BlobSource`] over a [`regfs_registry::Client`] and the repository the blobs live in.
///
/// `read_ranges` is one multi-range GET where the registry supports it; the client falls back to
/// one request per range, follows and caches redirects, retries, and refreshes tokens.
#[derive(Clone)]
pub struct RegistrySource {
    client: Client,
    repo: Reference,
}

impl RegistrySource {
    /// Reads blobs of `repo`'s repository (its tag or digest does not matter) through `client`.
    pub fn new(client: Client, repo: Reference) -> RegistrySource {
        RegistrySource { client, repo }
    }

    /// The client (for its request counters).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn map(blob: &Digest, e: regfs_registry::Error) -> Error {
        if let regfs_registry::Error::NotFound { .. } = e {
            return Error::BlobNotFound {
                blob: *blob,
                source_name: "registry",
            };
        }
        Error::Source {
            blob: *blob,
            source_name: "registry",
            source: Arc::new(e),
        }
    }
}

impl BlobSource for RegistrySource {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn size<'a>(&'a self, blob: &'a Digest) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            self.client
                .blob_size(&self.repo, blob)
                .await
                .map_err(|e| Self::map(blob, e))
        })
    }

    fn read_ranges<'a>(
        &'a self,
        blob: &'a Digest,
        ranges: &'a [Range<u64>],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, Error>> {
        Box::pin(async move {
            if let [one] = ranges {
                let b = self
                    .client
                    .read_range(&self.repo, blob, one.clone())
                    .await
                    .map_err(|e| Self::map(blob, e))?;
                return Ok(vec![b]);
            }
            self.client
                .read_ranges(&self.repo, blob, ranges)
                .await
                .map_err(|e| Self::map(blob, e))
        })
    }
}

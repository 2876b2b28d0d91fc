//! Blob uploads: existence check, monolithic PUT or chunked PATCH sessions, cross-repo mounts.
//!
//! ```text
//! HEAD /v2/<repo>/blobs/<digest>             200 → already there, done
//! POST /v2/<repo>/blobs/uploads/             202, Location: session URL
//!   small:  PUT <session>?digest=<digest>    (whole body)              201
//!   large:  PATCH <session> (Content-Range a-b) per chunk, new Location each time
//!           PUT <session>?digest=<digest>    (empty body)              201
//! POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<other repo>   201 mounted / 202 not
//! ```
//!
//! A failed upload is retried from the POST: PATCH is not idempotent, so a half-finished session
//! is abandoned rather than continued.

use bytes::Bytes;
use http::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use http::{Method, StatusCode};
use regfs_estargz::Digest;
use url::Url;

use crate::client::{Endpoint, Req, pull_scope, push_scope};
use crate::{Client, Error, Reference};

impl Client {
    /// Uploads `data` as blob `digest` of `repo`, unless the registry has it already.
    pub async fn push_blob(
        &self,
        repo: &Reference,
        digest: &Digest,
        data: Bytes,
    ) -> Result<(), Error> {
        let actual = Digest::sha256(&data);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                what: format!("blob to push to {repo}"),
                expected: *digest,
                actual,
            });
        }
        let ep = self.push_host(&repo.registry)?;
        let scopes = [push_scope(&repo.repository)];
        self.retrying(|| self.push_blob_once(&ep, repo, digest, &data, &scopes))
            .await
    }

    async fn push_blob_once(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        digest: &Digest,
        data: &Bytes,
        scopes: &[String],
    ) -> Result<(), Error> {
        let blob_url = ep.url(&repo.repository, &format!("blobs/{digest}"))?;
        let (resp, url) = self
            .send(ep, Req::new(Method::HEAD, blob_url, scopes))
            .await?;
        match self.check(resp, &url).await {
            Ok(_) => return Ok(()),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let start = ep.url(&repo.repository, "blobs/uploads/")?;
        let (resp, url) = self.send(ep, Req::new(Method::POST, start, scopes)).await?;
        let resp = self.check(resp, &url).await?;
        let mut session = location(&resp, &url)?;
        let chunk_size = self.config().push_chunk_size.max(1);
        let body = if data.len() <= chunk_size {
            data.clone()
        } else {
            let mut offset = 0usize;
            for chunk in data.chunks(chunk_size) {
                let end = offset + chunk.len();
                let mut req = Req::new(Method::PATCH, session.clone(), scopes)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, &format!("{offset}-{}", end - 1));
                req.body = Some(data.slice(offset..end));
                req.whole_timeout = false;
                let (resp, url) = self.send(ep, req).await?;
                let resp = self.check(resp, &url).await?;
                session = location(&resp, &url)?;
                offset = end;
            }
            Bytes::new()
        };
        session
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut req =
            Req::new(Method::PUT, session, scopes).header(CONTENT_TYPE, "application/octet-stream");
        req.body = Some(body);
        req.whole_timeout = false;
        let (resp, url) = self.send(ep, req).await?;
        self.check(resp, &url).await?;
        Ok(())
    }

    /// Asks the registry to link blob `digest` from `from_repo` into `repo` without uploading.
    /// `Ok(false)` when it would not (unknown blob, no pull access to the source); the caller
    /// then pushes the bytes.
    pub async fn mount_blob(
        &self,
        repo: &Reference,
        from_repo: &str,
        digest: &Digest,
    ) -> Result<bool, Error> {
        let ep = self.push_host(&repo.registry)?;
        let scopes = [push_scope(&repo.repository), pull_scope(from_repo)];
        let mut url = ep.url(&repo.repository, "blobs/uploads/")?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from_repo);
        self.retrying(|| async {
            let (resp, url) = self
                .send(&ep, Req::new(Method::POST, url.clone(), &scopes))
                .await?;
            let resp = self.check(resp, &url).await?;
            match resp.status() {
                StatusCode::CREATED => Ok(true),
                StatusCode::ACCEPTED => {
                    // An upload session was opened instead; close it so it does not linger.
                    if let Ok(session) = location(&resp, &url) {
                        let cancel = Req::new(Method::DELETE, session, &scopes);
                        if let Err(e) = self.send(&ep, cancel).await {
                            tracing::debug!(error = %e, "cancelling unused upload session failed");
                        }
                    }
                    Ok(false)
                }
                s => Err(Error::Protocol {
                    url: url.to_string(),
                    reason: format!("unexpected status {s} to a mount request"),
                }),
            }
        })
        .await
    }
}

fn location(resp: &reqwest::Response, url: &Url) -> Result<Url, Error> {
    resp.headers()
        .get(LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| url.join(l).ok())
        .ok_or_else(|| Error::Protocol {
            url: url.to_string(),
            reason: format!("{} without a usable upload Location", resp.status()),
        })
}

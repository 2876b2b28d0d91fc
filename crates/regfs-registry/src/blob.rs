//! Blob reads: size, single and multi-range GETs, whole verified blobs (in memory or streamed).
//!
//! Range replies are checked, not trusted: a 206 must carry a `Content-Range` covering the
//! request; a 200 means the server ignored `Range`, and the wanted bytes are cut out of the
//! body's prefix (the rest is not read). Fewer bytes than asked is an error, never a short
//! buffer. Multi-range requests expect `multipart/byteranges`; a host that answers them with
//! 400/416/501, the whole blob (200), fewer ranges than asked (some CDNs, object stores and P2P
//! mirrors honour only the first) or something unparsable is marked and asked range by range
//! from then on. Every ranged read has a deadline (the request timeout plus its length at
//! [`MIN_RANGE_RATE`](crate::MIN_RANGE_RATE)), so a body that trickles in is cut off and retried.
//!
//! Blob GETs that the registry redirects (to object storage) remember the final URL per blob and
//! go there directly next time; when that URL stops working (401/403/404/410: a pre-signed URL
//! expired) it is forgotten and the registry asked again.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE};
use http::{Method, StatusCode};
use regfs_estargz::{Digest, DigestWriter};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use url::Url;

use crate::client::{Endpoint, Req, pull_scope};
use crate::range::{
    RangePart, multipart_boundary, parse_content_range, parse_multipart, slice_from_parts,
};
use crate::{Client, Error, Reference};

/// Blobs fetched whole into memory (configs, TOCs, small layers) are capped here; bigger ones go
/// through [`Client::fetch_blob_to`].
pub const MAX_IN_MEMORY_BLOB: u64 = 1024 * 1024 * 1024;

/// Ranges per multi-range request: keeps the `Range` header under common 8 KiB header limits.
const MAX_RANGES_PER_REQUEST: usize = 32;

/// Allowance for one multipart part's boundary and headers when bounding the body.
const MULTIPART_PART_OVERHEAD: u64 = 8 * 1024 + 128;

impl Client {
    /// The size of blob `digest` in `repo`'s repository (HEAD, or a 1-byte GET if HEAD has no
    /// length).
    pub async fn blob_size(&self, repo: &Reference, digest: &Digest) -> Result<u64, Error> {
        self.on_hosts(
            &repo.registry,
            |c| c.pull,
            |ep| self.blob_size_once(ep, repo, digest),
        )
        .await
    }

    async fn blob_size_once(
        &self,
        ep: Arc<Endpoint>,
        repo: &Reference,
        digest: &Digest,
    ) -> Result<u64, Error> {
        let scopes = [pull_scope(&repo.repository)];
        let url = ep.url(&repo.repository, &format!("blobs/{digest}"))?;
        let (resp, final_url) = self.send(&ep, Req::new(Method::HEAD, url, &scopes)).await?;
        let resp = self.check(resp, &final_url).await?;
        // reqwest's content_length() is the body's size hint, 0 for HEAD; read the header.
        let announced = header_str(resp.headers(), http::header::CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = announced.filter(|_| resp.status() == StatusCode::OK) {
            return Ok(n);
        }
        let (resp, final_url) = self.blob_get(&ep, repo, digest, Some("bytes=0-0")).await?;
        let resp = self.check(resp, &final_url).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => header_str(resp.headers(), CONTENT_RANGE)
                .and_then(parse_content_range)
                .and_then(|(_, _, total)| total)
                .ok_or_else(|| Error::BadRangeReply {
                    url: final_url.to_string(),
                    reason: "206 without a total size in Content-Range".into(),
                }),
            _ => resp.content_length().ok_or_else(|| Error::Protocol {
                url: final_url.to_string(),
                reason: "blob size announced neither by HEAD nor GET".into(),
            }),
        }
    }

    /// Bytes `range` of blob `digest`. Not verified (a range cannot be); the caller checks the
    /// chunk digests of the eStargz TOC.
    pub async fn read_range(
        &self,
        repo: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        check_range(digest, &range)?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.on_hosts(
            &repo.registry,
            |c| c.pull,
            |ep| self.read_range_once(ep, repo, digest, range.clone()),
        )
        .await
    }

    async fn read_range_once(
        &self,
        ep: Arc<Endpoint>,
        repo: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        let blob_url = ep.url(&repo.repository, &format!("blobs/{digest}"))?;
        let len = range.end - range.start;
        self.within_deadline(
            &blob_url,
            len,
            self.read_range_now(&ep, repo, digest, range),
        )
        .await
    }

    async fn read_range_now(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let (resp, url) = self.blob_get(ep, repo, digest, Some(&header)).await?;
        let resp = self.check(resp, &url).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                if is_multipart(resp.headers()) {
                    let parts = self
                        .multipart_parts(resp, &url, std::slice::from_ref(&range))
                        .await?;
                    return slice_from_parts(&parts, range.start, range.end).ok_or_else(|| {
                        Error::BadRangeReply {
                            url: url.to_string(),
                            reason: format!("no part covers {}..{}", range.start, range.end),
                        }
                    });
                }
                let (start, end, _) = content_range(&resp, &url)?;
                if start > range.start || end < range.end {
                    return Err(Error::BadRangeReply {
                        url: url.to_string(),
                        reason: format!(
                            "Content-Range {start}..{end} does not cover {}..{}",
                            range.start, range.end
                        ),
                    });
                }
                let body = self.read_prefix(resp, &url, range.end - start).await?;
                Ok(body.slice(to_usize(range.start - start)?..))
            }
            StatusCode::OK => {
                let body = self.read_prefix(resp, &url, range.end).await?;
                Ok(body.slice(to_usize(range.start)?..))
            }
            s => Err(unexpected(&url, s)),
        }
    }

    /// Several ranges of one blob, in the order asked, with as few requests as the server allows
    /// (`multipart/byteranges`); falls back to one request per range where that is unsupported.
    pub async fn read_ranges(
        &self,
        repo: &Reference,
        digest: &Digest,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, Error> {
        for r in ranges {
            check_range(digest, r)?;
        }
        let mut out = Vec::with_capacity(ranges.len());
        for batch in ranges.chunks(MAX_RANGES_PER_REQUEST) {
            let wanted: Vec<Range<u64>> = batch.iter().filter(|r| !r.is_empty()).cloned().collect();
            let got = if wanted.len() > 1 {
                self.on_hosts(
                    &repo.registry,
                    |c| c.pull,
                    |ep| self.read_ranges_once(ep, repo, digest, &wanted),
                )
                .await?
            } else {
                None
            };
            let got = match got {
                Some(g) => g,
                None => {
                    futures::future::try_join_all(
                        wanted
                            .iter()
                            .map(|r| self.read_range(repo, digest, r.clone())),
                    )
                    .await?
                }
            };
            let mut got = got.into_iter();
            for r in batch {
                out.push(if r.is_empty() {
                    Bytes::new()
                } else {
                    got.next().ok_or_else(|| Error::Protocol {
                        url: repo.to_string(),
                        reason: "range reply count mismatch".into(),
                    })?
                });
            }
        }
        Ok(out)
    }

    /// One multi-range attempt; `Ok(None)` = this host cannot, use single ranges.
    async fn read_ranges_once(
        &self,
        ep: Arc<Endpoint>,
        repo: &Reference,
        digest: &Digest,
        ranges: &[Range<u64>],
    ) -> Result<Option<Vec<Bytes>>, Error> {
        if !ep.multi_range.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let blob_url = ep.url(&repo.repository, &format!("blobs/{digest}"))?;
        let len = ranges.iter().map(|r| r.end - r.start).sum();
        self.within_deadline(
            &blob_url,
            len,
            self.read_ranges_now(&ep, repo, digest, ranges),
        )
        .await
    }

    async fn read_ranges_now(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        digest: &Digest,
        ranges: &[Range<u64>],
    ) -> Result<Option<Vec<Bytes>>, Error> {
        let spec: Vec<String> = ranges
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end - 1))
            .collect();
        let header = format!("bytes={}", spec.join(","));
        let (resp, url) = self.blob_get(ep, repo, digest, Some(&header)).await?;
        if matches!(resp.status().as_u16(), 400 | 416 | 501) {
            tracing::debug!(host = %ep.authority, status = %resp.status(), "multi-range refused");
            ep.multi_range.store(false, Ordering::Relaxed);
            return Ok(None);
        }
        let resp = self.check(resp, &url).await?;
        let parts = match resp.status() {
            StatusCode::PARTIAL_CONTENT if is_multipart(resp.headers()) => {
                match self.multipart_parts(resp, &url, ranges).await {
                    Ok(p) => p,
                    Err(Error::BadRangeReply { reason, .. }) => {
                        tracing::debug!(host = %ep.authority, %reason, "unusable multipart reply");
                        ep.multi_range.store(false, Ordering::Relaxed);
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            }
            StatusCode::PARTIAL_CONTENT => {
                // One part: the server merged the ranges (allowed by RFC 9110).
                let (start, end, _) = content_range(&resp, &url)?;
                let data = self.read_prefix(resp, &url, end - start).await?;
                vec![RangePart { start, end, data }]
            }
            StatusCode::OK => {
                // The whole blob instead of the ranges (a CDN or mirror that ignores multi-range
                // requests): reading it could cost the whole blob for every batch; single ranges
                // are what such hosts serve well.
                tracing::debug!(host = %ep.authority, "multi-range answered with the whole blob");
                ep.multi_range.store(false, Ordering::Relaxed);
                return Ok(None);
            }
            s => return Err(unexpected(&url, s)),
        };
        let sliced: Option<Vec<Bytes>> = ranges
            .iter()
            .map(|r| slice_from_parts(&parts, r.start, r.end))
            .collect();
        if sliced.is_none() {
            ep.multi_range.store(false, Ordering::Relaxed);
        }
        Ok(sliced)
    }

    async fn multipart_parts(
        &self,
        resp: reqwest::Response,
        url: &Url,
        ranges: &[Range<u64>],
    ) -> Result<Vec<RangePart>, Error> {
        let boundary = header_str(resp.headers(), CONTENT_TYPE)
            .and_then(multipart_boundary)
            .ok_or_else(|| Error::BadRangeReply {
                url: url.to_string(),
                reason: "multipart reply without boundary".into(),
            })?;
        let lo = ranges.iter().map(|r| r.start).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let limit = (hi - lo)
            .saturating_add(MULTIPART_PART_OVERHEAD.saturating_mul(ranges.len() as u64 + 1));
        let body = self
            .read_body(resp, url, limit, "multipart range reply")
            .await?;
        parse_multipart(&body, &boundary).map_err(|reason| Error::BadRangeReply {
            url: url.to_string(),
            reason,
        })
    }

    /// The whole blob, verified against `digest`, in memory (at most [`MAX_IN_MEMORY_BLOB`]).
    pub async fn fetch_blob(&self, repo: &Reference, digest: &Digest) -> Result<Bytes, Error> {
        self.fetch_blob_limited(repo, digest, MAX_IN_MEMORY_BLOB)
            .await
    }

    pub(crate) async fn fetch_blob_limited(
        &self,
        repo: &Reference,
        digest: &Digest,
        limit: u64,
    ) -> Result<Bytes, Error> {
        self.on_hosts(
            &repo.registry,
            |c| c.pull,
            |ep| async move {
                let (resp, url) = self.blob_get(&ep, repo, digest, None).await?;
                let resp = self.check(resp, &url).await?;
                if resp.status() != StatusCode::OK {
                    return Err(unexpected(&url, resp.status()));
                }
                let body = self
                    .read_body(resp, &url, limit, &format!("blob {digest}"))
                    .await?;
                verify(&body, digest, &url)?;
                Ok(body)
            },
        )
        .await
    }

    /// Streams blob `digest` into `w` and verifies it; returns its size. A transfer cut short is
    /// resumed with a Range request from where it stopped. On a digest mismatch the bytes have
    /// already been written: the caller must discard them.
    pub async fn fetch_blob_to<W>(
        &self,
        repo: &Reference,
        digest: &Digest,
        w: &mut W,
    ) -> Result<u64, Error>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut progress = Progress {
            written: 0,
            hasher: DigestWriter::new(),
        };
        let eps = self.endpoints(&repo.registry)?;
        let mut last = None;
        for ep in eps.iter().filter(|e| e.spec.capabilities.pull) {
            let mut delays = self.backoff();
            loop {
                match self.stream_once(ep, repo, digest, w, &mut progress).await {
                    Ok(url) => {
                        w.flush().await.map_err(|source| Error::Write {
                            digest: *digest,
                            source,
                        })?;
                        let actual = progress.hasher.finish();
                        if actual != *digest {
                            return Err(Error::DigestMismatch {
                                what: format!("blob from {url}"),
                                expected: *digest,
                                actual,
                            });
                        }
                        return Ok(progress.written);
                    }
                    Err(e @ Error::Write { .. }) => return Err(e),
                    Err(e) if e.is_retryable() => match self.next_delay(&mut delays, &e) {
                        Some(d) => tokio::time::sleep(d).await,
                        None => {
                            last = Some(e);
                            break;
                        }
                    },
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
            if ep.spec.is_origin {
                break;
            }
        }
        Err(last.unwrap_or_else(|| Error::Setup {
            host: repo.registry.clone(),
            reason: "no configured host has the pull capability".into(),
        }))
    }

    async fn stream_once<W>(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        digest: &Digest,
        w: &mut W,
        p: &mut Progress,
    ) -> Result<Url, Error>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let resume = (p.written > 0).then(|| format!("bytes={}-", p.written));
        let (resp, url) = self.blob_get(ep, repo, digest, resume.as_deref()).await?;
        let mut resp = self.check(resp, &url).await?;
        let mut skip = match resp.status() {
            StatusCode::OK => p.written,
            StatusCode::PARTIAL_CONTENT => {
                let (start, _, _) = content_range(&resp, &url)?;
                if start != p.written {
                    return Err(Error::BadRangeReply {
                        url: url.to_string(),
                        reason: format!("resumed at {start}, asked {}", p.written),
                    });
                }
                0
            }
            s => return Err(unexpected(&url, s)),
        };
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.wire_error(&url, e))? {
            self.count_bytes(chunk.len());
            let skipped = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
            skip -= skipped as u64;
            let data = &chunk[skipped..];
            if data.is_empty() {
                continue;
            }
            w.write_all(data).await.map_err(|source| Error::Write {
                digest: *digest,
                source,
            })?;
            p.hasher.update(data);
            p.written += data.len() as u64;
        }
        if skip > 0 {
            return Err(Error::ShortBody {
                url: url.to_string(),
                expected: p.written,
                got: p.written - skip,
            });
        }
        Ok(url)
    }

    /// GET of a blob with an optional Range, through the cached redirect target when there is
    /// one. Returns the response and the URL that answered.
    pub(crate) async fn blob_get(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        digest: &Digest,
        range: Option<&str>,
    ) -> Result<(reqwest::Response, Url), Error> {
        let mut headers = HeaderMap::new();
        if let Some(r) = range {
            headers.insert(
                RANGE,
                HeaderValue::from_str(r).map_err(|_| Error::InvalidRange {
                    digest: *digest,
                    start: 0,
                    end: 0,
                })?,
            );
        }
        let key = (format!("{}/{}", ep.spec.api_root, repo.repository), *digest);
        if let Some(target) = self.cached_redirect(&key) {
            match self.send_plain(ep, target.clone(), headers.clone()).await {
                Ok(resp) if !matches!(resp.status().as_u16(), 401 | 403 | 404 | 410) => {
                    return Ok((resp, target));
                }
                Ok(resp) => {
                    tracing::debug!(url = %target, status = %resp.status(), "cached blob URL expired; asking the registry again");
                }
                Err(e) => {
                    tracing::debug!(url = %target, error = %e, "cached blob URL unreachable; asking the registry again");
                }
            }
            self.set_redirect(key.clone(), None);
        }
        let scopes = [pull_scope(&repo.repository)];
        let url = ep.url(&repo.repository, &format!("blobs/{digest}"))?;
        let mut req = Req::new(Method::GET, url.clone(), &scopes);
        req.headers = headers;
        req.whole_timeout = false;
        let (resp, final_url) = self.send(ep, req).await?;
        if final_url != url && resp.status().is_success() {
            self.set_redirect(key, Some(final_url.clone()));
        }
        Ok((resp, final_url))
    }
}

struct Progress {
    written: u64,
    hasher: DigestWriter,
}

fn check_range(digest: &Digest, r: &Range<u64>) -> Result<(), Error> {
    if r.start > r.end {
        return Err(Error::InvalidRange {
            digest: *digest,
            start: r.start,
            end: r.end,
        });
    }
    Ok(())
}

fn verify(body: &[u8], digest: &Digest, url: &Url) -> Result<(), Error> {
    let actual = Digest::sha256(body);
    if actual != *digest {
        return Err(Error::DigestMismatch {
            what: format!("blob from {url}"),
            expected: *digest,
            actual,
        });
    }
    Ok(())
}

fn header_str(h: &HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn is_multipart(h: &HeaderMap) -> bool {
    header_str(h, CONTENT_TYPE).is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/byteranges")
    })
}

fn content_range(resp: &reqwest::Response, url: &Url) -> Result<(u64, u64, Option<u64>), Error> {
    header_str(resp.headers(), CONTENT_RANGE)
        .and_then(parse_content_range)
        .ok_or_else(|| Error::BadRangeReply {
            url: url.to_string(),
            reason: "206 without a valid Content-Range".into(),
        })
}

fn unexpected(url: &Url, status: StatusCode) -> Error {
    Error::Protocol {
        url: url.to_string(),
        reason: format!("unexpected status {status}"),
    }
}

fn to_usize(n: u64) -> Result<usize, Error> {
    usize::try_from(n).map_err(|_| Error::TooLarge {
        what: "range offset".into(),
        limit: usize::MAX as u64,
    })
}

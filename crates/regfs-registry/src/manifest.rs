//! Manifests: fetch (verified), media-type detection, index → platform manifest, config.
//!
//! The media type is the body's `mediaType` when it has one; some tools (umoci, ctr-remote)
//! write none, and then the reply's `Content-Type` decides, and failing that the shape of the
//! JSON (`manifests` → index). The manifest digest is checked against the reference's digest,
//! or else against `Docker-Content-Digest` when the registry sends one.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http::header::{ACCEPT, CONTENT_TYPE};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use regfs_estargz::Digest;
use serde::Deserialize;

use crate::client::{Endpoint, Req, pull_scope, push_scope};
use crate::hosts::Capabilities;
use crate::{Client, Error, Platform, Reference};

/// Manifests and indexes larger than this are refused (containerd's limit too); real ones are
/// a few KiB, and the whole body is held in memory and parsed.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Image configs are JSON held in memory; large history lists stay well below this.
pub const MAX_CONFIG_SIZE: u64 = 16 * 1024 * 1024;

/// Media type of an OCI image manifest (one platform: config + layers).
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index (one manifest per platform).
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of a Docker schema 2 manifest, read like an OCI manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list, read like an OCI index.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

const ACCEPTED: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Whether `media_type` is an index / manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_LIST
}

/// A resolved, verified image: its platform manifest and config.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference asked for, pinned to `manifest_digest`.
    pub reference: Reference,
    /// Digest of the platform manifest (not of the index it was picked from).
    pub manifest_digest: Digest,
    /// The platform manifest, parsed: config descriptor and layers in order.
    pub manifest: ImageManifest,
    /// The platform manifest exactly as fetched (its sha256 is `manifest_digest`).
    pub manifest_bytes: Vec<u8>,
    /// Media type of the platform manifest (OCI or Docker schema 2).
    pub media_type: String,
    /// The image config, parsed: command, environment, user, working directory, diff IDs.
    pub config: ImageConfiguration,
    /// The image config exactly as fetched (verified against the manifest's config digest).
    pub config_bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct Shape {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    layers: Option<serde::de::IgnoredAny>,
}

/// The media type of a manifest body, from the body, else `content_type`, else its shape.
pub(crate) fn media_type_of(body: &[u8], content_type: Option<&str>) -> Result<String, String> {
    let shape: Shape = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(mt) = shape.media_type.filter(|m| !m.is_empty()) {
        return Ok(mt);
    }
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| {
            [
                MEDIA_TYPE_OCI_MANIFEST,
                MEDIA_TYPE_OCI_INDEX,
                MEDIA_TYPE_DOCKER_MANIFEST,
                MEDIA_TYPE_DOCKER_LIST,
            ]
            .contains(&c.as_str())
        });
    if let Some(ct) = ct {
        return Ok(ct);
    }
    match (shape.manifests.is_some(), shape.layers.is_some()) {
        (true, false) => Ok(MEDIA_TYPE_OCI_INDEX.to_owned()),
        (false, true) => Ok(MEDIA_TYPE_OCI_MANIFEST.to_owned()),
        _ => Err("cannot tell manifest from index: no mediaType, Content-Type or shape".into()),
    }
}

fn parse_digest(s: &str, what: &str) -> Result<Digest, Error> {
    s.parse().map_err(|_| Error::BadManifest {
        what: what.to_owned(),
        reason: format!("digest {s:?} is not sha256"),
    })
}

/// The digest of the manifest that `platform` runs, out of the index `body` that `r` named.
pub(crate) fn pick_from_index(
    body: &[u8],
    r: &Reference,
    platform: &Platform,
) -> Result<Digest, Error> {
    choose_platform(body, &r.to_string(), platform)
}

/// The image manifest `body` that `r` named, and the digest of its config blob.
pub(crate) fn parse_manifest(body: &[u8], r: &Reference) -> Result<(ImageManifest, Digest), Error> {
    let manifest = ImageManifest::from_reader(body).map_err(|e| Error::BadManifest {
        what: format!("manifest {r}"),
        reason: e.to_string(),
    })?;
    let config_digest = parse_digest(
        manifest.config().digest().as_ref(),
        &format!("manifest {r}"),
    )?;
    Ok((manifest, config_digest))
}

/// The image config `body` (blob `digest` of the image `r`).
pub(crate) fn parse_config(
    body: &[u8],
    digest: &Digest,
    r: &Reference,
) -> Result<ImageConfiguration, Error> {
    ImageConfiguration::from_reader(body).map_err(|e| Error::BadManifest {
        what: format!("config {digest} of {r}"),
        reason: e.to_string(),
    })
}

impl Client {
    /// The manifest or index `r` names: body, media type and (verified) digest.
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<(Bytes, String, Digest), Error> {
        let cap: fn(&Capabilities) -> bool = if r.digest.is_some() {
            |c| c.pull
        } else {
            |c| c.resolve
        };
        self.on_hosts(&r.registry, cap, |ep| self.fetch_manifest_once(ep, r))
            .await
    }

    async fn fetch_manifest_once(
        &self,
        ep: Arc<Endpoint>,
        r: &Reference,
    ) -> Result<(Bytes, String, Digest), Error> {
        let scopes = [pull_scope(&r.repository)];
        let url = ep.url(&r.repository, &format!("manifests/{}", r.manifest_key()))?;
        let (resp, url) = self
            .send(
                &ep,
                Req::new(Method::GET, url, &scopes).header(ACCEPT, ACCEPTED),
            )
            .await?;
        let resp = self.check(resp, &url).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let body = self
            .read_body(resp, &url, MAX_MANIFEST_SIZE, &format!("manifest {r}"))
            .await?;
        let actual = Digest::sha256(&body);
        if let Some(expected) = r.digest.or(header_digest)
            && expected != actual
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest {r} from {url}"),
                expected,
                actual,
            });
        }
        let media_type =
            media_type_of(&body, content_type.as_deref()).map_err(|reason| Error::BadManifest {
                what: format!("manifest {r}"),
                reason,
            })?;
        Ok((body, media_type, actual))
    }

    /// Resolves `r` to one runnable image: follows an index to the manifest of the configured
    /// platform (default: this host's), fetches and parses the config.
    pub async fn resolve(&self, r: &Reference) -> Result<ResolvedImage, Error> {
        let platform = self
            .config()
            .platform
            .clone()
            .unwrap_or_else(Platform::host);
        self.resolve_for(r, &platform).await
    }

    /// [`Client::resolve`] for an explicit platform.
    pub async fn resolve_for(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, Error> {
        let chosen = resolve_platform(&r.to_string(), platform, |digest| async move {
            match digest {
                None => self.fetch_manifest(r).await,
                Some(d) => self.fetch_manifest(&r.with_digest(d)).await,
            }
        })
        .await?;
        let config_digest = parse_digest(
            chosen.manifest.config().digest().as_ref(),
            &format!("manifest {r}"),
        )?;
        let config_bytes = self
            .fetch_blob_limited(r, &config_digest, MAX_CONFIG_SIZE)
            .await?;
        let config = parse_config(&config_bytes, &config_digest, r)?;
        Ok(ResolvedImage {
            reference: r.with_digest(chosen.digest),
            manifest_digest: chosen.digest,
            manifest: chosen.manifest,
            manifest_bytes: chosen.bytes.to_vec(),
            media_type: chosen.media_type,
            config,
            config_bytes: config_bytes.to_vec(),
        })
    }

    /// Uploads a manifest or index under `r`'s tag (or digest); returns its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        body: Bytes,
    ) -> Result<Digest, Error> {
        let digest = Digest::sha256(&body);
        if body.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::TooLarge {
                what: format!("manifest {r}"),
                limit: MAX_MANIFEST_SIZE,
            });
        }
        if let Some(d) = r.digest.filter(|d| *d != digest) {
            return Err(Error::DigestMismatch {
                what: format!("manifest pushed as {r}"),
                expected: d,
                actual: digest,
            });
        }
        let ep = self.push_host(&r.registry)?;
        let scopes = [push_scope(&r.repository)];
        let key = match &r.tag {
            Some(t) => t.clone(),
            None => digest.to_string(),
        };
        let url = ep.url(&r.repository, &format!("manifests/{key}"))?;
        self.retrying(|| async {
            let mut req =
                Req::new(Method::PUT, url.clone(), &scopes).header(CONTENT_TYPE, media_type);
            req.body = Some(body.clone());
            let (resp, url) = self.send(&ep, req).await?;
            let resp = self.check(resp, &url).await?;
            if let Some(d) = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok())
                .filter(|d| *d != digest)
            {
                return Err(Error::DigestMismatch {
                    what: format!("manifest stored by {url}"),
                    expected: digest,
                    actual: d,
                });
            }
            Ok(())
        })
        .await?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_detection() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            (
                r#"{"mediaType":"x/y","layers":[]}"#,
                Some(MEDIA_TYPE_OCI_INDEX),
                Some("x/y"),
            ),
            (
                r#"{"layers":[]}"#,
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
                Some(MEDIA_TYPE_DOCKER_MANIFEST),
            ),
            (
                r#"{"layers":[]}"#,
                Some("application/json"),
                Some(MEDIA_TYPE_OCI_MANIFEST),
            ),
            (r#"{"manifests":[]}"#, None, Some(MEDIA_TYPE_OCI_INDEX)),
            (r#"{"schemaVersion":2}"#, None, None),
            ("not json", None, None),
        ];
        for (body, ct, want) in cases {
            assert_eq!(
                media_type_of(body.as_bytes(), *ct).ok().as_deref(),
                *want,
                "{body}"
            );
        }
    }
}

/// The platform manifest picked out of a manifest or an index.
#[derive(Clone, Debug)]
pub struct PlatformManifest {
    /// Digest of the platform manifest (not of the index it was picked from).
    pub digest: Digest,
    /// Its media type (OCI or Docker manifest).
    pub media_type: String,
    /// Its bytes, as fetched and verified.
    pub bytes: Bytes,
    /// Its parsed form.
    pub manifest: ImageManifest,
}

/// Resolves a manifest-or-index to the manifest of `platform`, wherever manifests come from:
/// `fetch(None)` returns the top object (what a tag names), `fetch(Some(d))` the manifest `d`,
/// each as (body, media type, verified digest). A registry ([`Client::resolve`]) and an OCI
/// layout both resolve through here, so both pick platforms and refuse nested indexes alike.
pub async fn resolve_platform<F, Fut, E>(
    what: &str,
    platform: &Platform,
    fetch: F,
) -> Result<PlatformManifest, E>
where
    F: Fn(Option<Digest>) -> Fut,
    Fut: std::future::Future<Output = Result<(Bytes, String, Digest), E>>,
    E: From<Error>,
{
    let (mut body, mut media_type, mut digest) = fetch(None).await?;
    if is_index(&media_type) {
        let d = choose_platform(&body, what, platform)?;
        (body, media_type, digest) = fetch(Some(d)).await?;
        if is_index(&media_type) {
            return Err(Error::BadManifest {
                what: format!("manifest {d} of index {what}"),
                reason: "nested index".into(),
            }
            .into());
        }
    }
    let manifest = ImageManifest::from_reader(&body[..]).map_err(|e| Error::BadManifest {
        what: format!("manifest {what}"),
        reason: e.to_string(),
    })?;
    Ok(PlatformManifest {
        digest,
        media_type,
        bytes: body,
        manifest,
    })
}

/// The digest of the manifest for `platform` in the index `body` (`what` names it in errors).
pub fn choose_platform(body: &[u8], what: &str, platform: &Platform) -> Result<Digest, Error> {
    let index = ImageIndex::from_reader(body).map_err(|e| Error::BadManifest {
        what: format!("index {what}"),
        reason: e.to_string(),
    })?;
    let descriptor = platform
        .pick(&index)
        .and_then(|i| index.manifests().get(i))
        .ok_or_else(|| Error::NoMatchingPlatform {
            reference: what.to_owned(),
            platform: platform.to_string(),
        })?;
    parse_digest(descriptor.digest().as_ref(), &format!("index {what}"))
}

/// The media type of a manifest body read from somewhere other than a registry reply (an OCI
/// layout): the body's `mediaType`, else the descriptor's, else the JSON's shape.
pub fn manifest_media_type(
    body: &[u8],
    descriptor_media_type: Option<&str>,
) -> Result<String, Error> {
    media_type_of(body, descriptor_media_type).map_err(|reason| Error::BadManifest {
        what: "manifest".into(),
        reason,
    })
}

//! Entry points for the `fuzz/` targets into parsers that are otherwise private.
//!
//! Each function runs one parser of registry bytes (headers, bodies, `hosts.toml`) exactly as the
//! client does and returns plain values, so the targets can check invariants without this crate
//! exposing its internal types. Not a stable API: only the fuzz targets call it.

use std::path::Path;

use bytes::Bytes;

use crate::auth::{Challenge, ConfigAnswer, TokenReply, lookup_docker_config, parse_challenge};
use crate::hosts::parse_hosts;
use crate::manifest::{media_type_of, parse_config, parse_manifest, pick_from_index};
use crate::range::{multipart_boundary, parse_content_range, parse_multipart, slice_from_parts};
use crate::{Digest, Error, Platform, Reference};

/// A `WWW-Authenticate` value as the client reads it: `None` when it names no Basic or Bearer
/// challenge, `Some(None)` for Basic, `Some(Some((realm, service)))` for Bearer.
pub fn www_authenticate(value: &str) -> Option<Option<(String, Option<String>)>> {
    parse_challenge(value).map(|c| match c {
        Challenge::Basic => None,
        Challenge::Bearer { realm, service } => Some((realm, service)),
    })
}

/// A token endpoint's reply body: the bearer token it carries, if it parses and has one.
pub fn token_reply(body: &[u8]) -> Option<String> {
    let reply: TokenReply = serde_json::from_slice(body).ok()?;
    reply.bearer().map(str::to_owned)
}

/// A `Content-Range` value as `(start, end_exclusive, total)`.
pub fn content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    parse_content_range(value)
}

/// A `multipart/byteranges` reply: the boundary from `content_type`, then the parts of `body` as
/// `(start, end_exclusive, data)`; `Err` carries the parser's reason.
pub fn multipart(content_type: &str, body: &[u8]) -> Result<Vec<(u64, u64, Bytes)>, String> {
    let boundary = multipart_boundary(content_type).ok_or("no boundary")?;
    let parts = parse_multipart(&Bytes::copy_from_slice(body), &boundary)?;
    Ok(parts
        .into_iter()
        .map(|p| (p.start, p.end, p.data))
        .collect())
}

/// Parses the multipart `body` and cuts `start..end` out of whichever part covers it.
pub fn slice_multipart(boundary: &str, body: &[u8], start: u64, end: u64) -> Option<Bytes> {
    let parts = parse_multipart(&Bytes::copy_from_slice(body), boundary).ok()?;
    slice_from_parts(&parts, start, end)
}

/// A `hosts.toml` for the origin `https://registry.invalid`, with relative paths under
/// `/etc/regfs/certs.d/registry.invalid`: the number of hosts it configures (mirrors + origin).
pub fn hosts_toml(text: &str, is_default: bool) -> Result<usize, String> {
    let base = Path::new("/etc/regfs/certs.d/registry.invalid");
    parse_hosts(text, "https://registry.invalid", base, is_default).map(|specs| specs.len())
}

/// A manifest reply as `resolve` handles it: its media type (from the body, else
/// `content_type`, else its shape); for an index, the digest of the manifest `platform` runs;
/// for a manifest, the digest of its config.
pub fn manifest(
    body: &[u8],
    content_type: Option<&str>,
    platform: &Platform,
) -> Result<(String, Digest), Error> {
    let r = Reference {
        registry: "registry.invalid".to_owned(),
        repository: "fuzz".to_owned(),
        tag: Some("latest".to_owned()),
        digest: None,
    };
    let media_type = media_type_of(body, content_type).map_err(|reason| Error::BadManifest {
        what: "manifest".to_owned(),
        reason,
    })?;
    let digest = if crate::is_index(&media_type) {
        pick_from_index(body, &r, platform)?
    } else {
        parse_manifest(body, &r)?.1
    };
    Ok((media_type, digest))
}

/// An image config body, parsed as `resolve` parses the config blob.
pub fn config(body: &[u8]) -> Result<(), Error> {
    let r = Reference {
        registry: "registry.invalid".to_owned(),
        repository: "fuzz".to_owned(),
        tag: Some("latest".to_owned()),
        digest: None,
    };
    parse_config(body, &Digest::sha256(body), &r).map(drop)
}

/// A docker `config.json` looked up for `host`: `Ok(Some(true))` credentials, `Ok(Some(false))`
/// a helper to run, `Ok(None)` nothing, `Err` the reason it does not parse.
pub fn docker_config(text: &str, host: &str) -> Result<Option<bool>, String> {
    lookup_docker_config(text, host).map(|a| match a {
        ConfigAnswer::Credentials(_) => Some(true),
        ConfigAnswer::Helper(_) => Some(false),
        ConfigAnswer::Nothing => None,
    })
}

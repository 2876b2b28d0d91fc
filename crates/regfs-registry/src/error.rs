//! The one error type of the registry client, and which of its cases are worth retrying.

use std::path::PathBuf;
use std::time::Duration;

use regfs_estargz::Digest;

/// Everything that can go wrong while talking to a registry.
///
/// Messages name the host, URL or digest involved so that a log line alone tells what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image reference that is not `host[:port]/repo[:tag][@digest]`.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference {
        /// The text given, cut to 80 characters.
        input: String,
        /// Which part is wrong.
        reason: &'static str,
    },
    /// A platform string that is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    InvalidPlatform(String),
    /// A `hosts.toml` that cannot be read or understood.
    #[error("hosts config {path}: {reason}")]
    HostsConfig {
        /// The `hosts.toml` (or the directory) concerned.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Building the HTTP client (TLS material, proxy) failed.
    #[error("http client setup for {host}: {reason}")]
    Setup {
        /// The registry or mirror, as `host[:port]`.
        host: String,
        /// What failed (a certificate file, the proxy URL, ...).
        reason: String,
    },
    /// Docker config or credential helper trouble.
    #[error("credentials for {host}: {reason}")]
    Credentials {
        /// The registry whose credentials were looked up.
        host: String,
        /// What went wrong with the config file or the helper.
        reason: String,
    },
    /// No TCP/TLS connection to the registry (or mirror) could be made.
    #[error("cannot reach registry {host}: {source}")]
    Connect {
        /// The registry or mirror, as `host[:port]`.
        host: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The request was sent but failed on the wire: timeout, reset, truncated body.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry refused our credentials, or wants credentials we do not have.
    #[error("authentication failed for {host}: {reason}")]
    Unauthorized {
        /// The registry or mirror, as `host[:port]`.
        host: String,
        /// The status or challenge that refused us.
        reason: String,
    },
    /// The token endpoint answered with something that is not a token.
    #[error("token endpoint {realm}: {reason}")]
    Token {
        /// The token endpoint (the challenge's `realm`).
        realm: String,
        /// What was wrong with its reply.
        reason: String,
    },
    /// 404 from the registry.
    #[error("not found: {url}")]
    NotFound {
        /// The URL requested.
        url: String,
    },
    /// Any other unexpected HTTP status.
    #[error("unexpected status {status} from {url}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the reply body (registries explain errors there).
        body: String,
        /// The delay the server asked for with `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// Content whose sha256 is not the digest it was asked for by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was fetched (manifest, blob) and from where.
        what: String,
        /// The digest it was asked for by.
        expected: Digest,
        /// The sha256 of the bytes received.
        actual: Digest,
    },
    /// A body larger than the bound this client accepts for its kind.
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge {
        /// What the body is (manifest, config, token reply, ...).
        what: String,
        /// The bound it exceeds, in bytes.
        limit: u64,
    },
    /// A manifest, index or config that does not parse.
    #[error("bad {what}: {reason}")]
    BadManifest {
        /// Which document (manifest, index or config) of which image.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// No manifest of an index fits the wanted platform.
    #[error("no manifest in index {reference} matches platform {platform}")]
    NoMatchingPlatform {
        /// The image reference whose index was searched.
        reference: String,
        /// The platform wanted, as `os/arch[/variant]`.
        platform: String,
    },
    /// A 206 reply whose Content-Range or multipart body does not answer the request.
    #[error("bad range reply from {url}: {reason}")]
    BadRangeReply {
        /// The URL requested.
        url: String,
        /// What does not match the request.
        reason: String,
    },
    /// The body ended before the announced or requested number of bytes.
    #[error("short body from {url}: expected {expected} bytes, got {got}")]
    ShortBody {
        /// The URL requested.
        url: String,
        /// Bytes announced or requested.
        expected: u64,
        /// Bytes received before the body ended.
        got: u64,
    },
    /// A byte range that is empty-inverted or reaches past the blob.
    #[error("invalid range {start}..{end} for blob {digest}")]
    InvalidRange {
        /// The blob the range was asked of.
        digest: Digest,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
    },
    /// The registry kept redirecting.
    #[error("too many redirects starting at {url}")]
    TooManyRedirects {
        /// The URL first requested.
        url: String,
    },
    /// A registry reply that breaks the distribution protocol (missing Location, bad header).
    #[error("protocol error from {url}: {reason}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// What the reply got wrong.
        reason: String,
    },
    /// A ranged read did not finish within its deadline (a server trickling its body).
    #[error("range read from {url} took longer than its {after:?} deadline")]
    Deadline {
        /// The registry URL of the blob.
        url: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The caller's writer failed while streaming a blob.
    #[error("writing blob {digest}: {source}")]
    Write {
        /// The blob being streamed.
        digest: Digest,
        /// The writer's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether repeating the same request may succeed: connection trouble, 429 and 5xx (but 501,
    /// which says the server will never do it), truncated or too slow bodies.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Transport { .. }
            | Error::ShortBody { .. }
            | Error::Deadline { .. } => true,
            Error::Status { status, .. } => {
                *status == 429 || (*status >= 500 && *status != 501 && *status < 600)
            }
            _ => false,
        }
    }

    /// The delay the server asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

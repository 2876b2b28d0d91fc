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
    InvalidReference { input: String, reason: &'static str },
    /// A platform string that is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    InvalidPlatform(String),
    /// A `hosts.toml` that cannot be read or understood.
    #[error("hosts config {path}: {reason}")]
    HostsConfig { path: PathBuf, reason: String },
    /// Building the HTTP client (TLS material, proxy) failed.
    #[error("http client setup for {host}: {reason}")]
    Setup { host: String, reason: String },
    /// Docker config or credential helper trouble.
    #[error("credentials for {host}: {reason}")]
    Credentials { host: String, reason: String },
    /// No TCP/TLS connection to the registry (or mirror) could be made.
    #[error("cannot reach registry {host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    /// The request was sent but failed on the wire: timeout, reset, truncated body.
    #[error("request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The registry refused our credentials, or wants credentials we do not have.
    #[error("authentication failed for {host}: {reason}")]
    Unauthorized { host: String, reason: String },
    /// The token endpoint answered with something that is not a token.
    #[error("token endpoint {realm}: {reason}")]
    Token { realm: String, reason: String },
    /// 404 from the registry.
    #[error("not found: {url}")]
    NotFound { url: String },
    /// Any other unexpected HTTP status.
    #[error("unexpected status {status} from {url}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    /// Content whose sha256 is not the digest it was asked for by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// A body larger than the bound this client accepts for its kind.
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: u64 },
    /// A manifest, index or config that does not parse.
    #[error("bad {what}: {reason}")]
    BadManifest { what: String, reason: String },
    /// No manifest of an index fits the wanted platform.
    #[error("no manifest in index {reference} matches platform {platform}")]
    NoMatchingPlatform { reference: String, platform: String },
    /// A 206 reply whose Content-Range or multipart body does not answer the request.
    #[error("bad range reply from {url}: {reason}")]
    BadRangeReply { url: String, reason: String },
    /// The body ended before the announced or requested number of bytes.
    #[error("short body from {url}: expected {expected} bytes, got {got}")]
    ShortBody {
        url: String,
        expected: u64,
        got: u64,
    },
    /// A byte range that is empty-inverted or reaches past the blob.
    #[error("invalid range {start}..{end} for blob {digest}")]
    InvalidRange {
        digest: Digest,
        start: u64,
        end: u64,
    },
    /// The registry kept redirecting.
    #[error("too many redirects starting at {url}")]
    TooManyRedirects { url: String },
    /// A registry reply that breaks the distribution protocol (missing Location, bad header).
    #[error("protocol error from {url}: {reason}")]
    Protocol { url: String, reason: String },
    /// The caller's writer failed while streaming a blob.
    #[error("writing blob {digest}: {source}")]
    Write {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether repeating the same request may succeed: connection trouble, 429 and 5xx (but 501,
    /// which says the server will never do it), truncated bodies.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Transport { .. } | Error::ShortBody { .. } => true,
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

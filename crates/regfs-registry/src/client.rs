//! The client and its request engine: endpoints, auth, redirects, retries.
//!
//! Every registry operation is one small "attempt" function that sends requests through
//! [`Client::send`] and reads the reply. Around it:
//!
//! ```text
//! operation ──▶ for each host (mirrors in hosts.toml order, origin last)
//!                 └─▶ retry with exponential backoff + jitter (connection errors, 429, 5xx ≠ 501,
//!                     truncated bodies; Retry-After honoured up to a cap)
//!                       └─▶ attempt ──▶ send: auth header from the cached challenge/token
//!                                          ├─ 401 → learn the challenge, fetch a fresh token, resend once
//!                                          └─ 30x → follow by hand (auth dropped across origins)
//! ```
//!
//! Challenges are remembered per host and tokens per (host, scope) until their `expires_in`, so
//! a steady stream of range reads costs one request each. A token that expires mid-stream shows
//! up as a 401 and is replaced transparently.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION};
use http::{Method, StatusCode};
use regfs_estargz::Digest;
use url::Url;

use crate::auth::{
    Challenge, Credentials, Keychain, TokenReply, docker_config_dir, docker_credentials,
    parse_challenge, scope_repository,
};
use crate::hosts::{Capabilities, HostSpec, host_specs};
use crate::{Error, Platform};

/// Redirect chains longer than this are loops (registries use one hop to object storage).
const MAX_REDIRECTS: usize = 5;

/// Token replies are small JSON; anything larger is not a token endpoint.
const MAX_TOKEN_REPLY: u64 = 1024 * 1024;

/// How much of an error body is kept for the error message.
const MAX_ERROR_BODY: usize = 512;

/// `expires_in` when the token endpoint gives none (the docker token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A token is replaced this long before its announced expiry, so that a request does not leave
/// with a token that dies on the way.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// The slowest transfer a ranged read is allowed before its deadline cuts it off, in bytes per
/// second. The idle timeout alone never fires on a server that sends a byte now and then (a slow
/// loris, or a CDN edge stuck behind a dying origin); 64 KiB/s still moves a 4 MiB chunk in about
/// a minute, far below any link worth lazily pulling over.
pub const MIN_RANGE_RATE: u64 = 64 * 1024;

/// OAuth2 `client_id` sent with token POSTs (some endpoints require one).
const OAUTH_CLIENT_ID: &str = "regfs";

/// How retries are spaced.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retry).
    pub max_retries: usize,
    /// First backoff delay; doubles each retry, with jitter.
    pub min_delay: Duration,
    /// Cap of one backoff delay.
    pub max_delay: Duration,
    /// Cap of a server's `Retry-After`, so that a hostile server cannot park us for hours.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Everything a [`Client`] needs to know.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// containerd-style `certs.d` directory with `<host>/hosts.toml` files.
    pub hosts_dir: Option<PathBuf>,
    /// `host[:port]`s the origin of which is reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// HTTP(S) proxy URL for every request (e.g. a Dragonfly dfdaemon).
    pub proxy: Option<String>,
    /// Platform picked out of indexes; `None` = [`Platform::host`].
    pub platform: Option<Platform>,
    /// Connect timeout, idle-read timeout, and whole-request timeout of small requests. A ranged
    /// blob read gets this plus its length at [`MIN_RANGE_RATE`] as its deadline.
    pub request_timeout: Duration,
    /// How failed requests are retried (attempts, backoff, `Retry-After` cap).
    pub retry: RetryPolicy,
    /// `User-Agent` header of every request; default `regfs/<version>`.
    pub user_agent: String,
    /// Credentials handed over at run time, by host and repository; they win over every other
    /// source (see [`Keychain`]).
    pub keychain: Option<Arc<dyn Keychain>>,
    /// Explicit credentials by registry `host[:port]` (`docker.io` for Docker Hub); they win over
    /// the docker config.
    pub credentials: HashMap<String, Credentials>,
    /// Directory of docker's `config.json`; `None` = `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Blobs up to this size are pushed with one PUT; larger ones in PATCH chunks of this size.
    pub push_chunk_size: usize,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            hosts_dir: None,
            insecure_registries: Vec::new(),
            proxy: None,
            platform: None,
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            user_agent: concat!("regfs/", env!("CARGO_PKG_VERSION")).to_owned(),
            keychain: None,
            credentials: HashMap::new(),
            docker_config_dir: None,
            // Distribution buffers a chunk per PATCH in memory; 16 MiB keeps that modest while
            // making the per-request overhead negligible.
            push_chunk_size: 16 * 1024 * 1024,
        }
    }
}

/// Counters since the client was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// HTTP requests sent, token requests included.
    pub requests: u64,
    /// Body bytes received.
    pub bytes_received: u64,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Bearer tokens requested.
    pub token_fetches: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes_received: AtomicU64,
    retries: AtomicU64,
    token_fetches: AtomicU64,
}

/// One host requests can go to, with its own HTTP client (TLS settings) and headers.
pub(crate) struct Endpoint {
    pub spec: HostSpec,
    pub http: reqwest::Client,
    headers: HeaderMap,
    /// `host[:port]` of the API root: the key for challenges and tokens.
    pub authority: String,
    /// Key for credentials: the registry name for the origin, the mirror's authority otherwise.
    cred_host: String,
    /// Cleared once the host answers a multi-range request with anything but byte ranges.
    pub multi_range: AtomicBool,
}

impl Endpoint {
    /// `<api_root>/<repo>/<tail>`.
    pub(crate) fn url(&self, repo: &str, tail: &str) -> Result<Url, Error> {
        let s = format!(
            "{}/{repo}/{tail}",
            self.spec.api_root.as_str().trim_end_matches('/')
        );
        Url::parse(&s).map_err(|e| Error::Protocol {
            url: s.clone(),
            reason: e.to_string(),
        })
    }
}

/// (host authority, space-joined scopes).
type TokenKey = (String, String);

struct Token {
    value: String,
    renew_at: Instant,
}

/// TLS-relevant settings of a host; hosts with equal keys share one HTTP client (and pool).
#[derive(Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    skip_verify: bool,
    ca: Vec<PathBuf>,
    client: Vec<(PathBuf, Option<PathBuf>)>,
}

struct Inner {
    cfg: ClientConfig,
    http: Mutex<HashMap<TlsKey, reqwest::Client>>,
    endpoints: Mutex<HashMap<String, Arc<[Arc<Endpoint>]>>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<TokenKey, Token>>,
    /// One token fetch at a time per (host, scope): concurrent cold reads share its result.
    token_fetches: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>>,
    credentials: tokio::sync::Mutex<HashMap<String, Option<Credentials>>>,
    /// Where a blob GET was last redirected to, by (API root + repo, digest).
    redirects: Mutex<HashMap<(String, Digest), Url>>,
    counters: Counters,
}

/// An OCI distribution client. Cheap to clone; clones share connections, tokens and counters.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// One request as [`Client::send`] takes it.
pub(crate) struct Req<'a> {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Token scopes, e.g. `repository:a/b:pull`.
    pub scopes: &'a [String],
    /// Bound the whole exchange by the request timeout (not for blob bodies, which may be big).
    pub whole_timeout: bool,
}

impl<'a> Req<'a> {
    pub(crate) fn new(method: Method, url: Url, scopes: &'a [String]) -> Req<'a> {
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scopes,
            whole_timeout: true,
        }
    }

    pub(crate) fn header(mut self, name: HeaderName, value: &str) -> Req<'a> {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

/// `repository:<repo>:pull`.
pub(crate) fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// `repository:<repo>:pull,push`.
pub(crate) fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

fn authority(url: &Url) -> String {
    url[url::Position::BeforeHost..url::Position::AfterPort].to_owned()
}

impl Client {
    /// A client for `cfg`. Fails on a bad proxy URL; hosts.toml files are read at first use of
    /// each registry.
    pub fn new(cfg: ClientConfig) -> Result<Client, Error> {
        if let Some(p) = &cfg.proxy {
            reqwest::Proxy::all(p).map_err(|e| Error::Setup {
                host: p.clone(),
                reason: format!("bad proxy: {e}"),
            })?;
        }
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                http: Mutex::default(),
                endpoints: Mutex::default(),
                challenges: Mutex::default(),
                tokens: Mutex::default(),
                token_fetches: Mutex::default(),
                credentials: tokio::sync::Mutex::default(),
                redirects: Mutex::default(),
                counters: Counters::default(),
            }),
        })
    }

    /// Request counters so far.
    pub fn stats(&self) -> RequestStats {
        let c = &self.inner.counters;
        RequestStats {
            requests: c.requests.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            token_fetches: c.token_fetches.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Opens up to `connections` connections to the first host of `registry` ahead of use, each
    /// by a `GET /v2/` whose status is ignored, so that the requests sent in parallel next find
    /// idle pooled connections instead of each paying a TCP (and TLS) handshake: a round trip
    /// saved when a mount reads all its layer TOCs at once. Best effort: failures are ignored
    /// (the real requests will report them).
    pub async fn warm_up(&self, registry: &str, connections: usize) {
        let Ok(eps) = self.endpoints(registry) else {
            return;
        };
        let Some(ep) = eps.first() else {
            return;
        };
        let url = format!("{}/", ep.spec.api_root.as_str().trim_end_matches('/'));
        let pings = (0..connections).map(|_| {
            let (http, url) = (ep.http.clone(), url.clone());
            let counters = &self.inner.counters;
            async move {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                if let Ok(resp) = http.get(&url).send().await
                    && let Ok(body) = resp.bytes().await
                {
                    counters
                        .bytes_received
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                }
            }
        });
        futures::future::join_all(pings).await;
    }

    /// The hosts of `registry`, mirrors first, origin last.
    pub(crate) fn endpoints(&self, registry: &str) -> Result<Arc<[Arc<Endpoint>]>, Error> {
        if let Some(e) = lock(&self.inner.endpoints).get(registry) {
            return Ok(e.clone());
        }
        let cfg = &self.inner.cfg;
        let specs = host_specs(registry, cfg.hosts_dir.as_deref(), &cfg.insecure_registries)?;
        let mut eps = Vec::with_capacity(specs.len());
        for spec in specs {
            let http = self.http_for(&spec)?;
            let mut headers = HeaderMap::new();
            for (k, v) in &spec.headers {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| Error::Setup {
                    host: spec.api_root.to_string(),
                    reason: format!("header name {k:?}: {e}"),
                })?;
                let value = HeaderValue::from_str(v).map_err(|e| Error::Setup {
                    host: spec.api_root.to_string(),
                    reason: format!("header {k:?} value: {e}"),
                })?;
                headers.append(name, value);
            }
            let authority = authority(&spec.api_root);
            let cred_host = if spec.is_origin {
                registry.to_owned()
            } else {
                authority.clone()
            };
            eps.push(Arc::new(Endpoint {
                spec,
                http,
                headers,
                authority,
                cred_host,
                multi_range: AtomicBool::new(true),
            }));
        }
        let eps: Arc<[Arc<Endpoint>]> = eps.into();
        lock(&self.inner.endpoints).insert(registry.to_owned(), eps.clone());
        Ok(eps)
    }

    fn http_for(&self, spec: &HostSpec) -> Result<reqwest::Client, Error> {
        let key = TlsKey {
            skip_verify: spec.skip_verify,
            ca: spec.ca.clone(),
            client: spec.client.clone(),
        };
        if let Some(c) = lock(&self.inner.http).get(&key) {
            return Ok(c.clone());
        }
        let cfg = &self.inner.cfg;
        let setup = |reason: String| Error::Setup {
            host: spec.api_root.to_string(),
            reason,
        };
        let mut b = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.request_timeout)
            .read_timeout(cfg.request_timeout);
        b = match &cfg.proxy {
            Some(p) => {
                b.proxy(reqwest::Proxy::all(p).map_err(|e| setup(format!("bad proxy: {e}")))?)
            }
            None => b.no_proxy(),
        };
        if key.skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        let mut roots = Vec::new();
        for ca in &key.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(format!("reading ca {}: {e}", ca.display())))?;
            roots.extend(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| setup(format!("ca {}: {e}", ca.display())))?,
            );
        }
        if !roots.is_empty() {
            b = b.tls_certs_merge(roots);
        }
        if let Some((cert, keyfile)) = key.client.first() {
            let mut pem = std::fs::read(cert)
                .map_err(|e| setup(format!("reading client cert {}: {e}", cert.display())))?;
            if let Some(k) = keyfile {
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(k)
                        .map_err(|e| setup(format!("reading client key {}: {e}", k.display())))?,
                );
            }
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| setup(format!("client cert {}: {e}", cert.display())))?;
            b = b.identity(id);
        }
        let client = b.build().map_err(|e| setup(e.to_string()))?;
        lock(&self.inner.http).insert(key, client.clone());
        Ok(client)
    }

    /// Runs `op` on each host allowed by `cap` (mirrors first), with retries on each; the first
    /// success wins. A failing mirror is logged and skipped; the origin's error is final.
    pub(crate) async fn on_hosts<T, F, Fut>(
        &self,
        registry: &str,
        cap: fn(&Capabilities) -> bool,
        mut op: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let eps = self.endpoints(registry)?;
        let mut last = None;
        for ep in eps.iter().filter(|e| cap(&e.spec.capabilities)) {
            match self.retrying(|| op(ep.clone())).await {
                Ok(v) => return Ok(v),
                Err(e) if !ep.spec.is_origin => {
                    tracing::warn!(mirror = %ep.spec.api_root, error = %e, "mirror failed, trying next host");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Setup {
            host: registry.to_owned(),
            reason: "no configured host has the capability this operation needs".into(),
        }))
    }

    /// The first host allowed to take pushes.
    pub(crate) fn push_host(&self, registry: &str) -> Result<Arc<Endpoint>, Error> {
        self.endpoints(registry)?
            .iter()
            .find(|e| e.spec.capabilities.push)
            .cloned()
            .ok_or_else(|| Error::Setup {
                host: registry.to_owned(),
                reason: "no configured host has the push capability".into(),
            })
    }

    /// Runs one ranged read of `bytes` bytes under its deadline: the request timeout plus the time
    /// the bytes take at [`MIN_RANGE_RATE`]. Per request, not per byte: a body that trickles in
    /// never trips the idle timeout, but it does trip this, and the read is retried.
    pub(crate) async fn within_deadline<T>(
        &self,
        url: &Url,
        bytes: u64,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let after = self
            .inner
            .cfg
            .request_timeout
            .saturating_add(Duration::from_secs(bytes / MIN_RANGE_RATE + 1));
        match tokio::time::timeout(after, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Deadline {
                url: url.to_string(),
                after,
            }),
        }
    }

    /// Repeats `op` while it fails with a retryable error and the policy allows.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut delays = self.backoff();
        loop {
            match op().await {
                Err(e) if e.is_retryable() => match self.next_delay(&mut delays, &e) {
                    Some(d) => tokio::time::sleep(d).await,
                    None => return Err(e),
                },
                r => return r,
            }
        }
    }

    pub(crate) fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let p = &self.inner.cfg.retry;
        ExponentialBuilder::default()
            .with_min_delay(p.min_delay)
            .with_max_delay(p.max_delay)
            .with_max_times(p.max_retries)
            .with_jitter()
            .build()
    }

    /// The wait before the next retry after `err`, or `None` when retries are used up.
    pub(crate) fn next_delay(
        &self,
        delays: &mut impl Iterator<Item = Duration>,
        err: &Error,
    ) -> Option<Duration> {
        let d = delays.next()?;
        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        let d = err
            .retry_after()
            .map_or(d, |ra| ra.min(self.inner.cfg.retry.max_retry_after));
        tracing::debug!(error = %err, delay = ?d, "retrying");
        Some(d)
    }

    /// Sends one request with auth, answering a 401 once with fresh credentials and following
    /// redirects of GET/HEAD by hand. Returns the response and the URL that produced it.
    pub(crate) async fn send(
        &self,
        ep: &Endpoint,
        req: Req<'_>,
    ) -> Result<(reqwest::Response, Url), Error> {
        let mut answered_challenge = false;
        loop {
            let auth = self.auth_header(ep, req.scopes).await?;
            let resp = self
                .send_raw(ep, &req, req.url.clone(), auth.as_ref(), req.body.clone())
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                if answered_challenge || auth.is_some() && !self.renewable(ep) {
                    let body = error_body(resp).await;
                    return Err(Error::Unauthorized {
                        host: ep.authority.clone(),
                        reason: match auth {
                            Some(_) => format!("credentials rejected: {body}"),
                            None => format!("access denied anonymously: {body}"),
                        },
                    });
                }
                answered_challenge = true;
                self.learn_challenge(ep, &resp, req.scopes, auth.as_ref())
                    .await?;
                continue;
            }
            if resp.status().is_redirection() && matches!(req.method, Method::GET | Method::HEAD) {
                return self.follow(ep, &req, resp).await;
            }
            return Ok((resp, req.url));
        }
    }

    /// Whether a 401 on an authenticated request may be cured by a new token (bearer), as
    /// opposed to fixed Basic credentials that will fail again.
    fn renewable(&self, ep: &Endpoint) -> bool {
        matches!(
            lock(&self.inner.challenges).get(&ep.authority),
            Some(Challenge::Bearer { .. })
        )
    }

    async fn learn_challenge(
        &self,
        ep: &Endpoint,
        resp: &reqwest::Response,
        scopes: &[String],
        sent: Option<&HeaderValue>,
    ) -> Result<(), Error> {
        let challenge = resp
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge)
            .ok_or_else(|| Error::Unauthorized {
                host: ep.authority.clone(),
                reason: "401 without a Basic or Bearer WWW-Authenticate challenge".into(),
            })?;
        if challenge == Challenge::Basic
            && !matches!(
                self.credentials_for(ep, scopes).await?,
                Some(Credentials::UserPassword { .. })
            )
        {
            return Err(Error::Unauthorized {
                host: ep.authority.clone(),
                reason: "registry wants basic auth and no username/password is configured".into(),
            });
        }
        lock(&self.inner.challenges).insert(ep.authority.clone(), challenge);
        // Drop the cached token only if it is the one just refused: a concurrent request may
        // already have replaced it with a fresh one.
        let key = (ep.authority.clone(), scopes.join(" "));
        let mut tokens = lock(&self.inner.tokens);
        let refused = tokens.get(&key).is_some_and(|t| {
            sent.and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                == Some(t.value.as_str())
        });
        if refused {
            tokens.remove(&key);
        }
        Ok(())
    }

    async fn send_raw(
        &self,
        ep: &Endpoint,
        req: &Req<'_>,
        url: Url,
        auth: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, Error> {
        let mut b = ep
            .http
            .request(req.method.clone(), url.clone())
            .headers(ep.headers.clone())
            .headers(req.headers.clone());
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a.clone());
        }
        if let Some(body) = body {
            b = b.body(body);
        }
        if req.whole_timeout {
            b = b.timeout(self.inner.cfg.request_timeout);
        }
        self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        b.send().await.map_err(|e| self.wire_error(&url, e))
    }

    pub(crate) fn wire_error(&self, url: &Url, e: reqwest::Error) -> Error {
        if e.is_connect() {
            Error::Connect {
                host: authority(url),
                source: e,
            }
        } else {
            Error::Transport {
                url: url.to_string(),
                source: e,
            }
        }
    }

    async fn follow(
        &self,
        ep: &Endpoint,
        req: &Req<'_>,
        mut resp: reqwest::Response,
    ) -> Result<(reqwest::Response, Url), Error> {
        let mut url = req.url.clone();
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                return Ok((resp, url));
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| Error::Protocol {
                    url: url.to_string(),
                    reason: format!("{} without a usable Location", resp.status()),
                })?;
            // Credentials are for the registry only; a pre-signed object-store URL carries its
            // own, and would reject (or leak) ours.
            let auth = if next.origin() == req.url.origin() {
                self.auth_header(ep, req.scopes).await?
            } else {
                None
            };
            resp = self
                .send_raw(ep, req, next.clone(), auth.as_ref(), None)
                .await?;
            url = next;
        }
        if resp.status().is_redirection() {
            return Err(Error::TooManyRedirects {
                url: req.url.to_string(),
            });
        }
        Ok((resp, url))
    }

    /// Sends a GET to an already known URL (a cached redirect target) without auth.
    pub(crate) async fn send_plain(
        &self,
        ep: &Endpoint,
        url: Url,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, Error> {
        let req = Req {
            method: Method::GET,
            url: url.clone(),
            headers,
            body: None,
            scopes: &[],
            whole_timeout: false,
        };
        self.send_raw(ep, &req, url, None, None).await
    }

    pub(crate) fn cached_redirect(&self, key: &(String, Digest)) -> Option<Url> {
        lock(&self.inner.redirects).get(key).cloned()
    }

    pub(crate) fn set_redirect(&self, key: (String, Digest), url: Option<Url>) {
        let mut m = lock(&self.inner.redirects);
        match url {
            Some(u) => m.insert(key, u),
            None => m.remove(&key),
        };
    }

    /// The Authorization header for a request to `ep`, from what its last challenge asked for.
    async fn auth_header(
        &self,
        ep: &Endpoint,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, Error> {
        let challenge = lock(&self.inner.challenges).get(&ep.authority).cloned();
        let value = match challenge {
            None => return Ok(None),
            Some(Challenge::Basic) => match self.credentials_for(ep, scopes).await? {
                Some(Credentials::UserPassword { username, password }) => {
                    basic(&username, &password)
                }
                _ => return Ok(None),
            },
            Some(Challenge::Bearer { realm, service }) => {
                let key = (ep.authority.clone(), scopes.join(" "));
                let token = match self.cached_token(&key) {
                    Some(t) => t,
                    None => {
                        let gate = lock(&self.inner.token_fetches)
                            .entry(key.clone())
                            .or_default()
                            .clone();
                        let _turn = gate.lock().await;
                        // Whoever held the gate before us may have fetched it already.
                        match self.cached_token(&key) {
                            Some(t) => t,
                            None => {
                                let t = self
                                    .fetch_token(ep, &realm, service.as_deref(), scopes)
                                    .await?;
                                let value = t.value.clone();
                                lock(&self.inner.tokens).insert(key, t);
                                value
                            }
                        }
                    }
                };
                format!("Bearer {token}")
            }
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| Error::Unauthorized {
            host: ep.authority.clone(),
            reason: "credentials or token contain characters not allowed in a header".into(),
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    fn cached_token(&self, key: &TokenKey) -> Option<String> {
        lock(&self.inner.tokens)
            .get(key)
            .filter(|t| Instant::now() < t.renew_at)
            .map(|t| t.value.clone())
    }

    /// The credentials for a request to `ep` with token `scopes` (whose first names the
    /// repository the keychain is asked about).
    pub(crate) async fn credentials_for(
        &self,
        ep: &Endpoint,
        scopes: &[String],
    ) -> Result<Option<Credentials>, Error> {
        if let (Some(keychain), Some(repo)) = (&self.inner.cfg.keychain, scope_repository(scopes))
            && let Some(c) = keychain.credentials(&ep.cred_host, repo)
        {
            return Ok(Some(c));
        }
        if let Some(c) = self.inner.cfg.credentials.get(&ep.cred_host) {
            return Ok(Some(c.clone()));
        }
        let mut cache = self.inner.credentials.lock().await;
        if let Some(c) = cache.get(&ep.cred_host) {
            return Ok(c.clone());
        }
        let found = match docker_config_dir(self.inner.cfg.docker_config_dir.as_deref()) {
            Some(dir) => docker_credentials(&dir, &ep.cred_host).await?,
            None => None,
        };
        cache.insert(ep.cred_host.clone(), found.clone());
        Ok(found)
    }

    /// The docker token flow: OAuth2 POST (password or refresh_token grant) when we have
    /// credentials, falling back to GET with Basic when the endpoint has no POST support;
    /// anonymous GET otherwise.
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Token, Error> {
        self.inner
            .counters
            .token_fetches
            .fetch_add(1, Ordering::Relaxed);
        let realm_url = Url::parse(realm).map_err(|e| Error::Token {
            realm: realm.to_owned(),
            reason: format!("realm is not a URL: {e}"),
        })?;
        if !matches!(realm_url.scheme(), "http" | "https") {
            return Err(Error::Token {
                realm: realm.to_owned(),
                reason: "realm is not http(s)".into(),
            });
        }
        let creds = self.credentials_for(ep, scopes).await?;
        let reply = match &creds {
            Some(Credentials::UserPassword { username, password }) => {
                let form = [
                    ("grant_type", "password"),
                    ("username", username.as_str()),
                    ("password", password.as_str()),
                ];
                match self
                    .token_post(ep, &realm_url, service, scopes, &form)
                    .await?
                {
                    Some(r) => r,
                    None => {
                        self.token_get(ep, &realm_url, service, scopes, Some((username, password)))
                            .await?
                    }
                }
            }
            Some(Credentials::IdentityToken(rt)) => {
                let form = [
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                ];
                self.token_post(ep, &realm_url, service, scopes, &form)
                    .await?
                    .ok_or_else(|| Error::Unauthorized {
                        host: ep.authority.clone(),
                        reason: format!("token endpoint {realm} refused the identity token"),
                    })?
            }
            None => {
                self.token_get(ep, &realm_url, service, scopes, None)
                    .await?
            }
        };
        let value = reply.bearer().ok_or_else(|| Error::Token {
            realm: realm.to_owned(),
            reason: "reply has neither token nor access_token".into(),
        })?;
        let lifetime = reply
            .expires_in
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let lifetime = lifetime
            .checked_sub(TOKEN_EXPIRY_MARGIN)
            .filter(|l| !l.is_zero())
            .unwrap_or(lifetime / 2);
        if let (Some(rt), Some(Credentials::IdentityToken(_))) = (&reply.refresh_token, &creds) {
            tracing::debug!(
                len = rt.len(),
                "token endpoint rotated the refresh token; keeping ours"
            );
        }
        Ok(Token {
            value: value.to_owned(),
            renew_at: Instant::now() + lifetime,
        })
    }

    /// `Ok(None)` when the endpoint does not do OAuth2 POST (400/401/404/405).
    async fn token_post(
        &self,
        ep: &Endpoint,
        realm: &Url,
        service: Option<&str>,
        scopes: &[String],
        grant: &[(&str, &str)],
    ) -> Result<Option<TokenReply>, Error> {
        // The serializer is not Send; finish it before any await.
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.extend_pairs(grant.iter().copied());
            form.append_pair("client_id", OAUTH_CLIENT_ID);
            if let Some(s) = service {
                form.append_pair("service", s);
            }
            if !scopes.is_empty() {
                form.append_pair("scope", &scopes.join(" "));
            }
            form.finish()
        };
        self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = ep
            .http
            .post(realm.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .timeout(self.inner.cfg.request_timeout)
            .send()
            .await
            .map_err(|e| self.wire_error(realm, e))?;
        match resp.status().as_u16() {
            400 | 401 | 404 | 405 => Ok(None),
            _ => Ok(Some(self.token_reply(resp, realm).await?)),
        }
    }

    async fn token_get(
        &self,
        ep: &Endpoint,
        realm: &Url,
        service: Option<&str>,
        scopes: &[String],
        basic_auth: Option<(&String, &String)>,
    ) -> Result<TokenReply, Error> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let mut b = ep
            .http
            .get(url.clone())
            .timeout(self.inner.cfg.request_timeout);
        if let Some((u, p)) = basic_auth {
            b = b.header(AUTHORIZATION, basic(u, p));
        }
        self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = b.send().await.map_err(|e| self.wire_error(&url, e))?;
        if matches!(resp.status().as_u16(), 401 | 403) {
            return Err(Error::Unauthorized {
                host: ep.authority.clone(),
                reason: match basic_auth {
                    Some((u, _)) => {
                        format!("token endpoint {realm} rejected the credentials of {u:?}")
                    }
                    None => format!("token endpoint {realm} refused an anonymous token"),
                },
            });
        }
        self.token_reply(resp, realm).await
    }

    async fn token_reply(&self, resp: reqwest::Response, realm: &Url) -> Result<TokenReply, Error> {
        let resp = self.check(resp, realm).await?;
        let body = self
            .read_body(resp, realm, MAX_TOKEN_REPLY, "token reply")
            .await?;
        serde_json::from_slice(&body).map_err(|e| Error::Token {
            realm: realm.to_string(),
            reason: format!("reply is not token JSON: {e}"),
        })
    }

    /// Turns non-2xx replies into errors (404 → NotFound, others with Retry-After and a body
    /// excerpt).
    pub(crate) async fn check(
        &self,
        resp: reqwest::Response,
        url: &Url,
    ) -> Result<reqwest::Response, Error> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::NOT_FOUND {
            return Err(Error::NotFound {
                url: url.to_string(),
            });
        }
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Error::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body: error_body(resp).await,
            retry_after,
        })
    }

    /// Reads a whole body of at most `limit` bytes.
    pub(crate) async fn read_body(
        &self,
        mut resp: reqwest::Response,
        url: &Url,
        limit: u64,
        what: &str,
    ) -> Result<Bytes, Error> {
        let too_large = || Error::TooLarge {
            what: format!("{what} from {url}"),
            limit,
        };
        let announced = resp.content_length();
        if announced.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut buf = BytesMut::with_capacity(announced.unwrap_or(0).min(limit) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.wire_error(url, e))? {
            self.count_bytes(chunk.len());
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        if let Some(n) = announced.filter(|n| (buf.len() as u64) < *n) {
            return Err(Error::ShortBody {
                url: url.to_string(),
                expected: n,
                got: buf.len() as u64,
            });
        }
        Ok(buf.freeze())
    }

    /// Reads exactly the first `n` bytes of a body and drops the rest of the response.
    pub(crate) async fn read_prefix(
        &self,
        mut resp: reqwest::Response,
        url: &Url,
        n: u64,
    ) -> Result<Bytes, Error> {
        let want = usize::try_from(n).map_err(|_| Error::TooLarge {
            what: format!("range of {url}"),
            limit: usize::MAX as u64,
        })?;
        // Do not trust the server for the allocation size; grow as bytes arrive.
        let mut buf = BytesMut::with_capacity(want.min(8 * 1024 * 1024));
        while buf.len() < want {
            match resp.chunk().await.map_err(|e| self.wire_error(url, e))? {
                Some(chunk) => {
                    self.count_bytes(chunk.len());
                    let take = chunk.len().min(want - buf.len());
                    buf.extend_from_slice(&chunk[..take]);
                }
                None => {
                    return Err(Error::ShortBody {
                        url: url.to_string(),
                        expected: n,
                        got: buf.len() as u64,
                    });
                }
            }
        }
        Ok(buf.freeze())
    }

    pub(crate) fn count_bytes(&self, n: usize) {
        self.inner
            .counters
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The first bytes of an error body, for messages.
async fn error_body(resp: reqwest::Response) -> String {
    let mut resp = resp;
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// is a single map operation).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

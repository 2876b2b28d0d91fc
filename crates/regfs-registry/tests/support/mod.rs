//! Test support: a real Debian `docker-registry` on a free loopback port (anonymous, htpasswd or
//! token auth), a token server that signs JWTs with the `openssl` CLI, and a tiny hand-written
//! HTTP/1.1 server for fault injection. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use regfs_registry::{Client, ClientConfig, Digest, Reference, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// Each test binary uses a subset.
#[allow(unused_imports)]
pub use regfs_testkit::{Auth, free_port, pattern, require_tool};

/// Client config for tests: fast retries, explicit empty docker config dir.
pub fn test_config(docker_dir: &Path) -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(2),
        },
        request_timeout: Duration::from_secs(20),
        docker_config_dir: Some(docker_dir.to_owned()),
        ..ClientConfig::default()
    }
}

/// A running `docker-registry serve` (the workspace's shared harness); killed on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    _inner: regfs_testkit::Registry,
}

/// A self-signed certificate for 127.0.0.1 (IP SAN), made with the `openssl` CLI.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    require_tool("openssl", "openssl");
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req failed");
    (cert, key)
}

impl Registry {
    pub async fn start(auth: Auth) -> Registry {
        Registry::start_with(auth, None).await
    }

    /// With `tls = Some((cert, key))` the registry serves HTTPS only.
    pub async fn start_with(auth: Auth, tls: Option<(PathBuf, PathBuf)>) -> Registry {
        Registry::start_full(auth, tls, None).await
    }

    /// HTTPS that demands a client certificate issued by (here: equal to) `client_ca`.
    pub async fn start_mtls(cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> Registry {
        Registry::start_full(Auth::Anonymous, Some((cert, key)), Some(client_ca)).await
    }

    async fn start_full(
        auth: Auth,
        tls: Option<(PathBuf, PathBuf)>,
        client_ca: Option<PathBuf>,
    ) -> Registry {
        let inner = regfs_testkit::Registry::start_with(regfs_testkit::RegistryConfig {
            auth,
            tls,
            client_ca,
        });
        Registry {
            host: inner.addr.clone(),
            _inner: inner,
        }
    }

    pub fn reference(&self, repo_tag: &str) -> Reference {
        format!("{}/{repo_tag}", self.host).parse().unwrap()
    }
}

/// One parsed request as the fake server saw it.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the fake server answers.
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Announces `declared_len` bytes, sends `body` (fewer), then closes the connection.
    Cut {
        status: u16,
        headers: Vec<(String, String)>,
        declared_len: usize,
        body: Vec<u8>,
    },
    /// Announces `declared_len` bytes, sends `body` (fewer), then resets the connection (RST).
    Reset {
        status: u16,
        headers: Vec<(String, String)>,
        declared_len: usize,
        body: Vec<u8>,
    },
    /// Sends the head at once, then `body` one byte per `every`: each byte arrives well within
    /// any idle timeout, the whole body does not (a slow loris).
    Trickle {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        every: Duration,
    },
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: vec![],
            body: vec![],
        }
    }
    pub fn ok(body: Vec<u8>) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![],
            body,
        }
    }
    pub fn with(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        Reply::Full {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        }
    }
}

type Handler = dyn Fn(&HttpRequest) -> Reply + Send + Sync;

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1; stops on drop.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<HttpRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(
        handler: impl Fn(&HttpRequest) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    log.lock().unwrap().push(req.clone());
                    let reply = tokio::task::spawn_blocking(move || handler(&req))
                        .await
                        .unwrap();
                    let (mut reset, mut trickle) = (false, None);
                    let (status, headers, declared, body) = match reply {
                        Reply::Full {
                            status,
                            headers,
                            body,
                        } => (status, headers, body.len(), body),
                        Reply::Cut {
                            status,
                            headers,
                            declared_len,
                            body,
                        } => (status, headers, declared_len, body),
                        Reply::Reset {
                            status,
                            headers,
                            declared_len,
                            body,
                        } => {
                            reset = true;
                            (status, headers, declared_len, body)
                        }
                        Reply::Trickle {
                            status,
                            headers,
                            body,
                            every,
                        } => {
                            trickle = Some(every);
                            (status, headers, body.len(), body)
                        }
                    };
                    let mut head = format!(
                        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {declared}\r\n"
                    );
                    for (k, v) in headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = sock.write_all(head.as_bytes()).await;
                    if let Some(every) = trickle {
                        for b in body {
                            if sock.write_all(&[b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(every).await;
                        }
                    } else {
                        let _ = sock.write_all(&body).await;
                    }
                    if reset {
                        // SO_LINGER 0: close sends RST instead of FIN. (Deprecated because a
                        // non-zero linger blocks on drop; a zero linger does not.)
                        let _ = sock.flush().await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        #[allow(deprecated)]
                        let _ = sock.set_linger(Some(Duration::ZERO));
                        drop(sock);
                        return;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        FakeServer {
            addr,
            requests,
            task,
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(HttpRequest {
        method,
        path,
        headers,
        body,
    })
}

/// Options of [`TokenServer`].
pub struct TokenOptions {
    pub user: String,
    pub password: String,
    /// Answer OAuth2 POSTs; when false, POST gets 404 (old token servers).
    pub post: bool,
    /// How long the registry accepts a token, in seconds.
    pub lifetime: u64,
    /// The `expires_in` the replies announce (`None`: no field, the client assumes 60 s).
    pub expires_in: Option<u64>,
}

impl Default for TokenOptions {
    fn default() -> TokenOptions {
        TokenOptions {
            user: String::new(),
            password: String::new(),
            post: true,
            lifetime: 300,
            expires_in: Some(300),
        }
    }
}

/// The clock-skew allowance of distribution's token check: a token stays valid this long past
/// its `exp`. A token server that wants tokens to die after `lifetime` seconds sets `exp` this
/// much earlier.
pub const REGISTRY_TOKEN_LEEWAY: u64 = 60;

/// A docker token server: GET with Basic, POST password and refresh_token grants; JWTs signed
/// with a throwaway RSA key through the `openssl` CLI, the certificate in `x5c`.
pub struct TokenServer {
    pub server: FakeServer,
    pub cert: PathBuf,
    pub posts: Arc<AtomicUsize>,
    pub refresh_posts: Arc<AtomicUsize>,
    pub gets: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

pub const TOKEN_SERVICE: &str = "regfs-test-registry";
pub const TOKEN_ISSUER: &str = "regfs-test-issuer";

impl TokenServer {
    pub async fn start(opts: TokenOptions) -> TokenServer {
        require_tool("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("token.key");
        let cert = dir.path().join("token.crt");
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            ])
            .arg(format!("/CN={TOKEN_ISSUER}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let posts = Arc::new(AtomicUsize::new(0));
        let refresh_posts = Arc::new(AtomicUsize::new(0));
        let gets = Arc::new(AtomicUsize::new(0));
        let refresh_tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let (p, rp, g) = (posts.clone(), refresh_posts.clone(), gets.clone());
        let (lifetime, expires_in) = (opts.lifetime, opts.expires_in);
        let reply_json = move |mut v: serde_json::Value| {
            if let Some(e) = expires_in {
                v["expires_in"] = e.into();
            }
            v
        };
        let handler = move |req: &HttpRequest| -> Reply {
            let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
            if path != "/token" {
                return Reply::status(404);
            }
            let json = |v: serde_json::Value| {
                Reply::with(
                    200,
                    &[("Content-Type", "application/json")],
                    v.to_string().into_bytes(),
                )
            };
            if req.method == "POST" {
                if !opts.post {
                    return Reply::status(404);
                }
                p.fetch_add(1, Ordering::SeqCst);
                let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
                    .into_owned()
                    .collect();
                let get = |k: &str| {
                    form.iter()
                        .find(|(a, _)| a == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                match get("grant_type").as_str() {
                    "password"
                        if get("username") == opts.user && get("password") == opts.password => {}
                    "refresh_token"
                        if refresh_tokens
                            .lock()
                            .unwrap()
                            .contains(&get("refresh_token")) =>
                    {
                        rp.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return Reply::status(401),
                }
                let scopes: Vec<String> = get("scope").split(' ').map(str::to_owned).collect();
                let token = sign_jwt(&key, &x5c, &get("service"), &scopes, lifetime);
                let rt = format!("refresh-{}", refresh_tokens.lock().unwrap().len());
                refresh_tokens.lock().unwrap().push(rt.clone());
                return json(reply_json(
                    serde_json::json!({"access_token": token, "refresh_token": rt}),
                ));
            }
            g.fetch_add(1, Ordering::SeqCst);
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", opts.user, opts.password))
            );
            if req.header("authorization") != Some(want.as_str()) {
                return Reply::with(
                    401,
                    &[("WWW-Authenticate", "Basic realm=\"token\"")],
                    vec![],
                );
            }
            let q: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let service = q
                .iter()
                .find(|(k, _)| k == "service")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let scopes: Vec<String> = q
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.clone())
                .collect();
            let token = sign_jwt(&key, &x5c, &service, &scopes, lifetime);
            json(reply_json(serde_json::json!({"token": token})))
        };
        let server = FakeServer::start(handler).await;
        TokenServer {
            server,
            cert,
            posts,
            refresh_posts,
            gets,
            _dir: dir,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.host())
    }

    pub fn registry_auth(&self) -> Auth {
        Auth::Token {
            realm: self.realm(),
            service: TOKEN_SERVICE.into(),
            issuer: TOKEN_ISSUER.into(),
            cert: self.cert.clone(),
        }
    }
}

/// Makes every token distinct, so that a test can tell a renewed token from the old one.
static JTI: AtomicUsize = AtomicUsize::new(0);

fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn sign_jwt(key: &Path, x5c: &str, service: &str, scopes: &[String], lifetime: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter_map(|s| {
            let parts: Vec<&str> = s.split(':').collect();
            (parts.len() >= 3).then(|| {
                serde_json::json!({
                    "type": parts[0],
                    "name": parts[1..parts.len() - 1].join(":"),
                    "actions": parts[parts.len() - 1].split(',').collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": "test", "aud": service,
        "exp": (now + lifetime).saturating_sub(REGISTRY_TOKEN_LEEWAY), "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}-{}", scopes.len(), JTI.fetch_add(1, Ordering::SeqCst)), "access": access,
    });
    let input = format!(
        "{}.{}",
        b64u(header.to_string().as_bytes()),
        b64u(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst failed");
    format!("{input}.{}", b64u(&out.stdout))
}

/// A tiny image: config (for `arch`) plus one layer blob, pushed; returns the manifest bytes,
/// its digest and the layer.
pub async fn push_image(
    client: &Client,
    r: &Reference,
    arch: &str,
    layer: &[u8],
    with_media_type: bool,
) -> (Vec<u8>, Digest, Digest) {
    let layer_digest = Digest::sha256(layer);
    client
        .push_blob(r, &layer_digest, layer.to_vec().into())
        .await
        .unwrap();
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
    })
    .to_string();
    let config_digest = Digest::sha256(config.as_bytes());
    client
        .push_blob(r, &config_digest, config.clone().into_bytes().into())
        .await
        .unwrap();
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest.to_string(), "size": layer.len()}],
    });
    if with_media_type {
        manifest["mediaType"] = regfs_registry::MEDIA_TYPE_OCI_MANIFEST.into();
    }
    let body = manifest.to_string().into_bytes();
    let d = client
        .push_manifest(
            r,
            regfs_registry::MEDIA_TYPE_OCI_MANIFEST,
            body.clone().into(),
        )
        .await
        .unwrap();
    (body, d, layer_digest)
}

/// Sends `req` to the real registry at `upstream` (HTTP/1.0, anonymous) and turns its answer
/// into a [`Reply`]: what a fault-injecting proxy in front of a registry passes through.
/// Blocking (handlers run on the blocking pool).
pub fn forward(upstream: &str, req: &HttpRequest) -> Reply {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(upstream).unwrap();
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: {upstream}\r\n",
        req.method, req.path
    );
    for name in ["range", "accept"] {
        if let Some(v) = req.header(name) {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&resp[..split]).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| {
            ["content-range", "content-type", "docker-content-digest"]
                .iter()
                .any(|h| k.eq_ignore_ascii_case(h))
        })
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply::Full {
        status,
        headers,
        body: resp[split + 4..].to_vec(),
    }
}

//! Test support: a real Debian `docker-registry` on a free loopback port (anonymous, htpasswd or
//! token auth; the token server is the testkit's), and a tiny hand-written HTTP/1.1 server for
//! fault injection. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regfs_registry::{Client, ClientConfig, Digest, Reference, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// Each test binary uses a subset.
#[allow(unused_imports)]
pub use regfs_testkit::{
    Auth, TOKEN_SERVICE, TokenOptions, TokenServer, free_port, pattern, require_tool,
};

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

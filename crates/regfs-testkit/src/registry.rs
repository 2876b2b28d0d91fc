//! A real Debian `docker-registry` (distribution 2.8) on a free 127.0.0.1 port, plus a minimal
//! HTTP/1.0 GET so that tests read manifests and blobs without trusting regfs's own client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require_tool};

/// How long a fresh registry may take to answer (it starts in well under a second).
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// How the registry authenticates clients.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// No auth.
    #[default]
    Anonymous,
    /// HTTP basic auth against a bcrypt htpasswd file (needs `htpasswd` from apache2-utils).
    Htpasswd {
        /// The user.
        user: String,
        /// Its password.
        password: String,
    },
    /// Bearer tokens from a token server.
    Token {
        /// The token server's URL.
        realm: String,
        /// The service name tokens are issued for.
        service: String,
        /// The issuer tokens must name.
        issuer: String,
        /// The certificate that signs tokens.
        cert: PathBuf,
    },
}

/// Everything about a registry a test can choose.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Client authentication.
    pub auth: Auth,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With TLS: demand client certificates issued by this CA.
    pub client_ca: Option<PathBuf>,
}

/// A running registry; killed (by PID, our own child only) on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `user:password` when started with basic auth.
    pub basic_auth: Option<(String, String)>,
    tls: bool,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An anonymous plain-HTTP registry.
    pub fn start() -> Registry {
        Registry::start_with(RegistryConfig::default())
    }

    /// A registry requiring HTTP basic auth with `user`/`password`.
    pub fn start_basic_auth(user: &str, password: &str) -> Registry {
        Registry::start_with(RegistryConfig {
            auth: Auth::Htpasswd {
                user: user.to_owned(),
                password: password.to_owned(),
            },
            ..RegistryConfig::default()
        })
    }

    /// A registry as `config` says.
    pub fn start_with(config: RegistryConfig) -> Registry {
        let bin = require_tool("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir()
            .expect("registry dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  delete:\n    enabled: true\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: regfs-test\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = &config.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            if let Some(ca) = &config.client_ca {
                yaml.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
        let mut basic_auth = None;
        match &config.auth {
            Auth::Anonymous => {}
            Auth::Htpasswd { user, password } => {
                let htpasswd = require_tool("htpasswd", "apache2-utils");
                let out = Command::new(htpasswd)
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd");
                assert!(
                    out.status.success(),
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: regfs-test\n    path: {}\n",
                    file.display()
                ));
                basic_auth = Some((user.clone(), password.clone()));
            }
            Auth::Token {
                realm,
                service,
                issuer,
                cert,
            } => yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            )),
        }
        std::fs::write(dir.path().join("config.yml"), yaml).expect("write registry config");
        let child = spawn(&bin, dir.path(), false);
        let reg = Registry {
            child,
            addr,
            basic_auth,
            tls: config.tls.is_some(),
            dir,
        };
        reg.wait_ready("start");
        reg
    }

    /// Ready when `/v2/` answers; over TLS (this probe speaks no TLS) when the port accepts.
    fn wait_ready(&self, what: &str) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            let up = if self.tls {
                TcpStream::connect(&self.addr).is_ok()
            } else {
                self.try_get("/v2/", None).is_ok()
            };
            if up {
                return;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log"))
                    .unwrap_or_default();
                panic!(
                    "docker-registry did not {what} on {}; log:\n{log}",
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port/repo_tag`, a reference to an image in this registry.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// `GET path` with an optional `Accept`, with the basic credentials if any. Returns
    /// (status, body).
    pub fn get(&self, path: &str, accept: Option<&str>) -> (u16, Vec<u8>) {
        self.try_get(path, accept)
            .unwrap_or_else(|e| panic!("GET http://{}{path}: {e}", self.addr))
    }

    fn try_get(&self, path: &str, accept: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
        let mut headers = Vec::new();
        if let Some(a) = accept {
            headers.push(("Accept", a.to_owned()));
        }
        if let Some((u, p)) = &self.basic_auth {
            use base64::Engine as _;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            headers.push(("Authorization", format!("Basic {token}")));
        }
        http_get(&self.addr, path, &headers)
    }

    /// The manifest `repo:reference` (OCI or Docker), as stored.
    pub fn manifest(&self, repo: &str, reference: &str) -> Vec<u8> {
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json";
        let (status, body) = self.get(&format!("/v2/{repo}/manifests/{reference}"), Some(accept));
        assert_eq!(
            status,
            200,
            "manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// Blob `digest` of `repo`.
    pub fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let (status, body) = self.get(&format!("/v2/{repo}/blobs/{digest}"), None);
        assert_eq!(
            status,
            200,
            "blob {repo}@{digest}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// The registry's filesystem storage root (`rootdirectory`): blobs live under
    /// `docker/registry/v2/blobs/sha256/xx/<hex>/data`.
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the registry process (its storage stays) and waits for it to be gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again on the same port with the same storage and config.
    pub fn restart(&mut self) {
        self.stop();
        let bin = require_tool("docker-registry", "docker-registry");
        self.child = spawn(&bin, self.dir.path(), true);
        self.wait_ready("restart");
    }
}

fn spawn(bin: &Path, dir: &Path, append: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(dir.join("registry.log"))
        .expect("registry log");
    Command::new(bin)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn docker-registry")
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET http://addr/path` over HTTP/1.0 with `headers`: (status, body). Independent of regfs's
/// own client, so that tests check the registry's content with something else.
pub fn http_get(
    addr: &str,
    path: &str,
    headers: &[(&str, String)],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, resp[split + 4..].to_vec()))
}

//! A real Debian `docker-registry` (distribution 2.8) on a free 127.0.0.1 port, owned by the test
//! and killed by PID on drop; optionally behind htpasswd basic auth. Plus a minimal HTTP/1.0 GET
//! so that tests read manifests and blobs without trusting regfs's own client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh registry may take to answer `/v2/` (it starts in well under a second).
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// A running registry.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `user:password` when started with basic auth.
    pub basic_auth: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// A free loopback port (bound and released; the registry binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Registry {
        Registry::start_inner(None)
    }

    /// A registry requiring HTTP basic auth with `user`/`password` (bcrypt htpasswd, as
    /// distribution requires; needs `htpasswd` from apache2-utils).
    pub fn start_basic_auth(user: &str, password: &str) -> Registry {
        Registry::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(auth: Option<(String, String)>) -> Registry {
        let bin = which("docker-registry")
            .expect("the test needs `docker-registry` (apt-get install docker-registry)");
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("registry dir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  delete:\n    enabled: true\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: regfs-test\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("the test needs `htpasswd` (apt-get install apache2-utils)");
            assert!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: regfs-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let reg = Registry {
            child,
            addr,
            basic_auth: auth,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Ok((status, _)) = reg.try_get("/v2/", None) {
                assert!(
                    matches!(status, 200 | 401),
                    "registry /v2/ answered {status}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `GET path` with an optional `Accept`, with the basic credentials if any. Returns
    /// (status, body).
    pub fn get(&self, path: &str, accept: Option<&str>) -> (u16, Vec<u8>) {
        self.try_get(path, accept)
            .unwrap_or_else(|e| panic!("GET http://{}{path}: {e}", self.addr))
    }

    fn try_get(&self, path: &str, accept: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n", self.addr);
        if let Some(a) = accept {
            req.push_str(&format!("Accept: {a}\r\n"));
        }
        if let Some((u, p)) = &self.basic_auth {
            use base64::Engine as _;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req.push_str(&format!("Authorization: Basic {token}\r\n"));
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
}

impl Registry {
    /// The registry's filesystem storage root (`rootdirectory`): blobs live under
    /// `docker/registry/v2/blobs/sha256/xx/<hex>/data`.
    pub fn storage_root(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Kills the registry process (its storage stays) and waits for it to be gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again on the same port with the same storage and config.
    pub fn restart(&mut self) {
        self.stop();
        let bin = which("docker-registry").expect("docker-registry");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path().join("registry.log"))
            .expect("registry log");
        self.child = Command::new(bin)
            .arg("serve")
            .arg(self._dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("respawn docker-registry");
        let deadline = Instant::now() + STARTUP_LIMIT;
        while self.try_get("/v2/", None).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not restart on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Only our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of `tool` on `$PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

//! A docker token server with a chosen token lifetime, for tests of credentials over time: GET
//! `/token` with Basic auth answers a JWT (RS256, signed with a throwaway key through the
//! `openssl` CLI, the certificate in `x5c`) that the registry accepts for `lifetime` seconds.
//! POSTs get 404 (clients then fall back to GET, as with old token servers). Plain std threads,
//! so that any test binary can use it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::{Auth, require_tool};

/// The service name tokens are issued for.
pub const TOKEN_SERVICE: &str = "regfs-testkit-registry";
/// The issuer tokens name.
pub const TOKEN_ISSUER: &str = "regfs-testkit-issuer";
/// distribution's clock-skew allowance: it accepts a token this long past its `exp`, so tokens
/// meant to die after `lifetime` carry an `exp` this much earlier.
const REGISTRY_LEEWAY: u64 = 60;

/// A running token server; stopped on drop.
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The certificate the registry must trust.
    pub cert: PathBuf,
    /// Tokens issued so far.
    pub issued: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Issues tokens to `user`/`password` that the registry accepts for `lifetime` seconds and
    /// that the replies announce as living `lifetime` seconds.
    pub fn start(user: &str, password: &str, lifetime: u64) -> TokenServer {
        require_tool("openssl", "openssl");
        let dir = tempfile::tempdir().expect("token dir");
        let key = dir.path().join("token.key");
        let cert = dir.path().join("token.crt");
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .arg("-subj")
            .arg(format!("/CN={TOKEN_ISSUER}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("run openssl req");
        assert!(st.success(), "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("run openssl x509")
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().expect("token addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let (stop2, issued2) = (stop.clone(), issued.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let reply = answer(&mut conn, &basic, &key, &x5c, lifetime, &issued2);
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        TokenServer {
            addr,
            cert,
            issued,
            stop,
            _dir: dir,
        }
    }

    /// The registry auth that trusts this server.
    pub fn registry_auth(&self) -> Auth {
        Auth::Token {
            realm: format!("http://{}/token", self.addr),
            service: TOKEN_SERVICE.into(),
            issuer: TOKEN_ISSUER.into(),
            cert: self.cert.clone(),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn answer(
    conn: &mut TcpStream,
    basic: &str,
    key: &Path,
    x5c: &str,
    lifetime: u64,
    issued: &AtomicU64,
) -> String {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let reply = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    if first.first() != Some(&"GET") {
        return reply("404 Not Found", "{}");
    }
    let authorized = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("authorization") && v.trim() == basic
        })
    });
    if !authorized {
        return reply("401 Unauthorized", "{}");
    }
    let query = first
        .get(1)
        .and_then(|p| p.split_once('?'))
        .map_or("", |(_, q)| q);
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map_or("", |(_, v)| v.as_str());
    let access: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|s| {
            let parts: Vec<&str> = s.split(':').collect();
            (parts.len() >= 3).then(|| {
                let actions: Vec<String> = parts[parts.len() - 1]
                    .split(',')
                    .map(|a| format!("{a:?}"))
                    .collect();
                format!(
                    r#"{{"type":{:?},"name":{:?},"actions":[{}]}}"#,
                    parts[0],
                    parts[1..parts.len() - 1].join(":"),
                    actions.join(",")
                )
            })
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let n = issued.fetch_add(1, Ordering::SeqCst);
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","x5c":["{x5c}"]}}"#);
    let claims = format!(
        r#"{{"iss":"{TOKEN_ISSUER}","sub":"test","aud":{service:?},"exp":{},"nbf":{},"iat":{now},"jti":"{now}-{n}","access":[{}]}}"#,
        (now + lifetime).saturating_sub(REGISTRY_LEEWAY),
        now.saturating_sub(10),
        access.join(",")
    );
    let b64u = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let input = format!("{}.{}", b64u(header.as_bytes()), b64u(claims.as_bytes()));
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child
        .stdin
        .take()
        .expect("openssl stdin")
        .write_all(input.as_bytes())
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(out.status.success(), "openssl dgst failed");
    let token = format!("{input}.{}", b64u(&out.stdout));
    reply(
        "200 OK",
        &format!(r#"{{"token":"{token}","expires_in":{lifetime}}}"#),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

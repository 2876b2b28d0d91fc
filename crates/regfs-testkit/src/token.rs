//! A docker token server for the registry's `auth.token` mode, the one every test binary uses.
//!
//! `/token` answers the two ways clients ask:
//! - GET with Basic auth (`?service=..&scope=..`): `{"token": ..}`, as old token servers do;
//! - POST, the OAuth2 form with a `password` or `refresh_token` grant: `{"access_token": ..,
//!   "refresh_token": ..}`. With [`TokenOptions::post`] off it answers 404, and clients fall
//!   back to GET.
//!
//! Tokens are JWTs (RS256) signed with a throwaway key through the `openssl` CLI, the
//! certificate in `x5c`; the registry accepts each for [`TokenOptions::lifetime`] seconds, while
//! the replies announce [`TokenOptions::expires_in`] (the two may disagree on purpose). Counters
//! tell a test which way clients asked and how many tokens they got.
//!
//! Plain std threads (one per connection), so that sync and async tests alike can use it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
/// Bound on a request head or body: token requests are a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;

/// What a [`TokenServer`] accepts and issues.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// The one user with a password.
    pub user: String,
    /// `user`'s password.
    pub password: String,
    /// Answer OAuth2 POSTs; when false, POST gets 404 (old token servers).
    pub post: bool,
    /// How long the registry accepts a token, in seconds.
    pub lifetime: u64,
    /// The `expires_in` the replies announce (`None`: no field, clients assume 60 s).
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

/// A running token server on 127.0.0.1; stopped on drop.
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The certificate the registry must trust.
    pub cert: PathBuf,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

/// What the connection threads share.
struct State {
    opts: TokenOptions,
    key: PathBuf,
    x5c: String,
    gets: AtomicU64,
    posts: AtomicU64,
    refresh_posts: AtomicU64,
    issued: AtomicU64,
    refresh_tokens: Mutex<Vec<String>>,
}

impl TokenServer {
    /// Starts a server issuing tokens as `opts` says.
    pub fn start(opts: TokenOptions) -> TokenServer {
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
        let state = Arc::new(State {
            opts,
            key,
            x5c: base64::engine::general_purpose::STANDARD.encode(der),
            gets: AtomicU64::new(0),
            posts: AtomicU64::new(0),
            refresh_posts: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            refresh_tokens: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().expect("token addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, state2) = (stop.clone(), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let state = state2.clone();
                std::thread::spawn(move || {
                    let reply = state.answer(&mut conn);
                    let _ = conn.write_all(&reply);
                });
            }
        });
        TokenServer {
            addr,
            cert,
            state,
            stop,
            _dir: dir,
        }
    }

    /// The token endpoint, `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The registry auth that trusts this server.
    pub fn registry_auth(&self) -> Auth {
        Auth::Token {
            realm: self.realm(),
            service: TOKEN_SERVICE.into(),
            issuer: TOKEN_ISSUER.into(),
            cert: self.cert.clone(),
        }
    }

    /// GETs of `/token` so far, refused ones included.
    pub fn gets(&self) -> u64 {
        self.state.gets.load(Ordering::SeqCst)
    }

    /// POSTs of `/token` so far, refused ones (and 404s with `post` off) included.
    pub fn posts(&self) -> u64 {
        self.state.posts.load(Ordering::SeqCst)
    }

    /// POSTs with a `refresh_token` grant that got a token.
    pub fn refresh_posts(&self) -> u64 {
        self.state.refresh_posts.load(Ordering::SeqCst)
    }

    /// Tokens issued so far, by GET and POST.
    pub fn issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// One request as the server saw it.
struct Request {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

impl State {
    /// The whole HTTP response to the request on `conn`.
    fn answer(&self, conn: &mut TcpStream) -> Vec<u8> {
        let Some(req) = read_request(conn) else {
            return response("400 Bad Request", &[], "");
        };
        if req.path != "/token" {
            return response("404 Not Found", &[], "");
        }
        let token = match req.method.as_str() {
            "GET" => self.get(&req),
            "POST" => self.post(&req),
            _ => Err(response("405 Method Not Allowed", &[], "")),
        };
        match token {
            Ok(fields) => {
                let mut fields = fields;
                if let Some(e) = self.opts.expires_in {
                    fields.push(format!(r#""expires_in":{e}"#));
                }
                let body = format!("{{{}}}", fields.join(","));
                response("200 OK", &[("Content-Type", "application/json")], &body)
            }
            Err(refused) => refused,
        }
    }

    /// Basic auth and query parameters: the fields of a `{"token": ..}` reply.
    fn get(&self, req: &Request) -> Result<Vec<String>, Vec<u8>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.opts.user, self.opts.password))
        );
        if req.authorization.as_deref() != Some(basic.as_str()) {
            return Err(response(
                "401 Unauthorized",
                &[("WWW-Authenticate", "Basic realm=\"token\"")],
                "",
            ));
        }
        let query = form(req.query.as_bytes());
        let scopes: Vec<&str> = query
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str())
            .collect();
        let service = first(&query, "service");
        Ok(vec![format!(
            r#""token":"{}""#,
            self.sign(service, &scopes)
        )])
    }

    /// An OAuth2 form: the fields of an `{"access_token": .., "refresh_token": ..}` reply.
    fn post(&self, req: &Request) -> Result<Vec<String>, Vec<u8>> {
        self.posts.fetch_add(1, Ordering::SeqCst);
        if !self.opts.post {
            return Err(response("404 Not Found", &[], ""));
        }
        let fields = form(&req.body);
        let get = |k: &str| first(&fields, k);
        let granted = match get("grant_type") {
            "password" => {
                get("username") == self.opts.user && get("password") == self.opts.password
            }
            "refresh_token" => {
                let known = self
                    .refresh_tokens
                    .lock()
                    .expect("refresh tokens")
                    .iter()
                    .any(|t| t.as_str() == get("refresh_token"));
                if known {
                    self.refresh_posts.fetch_add(1, Ordering::SeqCst);
                }
                known
            }
            _ => false,
        };
        if !granted {
            return Err(response("401 Unauthorized", &[], ""));
        }
        let token = self.sign(get("service"), &[get("scope")]);
        let refresh = {
            let mut known = self.refresh_tokens.lock().expect("refresh tokens");
            let rt = format!("refresh-{}", known.len());
            known.push(rt.clone());
            rt
        };
        Ok(vec![
            format!(r#""access_token":"{token}""#),
            format!(r#""refresh_token":"{refresh}""#),
        ])
    }

    /// A JWT for `service` granting `scopes` (each may hold several, space-separated), which
    /// the registry accepts for `lifetime` seconds.
    fn sign(&self, service: &str, scopes: &[&str]) -> String {
        let access: Vec<String> = scopes
            .iter()
            .flat_map(|s| s.split(' '))
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
        // Every token distinct, so that a test can tell a renewed token from the old one.
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let header = format!(r#"{{"alg":"RS256","typ":"JWT","x5c":["{}"]}}"#, self.x5c);
        let claims = format!(
            r#"{{"iss":"{TOKEN_ISSUER}","sub":"test","aud":{service:?},"exp":{},"nbf":{},"iat":{now},"jti":"{now}-{n}","access":[{}]}}"#,
            (now + self.opts.lifetime).saturating_sub(REGISTRY_LEEWAY),
            now.saturating_sub(10),
            access.join(",")
        );
        let b64u = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let input = format!("{}.{}", b64u(header.as_bytes()), b64u(claims.as_bytes()));
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
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
        format!("{input}.{}", b64u(&out.stdout))
    }
}

/// Reads one request: the head, then as much body as `Content-Length` says.
fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&tmp[..n]),
        }
    }
    Some(Request {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        authorization: header("authorization").map(str::to_owned),
        body,
    })
}

/// A complete response that closes the connection.
fn response(status: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// The pairs of an `application/x-www-form-urlencoded` string (a query or a POST body).
fn form(s: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(s)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// The first value of `key` in `pairs`, or "".
fn first<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
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

//! Credentials and the pieces of registry auth that need no network: `WWW-Authenticate`
//! challenges, docker's `config.json`, credential helpers, token replies.
//!
//! Where credentials come from, first match wins:
//! 1. `ClientConfig::keychain` (credentials handed over at run time, by registry host and
//!    repository: e.g. what kubelet sent with its last `PullImage` of that image);
//! 2. `ClientConfig::credentials` (explicit, by registry host);
//! 3. `credHelpers[host]` in the docker config → `docker-credential-<name> get`;
//! 4. `auths[host]` (`auth` = base64 `user:pass`, or `username`/`password`, or `identitytoken`);
//! 5. `credsStore` → `docker-credential-<name> get`.
//!
//! Docker Hub's key in `config.json` is `https://index.docker.io/v1/`; other hosts may be written
//! with or without a scheme and path, so keys are compared by their host part.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::Error;
use crate::reference::DOCKER_HUB;

/// A credential helper that has not answered after this long is hung (e.g. waiting on a GUI).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// A docker config larger than this is not a config file.
const MAX_DOCKER_CONFIG_LEN: u64 = 4 * 1024 * 1024;

/// Docker Hub's historic key in `config.json` and for credential helpers.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// Secrets for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (or access token used as password).
    UserPassword {
        /// The account name.
        username: String,
        /// The password, or an access token the registry accepts in its place.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in docker's config), exchanged with the
    /// `refresh_token` grant.
    IdentityToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::UserPassword { username, .. } => {
                write!(
                    f,
                    "UserPassword {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Credentials that arrive while the client runs, looked up per request before any configured
/// ones: a CRI image-service proxy fills one with the credentials kubelet sends for each image.
pub trait Keychain: Send + Sync + fmt::Debug {
    /// The credentials for `repository` (e.g. `library/python`) on registry `host`
    /// (`host[:port]`, `docker.io` for Docker Hub), if this keychain has some.
    fn credentials(&self, host: &str, repository: &str) -> Option<Credentials>;
}

/// The repository named by the first `repository:<name>:<actions>` scope.
pub(crate) fn scope_repository(scopes: &[String]) -> Option<&str> {
    let rest = scopes.first()?.strip_prefix("repository:")?;
    rest.rsplit_once(':').map(|(name, _)| name)
}

/// What a registry's `WWW-Authenticate` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses the first Basic or Bearer challenge of a `WWW-Authenticate` value.
pub(crate) fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_auth_params(params);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
    })
}

/// `k="v", k2=v2` with backslash escapes inside quotes; keys lowercased.
fn parse_auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), val.trim().to_owned());
    }
}

/// A token endpoint's JSON reply.
#[derive(Deserialize)]
pub(crate) struct TokenReply {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl TokenReply {
    /// The bearer token (`token` per the docker spec, `access_token` per OAuth2).
    pub(crate) fn bearer(&self) -> Option<&str> {
        self.token
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.access_token.as_deref().filter(|t| !t.is_empty()))
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// `https://host:port/v1/` → `host:port`; Docker Hub's aliases → `docker.io`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        k => k,
    }
}

/// The directory holding `config.json`: the override, `$DOCKER_CONFIG`, or `~/.docker`.
pub(crate) fn docker_config_dir(override_dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = override_dir {
        return Some(d.to_owned());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker"))
}

/// Credentials for `host` from the docker config in `dir`, running helpers as needed.
pub(crate) async fn docker_credentials(
    dir: &Path,
    host: &str,
) -> Result<Option<Credentials>, Error> {
    let path = dir.join("config.json");
    let cred_err = |reason: String| Error::Credentials {
        host: host.to_owned(),
        reason,
    };
    let text = match tokio::fs::metadata(&path).await {
        Ok(m) if m.len() > MAX_DOCKER_CONFIG_LEN => {
            return Err(cred_err(format!(
                "{} is larger than {MAX_DOCKER_CONFIG_LEN} bytes",
                path.display()
            )));
        }
        Ok(_) => tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| cred_err(format!("reading {}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cred_err(format!("reading {}: {e}", path.display()))),
    };
    match lookup_docker_config(&text, host)
        .map_err(|e| cred_err(format!("{}: {e}", path.display())))?
    {
        ConfigAnswer::Credentials(c) => Ok(Some(c)),
        ConfigAnswer::Helper(helper) => run_helper(&helper, host).await,
        ConfigAnswer::Nothing => Ok(None),
    }
}

/// What a docker `config.json` says about one registry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConfigAnswer {
    /// Credentials written in the file.
    Credentials(Credentials),
    /// Ask `docker-credential-<name>`.
    Helper(String),
    /// Nothing for this registry.
    Nothing,
}

/// Reads the docker config `text` for `host` (first match wins: `credHelpers`, `auths`,
/// `credsStore`). Errors say what is wrong, without the path (the caller adds it).
pub(crate) fn lookup_docker_config(text: &str, host: &str) -> Result<ConfigAnswer, String> {
    let cfg: DockerConfig = serde_json::from_str(text).map_err(|e| format!("parsing: {e}"))?;
    if let Some((_, helper)) = cfg.cred_helpers.iter().find(|(k, _)| key_host(k) == host) {
        return Ok(ConfigAnswer::Helper(helper.clone()));
    }
    if let Some((_, a)) = cfg.auths.iter().find(|(k, _)| key_host(k) == host) {
        if let Some(tok) = a.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(ConfigAnswer::Credentials(Credentials::IdentityToken(
                tok.clone(),
            )));
        }
        if let Some(enc) = a.auth.as_ref().filter(|t| !t.is_empty()) {
            return Credentials::from_basic_auth(enc).map(ConfigAnswer::Credentials);
        }
        if let (Some(u), Some(p)) = (&a.username, &a.password) {
            return Ok(ConfigAnswer::Credentials(Credentials::UserPassword {
                username: u.clone(),
                password: p.clone(),
            }));
        }
    }
    if let Some(store) = cfg.creds_store.as_ref().filter(|s| !s.is_empty()) {
        return Ok(ConfigAnswer::Helper(store.clone()));
    }
    Ok(ConfigAnswer::Nothing)
}

impl Credentials {
    /// The `auth` field of docker's config (and of a CRI `AuthConfig`): base64 of
    /// `user:password`.
    pub fn from_basic_auth(encoded: &str) -> Result<Credentials, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("auth is not base64: {e}"))?;
        let raw = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_owned())?;
        let (username, password) = raw
            .split_once(':')
            .ok_or_else(|| "auth is not base64 of user:password (no ':')".to_owned())?;
        Ok(Credentials::UserPassword {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// `docker-credential-<name> get` with the server URL on stdin; "not found" is `None`.
async fn run_helper(name: &str, host: &str) -> Result<Option<Credentials>, Error> {
    use tokio::io::AsyncWriteExt as _;
    let program = format!("docker-credential-{name}");
    let cred_err = |reason: String| Error::Credentials {
        host: host.to_owned(),
        reason,
    };
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(cred_err(format!(
            "credential helper name {name:?} is not a plain name"
        )));
    }
    let server = if host == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY
    } else {
        host
    };
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| cred_err(format!("running {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| cred_err(format!("writing to {program}: {e}")))?;
    }
    let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            cred_err(format!(
                "{program} did not answer within {HELPER_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| cred_err(format!("running {program}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if msg.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(cred_err(format!(
            "{program} failed ({}): {}",
            out.status,
            msg.trim()
        )));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|e| cred_err(format!("{program} printed no credentials JSON: {e}")))?;
    Ok(Some(if reply.username == "<token>" {
        Credentials::IdentityToken(reply.secret)
    } else {
        Credentials::UserPassword {
            username: reply.username,
            password: reply.secret,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_lookup_order_and_errors() {
        let cfg = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},
            "a.example":{"identitytoken":"tok","auth":"dTpw"},
            "b.example":{"auth":"%%"},
            "c.example:5000":{"username":"u","password":"p"}},
            "credHelpers":{"a.example":"pass"},"credsStore":"desktop"}"#;
        let user = ConfigAnswer::Credentials(Credentials::UserPassword {
            username: "u".into(),
            password: "p".into(),
        });
        assert_eq!(lookup_docker_config(cfg, "docker.io"), Ok(user));
        // credHelpers wins over auths for the same host.
        assert_eq!(
            lookup_docker_config(cfg, "a.example"),
            Ok(ConfigAnswer::Helper("pass".into()))
        );
        let err = lookup_docker_config(cfg, "b.example").unwrap_err();
        assert!(err.contains("base64"), "{err}");
        assert!(matches!(
            lookup_docker_config(cfg, "c.example:5000"),
            Ok(ConfigAnswer::Credentials(_))
        ));
        // Unknown host: the default store.
        assert_eq!(
            lookup_docker_config(cfg, "d.example"),
            Ok(ConfigAnswer::Helper("desktop".into()))
        );
        assert_eq!(lookup_docker_config("{}", "x"), Ok(ConfigAnswer::Nothing));
        assert!(
            lookup_docker_config("[", "x")
                .unwrap_err()
                .contains("parsing")
        );
        assert!(
            Credentials::from_basic_auth("dXNlcg==")
                .unwrap_err()
                .contains("user:password")
        );
    }

    #[test]
    fn the_repository_of_a_scope() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            scope_repository(&s(&["repository:library/python:pull"])),
            Some("library/python")
        );
        assert_eq!(
            scope_repository(&s(&["repository:a/b:pull,push", "repository:c:pull"])),
            Some("a/b")
        );
        assert_eq!(scope_repository(&s(&["registry:catalog:*"])), None);
        assert_eq!(scope_repository(&[]), None);
    }

    #[test]
    fn challenge_table() {
        let cases: &[(&str, Option<Challenge>)] = &[
            ("Basic realm=\"x\"", Some(Challenge::Basic)),
            (
                "Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:a:pull\"",
                Some(Challenge::Bearer {
                    realm: "https://auth.example/token".into(),
                    service: Some("reg".into()),
                }),
            ),
            (
                "bearer realm=http://h/t, error=\"a\\\"b\"",
                Some(Challenge::Bearer {
                    realm: "http://h/t".into(),
                    service: None,
                }),
            ),
            ("Bearer service=\"x\"", None),
            ("Negotiate abc", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_challenge(input), *want, "{input}");
        }
    }

    #[test]
    fn config_keys_compare_by_host() {
        assert_eq!(key_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(key_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(key_host("ghcr.io"), "ghcr.io");
    }

    #[tokio::test]
    async fn reads_auths_forms() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("u1:p:1");
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{"https://a.example/v1/":{{"auth":"{auth}"}},
                "b.example":{{"username":"u2","password":"p2"}},
                "c.example":{{"identitytoken":"rt"}}}}}}"#
            ),
        )
        .unwrap();
        let get = |h: &'static str| {
            let d = dir.path().to_owned();
            async move { docker_credentials(&d, h).await.unwrap() }
        };
        assert_eq!(
            get("a.example").await,
            Some(Credentials::UserPassword {
                username: "u1".into(),
                password: "p:1".into()
            })
        );
        assert_eq!(
            get("b.example").await,
            Some(Credentials::UserPassword {
                username: "u2".into(),
                password: "p2".into()
            })
        );
        assert_eq!(
            get("c.example").await,
            Some(Credentials::IdentityToken("rt".into()))
        );
        assert_eq!(get("d.example").await, None);
    }

    proptest::proptest! {
        #[test]
        fn challenge_parser_never_panics(s in ".{0,200}") {
            let _ = parse_challenge(&s);
            let _ = parse_challenge(&format!("Bearer {s}"));
        }
    }
}

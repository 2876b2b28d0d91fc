//! Where requests for a registry go: containerd's `certs.d` `hosts.toml`, mirrors, the origin.
//!
//! ```text
//! hosts_dir/
//! ├── docker.io/hosts.toml        # for references on docker.io
//! ├── 127.0.0.1:5000/hosts.toml   # host[:port] as written in the reference
//! └── _default/hosts.toml         # for every registry without its own directory
//! ```
//!
//! A file may set `server` (the origin's URL, replacing `https://<registry>`) and TLS/header
//! settings for it at top level, then any number of `[host."URL"]` tables — mirrors, tried in
//! file order before the origin for the operations their `capabilities` allow (`pull`,
//! `resolve`, `push`; all three by default). Per host: `skip_verify`, `ca` (file or list of
//! files), `client` (file, list of files, or list of `[cert, key]` pairs), `header` (name → value
//! or list), `override_path` (the URL path is the API root as is, instead of `<path>/v2`) and the
//! `plain_http` extension for URLs written without a scheme. Relative file names are relative to
//! the registry's directory.
//!
//! The origin uses plain HTTP only for loopback hosts or hosts listed in
//! `ClientConfig::insecure_registries`; everything else is HTTPS.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use url::Url;

use crate::Error;
use crate::reference::DOCKER_HUB;

/// A `hosts.toml` larger than this is not a configuration file.
const MAX_HOSTS_FILE_LEN: u64 = 1024 * 1024;

/// Docker Hub's API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Which operations a host may serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One place to send requests, as configured (before any HTTP client exists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostSpec {
    /// API root: requests go to `<api_root>/<repo>/blobs/…`.
    pub api_root: Url,
    pub capabilities: Capabilities,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    /// Client certificate files; the key is in the same file when the second is `None`.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub headers: Vec<(String, String)>,
    /// The registry itself (last in the list) rather than a mirror.
    pub is_origin: bool,
}

/// Whether `host[:port]` names a loopback address, where plain HTTP is allowed by default.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The hosts for `registry`, mirrors first and the origin last.
pub(crate) fn host_specs(
    registry: &str,
    hosts_dir: Option<&Path>,
    insecure: &[String],
) -> Result<Vec<HostSpec>, Error> {
    let plain = is_loopback(registry) || insecure.iter().any(|h| h == registry);
    let api_host = if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    };
    let scheme = if plain { "http" } else { "https" };
    let origin_url = format!("{scheme}://{api_host}");
    let Some(dir) = hosts_dir else {
        return Ok(vec![origin(&origin_url, Path::new("/"))?]);
    };
    for candidate in [dir.join(registry), dir.join("_default")] {
        let file = candidate.join("hosts.toml");
        match std::fs::metadata(&file) {
            Ok(m) if m.len() > MAX_HOSTS_FILE_LEN => {
                return Err(Error::HostsConfig {
                    path: file,
                    reason: format!("larger than {MAX_HOSTS_FILE_LEN} bytes"),
                });
            }
            Ok(_) => {
                let text = std::fs::read_to_string(&file).map_err(|e| Error::HostsConfig {
                    path: file.clone(),
                    reason: e.to_string(),
                })?;
                let is_default = candidate.ends_with("_default");
                return parse_hosts(&text, &origin_url, &candidate, is_default)
                    .map_err(|reason| Error::HostsConfig { path: file, reason });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::HostsConfig {
                    path: file,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(vec![origin(&origin_url, dir)?])
}

fn origin(url: &str, base: &Path) -> Result<HostSpec, Error> {
    host_spec(url, &toml::Table::new(), base, true).map_err(|reason| Error::HostsConfig {
        path: base.to_owned(),
        reason,
    })
}

/// Parses one `hosts.toml`. `_default` files cannot move the origin (`server` is ignored there),
/// since one server for every registry would merge unrelated namespaces.
pub(crate) fn parse_hosts(
    text: &str,
    origin_url: &str,
    base: &Path,
    is_default: bool,
) -> Result<Vec<HostSpec>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut specs = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts.as_table().ok_or("`host` must be a table")?;
        for (url, settings) in hosts {
            let settings = settings
                .as_table()
                .ok_or_else(|| format!("host {url:?} must be a table"))?;
            specs.push(host_spec(url, settings, base, false)?);
        }
    }
    let server = match table.get("server") {
        Some(s) if !is_default => s.as_str().ok_or("`server` must be a string")?,
        _ => origin_url,
    };
    specs.push(host_spec(server, &table, base, true)?);
    Ok(specs)
}

fn host_spec(url: &str, t: &toml::Table, base: &Path, is_origin: bool) -> Result<HostSpec, String> {
    let plain_http = get_bool(t, "plain_http")?;
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else if plain_http {
        format!("http://{url}")
    } else {
        format!("https://{url}")
    };
    let mut api_root = Url::parse(&with_scheme).map_err(|e| format!("host {url:?}: {e}"))?;
    if !matches!(api_root.scheme(), "http" | "https") || api_root.host_str().is_none() {
        return Err(format!(
            "host {url:?}: need an http or https URL with a host"
        ));
    }
    let path = api_root.path().trim_end_matches('/').to_owned();
    let path = if get_bool(t, "override_path")? || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    api_root.set_path(&path);
    api_root.set_query(None);
    let capabilities = match t.get("capabilities") {
        None => Capabilities::ALL,
        Some(v) => {
            let list = v.as_array().ok_or("`capabilities` must be a list")?;
            let mut caps = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for c in list {
                match c.as_str() {
                    Some("pull") => caps.pull = true,
                    Some("resolve") => caps.resolve = true,
                    Some("push") => caps.push = true,
                    _ => return Err(format!("host {url:?}: unknown capability {c}")),
                }
            }
            caps
        }
    };
    let resolve_path = |p: &str| base.join(p);
    let ca = match t.get("ca") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![resolve_path(s)],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(resolve_path)
                    .ok_or("`ca` entries must be strings")
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`ca` must be a string or a list".into()),
    };
    let client = match t.get("client") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![(resolve_path(s), None)],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok((resolve_path(s), None)),
                toml::Value::Array(pair) => match pair.as_slice() {
                    [toml::Value::String(c)] => Ok((resolve_path(c), None)),
                    [toml::Value::String(c), toml::Value::String(k)] => {
                        Ok((resolve_path(c), Some(resolve_path(k))))
                    }
                    _ => Err("`client` pairs must be [cert, key]"),
                },
                _ => Err("`client` entries must be strings or [cert, key]"),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`client` must be a string or a list".into()),
    };
    let mut headers = Vec::new();
    if let Some(h) = t.get("header") {
        let h = h.as_table().ok_or("`header` must be a table")?;
        for (name, v) in h {
            match v {
                toml::Value::String(s) => headers.push((name.clone(), s.clone())),
                toml::Value::Array(a) => {
                    for s in a {
                        let s = s.as_str().ok_or("header values must be strings")?;
                        headers.push((name.clone(), s.to_owned()));
                    }
                }
                _ => return Err(format!("header {name:?} must be a string or a list")),
            }
        }
    }
    Ok(HostSpec {
        api_root,
        capabilities,
        skip_verify: get_bool(t, "skip_verify")?,
        ca,
        client,
        headers,
        is_origin,
    })
}

fn get_bool(t: &toml::Table, key: &str) -> Result<bool, String> {
    match t.get(key) {
        None => Ok(false),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(_) => Err(format!("`{key}` must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for (h, want) in [
            ("127.0.0.1:5000", true),
            ("127.3.4.5", true),
            ("localhost:80", true),
            ("[::1]:5000", true),
            ("::1", true),
            ("10.0.0.1:5000", false),
            ("registry.example", false),
            ("docker.io", false),
        ] {
            assert_eq!(is_loopback(h), want, "{h}");
        }
    }

    #[test]
    fn origin_only_without_hosts_dir() {
        let s = host_specs("docker.io", None, &[]).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].api_root.as_str(), "https://registry-1.docker.io/v2");
        let s = host_specs("reg.example:5000", None, &["reg.example:5000".into()]).unwrap();
        assert_eq!(s[0].api_root.as_str(), "http://reg.example:5000/v2");
        let s = host_specs("127.0.0.1:5000", None, &[]).unwrap();
        assert_eq!(s[0].api_root.as_str(), "http://127.0.0.1:5000/v2");
    }

    #[test]
    fn parses_mirrors_in_file_order() {
        let text = r#"
server = "https://origin.example"
ca = "origin-ca.pem"

[host."https://zz-mirror.example"]
capabilities = ["pull", "resolve"]
skip_verify = true
ca = ["a.pem", "/abs/b.pem"]
client = [["c.pem", "k.pem"], "both.pem"]
[host."https://zz-mirror.example".header]
x-one = "1"
x-many = ["a", "b"]

[host."aa-mirror.example:8080/prefix"]
plain_http = true
override_path = true
"#;
        let specs =
            parse_hosts(text, "https://unused", Path::new("/etc/hosts.d/r"), false).unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].api_root.as_str(), "https://zz-mirror.example/v2");
        assert!(specs[0].skip_verify && !specs[0].capabilities.push);
        assert_eq!(
            specs[0].ca,
            vec![
                PathBuf::from("/etc/hosts.d/r/a.pem"),
                PathBuf::from("/abs/b.pem")
            ]
        );
        assert_eq!(specs[0].client.len(), 2);
        assert_eq!(specs[0].headers.len(), 3);
        assert_eq!(
            specs[1].api_root.as_str(),
            "http://aa-mirror.example:8080/prefix"
        );
        assert!(specs[1].capabilities.push);
        assert!(specs[2].is_origin);
        assert_eq!(specs[2].api_root.as_str(), "https://origin.example/v2");
        assert_eq!(
            specs[2].ca,
            vec![PathBuf::from("/etc/hosts.d/r/origin-ca.pem")]
        );
    }

    #[test]
    fn own_directory_wins_over_default() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("hosts.toml"), text).unwrap();
        };
        write(
            "_default",
            "server = \"https://ignored.example\"\n[host.\"https://all.example\"]\n",
        );
        write("own.example", "[host.\"https://own-mirror.example\"]\n");
        let urls = |reg: &str| -> Vec<String> {
            host_specs(reg, Some(dir.path()), &[])
                .unwrap()
                .iter()
                .map(|s| s.api_root.to_string())
                .collect()
        };
        assert_eq!(
            urls("own.example"),
            ["https://own-mirror.example/v2", "https://own.example/v2"]
        );
        assert_eq!(
            urls("other.example"),
            ["https://all.example/v2", "https://other.example/v2"]
        );
    }

    #[test]
    fn rejects_bad_files() {
        for bad in [
            "server = 3",
            "[host.\"ftp://x\"]",
            "[host.\"https://x\"]\ncapabilities = [\"fly\"]",
            "[host.\"https://x\"]\nskip_verify = \"yes\"",
            "not toml at all [",
        ] {
            assert!(
                parse_hosts(bad, "https://o", Path::new("/"), false).is_err(),
                "{bad}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn hosts_parser_never_panics(s in ".{0,200}") {
            let _ = parse_hosts(&s, "https://o", Path::new("/"), false);
            let _ = parse_hosts(&format!("[host.\"{s}\"]\n"), "https://o", Path::new("/"), false);
        }
    }
}

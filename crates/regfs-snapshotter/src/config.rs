//! The snapshotter's configuration file (TOML), for `regfs snapshotter --config FILE`.
//!
//! ```toml
//! cache_dir = "/var/lib/regfs/cache"      # chunk store shared with regfs mount/run
//! cache_max_bytes = 10737418240           # LRU cap of the chunk store (none: unbounded)
//! prefetch = true                         # fetch each layer's prioritized files at mount
//! background_fetch = false                # then the rest of the layer, at low priority
//! hosts_dir = "/etc/containerd/certs.d"   # containerd hosts.toml: mirrors, CAs, plain HTTP
//! insecure_skip_verify = false            # serve layers whose TOC cannot be verified
//! metrics_address = "127.0.0.1:9151"      # Prometheus text on GET /metrics
//! log_level = "info"                      # tracing filter (REGFS_LOG overrides)
//! ```
//!
//! Every key is optional; unknown keys are an error (a typo must not silently mean the default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// What `--config` can set; every field has a default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotterConfig {
    /// The chunk cache directory.
    pub cache_dir: Option<PathBuf>,
    /// LRU cap of the chunk store in bytes.
    pub cache_max_bytes: Option<u64>,
    /// Prefetch each layer's prioritized files when it is mounted.
    pub prefetch: bool,
    /// After the prefetch, fetch whole layers at low priority.
    pub background_fetch: bool,
    /// containerd-style hosts directory.
    pub hosts_dir: PathBuf,
    /// Serve eStargz layers whose TOC digest cannot be verified.
    pub insecure_skip_verify: bool,
    /// Serve Prometheus metrics here.
    pub metrics_address: Option<SocketAddr>,
    /// Log filter.
    pub log_level: String,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        SnapshotterConfig {
            cache_dir: None,
            cache_max_bytes: None,
            prefetch: true,
            background_fetch: false,
            hosts_dir: PathBuf::from("/etc/containerd/certs.d"),
            insecure_skip_verify: false,
            metrics_address: None,
            log_level: "info".into(),
        }
    }
}

impl SnapshotterConfig {
    /// Parses the TOML text of the file at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<SnapshotterConfig, Error> {
        toml::from_str(text).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<SnapshotterConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "read config",
            path: path.to_owned(),
            source,
        })?;
        SnapshotterConfig::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_defaults_fill_the_rest() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim()))
            .collect();
        let c = SnapshotterConfig::parse(&example, Path::new("example.toml")).unwrap();
        assert_eq!(c.cache_max_bytes, Some(10 << 30));
        assert_eq!(c.metrics_address, Some("127.0.0.1:9151".parse().unwrap()));
        let empty = SnapshotterConfig::parse("", Path::new("empty.toml")).unwrap();
        assert_eq!(empty, SnapshotterConfig::default());
    }

    #[test]
    fn a_typo_is_an_error_naming_the_file_and_key() {
        let err = SnapshotterConfig::parse("prefech = false\n", Path::new("/etc/regfs.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/regfs.toml") && err.contains("prefech"),
            "{err}"
        );
        let err = SnapshotterConfig::parse("prefetch = 3\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml"), "{err}");
    }
}

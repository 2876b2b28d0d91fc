//! What to run: the container's root, command, identity and mounts.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;
use crate::config::DEFAULT_PATH;

/// Everything [`run`](crate::run) needs to start one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The read-only image root (usually the lazily-mounted FUSE image). Never modified.
    pub lower: PathBuf,
    /// `--upper DIR`: keep writes in `DIR/upper` (with `DIR/work` as overlayfs
    /// scratch); `None` keeps them on a tmpfs that vanishes with the container.
    pub upper: Option<PathBuf>,
    /// The resolved command line (see [`command_from_config`](crate::command_from_config)).
    pub args: Vec<String>,
    /// `KEY=VALUE` environment (see [`env_from_config`](crate::env_from_config)).
    pub env: Vec<String>,
    /// Working directory inside the container, created if missing (like docker).
    pub workdir: String,
    /// `uid[:gid]` or `name[:group]` resolved in the image's /etc/passwd and
    /// /etc/group; `None` is root.
    pub user: Option<String>,
    /// The container's hostname (in its own UTS namespace).
    pub hostname: String,
    /// Whether the container shares the host's network.
    pub net: NetMode,
    /// `-v HOST:CTR[:ro]` bind mounts, mounted in order.
    pub volumes: Vec<Volume>,
    /// Give the command a fresh pseudo-terminal as its stdio (`docker run -t`).
    pub tty: bool,
}

impl ContainerSpec {
    /// A spec running `args` as root in `/` with a default `PATH`, host
    /// networking, hostname `regfs` and a throw-away tmpfs upper.
    pub fn new(lower: impl Into<PathBuf>, args: Vec<String>) -> Self {
        ContainerSpec {
            lower: lower.into(),
            upper: None,
            args,
            env: vec![format!("PATH={DEFAULT_PATH}")],
            workdir: "/".to_owned(),
            user: None,
            hostname: "regfs".to_owned(),
            net: NetMode::Host,
            volumes: Vec::new(),
            tty: false,
        }
    }
}

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetMode {
    /// Share the host's network namespace (`--net host`).
    #[default]
    Host,
    /// A new network namespace with only the loopback interface, up (`--net none`).
    None,
}

impl FromStr for NetMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "host" => Ok(NetMode::Host),
            "none" => Ok(NetMode::None),
            other => Err(Error::InvalidNetMode {
                mode: other.to_owned(),
            }),
        }
    }
}

/// One `-v HOST:CTR[:ro]` bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The host path (a directory is created if missing, like docker).
    pub host: PathBuf,
    /// The absolute path inside the container.
    pub container: PathBuf,
    /// Mount it read-only.
    pub readonly: bool,
}

impl FromStr for Volume {
    type Err = Error;

    /// Parses `HOST:CTR`, `HOST:CTR:ro` or `HOST:CTR:rw`; both paths absolute.
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidVolume { spec: s.to_owned() };
        let mut parts = s.split(':');
        let host = parts.next().ok_or_else(invalid)?;
        let container = parts.next().ok_or_else(invalid)?;
        let readonly = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(_) => return Err(invalid()),
        };
        if parts.next().is_some()
            || !Path::new(host).is_absolute()
            || !Path::new(container).is_absolute()
        {
            return Err(invalid());
        }
        Ok(Volume {
            host: PathBuf::from(host),
            container: PathBuf::from(container),
            readonly,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_parses_like_docker() {
        type Case<'a> = (&'a str, Option<(&'a str, &'a str, bool)>);
        let cases: &[Case] = &[
            ("/a:/b", Some(("/a", "/b", false))),
            ("/a:/b:ro", Some(("/a", "/b", true))),
            ("/a:/b:rw", Some(("/a", "/b", false))),
            ("/a:/b:rx", None),
            ("a:/b", None),
            ("/a:b", None),
            ("/a", None),
            ("/a:/b:ro:x", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<Volume>().ok();
            let want = want.map(|(h, c, ro)| Volume {
                host: h.into(),
                container: c.into(),
                readonly: ro,
            });
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn net_mode_parses_host_and_none_only() {
        assert_eq!("host".parse::<NetMode>().ok(), Some(NetMode::Host));
        assert_eq!("none".parse::<NetMode>().ok(), Some(NetMode::None));
        assert!("bridge".parse::<NetMode>().is_err());
    }
}

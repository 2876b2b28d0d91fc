//! Image references: `host[:port]/repo[:tag][@digest]`, with Docker Hub's short forms.
//!
//! `busybox` means `docker.io/library/busybox:latest`; `user/app` means `docker.io/user/app`.
//! A first path component is a host only if it has a `.` or a `:`, or is `localhost` — the same
//! rule docker and containerd use. `index.docker.io` and `registry-1.docker.io` are spelled
//! `docker.io`; the API host of Docker Hub is chosen later, by the endpoint code.

use std::fmt;
use std::str::FromStr;

use regfs_estargz::Digest;

use crate::Error;

/// The canonical name of Docker Hub.
pub(crate) const DOCKER_HUB: &str = "docker.io";

/// Longest reference accepted; distribution caps repository names at 255 and tags at 128.
const MAX_REFERENCE_LEN: usize = 512;

/// Longest tag distribution allows.
const MAX_TAG_LEN: usize = 128;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`; Docker Hub is always `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was written.
    pub tag: Option<String>,
    /// Digest pinned with `@sha256:…`.
    pub digest: Option<Digest>,
}

impl Reference {
    /// The same repository pinned to `digest` (tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Another repository on the same registry, with no tag or digest.
    pub fn repository_ref(&self, repository: &str) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: repository.to_owned(),
            tag: None,
            digest: None,
        }
    }

    /// What goes after `/manifests/`: the digest if pinned, else the tag.
    pub fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(input: &str) -> Result<Reference, Error> {
        let bad = |reason| Error::InvalidReference {
            input: input.chars().take(80).collect(),
            reason,
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        if input.len() > MAX_REFERENCE_LEN {
            return Err(bad("too long"));
        }
        let (rest, digest) = match input.rsplit_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|_| bad("bad digest"))?),
            ),
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let ok_first = tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
            let ok_rest = tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok_first || !ok_rest || tag.len() > MAX_TAG_LEN {
                return Err(bad("bad tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(bad("bad registry host"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let components_ok = repository.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        });
        if !components_ok {
            return Err(bad(
                "bad repository name (lowercase alphanumerics and . _ - separated by /)",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_normalises() {
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            ("user/app:1.0", "docker.io", "user/app", Some("1.0"), false),
            (
                "index.docker.io/library/alpine:3",
                "docker.io",
                "library/alpine",
                Some("3"),
                false,
            ),
            (
                "registry-1.docker.io/x/y",
                "docker.io",
                "x/y",
                Some("latest"),
                false,
            ),
            (
                "127.0.0.1:5000/a/b:t",
                "127.0.0.1:5000",
                "a/b",
                Some("t"),
                false,
            ),
            ("localhost/app", "localhost", "app", Some("latest"), false),
            ("ghcr.io/o/r@", "", "", None, true),
            ("Upper/app", "", "", None, true),
            ("a//b", "", "", None, true),
            ("app:bad tag", "", "", None, true),
            ("", "", "", None, true),
        ];
        for (input, reg, repo, tag, err) in cases {
            let r = input.parse::<Reference>();
            if *err {
                assert!(r.is_err(), "{input} should fail");
                continue;
            }
            let r = r.unwrap();
            assert_eq!(r.registry, *reg, "{input}");
            assert_eq!(r.repository, *repo, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
        }
    }

    #[test]
    fn digest_references_round_trip() {
        let s = format!("127.0.0.1:5000/a:t@{D}");
        let r: Reference = s.parse().unwrap();
        assert_eq!(r.digest.unwrap().to_string(), D);
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.to_string(), s);
        assert_eq!(r.manifest_key(), D);
        let r: Reference = format!("busybox@{D}").parse().unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
    }

    proptest::proptest! {
        /// Arbitrary strings never panic; whatever parses displays to something that parses
        /// back to the same reference.
        #[test]
        fn parse_never_panics_and_round_trips(s in "[a-zA-Z0-9:/@._-]{0,80}|.{0,80}") {
            if let Ok(r) = s.parse::<Reference>() {
                let again: Reference = r.to_string().parse().unwrap();
                proptest::prop_assert_eq!(again, r);
            }
        }
    }
}

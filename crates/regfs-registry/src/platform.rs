//! Platforms (`os/arch[/variant]`) and the choice of one manifest out of an index.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::ImageIndex;

use crate::Error;

/// The platform an image must run on, in OCI spelling (`linux/amd64`, `linux/arm/v7`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture with Go's names, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v7` for `arm`; `None` accepts any variant.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, with Go's architecture names.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Whether an index entry for `os`/`arch`/`variant` runs here. An unset variant on our side
    /// accepts any; `arm64` treats `v8` and no variant as the same.
    fn accepts(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != arch {
            return false;
        }
        let norm = |v: Option<&str>| match (arch, v) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_owned),
        };
        match &self.variant {
            None => true,
            Some(want) => norm(Some(want)) == norm(variant),
        }
    }

    /// Index of the first manifest in `index` this platform accepts. Entries without a platform
    /// are skipped: they are attestations or other artifacts, never runnable images.
    pub fn pick(&self, index: &ImageIndex) -> Option<usize> {
        index.manifests().iter().position(|m| {
            m.platform().as_ref().is_some_and(|p| {
                self.accepts(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                )
            })
        })
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Platform, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(Error::InvalidPlatform(s.chars().take(80).collect()));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_platforms() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm"));
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        for bad in ["linux", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn variant_matching() {
        let arm64: Platform = "linux/arm64".parse().unwrap();
        assert!(arm64.accepts("linux", "arm64", Some("v8")));
        let arm64v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(arm64v8.accepts("linux", "arm64", None));
        let armv7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!armv7.accepts("linux", "arm", Some("v6")));
        assert!(!armv7.accepts("windows", "arm", Some("v7")));
    }
}

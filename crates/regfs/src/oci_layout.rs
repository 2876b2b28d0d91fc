//! OCI image layouts on disk: the `oci:DIR[:TAG]` source and destination of `convert-image`.
//!
//! ```text
//! DIR/
//! ├── oci-layout              {"imageLayoutVersion":"1.0.0"}
//! ├── index.json              image index; each manifest descriptor names its tag in the
//! │                           annotation org.opencontainers.image.ref.name
//! └── blobs/
//!     └── sha256/
//!         └── 3f9a…c1         manifests, configs and layers, named by their sha256
//! ```
//!
//! Reading resolves a tag (or the only manifest when no tag is given) to a manifest, descending
//! one level into a nested index by platform. Writing puts blobs under their digest (via a temp
//! file and a rename, so a blob is either complete or absent) and replaces the index entry that
//! carries the same tag.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use regfs_estargz::Digest;
use regfs_registry::{MEDIA_TYPE_OCI_INDEX, Platform, is_index};
use serde::{Deserialize, Serialize};

/// The annotation carrying an index entry's tag.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Manifests, indexes and configs are small JSON; anything larger is not one of them. (The same
/// bound distribution puts on manifests.)
pub const MAX_JSON_BLOB: u64 = 4 << 20;

/// A content descriptor, as much of it as regfs reads; unknown fields are dropped on rewrite.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Descriptor {
    /// The descriptor's digest, parsed (sha256 only, as everywhere in regfs).
    pub fn digest(&self) -> anyhow::Result<Digest> {
        self.digest
            .parse()
            .with_context(|| format!("descriptor digest {:?}", self.digest))
    }
}

/// An image manifest or index body: only the fields regfs needs to walk it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestBody {
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// `oci:DIR[:TAG]` split into its parts; `None` when the string is not an `oci:` location.
pub fn parse_location(s: &str) -> Option<(PathBuf, Option<String>)> {
    let rest = s.strip_prefix("oci:")?;
    // A tag never contains '/', so `oci:/a/b:c` is DIR=/a/b TAG=c, and `oci:./x` has no tag.
    match rest.rsplit_once(':') {
        Some((dir, tag)) if !tag.is_empty() && !tag.contains('/') && !dir.is_empty() => {
            Some((PathBuf::from(dir), Some(tag.to_owned())))
        }
        _ => Some((PathBuf::from(rest), None)),
    }
}

/// One image resolved out of a layout.
pub struct LayoutImage {
    pub manifest_bytes: Vec<u8>,
    pub manifest: ManifestBody,
    pub config_bytes: Vec<u8>,
}

/// An OCI image layout directory.
#[derive(Clone)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout (it must have an `index.json`).
    pub fn open(dir: &Path) -> anyhow::Result<OciLayout> {
        let index = dir.join("index.json");
        if !index.is_file() {
            bail!(
                "{} is not an OCI image layout: no index.json",
                dir.display()
            );
        }
        Ok(OciLayout {
            dir: dir.to_owned(),
        })
    }

    /// Opens the layout at `dir`, creating an empty one if there is none.
    pub fn create(dir: &Path) -> anyhow::Result<OciLayout> {
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .with_context(|| format!("writing {}", marker.display()))?;
        }
        let index = dir.join("index.json");
        if !index.exists() {
            let empty = serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": []});
            fs::write(&index, serde_json::to_vec(&empty)?)
                .with_context(|| format!("writing {}", index.display()))?;
        }
        Ok(OciLayout {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// A small JSON blob (manifest, index, config), digest-checked.
    pub fn read_json_blob(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let file =
            fs::File::open(&path).with_context(|| format!("opening blob {}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        if bytes.len() as u64 > MAX_JSON_BLOB {
            bail!(
                "blob {} is larger than the {MAX_JSON_BLOB}-byte limit for manifests and configs",
                path.display()
            );
        }
        let actual = Digest::sha256(&bytes);
        if actual != *digest {
            bail!(
                "blob {} has digest {actual}, expected {digest}",
                path.display()
            );
        }
        Ok(bytes)
    }

    /// The image tagged `tag` (or the only one if `tag` is `None`), for `platform` when the
    /// entry is an index.
    pub fn resolve(&self, tag: Option<&str>, platform: &Platform) -> anyhow::Result<LayoutImage> {
        let entry = self.entry(tag)?;
        let mut desc = entry;
        // One level of nesting: a tag naming a multi-platform index.
        if is_index(&desc.media_type) {
            let bytes = self.read_json_blob(&desc.digest()?)?;
            let nested: ManifestBody = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing index {}", desc.digest))?;
            desc = pick_platform(&nested.manifests, platform)
                .with_context(|| {
                    format!(
                        "no manifest in index {} matches platform {platform}",
                        desc.digest
                    )
                })?
                .clone();
        }
        self.resolve_manifest(&desc.digest()?)
    }

    /// The tagged index entry of `tag` (or the only one), as written in index.json.
    pub fn entry(&self, tag: Option<&str>) -> anyhow::Result<Descriptor> {
        let index_path = self.dir.join("index.json");
        let index_bytes =
            fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?;
        let index: ManifestBody = serde_json::from_slice(&index_bytes)
            .with_context(|| format!("parsing {}", index_path.display()))?;
        let entry = match tag {
            Some(tag) => index
                .manifests
                .into_iter()
                .find(|d| d.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) == Some(tag))
                .with_context(|| format!("no image tagged {tag:?} in {}", index_path.display()))?,
            None => {
                let n = index.manifests.len();
                match <[Descriptor; 1]>::try_from(index.manifests) {
                    Ok([only]) => only,
                    Err(_) if n == 0 => bail!("{} lists no image", index_path.display()),
                    Err(_) => bail!(
                        "{} lists several images: name one with oci:DIR:TAG",
                        index_path.display()
                    ),
                }
            }
        };
        Ok(entry)
    }

    /// The per-platform manifests of the index tagged `tag` (entries without a platform, such
    /// as attestations, left out), or `None` when the tag names a plain manifest.
    pub fn platform_manifests(&self, tag: Option<&str>) -> anyhow::Result<Option<Vec<Descriptor>>> {
        let entry = self.entry(tag)?;
        if !is_index(&entry.media_type) {
            return Ok(None);
        }
        let bytes = self.read_json_blob(&entry.digest()?)?;
        let nested: ManifestBody = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing index {}", entry.digest))?;
        Ok(Some(
            nested
                .manifests
                .into_iter()
                .filter(|d| d.platform.is_some())
                .collect(),
        ))
    }

    /// The image manifest `manifest_digest` and its config.
    pub fn resolve_manifest(&self, manifest_digest: &Digest) -> anyhow::Result<LayoutImage> {
        let manifest_bytes = self.read_json_blob(manifest_digest)?;
        let manifest: ManifestBody = serde_json::from_slice(&manifest_bytes)
            .with_context(|| format!("parsing manifest {manifest_digest}"))?;
        let config = manifest
            .config
            .as_ref()
            .with_context(|| format!("manifest {manifest_digest} has no config"))?;
        let config_bytes = self.read_json_blob(&config.digest()?)?;
        Ok(LayoutImage {
            manifest_bytes,
            manifest,
            config_bytes,
        })
    }

    /// Writes `bytes` as a blob and returns its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> anyhow::Result<Digest> {
        let digest = Digest::sha256(bytes);
        let dest = self.blob_path(&digest);
        if !dest.exists() {
            let tmp = tempfile::NamedTempFile::new_in(self.dir.join("blobs/sha256"))?;
            fs::write(tmp.path(), bytes).with_context(|| format!("writing {}", dest.display()))?;
            tmp.persist(&dest)
                .with_context(|| format!("renaming into {}", dest.display()))?;
        }
        Ok(digest)
    }

    /// Points `tag` at the manifest `desc` in index.json (replacing the entry with that tag).
    pub fn set_tag(&self, tag: &str, mut desc: Descriptor) -> anyhow::Result<()> {
        let index_path = self.dir.join("index.json");
        let bytes =
            fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?;
        let mut index: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", index_path.display()))?;
        desc.annotations
            .insert(REF_NAME_ANNOTATION.to_owned(), tag.to_owned());
        let entry = serde_json::to_value(&desc)?;
        let manifests = index
            .get_mut("manifests")
            .and_then(serde_json::Value::as_array_mut)
            .with_context(|| format!("{} has no manifests array", index_path.display()))?;
        manifests.retain(|m| m["annotations"][REF_NAME_ANNOTATION].as_str() != Some(tag));
        manifests.push(entry);
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        fs::write(tmp.path(), serde_json::to_vec(&index)?)
            .with_context(|| format!("writing {}", index_path.display()))?;
        tmp.persist(&index_path)
            .with_context(|| format!("renaming into {}", index_path.display()))?;
        Ok(())
    }
}

/// The first entry of an index whose platform `platform` accepts (same rule as the registry
/// client: an unset variant on our side accepts any).
pub fn pick_platform<'a>(
    manifests: &'a [Descriptor],
    platform: &Platform,
) -> Option<&'a Descriptor> {
    manifests.iter().find(|d| {
        let Some(p) = &d.platform else { return false };
        p["os"].as_str() == Some(platform.os.as_str())
            && p["architecture"].as_str() == Some(platform.architecture.as_str())
            && platform
                .variant
                .as_deref()
                .is_none_or(|v| p["variant"].as_str() == Some(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let cases = [
            ("oci:/a/b:tag", Some(("/a/b", Some("tag")))),
            ("oci:/a/b", Some(("/a/b", None))),
            ("oci:rel", Some(("rel", None))),
            ("oci:rel:v1.2", Some(("rel", Some("v1.2")))),
            ("oci:/a:b/c", Some(("/a:b/c", None))),
            ("127.0.0.1:5000/x:y", None),
        ];
        for (input, want) in cases {
            let got = parse_location(input);
            let got = got
                .as_ref()
                .map(|(d, t)| (d.to_str().unwrap(), t.as_deref()));
            assert_eq!(got, want, "{input}");
        }
    }
}

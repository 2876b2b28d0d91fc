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
//! one level into a nested index by platform exactly as a registry does
//! (`regfs_registry::resolve_platform`). Writing puts blobs under their digest (via a temp
//! file and a rename, so a blob is either complete or absent) and replaces the index entry that
//! carries the same tag.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use regfs_estargz::Digest;
use regfs_registry::{MEDIA_TYPE_OCI_INDEX, Platform, PlatformManifest, is_index};
use serde::{Deserialize, Serialize};

use crate::annotation::REF_NAME as REF_NAME_ANNOTATION;
use crate::error::{Context, bail, required};
use crate::{Error, Result};

/// Manifests, indexes and configs are small JSON; anything larger is not one of them. (The same
/// bound distribution puts on manifests.)
pub const MAX_JSON_BLOB: u64 = 4 << 20;

/// A content descriptor as regfs writes it: annotations in a sorted map, so that a manifest
/// written twice from the same input has the same digest (oci-spec's maps are unordered).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of what the descriptor points at.
    pub media_type: String,
    /// Its digest (sha256 only, as everywhere in regfs).
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The platform of an index entry, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// An image manifest or index body: only the fields regfs needs to walk and rewrite it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestBody {
    /// The config descriptor of a manifest.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// The layers of a manifest, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The entries of an index.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl ManifestBody {
    /// Parses a manifest or index body (`what` names it in the error).
    pub fn parse(bytes: &[u8], what: &str) -> Result<ManifestBody> {
        serde_json::from_slice(bytes).with_context(|| format!("parsing {what}"))
    }
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
pub struct LayoutManifest {
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest's bytes.
    pub manifest_bytes: Vec<u8>,
    /// The manifest, parsed.
    pub manifest: ManifestBody,
    /// The config's bytes.
    pub config_bytes: Vec<u8>,
}

/// An OCI image layout directory.
#[derive(Clone)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout (it must have an `index.json`).
    pub fn open(dir: &Path) -> Result<OciLayout> {
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
    pub fn create(dir: &Path) -> Result<OciLayout> {
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
            fs::write(
                &index,
                serde_json::to_vec(&empty).context("encoding index.json")?,
            )
            .with_context(|| format!("writing {}", index.display()))?;
        }
        Ok(OciLayout {
            dir: dir.to_owned(),
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// A small JSON blob (manifest, index, config), digest-checked.
    pub fn read_json_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
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
    /// entry is an index: platform choice and nested-index refusal are the registry's own.
    pub async fn resolve(&self, tag: Option<&str>, platform: &Platform) -> Result<LayoutManifest> {
        let entry = self.entry(tag)?;
        let what = format!("{}:{}", self.dir.display(), tag.unwrap_or("(only image)"));
        let chosen: PlatformManifest =
            regfs_registry::resolve_platform(&what, platform, |digest| {
                let (entry, what) = (&entry, &what);
                async move {
                    let (digest, media_type) = match digest {
                        None => (entry.digest, Some(entry.media_type.as_str())),
                        Some(d) => (d, None),
                    };
                    let bytes = self.read_json_blob(&digest)?;
                    let media_type = regfs_registry::manifest_media_type(&bytes, media_type)
                        .with_context(|| format!("manifest {digest} in {what}"))?;
                    Ok::<_, Error>((Bytes::from(bytes), media_type, digest))
                }
            })
            .await?;
        self.resolve_manifest(&chosen.digest)
    }

    /// The tagged index entry of `tag` (or the only one), as written in index.json.
    pub fn entry(&self, tag: Option<&str>) -> Result<Descriptor> {
        let index_path = self.dir.join("index.json");
        let index_bytes =
            fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?;
        let index: ManifestBody = serde_json::from_slice(&index_bytes)
            .with_context(|| format!("parsing {}", index_path.display()))?;
        let entry = match tag {
            Some(tag) => required!(
                index.manifests.into_iter().find(|d| d
                    .annotations
                    .get(REF_NAME_ANNOTATION)
                    .map(String::as_str)
                    == Some(tag)),
                "no image tagged {tag:?} in {}",
                index_path.display()
            ),
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
    pub fn platform_manifests(&self, tag: Option<&str>) -> Result<Option<Vec<Descriptor>>> {
        let entry = self.entry(tag)?;
        if !is_index(&entry.media_type) {
            return Ok(None);
        }
        let bytes = self.read_json_blob(&entry.digest)?;
        let nested = ManifestBody::parse(&bytes, &format!("index {}", entry.digest))?;
        Ok(Some(
            nested
                .manifests
                .into_iter()
                .filter(|d| d.platform.is_some())
                .collect(),
        ))
    }

    /// The image manifest `manifest_digest` and its config.
    pub fn resolve_manifest(&self, manifest_digest: &Digest) -> Result<LayoutManifest> {
        let manifest_bytes = self.read_json_blob(manifest_digest)?;
        let manifest =
            ManifestBody::parse(&manifest_bytes, &format!("manifest {manifest_digest}"))?;
        let config = required!(
            manifest.config.as_ref(),
            "manifest {manifest_digest} has no config"
        );
        let config_bytes = self.read_json_blob(&config.digest)?;
        Ok(LayoutManifest {
            digest: *manifest_digest,
            manifest_bytes,
            manifest,
            config_bytes,
        })
    }

    /// Writes `bytes` as a blob and returns its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256(bytes);
        let dest = self.blob_path(&digest);
        if !dest.exists() {
            let tmp = tempfile::NamedTempFile::new_in(self.dir.join("blobs/sha256"))
                .with_context(|| format!("creating a temp file in {}", self.dir.display()))?;
            fs::write(tmp.path(), bytes).with_context(|| format!("writing {}", dest.display()))?;
            tmp.persist(&dest)
                .with_context(|| format!("renaming into {}", dest.display()))?;
        }
        Ok(digest)
    }

    /// Points `tag` at the manifest `desc` in index.json (replacing the entry with that tag).
    pub fn set_tag(&self, tag: &str, mut desc: Descriptor) -> Result<()> {
        let index_path = self.dir.join("index.json");
        let bytes =
            fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?;
        let mut index: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", index_path.display()))?;
        desc.annotations
            .insert(REF_NAME_ANNOTATION.to_owned(), tag.to_owned());
        let entry = serde_json::to_value(&desc).context("encoding an index entry")?;
        let manifests = required!(
            index
                .get_mut("manifests")
                .and_then(serde_json::Value::as_array_mut),
            "{} has no manifests array",
            index_path.display()
        );
        manifests.retain(|m| m["annotations"][REF_NAME_ANNOTATION].as_str() != Some(tag));
        manifests.push(entry);
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("creating a temp file in {}", self.dir.display()))?;
        fs::write(
            tmp.path(),
            serde_json::to_vec(&index).context("encoding index.json")?,
        )
        .with_context(|| format!("writing {}", index_path.display()))?;
        tmp.persist(&index_path)
            .with_context(|| format!("renaming into {}", index_path.display()))?;
        Ok(())
    }
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

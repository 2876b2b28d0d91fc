//! Options shared by several subcommands: registry access, lazy serving, conversion.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use regfs_image::{ConversionOptions, ImageLocation, ImageSource, LazyOptions, OpenOptions};
use regfs_registry::{Client, ClientConfig, Platform};

/// Where registries are and how to reach them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Reach this registry (`host[:port]`) over plain HTTP (loopback hosts always are).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// containerd-style hosts directory (`<host>/hosts.toml`: mirrors, CAs, headers).
    #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
    /// Platform to pick from a multi-platform index (default: this host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    /// HTTP(S) proxy for every registry request (e.g. a P2P dfdaemon).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
}

impl RegistryArgs {
    /// A client configured from these options.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(self.config()).context("setting up the registry client")
    }

    /// The registry client's configuration these options describe.
    pub fn config(&self) -> ClientConfig {
        ClientConfig {
            hosts_dir: Some(self.hosts_dir.clone()).filter(|d| d.is_dir()),
            insecure_registries: self.insecure_registries.clone(),
            proxy: self.proxy.clone(),
            platform: self.platform.clone(),
            ..ClientConfig::default()
        }
    }

    /// The platform to pick from an index.
    pub fn platform(&self) -> Platform {
        self.platform.clone().unwrap_or_else(Platform::host)
    }
}

/// Options of a lazily served image (`mount`, `run`, `optimize`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LazyArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Chunk cache directory (default $REGFS_CACHE_DIR or /var/lib/regfs/cache).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Keep at most this much in the chunk cache (bytes, or with a K/M/G/T suffix); least
    /// recently used chunks are evicted. Default: unbounded.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Don't prefetch the prioritized files (`.prefetch.landmark` range) of each layer.
    #[arg(long)]
    pub no_prefetch: bool,
    /// After the prefetch, fetch whole layers at low priority (yielding to on-demand reads).
    #[arg(long)]
    pub background_fetch: bool,
    /// Mount layers whose TOC digest cannot be verified (no toc.digest annotation).
    #[arg(long)]
    pub insecure_skip_verify: bool,
}

/// What serving an image needs: the client, the image's source, the cache and the options.
pub struct Lazy {
    pub client: Client,
    pub source: Arc<dyn ImageSource>,
    pub cache: Arc<regfs_blob::ChunkCache>,
    pub options: LazyOptions,
}

impl LazyArgs {
    /// Wires the image `reference` (registry or `oci:DIR[:TAG]`) to a client and a cache.
    pub fn wire(&self, reference: &str) -> anyhow::Result<Lazy> {
        let client = self.registry.client()?;
        let source = ImageLocation::parse(reference)?.source(&client)?;
        let cache_dir = regfs_image::cache_dir(self.cache_dir.clone());
        let cache = regfs_image::open_capped_cache(&cache_dir, self.cache_size)?;
        let options = LazyOptions {
            open: OpenOptions {
                insecure_skip_verify: self.insecure_skip_verify,
                cache_dir,
                lazy_only: false,
                platform: self.registry.platform.clone(),
            },
            no_prefetch: self.no_prefetch,
            background_fetch: self.background_fetch,
            record_access: false,
            layer: None,
        };
        Ok(Lazy {
            client,
            source,
            cache,
            options,
        })
    }
}

/// Conversion options: one definition for `convert`, `convert-image` and `optimize`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConvertArgs {
    /// Uncompressed bytes per chunk (a gzip member each; default 4 MiB, the reference's).
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u64>,
    /// Gzip level 1-12 (libdeflate; default 6; 9 = the reference's default, 10-12 smaller and
    /// slower).
    #[arg(long, value_parser = clap::value_parser!(u32).range(
        i64::from(regfs_estargz::MIN_LEVEL)..=i64::from(regfs_estargz::MAX_LEVEL)))]
    pub level: Option<u32>,
}

impl ConvertArgs {
    /// The library's options, with the prioritized files list at `prioritized` read.
    pub fn options(
        &self,
        prioritized: Option<&std::path::Path>,
    ) -> anyhow::Result<ConversionOptions> {
        let options = ConversionOptions {
            chunk_size: self.chunk_size,
            level: self.level,
            prioritized_files: prioritized.map(regfs_image::read_prioritized).transpose()?,
        };
        options.estargz()?;
        Ok(options)
    }
}

/// `123`, `64K`, `1.5G`… in bytes (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'B' => 0,
                _ => return Err(format!("unknown size suffix {c:?} in {s:?}")),
            };
            (&s[..i], 1u64 << shift)
        }
        _ => (s, 1),
    };
    let value: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size out of range: {s:?}"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
    }
}

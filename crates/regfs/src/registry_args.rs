//! Registry options shared by every subcommand that talks to a registry.

use std::path::PathBuf;

use anyhow::Context;
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
        let cfg = ClientConfig {
            hosts_dir: Some(self.hosts_dir.clone()).filter(|d| d.is_dir()),
            insecure_registries: self.insecure_registries.clone(),
            proxy: self.proxy.clone(),
            platform: self.platform.clone(),
            ..ClientConfig::default()
        };
        Client::new(cfg).context("setting up the registry client")
    }
}

//! The subcommands, one module each; every module exposes `Args` and `run`.

use std::process::ExitCode;

mod cache;
mod convert;
mod convert_image;
mod demo;
mod extract;
mod inspect;
mod inspect_ref;
pub mod mount;
mod optimize;
pub mod run;
pub mod snapshotter;
mod stats;
mod umount;

/// Command line of the `regfs` binary.
#[derive(clap::Parser)]
#[command(
    name = "regfs",
    version,
    about = "Lazy-pulling eStargz images from OCI registries"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Convert a tar layer (plain, gzip or zstd) into an eStargz blob.
    Convert(convert::Args),
    /// Summarise an eStargz blob (or print its TOC entries with --json).
    Inspect(inspect::Args),
    /// Extract an eStargz blob into a directory through the verifying random-access reader.
    Extract(extract::Args),
    /// Convert every layer of an image to eStargz and push it (registry ref or oci:DIR[:TAG]).
    ConvertImage(convert_image::Args),
    /// Show (du) or trim (gc) the on-disk chunk cache of lazy mounts.
    Cache(cache::Args),
    /// Demo: local registry, sample image, convert, lazy mount, stats, run.
    Demo(demo::Args),
    /// Mount an image from its registry, lazily, as a read-only filesystem.
    Mount(mount::Args),
    /// Record a workload's file accesses and rebuild the image with them prefetched.
    Optimize(optimize::Args),
    /// Run an image straight from its registry (lazy mount + overlay + namespaces).
    Run(run::Args),
    /// Unmount a regfs mount.
    Umount(umount::Args),
    /// Hand a running `mount --daemon` over to a server of the regfs binary installed now.
    Takeover(mount::TakeoverArgs),
    /// Show what a live mount has fetched, per layer.
    Stats(stats::Args),
    /// Serve containerd as the remote snapshotter `regfs` (lazy eStargz layers, overlayfs).
    Snapshotter(snapshotter::Args),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Convert(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Extract(args) => extract::run(args),
        Command::ConvertImage(args) => convert_image::run(args),
        Command::Cache(args) => cache::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Optimize(args) => optimize::run(args),
        Command::Run(args) => run::run(args),
        Command::Umount(args) => umount::run(args),
        Command::Takeover(args) => mount::takeover(args),
        Command::Stats(args) => stats::run(args),
        Command::Snapshotter(args) => snapshotter::run(args),
    }
}

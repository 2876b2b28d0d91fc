//! `regfs extract BLOB DIR`: materialise a layer through the verifying random-access reader,
//! equal to `tar -x` of the same blob (see `regfs_image::extract`).

use std::path::PathBuf;
use std::process::ExitCode;

use regfs_estargz::Digest;

#[derive(clap::Args)]
pub struct Args {
    /// The eStargz (or legacy stargz) blob.
    blob: PathBuf,
    /// Target directory (created if missing).
    dir: PathBuf,
    /// Require the TOC JSON to have this digest (the layer's `toc.digest` annotation).
    #[arg(long)]
    toc_digest: Option<Digest>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    regfs_image::extract(&args.blob, &args.dir, args.toc_digest.as_ref())?;
    Ok(ExitCode::SUCCESS)
}

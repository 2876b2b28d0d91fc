//! `regfs`: run container images straight from an OCI registry without pulling them.
//!
//! Thin main: parse the command line, set up tracing on stderr, run the subcommand, print the
//! error chain once and turn the outcome into an exit code. One module per subcommand in `cmd/`.

// TEMPORARY: removed when the image logic moves to regfs-image
#![allow(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cmd;
mod control;
mod layer_convert;
mod lazy;
mod oci_layout;
mod registry_args;
mod remote;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error")),
        )
        .init();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("regfs: {err:#}");
            ExitCode::FAILURE
        }
    }
}

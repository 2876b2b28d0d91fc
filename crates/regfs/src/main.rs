//! `regfs`: run container images straight from an OCI registry without pulling them.
//!
//! Thin main: parse the command line, set up tracing on stderr, run the subcommand, print the
//! error chain once and turn the outcome into an exit code. One module per subcommand in `cmd/`.

use std::process::ExitCode;

use clap::Parser;

mod args;
mod cmd;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    // The snapshotter is a service: its config file may set the level; the CLI stays quiet.
    let default_filter = match &cli.command {
        cmd::Command::Snapshotter(args) => cmd::snapshotter::log_level(args).map_or_else(
            || "info,fuser=error".to_owned(),
            |l| format!("{l},fuser=error"),
        ),
        _ => "warn,fuser=error".to_owned(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
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

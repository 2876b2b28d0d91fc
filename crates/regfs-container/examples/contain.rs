//! Runs a command in a root directory: `contain ROOT [-u USER] [-n] [-t] CMD...`
//! (`-n` is `--net none`, `-t` a pseudo-terminal). For trying the runtime
//! by hand; `regfs run` is the real front end.

use std::process::ExitCode;

use regfs_container::{ContainerSpec, NetMode, run};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(root) = args.next() else {
        eprintln!("usage: contain ROOT [-u USER] [-n] [-t] CMD...");
        return ExitCode::from(125);
    };
    let mut spec = ContainerSpec::new(root, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-u" => spec.user = args.next(),
            "-n" => spec.net = NetMode::None,
            "-t" => spec.tty = true,
            _ => {
                spec.args.push(arg);
                spec.args.extend(args.by_ref());
            }
        }
    }
    let status = run(&spec).unwrap_or_else(|e| {
        eprintln!("contain: {e}");
        e.exit_status()
    });
    ExitCode::from(u8::try_from(status).unwrap_or(255))
}

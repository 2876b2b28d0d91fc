//! Stdio pass-through, signal forwarding and `--tty`, seen from outside: this
//! binary re-runs itself as a child process (selected by `REGFS_STDIO_CHILD`)
//! that calls `run` and exits with its status, the way the `regfs` binary
//! does, and the parent checks the child's stdout, stderr and exit status.
//! A custom harness, because a test thread cannot own the process's stdio
//! or receive process-directed signals alone.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod busybox;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::Duration;

use busybox::Rootfs;

const CHILD_ENV: &str = "REGFS_STDIO_CHILD";
const ROOTFS_ENV: &str = "REGFS_STDIO_ROOTFS";
const OUT_ENV: &str = "REGFS_STDIO_OUT";

/// How long to wait for a container to signal readiness before giving up:
/// a bound against hanging forever, not a timing assertion.
const READY_POLLS: u32 = 3000;
const READY_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Shell scripts the child runs, by case name.
fn script(case: &str) -> &'static str {
    match case {
        "echo" => "echo hello",
        "stdin" => "cat",
        "streams" => "echo out; echo err >&2; exit 7",
        "signals" => {
            "trap 'echo got USR1 >> /out/log' USR1; trap 'echo got TERM; exit 3' TERM; \
             touch /out/ready; while :; do sleep 0.05; done"
        }
        "default-term" => "touch /out/ready; exec sleep 1000",
        "tty" => "tty; test -t 0 && test -t 1 && echo both-tty",
        other => panic!("unknown case {other}"),
    }
}

fn child(case: &str) -> ExitCode {
    let rootfs = std::env::var(ROOTFS_ENV).expect("rootfs env");
    let out = std::env::var(OUT_ENV).expect("out env");
    let mut spec = regfs_container::ContainerSpec::new(
        rootfs,
        vec!["sh".into(), "-c".into(), script(case).into()],
    );
    spec.volumes.push(regfs_container::Volume {
        host: out.into(),
        container: "/out".into(),
        readonly: false,
    });
    spec.tty = case == "tty";
    let status = match regfs_container::run(&spec) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("regfs run: {e}");
            e.exit_status()
        }
    };
    ExitCode::from(u8::try_from(status).unwrap_or(255))
}

struct Parent {
    rootfs: Rootfs,
    out: tempfile::TempDir,
}

impl Parent {
    fn command(&self, case: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.env(CHILD_ENV, case)
            .env(ROOTFS_ENV, self.rootfs.path())
            .env(OUT_ENV, self.out.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, case: &str) -> Output {
        self.command(case).output().expect("spawn child")
    }

    fn out_path(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }
}

fn wait_for(path: &Path, contains: &str) {
    for _ in 0..READY_POLLS {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(contains)) {
            return;
        }
        std::thread::sleep(READY_POLL_INTERVAL);
    }
    panic!(
        "the container never wrote {contains:?} to {}",
        path.display()
    );
}

fn kill(child: &std::process::Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a known signal");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill child");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn echo_reaches_stdout(p: &Parent) {
    let out = p.run("echo");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "hello\n".into()),
        "stderr: {}",
        text(&out.stderr)
    );
}

fn stdin_is_passed_through(p: &Parent) {
    let mut child = p
        .command("stdin")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"piped data\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "piped data\n".into())
    );
}

fn stdout_stderr_and_status_are_separate(p: &Parent) {
    let out = p.run("streams");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
}

fn signals_are_forwarded_to_the_command(p: &Parent) {
    let _ = std::fs::remove_file(p.out_path("ready"));
    let child = p.command("signals").spawn().expect("spawn");
    wait_for(&p.out_path("ready"), "");
    kill(&child, libc::SIGUSR1);
    wait_for(&p.out_path("log"), "got USR1");
    kill(&child, libc::SIGTERM);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(3), "got TERM\n".into()),
        "stderr: {}",
        text(&out.stderr)
    );
}

fn forwarded_term_kills_a_command_without_handler(p: &Parent) {
    let _ = std::fs::remove_file(p.out_path("ready"));
    let child = p.command("default-term").spawn().expect("spawn");
    wait_for(&p.out_path("ready"), "");
    kill(&child, libc::SIGTERM);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr: {}",
        text(&out.stderr)
    );
}

fn tty_gives_the_command_a_pty(p: &Parent) {
    let out = p.run("tty");
    // The pty's line discipline turns "\n" into "\r\n".
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "/dev/pts/0\r\nboth-tty\r\n".into()),
        "stderr: {}",
        text(&out.stderr)
    );
}

type Case = (&'static str, fn(&Parent));

const CASES: &[Case] = &[
    ("echo_reaches_stdout", echo_reaches_stdout),
    ("stdin_is_passed_through", stdin_is_passed_through),
    (
        "stdout_stderr_and_status_are_separate",
        stdout_stderr_and_status_are_separate,
    ),
    (
        "signals_are_forwarded_to_the_command",
        signals_are_forwarded_to_the_command,
    ),
    (
        "forwarded_term_kills_a_command_without_handler",
        forwarded_term_kills_a_command_without_handler,
    ),
    ("tty_gives_the_command_a_pty", tty_gives_the_command_a_pty),
];

fn main() -> ExitCode {
    if let Ok(case) = std::env::var(CHILD_ENV) {
        return child(&case);
    }
    // Enough of libtest's command line for `--list`, a name filter and
    // `--exact`, so test runners can list and select these cases.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let selected = |name: &str| match &filter {
        None => true,
        Some(f) if exact => name == f,
        Some(f) => name.contains(f.as_str()),
    };
    if args.iter().any(|a| a == "--list") {
        for (name, _) in CASES.iter().filter(|(name, _)| selected(name)) {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let parent = Parent {
        rootfs: Rootfs::build(),
        out: busybox::Output::new().into_dir(),
    };

    let mut failed = 0;
    let mut passed = 0;
    for (name, case) in CASES.iter().filter(|(name, _)| selected(name)) {
        match std::panic::catch_unwind(|| case(&parent)) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("stdio: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

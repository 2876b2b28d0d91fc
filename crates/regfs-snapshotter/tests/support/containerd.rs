//! A private containerd (Debian's 1.6 + runc) with its own root, state and socket in a temp dir
//! and our snapshotter configured as the proxy plugin `regfs`; stopped by PID on drop. Adapted
//! from `crates/regfs/tests/support/containerd.rs` (same start-up, plus `[proxy_plugins]`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::registry::which;

/// containerd opens its socket within a second or two; more is a broken setup.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// The namespace the tests use.
pub const NAMESPACE: &str = "regfs-snapshotter";
/// The proxy plugin's name, as given to `--snapshotter`.
pub const SNAPSHOTTER: &str = "regfs";

pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    root: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (containerd, runc, mounts); run it as root"
    );
}

impl Containerd {
    /// Starts containerd with the snapshotter listening on `snapshotter_socket` as `regfs`.
    pub fn start(snapshotter_socket: &Path) -> Containerd {
        require_root();
        let bin =
            which("containerd").expect("the test needs `containerd` (apt-get install containerd)");
        which("runc").expect("the test needs `runc` (apt-get install runc)");
        which("ctr").expect("the test needs `ctr` (apt-get install containerd)");
        // A short path: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("containerd dir");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("c.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
[proxy_plugins]
  [proxy_plugins.{name}]
    type = "snapshot"
    address = "{snap}"
"#,
                root = root.display(),
                state = state.display(),
                sock = socket.display(),
                name = SNAPSHOTTER,
                snap = snapshotter_socket.display(),
            ),
        )
        .expect("write containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("containerd log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd {
            child,
            socket,
            root,
            dir,
        };
        let deadline = Instant::now() + STARTUP_LIMIT;
        while !(c.socket.exists()
            && c.ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success()))
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up on {}",
                c.socket.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr --address SOCK --namespace NAMESPACE`.
    pub fn ctr(&self) -> Command {
        self.tool("ctr")
    }

    /// `ctr-remote --address SOCK --namespace NAMESPACE` (stargz-snapshotter's ctr).
    pub fn ctr_remote(&self) -> Command {
        which("ctr-remote")
            .expect("the test needs `ctr-remote` (apt-get install stargz-snapshotter)");
        self.tool("ctr-remote")
    }

    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(name);
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE);
        cmd
    }

    /// `ctr snapshots --snapshotter regfs ARGS..`, stdout.
    #[track_caller]
    pub fn snapshots(&self, args: &[&str]) -> String {
        let out = super::run_ok(
            self.ctr()
                .args(["snapshots", "--snapshotter", SNAPSHOTTER])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run --rm --snapshotter regfs REF ID ARGS..`, stdout.
    #[track_caller]
    pub fn run(&self, reference: &str, id: &str, args: &[&str]) -> String {
        let out: Output = super::run_ok(
            self.ctr()
                .args(["run", "--rm", "--snapshotter", SNAPSHOTTER, reference, id])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(out) = self.ctr().args(["containers", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr().args(["task", "kill", "-s", "KILL", id]).output();
                let _ = self.ctr().args(["task", "rm", "-f", id]).output();
                let _ = self.ctr().args(["containers", "rm", id]).output();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in mounts_under(&self.root) {
            let _ = Command::new("umount").arg(m).output();
        }
    }
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut out: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    out
}

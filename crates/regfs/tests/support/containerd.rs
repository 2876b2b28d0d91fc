//! A private containerd (Debian's 1.6 + runc) with its own root, state and socket in a temp dir,
//! started the way `shared/testbed/containerd.sh` does (no systemd, CRI disabled, isolated content
//! sharing) and stopped by PID on drop. Tests drive it with `ctr`.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::registry::which;

/// containerd opens its socket within a second or two; more is a broken setup.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// The namespace the tests use.
pub const NAMESPACE: &str = "regfs-image-cli";

pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        super::oracle::require_root();
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
"#,
                root = root.display(),
                state = state.display(),
                sock = socket.display()
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
            _dir: dir,
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
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE);
        cmd
    }

    /// `ctr images pull --plain-http REF`.
    #[track_caller]
    pub fn pull(&self, reference: &str) {
        super::run_ok(
            self.ctr()
                .args(["images", "pull", "--plain-http", reference]),
        );
    }

    /// `ctr run --rm REF ID ARGS..`, returning its output.
    #[track_caller]
    pub fn run(&self, reference: &str, id: &str, args: &[&str]) -> Output {
        super::run_ok(self.ctr().args(["run", "--rm", reference, id]).args(args))
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
        // Overlay mounts left under our root would keep the temp dir from being removed.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.root.display().to_string();
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&root))
                .collect();
            ours.sort_unstable_by(|a, b| b.cmp(a));
            for m in ours {
                let _ = Command::new("umount").arg(m).output();
            }
        }
    }
}

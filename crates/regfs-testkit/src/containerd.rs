//! A private containerd (Debian's 1.6 + runc) with its own root, state and socket in a temp dir,
//! started the way `shared/testbed/containerd.sh` does (no systemd, CRI disabled, isolated
//! content sharing) and stopped by PID on drop; optionally with a proxy snapshotter plugin, or
//! with its CRI plugin enabled on top of one (as a Kubernetes node runs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{require_root, require_tool, which};

/// containerd opens its socket within a second or two; more is a broken setup.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// A running containerd; its containers, process and leftover mounts are cleaned up on drop.
pub struct Containerd {
    child: Child,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// The namespace `ctr` commands use.
    pub namespace: String,
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// containerd with its own overlayfs snapshotter only; `ctr` uses `namespace`.
    pub fn start(namespace: &str) -> Containerd {
        Containerd::start_with(namespace, None, None)
    }

    /// containerd with the proxy snapshotter `name` listening on `socket`.
    pub fn start_with_snapshotter(namespace: &str, name: &str, socket: &Path) -> Containerd {
        Containerd::start_with(namespace, Some((name, socket)), None)
    }

    /// containerd with its CRI plugin serving on [`Containerd::socket`], pulling through the
    /// proxy snapshotter `name` on `socket` with snapshot annotations on (what remote
    /// snapshotters need), registries configured by the hosts.toml directory `hosts_dir`, and
    /// empty CNI directories (pulls need no network plugin). `ctr` uses CRI's namespace,
    /// `k8s.io`.
    pub fn start_cri(name: &str, socket: &Path, hosts_dir: &Path) -> Containerd {
        Containerd::start_with("k8s.io", Some((name, socket)), Some(hosts_dir))
    }

    fn start_with(
        namespace: &str,
        snapshotter: Option<(&str, &Path)>,
        cri_hosts_dir: Option<&Path>,
    ) -> Containerd {
        require_root();
        let bin = require_tool("containerd", "containerd");
        require_tool("runc", "runc");
        require_tool("ctr", "containerd");
        // A short path: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir()
            .expect("containerd dir");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("c.sock");
        let config = dir.path().join("config.toml");
        let disabled = if cri_hosts_dir.is_some() {
            ""
        } else {
            r#""io.containerd.grpc.v1.cri""#
        };
        let mut toml = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled}]
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
        );
        if let Some((name, snap)) = snapshotter {
            toml.push_str(&format!(
                "[proxy_plugins]\n  [proxy_plugins.{name}]\n    type = \"snapshot\"\n    address = \"{}\"\n",
                snap.display()
            ));
        }
        if let (Some(hosts), Some((name, _))) = (cri_hosts_dir, snapshotter) {
            let cni = dir.path().join("cni");
            for d in ["bin", "conf"] {
                std::fs::create_dir_all(cni.join(d)).expect("cni dirs");
            }
            toml.push_str(&format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{name}"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}/bin"
    conf_dir = "{cni}/conf"
"#,
                hosts = hosts.display(),
                cni = cni.display()
            ));
        }
        std::fs::write(&config, toml).expect("write containerd config");
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
            namespace: namespace.to_owned(),
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
                "containerd did not come up on {}; log:\n{}",
                c.socket.display(),
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr --address SOCK --namespace NS`.
    pub fn ctr(&self) -> Command {
        self.tool("ctr")
    }

    /// `ctr-remote --address SOCK --namespace NS` (stargz-snapshotter's ctr).
    pub fn ctr_remote(&self) -> Command {
        require_tool("ctr-remote", "stargz-snapshotter");
        self.tool("ctr-remote")
    }

    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(name);
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    /// `ctr images pull --plain-http REF`.
    #[track_caller]
    pub fn pull(&self, reference: &str) {
        run_ok(
            self.ctr()
                .args(["images", "pull", "--plain-http", reference]),
        );
    }

    /// `ctr run --rm REF ID ARGS..`, returning its output.
    #[track_caller]
    pub fn run(&self, reference: &str, id: &str, args: &[&str]) -> Output {
        run_ok(self.ctr().args(["run", "--rm", reference, id]).args(args))
    }

    /// containerd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The directory holding containerd's root, state, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs `cmd`, failing the test with its output unless it succeeds.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
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

impl Drop for Containerd {
    fn drop(&mut self) {
        if which("ctr").is_some()
            && let Ok(out) = self.ctr().args(["containers", "ls", "-q"]).output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr().args(["task", "kill", "-s", "KILL", id]).output();
                let _ = self.ctr().args(["task", "rm", "-f", id]).output();
                let _ = self.ctr().args(["containers", "rm", id]).output();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Overlay mounts left under our root would keep the temp dir from being removed.
        for m in mounts_under(&self.root) {
            let _ = Command::new("umount").arg(m).output();
        }
    }
}

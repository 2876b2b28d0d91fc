//! A container root built from Debian's busybox-static, for the tests.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use regfs_container::{ContainerSpec, Volume};
use tempfile::TempDir;

/// Where Debian's busybox-static package installs the static binary.
const BUSYBOX: &str = "/bin/busybox";

/// A throw-away root filesystem: /bin/busybox plus one symlink per applet,
/// /etc/passwd and /etc/group with root and `app` (uid 1000, also in
/// `staff` 50), a lower-only file /data/lower.txt and a non-executable
/// /bin/notexec.
pub struct Rootfs {
    dir: TempDir,
}

impl Rootfs {
    pub fn build() -> Rootfs {
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} is missing: install Debian's busybox-static package (apt-get install busybox-static)"
        );
        assert!(
            nix_is_root(),
            "these tests create namespaces and mounts: run them as root"
        );
        let dir = tempfile::Builder::new()
            .prefix("regfs-rootfs-")
            .tempdir()
            .expect("create rootfs tempdir");
        let root = dir.path();
        for d in ["bin", "etc", "data", "root", "home/app", "tmp"] {
            fs::create_dir_all(root.join(d)).expect("create rootfs dir");
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
            .expect("chmod /tmp");
        fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
        let list = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .expect("run busybox --list");
        assert!(list.status.success(), "busybox --list failed");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                    .expect("symlink applet");
            }
        }
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .expect("write passwd");
        fs::write(
            root.join("etc/group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
        )
        .expect("write group");
        fs::write(root.join("data/lower.txt"), "from lower\n").expect("write lower file");
        fs::write(root.join("bin/notexec"), "#!/bin/sh\necho never\n").expect("write notexec");
        fs::set_permissions(root.join("bin/notexec"), fs::Permissions::from_mode(0o644))
            .expect("chmod notexec");
        Rootfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A spec running `sh -c SCRIPT` in this root.
    pub fn spec(&self, script: &str) -> ContainerSpec {
        ContainerSpec::new(self.path(), vec!["sh".into(), "-c".into(), script.into()])
    }

    /// Every path under the root with its type, mode, owner, size, mtime,
    /// symlink target and content hash: equal listings mean an untouched tree.
    pub fn listing(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.path(), self.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .display()
            .to_string();
        let detail = if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&path).expect("readlink").display())
        } else if meta.is_file() {
            let mut h = DefaultHasher::new();
            fs::read(&path).expect("read file").hash(&mut h);
            format!("hash {:x}", h.finish())
        } else {
            String::new()
        };
        out.push(format!(
            "{rel} mode {:o} uid {} gid {} size {} mtime {}.{} {detail}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
        if meta.is_dir() {
            walk(root, &path, out);
        }
    }
}

fn nix_is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A host directory mounted at /out so a container's output can be read;
/// world-writable so non-root users in the container can write there.
pub struct Output {
    dir: TempDir,
}

impl Output {
    pub fn new() -> Output {
        let dir = tempfile::Builder::new()
            .prefix("regfs-out-")
            .tempdir()
            .expect("create output dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))
            .expect("chmod output dir");
        Output { dir }
    }

    pub fn volume(&self) -> Volume {
        Volume {
            host: self.dir.path().to_owned(),
            container: PathBuf::from("/out"),
            readonly: false,
        }
    }

    pub fn into_dir(self) -> TempDir {
        self.dir
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_else(|e| panic!("read /out/{name}: {e}"))
    }
}

/// Runs `script` with its stdout and stderr captured in /out/stdout;
/// returns the exit status and that output.
pub fn run_captured(mut spec: ContainerSpec, script: &str) -> (i32, String) {
    let out = Output::new();
    spec.volumes.push(out.volume());
    spec.args = vec![
        "sh".into(),
        "-c".into(),
        format!("exec > /out/stdout 2>&1\n{script}"),
    ];
    let status = regfs_container::run(&spec).unwrap_or_else(|e| panic!("run {script:?}: {e}"));
    (status, out.read("stdout"))
}

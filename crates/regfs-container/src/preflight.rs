//! Checks that `regfs run` can work here, with one clear error each.

use std::path::{Path, PathBuf};

use crate::Error;

/// The namespace kinds a container uses, as named under /proc/self/ns.
const NAMESPACES: [&str; 5] = ["mnt", "pid", "uts", "ipc", "net"];

/// Fails with the first missing requirement: root, `/dev/fuse`, overlayfs
/// (listed in /proc/filesystems), and mount/PID/UTS/IPC/network namespaces.
pub fn preflight() -> Result<(), Error> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Err(Error::NotRoot { euid });
    }
    let fuse = Path::new("/dev/fuse");
    if !fuse.exists() {
        return Err(Error::MissingFuse {
            path: fuse.to_owned(),
        });
    }
    let filesystems = Path::new("/proc/filesystems");
    let listed =
        std::fs::read_to_string(filesystems).map_err(|e| Error::io("read", filesystems, e))?;
    if !lists_overlay(&listed) {
        return Err(Error::OverlayUnsupported {
            path: filesystems.to_owned(),
        });
    }
    for kind in NAMESPACES {
        let path = PathBuf::from(format!("/proc/self/ns/{kind}"));
        if !path.exists() {
            return Err(Error::NamespaceUnsupported { kind, path });
        }
    }
    Ok(())
}

/// Whether /proc/filesystems text lists overlayfs (`nodev\toverlay`).
fn lists_overlay(filesystems: &str) -> bool {
    filesystems
        .lines()
        .any(|line| line.split_whitespace().last() == Some("overlay"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_is_found_only_as_a_whole_name() {
        assert!(lists_overlay("nodev\ttmpfs\nnodev\toverlay\n"));
        assert!(!lists_overlay("nodev\ttmpfs\nnodev\toverlayx\n\text4\n"));
        assert!(!lists_overlay(""));
    }
}

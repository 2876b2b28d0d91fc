//! The container's root: an overlay of the image, with /dev, /sys, host
//! files and volumes mounted into it, then made the root with pivot_root.
//!
//! Everything here runs on the container thread after it entered its own
//! mount namespace and made every mount private, so no mount is ever seen by
//! the host and all of them vanish with the namespace. The layout, on a tmpfs
//! mounted on a scratch directory of the host:
//!
//! ```text
//! SCRATCH/            tmpfs, only visible inside the namespace
//! ├── upper/          overlay upperdir (or --upper DIR/upper on the host)
//! ├── work/           overlay workdir  (or --upper DIR/work)
//! └── merged/         overlay lowerdir=LOWER → becomes /
//!     ├── dev/        tmpfs: null zero full random urandom tty, pts/ (devpts
//!     │               newinstance), ptmx -> pts/ptmx, shm/ (tmpfs), mqueue/
//!     ├── proc/       mounted by the container init (it must be in the PID ns)
//!     ├── sys/        sysfs, read-only; firmware/ and powercap masked
//!     ├── etc/hosts, etc/resolv.conf   bind-mounted read-only from the host
//!     └── VOLUMES     -v HOST:CTR[:ro] binds
//! ```
//!
//! Writes copy up into `upper/` and deletes become overlayfs whiteouts
//! there, exactly as in Docker's overlay2; the lower directory is never
//! written. Paths inside the image are resolved with [`resolve_in_root`],
//! so a symlink in a (possibly hostile) image cannot point a mount at the host.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::{ContainerSpec, Error};

/// Linux's own limit on symlinks followed in one path lookup (MAXSYMLINKS);
/// past it a lookup is a loop, in an image or on the host.
const MAX_SYMLINK_HOPS: usize = 40;

/// Size cap of the /dev tmpfs: it only holds device nodes and symlinks.
const DEV_TMPFS_OPTIONS: &str = "mode=755,size=65536k";
/// Docker's default /dev/shm size (64 MiB).
const SHM_TMPFS_OPTIONS: &str = "mode=1777,size=65536k";

/// The character devices of a minimal /dev, as docker/runc create them.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// /sys directories docker hides under an empty read-only tmpfs: firmware
/// tables and power-capping (energy counters leak side channels).
const SYS_MASKED_DIRS: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// Files of the host shared with every container, read-only.
const HOST_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

fn mount(
    op: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(|e| Error::sys(op, target, e))
}

fn mkdir_p(path: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| Error::io("create directory", path, e))
}

/// Joins `path` (interpreted inside the container) onto `root`, following
/// symlinks as the container would see them: absolute targets and `..`
/// never leave `root`. Missing components are kept as they are.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, Error> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<OsString> = components_reversed(path);
    let mut hops = 0usize;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(Error::sys(
                        "resolve (symlink loop)",
                        root.join(path.strip_prefix("/").unwrap_or(path)),
                        Errno::ELOOP,
                    ));
                }
                let target = fs::read_link(&candidate)
                    .map_err(|e| Error::io("read symlink", &candidate, e))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(components_reversed(&target));
            }
            _ => resolved.push(&part),
        }
    }
    Ok(root.join(resolved))
}

/// The normal and `..` components of `path`, last first (a stack).
fn components_reversed(path: &Path) -> Vec<OsString> {
    let mut parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

/// Makes sure a mount target exists at `target` (already resolved): a
/// directory, or an empty file when `is_dir` is false. A symlink or a file
/// of the wrong kind in the way is replaced (in the upper layer only).
fn ensure_target(target: &Path, is_dir: bool) -> Result<(), Error> {
    if let Ok(meta) = fs::symlink_metadata(target) {
        if meta.is_dir() == is_dir && !meta.file_type().is_symlink() {
            return Ok(());
        }
        let removed = if meta.is_dir() {
            fs::remove_dir(target)
        } else {
            fs::remove_file(target)
        };
        removed.map_err(|e| Error::io("replace mount target", target, e))?;
    }
    if is_dir {
        return mkdir_p(target);
    }
    if let Some(parent) = target.parent() {
        mkdir_p(parent)?;
    }
    fs::File::create(target)
        .map(drop)
        .map_err(|e| Error::io("create mount target", target, e))
}

/// Refuses paths overlayfs cannot take in its comma/colon separated options.
fn overlay_path(path: &Path) -> Result<&str, Error> {
    match path.to_str() {
        Some(s) if !s.contains([',', ':', '\\']) => Ok(s),
        _ => Err(Error::InvalidSpec {
            reason: format!(
                "overlayfs cannot use the path {} (contains ',', ':' or '\\')",
                path.display()
            ),
        }),
    }
}

/// Builds the container root under `scratch` and returns the merged dir.
/// The caller must already be in a private mount namespace.
pub(crate) fn build(spec: &ContainerSpec, lower: &Path, scratch: &Path) -> Result<PathBuf, Error> {
    mount(
        "mount tmpfs on",
        Some(Path::new("tmpfs")),
        scratch,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=755"),
    )?;
    let (upper, work) = match &spec.upper {
        Some(dir) => (dir.join("upper"), dir.join("work")),
        None => (scratch.join("upper"), scratch.join("work")),
    };
    let merged = scratch.join("merged");
    for dir in [&upper, &work, &merged] {
        mkdir_p(dir)?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_path(lower)?,
        overlay_path(&upper)?,
        overlay_path(&work)?
    );
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| Error::Overlay {
        lower: lower.to_owned(),
        upper: upper.clone(),
        source,
    })?;

    build_dev(&merged)?;

    let sys = resolve_in_root(&merged, Path::new("/sys"))?;
    ensure_target(&sys, true)?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        "mount sysfs on",
        Some(Path::new("sysfs")),
        &sys,
        Some("sysfs"),
        ro,
        None,
    )?;
    for masked in SYS_MASKED_DIRS {
        let dir = sys.join(masked);
        if dir.is_dir() {
            mount(
                "mask",
                Some(Path::new("tmpfs")),
                &dir,
                Some("tmpfs"),
                ro,
                None,
            )?;
        }
    }

    ensure_target(&resolve_in_root(&merged, Path::new("/proc"))?, true)?;

    for host in HOST_FILES {
        let host = Path::new(host);
        if !host.exists() {
            continue;
        }
        let target = resolve_in_root(&merged, host)?;
        ensure_target(&target, false)?;
        bind(host, &target, true)?;
    }

    for volume in &spec.volumes {
        if !volume.host.exists() {
            mkdir_p(&volume.host)?;
        }
        let target = resolve_in_root(&merged, &volume.container)?;
        ensure_target(&target, volume.host.is_dir())?;
        bind(&volume.host, &target, volume.readonly)?;
    }
    Ok(merged)
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), Error> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount("bind-mount onto", Some(source), target, None, flags, None)?;
    if readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount("remount read-only", None, target, None, flags, None)?;
    }
    Ok(())
}

fn build_dev(merged: &Path) -> Result<(), Error> {
    let dev = resolve_in_root(merged, Path::new("/dev"))?;
    ensure_target(&dev, true)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    mount(
        "mount tmpfs on",
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        flags,
        Some(DEV_TMPFS_OPTIONS),
    )?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| Error::sys("create device node", &path, e))?;
        // mknod applied the umask; devices must be usable by any user.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
            .map_err(|e| Error::io("chmod device node", &path, e))?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    mount(
        "mount devpts on",
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    let noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        "mount tmpfs on",
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        noexec,
        Some(SHM_TMPFS_OPTIONS),
    )?;
    let mqueue = dev.join("mqueue");
    mkdir_p(&mqueue)?;
    mount(
        "mount mqueue on",
        Some(Path::new("mqueue")),
        &mqueue,
        Some("mqueue"),
        noexec,
        None,
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| Error::io("create symlink", &path, e))?;
    }
    Ok(())
}

/// Makes `merged` the root of this thread's mount namespace and detaches
/// the old root, so nothing of the host stays reachable.
pub(crate) fn pivot(merged: &Path) -> Result<(), Error> {
    nix::unistd::chdir(merged).map_err(|e| Error::sys("chdir to", merged, e))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // lazy unmount then removes it without needing a put_old directory.
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH)
                .map_err(|e| Error::sys("detach the old root from", merged, e))?;
        }
        // The host root is an initramfs (rootfs), which cannot be pivoted:
        // move the merged mount over it and chroot, as runc --no-pivot does.
        Err(Errno::EINVAL) => {
            mount(
                "move mount",
                Some(merged),
                Path::new("/"),
                None,
                MsFlags::MS_MOVE,
                None,
            )?;
            nix::unistd::chroot(".").map_err(|e| Error::sys("chroot to", merged, e))?;
        }
        Err(e) => return Err(Error::sys("pivot_root to", merged, e)),
    }
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir to", "/", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_in_root_keeps_symlinks_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        fs::create_dir_all(r.join("real/dir")).expect("mkdir");
        std::os::unix::fs::symlink("/real", r.join("abs")).expect("symlink");
        std::os::unix::fs::symlink("../../../../etc", r.join("real/up")).expect("symlink");
        std::os::unix::fs::symlink("loop", r.join("loop")).expect("symlink");
        let cases: &[(&str, Option<&str>)] = &[
            ("/real/dir", Some("real/dir")),
            ("/abs/dir", Some("real/dir")),
            ("/abs/missing/x", Some("real/missing/x")),
            ("/real/up/passwd", Some("etc/passwd")),
            ("/../../etc", Some("etc")),
            ("/loop/x", None),
        ];
        for (path, want) in cases {
            let got = resolve_in_root(r, Path::new(path)).ok();
            assert_eq!(got, want.map(|w| r.join(w)), "{path}");
        }
    }

    #[test]
    fn overlay_refuses_separator_characters() {
        assert!(overlay_path(Path::new("/a/b")).is_ok());
        for bad in ["/a,b", "/a:b", "/a\\b"] {
            assert!(overlay_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}

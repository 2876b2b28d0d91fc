//! The two oracles the format tests trust: GNU `tar -x` (what any runtime that ignores eStargz
//! makes of a blob) and `esgz-oracle`, a small CLI over the reference Go `estargz` package.
//!
//! `esgz-oracle` is found through `ESGZ_ORACLE`, else built once per checkout: the read-only
//! peers source (`../shared/peers` beside the repository, as CI clones it) is copied into
//! `target/peers` and its `build.sh` runs there (Debian `golang-go` and
//! `golang-github-containerd-stargz-snapshotter-dev` are required). A missing tool is a test
//! failure naming it, never a silent skip.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Fails the test unless it runs as root (`tar --same-owner`, device nodes, chown need it).
#[track_caller]
pub fn require_root() {
    regfs_testkit::require_root();
}

/// `tar -x` of `blob` into `dir` exactly as a container runtime would extract a layer as root.
#[track_caller]
pub fn gnu_tar_extract(blob: &Path, dir: &Path) {
    require_root();
    fs::create_dir_all(dir).expect("create extraction dir");
    let out = Command::new("tar")
        .args([
            "-x",
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "-p",
            "--numeric-owner",
        ])
        .arg("-f")
        .arg(blob)
        .arg("-C")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("GNU tar is required for the extraction oracle: {e}"));
    assert!(
        out.status.success(),
        "tar -x {} failed: {}",
        blob.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tar -c` of `dir` (relative to `parent`) into `out` with xattrs, as GNU tar writes a layer.
#[track_caller]
pub fn gnu_tar_create(parent: &Path, dir: &str, out: &Path) {
    let res = Command::new("tar")
        .args(["-c", "--xattrs", "--numeric-owner", "-f"])
        .arg(out)
        .arg("-C")
        .arg(parent)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("GNU tar is required: {e}"));
    // Exit 1 = "some files changed while being read" (live system dirs): the archive is complete.
    assert!(
        matches!(res.status.code(), Some(0 | 1)),
        "tar -c {dir} failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// The workspace root (`crates/regfs/../..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The cargo target directory of this build.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// Path of a working `esgz-oracle` binary (see the module doc).
pub fn esgz_oracle() -> PathBuf {
    static ORACLE: OnceLock<PathBuf> = OnceLock::new();
    ORACLE.get_or_init(locate_or_build_oracle).clone()
}

fn locate_or_build_oracle() -> PathBuf {
    if let Some(p) = std::env::var_os("ESGZ_ORACLE") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "ESGZ_ORACLE={} does not exist", p.display());
        return p;
    }
    let peers = target_dir().join("peers");
    let bin = peers.join("bin/esgz-oracle");
    fs::create_dir_all(target_dir()).expect("target dir");
    // Several test binaries may ask at once: one builds, the others wait on the lock.
    let lock = fs::File::create(target_dir().join("peers.lock")).expect("peers lock file");
    let _guard = FileLock::exclusive(&lock);
    if bin.is_file() {
        return bin;
    }
    let source = workspace_root().join("../shared/peers");
    assert!(
        source.join("build.sh").is_file(),
        "esgz-oracle not found: set ESGZ_ORACLE or put the peers source at {} \
         (the shared/ directory beside the repository)",
        source.display()
    );
    assert!(
        Command::new("go").arg("version").output().is_ok(),
        "building esgz-oracle needs `go`: apt-get install golang-go \
         golang-github-containerd-stargz-snapshotter-dev"
    );
    assert!(
        Path::new("/usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz")
            .is_dir(),
        "building esgz-oracle needs the Debian package golang-github-containerd-stargz-snapshotter-dev"
    );
    copy_tree(&source, &peers);
    let out = Command::new("bash")
        .arg("build.sh")
        .current_dir(&peers)
        .output()
        .expect("run peers build.sh");
    assert!(
        out.status.success() && bin.is_file(),
        "building esgz-oracle in {} failed:\n{}\n{}",
        peers.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Copies a read-only source tree into a writable one (build.sh writes `bin/` inside it).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create peers copy");
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).expect("chmod peers copy");
    for entry in fs::read_dir(from).expect("read peers source") {
        let entry = entry.expect("dirent");
        let dest = to.join(entry.file_name());
        let ft = entry.file_type().expect("file type");
        if ft.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ft.is_file() {
            let _ = fs::remove_file(&dest);
            fs::copy(entry.path(), &dest).expect("copy peers file");
            let mode = entry.metadata().expect("stat").permissions().mode() | 0o200;
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }
}

/// An `flock(2)` held until dropped.
struct FileLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl FileLock {
    fn exclusive(file: &fs::File) -> FileLock {
        let file = file.try_clone().expect("dup the lock file");
        FileLock(
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .unwrap_or_else(|(_, e)| panic!("flock: {e}")),
        )
    }
}

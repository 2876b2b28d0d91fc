//! `regfs demo`: the whole story on this machine, with nothing but Debian packages.
//!
//! 1. starts Debian's `docker-registry` on a free 127.0.0.1 port (storage in a temp dir);
//! 2. builds a two-layer sample image as an OCI layout: a busybox root (`busybox-static`) and an
//!    app layer with a small script and 32 MiB of data the script never reads;
//! 3. `regfs convert-image` converts it to eStargz (script and shell prioritized) and pushes it;
//! 4. `regfs mount --daemon` mounts it lazily, reads the script, `regfs stats` shows how little
//!    was fetched, `regfs umount`;
//! 5. `regfs run --rm` runs the script straight from the registry.
//!
//! Every step is a real `regfs` subcommand run as a child process, exactly as a user would.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use regfs_estargz::Digest;
use serde_json::json;

use regfs_image::{Descriptor, OciLayout};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep the temp dir (registry storage, OCI layout, cache) and print its path.
    #[arg(long)]
    keep: bool,
}

/// The registry process, killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the registry gets to answer `/v2/` after starting.
const REGISTRY_START: Duration = Duration::from_secs(15);
/// Size of the demo's never-read data file: big next to what the workload fetches.
const BIG_FILE: usize = 32 << 20;

fn step(text: &str) {
    println!("\n==> {text}");
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo mounts FUSE filesystems and runs a container: run it as root");
    }
    let work = tempfile::Builder::new().prefix("regfs-demo-").tempdir()?;
    let dir = work.path().to_owned();
    let result = demo(&dir);
    if args.keep {
        println!("\nkept {}", work.keep().display());
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn demo(dir: &Path) -> anyhow::Result<()> {
    step("starting Debian's docker-registry on a free loopback port");
    let registry = start_registry(dir)?;
    println!("registry at http://{}", registry.addr);

    step("building a sample image (busybox root + app layer with 32 MiB never read)");
    let layout = dir.join("oci");
    build_sample_image(dir, &layout)?;

    let reference = format!("{}/regfs-demo:esgz", registry.addr);
    let prio = dir.join("prioritized.txt");
    std::fs::write(
        &prio,
        "bin/busybox\nbin/sh\napp/hello.sh\napp/message.txt\n",
    )?;
    step(&format!(
        "regfs convert-image oci:{}:demo {reference}",
        layout.display()
    ));
    regfs(&[
        "convert-image",
        &format!("oci:{}:demo", layout.display()),
        &reference,
        "--prioritized-files",
        &prio.to_string_lossy(),
    ])?;

    let cache = dir.join("cache");
    let cache_s = cache.to_string_lossy().into_owned();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let mnt_s = mnt.to_string_lossy().into_owned();
    step(&format!("regfs mount --daemon {reference} {mnt_s}"));
    let start = Instant::now();
    regfs(&[
        "mount",
        "--daemon",
        "--cache-dir",
        &cache_s,
        &reference,
        &mnt_s,
    ])?;
    println!("mounted in {} ms", start.elapsed().as_millis());
    step("ls -l app/ && cat app/message.txt (through the lazy mount)");
    shell(&format!("ls -l {mnt_s}/app && cat {mnt_s}/app/message.txt"))?;
    step("regfs stats: what was fetched");
    regfs(&["stats", &mnt_s])?;
    regfs(&["umount", &mnt_s])?;

    step(&format!("regfs run --rm {reference} /app/hello.sh"));
    let run_cache = dir.join("run-cache");
    regfs(&[
        "run",
        "--rm",
        "--cache-dir",
        &run_cache.to_string_lossy(),
        &reference,
        "/app/hello.sh",
    ])?;
    drop(registry);
    println!("\ndemo done");
    Ok(())
}

fn regfs(args: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let status = Command::new(exe)
        .args(args)
        .status()
        .with_context(|| format!("running regfs {}", args.join(" ")))?;
    if !status.success() {
        bail!("regfs {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn shell(script: &str) -> anyhow::Result<()> {
    let status = Command::new("sh").arg("-c").arg(script).status()?;
    if !status.success() {
        bail!("`{script}` failed ({status})");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_registry(dir: &Path) -> anyhow::Result<Registry> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("registry").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting docker-registry (apt-get install docker-registry)")?;
    let registry = Registry { child, addr };
    let start = Instant::now();
    while start.elapsed() < REGISTRY_START {
        if std::net::TcpStream::connect(&registry.addr).is_ok() {
            return Ok(registry);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "docker-registry did not start listening on {}",
        registry.addr
    )
}

/// Writes `tar czf` of `root` into the layout; returns (descriptor, diff id).
fn add_layer(layout: &OciLayout, root: &Path) -> anyhow::Result<(Descriptor, Digest)> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .output()
        .context("running tar")?;
    if !out.status.success() {
        bail!(
            "tar of {} failed: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let diff_id = Digest::sha256(&out.stdout);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&out.stdout)?;
    let blob = gz.finish()?;
    let digest = layout.put_blob_bytes(&blob)?;
    Ok((
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest,
            size: blob.len() as u64,
            platform: None,
            annotations: Default::default(),
        },
        diff_id,
    ))
}

fn build_sample_image(dir: &Path, layout_dir: &Path) -> anyhow::Result<()> {
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing (apt-get install busybox-static)");
    }
    let base = dir.join("rootfs-base");
    std::fs::create_dir_all(base.join("bin"))?;
    for d in ["etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(base.join(d))?;
    }
    std::fs::copy(&busybox, base.join("bin/busybox"))?;
    let list = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", base.join("bin").join(applet));
        }
    }
    std::fs::write(base.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(base.join("etc/group"), "root:x:0:\n")?;

    let app = dir.join("rootfs-app");
    std::fs::create_dir_all(app.join("app"))?;
    std::fs::write(
        app.join("app/hello.sh"),
        "#!/bin/sh\necho \"hello from a lazily pulled image: $(cat /app/message.txt)\"\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        app.join("app/hello.sh"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::fs::write(
        app.join("app/message.txt"),
        "only the bytes you read were fetched\n",
    )?;
    let mut big = vec![0u8; BIG_FILE];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in big.iter_mut() {
        // xorshift: incompressible filler without a dependency on a RNG crate.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(app.join("app/data.bin"), &big)?;

    let layout = OciLayout::create(layout_dir)?;
    let (base_desc, base_diff) = add_layer(&layout, &base)?;
    let (app_desc, app_diff) = add_layer(&layout, &app)?;
    let config = json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/app/hello.sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [base_diff.to_string(), app_diff.to_string()]},
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = layout.put_blob_bytes(&config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": [base_desc, app_desc],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = layout.put_blob_bytes(&manifest_bytes)?;
    layout.set_tag(
        "demo",
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: manifest_digest,
            size: manifest_bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        },
    )?;
    println!(
        "image: 2 layers, {} + {} bytes compressed",
        base_desc.size, app_desc.size
    );
    Ok(())
}

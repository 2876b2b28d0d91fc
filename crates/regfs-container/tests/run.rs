//! `run` against a real busybox root: namespaces, overlay, mounts, identity,
//! exit statuses. Needs root and Debian's busybox-static; the harness runs
//! these tests in parallel threads, which also exercises forking from a
//! multi-threaded process.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod busybox;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use busybox::{Rootfs, run_captured};
use regfs_container::{Error, NetMode, Volume, run};

#[test]
fn exit_status_is_the_commands() {
    let root = Rootfs::build();
    assert_eq!(run(&root.spec("exit 7")).expect("run"), 7);
    assert_eq!(run(&root.spec("true")).expect("run"), 0);
}

#[test]
fn killed_command_reports_128_plus_signal() {
    let root = Rootfs::build();
    assert_eq!(run(&root.spec("kill -9 $$")).expect("run"), 128 + 9);
    // SIGTERM without a handler kills the command: it is PID 2, not PID 1.
    assert_eq!(
        run(&root.spec("kill -TERM $$; sleep 5")).expect("run"),
        128 + 15
    );
}

#[test]
fn command_not_found_is_127_and_names_the_command() {
    let root = Rootfs::build();
    let mut spec = root.spec("");
    spec.args = vec!["no-such-command".into()];
    let err = run(&spec).expect_err("command does not exist");
    assert!(matches!(err, Error::CommandNotFound { .. }), "{err:?}");
    assert_eq!(err.exit_status(), 127);
    assert!(err.to_string().contains("no-such-command"), "{err}");

    spec.args = vec!["/bin/missing".into()];
    assert_eq!(run(&spec).expect_err("missing path").exit_status(), 127);
}

#[test]
fn command_not_executable_is_126() {
    let root = Rootfs::build();
    let mut spec = root.spec("");
    for command in ["/bin/notexec", "notexec", "/data"] {
        spec.args = vec![command.into()];
        let err = run(&spec).expect_err("not executable");
        assert!(
            matches!(err, Error::NotExecutable { .. }),
            "{command}: {err:?}"
        );
        assert_eq!(err.exit_status(), 126, "{command}");
        assert!(err.to_string().contains(command), "{err}");
    }
}

#[test]
fn writes_stay_out_of_the_lower_dir_and_vanish_with_a_tmpfs_upper() {
    let root = Rootfs::build();
    let before = root.listing();
    let script = "echo new > /data/new.txt && echo changed >> /data/lower.txt && rm /bin/notexec \
                  && mkdir -p /made/deep && chmod 700 /data && cat /data/new.txt";
    let (status, out) = run_captured(root.spec(""), script);
    assert_eq!((status, out.as_str()), (0, "new\n"));
    assert_eq!(root.listing(), before, "the lower dir changed");

    let (status, out) = run_captured(
        root.spec(""),
        "ls /data; cat /data/lower.txt; test -e /bin/notexec",
    );
    assert_eq!(out, "lower.txt\nfrom lower\n");
    assert_eq!(
        status, 0,
        "a deleted lower file must be back in the next run"
    );
}

#[test]
fn upper_dir_keeps_writes_and_whiteouts() {
    let root = Rootfs::build();
    let before = root.listing();
    let keep = tempfile::tempdir().expect("upper tempdir");
    let mut spec = root.spec("");
    spec.upper = Some(keep.path().to_owned());

    let (status, _) = run_captured(
        spec.clone(),
        "echo kept > /data/new.txt && rm /data/lower.txt",
    );
    assert_eq!(status, 0);
    let upper = keep.path().join("upper");
    assert_eq!(
        fs::read_to_string(upper.join("data/new.txt")).expect("copied up"),
        "kept\n"
    );
    let whiteout = fs::symlink_metadata(upper.join("data/lower.txt")).expect("whiteout exists");
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "a deleted lower file is a 0/0 character device in the upper dir"
    );
    assert_eq!(root.listing(), before, "the lower dir changed");

    let (status, out) = run_captured(spec, "cat /data/new.txt; test ! -e /data/lower.txt");
    assert_eq!((status, out.as_str()), (0, "kept\n"));
}

#[test]
fn pid_namespace_has_our_init_as_pid_1_and_the_command_as_pid_2() {
    let root = Rootfs::build();
    let (status, out) = run_captured(
        root.spec(""),
        "echo $$; cat /proc/1/comm; ls -d /proc/[0-9]* | wc -l; tr -d '\\0' < /proc/1/cmdline",
    );
    assert_eq!(status, 0);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    // pids: 1 init, 2 sh, and the `ls` of the pipeline plus `wc`.
    assert_eq!(lines[..2], ["2", "regfs-init"], "{out}");
    let pids: usize = lines[2].parse().expect("a count");
    assert!(pids <= 4, "the container sees host processes: {pids} pids");
    // The host's command line (program path, arguments) stays hidden.
    assert_eq!(lines.get(3), Some(&"regfs-init"), "{out}");
}

#[test]
fn hostname_env_workdir_and_user_are_applied() {
    let root = Rootfs::build();
    let mut spec = root.spec("");
    spec.hostname = "boxy".into();
    spec.env.push("GREETING=hi there".into());
    spec.workdir = "/work/dir".into();
    spec.user = Some("app".into());
    let (status, out) = run_captured(
        spec.clone(),
        "hostname; echo $GREETING; pwd; id -u; id -g; id -G; echo $HOME",
    );
    assert_eq!(status, 0);
    assert_eq!(
        out,
        "boxy\nhi there\n/work/dir\n1000\n1000\n1000 50\n/home/app\n"
    );

    spec.user = Some("4242:4343".into());
    let (status, out) = run_captured(spec.clone(), "id -u; id -g; echo $HOME");
    assert_eq!((status, out.as_str()), (0, "4242\n4343\n/\n"));

    spec.user = Some("nobody-here".into());
    let err = run(&spec).expect_err("unknown user");
    assert!(matches!(err, Error::UnknownUser { .. }), "{err:?}");
}

#[test]
fn volumes_bind_host_dirs_and_read_only_refuses_writes() {
    let root = Rootfs::build();
    let rw = tempfile::tempdir().expect("rw dir");
    let ro = tempfile::tempdir().expect("ro dir");
    fs::write(ro.path().join("host.txt"), "host data\n").expect("write host file");
    let mut spec = root.spec("");
    spec.volumes.push(Volume {
        host: rw.path().to_owned(),
        container: "/rw".into(),
        readonly: false,
    });
    spec.volumes.push(
        format!("{}:/mnt/ro:ro", ro.path().display())
            .parse()
            .expect("volume"),
    );
    let (status, out) = run_captured(
        spec,
        "echo out > /rw/written; cat /mnt/ro/host.txt; touch /mnt/ro/x",
    );
    assert_ne!(status, 0, "touch on a read-only volume must fail");
    assert!(
        out.starts_with("host data\n") && out.contains("Read-only file system"),
        "{out}"
    );
    assert!(!ro.path().join("x").exists());
    assert_eq!(
        fs::read_to_string(rw.path().join("written")).expect("written on host"),
        "out\n"
    );
}

#[test]
fn net_none_has_only_loopback_and_it_is_up() {
    let root = Rootfs::build();
    let mut spec = root.spec("");
    spec.net = NetMode::None;
    let (status, out) = run_captured(
        spec,
        "ls /sys/class/net; cat /sys/class/net/lo/flags; tail -n +3 /proc/net/dev | cut -d: -f1",
    );
    assert_eq!(status, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "lo", "{out}");
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).expect("hex flags");
    assert_eq!(flags & libc_iff_up(), 1, "lo is down: {out}");
    assert_eq!(lines[2..], ["lo"], "{out}");
}

/// IFF_UP from <net/if.h>.
fn libc_iff_up() -> u32 {
    1
}

#[test]
fn dev_proc_sys_and_host_files_are_mounted() {
    let root = Rootfs::build();
    let script = "echo x > /dev/null; head -c 4 /dev/zero | wc -c; ls /dev/pts/ptmx; readlink /dev/ptmx; \
                  touch /dev/shm/ok && echo shm; touch /sys/x 2>/dev/null || echo sys-ro; \
                  cmp -s /etc/resolv.conf /out/resolv.conf && echo resolv; cmp -s /etc/hosts /out/hosts && echo hosts";
    let out_dir = busybox::Output::new();
    let mut spec = root.spec("");
    spec.volumes.push(out_dir.volume());
    spec.args = vec![
        "sh".into(),
        "-c".into(),
        format!("exec > /out/stdout 2>&1\n{script}"),
    ];
    // Copies of the host files, to compare with what the container sees.
    let host = out_dir.volume().host;
    for name in ["resolv.conf", "hosts"] {
        fs::copy(format!("/etc/{name}"), host.join(name))
            .unwrap_or_else(|e| panic!("host /etc/{name}: {e}"));
    }
    assert_eq!(run(&spec).expect("run"), 0);
    assert_eq!(
        out_dir.read("stdout"),
        "4\n/dev/pts/ptmx\npts/ptmx\nshm\nsys-ro\nresolv\nhosts\n"
    );
}

#[test]
fn nothing_is_left_mounted_on_the_host() {
    let root = Rootfs::build();
    let before = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let keep = tempfile::tempdir().expect("upper tempdir");
    let mut spec = root.spec("exit 0");
    run(&spec).expect("normal run");
    spec.args = vec!["sh".into(), "-c".into(), "kill -9 $$".into()];
    spec.upper = Some(keep.path().to_owned());
    spec.net = NetMode::None;
    assert_eq!(run(&spec).expect("killed run"), 137);
    spec.args = vec!["no-such-command".into()];
    run(&spec).expect_err("failed exec");
    let after = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    // Other test processes may mount FUSE file systems meanwhile: ignore those.
    let new: Vec<&str> = after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l) && !l.contains(" - fuse"))
        .collect();
    assert!(new.is_empty(), "mounts leaked to the host: {new:#?}");
    let root_name = root.path().display().to_string();
    assert!(
        !after.contains(&root_name),
        "a mount still refers to {root_name}"
    );
}

#[test]
fn invalid_specs_are_refused_before_anything_runs() {
    let root = Rootfs::build();
    let mut spec = root.spec("true");
    spec.args.clear();
    assert!(matches!(run(&spec), Err(Error::InvalidSpec { .. })));
    let mut spec = root.spec("true");
    spec.workdir = "relative".into();
    assert!(matches!(run(&spec), Err(Error::InvalidSpec { .. })));
    let spec =
        regfs_container::ContainerSpec::new(root.path().join("missing"), vec!["true".into()]);
    assert!(matches!(run(&spec), Err(Error::Io { .. })));
}

#[test]
fn root_keeps_only_dockers_default_capabilities() {
    let root = Rootfs::build();
    let caps = "grep -E '^Cap(Eff|Bnd)' /proc/self/status";
    let (status, out) = run_captured(root.spec(""), caps);
    assert_eq!(status, 0, "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["CapEff:", "00000000a80425fb", "CapBnd:", "00000000a80425fb"],
        "{out}"
    );

    let mut spec = root.spec("");
    spec.user = Some("app".into());
    let (status, out) = run_captured(spec, caps);
    assert_eq!(status, 0, "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["CapEff:", "0000000000000000", "CapBnd:", "00000000a80425fb"],
        "{out}"
    );
}

#[test]
fn proc_and_sys_entries_are_masked_or_read_only_like_docker() {
    let root = Rootfs::build();
    // Which masked files exist depends on the kernel's configuration.
    let masked: Vec<&str> = [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "latency_stats",
        "timer_stats",
    ]
    .into_iter()
    .filter(|f| std::path::Path::new("/proc").join(f).exists())
    .collect();
    assert!(
        !masked.is_empty(),
        "the host /proc has none of the masked files"
    );
    let mut script = String::new();
    for f in &masked {
        script.push_str(&format!("echo {f} $(wc -c < /proc/{f}); "));
    }
    script.push_str("echo 1 > /proc/sys/vm/drop_caches || echo sys-ro; echo firmware $(ls /sys/firmware | wc -l)");
    let (status, out) = run_captured(root.spec(""), &script);
    assert_eq!(status, 0, "{out}");
    for f in &masked {
        assert!(
            out.lines().any(|l| l == format!("{f} 0")),
            "/proc/{f} is not masked: {out}"
        );
    }
    assert!(
        out.contains("Read-only file system") && out.contains("sys-ro\n"),
        "{out}"
    );
    assert!(
        out.ends_with("firmware 0\n"),
        "/sys/firmware is not masked: {out}"
    );
}

#[test]
fn docker_default_variables_are_set_unless_given() {
    let root = Rootfs::build();
    let mut spec = root.spec("");
    spec.hostname = "named".into();
    let (_, out) = run_captured(spec.clone(), "echo $HOSTNAME $HOME");
    assert_eq!(out, "named /root\n");
    spec.env.push("HOME=/elsewhere".into());
    let (_, out) = run_captured(spec, "echo $HOME");
    assert_eq!(out, "/elsewhere\n");
}

#[test]
fn containers_run_concurrently_from_many_threads_without_mixing() {
    let root = Rootfs::build();
    let results: Vec<(i32, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let mut spec = root.spec("");
                spec.hostname = format!("box{i}");
                spec.env.push(format!("N={i}"));
                s.spawn(move || run_captured(spec, "echo $(hostname) $N $$; exit $N"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (i, (status, out)) in results.into_iter().enumerate() {
        assert_eq!((status, out), (i as i32, format!("box{i} {i} 2\n")));
    }
}

//! The snapshots service through the gRPC client over a unix socket: lifecycle, error codes,
//! persistence, and the remote-layer seam with a fake provider.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the support modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use regfs_snapshotter::{Kind, Mount, REMOTE_MARKER_LABEL, TARGET_LABEL};
use support::fake::{self, FakeLayers};
use support::{Harness, digest, labels, no_labels, remote_labels};
use tonic::Code;

fn bind(source: &std::path::Path, ro: bool) -> Vec<Mount> {
    vec![Mount {
        fs_type: "bind".into(),
        source: source.display().to_string(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    }]
}

fn overlay(options: Vec<String>) -> Vec<Mount> {
    vec![Mount {
        fs_type: "overlay".into(),
        source: "overlay".into(),
        options,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_follows_the_overlay_snapshotter() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), None).await;
    let mut c = h.client().await;
    let root = h.root.join("snapshots");

    // A parentless active snapshot is a rw bind of its own fs dir.
    let m = c.prepare("a", "", labels(&[("l", "1")])).await.unwrap();
    assert_eq!(m, bind(&root.join("1/fs"), false));
    assert_eq!(c.mounts("a").await.unwrap(), m);
    assert!(root.join("1/work").is_dir());
    std::fs::write(root.join("1/fs/base.txt"), vec![7u8; 10_000]).unwrap();
    let active_usage = c.usage("a").await.unwrap();
    assert_eq!(active_usage.inodes, 2, "dir + file");
    assert!(active_usage.size >= 10_000, "{active_usage:?}");

    c.commit("base", "a", labels(&[("c", "2")])).await.unwrap();
    let base = c.stat("base").await.unwrap();
    assert_eq!(base.kind, Kind::Committed);
    assert_eq!(base.parent, None);
    assert_eq!(
        base.labels,
        labels(&[("c", "2")]),
        "commit labels replace the active's"
    );
    assert_eq!(c.stat("a").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        c.usage("base").await.unwrap(),
        active_usage,
        "usage fixed at commit"
    );
    // Growing the committed dir behind our back does not change its recorded usage.
    std::fs::write(root.join("1/fs/late.txt"), b"x").unwrap();
    assert_eq!(c.usage("base").await.unwrap(), active_usage);
    std::fs::remove_file(root.join("1/fs/late.txt")).unwrap();

    // Active on a parent: overlay, upper/work own, lowerdir the parent.
    let m = c.prepare("b", "base", no_labels()).await.unwrap();
    let fs2 = root.join("2/fs").display().to_string();
    let fs1 = root.join("1/fs").display().to_string();
    assert_eq!(
        m,
        overlay(vec![
            "index=off".into(),
            format!("workdir={}", root.join("2/work").display()),
            format!("upperdir={fs2}"),
            format!("lowerdir={fs1}"),
        ])
    );
    std::fs::write(root.join("2/fs/top.txt"), b"top").unwrap();
    c.commit("layer2", "b", no_labels()).await.unwrap();
    assert_eq!(
        c.stat("layer2").await.unwrap().parent.as_deref(),
        Some("base")
    );

    // A view of two layers: overlay, lowerdirs nearest first, no upper.
    let m = c.view("v2", "layer2", no_labels()).await.unwrap();
    assert_eq!(
        m,
        overlay(vec!["index=off".into(), format!("lowerdir={fs2}:{fs1}")])
    );
    // A view of one layer: read-only bind of the parent.
    let m = c.view("v1", "base", no_labels()).await.unwrap();
    assert_eq!(m, bind(&root.join("1/fs"), true));
    assert_eq!(c.stat("v1").await.unwrap().kind, Kind::View);
    assert_eq!(c.usage("v1").await.unwrap().size, 0);
    // A view without parent: read-only bind of its own (empty) dir.
    let v0 = c.view("v0", "", no_labels()).await.unwrap();
    assert_eq!(v0[0].options, vec!["ro", "rbind"]);

    // Update: one label, all labels, delete by empty value; Updated moves, Created does not.
    let mut info = c.stat("layer2").await.unwrap();
    let created = info.created;
    info.labels = labels(&[("x", "1"), ("ignored", "z")]);
    let u = c.update(info.clone(), &["labels.x"]).await.unwrap();
    assert_eq!(u.labels, labels(&[("x", "1")]));
    assert!(u.updated >= u.created);
    assert_eq!(u.created, created);
    info.labels = labels(&[("y", "2"), ("z", "3")]);
    let u = c.update(info.clone(), &["labels"]).await.unwrap();
    assert_eq!(u.labels, labels(&[("y", "2"), ("z", "3")]));
    info.labels = labels(&[("y", "")]);
    let u = c.update(info.clone(), &["labels.y"]).await.unwrap();
    assert_eq!(u.labels, labels(&[("z", "3")]));
    info.labels = labels(&[("all", "new")]);
    let u = c.update(info, &[]).await.unwrap();
    assert_eq!(u.labels, labels(&[("all", "new")]));
    assert_eq!(
        c.stat("layer2").await.unwrap().labels,
        labels(&[("all", "new")])
    );

    // List: everything, then filtered the way containerd filters.
    let mut names: Vec<String> = c
        .list(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    assert_eq!(names, ["base", "layer2", "v0", "v1", "v2"]);
    let views = c.list(&["kind==view"]).await.unwrap();
    assert_eq!(views.len(), 3);
    let found = c
        .list(&[r#"labels."all"==new,parent=="base""#])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "layer2");
    assert_eq!(
        c.list(&["some garbage ~~"]).await.unwrap().len(),
        5,
        "unknown filters list all"
    );

    // Remove: parents refuse while they have children; child-first works.
    assert_eq!(
        c.remove("base").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    for key in ["v2", "v1", "v0", "layer2", "base"] {
        c.remove(key)
            .await
            .unwrap_or_else(|e| panic!("remove {key}: {e}"));
    }
    assert!(c.list(&[]).await.unwrap().is_empty());
    assert!(!root.join("1").exists() && !root.join("2").exists());

    // Cleanup removes directories no snapshot owns, and nothing else.
    let keep = c.prepare("keep", "", no_labels()).await.unwrap();
    std::fs::create_dir_all(root.join("999/fs/deep")).unwrap();
    std::fs::create_dir_all(root.join("not-an-id")).unwrap();
    c.cleanup().await.unwrap();
    assert!(!root.join("999").exists());
    assert!(!root.join("not-an-id").exists());
    assert!(std::path::Path::new(&keep[0].source).is_dir());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misuse_has_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), None).await;
    let mut c = h.client().await;
    c.prepare("active", "", no_labels()).await.unwrap();
    c.prepare("tmp", "", no_labels()).await.unwrap();
    c.commit("committed", "tmp", no_labels()).await.unwrap();
    c.view("view", "committed", no_labels()).await.unwrap();
    c.prepare("child", "committed", no_labels()).await.unwrap();

    let info = c.stat("committed").await.unwrap();
    let cases: Vec<(&str, Result<(), tonic::Status>, Code)> = vec![
        (
            "stat missing",
            c.stat("nope").await.map(drop),
            Code::NotFound,
        ),
        (
            "mounts missing",
            c.mounts("nope").await.map(drop),
            Code::NotFound,
        ),
        (
            "usage missing",
            c.usage("nope").await.map(drop),
            Code::NotFound,
        ),
        ("remove missing", c.remove("nope").await, Code::NotFound),
        (
            "commit missing",
            c.commit("n", "nope", no_labels()).await,
            Code::NotFound,
        ),
        (
            "prepare existing key",
            c.prepare("active", "", no_labels()).await.map(drop),
            Code::AlreadyExists,
        ),
        (
            "view existing key",
            c.view("committed", "", no_labels()).await.map(drop),
            Code::AlreadyExists,
        ),
        (
            "prepare missing parent",
            c.prepare("x", "nope", no_labels()).await.map(drop),
            Code::NotFound,
        ),
        (
            "prepare on active parent",
            c.prepare("x", "active", no_labels()).await.map(drop),
            Code::InvalidArgument,
        ),
        (
            "view on view parent",
            c.view("x", "view", no_labels()).await.map(drop),
            Code::InvalidArgument,
        ),
        (
            "prepare empty key",
            c.prepare("", "", no_labels()).await.map(drop),
            Code::InvalidArgument,
        ),
        (
            "commit a view",
            c.commit("n", "view", no_labels()).await,
            Code::FailedPrecondition,
        ),
        (
            "commit a committed",
            c.commit("n", "committed", no_labels()).await,
            Code::FailedPrecondition,
        ),
        (
            "commit onto existing name",
            c.commit("committed", "active", no_labels()).await,
            Code::AlreadyExists,
        ),
        (
            "commit empty name",
            c.commit("", "active", no_labels()).await,
            Code::InvalidArgument,
        ),
        (
            "mounts of committed",
            c.mounts("committed").await.map(drop),
            Code::FailedPrecondition,
        ),
        (
            "remove with children",
            c.remove("committed").await,
            Code::FailedPrecondition,
        ),
        (
            "update immutable field",
            c.update(info.clone(), &["parent"]).await.map(drop),
            Code::InvalidArgument,
        ),
        (
            "update missing",
            c.update(
                regfs_snapshotter::Info {
                    name: "nope".into(),
                    ..info
                },
                &[],
            )
            .await
            .map(drop),
            Code::NotFound,
        ),
    ];
    for (what, result, code) in cases {
        match result {
            Ok(()) => panic!("{what}: succeeded, wanted {code:?}"),
            Err(status) => assert_eq!(status.code(), code, "{what}: {status}"),
        }
    }
    // Failed calls changed nothing: no half-created snapshot, no stray directory.
    assert_eq!(c.list(&[]).await.unwrap().len(), 4);
    assert_eq!(
        std::fs::read_dir(h.root.join("snapshots")).unwrap().count(),
        4
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), None).await;
    let mut c = h.client().await;
    c.prepare("a", "", no_labels()).await.unwrap();
    c.commit("base", "a", labels(&[("k", "v")])).await.unwrap();
    let active = c
        .prepare("work", "base", labels(&[("w", "1")]))
        .await
        .unwrap();
    let before = c.list(&[]).await.unwrap();
    drop(c);
    h.stop().await;

    let h = Harness::start(dir.path(), None).await;
    let mut c = h.client().await;
    let mut after = c.list(&[]).await.unwrap();
    let mut before = before;
    before.sort_by(|a, b| a.name.cmp(&b.name));
    after.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(after, before);
    assert_eq!(c.mounts("work").await.unwrap(), active);
    c.commit("top", "work", no_labels()).await.unwrap();
    // Ids continue after a restart: a new snapshot does not reuse a directory.
    let m = c.prepare("new", "", no_labels()).await.unwrap();
    assert_eq!(m, bind(&h.root.join("snapshots/3/fs"), false));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_layer_becomes_the_committed_target() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLayers::new();
    let h = Harness::start(dir.path(), Some(fake::provider(&fake))).await;
    let mut c = h.client().await;
    let layer = digest('a');

    let err = c
        .prepare(
            "extract-1 sha256:chain1",
            "",
            remote_labels("sha256:chain1", &layer),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert!(err.message().contains("sha256:chain1"), "{err}");
    assert_eq!(
        c.stat("extract-1 sha256:chain1").await.unwrap_err().code(),
        Code::NotFound
    );
    let info = c.stat("sha256:chain1").await.unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.parent, None);
    assert_eq!(
        info.labels.get(TARGET_LABEL).map(String::as_str),
        Some("sha256:chain1")
    );
    assert_eq!(
        info.labels.get(REMOTE_MARKER_LABEL).map(String::as_str),
        Some("regfs")
    );
    assert_eq!(
        std::fs::read_to_string(h.fs(1).join(fake::MARKER)).unwrap(),
        layer
    );
    assert_eq!(
        c.usage("sha256:chain1").await.unwrap().size,
        4242,
        "usage from the mount"
    );
    // What containerd's metadata layer asks after ALREADY_EXISTS.
    let found = c
        .list(&[r#"labels."containerd.io/snapshot.ref"==sha256:chain1,parent=="""#])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);

    // The next layer stacks on it; its lowerdir is the remote mountpoint.
    let err = c
        .prepare(
            "extract-2",
            "sha256:chain1",
            remote_labels("sha256:chain2", &digest('b')),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        c.stat("sha256:chain2").await.unwrap().parent.as_deref(),
        Some("sha256:chain1")
    );
    let m = c
        .prepare("rootfs", "sha256:chain2", no_labels())
        .await
        .unwrap();
    assert!(
        m[0].options.last().unwrap().ends_with(&format!(
            "lowerdir={}:{}",
            h.fs(2).display(),
            h.fs(1).display()
        )),
        "{m:?}"
    );
    let stats = h.snapshotter.remote_stats();
    assert_eq!(stats.mounted, 2);
    assert_eq!(fake.live(), 2);

    // Remove unmounts.
    assert_eq!(
        c.remove("sha256:chain1").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    c.remove("rootfs").await.unwrap();
    c.remove("sha256:chain2").await.unwrap();
    assert_eq!(fake.live(), 1);
    c.remove("sha256:chain1").await.unwrap();
    assert_eq!(fake.live(), 0);
    assert!(!h.fs(1).exists());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_failures_fall_back_to_an_active_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLayers::new();
    fake.fail_on(&digest('f'));
    let h = Harness::start(dir.path(), Some(fake::provider(&fake))).await;
    let mut c = h.client().await;

    // Mount failure: ordinary mounts of the active key, the debris cleaned up.
    let m = c
        .prepare("k1", "", remote_labels("sha256:t1", &digest('f')))
        .await
        .unwrap();
    assert_eq!(m, bind(&h.fs(1), false));
    assert_eq!(c.stat("k1").await.unwrap().kind, Kind::Active);
    assert_eq!(
        c.stat("sha256:t1").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        std::fs::read_dir(h.fs(1)).unwrap().count(),
        0,
        "mountpoint emptied"
    );
    assert_eq!(h.snapshotter.remote_stats().fallback_mount_failed, 1);

    // Bad labels: a digest that is not one.
    let mut bad = remote_labels("sha256:t2", &digest('a'));
    bad.insert(
        regfs_snapshotter::STARGZ_DIGEST_LABEL.into(),
        "sha256:nothex".into(),
    );
    c.prepare("k2", "", bad).await.unwrap();
    assert_eq!(h.snapshotter.remote_stats().fallback_bad_labels, 1);
    // Without the target label, remote labels are not a remote request at all.
    let mut no_target = remote_labels("x", &digest('a'));
    no_target.remove(TARGET_LABEL);
    c.prepare("k3", "", no_target).await.unwrap();
    let stats = h.snapshotter.remote_stats();
    assert_eq!(
        (
            stats.mounted,
            stats.fallback_bad_labels,
            stats.fallback_mount_failed
        ),
        (0, 1, 1)
    );
    assert_eq!(fake.mounts.load(Ordering::SeqCst), 0);

    // The fallback snapshot is an ordinary one: commit works, as after a download.
    std::fs::write(h.fs(1).join("unpacked"), b"data").unwrap();
    c.commit("sha256:t1", "k1", labels(&[(TARGET_LABEL, "sha256:t1")]))
        .await
        .unwrap();
    h.stop().await;

    // No provider at all: counted as not configured.
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), None).await;
    let mut c = h.client().await;
    c.prepare("k", "", remote_labels("sha256:t", &digest('a')))
        .await
        .unwrap();
    assert_eq!(h.snapshotter.remote_stats().fallback_not_configured, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_mounts_run_concurrently() {
    const LAYERS: usize = 4;
    // Long enough that all four requests arrive while the first mount still runs, even on a
    // loaded machine (each Prepare commits a redb transaction before it mounts).
    const DELAY: Duration = Duration::from_millis(1500);
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLayers::new();
    *fake.delay.lock().unwrap() = DELAY;
    let h = Harness::start(dir.path(), Some(fake::provider(&fake))).await;
    let c = h.client().await;

    let start = Instant::now();
    let calls = (0..LAYERS).map(|i| {
        let mut c = c.clone();
        async move {
            let d = digest(char::from(b'a' + i as u8));
            c.prepare(
                &format!("extract-{i}"),
                "",
                remote_labels(&format!("sha256:t{i}"), &d),
            )
            .await
        }
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap_err().code(), Code::AlreadyExists);
    }
    let elapsed = start.elapsed();
    assert_eq!(
        fake.max_in_flight.load(Ordering::SeqCst),
        LAYERS,
        "all mounts in flight at once"
    );
    // One after the other they would take LAYERS x DELAY.
    assert!(elapsed < DELAY * LAYERS as u32, "serialized: {elapsed:?}");

    // Two Prepares racing for the same target: both answer ALREADY_EXISTS, one snapshot wins,
    // the loser's mount and active key are gone.
    let race = (0..2).map(|i| {
        let mut c = c.clone();
        async move {
            c.prepare(
                &format!("race-{i}"),
                "",
                remote_labels("sha256:same", &digest('e')),
            )
            .await
        }
    });
    for r in futures::future::join_all(race).await {
        assert_eq!(r.unwrap_err().code(), Code::AlreadyExists);
    }
    let mut c = c;
    let names: Vec<String> = c
        .list(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names.len(), LAYERS + 1, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("sha256:")), "{names:?}");
    assert_eq!(fake.live(), LAYERS + 1);
    assert_eq!(h.snapshotter.remote_stats().mounted, LAYERS as u64 + 1);
    h.stop().await;
    assert_eq!(fake.live(), 0, "shutdown unmounts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_snapshots_are_mounted_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLayers::new();
    let h = Harness::start(dir.path(), Some(fake::provider(&fake))).await;
    let mut c = h.client().await;
    for (i, d) in ['a', 'b'].into_iter().enumerate() {
        let parent = if i == 0 {
            String::new()
        } else {
            "sha256:c0".into()
        };
        let err = c
            .prepare(
                &format!("x{i}"),
                &parent,
                remote_labels(&format!("sha256:c{i}"), &digest(d)),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
    }
    drop(c);
    h.stop().await;
    assert_eq!(fake.live(), 0);
    assert!(
        !h_fs_marker(dir.path(), 1).exists(),
        "unmounted at shutdown"
    );

    // Restart: both mounted again before the socket serves.
    let h = Harness::start(dir.path(), Some(fake::provider(&fake))).await;
    let mut c = h.client().await;
    // The listener was bound before serve ran: the first call is answered only after the
    // remount, so it already sees both layers mounted.
    assert_eq!(c.list(&[]).await.unwrap().len(), 2);
    assert_eq!(fake.live(), 2);
    assert_eq!(h.snapshotter.remote_stats().remounted, 2);
    assert_eq!(
        std::fs::read_to_string(h.fs(2).join(fake::MARKER)).unwrap(),
        digest('b')
    );
    c.prepare("rootfs", "sha256:c1", no_labels()).await.unwrap();
    c.remove("rootfs").await.unwrap();
    drop(c);
    h.stop().await;

    // Restart with the lower layer failing: present but unavailable, naming it.
    let failing = FakeLayers::new();
    failing.fail_on(&digest('a'));
    let h = Harness::start(dir.path(), Some(fake::provider(&failing))).await;
    let mut c = h.client().await;
    assert_eq!(c.list(&[]).await.unwrap().len(), 2);
    assert_eq!(h.snapshotter.remote_stats().remount_failed, 1);
    assert_eq!(c.stat("sha256:c0").await.unwrap().kind, Kind::Committed);
    let err = c
        .prepare("rootfs", "sha256:c1", no_labels())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("sha256:c0"), "{err}");
    assert_eq!(c.stat("rootfs").await.unwrap_err().code(), Code::NotFound);
    // An unavailable remote snapshot can still be removed.
    c.remove("sha256:c1").await.unwrap();
    c.remove("sha256:c0").await.unwrap();
    assert!(c.list(&[]).await.unwrap().is_empty());
    drop(c);
    h.stop().await;
    let _ = Arc::strong_count(&failing);
}

fn h_fs_marker(dir: &std::path::Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("root/snapshots/{id}/fs/{}", fake::MARKER))
}

/// The mounts we hand out are accepted by the kernel and behave: overlay of two lowers (view),
/// overlay with an upper (active) writing into `fs`, and the read-only bind of a one-parent view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_work_in_the_kernel() {
    support::containerd::require_root();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), None).await;
    let mut c = h.client().await;
    let m = c.prepare("a", "", no_labels()).await.unwrap();
    std::fs::write(std::path::Path::new(&m[0].source).join("bottom"), b"1").unwrap();
    c.commit("l1", "a", no_labels()).await.unwrap();
    c.prepare("b", "l1", no_labels()).await.unwrap();
    std::fs::write(h.fs(2).join("top"), b"2").unwrap();
    std::fs::write(h.fs(2).join("bottom"), b"shadowed").unwrap();
    c.commit("l2", "b", no_labels()).await.unwrap();

    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let mount = |m: &[Mount]| {
        let [m] = m else {
            panic!("one mount expected: {m:?}")
        };
        let mut flags = nix::mount::MsFlags::empty();
        let (fstype, data) = if m.fs_type == "bind" {
            flags |= nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC;
            (None, None)
        } else {
            (Some(m.fs_type.as_str()), Some(m.options.join(",")))
        };
        nix::mount::mount(
            Some(m.source.as_str()),
            &target,
            fstype,
            flags,
            data.as_deref(),
        )
        .unwrap_or_else(|e| panic!("mount {m:?}: {e}"));
        if m.options.iter().any(|o| o == "ro") {
            // A bind mount takes ro only on a remount, as containerd's mount package does.
            nix::mount::mount(
                None::<&str>,
                &target,
                None::<&str>,
                flags | nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .unwrap();
        }
    };
    let umount = || nix::mount::umount2(&target, nix::mount::MntFlags::empty()).unwrap();

    mount(&c.view("v", "l2", no_labels()).await.unwrap());
    assert_eq!(std::fs::read_to_string(target.join("top")).unwrap(), "2");
    assert_eq!(
        std::fs::read_to_string(target.join("bottom")).unwrap(),
        "shadowed",
        "top-first"
    );
    umount();

    mount(&c.prepare("rw", "l2", no_labels()).await.unwrap());
    std::fs::write(target.join("new"), b"3").unwrap();
    umount();
    let rw_fs = h.fs(4);
    assert_eq!(
        std::fs::read_to_string(rw_fs.join("new")).unwrap(),
        "3",
        "writes land in fs"
    );
    assert!(!h.fs(2).join("new").exists(), "lowers untouched");

    mount(&c.view("v1", "l1", no_labels()).await.unwrap());
    assert_eq!(std::fs::read_to_string(target.join("bottom")).unwrap(), "1");
    let err = std::fs::write(target.join("x"), b"").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    umount();
    h.stop().await;
}

/// An upper directory takes the owner of its parent's root (user-namespaced images); a failed
/// remote mount must leave that directory as it was, not a fresh root-owned one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_fallback_keeps_the_upper_dirs_owner() {
    use std::os::unix::fs::MetadataExt;
    support::containerd::require_root();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLayers::new();
    fake.fail_on(&digest('f'));
    let h = Harness::start(dir.path(), Some(fake::provider(&fake))).await;
    let mut c = h.client().await;
    c.prepare("a", "", no_labels()).await.unwrap();
    std::os::unix::fs::chown(h.fs(1), Some(4321), Some(4321)).unwrap();
    c.commit("base", "a", no_labels()).await.unwrap();
    c.prepare("k", "base", remote_labels("sha256:t", &digest('f')))
        .await
        .unwrap();
    assert_eq!(h.snapshotter.remote_stats().fallback_mount_failed, 1);
    let meta = std::fs::metadata(h.fs(2)).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4321, 4321));
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_dir(h.fs(2)).unwrap().count(), 0);
    h.stop().await;
}

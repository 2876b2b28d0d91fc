//! The merged view against the oracle (GNU `tar -x` of the same layers, applied in order with
//! whiteouts), plus the per-layer view and the hidden names.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::ffi::OsStr;

use regfs_fs::{FileKind, FsOptions, ImageFs, Ino};
use support::{
    LayerTar, compare_with_oracle, image, image_from_blobs, oracle_extract, three_layers,
    to_estargz,
};

/// Small chunks so that a few hundred KiB already make multi-chunk files.
const CHUNK: u64 = support::THREE_LAYERS_CHUNK;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_tree_equals_tar_extraction_with_whiteouts() {
    let tars = three_layers();
    let img = image(&tars, CHUNK);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    oracle_extract(&tars, &tree);
    let n = compare_with_oracle(&img.fs, &tree).await;
    // 10 root entries, etc 3, usr 1 + bin 4, data 3, opq 1, file_to_dir 1, var 1, dev 3, home 1.
    assert_eq!(n, 28, "the walk must reach every entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_holds() {
    let img = image(&three_layers(), CHUNK);
    let fs = &img.fs;
    let path = |p: &str| -> Option<regfs_fs::Attr> {
        let mut ino = Ino::ROOT;
        let mut attr = fs.getattr(ino).ok()?;
        for part in p.split('/') {
            attr = fs.lookup(ino, OsStr::new(part)).ok()?;
            ino = attr.ino;
        }
        Some(attr)
    };
    // Whiteouts delete files and whole directories; the markers themselves are invisible.
    assert!(path("var/gone").is_none());
    assert!(path("var/gonedir").is_none());
    assert!(path("var/keep").is_some());
    assert!(path("var/.wh.gone").is_none());
    // Opaque: lower contents hidden, the layer's own kept, upper dir attributes.
    let names: Vec<_> = fs
        .readdir(path("opq").unwrap().ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["c"]);
    assert_eq!(path("opq").unwrap().perm, 0o711);
    // A file over a directory replaces it, and a directory over a file too.
    assert_eq!(path("replace_dir").unwrap().kind, FileKind::Reg);
    assert_eq!(path("file_to_dir").unwrap().kind, FileKind::Dir);
    assert!(path("file_to_dir/inside").is_some());
    // Hardlinks share an inode; a whited-out name no longer counts.
    let hosts = path("etc/hosts").unwrap();
    assert_eq!(hosts.nlink, 1);
    let across = path("data/hl_across").unwrap();
    assert_ne!(
        across.ino,
        path("etc/passwd").unwrap().ino,
        "passwd was replaced upstairs"
    );
    // Special bits survive.
    assert_eq!(path("usr/bin/tool").unwrap().perm, 0o4755);
    assert_eq!(path("usr/bin/sg").unwrap().perm, 0o2755);
    assert_eq!(path("tmp").unwrap().perm, 0o1777);
    // Landmarks and the TOC are hidden in the root.
    for hidden in [
        ".no.prefetch.landmark",
        ".prefetch.landmark",
        "stargz.index.json",
    ] {
        assert!(path(hidden).is_none(), "{hidden}");
    }
    // `..` of a subdirectory is its parent; of the root, the root.
    let etc = path("etc").unwrap();
    assert_eq!(fs.lookup(etc.ino, OsStr::new("..")).unwrap().ino, Ino::ROOT);
    assert_eq!(
        fs.lookup(Ino::ROOT, OsStr::new("..")).unwrap().ino,
        Ino::ROOT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardlinks_in_one_layer_share_inode_and_count() {
    let mut l = LayerTar::new();
    // Depth-first, as real layers are: GNU tar sets a directory's mtime when it leaves it.
    l.dir("a", 0o755)
        .file("a/f", b"shared content")
        .hardlink("a/g", "a/f")
        .dir("b", 0o755)
        .hardlink("b/h", "a/f");
    let tars = vec![l.finish()];
    let img = image(&tars, CHUNK);
    let fs = &img.fs;
    let a = fs.lookup(Ino::ROOT, OsStr::new("a")).unwrap();
    let b = fs.lookup(Ino::ROOT, OsStr::new("b")).unwrap();
    let f = fs.lookup(a.ino, OsStr::new("f")).unwrap();
    let g = fs.lookup(a.ino, OsStr::new("g")).unwrap();
    let h = fs.lookup(b.ino, OsStr::new("h")).unwrap();
    assert_eq!((f.ino, f.ino), (g.ino, h.ino));
    assert_eq!(f.nlink, 3);
    assert_eq!(
        &fs.read(h.ino, 0, 100).await.unwrap()[..],
        b"shared content"
    );
    let dir = tempfile::tempdir().unwrap();
    oracle_extract(&tars, dir.path());
    compare_with_oracle(fs, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_layer_view_shows_whiteouts_as_overlayfs_expects() {
    let tars = three_layers();
    let img = image_from_blobs(
        vec![to_estargz(&tars[1], CHUNK)],
        FsOptions::default(),
        true,
    );
    let fs = &img.fs;
    let var = fs.lookup(Ino::ROOT, OsStr::new("var")).unwrap();
    for name in ["gone", "gonedir"] {
        let w = fs.lookup(var.ino, OsStr::new(name)).unwrap();
        assert_eq!((w.kind, w.rdev), (FileKind::Char, 0), "{name}");
    }
    let names: Vec<_> = fs
        .readdir(var.ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec!["gone", "gonedir"],
        "whiteout files themselves are not listed"
    );
    let opq = fs.lookup(Ino::ROOT, OsStr::new("opq")).unwrap();
    assert_eq!(
        fs.getxattr(opq.ino, OsStr::new("trusted.overlay.opaque"))
            .unwrap(),
        b"y"
    );
    assert_eq!(
        fs.listxattr(opq.ino).unwrap(),
        vec![OsStr::new("trusted.overlay.opaque")]
    );
    let opq_names: Vec<_> = fs
        .readdir(opq.ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(opq_names, vec!["c"]);
    // A whiteout of a name the layer also has keeps the real entry.
    let etc = fs.lookup(Ino::ROOT, OsStr::new("etc")).unwrap();
    let hl = fs.lookup(etc.ino, OsStr::new("hosts.link")).unwrap();
    assert_eq!(hl.kind, FileKind::Char);
    assert!(
        fs.getxattr(etc.ino, OsStr::new("trusted.overlay.opaque"))
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statfs_counts_every_inode_so_no_layer_reports_zero_capacity() {
    // A layer of only a directory and a whiteout: no file bytes at all.
    let mut t = LayerTar::new();
    t.dir("var/", 0o755).whiteout("var", "gone");
    let img = image_from_blobs(
        vec![to_estargz(&t.finish(), CHUNK)],
        FsOptions::default(),
        true,
    );
    let st = img.fs.statfs();
    assert_eq!(st.files, 3, "root, var and the whiteout: {st:?}");
    assert_eq!(st.blocks, 3, "one block per non-file inode: {st:?}");
    // Files count their size in blocks, rounded up.
    let mut t = LayerTar::new();
    t.file("a", &[1u8; 4097]).file("b", b"");
    let img = image_from_blobs(
        vec![to_estargz(&t.finish(), CHUNK)],
        FsOptions::default(),
        true,
    );
    let st = img.fs.statfs();
    assert_eq!(st.block_size, 4096);
    assert_eq!(st.blocks, 1 + 2, "root; a = 2 blocks; b = 0: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_errno() {
    let img = image(&three_layers(), CHUNK);
    let fs: &ImageFs = &img.fs;
    let etc = fs.lookup(Ino::ROOT, OsStr::new("etc")).unwrap();
    let passwd = fs.lookup(etc.ino, OsStr::new("passwd")).unwrap();
    let cases = [
        (
            fs.lookup(Ino::ROOT, OsStr::new("nope")).unwrap_err(),
            libc::ENOENT,
        ),
        (
            fs.lookup(passwd.ino, OsStr::new("x")).unwrap_err(),
            libc::ENOTDIR,
        ),
        (fs.getattr(Ino(u64::MAX)).unwrap_err(), libc::ENOENT),
        (fs.readlink(passwd.ino).unwrap_err(), libc::EINVAL),
        (
            fs.getxattr(passwd.ino, OsStr::new("user.none"))
                .unwrap_err(),
            libc::ENODATA,
        ),
        (fs.read(etc.ino, 0, 10).await.unwrap_err(), libc::EISDIR),
        (fs.open(etc.ino).unwrap_err(), libc::EISDIR),
    ];
    for (err, want) in cases {
        assert_eq!(err.errno(), want, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lists_first_touches_in_order() {
    let tars = three_layers();
    let blobs = tars.iter().map(|t| to_estargz(t, CHUNK)).collect();
    let img = image_from_blobs(
        blobs,
        FsOptions {
            record_access: true,
            ..FsOptions::default()
        },
        false,
    );
    let fs = &img.fs;
    let etc = fs.lookup(Ino::ROOT, OsStr::new("etc")).unwrap();
    let passwd = fs.lookup(etc.ino, OsStr::new("passwd")).unwrap();
    let hosts = fs.lookup(etc.ino, OsStr::new("hosts")).unwrap();
    fs.open(passwd.ino).unwrap();
    fs.read(hosts.ino, 0, 4).await.unwrap();
    fs.read(passwd.ino, 0, 4).await.unwrap();
    let log = fs.take_access_log();
    let layers: Vec<_> = img.blobs.iter().map(|(d, _)| *d).collect();
    assert_eq!(
        log,
        vec![
            ("/etc/passwd".to_string(), layers[1]),
            ("/etc/hosts".to_string(), layers[0])
        ]
    );
    assert!(fs.take_access_log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implied_directory_keeps_the_lower_directory_attributes() {
    let mut l0 = LayerTar::new();
    l0.dir_owned("a", 0o700, 5, 6, 1_600_000_000)
        .file("a/f", b"f");
    let mut l1 = LayerTar::new();
    // No "a" entry: the index implies it (0755, root).
    l1.file("a/g", b"g");
    let img = image(&[l0.finish(), l1.finish()], CHUNK);
    let a = img.fs.lookup(Ino::ROOT, OsStr::new("a")).unwrap();
    assert_eq!((a.perm, a.uid, a.gid), (0o700, 5, 6));
    let names: Vec<_> = img
        .fs
        .readdir(a.ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["f", "g"]);
}

//! The reference conformance cases (spec §6) ported: writer/reader round trips with member
//! counts, digests and verification, prioritized-file sorting.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use regfs_estargz::{
    BlobFormat, ConvertOptions, Digest, EntryKind, Error, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK,
    Reader,
};
use support::{E, convert_to_vec, gunzip, member_starts, open, opts, sha, tar_of};

/// Checks every invariant the reference `testWriteAndOpen` checks, returning the reader.
fn check_blob(tar: &[u8], blob: &[u8], report: &regfs_estargz::ConvertReport) -> Reader<Vec<u8>> {
    let plain = gunzip(blob);
    assert_eq!(
        report.diff_id,
        sha(&plain),
        "DiffID is sha256 of the decompressed blob"
    );
    assert_eq!(report.uncompressed_size, plain.len() as u64);
    assert_eq!(report.blob_digest, sha(blob));
    assert_eq!(report.blob_size, blob.len() as u64);
    let r = open(blob);
    assert_eq!(r.format(), BlobFormat::Estargz);
    assert_eq!(r.toc_digest(), report.toc_digest);
    assert_eq!(r.toc(), &report.toc);
    assert_eq!(r.toc().version, 1);
    r.verify_toc_digest(&report.toc_digest).unwrap();
    // Every TOC offset is a real member start.
    let starts = member_starts(blob);
    for e in r.toc().entries.iter().flatten() {
        if e.offset != 0 {
            assert!(
                starts.contains(&(e.offset as u64)),
                "{} offset {} is no member start",
                e.name,
                e.offset
            );
        }
    }
    assert_eq!(*starts.last().unwrap(), blob.len() as u64 - 51);
    assert_eq!(starts[starts.len() - 2], r.toc_offset());
    // Lossless: the input's entries appear byte for byte after the no-prefetch landmark.
    let drops =
        |n: &str| [PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, "stargz.index.json"].contains(&n);
    let dropped = tar::Archive::new(tar).entries().unwrap().any(|e| {
        drops(&regfs_estargz::clean_name(&String::from_utf8_lossy(
            &e.unwrap().path_bytes(),
        )))
    });
    if r.index().has_no_prefetch_landmark() && !dropped {
        let body = input_body(tar);
        assert!(
            plain[1024..1024 + body.len()] == *body,
            "tar headers and payloads are copied verbatim"
        );
        // Then the TOC entry, then exactly one end-of-archive trailer.
        let toc_hdr = &plain[1024 + body.len()..];
        assert_eq!(&toc_hdr[..18], b"stargz.index.json\0");
        assert!(plain.ends_with(&[0u8; 1024]));
        let json_len = r.toc().to_json().len();
        assert_eq!(toc_hdr.len(), 512 + json_len.div_ceil(512) * 512 + 1024);
    }
    // Every regular file reads back as in the input (last duplicate wins).
    let mut want = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(tar);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = regfs_estargz::clean_name(&String::from_utf8_lossy(&e.path_bytes()));
        if [PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, "stargz.index.json"].contains(&path.as_str()) {
            continue;
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        want.insert(
            path,
            (e.header().entry_type() == tar::EntryType::Regular).then_some(data),
        );
    }
    for (path, data) in want {
        let id = r
            .index()
            .lookup(&path)
            .unwrap_or_else(|| panic!("{path} not found"));
        if let Some(data) = data {
            assert_eq!(r.read_to_vec(id).unwrap(), data, "{path}");
        }
    }
    r
}

/// The input tar up to (excluding) its end-of-archive blocks.
fn input_body(tar: &[u8]) -> &[u8] {
    let mut ar = tar::Archive::new(tar);
    let mut end = 0u64;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        end = e.raw_file_position() + e.header().entry_size().unwrap().div_ceil(512) * 512;
    }
    &tar[..end as usize]
}

/// Member count as the reference Writer counts it, plus what the leading no-prefetch landmark
/// adds: its payload member, and member 0 itself when the layer is otherwise empty.
fn assert_members(blob: &[u8], writer_count: usize, empty: bool) {
    let want = writer_count + 1 + usize::from(empty);
    assert_eq!(member_starts(blob).len(), want);
}

#[test]
fn empty() {
    let tar = tar_of(&[]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 2, true);
    assert_eq!(r.toc().entries.as_ref().unwrap().len(), 1);
    let names: Vec<_> = r
        .index()
        .children(r.index().root())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, [NO_PREFETCH_LANDMARK]);
}

#[test]
fn one_dir_one_empty_file() {
    let tar = tar_of(&[E::Dir("foo/", 0o755), E::File("foo/bar.txt", b"")]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 3, false);
    let ix = r.index();
    let f = ix.entry(ix.lookup("foo/bar.txt").unwrap());
    assert_eq!((f.size, f.digest), (0, Some(sha(b""))));
    assert!(ix.chunks(ix.lookup("foo/bar.txt").unwrap()).is_empty());
    assert_eq!(ix.children(ix.lookup("foo").unwrap()).count(), 1);
}

#[test]
fn one_dir_one_file_with_xattrs() {
    let tar = tar_of(&[
        E::Dir("foo/", 0o755),
        E::FileX(
            "foo/bar.txt",
            b"some contents",
            &[("foo", b"bar"), ("invalid-utf8", b"\xff\xfe\xfd")],
        ),
    ]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 4, false);
    let id = r.index().lookup("foo/bar.txt").unwrap();
    let e = r.index().entry(id);
    assert_eq!(e.xattrs.get("foo").map(Vec::as_slice), Some(&b"bar"[..]));
    assert_eq!(
        e.xattrs.get("invalid-utf8").map(Vec::as_slice),
        Some(&b"\xff\xfe\xfd"[..])
    );
    for off in [0u64, 1] {
        let mut buf = vec![0u8; 100];
        let n = r.read_file(id, off, &mut buf).unwrap();
        assert_eq!(&buf[..n], &b"some contents"[off as usize..]);
    }
}

#[test]
fn two_meta_two_files_owners() {
    let tar = tar_of(&[
        E::Dir("bar/", 0o755),
        E::FileOwner("bar/foo", b"foo contents", 50, 100, "user50", "group100"),
        E::FileOwner("bar/foo2", b"", 50, 100, "user50", "group100"),
    ]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 4, false);
    let ix = r.index();
    for p in ["bar/foo", "bar/foo2"] {
        let e = ix.entry(ix.lookup(p).unwrap());
        assert_eq!(
            (e.uid, e.gid, e.uname.as_str(), e.gname.as_str()),
            (50, 100, "user50", "group100"),
            "{p}"
        );
    }
    // userName/groupName are written on the first occurrence per id only.
    let entries = rep.toc.entries.as_ref().unwrap();
    let named: Vec<_> = entries
        .iter()
        .filter(|e| !e.user_name.is_empty())
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(named, ["bar/foo"]);
}

#[test]
fn three_dirs_link_counts() {
    let tar = tar_of(&[
        E::Dir("bar/", 0o755),
        E::Dir("foo/", 0o755),
        E::Dir("foo/bar/", 0o755),
    ]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 3, false);
    let ix = r.index();
    for (p, n) in [("bar", 2), ("foo", 3), ("foo/bar", 2)] {
        assert_eq!(ix.entry(ix.lookup(p).unwrap()).num_link, n, "{p}");
    }
}

#[test]
fn symlink() {
    let tar = tar_of(&[E::Dir("foo/", 0o755), E::Sym("foo/bar", "../../x")]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 3, false);
    let e = r.index().entry(r.index().lookup("foo/bar").unwrap());
    assert_eq!(
        (e.kind, e.link_name.as_str()),
        (EntryKind::Symlink, "../../x")
    );
}

#[test]
fn chunked_file() {
    let data = b"This is such a big file";
    let tar = tar_of(&[E::File("foo", data)]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 9, false);
    // 6 chunk entries + the landmark.
    assert_eq!(rep.toc.entries.as_ref().unwrap().len(), 7);
    let id = r.index().lookup("foo").unwrap();
    for off in (0..13).chain([22]) {
        let mut buf = vec![0u8; 10];
        let n = r.read_file(id, off, &mut buf).unwrap();
        let want = &data[off as usize..data.len().min(off as usize + 10)];
        assert_eq!(&buf[..n], want, "offset {off}");
    }
    let chunks = r.index().chunks(id);
    assert_eq!(chunks.len(), 6);
    for w in chunks.windows(2) {
        assert_eq!(w[0].next_offset, w[1].offset);
    }
    let entries = rep.toc.entries.as_ref().unwrap();
    assert_eq!(
        entries[1].chunk_size, 4,
        "reg entry of a chunked file has chunkSize"
    );
    assert_eq!(
        entries[6].chunk_size, 0,
        "last short chunk has no chunkSize"
    );
}

#[test]
fn recursive_with_root_entry() {
    let tar = tar_of(&[
        E::Dir("/", 0o755),
        E::Dir("bar/", 0o755),
        E::Dir("foo/", 0o755),
        E::File("foo/bar.txt", b"test"),
    ]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 4, false);
    let ix = r.index();
    let root = ix.root();
    assert!(
        ix.children(root).all(|(_, c)| c != root),
        "root is not its own child"
    );
    assert_eq!(ix.entry(root).num_link, 3);
}

#[test]
fn block_char_fifo() {
    let tar = tar_of(&[
        E::Block("b", 123, 456),
        E::Char("c", 111, 222),
        E::Fifo("f"),
    ]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 3, false);
    let ix = r.index();
    for (p, k, ma, mi) in [
        ("b", EntryKind::Block, 123, 456),
        ("c", EntryKind::Char, 111, 222),
        ("f", EntryKind::Fifo, 0, 0),
    ] {
        let e = ix.entry(ix.lookup(p).unwrap());
        assert_eq!(
            (e.kind, e.dev_major, e.dev_minor, e.num_link),
            (k, ma, mi, 1),
            "{p}"
        );
    }
}

#[test]
fn modes_round_trip() {
    let cases = [
        ("dsgid/", 0o2755),
        ("fsuid", 0o4755),
        ("fsgid", 0o2755),
        ("dsticky/", 0o1777),
        ("fsticky", 0o1755),
        ("f700", 0o700),
        ("f755", 0o755),
    ];
    let entries: Vec<E<'_>> = cases
        .iter()
        .map(|&(p, m)| {
            if p.ends_with('/') {
                E::Dir(p, m)
            } else {
                E::FileMode(p, b"x", m)
            }
        })
        .collect();
    let tar = tar_of(&entries);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 8, false);
    for (p, m) in cases {
        let e = r.index().entry(r.index().lookup(p).unwrap());
        assert_eq!(e.mode, m, "{p}");
        let ty = if p.ends_with('/') { 0o040000 } else { 0o100000 };
        assert_eq!(e.st_mode(), ty | m, "{p}");
    }
}

#[test]
fn existing_toc_entry_is_dropped() {
    let tar = tar_of(&[
        E::Dir("foo/", 0o755),
        E::File("stargz.index.json", b"{}"),
        E::File("foo/bar", b"x"),
    ]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    let r = open(&blob);
    assert_eq!(rep.toc.entries.as_ref().unwrap().len(), 3);
    assert_members(&blob, 4, false);
    assert_eq!(
        r.index()
            .entries_in_toc_order()
            .filter(|&id| r.index().entry(id).name == "stargz.index.json")
            .count(),
        0
    );
}

#[test]
fn hardlink_resolves_to_the_target() {
    let tar = tar_of(&[
        E::Dir("foo/", 0o755),
        E::File("foo/foo1", b"test"),
        E::Link("foolink", "foo/foo1"),
    ]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    let r = check_blob(&tar, &blob, &rep);
    assert_members(&blob, 4, false);
    let ix = r.index();
    let target = ix.lookup("foo/foo1").unwrap();
    assert_eq!(ix.lookup("foolink"), Some(target));
    assert_eq!(ix.child(ix.root(), "foolink"), Some(target));
    assert_eq!(ix.entry(target).num_link, 2);
}

#[test]
fn output_does_not_depend_on_thread_count() {
    // TestBuildParallelismReproducible: 128 files x 1500 B, chunk 512.
    let files: Vec<(String, Vec<u8>)> = (0..128)
        .map(|i| {
            (
                format!("f{i:03}"),
                (0..1500).map(|j| ((i * 7 + j * 13) % 251) as u8).collect(),
            )
        })
        .collect();
    let entries: Vec<E<'_>> = files.iter().map(|(n, d)| E::File(n, d)).collect();
    let tar = tar_of(&entries);
    let run = |threads| {
        let o = ConvertOptions {
            chunk_size: 512,
            threads,
            ..ConvertOptions::default()
        };
        convert_to_vec(&tar, &o).0
    };
    let one = run(1);
    assert_eq!(one, run(4));
    assert_eq!(one, run(3));
    let r = open(&one);
    for (n, d) in &files {
        assert_eq!(&r.read_to_vec(r.index().lookup(n).unwrap()).unwrap(), d);
    }
}

#[test]
fn digests_and_verification() {
    // testDigestAndVerify, chunk size 3.
    let tar = tar_of(&[
        E::File("baz.txt", b"bazbazbazbazbazbazbaz"),
        E::File("foo.txt", b"a"),
        E::Dir("test/", 0o755),
        E::File("test/bar.txt", b"testbartestbar"),
        E::File("bar/foo2.txt", b"b"),
        E::Sym("barlink", "test/bar.txt"),
        E::Dir("test2/", 0o755),
        E::Link("test2/bazlink", "baz.txt"),
    ]);
    let (blob, rep) = convert_to_vec(&tar, &opts(3));
    let r = check_blob(&tar, &blob, &rep);
    let ix = r.index();
    let mut seen = 0;
    for (name, content) in [
        ("baz.txt", &b"bazbazbazbazbazbazbaz"[..]),
        ("test/bar.txt", b"testbartestbar"),
        ("foo.txt", b"a"),
        (NO_PREFETCH_LANDMARK, b"\x0f"),
    ] {
        let id = ix.lookup(name).unwrap();
        assert_eq!(ix.entry(id).digest, Some(sha(content)), "{name}");
        for c in ix.chunks(id) {
            let want = &content[c.chunk_offset as usize..c.end() as usize];
            assert_eq!(
                c.digest,
                Some(sha(want)),
                "{name}-{}-{}",
                c.chunk_offset,
                c.chunk_size
            );
            assert_eq!(r.read_chunk(c).unwrap(), want);
            seen += 1;
        }
    }
    assert_eq!(seen, 7 + 5 + 1 + 1);
    let wrong = Digest::sha256(b"other");
    assert!(matches!(
        r.verify_toc_digest(&wrong),
        Err(Error::TocDigestMismatch { .. })
    ));

    // A blob built from a modified tar does not verify against the original TOC digest.
    let modified = tar_of(&[
        E::File("baz.txt", b"bazbazbazMMMbazbazbaz"),
        E::File("foo.txt", b"M"),
    ]);
    let (blob2, _) = convert_to_vec(&modified, &opts(3));
    assert!(open(&blob2).verify_toc_digest(&rep.toc_digest).is_err());
}

#[test]
fn flipped_byte_in_a_chunk_fails_verification() {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let tar = tar_of(&[E::File("f", &data)]);
    let (blob, _) = convert_to_vec(&tar, &opts(4096));
    let r = open(&blob);
    let id = r.index().lookup("f").unwrap();
    let c = r.index().chunks(id)[1].clone();
    // Rewrite the member with one different uncompressed byte: a well-formed member, wrong data.
    let mut plain = regfs_estargz::decode_chunk(
        &blob[c.offset as usize..],
        &regfs_estargz::Chunk {
            digest: None,
            ..c.clone()
        },
    )
    .unwrap();
    plain[0] ^= 0xff;
    assert!(matches!(
        regfs_estargz::verify_chunk(&plain, &c),
        Err(Error::ChunkDigestMismatch {
            chunk_offset: 4096,
            ..
        })
    ));
    // And a flipped compressed byte is caught either by deflate/CRC or by the digest.
    let mut bad = blob.clone();
    bad[c.offset as usize + 20] ^= 0x01;
    let rb = open(&bad);
    let mut buf = vec![0u8; 10];
    let err = rb.read_file(id, 4096, &mut buf).unwrap_err();
    assert!(
        matches!(err, Error::ChunkDigestMismatch { .. } | Error::Gzip { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&c.offset.to_string()), "{msg}");
}

/// The TOC order of non-chunk entries, cleaned names.
fn order_of(rep: &regfs_estargz::ConvertReport) -> Vec<String> {
    rep.toc
        .entries
        .iter()
        .flatten()
        .filter(|e| e.kind != EntryKind::Chunk)
        .map(|e| e.name.clone())
        .collect()
}

fn sorted(entries: &[E<'_>], log: &[&str]) -> (Vec<String>, Vec<String>) {
    let tar = tar_of(entries);
    let o = ConvertOptions {
        chunk_size: 4,
        prioritized_files: Some(log.iter().map(|s| s.to_string()).collect()),
        threads: 1,
        ..Default::default()
    };
    let (blob, rep) = convert_to_vec(&tar, &o);
    check_blob(&tar, &blob, &rep);
    (order_of(&rep), rep.missed_prioritized)
}

#[test]
fn sort_cases() {
    let base = [
        E::File("foo.txt", b"foo"),
        E::Dir("baz/", 0o755),
        E::Dir("baz/bazbaz/", 0o755),
        E::File("baz/bazbaz/bazbaz_a.txt", b"a"),
        E::File("baz/baz2.txt", b"b"),
        E::File("bar.txt", b"c"),
    ];
    // nolog
    let (o, _) = sorted(&base, &[]);
    assert_eq!(
        o,
        [
            NO_PREFETCH_LANDMARK,
            "foo.txt",
            "baz/",
            "baz/bazbaz/",
            "baz/bazbaz/bazbaz_a.txt",
            "baz/baz2.txt",
            "bar.txt"
        ]
    );
    // shuffle_directory: parents pulled ahead, prefixes ignored.
    let (o, missed) = sorted(
        &base,
        &["/baz/bazbaz/bazbaz_a.txt", "./baz/baz2.txt", "../foo.txt"],
    );
    assert_eq!(
        o,
        [
            "baz/",
            "baz/bazbaz/",
            "baz/bazbaz/bazbaz_a.txt",
            "baz/baz2.txt",
            "foo.txt",
            PREFETCH_LANDMARK,
            "bar.txt"
        ]
    );
    assert!(missed.is_empty());
    // not existing file: skipped and reported as given.
    let (o, missed) = sorted(&base, &["./nope", "bar.txt"]);
    assert_eq!(
        o,
        [
            "bar.txt",
            PREFETCH_LANDMARK,
            "foo.txt",
            "baz/",
            "baz/bazbaz/",
            "baz/bazbaz/bazbaz_a.txt",
            "baz/baz2.txt"
        ]
    );
    assert_eq!(missed, ["./nope"]);
    // all missing: the landmark still comes first.
    let (o, _) = sorted(&base[..1], &["nope"]);
    assert_eq!(o, [PREFETCH_LANDMARK, "foo.txt"]);
}

#[test]
fn sort_links_types_and_duplicates() {
    let entries = [
        E::File("foo.txt", b"foo"),
        E::Link("link", "foo.txt"),
        E::Fifo("fifo"),
        E::Sym("sym", "foo.txt"),
        E::Char("chardev", 1, 2),
        E::Block("blockdev", 3, 4),
        E::File("dup", b"first"),
        E::File("dup", b"second"),
    ];
    // Prioritizing a hardlink pulls its target first; a prioritized target leaves the link behind.
    let (o, _) = sorted(&entries, &["link", "fifo", "sym", "blockdev"]);
    assert_eq!(
        o,
        [
            "foo.txt",
            "link",
            "fifo",
            "sym",
            "blockdev",
            PREFETCH_LANDMARK,
            "chardev",
            "dup"
        ]
    );
    let (o, _) = sorted(&entries, &["foo.txt"]);
    assert_eq!(
        o,
        [
            "foo.txt",
            PREFETCH_LANDMARK,
            "link",
            "fifo",
            "sym",
            "chardev",
            "blockdev",
            "dup"
        ]
    );
    // duplicated entry: last wins, at its own position.
    let tar = tar_of(&entries);
    let (blob, _) = convert_to_vec(&tar, &opts(4));
    let r = open(&blob);
    assert_eq!(
        r.read_to_vec(r.index().lookup("dup").unwrap()).unwrap(),
        b"second"
    );
}

#[test]
fn sort_root_entries_and_existing_landmarks() {
    let entries = [
        E::Dir("./", 0o755),
        E::File("./.prefetch.landmark", b"\x0f"),
        E::File("./foo.txt", b"foo"),
        E::File("./.no.prefetch.landmark", b"\x0f"),
        E::File("./bar.txt", b"bar"),
    ];
    let (o, _) = sorted(&entries, &["bar.txt"]);
    assert_eq!(o, ["./", "./bar.txt", PREFETCH_LANDMARK, "./foo.txt"]);
    let (o, _) = sorted(&entries, &[]);
    assert_eq!(o, [NO_PREFETCH_LANDMARK, "./", "./foo.txt", "./bar.txt"]);
    let abs = [
        E::Dir("/", 0o755),
        E::File("/foo.txt", b"foo"),
        E::File("/bar.txt", b"bar"),
    ];
    let (o, _) = sorted(&abs, &["/bar.txt"]);
    assert_eq!(o, ["/", "/bar.txt", PREFETCH_LANDMARK, "/foo.txt"]);
}

#[test]
fn prefetch_landmark_bounds_the_prioritized_files() {
    let tar = tar_of(&[
        E::File("a", b"aaaa"),
        E::File("b", b"bbbb"),
        E::File("c", b"cccc"),
    ]);
    let o = ConvertOptions {
        prioritized_files: Some(vec!["b".into()]),
        ..opts(4 << 20)
    };
    let (blob, _) = convert_to_vec(&tar, &o);
    let r = open(&blob);
    let ix = r.index();
    let end = ix.prefetch_landmark().unwrap();
    assert!(!ix.has_no_prefetch_landmark());
    assert!(ix.chunks(ix.lookup("b").unwrap())[0].offset < end);
    assert!(ix.chunks(ix.lookup("a").unwrap())[0].offset > end);
    // The landmark payload has its own member.
    assert!(member_starts(&blob).contains(&end));
}

#[test]
fn umoci_layer_without_parent_entries_converts_and_prioritizes() {
    // No entries for usr/ or usr/bin/: the reference would skip the child; we keep it.
    let tar = tar_of(&[
        E::File("usr/bin/tool", b"#!tool"),
        E::File("etc/conf", b"c"),
    ]);
    let o = ConvertOptions {
        prioritized_files: Some(vec!["/usr/bin/tool".into()]),
        ..opts(4 << 20)
    };
    let (blob, rep) = convert_to_vec(&tar, &o);
    assert_eq!(
        order_of(&rep),
        ["usr/bin/tool", PREFETCH_LANDMARK, "etc/conf"]
    );
    assert!(rep.missed_prioritized.is_empty());
    let r = check_blob(&tar, &blob, &rep);
    let usr = r.index().lookup("usr").unwrap();
    assert_eq!(
        (r.index().entry(usr).kind, r.index().entry(usr).mode),
        (EntryKind::Dir, 0o755)
    );
}

#[test]
fn toc_dump_golden() {
    let tar = tar_of(&[
        E::Dir("foo/", 0o755),
        E::FileX(
            "foo/bar.txt",
            b"Some contents",
            &[("user.foo", b"bar"), ("user.bin", b"\xff\xfe")],
        ),
        E::File("a&b<c>.txt", b""),
        E::Sym("foo/link", "bar.txt"),
        E::Char("foo/null", 1, 3),
    ]);
    let (_, rep) = convert_to_vec(&tar, &opts(4));
    // Offsets depend on the deflate encoder; the rest of the document is fixed.
    let mut toc = rep.toc.clone();
    for e in toc.entries.iter_mut().flatten() {
        e.offset = e.offset.signum();
    }
    insta::assert_snapshot!(String::from_utf8(toc.to_json()).unwrap());
}

#[test]
fn empty_files_interleaved() {
    // testBuild "empty files": six 6-byte files interleaved with five empty ones.
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let entries: Vec<E<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| E::File(n, if i % 2 == 0 { b"123456" } else { b"" }))
        .collect();
    let tar = tar_of(&entries);
    let (blob, rep) = convert_to_vec(&tar, &opts(4));
    check_blob(&tar, &blob, &rep);
    // Member 0, the landmark, two chunks per non-empty file, TOC, footer.
    assert_eq!(member_starts(&blob).len(), 2 + 6 * 2 + 2);
}

#[test]
fn long_names_sort_and_read() {
    let a = "a".repeat(120);
    let b = format!("{}/{}", "b".repeat(60), "c".repeat(90));
    let (o, missed) = sorted(
        &[E::File(&a, b"A"), E::Dir("x/", 0o755), E::File(&b, b"B")],
        &[&b],
    );
    assert!(missed.is_empty());
    assert_eq!(o, [b.clone(), PREFETCH_LANDMARK.into(), a, "x/".into()]);
}

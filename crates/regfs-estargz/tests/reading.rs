//! Reader behaviour beyond the converter's own output: hostile and truncated blobs, legacy
//! footers, packed (innerOffset) members, the two-read TOC path, lossless header corner cases.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;

use regfs_estargz::{
    BlobFormat, ConvertOptions, EntryKind, Error, Reader, Toc, TocEntry, TocLocation, convert,
    decompress_input, encode_footer, encode_legacy_footer, locate_toc, parse_toc_member,
};
use support::{E, convert_to_vec, gunzip, open, opts, sha, tar_of};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// A TOC member as the reference writes it, with `name` as the tar entry name.
fn toc_member(name: &str, json: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0);
    b.append_data(&mut h, name, json).unwrap();
    gzip(&b.into_inner().unwrap())
}

/// A blob of `data` members followed by a TOC member and footer.
fn blob_with_toc(data: &[u8], toc_member: &[u8]) -> Vec<u8> {
    let mut blob = data.to_vec();
    let off = blob.len() as u64;
    blob.extend_from_slice(toc_member);
    blob.extend_from_slice(&encode_footer(off));
    blob
}

fn open_err(blob: Vec<u8>) -> Error {
    match Reader::open(blob) {
        Ok(_) => panic!("opened"),
        Err(e) => e,
    }
}

#[test]
fn truncated_and_garbage_blobs_fail_to_open() {
    let tar = tar_of(&[E::File("a", b"hello")]);
    let (blob, _) = convert_to_vec(&tar, &opts(4 << 20));
    for cut in [0, 10, 50, blob.len() / 2, blob.len() - 1] {
        assert!(Reader::open(blob[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 20] ^= 0xff;
    assert!(matches!(open_err(bad), Error::BadFooter(_)));
}

#[test]
fn toc_offset_past_the_end() {
    let mut blob = vec![0u8; 100];
    blob.extend_from_slice(&encode_footer(1 << 40));
    assert!(matches!(open_err(blob), Error::TocOffsetOutOfRange { .. }));
    // Pointing at the footer itself leaves no room for a TOC.
    let blob = encode_footer(0).to_vec();
    assert!(matches!(open_err(blob), Error::TocOffsetOutOfRange { .. }));
}

#[test]
fn toc_entry_with_another_name() {
    let blob = blob_with_toc(
        b"",
        &toc_member("other.json", b"{\"version\":1,\"entries\":null}"),
    );
    match open_err(blob) {
        Error::TocName(n) => assert_eq!(n, "other.json"),
        e => panic!("{e}"),
    }
}

#[test]
fn malformed_toc_json() {
    for json in [&b"{"[..], b"[1]", b"{\"entries\":[{\"type\":\"nope\"}]}"] {
        let blob = blob_with_toc(b"", &toc_member("stargz.index.json", json));
        assert!(matches!(open_err(blob), Error::TocJson(_)));
    }
}

#[test]
fn hardlink_to_missing_target() {
    let mut link = TocEntry::new("l", EntryKind::Hardlink);
    link.link_name = "missing".into();
    let toc = Toc {
        version: 1,
        entries: Some(vec![link]),
    };
    let blob = blob_with_toc(b"", &toc_member("stargz.index.json", &toc.to_json()));
    assert!(matches!(
        open_err(blob),
        Error::HardlinkTargetMissing { .. }
    ));
}

#[test]
fn legacy_footer_is_read() {
    let tar = tar_of(&[E::File("a", b"legacy")]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    let toc_off = open(&blob).toc_offset();
    let mut legacy = blob[..blob.len() - 51].to_vec();
    legacy.extend_from_slice(&encode_legacy_footer(toc_off));
    let r = open(&legacy);
    assert_eq!(r.format(), BlobFormat::LegacyStargz);
    assert_eq!(r.toc_digest(), rep.toc_digest);
    assert_eq!(
        r.read_to_vec(r.index().lookup("a").unwrap()).unwrap(),
        b"legacy"
    );
}

#[test]
fn large_toc_takes_the_second_read() {
    let names: Vec<String> = (0..6000)
        .map(|i| format!("dir/some-long-file-name-{i:05}.txt"))
        .collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, n.as_bytes())).collect();
    let tar = tar_of(&entries);
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    let tail = &blob[blob.len() - 4096..];
    let TocLocation::NeedRange { start, end } = locate_toc(tail, blob.len() as u64).unwrap() else {
        panic!("a 4 KiB tail cannot hold this TOC");
    };
    assert_eq!(end, blob.len() as u64 - 51);
    let (toc, digest) = parse_toc_member(&blob[start as usize..end as usize]).unwrap();
    assert_eq!((toc, digest), (rep.toc.clone(), rep.toc_digest));
    // With the whole blob as tail, the TOC comes back parsed.
    assert!(matches!(
        locate_toc(&blob, blob.len() as u64).unwrap(),
        TocLocation::Parsed { .. }
    ));
    let r = open(&blob);
    let id = r.index().lookup(&names[4321]).unwrap();
    assert_eq!(r.read_to_vec(id).unwrap(), names[4321].as_bytes());
}

/// several_files_in_chunk: a hand-packed blob where files share members (innerOffset), as the
/// reference writes with MinChunkSize.
#[test]
fn packed_members_with_inner_offsets() {
    let big1: Vec<u8> = (0..64_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big3: Vec<u8> = big1.iter().rev().copied().collect();
    let files: [(&str, &[u8]); 5] = [
        ("foo/foo1", &big1),
        ("foo2", b"bb"),
        ("foo22", b"ccc"),
        ("bar/bar.txt", b"dddd"),
        ("foo3", &big3),
    ];
    let entries: Vec<E<'_>> = files.iter().map(|(n, d)| E::File(n, d)).collect();
    let mut tar = tar_of(&entries);
    tar.truncate(tar.len() - 1024 - 100);
    // Uncompressed payload positions.
    let mut pos = Vec::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        pos.push(e.unwrap().raw_file_position() as usize);
    }
    // Member A: everything before foo3's payload; member B: foo3's payload onwards.
    let split = pos[4];
    let a = gzip(&tar[..split]);
    let mut rest = tar[split..].to_vec();
    rest.extend_from_slice(&[0u8; 1024]);
    let b = gzip(&rest);
    let mut toc_entries = Vec::new();
    for (i, (name, data)) in files.iter().enumerate() {
        let mut e = TocEntry::new(*name, EntryKind::Reg);
        e.size = data.len() as i64;
        e.digest = Some(sha(data));
        e.chunk_digest = e.digest;
        if i < 4 {
            // Offset 0 with a non-zero innerOffset: the packing corner case of the spec.
            e.inner_offset = pos[i] as i64;
        } else {
            e.offset = a.len() as i64;
        }
        toc_entries.push(e);
    }
    let toc = Toc {
        version: 1,
        entries: Some(toc_entries),
    };
    let json = toc.to_json();
    let mut data = a.clone();
    data.extend_from_slice(&b);
    let blob = blob_with_toc(&data, &toc_member("stargz.index.json", &json));
    let r = open(&blob);
    for (name, want) in files {
        let id = r.index().lookup(name).unwrap();
        assert_eq!(r.read_to_vec(id).unwrap(), want, "{name}");
        let mut buf = [0u8; 2];
        let n = r.read_file(id, 1, &mut buf).unwrap();
        assert_eq!(&buf[..n], &want[1..want.len().min(3)], "{name} at 1");
    }
    let foo22 = r.index().lookup("foo22").unwrap();
    assert_eq!(r.index().chunks(foo22)[0].next_offset, a.len() as u64);
}

#[test]
fn chunks_without_digest_are_refused_in_estargz() {
    let tar = tar_of(&[E::File("a", b"data")]);
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    let r = open(&blob);
    let mut toc = rep.toc.clone();
    for e in toc.entries.iter_mut().flatten() {
        e.chunk_digest = None;
        e.digest = None;
    }
    let toc_off = r.toc_offset() as usize;
    let blob = blob_with_toc(
        &blob[..toc_off],
        &toc_member("stargz.index.json", &toc.to_json()),
    );
    let r = open(&blob);
    let id = r.index().lookup("a").unwrap();
    assert!(matches!(
        r.read_to_vec(id),
        Err(Error::MissingChunkDigest { .. })
    ));
}

#[test]
fn gnu_long_names_pax_and_non_utf8_names_survive() {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    // A non-UTF-8 name, written raw.
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..3].copy_from_slice(b"n\xffx");
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"raw"[..]).unwrap();
    // PAX mtime with a fraction and a huge uid.
    b.append_pax_extensions([("mtime", &b"1614834367.6"[..]), ("uid", b"4000000000")])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, "pax", &b"p"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    let r = open(&blob);
    assert_eq!(
        r.read_to_vec(r.index().lookup(&long).unwrap()).unwrap(),
        b"long"
    );
    let e = rep
        .toc
        .entries
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name.starts_with('n'))
        .unwrap();
    assert_eq!(e.name, "n\u{fffd}x");
    assert!(
        String::from_utf8(rep.toc.to_json())
            .unwrap()
            .contains("n\\ufffdx")
    );
    let pax = r.index().entry(r.index().lookup("pax").unwrap());
    assert_eq!((pax.modtime.0, pax.uid), (1_614_834_368, 4_000_000_000));
    // The raw name survives in the tar stream.
    let plain = gunzip(&blob);
    assert!(plain.windows(3).any(|w| w == b"n\xffx"));
}

#[test]
fn unsupported_entries_are_named() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XGlobalHeader);
    h.set_size(0);
    b.append_data(&mut h, "global", &[][..]).unwrap();
    let tar = b.into_inner().unwrap();
    let err = convert(&tar, &ConvertOptions::default(), &mut Vec::new(), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("global"), "{err}");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(0);
    b.append_data(&mut h, "holes", &[][..]).unwrap();
    let err = convert(
        &b.into_inner().unwrap(),
        &ConvertOptions::default(),
        &mut Vec::new(),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("holes") && err.to_string().contains("sparse"),
        "{err}"
    );
}

#[test]
fn compressed_inputs_are_sniffed() {
    let tar = tar_of(&[E::File("a", b"abc")]);
    let gz = gzip(&tar);
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for input in [tar.clone(), gz, zst] {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut decompress_input(&input[..]).unwrap(), &mut out).unwrap();
        assert_eq!(out, tar);
    }
}

#[test]
fn progress_reports_every_uncompressed_byte() {
    let tar = tar_of(&[E::File("a", &[7u8; 100_000]), E::File("b", b"x")]);
    let last = std::cell::Cell::new(0);
    let mut blob = Vec::new();
    let rep = convert(&tar, &opts(4096), &mut blob, &|n| {
        assert!(n >= last.get());
        last.set(n);
    })
    .unwrap();
    assert_eq!(last.get(), rep.uncompressed_size);
}

#[test]
fn converter_refuses_blobs_readers_would_reject() {
    let tar = tar_of(&[E::Link("l", "missing")]);
    let err = convert(&tar, &opts(4 << 20), &mut Vec::new(), &|_| {}).unwrap_err();
    assert!(matches!(err, Error::HardlinkTargetMissing { .. }), "{err}");
}

#[test]
fn names_differing_only_in_invalid_utf8_are_both_kept() {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [(&b"n\xff"[..], &b"one"[..]), (b"n\xfe", b"two")] {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..2].copy_from_slice(name);
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let (blob, rep) = convert_to_vec(&tar, &opts(4 << 20));
    // Both survive in the tar stream (the TOC, being JSON, names both "n\u{fffd}").
    let plain = gunzip(&blob);
    assert!(plain.windows(3).any(|w| w == b"one") && plain.windows(3).any(|w| w == b"two"));
    assert_eq!(
        rep.toc
            .entries
            .as_ref()
            .unwrap()
            .iter()
            .filter(|e| e.name == "n\u{fffd}")
            .count(),
        2
    );
}

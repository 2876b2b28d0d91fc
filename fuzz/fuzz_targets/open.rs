//! Arbitrary bytes as a whole blob, and as TOC JSON wrapped into a well-formed blob, through the
//! footer parser, the TOC parser and `Reader` (open, then read every file).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use regfs_estargz::{Reader, Toc, encode_footer, locate_toc, parse_footer, parse_toc_member};

/// Reads at most this many files per input so one input stays fast.
const MAX_FILES: usize = 64;

fn read_all(r: &Reader<Vec<u8>>) {
    let ix = r.index();
    for id in ix.entries_in_toc_order().take(MAX_FILES) {
        let e = ix.entry(id);
        let mut buf = [0u8; 4096];
        let _ = r.read_file(id, 0, &mut buf);
        let _ = r.read_file(id, e.size / 2, &mut buf);
        let _ = ix.children(id).count();
    }
    let _ = ix.lookup("a/../b");
    let _ = ix.prefetch_landmark();
}

/// `json` as the TOC of a blob whose data region is `data`.
fn wrap(data: &[u8], json: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..17].copy_from_slice(b"stargz.index.json");
    header[124..135].copy_from_slice(format!("{:011o}", json.len()).as_bytes());
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    header[154] = 0;
    let mut tar = header.to_vec();
    tar.extend_from_slice(json);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut blob = data.to_vec();
    let toc_offset = blob.len() as u64;
    let mut gz = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::fast());
    let _ = gz.write_all(&tar);
    let _ = gz.finish();
    blob.extend_from_slice(&encode_footer(toc_offset));
    blob
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_footer(data);
    let _ = Toc::from_json(data);
    let _ = parse_toc_member(data);
    let _ = locate_toc(data, data.len() as u64);
    let _ = locate_toc(data, data.len() as u64 + 1000);
    if let Ok(r) = Reader::open(data.to_vec()) {
        read_all(&r);
    }
    // Split: the first part is the data region, the rest the TOC JSON.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (body, json) = data.split_at(split);
    if let Ok(r) = Reader::open(wrap(body, json)) {
        read_all(&r);
        let _ = r.toc().to_json();
    }
});

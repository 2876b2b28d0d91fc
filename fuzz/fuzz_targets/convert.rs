//! Arbitrary bytes as an input tar through the converter; whatever converts must open and read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs_estargz::{ConvertOptions, Reader, convert};

fuzz_target!(|data: &[u8]| {
    let opts = ConvertOptions { chunk_size: 64, threads: 1, prioritized_files: Some(vec!["a".into(), "b/c".into()]), ..ConvertOptions::default() };
    let mut blob = Vec::new();
    let Ok(report) = convert(data, &opts, &mut blob, &|_| {}) else { return };
    let r = Reader::open(blob).expect("converter output must open");
    assert_eq!(r.toc_digest(), report.toc_digest);
    for id in r.index().entries_in_toc_order().take(64) {
        let _ = r.read_to_vec(id);
    }
});

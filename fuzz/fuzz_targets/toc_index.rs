//! Parsed TOCs through `TocIndex::new` and every query on the index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs_estargz::{Toc, TocIndex};

fuzz_target!(|data: &[u8]| {
    // The first 4 bytes choose the blob size, the rest is TOC JSON.
    let (size, json) = data.split_at(data.len().min(4));
    let blob_size = size.iter().fold(0u64, |a, &b| a << 8 | u64::from(b));
    let Ok(toc) = Toc::from_json(json) else { return };
    // Serialisation round-trips for every parsed TOC.
    let again = Toc::from_json(&toc.to_json()).expect("re-parse of our own serialisation");
    assert_eq!(again, toc);
    let Ok(ix) = TocIndex::new(&toc, blob_size) else { return };
    let mut stack = vec![ix.root()];
    let mut seen = 0usize;
    while let Some(id) = stack.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        let e = ix.entry(id);
        assert_eq!(ix.lookup(&e.name).is_some(), true);
        for off in [0, e.size / 3, e.size.saturating_sub(1), e.size] {
            if let Some(c) = ix.chunk_for_offset(id, off) {
                assert!(c.chunk_offset <= off && off < c.end());
            }
        }
        for (name, child) in ix.children(id) {
            assert!(!name.is_empty() && !name.contains('/'));
            if child != id && ix.entry(child).kind == regfs_estargz::EntryKind::Dir {
                stack.push(child);
            }
        }
    }
    let _ = ix.prefetch_landmark();
    let _ = ix.has_no_prefetch_landmark();
});

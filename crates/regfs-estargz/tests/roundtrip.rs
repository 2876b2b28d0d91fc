//! Property: any tree converts, and every file reads back equal at any offset, whatever the
//! chunk size, thread count and prioritized subset.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use regfs_estargz::{ConvertOptions, EntryKind};
use support::{E, convert_to_vec, gunzip, open, sha};

fn tree() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    let name = "[a-c]{1,2}(/[a-c]{1,2}){0,3}";
    let content = prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..300),
        (1usize..20_000, any::<u8>())
            .prop_map(|(n, b)| (0..n).map(|i| b.wrapping_add((i % 7) as u8)).collect()),
    ];
    proptest::collection::btree_map(name, content, 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn convert_then_read_back(files in tree(), chunk in 1u64..6000, threads in 1usize..4, prio in any::<u64>(), off in any::<u64>()) {
        // A path that is also a prefix dir of another path becomes a dir: keep only leaves.
        let leaves: BTreeMap<&str, &[u8]> = files
            .iter()
            .filter(|(p, _)| !files.keys().any(|q| q.starts_with(&format!("{p}/"))))
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        let entries: Vec<E<'_>> = leaves.iter().map(|(p, d)| E::File(p, d)).collect();
        let tar = support::tar_of(&entries);
        let prioritized: Vec<String> =
            leaves.keys().enumerate().filter(|(i, _)| prio >> (i % 64) & 1 == 1).map(|(_, p)| format!("/{p}")).collect();
        let o = ConvertOptions { chunk_size: chunk, threads, prioritized_files: Some(prioritized), ..ConvertOptions::default() };
        let (blob, rep) = convert_to_vec(&tar, &o);
        prop_assert_eq!(rep.diff_id, sha(&gunzip(&blob)));
        prop_assert!(rep.missed_prioritized.is_empty());
        let r = open(&blob);
        for (p, d) in &leaves {
            let id = r.index().lookup(p).unwrap();
            prop_assert_eq!(r.index().entry(id).kind, EntryKind::Reg);
            prop_assert_eq!(&r.read_to_vec(id).unwrap(), d);
            if !d.is_empty() {
                let start = (off % d.len() as u64) as usize;
                let mut buf = vec![0u8; 5000];
                let n = r.read_file(id, start as u64, &mut buf).unwrap();
                prop_assert_eq!(&buf[..n], &d[start..d.len().min(start + 5000)]);
            }
        }
    }
}

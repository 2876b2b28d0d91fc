//! Measures compression ratio and speed of every libdeflate level on a real tar, single-threaded,
//! to choose `DEFAULT_LEVEL`:
//!
//! ```text
//! tar -cf /tmp/usr.tar /usr/lib/python3*
//! cargo run --release -p regfs-estargz --example level_sweep -- /tmp/usr.tar
//! ```

use std::time::Instant;

use regfs_estargz::{ConvertOptions, convert};

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/usr.tar".into());
    let tar = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    println!("input {path}: {} bytes", tar.len());
    println!("level  blob bytes  ratio   MB/s (1 thread)");
    for level in 1..=12 {
        let opts = ConvertOptions {
            level: Some(level),
            threads: 1,
            ..ConvertOptions::default()
        };
        let mut out = Vec::with_capacity(tar.len());
        let t = Instant::now();
        let rep = convert(&tar, &opts, &mut out, &|_| {})
            .unwrap_or_else(|e| panic!("level {level}: {e}"));
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{level:>5}  {:>10}  {:.4}  {:>6.1}",
            rep.blob_size,
            rep.blob_size as f64 / tar.len() as f64,
            tar.len() as f64 / secs / 1e6
        );
    }
}

//! Converts a tar file (plain, gzip or zstd) into an eStargz blob and prints the report:
//!
//! ```text
//! cargo run --release -p regfs-estargz --example convert -- IN.tar OUT.esgz [LEVEL] [THREADS]
//! ```

use std::io::Read;
use std::time::Instant;

use regfs_estargz::{ConvertOptions, convert, decompress_input};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, rest @ ..] = args.as_slice() else {
        eprintln!("usage: convert IN.tar OUT.esgz [LEVEL] [THREADS]");
        std::process::exit(2);
    };
    let num = |i: usize| {
        rest.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(0)
    };
    let file = std::fs::File::open(input).unwrap_or_else(|e| panic!("opening {input}: {e}"));
    let mut tar = Vec::new();
    decompress_input(file)
        .and_then(|mut r| r.read_to_end(&mut tar).map_err(regfs_estargz::Error::Input))
        .unwrap_or_else(|e| panic!("reading {input}: {e}"));
    let opts = ConvertOptions {
        level: Some(num(0) as u32).filter(|&l| l != 0),
        threads: num(1),
        ..ConvertOptions::default()
    };
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(output).unwrap_or_else(|e| panic!("creating {output}: {e}")),
    );
    let t = Instant::now();
    let rep = convert(&tar, &opts, &mut out, &|_| {}).unwrap_or_else(|e| panic!("converting: {e}"));
    println!(
        "{{\"tocDigest\":\"{}\",\"diffID\":\"{}\",\"blobDigest\":\"{}\",\"blobSize\":{},\"uncompressedSize\":{},\"seconds\":{:.3}}}",
        rep.toc_digest,
        rep.diff_id,
        rep.blob_digest,
        rep.blob_size,
        rep.uncompressed_size,
        t.elapsed().as_secs_f64()
    );
}

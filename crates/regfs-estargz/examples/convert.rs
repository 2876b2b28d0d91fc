//! Converts a tar file (plain, gzip or zstd) into an eStargz blob and prints the report:
//!
//! ```text
//! cargo run --release -p regfs-estargz --example convert -- IN.tar OUT.esgz [LEVEL] [THREADS]
//! ```

use std::io::Read;
use std::time::Instant;

use regfs_estargz::{ConvertOptions, convert, decompress_input};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, rest @ ..] = args.as_slice() else {
        eprintln!("usage: convert IN.tar OUT.esgz [LEVEL] [THREADS]");
        std::process::exit(2);
    };
    let num = |i: usize| -> Result<usize, Box<dyn std::error::Error>> {
        match rest.get(i) {
            Some(s) => s.parse().map_err(|e| format!("argument {s:?}: {e}").into()),
            None => Ok(0),
        }
    };
    let file = std::fs::File::open(input).map_err(|e| format!("opening {input}: {e}"))?;
    let mut tar = Vec::new();
    decompress_input(file)
        .and_then(|mut r| r.read_to_end(&mut tar).map_err(regfs_estargz::Error::Input))
        .map_err(|e| format!("reading {input}: {e}"))?;
    let opts = ConvertOptions {
        level: Some(u32::try_from(num(0)?)?).filter(|&l| l != 0),
        threads: num(1)?,
        ..ConvertOptions::default()
    };
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(output).map_err(|e| format!("creating {output}: {e}"))?,
    );
    let t = Instant::now();
    let rep = convert(&tar, &opts, &mut out, &|_| {}).map_err(|e| format!("converting: {e}"))?;
    println!(
        "{{\"tocDigest\":\"{}\",\"diffID\":\"{}\",\"blobDigest\":\"{}\",\"blobSize\":{},\"uncompressedSize\":{},\"seconds\":{:.3}}}",
        rep.toc_digest,
        rep.diff_id,
        rep.blob_digest,
        rep.blob_size,
        rep.uncompressed_size,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

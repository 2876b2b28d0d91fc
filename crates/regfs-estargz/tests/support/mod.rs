//! Test tars built with the `tar` crate, and blob inspection helpers.
#![allow(dead_code)]

use std::io::Read;

use regfs_estargz::{ConvertOptions, ConvertReport, Digest, Reader, convert};

/// One input entry.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32),
    FileOwner(&'a str, &'a [u8], u64, u64, &'a str, &'a str),
    FileX(&'a str, &'a [u8], &'a [(&'a str, &'a [u8])]),
    Sym(&'a str, &'a str),
    Link(&'a str, &'a str),
    Block(&'a str, u32, u32),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
}

/// Appends with the name written verbatim (absolute and `./` names included) when it fits the
/// header, else through the `tar` crate's GNU long-name support.
fn append_named(
    b: &mut tar::Builder<Vec<u8>>,
    h: &mut tar::Header,
    path: &str,
    data: &[u8],
) -> std::io::Result<()> {
    if path.len() < 100 {
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(h, data)
    } else {
        b.append_data(h, path, data)
    }
}

/// A GNU-format tar of `entries` plus 100 zero bytes after the trailer, like the reference tests.
pub fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_614_834_367);
        h.set_mode(0o644);
        match *e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode);
                h.set_size(0);
                append_named(&mut b, &mut h, p, &[][..]).unwrap();
            }
            E::File(p, data) => {
                h.set_size(data.len() as u64);
                append_named(&mut b, &mut h, p, data).unwrap();
            }
            E::FileMode(p, data, mode) => {
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                append_named(&mut b, &mut h, p, data).unwrap();
            }
            E::FileOwner(p, data, uid, gid, u, g) => {
                h.set_uid(uid);
                h.set_gid(gid);
                h.set_username(u).unwrap();
                h.set_groupname(g).unwrap();
                h.set_size(data.len() as u64);
                append_named(&mut b, &mut h, p, data).unwrap();
            }
            E::FileX(p, data, xattrs) => {
                let recs: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                    .collect();
                b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                    .unwrap();
                let mut h = tar::Header::new_ustar();
                h.set_mtime(1_614_834_367);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                append_named(&mut b, &mut h, p, data).unwrap();
            }
            E::Sym(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Block(p, ma, mi) | E::Char(p, ma, mi) => {
                h.set_entry_type(if matches!(e, E::Block(..)) {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Char
                });
                h.set_device_major(ma).unwrap();
                h.set_device_minor(mi).unwrap();
                h.set_size(0);
                append_named(&mut b, &mut h, p, &[][..]).unwrap();
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                append_named(&mut b, &mut h, p, &[][..]).unwrap();
            }
        }
    }
    let mut out = b.into_inner().unwrap();
    out.extend_from_slice(&[0u8; 100]);
    out
}

pub fn opts(chunk_size: u64) -> ConvertOptions {
    ConvertOptions {
        chunk_size,
        threads: 2,
        ..ConvertOptions::default()
    }
}

pub fn convert_to_vec(tar: &[u8], o: &ConvertOptions) -> (Vec<u8>, ConvertReport) {
    let mut blob = Vec::new();
    let r = convert(tar, o, &mut blob, &|_| {}).unwrap();
    (blob, r)
}

pub fn open(blob: &[u8]) -> Reader<Vec<u8>> {
    Reader::open(blob.to_vec()).unwrap()
}

/// Blob offsets where gzip members start (the footer included), found by decoding member by member.
pub fn member_starts(blob: &[u8]) -> Vec<u64> {
    let mut starts = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        starts.push((blob.len() - rest.len()) as u64);
        let mut d = flate2::bufread::GzDecoder::new(rest);
        std::io::copy(&mut d, &mut std::io::sink()).unwrap();
        rest = d.into_inner();
    }
    starts
}

/// The whole decompressed stream.
pub fn gunzip(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn sha(b: &[u8]) -> Digest {
    Digest::sha256(b)
}

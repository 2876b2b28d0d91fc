//! The manifest annotations regfs reads and writes on eStargz layers.

/// The sha256 of a layer's TOC JSON (stargz-snapshotter's name); a lazy layer is served only
/// when its TOC hashes to this.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// A layer's uncompressed size (estargz's name).
pub const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";
/// regfs's hint: the compressed offset of the TOC member, so the tail read is exact.
pub const TOC_OFFSET: &str = "io.regfs.estargz.toc-offset";
/// regfs's hint: the landmark offset (= prefetch range end), so prefetch starts with the TOC
/// read.
pub const PREFETCH_SIZE: &str = "io.regfs.estargz.prefetch-size";
/// The annotation carrying an OCI layout index entry's tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

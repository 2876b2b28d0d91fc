//! Generates the containerd snapshots service (server and client) and the CRI v1 API (messages
//! and clients) from the vendored protos with the protoc shipped inside `protoc-bin-vendored`,
//! so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[PathBuf::from(
                "proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto",
            )],
            &[PathBuf::from("proto"), include.clone()],
        )?;
    // The CRI API: messages and clients only; the proxy forwards raw bytes and has no typed
    // server.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_with_config(
            config,
            &[PathBuf::from(
                "proto/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto",
            )],
            &[PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

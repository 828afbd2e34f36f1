//! Compiles proto/credentialbroker/v1 with protox (pure Rust, no protoc) into prost/tonic code and
//! writes the encoded file descriptor set that tonic-reflection serves.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "types.proto",
        "credential.proto",
        "membership.proto",
        "oauth_app.proto",
        "webhook.proto",
    ]
    .map(|f| root.join("credentialbroker/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("credentialbroker_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Malformed requests are the caller's fault (INVALID_ARGUMENT), not a bug (INTERNAL).
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(fds)?;
    Ok(())
}

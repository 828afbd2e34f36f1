//! Generated protobuf messages and tonic services for `credentialbroker.v1`, and their codec. No logic lives here:
//! the server crate converts these types to domain types at the boundary.

pub mod codec;

/// The `credentialbroker.v1` package.
#[allow(clippy::all, missing_docs)] // generated code
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/credentialbroker.v1.rs"));
}

/// Encoded `FileDescriptorSet` of the API (and its imports), served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/credentialbroker_v1_descriptor.bin"
));

//! The credential-broker server: the tonic services (protobuf <-> domain at the boundary), the
//! tower layers every request passes (RPC resolution, caller authentication, limits,
//! observability), the runtime wiring (configuration, storage, keys, health, telemetry) and the
//! operator commands of the binary. See docs/architecture.md.

pub mod cli;
pub mod grpc;
pub mod layers;
pub mod runtime;

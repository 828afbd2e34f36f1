//! The credential-broker server: configuration, caller identity, the tonic services (protobuf <->
//! domain at the boundary), error mapping and the application lifecycle.

pub mod app;
pub mod auth;
pub mod caller;
pub mod config;
pub mod convert;
pub mod devprovider;
pub mod grpc;
pub mod health;
pub mod instrument;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod observe;
pub mod ops;
pub mod providers;
pub mod rotate;
pub mod rpc;
pub mod status;
pub mod telemetry;

//! The credential broker's domain: credentials, members, access rules, sealing and token
//! issuance. It knows nothing of gRPC; time comes from an injected [`clock::Clock`].

pub mod access;
pub mod audit;
pub mod clock;
pub mod connect;
pub mod credential;
pub mod error;
pub mod events;
pub mod gateway;
pub mod grants;
pub mod health;
pub mod issuance;
pub mod members;
pub mod oauth_apps;
pub mod policy;
pub mod random;
mod revocation;
pub mod rotation;
pub mod sealing;
pub mod service;
mod sharded;
#[cfg(test)]
mod test_support;
pub mod tokens;
pub mod types;
pub mod webhook_endpoints;
pub mod webhooks;
pub mod workspace_providers;

pub use error::{BrokerError, ErrorCode, FieldViolation};

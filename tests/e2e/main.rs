//! End-to-end tests: one binary (see tests/Cargo.toml).
mod access_control;
mod connect_flow;
mod credential_api;
mod kms;
mod members;
mod oauth_client;
mod secrets;
mod service_surface;
mod store_conformance;
mod support;
mod token_issuance;

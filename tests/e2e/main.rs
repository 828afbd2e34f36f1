//! End-to-end tests: one binary (see tests/Cargo.toml).
mod access_control;
mod credential_api;
mod kms;
mod oauth_client;
mod service_surface;
mod store_conformance;
mod support;
mod token_issuance;

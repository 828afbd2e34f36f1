//! End-to-end tests: one binary (see tests/Cargo.toml).
mod access_control;
mod audit;
mod connect_flow;
mod credential_api;
mod docs;
mod key_management;
mod kms;
mod load_protection;
mod members;
mod mtls;
mod oauth_client;
mod observability;
mod secrets;
mod service_surface;
mod store_conformance;
mod support;
mod token_issuance;

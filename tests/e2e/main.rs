//! End-to-end tests: one binary (see tests/Cargo.toml).
mod credential_api;
mod service_surface;
mod store_conformance;
mod support;

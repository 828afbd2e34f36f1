//! Shared test support: servers, databases, helpers.

pub mod broker;
pub mod fake_provider;
pub mod kms_server;
pub mod otlp_collector;
pub mod pg;
pub mod tcp_proxy;

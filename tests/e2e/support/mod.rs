//! Shared test support: servers, databases, helpers.

pub mod broker;
pub mod client;
pub mod fake_provider;
pub mod kms_server;
pub mod otlp_collector;
pub mod pg;
pub mod tcp_proxy;
pub mod wait;

/// Says on the real stderr (not the test harness's captured output, which hides it for passing
/// tests) that a test was skipped, and why.
pub fn skip_loudly(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "!!!!! {message} !!!!!");
}

//! Shared test support: servers, databases, helpers.

pub mod broker;
pub mod client;
pub mod fake_provider;
pub mod jwt;
pub mod kms_server;
pub mod otlp_collector;
pub mod pg;
pub mod pki;
pub mod tcp_proxy;
pub mod wait;
pub mod webhook_receiver;

/// Says on the real stderr (not the test harness's captured output, which hides it for passing
/// tests) that a test was skipped, and why.
pub fn skip_loudly(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "!!!!! {message} !!!!!");
}

/// Whether `needle` occurs in `hay` (scans of stored bytes for plaintext).
pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every byte of the SQLite database `broker.db` in `dir`, with its WAL and shared-memory files:
/// a page may not be checkpointed yet.
pub fn sqlite_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("broker.db")
        {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    all
}

/// The value of the metric sample `series` (name and labels exactly as exposed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

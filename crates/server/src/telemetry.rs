//! Structured logs (text or JSON) through tracing.

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; writes to stderr.
pub fn init(log: &LogConfig) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(&log.filter).map_err(|e| format!("log.filter {:?}: {e}", log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

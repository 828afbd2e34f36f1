//! Runtime wiring: configuration, building the store, keys and provider gateway, health,
//! metrics, telemetry and the decorators that instrument dependencies.

pub mod app;
pub mod config;
pub mod devprovider;
pub mod error;
pub mod health;
pub mod instrument;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod providers;
pub mod telemetry;
pub mod webhooks;

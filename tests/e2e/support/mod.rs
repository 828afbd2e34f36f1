//! Shared test support: servers, databases, helpers.

pub mod broker;
pub mod pg;

//! End-to-end test support crate (tests live in e2e/).

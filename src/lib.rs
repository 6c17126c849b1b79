//! `datadog-delegated-auth`: a sidecar daemon that proves the workload's AWS identity to Datadog,
//! exchanges the proof for a managed API key, keeps it fresh, and serves it to local consumers
//! over a Unix socket.
//!
//! # Layout
//!
//! - [`config`]: reads the Agent's `datadog.yaml` and the daemon's `delegated-auth.yaml`,
//!   applies `DD_*` environment overrides, validates, and names the served instances.
//! - [`secret`]: the redacting, zeroing type every key, proof and AWS secret lives in.
#![forbid(unsafe_code)]

pub mod config;
pub mod secret;

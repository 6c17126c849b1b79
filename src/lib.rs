//! `datadog-delegated-auth`: a sidecar daemon that proves the workload's AWS identity to Datadog,
//! exchanges the proof for a managed API key, keeps it fresh, and serves it to local consumers
//! over a Unix socket.
//!
//! # Layout
//!
//! - [`keystore`]: what each instance serves now, generations, and long-poll waiting.
//! - [`lifecycle`]: the refresh manager: one task per exchange, fallback, rejection reports.
//! - [`metrics`]: counters and the OpenMetrics text of `/metrics`.
//! - [`schedule`]: when to exchange next (refresh jitter, backoff), as pure functions.
//! - [`secret`]: the redacting, zeroing type every key, proof and AWS secret lives in.
#![forbid(unsafe_code)]

pub mod keystore;
pub mod lifecycle;
pub mod metrics;
pub mod schedule;
pub mod secret;

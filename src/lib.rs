//! `datadog-delegated-auth`: a sidecar daemon that proves the workload's AWS identity to Datadog,
//! exchanges the proof for a managed API key, keeps it fresh, and serves it to local consumers
//! over a Unix socket.
//!
//! # Layout
//!
//! - [`aws`]: AWS identity (credential sources, region, environment kind) and the signed proof.
//! - [`exchange`]: the exchange client (proof in, managed API key out) and API base derivation.
//! - [`arn_pattern`]: mapping ARN patterns: the seed's wildcard rules and matching.
//! - [`secret`]: the redacting, zeroing type every key, proof and AWS secret lives in.
#![forbid(unsafe_code)]

pub mod arn_pattern;
pub mod aws;
pub mod exchange;
pub mod secret;

//! `datadog-delegated-auth`: a sidecar daemon that proves the workload's AWS identity to Datadog,
//! exchanges the proof for a managed API key (and, for on-host automation, delegated API tokens),
//! keeps them fresh, and serves them to local consumers over a Unix socket.
//!
//! # Layout
//!
//! `docs/architecture.md` shows how these fit together: the data flow from `datadog.yaml` to a
//! socket answer, the tasks and what each owns, and the refresh state machine.
//!
//! - [`arn_pattern`]: ARN patterns of intake mappings (the seed's wildcard rules).
//! - [`aws`]: AWS identity (credential sources, region, environment kind) and the signed proof.
//! - [`check_config`]: `check-config`, the summary of a loaded configuration (or its problems).
//! - [`cli`]: the command line; each command a small function returning an exit code.
//! - [`client`]: the socket's client side: one request, and [`client::KeyClient`] (a key or a
//!   token with waiting, and the stream of its rotations) for `get`, `token`, `secret-helper`
//!   and `exec`.
//! - [`config`]: reads the Agent's `datadog.yaml` and the daemon's `delegated-auth.yaml`,
//!   applies `DD_*` environment overrides, validates, and names the served instances.
//! - [`daemon`]: `run`: start-up ([`daemon::StartError`]), the control loop (signals, file
//!   watching, reload), shutdown; `resolve` (the validated configuration resolved on this host,
//!   problems with file and line), `socket` (the socket supervisor: rebind, our own socket only),
//!   `info` (race-free updates of the status document), `exchanger`, `control`, `notify`.
//! - [`doctor`]: `doctor`, the operator's end-to-end check of identity, clock, STS and exchange.
//! - [`exec`]: `exec`, a command run with a key in its environment and restarted or signalled
//!   on rotation.
//! - [`exit`]: the exit codes every command returns (imports nothing).
//! - [`exchange`]: the Datadog exchanges, intake key and delegated token (API base, request,
//!   response, failure classes).
//! - [`files`]: bounded, non-blocking reads of files the daemon does not own.
//! - [`keystore`]: what each instance (and token, as `token:<name>`) serves now, generations,
//!   and long-poll waiting.
//! - [`lifecycle`]: the refresh manager: exchanges, schedules, fallback, token expiry,
//!   rejection reports.
//!   `manager` turns plans into groups, `group` is one group's task, `state` the pure state
//!   machine (phase, schedule, status history), `report` routes rejection reports.
//! - [`logging`]: tracing setup (text/JSON, level reload).
//! - [`mapping`]: `mapping`, the Cloud Authentication mapping API (list, get, create, delete).
//! - [`metrics`]: counters and the OpenMetrics text of `/metrics`.
//! - [`net`]: what every outbound HTTP client shares: client options and proxies, the
//!   https-or-loopback rule, capped reads, the user agent.
//! - [`schedule`]: the refresh and retry timing policy as pure functions.
//! - [`secret_helper`]: `secret-helper`, the Agent's `secret_backend_command` protocol.
//! - [`secret`]: the redacting, zeroing type every key, proof and AWS secret lives in.
//! - [`server`]: the HTTP/1.1 API on the Unix socket (routes, access rules, limits).
//! - [`sink`]: keys written atomically to files.
//! - [`status`]: the status document and its Agent-like text rendering.
#![forbid(unsafe_code)]

pub mod arn_pattern;
pub mod aws;
pub mod check_config;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod exchange;
pub mod exec;
pub mod exit;
pub mod files;
pub mod keystore;
pub mod lifecycle;
pub mod logging;
pub mod mapping;
pub mod metrics;
pub mod net;
pub mod schedule;
pub mod secret;
pub mod secret_helper;
pub mod server;
pub mod sink;
pub mod status;

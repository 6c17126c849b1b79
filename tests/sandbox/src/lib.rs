//! Local peers for tests and the demo: real HTTP servers on loopback and a `moto_server`
//! launcher, controllable from tests.
//!
//! # Layout
//!
//! - [`http`]: the tiny HTTP server and client every emulator uses.
//! - [`moto`]: `moto_server` with request authentication on (STS verifies every signature).
//! - [`sts`]: decoding a delegated-auth proof and replaying it to STS the way Datadog does.
//! - [`imds`]: EC2 instance metadata (IMDSv2/v1, hop-limit mode, rotating credentials).
//! - [`ecs`]: ECS container credentials and task metadata v4.
//! - [`pod_identity`]: the EKS Pod Identity agent.
//! - [`datadog`]: Datadog's API (intake-key and delegated-token exchanges with proof
//!   verification, key validation, bearer-token routes, mapping API, fault injection, request
//!   log).
//! - [`net`]: a TCP forwarder and a `CONNECT` proxy that can be stopped and resumed, and a TLS
//!   front with the self-signed test certificate.

pub mod datadog;
pub mod ecs;
mod error;
pub mod http;
pub mod imds;
pub mod moto;
pub mod net;
pub mod pod_identity;
pub mod sts;

pub use error::SandboxError;

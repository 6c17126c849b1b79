//! Local peers for tests and the demo: real HTTP servers on loopback and a `moto_server`
//! launcher, controllable from tests.
//!
//! # Layout
//!
//! - [`http`]: the tiny HTTP server and client every emulator uses.
//! - [`moto`]: `moto_server` with request authentication on (STS verifies every signature).
//! - [`sts`]: decoding a delegated-auth proof and replaying it to STS the way Datadog does.

mod error;
pub mod http;
pub mod moto;
pub mod sts;

pub use error::SandboxError;

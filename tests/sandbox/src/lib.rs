//! Local emulators of the daemon's peers, for tests and the demo: real servers on 127.0.0.1.
//!
//! - [`datadog`]: Datadog's API (exchange with proof verification, key validation, mapping API,
//!   fault injection, request log).

pub mod datadog;

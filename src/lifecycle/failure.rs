//! Why an exchange attempt failed, as one type from the exchanger to the status, metrics and
//! log edge. The strings of [`FailureKind::as_str`] are a stable interface: status
//! (`last_error_kind`), the `outcome` label of `delegated_auth_exchanges_total` and the `kind`
//! field of the log line all carry them.

use std::fmt;

use crate::aws::{CredentialError, ProofError};
use crate::exchange::ExchangeError;

/// The class of a failed exchange attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Datadog refused the proof (401, 403).
    Unauthorized,
    /// Datadog throttled the exchange (429).
    Throttled,
    /// No usable answer in time: 408, 5xx, connection failures, timeouts.
    Unavailable,
    /// An answer that cannot be used.
    InvalidResponse,
    /// No AWS credentials could be had.
    Credentials,
    /// A setting that cannot work: the exchange URL or client, or what the proof needs.
    Config,
}

impl FailureKind {
    /// The stable name: `unauthorized`, `throttled`, `unavailable`, `invalid_response`,
    /// `credentials` or `config`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Throttled => "throttled",
            FailureKind::Unavailable => "unavailable",
            FailureKind::InvalidResponse => "invalid_response",
            FailureKind::Credentials => "credentials",
            FailureKind::Config => "config",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the stable name, so that a test or a caller at the edge can write
/// `err.kind() == "unauthorized"` against the documented interface.
impl PartialEq<&str> for FailureKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&ExchangeError> for FailureKind {
    fn from(e: &ExchangeError) -> Self {
        match e {
            ExchangeError::Unauthorized { .. } | ExchangeError::TokenRefused { .. } => {
                FailureKind::Unauthorized
            }
            ExchangeError::Throttled { .. } => FailureKind::Throttled,
            ExchangeError::Unavailable { .. } => FailureKind::Unavailable,
            ExchangeError::InvalidResponse { .. } => FailureKind::InvalidResponse,
            ExchangeError::InsecureUrl { .. } | ExchangeError::Client { .. } => FailureKind::Config,
        }
    }
}

impl From<&CredentialError> for FailureKind {
    fn from(_: &CredentialError) -> Self {
        FailureKind::Credentials
    }
}

impl From<&ProofError> for FailureKind {
    /// A proof fails only on what it is given (org UUID, credentials, region): configuration.
    fn from(_: &ProofError) -> Self {
        FailureKind::Config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_stable_interface() {
        let all = [
            (FailureKind::Unauthorized, "unauthorized"),
            (FailureKind::Throttled, "throttled"),
            (FailureKind::Unavailable, "unavailable"),
            (FailureKind::InvalidResponse, "invalid_response"),
            (FailureKind::Credentials, "credentials"),
            (FailureKind::Config, "config"),
        ];
        for (kind, name) in all {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(kind, name);
        }
    }

    #[test]
    fn proof_and_credential_failures() {
        assert_eq!(
            FailureKind::from(&ProofError::MissingOrgUuid),
            FailureKind::Config
        );
        let e = CredentialError::NoSource {
            imds: "disabled".into(),
        };
        assert_eq!(FailureKind::from(&e), FailureKind::Credentials);
    }
}

//! The one error type of the sandbox: every emulator and helper returns it, so tests can `?` them
//! all. Messages say what failed and what to do about it (most failures here are a missing tool or
//! a port problem on the test machine).

use std::path::PathBuf;

/// Why a sandbox peer could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// `moto_server` is not on `PATH`.
    #[error(
        "moto_server was not found on PATH; install it with `pip install 'moto[server]==5.2.1'` \
         (scripts/test does this when it is missing)"
    )]
    MotoMissing,
    /// A helper program (moto_server, python3) could not be spawned.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// moto_server exited or did not answer before the deadline.
    #[error(
        "moto_server did not become ready: {reason}; its output is in {log} (last lines: {tail})"
    )]
    MotoNotReady {
        /// What was observed (exit status or timeout).
        reason: String,
        /// The file holding moto_server's stdout and stderr.
        log: PathBuf,
        /// The last lines of that file.
        tail: String,
    },
    /// A boto3 helper call against moto failed.
    #[error("moto {op} failed: {detail}")]
    Moto {
        /// The operation (bootstrap, assume_role, create_role, reset_auth).
        op: String,
        /// What the helper reported (never contains secret keys).
        detail: String,
    },
    /// A loopback HTTP request made by the sandbox failed.
    #[error("HTTP {method} {url} failed: {detail}")]
    Http {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// Transport error text.
        detail: String,
    },
    /// A proof could not be decoded.
    #[error("malformed proof: {0}")]
    Proof(String),
    /// Binding or other local I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl SandboxError {
    /// Wraps an I/O error with what was being attempted.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SandboxError::Io {
            what: what.into(),
            source,
        }
    }
}

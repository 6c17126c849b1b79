//! `secret-helper`: the Datadog Agent's `secret_backend_command` protocol (product §8), so any
//! Agent version can use the managed key with `api_key: ENC[api_key]`.
//!
//! The Agent runs the command with a JSON request on stdin and reads a JSON answer on stdout
//! (DataDog/datadog-agent `comp/core/secrets/impl/fetch_secret.go`):
//!
//! ```text
//! stdin:  {"version":"1.1","secrets":["api_key","logs_config.api_key"],"secret_backend_timeout":30}
//! stdout: {"api_key":{"value":"<key>","error":null},"logs_config.api_key":{"value":null,"error":"…"}}
//! ```
//!
//! Older Agents send `"version":"1.0"` and no `secret_backend_timeout`; every `1.x` is accepted
//! and unknown request fields (`type`, `config`) are ignored. Handles are instance names.
//!
//! What the Agent does with the answer shapes what this module does:
//! - A non-zero exit fails every handle of the batch and logs our stderr; a zero exit with a
//!   per-handle `error` fails that handle with our message, which the Agent shows in its log and
//!   in `datadog-agent secret`. So every answerable request (unknown instance, daemon down or
//!   hung, nothing to serve yet) exits 0 with a per-handle error; only a request we cannot read
//!   (not JSON, wrong version, too large, stdin never closed) exits 1 with a message on stderr.
//! - The Agent kills the command after `secret_backend_timeout` (default 30 s) and caps stdout
//!   at `secret_backend_output_max_size` (default 1 MiB). We answer within our own deadline
//!   (default 4 s, shorter when the Agent's timeout asks for it) whatever the daemon does: a
//!   hung daemon costs a per-handle timeout error, never the Agent's kill.
//! - Nothing secret ever goes to stderr (the Agent logs it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;

use crate::client::{ClientError, Failure, GetError, KeyClient, Wait};
use crate::exit;
use crate::secret::Secret;

/// The largest request read from stdin. The Agent sends a few handles (tens of bytes each);
/// its own output cap is 1 MiB, so a request over that is not from an Agent.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// Most distinct handles answered: an Agent asks for the few `ENC[...]` values of its
/// configuration. With [`MAX_HANDLE_BYTES`] this keeps the answer (handles are echoed, errors
/// are a few hundred bytes) well under the Agent's 1 MiB output cap, however large the request.
pub const MAX_HANDLES: usize = 512;

/// Longest handle looked up: instance names are far shorter.
pub const MAX_HANDLE_BYTES: usize = 512;

/// Requests to the daemon in flight at once, so one answer never floods the socket.
const CONCURRENT_LOOKUPS: usize = 16;

/// Default total time budget: below the Agent's default `secret_backend_timeout` (30 s) and
/// Vector's exec backend default `timeout` (5 s, same protocol), so our answer (with per-handle
/// errors) always arrives before the caller kills us; long enough to ride out a daemon restart.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);

/// The protocol's major version this helper speaks (`1.0` and `1.1` differ only in request
/// fields we may ignore).
const SUPPORTED_MAJOR: &str = "1";

/// Options of `secret-helper`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Total time budget for the answer (shortened to fit the Agent's `secret_backend_timeout`).
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why a request could not be answered at all (exit 1, message on stderr).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// stdin could not be read.
    #[error(
        "cannot read the request on stdin: {0}; this command is meant to be run by the Datadog Agent as its secret_backend_command"
    )]
    Read(std::io::Error),
    /// stdin stayed open past the deadline.
    #[error(
        "no complete request on stdin within {0:?}; the Agent writes the request and closes stdin. To try it by hand: echo '{{\"version\":\"1.0\",\"secrets\":[\"api_key\"]}}' | datadog-delegated-auth secret-helper"
    )]
    StdinTimeout(Duration),
    /// The request is larger than any Agent sends.
    #[error(
        "the request on stdin is larger than {MAX_REQUEST_BYTES} bytes; the Agent sends a short JSON list of handles"
    )]
    TooLarge,
    /// More distinct handles than any Agent asks for.
    #[error(
        "the request asks for {0} distinct handles; an Agent asks for a few (at most {MAX_HANDLES} are answered)"
    )]
    TooManyHandles(usize),
    /// A handle far longer than any instance name.
    #[error(
        "the request has a handle of {0} bytes; handles are instance names (at most {MAX_HANDLE_BYTES} bytes)"
    )]
    HandleTooLong(usize),
    /// Not the protocol's JSON.
    #[error(
        "the request on stdin is not a secret backend request ({0}); expected {{\"version\":\"1.0\",\"secrets\":[\"api_key\"]}}"
    )]
    Malformed(String),
    /// A protocol version we do not speak.
    #[error(
        "the Agent speaks secret backend protocol version {0:?}; this datadog-delegated-auth speaks 1.x. Upgrade datadog-delegated-auth, or report it if no newer version exists"
    )]
    UnsupportedVersion(String),
}

/// The request, as the Agent sends it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Protocol version (`"1.0"`, `"1.1"`).
    pub version: String,
    /// Handles to resolve, in the Agent's order.
    pub secrets: Vec<String>,
    /// The Agent's own timeout for this command (protocol 1.1), when it says.
    pub backend_timeout: Option<Duration>,
}

#[derive(Deserialize)]
struct RawRequest {
    version: Option<serde_json::Value>,
    secrets: Option<Vec<String>>,
    secret_backend_timeout: Option<serde_json::Value>,
}

/// Parses and checks a request.
///
/// # Errors
/// [`RequestError::Malformed`] when it is not a JSON object with a `secrets` list of strings,
/// [`RequestError::UnsupportedVersion`] when its version is not `1.x`.
pub fn parse_request(bytes: &[u8]) -> Result<Request, RequestError> {
    let raw: RawRequest = serde_json::from_slice(bytes).map_err(|e| {
        RequestError::Malformed(if e.is_eof() && bytes.iter().all(u8::is_ascii_whitespace) {
            "stdin was empty".to_owned()
        } else {
            e.to_string()
        })
    })?;
    let version = match raw.version {
        Some(serde_json::Value::String(v)) => v,
        Some(other) => {
            return Err(RequestError::Malformed(format!(
                "\"version\" must be a string, got {other}"
            )));
        }
        None => return Err(RequestError::Malformed("no \"version\"".to_owned())),
    };
    if version.split('.').next() != Some(SUPPORTED_MAJOR) {
        return Err(RequestError::UnsupportedVersion(version));
    }
    let secrets = raw
        .secrets
        .ok_or_else(|| RequestError::Malformed("no \"secrets\" list".to_owned()))?;
    // Informational only: a value we cannot read just means we use our own deadline.
    let backend_timeout = raw
        .secret_backend_timeout
        .and_then(|v| v.as_f64())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)));
    Ok(Request {
        version,
        secrets,
        backend_timeout,
    })
}

/// The time budget: ours, shortened so the answer is written before the Agent's own timeout
/// (leaving it a second, or half of a very short timeout, to read and parse the answer).
pub fn budget(ours: Duration, agent: Option<Duration>) -> Duration {
    match agent {
        Some(t) => ours.min(t.saturating_sub(Duration::from_secs(1)).max(t / 2)),
        None => ours,
    }
}

/// One handle's answer.
pub type Outcome = Result<Secret, String>;

/// Serializes the answer exactly as the protocol wants it: one entry per handle, `value` a
/// string and `error` null, or `value` null and `error` a string.
pub fn render_answer(answers: &BTreeMap<String, Outcome>) -> Secret {
    let map: serde_json::Map<String, serde_json::Value> = answers
        .iter()
        .map(|(handle, outcome)| {
            let entry = match outcome {
                Ok(key) => serde_json::json!({"value": key.expose(), "error": null}),
                Err(e) => serde_json::json!({"value": null, "error": e}),
            };
            (handle.clone(), entry)
        })
        .collect();
    Secret::new(serde_json::Value::Object(map).to_string())
}

/// Resolves every handle against the daemon, concurrently, all within `deadline`.
pub async fn resolve(
    socket: &Path,
    handles: &[String],
    deadline: Instant,
) -> BTreeMap<String, Outcome> {
    let mut set = tokio::task::JoinSet::new();
    let lookups = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LOOKUPS));
    for handle in unique_handles(handles) {
        let (socket, handle, lookups) = (socket.to_path_buf(), handle.clone(), lookups.clone());
        set.spawn(async move {
            let _turn = lookups.acquire().await;
            let outcome = resolve_one(&socket, handle.trim(), deadline).await;
            (handle, outcome)
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((handle, outcome)) = joined {
            answers.insert(handle, outcome);
        }
    }
    // A task that panicked leaves its handle unanswered; answer it rather than let the Agent
    // report a handle "not resolved by the secret_backend_command".
    for handle in handles {
        answers.entry(handle.clone()).or_insert_with(|| {
            Err("internal error in datadog-delegated-auth secret-helper; see its stderr".into())
        });
    }
    answers
}

/// Refuses what no Agent asks for and whose answer could pass the Agent's output cap: too
/// many distinct handles, or a handle far longer than any instance name (handles are echoed
/// in the answer).
fn check_bounds(request: Request) -> Result<Request, RequestError> {
    let n = unique_handles(&request.secrets).len();
    if n > MAX_HANDLES {
        return Err(RequestError::TooManyHandles(n));
    }
    if let Some(long) = request.secrets.iter().find(|h| h.len() > MAX_HANDLE_BYTES) {
        return Err(RequestError::HandleTooLong(long.len()));
    }
    Ok(request)
}

/// The distinct handles of a request, sorted.
fn unique_handles(handles: &[String]) -> Vec<&String> {
    let mut unique: Vec<&String> = handles.iter().collect();
    unique.sort();
    unique.dedup();
    unique
}

async fn resolve_one(socket: &Path, instance: &str, deadline: Instant) -> Outcome {
    if instance.is_empty() {
        return Err(
            "empty secret handle: use ENC[<instance>], e.g. ENC[api_key] or ENC[logs_config.api_key]"
                .into(),
        );
    }
    let wait = Wait::until(deadline);
    match KeyClient::new(socket).get(instance, wait).await {
        Ok(fetched) => Ok(fetched.key.key),
        Err(GetError { last, before }) => Err(failure_message(socket, instance, last, before)),
    }
}

/// The per-handle error for a lookup that brought no key. A timeout reports the transient
/// failure before it (daemon starting, no key yet), when there was one.
fn failure_message(
    socket: &Path,
    instance: &str,
    last: Failure,
    before: Option<Failure>,
) -> String {
    match last {
        Failure::BadAnswer(e) => {
            format!("datadog-delegated-auth answered for {instance:?} with {e}")
        }
        Failure::Answer(reply) if reply.status == StatusCode::NOT_FOUND => format!(
            "datadog-delegated-auth has no instance named {instance:?}: secret handles are instance names such as api_key or logs_config.api_key (`datadog-delegated-auth status` lists them)"
        ),
        Failure::Answer(reply) if reply.status == StatusCode::SERVICE_UNAVAILABLE => format!(
            "datadog-delegated-auth has no key to serve for {instance:?}: {}",
            reply.error_message()
        ),
        Failure::Answer(reply) => format!(
            "datadog-delegated-auth refused {instance:?} ({}): {}",
            reply.status,
            reply.error_message()
        ),
        Failure::Daemon(ClientError::Timeout { .. }) => match before {
            Some(earlier) => failure_message(socket, instance, earlier, None),
            None => timeout_message(socket),
        },
        Failure::Daemon(e) => e.to_string(),
    }
}

fn timeout_message(socket: &Path) -> String {
    format!(
        "datadog-delegated-auth at {} did not answer in time; check `systemctl status datadog-delegated-auth` (or the sidecar's logs)",
        socket.display()
    )
}

/// Reads the whole request from `input` on a separate thread, so a writer that never closes
/// stdin cannot hold us past the deadline (the thread is abandoned; the process exits).
fn read_request(
    mut input: impl Read + Send + 'static,
    limit: Duration,
) -> Result<Vec<u8>, RequestError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let res = Read::by_ref(&mut input)
            .take(MAX_REQUEST_BYTES + 1)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = tx.send(res);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(buf)) if buf.len() as u64 > MAX_REQUEST_BYTES => Err(RequestError::TooLarge),
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(RequestError::Read(e)),
        Err(_) => Err(RequestError::StdinTimeout(limit)),
    }
}

/// The command: reads the request from `input`, answers on `out`, explains failures on `err`.
/// Returns the exit code.
pub fn main(
    socket: PathBuf,
    args: &Args,
    input: impl Read + Send + 'static,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let started = Instant::now();
    let request = match read_request(input, args.timeout)
        .and_then(|b| parse_request(&b))
        .and_then(check_bounds)
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "datadog-delegated-auth secret-helper: {e}");
            return exit::FAILURE;
        }
    };
    let deadline = started + budget(args.timeout, request.backend_timeout);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                err,
                "datadog-delegated-auth secret-helper: cannot start the async runtime: {e}"
            );
            return exit::FAILURE;
        }
    };
    let answers = rt.block_on(resolve(&socket, &request.secrets, deadline));
    for (handle, outcome) in &answers {
        if let Err(e) = outcome {
            // The Agent logs stderr (at debug on success): say which handle failed and why.
            let _ = writeln!(err, "datadog-delegated-auth secret-helper: {handle}: {e}");
        }
    }
    let answer = render_answer(&answers);
    match out
        .write_all(answer.expose().as_bytes())
        .and_then(|()| out.flush())
    {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(
                err,
                "datadog-delegated-auth secret-helper: cannot write the answer to stdout: {e}"
            );
            exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_protocol_versions_and_ignores_unknown_fields() {
        let r = parse_request(br#"{"version":"1.0","secrets":["api_key","x"]}"#).unwrap();
        assert_eq!(r.secrets, vec!["api_key", "x"]);
        assert_eq!(r.backend_timeout, None);
        let r = parse_request(
            br#"{"secret_backend_timeout":30,"version":"1.1","secrets":["api_key"],"type":"t","config":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(r.version, "1.1");
        assert_eq!(r.backend_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn refuses_other_versions_and_malformed_requests() {
        assert!(matches!(
            parse_request(br#"{"version":"2.0","secrets":[]}"#),
            Err(RequestError::UnsupportedVersion(v)) if v == "2.0"
        ));
        for bad in [
            &b""[..],
            b"   ",
            b"not json",
            b"[]",
            br#"{"secrets":["a"]}"#,
            br#"{"version":1,"secrets":["a"]}"#,
            br#"{"version":"1.0"}"#,
            br#"{"version":"1.0","secrets":[1]}"#,
        ] {
            assert!(
                matches!(parse_request(bad), Err(RequestError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = parse_request(b"").unwrap_err().to_string();
        assert!(e.contains("stdin was empty"), "{e}");
    }

    #[test]
    fn the_flags_default_is_the_documented_budget() {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            args: Args,
        }
        let cmd = <Cmd as clap::Parser>::parse_from(["secret-helper"]);
        assert_eq!(cmd.args.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn budget_fits_inside_the_agents_timeout() {
        let ours = DEFAULT_TIMEOUT;
        assert_eq!(budget(ours, None), ours);
        assert_eq!(budget(ours, Some(Duration::from_secs(30))), ours);
        assert_eq!(
            budget(ours, Some(Duration::from_secs(3))),
            Duration::from_secs(2)
        );
        assert_eq!(
            budget(ours, Some(Duration::from_secs(1))),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn renders_values_and_errors_with_nulls() {
        let mut answers = BTreeMap::new();
        answers.insert("api_key".to_owned(), Ok(Secret::from("k\"1")));
        answers.insert("nope".to_owned(), Err("no such instance".to_owned()));
        let out = render_answer(&answers);
        let v: serde_json::Value = serde_json::from_str(out.expose()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "api_key": {"value": "k\"1", "error": null},
                "nope": {"value": null, "error": "no such instance"},
            })
        );
    }

    #[test]
    fn stdin_that_never_closes_is_bounded() {
        // A reader that blocks until its sender is dropped: stands in for an open stdin.
        struct Blocking(mpsc::Receiver<()>);
        impl Read for Blocking {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(0)
            }
        }
        let (tx, rx) = mpsc::channel();
        let err = read_request(Blocking(rx), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, RequestError::StdinTimeout(_)), "{err}");
        drop(tx);
    }

    #[test]
    fn oversized_requests_are_refused() {
        let big = vec![b' '; MAX_REQUEST_BYTES as usize + 10];
        let err = read_request(std::io::Cursor::new(big), Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, RequestError::TooLarge), "{err}");
    }
}

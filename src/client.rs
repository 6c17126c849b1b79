//! The client side of the daemon's socket, used by the CLI (`status`, `get`, `health`),
//! `secret-helper` and `exec`.
//!
//! - [`request`]: one HTTP/1.1 request per connection (the CLI makes a handful).
//! - [`KeyClient`]: reading a key or a delegated API token (a [`Target`]). [`KeyClient::get`]
//!   waits, as [`Wait`] says, while the daemon
//!   is starting (unreachable) or has no key yet (503), pausing 250 ms between attempts; every
//!   request and pause fits in what is left of the wait. [`KeyClient::follow`] is the stream of
//!   rotations, with the long poll (`If-None-Match` + `wait=300s`): one request per five quiet
//!   minutes, capped jittered backoff while the daemon is away, and a plain re-read once it is
//!   back (a restarted daemon renumbers its generations).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::secret::Secret;

/// The largest answer the CLI accepts (status of many instances fits easily).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Failures talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error(
        "cannot reach the daemon at {path}: {source}; is `datadog-delegated-auth run` running, and may this user open the socket?"
    )]
    Unreachable {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The daemon did not answer in time.
    #[error("the daemon at {path} did not answer within {timeout:?}")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// The exchange broke off.
    #[error("talking to the daemon at {path} failed: {reason}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The `error.message` of a JSON error body, or the status line.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| self.status.to_string())
    }
}

/// Sends one request and reads the answer, all within `timeout`.
pub async fn request(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let path = socket.to_path_buf();
    let fut = async {
        let stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: path.clone(),
                    source,
                })?;
        let proto = |e: hyper::Error| ClientError::Protocol {
            path: path.clone(),
            reason: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(proto)?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let has_body = body.is_some();
        if has_body {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(proto)?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Protocol {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { path, timeout }),
    }
}

/// Percent-encodes an instance name for a path segment (DELA names hold `[`, `]`, `/`, `:`).
pub fn encode_instance(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Pause between attempts while waiting for the daemon or its first key.
pub const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// How long one long poll waits for a rotation (the daemon's maximum, product §7).
const LONG_POLL: Duration = Duration::from_secs(300);

/// Margin over the long poll for the whole request (a slow daemon answering the 304).
const LONG_POLL_SLACK: Duration = Duration::from_secs(30);

/// A plain key read gives up after this long (it never waits on the daemon's side).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A long poll answered sooner than this with nothing new did not wait (a daemon in its graceful
/// shutdown answers at once): back off instead of asking again straight away.
const MIN_POLL: Duration = Duration::from_secs(1);

/// Backoff while the daemon cannot be reached: first retry after about a second, then doubling
/// up to half a minute, so a daemon restart is noticed quickly and a long outage costs little.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What is read: an instance's key (`/v1/keys/{instance}`) or a delegated API token
/// (`/v1/tokens/{name}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An instance's key.
    Key(String),
    /// A token, by its name.
    Token(String),
}

impl Target {
    /// The path of its answer.
    pub fn path(&self) -> String {
        match self {
            Target::Key(instance) => format!("/v1/keys/{}", encode_instance(instance)),
            Target::Token(name) => format!("/v1/tokens/{}", encode_instance(name)),
        }
    }
}

impl std::fmt::Display for Target {
    /// `"api_key"`, or `token "automation"`, for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Key(instance) => write!(f, "{instance:?}"),
            Target::Token(name) => write!(f, "token {name:?}"),
        }
    }
}

/// A key (or token) as the daemon serves it on `GET /v1/keys/{instance}` or
/// `GET /v1/tokens/{name}` (the wire view of [`crate::keystore::ServedKey`]).
#[derive(Clone, Debug)]
pub struct FetchedKey {
    /// The daemon's generation (ETag) of this value.
    pub generation: u64,
    /// The key, or the token.
    pub key: Secret,
}

#[derive(Deserialize)]
struct KeyBody {
    /// A token's answer names it `access_token`.
    #[serde(alias = "access_token")]
    api_key: String,
    generation: u64,
}

impl FetchedKey {
    /// Reads a `200` answer of `GET /v1/keys/{instance}` or `GET /v1/tokens/{name}`.
    ///
    /// # Errors
    /// A description (without the body, which holds the key) when it is not the key document.
    pub fn from_reply(reply: &Reply) -> Result<FetchedKey, String> {
        let body: KeyBody = serde_json::from_slice(&reply.body).map_err(|e| {
            format!(
                "an answer this version does not understand ({}): is the daemon a different version?",
                json_category(&e)
            )
        })?;
        if body.api_key.is_empty() {
            return Err("an empty key".into());
        }
        Ok(FetchedKey {
            generation: body.generation,
            key: Secret::new(body.api_key),
        })
    }
}

/// What kind of JSON error (never its text, which may quote the body and so the key).
fn json_category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "unexpected fields",
        serde_json::error::Category::Eof => "truncated",
    }
}

/// How [`KeyClient::get`] waits. Every request is bounded by what is left until the deadline
/// (within [`Wait::request_cap`] and [`Wait::request_floor`]); a request that would have no time
/// at all is not started.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    deadline: Instant,
    retry: bool,
    request_cap: Duration,
    request_floor: Duration,
    retry_timeouts: bool,
}

impl Wait {
    /// Retry while the daemon is unreachable or answers 503, until `deadline`.
    pub fn until(deadline: Instant) -> Wait {
        Wait {
            deadline,
            retry: true,
            request_cap: Duration::MAX,
            request_floor: Duration::ZERO,
            retry_timeouts: false,
        }
    }

    /// Whether to retry at all (`false`: one request, still bounded by the deadline).
    pub fn retrying(self, retry: bool) -> Wait {
        Wait { retry, ..self }
    }

    /// No single request takes longer than `cap`.
    pub fn request_cap(self, cap: Duration) -> Wait {
        Wait {
            request_cap: cap,
            ..self
        }
    }

    /// Every request gets at least `floor`, however little is left.
    pub fn request_floor(self, floor: Duration) -> Wait {
        Wait {
            request_floor: floor,
            ..self
        }
    }

    /// A request that timed out is retried too (a daemon busy starting), not only 503s and an
    /// unreachable socket.
    pub fn retry_timeouts(self) -> Wait {
        Wait {
            retry_timeouts: true,
            ..self
        }
    }

    fn is_transient(&self, failure: &Failure) -> bool {
        match failure {
            Failure::Answer(reply) => reply.status == StatusCode::SERVICE_UNAVAILABLE,
            Failure::Daemon(ClientError::Unreachable { .. }) => true,
            Failure::Daemon(ClientError::Timeout { .. }) => self.retry_timeouts,
            Failure::Daemon(ClientError::Protocol { .. }) | Failure::BadAnswer(_) => false,
        }
    }
}

/// One attempt that brought no key.
#[derive(Debug)]
pub enum Failure {
    /// The daemon answered, but not `200` (404 unknown instance, 503 nothing to serve yet, …).
    Answer(Reply),
    /// A `200` that is not the key document (what was wrong, never the body).
    BadAnswer(String),
    /// The daemon could not be reached, did not answer in time, or broke off.
    Daemon(ClientError),
}

/// Why [`KeyClient::get`] has no key.
#[derive(Debug)]
pub struct GetError {
    /// The attempt that ended the wait.
    pub last: Failure,
    /// The (transient) attempt before it, if any: what a caller may report when the wait ended
    /// on a timeout.
    pub before: Option<Failure>,
}

/// A key with the answer it came in (`get --json` prints the answer).
#[derive(Debug)]
pub struct Fetched {
    /// The key.
    pub key: FetchedKey,
    /// The whole answer.
    pub reply: Reply,
}

/// What following an instance's key brings.
#[derive(Debug)]
pub enum Followed {
    /// A new key (a different value; a new generation of the same value is not a rotation).
    Rotated(FetchedKey),
    /// Following fails, for this reason (said once per distinct reason); it goes on retrying.
    Trouble(String),
    /// The daemon answers again after [`Followed::Trouble`].
    Recovered,
}

/// The client for an instance's key on the daemon's socket.
#[derive(Clone, Debug)]
pub struct KeyClient {
    socket: PathBuf,
}

impl KeyClient {
    /// A client of the daemon at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> KeyClient {
        KeyClient {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Reads `instance`'s key, waiting as `wait` says.
    ///
    /// # Errors
    /// [`GetError`]: the attempt that ended the wait, and the one before it.
    pub async fn get(&self, instance: &str, wait: Wait) -> Result<Fetched, GetError> {
        self.get_target(&Target::Key(instance.to_owned()), wait)
            .await
    }

    /// Reads `target` (a key or a token), waiting as `wait` says.
    ///
    /// # Errors
    /// [`GetError`]: the attempt that ended the wait, and the one before it.
    pub async fn get_target(&self, target: &Target, wait: Wait) -> Result<Fetched, GetError> {
        let path = target.path();
        let mut before: Option<Failure> = None;
        loop {
            let left = wait.deadline.saturating_duration_since(Instant::now());
            let timeout = wait.request_cap.min(left).max(wait.request_floor);
            if timeout.is_zero() {
                return Err(match before {
                    Some(last) => GetError { last, before: None },
                    None => GetError {
                        last: Failure::Daemon(ClientError::Timeout {
                            path: self.socket.clone(),
                            timeout,
                        }),
                        before: None,
                    },
                });
            }
            let failure = match request(&self.socket, Method::GET, &path, &[], None, timeout).await
            {
                Ok(reply) if reply.status == StatusCode::OK => {
                    return match FetchedKey::from_reply(&reply) {
                        Ok(key) => Ok(Fetched { key, reply }),
                        Err(reason) => Err(GetError {
                            last: Failure::BadAnswer(reason),
                            before,
                        }),
                    };
                }
                Ok(reply) => Failure::Answer(reply),
                Err(e) => Failure::Daemon(e),
            };
            let left = wait.deadline.saturating_duration_since(Instant::now());
            if !(wait.retry && wait.is_transient(&failure) && !left.is_zero()) {
                return Err(GetError {
                    last: failure,
                    before,
                });
            }
            before = Some(failure);
            // A short, bounded retry loop on the client side only; the daemon itself never polls.
            tokio::time::sleep(RETRY_PAUSE.min(left)).await;
        }
    }

    /// The rotations of `target` after `known`, with the long poll. The stream never ends; drop
    /// it to stop.
    pub fn follow(&self, target: &Target, known: FetchedKey) -> impl Stream<Item = Followed> {
        let follower = Follower {
            socket: self.socket.clone(),
            path: target.path(),
            instance: target.to_string(),
            known,
            backoff: Backoff::new(),
            resync: false,
            pause: None,
            problem: None,
            events: VecDeque::new(),
        };
        futures_util::stream::unfold(follower, |mut f| async move {
            loop {
                if let Some(event) = f.events.pop_front() {
                    return Some((event, f));
                }
                f.step().await;
            }
        })
    }
}

/// The state of [`KeyClient::follow`].
struct Follower {
    socket: PathBuf,
    path: String,
    instance: String,
    known: FetchedKey,
    backoff: Backoff,
    /// After a failure the daemon may have restarted with a new numbering of generations: read
    /// the key plainly once instead of trusting the old ETag.
    resync: bool,
    /// How long to wait before the next request.
    pause: Option<Duration>,
    /// The failure last reported, so each is said once.
    problem: Option<String>,
    events: VecDeque<Followed>,
}

impl Follower {
    /// One request (after the pause the previous one asked for); queues what it brought.
    async fn step(&mut self) {
        if let Some(pause) = self.pause.take() {
            tokio::time::sleep(pause).await;
        }
        let started = Instant::now();
        let etag = format!("\"{}\"", self.known.generation);
        let (query, headers, timeout): (String, Vec<(&str, &str)>, Duration) = if self.resync {
            (self.path.clone(), vec![], READ_TIMEOUT)
        } else {
            (
                format!("{}?wait={}s", self.path, LONG_POLL.as_secs()),
                vec![("if-none-match", etag.as_str())],
                LONG_POLL + LONG_POLL_SLACK,
            )
        };
        let outcome = request(&self.socket, Method::GET, &query, &headers, None, timeout).await;
        let instance = &self.instance;
        // Whether this answer brought a new value.
        let mut rotated = false;
        let failure = match outcome {
            Ok(reply) if reply.status == StatusCode::OK => match FetchedKey::from_reply(&reply) {
                Ok(served) => {
                    if served.key != self.known.key {
                        rotated = true;
                        self.events.push_back(Followed::Rotated(served.clone()));
                    }
                    self.known = served;
                    None
                }
                Err(e) => Some(format!("the daemon answered with {e}")),
            },
            Ok(reply) if reply.status == StatusCode::NOT_MODIFIED => None,
            Ok(reply) if reply.status == StatusCode::NOT_FOUND => Some(format!(
                "the daemon no longer serves {instance} (removed from its configuration?)"
            )),
            Ok(reply) => Some(format!(
                "the daemon answered {} for {instance}: {}",
                reply.status,
                reply.error_message()
            )),
            Err(e) => Some(e.to_string()),
        };
        let failed = failure.is_some();
        match (&self.problem, &failure) {
            (Some(_), None) => self.events.push_back(Followed::Recovered),
            (old, Some(msg)) if old.as_ref() != Some(msg) => {
                self.events.push_back(Followed::Trouble(msg.clone()));
            }
            _ => {}
        }
        self.problem = failure;
        if failed {
            self.resync = true;
            self.pause = Some(self.backoff.next());
        } else if !self.resync && !rotated && started.elapsed() < MIN_POLL {
            // A long poll that did not wait and brought nothing new: a daemon shutting down
            // answers open polls at once, and one restarted renumbers its generations. Not a
            // failure to report, but no reason to ask again straight away either.
            self.pause = Some(self.backoff.next());
        } else {
            self.resync = false;
            self.backoff.reset();
        }
    }
}

/// Capped exponential backoff with jitter (half fixed, half random, so retries of many clients
/// spread out but none waits much less than the step).
struct Backoff {
    step: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { step: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(
            first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN,
            "{first:?}"
        );
        let mut last = first;
        for _ in 0..10 {
            last = b.next();
        }
        assert!(last >= BACKOFF_MAX / 2 && last <= BACKOFF_MAX, "{last:?}");
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }

    #[test]
    fn key_replies_are_read_without_echoing_the_body() {
        let reply = |body: &str| Reply {
            status: StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from(body.to_owned()),
        };
        let k = FetchedKey::from_reply(&reply(
            r#"{"instance":"api_key","api_key":"abcdefghij12345","generation":7,"source":"fallback"}"#,
        ))
        .unwrap();
        assert_eq!((k.generation, k.key.expose()), (7, "abcdefghij12345"));
        let e = FetchedKey::from_reply(&reply(r#"{"api_key":"secretsecret99"}"#)).unwrap_err();
        assert!(!e.contains("secretsecret99"), "{e}");
        assert!(FetchedKey::from_reply(&reply(r#"{"api_key":"","generation":1}"#)).is_err());
        let t = FetchedKey::from_reply(&reply(
            r#"{"name":"automation","access_token":"eyJ.a.b","expires_at":"2026-12-07T10:00:00Z","generation":9,"org_uuid":null}"#,
        ))
        .unwrap();
        assert_eq!((t.generation, t.key.expose()), (9, "eyJ.a.b"));
    }

    #[test]
    fn targets_have_their_own_paths() {
        assert_eq!(
            Target::Key("additional_endpoints[https://x][0]".into()).path(),
            "/v1/keys/additional%5Fendpoints%5Bhttps%3A%2F%2Fx%5D%5B0%5D"
        );
        assert_eq!(
            Target::Token("ci-deploy".into()).path(),
            "/v1/tokens/ci%2Ddeploy"
        );
        assert_eq!(Target::Token("a".into()).to_string(), "token \"a\"");
    }
}

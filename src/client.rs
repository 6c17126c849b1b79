//! A small HTTP/1.1 client for the daemon's socket, used by the CLI (`status`, `get`,
//! `secret-helper`, `health`, …). One request per connection: the CLI makes a handful.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

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

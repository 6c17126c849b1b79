//! A tiny HTTP/1.1 server and client shared by the emulators.
//!
//! The server binds before [`HttpServer::spawn`] returns, so a peer is accepting connections as
//! soon as its constructor finishes (no readiness polling in tests). Requests are handed to the
//! handler with their body already collected, which keeps every emulator a plain
//! `async fn(Request<Bytes>) -> Response<Full<Bytes>>`. Dropping the server stops the accept loop
//! and every open connection, including handlers that never answer on purpose.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::SandboxError;

/// How long a sandbox client request may take. Generous: the machine running tests is small and
/// shared, and moto (Python) answers slowly under load.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running loopback HTTP server. Stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` (use `127.0.0.1:0` for a free port) and serves every request with `handler`.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when the address cannot be bound.
    pub async fn spawn<F, Fut>(addr: SocketAddr, handler: F) -> Result<HttpServer, SandboxError>
    where
        F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| SandboxError::io(format!("binding {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SandboxError::io("reading the bound address", e))?;
        let handler = Arc::new(handler);
        let accept_task = tokio::spawn(async move {
            // Connections live in this set so that aborting the accept task (on drop) also ends
            // them: a handler stuck on purpose must not outlive its emulator.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = Arc::clone(&handler);
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                                let handler = Arc::clone(&handler);
                                async move {
                                    let (parts, body) = req.into_parts();
                                    let body = match body.collect().await {
                                        Ok(collected) => collected.to_bytes(),
                                        Err(_) => Bytes::new(),
                                    };
                                    Ok::<_, Infallible>(handler(Request::from_parts(parts, body)).await)
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(HttpServer { addr, accept_task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Builds a response with a status, content type and body.
pub fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", value.to_string())
}

/// A text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, "text/plain", body)
}

/// What the client got back.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Whole response body.
    pub body: Bytes,
}

impl ClientResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one plain-HTTP request. Headers are sent as given: a `Host` header in `headers` is kept
/// (the connection goes to `url`'s address), which is what replaying a signed request needs.
///
/// # Errors
/// [`SandboxError::Http`] on connection failure, timeout or a malformed request.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(String, String)],
    body: impl Into<Bytes>,
) -> Result<ClientResponse, SandboxError> {
    send_limited(method, url, headers, body, usize::MAX).await
}

/// [`send`], reading at most `limit` bytes of the answer (a longer one is an error).
///
/// # Errors
/// As [`send`].
pub async fn send_limited(
    method: Method,
    url: &str,
    headers: &[(String, String)],
    body: impl Into<Bytes>,
    limit: usize,
) -> Result<ClientResponse, SandboxError> {
    let fail = |detail: String| SandboxError::Http {
        method: method.to_string(),
        url: url.to_owned(),
        detail,
    };
    let mut builder = Request::builder().method(method.clone()).uri(url);
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder
        .body(Full::new(body.into()))
        .map_err(|e| fail(e.to_string()))?;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| fail(format!("{e:?}")))?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        Ok(ClientResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {CLIENT_TIMEOUT:?}")))?
}

/// One request as an emulator saw it (for assertions on what a client sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower case, in arrival order. Secrets in them are test values.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// Records `request`.
    pub fn of(request: &Request<Bytes>) -> RecordedRequest {
        RecordedRequest {
            method: request.method().to_string(),
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().path().to_owned(), |p| p.to_string()),
            headers: request
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The credential document AWS's container endpoints and IMDS serve (the JSON aws-config parses).
pub fn credentials_json(
    creds: &crate::moto::StaticCreds,
    expiration: std::time::SystemTime,
) -> serde_json::Value {
    serde_json::json!({
        "Code": "Success",
        "LastUpdated": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "Type": "AWS-HMAC",
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.session_token.clone().unwrap_or_default(),
        "AccountId": crate::moto::ACCOUNT_ID,
        "Expiration": humantime::format_rfc3339_seconds(expiration).to_string(),
    })
}

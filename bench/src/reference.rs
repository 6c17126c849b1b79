//! The reference of product §12: a minimal hyper 1 HTTP/1.1 server on a Unix socket that answers
//! every request with the daemon's own key-read answer (same body, same headers).
//!
//! It runs as a separate process (`ddda-bench reference-server`), like the daemon, on the same
//! runtime flavour and thread count as the daemon (`src/daemon/mod.rs`: multi-thread, 2
//! workers), built in the same cargo profile, and is driven by the same load generator. What is
//! left between the two is exactly the daemon's own work per request: routing, access checks,
//! the key snapshot, JSON serialisation, metrics, connection limits and timeouts.

use std::convert::Infallible;
use std::path::PathBuf;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

/// Worker threads, as in the daemon's runtime.
pub const WORKERS: usize = 2;

/// How the reference configures hyper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `http1::Builder::new()`: the minimal server of product §12.
    Minimal,
    /// The daemon's hyper settings (`src/server/mod.rs` `serve_connection`): a bounded read
    /// buffer, keep-alive (the idle deadline is the daemon's own code, not a hyper setting). Not
    /// a target; it splits the gap between what hyper's configuration costs and what the
    /// daemon's own code costs.
    DaemonSettings,
}

impl Variant {
    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Minimal => "minimal",
            Variant::DaemonSettings => "daemon-settings",
        }
    }

    /// Parses [`Variant::name`].
    pub fn parse(s: &str) -> Option<Variant> {
        [Variant::Minimal, Variant::DaemonSettings]
            .into_iter()
            .find(|v| v.name() == s)
    }
}

/// Runs the reference server until killed: `body_file` holds the body, `etag` the header value.
pub fn main(
    socket: PathBuf,
    body_file: PathBuf,
    etag: String,
    variant: Variant,
) -> std::io::Result<()> {
    let body = Bytes::from(std::fs::read(&body_file)?);
    let etag = HeaderValue::from_str(&etag).map_err(std::io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        let mut builder = http1::Builder::new();
        if variant == Variant::DaemonSettings {
            // The values of the daemon's defaults (`server::Limits::default()`).
            builder.max_buf_size(16 * 1024).keep_alive(true);
        }
        loop {
            let (stream, _) = listener.accept().await?;
            let body = body.clone();
            let etag = etag.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let mut resp = Response::new(Full::new(body.clone()));
                    let h = resp.headers_mut();
                    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    h.insert(ETAG, etag.clone());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

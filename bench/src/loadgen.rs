//! A small HTTP/1.1 load generator for a Unix socket: N keep-alive connections, one request in
//! flight per connection (closed loop, like consumers that wait for each answer), latency of
//! every request in the measured window.
//!
//! The client side is deliberately thin (a prebuilt request, `httparse` on the answer, no
//! allocation per request) so that on a shared 2-core machine as much CPU as possible goes to
//! the server under test. Both servers of a comparison get exactly the same client.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest answer accepted (the key body is a few hundred bytes; status pages a few KiB).
const MAX_RESPONSE: usize = 1024 * 1024;

/// One parsed answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `ETag` header, if any.
    pub etag: Option<String>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Wall-clock time at which the first bytes of the answer were read.
    pub first_byte_at: SystemTime,
}

/// A keep-alive connection that reads whole answers.
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects.
    pub async fn connect(socket: &Path) -> io::Result<Conn> {
        Ok(Conn {
            stream: UnixStream::connect(socket).await?,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Sends raw request bytes.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.stream.write_all(request).await
    }

    /// Reads one answer (status line, headers, `Content-Length` body).
    pub async fn read_answer(&mut self) -> io::Result<Answer> {
        let mut first_byte_at = None;
        loop {
            if let Some((status, etag, head_len, body_len)) = parse_head(&self.buf)? {
                while self.buf.len() < head_len + body_len {
                    self.fill().await?;
                }
                let body = self.buf[head_len..head_len + body_len].to_vec();
                self.buf.drain(..head_len + body_len);
                return Ok(Answer {
                    status,
                    etag,
                    body,
                    first_byte_at: first_byte_at.unwrap_or_else(SystemTime::now),
                });
            }
            self.fill().await?;
            first_byte_at.get_or_insert_with(SystemTime::now);
        }
    }

    /// Reads one answer, returning only its status (the hot loop: no body copy).
    async fn read_status(&mut self) -> io::Result<u16> {
        loop {
            if let Some((status, _, head_len, body_len)) = parse_head(&self.buf)? {
                while self.buf.len() < head_len + body_len {
                    self.fill().await?;
                }
                self.buf.drain(..head_len + body_len);
                return Ok(status);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.len() > MAX_RESPONSE {
            return Err(io::Error::other("answer larger than 1 MiB"));
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(())
    }
}

/// `(status, etag, head length, body length)` once the head is complete.
type Head = (u16, Option<String>, usize, usize);

fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let status = resp.code.unwrap_or(0);
            let mut body_len = 0usize;
            let mut etag = None;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| io::Error::other("bad Content-Length"))?;
                } else if h.name.eq_ignore_ascii_case("etag") {
                    etag = Some(String::from_utf8_lossy(h.value).into_owned());
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(io::Error::other("chunked answers are not expected here"));
                }
            }
            Ok(Some((status, etag, head_len, body_len)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(io::Error::other(format!("bad HTTP answer: {e}"))),
    }
}

/// A `GET` request with keep-alive.
pub fn get_request(path: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in extra_headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A `POST` request with a JSON body.
pub fn post_request(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One request on a fresh connection.
pub async fn request(socket: &Path, request: &[u8]) -> io::Result<Answer> {
    let mut c = Conn::connect(socket).await?;
    c.send(request).await?;
    c.read_answer().await
}

/// One request on a fresh blocking connection (for tight start-up polling, where a tokio timer's
/// millisecond granularity would be too coarse). Returns the status.
pub fn request_blocking(socket: &Path, request: &[u8]) -> io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, _, head_len, body_len)) = parse_head(&buf)?
            && buf.len() >= head_len + body_len
        {
            return Ok(status);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Result of one load run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Requests completed inside the measured window.
    pub requests: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency of each of those requests, sorted.
    pub latencies: Vec<Duration>,
    /// Answers that were not 200.
    pub errors: u64,
    /// The server's context switches and CPU time (all threads) over the window, when its pid
    /// was given.
    pub server: Option<(u64, Duration)>,
}

impl Run {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64()
    }

    /// Server CPU time per request, when measured.
    pub fn cpu_per_request(&self) -> Option<Duration> {
        let (_, cpu) = self.server?;
        Some(cpu / u32::try_from(self.requests.max(1)).unwrap_or(u32::MAX))
    }

    /// Server context switches per request, when measured.
    pub fn switches_per_request(&self) -> Option<f64> {
        let (switches, _) = self.server?;
        Some(switches as f64 / self.requests.max(1) as f64)
    }

    /// The `p`-th percentile latency (`p` in `[0, 100]`).
    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The `p`-th percentile of sorted durations (nearest rank); zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `conns` closed-loop connections sending `request` for `warmup + window`; only requests
/// that start and finish inside the window are counted. With `server_pid`, the server's context
/// switches and CPU time over the window are sampled too.
pub async fn run(
    socket: &Path,
    conns: usize,
    request: Vec<u8>,
    warmup: Duration,
    window: Duration,
    server_pid: Option<u32>,
) -> io::Result<Run> {
    let request: Arc<[u8]> = request.into();
    // Connect everyone first, so connection set-up is not part of any measurement.
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        connections.push(Conn::connect(socket).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + warmup;
    let measure_to = measure_from + window;
    let probe = server_pid.map(|pid| {
        tokio::spawn(async move {
            let sample = || -> io::Result<(u64, Duration)> {
                let switches = crate::procfs::switches(pid)?
                    .iter()
                    .map(|t| t.switches)
                    .sum();
                Ok((switches, crate::procfs::cpu_time_schedstat(pid)?))
            };
            tokio::time::sleep_until(measure_from.into()).await;
            let a = sample()?;
            tokio::time::sleep_until(measure_to.into()).await;
            let b = sample()?;
            Ok::<_, io::Error>((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)))
        })
    });
    let mut tasks = Vec::with_capacity(conns);
    for mut c in connections {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            tokio::time::sleep_until(start.into()).await;
            loop {
                let t0 = Instant::now();
                if t0 >= measure_to {
                    break;
                }
                c.send(&request).await?;
                let status = c.read_status().await?;
                let t1 = Instant::now();
                if t0 >= measure_from && t1 <= measure_to {
                    latencies.push(t1 - t0);
                    if status != 200 {
                        errors += 1;
                    }
                }
            }
            Ok::<_, io::Error>((latencies, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(io::Error::other)??;
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let server = match probe {
        Some(p) => Some(p.await.map_err(io::Error::other)??),
        None => None,
    };
    Ok(Run {
        requests: all.len() as u64,
        window,
        latencies: all,
        errors,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_incrementally() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"7\"\r\n\r\nhello";
        assert!(parse_head(&full[..10]).unwrap().is_none());
        let (status, etag, head, body) = parse_head(full).unwrap().unwrap();
        assert_eq!((status, etag.as_deref(), body), (200, Some("\"7\""), 5));
        assert_eq!(&full[head..], b"hello");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}

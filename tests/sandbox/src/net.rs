//! Network plumbing for fault tests: peers that can be taken down and brought back.
//!
//! - [`Relay`]: a loopback TCP listener that either forwards every connection to a fixed
//!   target ([`RelayKind::Forward`], e.g. between the Datadog emulator and moto, to take STS
//!   "down") or acts as an HTTP `CONNECT` proxy that tunnels every request to a fixed target
//!   whatever host it names ([`RelayKind::Connect`], the `proxy.https` of a test). Both can be
//!   [stopped](Relay::stop) (the port is closed: connections are *refused*, as when a peer is
//!   down, and open tunnels are cut) and [resumed](Relay::resume) on the same port.
//! - [`TlsFront`]: TLS termination with the self-signed certificate of `tests/fixtures/tls`
//!   (`CN=localhost`, `127.0.0.1`), forwarding the plaintext to a target. It stands in for an
//!   HTTPS Datadog endpoint: clients that verify certificates refuse it, clients told to skip
//!   validation reach the emulator behind it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::SandboxError;

/// Largest `CONNECT` request head read.
const MAX_HEAD: usize = 8 * 1024;

/// How long [`Relay::resume`] keeps trying to bind its old port (a closed listener's port can
/// stay busy for a moment while the kernel tears connections down).
const REBIND_PATIENCE: Duration = Duration::from_secs(5);

/// What a [`Relay`] does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// Pipe the bytes to the target.
    Forward,
    /// Read an HTTP `CONNECT host:port` head, answer `200 Connection established`, then pipe
    /// the tunnel to the target (every host maps to the same target). Anything but `CONNECT`
    /// gets `405`.
    Connect,
}

/// A stoppable TCP forwarder or `CONNECT` proxy on 127.0.0.1.
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    kind: RelayKind,
    task: Mutex<Option<JoinHandle<()>>>,
    connects: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
}

impl Relay {
    /// Starts on a free loopback port, relaying to `target`.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when binding fails.
    pub async fn start(kind: RelayKind, target: SocketAddr) -> Result<Relay, SandboxError> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SandboxError::io("reading the bound address", e))?;
        let relay = Relay {
            addr,
            target,
            kind,
            task: Mutex::new(None),
            connects: Arc::new(Mutex::new(Vec::new())),
            accepted: Arc::new(AtomicUsize::new(0)),
        };
        relay.serve(listener);
        Ok(relay)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `host:port` of every `CONNECT` received (for [`RelayKind::Connect`]).
    pub fn connects(&self) -> Vec<String> {
        lock(&self.connects).clone()
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Whether the relay is listening.
    pub fn is_up(&self) -> bool {
        lock(&self.task).is_some()
    }

    /// Closes the port and cuts every relayed connection: once this returns, new connections
    /// are refused.
    pub async fn stop(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            task.abort();
            // The listener is closed only when the aborted task is dropped by the runtime.
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when the port cannot be bound again within a few seconds (another
    /// process took it).
    pub async fn resume(&self) -> Result<(), SandboxError> {
        if self.is_up() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
        let listener = loop {
            match bind(self.addr) {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
        Ok(())
    }

    fn serve(&self, listener: TcpListener) {
        let (kind, target, connects) = (self.kind, self.target, Arc::clone(&self.connects));
        let accepted = Arc::clone(&self.accepted);
        let task = tokio::spawn(async move {
            // Tunnels live in this set so that aborting the accept task (stop, drop) cuts them.
            let mut tunnels = JoinSet::new();
            loop {
                tokio::select! {
                    result = listener.accept() => {
                        let Ok((stream, _)) = result else { continue };
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let connects = Arc::clone(&connects);
                        tunnels.spawn(async move {
                            let _ = relay(kind, stream, target, &connects).await;
                        });
                    }
                    Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
                }
            }
        });
        *lock(&self.task) = Some(task);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds with `SO_REUSEADDR`, so a port whose listener was just closed (with relayed
/// connections in `TIME_WAIT`) can be bound again.
fn bind(addr: SocketAddr) -> Result<TcpListener, SandboxError> {
    let what = || format!("binding {addr}");
    let socket = TcpSocket::new_v4().map_err(|e| SandboxError::io(what(), e))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| SandboxError::io(what(), e))?;
    socket.bind(addr).map_err(|e| SandboxError::io(what(), e))?;
    socket.listen(1024).map_err(|e| SandboxError::io(what(), e))
}

async fn relay(
    kind: RelayKind,
    mut client: TcpStream,
    target: SocketAddr,
    connects: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    if kind == RelayKind::Connect {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = client.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
        let (method, authority) = (request_line.next(), request_line.next());
        let Some(authority) = authority.filter(|_| method == Some("CONNECT")) else {
            client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                .await?;
            return Ok(());
        };
        lock(connects).push(authority.to_owned());
        let Ok(upstream) = TcpStream::connect(target).await else {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                .await?;
            return Ok(());
        };
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        return pipe(client, upstream).await;
    }
    let upstream = TcpStream::connect(target).await?;
    pipe(client, upstream).await
}

async fn pipe(mut a: TcpStream, mut b: TcpStream) -> std::io::Result<()> {
    tokio::io::copy_bidirectional(&mut a, &mut b)
        .await
        .map(|_| ())
}

/// TLS termination in front of a plain-HTTP peer, with the self-signed test certificate.
pub struct TlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Starts on a free loopback port, forwarding decrypted bytes to `target`.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when binding fails or the fixture certificate cannot be loaded.
    pub async fn start(target: SocketAddr) -> Result<TlsFront, SandboxError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tls");
        let bad = |what: &str, e: String| {
            SandboxError::io(
                format!("loading the test {what} from {dir}"),
                std::io::Error::other(e),
            )
        };
        let certs = CertificateDer::pem_file_iter(format!("{dir}/cert.pem"))
            .map_err(|e| bad("certificate", e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(format!("{dir}/key.pem"))
            .map_err(|e| bad("key", e.to_string()))?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("certificate", e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SandboxError::io("reading the bound address", e))?;
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let acceptor = acceptor.clone();
                        connections.spawn(async move {
                            // A client refusing the certificate ends the handshake here.
                            let Ok(mut tls) = acceptor.accept(stream).await else { return };
                            let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(TlsFront { addr, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT` (the name the certificate is issued for).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, task)
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        stream.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn forward_stops_refusing_and_resumes_on_the_same_port() {
        let (target, _echo) = echo().await;
        let relay = Relay::start(RelayKind::Forward, target).await.unwrap();
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
        relay.stop().await;
        let err = TcpStream::connect(relay.addr()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        // The open connection was cut too.
        let mut buf = [0u8; 4];
        let _ = s.write_all(b"more").await;
        assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)));
        relay.resume().await.unwrap();
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"back").await, b"back");
    }

    #[tokio::test]
    async fn connect_proxy_tunnels_any_host_to_the_target() {
        let (target, _echo) = echo().await;
        let relay = Relay::start(RelayKind::Connect, target).await.unwrap();
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        s.write_all(b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n\r\n")
            .await
            .unwrap();
        let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
        let mut head = vec![0u8; established.len()];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head, established);
        assert_eq!(round_trip(&mut s, b"tunnel").await, b"tunnel");
        assert_eq!(relay.connects(), ["api.example.test:443"]);

        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 405"));
    }
}

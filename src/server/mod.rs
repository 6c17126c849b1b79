//! The local API: HTTP/1.1 on a Unix socket (product §7).
//!
//! Endpoints (all JSON, `Cache-Control: no-store`):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/keys` | instances without secrets |
//! | GET | `/v1/keys/{instance}` | the key; `?wait=30s` + `If-None-Match` long-polls |
//! | POST | `/v1/keys/{instance}/rejected` | a consumer got 403 with this key |
//! | GET | `/v1/status` | the whole status |
//! | GET | `/v1/health/live`, `/v1/health/ready` | liveness, readiness |
//! | GET | `/metrics` | OpenMetrics text |
//!
//! Hostile or slow clients are bounded: header bytes (431), body bytes (413), connection count,
//! and idle time (a connection that sends no complete request head within the idle timeout is
//! closed, which also ends slowloris attempts; a request body that does not arrive within it
//! gets 408 and the connection is closed).

pub mod access;
mod routes;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use self::access::{AccessPolicy, Peer, Rule};
use crate::keystore::KeyStore;
use crate::lifecycle::{ManagerHandle, RejectOutcome};
use crate::metrics::Metrics;
use crate::status::DaemonInfo;

/// Bounds on what one client may cost us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one uid may hold at once (idle, long polls and all): one local user, allowed
    /// or not, can then never take every slot. Past it, its new connections are closed at once.
    /// Root is not limited: it can stop the daemon anyway, and its health checks and reads must
    /// never be turned away.
    pub max_connections_per_uid: usize,
    /// A connection with no request in flight for this long since its last answer (or since it
    /// was accepted) is closed: idle keep-alive and slowloris heads alike. A request body that
    /// takes longer gets 408.
    pub idle_timeout: Duration,
    /// Request line plus headers (hyper's read buffer; at least 8 KiB).
    pub max_header_bytes: usize,
    /// Request body (only `rejected` has one, and it is tiny).
    pub max_body_bytes: usize,
    /// Upper bound of `?wait=` (product §7: 300 s).
    pub max_wait: Duration,
    /// How long a key read waits for a pending instance's first outcome. The manager ends
    /// `pending` when the startup grace ends, so this is only a safety net.
    pub pending_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Well above the 1,000 consumers a busy node might have, well below fd limits.
            max_connections: 4096,
            max_connections_per_uid: per_uid_share(4096),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 4 * 1024,
            max_wait: Duration::from_secs(300),
            pending_wait: Duration::from_secs(60),
        }
    }
}

/// The share of `max_connections` one uid may hold: a quarter (so it takes more than three
/// users to fill the daemon), and at least one.
pub fn per_uid_share(max_connections: usize) -> usize {
    max_connections.div_ceil(4).max(1)
}

/// Connections held per uid, against [`Limits::max_connections_per_uid`].
#[derive(Debug, Default)]
struct Shares(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

/// One connection's place in its uid's share; given back on drop.
struct Share {
    shares: Arc<Shares>,
    uid: u32,
}

impl Shares {
    fn take(self: &Arc<Self>, uid: u32, limit: usize) -> Option<Option<Share>> {
        if uid == 0 {
            return Some(None);
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = map.entry(uid).or_insert(0);
        if *held >= limit {
            return None;
        }
        *held += 1;
        Some(Some(Share {
            shares: self.clone(),
            uid,
        }))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut map = self.shares.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = map.get_mut(&self.uid) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// Receives consumers' rejection reports (the refresh manager's [`ManagerHandle`]; fakes in
/// tests).
pub trait Rejections: Send + Sync + 'static {
    /// Handles `POST /v1/keys/{instance}/rejected`; the outcome is the answer's `refresh`.
    fn report_rejected(&self, instance: &str, api_key_suffix: &str) -> RejectOutcome;
}

impl Rejections for ManagerHandle {
    fn report_rejected(&self, instance: &str, api_key_suffix: &str) -> RejectOutcome {
        ManagerHandle::report_rejected(self, instance, api_key_suffix)
    }
}

/// Everything request handlers read. Swappable parts are `ArcSwap`s so a reload replaces them
/// without stopping the server.
pub struct ServerState {
    /// The keys.
    pub store: Arc<KeyStore>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Access rules in force.
    pub access: ArcSwap<AccessPolicy>,
    /// Daemon-wide status facts.
    pub info: ArcSwap<DaemonInfo>,
    /// File sinks and their last outcome.
    pub sinks: Arc<crate::sink::SinkBoard>,
    /// Where rejection reports go.
    pub rejections: Arc<dyn Rejections>,
    /// Limits in force.
    pub limits: Limits,
    /// Cancelled when the daemon stops: long polls answer at once.
    pub shutdown: CancellationToken,
}

/// Errors binding the socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another daemon answers on the socket.
    #[error(
        "another datadog-delegated-auth is already serving {path}: stop it first, or give this one another socket path (--socket or socket.path)"
    )]
    AlreadyRunning {
        /// Socket path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path.
    #[error(
        "{path} exists and is not a socket; refusing to replace it: remove it or choose another socket.path"
    )]
    NotASocket {
        /// Socket path.
        path: PathBuf,
    },
    /// Anyone may write to the socket's directory, and it lacks the sticky bit.
    #[error(
        "the socket directory {dir} (mode {mode:04o}) is writable by every user and not sticky: \
         anyone could replace the socket; use a directory only this daemon's user (and root) \
         can write, such as /run/datadog, or chmod +t it"
    )]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A system call failed.
    #[error(
        "cannot {op} socket {path}: {source}; check the directory exists and is writable by this user"
    )]
    Io {
        /// What we were doing.
        op: &'static str,
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> BindError + 'a {
    move |e| BindError::Io {
        op,
        path: path.to_owned(),
        source: io::Error::from(e),
    }
}

/// Binds the socket with its mode and group applied before anyone can reach it (see
/// [`bind_private`]). A stale socket (nobody answering) is replaced; a live one is not. A
/// missing directory is created (see [`prepare_directory`]).
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, BindError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            });
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(BindError::AlreadyRunning {
                    path: path.to_owned(),
                });
            }
            Err(_) => {
                info!(path = %path.display(), "Replacing a stale socket file left by a previous run.");
            }
        }
    }
    prepare_directory(path, gid)?;
    bind_private(path, mode, gid)
}

/// Binds a new socket with `mode` and `gid` and renames it over the daemon's own socket at
/// `path` (a reload changed `socket.mode` or `socket.group`): clients connect to the old socket
/// or the new one, never to nothing, and never to a socket with the old permissions once this
/// returns.
pub fn rebind(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, BindError> {
    prepare_directory(path, gid)?;
    bind_private(path, mode, gid)
}

/// The socket's directory: created when missing (0750 with the socket's group, so its members
/// can reach a 0660 socket whatever the umask; 0755 without a group), refused when anyone may
/// write to it without the sticky bit (another user could put a file of their choosing at the
/// socket path), and reported when the socket's group cannot traverse it.
fn prepare_directory(path: &Path, gid: Option<u32>) -> Result<(), BindError> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if !dir.exists() {
        create_directory(dir, gid).map_err(|source| BindError::Io {
            op: "create the directory of",
            path: path.to_owned(),
            source,
        })?;
        info!(dir = %dir.display(), "Created the socket directory.");
        return Ok(());
    }
    let meta = std::fs::metadata(dir).map_err(|source| BindError::Io {
        op: "inspect the directory of",
        path: path.to_owned(),
        source,
    })?;
    let dir_mode = meta.mode() & 0o7777;
    if dir_mode & 0o002 != 0 && dir_mode & 0o1000 == 0 {
        return Err(BindError::UnsafeDirectory {
            dir: dir.to_owned(),
            mode: dir_mode,
        });
    }
    if let Some(gid) = gid {
        let traversable = dir_mode & 0o001 != 0 || (meta.gid() == gid && dir_mode & 0o010 != 0);
        if !traversable {
            warn!(dir = %dir.display(), mode = format!("{dir_mode:04o}"), gid, "Members of the socket's group cannot traverse the socket directory, so they cannot reach the socket: chgrp the directory to the socket's group and chmod g+x it (0750), or choose another socket.path.");
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents: parents 0755, `dir` itself 0750 with group `gid`
/// (0755 without one). Modes are set on the opened directory, not by path, whatever the umask.
fn create_directory(dir: &Path, gid: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    missing.reverse();
    for d in missing {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
            .open(d)?;
        let mode = match (d == dir, gid) {
            (true, Some(gid)) => {
                nix::unistd::fchown(&opened, None, Some(nix::unistd::Gid::from_raw(gid)))
                    .map_err(io::Error::from)?;
                0o750
            }
            _ => 0o755,
        };
        opened.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Binds the socket inside a fresh private directory (0700, beside `path`), applies `mode` and
/// `gid` there, where no other user can swap the file for a symlink between `bind()` and
/// `chmod`/`chown`, listens, then renames it to `path` (atomically replacing what is there).
fn bind_private(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let private = dir.join(format!(
        ".{name}.bind-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    // mkdir never follows a planted symlink: it fails with EEXIST.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| BindError::Io {
            op: "create a private directory for",
            path: path.to_owned(),
            source,
        })?;
    let inner = private.join("s");
    let result = (|| {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(io_err("create", path))?;
        let addr = UnixAddr::new(&inner).map_err(io_err("address", path))?;
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(io_err("bind", path))?;
        if let Some(gid) = gid {
            nix::unistd::chown(&inner, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(io_err("set the group of", path))?;
        }
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode)).map_err(
            |source| BindError::Io {
                op: "set the mode of",
                path: path.to_owned(),
                source,
            },
        )?;
        // Pending connections queue here rather than fail: a burst of consumers at boot, or a
        // rotation releasing every long poll at once (each consumer reconnects), must not meet
        // a full backlog (a non-blocking connect then fails with EAGAIN). 1024 was overrun by
        // 1,000 long polls reconnecting during a connection flood (tests/hostile.rs); 4096
        // matches the default max_connections (the kernel caps it at net.core.somaxconn).
        socket::listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))
            .map_err(io_err("listen on", path))?;
        std::fs::rename(&inner, path).map_err(|source| BindError::Io {
            op: "move into place",
            path: path.to_owned(),
            source,
        })?;
        Ok(fd)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    let std_listener = std::os::unix::net::UnixListener::from(result?);
    UnixListener::from_std(std_listener).map_err(|source| BindError::Io {
        op: "register",
        path: path.to_owned(),
        source,
    })
}

/// Serves connections until `state.shutdown` is cancelled, then lets in-flight requests finish
/// for up to `grace`. Long polls answer as soon as shutdown starts.
pub async fn serve(listener: UnixListener, state: Arc<ServerState>, grace: Duration) {
    let (_keep, rebound) = tokio::sync::mpsc::channel(1);
    serve_rebindable(listener, rebound, state, grace).await;
}

/// Like [`serve`], and a listener received on `rebound` replaces the current one (the socket
/// file was removed and bound again): connections already open are served to the end, new
/// ones are accepted on the new listener.
pub async fn serve_rebindable(
    mut listener: UnixListener,
    mut rebound: tokio::sync::mpsc::Receiver<UnixListener>,
    state: Arc<ServerState>,
    grace: Duration,
) {
    let mut rebind_open = true;
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let shares = Arc::new(Shares::default());
    // Connections taken from a replaced listener's backlog, served before new ones.
    let mut drained: Vec<tokio::net::UnixStream> = Vec::new();
    let tracker = TaskTracker::new();

    loop {
        let permit = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = if let Some(stream) = drained.pop() {
            stream
        } else {
            tokio::select! {
            _ = state.shutdown.cancelled() => break,
            new = rebound.recv(), if rebind_open => {
                match new {
                    Some(new) => {
                        // Clients that connected to the old socket before it was replaced are
                        // in its backlog: serve them rather than drop them with it.
                        let old = std::mem::replace(&mut listener, new);
                        while let Some(Ok((stream, _))) = old.accept().now_or_never() {
                            drained.push(stream);
                        }
                    }
                    None => rebind_open = false,
                }
                match drained.pop() {
                    Some(stream) => stream,
                    None => continue,
                }
            }
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            }
        };
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            },
            Err(e) => {
                warn!(error = %e, "Cannot read the peer credentials of a connection; closing it.");
                continue;
            }
        };
        let Some(share) = shares.take(peer.uid, state.limits.max_connections_per_uid) else {
            debug!(pid = ?peer.pid, uid = peer.uid, limit = state.limits.max_connections_per_uid, "Closing a connection: this uid holds its whole share of connections.");
            state.metrics.connection_refused("uid_share");
            continue;
        };
        let st = state.clone();
        tracker.spawn(async move {
            if let Err(e) = serve_connection(stream, st, peer).await {
                debug!(error = %e, pid = ?peer.pid, uid = peer.uid, "Connection ended with an error.");
            }
            drop(share);
            drop(permit);
        });
    }
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = tokio::time::sleep(grace) => {
            warn!(grace = ?grace, "Grace period ended with requests still in flight; closing them.");
        }
    }
}

/// Serves one accepted connection from `peer` (its `SO_PEERCRED`, which the access rules check)
/// with the header, idle and body limits of `state.limits`, until the client closes it, it idles
/// out, or `state.shutdown` is cancelled (then the request in flight finishes and the connection
/// closes). [`serve`] runs this for every client; it is public so the fuzz harness drives the
/// very same service over an in-memory stream.
///
/// # Errors
/// The connection's HTTP or I/O error (a malformed request, a client gone mid-response); the
/// client has then had whatever answer hyper could give. Closing an idle connection is `Ok`.
pub async fn serve_connection<I>(io: I, state: Arc<ServerState>, peer: Peer) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(state.limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let idle = state.limits.idle_timeout;
    let activity = Arc::new(Activity::new());
    let (st, act) = (state.clone(), activity.clone());
    let service = service_fn(move |req| {
        let (st, act) = (st.clone(), act.clone());
        act.begin();
        async move {
            let resp = routes::handle(st, peer, req).await;
            act.end();
            resp
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    // The idle deadline: one timer per connection, re-armed at most once per idle period,
    // instead of hyper's header-read timer armed and dropped on every request (5% of the CPU of
    // a key read). The connection closes once `idle` has passed since the last answer (or since
    // it was accepted) with no request in flight: idle keep-alive clients and slowloris heads
    // alike. A long poll is a request in flight, never idle.
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = state.shutdown.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => {
                match activity.idle_deadline(idle) {
                    Some(later) => deadline = later,
                    None => {
                        debug!(pid = ?peer.pid, uid = peer.uid, idle = ?idle, "Closing an idle connection.");
                        return Ok(());
                    }
                }
            }
        }
    }
    // Finish the request in flight (long polls answer at once on shutdown), then close.
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// What the idle deadline of one connection needs to know: requests in flight and when the last
/// one was answered. Two atomic updates and a clock read per request.
struct Activity {
    in_flight: AtomicU32,
    /// Nanoseconds from `since` to the end of the last answered request (0: none yet).
    last_end: AtomicU64,
    since: tokio::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicU32::new(0),
            last_end: AtomicU64::new(0),
            since: tokio::time::Instant::now(),
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        let nanos = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_end.store(nanos, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the deadline fires: `None` if the connection has been idle for `idle`, else the next
    /// moment to look again.
    fn idle_deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(now + idle);
        }
        let last = self.since + Duration::from_nanos(self.last_end.load(Ordering::Acquire));
        let due = last + idle;
        (due > now).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::keystore::{KeySource, KeyState, ServedKey};
    use crate::secret::Secret;

    struct Reports;

    impl Rejections for Reports {
        fn report_rejected(&self, _instance: &str, _suffix: &str) -> RejectOutcome {
            RejectOutcome::Scheduled
        }
    }

    const PEER: Peer = Peer {
        pid: None,
        uid: 1000,
        gid: 1000,
    };

    fn state() -> Arc<ServerState> {
        let store = Arc::new(KeyStore::new());
        store.set_instances(&["api_key".to_owned()])[0].update(|s| {
            s.state = KeyState::Active;
            s.served = Some(ServedKey {
                value: Secret::from("0123456789abcdef0123456789abcdef"),
                source: KeySource::Delegated,
                obtained_at: SystemTime::now(),
                expires_at: None,
            });
        });
        Arc::new(ServerState {
            store,
            metrics: Arc::new(Metrics::new()),
            access: ArcSwap::from_pointee(AccessPolicy::Open),
            info: ArcSwap::from_pointee(DaemonInfo::default()),
            sinks: Arc::default(),
            rejections: Arc::new(Reports),
            limits: Limits::default(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Writes `request` on a fresh connection (never half-closing it) and reads until the server
    /// closes the connection.
    async fn exchange(request: &[u8]) -> String {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut rx, mut tx) = tokio::io::split(client);
        let serve = async {
            let _ = serve_connection(server, state(), PEER).await;
        };
        let send = async {
            tx.write_all(request).await.unwrap();
            tx
        };
        let receive = async {
            let mut out = Vec::new();
            rx.read_to_end(&mut out).await.unwrap();
            String::from_utf8(out).unwrap()
        };
        // Virtual time: a connection still open after a day is a hang, not a slow machine.
        let ((), _tx, out) = tokio::time::timeout(Duration::from_secs(86_400), async {
            tokio::join!(serve, send, receive)
        })
        .await
        .expect("the server never closed the connection");
        out
    }

    /// Found by the `server_http` fuzz target: a rejection report whose body is shorter than its
    /// Content-Length held the connection (and one of `max_connections`) forever, because the
    /// idle timeout only bounds the request head.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_arrives_gets_408_and_the_connection_closes() {
        let started = tokio::time::Instant::now();
        let reply = exchange(
            b"POST /v1/keys/api_key/rejected HTTP/1.1\r\nContent-Length: 29\r\n\r\n\
              {\"api_key_suffix\":\"bcdef\"}\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
        assert!(reply.contains("\"request_timeout\""), "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
        assert_eq!(started.elapsed(), Limits::default().idle_timeout);

        // The complete request is answered at once.
        let started = tokio::time::Instant::now();
        let reply = exchange(
            b"POST /v1/keys/api_key/rejected HTTP/1.1\r\nContent-Length: 26\r\n\r\n\
              {\"api_key_suffix\":\"bcdef\"}",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 202 "), "{reply}");
        assert!(reply.contains("{\"refresh\":\"scheduled\"}"), "{reply}");
        // Answered, then closed by the idle timeout while waiting for another request.
        assert_eq!(started.elapsed(), Limits::default().idle_timeout);
    }
}

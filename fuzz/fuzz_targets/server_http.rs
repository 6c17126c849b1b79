//! HTTP request handling of the socket server: arbitrary bytes sent to the real hyper service
//! (`server::serve_connection`, the function `server::serve` runs for every accepted client),
//! over an in-memory stream, with a key store holding an active, a fallback, a pending and an
//! unavailable instance and three delegated API tokens (one this peer may read, one it may not,
//! one expired), and access rules that let this peer (uid 1000) read some of them.
//!
//! Input: raw request bytes, as a client would write them on the socket (pipelining included).
//! The runtime's clock is paused, so once the server waits on a timer (idle timeout, long poll,
//! pending wait) virtual time jumps ahead: a connection costs microseconds whatever it waits on.
//! Properties: no panic; the connection ends on its own (no request holds it forever); whatever
//! comes back is HTTP/1.1 (1.0 for a 1.0 request); the key of the instance this peer may not read,
//! the token it may not read and the expired token never come back.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use datadog_delegated_auth::keystore::{KeySource, KeyState, KeyStore, ServedKey, Snapshot};
use datadog_delegated_auth::lifecycle::RejectOutcome;
use datadog_delegated_auth::metrics::Metrics;
use datadog_delegated_auth::secret::Secret;
use datadog_delegated_auth::server::{
    AccessPolicy, Limits, Peer, Rejections, Rule, ServerState, serve_connection,
};
use datadog_delegated_auth::status::DaemonInfo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const ACTIVE: &str = "api_key";
const ACTIVE_KEY: &str = "0123456789abcdef0123456789abcdef";
/// Served, but not to [`PEER`]: its key must never appear in a response.
const FORBIDDEN: &str = "logs_config.api_key";
const FORBIDDEN_KEY: &str = "fedcba9876543210fedcba9876543210";
const PENDING: &str = "additional_endpoints[https://app.datadoghq.eu][0]";
const UNAVAILABLE: &str = "remote_configuration.api_key";
/// A token [`PEER`] may read (`/v1/tokens/automation`).
const TOKEN: &str = "token:automation";
const TOKEN_VALUE: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhdXRvbWF0aW9uIn0.c2lnbmF0dXJl";
/// A token only root may read (`token:*`): never in a response to [`PEER`].
const TOKEN_FORBIDDEN: &str = "token:deploy";
const TOKEN_FORBIDDEN_VALUE: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXBsb3kifQ.Zm9yYmlkZGVu";
/// A token [`PEER`] may read but that has expired: never served.
const TOKEN_EXPIRED: &str = "token:expired";
const TOKEN_EXPIRED_VALUE: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJleHBpcmVkIn0.ZXhwaXJlZA";

const PEER: Peer = Peer {
    pid: Some(4242),
    uid: 1000,
    gid: 1000,
};

/// Virtual time after which a connection that is still open is a hang: far beyond the idle
/// timeout and any sequence of long polls a fuzz input can hold.
const HANG: Duration = Duration::from_secs(7 * 24 * 3600);

struct Harness {
    rt: Runtime,
    state: Arc<ServerState>,
}

/// Rejection reports as the refresh manager answers them, minus the refresh: a report that
/// names the served key's suffix counts (throttled), others are ignored.
struct Reports(Arc<KeyStore>);

impl Rejections for Reports {
    fn report_rejected(&self, instance: &str, api_key_suffix: &str) -> RejectOutcome {
        let Some(slot) = self.0.get(instance) else {
            return RejectOutcome::UnknownInstance;
        };
        match &slot.current().served {
            Some(k) if k.value.suffix_matches(api_key_suffix) => RejectOutcome::Throttled,
            _ => RejectOutcome::Ignored,
        }
    }
}

fn serve(state: KeyState, key: Option<(&str, KeySource)>) -> impl FnOnce(&mut Snapshot) {
    serve_until(state, key, None)
}

fn serve_until(
    state: KeyState,
    key: Option<(&str, KeySource)>,
    expires_at: Option<SystemTime>,
) -> impl FnOnce(&mut Snapshot) {
    move |s| {
        s.state = state;
        s.served = key.map(|(k, source)| ServedKey {
            value: Secret::from(k),
            source,
            obtained_at: SystemTime::now(),
            expires_at,
        });
        if state == KeyState::Unavailable {
            s.status.reason = Some("the exchange failed and no fallback is configured".into());
            s.status.next_refresh = Some(SystemTime::now() + Duration::from_secs(30));
        }
    }
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let store = Arc::new(KeyStore::new());
    let names = [
        ACTIVE,
        FORBIDDEN,
        PENDING,
        UNAVAILABLE,
        TOKEN,
        TOKEN_FORBIDDEN,
        TOKEN_EXPIRED,
    ]
    .map(String::from);
    let slots = store.set_instances(&names);
    // Real time: the server checks expiry against the wall clock, not the paused one.
    let hour = Some(SystemTime::now() + Duration::from_secs(3600));
    slots[4].update(serve_until(
        KeyState::Active,
        Some((TOKEN_VALUE, KeySource::Delegated)),
        hour,
    ));
    slots[5].update(serve_until(
        KeyState::Active,
        Some((TOKEN_FORBIDDEN_VALUE, KeySource::Delegated)),
        hour,
    ));
    slots[6].update(serve_until(
        KeyState::Active,
        Some((TOKEN_EXPIRED_VALUE, KeySource::Delegated)),
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
    ));
    slots[0].update(serve(
        KeyState::Active,
        Some((ACTIVE_KEY, KeySource::Delegated)),
    ));
    slots[1].update(serve(
        KeyState::Fallback,
        Some((FORBIDDEN_KEY, KeySource::Fallback)),
    ));
    slots[3].update(serve(KeyState::Unavailable, None));
    let access = AccessPolicy::Rules(vec![
        Rule {
            instances: vec![
                ACTIVE.into(),
                PENDING.into(),
                UNAVAILABLE.into(),
                TOKEN.into(),
                TOKEN_EXPIRED.into(),
            ],
            uids: vec![PEER.uid],
            gids: vec![],
        },
        Rule {
            instances: vec!["*".into(), "token:*".into()],
            uids: vec![0],
            gids: vec![0],
        },
    ]);
    let state = Arc::new(ServerState {
        store: store.clone(),
        metrics: Arc::new(Metrics::new()),
        access: ArcSwap::from_pointee(access),
        info: ArcSwap::from_pointee(DaemonInfo {
            config_path: "/etc/datadog-agent/datadog.yaml".into(),
            settings_path: "/etc/datadog-agent/delegated-auth.yaml".into(),
            socket_path: "/var/run/datadog/delegated-auth.sock".into(),
            started_at: Some(SystemTime::now()),
            config_loaded_at: Some(SystemTime::now()),
            ..DaemonInfo::default()
        }),
        sinks: Arc::default(),
        rejections: Arc::new(Reports(store)),
        limits: Limits::default(),
        shutdown: CancellationToken::new(),
    });
    Harness { rt, state }
});

/// Sends `request` on a fresh connection and reads until the server closes it.
async fn round_trip(state: Arc<ServerState>, request: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut rx, mut tx) = tokio::io::split(client);
    let serve = async {
        // Errors (malformed requests, timeouts) are answers too; what matters is the bytes.
        let _ = serve_connection(server, state, PEER).await;
    };
    let send = async {
        // The server may close before reading everything (e.g. after a 400).
        let _ = tx.write_all(request).await;
        // Keep the write side open: a half-close would end the exchange early.
        tx
    };
    let receive = async {
        let mut out = Vec::new();
        let _ = rx.read_to_end(&mut out).await;
        out
    };
    let ((), _tx, out) = tokio::join!(serve, send, receive);
    out
}

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    let reply = h
        .rt
        .block_on(async { tokio::time::timeout(HANG, round_trip(h.state.clone(), data)).await })
        .expect("the connection is still open after a week of virtual time");
    if !reply.is_empty() {
        // hyper answers an HTTP/1.0 request in kind, as RFC 9112 allows.
        assert!(
            reply.starts_with(b"HTTP/1.1 ") || reply.starts_with(b"HTTP/1.0 "),
            "reply does not start with HTTP/1.1 or HTTP/1.0: {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(64)])
        );
    }
    // A secret the request itself spells out may come back in an error message quoting the
    // path ("no instance named …"); only a secret the client did not send is a leak.
    for (value, what) in [
        (
            FORBIDDEN_KEY,
            "the key of an instance this peer may not read",
        ),
        (TOKEN_FORBIDDEN_VALUE, "a token this peer may not read"),
        (TOKEN_EXPIRED_VALUE, "an expired token"),
    ] {
        let contains = |bytes: &[u8]| bytes.windows(value.len()).any(|w| w == value.as_bytes());
        assert!(contains(data) || !contains(&reply), "{what} was served");
    }
});

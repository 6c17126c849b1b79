//! Prometheus/OpenMetrics text for `GET /metrics` (product §7).
//!
//! Counters and the exchange-latency histogram are recorded here as events happen. Everything
//! that describes the current state of an instance (key age, consecutive failures, next refresh,
//! fallback active) is derived from the key store at scrape time, so there is one source of truth
//! and nothing to keep in sync.
//!
//! Why not the `prometheus-client` crate: our label sets are a handful of fixed, low-cardinality
//! tuples and the state gauges are computed from the store on each scrape; a registry plus a
//! custom collector would be more code than these few maps, and one more dependency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::keystore::{KeySource, KeyState, KeyStore, token_name};

/// Upper bounds (seconds) of the exchange latency histogram buckets: loopback exchanges take
/// milliseconds, real ones tens to hundreds of ms, and the client timeout is 30 s.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's routes, as the request counter names them (never the raw path, so hostile
/// clients cannot grow the label set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// `GET /v1/keys`.
    Keys,
    /// `GET /v1/keys/{instance}`.
    Key,
    /// `POST /v1/keys/{instance}/rejected`.
    Rejected,
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/health/live`.
    Live,
    /// `GET /v1/health/ready`.
    Ready,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/tokens`.
    Tokens,
    /// `GET /v1/tokens/{name}`.
    Token,
    /// `POST /v1/tokens/{name}/rejected`.
    TokenRejected,
    /// Anything else.
    Other,
}

impl Route {
    /// Every route, in the order of the counter table.
    const ALL: [Route; 11] = [
        Route::Keys,
        Route::Key,
        Route::Rejected,
        Route::Status,
        Route::Live,
        Route::Ready,
        Route::Metrics,
        Route::Tokens,
        Route::Token,
        Route::TokenRejected,
        Route::Other,
    ];

    /// The `route` label.
    pub fn name(self) -> &'static str {
        match self {
            Route::Keys => "keys",
            Route::Key => "key",
            Route::Rejected => "rejected",
            Route::Status => "status",
            Route::Live => "live",
            Route::Ready => "ready",
            Route::Metrics => "metrics",
            Route::Tokens => "tokens",
            Route::Token => "token",
            Route::TokenRejected => "token_rejected",
            Route::Other => "other",
        }
    }
}
/// Statuses the server answers with; anything else is counted in the (locked) overflow map.
const STATUSES: [u16; 11] = [200, 202, 304, 400, 403, 404, 405, 408, 413, 431, 503];

/// Event counters shared by the server, the refresh manager and the reload loop.
#[derive(Default)]
pub struct Metrics {
    /// Requests by (route, status): plain atomics, because every key read bumps one and a
    /// shared lock there cost measurable throughput (docs/performance.md).
    requests: [[AtomicU64; STATUSES.len()]; Route::ALL.len()],
    requests_other: Mutex<BTreeMap<(Route, u16), u64>>,
    exchanges: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    rejections: Mutex<BTreeMap<(String, &'static str), u64>>,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    *map.entry(key).or_insert(0) += 1;
}

impl Metrics {
    /// A fresh set of counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// One request answered on the socket.
    pub fn request(&self, route: Route, status: u16) {
        match STATUSES.iter().position(|c| *c == status) {
            Some(s) => {
                self.requests[route as usize][s].fetch_add(1, Ordering::Relaxed);
            }
            None => bump(&self.requests_other, (route, status)),
        }
    }

    /// One exchange finished with `outcome` (`success` or an error kind) after `elapsed`.
    pub fn exchange(&self, instance: &str, outcome: &'static str, elapsed: Duration) {
        bump(&self.exchanges, (instance.to_owned(), outcome));
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = latency.entry(instance.to_owned()).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// A consumer's rejection report and what was done about it.
    pub fn rejection(&self, instance: &str, outcome: &'static str) {
        bump(&self.rejections, (instance.to_owned(), outcome));
    }

    /// A configuration reload attempt (`success` or `failure`).
    pub fn reload(&self, result: &'static str) {
        bump(&self.reloads, result);
    }

    /// A connection closed before any request, for `reason` (a fixed name).
    pub fn connection_refused(&self, reason: &'static str) {
        bump(&self.refused, reason);
    }

    /// Renders everything in OpenMetrics text format.
    pub fn render(&self, store: &KeyStore) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# TYPE delegated_auth_requests counter\n");
        out.push_str("# HELP delegated_auth_requests Requests answered on the socket, by route and status.\n");
        let mut requests: BTreeMap<(&str, u16), u64> = self
            .requests_other
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((route, status), n)| ((route.name(), *status), *n))
            .collect();
        for (route, row) in Route::ALL.iter().zip(&self.requests) {
            for (status, n) in STATUSES.iter().zip(row) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    requests.insert((route.name(), *status), n);
                }
            }
        }
        for ((route, status), n) in &requests {
            let _ = writeln!(
                out,
                "delegated_auth_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }

        // Keys under `instance`, tokens in families of their own under `token`: the two are
        // different credentials with different consumers and alerts.
        for family in [Family::Keys, Family::Tokens] {
            self.render_exchanges(&mut out, family);
        }

        counter(
            &mut out,
            "delegated_auth_config_reloads",
            "Configuration reloads, by result.",
            &self.reloads,
            |result| Some(format!("result=\"{result}\"")),
        );
        counter(
            &mut out,
            "delegated_auth_connections_refused",
            "Connections closed before any request, by reason (uid_share: the peer's uid held its whole share).",
            &self.refused,
            |reason| Some(format!("reason=\"{reason}\"")),
        );

        render_state(&mut out, store);
        render_tokens(&mut out, store);
        out.push_str("# EOF\n");
        out
    }

    /// Exchange counters, latency and rejection reports of one family.
    fn render_exchanges(&self, out: &mut String, family: Family) {
        let (prefix, label, what) = match family {
            Family::Keys => ("delegated_auth", "instance", "Key"),
            Family::Tokens => ("delegated_auth_token", "token", "Token"),
        };
        let by_outcome = |(name, outcome): &(String, &str)| {
            family
                .label(name)
                .map(|name| format!("{label}=\"{name}\",outcome=\"{outcome}\""))
        };
        counter(
            out,
            &format!("{prefix}_exchanges"),
            &format!("{what} exchanges with Datadog, by {label} and outcome."),
            &self.exchanges,
            by_outcome,
        );

        let _ = writeln!(out, "# TYPE {prefix}_exchange_duration_seconds histogram");
        let _ = writeln!(
            out,
            "# HELP {prefix}_exchange_duration_seconds Time from credential resolution to the exchange's answer."
        );
        for (name, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let Some(name) = family.label(name) else {
                continue;
            };
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "{prefix}_exchange_duration_seconds_bucket{{{label}=\"{name}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{prefix}_exchange_duration_seconds_bucket{{{label}=\"{name}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "{prefix}_exchange_duration_seconds_count{{{label}=\"{name}\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "{prefix}_exchange_duration_seconds_sum{{{label}=\"{name}\"}} {}",
                h.sum
            );
        }

        counter(
            out,
            &format!("{prefix}_rejection_reports"),
            &format!(
                "Consumer reports of a rejected {}, by outcome.",
                what.to_ascii_lowercase()
            ),
            &self.rejections,
            by_outcome,
        );
    }
}

/// One counter family: its `TYPE` and `HELP` lines, then a `_total` sample per entry of `map`
/// whose key `labels` renders (`None` leaves the entry to another family).
fn counter<K: Ord>(
    out: &mut String,
    name: &str,
    help: &str,
    map: &Mutex<BTreeMap<K, u64>>,
    labels: impl Fn(&K) -> Option<String>,
) {
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "# HELP {name} {help}");
    for (key, n) in map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if let Some(labels) = labels(key) {
            let _ = writeln!(out, "{name}_total{{{labels}}} {n}");
        }
    }
}

/// Which credentials a family of series is about.
#[derive(Clone, Copy)]
enum Family {
    Keys,
    Tokens,
}

impl Family {
    /// The label value for a slot name of this family (escaped), or `None`.
    fn label(self, slot: &str) -> Option<String> {
        match (self, token_name(slot)) {
            (Family::Keys, None) => Some(escape(slot)),
            (Family::Tokens, Some(token)) => Some(escape(token)),
            _ => None,
        }
    }
}

/// The tokens' state: which state each is in, and the seconds left before the served token
/// expires (what an alert on "automation is about to lose its credential" needs).
fn render_tokens(out: &mut String, store: &KeyStore) {
    let now = SystemTime::now();
    let snaps: Vec<_> = store.token_slots().iter().map(|s| s.current()).collect();
    out.push_str("# TYPE delegated_auth_token_state gauge\n");
    out.push_str("# HELP delegated_auth_token_state 1 for the state each token is in.\n");
    for s in &snaps {
        let name = escape(token_name(&s.name).unwrap_or_default());
        for state in [KeyState::Pending, KeyState::Active, KeyState::Unavailable] {
            let v = u8::from(s.state == state);
            let _ = writeln!(
                out,
                "delegated_auth_token_state{{token=\"{name}\",state=\"{}\"}} {v}",
                state.as_str()
            );
        }
    }
    out.push_str("# TYPE delegated_auth_token_expiry_seconds gauge\n");
    out.push_str(
        "# HELP delegated_auth_token_expiry_seconds Seconds until the served token expires (absent while none is served).\n",
    );
    for s in &snaps {
        let Some(at) = s.served.as_ref().and_then(|k| k.expires_at) else {
            continue;
        };
        let left = at.duration_since(now).unwrap_or_default().as_secs_f64();
        let _ = writeln!(
            out,
            "delegated_auth_token_expiry_seconds{{token=\"{}\"}} {left:.3}",
            escape(token_name(&s.name).unwrap_or_default())
        );
    }
}

fn render_state(out: &mut String, store: &KeyStore) {
    let now = SystemTime::now();
    let slots = store.slots();
    let snaps: Vec<_> = slots.iter().map(|s| s.current()).collect();

    out.push_str("# TYPE delegated_auth_instance_state gauge\n");
    out.push_str("# HELP delegated_auth_instance_state 1 for the state each instance is in.\n");
    for s in &snaps {
        for state in [
            KeyState::Pending,
            KeyState::Active,
            KeyState::Fallback,
            KeyState::Unavailable,
            KeyState::Invalid,
        ] {
            let v = u8::from(s.state == state);
            let _ = writeln!(
                out,
                "delegated_auth_instance_state{{instance=\"{}\",state=\"{}\"}} {v}",
                escape(&s.name),
                state.as_str()
            );
        }
    }

    out.push_str("# TYPE delegated_auth_invalid_entries gauge\n");
    out.push_str(
        "# HELP delegated_auth_invalid_entries Configuration entries that are inert because \
         they are invalid (bad directive, no domain or host, TCP logs transport).\n",
    );
    let invalid = snaps
        .iter()
        .filter(|s| s.state == KeyState::Invalid)
        .count();
    let _ = writeln!(out, "delegated_auth_invalid_entries {invalid}");

    out.push_str("# TYPE delegated_auth_fallback_active gauge\n");
    out.push_str(
        "# HELP delegated_auth_fallback_active 1 while the static fallback key is served.\n",
    );
    for s in &snaps {
        let v = u8::from(
            s.served
                .as_ref()
                .is_some_and(|k| k.source == KeySource::Fallback),
        );
        let _ = writeln!(
            out,
            "delegated_auth_fallback_active{{instance=\"{}\"}} {v}",
            escape(&s.name)
        );
    }

    out.push_str("# TYPE delegated_auth_key_age_seconds gauge\n");
    out.push_str(
        "# HELP delegated_auth_key_age_seconds Seconds since the served key was obtained.\n",
    );
    for s in &snaps {
        if let Some(k) = &s.served {
            let age = now
                .duration_since(k.obtained_at)
                .unwrap_or_default()
                .as_secs_f64();
            let _ = writeln!(
                out,
                "delegated_auth_key_age_seconds{{instance=\"{}\"}} {age:.3}",
                escape(&s.name)
            );
        }
    }

    out.push_str("# TYPE delegated_auth_consecutive_failures gauge\n");
    out.push_str(
        "# HELP delegated_auth_consecutive_failures Failed exchanges since the last success.\n",
    );
    for s in &snaps {
        let _ = writeln!(
            out,
            "delegated_auth_consecutive_failures{{instance=\"{}\"}} {}",
            escape(&s.name),
            s.status.consecutive_failures
        );
    }

    out.push_str("# TYPE delegated_auth_next_refresh_timestamp_seconds gauge\n");
    out.push_str("# HELP delegated_auth_next_refresh_timestamp_seconds Unix time of the next scheduled exchange.\n");
    for s in &snaps {
        if let Some(next) = s.status.next_refresh {
            let t = next
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let _ = writeln!(
                out,
                "delegated_auth_next_refresh_timestamp_seconds{{instance=\"{}\"}} {t}",
                escape(&s.name)
            );
        }
    }
}

/// Escapes a label value (instance names come from config and may hold quotes or brackets).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_state() {
        let store = KeyStore::new();
        store.set_instances(&["additional_endpoints[\"x\"][0]".to_string()]);
        let m = Metrics::new();
        m.request(Route::Key, 200);
        m.request(Route::Key, 200);
        m.exchange("api_key", "success", Duration::from_millis(20));
        m.reload("failure");
        let text = m.render(&store);
        assert!(text.contains("delegated_auth_requests_total{route=\"key\",status=\"200\"} 2"));
        assert!(text.contains(
            "delegated_auth_exchanges_total{instance=\"api_key\",outcome=\"success\"} 1"
        ));
        assert!(text.contains("le=\"0.01\"} 0"));
        assert!(text.contains("le=\"0.025\"} 1"));
        assert!(text.contains("delegated_auth_config_reloads_total{result=\"failure\"} 1"));
        assert!(
            text.contains("instance=\"additional_endpoints[\\\"x\\\"][0]\",state=\"pending\"} 1")
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn tokens_have_families_of_their_own() {
        let store = KeyStore::new();
        let slots = store.set_instances(&["api_key".to_string(), "token:automation".to_string()]);
        slots[1].update(|s| {
            s.state = KeyState::Active;
            s.served = Some(crate::keystore::ServedKey {
                value: crate::secret::Secret::from("eyJ.token.sig"),
                source: KeySource::Delegated,
                obtained_at: SystemTime::now(),
                expires_at: Some(SystemTime::now() + Duration::from_secs(600)),
            });
        });
        let m = Metrics::new();
        m.exchange("api_key", "success", Duration::from_millis(20));
        m.exchange(
            "token:automation",
            "unauthorized",
            Duration::from_millis(30),
        );
        m.rejection("token:automation", "scheduled");
        let text = m.render(&store);
        assert!(text.contains(
            "delegated_auth_token_exchanges_total{token=\"automation\",outcome=\"unauthorized\"} 1"
        ));
        assert!(text.contains(
            "delegated_auth_token_exchange_duration_seconds_count{token=\"automation\"} 1"
        ));
        assert!(text.contains(
            "delegated_auth_token_rejection_reports_total{token=\"automation\",outcome=\"scheduled\"} 1"
        ));
        assert!(
            text.contains("delegated_auth_token_state{token=\"automation\",state=\"active\"} 1")
        );
        let left: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("delegated_auth_token_expiry_seconds{token=\"automation\"} ")
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!(left > 590.0 && left <= 600.0, "{left}");
        // Keys' series never name a token, and the other way round.
        assert!(!text.contains("instance=\"token:"), "{text}");
        assert!(!text.contains("token=\"api_key\""));
        assert!(!text.contains("eyJ.token.sig"));
    }
}

//! A bounded soak (issue 7, docs/reliability.md): keys rotating every two seconds, random
//! faults injected at the Datadog API, rejection reports and reloads, and 200 concurrent clients
//! reading keys and long-polling, for `SOAK_SECS` seconds (default 75; `scripts/soak` runs it
//! longer). It checks that
//!
//! - every client answer is a `200` with a usable key or a `304` (a fallback key is allowed: it
//!   is what the daemon serves while an injected fault keeps it from a managed key);
//! - every failed exchange was an injected fault (the emulator's log says which);
//! - the daemon's RSS grows by less than 2 MiB between the end of the warm-up and the end, and
//!   its open descriptors return to their idle count once the clients leave.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::world::{PATTERN, World, eventually, uuid};
use common::{Daemon, write_by_rename};
use datadog_delegated_auth::client;
use http::Method;
use sandbox::datadog::{Fault, Outcome};

/// Concurrent clients.
const CLIENTS: usize = 200;
/// Allowed RSS growth from the end of the warm-up to the end.
const RSS_BUDGET_KIB: i64 = 2 * 1024;

fn soak_duration() -> Duration {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(75)
        .max(40);
    Duration::from_secs(secs)
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn median(mut v: Vec<i64>) -> i64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// What the clients saw.
#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    long_polls: AtomicU64,
    not_modified: AtomicU64,
    rotations_seen: AtomicU64,
    fallback: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Counts {
    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(e);
        }
    }
}

/// One client: reads (70%) and long polls (30%) of a random instance, forever until `stop`.
async fn client_loop(
    socket: PathBuf,
    instances: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut known: HashMap<String, u64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let instance = &instances[fastrand::usize(..instances.len())];
        let path = format!("/v1/keys/{}", client::encode_instance(instance));
        let long_poll = fastrand::u8(..10) < 3 && known.contains_key(instance);
        let etag = known.get(instance).map(|g| format!("\"{g}\""));
        let (path, headers) = if long_poll {
            (
                format!("{path}?wait=5s"),
                vec![("if-none-match", etag.clone().unwrap())],
            )
        } else {
            (path, Vec::new())
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let result = client::request(
            &socket,
            Method::GET,
            &path,
            &headers,
            None,
            Duration::from_secs(30),
        )
        .await;
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                if !stop.load(Ordering::Relaxed) {
                    counts.error(format!("{path}: {e}"));
                }
                break;
            }
        };
        if long_poll {
            counts.long_polls.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.reads.fetch_add(1, Ordering::Relaxed);
        }
        match reply.status.as_u16() {
            200 => {
                let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                let key = v["api_key"].as_str().unwrap_or_default();
                let generation = v["generation"].as_u64().unwrap_or(0);
                let source = v["source"].as_str().unwrap_or_default();
                if key.is_empty() || !(source == "delegated" || source == "fallback") {
                    counts.error(format!("{path}: unusable answer {v}"));
                }
                if source == "fallback" {
                    counts.fallback.fetch_add(1, Ordering::Relaxed);
                }
                if long_poll {
                    if Some(generation) == known.get(instance).copied() {
                        counts.error(format!("{path}: a long poll returned the known generation"));
                    }
                    counts.rotations_seen.fetch_add(1, Ordering::Relaxed);
                }
                known.insert(instance.clone(), generation);
            }
            304 if long_poll => {
                counts.not_modified.fetch_add(1, Ordering::Relaxed);
            }
            other => counts.error(format!(
                "{path}: HTTP {other}: {}",
                String::from_utf8_lossy(&reply.body)
            )),
        }
        if !long_poll {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(100..500))).await;
        }
    }
}

/// A random fault of the kinds Datadog's API can produce.
fn random_fault() -> (&'static str, Fault) {
    let times = fastrand::usize(1..=3);
    let (name, fault) = match fastrand::u8(..9) {
        0 => ("500", Fault::status(500)),
        1 => ("503", Fault::status(503)),
        2 => ("429", Fault::status(429).retry_after("1")),
        3 => ("truncated", Fault::malformed_body()),
        4 => ("empty key", Fault::empty_key()),
        5 => ("disconnect", Fault::disconnect()),
        6 => ("oversized", Fault::oversized_body()),
        7 => ("slow", Fault::latency(Duration::from_millis(1500))),
        _ => ("401", Fault::status(401)),
    };
    (name, fault.times(times))
}

#[test]
fn soak() {
    let duration = soak_duration();
    // The daemon's RSS climbs for about 30 s under this load (connection buffers and the
    // allocator's arenas reach their working size), then stays flat: measured over 150 s and
    // 600 s runs (docs/reliability.md). Growth is judged after that.
    let warm_up = (duration / 3).max(Duration::from_secs(25));
    let w = World::start();
    let logs_org = w.dd.add_org(&uuid());
    w.dd.add_intake_mapping(&logs_org.uuid, PATTERN);
    let yaml = w.datadog_yaml(&format!(
        "logs_config:\n  api_key: {}\n  delegated_auth:\n    org_uuid: {}\n",
        logs_org.api_key, logs_org.uuid
    ));
    let settings = "log: { level: info }\nrefresh: { interval: 2s, startup_grace: 5s, retry_min: 200ms, retry_max: 1s }\n";
    let mut d = Daemon::start(&yaml, settings, w.static_env());
    let pid = d.child.as_ref().unwrap().id();
    d.wait_key("api_key", "a managed key", |v| v["source"] == "delegated");
    d.wait_key("logs_config.api_key", "a managed key", |v| {
        v["source"] == "delegated"
    });
    let fds_idle_before = open_fds(pid);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let instances = Arc::new(vec!["api_key".to_owned(), "logs_config.api_key".to_owned()]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            rt.spawn(client_loop(
                d.socket.clone(),
                instances.clone(),
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    let mut injected: HashMap<&'static str, u64> = HashMap::new();
    let mut samples: Vec<(Duration, i64, usize)> = Vec::new();
    let mut next_fault = started;
    let mut next_report = started + Duration::from_secs(7);
    let mut next_reload = started + Duration::from_secs(11);
    let mut reports = 0;
    let mut reloads = 0;
    while started.elapsed() < duration {
        let now = Instant::now();
        if now >= next_fault {
            let (name, fault) = random_fault();
            w.dd.inject(fault);
            *injected.entry(name).or_default() += 1;
            next_fault = now + Duration::from_millis(fastrand::u64(1000..2500));
        }
        if now >= next_report {
            // A consumer reports the key it holds rejected (a forced refresh, throttled to one
            // per 30 s by the daemon).
            let v = d.json("/v1/keys/api_key");
            if let Some(key) = v["api_key"].as_str() {
                let body = format!("{{\"api_key_suffix\":\"{}\"}}", &key[key.len() - 5..]);
                let r = d
                    .request(
                        Method::POST,
                        "/v1/keys/api_key/rejected",
                        &[],
                        Some(body.into_bytes()),
                    )
                    .unwrap();
                assert_eq!(r.status, 202);
                reports += 1;
            }
            next_report = now + Duration::from_secs(13);
        }
        if now >= next_reload {
            // A reload that changes nothing (keys and schedules must be kept).
            write_by_rename(&d.config, &yaml);
            reloads += 1;
            next_reload = now + Duration::from_secs(17);
        }
        samples.push((started.elapsed(), rss_kib(pid), open_fds(pid)));
        std::thread::sleep(Duration::from_millis(500));
    }
    // RSS at the end, still under load.
    let rss_at = |from: Duration, to: Duration| {
        median(
            samples
                .iter()
                .filter(|(t, _, _)| *t >= from && *t <= to)
                .map(|(_, r, _)| *r)
                .collect(),
        )
    };
    let rss_warm = rss_at(warm_up.saturating_sub(Duration::from_secs(3)), warm_up);
    let rss_end = rss_at(duration.saturating_sub(Duration::from_secs(3)), duration);
    let rss_peak = samples.iter().map(|(_, r, _)| *r).max().unwrap_or(0);
    let fds_max = samples.iter().map(|(_, _, f)| *f).max().unwrap_or(0);

    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(30), c).await;
        }
    });
    drop(rt);
    let fds_idle_after = eventually("descriptors back to idle", Duration::from_secs(30), || {
        let n = open_fds(pid);
        (n <= fds_idle_before + 2).then_some(n)
    });

    let exchanges = w.dd.exchanges();
    let by_outcome = |o: Outcome| exchanges.iter().filter(|r| r.outcome == o).count();
    let issued = by_outcome(Outcome::Issued);
    let faulted = by_outcome(Outcome::Fault) + by_outcome(Outcome::Disconnected);
    let unexplained: Vec<_> = exchanges
        .iter()
        .filter(|r| {
            !matches!(
                r.outcome,
                Outcome::Issued | Outcome::Fault | Outcome::Disconnected
            )
        })
        .map(|r| format!("{:?} {:?}", r.outcome, r.detail))
        .collect();
    let mut faults: Vec<_> = injected.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    faults.sort();
    let report = format!(
        "soak: {:?} ({:?} warm-up), {CLIENTS} clients\n\
         answers: {} reads, {} long polls ({} saw a rotation, {} timed out with 304), {} fallback answers\n\
         exchanges: {issued} keys issued, {faulted} answered by injected faults ({}), {reports} rejection reports, {reloads} reloads\n\
         daemon RSS: {rss_warm} KiB after warm-up, {rss_end} KiB at the end ({:+} KiB), peak {rss_peak} KiB\n\
         daemon fds: {fds_idle_before} idle before, {fds_max} max under load, {fds_idle_after} idle after",
        duration,
        warm_up,
        counts.reads.load(Ordering::Relaxed),
        counts.long_polls.load(Ordering::Relaxed),
        counts.rotations_seen.load(Ordering::Relaxed),
        counts.not_modified.load(Ordering::Relaxed),
        counts.fallback.load(Ordering::Relaxed),
        faults.join(", "),
        rss_end - rss_warm,
    );
    eprintln!("{report}");
    let series: Vec<String> = samples
        .iter()
        .step_by(10)
        .map(|(t, r, f)| format!("{}s:{r}KiB/{f}fd", t.as_secs()))
        .collect();
    eprintln!("RSS/fd series: {}", series.join(" "));

    let errors = counts.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "client errors: {errors:#?}\n{report}");
    assert!(
        unexplained.is_empty(),
        "exchange failures not injected: {unexplained:#?}\n{report}"
    );
    // A key per 2 s interval if nothing failed. With a healthy key, an error answered by the
    // API waits for the next beat (schedule.rs, rule 3), and faults arrive about as often as
    // beats here, each taking 1-3 exchanges: about half the beats fail on average, more when
    // the random faults cluster. Measured at 75 s: 16-28 keys (duration / 4.7 to / 2.7), so the
    // floor is one key per three intervals: it still fails at once if rotation stops.
    assert!(
        issued as u64 >= duration.as_secs() / 6,
        "keys kept rotating\n{report}"
    );
    assert!(
        counts.rotations_seen.load(Ordering::Relaxed) > 0,
        "{report}"
    );
    assert!(
        rss_end - rss_warm < RSS_BUDGET_KIB,
        "RSS grew by {} KiB\n{report}",
        rss_end - rss_warm
    );
    assert!(fds_idle_after <= fds_idle_before + 2, "{report}");
    assert!(d.child.as_mut().unwrap().try_wait().unwrap().is_none());
    let mut extra: Vec<String> =
        w.dd.issued_keys(&logs_org.uuid)
            .into_iter()
            .map(|k| k.key)
            .collect();
    extra.push(logs_org.api_key.clone());
    w.assert_no_secrets_in_log(&d, &extra);
    assert!(!d.logs().contains("panicked"));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
}

//! The fault matrix (issue 7, docs/reliability.md): the real binary against real local peers
//! (moto's STS, the Datadog, IMDS, ECS and Pod Identity emulators, a stoppable proxy, a TLS
//! front), each scenario breaking one thing and checking the same invariant:
//!
//! - every consumer read is a usable key (managed, or the fallback per product §6) or a clear
//!   `503` (`code: unavailable`, a reason, `Retry-After`);
//! - the last good managed key is kept through refresh failures;
//! - a key reported rejected is not served again once a fresh one exists;
//! - the daemon stays alive, stops with exit code 0, and no secret (keys, AWS secrets, session
//!   tokens, proofs and their signatures) reaches its log.
//!
//! Scenarios that share a peer setup run as tables on one world to keep the matrix within about
//! two minutes on two cores.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::world::{PATTERN, World, eventually, uuid};
use common::{Daemon, base_env, container_env, irsa_env, write_by_rename};
use datadog_delegated_auth::client;
use http::Method;
use sandbox::datadog::{DatadogEmulator, DatadogOptions, Fault, Outcome};
use sandbox::imds::{ImdsEmulator, ImdsOptions, TokenMode};
use sandbox::net::{Relay, RelayKind, TlsFront};
use serde_json::Value;

/// Debug logs (scanned for secrets), a refresh every second and quick retries, so a fault and
/// the recovery after it take a second or two of real time.
const FAST: &str = "log: { level: debug }\nrefresh: { interval: 1s, startup_grace: 3s, retry_min: 100ms, retry_max: 500ms }\n";

/// Like [`FAST`] with the hourly refresh of production: only faults at startup matter.
const HOURLY: &str = "log: { level: debug }\nrefresh: { interval: 60m, startup_grace: 3s, retry_min: 100ms, retry_max: 500ms }\n";

/// How long a scenario may wait for the daemon to react. Generous: the machine is small and
/// shared, and moto answers slowly under load.
const PATIENCE: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------------------------
// The invariant, as a consumer sees it.

/// One consumer read of an instance.
#[derive(Clone, Debug, PartialEq)]
enum Read {
    /// `200`: a key.
    Key {
        key: String,
        source: String,
        generation: u64,
    },
    /// `503`: nothing to serve, with the reason given.
    Unavailable { reason: String },
}

impl Read {
    fn key(&self) -> Option<&str> {
        match self {
            Read::Key { key, .. } => Some(key),
            Read::Unavailable { .. } => None,
        }
    }

    fn is_delegated(&self) -> bool {
        matches!(self, Read::Key { source, .. } if source == "delegated")
    }

    fn is_fallback(&self) -> bool {
        matches!(self, Read::Key { source, .. } if source == "fallback")
    }
}

/// Reads `instance` like a consumer and checks the invariant's shape: a non-empty key with its
/// ETag, or a 503 that says why and when to come back. Anything else fails the test.
fn read(d: &Daemon, instance: &str) -> Read {
    let path = format!("/v1/keys/{}", client::encode_instance(instance));
    let r = d.get(&path);
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "{path}: {} with a non-JSON body ({e}): {:?}",
            r.status, r.body
        )
    });
    match r.status.as_u16() {
        200 => {
            let key = v["api_key"].as_str().unwrap_or_default().to_owned();
            assert!(!key.is_empty(), "an empty key was served: {v}");
            let source = v["source"].as_str().unwrap_or_default().to_owned();
            assert!(
                source == "delegated" || source == "fallback",
                "unknown source: {v}"
            );
            let generation = v["generation"].as_u64().expect("generation");
            assert_eq!(
                r.headers.get("etag").and_then(|h| h.to_str().ok()),
                Some(format!("\"{generation}\"").as_str())
            );
            Read::Key {
                key,
                source,
                generation,
            }
        }
        503 => {
            assert_eq!(v["error"]["code"], "unavailable", "{v}");
            let reason = v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(!reason.is_empty(), "a 503 without a reason: {v}");
            assert!(
                r.headers.contains_key("retry-after"),
                "a 503 without Retry-After"
            );
            Read::Unavailable { reason }
        }
        s => panic!(
            "a consumer got HTTP {s} for {instance}: {v}\nlog:\n{}",
            d.logs()
        ),
    }
}

/// Reads `instance` every 25 ms, checking `each` on every answer, until `done` holds; panics
/// after [`PATIENCE`]. Returns the read that satisfied `done`.
fn observe(
    d: &Daemon,
    instance: &str,
    what: &str,
    mut each: impl FnMut(&Read),
    mut done: impl FnMut(&Read) -> bool,
) -> Read {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = read(d, instance);
        each(&r);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} on {instance}; last read {r:?}\nlog:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until `api_key` serves the fallback, no answer before it being a managed key.
fn until_fallback(d: &Daemon) -> Read {
    observe(
        d,
        "api_key",
        "the fallback",
        |r| assert!(!r.is_delegated()),
        Read::is_fallback,
    )
}

/// Waits for an exchange of `api_key` that failed on its AWS credentials.
fn wait_credentials_failure(d: &Daemon) {
    eventually("a credentials failure", PATIENCE, || {
        (exchanges_metric(d, "api_key", "credentials") >= 1).then_some(())
    });
}

/// Reads `instance` for `period`, checking `each` on every answer.
fn hold(d: &Daemon, instance: &str, period: Duration, mut each: impl FnMut(&Read)) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        each(&read(d, instance));
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits for a managed key on `instance` and checks it validates at `dd`.
fn managed(dd: &DatadogEmulator, d: &Daemon, instance: &str) -> String {
    let r = observe(d, instance, "a managed key", |_| {}, Read::is_delegated);
    let key = r.key().unwrap().to_owned();
    assert!(dd.is_valid(&key), "the served managed key validates");
    key
}

/// The status entry of `instance`.
fn status_of(d: &Daemon, instance: &str) -> Value {
    d.json("/v1/status")["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == instance)
        .cloned()
        .unwrap_or_default()
}

/// `delegated_auth_exchanges_total{instance, outcome}`.
fn exchanges_metric(d: &Daemon, instance: &str, outcome: &str) -> u64 {
    let text = String::from_utf8_lossy(&d.get("/metrics").body).into_owned();
    let prefix =
        format!("delegated_auth_exchanges_total{{instance=\"{instance}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until the failure counter of `kind` reached `at_least`.
fn wait_failures(d: &Daemon, instance: &str, kind: &str, at_least: u64) {
    eventually(&format!("{at_least} {kind} failures"), PATIENCE, || {
        (exchanges_metric(d, instance, kind) >= at_least).then_some(())
    });
}

/// Waits until the daemon's log contains `text`.
fn wait_log(d: &Daemon, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !d.logs().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the log never said {text:?}; log:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Exchanges answered by an injected fault (a status or body, or a dropped connection).
fn faulted(dd: &DatadogEmulator) -> usize {
    exchanges_with(dd, Outcome::Fault) + exchanges_with(dd, Outcome::Disconnected)
}

fn exchanges_with(dd: &DatadogEmulator, outcome: Outcome) -> usize {
    dd.exchanges()
        .iter()
        .filter(|r| r.outcome == outcome)
        .count()
}

/// Ends a scenario: the daemon is still running (no panic, no exit), its log holds no secret of
/// `w` (nor `extra`) and no panic message, and SIGTERM stops it with exit code 0.
fn finish(w: Option<&World>, mut d: Daemon, extra: &[String]) {
    let child = d.child.as_mut().expect("a running daemon");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon exited during the scenario; log:\n{}",
        d.logs()
    );
    let logs = d.logs();
    assert!(
        !logs.contains("panicked"),
        "the daemon panicked; log:\n{logs}"
    );
    match w {
        Some(w) => w.assert_no_secrets_in_log(&d, extra),
        None => {
            for s in extra.iter().filter(|s| s.len() >= 10) {
                assert!(!logs.contains(s.as_str()), "a secret leaked into the log");
            }
        }
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "exit code");
}

/// A rejection report for `key`, as a consumer that got 403 with it sends.
fn report_rejected(d: &Daemon, instance: &str, key: &str) -> String {
    let r = d
        .request(
            Method::POST,
            &format!("/v1/keys/{}/rejected", client::encode_instance(instance)),
            &[],
            Some(format!("{{\"api_key_suffix\":\"{}\"}}", &key[key.len() - 5..]).into_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 202);
    serde_json::from_slice::<Value>(&r.body).unwrap()["refresh"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A Datadog emulator (its own site) verifying proofs at `sts_url`, with the world's org UUID
/// and intake mapping registered (the fallback in `yaml_for` stays the world's static key).
fn emulator_for(w: &World, sts_url: String) -> DatadogEmulator {
    let dd =
        w.rt.block_on(DatadogEmulator::start(DatadogOptions {
            sts_url: Some(sts_url),
            ..DatadogOptions::default()
        }))
        .unwrap();
    let org = dd.add_org(&w.org.uuid);
    dd.add_intake_mapping(&org.uuid, PATTERN);
    dd
}

/// `datadog.yaml` for `org` at `dd_url` with `api_key` (None: no static key at all).
fn yaml_for(dd_url: &str, org: &str, api_key: Option<&str>, extra: &str) -> String {
    let key = api_key
        .map(|k| format!("api_key: {k}\n"))
        .unwrap_or_default();
    format!("{key}dd_url: {dd_url}\ndelegated_auth:\n  org_uuid: {org}\n{extra}")
}

/// Secrets of an extra emulator: its org's static keys and every key it issued, and proofs.
fn emulator_secrets(dd: &DatadogEmulator, org: &str) -> Vec<String> {
    let mut out: Vec<String> = dd.issued_keys(org).into_iter().map(|k| k.key).collect();
    out.extend(common::world::proof_secrets(dd));
    out
}

// ---------------------------------------------------------------------------------------------
// Datadog API faults.

/// A fault of the exchange endpoint and what the daemon must make of it.
struct DdFault {
    /// Scenario name (docs/reliability.md).
    name: &'static str,
    fault: Fault,
    /// How many exchanges in a row get the fault.
    times: usize,
    /// The failure class counted in metrics and shown in status.
    kind: &'static str,
    /// Text the daemon's log must show (the server's detail, or what was wrong).
    log_says: Option<&'static str>,
}

fn jsonapi_error(status: u16, detail: &str) -> String {
    serde_json::json!({"errors": [{"status": status.to_string(), "title": "Error", "detail": detail}]})
        .to_string()
}

fn dd_faults() -> Vec<DdFault> {
    let unmapped = "Authenticated as arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0123456789abcdef0 but no identity mapping was found.";
    vec![
        DdFault {
            name: "datadog-401-unmapped-with-detail",
            fault: Fault::status(401).body(jsonapi_error(401, unmapped)),
            times: 2,
            kind: "unauthorized",
            log_says: Some("no identity mapping was found"),
        },
        DdFault {
            name: "datadog-403-with-detail",
            fault: Fault::status(403).body(jsonapi_error(
                403,
                "Delegated authentication is disabled for this org.",
            )),
            times: 2,
            kind: "unauthorized",
            log_says: Some("Delegated authentication is disabled for this org"),
        },
        DdFault {
            name: "datadog-429-retry-after",
            fault: Fault::status(429).retry_after("1"),
            times: 1,
            kind: "throttled",
            log_says: Some("Retry-After"),
        },
        DdFault {
            name: "datadog-500-burst",
            fault: Fault::status(500),
            times: 3,
            kind: "unavailable",
            log_says: Some("500"),
        },
        DdFault {
            name: "datadog-503",
            fault: Fault::status(503),
            times: 2,
            kind: "unavailable",
            log_says: Some("503"),
        },
        DdFault {
            name: "datadog-truncated-json",
            fault: Fault::malformed_body(),
            times: 2,
            kind: "invalid_response",
            log_says: None,
        },
        DdFault {
            name: "datadog-200-not-json",
            fault: Fault::status(200).body("<html><body>Maintenance</body></html>"),
            times: 2,
            kind: "invalid_response",
            log_says: None,
        },
        DdFault {
            name: "datadog-200-empty-key",
            fault: Fault::empty_key(),
            times: 2,
            kind: "invalid_response",
            log_says: None,
        },
        DdFault {
            name: "datadog-oversized-body",
            fault: Fault::oversized_body(),
            times: 1,
            kind: "invalid_response",
            log_says: None,
        },
        DdFault {
            name: "datadog-oversized-chunked-body",
            fault: Fault::oversized_chunked_body(),
            times: 1,
            kind: "invalid_response",
            log_says: None,
        },
        DdFault {
            name: "datadog-connection-dropped",
            fault: Fault::disconnect(),
            times: 2,
            kind: "unavailable",
            log_says: None,
        },
    ]
}

/// Each Datadog fault hits a refresh while a managed key is served: the key stays, the failure
/// is counted and logged with the server's detail, and the next refresh replaces the key.
#[test]
fn datadog_faults_during_refresh_keep_the_last_key() {
    let w = World::start();
    let d = Daemon::start(&w.datadog_yaml(""), FAST, w.static_env());
    let mut current = managed(&w.dd, &d, "api_key");
    for row in dd_faults() {
        let faults_before = faulted(&w.dd);
        let failures_before = exchanges_metric(&d, "api_key", row.kind);
        w.dd.inject(row.fault.clone().times(row.times));
        // The faulty refreshes: every read still gets the last managed key.
        let kept = current.clone();
        observe(
            &d,
            "api_key",
            row.name,
            |r| {
                assert_eq!(r.key(), Some(kept.as_str()), "{}: {r:?}", row.name);
                assert!(r.is_delegated(), "{}: {r:?}", row.name);
            },
            |_| faulted(&w.dd) >= faults_before + row.times,
        );
        wait_failures(&d, "api_key", row.kind, failures_before + row.times as u64);
        if let Some(text) = row.log_says {
            wait_log(&d, text);
        }
        // Recovery: a fresh managed key, never an unusable one.
        let next = observe(
            &d,
            "api_key",
            &format!("{}: recovery", row.name),
            |r| assert!(r.is_delegated(), "{}: {r:?}", row.name),
            |r| r.key() != Some(kept.as_str()),
        );
        current = next.key().unwrap().to_owned();
        assert!(w.dd.is_valid(&current), "{}", row.name);
        if row.kind == "throttled" {
            let ex = w.dd.exchanges();
            let at = ex.iter().rposition(|r| r.status == 429).unwrap();
            let gap = ex[at + 1].instant.duration_since(ex[at].instant);
            assert!(
                gap >= Duration::from_secs(1),
                "Retry-After: 1 honoured, got {gap:?}"
            );
        }
        eprintln!("scenario {}: ok", row.name);
    }

    // datadog-slow-answer: an exchange that takes 2 s does not slow readers down.
    let kept = current.clone();
    let before = w.dd.exchanges().len();
    w.dd.inject(Fault::latency(Duration::from_secs(2)));
    eventually("the slow exchange", PATIENCE, || {
        (w.dd.exchanges().len() > before).then_some(())
    });
    let mut slowest = Duration::ZERO;
    hold(&d, "api_key", Duration::from_millis(1500), |r| {
        assert!(r.is_delegated(), "{r:?}");
        assert!(r.key() == Some(kept.as_str()) || w.dd.is_valid(r.key().unwrap()));
    });
    for _ in 0..20 {
        let t = Instant::now();
        read(&d, "api_key");
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a read took {slowest:?} while an exchange was slow"
    );
    eprintln!("scenario datadog-slow-answer: ok");
    finish(Some(&w), d, &[]);
}

/// The same faults on the very first exchange: the fallback is served (not a 503, not a wait
/// beyond the failure), then the managed key once Datadog answers. Without a fallback, a clear
/// 503 until then.
#[test]
fn datadog_faults_at_startup_serve_the_fallback_then_the_managed_key() {
    let w = World::start();
    let rows = [
        (
            "startup-datadog-401",
            Fault::status(401).body(jsonapi_error(401, "no identity mapping was found")),
            "unauthorized",
        ),
        (
            "startup-datadog-429",
            Fault::status(429).retry_after("1"),
            "throttled",
        ),
        ("startup-datadog-500", Fault::status(500), "unavailable"),
        (
            "startup-datadog-truncated-json",
            Fault::malformed_body(),
            "invalid_response",
        ),
        (
            "startup-datadog-connection-dropped",
            Fault::disconnect(),
            "unavailable",
        ),
    ];
    for (name, fault, kind) in rows {
        w.dd.inject(fault.times(2));
        let d = Daemon::start(&w.datadog_yaml(""), HOURLY, w.static_env());
        observe(
            &d,
            "api_key",
            name,
            |r| {
                if r.is_fallback() {
                    assert_eq!(r.key(), Some(w.org.api_key.as_str()), "{name}");
                } else {
                    assert!(r.is_delegated(), "{name}: {r:?}");
                }
            },
            Read::is_delegated,
        );
        assert!(exchanges_metric(&d, "api_key", kind) >= 1, "{name}");
        assert!(w.dd.is_valid(read(&d, "api_key").key().unwrap()));
        finish(Some(&w), d, &[]);
        eprintln!("scenario {name}: ok");
    }

    // startup-no-fallback: without any static key, a 503 with the reason, then the key.
    w.dd.inject(Fault::status(500).times(4));
    let yaml = yaml_for(&w.dd.url(), &w.org.uuid, None, "");
    let d = Daemon::start(&yaml, HOURLY, w.static_env());
    let mut unavailable = 0;
    observe(
        &d,
        "api_key",
        "startup-no-fallback",
        |r| match r {
            Read::Unavailable { reason } => {
                assert!(
                    reason.contains("no fallback") && reason.contains("unavailable"),
                    "{reason}"
                );
                unavailable += 1;
            }
            other => assert!(other.is_delegated(), "{other:?}"),
        },
        Read::is_delegated,
    );
    assert!(unavailable >= 1, "the failed start was visible as a 503");
    finish(Some(&w), d, &[]);
    eprintln!("scenario startup-no-fallback: ok");
}

/// datadog-500s-for-20-seconds: a long outage in real time (the paused-time unit test in
/// src/lifecycle.rs covers an hour). The key is kept while nobody complains; a consumer's
/// rejection during the outage switches to the fallback; the recovery brings a fresh managed
/// key and the rejected one is never served again.
#[test]
fn a_long_datadog_outage_is_ridden_out() {
    let w = World::start();
    let settings = "log: { level: debug }\nrefresh: { interval: 2s, startup_grace: 3s, retry_min: 200ms, retry_max: 1s }\n";
    let d = Daemon::start(&w.datadog_yaml(""), settings, w.static_env());
    let key1 = managed(&w.dd, &d, "api_key");
    let attempts_before = w.dd.exchanges().len();
    w.dd.inject(Fault::status(500).times(100_000));
    let outage = Instant::now();

    hold(&d, "api_key", Duration::from_secs(8), |r| {
        assert_eq!(r.key(), Some(key1.as_str()), "{r:?}");
        assert!(r.is_delegated());
    });
    let inst = status_of(&d, "api_key");
    assert_eq!(inst["state"], "active", "{inst}");
    assert_eq!(inst["last_error_kind"], "unavailable", "{inst}");
    assert!(
        inst["consecutive_failures"].as_u64().unwrap() >= 3,
        "{inst}"
    );

    // The key is revoked and a consumer says so: the forced refresh fails too, so the fallback.
    w.dd.revoke(&key1);
    assert_eq!(report_rejected(&d, "api_key", &key1), "scheduled");
    observe(
        &d,
        "api_key",
        "the fallback",
        |r| assert!(r.key() == Some(key1.as_str()) || r.is_fallback(), "{r:?}"),
        Read::is_fallback,
    );
    let rest = Duration::from_secs(20).saturating_sub(outage.elapsed());
    hold(&d, "api_key", rest, |r| {
        assert!(r.is_fallback(), "the rejected key came back: {r:?}");
        assert_eq!(r.key(), Some(w.org.api_key.as_str()));
    });
    let attempts = w.dd.exchanges().len() - attempts_before;
    assert!(
        (8..=120).contains(&attempts),
        "{attempts} attempts in 20 s: retries go on, with backoff"
    );
    assert!(!d.get("/v1/health/ready").status.is_server_error());

    w.dd.clear_faults();
    let fresh = observe(
        &d,
        "api_key",
        "recovery",
        |r| assert!(r.key() != Some(key1.as_str()), "{r:?}"),
        Read::is_delegated,
    );
    let fresh = fresh.key().unwrap().to_owned();
    assert!(w.dd.is_valid(&fresh));
    hold(&d, "api_key", Duration::from_millis(500), |r| {
        assert!(r.is_delegated() && r.key() != Some(key1.as_str()), "{r:?}");
    });
    eprintln!("scenario datadog-500s-for-20-seconds: ok ({attempts} attempts during the outage)");
    finish(Some(&w), d, &[]);
}

/// datadog-connection-refused: the Datadog endpoint goes away at the TCP level (nothing
/// listens), then comes back.
#[test]
fn datadog_unreachable_then_back() {
    let w = World::start();
    let relay =
        w.rt.block_on(Relay::start(RelayKind::Forward, w.dd.addr()))
            .unwrap();
    let yaml = yaml_for(&relay.url(), &w.org.uuid, Some(&w.org.api_key), "");
    let d = Daemon::start(&yaml, FAST, w.static_env());
    let key1 = managed(&w.dd, &d, "api_key");
    w.rt.block_on(relay.stop());
    let before = exchanges_metric(&d, "api_key", "unavailable");
    hold(&d, "api_key", Duration::from_secs(3), |r| {
        assert_eq!(r.key(), Some(key1.as_str()), "{r:?}");
    });
    wait_failures(&d, "api_key", "unavailable", before + 2);
    let err = status_of(&d, "api_key")["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(err.contains("unavailable"), "{err}");
    w.rt.block_on(relay.resume()).unwrap();
    observe(
        &d,
        "api_key",
        "recovery",
        |r| assert!(r.is_delegated(), "{r:?}"),
        |r| r.key() != Some(key1.as_str()),
    );
    finish(Some(&w), d, &[]);
}

// ---------------------------------------------------------------------------------------------
// STS.

/// sts-unreachable: Datadog cannot reach STS to verify proofs (it answers 502); then STS is
/// back. sts-rejects-stale-proof: the host clock is 10 minutes behind Datadog's (and then
/// ahead), so proofs are refused as stale; fixing the clock recovers.
#[test]
fn sts_unreachable_and_clock_skew() {
    let w = World::start();
    let moto_addr: std::net::SocketAddr =
        w.moto.url().trim_start_matches("http://").parse().unwrap();
    let sts =
        w.rt.block_on(Relay::start(RelayKind::Forward, moto_addr))
            .unwrap();
    let dd = emulator_for(&w, sts.url());
    let yaml = yaml_for(&dd.url(), &w.org.uuid, Some(&w.org.api_key), "");
    let d = Daemon::start(&yaml, FAST, w.static_env());
    let key1 = managed(&dd, &d, "api_key");

    w.rt.block_on(sts.stop());
    let before = exchanges_metric(&d, "api_key", "unavailable");
    wait_failures(&d, "api_key", "unavailable", before + 2);
    hold(&d, "api_key", Duration::from_millis(300), |r| {
        assert_eq!(r.key(), Some(key1.as_str()), "{r:?}");
    });
    assert!(exchanges_with(&dd, Outcome::StsUnavailable) >= 2);
    wait_log(&d, "502");
    w.rt.block_on(sts.resume()).unwrap();
    let key2 = observe(
        &d,
        "api_key",
        "sts-unreachable recovery",
        |r| assert!(r.is_delegated(), "{r:?}"),
        |r| r.key() != Some(key1.as_str()),
    );
    eprintln!("scenario sts-unreachable: ok");

    for (name, offset) in [("clock-behind-10m", 600), ("clock-ahead-10m", -600)] {
        let key = key2.key().unwrap().to_owned();
        let before = exchanges_metric(&d, "api_key", "unauthorized");
        dd.set_clock_offset(offset);
        wait_failures(&d, "api_key", "unauthorized", before + 2);
        hold(&d, "api_key", Duration::from_millis(300), |r| {
            assert!(r.is_delegated(), "{name}: {r:?}");
        });
        let err = status_of(&d, "api_key")["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            err.contains("X-Amz-Date"),
            "{name}: the detail names the date: {err}"
        );
        dd.set_clock_offset(0);
        observe(
            &d,
            "api_key",
            name,
            |r| assert!(r.is_delegated(), "{r:?}"),
            |r| r.key() != Some(key.as_str()),
        );
        eprintln!("scenario {name}: ok");
    }
    let extra = emulator_secrets(&dd, &w.org.uuid);
    finish(Some(&w), d, &extra);
}

/// sts-rejects-signature: the credentials are wrong (a bad secret key): STS refuses the
/// signature, Datadog answers 403 with that detail, the fallback is served.
#[test]
fn sts_rejects_a_bad_signature() {
    let w = World::start();
    let mut env = w.static_env();
    env.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        "bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0".into(),
    );
    let d = Daemon::start(&w.datadog_yaml(""), HOURLY, env);
    let r = observe(&d, "api_key", "the fallback", |_| {}, Read::is_fallback);
    assert_eq!(r.key(), Some(w.org.api_key.as_str()));
    let inst = eventually("the error in status", PATIENCE, || {
        let i = status_of(&d, "api_key");
        i["last_error"].is_string().then_some(i)
    });
    assert_eq!(inst["last_error_kind"], "unauthorized", "{inst}");
    assert!(
        inst["last_error"].as_str().unwrap().contains("403"),
        "{inst}"
    );
    assert!(exchanges_with(&w.dd, Outcome::StsRejected) >= 1);
    finish(
        Some(&w),
        d,
        &["bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0".to_owned()],
    );
}

// ---------------------------------------------------------------------------------------------
// EC2 IMDS.

/// imds-token-put-unanswered (the hop-limit symptom), imds-slower-than-timeout and
/// imds-slow-mid-life: what an EC2 daemon sees when its metadata service misbehaves.
#[test]
fn imds_unanswered_or_slow() {
    let w = World::start();
    let (imds, env) = w.imds(ImdsOptions {
        token_mode: TokenMode::NeverAnswer,
        // Inside the re-resolution buffer: every exchange asks IMDS again.
        credential_ttl: Duration::from_secs(240),
        ..ImdsOptions::default()
    });
    let d = Daemon::start(&w.datadog_yaml(""), FAST, env);
    until_fallback(&d);
    let err = eventually("the hop-limit message", PATIENCE, || {
        let e = status_of(&d, "api_key")["last_error"].as_str()?.to_owned();
        Some(e)
    });
    assert!(err.contains("hop limit"), "{err}");
    assert_eq!(status_of(&d, "api_key")["last_error_kind"], "credentials");
    eprintln!("scenario imds-token-put-unanswered: ok");

    // The token answers now, but everything takes longer than ec2_metadata_timeout (300 ms).
    imds.set_latency(Duration::from_millis(1200));
    imds.set_token_mode(TokenMode::Answer);
    let before = exchanges_metric(&d, "api_key", "credentials");
    wait_failures(&d, "api_key", "credentials", before + 2);
    hold(&d, "api_key", Duration::from_millis(300), |r| {
        assert!(r.is_fallback(), "{r:?}")
    });
    eprintln!("scenario imds-slower-than-timeout: ok");

    imds.set_latency(Duration::ZERO);
    let key1 = managed(&w.dd, &d, "api_key");

    // Slow again after a key was obtained: a managed key is served throughout. (aws-config's
    // IMDS provider reuses the last credentials it got when IMDS fails, so exchanges go on.)
    imds.set_latency(Duration::from_millis(1200));
    let asked = imds.requests().len();
    let issued = exchanges_with(&w.dd, Outcome::Issued);
    eventually("slow IMDS calls", PATIENCE, || {
        (imds.requests().len() >= asked + 2).then_some(())
    });
    hold(&d, "api_key", Duration::from_secs(2), |r| {
        assert!(r.is_delegated(), "{r:?}")
    });
    let during = exchanges_with(&w.dd, Outcome::Issued) - issued;
    imds.set_latency(Duration::ZERO);
    let last = read(&d, "api_key");
    observe(
        &d,
        "api_key",
        "a refresh after IMDS recovered",
        |r| assert!(r.is_delegated(), "{r:?}"),
        |r| r != &last,
    );
    assert_ne!(read(&d, "api_key").key(), Some(key1.as_str()));
    eprintln!("imds-slow-mid-life: {during} keys issued while IMDS was slow");
    eprintln!("scenario imds-slow-mid-life: ok");
    finish(Some(&w), d, &[]);
}

/// imds-credentials-expire-mid-refresh: IMDS serves credentials about to expire, then rotates
/// them; the next exchange is signed with the new ones. imds-credentials-revoked: IMDS serves
/// credentials STS refuses (long-lived, so a cache would keep them), then good ones; the daemon
/// asks IMDS again after the refusal and recovers.
#[test]
fn imds_credentials_rotate_and_are_replaced_after_a_refusal() {
    let w = World::start();
    let (imds, env) = w.imds(ImdsOptions {
        credential_ttl: Duration::from_secs(3600),
        ..ImdsOptions::default()
    });
    imds.set_credentials_expiring(
        w.creds.clone(),
        std::time::SystemTime::now() + Duration::from_secs(120),
    );
    let d = Daemon::start(&w.datadog_yaml(""), FAST, env);
    let key1 = managed(&w.dd, &d, "api_key");
    let rotated =
        w.rt.block_on(
            w.moto
                .assume_role(sandbox::moto::DEFAULT_ROLE, "i-0rotated00000000"),
        )
        .unwrap();
    imds.set_credentials_expiring(
        rotated.clone(),
        std::time::SystemTime::now() + Duration::from_secs(120),
    );
    let by_rotated = eventually(
        "an exchange signed by the rotated session",
        PATIENCE,
        || {
            w.dd.exchanges().into_iter().find(|r| {
                r.caller_arn
                    .as_deref()
                    .is_some_and(|a| a.ends_with("/i-0rotated00000000"))
            })
        },
    );
    assert_eq!(by_rotated.outcome, Outcome::Issued);
    observe(
        &d,
        "api_key",
        "a key from the rotated session",
        |r| assert!(r.is_delegated(), "{r:?}"),
        |r| {
            r.key() == by_rotated.issued_key.as_deref() || {
                // A later refresh may already have replaced it.
                r.key() != Some(key1.as_str())
            }
        },
    );
    eprintln!("scenario imds-credentials-expire-mid-refresh: ok");

    // Credentials STS refuses (as after IAM's "revoke active sessions"), valid for an hour by
    // their own account, so the daemon caches them; then IMDS rotates to good ones.
    let mut revoked = rotated.clone();
    revoked.secret_access_key = "revokedrevokedrevokedrevokedrevoked00000".into();
    imds.set_credentials_expiring(
        revoked,
        std::time::SystemTime::now() + Duration::from_secs(3600),
    );
    let before = exchanges_with(&w.dd, Outcome::StsRejected);
    eventually("a refused proof", PATIENCE, || {
        (exchanges_with(&w.dd, Outcome::StsRejected) > before).then_some(())
    });
    let key_before = read(&d, "api_key");
    assert!(
        key_before.is_delegated(),
        "the last key is kept: {key_before:?}"
    );
    imds.set_credentials(rotated.clone());
    let refused_at = w.dd.exchanges().len();
    observe(
        &d,
        "api_key",
        "a key after the refusal",
        |r| assert!(r.is_delegated(), "{r:?}"),
        |r| r.key() != key_before.key(),
    );
    assert!(
        w.dd.exchanges()[refused_at..]
            .iter()
            .any(|r| r.outcome == Outcome::Issued),
        "recovered with the good credentials"
    );
    eprintln!("scenario imds-credentials-revoked: ok");
    let extra = vec![
        rotated.secret_access_key.clone(),
        rotated.session_token.clone().unwrap_or_default(),
        "revokedrevokedrevokedrevokedrevoked00000".to_owned(),
    ];
    finish(Some(&w), d, &extra);
}

/// hygiene-imdsv1-off-by-default / imdsv1-when-configured: an instance where IMDSv2 tokens are
/// refused but token-less GETs would answer. Without `imds.v1_fallback` no credentials are taken
/// from IMDS (and no token-less request is even sent); with it, the managed key.
#[test]
fn imdsv1_only_when_configured() {
    let w = World::start();
    let (imds, env) = w.imds(ImdsOptions {
        allow_v1: true,
        token_mode: TokenMode::Forbidden,
        ..ImdsOptions::default()
    });
    let d = Daemon::start(&w.datadog_yaml(""), HOURLY, env.clone());
    until_fallback(&d);
    let err = eventually("the IMDS error", PATIENCE, || {
        status_of(&d, "api_key")["last_error"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(err.contains("IMDS"), "{err}");
    hold(&d, "api_key", Duration::from_millis(500), |r| {
        assert!(r.is_fallback(), "{r:?}")
    });
    assert!(w.dd.exchanges().is_empty(), "no proof without credentials");
    let tokenless: Vec<_> = imds
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.header("x-aws-ec2-metadata-token").is_none())
        .collect();
    assert!(
        tokenless.is_empty(),
        "IMDSv1 requests were sent: {tokenless:?}"
    );
    finish(Some(&w), d, &[]);
    eprintln!("scenario hygiene-imdsv1-off-by-default: ok");

    let settings = format!("{HOURLY}imds: {{ v1_fallback: true }}\n");
    let d = Daemon::start(&w.datadog_yaml(""), &settings, env);
    managed(&w.dd, &d, "api_key");
    assert!(
        imds.requests().iter().any(|r| r.method == "GET"
            && r.path
                .starts_with("/latest/meta-data/iam/security-credentials/")
            && r.header("x-aws-ec2-metadata-token").is_none()),
        "credentials came through IMDSv1"
    );
    finish(Some(&w), d, &[]);
    eprintln!("scenario imdsv1-when-configured: ok");
}

// ---------------------------------------------------------------------------------------------
// ECS and EKS.

/// ecs-credentials-401 (the agent refuses the authorization token) and
/// container-endpoint-down (nothing listens at AWS_CONTAINER_CREDENTIALS_FULL_URI).
#[test]
fn container_credentials_refused_or_down() {
    let w = World::start();
    let ecs =
        w.rt.block_on(sandbox::ecs::EcsEmulator::start(sandbox::ecs::EcsOptions {
            credentials: Some(w.creds.clone()),
            ..Default::default()
        }))
        .unwrap();
    ecs.set_unauthorized(true);
    let env = container_env(&ecs.full_uri(), None);
    let d = Daemon::start(&w.datadog_yaml(""), HOURLY, env);
    until_fallback(&d);
    let err = eventually("the container error", PATIENCE, || {
        status_of(&d, "api_key")["last_error"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(err.contains("container"), "{err}");
    ecs.set_unauthorized(false);
    managed(&w.dd, &d, "api_key");
    finish(Some(&w), d, &[]);
    eprintln!("scenario ecs-credentials-401: ok");

    let relay =
        w.rt.block_on(Relay::start(
            RelayKind::Forward,
            ecs.url().trim_start_matches("http://").parse().unwrap(),
        ))
        .unwrap();
    w.rt.block_on(relay.stop());
    let env = container_env(&format!("{}{}", relay.url(), ecs.relative_uri()), None);
    let d = Daemon::start(&w.datadog_yaml(""), HOURLY, env);
    until_fallback(&d);
    wait_credentials_failure(&d);
    w.rt.block_on(relay.resume()).unwrap();
    managed(&w.dd, &d, "api_key");
    finish(Some(&w), d, &[]);
    eprintln!("scenario container-endpoint-down: ok");
}

/// pod-identity-token-stale: the projected token the daemon presents is no longer the one the
/// Pod Identity agent accepts (401); kubelet writes the new one and the daemon picks it up.
#[test]
fn pod_identity_token_refused_then_rotated() {
    let w = World::start();
    let pod =
        w.rt.block_on(sandbox::pod_identity::PodIdentityEmulator::start(Some(
            w.creds.clone(),
        )))
        .unwrap();
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "eyJhbGciOiJSUzI1NiJ9.stale.sig").unwrap();
    let env = container_env(&pod.full_uri(), Some(token_file.path()));
    let d = Daemon::start(&w.datadog_yaml(""), HOURLY, env);
    until_fallback(&d);
    wait_credentials_failure(&d);
    // kubelet refreshes the projected token (the agent's current one).
    let current = std::fs::read_to_string(pod.token_file()).unwrap();
    write_by_rename(token_file.path(), &current);
    managed(&w.dd, &d, "api_key");
    finish(Some(&w), d, &[current]);
}

/// web-identity-token-missing (the projected token file is not there yet) and
/// web-identity-sts-refuses (AssumeRoleWithWebIdentity fails), each then fixed.
#[test]
fn web_identity_token_missing_then_sts_refusing() {
    let w = World::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let env = irsa_env(&token, "eks-faults", &w.moto.url());
    let d = Daemon::start(&w.datadog_yaml(""), FAST, env);
    until_fallback(&d);
    let err = eventually("the token file error", PATIENCE, || {
        status_of(&d, "api_key")["last_error"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(err.contains(&token.display().to_string()), "{err}");
    eprintln!("scenario web-identity-token-missing: ok");

    // The token appears, but STS refuses the unsigned AssumeRoleWithWebIdentity (moto does
    // until unauthenticated calls are allowed again).
    let before = exchanges_metric(&d, "api_key", "credentials");
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.sig",
    )
    .unwrap();
    wait_failures(&d, "api_key", "credentials", before + 2);
    hold(&d, "api_key", Duration::from_millis(300), |r| {
        assert!(r.is_fallback(), "{r:?}")
    });
    eprintln!("scenario web-identity-sts-refuses: ok");
    w.rt.block_on(w.moto.reset_auth(1000)).unwrap();
    managed(&w.dd, &d, "api_key");
    finish(Some(&w), d, &[]);
}

// ---------------------------------------------------------------------------------------------
// Transport: TLS, proxy, DNS, plain HTTP.

/// tls-untrusted-certificate: the Datadog endpoint presents a certificate nobody signed; the
/// proof is not sent, the fallback is served and status says why. Setting
/// `skip_ssl_validation` (with its loud warning) is picked up on reload.
#[test]
fn tls_certificate_refused_until_validation_is_skipped() {
    let w = World::start();
    let tls = w.rt.block_on(TlsFront::start(w.dd.addr())).unwrap();
    let yaml = yaml_for(&tls.url(), &w.org.uuid, Some(&w.org.api_key), "");
    let d = Daemon::start(&yaml, HOURLY, w.static_env());
    until_fallback(&d);
    let err = eventually("the TLS error", PATIENCE, || {
        status_of(&d, "api_key")["last_error"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(err.contains("certificate"), "{err}");
    assert!(w.dd.exchanges().is_empty(), "no proof went through");
    eprintln!("scenario tls-untrusted-certificate: ok");

    write_by_rename(
        &d.config,
        &yaml_for(
            &tls.url(),
            &w.org.uuid,
            Some(&w.org.api_key),
            "skip_ssl_validation: true\n",
        ),
    );
    // A changed client setting is not a changed exchange: SIGHUP-style reloads keep the group,
    // so the next retry (not a restart) uses the new client.
    managed(&w.dd, &d, "api_key");
    wait_log(&d, "skip_ssl_validation is set");
    finish(Some(&w), d, &[]);
}

/// proxy-down: every exchange goes through `proxy.https` to an https endpoint whose name only
/// the proxy can resolve; the proxy stops (connections refused), then comes back.
#[test]
fn proxy_down_then_back() {
    let w = World::start();
    let tls = w.rt.block_on(TlsFront::start(w.dd.addr())).unwrap();
    let proxy =
        w.rt.block_on(Relay::start(RelayKind::Connect, tls.addr()))
            .unwrap();
    // `.test` never resolves: without the proxy no exchange could succeed.
    let extra = format!(
        "skip_ssl_validation: true\nproxy:\n  https: {}\n",
        proxy.url()
    );
    let yaml = yaml_for(
        "https://api.delegated-auth.test",
        &w.org.uuid,
        Some(&w.org.api_key),
        &extra,
    );
    let d = Daemon::start(&yaml, FAST, w.static_env());
    let key1 = managed(&w.dd, &d, "api_key");
    assert!(
        proxy
            .connects()
            .iter()
            .all(|c| c == "api.delegated-auth.test:443"),
        "{:?}",
        proxy.connects()
    );
    w.rt.block_on(proxy.stop());
    let before = exchanges_metric(&d, "api_key", "unavailable");
    wait_failures(&d, "api_key", "unavailable", before + 2);
    hold(&d, "api_key", Duration::from_millis(500), |r| {
        assert_eq!(r.key(), Some(key1.as_str()), "{r:?}")
    });
    w.rt.block_on(proxy.resume()).unwrap();
    observe(
        &d,
        "api_key",
        "recovery through the proxy",
        |r| assert!(r.is_delegated(), "{r:?}"),
        |r| r.key() != Some(key1.as_str()),
    );
    finish(Some(&w), d, &[]);
}

/// Static AWS credentials that sign fine offline: enough to reach the exchange step.
fn offline_env() -> HashMap<String, String> {
    let mut env = base_env();
    env.insert("AWS_ACCESS_KEY_ID".into(), "AKIAIOSFODNN7EXAMPLE".into());
    env.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
    );
    env
}

/// dns-failure: `dd_url` names a host that does not resolve (`.invalid`); the fallback is
/// served, status names the problem.
#[test]
fn dns_failure_serves_the_fallback() {
    let fallback = "dnsFallbackKey00000000000000001";
    let yaml = yaml_for("https://api.datadog.invalid", &uuid(), Some(fallback), "");
    let d = Daemon::start(&yaml, HOURLY, offline_env());
    let r = observe(&d, "api_key", "the fallback", |_| {}, Read::is_fallback);
    assert_eq!(r.key(), Some(fallback));
    let inst = eventually("the DNS error", PATIENCE, || {
        let i = status_of(&d, "api_key");
        i["last_error"].is_string().then_some(i)
    });
    assert_eq!(inst["last_error_kind"], "unavailable", "{inst}");
    let err = inst["last_error"].as_str().unwrap();
    assert!(
        err.contains("dns") || err.contains("resolve") || err.contains("lookup"),
        "{err}"
    );
    finish(
        None,
        d,
        &[
            fallback.to_owned(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
        ],
    );
}

/// hygiene-plain-http-refused: a non-loopback `http://` Datadog endpoint is refused before
/// anything is sent: not to the host, not to the configured HTTP proxy.
#[test]
fn plain_http_to_a_non_loopback_endpoint_is_refused() {
    let rt = common::rt();
    let proxy = rt
        .block_on(Relay::start(
            RelayKind::Connect,
            "127.0.0.1:9".parse().unwrap(),
        ))
        .unwrap();
    let fallback = "httpFallbackKey0000000000000001";
    let extra = format!(
        "proxy:\n  http: {}\n  https: {}\n",
        proxy.url(),
        proxy.url()
    );
    let yaml = yaml_for("http://example.invalid", &uuid(), Some(fallback), &extra);
    let d = Daemon::start(&yaml, HOURLY, offline_env());
    let r = observe(&d, "api_key", "the fallback", |_| {}, Read::is_fallback);
    assert_eq!(r.key(), Some(fallback));
    let inst = eventually("the refusal", PATIENCE, || {
        let i = status_of(&d, "api_key");
        i["last_error"].is_string().then_some(i)
    });
    assert_eq!(inst["last_error_kind"], "config", "{inst}");
    let err = inst["last_error"].as_str().unwrap();
    assert!(err.contains("https://"), "{err}");
    assert_eq!(proxy.accepted(), 0, "nothing was sent anywhere");
    finish(None, d, &[fallback.to_owned()]);
    drop(rt);
}

// ---------------------------------------------------------------------------------------------
// Local faults: configuration files, the socket.

/// config-deleted, config-garbage, config-invalid-org, settings-garbage: a broken
/// configuration never takes keys away; status shows the error; fixing the file clears it.
/// socket-file-removed, socket-dir-removed: the daemon binds its socket again.
#[test]
fn broken_configuration_and_a_removed_socket() {
    let w = World::start();
    let yaml = w.datadog_yaml("");
    let d = Daemon::start(&yaml, FAST, w.static_env());
    managed(&w.dd, &d, "api_key");
    let settings_text = std::fs::read_to_string(&d.settings).unwrap();

    let breakages: [(&str, &Path, Option<String>); 4] = [
        ("config-deleted", &d.config, None),
        (
            "config-garbage",
            &d.config,
            Some(":\n  - {[unbalanced\n\u{0}\u{1}".to_owned()),
        ),
        (
            "config-invalid-org",
            &d.config,
            Some(yaml.replace(&w.org.uuid, "not-a-uuid")),
        ),
        (
            "settings-garbage",
            &d.settings,
            Some("socket: [this is not a map\nrefresh: 12\n".to_owned()),
        ),
    ];
    for (name, path, content) in breakages {
        let failures_before = d.json("/v1/status")["config"]["reload_failures"]
            .as_u64()
            .unwrap();
        let good = std::fs::read_to_string(path).unwrap();
        match &content {
            None => std::fs::remove_file(path).unwrap(),
            Some(text) => write_by_rename(path, text),
        }
        let status = eventually(&format!("{name}: the reload error"), PATIENCE, || {
            let s = d.json("/v1/status");
            (s["config"]["reload_failures"].as_u64().unwrap() > failures_before).then_some(s)
        });
        let error = status["config"]["last_reload_error"].as_str().unwrap();
        assert!(!error.is_empty(), "{name}");
        // Keys keep coming, managed ones, rotating on schedule.
        let mut seen = std::collections::HashSet::new();
        hold(&d, "api_key", Duration::from_millis(1500), |r| {
            assert!(r.is_delegated(), "{name}: {r:?}");
            seen.insert(r.key().unwrap().to_owned());
        });
        assert!(seen.len() >= 2, "{name}: refreshes go on: {seen:?}");
        write_by_rename(path, &good);
        eventually(&format!("{name}: the error cleared"), PATIENCE, || {
            d.json("/v1/status")["config"]["last_reload_error"]
                .is_null()
                .then_some(())
        });
        eprintln!("scenario {name}: ok");
    }
    assert_eq!(std::fs::read_to_string(&d.settings).unwrap(), settings_text);

    let socket_dir = d.socket.parent().unwrap().to_owned();
    for (name, remove) in [
        (
            "socket-file-removed",
            Box::new(|| std::fs::remove_file(&d.socket).unwrap()) as Box<dyn Fn()>,
        ),
        (
            "socket-dir-removed",
            Box::new(|| std::fs::remove_dir_all(&socket_dir).unwrap()),
        ),
    ] {
        remove();
        eventually(&format!("{name}: the socket back"), PATIENCE, || {
            d.request(Method::GET, "/v1/health/live", &[], None)
                .is_ok_and(|r| r.status == 200)
                .then_some(())
        });
        assert!(read(&d, "api_key").is_delegated());
        eprintln!("scenario {name}: ok");
    }
    wait_log(&d, "bound it again");
    finish(Some(&w), d, &[]);
}

// ---------------------------------------------------------------------------------------------
// Filesystem: sinks.

/// A tmpfs of `size` bytes at `dir` (root only); unmounted on drop.
struct TinyFs {
    dir: std::path::PathBuf,
}

impl TinyFs {
    fn mount(dir: &Path, size: &str) -> Option<TinyFs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| TinyFs {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// sink-disk-full (a full tmpfs when the test runs as root) and sink-dir-removed: the sink
/// fails, says so, retries with backoff; the key is still served on the socket; once there is
/// room (or a directory) again, the file gets the current key.
#[test]
fn sink_write_failures_do_not_affect_the_socket() {
    let w = World::start();
    let outer = tempfile::tempdir().unwrap();
    let sink_dir = outer.path().join("keys");
    let tiny = if nix::unistd::geteuid().is_root() {
        TinyFs::mount(&sink_dir, "16k")
    } else {
        std::fs::create_dir_all(&sink_dir).unwrap();
        None
    };
    let sink = sink_dir.join("api_key");
    let settings = format!(
        "{FAST}sinks:\n  - instance: api_key\n    path: {}\n    mode: \"0600\"\n",
        sink.display()
    );
    let d = Daemon::start(&w.datadog_yaml(""), &settings, w.static_env());
    let key1 = managed(&w.dd, &d, "api_key");
    eventually("the sink file", PATIENCE, || {
        std::fs::read_to_string(&sink)
            .ok()
            .filter(|k| w.dd.is_valid(k))
    });

    if tiny.is_some() {
        // Fill the filesystem: the next rotation cannot be written.
        let filler = sink_dir.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        drop(f);
        wait_log(&d, "No space left on device");
        hold(&d, "api_key", Duration::from_millis(1500), |r| {
            assert!(r.is_delegated(), "{r:?}")
        });
        let stale = std::fs::read_to_string(&sink).unwrap_or_default();
        assert_ne!(stale, read(&d, "api_key").key().unwrap(), "nothing written");
        std::fs::remove_file(&filler).unwrap();
        eventually("the sink caught up", PATIENCE, || {
            let on_disk = std::fs::read_to_string(&sink).ok()?;
            (on_disk != key1 && w.dd.is_valid(&on_disk)).then_some(())
        });
        eprintln!("scenario sink-disk-full: ok");
    } else {
        eprintln!("scenario sink-disk-full: skipped (needs root to mount a tmpfs)");
    }
    drop(tiny);

    std::fs::remove_dir_all(&sink_dir).ok();
    if sink_dir.exists() {
        // Still a mount point being torn down lazily: remove what is inside instead.
        for e in std::fs::read_dir(&sink_dir).unwrap().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = std::fs::remove_dir(&sink_dir);
    }
    wait_log(&d, "does not exist");
    hold(&d, "api_key", Duration::from_millis(1000), |r| {
        assert!(r.is_delegated(), "{r:?}")
    });
    std::fs::create_dir_all(&sink_dir).unwrap();
    eventually("the sink written again", PATIENCE, || {
        std::fs::read_to_string(&sink)
            .ok()
            .filter(|k| w.dd.is_valid(k))
    });
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sink).unwrap().permissions().mode() & 0o777,
        0o600
    );
    eprintln!("scenario sink-dir-removed: ok");
    finish(Some(&w), d, &[]);
}

// ---------------------------------------------------------------------------------------------
// Secret hygiene.

/// hygiene-trace-logs: even at `trace` level (every library's logs too), with IMDS credentials
/// and a rotation, no secret, session token or proof reaches the log.
#[test]
fn trace_logs_hold_no_secret() {
    let w = World::start();
    let (_imds, env) = w.imds(ImdsOptions {
        credential_ttl: Duration::from_secs(240),
        ..ImdsOptions::default()
    });
    let settings = "log: { level: trace }\nrefresh: { interval: 1s, startup_grace: 3s, retry_min: 100ms, retry_max: 500ms }\n";
    let d = Daemon::start(&w.datadog_yaml(""), settings, env);
    let key1 = managed(&w.dd, &d, "api_key");
    observe(
        &d,
        "api_key",
        "a rotation",
        |_| {},
        |r| r.key() != Some(key1.as_str()),
    );
    let logs = d.logs();
    assert!(logs.contains("TRACE"), "trace logging is on");
    // The file watcher does not log its own events: the log lives in the watched directory.
    assert!(
        !logs.contains("inotify event"),
        "the watcher logs its events ({} bytes of log)",
        logs.len()
    );
    assert!(
        !common::world::proof_secrets(&w.dd).is_empty(),
        "proofs were recorded to scan for"
    );
    finish(Some(&w), d, &[]);
}

/// imds-hop-limit-under-concurrency: the daemon probes IMDS for the region while it resolves
/// credentials; with the token PUT unanswered (a container behind the hop limit), both calls
/// wait on one token load. Whatever call times out first, every error names the hop-limit fix
/// (it used to be a bare "operation attempt timeout" for the call that waited).
#[test]
fn imds_hop_limit_is_named_even_when_calls_share_the_token_wait() {
    use datadog_delegated_auth::aws::{AwsEnv, AwsOptions, Identity};
    let rt = common::rt();
    for round in 0..5 {
        let imds = rt
            .block_on(ImdsEmulator::start(ImdsOptions {
                token_mode: TokenMode::NeverAnswer,
                ..ImdsOptions::default()
            }))
            .unwrap();
        let identity = Identity::new(
            AwsOptions {
                ec2_metadata_timeout: Duration::from_millis(300),
                ..AwsOptions::default()
            },
            AwsEnv::from_pairs([("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())]),
        );
        let (creds, detection) =
            rt.block_on(async { tokio::join!(identity.credentials(), identity.detect()) });
        let error = creds.unwrap_err().to_string();
        assert!(error.contains("hop limit"), "round {round}: {error}");
        let reason = detection.reason.unwrap_or_default();
        assert!(reason.contains("hop"), "round {round}: {reason}");
    }
}

/// socket-path-taken-over: something else is put at the socket path (here a regular file
/// renamed over it). The daemon leaves it alone and says so once; when it goes away the socket
/// is bound again; a file that is not the daemon's is never removed at shutdown.
#[test]
fn a_foreign_file_at_the_socket_path_is_left_alone() {
    let key = "takenOverFallbackKey0000000001";
    let d = Daemon::start(&format!("api_key: {key}\n"), HOURLY, base_env());
    let foreign = d.socket.with_extension("foreign");
    std::fs::write(&foreign, "not a socket").unwrap();
    std::fs::rename(&foreign, &d.socket).unwrap();
    wait_log(&d, "did not create");
    assert_eq!(std::fs::read_to_string(&d.socket).unwrap(), "not a socket");
    std::fs::remove_file(&d.socket).unwrap();
    eventually("the socket back", PATIENCE, || {
        d.request(Method::GET, "/v1/health/live", &[], None)
            .is_ok_and(|r| r.status == 200)
            .then_some(())
    });
    assert_eq!(read(&d, "api_key").key(), Some(key));
    std::fs::write(&foreign, "not a socket either").unwrap();
    std::fs::rename(&foreign, &d.socket).unwrap();
    let mut d = d;
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(
        std::fs::read_to_string(&d.socket).unwrap(),
        "not a socket either",
        "the daemon removed a file it did not create"
    );
    assert!(!d.logs().contains(key) && !d.logs().contains("panicked"));
}

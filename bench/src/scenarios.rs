//! The measurements of the table, each against the real daemon binary.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use sandbox::datadog::{DatadogEmulator, DatadogOptions};
use sandbox::moto::{DEFAULT_ROLE, Moto, StaticCreds};

use crate::loadgen::{self, Conn, Run};
use crate::process::{Server, base_env};
use crate::procfs;

/// A fixed static key (any 32 characters serve; nothing validates it locally).
pub const STATIC_KEY: &str = "0123456789abcdef0123456789abcdef";
/// The org of the managed-key scenarios.
const ORG: &str = "11111111-2222-3333-4444-555555555555";
/// The intake mapping the emulator matches the daemon's role session against.
const MAPPING: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";
/// Clients of the memory and fan-out scenarios (product §12).
pub const CLIENTS: usize = 1000;
/// The path every key read uses.
const KEY_PATH: &str = "/v1/keys/api_key";

/// The daemon's datadog.yaml for a static key: nothing to exchange, so reads measure the server
/// alone.
pub fn static_config() -> String {
    format!("api_key: {STATIC_KEY}\nsite: datadoghq.com\n")
}

/// Settings for the static scenarios: defaults, quiet logs.
pub const STATIC_SETTINGS: &str = "log: { level: info, format: text }\n";

/// Settings for the managed scenarios: JSON logs, whose timestamps (µs) date key changes.
pub const MANAGED_SETTINGS: &str = "log: { level: info, format: json }\n";

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Starts the static daemon and waits for it.
pub fn start_static(bin: &Path) -> io::Result<Server> {
    let mut d = Server::daemon(bin, &static_config(), STATIC_SETTINGS, &base_env())?;
    d.wait_live()?;
    Ok(d)
}

/// The daemon's answer to a key read: body and ETag, for the reference server to copy.
pub async fn key_answer(socket: &Path) -> io::Result<(Vec<u8>, String)> {
    let a = loadgen::request(socket, &loadgen::get_request(KEY_PATH, &[])).await?;
    if a.status != 200 {
        return Err(err(format!(
            "key read answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        )));
    }
    let etag = a.etag.ok_or_else(|| err("key read without ETag"))?;
    Ok((a.body, etag))
}

/// One connection count of the key-read comparison.
#[derive(Clone, Debug)]
pub struct ReadPoint {
    /// Connections.
    pub conns: usize,
    /// One run per round, daemon.
    pub daemon: Vec<Run>,
    /// One run per round, reference.
    pub reference: Vec<Run>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl ReadPoint {
    /// Median requests/s over rounds.
    pub fn rps(runs: &[Run]) -> f64 {
        median(runs.iter().map(Run::rps).collect())
    }

    /// Median of a percentile over rounds.
    pub fn pct(runs: &[Run], p: f64) -> Duration {
        Duration::from_secs_f64(median(
            runs.iter().map(|r| r.percentile(p).as_secs_f64()).collect(),
        ))
    }

    /// Median over rounds of daemon/reference throughput (each round's pair ran back to back).
    pub fn throughput_ratio(&self) -> f64 {
        median(
            self.daemon
                .iter()
                .zip(&self.reference)
                .map(|(d, r)| d.rps() / r.rps())
                .collect(),
        )
    }

    /// Median over rounds of daemon/reference p99.
    pub fn p99_ratio(&self) -> f64 {
        median(
            self.daemon
                .iter()
                .zip(&self.reference)
                .map(|(d, r)| d.percentile(99.0).as_secs_f64() / r.percentile(99.0).as_secs_f64())
                .collect(),
        )
    }

    /// Median server CPU time per request.
    pub fn cpu(runs: &[Run]) -> Duration {
        Duration::from_secs_f64(median(
            runs.iter()
                .filter_map(|r| r.cpu_per_request().map(|d| d.as_secs_f64()))
                .collect(),
        ))
    }

    /// Median server context switches per request.
    pub fn switches(runs: &[Run]) -> f64 {
        median(runs.iter().filter_map(Run::switches_per_request).collect())
    }

    /// Non-200 answers (must be zero).
    pub fn errors(&self) -> u64 {
        self.daemon
            .iter()
            .chain(&self.reference)
            .map(|r| r.errors)
            .sum()
    }
}

/// Durations of the key-read comparison.
#[derive(Clone, Copy, Debug)]
pub struct ReadPlan {
    /// Rounds per connection count (daemon and reference alternate, order swapped each round).
    pub rounds: usize,
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// Measured window.
    pub window: Duration,
}

/// Key reads at `conns` connections against both servers, interleaved so that a change of load
/// on the machine hits both alike.
pub async fn reads(
    daemon: &Server,
    reference: &Server,
    conns: usize,
    plan: ReadPlan,
) -> io::Result<ReadPoint> {
    let mut point = ReadPoint {
        conns,
        daemon: Vec::new(),
        reference: Vec::new(),
    };
    let request = loadgen::get_request(KEY_PATH, &[]);
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 {
            [(daemon, true), (reference, false)]
        } else {
            [(reference, false), (daemon, true)]
        };
        for (server, is_daemon) in order {
            let run = loadgen::run(
                &server.socket,
                conns,
                request.clone(),
                plan.warmup,
                plan.window,
                Some(server.pid()),
            )
            .await?;
            if is_daemon {
                point.daemon.push(run);
            } else {
                point.reference.push(run);
            }
        }
    }
    Ok(point)
}

/// Resident memory of the daemon idle and with [`CLIENTS`] clients.
#[derive(Clone, Debug)]
pub struct Memory {
    /// Idle after start-up, KiB.
    pub idle: u64,
    /// With the clients connected after one key read each (idle keep-alive), KiB.
    pub keepalive: u64,
    /// With every client in a long poll, KiB.
    pub long_poll: u64,
    /// After the clients left, KiB.
    pub after: u64,
    /// Peak (`VmHWM`), KiB.
    pub peak: u64,
}

/// Measures [`Memory`] on a fresh static daemon.
pub async fn memory(bin: &Path) -> io::Result<Memory> {
    let d = start_static(bin)?;
    let pid = d.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = procfs::rss_kib(pid)?;
    let (_, etag) = key_answer(&d.socket).await?;
    let read = loadgen::get_request(KEY_PATH, &[]);
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = Conn::connect(&d.socket).await?;
        c.send(&read).await?;
        let a = c.read_answer().await?;
        if a.status != 200 {
            return Err(err(format!("key read answered {}", a.status)));
        }
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keepalive = procfs::rss_kib(pid)?;
    let poll = loadgen::get_request(
        &format!("{KEY_PATH}?wait=60s"),
        &[("If-None-Match", etag.as_str())],
    );
    for c in &mut conns {
        c.send(&poll).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let long_poll = procfs::rss_kib(pid)?;
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = procfs::rss_kib(pid)?;
    let peak = procfs::status_kib(pid, "VmHWM")?;
    Ok(Memory {
        idle,
        keepalive,
        long_poll,
        after,
        peak,
    })
}

/// Start-up of one daemon.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// From spawn to `/v1/health/live` answering.
    pub wall: Duration,
    /// `utime + stime` at that moment (whole process, 10-ms units).
    pub cpu_stat: Duration,
    /// Scheduler run time of its threads at that moment (ns resolution).
    pub cpu_sched: Duration,
    /// RSS at that moment, KiB.
    pub rss: u64,
}

/// Start-up of `reps` static daemons, one after the other.
pub fn startup(bin: &Path, reps: usize) -> io::Result<Vec<Startup>> {
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        let mut d = Server::daemon(bin, &static_config(), STATIC_SETTINGS, &base_env())?;
        let wall = d.wait_live()?;
        let pid = d.pid();
        out.push(Startup {
            wall,
            cpu_stat: procfs::cpu_time_stat(pid)?,
            cpu_sched: procfs::cpu_time_schedstat(pid)?,
            rss: procfs::rss_kib(pid)?,
        });
    }
    Ok(out)
}

/// Idle wake-ups of a daemon over a window.
#[derive(Clone, Debug)]
pub struct Idle {
    /// Context switches over the window, all threads.
    pub switches: u64,
    /// Window.
    pub window: Duration,
    /// Threads that switched, `name×count`.
    pub by_thread: Vec<(String, u64)>,
}

impl Idle {
    /// Wake-ups per second.
    pub fn per_sec(&self) -> f64 {
        self.switches as f64 / self.window.as_secs_f64()
    }
}

/// Counts context switches of every thread of `pid` over `window` while nobody talks to it.
pub async fn idle(pid: u32, window: Duration) -> io::Result<Idle> {
    let before = procfs::switches(pid)?;
    tokio::time::sleep(window).await;
    let after = procfs::switches(pid)?;
    let delta = procfs::switch_delta(&before, &after);
    Ok(Idle {
        switches: delta.iter().map(|t| t.switches).sum(),
        window,
        by_thread: delta
            .into_iter()
            .filter(|t| t.switches > 0)
            .map(|t| (format!("{} ({})", t.name, t.tid), t.switches))
            .collect(),
    })
}

/// The loopback Datadog and STS of the managed scenarios.
pub struct Sandbox {
    /// moto_server (STS that verifies signatures), stopped on drop.
    _moto: Moto,
    /// Datadog's API.
    pub datadog: DatadogEmulator,
    /// Role session credentials the daemon signs with.
    pub creds: StaticCreds,
    /// The org's static key (the daemon's fallback).
    pub fallback: String,
}

impl Sandbox {
    /// Starts moto and the Datadog emulator with an org that maps the role.
    pub async fn start() -> io::Result<Sandbox> {
        let moto = Moto::start().await.map_err(|e| {
            err(format!(
                "{e}; the managed-key scenarios need moto_server (pip install 'moto[server]==5.2.1'; scripts/bench installs it)"
            ))
        })?;
        let creds = moto
            .assume_role(DEFAULT_ROLE, "i-0123456789abcdef0")
            .await
            .map_err(|e| err(e.to_string()))?;
        let datadog = DatadogEmulator::start(DatadogOptions {
            sts_url: Some(moto.url()),
            ..DatadogOptions::default()
        })
        .await?;
        let org = datadog.add_org(ORG);
        datadog.add_intake_mapping(ORG, MAPPING);
        datadog.add_persona_mapping(ORG, MAPPING, "automation@example.com");
        Ok(Sandbox {
            _moto: moto,
            datadog,
            creds,
            fallback: org.api_key,
        })
    }

    fn config(&self) -> String {
        format!(
            "api_key: {}\ndd_url: {}\ndelegated_auth:\n  org_uuid: {ORG}\n",
            self.fallback,
            self.datadog.url()
        )
    }

    fn env(&self) -> HashMap<String, String> {
        let mut env = base_env();
        env.insert("AWS_ACCESS_KEY_ID".into(), self.creds.access_key_id.clone());
        env.insert(
            "AWS_SECRET_ACCESS_KEY".into(),
            self.creds.secret_access_key.clone(),
        );
        if let Some(t) = &self.creds.session_token {
            env.insert("AWS_SESSION_TOKEN".into(), t.clone());
        }
        // A region from the environment: no IMDS identity-document lookup on the way.
        env.insert("AWS_REGION".into(), "us-east-1".into());
        env
    }
}

/// A managed daemon's start-up.
pub struct ManagedStart {
    /// The daemon (still running).
    pub server: Server,
    /// Spawn to `/v1/health/live`.
    pub live: Duration,
    /// Spawn to a key read answering a managed key.
    pub first_key: Duration,
    /// The key's generation.
    pub generation: u64,
    /// The key's last five characters (for the rejection report).
    pub suffix: String,
}

/// Starts a managed daemon and waits for its first managed key. The key read itself waits for
/// the first exchange (startup grace), so one read after liveness answers as soon as the key is
/// there.
pub async fn managed_start(bin: &Path, sandbox: &Sandbox) -> io::Result<ManagedStart> {
    let mut server = Server::daemon(bin, &sandbox.config(), MANAGED_SETTINGS, &sandbox.env())?;
    let live = tokio::task::block_in_place(|| server.wait_live())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = loadgen::request(&server.socket, &loadgen::get_request(KEY_PATH, &[])).await?;
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        if a.status == 200 && v["source"] == "delegated" {
            let first_key = server.spawned_at.elapsed();
            let key = v["api_key"].as_str().unwrap_or_default();
            return Ok(ManagedStart {
                live,
                first_key,
                generation: v["generation"].as_u64().unwrap_or(0),
                suffix: key[key.len().saturating_sub(5)..].to_owned(),
                server,
            });
        }
        if Instant::now() > deadline {
            return Err(err(format!(
                "no managed key within 60 s (last answer {} {v}); log:\n{}",
                a.status,
                server.logs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One rotation seen by [`CLIENTS`] long-poll waiters.
#[derive(Clone, Debug)]
pub struct FanOut {
    /// Publication (daemon log) to each waiter's first answer byte, sorted.
    pub delays: Vec<Duration>,
    /// First waiter's answer to each waiter's, sorted (no cross-process clock involved).
    pub spread: Vec<Duration>,
    /// The daemon's CPU time (all threads) from the rejection report to the last answer: the
    /// forced exchange plus answering every waiter.
    pub daemon_cpu: Duration,
    /// The bench's own CPU time over the same span (the 1,000 clients reading their answers,
    /// plus the Datadog emulator answering the exchange).
    pub client_cpu: Duration,
}

/// Parks [`CLIENTS`] long polls on `generation`, forces a rotation with a rejection report, and
/// times each waiter's answer against the moment the daemon logged the new key.
pub async fn fan_out(start: &ManagedStart) -> io::Result<FanOut> {
    let socket = &start.server.socket;
    let poll = loadgen::get_request(
        &format!("{KEY_PATH}?wait=120s"),
        &[("If-None-Match", &format!("\"{}\"", start.generation))],
    );
    let mut waiters = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = Conn::connect(socket).await?;
        c.send(&poll).await?;
        // Each task hands its connection back with the answer: a consumer keeps its keep-alive
        // connection for its next long poll, and closing 1,000 connections in the middle of the
        // fan-out would charge the daemon for their teardown.
        waiters.push(tokio::spawn(async move {
            let answer = c.read_answer().await;
            (c, answer)
        }));
    }
    // Let every request reach the daemon and park (1,000 accepts and parses take milliseconds;
    // the margin is for a loaded machine).
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(early) = waiters.iter().position(|w| w.is_finished()) {
        return Err(err(format!(
            "waiter {early} was answered before the rotation; log:\n{}",
            start.server.logs()
        )));
    }
    let report = loadgen::post_request(
        &format!("{KEY_PATH}/rejected"),
        &format!("{{\"api_key_suffix\":\"{}\"}}", start.suffix),
    );
    let pid = start.server.pid();
    let cpu_before = procfs::cpu_time_schedstat(pid)?;
    let client_before = procfs::cpu_time_schedstat(std::process::id())?;
    let a = loadgen::request(socket, &report).await?;
    if a.status != 202 || !String::from_utf8_lossy(&a.body).contains("scheduled") {
        return Err(err(format!(
            "rejection report answered {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        )));
    }
    let mut arrivals = Vec::with_capacity(CLIENTS);
    let mut open = Vec::with_capacity(CLIENTS);
    for w in waiters {
        let (conn, a) = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .map_err(|_| err("a waiter saw no rotation within 60 s"))?
            .map_err(io::Error::other)?;
        open.push(conn);
        let a = a?;
        if a.status != 200 || a.etag.as_deref() == Some(&format!("\"{}\"", start.generation)) {
            return Err(err(format!(
                "a waiter got {} {:?} instead of the new key",
                a.status, a.etag
            )));
        }
        arrivals.push(a.first_byte_at);
    }
    let daemon_cpu = procfs::cpu_time_schedstat(pid)?.saturating_sub(cpu_before);
    let client_cpu = procfs::cpu_time_schedstat(std::process::id())?.saturating_sub(client_before);
    drop(open);
    let published = publication_time(&start.server.logs())?;
    let mut delays: Vec<Duration> = arrivals
        .iter()
        .map(|t| t.duration_since(published).unwrap_or(Duration::ZERO))
        .collect();
    delays.sort_unstable();
    let first = *arrivals.iter().min().unwrap_or(&published);
    let mut spread: Vec<Duration> = arrivals
        .iter()
        .map(|t| t.duration_since(first).unwrap_or(Duration::ZERO))
        .collect();
    spread.sort_unstable();
    Ok(FanOut {
        delays,
        spread,
        daemon_cpu,
        client_cpu,
    })
}

/// Delegated API tokens in steady state: how many exchanges per token lifetime, and how long a
/// long-polling consumer takes to see each new token.
pub struct TokenSteady {
    /// The token lifetime the emulator issued.
    pub lifetime: Duration,
    /// How long the steady state was watched (after the first token).
    pub window: Duration,
    /// Token exchanges in the window.
    pub exchanges: usize,
    /// Publication (daemon log) → the consumer's first answer byte, per new token, sorted.
    pub delays: Vec<Duration>,
    /// Answers that carried a token at or past its `expires_at` (must be 0).
    pub stale: usize,
}

/// Starts a daemon with one token of `lifetime` and follows it with the long poll for
/// `window`, as `exec --token` does.
pub async fn token_steady(
    bin: &Path,
    sandbox: &Sandbox,
    lifetime: Duration,
    window: Duration,
) -> io::Result<TokenSteady> {
    sandbox.datadog.set_token_lifetime(lifetime);
    let settings = format!(
        "{MANAGED_SETTINGS}tokens:\n  - name: bench\n    org_uuid: {ORG}\n    api_url: {}\n",
        sandbox.datadog.url()
    );
    let mut server = Server::daemon(bin, &sandbox.config(), &settings, &sandbox.env())?;
    tokio::task::block_in_place(|| server.wait_live())?;
    let path = "/v1/tokens/bench";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut generation = loop {
        let a = loadgen::request(&server.socket, &loadgen::get_request(path, &[])).await?;
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        if a.status == 200 {
            break v["generation"].as_u64().unwrap_or(0);
        }
        if Instant::now() > deadline {
            return Err(err(format!(
                "no token within 60 s; log:\n{}",
                server.logs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let before = sandbox.datadog.token_exchanges().len();
    let end = Instant::now() + window;
    let mut arrivals = Vec::new();
    let mut stale = 0;
    let mut conn = Conn::connect(&server.socket).await?;
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        let poll = loadgen::get_request(
            &format!("{path}?wait={}ms", left.as_millis().max(1)),
            &[("If-None-Match", &format!("\"{generation}\""))],
        );
        conn.send(&poll).await?;
        let a = conn.read_answer().await?;
        if a.status == 304 {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        if a.status != 200 {
            return Err(err(format!("the token answer was {} {v}", a.status)));
        }
        let expires = v["expires_at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .ok_or_else(|| err(format!("no expires_at in {v}")))?;
        if expires <= SystemTime::now() {
            stale += 1;
        }
        generation = v["generation"].as_u64().unwrap_or(0);
        arrivals.push(a.first_byte_at);
    }
    let exchanges = sandbox.datadog.token_exchanges().len() - before;
    let published = publication_times(&server.logs(), "Obtained a delegated API token.")?;
    // Each arrival answers the latest publication before it.
    let mut delays: Vec<Duration> = arrivals
        .iter()
        .filter_map(|t| {
            let p = published.iter().rev().find(|p| *p <= t)?;
            t.duration_since(*p).ok()
        })
        .collect();
    delays.sort_unstable();
    Ok(TokenSteady {
        lifetime,
        window,
        exchanges,
        delays,
        stale,
    })
}

/// The timestamps of every `message` line of a JSON log, in order.
fn publication_times(log: &str, message: &str) -> io::Result<Vec<SystemTime>> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .map(|v| {
            let ts = v["timestamp"].as_str().unwrap_or_default();
            humantime::parse_rfc3339_weak(ts).map_err(|e| err(format!("timestamp {ts:?}: {e}")))
        })
        .collect()
}

/// The timestamp of the last "Obtained a managed key." line of a JSON log: the daemon writes it
/// in the same function call that publishes the key, just before publishing.
pub fn publication_time(log: &str) -> io::Result<SystemTime> {
    let line = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "Obtained a managed key.")
        .ok_or_else(|| err(format!("no \"Obtained a managed key.\" in the log:\n{log}")))?;
    let ts = line["timestamp"]
        .as_str()
        .ok_or_else(|| err("log line without timestamp"))?;
    humantime::parse_rfc3339_weak(ts).map_err(|e| err(format!("timestamp {ts:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_time_is_the_last_key_line() {
        let log = concat!(
            "{\"timestamp\":\"2026-01-01T00:00:00.000001Z\",\"level\":\"INFO\",\"message\":\"Obtained a managed key.\"}\n",
            "not json\n",
            "{\"timestamp\":\"2026-01-01T00:00:01.250000Z\",\"level\":\"INFO\",\"message\":\"Obtained a managed key.\"}\n",
            "{\"timestamp\":\"2026-01-01T00:00:02Z\",\"level\":\"INFO\",\"message\":\"Listening.\"}\n",
        );
        let t = publication_time(log).unwrap();
        let base = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(t.duration_since(base).unwrap(), Duration::from_millis(1250));
        assert!(publication_time("{}").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}

//! `ddda-bench`: measures datadog-delegated-auth against the targets of product §12 and prints
//! one table (see `docs/performance.md` for the method and the figures).
//!
//! ```text
//! ddda-bench [--ci [--release-thresholds]] [--only PARTS] [--daemon PATH] [--chart PNG] [--json FILE]
//! ddda-bench reference-server SOCKET BODY_FILE ETAG minimal|daemon-settings   (internal)
//! ```
//!
//! `--ci` runs the short version and exits 1 when a gated check misses (ratios against the
//! reference measured in the same run, fleet ratios, idle wake-ups, and a loose fan-out bound;
//! see `docs/performance.md` "CI gate"). Without it, every figure is measured at full length and
//! reported, and the exit status is 0 unless something could not be measured.
//!
//! The daemon binary defaults to `datadog-delegated-auth` beside this executable (cargo puts
//! both in the same target directory); `scripts/bench` builds both.

mod chart;
mod fleet;
mod loadgen;
mod process;
mod procfs;
mod reference;
mod report;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::{Report, mib, ms};
use scenarios::{CLIENTS, ReadPlan, ReadPoint};

/// Connection counts of the key-read comparison (product §12 / issue 8).
const CONNS: [usize; 3] = [1, 16, 64];

/// §12: daemon throughput at least this share of the reference's.
const MIN_THROUGHPUT_RATIO: f64 = 0.8;
/// §12: daemon p99 at most this multiple of the reference's.
const MAX_P99_RATIO: f64 = 2.0;
/// The CI gate's read thresholds on a debug build (see [`ReadGate::DEBUG`]).
const DEBUG_MIN_THROUGHPUT_RATIO: f64 = 0.25;
const DEBUG_MAX_P99_RATIO: f64 = 8.0;
/// §12: 1,000 long-poll waiters see a rotation within this.
const FAN_OUT_TARGET: Duration = Duration::from_millis(5);
/// The CI gate's fan-out bound (debug build, loaded shared CI machine); see docs/performance.md.
const FAN_OUT_CI_BOUND: Duration = Duration::from_millis(250);
/// §12 "no periodic wake-ups while idle": at most this many context switches per second.
const MAX_IDLE_WAKEUPS: f64 = 0.2;
/// §12 fleet: steady and post-restart peak/mean.
const MAX_STEADY_PEAK: f64 = 1.25;
/// §12 fleet: outage recovery peak/mean.
const MAX_RECOVERY_PEAK: f64 = 2.0;
/// §12 memory and size targets, KiB / bytes.
const MAX_IDLE_RSS_KIB: u64 = 10 * 1024;
const MAX_CLIENTS_RSS_KIB: u64 = 32 * 1024;
const MAX_BINARY_BYTES: u64 = 15 * 1024 * 1024;

struct Opts {
    ci: bool,
    /// `--release-thresholds`: gate reads on §12's own ratios even in `--ci` (release build).
    release_thresholds: bool,
    /// `--only a,b`: run only these parts (reads, memory, startup, idle, managed, tokens,
    /// fleet).
    only: Option<Vec<String>>,
    /// `--conns 1,16,64`: connection counts of the key-read comparison.
    conns: Vec<usize>,
    daemon: PathBuf,
    chart: Option<PathBuf>,
    json: Option<PathBuf>,
}

/// How long each part runs.
struct Plan {
    reads: ReadPlan,
    startups: usize,
    managed_rounds: usize,
    idle_window: Duration,
    /// Token lifetime and steady-state window of the token scenario.
    token_lifetime: Duration,
    token_window: Duration,
}

impl Plan {
    fn new(ci: bool) -> Plan {
        if ci {
            Plan {
                reads: ReadPlan {
                    rounds: 4,
                    warmup: Duration::from_millis(200),
                    window: Duration::from_secs(1),
                },
                startups: 5,
                managed_rounds: 1,
                idle_window: Duration::from_secs(10),
                token_lifetime: Duration::from_secs(6),
                token_window: Duration::from_secs(24),
            }
        } else {
            Plan {
                // Many short interleaved rounds rather than a few long ones: other work on a shared
                // machine comes and goes within seconds, and the median of pairs that ran back to
                // back cancels most of it.
                reads: ReadPlan {
                    rounds: 8,
                    warmup: Duration::from_millis(300),
                    window: Duration::from_secs(2),
                },
                startups: 10,
                managed_rounds: 3,
                idle_window: Duration::from_secs(10),
                token_lifetime: Duration::from_secs(20),
                token_window: Duration::from_secs(200),
            }
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: ddda-bench [--ci [--release-thresholds]] [--only reads,memory,startup,idle,managed,tokens,fleet] [--conns 1,16,64] [--daemon PATH] [--chart PNG] [--json FILE]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("reference-server") {
        let [_, socket, body, etag, variant] = args.as_slice() else {
            return usage();
        };
        let Some(variant) = reference::Variant::parse(variant) else {
            return usage();
        };
        return match reference::main(socket.into(), body.into(), etag.clone(), variant) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("reference server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut opts = Opts {
        ci: false,
        release_thresholds: false,
        only: None,
        conns: CONNS.to_vec(),
        daemon: default_daemon(),
        chart: None,
        json: None,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ci" => opts.ci = true,
            "--release-thresholds" => opts.release_thresholds = true,
            "--conns" => match it.next().map(|l| {
                l.split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<usize>, _>>()
            }) {
                Some(Ok(c)) if !c.is_empty() => opts.conns = c,
                _ => return usage(),
            },
            "--only" => match it.next() {
                Some(list) => opts.only = Some(list.split(',').map(str::to_owned).collect()),
                None => return usage(),
            },
            "--daemon" => match it.next() {
                Some(p) => opts.daemon = p.into(),
                None => return usage(),
            },
            "--chart" => opts.chart = it.next().map(PathBuf::from),
            "--json" => opts.json = it.next().map(PathBuf::from),
            _ => return usage(),
        }
    }
    process::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(reference::WORKERS)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    match runtime.block_on(bench(&opts)) {
        Ok(report) => {
            println!("{}", report.markdown());
            let failures = report.failures();
            eprintln!(
                "ddda-bench: {} checks, {} gated misses, {:.0} s",
                report.rows.iter().filter(|r| r.met.is_some()).count(),
                failures.len(),
                started.elapsed().as_secs_f64()
            );
            if opts.ci && !failures.is_empty() {
                for f in failures {
                    eprintln!(
                        "GATE MISSED: {} / {}: {} (target {})",
                        f.section, f.measure, f.value, f.target
                    );
                }
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn default_daemon() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("datadog-delegated-auth")))
        .unwrap_or_else(|| PathBuf::from("datadog-delegated-auth"))
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

impl Opts {
    fn runs(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|parts| parts.iter().any(|p| p == part))
    }
}

type Json = serde_json::Map<String, serde_json::Value>;

async fn bench(opts: &Opts) -> std::io::Result<Report> {
    let plan = Plan::new(opts.ci);
    let mut report = Report::default();
    let mut json = Json::new();
    let bin = &opts.daemon;
    if !bin.exists() {
        return Err(std::io::Error::other(format!(
            "no daemon binary at {}; build it (cargo build --bins) or pass --daemon",
            bin.display()
        )));
    }
    machine(&mut report, bin, opts.ci);
    if opts.runs("reads") {
        step("key reads: daemon vs reference");
        let gate = if opts.ci && !opts.release_thresholds {
            ReadGate::DEBUG
        } else {
            ReadGate::SPEC
        };
        read_section(&mut report, &mut json, bin, &plan, opts, gate).await?;
    }
    if opts.runs("memory") {
        step("memory and size");
        memory_section(&mut report, &mut json, bin).await?;
    }
    if opts.runs("startup") {
        step("start-up");
        startup_section(&mut report, &mut json, bin, &plan)?;
    }
    if opts.runs("idle") && !opts.ci {
        step("idle wake-ups (static key)");
        let d = tokio::task::block_in_place(|| scenarios::start_static(bin))?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = scenarios::idle(d.pid(), plan.idle_window).await?;
        idle_row(&mut report, "static key", &idle, false);
        json.insert("idle_static_switches".into(), idle.switches.into());
    }
    if opts.runs("managed") {
        step("managed keys: first key, idle wake-ups, rotation fan-out");
        managed_section(&mut report, &mut json, bin, &plan, opts.ci).await?;
    }
    if opts.runs("tokens") {
        step("delegated API tokens: steady state");
        token_section(&mut report, &mut json, bin, &plan).await?;
    }
    if opts.runs("fleet") {
        step("fleet simulation");
        let t = Instant::now();
        let outcomes = fleet::run_all(42);
        eprintln!("    simulated in {:.1} s", t.elapsed().as_secs_f64());
        fleet_section(&mut report, &mut json, &outcomes);
        if let Some(path) = &opts.chart {
            chart::render(&outcomes, path).map_err(std::io::Error::other)?;
            eprintln!("    chart written to {}", path.display());
        }
    }
    report.info("Run", "load average at the end (1/5/15 min)", loadavg(), "");
    if let Some(path) = &opts.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&serde_json::Value::Object(json))?,
        )?;
    }
    Ok(report)
}

async fn memory_section(report: &mut Report, json: &mut Json, bin: &Path) -> std::io::Result<()> {
    let m = scenarios::memory(bin).await?;
    let section = "Memory and size";
    report.check(
        section,
        "RSS idle (static key)",
        mib(m.idle),
        "Vault Agent ~134 MB (peers.md)",
        "≤ 10 MiB",
        m.idle <= MAX_IDLE_RSS_KIB,
        false,
    );
    report.check(
        section,
        format!("RSS, {CLIENTS} clients connected (idle keep-alive)"),
        mib(m.keepalive),
        "",
        "≤ 32 MiB",
        m.keepalive <= MAX_CLIENTS_RSS_KIB,
        false,
    );
    report.check(
        section,
        format!("RSS, {CLIENTS} clients in a long poll"),
        mib(m.long_poll),
        "SPIRE ~3.5 GB at ~450 SDS streams (peers.md)",
        "≤ 32 MiB",
        m.long_poll <= MAX_CLIENTS_RSS_KIB,
        false,
    );
    report.info(
        section,
        "RSS after the clients left / peak (VmHWM)",
        format!("{} / {}", mib(m.after), mib(m.peak)),
        "",
    );
    json.insert(
        "memory_kib".into(),
        serde_json::json!({"idle": m.idle, "keepalive_1000": m.keepalive,
            "long_poll_1000": m.long_poll, "after": m.after, "peak": m.peak}),
    );
    let size = std::fs::metadata(bin)?.len();
    let release = bin.components().any(|c| c.as_os_str() == "release");
    if release {
        report.check(
            section,
            "binary size (release profile: opt-level s, thin LTO, stripped)",
            format!("{:.1} MiB", size as f64 / 1048576.0),
            "",
            "≤ 15 MiB",
            size <= MAX_BINARY_BYTES,
            false,
        );
    } else {
        report.info(
            section,
            "binary size",
            format!(
                "{:.1} MiB (not a release build: not comparable)",
                size as f64 / 1048576.0
            ),
            "",
        );
    }
    json.insert("binary_bytes".into(), size.into());
    Ok(())
}

fn startup_section(
    report: &mut Report,
    json: &mut Json,
    bin: &Path,
    plan: &Plan,
) -> std::io::Result<()> {
    let starts = tokio::task::block_in_place(|| scenarios::startup(bin, plan.startups))?;
    let med = |f: &dyn Fn(&scenarios::Startup) -> Duration| {
        let mut v: Vec<Duration> = starts.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    report.info(
        "Start-up",
        format!(
            "exec → socket answering /v1/health/live (median of {})",
            starts.len()
        ),
        ms(med(&|s| s.wall)),
        "",
    );
    // /proc/<pid>/stat's utime+stime is exact but printed in whole 10-ms ticks, truncated: a
    // start-up of 9 ms reads as 0. The threads' scheduler run time is the same quantity in ns.
    report.info(
        "Start-up",
        "CPU time at ready (all threads' run time, /proc/<pid>/task/*/schedstat; median)",
        ms(med(&|s| s.cpu_sched)),
        "",
    );
    report.info(
        "Start-up",
        "RSS at ready (median)",
        mib(med(&|s| Duration::from_secs(s.rss)).as_secs()),
        "",
    );
    json.insert(
        "startup".into(),
        serde_json::json!(
            starts
                .iter()
                .map(|s| serde_json::json!({
            "wall_us": s.wall.as_micros() as u64, "cpu_stat_us": s.cpu_stat.as_micros() as u64,
            "cpu_sched_us": s.cpu_sched.as_micros() as u64, "rss_kib": s.rss}))
                .collect::<Vec<_>>()
        ),
    );
    Ok(())
}

/// Thresholds of the key-read comparison.
#[derive(Clone, Copy)]
struct ReadGate {
    min_throughput: f64,
    max_p99: f64,
    why: &'static str,
}

impl ReadGate {
    /// Product §12, for release builds.
    const SPEC: ReadGate = ReadGate {
        min_throughput: MIN_THROUGHPUT_RATIO,
        max_p99: MAX_P99_RATIO,
        why: "§12",
    };
    /// The CI gate on debug builds, where the daemon's own code is unoptimised while the
    /// reference is little more than hyper: see docs/performance.md "CI gate".
    const DEBUG: ReadGate = ReadGate {
        min_throughput: DEBUG_MIN_THROUGHPUT_RATIO,
        max_p99: DEBUG_MAX_P99_RATIO,
        why: "debug-build gate",
    };
}

/// `/proc/loadavg`'s first three fields: other work on the machine shifts every absolute figure.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine(report: &mut Report, bin: &Path, ci: bool) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim())
        })
        .unwrap_or("unknown")
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.info(
        "Run",
        "machine",
        format!("{cpus} CPUs, {model}"),
        if ci { "CI mode" } else { "full mode" },
    );
    report.info("Run", "daemon binary", bin.display().to_string(), "");
    report.info("Run", "load average at start (1/5/15 min)", loadavg(), "");
}

async fn read_section(
    report: &mut Report,
    json: &mut serde_json::Map<String, serde_json::Value>,
    bin: &Path,
    plan: &Plan,
    opts: &Opts,
    gate: ReadGate,
) -> std::io::Result<()> {
    let ci = opts.ci;
    let daemon = tokio::task::block_in_place(|| scenarios::start_static(bin))?;
    let (body, etag) = scenarios::key_answer(&daemon.socket).await?;
    let mut reference = process::Server::reference(&body, &etag, reference::Variant::Minimal)?;
    tokio::task::block_in_place(|| reference.wait_live())?;
    let mut points = Vec::new();
    for &conns in &opts.conns {
        let mut p = scenarios::reads(&daemon, &reference, conns, plan.reads).await?;
        let ok = |p: &ReadPoint| {
            p.throughput_ratio() >= gate.min_throughput && p.p99_ratio() <= gate.max_p99
        };
        if ci && !ok(&p) {
            // One re-measurement before failing: a burst of other work on a shared CI machine
            // can land in one server's window only.
            eprintln!(
                "    {conns} conns: ratios {:.2} / {:.2}, measuring again",
                p.throughput_ratio(),
                p.p99_ratio()
            );
            p = scenarios::reads(&daemon, &reference, conns, plan.reads).await?;
        }
        if p.errors() > 0 {
            return Err(std::io::Error::other(format!(
                "{} non-200 answers at {conns} connections",
                p.errors()
            )));
        }
        eprintln!(
            "    {conns:>2} conns: daemon {:.0} req/s p99 {}, reference {:.0} req/s p99 {}",
            ReadPoint::rps(&p.daemon),
            ms(ReadPoint::pct(&p.daemon, 99.0)),
            ReadPoint::rps(&p.reference),
            ms(ReadPoint::pct(&p.reference, 99.0)),
        );
        points.push(p);
    }
    let peak = procfs::status_kib(daemon.pid(), "VmHWM")?;
    // Attribution (full mode): the minimal reference with the daemon's hyper settings, against
    // the minimal reference. Whatever this costs is hyper configuration, the rest the daemon's
    // own code.
    let mut attribution = Vec::new();
    if !ci {
        let mut variant =
            process::Server::reference(&body, &etag, reference::Variant::DaemonSettings)?;
        tokio::task::block_in_place(|| variant.wait_live())?;
        for &conns in &opts.conns {
            attribution.push(scenarios::reads(&variant, &reference, conns, plan.reads).await?);
        }
    }
    for p in &points {
        let section = "Key reads (GET /v1/keys/api_key, keep-alive, closed loop)";
        report.check(
            section,
            format!("{} conn: req/s (ratio daemon/reference)", p.conns),
            format!(
                "{:.0} ({:.2})",
                ReadPoint::rps(&p.daemon),
                p.throughput_ratio()
            ),
            format!("{:.0}", ReadPoint::rps(&p.reference)),
            format!("ratio ≥ {:.2} ({})", gate.min_throughput, gate.why),
            p.throughput_ratio() >= gate.min_throughput,
            true,
        );
        report.check(
            section,
            format!("{} conn: p50 / p99 (p99 ratio)", p.conns),
            format!(
                "{} / {} ({:.2})",
                ms(ReadPoint::pct(&p.daemon, 50.0)),
                ms(ReadPoint::pct(&p.daemon, 99.0)),
                p.p99_ratio()
            ),
            format!(
                "{} / {}",
                ms(ReadPoint::pct(&p.reference, 50.0)),
                ms(ReadPoint::pct(&p.reference, 99.0))
            ),
            format!("p99 ratio ≤ {:.1} ({})", gate.max_p99, gate.why),
            p.p99_ratio() <= gate.max_p99,
            true,
        );
        report.info(
            section,
            format!(
                "{} conn: server CPU per request (ratio) / context switches per request",
                p.conns
            ),
            format!(
                "{} ({:.2}) / {:.2}",
                ms(ReadPoint::cpu(&p.daemon)),
                ReadPoint::cpu(&p.daemon).as_secs_f64()
                    / ReadPoint::cpu(&p.reference).as_secs_f64().max(1e-9),
                ReadPoint::switches(&p.daemon)
            ),
            format!(
                "{} / {:.2}",
                ms(ReadPoint::cpu(&p.reference)),
                ReadPoint::switches(&p.reference)
            ),
        );
        json.insert(
            format!("reads_{}", p.conns),
            serde_json::json!({
                "daemon_rps": ReadPoint::rps(&p.daemon),
                "reference_rps": ReadPoint::rps(&p.reference),
                "daemon_p50_us": ReadPoint::pct(&p.daemon, 50.0).as_micros() as u64,
                "daemon_p99_us": ReadPoint::pct(&p.daemon, 99.0).as_micros() as u64,
                "reference_p50_us": ReadPoint::pct(&p.reference, 50.0).as_micros() as u64,
                "reference_p99_us": ReadPoint::pct(&p.reference, 99.0).as_micros() as u64,
                "throughput_ratio": p.throughput_ratio(),
                "p99_ratio": p.p99_ratio(),
                "daemon_cpu_ns_per_request": ReadPoint::cpu(&p.daemon).as_nanos() as u64,
                "reference_cpu_ns_per_request": ReadPoint::cpu(&p.reference).as_nanos() as u64,
                "daemon_switches_per_request": ReadPoint::switches(&p.daemon),
                "reference_switches_per_request": ReadPoint::switches(&p.reference),
            }),
        );
    }
    for p in &attribution {
        report.info(
            "Key reads (GET /v1/keys/api_key, keep-alive, closed loop)",
            format!(
                "{} conn, attribution: minimal hyper + the daemon's hyper settings: req/s (ratio), CPU per request",
                p.conns
            ),
            format!(
                "{:.0} ({:.2}), {}",
                ReadPoint::rps(&p.daemon),
                p.throughput_ratio(),
                ms(ReadPoint::cpu(&p.daemon))
            ),
            format!(
                "{:.0}, {}",
                ReadPoint::rps(&p.reference),
                ms(ReadPoint::cpu(&p.reference))
            ),
        );
    }
    report.info(
        "Key reads (GET /v1/keys/api_key, keep-alive, closed loop)",
        "daemon peak RSS during the read load (VmHWM)",
        mib(peak),
        "",
    );
    Ok(())
}

fn idle_row(report: &mut Report, what: &str, idle: &scenarios::Idle, gated: bool) {
    let threads = if idle.by_thread.is_empty() {
        "none".to_owned()
    } else {
        idle.by_thread
            .iter()
            .map(|(n, c)| format!("{n}×{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.check(
        "Idle",
        format!(
            "wake-ups/s over {} s idle, {what} (threads that woke: {threads})",
            idle.window.as_secs()
        ),
        format!("{:.1}", idle.per_sec()),
        "",
        "no periodic wake-ups (≤ 0.2/s)",
        idle.per_sec() <= MAX_IDLE_WAKEUPS,
        gated,
    );
}

async fn managed_section(
    report: &mut Report,
    json: &mut serde_json::Map<String, serde_json::Value>,
    bin: &Path,
    plan: &Plan,
    ci: bool,
) -> std::io::Result<()> {
    let sandbox = scenarios::Sandbox::start().await?;
    let mut lives = Vec::new();
    let mut firsts = Vec::new();
    let mut delays = Vec::new();
    let mut spreads = Vec::new();
    let mut cpus = Vec::new();
    let mut client_cpus = Vec::new();
    let mut firsts_answer = Vec::new();
    let mut rounds = 0;
    let mut attempts = 0;
    while rounds < plan.managed_rounds {
        attempts += 1;
        let start = scenarios::managed_start(bin, &sandbox).await?;
        lives.push(start.live);
        firsts.push(start.first_key);
        if rounds == 0 && attempts == 1 {
            // Let the first exchange's connections and the start-up settle, then stay away.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let idle = scenarios::idle(start.server.pid(), plan.idle_window).await?;
            idle_row(report, "managed key (refresh timer armed)", &idle, true);
            json.insert("idle_managed_switches".into(), idle.switches.into());
            // The static figure of §12 is a daemon that never talks to Datadog; a managed one
            // also holds the TLS client, its root store and the AWS credential provider.
            let rss = procfs::rss_kib(start.server.pid())?;
            report.info(
                "Memory and size",
                "RSS idle, managed key (after the first exchange, static-env credentials)",
                mib(rss),
                "",
            );
            json.insert("managed_idle_rss_kib".into(), rss.into());
        }
        let f = scenarios::fan_out(&start).await?;
        let p99 = loadgen::percentile(&f.delays, 99.0);
        eprintln!(
            "    round {}: first key {}, fan-out first {} p50 {} p99 {} max {}",
            rounds + 1,
            ms(start.first_key),
            ms(loadgen::percentile(&f.delays, 0.0)),
            ms(loadgen::percentile(&f.delays, 50.0)),
            ms(p99),
            ms(loadgen::percentile(&f.delays, 100.0)),
        );
        if ci && p99 > FAN_OUT_CI_BOUND && attempts == 1 {
            // One more daemon before failing (see the CI bound's doc).
            continue;
        }
        cpus.push(f.daemon_cpu);
        client_cpus.push(f.client_cpu);
        firsts_answer.push(loadgen::percentile(&f.delays, 0.0));
        delays.extend(f.delays);
        spreads.extend(f.spread);
        rounds += 1;
    }
    delays.sort_unstable();
    spreads.sort_unstable();
    lives.sort_unstable();
    firsts.sort_unstable();
    let n = firsts.len();
    report.info(
        "Start-up",
        format!(
            "exec → first managed key served, loopback moto + Datadog emulator (median of {n})"
        ),
        ms(firsts[n / 2]),
        "Agent: blocks its start-up on this fetch (wire spec §3.2)",
    );
    let p50 = loadgen::percentile(&delays, 50.0);
    let p99 = loadgen::percentile(&delays, 99.0);
    let max = loadgen::percentile(&delays, 100.0);
    let section = "Rotation fan-out (1,000 long polls, key rotated by a rejection report)";
    report.check(
        section,
        format!(
            "publication → waiter's first byte, p50 / p99 / max ({} waiters × {} rounds)",
            CLIENTS, rounds
        ),
        format!("{} / {} / {}", ms(p50), ms(p99), ms(max)),
        "SPIRE: 30–60 s propagation (peers.md)",
        "all within 5 ms",
        max <= FAN_OUT_TARGET,
        false,
    );
    report.check(
        section,
        "same, CI bound on p99",
        ms(p99),
        "",
        format!("p99 ≤ {}", ms(FAN_OUT_CI_BOUND)),
        p99 <= FAN_OUT_CI_BOUND,
        true,
    );
    report.info(
        section,
        "first waiter → each waiter (no cross-process clock), p50 / p99 / max",
        format!(
            "{} / {} / {}",
            ms(loadgen::percentile(&spreads, 50.0)),
            ms(loadgen::percentile(&spreads, 99.0)),
            ms(loadgen::percentile(&spreads, 100.0))
        ),
        "",
    );
    cpus.sort_unstable();
    client_cpus.sort_unstable();
    report.info(
        section,
        "publication → the first waiter's answer, per round",
        firsts_answer
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", "),
        "",
    );
    report.info(
        section,
        "CPU from the report to the last answer, daemon (forced exchange + 1,000 answers) / client process (1,000 readers + emulator); medians",
        format!(
            "{} / {}",
            ms(cpus[cpus.len() / 2]),
            ms(client_cpus[client_cpus.len() / 2])
        ),
        "",
    );
    json.insert(
        "managed".into(),
        serde_json::json!({
            "live_us": lives.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>(),
            "first_key_us": firsts.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>(),
            "fan_out_p50_us": p50.as_micros() as u64,
            "fan_out_p99_us": p99.as_micros() as u64,
            "fan_out_max_us": max.as_micros() as u64,
            "fan_out_daemon_cpu_us": cpus.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>(),
            "fan_out_client_cpu_us": client_cpus.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>(),
        }),
    );
    drop(sandbox);
    Ok(())
}

/// The token schedule's cost (exchanges per lifetime: one or two, never more, by the margin
/// rule) and its latency to a consumer.
async fn token_section(
    report: &mut Report,
    json: &mut Json,
    bin: &Path,
    plan: &Plan,
) -> std::io::Result<()> {
    let sandbox = scenarios::Sandbox::start().await?;
    let t = scenarios::token_steady(bin, &sandbox, plan.token_lifetime, plan.token_window).await?;
    let section = "Delegated API tokens (steady state, one long-polling consumer)";
    let run = format!(
        "{} s tokens, {} s watched",
        t.lifetime.as_secs(),
        t.window.as_secs()
    );
    let per_lifetime = t.exchanges as f64 * t.lifetime.as_secs_f64() / t.window.as_secs_f64();
    report.check(
        section,
        format!("token exchanges per token lifetime ({run})"),
        format!("{per_lifetime:.2} ({} exchanges)", t.exchanges),
        "API clients: 1, re-exchanged only once expired (wire spec §8.1)",
        "≤ 2 (refresh in the last half of the margin, margin ≤ half the lifetime)",
        per_lifetime <= 2.0,
        true,
    );
    report.check(
        section,
        "answers carrying a token at or past its expiry",
        t.stale.to_string(),
        "",
        "0",
        t.stale == 0,
        true,
    );
    let p50 = loadgen::percentile(&t.delays, 50.0);
    let max = loadgen::percentile(&t.delays, 100.0);
    report.info(
        section,
        format!(
            "publication → consumer's first byte, p50 / max ({} rotations)",
            t.delays.len()
        ),
        format!("{} / {}", ms(p50), ms(max)),
        "",
    );
    json.insert(
        "tokens".into(),
        serde_json::json!({
            "lifetime_s": t.lifetime.as_secs(),
            "window_s": t.window.as_secs(),
            "exchanges": t.exchanges,
            "exchanges_per_lifetime": per_lifetime,
            "rotation_to_consumer_us": t.delays.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>(),
            "stale_answers": t.stale,
        }),
    );
    Ok(())
}

fn fleet_section(
    report: &mut Report,
    json: &mut serde_json::Map<String, serde_json::Value>,
    outcomes: &[fleet::Outcome],
) {
    let section = "Fleet simulation (100,000 daemons, 60-min interval, 1-min bins; peak/mean)";
    report.info(
        section,
        "mean load (req/s): ours / Agent",
        format!(
            "{:.1}",
            fleet::mean_per_bin(fleet::Policy::Ours) / fleet::BIN_SECS
        ),
        format!(
            "{:.1}",
            fleet::mean_per_bin(fleet::Policy::Agent) / fleet::BIN_SECS
        ),
    );
    let mut out = Vec::new();
    for o in outcomes {
        let outage = o.scenario.outage.is_some();
        for (label, ours, agent) in o.ratios() {
            let measure = format!("{}: {label}", o.scenario.name);
            out.push(serde_json::json!({"measure": measure, "ours": ours, "agent": agent}));
            let gated_window = if outage {
                label.starts_with("recovery")
            } else {
                label.starts_with("hours") || label.starts_with("everything")
            };
            let limit = if outage {
                MAX_RECOVERY_PEAK
            } else {
                MAX_STEADY_PEAK
            };
            let agent_text = format!("Agent {agent:.2}");
            if gated_window || (!outage && label.starts_with("first")) || label.starts_with("after")
            {
                report.check(
                    section,
                    measure,
                    format!("{ours:.2}"),
                    agent_text,
                    format!("≤ {limit}"),
                    ours <= limit,
                    gated_window,
                );
            } else {
                report.info(section, measure, format!("{ours:.2}"), agent_text);
            }
        }
    }
    json.insert("fleet".into(), out.into());
}

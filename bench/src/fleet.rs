//! The fleet simulation of product §12: 100,000 daemons in virtual time, driven by exactly the
//! daemon's refresh policy ([`schedule::Pacer`], used as `src/lifecycle/state.rs` uses it), beside the
//! Go Agent's policy (wire spec §3.1) simulated in the same run on the same start times.
//!
//! Daemons never interact (each talks to Datadog on its own), so each one's timeline is simulated
//! on its own, start to horizon, and its exchanges are counted into 1-minute bins of the load on
//! the exchange endpoint. Failed exchanges count too: during an outage the endpoint still receives
//! them.

use std::time::Duration;

use datadog_delegated_auth::schedule::{self, Cause, Lane, Pacer};

/// Daemons in the fleet.
pub const FLEET: usize = 100_000;
/// `refresh_interval_mins` default (product §2.1, wire spec §3.1).
pub const INTERVAL: Duration = Duration::from_secs(3600);
/// `refresh.retry_min` default (product §2.2).
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// `refresh.retry_max` default (product §2.2).
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Width of a load bin.
pub const BIN_SECS: f64 = 60.0;

const HOUR: f64 = 3600.0;

/// Whose refresh policy a daemon follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// This daemon: [`schedule::Pacer`].
    Ours,
    /// The Go Agent: `interval ± 10%`, and on failure cenkalti backoff starting at the interval,
    /// doubling, capped at 1 h, `± 10%`.
    Agent,
}

impl Policy {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Ours => "datadog-delegated-auth",
            Policy::Agent => "Go Agent (wire spec §3.1)",
        }
    }

    /// Mean time between routine refreshes; the steady load is `FLEET / mean`.
    pub fn mean_period(self, interval: Duration) -> Duration {
        match self {
            Policy::Ours => schedule::mean_refresh_delay(interval),
            // Uniform in [0.9·I, 1.1·I].
            Policy::Agent => interval,
        }
    }
}

/// `cenkalti/backoff` `ExponentialBackOff` as the Agent configures it (`newBackoff`, wire spec
/// §3.1): `InitialInterval` = the refresh interval, `Multiplier` 2, `MaxInterval` 1 h,
/// `RandomizationFactor` 0.1, no `MaxElapsedTime`.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentBackoff {
    initial: f64,
    current: f64,
}

impl AgentBackoff {
    const MULTIPLIER: f64 = 2.0;
    const MAX_INTERVAL: f64 = HOUR;
    const RANDOMIZATION: f64 = 0.1;

    /// A fresh backoff (`NewExponentialBackOff` + `Reset`).
    pub fn new(interval: Duration) -> Self {
        let s = interval.as_secs_f64();
        AgentBackoff {
            initial: s,
            current: s,
        }
    }

    /// `Reset()`: back to the initial interval (after a successful refresh).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// `NextBackOff()`: the jittered current interval, then `current = min(current·2, 1h)` (with
    /// cenkalti's jump straight to the cap once `current ≥ cap/2`).
    pub fn next(&mut self, u: f64) -> Duration {
        let delta = Self::RANDOMIZATION * self.current;
        let value = self.current - delta + u * 2.0 * delta;
        self.current = if self.current >= Self::MAX_INTERVAL / Self::MULTIPLIER {
            Self::MAX_INTERVAL
        } else {
            self.current * Self::MULTIPLIER
        };
        Duration::from_secs_f64(value)
    }
}

/// One daemon's policy state.
enum Daemon {
    Ours { pacer: Pacer, has_key: bool },
    Agent(AgentBackoff),
}

impl Daemon {
    fn new(policy: Policy) -> Self {
        match policy {
            Policy::Ours => Daemon::Ours {
                pacer: Pacer::new(INTERVAL, RETRY_MIN, RETRY_MAX),
                has_key: false,
            },
            Policy::Agent => Daemon::Agent(AgentBackoff::new(INTERVAL)),
        }
    }

    /// Delay after an exchange with outcome `ok`, exactly as each implementation decides it.
    fn after(&mut self, ok: bool, first: bool, rng: &mut fastrand::Rng) -> Duration {
        match self {
            // As `lifecycle/state.rs` `step`: success → `after_success(forced = false)` (a first key
            // re-phases inside the pacer); failure → the relaxed lane while a managed key is
            // served (no rejection reports in the simulation), the urgent lane otherwise. An
            // outage is the API answering 5xx (`Cause::Answered`), as Datadog's do.
            Daemon::Ours { pacer, has_key } => {
                if ok {
                    *has_key = true;
                    pacer.after_success(false, rng.f64())
                } else {
                    let lane = if *has_key {
                        Lane::Relaxed
                    } else {
                        Lane::Urgent
                    };
                    pacer.after_failure(lane, Cause::Answered, None, rng.f64(), rng.f64())
                }
            }
            // As `delegatedauth.go` (wire spec §3.2): the start-up fetch is followed by
            // `NextBackOff()` whatever its outcome; a tick's success resets the backoff first.
            Daemon::Agent(b) => {
                if ok && !first {
                    b.reset();
                }
                b.next(rng.f64())
            }
        }
    }
}

/// A scenario: when each daemon starts, when exchanges fail, how long to simulate.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short name (chart panel, table row).
    pub name: &'static str,
    /// Start time of each daemon, in seconds.
    pub starts: Vec<f64>,
    /// Every exchange in `[from, to)` seconds fails.
    pub outage: Option<(f64, f64)>,
    /// End of the simulation, in seconds.
    pub horizon: f64,
    /// Windows to report, `(label, from, to)` in seconds.
    pub windows: Vec<(&'static str, f64, f64)>,
}

impl Scenario {
    /// Steady state: daemons started at independent uniform times over two intervals (organic
    /// churn), observed for 12 hours once every phase is settled.
    pub fn steady(rng: &mut fastrand::Rng) -> Scenario {
        Scenario {
            name: "steady state",
            starts: (0..FLEET).map(|_| rng.f64() * 2.0 * HOUR).collect(),
            outage: None,
            horizon: 15.0 * HOUR,
            windows: vec![("hours 3–15", 3.0 * HOUR, 15.0 * HOUR)],
        }
    }

    /// Mass restart: every daemon starts at `t = 0` (a fleet-wide deploy or reboot).
    pub fn mass_restart() -> Scenario {
        Scenario {
            name: "mass restart at t=0",
            starts: vec![0.0; FLEET],
            outage: None,
            horizon: 24.0 * HOUR,
            windows: vec![
                (
                    "first interval (1 min–1 h, restart minute excluded)",
                    BIN_SECS,
                    HOUR,
                ),
                ("after the first interval (1–24 h)", HOUR, 24.0 * HOUR),
                ("everything after the restart minute", BIN_SECS, 24.0 * HOUR),
                ("last hour (23–24 h)", 23.0 * HOUR, 24.0 * HOUR),
            ],
        }
    }

    /// A steady fleet that loses Datadog for 30 minutes (every exchange fails), then recovers.
    pub fn outage(rng: &mut fastrand::Rng) -> Scenario {
        let (from, to) = (6.0 * HOUR, 6.5 * HOUR);
        Scenario {
            name: "30-minute outage at 6 h",
            starts: (0..FLEET).map(|_| rng.f64() * 2.0 * HOUR).collect(),
            outage: Some((from, to)),
            horizon: 12.0 * HOUR,
            windows: vec![
                ("during the outage", from, to),
                ("recovery (6.5–12 h)", to, 12.0 * HOUR),
            ],
        }
    }
}

/// Requests to the exchange endpoint per bin.
pub fn simulate(policy: Policy, scenario: &Scenario, seed: u64) -> Vec<u32> {
    let bins = (scenario.horizon / BIN_SECS).ceil() as usize;
    let mut load = vec![0u32; bins];
    let mut rng = fastrand::Rng::with_seed(seed);
    let failing = |t: f64| scenario.outage.is_some_and(|(a, b)| t >= a && t < b);
    for &start in &scenario.starts {
        let mut daemon = Daemon::new(policy);
        let mut t = start;
        let mut first = true;
        while t < scenario.horizon {
            load[(t / BIN_SECS) as usize] += 1;
            t += daemon.after(!failing(t), first, &mut rng).as_secs_f64();
            first = false;
        }
    }
    load
}

/// Peak bin over the policy's steady mean, in `[from, to)` seconds.
pub fn peak_over_mean(load: &[u32], policy: Policy, from: f64, to: f64) -> f64 {
    let a = (from / BIN_SECS) as usize;
    let b = ((to / BIN_SECS) as usize).min(load.len());
    let peak = load[a..b].iter().copied().max().unwrap_or(0);
    f64::from(peak) / mean_per_bin(policy)
}

/// The steady load per bin: `FLEET · BIN / mean period`.
pub fn mean_per_bin(policy: Policy) -> f64 {
    FLEET as f64 * BIN_SECS / policy.mean_period(INTERVAL).as_secs_f64()
}

/// One scenario simulated under both policies.
pub struct Outcome {
    /// The scenario.
    pub scenario: Scenario,
    /// Load per bin under this daemon's policy.
    pub ours: Vec<u32>,
    /// Load per bin under the Agent's policy.
    pub agent: Vec<u32>,
}

impl Outcome {
    /// `(label, ours, agent)` peak/mean per window of the scenario.
    pub fn ratios(&self) -> Vec<(&'static str, f64, f64)> {
        self.scenario
            .windows
            .iter()
            .map(|&(label, from, to)| {
                (
                    label,
                    peak_over_mean(&self.ours, Policy::Ours, from, to),
                    peak_over_mean(&self.agent, Policy::Agent, from, to),
                )
            })
            .collect()
    }
}

/// The three scenarios of product §12, each under both policies, from one seed.
pub fn run_all(seed: u64) -> Vec<Outcome> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let scenarios = [
        Scenario::steady(&mut rng),
        Scenario::mass_restart(),
        Scenario::outage(&mut rng),
    ];
    scenarios
        .into_iter()
        .enumerate()
        .map(|(i, scenario)| {
            let s = seed.wrapping_add(1000 * i as u64);
            Outcome {
                ours: simulate(Policy::Ours, &scenario, s + 1),
                agent: simulate(Policy::Agent, &scenario, s + 2),
                scenario,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: f64 = 60.0;

    #[test]
    fn agent_backoff_follows_the_wire_spec() {
        // Default 60-minute interval: every wait is 54–66 minutes, success or not.
        let mut b = AgentBackoff::new(INTERVAL);
        for i in 0..50 {
            let u = f64::from(i) / 49.0;
            let d = b.next(u).as_secs_f64() / MIN;
            assert!((54.0..=66.0).contains(&d), "{d}");
        }
        assert_eq!(b.next(0.0).as_secs_f64() / MIN, 54.0);
        assert_eq!(b.next(1.0).as_secs_f64() / MIN, 66.0);
        // A 20-minute interval: 20 → 40 → capped at 60, each ± 10%; reset goes back to 20.
        let mut b = AgentBackoff::new(Duration::from_secs(20 * 60));
        let waits: Vec<f64> = (0..4).map(|_| b.next(0.5).as_secs_f64() / MIN).collect();
        assert_eq!(waits, vec![20.0, 40.0, 60.0, 60.0]);
        b.reset();
        assert_eq!(b.next(0.0).as_secs_f64() / MIN, 18.0);
    }

    fn small(starts: Vec<f64>, outage: Option<(f64, f64)>, horizon: f64) -> Scenario {
        Scenario {
            name: "test",
            starts,
            outage,
            horizon,
            windows: vec![],
        }
    }

    #[test]
    fn steady_load_matches_each_policys_mean() {
        let mut rng = fastrand::Rng::with_seed(1);
        let starts: Vec<f64> = (0..5_000).map(|_| rng.f64() * 2.0 * HOUR).collect();
        let s = small(starts, None, 10.0 * HOUR);
        for policy in [Policy::Ours, Policy::Agent] {
            let load = simulate(policy, &s, 9);
            let window = &load[(3.0 * HOUR / BIN_SECS) as usize..];
            let total: u32 = window.iter().sum();
            let expected = 5_000.0 * 7.0 * HOUR / policy.mean_period(INTERVAL).as_secs_f64();
            let err = (f64::from(total) - expected).abs() / expected;
            assert!(err < 0.02, "{policy:?}: {total} vs {expected}");
        }
    }

    #[test]
    fn agent_stays_synchronised_after_a_restart_and_ours_does_not() {
        let s = small(vec![0.0; 5_000], None, 6.0 * HOUR);
        let agent = simulate(Policy::Agent, &s, 3);
        let ours = simulate(Policy::Ours, &s, 4);
        // The Agent: nothing between the restart minute and 54 minutes, then a wave.
        assert!(agent[1..54].iter().all(|&n| n == 0));
        let agent_mean = 5_000.0 * BIN_SECS / HOUR;
        let agent_peak = f64::from(*agent[BIN_SECS as usize..].iter().max().unwrap());
        assert!(agent_peak / agent_mean > 3.0, "{}", agent_peak / agent_mean);
        // Ours: requests in every minute of the first interval.
        assert!(ours[1..60].iter().all(|&n| n > 0));
    }

    #[test]
    fn failures_during_an_outage_are_counted_and_every_daemon_comes_back() {
        let s = small(vec![0.0; 1_000], Some((0.0, 600.0)), 2.0 * HOUR);
        // Ours, without a key (urgent lane): retries within retry_max while it lasts.
        let ours = simulate(Policy::Ours, &s, 5);
        let during: u32 = ours[..10].iter().sum();
        assert!(during > 5 * 1_000, "{during}");
        // The Agent waits a full interval after its failed start-up fetch.
        let agent = simulate(Policy::Agent, &s, 6);
        assert_eq!(agent[0], 1_000);
        assert!(agent[1..54].iter().all(|&n| n == 0));
    }
}

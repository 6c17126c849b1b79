//! When to exchange next: the refresh and retry policy, as pure functions of the configuration
//! and a random draw (product §6, §12).
//!
//! Nothing here reads a clock or a random generator: every function takes the uniform draw
//! `u ∈ [0, 1)` it needs, so the refresh manager ([`crate::lifecycle`]) and the fleet simulation
//! drive exactly the same code, and tests can check bounds over many draws.
//!
//! # The problem
//!
//! A fleet of daemons talks to one Datadog API. What hurts it is not the mean exchange rate
//! (`N / mean interval`, fixed by the refresh interval) but peaks: many daemons exchanging in the
//! same minute. Peaks come from *synchronised phases*. The Agent (wire spec §3.1) waits
//! `interval ± 10%` after every exchange, so when a whole fleet restarts at once (a deploy, a
//! region-wide reboot), every daemon's refresh lands in the same ±6 minutes an hour later, then
//! again an hour after that, with the cluster widening only like `√k · 6%` after `k` intervals:
//! the fleet stays synchronised for a day or more. After an outage the Agent is accidentally
//! well behaved (it waits a full interval after a failure, so retries land where the missed
//! refreshes would have), but a daemon without a key then waits an hour, which product §6 rules
//! out.
//!
//! # The policy
//!
//! 1. **Steady refresh** ([`next_refresh_delay`]): after a routine refresh, wait a draw uniform in
//!    `[0.8·interval, interval]`. Never later than the configured interval (a key is never older
//!    than the operator asked for), 10% early on average, and enough spread that an accidental
//!    cluster keeps widening.
//!
//! 2. **Re-phasing** ([`first_refresh_delay`]): whenever a daemon's phase may be shared with many
//!    others (its first key after a start or a reload, a key obtained by a forced refresh after
//!    a rejection report, a key obtained after failures while nothing managed was served), the
//!    next refresh is drawn from the *equilibrium* (forward-recurrence) distribution of the
//!    steady delay: density `P(T > x) / E[T]`, uniform up to `0.8·interval` then falling linearly
//!    to zero at `interval`. Renewal theory: a renewal process whose first delay has that
//!    distribution is stationary from time zero, so after a mass restart the fleet's refresh rate
//!    is flat at `N / E[T]` from the very first interval instead of converging over days. The
//!    price is one early refresh per daemon per restart.
//!
//! 3. **Two retry lanes** after a failed exchange ([`Lane`]):
//!    - [`Lane::Urgent`]: nothing managed is served (startup, fallback, a key reported rejected).
//!      Retry with capped exponential backoff and full jitter between `retry_min` and `retry_max`
//!      ([`retry_delay`]), forever. This is what product §6 asks for, and it is what matters to
//!      an operator: a daemon that has no managed key gets one seconds after the cause is fixed.
//!    - [`Lane::Relaxed`]: a managed key that nobody reported rejected is still served, so
//!      there is no hurry and the fleet's load matters more. When the request got no answer
//!      from the Datadog API ([`Cause::Unanswered`]: a refused connection, a timeout, AWS
//!      credentials not ready), retry [`QUICK_RETRIES`] times with the same backoff (a blip of a
//!      few seconds on one host costs nothing), then wait for the next *beat*: a steady draw, as
//!      if the refresh had succeeded. When the API itself answered with an error
//!      ([`Cause::Answered`]: 5xx, 429, 401/403, an unusable body), go to the next beat at once:
//!      every daemon of the fleet sees the same answer, and quick retries from all of them
//!      would multiply the load on a service that may be failing from overload (the fleet
//!      simulation measured 4.2× the mean load during an outage with quick retries after 5xx,
//!      1.0× without). A key then serves one more interval (the Agent does the same for every
//!      failure), and a consumer that does get a 403 reports it, which moves the instance to
//!      the urgent lane at once.
//!
//!    Why the relaxed lane cannot simply use `retry_max`: during a 30-minute outage a fleet on a
//!    60-minute interval accumulates a backlog of about `30 / 54 ≈ 55%` of its daemons. With
//!    every one of them retrying within `retry_max` (5 minutes by default) of the recovery, the
//!    first minutes carry about `30 / 5 = 6×` the mean load, more than the `2×` of product §12.
//!    Longer caps do not save it: a backoff that starts at seconds keeps the daemons that failed
//!    recently retrying fast, and the recovery peak grows like the logarithm of the outage. An
//!    exploratory simulation (100,000 daemons, 1-minute bins, 30-minute outage) measured 12.8×
//!    for doubling capped at 5 minutes, 6.1–6.3× with caps of 30 or 60 minutes, 4.5× even when
//!    quadrupling. Spreading retries uniformly over up to an interval, ignoring each daemon's
//!    phase, still peaked at 1.7–1.9×: the retries pile onto the refreshes of the daemons that
//!    did not miss a beat. Going back to the daemon's own beat puts every retry where the missed
//!    refresh would have been, so the recovery looks like the steady state (same simulation:
//!    1.14×, about 0.1 of it the quick retries of daemons that failed just before the end).
//!    Success after a relaxed failure keeps the phase (steady draw); success after an urgent one
//!    re-phases (rule 2), because many daemons may have been waiting for the same recovery.
//!
//! 4. **`Retry-After`** ([`retry_after_delay`]): the server's hint is a floor, capped at
//!    [`MAX_RETRY_AFTER`] (a buggy or hostile header must not park a daemon for days), plus up to
//!    [`RETRY_AFTER_SPREAD`] of it so that daemons told the same value do not come back in the
//!    same second.
//!
//! 5. **Tokens** ([`token_refresh_delay`]): a delegated API token carries its own expiry, so
//!    its refresh follows the token, not an interval: it lands inside the last `margin` of the
//!    token's life, in `[expires − margin, expires − margin/2]`, uniformly. The jitter spreads
//!    a fleet whose tokens were issued together; the half margin it never uses is left for
//!    retries before the token expires. The margin is `refresh_before`, or by default a quarter
//!    of the lifetime but at least [`TOKEN_MIN_DEFAULT_MARGIN`]; in every case at most half the
//!    lifetime ([`token_margin`]), so a token is used for at least half its life and a short
//!    lifetime cannot turn the refresh into a busy loop. A failure before expiry retries on the
//!    urgent backoff, never later than the expiry itself.
//!
//! [`Pacer`] packages these rules with the little state they need (the attempt counter and the
//! lane of the last failure), for the manager and the fleet simulation alike.

use std::time::Duration;

/// The steady refresh delay is drawn in `[STEADY_FLOOR · interval, interval]`.
pub const STEADY_FLOOR: f64 = 0.8;

/// Retries with the urgent backoff before a daemon that still serves a healthy managed key waits
/// for its next beat. Three retries span about 10 s with `retry_min = 1s`: enough to ride out a
/// dropped connection, short enough that few daemons are mid-burst when an outage ends.
pub const QUICK_RETRIES: u32 = 3;

/// Longest `Retry-After` honoured. An hour is the Agent's longest wait, and far longer than any
/// throttling window Datadog documents; beyond it the header is more likely a bug than advice.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Extra wait added to `Retry-After`, as a fraction of it, drawn uniformly.
pub const RETRY_AFTER_SPREAD: f64 = 0.1;

/// Shortest refresh interval the policy works with; shorter inputs are raised to it so that a
/// misconfiguration cannot turn the refresh loop into a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest retry delay, for the same reason (`retry_min: 0s`).
pub const MIN_RETRY: Duration = Duration::from_millis(100);

/// Clamps a draw into `[0, 1)` so that callers passing a value from another generator cannot push
/// a delay outside its window.
fn unit(u: f64) -> f64 {
    if u.is_nan() {
        0.0
    } else {
        u.clamp(0.0, 1.0 - f64::EPSILON)
    }
}

/// Delay until the next routine refresh: uniform in `[0.8·interval, interval]`.
pub fn next_refresh_delay(interval: Duration, u: f64) -> Duration {
    let interval = interval.max(MIN_INTERVAL).as_secs_f64();
    Duration::from_secs_f64(interval * (STEADY_FLOOR + (1.0 - STEADY_FLOOR) * unit(u)))
}

/// Mean of [`next_refresh_delay`]: the fleet's mean load is `daemons / mean_refresh_delay`.
pub fn mean_refresh_delay(interval: Duration) -> Duration {
    interval
        .max(MIN_INTERVAL)
        .mul_f64((1.0 + STEADY_FLOOR) / 2.0)
}

/// Delay until the first refresh after a re-phasing event (see the module doc, rule 2): a draw
/// from the equilibrium distribution of [`next_refresh_delay`], in `[0, interval]`.
///
/// Inverse of the CDF of the density `P(T > x) / E[T]` with `T` uniform in `[a·I, I]`:
/// flat `1/E[T]` on `[0, a·I]` (mass `a·I / E[T]`), then a linear ramp down to zero at `I`.
pub fn first_refresh_delay(interval: Duration, u: f64) -> Duration {
    let interval = interval.max(MIN_INTERVAL).as_secs_f64();
    let u = unit(u);
    let mean = interval * (1.0 + STEADY_FLOOR) / 2.0;
    let flat = STEADY_FLOOR * interval;
    let flat_mass = flat / mean;
    let x = if u < flat_mass {
        u * mean
    } else {
        // Solve ∫_0^s (L - t) / (L · mean) dt = v for s, with L the ramp's width.
        let ramp = interval - flat;
        let v = u - flat_mass;
        let s = ramp - (ramp * ramp - 2.0 * ramp * mean * v).max(0.0).sqrt();
        flat + s
    };
    Duration::from_secs_f64(x.clamp(0.0, interval))
}

/// Capped exponential backoff with full jitter: after the `attempt`-th consecutive failure
/// (1-based), a draw uniform in `[retry_min, min(retry_max, retry_min · 2^attempt)]`.
///
/// Full jitter (rather than `window/2 + jitter`) is what spreads many clients that failed at the
/// same moment. Never below [`MIN_RETRY`]; a `retry_max` below `retry_min` is treated as equal.
pub fn retry_delay(attempt: u32, retry_min: Duration, retry_max: Duration, u: f64) -> Duration {
    let min = retry_min.max(MIN_RETRY).as_secs_f64();
    let max = retry_max.as_secs_f64().max(min);
    // 2^64 already dwarfs any sane retry_max; capping the exponent keeps the float finite.
    let window = (min * 2f64.powi(attempt.clamp(1, 64) as i32)).min(max);
    Duration::from_secs_f64(min + (window - min) * unit(u))
}

/// The wait a `Retry-After` answer imposes: at least the server's value (capped at
/// [`MAX_RETRY_AFTER`]), plus up to [`RETRY_AFTER_SPREAD`] of it.
pub fn retry_after_delay(retry_after: Duration, u: f64) -> Duration {
    let base = retry_after.min(MAX_RETRY_AFTER);
    base + base.mul_f64(RETRY_AFTER_SPREAD * unit(u))
}

/// The default token margin is a quarter of the lifetime, but at least this (product §13).
pub const TOKEN_MIN_DEFAULT_MARGIN: Duration = Duration::from_secs(60);

/// How long before its expiry a token of `lifetime` is refreshed: `refresh_before` when set,
/// else a quarter of the lifetime but at least [`TOKEN_MIN_DEFAULT_MARGIN`]; never more than
/// half the lifetime (module doc, rule 5).
pub fn token_margin(lifetime: Duration, refresh_before: Option<Duration>) -> Duration {
    let wanted = refresh_before.unwrap_or_else(|| (lifetime / 4).max(TOKEN_MIN_DEFAULT_MARGIN));
    wanted.min(lifetime / 2)
}

/// Delay, from when a token of `lifetime` was obtained, until its refresh: uniform in
/// `[lifetime − margin, lifetime − margin/2]` (module doc, rule 5). Never below
/// [`MIN_RETRY`], so a token that arrives (nearly) expired cannot make a busy loop.
pub fn token_refresh_delay(
    lifetime: Duration,
    refresh_before: Option<Duration>,
    u: f64,
) -> Duration {
    let margin = token_margin(lifetime, refresh_before);
    let earliest = lifetime.saturating_sub(margin);
    (earliest + margin.mul_f64(0.5 * unit(u))).max(MIN_RETRY)
}

/// Where an exchange failed, which decides whether quick retries can help (module doc, rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// No answer from the Datadog API: connection refused or reset, DNS, a timeout, AWS
    /// credentials or the proof unavailable. Often local to one host, and often gone in seconds.
    Unanswered,
    /// The Datadog API answered with an error. Every daemon of the fleet gets the same answer,
    /// so quick retries would only add load to the service.
    Answered,
}

/// Which retry policy applies after a failure (module doc, rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Nothing managed is served, or the served managed key was reported rejected.
    Urgent,
    /// A healthy managed key is still served.
    Relaxed,
}

/// The refresh policy of one exchange, with the state it needs between attempts.
///
/// The caller owns the clock and the random generator; the pacer turns outcomes into delays.
/// The first attempt is immediate (product §6). After each attempt, feed its outcome to
/// [`Pacer::after_success`] or [`Pacer::after_failure`] and sleep the returned delay. Use
/// [`Lane::Urgent`] while no managed key is held (or it was reported rejected),
/// [`Lane::Relaxed`] otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct Pacer {
    interval: Duration,
    retry_min: Duration,
    retry_max: Duration,
    /// Failures since the last success (urgent lane) or since the last beat (relaxed lane).
    attempt: u32,
    /// Lane of the last failure, `None` after a success.
    last_failure: Option<Lane>,
    /// No success yet: the next success is a first key and re-phases.
    fresh: bool,
}

impl Pacer {
    /// A pacer for an exchange that has not run yet (its first attempt is immediate).
    pub fn new(interval: Duration, retry_min: Duration, retry_max: Duration) -> Self {
        Pacer {
            interval,
            retry_min,
            retry_max,
            attempt: 0,
            last_failure: None,
            fresh: true,
        }
    }

    /// Changes the parameters (a reload); counters are kept.
    pub fn set_params(&mut self, interval: Duration, retry_min: Duration, retry_max: Duration) {
        self.interval = interval;
        self.retry_min = retry_min;
        self.retry_max = retry_max;
    }

    /// The refresh interval in force.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Delay until the next attempt after a successful exchange. `forced` is true when the
    /// attempt was forced by a rejection report rather than due.
    pub fn after_success(&mut self, forced: bool, u: f64) -> Duration {
        let rephase = forced || self.fresh || self.last_failure == Some(Lane::Urgent);
        self.attempt = 0;
        self.last_failure = None;
        self.fresh = false;
        if rephase {
            first_refresh_delay(self.interval, u)
        } else {
            next_refresh_delay(self.interval, u)
        }
    }

    /// Delay until the next attempt after a failed exchange. `u` draws the backoff or beat, `u2`
    /// the `Retry-After` spread.
    pub fn after_failure(
        &mut self,
        lane: Lane,
        cause: Cause,
        retry_after: Option<Duration>,
        u: f64,
        u2: f64,
    ) -> Duration {
        if self.last_failure != Some(lane) {
            // A change of lane starts a new backoff: a key reported rejected after hours of
            // relaxed failures must be retried within seconds, not at the cap.
            self.attempt = 0;
        }
        self.last_failure = Some(lane);
        self.attempt = self.attempt.saturating_add(1);
        let delay = match lane {
            Lane::Urgent => retry_delay(self.attempt, self.retry_min, self.retry_max, u),
            Lane::Relaxed if cause == Cause::Unanswered && self.attempt <= QUICK_RETRIES => {
                retry_delay(self.attempt, self.retry_min, self.retry_max, u)
            }
            Lane::Relaxed => {
                self.attempt = 0;
                next_refresh_delay(self.interval, u)
            }
        };
        match retry_after {
            Some(ra) => delay.max(retry_after_delay(ra, u2)),
            None => delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_margin_defaults_to_a_quarter_at_least_a_minute_at_most_half() {
        let m = |life: u64, cfg: Option<u64>| {
            token_margin(Duration::from_secs(life), cfg.map(Duration::from_secs)).as_secs()
        };
        assert_eq!(m(3600, None), 900, "a quarter of an hour-long token");
        assert_eq!(m(600, None), 150);
        assert_eq!(m(200, None), 60, "at least a minute");
        assert_eq!(m(20, None), 10, "but never more than half the lifetime");
        assert_eq!(m(3600, Some(120)), 120, "refresh_before as configured");
        assert_eq!(m(3600, Some(3000)), 1800, "capped at half");
        assert_eq!(m(0, None), 0);
    }

    #[test]
    fn token_refresh_lands_in_the_first_half_of_the_margin() {
        for (life, cfg) in [(3600, None), (20, None), (900, Some(300)), (2, None)] {
            let life = Duration::from_secs(life);
            let cfg = cfg.map(Duration::from_secs);
            let margin = token_margin(life, cfg);
            let mut seen_low = Duration::MAX;
            let mut seen_high = Duration::ZERO;
            for u in draws(1000) {
                let d = token_refresh_delay(life, cfg, u);
                assert!(
                    d >= life - margin && d <= life - margin / 2,
                    "{life:?} {d:?}"
                );
                seen_low = seen_low.min(d);
                seen_high = seen_high.max(d);
            }
            assert_eq!(seen_low, life - margin, "the window's start is reached");
            assert!(life - margin / 2 - seen_high < Duration::from_millis(10) + margin / 500);
        }
        assert_eq!(
            token_refresh_delay(Duration::ZERO, None, 0.5),
            MIN_RETRY,
            "an expired token cannot make a busy loop"
        );
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const S: Duration = Duration::from_secs(1);

    /// Evenly spaced draws covering [0, 1), both ends included.
    fn draws(n: usize) -> impl Iterator<Item = f64> {
        (0..n)
            .map(move |i| i as f64 / n as f64)
            .chain([1.0 - f64::EPSILON])
    }

    #[test]
    fn steady_delay_stays_in_its_window_and_covers_it() {
        for interval in [S, Duration::from_secs(90), HOUR, 24 * HOUR] {
            let lo = interval.mul_f64(STEADY_FLOOR);
            let mut seen_lo = interval;
            let mut seen_hi = Duration::ZERO;
            for u in draws(10_000) {
                let d = next_refresh_delay(interval, u);
                assert!(
                    d >= lo && d <= interval,
                    "{d:?} outside [{lo:?}, {interval:?}]"
                );
                seen_lo = seen_lo.min(d);
                seen_hi = seen_hi.max(d);
            }
            assert!(seen_lo - lo < interval / 1000, "window start not reached");
            assert!(
                interval - seen_hi < interval / 1000,
                "window end not reached"
            );
        }
    }

    #[test]
    fn out_of_range_draws_and_tiny_intervals_are_clamped() {
        assert_eq!(next_refresh_delay(HOUR, -3.0), HOUR.mul_f64(STEADY_FLOOR));
        assert!(next_refresh_delay(HOUR, 7.0) <= HOUR);
        assert!(next_refresh_delay(HOUR, f64::NAN) >= HOUR.mul_f64(STEADY_FLOOR));
        assert!(next_refresh_delay(Duration::ZERO, 0.0) >= MIN_INTERVAL.mul_f64(STEADY_FLOOR));
        assert!(first_refresh_delay(HOUR, 2.0) <= HOUR);
        assert!(retry_delay(1, Duration::ZERO, Duration::ZERO, 0.5) >= MIN_RETRY);
    }

    #[test]
    fn first_delay_is_monotonic_in_u_and_spans_the_interval() {
        let mut prev = Duration::ZERO;
        for u in draws(10_000) {
            let d = first_refresh_delay(HOUR, u);
            assert!(d >= prev, "not monotonic at u={u}");
            assert!(d <= HOUR);
            prev = d;
        }
        assert_eq!(first_refresh_delay(HOUR, 0.0), Duration::ZERO);
        assert!(
            HOUR - prev < Duration::from_secs(60),
            "top of the range not reached"
        );
    }

    #[test]
    fn first_delay_has_the_equilibrium_shape() {
        // Histogram over evenly spaced draws: flat density 1/E[T] up to 0.8·I, then a linear
        // ramp; the ramp's first and last tenths must carry about 0.19 and 0.01 of the flat mass.
        let n = 200_000;
        let mean = mean_refresh_delay(HOUR).as_secs_f64();
        let mut flat = 0usize;
        let mut ramp_first = 0usize;
        let mut ramp_last = 0usize;
        for u in draws(n) {
            let x = first_refresh_delay(HOUR, u).as_secs_f64() / 3600.0;
            if x < 0.8 {
                flat += 1;
            } else if x < 0.82 {
                ramp_first += 1;
            } else if x >= 0.98 {
                ramp_last += 1;
            }
        }
        let flat_mass = flat as f64 / n as f64;
        assert!(
            (flat_mass - 0.8 * 3600.0 / mean).abs() < 1e-3,
            "{flat_mass}"
        );
        // Per 0.02·I slice: the flat part holds 0.02·I/E[T]; the ramp's first slice 0.95 of
        // that, its last 0.05.
        let slice = 0.02 * 3600.0 / mean;
        assert!((ramp_first as f64 / n as f64 / slice - 0.95).abs() < 0.02);
        assert!((ramp_last as f64 / n as f64 / slice - 0.05).abs() < 0.02);
    }

    #[test]
    fn retry_delay_grows_doubles_and_caps_with_full_jitter() {
        let min = S;
        let max = Duration::from_secs(300);
        for attempt in 1..=40u32 {
            let window = Duration::from_secs_f64((2f64.powi(attempt as i32)).min(300.0));
            let mut lo = Duration::MAX;
            let mut hi = Duration::ZERO;
            for u in draws(2_000) {
                let d = retry_delay(attempt, min, max, u);
                assert!(
                    d >= min && d <= window,
                    "attempt {attempt}: {d:?} > {window:?}"
                );
                lo = lo.min(d);
                hi = hi.max(d);
            }
            // Full jitter: the whole window is used, down to retry_min.
            assert_eq!(lo, min);
            assert!(
                window - hi < Duration::from_secs(1),
                "attempt {attempt}: top {hi:?}"
            );
        }
        let huge = retry_delay(u32::MAX, min, max, 0.999_999);
        assert!(huge <= max && huge > Duration::from_secs(299), "{huge:?}");
        // retry_max below retry_min: the delay is retry_min.
        assert_eq!(
            retry_delay(5, Duration::from_secs(10), S, 0.9),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn retry_after_is_a_floor_with_a_small_spread_and_a_cap() {
        for u in draws(1_000) {
            let d = retry_after_delay(Duration::from_secs(120), u);
            assert!(d >= Duration::from_secs(120) && d <= Duration::from_secs(132));
            let capped = retry_after_delay(Duration::from_secs(10_000_000), u);
            assert!(capped >= MAX_RETRY_AFTER && capped <= MAX_RETRY_AFTER.mul_f64(1.1));
        }
    }

    #[test]
    fn pacer_urgent_lane_backs_off_until_success_then_rephases() {
        let mut p = Pacer::new(HOUR, S, Duration::from_secs(300));
        let mut windows = Vec::new();
        for _ in 0..12 {
            windows.push(p.after_failure(Lane::Urgent, Cause::Unanswered, None, 0.999_999, 0.0));
        }
        let secs: Vec<u64> = windows
            .iter()
            .map(|d| d.as_secs_f64().round() as u64)
            .collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]);
        // After urgent failures the success re-phases: the draw can be anywhere in (0, I].
        assert_eq!(p.after_success(false, 0.0), Duration::ZERO);
        // A routine success keeps the phase.
        assert!(p.after_success(false, 0.0) >= HOUR.mul_f64(STEADY_FLOOR));
    }

    #[test]
    fn pacer_relaxed_lane_retries_quickly_then_waits_for_the_next_beat() {
        let mut p = Pacer::new(HOUR, S, Duration::from_secs(300));
        p.after_success(false, 0.5);
        for cycle in 0..3 {
            for attempt in 1..=QUICK_RETRIES {
                let d = p.after_failure(Lane::Relaxed, Cause::Unanswered, None, 0.999_999, 0.0);
                assert!(
                    d <= Duration::from_secs(1 << attempt),
                    "cycle {cycle} attempt {attempt}: {d:?}"
                );
            }
            let beat = p.after_failure(Lane::Relaxed, Cause::Unanswered, None, 0.0, 0.0);
            assert_eq!(beat, HOUR.mul_f64(STEADY_FLOOR), "cycle {cycle}");
        }
        // Success after relaxed failures keeps the phase.
        assert!(p.after_success(false, 0.0) >= HOUR.mul_f64(STEADY_FLOOR));
        // ... unless forced.
        assert_eq!(p.after_success(true, 0.0), Duration::ZERO);
    }

    #[test]
    fn pacer_relaxed_lane_waits_for_the_next_beat_at_once_when_the_server_answered() {
        let mut p = Pacer::new(HOUR, S, Duration::from_secs(300));
        p.after_success(false, 0.5);
        for attempt in 1..=2 * QUICK_RETRIES {
            let d = p.after_failure(Lane::Relaxed, Cause::Answered, None, 0.0, 0.0);
            assert_eq!(d, HOUR.mul_f64(STEADY_FLOOR), "attempt {attempt}");
        }
        // A connection error after server errors still gets its quick retries ...
        let d = p.after_failure(Lane::Relaxed, Cause::Unanswered, None, 0.999_999, 0.0);
        assert!(d <= Duration::from_secs(2), "{d:?}");
        // ... and the urgent lane backs off from the start whatever the cause.
        let mut p = Pacer::new(HOUR, S, Duration::from_secs(300));
        let d = p.after_failure(Lane::Urgent, Cause::Answered, None, 0.999_999, 0.0);
        assert!(d <= Duration::from_secs(2), "{d:?}");
    }

    #[test]
    fn pacer_restarts_the_backoff_when_the_lane_changes() {
        let mut p = Pacer::new(HOUR, S, Duration::from_secs(300));
        p.after_success(false, 0.5);
        for _ in 0..10 {
            p.after_failure(Lane::Relaxed, Cause::Unanswered, None, 0.5, 0.0);
        }
        let d = p.after_failure(Lane::Urgent, Cause::Unanswered, None, 0.999_999, 0.0);
        assert!(d <= Duration::from_secs(2), "{d:?}");
    }

    #[test]
    fn pacer_honours_retry_after_in_both_lanes() {
        let mut p = Pacer::new(HOUR, S, Duration::from_secs(300));
        let d = p.after_failure(
            Lane::Urgent,
            Cause::Answered,
            Some(Duration::from_secs(90)),
            0.0,
            0.0,
        );
        assert_eq!(d, Duration::from_secs(90));
        let d = p.after_failure(
            Lane::Urgent,
            Cause::Answered,
            Some(Duration::from_secs(90)),
            0.0,
            0.999_999,
        );
        assert!(d >= Duration::from_secs(90) && d <= Duration::from_secs(99));
        let mut p = Pacer::new(HOUR, S, Duration::from_secs(300));
        p.after_success(false, 0.5);
        // With a healthy key a 429 waits for the next beat, or longer if the server says so.
        let d = p.after_failure(
            Lane::Relaxed,
            Cause::Answered,
            Some(Duration::from_secs(30)),
            0.0,
            0.0,
        );
        assert_eq!(d, HOUR.mul_f64(STEADY_FLOOR));
        let d = p.after_failure(Lane::Relaxed, Cause::Answered, Some(2 * HOUR), 0.0, 0.0);
        assert_eq!(d, MAX_RETRY_AFTER);
    }

    /// A small event-driven fleet in virtual time: every claim of the module doc about load,
    /// checked on 20,000 daemons with 5-minute bins (the 100,000-daemon simulation with the
    /// Agent's policy beside ours lives in the benchmarks).
    mod fleet {
        use super::*;
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        const N: usize = 20_000;
        const BIN: f64 = 300.0;

        struct Fleet {
            pacers: Vec<Pacer>,
            queue: BinaryHeap<Reverse<(u64, usize)>>,
            rng: fastrand::Rng,
            bins: Vec<u32>,
        }

        impl Fleet {
            /// Every daemon exchanges at `t = 0` (a mass restart) and succeeds.
            fn restarted(horizon: f64) -> Fleet {
                let mut f = Fleet {
                    pacers: vec![Pacer::new(HOUR, S, Duration::from_secs(300)); N],
                    queue: BinaryHeap::new(),
                    rng: fastrand::Rng::with_seed(7),
                    bins: vec![0; (horizon / BIN) as usize + 1],
                };
                for i in 0..N {
                    f.queue.push(Reverse((0, i)));
                }
                f
            }

            /// Runs until `horizon`; exchanges fail for `cause` while `t` is in `outage`.
            fn run(&mut self, horizon: f64, outage: (f64, f64), cause: Cause) {
                while let Some(Reverse((ms, i))) = self.queue.pop() {
                    let t = ms as f64 / 1000.0;
                    if t > horizon {
                        break;
                    }
                    self.bins[(t / BIN) as usize] += 1;
                    let (u, u2) = (self.rng.f64(), self.rng.f64());
                    let d = if t >= outage.0 && t < outage.1 {
                        self.pacers[i].after_failure(Lane::Relaxed, cause, None, u, u2)
                    } else {
                        self.pacers[i].after_success(false, u)
                    };
                    self.queue.push(Reverse((ms + d.as_millis() as u64, i)));
                }
            }

            /// Peak bin over the mean load, between two times.
            fn peak(&self, from: f64, to: f64) -> f64 {
                let mean = N as f64 / mean_refresh_delay(HOUR).as_secs_f64() * BIN;
                let bins = &self.bins[(from / BIN) as usize..(to / BIN) as usize];
                f64::from(*bins.iter().max().unwrap()) / mean
            }
        }

        #[test]
        fn mass_restart_is_flat_from_the_first_interval_and_stays_flat() {
            let mut f = Fleet::restarted(12.0 * 3600.0);
            f.run(12.0 * 3600.0, (f64::MAX, f64::MAX), Cause::Answered);
            // Skip the first bin: it holds the restart's own N exchanges.
            let first = f.peak(BIN, 3600.0);
            let later = f.peak(3600.0, 12.0 * 3600.0);
            assert!(first <= 1.15, "first interval peak/mean {first}");
            assert!(later <= 1.15, "steady peak/mean {later}");
        }

        #[test]
        fn recovery_from_a_30_minute_outage_stays_near_the_mean() {
            let outage = (10.0 * 3600.0, 10.5 * 3600.0);
            let horizon = 14.0 * 3600.0;
            for cause in [Cause::Answered, Cause::Unanswered] {
                let mut f = Fleet::restarted(horizon);
                f.run(horizon, outage, cause);
                let recovery = f.peak(outage.1, horizon);
                assert!(recovery <= 1.3, "{cause:?}: recovery peak/mean {recovery}");
            }
        }

        /// Server errors during an outage: the failing endpoint sees no more than the steady
        /// load (each daemon tries once per beat). Unanswered requests get quick retries, which
        /// the endpoint would see several times over if it were reachable.
        #[test]
        fn an_outage_of_server_errors_adds_no_load_to_the_failing_endpoint() {
            let outage = (10.0 * 3600.0, 10.5 * 3600.0);
            let mut answered = Fleet::restarted(outage.1);
            answered.run(outage.1, outage, Cause::Answered);
            let during = answered.peak(outage.0, outage.1);
            assert!(during <= 1.15, "server errors: peak/mean {during}");
            let mut unanswered = Fleet::restarted(outage.1);
            unanswered.run(outage.1, outage, Cause::Unanswered);
            let quick = unanswered.peak(outage.0, outage.1);
            assert!(quick >= 2.0 * during, "quick retries: peak/mean {quick}");
        }
    }
}

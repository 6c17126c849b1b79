//! One group's state, as pure data: what is served ([`Phase`]), when the next attempt runs
//! ([`Timer`], with the [`Pacer`]), and what status shows ([`History`]).
//!
//! [`step`] is the whole state machine: an [`Event`] in, the next state and the [`Action`]s
//! out. Like [`crate::schedule`], it reads no clock and no random generator (the caller passes
//! `now` and the [`Draws`]), so it is tested as a table without tokio.
//!
//! | phase \ event | `GraceOver` | `Due`, `Forced` | `Succeeded` | `Failed`                     | `Expired` |
//! |---------------|-------------|-----------------|-------------|------------------------------|-----------|
//! | `Starting`    | `NoKey`     | (attempt)       | `Serving`   | `NoKey`                      | —         |
//! | `Serving`     | —           | (attempt)       | `Serving`   | `Serving`; `Rejected` if reported | `NoKey` |
//! | `Rejected`    | —           | (attempt)       | `Serving`   | `Rejected`                   | `NoKey`   |
//! | `NoKey`       | —           | (attempt)       | `Serving`   | `NoKey`                      | —         |
//!
//! `Reconfigured` never changes the phase; it may re-draw the next refresh. `Expired` concerns
//! tokens only (a key has no expiry): a token is never served past its `expires`.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{ExchangeFailure, Exchanged, FailureKind};
use crate::schedule::{self, Cause, Lane, Pacer};
use crate::secret::Secret;
use crate::status::rfc3339 as format_time;

/// The managed key (or token) a group holds.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Managed {
    pub key: Secret,
    /// When the exchange returned it (the key's age in status and metrics).
    pub obtained_at: SystemTime,
    /// A token's expiry; `None` for a key.
    pub expiry: Option<Expiry>,
}

/// When a token stops being valid, on both clocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Expiry {
    /// Datadog's `expires`: what consumers are told, and what every answer is checked against.
    pub at: SystemTime,
    /// The same moment on the monotonic clock: the group's timer.
    pub deadline: Instant,
    /// The token's lifetime when it was obtained (`expires` − now), which its refresh is drawn
    /// from.
    pub lifetime: Duration,
}

impl Managed {
    /// Whether this is a token that has expired at `now`.
    fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|e| e.deadline <= now)
    }
}

/// What a group serves (the module doc of [`crate::lifecycle`] has the table per member).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Phase {
    /// The first attempt is running and the startup grace is not over: readers wait.
    Starting,
    /// A managed key is served.
    Serving(Managed),
    /// The managed key was reported rejected and the refresh after the report failed: members
    /// with a fallback serve it, the others keep the managed key.
    Rejected(Managed),
    /// No managed key: the first attempt failed, or the startup grace ended before it did.
    NoKey,
}

impl Phase {
    /// Which retry lane a failure in this phase goes to (after the phase change it causes). A
    /// token is always urgent: waiting for a next beat would let it expire.
    fn lane(&self) -> Lane {
        match self {
            Phase::Serving(m) if m.expiry.is_none() => Lane::Relaxed,
            Phase::Serving(_) | Phase::Starting | Phase::Rejected(_) | Phase::NoKey => Lane::Urgent,
        }
    }

    /// The token's expiry, while one is held.
    pub fn expiry(&self) -> Option<Expiry> {
        match self {
            Phase::Serving(m) | Phase::Rejected(m) => m.expiry,
            Phase::Starting | Phase::NoKey => None,
        }
    }

    fn has_key(&self) -> bool {
        matches!(self, Phase::Serving(_) | Phase::Rejected(_))
    }
}

/// When the next attempt runs.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Timer {
    /// The deadline (the first attempt is due at once).
    pub at: Instant,
    /// The next attempt is a retry after a failure (status shows `Next Retry`).
    pub retry: bool,
    /// A rejection report asked for an attempt that `Retry-After` deferred: the attempt at
    /// `at` is a forced one.
    pub forced: bool,
    /// End of the server's `Retry-After`: no attempt before, not even a forced one.
    pub not_before: Option<Instant>,
}

/// Everything [`step`] decides from.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct State {
    pub phase: Phase,
    pub timer: Timer,
    pub pacer: Pacer,
    /// Tokens: the configured `refresh_before` (`None`: the default margin).
    pub refresh_before: Option<Duration>,
}

impl State {
    /// A group that has not attempted anything yet: its first attempt is due `now`.
    pub fn new(interval: Duration, retry_min: Duration, retry_max: Duration, now: Instant) -> Self {
        State {
            refresh_before: None,
            phase: Phase::Starting,
            timer: Timer {
                at: now,
                retry: false,
                forced: false,
                not_before: None,
            },
            pacer: Pacer::new(interval, retry_min, retry_max),
        }
    }
}

/// What happens to a group.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Event {
    /// The startup grace ended.
    GraceOver,
    /// The timer fired (never while an attempt runs).
    Due,
    /// A rejection report asked for an attempt now (never while an attempt runs).
    Forced,
    /// The attempt returned a key; `forced` when a rejection report started it.
    Succeeded { managed: Managed, forced: bool },
    /// The attempt failed; `rejected` when a report named the served managed key meanwhile.
    Failed {
        cause: Cause,
        retry_after: Option<Duration>,
        rejected: bool,
    },
    /// A reload changed the group's parameters.
    Reconfigured {
        interval: Duration,
        retry_min: Duration,
        retry_max: Duration,
        refresh_before: Option<Duration>,
    },
    /// The token held reached its expiry (never sent for a key).
    Expired,
}

/// What the task must do after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Start an exchange; `forced` when a rejection report asked for it.
    Attempt { forced: bool },
    /// Publish every member's view (what is served or the status changed).
    Publish,
}

/// Uniform draws in `[0, 1)` for the schedule (a failure's backoff takes two).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Draws {
    pub u: f64,
    pub u2: f64,
}

/// The state machine: the state after `event` at `now`, and what to do.
pub(super) fn step(state: State, event: Event, now: Instant, draws: Draws) -> (State, Vec<Action>) {
    let State {
        phase,
        mut timer,
        mut pacer,
        mut refresh_before,
    } = state;
    let mut actions = Vec::new();
    let phase = match event {
        Event::GraceOver => match phase {
            Phase::Starting => {
                actions.push(Action::Publish);
                Phase::NoKey
            }
            other => other,
        },
        Event::Due => {
            actions.push(Action::Attempt {
                forced: std::mem::take(&mut timer.forced),
            });
            phase
        }
        Event::Forced => {
            match timer.not_before {
                Some(not_before) if not_before > now => {
                    timer.forced = true;
                    timer.at = timer.at.min(not_before);
                    actions.push(Action::Publish);
                }
                _ => {
                    timer.forced = false;
                    actions.push(Action::Attempt { forced: true });
                }
            }
            phase
        }
        Event::Succeeded { managed, forced } => {
            let delay = pacer.after_success(forced, draws.u);
            // A token is refreshed from its own lifetime, not the interval (the pacer's
            // counters are reset all the same).
            let delay = match managed.expiry {
                Some(e) => schedule::token_refresh_delay(e.lifetime, refresh_before, draws.u),
                None => delay,
            };
            timer.at = now + delay;
            timer.retry = false;
            timer.not_before = None;
            actions.push(Action::Publish);
            Phase::Serving(managed)
        }
        Event::Failed {
            cause,
            retry_after,
            rejected,
        } => {
            let phase = match phase {
                Phase::Serving(managed) if rejected => Phase::Rejected(managed),
                Phase::Starting => Phase::NoKey,
                other => other,
            };
            let mut delay =
                pacer.after_failure(phase.lane(), cause, retry_after, draws.u, draws.u2);
            // A token still held is retried no later than its expiry (unless the server said
            // when to come back: Retry-After is honoured even then).
            if let Some(e) = phase.expiry()
                && retry_after.is_none()
            {
                delay = delay.min(e.deadline.saturating_duration_since(now));
            }
            timer.at = now + delay;
            timer.retry = true;
            timer.not_before = retry_after.map(|ra| now + ra.min(schedule::MAX_RETRY_AFTER));
            actions.push(Action::Publish);
            phase
        }
        Event::Reconfigured {
            interval,
            retry_min,
            retry_max,
            refresh_before: new_before,
        } => {
            let interval_changed = interval != pacer.interval();
            let before_changed = new_before != refresh_before;
            pacer.set_params(interval, retry_min, retry_max);
            refresh_before = new_before;
            match phase.expiry() {
                Some(e) if before_changed && !timer.retry => {
                    // The token's refresh is drawn again from its lifetime, with the new margin.
                    let obtained = e.deadline.checked_sub(e.lifetime).unwrap_or(now);
                    let due = obtained
                        + schedule::token_refresh_delay(e.lifetime, refresh_before, draws.u);
                    timer.at = due.max(now);
                }
                Some(_) => {}
                None if interval_changed && phase.has_key() && !timer.retry => {
                    // Re-phased: a reload usually reaches a whole fleet within minutes.
                    timer.at = now + schedule::first_refresh_delay(interval, draws.u);
                }
                None => {}
            }
            // The manager asks for the publication once every group has its new members.
            phase
        }
        Event::Expired => match phase {
            Phase::Serving(m) | Phase::Rejected(m) if m.expired(now) => {
                actions.push(Action::Publish);
                Phase::NoKey
            }
            other => other,
        },
    };
    (
        State {
            phase,
            timer,
            pacer,
            refresh_before,
        },
        actions,
    )
}

/// What a member serves, decided from the phase.
#[derive(Debug, PartialEq)]
pub(super) enum Serve<'a> {
    Pending,
    Managed(&'a Managed),
    Fallback(&'a Secret),
    Nothing,
}

/// What a member with `fallback` serves in `phase`, and why when it is not the managed key.
pub(super) fn view<'a>(
    phase: &'a Phase,
    fallback: Option<&'a Secret>,
    last_error_kind: Option<FailureKind>,
    startup_grace: Duration,
) -> (Serve<'a>, Option<String>) {
    const REJECTED: &str = "a consumer reported the managed key rejected and the refresh failed";
    match phase {
        Phase::Starting => (Serve::Pending, None),
        Phase::Serving(managed) => (Serve::Managed(managed), None),
        Phase::Rejected(managed) => match fallback {
            Some(fallback) => (Serve::Fallback(fallback), Some(REJECTED.to_string())),
            None => (
                Serve::Managed(managed),
                Some(format!(
                    "{REJECTED}; no fallback key is configured, so the managed key is still served"
                )),
            ),
        },
        Phase::NoKey => {
            // Without a failure recorded, the grace ended while the first attempt ran.
            let why = match last_error_kind {
                Some(kind) => format!("no managed key yet: the last exchange failed ({kind})"),
                None => format!(
                    "no managed key yet: the first exchange is still running after the startup grace of {}",
                    humantime::format_duration(startup_grace)
                ),
            };
            match fallback {
                Some(fallback) => (Serve::Fallback(fallback), Some(why)),
                None => (
                    Serve::Nothing,
                    Some(format!("{why}; no fallback api_key is configured")),
                ),
            }
        }
    }
}

/// What a token serves in `phase`, and why when it is not the token. A token has no fallback:
/// a rejected one is still served until it expires, and after that nothing is.
pub(super) fn token_view<'a>(
    phase: &'a Phase,
    history: &History,
    startup_grace: Duration,
) -> (Serve<'a>, Option<String>) {
    const NEVER: &str = "tokens never fall back to anything";
    match phase {
        Phase::Starting => (Serve::Pending, None),
        Phase::Serving(managed) => (Serve::Managed(managed), None),
        Phase::Rejected(managed) => (
            Serve::Managed(managed),
            Some(format!(
                "a consumer reported the token rejected and the refresh failed; it is served \
                 until it expires{}",
                managed
                    .expiry
                    .map(|e| format!(" at {}", format_time(e.at)))
                    .unwrap_or_default()
            )),
        ),
        Phase::NoKey => {
            let failed = history
                .last_error_kind
                .map(|kind| format!("the last exchange failed ({kind})"));
            let why = match (history.expired_at, failed) {
                (Some(at), Some(failed)) => format!(
                    "the token expired at {} and no new one could be obtained: {failed}",
                    format_time(at)
                ),
                (Some(at), None) => format!(
                    "the token expired at {} before its refresh finished",
                    format_time(at)
                ),
                (None, Some(failed)) => format!("no token yet: {failed}"),
                (None, None) => format!(
                    "no token yet: the first exchange is still running after the startup grace of {}",
                    humantime::format_duration(startup_grace)
                ),
            };
            (Serve::Nothing, Some(format!("{why}; {NEVER}")))
        }
    }
}

/// What status shows about the attempts, beside the phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct History {
    /// The intake-key URL last used.
    pub endpoint: Option<String>,
    /// The STS region last signed for (the configured one until an exchange says).
    pub region: Option<String>,
    /// The AWS credential source last used.
    pub credential_source: Option<String>,
    /// Last successful exchange.
    pub last_refresh: Option<SystemTime>,
    /// Last attempt, successful or not.
    pub last_attempt: Option<SystemTime>,
    /// Failures since the last success.
    pub failures: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The last failure's kind.
    pub last_error_kind: Option<FailureKind>,
    /// When the token held last expired without a successor (cleared by a success).
    pub expired_at: Option<SystemTime>,
}

impl History {
    /// Records a success at `now`.
    pub fn succeeded(&mut self, exchanged: Exchanged, now: SystemTime) {
        self.failures = 0;
        self.last_error = None;
        self.last_error_kind = None;
        self.expired_at = None;
        self.last_refresh = Some(now);
        self.endpoint = Some(exchanged.endpoint);
        self.region = exchanged.region;
        if exchanged.credential_source.is_some() {
            self.credential_source = exchanged.credential_source;
        }
    }

    /// Records a failure.
    pub fn failed(&mut self, failure: ExchangeFailure) {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(failure.message);
        self.last_error_kind = Some(failure.kind);
        if failure.credential_source.is_some() {
            self.credential_source = failure.credential_source;
        }
        if failure.endpoint.is_some() {
            self.endpoint = failure.endpoint;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const SEC: Duration = Duration::from_secs(1);
    const DRAWS: Draws = Draws { u: 0.5, u2: 0.5 };

    fn managed(key: &str) -> Managed {
        Managed {
            key: Secret::from(key),
            obtained_at: SystemTime::UNIX_EPOCH,
            expiry: None,
        }
    }

    fn phase(name: &str) -> Phase {
        match name {
            "Starting" => Phase::Starting,
            "Serving" => Phase::Serving(managed("managed-key-old-00001")),
            "Rejected" => Phase::Rejected(managed("managed-key-old-00001")),
            "NoKey" => Phase::NoKey,
            _ => unreachable!("{name}"),
        }
    }

    /// A token that expires `left` after `now`, issued with a lifetime of 20 s.
    fn token(key: &str, now: Instant, left: Duration) -> Managed {
        Managed {
            key: Secret::from(key),
            obtained_at: SystemTime::UNIX_EPOCH,
            expiry: Some(Expiry {
                at: SystemTime::UNIX_EPOCH + left,
                deadline: now + left,
                lifetime: 20 * SEC,
            }),
        }
    }

    fn token_phase(name: &str, now: Instant, left: Duration) -> Phase {
        match name {
            "Serving" => Phase::Serving(token("token-old-00001", now, left)),
            "Rejected" => Phase::Rejected(token("token-old-00001", now, left)),
            other => phase(other),
        }
    }

    #[test]
    fn a_token_is_refreshed_inside_its_margin_from_its_own_lifetime() {
        let now = Instant::now();
        for u in [0.0, 0.5, 0.999] {
            let draws = Draws { u, u2: 0.5 };
            let got = Event::Succeeded {
                managed: token("token-new-00002", now, 20 * SEC),
                forced: false,
            };
            let (next, actions) = step(state(Phase::NoKey, now), got, now, draws);
            assert_eq!(actions, [Publish]);
            // Default margin of a 20 s token: half its life (a quarter would be under 60 s).
            let delay = next.timer.at - now;
            assert!(delay >= 10 * SEC && delay <= 15 * SEC, "{delay:?}");
            assert!(!next.timer.retry);
        }
        // With refresh_before: 4s, inside [16 s, 18 s], whatever the interval says.
        let mut s = state(Phase::NoKey, now);
        s.refresh_before = Some(4 * SEC);
        let got = Event::Succeeded {
            managed: token("token-new-00002", now, 20 * SEC),
            forced: true,
        };
        let (next, _) = step(s, got, now, DRAWS);
        assert_eq!(next.timer.at - now, 17 * SEC);
    }

    #[test]
    fn a_failing_token_refresh_retries_urgently_and_never_after_the_expiry() {
        let now = Instant::now();
        // The API answered an error: a key would wait for its next beat, a token may not.
        let answered = Event::Failed {
            cause: Cause::Answered,
            retry_after: None,
            rejected: false,
        };
        let mut s = State::new(HOUR, 60 * SEC, 600 * SEC, now);
        s.phase = token_phase("Serving", now, 3 * SEC);
        let (next, _) = step(s, answered.clone(), now, DRAWS);
        assert_eq!(name(&next.phase), "Serving");
        assert!(next.timer.retry);
        assert_eq!(
            next.timer.at,
            now + 3 * SEC,
            "a 60 s backoff is cut at the expiry"
        );
        // The server's Retry-After is honoured all the same.
        let throttled = Event::Failed {
            cause: Cause::Answered,
            retry_after: Some(90 * SEC),
            rejected: false,
        };
        let mut s = state(token_phase("Serving", now, 3 * SEC), now);
        s.timer.at = now;
        let (next, _) = step(s, throttled, now, DRAWS);
        assert!(next.timer.at >= now + 90 * SEC);
    }

    #[test]
    fn expiry_ends_only_an_expired_token() {
        let now = Instant::now();
        for p in ["Serving", "Rejected"] {
            let (next, actions) = step(
                state(token_phase(p, now, SEC), now),
                Event::Expired,
                now,
                DRAWS,
            );
            assert_eq!(name(&next.phase), p, "not yet expired");
            assert!(actions.is_empty());
            let (next, _) = step(state(phase(p), now), Event::Expired, now, DRAWS);
            assert_eq!(name(&next.phase), p, "a key never expires");
            let (next, actions) = step(
                state(token_phase(p, now, SEC), now),
                Event::Expired,
                now + SEC,
                DRAWS,
            );
            assert_eq!(name(&next.phase), "NoKey");
            assert_eq!(actions, [Publish]);
        }
    }

    #[test]
    fn a_new_refresh_before_re_draws_a_held_tokens_refresh() {
        let now = Instant::now();
        // A 20 s token obtained now, expiring in 20 s.
        let held = state(token_phase("Serving", now, 20 * SEC), now);
        let change = |before| Event::Reconfigured {
            interval: HOUR,
            retry_min: SEC,
            retry_max: 300 * SEC,
            refresh_before: before,
        };
        let (next, _) = step(held.clone(), change(Some(2 * SEC)), now, DRAWS);
        assert_eq!(next.timer.at - now, 18 * SEC + SEC / 2);
        assert_eq!(next.refresh_before, Some(2 * SEC));
        let (same, _) = step(held.clone(), change(None), now, DRAWS);
        assert_eq!(
            same.timer, held.timer,
            "unchanged margin, unchanged schedule"
        );
    }

    #[test]
    fn what_a_token_serves_and_why() {
        let now = Instant::now();
        let grace = 10 * SEC;
        let mut history = History::default();
        let t = token("token-old-00001", now, 5 * SEC);
        assert!(matches!(
            token_view(&Phase::Serving(t.clone()), &history, grace),
            (Serve::Managed(_), None)
        ));
        let rejected = Phase::Rejected(t);
        let (s, why) = token_view(&rejected, &history, grace);
        assert!(matches!(s, Serve::Managed(_)));
        assert!(
            why.unwrap()
                .contains("served until it expires at 1970-01-01T00:00:05Z")
        );
        let (s, why) = token_view(&Phase::NoKey, &history, grace);
        assert!(matches!(s, Serve::Nothing));
        assert!(why.unwrap().contains("startup grace"));
        history.last_error_kind = Some(FailureKind::Unauthorized);
        let why = token_view(&Phase::NoKey, &history, grace).1.unwrap();
        assert!(
            why.starts_with("no token yet: the last exchange failed (unauthorized)"),
            "{why}"
        );
        assert!(why.ends_with("tokens never fall back to anything"), "{why}");
        history.expired_at = Some(SystemTime::UNIX_EPOCH);
        let why = token_view(&Phase::NoKey, &history, grace).1.unwrap();
        assert!(
            why.starts_with(
                "the token expired at 1970-01-01T00:00:00Z and no new one could be obtained"
            ),
            "{why}"
        );
    }

    fn name(phase: &Phase) -> &'static str {
        match phase {
            Phase::Starting => "Starting",
            Phase::Serving(_) => "Serving",
            Phase::Rejected(_) => "Rejected",
            Phase::NoKey => "NoKey",
        }
    }

    fn event(name: &str) -> Event {
        let failed = |rejected| Event::Failed {
            cause: Cause::Unanswered,
            retry_after: None,
            rejected,
        };
        match name {
            "GraceOver" => Event::GraceOver,
            "Due" => Event::Due,
            "Forced" => Event::Forced,
            "Succeeded" => Event::Succeeded {
                managed: managed("managed-key-new-00002"),
                forced: false,
            },
            "Failed" => failed(false),
            "FailedReported" => failed(true),
            "Reconfigured" => Event::Reconfigured {
                interval: HOUR / 2,
                retry_min: SEC,
                retry_max: 300 * SEC,
                refresh_before: None,
            },
            "Expired" => Event::Expired,
            _ => unreachable!("{name}"),
        }
    }

    const PHASES: [&str; 4] = ["Starting", "Serving", "Rejected", "NoKey"];
    const EVENTS: [&str; 8] = [
        "GraceOver",
        "Due",
        "Forced",
        "Succeeded",
        "Failed",
        "FailedReported",
        "Reconfigured",
        "Expired",
    ];

    use Action::{Attempt, Publish};
    const ATTEMPT: &[Action] = &[Attempt { forced: false }];
    const FORCED: &[Action] = &[Attempt { forced: true }];
    const PUBLISH: &[Action] = &[Publish];
    const NOTHING: &[Action] = &[];

    /// (phase, event) → (phase after, actions), for every pair.
    const TABLE: [(&str, &str, &str, &[Action]); 32] = [
        ("Starting", "GraceOver", "NoKey", PUBLISH),
        ("Starting", "Due", "Starting", ATTEMPT),
        ("Starting", "Forced", "Starting", FORCED),
        ("Starting", "Succeeded", "Serving", PUBLISH),
        ("Starting", "Failed", "NoKey", PUBLISH),
        ("Starting", "FailedReported", "NoKey", PUBLISH),
        ("Starting", "Reconfigured", "Starting", NOTHING),
        ("Starting", "Expired", "Starting", NOTHING),
        ("Serving", "GraceOver", "Serving", NOTHING),
        ("Serving", "Due", "Serving", ATTEMPT),
        ("Serving", "Forced", "Serving", FORCED),
        ("Serving", "Succeeded", "Serving", PUBLISH),
        ("Serving", "Failed", "Serving", PUBLISH),
        ("Serving", "FailedReported", "Rejected", PUBLISH),
        ("Serving", "Reconfigured", "Serving", NOTHING),
        ("Serving", "Expired", "NoKey", PUBLISH),
        ("Rejected", "GraceOver", "Rejected", NOTHING),
        ("Rejected", "Due", "Rejected", ATTEMPT),
        ("Rejected", "Forced", "Rejected", FORCED),
        ("Rejected", "Succeeded", "Serving", PUBLISH),
        ("Rejected", "Failed", "Rejected", PUBLISH),
        ("Rejected", "FailedReported", "Rejected", PUBLISH),
        ("Rejected", "Reconfigured", "Rejected", NOTHING),
        ("Rejected", "Expired", "NoKey", PUBLISH),
        ("NoKey", "GraceOver", "NoKey", NOTHING),
        ("NoKey", "Due", "NoKey", ATTEMPT),
        ("NoKey", "Forced", "NoKey", FORCED),
        ("NoKey", "Succeeded", "Serving", PUBLISH),
        ("NoKey", "Failed", "NoKey", PUBLISH),
        ("NoKey", "FailedReported", "NoKey", PUBLISH),
        ("NoKey", "Reconfigured", "NoKey", NOTHING),
        ("NoKey", "Expired", "NoKey", NOTHING),
    ];

    fn state(phase: Phase, now: Instant) -> State {
        let mut s = State::new(HOUR, SEC, 300 * SEC, now);
        s.phase = phase;
        s.timer.at = now + HOUR;
        s
    }

    #[test]
    fn every_phase_and_event_pair_is_in_the_table() {
        let now = Instant::now();
        for p in PHASES {
            for e in EVENTS {
                let Some((_, _, after, actions)) =
                    TABLE.iter().find(|(tp, te, ..)| *tp == p && *te == e)
                else {
                    panic!("({p}, {e}) is missing from the table");
                };
                // `Expired` concerns an expired token; the other events a key.
                let held = if e == "Expired" {
                    token_phase(p, now, Duration::ZERO)
                } else {
                    phase(p)
                };
                let (next, got) = step(state(held, now), event(e), now, DRAWS);
                assert_eq!(name(&next.phase), *after, "({p}, {e})");
                assert_eq!(got, *actions, "({p}, {e})");
            }
        }
        assert_eq!(TABLE.len(), PHASES.len() * EVENTS.len());
    }

    #[test]
    fn a_key_kept_through_a_phase_change_is_the_same_key() {
        let now = Instant::now();
        let (next, _) = step(
            state(phase("Serving"), now),
            event("FailedReported"),
            now,
            DRAWS,
        );
        assert_eq!(
            next.phase,
            Phase::Rejected(managed("managed-key-old-00001"))
        );
        for p in PHASES {
            let (next, _) = step(state(phase(p), now), event("Succeeded"), now, DRAWS);
            assert_eq!(next.phase, Phase::Serving(managed("managed-key-new-00002")));
        }
    }

    #[test]
    fn failures_schedule_a_retry_in_the_lane_of_the_phase() {
        let now = Instant::now();
        for (p, quick) in [
            ("Starting", true),
            ("Serving", true),
            ("Rejected", true),
            ("NoKey", true),
        ] {
            let (next, _) = step(state(phase(p), now), event("Failed"), now, DRAWS);
            assert!(next.timer.retry, "{p}");
            assert_eq!(next.timer.not_before, None);
            // An unanswered failure: the urgent backoff, or the relaxed lane's quick retries.
            assert_eq!(next.timer.at - now <= 2 * SEC, quick, "{p}");
        }
        // The API answered: a healthy key waits for its next beat, the others retry quickly.
        for (p, beat) in [("Serving", true), ("Rejected", false), ("NoKey", false)] {
            let answered = Event::Failed {
                cause: Cause::Answered,
                retry_after: None,
                rejected: false,
            };
            let (next, _) = step(state(phase(p), now), answered, now, DRAWS);
            assert_eq!(next.timer.at - now >= HOUR / 2, beat, "{p}");
        }
        // A report during the attempt moves the failure to the urgent lane.
        let answered = Event::Failed {
            cause: Cause::Answered,
            retry_after: None,
            rejected: true,
        };
        let (next, _) = step(state(phase("Serving"), now), answered, now, DRAWS);
        assert!(next.timer.at - now <= 2 * SEC);
    }

    #[test]
    fn a_success_clears_the_retry_and_the_retry_after() {
        let now = Instant::now();
        let mut s = state(Phase::NoKey, now);
        s.timer.retry = true;
        s.timer.not_before = Some(now + HOUR);
        let (next, _) = step(s, event("Succeeded"), now, DRAWS);
        assert!(!next.timer.retry);
        assert_eq!(next.timer.not_before, None);
        // A first key re-phases: anywhere in [0, interval].
        assert!(next.timer.at - now <= HOUR);
    }

    #[test]
    fn retry_after_defers_a_forced_attempt_and_marks_it_forced() {
        let now = Instant::now();
        let throttled = Event::Failed {
            cause: Cause::Answered,
            retry_after: Some(90 * SEC),
            rejected: false,
        };
        let (s, _) = step(state(Phase::NoKey, now), throttled, now, DRAWS);
        assert_eq!(s.timer.not_before, Some(now + 90 * SEC));
        assert!(s.timer.at >= now + 90 * SEC);

        let (s, actions) = step(s, Event::Forced, now + 5 * SEC, DRAWS);
        assert_eq!(actions, [Publish]);
        assert!(s.timer.forced);
        assert_eq!(
            s.timer.at,
            now + 90 * SEC,
            "moved to the end of Retry-After"
        );

        let (s, actions) = step(s, Event::Due, now + 90 * SEC, DRAWS);
        assert_eq!(actions, [Attempt { forced: true }]);
        assert!(!s.timer.forced);

        // Once Retry-After is over, a report starts an attempt at once.
        let (_, actions) = step(s, Event::Forced, now + 91 * SEC, DRAWS);
        assert_eq!(actions, [Attempt { forced: true }]);
    }

    #[test]
    fn retry_after_is_capped() {
        let now = Instant::now();
        let throttled = Event::Failed {
            cause: Cause::Answered,
            retry_after: Some(100 * HOUR),
            rejected: false,
        };
        let (s, _) = step(state(Phase::NoKey, now), throttled, now, DRAWS);
        assert_eq!(s.timer.not_before, Some(now + schedule::MAX_RETRY_AFTER));
    }

    #[test]
    fn a_new_interval_re_draws_the_next_refresh_only_of_a_held_key() {
        let now = Instant::now();
        let shorter = |interval| Event::Reconfigured {
            interval,
            retry_min: SEC,
            retry_max: 300 * SEC,
            refresh_before: None,
        };
        for (p, redrawn) in [
            ("Starting", false),
            ("Serving", true),
            ("Rejected", true),
            ("NoKey", false),
        ] {
            let before = state(phase(p), now);
            let (next, _) = step(before.clone(), shorter(60 * SEC), now, DRAWS);
            assert_eq!(next.timer.at != before.timer.at, redrawn, "{p}");
            assert_eq!(next.pacer.interval(), 60 * SEC);
            if redrawn {
                assert!(next.timer.at - now <= 60 * SEC);
            }
            // The same interval, or a retry pending: the schedule stays.
            let (same, _) = step(before.clone(), shorter(HOUR), now, DRAWS);
            assert_eq!(same.timer, before.timer, "{p}");
            let mut retrying = before.clone();
            retrying.timer.retry = true;
            let (next, _) = step(retrying.clone(), shorter(60 * SEC), now, DRAWS);
            assert_eq!(next.timer, retrying.timer, "{p}");
        }
    }

    #[test]
    fn what_each_phase_serves_with_and_without_a_fallback() {
        let fallback = Secret::from("static-fallback-key-0000abcde");
        let grace = 10 * SEC;
        let key = managed("managed-key-old-00001");
        // (phase, last error, with a fallback, without, a reason given)
        let cases = [
            (Phase::Starting, None, "Pending", "Pending", false),
            (
                Phase::Serving(key.clone()),
                None,
                "Managed",
                "Managed",
                false,
            ),
            (
                Phase::Rejected(key.clone()),
                None,
                "Fallback",
                "Managed",
                true,
            ),
            (
                Phase::NoKey,
                Some(FailureKind::Unauthorized),
                "Fallback",
                "Nothing",
                true,
            ),
            (Phase::NoKey, None, "Fallback", "Nothing", true),
        ];
        let kind = |s: &Serve| match s {
            Serve::Pending => "Pending",
            Serve::Managed(_) => "Managed",
            Serve::Fallback(_) => "Fallback",
            Serve::Nothing => "Nothing",
        };
        for (phase, error, with, without, reason) in cases {
            let (s, why) = view(&phase, Some(&fallback), error, grace);
            assert_eq!(kind(&s), with, "{phase:?} with a fallback");
            assert_eq!(why.is_some(), reason, "{phase:?} with a fallback");
            let (s, why) = view(&phase, None, error, grace);
            assert_eq!(kind(&s), without, "{phase:?} without");
            assert_eq!(why.is_some(), reason, "{phase:?} without");
        }
        let reason = |phase: &Phase, fallback: Option<&Secret>, error| {
            view(phase, fallback, error, grace).1.unwrap_or_default()
        };
        assert!(
            reason(
                &Phase::NoKey,
                Some(&fallback),
                Some(FailureKind::Unauthorized)
            )
            .contains("last exchange failed (unauthorized)")
        );
        assert!(reason(&Phase::NoKey, Some(&fallback), None).contains("startup grace of 10s"));
        assert!(
            reason(&Phase::NoKey, None, Some(FailureKind::Unavailable))
                .contains("no fallback api_key is configured")
        );
        assert!(
            reason(&Phase::Rejected(key.clone()), Some(&fallback), None)
                .contains("reported the managed key rejected")
        );
        assert!(
            reason(&Phase::Rejected(key), None, None).contains("no fallback key is configured")
        );
    }
}

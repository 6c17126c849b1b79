//! One group's task: a single `select!` loop that feeds events to [`step`], runs the exchanges
//! it asks for, and publishes each member's view, with metrics and logs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::error::Elapsed;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::report::GroupShared;
use super::state::{
    Action, Draws, Event, Expiry, History, Managed, Phase, Serve, State, step, token_view, view,
};
use super::{
    ATTEMPT_TIMEOUT, Credential, ExchangeFailure, ExchangeKey, Exchanged, Exchanger, FailureKind,
    Timing, lock,
};
use crate::keystore::{InstanceStatus, KeySource, KeyState, ServedKey, Slot, Snapshot};
use crate::metrics::Metrics;
use crate::schedule::Cause;
use crate::secret::Secret;

/// A member of a group, as the group task sees it.
#[derive(Clone, Debug)]
pub(super) struct Member {
    pub name: Arc<str>,
    pub slot: Arc<Slot>,
    pub fallback: Option<Secret>,
    pub fallback_origin: Option<String>,
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && Arc::ptr_eq(&self.slot, &other.slot)
            && self.fallback == other.fallback
            && self.fallback_origin == other.fallback_origin
    }
}

/// What a group task is told by `apply`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct GroupConfig {
    pub interval: Duration,
    /// Tokens: the margin before expiry (`None`: the default).
    pub refresh_before: Option<Duration>,
    pub timing: Timing,
    pub members: Vec<Member>,
}

/// What the manager tells a running group.
#[derive(Debug)]
pub(super) enum Command {
    /// New members or parameters. The group acknowledges once it has taken them (from then on
    /// it never writes to a member it lost), and publishes only when told.
    Configure(Arc<GroupConfig>, oneshot::Sender<()>),
    /// Publish every member's view: every group has its members now.
    Publish,
}

type Outcome = Result<Result<Exchanged, ExchangeFailure>, Elapsed>;

/// The running exchange.
struct InFlight {
    exchange: Pin<Box<dyn Future<Output = Outcome> + Send>>,
    /// Whether a rejection report started it.
    forced: bool,
    started: Instant,
}

/// What ties a group task to the rest of the daemon.
pub(super) struct Links<E: Exchanger> {
    pub exchanger: Arc<E>,
    pub metrics: Arc<Metrics>,
    /// Flags and wake-up shared with rejection reports.
    pub shared: Arc<GroupShared>,
    /// Cancelled on shutdown or when `apply` stops the group.
    pub cancel: CancellationToken,
    /// From the manager: new members, publish now.
    pub commands: mpsc::UnboundedReceiver<Command>,
}

/// One group's task and its state.
pub(super) struct Group<E: Exchanger> {
    key: ExchangeKey,
    links: Links<E>,
    cfg: Arc<GroupConfig>,
    rng: fastrand::Rng,
    /// When the task started: the startup grace counts from here.
    started: Instant,
    /// Phase, schedule and pacer: everything [`step`] decides.
    state: State,
    /// The next attempt on the wall clock, computed when the schedule changes so that
    /// republishing the status does not make it drift.
    next_wall: SystemTime,
    /// What status shows about past attempts.
    history: History,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl<E: Exchanger> Group<E> {
    /// A group that has not attempted anything yet. Publishes its members as `pending` at once,
    /// before the task runs.
    pub fn new(key: ExchangeKey, links: Links<E>, cfg: Arc<GroupConfig>) -> Self {
        let now = Instant::now();
        let mut state = State::new(
            cfg.interval,
            cfg.timing.retry_min,
            cfg.timing.retry_max,
            now,
        );
        state.refresh_before = cfg.refresh_before;
        let group = Group {
            history: History {
                region: key.region.clone(),
                ..History::default()
            },
            key,
            links,
            cfg,
            rng: fastrand::Rng::new(),
            started: now,
            state,
            next_wall: SystemTime::now(),
        };
        group.publish_all();
        group
    }

    /// Runs until shutdown, or until the manager stops the group or goes away.
    pub async fn run(mut self) {
        let mut in_flight: Option<InFlight> = None;
        loop {
            let grace = self.grace_deadline();
            let due = in_flight.is_none().then_some(self.state.timer.at);
            let expiry = self.state.phase.expiry().map(|e| e.deadline);
            tokio::select! {
                biased;
                () = self.links.cancel.cancelled() => return,
                command = self.links.commands.recv() => match command {
                    None => return,
                    Some(Command::Configure(cfg, ack)) => {
                        self.reconfigure(cfg);
                        let _ = ack.send(());
                    }
                    Some(Command::Publish) => self.publish_all(),
                },
                outcome = async { in_flight.as_mut().expect("guarded").exchange.as_mut().await },
                    if in_flight.is_some() =>
                {
                    let attempt = in_flight.take().expect("guarded");
                    self.settle(outcome, attempt, &mut in_flight);
                }
                () = sleep_until_opt(grace) => self.handle(Event::GraceOver, &mut in_flight),
                () = sleep_until_opt(expiry) => {
                    self.history.expired_at = self.state.phase.expiry().map(|e| e.at);
                    warn!(
                        token = %self.member_names(),
                        refreshing = in_flight.is_some(),
                        last_error = self.history.last_error.as_deref().unwrap_or_default(),
                        "The token expired before a new one could be obtained; nothing is served for it until one is."
                    );
                    self.handle(Event::Expired, &mut in_flight);
                }
                () = self.links.shared.wake.notified() => {
                    // A wake-up whose request was already served by an attempt is stale.
                    if std::mem::take(&mut lock(&self.links.shared.control).forced) {
                        self.handle(Event::Forced, &mut in_flight);
                    }
                }
                () = sleep_until_opt(due) => self.handle(Event::Due, &mut in_flight),
            }
        }
    }

    /// The startup grace deadline, while it matters.
    fn grace_deadline(&self) -> Option<Instant> {
        matches!(self.state.phase, Phase::Starting)
            .then(|| self.started + self.cfg.timing.startup_grace)
    }

    /// Moves the state machine; keeps the wall-clock deadline in step with the schedule.
    fn step(&mut self, event: Event) -> Vec<Action> {
        let now = Instant::now();
        let draws = Draws {
            u: self.rng.f64(),
            u2: self.rng.f64(),
        };
        let before = self.state.timer.at;
        // Moves the phase out rather than cloning the key it holds.
        let current = State {
            phase: std::mem::replace(&mut self.state.phase, Phase::NoKey),
            timer: self.state.timer.clone(),
            pacer: self.state.pacer.clone(),
            refresh_before: self.state.refresh_before,
        };
        let (state, actions) = step(current, event, now, draws);
        self.state = state;
        if self.state.timer.at != before {
            self.next_wall = SystemTime::now() + self.state.timer.at.saturating_duration_since(now);
        }
        actions
    }

    /// Steps and carries out the actions.
    fn handle(&mut self, event: Event, in_flight: &mut Option<InFlight>) {
        let actions = self.step(event);
        self.act(&actions, in_flight);
    }

    fn act(&mut self, actions: &[Action], in_flight: &mut Option<InFlight>) {
        for action in actions {
            match *action {
                Action::Publish => self.publish_all(),
                Action::Attempt { forced } => {
                    // The loop feeds `Due` and `Forced` only while no attempt runs.
                    debug_assert!(in_flight.is_none(), "one attempt at a time");
                    *in_flight = Some(self.start(forced));
                }
            }
        }
    }

    /// Starts one exchange, bounded by [`ATTEMPT_TIMEOUT`].
    fn start(&mut self, forced: bool) -> InFlight {
        {
            let mut control = lock(&self.links.shared.control);
            control.in_flight = true;
            // This attempt answers any report that arrived meanwhile.
            control.forced = false;
        }
        self.history.last_attempt = Some(SystemTime::now());
        let exchanger = self.links.exchanger.clone();
        let key = self.key.clone();
        InFlight {
            exchange: Box::pin(tokio::time::timeout(ATTEMPT_TIMEOUT, async move {
                exchanger.exchange(&key).await
            })),
            forced,
            started: Instant::now(),
        }
    }

    /// Records an attempt's outcome, schedules the next one and publishes.
    fn settle(&mut self, outcome: Outcome, attempt: InFlight, in_flight: &mut Option<InFlight>) {
        let elapsed = attempt.started.elapsed();
        let managed_rejected = {
            let mut control = lock(&self.links.shared.control);
            control.in_flight = false;
            std::mem::take(&mut control.managed_rejected)
        };
        let result = outcome.unwrap_or_else(|_| {
            Err(ExchangeFailure {
                kind: FailureKind::Unavailable,
                cause: Cause::Unanswered,
                message: format!(
                    "the exchange did not finish within {}; check network access to AWS and to the Datadog API",
                    humantime::format_duration(ATTEMPT_TIMEOUT)
                ),
                retry_after: None,
                credential_source: None,
                endpoint: None,
            })
        });
        let names = self.member_names();
        let actions = match result {
            Ok(exchanged) => {
                for m in &self.cfg.members {
                    self.links.metrics.exchange(&m.name, "success", elapsed);
                }
                let obtained_at = SystemTime::now();
                let expiry = exchanged.expires_at.map(|at| {
                    let lifetime = at.duration_since(obtained_at).unwrap_or_default();
                    Expiry {
                        at,
                        deadline: Instant::now() + lifetime,
                        lifetime,
                    }
                });
                let managed = Managed {
                    key: exchanged.key.clone(),
                    obtained_at,
                    expiry,
                };
                self.history.succeeded(exchanged, obtained_at);
                let actions = self.step(Event::Succeeded {
                    managed,
                    forced: attempt.forced,
                });
                match expiry {
                    None => info!(
                        instances = %names,
                        key = %self.state_key().redacted(),
                        next_refresh_in = %humantime::format_duration(self.until_next()),
                        "Obtained a managed key."
                    ),
                    Some(e) => info!(
                        token = %names,
                        access_token = %self.state_key().redacted(),
                        expires_in = %humantime::format_duration(Duration::from_secs(e.lifetime.as_secs())),
                        next_refresh_in = %humantime::format_duration(self.until_next()),
                        "Obtained a delegated API token."
                    ),
                }
                actions
            }
            Err(failure) => {
                for m in &self.cfg.members {
                    self.links
                        .metrics
                        .exchange(&m.name, failure.kind.as_str(), elapsed);
                }
                let actions = self.step(Event::Failed {
                    cause: failure.cause,
                    retry_after: failure.retry_after,
                    rejected: managed_rejected,
                });
                let kind = failure.kind;
                self.history.failed(failure);
                let what = match self.key.credential {
                    Credential::IntakeKey => "Key exchange failed.",
                    Credential::Token => "Token exchange failed.",
                };
                warn!(
                    instances = %names,
                    kind = kind.as_str(),
                    consecutive_failures = self.history.failures,
                    next_attempt_in = %humantime::format_duration(self.until_next()),
                    error = self.history.last_error.as_deref().unwrap_or_default(),
                    "{what}"
                );
                actions
            }
        };
        self.act(&actions, in_flight);
    }

    /// The key just obtained (only called in `Serving`).
    fn state_key(&self) -> &Secret {
        match &self.state.phase {
            Phase::Serving(m) | Phase::Rejected(m) => &m.key,
            Phase::Starting | Phase::NoKey => unreachable!("a key was just obtained"),
        }
    }

    /// Time to the next attempt, to the second, for logs.
    fn until_next(&self) -> Duration {
        let d = self
            .state
            .timer
            .at
            .saturating_duration_since(Instant::now());
        Duration::from_secs(d.as_secs())
    }

    /// Takes a new configuration from `apply`; publishing waits for [`Command::Publish`].
    fn reconfigure(&mut self, cfg: Arc<GroupConfig>) {
        self.cfg = cfg;
        let actions = self.step(Event::Reconfigured {
            interval: self.cfg.interval,
            retry_min: self.cfg.timing.retry_min,
            retry_max: self.cfg.timing.retry_max,
            refresh_before: self.cfg.refresh_before,
        });
        debug_assert!(actions.is_empty(), "{actions:?}");
    }

    fn member_names(&self) -> String {
        self.cfg
            .members
            .iter()
            .map(|m| &*m.name)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn status(&self, member: &Member, reason: Option<String>) -> InstanceStatus {
        let h = &self.history;
        InstanceStatus {
            org_uuid: Some(self.key.org_uuid.clone()),
            endpoint: h.endpoint.clone(),
            region: h.region.clone(),
            // A token's refresh follows its expiry, not an interval.
            refresh_interval: (self.key.credential == Credential::IntakeKey)
                .then_some(self.cfg.interval),
            credential_source: h.credential_source.clone(),
            last_refresh: h.last_refresh,
            last_attempt: h.last_attempt,
            next_refresh: Some(self.next_wall),
            next_is_retry: self.state.timer.retry,
            consecutive_failures: h.failures,
            last_error: h.last_error.clone(),
            last_error_kind: h.last_error_kind,
            fallback_origin: member.fallback_origin.clone(),
            reason,
            fix: None,
            shared_with: shared_with(&self.cfg.members, &member.name),
        }
    }

    /// Publishes every member's view; the key store bumps generations where the served value
    /// changed, which releases long polls.
    pub fn publish_all(&self) {
        let token = self.key.credential == Credential::Token;
        for member in &self.cfg.members {
            let (serve_what, reason) = if token {
                token_view(
                    &self.state.phase,
                    &self.history,
                    self.cfg.timing.startup_grace,
                )
            } else {
                view(
                    &self.state.phase,
                    member.fallback.as_ref(),
                    self.history.last_error_kind,
                    self.cfg.timing.startup_grace,
                )
            };
            let status = self.status(member, reason.clone());
            let (state, served) = match serve_what {
                Serve::Pending => (KeyState::Pending, None),
                Serve::Managed(m) => (
                    KeyState::Active,
                    Some(Served {
                        value: &m.key,
                        source: KeySource::Delegated,
                        obtained_at: m.obtained_at,
                        expires_at: m.expiry.map(|e| e.at),
                    }),
                ),
                Serve::Fallback(f) => (
                    KeyState::Fallback,
                    Some(Served {
                        value: f,
                        source: KeySource::Fallback,
                        obtained_at: SystemTime::now(),
                        expires_at: None,
                    }),
                ),
                Serve::Nothing => (KeyState::Unavailable, None),
            };
            let switched = publish(&member.slot, |s| {
                serve(s, state, served);
                s.status = status;
            });
            if let Some((from, to)) = switched {
                log_switch(&member.name, from, to, reason.as_deref(), token);
            }
        }
    }
}

fn shared_with(members: &[Member], me: &str) -> Vec<String> {
    members
        .iter()
        .filter(|m| &*m.name != me)
        .map(|m| m.name.to_string())
        .collect()
}

/// Applies `change` unless the instance was removed; returns the state before and after.
pub(super) fn publish(
    slot: &Slot,
    change: impl FnOnce(&mut Snapshot),
) -> Option<(KeyState, KeyState)> {
    let mut states = None;
    slot.update(|s| {
        if s.removed {
            return;
        }
        let before = s.state;
        change(s);
        states = Some((before, s.state));
    });
    states
}

/// What a member is given to serve.
pub(super) struct Served<'a> {
    pub value: &'a Secret,
    pub source: KeySource,
    pub obtained_at: SystemTime,
    /// A token's expiry.
    pub expires_at: Option<SystemTime>,
}

/// Sets what a snapshot serves, keeping `obtained_at` when the value and source are unchanged
/// (so a republished fallback does not look younger than it is).
pub(super) fn serve(s: &mut Snapshot, state: KeyState, served: Option<Served<'_>>) {
    s.state = state;
    s.served = served.map(|new| {
        let obtained_at = match &s.served {
            Some(old) if old.source == new.source && old.value == *new.value => old.obtained_at,
            _ => new.obtained_at,
        };
        ServedKey {
            value: new.value.clone(),
            source: new.source,
            obtained_at,
            expires_at: new.expires_at,
        }
    });
}

/// Logs a change of state once, when it happens (never per request).
fn log_switch(instance: &str, from: KeyState, to: KeyState, reason: Option<&str>, token: bool) {
    if from == to {
        return;
    }
    let from = from.as_str();
    let reason = reason.unwrap_or("");
    if token {
        match to {
            KeyState::Active => info!(token = instance, from, to = "active", "Serving the token."),
            KeyState::Unavailable => warn!(
                token = instance,
                from,
                to = "unavailable",
                reason,
                "No token can be served."
            ),
            _ => debug!(
                token = instance,
                from,
                to = to.as_str(),
                "Token state changed."
            ),
        }
        return;
    }
    match to {
        KeyState::Active => info!(
            instance,
            from,
            to = "active",
            "Switched to the managed key."
        ),
        KeyState::Fallback => {
            warn!(
                instance,
                from,
                to = "fallback",
                reason,
                "Switched to the fallback key."
            )
        }
        KeyState::Unavailable => warn!(
            instance,
            from,
            to = "unavailable",
            reason,
            "No key can be served for this instance."
        ),
        KeyState::Pending => debug!(
            instance,
            from,
            to = "pending",
            "Waiting for a first exchange."
        ),
        // Logged once per load by `Manager::apply`, with the problem and its fix.
        KeyState::Invalid => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tokio::time::Instant;

    use super::super::testing::*;
    use super::super::*;
    use crate::keystore::{KeySource, KeyState, Snapshot};
    use crate::schedule;

    #[tokio::test(start_paused = true)]
    async fn first_exchange_starts_at_once_and_pending_becomes_active() {
        let fake = Fake::new(
            [ok("managed-key-first-00001").after(Wait::For(Duration::from_secs(2)))],
            Otherwise::Keys,
        );
        let h = Harness::start(fake, vec![plan("api_key", Some(ORG), Some(FALLBACK))]).await;
        let slot = h.slot("api_key");
        let g0 = slot.current().generation;
        settle().await;
        assert_eq!(h.call_offsets(), [Duration::ZERO], "first exchange at once");
        assert_eq!(h.fake.calls()[0].1, exchange_key(ORG));
        assert_eq!(slot.current().state, KeyState::Pending);
        assert!(slot.current().served.is_none());
        assert!(!h.store.is_ready());

        let s = until(&slot, "active", |s| s.state == KeyState::Active).await;
        assert_eq!(Instant::now() - h.t0, Duration::from_secs(2));
        assert_eq!(
            served(&s),
            ("managed-key-first-00001", KeySource::Delegated)
        );
        assert!(s.generation > g0);
        assert!(h.store.is_ready());
        let st = &s.status;
        assert_eq!(st.org_uuid.as_deref(), Some(ORG));
        assert_eq!(
            st.endpoint.as_deref(),
            Some("https://app.datadoghq.com/api/v2/intake-key")
        );
        assert_eq!(st.region.as_deref(), Some("us-east-1"));
        assert_eq!(st.credential_source.as_deref(), Some("static environment"));
        assert_eq!(st.refresh_interval, Some(HOUR));
        assert!(st.last_refresh.is_some() && st.last_attempt.is_some());
        let next = st
            .next_refresh
            .expect("next refresh")
            .duration_since(SystemTime::now());
        assert!(next.unwrap_or_default() <= HOUR);
        assert!(!st.next_is_retry);
        assert_eq!(st.consecutive_failures, 0);
        assert_eq!(st.reason, None);
        assert_eq!(st.fallback_origin.as_deref(), Some("api_key"));
        assert!(h.metrics.render(&h.store).contains(
            "delegated_auth_exchanges_total{instance=\"api_key\",outcome=\"success\"} 1"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_first_attempt_serves_the_fallback_until_a_retry_succeeds() {
        let fake = Fake::per_org(
            [
                (Some(ORG), fail(FailureKind::Unauthorized)),
                (Some(ORG), ok("managed-key-second-0002")),
                (Some(OTHER_ORG), fail(FailureKind::Unavailable)),
            ],
            Otherwise::Fail(fail(FailureKind::Unavailable)),
        );
        let h = Harness::start(fake, two_orgs()).await;
        let slot = h.slot("api_key");
        let s = until(&slot, "fallback", |s| s.state == KeyState::Fallback).await;
        assert_eq!(
            Instant::now(),
            h.t0,
            "no waiting for the grace after a failure"
        );
        assert_eq!(served(&s), (FALLBACK, KeySource::Fallback));
        assert_eq!(s.status.consecutive_failures, 1);
        assert_eq!(
            s.status.last_error.as_deref(),
            Some("scripted unauthorized failure")
        );
        assert_eq!(s.status.last_error_kind, Some(FailureKind::Unauthorized));
        assert!(s.status.next_is_retry);
        assert!(reason(&s).contains("last exchange failed (unauthorized)"));
        // The second instance has no fallback: unavailable while its exchange fails.
        let other = h.slot("logs_config.api_key").current();
        assert_eq!(other.state, KeyState::Unavailable);
        assert!(other.served.is_none());
        assert!(reason(&other).contains("no fallback api_key is configured"));

        let s = until(&slot, "active", |s| s.state == KeyState::Active).await;
        let retry_at = Instant::now() - h.t0;
        assert!(
            retry_at >= Duration::from_secs(1) && retry_at <= Duration::from_secs(2),
            "first retry after {retry_at:?}"
        );
        assert_eq!(
            served(&s),
            ("managed-key-second-0002", KeySource::Delegated)
        );
        assert_eq!(s.status.consecutive_failures, 0);
        assert_eq!(s.status.last_error, None);
        assert_eq!(s.status.reason, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_first_exchange_is_bounded_by_the_startup_grace() {
        let fake = Fake::new(
            [
                ok("never-delivered-key-0").after(Wait::Forever),
                ok("never-delivered-key-1").after(Wait::Forever),
            ],
            Otherwise::Keys,
        );
        let h = Harness::start(fake, two_orgs()).await;
        let with = h.slot("api_key");
        let without = h.slot("logs_config.api_key");
        let grace = timing().startup_grace;

        tokio::time::sleep_until(h.t0 + grace - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(with.current().state, KeyState::Pending);
        assert_eq!(without.current().state, KeyState::Pending);

        tokio::time::sleep_until(h.t0 + grace).await;
        settle().await;
        let s = with.current();
        assert_eq!(served(&s), (FALLBACK, KeySource::Fallback));
        assert!(reason(&s).contains("startup grace of 10s"));
        let s = without.current();
        assert_eq!(s.state, KeyState::Unavailable);
        assert!(s.served.is_none());
        assert!(reason(&s).contains("no fallback api_key is configured"));
        assert_eq!(h.fake.calls().len(), 2, "still one attempt per group");

        // The hung attempt ends at the attempt timeout and the retry succeeds.
        let s = until(&with, "active", |s| s.state == KeyState::Active).await;
        let at = Instant::now() - h.t0;
        assert!(at >= ATTEMPT_TIMEOUT + Duration::from_secs(1), "{at:?}");
        assert!(at <= ATTEMPT_TIMEOUT + Duration::from_secs(2), "{at:?}");
        assert_eq!(s.status.consecutive_failures, 0);
        until(&without, "active", |s| s.state == KeyState::Active).await;
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_follow_the_jittered_schedule() {
        let h = Harness::start(
            Fake::new([], Otherwise::Keys),
            vec![plan("api_key", Some(ORG), None)],
        )
        .await;
        tokio::time::sleep(24 * HOUR).await;
        let times = h.call_offsets();
        assert!(times.len() >= 24, "{} exchanges in a day", times.len());
        assert_eq!(times[0], Duration::ZERO);
        // The first refresh after startup is re-phased: anywhere in [0, interval].
        assert!(times[1] <= HOUR, "first refresh at {:?}", times[1]);
        for pair in times[1..].windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= HOUR.mul_f64(schedule::STEADY_FLOOR) && gap <= HOUR,
                "refresh gap {gap:?}"
            );
        }
        // Every refresh rotated the key and bumped the generation.
        let s = h.slot("api_key").current();
        assert_eq!(
            served(&s).0,
            format!("generated-managed-key-{:06}", times.len())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_without_a_key_back_off_exponentially_with_full_jitter_and_a_cap() {
        let h = Harness::start(
            Fake::new([], Otherwise::Fail(fail(FailureKind::Unavailable))),
            vec![plan("api_key", Some(ORG), None)],
        )
        .await;
        tokio::time::sleep(2 * HOUR).await;
        let times = h.call_offsets();
        assert!(times.len() > 20, "{} attempts", times.len());
        for (n, pair) in times.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            let window = Duration::from_secs((1u64 << (n + 1).min(20)).min(300));
            assert!(
                gap >= Duration::from_secs(1) && gap <= window,
                "retry {} after {gap:?}, window {window:?}",
                n + 1
            );
        }
        let s = h.slot("api_key").current();
        assert_eq!(s.state, KeyState::Unavailable);
        assert_eq!(s.status.consecutive_failures as usize, times.len());
        assert!(s.status.next_is_retry);
        assert!(h.metrics.render(&h.store).contains(&format!(
            "delegated_auth_exchanges_total{{instance=\"api_key\",outcome=\"unavailable\"}} {}",
            times.len()
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_sets_the_floor_of_the_next_attempt() {
        let fake = Fake::new([throttled(Duration::from_secs(120))], Otherwise::Keys);
        let h = Harness::start(fake, vec![plan("api_key", Some(ORG), None)]).await;
        let slot = h.slot("api_key");
        until(&slot, "active", |s| s.state == KeyState::Active).await;
        let retry = h.call_offsets()[1];
        assert!(
            retry >= Duration::from_secs(120) && retry <= Duration::from_secs(132),
            "retried after {retry:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_managed_key_is_kept_through_failures() {
        let fake = Fake::new(
            [ok("managed-key-kept-00001")],
            Otherwise::Fail(fail(FailureKind::Unavailable)),
        );
        let h = Harness::start(fake, vec![plan("api_key", Some(ORG), Some(FALLBACK))]).await;
        let slot = h.slot("api_key");
        let active = until(&slot, "active", |s| s.state == KeyState::Active).await;
        tokio::time::sleep(5 * HOUR).await;
        let s = slot.current();
        assert_eq!(served(&s), ("managed-key-kept-00001", KeySource::Delegated));
        assert_eq!(
            s.generation, active.generation,
            "failures do not touch the ETag"
        );
        assert!(s.status.consecutive_failures >= 4);
        assert_eq!(s.status.last_error_kind, Some(FailureKind::Unavailable));
        assert!(s.status.next_is_retry);

        // A relaxed lane: each refresh gets three quick retries, then waits for the next beat.
        let times = h.call_offsets();
        let gaps: Vec<Duration> = times[1..].windows(2).map(|w| w[1] - w[0]).collect();
        for (i, gap) in gaps.iter().enumerate() {
            let quick = i % 4 != 3;
            if quick {
                assert!(*gap <= Duration::from_secs(8), "quick retry {i}: {gap:?}");
            } else {
                assert!(
                    *gap >= HOUR.mul_f64(schedule::STEADY_FLOOR) && *gap <= HOUR,
                    "beat {i}: {gap:?}"
                );
            }
        }
        assert!(gaps.len() >= 12);
    }

    /// Server errors while a healthy managed key is served: no quick retries (every daemon of
    /// the fleet gets the same 5xx), one attempt per beat, the key kept all along.
    #[tokio::test(start_paused = true)]
    async fn server_errors_with_a_managed_key_wait_for_the_next_beat() {
        let fake = Fake::new(
            [ok("managed-key-kept-00002")],
            Otherwise::Fail(server_error()),
        );
        let h = Harness::start(fake, vec![plan("api_key", Some(ORG), Some(FALLBACK))]).await;
        let slot = h.slot("api_key");
        let active = until(&slot, "active", |s| s.state == KeyState::Active).await;
        tokio::time::sleep(5 * HOUR).await;
        let s = slot.current();
        assert_eq!(served(&s), ("managed-key-kept-00002", KeySource::Delegated));
        assert_eq!(s.generation, active.generation);
        assert_eq!(s.status.last_error_kind, Some(FailureKind::Unavailable));
        let times = h.call_offsets();
        let gaps: Vec<Duration> = times[1..].windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 3, "{gaps:?}");
        for (i, gap) in gaps.iter().enumerate() {
            assert!(
                *gap >= HOUR.mul_f64(schedule::STEADY_FLOOR) && *gap <= HOUR,
                "attempt {i} after a server error: {gap:?}"
            );
        }
    }

    /// An hour of server errors (the fault matrix's `datadog-500s-for-an-hour`, in virtual
    /// time). The instance that had a managed key keeps serving it, unchanged, until a consumer
    /// reports it rejected; from then on the fallback, never the rejected key. The instance that
    /// never had a key is `unavailable` with its reason all along. Both keep retrying with the
    /// backoff capped at `retry_max` (never giving up, never hammering), and both have a managed
    /// key within `retry_max` of the recovery.
    #[tokio::test(start_paused = true)]
    async fn an_hour_of_server_errors_is_ridden_out_and_recovery_is_prompt() {
        const KEY1: &str = "managed-key-before-outage-1";
        let fake = Fake::per_org([(Some(ORG), ok(KEY1))], Otherwise::Fail(server_error()));
        let h = Harness::start(fake, two_orgs()).await;
        let with = h.slot("api_key");
        let without = h.slot("logs_config.api_key");
        let active = until(&with, "active", |s| s.state == KeyState::Active).await;
        let step = Duration::from_secs(10);
        let check_without = |s: &Snapshot| {
            assert_eq!(s.state, KeyState::Unavailable);
            assert!(s.served.is_none());
            let reason = s.status.reason.as_deref().unwrap_or_default();
            assert!(
                reason.contains("last exchange failed (unavailable)"),
                "{reason}"
            );
            assert!(
                reason.contains("no fallback api_key is configured"),
                "{reason}"
            );
        };

        // Ten minutes: the managed key, untouched.
        while Instant::now() - h.t0 < Duration::from_secs(600) {
            tokio::time::sleep(step).await;
            let s = with.current();
            assert_eq!(served(&s), (KEY1, KeySource::Delegated));
            assert_eq!(s.generation, active.generation);
            check_without(&without.current());
        }
        // A consumer reports it rejected: the forced refresh fails, so the fallback.
        let rejected_at = Instant::now();
        assert_eq!(
            h.manager
                .report_rejected("api_key", &KEY1[KEY1.len() - 5..]),
            RejectOutcome::Scheduled
        );
        until(&with, "fallback", |s| s.state == KeyState::Fallback).await;
        while Instant::now() - h.t0 < HOUR {
            tokio::time::sleep(step).await;
            let s = with.current();
            assert_eq!(served(&s), (FALLBACK, KeySource::Fallback));
            check_without(&without.current());
        }
        let (with_calls, without_calls): (Vec<_>, Vec<_>) = h
            .fake
            .calls()
            .into_iter()
            .partition(|(_, k)| k.org_uuid == ORG);
        let cap = timing().retry_max;
        let gaps = |calls: &[(Instant, ExchangeKey)], from: Instant| -> Vec<Duration> {
            let times: Vec<Instant> = calls
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| *t >= from)
                .collect();
            times.windows(2).map(|w| w[1] - w[0]).collect()
        };
        for (who, calls, from) in [
            ("never had a key", &without_calls, h.t0),
            ("rejected", &with_calls, rejected_at),
        ] {
            let gaps = gaps(calls, from);
            assert!(gaps.len() >= 9, "{who}: {} retries", gaps.len());
            assert!(gaps.len() <= 600, "{who}: {} retries", gaps.len());
            for gap in &gaps {
                assert!(
                    *gap >= timing().retry_min && *gap <= cap,
                    "{who}: gap {gap:?}"
                );
            }
        }
        let s = without.current();
        assert_eq!(s.status.consecutive_failures as usize, without_calls.len());
        assert!(s.status.next_is_retry);

        // The service is back: both have a managed key within retry_max.
        h.fake.set_otherwise(Otherwise::Keys);
        let recovered_from = Instant::now();
        let s = until(&with, "active again", |s| s.state == KeyState::Active).await;
        assert_ne!(served(&s).0, KEY1, "the rejected key is never served again");
        assert!(Instant::now() - recovered_from <= cap);
        until(&without, "active", |s| s.state == KeyState::Active).await;
        assert!(Instant::now() - recovered_from <= cap);
        let s = without.current();
        assert_eq!(s.status.consecutive_failures, 0);
        assert_eq!(s.status.last_error, None);
    }

    const TOKEN: &str = "token:automation";

    /// Exchange times of the fake, relative to the harness start.
    fn offsets(h: &Harness) -> Vec<Duration> {
        h.call_offsets()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_refreshed_inside_its_margin_once_per_lifetime_and_never_with_a_fallback() {
        // 20 s tokens, the default margin: half the lifetime (a quarter would be under 60 s).
        let fake = Fake::new([], Otherwise::Keys);
        let h = Harness::start(
            fake,
            vec![
                plan("api_key", Some(ORG), Some(FALLBACK)),
                token_plan("automation", ORG),
            ],
        )
        .await;
        let slot = h.slot(TOKEN);
        let s = until(&slot, "a token", |s| s.state == KeyState::Active).await;
        let first = s.served.clone().unwrap();
        assert_eq!(first.source, KeySource::Delegated);
        assert!(first.expires_at.is_some(), "a token carries its expiry");
        assert_eq!(s.status.refresh_interval, None, "no interval for a token");
        // Keys and tokens never share an exchange, even for the same org.
        assert_eq!(h.fake.calls().len(), 2);
        assert!(s.status.shared_with.is_empty());

        // Ten lifetimes: each token replaced 10..15 s after it was obtained.
        tokio::time::sleep(Duration::from_secs(200)).await;
        let token_calls: Vec<Duration> = h
            .fake
            .calls()
            .iter()
            .filter(|(_, k)| k.credential == Credential::Token)
            .map(|(t, _)| *t - h.t0)
            .collect();
        for pair in token_calls.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_secs(10) && gap <= Duration::from_secs(15),
                "{gap:?} in {token_calls:?}"
            );
        }
        // 200 s / 10..15 s: between 14 and 21 exchanges, i.e. 1.33..2 per 20 s lifetime.
        assert!((14..=21).contains(&token_calls.len()), "{token_calls:?}");
        assert_eq!(slot.current().state, KeyState::Active);
        assert!(
            offsets(&h).len() > token_calls.len(),
            "the key has its own schedule"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_serves_the_token_until_it_expires_then_nothing_then_the_next_token() {
        let fake = Fake::new([], Otherwise::Keys);
        let h = Harness::start(fake, vec![token_plan("automation", ORG)]).await;
        let slot = h.slot(TOKEN);
        until(&slot, "a token", |s| s.state == KeyState::Active).await;
        let obtained = Instant::now();
        let first = served(&slot.current()).0.to_owned();

        // Datadog goes down: the refresh at 10..15 s fails, and is retried urgently.
        h.fake.set_otherwise(Otherwise::Fail(server_error()));
        // (A failure alone changes no generation, so nothing to wait on: look at 16 s.)
        tokio::time::sleep(Duration::from_secs(16)).await;
        let s = slot.current();
        assert!(s.status.consecutive_failures > 0);
        assert_eq!(s.state, KeyState::Active, "still valid: still served");
        assert_eq!(served(&s).0, first);

        // At the expiry, nothing is served: no fallback, no stale token.
        let s = until(&slot, "unavailable", |s| s.state == KeyState::Unavailable).await;
        assert_eq!(
            Instant::now() - obtained,
            Duration::from_secs(20),
            "exactly at expiry"
        );
        assert!(s.served.is_none());
        let reason = s.status.reason.clone().unwrap();
        assert!(reason.starts_with("the token expired at "), "{reason}");
        assert!(reason.contains("tokens never fall back"), "{reason}");
        let failures_at_expiry = s.status.consecutive_failures;
        assert!(
            failures_at_expiry >= 2,
            "retried before expiry: {failures_at_expiry}"
        );

        // The failed refreshes all ran inside the margin, the last one no later than the
        // expiry (urgent retries, not the next beat of a key).
        let before_expiry: Vec<Duration> = (h.fake.times().into_iter().skip(1))
            .map(|t| t - obtained)
            .filter(|d| *d <= Duration::from_secs(20))
            .collect();
        assert_eq!(before_expiry.len(), failures_at_expiry as usize);
        assert!(
            before_expiry[0] >= Duration::from_secs(10),
            "{before_expiry:?}"
        );

        // Back up: the next token is served within retry_max.
        h.fake.set_otherwise(Otherwise::Keys);
        let back = Instant::now();
        let s = until(&slot, "a new token", |s| s.state == KeyState::Active).await;
        assert_ne!(served(&s).0, first);
        assert!(Instant::now() - back <= timing().retry_max);
        assert_eq!(s.status.reason, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_token_is_refreshed_at_once_and_reports_are_throttled() {
        let fake = Fake::new([], Otherwise::Keys);
        let h = Harness::start(fake, vec![token_plan("automation", ORG)]).await;
        let slot = h.slot(TOKEN);
        until(&slot, "a token", |s| s.state == KeyState::Active).await;
        let first = served(&slot.current()).0.to_owned();
        let suffix = &first[first.len() - 5..];
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            h.manager.report_rejected(TOKEN, suffix),
            RejectOutcome::Scheduled
        );
        let s = until(&slot, "replaced", |s| {
            s.served.as_ref().is_some_and(|k| k.value.expose() != first)
        })
        .await;
        let second = served(&s).0.to_owned();
        assert_eq!(h.fake.calls().len(), 2, "one forced exchange");
        // Within 30 s of the first report, another is throttled.
        assert_eq!(
            h.manager
                .report_rejected(TOKEN, &second[second.len() - 5..]),
            RejectOutcome::Throttled
        );
        assert_eq!(
            h.manager.report_rejected(TOKEN, "zzzzz"),
            RejectOutcome::Ignored,
            "not the token served"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_an_unchanged_token_and_a_new_margin_reschedules_it() {
        let fake = Fake::new([], Otherwise::Keys);
        fake.set_token_lifetime(Duration::from_secs(3600));
        let mut h = Harness::start(fake, vec![token_plan("automation", ORG)]).await;
        let slot = h.slot(TOKEN);
        let s = until(&slot, "a token", |s| s.state == KeyState::Active).await;
        let generation = s.generation;
        let next = s.status.next_refresh.unwrap();

        // The same configuration: same token, same generation, same schedule, no exchange.
        h.apply(vec![token_plan("automation", ORG)]).await;
        settle().await;
        let s = slot.current();
        assert_eq!(s.generation, generation);
        assert_eq!(s.status.next_refresh, Some(next));
        assert_eq!(h.fake.calls().len(), 1);

        // refresh_before: 2m: the refresh moves to 58..59 min after the token was obtained.
        let mut plan = token_plan("automation", ORG);
        plan.refresh_before = Some(Duration::from_secs(120));
        h.apply(vec![plan]).await;
        settle().await;
        let s = slot.current();
        assert_eq!(s.generation, generation, "the token itself is kept");
        let moved = s.status.next_refresh.unwrap();
        let at = moved.duration_since(next).unwrap_or_else(|e| e.duration());
        assert!(at > Duration::from_secs(0), "rescheduled");
        tokio::time::sleep(Duration::from_secs(57 * 60)).await;
        assert_eq!(h.fake.calls().len(), 1, "not refreshed before 58 min");
        tokio::time::sleep(Duration::from_secs(2 * 60 + 1)).await;
        assert_eq!(h.fake.calls().len(), 2, "refreshed in its new window");
    }
}

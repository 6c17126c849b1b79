//! Rejection reports (product §6, §7 `POST /v1/keys/{instance}/rejected`): which group a report
//! reaches, the 30-second throttle, and joining the exchange already running.
//!
//! Request handlers hold a [`ManagerHandle`]; it reads the routing table `apply` swaps in, and
//! talks to a group only through the group's [`GroupShared`]: a small mutex of flags and a
//! `Notify` that wakes the group's task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{REJECTION_THROTTLE, lock};
use crate::keystore::{KeySource, Slot};
use crate::metrics::Metrics;

/// What a rejection report led to (product §7 `POST /v1/keys/{instance}/rejected`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectOutcome {
    /// A refresh was started, or joined the one already running.
    Scheduled,
    /// A refresh was forced less than [`REJECTION_THROTTLE`] ago; nothing was done.
    Throttled,
    /// The suffix does not name the key served now (a stale report), or there is nothing to
    /// refresh (no delegated auth for this instance).
    Ignored,
    /// No instance has that name.
    UnknownInstance,
}

impl RejectOutcome {
    /// The value of the API's `refresh` field and of the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectOutcome::Scheduled => "scheduled",
            RejectOutcome::Throttled => "throttled",
            RejectOutcome::Ignored => "ignored",
            RejectOutcome::UnknownInstance => "unknown_instance",
        }
    }
}

/// Flags shared between a group task and rejection reports.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// An exchange is running: reports join it instead of starting another (single flight).
    pub in_flight: bool,
    /// A report asked for an attempt now.
    pub forced: bool,
    /// When a report last forced (or joined) a refresh, for the throttle.
    pub last_forced: Option<Instant>,
    /// A report named the served *managed* key: if the next attempt fails, fall back.
    pub managed_rejected: bool,
}

/// What a group shares with the reports that reach it.
#[derive(Debug, Default)]
pub(super) struct GroupShared {
    pub control: Mutex<Control>,
    /// Wakes the group's task when a report sets [`Control::forced`].
    pub wake: Notify,
}

/// What the handle needs to route a report.
#[derive(Clone, Debug)]
pub(super) struct Route {
    /// The instance's slot: the report must name the key served there now.
    pub slot: Arc<Slot>,
    /// The group that can refresh it; `None` for a static instance.
    pub group: Option<Arc<GroupShared>>,
}

impl Route {
    fn report(&self, suffix: &str) -> RejectOutcome {
        let snapshot = self.slot.current();
        let Some(served) = &snapshot.served else {
            return RejectOutcome::Ignored;
        };
        if !served.value.suffix_matches(suffix) {
            return RejectOutcome::Ignored;
        }
        let Some(group) = &self.group else {
            return RejectOutcome::Ignored;
        };
        let now = Instant::now();
        let mut control = lock(&group.control);
        if control
            .last_forced
            .is_some_and(|t| now.saturating_duration_since(t) < REJECTION_THROTTLE)
        {
            return RejectOutcome::Throttled;
        }
        control.last_forced = Some(now);
        if served.source == KeySource::Delegated {
            control.managed_rejected = true;
        }
        if control.in_flight {
            // The running exchange replaces the key anyway; its outcome decides.
            return RejectOutcome::Scheduled;
        }
        control.forced = true;
        drop(control);
        group.wake.notify_one();
        RejectOutcome::Scheduled
    }
}

struct HandleInner {
    routes: ArcSwap<HashMap<Arc<str>, Route>>,
    metrics: Arc<Metrics>,
}

/// The part of the manager request handlers need: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct ManagerHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self.inner.routes.load();
        let mut names: Vec<&str> = routes.keys().map(|k| &**k).collect();
        names.sort_unstable();
        f.debug_struct("ManagerHandle")
            .field("instances", &names)
            .finish()
    }
}

impl ManagerHandle {
    /// A handle with no instances.
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        ManagerHandle {
            inner: Arc::new(HandleInner {
                routes: ArcSwap::from_pointee(HashMap::new()),
                metrics,
            }),
        }
    }

    /// Replaces the routing table (one per `apply`).
    pub(super) fn set_routes(&self, routes: HashMap<Arc<str>, Route>) {
        self.inner.routes.store(Arc::new(routes));
    }

    /// A consumer got a 403 with the key ending in `api_key_suffix` (product §6, §7). Never
    /// blocks: at most it wakes the instance's task.
    pub fn report_rejected(&self, instance: &str, api_key_suffix: &str) -> RejectOutcome {
        let routes = self.inner.routes.load();
        let Some(route) = routes.get(instance) else {
            // No metric: the label would come from the request path.
            return RejectOutcome::UnknownInstance;
        };
        let outcome = route.report(api_key_suffix);
        self.inner.metrics.rejection(instance, outcome.as_str());
        match outcome {
            RejectOutcome::Scheduled => info!(
                instance,
                refresh = outcome.as_str(),
                "A consumer reported the served key rejected; refreshing."
            ),
            _ => debug!(
                instance,
                refresh = outcome.as_str(),
                "A consumer reported a key rejected."
            ),
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;
    use tokio::time::Instant;

    use super::super::testing::*;
    use super::super::*;
    use crate::keystore::{KeySource, KeyState};
    use crate::secret::Secret;

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_even_by_a_forced_refresh() {
        let fake = Fake::new([throttled(Duration::from_secs(90))], Otherwise::Keys);
        let h = Harness::start(fake, vec![plan("api_key", Some(ORG), Some(FALLBACK))]).await;
        let slot = h.slot("api_key");
        until(&slot, "fallback", |s| s.state == KeyState::Fallback).await;

        // The fallback is rejected: a refresh is scheduled, but not before Retry-After ends.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            h.manager.report_rejected("api_key", "abcde"),
            RejectOutcome::Scheduled
        );
        settle().await;
        assert_eq!(h.fake.calls().len(), 1);
        until(&slot, "active", |s| s.state == KeyState::Active).await;
        assert_eq!(h.call_offsets(), [Duration::ZERO, Duration::from_secs(90)]);
    }

    #[tokio::test(start_paused = true)]
    async fn rejection_reports_are_scheduled_throttled_or_ignored() {
        let h = Harness::start(
            Fake::new([], Otherwise::Keys),
            vec![
                plan("api_key", Some(ORG), Some(FALLBACK)),
                plan("static", None, Some(FALLBACK)),
            ],
        )
        .await;
        let slot = h.slot("api_key");
        let first = until(&slot, "active", |s| s.state == KeyState::Active).await;
        let first_key = served(&first).0.to_string();
        let suffix = &first_key[first_key.len() - 5..];

        assert_eq!(
            h.manager.report_rejected("nope", suffix),
            RejectOutcome::UnknownInstance
        );
        assert_eq!(
            h.manager.report_rejected("api_key", "zzzzz"),
            RejectOutcome::Ignored,
            "a suffix that is not the served key"
        );
        assert_eq!(
            h.manager.report_rejected("static", "abcde"),
            RejectOutcome::Ignored,
            "nothing to refresh without delegated auth"
        );
        assert_eq!(h.fake.calls().len(), 1);

        let report_at = Instant::now();
        assert_eq!(
            h.manager.report_rejected("api_key", suffix),
            RejectOutcome::Scheduled
        );
        let second = until(&slot, "a new key", |s| s.generation != first.generation).await;
        assert_eq!(
            h.fake.times()[1],
            report_at,
            "the forced refresh starts at once"
        );
        assert_eq!(served(&second).1, KeySource::Delegated);
        let second_key = served(&second).0.to_string();
        assert_ne!(second_key, first_key);

        assert_eq!(
            h.manager.report_rejected("api_key", suffix),
            RejectOutcome::Ignored,
            "a report about the replaced key is stale"
        );
        // The re-phased refresh after a forced one may rotate the key at any time, so each
        // report names the key served at that moment.
        let served_suffix = || {
            let s = slot.current();
            s.served
                .as_ref()
                .expect("served")
                .value
                .suffix()
                .to_string()
        };
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(
            h.manager.report_rejected("api_key", &served_suffix()),
            RejectOutcome::Throttled
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let calls = h.fake.calls().len();
        let report_at = Instant::now();
        assert_eq!(
            h.manager.report_rejected("api_key", &served_suffix()),
            RejectOutcome::Scheduled
        );
        settle().await;
        let times = h.fake.times();
        assert_eq!(times.len(), calls + 1);
        assert_eq!(times[calls], report_at);
        let text = h.metrics.render(&h.store);
        for line in [
            "delegated_auth_rejection_reports_total{instance=\"api_key\",outcome=\"scheduled\"} 2",
            "delegated_auth_rejection_reports_total{instance=\"api_key\",outcome=\"throttled\"} 1",
            "delegated_auth_rejection_reports_total{instance=\"api_key\",outcome=\"ignored\"} 2",
            "delegated_auth_rejection_reports_total{instance=\"static\",outcome=\"ignored\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("instance=\"nope\""));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_key_whose_refresh_fails_falls_back_and_recovers() {
        let fake = Fake::new(
            [
                ok("managed-key-revoked-0001"),
                fail(FailureKind::Unauthorized),
                fail(FailureKind::Unavailable),
                ok("managed-key-fresh-00002"),
            ],
            Otherwise::Keys,
        );
        let h = Harness::start(
            fake,
            vec![
                plan("api_key", Some(ORG), Some(FALLBACK)),
                plan("logs_config.api_key", Some(ORG), None),
            ],
        )
        .await;
        let with = h.slot("api_key");
        let without = h.slot("logs_config.api_key");
        until(&with, "active", |s| s.state == KeyState::Active).await;

        assert_eq!(
            h.manager
                .report_rejected("api_key", Secret::from("managed-key-revoked-0001").suffix()),
            RejectOutcome::Scheduled
        );
        let s = until(&with, "fallback", |s| s.state == KeyState::Fallback).await;
        assert_eq!(served(&s), (FALLBACK, KeySource::Fallback));
        assert!(reason(&s).contains("reported the managed key rejected"));
        // Without a fallback the managed key stays, with the reason visible.
        let w = without.current();
        assert_eq!(
            served(&w),
            ("managed-key-revoked-0001", KeySource::Delegated)
        );
        assert!(reason(&w).contains("no fallback key is configured"));

        // Urgent lane: retries within seconds; the switch back is automatic.
        let s = until(&with, "active again", |s| s.state == KeyState::Active).await;
        assert_eq!(
            served(&s),
            ("managed-key-fresh-00002", KeySource::Delegated)
        );
        assert!(Instant::now() - h.t0 <= Duration::from_secs(6));
        assert_eq!(
            served(&without.current()),
            ("managed-key-fresh-00002", KeySource::Delegated)
        );
        assert_eq!(without.current().status.reason, None);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reports_during_an_exchange_coalesce_into_it() {
        let gate = Arc::new(Notify::new());
        let fake = Fake::new(
            [
                ok("managed-key-single-0001"),
                fail(FailureKind::Unavailable).after(Wait::Gate(gate.clone())),
            ],
            Otherwise::Keys,
        );
        let h = Harness::start(fake, vec![plan("api_key", Some(ORG), Some(FALLBACK))]).await;
        let slot = h.slot("api_key");
        until(&slot, "active", |s| s.state == KeyState::Active).await;
        // Let the scheduled refresh start; it hangs on the gate.
        while h.fake.calls().len() < 2 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }

        let handle = h.manager.handle();
        let reports: Vec<_> = (0..16)
            .map(|_| {
                let handle = handle.clone();
                tokio::spawn(async move { handle.report_rejected("api_key", "-0001") })
            })
            .collect();
        let mut outcomes = Vec::new();
        for r in reports {
            outcomes.push(r.await.unwrap());
        }
        let scheduled = outcomes
            .iter()
            .filter(|o| **o == RejectOutcome::Scheduled)
            .count();
        assert_eq!(scheduled, 1, "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, RejectOutcome::Scheduled | RejectOutcome::Throttled))
        );
        settle().await;
        assert_eq!(h.fake.calls().len(), 2, "no second exchange while one runs");

        // The running exchange was the forced refresh: its failure means fallback, and the
        // next attempt is an ordinary retry, not a second exchange queued by the reports.
        let opened = Instant::now();
        gate.notify_one();
        until(&slot, "fallback", |s| s.state == KeyState::Fallback).await;
        until(&slot, "active again", |s| s.state == KeyState::Active).await;
        let times = h.fake.times();
        assert_eq!(times.len(), 3);
        assert!(
            times[2] - opened >= Duration::from_secs(1),
            "retried at once"
        );
    }
}

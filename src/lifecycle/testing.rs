//! Test support for the lifecycle's unit tests: a scripted in-memory [`Exchanger`], a manager
//! harness on paused time, and waiting helpers.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    Credential, ExchangeFailure, ExchangeKey, Exchanged, Exchanger, FailureKind, InstancePlan,
    Manager, Timing, lock,
};
use crate::keystore::{KeySource, KeyStore, Slot, Snapshot};
use crate::metrics::Metrics;
use crate::schedule::Cause;
use crate::secret::Secret;

pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const ORG: &str = "11111111-2222-3333-4444-555555555555";
pub(super) const OTHER_ORG: &str = "99999999-8888-7777-6666-555555555555";
pub(super) const FALLBACK: &str = "static-fallback-key-0000abcde";

/// How a scripted exchange behaves before answering.
#[derive(Clone)]
pub(super) enum Wait {
    No,
    For(Duration),
    Gate(Arc<Notify>),
    Forever,
}

/// One scripted exchange.
#[derive(Clone)]
pub(super) struct Step {
    wait: Wait,
    outcome: Result<String, (FailureKind, Cause, Option<Duration>)>,
}

pub(super) fn ok(key: &str) -> Step {
    Step {
        wait: Wait::No,
        outcome: Ok(key.to_string()),
    }
}

/// A failure of this kind. `unavailable` stands for a request that got no answer (a
/// refused connection); [`server_error`] for the server answering 5xx.
pub(super) fn fail(kind: FailureKind) -> Step {
    let cause = match kind {
        FailureKind::Unavailable | FailureKind::Credentials | FailureKind::Config => {
            Cause::Unanswered
        }
        FailureKind::Unauthorized | FailureKind::Throttled | FailureKind::InvalidResponse => {
            Cause::Answered
        }
    };
    Step {
        wait: Wait::No,
        outcome: Err((kind, cause, None)),
    }
}

/// The Datadog API answered 5xx.
pub(super) fn server_error() -> Step {
    Step {
        wait: Wait::No,
        outcome: Err((FailureKind::Unavailable, Cause::Answered, None)),
    }
}

pub(super) fn throttled(retry_after: Duration) -> Step {
    Step {
        wait: Wait::No,
        outcome: Err((FailureKind::Throttled, Cause::Answered, Some(retry_after))),
    }
}

impl Step {
    pub(super) fn after(mut self, wait: Wait) -> Step {
        self.wait = wait;
        self
    }
}

/// What the fake does once its script is used up.
pub(super) enum Otherwise {
    /// A new key each time.
    Keys,
    /// Fail like this step.
    Fail(Step),
}

/// In-memory exchanger: plays a script, records when it was called and for what.
pub(super) struct Fake {
    /// Steps, each for one org or (`None`) for any.
    script: Mutex<VecDeque<(Option<&'static str>, Step)>>,
    otherwise: Mutex<Otherwise>,
    calls: Mutex<Vec<(Instant, ExchangeKey)>>,
    /// Lifetime of the tokens it issues (token exchanges only).
    token_lifetime: Mutex<Duration>,
}

impl Fake {
    pub(super) fn new(script: impl IntoIterator<Item = Step>, otherwise: Otherwise) -> Arc<Fake> {
        Fake::per_org(script.into_iter().map(|s| (None, s)), otherwise)
    }

    pub(super) fn per_org(
        script: impl IntoIterator<Item = (Option<&'static str>, Step)>,
        otherwise: Otherwise,
    ) -> Arc<Fake> {
        Arc::new(Fake {
            script: Mutex::new(script.into_iter().collect()),
            otherwise: Mutex::new(otherwise),
            calls: Mutex::new(Vec::new()),
            token_lifetime: Mutex::new(TOKEN_LIFETIME),
        })
    }

    /// Changes the lifetime of the tokens issued from now on.
    pub(super) fn set_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.token_lifetime) = lifetime;
    }

    /// Changes what the fake does once its script is used up (an outage ends).
    pub(super) fn set_otherwise(&self, otherwise: Otherwise) {
        *lock(&self.otherwise) = otherwise;
    }

    pub(super) fn calls(&self) -> Vec<(Instant, ExchangeKey)> {
        lock(&self.calls).clone()
    }

    pub(super) fn times(&self) -> Vec<Instant> {
        self.calls().into_iter().map(|(t, _)| t).collect()
    }
}

impl Exchanger for Fake {
    fn exchange(
        &self,
        key: &ExchangeKey,
    ) -> impl Future<Output = Result<Exchanged, ExchangeFailure>> + Send {
        let n = {
            let mut calls = lock(&self.calls);
            calls.push((Instant::now(), key.clone()));
            calls.len()
        };
        let scripted = {
            let mut script = lock(&self.script);
            script
                .iter()
                .position(|(org, _)| org.is_none_or(|o| o == key.org_uuid))
                .and_then(|i| script.remove(i))
                .map(|(_, step)| step)
        };
        let step = scripted.unwrap_or_else(|| match *lock(&self.otherwise) {
            Otherwise::Keys => ok(&format!("generated-managed-key-{n:06}")),
            Otherwise::Fail(ref step) => step.clone(),
        });
        let (endpoint, expires_at) = match key.credential {
            Credential::IntakeKey => (format!("{}/api/v2/intake-key", key.target), None),
            Credential::Token => (
                format!("{}/api/v2/delegated-token", key.target),
                Some(std::time::SystemTime::now() + *lock(&self.token_lifetime)),
            ),
        };
        async move {
            match step.wait {
                Wait::No => {}
                Wait::For(d) => tokio::time::sleep(d).await,
                Wait::Gate(gate) => gate.notified().await,
                Wait::Forever => std::future::pending().await,
            }
            match step.outcome {
                Ok(key) => Ok(Exchanged {
                    key: Secret::new(key),
                    expires_at,
                    credential_source: Some("static environment".to_string()),
                    endpoint,
                    region: Some("us-east-1".to_string()),
                }),
                Err((kind, cause, retry_after)) => Err(ExchangeFailure {
                    kind,
                    cause,
                    message: format!("scripted {kind} failure"),
                    retry_after,
                    credential_source: Some("static environment".to_string()),
                    endpoint: Some(endpoint),
                }),
            }
        }
    }
}

pub(super) fn timing() -> Timing {
    Timing {
        retry_min: Duration::from_secs(1),
        retry_max: Duration::from_secs(300),
        startup_grace: Duration::from_secs(10),
    }
}

pub(super) fn exchange_key(org: &str) -> ExchangeKey {
    ExchangeKey {
        credential: Credential::IntakeKey,
        org_uuid: org.to_string(),
        target: "https://app.datadoghq.com".to_string(),
        region: None,
    }
}

pub(super) fn plan(name: &str, org: Option<&str>, fallback: Option<&str>) -> InstancePlan {
    InstancePlan {
        name: name.to_string(),
        exchange: org.map(exchange_key),
        refresh_interval: HOUR,
        refresh_before: None,
        fallback: fallback.map(Secret::from),
        fallback_origin: fallback.map(|_| "api_key".to_string()),
        invalid: None,
        aliases: Vec::new(),
    }
}

/// Lifetime of the fake's tokens unless a test changes it.
pub(super) const TOKEN_LIFETIME: Duration = Duration::from_secs(20);

/// A token named `name` (its slot is `token:<name>`) for `org`.
pub(super) fn token_plan(name: &str, org: &str) -> InstancePlan {
    InstancePlan {
        name: crate::keystore::token_slot(name),
        exchange: Some(ExchangeKey {
            credential: Credential::Token,
            org_uuid: org.to_string(),
            target: "https://api.datadoghq.com".to_string(),
            region: None,
        }),
        refresh_before: None,
        ..plan(name, None, None)
    }
}

/// `api_key` with a fallback, and `logs_config.api_key` without one, in another org.
pub(super) fn two_orgs() -> Vec<InstancePlan> {
    vec![
        plan("api_key", Some(ORG), Some(FALLBACK)),
        plan("logs_config.api_key", Some(OTHER_ORG), None),
    ]
}

pub(super) struct Harness {
    pub(super) store: Arc<KeyStore>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) fake: Arc<Fake>,
    pub(super) manager: Manager<Fake>,
    pub(super) shutdown: CancellationToken,
    pub(super) t0: Instant,
}

impl Harness {
    pub(super) fn new(fake: Arc<Fake>) -> Harness {
        let store = Arc::new(KeyStore::new());
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let manager = Manager::new(
            store.clone(),
            metrics.clone(),
            fake.clone(),
            shutdown.clone(),
        );
        Harness {
            store,
            metrics,
            fake,
            manager,
            shutdown,
            t0: Instant::now(),
        }
    }

    /// A harness with `plans` applied.
    pub(super) async fn start(fake: Arc<Fake>, plans: Vec<InstancePlan>) -> Harness {
        let mut h = Harness::new(fake);
        h.apply(plans).await;
        h
    }

    pub(super) async fn apply(&mut self, plans: Vec<InstancePlan>) {
        self.manager.apply(plans, timing()).await;
    }

    pub(super) fn slot(&self, name: &str) -> Arc<Slot> {
        self.store.get(name).expect("instance exists")
    }

    /// Call times relative to the start.
    pub(super) fn call_offsets(&self) -> Vec<Duration> {
        self.fake.times().into_iter().map(|t| t - self.t0).collect()
    }
}

/// Lets spawned tasks run without moving the clock.
pub(super) async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Waits (in virtual time, at most three days) until the slot satisfies `done`.
pub(super) async fn until(
    slot: &Slot,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let mut rx = slot.subscribe();
    let seen = tokio::time::timeout(3 * 24 * HOUR, rx.wait_for(|s| done(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("slot alive");
    seen.clone()
}

pub(super) fn served(s: &Snapshot) -> (&str, KeySource) {
    let k = s.served.as_ref().expect("a key is served");
    (k.value.expose(), k.source)
}

/// The status reason, or `""`.
pub(super) fn reason(s: &Snapshot) -> &str {
    s.status.reason.as_deref().unwrap_or_default()
}

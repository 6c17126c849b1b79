//! The refresh manager: obtains managed keys, keeps them fresh, and decides what each instance
//! serves (product §6).
//!
//! # Shape
//!
//! - Instances with the same [`ExchangeKey`] (org, exchange target, region) form a *group*: one
//!   task, one exchange, one managed key, published to every member's [`Slot`]. The group's
//!   refresh interval is the shortest of its members' (the key must satisfy the most demanding).
//! - Instances without delegated auth ("static") have no task: [`Manager::apply`] publishes their
//!   fallback key (or `unavailable`) directly.
//! - A group task sleeps until its next deadline, a trigger (a rejection report, through a
//!   [`Notify`]), a configuration change (a `watch` channel) or shutdown. It never polls.
//! - The policy deciding *when* (jitter, backoff, lanes, `Retry-After`) lives in
//!   [`crate::schedule`]; this module decides *what* is served and records status and metrics.
//!
//! # Sharing with the server
//!
//! [`Manager`] is owned by the reload loop (`apply` takes `&mut self`). Request handlers hold a
//! [`ManagerHandle`] (cheap to clone, `Send + Sync`): it reads an `ArcSwap`ped routing table that
//! `apply` replaces, so [`ManagerHandle::report_rejected`] never waits for a reload or an exchange;
//! it only takes the group's small control mutex for a few instructions.
//!
//! # What is served
//!
//! | group state                                  | member with fallback | member without   |
//! |----------------------------------------------|----------------------|------------------|
//! | first attempt running, grace not over         | `pending`            | `pending`        |
//! | no managed key (first attempt failed / grace) | `fallback`           | `unavailable`    |
//! | managed key                                   | `active`             | `active`         |
//! | managed key reported rejected, refresh failed | `fallback`           | `active` (\*)    |
//!
//! (\*) Without a fallback the rejected managed key is still served: a rejection reported by one
//! consumer may be specific to it, and an `unavailable` instance fails every consumer for sure.
//! The status `reason` says so.
//!
//! A rejection report is honoured when its suffix names the key the instance serves now, managed
//! or fallback: when the fallback itself is rejected, a refresh is the only thing that can help,
//! so it is forced too (under the same 30-second throttle).
//!
//! # Metrics
//!
//! Each attempt is counted (and timed) under every member of the group, so that each
//! instance's series is complete on its own; summing exchanges over instances counts a shared
//! exchange once per member (`shared_with` in status says which). Rejection reports are counted
//! per instance and outcome, except for unknown instance names, which would let a client grow
//! the label set.
//!
//! # Ownership of slots across reloads
//!
//! Each instance's slot has an *owner* (a group id, or the static publisher). A reload that moves
//! an instance to another group changes the owner first, under the same lock that publishing
//! takes, so a task that is being stopped can never overwrite what its successor published.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::keystore::{InstanceStatus, KeySource, KeyState, KeyStore, ServedKey, Slot, Snapshot};
use crate::metrics::Metrics;
use crate::schedule::{self, Cause, Lane, Pacer};
use crate::secret::Secret;

/// Minimum time between two refreshes forced by rejection reports, per group (product §6; the
/// Agent's `minTriggerRefreshInterval`).
pub const REJECTION_THROTTLE: Duration = Duration::from_secs(30);

/// Upper bound on one attempt. The exchanger has its own, shorter timeouts (credentials, 30 s
/// for the HTTP exchange); this one only guarantees that a bug there cannot stall an instance
/// forever.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Owner id of slots published by [`Manager::apply`] itself (static instances).
const STATIC_OWNER: u64 = 0;

/// Reason shown for instances without delegated auth.
const STATIC_REASON: &str = "delegated_auth not enabled for this section";

/// What one exchange needs. Instances with equal keys share one exchange and one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeKey {
    /// The Datadog org the proof is bound to (`x-ddog-org-id`).
    pub org_uuid: String,
    /// The exchange target (the endpoint the instance sends to); the exchanger derives the API
    /// base and the intake-key URL from it.
    pub target: String,
    /// STS signing region, when configured.
    pub region: Option<String>,
}

/// One instance as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct InstancePlan {
    /// Instance name (product §6), e.g. `api_key` or `logs_config.api_key`.
    pub name: String,
    /// The exchange, or `None` when the section has no delegated auth (static key only).
    pub exchange: Option<ExchangeKey>,
    /// How often the managed key is refreshed.
    pub refresh_interval: Duration,
    /// The static key served when no managed key can be.
    pub fallback: Option<Secret>,
    /// Where the fallback comes from (`api_key`, `fallback_api_key_file`, …), for status.
    pub fallback_origin: Option<String>,
    /// An inert configuration entry (wire spec §10.2): what is wrong with it, and the fix. Such
    /// a plan has no exchange and no fallback, and is published in state `invalid`.
    pub invalid: Option<InvalidEntry>,
    /// Old names that still reach this instance (for one release).
    pub aliases: Vec<String>,
}

/// What is wrong with an inert configuration entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidEntry {
    /// The problem, with its location (`file:line: key: message`).
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

/// Process-wide timing settings (`refresh.*` of the daemon settings).
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Smallest retry delay after a failure.
    pub retry_min: Duration,
    /// Largest retry delay while nothing managed is served.
    pub retry_max: Duration,
    /// How long readers wait for the first exchange before the fallback is served.
    pub startup_grace: Duration,
}

/// A successful exchange.
#[derive(Clone, Debug)]
pub struct Exchanged {
    /// The managed API key.
    pub key: Secret,
    /// The AWS credential source used (Agent wording, e.g. `EC2 IMDS`).
    pub credential_source: Option<String>,
    /// The intake-key URL used.
    pub endpoint: String,
    /// The STS region the proof was signed for (`None` = global endpoint).
    pub region: Option<String>,
}

/// A failed exchange.
#[derive(Clone, Debug)]
pub struct ExchangeFailure {
    /// `unauthorized`, `throttled`, `unavailable`, `invalid_response`, `credentials` or `config`.
    pub kind: &'static str,
    /// Whether the Datadog API answered; decides whether quick retries are worth it.
    pub cause: Cause,
    /// Operator-readable description with the fix, without secrets.
    pub message: String,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// The AWS credential source, when one was selected before the failure.
    pub credential_source: Option<String>,
    /// The intake-key URL, when the failure happened after it was derived.
    pub endpoint: Option<String>,
}

/// Performs exchanges. The real one resolves AWS credentials, signs a proof and calls Datadog;
/// tests use an in-memory fake.
pub trait Exchanger: Send + Sync + 'static {
    /// Obtains a managed key for `key`. Must not retry internally: the manager owns backoff.
    fn exchange(
        &self,
        key: &ExchangeKey,
    ) -> impl Future<Output = Result<Exchanged, ExchangeFailure>> + Send;
}

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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something ever did, the data (flags and an
    // id) is still consistent, so recovering is better than poisoning the whole daemon.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One instance's slot and who may write to it.
#[derive(Debug)]
struct Publisher {
    slot: Arc<Slot>,
    owner: Mutex<u64>,
}

impl Publisher {
    fn new(slot: Arc<Slot>) -> Self {
        Publisher {
            slot,
            owner: Mutex::new(STATIC_OWNER),
        }
    }

    fn owner(&self) -> u64 {
        *lock(&self.owner)
    }

    fn set_owner(&self, owner: u64) {
        *lock(&self.owner) = owner;
    }

    /// Applies `change` if `owner` still owns the slot and the instance was not removed; returns
    /// the state before and after.
    fn publish(
        &self,
        owner: u64,
        change: impl FnOnce(&mut Snapshot),
    ) -> Option<(KeyState, KeyState)> {
        let current = lock(&self.owner);
        if *current != owner {
            return None;
        }
        let mut states = None;
        self.slot.update(|s| {
            if s.removed {
                return;
            }
            let before = s.state;
            change(s);
            states = Some((before, s.state));
        });
        drop(current);
        states
    }
}

/// Sets what a snapshot serves, keeping `obtained_at` when the value and source are unchanged
/// (so a republished fallback does not look younger than it is).
fn serve(s: &mut Snapshot, state: KeyState, served: Option<(&Secret, KeySource, SystemTime)>) {
    s.state = state;
    s.served = served.map(|(value, source, obtained_at)| {
        let obtained_at = match &s.served {
            Some(old) if old.source == source && old.value == *value => old.obtained_at,
            _ => obtained_at,
        };
        ServedKey {
            value: value.clone(),
            source,
            obtained_at,
        }
    });
}

/// Logs a change of state once, when it happens (never per request).
fn log_switch(instance: &str, from: KeyState, to: KeyState, reason: Option<&str>) {
    if from == to {
        return;
    }
    let from = from.as_str();
    let reason = reason.unwrap_or("");
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

/// A member of a group, as the group task sees it.
#[derive(Clone, Debug)]
struct Member {
    name: Arc<str>,
    publisher: Arc<Publisher>,
    fallback: Option<Secret>,
    fallback_origin: Option<String>,
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && Arc::ptr_eq(&self.publisher, &other.publisher)
            && self.fallback == other.fallback
            && self.fallback_origin == other.fallback_origin
    }
}

/// What a group task is told by `apply`.
#[derive(Clone, Debug, PartialEq)]
struct GroupConfig {
    interval: Duration,
    timing: Timing,
    members: Vec<Member>,
}

/// Flags shared between a group task and rejection reports.
#[derive(Debug, Default)]
struct Control {
    /// An exchange is running: reports join it instead of starting another (single flight).
    in_flight: bool,
    /// A report asked for an attempt now.
    forced: bool,
    /// When a report last forced (or joined) a refresh, for the throttle.
    last_forced: Option<Instant>,
    /// A report named the served *managed* key: if the next attempt fails, fall back.
    managed_rejected: bool,
}

#[derive(Debug, Default)]
struct GroupShared {
    control: Mutex<Control>,
    wake: Notify,
}

/// What the handle needs to route a report.
#[derive(Clone, Debug)]
struct Route {
    slot: Arc<Slot>,
    group: Option<Arc<GroupShared>>,
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

/// A running group, as the manager keeps it.
struct GroupEntry {
    id: u64,
    cancel: CancellationToken,
    config: watch::Sender<Arc<GroupConfig>>,
    shared: Arc<GroupShared>,
}

/// Owns the group tasks. See the module doc.
pub struct Manager<E: Exchanger> {
    store: Arc<KeyStore>,
    metrics: Arc<Metrics>,
    exchanger: Arc<E>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handle: ManagerHandle,
    publishers: HashMap<Arc<str>, Arc<Publisher>>,
    groups: HashMap<ExchangeKey, GroupEntry>,
    next_id: u64,
}

impl<E: Exchanger> Manager<E> {
    /// A manager with no instances; call [`Manager::apply`] with the configuration.
    pub fn new(
        store: Arc<KeyStore>,
        metrics: Arc<Metrics>,
        exchanger: Arc<E>,
        shutdown: CancellationToken,
    ) -> Self {
        let handle = ManagerHandle {
            inner: Arc::new(HandleInner {
                routes: ArcSwap::from_pointee(HashMap::new()),
                metrics: metrics.clone(),
            }),
        };
        Manager {
            store,
            metrics,
            exchanger,
            shutdown,
            tracker: TaskTracker::new(),
            handle,
            publishers: HashMap::new(),
            groups: HashMap::new(),
            next_id: STATIC_OWNER + 1,
        }
    }

    /// The handle for request handlers.
    pub fn handle(&self) -> ManagerHandle {
        self.handle.clone()
    }

    /// Applies the initial configuration or a reload. Never blocks on the network; must be
    /// called within a tokio runtime (it spawns the group tasks).
    ///
    /// - A group whose [`ExchangeKey`] is unchanged keeps its task, key, generation and
    ///   schedule; changes of fallback, members or timing apply in place, and a change of the
    ///   refresh interval re-draws the next refresh.
    /// - An instance whose exchange changed (another org, target or region) joins another group:
    ///   it goes back to `pending` and is served like at startup.
    /// - Groups no longer needed stop; removed instances' slots are removed (their waiters wake).
    pub fn apply(&mut self, plans: Vec<InstancePlan>, timing: Timing) {
        let mut seen = HashSet::new();
        let plans: Vec<InstancePlan> = plans
            .into_iter()
            .filter(|p| {
                let first = seen.insert(p.name.clone());
                if !first {
                    warn!(instance = %p.name, "Ignored a second instance with the same name.");
                }
                first
            })
            .map(|mut p| {
                p.fallback = p.fallback.filter(|f| !f.is_empty());
                p
            })
            .collect();
        let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
        let slots = self.store.set_instances(&names);
        let aliases: Vec<(String, String)> = plans
            .iter()
            .flat_map(|p| p.aliases.iter().map(|a| (a.clone(), p.name.clone())))
            .collect();
        self.store.set_aliases(&aliases);

        let mut publishers = HashMap::with_capacity(plans.len());
        for (plan, slot) in plans.iter().zip(slots) {
            let publisher = match self.publishers.get(plan.name.as_str()) {
                Some(p) if Arc::ptr_eq(&p.slot, &slot) => p.clone(),
                _ => Arc::new(Publisher::new(slot)),
            };
            publishers.insert(Arc::<str>::from(plan.name.as_str()), publisher);
        }
        self.publishers = publishers;

        // Group by exchange, in configuration order.
        let mut order: Vec<&ExchangeKey> = Vec::new();
        let mut grouped: HashMap<&ExchangeKey, Vec<&InstancePlan>> = HashMap::new();
        for plan in &plans {
            if let Some(key) = &plan.exchange {
                let members = grouped.entry(key).or_default();
                if members.is_empty() {
                    order.push(key);
                }
                members.push(plan);
            }
        }
        self.groups.retain(|key, entry| {
            let keep = grouped.contains_key(key);
            if !keep {
                entry.cancel.cancel();
            }
            keep
        });

        let mut routes = HashMap::with_capacity(plans.len());
        for key in order {
            let plans = &grouped[key];
            let interval = plans
                .iter()
                .map(|p| p.refresh_interval)
                .min()
                .unwrap_or(Duration::from_secs(3600));
            let members: Vec<Member> = plans
                .iter()
                .map(|p| Member {
                    name: Arc::from(p.name.as_str()),
                    publisher: self.publishers[p.name.as_str()].clone(),
                    fallback: p.fallback.clone(),
                    fallback_origin: p.fallback_origin.clone(),
                })
                .collect();
            let config = Arc::new(GroupConfig {
                interval,
                timing: timing.clone(),
                members,
            });
            let (id, shared) = match self.groups.get(key) {
                Some(entry) => {
                    take_over(entry.id, key, &config);
                    entry.config.send_if_modified(|current| {
                        let changed = **current != *config;
                        if changed {
                            *current = config.clone();
                        }
                        changed
                    });
                    (entry.id, entry.shared.clone())
                }
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    take_over(id, key, &config);
                    let shared = Arc::new(GroupShared::default());
                    let cancel = self.shutdown.child_token();
                    let (tx, rx) = watch::channel(config.clone());
                    let task = Task::new(
                        id,
                        key.clone(),
                        self.exchanger.clone(),
                        self.metrics.clone(),
                        shared.clone(),
                        cancel.clone(),
                        rx,
                    );
                    self.tracker.spawn(task.run());
                    self.groups.insert(
                        key.clone(),
                        GroupEntry {
                            id,
                            cancel,
                            config: tx,
                            shared: shared.clone(),
                        },
                    );
                    (id, shared)
                }
            };
            debug!(group = id, org_uuid = %key.org_uuid, target = %crate::exchange::redact_userinfo(&key.target), members = config.members.len(), "Exchange group configured.");
            for m in &config.members {
                routes.insert(
                    m.name.clone(),
                    Route {
                        slot: m.publisher.slot.clone(),
                        group: Some(shared.clone()),
                    },
                );
            }
        }

        // Once per load: the entries stay inert until the configuration changes.
        for plan in &plans {
            if let Some(entry) = &plan.invalid {
                warn!(instance = %plan.name, problem = %entry.problem, fix = %entry.fix, "This configuration entry is invalid and stays inert; every other instance runs.");
            }
        }
        for plan in plans.iter().filter(|p| p.exchange.is_none()) {
            let publisher = &self.publishers[plan.name.as_str()];
            publisher.set_owner(STATIC_OWNER);
            publish_static(plan, publisher);
            routes.insert(
                Arc::from(plan.name.as_str()),
                Route {
                    slot: publisher.slot.clone(),
                    group: None,
                },
            );
        }
        self.handle.inner.routes.store(Arc::new(routes));
    }

    /// A consumer's rejection report; see [`ManagerHandle::report_rejected`].
    pub fn report_rejected(&self, instance: &str, api_key_suffix: &str) -> RejectOutcome {
        self.handle.report_rejected(instance, api_key_suffix)
    }

    /// Waits until every group task has ended. Tasks end when the shutdown token passed to
    /// [`Manager::new`] is cancelled, abandoning any exchange in flight.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl<E: Exchanger> Drop for Manager<E> {
    /// Group tasks have no other owner: stop them rather than leave them refreshing forever.
    fn drop(&mut self) {
        for entry in self.groups.values() {
            entry.cancel.cancel();
        }
    }
}

/// Makes group `id` the owner of its members; members that came from elsewhere (a new slot,
/// another group, a static section) start over as `pending`.
fn take_over(id: u64, key: &ExchangeKey, config: &GroupConfig) {
    for m in &config.members {
        if m.publisher.owner() == id {
            continue;
        }
        m.publisher.set_owner(id);
        m.publisher.publish(id, |s| {
            serve(s, KeyState::Pending, None);
            s.status = InstanceStatus {
                org_uuid: Some(key.org_uuid.clone()),
                region: key.region.clone(),
                refresh_interval: Some(config.interval),
                fallback_origin: m.fallback_origin.clone(),
                shared_with: shared_with(&config.members, &m.name),
                ..InstanceStatus::default()
            };
        });
    }
}

fn shared_with(members: &[Member], me: &str) -> Vec<String> {
    members
        .iter()
        .filter(|m| &*m.name != me)
        .map(|m| m.name.to_string())
        .collect()
}

/// Publishes a static instance: its fallback, or `unavailable`.
fn publish_static(plan: &InstancePlan, publisher: &Publisher) {
    if let Some(entry) = &plan.invalid {
        publisher.publish(STATIC_OWNER, |s| {
            serve(s, KeyState::Invalid, None);
            s.status = InstanceStatus {
                reason: Some(entry.problem.clone()),
                fix: Some(entry.fix.clone()),
                ..InstanceStatus::default()
            };
        });
        return;
    }
    let (state, reason) = match &plan.fallback {
        Some(_) => (KeyState::Fallback, STATIC_REASON.to_string()),
        None => (
            KeyState::Unavailable,
            format!("{STATIC_REASON} and no api_key is configured"),
        ),
    };
    let switched = publisher.publish(STATIC_OWNER, |s| {
        serve(
            s,
            state,
            plan.fallback
                .as_ref()
                .map(|f| (f, KeySource::Fallback, SystemTime::now())),
        );
        s.status = InstanceStatus {
            fallback_origin: plan.fallback_origin.clone(),
            reason: Some(reason.clone()),
            ..InstanceStatus::default()
        };
    });
    if let Some((from, to)) = switched
        && from != to
    {
        match to {
            KeyState::Fallback => {
                info!(instance = %plan.name, from = from.as_str(), to = "fallback", reason, "Serving the static key.")
            }
            _ => {
                warn!(instance = %plan.name, from = from.as_str(), to = to.as_str(), reason, "No key can be served for this instance.")
            }
        }
    }
}

/// The managed key a group holds.
struct Managed {
    key: Secret,
    obtained_at: SystemTime,
}

/// What a member serves, decided from the group's state.
enum Serve<'a> {
    Pending,
    Managed(&'a Managed),
    Fallback(&'a Secret),
    Nothing,
}

/// One group's task and its state.
struct Task<E: Exchanger> {
    id: u64,
    key: ExchangeKey,
    exchanger: Arc<E>,
    metrics: Arc<Metrics>,
    shared: Arc<GroupShared>,
    cancel: CancellationToken,
    config_rx: watch::Receiver<Arc<GroupConfig>>,
    cfg: Arc<GroupConfig>,
    rng: fastrand::Rng,
    /// When the task started: the startup grace counts from here.
    started: Instant,
    pacer: Pacer,
    managed: Option<Managed>,
    /// The managed key was reported rejected and the refresh after the report failed.
    rejected: bool,
    /// The first attempt has finished (either way).
    first_done: bool,
    /// The startup grace has ended while the first attempt was still running.
    grace_over: bool,
    next_at: Instant,
    /// `next_at` on the wall clock, computed once when scheduled so that republishing the
    /// status does not make it drift.
    next_wall: SystemTime,
    next_is_retry: bool,
    /// A rejection report asked for an attempt that `Retry-After` made us defer.
    forced_pending: bool,
    /// End of the server's `Retry-After`: no attempt before, not even a forced one.
    not_before: Option<Instant>,
    endpoint: Option<String>,
    region: Option<String>,
    credential_source: Option<String>,
    last_refresh: Option<SystemTime>,
    last_attempt: Option<SystemTime>,
    failures: u32,
    last_error: Option<String>,
    last_error_kind: Option<&'static str>,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl<E: Exchanger> Task<E> {
    fn new(
        id: u64,
        key: ExchangeKey,
        exchanger: Arc<E>,
        metrics: Arc<Metrics>,
        shared: Arc<GroupShared>,
        cancel: CancellationToken,
        mut config_rx: watch::Receiver<Arc<GroupConfig>>,
    ) -> Self {
        let cfg = config_rx.borrow_and_update().clone();
        let now = Instant::now();
        Task {
            id,
            region: key.region.clone(),
            key,
            exchanger,
            metrics,
            shared,
            cancel,
            pacer: Pacer::new(cfg.interval, cfg.timing.retry_min, cfg.timing.retry_max),
            cfg,
            config_rx,
            rng: fastrand::Rng::new(),
            started: now,
            managed: None,
            rejected: false,
            first_done: false,
            grace_over: false,
            next_at: now,
            next_wall: SystemTime::now(),
            next_is_retry: false,
            forced_pending: false,
            not_before: None,
            endpoint: None,
            credential_source: None,
            last_refresh: None,
            last_attempt: None,
            failures: 0,
            last_error: None,
            last_error_kind: None,
        }
    }

    async fn run(mut self) {
        self.publish_all();
        loop {
            let Some(forced) = self.wait_for_turn().await else {
                return;
            };
            let started = Instant::now();
            let Some(result) = self.attempt().await else {
                return;
            };
            self.settle(result, forced, started.elapsed());
        }
    }

    /// The startup grace deadline, while it matters.
    fn grace_deadline(&self) -> Option<Instant> {
        (!self.first_done && !self.grace_over).then(|| self.started + self.cfg.timing.startup_grace)
    }

    /// Sleeps until the next attempt is due or forced; `None` on shutdown. Returns whether the
    /// attempt is forced by a rejection report.
    async fn wait_for_turn(&mut self) -> Option<bool> {
        loop {
            let grace = self.grace_deadline();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                changed = self.config_rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    self.reconfigure();
                }
                () = sleep_until_opt(grace) => {
                    self.grace_over = true;
                    self.publish_all();
                }
                () = self.shared.wake.notified() => {
                    // A wake-up whose request was already served by an attempt is stale.
                    if std::mem::take(&mut lock(&self.shared.control).forced) {
                        self.forced_pending = true;
                        match self.not_before {
                            Some(not_before) if not_before > Instant::now() => {
                                self.set_next(self.next_at.min(not_before));
                                self.publish_all();
                            }
                            _ => return Some(std::mem::take(&mut self.forced_pending)),
                        }
                    }
                }
                () = sleep_until(self.next_at) => {
                    return Some(std::mem::take(&mut self.forced_pending));
                }
            }
        }
    }

    /// Runs one exchange, serving the grace deadline and config changes meanwhile; `None` on
    /// shutdown.
    async fn attempt(
        &mut self,
    ) -> Option<Result<Result<Exchanged, ExchangeFailure>, tokio::time::error::Elapsed>> {
        {
            let mut control = lock(&self.shared.control);
            control.in_flight = true;
            // This attempt answers any report that arrived meanwhile.
            control.forced = false;
        }
        self.last_attempt = Some(SystemTime::now());
        let exchanger = self.exchanger.clone();
        let key = self.key.clone();
        let exchange =
            tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                async move { exchanger.exchange(&key).await },
            );
        tokio::pin!(exchange);
        loop {
            let grace = self.grace_deadline();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                result = &mut exchange => return Some(result),
                changed = self.config_rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    self.reconfigure();
                }
                () = sleep_until_opt(grace) => {
                    self.grace_over = true;
                    self.publish_all();
                }
            }
        }
    }

    /// Records an attempt's outcome, schedules the next one and publishes.
    fn settle(
        &mut self,
        result: Result<Result<Exchanged, ExchangeFailure>, tokio::time::error::Elapsed>,
        forced: bool,
        elapsed: Duration,
    ) {
        let managed_rejected = {
            let mut control = lock(&self.shared.control);
            control.in_flight = false;
            std::mem::take(&mut control.managed_rejected)
        };
        self.first_done = true;
        let result = result.unwrap_or_else(|_| {
            Err(ExchangeFailure {
                kind: "unavailable",
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
        let now = Instant::now();
        let names = self.member_names();
        match result {
            Ok(exchanged) => {
                for m in &self.cfg.members {
                    self.metrics.exchange(&m.name, "success", elapsed);
                }
                let delay = self.pacer.after_success(forced, self.rng.f64());
                info!(
                    instances = %names,
                    key = %exchanged.key.redacted(),
                    next_refresh_in = %humantime::format_duration(round(delay)),
                    "Obtained a managed key."
                );
                self.managed = Some(Managed {
                    key: exchanged.key,
                    obtained_at: SystemTime::now(),
                });
                self.rejected = false;
                self.failures = 0;
                self.last_error = None;
                self.last_error_kind = None;
                self.last_refresh = Some(SystemTime::now());
                self.endpoint = Some(exchanged.endpoint);
                self.region = exchanged.region;
                if exchanged.credential_source.is_some() {
                    self.credential_source = exchanged.credential_source;
                }
                self.not_before = None;
                self.set_next(now + delay);
                self.next_is_retry = false;
            }
            Err(failure) => {
                for m in &self.cfg.members {
                    self.metrics.exchange(&m.name, failure.kind, elapsed);
                }
                self.failures = self.failures.saturating_add(1);
                if managed_rejected && self.managed.is_some() {
                    self.rejected = true;
                }
                let lane = if self.managed.is_some() && !self.rejected {
                    Lane::Relaxed
                } else {
                    Lane::Urgent
                };
                let delay = self.pacer.after_failure(
                    lane,
                    failure.cause,
                    failure.retry_after,
                    self.rng.f64(),
                    self.rng.f64(),
                );
                self.not_before = failure
                    .retry_after
                    .map(|ra| now + ra.min(schedule::MAX_RETRY_AFTER));
                self.set_next(now + delay);
                self.next_is_retry = true;
                warn!(
                    instances = %names,
                    kind = failure.kind,
                    consecutive_failures = self.failures,
                    next_attempt_in = %humantime::format_duration(round(delay)),
                    error = %failure.message,
                    "Key exchange failed."
                );
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
        self.publish_all();
    }

    fn set_next(&mut self, at: Instant) {
        self.next_at = at;
        self.next_wall = SystemTime::now() + at.saturating_duration_since(Instant::now());
    }

    /// Takes a new configuration from `apply`.
    fn reconfigure(&mut self) {
        let cfg = self.config_rx.borrow_and_update().clone();
        let interval_changed = cfg.interval != self.cfg.interval;
        self.pacer
            .set_params(cfg.interval, cfg.timing.retry_min, cfg.timing.retry_max);
        self.cfg = cfg;
        if interval_changed && self.managed.is_some() && !self.next_is_retry {
            // Re-phased: a reload usually reaches a whole fleet within minutes.
            let delay = schedule::first_refresh_delay(self.cfg.interval, self.rng.f64());
            self.set_next(Instant::now() + delay);
        }
        self.publish_all();
    }

    fn member_names(&self) -> String {
        self.cfg
            .members
            .iter()
            .map(|m| &*m.name)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What `member` serves now, and why when it is not the managed key.
    fn view<'a>(&'a self, member: &'a Member) -> (Serve<'a>, Option<String>) {
        if let Some(managed) = &self.managed {
            if !self.rejected {
                return (Serve::Managed(managed), None);
            }
            const REJECTED: &str =
                "a consumer reported the managed key rejected and the refresh failed";
            return match &member.fallback {
                Some(fallback) => (Serve::Fallback(fallback), Some(REJECTED.to_string())),
                None => (
                    Serve::Managed(managed),
                    Some(format!(
                        "{REJECTED}; no fallback key is configured, so the managed key is still served"
                    )),
                ),
            };
        }
        if self.grace_deadline().is_some() {
            return (Serve::Pending, None);
        }
        let why = if self.first_done {
            format!(
                "no managed key yet: the last exchange failed ({})",
                self.last_error_kind.unwrap_or("unknown")
            )
        } else {
            format!(
                "no managed key yet: the first exchange is still running after the startup grace of {}",
                humantime::format_duration(self.cfg.timing.startup_grace)
            )
        };
        match &member.fallback {
            Some(fallback) => (Serve::Fallback(fallback), Some(why)),
            None => (
                Serve::Nothing,
                Some(format!("{why}; no fallback api_key is configured")),
            ),
        }
    }

    fn status(&self, member: &Member, reason: Option<String>) -> InstanceStatus {
        InstanceStatus {
            org_uuid: Some(self.key.org_uuid.clone()),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            refresh_interval: Some(self.cfg.interval),
            credential_source: self.credential_source.clone(),
            last_refresh: self.last_refresh,
            last_attempt: self.last_attempt,
            next_refresh: Some(self.next_wall),
            next_is_retry: self.next_is_retry,
            consecutive_failures: self.failures,
            last_error: self.last_error.clone(),
            last_error_kind: self.last_error_kind,
            fallback_origin: member.fallback_origin.clone(),
            reason,
            fix: None,
            shared_with: shared_with(&self.cfg.members, &member.name),
        }
    }

    /// Publishes every member's view; the key store bumps generations where the served value
    /// changed, which releases long polls.
    fn publish_all(&self) {
        for member in &self.cfg.members {
            let (serve_what, reason) = self.view(member);
            let status = self.status(member, reason.clone());
            let (state, served) = match serve_what {
                Serve::Pending => (KeyState::Pending, None),
                Serve::Managed(m) => (
                    KeyState::Active,
                    Some((&m.key, KeySource::Delegated, m.obtained_at)),
                ),
                Serve::Fallback(f) => (
                    KeyState::Fallback,
                    Some((f, KeySource::Fallback, SystemTime::now())),
                ),
                Serve::Nothing => (KeyState::Unavailable, None),
            };
            let switched = member.publisher.publish(self.id, |s| {
                serve(s, state, served);
                s.status = status;
            });
            if let Some((from, to)) = switched {
                log_switch(&member.name, from, to, reason.as_deref());
            }
        }
    }
}

/// Delays are logged to the second.
fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const ORG: &str = "11111111-2222-3333-4444-555555555555";
    const OTHER_ORG: &str = "99999999-8888-7777-6666-555555555555";
    const FALLBACK: &str = "static-fallback-key-0000abcde";

    /// How a scripted exchange behaves before answering.
    #[derive(Clone)]
    enum Wait {
        No,
        For(Duration),
        Gate(Arc<Notify>),
        Forever,
    }

    /// One scripted exchange.
    #[derive(Clone)]
    struct Step {
        wait: Wait,
        outcome: Result<String, (&'static str, Cause, Option<Duration>)>,
    }

    fn ok(key: &str) -> Step {
        Step {
            wait: Wait::No,
            outcome: Ok(key.to_string()),
        }
    }

    /// A failure of this kind. `unavailable` stands for a request that got no answer (a
    /// refused connection); [`server_error`] for the server answering 5xx.
    fn fail(kind: &'static str) -> Step {
        let cause = match kind {
            "unavailable" | "credentials" | "config" => Cause::Unanswered,
            _ => Cause::Answered,
        };
        Step {
            wait: Wait::No,
            outcome: Err((kind, cause, None)),
        }
    }

    /// The Datadog API answered 5xx.
    fn server_error() -> Step {
        Step {
            wait: Wait::No,
            outcome: Err(("unavailable", Cause::Answered, None)),
        }
    }

    fn throttled(retry_after: Duration) -> Step {
        Step {
            wait: Wait::No,
            outcome: Err(("throttled", Cause::Answered, Some(retry_after))),
        }
    }

    impl Step {
        fn after(mut self, wait: Wait) -> Step {
            self.wait = wait;
            self
        }
    }

    /// What the fake does once its script is used up.
    enum Otherwise {
        /// A new key each time.
        Keys,
        /// Fail like this step.
        Fail(Step),
    }

    /// In-memory exchanger: plays a script, records when it was called and for what.
    struct Fake {
        /// Steps, each for one org or (`None`) for any.
        script: Mutex<VecDeque<(Option<&'static str>, Step)>>,
        otherwise: Mutex<Otherwise>,
        calls: Mutex<Vec<(Instant, ExchangeKey)>>,
    }

    impl Fake {
        fn new(script: impl IntoIterator<Item = Step>, otherwise: Otherwise) -> Arc<Fake> {
            Fake::per_org(script.into_iter().map(|s| (None, s)), otherwise)
        }

        fn per_org(
            script: impl IntoIterator<Item = (Option<&'static str>, Step)>,
            otherwise: Otherwise,
        ) -> Arc<Fake> {
            Arc::new(Fake {
                script: Mutex::new(script.into_iter().collect()),
                otherwise: Mutex::new(otherwise),
                calls: Mutex::new(Vec::new()),
            })
        }

        /// Changes what the fake does once its script is used up (an outage ends).
        fn set_otherwise(&self, otherwise: Otherwise) {
            *lock(&self.otherwise) = otherwise;
        }

        fn calls(&self) -> Vec<(Instant, ExchangeKey)> {
            lock(&self.calls).clone()
        }

        fn times(&self) -> Vec<Instant> {
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
            let endpoint = format!("{}/api/v2/intake-key", key.target);
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

    fn timing() -> Timing {
        Timing {
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            startup_grace: Duration::from_secs(10),
        }
    }

    fn exchange_key(org: &str) -> ExchangeKey {
        ExchangeKey {
            org_uuid: org.to_string(),
            target: "https://app.datadoghq.com".to_string(),
            region: None,
        }
    }

    fn plan(name: &str, org: Option<&str>, fallback: Option<&str>) -> InstancePlan {
        InstancePlan {
            name: name.to_string(),
            exchange: org.map(exchange_key),
            refresh_interval: HOUR,
            fallback: fallback.map(Secret::from),
            fallback_origin: fallback.map(|_| "api_key".to_string()),
            invalid: None,
            aliases: Vec::new(),
        }
    }

    struct Harness {
        store: Arc<KeyStore>,
        metrics: Arc<Metrics>,
        fake: Arc<Fake>,
        manager: Manager<Fake>,
        shutdown: CancellationToken,
        t0: Instant,
    }

    impl Harness {
        fn new(fake: Arc<Fake>) -> Harness {
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

        fn apply(&mut self, plans: Vec<InstancePlan>) {
            self.manager.apply(plans, timing());
        }

        fn slot(&self, name: &str) -> Arc<Slot> {
            self.store.get(name).expect("instance exists")
        }

        /// Call times relative to the start.
        fn call_offsets(&self) -> Vec<Duration> {
            self.fake.times().into_iter().map(|t| t - self.t0).collect()
        }
    }

    /// Lets spawned tasks run without moving the clock.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Waits (in virtual time, at most three days) until the slot satisfies `done`.
    async fn until(slot: &Slot, what: &str, done: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let mut rx = slot.subscribe();
        let seen = tokio::time::timeout(3 * 24 * HOUR, rx.wait_for(|s| done(s)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("slot alive");
        seen.clone()
    }

    fn served(s: &Snapshot) -> (&str, KeySource) {
        let k = s.served.as_ref().expect("a key is served");
        (k.value.expose(), k.source)
    }

    #[tokio::test(start_paused = true)]
    async fn first_exchange_starts_at_once_and_pending_becomes_active() {
        let fake = Fake::new(
            [ok("managed-key-first-00001").after(Wait::For(Duration::from_secs(2)))],
            Otherwise::Keys,
        );
        let mut h = Harness::new(fake);
        h.apply(vec![plan("api_key", Some(ORG), Some(FALLBACK))]);
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
                (Some(ORG), fail("unauthorized")),
                (Some(ORG), ok("managed-key-second-0002")),
                (Some(OTHER_ORG), fail("unavailable")),
            ],
            Otherwise::Fail(fail("unavailable")),
        );
        let mut h = Harness::new(fake);
        h.apply(vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            plan("logs_config.api_key", Some(OTHER_ORG), None),
        ]);
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
        assert_eq!(s.status.last_error_kind, Some("unauthorized"));
        assert!(s.status.next_is_retry);
        assert!(
            s.status
                .reason
                .as_deref()
                .unwrap()
                .contains("last exchange failed (unauthorized)")
        );
        // The second instance has no fallback: unavailable while its exchange fails.
        let other = h.slot("logs_config.api_key").current();
        assert_eq!(other.state, KeyState::Unavailable);
        assert!(other.served.is_none());
        assert!(
            other
                .status
                .reason
                .as_deref()
                .unwrap()
                .contains("no fallback api_key is configured")
        );

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
        let mut h = Harness::new(fake);
        h.apply(vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            plan("logs_config.api_key", Some(OTHER_ORG), None),
        ]);
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
        assert!(
            s.status
                .reason
                .as_deref()
                .unwrap()
                .contains("startup grace of 10s")
        );
        let s = without.current();
        assert_eq!(s.state, KeyState::Unavailable);
        assert!(s.served.is_none());
        assert!(
            s.status
                .reason
                .as_deref()
                .unwrap()
                .contains("no fallback api_key is configured")
        );
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
        let mut h = Harness::new(Fake::new([], Otherwise::Keys));
        h.apply(vec![plan("api_key", Some(ORG), None)]);
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
        let mut h = Harness::new(Fake::new([], Otherwise::Fail(fail("unavailable"))));
        h.apply(vec![plan("api_key", Some(ORG), None)]);
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
    async fn retry_after_is_honoured_even_by_a_forced_refresh() {
        let fake = Fake::new([throttled(Duration::from_secs(90))], Otherwise::Keys);
        let mut h = Harness::new(fake);
        h.apply(vec![plan("api_key", Some(ORG), Some(FALLBACK))]);
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
    async fn retry_after_sets_the_floor_of_the_next_attempt() {
        let fake = Fake::new([throttled(Duration::from_secs(120))], Otherwise::Keys);
        let mut h = Harness::new(fake);
        h.apply(vec![plan("api_key", Some(ORG), None)]);
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
            Otherwise::Fail(fail("unavailable")),
        );
        let mut h = Harness::new(fake);
        h.apply(vec![plan("api_key", Some(ORG), Some(FALLBACK))]);
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
        assert_eq!(s.status.last_error_kind, Some("unavailable"));
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
        let mut h = Harness::new(fake);
        h.apply(vec![plan("api_key", Some(ORG), Some(FALLBACK))]);
        let slot = h.slot("api_key");
        let active = until(&slot, "active", |s| s.state == KeyState::Active).await;
        tokio::time::sleep(5 * HOUR).await;
        let s = slot.current();
        assert_eq!(served(&s), ("managed-key-kept-00002", KeySource::Delegated));
        assert_eq!(s.generation, active.generation);
        assert_eq!(s.status.last_error_kind, Some("unavailable"));
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
        let mut h = Harness::new(fake);
        h.apply(vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            plan("logs_config.api_key", Some(OTHER_ORG), None),
        ]);
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

    #[tokio::test(start_paused = true)]
    async fn rejection_reports_are_scheduled_throttled_or_ignored() {
        let mut h = Harness::new(Fake::new([], Otherwise::Keys));
        h.apply(vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            plan("static", None, Some(FALLBACK)),
        ]);
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
                fail("unauthorized"),
                fail("unavailable"),
                ok("managed-key-fresh-00002"),
            ],
            Otherwise::Keys,
        );
        let mut h = Harness::new(fake);
        h.apply(vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            plan("logs_config.api_key", Some(ORG), None),
        ]);
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
        assert!(
            s.status
                .reason
                .as_deref()
                .unwrap()
                .contains("reported the managed key rejected")
        );
        // Without a fallback the managed key stays, with the reason visible.
        let w = without.current();
        assert_eq!(
            served(&w),
            ("managed-key-revoked-0001", KeySource::Delegated)
        );
        assert!(
            w.status
                .reason
                .as_deref()
                .unwrap()
                .contains("no fallback key is configured")
        );

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
                fail("unavailable").after(Wait::Gate(gate.clone())),
            ],
            Otherwise::Keys,
        );
        let mut h = Harness::new(fake);
        h.apply(vec![plan("api_key", Some(ORG), Some(FALLBACK))]);
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

    #[tokio::test(start_paused = true)]
    async fn instances_with_the_same_exchange_share_one_exchange_and_key() {
        let mut h = Harness::new(Fake::new([], Otherwise::Keys));
        let mut logs = plan(
            "logs_config.api_key",
            Some(ORG),
            Some("logs-static-key-00000"),
        );
        logs.refresh_interval = HOUR / 2;
        h.apply(vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            logs,
            plan("remote_configuration.api_key", Some(OTHER_ORG), None),
        ]);
        let a = until(&h.slot("api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        let b = until(&h.slot("logs_config.api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        let c = until(&h.slot("remote_configuration.api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        assert_eq!(served(&a), served(&b));
        assert_ne!(served(&a).0, served(&c).0);
        let orgs: Vec<String> = h
            .fake
            .calls()
            .into_iter()
            .map(|(_, k)| k.org_uuid)
            .collect();
        assert_eq!(orgs.len(), 2, "one exchange per group: {orgs:?}");
        assert!(orgs.contains(&ORG.to_string()) && orgs.contains(&OTHER_ORG.to_string()));
        assert_eq!(a.status.shared_with, ["logs_config.api_key"]);
        assert_eq!(b.status.shared_with, ["api_key"]);
        assert!(c.status.shared_with.is_empty());
        // The shared exchange runs at the shorter interval.
        assert_eq!(a.status.refresh_interval, Some(HOUR / 2));
        assert_eq!(b.status.refresh_interval, Some(HOUR / 2));
        let text = h.metrics.render(&h.store);
        assert!(text.contains(
            "delegated_auth_exchanges_total{instance=\"api_key\",outcome=\"success\"} 1"
        ));
        assert!(text.contains(
            "delegated_auth_exchanges_total{instance=\"logs_config.api_key\",outcome=\"success\"} 1"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn reload_keeps_unchanged_instances_restarts_changed_ones_and_drops_removed_ones() {
        let mut h = Harness::new(Fake::new([], Otherwise::Keys));
        let plans = vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            plan("logs_config.api_key", Some(OTHER_ORG), None),
            plan("evp_proxy_config.api_key", None, Some(FALLBACK)),
        ];
        h.apply(plans.clone());
        let api = h.slot("api_key");
        let logs = h.slot("logs_config.api_key");
        let evp = h.slot("evp_proxy_config.api_key");
        until(&api, "active", |s| s.state == KeyState::Active).await;
        until(&logs, "active", |s| s.state == KeyState::Active).await;
        let before = api.current();
        let evp_before = evp.current();
        let next = before.status.next_refresh;

        // Unchanged: same snapshot (key, generation, schedule), no exchange.
        h.apply(plans.clone());
        settle().await;
        assert!(Arc::ptr_eq(&before, &api.current()), "nothing republished");
        assert_eq!(evp.current().generation, evp_before.generation);
        assert_eq!(h.fake.calls().len(), 2);

        // logs_config moves to another org; evp is removed; a new instance joins api_key's group.
        let mut changed = vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            plan("logs_config.api_key", Some(ORG), None),
        ];
        changed[1].exchange.as_mut().unwrap().region = Some("eu-west-1".into());
        changed.push(plan("ol_proxy_config.api_key", Some(ORG), None));
        let removed_waiter = {
            let evp = evp.clone();
            let g = evp_before.generation;
            tokio::spawn(async move { evp.wait_for_change(g, Instant::now() + HOUR).await })
        };
        let restart_at = Instant::now();
        h.apply(changed);
        assert!(h.store.get("evp_proxy_config.api_key").is_none());
        assert!(removed_waiter.await.unwrap().expect("released").removed);

        // The joiner is served the group's key without an exchange.
        let ol = h.slot("ol_proxy_config.api_key");
        let joined = until(&ol, "joined", |s| s.state == KeyState::Active).await;
        assert_eq!(served(&joined), served(&before));
        assert_eq!(joined.status.shared_with, ["api_key"]);
        // The changed instance restarts: pending, a new exchange at once, a new key.
        let moved = until(&logs, "restarted", |s| {
            s.state == KeyState::Active
                && s.status.region.as_deref() == Some("us-east-1")
                && s.status.org_uuid.as_deref() == Some(ORG)
        })
        .await;
        let calls = h.fake.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[2].0, restart_at);
        assert_eq!(calls[2].1.region.as_deref(), Some("eu-west-1"));
        assert_ne!(served(&moved).0, served(&before).0);
        // The unchanged instance kept its key, generation and schedule.
        let after = api.current();
        assert_eq!(served(&after), served(&before));
        assert_eq!(after.generation, before.generation);
        assert_eq!(after.status.next_refresh, next);
        assert_eq!(
            after.status.shared_with,
            ["ol_proxy_config.api_key"],
            "status follows the membership"
        );

        // The old org's task is gone: no exchange for it ever again.
        tokio::time::sleep(5 * HOUR).await;
        let old_org_calls = h
            .fake
            .calls()
            .iter()
            .filter(|(_, k)| k.org_uuid == OTHER_ORG)
            .count();
        assert_eq!(old_org_calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_never_overwrites_a_member_that_moved_to_another_group() {
        let gate = Arc::new(Notify::new());
        let fake = Fake::per_org(
            [
                (Some(ORG), ok("managed-key-org-a-0001")),
                (
                    Some(ORG),
                    ok("managed-key-org-a-0002").after(Wait::Gate(gate.clone())),
                ),
                (
                    Some(OTHER_ORG),
                    ok("never-delivered-key-0").after(Wait::Forever),
                ),
            ],
            Otherwise::Keys,
        );
        let mut h = Harness::new(fake);
        h.apply(vec![
            plan("api_key", Some(ORG), None),
            plan("logs_config.api_key", Some(ORG), None),
        ]);
        until(&h.slot("api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        while h.fake.calls().len() < 2 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        // logs_config moves to another org while its old group's refresh is in flight, and that
        // refresh completes before the old group has seen the new configuration. Listing
        // logs_config first starts its new group before the old one is woken, so the old
        // group's stale publish comes after the new group's first one.
        h.apply(vec![
            plan("logs_config.api_key", Some(OTHER_ORG), None),
            plan("api_key", Some(ORG), None),
        ]);
        gate.notify_one();
        let api = until(&h.slot("api_key"), "rotated", |s| {
            s.served
                .as_ref()
                .is_some_and(|k| k.value.expose() == "managed-key-org-a-0002")
        })
        .await;
        assert!(api.status.shared_with.is_empty());
        let logs = h.slot("logs_config.api_key").current();
        assert_eq!(logs.state, KeyState::Pending, "{:?}", logs.served);
        assert_eq!(logs.status.org_uuid.as_deref(), Some(OTHER_ORG));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_fallback_on_reload_is_served_without_a_new_exchange() {
        let mut h = Harness::new(Fake::new([], Otherwise::Fail(fail("unauthorized"))));
        h.apply(vec![plan("api_key", Some(ORG), Some(FALLBACK))]);
        let slot = h.slot("api_key");
        let before = until(&slot, "fallback", |s| s.state == KeyState::Fallback).await;
        let calls = h.fake.calls().len();
        h.apply(vec![plan(
            "api_key",
            Some(ORG),
            Some("rotated-static-key-00fghij"),
        )]);
        let after = until(&slot, "new fallback", |s| {
            s.served
                .as_ref()
                .is_some_and(|k| k.value.expose() == "rotated-static-key-00fghij")
        })
        .await;
        assert!(after.generation > before.generation);
        assert_eq!(after.state, KeyState::Fallback);
        assert_eq!(
            h.fake.calls().len(),
            calls,
            "no exchange for a fallback change"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_manager_stops_its_tasks() {
        let mut h = Harness::new(Fake::new([], Otherwise::Keys));
        h.apply(vec![plan("api_key", Some(ORG), None)]);
        until(&h.slot("api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        let fake = h.fake.clone();
        drop(h);
        tokio::time::sleep(5 * HOUR).await;
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn manager_and_handle_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Manager<Fake>>();
        shareable::<ManagerHandle>();
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_interval_on_reload_reschedules_the_next_refresh() {
        let mut h = Harness::new(Fake::new([], Otherwise::Keys));
        let mut p = plan("api_key", Some(ORG), None);
        p.refresh_interval = 24 * HOUR;
        h.apply(vec![p.clone()]);
        until(&h.slot("api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        let reload_at = Instant::now();
        p.refresh_interval = Duration::from_secs(600);
        h.apply(vec![p]);
        while h.fake.calls().len() < 2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(h.fake.times()[1] - reload_at <= Duration::from_secs(600));
        assert_eq!(
            h.slot("api_key").current().status.refresh_interval,
            Some(Duration::from_secs(600))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn static_instances_serve_their_fallback_or_nothing() {
        let mut h = Harness::new(Fake::new([], Otherwise::Keys));
        h.apply(vec![
            plan("api_key", None, Some(FALLBACK)),
            plan("logs_config.api_key", None, None),
            plan("remote_configuration.api_key", None, Some("")),
        ]);
        let s = h.slot("api_key").current();
        assert_eq!(served(&s), (FALLBACK, KeySource::Fallback));
        assert_eq!(
            s.status.reason.as_deref(),
            Some("delegated_auth not enabled for this section")
        );
        for name in ["logs_config.api_key", "remote_configuration.api_key"] {
            let s = h.slot(name).current();
            assert_eq!(s.state, KeyState::Unavailable, "{name}");
            assert!(
                s.status
                    .reason
                    .as_deref()
                    .unwrap()
                    .contains("no api_key is configured")
            );
        }
        settle().await;
        assert!(h.fake.calls().is_empty());

        // Enabling delegated auth on reload: pending, then the managed key.
        let g = h.slot("api_key").current().generation;
        h.apply(vec![plan("api_key", Some(ORG), Some(FALLBACK))]);
        assert_eq!(h.slot("api_key").current().state, KeyState::Pending);
        let s = until(&h.slot("api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        assert!(s.generation > g);
        // And back: the group stops and the fallback is served again.
        h.apply(vec![plan("api_key", None, Some(FALLBACK))]);
        let s = h.slot("api_key").current();
        assert_eq!(served(&s), (FALLBACK, KeySource::Fallback));
        tokio::time::sleep(5 * HOUR).await;
        assert_eq!(h.fake.calls().len(), 1);
        assert_eq!(h.slot("api_key").current().state, KeyState::Fallback);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_every_task_even_mid_exchange() {
        let fake = Fake::new(
            [ok("never-delivered-key-0").after(Wait::Forever)],
            Otherwise::Keys,
        );
        let mut h = Harness::new(fake);
        h.apply(vec![
            plan("api_key", Some(ORG), Some(FALLBACK)),
            plan("logs_config.api_key", Some(OTHER_ORG), None),
        ]);
        until(&h.slot("logs_config.api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        assert_eq!(h.fake.calls().len(), 2);
        h.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), h.manager.wait())
            .await
            .expect("tasks end promptly");
        tokio::time::sleep(5 * HOUR).await;
        assert_eq!(h.fake.calls().len(), 2, "nothing runs after shutdown");
    }
}

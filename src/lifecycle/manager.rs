//! Plans → groups: [`Manager::apply`] groups the configured instances by exchange, starts,
//! reconfigures and stops group tasks, and publishes the instances that have no group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::group::{Command, Group, GroupConfig, Links, Member, Served, publish, serve};
use super::report::{GroupShared, ManagerHandle, RejectOutcome, Route};
use super::{ExchangeKey, Exchanger, InstancePlan, Timing};
use crate::keystore::{InstanceStatus, KeySource, KeyState, KeyStore, Slot};
use crate::metrics::Metrics;

/// Reason shown for instances without delegated auth.
const STATIC_REASON: &str = "delegated_auth not enabled for this section";

/// A running group, as the manager keeps it.
struct GroupEntry {
    cancel: CancellationToken,
    /// The configuration last handed to the task, to tell what a reload changes.
    config: Arc<GroupConfig>,
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<GroupShared>,
    task: JoinHandle<()>,
}

/// Owns the group tasks. See the module doc of [`crate::lifecycle`].
pub struct Manager<E: Exchanger> {
    store: Arc<KeyStore>,
    metrics: Arc<Metrics>,
    exchanger: Arc<E>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handle: ManagerHandle,
    groups: HashMap<ExchangeKey, GroupEntry>,
}

impl<E: Exchanger> Manager<E> {
    /// A manager with no instances; call [`Manager::apply`] with the configuration.
    pub fn new(
        store: Arc<KeyStore>,
        metrics: Arc<Metrics>,
        exchanger: Arc<E>,
        shutdown: CancellationToken,
    ) -> Self {
        Manager {
            handle: ManagerHandle::new(metrics.clone()),
            store,
            metrics,
            exchanger,
            shutdown,
            tracker: TaskTracker::new(),
            groups: HashMap::new(),
        }
    }

    /// The handle for request handlers.
    pub fn handle(&self) -> ManagerHandle {
        self.handle.clone()
    }

    /// Applies the initial configuration or a reload. Never waits on the network, only for the
    /// group tasks it stops or reconfigures to take note; must be called within a tokio
    /// runtime (it spawns the group tasks).
    ///
    /// - A group whose [`ExchangeKey`] is unchanged keeps its task, key, generation and
    ///   schedule; changes of fallback, members or timing apply in place, and a change of the
    ///   refresh interval re-draws the next refresh.
    /// - An instance whose exchange changed (another org, target or region) joins another group:
    ///   a new group starts it over as `pending`, and it is served like at startup.
    /// - Groups no longer needed stop; removed instances' slots are removed (their waiters wake).
    pub async fn apply(&mut self, plans: Vec<InstancePlan>, timing: Timing) {
        let plans = unique(plans);
        let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
        let slots: HashMap<&str, Arc<Slot>> = plans
            .iter()
            .map(|p| p.name.as_str())
            .zip(self.store.set_instances(&names))
            .collect();
        let aliases: Vec<(String, String)> = plans
            .iter()
            .flat_map(|p| p.aliases.iter().map(|a| (a.clone(), p.name.clone())))
            .collect();
        self.store.set_aliases(&aliases);

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
        let configs: Vec<(&ExchangeKey, Arc<GroupConfig>)> = order
            .into_iter()
            .map(|key| (key, group_config(&grouped[key], &slots, &timing)))
            .collect();

        // First every group lets go of the members it loses: stopped groups end, changed groups
        // take their new members. Only then does anyone write to a member that moved.
        let stopped: Vec<GroupEntry> = self
            .groups
            .extract_if(|key, _| !grouped.contains_key(key))
            .map(|(_, entry)| entry)
            .collect();
        for entry in &stopped {
            entry.cancel.cancel();
        }
        let mut changed = Vec::new();
        let mut acks = Vec::new();
        for (key, config) in &configs {
            let Some(entry) = self.groups.get_mut(*key) else {
                continue;
            };
            if entry.config == *config {
                continue;
            }
            entry.config = config.clone();
            let (ack, acked) = oneshot::channel();
            if entry
                .commands
                .send(Command::Configure(config.clone(), ack))
                .is_ok()
            {
                acks.push(acked);
                changed.push(*key);
            }
        }
        for entry in stopped {
            // A task that panicked has stopped writing too.
            let _ = entry.task.await;
        }
        for acked in acks {
            // An error means the task has ended (shutdown): it writes nothing any more.
            let _ = acked.await;
        }

        for key in changed {
            let _ = self.groups[key].commands.send(Command::Publish);
        }
        let mut routes = HashMap::with_capacity(plans.len());
        for (key, config) in &configs {
            if !self.groups.contains_key(*key) {
                let entry = self.start(key, config.clone());
                self.groups.insert((*key).clone(), entry);
            }
            let shared = &self.groups[*key].shared;
            debug!(org_uuid = %key.org_uuid, target = %crate::secret::redact_userinfo(&key.target), members = config.members.len(), "Exchange group configured.");
            for m in &config.members {
                routes.insert(
                    m.name.clone(),
                    Route {
                        slot: m.slot.clone(),
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
            let slot = &slots[plan.name.as_str()];
            publish_static(plan, slot);
            routes.insert(
                Arc::from(plan.name.as_str()),
                Route {
                    slot: slot.clone(),
                    group: None,
                },
            );
        }
        self.handle.set_routes(routes);
    }

    /// Starts a group task; its members are `pending` when this returns.
    fn start(&self, key: &ExchangeKey, config: Arc<GroupConfig>) -> GroupEntry {
        let shared = Arc::new(GroupShared::default());
        let cancel = self.shutdown.child_token();
        let (commands, rx) = mpsc::unbounded_channel();
        let links = Links {
            exchanger: self.exchanger.clone(),
            metrics: self.metrics.clone(),
            shared: shared.clone(),
            cancel: cancel.clone(),
            commands: rx,
        };
        let group = Group::new(key.clone(), links, config.clone());
        GroupEntry {
            cancel,
            config,
            commands,
            shared,
            task: self.tracker.spawn(group.run()),
        }
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

/// The plans with duplicate names dropped (the first wins) and empty fallbacks removed.
fn unique(plans: Vec<InstancePlan>) -> Vec<InstancePlan> {
    let mut seen = HashSet::new();
    plans
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
        .collect()
}

/// One group's configuration: its members, at the shortest of their intervals.
fn group_config(
    plans: &[&InstancePlan],
    slots: &HashMap<&str, Arc<Slot>>,
    timing: &Timing,
) -> Arc<GroupConfig> {
    let interval = plans
        .iter()
        .map(|p| p.refresh_interval)
        .min()
        .unwrap_or(Duration::from_secs(3600));
    // The most demanding margin: the token must satisfy every member.
    let refresh_before = plans.iter().filter_map(|p| p.refresh_before).max();
    let members = plans
        .iter()
        .map(|p| Member {
            name: Arc::from(p.name.as_str()),
            slot: slots[p.name.as_str()].clone(),
            fallback: p.fallback.clone(),
            fallback_origin: p.fallback_origin.clone(),
        })
        .collect();
    Arc::new(GroupConfig {
        interval,
        refresh_before,
        timing: timing.clone(),
        members,
    })
}

/// Publishes a static instance: its fallback, or `unavailable`.
fn publish_static(plan: &InstancePlan, slot: &Slot) {
    if let Some(entry) = &plan.invalid {
        publish(slot, |s| {
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
    let switched = publish(slot, |s| {
        serve(
            s,
            state,
            plan.fallback.as_ref().map(|f| Served {
                value: f,
                source: KeySource::Fallback,
                obtained_at: SystemTime::now(),
                expires_at: None,
            }),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;
    use tokio::time::Instant;

    use super::super::testing::*;
    use super::super::*;
    use crate::keystore::{KeySource, KeyState};

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
        ])
        .await;
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
        h.apply(plans.clone()).await;
        let api = h.slot("api_key");
        let logs = h.slot("logs_config.api_key");
        let evp = h.slot("evp_proxy_config.api_key");
        until(&api, "active", |s| s.state == KeyState::Active).await;
        until(&logs, "active", |s| s.state == KeyState::Active).await;
        let before = api.current();
        let evp_before = evp.current();
        let next = before.status.next_refresh;

        // Unchanged: same snapshot (key, generation, schedule), no exchange.
        h.apply(plans.clone()).await;
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
        h.apply(changed).await;
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
        let mut h = Harness::start(
            fake,
            vec![
                plan("api_key", Some(ORG), None),
                plan("logs_config.api_key", Some(ORG), None),
            ],
        )
        .await;
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
        ])
        .await;
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
        let mut h = Harness::start(
            Fake::new([], Otherwise::Fail(fail(FailureKind::Unauthorized))),
            vec![plan("api_key", Some(ORG), Some(FALLBACK))],
        )
        .await;
        let slot = h.slot("api_key");
        let before = until(&slot, "fallback", |s| s.state == KeyState::Fallback).await;
        let calls = h.fake.calls().len();
        h.apply(vec![plan(
            "api_key",
            Some(ORG),
            Some("rotated-static-key-00fghij"),
        )])
        .await;
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
        let h = Harness::start(
            Fake::new([], Otherwise::Keys),
            vec![plan("api_key", Some(ORG), None)],
        )
        .await;
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
        h.apply(vec![p.clone()]).await;
        until(&h.slot("api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        let reload_at = Instant::now();
        p.refresh_interval = Duration::from_secs(600);
        h.apply(vec![p]).await;
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
        let mut h = Harness::start(
            Fake::new([], Otherwise::Keys),
            vec![
                plan("api_key", None, Some(FALLBACK)),
                plan("logs_config.api_key", None, None),
                plan("remote_configuration.api_key", None, Some("")),
            ],
        )
        .await;
        let s = h.slot("api_key").current();
        assert_eq!(served(&s), (FALLBACK, KeySource::Fallback));
        assert_eq!(
            s.status.reason.as_deref(),
            Some("delegated_auth not enabled for this section")
        );
        for name in ["logs_config.api_key", "remote_configuration.api_key"] {
            let s = h.slot(name).current();
            assert_eq!(s.state, KeyState::Unavailable, "{name}");
            assert!(reason(&s).contains("no api_key is configured"));
        }
        settle().await;
        assert!(h.fake.calls().is_empty());

        // Enabling delegated auth on reload: pending, then the managed key.
        let g = h.slot("api_key").current().generation;
        h.apply(vec![plan("api_key", Some(ORG), Some(FALLBACK))])
            .await;
        assert_eq!(h.slot("api_key").current().state, KeyState::Pending);
        let s = until(&h.slot("api_key"), "active", |s| {
            s.state == KeyState::Active
        })
        .await;
        assert!(s.generation > g);
        // And back: the group stops and the fallback is served again.
        h.apply(vec![plan("api_key", None, Some(FALLBACK))]).await;
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
        let h = Harness::start(fake, two_orgs()).await;
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

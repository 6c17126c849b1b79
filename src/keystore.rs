//! The key store: what each instance serves right now, and how readers wait for changes.
//!
//! Each instance (product §6: `api_key`, `logs_config.api_key`, DELA directives, …) has a
//! [`Slot`] holding an immutable [`Snapshot`] behind a `tokio::sync::watch` channel. Writers (the
//! refresh manager) publish a whole new snapshot; readers (the socket server, sinks, `exec`) take
//! an `Arc` of the current one without locking anything for longer than a pointer copy, and long
//! polls wait on the channel instead of polling.
//!
//! Generations come from one store-wide counter, so an ETag is never reused by another instance
//! or by an instance that was removed and added again: a consumer holding `If-None-Match: "7"`
//! can never mistake a different key for the one it has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::lifecycle::FailureKind;
use crate::secret::Secret;

/// Delegated API tokens live in the same store as the keys, in their own namespace: the slot
/// of token `automation` is `token:automation`. No instance name can start with it (instance
/// names are the Agent's config keys), and access rules name tokens the same way, so a rule for
/// keys can never reach a token by accident. Everything that lists keys
/// ([`KeyStore::slots`], readiness) leaves tokens out.
pub const TOKEN_PREFIX: &str = "token:";

/// The slot name of token `name`.
pub fn token_slot(name: &str) -> String {
    format!("{TOKEN_PREFIX}{name}")
}

/// The token name of a slot name, when it is a token's.
pub fn token_name(slot: &str) -> Option<&str> {
    slot.strip_prefix(TOKEN_PREFIX)
}

/// Lifecycle state of an instance (product §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// No key yet: the first exchange is running (or the startup grace has not ended).
    Pending,
    /// A managed key from Datadog is served.
    Active,
    /// The static fallback key is served.
    Fallback,
    /// Nothing can be served.
    Unavailable,
    /// The configuration entry is inert (a bad directive, an endpoint without a domain or host,
    /// a directive on the TCP logs transport: wire spec §10.2). It never serves a key; the
    /// status says what is wrong and how to fix it.
    Invalid,
}

impl KeyState {
    /// The lowercase name used in the API, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Fallback => "fallback",
            KeyState::Unavailable => "unavailable",
            KeyState::Invalid => "invalid",
        }
    }
}

/// Where a served key came from (the `source` field of product §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// A managed key obtained through delegated authentication.
    Delegated,
    /// The static key from `datadog.yaml`, a DELA `fallback=` or `fallback_api_key_file`.
    Fallback,
}

impl KeySource {
    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Delegated => "delegated",
            KeySource::Fallback => "fallback",
        }
    }
}

/// The key an instance serves.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedKey {
    /// The API key itself.
    pub value: Secret,
    /// Managed or static.
    pub source: KeySource,
    /// When this value started being served (for a managed key: when it was obtained).
    pub obtained_at: SystemTime,
    /// For a token: when it stops being valid. It is never served at or after this moment.
    pub expires_at: Option<SystemTime>,
}

impl ServedKey {
    /// Whether this is a token that has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Everything about an instance that is not the key: what status, `/v1/keys` and metrics show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceStatus {
    /// The org the instance exchanges for, when delegated.
    pub org_uuid: Option<String>,
    /// The intake-key URL the proof is sent to.
    pub endpoint: Option<String>,
    /// STS signing region, when known (`None` = global endpoint).
    pub region: Option<String>,
    /// Scheduled refresh interval.
    pub refresh_interval: Option<Duration>,
    /// The AWS credential source last used (Agent wording, e.g. `EC2 IMDS`).
    pub credential_source: Option<String>,
    /// Last successful exchange.
    pub last_refresh: Option<SystemTime>,
    /// Last attempt, successful or not.
    pub last_attempt: Option<SystemTime>,
    /// Next scheduled attempt.
    pub next_refresh: Option<SystemTime>,
    /// Whether the next attempt is a retry after a failure (status shows `Next Retry`).
    pub next_is_retry: bool,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The last failure, operator-readable, without secrets.
    pub last_error: Option<String>,
    /// Kind of the last failure (`unauthorized`, `throttled`, `unavailable`, …).
    pub last_error_kind: Option<FailureKind>,
    /// Where the fallback key comes from (`api_key`, `fallback_api_key_file`, …), if any.
    pub fallback_origin: Option<String>,
    /// Why the instance is in fallback, unavailable or invalid.
    pub reason: Option<String>,
    /// For an invalid instance: how to fix its configuration entry.
    pub fix: Option<String>,
    /// Other instances sharing this instance's exchange (same org, endpoint and region).
    pub shared_with: Vec<String>,
}

/// An immutable picture of one instance. Readers hold an `Arc` of it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Instance name (product §6).
    pub name: Arc<str>,
    /// Increases whenever the served value changes; the ETag of product §7.
    pub generation: u64,
    /// Lifecycle state.
    pub state: KeyState,
    /// The key served now, if any.
    pub served: Option<ServedKey>,
    /// Status details.
    pub status: InstanceStatus,
    /// Set once the instance was removed by a reload; waiters wake up and answer 404.
    pub removed: bool,
    /// The rendered answer of `GET /v1/keys/{instance}` for this snapshot, filled by the first
    /// read: the snapshot is immutable, so the body is built once, not per request.
    pub rendered: RenderCache,
}

/// A once-filled cache of a snapshot's rendered answer. Cloning gives an *empty* cache (a clone
/// is about to become a different snapshot, whose answer differs), and `Debug` never shows the
/// bytes (they hold the key).
#[derive(Default)]
pub struct RenderCache(std::sync::OnceLock<Rendered>);

/// A snapshot's answer as the server sends it: cloning it only bumps reference counts, so a
/// read (or a rotation fanned out to a thousand long polls) allocates nothing for it.
#[derive(Clone)]
pub struct Rendered {
    /// The JSON body.
    pub body: bytes::Bytes,
    /// The `ETag` header value (`"<generation>"`).
    pub etag: bytes::Bytes,
}

impl RenderCache {
    /// The cached answer, rendering it with `render` on first use.
    pub fn get_or_render(&self, render: impl FnOnce() -> Rendered) -> Rendered {
        self.0.get_or_init(render).clone()
    }
}

impl Clone for RenderCache {
    fn clone(&self) -> Self {
        RenderCache::default()
    }
}

impl std::fmt::Debug for RenderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RenderCache")
    }
}

impl Snapshot {
    /// Whether a reader must wait before answering: the first exchange has not finished.
    pub fn is_pending(&self) -> bool {
        self.state == KeyState::Pending && !self.removed
    }

    fn serves_same_as(&self, other: &Snapshot) -> bool {
        self.served.as_ref().map(|k| (&k.value, k.source))
            == other.served.as_ref().map(|k| (&k.value, k.source))
            && self.state == other.state
            && self.removed == other.removed
    }
}

/// One instance's channel.
#[derive(Debug)]
pub struct Slot {
    tx: watch::Sender<Arc<Snapshot>>,
    generations: Arc<AtomicU64>,
}

impl Slot {
    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Publishes a change. The generation is bumped only when what is served (value, source,
    /// state) changes, so status-only updates do not look like rotations to consumers.
    ///
    /// Only a new generation wakes the receivers (long polls, sinks, `exec`): every one of them
    /// waits for a new generation, and a status-only update (a refresh starting, a failure
    /// recorded) would otherwise wake each parked long poll just to park it again, right when
    /// the rotation that does concern them is about to be fanned out. Readers of the current
    /// snapshot (status, plain reads) see status-only updates at once all the same.
    pub fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        self.tx.send_if_modified(|current| {
            let mut next = Snapshot::clone(current);
            change(&mut next);
            let rotated = !next.serves_same_as(current);
            next.generation = if rotated {
                self.generations.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                current.generation
            };
            *current = Arc::new(next);
            rotated
        });
    }

    /// Waits until the generation differs from `known` or `deadline` passes; returns the
    /// snapshot that ended the wait, or `None` on timeout.
    pub async fn wait_for_change(&self, known: u64, deadline: Instant) -> Option<Arc<Snapshot>> {
        self.wait_until(deadline, |s| s.generation != known || s.removed)
            .await
    }

    /// Waits while the instance is pending (startup grace), at most until `deadline`, and
    /// returns the snapshot to answer with.
    pub async fn wait_while_pending(&self, deadline: Instant) -> Arc<Snapshot> {
        match self.wait_until(deadline, |s| !s.is_pending()).await {
            Some(s) => s,
            None => self.current(),
        }
    }

    async fn wait_until(
        &self,
        deadline: Instant,
        done: impl Fn(&Snapshot) -> bool,
    ) -> Option<Arc<Snapshot>> {
        let mut rx = self.tx.subscribe();
        let wait = rx.wait_for(|s| done(s));
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(s)) => Some(s.clone()),
            // The sender lives as long as the slot we borrow from, so a closed channel cannot
            // happen while we hold `&self`; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// A receiver for consumers that follow changes continuously (sinks, `exec`).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

/// All instances, replaced as a whole on reload.
#[derive(Debug, Default)]
pub struct KeyStore {
    slots: ArcSwap<BTreeMap<Arc<str>, Arc<Slot>>>,
    /// Old instance names that still reach an instance (old name → current name).
    aliases: ArcSwap<BTreeMap<Arc<str>, Arc<str>>>,
    generations: Arc<AtomicU64>,
}

impl KeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot of an instance, by its name or an alias.
    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        let slots = self.slots.load();
        if let Some(slot) = slots.get(name) {
            return Some(slot.clone());
        }
        let current = self.aliases.load().get(name).cloned()?;
        slots.get(&current).cloned()
    }

    /// The current name of an instance asked for by `name`: itself, or the instance an old name
    /// (an alias) stands for. Request handlers resolve the name once, so access rules, rejection
    /// reports and answers all use the current name.
    pub fn canonical<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        if self.slots.load().contains_key(name) {
            return std::borrow::Cow::Borrowed(name);
        }
        match self.aliases.load().get(name) {
            Some(current) => std::borrow::Cow::Owned(current.to_string()),
            None => std::borrow::Cow::Borrowed(name),
        }
    }

    /// Replaces the aliases (old name, current name). An alias equal to an instance's own name
    /// is ignored: names win.
    pub fn set_aliases(&self, pairs: &[(String, String)]) {
        let slots = self.slots.load();
        let map = pairs
            .iter()
            .filter(|(old, _)| !slots.contains_key(old.as_str()))
            .map(|(old, new)| (Arc::from(old.as_str()), Arc::from(new.as_str())))
            .collect();
        self.aliases.store(Arc::new(map));
    }

    /// Every key instance's slot, sorted by instance name (tokens are not keys).
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        (self.slots.load().iter())
            .filter(|(name, _)| token_name(name).is_none())
            .map(|(_, slot)| slot.clone())
            .collect()
    }

    /// Every token's slot, sorted by name.
    pub fn token_slots(&self) -> Vec<Arc<Slot>> {
        (self.slots.load().iter())
            .filter(|(name, _)| token_name(name).is_some())
            .map(|(_, slot)| slot.clone())
            .collect()
    }

    /// Makes the set of instances exactly `names`: existing slots are kept untouched (their key
    /// and generation survive a reload), new ones start `pending`, the others are marked removed
    /// (waking their waiters) and dropped. Returns the slots of `names` in the same order.
    pub fn set_instances(&self, names: &[String]) -> Vec<Arc<Slot>> {
        let old = self.slots.load_full();
        let mut next = BTreeMap::new();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let slot = match old.get(name.as_str()) {
                Some(slot) => slot.clone(),
                None => Arc::new(self.new_slot(name)),
            };
            next.insert(Arc::from(name.as_str()), slot.clone());
            out.push(slot);
        }
        self.slots.store(Arc::new(next));
        for (name, slot) in old.iter() {
            if !names.iter().any(|n| **n == **name) {
                slot.update(|s| {
                    s.removed = true;
                    s.served = None;
                    s.state = KeyState::Unavailable;
                });
            }
        }
        out
    }

    fn new_slot(&self, name: &str) -> Slot {
        let snapshot = Snapshot {
            name: Arc::from(name),
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            state: KeyState::Pending,
            served: None,
            status: InstanceStatus::default(),
            removed: false,
            rendered: RenderCache::default(),
        };
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Slot {
            tx,
            generations: self.generations.clone(),
        }
    }

    /// Ready (product §7 `/v1/health/ready`): every key instance can serve a key. Tokens do not
    /// count: the Agent waits for readiness, and a token (a separate persona mapping, consumers
    /// of their own) must not hold its keys back; status shows the tokens' state.
    pub fn is_ready(&self) -> bool {
        self.slots().iter().all(|slot| {
            let s = slot.current();
            // An invalid entry never serves a key, and waiting for it would keep the daemon
            // unready for good: it does not count (wire spec §10.2, everything else runs).
            matches!(
                s.state,
                KeyState::Active | KeyState::Fallback | KeyState::Invalid
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn serve(slot: &Slot, key: &str, source: KeySource) {
        slot.update(|s| {
            s.state = match source {
                KeySource::Delegated => KeyState::Active,
                KeySource::Fallback => KeyState::Fallback,
            };
            s.served = Some(ServedKey {
                value: Secret::from(key),
                source,
                obtained_at: SystemTime::now(),
                expires_at: None,
            });
        });
    }

    #[test]
    fn generation_changes_only_when_the_served_value_changes() {
        let store = KeyStore::new();
        let slot = store.set_instances(&names(&["api_key"])).remove(0);
        let g0 = slot.current().generation;
        serve(&slot, "aaaaaaaaaaaaaaaa", KeySource::Fallback);
        let g1 = slot.current().generation;
        assert!(g1 > g0);
        let rx = slot.subscribe();
        slot.update(|s| s.status.consecutive_failures = 3);
        assert_eq!(
            slot.current().generation,
            g1,
            "status-only change keeps the ETag"
        );
        assert_eq!(slot.current().status.consecutive_failures, 3, "but is seen");
        assert!(
            !rx.has_changed().unwrap(),
            "and wakes no one waiting for a new generation"
        );
        serve(&slot, "aaaaaaaaaaaaaaaa", KeySource::Fallback);
        assert_eq!(
            slot.current().generation,
            g1,
            "same value again keeps the ETag"
        );
        assert!(!rx.has_changed().unwrap());
        serve(&slot, "aaaaaaaaaaaaaaaa", KeySource::Delegated);
        assert!(
            slot.current().generation > g1,
            "a change of source is a change"
        );
        assert!(rx.has_changed().unwrap(), "and wakes the waiters");
    }

    #[test]
    fn generations_are_unique_across_instances_and_reloads() {
        let store = KeyStore::new();
        let slots = store.set_instances(&names(&["a", "b"]));
        let ga = slots[0].current().generation;
        let gb = slots[1].current().generation;
        assert_ne!(ga, gb);
        store.set_instances(&names(&["b"]));
        assert!(slots[0].current().removed);
        let again = store.set_instances(&names(&["a", "b"]));
        assert!(again[0].current().generation > gb.max(ga));
        assert!(
            Arc::ptr_eq(&again[1], &slots[1]),
            "kept instances keep their slot"
        );
    }

    #[test]
    fn readiness_requires_every_instance_to_serve() {
        let store = KeyStore::new();
        let slots = store.set_instances(&names(&["a", "b"]));
        assert!(!store.is_ready());
        serve(&slots[0], "k1k1k1k1k1k1k1k1", KeySource::Delegated);
        assert!(!store.is_ready());
        serve(&slots[1], "k2k2k2k2k2k2k2k2", KeySource::Fallback);
        assert!(store.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_is_released_by_a_change_and_times_out_otherwise() {
        let store = KeyStore::new();
        let slot = store.set_instances(&names(&["api_key"])).remove(0);
        serve(&slot, "first-key-000001", KeySource::Fallback);
        let known = slot.current().generation;

        let deadline = Instant::now() + Duration::from_secs(30);
        assert!(slot.wait_for_change(known, deadline).await.is_none());

        let waiter = {
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                slot.wait_for_change(known, deadline).await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        serve(&slot, "second-key-00002", KeySource::Delegated);
        let seen = waiter.await.unwrap().expect("released by the change");
        assert_eq!(
            seen.served.as_ref().unwrap().value.expose(),
            "second-key-00002"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn removal_releases_waiters() {
        let store = KeyStore::new();
        let slot = store.set_instances(&names(&["gone"])).remove(0);
        let known = slot.current().generation;
        let waiter = {
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                slot.wait_for_change(known, Instant::now() + Duration::from_secs(300))
                    .await
            })
        };
        tokio::task::yield_now().await;
        store.set_instances(&[]);
        assert!(waiter.await.unwrap().unwrap().removed);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_readers_wait_for_the_first_outcome() {
        let store = KeyStore::new();
        let slot = store.set_instances(&names(&["api_key"])).remove(0);
        let reader = {
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                slot.wait_while_pending(Instant::now() + Duration::from_secs(10))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        serve(&slot, "managed-key-0001", KeySource::Delegated);
        assert_eq!(reader.await.unwrap().state, KeyState::Active);

        let other = store.set_instances(&names(&["api_key", "late"])).remove(1);
        let snap = other
            .wait_while_pending(Instant::now() + Duration::from_secs(1))
            .await;
        assert_eq!(
            snap.state,
            KeyState::Pending,
            "the deadline bounds the wait"
        );
    }
}

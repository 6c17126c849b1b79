//! The refresh manager: obtains managed keys, keeps them fresh, and decides what each instance
//! serves (product §6).
//!
//! # Shape
//!
//! - Instances with the same [`ExchangeKey`] (org, exchange target, region) form a *group*: one
//!   task, one exchange, one managed key, published to every member's slot. The group's
//!   refresh interval is the shortest of its members' (the key must satisfy the most demanding).
//! - Instances without delegated auth ("static") have no task: [`Manager::apply`] publishes their
//!   fallback key (or `unavailable`) directly.
//! - A group task ([`group`]) sleeps in one `select!` until its next deadline, the end of the
//!   startup grace, a trigger (a rejection report, through a `Notify`), the end of its running
//!   exchange, a command from the manager or shutdown. It never polls.
//! - What a group serves is a [`state::Phase`]; events move it through the pure
//!   [`state::step`], which also keeps the schedule. The policy deciding *when* (jitter,
//!   backoff, lanes, `Retry-After`) lives in [`crate::schedule`]. The task only runs exchanges,
//!   publishes, records metrics and logs.
//!
//! | module      | what it owns                                                            |
//! |-------------|-------------------------------------------------------------------------|
//! | [`manager`] | plans → groups: starting, reconfiguring and stopping group tasks         |
//! | [`group`]   | one group's task: the select loop, exchanges, publishing, metrics, logs  |
//! | [`state`]   | the phase, the schedule, the status history and what each member serves |
//! | [`report`]  | rejection reports: routing, throttle, single flight                      |
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
//! | phase                         | member with fallback | member without   |
//! |-------------------------------|----------------------|------------------|
//! | `Starting` (first attempt running, grace not over) | `pending` | `pending`   |
//! | `NoKey` (first attempt failed, or grace over)      | `fallback` | `unavailable` |
//! | `Serving` (a managed key)                          | `active`   | `active`      |
//! | `Rejected` (reported rejected, refresh failed)     | `fallback` | `active` (\*) |
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
//! # Who writes a slot across reloads
//!
//! Exactly one writer per slot: the group the instance belongs to, or `apply` for a static
//! instance. `apply` stops the groups no longer needed and waits for them to end, and hands every
//! changed group its new members and waits for the acknowledgement, before it starts new groups
//! or publishes static instances. So a group that lost a member can never overwrite what the
//! member's new owner published.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::schedule::Cause;
use crate::secret::Secret;

mod failure;
mod group;
mod manager;
mod report;
mod state;
#[cfg(test)]
mod testing;

pub use failure::FailureKind;
pub use manager::Manager;
pub use report::{ManagerHandle, RejectOutcome};

/// Minimum time between two refreshes forced by rejection reports, per group (product §6; the
/// Agent's `minTriggerRefreshInterval`).
pub const REJECTION_THROTTLE: Duration = Duration::from_secs(30);

/// Upper bound on one attempt. The exchanger has its own, shorter timeouts (credentials, 30 s
/// for the HTTP exchange); this one only guarantees that a bug there cannot stall an instance
/// forever.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// What an exchange obtains: the two flows of the seed document.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A managed intake API key (`POST /api/v2/intake-key`), refreshed on an interval and
    /// backed by the static fallback.
    #[default]
    IntakeKey,
    /// A delegated API token, a JWT for a user or service account (`POST
    /// /api/v2/delegated-token`, wire spec §8.1): refreshed before it expires, never served past
    /// its expiry, never replaced by a fallback.
    Token,
}

/// What one exchange needs. Instances with equal keys share one exchange and one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeKey {
    /// What is exchanged for: a token never shares an exchange with a key.
    pub credential: Credential,
    /// The Datadog org the proof is bound to (`x-ddog-org-id`).
    pub org_uuid: String,
    /// The exchange target. For a key: the endpoint the instance sends to, from which the
    /// exchanger derives the API base and the intake-key URL. For a token: the API base itself
    /// (`https://api.<site>` or the configured `api_url`).
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
    /// For a token: how long before its expiry it is refreshed (`None`: 25 % of its lifetime,
    /// at least 60 s). Never more than half the lifetime (see [`crate::schedule::token_margin`]).
    pub refresh_before: Option<Duration>,
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
    /// The managed API key, or the token.
    pub key: Secret,
    /// For a token: when it stops being valid (Datadog's `expires`, or now + 15 min when the
    /// answer had none, as the API clients do).
    pub expires_at: Option<SystemTime>,
    /// The AWS credential source used (Agent wording, e.g. `EC2 IMDS`).
    pub credential_source: Option<String>,
    /// The exchange URL used (intake-key or delegated-token).
    pub endpoint: String,
    /// The STS region the proof was signed for (`None` = global endpoint).
    pub region: Option<String>,
}

/// A failed exchange.
#[derive(Clone, Debug)]
pub struct ExchangeFailure {
    /// What kind of failure it was.
    pub kind: FailureKind,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something ever did, the data (a few flags
    // and an instant) is still consistent, so recovering is better than poisoning the daemon.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

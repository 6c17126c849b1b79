//! An emulator of the parts of Datadog's API the daemon talks to, for tests and the demo: a real
//! HTTP/1.1 server on `127.0.0.1`.
//!
//! Endpoints:
//! - `POST /api/v2/intake-key` — the exchange. Verifies the `Authorization: Delegated <proof>`
//!   as the real backend must ([`proof::check_proof`]: four fields, standard base64, POST, an
//!   STS host, the exact body, the org header known and signed, `X-Amz-Date` within
//!   [`DatadogOptions::max_clock_skew`] of the emulator's clock, scope region matching the
//!   host), replays the signed request to STS (moto) with its `Host` kept and `Content-Length`
//!   rebuilt, and matches the caller ARN against the org's intake mappings with the seed's
//!   wildcard rules (the daemon's own [`datadog_delegated_auth::arn_pattern`]). Success mints a
//!   new random 32-hex key; the org's older keys stay valid for
//!   [`DatadogOptions::key_overlap`], then stop validating. Errors are JSON:API like the real
//!   ones: 401 `Authenticated as <arn> but no identity mapping was found.`, 403 for a bad
//!   proof (with the reason), 403 when STS refuses the signature, 502 when STS is unreachable.
//! - `POST /api/v2/delegated-token` — the delegated token exchange (wire spec §8.1). The proof
//!   is verified by the same code as the intake exchange (same checks, statuses and details),
//!   then the caller ARN is matched against the org's *persona* mappings (creation order, first
//!   match wins); no match is 401 `Authenticated as <arn> but no persona mapping was found.`.
//!   Success mints an HS256 JWT ([`jwt`]) for the mapping's account, valid for
//!   [`DatadogOptions::token_lifetime`]:
//!   `200 {"data":{"type":"delegated_token","attributes":{"access_token":…,"expires":"<unix s>"}}}`
//!   (`expires` is a string, and equals the token's `exp`). It has its own fault queue
//!   ([`DatadogEmulator::inject_token_fault`]).
//! - `GET /api/v1/validate` with `DD-API-KEY` — `200 {"valid":true}` (plus an
//!   `X-Sandbox-Org-Uuid` header naming the key's org) or `403 {"errors":["Forbidden"]}`. With
//!   `Authorization: Bearer <token>` instead, the token is judged (signature, expiry, revocation,
//!   org): `200 {"valid":true}` with `X-Sandbox-Org-Uuid` and `X-Sandbox-Account`, or a 401
//!   JSON:API error whose detail is `token expired`, `token revoked`, `bad signature`,
//!   `malformed token` or `unknown org`.
//! - `GET /api/v2/current_user` with a bearer token — the token's account as a JSON:API `users`
//!   resource.
//! - `POST /api/v1/events` with a bearer token or a valid `DD-API-KEY` — `202`, the event kept in
//!   [`DatadogEmulator::events`]. So tests can prove a token the daemon served really works.
//!   Without any credentials these bearer routes answer `403 {"errors":["Forbidden"]}`.
//! - The cloud-auth mapping API (wire spec §8.2, seed doc): `GET|POST
//!   /api/v2/cloud_auth/aws/{intake_mapping,persona_mapping}` and `GET|DELETE …/{id}`, with
//!   `DD-API-KEY` + `DD-APPLICATION-KEY` of the org (see [`mapping`]).
//!
//! Tests drive it directly: register orgs ([`DatadogEmulator::add_org`]) and mappings, inject
//! faults on either exchange ([`Fault`]), skew its clock, revoke keys and tokens, and assert on
//! its request log ([`DatadogEmulator::requests`]). Several instances can run at once (a second
//! one stands in for another Datadog site; it refuses the first one's tokens). Dropping the
//! emulator stops it and its connections.

pub mod jwt;
mod mapping;
pub mod proof;
mod sts;
mod token;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

pub use self::mapping::PersonaMapping;
pub use self::token::{IssuedToken, PostedEvent};

use self::proof::ProofError;
use self::sts::{StsError, StsReplay};

/// Response body type of every handler.
type Body = BoxBody<Bytes, Infallible>;

/// Path of the exchange endpoint.
pub const INTAKE_KEY_PATH: &str = "/api/v2/intake-key";
/// Path of the key validation endpoint.
pub const VALIDATE_PATH: &str = "/api/v1/validate";
/// Path of the delegated token exchange.
pub const DELEGATED_TOKEN_PATH: &str = "/api/v2/delegated-token";
/// Path of the current-user endpoint (bearer tokens only).
pub const CURRENT_USER_PATH: &str = "/api/v2/current_user";
/// Path of the event intake (bearer token or API key).
pub const EVENTS_PATH: &str = "/api/v1/events";

/// [`DatadogOptions::token_lifetime`] by default.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// Largest request body accepted (mapping API bodies are tiny).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The Agent's response cap; [`Fault::oversized_body`] goes just past it.
pub const CLIENT_RESPONSE_CAP: usize = 1024 * 1024;

/// How to start an emulator.
#[derive(Clone, Debug)]
pub struct DatadogOptions {
    /// Base URL of STS (moto), e.g. `http://127.0.0.1:5000`, where proofs are replayed. Without
    /// it, proofs that pass the local checks get `503` (nothing can tell who signed them).
    pub sts_url: Option<String>,
    /// How long an org's previous managed keys keep validating after a new one is issued.
    pub key_overlap: Duration,
    /// Largest allowed distance between a proof's `X-Amz-Date` and the emulator's clock (AWS
    /// and, presumably, Datadog allow 5 minutes).
    pub max_clock_skew: Duration,
    /// Port to bind on 127.0.0.1 (0 = any free port).
    pub port: u16,
    /// How long a delegated token is valid (whole seconds, at least 1 s; the real API's
    /// tokens last 15 minutes, which is also what the Go client assumes without `expires`).
    pub token_lifetime: Duration,
}

impl Default for DatadogOptions {
    fn default() -> Self {
        DatadogOptions {
            sts_url: None,
            key_overlap: Duration::from_secs(600),
            max_clock_skew: Duration::from_secs(300),
            port: 0,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
        }
    }
}

/// An org registered in the emulator, with the admin keys tests use for the mapping API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgHandle {
    /// The org UUID (what `delegated_auth.org_uuid` holds).
    pub uuid: String,
    /// The numeric org id returned in `data.attributes.org_id`.
    pub org_id: i64,
    /// A (static, never rotated) API key of the org: validates, and authenticates the mapping
    /// API together with `app_key`. Also usable as the daemon's fallback `api_key`.
    pub api_key: String,
    /// An application key of the org.
    pub app_key: String,
}

/// A managed key the emulator issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedKey {
    /// The key.
    pub key: String,
    /// Its org.
    pub org_uuid: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// Whether it still validates.
    pub state: KeyState,
}

/// Validity of an issued key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// The org's newest key.
    Current,
    /// Superseded; still valid until the instant.
    Overlap {
        /// When it stops validating.
        until: Instant,
    },
    /// Revoked explicitly, or its overlap ran out.
    Revoked,
}

/// An intake mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntakeMapping {
    /// Its id (a UUID).
    pub id: String,
    /// The ARN pattern.
    pub arn_pattern: String,
}

/// What the emulator did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Exchange: a key (intake) or a token (delegated token) was issued. Tell the two apart
    /// with [`RequestRecord::is_token_exchange`]; a token exchange answered by
    /// [`Fault::token_without_expiry`] or [`Fault::token_expires`] is `Issued` too (a real
    /// token was minted), with the fault in [`RequestRecord::detail`].
    Issued,
    /// Exchange: the caller ARN matched no intake (or, for tokens, persona) mapping (401).
    Unmapped,
    /// Exchange: no `Authorization: Delegated` (401).
    Unauthenticated,
    /// Exchange: the proof failed a local check (403).
    BadProof,
    /// Exchange: STS refused the signed request (403).
    StsRejected,
    /// Exchange: STS could not be reached or answered nonsense (502/503).
    StsUnavailable,
    /// Exchange: answered by an injected [`Fault`].
    Fault,
    /// Validate: the key or bearer token is valid.
    Valid,
    /// Validate: the key is not valid (403).
    Invalid,
    /// A bearer token was refused (401; the reason in [`RequestRecord::detail`]).
    TokenRejected,
    /// Events: the event was accepted (202).
    Accepted,
    /// Mapping API: created (201).
    Created,
    /// Mapping API: listed or fetched; current user: answered (200).
    Read,
    /// Mapping API: deleted (204).
    Deleted,
    /// 404.
    NotFound,
    /// 400.
    BadRequest,
    /// Mapping API: the pattern already exists (409).
    Conflict,
    /// Mapping API: missing or wrong API/application keys; bearer routes: no credentials (403).
    Forbidden,
    /// 405.
    MethodNotAllowed,
    /// The connection was closed without an answer ([`Fault::disconnect`]).
    Disconnected,
}

/// One entry of the request log.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Wall-clock arrival time.
    pub at: SystemTime,
    /// Monotonic arrival time (for intervals, e.g. that a `Retry-After` was honoured).
    pub instant: Instant,
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// The org concerned, when known (proof org header, key's org, mapping API org).
    pub org: Option<String>,
    /// Status answered (0 when the connection was dropped on purpose).
    pub status: u16,
    /// What happened.
    pub outcome: Outcome,
    /// The error detail sent, if any.
    pub detail: Option<String>,
    /// The caller ARN STS reported, for exchanges that got that far.
    pub caller_arn: Option<String>,
    /// The key issued, for successful intake exchanges.
    pub issued_key: Option<String>,
    /// The JWT minted, for token exchanges that minted one (also those answered by
    /// [`Fault::token_without_expiry`] or [`Fault::token_expires`]).
    pub issued_token: Option<String>,
    /// The account a token exchange issued for, or a bearer request authenticated as.
    pub account: Option<String>,
    /// The proof received (the value after `Authorization: Delegated `), for exchanges of
    /// either kind: tests scan logs for it and its parts.
    pub proof: Option<String>,
}

impl RequestRecord {
    /// Whether this is an intake exchange (`/api/v2/intake-key`); token exchanges are not.
    pub fn is_exchange(&self) -> bool {
        self.path == INTAKE_KEY_PATH
    }

    /// Whether this is a delegated token exchange (`/api/v2/delegated-token`).
    pub fn is_token_exchange(&self) -> bool {
        self.path == DELEGATED_TOKEN_PATH
    }
}

/// A misbehaviour of an exchange endpoint, injected by tests. Faults queue up and apply to the
/// next exchanges in order, each for [`Fault::times`] requests (default 1). The intake exchange
/// ([`DatadogEmulator::inject`]) and the token exchange ([`DatadogEmulator::inject_token_fault`])
/// have separate queues; on the token exchange the bodies have the token answer's shape.
#[derive(Clone, Debug)]
pub struct Fault {
    kind: FaultKind,
    times: usize,
    delay: Duration,
}

#[derive(Clone, Debug)]
enum FaultKind {
    /// Process normally, only late.
    Delay,
    Status {
        status: u16,
        retry_after: Option<String>,
        body: Option<String>,
    },
    Malformed,
    EmptyKey,
    Oversized {
        bytes: usize,
        chunked: bool,
    },
    Disconnect,
    /// Token exchange: mint normally, report no `expires`.
    TokenWithoutExpiry,
    /// Token exchange: mint normally, report this `expires`.
    TokenExpires(String),
}

impl Fault {
    fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            times: 1,
            delay: Duration::ZERO,
        }
    }

    /// Answer `status` (with a JSON:API error body unless [`Fault::body`] is set), without
    /// looking at the proof.
    pub fn status(status: u16) -> Self {
        Fault::new(FaultKind::Status {
            status,
            retry_after: None,
            body: None,
        })
    }

    /// Process the exchange normally, but answer only after `delay` (the work, including
    /// minting a key, is done first, as on a slow network).
    pub fn latency(delay: Duration) -> Self {
        Fault::new(FaultKind::Delay).delay(delay)
    }

    /// Answer 200 with a truncated JSON body.
    pub fn malformed_body() -> Self {
        Fault::new(FaultKind::Malformed)
    }

    /// Answer 200 with `{"data":{"attributes":{"api_key":""}}}` (on the token exchange: an
    /// empty `access_token`, with a normal `expires`).
    pub fn empty_key() -> Self {
        Fault::new(FaultKind::EmptyKey)
    }

    /// Answer 200 with a well-formed key answer padded past the client's 1 MiB cap, with a
    /// `Content-Length`.
    pub fn oversized_body() -> Self {
        Fault::new(FaultKind::Oversized {
            bytes: CLIENT_RESPONSE_CAP + 1024,
            chunked: false,
        })
    }

    /// Like [`Fault::oversized_body`], but streamed with chunked encoding (no length known up
    /// front), so only a streaming cap can catch it.
    pub fn oversized_chunked_body() -> Self {
        Fault::new(FaultKind::Oversized {
            bytes: CLIENT_RESPONSE_CAP + 1024,
            chunked: true,
        })
    }

    /// Close the connection without answering.
    pub fn disconnect() -> Self {
        Fault::new(FaultKind::Disconnect)
    }

    /// Token exchange only: verify and mint as usual (the token is real, recorded, and expires
    /// at its normal `exp`), but leave the `expires` attribute out of the answer, as a client
    /// must survive (the Go client then assumes 15 minutes). On the intake exchange it does
    /// nothing but use up a turn.
    pub fn token_without_expiry() -> Self {
        Fault::new(FaultKind::TokenWithoutExpiry)
    }

    /// Token exchange only: like [`Fault::token_without_expiry`], but send `expires` as exactly
    /// `value` (`"garbage"`, a past time, a number far away…); the token's real `exp` is
    /// unchanged.
    pub fn token_expires(value: impl Into<String>) -> Self {
        Fault::new(FaultKind::TokenExpires(value.into()))
    }

    /// Apply to the next `n` exchanges instead of one.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n.max(1);
        self
    }

    /// Add a delay before the answer.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Send this `Retry-After` value (seconds or an HTTP date) with a status fault.
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        if let FaultKind::Status { retry_after, .. } = &mut self.kind {
            *retry_after = Some(value.into());
        }
        self
    }

    /// Send this body (as is, `Content-Type: application/json`) with a status fault.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        if let FaultKind::Status { body: b, .. } = &mut self.kind {
            *b = Some(body.into());
        }
        self
    }
}

/// A running emulator. Stops (with its connections) when dropped.
pub struct DatadogEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Woken on every new request-log entry.
    logged: Notify,
    sts: Option<StsReplay>,
    max_clock_skew: Duration,
    /// Signs and checks delegated tokens; random per emulator, so a token of one instance is
    /// refused by another (as a token of another Datadog site would be).
    signer: jwt::Signer,
}

struct State {
    /// By lowercase UUID.
    orgs: BTreeMap<String, Org>,
    /// Every API key, admin and managed, by value.
    keys: HashMap<String, KeyRecord>,
    faults: VecDeque<Fault>,
    /// The token exchange's own queue, so token tests do not disturb the daemon's intake
    /// exchanges running beside them.
    token_faults: VecDeque<Fault>,
    requests: Vec<RequestRecord>,
    clock_offset_secs: i64,
    key_overlap: Duration,
    next_org_id: i64,
    /// Every minted token, by its compact form.
    tokens: HashMap<String, token::TokenRecord>,
    /// Whole seconds, at least one.
    token_lifetime: Duration,
    /// Events posted to [`EVENTS_PATH`], oldest first.
    events: Vec<PostedEvent>,
}

struct Org {
    handle: OrgHandle,
    intake: Vec<IntakeMapping>,
    persona: Vec<PersonaMapping>,
    /// Managed keys in issue order.
    issued: Vec<String>,
    /// Delegated tokens in issue order.
    tokens: Vec<String>,
}

struct KeyRecord {
    org: String,
    issued_at: SystemTime,
    managed: bool,
    revoked: bool,
    expires_at: Option<Instant>,
}

impl KeyRecord {
    fn valid(&self, now: Instant) -> bool {
        !self.revoked && self.expires_at.is_none_or(|t| now < t)
    }
}

impl State {
    fn org(&self, uuid: &str) -> Option<&Org> {
        self.orgs.get(&uuid.to_ascii_lowercase())
    }

    fn org_mut(&mut self, uuid: &str) -> Option<&mut Org> {
        self.orgs.get_mut(&uuid.to_ascii_lowercase())
    }

    /// The org of a currently valid key.
    fn key_org(&self, key: &str) -> Option<String> {
        self.keys
            .get(key)
            .filter(|k| k.valid(Instant::now()))
            .map(|k| k.org.clone())
    }

    fn take_fault(&mut self, exchange: ExchangeKind) -> Option<Fault> {
        let queue = match exchange {
            ExchangeKind::IntakeKey => &mut self.faults,
            ExchangeKind::DelegatedToken => &mut self.token_faults,
        };
        let front = queue.front_mut()?;
        front.times -= 1;
        let fault = front.clone();
        if front.times == 0 {
            queue.pop_front();
        }
        Some(fault)
    }

    fn mint(&mut self, org_uuid: &str) -> String {
        let now = Instant::now();
        let overlap_end = now + self.key_overlap;
        let org_key = org_uuid.to_ascii_lowercase();
        let key = format!("{:032x}", fastrand::u128(..));
        let previous: Vec<String> = self
            .orgs
            .get(&org_key)
            .map(|o| o.issued.clone())
            .unwrap_or_default();
        for old in previous {
            if let Some(record) = self.keys.get_mut(&old)
                && record.expires_at.is_none()
            {
                record.expires_at = Some(overlap_end);
            }
        }
        self.keys.insert(
            key.clone(),
            KeyRecord {
                org: org_key.clone(),
                issued_at: SystemTime::now(),
                managed: true,
                revoked: false,
                expires_at: None,
            },
        );
        if let Some(org) = self.orgs.get_mut(&org_key) {
            org.issued.push(key.clone());
        }
        key
    }
}

impl DatadogEmulator {
    /// Binds `127.0.0.1:<port>` and starts serving.
    ///
    /// # Errors
    /// When the port cannot be bound or the STS URL is not a valid `http://` base URL.
    pub async fn start(opts: DatadogOptions) -> std::io::Result<DatadogEmulator> {
        let sts = opts
            .sts_url
            .as_deref()
            .map(StsReplay::new)
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], opts.port))).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                orgs: BTreeMap::new(),
                keys: HashMap::new(),
                faults: VecDeque::new(),
                token_faults: VecDeque::new(),
                requests: Vec::new(),
                clock_offset_secs: 0,
                key_overlap: opts.key_overlap,
                next_org_id: 1_000_001,
                tokens: HashMap::new(),
                token_lifetime: token::whole_seconds(opts.token_lifetime),
                events: Vec::new(),
            }),
            logged: Notify::new(),
            sts,
            max_clock_skew: opts.max_clock_skew,
            signer: jwt::Signer::random(),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(DatadogEmulator {
            addr,
            shared,
            accept_task,
        })
    }

    /// `http://127.0.0.1:<port>`: what to use as `dd_url` (or a DELA endpoint).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The exchange URL, `<url>/api/v2/intake-key`.
    pub fn intake_key_url(&self) -> String {
        format!("{}{INTAKE_KEY_PATH}", self.url())
    }

    /// The delegated token exchange URL, `<url>/api/v2/delegated-token`.
    pub fn delegated_token_url(&self) -> String {
        format!("{}{DELEGATED_TOKEN_PATH}", self.url())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers an org (UUIDs compare case-insensitively) with a fresh API key and
    /// application key. Registering it again returns the existing handle.
    pub fn add_org(&self, uuid: &str) -> OrgHandle {
        let mut state = self.shared.lock();
        if let Some(org) = state.org(uuid) {
            return org.handle.clone();
        }
        let org_id = state.next_org_id;
        state.next_org_id += 1;
        let handle = OrgHandle {
            uuid: uuid.to_owned(),
            org_id,
            api_key: format!("{:032x}", fastrand::u128(..)),
            app_key: format!("{:040x}", fastrand::u128(..)),
        };
        state.keys.insert(
            handle.api_key.clone(),
            KeyRecord {
                org: uuid.to_ascii_lowercase(),
                issued_at: SystemTime::now(),
                managed: false,
                revoked: false,
                expires_at: None,
            },
        );
        state.orgs.insert(
            uuid.to_ascii_lowercase(),
            Org {
                handle: handle.clone(),
                intake: Vec::new(),
                persona: Vec::new(),
                issued: Vec::new(),
                tokens: Vec::new(),
            },
        );
        handle
    }

    /// Unregisters an org; whether it existed. Its keys stop validating and its tokens are
    /// refused (`unknown org`); its issued keys and tokens are no longer listed.
    pub fn remove_org(&self, uuid: &str) -> bool {
        self.shared
            .lock()
            .orgs
            .remove(&uuid.to_ascii_lowercase())
            .is_some()
    }

    /// Adds an intake mapping to `org_uuid` and returns its id.
    ///
    /// # Panics
    /// When the org is unknown or the pattern breaks the seed's wildcard rules (a test bug).
    pub fn add_intake_mapping(&self, org_uuid: &str, arn_pattern: &str) -> String {
        if let Err(e) = datadog_delegated_auth::arn_pattern::validate(arn_pattern) {
            panic!("add_intake_mapping: {e}");
        }
        let mut state = self.shared.lock();
        let org = state
            .org_mut(org_uuid)
            .unwrap_or_else(|| panic!("add_intake_mapping: unknown org {org_uuid}"));
        let id = uuid::Uuid::new_v4().to_string();
        org.intake.push(IntakeMapping {
            id: id.clone(),
            arn_pattern: arn_pattern.to_owned(),
        });
        id
    }

    /// Removes an intake mapping; whether it existed.
    pub fn remove_intake_mapping(&self, org_uuid: &str, id: &str) -> bool {
        let mut state = self.shared.lock();
        let Some(org) = state.org_mut(org_uuid) else {
            return false;
        };
        let before = org.intake.len();
        org.intake.retain(|m| m.id != id);
        org.intake.len() != before
    }

    /// The org's intake mappings.
    pub fn intake_mappings(&self, org_uuid: &str) -> Vec<IntakeMapping> {
        self.shared
            .lock()
            .org(org_uuid)
            .map(|o| o.intake.clone())
            .unwrap_or_default()
    }

    /// Adds a persona mapping (`arn_pattern` → the account `account_identifier`) to
    /// `org_uuid` and returns its id. The account's UUID follows the mapping API's rule
    /// ([`PersonaMapping::account_uuid`]): fresh for an identifier new to the org.
    ///
    /// # Panics
    /// When the org is unknown, the pattern breaks the seed's wildcard rules, or the identifier
    /// is blank (a test bug).
    pub fn add_persona_mapping(
        &self,
        org_uuid: &str,
        arn_pattern: &str,
        account_identifier: &str,
    ) -> String {
        if let Err(e) = datadog_delegated_auth::arn_pattern::validate(arn_pattern) {
            panic!("add_persona_mapping: {e}");
        }
        let identifier = account_identifier.trim();
        assert!(
            !identifier.is_empty(),
            "add_persona_mapping: blank account identifier"
        );
        let mut state = self.shared.lock();
        let org = state
            .org_mut(org_uuid)
            .unwrap_or_else(|| panic!("add_persona_mapping: unknown org {org_uuid}"));
        let id = uuid::Uuid::new_v4().to_string();
        let account_uuid = mapping::account_uuid_for(&org.persona, identifier);
        org.persona.push(PersonaMapping {
            id: id.clone(),
            account_identifier: identifier.to_owned(),
            account_uuid,
            arn_pattern: arn_pattern.to_owned(),
        });
        id
    }

    /// The org's persona mappings, in creation (= matching) order.
    pub fn persona_mappings(&self, org_uuid: &str) -> Vec<PersonaMapping> {
        self.shared
            .lock()
            .org(org_uuid)
            .map(|o| o.persona.clone())
            .unwrap_or_default()
    }

    /// Queues a fault for the next intake exchange(s).
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Queues a fault for the next token exchange(s) (a queue apart from [`Self::inject`]'s).
    pub fn inject_token_fault(&self, fault: Fault) {
        self.shared.lock().token_faults.push_back(fault);
    }

    /// Changes the lifetime of tokens minted from now on (rounded down to whole seconds, at
    /// least 1 s). Tokens already minted keep their `exp`.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = token::whole_seconds(lifetime);
    }

    /// Drops every queued fault, of both exchanges.
    pub fn clear_faults(&self) {
        let mut state = self.shared.lock();
        state.faults.clear();
        state.token_faults.clear();
    }

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// The exchanges (`POST /api/v2/intake-key`) of the request log.
    pub fn exchanges(&self) -> Vec<RequestRecord> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_exchange())
            .cloned()
            .collect()
    }

    /// Waits until the request log satisfies `done`, and returns it.
    ///
    /// # Panics
    /// After `timeout`, with the log in the message.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[RequestRecord]) -> bool,
    ) -> Vec<RequestRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.logged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                if done(&state.requests) {
                    return state.requests.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let log = self.requests();
                panic!(
                    "the Datadog emulator's log did not reach the expected state within {timeout:?}; log: {log:#?}"
                );
            }
        }
    }

    /// The token exchanges (`/api/v2/delegated-token`) of the request log.
    pub fn token_exchanges(&self) -> Vec<RequestRecord> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_token_exchange())
            .cloned()
            .collect()
    }

    /// Waits until at least `n` token exchanges were logged, and returns the token exchanges.
    ///
    /// # Panics
    /// After `timeout`.
    pub async fn wait_for_token_exchanges(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<RequestRecord> {
        self.wait_for(timeout, |log| {
            log.iter().filter(|r| r.is_token_exchange()).count() >= n
        })
        .await
        .into_iter()
        .filter(RequestRecord::is_token_exchange)
        .collect()
    }

    /// The delegated tokens minted for `org_uuid`, oldest first (revoked and expired ones
    /// included; see [`Self::token_valid`]).
    pub fn issued_tokens(&self, org_uuid: &str) -> Vec<IssuedToken> {
        let state = self.shared.lock();
        let Some(org) = state.org(org_uuid) else {
            return Vec::new();
        };
        org.tokens
            .iter()
            .filter_map(|t| state.tokens.get(t).map(|r| r.issued.clone()))
            .collect()
    }

    /// Revokes a delegated token at once; whether the emulator minted it.
    pub fn revoke_token(&self, token: &str) -> bool {
        match self.shared.lock().tokens.get_mut(token) {
            Some(record) => {
                record.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Whether `token` would be accepted as a bearer now.
    pub fn token_valid(&self, token: &str) -> bool {
        token::authenticate(&self.shared, token).is_ok()
    }

    /// The account identifier of a currently valid token.
    pub fn token_account(&self, token: &str) -> Option<String> {
        token::authenticate(&self.shared, token)
            .ok()
            .map(|c| c.account)
    }

    /// The events posted to `/api/v1/events`, oldest first.
    pub fn events(&self) -> Vec<PostedEvent> {
        self.shared.lock().events.clone()
    }

    /// Waits until at least `n` exchanges were logged, and returns the exchanges.
    ///
    /// # Panics
    /// After `timeout`.
    pub async fn wait_for_exchanges(&self, n: usize, timeout: Duration) -> Vec<RequestRecord> {
        self.wait_for(timeout, |log| {
            log.iter().filter(|r| r.is_exchange()).count() >= n
        })
        .await
        .into_iter()
        .filter(RequestRecord::is_exchange)
        .collect()
    }

    /// The managed keys issued to `org_uuid`, oldest first.
    pub fn issued_keys(&self, org_uuid: &str) -> Vec<IssuedKey> {
        let state = self.shared.lock();
        let Some(org) = state.org(org_uuid) else {
            return Vec::new();
        };
        let now = Instant::now();
        org.issued
            .iter()
            .filter_map(|key| {
                let record = state.keys.get(key)?;
                let key_state = if !record.valid(now) {
                    KeyState::Revoked
                } else if let Some(until) = record.expires_at {
                    KeyState::Overlap { until }
                } else {
                    KeyState::Current
                };
                Some(IssuedKey {
                    key: key.clone(),
                    org_uuid: org.handle.uuid.clone(),
                    issued_at: record.issued_at,
                    state: key_state,
                })
            })
            .collect()
    }

    /// Revokes a key (managed or an org's API key) at once; whether it existed.
    pub fn revoke(&self, key: &str) -> bool {
        match self.shared.lock().keys.get_mut(key) {
            Some(record) => {
                record.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Whether `key` validates now.
    pub fn is_valid(&self, key: &str) -> bool {
        self.key_org(key).is_some()
    }

    /// The org UUID of a currently valid key.
    pub fn key_org(&self, key: &str) -> Option<String> {
        let state = self.shared.lock();
        let org = state.key_org(key)?;
        state.org(&org).map(|o| o.handle.uuid.clone())
    }

    /// Whether `key` is a managed (exchanged) key rather than an org's static API key.
    pub fn is_managed(&self, key: &str) -> bool {
        self.shared.lock().keys.get(key).is_some_and(|k| k.managed)
    }

    /// Moves the emulator's clock (used only to judge `X-Amz-Date`) by `seconds` (negative:
    /// behind), to simulate a skewed host.
    pub fn set_clock_offset(&self, seconds: i64) {
        self.shared.lock().clock_offset_secs = seconds;
    }

    /// Changes the overlap given to keys superseded from now on.
    pub fn set_key_overlap(&self, overlap: Duration) {
        self.shared.lock().key_overlap = overlap;
    }
}

impl Drop for DatadogEmulator {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not make every later call panic too.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> SystemTime {
        let offset = self.lock().clock_offset_secs;
        let magnitude = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() + magnitude
        } else {
            SystemTime::now() - magnitude
        }
    }

    fn record(&self, record: RequestRecord) {
        self.lock().requests.push(record);
        self.logged.notify_waiters();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set so that aborting the accept task (on drop) ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        handle(Arc::clone(&shared), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Returned by a handler to make hyper drop the connection without an answer.
#[derive(Debug)]
struct Disconnect;

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Disconnect {}

/// What a handler decided, before it is logged and sent.
struct Answer {
    response: Response<Body>,
    org: Option<String>,
    outcome: Outcome,
    detail: Option<String>,
    caller_arn: Option<String>,
    issued_key: Option<String>,
    issued_token: Option<String>,
    account: Option<String>,
    proof: Option<String>,
}

impl Answer {
    fn new(response: Response<Body>, outcome: Outcome) -> Self {
        Answer {
            response,
            org: None,
            outcome,
            detail: None,
            caller_arn: None,
            issued_key: None,
            issued_token: None,
            account: None,
            proof: None,
        }
    }

    fn org(mut self, org: Option<String>) -> Self {
        self.org = org;
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Disconnect> {
    let at = SystemTime::now();
    let instant = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let answer = Answer::new(
                error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request body too large.",
                    None,
                ),
                Outcome::BadRequest,
            );
            return Ok(finish(
                &shared,
                at,
                instant,
                &parts.method,
                parts.uri.path(),
                answer,
            ));
        }
    };
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    if path == INTAKE_KEY_PATH {
        let kind = ExchangeKind::IntakeKey;
        return exchange(&shared, at, instant, &method, &parts.headers, kind).await;
    }
    if path == DELEGATED_TOKEN_PATH {
        let kind = ExchangeKind::DelegatedToken;
        return exchange(&shared, at, instant, &method, &parts.headers, kind).await;
    }
    let answer = if path == VALIDATE_PATH {
        validate(&shared, &method, &parts.headers)
    } else if path == CURRENT_USER_PATH {
        token::current_user(&shared, &method, &parts.headers)
    } else if path == EVENTS_PATH {
        token::post_event(&shared, &method, &parts.headers, &body)
    } else if let Some(answer) = mapping::handle(&shared, &method, &path, &parts.headers, &body) {
        answer
    } else {
        Answer::new(
            json_response(StatusCode::NOT_FOUND, &json!({"errors": ["Not found"]})),
            Outcome::NotFound,
        )
    };
    Ok(finish(&shared, at, instant, &method, &path, answer))
}

/// Logs the answer and returns its response.
fn finish(
    shared: &Shared,
    at: SystemTime,
    instant: Instant,
    method: &Method,
    path: &str,
    answer: Answer,
) -> Response<Body> {
    shared.record(RequestRecord {
        at,
        instant,
        method: method.to_string(),
        path: path.to_owned(),
        org: answer.org,
        status: answer.response.status().as_u16(),
        outcome: answer.outcome,
        detail: answer.detail,
        caller_arn: answer.caller_arn,
        issued_key: answer.issued_key,
        issued_token: answer.issued_token,
        account: answer.account,
        proof: answer.proof,
    });
    answer.response
}

/// Which exchange a request reached. Both verify the proof with the same code (so they refuse
/// the same proofs with the same answers); they differ in the mappings they match, what they
/// issue, and their fault queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExchangeKind {
    /// `POST /api/v2/intake-key`: intake mappings, a managed API key.
    IntakeKey,
    /// `POST /api/v2/delegated-token`: persona mappings, a JWT.
    DelegatedToken,
}

impl ExchangeKind {
    fn path(self) -> &'static str {
        match self {
            ExchangeKind::IntakeKey => INTAKE_KEY_PATH,
            ExchangeKind::DelegatedToken => DELEGATED_TOKEN_PATH,
        }
    }
}

/// What a token exchange reports as `expires` (only [`Fault`]s change it).
#[derive(Clone, Debug, PartialEq, Eq)]
enum ReportedExpiry {
    /// The token's `exp`.
    Exp,
    /// No `expires` attribute.
    Omitted,
    /// This exact string.
    Value(String),
}

async fn exchange(
    shared: &Shared,
    at: SystemTime,
    instant: Instant,
    method: &Method,
    headers: &HeaderMap,
    kind: ExchangeKind,
) -> Result<Response<Body>, Disconnect> {
    let path = kind.path();
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let org_hint = proof::org_hint(&authorization);
    if method != Method::POST {
        let answer = Answer::new(
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "Use POST to exchange a proof.",
                None,
            ),
            Outcome::MethodNotAllowed,
        )
        .org(org_hint);
        return Ok(finish(shared, at, instant, method, path, answer));
    }
    let (fault, token_expires) = {
        let mut state = shared.lock();
        let expires = token::expiry_from_now(state.token_lifetime);
        (state.take_fault(kind), expires)
    };
    let delay = fault.as_ref().map_or(Duration::ZERO, |f| f.delay);
    let reported = |r: ReportedExpiry| match kind {
        // The token-only faults change nothing on the intake exchange.
        ExchangeKind::IntakeKey => ReportedExpiry::Exp,
        ExchangeKind::DelegatedToken => r,
    };
    let answer = match fault.map(|f| f.kind) {
        None | Some(FaultKind::Delay) => {
            verify_and_issue(shared, &authorization, kind, ReportedExpiry::Exp).await
        }
        Some(FaultKind::TokenWithoutExpiry) => {
            let expiry = reported(ReportedExpiry::Omitted);
            verify_and_issue(shared, &authorization, kind, expiry).await
        }
        Some(FaultKind::TokenExpires(value)) => {
            let expiry = reported(ReportedExpiry::Value(value));
            verify_and_issue(shared, &authorization, kind, expiry).await
        }
        Some(FaultKind::Disconnect) => {
            shared.record(RequestRecord {
                at,
                instant,
                method: method.to_string(),
                path: path.to_owned(),
                org: org_hint,
                status: 0,
                outcome: Outcome::Disconnected,
                detail: None,
                caller_arn: None,
                issued_key: None,
                issued_token: None,
                account: None,
                proof: delegated_proof(&authorization),
            });
            tokio::time::sleep(delay).await;
            return Err(Disconnect);
        }
        Some(fault) => fault_answer(fault, kind, token_expires).org(org_hint),
    };
    let answer = Answer {
        proof: delegated_proof(&authorization),
        ..answer
    };
    let response = finish(shared, at, instant, method, path, answer);
    tokio::time::sleep(delay).await;
    Ok(response)
}

/// The proof of an `Authorization: Delegated <proof>` value.
fn delegated_proof(authorization: &str) -> Option<String> {
    authorization
        .strip_prefix("Delegated ")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
}

/// The answer of an injected fault, shaped like the answer of `exchange` (a token answer
/// reports `token_expires` where it has an `expires`).
fn fault_answer(kind: FaultKind, exchange: ExchangeKind, token_expires: u64) -> Answer {
    let token = exchange == ExchangeKind::DelegatedToken;
    let response = match kind {
        FaultKind::Status {
            status,
            retry_after,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = match body {
                Some(body) => raw_response(status, Bytes::from(body)),
                None => error_response(status, "Injected by the sandbox.", None),
            };
            if let Some(value) = retry_after.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, value);
            }
            response
        }
        FaultKind::Malformed if token => raw_response(
            StatusCode::OK,
            Bytes::from_static(
                br#"{"data":{"type":"delegated_token","attributes":{"access_token":"#,
            ),
        ),
        FaultKind::Malformed => raw_response(
            StatusCode::OK,
            Bytes::from_static(br#"{"data":{"attributes":{"api_key":"#),
        ),
        FaultKind::EmptyKey if token => {
            json_response(StatusCode::OK, &token::token_body("", Some(token_expires)))
        }
        FaultKind::EmptyKey => json_response(
            StatusCode::OK,
            &json!({"data": {"type": "intake_api_key", "attributes": {"api_key": ""}}}),
        ),
        FaultKind::Oversized { bytes, chunked } => {
            let head = if token {
                // A well-formed answer whose token is not one the emulator signed.
                let mut body = token::token_body(token::UNSIGNED_TOKEN, Some(token_expires));
                body["padding"] = json!("");
                let mut head = body.to_string().into_bytes();
                head.truncate(head.len() - 2); // `"}`: the padding string stays open.
                head
            } else {
                br#"{"data":{"attributes":{"api_key":"0123456789abcdef0123456789abcdef"}},"padding":""#.to_vec()
            };
            let mut body = Vec::with_capacity(bytes);
            body.extend_from_slice(&head);
            body.resize(bytes - 2, b'x');
            body.extend_from_slice(b"\"}");
            if chunked {
                let mut response = Response::new(ChunkedBody::new(Bytes::from(body)).boxed());
                *response.status_mut() = StatusCode::OK;
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            } else {
                raw_response(StatusCode::OK, Bytes::from(body))
            }
        }
        FaultKind::Delay
        | FaultKind::Disconnect
        | FaultKind::TokenWithoutExpiry
        | FaultKind::TokenExpires(_) => unreachable!("handled by the caller"),
    };
    let detail = format!("injected {}", response.status().as_u16());
    Answer::new(response, Outcome::Fault).detail(detail)
}

/// The real work of an exchange: the proof checks both share, then what `kind` issues.
async fn verify_and_issue(
    shared: &Shared,
    authorization: &str,
    kind: ExchangeKind,
    expiry: ReportedExpiry,
) -> Answer {
    let verified = match verify_proof(shared, authorization).await {
        Ok(verified) => verified,
        Err(answer) => return *answer,
    };
    match kind {
        ExchangeKind::IntakeKey => issue_key(shared, verified),
        ExchangeKind::DelegatedToken => token::issue(shared, verified, expiry),
    }
}

/// Who a proof proved its signer to be.
struct Verified {
    /// The org the proof is bound to, as sent.
    org: String,
    /// The caller ARN STS answered.
    arn: String,
}

/// Local proof checks and the STS replay: the identity of the signer, or the error answer
/// (401 without `Delegated`, 403 bad proof or STS refusal, 502/503 STS unavailable).
async fn verify_proof(shared: &Shared, authorization: &str) -> Result<Verified, Box<Answer>> {
    let now = shared.now();
    let checked = {
        let state = shared.lock();
        proof::check_proof(authorization, now, shared.max_clock_skew, |org| {
            state.org(org).is_some()
        })
    };
    let checked = match checked {
        Ok(checked) => checked,
        Err(e) => {
            let (status, outcome) = match e {
                ProofError::MissingScheme => (StatusCode::UNAUTHORIZED, Outcome::Unauthenticated),
                _ => (StatusCode::FORBIDDEN, Outcome::BadProof),
            };
            let detail = e.to_string();
            return Err(Box::new(
                Answer::new(error_response(status, &detail, None), outcome)
                    .org(proof::org_hint(authorization))
                    .detail(detail),
            ));
        }
    };
    let org = Some(checked.org.clone());
    let Some(sts) = &shared.sts else {
        let detail = "The sandbox has no STS endpoint configured (DatadogOptions::sts_url), so it cannot verify proofs.";
        return Err(Box::new(
            Answer::new(
                error_response(StatusCode::SERVICE_UNAVAILABLE, detail, None),
                Outcome::StsUnavailable,
            )
            .org(org)
            .detail(detail),
        ));
    };
    let caller = match sts.replay(&checked).await {
        Ok(caller) => caller,
        Err(e) => {
            let (status, outcome) = match e {
                StsError::Rejected { .. } | StsError::BadHeader(_) => {
                    (StatusCode::FORBIDDEN, Outcome::StsRejected)
                }
                StsError::Unreachable(_) | StsError::BadAnswer(_) => {
                    (StatusCode::BAD_GATEWAY, Outcome::StsUnavailable)
                }
            };
            let detail = e.to_string();
            return Err(Box::new(
                Answer::new(error_response(status, &detail, None), outcome)
                    .org(org)
                    .detail(detail),
            ));
        }
    };
    Ok(Verified {
        org: checked.org,
        arn: caller.arn,
    })
}

/// The answer when the proof's org was removed while STS answered: as an unknown org.
fn org_gone(org: &str) -> Answer {
    let detail = ProofError::UnknownOrg(org.to_owned()).to_string();
    Answer::new(
        error_response(StatusCode::FORBIDDEN, &detail, None),
        Outcome::BadProof,
    )
    .org(Some(org.to_owned()))
    .detail(detail)
}

/// The 401 for a verified caller no mapping of the org covers (`kind`: `identity` or
/// `persona`, as the real API words it).
fn unmapped(verified: Verified, kind: &str) -> Answer {
    let detail = format!(
        "Authenticated as {} but no {kind} mapping was found.",
        verified.arn
    );
    let mut answer = Answer::new(
        error_response(StatusCode::UNAUTHORIZED, &detail, None),
        Outcome::Unmapped,
    )
    .org(Some(verified.org))
    .detail(detail);
    answer.caller_arn = Some(verified.arn);
    answer
}

/// The intake exchange's issue: the first intake mapping covering the caller earns a new key.
fn issue_key(shared: &Shared, verified: Verified) -> Answer {
    let mut state = shared.lock();
    let Some(org_entry) = state.org(&verified.org) else {
        return org_gone(&verified.org);
    };
    let org_id = org_entry.handle.org_id;
    let mapped = org_entry
        .intake
        .iter()
        .any(|m| datadog_delegated_auth::arn_pattern::matches(&m.arn_pattern, &verified.arn));
    if !mapped {
        return unmapped(verified, "identity");
    }
    let key = state.mint(&verified.org);
    drop(state);
    let body = json!({
        "data": {
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "intake_api_key",
            "attributes": {"api_key": key, "org_id": org_id},
        }
    });
    let mut answer =
        Answer::new(json_response(StatusCode::OK, &body), Outcome::Issued).org(Some(verified.org));
    answer.caller_arn = Some(verified.arn);
    answer.issued_key = Some(key);
    answer
}

fn validate(shared: &Shared, method: &Method, headers: &HeaderMap) -> Answer {
    if method != Method::GET {
        return Answer::new(
            error_response(StatusCode::METHOD_NOT_ALLOWED, "Use GET.", None),
            Outcome::MethodNotAllowed,
        );
    }
    if let Some(bearer) = token::bearer(headers) {
        return token::validate_bearer(shared, bearer);
    }
    let key = headers
        .get("dd-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let org = {
        let state = shared.lock();
        state
            .key_org(key)
            .and_then(|o| state.org(&o).map(|o| o.handle.uuid.clone()))
    };
    match org {
        Some(org) => {
            let mut response = json_response(StatusCode::OK, &json!({"valid": true}));
            if let Ok(value) = http::HeaderValue::from_str(&org) {
                response.headers_mut().insert("x-sandbox-org-uuid", value);
            }
            Answer::new(response, Outcome::Valid).org(Some(org))
        }
        None => Answer::new(
            json_response(StatusCode::FORBIDDEN, &json!({"errors": ["Forbidden"]})),
            Outcome::Invalid,
        ),
    }
}

/// A JSON:API error envelope: `{"errors":[{"status","title","detail"[,"source"]}]}`.
fn error_response(status: StatusCode, detail: &str, pointer: Option<&str>) -> Response<Body> {
    let mut error = json!({
        "status": status.as_u16().to_string(),
        "title": status.canonical_reason().unwrap_or("Error"),
        "detail": detail,
    });
    if let Some(pointer) = pointer {
        error["source"] = json!({ "pointer": pointer });
    }
    json_response(status, &json!({ "errors": [error] }))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    raw_response(status, Bytes::from(value.to_string()))
}

fn raw_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = status;
    response
}

/// A body sent in 16 KiB chunks with no length announced (chunked transfer encoding).
struct ChunkedBody {
    rest: Bytes,
}

impl ChunkedBody {
    const CHUNK: usize = 16 * 1024;

    fn new(body: Bytes) -> Self {
        ChunkedBody { rest: body }
    }
}

impl HttpBody for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(Self::CHUNK);
        let chunk = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_apply_in_order_and_count_down() {
        let mut state = test_state();
        state.faults.push_back(Fault::status(503).times(2));
        state.faults.push_back(Fault::malformed_body());
        state.token_faults.push_back(Fault::token_without_expiry());
        let kinds: Vec<String> = std::iter::from_fn(|| state.take_fault(ExchangeKind::IntakeKey))
            .map(|f| format!("{:?}", f.kind))
            .collect();
        assert_eq!(kinds.len(), 3);
        assert!(kinds[0].starts_with("Status") && kinds[1].starts_with("Status"));
        assert_eq!(kinds[2], "Malformed");
        let token = state.take_fault(ExchangeKind::DelegatedToken).unwrap();
        assert!(matches!(token.kind, FaultKind::TokenWithoutExpiry));
        assert!(state.take_fault(ExchangeKind::DelegatedToken).is_none());
    }

    #[test]
    fn oversized_token_answers_stay_json() {
        let answer = fault_answer(
            FaultKind::Oversized {
                bytes: 4096,
                chunked: false,
            },
            ExchangeKind::DelegatedToken,
            1_234,
        );
        let body = futures_body(answer.response);
        assert_eq!(body.len(), 4096);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["data"]["type"], "delegated_token");
        assert_eq!(value["data"]["attributes"]["expires"], "1234");
    }

    /// The bytes of a (non-streaming) response body.
    fn futures_body(response: Response<Body>) -> Bytes {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(response.into_body().collect())
            .unwrap()
            .to_bytes()
    }

    fn test_state() -> State {
        State {
            orgs: BTreeMap::new(),
            keys: HashMap::new(),
            faults: VecDeque::new(),
            token_faults: VecDeque::new(),
            requests: Vec::new(),
            clock_offset_secs: 0,
            key_overlap: Duration::ZERO,
            next_org_id: 1,
            tokens: HashMap::new(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            events: Vec::new(),
        }
    }

    #[test]
    fn minting_starts_the_overlap_of_older_keys() {
        let mut state = State {
            key_overlap: Duration::from_secs(3600),
            ..test_state()
        };
        state.orgs.insert(
            "o".into(),
            Org {
                handle: OrgHandle {
                    uuid: "o".into(),
                    org_id: 1,
                    api_key: String::new(),
                    app_key: String::new(),
                },
                intake: Vec::new(),
                persona: Vec::new(),
                issued: Vec::new(),
                tokens: Vec::new(),
            },
        );
        let first = state.mint("o");
        assert_eq!(first.len(), 32);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(state.keys[&first].expires_at.is_none());
        let second = state.mint("O");
        assert_ne!(first, second);
        assert!(state.keys[&first].expires_at.is_some());
        assert!(state.key_org(&first).is_some(), "still in its overlap");
        state.key_overlap = Duration::ZERO;
        let third = state.mint("o");
        assert!(
            state.key_org(&second).is_none(),
            "zero overlap revokes at once"
        );
        assert!(
            state.key_org(&first).is_some(),
            "its own overlap is unchanged"
        );
        assert_eq!(state.key_org(&third).as_deref(), Some("o"));
    }
}

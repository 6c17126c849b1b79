//! An EC2 instance metadata service (IMDS) emulator.
//!
//! moto's built-in IMDS cannot serve aws-config (its token response lacks the TTL header and it
//! wants Host 169.254.169.254), hence this one. It implements what the daemon uses:
//! - `PUT /latest/api/token` (IMDSv2): requires `x-aws-ec2-metadata-token-ttl-seconds`
//!   (1–21600) and answers with a token and the same TTL header, which aws-config requires;
//!   [`TokenMode::NeverAnswer`] holds the request open forever, which is what a container behind
//!   the default hop limit of 1 observes;
//! - GETs with `x-aws-ec2-metadata-token`, or without one when IMDSv1 is allowed (401 otherwise);
//! - `/latest/meta-data/iam/security-credentials/[role]` with swappable credentials (rotation);
//! - `/latest/dynamic/instance-identity/document` and `/latest/meta-data/placement/region`.
//!
//! Every request is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::SandboxError;
use crate::http::{HttpServer, RecordedRequest, credentials_json, json, text};
use crate::moto::{ACCOUNT_ID, StaticCreds};

/// The token TTL header of IMDSv2.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The token header of IMDSv2 GETs.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The instance id the identity document reports.
pub const INSTANCE_ID: &str = "i-0123456789abcdef0";

/// How the emulator answers the IMDSv2 token PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// Normal IMDSv2.
    Answer,
    /// Accept the connection and never answer (the hop-limit symptom).
    NeverAnswer,
    /// 403, as when IMDS is disabled on the instance.
    Forbidden,
}

/// Start-up settings.
#[derive(Debug, Clone)]
pub struct ImdsOptions {
    /// Whether token-less (IMDSv1) GETs are answered.
    pub allow_v1: bool,
    /// How the token PUT is answered.
    pub token_mode: TokenMode,
    /// The instance's region (identity document and placement).
    pub region: String,
    /// The instance profile's role name; `None` is an instance without a role (404).
    pub role: Option<String>,
    /// The role credentials served.
    pub credentials: Option<StaticCreds>,
    /// How long served credentials are said to be valid.
    pub credential_ttl: Duration,
}

impl Default for ImdsOptions {
    fn default() -> Self {
        ImdsOptions {
            allow_v1: false,
            token_mode: TokenMode::Answer,
            region: "us-east-1".into(),
            role: Some(crate::moto::DEFAULT_ROLE.into()),
            credentials: None,
            credential_ttl: Duration::from_secs(3600),
        }
    }
}

struct State {
    options: ImdsOptions,
    /// Added before every answer ([`ImdsEmulator::set_latency`]).
    latency: Duration,
    expiration: SystemTime,
    tokens: HashMap<String, SystemTime>,
    requests: Vec<RecordedRequest>,
}

/// A running IMDS emulator. Stops when dropped.
pub struct ImdsEmulator {
    server: HttpServer,
    state: Arc<Mutex<State>>,
}

impl ImdsEmulator {
    /// Starts on a free loopback port.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when binding fails.
    pub async fn start(options: ImdsOptions) -> Result<ImdsEmulator, SandboxError> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), options).await
    }

    /// Starts on `addr` (the netns test binds 169.254.169.254:80).
    ///
    /// # Errors
    /// [`SandboxError::Io`] when binding fails.
    pub async fn start_on(
        addr: SocketAddr,
        options: ImdsOptions,
    ) -> Result<ImdsEmulator, SandboxError> {
        let state = Arc::new(Mutex::new(State {
            expiration: SystemTime::now() + options.credential_ttl,
            options,
            latency: Duration::ZERO,
            tokens: HashMap::new(),
            requests: Vec::new(),
        }));
        let handler_state = Arc::clone(&state);
        let server = HttpServer::spawn(addr, move |request| {
            let state = Arc::clone(&handler_state);
            async move { handle(&state, request).await }
        })
        .await?;
        Ok(ImdsEmulator { server, state })
    }

    /// `http://IP:PORT` (what `AWS_EC2_METADATA_SERVICE_ENDPOINT` takes).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Serves new credentials from now on (credential rotation), valid for the configured TTL.
    pub fn set_credentials(&self, credentials: StaticCreds) {
        let mut state = lock(&self.state);
        state.expiration = SystemTime::now() + state.options.credential_ttl;
        state.options.credentials = Some(credentials);
    }

    /// Serves credentials with an explicit expiration.
    pub fn set_credentials_expiring(&self, credentials: StaticCreds, expiration: SystemTime) {
        let mut state = lock(&self.state);
        state.expiration = expiration;
        state.options.credentials = Some(credentials);
    }

    /// Changes how the token PUT is answered.
    pub fn set_token_mode(&self, mode: TokenMode) {
        lock(&self.state).options.token_mode = mode;
    }

    /// Answers every request only after `latency` (a slow or overloaded metadata service).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panicking test thread must not make every later request panic too.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn handle(state: &Mutex<State>, request: Request<Bytes>) -> Response<Full<Bytes>> {
    let (mode, latency) = {
        let mut guard = lock(state);
        guard.requests.push(RecordedRequest::of(&request));
        (guard.options.token_mode, guard.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = request.uri().path().to_owned();
    if path == "/latest/api/token" {
        if request.method() != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        return match mode {
            TokenMode::Answer => issue_token(state, &request),
            TokenMode::Forbidden => text(StatusCode::FORBIDDEN, "Forbidden"),
            TokenMode::NeverAnswer => std::future::pending().await,
        };
    }
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let guard = lock(state);
    match request
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(token) => match guard.tokens.get(token) {
            Some(expiry) if *expiry > SystemTime::now() => {}
            _ => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        },
        None if guard.options.allow_v1 => {}
        None => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
    }
    let options = &guard.options;
    let credentials_prefix = "/latest/meta-data/iam/security-credentials/";
    match path.as_str() {
        "/latest/dynamic/instance-identity/document"
        | "/latest/dynamic/instance-identity/document/" => json(
            StatusCode::OK,
            &serde_json::json!({
                "accountId": ACCOUNT_ID,
                "architecture": "x86_64",
                "availabilityZone": format!("{}a", options.region),
                "imageId": "ami-0123456789abcdef0",
                "instanceId": INSTANCE_ID,
                "instanceType": "t3.micro",
                "pendingTime": "2026-01-01T00:00:00Z",
                "privateIp": "10.0.0.10",
                "region": options.region,
                "version": "2017-09-30",
            }),
        ),
        "/latest/meta-data/placement/region" => text(StatusCode::OK, options.region.clone()),
        p if p == credentials_prefix => match (&options.role, &options.credentials) {
            (Some(role), Some(_)) => text(StatusCode::OK, role.clone()),
            _ => text(StatusCode::NOT_FOUND, "Not Found"),
        },
        p if p.starts_with(credentials_prefix) => {
            let asked = &p[credentials_prefix.len()..];
            match (&options.role, &options.credentials) {
                (Some(role), Some(creds)) if role == asked => {
                    json(StatusCode::OK, &credentials_json(creds, guard.expiration))
                }
                _ => text(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn issue_token(state: &Mutex<State>, request: &Request<Bytes>) -> Response<Full<Bytes>> {
    let ttl = request
        .headers()
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21_600).contains(t)) else {
        return text(StatusCode::BAD_REQUEST, "Bad Request");
    };
    let token = format!("AQAEA{}==", uuid::Uuid::new_v4().simple());
    lock(state)
        .tokens
        .insert(token.clone(), SystemTime::now() + Duration::from_secs(ttl));
    let mut response = text(StatusCode::OK, token);
    if let Ok(value) = http::HeaderValue::from_str(&ttl.to_string()) {
        response.headers_mut().insert(TTL_HEADER, value);
    }
    response
}

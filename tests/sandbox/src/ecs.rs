//! An ECS container-credentials and task-metadata (v4) emulator.
//!
//! - `GET /v2/credentials/<id>`: the task role's credentials, the path an ECS agent puts in
//!   `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (relative to 169.254.170.2). With an authorization
//!   token configured, the `Authorization` header must carry it exactly (401 otherwise); the
//!   [`EcsEmulator::set_unauthorized`] mode answers 401 to everything.
//! - `GET /v4/<id>/task` and `GET /v4/<id>`: task and container metadata, the documents behind
//!   `ECS_CONTAINER_METADATA_URI_V4`, with the region in `TaskARN` and `AvailabilityZone`.
//!
//! Reachable three ways: [`EcsEmulator::full_uri`] (loopback, for
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI`), [`EcsEmulator::relative_uri`] when bound on
//! 169.254.170.2:80 (netns test), and [`EcsEmulator::metadata_uri_v4`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::SandboxError;
use crate::http::{HttpServer, RecordedRequest, credentials_json, json, text};
use crate::moto::{ACCOUNT_ID, StaticCreds};

/// Start-up settings.
#[derive(Debug, Clone)]
pub struct EcsOptions {
    /// Required `Authorization` value; `None` accepts requests without one (classic ECS).
    pub auth_token: Option<String>,
    /// The task's region (task ARN and availability zone).
    pub region: String,
    /// The credentials served.
    pub credentials: Option<StaticCreds>,
    /// How long served credentials are said to be valid.
    pub credential_ttl: Duration,
}

impl Default for EcsOptions {
    fn default() -> Self {
        EcsOptions {
            auth_token: None,
            region: "us-east-1".into(),
            credentials: None,
            credential_ttl: Duration::from_secs(3600),
        }
    }
}

struct State {
    options: EcsOptions,
    unauthorized: bool,
    expiration: SystemTime,
    requests: Vec<RecordedRequest>,
}

/// A running ECS emulator. Stops when dropped.
pub struct EcsEmulator {
    server: HttpServer,
    state: Arc<Mutex<State>>,
    credentials_id: String,
    metadata_id: String,
}

impl EcsEmulator {
    /// Starts on a free loopback port.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when binding fails.
    pub async fn start(options: EcsOptions) -> Result<EcsEmulator, SandboxError> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), options).await
    }

    /// Starts on `addr` (the netns test binds 169.254.170.2:80).
    ///
    /// # Errors
    /// [`SandboxError::Io`] when binding fails.
    pub async fn start_on(
        addr: SocketAddr,
        options: EcsOptions,
    ) -> Result<EcsEmulator, SandboxError> {
        let credentials_id = uuid::Uuid::new_v4().to_string();
        let metadata_id = format!("{}-1234567890", uuid::Uuid::new_v4().simple());
        let state = Arc::new(Mutex::new(State {
            expiration: SystemTime::now() + options.credential_ttl,
            options,
            unauthorized: false,
            requests: Vec::new(),
        }));
        let (handler_state, cred_path, meta_prefix) = (
            Arc::clone(&state),
            format!("/v2/credentials/{credentials_id}"),
            format!("/v4/{metadata_id}"),
        );
        let server = HttpServer::spawn(addr, move |request| {
            let state = Arc::clone(&handler_state);
            let (cred_path, meta_prefix) = (cred_path.clone(), meta_prefix.clone());
            async move { handle(&state, &cred_path, &meta_prefix, &request) }
        })
        .await?;
        Ok(EcsEmulator {
            server,
            state,
            credentials_id,
            metadata_id,
        })
    }

    /// `http://IP:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The credentials path (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`).
    pub fn relative_uri(&self) -> String {
        format!("/v2/credentials/{}", self.credentials_id)
    }

    /// The credentials URL (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    pub fn full_uri(&self) -> String {
        format!("{}{}", self.url(), self.relative_uri())
    }

    /// The task metadata base (`ECS_CONTAINER_METADATA_URI_V4`).
    pub fn metadata_uri_v4(&self) -> String {
        format!("{}/v4/{}", self.url(), self.metadata_id)
    }

    /// Serves new credentials from now on.
    pub fn set_credentials(&self, credentials: StaticCreds) {
        let mut state = lock(&self.state);
        state.expiration = SystemTime::now() + state.options.credential_ttl;
        state.options.credentials = Some(credentials);
    }

    /// Answers 401 to every credentials request while `on`.
    pub fn set_unauthorized(&self, on: bool) {
        lock(&self.state).unauthorized = on;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn handle(
    state: &Mutex<State>,
    cred_path: &str,
    meta_prefix: &str,
    request: &Request<Bytes>,
) -> Response<Full<Bytes>> {
    let mut guard = lock(state);
    guard.requests.push(RecordedRequest::of(request));
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let path = request.uri().path();
    let region = guard.options.region.clone();
    if path == cred_path {
        let authorized = match &guard.options.auth_token {
            None => true,
            Some(token) => {
                request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    == Some(token.as_bytes())
            }
        };
        if guard.unauthorized || !authorized {
            return json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"code": "AccessDenied", "message": "Unable to authenticate the request"}),
            );
        }
        return match &guard.options.credentials {
            Some(creds) => json(StatusCode::OK, &credentials_json(creds, guard.expiration)),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"code": "NoCredentialsFound", "message": "No task role"}),
            ),
        };
    }
    let task_arn =
        format!("arn:aws:ecs:{region}:{ACCOUNT_ID}:task/sandbox/0123456789abcdef0123456789abcdef");
    if path == format!("{meta_prefix}/task") {
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "Cluster": format!("arn:aws:ecs:{region}:{ACCOUNT_ID}:cluster/sandbox"),
                "TaskARN": task_arn,
                "Family": "datadog-agent",
                "Revision": "1",
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "AvailabilityZone": format!("{region}a"),
                "LaunchType": "FARGATE",
                "Containers": [],
            }),
        );
    }
    if path == meta_prefix {
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "Name": "datadog-delegated-auth",
                "Labels": {"com.amazonaws.ecs.task-arn": task_arn},
            }),
        );
    }
    text(StatusCode::NOT_FOUND, "Not Found")
}

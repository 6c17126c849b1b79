//! An EKS Pod Identity agent emulator.
//!
//! The real agent listens on 169.254.170.23:80 and serves `GET /v1/credentials`; the pod gets
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` pointing at a projected service-account token, which
//! must arrive verbatim in `Authorization`. The credential JSON has the container-credentials shape.
//!
//! The emulator writes its own token file (into a directory the caller chooses, or the system
//! temp directory) so tests can pass the path, and [`PodIdentityEmulator::rotate_token`] replaces
//! it, the way kubelet refreshes projected tokens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::SandboxError;
use crate::http::{HttpServer, RecordedRequest, credentials_json, json, text};
use crate::moto::StaticCreds;

/// The path the agent serves.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";

/// How long served credentials are said to be valid.
const CREDENTIAL_TTL: Duration = Duration::from_secs(3600);

struct State {
    token: String,
    credentials: Option<StaticCreds>,
    expiration: SystemTime,
    requests: Vec<RecordedRequest>,
}

/// A running Pod Identity emulator. Stops (and deletes its token file) when dropped.
pub struct PodIdentityEmulator {
    server: HttpServer,
    state: Arc<Mutex<State>>,
    token_file: PathBuf,
}

impl PodIdentityEmulator {
    /// Starts on a free loopback port, with its token file in the system temp directory.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when binding or writing the token file fails.
    pub async fn start(
        credentials: Option<StaticCreds>,
    ) -> Result<PodIdentityEmulator, SandboxError> {
        Self::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials,
            &std::env::temp_dir(),
        )
        .await
    }

    /// Starts on `addr` (the netns test binds 169.254.170.23:80), writing the token file in `dir`.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when binding or writing the token file fails.
    pub async fn start_on(
        addr: SocketAddr,
        credentials: Option<StaticCreds>,
        dir: &Path,
    ) -> Result<PodIdentityEmulator, SandboxError> {
        let token_file = dir.join(format!(
            "eks-pod-identity-token-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let token = new_token();
        write_token(&token_file, &token)?;
        let state = Arc::new(Mutex::new(State {
            token,
            credentials,
            expiration: SystemTime::now() + CREDENTIAL_TTL,
            requests: Vec::new(),
        }));
        let handler_state = Arc::clone(&state);
        let server = HttpServer::spawn(addr, move |request| {
            let state = Arc::clone(&handler_state);
            async move { handle(&state, &request) }
        })
        .await?;
        Ok(PodIdentityEmulator {
            server,
            state,
            token_file,
        })
    }

    /// `http://IP:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub fn full_uri(&self) -> String {
        format!("{}{CREDENTIALS_PATH}", self.url())
    }

    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// Writes a new token to the file and accepts only it from now on.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when the file cannot be written.
    pub fn rotate_token(&self) -> Result<(), SandboxError> {
        let token = new_token();
        write_token(&self.token_file, &token)?;
        lock(&self.state).token = token;
        Ok(())
    }

    /// Serves new credentials from now on.
    pub fn set_credentials(&self, credentials: StaticCreds) {
        let mut state = lock(&self.state);
        state.expiration = SystemTime::now() + CREDENTIAL_TTL;
        state.credentials = Some(credentials);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }
}

impl Drop for PodIdentityEmulator {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token_file);
    }
}

fn new_token() -> String {
    format!("eyJhbGciOiJSUzI1NiJ9.{}.sig", uuid::Uuid::new_v4().simple())
}

fn write_token(path: &Path, token: &str) -> Result<(), SandboxError> {
    std::fs::write(path, token)
        .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn handle(state: &Mutex<State>, request: &Request<Bytes>) -> Response<Full<Bytes>> {
    let mut guard = lock(state);
    guard.requests.push(RecordedRequest::of(request));
    if request.method() != Method::GET || request.uri().path() != CREDENTIALS_PATH {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if presented != Some(guard.token.as_bytes()) {
        return json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"code": "InvalidToken", "message": "Service account token cannot be empty or invalid"}),
        );
    }
    match &guard.credentials {
        Some(creds) => json(StatusCode::OK, &credentials_json(creds, guard.expiration)),
        None => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"code": "NoAssociation", "message": "No Pod Identity Association for the service account"}),
        ),
    }
}

//! `datadog-delegated-auth mapping`: the Cloud Authentication mapping API (wire spec §8.2, the
//! seed doc's curl examples), so operators can create the intake mapping `doctor` suggests
//! without hand-writing JSON:API bodies.
//!
//! - `mapping list [--persona] [--json]` — `GET <api>/api/v2/cloud_auth/aws/intake_mapping`
//!   (or `persona_mapping`);
//! - `mapping get ID [--persona] [--json]` — `GET …/{id}`;
//! - `mapping create --arn-pattern P` — `POST …/intake_mapping` with
//!   `{"data":{"type":"aws_cloud_auth_intake_mapping","attributes":{"arn_pattern":P}}}`;
//!   `--persona --account-identifier A` posts
//!   `{"data":{"type":"aws_cloud_auth_config","attributes":{"account_identifier":A,"arn_pattern":P}}}`
//!   to `…/persona_mapping`;
//! - `mapping delete ID [--persona]` — `DELETE …/{id}` (204).
//!
//! Authentication is the org's `DD-API-KEY` and `DD-APPLICATION-KEY`, read from the `DD_API_KEY`
//! and `DD_APP_KEY` environment variables only. Never a managed key: a managed key is an intake
//! key, scoped to sending data, and using it to grant identities would be circular. Both keys are
//! [`Secret`]s, sent as sensitive header values, and never printed.
//!
//! The API host is the site's: [`crate::exchange::api_base`] of the Agent's infra endpoint
//! (`dd_url`, else `https://app.<site>`, where `site` honours `DD_SITE`), the same derivation as
//! the exchange. Plain `http://` is refused except to loopback (the emulator), since the keys are
//! credentials. The HTTP client is the exchange's (`proxy.*`, `HTTPS_PROXY`/`NO_PROXY`,
//! `skip_ssl_validation`).
//!
//! ARN patterns are validated locally by the seed's wildcard rules ([`crate::arn_pattern`])
//! before anything is sent: a refused pattern never reaches the network.
//!
//! Exit codes (product §8): 0 done, 1 the API refused or could not be reached, 2 usage (an invalid
//! pattern, a missing key variable, a bad option combination).

use std::io::Write;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::arn_pattern::ArnPattern;
use crate::config::Config;
use crate::exchange::{ExchangeClient, api_base, error_detail};
use crate::net::{CappedReadError, ClientOptions, SchemeRefusal};
use crate::secret::Secret;

/// Environment variable holding the org's API key.
pub const ENV_API_KEY: &str = "DD_API_KEY";
/// Environment variable holding an application key of a user with `cloud_auth_config_read`
/// (and `_write` to create or delete).
pub const ENV_APP_KEY: &str = "DD_APP_KEY";
/// Path of the mapping API under the API base.
pub const MAPPING_PATH: &str = "/api/v2/cloud_auth/aws";
/// JSON:API type of an intake mapping.
pub const INTAKE_TYPE: &str = "aws_cloud_auth_intake_mapping";
/// JSON:API type of a persona mapping.
pub const PERSONA_TYPE: &str = "aws_cloud_auth_config";
/// Bound on one mapping API call. The API answers in well under a second; 30 s is the
/// exchange's own limit and only matters when something in between hangs.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read. A list of a few thousand mappings is well under this.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: the API refused the request or could not be reached.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage (invalid pattern, missing key variable, bad options).
pub const EXIT_USAGE: u8 = 2;

/// `mapping` subcommands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum MappingCommand {
    /// List the org's intake mappings (or persona mappings with --persona).
    List {
        /// Persona mappings (Terraform and API clients → a user or service account) instead of
        /// intake mappings (Agents → the org's intake key).
        #[arg(long)]
        persona: bool,
        /// Print a JSON array of mappings instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one mapping.
    Get {
        /// The mapping id (from `mapping list`).
        id: String,
        /// A persona mapping.
        #[arg(long)]
        persona: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a mapping; the pattern is checked against the wildcard rules before sending.
    Create {
        /// The ARN pattern, e.g. 'arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*'
        /// (a single `*` only at the end, after the role name).
        #[arg(long)]
        arn_pattern: String,
        /// Create a persona mapping (needs --account-identifier).
        #[arg(long, requires = "account_identifier")]
        persona: bool,
        /// The user's email, or the service account's UUID or email (persona mappings only).
        #[arg(long, requires = "persona")]
        account_identifier: Option<String>,
    },
    /// Delete a mapping by id.
    Delete {
        /// The mapping id (from `mapping list`).
        id: String,
        /// A persona mapping.
        #[arg(long)]
        persona: bool,
    },
}

/// Which mapping collection a command addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingKind {
    /// `intake_mapping`: ARN patterns allowed to exchange proofs for the org's intake key.
    Intake,
    /// `persona_mapping`: ARN patterns mapped to a user or service account.
    Persona,
}

impl MappingKind {
    fn from_flag(persona: bool) -> Self {
        if persona {
            MappingKind::Persona
        } else {
            MappingKind::Intake
        }
    }

    /// The collection's path segment.
    pub fn segment(self) -> &'static str {
        match self {
            MappingKind::Intake => "intake_mapping",
            MappingKind::Persona => "persona_mapping",
        }
    }

    /// The JSON:API type of the collection's resources.
    pub fn resource_type(self) -> &'static str {
        match self {
            MappingKind::Intake => INTAKE_TYPE,
            MappingKind::Persona => PERSONA_TYPE,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            MappingKind::Intake => "intake mapping",
            MappingKind::Persona => "persona mapping",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            MappingKind::Intake => "",
            MappingKind::Persona => " --persona",
        }
    }
}

/// One mapping as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mapping {
    /// The mapping id.
    pub id: String,
    /// The JSON:API type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The ARN pattern.
    pub arn_pattern: String,
    /// Persona mappings: the user email or service account the pattern maps to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_identifier: Option<String>,
    /// Persona mappings: the account's UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_uuid: Option<String>,
}

impl Mapping {
    /// Reads one JSON:API resource object; `None` when it lacks an id or a pattern.
    fn from_resource(value: &Value) -> Option<Mapping> {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let attributes = value.get("attributes");
        Some(Mapping {
            id: text(value.get("id"))?,
            kind: text(value.get("type")).unwrap_or_default(),
            arn_pattern: text(attributes.and_then(|a| a.get("arn_pattern")))?,
            account_identifier: text(attributes.and_then(|a| a.get("account_identifier"))),
            account_uuid: text(attributes.and_then(|a| a.get("account_uuid"))),
        })
    }
}

/// Why a mapping command failed. Display is one operator-facing line (or two) saying what
/// happened and what to do; it never contains a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// `DD_API_KEY` or `DD_APP_KEY` is not set.
    #[error(
        "{var} is not set: the mapping API needs the org's API key in DD_API_KEY and an \
         application key in DD_APP_KEY (of a user with the cloud_auth_config_read and \
         cloud_auth_config_write permissions); export both and run the command again"
    )]
    MissingKey {
        /// The variable.
        var: &'static str,
    },
    /// A key variable holds something that cannot be a key (a secret handle, whitespace).
    #[error("{var} {problem}; export the key itself")]
    BadKey {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The pattern breaks the seed's wildcard rules. Nothing was sent.
    #[error("{0} (nothing was sent to Datadog)")]
    InvalidPattern(#[from] crate::arn_pattern::ArnPatternError),
    /// Options that cannot go together (for callers that bypass clap's checks).
    #[error("{0}")]
    Usage(String),
    /// The API URL cannot be used.
    #[error("{0}")]
    Url(String),
    /// The API could not be reached or the answer could not be read.
    #[error(
        "cannot reach the Datadog API at {origin}: {reason}; check network access (and proxy settings) to it"
    )]
    Transport {
        /// `scheme://host[:port]`.
        origin: String,
        /// What failed.
        reason: String,
    },
    /// The API answered with an error status.
    #[error("the Datadog API refused the request: HTTP {status}{}. {fix}", detail.as_deref().map(|d| format!(": {}", d.trim_end_matches('.'))).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's JSON:API `errors[].detail|title` or plain-string errors.
        detail: Option<String>,
        /// What to do about it.
        fix: String,
    },
    /// A success status with a body that is not what the API documents.
    #[error("the Datadog API gave an unexpected answer: {0}")]
    InvalidResponse(String),
}

impl MappingError {
    /// The exit code for this error (product §8).
    pub fn exit_code(&self) -> u8 {
        match self {
            MappingError::MissingKey { .. }
            | MappingError::BadKey { .. }
            | MappingError::InvalidPattern(_)
            | MappingError::Usage(_) => EXIT_USAGE,
            MappingError::Url(_)
            | MappingError::Transport { .. }
            | MappingError::Api { .. }
            | MappingError::InvalidResponse(_) => EXIT_FAILED,
        }
    }
}

/// The org's API and application keys, from the environment.
pub struct ApiKeys {
    api_key: Secret,
    app_key: Secret,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("api_key", &self.api_key)
            .field("app_key", &self.app_key)
            .finish()
    }
}

impl ApiKeys {
    /// Reads `DD_API_KEY` and `DD_APP_KEY` through `env`.
    ///
    /// # Errors
    /// [`MappingError::MissingKey`] or [`MappingError::BadKey`] naming the variable.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<ApiKeys, MappingError> {
        let read = |var: &'static str| -> Result<Secret, MappingError> {
            let value = Secret::new(env(var).unwrap_or_default());
            let text = value.expose();
            if text.trim().is_empty() {
                return Err(MappingError::MissingKey { var });
            }
            if text.trim_start().starts_with("ENC[") {
                return Err(MappingError::BadKey {
                    var,
                    problem: "holds a secret handle (ENC[...]), not a key",
                });
            }
            if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(MappingError::BadKey {
                    var,
                    problem: "contains whitespace or control characters",
                });
            }
            Ok(value)
        };
        Ok(ApiKeys {
            api_key: read(ENV_API_KEY)?,
            app_key: read(ENV_APP_KEY)?,
        })
    }

    /// Keys from values (tests, and callers holding the keys already).
    pub fn new(api_key: Secret, app_key: Secret) -> ApiKeys {
        ApiKeys { api_key, app_key }
    }
}

/// A client of the mapping API of one site.
#[derive(Debug)]
pub struct MappingClient {
    http: reqwest::Client,
    base: Url,
    keys: ApiKeys,
}

impl MappingClient {
    /// A client for the API at `api_base` (`https://api.datadoghq.com`, or a loopback emulator).
    ///
    /// # Errors
    /// [`MappingError::Url`] when the base does not parse or is plain `http://` to a host that is
    /// not loopback.
    pub fn new(
        http: reqwest::Client,
        api_base: &str,
        keys: ApiKeys,
    ) -> Result<MappingClient, MappingError> {
        let base = Url::parse(api_base.trim_end_matches('/')).map_err(|e| {
            MappingError::Url(format!(
                "the API base {api_base:?} is not a URL ({e}); check site and dd_url"
            ))
        })?;
        match crate::net::check_scheme(&base) {
            Ok(()) => {}
            Err(SchemeRefusal::PlainHttp) => {
                return Err(MappingError::Url(format!(
                    "refusing to send the API and application keys to {} over plain http://; \
                     use https:// (check site and dd_url)",
                    base.origin().ascii_serialization()
                )));
            }
            Err(SchemeRefusal::Other(other)) => {
                return Err(MappingError::Url(format!(
                    "the API base {api_base} has scheme {other:?}; only https:// is supported"
                )));
            }
        }
        Ok(MappingClient { http, base, keys })
    }

    /// The API base in use.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Lists the mappings of `kind`.
    ///
    /// # Errors
    /// [`MappingError::Transport`], [`MappingError::Api`] or [`MappingError::InvalidResponse`].
    pub async fn list(&self, kind: MappingKind) -> Result<Vec<Mapping>, MappingError> {
        let body = self.call(Method::GET, kind, None, None).await?;
        let data = body
            .as_ref()
            .and_then(|b| b.get("data"))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                MappingError::InvalidResponse("the list has no `data` array".to_owned())
            })?;
        data.iter()
            .map(|item| {
                Mapping::from_resource(item).ok_or_else(|| {
                    MappingError::InvalidResponse(
                        "a listed mapping has no id or arn_pattern".to_owned(),
                    )
                })
            })
            .collect()
    }

    /// Fetches one mapping.
    ///
    /// # Errors
    /// As [`MappingClient::list`]; 404 for an unknown id.
    pub async fn get(&self, kind: MappingKind, id: &str) -> Result<Mapping, MappingError> {
        let body = self.call(Method::GET, kind, Some(id), None).await?;
        single(body)
    }

    /// Creates a mapping after validating `arn_pattern` locally. `account_identifier` is
    /// required for persona mappings and refused for intake mappings (whose body has exactly
    /// one attribute).
    ///
    /// # Errors
    /// [`MappingError::InvalidPattern`] or [`MappingError::Usage`] before anything is sent;
    /// otherwise as [`MappingClient::list`].
    pub async fn create(
        &self,
        kind: MappingKind,
        arn_pattern: &str,
        account_identifier: Option<&str>,
    ) -> Result<Mapping, MappingError> {
        let body = create_body(kind, arn_pattern, account_identifier)?;
        let answer = self.call(Method::POST, kind, None, Some(body)).await?;
        single(answer)
    }

    /// Deletes a mapping.
    ///
    /// # Errors
    /// As [`MappingClient::list`]; 404 for an unknown id.
    pub async fn delete(&self, kind: MappingKind, id: &str) -> Result<(), MappingError> {
        self.call(Method::DELETE, kind, Some(id), None).await?;
        Ok(())
    }

    /// `<base>/api/v2/cloud_auth/aws/<segment>[/<id>]`, the id percent-encoded as one segment.
    fn url(&self, kind: MappingKind, id: Option<&str>) -> Result<Url, MappingError> {
        let mut url = self.base.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                MappingError::Url(format!("the API base {} cannot have a path", self.base))
            })?;
            segments.pop_if_empty();
            segments.extend(MAPPING_PATH.trim_start_matches('/').split('/'));
            segments.push(kind.segment());
            if let Some(id) = id {
                segments.push(id);
            }
        }
        Ok(url)
    }

    /// Sends one request and returns the parsed body of a 2xx answer (`None` for 204).
    async fn call(
        &self,
        method: Method,
        kind: MappingKind,
        id: Option<&str>,
        body: Option<String>,
    ) -> Result<Option<Value>, MappingError> {
        if let Some(id) = id
            && id.trim().is_empty()
        {
            return Err(MappingError::Usage(
                "the mapping id is empty; take it from `datadog-delegated-auth mapping list`"
                    .to_owned(),
            ));
        }
        let url = self.url(kind, id)?;
        let origin = url.origin().ascii_serialization();
        let mut request = self
            .http
            .request(method.clone(), url)
            .timeout(REQUEST_TIMEOUT)
            .header(ACCEPT, "application/json")
            .header(
                HeaderName::from_static("dd-api-key"),
                sensitive(&self.keys.api_key, ENV_API_KEY)?,
            )
            .header(
                HeaderName::from_static("dd-application-key"),
                sensitive(&self.keys.app_key, ENV_APP_KEY)?,
            );
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        tracing::debug!(%method, %origin, collection = kind.segment(), "Calling the mapping API.");
        let response = request.send().await.map_err(|e| MappingError::Transport {
            origin: origin.clone(),
            reason: crate::exchange::transport_reason(&e, REQUEST_TIMEOUT),
        })?;
        let status = response.status();
        let bytes = read_capped(response)
            .await
            .map_err(|reason| MappingError::Transport {
                origin: origin.clone(),
                reason,
            })?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                MappingError::InvalidResponse(format!(
                    "HTTP {status} with a body that is not JSON ({e})"
                ))
            });
        }
        Err(api_error(status, error_detail(&bytes), kind, id))
    }
}

/// The create body, fields in the seed's order (`type` before `attributes`,
/// `account_identifier` before `arn_pattern`), so the bytes sent are the seed's curl bodies.
#[derive(serde::Serialize)]
struct CreateBody<'a> {
    data: CreateData<'a>,
}

#[derive(serde::Serialize)]
struct CreateData<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    attributes: CreateAttributes<'a>,
}

#[derive(serde::Serialize)]
struct CreateAttributes<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    account_identifier: Option<&'a str>,
    arn_pattern: &'a str,
}

/// The JSON:API create body of the seed's examples (compact JSON), after local validation.
///
/// # Errors
/// [`MappingError::InvalidPattern`] when the pattern breaks the wildcard rules;
/// [`MappingError::Usage`] when `account_identifier` is missing (persona) or given (intake).
pub fn create_body(
    kind: MappingKind,
    arn_pattern: &str,
    account_identifier: Option<&str>,
) -> Result<String, MappingError> {
    let pattern = ArnPattern::parse(arn_pattern)?;
    let account_identifier = match (kind, account_identifier.map(str::trim)) {
        (MappingKind::Intake, None) => None,
        (MappingKind::Intake, Some(_)) => {
            return Err(MappingError::Usage(
                "--account-identifier is for persona mappings (add --persona); an intake mapping \
                 has only an ARN pattern"
                    .to_owned(),
            ));
        }
        (MappingKind::Persona, Some(account)) if !account.is_empty() => Some(account),
        (MappingKind::Persona, _) => {
            return Err(MappingError::Usage(
                "a persona mapping needs --account-identifier: the user's email, or the service \
                 account's UUID or email"
                    .to_owned(),
            ));
        }
    };
    let body = CreateBody {
        data: CreateData {
            kind: kind.resource_type(),
            attributes: CreateAttributes {
                account_identifier,
                arn_pattern: pattern.as_str(),
            },
        },
    };
    serde_json::to_string(&body)
        .map_err(|e| MappingError::Usage(format!("cannot encode the body: {e}")))
}

/// Runs a `mapping` subcommand: output on `out`, errors and notes on `err`; returns the exit
/// code (0 done, 1 API failure, 2 usage).
pub async fn run(
    cmd: &MappingCommand,
    cfg: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match execute(cmd, cfg, env, out, err).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            e.exit_code()
        }
    }
}

async fn execute(
    cmd: &MappingCommand,
    cfg: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), MappingError> {
    // Local checks first: nothing is sent (and no key is needed) for an invalid pattern.
    if let MappingCommand::Create {
        arn_pattern,
        persona,
        account_identifier,
    } = cmd
    {
        create_body(
            MappingKind::from_flag(*persona),
            arn_pattern,
            account_identifier.as_deref(),
        )?;
        for note in pattern_notes(arn_pattern) {
            let _ = writeln!(err, "note: {note}");
        }
    }
    let keys = ApiKeys::from_env(env)?;
    let base = api_base(&cfg.agent.infra_endpoint);
    if !base.matched {
        let _ = writeln!(
            err,
            "note: {} is not a Datadog site; sending the mapping request to it unchanged",
            crate::secret::redact_userinfo(&cfg.agent.infra_endpoint)
        );
    }
    let http =
        ExchangeClient::with_env(&ClientOptions::from_agent(&cfg.agent, REQUEST_TIMEOUT), env)
            .map_err(|e| MappingError::Url(e.to_string()))?;
    let client = MappingClient::new(http.http().clone(), &base.url, keys)?;
    match cmd {
        MappingCommand::List { persona, json } => {
            let kind = MappingKind::from_flag(*persona);
            let mappings = client.list(kind).await?;
            if *json {
                print_json(out, &mappings);
            } else {
                print_table(out, kind, &mappings);
            }
        }
        MappingCommand::Get { id, persona, json } => {
            let mapping = client.get(MappingKind::from_flag(*persona), id).await?;
            if *json {
                print_json(out, &mapping);
            } else {
                print_one(out, &mapping);
            }
        }
        MappingCommand::Create {
            arn_pattern,
            persona,
            account_identifier,
        } => {
            let kind = MappingKind::from_flag(*persona);
            let mapping = client
                .create(kind, arn_pattern, account_identifier.as_deref())
                .await?;
            let _ = writeln!(out, "Created {} {}.", kind.noun(), mapping.id);
            print_one(out, &mapping);
        }
        MappingCommand::Delete { id, persona } => {
            let kind = MappingKind::from_flag(*persona);
            client.delete(kind, id).await?;
            let _ = writeln!(out, "Deleted {} {id}.", kind.noun());
        }
    }
    Ok(())
}

/// Advice about a valid pattern that will not do what an Agent mapping usually needs.
pub fn pattern_notes(arn_pattern: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let Ok(pattern) = ArnPattern::parse(arn_pattern) else {
        return notes;
    };
    let fields: Vec<&str> = pattern.as_str().splitn(6, ':').collect();
    let (service, account, resource) = (fields[2], fields[4], fields[5]);
    let portions: Vec<&str> = resource.split('/').collect();
    match (service, portions.as_slice()) {
        ("iam", ["role", .., role]) => notes.push(format!(
            "STS reports a role's sessions as arn:{}:sts::{account}:assumed-role/<role>/<session>, \
             never as the IAM role ARN, so this pattern matches no caller; you probably want \
             arn:{}:sts::{account}:assumed-role/{}/*",
            fields[1],
            fields[1],
            role.trim_end_matches('*')
        )),
        ("sts", ["assumed-role", role, session]) if !pattern.has_wildcard() => {
            notes.push(format!(
                "this pattern matches only the session {session:?} of role {role}; sessions are \
                 usually per instance or pod (use …/assumed-role/{role}/* to match every session)"
            ));
        }
        ("sts", ["assumed-role", role]) => notes.push(format!(
            "assumed-role ARNs always end with a session name, so this pattern matches no \
             caller; use …/assumed-role/{role}/* to match every session"
        )),
        _ => {}
    }
    notes
}

fn single(body: Option<Value>) -> Result<Mapping, MappingError> {
    body.as_ref()
        .and_then(|b| b.get("data"))
        .and_then(Mapping::from_resource)
        .ok_or_else(|| {
            MappingError::InvalidResponse(
                "the answer has no `data` object with an id and an arn_pattern".to_owned(),
            )
        })
}

fn print_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let _ = writeln!(out, "{text}");
}

fn print_one(out: &mut dyn Write, m: &Mapping) {
    let _ = writeln!(out, "id:                 {}", m.id);
    let _ = writeln!(out, "arn_pattern:        {}", m.arn_pattern);
    if let Some(account) = &m.account_identifier {
        let _ = writeln!(out, "account_identifier: {account}");
    }
    if let Some(uuid) = &m.account_uuid {
        let _ = writeln!(out, "account_uuid:       {uuid}");
    }
}

fn print_table(out: &mut dyn Write, kind: MappingKind, mappings: &[Mapping]) {
    if mappings.is_empty() {
        let _ = writeln!(
            out,
            "No {}s. Create one with: datadog-delegated-auth mapping create{} --arn-pattern '<pattern>'{}",
            kind.noun(),
            kind.flag(),
            if kind == MappingKind::Persona {
                " --account-identifier <email or service account>"
            } else {
                ""
            }
        );
        return;
    }
    let id_width = mappings
        .iter()
        .map(|m| m.id.len())
        .max()
        .unwrap_or(0)
        .max(2);
    match kind {
        MappingKind::Intake => {
            let _ = writeln!(out, "{:id_width$}  ARN PATTERN", "ID");
            for m in mappings {
                let _ = writeln!(out, "{:id_width$}  {}", m.id, m.arn_pattern);
            }
        }
        MappingKind::Persona => {
            let account_width = mappings
                .iter()
                .map(|m| m.account_identifier.as_deref().unwrap_or("-").len())
                .max()
                .unwrap_or(0)
                .max(7);
            let _ = writeln!(
                out,
                "{:id_width$}  {:account_width$}  ARN PATTERN",
                "ID", "ACCOUNT"
            );
            for m in mappings {
                let _ = writeln!(
                    out,
                    "{:id_width$}  {:account_width$}  {}",
                    m.id,
                    m.account_identifier.as_deref().unwrap_or("-"),
                    m.arn_pattern
                );
            }
        }
    }
}

/// A key as a sensitive header value (hyper then keeps it out of its debug output).
fn sensitive(key: &Secret, var: &'static str) -> Result<HeaderValue, MappingError> {
    let mut value = HeaderValue::from_str(key.expose()).map_err(|_| MappingError::BadKey {
        var,
        problem: "contains characters that cannot be sent in an HTTP header",
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Maps an error status to [`MappingError::Api`] with the fix for that status.
fn api_error(
    status: StatusCode,
    detail: Option<String>,
    kind: MappingKind,
    id: Option<&str>,
) -> MappingError {
    let list = format!("datadog-delegated-auth mapping list{}", kind.flag());
    let fix = match status.as_u16() {
        400 => "Fix the request as the detail says; the ARN pattern passed the local wildcard \
             checks, so if Datadog still calls it invalid, check that the AWS account is \
             integrated with Datadog (the Datadog-AWS integration) — mappings need it"
            .to_owned(),
        401 | 403 => {
            "Check that DD_API_KEY and DD_APP_KEY belong to this org and site (site/dd_url \
                     decide the API host), and that the application key's user has the \
                     cloud_auth_config_read and cloud_auth_config_write permissions (granted \
                     with the Preview)"
                .to_owned()
        }
        404 if id.is_some() => format!(
            "No {} has this id in the org; list them with `{list}`",
            kind.noun()
        ),
        404 => "The mapping API is not available on this host: check site and dd_url (the \
                Preview must be enabled for the org)"
            .to_owned(),
        409 => format!(
            "A {} with this pattern exists already; see `{list}`",
            kind.noun()
        ),
        429 => "Datadog is rate limiting the API; wait a minute and try again".to_owned(),
        500..=599 => "Datadog had an internal problem; try again later".to_owned(),
        _ => "Check site and dd_url, which decide the API host".to_owned(),
    };
    MappingError::Api {
        status: status.as_u16(),
        detail,
        fix,
    }
}

/// Reads the body through [`crate::net::read_capped`], refusing more than
/// [`MAX_RESPONSE_BYTES`].
async fn read_capped(response: reqwest::Response) -> Result<Vec<u8>, String> {
    match crate::net::read_capped(response, MAX_RESPONSE_BYTES).await {
        Ok(mut body) => Ok(std::mem::take(&mut *body)),
        Err(CappedReadError::Transport(e)) => Err(format!(
            "the connection broke while reading the answer ({})",
            crate::exchange::transport_reason(&e, REQUEST_TIMEOUT)
        )),
        Err(CappedReadError::TooLarge) => Err(format!(
            "the answer is larger than {} MiB; is the API host right?",
            MAX_RESPONSE_BYTES / (1024 * 1024)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn intake_body_is_the_seeds() {
        let body = create_body(
            MappingKind::Intake,
            "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*",
            None,
        )
        .unwrap();
        assert_eq!(
            body,
            r#"{"data":{"type":"aws_cloud_auth_intake_mapping","attributes":{"arn_pattern":"arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*"}}}"#
        );
    }

    #[test]
    fn persona_body_is_the_seeds() {
        let body = create_body(
            MappingKind::Persona,
            "arn:aws:sts::123456789012:assumed-role/terraform-runner",
            Some("john.doe@myorg.com"),
        )
        .unwrap();
        assert_eq!(
            body,
            r#"{"data":{"type":"aws_cloud_auth_config","attributes":{"account_identifier":"john.doe@myorg.com","arn_pattern":"arn:aws:sts::123456789012:assumed-role/terraform-runner"}}}"#
        );
    }

    #[test]
    fn body_refuses_bad_combinations_and_patterns() {
        let p = "arn:aws:sts::123456789012:assumed-role/R/*";
        assert!(matches!(
            create_body(MappingKind::Intake, p, Some("a@b.c")),
            Err(MappingError::Usage(m)) if m.contains("--persona")
        ));
        for missing in [None, Some(""), Some("  ")] {
            assert!(matches!(
                create_body(MappingKind::Persona, p, missing),
                Err(MappingError::Usage(m)) if m.contains("--account-identifier")
            ));
        }
        let err = create_body(
            MappingKind::Intake,
            "arn:aws:sts::123456789012:assumed-role/*/s",
            None,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        let text = err.to_string();
        assert!(
            text.contains("middle") && text.contains("nothing was sent"),
            "{text}"
        );
    }

    #[test]
    fn keys_come_from_the_two_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let err = ApiKeys::from_env(&env(&[("DD_APP_KEY", "app")])).unwrap_err();
        assert_eq!(err, MappingError::MissingKey { var: "DD_API_KEY" });
        assert!(err.to_string().starts_with("DD_API_KEY is not set"));
        let err = ApiKeys::from_env(&env(&[("DD_API_KEY", "api")])).unwrap_err();
        assert_eq!(err, MappingError::MissingKey { var: "DD_APP_KEY" });
        let err = ApiKeys::from_env(&env(&[("DD_API_KEY", "ENC[api_key]"), ("DD_APP_KEY", "x")]))
            .unwrap_err();
        assert!(matches!(
            err,
            MappingError::BadKey {
                var: "DD_API_KEY",
                ..
            }
        ));
        let keys = ApiKeys::from_env(&env(&[
            ("DD_API_KEY", "0123456789abcdef0123456789abcdef"),
            ("DD_APP_KEY", "fedcba9876543210fedcba9876543210fedcba98"),
        ]))
        .unwrap();
        let shown = format!("{keys:?}");
        assert!(
            !shown.contains("0123456789abcdef0123456789abcdef"),
            "{shown}"
        );
        assert!(!shown.contains("fedcba9876543210"), "{shown}");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let http = reqwest::Client::new();
        let keys = || ApiKeys::new("a".into(), "b".into());
        assert!(MappingClient::new(http.clone(), "http://127.0.0.1:9", keys()).is_ok());
        assert!(MappingClient::new(http.clone(), "http://localhost:9", keys()).is_ok());
        assert!(MappingClient::new(http.clone(), "https://api.datadoghq.com", keys()).is_ok());
        let err = MappingClient::new(http.clone(), "http://api.example.com", keys()).unwrap_err();
        assert!(err.to_string().contains("plain http://"), "{err}");
        assert!(MappingClient::new(http, "ftp://x", keys()).is_err());
    }

    #[test]
    fn urls_encode_the_id_as_one_segment() {
        let client = MappingClient::new(
            reqwest::Client::new(),
            "https://api.datadoghq.eu",
            ApiKeys::new("a".into(), "b".into()),
        )
        .unwrap();
        assert_eq!(
            client.url(MappingKind::Intake, None).unwrap().as_str(),
            "https://api.datadoghq.eu/api/v2/cloud_auth/aws/intake_mapping"
        );
        assert_eq!(
            client
                .url(MappingKind::Persona, Some("abc"))
                .unwrap()
                .as_str(),
            "https://api.datadoghq.eu/api/v2/cloud_auth/aws/persona_mapping/abc"
        );
        assert_eq!(
            client
                .url(MappingKind::Intake, Some("../x?y#z"))
                .unwrap()
                .as_str(),
            "https://api.datadoghq.eu/api/v2/cloud_auth/aws/intake_mapping/..%2Fx%3Fy%23z"
        );
    }

    #[test]
    fn notes_for_patterns_that_match_no_agent() {
        let notes = pattern_notes("arn:aws:iam::123456789012:role/DatadogAgentRole");
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*"),
            "{notes:?}"
        );
        let notes = pattern_notes("arn:aws:sts::123456789012:assumed-role/R/i-0abc");
        assert!(notes[0].contains("only the session"), "{notes:?}");
        let notes = pattern_notes("arn:aws:sts::123456789012:assumed-role/terraform-runner");
        assert!(notes[0].contains("matches no caller"), "{notes:?}");
        assert!(pattern_notes("arn:aws:sts::123456789012:assumed-role/R/*").is_empty());
        assert!(pattern_notes("arn:aws:iam::123456789012:user/ci").is_empty());
        assert!(pattern_notes("not a pattern").is_empty());
    }

    #[test]
    fn api_errors_carry_detail_and_fix() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            Some("Mapping x not found.".into()),
            MappingKind::Intake,
            Some("x"),
        );
        let text = e.to_string();
        assert!(
            text.contains("HTTP 404: Mapping x not found. No intake mapping"),
            "{text}"
        );
        assert!(text.contains("mapping list"), "{text}");
        assert_eq!(e.exit_code(), EXIT_FAILED);
        let e = api_error(StatusCode::FORBIDDEN, None, MappingKind::Persona, None);
        assert!(
            e.to_string().contains("HTTP 403. Check that DD_API_KEY"),
            "{e}"
        );
    }

    #[test]
    fn mapping_from_resource() {
        let m = Mapping::from_resource(&json!({"id":"1","type":"aws_cloud_auth_config","attributes":{"arn_pattern":"p","account_identifier":"a","account_uuid":"u"}})).unwrap();
        assert_eq!(m.account_identifier.as_deref(), Some("a"));
        assert!(Mapping::from_resource(&json!({"id":"1"})).is_none());
        assert!(Mapping::from_resource(&json!({"attributes":{"arn_pattern":"p"}})).is_none());
    }
}

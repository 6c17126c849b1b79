//! Access to EC2 instance metadata: aws-config's IMDSv2 client with the Agent's timeouts, and the
//! IMDSv1 fallback the Agent allows when configured.
//!
//! aws-config's client speaks IMDSv2 only (it never sends a token-less GET). When the operator
//! allows IMDSv1 (`ec2_prefer_imdsv2: false` plus the transition setting, see
//! [`super::AwsOptions::allow_imdsv1`]) and the token request fails, the Agent sends the same GET
//! without a token; that one plain GET is done with reqwest here, since no library offers it.
//!
//! Every call is bounded by `ec2_metadata_timeout` (connect, read, and the whole attempt), so an
//! unanswered token request, which is what a container behind the default hop limit of 1 sees,
//! fails after about that long instead of the SDK's multi-second defaults.

use std::error::Error as StdError;
use std::time::Duration;

use aws_config::imds;
use aws_config::provider_config::ProviderConfig;
use aws_smithy_runtime_api::client::result::ConnectorError;

use super::AwsOptions;
use super::env::{AwsEnv, vars};
use super::http::{MAX_SDK_BODY_BYTES, capped_client, read_capped};

/// The IPv4 IMDS address.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The IPv6 IMDS address (`AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`).
pub const IPV6_ENDPOINT: &str = "http://[fd00:ec2::254]";
/// The identity document, whose `region` field is the instance's region.
pub const IDENTITY_DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";
/// The instance profile listing; its body is the role name.
pub const SECURITY_CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// How one IMDS call failed, in the terms an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImdsFailure {
    /// The IMDSv2 token request got no answer in time: the hop-limit symptom.
    TokenUnanswered,
    /// The token request was refused (IMDS disabled, or v2 turned off at the instance level).
    TokenRefused(String),
    /// Nothing listens at the endpoint, or the connection failed.
    Unreachable(String),
    /// The path answered with an error status (404: no instance profile, for instance).
    Status(u16),
    /// A GET (after the token) timed out.
    Timeout,
    /// Anything else, rendered with its whole error chain.
    Other(String),
}

impl std::fmt::Display for ImdsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImdsFailure::TokenUnanswered => {
                f.write_str("the IMDSv2 token request (PUT /latest/api/token) got no answer")
            }
            ImdsFailure::TokenRefused(detail) => {
                write!(f, "the IMDSv2 token request was refused: {detail}")
            }
            ImdsFailure::Unreachable(detail) => write!(f, "IMDS could not be reached: {detail}"),
            ImdsFailure::Status(status) => write!(f, "IMDS answered HTTP {status}"),
            ImdsFailure::Timeout => f.write_str("IMDS did not answer in time"),
            ImdsFailure::Other(detail) => f.write_str(detail),
        }
    }
}

/// An IMDS endpoint with the configured timeouts and version policy.
#[derive(Debug, Clone)]
pub(crate) struct Imds {
    client: imds::Client,
    endpoint: String,
    timeout: Duration,
    allow_v1: bool,
}

impl Imds {
    /// Builds the client from the snapshot (endpoint override and mode) and the options.
    ///
    /// # Errors
    /// A message naming `AWS_EC2_METADATA_SERVICE_ENDPOINT` when its value is not a URL.
    pub(crate) fn new(env: &AwsEnv, opts: &AwsOptions) -> Result<Imds, String> {
        let endpoint = match (
            env.get(vars::EC2_METADATA_ENDPOINT),
            env.get(vars::EC2_METADATA_ENDPOINT_MODE),
        ) {
            (Some(url), _) => url.trim().trim_end_matches('/').to_owned(),
            (None, Some(mode)) if mode.eq_ignore_ascii_case("ipv6") => IPV6_ENDPOINT.to_owned(),
            _ => DEFAULT_ENDPOINT.to_owned(),
        };
        let timeout = opts.ec2_metadata_timeout;
        // The endpoint is always set explicitly, so aws-config never consults the process
        // environment or ~/.aws/config for it (the snapshot is the only source of truth).
        let client = imds::Client::builder()
            .configure(&ProviderConfig::without_region().with_http_client(capped_client(None)))
            .endpoint(&endpoint)
            .map_err(|e| {
                format!(
                    "{} is not a valid URL ({e}): fix or unset it",
                    vars::EC2_METADATA_ENDPOINT
                )
            })?
            .token_ttl(opts.imds_token_lifetime)
            .connect_timeout(timeout)
            .read_timeout(timeout)
            // Token and GET share one attempt; the Agent does not retry either (the daemon's own
            // refresh loop does, with backoff).
            .operation_attempt_timeout(timeout * 2)
            .operation_timeout(timeout * 2)
            .max_attempts(1)
            .build();
        Ok(Imds {
            client,
            endpoint,
            timeout,
            allow_v1: opts.allow_imdsv1,
        })
    }

    /// The aws-config client (shared with the credentials provider, so the token is reused).
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether a failed token request may be followed by token-less GETs.
    pub(crate) fn versions(&self) -> &'static str {
        if self.allow_v1 {
            "v2 then v1"
        } else {
            "v2 only"
        }
    }

    /// The per-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GETs `path`: IMDSv2 first; a token failure falls back to IMDSv1 when allowed.
    pub(crate) async fn get(&self, path: &str) -> Result<String, ImdsFailure> {
        match self.client.get(path).await {
            Ok(body) => Ok(body.as_ref().to_owned()),
            Err(error) => {
                let failure = classify(&error);
                if self.allow_v1 && is_token_failure(&failure) {
                    tracing::debug!(path, %failure, "IMDSv2 token failed; retrying the GET with IMDSv1 as configured.");
                    return self.get_v1(path).await;
                }
                Err(failure)
            }
        }
    }

    /// A token-less GET (IMDSv1).
    pub(crate) async fn get_v1(&self, path: &str) -> Result<String, ImdsFailure> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .build()
            .map_err(|e| ImdsFailure::Other(e.to_string()))?;
        let response = client
            .get(format!("{}{path}", self.endpoint))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    ImdsFailure::Timeout
                } else {
                    ImdsFailure::Unreachable(chain(&e))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(ImdsFailure::Status(status.as_u16()));
        }
        // Capped like the IMDSv2 answers (an endless answer must not grow the daemon).
        let body = read_capped(response, MAX_SDK_BODY_BYTES)
            .await
            .map_err(ImdsFailure::Other)?;
        String::from_utf8(body)
            .map_err(|_| ImdsFailure::Other("IMDS returned invalid UTF-8".into()))
    }
}

/// Whether the failure is about the token (the case where the Agent falls back to IMDSv1).
pub(crate) fn is_token_failure(failure: &ImdsFailure) -> bool {
    matches!(
        failure,
        ImdsFailure::TokenUnanswered | ImdsFailure::TokenRefused(_)
    )
}

/// Classifies an aws-config IMDS error (or a credentials error wrapping one) by walking its
/// source chain: aws-config wraps the token failure and the transport error several levels deep.
pub(crate) fn classify(error: &(dyn StdError + 'static)) -> ImdsFailure {
    let mut token = false;
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(imds_error) = e.downcast_ref::<imds::client::error::ImdsError>() {
            match imds_error {
                imds::client::error::ImdsError::FailedToLoadToken(_) => token = true,
                imds::client::error::ImdsError::ErrorResponse(response) => {
                    return ImdsFailure::Status(response.response().status().as_u16());
                }
                _ => {}
            }
        }
        if is_operation_timeout(e) {
            // Each call's read timeout is ec2_metadata_timeout and its attempt timeout twice
            // that, so an attempt only runs out while it waits for something else: the IMDSv2
            // token another call is loading (concurrent calls share one token load, and a
            // waiter whose load failed starts another). That is the unanswered token.
            return ImdsFailure::TokenUnanswered;
        }
        if let Some(connector) = e.downcast_ref::<ConnectorError>() {
            if connector.is_timeout() {
                return if token {
                    ImdsFailure::TokenUnanswered
                } else {
                    ImdsFailure::Timeout
                };
            }
            if connector.is_io() {
                return ImdsFailure::Unreachable(chain(error));
            }
        }
        current = e.source();
    }
    if token {
        ImdsFailure::TokenRefused(chain(error))
    } else {
        ImdsFailure::Other(chain(error))
    }
}

/// aws-smithy-runtime's operation (attempt) timeout. Its type is private; its Display is
/// `operation attempt timeout (single attempt) occurred after …` or `operation timeout (all
/// attempts including retries) occurred after …` (pinned by the test below and by
/// `tests/faults.rs`, which reproduces it against a real IMDS emulator).
fn is_operation_timeout(error: &(dyn StdError + 'static)) -> bool {
    let text = error.to_string();
    text.starts_with("operation attempt timeout") || text.starts_with("operation timeout")
}

/// An error and its sources on one line (aws-config's Display shows only the outermost layer).
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two calls share one token load that never answers (a container behind the hop limit):
    /// one fails on the token's read timeout, the other on its own attempt timeout while
    /// waiting. Both are the unanswered token.
    #[tokio::test]
    async fn a_call_waiting_on_an_unanswered_token_is_a_token_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let env = AwsEnv::from_pairs([(vars::EC2_METADATA_ENDPOINT, format!("http://{addr}"))]);
        let imds = Imds::new(
            &env,
            &AwsOptions {
                ec2_metadata_timeout: Duration::from_millis(200),
                ..AwsOptions::default()
            },
        )
        .unwrap();
        let (a, b) = tokio::join!(
            imds.get(SECURITY_CREDENTIALS_PATH),
            imds.get(IDENTITY_DOCUMENT_PATH)
        );
        assert_eq!(a.unwrap_err(), ImdsFailure::TokenUnanswered);
        assert_eq!(b.unwrap_err(), ImdsFailure::TokenUnanswered);
        silent.abort();
    }
}

//! AWS identity and proof: which credentials the workload has, in which region, and the signed
//! STS `GetCallerIdentity` proof Datadog accepts (product §3, §4; wire spec §1, §4.3, §5).
//!
//! # Layout
//!
//! - [`env`](mod@env): [`AwsEnv`], the environment snapshot every step reads (tests inject one).
//! - `credentials`: source selection (Agent order, first match) and resolution through
//!   aws-config's providers, each call under a named timeout; errors name the source and its fix.
//! - `http`: the HTTP client of every aws-config provider, with answers capped.
//! - `imds`: aws-config's IMDSv2 client with `ec2_metadata_timeout`, and the IMDSv1 fallback.
//! - `region`: region from configuration, environment, ECS task metadata or IMDS.
//! - `environment`: the environment kind shown in `status`.
//! - `proof`: the byte-compatible proof, and its decoder.
//!
//! [`Identity`] ties them together and is built once per daemon configuration: it owns the
//! selected provider, so aws-config's state (the IMDS token) and our credential cache survive
//! across refreshes.

mod credentials;
pub mod env;
mod environment;
mod http;
mod imds;
mod proof;
mod region;

use std::time::{Duration, SystemTime};

pub use credentials::{
    AwsCredentials, CONTAINER_TIMEOUT, CredentialError, CredentialSource,
    DEFAULT_WEB_IDENTITY_SESSION, EXPIRY_BUFFER, HOP_LIMIT_FIX, IMDS_MARGIN, WEB_IDENTITY_TIMEOUT,
    remediation,
};
pub use env::AwsEnv;
pub use environment::{Detection, EnvironmentKind};
pub use imds::{DEFAULT_ENDPOINT as IMDS_DEFAULT_ENDPOINT, IDENTITY_DOCUMENT_PATH};
pub use proof::{
    DecodedProof, GLOBAL_SIGNING_REGION, ORG_ID_HEADER, ProofError, STS_BODY, STS_CONTENT_TYPE,
    STS_METHOD, StsEndpoint, build_proof, decode_proof, sts_endpoint,
};
pub use region::ECS_TASK_METADATA_TIMEOUT;

use credentials::{Provider, Selection};
use imds::{Imds, ImdsFailure};

/// The Agent's default `ec2_metadata_timeout` (ms).
pub const DEFAULT_EC2_METADATA_TIMEOUT: Duration = Duration::from_millis(300);
/// The Agent's default `ec2_metadata_token_lifetime` (s).
pub const DEFAULT_IMDS_TOKEN_LIFETIME: Duration = Duration::from_secs(21_600);

/// The settings of `datadog.yaml` that shape identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsOptions {
    /// `ec2_metadata_timeout`: the bound on every IMDS call.
    pub ec2_metadata_timeout: Duration,
    /// Whether a failed IMDSv2 token may be followed by token-less (v1) requests. The Agent does
    /// so when `ec2_prefer_imdsv2` or `ec2_imdsv2_transition_payload_enabled` is on; the product
    /// allows v1 only when configured (§9).
    pub allow_imdsv1: bool,
    /// `ec2_metadata_token_lifetime`: the TTL asked for IMDSv2 tokens.
    pub imds_token_lifetime: Duration,
    /// `cloud_provider_metadata` contains `aws`: IMDS may be used at all.
    pub imds_allowed: bool,
    /// `delegated_auth.provider: aws`: detection is skipped (resolution is not).
    pub provider_explicit: bool,
    /// `delegated_auth.aws.region`.
    pub configured_region: Option<String>,
    /// `proxy.*` of `datadog.yaml` (only the proxy fields are used here): IRSA's
    /// AssumeRoleWithWebIdentity is the one AWS call that leaves the host, and it goes through
    /// the same proxy as the exchange. IMDS and the container endpoints are link-local and
    /// never proxied.
    pub proxy: crate::net::ClientOptions,
}

impl AwsOptions {
    /// The identity settings of a validated configuration: the Agent's `ec2_*`,
    /// `cloud_provider_metadata` and `delegated_auth.{provider, aws.region}`, and our
    /// `imds.v1_fallback` (IMDSv1 only when the settings file opts in, product §9).
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let agent = &cfg.agent;
        AwsOptions {
            ec2_metadata_timeout: agent.ec2_metadata_timeout,
            allow_imdsv1: cfg.settings.imds.v1_fallback,
            imds_token_lifetime: agent.ec2_metadata_token_lifetime,
            imds_allowed: agent.aws_metadata_enabled(),
            provider_explicit: agent.provider == crate::config::Provider::Aws,
            configured_region: agent.aws_region.clone(),
            proxy: crate::net::ClientOptions::from_agent(agent, crate::net::DEFAULT_TIMEOUT),
        }
    }
}

impl Default for AwsOptions {
    fn default() -> Self {
        AwsOptions {
            ec2_metadata_timeout: DEFAULT_EC2_METADATA_TIMEOUT,
            allow_imdsv1: false,
            imds_token_lifetime: DEFAULT_IMDS_TOKEN_LIFETIME,
            imds_allowed: true,
            provider_explicit: false,
            configured_region: None,
            proxy: crate::net::ClientOptions::default(),
        }
    }
}

/// The workload's AWS identity: source selection, credentials, region, environment kind.
#[derive(Debug)]
pub struct Identity {
    opts: AwsOptions,
    env: AwsEnv,
    selection: Selection,
    provider: Provider,
    /// IMDS for detection and region, present when IMDS may be used (whatever the source).
    imds: Option<Imds>,
    /// The last credentials and their expiry. The async mutex makes concurrent callers share one
    /// resolution.
    cache: tokio::sync::Mutex<Option<(AwsCredentials, Option<SystemTime>)>>,
    /// The region found by a network probe (ECS task metadata or IMDS); only successes are kept.
    detected_region: std::sync::Mutex<Option<String>>,
}

impl Identity {
    /// Selects the credential source from `env` (first match; half-set pairs skipped with a
    /// warning) and builds its provider. No network.
    pub fn new(opts: AwsOptions, env: AwsEnv) -> Identity {
        let selection = credentials::select(&env, &opts);
        for warning in &selection.warnings {
            tracing::warn!("{warning}");
        }
        let provider = Provider::build(&selection, &env, &opts);
        let imds = match (&provider, credentials::imds_unavailable(&env, &opts)) {
            // Share the provider's client, and with it the cached IMDSv2 token.
            (Provider::Imds(imds), _) => Some(imds.clone()),
            (_, None) => Imds::new(&env, &opts).ok(),
            (_, Some(_)) => None,
        };
        Identity {
            opts,
            env,
            selection,
            provider,
            imds,
            cache: tokio::sync::Mutex::new(None),
            detected_region: std::sync::Mutex::new(None),
        }
    }

    /// The selected source; `None` when nothing is configured and IMDS may not be used.
    pub fn source(&self) -> Option<CredentialSource> {
        self.selection.source
    }

    /// Warnings from source selection (half-set pairs), for `status` and `check-config`.
    pub fn warnings(&self) -> &[String] {
        &self.selection.warnings
    }

    /// The options this identity was built with.
    pub fn options(&self) -> &AwsOptions {
        &self.opts
    }

    /// Detects the environment kind. Environment-based sources need no network; IMDS is probed
    /// (identity document, bounded by `ec2_metadata_timeout`) unless the provider is explicit.
    pub async fn detect(&self) -> Detection {
        let found = |kind| Detection {
            kind,
            source: self.selection.source,
            reason: None,
        };
        match self.selection.source {
            Some(CredentialSource::StaticEnv) => found(EnvironmentKind::StaticEnv),
            Some(CredentialSource::WebIdentity) => found(EnvironmentKind::EksIrsa),
            Some(CredentialSource::Container) => found(environment::container_kind(&self.env)),
            Some(CredentialSource::Imds) if self.opts.provider_explicit => {
                found(EnvironmentKind::Ec2)
            }
            Some(CredentialSource::Imds) => match self.identity_document_region().await {
                Ok(region) => {
                    self.remember_region(region);
                    found(EnvironmentKind::Ec2)
                }
                Err(failure) => {
                    let mut imds = format!("did not answer: {failure}");
                    if failure == ImdsFailure::TokenUnanswered {
                        imds.push_str(&format!(
                            " within ec2_metadata_timeout={}ms; {HOP_LIMIT_FIX}",
                            self.opts.ec2_metadata_timeout.as_millis()
                        ));
                    }
                    none(CredentialError::NoSource { imds })
                }
            },
            None => none(CredentialError::NoSource {
                imds: self.selection.imds_unavailable.clone().unwrap_or_default(),
            }),
        }
    }

    /// Credentials from the selected source, cached until [`EXPIRY_BUFFER`] before they expire.
    ///
    /// # Errors
    /// [`CredentialError`], naming the source and that source's fix.
    pub async fn credentials(&self) -> Result<AwsCredentials, CredentialError> {
        let mut cache = self.cache.lock().await;
        if let Some((creds, expiry)) = cache.as_ref()
            && expiry.is_none_or(|e| e > SystemTime::now() + EXPIRY_BUFFER)
        {
            return Ok(creds.clone());
        }
        let (creds, expiry) = self.provider.resolve().await?;
        tracing::debug!(source = %creds.source, "Resolved AWS credentials.");
        *cache = Some((creds.clone(), expiry));
        Ok(creds)
    }

    /// Forgets cached credentials, so the next [`Identity::credentials`] asks the source again
    /// (after Datadog or STS rejected a proof, for instance).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    /// The signing region: `explicit` (a DELA directive's `region=`) → `delegated_auth.aws.region`
    /// → `AWS_REGION` → `AWS_DEFAULT_REGION` → ECS task metadata v4 → IMDS identity document →
    /// `None` (global STS host). Probe results are cached; failures are retried next time.
    pub async fn region(&self, explicit: Option<&str>) -> Option<String> {
        if let Some(region) =
            region::static_region(explicit, self.opts.configured_region.as_deref(), &self.env)
        {
            return Some(region);
        }
        if let Some(region) = self.cached_region() {
            return Some(region);
        }
        let mut detected = region::from_ecs_task_metadata(&self.env).await;
        if detected.is_none() && self.imds.is_some() {
            detected = self.identity_document_region().await.ok();
        }
        if let Some(region) = &detected {
            self.remember_region(region.clone());
        }
        detected
    }

    async fn identity_document_region(&self) -> Result<String, ImdsFailure> {
        let Some(imds) = &self.imds else {
            return Err(ImdsFailure::Other("IMDS may not be used".into()));
        };
        // The client bounds each call; this outer bound also covers an IMDSv1 fallback.
        let limit = imds.timeout() * 4 + IMDS_MARGIN;
        let body = tokio::time::timeout(limit, imds.get(IDENTITY_DOCUMENT_PATH))
            .await
            .map_err(|_| ImdsFailure::Timeout)??;
        region::region_from_identity_document(&body).ok_or_else(|| {
            ImdsFailure::Other("the instance identity document has no region".into())
        })
    }

    fn cached_region(&self) -> Option<String> {
        self.detected_region
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn remember_region(&self, region: String) {
        *self
            .detected_region
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(region);
    }
}

fn none(error: CredentialError) -> Detection {
    Detection {
        kind: EnvironmentKind::None,
        source: None,
        reason: Some(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Identity>();
    }

    #[tokio::test]
    async fn configured_region_wins_and_needs_no_network() {
        let identity = Identity::new(
            AwsOptions {
                configured_region: Some("eu-west-3".into()),
                imds_allowed: false,
                ..AwsOptions::default()
            },
            AwsEnv::from_pairs([("AWS_REGION", "us-east-2")]),
        );
        assert_eq!(identity.region(None).await.as_deref(), Some("eu-west-3"));
        assert_eq!(
            identity.region(Some("ap-northeast-1")).await.as_deref(),
            Some("ap-northeast-1")
        );
    }

    #[tokio::test]
    async fn no_region_when_nothing_is_known_and_imds_is_off() {
        let identity = Identity::new(
            AwsOptions {
                imds_allowed: false,
                ..AwsOptions::default()
            },
            AwsEnv::default(),
        );
        assert_eq!(identity.region(None).await, None);
        let detection = identity.detect().await;
        assert_eq!(detection.kind, EnvironmentKind::None);
        assert!(
            detection
                .reason
                .unwrap()
                .contains("cloud_provider_metadata")
        );
    }
}

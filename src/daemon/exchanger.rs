//! The real [`Exchanger`]: resolve AWS credentials, sign the proof, POST it to Datadog.
//!
//! A reload swaps the parts (identity settings, HTTP client with its proxies) in place, so the
//! refresh manager keeps one exchanger and its tasks keep running.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tracing::{debug, warn};

use crate::aws::{self, AwsEnv, AwsOptions, Identity};
use crate::config::Config;
use crate::exchange::{self, ExchangeClient};
use crate::lifecycle::{
    Credential, ExchangeFailure, ExchangeKey, Exchanged, Exchanger, FailureKind,
};
use crate::net::ClientOptions;
use crate::net::USER_AGENT;
use crate::schedule::Cause;
use crate::server::ServerState;
use crate::status::EnvironmentStatus;

struct Parts {
    identity: Identity,
    /// `None` when no instance uses delegated auth: a static-key daemon never talks to Datadog,
    /// so it builds no TLS client and keeps no root certificate store in memory.
    client: Option<ExchangeClient>,
}

/// Identity + exchange client, swappable on reload.
pub struct AwsExchanger {
    parts: ArcSwap<Parts>,
}

impl AwsExchanger {
    /// Builds the parts from a validated configuration and the process environment.
    pub fn new(cfg: &Config) -> Result<Self, String> {
        let a = &cfg.agent;
        let delegated =
            cfg.instances.iter().any(|i| i.delegated.is_some()) || !cfg.tokens.is_empty();
        let client = if delegated {
            if a.skip_ssl_validation {
                warn!(
                    "skip_ssl_validation is set: the TLS certificate of the Datadog API is NOT verified. Anyone on the network path can steal managed keys. Unset it unless you know why it is needed."
                );
            }
            Some(
                ExchangeClient::new(&ClientOptions::from_agent(a, exchange::DEFAULT_TIMEOUT))
                    .map_err(|e| {
                        format!("cannot build the HTTPS client for the Datadog API: {e}")
                    })?,
            )
        } else {
            None
        };
        let identity = Identity::new(AwsOptions::from_config(cfg), AwsEnv::from_process());
        for w in identity.warnings() {
            warn!("{w}");
        }
        Ok(AwsExchanger {
            parts: ArcSwap::from_pointee(Parts { identity, client }),
        })
    }

    /// Takes over the parts of a freshly built exchanger (reload).
    pub fn replace(&self, other: Arc<AwsExchanger>) {
        self.parts.store(other.parts.load_full());
    }

    /// Detects the environment in the background and publishes it for status.
    pub fn publish_environment(&self, state: Arc<ServerState>) {
        let parts = self.parts.load_full();
        tokio::spawn(async move {
            let detection = parts.identity.detect().await;
            let region = parts.identity.region(None).await;
            let sts = aws::sts_endpoint(region.as_deref());
            let enabled = (state.store.slots().iter())
                .chain(state.store.token_slots().iter())
                .any(|s| s.current().status.org_uuid.is_some());
            let env = EnvironmentStatus {
                kind: detection.kind.to_string(),
                reason: detection.reason.clone(),
                credential_source: detection.source.map(|s| s.to_string()),
                region: region.clone(),
                sts_host: Some(sts.host.clone()),
                provider: enabled.then(|| "aws".to_owned()),
                warnings: parts.identity.warnings().to_vec(),
            };
            debug!(kind = %env.kind, region = ?env.region, "Environment detected.");
            super::info::update(&state.info, |info| info.environment = env.clone());
        });
    }
}

impl Exchanger for AwsExchanger {
    async fn exchange(&self, key: &ExchangeKey) -> Result<Exchanged, ExchangeFailure> {
        let parts = self.parts.load_full();
        let target = match key.credential {
            Credential::IntakeKey => exchange::intake_key_url(&key.target),
            // A token's target is the API base already (`api_url`, or from `site`).
            Credential::Token => format!("{}{}", key.target, exchange::DELEGATED_TOKEN_PATH),
        };
        // What status and logs show: a proxy-style dd_url may carry user:password@.
        let url = crate::secret::redact_userinfo(&target);
        let Some(client) = parts.client.as_ref() else {
            // The manager only exchanges for delegated instances, and the client exists whenever
            // one does; a reload swaps both together.
            return Err(ExchangeFailure {
                kind: FailureKind::Config,
                cause: Cause::Unanswered,
                message: "no instance of the configuration in force uses delegated auth".to_owned(),
                retry_after: None,
                credential_source: None,
                endpoint: Some(url),
            });
        };
        let started = Instant::now();
        let creds = parts
            .identity
            .credentials()
            .await
            .map_err(|e| ExchangeFailure {
                kind: FailureKind::from(&e),
                cause: Cause::Unanswered,
                message: e.to_string(),
                retry_after: None,
                credential_source: parts.identity.source().map(|s| s.to_string()),
                endpoint: Some(url.clone()),
            })?;
        let source = Some(creds.source.to_string());
        let region = parts.identity.region(key.region.as_deref()).await;
        let proof = aws::build_proof(
            &creds,
            &key.org_uuid,
            region.as_deref(),
            SystemTime::now(),
            USER_AGENT,
        )
        .map_err(|e| ExchangeFailure {
            kind: FailureKind::from(&e),
            cause: Cause::Unanswered,
            message: e.to_string(),
            retry_after: None,
            credential_source: source.clone(),
            endpoint: Some(url.clone()),
        })?;
        let result = match key.credential {
            Credential::IntakeKey => {
                debug!(url = %url, region = ?region, "Getting API key with cloud auth proof.");
                client.exchange(&target, &proof).await.map(|api_key| {
                    debug!(url = %url, elapsed = ?started.elapsed(), key = %api_key, "Successfully parsed delegated API key.");
                    (api_key, None)
                })
            }
            Credential::Token => {
                debug!(url = %url, region = ?region, "Getting a delegated API token with cloud auth proof.");
                client.delegated_token(&target, &proof).await.map(|t| {
                    if t.expiry_assumed {
                        warn!(url = %url, "The token answer had no usable `expires`; assuming 15 minutes, as the Datadog API clients do.");
                    }
                    (t.token, Some(t.expires_at))
                })
            }
        };
        match result {
            Ok((value, expires_at)) => Ok(Exchanged {
                key: value,
                expires_at,
                credential_source: source,
                endpoint: url,
                region,
            }),
            Err(e) => {
                let kind = e.kind();
                if kind == FailureKind::Unauthorized {
                    // The proof was refused: the cached credentials may be what is wrong (a
                    // revoked session, a rotated instance profile). Ask the source again next
                    // time instead of signing with them until they expire, hours later.
                    parts.identity.invalidate().await;
                }
                Err(ExchangeFailure {
                    kind,
                    cause: e.cause(),
                    message: e.to_string(),
                    retry_after: e.retry_after(),
                    credential_source: source,
                    endpoint: Some(url),
                })
            }
        }
    }
}

//! Credential source selection and resolution (product §3, wire spec §5).
//!
//! Selection reads only the [`AwsEnv`] snapshot, in the Agent's order, first match, no
//! fall-through on failure: static env → IRSA web identity → container credentials → EC2 IMDS.
//! A half-set pair is skipped with a warning naming the missing variable.
//!
//! Resolution uses aws-config's providers (web identity, ECS/EKS container, IMDS), each call
//! wrapped in a named timeout below. Every error names the source tried and the fix for that
//! source only, in the spirit of the Agent's `credentialRemediation`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_types::region::Region;
use futures_util::FutureExt;

use super::AwsOptions;
use super::env::{AwsEnv, vars};
use super::http::capped_client;
use super::imds::{Imds, ImdsFailure, SECURITY_CREDENTIALS_PATH, chain};
use crate::net::ProxySettings;
use crate::secret::Secret;
use crate::secret::redact_userinfo;

/// Bound on one AssumeRoleWithWebIdentity call (token file read + STS round trip). The Agent's
/// IRSA client uses 10 s; pinned here so the documented value cannot drift with SDK defaults.
pub const WEB_IDENTITY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one container-credentials call (ECS agent or EKS Pod Identity agent). The Agent's
/// container client uses 10 s; aws-config's own connect (2 s) and read (5 s) timeouts apply inside.
pub const CONTAINER_TIMEOUT: Duration = Duration::from_secs(10);
/// IMDS credentials take three calls (token, role name, role credentials), each bounded by
/// `ec2_metadata_timeout`; the whole resolution is bounded by that many calls plus this margin.
pub const IMDS_MARGIN: Duration = Duration::from_millis(250);
/// IMDS calls per credentials resolution, IMDSv1 fallback included (token, then two GETs each
/// way at most).
const IMDS_CALLS_PER_RESOLUTION: u32 = 5;
/// Credentials are re-resolved this long before they expire (the SDK's default buffer is 5 min
/// too: refreshing earlier wastes calls, later risks signing with expiring keys).
pub const EXPIRY_BUFFER: Duration = Duration::from_secs(5 * 60);
/// Bound on a token file (IRSA's projected service-account token, the EKS Pod Identity or ECS
/// authorization token): real ones are 1–2 KiB.
pub const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024;
/// Bound on reading a token file: a regular file is read in microseconds; this only ends a read
/// stuck on a hung filesystem, off the runtime's workers.
const TOKEN_FILE_READ_LIMIT: Duration = Duration::from_secs(2);
/// The session name the Agent uses for IRSA when `AWS_ROLE_SESSION_NAME` is unset.
pub const DEFAULT_WEB_IDENTITY_SESSION: &str = "datadog-agent-workload-identity-federation";
/// The region the Agent signs IRSA's AssumeRoleWithWebIdentity for when none is configured.
const WEB_IDENTITY_FALLBACK_REGION: &str = "us-east-1";

/// Where the credentials come from. `Display` is the Agent's name for each source (status,
/// errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`).
    StaticEnv,
    /// `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` (EKS IRSA).
    WebIdentity,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI` (ECS task role, EKS Pod Identity).
    Container,
    /// The EC2 instance profile through IMDS.
    Imds,
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialSource::StaticEnv => "static environment variables",
            CredentialSource::WebIdentity => "IRSA web identity",
            CredentialSource::Container => "ECS/EKS container credentials",
            CredentialSource::Imds => "EC2 IMDS",
        })
    }
}

/// Resolved AWS credentials. The secret parts are [`Secret`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// `AKIA…` (permanent) or `ASIA…` (temporary).
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: Secret,
    /// The session token of temporary credentials.
    pub session_token: Option<Secret>,
    /// The source that produced them.
    pub source: CredentialSource,
}

/// The operator's fix for a failing source, and only that source.
pub fn remediation(source: CredentialSource) -> &'static str {
    match source {
        CredentialSource::StaticEnv => {
            "check that AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for \
             temporary keys) are set together, valid and not expired"
        }
        CredentialSource::WebIdentity => {
            "check that the service account is annotated with eks.amazonaws.com/role-arn, that \
             AWS_WEB_IDENTITY_TOKEN_FILE is mounted and readable by the daemon, and that the role's \
             trust policy allows sts:AssumeRoleWithWebIdentity for the cluster's OIDC provider"
        }
        CredentialSource::Container => {
            "check the ECS task role (taskRoleArn) or the EKS Pod Identity association and agent \
             add-on, and that AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/_FULL_URI and the authorization \
             token (file) reach this container unchanged"
        }
        CredentialSource::Imds => {
            "check that the instance has an IAM instance profile with a role and that IMDS is \
             enabled; raise ec2_metadata_timeout if IMDS is slow"
        }
    }
}

/// The fix for an unanswered IMDSv2 token request.
pub const HOP_LIMIT_FIX: &str = "from a container the default IMDS hop limit of 1 drops the reply: run \
     `aws ec2 modify-instance-metadata-options --instance-id <id> --http-put-response-hop-limit 2 \
     --http-endpoint enabled`, or use host networking or a task role / Pod Identity instead";

/// Why credentials could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    /// Nothing in the environment and IMDS unavailable.
    #[error(
        "no AWS credential source found: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
         AWS_ROLE_ARN+AWS_WEB_IDENTITY_TOKEN_FILE (IRSA) and \
         AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/_FULL_URI (ECS/EKS Pod Identity) are all unset, and \
         EC2 IMDS {imds}"
    )]
    NoSource {
        /// Why IMDS is out (not permitted, disabled, or did not answer).
        imds: String,
    },
    /// The source's call took longer than its named timeout.
    #[error("{credential_source}: no answer within {after:?}; {}", remediation(*.credential_source))]
    Timeout {
        /// The source tried.
        credential_source: CredentialSource,
        /// The timeout that expired.
        after: Duration,
    },
    /// The IMDSv2 token request got no answer (hop limit).
    #[error(
        "EC2 IMDS: the IMDSv2 token request got no answer within ec2_metadata_timeout={}ms \
         (IMDS versions attempted={versions}); {HOP_LIMIT_FIX}",
        timeout.as_millis()
    )]
    ImdsTokenUnanswered {
        /// `ec2_metadata_timeout`.
        timeout: Duration,
        /// Versions tried.
        versions: &'static str,
    },
    /// IMDS failed otherwise.
    #[error(
        "EC2 IMDS: {detail} (endpoint {endpoint}, ec2_metadata_timeout={}ms, IMDS versions \
         attempted={versions}); {}",
        timeout.as_millis(), remediation(CredentialSource::Imds)
    )]
    Imds {
        /// What happened.
        detail: String,
        /// The endpoint used.
        endpoint: String,
        /// `ec2_metadata_timeout`.
        timeout: Duration,
        /// Versions tried.
        versions: &'static str,
    },
    /// A token file (IRSA's, or the container authorization token) is missing, unreadable,
    /// not a regular file, or too large.
    #[error(
        "{credential_source}: cannot read the token file {path} ({detail}); {}",
        remediation(*.credential_source)
    )]
    TokenFile {
        /// The source whose token it is.
        credential_source: CredentialSource,
        /// `AWS_WEB_IDENTITY_TOKEN_FILE` or `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The provider failed.
    #[error("{credential_source}: {detail}; {}", remediation(*.credential_source))]
    Provider {
        /// The source tried.
        credential_source: CredentialSource,
        /// The provider's error chain (it never contains secrets: aws-config redacts them).
        detail: String,
    },
    /// The provider answered with a blank key.
    #[error("{credential_source}: returned empty credentials; {}", remediation(*.credential_source))]
    Empty {
        /// The source tried.
        credential_source: CredentialSource,
    },
    /// The snapshot and the process environment disagree on variables aws-config reads itself.
    #[error(
        "{credential_source}: the environment snapshot differs from the process environment for \
         {}; aws-config reads these from the process, so the daemon must be started with them \
         (restart it after changing its environment)",
        vars.join(", ")
    )]
    ProcessEnvMismatch {
        /// The source selected.
        credential_source: CredentialSource,
        /// The variables that differ.
        vars: Vec<&'static str>,
    },
}

impl CredentialError {
    /// The source the error is about, when one was selected.
    pub fn credential_source(&self) -> Option<CredentialSource> {
        match self {
            CredentialError::NoSource { .. } => None,
            CredentialError::ImdsTokenUnanswered { .. } | CredentialError::Imds { .. } => {
                Some(CredentialSource::Imds)
            }
            CredentialError::Timeout {
                credential_source, ..
            }
            | CredentialError::Provider {
                credential_source, ..
            }
            | CredentialError::TokenFile {
                credential_source, ..
            }
            | CredentialError::Empty { credential_source }
            | CredentialError::ProcessEnvMismatch {
                credential_source, ..
            } => Some(*credential_source),
        }
    }
}

/// The outcome of reading the environment: the source and the warnings about half-set pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selection {
    pub(crate) source: Option<CredentialSource>,
    pub(crate) warnings: Vec<String>,
    /// Why IMDS is out, when the chain ended without a source.
    pub(crate) imds_unavailable: Option<String>,
}

fn incomplete(set: &str, missing: &str, source: CredentialSource) -> String {
    format!(
        "{set} is set but {missing} is not, so the {source} credential source is incomplete and was \
         skipped; falling back to the next source in the AWS precedence order. Set {missing} or unset {set}."
    )
}

/// Picks the source from the snapshot, in the Agent's order. No network.
pub(crate) fn select(env: &AwsEnv, opts: &AwsOptions) -> Selection {
    let mut warnings = Vec::new();
    let mut pair = |a: &str, b: &str, source: CredentialSource| match (env.has(a), env.has(b)) {
        (true, true) => true,
        (true, false) => {
            warnings.push(incomplete(a, b, source));
            false
        }
        (false, true) => {
            warnings.push(incomplete(b, a, source));
            false
        }
        (false, false) => false,
    };
    let static_env = pair(
        vars::ACCESS_KEY_ID,
        vars::SECRET_ACCESS_KEY,
        CredentialSource::StaticEnv,
    );
    let web_identity = pair(
        vars::ROLE_ARN,
        vars::WEB_IDENTITY_TOKEN_FILE,
        CredentialSource::WebIdentity,
    );
    let container = env.has(vars::CONTAINER_RELATIVE_URI) || env.has(vars::CONTAINER_FULL_URI);
    if !static_env
        && env.has(vars::SESSION_TOKEN)
        && !env.has(vars::ACCESS_KEY_ID)
        && !env.has(vars::SECRET_ACCESS_KEY)
    {
        warnings.push(format!(
            "{} is set without {} and {}, so it is ignored. Set all three or unset it.",
            vars::SESSION_TOKEN,
            vars::ACCESS_KEY_ID,
            vars::SECRET_ACCESS_KEY
        ));
    }
    if !container
        && (env.has(vars::CONTAINER_AUTH_TOKEN) || env.has(vars::CONTAINER_AUTH_TOKEN_FILE))
    {
        warnings.push(format!(
            "a container authorization token is set but neither {} nor {} is, so the {} credential \
             source is incomplete and was skipped. Set the credentials URI or unset the token.",
            vars::CONTAINER_RELATIVE_URI,
            vars::CONTAINER_FULL_URI,
            CredentialSource::Container
        ));
    }
    let imds_unavailable = imds_unavailable(env, opts);
    let source = if static_env {
        Some(CredentialSource::StaticEnv)
    } else if web_identity {
        Some(CredentialSource::WebIdentity)
    } else if container {
        Some(CredentialSource::Container)
    } else if imds_unavailable.is_none() {
        Some(CredentialSource::Imds)
    } else {
        None
    };
    Selection {
        source,
        warnings,
        imds_unavailable,
    }
}

/// Why IMDS may not be used, if it may not.
pub(crate) fn imds_unavailable(env: &AwsEnv, opts: &AwsOptions) -> Option<String> {
    if !opts.imds_allowed {
        Some("is not permitted (cloud_provider_metadata does not include \"aws\")".into())
    } else if env
        .get(vars::EC2_METADATA_DISABLED)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        Some(format!(
            "is disabled ({}=true)",
            vars::EC2_METADATA_DISABLED
        ))
    } else {
        None
    }
}

/// The aws-config provider for the selected source, built once so its state (IMDS token, the
/// container provider's resolved endpoint) is reused across resolutions.
#[derive(Debug)]
pub(crate) enum Provider {
    Static(AwsCredentials),
    WebIdentity {
        provider: WebIdentityTokenCredentialsProvider,
        token_file: PathBuf,
    },
    Container {
        /// Boxed: the largest provider by far, and the enum lives once per identity.
        provider: Box<EcsCredentialsProvider>,
        /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, which aws-config reads on each call.
        token_file: Option<PathBuf>,
    },
    Imds(Imds),
    /// The snapshot could not configure the source (bad IMDS endpoint URL, for instance).
    Misconfigured(CredentialError),
    None(String),
}

/// The proxy of IRSA's AssumeRoleWithWebIdentity call, `None` when it goes direct.
///
/// This is the one AWS call that leaves the host (IMDS and the container endpoints are
/// link-local), so it follows the exchange's proxy rule ([`ProxySettings::resolve`]:
/// `DD_PROXY_*`, then `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, then `proxy.*` of `datadog.yaml`,
/// loopback always direct), as
/// the Agent's IRSA client does. The proxy is chosen by the STS endpoint's scheme: `proxy.https`
/// for the real STS, `proxy.http` for a plain `AWS_ENDPOINT_URL_STS` (a local emulator).
///
/// # Errors
/// A proxy URL aws-config cannot use (only `http://` and `https://` proxies are supported for
/// this call), as a detail naming the setting and the fix.
fn web_identity_proxy(env: &AwsEnv, opts: &AwsOptions) -> Result<Option<ProxyConfig>, String> {
    let proxies = ProxySettings::resolve(&opts.proxy, |name| env.get(name).map(str::to_owned));
    let plain = env
        .get(vars::ENDPOINT_URL_STS)
        .or_else(|| env.get(vars::ENDPOINT_URL))
        .is_some_and(|url| url.trim().to_ascii_lowercase().starts_with("http://"));
    let (which, url) = if plain {
        ("proxy.http", &proxies.http)
    } else {
        ("proxy.https", &proxies.https)
    };
    let Some(url) = url else {
        return Ok(None);
    };
    let config = if plain {
        ProxyConfig::http(url.as_str())
    } else {
        ProxyConfig::https(url.as_str())
    }
    .map_err(|e| {
        format!(
            "{which} (or its environment variable) {} cannot be used for the \
             AssumeRoleWithWebIdentity call to STS ({e}); use an http:// or https:// proxy, or \
             list the STS host in proxy.no_proxy",
            redact_userinfo(url)
        )
    })?
    .no_proxy(proxies.no_proxy.join(","));
    Ok(Some(config))
}

/// Reads a token file the way aws-config will, first, off the workers and bounded: a FIFO, a
/// device or an oversized file there would block a worker thread or grow without bound inside
/// aws-config (which reads it whole, with a blocking read on the calling thread).
async fn check_token_file(path: &Path, source: CredentialSource) -> Result<(), CredentialError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        crate::files::read_regular(&owned, MAX_TOKEN_FILE_BYTES)
            .map(|mut bytes| zeroize::Zeroize::zeroize(&mut bytes))
    });
    let detail = match tokio::time::timeout(TOKEN_FILE_READ_LIMIT, read).await {
        Ok(Ok(Ok(()))) => return Ok(()),
        Ok(Ok(Err(e))) => e.to_string(),
        Ok(Err(e)) => format!("the read failed: {e}"),
        Err(_) => format!(
            "reading it did not finish within {}s",
            TOKEN_FILE_READ_LIMIT.as_secs()
        ),
    };
    Err(CredentialError::TokenFile {
        credential_source: source,
        path: path.to_path_buf(),
        detail,
    })
}

/// Runs one provider call so that a panic inside the SDK (remote input it did not expect)
/// becomes a failed call of that source instead of ending the daemon.
async fn contained<F, T>(source: CredentialSource, call: F) -> Result<T, CredentialError>
where
    F: std::future::Future<Output = T>,
{
    std::panic::AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(source = %source, panic = %what, "The AWS SDK failed on an answer it could not handle; counted as a failed attempt.");
            CredentialError::Provider {
                credential_source: source,
                detail: format!("the AWS SDK could not handle the answer ({what})"),
            }
        })
}

/// Variables aws-config's container provider reads from the process itself.
const CONTAINER_PROCESS_VARS: [&str; 4] = [
    vars::CONTAINER_RELATIVE_URI,
    vars::CONTAINER_FULL_URI,
    vars::CONTAINER_AUTH_TOKEN,
    vars::CONTAINER_AUTH_TOKEN_FILE,
];
/// Variables aws-config's STS client (under the web identity provider) reads from the process.
const WEB_IDENTITY_PROCESS_VARS: [&str; 2] = [vars::ENDPOINT_URL_STS, vars::ENDPOINT_URL];
/// Variables aws-config's IMDS credentials provider reads from the process.
const IMDS_PROCESS_VARS: [&str; 1] = [vars::EC2_METADATA_DISABLED];

impl Provider {
    pub(crate) fn build(selection: &Selection, env: &AwsEnv, opts: &AwsOptions) -> Provider {
        let Some(source) = selection.source else {
            return Provider::None(selection.imds_unavailable.clone().unwrap_or_default());
        };
        let mismatches = match source {
            CredentialSource::StaticEnv => Vec::new(),
            CredentialSource::WebIdentity => env.process_mismatches(&WEB_IDENTITY_PROCESS_VARS),
            CredentialSource::Container => env.process_mismatches(&CONTAINER_PROCESS_VARS),
            CredentialSource::Imds => env.process_mismatches(&IMDS_PROCESS_VARS),
        };
        if !mismatches.is_empty() {
            return Provider::Misconfigured(CredentialError::ProcessEnvMismatch {
                credential_source: source,
                vars: mismatches,
            });
        }
        match source {
            CredentialSource::StaticEnv => Provider::Static(AwsCredentials {
                access_key_id: env
                    .get(vars::ACCESS_KEY_ID)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                secret_access_key: Secret::new(
                    env.get(vars::SECRET_ACCESS_KEY)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                ),
                session_token: env
                    .get(vars::SESSION_TOKEN)
                    .map(|t| Secret::new(t.trim().to_owned())),
                source,
            }),
            CredentialSource::WebIdentity => {
                let token_file =
                    PathBuf::from(env.get(vars::WEB_IDENTITY_TOKEN_FILE).unwrap_or_default());
                // Regional STS as the Agent: configured region, AWS_REGION, AWS_DEFAULT_REGION,
                // then us-east-1. No network lookup: IRSA pods carry AWS_REGION.
                let region = opts
                    .configured_region
                    .clone()
                    .or_else(|| env.get(vars::REGION).map(str::to_owned))
                    .or_else(|| env.get(vars::DEFAULT_REGION).map(str::to_owned))
                    .unwrap_or_else(|| WEB_IDENTITY_FALLBACK_REGION.to_owned());
                let mut config =
                    ProviderConfig::without_region().with_region(Some(Region::new(region)));
                // Answers capped, as every SDK call's (see `capped_client`).
                match web_identity_proxy(env, opts) {
                    Ok(proxy) => config = config.with_http_client(capped_client(proxy)),
                    Err(detail) => {
                        return Provider::Misconfigured(CredentialError::Provider {
                            credential_source: source,
                            detail,
                        });
                    }
                }
                let provider = WebIdentityTokenCredentialsProvider::builder()
                    .static_configuration(StaticConfiguration {
                        web_identity_token_file: token_file.clone(),
                        role_arn: env
                            .get(vars::ROLE_ARN)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                        session_name: env
                            .get(vars::ROLE_SESSION_NAME)
                            .unwrap_or(DEFAULT_WEB_IDENTITY_SESSION)
                            .trim()
                            .to_owned(),
                    })
                    .configure(&config)
                    .build();
                Provider::WebIdentity {
                    provider,
                    token_file,
                }
            }
            CredentialSource::Container => Provider::Container {
                provider: Box::new(
                    EcsCredentialsProvider::builder()
                        .configure(
                            &ProviderConfig::without_region().with_http_client(capped_client(None)),
                        )
                        .build(),
                ),
                token_file: env
                    .get(vars::CONTAINER_AUTH_TOKEN_FILE)
                    .filter(|_| !env.has(vars::CONTAINER_AUTH_TOKEN))
                    .map(|f| PathBuf::from(f.trim())),
            },
            CredentialSource::Imds => match Imds::new(env, opts) {
                Ok(imds) => Provider::Imds(imds),
                Err(detail) => Provider::Misconfigured(CredentialError::Provider {
                    credential_source: CredentialSource::Imds,
                    detail,
                }),
            },
        }
    }

    /// Resolves once, bounded by the source's timeout. Returns the credentials and their expiry.
    pub(crate) async fn resolve(
        &self,
    ) -> Result<(AwsCredentials, Option<SystemTime>), CredentialError> {
        let (source, result) = match self {
            Provider::None(imds) => return Err(CredentialError::NoSource { imds: imds.clone() }),
            Provider::Misconfigured(error) => return Err(error.clone()),
            Provider::Static(creds) => {
                if creds.access_key_id.is_empty() || creds.secret_access_key.is_empty() {
                    return Err(CredentialError::Empty {
                        credential_source: CredentialSource::StaticEnv,
                    });
                }
                return Ok((creds.clone(), None));
            }
            Provider::WebIdentity {
                provider,
                token_file,
            } => {
                // Read first, safely: a missing projected token gets its own message rather than
                // aws-config's generic I/O error, and a FIFO or endless file never reaches it.
                let source = CredentialSource::WebIdentity;
                check_token_file(token_file, source).await?;
                let call = contained(source, provider.provide_credentials());
                let result = bounded(source, WEB_IDENTITY_TIMEOUT, call).await??;
                (source, result)
            }
            Provider::Container {
                provider,
                token_file,
            } => {
                let source = CredentialSource::Container;
                if let Some(token_file) = token_file {
                    check_token_file(token_file, source).await?;
                }
                let call = contained(source, provider.provide_credentials());
                let result = bounded(source, CONTAINER_TIMEOUT, call).await??;
                (source, result)
            }
            Provider::Imds(imds) => return resolve_imds(imds).await,
        };
        match result {
            Ok(creds) => to_aws(&creds, source),
            Err(error) => Err(CredentialError::Provider {
                credential_source: source,
                detail: chain(&error),
            }),
        }
    }
}

async fn bounded<F, T>(
    source: CredentialSource,
    limit: Duration,
    future: F,
) -> Result<T, CredentialError>
where
    F: std::future::Future<Output = T>,
{
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| CredentialError::Timeout {
            credential_source: source,
            after: limit,
        })
}

/// EC2 instance-profile credentials the way aws-config's IMDS provider gets them (the role
/// name, then the role's credentials document), through aws-config's IMDS client, with the
/// role name checked before it becomes part of a request path: a name with a space or a line
/// break made aws-config's request builder panic.
async fn resolve_imds(
    imds: &Imds,
) -> Result<(AwsCredentials, Option<SystemTime>), CredentialError> {
    let budget = imds.timeout() * IMDS_CALLS_PER_RESOLUTION + IMDS_MARGIN;
    let imds_error = |failure: ImdsFailure| match failure {
        ImdsFailure::TokenUnanswered => CredentialError::ImdsTokenUnanswered {
            timeout: imds.timeout(),
            versions: imds.versions(),
        },
        other => CredentialError::Imds {
            detail: other.to_string(),
            endpoint: imds.endpoint().to_owned(),
            timeout: imds.timeout(),
            versions: imds.versions(),
        },
    };
    let attempt = async {
        let listing = imds.get(SECURITY_CREDENTIALS_PATH).await?;
        let role = role_name(&listing)?;
        let document = imds
            .get(&format!("{SECURITY_CREDENTIALS_PATH}{role}"))
            .await?;
        parse_credentials_document(&document)
    };
    match tokio::time::timeout(budget, contained(CredentialSource::Imds, attempt)).await {
        Ok(Ok(result)) => result.map_err(imds_error),
        Ok(Err(panicked)) => Err(panicked),
        Err(_) => Err(imds_error(ImdsFailure::Timeout)),
    }
}

/// The longest IAM role name AWS allows.
const MAX_ROLE_NAME_CHARS: usize = 64;

/// The instance profile's role from IMDS's listing: its first line, which must be an IAM role
/// name (`[A-Za-z0-9+=,.@_-]`, 1–64 characters). Anything else would end up in a request path.
fn role_name(listing: &str) -> Result<&str, ImdsFailure> {
    let role = listing.lines().next().unwrap_or_default().trim();
    if role.is_empty() {
        return Err(ImdsFailure::Status(404));
    }
    let valid = role.len() <= MAX_ROLE_NAME_CHARS
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if valid {
        Ok(role)
    } else {
        Err(ImdsFailure::Other(format!(
            "IMDS returned a role name that is not an IAM role name ({} bytes; IAM role names \
             are 1-{MAX_ROLE_NAME_CHARS} characters of letters, digits and +=,.@_-): is the \
             endpoint really IMDS?",
            listing.len()
        )))
    }
}

/// The role's credentials document (IMDSv2 or v1 alike).
fn parse_credentials_document(
    body: &str,
) -> Result<(AwsCredentials, Option<SystemTime>), ImdsFailure> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Document {
        #[serde(default)]
        code: Option<String>,
        access_key_id: String,
        secret_access_key: String,
        #[serde(default)]
        token: String,
        #[serde(default)]
        expiration: Option<String>,
    }
    let document: Document = serde_json::from_str(body)
        .map_err(|e| ImdsFailure::Other(format!("unreadable credentials document: {e}")))?;
    if let Some(code) = document.code.as_deref().filter(|c| *c != "Success") {
        return Err(ImdsFailure::Other(format!(
            "the credentials document says {code:?} instead of \"Success\""
        )));
    }
    let expiry = document
        .expiration
        .as_deref()
        .and_then(|e| humantime::parse_rfc3339_weak(e).ok());
    Ok((
        AwsCredentials {
            access_key_id: document.access_key_id,
            secret_access_key: Secret::new(document.secret_access_key),
            session_token: Some(Secret::new(document.token)).filter(|t| !t.is_empty()),
            source: CredentialSource::Imds,
        },
        expiry,
    ))
}

fn to_aws(
    creds: &Credentials,
    source: CredentialSource,
) -> Result<(AwsCredentials, Option<SystemTime>), CredentialError> {
    if creds.access_key_id().trim().is_empty() || creds.secret_access_key().trim().is_empty() {
        return Err(CredentialError::Empty {
            credential_source: source,
        });
    }
    Ok((
        AwsCredentials {
            access_key_id: creds.access_key_id().to_owned(),
            secret_access_key: Secret::new(creds.secret_access_key().to_owned()),
            session_token: creds
                .session_token()
                .filter(|t| !t.is_empty())
                .map(|t| Secret::new(t.to_owned())),
            source,
        },
        creds.expiry(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> AwsOptions {
        AwsOptions::default()
    }

    #[test]
    fn irsa_sts_proxy_follows_the_endpoint_scheme_and_the_proxy_rule() {
        let with = |http: Option<&str>, https: Option<&str>| AwsOptions {
            proxy: crate::net::ClientOptions {
                proxy_http: http.map(str::to_owned),
                proxy_https: https.map(str::to_owned),
                ..Default::default()
            },
            ..opts()
        };
        let real = AwsEnv::default();
        let local = AwsEnv::from_pairs([("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:5000")]);
        let proxied = |env: &AwsEnv, o: &AwsOptions| {
            web_identity_proxy(env, o)
                .expect("a usable proxy")
                .is_some()
        };
        assert!(!proxied(&real, &opts()), "no proxy configured: direct");
        assert!(proxied(&real, &with(None, Some("http://proxy:3128"))));
        assert!(
            !proxied(&real, &with(Some("http://proxy:3128"), None)),
            "proxy.http does not apply to the real, HTTPS STS"
        );
        assert!(proxied(&local, &with(Some("http://proxy:3128"), None)));
        assert!(!proxied(&local, &with(None, Some("http://proxy:3128"))));
        // The environment applies when datadog.yaml says nothing, as for the exchange.
        let env_proxy = AwsEnv::from_pairs([("HTTPS_PROXY", "http://envproxy:8080")]);
        assert!(proxied(&env_proxy, &opts()));

        let err = web_identity_proxy(&real, &with(None, Some("socks5://user:hunter2@proxy:1080")))
            .unwrap_err();
        assert!(err.starts_with("proxy.https"), "{err}");
        assert!(err.contains("socks5://***@proxy:1080"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn a_panic_inside_a_provider_call_is_a_failed_call() {
        let failed = contained(CredentialSource::Imds, async {
            if true {
                panic!("uri parse failed");
            }
            1
        })
        .await
        .unwrap_err();
        let text = failed.to_string();
        assert!(
            text.starts_with(
                "EC2 IMDS: the AWS SDK could not handle the answer (uri parse failed)"
            ),
            "{text}"
        );
        assert_eq!(
            contained(CredentialSource::Imds, async { 7 })
                .await
                .unwrap(),
            7
        );
    }

    #[test]
    fn display_names_are_the_agents() {
        assert_eq!(
            CredentialSource::StaticEnv.to_string(),
            "static environment variables"
        );
        assert_eq!(
            CredentialSource::WebIdentity.to_string(),
            "IRSA web identity"
        );
        assert_eq!(
            CredentialSource::Container.to_string(),
            "ECS/EKS container credentials"
        );
        assert_eq!(CredentialSource::Imds.to_string(), "EC2 IMDS");
    }

    #[test]
    fn precedence_is_first_match() {
        let all = [
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_ROLE_ARN", "arn"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
        ];
        let expect = [
            CredentialSource::StaticEnv,
            CredentialSource::StaticEnv,
            CredentialSource::WebIdentity,
            CredentialSource::WebIdentity,
            CredentialSource::Container,
        ];
        for start in [0, 2, 4] {
            let env = AwsEnv::from_pairs(all[start..].iter().copied());
            assert_eq!(
                select(&env, &opts()).source,
                Some(expect[start]),
                "from {start}"
            );
        }
        assert_eq!(
            select(&AwsEnv::default(), &opts()).source,
            Some(CredentialSource::Imds)
        );
        let full =
            AwsEnv::from_pairs([("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/x")]);
        assert_eq!(
            select(&full, &opts()).source,
            Some(CredentialSource::Container)
        );
    }

    #[test]
    fn half_set_pairs_are_skipped_with_a_warning_naming_the_missing_variable() {
        let env = AwsEnv::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"),
        ]);
        let selection = select(&env, &opts());
        assert_eq!(selection.source, Some(CredentialSource::Container));
        assert_eq!(selection.warnings.len(), 2, "{:?}", selection.warnings);
        assert!(
            selection.warnings[0]
                .starts_with("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
        );
        assert!(selection.warnings[0].contains("static environment variables"));
        assert!(
            selection.warnings[1]
                .starts_with("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not")
        );
        assert!(selection.warnings[1].contains("IRSA web identity"));

        let only_secret = AwsEnv::from_pairs([("AWS_SECRET_ACCESS_KEY", "s")]);
        let selection = select(&only_secret, &opts());
        assert_eq!(selection.source, Some(CredentialSource::Imds));
        assert!(selection.warnings[0].contains("AWS_ACCESS_KEY_ID is not"));

        let token_only = AwsEnv::from_pairs([
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "t"),
            ("AWS_SESSION_TOKEN", "x"),
        ]);
        let warnings = select(&token_only, &opts()).warnings;
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("AWS_SESSION_TOKEN is set without"))
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("container authorization token"))
        );
    }

    #[test]
    fn no_source_when_imds_is_not_permitted_or_disabled() {
        let mut options = opts();
        options.imds_allowed = false;
        let selection = select(&AwsEnv::default(), &options);
        assert_eq!(selection.source, None);
        assert!(
            selection
                .imds_unavailable
                .unwrap()
                .contains("cloud_provider_metadata")
        );
        let disabled = AwsEnv::from_pairs([("AWS_EC2_METADATA_DISABLED", "TRUE")]);
        let selection = select(&disabled, &opts());
        assert_eq!(selection.source, None);
        assert!(
            selection
                .imds_unavailable
                .unwrap()
                .contains("AWS_EC2_METADATA_DISABLED")
        );
    }

    #[tokio::test]
    async fn no_source_error_names_every_mechanism() {
        let mut options = opts();
        options.imds_allowed = false;
        let env = AwsEnv::default();
        let provider = Provider::build(&select(&env, &options), &env, &options);
        let err = provider.resolve().await.unwrap_err();
        let text = err.to_string();
        for needle in [
            "AWS_ACCESS_KEY_ID",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "_FULL_URI",
            "EC2 IMDS is not permitted",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert_eq!(err.credential_source(), None);
    }

    #[tokio::test]
    async fn static_env_resolves_without_network() {
        let env = AwsEnv::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", ""),
        ]);
        let provider = Provider::build(&select(&env, &opts()), &env, &opts());
        let (creds, expiry) = provider.resolve().await.unwrap();
        assert_eq!(creds.access_key_id, "AKIAEXAMPLE");
        assert_eq!(creds.secret_access_key.expose(), "secret");
        assert!(creds.session_token.is_none());
        assert_eq!(expiry, None);
        assert!(!format!("{creds:?}").contains("secret\""));
    }

    #[test]
    fn each_error_names_its_source_and_only_its_fix() {
        let errors = [
            (
                CredentialError::Provider {
                    credential_source: CredentialSource::Container,
                    detail: "HTTP 401".into(),
                },
                "ECS/EKS container credentials",
                "Pod Identity association",
            ),
            (
                CredentialError::TokenFile {
                    credential_source: CredentialSource::WebIdentity,
                    path: "/var/run/secrets/token".into(),
                    detail: "No such file".into(),
                },
                "IRSA web identity",
                "eks.amazonaws.com/role-arn",
            ),
            (
                CredentialError::ImdsTokenUnanswered {
                    timeout: Duration::from_millis(300),
                    versions: "v2 only",
                },
                "EC2 IMDS",
                "--http-put-response-hop-limit 2",
            ),
        ];
        for (error, name, fix) in errors {
            let text = error.to_string();
            assert!(text.starts_with(name), "{text}");
            assert!(text.contains(fix), "{text}");
            for other in [
                "eks.amazonaws.com/role-arn",
                "Pod Identity association",
                "hop-limit",
                "instance profile",
                "AWS_SESSION_TOKEN for",
            ] {
                if other != fix && !fix.contains(other) {
                    assert!(
                        !text.contains(other),
                        "{name} error mentions another source's fix {other}: {text}"
                    );
                }
            }
        }
    }
}

//! The Datadog half of `doctor`: the mapping to create, a real intake-key exchange, and a real
//! delegated-token exchange per configured token, each failure with its fix.

use super::*;

/// The `mapping` check: the pattern to create for `arn`.
pub(super) fn mapping_check(arn: &str) -> Check {
    match suggest_intake_pattern(arn) {
        Some(pattern) => {
            let command =
                format!("datadog-delegated-auth mapping create --arn-pattern '{pattern}'");
            Check::ok(
                "mapping",
                format!(
                    "the intake mapping for this identity is {pattern} (create it with: {command})"
                ),
            )
            .data("pattern", pattern)
            .data("command", command)
        }
        None => Check::warn(
            "mapping",
            format!("no intake-mapping pattern can be derived from {arn}"),
            "Agents should run as an IAM role (instance profile, task role, IRSA, Pod Identity), \
             whose sessions a pattern arn:aws:sts::<account>:assumed-role/<role>/* admits",
        )
        .data("caller_arn", arn.to_owned()),
    }
}

/// The `exchange` check: a real exchange at the instance's intake-key URL.
pub(super) async fn exchange_check(
    client: &ExchangeClient,
    spec: &DelegatedSpec,
    proof: &Secret,
    mapping: &Check,
    clock_failed: bool,
) -> Check {
    let target = intake_key_url(&spec.exchange_target);
    // What is shown: never the userinfo of a proxy-style dd_url.
    let url = crate::secret::redact_userinfo(&target);
    match client.exchange(&target, proof).await {
        Ok(key) => Check::ok(
            "exchange",
            format!(
                "Datadog issued a managed API key ({}) for org {} at {url}",
                key.redacted(),
                spec.org_uuid
            ),
        )
        .data("url", url),
        Err(e) => exchange_failure(
            "exchange",
            &e,
            &url,
            &Endpoint {
                org_uuid: &spec.org_uuid,
                base: &spec.exchange_target,
                decided_by: INTAKE_URL_SOURCE,
            },
            mapping,
            clock_failed,
        ),
    }
}

/// Where an exchange went, for its fixes.
pub(super) struct Endpoint<'a> {
    /// The org the proof is bound to.
    pub(super) org_uuid: &'a str,
    /// The endpoint as configured (for the network fix).
    pub(super) base: &'a str,
    /// The settings that decide the URL.
    pub(super) decided_by: &'static str,
}

/// A failed exchange (intake key or token): the finding, the fix, and the server's detail and
/// the caller ARN it names as data.
pub(super) fn exchange_failure(
    name: impl Into<Cow<'static, str>>,
    e: &ExchangeError,
    url: &str,
    endpoint: &Endpoint<'_>,
    mapping: &Check,
    clock_failed: bool,
) -> Check {
    let caller = e.detail().and_then(authenticated_arn);
    let fix = exchange_fix(e, mapping, caller.as_deref(), clock_failed, endpoint);
    let mut check = Check::fail(name, exchange_finding(e, url), fix)
        .data("url", url.to_owned())
        .data("error_kind", e.kind().as_str());
    if let Some(detail) = e.detail() {
        check = check.data("detail", detail.to_owned());
    }
    if let ExchangeError::TokenRefused { .. } = e
        && let Some((pattern, command)) = persona_mapping(mapping, caller.as_deref())
    {
        check = check.data("pattern", pattern).data("command", command);
    }
    if let Some(arn) = caller {
        check = check.data("caller_arn", arn);
    }
    check
}

/// A `token exchange (<name>)` check: a real exchange of `proof` (signed for the token's org)
/// at `<api_url>/api/v2/delegated-token`. The token is dropped unseen; only its lifetime shows.
pub(super) async fn token_check(
    name: String,
    client: &ExchangeClient,
    token: &TokenSpec,
    proof: &Secret,
    mapping: &Check,
    clock_failed: bool,
) -> Check {
    let target = format!("{}{DELEGATED_TOKEN_PATH}", token.api_url);
    // What is shown: never the userinfo of an api_url.
    let url = crate::secret::redact_userinfo(&target);
    match client.delegated_token(&target, proof).await {
        Ok(issued) => {
            let lifetime = issued
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let expires_at = humantime::format_rfc3339_seconds(issued.expires_at).to_string();
            let mut finding = format!(
                "Datadog issued a delegated API token for org {} at {url}, valid for {} (until \
                 {expires_at})",
                token.org_uuid,
                approximate(lifetime)
            );
            if issued.expiry_assumed {
                finding.push_str(&format!(
                    "; the answer had no usable `expires`, so {} was assumed, as the Datadog API \
                     clients do",
                    approximate(crate::exchange::DEFAULT_TOKEN_LIFETIME)
                ));
            }
            let margin = crate::schedule::token_margin(lifetime, token.refresh_before);
            let check = match token.refresh_before {
                Some(wanted) if wanted > margin => Check::warn(
                    name,
                    finding,
                    format!(
                        "refresh_before ({}) is over half the token's lifetime, so the daemon \
                         refreshes it in its last {} instead; lower refresh_before (or leave it \
                         unset: a quarter of the lifetime, at least a minute)",
                        humantime::format_duration(wanted),
                        approximate(margin)
                    ),
                ),
                _ => Check::ok(name, finding),
            };
            check
                .data("url", url)
                .data("lifetime_seconds", lifetime.as_secs())
                .data("expires_at", expires_at)
                .data("expiry_assumed", issued.expiry_assumed)
        }
        Err(e) => exchange_failure(
            name,
            &e,
            &url,
            &Endpoint {
                org_uuid: &token.org_uuid,
                base: &token.api_url,
                decided_by: TOKEN_URL_SOURCE,
            },
            mapping,
            clock_failed,
        ),
    }
}

/// A lifetime as a person reads it: whole minutes from two minutes up (a token minted for an
/// hour is "1h", not "59m 59s" a moment later), whole seconds below.
pub(super) fn approximate(d: Duration) -> humantime::FormattedDuration {
    let secs = d.as_secs_f64().round() as u64;
    let secs = if secs >= 120 {
        (secs + 30) / 60 * 60
    } else {
        secs
    };
    humantime::format_duration(Duration::from_secs(secs))
}

/// The persona mapping to create for the caller: the pattern (as for the intake mapping: the
/// `mapping` check's, else derived from the ARN Datadog reported) and the command, whose
/// account identifier is [`ACCOUNT_PLACEHOLDER`].
pub(super) fn persona_mapping(mapping: &Check, caller: Option<&str>) -> Option<(String, String)> {
    let pattern = mapping
        .data
        .get("pattern")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| caller.and_then(suggest_intake_pattern))?;
    let command = format!(
        "datadog-delegated-auth mapping create --persona --arn-pattern '{pattern}' \
         --account-identifier {ACCOUNT_PLACEHOLDER}"
    );
    Some((pattern, command))
}

pub(super) fn exchange_finding(e: &ExchangeError, url: &str) -> String {
    match e {
        ExchangeError::Unauthorized { status, detail } => format!(
            "Datadog refused the proof at {url} (HTTP {status}){}",
            detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        ExchangeError::TokenRefused { status, detail } => format!(
            "Datadog refused the proof for a delegated API token at {url} (HTTP {status}){}",
            detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        other => format!("{other} (at {url})"),
    }
}

pub(super) fn exchange_fix(
    e: &ExchangeError,
    mapping: &Check,
    caller: Option<&str>,
    clock_failed: bool,
    endpoint: &Endpoint<'_>,
) -> String {
    let org = endpoint.org_uuid;
    match e {
        ExchangeError::Unauthorized { detail, .. } => {
            let detail = detail.as_deref().unwrap_or_default().to_ascii_lowercase();
            if detail.contains("no identity mapping") || detail.contains("mapping") {
                let command = mapping
                    .data
                    .get("command")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| {
                        caller.and_then(suggest_intake_pattern).map(|p| {
                            format!("datadog-delegated-auth mapping create --arn-pattern '{p}'")
                        })
                    });
                match command {
                    Some(command) => format!(
                        "create the mapping above: `{command}` (with DD_API_KEY and DD_APP_KEY \
                         of org {org}), then run doctor again"
                    ),
                    None => format!(
                        "create an intake mapping for this identity in org {org} \
                         (`datadog-delegated-auth mapping create --arn-pattern …`)"
                    ),
                }
            } else if clock_failed
                || detail.contains("date")
                || detail.contains("clock")
                || detail.contains("expired")
            {
                CLOCK_FIX.to_owned()
            } else {
                format!(
                    "check that org_uuid {org} is the org that holds the intake mapping, that the \
                     AWS account is integrated with Datadog (the Datadog-AWS integration), and the \
                     server's detail above"
                )
            }
        }
        ExchangeError::Throttled { .. } => {
            "Datadog is rate limiting exchanges; wait a minute and run doctor again".to_owned()
        }
        ExchangeError::Unavailable { .. } => format!(
            "check network access to {} (and proxy.https / HTTPS_PROXY), or retry later if \
             Datadog answered 5xx",
            crate::secret::redact_userinfo(endpoint.base)
        ),
        ExchangeError::TokenRefused { detail, .. } => {
            let detail = detail.as_deref().unwrap_or_default().to_ascii_lowercase();
            let names_mapping = detail.contains("mapping");
            if !names_mapping
                && (clock_failed
                    || detail.contains("date")
                    || detail.contains("clock")
                    || detail.contains("expired"))
            {
                return CLOCK_FIX.to_owned();
            }
            let create = match persona_mapping(mapping, caller) {
                Some((_, command)) => format!(
                    "create a persona mapping for this identity in org {org}: `{command}` (with \
                     DD_API_KEY and DD_APP_KEY of org {org}; {ACCOUNT_PLACEHOLDER} is for you to \
                     fill, doctor cannot know it: the email of the user, or the UUID or email of \
                     the service account, that the token acts as), then run doctor again"
                ),
                None => format!(
                    "create a persona mapping for this identity in org {org} \
                     (`datadog-delegated-auth mapping create --persona --arn-pattern … \
                     --account-identifier {ACCOUNT_PLACEHOLDER}`)"
                ),
            };
            if names_mapping {
                create
            } else {
                format!(
                    "{create}; if one exists, check that org_uuid {org} is the org that holds it \
                     and the server's detail above"
                )
            }
        }
        ExchangeError::InvalidResponse { .. }
        | ExchangeError::InsecureUrl { .. }
        | ExchangeError::Client { .. } => {
            format!(
                "check {}: they decide the exchange URL",
                endpoint.decided_by
            )
        }
    }
}

/// The ARN in Datadog's "Authenticated as <arn> but no identity mapping was found." detail.
pub(super) fn authenticated_arn(detail: &str) -> Option<String> {
    let start = detail.find("arn:")?;
    let arn: String = detail[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let arn = arn.trim_end_matches(['.', ',', ';']).to_owned();
    (arn.matches(':').count() >= 5).then_some(arn)
}

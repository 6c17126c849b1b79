//! `datadog-delegated-auth doctor`: an end-to-end check of everything delegated auth needs on
//! this host, each step with its finding and, when it fails, the fix (product §8).
//!
//! Checks, in order (each is `ok`, `warn`, `fail`, or `skip` when a step it needs failed):
//!
//! 1. `config` — the configuration loaded, and which instance is tested (`--instance`, default
//!    `api_key` when it uses delegated auth, else the first instance that does).
//! 2. `environment` — the environment kind (`ec2`, `ecs`, `eks-irsa`, `eks-pod-identity`,
//!    `static-env`, or `none` with the reason) and the credential source.
//! 3. `credentials` — the source's credentials resolve (errors name the source and its fix).
//! 4. `region` — the signing region, where it came from, and the STS host the proof names.
//! 5. `clock` — the offset of the local clock from the `Date` header of STS's answer to the
//!    request below: over [`CLOCK_WARN`] warns, over [`CLOCK_FAIL`] fails (Datadog refuses proofs
//!    whose `X-Amz-Date` is more than 5 minutes off).
//! 6. `caller` — the caller ARN from a fresh signed `GetCallerIdentity` actually sent to STS:
//!    exactly the request the proof carries (built by [`crate::aws::build_proof`] and decoded
//!    again), so what STS says here is what Datadog will hear when it replays the proof.
//!    `AWS_ENDPOINT_URL_STS` (or `AWS_ENDPOINT_URL`) changes where it is sent, not the signed
//!    `Host` (tests point it at moto, as the Datadog emulator does).
//! 7. `mapping` — the intake-mapping pattern that admits this identity
//!    ([`crate::arn_pattern::suggest_intake_pattern`]) and the command that creates it.
//! 8. `exchange` — a real exchange of that proof at the instance's intake-key URL. On success the
//!    managed key is shown redacted (last five characters) and then dropped.
//! 9. `token exchange (<name>)`, one per delegated API token of the settings file (`tokens:`,
//!    product §13) — a real exchange at `<api_url>/api/v2/delegated-token` with a proof signed
//!    for the token's org, by the same credentials and HTTP client as the `exchange` check. On
//!    success it shows the token's lifetime (and whether `expires` was missing, so 15 minutes
//!    were assumed), never the token (at most [`Secret::redacted`]); it warns when
//!    `refresh_before` is over half the lifetime (the daemon caps it there). A refusal (401/403,
//!    [`ExchangeError::TokenRefused`]) names the persona mapping to create: the pattern derived
//!    from the caller ARN as for `mapping`, and the `mapping create --persona` command, whose
//!    `--account-identifier` (the user or service account the token acts as) doctor cannot know
//!    and leaves as a placeholder. Other failures get the same fixes as `exchange`. Configured
//!    tokens with no instance using delegated auth are still tested (`exchange` is skipped).
//!
//! STS being unreachable is only a warning: the daemon never calls STS itself (Datadog does), so
//! a host without a route to STS can still work; the exchange check then says whether it does.

use std::borrow::Cow;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};

use crate::arn_pattern::suggest_intake_pattern;
use crate::aws::{
    AwsEnv, AwsOptions, CredentialError, CredentialSource, EnvironmentKind, HOP_LIMIT_FIX,
    Identity, build_proof, decode_proof, env::vars, remediation, sts_endpoint,
};
use crate::config::{AgentConfig, Config, ConfigErrors, DelegatedSpec, InstanceSpec, TokenSpec};
use crate::exchange::{DELEGATED_TOKEN_PATH, ExchangeClient, ExchangeError, intake_key_url};
use crate::net::{ClientOptions, USER_AGENT};
use crate::secret::Secret;

mod exchange_checks;
mod sts;

use exchange_checks::*;
use sts::*;

/// Clock offset above which `clock` warns.
pub const CLOCK_WARN: Duration = Duration::from_secs(60);
/// Clock offset above which `clock` fails: Datadog refuses proofs more than 5 minutes off.
pub const CLOCK_FAIL: Duration = Duration::from_secs(5 * 60);
/// Bound on the GetCallerIdentity round trip. STS answers in well under a second; 10 s leaves
/// room for a slow proxy without making doctor hang on a black-holed route.
pub const STS_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest STS answer read (a GetCallerIdentity answer is under 1 KiB).
const MAX_STS_RESPONSE_BYTES: usize = 64 * 1024;
/// The org header value signed when no instance uses delegated auth: STS ignores it, and the
/// proof is then only used for the `caller` check, never sent to Datadog.
const PLACEHOLDER_ORG: &str = "00000000-0000-0000-0000-000000000000";
/// The fix for `environment: none`.
const NO_ENVIRONMENT_FIX: &str = "run the daemon where an AWS identity is available: an EC2 \
     instance with an instance profile (IMDS reachable, cloud_provider_metadata including aws), \
     an ECS task with a task role, an EKS pod with IRSA or Pod Identity, or set \
     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";
/// The fix for a skewed clock.
const CLOCK_FIX: &str = "sync the clock: chrony/ntp (`chronyc tracking` or `timedatectl status` \
     shows the state; on EC2 use the Amazon Time Sync Service at 169.254.169.123)";
/// The `--account-identifier` of the suggested persona mapping: the user or service account a
/// token acts as is a choice of the org's admins, not something doctor can find out.
pub const ACCOUNT_PLACEHOLDER: &str = "<service-account-or-user-email>";
/// What decides the intake exchange's URL (for the fix of an unusable URL or answer).
const INTAKE_URL_SOURCE: &str = "site and dd_url (or the DELA endpoint)";
/// What decides a token exchange's URL.
const TOKEN_URL_SOURCE: &str =
    "the token's site or api_url in the settings file (or site in datadog.yaml)";

/// `doctor` options.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct DoctorArgs {
    /// Print the checks as a JSON array (name, status, finding, fix, data).
    #[arg(long)]
    pub json: bool,
    /// The instance whose org and endpoint the test exchange uses (default: api_key when it
    /// uses delegated auth, else the first instance that does).
    #[arg(long, value_name = "INSTANCE")]
    pub instance: Option<String>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but something deserves attention.
    Warn,
    /// Delegated auth cannot work until this is fixed.
    Fail,
    /// Not run, because a check it depends on failed.
    Skip,
}

impl Status {
    fn tag(self) -> &'static str {
        match self {
            Status::Ok => "[ok]  ",
            Status::Warn => "[warn]",
            Status::Fail => "[FAIL]",
            Status::Skip => "[skip]",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    /// Stable name: `config`, `environment`, `credentials`, `region`, `clock`, `caller`,
    /// `mapping`, `exchange`, and `token exchange (<name>)` per delegated API token.
    pub name: Cow<'static, str>,
    /// The outcome.
    pub status: Status,
    /// One line saying what was found.
    pub finding: String,
    /// What to do, for `fail` and `warn`.
    pub fix: Option<String>,
    /// Machine-readable values (environment kind, region, caller ARN, pattern, offset, …).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
}

impl Check {
    fn new(
        name: impl Into<Cow<'static, str>>,
        status: Status,
        finding: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status,
            finding: finding.into(),
            fix: None,
            data: Map::new(),
        }
    }

    fn ok(name: impl Into<Cow<'static, str>>, finding: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, finding)
    }

    fn warn(
        name: impl Into<Cow<'static, str>>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, Status::Warn, finding).fix(fix)
    }

    fn fail(
        name: impl Into<Cow<'static, str>>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, Status::Fail, finding).fix(fix)
    }

    fn skip(name: impl Into<Cow<'static, str>>, finding: impl Into<String>) -> Check {
        Check::new(name, Status::Skip, finding)
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    fn data(mut self, key: &str, value: impl Into<Value>) -> Check {
        self.data.insert(key.to_owned(), value.into());
        self
    }
}

/// Runs `doctor` with a loaded configuration and prints the report; returns 0 when no check
/// failed, 1 otherwise.
pub async fn run(args: &DoctorArgs, cfg: &Config, env: AwsEnv, out: &mut dyn Write) -> u8 {
    run_with(args, Ok(cfg), env, out).await
}

/// [`run`], also when the configuration did not load: the `config` check then fails with the
/// problems, and the AWS checks still run (with the Agent's defaults for the IMDS settings).
pub async fn run_with(
    args: &DoctorArgs,
    cfg: Result<&Config, &ConfigErrors>,
    env: AwsEnv,
    out: &mut dyn Write,
) -> u8 {
    let checks = diagnose(args, cfg, env).await;
    if args.json {
        let text = serde_json::to_string_pretty(&checks).unwrap_or_default();
        let _ = writeln!(out, "{text}");
    } else {
        render(&checks, out);
    }
    exit_code(&checks)
}

/// 1 when any check failed, else 0.
pub fn exit_code(checks: &[Check]) -> u8 {
    u8::from(checks.iter().any(|c| c.status == Status::Fail))
}

/// The text report: one line per check (tag, name, finding), then the fix indented.
pub fn render(checks: &[Check], out: &mut dyn Write) {
    for check in checks {
        let _ = writeln!(
            out,
            "{} {:<11} {}",
            check.status.tag(),
            check.name,
            check.finding
        );
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "{:19}fix: {fix}", "");
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    let _ = match (failed, warned) {
        (0, 0) => writeln!(out, "All checks passed."),
        (0, w) => writeln!(out, "No check failed; {w} warning(s)."),
        (f, _) => writeln!(out, "{f} check(s) failed."),
    };
}

/// Runs every check (see the module doc) and returns them in order.
pub async fn diagnose(
    args: &DoctorArgs,
    cfg: Result<&Config, &ConfigErrors>,
    env: AwsEnv,
) -> Vec<Check> {
    let mut checks = Vec::new();

    // 1. config, and the instance under test.
    let (config_check, spec) = config_check(args, cfg);
    checks.push(config_check);
    let agent = cfg.ok().map(|c| &c.agent);
    let delegated = spec.and_then(|s| s.delegated.as_ref());

    // 2. environment.
    let opts = cfg.ok().map(AwsOptions::from_config).unwrap_or_default();
    let identity = Identity::new(opts, env.clone());
    let detection = identity.detect().await;
    let mut environment = match detection.kind {
        EnvironmentKind::None => Check::fail(
            "environment",
            format!(
                "none: {}",
                detection
                    .reason
                    .as_deref()
                    .unwrap_or("no AWS identity found")
            ),
            NO_ENVIRONMENT_FIX,
        ),
        kind => Check::ok(
            "environment",
            format!(
                "{kind}, credentials from {}",
                detection
                    .source
                    .map_or_else(|| "an unknown source".to_owned(), |s| s.to_string())
            ),
        ),
    }
    .data("kind", detection.kind.to_string())
    .data("source", detection.source.map(|s| s.to_string()));
    if !identity.warnings().is_empty() && environment.status == Status::Ok {
        environment.status = Status::Warn;
        environment.finding = format!(
            "{}; {}",
            environment.finding,
            identity.warnings().join("; ")
        );
        environment.fix = Some(
            "each warning names the variable to set or unset; a half-set source is skipped"
                .to_owned(),
        );
    }
    checks.push(environment);

    // 3. credentials.
    let creds = if detection.kind == EnvironmentKind::None {
        checks.push(Check::skip(
            "credentials",
            "not tried: no credential source (see environment)",
        ));
        None
    } else {
        match identity.credentials().await {
            Ok(creds) => {
                checks.push(
                    Check::ok(
                        "credentials",
                        format!(
                            "resolved from {}: {} access key {}",
                            creds.source,
                            if creds.session_token.is_some() {
                                "temporary"
                            } else {
                                "long-term"
                            },
                            short_key_id(&creds.access_key_id)
                        ),
                    )
                    .data("source", creds.source.to_string())
                    .data("temporary", creds.session_token.is_some()),
                );
                Some(creds)
            }
            Err(e) => {
                checks.push(credentials_failure(&e));
                None
            }
        }
    };

    // 4. region and STS host.
    let region = identity
        .region(delegated.and_then(|d| d.region.as_deref()))
        .await;
    let endpoint = sts_endpoint(region.as_deref());
    let region_source = region_source(delegated, agent, &env, region.is_some());
    let sts_override = sts_override(&env);
    let mut region_check = Check::ok(
        "region",
        match &region {
            Some(r) => format!("{r} (from {region_source}); STS host {}", endpoint.host),
            None => format!(
                "none found ({region_source}): the global STS host {}, signed as {}",
                endpoint.host, endpoint.signing_region
            ),
        },
    )
    .data("region", region.clone())
    .data("region_source", region_source)
    .data("sts_host", endpoint.host.clone())
    .data("signing_region", endpoint.signing_region.clone());
    if let Some((var, url)) = &sts_override {
        region_check.finding.push_str(&format!(
            "; doctor sends its STS request to {url} ({var}), keeping the signed Host"
        ));
        region_check = region_check.data("sts_url", url.clone());
    }
    checks.push(region_check);

    // 5–6. clock and caller, from one GetCallerIdentity sent to STS.
    let client_opts = agent
        .map(|a| ClientOptions::from_agent(a, STS_TIMEOUT))
        .unwrap_or_else(|| ClientOptions {
            timeout: STS_TIMEOUT,
            ..ClientOptions::default()
        });
    let http = ExchangeClient::with_env(&client_opts, |k| env.get(k).map(str::to_owned));
    let org = delegated.map_or(PLACEHOLDER_ORG, |d| d.org_uuid.as_str());
    let target = sts_override
        .as_ref()
        .map_or_else(|| endpoint.url.clone(), |(_, url)| url.clone());
    let (clock, caller, proof) = match (&creds, &http) {
        (None, _) => (
            Check::skip(
                "clock",
                "not measured: no credentials to sign the STS request",
            ),
            Check::skip("caller", "not asked: no credentials (see credentials)"),
            None,
        ),
        (Some(_), Err(e)) => (
            Check::skip("clock", "not measured: no HTTP client"),
            Check::fail(
                "caller",
                e.to_string(),
                "fix proxy.* in datadog.yaml (or HTTPS_PROXY in the environment)",
            ),
            None,
        ),
        (Some(creds), Ok(http)) => {
            sts_checks(
                http.http(),
                creds,
                org,
                region.as_deref(),
                &endpoint.host,
                &target,
            )
            .await
        }
    };
    let clock_failed = clock.status == Status::Fail;
    let caller_arn = caller
        .data
        .get("arn")
        .and_then(Value::as_str)
        .map(str::to_owned);
    checks.push(clock);
    checks.push(caller);

    // 7. the mapping to create.
    let mapping_index = checks.len();
    checks.push(match &caller_arn {
        Some(arn) => mapping_check(arn),
        None => Check::skip(
            "mapping",
            "no caller ARN to derive a pattern from (see caller)",
        ),
    });

    // 8. the test exchange, with the client the daemon would use (also for the tokens).
    let tokens = cfg.ok().map_or(&[][..], |c| c.tokens.as_slice());
    let exchanger = || {
        ExchangeClient::with_env(
            &agent
                .map(|a| ClientOptions::from_agent(a, crate::net::DEFAULT_TIMEOUT))
                .unwrap_or_default(),
            |k| env.get(k).map(str::to_owned),
        )
    };
    let client = (delegated.is_some() || !tokens.is_empty()).then(exchanger);
    let exchange = match (delegated, &proof, &http, &client) {
        (None, _, _, _) => Check::skip("exchange", "not tried: no instance to test (see config)"),
        (Some(_), None, _, _) | (Some(_), _, Err(_), _) | (Some(_), _, _, None) => Check::skip(
            "exchange",
            "not tried: no signed proof (see the checks above)",
        ),
        (Some(spec), Some(proof), Ok(_), Some(client)) => match client {
            Ok(client) => {
                exchange_check(client, spec, proof, &checks[mapping_index], clock_failed).await
            }
            Err(e) => Check::fail("exchange", e.to_string(), "fix proxy.* (or HTTPS_PROXY)"),
        },
    };
    // Without a caller ARN from STS, Datadog's refusal names the identity it saw: suggest from it.
    if checks[mapping_index].status == Status::Skip
        && let Some(arn) = exchange.data.get("caller_arn").and_then(Value::as_str)
    {
        checks[mapping_index] = mapping_check(arn);
    }
    checks.push(exchange);

    // 9. a test exchange per delegated API token, each with a proof for the token's org.
    for token in tokens {
        let name = format!("token exchange ({})", token.name);
        let check = match (&creds, &http, &client) {
            (Some(creds), Ok(_), Some(Ok(client))) => {
                let region = identity.region(token.region.as_deref()).await;
                let proof = build_proof(
                    creds,
                    &token.org_uuid,
                    region.as_deref(),
                    SystemTime::now(),
                    USER_AGENT,
                );
                match proof {
                    Ok(proof) => {
                        token_check(
                            name,
                            client,
                            token,
                            &proof,
                            &checks[mapping_index],
                            clock_failed,
                        )
                        .await
                    }
                    Err(e) => Check::fail(name, e.to_string(), remediation(creds.source)),
                }
            }
            (Some(_), Ok(_), Some(Err(e))) => {
                Check::fail(name, e.to_string(), "fix proxy.* (or HTTPS_PROXY)")
            }
            _ => Check::skip(name, "not tried: no signed proof (see the checks above)"),
        };
        checks.push(
            check
                .data("token", token.name.clone())
                .data("org_uuid", token.org_uuid.clone()),
        );
    }
    checks
}

/// The `config` check and the instance under test.
fn config_check<'c>(
    args: &DoctorArgs,
    cfg: Result<&'c Config, &ConfigErrors>,
) -> (Check, Option<&'c InstanceSpec>) {
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(errors) => {
            let first = errors
                .0
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            return (
                Check::fail(
                    "config",
                    format!(
                        "the configuration has {} error(s), the first: {first}",
                        errors.0.len()
                    ),
                    "run `datadog-delegated-auth check-config` to see every problem, fix them, \
                     and run doctor again",
                )
                .data("errors", errors.0.len()),
                None,
            );
        }
    };
    let names = || {
        cfg.instances
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let spec = match &args.instance {
        Some(name) => match cfg.instance(name) {
            None => {
                return (
                    Check::fail(
                        "config",
                        format!("no instance named {name:?} (instances: {})", names()),
                        "pass --instance with one of the names above",
                    ),
                    None,
                );
            }
            Some(spec) if spec.invalid.is_some() => {
                let problem = spec.invalid.as_ref().expect("matched");
                return (
                    Check::fail(
                        "config",
                        format!(
                            "instance {name} is invalid and stays inert: {}",
                            problem.message
                        ),
                        problem.fix.clone(),
                    ),
                    None,
                );
            }
            Some(spec) if spec.delegated.is_none() => {
                return (
                    Check::fail(
                        "config",
                        format!("instance {name} does not use delegated auth (static key only)"),
                        "set its section's delegated_auth.org_uuid (or pick another --instance)",
                    ),
                    Some(spec),
                );
            }
            Some(spec) => spec,
        },
        None => {
            let delegated = |i: &&InstanceSpec| i.delegated.is_some();
            match cfg
                .instance("api_key")
                .filter(delegated)
                .or_else(|| cfg.instances.iter().find(delegated))
            {
                Some(spec) => spec,
                None if !cfg.tokens.is_empty() => {
                    // Tokens alone are a working configuration: they are tested below.
                    let check = Check::ok(
                        "config",
                        format!(
                            "loaded {}: {} instance(s), none using delegated auth (no intake \
                             exchange to test); {}",
                            cfg.paths.config.display(),
                            cfg.instances.len(),
                            describe_tokens(&cfg.tokens)
                        ),
                    )
                    .data("tokens", token_names(&cfg.tokens));
                    return (config_warnings(cfg, check), None);
                }
                None => {
                    return (
                        Check::fail(
                            "config",
                            format!(
                                "no instance uses delegated auth in {}",
                                cfg.paths.config.display()
                            ),
                            "set delegated_auth.org_uuid in datadog.yaml (or a product \
                             section's delegated_auth.org_uuid, or a DELA[...] directive)",
                        ),
                        None,
                    );
                }
            }
        }
    };
    let d = spec.delegated.as_ref().expect("chosen for being delegated");
    let mut check = Check::ok(
        "config",
        format!(
            "loaded {}: {} instance(s); testing {} (org {}, endpoint {})",
            cfg.paths.config.display(),
            cfg.instances.len(),
            spec.name,
            d.org_uuid,
            crate::secret::redact_userinfo(&d.exchange_target)
        ),
    )
    .data("instance", spec.name.clone())
    .data("org_uuid", d.org_uuid.clone())
    .data(
        "endpoint",
        crate::secret::redact_userinfo(&d.exchange_target),
    );
    if !cfg.tokens.is_empty() {
        check
            .finding
            .push_str(&format!("; {}", describe_tokens(&cfg.tokens)));
        check = check.data("tokens", token_names(&cfg.tokens));
    }
    (config_warnings(cfg, check), Some(spec))
}

/// `1 delegated API token(s) to test (automation)`.
fn describe_tokens(tokens: &[TokenSpec]) -> String {
    format!(
        "{} delegated API token(s) to test ({})",
        tokens.len(),
        token_names(tokens).join(", ")
    )
}

fn token_names(tokens: &[TokenSpec]) -> Vec<String> {
    tokens.iter().map(|t| t.name.clone()).collect()
}

/// The `config` check turned `warn` by inert entries or configuration warnings.
fn config_warnings(cfg: &Config, mut check: Check) -> Check {
    let invalid: Vec<&str> = cfg
        .instances
        .iter()
        .filter(|i| i.invalid.is_some())
        .map(|i| i.name.as_str())
        .collect();
    if !invalid.is_empty() {
        // The daemon runs without these entries (wire spec §10.2); check-config fails on them.
        check.status = Status::Warn;
        check.finding.push_str(&format!(
            "; {} invalid entr{} inert: {}",
            invalid.len(),
            if invalid.len() == 1 {
                "y stays"
            } else {
                "ies stay"
            },
            invalid.join(", ")
        ));
        check.fix = Some(
            "run `datadog-delegated-auth check-config` to see each entry's problem and fix"
                .to_owned(),
        );
    } else if let Some(first) = cfg.warnings.first() {
        check.status = Status::Warn;
        check.finding.push_str(&format!(
            "; {} warning(s), the first: {first}",
            cfg.warnings.len()
        ));
        check.fix =
            Some("run `datadog-delegated-auth check-config` to see every warning".to_owned());
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answered(status: u16, date: Option<SystemTime>, local: SystemTime, body: &str) -> StsAnswer {
        StsAnswer::Answered {
            status,
            date,
            local_mid: local,
            body: body.to_owned(),
        }
    }

    #[test]
    fn clock_thresholds() {
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cases = [
            (0i64, Status::Ok),
            (30, Status::Ok),
            (-30, Status::Ok),
            (90, Status::Warn),
            (-90, Status::Warn),
            (299, Status::Warn),
            (301, Status::Fail),
            (-600, Status::Fail),
            (600, Status::Fail),
        ];
        for (offset, want) in cases {
            let local = if offset >= 0 {
                date + Duration::from_millis(500) + Duration::from_secs(offset as u64)
            } else {
                date + Duration::from_millis(500) - Duration::from_secs(offset.unsigned_abs())
            };
            let check = clock_check(&answered(200, Some(date), local, ""), "sts.amazonaws.com");
            assert_eq!(check.status, want, "offset {offset}: {check:?}");
            let measured = check.data["offset_seconds"].as_f64().unwrap();
            assert!(
                (measured - offset as f64).abs() < 0.01,
                "{measured} vs {offset}"
            );
            if want == Status::Fail {
                assert!(check.fix.as_deref().unwrap().contains("chrony/ntp"));
                let direction = if offset > 0 { "ahead" } else { "behind" };
                assert!(check.finding.contains(direction), "{}", check.finding);
            }
        }
        let no_date = clock_check(&answered(200, None, date, ""), "h");
        assert_eq!(no_date.status, Status::Warn);
    }

    #[test]
    fn caller_from_sts_answers() {
        let now = SystemTime::now();
        let ok = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:assumed-role/R/i-1</Arn><UserId>AROA:i-1</UserId><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>";
        let check = caller_check(
            &answered(200, None, now, ok),
            "sts.amazonaws.com",
            CredentialSource::Imds,
        );
        assert_eq!(check.status, Status::Ok);
        assert_eq!(
            check.finding,
            "arn:aws:sts::123456789012:assumed-role/R/i-1"
        );
        assert_eq!(check.data["account"], json!("123456789012"));

        let expired = "<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code><Message>The security token included in the request is expired</Message></Error></ErrorResponse>";
        let check = caller_check(
            &answered(403, None, now, expired),
            "h",
            CredentialSource::Imds,
        );
        assert_eq!(check.status, Status::Fail);
        assert!(
            check
                .finding
                .contains("HTTP 403: ExpiredToken: The security token"),
            "{}",
            check.finding
        );
        assert!(check.fix.as_deref().unwrap().contains("instance profile"));

        let skew = "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>Signature expired: 20260101T000000Z is now earlier than 20260101T001500Z</Message></Error></ErrorResponse>";
        let check = caller_check(
            &answered(403, None, now, skew),
            "h",
            CredentialSource::StaticEnv,
        );
        assert!(check.fix.as_deref().unwrap().contains("chrony/ntp"));

        let bad_sig = "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error></ErrorResponse>";
        let check = caller_check(
            &answered(403, None, now, bad_sig),
            "h",
            CredentialSource::StaticEnv,
        );
        assert!(check.fix.as_deref().unwrap().contains("secret key"));

        let check = caller_check(
            &StsAnswer::Unreachable {
                target: "https://sts.amazonaws.com".into(),
                reason: "cannot connect".into(),
            },
            "sts.amazonaws.com",
            CredentialSource::Imds,
        );
        assert_eq!(
            check.status,
            Status::Warn,
            "STS unreachable does not stop the daemon"
        );
    }

    #[test]
    fn mapping_suggestion_and_command() {
        let check = mapping_check("arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0abc");
        assert_eq!(check.status, Status::Ok);
        assert_eq!(
            check.data["command"],
            json!(
                "datadog-delegated-auth mapping create --arn-pattern 'arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*'"
            )
        );
        assert_eq!(mapping_check("arn:aws:s3:::bucket").status, Status::Warn);
    }

    #[test]
    fn token_refusals_name_the_persona_mapping_to_create() {
        const ARN: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0abc";
        const COMMAND: &str = "datadog-delegated-auth mapping create --persona --arn-pattern \
             'arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*' --account-identifier \
             <service-account-or-user-email>";
        let endpoint = Endpoint {
            org_uuid: "org-1",
            base: "https://api.datadoghq.com",
            decided_by: TOKEN_URL_SOURCE,
        };
        let url = "https://api.datadoghq.com/api/v2/delegated-token";
        let refused = |detail: Option<&str>| ExchangeError::TokenRefused {
            status: 401,
            detail: detail.map(str::to_owned),
        };
        let unmapped = format!("Authenticated as {ARN} but no persona mapping was found.");
        let from_sts = mapping_check(ARN);
        let no_sts = Check::skip("mapping", "no caller ARN");
        for mapping in [&from_sts, &no_sts] {
            let e = refused(Some(&unmapped));
            let check = exchange_failure("token exchange (t)", &e, url, &endpoint, mapping, false);
            assert_eq!(check.status, Status::Fail);
            assert_eq!(check.name, "token exchange (t)");
            assert!(check.finding.contains(&unmapped), "{}", check.finding);
            let fix = check.fix.as_deref().unwrap();
            assert!(fix.contains(&format!("`{COMMAND}`")), "{fix}");
            assert!(fix.contains("org org-1"), "{fix}");
            assert!(fix.contains("doctor cannot know it"), "{fix}");
            assert_eq!(check.data["command"], json!(COMMAND));
            assert_eq!(check.data["caller_arn"], json!(ARN));
            assert_eq!(check.data["error_kind"], json!("unauthorized"));
        }
        // A refusal of the proof's date is the clock's.
        let e = refused(Some("X-Amz-Date is more than 5 minutes from now"));
        let check = exchange_failure("t", &e, url, &endpoint, &from_sts, false);
        assert_eq!(check.fix.as_deref(), Some(CLOCK_FIX));
        // No detail: the mapping still, and the org to check.
        let check = exchange_failure("t", &refused(None), url, &endpoint, &from_sts, false);
        let fix = check.fix.as_deref().unwrap();
        assert!(
            fix.contains(COMMAND) && fix.contains("check that org_uuid org-1"),
            "{fix}"
        );
        // Other failures: as for the intake exchange, with the token's settings.
        let e = ExchangeError::InvalidResponse {
            reason: "not JSON".into(),
        };
        let check = exchange_failure("t", &e, url, &endpoint, &from_sts, false);
        assert!(
            check.fix.as_deref().unwrap().contains("api_url"),
            "{check:?}"
        );
        assert!(check.data.get("command").is_none());
    }

    #[test]
    fn lifetimes_read_as_people_say_them() {
        let s = |secs: f64| approximate(Duration::from_secs_f64(secs)).to_string();
        assert_eq!(s(3599.3), "1h");
        assert_eq!(s(899.9), "15m");
        assert_eq!(s(59.6), "1m");
        assert_eq!(s(42.2), "42s");
        assert_eq!(s(0.0), "0s");
    }

    #[test]
    fn arn_from_datadog_detail() {
        assert_eq!(
            authenticated_arn("Authenticated as arn:aws:sts::123:assumed-role/R/s but no identity mapping was found.").as_deref(),
            Some("arn:aws:sts::123:assumed-role/R/s")
        );
        assert_eq!(
            authenticated_arn("Authenticated as arn:aws:sts::123456789012:assumed-role/R/s.")
                .as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/R/s")
        );
        assert_eq!(authenticated_arn("no arn here"), None);
    }

    #[test]
    fn credential_failures_split_the_fix() {
        let e = CredentialError::Provider {
            credential_source: CredentialSource::Container,
            detail: "connection refused".into(),
        };
        let check = credentials_failure(&e);
        assert_eq!(
            check.finding,
            "ECS/EKS container credentials: connection refused"
        );
        assert_eq!(
            check.fix.as_deref(),
            Some(remediation(CredentialSource::Container))
        );
        let e = CredentialError::ImdsTokenUnanswered {
            timeout: Duration::from_millis(300),
            versions: "v2",
        };
        let check = credentials_failure(&e);
        assert_eq!(check.fix.as_deref(), Some(HOP_LIMIT_FIX));
        assert!(!check.finding.contains("hop-limit 2"), "{}", check.finding);
    }

    #[test]
    fn short_key_ids() {
        assert_eq!(short_key_id("ASIAABCDEFGHIJKLWXYZ"), "ASIA…WXYZ");
        assert_eq!(short_key_id("short"), "***");
    }

    #[test]
    fn xml_fields() {
        assert_eq!(
            xml_field("<a><Arn> x&amp;y </Arn></a>", "Arn").as_deref(),
            Some("x&y")
        );
        assert_eq!(xml_field("<Arn></Arn>", "Arn"), None);
        assert_eq!(xml_field("<Arn>x", "Arn"), None);
    }

    #[test]
    fn rendering_and_exit_code() {
        let checks = vec![
            Check::ok("config", "fine"),
            Check::fail("exchange", "refused", "create the mapping"),
        ];
        let mut out = Vec::new();
        render(&checks, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("[ok]   config      fine\n"), "{text}");
        assert!(text.contains("[FAIL] exchange    refused\n"), "{text}");
        assert!(text.contains("fix: create the mapping\n"), "{text}");
        assert!(text.ends_with("1 check(s) failed.\n"), "{text}");
        assert_eq!(exit_code(&checks), 1);
        assert_eq!(exit_code(&checks[..1]), 0);
        let json = serde_json::to_value(&checks).unwrap();
        assert_eq!(json[1]["status"], json!("fail"));
        assert_eq!(json[0]["fix"], Value::Null);
        assert!(json[0].get("data").is_none());
    }
}

//! The STS half of `doctor`: credentials, region, a signed `GetCallerIdentity` sent for real,
//! and what its answer says about the clock and the caller.

use super::*;

/// The `clock` and `caller` checks, from one signed GetCallerIdentity sent to `target`, and the
/// proof it was taken from (reused for the test exchange, so Datadog replays exactly what STS
/// just accepted).
pub(super) async fn sts_checks(
    http: &reqwest::Client,
    creds: &crate::aws::AwsCredentials,
    org: &str,
    region: Option<&str>,
    host: &str,
    target: &str,
) -> (Check, Check, Option<Secret>) {
    match build_proof(creds, org, region, SystemTime::now(), USER_AGENT) {
        Err(e) => (
            Check::skip("clock", "not measured: the request could not be signed"),
            Check::fail("caller", e.to_string(), remediation(creds.source)),
            None,
        ),
        Ok(proof) => {
            let answer = call_sts(http, target, &proof).await;
            (
                clock_check(&answer, host),
                caller_check(&answer, host, creds.source),
                Some(proof),
            )
        }
    }
}

/// A failed credential resolution: the error's own text already names the source and ends with
/// its fix; the fix is split off when it is one of the known remediations.
pub(super) fn credentials_failure(e: &CredentialError) -> Check {
    let text = e.to_string();
    let known: Vec<&str> = match e.credential_source() {
        Some(source) => vec![HOP_LIMIT_FIX, remediation(source)],
        None => vec![NO_ENVIRONMENT_FIX],
    };
    for fix in known {
        if let Some(finding) = text.strip_suffix(fix) {
            return Check::fail(
                "credentials",
                finding.trim_end_matches([';', ' ']).to_owned(),
                fix,
            );
        }
    }
    let fix = e
        .credential_source()
        .map_or(NO_ENVIRONMENT_FIX, remediation);
    Check::fail("credentials", text, fix)
}

/// `ASIA…WXYZ`: enough to tell keys apart (the AWS console shows the same), not the whole id.
pub(super) fn short_key_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() < 12 {
        return "***".to_owned();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Where the region came from, in the order `Identity::region` looks.
pub(super) fn region_source(
    delegated: Option<&DelegatedSpec>,
    agent: Option<&AgentConfig>,
    env: &AwsEnv,
    found: bool,
) -> &'static str {
    let configured = agent.and_then(|a| a.aws_region.as_deref());
    match delegated.and_then(|d| d.region.as_deref()) {
        Some(r) if Some(r) != configured => return "the DELA directive's region=",
        Some(_) => return "delegated_auth.aws.region",
        None => {}
    }
    if configured.is_some() {
        "delegated_auth.aws.region"
    } else if env.has(vars::REGION) {
        "AWS_REGION"
    } else if env.has(vars::DEFAULT_REGION) {
        "AWS_DEFAULT_REGION"
    } else if !found {
        "not configured and not detected from ECS task metadata or the EC2 identity document"
    } else if env.has(vars::ECS_METADATA_URI_V4) {
        "ECS task metadata"
    } else {
        "the EC2 instance identity document"
    }
}

/// `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, as the AWS SDKs read them.
pub(super) fn sts_override(env: &AwsEnv) -> Option<(&'static str, String)> {
    [vars::ENDPOINT_URL_STS, vars::ENDPOINT_URL]
        .into_iter()
        .find_map(|var| {
            env.get(var)
                .map(|url| (var, url.trim().trim_end_matches('/').to_owned()))
        })
}

/// What STS answered.
#[derive(Debug)]
pub(super) enum StsAnswer {
    /// An HTTP answer.
    Answered {
        status: u16,
        /// The `Date` header.
        date: Option<SystemTime>,
        /// Local time halfway through the round trip (best estimate of when `date` was stamped).
        local_mid: SystemTime,
        body: String,
    },
    /// No answer (connection, timeout, refused URL).
    Unreachable { target: String, reason: String },
}

/// Sends the proof's signed GetCallerIdentity to `target` (the proof's own STS URL, or an
/// override), with the proof's headers (its `Host` included) and a rebuilt `Content-Length`,
/// as Datadog's backend replays it.
pub(super) async fn call_sts(http: &reqwest::Client, target: &str, proof: &Secret) -> StsAnswer {
    let unreachable = |reason: String| StsAnswer::Unreachable {
        target: target.to_owned(),
        reason,
    };
    let decoded = match decode_proof(proof.expose()) {
        Ok(d) => d,
        Err(e) => return unreachable(format!("cannot decode our own proof: {e}")),
    };
    let url = match reqwest::Url::parse(target) {
        Ok(url) => url,
        Err(e) => return unreachable(format!("the STS URL does not parse ({e})")),
    };
    if crate::net::check_scheme(&url).is_err() {
        return unreachable(
            "refusing to send a signed request over plain http:// to a host that is not \
             loopback; use https://"
                .to_owned(),
        );
    }
    let mut request = http
        .request(
            reqwest::Method::from_bytes(decoded.method.as_bytes()).unwrap_or(reqwest::Method::POST),
            url,
        )
        .timeout(STS_TIMEOUT);
    for (name, values) in &decoded.headers {
        for value in values {
            let Ok(mut value) = reqwest::header::HeaderValue::from_str(value) else {
                return unreachable(format!(
                    "the signed header {name} is not a valid header value"
                ));
            };
            if name.eq_ignore_ascii_case("authorization")
                || name.eq_ignore_ascii_case("x-amz-security-token")
            {
                value.set_sensitive(true);
            }
            request = request.header(name.as_str(), value);
        }
    }
    let request = request
        .header(reqwest::header::CONTENT_LENGTH, decoded.body.len())
        .body(decoded.body.clone());
    let started = SystemTime::now();
    let clock = Instant::now();
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return unreachable(crate::exchange::transport_reason(&e, STS_TIMEOUT)),
    };
    let rtt = clock.elapsed();
    let status = response.status().as_u16();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let mut body = Vec::new();
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_STS_RESPONSE_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return unreachable(crate::exchange::transport_reason(&e, STS_TIMEOUT)),
        }
    }
    StsAnswer::Answered {
        status,
        date,
        local_mid: started + rtt / 2,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The `clock` check: local time against STS's `Date`.
pub(super) fn clock_check(answer: &StsAnswer, host: &str) -> Check {
    let (date, local_mid) = match answer {
        StsAnswer::Unreachable { .. } => {
            return Check::warn(
                "clock",
                "not measured: STS did not answer (see caller)",
                format!("check the clock by other means: {CLOCK_FIX}"),
            );
        }
        StsAnswer::Answered { date: None, .. } => {
            return Check::warn(
                "clock",
                "not measured: STS's answer had no Date header",
                format!("check the clock by other means: {CLOCK_FIX}"),
            );
        }
        StsAnswer::Answered {
            date: Some(date),
            local_mid,
            ..
        } => (*date, *local_mid),
    };
    // `Date` has one-second resolution and is truncated: its true instant is on average half a
    // second later than written.
    let server = date + Duration::from_millis(500);
    let (ahead, offset) = match local_mid.duration_since(server) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    let secs = offset.as_secs_f64();
    let signed = if ahead { secs } else { -secs };
    let rounded = (signed * 10.0).round() / 10.0;
    let described = if offset < Duration::from_secs(2) {
        format!("in sync with {host} (offset {rounded:+.1} s, from its Date header)")
    } else {
        format!(
            "the local clock is {} {} {host}'s Date header",
            humantime::format_duration(Duration::from_secs(secs.round() as u64)),
            if ahead { "ahead of" } else { "behind" }
        )
    };
    let check = if offset > CLOCK_FAIL {
        Check::fail(
            "clock",
            format!("{described}: Datadog refuses proofs more than 5 minutes off"),
            CLOCK_FIX,
        )
    } else if offset > CLOCK_WARN {
        Check::warn(
            "clock",
            format!("{described}: over 1 minute; Datadog refuses proofs more than 5 minutes off"),
            CLOCK_FIX,
        )
    } else {
        Check::ok("clock", described)
    };
    check.data("offset_seconds", rounded)
}

/// The `caller` check: STS's verdict on the signed request.
pub(super) fn caller_check(answer: &StsAnswer, host: &str, source: CredentialSource) -> Check {
    match answer {
        StsAnswer::Unreachable { target, reason } => Check::warn(
            "caller",
            format!("STS at {target} did not answer: {reason}"),
            format!(
                "the daemon itself never calls STS (Datadog does), so this only stops doctor from \
                 showing the caller; to see it, allow HTTPS to {host} (directly or through \
                 proxy.https)"
            ),
        ),
        StsAnswer::Answered {
            status: 200, body, ..
        } => match xml_field(body, "Arn") {
            Some(arn) => {
                let account = xml_field(body, "Account");
                Check::ok("caller", arn.clone())
                    .data("arn", arn)
                    .data("account", account)
            }
            None => Check::fail(
                "caller",
                "STS answered 200 without an Arn",
                "check AWS_ENDPOINT_URL_STS/AWS_ENDPOINT_URL and the proxy: something other than \
                 STS answered",
            ),
        },
        StsAnswer::Answered { status, body, .. } => {
            let code = xml_field(body, "Code").unwrap_or_default();
            let message = xml_field(body, "Message").unwrap_or_default();
            let what = match (code.is_empty(), message.is_empty()) {
                (true, true) => String::new(),
                (false, true) => format!(": {code}"),
                (true, false) => format!(": {message}"),
                (false, false) => format!(": {code}: {message}"),
            };
            let lower = format!("{code} {message}").to_ascii_lowercase();
            let fix = if lower.contains("expired") && lower.contains("signature")
                || lower.contains("requestexpired")
                || lower.contains("request time")
            {
                CLOCK_FIX.to_owned()
            } else if lower.contains("expiredtoken") {
                format!(
                    "the session token has expired, so the source served stale credentials; {}",
                    remediation(source)
                )
            } else if lower.contains("invalidclienttokenid") {
                format!(
                    "AWS does not know this access key (deleted, wrong account or partition); {}",
                    remediation(source)
                )
            } else if lower.contains("signaturedoesnotmatch") {
                format!(
                    "the secret key does not match the access key; {}",
                    remediation(source)
                )
            } else {
                format!(
                    "Datadog will get the same answer when it replays the proof; {}",
                    remediation(source)
                )
            };
            Check::fail(
                "caller",
                format!("STS refused the signed GetCallerIdentity (HTTP {status}{what})"),
                fix,
            )
            .data("sts_status", *status)
            .data("sts_code", code)
        }
    }
}

/// The text of the first `<name>…</name>` element (STS answers are small, flat XML).
pub(super) fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let text = xml[start..end].trim();
    (!text.is_empty()).then(|| unescape_xml(text))
}

pub(super) fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

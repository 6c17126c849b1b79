//! Verifying a delegated-auth proof the way Datadog's backend must before it trusts STS's
//! answer (wire spec §1; product §11).
//!
//! moto checks the SigV4 signature over exactly the `SignedHeaders`, but not the freshness of
//! `X-Amz-Date`, not the scope region against the host, and not that the org header is signed
//! (toolchain notes). Those are what bind a proof to one org and a short time window, so they are
//! checked here, before the request is replayed to STS.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::sts::{ProofFields, SplitError, split_proof};

/// The only body a GetCallerIdentity proof may carry (wire spec §1.1).
pub const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The header binding a proof to an org.
pub const ORG_HEADER: &str = "x-ddog-org-id";

/// A proof that passed every local check, ready to be replayed to STS.
#[derive(Clone, Debug)]
pub struct CheckedProof {
    /// The org the proof is bound to, as sent (compare case-insensitively).
    pub org: String,
    /// `https://sts[.<region>].amazonaws.com[.cn]`, as in the proof.
    pub sts_url: String,
    /// The STS host (also the signed `Host` header).
    pub host: String,
    /// The signing region (`us-east-1` for the global host).
    pub region: String,
    /// The access key id from the credential scope (for the request log).
    pub access_key_id: String,
    /// The headers to replay, names as sent, one value each.
    pub headers: Vec<(String, String)>,
    /// The body to replay ([`STS_BODY`]).
    pub body: Vec<u8>,
}

/// Why a proof was refused. The Display text becomes the 403's JSON:API `detail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProofError {
    /// No `Authorization: Delegated <proof>`.
    MissingScheme,
    /// Not four `|`-separated fields.
    FieldCount(usize),
    /// A field is not standard base64 with padding.
    Base64(&'static str),
    /// The method field is not `POST`.
    Method(String),
    /// The URL is not an STS endpoint.
    NotSts(String),
    /// The body is not exactly [`STS_BODY`].
    Body,
    /// The headers field is not a JSON object of string arrays.
    HeadersJson(String),
    /// A required header is missing from the headers map.
    MissingHeader(&'static str),
    /// A header appears twice (different casing) with different values.
    DuplicateHeader(String),
    /// The `Host` header is not the URL's host.
    HostMismatch {
        /// Host header.
        header: String,
        /// URL host.
        url: String,
    },
    /// The org header names an org this server does not know.
    UnknownOrg(String),
    /// The AWS `Authorization` header cannot be parsed as SigV4.
    SigV4(String),
    /// The org header (or `host`) is not covered by the signature.
    NotSigned(&'static str),
    /// The scope region does not match the STS host.
    RegionMismatch {
        /// Region of the credential scope.
        scope: String,
        /// Region implied by the host.
        host: String,
    },
    /// `X-Amz-Date` is malformed or disagrees with the scope date.
    BadDate(String),
    /// `X-Amz-Date` is too far from the server's clock.
    Stale {
        /// How far off, in seconds (positive: the proof is from the past).
        skew_secs: i64,
    },
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProofError::MissingScheme => {
                f.write_str("Missing credentials: expected 'Authorization: Delegated <proof>'.")
            }
            ProofError::FieldCount(n) => write!(
                f,
                "Invalid proof: expected 4 '|'-separated fields (body|headers|method|url), got {n}."
            ),
            ProofError::Base64(field) => {
                write!(f, "Invalid proof: the {field} field is not standard base64.")
            }
            ProofError::Method(m) => {
                write!(f, "Invalid proof: the signed request must be a POST, got {m:?}.")
            }
            ProofError::NotSts(url) => write!(
                f,
                "Invalid proof: {url:?} is not an AWS STS endpoint (https://sts[.<region>].amazonaws.com)."
            ),
            ProofError::Body => f.write_str(
                "Invalid proof: the signed body must be exactly Action=GetCallerIdentity&Version=2011-06-15.",
            ),
            ProofError::HeadersJson(why) => {
                write!(f, "Invalid proof: the headers field is not a JSON header map ({why}).")
            }
            ProofError::MissingHeader(h) => {
                write!(f, "Invalid proof: the signed request has no {h} header.")
            }
            ProofError::DuplicateHeader(h) => {
                write!(f, "Invalid proof: header {h} appears more than once with different values.")
            }
            ProofError::HostMismatch { header, url } => write!(
                f,
                "Invalid proof: the Host header {header:?} does not match the STS URL host {url:?}."
            ),
            ProofError::UnknownOrg(org) => write!(
                f,
                "Invalid proof: org {org:?} (x-ddog-org-id) is not a known organization; check org_uuid."
            ),
            ProofError::SigV4(why) => {
                write!(f, "Invalid proof: the AWS Authorization header is not SigV4 ({why}).")
            }
            ProofError::NotSigned(h) => write!(
                f,
                "Invalid proof: the {h} header is not covered by the signature (SignedHeaders)."
            ),
            ProofError::RegionMismatch { scope, host } => write!(
                f,
                "Invalid proof: signed for region {scope} but sent to the STS endpoint of {host}."
            ),
            ProofError::BadDate(why) => write!(f, "Invalid proof: bad X-Amz-Date ({why})."),
            ProofError::Stale { skew_secs } => write!(
                f,
                "Invalid proof: X-Amz-Date is {}s {} the server's clock (at most 300s allowed); check the host's clock (NTP).",
                skew_secs.abs(),
                if *skew_secs >= 0 { "behind" } else { "ahead of" }
            ),
        }
    }
}

/// Checks `authorization` (the whole header value) at server time `now`, with `max_skew`
/// tolerance on `X-Amz-Date`; `known_org` says whether an org header value names an org.
///
/// # Errors
/// The first [`ProofError`] found, in the order the module doc lists the checks.
pub fn check_proof(
    authorization: &str,
    now: SystemTime,
    max_skew: Duration,
    known_org: impl Fn(&str) -> bool,
) -> Result<CheckedProof, ProofError> {
    let proof = match authorization.split_once(' ') {
        Some((scheme, proof)) if scheme.eq_ignore_ascii_case("Delegated") => proof.trim(),
        _ => return Err(ProofError::MissingScheme),
    };
    let ProofFields {
        body,
        headers_json,
        method,
        url,
    } = split_proof(proof).map_err(|e| match e {
        SplitError::FieldCount(n) => ProofError::FieldCount(n),
        SplitError::Base64(field) => ProofError::Base64(field),
    })?;
    if method != "POST" {
        return Err(ProofError::Method(method.chars().take(16).collect()));
    }
    let url = String::from_utf8(url).map_err(|_| ProofError::NotSts("<not UTF-8>".into()))?;
    let (host, host_region) = sts_host(&url).ok_or_else(|| ProofError::NotSts(url.clone()))?;
    if body != STS_BODY.as_bytes() {
        return Err(ProofError::Body);
    }
    let headers = parse_headers(&headers_json)?;
    let get = |name: &'static str| -> Result<&str, ProofError> {
        headers
            .get(name)
            .map(|(_, v)| v.as_str())
            .ok_or(ProofError::MissingHeader(name))
    };
    let host_header = get("host")?;
    if !host_header.eq_ignore_ascii_case(&host) {
        return Err(ProofError::HostMismatch {
            header: host_header.to_owned(),
            url: host,
        });
    }
    let org = get(ORG_HEADER)?.trim();
    if !known_org(org) {
        return Err(ProofError::UnknownOrg(org.chars().take(64).collect()));
    }
    let sig = parse_sigv4(get("authorization")?)?;
    for required in [ORG_HEADER, "host"] {
        if !sig.signed_headers.iter().any(|h| h == required) {
            return Err(ProofError::NotSigned(required));
        }
    }
    if sig.service != "sts" {
        return Err(ProofError::SigV4(format!(
            "scope service is {:?}, not sts",
            sig.service
        )));
    }
    if sig.region != host_region {
        return Err(ProofError::RegionMismatch {
            scope: sig.region,
            host: host_region,
        });
    }
    let amz_date = get("x-amz-date")?;
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| ProofError::BadDate(format!("{amz_date:?} is not YYYYMMDDTHHMMSSZ")))?;
    if amz_date.get(..8) != Some(sig.date.as_str()) {
        return Err(ProofError::BadDate(format!(
            "date {amz_date} does not match the credential scope date {}",
            sig.date
        )));
    }
    let skew_secs = match now.duration_since(signed_at) {
        Ok(behind) => i64::try_from(behind.as_secs()).unwrap_or(i64::MAX),
        Err(ahead) => -i64::try_from(ahead.duration().as_secs()).unwrap_or(i64::MAX),
    };
    if skew_secs.unsigned_abs() > max_skew.as_secs() {
        return Err(ProofError::Stale { skew_secs });
    }
    Ok(CheckedProof {
        org: org.to_owned(),
        sts_url: url,
        host: host_header.to_owned(),
        region: sig.region,
        access_key_id: sig.access_key_id,
        headers: headers.into_values().collect(),
        body,
    })
}

/// Best effort: the org header of a proof that may fail its checks (for the request log).
pub fn org_hint(authorization: &str) -> Option<String> {
    let (_, proof) = authorization.split_once(' ')?;
    let headers = STANDARD.decode(proof.split('|').nth(1)?).ok()?;
    let headers = parse_headers(&headers).ok()?;
    headers
        .get(ORG_HEADER)
        .map(|(_, v)| v.trim().chars().take(64).collect())
}

/// The host and implied signing region of an STS URL: `https://sts.amazonaws.com` (global,
/// `us-east-1`) or `https://sts.<region>.amazonaws.com[.cn]`, no port, no path but `/`, no query.
fn sts_host(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://")?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() || host.contains(['/', '?', '#', ':', '@']) {
        return None;
    }
    let host = host.to_ascii_lowercase();
    if host == "sts.amazonaws.com" {
        return Some((host, "us-east-1".to_owned()));
    }
    let inner = host.strip_prefix("sts.")?;
    let region = inner
        .strip_suffix(".amazonaws.com")
        .or_else(|| inner.strip_suffix(".amazonaws.com.cn"))?;
    // <area>-<name…>-<digit>, e.g. us-east-1, us-gov-west-1, cn-north-1.
    let parts: Vec<&str> = region.split('-').collect();
    let well_formed = parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    let china = host.ends_with(".cn");
    (well_formed && china == region.starts_with("cn-")).then(|| (host.clone(), region.to_owned()))
}

/// Header map of the proof (Go's `json.Marshal(map[string][]string)`; a plain string value is
/// tolerated), keyed by lowercase name, keeping the name as sent.
fn parse_headers(json: &[u8]) -> Result<BTreeMap<String, (String, String)>, ProofError> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|_| ProofError::HeadersJson("not JSON".into()))?;
    let object = value
        .as_object()
        .ok_or_else(|| ProofError::HeadersJson("not an object".into()))?;
    let mut headers = BTreeMap::new();
    for (name, value) in object {
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => match &items[..] {
                [serde_json::Value::String(s)] => s.clone(),
                _ => {
                    return Err(ProofError::HeadersJson(format!(
                        "{name} must have exactly one string value"
                    )));
                }
            },
            _ => {
                return Err(ProofError::HeadersJson(format!(
                    "{name} is not a string array"
                )));
            }
        };
        let key = name.to_ascii_lowercase();
        if let Some((_, previous)) = headers.get(&key)
            && previous != &value
        {
            return Err(ProofError::DuplicateHeader(name.clone()));
        }
        headers.insert(key, (name.clone(), value));
    }
    Ok(headers)
}

/// The parts of a SigV4 `Authorization` header the backend checks.
#[derive(Debug)]
struct SigV4 {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
}

/// `AWS4-HMAC-SHA256 Credential=<akid>/<date>/<region>/<service>/aws4_request,
/// SignedHeaders=<a;b>, Signature=<hex>`.
fn parse_sigv4(value: &str) -> Result<SigV4, ProofError> {
    let bad = |why: &str| ProofError::SigV4(why.to_owned());
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| bad("algorithm is not AWS4-HMAC-SHA256"))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',').map(str::trim) {
        let (k, v) = part.split_once('=').ok_or_else(|| bad("malformed field"))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(bad("unknown field")),
        }
    }
    let credential = credential.ok_or_else(|| bad("no Credential"))?;
    let signed = signed.ok_or_else(|| bad("no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| bad("no Signature"))?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("Signature is not 64 hex digits"));
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = scope[..] else {
        return Err(bad(
            "Credential is not <key>/<date>/<region>/<service>/aws4_request",
        ));
    };
    if terminator != "aws4_request" || akid.is_empty() || date.len() != 8 {
        return Err(bad(
            "Credential is not <key>/<date>/<region>/<service>/aws4_request",
        ));
    }
    Ok(SigV4 {
        access_key_id: akid.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers: signed.split(';').map(str::to_owned).collect(),
    })
}

/// `YYYYMMDDTHHMMSSZ` (UTC) as a time.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Formats a time as `YYYYMMDDTHHMMSSZ` (for tests and logs).
pub fn format_amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "11111111-2222-3333-4444-555555555555";
    const SIGNED: &str =
        "content-length;content-type;host;x-amz-date;x-amz-security-token;x-ddog-org-id";

    /// A structurally valid proof (its signature is not checked here: that is STS's job).
    struct Parts {
        body: String,
        headers: Vec<(&'static str, String)>,
        method: String,
        url: String,
    }

    impl Parts {
        fn new(now: SystemTime) -> Parts {
            let date = format_amz_date(now);
            Parts {
                body: STS_BODY.to_owned(),
                headers: vec![
                    (
                        "Authorization",
                        format!(
                            "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/{}/us-east-1/sts/aws4_request, SignedHeaders={SIGNED}, Signature={}",
                            &date[..8],
                            "a".repeat(64)
                        ),
                    ),
                    (
                        "Content-Type",
                        "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
                    ),
                    ("Host", "sts.amazonaws.com".to_owned()),
                    ("User-Agent", "datadog-agent/7.78.0".to_owned()),
                    ("X-Amz-Date", date),
                    ("X-Amz-Security-Token", "token".to_owned()),
                    ("X-Ddog-Org-Id", ORG.to_owned()),
                ],
                method: "POST".to_owned(),
                url: "https://sts.amazonaws.com".to_owned(),
            }
        }

        fn set(&mut self, name: &'static str, value: String) {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            self.headers.push((name, value));
        }

        fn encode(&self) -> String {
            let map: BTreeMap<&str, Vec<&str>> = self
                .headers
                .iter()
                .map(|(k, v)| (*k, vec![v.as_str()]))
                .collect();
            format!(
                "Delegated {}|{}|{}|{}",
                STANDARD.encode(&self.body),
                STANDARD.encode(serde_json::to_vec(&map).unwrap()),
                self.method,
                STANDARD.encode(&self.url)
            )
        }
    }

    fn now() -> SystemTime {
        parse_amz_date("20260805T123456Z").unwrap()
    }

    fn check(auth: &str) -> Result<CheckedProof, ProofError> {
        check_proof(auth, now(), Duration::from_secs(300), |o| {
            o.eq_ignore_ascii_case(ORG)
        })
    }

    #[test]
    fn a_good_proof_passes() {
        let proof = check(&Parts::new(now()).encode()).unwrap();
        assert_eq!(proof.org, ORG);
        assert_eq!(proof.host, "sts.amazonaws.com");
        assert_eq!(proof.region, "us-east-1");
        assert_eq!(proof.access_key_id, "ASIAEXAMPLE");
        assert_eq!(proof.body, STS_BODY.as_bytes());
        assert_eq!(proof.headers.len(), 7);
    }

    #[test]
    fn regional_and_china_hosts() {
        for (url, region) in [
            ("https://sts.eu-west-1.amazonaws.com", "eu-west-1"),
            ("https://sts.us-east-1.amazonaws.com/", "us-east-1"),
            ("https://sts.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
            ("https://sts.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ] {
            let mut p = Parts::new(now());
            let host = url
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned();
            p.url = url.to_owned();
            p.set("Host", host);
            let auth = p.headers[0]
                .1
                .replace("/us-east-1/", &format!("/{region}/"));
            p.set("Authorization", auth);
            let checked = check(&p.encode()).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(checked.region, region);
        }
    }

    #[test]
    fn refusals() {
        type Mutate = fn(&mut Parts);
        type Expect = fn(&ProofError) -> bool;
        let cases: &[(&str, Mutate, Expect)] = &[
            (
                "wrong method",
                |p| p.method = "GET".into(),
                |e| matches!(e, ProofError::Method(_)),
            ),
            (
                "wrong body",
                |p| p.body = "Action=GetSessionToken&Version=2011-06-15".into(),
                |e| *e == ProofError::Body,
            ),
            (
                "non-STS host",
                |p| {
                    p.url = "https://evil.example.com".into();
                    p.set("Host", "evil.example.com".into());
                },
                |e| matches!(e, ProofError::NotSts(_)),
            ),
            (
                "http STS",
                |p| p.url = "http://sts.amazonaws.com".into(),
                |e| matches!(e, ProofError::NotSts(_)),
            ),
            (
                "STS with a port",
                |p| p.url = "https://sts.amazonaws.com:8443".into(),
                |e| matches!(e, ProofError::NotSts(_)),
            ),
            (
                "STS lookalike",
                |p| p.url = "https://sts.amazonaws.com.evil.example".into(),
                |e| matches!(e, ProofError::NotSts(_)),
            ),
            (
                "STS with a path",
                |p| p.url = "https://sts.amazonaws.com/x".into(),
                |e| matches!(e, ProofError::NotSts(_)),
            ),
            (
                "Host differs from URL",
                |p| p.set("Host", "sts.eu-west-1.amazonaws.com".into()),
                |e| matches!(e, ProofError::HostMismatch { .. }),
            ),
            (
                "unknown org",
                |p| {
                    p.set(
                        "X-Ddog-Org-Id",
                        "99999999-2222-3333-4444-555555555555".into(),
                    )
                },
                |e| matches!(e, ProofError::UnknownOrg(_)),
            ),
            (
                "missing org",
                |p| p.headers.retain(|(n, _)| *n != "X-Ddog-Org-Id"),
                |e| *e == ProofError::MissingHeader(ORG_HEADER),
            ),
            (
                "org not signed",
                |p| {
                    let auth = p.headers[0].1.replace(";x-ddog-org-id", "");
                    p.set("Authorization", auth);
                },
                |e| *e == ProofError::NotSigned(ORG_HEADER),
            ),
            (
                "scope region mismatch",
                |p| {
                    let auth = p.headers[0].1.replace("/us-east-1/", "/eu-west-1/");
                    p.set("Authorization", auth);
                },
                |e| matches!(e, ProofError::RegionMismatch { .. }),
            ),
            (
                "regional host, us-east-1 scope mismatch",
                |p| {
                    p.url = "https://sts.eu-west-1.amazonaws.com".into();
                    p.set("Host", "sts.eu-west-1.amazonaws.com".into());
                },
                |e| matches!(e, ProofError::RegionMismatch { .. }),
            ),
            (
                "scope service",
                |p| {
                    let auth = p.headers[0].1.replace("/sts/", "/iam/");
                    p.set("Authorization", auth);
                },
                |e| matches!(e, ProofError::SigV4(_)),
            ),
            (
                "not sigv4",
                |p| p.set("Authorization", "Basic abc".into()),
                |e| matches!(e, ProofError::SigV4(_)),
            ),
            (
                "stale date",
                |p| {
                    p.set(
                        "X-Amz-Date",
                        format_amz_date(now() - Duration::from_secs(301)),
                    );
                },
                |e| matches!(e, ProofError::Stale { skew_secs: 301 }),
            ),
            (
                "future date",
                |p| {
                    p.set(
                        "X-Amz-Date",
                        format_amz_date(now() + Duration::from_secs(301)),
                    );
                },
                |e| matches!(e, ProofError::Stale { skew_secs: -301 }),
            ),
            (
                "date disagrees with scope",
                |p| {
                    p.set("X-Amz-Date", "20260804T235959Z".into());
                },
                |e| matches!(e, ProofError::BadDate(_) | ProofError::Stale { .. }),
            ),
            (
                "malformed date",
                |p| p.set("X-Amz-Date", "2026-08-05T12:34:56Z".into()),
                |e| matches!(e, ProofError::BadDate(_)),
            ),
            (
                "conflicting duplicate org header",
                |p| {
                    p.headers.push(("x-ddog-org-id", "other".into()));
                },
                |e| matches!(e, ProofError::DuplicateHeader(_)),
            ),
        ];
        for (name, mutate, expected) in cases {
            let mut p = Parts::new(now());
            mutate(&mut p);
            let err = check(&p.encode()).expect_err(name);
            assert!(expected(&err), "{name}: got {err:?}");
        }
    }

    #[test]
    fn within_skew_and_any_header_casing_pass() {
        let mut p = Parts::new(now());
        p.set(
            "X-Amz-Date",
            format_amz_date(now() - Duration::from_secs(299)),
        );
        p.headers.retain(|(n, _)| *n != "X-Ddog-Org-Id");
        p.headers.push(("x-ddog-org-id", ORG.to_uppercase()));
        p.headers.retain(|(n, _)| *n != "Host");
        p.headers.push(("host", "STS.amazonaws.com".into()));
        check(&p.encode()).unwrap();
    }

    #[test]
    fn framing_refusals() {
        assert_eq!(check("Bearer abc").unwrap_err(), ProofError::MissingScheme);
        assert_eq!(check("").unwrap_err(), ProofError::MissingScheme);
        assert_eq!(
            check("Delegated a|b|c").unwrap_err(),
            ProofError::FieldCount(3)
        );
        assert_eq!(
            check("Delegated a|b|c|d|e").unwrap_err(),
            ProofError::FieldCount(5)
        );
        let good = Parts::new(now()).encode();
        // URL-safe base64 and missing padding are refused (the Agent uses StdEncoding).
        let fields: Vec<&str> = good.trim_start_matches("Delegated ").split('|').collect();
        let unpadded = format!(
            "Delegated {}|{}|POST|{}",
            fields[0].trim_end_matches('='),
            fields[1],
            fields[3]
        );
        assert!(fields[0].ends_with("=="), "43 bytes encode with padding");
        assert_eq!(check(&unpadded).unwrap_err(), ProofError::Base64("body"));
        let bad_headers = format!("Delegated {}|%%%|POST|{}", fields[0], fields[3]);
        assert_eq!(
            check(&bad_headers).unwrap_err(),
            ProofError::Base64("headers")
        );
        let not_json = format!(
            "Delegated {}|{}|POST|{}",
            fields[0],
            STANDARD.encode("not json"),
            fields[3]
        );
        assert!(matches!(
            check(&not_json).unwrap_err(),
            ProofError::HeadersJson(_)
        ));
        // Scheme word is case-insensitive, as HTTP auth schemes are.
        check(&good.replacen("Delegated", "delegated", 1)).unwrap();
    }

    #[test]
    fn amz_dates_round_trip() {
        for s in [
            "19700101T000000Z",
            "20260805T123456Z",
            "20240229T235959Z",
            "21000301T000000Z",
        ] {
            assert_eq!(format_amz_date(parse_amz_date(s).unwrap()), s);
        }
        assert_eq!(
            parse_amz_date("20260805T123456Z")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_785_933_296
        );
        for bad in [
            "20261305T000000Z",
            "20260805 123456Z",
            "2026080T1234567Z",
            "+0260805T123456Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_texts_are_useful() {
        let stale = ProofError::Stale { skew_secs: 400 }.to_string();
        assert!(
            stale.contains("400s behind") && stale.contains("NTP"),
            "{stale}"
        );
        let unsigned = ProofError::NotSigned(ORG_HEADER).to_string();
        assert!(unsigned.contains("x-ddog-org-id"), "{unsigned}");
    }
}

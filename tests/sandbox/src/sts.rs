//! Replaying a delegated-auth proof to STS, the way Datadog's backend does.
//!
//! The proof is `b64(body)|b64(headers JSON)|METHOD|b64(url)` (wire spec §1.3). The backend decodes
//! the four fields, rebuilds `Content-Length` (the Agent leaves it out of the header map but signs
//! it), keeps the signed `Host` header, and sends the request to STS. Here the TCP target is moto,
//! which verifies the signature and answers GetCallerIdentity with the caller's ARN.
//!
//! This decoder is written independently of the daemon's encoder on purpose: a bug shared by both
//! would otherwise go unnoticed.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::Method;

use crate::SandboxError;
use crate::http::send_limited;

/// A decoded proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The request body (`Action=GetCallerIdentity&Version=2011-06-15`).
    pub body: Vec<u8>,
    /// The header map, as the Agent's Go `map[string][]string`.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The method (`POST`).
    pub method: String,
    /// The STS URL (`https://sts.amazonaws.com` or a regional host).
    pub url: String,
}

impl Proof {
    /// The first value of a header, matched case-insensitively (the backend tolerates any casing).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// Re-encodes the proof (used by tests that alter one part and check the signature breaks).
    pub fn encode(&self) -> String {
        let headers = serde_json::to_string(&self.headers).unwrap_or_default();
        format!(
            "{}|{}|{}|{}",
            STANDARD.encode(&self.body),
            STANDARD.encode(headers),
            self.method,
            STANDARD.encode(&self.url)
        )
    }
}

/// The four fields of a proof, base64 undone (the one place the sandbox splits a proof: the
/// Datadog emulator's checks start from it too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofFields {
    /// The body.
    pub body: Vec<u8>,
    /// The headers field: JSON, not yet parsed.
    pub headers_json: Vec<u8>,
    /// The method, as sent.
    pub method: String,
    /// The URL, bytes as sent.
    pub url: Vec<u8>,
}

/// Why a proof does not split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// Not four `|`-separated fields: how many there are.
    FieldCount(usize),
    /// This field (`body`, `headers`, `url`) is not standard base64 with padding.
    Base64(&'static str),
}

/// Splits `body|headers|METHOD|url` and undoes the base64 of the three encoded fields, in that
/// order.
///
/// # Errors
/// The first [`SplitError`].
pub fn split_proof(proof: &str) -> Result<ProofFields, SplitError> {
    let fields: Vec<&str> = proof.split('|').collect();
    let [body, headers, method, url] = fields[..] else {
        return Err(SplitError::FieldCount(fields.len()));
    };
    let b64 = |name: &'static str, value: &str| {
        STANDARD.decode(value).map_err(|_| SplitError::Base64(name))
    };
    Ok(ProofFields {
        body: b64("body", body)?,
        headers_json: b64("headers", headers)?,
        method: method.to_owned(),
        url: b64("url", url)?,
    })
}

/// Splits and decodes a proof.
///
/// # Errors
/// [`SandboxError::Proof`] naming the field that is malformed.
pub fn decode_proof(proof: &str) -> Result<Proof, SandboxError> {
    let fields = split_proof(proof).map_err(|e| {
        SandboxError::Proof(match e {
            SplitError::FieldCount(n) => format!("expected 4 fields separated by '|', got {n}"),
            SplitError::Base64(name) => format!("{name} is not standard base64"),
        })
    })?;
    let headers: BTreeMap<String, Vec<String>> = serde_json::from_slice(&fields.headers_json)
        .map_err(|e| {
            SandboxError::Proof(format!("headers are not a JSON map of string lists: {e}"))
        })?;
    let url = String::from_utf8(fields.url)
        .map_err(|_| SandboxError::Proof("url is not UTF-8".into()))?;
    Ok(Proof {
        body: fields.body,
        headers,
        method: fields.method,
        url,
    })
}

/// What STS (moto) answered to a replayed proof.
#[derive(Debug, Clone)]
pub struct Replay {
    /// HTTP status (200 when the signature verified).
    pub status: u16,
    /// Response body (GetCallerIdentity XML, or an error document).
    pub body: String,
}

impl Replay {
    /// The caller ARN of a successful GetCallerIdentity.
    pub fn arn(&self) -> Option<String> {
        caller_arn(&self.body)
    }
}

/// Replays `proof` to `sts_url` (moto's URL; the proof's own URL only supplies the path, which is
/// `/`): same method, same headers (Host included), the decoded body, and a rebuilt
/// `Content-Length`.
///
/// # Errors
/// [`SandboxError::Proof`] when the proof does not decode, [`SandboxError::Http`] when STS cannot
/// be reached.
pub async fn replay_proof(sts_url: &str, proof: &str) -> Result<Replay, SandboxError> {
    replay_decoded(sts_url, &decode_proof(proof)?).await
}

/// [`replay_proof`] for an already decoded (possibly altered) proof.
///
/// # Errors
/// As [`replay_proof`].
pub async fn replay_decoded(sts_url: &str, proof: &Proof) -> Result<Replay, SandboxError> {
    let method = Method::from_bytes(proof.method.as_bytes())
        .map_err(|_| SandboxError::Proof(format!("invalid method {:?}", proof.method)))?;
    let headers = proof
        .headers
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |v| (name.as_str(), v.as_str())));
    let target = format!("{}{}", sts_url.trim_end_matches('/'), url_path(&proof.url));
    send_replay(method, &target, headers, &proof.body, usize::MAX)
        .await
        .map_err(|e| match e {
            ReplayError::BadHeader(name) => {
                SandboxError::Proof(format!("header {name:?} cannot be sent"))
            }
            ReplayError::Unreachable(e) => e,
        })
}

/// Headers never replayed: rebuilt (`Content-Length`) or hop-by-hop.
const NOT_REPLAYED: [&str; 3] = ["content-length", "transfer-encoding", "connection"];

/// Why a replay got no answer.
#[derive(Debug)]
pub enum ReplayError {
    /// A header of the proof cannot be sent (its name, cut to 64 characters).
    BadHeader(String),
    /// STS could not be reached, or did not answer in time.
    Unreachable(SandboxError),
}

/// The one replayer, as Datadog's backend replays a proof: `method` to `target` with the
/// proof's `headers` exactly (the signed `Host` kept, so the signature verifies against another
/// TCP target) but for those rebuilt or hop-by-hop, `Content-Length` rebuilt from `body`, and
/// nothing else; the answer read up to `limit` bytes.
///
/// # Errors
/// [`ReplayError`].
pub async fn send_replay<'a>(
    method: Method,
    target: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
    limit: usize,
) -> Result<Replay, ReplayError> {
    let mut replayed: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        if NOT_REPLAYED.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return Err(ReplayError::BadHeader(name.chars().take(64).collect()));
        }
        replayed.push((name.to_owned(), value.to_owned()));
    }
    replayed.push(("Content-Length".into(), body.len().to_string()));
    let response = send_limited(method, target, &replayed, body.to_vec(), limit)
        .await
        .map_err(ReplayError::Unreachable)?;
    Ok(Replay {
        status: response.status.as_u16(),
        body: response.text(),
    })
}

/// The `<Arn>` of a GetCallerIdentity response.
pub fn caller_arn(xml: &str) -> Option<String> {
    let start = xml.find("<Arn>")? + "<Arn>".len();
    let end = start + xml[start..].find("</Arn>")?;
    Some(xml[start..end].trim().to_owned())
}

/// Path (and query) of a URL; `/` when it has none, which is the Agent's case.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_reencodes() {
        let proof = Proof {
            body: b"Action=GetCallerIdentity&Version=2011-06-15".to_vec(),
            headers: BTreeMap::from([("Host".to_owned(), vec!["sts.amazonaws.com".to_owned()])]),
            method: "POST".into(),
            url: "https://sts.amazonaws.com".into(),
        };
        let decoded = decode_proof(&proof.encode()).unwrap();
        assert_eq!(decoded, proof);
        assert_eq!(decoded.header("host"), Some("sts.amazonaws.com"));
    }

    #[test]
    fn rejects_wrong_field_count_and_bad_base64() {
        assert!(
            matches!(decode_proof("a|b|POST"), Err(SandboxError::Proof(m)) if m.contains("4 fields"))
        );
        assert!(
            matches!(decode_proof("!!|e30=|POST|"), Err(SandboxError::Proof(m)) if m.contains("body"))
        );
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("https://sts.amazonaws.com"), "/");
        assert_eq!(url_path("https://sts.amazonaws.com/x?y"), "/x?y");
    }

    #[test]
    fn reads_the_arn() {
        let xml = "<GetCallerIdentityResult><Arn>arn:aws:sts::1:assumed-role/R/s</Arn></GetCallerIdentityResult>";
        assert_eq!(
            caller_arn(xml).as_deref(),
            Some("arn:aws:sts::1:assumed-role/R/s")
        );
        assert_eq!(caller_arn("<x/>"), None);
    }
}

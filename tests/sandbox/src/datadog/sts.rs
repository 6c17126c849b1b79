//! Replaying a checked proof to STS (moto) and reading the caller identity from its answer.
//!
//! The request goes to `<sts_url>/` with the proof's headers exactly (the signed `Host` kept,
//! so the signature still verifies against a different TCP target), `Content-Length` rebuilt
//! from the body (the Agent leaves it out of the proof), and nothing else. The answer is parsed
//! strictly: a `GetCallerIdentityResponse` with one `Arn` (CVE-2020-16250 in Vault came from a
//! lenient parse of an attacker-chosen STS answer).

use std::fmt;

use super::proof::CheckedProof;
use crate::SandboxError;
use crate::sts::ReplayError;

/// Largest STS answer read (a GetCallerIdentity answer is under 1 KiB).
const MAX_STS_ANSWER: usize = 64 * 1024;

/// The replaying client: [`crate::sts::send_replay`] (within its 30 s, generous because moto is
/// Python on a small, shared machine) to one STS, with the answer read strictly.
pub(super) struct StsReplay {
    base: String,
}

/// Who STS says signed the proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Caller {
    pub arn: String,
}

/// Why the replay gave no identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum StsError {
    /// STS answered an error (bad signature, expired token, …).
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// A header of the proof cannot be sent.
    BadHeader(String),
    /// No answer.
    Unreachable(String),
    /// An answer that is not a GetCallerIdentity result.
    BadAnswer(String),
}

impl fmt::Display for StsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StsError::Rejected {
                status,
                code,
                message,
            } => write!(
                f,
                "AWS STS rejected the signed GetCallerIdentity request (HTTP {status} {code}: {message})."
            ),
            StsError::BadHeader(name) => {
                write!(
                    f,
                    "Invalid proof: header {name:?} cannot be replayed to STS."
                )
            }
            StsError::Unreachable(why) => {
                write!(f, "Could not reach AWS STS to verify the proof ({why}).")
            }
            StsError::BadAnswer(why) => write!(f, "AWS STS gave an unusable answer ({why})."),
        }
    }
}

impl StsReplay {
    /// `base` is an `http://host:port` URL (moto).
    pub(super) fn new(base: &str) -> Result<Self, String> {
        let uri: http::Uri = base
            .parse()
            .map_err(|e| format!("sts_url {base:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!("sts_url {base:?} must be http://host:port"));
        }
        Ok(StsReplay {
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub(super) async fn replay(&self, proof: &CheckedProof) -> Result<Caller, StsError> {
        let headers = proof.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let answer = crate::sts::send_replay(
            http::Method::POST,
            &format!("{}/", self.base),
            headers,
            &proof.body,
            MAX_STS_ANSWER,
        )
        .await
        .map_err(|e| match e {
            ReplayError::BadHeader(name) => StsError::BadHeader(name),
            ReplayError::Unreachable(SandboxError::Http { detail, .. }) => {
                StsError::Unreachable(detail)
            }
            ReplayError::Unreachable(other) => StsError::Unreachable(other.to_string()),
        })?;
        let (status, text) = (answer.status, answer.body);
        if status != 200 {
            return Err(StsError::Rejected {
                status,
                code: xml_text(&text, "Code").unwrap_or_else(|| "Unknown".into()),
                message: xml_text(&text, "Message").unwrap_or_default(),
            });
        }
        parse_caller(&text).map_err(StsError::BadAnswer)
    }
}

/// The caller ARN of a GetCallerIdentity answer, strictly.
fn parse_caller(xml: &str) -> Result<Caller, String> {
    let mut root = xml.trim_start();
    if root.starts_with("<?xml") {
        root = root
            .split_once("?>")
            .map_or("", |(_, rest)| rest)
            .trim_start();
    }
    if !root.starts_with("<GetCallerIdentityResponse") {
        return Err("not a GetCallerIdentityResponse".into());
    }
    let result = between(
        root,
        "<GetCallerIdentityResult>",
        "</GetCallerIdentityResult>",
    )
    .ok_or("no GetCallerIdentityResult")?;
    if result.matches("<Arn>").count() != 1 {
        return Err("not exactly one Arn".into());
    }
    let arn = xml_text(result, "Arn").ok_or("no Arn")?;
    if !arn.starts_with("arn:") {
        return Err(format!("{arn:?} is not an ARN"));
    }
    Ok(Caller { arn })
}

/// The unescaped text of the first `<tag>…</tag>`.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let inner = between(xml, &format!("<{tag}>"), &format!("</{tag}>"))?;
    Some(
        inner
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0123456789abcdef0</Arn>
    <UserId>AROA:i-0123456789abcdef0</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>x</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;

    #[test]
    fn parses_the_caller() {
        assert_eq!(
            parse_caller(ANSWER).unwrap().arn,
            "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0123456789abcdef0"
        );
        let with_decl = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{ANSWER}");
        assert!(parse_caller(&with_decl).is_ok());
    }

    #[test]
    fn refuses_other_answers() {
        let other = ANSWER.replace("GetCallerIdentity", "GetSessionToken");
        assert!(parse_caller(&other).is_err());
        let two = ANSWER.replace(
            "<UserId>",
            "<Arn>arn:aws:iam::123456789012:user/evil</Arn><UserId>",
        );
        assert!(parse_caller(&two).is_err());
        assert!(parse_caller("").is_err());
        let not_arn = ANSWER.replace("arn:aws:sts", "urn:aws:sts");
        assert!(parse_caller(&not_arn).is_err());
    }

    #[test]
    fn error_fields() {
        let xml = "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match &amp; so on</Message></Error></ErrorResponse>";
        assert_eq!(
            xml_text(xml, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(
            xml_text(xml, "Message").as_deref(),
            Some("The request signature we calculated does not match & so on")
        );
    }

    #[test]
    fn base_url_must_be_http() {
        assert!(StsReplay::new("http://127.0.0.1:5000").is_ok());
        assert!(StsReplay::new("https://sts.amazonaws.com").is_err());
        assert!(StsReplay::new("not a url").is_err());
    }
}

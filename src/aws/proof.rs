//! The delegated-auth proof: a SigV4-signed STS `GetCallerIdentity` request bound to a Datadog
//! org, which Datadog replays to STS to learn who we are (wire spec §1, product §4).
//!
//! Byte compatibility with the Go Agent matters more than elegance here:
//! - the signed request is `POST https://<host>` (no path, no trailing slash) with the 43-byte
//!   form body, `Content-Type`, `Host`, `Content-Length`, `X-Ddog-Org-Id` and a `User-Agent`;
//! - aws-sigv4 signs every header it is given except `user-agent` (and the usual hop-by-hop ones),
//!   which yields the Agent's `SignedHeaders` exactly;
//! - the header map carries the Agent's key set, Go-canonical names, and leaves `Content-Length`
//!   out (Datadog rebuilds it when replaying);
//! - the map is serialised like Go's `json.Marshal(map[string][]string)`: sorted keys, compact,
//!   HTML characters escaped;
//! - all three encoded fields use standard base64 with padding.
//!
//! A proof is a bearer credential for as long as STS accepts its date: it is returned as a
//! [`Secret`] and never logged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity as SigningIdentity;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::credentials::AwsCredentials;
use crate::secret::Secret;

/// The exact body the Agent signs (43 bytes).
pub const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// The `Content-Type` the Agent signs.
pub const STS_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// The HTTP method of the signed request.
pub const STS_METHOD: &str = "POST";
/// The header binding the proof to a Datadog org (Go canonical form of `x-ddog-org-id`).
pub const ORG_ID_HEADER: &str = "X-Ddog-Org-Id";
/// The region signed for the global endpoint (what the Agent does when no region is known).
pub const GLOBAL_SIGNING_REGION: &str = "us-east-1";
/// The SigV4 service name.
const STS_SERVICE: &str = "sts";

/// Headers the Agent's signer never signs (aws-sdk-go-v2's exclude list). aws-sigv4's default
/// list lacks `expect`; we add it so the rule is the Agent's even if a caller ever passes one.
const UNSIGNED_HEADERS: [&str; 5] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "expect",
    "transfer-encoding",
];

/// Where the proof says STS lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsEndpoint {
    /// `sts.amazonaws.com`, `sts.<region>.amazonaws.com` or `sts.<cn-region>.amazonaws.com.cn`.
    pub host: String,
    /// `https://<host>`, with no trailing slash (the Agent's form).
    pub url: String,
    /// The region in the SigV4 scope.
    pub signing_region: String,
}

/// The STS endpoint for a region (wire spec §1.2). No region: the global host signed as
/// `us-east-1`. Any region, `us-east-1` included, gets its regional host. China regions (`cn-`)
/// get `.amazonaws.com.cn`, which the Agent does not do (it hard-codes `.amazonaws.com`, so its
/// proofs from China cannot verify); this is a deliberate improvement.
pub fn sts_endpoint(region: Option<&str>) -> StsEndpoint {
    let (host, signing_region) = match region.map(str::trim).filter(|r| !r.is_empty()) {
        None => (
            "sts.amazonaws.com".to_owned(),
            GLOBAL_SIGNING_REGION.to_owned(),
        ),
        Some(r) if r.starts_with("cn-") => (format!("sts.{r}.amazonaws.com.cn"), r.to_owned()),
        Some(r) => (format!("sts.{r}.amazonaws.com"), r.to_owned()),
    };
    StsEndpoint {
        url: format!("https://{host}"),
        host,
        signing_region,
    }
}

/// Why a proof could not be built or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The org UUID is empty.
    #[error("missing org UUID: set delegated_auth.org_uuid (or the section's org_uuid)")]
    MissingOrgUuid,
    /// Credentials are blank.
    #[error(
        "missing AWS credentials: the {source_name} source returned an empty access key id or \
         secret key; check that source's configuration"
    )]
    MissingCredentials {
        /// The credential source that produced them.
        source_name: String,
    },
    /// A value cannot be an HTTP header (org UUID or user agent with control characters).
    #[error("{name} cannot be sent as an HTTP header value; check its configuration")]
    InvalidHeader {
        /// The header concerned.
        name: &'static str,
    },
    /// aws-sigv4 refused to sign (never expected with valid inputs).
    #[error("SigV4 signing failed: {0}")]
    Signing(String),
    /// A proof to decode does not have the expected shape.
    #[error("malformed proof: {0}")]
    Malformed(String),
}

/// Builds the proof for `org_uuid` with `creds`, signed at `now` for `region` (None: global STS).
///
/// # Errors
/// [`ProofError::MissingOrgUuid`], [`ProofError::MissingCredentials`],
/// [`ProofError::InvalidHeader`] or [`ProofError::Signing`].
pub fn build_proof(
    creds: &AwsCredentials,
    org_uuid: &str,
    region: Option<&str>,
    now: SystemTime,
    user_agent: &str,
) -> Result<Secret, ProofError> {
    let org_uuid = org_uuid.trim();
    if org_uuid.is_empty() {
        return Err(ProofError::MissingOrgUuid);
    }
    if creds.access_key_id.trim().is_empty() || creds.secret_access_key.expose().trim().is_empty() {
        return Err(ProofError::MissingCredentials {
            source_name: creds.source.to_string(),
        });
    }
    for (name, value) in [(ORG_ID_HEADER, org_uuid), ("User-Agent", user_agent)] {
        if http::HeaderValue::from_str(value).is_err() {
            return Err(ProofError::InvalidHeader { name });
        }
    }
    let endpoint = sts_endpoint(region);
    let content_length = STS_BODY.len().to_string();

    let identity: SigningIdentity = Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose().to_owned(),
        creds
            .session_token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .filter(|t| !t.is_empty()),
        None,
        "delegated-auth-proof",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(UNSIGNED_HEADERS.iter().map(|h| Cow::Borrowed(*h)).collect());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&endpoint.signing_region)
        .name(STS_SERVICE)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| ProofError::Signing(e.to_string()))?
        .into();

    // Host and Content-Length are passed explicitly: aws-sigv4 signs what it is given, and the
    // Agent's SignedHeaders include both.
    let signed_input = [
        ("Content-Length", content_length.as_str()),
        ("Content-Type", STS_CONTENT_TYPE),
        ("Host", endpoint.host.as_str()),
        (ORG_ID_HEADER, org_uuid),
        ("User-Agent", user_agent),
    ];
    let signable = SignableRequest::new(
        STS_METHOD,
        format!("{}/", endpoint.url),
        signed_input.iter().copied(),
        SignableBody::Bytes(STS_BODY.as_bytes()),
    )
    .map_err(|e| ProofError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| ProofError::Signing(e.to_string()))?
        .into_parts();

    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    headers.insert("Content-Type".into(), vec![STS_CONTENT_TYPE.into()]);
    headers.insert("Host".into(), vec![endpoint.host.clone()]);
    headers.insert(ORG_ID_HEADER.into(), vec![org_uuid.to_owned()]);
    headers.insert("User-Agent".into(), vec![user_agent.to_owned()]);
    for (name, value) in instructions.headers() {
        headers.insert(go_canonical_header(name), vec![value.to_owned()]);
    }

    let proof = format!(
        "{}|{}|{}|{}",
        STANDARD.encode(STS_BODY),
        STANDARD.encode(go_json_map(&headers)),
        STS_METHOD,
        STANDARD.encode(&endpoint.url),
    );
    Ok(Secret::new(proof))
}

/// A proof split into its four fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedProof {
    /// The signed body.
    pub body: Vec<u8>,
    /// The header map (Go `map[string][]string`).
    pub headers: BTreeMap<String, Vec<String>>,
    /// The method (`POST`).
    pub method: String,
    /// The STS URL.
    pub url: String,
}

impl DecodedProof {
    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }
}

/// Decodes a proof (for tests, `doctor` and the Datadog emulator's tests).
///
/// # Errors
/// [`ProofError::Malformed`] naming the bad field.
pub fn decode_proof(proof: &str) -> Result<DecodedProof, ProofError> {
    let fields: Vec<&str> = proof.split('|').collect();
    let [body, headers, method, url] = fields.as_slice() else {
        return Err(ProofError::Malformed(format!(
            "expected 4 fields separated by '|', found {}",
            fields.len()
        )));
    };
    let decode = |name: &str, value: &str| {
        STANDARD.decode(value).map_err(|e| {
            ProofError::Malformed(format!("the {name} field is not standard base64: {e}"))
        })
    };
    let body = decode("body", body)?;
    let headers = serde_json::from_slice(&decode("headers", headers)?).map_err(|e| {
        ProofError::Malformed(format!(
            "the headers field is not a JSON map of string lists: {e}"
        ))
    })?;
    let url = String::from_utf8(decode("url", url)?)
        .map_err(|_| ProofError::Malformed("the url field is not UTF-8".into()))?;
    if method.is_empty() {
        return Err(ProofError::Malformed("the method field is empty".into()));
    }
    Ok(DecodedProof {
        body,
        headers,
        method: (*method).to_owned(),
        url,
    })
}

/// Go's `http.CanonicalHeaderKey`: first letter and every letter after `-` upper case, the rest
/// lower case (`x-amz-date` → `X-Amz-Date`).
fn go_canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// Go `json.Marshal` of a `map[string][]string`: keys sorted byte-wise (a `BTreeMap` already is),
/// no whitespace, strings escaped as Go's encoder does with HTML escaping on.
fn go_json_map(map: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::from("{");
    for (i, (key, values)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_json_string(&mut out, key);
        out.push_str(":[");
        for (j, value) in values.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            go_json_string(&mut out, value);
        }
        out.push(']');
    }
    out.push('}');
    out
}

/// One JSON string the way Go (1.22+) writes it: `"` and `\` backslash-escaped, `\b \f \n \r \t`
/// short forms, other control characters and `<`, `>`, `&`, U+2028, U+2029 as `\uXXXX`.
fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::CredentialSource;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2026-08-05T12:34:56Z, the golden vector's signing time.
    fn golden_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_785_933_296)
    }

    fn golden_creds(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: Secret::from("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            session_token: token.map(Secret::from),
            source: CredentialSource::StaticEnv,
        }
    }

    const GOLDEN_ORG: &str = "11111111-2222-3333-4444-555555555555";
    const GOLDEN_SIGNATURE: &str =
        "3c567cb74f09e429570dae6682df7b08d094e3025394a08df8e92ab225fc2006";

    #[test]
    fn golden_time_is_the_vectors_time() {
        // Guards the constant above: 2026-08-05 is day 20670 since the epoch.
        assert_eq!(1_785_933_296 / 86_400, 20_670);
        assert_eq!(1_785_933_296 % 86_400, 12 * 3600 + 34 * 60 + 56);
    }

    #[test]
    fn golden_vector_reproduces_byte_for_byte() {
        let creds = golden_creds(Some("FwoGZXIvYXdzEExampleSessionToken"));
        let proof = build_proof(
            &creds,
            GOLDEN_ORG,
            None,
            golden_time(),
            "datadog-agent/7.78.0",
        )
        .unwrap();
        let decoded = decode_proof(proof.expose()).unwrap();

        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260805/us-east-1/sts/aws4_request, \
             SignedHeaders=content-length;content-type;host;x-amz-date;x-amz-security-token;x-ddog-org-id, \
             Signature={GOLDEN_SIGNATURE}"
        );
        let expected: BTreeMap<String, Vec<String>> = [
            ("Authorization", authorization.as_str()),
            ("Content-Type", STS_CONTENT_TYPE),
            ("Host", "sts.amazonaws.com"),
            ("User-Agent", "datadog-agent/7.78.0"),
            ("X-Amz-Date", "20260805T123456Z"),
            ("X-Amz-Security-Token", "FwoGZXIvYXdzEExampleSessionToken"),
            ("X-Ddog-Org-Id", GOLDEN_ORG),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
        .collect();
        assert_eq!(decoded.headers, expected);
        assert_eq!(decoded.body, STS_BODY.as_bytes());
        assert_eq!(decoded.method, "POST");
        assert_eq!(decoded.url, "https://sts.amazonaws.com");

        // The whole proof, byte for byte: the header JSON is Go's compact sorted form.
        let json = format!(
            r#"{{"Authorization":["{authorization}"],"Content-Type":["{STS_CONTENT_TYPE}"],"Host":["sts.amazonaws.com"],"User-Agent":["datadog-agent/7.78.0"],"X-Amz-Date":["20260805T123456Z"],"X-Amz-Security-Token":["FwoGZXIvYXdzEExampleSessionToken"],"X-Ddog-Org-Id":["{GOLDEN_ORG}"]}}"#
        );
        let whole = format!(
            "{}|{}|POST|{}",
            STANDARD.encode(STS_BODY),
            STANDARD.encode(json),
            STANDARD.encode("https://sts.amazonaws.com")
        );
        assert_eq!(proof.expose(), whole);
    }

    #[test]
    fn body_is_the_agents_43_bytes() {
        assert_eq!(STS_BODY.len(), 43);
    }

    #[test]
    fn without_session_token_the_header_is_absent_and_unsigned() {
        let proof = build_proof(
            &golden_creds(None),
            GOLDEN_ORG,
            Some("eu-west-1"),
            golden_time(),
            "ua",
        )
        .unwrap();
        let decoded = decode_proof(proof.expose()).unwrap();
        let keys: Vec<&str> = decoded.headers.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "Authorization",
                "Content-Type",
                "Host",
                "User-Agent",
                "X-Amz-Date",
                "X-Ddog-Org-Id"
            ]
        );
        let auth = decoded.header("authorization").unwrap();
        assert!(
            auth.contains("/20260805/eu-west-1/sts/aws4_request, "),
            "{auth}"
        );
        assert!(
            auth.contains(
                "SignedHeaders=content-length;content-type;host;x-amz-date;x-ddog-org-id, "
            ),
            "{auth}"
        );
        assert_eq!(decoded.url, "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(decoded.header("host"), Some("sts.eu-west-1.amazonaws.com"));
    }

    #[test]
    fn empty_session_token_counts_as_none() {
        let proof = build_proof(
            &golden_creds(Some("")),
            GOLDEN_ORG,
            None,
            golden_time(),
            "ua",
        )
        .unwrap();
        assert!(
            decode_proof(proof.expose())
                .unwrap()
                .header("x-amz-security-token")
                .is_none()
        );
    }

    #[test]
    fn rejects_missing_org_and_credentials() {
        assert!(matches!(
            build_proof(&golden_creds(None), " ", None, golden_time(), "ua"),
            Err(ProofError::MissingOrgUuid)
        ));
        let mut blank = golden_creds(None);
        blank.secret_access_key = Secret::from("");
        let err = build_proof(&blank, GOLDEN_ORG, None, golden_time(), "ua").unwrap_err();
        assert!(
            err.to_string().contains("static environment variables"),
            "{err}"
        );
        assert!(matches!(
            build_proof(
                &golden_creds(None),
                GOLDEN_ORG,
                None,
                golden_time(),
                "bad\nua"
            ),
            Err(ProofError::InvalidHeader { name: "User-Agent" })
        ));
    }

    #[test]
    fn proof_is_secret() {
        let proof =
            build_proof(&golden_creds(None), GOLDEN_ORG, None, golden_time(), "ua").unwrap();
        assert!(!format!("{proof:?}").contains("QWN0aW9u"));
    }

    #[test]
    fn region_to_host_table() {
        let table = [
            (None, "sts.amazonaws.com", "us-east-1"),
            (Some(""), "sts.amazonaws.com", "us-east-1"),
            (
                Some("us-east-1"),
                "sts.us-east-1.amazonaws.com",
                "us-east-1",
            ),
            (
                Some("eu-west-1"),
                "sts.eu-west-1.amazonaws.com",
                "eu-west-1",
            ),
            (
                Some("ap-southeast-2"),
                "sts.ap-southeast-2.amazonaws.com",
                "ap-southeast-2",
            ),
            (
                Some("us-gov-west-1"),
                "sts.us-gov-west-1.amazonaws.com",
                "us-gov-west-1",
            ),
            (
                Some("cn-north-1"),
                "sts.cn-north-1.amazonaws.com.cn",
                "cn-north-1",
            ),
            (
                Some("cn-northwest-1"),
                "sts.cn-northwest-1.amazonaws.com.cn",
                "cn-northwest-1",
            ),
        ];
        for (region, host, signing) in table {
            let endpoint = sts_endpoint(region);
            assert_eq!(endpoint.host, host, "{region:?}");
            assert_eq!(endpoint.url, format!("https://{host}"), "{region:?}");
            assert_eq!(endpoint.signing_region, signing, "{region:?}");
        }
    }

    #[test]
    fn decoding_rejects_malformed_fields() {
        for (proof, needle) in [
            ("a|b|POST", "4 fields"),
            ("a|b|c|d|e", "5"),
            ("!!|e30=|POST|", "body"),
            ("|bm90IGpzb24=|POST|", "headers"),
            ("|e30=|POST|/w==", "url"),
            ("|e30=||", "method"),
        ] {
            let err = decode_proof(proof).unwrap_err();
            assert!(err.to_string().contains(needle), "{proof}: {err}");
        }
        let ok = decode_proof("|e30=|POST|").unwrap();
        assert!(ok.body.is_empty() && ok.headers.is_empty() && ok.url.is_empty());
    }

    #[test]
    fn go_json_escaping() {
        let mut out = String::new();
        go_json_string(&mut out, "a<b>&\"\\\n\u{1}\u{2028}é");
        assert_eq!(out, r#""a\u003cb\u003e\u0026\"\\\n\u0001\u2028é""#);
        let map = BTreeMap::from([
            ("b".to_owned(), vec!["2".to_owned()]),
            ("A".to_owned(), vec!["1".to_owned(), "x".to_owned()]),
        ]);
        assert_eq!(go_json_map(&map), r#"{"A":["1","x"],"b":["2"]}"#);
    }

    #[test]
    fn canonical_header_names() {
        assert_eq!(
            go_canonical_header("x-amz-security-token"),
            "X-Amz-Security-Token"
        );
        assert_eq!(go_canonical_header("authorization"), "Authorization");
        assert_eq!(go_canonical_header("X-AMZ-DATE"), "X-Amz-Date");
    }
}

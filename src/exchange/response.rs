//! Reading the exchange's answers: the 200 body (wire spec §2.3), JSON:API error details, and
//! `Retry-After`.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::ExchangeError;
use crate::secret::Secret;

/// At most this many characters of server-authored error text are kept per message, and the
/// whole joined detail is capped at [`MAX_DETAIL_TOTAL_CHARS`]: enough for "Authenticated as
/// <arn> but no identity mapping was found." and friends, and a bound on what a misbehaving
/// server can push into our logs and status.
const MAX_DETAIL_CHARS: usize = 512;
/// See [`MAX_DETAIL_CHARS`].
const MAX_DETAIL_TOTAL_CHARS: usize = 1024;

/// The longest API key accepted from an exchange. Datadog's API keys are 32 characters; the
/// margin is for formats to come, the bound for the consumers (headers, environments, files).
pub const MAX_API_KEY_BYTES: usize = 256;

/// The managed API key in a 200 answer, `data.attributes.api_key` of
/// `{"data":{"id":…,"type":"intake_api_key","attributes":{"api_key":"…","org_id":…}}}`. Extra
/// fields are ignored, as in the Agent.
///
/// # Errors
/// [`ExchangeError::InvalidResponse`] for anything the Agent's `TestParseResponse` refuses (bad
/// JSON, missing `data` or `attributes`, empty key) and for a key that is not a string or holds
/// whitespace or control characters (it could not be sent in an HTTP header by any consumer).
/// The message never contains the body: it is parsed into a `serde_json::Value` and walked by
/// hand, because serde's typed errors quote the offending value.
pub fn parse_response(body: &[u8]) -> Result<Secret, ExchangeError> {
    let invalid = |reason: &str| ExchangeError::InvalidResponse {
        reason: reason.to_owned(),
    };
    let mut value: Value = serde_json::from_slice(body).map_err(|e| {
        // Category and position only; serde_json's syntax errors do not quote input.
        invalid(&format!(
            "the 200 answer is not JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let Some(data) = value.get_mut("data") else {
        return Err(invalid("the 200 answer has no `data` object"));
    };
    let Some(attributes) = data.get_mut("attributes") else {
        return Err(invalid("the 200 answer has no `data.attributes` object"));
    };
    let key = match attributes.get_mut("api_key").map(Value::take) {
        Some(Value::String(key)) => Secret::new(key),
        Some(Value::Null) | None => {
            return Err(invalid("api_key is empty in response"));
        }
        Some(_) => return Err(invalid("`data.attributes.api_key` is not a string")),
    };
    if key.is_empty() {
        return Err(invalid("api_key is empty in response"));
    }
    // Only what an API key can be: it goes into HTTP headers, environment variables (`exec`)
    // and files, where anything else breaks the consumer (a 600 KB key made exec fail with
    // E2BIG).
    if key.expose().len() > MAX_API_KEY_BYTES {
        return Err(invalid(&format!(
            "`data.attributes.api_key` is {} bytes long; an API key is at most {MAX_API_KEY_BYTES}",
            key.expose().len()
        )));
    }
    if !key.expose().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "`data.attributes.api_key` contains characters other than printable ASCII \
             (whitespace, control characters or non-ASCII)",
        ));
    }
    Ok(key)
}

/// The server-authored messages of an error answer: each `errors[i].detail`, or its `title`
/// when there is no detail, joined with `"; "` (the Agent's `errorDetail`); plain-string
/// entries (`{"errors":["Forbidden"]}`, Datadog's older form) are taken as they are. `None`
/// when the body is not such an envelope or carries no message. Only those fields are ever
/// read, never the rest of the body, so a success-shaped body (which holds a key) yields
/// nothing. Control characters are replaced and each message is length-capped.
pub fn error_detail(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let errors = value.get("errors")?.as_array()?;
    let messages: Vec<String> = errors
        .iter()
        .filter_map(|entry| {
            let text = match entry {
                Value::String(s) => s.as_str(),
                Value::Object(_) => [entry.get("detail"), entry.get("title")]
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|s| !s.trim().is_empty())?,
                _ => return None,
            };
            let text = text.trim();
            (!text.is_empty()).then(|| sanitize(text, MAX_DETAIL_CHARS))
        })
        .collect();
    if messages.is_empty() {
        return None;
    }
    Some(sanitize(&messages.join("; "), MAX_DETAIL_TOTAL_CHARS))
}

/// `Retry-After` as a delay from `now`: delay-seconds or an HTTP date (RFC 9110 §10.2.3); a
/// date in the past is zero. `None` when absent or unparsable (the caller then uses its own
/// backoff).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than fail.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Control characters become spaces (one log line stays one line) and the text is cut at `max`
/// characters with an ellipsis.
fn sanitize(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case of the Agent's `TestParseResponse`.
    #[test]
    fn agent_parse_response_cases() {
        let ok: &[(&str, &str)] = &[
            (
                r#"{"data":{"attributes":{"api_key":"test-api-key-12345"}}}"#,
                "test-api-key-12345",
            ),
            (
                r#"{"data":{"id":"some-id","type":"intake-key","attributes":{"api_key":"another-test-key","created_at":"2025-01-01T00:00:00Z","name":"test-key"}}}"#,
                "another-test-key",
            ),
            // The documented shape, with org_id.
            (
                r#"{"data":{"id":"x","type":"intake_api_key","attributes":{"api_key":"0123456789abcdef0123456789abcdef","org_id":123}}}"#,
                "0123456789abcdef0123456789abcdef",
            ),
        ];
        for (body, want) in ok {
            let key = parse_response(body.as_bytes()).unwrap();
            assert_eq!(key.expose(), *want);
        }
        let bad: &[(&str, &str, &str)] = &[
            (
                "empty api_key",
                r#"{"data":{"attributes":{"api_key":""}}}"#,
                "api_key is empty",
            ),
            (
                "missing attributes",
                r#"{"data":{"id":"some-id"}}"#,
                "data.attributes",
            ),
            (
                "missing data",
                r#"{"error":"something went wrong"}"#,
                "`data`",
            ),
            ("invalid json", "{invalid json", "not JSON"),
            ("empty response", "{}", "`data`"),
        ];
        for (name, body, needle) in bad {
            let err = parse_response(body.as_bytes()).expect_err(name);
            assert_eq!(err.kind(), "invalid_response", "{name}");
            assert!(err.to_string().contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn more_parse_response_cases() {
        let bad: &[(&str, &str)] = &[
            ("null key", r#"{"data":{"attributes":{"api_key":null}}}"#),
            (
                "numeric key",
                r#"{"data":{"attributes":{"api_key":12345}}}"#,
            ),
            (
                "key with newline",
                r#"{"data":{"attributes":{"api_key":"abc\ndef"}}}"#,
            ),
            (
                "key with space",
                r#"{"data":{"attributes":{"api_key":"abc def"}}}"#,
            ),
            ("data is a string", r#"{"data":"SECRETVALUE"}"#),
            ("array", "[]"),
            ("empty body", ""),
            ("truncated", r#"{"data":{"attributes":{"api_key":"abc"#),
            (
                "non-ASCII",
                r#"{"data":{"attributes":{"api_key":"abcé0123"}}}"#,
            ),
            ("tab", r#"{"data":{"attributes":{"api_key":"abc\tdef"}}}"#),
        ];
        let long = format!(
            r#"{{"data":{{"attributes":{{"api_key":"{}"}}}}}}"#,
            "k".repeat(MAX_API_KEY_BYTES + 1)
        );
        let err = parse_response(long.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), "invalid_response");
        assert!(err.to_string().contains("257 bytes long"), "{err}");
        let longest = long.replace(&format!("{}\"", "k".repeat(2)), "\"");
        assert!(parse_response(longest.as_bytes()).is_ok());
        for (name, body) in bad {
            let err = parse_response(body.as_bytes()).expect_err(name);
            assert_eq!(err.kind(), "invalid_response", "{name}");
            // Never echo the body.
            let text = err.to_string();
            assert!(
                !text.contains("SECRETVALUE") && !text.contains("abc"),
                "{name}: {text}"
            );
        }
    }

    /// Every case of the Agent's `TestErrorDetail`, plus plain-string errors.
    #[test]
    fn agent_error_detail_cases() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"{"errors":[{"status":"401","title":"Unauthorized","detail":"Authenticated as arn:aws:sts::123:assumed-role/R/s but no identity mapping was found."}]}"#,
                Some(
                    "Authenticated as arn:aws:sts::123:assumed-role/R/s but no identity mapping was found.",
                ),
            ),
            (
                r#"{"errors":[{"title":"Unauthorized"}]}"#,
                Some("Unauthorized"),
            ),
            (
                r#"{"errors":[{"detail":"a"},{"detail":"b"}]}"#,
                Some("a; b"),
            ),
            ("<html>502 Bad Gateway</html>", None),
            (r#"{"errors":[]}"#, None),
            ("", None),
            (r#"{"data":{"attributes":{"api_key":"SECRETKEY"}}}"#, None),
            // Plain strings, mixed forms, empties.
            (r#"{"errors":["Forbidden"]}"#, Some("Forbidden")),
            (r#"{"errors":["a",{"title":"b"},42,null,""]}"#, Some("a; b")),
            (r#"{"errors":[{"detail":"","title":"T"}]}"#, Some("T")),
            (r#"{"errors":[{"status":"500"}]}"#, None),
            (r#"{"errors":"Forbidden"}"#, None),
            (
                r#"{"errors":[{"detail":"line1\nline2"}]}"#,
                Some("line1 line2"),
            ),
        ];
        for (body, want) in cases {
            let got = error_detail(body.as_bytes());
            assert_eq!(got.as_deref(), *want, "{body}");
            assert!(!got.unwrap_or_default().contains("SECRETKEY"));
        }
    }

    #[test]
    fn error_detail_is_capped() {
        let long = "x".repeat(5000);
        let body = format!(r#"{{"errors":["{long}","{long}","{long}"]}}"#);
        let got = error_detail(body.as_bytes()).unwrap();
        assert!(
            got.chars().count() <= MAX_DETAIL_TOTAL_CHARS + 1,
            "{}",
            got.len()
        );
        assert!(got.ends_with('…'));
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}

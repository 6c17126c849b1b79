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
    let mut value = answer_json(body)?;
    let Some(data) = value.get_mut("data") else {
        return Err(invalid("the 200 answer has no `data` object"));
    };
    let Some(attributes) = data.get_mut("attributes") else {
        return Err(invalid("the 200 answer has no `data.attributes` object"));
    };
    take_credential(attributes, "api_key", "an API key", MAX_API_KEY_BYTES)
}

fn invalid(reason: &str) -> ExchangeError {
    ExchangeError::InvalidResponse {
        reason: reason.to_owned(),
    }
}

/// A 200 body as JSON. The error names the category and position only: serde_json's syntax
/// errors do not quote input, and typed deserialisation (which would) is never used on a body
/// that holds a credential.
fn answer_json(body: &[u8]) -> Result<Value, ExchangeError> {
    serde_json::from_slice(body).map_err(|e| {
        invalid(&format!(
            "the 200 answer is not JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// Takes the credential `data.attributes.<field>` (an API key or a token) out of `attributes`:
/// a non-empty string of at most `max` printable ASCII bytes. It goes into HTTP headers,
/// environment variables (`exec`) and files, where anything else breaks the consumer (a 600 KB
/// key made exec fail with E2BIG). `what` names it in the errors (`an API key`).
fn take_credential(
    attributes: &mut Value,
    field: &str,
    what: &str,
    max: usize,
) -> Result<Secret, ExchangeError> {
    let empty = || invalid(&format!("{field} is empty in response"));
    let value = match attributes.get_mut(field).map(Value::take) {
        Some(Value::String(value)) => Secret::new(value),
        Some(Value::Null) | None => return Err(empty()),
        Some(_) => {
            return Err(invalid(&format!(
                "`data.attributes.{field}` is not a string"
            )));
        }
    };
    if value.is_empty() {
        return Err(empty());
    }
    if value.expose().len() > max {
        return Err(invalid(&format!(
            "`data.attributes.{field}` is {} bytes long; {what} is at most {max}",
            value.expose().len()
        )));
    }
    if !value.expose().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(&format!(
            "`data.attributes.{field}` contains characters other than printable ASCII \
             (whitespace, control characters or non-ASCII)"
        )));
    }
    Ok(value)
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

/// The longest delegated API token accepted. A JWT naming a user, an org and a few claims is
/// under 2 KiB; the bound is for the consumers (headers, environments) and for what a broken
/// server can make the daemon hold.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The lifetime assumed when the answer has no usable `expires`: what the API clients assume
/// (wire spec §8.1).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The longest lifetime believed: an `expires` further away is taken as this. Datadog's tokens
/// live minutes to an hour; a far-off (or absurd: `expires` of 10^30 overflowed the clock
/// arithmetic, found by fuzzing) expiry would otherwise leave a token unrefreshed for as long.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A delegated API token, as the exchange answered it.
#[derive(Clone, Debug)]
pub struct DelegatedToken {
    /// The JWT.
    pub token: Secret,
    /// When it stops being valid.
    pub expires_at: SystemTime,
    /// `expires` was missing or unreadable, and [`DEFAULT_TOKEN_LIFETIME`] was assumed.
    pub expiry_assumed: bool,
}

/// The token in a 200 answer of the delegated-token endpoint (wire spec §8.1):
/// `{"data":{"type":"delegated_token","attributes":{"access_token":"<JWT>","expires":"<unix
/// seconds>"}}}`. `expires` is a string of unix seconds; a number is taken too. Missing or
/// unparseable, it is `now` + [`DEFAULT_TOKEN_LIFETIME`], as the API clients do; further than
/// [`MAX_TOKEN_LIFETIME`] away, it is that.
///
/// # Errors
/// [`ExchangeError::InvalidResponse`] for bad JSON, a missing, empty, oversized or non-printable
/// `access_token`, and a token that has already expired at `now` (serving it would only fail the
/// consumer; the usual cause is a wrong host clock, which the message names). The body is never
/// quoted.
pub fn parse_token_response(body: &[u8], now: SystemTime) -> Result<DelegatedToken, ExchangeError> {
    let mut value = answer_json(body)?;
    let Some(attributes) = value.get_mut("data").and_then(|d| d.get_mut("attributes")) else {
        return Err(invalid("the 200 answer has no `data.attributes` object"));
    };
    let token = take_credential(attributes, "access_token", "a token", MAX_TOKEN_BYTES)?;
    let expires = match attributes.get("expires") {
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let latest = now + MAX_TOKEN_LIFETIME;
    let (expires_at, expiry_assumed) = match expires {
        Some(secs) => (
            (SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
                .map_or(latest, |at| at.min(latest)),
            false,
        ),
        None => (now + DEFAULT_TOKEN_LIFETIME, true),
    };
    if expires_at <= now {
        return Err(invalid(&format!(
            "the token expires at {}, which is not after this host's clock ({}); if the host \
             clock is wrong, fix its time synchronisation (chrony, systemd-timesyncd)",
            humantime::format_rfc3339_seconds(expires_at),
            humantime::format_rfc3339_seconds(now)
        )));
    }
    Ok(DelegatedToken {
        token,
        expires_at,
        expiry_assumed,
    })
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
mod token_tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn parse(body: &str) -> Result<DelegatedToken, ExchangeError> {
        parse_token_response(body.as_bytes(), at(NOW))
    }

    #[test]
    fn the_documented_answer_parses() {
        let t = parse(&format!(
            r#"{{"data":{{"type":"delegated_token","attributes":{{"access_token":"eyJ.a.b","expires":"{}"}}}}}}"#,
            NOW + 900
        ))
        .unwrap();
        assert_eq!(t.token.expose(), "eyJ.a.b");
        assert_eq!(t.expires_at, at(NOW + 900));
        assert!(!t.expiry_assumed);
        // A number is taken too.
        let t =
            parse(r#"{"data":{"attributes":{"access_token":"x","expires":1800000060}}}"#).unwrap();
        assert_eq!(t.expires_at, at(NOW + 60));
    }

    #[test]
    fn a_missing_or_unreadable_expiry_is_fifteen_minutes_as_the_clients_assume() {
        for attrs in [
            r#""access_token":"x""#,
            r#""access_token":"x","expires":"garbage""#,
            r#""access_token":"x","expires":"""#,
            r#""access_token":"x","expires":null"#,
            r#""access_token":"x","expires":-5"#,
        ] {
            let t = parse(&format!(r#"{{"data":{{"attributes":{{{attrs}}}}}}}"#)).unwrap();
            assert_eq!(t.expires_at, at(NOW + 900), "{attrs}");
            assert!(t.expiry_assumed, "{attrs}");
        }
    }

    #[test]
    fn a_far_or_absurd_expiry_is_capped_at_a_day() {
        for expires in ["1900000000", "00000000000000000000013698302631538697791"] {
            let t = parse(&format!(
                r#"{{"data":{{"attributes":{{"access_token":"x","expires":"{expires}"}}}}}}"#
            ))
            .unwrap();
            assert_eq!(t.expires_at, at(NOW) + MAX_TOKEN_LIFETIME, "{expires}");
            assert!(!t.expiry_assumed);
        }
        let t =
            parse(r#"{"data":{"attributes":{"access_token":"x","expires":18446744073709551615}}}"#)
                .unwrap();
        assert_eq!(t.expires_at, at(NOW) + MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn unusable_answers_are_refused_without_quoting_them() {
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        for (body, needle) in [
            ("{", "not JSON"),
            (r#"{"data":{}}"#, "no `data.attributes`"),
            (r#"{"data":{"attributes":{}}}"#, "access_token is empty"),
            (
                r#"{"data":{"attributes":{"access_token":""}}}"#,
                "access_token is empty",
            ),
            (
                r#"{"data":{"attributes":{"access_token":7}}}"#,
                "not a string",
            ),
            (
                r#"{"data":{"attributes":{"access_token":"a b"}}}"#,
                "printable ASCII",
            ),
            (
                &format!(r#"{{"data":{{"attributes":{{"access_token":"{long}"}}}}}}"#),
                "at most 16384",
            ),
            (
                r#"{"data":{"attributes":{"access_token":"secret-jwt","expires":"1799999999"}}}"#,
                "host clock",
            ),
        ] {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(needle), "{body}: {e}");
            assert!(!e.contains("secret-jwt") && !e.contains("xxxxxxxx"), "{e}");
        }
    }
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

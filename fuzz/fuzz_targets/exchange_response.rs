//! The exchange's answer parsers: the 200 body (`exchange::parse_response`), the delegated
//! token's 200 body (`exchange::parse_token_response`), JSON:API error details
//! (`exchange::error_detail`) and `Retry-After` (`exchange::parse_retry_after`).
//!
//! Input: a response body; the same bytes (as text) are also read as a `Retry-After` value.
//! Properties: an accepted key or token is non-empty, bounded and header-safe, and a token's
//! expiry is after "now" and at most a day later; errors never echo the body; details are single-line and bounded; a
//! delay-seconds value always parses.
#![no_main]

use std::time::{Duration, SystemTime};

use datadog_delegated_auth::exchange::{
    MAX_TOKEN_BYTES, MAX_TOKEN_LIFETIME, error_detail, parse_response, parse_retry_after,
    parse_token_response,
};
use libfuzzer_sys::fuzz_target;

/// Longest detail: 1024 characters plus the ellipsis that marks a cut.
const MAX_DETAIL_CHARS: usize = 1024 + 1;

fuzz_target!(|data: &[u8]| {
    match parse_response(data) {
        Ok(key) => {
            let key = key.expose();
            assert!(!key.is_empty());
            assert!(
                !key.chars().any(|c| c.is_whitespace() || c.is_control()),
                "{key:?}"
            );
        }
        Err(err) => {
            let message = err.to_string();
            // Fixed texts plus a position, so bounded: never the body (which may hold a key).
            // (A body can spell out part of a fixed text, so "does not contain the body" is
            // not a property; the bound is.)
            assert!(message.len() < 400, "{message}");
        }
    }

    // A fixed "now" (2025-01-01T00:00:00Z) keeps runs reproducible.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600);
    match parse_token_response(data, now) {
        Ok(token) => {
            let value = token.token.expose();
            assert!(!value.is_empty() && value.len() <= MAX_TOKEN_BYTES);
            assert!(value.bytes().all(|b| b.is_ascii_graphic()), "{value:?}");
            assert!(token.expires_at > now, "an expired token was accepted");
            assert!(
                token.expires_at <= now + MAX_TOKEN_LIFETIME,
                "an uncapped expiry"
            );
        }
        Err(err) => {
            let message = err.to_string();
            assert!(message.len() < 400, "{message}");
        }
    }

    if let Some(detail) = error_detail(data) {
        assert!(!detail.is_empty());
        assert!(!detail.chars().any(char::is_control), "{detail:?}");
        assert!(
            detail.chars().count() <= MAX_DETAIL_CHARS,
            "{} chars",
            detail.chars().count()
        );
    }

    let text = String::from_utf8_lossy(data);
    let delay = parse_retry_after(&text, now);
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        assert!(delay.is_some(), "delay-seconds {trimmed:?} refused");
    }
});

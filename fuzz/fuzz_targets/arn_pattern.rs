//! The ARN pattern matcher (`arn_pattern::ArnPattern::parse` and `matches`) and the pattern
//! `doctor` suggests for a caller (`arn_pattern::suggest_intake_pattern`).
//!
//! Input: a pattern, a newline, then a caller ARN (without a newline, the input is both).
//! Properties: a pattern without `*` matches exactly itself; a wildcard pattern matches only
//! ARNs that extend its literal part within the last portion; a suggested pattern is valid and
//! matches the caller it was made for.
#![no_main]

use datadog_delegated_auth::arn_pattern::{self, ArnPattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, arn) = text.split_once('\n').unwrap_or((text, text));

    let parsed = ArnPattern::parse(pattern);
    assert_eq!(arn_pattern::validate(pattern).is_ok(), parsed.is_ok());
    match &parsed {
        Ok(p) => {
            assert_eq!(p.as_str(), pattern);
            assert_eq!(p.to_string(), pattern);
            assert_eq!(pattern.parse::<ArnPattern>().as_ref(), Ok(p));
            let matched = p.matches(arn);
            assert_eq!(arn_pattern::matches(pattern, arn), matched);
            if p.has_wildcard() {
                assert_eq!(pattern.matches('*').count(), 1);
                let literal = pattern.strip_suffix('*').expect("the * is last");
                if matched {
                    let rest = arn
                        .strip_prefix(literal)
                        .expect("a match extends the literal");
                    assert!(!rest.is_empty() && !rest.contains('/'), "{arn:?}");
                }
                assert!(
                    !p.matches(literal),
                    "a wildcard stands for at least one character"
                );
            } else {
                assert!(!pattern.contains('*'));
                assert!(p.matches(pattern), "{pattern:?} does not match itself");
                assert_eq!(matched, arn == pattern);
            }
        }
        Err(err) => {
            assert!(
                !arn_pattern::matches(pattern, arn),
                "an invalid pattern matches nothing"
            );
            assert_eq!(err.pattern, pattern);
            assert!(!err.to_string().is_empty());
        }
    }

    if let Some(suggestion) = arn_pattern::suggest_intake_pattern(arn) {
        let p = ArnPattern::parse(&suggestion)
            .unwrap_or_else(|e| panic!("suggested an invalid pattern: {e}"));
        assert!(
            p.matches(arn),
            "suggested {suggestion:?}, which does not match {arn:?}"
        );
    }
});

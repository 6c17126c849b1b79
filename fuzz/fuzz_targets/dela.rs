//! The `DELA[<org>, <provider>[, name=value]...]` / `DELA(...)` directive parser (`config::dela::parse`) and
//! its error-safe rendering (`config::dela::redacted`).
//!
//! Input: the key slot's text. Properties: an accepted directive obeys the grammar the Agent
//! enforces; the `fallback=` key never shows in `redacted` or in `Debug`.
#![no_main]

use datadog_delegated_auth::config::dela;
use datadog_delegated_auth::secret::Secret;
use libfuzzer_sys::fuzz_target;

/// A different key with the same length and the same visible suffix.
fn same_suffix_other_key(key: &Secret) -> Secret {
    let text = key.expose();
    let keep = text.len() - key.suffix().len();
    let mut out: String = text[..keep]
        .chars()
        .map(|c| if c == 'X' { 'Y' } else { 'X' })
        .collect();
    out.push_str(key.suffix());
    Secret::new(out)
}

fn org_or_region(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let redacted = dela::redacted(input);
    match dela::parse(input) {
        Ok(d) => {
            assert!(dela::is_directive(input));
            // Both delimiters of an accepted directive belong to the same form.
            assert_eq!(dela::form_of(input), Some(d.form));
            assert!(input.trim_end().ends_with(d.form.close()));
            assert!(org_or_region(&d.org), "org {:?}", d.org);
            assert!(!d.provider.is_empty());
            assert_eq!(d.provider, d.provider.to_ascii_lowercase());
            if let Some(region) = &d.region {
                assert!(org_or_region(region), "region {region:?}");
            }
            if let Some(fallback) = &d.fallback {
                let key = fallback.expose();
                assert!(!key.is_empty());
                // `redacted` only removes or masks text, so the key's own `fallback=` occurrence
                // must be gone: strictly fewer occurrences than in the input.
                assert!(
                    redacted.matches(key).count() < input.matches(key).count(),
                    "redacted {redacted:?} still shows the fallback key"
                );
                // Debug shows at most the key's visible suffix: a different key with the same
                // suffix prints the same.
                let mut other = d.clone();
                other.fallback = Some(same_suffix_other_key(fallback));
                assert_ne!(d, other);
                assert_eq!(
                    format!("{d:?}"),
                    format!("{other:?}"),
                    "Debug shows the fallback key"
                );
            }
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});

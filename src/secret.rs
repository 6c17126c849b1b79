//! Secret values (API keys, proofs, AWS secret keys, session tokens).
//!
//! A [`Secret`] can only be read through [`Secret::expose`]; `Debug` and `Display` print a
//! redacted form, so a secret that reaches a log line or an error message by accident shows at
//! most its last five characters (the convention of the Agent's `HideKeyExceptLastChars`).
//! The buffer is zeroed on drop so a freed key does not linger in the heap.

use std::fmt;

use zeroize::Zeroize;

/// How many trailing characters of a key may be shown to operators (logs, status, rejection
/// reports). Five is what the Datadog Agent shows, so operators can match the two.
pub const VISIBLE_SUFFIX_CHARS: usize = 5;

/// A secret string. Cloning copies the secret; every copy is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value. Taking `String` (not `&str`) avoids leaving an unzeroed copy behind.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret value. Every call site is a place where the secret leaves our control; keep
    /// them few and obvious.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (an empty key is never served).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The last [`VISIBLE_SUFFIX_CHARS`] characters, or nothing when the secret is too short to
    /// show any part of it safely (fewer than twice that length).
    pub fn suffix(&self) -> &str {
        let count = self.0.chars().count();
        if count < 2 * VISIBLE_SUFFIX_CHARS {
            return "";
        }
        let start = self
            .0
            .char_indices()
            .nth(count - VISIBLE_SUFFIX_CHARS)
            .map_or(0, |(i, _)| i);
        &self.0[start..]
    }

    /// The form shown to operators: `***` followed by the visible suffix.
    pub fn redacted(&self) -> String {
        format!("***{}", self.suffix())
    }

    /// Constant-time comparison of the visible suffix, used to match a consumer's rejection
    /// report against the key currently served.
    pub fn suffix_matches(&self, suffix: &str) -> bool {
        let mine = self.suffix().as_bytes();
        let theirs = suffix.as_bytes();
        if mine.is_empty() || mine.len() != theirs.len() {
            return false;
        }
        mine.iter()
            .zip(theirs)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value.to_owned())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `raw` (a URL, or a scheme-less `host[:port]`) with its `user:password@` replaced by `***@`:
/// proxy URLs, `dd_url` and endpoint URLs may carry credentials, and are shown in logs, status,
/// metrics and `check-config`.
pub fn redact_userinfo(raw: &str) -> String {
    // A scheme-less endpoint (`user:pw@proxy:3128`) starts with its authority.
    let scheme_end = raw.find("://").map_or(0, |i| i + 3);
    let rest = &raw[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &raw[..scheme_end], &rest[at + 1..]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked_with_or_without_a_scheme() {
        assert_eq!(redact_userinfo("http://u:p@h:1/x@y"), "http://***@h:1/x@y");
        assert_eq!(redact_userinfo("http://h:1/x@y"), "http://h:1/x@y");
        assert_eq!(redact_userinfo("u:p@h:1/x"), "***@h:1/x");
        assert_eq!(redact_userinfo("h.example/a@b"), "h.example/a@b");
        assert_eq!(redact_userinfo("https://a@b@h/p"), "https://***@h/p");
        assert_eq!(
            redact_userinfo("http://user:pass@proxy:3128/x@y"),
            "http://***@proxy:3128/x@y"
        );
        assert_eq!(redact_userinfo("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(redact_userinfo("user:pw@proxy"), "***@proxy");
    }

    #[test]
    fn debug_and_display_hide_all_but_the_suffix() {
        let key = Secret::from("0123456789abcdef0123456789abcdef");
        assert_eq!(format!("{key}"), "***bcdef");
        assert_eq!(format!("{key:?}"), "Secret(***bcdef)");
        assert!(!format!("{key:?}").contains("0123456789"));
    }

    #[test]
    fn short_secrets_show_nothing() {
        let key = Secret::from("abcdefgh");
        assert_eq!(key.suffix(), "");
        assert_eq!(key.redacted(), "***");
    }

    #[test]
    fn suffix_handles_multibyte_characters() {
        let key = Secret::from("ééééééééééabcdé");
        assert_eq!(key.suffix(), "abcdé");
    }

    #[test]
    fn suffix_matching() {
        let key = Secret::from("0123456789abcdef0123456789abcdef");
        assert!(key.suffix_matches("bcdef"));
        assert!(!key.suffix_matches("bcdeX"));
        assert!(!key.suffix_matches("cdef"));
        assert!(!Secret::from("short").suffix_matches(""));
    }
}

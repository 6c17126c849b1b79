//! The `DELA(<org>, <provider>[, name=value]...)` directive of dual shipping (wire spec §4.4).
//!
//! A directive sits where an API key would go in `additional_endpoints` (map shape) or
//! `logs_config.additional_endpoints` (list shape) and asks for a managed key for that
//! endpoint's own org. The grammar and its strictness follow the Agent's latest parser
//! (`pkg/config/setup/delegated_auth_endpoints.go`): every rule below rejects the same inputs.
//! Unlike the Agent, which leaves a malformed directive silently inert, the caller turns a
//! rejection into a validation error naming the key.

use std::fmt;

use crate::secret::Secret;

/// The text that marks a directive, compared case-insensitively after trimming. Real API keys
/// are hex, so nothing that starts this way can be a key; matching any casing guarantees a
/// mistyped `dela(...)` is never sent to Datadog as a key.
pub const DIRECTIVE_PREFIX: &str = "DELA(";

/// A parsed directive.
#[derive(Clone, PartialEq, Eq)]
pub struct Directive {
    /// The org as written (checked against `^[A-Za-z0-9-]+$`; the caller also requires a UUID).
    pub org: String,
    /// The provider, lowercased (`aws` is the only one the caller accepts).
    pub provider: String,
    /// `region=`, checked against `^[A-Za-z0-9-]+$`.
    pub region: Option<String>,
    /// `fallback=`: a static key for this endpoint, used while no managed key can be had.
    pub fallback: Option<Secret>,
}

impl fmt::Debug for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directive")
            .field("org", &self.org)
            .field("provider", &self.provider)
            .field("region", &self.region)
            .field("fallback", &self.fallback)
            .finish()
    }
}

/// Why a directive was rejected. Messages never include the `fallback=` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    #[error("the directive contains a line break")]
    LineBreak,
    #[error("the directive must start with `DELA(` and end with `)`")]
    NotADirective,
    #[error("the directive needs at least an org and a provider: DELA(<org_uuid>, aws)")]
    TooFewFields,
    #[error("the org must be letters, digits and `-` only")]
    BadOrg,
    #[error("the provider must be letters, digits, `_` and `-` only")]
    BadProvider,
    #[error("parameter {index} has no `=` (expected name=value)")]
    MissingEquals { index: usize },
    #[error("parameter {index} has an empty or invalid name (letters, digits, `_` and `-` only)")]
    BadParamName { index: usize },
    #[error("unknown parameter `{name}` (supported: region, fallback)")]
    UnknownParam { name: String },
    #[error("parameter `{name}` is given twice")]
    DuplicateParam { name: String },
    #[error("region `{value}` must be letters, digits and `-` only")]
    BadRegion { value: String },
    #[error("the fallback key must be letters, digits, `_`, `=` and `-` only")]
    BadFallback,
}

/// Whether a key slot holds a directive (as opposed to a key or a secret handle).
pub fn is_directive(value: &str) -> bool {
    let trimmed = value.trim();
    trimmed
        .get(..DIRECTIVE_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(DIRECTIVE_PREFIX))
}

/// `^[A-Za-z0-9-]+$`
fn is_org_or_region(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `^[A-Za-z0-9_-]+$`
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `^[A-Za-z0-9_=-]+$`
fn is_fallback(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
}

/// Parses a directive with the Agent's strictness.
pub fn parse(value: &str) -> Result<Directive, DirectiveError> {
    if value.contains(['\r', '\n']) {
        return Err(DirectiveError::LineBreak);
    }
    let value = value.trim();
    if !is_directive(value) || !value.ends_with(')') || value.len() < DIRECTIVE_PREFIX.len() + 1 {
        return Err(DirectiveError::NotADirective);
    }
    let body = &value[DIRECTIVE_PREFIX.len()..value.len() - 1];
    let parts: Vec<&str> = body.split(',').collect();
    if parts.len() < 2 {
        return Err(DirectiveError::TooFewFields);
    }
    let org = parts[0].trim();
    let provider = parts[1].trim();
    if !is_org_or_region(org) {
        return Err(DirectiveError::BadOrg);
    }
    if !is_name(provider) {
        return Err(DirectiveError::BadProvider);
    }
    let mut region = None;
    let mut fallback = None;
    for (i, pair) in parts[2..].iter().enumerate() {
        let index = i + 3;
        let Some((name, val)) = pair.trim().split_once('=') else {
            return Err(DirectiveError::MissingEquals { index });
        };
        let name = name.trim().to_ascii_lowercase();
        let val = val.trim();
        if !is_name(&name) {
            return Err(DirectiveError::BadParamName { index });
        }
        match name.as_str() {
            "region" => {
                if !is_org_or_region(val) {
                    return Err(DirectiveError::BadRegion {
                        value: val.to_owned(),
                    });
                }
                if region.replace(val.to_owned()).is_some() {
                    return Err(DirectiveError::DuplicateParam { name });
                }
            }
            "fallback" => {
                if !is_fallback(val) {
                    return Err(DirectiveError::BadFallback);
                }
                if fallback.replace(Secret::from(val)).is_some() {
                    return Err(DirectiveError::DuplicateParam { name });
                }
            }
            _ => return Err(DirectiveError::UnknownParam { name }),
        }
    }
    Ok(Directive {
        org: org.to_owned(),
        provider: provider.to_ascii_lowercase(),
        region,
        fallback,
    })
}

/// A form of a directive that is safe to show in an error: the org, the provider and any
/// `region=` are kept; every other parameter value (`fallback=`, and anything unparseable that
/// might be a key typed without its `fallback=`) is replaced with `***`.
pub fn redacted(value: &str) -> String {
    let one_line: String = value
        .trim()
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let Some(open) = one_line.find('(') else {
        return "***".to_owned();
    };
    let (head, rest) = one_line.split_at(open + 1);
    let body = rest.strip_suffix(')').unwrap_or(rest);
    let mut out = String::from(head);
    for (i, part) in body.split(',').enumerate() {
        if i > 0 {
            out.push(',');
        }
        if i < 2 {
            out.push_str(part);
            continue;
        }
        match part.split_once('=') {
            Some((name, val)) if name.trim().eq_ignore_ascii_case("region") => {
                out.push_str(name);
                out.push('=');
                out.push_str(val);
            }
            Some((name, _)) => {
                out.push_str(name);
                out.push_str("=***");
            }
            None if part.trim().is_empty() => out.push_str(part),
            None => out.push_str(" ***"),
        }
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    #[test]
    fn rejects_the_wire_spec_examples() {
        // TestMalformedDirectiveRegistersNothing in the Agent.
        let cases: &[(&str, DirectiveError)] = &[
            ("DELA()", DirectiveError::TooFewFields),
            ("DELA(org)", DirectiveError::TooFewFields),
            ("DELA(, aws)", DirectiveError::BadOrg),
            ("DELA(org, )", DirectiveError::BadProvider),
            (
                "DELA(org, aws, region)",
                DirectiveError::MissingEquals { index: 3 },
            ),
            (
                "DELA(org, aws, =us-east-1)",
                DirectiveError::BadParamName { index: 3 },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input).as_ref().err(), Some(expected), "{input}");
        }
    }

    #[test]
    fn rejects_everything_the_latest_agent_parser_rejects() {
        let cases: &[(&str, DirectiveError)] = &[
            ("DELA(org, aws)\n", DirectiveError::LineBreak),
            ("DELA(org,\r aws)", DirectiveError::LineBreak),
            ("DELA(org, aws", DirectiveError::NotADirective),
            ("DELAY(org, aws)", DirectiveError::NotADirective),
            ("DELA(org_x, aws)", DirectiveError::BadOrg),
            ("DELA(org x, aws)", DirectiveError::BadOrg),
            ("DELA(org, a.b)", DirectiveError::BadProvider),
            (
                "DELA(org, aws,)",
                DirectiveError::MissingEquals { index: 3 },
            ),
            (
                "DELA(org, aws, re gion=x)",
                DirectiveError::BadParamName { index: 3 },
            ),
            (
                "DELA(org, aws, zone=x)",
                DirectiveError::UnknownParam {
                    name: "zone".into(),
                },
            ),
            (
                "DELA(org, aws, region=a, REGION=b)",
                DirectiveError::DuplicateParam {
                    name: "region".into(),
                },
            ),
            (
                "DELA(org, aws, fallback=a, Fallback=b)",
                DirectiveError::DuplicateParam {
                    name: "fallback".into(),
                },
            ),
            (
                "DELA(org, aws, region=us_east_1)",
                DirectiveError::BadRegion {
                    value: "us_east_1".into(),
                },
            ),
            (
                "DELA(org, aws, region=)",
                DirectiveError::BadRegion { value: "".into() },
            ),
            (
                "DELA(org, aws, fallback=ab.cd)",
                DirectiveError::BadFallback,
            ),
            ("DELA(org, aws, fallback=)", DirectiveError::BadFallback),
            ("DELA(org, aws, fallback=a b)", DirectiveError::BadFallback),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input).as_ref().err(), Some(expected), "{input}");
        }
    }

    #[test]
    fn accepts_the_documented_forms() {
        let d = parse(&format!("DELA({ORG}, aws)")).unwrap();
        assert_eq!(d.org, ORG);
        assert_eq!(d.provider, "aws");
        assert_eq!(d.region, None);
        assert!(d.fallback.is_none());

        let d = parse(&format!(
            "  dela(  {ORG} ,AWS , Region = eu-west-1 ,  FALLBACK=abc_DEF-12== )  "
        ))
        .unwrap();
        assert_eq!(d.provider, "aws");
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            d.fallback.as_ref().map(Secret::expose),
            Some("abc_DEF-12==")
        );

        // The parser itself accepts any provider name; the caller rejects non-aws ones.
        assert_eq!(parse("DELA(org, gcp)").unwrap().provider, "gcp");
    }

    #[test]
    fn directive_detection_is_case_insensitive_and_trims() {
        assert!(is_directive("DELA(x, aws)"));
        assert!(is_directive("  dela(x"));
        assert!(is_directive("Dela("));
        assert!(!is_directive("0123456789abcdef"));
        assert!(!is_directive("ENC[api_key]"));
        assert!(!is_directive("DEL"));
        assert!(!is_directive("é"));
    }

    #[test]
    fn debug_and_redaction_never_show_the_fallback() {
        let d = parse("DELA(org, aws, fallback=supersecretvalue12345)").unwrap();
        assert!(!format!("{d:?}").contains("supersecret"));
        for input in [
            "DELA(org, aws, fallback=supersecretvalue12345)",
            "DELA(org, aws, FallBack = supersecretvalue12345, region=us-east-1)",
            "DELA(org, aws, supersecretvalue12345)",
            "DELA(org, aws, fallback=supersecret.value",
            "DELA(org, aws, region=x\n, fallback=supersecretvalue)",
        ] {
            let shown = redacted(input);
            assert!(!shown.contains("supersecret"), "{input} -> {shown}");
            assert!(!shown.contains('\n'));
        }
        assert_eq!(
            redacted("DELA(org, aws, region=us-east-1, fallback=abc)"),
            "DELA(org, aws, region=us-east-1, fallback=***)"
        );
    }
}

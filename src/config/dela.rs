//! The `DELA[<org>, <provider>[, name=value]...]` directive of dual shipping (wire spec §4.4,
//! §10.1), and its older form `DELA(<org>, <provider>[, name=value]...)`.
//!
//! The newest Agent writes the bracket form and treats the parenthesis form as a literal key;
//! older Agents do the opposite. Both are recognised everywhere, with the same strictness: only
//! the delimiters differ. A value that opens with one form and closes with the other is an error
//! naming both.
//!
//! A directive sits where an API key would go in `additional_endpoints` (map shape) or
//! `logs_config.additional_endpoints` (list shape) and asks for a managed key for that
//! endpoint's own org. The grammar and its strictness follow the Agent's latest parser
//! (`pkg/config/setup/delegated_auth_endpoints.go`): every rule below rejects the same inputs.
//! Unlike the Agent, which leaves a malformed directive silently inert, the caller turns a
//! rejection into a validation error naming the key.

use std::fmt;

use crate::secret::Secret;

/// The text that marks a directive of the newest Agent, compared case-insensitively after
/// trimming. Real API keys are hex, so nothing that starts this way can be a key; matching any
/// casing guarantees a mistyped `dela[...]` is never sent to Datadog as a key.
pub const DIRECTIVE_PREFIX: &str = "DELA[";
/// The prefix of the older form, `DELA(...)` (Agent commits before 07d768e).
pub const LEGACY_DIRECTIVE_PREFIX: &str = "DELA(";

/// Which of the two forms a directive is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `DELA[...]`: the newest Agent's form.
    Bracket,
    /// `DELA(...)`: the form of older Agents.
    Paren,
}

impl Form {
    /// The closing delimiter.
    pub fn close(self) -> char {
        match self {
            Form::Bracket => ']',
            Form::Paren => ')',
        }
    }

    /// How `check-config` names the form.
    pub fn describe(self) -> &'static str {
        match self {
            Form::Bracket => "DELA[...] (newest Agent)",
            Form::Paren => "DELA(...) (older Agents)",
        }
    }
}

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
    /// The form it was written in.
    pub form: Form,
}

impl fmt::Debug for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directive")
            .field("org", &self.org)
            .field("provider", &self.provider)
            .field("region", &self.region)
            .field("fallback", &self.fallback)
            .field("form", &self.form)
            .finish()
    }
}

/// Why a directive was rejected. Messages never include the `fallback=` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    #[error("the directive contains a line break")]
    LineBreak,
    #[error("the directive must be written DELA[...] (newest Agent) or DELA(...) (older Agents)")]
    NotADirective,
    #[error(
        "the directive mixes the two forms (opens with `{open}`, ends with `{close}`); write \
         DELA[...] (newest Agent) or DELA(...) (older Agents)"
    )]
    MixedForms { open: char, close: char },
    #[error("the directive needs at least an org and a provider: DELA[<org_uuid>, aws]")]
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

/// The form a key slot's value starts with, if it starts like a directive (in any casing,
/// after trimming). A value can be malformed and still have a form: it is then a bad directive,
/// never a key.
pub fn form_of(value: &str) -> Option<Form> {
    let head = value.trim().get(..DIRECTIVE_PREFIX.len())?;
    if head.eq_ignore_ascii_case(DIRECTIVE_PREFIX) {
        Some(Form::Bracket)
    } else if head.eq_ignore_ascii_case(LEGACY_DIRECTIVE_PREFIX) {
        Some(Form::Paren)
    } else {
        None
    }
}

/// Whether a key slot holds a directive of either form (as opposed to a key or a secret handle).
pub fn is_directive(value: &str) -> bool {
    form_of(value).is_some()
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
    let Some(form) = form_of(value) else {
        return Err(DirectiveError::NotADirective);
    };
    let body = &value[DIRECTIVE_PREFIX.len()..];
    let other = match form {
        Form::Bracket => Form::Paren,
        Form::Paren => Form::Bracket,
    };
    let Some(body) = body.strip_suffix(form.close()) else {
        if body.ends_with(other.close()) {
            return Err(DirectiveError::MixedForms {
                open: value.as_bytes()[DIRECTIVE_PREFIX.len() - 1] as char,
                close: other.close(),
            });
        }
        return Err(DirectiveError::NotADirective);
    };
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
        form,
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
    let Some(open) = one_line.find(['(', '[']) else {
        return "***".to_owned();
    };
    let (head, rest) = one_line.split_at(open + 1);
    let (body, close) = match rest.strip_suffix([')', ']']) {
        Some(body) => (body, &rest[body.len()..]),
        None => (rest, ""),
    };
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
    out.push_str(close);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    /// `input` written with `DELA(`/`)` as given, and again in the bracket form: every rule of
    /// wire spec §4.4 applies to both (§10.1).
    fn both_forms(input: &str) -> [String; 2] {
        let mut bracket = input.to_owned();
        if let Some(open) = bracket.find('(') {
            bracket.replace_range(open..=open, "[");
        }
        if bracket.ends_with(')') {
            bracket.pop();
            bracket.push(']');
        }
        [input.to_owned(), bracket]
    }

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
            for input in both_forms(input) {
                assert_eq!(parse(&input).as_ref().err(), Some(expected), "{input}");
            }
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
            for input in both_forms(input) {
                assert_eq!(parse(&input).as_ref().err(), Some(expected), "{input}");
            }
        }
    }

    #[test]
    fn a_value_mixing_the_two_forms_is_an_error_naming_both() {
        for (input, open, close) in [
            ("DELA(org, aws]", '(', ']'),
            ("dela[org, aws)", '[', ')'),
            ("  DELA(org, aws, region=eu-west-1]  ", '(', ']'),
        ] {
            let err = parse(input).unwrap_err();
            assert_eq!(err, DirectiveError::MixedForms { open, close }, "{input}");
            let text = err.to_string();
            assert!(
                text.contains("DELA[...]") && text.contains("DELA(...)"),
                "{text}"
            );
        }
        assert_eq!(parse("DELA[org, aws]]"), Err(DirectiveError::BadProvider));
        let text = parse("DELA[org, aws").unwrap_err().to_string();
        assert!(
            text.contains("DELA[...]") && text.contains("DELA(...)"),
            "{text}"
        );
    }

    #[test]
    fn parse_dela_directive_cases_of_the_agent() {
        // TestParseDelaDirective (case-insensitive) of the Agent, in both forms.
        let cases: &[(&str, &str, Option<&str>, bool)] = &[
            ("DELA(org-1, aws)", "org-1", None, false),
            ("dela(org-1, AWS)", "org-1", None, false),
            (
                "DeLa( org-1 , aws , REGION=us-west-2 )",
                "org-1",
                Some("us-west-2"),
                false,
            ),
            (
                "DELA(org-1, aws, region=eu-west-1, fallback=abc123)",
                "org-1",
                Some("eu-west-1"),
                true,
            ),
            ("DELA(org-1, aws, FALLBACK=abc123)", "org-1", None, true),
        ];
        for (input, org, region, fallback) in cases {
            for (input, form) in both_forms(input).iter().zip([Form::Paren, Form::Bracket]) {
                let d = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
                assert_eq!(d.org, *org, "{input}");
                assert_eq!(d.provider, "aws", "{input}");
                assert_eq!(d.region.as_deref(), *region, "{input}");
                assert_eq!(d.fallback.is_some(), *fallback, "{input}");
                assert_eq!(d.form, form, "{input}");
            }
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
        assert_eq!(form_of(" dela[x, aws]"), Some(Form::Bracket));
        assert_eq!(form_of("DELA(x, aws)"), Some(Form::Paren));
        assert_eq!(form_of("DELA{x, aws}"), None);
        assert!(is_directive("DELA[x, aws]"));
        assert!(is_directive("  dElA[x"));
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
            "DELA(org, aws, fallback=supersecretvalue]",
        ] {
            for input in both_forms(input) {
                let shown = redacted(&input);
                assert!(!shown.contains("supersecret"), "{input} -> {shown}");
                assert!(!shown.contains('\n'));
            }
        }
        assert_eq!(
            redacted("DELA(org, aws, region=us-east-1, fallback=abc)"),
            "DELA(org, aws, region=us-east-1, fallback=***)"
        );
        assert_eq!(
            redacted("DELA[org, aws, region=us-east-1, fallback=abc]"),
            "DELA[org, aws, region=us-east-1, fallback=***]"
        );
    }
}

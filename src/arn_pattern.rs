//! ARN patterns of Datadog's cloud-auth mappings: validation by the seed's wildcard rules, and
//! matching a caller ARN (as STS `GetCallerIdentity` reports it) against a pattern.
//!
//! The rules come from the Datadog user doc (`seed/cloud-provider-authentication.md`, "Using
//! wildcards in ARN patterns"); the server-side code is not public (wire spec §8.2):
//!
//! - wildcards (`*`) are only allowed in the last portion of the resource ARN;
//! - a specific resource must come before the wildcard;
//! - wildcards cannot be placed in the middle of the ARN.
//!
//! How this module reads them (the strictest reading that accepts every example of the doc, so
//! that a pattern accepted locally is not refused by Datadog):
//!
//! - a pattern is `arn:<partition>:<service>:<region>:<account>:<resource>`; only the caller
//!   identities STS can report are mappable, so the service is `sts` or `iam`, the region is
//!   empty and the account is 12 digits;
//! - the resource is `/`-separated portions, `<type>/<name>[/<more>…]` (`iam` also has `root`);
//! - at most one `*`, and it must be the **final character** of the pattern (in the last
//!   portion; `…/DatadogAgentRole/*` or `…/DatadogAgentRole/i-*`, never `…/*/session`
//!   or `…/Role/*-suffix`);
//! - the portions before the wildcard's portion must name a specific resource: the resource
//!   type and at least one name (`assumed-role/DatadogAgentRole/*` is valid,
//!   `assumed-role/*` and `assumed-role/Datadog*` are not);
//! - `*` stands for one or more characters within the last portion (it never crosses a `/`),
//!   so `…/DatadogAgentRole/*` matches `…/DatadogAgentRole/i-0abc123def456` but not
//!   `…/DatadogAgentRole` itself. Without a wildcard the match is exact and case-sensitive, as
//!   ARN comparisons are in AWS.

use std::fmt;
use std::str::FromStr;

/// The wildcard character of the seed's rules.
const WILDCARD: char = '*';

/// A validated intake or persona mapping ARN pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArnPattern {
    /// The pattern exactly as given (it is what is sent to and stored by Datadog).
    raw: String,
    /// Whether the pattern ends in the wildcard; the literal part is then `raw` minus the `*`.
    wildcard: bool,
}

/// Why a pattern is not a valid mapping pattern. The Display text names the rule that was broken
/// and shows a valid example, so it can be printed to an operator as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid ARN pattern {pattern:?}: {problem}")]
pub struct ArnPatternError {
    /// The pattern that was refused (patterns are not secrets).
    pub pattern: String,
    /// The rule it breaks.
    pub problem: ArnPatternProblem,
}

/// The rule a refused pattern breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArnPatternProblem {
    /// Nothing was given.
    #[error("the pattern is empty; give an ARN such as {EXAMPLE}")]
    Empty,
    /// Not of the form `arn:partition:service:region:account:resource`.
    #[error(
        "not an ARN: expected arn:<partition>:<service>:<region>:<account>:<resource>, \
         for example {EXAMPLE}"
    )]
    NotAnArn,
    /// The partition is not `aws` or `aws-<name>`.
    #[error("unknown partition {0:?}: use aws (or aws-cn, aws-us-gov, …)")]
    Partition(String),
    /// The service is not one whose ARNs STS reports as a caller identity.
    #[error(
        "service {0:?} cannot be a caller identity: use an sts assumed-role ARN \
         (arn:aws:sts::<account>:assumed-role/<role>/*) or an iam user ARN"
    )]
    Service(String),
    /// STS and IAM ARNs have an empty region field.
    #[error(
        "the region field must be empty for sts and iam ARNs (arn:aws:sts::<account>:…), got {0:?}"
    )]
    Region(String),
    /// The account is not 12 digits.
    #[error("the account must be a 12-digit AWS account id, got {0:?}")]
    Account(String),
    /// The resource is empty or has an empty portion (`//`, a trailing `/`).
    #[error(
        "the resource is empty or has an empty portion; name it fully, e.g. \
         assumed-role/<role>/<session> or assumed-role/<role>/*"
    )]
    EmptyResource,
    /// A character that no IAM or STS name can contain (whitespace, control, non-ASCII, `?`).
    #[error("character {0:?} cannot appear in an IAM or STS ARN")]
    InvalidCharacter(char),
    /// A `*` outside the resource (partition, service, region or account).
    #[error(
        "wildcards (*) are only allowed in the last portion of the resource, not in the \
         partition, service, region or account; e.g. {EXAMPLE}"
    )]
    WildcardOutsideResource,
    /// More than one `*`, or a `*` before the end of the pattern.
    #[error(
        "wildcards (*) cannot be placed in the middle of the ARN: use a single * at the very \
         end, e.g. {EXAMPLE}"
    )]
    WildcardNotAtEnd,
    /// The wildcard is not preceded by a specific resource (type and name).
    #[error(
        "a specific resource must come before the wildcard: name the role (or user) and put \
         the * after it, e.g. {EXAMPLE}"
    )]
    NoSpecificResource,
}

/// The doc's example, shown in error messages as the shape to follow.
const EXAMPLE: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";

impl ArnPattern {
    /// Validates `pattern` by the seed's wildcard rules (see the module doc).
    ///
    /// # Errors
    /// [`ArnPatternError`] naming the broken rule.
    pub fn parse(pattern: &str) -> Result<Self, ArnPatternError> {
        let fail = |problem| ArnPatternError {
            pattern: pattern.to_owned(),
            problem,
        };
        if pattern.trim().is_empty() {
            return Err(fail(ArnPatternProblem::Empty));
        }
        if let Some(bad) = pattern
            .chars()
            .find(|c| !c.is_ascii() || c.is_ascii_whitespace() || c.is_ascii_control() || *c == '?')
        {
            return Err(fail(ArnPatternProblem::InvalidCharacter(bad)));
        }
        // The resource may itself contain ':' in other services' ARNs, hence splitn.
        let fields: Vec<&str> = pattern.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = fields[..] else {
            return Err(fail(ArnPatternProblem::NotAnArn));
        };
        if prefix != "arn" {
            return Err(fail(ArnPatternProblem::NotAnArn));
        }
        if [partition, service, region, account]
            .iter()
            .any(|f| f.contains(WILDCARD))
        {
            return Err(fail(ArnPatternProblem::WildcardOutsideResource));
        }
        if !is_partition(partition) {
            return Err(fail(ArnPatternProblem::Partition(partition.to_owned())));
        }
        if service != "sts" && service != "iam" {
            return Err(fail(ArnPatternProblem::Service(service.to_owned())));
        }
        if !region.is_empty() {
            return Err(fail(ArnPatternProblem::Region(region.to_owned())));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail(ArnPatternProblem::Account(account.to_owned())));
        }
        if resource.contains(':') {
            // No sts/iam caller identity has a ':' in its resource.
            return Err(fail(ArnPatternProblem::InvalidCharacter(':')));
        }
        let stars = resource.matches(WILDCARD).count();
        let wildcard = stars > 0;
        if stars > 1 || (wildcard && !resource.ends_with(WILDCARD)) {
            return Err(fail(ArnPatternProblem::WildcardNotAtEnd));
        }
        let portions: Vec<&str> = resource.split('/').collect();
        let last = portions.len() - 1;
        // A bare `*` is the only portion allowed to be "empty" of literal text.
        if portions
            .iter()
            .enumerate()
            .any(|(i, p)| p.is_empty() && !(i == last && wildcard))
        {
            return Err(fail(ArnPatternProblem::EmptyResource));
        }
        // Type + at least one name before the wildcard's portion.
        if wildcard && portions.len() < 3 {
            return Err(fail(ArnPatternProblem::NoSpecificResource));
        }
        Ok(ArnPattern {
            raw: pattern.to_owned(),
            wildcard,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern ends in a wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether the caller `arn` (as STS reports it) is matched by this pattern.
    pub fn matches(&self, arn: &str) -> bool {
        if !self.wildcard {
            return self.raw == arn;
        }
        let literal = &self.raw[..self.raw.len() - WILDCARD.len_utf8()];
        match arn.strip_prefix(literal) {
            Some(rest) => !rest.is_empty() && !rest.contains('/'),
            None => false,
        }
    }
}

impl FromStr for ArnPattern {
    type Err = ArnPatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ArnPattern::parse(s)
    }
}

impl fmt::Display for ArnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Validates `pattern` by the seed's wildcard rules.
///
/// # Errors
/// [`ArnPatternError`] naming the broken rule.
pub fn validate(pattern: &str) -> Result<(), ArnPatternError> {
    ArnPattern::parse(pattern).map(|_| ())
}

/// Whether `arn` matches `pattern`; an invalid pattern matches nothing (as a server that refuses
/// to store it would never match it).
pub fn matches(pattern: &str, arn: &str) -> bool {
    ArnPattern::parse(pattern).is_ok_and(|p| p.matches(arn))
}

/// The intake-mapping pattern an operator should create for a caller ARN reported by STS
/// (what `doctor` prints): every session of an assumed role
/// (`arn:aws:sts::<acct>:assumed-role/<Role>/*`), or the ARN itself for other identities (IAM
/// users). `None` when `caller_arn` cannot be turned into a valid pattern.
pub fn suggest_intake_pattern(caller_arn: &str) -> Option<String> {
    let resource = caller_arn.splitn(6, ':').nth(5)?;
    let suggestion = match resource.split('/').collect::<Vec<_>>()[..] {
        // STS always names the session; without one the role-wide pattern would not match
        // the caller it is suggested for (`*` stands for at least one character).
        ["assumed-role", role, session] if !session.is_empty() => {
            let head = &caller_arn[..caller_arn.len() - resource.len()];
            format!("{head}assumed-role/{role}/{WILDCARD}")
        }
        _ => caller_arn.to_owned(),
    };
    ArnPattern::parse(&suggestion).ok().map(|p| p.raw)
}

/// `aws` or `aws-<lowercase name>[-<name>…]` (aws-cn, aws-us-gov, aws-iso-b, …).
fn is_partition(p: &str) -> bool {
    let mut parts = p.split('-');
    parts.next() == Some("aws")
        && parts.all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE_STAR: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";

    #[test]
    fn the_seeds_examples_are_valid() {
        for p in [
            ROLE_STAR,
            "arn:aws:sts::123456789012:assumed-role/DatadogTerraformerRole/*",
            // The persona example without a session: valid (exact match).
            "arn:aws:sts::123456789012:assumed-role/terraform-runner",
        ] {
            assert!(ArnPattern::parse(p).is_ok(), "{p} should be valid");
        }
    }

    #[test]
    fn the_seeds_matching_examples() {
        let agent = ArnPattern::parse(ROLE_STAR).unwrap();
        assert!(
            agent
                .matches("arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0abc123def456")
        );
        assert!(agent.matches(
            "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/eks-datadog-agent-xyz"
        ));
        let tf =
            ArnPattern::parse("arn:aws:sts::123456789012:assumed-role/DatadogTerraformerRole/*")
                .unwrap();
        assert!(tf.matches(
            "arn:aws:sts::123456789012:assumed-role/DatadogTerraformerRole/run-abcdefghijk"
        ));
        assert!(tf.matches(
            "arn:aws:sts::123456789012:assumed-role/DatadogTerraformerRole/session-xyz789"
        ));
    }

    #[test]
    fn valid_patterns() {
        for p in [
            "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0123456789abcdef0",
            "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-*",
            "arn:aws:iam::123456789012:user/ci-bot",
            "arn:aws:iam::123456789012:user/division/team/ci-bot",
            "arn:aws:iam::123456789012:user/division/*",
            "arn:aws:iam::123456789012:root",
            "arn:aws:sts::123456789012:federated-user/alice",
            "arn:aws-cn:sts::123456789012:assumed-role/R/*",
            "arn:aws-us-gov:sts::123456789012:assumed-role/R/*",
            "arn:aws-iso-b:sts::123456789012:assumed-role/R/*",
            "arn:aws:sts::123456789012:assumed-role/R+=,.@_-x/s+=,.@_-y",
        ] {
            assert!(
                ArnPattern::parse(p).is_ok(),
                "{p}: {:?}",
                ArnPattern::parse(p)
            );
        }
    }

    #[test]
    fn invalid_patterns_name_the_rule() {
        use ArnPatternProblem as P;
        let cases: &[(&str, ArnPatternProblem)] = &[
            ("", P::Empty),
            ("   ", P::Empty),
            ("DatadogAgentRole", P::NotAnArn),
            ("arn:aws:sts::123456789012", P::NotAnArn),
            ("urn:aws:sts::123456789012:assumed-role/R/*", P::NotAnArn),
            // Wildcards outside the resource.
            (
                "arn:aws:sts::*:assumed-role/R/*",
                P::WildcardOutsideResource,
            ),
            (
                "arn:*:sts::123456789012:assumed-role/R/s",
                P::WildcardOutsideResource,
            ),
            (
                "arn:aws:*::123456789012:assumed-role/R/s",
                P::WildcardOutsideResource,
            ),
            (
                "arn:aws:sts:*:123456789012:assumed-role/R/s",
                P::WildcardOutsideResource,
            ),
            // Wildcard in the middle.
            (
                "arn:aws:sts::123456789012:assumed-role/*/session",
                P::WildcardNotAtEnd,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/*-suffix",
                P::WildcardNotAtEnd,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/a*b",
                P::WildcardNotAtEnd,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/**",
                P::WildcardNotAtEnd,
            ),
            ("arn:aws:sts::123456789012:*/R/s", P::WildcardNotAtEnd),
            // No specific resource before the wildcard.
            ("arn:aws:sts::123456789012:*", P::NoSpecificResource),
            (
                "arn:aws:sts::123456789012:assumed-role/*",
                P::NoSpecificResource,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/Datadog*",
                P::NoSpecificResource,
            ),
            ("arn:aws:iam::123456789012:role/*", P::NoSpecificResource),
            // Structure.
            ("arn:aws:sts::123456789012:", P::EmptyResource),
            (
                "arn:aws:sts::123456789012:assumed-role//s",
                P::EmptyResource,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/",
                P::EmptyResource,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R//*",
                P::EmptyResource,
            ),
            (
                "arn:gcp:sts::123456789012:assumed-role/R/*",
                P::Partition("gcp".into()),
            ),
            (
                "arn:AWS:sts::123456789012:assumed-role/R/*",
                P::Partition("AWS".into()),
            ),
            (
                "arn::sts::123456789012:assumed-role/R/*",
                P::Partition(String::new()),
            ),
            ("arn:aws:s3:::bucket/*", P::Service("s3".into())),
            (
                "arn:aws:sts:us-east-1:123456789012:assumed-role/R/*",
                P::Region("us-east-1".into()),
            ),
            (
                "arn:aws:sts::12345:assumed-role/R/*",
                P::Account("12345".into()),
            ),
            (
                "arn:aws:sts::12345678901a:assumed-role/R/*",
                P::Account("12345678901a".into()),
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/a:b",
                P::InvalidCharacter(':'),
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/a b",
                P::InvalidCharacter(' '),
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/i-?",
                P::InvalidCharacter('?'),
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/é",
                P::InvalidCharacter('é'),
            ),
            (
                " arn:aws:sts::123456789012:assumed-role/R/*",
                P::InvalidCharacter(' '),
            ),
        ];
        for (pattern, problem) in cases {
            let err = ArnPattern::parse(pattern).expect_err(pattern);
            assert_eq!(&err.problem, problem, "{pattern:?}");
            assert_eq!(err.pattern, *pattern);
        }
    }

    #[test]
    fn error_text_names_the_pattern_and_shows_a_valid_example() {
        let err = ArnPattern::parse("arn:aws:sts::123456789012:assumed-role/*/s").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("assumed-role/*/s"), "{text}");
        assert!(text.contains("middle"), "{text}");
        assert!(text.contains(EXAMPLE), "{text}");
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            // Exact patterns are exact and case-sensitive.
            (
                "arn:aws:sts::123456789012:assumed-role/R/s1",
                "arn:aws:sts::123456789012:assumed-role/R/s1",
                true,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/s1",
                "arn:aws:sts::123456789012:assumed-role/R/s2",
                false,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/s1",
                "arn:aws:sts::123456789012:assumed-role/r/s1",
                false,
            ),
            // The session-less persona example never matches a real assumed-role ARN.
            (
                "arn:aws:sts::123456789012:assumed-role/terraform-runner",
                "arn:aws:sts::123456789012:assumed-role/terraform-runner/s",
                false,
            ),
            // `*` needs at least one character and stays within the last portion.
            (
                ROLE_STAR,
                "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/",
                false,
            ),
            (
                ROLE_STAR,
                "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole",
                false,
            ),
            (
                ROLE_STAR,
                "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/a/b",
                false,
            ),
            // The literal part is not a name prefix.
            (
                ROLE_STAR,
                "arn:aws:sts::123456789012:assumed-role/DatadogAgentRoleX/s",
                false,
            ),
            (
                ROLE_STAR,
                "arn:aws:sts::123456789012:assumed-role/OtherRole/s",
                false,
            ),
            (
                ROLE_STAR,
                "arn:aws:sts::210987654321:assumed-role/DatadogAgentRole/s",
                false,
            ),
            (
                ROLE_STAR,
                "arn:aws-cn:sts::123456789012:assumed-role/DatadogAgentRole/s",
                false,
            ),
            // The role's IAM ARN is a different identity from its sessions.
            (
                ROLE_STAR,
                "arn:aws:iam::123456789012:role/DatadogAgentRole",
                false,
            ),
            // Partial last portion.
            (
                "arn:aws:sts::123456789012:assumed-role/R/i-*",
                "arn:aws:sts::123456789012:assumed-role/R/i-0123456789abcdef0",
                true,
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/R/i-*",
                "arn:aws:sts::123456789012:assumed-role/R/eks-pod",
                false,
            ),
            // IAM users, with paths.
            (
                "arn:aws:iam::123456789012:user/division/*",
                "arn:aws:iam::123456789012:user/division/ci-bot",
                true,
            ),
            (
                "arn:aws:iam::123456789012:user/division/*",
                "arn:aws:iam::123456789012:user/division/sub/ci-bot",
                false,
            ),
        ];
        for (pattern, arn, want) in cases {
            assert_eq!(matches(pattern, arn), *want, "{pattern} vs {arn}");
        }
    }

    #[test]
    fn invalid_patterns_match_nothing() {
        assert!(!matches(
            "arn:aws:sts::123456789012:assumed-role/*",
            "arn:aws:sts::123456789012:assumed-role/R/s"
        ));
        assert!(!matches("*", "arn:aws:sts::123456789012:assumed-role/R/s"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest_intake_pattern(
                "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0123456789abcdef0"
            )
            .as_deref(),
            Some(ROLE_STAR)
        );
        assert_eq!(
            suggest_intake_pattern("arn:aws:iam::123456789012:user/ci-bot").as_deref(),
            Some("arn:aws:iam::123456789012:user/ci-bot")
        );
        assert_eq!(suggest_intake_pattern("not an arn"), None);
        assert_eq!(suggest_intake_pattern("arn:aws:s3:::bucket"), None);
        // The suggestion always matches the identity it was made from.
        let arn = "arn:aws:sts::123456789012:assumed-role/R/eks-datadog-agent-xyz";
        assert!(matches(&suggest_intake_pattern(arn).unwrap(), arn));
    }

    /// Found by the `arn_pattern` fuzz target: an assumed-role ARN with an empty session got
    /// `…/DatadogAgentRole/*` suggested, a pattern that does not match it.
    #[test]
    fn no_suggestion_for_an_assumed_role_without_a_session() {
        let arn = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/";
        assert_eq!(suggest_intake_pattern(arn), None);
    }

    #[test]
    fn from_str_and_display_round_trip() {
        let p: ArnPattern = ROLE_STAR.parse().unwrap();
        assert_eq!(p.to_string(), ROLE_STAR);
        assert_eq!(p.as_str(), ROLE_STAR);
        assert!(p.has_wildcard());
        assert!(validate("nope").is_err());
    }
}

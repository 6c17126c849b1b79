//! The AWS environment snapshot every detection and resolution step reads.
//!
//! The daemon takes one snapshot of its process environment at start-up ([`AwsEnv::from_process`]);
//! tests build one from pairs ([`AwsEnv::from_pairs`]). Nothing else in `crate::aws` reads
//! `std::env`, with one documented exception: aws-config's container and web-identity providers
//! read a few variables from the process environment themselves (aws-config 1.8 has no public way
//! to inject an environment into them: `ProviderConfig::with_env` is crate-private).
//! [`AwsEnv::process_mismatches`] lets [`crate::aws::Identity`] refuse to run when the snapshot and
//! the process disagree on those variables, instead of silently using other settings.

use std::collections::HashMap;

/// Standard AWS variable names (product §2.3).
pub mod vars {
    /// Static access key id.
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// Static secret key.
    pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// Session token of temporary static keys.
    pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    /// IRSA role.
    pub const ROLE_ARN: &str = "AWS_ROLE_ARN";
    /// IRSA projected service-account token.
    pub const WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
    /// IRSA session name.
    pub const ROLE_SESSION_NAME: &str = "AWS_ROLE_SESSION_NAME";
    /// ECS task role path on 169.254.170.2.
    pub const CONTAINER_RELATIVE_URI: &str = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
    /// Full container credentials URL (EKS Pod Identity, custom endpoints).
    pub const CONTAINER_FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
    /// Container credentials authorization token.
    pub const CONTAINER_AUTH_TOKEN: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
    /// File holding the container credentials authorization token (wins over the variable).
    pub const CONTAINER_AUTH_TOKEN_FILE: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";
    /// Region.
    pub const REGION: &str = "AWS_REGION";
    /// Fallback region.
    pub const DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
    /// ECS task metadata endpoint v4.
    pub const ECS_METADATA_URI_V4: &str = "ECS_CONTAINER_METADATA_URI_V4";
    /// IMDS endpoint override.
    pub const EC2_METADATA_ENDPOINT: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
    /// IMDS endpoint mode (`IPv4` or `IPv6`).
    pub const EC2_METADATA_ENDPOINT_MODE: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
    /// IMDS kill switch.
    pub const EC2_METADATA_DISABLED: &str = "AWS_EC2_METADATA_DISABLED";
    /// STS endpoint override.
    pub const ENDPOINT_URL_STS: &str = "AWS_ENDPOINT_URL_STS";
    /// Endpoint override for every service.
    pub const ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
}

/// A snapshot of the environment variables that matter for AWS identity.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AwsEnv(HashMap<String, String>);

impl AwsEnv {
    /// Snapshot of the process environment (non-UTF-8 variables are skipped; no AWS variable is
    /// legitimately non-UTF-8).
    pub fn from_process() -> AwsEnv {
        AwsEnv(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    /// A snapshot from explicit pairs (tests, and callers that already hold an environment).
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> AwsEnv
    where
        K: Into<String>,
        V: Into<String>,
    {
        AwsEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of `name`, or `None` when unset or empty. Empty counts as unset, as in the Agent
    /// (`os.Getenv(..) != ""`): a variable blanked in a manifest must not select a source.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// Whether `name` is set to a non-empty value.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The variables among `names` whose value here differs from the process environment (both
    /// read with the empty-means-unset rule).
    pub fn process_mismatches(&self, names: &[&'static str]) -> Vec<&'static str> {
        names
            .iter()
            .copied()
            .filter(|name| {
                let process = std::env::var(name).ok().filter(|v| !v.trim().is_empty());
                process.as_deref() != self.get(name)
            })
            .collect()
    }
}

impl std::fmt::Debug for AwsEnv {
    // The environment holds secrets (AWS_SECRET_ACCESS_KEY, tokens): print names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self
            .0
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with("AWS_"))
            .collect();
        names.sort_unstable();
        f.debug_tuple("AwsEnv").field(&names).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_are_unset() {
        let env = AwsEnv::from_pairs([("AWS_REGION", ""), ("AWS_DEFAULT_REGION", " "), ("X", "1")]);
        assert_eq!(env.get("AWS_REGION"), None);
        assert!(!env.has("AWS_DEFAULT_REGION"));
        assert_eq!(env.get("X"), Some("1"));
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env = AwsEnv::from_pairs([("AWS_SECRET_ACCESS_KEY", "very-secret"), ("HOME", "/root")]);
        let shown = format!("{env:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY"));
        assert!(!shown.contains("very-secret"));
        assert!(!shown.contains("HOME"));
    }

    #[test]
    fn mismatches_against_the_process() {
        // A variable name no process sets: the snapshot having it is a mismatch, not having it is not.
        const NAME: &str = "DDA_TEST_SURELY_UNSET_VARIABLE_4711";
        assert_eq!(
            AwsEnv::from_pairs([(NAME, "x")]).process_mismatches(&[NAME]),
            [NAME]
        );
        assert!(AwsEnv::default().process_mismatches(&[NAME]).is_empty());
    }
}

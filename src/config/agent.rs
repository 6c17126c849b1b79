//! Reading the Agent's keys out of `datadog.yaml` (product §2.1), one function per section
//! (endpoint, proxy, TLS, IMDS, global `delegated_auth`); the instances are named in
//! [`super::instances`].
//!
//! Input is the loose tree of `node.rs` with environment overrides already grafted in. Only the
//! keys listed in the product definition are read; everything else in the file is ignored,
//! whatever its type. A wrong type on one of our keys is an error naming the key, its line (or
//! variable) and the fix. Keys match case-insensitively, as the Agent's do; the same key spelled
//! twice with different capitalisation is an error, because the Agent would pick one silently.

use std::path::Path;
use std::time::Duration;

use super::dela;
use super::instances;
use super::node::{Entry, Node, Value};
use super::problem::{Problem, Problems};
use super::{AgentConfig, InstanceSpec, Provider, ProxyConfig};
use crate::secret::Secret;

/// Default `site` (the Agent's).
pub const DEFAULT_SITE: &str = "datadoghq.com";
/// Default `refresh_interval_mins` (wire spec §3.1).
pub const DEFAULT_REFRESH_MINS: i64 = 60;
/// [`DEFAULT_REFRESH_MINS`] as a duration: the refresh interval of an instance that sets none.
pub const DEFAULT_REFRESH_INTERVAL: Duration = minutes(DEFAULT_REFRESH_MINS);
/// Largest refresh interval accepted from `datadog.yaml`; larger values are clamped with a
/// warning. A week is far beyond any sensible key lifetime, and the bound keeps timer
/// arithmetic far from overflow.
pub const MAX_REFRESH_MINS: i64 = 7 * 24 * 60;
/// Default `ec2_metadata_timeout` in milliseconds (the Agent's).
pub const DEFAULT_EC2_METADATA_TIMEOUT_MS: i64 = 300;
/// Default `ec2_metadata_token_lifetime` in seconds (the Agent's; also IMDS's maximum).
pub const DEFAULT_EC2_TOKEN_LIFETIME_SECS: i64 = 21_600;
/// The Agent's default `cloud_provider_metadata`.
pub const DEFAULT_CLOUD_PROVIDERS: [&str; 6] = ["aws", "gcp", "azure", "alibaba", "oracle", "ibm"];

/// Keys of the global `delegated_auth` block. `startup_timeout_secs` is an Agent key (wire spec
/// §3.5) we do not use; it is listed so it draws no "unknown key" warning.
const GLOBAL_DA_KEYS: [&str; 5] = [
    "org_uuid",
    "provider",
    "aws",
    "refresh_interval_mins",
    "startup_timeout_secs",
];
/// The contents of `fallback_api_key_file`, read by the loader.
#[derive(Debug, Clone)]
pub(crate) struct FallbackFile {
    pub(crate) key: Secret,
}

/// Reads typed values out of the tree, reporting problems instead of stopping.
pub(crate) struct Reader<'a> {
    pub(crate) file: &'a Path,
    pub(crate) problems: &'a mut Problems,
}

/// What a key slot (`api_key`, `<section>.api_key`) holds.
pub(super) enum Slot {
    Absent,
    /// `ENC[...]`: a secret-backend handle. Never used as a key.
    Handle,
    /// `DELA[...]`/`DELA(...)` outside `additional_endpoints`: the Agent does not read
    /// directives there.
    Directive(dela::Form),
    Key(Secret),
}

impl Reader<'_> {
    /// A problem located at `node` (its line, or the variable it came from).
    pub(crate) fn problem_at(
        &self,
        node: &Node,
        key: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Problem {
        Problem::new(self.file, key, message, fix)
            .at(node.line)
            .from_env(node.env.as_deref())
    }

    /// The value of `key` in mapping `parent` (case-insensitive). `None` when absent, or when
    /// the parent is not a mapping (already reported by [`Reader::section`]).
    pub(super) fn child<'n>(
        &mut self,
        parent: Option<&'n Node>,
        parent_path: &str,
        key: &str,
    ) -> Option<&'n Node> {
        let Value::Map(entries) = &parent?.value else {
            return None;
        };
        let matches: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.key.eq_ignore_ascii_case(key))
            .collect();
        let path = join(parent_path, key);
        match matches.as_slice() {
            [] => None,
            [one] => Some(&one.value),
            [first, .., last] => {
                let lines: Vec<String> = matches
                    .iter()
                    .map(|e| e.key_line.map_or_else(|| "?".to_owned(), |l| l.to_string()))
                    .collect();
                self.problems.error(
                    Problem::new(
                        self.file,
                        path,
                        format!(
                            "the key appears more than once with different capitalisation \
                             (`{}` and `{}`, lines {}); Agent keys are case-insensitive",
                            first.key,
                            last.key,
                            lines.join(", ")
                        ),
                        "keep a single spelling of the key",
                    )
                    .at(last.key_line),
                );
                None
            }
        }
    }

    /// A node that must be a mapping (or absent/null).
    pub(super) fn section<'n>(&mut self, node: Option<&'n Node>, path: &str) -> Option<&'n Node> {
        let node = node?;
        match &node.value {
            Value::Map(_) => Some(node),
            Value::Null => None,
            _ => {
                let p = self.problem_at(
                    node,
                    path,
                    format!("expected a mapping, found {}", node.type_name()),
                    format!("write `{path}` as a block of `key: value` lines, or remove it"),
                );
                self.problems.error(p);
                None
            }
        }
    }

    /// A string value, trimmed; empty and null are `None`. `secret` keeps the value out of the
    /// problem report.
    pub(super) fn string(
        &mut self,
        node: Option<&Node>,
        path: &str,
        secret: bool,
    ) -> Option<String> {
        let node = node?;
        match &node.value {
            Value::Null => None,
            Value::Scalar { text, .. } => {
                let t = text.trim();
                (!t.is_empty()).then(|| t.to_owned())
            }
            _ => {
                let mut p = self.problem_at(
                    node,
                    path,
                    format!("expected a string, found {}", node.type_name()),
                    format!("set `{path}` to a single value, or remove it"),
                );
                if secret {
                    p.value = None;
                }
                self.problems.error(p);
                None
            }
        }
    }

    /// A boolean the way the Agent parses env values: `true`/`false`/`1`/`0`, any case.
    pub(super) fn boolean(&mut self, node: Option<&Node>, path: &str) -> Option<bool> {
        let node = node?;
        let text = self.string(Some(node), path, false)?;
        match parse_bool(&text) {
            Some(b) => Some(b),
            None => {
                let p = self
                    .problem_at(
                        node,
                        path,
                        "expected a boolean",
                        format!("set `{path}` to true or false"),
                    )
                    .value(text);
                self.problems.error(p);
                None
            }
        }
    }

    /// An integer.
    pub(super) fn integer(&mut self, node: Option<&Node>, path: &str) -> Option<i64> {
        let node = node?;
        let text = self.string(Some(node), path, false)?;
        match text.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let p = self
                    .problem_at(
                        node,
                        path,
                        "expected a whole number",
                        format!("set `{path}` to an integer such as 60"),
                    )
                    .value(text);
                self.problems.error(p);
                None
            }
        }
    }

    /// A list of strings: a YAML list of scalars, or (as the Agent casts it) one string of
    /// space-separated words.
    pub(super) fn words(&mut self, node: Option<&Node>, path: &str) -> Option<Vec<String>> {
        let node = node?;
        match &node.value {
            Value::Null => None,
            Value::Scalar { text, .. } => {
                Some(text.split_whitespace().map(str::to_owned).collect())
            }
            Value::Seq(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(s) = self.string(Some(item), &format!("{path}[{i}]"), false) {
                        out.push(s);
                    }
                }
                Some(out)
            }
            Value::Map(_) => {
                let p = self.problem_at(
                    node,
                    path,
                    "expected a list, found a mapping",
                    format!("write `{path}` as a list, e.g. [a, b]"),
                );
                self.problems.error(p);
                None
            }
        }
    }

    /// Warns about keys of a `delegated_auth` block the Agent does not define there.
    pub(super) fn warn_unknown_keys(&mut self, section: Option<&Node>, path: &str, known: &[&str]) {
        let Some(Value::Map(entries)) = section.map(|n| &n.value) else {
            return;
        };
        for entry in entries {
            if !known.iter().any(|k| k.eq_ignore_ascii_case(&entry.key)) {
                let p = Problem::new(
                    self.file,
                    join(path, &entry.key),
                    "unknown key in a delegated_auth block; it is ignored",
                    format!(
                        "remove it or correct its spelling (valid keys: {})",
                        known.join(", ")
                    ),
                )
                .at(entry.key_line)
                .from_env(entry.value.env.as_deref());
                self.problems.warn(p);
            }
        }
    }

    pub(super) fn key_slot(&mut self, node: Option<&Node>, path: &str) -> Slot {
        let Some(text) = self.string(node, path, true) else {
            return Slot::Absent;
        };
        if is_secret_handle(&text) {
            Slot::Handle
        } else if let Some(form) = dela::form_of(&text) {
            if let Some(node) = node {
                let p = self.problem_at(
                    node,
                    path,
                    format!(
                        "holds a {} directive, which is only read in additional_endpoints; \
                         it is not used as a key",
                        form.describe()
                    ),
                    "enable delegated auth for this key with the section's delegated_auth.org_uuid, \
                     or move the directive to additional_endpoints",
                );
                self.problems.warn(p);
            }
            Slot::Directive(form)
        } else {
            Slot::Key(Secret::new(text))
        }
    }

    /// A validated org UUID (hyphenated form, as the Agent and Datadog show it).
    pub(super) fn org_uuid(&mut self, node: Option<&Node>, path: &str) -> Option<String> {
        let text = self.string(node, path, false)?;
        if is_uuid(&text) {
            return Some(text);
        }
        if let Some(node) = node {
            let p = self
                .problem_at(
                    node,
                    path,
                    "is not a UUID",
                    "set it to your org's UUID (8-4-4-4-12 hex digits), as shown by \
                     /api/v2/current_user",
                )
                .value(text);
            self.problems.error(p);
        }
        None
    }

    /// A region, checked against `^[a-z0-9-]+$`.
    pub(super) fn region(&mut self, node: Option<&Node>, path: &str) -> Option<String> {
        let text = self.string(node, path, false)?;
        if is_region(&text) {
            return Some(text);
        }
        if let Some(node) = node {
            let p = self
                .problem_at(
                    node,
                    path,
                    "is not an AWS region name (lowercase letters, digits and `-`)",
                    "set it to a region such as us-east-1, or remove it to auto-detect",
                )
                .value(text);
            self.problems.error(p);
        }
        None
    }

    /// A refresh interval in minutes: `<= 0` becomes the default, too large is clamped; both warn.
    pub(super) fn refresh_mins(&mut self, node: Option<&Node>, path: &str, default: i64) -> i64 {
        let Some(mins) = self.integer(node, path) else {
            return default;
        };
        let Some(node) = node else { return default };
        if mins <= 0 {
            let p = self
                .problem_at(
                    node,
                    path,
                    format!("refresh interval was set to {mins}, defaulting to {DEFAULT_REFRESH_MINS} minutes"),
                    "set a positive number of minutes, or remove the key",
                )
                .value(mins.to_string());
            self.problems.warn(p);
            DEFAULT_REFRESH_MINS
        } else if mins > MAX_REFRESH_MINS {
            let p = self
                .problem_at(
                    node,
                    path,
                    format!(
                        "refresh interval is longer than a week; using {MAX_REFRESH_MINS} minutes"
                    ),
                    "set at most 10080 minutes",
                )
                .value(mins.to_string());
            self.problems.warn(p);
            MAX_REFRESH_MINS
        } else {
            mins
        }
    }
}

/// `true`/`false`/`1`/`0`, case-insensitive.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// A secret-backend handle `ENC[...]`.
pub(crate) fn is_secret_handle(text: &str) -> bool {
    let t = text.trim();
    t.starts_with("ENC[") && t.ends_with(']')
}

/// The hyphenated 8-4-4-4-12 form (the `uuid` crate alone would also take braces, `urn:uuid:`
/// and the 32-digit form, which the Agent's DELA parser and Datadog's header do not).
pub(crate) fn is_uuid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

/// `^[a-z0-9-]+$`
pub(crate) fn is_region(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Everything read from `datadog.yaml`.
pub(crate) struct AgentRead {
    pub(crate) agent: AgentConfig,
    pub(crate) instances: Vec<InstanceSpec>,
}

/// Reads the Agent's keys, one section at a time, and builds the instances
/// ([`super::instances`]).
pub(crate) fn read(
    root: &Node,
    file: &Path,
    fallback_file: Option<&FallbackFile>,
    problems: &mut Problems,
) -> AgentRead {
    let mut r = Reader { file, problems };
    let root = Some(root);
    let endpoint = read_endpoint(&mut r, root);
    let proxy = read_proxy(&mut r, root);
    let skip_ssl_validation = read_tls(&mut r, root);
    let imds = read_imds(&mut r, root);
    let auth = read_global_auth(&mut r, root);
    let instances = instances::read(&mut r, root, &auth, &endpoint.infra_endpoint, fallback_file);
    let agent = AgentConfig {
        site: endpoint.site,
        dd_url: endpoint.dd_url,
        infra_endpoint: endpoint.infra_endpoint,
        proxy,
        proxy_in_effect: super::proxy::ProxyInEffect::default(),
        convert_dd_site_fqdn: endpoint.convert_dd_site_fqdn,
        skip_ssl_validation,
        cloud_provider_metadata: imds.cloud_provider_metadata,
        ec2_metadata_timeout: imds.timeout,
        ec2_prefer_imdsv2: imds.prefer_imdsv2,
        ec2_metadata_token_lifetime: imds.token_lifetime,
        provider: auth.provider,
        aws_region: auth.aws_region,
    };
    AgentRead { agent, instances }
}

/// Where the Datadog API is: `site`, `dd_url`, `convert_dd_site_fqdn`.
struct Endpoint {
    site: String,
    dd_url: Option<String>,
    convert_dd_site_fqdn: bool,
    /// The API base exchanges go to unless an entry names its own.
    infra_endpoint: String,
}

fn read_endpoint(r: &mut Reader<'_>, root: Option<&Node>) -> Endpoint {
    let site_node = r.child(root, "", "site");
    let site = match r.string(site_node, "site", false) {
        Some(site)
            if site.contains("://") || site.contains('/') || site.contains(char::is_whitespace) =>
        {
            if let Some(node) = site_node {
                let p = r
                    .problem_at(
                        node,
                        "site",
                        "must be a bare domain such as datadoghq.eu",
                        "set `site` to the domain only; to send to a URL, set `dd_url` instead",
                    )
                    .value(site);
                r.problems.error(p);
            }
            DEFAULT_SITE.to_owned()
        }
        Some(site) => site,
        None => DEFAULT_SITE.to_owned(),
    };
    let dd_url_node = r.child(root, "", "dd_url");
    let dd_url = r.string(dd_url_node, "dd_url", false);
    // The newest Agent's `BuildURLWithPrefix` (wire spec §10.3): a well-known Datadog site gets
    // a trailing dot (a fully qualified name, so resolvers with `ndots:5` and a search list ask
    // for it once instead of once per search domain) while `convert_dd_site_fqdn.enabled`.
    let fqdn_section = r.child(root, "", "convert_dd_site_fqdn");
    let fqdn_section = r.section(fqdn_section, "convert_dd_site_fqdn");
    let fqdn_node = r.child(fqdn_section, "convert_dd_site_fqdn", "enabled");
    let convert_dd_site_fqdn = r
        .boolean(fqdn_node, "convert_dd_site_fqdn.enabled")
        .unwrap_or(true);
    let infra_endpoint = dd_url.clone().unwrap_or_else(|| {
        if convert_dd_site_fqdn && !site.ends_with('.') && crate::exchange::api_base(&site).matched
        {
            format!("https://app.{site}.")
        } else {
            format!("https://app.{site}")
        }
    });
    Endpoint {
        site,
        dd_url,
        convert_dd_site_fqdn,
        infra_endpoint,
    }
}

/// `proxy.http`, `proxy.https`, `proxy.no_proxy`.
fn read_proxy(r: &mut Reader<'_>, root: Option<&Node>) -> ProxyConfig {
    let proxy_node = r.child(root, "", "proxy");
    let proxy_section = r.section(proxy_node, "proxy");
    let mut proxy = ProxyConfig::default();
    for (field, target, var) in [
        ("http", &mut proxy.http, &mut proxy.http_var),
        ("https", &mut proxy.https, &mut proxy.https_var),
    ] {
        let path = format!("proxy.{field}");
        let node = r.child(proxy_section, "proxy", field);
        *var = node.and_then(|n| n.env.clone());
        // Proxy URLs may carry credentials: read as secret, show redacted.
        if let Some(url) = r.string(node, &path, true) {
            let scheme_ok = ["http://", "https://", "socks5://", "socks5h://"]
                .iter()
                .any(|s| {
                    url.len() > s.len()
                        && url
                            .get(..s.len())
                            .is_some_and(|p| p.eq_ignore_ascii_case(s))
                });
            if !scheme_ok {
                if let Some(node) = node {
                    let p = r
                        .problem_at(
                            node,
                            &path,
                            "is not a proxy URL (http://, https:// or socks5://)",
                            "set it to a URL such as http://proxy.internal:3128",
                        )
                        .value(crate::secret::redact_userinfo(&url));
                    r.problems.error(p);
                }
            } else {
                *target = Some(url);
            }
        }
    }
    let no_proxy_node = r.child(proxy_section, "proxy", "no_proxy");
    proxy.no_proxy = r.words(no_proxy_node, "proxy.no_proxy").unwrap_or_default();
    proxy.no_proxy_var = no_proxy_node.and_then(|n| n.env.clone());
    proxy
}

/// `skip_ssl_validation` (a warning when set).
fn read_tls(r: &mut Reader<'_>, root: Option<&Node>) -> bool {
    let ssl_node = r.child(root, "", "skip_ssl_validation");
    let skip_ssl_validation = r.boolean(ssl_node, "skip_ssl_validation").unwrap_or(false);
    if skip_ssl_validation && let Some(node) = ssl_node {
        let p = r.problem_at(
            node,
            "skip_ssl_validation",
            "TLS certificates will NOT be verified: anyone on the network path can read the \
             proofs and the keys",
            "remove skip_ssl_validation; to trust a private CA, add it to the system trust store",
        );
        r.problems.warn(p);
    }
    skip_ssl_validation
}

/// The EC2 metadata keys: `cloud_provider_metadata`, `ec2_metadata_timeout`,
/// `ec2_prefer_imdsv2`, `ec2_metadata_token_lifetime`.
struct Imds {
    cloud_provider_metadata: Vec<String>,
    timeout: Duration,
    prefer_imdsv2: bool,
    token_lifetime: Duration,
}

fn read_imds(r: &mut Reader<'_>, root: Option<&Node>) -> Imds {
    let cpm_node = r.child(root, "", "cloud_provider_metadata");
    let cloud_provider_metadata = r
        .words(cpm_node, "cloud_provider_metadata")
        .map(|v| v.into_iter().map(|s| s.to_ascii_lowercase()).collect())
        .unwrap_or_else(|| {
            DEFAULT_CLOUD_PROVIDERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        });

    let timeout_node = r.child(root, "", "ec2_metadata_timeout");
    let timeout_ms = positive(
        r,
        timeout_node,
        "ec2_metadata_timeout",
        DEFAULT_EC2_METADATA_TIMEOUT_MS,
        i64::from(u32::MAX),
        "milliseconds, e.g. 300",
    );
    let prefer_node = r.child(root, "", "ec2_prefer_imdsv2");
    let ec2_prefer_imdsv2 = r.boolean(prefer_node, "ec2_prefer_imdsv2").unwrap_or(false);
    let lifetime_node = r.child(root, "", "ec2_metadata_token_lifetime");
    let lifetime_secs = positive(
        r,
        lifetime_node,
        "ec2_metadata_token_lifetime",
        DEFAULT_EC2_TOKEN_LIFETIME_SECS,
        DEFAULT_EC2_TOKEN_LIFETIME_SECS,
        "seconds, between 1 and 21600 (IMDS refuses longer tokens)",
    );
    Imds {
        cloud_provider_metadata,
        timeout: Duration::from_millis(timeout_ms.unsigned_abs()),
        prefer_imdsv2: ec2_prefer_imdsv2,
        token_lifetime: Duration::from_secs(lifetime_secs.unsigned_abs()),
    }
}

/// The global `delegated_auth` block.
pub(super) struct GlobalAuth {
    /// `delegated_auth.org_uuid`: delegated auth for `api_key`.
    pub(super) org: Option<String>,
    pub(super) provider: Provider,
    /// `delegated_auth.aws.region`.
    pub(super) aws_region: Option<String>,
    /// `delegated_auth.refresh_interval_mins`, the default of every instance.
    pub(super) refresh_mins: i64,
}

fn read_global_auth(r: &mut Reader<'_>, root: Option<&Node>) -> GlobalAuth {
    let da_node = r.child(root, "", "delegated_auth");
    let da = r.section(da_node, "delegated_auth");
    r.warn_unknown_keys(da, "delegated_auth", &GLOBAL_DA_KEYS);
    let org_node = r.child(da, "delegated_auth", "org_uuid");
    let global_org = r.org_uuid(org_node, "delegated_auth.org_uuid");
    let provider_node = r.child(da, "delegated_auth", "provider");
    let provider = match r.string(provider_node, "delegated_auth.provider", false) {
        None => Provider::Auto,
        Some(p) if p.eq_ignore_ascii_case("aws") => Provider::Aws,
        Some(p) => {
            if let Some(node) = provider_node {
                let prob = r
                    .problem_at(
                        node,
                        "delegated_auth.provider",
                        "unsupported delegated auth provider (only `aws` exists)",
                        "set `provider: aws`, or remove it to auto-detect",
                    )
                    .value(p);
                r.problems.error(prob);
            }
            Provider::Auto
        }
    };
    let aws_node = r.child(da, "delegated_auth", "aws");
    let aws = r.section(aws_node, "delegated_auth.aws");
    r.warn_unknown_keys(aws, "delegated_auth.aws", &["region"]);
    let region_node = r.child(aws, "delegated_auth.aws", "region");
    let aws_region = r.region(region_node, "delegated_auth.aws.region");
    let refresh_node = r.child(da, "delegated_auth", "refresh_interval_mins");
    let global_refresh = r.refresh_mins(
        refresh_node,
        "delegated_auth.refresh_interval_mins",
        DEFAULT_REFRESH_MINS,
    );
    GlobalAuth {
        org: global_org,
        provider,
        aws_region,
        refresh_mins: global_refresh,
    }
}

/// A positive integer with an upper bound (errors otherwise).
fn positive(
    r: &mut Reader<'_>,
    node: Option<&Node>,
    path: &str,
    default: i64,
    max: i64,
    unit_hint: &str,
) -> i64 {
    let Some(n) = r.integer(node, path) else {
        return default;
    };
    if (1..=max).contains(&n) {
        return n;
    }
    if let Some(node) = node {
        let p = r
            .problem_at(
                node,
                path,
                format!("must be between 1 and {max}"),
                format!("set it in {unit_hint}, or remove it for the default ({default})"),
            )
            .value(n.to_string());
        r.problems.error(p);
    }
    default
}

pub(super) const fn minutes(mins: i64) -> Duration {
    Duration::from_secs(mins.unsigned_abs() * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_parse_like_the_agent_env() {
        for t in ["true", "TRUE", "True", "1", " true "] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for t in ["false", "FALSE", "0"] {
            assert_eq!(parse_bool(t), Some(false), "{t}");
        }
        for t in ["yes", "no", "2", "", "t"] {
            assert_eq!(parse_bool(t), None, "{t}");
        }
    }

    #[test]
    fn uuid_needs_the_hyphenated_form() {
        assert!(is_uuid("3fa85f64-5717-4562-b3fc-2c963f66afa6"));
        assert!(is_uuid("3FA85F64-5717-4562-B3FC-2C963F66AFA6"));
        assert!(!is_uuid("3fa85f6457174562b3fc2c963f66afa6"));
        assert!(!is_uuid("{3fa85f64-5717-4562-b3fc-2c963f66afa6}"));
        assert!(!is_uuid("3fa85f64-5717-4562-b3fc-2c963f66afaz"));
        assert!(!is_uuid("<YOUR_ORG_UUID>"));
    }

    #[test]
    fn regions_and_handles() {
        assert!(is_region("us-east-1"));
        assert!(!is_region("US-EAST-1"));
        assert!(!is_region("us_east_1"));
        assert!(!is_region(""));
        assert!(is_secret_handle("ENC[api_key]"));
        assert!(is_secret_handle(" ENC[x] "));
        assert!(!is_secret_handle("ENC[x"));
        assert!(!is_secret_handle("enc[x]"));
    }
}

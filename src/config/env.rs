//! Environment overrides for `datadog.yaml`, named exactly as the Agent names them.
//!
//! The rule is the Agent's: `DD_` + upper(key path with `.` → `_`), so
//! `logs_config.delegated_auth.org_uuid` is `DD_LOGS_CONFIG_DELEGATED_AUTH_ORG_UUID`. An
//! override replaces the file's value at that path, and the replaced node remembers the
//! variable so problems name it. Values are strings; how they are parsed (bools, ints, lists,
//! JSON) follows the Agent and is decided by the key's [`EnvKind`].
//!
//! An empty variable counts as unset, as with the Agent's viper-based env binding.

use super::node::{Entry, Node, ScalarKind, Value};
use super::problem::{Problem, Problems};
use std::path::Path;

/// How a variable's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvKind {
    /// A single scalar (string, bool or int: parsed later like a file value).
    Scalar,
    /// A list given as space-separated words (`DD_PROXY_NO_PROXY="a b"`), as the Agent's
    /// string-slice settings read from the environment.
    Words,
    /// A list split on commas and spaces (`DD_PROXY_NO_PROXY="a,b c"`), as the newest Agent's
    /// `LoadProxyFromEnv` splits it (wire spec §10.4).
    CommaOrSpaceWords,
    /// A JSON document (`DD_ADDITIONAL_ENDPOINTS='{"https://…": ["…"]}'`), as the Agent reads
    /// map- and list-shaped endpoint settings.
    Json,
}

/// One overridable key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    /// Key path, e.g. `["logs_config", "delegated_auth", "org_uuid"]`.
    pub(crate) path: Vec<&'static str>,
    /// Variable names, first set one wins.
    pub(crate) vars: Vec<String>,
    pub(crate) kind: EnvKind,
}

/// The product sections that can hold their own `delegated_auth` block and `api_key`
/// (wire spec §4.1, `pkg/config/setup/generated.go`).
pub(crate) const PRODUCT_SECTIONS: [&str; 4] = [
    "logs_config",
    "remote_configuration",
    "evp_proxy_config",
    "ol_proxy_config",
];

/// The Agent's variable name for a key path.
pub(crate) fn var_name(path: &[&str]) -> String {
    let mut name = String::from("DD_");
    name.push_str(&path.join("_").to_ascii_uppercase());
    name
}

fn bind(path: &[&'static str], kind: EnvKind) -> Binding {
    Binding {
        path: path.to_vec(),
        vars: vec![var_name(path)],
        kind,
    }
}

/// Every `datadog.yaml` key we read that has an environment override.
pub(crate) fn bindings() -> Vec<Binding> {
    let mut list = vec![
        bind(&["api_key"], EnvKind::Scalar),
        bind(&["site"], EnvKind::Scalar),
        // The Agent binds dd_url to DD_DD_URL first, then DD_URL.
        Binding {
            path: vec!["dd_url"],
            vars: vec!["DD_DD_URL".into(), "DD_URL".into()],
            kind: EnvKind::Scalar,
        },
        bind(&["proxy", "http"], EnvKind::Scalar),
        bind(&["proxy", "https"], EnvKind::Scalar),
        bind(&["proxy", "no_proxy"], EnvKind::CommaOrSpaceWords),
        bind(&["skip_ssl_validation"], EnvKind::Scalar),
        bind(&["convert_dd_site_fqdn", "enabled"], EnvKind::Scalar),
        bind(&["cloud_provider_metadata"], EnvKind::Words),
        bind(&["ec2_metadata_timeout"], EnvKind::Scalar),
        bind(&["ec2_prefer_imdsv2"], EnvKind::Scalar),
        bind(&["ec2_metadata_token_lifetime"], EnvKind::Scalar),
        bind(&["delegated_auth", "org_uuid"], EnvKind::Scalar),
        bind(&["delegated_auth", "provider"], EnvKind::Scalar),
        bind(&["delegated_auth", "aws", "region"], EnvKind::Scalar),
        bind(
            &["delegated_auth", "refresh_interval_mins"],
            EnvKind::Scalar,
        ),
        bind(&["additional_endpoints"], EnvKind::Json),
        bind(&["logs_config", "additional_endpoints"], EnvKind::Json),
        bind(&["logs_config", "use_http"], EnvKind::Scalar),
        bind(&["logs_config", "force_use_http"], EnvKind::Scalar),
    ];
    for section in PRODUCT_SECTIONS {
        list.push(bind(&[section, "api_key"], EnvKind::Scalar));
        list.push(bind(
            &[section, "delegated_auth", "org_uuid"],
            EnvKind::Scalar,
        ));
        list.push(bind(
            &[section, "delegated_auth", "refresh_interval_mins"],
            EnvKind::Scalar,
        ));
        // Bound by the Agent for every section; we read them only to warn that they are
        // global-only.
        list.push(bind(
            &[section, "delegated_auth", "provider"],
            EnvKind::Scalar,
        ));
        list.push(bind(
            &[section, "delegated_auth", "aws", "region"],
            EnvKind::Scalar,
        ));
    }
    list
}

/// Grafts every set override into `root` (which must be a mapping).
pub(crate) fn apply(
    root: &mut Node,
    env: &dyn Fn(&str) -> Option<String>,
    file: &Path,
    problems: &mut Problems,
) {
    for binding in bindings() {
        let Some((var, text)) = binding
            .vars
            .iter()
            .find_map(|v| env(v).filter(|t| !t.is_empty()).map(|t| (v.clone(), t)))
        else {
            continue;
        };
        let mut node = match binding.kind {
            EnvKind::Scalar => Node::new(Value::Scalar {
                text,
                kind: ScalarKind::Str,
            }),
            EnvKind::Words => Node::new(Value::Seq(
                text.split_whitespace()
                    .map(|w| {
                        Node::new(Value::Scalar {
                            text: w.to_owned(),
                            kind: ScalarKind::Str,
                        })
                    })
                    .collect(),
            )),
            EnvKind::CommaOrSpaceWords => Node::new(Value::Seq(
                text.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|w| !w.is_empty())
                    .map(|w| {
                        Node::new(Value::Scalar {
                            text: w.to_owned(),
                            kind: ScalarKind::Str,
                        })
                    })
                    .collect(),
            )),
            EnvKind::Json => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(json) => Node::from_json(&json),
                Err(err) => {
                    // serde_json's message gives a position, never the input text.
                    problems.error(
                        Problem::new(
                            file,
                            binding.path.join("."),
                            format!("is not valid JSON: {err}"),
                            format!(
                                "set {var} to a JSON document, e.g. \
                                 '{{\"https://app.datadoghq.eu\": [\"DELA[<org_uuid>, aws]\"]}}' \
                                 for additional_endpoints, or unset it"
                            ),
                        )
                        .from_env(Some(&var)),
                    );
                    continue;
                }
            },
        };
        node.mark_env(&var);
        set_path(root, &binding.path, node);
    }
}

/// Sets `path` in `root` to `node`, creating (or replacing non-mapping) intermediate nodes.
/// Keys match case-insensitively, as the Agent's keys do.
fn set_path(root: &mut Node, path: &[&str], node: Node) {
    let Some((first, rest)) = path.split_first() else {
        *root = node;
        return;
    };
    if !matches!(root.value, Value::Map(_)) {
        *root = Node::empty_map();
    }
    let Value::Map(entries) = &mut root.value else {
        return;
    };
    let pos = entries
        .iter()
        .position(|e| e.key.eq_ignore_ascii_case(first));
    let idx = match pos {
        Some(i) => i,
        None => {
            entries.push(Entry {
                key: (*first).to_owned(),
                key_line: None,
                value: Node::new(Value::Null),
            });
            entries.len() - 1
        }
    };
    set_path(&mut entries[idx].value, rest, node);
}

#[cfg(test)]
mod tests {
    use super::super::node;
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn get<'a>(node: &'a Node, path: &[&str]) -> Option<&'a Node> {
        let mut cur = node;
        for key in path {
            let Value::Map(entries) = &cur.value else {
                return None;
            };
            cur = &entries
                .iter()
                .find(|e| e.key.eq_ignore_ascii_case(key))?
                .value;
        }
        Some(cur)
    }

    #[test]
    fn names_follow_the_agent_rule() {
        assert_eq!(var_name(&["api_key"]), "DD_API_KEY");
        assert_eq!(
            var_name(&["logs_config", "delegated_auth", "org_uuid"]),
            "DD_LOGS_CONFIG_DELEGATED_AUTH_ORG_UUID"
        );
        let all: Vec<String> = bindings().into_iter().flat_map(|b| b.vars).collect();
        for expected in [
            "DD_API_KEY",
            "DD_SITE",
            "DD_DD_URL",
            "DD_URL",
            "DD_DELEGATED_AUTH_ORG_UUID",
            "DD_DELEGATED_AUTH_PROVIDER",
            "DD_DELEGATED_AUTH_AWS_REGION",
            "DD_DELEGATED_AUTH_REFRESH_INTERVAL_MINS",
            "DD_LOGS_CONFIG_DELEGATED_AUTH_ORG_UUID",
            "DD_LOGS_CONFIG_API_KEY",
            "DD_REMOTE_CONFIGURATION_DELEGATED_AUTH_ORG_UUID",
            "DD_REMOTE_CONFIGURATION_API_KEY",
            "DD_EVP_PROXY_CONFIG_DELEGATED_AUTH_REFRESH_INTERVAL_MINS",
            "DD_OL_PROXY_CONFIG_API_KEY",
            "DD_PROXY_HTTP",
            "DD_PROXY_HTTPS",
            "DD_PROXY_NO_PROXY",
            "DD_SKIP_SSL_VALIDATION",
            "DD_CONVERT_DD_SITE_FQDN_ENABLED",
            "DD_EC2_METADATA_TIMEOUT",
            "DD_EC2_PREFER_IMDSV2",
            "DD_EC2_METADATA_TOKEN_LIFETIME",
            "DD_CLOUD_PROVIDER_METADATA",
            "DD_ADDITIONAL_ENDPOINTS",
            "DD_LOGS_CONFIG_ADDITIONAL_ENDPOINTS",
        ] {
            assert!(all.iter().any(|v| v == expected), "{expected} missing");
        }
    }

    #[test]
    fn env_replaces_file_values_and_creates_missing_sections() {
        let mut root =
            node::parse("site: datadoghq.com\nDelegated_Auth:\n  org_uuid: a\n").unwrap();
        let mut problems = Problems::default();
        let env = lookup(&[
            ("DD_SITE", "datadoghq.eu"),
            ("DD_DELEGATED_AUTH_ORG_UUID", "b"),
            ("DD_LOGS_CONFIG_DELEGATED_AUTH_ORG_UUID", "c"),
            ("DD_PROXY_NO_PROXY", " host1, host2,,.host3 "),
            ("DD_API_KEY", ""),
        ]);
        apply(&mut root, &env, Path::new("/f"), &mut problems);
        assert!(problems.errors.is_empty());
        let site = get(&root, &["site"]).unwrap();
        assert_eq!(site.env.as_deref(), Some("DD_SITE"));
        assert!(matches!(&site.value, Value::Scalar { text, .. } if text == "datadoghq.eu"));
        // Case-insensitive match: the override lands in the existing `Delegated_Auth` block.
        let org = get(&root, &["delegated_auth", "org_uuid"]).unwrap();
        assert!(matches!(&org.value, Value::Scalar { text, .. } if text == "b"));
        assert!(get(&root, &["logs_config", "delegated_auth", "org_uuid"]).is_some());
        let Value::Seq(words) = &get(&root, &["proxy", "no_proxy"]).unwrap().value else {
            panic!("list")
        };
        // Split on commas and spaces (wire spec §10.4).
        assert_eq!(words.len(), 3);
        // Empty means unset.
        assert!(get(&root, &["api_key"]).is_none());
    }

    #[test]
    fn dd_dd_url_wins_over_dd_url() {
        let mut root = Node::empty_map();
        let env = lookup(&[("DD_URL", "https://b"), ("DD_DD_URL", "https://a")]);
        apply(&mut root, &env, Path::new("/f"), &mut Problems::default());
        let node = get(&root, &["dd_url"]).unwrap();
        assert_eq!(node.env.as_deref(), Some("DD_DD_URL"));
        let mut root = Node::empty_map();
        let env = lookup(&[("DD_URL", "https://b")]);
        apply(&mut root, &env, Path::new("/f"), &mut Problems::default());
        assert_eq!(
            get(&root, &["dd_url"]).unwrap().env.as_deref(),
            Some("DD_URL")
        );
    }

    #[test]
    fn json_overrides_parse_or_report() {
        let mut root = Node::empty_map();
        let env = lookup(&[
            (
                "DD_ADDITIONAL_ENDPOINTS",
                r#"{"https://app.datadoghq.eu": ["k"]}"#,
            ),
            ("DD_LOGS_CONFIG_ADDITIONAL_ENDPOINTS", "[{"),
        ]);
        let mut problems = Problems::default();
        apply(&mut root, &env, Path::new("/f"), &mut problems);
        assert!(get(&root, &["additional_endpoints", "https://app.datadoghq.eu"]).is_some());
        assert_eq!(problems.errors.len(), 1);
        let p = &problems.errors[0];
        assert_eq!(
            p.env.as_deref(),
            Some("DD_LOGS_CONFIG_ADDITIONAL_ENDPOINTS")
        );
        assert_eq!(p.key, "logs_config.additional_endpoints");
        assert!(p.value.is_none());
    }
}

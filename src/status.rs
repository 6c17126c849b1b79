//! The status document: what `GET /v1/status`, `GET /v1/keys` and the `status` command show.
//!
//! The daemon builds a [`StatusDoc`] from its [`DaemonInfo`] and the key store; the CLI fetches
//! the JSON over the socket and renders it with [`render_text`], which mirrors the Agent's
//! "Delegated Authentication" status section (wire spec §6.2) so operators see familiar lines.
//! Nothing here ever holds a key: only its redacted suffix.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::keystore::{KeyStore, Snapshot};

/// Daemon-wide facts the refresh manager and the reload loop publish for status.
#[derive(Clone, Debug, Default)]
pub struct DaemonInfo {
    /// `datadog.yaml` path.
    pub config_path: String,
    /// Settings file path.
    pub settings_path: String,
    /// Socket path.
    pub socket_path: String,
    /// When the daemon started.
    pub started_at: Option<SystemTime>,
    /// When the configuration in force was loaded.
    pub config_loaded_at: Option<SystemTime>,
    /// The last reload error, cleared by the next successful reload.
    pub last_reload_error: Option<String>,
    /// Failed reloads since start.
    pub reload_failures: u64,
    /// Validation warnings of the configuration in force.
    pub config_warnings: Vec<String>,
    /// The proxies in effect and where each came from (passwords masked).
    pub proxy: Option<ProxyStatus>,
    /// Environment detection.
    pub environment: EnvironmentStatus,
}

/// What the AWS environment detection found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentStatus {
    /// `ec2`, `ecs`, `eks-irsa`, `eks-pod-identity`, `static-env` or `none` (product §3).
    pub kind: String,
    /// Why the kind is `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Credential source in the Agent's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_source: Option<String>,
    /// Signing region (`None` = global STS endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// STS host the proofs are signed for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sts_host: Option<String>,
    /// `aws` when delegated auth is enabled anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Warnings from detection (half-set variable pairs, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The whole status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// Daemon version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// RFC 3339 start time.
    pub started_at: Option<String>,
    /// Whether every instance can serve a key.
    pub ready: bool,
    /// Whether any instance uses delegated authentication.
    pub enabled: bool,
    /// Files and reload state.
    pub config: ConfigStatus,
    /// AWS environment.
    pub environment: EnvironmentStatus,
    /// Every instance.
    pub instances: Vec<InstanceDoc>,
    /// Every delegated API token (product §13).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenDoc>,
    /// File sinks and their last outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<crate::sink::SinkStatus>,
}

/// Configuration files and reload state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// `datadog.yaml` path.
    pub path: String,
    /// Settings path.
    pub settings_path: String,
    /// Socket path.
    pub socket_path: String,
    /// When the configuration in force was loaded.
    pub loaded_at: Option<String>,
    /// The last reload error, if the last reload failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<String>,
    /// Failed reloads since start.
    pub reload_failures: u64,
    /// Warnings of the configuration in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The proxies in effect, when any is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
}

/// The proxies in effect and the source that won for each (wire spec §10.4), passwords masked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// Proxy of `https://` requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<ProxySourceDoc>,
    /// Proxy of `http://` requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<ProxySourceDoc>,
    /// Destinations reached directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_proxy: Vec<String>,
    /// Where `no_proxy` came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_proxy_source: Option<String>,
    /// The same in one line, as `check-config` prints it.
    pub summary: String,
}

/// One proxy URL (password masked) and its source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxySourceDoc {
    /// The URL, `user:password@` masked as `***@`.
    pub url: String,
    /// `DD_PROXY_HTTPS`, `HTTPS_PROXY`, `https_proxy`, `proxy.https`, …
    pub source: String,
}

impl ProxyStatus {
    /// The status form of the resolver's choice; `None` when no proxy setting is present.
    pub fn from_in_effect(p: &crate::config::proxy::ProxyInEffect) -> Option<Self> {
        let doc = |c: &Option<crate::config::proxy::ProxyChoice>| {
            c.as_ref().map(|c| ProxySourceDoc {
                url: c.redacted(),
                source: c.source.clone(),
            })
        };
        p.is_set().then(|| ProxyStatus {
            https: doc(&p.https),
            http: doc(&p.http),
            no_proxy: p.no_proxy.clone(),
            no_proxy_source: p.no_proxy_source.clone(),
            summary: p.describe(),
        })
    }
}

/// One instance, without secrets (`GET /v1/keys` lists these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceDoc {
    /// Instance name.
    pub name: String,
    /// `pending`, `active`, `fallback`, `unavailable` or `invalid`.
    pub state: String,
    /// `delegated` or `fallback` when a key is served.
    pub source: Option<String>,
    /// Generation (ETag) of the served value.
    pub generation: u64,
    /// Redacted key (`***` + last 5 characters) when a key is served.
    pub key: Option<String>,
    /// Org the instance exchanges for.
    pub org_uuid: Option<String>,
    /// Intake-key URL.
    pub endpoint: Option<String>,
    /// Signing region.
    pub region: Option<String>,
    /// Refresh interval, Go duration format as the Agent prints it (`1h0m0s`).
    pub refresh_interval: Option<String>,
    /// Credential source used.
    pub credential_source: Option<String>,
    /// RFC 3339 time the served key was obtained.
    pub obtained_at: Option<String>,
    /// RFC 3339 time of the last successful exchange.
    pub last_refresh: Option<String>,
    /// RFC 3339 time of the next attempt.
    pub next_refresh: Option<String>,
    /// Whether the next attempt is a retry.
    pub next_is_retry: bool,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Last failure message.
    pub last_error: Option<String>,
    /// Last failure kind.
    pub last_error_kind: Option<String>,
    /// The Agent's `Error:` line: `N consecutive failures[, last error: …]`.
    pub error: Option<String>,
    /// Where the fallback key comes from.
    pub fallback_origin: Option<String>,
    /// Why the instance is in fallback or unavailable, or what is wrong with an invalid entry.
    pub reason: Option<String>,
    /// For an invalid entry: how to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Instances sharing this one's exchange.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
}

/// One delegated API token as `GET /v1/tokens` and status show it: never the token itself,
/// only its redacted suffix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenDoc {
    /// The token's name.
    pub name: String,
    /// `pending`, `active` or `unavailable`.
    pub state: String,
    /// Its ETag (changes with the served token).
    pub generation: u64,
    /// The served token's last 5 characters (`***abcde`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The org.
    pub org_uuid: Option<String>,
    /// The delegated-token URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The AWS credential source last used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_source: Option<String>,
    /// When the served token was obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obtained_at: Option<String>,
    /// When the served token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Seconds until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// Next attempt (a refresh, or a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<String>,
    /// Whether the next attempt is a retry.
    #[serde(default)]
    pub next_is_retry: bool,
    /// Failures since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_kind: Option<String>,
    /// Why nothing is served, or why the token is suspect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl TokenDoc {
    /// Describes one token's snapshot.
    pub fn from_snapshot(s: &Snapshot) -> Self {
        let st = &s.status;
        let expires_at = s.served.as_ref().and_then(|t| t.expires_at);
        TokenDoc {
            name: crate::keystore::token_name(&s.name)
                .unwrap_or(&s.name)
                .to_owned(),
            state: s.state.as_str().to_owned(),
            generation: s.generation,
            token: s.served.as_ref().map(|t| t.value.redacted()),
            org_uuid: st.org_uuid.clone(),
            endpoint: st.endpoint.clone(),
            credential_source: st.credential_source.clone(),
            obtained_at: s.served.as_ref().map(|t| rfc3339(t.obtained_at)),
            expires_at: expires_at.map(rfc3339),
            expires_in_secs: expires_at.map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_secs()
            }),
            next_refresh: st.next_refresh.map(rfc3339),
            next_is_retry: st.next_is_retry,
            consecutive_failures: st.consecutive_failures,
            last_error: st.last_error.clone(),
            last_error_kind: st.last_error_kind.map(|k| k.as_str().to_owned()),
            reason: st.reason.clone(),
        }
    }
}

/// Every token of the store, sorted by name.
pub fn tokens(store: &KeyStore) -> Vec<TokenDoc> {
    store
        .token_slots()
        .iter()
        .map(|slot| TokenDoc::from_snapshot(&slot.current()))
        .collect()
}

/// RFC 3339 with second precision, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Go's `time.Duration.String()` for whole seconds, as the Agent prints refresh intervals.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

impl InstanceDoc {
    /// Describes one snapshot.
    pub fn from_snapshot(s: &Snapshot) -> Self {
        let st = &s.status;
        let error = (st.consecutive_failures > 0).then(|| match &st.last_error {
            Some(e) => format!(
                "{} consecutive failures, last error: {e}",
                st.consecutive_failures
            ),
            None => format!("{} consecutive failures", st.consecutive_failures),
        });
        InstanceDoc {
            name: s.name.to_string(),
            state: s.state.as_str().to_owned(),
            source: s.served.as_ref().map(|k| k.source.as_str().to_owned()),
            generation: s.generation,
            key: s.served.as_ref().map(|k| k.value.redacted()),
            org_uuid: st.org_uuid.clone(),
            endpoint: st.endpoint.clone(),
            region: st.region.clone(),
            refresh_interval: st.refresh_interval.map(go_duration),
            credential_source: st.credential_source.clone(),
            obtained_at: s.served.as_ref().map(|k| rfc3339(k.obtained_at)),
            last_refresh: st.last_refresh.map(rfc3339),
            next_refresh: st.next_refresh.map(rfc3339),
            next_is_retry: st.next_is_retry,
            consecutive_failures: st.consecutive_failures,
            last_error: st.last_error.clone(),
            last_error_kind: st.last_error_kind.map(|k| k.as_str().to_owned()),
            error,
            fallback_origin: st.fallback_origin.clone(),
            reason: st.reason.clone(),
            fix: st.fix.clone(),
            shared_with: st.shared_with.clone(),
        }
    }
}

/// Every instance of the store, sorted by name.
pub fn instances(store: &KeyStore) -> Vec<InstanceDoc> {
    store
        .slots()
        .iter()
        .map(|slot| InstanceDoc::from_snapshot(&slot.current()))
        .collect()
}

/// Builds the whole status.
pub fn build(info: &DaemonInfo, store: &KeyStore, sinks: &crate::sink::SinkBoard) -> StatusDoc {
    let instances = instances(store);
    let tokens = tokens(store);
    StatusDoc {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at: info.started_at.map(rfc3339),
        ready: store.is_ready(),
        enabled: instances.iter().any(|i| i.org_uuid.is_some()) || !tokens.is_empty(),
        config: ConfigStatus {
            path: info.config_path.clone(),
            settings_path: info.settings_path.clone(),
            socket_path: info.socket_path.clone(),
            loaded_at: info.config_loaded_at.map(rfc3339),
            last_reload_error: info.last_reload_error.clone(),
            reload_failures: info.reload_failures,
            warnings: info.config_warnings.clone(),
            proxy: info.proxy.clone(),
        },
        environment: info.environment.clone(),
        instances,
        tokens,
        sinks: sinks.list(),
    }
}

/// Text for `status`, shaped like the Agent's status section (wire spec §6.2) with our extras
/// (state, source, key suffix, fallback) under each instance.
pub fn render_text(doc: &StatusDoc) -> String {
    let mut out = String::new();
    let env = &doc.environment;
    if doc.enabled {
        out.push_str("=== Delegated Authentication ===\n");
        let _ = writeln!(
            out,
            "Cloud Provider: {}",
            env.provider.as_deref().unwrap_or("aws")
        );
        let _ = writeln!(
            out,
            "AWS Region: {}",
            env.region
                .as_deref()
                .unwrap_or("(none: global STS endpoint)")
        );
    } else {
        out.push_str("Delegated Authentication is not enabled\n");
        out.push_str("  Reason: no section of datadog.yaml sets delegated_auth.org_uuid; static keys are served\n");
    }
    let _ = writeln!(out, "Environment: {}", env.kind);
    if let Some(reason) = &env.reason {
        let _ = writeln!(out, "  Reason: {reason}");
    }
    if let Some(src) = &env.credential_source {
        let _ = writeln!(out, "Credential Source: {src}");
    }
    if let Some(host) = &env.sts_host {
        let _ = writeln!(out, "STS Host: {host}");
    }
    for w in &env.warnings {
        let _ = writeln!(out, "Warning: {w}");
    }
    if let Some(proxy) = &doc.config.proxy {
        let _ = writeln!(out, "Proxy: {}", proxy.summary);
    }
    let _ = writeln!(out, "Ready: {}", if doc.ready { "yes" } else { "no" });
    out.push_str("\nConfigured Delegated Auth Instances:\n");
    for i in &doc.instances {
        let _ = writeln!(out, "- {}", i.name);
        let agent_status = if i.state == "active" {
            "Active"
        } else {
            "Pending"
        };
        let _ = writeln!(out, "    Status: {agent_status} ({})", i.state);
        if let Some(src) = &i.source {
            let _ = writeln!(
                out,
                "    Serving: {src} key {}",
                i.key.as_deref().unwrap_or("")
            );
        }
        if let Some(org) = &i.org_uuid {
            let _ = writeln!(out, "    Org UUID: {org}");
        }
        if let Some(ep) = &i.endpoint {
            let _ = writeln!(out, "    Endpoint: {ep}");
        }
        if let Some(src) = &i.credential_source {
            let _ = writeln!(out, "    Credential Source: {src}");
        }
        if let Some(ri) = &i.refresh_interval {
            let _ = writeln!(out, "    Refresh Interval: {ri}");
        }
        if let Some(t) = &i.last_refresh {
            let _ = writeln!(out, "    Last Refresh: {t}");
        }
        if let Some(t) = &i.next_refresh {
            let label = if i.next_is_retry {
                "Next Retry"
            } else {
                "Next Refresh"
            };
            let _ = writeln!(out, "    {label}: {t}");
        }
        if let Some(f) = &i.fallback_origin {
            let _ = writeln!(out, "    Fallback: {f}");
        }
        if let Some(r) = &i.reason {
            let _ = writeln!(out, "    Reason: {r}");
        }
        if let Some(f) = &i.fix {
            let _ = writeln!(out, "    Fix: {f}");
        }
        if let Some(e) = &i.error {
            let _ = writeln!(out, "    Error: {e}");
        }
        if !i.shared_with.is_empty() {
            let _ = writeln!(
                out,
                "    Shares Exchange With: {}",
                i.shared_with.join(", ")
            );
        }
    }
    if !doc.tokens.is_empty() {
        out.push_str("\nDelegated API Tokens:\n");
        for t in &doc.tokens {
            let _ = writeln!(out, "- {}", t.name);
            let _ = writeln!(out, "    Status: {}", t.state);
            if let Some(token) = &t.token {
                let _ = writeln!(out, "    Serving: token {token}");
            }
            if let Some(org) = &t.org_uuid {
                let _ = writeln!(out, "    Org UUID: {org}");
            }
            if let Some(ep) = &t.endpoint {
                let _ = writeln!(out, "    Endpoint: {ep}");
            }
            if let Some(src) = &t.credential_source {
                let _ = writeln!(out, "    Credential Source: {src}");
            }
            if let Some(at) = &t.expires_at {
                let _ = writeln!(
                    out,
                    "    Expires: {at} (in {})",
                    go_duration(Duration::from_secs(t.expires_in_secs.unwrap_or(0)))
                );
            }
            if let Some(next) = &t.next_refresh {
                let label = if t.next_is_retry {
                    "Next Retry"
                } else {
                    "Next Refresh"
                };
                let _ = writeln!(out, "    {label}: {next}");
            }
            if let Some(r) = &t.reason {
                let _ = writeln!(out, "    Reason: {r}");
            }
            if t.consecutive_failures > 0 {
                let _ = writeln!(
                    out,
                    "    Error: {} consecutive failures, last error: {}",
                    t.consecutive_failures,
                    t.last_error.as_deref().unwrap_or("")
                );
            }
        }
    }
    if !doc.sinks.is_empty() {
        out.push_str("\nFile Sinks:\n");
        for sink in &doc.sinks {
            let state = match (&sink.last_error, sink.generation) {
                (Some(e), _) => format!("FAILING: {e}"),
                (None, Some(g)) => format!("current (generation {g})"),
                (None, None) => "waiting for a key".to_owned(),
            };
            let _ = writeln!(out, "- {} ({}): {state}", sink.path, sink.instance);
        }
    }
    let c = &doc.config;
    out.push_str("\nConfiguration:\n");
    let _ = writeln!(out, "  datadog.yaml: {}", c.path);
    let _ = writeln!(out, "  Settings: {}", c.settings_path);
    let _ = writeln!(out, "  Socket: {}", c.socket_path);
    if let Some(t) = &c.loaded_at {
        let _ = writeln!(out, "  Loaded At: {t}");
    }
    if let Some(e) = &c.last_reload_error {
        let _ = writeln!(out, "  Last Reload Failed: {e}");
    }
    for w in &c.warnings {
        let _ = writeln!(out, "  Warning: {w}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{KeySource, KeyState, ServedKey};
    use crate::secret::Secret;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
    }

    #[test]
    fn text_mirrors_the_agent_and_hides_the_key() {
        let store = KeyStore::new();
        let slot = store.set_instances(&["api_key".to_owned()]).remove(0);
        slot.update(|s| {
            s.state = KeyState::Fallback;
            s.served = Some(ServedKey {
                value: Secret::from("0123456789abcdef0123456789abcdef"),
                source: KeySource::Fallback,
                obtained_at: SystemTime::UNIX_EPOCH,
                expires_at: None,
            });
            s.status.org_uuid = Some("11111111-2222-3333-4444-555555555555".into());
            s.status.consecutive_failures = 2;
            s.status.last_error = Some("failed to get API key: 503 Service Unavailable".into());
            s.status.refresh_interval = Some(Duration::from_secs(3600));
        });
        let info = DaemonInfo {
            environment: EnvironmentStatus {
                kind: "ec2".into(),
                provider: Some("aws".into()),
                region: Some("us-east-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let doc = build(&info, &store, &crate::sink::SinkBoard::default());
        let text = render_text(&doc);
        assert!(text.contains("=== Delegated Authentication ==="));
        assert!(text.contains("AWS Region: us-east-1"));
        assert!(text.contains("- api_key\n    Status: Pending (fallback)"));
        assert!(text.contains("Refresh Interval: 1h0m0s"));
        assert!(
            text.contains("Error: 2 consecutive failures, last error: failed to get API key: 503")
        );
        assert!(text.contains("***bcdef"));
        assert!(!text.contains("0123456789abcdef0123"));
        let json = serde_json::to_string(&doc).unwrap();
        assert!(!json.contains("0123456789abcdef0123"));
        let back: StatusDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
    }
}

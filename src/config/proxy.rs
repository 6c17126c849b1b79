//! Which proxy each request uses: the one resolver behind the exchange, the IRSA STS call,
//! `doctor`, `mapping`, `check-config` and `status` (wire spec §10.4, the newest Agent's
//! `LoadProxyFromEnv`).
//!
//! Per field, the first set value wins:
//!
//! | field | 1st | 2nd | 3rd |
//! |---|---|---|---|
//! | https | `DD_PROXY_HTTPS` | `HTTPS_PROXY`, then `https_proxy` | `proxy.https` in `datadog.yaml` |
//! | http | `DD_PROXY_HTTP` | `HTTP_PROXY`, then `http_proxy` | `proxy.http` |
//! | no_proxy | `DD_PROXY_NO_PROXY` (split on commas and spaces) | `NO_PROXY`, then `no_proxy` (split on commas) | `proxy.no_proxy` |
//!
//! A `no_proxy` from the environment replaces the file's list; it is not merged. An empty (or
//! blank) variable counts as unset, as everywhere in the daemon. `DD_PROXY_*` reach the
//! resolver through the configuration tree (they are the Agent's overrides of `proxy.*`, and
//! [`ProxyConfig`] remembers which variable set each field); the standard variables are looked
//! up here.

use std::fmt;

use super::ProxyConfig;
use crate::secret::redact_userinfo;

/// One proxy URL and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyChoice {
    /// The URL (may hold `user:password@`: show it through [`ProxyChoice::redacted`]).
    pub url: String,
    /// `DD_PROXY_HTTPS`, `HTTPS_PROXY`, `https_proxy`, `proxy.https`, …
    pub source: String,
}

impl ProxyChoice {
    /// The URL with any password masked.
    pub fn redacted(&self) -> String {
        redact_userinfo(&self.url)
    }
}

impl fmt::Debug for ProxyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.redacted(), self.source)
    }
}

/// The proxies in effect after the precedence above.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyInEffect {
    /// Proxy for `http://` destinations.
    pub http: Option<ProxyChoice>,
    /// Proxy for `https://` destinations (the exchange in production).
    pub https: Option<ProxyChoice>,
    /// Destinations reached directly (hosts, `.domains`, IPs, CIDRs).
    pub no_proxy: Vec<String>,
    /// Where `no_proxy` came from (`None`: nowhere, the list is empty).
    pub no_proxy_source: Option<String>,
}

impl ProxyInEffect {
    /// One line for `check-config` and `status`: each field, its source, passwords masked.
    pub fn describe(&self) -> String {
        let one = |c: &Option<ProxyChoice>| match c {
            Some(c) => format!("{} (from {})", c.redacted(), c.source),
            None => "-".to_owned(),
        };
        format!(
            "https={} http={} no_proxy=[{}]{}",
            one(&self.https),
            one(&self.http),
            self.no_proxy.join(" "),
            self.no_proxy_source
                .as_ref()
                .map(|s| format!(" (from {s})"))
                .unwrap_or_default()
        )
    }

    /// Whether any proxy setting is present.
    pub fn is_set(&self) -> bool {
        self.http.is_some() || self.https.is_some() || !self.no_proxy.is_empty()
    }
}

/// A non-blank value, trimmed.
fn set(v: Option<String>) -> Option<String> {
    v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Applies the precedence to the file's values (with the `DD_PROXY_*` overrides already in
/// `file`) and the standard variables seen through `env`.
pub fn resolve(file: &ProxyConfig, env: &dyn Fn(&str) -> Option<String>) -> ProxyInEffect {
    let std_var = |lower: &str| {
        [lower.to_ascii_uppercase(), lower.to_owned()]
            .into_iter()
            .find_map(|name| set(env(&name)).map(|v| (name, v)))
    };
    let field = |value: &Option<String>, dd_var: &Option<String>, lower: &str, key: &str| {
        let value = set(value.clone());
        if let (Some(url), Some(var)) = (&value, dd_var) {
            return Some(ProxyChoice {
                url: url.clone(),
                source: var.clone(),
            });
        }
        if let Some((name, url)) = std_var(lower) {
            return Some(ProxyChoice { url, source: name });
        }
        value.map(|url| ProxyChoice {
            url,
            source: key.to_owned(),
        })
    };
    let https = field(&file.https, &file.https_var, "https_proxy", "proxy.https");
    let http = field(&file.http, &file.http_var, "http_proxy", "proxy.http");

    let file_list: Vec<String> = file
        .no_proxy
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let (no_proxy, no_proxy_source) = match (&file.no_proxy_var, std_var("no_proxy")) {
        (Some(var), _) if !file_list.is_empty() => (file_list, Some(var.clone())),
        (_, Some((name, value))) => (
            value
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            Some(name),
        ),
        _ if !file_list.is_empty() => (file_list, Some("proxy.no_proxy".to_owned())),
        _ => (Vec::new(), None),
    };
    ProxyInEffect {
        http,
        https,
        no_proxy,
        no_proxy_source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    /// Every combination of the four sources of one field, for https and http: the winner is
    /// always the first set one in `DD_PROXY_*`, upper-case standard, lower-case standard, file.
    #[test]
    fn every_combination_of_sources_picks_the_first_set_one() {
        for (scheme, dd, upper, lower, key) in [
            (
                "https",
                "DD_PROXY_HTTPS",
                "HTTPS_PROXY",
                "https_proxy",
                "proxy.https",
            ),
            (
                "http",
                "DD_PROXY_HTTP",
                "HTTP_PROXY",
                "http_proxy",
                "proxy.http",
            ),
        ] {
            for mask in 0u8..16 {
                let has = |bit: u8| mask & (1 << bit) != 0;
                let mut file = ProxyConfig::default();
                // The file's value, and DD_PROXY_* as the tree delivers it: it replaces the
                // file's value and remembers the variable.
                let (value, var) = if has(0) {
                    (Some(format!("http://{dd}:1")), Some(dd.to_owned()))
                } else if has(3) {
                    (Some("http://file:1".to_owned()), None)
                } else {
                    (None, None)
                };
                if scheme == "https" {
                    file.https = value;
                    file.https_var = var;
                } else {
                    file.http = value;
                    file.http_var = var;
                }
                let mut pairs = Vec::new();
                if has(1) {
                    pairs.push((upper, format!("http://{upper}:1")));
                }
                if has(2) {
                    pairs.push((lower, format!("http://{lower}:1")));
                }
                let pairs: Vec<(&str, &str)> =
                    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let got = resolve(&file, &env_of(&pairs));
                let choice = if scheme == "https" {
                    got.https
                } else {
                    got.http
                };
                let expected = if has(0) {
                    Some(dd)
                } else if has(1) {
                    Some(upper)
                } else if has(2) {
                    Some(lower)
                } else if has(3) {
                    Some(key)
                } else {
                    None
                };
                assert_eq!(
                    choice.as_ref().map(|c| c.source.as_str()),
                    expected,
                    "{scheme} mask {mask:04b}"
                );
                if let Some(c) = choice {
                    let host = if c.source == key { "file" } else { &c.source };
                    assert_eq!(
                        c.url,
                        format!("http://{host}:1"),
                        "{scheme} mask {mask:04b}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_combination_of_no_proxy_sources() {
        for mask in 0u8..16 {
            let has = |bit: u8| mask & (1 << bit) != 0;
            let mut file = ProxyConfig::default();
            if has(0) {
                file.no_proxy = vec!["dd.example".into()];
                file.no_proxy_var = Some("DD_PROXY_NO_PROXY".into());
            } else if has(3) {
                file.no_proxy = vec!["file.example".into()];
            }
            let mut pairs = Vec::new();
            if has(1) {
                pairs.push(("NO_PROXY", "upper.example"));
            }
            if has(2) {
                pairs.push(("no_proxy", "lower.example"));
            }
            let got = resolve(&file, &env_of(&pairs));
            let expected = if has(0) {
                Some(("DD_PROXY_NO_PROXY", "dd.example"))
            } else if has(1) {
                Some(("NO_PROXY", "upper.example"))
            } else if has(2) {
                Some(("no_proxy", "lower.example"))
            } else if has(3) {
                Some(("proxy.no_proxy", "file.example"))
            } else {
                None
            };
            assert_eq!(
                got.no_proxy_source.as_deref(),
                expected.map(|e| e.0),
                "mask {mask:04b}"
            );
            // Replaced, never merged.
            assert_eq!(
                got.no_proxy,
                expected.map(|e| vec![e.1.to_owned()]).unwrap_or_default(),
                "mask {mask:04b}"
            );
        }
    }

    /// The cases of the Agent's proxy tests (`TestProxy`, `LoadProxyFromEnv`,
    /// `pkg/config/setup/config_test.go`), in the daemon's terms.
    #[test]
    fn agent_proxy_test_cases() {
        let file = ProxyConfig {
            http: Some("http://file_http:1".into()),
            https: Some("http://file_https:1".into()),
            no_proxy: vec!["a".into(), "b".into()],
            ..ProxyConfig::default()
        };
        // "from configuration"
        let got = resolve(&file, &env_of(&[]));
        assert_eq!(got.https.unwrap().url, "http://file_https:1");
        assert_eq!(got.no_proxy, ["a", "b"]);
        // "from UNIX env only upper case" / "lower case": they beat the file.
        let got = resolve(
            &file,
            &env_of(&[
                ("HTTP_PROXY", "http://env_http:1"),
                ("https_proxy", "http://env_https:1"),
                ("NO_PROXY", "c, d,,e"),
            ]),
        );
        assert_eq!(got.http.unwrap().url, "http://env_http:1");
        assert_eq!(got.https.unwrap().source, "https_proxy");
        assert_eq!(got.no_proxy, ["c", "d", "e"]);
        // "upper case wins over lower case"
        let got = resolve(
            &ProxyConfig::default(),
            &env_of(&[
                ("HTTPS_PROXY", "http://upper:1"),
                ("https_proxy", "http://lower:1"),
            ]),
        );
        assert_eq!(got.https.unwrap().url, "http://upper:1");
        // "from DD env vars precedence over UNIX env vars"
        let dd = ProxyConfig {
            https: Some("http://dd:1".into()),
            https_var: Some("DD_PROXY_HTTPS".into()),
            no_proxy: vec!["x".into(), "y".into(), "z".into()],
            no_proxy_var: Some("DD_PROXY_NO_PROXY".into()),
            ..ProxyConfig::default()
        };
        let got = resolve(
            &dd,
            &env_of(&[("HTTPS_PROXY", "http://env:1"), ("NO_PROXY", "c")]),
        );
        assert_eq!(got.https.as_ref().unwrap().url, "http://dd:1");
        assert_eq!(got.no_proxy, ["x", "y", "z"]);
        // "empty values are unset"
        let got = resolve(&file, &env_of(&[("HTTPS_PROXY", " "), ("NO_PROXY", "")]));
        assert_eq!(got.https.unwrap().source, "proxy.https");
        assert_eq!(got.no_proxy_source.as_deref(), Some("proxy.no_proxy"));
        // Passwords are masked wherever the choice is shown.
        let secret = ProxyConfig {
            https: Some("http://user:hunter2@p:3128".into()),
            ..ProxyConfig::default()
        };
        let got = resolve(&secret, &env_of(&[]));
        assert!(!got.describe().contains("hunter2"), "{}", got.describe());
        assert!(!format!("{got:?}").contains("hunter2"));
        assert!(
            got.describe()
                .contains("http://***@p:3128 (from proxy.https)")
        );
    }
}

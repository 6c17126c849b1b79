//! What every outbound HTTP client of the daemon shares (the exchange, the mapping CLI,
//! `doctor`, the AWS metadata calls): the client options of `datadog.yaml` and the proxies they
//! resolve to, the https-or-loopback rule for URLs that receive credentials, bounded reads of an
//! answer, and the user agent.
//!
//! The socket client for the daemon's own API is [`crate::client`]; this module is the network
//! side.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use zeroize::Zeroizing;

/// The `User-Agent` of every request the daemon makes, and the one carried (unsigned) in the
/// proof, like the Agent's `datadog-agent/<version>`.
pub const USER_AGENT: &str = concat!("datadog-delegated-auth/", env!("CARGO_PKG_VERSION"));

/// The whole exchange (connect, send, read the answer) must finish within this: the Agent's
/// `httpClientTimeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Destinations that never use a proxy, whatever the configuration: the loopback emulators of
/// tests and the demo, and any local forwarder.
const ALWAYS_DIRECT: &str = "localhost,127.0.0.0/8,::1";

/// HTTP client settings, from `datadog.yaml` (`proxy.*`, `skip_ssl_validation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// `proxy.http`: proxy URL for `http://` destinations.
    pub proxy_http: Option<String>,
    /// `proxy.https`: proxy URL for `https://` destinations (the exchange in production).
    pub proxy_https: Option<String>,
    /// `proxy.no_proxy`: hosts, domains (`.example.com`), IPs or CIDRs reached directly.
    pub no_proxy: Vec<String>,
    /// The `DD_PROXY_*` variables that set the three fields above, if any: those values beat
    /// the standard variables, the file's values do not (wire spec §10.4).
    pub proxy_vars: ProxyVars,
    /// `skip_ssl_validation`: accept any TLS certificate. The caller must warn loudly.
    pub skip_ssl_validation: bool,
    /// Overall deadline of one exchange ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// Extra trusted root certificates (PEM), on top of the system's. Not read from any
    /// configuration: tests use it to trust a test CA.
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// Host name → address overrides of name resolution, matched against the URL's host as
    /// written (`api.datadoghq.com.` with its dot). Not read from any configuration: tests use it
    /// to reach a real Datadog name on loopback.
    pub resolve_overrides: Vec<(String, std::net::SocketAddr)>,
}

impl ClientOptions {
    /// The HTTP client settings of `datadog.yaml` (`proxy.*`, `skip_ssl_validation`) with the
    /// given request timeout. Every client of the Datadog API (exchange, mapping, doctor) builds
    /// its options here, so they cannot drift apart.
    pub fn from_agent(agent: &crate::config::AgentConfig, timeout: Duration) -> Self {
        ClientOptions {
            proxy_http: agent.proxy.http.clone(),
            proxy_https: agent.proxy.https.clone(),
            no_proxy: agent.proxy.no_proxy.clone(),
            proxy_vars: ProxyVars {
                http: agent.proxy.http_var.clone(),
                https: agent.proxy.https_var.clone(),
                no_proxy: agent.proxy.no_proxy_var.clone(),
            },
            skip_ssl_validation: agent.skip_ssl_validation,
            timeout,
            extra_root_certs_pem: Vec::new(),
            resolve_overrides: Vec::new(),
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            proxy_http: None,
            proxy_https: None,
            no_proxy: Vec::new(),
            proxy_vars: ProxyVars::default(),
            skip_ssl_validation: false,
            timeout: DEFAULT_TIMEOUT,
            extra_root_certs_pem: Vec::new(),
            resolve_overrides: Vec::new(),
        }
    }
}

/// Which `DD_PROXY_*` variable set each proxy field of [`ClientOptions`] (`None`: the file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyVars {
    /// `DD_PROXY_HTTP`, when it set `proxy_http`.
    pub http: Option<String>,
    /// `DD_PROXY_HTTPS`, when it set `proxy_https`.
    pub https: Option<String>,
    /// `DD_PROXY_NO_PROXY`, when it set `no_proxy`.
    pub no_proxy: Option<String>,
}

/// The proxies actually used, after merging [`ClientOptions`] with the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Proxy for `http://` destinations.
    pub http: Option<String>,
    /// Proxy for `https://` destinations.
    pub https: Option<String>,
    /// Destinations reached directly (always includes loopback).
    pub no_proxy: Vec<String>,
    /// The choice with its sources, as `check-config` and `status` show it.
    pub in_effect: crate::config::proxy::ProxyInEffect,
}

impl ProxySettings {
    /// Merges `opts` with the environment seen through `env` through the one resolver,
    /// [`crate::config::proxy::resolve`] (see the module doc), and adds the loopback
    /// destinations that are always reached directly. Empty values count as unset.
    pub fn resolve(opts: &ClientOptions, env: impl Fn(&str) -> Option<String>) -> Self {
        let file = crate::config::ProxyConfig {
            http: opts.proxy_http.clone(),
            https: opts.proxy_https.clone(),
            no_proxy: opts.no_proxy.clone(),
            http_var: opts.proxy_vars.http.clone(),
            https_var: opts.proxy_vars.https.clone(),
            no_proxy_var: opts.proxy_vars.no_proxy.clone(),
        };
        let in_effect = crate::config::proxy::resolve(&file, &env);
        let mut no_proxy = in_effect.no_proxy.clone();
        no_proxy.extend(ALWAYS_DIRECT.split(',').map(str::to_owned));
        ProxySettings {
            http: in_effect.http.as_ref().map(|c| c.url.clone()),
            https: in_effect.https.as_ref().map(|c| c.url.clone()),
            no_proxy,
            in_effect,
        }
    }
}

/// Why a URL may not receive credentials (a proof, API keys, a signed STS request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemeRefusal {
    /// Plain `http://` to a host that is not loopback.
    PlainHttp,
    /// Neither `https` nor `http`: the scheme.
    Other(String),
}

/// The rule for every URL credentials are sent to: `https://` anywhere, plain `http://` only to
/// loopback (tests and local emulators), nothing else.
///
/// # Errors
/// Which part of the rule the URL breaks; each caller words it for its own credential.
pub fn check_scheme(url: &Url) -> Result<(), SchemeRefusal> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(SchemeRefusal::PlainHttp),
        other => Err(SchemeRefusal::Other(other.to_owned())),
    }
}

/// 127.0.0.0/8, `::1` or `localhost`: the only hosts plain `http://` may be used with (tests
/// and local emulators). Shared by every client of the Datadog API and STS.
pub fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Why [`read_capped`] returned no body.
#[derive(Debug)]
pub enum CappedReadError {
    /// The answer is (or announces itself) larger than the cap.
    TooLarge,
    /// The connection broke while reading.
    Transport(reqwest::Error),
}

/// Reads an answer's body, refusing more than `cap` bytes (announced or received); the buffer
/// is zeroed on drop (it may hold a key or credentials).
///
/// # Errors
/// [`CappedReadError`]; each caller words it.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Zeroizing<Vec<u8>>, CappedReadError> {
    let announced = response.content_length().unwrap_or(0);
    if announced > cap as u64 {
        return Err(CappedReadError::TooLarge);
    }
    // Reserving the announced size avoids reallocations, which would leave unzeroed copies.
    let mut body = Zeroizing::new(Vec::with_capacity(announced as usize));
    while let Some(chunk) = response.chunk().await.map_err(CappedReadError::Transport)? {
        if body.len() + chunk.len() > cap {
            return Err(CappedReadError::TooLarge);
        }
        if body.capacity() < body.len() + chunk.len() {
            // Grow into a fresh buffer by hand so the old one is zeroed, not just freed.
            let mut bigger = Zeroizing::new(Vec::with_capacity(
                (body.len() + chunk.len()).max(body.capacity() * 2).min(cap),
            ));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_url_rule() {
        let rule = |u: &str| check_scheme(&Url::parse(u).unwrap());
        for ok in [
            "https://api.datadoghq.com/x",
            "http://127.1.2.3/x",
            "http://[::1]:9/x",
            "http://LOCALHOST:9/x",
        ] {
            assert_eq!(rule(ok), Ok(()), "{ok}");
        }
        for plain in [
            "http://10.0.0.1/x",
            "http://localhost.evil.example/x",
            "http://0.0.0.0/x",
        ] {
            assert_eq!(rule(plain), Err(SchemeRefusal::PlainHttp), "{plain}");
        }
        assert_eq!(rule("ftp://x/y"), Err(SchemeRefusal::Other("ftp".into())));
    }

    #[test]
    fn proxy_resolution() {
        let none = ClientOptions::default();
        // Nothing anywhere: direct, loopback always direct.
        let p = ProxySettings::resolve(&none, env_of(&[]));
        assert_eq!(p.http, None);
        assert_eq!(p.https, None);
        assert_eq!(p.no_proxy, vec!["localhost", "127.0.0.0/8", "::1"]);

        // Environment only, either case.
        let p = ProxySettings::resolve(
            &none,
            env_of(&[
                ("HTTPS_PROXY", "http://envproxy:3128"),
                ("http_proxy", "http://lower:3128"),
                ("NO_PROXY", "internal.example, .corp"),
            ]),
        );
        assert_eq!(p.https.as_deref(), Some("http://envproxy:3128"));
        assert_eq!(p.http.as_deref(), Some("http://lower:3128"));
        assert_eq!(&p.no_proxy[..2], ["internal.example", ".corp"]);

        // The standard variables beat the file (wire spec §10.4), field by field; a file value
        // stays where no variable is set.
        let configured = ClientOptions {
            proxy_https: Some("http://configured:8080".into()),
            no_proxy: vec!["only.this".into()],
            ..ClientOptions::default()
        };
        let p = ProxySettings::resolve(
            &configured,
            env_of(&[
                ("HTTPS_PROXY", "http://envproxy:3128"),
                ("HTTP_PROXY", "http://envhttp:3128"),
                ("NO_PROXY", "env.example"),
            ]),
        );
        assert_eq!(p.https.as_deref(), Some("http://envproxy:3128"));
        assert_eq!(p.http.as_deref(), Some("http://envhttp:3128"));
        assert_eq!(p.no_proxy[0], "env.example");
        assert!(!p.no_proxy.contains(&"only.this".to_owned()));
        let p = ProxySettings::resolve(&configured, env_of(&[]));
        assert_eq!(p.https.as_deref(), Some("http://configured:8080"));
        assert_eq!(p.no_proxy[0], "only.this");
        // DD_PROXY_HTTPS (it set the configured value) beats HTTPS_PROXY.
        let dd = ClientOptions {
            proxy_vars: ProxyVars {
                https: Some("DD_PROXY_HTTPS".into()),
                ..ProxyVars::default()
            },
            ..configured.clone()
        };
        let p = ProxySettings::resolve(&dd, env_of(&[("HTTPS_PROXY", "http://envproxy:3128")]));
        assert_eq!(p.https.as_deref(), Some("http://configured:8080"));
        assert_eq!(
            p.in_effect.https.as_ref().map(|c| c.source.as_str()),
            Some("DD_PROXY_HTTPS")
        );

        // Empty values are unset.
        let blank = ClientOptions {
            proxy_https: Some("  ".into()),
            ..ClientOptions::default()
        };
        let p = ProxySettings::resolve(&blank, env_of(&[("HTTPS_PROXY", "")]));
        assert_eq!(p.https, None);
    }
}

//! The exchange URL derived from an endpoint, exactly as the Agent's latest `getAPIDomain`
//! (wire spec §2.1; `comp/core/delegatedauth/api/delegated_auth.go@0e10f34`).

use std::sync::LazyLock;

/// The Agent's `domainURLRegexp`, verbatim. Captures: 1 regional prefix (`us3.` or empty),
/// 2 base name (`datadoghq`/`datad0g`), 3 TLD, 4 the gov domain, 5 a trailing dot.
/// regex-lite has RE2's leftmost-first semantics, so the lazy subdomain group captures the same
/// groups as Go's `regexp` (checked by the table test, quirks included).
const DOMAIN_PATTERN: &str = r"^(?:https?://)?(?:[^./]+\.)*?((?:[a-z]{2,}\d{1,2}\.)?)(?:(datadoghq|datad0g)\.(com|eu)|(ddog-gov\.com))(\.)?\/?$";

static DOMAIN_RE: LazyLock<regex_lite::Regex> =
    LazyLock::new(|| regex_lite::Regex::new(DOMAIN_PATTERN).expect("the Agent's regex compiles"));

/// Path of the exchange endpoint under the API base.
const INTAKE_KEY_PATH: &str = "/api/v2/intake-key";

/// The API base an endpoint maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiBase {
    /// `https://api.<site>` for a recognised Datadog domain, otherwise the input unchanged.
    pub url: String,
    /// Whether the input was a recognised Datadog domain. When it was not, the signed proof is
    /// about to be sent to an arbitrary host (a proxy `dd_url`, or a mistake): the Agent warns
    /// for an explicit target (a DELA directive's endpoint) and logs at debug for the primary
    /// site; callers should do the same.
    pub matched: bool,
}

/// The API base for `target` (a site, an intake host or a full URL, possibly with a port or a
/// path), by the Agent's latest rules: the host is extracted (scheme added when missing, port
/// and path dropped), lowercased, and matched against the Agent's regex. A match gives
/// `https://api.<regional prefix><name>.<tld>` (with the quirks of the original: a trailing dot
/// is kept, and gov sites lose their regional prefix, `us2.ddog-gov.com` →
/// `https://api.ddog-gov.com`); anything else is returned unchanged.
///
/// The empty target is returned unchanged: resolve it to `dd_url` or `https://app.<site>`
/// first, as the Agent's `resolveTokenURL` does.
pub fn api_base(target: &str) -> ApiBase {
    let host = host_only(target);
    let Some(caps) = DOMAIN_RE.captures(&host) else {
        return ApiBase {
            url: target.to_owned(),
            matched: false,
        };
    };
    let group = |i| caps.get(i).map_or("", |m| m.as_str());
    let mut domain = if group(4).is_empty() {
        format!("{}{}.{}", group(1), group(2), group(3))
    } else {
        group(4).to_owned()
    };
    if !group(5).is_empty() {
        domain.push('.');
    }
    ApiBase {
        url: format!("https://api.{domain}"),
        matched: true,
    }
}

/// The exchange URL for `target`: [`api_base`] + `/api/v2/intake-key` (appended to an unmatched
/// input as is, like the Agent, so `https://my-proxy.internal` gives
/// `https://my-proxy.internal/api/v2/intake-key`).
pub fn intake_key_url(target: &str) -> String {
    format!("{}{INTAKE_KEY_PATH}", api_base(target).url)
}

/// The Agent's `hostOnly`: the lowercased host of `endpoint` (a bare host or a URL), or
/// `endpoint` unchanged when Go's `url.Parse` would fail or find no host. This reproduces the
/// parts of `url.Parse` + `Hostname()` that decide the outcome: scheme syntax, fragment and
/// query cut, userinfo dropped, bracketed IPv6, a port that must be digits, and the characters
/// Go refuses in a host name.
fn host_only(endpoint: &str) -> String {
    let raw = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("https://{endpoint}")
    };
    match go_hostname(&raw) {
        Some(host) if !host.is_empty() => host.to_lowercase(),
        _ => endpoint.to_owned(),
    }
}

/// `url.Parse(raw).Hostname()`, or `None` when Go would return a parse error.
fn go_hostname(raw: &str) -> Option<String> {
    let raw = raw.split('#').next().unwrap_or_default();
    let (scheme, rest) = raw.split_once(':')?;
    let mut chars = scheme.chars();
    if !chars.next()?.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let rest = rest.split('?').next().unwrap_or_default();
    // Without "//" there is no authority (an opaque URL): no host.
    let after = rest.strip_prefix("//")?;
    let authority = after.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (inner, port) = bracketed.split_once(']')?;
        if !valid_optional_port(port) {
            return None;
        }
        inner
    } else {
        let host = match host_port.rfind(':') {
            Some(i) if !valid_optional_port(&host_port[i..]) => return None,
            Some(i) => &host_port[..i],
            None => host_port,
        };
        if !host.bytes().all(go_host_byte_ok) {
            return None;
        }
        host
    };
    Some(host.to_owned())
}

/// Go's `validOptionalPort`: empty, or `:` followed by digits only.
fn valid_optional_port(port: &str) -> bool {
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// Bytes Go's `unescape(…, encodeHost)` accepts unescaped in a host name (RFC 3986 reg-name and
/// sub-delims, plus the few extra Go tolerates, plus non-ASCII). `%` escapes are refused here:
/// they never occur in a Datadog host, and refusing them only means "unchanged".
fn go_host_byte_ok(b: u8) -> bool {
    b >= 0x80 || b.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:[]<>\"".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the Agent's `TestGetAPIDomain` (`delegated_auth_test.go@0e10f34`) plus the
    /// spec's extra rows and quirks.
    #[test]
    fn agent_table() {
        let rows: &[(&str, &str)] = &[
            // Production domains.
            ("https://agent.datadoghq.com", "https://api.datadoghq.com"),
            ("https://agent.datadoghq.com.", "https://api.datadoghq.com."),
            (
                "https://agent.datadoghq.com:443",
                "https://api.datadoghq.com",
            ),
            ("https://agent.DATADOGHQ.com", "https://api.datadoghq.com"),
            ("https://agent.datadoghq.eu", "https://api.datadoghq.eu"),
            (
                "https://agent.us1.datadoghq.com",
                "https://api.us1.datadoghq.com",
            ),
            (
                "https://metrics.eu1.datadoghq.com",
                "https://api.eu1.datadoghq.com",
            ),
            (
                "https://trace.agent.datadoghq.com",
                "https://api.datadoghq.com",
            ),
            (
                "https://agent-http-intake.logs.datadoghq.com",
                "https://api.datadoghq.com",
            ),
            (
                "https://agent-http-intake.logs.us3.datadoghq.com",
                "https://api.us3.datadoghq.com",
            ),
            // Bare regional sites keep their prefix.
            ("https://us5.datadoghq.com", "https://api.us5.datadoghq.com"),
            ("https://ap1.datadoghq.com", "https://api.ap1.datadoghq.com"),
            ("us5.datadoghq.com", "https://api.us5.datadoghq.com"),
            // Bare domains.
            ("https://datadoghq.com", "https://api.datadoghq.com"),
            ("datadoghq.com", "https://api.datadoghq.com"),
            ("ddog-gov.com", "https://api.ddog-gov.com"),
            ("datad0g.com", "https://api.datad0g.com"),
            // Staging.
            ("https://agent.datad0g.com", "https://api.datad0g.com"),
            ("https://agent.datad0g.com.", "https://api.datad0g.com."),
            ("https://agent.datad0g.eu", "https://api.datad0g.eu"),
            (
                "https://agent.us1.datad0g.com",
                "https://api.us1.datad0g.com",
            ),
            // Gov cloud.
            ("https://agent.ddog-gov.com", "https://api.ddog-gov.com"),
            ("https://agent.ddog-gov.com.", "https://api.ddog-gov.com."),
            // Unknown domains pass through unchanged.
            ("https://custom.example.com", "https://custom.example.com"),
            ("http://localhost:8080", "http://localhost:8080"),
            ("https://192.168.1.1", "https://192.168.1.1"),
            // Edge cases.
            ("https://api.datadoghq.com", "https://api.datadoghq.com"),
            ("https://agent.datadoghq.com/", "https://api.datadoghq.com"),
            (
                "https://intake.profile.datadoghq.eu/api/v2/profile",
                "https://api.datadoghq.eu",
            ),
            (
                "https://agent-http-intake.logs.us3.datadoghq.com/v1/input",
                "https://api.us3.datadoghq.com",
            ),
            (
                "https://custom.example.com/some/path",
                "https://custom.example.com/some/path",
            ),
        ];
        for (input, want) in rows {
            assert_eq!(api_base(input).url, *want, "api_base({input:?})");
        }
    }

    #[test]
    fn quirks_and_extra_rows() {
        let rows: &[(&str, &str, bool)] = &[
            // A regional gov site loses its prefix (wire spec §2.1, §9.5).
            ("us2.ddog-gov.com", "https://api.ddog-gov.com", true),
            (
                "https://agent.us2.ddog-gov.com",
                "https://api.ddog-gov.com",
                true,
            ),
            // The default primary-site endpoint `https://app.<site>`.
            (
                "https://app.datadoghq.com",
                "https://api.datadoghq.com",
                true,
            ),
            (
                "https://app.us3.datadoghq.com",
                "https://api.us3.datadoghq.com",
                true,
            ),
            ("https://app.datadoghq.eu", "https://api.datadoghq.eu", true),
            // Scheme-less with a port, query, fragment, userinfo.
            ("agent.datadoghq.com:443", "https://api.datadoghq.com", true),
            (
                "https://agent.datadoghq.com/x?y=1#z",
                "https://api.datadoghq.com",
                true,
            ),
            (
                "https://user:pw@agent.datadoghq.com",
                "https://api.datadoghq.com",
                true,
            ),
            (
                "HTTPS://AGENT.US5.DATADOGHQ.COM",
                "https://api.us5.datadoghq.com",
                true,
            ),
            // A non-numeric port makes Go's parse fail; the raw string does not match either.
            (
                "https://agent.datadoghq.com:abc",
                "https://agent.datadoghq.com:abc",
                false,
            ),
            // Lookalikes stay unchanged.
            (
                "https://datadoghq.com.evil.example",
                "https://datadoghq.com.evil.example",
                false,
            ),
            (
                "https://notdatadoghq.com",
                "https://notdatadoghq.com",
                false,
            ),
            ("https://datadoghq.org", "https://datadoghq.org", false),
            ("http://127.0.0.1:9999", "http://127.0.0.1:9999", false),
            ("https://[::1]:8443", "https://[::1]:8443", false),
            (
                "https://my-proxy.internal",
                "https://my-proxy.internal",
                false,
            ),
            // The empty target is the caller's to resolve.
            ("", "", false),
        ];
        for (input, want, matched) in rows {
            let got = api_base(input);
            assert_eq!(got.url, *want, "api_base({input:?})");
            assert_eq!(got.matched, *matched, "api_base({input:?}).matched");
        }
    }

    #[test]
    fn intake_key_urls() {
        // TestResolveTokenURL's rows.
        assert_eq!(
            intake_key_url("https://agent.datadoghq.com"),
            "https://api.datadoghq.com/api/v2/intake-key"
        );
        assert_eq!(
            intake_key_url("https://agent.datad0g.com"),
            "https://api.datad0g.com/api/v2/intake-key"
        );
        assert_eq!(
            intake_key_url("https://my-proxy.internal"),
            "https://my-proxy.internal/api/v2/intake-key"
        );
        // An unmatched input is used as is, trailing slash included (the Agent's Sprintf).
        assert_eq!(
            intake_key_url("https://my-proxy.internal/"),
            "https://my-proxy.internal//api/v2/intake-key"
        );
        assert_eq!(
            intake_key_url("http://127.0.0.1:4321"),
            "http://127.0.0.1:4321/api/v2/intake-key"
        );
    }

    #[test]
    fn go_hostname_extraction() {
        assert_eq!(go_hostname("https://a.b:1/x").as_deref(), Some("a.b"));
        assert_eq!(go_hostname("https://[::1]:1/x").as_deref(), Some("::1"));
        assert_eq!(go_hostname("https://[::1]x").as_deref(), None);
        assert_eq!(go_hostname("https://a b.c").as_deref(), None);
        assert_eq!(go_hostname("1https://a").as_deref(), None);
        assert_eq!(go_hostname("mailto:x@y").as_deref(), None);
        assert_eq!(go_hostname("https://").as_deref(), Some(""));
    }
}

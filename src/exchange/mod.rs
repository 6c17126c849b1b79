//! The exchange: a proof in, a managed API key out (product §5, wire spec §2), or a delegated
//! API token (product §13, wire spec §8.1).
//!
//! `POST <api base>/api/v2/intake-key` with `Authorization: Delegated <proof>`,
//! `Content-Type: application/json` and an empty body; only 200 is success and the key is
//! `data.attributes.api_key`. The token flow is the same request to
//! `<api base>/api/v2/delegated-token`; its answer is `data.attributes.access_token` and
//! `expires` (see [`parse_token_response`]). Both share everything below. Everything else is an [`ExchangeError`] classified for the
//! refresh loop: `unauthorized` (401/403, with the server's detail), `throttled` (429, with
//! `Retry-After`), `unavailable` (408, 5xx, connect failures, timeouts), `invalid_response`
//! (bad or oversized 200 bodies, unexpected statuses), `config` (a URL or client setting that
//! can never work).
//!
//! Choices beyond the Agent, and why:
//! - **Plain `http://` only to loopback** (127.0.0.0/8, `::1`, `localhost`): the proof is a
//!   bearer credential for the org for as long as its signature is fresh, so it never crosses a
//!   network unencrypted. Checked before anything is sent.
//! - **Redirects are followed only within the same origin** (scheme, host and port; at most
//!   10, Go's limit). Go and reqwest both drop `Authorization` on a cross-host redirect, so
//!   following one could only produce an unauthenticated request to a host nobody configured;
//!   instead the 3xx is reported as `invalid_response` naming where it pointed, so the operator
//!   can fix `dd_url`/`site`.
//! - **Proxies** are resolved by [`crate::config::proxy::resolve`] (the one resolver) rather
//!   than by reqwest's implicit environment lookup, so the rule is explicit and testable without
//!   mutating the process environment: for each of `http`, `https` and `no_proxy`, `DD_PROXY_*`
//!   wins, then `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` (upper case first), then `proxy.*` from
//!   `datadog.yaml` (the newest Agent's order, wire spec §10.4). Loopback destinations never go
//!   through a proxy (as in Go's `ProxyFromEnvironment`).
//! - **The response is streamed and capped at 1 MiB**; going over is `invalid_response` (the
//!   Agent truncates silently, which fails to parse anyway). The buffer is zeroed on drop.
//! - **Server error text** is only ever taken from JSON:API `errors[].detail|title` (never the
//!   raw body), sanitised, length-capped, and scrubbed of anything that looks like the proof.

mod api_base;
mod response;

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use zeroize::Zeroizing;

pub use api_base::{ApiBase, api_base, intake_key_url};
pub use response::{
    DEFAULT_TOKEN_LIFETIME, DelegatedToken, MAX_TOKEN_BYTES, MAX_TOKEN_LIFETIME, error_detail,
    parse_response, parse_retry_after, parse_token_response,
};

/// Path of the delegated-token endpoint under the API base (wire spec §8.1).
pub const DELEGATED_TOKEN_PATH: &str = "/api/v2/delegated-token";

use crate::lifecycle::FailureKind;
use crate::net::{self, CappedReadError, SchemeRefusal};
pub use crate::net::{
    ClientOptions, DEFAULT_TIMEOUT, ProxySettings, ProxyVars, USER_AGENT, is_loopback,
};
use crate::schedule::Cause;
use crate::secret::Secret;

/// Connecting (TCP + TLS) gets at most this much of the overall timeout, so an unroutable
/// endpoint is reported as a connect failure rather than a generic timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read: the Agent's `maxResponseBodySize` (a key answer is ~200 bytes).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Go's `http.Client` default redirect limit.
const MAX_REDIRECTS: usize = 10;

/// Performs exchanges. Holds one `reqwest::Client` (a connection pool); clones share it.
#[derive(Clone, Debug)]
pub struct ExchangeClient {
    http: reqwest::Client,
    proxies: ProxySettings,
}

/// Why an exchange failed. The Display text is one line an operator can act on; it may carry
/// the server's own error detail but never a raw body, a key or the proof.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// 401 or 403: Datadog refused the proof or found no intake mapping for the identity.
    #[error(
        "Datadog refused the identity proof (HTTP {status}){}. Check that an intake mapping \
         matches this workload's AWS identity (`datadog-delegated-auth doctor` prints the \
         pattern to create) and that org_uuid names the right org",
        fmt_detail(detail)
    )]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The server's JSON:API error detail, e.g. "Authenticated as arn:… but no identity
        /// mapping was found."
        detail: Option<String>,
    },
    /// 429: too many exchanges.
    #[error(
        "Datadog throttled the key exchange (HTTP 429){}; retrying {}",
        fmt_detail(detail),
        fmt_retry_after(retry_after)
    )]
    Throttled {
        /// The server's `Retry-After`, when it sent one that parses.
        retry_after: Option<Duration>,
        /// The server's JSON:API error detail.
        detail: Option<String>,
    },
    /// 408, 5xx, connection failures, timeouts: worth retrying as is.
    #[error("the Datadog API is unavailable: {reason}")]
    Unavailable {
        /// What happened, including the status and server detail when there was an answer.
        reason: String,
        /// The HTTP status, when the server answered (408 or 5xx); `None` when no answer came.
        status: Option<u16>,
    },
    /// 401 or 403 from the delegated-token endpoint: no persona mapping for the identity.
    #[error(
        "Datadog refused the identity proof for a delegated API token (HTTP {status}){}. Check \
         that a persona mapping matches this workload's AWS identity (`datadog-delegated-auth \
         doctor` names the mapping to create) and that the token's org_uuid names the right org",
        fmt_detail(detail)
    )]
    TokenRefused {
        /// 401 or 403.
        status: u16,
        /// The server's JSON:API error detail.
        detail: Option<String>,
    },
    /// An answer that cannot be used: a bad 200 body, an oversized body, an unexpected status.
    #[error("the Datadog API gave an unusable answer: {reason}")]
    InvalidResponse {
        /// What was wrong with it.
        reason: String,
    },
    /// The exchange URL is plain `http://` to a host that is not loopback.
    #[error(
        "refusing to send the identity proof to {url}: plain http:// is only allowed to \
         loopback hosts; use https:// (check dd_url, site and additional_endpoints)"
    )]
    InsecureUrl {
        /// The refused URL.
        url: String,
    },
    /// A URL or client setting that cannot work (unparsable URL, bad proxy URL, TLS setup).
    #[error("the exchange client is misconfigured: {reason}")]
    Client {
        /// What is wrong and where.
        reason: String,
    },
}

impl ExchangeError {
    /// The failure class, as status and metrics show it: `Unauthorized`, `Throttled`,
    /// `Unavailable`, `InvalidResponse` or `Config`.
    pub fn kind(&self) -> FailureKind {
        FailureKind::from(self)
    }

    /// Whether the Datadog API answered (an error status or an unusable body) or the request got
    /// no answer at all. The retry policy retries quickly only in the second case: an answer
    /// from the server is what every daemon of the fleet gets.
    pub fn cause(&self) -> Cause {
        match self {
            ExchangeError::Unauthorized { .. }
            | ExchangeError::TokenRefused { .. }
            | ExchangeError::Throttled { .. }
            | ExchangeError::InvalidResponse { .. }
            | ExchangeError::Unavailable {
                status: Some(_), ..
            } => Cause::Answered,
            ExchangeError::Unavailable { status: None, .. }
            | ExchangeError::InsecureUrl { .. }
            | ExchangeError::Client { .. } => Cause::Unanswered,
        }
    }

    /// The delay the server asked for (429 `Retry-After`), to be honoured by the retry policy.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExchangeError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The server's error detail, when it sent one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            ExchangeError::Unauthorized { detail, .. }
            | ExchangeError::TokenRefused { detail, .. }
            | ExchangeError::Throttled { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }
}

/// `": <detail>"` without its final period (the message goes on with a sentence of its own).
fn fmt_detail(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(": {}", d.trim_end_matches('.')))
        .unwrap_or_default()
}

fn fmt_retry_after(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(
            "after {} as the server asked (Retry-After)",
            humantime::format_duration(*d)
        ),
        None => "with backoff (no usable Retry-After)".to_owned(),
    }
}

impl ExchangeClient {
    /// Builds the client, taking proxy environment variables from the process environment.
    ///
    /// # Errors
    /// [`ExchangeError::Client`] for an unusable proxy URL or TLS setup.
    pub fn new(opts: &ClientOptions) -> Result<Self, ExchangeError> {
        Self::with_env(opts, |name| std::env::var(name).ok())
    }

    /// Builds the client, looking proxy environment variables up through `env` (the caller's
    /// injected environment; tests pass a map).
    ///
    /// # Errors
    /// [`ExchangeError::Client`] for an unusable proxy URL or TLS setup.
    pub fn with_env(
        opts: &ClientOptions,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ExchangeError> {
        let proxies = ProxySettings::resolve(opts, env);
        let mut builder = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(opts.timeout))
            .redirect(same_origin_redirects())
            .user_agent(net::USER_AGENT)
            .tls_danger_accept_invalid_certs(opts.skip_ssl_validation)
            // Every proxy decision is made here (see the module doc), not by reqwest's
            // implicit environment lookup; proxies added below re-enable proxying.
            .no_proxy();
        for pem in &opts.extra_root_certs_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| ExchangeError::Client {
                reason: format!("an extra root certificate is unusable: {}", error_chain(&e)),
            })?;
            builder = builder.tls_certs_merge([cert]);
        }
        for (host, addr) in &opts.resolve_overrides {
            builder = builder.resolve(host, *addr);
        }
        let no_proxy = reqwest::NoProxy::from_string(&proxies.no_proxy.join(","));
        for (which, url) in [
            ("proxy.http", &proxies.http),
            ("proxy.https", &proxies.https),
        ] {
            let Some(url) = url else { continue };
            let proxy = if which == "proxy.http" {
                reqwest::Proxy::http(url)
            } else {
                reqwest::Proxy::https(url)
            }
            .map_err(|e| ExchangeError::Client {
                reason: format!(
                    "{which} (or its environment variable) is not a usable proxy URL ({}): {}; \
                     use http://host:port",
                    redact_userinfo(url),
                    error_chain(&e.without_url())
                ),
            })?;
            builder = builder.proxy(proxy.no_proxy(no_proxy.clone()));
        }
        let http = builder.build().map_err(|e| ExchangeError::Client {
            reason: format!("cannot build the HTTP client: {}", error_chain(&e)),
        })?;
        Ok(ExchangeClient { http, proxies })
    }

    /// The underlying HTTP client (same proxies, TLS and timeouts), for the mapping CLI and
    /// `doctor`.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The proxies in effect, for status and `doctor`.
    pub fn proxies(&self) -> &ProxySettings {
        &self.proxies
    }

    /// Exchanges `proof` for a managed API key at `url` (from [`intake_key_url`]).
    ///
    /// # Errors
    /// An [`ExchangeError`] classified as described in the module doc.
    pub async fn exchange(&self, url: &str, proof: &Secret) -> Result<Secret, ExchangeError> {
        let body = self.post_proof(url, proof).await?;
        let key = parse_response(&body)?;
        tracing::debug!(url = %redact_userinfo(url), key = %key, "Received a managed API key.");
        Ok(key)
    }

    /// Exchanges `proof` for a delegated API token at `url` (`<api base>` +
    /// [`DELEGATED_TOKEN_PATH`]). The same request, rules and caps as [`Self::exchange`]; a
    /// 401/403 is [`ExchangeError::TokenRefused`] (a persona mapping is missing, not an intake
    /// mapping).
    ///
    /// # Errors
    /// An [`ExchangeError`] classified as described in the module doc.
    pub async fn delegated_token(
        &self,
        url: &str,
        proof: &Secret,
    ) -> Result<DelegatedToken, ExchangeError> {
        let body = self.post_proof(url, proof).await.map_err(|e| match e {
            ExchangeError::Unauthorized { status, detail } => {
                ExchangeError::TokenRefused { status, detail }
            }
            other => other,
        })?;
        let token = parse_token_response(&body, SystemTime::now())?;
        tracing::debug!(url = %redact_userinfo(url), access_token = %token.token, expires_at = %humantime::format_rfc3339_seconds(token.expires_at), "Received a delegated API token.");
        Ok(token)
    }

    /// Sends the proof to `url`; the body of a 200 answer, or the classified error.
    async fn post_proof(
        &self,
        url: &str,
        proof: &Secret,
    ) -> Result<Zeroizing<Vec<u8>>, ExchangeError> {
        let url = check_url(url)?;
        let mut authorization = {
            let value = Zeroizing::new(format!("Delegated {}", proof.expose()));
            HeaderValue::from_str(&value).map_err(|_| ExchangeError::Client {
                reason: "the proof contains characters that cannot be sent in an HTTP header"
                    .to_owned(),
            })?
        };
        authorization.set_sensitive(true);
        tracing::debug!(url = %redact_userinfo(url.as_str()), "Sending the cloud auth proof.");
        let response = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, authorization)
            .header(CONTENT_LENGTH, 0)
            .body(Vec::new())
            .send()
            .await
            .map_err(|e| transport_error(&e, &url))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| redact_userinfo(l).chars().take(200).collect::<String>());
        let body = read_capped(response, MAX_RESPONSE_BYTES, &url).await;
        if status == StatusCode::OK {
            return body;
        }
        // Error answers: an oversized or broken body only loses the detail.
        let detail = body
            .ok()
            .and_then(|b| error_detail(&b))
            .map(|d| scrub_proof(d, proof));
        Err(classify(
            status,
            detail,
            retry_after,
            location.as_deref(),
            &url,
        ))
    }
}

/// Maps a non-200 answer to its error class.
fn classify(
    status: StatusCode,
    detail: Option<String>,
    retry_after: Option<Duration>,
    location: Option<&str>,
    url: &Url,
) -> ExchangeError {
    let code = status.as_u16();
    let status_line = format!(
        "HTTP {code}{}",
        status
            .canonical_reason()
            .map(|r| format!(" {r}"))
            .unwrap_or_default()
    );
    let with_detail = |s: String| match &detail {
        Some(d) => format!("{s}: {d}"),
        None => s,
    };
    match code {
        401 | 403 => ExchangeError::Unauthorized {
            status: code,
            detail,
        },
        429 => ExchangeError::Throttled {
            retry_after,
            detail,
        },
        408 | 500..=599 => ExchangeError::Unavailable {
            reason: with_detail(format!("{status_line} from {}", origin(url))),
            status: Some(code),
        },
        300..=399 => ExchangeError::InvalidResponse {
            reason: format!(
                "{status_line} redirect from {} to {}; the proof is only sent to the configured \
                 host, so point dd_url/site (or the additional endpoint) at the final API host",
                origin(url),
                location.unwrap_or("an unspecified location")
            ),
        },
        _ => ExchangeError::InvalidResponse {
            reason: with_detail(format!(
                "unexpected {status_line} from {url}; check that dd_url/site (or the \
                 additional endpoint) reaches the Datadog API"
            )),
        },
    }
}

/// Refuses URLs the proof must not be sent to.
fn check_url(raw: &str) -> Result<Url, ExchangeError> {
    let url = Url::parse(raw).map_err(|e| ExchangeError::Client {
        reason: format!(
            "the exchange URL {:?} does not parse ({e}); check dd_url, site and \
             additional_endpoints",
            redact_userinfo(raw)
        ),
    })?;
    match net::check_scheme(&url) {
        Ok(()) => Ok(url),
        Err(SchemeRefusal::PlainHttp) => Err(ExchangeError::InsecureUrl {
            url: redact_userinfo(raw),
        }),
        Err(SchemeRefusal::Other(other)) => Err(ExchangeError::Client {
            reason: format!(
                "the exchange URL {} has scheme {other:?}; only https:// is supported",
                redact_userinfo(raw)
            ),
        }),
    }
}

/// Follow redirects only within the origin of the first request (see the module doc).
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        let same_origin = first.scheme() == attempt.url().scheme()
            && first.host_str() == attempt.url().host_str()
            && first.port_or_known_default() == attempt.url().port_or_known_default();
        if !same_origin {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("stopped after 10 redirects")
        } else {
            attempt.follow()
        }
    })
}

/// Reads the body through [`net::read_capped`], as an [`ExchangeError`].
async fn read_capped(
    response: reqwest::Response,
    cap: usize,
    url: &Url,
) -> Result<Zeroizing<Vec<u8>>, ExchangeError> {
    net::read_capped(response, cap).await.map_err(|e| match e {
        CappedReadError::TooLarge => ExchangeError::InvalidResponse {
            reason: format!(
                "the answer from {} is larger than {} KiB, far more than a key answer; is \
                     the exchange URL right?",
                origin(url),
                cap / 1024
            ),
        },
        CappedReadError::Transport(e) => transport_error(&e, url),
    })
}

/// Maps a reqwest failure (no usable answer) to `unavailable` or `config`.
fn transport_error(e: &reqwest::Error, url: &Url) -> ExchangeError {
    let target = origin(url);
    // reqwest's own text repeats the URL; its sources say what actually failed.
    let chain = |e: &reqwest::Error| match std::error::Error::source(e) {
        Some(source) => error_chain(source),
        None => e.to_string(),
    };
    if e.is_builder() {
        return ExchangeError::Client {
            reason: format!("cannot build the request to {target}: {}", chain(e)),
        };
    }
    let what = if e.is_timeout() {
        "no complete answer within the timeout".to_owned()
    } else if e.is_connect() {
        format!("cannot connect ({})", chain(e))
    } else if e.is_redirect() {
        format!("redirect loop ({})", chain(e))
    } else if e.is_body() || e.is_decode() {
        format!(
            "the connection broke while reading the answer ({})",
            chain(e)
        )
    } else {
        format!("request failed ({})", chain(e))
    };
    ExchangeError::Unavailable {
        reason: format!("{target}: {what}; check network access (and proxy settings) to it"),
        status: None,
    }
}

/// `scheme://host[:port]` of a URL: enough to say where, without the path.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// What a reqwest failure was, without the URL (reqwest's Display repeats it, query included),
/// for clients that report transport failures as text (doctor, mapping).
pub fn transport_reason(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", timeout.as_secs());
    }
    let chain = match std::error::Error::source(e) {
        Some(source) => error_chain(source),
        None => e.to_string(),
    };
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    format!("{what} ({chain})")
}

/// The source chain of an error, without URLs (reqwest puts the URL in its own Display).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

use crate::secret::redact_userinfo;

/// Defence in depth: a server that echoes parts of the proof in its error detail must not get
/// them into our logs.
fn scrub_proof(detail: String, proof: &Secret) -> String {
    let mut detail = detail;
    for part in proof.expose().split('|').filter(|p| p.len() >= 16) {
        if detail.contains(part) {
            detail = detail.replace(part, "[redacted]");
        }
    }
    detail
}

impl fmt::Display for ApiBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_http_only() {
        for ok in [
            "https://api.datadoghq.com/api/v2/intake-key",
            "http://127.0.0.1:8080/api/v2/intake-key",
            "http://127.1.2.3/x",
            "http://[::1]:9/x",
            "http://localhost:9/x",
            "http://LOCALHOST:9/x",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for insecure in [
            "http://api.datadoghq.com/api/v2/intake-key",
            "http://10.0.0.1/x",
            "http://localhost.evil.example/x",
            "http://[::2]/x",
            "http://0.0.0.0/x",
        ] {
            let err = check_url(insecure).unwrap_err();
            assert_eq!(err.kind(), "config", "{insecure}");
            assert!(
                matches!(err, ExchangeError::InsecureUrl { .. }),
                "{insecure}"
            );
            assert!(err.to_string().contains("https://"), "{err}");
        }
        for broken in [
            "ftp://api.datadoghq.com/x",
            "not a url",
            "/api/v2/intake-key",
        ] {
            let err = check_url(broken).unwrap_err();
            assert!(
                matches!(err, ExchangeError::Client { .. }),
                "{broken}: {err:?}"
            );
        }
    }

    #[test]
    fn classification_by_status() {
        let url = Url::parse("https://api.datadoghq.com/api/v2/intake-key").unwrap();
        let kind = |code: u16| {
            classify(StatusCode::from_u16(code).unwrap(), None, None, None, &url).kind()
        };
        assert_eq!(kind(401), "unauthorized");
        assert_eq!(kind(403), "unauthorized");
        assert_eq!(kind(429), "throttled");
        for code in [408, 500, 502, 503, 504, 599] {
            assert_eq!(kind(code), "unavailable", "{code}");
        }
        for code in [201, 204, 301, 302, 307, 400, 404, 405, 409] {
            assert_eq!(kind(code), "invalid_response", "{code}");
        }
    }

    #[test]
    fn error_text_is_operator_useful() {
        let url = Url::parse("https://api.datadoghq.com/api/v2/intake-key").unwrap();
        let detail = "Authenticated as arn:aws:sts::123456789012:assumed-role/R/i-1 but no identity mapping was found.";
        let err = classify(
            StatusCode::UNAUTHORIZED,
            Some(detail.into()),
            None,
            None,
            &url,
        );
        let text = err.to_string();
        assert!(
            text.starts_with(
                "Datadog refused the identity proof (HTTP 401): Authenticated as \
                 arn:aws:sts::123456789012:assumed-role/R/i-1 but no identity mapping was found. \
                 Check that"
            ),
            "{text}"
        );
        assert!(text.contains(detail), "{text}");
        assert!(text.contains("intake mapping"), "{text}");
        assert_eq!(err.detail(), Some(detail));

        let err = classify(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Some(Duration::from_secs(7)),
            None,
            &url,
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.to_string().contains("after 7s"), "{err}");

        let err = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("maintenance".into()),
            None,
            None,
            &url,
        );
        assert_eq!(
            err.to_string(),
            "the Datadog API is unavailable: HTTP 503 Service Unavailable from \
             https://api.datadoghq.com: maintenance"
        );
        assert_eq!(err.retry_after(), None);

        let err = classify(
            StatusCode::FOUND,
            None,
            None,
            Some("https://elsewhere.example/x"),
            &url,
        );
        assert!(err.to_string().contains("elsewhere.example"), "{err}");
    }

    #[test]
    fn bad_proxy_url_is_a_config_error_without_credentials() {
        let opts = ClientOptions {
            proxy_https: Some("http://user:hunter2@exa mple:99999".into()),
            ..ClientOptions::default()
        };
        let err = ExchangeClient::with_env(&opts, |_| None).unwrap_err();
        assert_eq!(err.kind(), "config");
        let text = err.to_string();
        assert!(text.contains("proxy.https"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn userinfo_redaction() {
        assert_eq!(redact_userinfo("h:1"), "h:1");
    }

    #[test]
    fn proof_echoes_are_scrubbed() {
        let proof = Secret::from(
            "QWN0aW9uPUdldENhbGxlcklkZW50aXR5|eyJBdXRob3JpemF0aW9uIjpb|POST|aHR0cHM6Ly9zdHMuYW1hem9u",
        );
        let detail = "bad proof eyJBdXRob3JpemF0aW9uIjpb here".to_owned();
        assert_eq!(scrub_proof(detail, &proof), "bad proof [redacted] here");
        assert_eq!(scrub_proof("POST is fine".into(), &proof), "POST is fine");
    }

    #[test]
    fn kinds_and_causes() {
        use Cause::{Answered, Unanswered};
        let cases = [
            (
                ExchangeError::Unauthorized {
                    status: 401,
                    detail: None,
                },
                "unauthorized",
                Answered,
            ),
            (
                ExchangeError::Throttled {
                    retry_after: None,
                    detail: None,
                },
                "throttled",
                Answered,
            ),
            (
                ExchangeError::Unavailable {
                    reason: "x".into(),
                    status: Some(503),
                },
                "unavailable",
                Answered,
            ),
            (
                ExchangeError::Unavailable {
                    reason: "x".into(),
                    status: None,
                },
                "unavailable",
                Unanswered,
            ),
            (
                ExchangeError::InvalidResponse { reason: "x".into() },
                "invalid_response",
                Answered,
            ),
            (
                ExchangeError::InsecureUrl { url: "x".into() },
                "config",
                Unanswered,
            ),
            (
                ExchangeError::Client { reason: "x".into() },
                "config",
                Unanswered,
            ),
        ];
        for (err, kind, cause) in cases {
            assert_eq!(err.kind(), kind);
            assert_eq!(err.cause(), cause, "{err}");
        }
    }
}

//! The `tokens` section: delegated API tokens served to on-host automation (product §13).
//!
//! Every entry is checked on its own and every problem is reported at once, with its line:
//! `name` and `org_uuid` are required (read as optional so that a missing one is a problem of
//! its own, not a serde error that hides the rest), `site` and `api_url` exclude each other,
//! `api_url` follows the rule of every URL a proof goes to (https, or plain http to loopback),
//! and names are unique.

use std::time::Duration;

use reqwest::Url;
use serde_saphyr::Spanned;

use super::{Check, RawToken, SettingsRead, TokenApi, TokenSettings, line};
use crate::config::agent::is_uuid;
use crate::net::{SchemeRefusal, check_scheme};

/// Longest token name: it is a path segment of the API and a label of the metrics.
pub const MAX_TOKEN_NAME: usize = 64;
/// Shortest `refresh_before`.
pub const MIN_REFRESH_BEFORE: Duration = Duration::from_secs(1);
/// Longest `refresh_before`: a day (Datadog's tokens live minutes to hours).
pub const MAX_REFRESH_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// Letters, digits, `_`, `.` and `-`, at most [`MAX_TOKEN_NAME`]: safe in a URL path, a metric
/// label, an environment and a log line without quoting.
pub fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Validates `tokens`.
pub(super) fn validate(c: &mut Check<'_>, raw: &[Spanned<RawToken>], out: &mut SettingsRead) {
    let mut names: Vec<String> = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let key = format!("tokens[{i}]");
        let t = &entry.value;
        let name = match &t.name {
            None => {
                c.error(
                    &format!("{key}.name"),
                    line(entry),
                    "",
                    "is missing".to_owned(),
                    "give the token a name, e.g. `name: automation`; consumers ask for it by name",
                );
                None
            }
            Some(raw_name) => {
                let n = raw_name.value.trim();
                if !is_token_name(n) {
                    c.error(
                        &format!("{key}.name"),
                        line(raw_name),
                        n,
                        format!(
                            "is not a token name (1 to {MAX_TOKEN_NAME} letters, digits, `_`, `.` or `-`)"
                        ),
                        "use a short name such as automation or ci-deploy",
                    );
                    None
                } else if names.iter().any(|other| other == n) {
                    c.error(
                        &format!("{key}.name"),
                        line(raw_name),
                        n,
                        "is the name of an earlier token".to_owned(),
                        "give every token its own name",
                    );
                    None
                } else {
                    names.push(n.to_owned());
                    Some(n.to_owned())
                }
            }
        };
        let org_uuid = match &t.org_uuid {
            None => {
                c.error(
                    &format!("{key}.org_uuid"),
                    line(entry),
                    "",
                    "is missing".to_owned(),
                    "set the UUID of the org whose persona mapping the token is for",
                );
                None
            }
            Some(raw_org) => {
                let o = raw_org.value.trim();
                if is_uuid(o) {
                    Some(o.to_owned())
                } else {
                    c.error(
                        &format!("{key}.org_uuid"),
                        line(raw_org),
                        o,
                        "is not a UUID".to_owned(),
                        "set it to your org's UUID (8-4-4-4-12 hex digits), as shown by \
                         /api/v2/current_user",
                    );
                    None
                }
            }
        };
        let api = api(c, &key, t);
        let refresh_before = match c.duration(&t.refresh_before, &format!("{key}.refresh_before")) {
            Some((d, at)) if !(MIN_REFRESH_BEFORE..=MAX_REFRESH_BEFORE).contains(&d) => {
                c.error(
                    &format!("{key}.refresh_before"),
                    at,
                    &humantime::format_duration(d).to_string(),
                    "must be between 1s and 24h".to_owned(),
                    "set a value such as 5m, or remove it for a quarter of the token's lifetime \
                     (at least 60s)",
                );
                None
            }
            Some((d, _)) => Some(Some(d)),
            // Absent: the default. Not a duration: reported already.
            None if t.refresh_before.is_none() => Some(None),
            None => None,
        };
        if let (Some(name), Some(org_uuid), Some(api), Some(refresh_before)) =
            (name, org_uuid, api, refresh_before)
        {
            out.settings.tokens.push(TokenSettings {
                name,
                org_uuid,
                api,
                refresh_before,
            });
            out.token_lines.push(line(entry));
        }
    }
}

/// Where the token's API is: `site`, `api_url`, or (neither) `datadog.yaml`'s site.
fn api(c: &mut Check<'_>, key: &str, t: &RawToken) -> Option<TokenApi> {
    match (&t.site, &t.api_url) {
        (Some(_), Some(url)) => {
            c.error(
                &format!("{key}.api_url"),
                line(url),
                url.value.trim(),
                "is set together with site".to_owned(),
                "set either site (a Datadog site such as datadoghq.eu) or api_url (a full API \
                 URL), not both",
            );
            None
        }
        (Some(site), None) => {
            let s = site.value.trim();
            if s.is_empty()
                || s.contains("://")
                || s.contains('/')
                || s.contains(char::is_whitespace)
            {
                c.error(
                    &format!("{key}.site"),
                    line(site),
                    s,
                    "is not a site".to_owned(),
                    "set the domain only, such as datadoghq.eu; for a URL, set api_url instead",
                );
                return None;
            }
            Some(TokenApi::Site(s.to_owned()))
        }
        (None, Some(url)) => {
            let text = url.value.trim();
            let problem = match Url::parse(text) {
                Err(e) => Some(format!("is not a URL ({e})")),
                Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                    Some("carries a user name or password".to_owned())
                }
                Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                    Some("has a query or a fragment".to_owned())
                }
                Ok(u) => match check_scheme(&u) {
                    Ok(()) => None,
                    Err(SchemeRefusal::PlainHttp) => Some(
                        "is plain http:// to a host that is not loopback; the identity proof is \
                         only sent over https"
                            .to_owned(),
                    ),
                    Err(SchemeRefusal::Other(scheme)) => {
                        Some(format!("has scheme {scheme:?}; only https:// is supported"))
                    }
                },
            };
            if let Some(message) = problem {
                c.error(
                    &format!("{key}.api_url"),
                    line(url),
                    &crate::secret::redact_userinfo(text),
                    message,
                    "write the API base URL, such as https://api.datadoghq.eu",
                );
                return None;
            }
            Some(TokenApi::Url(text.trim_end_matches('/').to_owned()))
        }
        (None, None) => Some(TokenApi::AgentSite),
    }
}

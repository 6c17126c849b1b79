//! Request routing: one `match` on (method, path), one place that turns errors into statuses.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tracing::debug;

use super::{Peer, ServerState};
use crate::keystore::{KeyState, Rendered, Snapshot};
use crate::lifecycle::RejectOutcome;
use crate::metrics::Route;
use crate::status;

type Resp = Response<Full<Bytes>>;

/// Errors a request can end in. Every variant maps to exactly one status and stable code.
#[derive(Debug)]
enum ApiError {
    NotFound,
    UnknownInstance(String),
    UnknownToken(String),
    MethodNotAllowed(&'static str),
    Forbidden(String),
    BadRequest(String),
    PayloadTooLarge(usize),
    /// The body did not arrive within the idle timeout (seconds).
    BodyTimeout(u64),
    Unavailable {
        reason: String,
        retry_after: u64,
    },
    NotReady,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see docs/local-api.md".into(),
            ),
            ApiError::UnknownInstance(name) => (
                StatusCode::NOT_FOUND,
                "unknown_instance",
                format!("no instance named {name:?}; GET /v1/keys lists them"),
            ),
            ApiError::UnknownToken(name) => (
                StatusCode::NOT_FOUND,
                "unknown_token",
                format!("no token named {name:?}; GET /v1/tokens lists them"),
            ),
            ApiError::MethodNotAllowed(allowed) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this route accepts {allowed}"),
            ),
            ApiError::Forbidden(name) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this process's uid/gid is not allowed to read {name:?}; add it to an access rule in the settings file"
                ),
            ),
            ApiError::BadRequest(msg) => (StatusCode::BAD_REQUEST, "bad_request", msg.clone()),
            ApiError::PayloadTooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body over {max} bytes"),
            ),
            ApiError::BodyTimeout(secs) => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {secs}s; send it with the request"),
            ),
            ApiError::Unavailable { reason, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                reason.clone(),
            ),
            ApiError::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "not every instance can serve a key yet; see GET /v1/status".into(),
            ),
        }
    }

    fn into_response(self) -> Resp {
        let (status, code, message) = self.parts();
        let mut resp = json_response(
            status,
            &json!({"error": {"code": code, "message": message}}),
        );
        match self {
            ApiError::MethodNotAllowed(allowed) => {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            ApiError::Unavailable { retry_after, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            // The rest of the body may still come; the connection cannot carry another request.
            // A refused peer gets its answer and no connection to hold on to: idle, it would
            // only occupy a slot of its uid's share.
            ApiError::BodyTimeout(_) | ApiError::Forbidden(_) => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The service function of every connection.
pub(super) async fn handle(
    state: Arc<ServerState>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    // A `Uri` clone shares the request's bytes: no allocation for the path on the hot path.
    let uri = req.uri().clone();
    let (route, result) = route(&state, peer, req, uri.path()).await;
    let resp = result.unwrap_or_else(ApiError::into_response);
    state.metrics.request(route, resp.status().as_u16());
    Ok(resp)
}

async fn route(
    state: &Arc<ServerState>,
    peer: Peer,
    req: Request<Incoming>,
    path: &str,
) -> (Route, Result<Resp, ApiError>) {
    let method = req.method().clone();
    let get_only = |route: Route, f: &dyn Fn() -> Resp| -> (Route, Result<Resp, ApiError>) {
        if method == Method::GET || method == Method::HEAD {
            (route, Ok(f()))
        } else {
            (route, Err(ApiError::MethodNotAllowed("GET")))
        }
    };
    match path {
        "/v1/keys" => get_only(Route::Keys, &|| {
            json_response(StatusCode::OK, &status::instances(&state.store))
        }),
        "/v1/status" => get_only(Route::Status, &|| {
            json_response(
                StatusCode::OK,
                &status::build(&state.info.load(), &state.store, &state.sinks),
            )
        }),
        "/v1/health/live" => get_only(Route::Live, &|| {
            json_response(StatusCode::OK, &json!({"status": "live"}))
        }),
        "/v1/health/ready" => {
            if method != Method::GET && method != Method::HEAD {
                return (Route::Ready, Err(ApiError::MethodNotAllowed("GET")));
            }
            if state.store.is_ready() {
                (
                    Route::Ready,
                    Ok(json_response(StatusCode::OK, &json!({"status": "ready"}))),
                )
            } else {
                (Route::Ready, Err(ApiError::NotReady))
            }
        }
        "/v1/tokens" => get_only(Route::Tokens, &|| {
            json_response(StatusCode::OK, &status::tokens(&state.store))
        }),
        "/metrics" => get_only(Route::Metrics, &|| {
            let mut resp =
                Response::new(Full::new(Bytes::from(state.metrics.render(&state.store))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }),
        _ => {
            if let Some(rest) = path.strip_prefix("/v1/tokens/") {
                let (encoded, reject) = match rest.strip_suffix("/rejected") {
                    Some(encoded) => (encoded, true),
                    None => (rest, false),
                };
                // Only a token's own name: `/v1/tokens/token:x` or a key's name is unknown.
                let slot = crate::keystore::token_slot(&decode(encoded));
                return if reject {
                    if method != Method::POST {
                        return (
                            Route::TokenRejected,
                            Err(ApiError::MethodNotAllowed("POST")),
                        );
                    }
                    let result = rejected(state, peer, Served::Token(&slot), req).await;
                    (Route::TokenRejected, result)
                } else {
                    if method != Method::GET && method != Method::HEAD {
                        return (Route::Token, Err(ApiError::MethodNotAllowed("GET")));
                    }
                    (
                        Route::Token,
                        get_served(state, peer, Served::Token(&slot), &req).await,
                    )
                };
            }
            let Some(rest) = path.strip_prefix("/v1/keys/") else {
                return (Route::Other, Err(ApiError::NotFound));
            };
            if let Some(encoded) = rest.strip_suffix("/rejected") {
                if method != Method::POST {
                    return (Route::Rejected, Err(ApiError::MethodNotAllowed("POST")));
                }
                // An old instance name (an alias) is resolved once, here.
                let decoded = decode(encoded);
                let instance = state.store.canonical(&decoded);
                (
                    Route::Rejected,
                    rejected(state, peer, Served::Key(&instance), req).await,
                )
            } else {
                if method != Method::GET && method != Method::HEAD {
                    return (Route::Key, Err(ApiError::MethodNotAllowed("GET")));
                }
                let decoded = decode(rest);
                let instance = state.store.canonical(&decoded);
                (
                    Route::Key,
                    get_served(state, peer, Served::Key(&instance), &req).await,
                )
            }
        }
    }
}

/// What a route serves: a key instance by name, or a token by its slot name (`token:<name>`).
/// Keys and tokens share the store but never a route: `/v1/keys/token:x` is an unknown
/// instance, and `/v1/tokens/{name}` only ever reaches `token:{name}`.
#[derive(Clone, Copy, Debug)]
enum Served<'a> {
    Key(&'a str),
    Token(&'a str),
}

impl Served<'_> {
    /// The slot name, which access rules also use.
    fn slot(&self) -> &str {
        match self {
            Served::Key(name) | Served::Token(name) => name,
        }
    }

    fn unknown(&self) -> ApiError {
        match self {
            Served::Key(name) => ApiError::UnknownInstance((*name).to_owned()),
            Served::Token(slot) => {
                ApiError::UnknownToken(crate::keystore::token_name(slot).unwrap_or(slot).to_owned())
            }
        }
    }

    /// The slot, when it exists and is of this kind.
    fn find(&self, state: &ServerState) -> Result<Arc<crate::keystore::Slot>, ApiError> {
        let is_token = crate::keystore::token_name(self.slot()).is_some();
        match self {
            Served::Key(_) if is_token => Err(self.unknown()),
            _ => state.store.get(self.slot()).ok_or_else(|| self.unknown()),
        }
    }
}

/// Percent-decodes a path segment; borrows (no allocation) when nothing is encoded, which is the
/// key-read hot path for plain instance names.
fn decode(segment: &str) -> std::borrow::Cow<'_, str> {
    percent_decode_str(segment).decode_utf8_lossy()
}

/// `?wait=30s` (humantime) or `?wait=30` (seconds).
fn parse_wait(query: Option<&str>, max: Duration) -> Result<Option<Duration>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "wait" {
            continue;
        }
        let v = decode(v);
        let d = match v.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => humantime::parse_duration(&v).map_err(|_| {
                ApiError::BadRequest(format!(
                    "wait={v:?} is not a duration; use e.g. wait=30s (at most {}s)",
                    max.as_secs()
                ))
            })?,
        };
        if d > max {
            return Err(ApiError::BadRequest(format!(
                "wait={v} is longer than the maximum of {}s",
                max.as_secs()
            )));
        }
        return Ok(Some(d));
    }
    Ok(None)
}

/// What `If-None-Match` asks about: a list of entity tags, weak or strong, quotes optional
/// (RFC 9110 §13.1.2), or `*` (any current representation).
#[derive(Debug, PartialEq, Eq)]
enum Known {
    Any,
    Tags(Vec<u64>),
}

impl Known {
    fn parse(req: &Request<Incoming>) -> Option<Known> {
        Self::parse_value(req.headers().get(header::IF_NONE_MATCH)?.to_str().ok()?)
    }

    fn parse_value(value: &str) -> Option<Known> {
        if value.trim() == "*" {
            return Some(Known::Any);
        }
        let tags: Vec<u64> = value
            .split(',')
            // A header is at most max_header_bytes: the list is bounded by it.
            .filter_map(|t| {
                t.trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .parse()
                    .ok()
            })
            .collect();
        (!tags.is_empty()).then_some(Known::Tags(tags))
    }

    /// The generation the client already has, if it is `current`.
    fn matching(&self, current: u64) -> Option<u64> {
        match self {
            Known::Any => Some(current),
            Known::Tags(tags) => tags.contains(&current).then_some(current),
        }
    }
}

async fn get_served(
    state: &Arc<ServerState>,
    peer: Peer,
    what: Served<'_>,
    req: &Request<Incoming>,
) -> Result<Resp, ApiError> {
    let slot = what.find(state)?;
    let instance = what.slot();
    if !state.access.load().allows(&peer, instance) {
        debug!(pid = ?peer.pid, uid = peer.uid, gid = peer.gid, instance, "Key read refused by the access rules.");
        return Err(ApiError::Forbidden(instance.to_owned()));
    }
    let wait = parse_wait(req.uri().query(), state.limits.max_wait)?;
    let known = Known::parse(req);

    let mut snap = slot.current();
    if snap.is_pending() {
        let deadline = Instant::now() + state.limits.pending_wait;
        snap = tokio::select! {
            s = slot.wait_while_pending(deadline) => s,
            _ = state.shutdown.cancelled() => slot.current(),
        };
    }
    if let Some(known) = known
        .and_then(|k| k.matching(snap.generation))
        .filter(|_| !snap.removed)
    {
        let Some(wait) = wait else {
            return Ok(not_modified(known));
        };
        let deadline = Instant::now() + wait;
        let changed = tokio::select! {
            s = slot.wait_for_change(known, deadline) => s,
            _ = state.shutdown.cancelled() => None,
        };
        match changed {
            Some(s) => snap = s,
            None => return Ok(not_modified(known)),
        }
    }
    if snap.removed {
        return Err(what.unknown());
    }
    // Decided again as the key leaves: a reload may have withdrawn this peer's access while it
    // waited (long poll, pending first exchange).
    if !state.access.load().allows(&peer, instance) {
        debug!(pid = ?peer.pid, uid = peer.uid, gid = peer.gid, instance, "Key read refused by the access rules in force when it was answered.");
        return Err(ApiError::Forbidden(instance.to_owned()));
    }
    debug!(pid = ?peer.pid, uid = peer.uid, instance, generation = snap.generation, "Key read.");
    match what {
        Served::Key(_) => key_response(&snap),
        Served::Token(_) => token_response(&snap),
    }
}

fn not_modified(generation: u64) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    resp.headers_mut().insert(header::ETAG, etag(generation));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn etag(generation: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{generation}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The 503 of a snapshot that serves nothing.
fn unavailable(snap: &Snapshot, nothing: &str) -> ApiError {
    let reason = match (snap.state, &snap.status.reason, &snap.status.last_error) {
        (KeyState::Pending, _, _) => "the first exchange has not finished yet".to_owned(),
        (_, Some(r), _) => r.clone(),
        (_, None, Some(e)) => format!("{nothing}: {e}"),
        _ => nothing.to_owned(),
    };
    ApiError::Unavailable {
        reason,
        retry_after: retry_after(snap),
    }
}

/// `Retry-After` of a 503: until the next attempt, within [1 s, 5 min].
fn retry_after(snap: &Snapshot) -> u64 {
    snap.status
        .next_refresh
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .map_or(5, |d| d.as_secs().clamp(1, 300))
}

fn key_response(snap: &Snapshot) -> Result<Resp, ApiError> {
    let Some(key) = &snap.served else {
        return Err(unavailable(
            snap,
            "no key to serve and no fallback configured",
        ));
    };
    // Built once per snapshot: the hot path of every consumer is a clone of these bytes.
    let rendered = snap.rendered.get_or_render(|| {
        let body = json!({
            "instance": &*snap.name,
            "api_key": key.value.expose(),
            "source": key.source.as_str(),
            "generation": snap.generation,
            "org_uuid": snap.status.org_uuid,
            "obtained_at": status::rfc3339(key.obtained_at),
            "next_refresh_at": snap.status.next_refresh.map(status::rfc3339),
        });
        Rendered {
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())),
            etag: Bytes::from(format!("\"{}\"", snap.generation)),
        }
    });
    Ok(rendered_response(rendered, snap.generation))
}

/// `GET /v1/tokens/{name}`: `{name, access_token, expires_at, generation, org_uuid}`. A token
/// is never sent at or after its `expires_at`, whatever the snapshot says: the group's timer
/// moves it to `unavailable` at that moment, and this check closes the gap of a timer that
/// fires late.
fn token_response(snap: &Snapshot) -> Result<Resp, ApiError> {
    let token = match &snap.served {
        Some(token) if token.expired(SystemTime::now()) => {
            return Err(ApiError::Unavailable {
                reason: format!(
                    "the token expired at {} and no new one has been obtained yet{}",
                    token.expires_at.map(status::rfc3339).unwrap_or_default(),
                    snap.status
                        .last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                retry_after: retry_after(snap),
            });
        }
        Some(token) => token,
        None => return Err(unavailable(snap, "no token to serve")),
    };
    let rendered = snap.rendered.get_or_render(|| {
        let body = json!({
            "name": crate::keystore::token_name(&snap.name).unwrap_or(&snap.name),
            "access_token": token.value.expose(),
            "expires_at": token.expires_at.map(status::rfc3339),
            "generation": snap.generation,
            "org_uuid": snap.status.org_uuid,
        });
        Rendered {
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())),
            etag: Bytes::from(format!("\"{}\"", snap.generation)),
        }
    });
    Ok(rendered_response(rendered, snap.generation))
}

fn rendered_response(rendered: Rendered, generation: u64) -> Resp {
    let etag = HeaderValue::from_maybe_shared(rendered.etag).unwrap_or_else(|_| etag(generation));
    let mut resp = Response::new(Full::new(rendered.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::ETAG, etag);
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    api_key_suffix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRejectBody {
    token_suffix: String,
}

async fn rejected(
    state: &Arc<ServerState>,
    peer: Peer,
    what: Served<'_>,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    what.find(state)?;
    let instance = what.slot();
    if !state.access.load().allows(&peer, instance) {
        return Err(ApiError::Forbidden(instance.to_owned()));
    }
    let max = state.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::PayloadTooLarge(max));
    }
    // A body announced but never sent would hold the connection (and its slot) forever: the
    // idle timeout bounds the head only, so it bounds the body here too.
    let idle = state.limits.idle_timeout;
    let body = tokio::time::timeout(idle, Limited::new(req.into_body(), max).collect())
        .await
        .map_err(|_| ApiError::BodyTimeout(idle.as_secs()))?
        .map_err(|_| ApiError::PayloadTooLarge(max))?
        .to_bytes();
    let suffix = match what {
        Served::Key(_) => serde_json::from_slice::<RejectBody>(&body)
            .map(|b| b.api_key_suffix)
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "body must be {{\"api_key_suffix\":\"<last 5 characters of the rejected key>\"}}: {e}"
                ))
            })?,
        Served::Token(_) => serde_json::from_slice::<TokenRejectBody>(&body)
            .map(|b| b.token_suffix)
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "body must be {{\"token_suffix\":\"<last 5 characters of the rejected token>\"}}: {e}"
                ))
            })?,
    };
    let outcome = match state.rejections.report_rejected(instance, &suffix) {
        RejectOutcome::UnknownInstance => {
            return Err(what.unknown());
        }
        outcome
        @ (RejectOutcome::Scheduled | RejectOutcome::Throttled | RejectOutcome::Ignored) => {
            outcome.as_str()
        }
    };
    debug!(pid = ?peer.pid, uid = peer.uid, instance, outcome, "Rejection report.");
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"refresh": outcome}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_parsing() {
        let max = Duration::from_secs(300);
        assert_eq!(
            parse_wait(Some("wait=30s"), max).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_wait(Some("x=1&wait=45"), max).unwrap(),
            Some(Duration::from_secs(45))
        );
        assert_eq!(
            parse_wait(Some("wait=1m"), max).unwrap(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_wait(None, max).unwrap(), None);
        assert!(parse_wait(Some("wait=301s"), max).is_err());
        assert!(parse_wait(Some("wait=soon"), max).is_err());
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_the_wildcard() {
        let p = Known::parse_value;
        assert_eq!(p("\"7\""), Some(Known::Tags(vec![7])));
        assert_eq!(p("W/\"7\", \"9\""), Some(Known::Tags(vec![7, 9])));
        assert_eq!(p(" * "), Some(Known::Any));
        assert_eq!(p("\"abc\""), None);
        assert_eq!(p("\"3\", \"abc\", 5").unwrap().matching(5), Some(5));
        assert_eq!(p("\"3\"").unwrap().matching(5), None);
        assert_eq!(Known::Any.matching(5), Some(5));
    }

    #[test]
    fn error_codes_are_stable() {
        let codes: Vec<_> = [
            ApiError::NotFound,
            ApiError::UnknownInstance("x".into()),
            ApiError::UnknownToken("x".into()),
            ApiError::MethodNotAllowed("GET"),
            ApiError::Forbidden("x".into()),
            ApiError::BadRequest("x".into()),
            ApiError::PayloadTooLarge(1),
            ApiError::BodyTimeout(1),
            ApiError::Unavailable {
                reason: "x".into(),
                retry_after: 1,
            },
            ApiError::NotReady,
        ]
        .iter()
        .map(|e| (e.parts().0.as_u16(), e.parts().1))
        .collect();
        assert_eq!(
            codes,
            vec![
                (404, "not_found"),
                (404, "unknown_instance"),
                (404, "unknown_token"),
                (405, "method_not_allowed"),
                (403, "forbidden"),
                (400, "bad_request"),
                (413, "payload_too_large"),
                (408, "request_timeout"),
                (503, "unavailable"),
                (503, "not_ready"),
            ]
        );
    }
}

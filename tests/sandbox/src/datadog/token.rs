//! Delegated tokens: issuing them after a verified proof (persona mappings), and the routes that
//! accept them as `Authorization: Bearer <token>` (validate, current user, events), so a test
//! can prove that a token the daemon served really works against the API.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use super::jwt::{self, Claims, TokenError};
use super::{
    Answer, Outcome, PersonaMapping, ReportedExpiry, Shared, Verified, error_response,
    json_response, org_gone, unmapped,
};

/// A token-shaped string the emulator never signed (the padded answer of
/// [`super::Fault::oversized_body`] on the token exchange carries it).
pub(super) const UNSIGNED_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2FuZGJveA";

/// A delegated token the emulator minted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// Its org (as registered).
    pub org_uuid: String,
    /// The account it acts as (the persona mapping's identifier).
    pub account_identifier: String,
    /// The AWS caller ARN of the proof it was exchanged for.
    pub caller_arn: String,
    /// Its `iat`.
    pub issued_at: SystemTime,
    /// Its `exp` (also the `expires` answered, unless a fault changed what was reported).
    pub expires_at: SystemTime,
}

/// An event posted to `POST /api/v1/events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostedEvent {
    /// The id answered (1, 2, … per emulator).
    pub id: u64,
    /// `title` of the body.
    pub title: String,
    /// `text` of the body (empty when absent).
    pub text: String,
    /// The account of the bearer token, or empty when posted with an API key.
    pub account: String,
    /// The org the credentials belong to.
    pub org_uuid: String,
}

/// A minted token as the emulator keeps it.
pub(super) struct TokenRecord {
    pub issued: IssuedToken,
    pub revoked: bool,
}

/// `lifetime` as whole seconds, at least one: `exp` is in whole seconds, and a zero lifetime
/// would mint tokens that are born expired.
pub(super) fn whole_seconds(lifetime: Duration) -> Duration {
    Duration::from_secs(lifetime.as_secs().max(1))
}

/// The `exp` of a token minted now with `lifetime`: now in unix seconds (rounded down) plus the
/// lifetime. A token may so live up to a second less than its lifetime.
pub(super) fn expiry_from_now(lifetime: Duration) -> u64 {
    jwt::unix_secs(SystemTime::now()) + lifetime.as_secs()
}

/// The 200 body of the token exchange; `expires: None` leaves the attribute out.
pub(super) fn token_body(access_token: &str, expires: Option<u64>) -> Value {
    reported_body(access_token, expires.map(|e| e.to_string()))
}

fn reported_body(access_token: &str, expires: Option<String>) -> Value {
    let mut attributes = json!({ "access_token": access_token });
    if let Some(expires) = expires {
        attributes["expires"] = json!(expires);
    }
    json!({"data": {"type": "delegated_token", "attributes": attributes}})
}

/// The first persona mapping (in creation order) whose pattern covers `arn`.
fn match_persona<'a>(persona: &'a [PersonaMapping], arn: &str) -> Option<&'a PersonaMapping> {
    persona
        .iter()
        .find(|m| datadog_delegated_auth::arn_pattern::matches(&m.arn_pattern, arn))
}

/// The token exchange's issue: the first persona mapping covering the caller earns a token
/// for its account. `expiry` is what to report as `expires` (the token's own `exp` is always the
/// normal one).
pub(super) fn issue(shared: &Shared, verified: Verified, expiry: ReportedExpiry) -> Answer {
    let mut state = shared.lock();
    let lifetime = state.token_lifetime;
    let Some(org) = state.org(&verified.org) else {
        return org_gone(&verified.org);
    };
    let Some(mapping) = match_persona(&org.persona, &verified.arn) else {
        return unmapped(verified, "persona");
    };
    let iat = jwt::unix_secs(SystemTime::now());
    let claims = Claims {
        iss: jwt::ISSUER.to_owned(),
        sub: mapping.account_uuid.clone(),
        account: mapping.account_identifier.clone(),
        org_uuid: org.handle.uuid.clone(),
        arn: verified.arn.clone(),
        iat,
        exp: iat + lifetime.as_secs(),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let token = shared.signer.encode(&claims);
    let issued = IssuedToken {
        token: token.clone(),
        org_uuid: claims.org_uuid.clone(),
        account_identifier: claims.account.clone(),
        caller_arn: claims.arn.clone(),
        issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(iat),
        expires_at: claims.expires_at(),
    };
    state.tokens.insert(
        token.clone(),
        TokenRecord {
            issued,
            revoked: false,
        },
    );
    if let Some(org) = state.org_mut(&verified.org) {
        org.tokens.push(token.clone());
    }
    drop(state);
    let (expires, detail) = match expiry {
        ReportedExpiry::Exp => (Some(claims.exp.to_string()), None),
        ReportedExpiry::Omitted => (None, Some("injected: expires omitted".to_owned())),
        ReportedExpiry::Value(v) => {
            let detail = format!("injected: expires {v:?}");
            (Some(v), Some(detail))
        }
    };
    let body = reported_body(&token, expires);
    let mut answer = Answer::new(json_response(StatusCode::OK, &body), Outcome::Issued)
        .org(Some(claims.org_uuid));
    answer.detail = detail;
    answer.caller_arn = Some(verified.arn);
    answer.issued_token = Some(token);
    answer.account = Some(claims.account);
    answer
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if that is
/// the scheme used. An empty token is returned as such (and refused as malformed).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The claims of a token acceptable now: signed by this emulator, not expired (real clock), not
/// revoked, and its org still registered.
pub(super) fn authenticate(shared: &Shared, token: &str) -> Result<Claims, TokenError> {
    let claims = shared.signer.verify(token, SystemTime::now())?;
    let state = shared.lock();
    if state.tokens.get(token).is_some_and(|t| t.revoked) {
        return Err(TokenError::Revoked);
    }
    if state.org(&claims.org_uuid).is_none() {
        return Err(TokenError::UnknownOrg);
    }
    Ok(claims)
}

/// The org a token claims, without checking it: only for labelling a refusal in the log.
fn claimed_org(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.get("org_uuid")?.as_str().map(str::to_owned)
}

/// The 401 for a refused bearer token.
fn rejected(token: &str, error: &TokenError) -> Answer {
    let detail = error.to_string();
    Answer::new(
        error_response(StatusCode::UNAUTHORIZED, &detail, None),
        Outcome::TokenRejected,
    )
    .org(claimed_org(token))
    .detail(detail)
}

/// `403 {"errors":["Forbidden"]}`: the real API's answer without credentials.
fn forbidden() -> Answer {
    Answer::new(
        json_response(StatusCode::FORBIDDEN, &json!({"errors": ["Forbidden"]})),
        Outcome::Forbidden,
    )
}

fn method_not_allowed(allowed: &Method) -> Answer {
    Answer::new(
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Use {allowed}."),
            None,
        ),
        Outcome::MethodNotAllowed,
    )
}

/// Labels an answer with the bearer's org and account.
fn as_caller(answer: Answer, claims: &Claims) -> Answer {
    let mut answer = answer.org(Some(claims.org_uuid.clone()));
    answer.account = Some(claims.account.clone());
    answer
}

/// `GET /api/v1/validate` with a bearer token.
pub(super) fn validate_bearer(shared: &Shared, token: &str) -> Answer {
    let claims = match authenticate(shared, token) {
        Ok(claims) => claims,
        Err(e) => return rejected(token, &e),
    };
    let mut response = json_response(StatusCode::OK, &json!({"valid": true}));
    for (name, value) in [
        ("x-sandbox-org-uuid", &claims.org_uuid),
        ("x-sandbox-account", &claims.account),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            response.headers_mut().insert(name, value);
        }
    }
    as_caller(Answer::new(response, Outcome::Valid), &claims)
}

/// `GET /api/v2/current_user`: the bearer's account as a `users` resource.
pub(super) fn current_user(shared: &Shared, method: &Method, headers: &HeaderMap) -> Answer {
    if method != Method::GET {
        return method_not_allowed(&Method::GET);
    }
    let Some(token) = bearer(headers) else {
        return forbidden();
    };
    let claims = match authenticate(shared, token) {
        Ok(claims) => claims,
        Err(e) => return rejected(token, &e),
    };
    let body = json!({
        "data": {
            "type": "users",
            "id": claims.sub,
            "attributes": {"handle": claims.account, "email": claims.account},
        }
    });
    as_caller(
        Answer::new(json_response(StatusCode::OK, &body), Outcome::Read),
        &claims,
    )
}

/// `POST /api/v1/events` with a bearer token or an org's `DD-API-KEY` (the bearer wins when both
/// are sent, as it does for the Go client, which sends no key with a token).
pub(super) fn post_event(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> Answer {
    if method != Method::POST {
        return method_not_allowed(&Method::POST);
    }
    let (org_uuid, account) = if let Some(token) = bearer(headers) {
        match authenticate(shared, token) {
            Ok(claims) => (claims.org_uuid, claims.account),
            Err(e) => return rejected(token, &e),
        }
    } else {
        let key = headers
            .get("dd-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let state = shared.lock();
        let org = state
            .key_org(key)
            .and_then(|o| state.org(&o).map(|o| o.handle.uuid.clone()));
        match org {
            Some(org) => (org, String::new()),
            None => return forbidden(),
        }
    };
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let Some(title) = parsed
        .as_ref()
        .and_then(|v| v.get("title"))
        .and_then(Value::as_str)
    else {
        let detail = "The body must be a JSON object with a string title.";
        return Answer::new(
            error_response(StatusCode::BAD_REQUEST, detail, None),
            Outcome::BadRequest,
        )
        .org(Some(org_uuid))
        .detail(detail);
    };
    let text = parsed
        .as_ref()
        .and_then(|v| v.get("text"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut state = shared.lock();
    let id = state.events.len() as u64 + 1;
    state.events.push(PostedEvent {
        id,
        title: title.to_owned(),
        text: text.to_owned(),
        account: account.clone(),
        org_uuid: org_uuid.clone(),
    });
    drop(state);
    let body = json!({"status": "ok", "event": {"id": id, "title": title, "text": text}});
    let mut answer = Answer::new(
        json_response(StatusCode::ACCEPTED, &body),
        Outcome::Accepted,
    )
    .org(Some(org_uuid));
    answer.account = (!account.is_empty()).then_some(account);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persona(id: &str, pattern: &str) -> PersonaMapping {
        PersonaMapping {
            id: id.into(),
            account_identifier: format!("{id}@example.com"),
            account_uuid: String::new(),
            arn_pattern: pattern.into(),
        }
    }

    #[test]
    fn the_first_matching_persona_mapping_wins() {
        let mappings = [
            persona(
                "narrow",
                "arn:aws:sts::123456789012:assumed-role/Deploy/ci-*",
            ),
            persona("broad", "arn:aws:sts::123456789012:assumed-role/Deploy/*"),
            persona(
                "later",
                "arn:aws:sts::123456789012:assumed-role/Deploy/ci-1",
            ),
        ];
        let find = |arn: &str| match_persona(&mappings, arn).map(|m| m.id.as_str());
        assert_eq!(
            find("arn:aws:sts::123456789012:assumed-role/Deploy/ci-1"),
            Some("narrow")
        );
        assert_eq!(
            find("arn:aws:sts::123456789012:assumed-role/Deploy/laptop"),
            Some("broad")
        );
        assert_eq!(
            find("arn:aws:sts::123456789012:assumed-role/Other/ci-1"),
            None
        );
        assert_eq!(match_persona(&[], "arn:aws:sts::1:assumed-role/R/s"), None);
    }

    #[test]
    fn lifetimes_are_whole_seconds_of_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            whole_seconds(Duration::from_millis(2_900)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(900)),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn bearer_scheme() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Delegated abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "bearer abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "Bearer".parse().unwrap());
        assert_eq!(bearer(&headers), Some(""));
    }

    #[test]
    fn token_bodies() {
        assert_eq!(
            token_body("t", Some(12)),
            json!({"data": {"type": "delegated_token", "attributes": {"access_token": "t", "expires": "12"}}})
        );
        assert_eq!(
            token_body("t", None),
            json!({"data": {"type": "delegated_token", "attributes": {"access_token": "t"}}})
        );
    }
}

//! The cloud-auth mapping API (seed doc; wire spec §8.2):
//!
//! - `GET|POST /api/v2/cloud_auth/aws/intake_mapping`, `GET|DELETE …/intake_mapping/{id}`;
//!   create body `{"data":{"type":"aws_cloud_auth_intake_mapping","attributes":{"arn_pattern":…}}}`
//!   (exactly that one attribute).
//! - `GET|POST /api/v2/cloud_auth/aws/persona_mapping`, `GET|DELETE …/persona_mapping/{id}`;
//!   create body `{"data":{"type":"aws_cloud_auth_config","attributes":{"account_identifier":…,
//!   "arn_pattern":…}}}`; answers carry `account_uuid` too.
//!
//! Authentication: `DD-API-KEY` (a valid key of the org) and `DD-APPLICATION-KEY` (the org's
//! application key), else `403 {"errors":["Forbidden"]}`. Patterns are validated by the seed's
//! wildcard rules: `400` JSON:API `Invalid ARN pattern` pointing at
//! `/data/attributes/arn_pattern`. Create answers 201, delete 204, unknown ids 404, a pattern
//! already mapped in the org 409 (the real server's answer to that is not documented).

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Map, Value, json};

use super::{
    Answer, IntakeMapping, Outcome, Shared, State, empty_response, error_response, json_response,
};

const PREFIX: &str = "/api/v2/cloud_auth/aws/";
const INTAKE_TYPE: &str = "aws_cloud_auth_intake_mapping";
const PERSONA_TYPE: &str = "aws_cloud_auth_config";
const PATTERN_POINTER: &str = "/data/attributes/arn_pattern";

/// A persona mapping (Terraform and API clients → a user or service account): what
/// `POST /api/v2/delegated-token` matches a caller ARN against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonaMapping {
    /// Its id (a UUID).
    pub id: String,
    /// The user email, or service account UUID or email, the mapping names.
    pub account_identifier: String,
    /// The account's UUID: the identifier itself when it is one, else the UUID already given to
    /// that identifier in the org, else a fresh one. It becomes the tokens' `sub`.
    pub account_uuid: String,
    /// The ARN pattern.
    pub arn_pattern: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Intake,
    Persona,
}

/// Handles a mapping API request; `None` when `path` is not one of its routes.
pub(super) fn handle(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Answer> {
    let rest = path.strip_prefix(PREFIX)?;
    let (kind, rest) = if let Some(rest) = rest.strip_prefix("intake_mapping") {
        (Kind::Intake, rest)
    } else if let Some(rest) = rest.strip_prefix("persona_mapping") {
        (Kind::Persona, rest)
    } else {
        return None;
    };
    let id = match rest {
        "" | "/" => None,
        _ => {
            let id = rest.strip_prefix('/')?;
            if id.is_empty() || id.contains('/') {
                return None;
            }
            Some(id)
        }
    };
    let mut state = shared.lock();
    let org = match authenticate(&state, headers) {
        Ok(org) => org,
        Err(answer) => return Some(*answer),
    };
    let answer = match (method.clone(), id) {
        (Method::GET, None) => list(&state, &org, kind),
        (Method::POST, None) => create(&mut state, &org, kind, body),
        (Method::GET, Some(id)) => get(&state, &org, kind, id),
        (Method::DELETE, Some(id)) => delete(&mut state, &org, kind, id),
        _ => Answer::new(
            error_response(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.", None),
            Outcome::MethodNotAllowed,
        ),
    };
    let uuid = state.org(&org).map(|o| o.handle.uuid.clone());
    Some(answer.org(uuid))
}

/// The (lowercase) org of valid `DD-API-KEY` + `DD-APPLICATION-KEY`.
fn authenticate(state: &State, headers: &HeaderMap) -> Result<String, Box<Answer>> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let app_key = header("dd-application-key");
    let org = state
        .key_org(header("dd-api-key"))
        .filter(|org| state.org(org).is_some_and(|o| o.handle.app_key == app_key));
    org.ok_or_else(|| {
        Box::new(Answer::new(
            json_response(StatusCode::FORBIDDEN, &json!({"errors": ["Forbidden"]})),
            Outcome::Forbidden,
        ))
    })
}

fn intake_json(m: &IntakeMapping) -> Value {
    json!({"id": m.id, "type": INTAKE_TYPE, "attributes": {"arn_pattern": m.arn_pattern}})
}

fn persona_json(m: &PersonaMapping) -> Value {
    json!({
        "id": m.id,
        "type": PERSONA_TYPE,
        "attributes": {
            "account_identifier": m.account_identifier,
            "account_uuid": m.account_uuid,
            "arn_pattern": m.arn_pattern,
        }
    })
}

fn list(state: &State, org: &str, kind: Kind) -> Answer {
    let Some(org) = state.org(org) else {
        return not_found("org");
    };
    let data: Vec<Value> = match kind {
        Kind::Intake => org.intake.iter().map(intake_json).collect(),
        Kind::Persona => org.persona.iter().map(persona_json).collect(),
    };
    Answer::new(
        json_response(StatusCode::OK, &json!({ "data": data })),
        Outcome::Read,
    )
}

fn get(state: &State, org: &str, kind: Kind, id: &str) -> Answer {
    let Some(org) = state.org(org) else {
        return not_found(id);
    };
    let found = match kind {
        Kind::Intake => org.intake.iter().find(|m| m.id == id).map(intake_json),
        Kind::Persona => org.persona.iter().find(|m| m.id == id).map(persona_json),
    };
    match found {
        Some(data) => Answer::new(
            json_response(StatusCode::OK, &json!({ "data": data })),
            Outcome::Read,
        ),
        None => not_found(id),
    }
}

fn delete(state: &mut State, org: &str, kind: Kind, id: &str) -> Answer {
    let Some(org) = state.org_mut(org) else {
        return not_found(id);
    };
    let removed = match kind {
        Kind::Intake => {
            let before = org.intake.len();
            org.intake.retain(|m| m.id != id);
            before != org.intake.len()
        }
        Kind::Persona => {
            let before = org.persona.len();
            org.persona.retain(|m| m.id != id);
            before != org.persona.len()
        }
    };
    if removed {
        Answer::new(empty_response(StatusCode::NO_CONTENT), Outcome::Deleted)
    } else {
        not_found(id)
    }
}

fn create(state: &mut State, org: &str, kind: Kind, body: &Bytes) -> Answer {
    let attributes = match parse_create(kind, body) {
        Ok(attributes) => attributes,
        Err(answer) => return *answer,
    };
    let Some(pattern) = attributes.get("arn_pattern").and_then(Value::as_str) else {
        return bad_request("Missing required attribute arn_pattern.", PATTERN_POINTER);
    };
    if datadog_delegated_auth::arn_pattern::validate(pattern).is_err() {
        return bad_request("Invalid ARN pattern", PATTERN_POINTER);
    }
    let Some(org) = state.org_mut(org) else {
        return not_found("org");
    };
    let id = uuid::Uuid::new_v4().to_string();
    let data = match kind {
        Kind::Intake => {
            if org.intake.iter().any(|m| m.arn_pattern == pattern) {
                return conflict(pattern);
            }
            let mapping = IntakeMapping {
                id,
                arn_pattern: pattern.to_owned(),
            };
            let data = intake_json(&mapping);
            org.intake.push(mapping);
            data
        }
        Kind::Persona => {
            let Some(identifier) = attributes
                .get("account_identifier")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
            else {
                return bad_request(
                    "Missing required attribute account_identifier (a user email, or a service account UUID or email).",
                    "/data/attributes/account_identifier",
                );
            };
            if org.persona.iter().any(|m| m.arn_pattern == pattern) {
                return conflict(pattern);
            }
            let account_uuid = account_uuid_for(&org.persona, identifier);
            let mapping = PersonaMapping {
                id,
                account_identifier: identifier.to_owned(),
                account_uuid,
                arn_pattern: pattern.to_owned(),
            };
            let data = persona_json(&mapping);
            org.persona.push(mapping);
            data
        }
    };
    Answer::new(
        json_response(StatusCode::CREATED, &json!({ "data": data })),
        Outcome::Created,
    )
}

/// The UUID of the account `identifier` names: the identifier itself when it is a UUID (a
/// service account), else the one an earlier mapping of the org gave it (one account, one UUID),
/// else a fresh one.
pub(super) fn account_uuid_for(persona: &[PersonaMapping], identifier: &str) -> String {
    uuid::Uuid::parse_str(identifier)
        .map(|u| u.to_string())
        .ok()
        .or_else(|| {
            persona
                .iter()
                .find(|m| m.account_identifier == identifier)
                .map(|m| m.account_uuid.clone())
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The attributes of a create body, checked for shape.
fn parse_create(kind: Kind, body: &Bytes) -> Result<Map<String, Value>, Box<Answer>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| Box::new(bad_request("The request body is not valid JSON.", "")))?;
    let data = value
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| Box::new(bad_request("Missing data object.", "/data")))?;
    let expected = match kind {
        Kind::Intake => INTAKE_TYPE,
        Kind::Persona => PERSONA_TYPE,
    };
    if data.get("type").and_then(Value::as_str) != Some(expected) {
        return Err(Box::new(bad_request(
            &format!("Invalid type; expected {expected}."),
            "/data/type",
        )));
    }
    let attributes = data
        .get("attributes")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Box::new(bad_request(
                "Missing attributes object.",
                "/data/attributes",
            ))
        })?;
    let allowed: &[&str] = match kind {
        Kind::Intake => &["arn_pattern"],
        Kind::Persona => &["account_identifier", "arn_pattern"],
    };
    if let Some(extra) = attributes.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Box::new(bad_request(
            &format!("Unknown attribute {extra}."),
            &format!("/data/attributes/{extra}"),
        )));
    }
    Ok(attributes.clone())
}

fn bad_request(detail: &str, pointer: &str) -> Answer {
    Answer::new(
        error_response(StatusCode::BAD_REQUEST, detail, Some(pointer)),
        Outcome::BadRequest,
    )
    .detail(detail)
}

fn not_found(id: &str) -> Answer {
    let detail = format!("Mapping {id} not found.");
    Answer::new(
        error_response(StatusCode::NOT_FOUND, &detail, None),
        Outcome::NotFound,
    )
    .detail(detail)
}

fn conflict(pattern: &str) -> Answer {
    let detail = format!("A mapping with ARN pattern {pattern} already exists.");
    Answer::new(
        error_response(StatusCode::CONFLICT, &detail, None),
        Outcome::Conflict,
    )
    .detail(detail)
}

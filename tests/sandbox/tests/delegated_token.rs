//! The delegated token exchange and bearer routes of the Datadog emulator, driven with real
//! proofs (the daemon's own `build_proof`) verified by a real moto_server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use datadog_delegated_auth::aws::{AwsCredentials, CredentialSource, build_proof};
use datadog_delegated_auth::secret::Secret;
use http::{Method, StatusCode};
use sandbox::datadog::{
    DatadogEmulator, DatadogOptions, Fault, INTAKE_KEY_PATH, Outcome, RequestRecord,
};
use sandbox::http::{ClientResponse, send};
use sandbox::moto::{DEFAULT_ROLE, Moto, StaticCreds};
use serde_json::{Value, json};

const ORG: &str = "11111111-2222-3333-4444-555555555555";
const OTHER_ORG: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const PATTERN: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";
const SESSION: &str = "tf-run-1";
const ACCOUNT: &str = "automation@example.com";
const CALLER: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/tf-run-1";
const PATIENCE: Duration = Duration::from_secs(30);

/// A proof for `org` signed now with `creds`.
fn proof(creds: &StaticCreds, org: &str) -> String {
    let creds = AwsCredentials {
        access_key_id: creds.access_key_id.clone(),
        secret_access_key: Secret::new(creds.secret_access_key.clone()),
        session_token: creds.session_token.clone().map(Secret::new),
        source: CredentialSource::StaticEnv,
    };
    build_proof(&creds, org, None, SystemTime::now(), "sandbox-test")
        .expect("proof builds")
        .expose()
        .to_owned()
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `POST /api/v2/delegated-token` as the Go client sends it.
async fn exchange(dd: &DatadogEmulator, proof: &str) -> ClientResponse {
    let auth = format!("Delegated {proof}");
    let headers = headers(&[
        ("Authorization", &auth),
        ("Content-Type", "application/json"),
    ]);
    send(
        Method::POST,
        &dd.delegated_token_url(),
        &headers,
        Bytes::new(),
    )
    .await
    .expect("exchange answers")
}

async fn with_bearer(
    dd: &DatadogEmulator,
    method: Method,
    path: &str,
    token: &str,
    body: &str,
) -> ClientResponse {
    let auth = format!("Bearer {token}");
    let url = format!("{}{path}", dd.url());
    send(
        method,
        &url,
        &headers(&[("Authorization", &auth)]),
        body.to_owned(),
    )
    .await
    .expect("API answers")
}

fn json_of(response: &ClientResponse) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()))
}

fn detail(response: &ClientResponse) -> String {
    json_of(response)["errors"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The JWT's claims, read without verification.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// The token and `expires` of a 200 token answer.
fn token_of(response: &ClientResponse) -> (String, Option<String>) {
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let body = json_of(response);
    assert_eq!(body["data"]["type"], "delegated_token");
    let attributes = &body["data"]["attributes"];
    (
        attributes["access_token"]
            .as_str()
            .expect("token")
            .to_owned(),
        attributes["expires"].as_str().map(str::to_owned),
    )
}

async fn world() -> (Moto, StaticCreds, DatadogEmulator) {
    let moto = Moto::start().await.expect("moto starts");
    let creds = moto
        .assume_role(DEFAULT_ROLE, SESSION)
        .await
        .expect("assume role");
    let dd = DatadogEmulator::start(DatadogOptions {
        sts_url: Some(moto.url()),
        ..DatadogOptions::default()
    })
    .await
    .expect("emulator starts");
    (moto, creds, dd)
}

#[tokio::test]
async fn a_token_is_issued_works_and_stops_working() {
    let (_moto, creds, dd) = world().await;
    let org = dd.add_org(ORG);
    dd.add_org(OTHER_ORG);
    dd.add_persona_mapping(ORG, PATTERN, ACCOUNT);
    let account_uuid = dd.persona_mappings(ORG)[0].account_uuid.clone();

    // The exchange.
    let before = SystemTime::now();
    let sent = proof(&creds, ORG);
    let (token, expires) = token_of(&exchange(&dd, &sent).await);
    let expires: u64 = expires.expect("expires sent").parse().expect("a number");
    let c = claims(&token);
    assert_eq!(c["exp"].as_u64(), Some(expires), "exp == expires");
    let lifetime = expires - before.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!((899..=901).contains(&lifetime), "{lifetime}");
    assert_eq!(c["iss"], "sandbox-datadog");
    assert_eq!(c["sub"], account_uuid.as_str());
    assert_eq!(c["account"], ACCOUNT);
    assert_eq!(c["org_uuid"], ORG);
    assert_eq!(c["arn"], CALLER);
    assert!(c["jti"].as_str().is_some_and(|j| j.len() == 36));

    let log = dd.wait_for_token_exchanges(1, PATIENCE).await;
    let record: &RequestRecord = &log[0];
    assert!(record.is_token_exchange() && !record.is_exchange());
    assert_eq!(record.outcome, Outcome::Issued);
    assert_eq!(record.issued_token.as_deref(), Some(token.as_str()));
    assert_eq!(record.issued_key, None);
    assert_eq!(record.account.as_deref(), Some(ACCOUNT));
    assert_eq!(record.caller_arn.as_deref(), Some(CALLER));
    assert_eq!(record.proof.as_deref(), Some(sent.as_str()));
    assert!(dd.exchanges().is_empty(), "not an intake exchange");
    let issued = dd.issued_tokens(ORG);
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].token, token);
    assert_eq!(issued[0].account_identifier, ACCOUNT);
    assert_eq!(issued[0].caller_arn, CALLER);
    assert_eq!(
        issued[0].expires_at,
        UNIX_EPOCH + Duration::from_secs(expires)
    );
    assert!(dd.token_valid(&token));
    assert_eq!(dd.token_account(&token).as_deref(), Some(ACCOUNT));

    // The bearer works on the API.
    let validate = with_bearer(&dd, Method::GET, "/api/v1/validate", &token, "").await;
    assert_eq!(validate.status, StatusCode::OK, "{}", validate.text());
    assert_eq!(json_of(&validate), json!({"valid": true}));
    assert_eq!(validate.headers["x-sandbox-org-uuid"], ORG);
    assert_eq!(validate.headers["x-sandbox-account"], ACCOUNT);
    let me = with_bearer(&dd, Method::GET, "/api/v2/current_user", &token, "").await;
    assert_eq!(
        json_of(&me),
        json!({"data": {"type": "users", "id": account_uuid,
            "attributes": {"handle": ACCOUNT, "email": ACCOUNT}}})
    );
    let event = r#"{"title":"deployed","text":"v2","tags":["a"]}"#;
    let posted = with_bearer(&dd, Method::POST, "/api/v1/events", &token, event).await;
    assert_eq!(posted.status, StatusCode::ACCEPTED, "{}", posted.text());
    assert_eq!(
        json_of(&posted),
        json!({"status": "ok", "event": {"id": 1, "title": "deployed", "text": "v2"}})
    );
    let bad = with_bearer(&dd, Method::POST, "/api/v1/events", &token, "{\"text\":1}").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let by_key = send(
        Method::POST,
        &format!("{}/api/v1/events", dd.url()),
        &headers(&[("DD-API-KEY", &org.api_key)]),
        r#"{"title":"by key"}"#,
    )
    .await
    .unwrap();
    assert_eq!(by_key.status, StatusCode::ACCEPTED, "{}", by_key.text());
    let events = dd.events();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].title.as_str(), events[0].text.as_str()),
        ("deployed", "v2")
    );
    assert_eq!(
        (events[0].account.as_str(), events[0].org_uuid.as_str()),
        (ACCOUNT, ORG)
    );
    assert_eq!(
        (events[1].account.as_str(), events[1].org_uuid.as_str()),
        ("", ORG)
    );
    let anonymous = send(
        Method::POST,
        &format!("{}/api/v1/events", dd.url()),
        &[],
        event,
    )
    .await
    .unwrap();
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN);
    assert_eq!(json_of(&anonymous), json!({"errors": ["Forbidden"]}));
    let no_user = send(
        Method::GET,
        &format!("{}/api/v2/current_user", dd.url()),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(no_user.status, StatusCode::FORBIDDEN);

    // Refusals.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let refused = with_bearer(&dd, Method::GET, "/api/v1/validate", &tampered, "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(detail(&refused), "bad signature");
    let refused = with_bearer(&dd, Method::GET, "/api/v1/validate", "not-a-jwt", "").await;
    assert_eq!(detail(&refused), "malformed token");
    assert!(dd.revoke_token(&token));
    assert!(!dd.revoke_token("never-issued"));
    let refused = with_bearer(&dd, Method::GET, "/api/v2/current_user", &token, "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(detail(&refused), "token revoked");
    assert!(!dd.token_valid(&token));
    assert_eq!(dd.token_account(&token), None);
    let record = dd.requests().pop().unwrap();
    assert_eq!(record.outcome, Outcome::TokenRejected);
    assert_eq!(record.org.as_deref(), Some(ORG));

    // A short lifetime: the token is refused once `exp` passes.
    dd.set_token_lifetime(Duration::from_millis(300)); // rounds up to the 1 s minimum
    let (short, expires) = token_of(&exchange(&dd, &proof(&creds, ORG)).await);
    let expires: u64 = expires.unwrap().parse().unwrap();
    assert_eq!(claims(&short)["exp"].as_u64(), Some(expires));
    let expiry = UNIX_EPOCH + Duration::from_secs(expires);
    if let Ok(wait) = expiry.duration_since(SystemTime::now()) {
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
    }
    let refused = with_bearer(&dd, Method::GET, "/api/v1/validate", &short, "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(detail(&refused), "token expired");
    assert!(!dd.token_valid(&short));

    // The persona mappings are the org's own: another org, and the intake exchange, refuse.
    let unmapped = exchange(&dd, &proof(&creds, OTHER_ORG)).await;
    assert_eq!(unmapped.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        detail(&unmapped),
        format!("Authenticated as {CALLER} but no persona mapping was found.")
    );
    assert_eq!(
        dd.token_exchanges().last().unwrap().outcome,
        Outcome::Unmapped
    );
    let auth = format!("Delegated {}", proof(&creds, ORG));
    let intake = send(
        Method::POST,
        &format!("{}{INTAKE_KEY_PATH}", dd.url()),
        &headers(&[("Authorization", &auth)]),
        "",
    )
    .await
    .unwrap();
    assert_eq!(intake.status, StatusCode::UNAUTHORIZED);
    assert!(detail(&intake).contains("no identity mapping"));

    // A removed org's tokens stop working.
    dd.set_token_lifetime(Duration::from_secs(60));
    let (last, _) = token_of(&exchange(&dd, &proof(&creds, ORG)).await);
    assert!(dd.token_valid(&last));
    assert!(dd.remove_org(ORG));
    let refused = with_bearer(&dd, Method::GET, "/api/v1/validate", &last, "").await;
    assert_eq!(detail(&refused), "unknown org");
}

#[tokio::test]
async fn proof_errors_and_faults() {
    let (moto, creds, dd) = world().await;
    dd.add_org(ORG);
    dd.add_persona_mapping(ORG, PATTERN, ACCOUNT);
    let url = dd.delegated_token_url();

    // The same proof checks as the intake exchange.
    let get = send(Method::GET, &url, &[], "").await.unwrap();
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    let none = send(Method::POST, &url, &[], "").await.unwrap();
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let unknown_org = exchange(&dd, &proof(&creds, OTHER_ORG)).await;
    assert_eq!(unknown_org.status, StatusCode::FORBIDDEN);
    let wrong_secret = StaticCreds {
        secret_access_key: "x".repeat(40),
        ..creds.clone()
    };
    let rejected = exchange(&dd, &proof(&wrong_secret, ORG)).await;
    assert_eq!(
        rejected.status,
        StatusCode::FORBIDDEN,
        "{}",
        rejected.text()
    );
    let outcomes: Vec<Outcome> = dd.token_exchanges().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::MethodNotAllowed,
            Outcome::Unauthenticated,
            Outcome::BadProof,
            Outcome::StsRejected
        ]
    );
    let no_sts = DatadogEmulator::start(DatadogOptions {
        sts_url: Some("http://127.0.0.1:1".into()),
        ..DatadogOptions::default()
    })
    .await
    .unwrap();
    no_sts.add_org(ORG);
    let unreachable = exchange(&no_sts, &proof(&creds, ORG)).await;
    assert_eq!(unreachable.status, StatusCode::BAD_GATEWAY);

    // Token faults have their own queue: an intake fault does not touch the token exchange.
    dd.inject(Fault::status(500));
    dd.inject_token_fault(Fault::token_without_expiry());
    dd.inject_token_fault(Fault::token_expires("garbage"));
    dd.inject_token_fault(Fault::empty_key());
    dd.inject_token_fault(Fault::status(429).retry_after("3"));

    let (token, expires) = token_of(&exchange(&dd, &proof(&creds, ORG)).await);
    assert_eq!(expires, None, "expires omitted");
    assert!(dd.token_valid(&token), "a real token");
    let record = dd.token_exchanges().pop().unwrap();
    assert_eq!(record.outcome, Outcome::Issued);
    assert_eq!(record.issued_token.as_deref(), Some(token.as_str()));

    let (token, expires) = token_of(&exchange(&dd, &proof(&creds, ORG)).await);
    assert_eq!(expires.as_deref(), Some("garbage"));
    assert!(dd.token_valid(&token));
    let exp = claims(&token)["exp"].as_u64().unwrap();
    let issued = dd.issued_tokens(ORG);
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[1].expires_at, UNIX_EPOCH + Duration::from_secs(exp));

    let (token, expires) = token_of(&exchange(&dd, &proof(&creds, ORG)).await);
    assert_eq!(token, "");
    assert!(expires.is_some());

    let throttled = exchange(&dd, &proof(&creds, ORG)).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers["retry-after"], "3");

    // Queue drained; clear_faults empties both queues.
    let (token, expires) = token_of(&exchange(&dd, &proof(&creds, ORG)).await);
    assert!(dd.token_valid(&token) && expires.is_some());
    // Another instance (another site) has another secret.
    let elsewhere = with_bearer(&no_sts, Method::GET, "/api/v1/validate", &token, "").await;
    assert_eq!(elsewhere.status, StatusCode::UNAUTHORIZED);
    assert_eq!(detail(&elsewhere), "bad signature");
    dd.inject_token_fault(Fault::status(503));
    dd.clear_faults();
    token_of(&exchange(&dd, &proof(&creds, ORG)).await);
    assert_eq!(dd.issued_tokens(ORG).len(), 4);
    drop(moto);
}

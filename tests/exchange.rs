//! The exchange client against real loopback servers: the sandbox's Datadog emulator (with moto
//! as STS where proofs must verify), small capture servers and a capture proxy.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use datadog_delegated_auth::aws::{AwsCredentials, CredentialSource, build_proof};
use datadog_delegated_auth::exchange::{
    ClientOptions, ExchangeClient, ExchangeError, MAX_RESPONSE_BYTES, intake_key_url,
};
use datadog_delegated_auth::secret::Secret;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use sandbox::datadog::{DatadogEmulator, DatadogOptions, Fault, KeyState, Outcome};
use sandbox::http::{HttpServer, RecordedRequest};
use sandbox::moto::{DEFAULT_ROLE, Moto, StaticCreds};
use serde_json::{Value, json};

const ORG_A: &str = "11111111-2222-3333-4444-555555555555";
const ORG_B: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const AGENT_PATTERN: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";
const SESSION: &str = "i-0123456789abcdef0";
const USER_AGENT: &str = "datadog-delegated-auth/test";
/// Upper bound for waits on the loaded 2-core test machine; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn client() -> ExchangeClient {
    ExchangeClient::with_env(&ClientOptions::default(), |_| None).expect("client builds")
}

fn aws_creds(creds: &StaticCreds) -> AwsCredentials {
    AwsCredentials {
        access_key_id: creds.access_key_id.clone(),
        secret_access_key: Secret::new(creds.secret_access_key.clone()),
        session_token: creds.session_token.clone().map(Secret::new),
        source: CredentialSource::StaticEnv,
    }
}

fn proof_at(creds: &StaticCreds, org: &str, region: Option<&str>, at: SystemTime) -> Secret {
    build_proof(&aws_creds(creds), org, region, at, USER_AGENT).expect("proof builds")
}

fn proof(creds: &StaticCreds, org: &str) -> Secret {
    proof_at(creds, org, None, SystemTime::now())
}

/// Re-encodes a proof after `change` altered its decoded form.
fn altered(proof: &Secret, change: impl FnOnce(&mut sandbox::sts::Proof)) -> Secret {
    let mut decoded = sandbox::sts::decode_proof(proof.expose()).expect("proof decodes");
    change(&mut decoded);
    Secret::new(decoded.encode())
}

/// A real SigV4 signature made with aws-sigv4 directly, for proofs `build_proof` refuses to make:
/// `sign_org: false` leaves `x-ddog-org-id` out of `SignedHeaders` (but in the header map), and
/// `signing_region` may disagree with `host`.
fn sign_unusual(
    creds: &StaticCreds,
    org: &str,
    host: &str,
    signing_region: &str,
    sign_org: bool,
) -> Secret {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "test",
    )
    .into();
    let mut settings = SigningSettings::default();
    let mut excluded: Vec<std::borrow::Cow<'static, str>> =
        vec!["user-agent".into(), "authorization".into()];
    if !sign_org {
        excluded.push("x-ddog-org-id".into());
    }
    settings.excluded_headers = Some(excluded);
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(signing_region)
        .name("sts")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let body = "Action=GetCallerIdentity&Version=2011-06-15";
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let input = [
        ("Content-Length", "43"),
        ("Content-Type", content_type),
        ("Host", host),
        ("X-Ddog-Org-Id", org),
        ("User-Agent", USER_AGENT),
    ];
    let url = format!("https://{host}");
    let signable = SignableRequest::new(
        "POST",
        format!("{url}/"),
        input.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in input.iter().filter(|(n, _)| *n != "Content-Length") {
        headers.insert((*name).to_owned(), vec![(*value).to_owned()]);
    }
    for (name, value) in instructions.headers() {
        let canonical = name
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-");
        headers.insert(canonical, vec![value.to_owned()]);
    }
    Secret::new(format!(
        "{}|{}|POST|{}",
        STANDARD.encode(body),
        STANDARD.encode(serde_json::to_vec(&headers).unwrap()),
        STANDARD.encode(url)
    ))
}

async fn validate(dd: &DatadogEmulator, key: &str) -> (StatusCode, Option<String>, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/validate", dd.url()))
        .header("DD-API-KEY", key)
        .send()
        .await
        .expect("validate answers");
    let status = response.status();
    let org = response
        .headers()
        .get("x-sandbox-org-uuid")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, org, response.json().await.expect("validate JSON"))
}

async fn exchange(dd: &DatadogEmulator, proof: &Secret) -> Result<Secret, ExchangeError> {
    client().exchange(&dd.intake_key_url(), proof).await
}

/// The detail of a refusal, asserting it is one.
fn refusal(result: Result<Secret, ExchangeError>, status: u16) -> String {
    match result {
        Err(ExchangeError::Unauthorized { status: s, detail }) if s == status => {
            detail.expect("refusals carry a detail")
        }
        other => panic!("expected a {status} refusal, got {other:?}"),
    }
}

/// Every check the backend must make, against moto as STS. One test so moto starts once.
#[tokio::test]
async fn the_emulator_verifies_proofs_like_the_backend() {
    let moto = Moto::start().await.expect("moto starts");
    let dd = DatadogEmulator::start(DatadogOptions {
        sts_url: Some(moto.url()),
        ..DatadogOptions::default()
    })
    .await
    .unwrap();
    dd.add_org(ORG_A);
    dd.add_org(ORG_B);
    dd.add_intake_mapping(ORG_A, AGENT_PATTERN);
    let creds = moto.assume_role(DEFAULT_ROLE, SESSION).await.unwrap();

    // A good proof, global endpoint: a key that validates for its org.
    let key = exchange(&dd, &proof(&creds, ORG_A))
        .await
        .expect("exchange succeeds");
    assert_eq!(key.expose().len(), 32);
    let (status, org, body) = validate(&dd, key.expose()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"valid": true}));
    assert_eq!(org.as_deref(), Some(ORG_A));
    assert!(dd.is_managed(key.expose()));
    let issued = dd.exchanges();
    assert_eq!(issued[0].outcome, Outcome::Issued);
    assert_eq!(
        issued[0].caller_arn.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/i-0123456789abcdef0")
    );
    assert_eq!(issued[0].org.as_deref(), Some(ORG_A));

    // A good regional proof.
    let regional = proof_at(&creds, ORG_A, Some("eu-west-1"), SystemTime::now());
    exchange(&dd, &regional)
        .await
        .expect("regional proof succeeds");

    // The org swapped for another known org after signing: STS refuses the signature.
    let swapped = altered(&proof(&creds, ORG_A), |p| {
        p.headers.insert("X-Ddog-Org-Id".into(), vec![ORG_B.into()]);
    });
    let detail = refusal(exchange(&dd, &swapped).await, 403);
    assert!(detail.contains("STS rejected"), "{detail}");
    assert_eq!(dd.exchanges().last().unwrap().outcome, Outcome::StsRejected);

    // The org header present but not signed: moto accepts it, the emulator must not.
    let unsigned = sign_unusual(&creds, ORG_A, "sts.amazonaws.com", "us-east-1", false);
    let replay = sandbox::sts::replay_proof(&moto.url(), unsigned.expose())
        .await
        .unwrap();
    assert_eq!(
        replay.status, 200,
        "moto does not check that the org is signed"
    );
    let detail = refusal(exchange(&dd, &unsigned).await, 403);
    assert!(
        detail.contains("x-ddog-org-id") && detail.contains("SignedHeaders"),
        "{detail}"
    );
    // The same signer with the org signed is accepted: the refusal is about the org only.
    let signed = sign_unusual(&creds, ORG_A, "sts.amazonaws.com", "us-east-1", true);
    exchange(&dd, &signed)
        .await
        .expect("aws-sigv4 proof with the org signed");

    // A stale X-Amz-Date: moto accepts it, the emulator must not.
    let stale = proof_at(
        &creds,
        ORG_A,
        None,
        SystemTime::now() - Duration::from_secs(6 * 60),
    );
    let replay = sandbox::sts::replay_proof(&moto.url(), stale.expose())
        .await
        .unwrap();
    assert_eq!(replay.status, 200, "moto does not check freshness");
    let detail = refusal(exchange(&dd, &stale).await, 403);
    assert!(detail.contains("X-Amz-Date"), "{detail}");
    // Skew the other way: a fresh proof against a server clock 6 minutes ahead.
    dd.set_clock_offset(360);
    let detail = refusal(exchange(&dd, &proof(&creds, ORG_A)).await, 403);
    assert!(detail.contains("behind"), "{detail}");
    dd.set_clock_offset(0);

    // Signed for one region, sent to another's endpoint: moto accepts, the emulator refuses.
    let mismatched = sign_unusual(&creds, ORG_A, "sts.amazonaws.com", "eu-west-1", true);
    let replay = sandbox::sts::replay_proof(&moto.url(), mismatched.expose())
        .await
        .unwrap();
    assert_eq!(replay.status, 200, "moto does not check the scope region");
    let detail = refusal(exchange(&dd, &mismatched).await, 403);
    assert!(detail.contains("eu-west-1"), "{detail}");

    // Another body, a non-STS host, bad base64, an unknown org: refused before STS.
    let other_body = altered(&proof(&creds, ORG_A), |p| {
        p.body = b"Action=GetSessionToken&Version=2011-06-15".to_vec();
    });
    assert!(refusal(exchange(&dd, &other_body).await, 403).contains("body"));
    let evil_host = altered(&proof(&creds, ORG_A), |p| {
        p.url = "https://sts.amazonaws.com.evil.example".into();
        p.headers
            .insert("Host".into(), vec!["sts.amazonaws.com.evil.example".into()]);
    });
    assert!(refusal(exchange(&dd, &evil_host).await, 403).contains("not an AWS STS endpoint"));
    let good = proof(&creds, ORG_A);
    let mut fields: Vec<String> = good.expose().split('|').map(str::to_owned).collect();
    fields[1] = fields[1].replace(['+', '/'], "-");
    fields[1].insert(3, '!');
    let bad_b64 = Secret::new(fields.join("|"));
    assert!(refusal(exchange(&dd, &bad_b64).await, 403).contains("base64"));
    let unknown = proof(&creds, "99999999-9999-9999-9999-999999999999");
    assert!(refusal(exchange(&dd, &unknown).await, 403).contains("not a known organization"));

    // A verified identity without a mapping: 401 with the backend's wording.
    moto.create_role("OtherRole").await.unwrap();
    let other = moto.assume_role("OtherRole", "s2").await.unwrap();
    let err = exchange(&dd, &proof(&other, ORG_A)).await.unwrap_err();
    let want = "Authenticated as arn:aws:sts::123456789012:assumed-role/OtherRole/s2 but no identity mapping was found.";
    assert_eq!(
        err,
        ExchangeError::Unauthorized {
            status: 401,
            detail: Some(want.into())
        }
    );
    assert!(err.to_string().contains(want), "{err}");
    // The same identity mapped in org B only: still unmapped for org A, a key for org B.
    dd.add_intake_mapping(ORG_B, "arn:aws:sts::123456789012:assumed-role/OtherRole/*");
    assert!(exchange(&dd, &proof(&other, ORG_A)).await.is_err());
    let key_b = exchange(&dd, &proof(&other, ORG_B)).await.unwrap();
    assert_eq!(dd.key_org(key_b.expose()).as_deref(), Some(ORG_B));

    // The request log tells the story, in order.
    let outcomes: Vec<Outcome> = dd.exchanges().iter().map(|r| r.outcome).collect();
    use Outcome::*;
    assert_eq!(
        outcomes,
        [
            Issued,
            Issued,
            StsRejected,
            BadProof,
            Issued,
            BadProof,
            BadProof,
            BadProof,
            BadProof,
            BadProof,
            BadProof,
            BadProof,
            Unmapped,
            Unmapped,
            Issued
        ]
    );
    // The emulator never logs a key in a detail.
    for record in dd.requests() {
        if let Some(detail) = record.detail {
            assert!(!detail.contains(key.expose()));
        }
    }
}

/// Each exchange mints a new key; old keys overlap, then stop validating; revocation is
/// immediate; a second emulator (another site) keeps its own keys.
#[tokio::test]
async fn keys_rotate_overlap_and_revoke() {
    let moto = Moto::start().await.expect("moto starts");
    let options = DatadogOptions {
        sts_url: Some(moto.url()),
        key_overlap: Duration::from_secs(3600),
        ..DatadogOptions::default()
    };
    let dd = DatadogEmulator::start(options.clone()).await.unwrap();
    let other_site = DatadogEmulator::start(options).await.unwrap();
    for site in [&dd, &other_site] {
        site.add_org(ORG_A);
        site.add_intake_mapping(ORG_A, AGENT_PATTERN);
    }
    let creds = moto.assume_role(DEFAULT_ROLE, SESSION).await.unwrap();

    let first = exchange(&dd, &proof(&creds, ORG_A)).await.unwrap();
    let second = exchange(&dd, &proof(&creds, ORG_A)).await.unwrap();
    assert_ne!(first, second, "every exchange mints a new key");
    let states: Vec<KeyState> = dd.issued_keys(ORG_A).iter().map(|k| k.state).collect();
    assert!(
        matches!(states[..], [KeyState::Overlap { .. }, KeyState::Current]),
        "{states:?}"
    );
    assert_eq!(
        validate(&dd, first.expose()).await.0,
        StatusCode::OK,
        "overlap"
    );
    assert_eq!(validate(&dd, second.expose()).await.0, StatusCode::OK);

    // With no overlap, the previous key stops validating as soon as a new one is issued.
    dd.set_key_overlap(Duration::ZERO);
    let third = exchange(&dd, &proof(&creds, ORG_A)).await.unwrap();
    let (status, _, body) = validate(&dd, second.expose()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, json!({"errors": ["Forbidden"]}));
    assert_eq!(
        validate(&dd, first.expose()).await.0,
        StatusCode::OK,
        "own overlap kept"
    );

    // Explicit revocation.
    assert!(dd.revoke(third.expose()));
    assert_eq!(validate(&dd, third.expose()).await.0, StatusCode::FORBIDDEN);
    assert_eq!(dd.issued_keys(ORG_A)[2].state, KeyState::Revoked);

    // The other site's keys are its own.
    let elsewhere = exchange(&other_site, &proof(&creds, ORG_A)).await.unwrap();
    assert_eq!(
        validate(&other_site, elsewhere.expose()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        validate(&dd, elsewhere.expose()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        validate(&other_site, first.expose()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(other_site.exchanges().len(), 1);
}

/// A loopback server recording every request and answering with `answer`.
async fn capture(
    answer: impl Fn(&RecordedRequest, &Bytes) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> (HttpServer, Arc<Mutex<Vec<(RecordedRequest, Bytes)>>>) {
    let seen: Arc<Mutex<Vec<(RecordedRequest, Bytes)>>> = Arc::default();
    let log = Arc::clone(&seen);
    let answer = Arc::new(answer);
    let server = HttpServer::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        move |request: Request<Bytes>| {
            let recorded = RecordedRequest::of(&request);
            let body = request.body().clone();
            let response = answer(&recorded, &body);
            log.lock().unwrap().push((recorded, body));
            async move { response }
        },
    )
    .await
    .unwrap();
    (server, seen)
}

fn key_answer(key: &str) -> Response<Full<Bytes>> {
    sandbox::http::json(
        StatusCode::OK,
        &json!({"data": {"id": "1", "type": "intake_api_key", "attributes": {"api_key": key, "org_id": 1}}}),
    )
}

#[tokio::test]
async fn the_request_is_exactly_the_agents() {
    let (server, seen) = capture(|_, _| key_answer("0123456789abcdef0123456789abcdef")).await;
    let proof = Secret::from("Ym9keQ==|aGVhZGVycw==|POST|dXJs");
    let url = intake_key_url(&server.url());
    assert_eq!(url, format!("{}/api/v2/intake-key", server.url()));
    let key = client().exchange(&url, &proof).await.unwrap();
    assert_eq!(key.expose(), "0123456789abcdef0123456789abcdef");

    let seen = seen.lock().unwrap();
    let [(request, body)] = &seen[..] else {
        panic!("one request expected: {seen:?}");
    };
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/v2/intake-key");
    assert_eq!(
        request.header("authorization"),
        Some("Delegated Ym9keQ==|aGVhZGVycw==|POST|dXJs")
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("content-length"), Some("0"));
    let lengths = request
        .headers
        .iter()
        .filter(|(k, _)| k == "content-length");
    assert_eq!(lengths.count(), 1, "one Content-Length");
    assert!(body.is_empty());
    assert_eq!(request.header("dd-api-key"), None);
    assert_eq!(request.header("transfer-encoding"), None);
}

/// Every failure class, from the emulator's injected faults (no STS needed: faults answer
/// before any verification).
#[tokio::test]
async fn failures_are_classified() {
    let dd = DatadogEmulator::start(DatadogOptions::default())
        .await
        .unwrap();
    dd.add_org(ORG_A);
    let proof = Secret::from("cHJvb2Y=|cHJvb2Y=|POST|cHJvb2Y=");
    let go = || async { exchange(&dd, &proof).await.unwrap_err() };

    dd.inject(Fault::status(503).body(
        r#"{"errors":[{"status":"503","title":"Service Unavailable","detail":"Maintenance in progress."}]}"#,
    ));
    let err = go().await;
    assert_eq!(err.kind(), "unavailable");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert!(
        err.to_string().contains("Maintenance in progress."),
        "{err}"
    );

    dd.inject(Fault::status(500).body("<html>internal stack trace SECRET</html>"));
    let err = go().await;
    assert_eq!(err.kind(), "unavailable");
    assert!(
        !err.to_string().contains("SECRET"),
        "never the raw body: {err}"
    );

    dd.inject(Fault::status(429).retry_after("7"));
    let err = go().await;
    assert_eq!(err.kind(), "throttled");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    dd.inject(Fault::status(429).retry_after(in_a_minute));
    let retry_after = go()
        .await
        .retry_after()
        .expect("HTTP-date Retry-After parses");
    assert!(
        retry_after > Duration::from_secs(30) && retry_after <= Duration::from_secs(60),
        "{retry_after:?}"
    );

    dd.inject(Fault::status(429));
    assert_eq!(go().await.retry_after(), None);

    dd.inject(Fault::status(401).body(
        r#"{"errors":[{"status":"401","title":"Unauthorized","detail":"Authenticated as arn:aws:sts::123456789012:assumed-role/R/s but no identity mapping was found."}]}"#,
    ));
    let err = go().await;
    assert_eq!(err.kind(), "unauthorized");
    assert!(
        err.to_string().contains("no identity mapping was found"),
        "{err}"
    );

    dd.inject(Fault::status(403).body(r#"{"errors":["Forbidden"]}"#));
    assert_eq!(go().await.detail(), Some("Forbidden"));

    dd.inject(Fault::status(404));
    assert_eq!(go().await.kind(), "invalid_response");

    for fault in [
        Fault::malformed_body(),
        Fault::empty_key(),
        Fault::oversized_body(),
        Fault::oversized_chunked_body(),
    ] {
        dd.inject(fault.clone());
        let err = go().await;
        assert_eq!(err.kind(), "invalid_response", "{fault:?}: {err}");
    }

    dd.inject(Fault::disconnect());
    assert_eq!(go().await.kind(), "unavailable");

    // Faults for several requests, then normal service (here: the proof is garbage, so the
    // emulator's own verification refuses it with a detail).
    dd.inject(Fault::status(502).times(2));
    assert_eq!(go().await.kind(), "unavailable");
    assert_eq!(go().await.kind(), "unavailable");
    let err = go().await;
    assert_eq!(err.kind(), "unauthorized");
    assert!(err.detail().unwrap().starts_with("Invalid proof"), "{err}");

    let log = dd.exchanges();
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            503, 500, 429, 429, 429, 401, 403, 404, 200, 200, 200, 200, 0, 502, 502, 403
        ]
    );
    assert!(
        log[..15]
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Fault | Outcome::Disconnected))
    );
    assert_eq!(log[15].outcome, Outcome::BadProof);
}

#[tokio::test]
async fn oversized_answers_are_cut_at_one_mebibyte() {
    // The streamed (chunked) answer has no Content-Length: only the read loop can stop it.
    let dd = DatadogEmulator::start(DatadogOptions::default())
        .await
        .unwrap();
    dd.inject(Fault::oversized_chunked_body());
    let err = exchange(&dd, &Secret::from("x|y|POST|z"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");
    assert_eq!(MAX_RESPONSE_BYTES, 1024 * 1024);

    // Just under the cap is read and parsed.
    let padding = "x".repeat(MAX_RESPONSE_BYTES - 200);
    let (server, _) = capture(move |_, _| {
        sandbox::http::json(
            StatusCode::OK,
            &json!({"data": {"attributes": {"api_key": "0123456789abcdef0123456789abcdef"}}, "padding": padding}),
        )
    })
    .await;
    let key = client()
        .exchange(&intake_key_url(&server.url()), &Secret::from("p"))
        .await
        .unwrap();
    assert_eq!(key.expose(), "0123456789abcdef0123456789abcdef");
}

#[tokio::test]
async fn a_slow_server_times_out_as_unavailable() {
    let dd = DatadogEmulator::start(DatadogOptions::default())
        .await
        .unwrap();
    dd.inject(Fault::status(503).delay(Duration::from_secs(20)));
    let quick = ExchangeClient::with_env(
        &ClientOptions {
            timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        },
        |_| None,
    )
    .unwrap();
    let started = Instant::now();
    let err = quick
        .exchange(&dd.intake_key_url(), &Secret::from("x|y|POST|z"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unavailable");
    assert!(err.to_string().contains("timeout"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "gave up long before the server answered"
    );
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = client()
        .exchange(
            &format!("http://127.0.0.1:{port}/api/v2/intake-key"),
            &Secret::from("p"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unavailable");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn plain_http_only_to_loopback() {
    // Nothing listens on these names; the refusal comes before any connection attempt.
    for url in [
        "http://api.datadoghq.com/api/v2/intake-key",
        "http://192.0.2.1/api/v2/intake-key",
    ] {
        let err = client()
            .exchange(url, &Secret::from("p"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ExchangeError::InsecureUrl { .. }),
            "{url}: {err:?}"
        );
        assert_eq!(err.kind(), "config");
    }
    let dd = DatadogEmulator::start(DatadogOptions::default())
        .await
        .unwrap();
    let via_localhost = format!("http://localhost:{}/api/v2/intake-key", dd.addr().port());
    dd.inject(Fault::empty_key());
    let err = client()
        .exchange(&via_localhost, &Secret::from("p"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_response", "reached the server: {err}");
}

#[tokio::test]
async fn redirects_are_followed_only_within_the_origin() {
    let (elsewhere, elsewhere_seen) =
        capture(|_, _| key_answer("ffffffffffffffffffffffffffffffff")).await;
    let target = format!("{}/api/v2/intake-key", elsewhere.url());
    let (server, seen) = capture(move |request, _| match request.path.as_str() {
        "/cross" => Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", target.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap(),
        "/same" => Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header("location", "/final")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        _ if request.header("authorization") == Some("Delegated p") => {
            key_answer("0123456789abcdef0123456789abcdef")
        }
        _ => sandbox::http::json(StatusCode::UNAUTHORIZED, &json!({"errors": ["no auth"]})),
    })
    .await;

    let err = client()
        .exchange(&format!("{}/cross", server.url()), &Secret::from("p"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_response");
    assert!(err.to_string().contains(&elsewhere.url()), "{err}");
    assert!(
        elsewhere_seen.lock().unwrap().is_empty(),
        "never sent cross-origin"
    );

    let key = client()
        .exchange(&format!("{}/same", server.url()), &Secret::from("p"))
        .await
        .expect("same-origin redirect followed with the proof");
    assert_eq!(key.expose(), "0123456789abcdef0123456789abcdef");
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r.path.clone())
        .collect();
    assert_eq!(paths, ["/cross", "/same", "/final"]);
}

/// A capture "proxy": records CONNECT requests (method and `Host`, the tunnel's target) and
/// refuses them, so no network is needed.
async fn refusing_proxy() -> (HttpServer, Arc<Mutex<Vec<(RecordedRequest, Bytes)>>>) {
    capture(|_, _| {
        Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await
}

fn connects(seen: &Mutex<Vec<(RecordedRequest, Bytes)>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(r, _)| format!("{} {}", r.method, r.header("host").unwrap_or("?")))
        .collect()
}

#[tokio::test]
async fn proxies_from_configuration_and_environment() {
    let (proxy, seen) = refusing_proxy().await;
    let datadog = "https://api.datadoghq.com/api/v2/intake-key";

    // proxy.https from datadog.yaml.
    let configured = ExchangeClient::with_env(
        &ClientOptions {
            proxy_https: Some(proxy.url()),
            ..ClientOptions::default()
        },
        |_| None,
    )
    .unwrap();
    let err = configured
        .exchange(datadog, &Secret::from("p"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unavailable", "{err}");
    assert_eq!(connects(&seen), ["CONNECT api.datadoghq.com:443"]);
    // The proof never reached the proxy: CONNECT carries no Authorization.
    assert!(seen.lock().unwrap()[0].0.header("authorization").is_none());

    // HTTPS_PROXY from the (injected) environment.
    let env: HashMap<&str, String> = HashMap::from([("HTTPS_PROXY", proxy.url())]);
    let from_env =
        ExchangeClient::with_env(&ClientOptions::default(), |k| env.get(k).cloned()).unwrap();
    assert_eq!(
        from_env.proxies().https.as_deref(),
        Some(proxy.url().as_str())
    );
    from_env
        .exchange(datadog, &Secret::from("p"))
        .await
        .unwrap_err();
    assert_eq!(connects(&seen).len(), 2);

    // NO_PROXY (environment) and proxy.no_proxy (configuration) send a host direct. The
    // address is unroutable: whatever the direct attempt gives, the proxy must not see it.
    let direct_target = "https://192.0.2.10:9/api/v2/intake-key";
    let quick = |no_proxy: Vec<String>, env_no_proxy: Option<&str>| {
        let env: HashMap<&str, String> = [("HTTPS_PROXY", proxy.url())]
            .into_iter()
            .chain(env_no_proxy.map(|v| ("NO_PROXY", v.to_owned())))
            .collect();
        ExchangeClient::with_env(
            &ClientOptions {
                no_proxy,
                timeout: Duration::from_millis(500),
                ..ClientOptions::default()
            },
            move |k| env.get(k).cloned(),
        )
        .unwrap()
    };
    let before = connects(&seen).len();
    quick(vec![], Some("192.0.2.0/24"))
        .exchange(direct_target, &Secret::from("p"))
        .await
        .unwrap_err();
    quick(vec!["192.0.2.10".into()], None)
        .exchange(direct_target, &Secret::from("p"))
        .await
        .unwrap_err();
    assert_eq!(
        connects(&seen).len(),
        before,
        "no_proxy hosts bypass the proxy"
    );
    // Without no_proxy the same target goes through the proxy.
    quick(vec![], None)
        .exchange(direct_target, &Secret::from("p"))
        .await
        .unwrap_err();
    assert_eq!(connects(&seen).last().unwrap(), "CONNECT 192.0.2.10:9");

    // Loopback is always direct, even with a proxy for every scheme.
    let dd = DatadogEmulator::start(DatadogOptions::default())
        .await
        .unwrap();
    dd.inject(Fault::empty_key());
    let everything_proxied = ExchangeClient::with_env(
        &ClientOptions {
            proxy_http: Some(proxy.url()),
            proxy_https: Some(proxy.url()),
            ..ClientOptions::default()
        },
        |_| None,
    )
    .unwrap();
    let before = connects(&seen).len();
    let err = everything_proxied
        .exchange(&dd.intake_key_url(), &Secret::from("p"))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        "invalid_response",
        "reached the emulator: {err}"
    );
    assert_eq!(connects(&seen).len(), before);
}

/// The emulator's validation and mapping API, through plain HTTP.
#[tokio::test]
async fn the_mapping_api_and_validation() {
    let dd = DatadogEmulator::start(DatadogOptions::default())
        .await
        .unwrap();
    let a = dd.add_org(ORG_A);
    let b = dd.add_org(ORG_B);
    assert_eq!(
        dd.add_org(ORG_A),
        a,
        "registering twice returns the same org"
    );
    let http = reqwest::Client::new();
    let base = format!("{}/api/v2/cloud_auth/aws", dd.url());
    let call = |method: reqwest::Method, path: &str, org: &sandbox::datadog::OrgHandle| {
        http.request(method, format!("{base}/{path}"))
            .header("DD-API-KEY", &org.api_key)
            .header("DD-APPLICATION-KEY", &org.app_key)
    };

    // The org's static API key validates; an unknown one does not.
    let (status, org, _) = validate(&dd, &a.api_key).await;
    assert_eq!((status, org.as_deref()), (StatusCode::OK, Some(ORG_A)));
    assert_eq!(
        validate(&dd, "0".repeat(32).as_str()).await.0,
        StatusCode::FORBIDDEN
    );

    // Authentication.
    let response = http
        .get(format!("{base}/intake_mapping"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"errors": ["Forbidden"]})
    );
    let mixed = http
        .get(format!("{base}/intake_mapping"))
        .header("DD-API-KEY", &a.api_key)
        .header("DD-APPLICATION-KEY", &b.app_key)
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), StatusCode::FORBIDDEN, "keys of two orgs");

    // Create, as the seed's curl does.
    let create = json!({"data": {"type": "aws_cloud_auth_intake_mapping", "attributes": {"arn_pattern": AGENT_PATTERN}}});
    let response = call(reqwest::Method::POST, "intake_mapping", &a)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["data"]["type"], "aws_cloud_auth_intake_mapping");
    assert_eq!(
        created["data"]["attributes"],
        json!({"arn_pattern": AGENT_PATTERN})
    );
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(dd.intake_mappings(ORG_A)[0].id, id);

    // Duplicate, invalid pattern, wrong type, extra attribute, bad JSON.
    let response = call(reqwest::Method::POST, "intake_mapping", &a)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    for bad in [
        "arn:aws:sts::123456789012:assumed-role/*",
        "arn:aws:sts::123456789012:assumed-role/*/session",
        "arn:aws:sts::*:assumed-role/R/*",
        "not-an-arn",
    ] {
        let body = json!({"data": {"type": "aws_cloud_auth_intake_mapping", "attributes": {"arn_pattern": bad}}});
        let response = call(reqwest::Method::POST, "intake_mapping", &a)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"errors": [{"status": "400", "title": "Bad Request", "detail": "Invalid ARN pattern", "source": {"pointer": "/data/attributes/arn_pattern"}}]}),
            "{bad}"
        );
    }
    for (body, pointer) in [
        (
            json!({"data": {"type": "aws_cloud_auth_config", "attributes": {"arn_pattern": AGENT_PATTERN}}}),
            "/data/type",
        ),
        (
            json!({"data": {"type": "aws_cloud_auth_intake_mapping", "attributes": {"arn_pattern": AGENT_PATTERN, "account_identifier": "x"}}}),
            "/data/attributes/account_identifier",
        ),
        (
            json!({"data": {"type": "aws_cloud_auth_intake_mapping", "attributes": {}}}),
            "/data/attributes/arn_pattern",
        ),
    ] {
        let response = call(reqwest::Method::POST, "intake_mapping", &a)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["errors"][0]["source"]["pointer"], pointer,
            "{answer}"
        );
    }
    let response = call(reqwest::Method::POST, "intake_mapping", &a)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // List and get; org B sees none of org A's mappings.
    let list: Value = call(reqwest::Method::GET, "intake_mapping", &a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["id"], id.as_str());
    let got = call(reqwest::Method::GET, &format!("intake_mapping/{id}"), &a)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let list_b: Value = call(reqwest::Method::GET, "intake_mapping", &b)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list_b, json!({"data": []}));
    let other_org = call(reqwest::Method::GET, &format!("intake_mapping/{id}"), &b)
        .send()
        .await
        .unwrap();
    assert_eq!(other_org.status(), StatusCode::NOT_FOUND);

    // Delete: 204, then 404.
    let deleted = call(reqwest::Method::DELETE, &format!("intake_mapping/{id}"), &a)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(dd.intake_mappings(ORG_A).is_empty());
    for method in [reqwest::Method::DELETE, reqwest::Method::GET] {
        let gone = call(method, &format!("intake_mapping/{id}"), &a)
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    }
    let not_allowed = call(reqwest::Method::PUT, "intake_mapping", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(not_allowed.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Persona mappings: service account by UUID, user by email.
    let sa = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    for (identifier, pattern) in [
        (
            sa,
            "arn:aws:sts::123456789012:assumed-role/DatadogTerraformerRole/*",
        ),
        (
            "john.doe@myorg.com",
            "arn:aws:sts::123456789012:assumed-role/terraform-runner",
        ),
    ] {
        let body = json!({"data": {"type": "aws_cloud_auth_config", "attributes": {"account_identifier": identifier, "arn_pattern": pattern}}});
        let response = call(reqwest::Method::POST, "persona_mapping", &a)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        assert_eq!(created["data"]["type"], "aws_cloud_auth_config");
        assert_eq!(
            created["data"]["attributes"]["account_identifier"],
            identifier
        );
        assert_eq!(created["data"]["attributes"]["arn_pattern"], pattern);
        let account_uuid = created["data"]["attributes"]["account_uuid"]
            .as_str()
            .unwrap();
        assert!(uuid::Uuid::parse_str(account_uuid).is_ok());
        if identifier == sa {
            assert_eq!(account_uuid, sa);
        }
    }
    let personas: Value = call(reqwest::Method::GET, "persona_mapping", &a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(personas["data"].as_array().unwrap().len(), 2);
    let no_identifier = json!({"data": {"type": "aws_cloud_auth_config", "attributes": {"arn_pattern": AGENT_PATTERN}}});
    let response = call(reqwest::Method::POST, "persona_mapping", &a)
        .json(&no_identifier)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Unknown routes, and the log.
    let unknown = http
        .get(format!("{}/api/v2/nothing", dd.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let log = dd.requests();
    assert!(
        log.iter()
            .any(|r| r.outcome == Outcome::Created && r.org.as_deref() == Some(ORG_A))
    );
    assert!(log.iter().any(|r| r.outcome == Outcome::Forbidden));
    assert!(log.iter().any(|r| r.outcome == Outcome::Deleted));
    assert_eq!(log.last().unwrap().outcome, Outcome::NotFound);
}

#[tokio::test]
async fn the_request_log_can_be_awaited() {
    let dd = DatadogEmulator::start(DatadogOptions::default())
        .await
        .unwrap();
    dd.inject(Fault::status(503).times(3));
    let url = dd.intake_key_url();
    let sender = tokio::spawn(async move {
        for _ in 0..3 {
            client()
                .exchange(&url, &Secret::from("p"))
                .await
                .unwrap_err();
        }
    });
    let exchanges = dd.wait_for_exchanges(3, PATIENCE).await;
    assert_eq!(exchanges.len(), 3);
    assert!(exchanges.windows(2).all(|w| w[0].instant <= w[1].instant));
    sender.await.unwrap();
}

/// A TLS server on 127.0.0.1 with the self-signed certificate of `tests/fixtures/tls` (made with
/// `openssl req -x509 -newkey ec … -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1`),
/// answering every request with a key.
async fn self_signed_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let certs = CertificateDer::pem_file_iter(format!("{dir}/cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/key.pem")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client refusing the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(key_answer(
                        "0123456789abcdef0123456789abcdef",
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn tls_is_verified_unless_skip_ssl_validation() {
    let (addr, server) = self_signed_server().await;
    let url = format!("https://{addr}/api/v2/intake-key");

    let err = client()
        .exchange(&url, &Secret::from("p"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unavailable");
    assert!(err.to_string().contains("certificate"), "{err}");

    let trusting = ExchangeClient::with_env(
        &ClientOptions {
            skip_ssl_validation: true,
            ..ClientOptions::default()
        },
        |_| None,
    )
    .unwrap();
    let key = trusting.exchange(&url, &Secret::from("p")).await.unwrap();
    assert_eq!(key.expose(), "0123456789abcdef0123456789abcdef");
    server.abort();
}

/// What the FQDN server saw: the TLS server name (SNI) and the `Host` header of each request.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// A TLS server on 127.0.0.1 with a certificate for `api.datadoghq.com`, issued by the test CA
/// of `tests/fixtures/tls/fqdn` (made with `openssl req -x509 -newkey ec … -subj "/CN=…test CA"`
/// and a leaf with `subjectAltName=DNS:api.datadoghq.com`), answering every request with a key
/// and recording the SNI and `Host` it was sent.
async fn datadog_name_server() -> (SocketAddr, Seen, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/fqdn");
    let certs = CertificateDer::pem_file_iter(format!("{dir}/cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/key.pem")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let config = config.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                    rustls::server::Acceptor::default(),
                    stream,
                );
                let Ok(start) = acceptor.await else { return };
                let sni = start.client_hello().server_name().map(str::to_owned);
                // A client refusing the certificate ends the handshake: nothing to serve.
                let Ok(tls) = start.into_stream(config).await else {
                    log.lock().unwrap().push((sni, None));
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned);
                    log.lock().unwrap().push((sni.clone(), host));
                    async {
                        Ok::<_, std::convert::Infallible>(key_answer(
                            "0123456789abcdef0123456789abcdef",
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

/// Wire spec §10.3: the primary exchange goes to `https://api.<site>./api/v2/intake-key` (a fully
/// qualified name). Through the client's resolver override, `api.datadoghq.com.` reaches a
/// loopback server holding a certificate for `api.datadoghq.com` only: TLS verifies the
/// certificate against the name without the dot and sends the SNI without it, while the URL
/// (and so the `Host` header) keeps the dot.
#[tokio::test]
async fn a_fully_qualified_site_verifies_tls_against_the_name_without_the_dot() {
    let (addr, seen, server) = datadog_name_server().await;
    let ca = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tls/fqdn/ca.pem"
    ))
    .unwrap();
    let client_for = |roots: Vec<Vec<u8>>, host: &str| {
        ExchangeClient::with_env(
            &ClientOptions {
                extra_root_certs_pem: roots,
                resolve_overrides: vec![(host.to_owned(), addr)],
                ..ClientOptions::default()
            },
            |_| None,
        )
        .unwrap()
    };
    // The URL the daemon derives for `site: datadoghq.com` (no dd_url), on the server's port.
    let derived = datadog_delegated_auth::exchange::intake_key_url("https://app.datadoghq.com.");
    assert_eq!(derived, "https://api.datadoghq.com./api/v2/intake-key");
    let url = derived.replace(
        "api.datadoghq.com./",
        &format!("api.datadoghq.com.:{}/", addr.port()),
    );

    let key = client_for(vec![ca.clone()], "api.datadoghq.com.")
        .exchange(&url, &Secret::from("p"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(key.expose(), "0123456789abcdef0123456789abcdef");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(
            Some("api.datadoghq.com".to_owned()),
            Some(format!("api.datadoghq.com.:{}", addr.port()))
        )],
        "SNI without the dot, Host with it"
    );

    // The verification is real: without the test CA the same request is refused...
    let err = client_for(Vec::new(), "api.datadoghq.com.")
        .exchange(&url, &Secret::from("p"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // ...and so is a name the certificate does not hold, dot or not.
    let other = format!(
        "https://api.datadoghq.eu.:{}/api/v2/intake-key",
        addr.port()
    );
    let err = client_for(vec![ca], "api.datadoghq.eu.")
        .exchange(&other, &Secret::from("p"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let served = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, host)| host.is_some())
        .count();
    assert_eq!(served, 1, "only the verified connection sent a request");
    server.abort();
}

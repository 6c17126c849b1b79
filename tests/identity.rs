//! AWS identity end to end: each credential source resolves against a local emulator, the proof
//! built from its credentials is replayed to moto_server exactly as Datadog replays it to STS
//! (decode the four fields, rebuild Content-Length, keep Host), and moto, which checks every
//! SigV4 signature, answers with the expected caller ARN.
//!
//! Needs `moto_server` (`pip install 'moto[server]==5.2.1'`; scripts/test installs it).

mod aws_support;

use std::time::{Duration, Instant, SystemTime};

use aws_support::{
    ORG, assert_proves_role_session, assert_verified, assumed_role_arn, options, pairs, resolve,
    run_child,
};
use datadog_delegated_auth::aws::{
    AwsEnv, AwsOptions, CredentialSource, EnvironmentKind, Identity, build_proof, decode_proof,
};
use sandbox::ecs::{EcsEmulator, EcsOptions};
use sandbox::imds::{ImdsEmulator, ImdsOptions, TOKEN_HEADER, TokenMode};
use sandbox::moto::{DEFAULT_ROLE, Moto};
use sandbox::pod_identity::PodIdentityEmulator;

/// A comfortable IMDS timeout for a loaded 2-core machine (the Agent's default is 300 ms).
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// The child-process name of this file's child half.
const CHILD: &str = "child_identity";

/// The child half of the process-environment tests (see `aws_support`).
#[tokio::test]
#[ignore = "child half of the container and IRSA tests; they run it in a child process"]
async fn child_identity() {
    aws_support::child_main().await;
}

async fn moto() -> Moto {
    Moto::start()
        .await
        .expect("moto_server starts (pip install 'moto[server]==5.2.1')")
}

/// An environment whose IMDS is a loopback port nothing listens on (bound, noted, closed).
fn imds_nowhere() -> AwsEnv {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    AwsEnv::from_pairs([(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    )])
}

/// [`moto`] and temporary credentials of a `session` of its default role.
async fn moto_with_session(session: &str) -> (Moto, sandbox::moto::StaticCreds) {
    let moto = moto().await;
    let creds = moto.assume_role(DEFAULT_ROLE, session).await.unwrap();
    (moto, creds)
}

#[tokio::test]
async fn static_env_session_credentials_prove_the_role() {
    let (moto, creds) = moto_with_session("static-session").await;
    let identity = Identity::new(options(IMDS_TIMEOUT), AwsEnv::from_pairs(creds.env_vars()));
    assert_eq!(identity.source(), Some(CredentialSource::StaticEnv));
    let outcome = resolve(&identity).await;
    assert_eq!(outcome.kind, "static-env");
    assert_eq!(
        outcome.source.as_deref(),
        Some("static environment variables")
    );
    assert_proves_role_session(&moto.url(), &outcome, "static-session").await;
}

#[tokio::test]
async fn static_env_user_keys_without_token_and_a_regional_host() {
    let moto = moto().await;
    let mut env = moto.user_creds().env_vars();
    env.push(("AWS_REGION".into(), "eu-west-1".into()));
    let identity = Identity::new(options(IMDS_TIMEOUT), AwsEnv::from_pairs(env));
    let outcome = resolve(&identity).await;
    assert_eq!(outcome.region.as_deref(), Some("eu-west-1"));
    let decoded = decode_proof(outcome.proof()).unwrap();
    assert_eq!(decoded.url, "https://sts.eu-west-1.amazonaws.com");
    assert!(decoded.header("X-Amz-Security-Token").is_none());
    assert_verified(
        &moto.url(),
        outcome.proof(),
        "arn:aws:iam::123456789012:user/sandbox-user",
    )
    .await;
}

#[tokio::test]
async fn altered_org_header_or_body_is_refused() {
    let moto = moto().await;
    let creds = moto.assume_role(DEFAULT_ROLE, "tamper").await.unwrap();
    let identity = Identity::new(options(IMDS_TIMEOUT), AwsEnv::from_pairs(creds.env_vars()));
    let creds = identity.credentials().await.unwrap();
    let proof = build_proof(
        &creds,
        ORG,
        Some("us-east-1"),
        SystemTime::now(),
        aws_support::USER_AGENT,
    )
    .unwrap();
    let original = sandbox::sts::decode_proof(proof.expose()).unwrap();

    // Unaltered, it verifies (so the 403s below are about the alterations).
    let replay = sandbox::sts::replay_decoded(&moto.url(), &original)
        .await
        .unwrap();
    assert_eq!(replay.status, 200, "{}", replay.body);

    let mut other_org = original.clone();
    other_org.headers.insert(
        "X-Ddog-Org-Id".into(),
        vec!["99999999-2222-3333-4444-555555555555".into()],
    );
    let replay = sandbox::sts::replay_decoded(&moto.url(), &other_org)
        .await
        .unwrap();
    assert_eq!(
        replay.status, 403,
        "altered org header accepted: {}",
        replay.body
    );

    let mut other_body = original.clone();
    other_body.body = b"Action=GetCallerIdentity&Version=2011-06-15&X=1".to_vec();
    let replay = sandbox::sts::replay_decoded(&moto.url(), &other_body)
        .await
        .unwrap();
    assert_eq!(replay.status, 403, "altered body accepted: {}", replay.body);

    // The unsigned User-Agent may change in transit without breaking the proof.
    let mut other_agent = original.clone();
    other_agent
        .headers
        .insert("User-Agent".into(), vec!["proxy/1.0".into()]);
    let replay = sandbox::sts::replay_decoded(&moto.url(), &other_agent)
        .await
        .unwrap();
    assert_eq!(replay.status, 200, "{}", replay.body);
}

#[tokio::test]
async fn ec2_imdsv2_instance_profile_proves_the_role_and_rotates() {
    let (moto, first) = moto_with_session("i-0123456789abcdef0").await;
    let imds = ImdsEmulator::start(ImdsOptions {
        region: "eu-central-1".into(),
        credentials: Some(first),
        // Inside the renewal buffer: every resolution asks IMDS again, as near expiry.
        credential_ttl: Duration::from_secs(120),
        ..ImdsOptions::default()
    })
    .await
    .unwrap();
    let env = AwsEnv::from_pairs([("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())]);
    let identity = Identity::new(options(IMDS_TIMEOUT), env);
    assert_eq!(identity.source(), Some(CredentialSource::Imds));

    let outcome = resolve(&identity).await;
    assert_eq!(outcome.kind, "ec2");
    assert_eq!(outcome.source.as_deref(), Some("EC2 IMDS"));
    assert_eq!(
        outcome.region.as_deref(),
        Some("eu-central-1"),
        "region from the identity document"
    );
    assert_eq!(
        decode_proof(outcome.proof()).unwrap().url,
        "https://sts.eu-central-1.amazonaws.com"
    );
    assert_proves_role_session(&moto.url(), &outcome, "i-0123456789abcdef0").await;

    // IMDSv2 only: a token first, every GET carries it.
    let requests = imds.requests();
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].path, "/latest/api/token");
    assert!(
        requests[0]
            .header("x-aws-ec2-metadata-token-ttl-seconds")
            .is_some()
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.header(TOKEN_HEADER).is_some()),
        "{requests:?}"
    );

    // Rotation: the instance profile's credentials change; the next resolution picks them up.
    let rotated = moto
        .assume_role(DEFAULT_ROLE, "rotated-session")
        .await
        .unwrap();
    imds.set_credentials(rotated.clone());
    let creds = identity.credentials().await.unwrap();
    assert_eq!(creds.access_key_id, rotated.access_key_id);
    let proof = build_proof(
        &creds,
        ORG,
        None,
        SystemTime::now(),
        aws_support::USER_AGENT,
    )
    .unwrap();
    assert_verified(
        &moto.url(),
        proof.expose(),
        &assumed_role_arn(DEFAULT_ROLE, "rotated-session"),
    )
    .await;
}

#[tokio::test]
async fn credentials_are_cached_until_near_expiry() {
    let creds = sandbox::moto::StaticCreds::placeholder("ASIACACHED");
    let imds = ImdsEmulator::start(ImdsOptions {
        credentials: Some(creds),
        credential_ttl: Duration::from_secs(3600),
        ..ImdsOptions::default()
    })
    .await
    .unwrap();
    let identity = Identity::new(
        options(IMDS_TIMEOUT),
        AwsEnv::from_pairs([("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())]),
    );
    identity.credentials().await.unwrap();
    let after_first = imds.requests().len();
    identity.credentials().await.unwrap();
    assert_eq!(
        imds.requests().len(),
        after_first,
        "an hour-long credential was fetched twice"
    );
    identity.invalidate().await;
    identity.credentials().await.unwrap();
    assert!(
        imds.requests().len() > after_first,
        "invalidate did not force a new resolution"
    );
}

#[tokio::test]
async fn ecs_task_role_proves_the_role_with_region_from_task_metadata() {
    let (moto, creds) = moto_with_session("ecs-task-0123456789abcdef").await;
    let ecs = EcsEmulator::start(EcsOptions {
        auth_token: Some("ecs-auth-token".into()),
        region: "ap-southeast-2".into(),
        credentials: Some(creds),
        ..EcsOptions::default()
    })
    .await
    .unwrap();
    let env = pairs(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            ecs.full_uri().as_str(),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-auth-token"),
        (
            "ECS_CONTAINER_METADATA_URI_V4",
            ecs.metadata_uri_v4().as_str(),
        ),
    ]);
    let outcome = run_child(CHILD, &env, IMDS_TIMEOUT, &[]).await;
    assert_eq!(outcome.kind, "ecs");
    assert_eq!(
        outcome.source.as_deref(),
        Some("ECS/EKS container credentials")
    );
    assert_eq!(
        outcome.region.as_deref(),
        Some("ap-southeast-2"),
        "region from task metadata v4"
    );
    assert_proves_role_session(&moto.url(), &outcome, "ecs-task-0123456789abcdef").await;
    let credential_requests: Vec<_> = ecs
        .requests()
        .into_iter()
        .filter(|r| r.path == ecs.relative_uri())
        .collect();
    assert!(!credential_requests.is_empty());
    assert!(
        credential_requests
            .iter()
            .all(|r| r.header("authorization") == Some("ecs-auth-token"))
    );
}

#[tokio::test]
async fn ecs_endpoint_401_names_the_source_and_its_fix() {
    let ecs = EcsEmulator::start(EcsOptions {
        credentials: Some(sandbox::moto::StaticCreds::placeholder("ASIAUNUSED")),
        ..EcsOptions::default()
    })
    .await
    .unwrap();
    ecs.set_unauthorized(true);
    let env = pairs(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            ecs.full_uri().as_str(),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong"),
        ("AWS_REGION", "us-east-1"),
    ]);
    let outcome = run_child(CHILD, &env, IMDS_TIMEOUT, &[]).await;
    let error = outcome.error();
    assert_source_error(
        error,
        "ECS/EKS container credentials: ",
        &["401", "task role"],
        CredentialSource::Container,
    );
}

#[tokio::test]
async fn eks_pod_identity_proves_the_role_with_the_token_file() {
    let (moto, creds) = moto_with_session("eks-datadog-agent-pod").await;
    let dir = tempfile::tempdir().unwrap();
    let pod = PodIdentityEmulator::start_on(([127, 0, 0, 1], 0).into(), Some(creds), dir.path())
        .await
        .unwrap();
    let token = std::fs::read_to_string(pod.token_file()).unwrap();
    let env = pairs(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            pod.full_uri().as_str(),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            pod.token_file().to_string_lossy().as_ref(),
        ),
        ("AWS_REGION", "us-west-2"),
    ]);
    let outcome = run_child(CHILD, &env, IMDS_TIMEOUT, &[]).await;
    assert_eq!(outcome.kind, "eks-pod-identity");
    assert_eq!(outcome.region.as_deref(), Some("us-west-2"));
    assert_proves_role_session(&moto.url(), &outcome, "eks-datadog-agent-pod").await;
    let requests = pod.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some(token.as_str())),
        "{requests:?}"
    );

    // kubelet rotates the projected token: the file is read again on the next resolution.
    pod.rotate_token().unwrap();
    let outcome = run_child(CHILD, &env, IMDS_TIMEOUT, &[]).await;
    assert!(outcome.proof.is_some(), "{:?}", outcome.error);
}

#[tokio::test]
async fn eks_irsa_web_identity_proves_the_role() {
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.sig",
    )
    .unwrap();
    // AssumeRoleWithWebIdentity is unsigned; moto refuses unsigned calls while auth is on unless
    // some are reopened.
    moto.reset_auth(1).await.unwrap();
    let env = pairs(&[
        (
            "AWS_ROLE_ARN",
            format!("arn:aws:iam::123456789012:role/{DEFAULT_ROLE}").as_str(),
        ),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.to_string_lossy().as_ref(),
        ),
        ("AWS_ROLE_SESSION_NAME", "irsa-datadog-agent"),
        ("AWS_ENDPOINT_URL_STS", moto.url().as_str()),
        ("AWS_REGION", "us-east-1"),
    ]);
    let outcome = run_child(CHILD, &env, IMDS_TIMEOUT, &[]).await;
    assert_eq!(outcome.kind, "eks-irsa");
    assert_eq!(outcome.source.as_deref(), Some("IRSA web identity"));
    assert_proves_role_session(&moto.url(), &outcome, "irsa-datadog-agent").await;
}

#[tokio::test]
async fn irsa_token_file_missing_names_the_source_and_its_fix() {
    let env = AwsEnv::from_pairs([
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/DatadogAgentRole",
        ),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "/nonexistent/eks.amazonaws.com/serviceaccount/token",
        ),
    ]);
    let identity = Identity::new(options(IMDS_TIMEOUT), env);
    assert_eq!(identity.detect().await.kind, EnvironmentKind::EksIrsa);
    assert_source_error(
        &identity.credentials().await.unwrap_err().to_string(),
        "IRSA web identity: cannot read the token file /nonexistent/",
        &["eks.amazonaws.com/role-arn"],
        CredentialSource::WebIdentity,
    );
}

#[tokio::test]
async fn imds_down_names_the_source_and_its_fix() {
    let env = imds_nowhere();
    let identity = Identity::new(options(IMDS_TIMEOUT), env);
    let detection = identity.detect().await;
    assert_eq!(detection.kind, EnvironmentKind::None);
    let reason = detection.reason.unwrap();
    assert!(
        reason.contains("AWS_ROLE_ARN+AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{reason}"
    );
    assert!(reason.contains("EC2 IMDS did not answer"), "{reason}");
    assert_source_error(
        &identity.credentials().await.unwrap_err().to_string(),
        "EC2 IMDS: IMDS could not be reached",
        &["instance profile"],
        CredentialSource::Imds,
    );
}

#[tokio::test]
async fn imds_token_never_answered_fails_fast_with_the_hop_limit_fix() {
    let imds = ImdsEmulator::start(ImdsOptions {
        token_mode: TokenMode::NeverAnswer,
        credentials: Some(sandbox::moto::StaticCreds::placeholder("ASIAUNREACHABLE")),
        ..ImdsOptions::default()
    })
    .await
    .unwrap();
    let timeout = Duration::from_millis(500);
    let identity = Identity::new(
        options(timeout),
        AwsEnv::from_pairs([("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())]),
    );
    let started = Instant::now();
    let error = identity.credentials().await.unwrap_err().to_string();
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout, "failed before the timeout: {elapsed:?}");
    // The bound is ec2_metadata_timeout plus a margin; the margin allowed here is loose for a
    // loaded machine but far below the SDK's defaults (1 s per read, 4 attempts).
    assert!(
        elapsed < timeout + Duration::from_millis(1500),
        "took {elapsed:?}"
    );
    assert!(error.contains("ec2_metadata_timeout=500ms"), "{error}");
    assert!(error.contains("--http-put-response-hop-limit 2"), "{error}");
    assert!(error.contains("IMDS versions attempted=v2 only"), "{error}");
    // No IMDSv1 attempt: it was not allowed.
    assert!(
        imds.requests().iter().all(|r| r.method == "PUT"),
        "{:?}",
        imds.requests()
    );

    // Detection reports the same cause.
    let detection = identity.detect().await;
    assert_eq!(detection.kind, EnvironmentKind::None);
    assert!(detection.reason.unwrap().contains("hop-limit"));
}

#[tokio::test]
async fn imdsv1_is_used_only_when_allowed() {
    let (moto, creds) = moto_with_session("i-0fedcba9876543210").await;
    let imds = ImdsEmulator::start(ImdsOptions {
        allow_v1: true,
        token_mode: TokenMode::NeverAnswer,
        region: "us-west-1".into(),
        credentials: Some(creds),
        ..ImdsOptions::default()
    })
    .await
    .unwrap();
    let identity = Identity::new(
        AwsOptions {
            allow_imdsv1: true,
            ..options(Duration::from_millis(500))
        },
        AwsEnv::from_pairs([("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())]),
    );
    let outcome = resolve(&identity).await;
    assert_eq!(outcome.kind, "ec2");
    assert_eq!(outcome.region.as_deref(), Some("us-west-1"));
    assert_proves_role_session(&moto.url(), &outcome, "i-0fedcba9876543210").await;
    assert!(
        imds.requests()
            .iter()
            .any(|r| r.method == "GET" && r.header(TOKEN_HEADER).is_none()),
        "no IMDSv1 request was made"
    );
}

#[tokio::test]
async fn half_set_pairs_are_skipped_with_warnings_naming_the_missing_variable() {
    let creds = sandbox::moto::StaticCreds::placeholder("ASIAFROMIMDS");
    let imds = ImdsEmulator::start(ImdsOptions {
        credentials: Some(creds),
        ..ImdsOptions::default()
    })
    .await
    .unwrap();
    let env = AwsEnv::from_pairs([
        ("AWS_ACCESS_KEY_ID", "AKIAHALFSET"),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/DatadogAgentRole",
        ),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url().as_str()),
    ]);
    let identity = Identity::new(options(IMDS_TIMEOUT), env);
    assert_eq!(identity.source(), Some(CredentialSource::Imds));
    let warnings = identity.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"));
    assert!(warnings[1].starts_with("AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not"));
    // The chain went on to IMDS and it works.
    assert_eq!(
        identity.credentials().await.unwrap().access_key_id,
        "ASIAFROMIMDS"
    );
}

#[tokio::test]
async fn explicit_provider_skips_detection_but_not_resolution() {
    let env = imds_nowhere();
    let identity = Identity::new(
        AwsOptions {
            provider_explicit: true,
            ..options(IMDS_TIMEOUT)
        },
        env,
    );
    let detection = identity.detect().await;
    assert_eq!(
        detection.kind,
        EnvironmentKind::Ec2,
        "no probe with provider: aws"
    );
    assert!(
        identity
            .credentials()
            .await
            .unwrap_err()
            .to_string()
            .starts_with("EC2 IMDS")
    );
}

#[tokio::test]
async fn an_injected_environment_that_aws_config_cannot_see_is_refused() {
    // The container provider reads its variables from the process; an injected snapshot that
    // differs must fail loudly, not resolve with other settings.
    let env = AwsEnv::from_pairs([(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://127.0.0.1:9/v1/credentials",
    )]);
    let identity = Identity::new(options(IMDS_TIMEOUT), env);
    let error = identity.credentials().await.unwrap_err().to_string();
    assert!(
        error.starts_with("ECS/EKS container credentials: the environment snapshot differs"),
        "{error}"
    );
    assert!(
        error.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        "{error}"
    );
}

/// Asserts a credentials error opens with `start`, holds each of `fragments`, and carries no
/// other source's remediation than `source`'s.
fn assert_source_error(error: &str, start: &str, fragments: &[&str], source: CredentialSource) {
    assert!(error.starts_with(start), "{error}");
    for fragment in fragments {
        assert!(error.contains(fragment), "{error}");
    }
    assert_only_fix_of(error, source);
}

/// Asserts an error carries no other source's remediation.
fn assert_only_fix_of(error: &str, source: CredentialSource) {
    let fixes = [
        (
            CredentialSource::StaticEnv,
            "AWS_SESSION_TOKEN for temporary keys",
        ),
        (CredentialSource::WebIdentity, "eks.amazonaws.com/role-arn"),
        (CredentialSource::Container, "Pod Identity association"),
        (CredentialSource::Imds, "instance profile"),
    ];
    for (other, fix) in fixes {
        if other != source {
            assert!(
                !error.contains(fix),
                "error for {source} carries the fix of {other}: {error}"
            );
        }
    }
}

//! `datadog-delegated-auth doctor` through the real binary, against the sandbox: moto as STS
//! (it verifies every signature, so a passing `caller` check proves doctor sent exactly the
//! signed request, its `Host` included), the Datadog emulator for the test exchange, and the
//! IMDS and ECS emulators for the environments. Each run gets an explicit environment
//! (`env_clear`), never the test process's.
//!
//! Needs `moto_server` (`pip install 'moto[server]==5.2.1'`; scripts/test installs it).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::world::{PATTERN, SESSION, World, uuid};
use common::{base_env, cli};
use http::{Response, StatusCode};
use http_body_util::Full;
use sandbox::datadog::Outcome;
use sandbox::ecs::{EcsEmulator, EcsOptions};
use sandbox::http::HttpServer;
use sandbox::imds::{ImdsEmulator, ImdsOptions};
use sandbox::pod_identity::PodIdentityEmulator;
use serde_json::Value;

/// Settings with nothing special (doctor reads `imds.v1_fallback` from them).
const SETTINGS: &str = "log: { level: info }\n";

/// The ARN STS reports for the world's role session.
fn caller_arn() -> String {
    format!("arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/{SESSION}")
}

/// One doctor run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    checks: Vec<Value>,
}

impl Run {
    fn check(&self, name: &str) -> &Value {
        self.checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {}", self.stdout))
    }

    fn status(&self, name: &str) -> &str {
        self.check(name)["status"].as_str().unwrap()
    }

    /// Asserts the statuses of every check, in order, showing the report on failure.
    fn assert_statuses(&self, want: &[(&str, &str)]) {
        let got: Vec<(String, String)> = self
            .checks
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
            .collect();
        assert_eq!(got, want, "{}\nstderr: {}", self.stdout, self.stderr);
    }

    /// Fails if any of `secrets` appears whole in the output.
    fn assert_no_secrets(&self, secrets: &[String]) {
        for s in secrets.iter().filter(|s| s.len() >= 10) {
            assert!(
                !self.stdout.contains(s.as_str()) && !self.stderr.contains(s.as_str()),
                "a secret ending in {} was printed",
                &s[s.len() - 5..]
            );
        }
    }
}

/// Runs `doctor --json` (plus `args`) with `datadog_yaml` and exactly `env`.
fn doctor(datadog_yaml: &str, env: &HashMap<String, String>, args: &[&str]) -> Run {
    doctor_with(datadog_yaml, SETTINGS, env, args)
}

/// [`doctor`] with `settings_yaml` as `delegated-auth.yaml`.
fn doctor_with(
    datadog_yaml: &str,
    settings_yaml: &str,
    env: &HashMap<String, String>,
    args: &[&str],
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("datadog.yaml");
    let settings = dir.path().join("delegated-auth.yaml");
    std::fs::write(&config, datadog_yaml).unwrap();
    std::fs::write(&settings, settings_yaml).unwrap();
    let mut argv = vec![
        "doctor",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--settings",
        settings.to_str().unwrap(),
    ];
    argv.extend_from_slice(args);
    let (code, stdout, stderr) = cli(&argv, env);
    let checks: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("doctor --json printed no JSON array ({e}):\n{stdout}\n{stderr}")
    });
    Run {
        code,
        stdout,
        stderr,
        checks,
    }
}

/// Runs `doctor` without `--json` and returns (code, stdout).
fn doctor_text(datadog_yaml: &str, env: &HashMap<String, String>) -> (i32, String) {
    let (code, stdout, _) = doctor_text_with(datadog_yaml, SETTINGS, env);
    (code, stdout)
}

/// [`doctor_text`] with `settings_yaml` as `delegated-auth.yaml`; returns (code, stdout, stderr).
fn doctor_text_with(
    datadog_yaml: &str,
    settings_yaml: &str,
    env: &HashMap<String, String>,
) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("datadog.yaml");
    std::fs::write(&config, datadog_yaml).unwrap();
    let settings = dir.path().join("delegated-auth.yaml");
    std::fs::write(&settings, settings_yaml).unwrap();
    let (code, stdout, stderr) = cli(
        &[
            "doctor",
            "--config",
            config.to_str().unwrap(),
            "--settings",
            settings.to_str().unwrap(),
        ],
        env,
    );
    (code, stdout, stderr)
}

/// The world's role credentials as static variables, with STS pointed at moto.
fn static_env_with_moto_sts(world: &World) -> HashMap<String, String> {
    let mut env = world.static_env();
    env.insert("AWS_ENDPOINT_URL_STS".into(), world.moto.url());
    env
}

const ALL_OK: [(&str, &str); 8] = [
    ("config", "ok"),
    ("environment", "ok"),
    ("credentials", "ok"),
    ("region", "ok"),
    ("clock", "ok"),
    ("caller", "ok"),
    ("mapping", "ok"),
    ("exchange", "ok"),
];

#[test]
fn ec2_instance_profile_passes_every_check() {
    let world = World::start();
    let imds = world
        .rt
        .block_on(ImdsEmulator::start(ImdsOptions {
            region: "eu-central-1".into(),
            credentials: Some(world.creds.clone()),
            ..ImdsOptions::default()
        }))
        .unwrap();
    let mut env = base_env();
    env.insert("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), imds.url());
    env.insert("AWS_ENDPOINT_URL_STS".into(), world.moto.url());
    // The Agent's default IMDS timeout is 300 ms; a loaded test machine needs more.
    let run = doctor(
        &world.datadog_yaml("ec2_metadata_timeout: 3000\n"),
        &env,
        &[],
    );
    run.assert_statuses(&ALL_OK);
    assert_eq!(run.code, 0);

    let environment = run.check("environment");
    assert_eq!(environment["data"]["kind"], "ec2");
    assert_eq!(environment["data"]["source"], "EC2 IMDS");
    assert_eq!(run.check("credentials")["data"]["temporary"], true);
    let region = run.check("region");
    assert_eq!(region["data"]["region"], "eu-central-1");
    assert_eq!(
        region["data"]["region_source"],
        "the EC2 instance identity document"
    );
    assert_eq!(region["data"]["sts_host"], "sts.eu-central-1.amazonaws.com");
    assert_eq!(run.check("caller")["data"]["arn"], caller_arn());
    assert_eq!(run.check("caller")["data"]["account"], "123456789012");
    let mapping = run.check("mapping");
    assert_eq!(mapping["data"]["pattern"], PATTERN);
    assert_eq!(
        mapping["data"]["command"],
        format!("datadog-delegated-auth mapping create --arn-pattern '{PATTERN}'")
    );
    assert!(
        run.check("clock")["data"]["offset_seconds"]
            .as_f64()
            .unwrap()
            .abs()
            < 60.0
    );
    let config = run.check("config");
    assert_eq!(config["data"]["instance"], "api_key");
    assert_eq!(config["data"]["org_uuid"], world.org.uuid.as_str());

    // The test exchange really happened, and its key is shown only by its last five characters.
    let exchanges = world.dd.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    assert_eq!(exchanges[0].outcome, Outcome::Issued);
    let issued = world.dd.issued_keys(&world.org.uuid);
    let key = &issued[0].key;
    let finding = run.check("exchange")["finding"].as_str().unwrap();
    assert!(
        finding.contains(&format!("***{}", &key[key.len() - 5..])),
        "{finding}"
    );
    run.assert_no_secrets(&world.secrets());
    // IMDSv2 only: every metadata GET carried a token.
    assert!(
        imds.requests()
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.header(sandbox::imds::TOKEN_HEADER).is_some())
    );
}

#[test]
fn ecs_task_role_passes_every_check() {
    let world = World::start();
    let ecs = world
        .rt
        .block_on(EcsEmulator::start(EcsOptions {
            auth_token: Some("ecs-auth-token".into()),
            region: "ap-southeast-2".into(),
            credentials: Some(world.creds.clone()),
            ..EcsOptions::default()
        }))
        .unwrap();
    let mut env = base_env();
    env.insert("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), ecs.full_uri());
    env.insert(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN".into(),
        "ecs-auth-token".into(),
    );
    env.insert(
        "ECS_CONTAINER_METADATA_URI_V4".into(),
        ecs.metadata_uri_v4(),
    );
    env.insert("AWS_ENDPOINT_URL_STS".into(), world.moto.url());
    let run = doctor(&world.datadog_yaml(""), &env, &[]);
    run.assert_statuses(&ALL_OK);
    assert_eq!(run.code, 0);
    assert_eq!(run.check("environment")["data"]["kind"], "ecs");
    assert_eq!(
        run.check("environment")["data"]["source"],
        "ECS/EKS container credentials"
    );
    let region = run.check("region");
    assert_eq!(region["data"]["region"], "ap-southeast-2");
    assert_eq!(region["data"]["region_source"], "ECS task metadata");
    assert_eq!(
        region["data"]["sts_host"],
        "sts.ap-southeast-2.amazonaws.com"
    );
    assert_eq!(run.check("caller")["data"]["arn"], caller_arn());
    let mut secrets = world.secrets();
    secrets.push("ecs-auth-token".into());
    run.assert_no_secrets(&secrets);
}

#[test]
fn eks_pod_identity_passes_every_check() {
    let world = World::start();
    let pod = world
        .rt
        .block_on(PodIdentityEmulator::start(Some(world.creds.clone())))
        .unwrap();
    let mut env = base_env();
    env.insert("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), pod.full_uri());
    env.insert(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(),
        pod.token_file().to_str().unwrap().to_owned(),
    );
    env.insert("AWS_REGION".into(), "us-west-2".into());
    env.insert("AWS_ENDPOINT_URL_STS".into(), world.moto.url());
    let run = doctor(&world.datadog_yaml(""), &env, &[]);
    run.assert_statuses(&ALL_OK);
    assert_eq!(run.check("environment")["data"]["kind"], "eks-pod-identity");
    assert_eq!(run.check("region")["data"]["region_source"], "AWS_REGION");
    assert_eq!(
        run.check("region")["data"]["sts_host"],
        "sts.us-west-2.amazonaws.com"
    );
    assert_eq!(run.check("caller")["data"]["arn"], caller_arn());
    let token = std::fs::read_to_string(pod.token_file()).unwrap();
    let mut secrets = world.secrets();
    secrets.push(token.trim().to_owned());
    run.assert_no_secrets(&secrets);
}

#[test]
fn without_aws_the_environment_is_none_with_a_clear_fix() {
    // Everything points nowhere: no AWS variables, IMDS on a closed port (base_env), and a
    // Datadog endpoint on another closed port that must never be contacted.
    let yaml = "api_key: 0123456789abcdef0123456789abcdef\ndd_url: http://127.0.0.1:9\n\
                delegated_auth:\n  org_uuid: 11111111-2222-3333-4444-555555555555\n";
    let run = doctor(yaml, &base_env(), &[]);
    assert_eq!(run.code, 1);
    run.assert_statuses(&[
        ("config", "ok"),
        ("environment", "fail"),
        ("credentials", "skip"),
        ("region", "ok"),
        ("clock", "skip"),
        ("caller", "skip"),
        ("mapping", "skip"),
        ("exchange", "skip"),
    ]);
    let environment = run.check("environment");
    assert_eq!(environment["data"]["kind"], "none");
    let finding = environment["finding"].as_str().unwrap();
    assert!(
        finding.starts_with("none: no AWS credential source found"),
        "{finding}"
    );
    assert!(finding.contains("EC2 IMDS"), "{finding}");
    let fix = environment["fix"].as_str().unwrap();
    assert!(
        fix.contains("instance profile") && fix.contains("AWS_ACCESS_KEY_ID"),
        "{fix}"
    );
    assert_eq!(run.check("region")["data"]["sts_host"], "sts.amazonaws.com");

    // The text report says the same, one line per check, the fix under the failure.
    let (code, text) = doctor_text(yaml, &base_env());
    assert_eq!(code, 1);
    assert!(
        text.contains("[FAIL] environment none: no AWS credential source found"),
        "{text}"
    );
    assert!(
        text.contains("fix: run the daemon where an AWS identity is available"),
        "{text}"
    );
    assert!(text.contains("[skip] exchange"), "{text}");
    assert!(text.trim_end().ends_with("1 check(s) failed."), "{text}");
}

#[test]
fn unmapped_arn_gets_the_servers_detail_and_the_pattern_then_mapping_create_fixes_it() {
    let world = World::start();
    let org = world.dd.add_org(&uuid());
    let yaml = format!(
        "dd_url: {}\ndelegated_auth:\n  org_uuid: {}\n",
        world.dd.url(),
        org.uuid
    );
    let mut env = static_env_with_moto_sts(&world);
    env.insert("AWS_REGION".into(), "us-east-1".into());
    let run = doctor(&yaml, &env, &[]);
    assert_eq!(run.code, 1);
    run.assert_statuses(&[
        ("config", "ok"),
        ("environment", "ok"),
        ("credentials", "ok"),
        ("region", "ok"),
        ("clock", "ok"),
        ("caller", "ok"),
        ("mapping", "ok"),
        ("exchange", "fail"),
    ]);
    assert_eq!(run.check("environment")["data"]["kind"], "static-env");
    assert_eq!(run.check("mapping")["data"]["pattern"], PATTERN);
    let exchange = run.check("exchange");
    let detail = exchange["data"]["detail"].as_str().unwrap();
    assert_eq!(
        detail,
        format!(
            "Authenticated as {} but no identity mapping was found.",
            caller_arn()
        )
    );
    assert!(exchange["finding"].as_str().unwrap().contains(detail));
    let fix = exchange["fix"].as_str().unwrap();
    assert!(
        fix.starts_with(&format!(
            "create the mapping above: `datadog-delegated-auth mapping create --arn-pattern '{PATTERN}'`"
        )),
        "{fix}"
    );
    assert!(fix.contains(&org.uuid), "{fix}");
    assert_eq!(world.dd.exchanges()[0].outcome, Outcome::Unmapped);

    // Following the fix, with the same binary, makes doctor pass.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("datadog.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let mut admin = base_env();
    admin.insert("DD_API_KEY".into(), org.api_key.clone());
    admin.insert("DD_APP_KEY".into(), org.app_key.clone());
    let (code, out, err) = cli(
        &[
            "mapping",
            "create",
            "--arn-pattern",
            PATTERN,
            "--config",
            config.to_str().unwrap(),
        ],
        &admin,
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = doctor(&yaml, &env, &[]);
    run.assert_statuses(&ALL_OK);
    assert_eq!(run.code, 0);
    let mut secrets = world.secrets();
    secrets.extend([org.api_key.clone(), org.app_key.clone()]);
    secrets.extend(world.dd.issued_keys(&org.uuid).into_iter().map(|k| k.key));
    run.assert_no_secrets(&secrets);
}

/// A loopback forwarder to moto that shifts the `Date` header of every answer by `shift`
/// (negative: STS's clock is behind ours, i.e. ours is ahead) and records the `Host` header of
/// every request it forwards.
struct SkewedSts {
    server: HttpServer,
    hosts: Arc<Mutex<Vec<String>>>,
}

impl SkewedSts {
    async fn start(moto_url: String, shift_secs: i64) -> SkewedSts {
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&hosts);
        let server = HttpServer::spawn(([127, 0, 0, 1], 0).into(), move |request| {
            let moto_url = moto_url.clone();
            let seen = Arc::clone(&seen);
            async move {
                let headers: Vec<(String, String)> = request
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                if let Some((_, host)) = headers.iter().find(|(k, _)| k == "host") {
                    seen.lock().unwrap().push(host.clone());
                }
                let path = request.uri().path().to_owned();
                let answer = sandbox::http::send(
                    request.method().clone(),
                    &format!("{moto_url}{path}"),
                    &headers,
                    request.body().clone(),
                )
                .await;
                let Ok(answer) = answer else {
                    return Response::builder()
                        .status(StatusCode::BAD_GATEWAY)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                };
                let shifted = if shift_secs >= 0 {
                    SystemTime::now() + Duration::from_secs(shift_secs as u64)
                } else {
                    SystemTime::now() - Duration::from_secs(shift_secs.unsigned_abs())
                };
                let mut response = Response::builder().status(answer.status);
                for (name, value) in &answer.headers {
                    if name != http::header::DATE
                        && name != http::header::CONTENT_LENGTH
                        && name != http::header::TRANSFER_ENCODING
                    {
                        response = response.header(name, value);
                    }
                }
                response
                    .header(http::header::DATE, httpdate::fmt_http_date(shifted))
                    .body(Full::new(answer.body))
                    .unwrap()
            }
        })
        .await
        .unwrap();
        SkewedSts { server, hosts }
    }
}

#[test]
fn a_clock_ten_minutes_ahead_fails_the_clock_and_the_exchange() {
    let world = World::start();
    // Our clock 10 minutes ahead: STS's Date and Datadog's clock are both 10 minutes behind it.
    let sts = world.rt.block_on(SkewedSts::start(world.moto.url(), -600));
    world.dd.set_clock_offset(-600);
    let mut env = world.static_env();
    env.insert("AWS_REGION".into(), "us-east-1".into());
    env.insert("AWS_ENDPOINT_URL_STS".into(), sts.server.url());
    let run = doctor(&world.datadog_yaml(""), &env, &[]);
    assert_eq!(run.code, 1);
    run.assert_statuses(&[
        ("config", "ok"),
        ("environment", "ok"),
        ("credentials", "ok"),
        ("region", "ok"),
        ("clock", "fail"),
        // moto does not check X-Amz-Date freshness (real STS allows 15 minutes).
        ("caller", "ok"),
        ("mapping", "ok"),
        ("exchange", "fail"),
    ]);
    let clock = run.check("clock");
    let offset = clock["data"]["offset_seconds"].as_f64().unwrap();
    assert!((offset - 600.0).abs() < 5.0, "{offset}");
    let finding = clock["finding"].as_str().unwrap();
    assert!(
        finding.contains("10m") && finding.contains("ahead of"),
        "{finding}"
    );
    assert!(clock["fix"].as_str().unwrap().contains("chrony/ntp"));
    let exchange = run.check("exchange");
    assert!(
        exchange["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("X-Amz-Date"),
        "{exchange}"
    );
    assert!(
        exchange["fix"]
            .as_str()
            .unwrap()
            .starts_with("sync the clock")
    );
    assert_eq!(world.dd.exchanges()[0].outcome, Outcome::BadProof);
    // The request went to the forwarder but was signed for, and carried, the real STS host.
    assert_eq!(
        *sts.hosts.lock().unwrap(),
        vec!["sts.us-east-1.amazonaws.com".to_owned()]
    );

    // Two minutes off only warns, and the exchange (within Datadog's 5 minutes) succeeds.
    let sts = world.rt.block_on(SkewedSts::start(world.moto.url(), -120));
    world.dd.set_clock_offset(-120);
    env.insert("AWS_ENDPOINT_URL_STS".into(), sts.server.url());
    let run = doctor(&world.datadog_yaml(""), &env, &[]);
    assert_eq!(run.status("clock"), "warn", "{}", run.stdout);
    assert_eq!(run.status("exchange"), "ok", "{}", run.stdout);
    assert_eq!(run.code, 0);
}

#[test]
fn unreachable_sts_only_warns_and_the_pattern_comes_from_datadogs_refusal() {
    let world = World::start();
    let org = world.dd.add_org(&uuid());
    let yaml = format!(
        "dd_url: {}\ndelegated_auth:\n  org_uuid: {}\n",
        world.dd.url(),
        org.uuid
    );
    let mut env = world.static_env();
    env.insert("AWS_REGION".into(), "eu-west-1".into());
    env.insert("AWS_ENDPOINT_URL_STS".into(), "http://127.0.0.1:9".into());
    let run = doctor(&yaml, &env, &[]);
    run.assert_statuses(&[
        ("config", "ok"),
        ("environment", "ok"),
        ("credentials", "ok"),
        ("region", "ok"),
        ("clock", "warn"),
        ("caller", "warn"),
        ("mapping", "ok"),
        ("exchange", "fail"),
    ]);
    assert!(
        run.check("caller")["fix"]
            .as_str()
            .unwrap()
            .contains("never calls STS"),
        "{}",
        run.stdout
    );
    assert_eq!(run.check("mapping")["data"]["pattern"], PATTERN);
    assert_eq!(run.check("exchange")["data"]["caller_arn"], caller_arn());

    // With the mapping in place the host works without reaching STS itself: exit 0.
    world.dd.add_intake_mapping(&org.uuid, PATTERN);
    let run = doctor(&yaml, &env, &[]);
    assert_eq!(run.status("exchange"), "ok", "{}", run.stdout);
    assert_eq!(run.code, 0);
}

#[test]
fn a_broken_configuration_fails_config_but_the_aws_checks_still_run() {
    let world = World::start();
    let mut env = static_env_with_moto_sts(&world);
    env.insert("AWS_REGION".into(), "us-east-1".into());
    let run = doctor("delegated_auth:\n  org_uuid: not-a-uuid\n", &env, &[]);
    assert_eq!(run.code, 1);
    run.assert_statuses(&[
        ("config", "fail"),
        ("environment", "ok"),
        ("credentials", "ok"),
        ("region", "ok"),
        ("clock", "ok"),
        ("caller", "ok"),
        ("mapping", "ok"),
        ("exchange", "skip"),
    ]);
    let config = run.check("config");
    assert!(
        config["finding"].as_str().unwrap().contains("org_uuid"),
        "{config}"
    );
    assert!(config["fix"].as_str().unwrap().contains("check-config"));
    assert_eq!(run.check("caller")["data"]["arn"], caller_arn());
    assert!(world.dd.exchanges().is_empty());
}

#[test]
fn instance_selection() {
    let world = World::start();
    let logs_org = world.dd.add_org(&uuid());
    world.dd.add_intake_mapping(&logs_org.uuid, PATTERN);
    let yaml = world.datadog_yaml(&format!(
        "logs_config:\n  delegated_auth:\n    org_uuid: {}\n",
        logs_org.uuid
    ));
    let mut env = static_env_with_moto_sts(&world);
    env.insert("AWS_REGION".into(), "us-east-1".into());

    let run = doctor(&yaml, &env, &["--instance", "logs_config.api_key"]);
    run.assert_statuses(&ALL_OK);
    assert_eq!(
        run.check("config")["data"]["org_uuid"],
        logs_org.uuid.as_str()
    );
    assert_eq!(world.dd.issued_keys(&logs_org.uuid).len(), 1);
    assert!(world.dd.issued_keys(&world.org.uuid).is_empty());

    let run = doctor(&yaml, &env, &["--instance", "nope"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.status("config"), "fail");
    let finding = run.check("config")["finding"].as_str().unwrap();
    assert!(
        finding.contains("\"nope\"") && finding.contains("logs_config.api_key"),
        "{finding}"
    );
    assert_eq!(run.status("exchange"), "skip");

    // An inert entry (wire spec §10.2): doctor still tests the rest, warns about the entry, and
    // fails when asked to test it.
    let bad = format!(
        "{yaml}additional_endpoints:\n  \"\": [\"DELA[{}, aws]\"]\n",
        logs_org.uuid
    );
    let run = doctor(&bad, &env, &[]);
    assert_eq!(run.status("config"), "warn");
    assert!(
        run.check("config")["finding"]
            .as_str()
            .unwrap()
            .contains("1 invalid entry stays inert: additional_endpoints[][0]"),
        "{}",
        run.check("config")
    );
    assert_eq!(run.status("exchange"), "ok");
    let run = doctor(&bad, &env, &["--instance", "additional_endpoints[][0]"]);
    assert_eq!(run.status("config"), "fail");
    assert!(
        run.check("config")["finding"]
            .as_str()
            .unwrap()
            .contains("has no domain"),
        "{}",
        run.check("config")
    );

    // A static-only configuration has nothing to test the exchange with.
    let run = doctor("api_key: 0123456789abcdef0123456789abcdef\n", &env, &[]);
    assert_eq!(run.status("config"), "fail");
    assert!(
        run.check("config")["fix"]
            .as_str()
            .unwrap()
            .contains("delegated_auth.org_uuid")
    );
    assert_eq!(run.status("caller"), "ok", "the AWS side is still checked");
}

#[test]
fn sts_refusals_name_the_cause() {
    let world = World::start();
    let mut env = static_env_with_moto_sts(&world);
    env.insert("AWS_REGION".into(), "us-east-1".into());
    // Right key id, wrong secret: STS (moto) refuses the signature; Datadog would too.
    env.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
    );
    let run = doctor(&world.datadog_yaml(""), &env, &[]);
    assert_eq!(run.code, 1);
    assert_eq!(run.status("caller"), "fail", "{}", run.stdout);
    let caller = run.check("caller");
    let finding = caller["finding"].as_str().unwrap();
    assert!(
        finding.starts_with("STS refused the signed GetCallerIdentity (HTTP 403"),
        "{finding}"
    );
    assert_eq!(caller["data"]["sts_code"], "SignatureDoesNotMatch");
    assert!(
        caller["fix"].as_str().unwrap().contains("secret key"),
        "{caller}"
    );
    assert_eq!(run.status("mapping"), "skip");
    assert_eq!(run.status("exchange"), "fail");
    assert_eq!(run.check("exchange")["data"]["error_kind"], "unauthorized");
}

#[test]
fn json_and_text_agree() {
    // The `Run` helper parses JSON; here the shape of one element is pinned for scripts.
    let world = World::start();
    let mut env = static_env_with_moto_sts(&world);
    env.insert("AWS_REGION".into(), "us-east-1".into());
    let run = doctor(&world.datadog_yaml(""), &env, &[]);
    for check in &run.checks {
        let keys: Vec<&str> = check
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in ["name", "status", "finding", "fix"] {
            assert!(keys.contains(&key), "{check}");
        }
        assert!(
            ["ok", "warn", "fail", "skip"].contains(&check["status"].as_str().unwrap()),
            "{check}"
        );
    }
    let (code, text) = doctor_text(&world.datadog_yaml(""), &env);
    assert_eq!(code, 0, "{text}");
    for check in &run.checks {
        let line = format!(
            "[{}]",
            check["status"].as_str().unwrap().replace("fail", "FAIL")
        );
        assert!(
            text.lines().any(|l| l.starts_with(&line)
                && l.contains(&format!(" {} ", check["name"].as_str().unwrap()))),
            "{text}"
        );
    }
    assert!(text.trim_end().ends_with("All checks passed."), "{text}");
    // One test exchange per run, each issuing a key.
    let exchanges = world.dd.exchanges();
    assert_eq!(exchanges.len(), 2, "{exchanges:?}");
    assert!(exchanges.iter().all(|e| e.outcome == Outcome::Issued));
}

/// Settings with one delegated API token, `automation`, for `org_uuid` at `api_url`.
fn token_settings(org_uuid: &str, api_url: &str) -> String {
    format!(
        "{SETTINGS}tokens:\n  - name: automation\n    org_uuid: {org_uuid}\n    api_url: {api_url}\n"
    )
}

/// The name of the `automation` token's check.
const TOKEN_CHECK: &str = "token exchange (automation)";

/// Every check passing, then the `automation` token's with `status`.
fn all_ok_then_token(status: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut want = ALL_OK.to_vec();
    want.push((TOKEN_CHECK, status));
    want
}

#[test]
fn a_token_without_a_persona_mapping_fails_naming_the_mapping_to_create() {
    let world = World::start();
    let settings = token_settings(&world.org.uuid, &world.dd.url());
    let yaml = world.datadog_yaml("");
    let mut env = static_env_with_moto_sts(&world);
    env.insert("AWS_REGION".into(), "us-east-1".into());
    let run = doctor_with(&yaml, &settings, &env, &[]);
    run.assert_statuses(&all_ok_then_token("fail"));
    assert_eq!(run.code, 1, "a failed token check fails doctor");

    let check = run.check(TOKEN_CHECK);
    let detail = check["data"]["detail"].as_str().unwrap();
    assert_eq!(
        detail,
        format!(
            "Authenticated as {} but no persona mapping was found.",
            caller_arn()
        )
    );
    let finding = check["finding"].as_str().unwrap();
    assert!(finding.contains(detail), "{finding}");
    assert!(finding.contains("delegated API token"), "{finding}");
    let command = format!(
        "datadog-delegated-auth mapping create --persona --arn-pattern '{PATTERN}' \
         --account-identifier <service-account-or-user-email>"
    );
    let fix = check["fix"].as_str().unwrap();
    assert!(fix.contains(&command), "{fix}");
    assert!(fix.contains(&world.org.uuid), "{fix}");
    assert_eq!(check["data"]["token"], "automation");
    assert_eq!(check["data"]["org_uuid"], world.org.uuid.as_str());
    assert_eq!(check["data"]["pattern"], PATTERN);
    assert_eq!(check["data"]["command"], command.as_str());
    assert_eq!(check["data"]["error_kind"], "unauthorized");
    let exchanges = world.dd.token_exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    assert_eq!(exchanges[0].outcome, Outcome::Unmapped);

    // The text report names the same command, under the failed check.
    let (code, text, _) = doctor_text_with(&yaml, &settings, &env);
    assert_eq!(code, 1);
    assert!(text.contains(&format!("[FAIL] {TOKEN_CHECK} ")), "{text}");
    assert!(text.contains(&command), "{text}");
    assert!(text.trim_end().ends_with("1 check(s) failed."), "{text}");

    // Following the fix (with a real account for the placeholder) makes doctor pass.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("datadog.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let mut admin = base_env();
    admin.insert("DD_API_KEY".into(), world.org.api_key.clone());
    admin.insert("DD_APP_KEY".into(), world.org.app_key.clone());
    let (code, out, err) = cli(
        &[
            "mapping",
            "create",
            "--persona",
            "--arn-pattern",
            PATTERN,
            "--account-identifier",
            "automation@example.com",
            "--config",
            config.to_str().unwrap(),
        ],
        &admin,
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = doctor_with(&yaml, &settings, &env, &[]);
    run.assert_statuses(&all_ok_then_token("ok"));
    assert_eq!(run.code, 0);
    // World::secrets() holds every token issued.
    run.assert_no_secrets(&world.secrets());
}

#[test]
fn a_mapped_token_passes_with_its_lifetime_and_is_never_printed() {
    let world = World::start();
    world
        .dd
        .add_persona_mapping(&world.org.uuid, PATTERN, "automation@example.com");
    world.dd.set_token_lifetime(Duration::from_secs(3600));
    let settings = token_settings(&world.org.uuid, &world.dd.url());
    let yaml = world.datadog_yaml("");
    let env = static_env_with_moto_sts(&world);

    // --json: the token's check is in the array like the others.
    let run = doctor_with(&yaml, &settings, &env, &[]);
    run.assert_statuses(&all_ok_then_token("ok"));
    assert_eq!(run.code, 0);
    let check = run.check(TOKEN_CHECK);
    assert_eq!(check["fix"], Value::Null);
    assert_eq!(check["data"]["token"], "automation");
    assert_eq!(check["data"]["org_uuid"], world.org.uuid.as_str());
    assert_eq!(check["data"]["expiry_assumed"], false);
    assert_eq!(
        check["data"]["url"],
        format!("{}/api/v2/delegated-token", world.dd.url())
    );
    let lifetime = check["data"]["lifetime_seconds"].as_u64().unwrap();
    assert!((3500..=3600).contains(&lifetime), "{lifetime}");
    let finding = check["finding"].as_str().unwrap();
    assert!(finding.contains("valid for 1h"), "{finding}");
    assert!(finding.contains(&world.org.uuid), "{finding}");
    let issued = world.dd.issued_tokens(&world.org.uuid);
    assert_eq!(issued.len(), 1, "one test exchange per doctor run");
    assert_eq!(issued[0].caller_arn, caller_arn());

    // The text report says the same; neither run printed the token.
    let (code, text, stderr) = doctor_text_with(&yaml, &settings, &env);
    assert_eq!(code, 0, "{text}{stderr}");
    assert!(text.contains(&format!("[ok]   {TOKEN_CHECK} ")), "{text}");
    assert!(text.contains("valid for 1h"), "{text}");
    assert!(text.trim_end().ends_with("All checks passed."), "{text}");
    let tokens: Vec<String> = world
        .dd
        .issued_tokens(&world.org.uuid)
        .into_iter()
        .map(|t| t.token)
        .collect();
    assert_eq!(tokens.len(), 2);
    for token in &tokens {
        for out in [&run.stdout, &run.stderr, &text, &stderr] {
            assert!(!out.contains(token.as_str()), "the token was printed");
            // Nor any of its three JWT parts (header and claims are not secret, the signature is).
            let signature = token.rsplit('.').next().unwrap();
            assert!(
                !out.contains(signature),
                "the token's signature was printed"
            );
        }
    }
    run.assert_no_secrets(&world.secrets());
}

#[test]
fn a_token_answer_without_expires_passes_saying_the_lifetime_was_assumed() {
    let world = World::start();
    world
        .dd
        .add_persona_mapping(&world.org.uuid, PATTERN, "automation@example.com");
    world
        .dd
        .inject_token_fault(sandbox::datadog::Fault::token_without_expiry());
    let settings = token_settings(&world.org.uuid, &world.dd.url());
    let run = doctor_with(
        &world.datadog_yaml(""),
        &settings,
        &static_env_with_moto_sts(&world),
        &[],
    );
    run.assert_statuses(&all_ok_then_token("ok"));
    let check = run.check(TOKEN_CHECK);
    assert_eq!(check["data"]["expiry_assumed"], true);
    let finding = check["finding"].as_str().unwrap();
    assert!(
        finding.contains("15m") && finding.contains("assumed"),
        "{finding}"
    );
}

#[test]
fn token_exchange_failures_other_than_a_refusal_get_the_intake_exchanges_fixes() {
    let world = World::start();
    world
        .dd
        .add_persona_mapping(&world.org.uuid, PATTERN, "automation@example.com");
    world
        .dd
        .inject_token_fault(sandbox::datadog::Fault::status(429).retry_after("30"));
    let settings = token_settings(&world.org.uuid, &world.dd.url());
    let yaml = world.datadog_yaml("");
    let env = static_env_with_moto_sts(&world);
    let run = doctor_with(&yaml, &settings, &env, &[]);
    run.assert_statuses(&all_ok_then_token("fail"));
    let check = run.check(TOKEN_CHECK);
    assert_eq!(check["data"]["error_kind"], "throttled");
    assert!(
        check["fix"].as_str().unwrap().contains("rate limiting"),
        "{check}"
    );

    // Nothing listening at the token's api_url: the network fix names it.
    let settings = token_settings(&world.org.uuid, "http://127.0.0.1:9");
    let run = doctor_with(&yaml, &settings, &env, &[]);
    run.assert_statuses(&all_ok_then_token("fail"));
    let check = run.check(TOKEN_CHECK);
    assert_eq!(check["data"]["error_kind"], "unavailable");
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("network access to http://127.0.0.1:9"),
        "{check}"
    );
}

#[test]
fn tokens_without_a_delegated_instance_are_still_tested() {
    // A static key only: the intake exchange has nothing to test, the token check still runs.
    let world = World::start();
    world
        .dd
        .add_persona_mapping(&world.org.uuid, PATTERN, "automation@example.com");
    let yaml = format!(
        "api_key: {}\ndd_url: {}\n",
        world.org.api_key,
        world.dd.url()
    );
    let settings = token_settings(&world.org.uuid, &world.dd.url());
    let run = doctor_with(&yaml, &settings, &static_env_with_moto_sts(&world), &[]);
    run.assert_statuses(&[
        ("config", "ok"),
        ("environment", "ok"),
        ("credentials", "ok"),
        ("region", "ok"),
        ("clock", "ok"),
        ("caller", "ok"),
        ("mapping", "ok"),
        ("exchange", "skip"),
        (TOKEN_CHECK, "ok"),
    ]);
    assert_eq!(run.code, 0);
    assert!(world.dd.exchanges().is_empty());
    assert_eq!(world.dd.issued_tokens(&world.org.uuid).len(), 1);
}

#[test]
fn a_refresh_before_over_half_the_lifetime_warns() {
    let world = World::start();
    world
        .dd
        .add_persona_mapping(&world.org.uuid, PATTERN, "automation@example.com");
    world.dd.set_token_lifetime(Duration::from_secs(3600));
    let settings = format!(
        "{}    refresh_before: 50m\n",
        token_settings(&world.org.uuid, &world.dd.url())
    );
    let run = doctor_with(
        &world.datadog_yaml(""),
        &settings,
        &static_env_with_moto_sts(&world),
        &[],
    );
    run.assert_statuses(&all_ok_then_token("warn"));
    assert_eq!(run.code, 0, "a warning does not fail doctor");
    let fix = run.check(TOKEN_CHECK)["fix"].as_str().unwrap();
    assert!(
        fix.starts_with("refresh_before (50m) is over half the token's lifetime")
            && fix.contains("in its last 30m"),
        "{fix}"
    );
}

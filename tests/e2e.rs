//! End to end: the real binary, real credential sources (emulated on loopback), proofs verified
//! by moto's STS, managed keys from the Datadog emulator, consumers on the real socket.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use common::world::{SESSION, SETTINGS, World, eventually, uuid};
use common::{Daemon, base_env, cli, irsa_env};
use datadog_delegated_auth::client;
use http::Method;
use sandbox::datadog::Fault;
use sandbox::net::{Relay, RelayKind, TlsFront};

/// Waits for a managed key on `instance`, checks it really works at the emulator (for `org`),
/// and returns the key answer.
fn managed_key(w: &World, d: &Daemon, instance: &str, org: &str) -> serde_json::Value {
    let v = d.wait_key(instance, "a managed key", |v| v["source"] == "delegated");
    let key = v["api_key"].as_str().unwrap();
    assert_eq!(
        w.dd.key_org(key).as_deref(),
        Some(org),
        "the served key validates for its org"
    );
    assert_eq!(v["org_uuid"], org);
    v
}

/// The status once environment detection (which runs in the background) has been published.
fn detected_status(d: &Daemon) -> serde_json::Value {
    eventually("environment detection", Duration::from_secs(30), || {
        let s = d.json("/v1/status");
        (s["environment"]["kind"] != "detecting").then_some(s)
    })
}

fn status_instance(d: &Daemon, name: &str) -> serde_json::Value {
    let status = d.json("/v1/status");
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn static_env_credentials_get_a_managed_key() {
    let w = World::start();
    let d = Daemon::start(&w.datadog_yaml(""), SETTINGS, w.static_env());
    managed_key(&w, &d, "api_key", &w.org.uuid);
    let status = detected_status(&d);
    assert_eq!(status["environment"]["kind"], "static-env", "{status}");
    let inst = status_instance(&d, "api_key");
    assert_eq!(inst["credential_source"], "static environment variables");
    assert_eq!(inst["state"], "active");
    // The proof was signed by the role session: the emulator saw its ARN.
    let arn = w.dd.exchanges().last().unwrap().caller_arn.clone().unwrap();
    assert_eq!(
        arn,
        format!("arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/{SESSION}")
    );
    let (code, out, _) = cli(
        &["status", "--socket", d.socket.to_str().unwrap()],
        &base_env(),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("=== Delegated Authentication ===") && out.contains("Status: Active"),
        "{out}"
    );
    w.assert_no_secrets_in_log(&d, &[]);
}

#[test]
fn ec2_imds_credentials_and_region() {
    let w = World::start();
    let (imds, env) = w.imds(sandbox::imds::ImdsOptions {
        region: "eu-west-1".into(),
        ..Default::default()
    });
    let d = Daemon::start(&w.datadog_yaml(""), SETTINGS, env);
    managed_key(&w, &d, "api_key", &w.org.uuid);
    let status = detected_status(&d);
    assert_eq!(status["environment"]["kind"], "ec2", "{status}");
    assert_eq!(status["environment"]["region"], "eu-west-1");
    assert_eq!(
        status["environment"]["sts_host"],
        "sts.eu-west-1.amazonaws.com"
    );
    assert_eq!(
        status_instance(&d, "api_key")["credential_source"],
        "EC2 IMDS"
    );
    // IMDSv2 only: every metadata GET carried a token.
    assert!(imds.requests().iter().any(|r| r.method == "PUT"));
    w.assert_no_secrets_in_log(&d, &[]);
}

#[test]
fn ecs_task_role_credentials() {
    let w = World::start();
    let (_ecs, env) = w.ecs("us-west-2");
    let d = Daemon::start(&w.datadog_yaml(""), SETTINGS, env);
    managed_key(&w, &d, "api_key", &w.org.uuid);
    let status = detected_status(&d);
    assert_eq!(status["environment"]["kind"], "ecs", "{status}");
    assert_eq!(status["environment"]["region"], "us-west-2");
    assert_eq!(
        status_instance(&d, "api_key")["credential_source"],
        "ECS/EKS container credentials"
    );
    w.assert_no_secrets_in_log(&d, &[]);
}

#[test]
fn eks_pod_identity_credentials() {
    let w = World::start();
    let pod =
        w.rt.block_on(sandbox::pod_identity::PodIdentityEmulator::start(Some(
            w.creds.clone(),
        )))
        .unwrap();
    let mut env = base_env();
    env.insert("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), pod.full_uri());
    env.insert(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(),
        pod.token_file().display().to_string(),
    );
    env.insert("AWS_REGION".into(), "us-east-2".into());
    let d = Daemon::start(&w.datadog_yaml(""), SETTINGS, env);
    managed_key(&w, &d, "api_key", &w.org.uuid);
    let status = detected_status(&d);
    assert_eq!(
        status["environment"]["kind"], "eks-pod-identity",
        "{status}"
    );
    assert_eq!(status["environment"]["region"], "us-east-2");
    assert!(pod.requests().iter().all(|r| {
        r.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    }));
    w.assert_no_secrets_in_log(&d, &[]);
}

#[test]
fn eks_irsa_web_identity_credentials() {
    let w = World::start();
    let (_dir, env) = w.irsa("eks-datadog-agent-xyz");
    let d = Daemon::start(&w.datadog_yaml(""), SETTINGS, env);
    managed_key(&w, &d, "api_key", &w.org.uuid);
    assert_eq!(detected_status(&d)["environment"]["kind"], "eks-irsa");
    let arn = w.dd.exchanges().last().unwrap().caller_arn.clone().unwrap();
    assert!(
        arn.ends_with("assumed-role/DatadogAgentRole/eks-datadog-agent-xyz"),
        "{arn}"
    );
    w.assert_no_secrets_in_log(&d, &[]);
}

/// IRSA whose STS call a proxy can carry: a projected token (in the returned directory), moto
/// open to 4 unsigned calls, its address, and a forwarding relay to it.
fn irsa_behind_a_forwarder(
    w: &World,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::net::SocketAddr,
    Relay,
) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm94aWVkIn0.sig").unwrap();
    w.rt.block_on(w.moto.reset_auth(4)).unwrap();
    let moto: std::net::SocketAddr = w.moto.url().trim_start_matches("http://").parse().unwrap();
    let forward =
        w.rt.block_on(Relay::start(RelayKind::Forward, moto))
            .unwrap();
    (dir, token, moto, forward)
}

/// IRSA behind a corporate proxy: AssumeRoleWithWebIdentity, the one AWS call that leaves the
/// host, goes through `proxy.*` like the exchange (as in the Agent). Plain HTTP: the STS host
/// does not resolve, so only the proxy (`proxy.http`, a forwarder to moto) can reach it.
/// HTTPS: the call opens a `CONNECT` tunnel through `proxy.https` naming the real STS host.
#[test]
fn eks_irsa_sts_call_goes_through_the_configured_proxy() {
    let w = World::start();
    let (_dir, token, moto, forward) = irsa_behind_a_forwarder(&w);

    let sts = format!("http://sts.proxied.invalid:{}", moto.port());
    let proxy = format!("proxy:\n  http: {}\n", forward.url());
    let d = Daemon::start(
        &w.datadog_yaml(&proxy),
        SETTINGS,
        irsa_env(&token, "proxied-agent", &sts),
    );
    managed_key(&w, &d, "api_key", &w.org.uuid);
    assert!(
        forward.accepted() >= 1,
        "the STS call did not use proxy.http"
    );
    let arn = w.dd.exchanges().last().unwrap().caller_arn.clone().unwrap();
    assert!(
        arn.ends_with("assumed-role/DatadogAgentRole/proxied-agent"),
        "{arn}"
    );
    w.assert_no_secrets_in_log(&d, &[]);
    drop(d);

    // HTTPS through a CONNECT proxy that leads to a server with a certificate for another
    // name: the tunnel is asked for the STS host, and TLS verification then refuses it.
    let front = w.rt.block_on(TlsFront::start(moto)).unwrap();
    let connect =
        w.rt.block_on(Relay::start(RelayKind::Connect, front.addr()))
            .unwrap();
    let proxy = format!("proxy:\n  https: {}\n", connect.url());
    let d = Daemon::start(
        &w.datadog_yaml(&proxy),
        SETTINGS,
        irsa_env(
            &token,
            "proxied-agent",
            "https://sts.us-east-1.amazonaws.com",
        ),
    );
    eventually("a CONNECT to STS", Duration::from_secs(30), || {
        connect
            .connects()
            .iter()
            .any(|c| c.starts_with("sts.us-east-1.amazonaws.com:443"))
            .then_some(())
    });
    let v = d.wait_key("api_key", "the fallback", |v| v["source"] == "fallback");
    assert_eq!(v["api_key"], w.org.api_key.as_str());
}

/// Proxy precedence (wire spec §10.4) through the real binary: the IRSA STS call can only
/// reach moto through the forwarder, so a managed key proves which proxy won. `HTTP_PROXY` beats
/// `proxy.http` of the file, and `DD_PROXY_HTTP` beats `HTTP_PROXY`; `status` and `check-config`
/// name the winner with its password masked.
#[test]
fn proxy_precedence_environment_over_the_file() {
    let w = World::start();
    let (_dir, token, moto, forward) = irsa_behind_a_forwarder(&w);
    // A port nothing listens on: a proxy that refuses every connection.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let with_password = forward
        .url()
        .replacen("http://", "http://agent:hunter2@", 1);
    let sts = format!("http://sts.proxied.invalid:{}", moto.port());
    let yaml = w.datadog_yaml(&format!("proxy:\n  http: {dead}\n"));

    for (extra, winner) in [
        (vec![("HTTP_PROXY", with_password.as_str())], "HTTP_PROXY"),
        (
            vec![
                ("DD_PROXY_HTTP", with_password.as_str()),
                ("HTTP_PROXY", dead.as_str()),
            ],
            "DD_PROXY_HTTP",
        ),
    ] {
        let mut env = irsa_env(&token, "proxied-agent", &sts);
        for (k, v) in &extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let before = forward.accepted();
        let d = Daemon::start(&yaml, SETTINGS, env.clone());
        managed_key(&w, &d, "api_key", &w.org.uuid);
        assert!(
            forward.accepted() > before,
            "{winner}: the STS call did not use it"
        );
        let shown = forward.url().replacen("http://", "http://***@", 1);
        let status = d.json("/v1/status");
        assert_eq!(
            status["config"]["proxy"]["http"]["source"], winner,
            "{status}"
        );
        assert_eq!(status["config"]["proxy"]["http"]["url"], shown.as_str());
        let (code, out, _) = cli(
            &["status", "--socket", d.socket.to_str().unwrap()],
            &base_env(),
        );
        assert_eq!(code, 0);
        assert!(
            out.contains(&format!("Proxy: https=- http={shown} (from {winner})")),
            "{out}"
        );
        assert!(!out.contains("hunter2"));
        let (code, out, err) = d.check_config(&env);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("http={shown} (from {winner})")),
            "{out}"
        );
        assert!(!out.contains("hunter2"));
        assert!(!d.logs().contains("hunter2"));
    }
}

/// Wire spec §10.3 through the real binary, without leaving loopback: with no `dd_url` the
/// exchange of a well-known site goes to `https://api.datadoghq.com./api/v2/intake-key`. The
/// only way out is a CONNECT proxy on loopback (no name is resolved here), which records the
/// tunnel asked for and leads to a TLS server with a certificate for another name, so the
/// exchange fails and the static key is served. The socket's status shows the URL; `doctor`
/// asks for the same tunnel; with `DD_CONVERT_DD_SITE_FQDN_ENABLED=false` the name has no dot.
#[test]
fn the_primary_site_is_exchanged_at_its_fully_qualified_name() {
    let w = World::start();
    let moto: std::net::SocketAddr = w.moto.url().trim_start_matches("http://").parse().unwrap();
    let front = w.rt.block_on(TlsFront::start(moto)).unwrap();
    let connect =
        w.rt.block_on(Relay::start(RelayKind::Connect, front.addr()))
            .unwrap();
    let yaml = format!(
        "api_key: {}\ndelegated_auth:\n  org_uuid: {}\nproxy:\n  https: {}\n",
        w.org.api_key,
        w.org.uuid,
        connect.url()
    );
    for (fqdn, host) in [
        (true, "api.datadoghq.com.:443"),
        (false, "api.datadoghq.com:443"),
    ] {
        let mut env = w.static_env();
        if !fqdn {
            env.insert("DD_CONVERT_DD_SITE_FQDN_ENABLED".into(), "false".into());
        }
        let before = connect.connects().len();
        let d = Daemon::start(&yaml, SETTINGS, env.clone());
        let v = d.wait_key("api_key", "the fallback", |v| v["source"] == "fallback");
        assert_eq!(v["api_key"], w.org.api_key.as_str());
        let inst = eventually("a failed exchange", Duration::from_secs(30), || {
            let i = status_instance(&d, "api_key");
            i["endpoint"].is_string().then_some(i)
        });
        let url = format!(
            "https://{}/api/v2/intake-key",
            host.trim_end_matches(":443")
        );
        assert_eq!(inst["endpoint"], url.as_str(), "{inst}");
        assert!(
            connect.connects()[before..]
                .iter()
                .all(|c| c.starts_with(host)),
            "{:?}",
            connect.connects()
        );
        drop(d);
        // doctor derives the same URL and asks the proxy for the same tunnel.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("datadog.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let before = connect.connects().len();
        let (_, out, _) = cli(
            &["doctor", "--json", "--config", config.to_str().unwrap()],
            &env,
        );
        let checks: serde_json::Value = serde_json::from_str(&out).unwrap();
        let exchange = checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "exchange")
            .unwrap();
        assert_eq!(exchange["data"]["url"], url.as_str(), "{exchange}");
        assert!(
            connect.connects()[before..]
                .iter()
                .any(|c| c.starts_with(host)),
            "{:?}",
            connect.connects()
        );
    }
}

#[test]
fn a_long_poll_sees_a_rotation_and_a_rejection_report_forces_one() {
    let w = World::start();
    let d = Daemon::start(&w.datadog_yaml(""), SETTINGS, w.static_env());
    let first = managed_key(&w, &d, "api_key", &w.org.uuid);
    let key1 = first["api_key"].as_str().unwrap().to_owned();
    let etag = format!("\"{}\"", first["generation"]);

    let socket = d.socket.clone();
    let poll = std::thread::spawn(move || {
        common::rt().block_on(client::request(
            &socket,
            Method::GET,
            "/v1/keys/api_key?wait=120s",
            &[("if-none-match", &etag)],
            None,
            Duration::from_secs(130),
        ))
    });
    std::thread::sleep(Duration::from_millis(200));
    // A consumer got 403 with the key: it reports it, the daemon exchanges again.
    let suffix = &key1[key1.len() - 5..];
    let r = d
        .request(
            Method::POST,
            "/v1/keys/api_key/rejected",
            &[],
            Some(format!("{{\"api_key_suffix\":\"{suffix}\"}}").into_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["refresh"],
        "scheduled"
    );

    let r = poll.join().unwrap().unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let key2 = v["api_key"].as_str().unwrap();
    assert_ne!(key2, key1);
    assert_eq!(v["source"], "delegated");
    assert!(w.dd.is_valid(key2));

    // A second report within 30 s is throttled; a stale one is ignored.
    let again = d
        .request(
            Method::POST,
            "/v1/keys/api_key/rejected",
            &[],
            Some(format!("{{\"api_key_suffix\":\"{}\"}}", &key2[key2.len() - 5..]).into_bytes()),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&again.body).unwrap()["refresh"],
        "throttled"
    );
    let stale = d
        .request(
            Method::POST,
            "/v1/keys/api_key/rejected",
            &[],
            Some(format!("{{\"api_key_suffix\":\"{suffix}\"}}").into_bytes()),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&stale.body).unwrap()["refresh"],
        "ignored"
    );
    w.assert_no_secrets_in_log(&d, &[]);
}

#[test]
fn scheduled_refresh_rotates_the_key() {
    let w = World::start();
    let settings = "log: { level: debug }\nrefresh: { interval: 2s, startup_grace: 5s, retry_min: 200ms, retry_max: 1s }\n";
    let d = Daemon::start(&w.datadog_yaml(""), settings, w.static_env());
    let first = managed_key(&w, &d, "api_key", &w.org.uuid);
    let second = d.wait_key("api_key", "a scheduled rotation", |v| {
        v["source"] == "delegated" && v["api_key"] != first["api_key"]
    });
    assert!(second["generation"].as_u64() > first["generation"].as_u64());
    assert!(w.dd.is_valid(second["api_key"].as_str().unwrap()));
    w.assert_no_secrets_in_log(&d, &[]);
}

#[test]
fn per_product_orgs_get_their_own_keys() {
    let w = World::start();
    let logs_org = w.dd.add_org(&uuid());
    w.dd.add_intake_mapping(&logs_org.uuid, common::world::PATTERN);
    let yaml = w.datadog_yaml(&format!(
        "logs_config:\n  api_key: {}\n  delegated_auth:\n    org_uuid: {}\n",
        logs_org.api_key, logs_org.uuid
    ));
    let d = Daemon::start(&yaml, SETTINGS, w.static_env());
    let main = managed_key(&w, &d, "api_key", &w.org.uuid);
    let logs = managed_key(&w, &d, "logs_config.api_key", &logs_org.uuid);
    assert_ne!(main["api_key"], logs["api_key"]);
    let mut extra = vec![logs_org.api_key.clone(), logs_org.app_key.clone()];
    extra.extend(w.dd.issued_keys(&logs_org.uuid).into_iter().map(|k| k.key));
    w.assert_no_secrets_in_log(&d, &extra);
}

#[test]
fn instances_of_one_org_share_one_exchange() {
    let w = World::start();
    let yaml = w.datadog_yaml(&format!(
        "remote_configuration:\n  delegated_auth:\n    org_uuid: {}\n",
        w.org.uuid
    ));
    let d = Daemon::start(&yaml, SETTINGS, w.static_env());
    let a = managed_key(&w, &d, "api_key", &w.org.uuid);
    let b = managed_key(&w, &d, "remote_configuration.api_key", &w.org.uuid);
    assert_eq!(a["api_key"], b["api_key"]);
    assert_eq!(w.dd.exchanges().len(), 1, "one exchange for both instances");
}

#[test]
fn a_dela_directive_is_exchanged_against_its_own_site() {
    let w = World::start();
    let eu = w.another_site();
    let eu_org = eu.add_org(&uuid());
    eu.add_intake_mapping(&eu_org.uuid, common::world::PATTERN);
    let fallback = "euFallbackKey0000000000000000001";
    let yaml = w.datadog_yaml(&format!(
        "additional_endpoints:\n  \"{}\":\n    - \"DELA({}, aws, fallback={fallback})\"\n",
        eu.url(),
        eu_org.uuid
    ));
    let d = Daemon::start(&yaml, SETTINGS, w.static_env());
    let name = format!("additional_endpoints[{}][0]", eu.url());
    let v = d.wait_key(&name, "the directive's managed key", |v| {
        v["source"] == "delegated"
    });
    let key = v["api_key"].as_str().unwrap();
    assert_eq!(
        eu.key_org(key).as_deref(),
        Some(eu_org.uuid.as_str()),
        "valid at the second site"
    );
    assert!(!w.dd.is_valid(key), "not a key of the primary site");
    assert_eq!(eu.exchanges().len(), 1);
    managed_key(&w, &d, "api_key", &w.org.uuid);
    let mut extra = vec![fallback.to_owned(), eu_org.api_key.clone()];
    extra.extend(eu.issued_keys(&eu_org.uuid).into_iter().map(|k| k.key));
    w.assert_no_secrets_in_log(&d, &extra);
}

/// Wire spec §10.1/§10.2: the newest Agent's `DELA[...]` form is exchanged like `DELA(...)`,
/// and a bad directive, a blank endpoint or a directive on the TCP logs transport makes only its
/// own entry inert: the daemon starts, serves everything else, and shows those entries as
/// `invalid` with the problem and the fix, never with a key.
#[test]
fn bracket_directives_run_and_bad_entries_stay_inert() {
    let w = World::start();
    let eu = w.another_site();
    let eu_org = eu.add_org(&uuid());
    eu.add_intake_mapping(&eu_org.uuid, common::world::PATTERN);
    let yaml = w.datadog_yaml(&format!(
        "additional_endpoints:\n  \"{url}\":\n    - \"DELA[{org}, aws]\"\n    - \"DELA[{org}, aws)\"\n  \"\": [\"DELA[{org}, aws]\"]\n\
         logs_config:\n  additional_endpoints:\n    - api_key: \"DELA[{org}, aws]\"\n      host: {url}\n",
        url = eu.url(),
        org = eu_org.uuid
    ));
    let d = Daemon::start(&yaml, SETTINGS, w.static_env());
    let good = format!("additional_endpoints[{}][0]", eu.url());
    let v = d.wait_key(&good, "the bracket directive's managed key", |v| {
        v["source"] == "delegated"
    });
    assert_eq!(
        eu.key_org(v["api_key"].as_str().unwrap()).as_deref(),
        Some(eu_org.uuid.as_str())
    );
    managed_key(&w, &d, "api_key", &w.org.uuid);

    let mixed = format!("additional_endpoints[{}][1]", eu.url());
    let inert = [
        (mixed.as_str(), "mixes the two forms", "DELA["),
        (
            "additional_endpoints[][0]",
            "has no domain",
            "endpoint's URL",
        ),
        (
            "logs_config.additional_endpoints[0]",
            "not supported over TCP",
            "force_use_http",
        ),
    ];
    let list = d.json("/v1/keys");
    for (name, problem, fix) in inert {
        let doc = list
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {list}"));
        assert_eq!(doc["state"], "invalid", "{doc}");
        assert!(doc["key"].is_null() && doc["source"].is_null(), "{doc}");
        assert!(doc["reason"].as_str().unwrap().contains(problem), "{doc}");
        assert!(doc["fix"].as_str().unwrap().contains(fix), "{doc}");
        let r = d.get(&format!("/v1/keys/{}", client::encode_instance(name)));
        assert_eq!(r.status, 503, "never a key for {name}");
        assert!(!String::from_utf8_lossy(&r.body).contains("api_key\":\""));
        // One warning per load, naming the entry.
        let logs = d.logs();
        let warned = logs
            .lines()
            .filter(|l| l.contains("stays inert") && l.contains(name))
            .count();
        assert_eq!(warned, 1, "{name}:\n{logs}");
    }
    assert_eq!(
        d.get("/v1/health/ready").status,
        200,
        "invalid entries do not block readiness"
    );
    let metrics = String::from_utf8(d.get("/metrics").body.to_vec()).unwrap();
    assert!(
        metrics.contains("\ndelegated_auth_invalid_entries 3\n"),
        "{metrics}"
    );
    let (code, out, _) = cli(
        &["status", "--socket", d.socket.to_str().unwrap()],
        &base_env(),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "- {mixed}\n    Status: Pending (invalid)\n    Reason: "
        )),
        "{out}"
    );
    assert!(
        out.contains("    Fix: set logs_config.force_use_http: true"),
        "{out}"
    );

    // The same file fails check-config, so CI catches it.
    let (code, _, err) = d.check_config(&base_env());
    assert_eq!(code, 78, "{err}");
    assert_eq!(
        err.matches("(this entry is inert; the rest runs)").count(),
        3,
        "{err}"
    );
    let mut extra = vec![eu_org.api_key.clone()];
    extra.extend(eu.issued_keys(&eu_org.uuid).into_iter().map(|k| k.key));
    w.assert_no_secrets_in_log(&d, &extra);
}

#[test]
fn outage_keeps_the_last_key_rejection_falls_back_recovery_returns() {
    let w = World::start();
    let settings = "log: { level: debug }\nrefresh: { interval: 1s, startup_grace: 5s, retry_min: 200ms, retry_max: 500ms }\n";
    let d = Daemon::start(&w.datadog_yaml(""), settings, w.static_env());
    let first = managed_key(&w, &d, "api_key", &w.org.uuid);
    let key1 = first["api_key"].as_str().unwrap().to_owned();

    // Datadog is down: refreshes fail, the last managed key is still served.
    w.dd.inject(Fault::status(503).times(10_000));
    let before = w.dd.exchanges().len();
    eventually("failed refreshes", Duration::from_secs(30), || {
        (w.dd.requests().len() > before + 2).then_some(())
    });
    let during = d.json("/v1/keys/api_key");
    assert_eq!(during["source"], "delegated");
    assert_eq!(during["api_key"], key1.as_str());
    let inst = status_instance(&d, "api_key");
    assert!(
        inst["consecutive_failures"].as_u64().unwrap() >= 1,
        "{inst}"
    );
    assert!(inst["error"].as_str().unwrap().contains("503"), "{inst}");

    // The key is revoked and a consumer reports it: the forced refresh fails, so the
    // fallback (the static api_key) is served.
    w.dd.revoke(&key1);
    let r = d
        .request(
            Method::POST,
            "/v1/keys/api_key/rejected",
            &[],
            Some(format!("{{\"api_key_suffix\":\"{}\"}}", &key1[key1.len() - 5..]).into_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 202);
    let fb = d.wait_key("api_key", "the fallback", |v| v["source"] == "fallback");
    assert_eq!(fb["api_key"], w.org.api_key.as_str());

    // Datadog is back: a managed key again, without anyone asking.
    w.dd.clear_faults();
    let back = managed_key(&w, &d, "api_key", &w.org.uuid);
    assert_ne!(back["api_key"], key1.as_str());
    let metrics = String::from_utf8_lossy(&d.get("/metrics").body).into_owned();
    assert!(metrics.contains("outcome=\"unavailable\""), "{metrics}");
    w.assert_no_secrets_in_log(&d, &[]);
}

#[test]
fn throttling_retry_after_is_honoured() {
    let w = World::start();
    w.dd.inject(Fault::status(429).retry_after("2").times(1));
    let d = Daemon::start(&w.datadog_yaml(""), SETTINGS, w.static_env());
    managed_key(&w, &d, "api_key", &w.org.uuid);
    let ex = w.dd.exchanges();
    assert!(ex.len() >= 2, "{ex:?}");
    assert_eq!(ex[0].status, 429);
    let gap = ex[1].instant.duration_since(ex[0].instant);
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?}, before Retry-After: 2"
    );
}

#[test]
fn an_unmapped_arn_shows_the_server_detail_and_serves_the_fallback() {
    let w = World::start();
    let other = w.dd.add_org(&uuid()); // no intake mapping
    let yaml = format!(
        "api_key: {}\ndd_url: {}\ndelegated_auth:\n  org_uuid: {}\n",
        other.api_key,
        w.dd.url(),
        other.uuid
    );
    let d = Daemon::start(&yaml, SETTINGS, w.static_env());
    let v = d.wait_key("api_key", "the fallback", |v| v["source"] == "fallback");
    assert_eq!(v["api_key"], other.api_key.as_str());
    let inst = eventually("the error in status", Duration::from_secs(30), || {
        let i = status_instance(&d, "api_key");
        i["last_error"].is_string().then_some(i)
    });
    let err = inst["last_error"].as_str().unwrap();
    assert!(err.contains("no identity mapping was found"), "{err}");
    assert!(err.contains("assumed-role/DatadogAgentRole"), "{err}");
    assert_eq!(inst["last_error_kind"], "unauthorized");
}

#[test]
fn the_first_exchange_is_awaited_within_the_startup_grace() {
    let w = World::start();
    // The first exchange takes 1.5 s: a read during it waits and gets the managed key, never
    // the fallback.
    w.dd.inject(Fault::latency(Duration::from_millis(1500)).times(1));
    let mut d = Daemon::spawn(&w.datadog_yaml(""), SETTINGS, w.static_env(), &[]);
    d.wait_live();
    let started = SystemTime::now();
    let v: serde_json::Value = serde_json::from_slice(&d.get("/v1/keys/api_key").body).unwrap();
    assert_eq!(v["source"], "delegated", "{v}");
    assert!(started.elapsed().unwrap() < Duration::from_secs(5));
    assert_eq!(d.get("/v1/health/ready").status, 200);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn get_prints_the_managed_key() {
    let w = World::start();
    let d = Daemon::start(&w.datadog_yaml(""), SETTINGS, w.static_env());
    let v = managed_key(&w, &d, "api_key", &w.org.uuid);
    let env: HashMap<String, String> = base_env();
    let (code, out, _) = cli(&["get", "--socket", d.socket.to_str().unwrap()], &env);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), v["api_key"].as_str().unwrap());
}

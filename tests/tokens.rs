//! Delegated API tokens end to end (issue 15): the real binary gets a JWT for a persona from the
//! Datadog emulator with a proof moto verifies, on EC2 (IMDS), ECS (container credentials) and
//! EKS IRSA identities; serves it on `/v1/tokens/{name}`; the emulator's API accepts it as a
//! bearer; it is refreshed before it expires, never served past its expiry, and never replaced
//! by anything during an outage. Then the consumers: `token`, `exec --token`, access rules,
//! rejection reports and reloads.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use common::world::{PATTERN, SETTINGS, World, eventually};
use common::{BIN, Daemon, base_env, cli};
use http::Method;
use sandbox::datadog::Fault;

/// The persona the tests' role maps to.
const ACCOUNT: &str = "automation@example.com";

/// Settings with one token, `automation`, for the world's org at its emulator.
fn token_settings(w: &World, extra: &str) -> String {
    format!(
        "{SETTINGS}tokens:\n  - name: automation\n    org_uuid: {}\n    api_url: {}\n{extra}",
        w.org.uuid,
        w.dd.url()
    )
}

/// A token answer of the daemon.
#[derive(Clone, Debug)]
struct Served {
    token: String,
    expires_at: SystemTime,
    generation: u64,
}

/// `GET /v1/tokens/{name}`: the token, or the status and error message.
fn read(d: &Daemon, name: &str) -> Result<Served, (u16, String)> {
    let r = d.get(&format!("/v1/tokens/{name}"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    if r.status != 200 {
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return Err((r.status.as_u16(), message));
    }
    assert_eq!(v["name"], name, "{v}");
    assert_eq!(
        r.headers["etag"].to_str().unwrap(),
        format!("\"{}\"", v["generation"])
    );
    Ok(Served {
        token: v["access_token"].as_str().unwrap().to_owned(),
        expires_at: humantime::parse_rfc3339(v["expires_at"].as_str().unwrap()).unwrap(),
        generation: v["generation"].as_u64().unwrap(),
    })
}

fn wait_token(d: &Daemon, name: &str) -> Served {
    eventually("a token", Duration::from_secs(30), || read(d, name).ok())
}

/// Asks the emulator's API who the bearer is, as any API client would.
fn bearer_account(w: &World, token: &str) -> (u16, String) {
    let r =
        w.rt.block_on(sandbox::http::send(
            Method::GET,
            &format!("{}/api/v2/current_user", w.dd.url()),
            &[("authorization".to_owned(), format!("Bearer {token}"))],
            Vec::new(),
        ))
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    (
        r.status.as_u16(),
        v["data"]["attributes"]["handle"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The whole life of a token under one identity: served, accepted, refreshed before expiry
/// (12 s tokens), never served past expiry, no fallback through an outage, back after it.
///
/// Every timing claim is checked so that a slow machine can only make it pass later, never
/// fail: a token's expiry is compared with the clock read *before* the request that returned
/// it, and "refreshed before expiry" with the emulator's own issue times.
fn token_lifecycle(w: &World, env: HashMap<String, String>) {
    w.dd.add_persona_mapping(&w.org.uuid, PATTERN, ACCOUNT);
    w.dd.set_token_lifetime(Duration::from_secs(12));
    let d = Daemon::start(&w.datadog_yaml(""), &token_settings(w, ""), env);

    // Served, and accepted by the API as the persona.
    let first = wait_token(&d, "automation");
    assert_eq!(bearer_account(w, &first.token), (200, ACCOUNT.to_owned()));
    let body = d.json("/v1/tokens/automation");
    assert_eq!(body["org_uuid"], w.org.uuid.as_str());
    let keys: HashSet<&str> = body.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(
        keys,
        HashSet::from([
            "name",
            "access_token",
            "expires_at",
            "generation",
            "org_uuid"
        ])
    );

    // More than two lifetimes, read every 100 ms: a token is served throughout (each new one
    // arrives before the last expires), never one at or past its expiry, and always one the
    // API issued, with the API's own expiry.
    let mut seen = vec![first];
    let watch_until = Instant::now() + Duration::from_secs(27);
    while Instant::now() < watch_until {
        let before = SystemTime::now();
        let t = read(&d, "automation").expect("served throughout");
        assert!(t.expires_at > before, "served at or past its expiry");
        let issued = (w.dd.issued_tokens(&w.org.uuid).into_iter())
            .find(|i| i.token == t.token)
            .expect("a token the API issued");
        assert_eq!(issued.expires_at, t.expires_at, "Datadog's expiry, as is");
        let last = seen.last().unwrap();
        if t.token != last.token {
            assert!(t.generation > last.generation);
            seen.push(t);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen.len() >= 3,
        "{} tokens in 27 s of 12 s tokens",
        seen.len()
    );
    // On the API's clock: each token was issued before the one it replaced expired.
    let issued = w.dd.issued_tokens(&w.org.uuid);
    for pair in issued.windows(2) {
        assert!(
            pair[1].issued_at < pair[0].expires_at,
            "a refresh finished after the expiry of the token it replaced"
        );
    }
    let exchanges = w.dd.token_exchanges().len();
    assert!(
        exchanges <= seen.len() + 1,
        "{exchanges} exchanges for {} tokens",
        seen.len()
    );

    // Datadog's token endpoint fails: the token is served until its expiry, then nothing.
    w.dd.inject_token_fault(Fault::status(503).times(100_000));
    let mut last = read(&d, "automation").unwrap();
    let (status, message) = loop {
        let before = SystemTime::now();
        match read(&d, "automation") {
            Ok(t) => {
                assert!(t.expires_at > before, "served past its expiry");
                last = t;
            }
            Err(e) => break e,
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        SystemTime::now() + Duration::from_millis(100) >= last.expires_at,
        "withdrawn before its expiry"
    );
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("expired"), "{message}");
    assert!(message.contains("never fall back"), "{message}");
    // Nothing else is ever handed out: three more seconds of 503s, and the key is untouched.
    for _ in 0..30 {
        let r = d.get("/v1/tokens/automation");
        assert_eq!(r.status, 503);
        assert!(!String::from_utf8_lossy(&r.body).contains(&w.org.api_key));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.json("/v1/keys/api_key")["source"], "delegated");
    let metrics = String::from_utf8_lossy(&d.get("/metrics").body).into_owned();
    assert!(
        metrics.contains(
            "delegated_auth_token_exchanges_total{token=\"automation\",outcome=\"unavailable\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("delegated_auth_token_state{token=\"automation\",state=\"unavailable\"} 1")
    );

    // Back: a new token within the retry bound.
    w.dd.clear_faults();
    let back = wait_token(&d, "automation");
    assert_ne!(back.token, last.token);
    assert_eq!(bearer_account(w, &back.token).0, 200);
    w.assert_no_secrets_in_log(&d, &[]);
}

#[test]
fn ec2_token_is_served_accepted_refreshed_and_never_stale() {
    let w = World::start();
    let (_imds, env) = w.imds(sandbox::imds::ImdsOptions {
        region: "eu-west-1".into(),
        ..Default::default()
    });
    token_lifecycle(&w, env);
    let arn = w.dd.token_exchanges()[0].caller_arn.clone().unwrap();
    assert!(arn.ends_with(common::world::SESSION), "{arn}");
}

#[test]
fn ecs_token_is_served_accepted_refreshed_and_never_stale() {
    let w = World::start();
    let (_ecs, env) = w.ecs("us-west-2");
    token_lifecycle(&w, env);
}

#[test]
fn irsa_token_is_served_accepted_refreshed_and_never_stale() {
    let w = World::start();
    let (_dir, env) = w.irsa("eks-automation-xyz");
    token_lifecycle(&w, env);
    let arn = w.dd.token_exchanges()[0].caller_arn.clone().unwrap();
    assert!(arn.ends_with("/eks-automation-xyz"), "{arn}");
}

/// `exec --token` starts its command with the token in `DD_ACCESS_TOKEN` and restarts it with
/// each new one, before the old one expires.
#[test]
fn exec_restarts_its_command_with_each_new_token() {
    let w = World::start();
    w.dd.add_persona_mapping(&w.org.uuid, PATTERN, ACCOUNT);
    w.dd.set_token_lifetime(Duration::from_secs(10));
    let d = Daemon::start(&w.datadog_yaml(""), &token_settings(&w, ""), w.static_env());
    wait_token(&d, "automation");
    let out = d.path("tokens.out");
    let mut child = std::process::Command::new(BIN)
        .args(["exec", "--token", "automation", "--socket"])
        .arg(&d.socket)
        .args(["--stop-timeout", "2s", "--", "sh", "-c"])
        .arg(format!(
            "printf '%s %s\\n' \"$(date +%s.%N)\" \"$DD_ACCESS_TOKEN\" >> {}; exec sleep 600",
            out.display()
        ))
        .env_clear()
        .envs(base_env())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = eventually("three starts", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= 3).then_some(lines)
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "the command's SIGTERM status");
    let issued = w.dd.issued_tokens(&w.org.uuid);
    let mut tokens = Vec::new();
    for line in &lines {
        let (at, token) = line.split_once(' ').unwrap();
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(at.parse().unwrap());
        let t = issued
            .iter()
            .find(|t| t.token == token)
            .unwrap_or_else(|| panic!("the command got a token the API never issued"));
        assert_eq!(t.account_identifier, ACCOUNT);
        assert!(started < t.expires_at, "started with an expired token");
        tokens.push(token.to_owned());
    }
    let distinct: HashSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), tokens.len(), "each start has a new token");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("the key of token \"automation\" changed"),
        "{stderr}"
    );
    for t in &tokens {
        assert!(!stderr.contains(t.as_str()), "exec logged a token");
    }
}

/// `token` prints the token (by name, or the only one), `--json` the answer; names that are
/// not tokens are refused, and the key routes never serve a token.
#[test]
fn the_token_command_and_the_separate_namespaces() {
    let w = World::start();
    w.dd.add_persona_mapping(&w.org.uuid, PATTERN, ACCOUNT);
    let d = Daemon::start(&w.datadog_yaml(""), &token_settings(&w, ""), w.static_env());
    let served = wait_token(&d, "automation");
    let mut env = base_env();
    env.insert(
        "DD_DELEGATED_AUTH_SOCKET".into(),
        d.socket.display().to_string(),
    );
    let (code, out, err) = cli(&["token"], &env);
    assert_eq!((code, out.trim()), (0, served.token.as_str()), "{err}");
    let (code, out, _) = cli(&["token", "automation", "--json"], &env);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["access_token"], served.token.as_str());
    let (code, _, err) = cli(&["token", "nope"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("no token named \"nope\""), "{err}");

    // Keys and tokens never cross: the key routes and `get` do not know the token, and the
    // key list does not show it.
    let (code, _, err) = cli(&["get", "token:automation"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("no instance named"), "{err}");
    assert_eq!(d.get("/v1/tokens/api_key").status, 404);
    let keys = d.json("/v1/keys");
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k["name"] != "token:automation")
    );
    let list = d.json("/v1/tokens");
    assert_eq!(list[0]["name"], "automation");
    assert_eq!(list[0]["state"], "active");
    let redacted = list[0]["token"].as_str().unwrap();
    assert!(redacted.ends_with(&served.token[served.token.len() - 5..]));
    assert!(
        !list.to_string().contains(&served.token),
        "the list holds no token"
    );
    let (code, out, _) = cli(&["status"], &env);
    assert_eq!(code, 0);
    assert!(
        out.contains("Delegated API Tokens:\n- automation\n    Status: active"),
        "{out}"
    );
    assert!(!out.contains(&served.token));
}

/// A second token makes the name necessary; a token without a persona mapping is unavailable
/// with the server's reason, and holds back neither the keys nor readiness.
#[test]
fn an_unmapped_token_fails_alone_and_two_tokens_need_a_name() {
    let w = World::start();
    let extra = format!(
        "  - name: second\n    org_uuid: {}\n    api_url: {}\n",
        w.org.uuid,
        w.dd.url()
    );
    let d = Daemon::start(
        &w.datadog_yaml(""),
        &token_settings(&w, &extra),
        w.static_env(),
    );
    let doc = eventually("the refusal", Duration::from_secs(30), || {
        let list = d.json("/v1/tokens");
        (list[0]["state"] == "unavailable").then(|| list[0].clone())
    });
    let (status, message) = read(&d, "automation").unwrap_err();
    assert_eq!(status, 503);
    assert_eq!(doc["last_error_kind"], "unauthorized", "{doc}");
    let error = doc["last_error"].as_str().unwrap();
    assert!(error.contains("no persona mapping was found"), "{error}");
    assert!(error.contains("persona mapping matches"), "{error}");
    assert!(message.contains("tokens never fall back"), "{message}");
    assert_eq!(d.json("/v1/keys/api_key")["source"], "delegated");
    assert_eq!(
        d.get("/v1/health/ready").status,
        200,
        "tokens do not gate readiness"
    );

    let mut env = base_env();
    env.insert(
        "DD_DELEGATED_AUTH_SOCKET".into(),
        d.socket.display().to_string(),
    );
    let (code, _, err) = cli(&["token"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 tokens (automation, second)"), "{err}");
}

/// A consumer's rejection report forces a new token (throttled like keys); a reload with the
/// same settings keeps the token and its generation.
#[test]
fn rejection_reports_and_reloads() {
    let w = World::start();
    w.dd.add_persona_mapping(&w.org.uuid, PATTERN, ACCOUNT);
    let settings = token_settings(&w, "");
    let d = Daemon::start(&w.datadog_yaml(""), &settings, w.static_env());
    let first = wait_token(&d, "automation");
    // The API revoked it (or the consumer got a 401 with it): the consumer reports it.
    assert!(w.dd.revoke_token(&first.token));
    assert_eq!(bearer_account(&w, &first.token).0, 401);
    let report = |suffix: &str| {
        d.request(
            Method::POST,
            "/v1/tokens/automation/rejected",
            &[],
            Some(format!("{{\"token_suffix\":\"{suffix}\"}}").into_bytes()),
        )
        .unwrap()
    };
    let r = report(&first.token[first.token.len() - 5..]);
    assert_eq!(r.status, 202);
    assert!(String::from_utf8_lossy(&r.body).contains("scheduled"));
    let second = eventually("a new token", Duration::from_secs(30), || {
        read(&d, "automation")
            .ok()
            .filter(|t| t.token != first.token)
    });
    assert_eq!(bearer_account(&w, &second.token), (200, ACCOUNT.to_owned()));
    let r = report(&second.token[second.token.len() - 5..]);
    assert!(String::from_utf8_lossy(&r.body).contains("throttled"));
    let r = d
        .request(
            Method::POST,
            "/v1/tokens/automation/rejected",
            &[],
            Some(b"{\"api_key_suffix\":\"abcde\"}".to_vec()),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("token_suffix"));

    // A reload that changes nothing about the token keeps it.
    let exchanges = w.dd.token_exchanges().len();
    let (ok, _) = d.reload_counts();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the reload", Duration::from_secs(10), || {
        (d.reload_counts().0 > ok).then_some(())
    });
    let after = read(&d, "automation").unwrap();
    assert_eq!(after.token, second.token);
    assert_eq!(after.generation, second.generation);
    assert_eq!(w.dd.token_exchanges().len(), exchanges);
}

/// Access rules: `*` is every key and never a token; `token:<name>` grants that token only.
#[test]
fn access_rules_separate_tokens_from_keys() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run clients under other uids");
        return;
    }
    let w = World::start();
    w.dd.add_persona_mapping(&w.org.uuid, PATTERN, ACCOUNT);
    let settings = token_settings(&w, "").replace(
        "tokens:",
        "socket: { mode: \"0666\" }\naccess:\n  - instances: [\"*\"]\n    uids: [0, 65534]\n  - instances: [\"token:automation\"]\n    uids: [0, 65533]\ntokens:",
    );
    let d = Daemon::start(&w.datadog_yaml(""), &settings, w.static_env());
    d.open_to_other_uids();
    let token = wait_token(&d, "automation");
    let run = |uid: &str, args: &[&str]| {
        let out = common::as_uid(uid, BIN)
            .args(args)
            .arg("--socket")
            .arg(&d.socket)
            .env_clear()
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // 65534: every key, no token.
    let (code, out, err) = run("65534", &["get", "api_key"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.is_empty());
    let (code, out, err) = run("65534", &["token", "automation"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty());
    assert!(
        err.contains("403") && err.contains("token:automation"),
        "{err}"
    );
    // 65533: the token, no key.
    let (code, out, err) = run("65533", &["token", "automation"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), token.token.as_str()),
        "{err}"
    );
    let (code, _, err) = run("65533", &["get", "api_key"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("403"), "{err}");
}

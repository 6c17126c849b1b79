//! The delegated-token recipes of `docs/integrations.md` (curl, cron, `exec --token`), run for
//! real: the same shell text as the doc (only the API URL points at the Datadog emulator), with
//! the real binary on `PATH`, against a real daemon that exchanges moto-verified proofs for the
//! emulator's tokens.
//!
//! Each test proves that the emulator accepted the call as the persona's account and that the
//! request carried the bearer token and nothing else: curl's own verbose record of what it sent
//! (asked for by a `.curlrc` under `CURL_HOME`, so the recipe text stays as documented) holds an
//! `Authorization: Bearer` header and neither `DD-API-KEY` nor `DD-APPLICATION-KEY`.
//!
//! The Python and Go client recipes of the same section are not exercised here (the doc says so).

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use common::world::{PATTERN, SETTINGS, World, eventually};
use common::{BIN, Daemon, run};

/// The account the persona mapping of every test names.
const ACCOUNT: &str = "automation@example.com";
/// The API base every recipe in the doc uses; the tests swap in the emulator's URL.
const DOC_API: &str = "https://api.datadoghq.com";

/// Recipe: who am I, with the token (docs/integrations.md).
const CURRENT_USER: &str = r#"curl -s -H "Authorization: Bearer $(datadog-delegated-auth token automation)" https://api.datadoghq.com/api/v2/current_user"#;

/// Recipe: create an event with the token (docs/integrations.md).
const CREATE_EVENT: &str = r#"curl -s -X POST https://api.datadoghq.com/api/v1/events \
  -H "Authorization: Bearer $(datadog-delegated-auth token automation)" \
  -H "Content-Type: application/json" \
  -d '{"title": "Deployed web 1.4.2", "text": "by the deploy hook"}'"#;

/// Recipe: the script a cron job runs (docs/integrations.md).
const CRON_SCRIPT: &str = r#"#!/bin/sh
# /usr/local/bin/dd-backup-event: tell Datadog that the nightly backup finished.
set -eu
TOKEN=$(datadog-delegated-auth token automation --wait --timeout 30s)
curl -sS --fail -X POST https://api.datadoghq.com/api/v1/events \
  -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  -d "{\"title\": \"Nightly backup finished\", \"text\": \"on $(uname -n)\"}"
"#;

/// Recipe: a command run by `exec --token` (docs/integrations.md).
const EXEC: &str = "datadog-delegated-auth exec --token automation -- ./deploy-hook.sh";

/// Recipe: the hook `exec --token` runs (docs/integrations.md).
const DEPLOY_HOOK: &str = r#"#!/bin/sh
# deploy-hook.sh: its only credential is $DD_ACCESS_TOKEN, set by exec.
curl -sS --fail -X POST https://api.datadoghq.com/api/v1/events \
  -H "Authorization: Bearer $DD_ACCESS_TOKEN" \
  -H "Content-Type: application/json" \
  -d '{"title": "Deploy hook ran"}'
"#;

/// The recipe as run here: the emulator instead of Datadog.
fn local(recipe: &str, w: &World) -> String {
    recipe.replace(DOC_API, &w.dd.url())
}

/// A daemon serving the token `automation` from the world's emulator (persona mapping for the
/// world's role → [`ACCOUNT`]), with `extra` appended to the settings.
fn daemon_with_token(w: &World, extra: &str) -> Daemon {
    w.dd.add_persona_mapping(&w.org.uuid, PATTERN, ACCOUNT);
    let settings = format!(
        "{SETTINGS}tokens:\n  - name: automation\n    org_uuid: {}\n    api_url: {}\n{extra}",
        w.org.uuid,
        w.dd.url()
    );
    let d = Daemon::start(&w.datadog_yaml(""), &settings, w.static_env());
    eventually("the token to be served", Duration::from_secs(15), || {
        (d.get("/v1/tokens/automation").status == 200).then_some(())
    });
    d
}

/// The served token, as the daemon hands it out.
fn served_token(d: &Daemon) -> String {
    d.json("/v1/tokens/automation")["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What a consumer's shell has: the binary's directory first on `PATH`, the daemon's socket in
/// `DD_DELEGATED_AUTH_SOCKET`, and a `CURL_HOME` whose `.curlrc` makes curl write what it sends
/// (`verbose`) to `trace`. Nothing else (no `DD_API_KEY`, no `DD_APP_KEY`, no `HOME`).
fn consumer_env(d: &Daemon, trace: &Path) -> HashMap<String, String> {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let curl_home = d.path("curl-home");
    std::fs::create_dir_all(&curl_home).unwrap();
    std::fs::write(
        curl_home.join(".curlrc"),
        format!("verbose\nstderr = \"{}\"\n", trace.display()),
    )
    .unwrap();
    HashMap::from([
        (
            "PATH".to_owned(),
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        (
            "DD_DELEGATED_AUTH_SOCKET".to_owned(),
            d.socket.display().to_string(),
        ),
        ("CURL_HOME".to_owned(), curl_home.display().to_string()),
    ])
}

/// Asserts that curl's trace shows one request with `Authorization: Bearer <token>` and no
/// API or application key header.
fn assert_bearer_only(trace: &Path, token: &str) {
    let text = std::fs::read_to_string(trace).expect("curl wrote its trace");
    let lower = text.to_ascii_lowercase();
    assert!(
        text.contains(&format!("> Authorization: Bearer {token}\r\n")),
        "the request carries the served token as a bearer:\n{text}"
    );
    for header in ["dd-api-key", "dd-application-key", "dd-app-key"] {
        assert!(
            !lower.contains(header),
            "the request sent {header}:\n{text}"
        );
    }
}

#[test]
fn the_doc_shows_these_recipes() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/integrations.md"))
            .unwrap();
    for (what, recipe) in [
        ("current user", CURRENT_USER),
        ("create event", CREATE_EVENT),
        ("cron script", CRON_SCRIPT),
        ("exec", EXEC),
        ("deploy hook", DEPLOY_HOOK),
    ] {
        assert!(
            doc.contains(recipe),
            "docs/integrations.md no longer shows the {what} recipe this test runs:\n{recipe}"
        );
    }
}

#[test]
fn curl_recipes_call_the_api_with_the_token_alone() {
    let w = World::start();
    let d = daemon_with_token(&w, "");
    let token = served_token(&d);

    // Who am I.
    let trace = d.path("trace-current-user");
    let env = consumer_env(&d, &trace);
    let (code, out, err) = run("sh", &["-c", &local(CURRENT_USER, &w)], &env);
    assert_eq!(code, 0, "{err}");
    let user: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("current_user answered {out:?} ({e}); stderr {err}"));
    assert_eq!(user["data"]["type"], "users", "{user}");
    assert_eq!(user["data"]["attributes"]["email"], ACCOUNT, "{user}");
    assert_bearer_only(&trace, &token);
    let last = w.dd.requests().last().cloned().unwrap();
    assert_eq!(
        (last.path.as_str(), last.status, last.account.as_deref()),
        ("/api/v2/current_user", 200, Some(ACCOUNT))
    );

    // An event, as the persona.
    let trace = d.path("trace-event");
    let env = consumer_env(&d, &trace);
    let (code, out, err) = run("sh", &["-c", &local(CREATE_EVENT, &w)], &env);
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_bearer_only(&trace, &token);
    let events = w.dd.events();
    let event = events
        .iter()
        .find(|e| e.title == "Deployed web 1.4.2")
        .unwrap_or_else(|| panic!("no event posted: {events:?}"));
    assert_eq!(event.account, ACCOUNT);
    assert_eq!(event.org_uuid, w.org.uuid);
    assert_eq!(event.text, "by the deploy hook");

    // One exchange served both calls.
    assert_eq!(w.dd.token_exchanges().len(), 1);
    w.assert_no_secrets_in_log(&d, &[token]);
}

#[test]
fn cron_script_posts_an_event_under_an_access_rule_for_its_uid() {
    let w = World::start();
    let uid = nix::unistd::getuid().as_raw();
    // The doc's rule for the cron user: the token only, by uid.
    let d = daemon_with_token(
        &w,
        &format!("access:\n  - instances: [\"token:automation\"]\n    uids: [{uid}]\n"),
    );
    let token = served_token(&d);

    let script = d.path("dd-backup-event");
    std::fs::write(&script, local(CRON_SCRIPT, &w)).unwrap();
    let trace = d.path("trace-cron");
    let env = consumer_env(&d, &trace);
    // As cron runs it: the script alone, with the environment of the cron file.
    let (code, out, err) = run("sh", &[script.to_str().unwrap()], &env);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    assert_bearer_only(&trace, &token);
    let events = w.dd.events();
    let event = events
        .iter()
        .find(|e| e.title == "Nightly backup finished")
        .unwrap_or_else(|| panic!("no event posted: {events:?}"));
    assert_eq!(event.account, ACCOUNT);
    assert_eq!(event.org_uuid, w.org.uuid);
    assert!(event.text.starts_with("on "), "{event:?}");

    // The same uid gets no key: `token:automation` does not open the key instances.
    let (code, out, _) = run(BIN, &["get", "api_key"], &env);
    assert_ne!(code, 0, "a token rule handed out a key: {out}");
    assert!(!out.contains(&w.org.api_key));
}

#[test]
fn exec_token_runs_the_hook_with_the_token_in_its_environment() {
    let w = World::start();
    let d = daemon_with_token(&w, "");
    let token = served_token(&d);

    let hook = d.path("deploy-hook.sh");
    std::fs::write(&hook, local(DEPLOY_HOOK, &w)).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let trace = d.path("trace-exec");
    let env = consumer_env(&d, &trace);
    let script = format!("cd '{}' && {EXEC}", d.dir.path().display());
    let (code, out, err) = run("sh", &["-c", &script], &env);
    assert_eq!(
        code, 0,
        "exec exits with the hook's status\nstdout {out}\nstderr {err}"
    );
    assert_bearer_only(&trace, &token);
    let events = w.dd.events();
    let event = events
        .iter()
        .find(|e| e.title == "Deploy hook ran")
        .unwrap_or_else(|| panic!("no event posted: {events:?}\nstderr {err}"));
    assert_eq!(event.account, ACCOUNT);
    assert_eq!(event.org_uuid, w.org.uuid);
}

#[test]
fn cron_script_without_a_persona_mapping_sends_nothing() {
    let w = World::start();
    // No persona mapping: the exchange is refused (401), and there is nothing to serve.
    let settings = format!(
        "{SETTINGS}tokens:\n  - name: automation\n    org_uuid: {}\n    api_url: {}\n",
        w.org.uuid,
        w.dd.url()
    );
    let d = Daemon::start(&w.datadog_yaml(""), &settings, w.static_env());
    let script = d.path("dd-backup-event");
    // The doc's script, waiting 2 s instead of 30 s.
    let text = local(CRON_SCRIPT, &w).replace("--timeout 30s", "--timeout 2s");
    assert_ne!(text, local(CRON_SCRIPT, &w));
    std::fs::write(&script, text).unwrap();
    let trace = d.path("trace-cron");
    let env = consumer_env(&d, &trace);
    let (code, out, err) = run("sh", &[script.to_str().unwrap()], &env);
    assert_ne!(code, 0, "the script failed without a token\nstdout {out}");
    assert!(
        err.contains("tokens never fall back to anything"),
        "token says why: {err}"
    );
    assert!(!trace.exists(), "curl never ran");
    assert!(w.dd.events().is_empty());
    assert!(
        w.dd.requests().iter().all(|r| r.path != "/api/v1/events"),
        "nothing reached the API"
    );
    let list = d.json("/v1/tokens");
    assert_eq!(list[0]["state"], "unavailable", "{list}");
}

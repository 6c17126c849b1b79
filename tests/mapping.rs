//! `datadog-delegated-auth mapping` through the real binary against the Datadog emulator's
//! mapping API (wire spec §8.2): create, list, get, delete, 404s, conflicts, refused keys,
//! persona mappings, and patterns refused locally before anything is sent.

mod common;

use std::collections::HashMap;

use common::{base_env, cli};
use sandbox::datadog::{DatadogEmulator, DatadogOptions, OrgHandle, Outcome};
use serde_json::Value;

const ORG_UUID: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const AGENT_PATTERN: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";
const TERRAFORM_PATTERN: &str = "arn:aws:sts::123456789012:assumed-role/DatadogTerraformerRole/*";
/// The seed's service-account example.
const SERVICE_ACCOUNT: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

/// An emulator on its own runtime (the CLI runs synchronously beside it), one org, and a
/// `datadog.yaml` whose `dd_url` points at the emulator.
struct Api {
    _rt: tokio::runtime::Runtime,
    dd: DatadogEmulator,
    org: OrgHandle,
    dir: tempfile::TempDir,
}

impl Api {
    fn start() -> Api {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dd = rt
            .block_on(DatadogEmulator::start(DatadogOptions::default()))
            .unwrap();
        let org = dd.add_org(ORG_UUID);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("datadog.yaml"),
            format!("dd_url: {}\n", dd.url()),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("delegated-auth.yaml"),
            "log: { level: info }\n",
        )
        .unwrap();
        Api {
            _rt: rt,
            dd,
            org,
            dir,
        }
    }

    /// The org's admin keys in DD_API_KEY / DD_APP_KEY.
    fn env(&self) -> HashMap<String, String> {
        let mut env = base_env();
        env.insert("DD_API_KEY".into(), self.org.api_key.clone());
        env.insert("DD_APP_KEY".into(), self.org.app_key.clone());
        env
    }

    /// Runs `mapping <args>` with `env`; returns (code, stdout, stderr).
    fn run_with(&self, args: &[&str], env: &HashMap<String, String>) -> (i32, String, String) {
        let config = self.dir.path().join("datadog.yaml");
        let settings = self.dir.path().join("delegated-auth.yaml");
        let mut argv = vec!["mapping"];
        argv.extend_from_slice(args);
        argv.extend([
            "--config",
            config.to_str().unwrap(),
            "--settings",
            settings.to_str().unwrap(),
        ]);
        let (code, out, err) = cli(&argv, env);
        for secret in [&self.org.api_key, &self.org.app_key] {
            assert!(
                !out.contains(secret.as_str()) && !err.contains(secret.as_str()),
                "a key was printed"
            );
        }
        (code, out, err)
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with(args, &self.env())
    }

    fn list_json(&self, persona: bool) -> Vec<Value> {
        let mut args = vec!["list", "--json"];
        if persona {
            args.push("--persona");
        }
        let (code, out, err) = self.run(&args);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap()
    }
}

/// The id printed by `create` ("Created intake mapping <id>.").
fn created_id(out: &str) -> String {
    let line = out.lines().next().unwrap();
    line.rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_owned()
}

#[test]
fn create_list_get_delete_an_intake_mapping() {
    let api = Api::start();
    let (code, out, err) = api.run(&["create", "--arn-pattern", AGENT_PATTERN]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("Created intake mapping "), "{out}");
    // No note about the seed's pattern; only that the emulator is not a Datadog site.
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [format!(
            "note: {} is not a Datadog site; sending the mapping request to it unchanged",
            api.dd.url()
        )],
    );
    let id = created_id(&out);
    let stored = api.dd.intake_mappings(ORG_UUID);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert_eq!(stored[0].arn_pattern, AGENT_PATTERN);
    assert!(
        out.contains(&format!("arn_pattern:        {AGENT_PATTERN}")),
        "{out}"
    );

    let (code, out, _) = api.run(&["list"]);
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("ID "), "{out}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&id) && row.ends_with(AGENT_PATTERN),
        "{out}"
    );

    let listed = api.list_json(false);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["type"], "aws_cloud_auth_intake_mapping");
    assert_eq!(listed[0]["arn_pattern"], AGENT_PATTERN);
    assert!(listed[0].get("account_identifier").is_none());

    let (code, out, _) = api.run(&["get", &id, "--json"]);
    assert_eq!(code, 0);
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got, listed[0]);

    let (code, out, err) = api.run(&["delete", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("Deleted intake mapping {id}."));
    assert!(api.dd.intake_mappings(ORG_UUID).is_empty());
    let (code, out, _) = api.run(&["list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("No intake mappings."), "{out}");

    let outcomes: Vec<(String, String, Outcome)> = api
        .dd
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.outcome))
        .collect();
    let base = "/api/v2/cloud_auth/aws/intake_mapping";
    let one = format!("{base}/{id}");
    assert_eq!(
        outcomes,
        vec![
            ("POST".into(), base.to_owned(), Outcome::Created),
            ("GET".into(), base.to_owned(), Outcome::Read),
            ("GET".into(), base.to_owned(), Outcome::Read),
            ("GET".into(), one.clone(), Outcome::Read),
            ("DELETE".into(), one, Outcome::Deleted),
            ("GET".into(), base.to_owned(), Outcome::Read),
        ]
    );
}

#[test]
fn unknown_ids_and_duplicates_show_the_servers_detail() {
    let api = Api::start();
    let (code, out, err) = api.run(&["delete", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("HTTP 404: Mapping 00000000-0000-4000-8000-000000000000 not found."),
        "{err}"
    );
    assert!(err.contains("datadog-delegated-auth mapping list"), "{err}");

    let (code, _, err) = api.run(&["get", "no-such-id", "--persona"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 404") && err.contains("mapping list --persona"),
        "{err}"
    );

    // An id is one path segment, whatever it contains.
    let (code, _, err) = api.run(&["delete", "../persona_mapping"]);
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 404"), "{err}");
    assert_eq!(
        api.dd.requests().last().unwrap().path,
        "/api/v2/cloud_auth/aws/intake_mapping/..%2Fpersona_mapping"
    );

    assert_eq!(api.run(&["create", "--arn-pattern", AGENT_PATTERN]).0, 0);
    let (code, _, err) = api.run(&["create", "--arn-pattern", AGENT_PATTERN]);
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 409") && err.contains("already exists"),
        "{err}"
    );
}

#[test]
fn invalid_patterns_are_refused_before_anything_is_sent() {
    let api = Api::start();
    // The seed's rules: the wildcard only at the end of the last portion, after a specific
    // resource, never in the middle; plus what an ARN must look like.
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("DatadogAgentRole", "not an ARN"),
        (
            "arn:aws:sts::123456789012:assumed-role/*/session",
            "cannot be placed in the middle",
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*-suffix",
            "cannot be placed in the middle",
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/*",
            "a specific resource must come before the wildcard",
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/Datadog*",
            "a specific resource must come before the wildcard",
        ),
        (
            "arn:aws:sts::*:assumed-role/DatadogAgentRole/*",
            "only allowed in the last portion",
        ),
        (
            "arn:aws:sts::12345:assumed-role/DatadogAgentRole/*",
            "12-digit",
        ),
        ("arn:aws:s3:::my-bucket/*", "cannot be a caller identity"),
    ];
    for (pattern, rule) in cases {
        let (code, out, err) = api.run(&["create", "--arn-pattern", pattern]);
        assert_eq!(code, 2, "{pattern:?}: {out}{err}");
        assert!(err.contains(rule), "{pattern:?}: {err}");
        assert!(err.contains("nothing was sent to Datadog"), "{err}");
        // Persona mappings follow the same rules.
        let (code, _, err) = api.run(&[
            "create",
            "--persona",
            "--account-identifier",
            SERVICE_ACCOUNT,
            "--arn-pattern",
            pattern,
        ]);
        assert_eq!(code, 2, "{pattern:?}: {err}");
    }
    // The pattern is checked even before the keys are looked for.
    let (code, _, err) = api.run_with(
        &[
            "create",
            "--arn-pattern",
            "arn:aws:sts::123456789012:assumed-role/*",
        ],
        &base_env(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("specific resource"), "{err}");
    assert!(api.dd.requests().is_empty(), "{:?}", api.dd.requests());
}

#[test]
fn the_seeds_examples_are_accepted_and_odd_patterns_get_a_note() {
    let api = Api::start();
    // Intake: the seed's example.
    assert_eq!(api.run(&["create", "--arn-pattern", AGENT_PATTERN]).0, 0);
    // Persona: the seed's user, service-account UUID and service-account email examples.
    for (account, pattern) in [
        (
            "john.doe@myorg.com",
            "arn:aws:sts::123456789012:assumed-role/terraform-runner",
        ),
        (SERVICE_ACCOUNT, TERRAFORM_PATTERN),
        (
            "terraform-service-account@myorg.com",
            "arn:aws:sts::123456789012:assumed-role/terraform-runner/ci",
        ),
    ] {
        let (code, out, err) = api.run(&[
            "create",
            "--persona",
            "--account-identifier",
            account,
            "--arn-pattern",
            pattern,
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("Created persona mapping "), "{out}");
        assert!(
            out.contains(&format!("account_identifier: {account}")),
            "{out}"
        );
    }
    let personas = api.list_json(true);
    assert_eq!(personas.len(), 3);
    assert_eq!(personas[1]["type"], "aws_cloud_auth_config");
    assert_eq!(personas[1]["account_identifier"], SERVICE_ACCOUNT);
    assert_eq!(personas[1]["account_uuid"], SERVICE_ACCOUNT);
    assert_eq!(personas[1]["arn_pattern"], TERRAFORM_PATTERN);
    let (code, table, _) = api.run(&["list", "--persona"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("john.doe@myorg.com"), "{table}");
    // Intake and persona collections are separate.
    assert_eq!(api.list_json(false).len(), 1);

    // Valid but matching no Agent: the IAM role ARN. Sent, with a note on stderr.
    let (code, out, err) = api.run(&[
        "create",
        "--arn-pattern",
        "arn:aws:iam::123456789012:role/DatadogAgentRole",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.starts_with("note: STS reports a role's sessions"),
        "{err}"
    );
    assert!(err.contains(AGENT_PATTERN), "{err}");
}

#[test]
fn option_combinations_are_usage_errors() {
    let api = Api::start();
    let (code, _, err) = api.run(&["create", "--persona", "--arn-pattern", TERRAFORM_PATTERN]);
    assert_eq!(code, 2);
    assert!(err.contains("--account-identifier"), "{err}");
    let (code, _, err) = api.run(&[
        "create",
        "--account-identifier",
        "a@b.c",
        "--arn-pattern",
        AGENT_PATTERN,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--persona"), "{err}");
    assert!(api.dd.requests().is_empty());
}

#[test]
fn keys_come_only_from_the_environment_and_refusals_explain_themselves() {
    let api = Api::start();
    for (missing, present) in [("DD_API_KEY", "DD_APP_KEY"), ("DD_APP_KEY", "DD_API_KEY")] {
        let mut env = api.env();
        env.remove(missing);
        let (code, _, err) = api.run_with(&["list"], &env);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.starts_with(&format!("error: {missing} is not set")),
            "{err}"
        );
        assert!(err.contains(present), "{err}");
    }
    // A secret handle is not a key.
    let mut env = api.env();
    env.insert("DD_API_KEY".into(), "ENC[api_key]".into());
    let (code, _, err) = api.run_with(&["list"], &env);
    assert_eq!(code, 2);
    assert!(err.contains("secret handle"), "{err}");
    // The config's api_key is not used for the mapping API.
    std::fs::write(
        api.dir.path().join("datadog.yaml"),
        format!("api_key: {}\ndd_url: {}\n", api.org.api_key, api.dd.url()),
    )
    .unwrap();
    let mut env = api.env();
    env.remove("DD_API_KEY");
    let (code, _, _) = api.run_with(&["list"], &env);
    assert_eq!(code, 2);
    assert!(api.dd.requests().is_empty());

    // Wrong application key: the server's plain-string error and what to check.
    let mut env = api.env();
    env.insert(
        "DD_APP_KEY".into(),
        "0000000000000000000000000000000000000000".into(),
    );
    let (code, _, err) = api.run_with(&["list"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 403: Forbidden."), "{err}");
    assert!(err.contains("cloud_auth_config_read"), "{err}");
    assert_eq!(api.dd.requests()[0].outcome, Outcome::Forbidden);
}

#[test]
fn plain_http_to_a_remote_host_is_refused_and_unreachable_apis_are_reported() {
    let api = Api::start();
    std::fs::write(
        api.dir.path().join("datadog.yaml"),
        "dd_url: http://intake.example.com\n",
    )
    .unwrap();
    let (code, _, err) = api.run(&["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("plain http://"), "{err}");

    std::fs::write(
        api.dir.path().join("datadog.yaml"),
        "dd_url: http://127.0.0.1:9\n",
    )
    .unwrap();
    let (code, _, err) = api.run(&["list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the Datadog API at http://127.0.0.1:9"),
        "{err}"
    );
    assert!(
        err.contains("note: http://127.0.0.1:9 is not a Datadog site"),
        "{err}"
    );
}

#[test]
fn the_api_host_is_the_sites_and_the_proxy_is_honoured() {
    // A CONNECT proxy on loopback that records the tunnel asked for and refuses it: proves the
    // host derived from DD_SITE and the use of proxy.https without any real network.
    let api = Api::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let proxy = format!("http://{proxy_addr}");
    let seen = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let mut stream = stream;
        stream
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        first
    });
    std::fs::write(
        api.dir.path().join("datadog.yaml"),
        format!("proxy:\n  https: {proxy}\n"),
    )
    .unwrap();
    let mut env = api.env();
    env.insert("DD_SITE".into(), "datadoghq.eu".into());
    let (code, _, err) = api.run_with(&["list"], &env);
    // Unblocks the proxy thread if the CLI never connected (the test then fails, not hangs).
    drop(std::net::TcpStream::connect(proxy_addr));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach the Datadog API at https://api.datadoghq.eu"),
        "{err}"
    );
    // The site is well known: the API host is its fully qualified name, as for the exchange
    // (wire spec §10.3; the proxy resolves it).
    assert_eq!(
        seen.join().unwrap().trim_end(),
        "CONNECT api.datadoghq.eu.:443 HTTP/1.1"
    );
    // With the conversion off, the name is used as written.
    let (proxy2, seen2) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let (stream, _) = l.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            let mut stream = stream;
            stream
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            first
        });
        (format!("http://{addr}"), t)
    };
    std::fs::write(
        api.dir.path().join("datadog.yaml"),
        format!("proxy:\n  https: {proxy2}\nconvert_dd_site_fqdn:\n  enabled: false\n"),
    )
    .unwrap();
    let (code, _, err) = api.run_with(&["list"], &env);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        seen2.join().unwrap().trim_end(),
        "CONNECT api.datadoghq.eu:443 HTTP/1.1"
    );
}

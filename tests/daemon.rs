//! The daemon through its real interfaces: the binary, its config files, signals and the socket.
//! These cover the static-key path (no AWS): managed keys are exercised in `tests/e2e.rs`.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Daemon, base_env, cli, context_switches, wakeups_since, write_by_rename};
use http::Method;
use nix::sys::signal::Signal;

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbb0002";
const KEY_LOGS: &str = "cccccccccccccccccccccccccccc0003";
const ORG: &str = "11111111-2222-3333-4444-555555555555";

fn static_config(key: &str) -> String {
    format!("api_key: {key}\nsite: datadoghq.com\nlogs_config:\n  api_key: {KEY_LOGS}\n")
}

const SETTINGS: &str = "log: { level: debug, format: text }\nrefresh: { startup_grace: 1s, retry_min: 1s, retry_max: 2s }\n";

#[test]
fn serves_static_keys_with_etag_and_404s_unknown_instances() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let r = d.get("/v1/keys/api_key");
    assert_eq!(r.status, 200, "{}", d.logs());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["api_key"], KEY_A);
    assert_eq!(v["source"], "fallback");
    assert_eq!(v["instance"], "api_key");
    let etag = r.headers["etag"].to_str().unwrap();
    assert_eq!(etag, format!("\"{}\"", v["generation"]));
    assert_eq!(r.headers["cache-control"], "no-store");

    let r = d.get("/v1/keys/nope");
    assert_eq!(r.status, 404);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "unknown_instance");

    let list = d.json("/v1/keys");
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["api_key"]);
    assert!(!String::from_utf8_lossy(&d.get("/v1/keys").body).contains(KEY_A));

    let (code, out, _) = cli(
        &["get", "--socket", d.socket.to_str().unwrap()],
        &base_env(),
    );
    assert_eq!((code, out.trim()), (0, KEY_A));

    // The log goes to a file here, as to journald: plain text, no terminal colour codes.
    let logs = d.logs();
    assert!(logs.contains("Listening."), "{logs}");
    assert!(
        !logs.contains('\x1b'),
        "colour codes in a log that is not a terminal: {logs:?}"
    );
}

#[test]
fn product_sections_fall_back_to_their_own_static_key() {
    let yaml = format!(
        "{}  delegated_auth:\n    org_uuid: {ORG}\n",
        static_config(KEY_A)
    );
    let d = Daemon::start(&yaml, SETTINGS, base_env());
    // No AWS here: the first exchange fails, the section's own static key is served.
    let v = d.wait_key("logs_config.api_key", "fallback", |v| {
        v["source"] == "fallback"
    });
    assert_eq!(v["api_key"], KEY_LOGS);
    assert_eq!(v["org_uuid"], ORG);
    let status = d.json("/v1/status");
    let logs = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "logs_config.api_key")
        .unwrap()
        .clone();
    assert_eq!(logs["state"], "fallback");
    assert!(
        logs["error"]
            .as_str()
            .unwrap()
            .contains("consecutive failures"),
        "{logs}"
    );
}

#[test]
fn long_poll_answers_304_after_the_wait_and_200_on_a_reload() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let first = d.get("/v1/keys/api_key");
    let etag = first.headers["etag"].to_str().unwrap().to_owned();

    let r = d
        .request(
            Method::GET,
            "/v1/keys/api_key?wait=1s",
            &[("if-none-match", &etag)],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 304);
    assert_eq!(r.headers["etag"].to_str().unwrap(), etag);

    let r = d
        .request(
            Method::GET,
            "/v1/keys/api_key",
            &[("if-none-match", &etag)],
            None,
        )
        .unwrap();
    assert_eq!(
        r.status, 304,
        "a conditional read without wait answers at once"
    );

    let socket = d.socket.clone();
    let etag2 = etag.clone();
    let poll = std::thread::spawn(move || {
        common::rt().block_on(datadog_delegated_auth::client::request(
            &socket,
            Method::GET,
            "/v1/keys/api_key?wait=120s",
            &[("if-none-match", &etag2)],
            None,
            Duration::from_secs(130),
        ))
    });
    std::thread::sleep(Duration::from_millis(300));
    write_by_rename(&d.config, &static_config(KEY_B));
    let r = poll.join().unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", d.logs());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["api_key"], KEY_B);
    assert_ne!(r.headers["etag"].to_str().unwrap(), etag);
}

#[test]
fn reloads_on_in_place_edit_and_sighup_and_keeps_old_keys_on_invalid_config() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    // In-place edit (same inode, like `echo > file`).
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&d.config)
        .unwrap()
        .write_all(static_config(KEY_B).as_bytes())
        .unwrap();
    d.wait_key("api_key", "in-place edit", |v| v["api_key"] == KEY_B);

    // An invalid edit: the old key stays, status shows the error.
    write_by_rename(&d.config, "api_key: [unclosed\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = d.json("/v1/status");
        if status["config"]["last_reload_error"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reload error never shown: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.json("/v1/keys/api_key")["api_key"], KEY_B);
    assert!(d.get("/metrics").body.windows(8).any(|w| w == b"failure\""));

    // SIGHUP re-reads even without a file event: write the file where the watcher cannot
    // see it... it always can, so check SIGHUP on an unchanged valid file clears the error.
    std::fs::write(&d.config, static_config(KEY_A)).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_key("api_key", "SIGHUP reload", |v| v["api_key"] == KEY_A);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !d.json("/v1/status")["config"]["last_reload_error"].is_null() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let before = d.logs().matches("Configuration reloaded").count();
    d.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while d.logs().matches("Configuration reloaded").count() == before {
        assert!(std::time::Instant::now() < deadline, "{}", d.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_answers_open_long_polls_removes_the_socket_and_exits_zero() {
    let mut d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let etag = d.get("/v1/keys/api_key").headers["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let polls: Vec<_> = (0..3)
        .map(|_| {
            let socket = d.socket.clone();
            let etag = etag.clone();
            std::thread::spawn(move || {
                common::rt().block_on(datadog_delegated_auth::client::request(
                    &socket,
                    Method::GET,
                    "/v1/keys/api_key?wait=300s",
                    &[("if-none-match", &etag)],
                    None,
                    Duration::from_secs(60),
                ))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    d.signal(Signal::SIGTERM);
    for p in polls {
        let r = p.join().unwrap().expect("long poll answered, not cut");
        assert_eq!(r.status, 304);
    }
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        d.logs()
    );
    assert!(!d.socket.exists(), "socket file removed");
}

#[test]
fn a_second_daemon_does_not_steal_a_live_socket_but_replaces_a_stale_one() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let (code, _, err) = cli(
        &[
            "run",
            "--config",
            d.config.to_str().unwrap(),
            "--settings",
            d.settings.to_str().unwrap(),
            "--socket",
            d.socket.to_str().unwrap(),
        ],
        &base_env(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already serving"), "{err}");
    assert_eq!(
        d.get("/v1/keys/api_key").status,
        200,
        "the first daemon still serves"
    );

    // A stale socket file (a crashed daemon) is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let second = Daemon::spawn_at(
        &static_config(KEY_B),
        SETTINGS,
        base_env(),
        &[],
        Some(stale.clone()),
    );
    second.wait_live();
    assert_eq!(second.json("/v1/keys/api_key")["api_key"], KEY_B);
}

#[test]
fn socket_mode_is_applied() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start(
        &static_config(KEY_A),
        &format!("{SETTINGS}socket: {{ mode: \"0600\" }}\n"),
        base_env(),
    );
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn peers_outside_access_rules_get_403() {
    if !nix::unistd::Uid::effective().is_root() || which("setpriv").is_none() {
        eprintln!("skipped: needs root and setpriv to run a client under another uid");
        return;
    }
    let settings = format!(
        "{SETTINGS}socket: {{ mode: \"0666\" }}\naccess:\n  - instances: [\"*\"]\n    uids: [0]\n  - instances: [api_key]\n    uids: [65533]\n"
    );
    let yaml = format!(
        "{}  delegated_auth:\n    org_uuid: {ORG}\n",
        static_config(KEY_A)
    );
    let d = Daemon::start(&yaml, &settings, base_env());
    // The socket's directory must be reachable by the other uid.
    d.open_to_other_uids();
    assert_eq!(d.get("/v1/keys/api_key").status, 200, "root is allowed");

    let as_uid = |uid: &str, instance: &str| {
        common::as_uid(uid, common::BIN)
            .args(["get", instance, "--socket"])
            .arg(&d.socket)
            .env_clear()
            .output()
            .unwrap()
    };
    let out = as_uid("65534", "api_key");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("access rule"), "{err}");
    assert!(out.stdout.is_empty());

    let out = as_uid("65533", "api_key");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), KEY_A);
    let out = as_uid("65533", "logs_config.api_key");
    assert_eq!(
        out.status.code(),
        Some(1),
        "only api_key is granted to 65533"
    );
}

/// An access rule written with a DELA instance's old name (without the Agent's `[<org>]`) still
/// grants that instance, under either name, for one release; it grants nothing else.
#[test]
fn access_rules_by_an_old_dela_name_still_apply() {
    if !nix::unistd::Uid::effective().is_root() || which("setpriv").is_none() {
        eprintln!("skipped: needs root and setpriv to run a client under another uid");
        return;
    }
    const KEY_EU: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeee0005";
    let old = "additional_endpoints[https://app.datadoghq.eu][0]";
    let new = format!("{old}[{ORG}]");
    let settings = format!(
        "{SETTINGS}socket: {{ mode: \"0666\" }}\naccess:\n  - instances: [\"*\"]\n    uids: [0]\n  - instances: [\"{old}\"]\n    uids: [65533]\n"
    );
    let yaml = format!(
        "{}additional_endpoints:\n  \"https://app.datadoghq.eu\": [\"DELA[{ORG}, aws, fallback={KEY_EU}]\"]\n",
        static_config(KEY_A)
    );
    let d = Daemon::start(&yaml, &settings, base_env());
    d.open_to_other_uids();
    let as_uid = |instance: &str| {
        common::as_uid("65533", common::BIN)
            .args(["get", instance, "--socket"])
            .arg(&d.socket)
            .env_clear()
            .output()
            .unwrap()
    };
    for name in [old, new.as_str()] {
        let out = as_uid(name);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), KEY_EU);
    }
    assert_eq!(
        as_uid("api_key").status.code(),
        Some(1),
        "only the DELA instance"
    );
    assert!(
        d.logs().contains("old name"),
        "the settings warning is logged"
    );
}

/// Wire spec §10.2 on reload: an edit that adds a bad directive is applied (the old
/// all-or-nothing rule would have kept the previous configuration); every other instance keeps
/// serving, and the new entry is `invalid`.
#[test]
fn a_reload_with_a_bad_entry_applies_the_rest() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    d.wait_key("api_key", "the static key", |v| v["api_key"] == KEY_A);
    let edited = format!(
        "{}additional_endpoints:\n  \"https://app.datadoghq.eu\": [\"DELA[{ORG}, gcp]\"]\n",
        static_config(KEY_B)
    );
    write_by_rename(&d.config, &edited);
    d.wait_key("api_key", "the reloaded key", |v| v["api_key"] == KEY_B);
    let list = d.json("/v1/keys");
    let bad = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "additional_endpoints[https://app.datadoghq.eu][0]")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(bad["state"], "invalid");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .contains("unsupported provider `gcp`")
    );
    let status = d.json("/v1/status");
    assert!(status["config"]["last_reload_error"].is_null(), "{status}");
    assert_eq!(d.get("/v1/health/ready").status, 200);
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .find(|p| p.exists())
}

fn raw(d: &Daemon, request: &[u8]) -> String {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 200") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_requests_get_clear_statuses() {
    let d = Daemon::start(
        &static_config(KEY_A),
        &format!("{SETTINGS}socket: {{ idle_timeout: 1s }}\n"),
        base_env(),
    );
    let big = format!(
        "GET /v1/keys/api_key HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert!(raw(&d, big.as_bytes()).starts_with("HTTP/1.1 431"));
    let body = "x".repeat(10_000);
    let req = format!(
        "POST /v1/keys/api_key/rejected HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert!(raw(&d, req.as_bytes()).starts_with("HTTP/1.1 413"));
    assert!(raw(&d, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404"));
    let r = raw(&d, b"DELETE /v1/keys/api_key HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.to_ascii_lowercase().contains("allow: get"));
    let r = raw(
        &d,
        b"GET /v1/keys/api_key?wait=1h HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // An idle client (connected, sending nothing) is dropped after the idle timeout.
    let mut idle = UnixStream::connect(&d.socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let started = std::time::Instant::now();
    let n = idle.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "dropped by the idle timeout, not the test's"
    );
}

#[test]
fn a_thousand_idle_connections_do_not_block_a_new_client() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    let r = d.get("/v1/keys/api_key");
    assert_eq!(r.status, 200);
    let rejected = d
        .request(
            Method::POST,
            "/v1/keys/api_key/rejected",
            &[],
            Some(br#"{"api_key_suffix":"a0001"}"#.to_vec()),
        )
        .unwrap();
    assert_eq!(rejected.status, 202);
    drop(idle);
}

#[test]
fn debug_logs_never_contain_a_whole_key() {
    let yaml = format!(
        "{}  delegated_auth:\n    org_uuid: {ORG}\n",
        static_config(KEY_A)
    );
    let d = Daemon::start(&yaml, SETTINGS, base_env());
    for _ in 0..3 {
        d.get("/v1/keys/api_key");
        d.get("/v1/keys/logs_config.api_key");
        d.get("/v1/status");
        d.get("/metrics");
    }
    d.request(
        Method::POST,
        "/v1/keys/api_key/rejected",
        &[],
        Some(br#"{"api_key_suffix":"a0001"}"#.to_vec()),
    )
    .unwrap();
    write_by_rename(&d.config, &yaml.replace(KEY_A, KEY_B));
    d.wait_key("api_key", "reload", |v| v["api_key"] == KEY_B);
    let logs = d.logs();
    assert!(logs.contains("Key read"), "debug logging is on: {logs}");
    for key in [KEY_A, KEY_B, KEY_LOGS] {
        assert!(!logs.contains(key), "{key} leaked into logs");
        assert!(
            !logs.contains(&key[..20]),
            "a large part of {key} leaked into logs"
        );
    }
}

#[test]
fn clients_find_the_socket_from_the_settings_file_even_when_datadog_yaml_is_broken() {
    let settings = format!("{SETTINGS}socket: {{ path: \"@SOCKET@\" }}\n");
    let d = Daemon::start(&static_config(KEY_A), &settings, base_env());
    let args = |cmd: &'static str| {
        vec![
            cmd.to_owned(),
            "--config".to_owned(),
            d.config.to_str().unwrap().to_owned(),
            "--settings".to_owned(),
            d.settings.to_str().unwrap().to_owned(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cli(&a, &base_env())
    };
    let (code, out, err) = run(args("get"));
    assert_eq!((code, out.trim()), (0, KEY_A), "{err}");
    // The Agent's file breaks (the daemon keeps its last good config): clients still find it.
    write_by_rename(&d.config, "api_key: [unclosed\n");
    let (code, out, err) = run(args("get"));
    assert_eq!((code, out.trim()), (0, KEY_A), "{err}");
    let (code, _, err) = run(args("status"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn systemd_notifications_watchdog_and_json_logs() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut env = base_env();
    env.insert("NOTIFY_SOCKET".into(), notify_path.to_str().unwrap().into());
    env.insert("WATCHDOG_USEC".into(), "200000".into());
    env.insert("WATCHDOG_PID".into(), "self".into());
    let settings = "log: { level: info, format: json }\n";
    let mut d = Daemon::start(&static_config(KEY_A), settings, env);

    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // READY with a status line, then watchdog pings at half the 200 ms interval.
    while !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 3) {
        let n = notify.recv(&mut buf).expect("a notification within 30 s");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(seen.contains("STATUS=serving 1 instance(s)"), "{seen}");

    d.signal(Signal::SIGTERM);
    loop {
        let n = notify.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));

    // Every log line is one JSON object with a message.
    let logs = d.logs();
    let lines: Vec<_> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["message"].is_string(), "{line}");
    }
}

#[test]
fn a_second_stop_signal_exits_at_once() {
    // A long poll keeps the graceful stop busy for its whole grace period (60 s here); the
    // second SIGTERM must not wait for it.
    let mut d = Daemon::spawn(
        &static_config(KEY_A),
        SETTINGS,
        base_env(),
        &["--grace", "60s"],
    );
    d.wait_live();
    // Keep a request in flight that the graceful stop must wait for: a rejection report whose
    // body never arrives holds its connection until the idle timeout (60 s by default).
    let mut held = UnixStream::connect(&d.socket).unwrap();
    held.write_all(
        b"POST /v1/keys/api_key/rejected HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    d.signal(Signal::SIGTERM);
    let started = std::time::Instant::now();
    let code = d.wait_exit(Duration::from_secs(30));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second signal exits at once"
    );
    assert_eq!(code, Some(1));
    assert!(d.logs().contains("Second stop signal"), "{}", d.logs());
}

/// The socket watcher sees its own directory being removed without watching that directory's
/// parent, which is typically `/run`: files coming and going there (other daemons' pid files
/// and sockets) must not wake an idle daemon.
#[test]
fn files_next_to_the_socket_directory_do_not_wake_an_idle_daemon() {
    // The socket in a directory of its own, beside nothing the daemon watches for other reasons
    // (the harness puts it next to the configuration files, whose directory is watched).
    let parent = tempfile::tempdir().unwrap();
    let socket = parent.path().join("run/delegated-auth.sock");
    let d = Daemon::spawn_at(
        &static_config(KEY_A),
        SETTINGS,
        base_env(),
        &[],
        Some(socket),
    );
    d.wait_live();
    let pid = d.child.as_ref().unwrap().id();
    let parent = parent.path().to_path_buf();
    std::thread::sleep(Duration::from_millis(500));
    let before = context_switches(pid);
    for i in 0..50 {
        let noise = parent.join(format!(".ddda-noise-{}-{i}", std::process::id()));
        std::fs::write(&noise, b"x").unwrap();
        std::fs::remove_file(&noise).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    let woke = wakeups_since(pid, &before);
    assert!(
        woke <= 2,
        "the daemon woke {woke} times for files that are not its own"
    );
    // ... while the removal of the socket directory itself is still seen.
    std::fs::remove_dir_all(d.socket.parent().unwrap()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the socket was not bound again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

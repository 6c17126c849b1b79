//! Consumers through the real binary: `secret-helper` (fed exactly what the Datadog Agent and
//! Vector send, parsed exactly as they parse it), file sinks, `exec`, and `get`. Rotations are
//! static-key changes made by rewriting datadog.yaml (a reload), so no AWS is needed here.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Daemon, base_env, cli, write_by_rename};
use datadog_delegated_auth::client;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbb0002";
const KEY_LOGS: &str = "cccccccccccccccccccccccccccc0003";
const ORG: &str = "11111111-2222-3333-4444-555555555555";

const SETTINGS: &str = "log: { level: debug, format: text }\nrefresh: { startup_grace: 1s, retry_min: 1s, retry_max: 2s }\n";

/// The Agent's defaults (pkg/config/setup: `secret_backend_timeout` 30 s,
/// `secret_backend_output_max_size` 1 MiB for stdout and, through the same limitBuffer, stderr).
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
const AGENT_OUTPUT_MAX: usize = 1024 * 1024;

/// A static `api_key`, and a `logs_config.api_key` instance (delegated, so it exists; with no AWS
/// here it serves its own static key after the first failed exchange).
fn static_config(key: &str) -> String {
    format!(
        "api_key: {key}\nsite: datadoghq.com\nlogs_config:\n  api_key: {KEY_LOGS}\n  delegated_auth:\n    org_uuid: {ORG}\n"
    )
}

/// Polls `f` until it returns `Some`, or panics with `what` and `context()` after `limit`.
fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn lines(path: &Path) -> Vec<String> {
    read(path).lines().map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------------------------
// secret-helper
// ---------------------------------------------------------------------------------------------

/// Runs `secret-helper` like the Agent does (request on stdin, stdin closed, stdout and stderr
/// collected); returns (exit code, stdout, stderr, elapsed).
fn secret_helper(socket: &Path, extra: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg("secret-helper")
        .arg("--socket")
        .arg(socket)
        .args(extra)
        .env_clear()
        .envs(base_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // An oversized request is cut off by the helper (broken pipe here), as the Agent's would be.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// What the Agent's `fetchSecret` makes of the command's stdout (DataDog/datadog-agent
/// `comp/core/secrets/impl/fetch_secret.go`): `json.Unmarshal` into
/// `map[string]SecretVal` with `SecretVal{Value string "json:\"value,omitempty\""; ErrorMsg
/// string "json:\"error,omitempty\""}`, then, for each requested handle in order: missing →
/// error, non-empty `ErrorMsg` → error, empty `Value` → error. Go semantics mirrored: `null`
/// leaves a field (or a whole entry) at its zero value, field names match case-insensitively,
/// unknown fields are ignored, any other JSON type is an unmarshal error for the whole output.
fn agent_fetch(output: &[u8], handles: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let unmarshal = |e: String| format!("could not unmarshal 'secret_backend_command' output: {e}");
    let doc: Value = serde_json::from_slice(output).map_err(|e| unmarshal(e.to_string()))?;
    let mut secrets: HashMap<String, (String, String)> = HashMap::new();
    match doc {
        Value::Null => {}
        Value::Object(entries) => {
            for (handle, entry) in entries {
                let mut val = (String::new(), String::new());
                match entry {
                    Value::Null => {}
                    Value::Object(fields) => {
                        for (name, field) in fields {
                            let slot = if name.eq_ignore_ascii_case("value") {
                                &mut val.0
                            } else if name.eq_ignore_ascii_case("error") {
                                &mut val.1
                            } else {
                                continue;
                            };
                            match field {
                                Value::Null => {}
                                Value::String(s) => *slot = s,
                                other => {
                                    return Err(unmarshal(format!(
                                        "cannot unmarshal {other} into Go struct field SecretVal.{name} of type string"
                                    )));
                                }
                            }
                        }
                    }
                    other => {
                        return Err(unmarshal(format!(
                            "cannot unmarshal {other} into Go value of type secrets.SecretVal"
                        )));
                    }
                }
                secrets.insert(handle, val);
            }
        }
        other => {
            return Err(unmarshal(format!(
                "cannot unmarshal {other} into Go value of type map[string]secrets.SecretVal"
            )));
        }
    }
    let mut res = BTreeMap::new();
    for handle in handles {
        let Some((value, error)) = secrets.get(*handle) else {
            return Err(format!(
                "secret handle '{handle}' was not resolved by the secret_backend_command"
            ));
        };
        if !error.is_empty() {
            return Err(format!(
                "an error occurred while resolving '{handle}': {error}"
            ));
        }
        if value.is_empty() {
            return Err(format!("resolved secret for '{handle}' is empty"));
        }
        res.insert((*handle).to_owned(), value.clone());
    }
    Ok(res)
}

/// What Vector's `exec` secret backend makes of the output (vectordotdev/vector
/// `src/secrets/exec.rs`): serde into `HashMap<String, ExecResponse{value: Option<String>,
/// error: Option<String>}>`, then per key: missing, `error` present, or `value` absent or
/// empty → error.
fn vector_retrieve(output: &[u8], keys: &[&str]) -> Result<BTreeMap<String, String>, String> {
    #[derive(serde::Deserialize)]
    struct ExecResponse {
        value: Option<String>,
        error: Option<String>,
    }
    let response: HashMap<String, ExecResponse> =
        serde_json::from_slice(output).map_err(|e| e.to_string())?;
    let mut res = BTreeMap::new();
    for k in keys {
        let secret = response
            .get(*k)
            .ok_or_else(|| format!("secret for key '{k}' was not retrieved"))?;
        if let Some(e) = &secret.error {
            return Err(format!("secret for key '{k}' was not retrieved: {e}"));
        }
        match &secret.value {
            Some(v) if !v.is_empty() => res.insert((*k).to_owned(), v.clone()),
            _ => return Err(format!("secret for key '{k}' was empty")),
        };
    }
    Ok(res)
}

/// Checks the answer is one the Agent accepts as a command run (exit 0, within its limits).
fn assert_agent_accepts(code: i32, out: &[u8], err: &str, elapsed: Duration) {
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.len() <= AGENT_OUTPUT_MAX && err.len() <= AGENT_OUTPUT_MAX);
    assert!(elapsed < AGENT_TIMEOUT, "{elapsed:?}");
}

#[test]
fn secret_helper_answers_exactly_what_the_agent_sends_as_the_agent_parses_it() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let handles = ["api_key", "logs_config.api_key"];
    // Current Agents marshal a map with json-iterator (key order not fixed) and protocol 1.1;
    // older ones used encoding/json (sorted keys) and 1.0.
    let requests: [&[u8]; 3] = [
        br#"{"version":"1.1","secrets":["api_key","logs_config.api_key"],"secret_backend_timeout":30}"#,
        br#"{"secret_backend_timeout":30,"secrets":["api_key","logs_config.api_key"],"version":"1.1"}"#,
        br#"{"secrets":["api_key","logs_config.api_key"],"version":"1.0"}"#,
    ];
    for request in requests {
        let (code, out, err, elapsed) = secret_helper(&d.socket, &[], request);
        assert_agent_accepts(code, &out, &err, elapsed);
        let resolved = agent_fetch(&out, &handles).unwrap_or_else(|e| panic!("{e}\n{err}"));
        assert_eq!(resolved["api_key"], KEY_A);
        assert_eq!(resolved["logs_config.api_key"], KEY_LOGS);
        assert!(err.is_empty(), "nothing on stderr when all is well: {err}");
        // Exactly the documented shape: value a string, error null.
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            doc["api_key"],
            serde_json::json!({"value": KEY_A, "error": null})
        );
    }

    // A rotation reaches the Agent on its next refresh (secret_refresh_interval).
    write_by_rename(&d.config, &static_config(KEY_B));
    d.wait_key("api_key", "rotation", |v| v["api_key"] == KEY_B);
    let (code, out, err, elapsed) = secret_helper(
        &d.socket,
        &[],
        br#"{"version":"1.1","secrets":["api_key"],"secret_backend_timeout":30}"#,
    );
    assert_agent_accepts(code, &out, &err, elapsed);
    assert_eq!(agent_fetch(&out, &["api_key"]).unwrap()["api_key"], KEY_B);

    // Vector's exec backend speaks the same protocol (serde_json of {version, secrets}).
    let (code, out, err, _) = secret_helper(
        &d.socket,
        &[],
        br#"{"version":"1.0","secrets":["api_key"]}"#,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        vector_retrieve(&out, &["api_key"]).unwrap()["api_key"],
        KEY_B
    );
}

#[test]
fn secret_helper_resolves_dual_shipping_instance_names() {
    // A DELA directive with a static fallback: served (as fallback) without AWS. Its instance
    // name holds `[`, `]`, `/` and `:`, all of which the Agent passes through ENC[...] as is.
    const KEY_EU: &str = "dddddddddddddddddddddddddddd0004";
    let yaml = format!(
        "{}additional_endpoints:\n  \"https://app.datadoghq.eu\":\n    - \"DELA({ORG}, aws, fallback={KEY_EU})\"\n",
        static_config(KEY_A)
    );
    let d = Daemon::start(&yaml, SETTINGS, base_env());
    // The Agent's instance name carries the org; the name without it (this daemon's name
    // before) still works for one release.
    let handle = format!("additional_endpoints[https://app.datadoghq.eu][0][{ORG}]");
    let old = "additional_endpoints[https://app.datadoghq.eu][0]";
    // Go's encoding/json writes the handle unescaped (no <, >, & in it).
    let request = format!(
        r#"{{"version":"1.1","secrets":["{handle}","{old}","api_key"],"secret_backend_timeout":30}}"#
    );
    let (code, out, err, elapsed) = secret_helper(&d.socket, &[], request.as_bytes());
    assert_agent_accepts(code, &out, &err, elapsed);
    let resolved = agent_fetch(&out, &[handle.as_str(), old, "api_key"])
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(resolved[handle.as_str()], KEY_EU);
    assert_eq!(resolved[old], KEY_EU);
    assert_eq!(resolved["api_key"], KEY_A);
    // Over the socket, the old name answers with the current name.
    let v = d.json(&format!("/v1/keys/{}", client::encode_instance(old)));
    assert_eq!(v["instance"], handle.as_str());
    let list = d.json("/v1/keys");
    assert!(
        list.as_array().unwrap().iter().all(|i| i["name"] != old),
        "an alias is not an instance of its own: {list}"
    );
}

#[test]
fn secret_helper_unknown_handles_are_per_handle_errors_in_well_formed_output() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let (code, out, err, elapsed) = secret_helper(
        &d.socket,
        &[],
        br#"{"version":"1.1","secrets":["api_key","eu_api_key",""],"secret_backend_timeout":30}"#,
    );
    assert_agent_accepts(code, &out, &err, elapsed);
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["api_key"]["value"], KEY_A);
    let unknown = doc["eu_api_key"]["error"].as_str().unwrap();
    assert!(
        unknown.contains("no instance named \"eu_api_key\"") && unknown.contains("api_key"),
        "{unknown}"
    );
    assert!(doc["eu_api_key"]["value"].is_null());
    assert!(
        doc[""]["error"]
            .as_str()
            .unwrap()
            .contains("empty secret handle")
    );
    // The Agent fails the batch on the first erroring handle, with our message.
    let e = agent_fetch(&out, &["api_key", "eu_api_key"]).unwrap_err();
    assert!(
        e.starts_with(
            "an error occurred while resolving 'eu_api_key': datadog-delegated-auth has no instance"
        ),
        "{e}"
    );
    assert!(err.contains("eu_api_key") && !err.contains(KEY_A), "{err}");
}

#[test]
fn secret_helper_with_the_daemon_down_answers_per_handle_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let (code, out, err, elapsed) = secret_helper(
        &socket,
        &["--timeout", "1s"],
        br#"{"version":"1.1","secrets":["api_key"],"secret_backend_timeout":30}"#,
    );
    assert_agent_accepts(code, &out, &err, elapsed);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let e = agent_fetch(&out, &["api_key"]).unwrap_err();
    assert!(e.contains("cannot reach the daemon"), "{e}");
}

/// A daemon that accepts connections and never answers.
struct HungDaemon {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HungDaemon {
    /// `hold`: keep connections open (hung) or close them at once (a broken daemon).
    fn bind(path: &Path, hold: bool) -> HungDaemon {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        if hold {
                            held.push(conn);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        HungDaemon {
            stop,
            accepted,
            thread: Some(thread),
        }
    }
}

impl Drop for HungDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn secret_helper_answers_in_bounded_time_when_the_daemon_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    let hung = HungDaemon::bind(&socket, true);

    // Default budget (4 s), well under the Agent's 30 s.
    let (code, out, err, elapsed) = secret_helper(
        &socket,
        &[],
        br#"{"version":"1.1","secrets":["api_key","logs_config.api_key"],"secret_backend_timeout":30}"#,
    );
    assert_agent_accepts(code, &out, &err, elapsed);
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    let doc: Value = serde_json::from_slice(&out).unwrap();
    for h in ["api_key", "logs_config.api_key"] {
        let e = doc[h]["error"].as_str().unwrap();
        assert!(e.contains("did not answer in time"), "{e}");
    }
    assert!(hung.accepted.load(Ordering::SeqCst) >= 2);

    // A short Agent timeout shrinks the budget so the answer still arrives first.
    let (code, out, err, elapsed) = secret_helper(
        &socket,
        &[],
        br#"{"version":"1.1","secrets":["api_key"],"secret_backend_timeout":2}"#,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        elapsed < Duration::from_millis(3500),
        "shorter than the default budget: {elapsed:?}"
    );
    assert!(agent_fetch(&out, &["api_key"]).is_err());
}

#[test]
fn secret_helper_waits_for_a_daemon_that_is_still_starting() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("later.sock");
    let socket2 = socket.clone();
    let helper = std::thread::spawn(move || {
        secret_helper(
            &socket2,
            &["--timeout", "25s"],
            br#"{"version":"1.0","secrets":["api_key"]}"#,
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let d = Daemon::spawn_at(
        &static_config(KEY_A),
        SETTINGS,
        base_env(),
        &[],
        Some(socket),
    );
    let (code, out, err, _) = helper.join().unwrap();
    assert_eq!(code, 0, "{err}\n{}", d.logs());
    assert_eq!(agent_fetch(&out, &["api_key"]).unwrap()["api_key"], KEY_A);
}

#[test]
fn secret_helper_refuses_requests_it_cannot_read_with_exit_1_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("unused.sock");
    let cases: [(&[u8], &str); 5] = [
        (b"not json", "not a secret backend request"),
        (b"", "stdin was empty"),
        (br#"{"version":"2.0","secrets":["api_key"]}"#, "speaks 1.x"),
        (br#"{"version":"1.0"}"#, "no \"secrets\" list"),
        (
            br#"{"version":"1.0","secrets":"api_key"}"#,
            "not a secret backend request",
        ),
    ];
    for (input, expect) in cases {
        let (code, out, err, elapsed) = secret_helper(&socket, &[], input);
        assert_eq!(code, 1, "{:?}", String::from_utf8_lossy(input));
        assert!(out.is_empty(), "nothing on stdout");
        assert!(err.contains(expect), "{expect:?} in {err}");
        assert!(elapsed < Duration::from_secs(10));
    }
    // Oversized input.
    let big = vec![b' '; 2 * 1024 * 1024];
    let (code, _, err, _) = secret_helper(&socket, &[], &big);
    assert_eq!(code, 1);
    assert!(err.contains("larger than"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// File sinks
// ---------------------------------------------------------------------------------------------

/// A group to give sink files: another existing group when running as root (so the chown is
/// visible), else our own.
fn sink_group() -> (String, u32) {
    let egid = nix::unistd::getegid().as_raw();
    if nix::unistd::geteuid().is_root() {
        for line in read(Path::new("/etc/group")).lines() {
            let mut f = line.split(':');
            let (Some(name), _, Some(gid)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let Ok(gid) = gid.parse::<u32>()
                && gid != egid
                && !name.is_empty()
            {
                return (name.to_owned(), gid);
            }
        }
    }
    (format!("\"{egid}\""), egid)
}

fn sink_settings(path: &Path, group: &str) -> String {
    format!(
        "{SETTINGS}sinks:\n  - instance: api_key\n    path: {}\n    mode: \"0640\"\n    group: {group}\n",
        path.display()
    )
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

fn reloads(d: &Daemon) -> usize {
    d.logs().matches("Configuration reloaded").count()
}

#[test]
fn sink_file_has_mode_group_and_exact_content_and_changes_only_by_atomic_rename() {
    let keys = tempfile::tempdir().unwrap();
    std::fs::set_permissions(keys.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let path = keys.path().join("api_key");
    let (group, gid) = sink_group();
    let settings = sink_settings(&path, &group);
    let d = Daemon::start(&static_config(KEY_A), &settings, base_env());

    wait_for(
        "the sink file",
        Duration::from_secs(30),
        || (read(&path) == KEY_A).then_some(()),
        || d.logs(),
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.gid(), gid);
    // Exactly the key: `${file:…}` (OTel Collector) and readers that do not trim get it as is.
    assert_eq!(std::fs::read(&path).unwrap(), KEY_A.as_bytes());
    assert!(leftovers(keys.path()).is_empty());
    let (ino, mtime) = (meta.ino(), meta.mtime_nsec() + meta.mtime() * 1_000_000_000);

    // A reload that changes nothing rewrites nothing (the sink tasks restart and compare).
    let before = reloads(&d);
    d.signal(Signal::SIGHUP);
    wait_for(
        "the SIGHUP reload",
        Duration::from_secs(30),
        || (reloads(&d) > before).then_some(()),
        || d.logs(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.ino(), meta.mtime_nsec() + meta.mtime() * 1_000_000_000),
        (ino, mtime),
        "unchanged key: file untouched"
    );

    // A rotation replaces the file by rename (a new inode), same mode and group.
    write_by_rename(&d.config, &static_config(KEY_B));
    wait_for(
        "the rotated sink file",
        Duration::from_secs(30),
        || (read(&path) == KEY_B).then_some(()),
        || d.logs(),
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_ne!(
        meta.ino(),
        ino,
        "replaced by rename, not rewritten in place"
    );
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.gid(), gid);
    assert!(leftovers(keys.path()).is_empty());
    assert!(!d.logs().contains(KEY_B), "the key never reaches the log");

    // A daemon restart with the same key leaves the file alone too.
    let ino = meta.ino();
    drop(d);
    let d = Daemon::start(&static_config(KEY_B), &settings, base_env());
    d.wait_key("api_key", "the key after restart", |v| {
        v["api_key"] == KEY_B
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino, "{}", d.logs());
    assert!(
        !d.logs().contains("Wrote the key to the sink"),
        "{}",
        d.logs()
    );
}

#[test]
fn sink_refuses_a_planted_symlink_and_recovers_once_it_is_removed() {
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("api_key");
    let victim = keys.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let (group, _) = sink_group();
    let d = Daemon::start(
        &static_config(KEY_A),
        &sink_settings(&path, &group),
        base_env(),
    );

    wait_for(
        "the refusal in the log",
        Duration::from_secs(30),
        || {
            d.logs()
                .contains("is a symbolic link; refusing to write a key through it")
                .then_some(())
        },
        || d.logs(),
    );
    assert_eq!(read(&victim), "precious", "the link's target is untouched");
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!d.logs().contains(KEY_A));
    // Status shows the failing sink, so an operator sees it without reading logs.
    let status = d.json("/v1/status");
    let sink = &status["sinks"][0];
    assert_eq!(sink["instance"], "api_key", "{status}");
    assert!(
        sink["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("symbolic link"),
        "{status}"
    );
    let (_, text, _) = cli(
        &["status", "--socket", d.socket.to_str().unwrap()],
        &base_env(),
    );
    assert!(text.contains("FAILING"), "{text}");

    // The sink retries with backoff: removing the link lets the next attempt write the file.
    std::fs::remove_file(&path).unwrap();
    wait_for(
        "the sink file after the link is gone",
        Duration::from_secs(60),
        || (read(&path) == KEY_A).then_some(()),
        || d.logs(),
    );
    wait_for(
        "the sink shown as current",
        Duration::from_secs(30),
        || {
            d.json("/v1/status")["sinks"][0]["last_error"]
                .is_null()
                .then_some(())
        },
        || d.logs(),
    );
    assert!(
        !std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(read(&victim), "precious");
}

// ---------------------------------------------------------------------------------------------
// exec
// ---------------------------------------------------------------------------------------------

/// A running `exec`, with a work directory `t` shared with the child script (`$T`).
struct Exec {
    child: Option<Child>,
    t: tempfile::TempDir,
    stderr: PathBuf,
}

impl Exec {
    /// Starts `exec --socket SOCKET ARGS -- sh -c SCRIPT`. The script sees `$T` (the work
    /// directory) and `$BIN` (this binary).
    fn start(socket: &Path, args: &[&str], script: &str) -> Exec {
        let t = tempfile::tempdir().unwrap();
        let stderr = t.path().join("exec.stderr");
        let mut env = base_env();
        env.insert("T".into(), t.path().to_str().unwrap().into());
        env.insert("BIN".into(), BIN.into());
        let child = Command::new(BIN)
            .arg("exec")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .args(["--", "sh", "-c", script])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Exec {
            child: Some(child),
            t,
            stderr,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    fn stderr(&self) -> String {
        read(&self.stderr)
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(self.child.as_ref().unwrap().id() as i32);
        kill(pid, sig).unwrap();
    }

    fn wait_exit(&mut self, limit: Duration) -> i32 {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                panic!("exec did not exit within {limit:?}\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the `keys` file (one line per start of the child) has `n` lines.
    fn wait_starts(&self, n: usize, context: impl Fn() -> String) -> Vec<String> {
        wait_for(
            &format!("{n} start(s) of the command"),
            Duration::from_secs(60),
            || {
                let l = lines(&self.file("keys"));
                (l.len() >= n).then_some(l)
            },
            || format!("exec stderr:\n{}\n{}", self.stderr(), context()),
        )
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The commands run in their own process groups: do not leave them behind.
        for pid in lines(&self.file("pids")) {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// A child script: records its pid and key, sets `traps`, then idles (in short sleeps so a
/// trap runs promptly).
fn script(traps: &str) -> String {
    format!(
        r#"{traps}
echo $$ >> "$T/pids"
printf '%s\n' "$DD_API_KEY" >> "$T/keys"
while :; do sleep 0.1; done"#
    )
}

#[test]
fn exec_gives_the_key_in_the_environment_and_restarts_the_command_on_rotation() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let mut e = Exec::start(
        &d.socket,
        &["--stop-timeout", "20s"],
        &script(r#"trap 'echo stopped >> "$T/log"; exit 0' TERM"#),
    );
    assert_eq!(e.wait_starts(1, || d.logs()), vec![KEY_A]);

    write_by_rename(&d.config, &static_config(KEY_B));
    assert_eq!(e.wait_starts(2, || d.logs()), vec![KEY_A, KEY_B]);
    assert_eq!(
        lines(&e.file("log")),
        vec!["stopped"],
        "stopped with SIGTERM"
    );
    let pids = lines(&e.file("pids"));
    assert_eq!(pids.len(), 2);
    assert_ne!(pids[0], pids[1], "a new process");
    assert!(!e.stderr().contains(KEY_B), "{}", e.stderr());

    // SIGTERM to exec reaches the command, which exits 0: so does exec.
    e.signal(Signal::SIGTERM);
    assert_eq!(e.wait_exit(Duration::from_secs(30)), 0, "{}", e.stderr());
    assert_eq!(lines(&e.file("log")), vec!["stopped", "stopped"]);
}

#[test]
fn exec_restart_escalates_to_sigkill_after_the_stop_timeout() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    // The whole group ignores SIGTERM (an ignored signal stays ignored in `sleep`).
    let mut e = Exec::start(
        &d.socket,
        &["--stop-timeout", "1s"],
        &script("trap '' TERM"),
    );
    e.wait_starts(1, || d.logs());
    write_by_rename(&d.config, &static_config(KEY_B));
    assert_eq!(e.wait_starts(2, || d.logs()), vec![KEY_A, KEY_B]);
    assert!(e.stderr().contains("sending SIGKILL"), "{}", e.stderr());
    // SIGINT is forwarded and not ignored: the command dies of it, exec exits 128 + 2.
    e.signal(Signal::SIGINT);
    assert_eq!(e.wait_exit(Duration::from_secs(30)), 130, "{}", e.stderr());
}

#[test]
fn exec_signal_mode_signals_the_command_which_rereads_the_key_with_get() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    // The recipe of docs/integrations.md: on SIGHUP, re-read the key with `get` (exec points
    // DD_DELEGATED_AUTH_SOCKET at its daemon).
    let mut e = Exec::start(
        &d.socket,
        &["--on-rotate", "signal:HUP"],
        &script(r#"trap '"$BIN" get > "$T/reread"; echo hup >> "$T/log"' HUP"#),
    );
    e.wait_starts(1, || d.logs());
    write_by_rename(&d.config, &static_config(KEY_B));
    wait_for(
        "the command's HUP trap",
        Duration::from_secs(60),
        || (read(&e.file("log")) == "hup\n").then_some(()),
        || e.stderr(),
    );
    assert_eq!(read(&e.file("reread")).trim(), KEY_B);
    assert_eq!(lines(&e.file("keys")), vec![KEY_A], "not restarted");
    assert_eq!(lines(&e.file("pids")).len(), 1);
    // No trap for TERM: the command dies of it, exec exits 128 + 15.
    e.signal(Signal::SIGTERM);
    assert_eq!(e.wait_exit(Duration::from_secs(30)), 143, "{}", e.stderr());
}

#[test]
fn exec_none_mode_only_reports_the_rotation() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let mut e = Exec::start(
        &d.socket,
        &["--on-rotate", "none", "--env", "MY_KEY"],
        &script("DD_API_KEY=$MY_KEY"),
    );
    assert_eq!(e.wait_starts(1, || d.logs()), vec![KEY_A]);
    write_by_rename(&d.config, &static_config(KEY_B));
    wait_for(
        "the rotation report",
        Duration::from_secs(60),
        || {
            e.stderr()
                .contains("keeps running (--on-rotate none)")
                .then_some(())
        },
        || e.stderr(),
    );
    assert_eq!(lines(&e.file("keys")), vec![KEY_A]);
    e.signal(Signal::SIGTERM);
    assert_eq!(e.wait_exit(Duration::from_secs(30)), 143);
}

#[test]
fn exec_forwards_signals_and_exits_with_the_commands_status() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let mut e = Exec::start(
        &d.socket,
        &[],
        &script(
            r#"trap 'echo usr1 >> "$T/log"' USR1
trap 'echo usr2 >> "$T/log"' USR2
trap 'echo hup >> "$T/log"' HUP
trap 'echo term >> "$T/log"; exit 7' TERM"#,
        ),
    );
    e.wait_starts(1, || d.logs());
    for (sig, line) in [
        (Signal::SIGUSR1, "usr1"),
        (Signal::SIGUSR2, "usr2"),
        (Signal::SIGHUP, "hup"),
    ] {
        e.signal(sig);
        wait_for(
            line,
            Duration::from_secs(30),
            || {
                lines(&e.file("log"))
                    .contains(&line.to_owned())
                    .then_some(())
            },
            || e.stderr(),
        );
    }
    e.signal(Signal::SIGTERM);
    assert_eq!(e.wait_exit(Duration::from_secs(30)), 7, "{}", e.stderr());
    assert_eq!(
        lines(&e.file("log")),
        vec!["usr1", "usr2", "hup", "term"],
        "each signal once"
    );

    // Exit statuses as a shell reports them.
    for (cmd, code) in [
        ("exit 3", 3),
        ("kill -KILL $$", 137),
        (
            "test \"$DD_API_KEY\" = \"$EXPECT\" && test -S \"$DD_DELEGATED_AUTH_SOCKET\"",
            0,
        ),
    ] {
        let mut env = base_env();
        env.insert("EXPECT".into(), KEY_A.into());
        let (got, _, err) = cli(
            &[
                "exec",
                "--socket",
                d.socket.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                cmd,
            ],
            &env,
        );
        assert_eq!(got, code, "{cmd}: {err}");
    }
    let (code, _, err) = cli(
        &[
            "exec",
            "--socket",
            d.socket.to_str().unwrap(),
            "--",
            "/nonexistent/cmd",
        ],
        &base_env(),
    );
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("cannot run"), "{err}");
}

#[test]
fn exec_refuses_to_start_without_a_key() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let (code, _, err) = cli(
        &[
            "exec",
            "--socket",
            d.socket.to_str().unwrap(),
            "--instance",
            "nope",
            "--",
            "sh",
            "-c",
            &touch,
        ],
        &base_env(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no instance named"), "{err}");
    let missing = dir.path().join("missing.sock");
    let started = Instant::now();
    let (code, _, err) = cli(
        &[
            "exec",
            "--socket",
            missing.to_str().unwrap(),
            "--timeout",
            "1s",
            "--",
            "sh",
            "-c",
            &touch,
        ],
        &base_env(),
    );
    assert_eq!(code, 69, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!marker.exists(), "the command never ran");
    let (code, _, err) = cli(
        &[
            "exec",
            "--socket",
            "x",
            "--on-rotate",
            "reload",
            "--",
            "true",
        ],
        &base_env(),
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = cli(&["exec", "--socket", "x"], &base_env());
    assert_eq!(code, 2, "a command is required");
}

#[test]
fn exec_waits_for_the_daemon_then_follows_it_across_a_restart_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    // exec first: it waits for the daemon and its first key.
    let e = Exec::start(
        &socket,
        &["--timeout", "60s", "--stop-timeout", "20s"],
        &script(r#"trap 'exit 0' TERM"#),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut d = Daemon::spawn_at(
        &static_config(KEY_A),
        SETTINGS,
        base_env(),
        &[],
        Some(socket.clone()),
    );
    assert_eq!(e.wait_starts(1, || d.logs()), vec![KEY_A]);

    // The daemon dies (its stale socket stays) and something broken answers in its place:
    // exec must back off, not spin.
    std::thread::sleep(Duration::from_millis(300));
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&socket).unwrap();
    let broken = HungDaemon::bind(&socket, false);
    std::thread::sleep(Duration::from_secs(6));
    let attempts = broken.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&attempts),
        "{attempts} connections in 6 s\n{}",
        e.stderr()
    );
    drop(broken);
    std::fs::remove_file(&socket).unwrap();
    assert_eq!(
        lines(&e.file("keys")),
        vec![KEY_A],
        "the command kept running"
    );

    // A new daemon with a new key: exec reconnects, re-reads the key, restarts the command.
    let d2 = Daemon::spawn_at(
        &static_config(KEY_B),
        SETTINGS,
        base_env(),
        &[],
        Some(socket),
    );
    assert_eq!(e.wait_starts(2, || d2.logs()), vec![KEY_A, KEY_B]);
    assert!(
        e.stderr().contains("the daemon answers again"),
        "{}",
        e.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------------------------

#[test]
fn get_prints_the_named_instance_with_the_exit_codes_of_the_product() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let sock = d.socket.to_str().unwrap();
    let env = base_env();
    let (code, out, _) = cli(&["get", "--socket", sock, "logs_config.api_key"], &env);
    assert_eq!((code, out.as_str()), (0, format!("{KEY_LOGS}\n").as_str()));
    let (code, out, _) = cli(&["get", "--socket", sock, "--json"], &env);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["api_key"].as_str(), v["source"].as_str()),
        (Some(KEY_A), Some("fallback"))
    );

    let (code, out, err) = cli(&["get", "--socket", sock, "nope"], &env);
    assert_eq!(code, 1, "404: {err}");
    assert!(out.is_empty() && err.contains("no instance named"), "{err}");
    let (code, _, err) = cli(&["get", "--socket", "/nonexistent/dir/x.sock"], &env);
    assert_eq!(code, 69, "{err}");
    let (code, _, _) = cli(&["get", "--socket", sock, "--bogus"], &env);
    assert_eq!(code, 2);
    let (code, _, _) = cli(&["get", "--socket", sock, "a", "b"], &env);
    assert_eq!(code, 2);

    // Nothing to serve (a delegated instance, no AWS, no static key): 503 → 1, with or without
    // a bounded --wait.
    let yaml = format!("delegated_auth:\n  org_uuid: {ORG}\n");
    let u = Daemon::start(&yaml, SETTINGS, base_env());
    u.wait_key("api_key", "unavailable", |v| {
        v["error"]["code"] == "unavailable"
    });
    let usock = u.socket.to_str().unwrap();
    let (code, out, err) = cli(&["get", "--socket", usock], &env);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty() && err.contains("503"), "{err}");
    let started = Instant::now();
    let (code, _, err) = cli(
        &["get", "--socket", usock, "--wait", "--timeout", "1s"],
        &env,
    );
    assert_eq!(code, 1, "{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[test]
fn get_wait_waits_for_a_daemon_started_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("later.sock");
    let s = socket.to_str().unwrap().to_owned();
    let getter = std::thread::spawn(move || {
        cli(
            &[
                "get",
                "--socket",
                &s,
                "--wait",
                "--timeout",
                "60s",
                "logs_config.api_key",
            ],
            &base_env(),
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    let d = Daemon::spawn_at(
        &static_config(KEY_A),
        SETTINGS,
        base_env(),
        &[],
        Some(socket.clone()),
    );
    let (code, out, err) = getter.join().unwrap();
    assert_eq!((code, out.trim()), (0, KEY_LOGS), "{err}\n{}", d.logs());

    drop(d);
    let started = Instant::now();
    let (code, _, _) = cli(
        &[
            "get",
            "--socket",
            socket.to_str().unwrap(),
            "--wait",
            "--timeout",
            "1s",
        ],
        &base_env(),
    );
    assert_eq!(code, 69, "still unreachable when the wait ends");
    assert!(started.elapsed() < Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------------
// docs/integrations.md: the recipes marked `<!-- test: NAME -->`, extracted and run as written
// ---------------------------------------------------------------------------------------------

/// The fenced block that follows `<!-- test: NAME -->` in docs/integrations.md.
fn doc_block(name: &str) -> String {
    let doc = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/integrations.md"));
    let marker = format!("<!-- test: {name} -->");
    let after = &doc[doc
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} not in the guide"))..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

fn sh(script: &str, env: &HashMap<String, String>) -> (i32, String, String) {
    let out = Command::new("sh")
        .args(["-c", script])
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_guides_agent_configuration_is_accepted_by_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("datadog.yaml");
    let settings = dir.path().join("delegated-auth.yaml");
    std::fs::write(
        &config,
        format!(
            "{}delegated_auth:\n  org_uuid: {ORG}\n",
            doc_block("agent-datadog-yaml")
        ),
    )
    .unwrap();
    std::fs::write(&settings, "").unwrap();
    let (code, out, err) = cli(
        &[
            "check-config",
            "--config",
            config.to_str().unwrap(),
            "--settings",
            settings.to_str().unwrap(),
        ],
        &base_env(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("api_key"), "{out}");
}

#[test]
fn the_guides_curl_recipes_work() {
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let mut env = base_env();
    env.insert("SOCK".into(), d.socket.to_str().unwrap().into());
    env.insert("DD_API_KEY".into(), KEY_A.into());

    let (code, out, err) = sh(&doc_block("curl-get"), &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["api_key"],
        KEY_A
    );

    let (code, out, err) = sh(&doc_block("curl-rejected"), &env);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // The served key is a static fallback: the report is taken, a refresh is scheduled or
    // throttled (there is nothing newer to fetch, but the report was understood).
    assert!(
        ["scheduled", "throttled", "ignored"].contains(&v["refresh"].as_str().unwrap()),
        "{out}"
    );
}

#[test]
fn the_guides_key_watcher_runs_its_command_on_rotation() {
    use std::os::unix::process::CommandExt;
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let work = tempfile::tempdir().unwrap();
    let watcher = work.path().join("key-watcher");
    std::fs::write(&watcher, doc_block("key-watcher")).unwrap();
    let out = work.path().join("rotations");
    let reads = || d.logs().matches("Key read.").count();
    let before = reads();
    let mut child = Command::new("sh")
        .arg(&watcher)
        .args(["sh", "-c", "\"$BIN\" get --socket \"$SOCK\" >> \"$OUT\""])
        .env_clear()
        .envs(base_env())
        .env("SOCK", &d.socket)
        .env("BIN", BIN)
        .env("OUT", &out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = Pid::from_raw(child.id() as i32);
    // The watcher has read the current ETag before the key changes.
    wait_for(
        "the watcher's first read",
        Duration::from_secs(30),
        || (reads() > before).then_some(()),
        || d.logs(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!out.exists(), "nothing runs before a rotation");

    write_by_rename(&d.config, &static_config(KEY_B));
    wait_for(
        "the watcher's command",
        Duration::from_secs(60),
        || (lines(&out) == vec![KEY_B.to_owned()]).then_some(()),
        || d.logs(),
    );
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

/// A crash between a sink's temporary write and its rename leaves a file holding a whole key:
/// the daemon removes such files of its own at start (and on each write).
#[test]
fn sink_temporaries_left_by_a_crash_are_removed_at_start() {
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("api_key");
    let stale = keys.path().join(".api_key.tmp-4242-1234567890");
    std::fs::write(&stale, KEY_B).unwrap();
    let (group, _) = sink_group();
    let d = Daemon::start(
        &static_config(KEY_A),
        &sink_settings(&path, &group),
        base_env(),
    );
    wait_for(
        "the sink file",
        Duration::from_secs(30),
        || (read(&path) == KEY_A).then_some(()),
        || d.logs(),
    );
    assert_eq!(leftovers(keys.path()), Vec::<String>::new());
    assert!(
        d.logs().contains("Removed a temporary key file"),
        "{}",
        d.logs()
    );
}

/// However many handles it is asked for, the helper's answer stays under the Agent's 1 MiB
/// output cap: at most `MAX_HANDLES` distinct handles of at most `MAX_HANDLE_BYTES` are
/// answered; a request past either bound is refused whole.
#[test]
fn secret_helper_answers_stay_under_the_agents_output_cap() {
    use datadog_delegated_auth::secret_helper::{MAX_HANDLE_BYTES, MAX_HANDLES};
    let d = Daemon::start(&static_config(KEY_A), SETTINGS, base_env());
    let request = |handles: Vec<String>| {
        serde_json::json!({"version": "1.0", "secrets": handles})
            .to_string()
            .into_bytes()
    };
    // The most handles answered, each unknown and as long as a handle may be.
    let mut handles: Vec<String> = (0..MAX_HANDLES - 1)
        .map(|i| format!("{i:0>width$}", width = MAX_HANDLE_BYTES))
        .collect();
    handles.push("api_key".into());
    let (code, out, err, _) = secret_helper(&d.socket, &["--timeout", "20s"], &request(handles));
    assert_eq!(code, 0, "{err}");
    assert!(out.len() < 1024 * 1024, "{} bytes", out.len());
    let answer: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(answer["api_key"]["value"], KEY_A);
    assert_eq!(answer.as_object().unwrap().len(), MAX_HANDLES);
    // More distinct handles than that: refused whole, with the reason, nothing on stdout.
    let many: Vec<String> = (0..50_000).map(|i| format!("h{i}")).collect();
    let (code, out, err, _) = secret_helper(&d.socket, &[], &request(many));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("50000 distinct handles"), "{err}");
    let (code, out, err, _) = secret_helper(&d.socket, &[], &request(vec!["x".repeat(900 * 1024)]));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("handle of 921600 bytes"), "{err}");
}

//! Class: every privilege decision is made at the moment a secret leaves the daemon, and the
//! socket is never reachable with other permissions than configured (issue 11).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Daemon, base_env, write_by_rename};
use http::Method;

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbb0002";
const LOG: &str = "log: { level: debug }\n";

fn config(key: &str) -> String {
    format!("api_key: {key}\n")
}

fn settings(uids: &str) -> String {
    format!("{LOG}access:\n  - instances: [\"*\"]\n    uids: [{uids}]\n")
}

/// A long poll parked while access is withdrawn does not get the next key.
#[test]
fn a_long_poll_whose_access_is_withdrawn_gets_403_not_the_next_key() {
    let d = Daemon::start(&config(KEY_A), &settings("0"), base_env());
    let first = d.get("/v1/keys/api_key");
    assert_eq!(first.status, 200);
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    let socket = d.socket.clone();
    let poll = std::thread::spawn(move || {
        common::rt().block_on(datadog_delegated_auth::client::request(
            &socket,
            Method::GET,
            "/v1/keys/api_key?wait=60s",
            &[("if-none-match", &etag)],
            None,
            Duration::from_secs(90),
        ))
    });
    std::thread::sleep(Duration::from_millis(300));
    // Root loses access, then the key rotates.
    write_by_rename(&d.settings, &settings("12345"));
    d.wait_key("api_key", "the withdrawal", |v| {
        v["error"]["code"] == "forbidden"
    });
    write_by_rename(&d.config, &config(KEY_B));
    let reply = poll.join().unwrap().unwrap();
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, 403, "{body}");
    assert!(!body.contains(KEY_B), "{body}");
}

/// A refused peer gets its answer and the connection is closed: it cannot hold a slot.
#[test]
fn a_refused_peer_gets_its_403_and_the_connection_closes() {
    let d = Daemon::start(&config(KEY_A), &settings("12345"), base_env());
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /v1/keys/api_key HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    // read_to_end returns only when the daemon closes the connection.
    s.read_to_end(&mut all)
        .expect("the connection was left open");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

/// The socket directory the daemon creates is reachable by the socket's group whatever the
/// umask (systemd's UMask=0077 made it 0700).
#[test]
fn a_missing_socket_directory_is_created_0750_with_the_socket_group() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let parent = tempfile::tempdir().unwrap();
    let socket = parent.path().join("made/by/daemon/s.sock");
    let d = Daemon::spawn_at(
        &config(KEY_A),
        &format!("{LOG}socket: {{ mode: \"0660\", group: 1 }}\n"),
        base_env(),
        &[],
        Some(socket.clone()),
    );
    d.wait_live();
    let dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o750);
    assert_eq!(dir.gid(), 1);
    for above in [parent.path().join("made"), parent.path().join("made/by")] {
        assert_eq!(
            std::fs::metadata(&above).unwrap().mode() & 0o7777,
            0o755,
            "{}",
            above.display()
        );
    }
    let sock = std::fs::metadata(&socket).unwrap();
    assert_eq!((sock.mode() & 0o7777, sock.gid()), (0o660, 1));
}

/// A directory anyone can write to, without the sticky bit, lets another user swap the socket:
/// refused, with the reason. With the sticky bit it is fine.
#[test]
fn a_world_writable_socket_directory_without_the_sticky_bit_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("open");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o777)).unwrap();
    let mut d = Daemon::spawn_at(
        &config(KEY_A),
        LOG,
        base_env(),
        &[],
        Some(dir.join("s.sock")),
    );
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(
        d.logs().contains("writable by every user and not sticky"),
        "{}",
        d.logs()
    );
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o1777)).unwrap();
    let d = Daemon::spawn_at(
        &config(KEY_A),
        LOG,
        base_env(),
        &[],
        Some(dir.join("s.sock")),
    );
    d.wait_live();
}

/// The socket appears at its path only by a rename of a socket already bound, chmod-ed and
/// chown-ed in a private directory: never created there first (where another user able to
/// write the directory could swap it for a symlink before the chmod/chown).
#[test]
fn the_socket_appears_at_its_path_only_with_its_final_permissions() {
    use inotify::{Inotify, WatchMask};
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let mut inotify = Inotify::init().unwrap();
    inotify
        .watches()
        .add(&dir, WatchMask::CREATE | WatchMask::MOVED_TO)
        .unwrap();
    let socket = dir.join("s.sock");
    let d = Daemon::spawn_at(
        &config(KEY_A),
        &format!("{LOG}socket: {{ mode: \"0640\" }}\n"),
        base_env(),
        &[],
        Some(socket.clone()),
    );
    d.wait_live();
    let mut buf = [0u8; 4096];
    let events: Vec<_> = inotify
        .read_events(&mut buf)
        .unwrap()
        .filter(|e| e.name.is_some_and(|n| n == "s.sock"))
        .map(|e| e.mask)
        .collect();
    assert_eq!(events, vec![inotify::EventMask::MOVED_TO], "{events:?}");
    assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o640);
    // Nothing of the private directory is left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["s.sock"]);
}

/// The daemon clears its dumpable flag: its `/proc/PID` files belong to root, so another
/// process of the daemon's own uid cannot read its memory or environment, and a crash leaves
/// no core file with keys.
#[test]
fn the_process_is_not_dumpable() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run the daemon as another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Sticky, as /tmp: the socket directory check accepts it.
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o1777)).unwrap();
    let config_file = dir.path().join("datadog.yaml");
    let settings = dir.path().join("delegated-auth.yaml");
    std::fs::write(&config_file, config(KEY_A)).unwrap();
    std::fs::write(&settings, LOG).unwrap();
    let socket = dir.path().join("s.sock");
    let mut child = common::as_uid("65534", common::BIN)
        .arg("run")
        .arg("--config")
        .arg(&config_file)
        .arg("--settings")
        .arg(&settings)
        .arg("--socket")
        .arg(&socket)
        .env_clear()
        .envs(base_env())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // setpriv exec'd the daemon: same pid.
    let environ = std::fs::metadata(format!("/proc/{}/environ", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        environ.uid(),
        0,
        "/proc/PID/environ belongs to the daemon's uid: the process is dumpable"
    );
}

/// `user:password@` in `dd_url` or an endpoint URL is a secret too: it never appears in logs,
/// the socket's documents, metrics, `status` or `check-config`, nor in an instance name.
#[test]
fn url_userinfo_is_masked_everywhere() {
    let org = "11111111-2222-3333-4444-555555555555";
    let yaml = format!(
        "api_key: {KEY_A}\ndd_url: http://alice:hunter2@127.0.0.1:9\ndelegated_auth:\n  org_uuid: {org}\n\
         additional_endpoints:\n  \"http://bob:hunter3@127.0.0.1:9\":\n    - \"DELA({org}, aws)\"\n"
    );
    let mut env = base_env();
    env.insert("AWS_ACCESS_KEY_ID".into(), "AKIAEXAMPLEEXAMPLE00".into());
    env.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        "secretsecretsecretsecretsecret00".into(),
    );
    let d = Daemon::start(
        &yaml,
        "log: { level: trace }\nrefresh: { startup_grace: 1s, retry_min: 1s, retry_max: 2s }\n",
        env.clone(),
    );
    // The Agent's instance name carries the directive's org (issue 13).
    let masked = format!("additional_endpoints[http://***@127.0.0.1:9][0][{org}]");
    let masked = masked.as_str();
    d.wait_error(masked, "127.0.0.1:9");
    d.wait_error("api_key", "127.0.0.1:9");
    let socket = d.socket.to_str().unwrap().to_owned();
    let mut seen = vec![
        d.logs(),
        String::from_utf8_lossy(&d.get("/v1/status").body).into_owned(),
        String::from_utf8_lossy(&d.get("/v1/keys").body).into_owned(),
        String::from_utf8_lossy(&d.get("/metrics").body).into_owned(),
        common::cli(&["status", "--socket", &socket], &env).1,
        common::cli(&["status", "--json", "--socket", &socket], &env).1,
    ];
    let (_, out, err) = d.check_config(&env);
    seen.push(out + &err);
    for text in &seen {
        assert!(!text.contains("hunter"), "a URL password leaked:\n{text}");
        assert!(
            !text.contains("alice") && !text.contains("bob:"),
            "a URL user leaked:\n{text}"
        );
    }
    assert!(seen[2].contains(masked), "{}", seen[2]);
}

/// `access:` left empty names no reader: like `access: []`, every read is refused, with the same
/// warning (it is not the absence of rules, which would let any local user read).
#[test]
fn an_access_key_left_empty_refuses_every_read_with_a_warning() {
    let d = Daemon::start(&config(KEY_A), &format!("{LOG}access:\n"), base_env());
    assert_eq!(d.get("/v1/keys/api_key").status, 403);
    assert!(
        d.logs()
            .contains("the access list is empty, so every key read will be refused"),
        "{}",
        d.logs()
    );
    let (code, out, err) = d.check_config(&base_env());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("access list is empty"),
        "{out}{err}"
    );
}

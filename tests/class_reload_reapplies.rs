//! Class: a reload re-applies everything it reports as applied (issue 11): socket mode and
//! group, and the set of watched files.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{Daemon, base_env, write_by_rename};

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
const LOG: &str = "log: { level: debug }\n";

#[test]
fn socket_mode_and_group_changes_apply_on_reload() {
    let d = Daemon::start(
        &format!("api_key: {KEY_A}\n"),
        &format!("{LOG}socket: {{ mode: \"0660\" }}\n"),
        base_env(),
    );
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    // A connection open across the change keeps working.
    let before = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write_by_rename(
        &d.settings,
        &format!("{LOG}socket: {{ mode: \"0600\", group: 1 }}\n"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let meta = std::fs::metadata(&d.socket).unwrap();
        if (meta.mode() & 0o777, meta.gid()) == (0o600, 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mode {:o} gid {} after the reload; log:\n{}",
            meta.mode() & 0o777,
            meta.gid(),
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.logs().contains("Applied the new socket mode and group"),
        "{}",
        d.logs()
    );
    assert_eq!(d.get("/v1/keys/api_key").status, 200);
    drop(before);
    let status = d.json("/v1/status");
    assert!(status["config"]["last_reload_error"].is_null(), "{status}");
}

/// A reload that names another fallback key file watches that file from then on.
#[test]
fn a_fallback_key_file_named_by_a_reload_is_watched() {
    let first = "ffffffffffffffffffffffffffff0001";
    let second = "eeeeeeeeeeeeeeeeeeeeeeeeeeee0002";
    let third = "dddddddddddddddddddddddddddd0003";
    let datadog_yaml = "dd_url: http://127.0.0.1:9\ndelegated_auth:\n  org_uuid: 11111111-2222-3333-4444-555555555555\n";
    let keys = tempfile::tempdir().unwrap();
    let write_key = |name: &str, key: &str| {
        let path = keys.path().join(name);
        write_by_rename(&path, key);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    };
    let settings = |file: &str| {
        format!(
            "{LOG}refresh: {{ startup_grace: 1s }}\nfallback_api_key_file: {}\n",
            keys.path().join(file).display()
        )
    };
    write_key("key-1", first);
    write_key("key-2", second);
    let d = Daemon::start(datadog_yaml, &settings("key-1"), base_env());
    d.wait_key("api_key", "the first fallback", |v| v["api_key"] == first);
    write_by_rename(&d.settings, &settings("key-2"));
    d.wait_key("api_key", "the second fallback", |v| v["api_key"] == second);
    // An edit of the new file alone, no SIGHUP.
    write_key("key-2", third);
    d.wait_key("api_key", "the edited second fallback", |v| {
        v["api_key"] == third
    });
}

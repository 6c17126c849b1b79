//! Class: no input from a file, the network or the environment may block, panic, or grow
//! memory without bound (issue 11). Each test feeds the real binary a FIFO, an endless device
//! or an endless answer where a small file or answer belongs, and checks that the daemon stays
//! up, answers, says what is wrong, and stays small.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, base_env, cli, endless_http_server, rss_kib, write_by_rename};
use nix::sys::signal::Signal;

const KEY: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
const ORG: &str = "11111111-2222-3333-4444-555555555555";
const SETTINGS: &str =
    "log: { level: debug }\nrefresh: { startup_grace: 1s, retry_min: 1s, retry_max: 2s }\n";
/// A daemon that has read an endless answer whole is hundreds of MiB; a healthy one ~10.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// Delegated auth for an org (against an unreachable Datadog: every test here fails before the
/// exchange), the static key as the fallback.
fn delegated() -> String {
    format!("api_key: {KEY}\ndd_url: http://127.0.0.1:9\ndelegated_auth:\n  org_uuid: {ORG}\n")
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// The fallback key is served within the startup grace: nothing hangs the refresh.
fn assert_fallback_served_promptly(d: &Daemon) {
    let started = Instant::now();
    let v = d.wait_key("api_key", "the fallback key", |v| v["api_key"] == KEY);
    assert_eq!(v["source"], "fallback");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the fallback took {:?}",
        started.elapsed()
    );
}

#[test]
fn endless_imds_answers_are_cut_and_memory_stays_bounded() {
    let mut env = base_env();
    env.insert(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
        endless_http_server(),
    );
    let d = Daemon::start(&delegated(), SETTINGS, env);
    let error = d.wait_error("api_key", "larger than");
    assert!(error.contains("EC2 IMDS"), "{error}");
    // A second attempt, for good measure.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        rss_kib(d.pid()) < RSS_BOUND_KIB,
        "RSS {} KiB",
        rss_kib(d.pid())
    );
    assert_fallback_served_promptly(&d);
}

#[test]
fn endless_container_credential_answers_are_cut() {
    let mut env = base_env();
    env.insert(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
        format!("{}/creds", endless_http_server()),
    );
    env.insert("AWS_CONTAINER_AUTHORIZATION_TOKEN".into(), "token".into());
    let d = Daemon::start(&delegated(), SETTINGS, env);
    let error = d.wait_error("api_key", "ECS/EKS container credentials");
    assert!(
        rss_kib(d.pid()) < RSS_BOUND_KIB,
        "RSS {} KiB; {error}",
        rss_kib(d.pid())
    );
    assert_fallback_served_promptly(&d);
}

#[test]
fn token_files_that_are_fifos_or_devices_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token");
    mkfifo(&fifo);
    let irsa = |token: &Path| common::irsa_env(token, "s", "http://127.0.0.1:9");
    for (env, source, what) in [
        (irsa(&fifo), "IRSA web identity", "FIFO"),
        (
            irsa(Path::new("/dev/zero")),
            "IRSA web identity",
            "character device",
        ),
        (
            {
                let mut env = base_env();
                env.insert(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
                    "http://127.0.0.1:9/creds".into(),
                );
                env.insert(
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(),
                    fifo.display().to_string(),
                );
                env
            },
            "ECS/EKS container credentials",
            "FIFO",
        ),
    ] {
        let d = Daemon::start(&delegated(), SETTINGS, env);
        assert_fallback_served_promptly(&d);
        let error = d.wait_error("api_key", what);
        assert!(error.starts_with(source), "{error}");
        assert!(
            rss_kib(d.pid()) < RSS_BOUND_KIB,
            "RSS {} KiB",
            rss_kib(d.pid())
        );
        // Shutdown works: nothing is stuck on the runtime.
        let mut d = d;
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    }
}

#[test]
fn imds_role_names_that_are_not_iam_role_names_fail_the_attempt_and_nothing_panics() {
    let world_role = |role: &str| sandbox::imds::ImdsOptions {
        role: Some(role.to_owned()),
        credentials: Some(sandbox::moto::StaticCreds {
            access_key_id: "ASIAEXAMPLEEXAMPLE00".into(),
            secret_access_key: "secretsecretsecretsecretsecret00".into(),
            session_token: Some("token".into()),
        }),
        ..sandbox::imds::ImdsOptions::default()
    };
    // The emulator's tasks run on this runtime's workers while the test waits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for (role, needle) in [
        ("Datadog Role".to_owned(), "not an IAM role name"),
        // Only the first line is a role name (IMDS lists one per line); this one has no
        // credentials there.
        ("DatadogRole\r\nX-Injected: 1".to_owned(), "HTTP 404"),
        (
            "DatadogRole\rX-Injected: 1".to_owned(),
            "not an IAM role name",
        ),
        ("R".repeat(70 * 1024), "larger than"),
    ] {
        let imds = rt
            .block_on(sandbox::imds::ImdsEmulator::start(world_role(&role)))
            .unwrap();
        let mut env = base_env();
        env.insert("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), imds.url());
        let d = Daemon::start(&delegated(), SETTINGS, env);
        let error = d.wait_error("api_key", needle);
        assert!(error.contains("EC2 IMDS"), "{error}");
        // Still alive after the retries, and no panic anywhere.
        std::thread::sleep(Duration::from_secs(3));
        assert!(d.get("/v1/health/live").status == 200);
        assert!(!d.logs().contains("panicked"), "{}", d.logs());
        assert_fallback_served_promptly(&d);
    }
}

#[test]
fn watchdog_values_that_are_not_a_usable_interval_mean_no_watchdog() {
    // The largest value is a valid (if absurd) interval: the pings are capped, nothing panics.
    let d = Daemon::start(
        &format!("api_key: {KEY}\n"),
        SETTINGS,
        HashMap::from_iter(base_env().into_iter().chain([
            (
                "WATCHDOG_USEC".to_owned(),
                "18446744073709551615".to_owned(),
            ),
            ("WATCHDOG_PID".to_owned(), "self".to_owned()),
        ])),
    );
    std::thread::sleep(Duration::from_millis(300));
    d.wait_key("api_key", "the key", |v| v["api_key"] == KEY);
    assert!(!d.logs().contains("panicked"), "{}", d.logs());
    for value in ["1", "0", "soon", "-1"] {
        let mut env = base_env();
        env.insert("WATCHDOG_USEC".into(), value.into());
        env.insert("WATCHDOG_PID".into(), "self".into());
        let d = Daemon::start(&format!("api_key: {KEY}\n"), SETTINGS, env);
        d.wait_key("api_key", "the key", |v| v["api_key"] == KEY);
        assert!(
            d.logs().contains("WATCHDOG_USEC"),
            "no warning for {value}: {}",
            d.logs()
        );
        assert!(!d.logs().contains("panicked"), "{}", d.logs());
    }
}

/// `check-config` on a FIFO (or device) returns at once with exit 78 and names the problem.
#[test]
fn check_config_refuses_fifos_and_devices_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let config = dir.path().join("datadog.yaml");
    let settings = dir.path().join("delegated-auth.yaml");
    std::fs::write(&config, format!("api_key: {KEY}\n")).unwrap();
    std::fs::write(&settings, "log: { level: info }\n").unwrap();
    let fallback_fifo = dir.path().join("fallback-settings.yaml");
    std::fs::write(
        &fallback_fifo,
        format!("fallback_api_key_file: {}\n", fifo.display()),
    )
    .unwrap();
    let fifo_s = fifo.to_str().unwrap();
    for (c, s) in [
        (fifo_s, settings.to_str().unwrap()),
        (config.to_str().unwrap(), fifo_s),
        (config.to_str().unwrap(), fallback_fifo.to_str().unwrap()),
        ("/dev/zero", settings.to_str().unwrap()),
    ] {
        let started = Instant::now();
        let (code, out, err) = cli(
            &["check-config", "--config", c, "--settings", s],
            &base_env(),
        );
        assert_eq!(code, 78, "{out}{err}");
        assert!(
            format!("{out}{err}").contains("not a regular file"),
            "{out}{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// `datadog.yaml` briefly a FIFO: the reload reports it once and ends; later edits and SIGHUP
/// work, and SIGTERM stops the daemon.
#[test]
fn a_config_file_that_becomes_a_fifo_does_not_stop_reloads_or_shutdown() {
    let mut d = Daemon::start(&format!("api_key: {KEY}\n"), SETTINGS, base_env());
    std::fs::remove_file(&d.config).unwrap();
    mkfifo(&d.config);
    d.wait_error_in_status("not a regular file");
    std::fs::remove_file(&d.config).unwrap();
    let other = "bbbbbbbbbbbbbbbbbbbbbbbbbbbb0002";
    write_by_rename(&d.config, &format!("api_key: {other}\n"));
    d.wait_key("api_key", "the edited key", |v| v["api_key"] == other);
    d.signal(Signal::SIGHUP);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

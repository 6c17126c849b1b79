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
    let error = d.wait_error("api_key", "larger than 64 KiB");
    assert!(
        error.starts_with("ECS/EKS container credentials"),
        "{error}"
    );
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

/// Opens `n` connections to `socket` as `uid` (through setpriv and perl, which every Debian
/// has), sends `request` on each (nothing if empty), and holds them until the returned child is
/// killed.
fn flood_as(uid: &str, socket: &Path, n: usize, request: &str) -> std::process::Child {
    use std::io::BufRead;
    // SIGPIPE ignored: the daemon closes connections past the uid's share at once.
    let script = "use IO::Socket::UNIX; $SIG{PIPE} = 'IGNORE'; my ($path, $n, $req) = @ARGV; my @held; \
                  for (1..$n) { my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path) \
                  or die \"connect: $!\"; print $s $req if length $req; push @held, $s; } \
                  $| = 1; print \"ready\\n\"; sleep 120;";
    let mut child = common::as_uid(uid, "/usr/bin/perl")
        .args(["-e", script])
        .arg(socket)
        .arg(n.to_string())
        .arg(request)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim() != "ready" {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
        panic!("the flooding client failed: {:?} {err}", child.wait());
    }
    child
}

/// p99 of `n` key reads by this process (root), each on a new connection with a 5 s bound.
fn root_read_p99(socket: &Path, n: usize) -> Duration {
    let rt = common::rt();
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let reply = rt
                .block_on(datadog_delegated_auth::client::request(
                    socket,
                    http::Method::GET,
                    "/v1/keys/api_key",
                    &[],
                    None,
                    Duration::from_secs(5),
                ))
                .expect("root's read failed while another uid flooded the socket");
            assert_eq!(reply.status, 200);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[n * 99 / 100]
}

/// One uid, refused by every rule or allowed and parking long polls, floods the socket with
/// more connections than the daemon serves: another uid's reads keep their latency.
#[test]
fn one_uid_flooding_the_socket_does_not_starve_another() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to connect as other uids");
        return;
    }
    let settings = "log: { level: info }\nsocket: { mode: \"0666\", max_connections: 64 }\n\
                    access:\n  - instances: [\"*\"]\n    uids: [0]\n  - instances: [api_key]\n    uids: [65533]\n";
    let d = Daemon::start(&format!("api_key: {KEY}\n"), settings, base_env());
    d.open_to_other_uids();
    let generation = d.json("/v1/keys/api_key")["generation"].clone();
    // Refused by every rule, idle connections.
    let mut idle = flood_as("65534", &d.socket, 200, "");
    let p99 = root_read_p99(&d.socket, 200);
    assert!(
        p99 < Duration::from_millis(50),
        "p99 {p99:?} under an idle flood"
    );
    let _ = idle.kill();
    let _ = idle.wait();
    // Allowed, long polls that the idle timeout never cuts.
    let poll = format!(
        "GET /v1/keys/api_key?wait=300s HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"{generation}\"\r\n\r\n"
    );
    let mut polls = flood_as("65533", &d.socket, 200, &poll);
    let p99 = root_read_p99(&d.socket, 200);
    assert!(
        p99 < Duration::from_millis(50),
        "p99 {p99:?} under a long-poll flood"
    );
    let _ = polls.kill();
    let _ = polls.wait();
    let metrics = String::from_utf8_lossy(&d.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("delegated_auth_connections_refused_total{reason=\"uid_share\"}"),
        "{metrics}"
    );
}

/// A key no consumer could use (600 KB, non-ASCII) is an invalid answer: never served, the
/// fallback is, and the reason says why.
#[test]
fn implausible_managed_keys_are_invalid_responses() {
    use sandbox::datadog::Fault;
    let world = common::world::World::start();
    for (body_key, needle) in [
        ("k".repeat(600 * 1024), "bytes long"),
        (
            "0123456789abcdef0123456789abcdé".to_owned(),
            "printable ASCII",
        ),
    ] {
        world.dd.inject(
            Fault::status(200)
                .body(format!(
                    r#"{{"data":{{"attributes":{{"api_key":"{body_key}"}}}}}}"#
                ))
                .times(1000),
        );
        let d = Daemon::start(&world.datadog_yaml(""), SETTINGS, world.static_env());
        let error = d.wait_error("api_key", needle);
        assert!(!error.contains(&body_key[..16]), "{error}");
        let served = d.wait_key("api_key", "the fallback", |v| v["source"] == "fallback");
        assert_eq!(served["api_key"], world.org.api_key.as_str());
        world.dd.clear_faults();
    }
}

/// A daemon that accepts connections and never answers costs `get` its `--timeout`, not one
/// more request timeout past it.
#[test]
fn get_against_a_hung_daemon_returns_within_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    // Bound and listening, never accepting: connections queue and are never answered.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for extra in [&["--wait"][..], &[][..]] {
        let started = Instant::now();
        let mut args = vec![
            "get",
            "--timeout",
            "2s",
            "--socket",
            socket.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = cli(&args, &base_env());
        let took = started.elapsed();
        assert_ne!(code, 0, "{out}");
        assert!(out.is_empty());
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
            "{extra:?}: took {took:?}; {err}"
        );
    }
}

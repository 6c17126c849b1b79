//! The real link-local addresses, with no endpoint override: in a private network namespace,
//! 169.254.169.254 (IMDS), 169.254.170.2 (ECS agent) and 169.254.170.23 (EKS Pod Identity agent)
//! are put on `lo` and the emulators bound there, then the daemon's resolution runs inside the
//! namespace with only what AWS itself would put in the environment. The proofs are replayed to
//! moto_server outside the namespace.
//!
//! Needs root and iproute2; without them the test prints why and returns.

mod aws_support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use aws_support::{assert_proves_role_session, pairs, run_child};
use sandbox::ecs::{EcsEmulator, EcsOptions};
use sandbox::imds::{ImdsEmulator, ImdsOptions};
use sandbox::moto::{DEFAULT_ROLE, Moto, StaticCreds};
use sandbox::pod_identity::PodIdentityEmulator;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The link-local addresses AWS uses.
const IMDS_IP: &str = "169.254.169.254";
const ECS_IP: &str = "169.254.170.2";
const POD_IDENTITY_IP: &str = "169.254.170.23";
/// Carries the three credential sets to the emulator child (JSON).
const CREDS_VAR: &str = "DDA_NETNS_CREDS";
/// Where the emulator child writes the Pod Identity token file.
const TOKEN_DIR_VAR: &str = "DDA_NETNS_TOKEN_DIR";
/// The emulator child's readiness line prefix.
const READY: &str = "DDA_NETNS_READY ";
/// IMDS timeout inside the namespace (generous: loaded machine).
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the emulator child may take to come up.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The resolution half (see `aws_support`).
#[tokio::test]
#[ignore = "child half of the network-namespace test; it runs it inside the namespace"]
async fn child_identity() {
    aws_support::child_main().await;
}

/// The emulator half: binds the three link-local addresses and serves until stdin closes.
#[tokio::test]
#[ignore = "child half of the network-namespace test; it runs it inside the namespace"]
async fn child_link_local_emulators() {
    let Ok(creds) = std::env::var(CREDS_VAR) else {
        println!("not started by a parent test; nothing to do");
        return;
    };
    let creds: serde_json::Value = serde_json::from_str(&creds).expect("credentials JSON");
    let creds_of = |name: &str| StaticCreds {
        access_key_id: creds[name]["id"].as_str().unwrap().to_owned(),
        secret_access_key: creds[name]["secret"].as_str().unwrap().to_owned(),
        session_token: creds[name]["token"].as_str().map(str::to_owned),
    };
    let addr = |ip: &str| -> SocketAddr { format!("{ip}:80").parse().unwrap() };
    let _imds = ImdsEmulator::start_on(
        addr(IMDS_IP),
        ImdsOptions {
            region: "eu-north-1".into(),
            credentials: Some(creds_of("ec2")),
            ..ImdsOptions::default()
        },
    )
    .await
    .expect("IMDS emulator on 169.254.169.254:80");
    let ecs = EcsEmulator::start_on(
        addr(ECS_IP),
        EcsOptions {
            region: "ca-central-1".into(),
            credentials: Some(creds_of("ecs")),
            ..EcsOptions::default()
        },
    )
    .await
    .expect("ECS emulator on 169.254.170.2:80");
    let token_dir = std::env::var(TOKEN_DIR_VAR).expect("token directory");
    let pod = PodIdentityEmulator::start_on(
        addr(POD_IDENTITY_IP),
        Some(creds_of("pod")),
        token_dir.as_ref(),
    )
    .await
    .expect("Pod Identity emulator on 169.254.170.23:80");
    let ready = serde_json::json!({
        "ecs_relative_uri": ecs.relative_uri(),
        "ecs_metadata_uri": ecs.metadata_uri_v4(),
        "pod_token_file": pod.token_file(),
    });
    println!("\n{READY}{ready}");
    // Serve until the parent closes our stdin (or kills us).
    let _ = tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await;
}

/// Deletes the namespace when dropped, whatever happened.
struct Namespace(String);

impl Namespace {
    fn create() -> Result<Namespace, String> {
        let name = format!("dda-aws-{}-{}", std::process::id(), fastrand::u32(..));
        ip(&["netns", "add", &name])?;
        let namespace = Namespace(name);
        namespace.exec(&["ip", "link", "set", "lo", "up"])?;
        for address in [IMDS_IP, ECS_IP, POD_IDENTITY_IP] {
            namespace.exec(&["ip", "addr", "add", &format!("{address}/32"), "dev", "lo"])?;
        }
        Ok(namespace)
    }

    fn exec(&self, command: &[&str]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.0];
        args.extend_from_slice(command);
        ip(&args)
    }

    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.0]
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.0]) {
            eprintln!("could not delete network namespace {}: {e}", self.0);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn creds_json(creds: &StaticCreds) -> serde_json::Value {
    serde_json::json!({"id": creds.access_key_id, "secret": creds.secret_access_key, "token": creds.session_token})
}

#[tokio::test]
async fn link_local_defaults_work_in_a_private_network_namespace() {
    if !nix::unistd::geteuid().is_root() {
        println!(
            "skipped: creating a network namespace needs root (run the tests as root to cover the link-local addresses)"
        );
        return;
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        println!("skipped: `ip` (iproute2) is not installed");
        return;
    }
    let namespace = match Namespace::create() {
        Ok(namespace) => namespace,
        Err(e) => {
            println!("skipped: cannot set up a network namespace here: {e}");
            return;
        }
    };

    let moto = Moto::start().await.expect("moto_server starts");
    let ec2 = moto
        .assume_role(DEFAULT_ROLE, "i-0123456789abcdef0")
        .await
        .unwrap();
    let ecs = moto
        .assume_role(DEFAULT_ROLE, "ecs-task-netns")
        .await
        .unwrap();
    let pod = moto
        .assume_role(DEFAULT_ROLE, "eks-pod-netns")
        .await
        .unwrap();
    let token_dir = tempfile::tempdir().unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut emulators = tokio::process::Command::new("ip")
        .args(namespace.wrapper()[1..].iter())
        .arg(&exe)
        .args(["--ignored", "--exact", "child_link_local_emulators", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            CREDS_VAR,
            serde_json::json!({"ec2": creds_json(&ec2), "ecs": creds_json(&ecs), "pod": creds_json(&pod)}).to_string(),
        )
        .env(TOKEN_DIR_VAR, token_dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("emulator child starts");
    let mut lines = BufReader::new(emulators.stdout.take().unwrap()).lines();
    let ready: serde_json::Value = tokio::time::timeout(READY_DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("emulator child output") {
            if let Some(json) = line.find(READY).map(|i| &line[i + READY.len()..]) {
                return serde_json::from_str(json).expect("ready JSON");
            }
        }
        panic!("emulator child exited before it was ready");
    })
    .await
    .expect("emulators ready in time");

    let wrapper = namespace.wrapper();

    // EC2: nothing in the environment; IMDS at its default address.
    let outcome = run_child("child_identity", &[], IMDS_TIMEOUT, &wrapper).await;
    assert_eq!(outcome.kind, "ec2", "{outcome:?}");
    assert_eq!(outcome.region.as_deref(), Some("eu-north-1"));
    assert_proves_role_session(&moto.url(), &outcome, "i-0123456789abcdef0").await;

    // ECS: the relative URI joined onto 169.254.170.2, task metadata for the region.
    let env = pairs(&[
        (
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            ready["ecs_relative_uri"].as_str().unwrap(),
        ),
        (
            "ECS_CONTAINER_METADATA_URI_V4",
            ready["ecs_metadata_uri"].as_str().unwrap(),
        ),
    ]);
    let outcome = run_child("child_identity", &env, IMDS_TIMEOUT, &wrapper).await;
    assert_eq!(outcome.kind, "ecs", "{outcome:?}");
    assert_eq!(outcome.region.as_deref(), Some("ca-central-1"));
    assert_proves_role_session(&moto.url(), &outcome, "ecs-task-netns").await;

    // EKS Pod Identity: exactly what the Pod Identity webhook injects.
    let env = pairs(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.23/v1/credentials",
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            ready["pod_token_file"].as_str().unwrap(),
        ),
    ]);
    let outcome = run_child("child_identity", &env, IMDS_TIMEOUT, &wrapper).await;
    assert_eq!(outcome.kind, "eks-pod-identity", "{outcome:?}");
    // No region variable: it comes from the IMDS identity document (also reachable here).
    assert_eq!(outcome.region.as_deref(), Some("eu-north-1"));
    assert_proves_role_session(&moto.url(), &outcome, "eks-pod-netns").await;

    drop(emulators.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), emulators.wait()).await;
    let _ = emulators.kill().await;
}

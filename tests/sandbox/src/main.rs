//! `sandbox world --dir DIR`: starts a local AWS + Datadog for the demo and waits.
//!
//! It starts moto (STS with signature checks), assumes `DatadogAgentRole` as an EC2 instance
//! would, serves those credentials from an IMDS emulator, starts a Datadog API emulator with one
//! org mapped to `arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*`, and writes into
//! DIR everything the daemon needs: `datadog.yaml`, `delegated-auth.yaml` and `env` (the
//! variables that point the AWS SDK at the emulated IMDS). It prints one line per step and keeps
//! running until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use sandbox::datadog::{DatadogEmulator, DatadogOptions};
use sandbox::imds::{ImdsEmulator, ImdsOptions};
use sandbox::moto::{DEFAULT_ROLE, Moto};

const USAGE: &str = "usage: sandbox world --dir DIR [--refresh-interval 30s]";
const PATTERN: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";
const ORG: &str = "5d2c7a51-2b1c-4f3e-9a7d-1c2b3a4d5e6f";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = None;
    let mut interval = "30s".to_owned();
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("world") => {}
        _ => {
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from),
            "--refresh-interval" => interval = it.next().cloned().unwrap_or(interval),
            _ => {
                eprintln!("{USAGE}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("{USAGE}");
        return std::process::ExitCode::from(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(world(dir, interval)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn world(dir: PathBuf, interval: String) -> Result<(), Box<dyn std::error::Error>> {
    let moto = Moto::start().await?;
    println!(
        "[aws]     moto STS on {} (every request's SigV4 signature is checked)",
        moto.url()
    );
    let creds = moto
        .assume_role(DEFAULT_ROLE, sandbox::imds::INSTANCE_ID)
        .await?;
    println!(
        "[aws]     assumed role {DEFAULT_ROLE} as session {} (what an EC2 instance profile gives)",
        sandbox::imds::INSTANCE_ID
    );
    let imds = ImdsEmulator::start(ImdsOptions {
        region: "us-east-1".into(),
        credentials: Some(creds),
        credential_ttl: Duration::from_secs(3600),
        ..ImdsOptions::default()
    })
    .await?;
    println!("[aws]     EC2 instance metadata (IMDSv2) on {}", imds.url());
    let dd = DatadogEmulator::start(DatadogOptions {
        sts_url: Some(moto.url()),
        ..DatadogOptions::default()
    })
    .await?;
    let org = dd.add_org(ORG);
    dd.add_intake_mapping(ORG, PATTERN);
    println!("[datadog] API on {} with org {ORG}", dd.url());
    println!("[datadog] intake mapping: {PATTERN}");

    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("datadog.yaml"),
        format!(
            "# The Agent's config. The static api_key stays as the fallback.\napi_key: {}\ndd_url: {}\ndelegated_auth:\n  org_uuid: {ORG}\n",
            org.api_key,
            dd.url()
        ),
    )?;
    std::fs::write(
        dir.join("delegated-auth.yaml"),
        format!(
            "socket:\n  path: {}\nrefresh:\n  interval: {interval}\nlog:\n  level: info\n",
            dir.join("delegated-auth.sock").display()
        ),
    )?;
    std::fs::write(
        dir.join("env"),
        format!("AWS_EC2_METADATA_SERVICE_ENDPOINT={}\n", imds.url()),
    )?;
    std::fs::write(dir.join("datadog-url"), dd.url())?;
    println!(
        "[sandbox] wrote {}/{{datadog.yaml,delegated-auth.yaml,env}}",
        dir.display()
    );
    println!("[sandbox] ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let issued = dd.issued_keys(ORG).len();
    println!("[datadog] issued {issued} managed key(s) during the demo; stopping");
    Ok(())
}

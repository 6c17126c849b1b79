//! `sandbox world --dir DIR`: starts a local AWS + Datadog for the demo and waits.
//!
//! It starts moto (STS with signature checks), assumes `DatadogAgentRole` as an EC2 instance
//! would, serves those credentials from an IMDS emulator, starts a Datadog API emulator with one
//! org mapped to `arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*`, and writes into
//! DIR everything the daemon needs: `datadog.yaml`, `delegated-auth.yaml` and `env` (the
//! variables that point the AWS SDK at the emulated IMDS). It prints one line per step and keeps
//! running until SIGINT/SIGTERM.
//!
//! `--token NAME` (off by default) also maps the same role pattern to the account
//! `automation@example.com` (a persona mapping, for delegated API tokens) and appends a
//! `tokens:` entry named NAME to `delegated-auth.yaml`; `--token-lifetime` (default 1h) sets how
//! long the emulator's tokens last. Without `--token` the files are exactly what they were before
//! tokens existed, so a daemon that does not know `tokens:` still reads them.

use std::path::PathBuf;
use std::time::Duration;

use sandbox::datadog::{DatadogEmulator, DatadogOptions};
use sandbox::imds::{ImdsEmulator, ImdsOptions};
use sandbox::moto::{DEFAULT_ROLE, Moto};

const USAGE: &str =
    "usage: sandbox world --dir DIR [--refresh-interval 30s] [--token NAME] [--token-lifetime 1h]";
const PATTERN: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";
const ORG: &str = "5d2c7a51-2b1c-4f3e-9a7d-1c2b3a4d5e6f";
/// The account `--token` maps the demo role to.
const TOKEN_ACCOUNT: &str = "automation@example.com";

/// The delegated API token `--token` asks for.
struct TokenOpts {
    /// The `tokens:` entry's name.
    name: String,
    /// The emulator's token lifetime.
    lifetime: Duration,
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = None;
    let mut interval = "30s".to_owned();
    let mut token_name = None;
    let mut token_lifetime = Duration::from_secs(3600);
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
            "--token" => match it
                .next()
                .filter(|n| datadog_delegated_auth::config::is_token_name(n))
            {
                Some(name) => token_name = Some(name.clone()),
                None => {
                    eprintln!(
                        "sandbox: --token needs a token name (1 to 64 letters, digits, '-', '_', '.'), as the daemon's settings do"
                    );
                    eprintln!("{USAGE}");
                    return std::process::ExitCode::from(2);
                }
            },
            "--token-lifetime" => match it.next().map(|v| humantime::parse_duration(v)) {
                Some(Ok(lifetime)) if lifetime >= Duration::from_secs(1) => {
                    token_lifetime = lifetime;
                }
                _ => {
                    eprintln!(
                        "sandbox: --token-lifetime needs a duration of at least 1s (e.g. 15m)"
                    );
                    eprintln!("{USAGE}");
                    return std::process::ExitCode::from(2);
                }
            },
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
    let token = token_name.map(|name| TokenOpts {
        name,
        lifetime: token_lifetime,
    });
    match rt.block_on(world(dir, interval, token)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The daemon's `delegated-auth.yaml`; `token` is the `(name, api_url)` of a `tokens:` entry.
/// Without one the text is exactly what it was before tokens existed (the daemon on main
/// refuses keys it does not know).
fn daemon_yaml(socket: &std::path::Path, interval: &str, token: Option<(&str, &str)>) -> String {
    let mut yaml = format!(
        "socket:\n  path: {}\nrefresh:\n  interval: {interval}\nlog:\n  level: info\n",
        socket.display()
    );
    if let Some((name, api_url)) = token {
        yaml.push_str(&format!(
            "tokens:\n  - name: {name}\n    org_uuid: {ORG}\n    api_url: {api_url}\n"
        ));
    }
    yaml
}

async fn world(
    dir: PathBuf,
    interval: String,
    token: Option<TokenOpts>,
) -> Result<(), Box<dyn std::error::Error>> {
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
    let mut dd_opts = DatadogOptions {
        sts_url: Some(moto.url()),
        ..DatadogOptions::default()
    };
    if let Some(token) = &token {
        dd_opts.token_lifetime = token.lifetime;
    }
    let dd = DatadogEmulator::start(dd_opts).await?;
    let org = dd.add_org(ORG);
    dd.add_intake_mapping(ORG, PATTERN);
    println!("[datadog] API on {} with org {ORG}", dd.url());
    println!("[datadog] intake mapping: {PATTERN}");
    if token.is_some() {
        dd.add_persona_mapping(ORG, PATTERN, TOKEN_ACCOUNT);
        println!("[datadog] persona mapping: {PATTERN} -> {TOKEN_ACCOUNT}");
    }

    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("datadog.yaml"),
        format!(
            "# The Agent's config. The static api_key stays as the fallback.\napi_key: {}\ndd_url: {}\ndelegated_auth:\n  org_uuid: {ORG}\n",
            org.api_key,
            dd.url()
        ),
    )?;
    let token_entry = token.as_ref().map(|t| (t.name.as_str(), dd.url()));
    std::fs::write(
        dir.join("delegated-auth.yaml"),
        daemon_yaml(
            &dir.join("delegated-auth.sock"),
            &interval,
            token_entry
                .as_ref()
                .map(|(name, url)| (*name, url.as_str())),
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
    // Listen before saying ready: a script that stops the world as soon as it reads "ready"
    // must not kill it before the handler exists (it would die without its summary).
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    println!("[sandbox] ready");

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = term.recv() => {}
    }
    let tokens = dd.issued_tokens(ORG).len();
    if tokens > 0 {
        println!("[datadog] issued {tokens} delegated token(s) during the demo");
    }
    let issued = dd.issued_keys(ORG).len();
    println!("[datadog] issued {issued} managed key(s) during the demo; stopping");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_token_the_daemon_config_is_unchanged() {
        let socket = std::path::Path::new("/d/delegated-auth.sock");
        assert_eq!(
            daemon_yaml(socket, "30s", None),
            "socket:\n  path: /d/delegated-auth.sock\nrefresh:\n  interval: 30s\nlog:\n  level: info\n"
        );
        assert_eq!(
            daemon_yaml(socket, "30s", Some(("tf", "http://127.0.0.1:9"))),
            format!(
                "socket:\n  path: /d/delegated-auth.sock\nrefresh:\n  interval: 30s\nlog:\n  level: info\n\
                 tokens:\n  - name: tf\n    org_uuid: {ORG}\n    api_url: http://127.0.0.1:9\n"
            )
        );
    }
}

//! The command line (product §8). `main` only calls [`main`]; each command is a small function
//! returning an exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use http::{Method, StatusCode};

use crate::client::{self, ClientError, Failure, KeyClient, Target, Wait};
use crate::config;
use crate::exit;
use crate::status::{StatusDoc, render_text};

/// Requests to the daemon from the CLI give up after this long (a long poll adds its wait).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "datadog-delegated-auth",
    version,
    about = "Datadog managed API keys from the workload's AWS identity, served on a Unix socket"
)]
struct Cli {
    /// The Datadog Agent's configuration file.
    #[arg(long, global = true, value_name = "PATH", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The daemon's own settings file (optional unless given).
    #[arg(long, global = true, value_name = "PATH")]
    settings: Option<PathBuf>,
    /// The socket path (overrides socket.path and DD_DELEGATED_AUTH_SOCKET).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Run {
        /// How long in-flight requests may take to finish after SIGTERM.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Validate the configuration and print the resolved instances.
    CheckConfig,
    /// Show the daemon's status.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print an instance's key.
    Get {
        /// Instance name.
        #[arg(default_value = "api_key")]
        instance: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Print a delegated API token (for `Authorization: Bearer`).
    Token {
        /// Token name; may be left out when exactly one token is configured.
        name: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Exit 0 when the daemon is live (or, with --ready, ready); for container health checks.
    Health {
        /// Check readiness instead of liveness.
        #[arg(long)]
        ready: bool,
    },
    /// Check everything delegated auth needs on this host (identity, clock, STS, mapping,
    /// exchange) and say how to fix what fails.
    Doctor(crate::doctor::DoctorArgs),
    /// List, show, create or delete Cloud Authentication mappings (needs DD_API_KEY and
    /// DD_APP_KEY).
    Mapping {
        #[command(subcommand)]
        cmd: crate::mapping::MappingCommand,
    },
    /// The Datadog Agent's secret_backend_command: handles on stdin, keys on stdout.
    SecretHelper(crate::secret_helper::Args),
    /// Run a command with a key in its environment; restart or signal it when the key rotates.
    Exec(crate::exec::Args),
    /// Print the version.
    Version,
}

/// How `get` and `token` read.
#[derive(clap::Args, Debug)]
struct ReadArgs {
    /// Wait (up to --timeout) for the daemon to start and a key or token to be served.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits; also the bound on one request (at most 10 s without --wait).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the whole JSON answer (a token's: `name`, `access_token`, `expires_at`,
    /// `generation`, `org_uuid`).
    #[arg(long)]
    json: bool,
}

/// Clears the process's dumpable flag before any key is in memory: other processes of the same
/// uid can then neither read `/proc/PID/mem` or `environ` nor ptrace it, and a crash leaves no
/// core file holding keys. Every command holds keys (`exec` and `secret-helper` too), so all
/// do this. A child started by `exec` is dumpable again after its `execve`, as it should be.
fn forbid_core_dumps_and_tracing() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!(
            "warning: cannot clear the dumpable flag (PR_SET_DUMPABLE: {e}); other processes of this user may read keys from its memory"
        );
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    forbid_core_dumps_and_tracing();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let paths = config::Paths {
        settings_required: cli.settings.is_some(),
        settings: cli
            .settings
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SETTINGS_PATH)),
        config: cli.config.clone(),
    };
    let env = |k: &str| std::env::var(k).ok();
    let code = match cli.command {
        Command::Run { grace } => crate::daemon::run(crate::daemon::RunOptions {
            paths,
            socket_override: cli.socket,
            grace,
        }),
        Command::CheckConfig => {
            config::check_config_main(&paths, &env, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Version => {
            println!("datadog-delegated-auth {}", env!("CARGO_PKG_VERSION"));
            exit::OK
        }
        Command::Status { json } => {
            with_runtime(status(socket_path(&cli.socket, &paths, &env), json))
        }
        Command::Get { instance, read: r } => with_runtime(read(
            socket_path(&cli.socket, &paths, &env),
            Target::Key(instance),
            r,
        )),
        Command::Token { name, read: r } => {
            with_runtime(token(socket_path(&cli.socket, &paths, &env), name, r))
        }
        Command::Health { ready } => {
            with_runtime(health(socket_path(&cli.socket, &paths, &env), ready))
        }
        // A configuration that does not load is doctor's first failed check, not a reason to
        // skip the AWS checks.
        Command::Doctor(args) => with_runtime(crate::doctor::run_with(
            &args,
            config::load(&paths, &env).as_ref(),
            crate::aws::AwsEnv::from_process(),
            &mut std::io::stdout(),
        )),
        Command::Mapping { cmd } => match config::load(&paths, &env) {
            Ok(cfg) => with_runtime(crate::mapping::run(
                &cmd,
                &cfg,
                &env,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )),
            Err(errors) => {
                for problem in &errors.0 {
                    eprintln!("error: {problem}");
                }
                exit::CONFIG
            }
        },
        Command::SecretHelper(args) => crate::secret_helper::main(
            socket_path(&cli.socket, &paths, &env),
            &args,
            std::io::stdin(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Exec(args) => crate::exec::main(socket_path(&cli.socket, &paths, &env), args),
    };
    ExitCode::from(code)
}

/// The socket clients talk to: `--socket`, else what the settings file and
/// `DD_DELEGATED_AUTH_SOCKET` say (see [`config::socket_path`]).
fn socket_path(
    flag: &Option<PathBuf>,
    paths: &config::Paths,
    env: &dyn Fn(&str) -> Option<String>,
) -> PathBuf {
    flag.clone()
        .unwrap_or_else(|| config::socket_path(paths, env))
}

fn with_runtime(fut: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            exit::FAILURE
        }
    }
}

fn client_failure(e: &ClientError) -> u8 {
    eprintln!("error: {e}");
    match e {
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        _ => exit::FAILURE,
    }
}

async fn status(socket: PathBuf, json: bool) -> u8 {
    let reply = match client::request(
        &socket,
        Method::GET,
        "/v1/status",
        &[],
        None,
        CLIENT_TIMEOUT,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return client_failure(&e),
    };
    if reply.status != StatusCode::OK {
        eprintln!(
            "error: the daemon answered {}: {}",
            reply.status,
            reply.error_message()
        );
        return exit::FAILURE;
    }
    let mut out = std::io::stdout();
    if json {
        let _ = out.write_all(&reply.body);
        let _ = out.write_all(b"\n");
        return exit::OK;
    }
    match serde_json::from_slice::<StatusDoc>(&reply.body) {
        Ok(doc) => {
            let _ = out.write_all(render_text(&doc).as_bytes());
            exit::OK
        }
        Err(e) => {
            eprintln!(
                "error: the daemon's status is not what this version expects ({e}); try --json"
            );
            exit::FAILURE
        }
    }
}

async fn token(socket: PathBuf, name: Option<String>, args: ReadArgs) -> u8 {
    let name = match name {
        Some(name) => name,
        None => match only_token(&socket, args.wait, args.timeout).await {
            Ok(name) => name,
            Err(code) => return code,
        },
    };
    read(socket, Target::Token(name), args).await
}

/// The name of the one token the daemon serves, when `token` is given no name.
async fn only_token(socket: &std::path::Path, wait: bool, timeout: Duration) -> Result<String, u8> {
    // The list is read like a key: with --wait, while the daemon is starting.
    let deadline = tokio::time::Instant::now() + timeout;
    let reply = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client::request(
            socket,
            Method::GET,
            "/v1/tokens",
            &[],
            None,
            left.min(CLIENT_TIMEOUT),
        )
        .await
        {
            Ok(reply) => break reply,
            Err(ClientError::Unreachable { .. }) if wait && left > client::RETRY_PAUSE => {
                tokio::time::sleep(client::RETRY_PAUSE).await;
            }
            Err(e) => return Err(client_failure(&e)),
        }
    };
    if reply.status != StatusCode::OK {
        eprintln!(
            "error: the daemon answered {}: {}",
            reply.status,
            reply.error_message()
        );
        return Err(exit::FAILURE);
    }
    let names: Vec<String> = serde_json::from_slice::<Vec<crate::status::TokenDoc>>(&reply.body)
        .map(|docs| docs.into_iter().map(|d| d.name).collect())
        .unwrap_or_default();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            eprintln!(
                "error: the daemon serves no token; add one under `tokens:` in the settings file (docs/configuration.md)"
            );
            Err(exit::FAILURE)
        }
        several => {
            eprintln!(
                "error: the daemon serves {} tokens ({}); name the one to print",
                several.len(),
                several.join(", ")
            );
            Err(exit::USAGE)
        }
    }
}

/// Prints a key or a token.
async fn read(socket: PathBuf, target: Target, args: ReadArgs) -> u8 {
    let ReadArgs {
        wait,
        timeout,
        json,
    } = args;
    // Every request and pause fits in what is left of --timeout: a hung daemon costs the
    // caller --timeout, not one more request timeout past it.
    let until = Wait::until(tokio::time::Instant::now() + timeout)
        .request_cap(CLIENT_TIMEOUT)
        .retrying(wait);
    match KeyClient::new(socket).get_target(&target, until).await {
        Ok(fetched) if json => {
            println!("{}", String::from_utf8_lossy(&fetched.reply.body));
            exit::OK
        }
        Ok(fetched) => {
            // Never an empty line for a key a script would then use: an empty key is refused.
            println!("{}", fetched.key.key.expose());
            exit::OK
        }
        Err(e) => match e.last {
            Failure::BadAnswer(e) => {
                eprintln!("error: the daemon answered with {e}");
                exit::FAILURE
            }
            Failure::Answer(reply) => {
                eprintln!("error: {} ({})", reply.error_message(), reply.status);
                exit::FAILURE
            }
            Failure::Daemon(e) => client_failure(&e),
        },
    }
}

async fn health(socket: PathBuf, ready: bool) -> u8 {
    let path = if ready {
        "/v1/health/ready"
    } else {
        "/v1/health/live"
    };
    match client::request(
        &socket,
        Method::GET,
        path,
        &[],
        None,
        Duration::from_secs(3),
    )
    .await
    {
        Ok(reply) if reply.status == StatusCode::OK => exit::OK,
        Ok(reply) => {
            eprintln!("{}: {}", reply.status, reply.error_message());
            exit::FAILURE
        }
        Err(e) => client_failure(&e),
    }
}

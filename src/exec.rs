//! `exec`: runs a command with an instance's key in its environment and acts when the key
//! rotates (product §8), for consumers that read their key from the environment once at start
//! (Vector's `default_api_key: "${DD_API_KEY}"`, the OTel Collector's `${env:DD_API_KEY}`, the
//! trace agent's `DD_API_KEY`, scripts).
//!
//! 1. The first key is fetched like `get --wait`: while the daemon is starting or has no key
//!    yet, exec retries (every 250 ms, up to `--timeout`).
//! 2. The command starts with the key in `--env` (default `DD_API_KEY`) and
//!    `DD_DELEGATED_AUTH_SOCKET` set to the socket exec uses, so a `datadog-delegated-auth get`
//!    run by the command finds the same daemon. It runs in its own process group, so each signal
//!    reaches it once, through exec (a terminal's Ctrl-C goes to exec, which forwards it).
//! 3. Rotations are followed with the long poll (`If-None-Match` + `wait=300s`): one request per
//!    five quiet minutes, no polling. When the daemon is away (restart, upgrade), exec retries
//!    with capped, jittered backoff, and re-reads the key once it is back.
//! 4. On a new key: `restart` sends SIGTERM to the command's process group, waits up to
//!    `--stop-timeout`, sends SIGKILL, and starts the command again with the new key;
//!    `signal:NAME` sends NAME to the command, which must re-read the key itself (from a sink
//!    file or `datadog-delegated-auth get`: its environment cannot change); `none` does nothing.
//! 5. SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 are forwarded to the command's process group.
//!    After SIGTERM or SIGINT no restart happens any more: exec waits for the command to exit.
//! 6. exec exits with the command's status, or 128 + the signal that killed it (as a shell
//!    does); 127 when the command is not found, 126 when it cannot be run.
//!
//! With `--token NAME` the command gets a delegated API token instead (in `DD_ACCESS_TOKEN`
//! unless `--env` says otherwise), followed and acted on the same way: a token is refreshed
//! before it expires, so `restart` gives the command a fresh token well within its lifetime.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{
    ClientError, Failure, FetchedKey, Followed, KeyClient, READ_TIMEOUT, Target, Wait,
};
use crate::exit;
use crate::secret::Secret;

/// Signals exec passes on to the command.
const FORWARDED: [i32; 5] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2];

/// What to do when the key changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRotate {
    /// Stop the command (SIGTERM, then SIGKILL after the stop timeout) and start it again.
    Restart,
    /// Send this signal; the command re-reads the key itself.
    Signal(Signal),
    /// Nothing (the command reads the key by other means, or tolerates the old one).
    Nothing,
}

/// Parses `restart`, `none` or `signal:NAME` (`HUP`, `SIGHUP`, `hup`).
pub fn parse_on_rotate(s: &str) -> Result<OnRotate, String> {
    match s {
        "restart" => Ok(OnRotate::Restart),
        "none" => Ok(OnRotate::Nothing),
        _ => match s.strip_prefix("signal:") {
            Some(name) => parse_signal(name).map(OnRotate::Signal),
            None => Err(format!(
                "{s:?} is not an action; use restart, signal:NAME (e.g. signal:HUP) or none"
            )),
        },
    }
}

/// Parses a signal name with or without `SIG`, in any case.
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("{name:?} is not a signal name; use e.g. HUP, USR1, USR2"))
}

/// Options of `exec`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Instance whose key the command gets.
    #[arg(long, default_value = "api_key", conflicts_with = "token")]
    pub instance: String,
    /// A delegated API token instead of a key: the command gets the token named NAME.
    #[arg(long, value_name = "NAME")]
    pub token: Option<String>,
    /// Environment variable that carries the key (default DD_API_KEY) or token (default
    /// DD_ACCESS_TOKEN).
    #[arg(long = "env", value_name = "NAME", value_parser = parse_env_name)]
    pub env_var: Option<String>,
    /// On a new key: restart, signal:NAME (e.g. signal:HUP), or none.
    #[arg(long, value_name = "ACTION", default_value = "restart", value_parser = parse_on_rotate)]
    pub on_rotate: OnRotate,
    /// How long a restart waits after SIGTERM before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_timeout: Duration,
    /// How long to wait for the daemon and the first key.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl Args {
    /// What the command gets.
    pub fn target(&self) -> Target {
        match &self.token {
            Some(name) => Target::Token(name.clone()),
            None => Target::Key(self.instance.clone()),
        }
    }

    /// The variable that carries it.
    pub fn env_name(&self) -> &str {
        match (&self.env_var, &self.token) {
            (Some(name), _) => name,
            (None, Some(_)) => "DD_ACCESS_TOKEN",
            (None, None) => "DD_API_KEY",
        }
    }
}

fn parse_env_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(['=', '\0']) {
        return Err(format!(
            "{s:?} cannot be an environment variable name (empty, or contains '=' or NUL)"
        ));
    }
    Ok(s.to_owned())
}

/// Why exec stopped without a status of the command to report.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The daemon answered, but with no key.
    #[error("nothing to serve for {instance}: {message} ({status}); the command was not started")]
    Refused {
        /// Instance (or token) asked for.
        instance: String,
        /// The daemon's status.
        status: StatusCode,
        /// The daemon's `error.message`.
        message: String,
    },
    /// The daemon's answer could not be read.
    #[error("the daemon answered for {instance} with {reason}; the command was not started")]
    BadAnswer {
        /// Instance (or token) asked for.
        instance: String,
        /// What was wrong (never the body).
        reason: String,
    },
    /// The daemon could not be reached or did not answer in time.
    #[error("{0}; the command was not started")]
    Daemon(ClientError),
    /// The command could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("cannot wait for the command: {0}")]
    Wait(std::io::Error),
}

impl ExecError {
    /// The exit code: 69 when the daemon is unreachable, 127/126 when the command cannot be
    /// found/executed (as a shell), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::Daemon(ClientError::Unreachable { .. }) => exit::UNREACHABLE,
            ExecError::Spawn { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => exit::FAILURE,
            },
            _ => exit::FAILURE,
        }
    }
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("datadog-delegated-auth exec: {msg}");
}

/// The command: returns the exit code.
pub fn main(socket: PathBuf, args: Args) -> u8 {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ExecError::Runtime)
        .and_then(|rt| rt.block_on(run(socket, args)));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            say(&e);
            e.exit_code()
        }
    }
}

/// The exit code for a command's status: its code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return (code & 0xff) as u8;
    }
    match status.signal() {
        Some(sig) => (128 + sig).clamp(0, 255) as u8,
        None => exit::FAILURE,
    }
}

/// Fetches the first key, waiting (up to `--timeout`) while the daemon is starting, busy or has
/// nothing to serve yet.
async fn first_key(client: &KeyClient, args: &Args) -> Result<FetchedKey, ExecError> {
    let wait = Wait::until(Instant::now() + args.timeout)
        .request_cap(READ_TIMEOUT)
        .request_floor(Duration::from_millis(100))
        .retry_timeouts();
    let target = args.target();
    match client.get_target(&target, wait).await {
        Ok(fetched) => Ok(fetched.key),
        Err(e) => Err(match e.last {
            Failure::BadAnswer(reason) => ExecError::BadAnswer {
                instance: target.to_string(),
                reason,
            },
            Failure::Answer(reply) => ExecError::Refused {
                instance: target.to_string(),
                status: reply.status,
                message: reply.error_message(),
            },
            Failure::Daemon(e) => ExecError::Daemon(e),
        }),
    }
}

/// Follows rotations and publishes each new value on `tx`, saying when following fails and
/// recovers. Runs until the receiver is gone.
async fn follow(
    client: KeyClient,
    target: Target,
    known: FetchedKey,
    tx: watch::Sender<FetchedKey>,
) {
    let rotations = client.follow(&target, known);
    futures_util::pin_mut!(rotations);
    while !tx.is_closed() {
        let Some(event) = rotations.next().await else {
            return;
        };
        match event {
            Followed::Rotated(key) => {
                let _ = tx.send(key);
            }
            Followed::Trouble(msg) => say(format!(
                "{msg}; the command keeps its current key, retrying"
            )),
            Followed::Recovered => say(format!(
                "the daemon answers again; following rotations of {target}"
            )),
        }
    }
}

/// Runs the command to its end; returns its exit code.
async fn run(socket: PathBuf, args: Args) -> Result<u8, ExecError> {
    let mut signals = signal_hook_tokio::Signals::new(FORWARDED).map_err(ExecError::Signals)?;
    let client = KeyClient::new(socket.clone());
    let first = tokio::select! {
        r = first_key(&client, &args) => r,
        Some(sig) = wait_stop_signal(&mut signals) => {
            // Nothing started yet: stop as the command would have.
            return Ok((128 + sig).clamp(0, 255) as u8);
        }
    };
    let known = first?;

    let (tx, mut rx) = watch::channel(known.clone());
    let follower = tokio::spawn(follow(client, args.target(), known, tx));
    let outcome = supervise(&socket, &args, &mut signals, &mut rx).await;
    follower.abort();
    outcome
}

/// Waits for SIGTERM or SIGINT (others are dropped before the command runs).
async fn wait_stop_signal(signals: &mut signal_hook_tokio::Signals) -> Option<i32> {
    while let Some(sig) = signals.next().await {
        if sig == SIGTERM || sig == SIGINT {
            return Some(sig);
        }
    }
    None
}

/// The running command.
struct Running {
    child: tokio::process::Child,
    /// Its pid, which is also its process group id.
    pid: Pid,
}

fn start(socket: &Path, args: &Args, key: &Secret) -> Result<Running, ExecError> {
    let program = &args.command[0];
    // Absolute, so it still points at the daemon if the command changes directory.
    let socket = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&args.command[1..])
        .env(args.env_name(), key.expose())
        .env("DD_DELEGATED_AUTH_SOCKET", &socket)
        // Its own process group: exec is the one place signals come from (a terminal's Ctrl-C
        // would otherwise reach it twice, directly and forwarded), and a restart can stop the
        // whole group, shell pipelines included.
        .process_group(0);
    let child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    // A child not yet waited for always has its pid; never fall back to 0, which would make
    // every signal below target exec's own process group.
    let pid = child
        .id()
        .ok_or_else(|| ExecError::Wait(std::io::Error::other("the command's pid is unknown")))?;
    Ok(Running {
        child,
        pid: Pid::from_raw(pid as i32),
    })
}

fn signal_group(pid: Pid, sig: Signal) {
    // ESRCH: the group is gone already (the command exited); nothing to do.
    let _ = killpg(pid, sig);
}

async fn supervise(
    socket: &Path,
    args: &Args,
    signals: &mut signal_hook_tokio::Signals,
    rx: &mut watch::Receiver<FetchedKey>,
) -> Result<u8, ExecError> {
    let first = rx.borrow_and_update().key.clone();
    let mut running = start(socket, args, &first)?;
    drop(first);
    // The key the command is restarted with, while a restart is under way.
    let mut pending: Option<Secret> = None;
    // When the stopping command gets SIGKILL.
    let mut kill_at: Option<Instant> = None;
    // A forwarded SIGTERM/SIGINT: the command is being stopped for good.
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            status = running.child.wait() => {
                let status = status.map_err(ExecError::Wait)?;
                match pending.take() {
                    Some(key) if !stopping => {
                        kill_at = None;
                        say(format!("restarting the command with the new key ({key})"));
                        running = start(socket, args, &key)?;
                    }
                    _ => return Ok(exit_code(status)),
                }
            }
            Some(raw) = signals.next() => {
                let Ok(sig) = Signal::try_from(raw) else { continue };
                signal_group(running.pid, sig);
                if sig == Signal::SIGTERM || sig == Signal::SIGINT {
                    stopping = true;
                }
            }
            _ = async { tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)).await }, if kill_at.is_some() => {
                say(format!(
                    "the command did not stop within {:?} of SIGTERM; sending SIGKILL",
                    args.stop_timeout
                ));
                signal_group(running.pid, Signal::SIGKILL);
                kill_at = None;
            }
            Ok(()) = rx.changed() => {
                let new = rx.borrow_and_update().key.clone();
                if stopping {
                    continue;
                }
                match args.on_rotate {
                    OnRotate::Restart => {
                        if pending.is_none() {
                            say(format!(
                                "the key of {} changed ({new}); stopping the command to restart it",
                                args.target()
                            ));
                            signal_group(running.pid, Signal::SIGTERM);
                            kill_at = Some(Instant::now() + args.stop_timeout);
                        }
                        // A newer rotation during the stop replaces the key to start with.
                        pending = Some(new);
                    }
                    OnRotate::Signal(sig) => {
                        say(format!(
                            "the key of {} changed ({new}); sending {sig} to the command",
                            args.target()
                        ));
                        let _ = kill(running.pid, sig);
                    }
                    OnRotate::Nothing => say(format!(
                        "the key of {} changed ({new}); the command keeps running (--on-rotate none)",
                        args.target()
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rotation_actions() {
        assert_eq!(parse_on_rotate("restart"), Ok(OnRotate::Restart));
        assert_eq!(parse_on_rotate("none"), Ok(OnRotate::Nothing));
        for s in ["signal:HUP", "signal:SIGHUP", "signal:hup"] {
            assert_eq!(
                parse_on_rotate(s),
                Ok(OnRotate::Signal(Signal::SIGHUP)),
                "{s}"
            );
        }
        assert_eq!(
            parse_on_rotate("signal:USR2"),
            Ok(OnRotate::Signal(Signal::SIGUSR2))
        );
        assert!(parse_on_rotate("signal:NOPE").is_err());
        assert!(parse_on_rotate("reload").is_err());
        assert!(parse_on_rotate("signal:").is_err());
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        // Killed by SIGTERM (15): raw wait status is the signal number.
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn errors_map_to_the_products_exit_codes() {
        let spawn = |kind| ExecError::Spawn {
            program: "x".into(),
            source: std::io::Error::from(kind),
        };
        assert_eq!(spawn(std::io::ErrorKind::NotFound).exit_code(), 127);
        assert_eq!(spawn(std::io::ErrorKind::PermissionDenied).exit_code(), 126);
        let unreachable = ExecError::Daemon(ClientError::Unreachable {
            path: "/s".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(unreachable.exit_code(), exit::UNREACHABLE);
        let refused = ExecError::Refused {
            instance: "nope".into(),
            status: StatusCode::NOT_FOUND,
            message: "no instance named \"nope\"".into(),
        };
        assert_eq!(refused.exit_code(), exit::FAILURE);
        assert!(refused.to_string().contains("the command was not started"));
    }

    #[test]
    fn env_names_are_checked() {
        assert!(parse_env_name("DD_API_KEY").is_ok());
        assert!(parse_env_name("").is_err());
        assert!(parse_env_name("A=B").is_err());
    }
}

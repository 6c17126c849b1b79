//! `run`: the daemon's lifecycle (product §8).
//!
//! Start-up: load and validate the configuration (exit 78 on errors), set up logging, bind the
//! socket with its mode and group, start the refresh manager and the server, tell systemd
//! `READY=1`. Then one loop reacts to [`control::Control`] requests: reloads validate the new
//! configuration completely before anything changes (an invalid one keeps the old config, is
//! logged, counted and shown in status); the first SIGTERM/SIGINT starts a graceful stop, a
//! second one exits at once.
//!
//! - `resolve`: the build step after validation (user and group names, the
//!   exchanger); it is what a reload can still fail on, before anything changes.
//! - `socket`: the socket supervisor.
//! - `info`: updates of the status document's daemon part that never lose a concurrent one.
//! - `exchanger`: the real exchanger; [`control`]: signals and file events; `notify`: systemd.

pub mod control;
mod exchanger;
mod info;
mod notify;
mod resolve;
mod socket;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::control::Control;
use self::exchanger::AwsExchanger;
use self::resolve::resolve;
use self::socket::SocketBinding;
use crate::config::{self, Config, ConfigErrors};
use crate::exit;
use crate::keystore::KeyStore;
use crate::lifecycle::Manager;
use crate::logging::{self, LogHandle};
use crate::metrics::Metrics;
use crate::server::{self, Limits, ServerState};
use crate::sink::{self, SinkSpec};
use crate::status::{DaemonInfo, EnvironmentStatus, ProxyStatus};

/// Options of `run` from the command line.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Configuration files.
    pub paths: config::Paths,
    /// `--socket`, which wins over the settings file and the environment.
    pub socket_override: Option<PathBuf>,
    /// Grace period for in-flight requests at shutdown.
    pub grace: Duration,
}

/// Runs the daemon to completion and returns the process exit code.
pub fn run(opts: RunOptions) -> u8 {
    match start_and_serve(opts) {
        Ok(code) => code,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    }
}

/// Why the daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid, or does not resolve on this host (an unknown user or
    /// group): nothing was started.
    #[error("invalid configuration; nothing was started:\n{0}")]
    Config(ConfigErrors),
    /// The log level or format cannot be set up.
    #[error("{0}")]
    Logging(String),
    /// The async runtime cannot be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The socket cannot be bound.
    #[error("{cause}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why (its text is this error's text).
        cause: server::BindError,
    },
}

impl StartError {
    /// The process exit code: 78 (`EX_CONFIG`) for what the operator fixes in the
    /// configuration, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Logging(_) => exit::CONFIG,
            StartError::Runtime(_) | StartError::Signals(_) | StartError::Bind { .. } => {
                exit::FAILURE
            }
        }
    }

    /// Tells the operator: on stderr, and in the log once logging is set up.
    fn report(&self) {
        match self {
            StartError::Config(errors) => {
                // Before logging is set up (a load error) these go nowhere.
                for e in &errors.0 {
                    error!("{e}");
                }
                eprintln!("error: {self}");
            }
            StartError::Logging(_) | StartError::Signals(_) => eprintln!("error: {self}"),
            StartError::Runtime(e) => error!(error = %e, "Cannot start the async runtime."),
            StartError::Bind { path, cause } => {
                error!(path = %path.display(), "{cause}");
                eprintln!("error: {self}");
            }
        }
    }
}

/// Loads the configuration, sets up logging and the runtime, starts the daemon and serves
/// until it stops.
fn start_and_serve(opts: RunOptions) -> Result<u8, StartError> {
    let env = |k: &str| std::env::var(k).ok();
    // Taken before the files are read: a change made while they are read then differs from it,
    // and the first file event after start-up reloads it (see `Daemon::start`).
    let base = vec![opts.paths.config.clone(), opts.paths.settings.clone()];
    let fingerprint = control::fingerprint(&base);
    let cfg = config::load(&opts.paths, &env).map_err(StartError::Config)?;
    let format = match cfg.settings.log.format {
        config::LogFormat::Json => logging::Format::Json,
        config::LogFormat::Text => logging::Format::Text,
    };
    let log = logging::init(&cfg.settings.log.level, format).map_err(StartError::Logging)?;
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Two workers: the work is tiny, and the machine this runs beside the Agent on is
        // shared; more threads would only cost memory.
        .worker_threads(2)
        // A blocking thread (a reload's file reads, a DNS lookup) ends 1 s after its last job
        // instead of tokio's 10 s: an idle daemon holds no thread that will wake up to exit.
        .thread_keep_alive(Duration::from_secs(1))
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let watched = watched_files(&opts.paths, &cfg);
    let fingerprint = if watched == base {
        fingerprint
    } else {
        control::fingerprint(&watched)
    };
    let files = WatchedFiles {
        paths: watched,
        fingerprint,
        watch: None,
    };
    let code = runtime.block_on(async {
        let (daemon, running) = Daemon::start(opts, cfg, files, log).await?;
        Ok(daemon.serve(running).await)
    });
    // Don't wait for stray blocking tasks (a hung credential file read) at exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// The files whose changes reload the configuration: both configuration files and the fallback
/// key file the settings name.
fn watched_files(paths: &config::Paths, cfg: &Config) -> Vec<PathBuf> {
    let mut files = vec![paths.config.clone(), paths.settings.clone()];
    files.extend(cfg.settings.fallback_api_key_file.clone());
    files
}

/// The watched files, what they held when last read, and their watch.
struct WatchedFiles {
    paths: Vec<PathBuf>,
    /// [`control::fingerprint`] of `paths` taken before the last load (or attempt): file events
    /// that leave it unchanged reload nothing, and an invalid file is reported once per change.
    fingerprint: u64,
    watch: Option<control::Watch>,
}

/// Bound on reading and validating the files of a reload. Regular files are read in
/// microseconds; only a hung network filesystem takes longer, and the control loop (SIGTERM)
/// must not wait on it.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);

/// What reading the files for a reload found.
enum ReloadRead {
    /// A file event, and the files hold what they held.
    Unchanged,
    /// The files were read and validated; the fingerprint of what was read.
    Loaded(Box<Result<Config, config::ConfigErrors>>, Vec<PathBuf>, u64),
}

/// Raises the soft open-files limit to the hard limit: each consumer connection is a
/// descriptor, and the default soft limit (often 1024) is below what `max_connections` allows.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The socket path in force: `--socket` > `DD_DELEGATED_AUTH_SOCKET`/`socket.path` (the config
/// layer applies the environment variable).
fn socket_path(opts: &RunOptions, cfg: &Config) -> PathBuf {
    opts.socket_override
        .clone()
        .unwrap_or_else(|| cfg.settings.socket.path.clone())
}

/// What runs beside the [`Daemon`] once it started.
struct Running {
    /// Signals, file and socket events.
    control_rx: mpsc::Receiver<Control>,
    /// Handed to the watches the control loop (re)creates.
    control_tx: mpsc::Sender<Control>,
    /// The server task; it ends within the grace period after `shutdown`.
    server: tokio::task::JoinHandle<()>,
    /// Stops the server, the refresh manager, the sinks and the watchdog.
    shutdown: CancellationToken,
}

/// The running daemon's state: what the control loop reads and replaces on reload.
struct Daemon {
    opts: RunOptions,
    socket: SocketBinding,
    log: LogHandle,
    state: Arc<ServerState>,
    manager: Manager<AwsExchanger>,
    exchanger: Arc<AwsExchanger>,
    config: Config,
    /// The files whose changes reload the configuration.
    files: WatchedFiles,
    /// Cancels the sink tasks of the configuration in force (replaced on reload).
    sinks: CancellationToken,
}

impl Daemon {
    /// Starts everything: signal handlers and watches first, then the socket, the refresh
    /// manager, the server and the sinks; then tells systemd `READY=1`.
    async fn start(
        opts: RunOptions,
        cfg: Config,
        mut files: WatchedFiles,
        log: LogHandle,
    ) -> Result<(Daemon, Running), StartError> {
        for w in &cfg.warnings {
            warn!(key = %w.key, "{}", w.message);
        }
        let applied = resolve(&cfg).map_err(StartError::Config)?;
        let socket = socket_path(&opts, &cfg);
        let gid = applied.socket_gid;
        // Signal handlers and the file watcher exist before anyone can learn we are up (the
        // socket, READY=1): a SIGHUP sent right after start must reload, not kill us, and an
        // edit made right after start must not be missed.
        let (control_tx, control_rx) = mpsc::channel(16);
        control::spawn_signals(control_tx.clone()).map_err(StartError::Signals)?;
        files.watch = watch_config(&files.paths, &control_tx);
        // A change made between the first read and the watch is seen by this check (it reloads
        // only if the files differ from what was read).
        let _ = control_tx.try_send(Control::Reload(control::Trigger::FileEvent));
        let (rebind, rebound) = mpsc::channel(1);
        let (socket_binding, listener) =
            SocketBinding::bind(&socket, cfg.settings.socket.mode, gid, rebind).map_err(
                |cause| StartError::Bind {
                    path: socket.clone(),
                    cause,
                },
            )?;

        let shutdown = CancellationToken::new();
        let store = Arc::new(KeyStore::new());
        let metrics = Arc::new(Metrics::new());
        let mut manager = Manager::new(
            store.clone(),
            metrics.clone(),
            applied.exchanger.clone(),
            shutdown.child_token(),
        );
        manager.apply(applied.plans, applied.timing).await;

        let info = initial_info(&opts, &cfg, &socket);
        let state = Arc::new(ServerState {
            store: store.clone(),
            metrics,
            access: ArcSwap::from_pointee(applied.access),
            info: ArcSwap::from_pointee(info),
            sinks: Arc::default(),
            // The handle stays valid across reloads.
            rejections: Arc::new(manager.handle()),
            limits: Limits {
                max_connections: cfg.settings.socket.max_connections,
                max_connections_per_uid: server::per_uid_share(cfg.settings.socket.max_connections),
                idle_timeout: cfg.settings.socket.idle_timeout,
                ..Limits::default()
            },
            shutdown: shutdown.clone(),
        });
        applied.exchanger.publish_environment(state.clone());
        let server = tokio::spawn(server::serve_rebindable(
            listener,
            rebound,
            state.clone(),
            opts.grace,
        ));
        info!(socket = %socket.display(), instances = cfg.instances.len(), version = env!("CARGO_PKG_VERSION"), "Listening.");
        notify::ready(&format!(
            "serving {} instance(s) on {}",
            cfg.instances.len(),
            socket.display()
        ));
        notify::spawn_watchdog(shutdown.clone());

        let sinks = start_sinks(&applied.sinks, &state);
        let daemon = Daemon {
            socket: socket_binding,
            opts,
            log,
            state,
            manager,
            exchanger: applied.exchanger,
            config: cfg,
            files,
            sinks,
        };
        let running = Running {
            control_rx,
            control_tx,
            server,
            shutdown,
        };
        Ok((daemon, running))
    }

    /// Serves until a stop signal, then stops: no new connections, in-flight requests get the
    /// grace period, the refresh manager ends, our socket is removed. Returns the exit code.
    async fn serve(mut self, running: Running) -> u8 {
        let code = self
            .control_loop(running.control_rx, running.control_tx)
            .await;
        self.files.watch = None;
        self.socket.unwatch();

        notify::stopping();
        info!("Stopping: no new connections; in-flight requests have the grace period to finish.");
        running.shutdown.cancel();
        let grace = self.opts.grace;
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), running.server).await;
        self.manager.wait().await;
        // Only our own socket: the path may hold another daemon's by now.
        self.socket.own().remove();
        info!("Stopped.");
        code
    }

    async fn control_loop(
        &mut self,
        mut rx: mpsc::Receiver<Control>,
        tx: mpsc::Sender<Control>,
    ) -> u8 {
        self.socket.watch(&tx);
        // Whatever happened to the socket before the watch began is only seen by a check.
        self.socket.check(&tx).await;
        while let Some(c) = rx.recv().await {
            match c {
                Control::Reload(trigger) => {
                    self.reload(trigger, &tx).await;
                    self.socket.check(&tx).await;
                }
                Control::CheckSocket => self.socket.check(&tx).await,
                Control::Shutdown => {
                    // A second signal during the graceful stop exits at once.
                    let socket = self.socket.own();
                    tokio::spawn(async move {
                        while let Some(c) = rx.recv().await {
                            if c == Control::Shutdown {
                                warn!("Second stop signal: exiting now.");
                                // Only our own socket, as on a graceful stop.
                                socket.remove();
                                std::process::exit(i32::from(exit::FAILURE));
                            }
                        }
                    });
                    return exit::OK;
                }
            }
        }
        exit::OK
    }

    async fn reload(&mut self, trigger: control::Trigger, tx: &mpsc::Sender<Control>) {
        let paths = self.opts.paths.clone();
        let watched = self.files.paths.clone();
        let last = self.files.fingerprint;
        // Reading files (and the fallback key file) is blocking I/O: keep it off the workers,
        // and bounded.
        let read = tokio::task::spawn_blocking(move || {
            let fingerprint = control::fingerprint(&watched);
            if trigger == control::Trigger::FileEvent && fingerprint == last {
                return ReloadRead::Unchanged;
            }
            let env = |k: &str| std::env::var(k).ok();
            let loaded = config::load(&paths, &env);
            let now_watched = loaded
                .as_ref()
                .map_or_else(|_| watched.clone(), |cfg| watched_files(&paths, cfg));
            let fingerprint = if now_watched == watched {
                fingerprint
            } else {
                control::fingerprint(&now_watched)
            };
            ReloadRead::Loaded(Box::new(loaded), now_watched, fingerprint)
        });
        let loaded = match tokio::time::timeout(RELOAD_LIMIT, read).await {
            Ok(Ok(ReloadRead::Unchanged)) => {
                debug!(
                    "A configuration file event without a change of content; nothing to reload."
                );
                return;
            }
            Ok(Ok(ReloadRead::Loaded(loaded, now_watched, fingerprint))) => {
                self.files.fingerprint = fingerprint;
                if now_watched != self.files.paths {
                    self.files.watch = None;
                    self.files.watch = watch_config(&now_watched, tx);
                    self.files.paths = now_watched;
                }
                Ok(*loaded)
            }
            Ok(Err(e)) => Err(format!("the reload task failed: {e}")),
            Err(_) => Err(format!(
                "reading the configuration files did not finish within {}s (a hung network \
                 filesystem?)",
                RELOAD_LIMIT.as_secs()
            )),
        };
        info!(trigger = trigger.as_str(), "Reloading the configuration.");
        let result = match loaded {
            Ok(Ok(cfg)) => match resolve(&cfg) {
                // The socket first, since it can fail: nothing else changes if it does.
                Ok(a) => self
                    .socket
                    .apply_permissions(a.socket_mode, a.socket_gid)
                    .await
                    .map(|()| (cfg, a))
                    .map_err(|e| vec![e]),
                Err(errors) => Err(errors.0.iter().map(ToString::to_string).collect()),
            },
            Ok(Err(errors)) => Err(errors.0.iter().map(ToString::to_string).collect()),
            Err(e) => Err(vec![e]),
        };
        match result {
            Ok((cfg, applied)) => {
                let pending = restart_only_changes(&self.opts, &self.config, &cfg);
                for key in &pending {
                    warn!(
                        key,
                        "This setting changed; it takes effect at the next restart (the running daemon keeps its current value)."
                    );
                }
                if let Err(e) = self.log.set_level(&cfg.settings.log.level) {
                    warn!("{e}");
                }
                self.state.access.store(Arc::new(applied.access));
                // The exchanger keeps its identity: a reload swaps what it uses, and the manager
                // keeps unchanged instances (their keys and schedules) as they are.
                self.exchanger.replace(applied.exchanger);
                self.manager.apply(applied.plans, applied.timing).await;
                self.sinks.cancel();
                self.sinks = start_sinks(&applied.sinks, &self.state);
                self.exchanger.publish_environment(self.state.clone());
                let loaded_at = SystemTime::now();
                let proxy = ProxyStatus::from_in_effect(&cfg.agent.proxy_in_effect);
                let warnings: Vec<String> = cfg
                    .warnings
                    .iter()
                    .map(|w| format!("{}: {}", w.key, w.message))
                    .chain(
                        pending
                            .iter()
                            .map(|key| format!("{key}: changed; takes effect at the next restart")),
                    )
                    .collect();
                info::update(&self.state.info, |info| {
                    info.config_loaded_at = Some(loaded_at);
                    info.last_reload_error = None;
                    info.proxy.clone_from(&proxy);
                    info.config_warnings.clone_from(&warnings);
                });
                self.state.metrics.reload("success");
                info!(instances = cfg.instances.len(), "Configuration reloaded.");
                notify::status(&format!(
                    "serving {} instance(s); configuration reloaded",
                    cfg.instances.len()
                ));
                self.config = cfg;
            }
            Err(errors) => {
                for e in &errors {
                    error!("{e}");
                }
                error!(
                    problems = errors.len(),
                    "The new configuration is invalid; still running the previous one. Fix the file; it is re-read on the next change or SIGHUP."
                );
                let error = errors.join("; ");
                info::update(&self.state.info, |info| {
                    info.last_reload_error = Some(error.clone());
                    info.reload_failures += 1;
                });
                self.state.metrics.reload("failure");
            }
        }
    }
}

/// The status document's daemon part at start-up.
fn initial_info(opts: &RunOptions, cfg: &Config, socket: &std::path::Path) -> DaemonInfo {
    DaemonInfo {
        config_path: opts.paths.config.display().to_string(),
        settings_path: opts.paths.settings.display().to_string(),
        socket_path: socket.display().to_string(),
        started_at: Some(SystemTime::now()),
        config_loaded_at: Some(SystemTime::now()),
        config_warnings: cfg
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.key, w.message))
            .collect(),
        proxy: ProxyStatus::from_in_effect(&cfg.agent.proxy_in_effect),
        // Detection runs in the background; status says so until it is published.
        environment: EnvironmentStatus {
            kind: "detecting".to_owned(),
            ..EnvironmentStatus::default()
        },
        ..DaemonInfo::default()
    }
}

/// Settings a reload cannot apply to the running daemon, changed between `old` and `new`: the
/// socket's path (consumers find the daemon where it is), the server's limits (fixed for the
/// connections and the accept loop they bound) and the log format (the subscriber is installed
/// once). Everything else a reload applies.
fn restart_only_changes(opts: &RunOptions, old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.settings, &new.settings);
    [
        (
            "socket.path",
            socket_path(opts, old) != socket_path(opts, new),
        ),
        (
            "socket.max_connections",
            o.socket.max_connections != n.socket.max_connections,
        ),
        (
            "socket.idle_timeout",
            o.socket.idle_timeout != n.socket.idle_timeout,
        ),
        ("log.format", o.log.format != n.log.format),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Watches the configuration files; a failure leaves SIGHUP as the way to reload.
fn watch_config(files: &[PathBuf], tx: &mpsc::Sender<Control>) -> Option<control::Watch> {
    match control::watch_files(files, tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "Cannot watch the configuration files; reload with SIGHUP instead.");
            None
        }
    }
}

/// Starts one task per sink; they stop when the returned token (a child of `shutdown`) is
/// cancelled.
fn start_sinks(specs: &[SinkSpec], state: &ServerState) -> CancellationToken {
    let token = state.shutdown.child_token();
    state.sinks.reset(specs);
    for spec in specs {
        if let Some(slot) = state.store.get(&spec.instance) {
            sink::spawn(spec.clone(), slot, state.sinks.clone(), token.clone());
        }
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_exit_78_for_configuration_and_1_otherwise() {
        let io = || std::io::Error::other("x");
        let config = StartError::Config(ConfigErrors(vec![config::Problem::new(
            std::path::Path::new("/a.yaml"),
            "k",
            "bad",
            "fix it",
        )]));
        assert_eq!(config.exit_code(), exit::CONFIG);
        assert_eq!(
            config.to_string(),
            "invalid configuration; nothing was started:\n/a.yaml: k: bad; fix: fix it"
        );
        assert_eq!(StartError::Logging("x".into()).exit_code(), exit::CONFIG);
        assert_eq!(StartError::Runtime(io()).exit_code(), exit::FAILURE);
        assert_eq!(StartError::Signals(io()).exit_code(), exit::FAILURE);
        let bind = StartError::Bind {
            path: "/run/x.sock".into(),
            cause: server::BindError::NotASocket {
                path: "/run/x.sock".into(),
            },
        };
        assert_eq!(bind.exit_code(), exit::FAILURE);
        assert!(
            bind.to_string()
                .starts_with("/run/x.sock exists and is not a socket")
        );
    }
}

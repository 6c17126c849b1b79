//! Running the real daemon binary (and the reference server) as child processes with their own
//! files, the way `tests/common/mod.rs` does for the black-box tests.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::loadgen;

/// How long a child may take to answer its first request before the bench gives up. Only
/// matters when something is broken; a loaded 2-core machine answers in milliseconds.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A child process serving on a Unix socket in its own temporary directory; killed on drop.
pub struct Server {
    /// Files of this run (config, settings, log, socket), removed on drop.
    _dir: tempfile::TempDir,
    /// The process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its stderr (the daemon's log).
    pub log: PathBuf,
    /// When it was spawned (just before `exec`).
    pub spawned_at: Instant,
}

/// The environment of the daemon: nothing from the bench's own environment leaks in, only
/// `PATH` plus what the scenario gives.
pub fn base_env() -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    // No IMDS here: a stray lookup must fail fast on a closed loopback port.
    env.insert(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
        "http://127.0.0.1:9".into(),
    );
    env
}

impl Server {
    /// Starts `bin run` on `datadog_yaml` and `settings_yaml` without waiting.
    pub fn daemon(
        bin: &Path,
        datadog_yaml: &str,
        settings_yaml: &str,
        env: &HashMap<String, String>,
    ) -> io::Result<Server> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("datadog.yaml");
        let settings = dir.path().join("delegated-auth.yaml");
        let socket = dir.path().join("delegated-auth.sock");
        let log = dir.path().join("daemon.log");
        std::fs::write(&config, datadog_yaml)?;
        std::fs::write(&settings, settings_yaml)?;
        let stderr = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--config"])
            .arg(&config)
            .arg("--settings")
            .arg(&settings)
            .arg("--socket")
            .arg(&socket)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let spawned_at = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            io::Error::other(format!(
                "cannot start the daemon {}: {e}; build it first (scripts/bench does)",
                bin.display()
            ))
        })?;
        Ok(Server {
            _dir: dir,
            child,
            socket,
            log,
            spawned_at,
        })
    }

    /// Starts this binary's `reference-server` serving `body` with `etag`.
    pub fn reference(
        body: &[u8],
        etag: &str,
        variant: crate::reference::Variant,
    ) -> io::Result<Server> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("reference.sock");
        let body_file = dir.path().join("body.json");
        let log = dir.path().join("reference.log");
        std::fs::write(&body_file, body)?;
        let spawned_at = Instant::now();
        let child = Command::new(std::env::current_exe()?)
            .arg("reference-server")
            .arg(&socket)
            .arg(&body_file)
            .arg(etag)
            .arg(variant.name())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Server {
            _dir: dir,
            child,
            socket,
            log,
            spawned_at,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/v1/health/live` every 200 µs until it answers 200; returns the time since spawn.
    pub fn wait_live(&mut self) -> io::Result<Duration> {
        let request = loadgen::get_request("/v1/health/live", &[]);
        let deadline = self.spawned_at + START_PATIENCE;
        loop {
            if let Ok(200) = loadgen::request_blocking(&self.socket, &request) {
                return Ok(self.spawned_at.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} exited with {status} before answering; log:\n{}",
                    self.socket.display(),
                    self.logs()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "nothing answered on {} within {START_PATIENCE:?}; log:\n{}",
                    self.socket.display(),
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's open-files limit to the hard limit: the bench holds a thousand and more
/// client connections at once.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

//! Black-box harness: runs the real binary on files in a temporary directory and talks to it
//! over its real socket.
#![allow(dead_code)]

pub mod world;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datadog_delegated_auth::client::{self, Reply};
use http::Method;

pub const BIN: &str = env!("CARGO_BIN_EXE_datadog-delegated-auth");

/// A running daemon. Killed on drop if still running.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub settings: PathBuf,
    pub log: PathBuf,
}

/// Environment for the daemon: nothing from the test process leaks in (no real AWS creds),
/// only what the test gives.
pub fn base_env() -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    // No IMDS on loopback unless a test starts one: point the SDK at a closed port so a stray
    // lookup fails fast instead of reaching for 169.254.169.254.
    env.insert(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
        "http://127.0.0.1:9".into(),
    );
    env
}

/// [`base_env`] plus an EKS IRSA identity: the role the moto world trusts, the projected token
/// file, the session name, and STS at `sts_url` (moto, or a name only a proxy can reach).
pub fn irsa_env(token_file: &Path, session: &str, sts_url: &str) -> HashMap<String, String> {
    let mut env = base_env();
    env.insert(
        "AWS_ROLE_ARN".into(),
        "arn:aws:iam::123456789012:role/DatadogAgentRole".into(),
    );
    env.insert(
        "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
        token_file.display().to_string(),
    );
    env.insert("AWS_ROLE_SESSION_NAME".into(), session.into());
    env.insert("AWS_ENDPOINT_URL_STS".into(), sts_url.into());
    env.insert("AWS_REGION".into(), "us-east-1".into());
    env
}

/// [`base_env`] plus the ECS/EKS container credentials endpoint at `full_uri`, with the Pod
/// Identity token file when given, in us-east-1.
pub fn container_env(full_uri: &str, token_file: Option<&Path>) -> HashMap<String, String> {
    let mut env = base_env();
    env.insert("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), full_uri.into());
    if let Some(file) = token_file {
        env.insert(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(),
            file.display().to_string(),
        );
    }
    env.insert("AWS_REGION".into(), "us-east-1".into());
    env
}

impl Daemon {
    /// Runs `check-config` on this daemon's files with `env`: (exit code, stdout, stderr).
    pub fn check_config(&self, env: &HashMap<String, String>) -> (i32, String, String) {
        cli(
            &[
                "check-config",
                "--config",
                self.config.to_str().unwrap(),
                "--settings",
                self.settings.to_str().unwrap(),
            ],
            env,
        )
    }

    /// Writes the files and starts `run`; waits until the socket answers.
    pub fn start(datadog_yaml: &str, settings_yaml: &str, env: HashMap<String, String>) -> Daemon {
        let d = Self::spawn(datadog_yaml, settings_yaml, env, &[]);
        d.wait_live();
        d
    }

    /// Like `start` without waiting (for tests of start-up failures).
    pub fn spawn(
        datadog_yaml: &str,
        settings_yaml: &str,
        env: HashMap<String, String>,
        extra: &[&str],
    ) -> Daemon {
        Self::spawn_at(datadog_yaml, settings_yaml, env, extra, None)
    }

    /// Like `spawn`, on a given socket path.
    pub fn spawn_at(
        datadog_yaml: &str,
        settings_yaml: &str,
        env: HashMap<String, String>,
        extra: &[&str],
        socket: Option<PathBuf>,
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("datadog.yaml");
        let settings = dir.path().join("delegated-auth.yaml");
        let socket = socket.unwrap_or_else(|| dir.path().join("run/delegated-auth.sock"));
        let log = dir.path().join("daemon.log");
        std::fs::write(&config, datadog_yaml).unwrap();
        let settings_text = settings_yaml
            .replace("@SOCKET@", socket.to_str().unwrap())
            .replace("@DIR@", dir.path().to_str().unwrap());
        std::fs::write(&settings, settings_text).unwrap();
        // systemd sets WATCHDOG_PID to the service's pid; a test asks for that with the value
        // "self", which a shell turns into its own pid before exec'ing the daemon.
        let mut command = if env.get("WATCHDOG_PID").is_some_and(|v| v == "self") {
            let mut c = Command::new("sh");
            c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        let child = command
            .args(["run", "--config"])
            .arg(&config)
            .arg("--settings")
            .arg(&settings)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn daemon");
        Daemon {
            dir,
            child: Some(child),
            socket,
            config,
            settings,
            log,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn wait_live(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .request(Method::GET, "/v1/health/live", &[], None)
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("daemon did not come up; log:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, client::ClientError> {
        rt().block_on(client::request(
            &self.socket,
            method,
            path,
            headers,
            body,
            Duration::from_secs(330),
        ))
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], None).expect("request")
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {:?}", r.body))
    }

    /// Polls `/v1/keys/{instance}` until `pred` holds (for state changes driven by the daemon).
    pub fn wait_key(
        &self,
        instance: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let path = format!("/v1/keys/{}", client::encode_instance(instance));
        loop {
            let r = self.get(&path);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what} on {instance}; last answer {} {v}\nlog:\n{}",
                    r.status,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// Waits for the process to exit and returns its code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "daemon did not exit within {limit:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A current-thread runtime per call site (tests are synchronous and simple this way).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Replaces a file the way editors and config management do: write a temp file, rename it over.
pub fn write_by_rename(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs the CLI with args; returns (code, stdout, stderr).
pub fn cli(args: &[&str], env: &HashMap<String, String>) -> (i32, String, String) {
    run(BIN, args, env)
}

/// Runs `program args` with exactly `env` and no stdin; returns (code, stdout, stderr).
pub fn run(program: &str, args: &[&str], env: &HashMap<String, String>) -> (i32, String, String) {
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Context switches of each thread of `pid` (`/proc/<pid>/task/*/status`), by thread id.
/// Reading `/proc` does not wake the process.
pub fn context_switches(pid: u32) -> HashMap<String, u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .map(|task| {
            let n = std::fs::read_to_string(task.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
            (task.file_name().to_string_lossy().into_owned(), n)
        })
        .collect()
}

/// Wake-ups of `pid` between a [`context_switches`] snapshot and now: the switches of threads
/// that lived through the window, plus those of threads started in it.
pub fn wakeups_since(pid: u32, before: &HashMap<String, u64>) -> u64 {
    context_switches(pid)
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `delegated_auth_config_reloads_total` by result: (success, failure).
    pub fn reload_counts(&self) -> (u64, u64) {
        let text = String::from_utf8_lossy(&self.get("/metrics").body).into_owned();
        let count = |result: &str| {
            let prefix = format!("delegated_auth_config_reloads_total{{result=\"{result}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
                .unwrap_or(0)
        };
        (count("success"), count("failure"))
    }
}

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Daemon {
    /// Polls `GET /v1/keys` until `instance`'s `last_error` contains `needle`; returns it.
    pub fn wait_error(&self, instance: &str, needle: &str) -> String {
        self.poll_text(
            &format!("{instance}: an error containing {needle:?}"),
            Duration::from_secs(60),
            needle,
            |d| {
                d.json("/v1/keys")
                    .as_array()
                    .and_then(|l| l.iter().find(|i| i["name"] == instance))
                    .and_then(|i| i["last_error"].as_str())
                    .unwrap_or_default()
                    .to_owned()
            },
        )
    }

    /// Polls `read` until what it returns contains `needle`; fails with the last value and the
    /// daemon's log after `limit`.
    fn poll_text(
        &self,
        what: &str,
        limit: Duration,
        needle: &str,
        read: impl Fn(&Daemon) -> String,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = read(self);
            if text.contains(needle) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("{what}: last seen {text:?}\nlog:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A loopback HTTP/1.1 server that answers every GET with an endless chunked body (and every
/// PUT with an IMDSv2 token), until the client goes away. Runs until the process ends.
pub fn endless_http_server() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let put = line.starts_with("PUT");
                    // Skip the headers.
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    if put {
                        let token = "AQAEAendlesstoken";
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\
                             Content-Length: {}\r\n\r\n{token}",
                            token.len()
                        );
                        continue;
                    }
                    let _ =
                        stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "A".repeat(64 * 1024));
                    while stream.write_all(chunk.as_bytes()).is_ok() {}
                    return;
                }
            });
        }
    });
    url
}

impl Daemon {
    /// Polls `/v1/status` until the last reload error contains `needle`.
    pub fn wait_error_in_status(&self, needle: &str) -> String {
        self.poll_text(
            &format!("a reload error containing {needle:?}"),
            Duration::from_secs(30),
            needle,
            |d| {
                d.json("/v1/status")["config"]["last_reload_error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            },
        )
    }
}

/// `program` run as `uid` (and the same gid, no supplementary groups) through `setpriv`; the
/// caller adds the arguments. Tests that use it run as root.
pub fn as_uid(uid: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid", uid, "--regid", uid, "--clear-groups"])
        .arg(program);
    command
}

impl Daemon {
    /// Lets other uids reach the socket: its directory and the test's directory become 0755
    /// (the socket's own mode and the access rules still decide).
    pub fn open_to_other_uids(&self) {
        use std::os::unix::fs::PermissionsExt;
        for dir in [
            self.socket.parent().expect("a socket directory"),
            self.dir.path(),
        ] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

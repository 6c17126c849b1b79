//! A `moto_server` (PyPI `moto[server]`, pinned 5.2.1) launcher with request authentication on,
//! so its STS checks every SigV4 signature it receives.
//!
//! Recipe (measured, see docs/toolchain.md): start with `INITIAL_NO_AUTH_ACTION_COUNT=4`, spend the
//! four unauthenticated calls on create_user, create_access_key, create_role and put_user_policy,
//! and from then on sign everything with the user's keys. The AWS calls go through a short boto3
//! script (boto3 ships with moto), so this crate carries no second SigV4 implementation.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::SandboxError;
use crate::http::send;

/// The account moto uses for everything it creates.
pub const ACCOUNT_ID: &str = "123456789012";
/// The role bootstrapped at start, the one the Agent's docs tell operators to create.
pub const DEFAULT_ROLE: &str = "DatadogAgentRole";
/// The IAM user whose access key signs every later call.
pub const USER_NAME: &str = "sandbox-user";
/// The federated principal trusted for AssumeRoleWithWebIdentity (moto does not validate the
/// token, but the trust policy names it so the role reads like a real IRSA role).
pub const OIDC_PROVIDER: &str =
    "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE";

/// How long moto_server may take to answer its first request. Python start-up on a loaded 2-core
/// machine has been seen to take several seconds; 60 s only matters when something is wrong.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one boto3 helper run may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// Port races (another process takes the port between our probe and moto's bind) are retried.
const START_ATTEMPTS: u32 = 3;

/// Static AWS credentials (an IAM user's keys, or session credentials from AssumeRole).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCreds {
    /// `AKIA…` for a user, `ASIA…` for a session.
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
}

impl StaticCreds {
    /// Temporary credentials no STS knows (secret `s`, token `t`), for emulators whose answers
    /// are never replayed.
    pub fn placeholder(access_key_id: &str) -> StaticCreds {
        StaticCreds {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: "s".to_owned(),
            session_token: Some("t".to_owned()),
        }
    }

    /// The static-credential variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
    /// `AWS_SESSION_TOKEN` when these are temporary credentials.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID".to_owned(), self.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                self.secret_access_key.clone(),
            ),
        ];
        if let Some(token) = &self.session_token {
            env.push(("AWS_SESSION_TOKEN".to_owned(), token.clone()));
        }
        env
    }
}

impl std::fmt::Debug for StaticCreds {
    // Test output may end up in CI logs; keep the secret halves out of it anyway.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCreds")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A running moto_server, bootstrapped with a user, its access key and [`DEFAULT_ROLE`].
/// The process is killed when this value is dropped.
pub struct Moto {
    child: Reaped,
    port: u16,
    log: PathBuf,
    user: StaticCreds,
}

/// The boto3 side. Requests arrive as JSON on stdin (secrets stay out of argv), the answer is one
/// JSON line on stdout, failures a message on stderr and exit status 1.
const HELPER: &str = r#"
import json, sys
import boto3
from botocore.config import Config

req = json.load(sys.stdin)
cfg = Config(retries={"max_attempts": 1, "mode": "standard"})
def client(service, key, secret, token=None):
    return boto3.client(service, endpoint_url=req["url"], region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret,
                        aws_session_token=token, config=cfg)

acct = req["account"]
trust = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole",
         "Principal": {"AWS": "arn:aws:iam::%s:user/%s" % (acct, req["user"])}},
        {"Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
         "Principal": {"Federated": "arn:aws:iam::%s:oidc-provider/%s" % (acct, req["oidc"])}},
    ],
}
try:
    op = req["op"]
    if op == "bootstrap":
        # Exactly four unauthenticated calls: the server was started with
        # INITIAL_NO_AUTH_ACTION_COUNT=4.
        iam = client("iam", "AKIAIOSFODNN7EXAMPLE", "bootstrap")
        iam.create_user(UserName=req["user"])
        key = iam.create_access_key(UserName=req["user"])["AccessKey"]
        iam.create_role(RoleName=req["role"], AssumeRolePolicyDocument=json.dumps(trust))
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["sts:AssumeRole", "iam:*"], "Resource": "*"}]}
        iam.put_user_policy(UserName=req["user"], PolicyName="sandbox",
                            PolicyDocument=json.dumps(policy))
        out = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    elif op == "create_role":
        iam = client("iam", req["key"], req["secret"])
        role = iam.create_role(RoleName=req["role"], AssumeRolePolicyDocument=json.dumps(trust))
        out = {"arn": role["Role"]["Arn"]}
    elif op == "assume_role":
        sts = client("sts", req["key"], req["secret"])
        c = sts.assume_role(RoleArn="arn:aws:iam::%s:role/%s" % (acct, req["role"]),
                            RoleSessionName=req["session"])["Credentials"]
        out = {"access_key_id": c["AccessKeyId"], "secret_access_key": c["SecretAccessKey"],
               "session_token": c["SessionToken"]}
    else:
        raise ValueError("unknown op " + op)
except Exception as e:
    sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
    sys.exit(1)
print(json.dumps(out))
"#;

impl Moto {
    /// Starts moto_server on a free loopback port, waits until it answers and bootstraps the IAM
    /// user, its access key, [`DEFAULT_ROLE`] and the user's policy.
    ///
    /// # Errors
    /// [`SandboxError::MotoMissing`] when moto_server is not installed, [`SandboxError::MotoNotReady`]
    /// (with the log path and its tail) when it exits or stays silent, [`SandboxError::Moto`] when
    /// the bootstrap calls fail.
    pub async fn start() -> Result<Moto, SandboxError> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::launch().await {
                Ok((child, port, log)) => {
                    let mut moto = Moto {
                        child,
                        port,
                        log,
                        user: StaticCreds {
                            access_key_id: String::new(),
                            secret_access_key: String::new(),
                            session_token: None,
                        },
                    };
                    let out = moto.helper("bootstrap", serde_json::json!({})).await?;
                    moto.user = StaticCreds {
                        access_key_id: field(&out, "access_key_id", "bootstrap")?,
                        secret_access_key: field(&out, "secret_access_key", "bootstrap")?,
                        session_token: None,
                    };
                    return Ok(moto);
                }
                Err(LaunchError::PortTaken(e)) => last_error = Some(e),
                Err(LaunchError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(SandboxError::MotoMissing))
    }

    async fn launch() -> Result<(Reaped, u16, PathBuf), LaunchError> {
        let port = free_port().map_err(LaunchError::Fatal)?;
        let log =
            std::env::temp_dir().join(format!("sandbox-moto-{}-{port}.log", uuid::Uuid::new_v4()));
        let out = std::fs::File::create(&log).map_err(|e| {
            LaunchError::Fatal(SandboxError::io(format!("creating {}", log.display()), e))
        })?;
        let err = out
            .try_clone()
            .map_err(|e| LaunchError::Fatal(SandboxError::io("duplicating the log handle", e)))?;
        let mut command = std::process::Command::new("moto_server");
        scrub_aws_env_std(&mut command);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let mut child = match command.spawn() {
            Ok(child) => Reaped(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&log);
                return Err(LaunchError::Fatal(SandboxError::MotoMissing));
            }
            Err(source) => {
                return Err(LaunchError::Fatal(SandboxError::Spawn {
                    program: "moto_server".into(),
                    source,
                }));
            }
        };
        let url = format!("http://127.0.0.1:{port}/moto-api/");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                let tail = tail(&log);
                let error = SandboxError::MotoNotReady {
                    reason: format!("moto_server exited with {status}"),
                    log,
                    tail: tail.clone(),
                };
                return Err(if tail.contains("Address already in use") {
                    LaunchError::PortTaken(error)
                } else {
                    LaunchError::Fatal(error)
                });
            }
            if let Ok(response) = send(Method::GET, &url, &[], Vec::new()).await
                && response.status == StatusCode::OK
            {
                return Ok((child, port, log));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LaunchError::Fatal(SandboxError::MotoNotReady {
                    reason: format!("no answer on port {port} within {READY_TIMEOUT:?}"),
                    tail: tail(&log),
                    log,
                }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto_server's process id (tests that simulate STS going away can signal it).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The account every ARN is in.
    pub fn account_id(&self) -> &str {
        ACCOUNT_ID
    }

    /// The bootstrapped IAM user's permanent keys.
    pub fn user_creds(&self) -> &StaticCreds {
        &self.user
    }

    /// The file holding moto_server's output (request log and tracebacks).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// Calls AssumeRole, signed with the user's keys, and returns the role session's `ASIA…`
    /// credentials. GetCallerIdentity with them answers
    /// `arn:aws:sts::123456789012:assumed-role/<role>/<session>`.
    ///
    /// # Errors
    /// [`SandboxError::Moto`] with boto3's message.
    pub async fn assume_role(
        &self,
        role: &str,
        session: &str,
    ) -> Result<StaticCreds, SandboxError> {
        let out = self
            .helper(
                "assume_role",
                serde_json::json!({
                    "key": self.user.access_key_id,
                    "secret": self.user.secret_access_key,
                    "role": role,
                    "session": session,
                }),
            )
            .await?;
        Ok(StaticCreds {
            access_key_id: field(&out, "access_key_id", "assume_role")?,
            secret_access_key: field(&out, "secret_access_key", "assume_role")?,
            session_token: Some(field(&out, "session_token", "assume_role")?),
        })
    }

    /// Creates another role with the same trust policy as [`DEFAULT_ROLE`]; returns its ARN.
    ///
    /// # Errors
    /// [`SandboxError::Moto`] with boto3's message (for example when the role exists).
    pub async fn create_role(&self, name: &str) -> Result<String, SandboxError> {
        let out = self
            .helper(
                "create_role",
                serde_json::json!({
                    "key": self.user.access_key_id,
                    "secret": self.user.secret_access_key,
                    "role": name,
                }),
            )
            .await?;
        field(&out, "arn", "create_role")
    }

    /// Reopens `n` unauthenticated calls (`POST /moto-api/reset-auth`). Needed before each
    /// AssumeRoleWithWebIdentity: that call is unsigned, and moto answers 500 to unsigned calls
    /// while authentication is on.
    ///
    /// # Errors
    /// [`SandboxError::Http`] or [`SandboxError::Moto`] when moto does not answer 200.
    pub async fn reset_auth(&self, n: u32) -> Result<(), SandboxError> {
        let response = send(
            Method::POST,
            &format!("{}/moto-api/reset-auth", self.url()),
            &[("content-type".into(), "text/plain".into())],
            n.to_string(),
        )
        .await?;
        if response.status != StatusCode::OK {
            return Err(SandboxError::Moto {
                op: "reset_auth".into(),
                detail: format!("HTTP {}: {}", response.status, response.text()),
            });
        }
        Ok(())
    }

    async fn helper(
        &self,
        op: &str,
        mut request: serde_json::Value,
    ) -> Result<serde_json::Value, SandboxError> {
        let fail = |detail: String| SandboxError::Moto {
            op: op.to_owned(),
            detail,
        };
        request["op"] = op.into();
        request["url"] = self.url().into();
        request["account"] = ACCOUNT_ID.into();
        request["user"] = USER_NAME.into();
        request["oidc"] = OIDC_PROVIDER.into();
        if request.get("role").is_none() {
            request["role"] = DEFAULT_ROLE.into();
        }
        let mut command = Command::new("python3");
        scrub_aws_env(&mut command);
        command
            .args(["-c", HELPER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
            program: "python3".into(),
            source,
        })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| fail("no stdin pipe".into()))?;
        stdin
            .write_all(request.to_string().as_bytes())
            .await
            .map_err(|e| fail(format!("writing the request: {e}")))?;
        drop(stdin);
        let output = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                fail(format!(
                    "boto3 helper did not finish within {HELPER_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| fail(e.to_string()))?;
        if !output.status.success() {
            return Err(fail(format!(
                "{} (moto log: {})",
                String::from_utf8_lossy(&output.stderr).trim(),
                self.log.display()
            )));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|e| fail(format!("unreadable helper output: {e}")))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // The process itself goes with the `child` field.
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A std (not tokio) child killed *and reaped* on drop, synchronously: no moto_server, and no
/// zombie, outlives the test that started it, even when that test's future is cancelled while
/// waiting for readiness.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // After SIGKILL the wait returns at once.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

enum LaunchError {
    PortTaken(SandboxError),
    Fatal(SandboxError),
}

/// The process environment may carry real AWS settings (a developer's shell, a CI runner on EC2);
/// none of them may leak into moto or boto3.
fn scrub_aws_env(command: &mut Command) {
    scrub_aws_env_std(command.as_std_mut());
}

fn scrub_aws_env_std(command: &mut std::process::Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    command
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

fn free_port() -> Result<u16, SandboxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| SandboxError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| SandboxError::io("finding a free port", e))
}

fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

fn field(value: &serde_json::Value, name: &str, op: &str) -> Result<String, SandboxError> {
    value
        .get(name)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| SandboxError::Moto {
            op: op.to_owned(),
            detail: format!("the helper's answer has no {name}"),
        })
}

//! Shared helpers for the identity tests.
//!
//! aws-config's container and web-identity providers read some variables from the process
//! environment itself (there is no public way to inject an environment into them), so the tests
//! of those sources run the real resolution in a child copy of the test binary whose process
//! environment is exactly the scenario's. The child is an `#[ignore]`d test calling
//! [`child_main`]; the parent calls [`run_child`] and gets the outcome back as JSON on stdout.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use datadog_delegated_auth::aws::{AwsEnv, AwsOptions, Identity, build_proof};

/// The org every test proof is bound to.
pub const ORG: &str = "11111111-2222-3333-4444-555555555555";
/// The user agent in test proofs.
pub const USER_AGENT: &str = "datadog-delegated-auth/test";
/// Marker of the child's result line.
const RESULT_MARKER: &str = "DDA_CHILD_RESULT ";
/// Variable telling the child test it was started by a parent.
const CHILD_FLAG: &str = "DDA_IDENTITY_CHILD";
/// Variable carrying `ec2_metadata_timeout` in ms to the child.
const CHILD_TIMEOUT_MS: &str = "DDA_IDENTITY_CHILD_TIMEOUT_MS";
/// How long a child may run: it starts a runtime, resolves once and signs; a minute is only
/// reached when something hangs.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// What a child (or an in-process resolution) produced.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub kind: String,
    pub source: Option<String>,
    pub reason: Option<String>,
    pub region: Option<String>,
    pub warnings: Vec<String>,
    pub proof: Option<String>,
    pub error: Option<String>,
    pub elapsed_ms: u128,
}

impl std::fmt::Debug for Outcome {
    // The proof is a bearer credential (even a test one): keep it out of assertion messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("reason", &self.reason)
            .field("region", &self.region)
            .field("warnings", &self.warnings)
            .field("proof", &self.proof.as_ref().map(|_| "<present>"))
            .field("error", &self.error)
            .field("elapsed_ms", &self.elapsed_ms)
            .finish()
    }
}

impl Outcome {
    /// The proof, or a panic showing the error.
    pub fn proof(&self) -> &str {
        match &self.proof {
            Some(proof) => proof,
            None => panic!(
                "no proof: {:?} (detection: {} {:?})",
                self.error, self.kind, self.reason
            ),
        }
    }

    /// The error, or a panic when the resolution succeeded.
    pub fn error(&self) -> &str {
        self.error
            .as_deref()
            .unwrap_or_else(|| panic!("expected an error, got kind {} and a proof", self.kind))
    }
}

/// Options the tests use: a generous IMDS timeout for a loaded machine unless a test needs less.
pub fn options(ec2_metadata_timeout: Duration) -> AwsOptions {
    AwsOptions {
        ec2_metadata_timeout,
        ..AwsOptions::default()
    }
}

/// Detects, resolves, finds the region and signs a proof, like the daemon's refresh does.
pub async fn resolve(identity: &Identity) -> Outcome {
    let started = std::time::Instant::now();
    let detection = identity.detect().await;
    let region = identity.region(None).await;
    let (proof, error) = match identity.credentials().await {
        Ok(creds) => match build_proof(
            &creds,
            ORG,
            region.as_deref(),
            SystemTime::now(),
            USER_AGENT,
        ) {
            Ok(proof) => (Some(proof.expose().to_owned()), None),
            Err(e) => (None, Some(e.to_string())),
        },
        Err(e) => (None, Some(e.to_string())),
    };
    Outcome {
        kind: detection.kind.to_string(),
        source: detection.source.map(|s| s.to_string()),
        reason: detection.reason,
        region,
        warnings: identity.warnings().to_vec(),
        proof,
        error,
        elapsed_ms: started.elapsed().as_millis(),
    }
}

/// The child half: resolves with the process environment and prints the outcome.
pub async fn child_main() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        println!("not started by a parent test; nothing to do");
        return;
    }
    let timeout_ms = std::env::var(CHILD_TIMEOUT_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let identity = Identity::new(
        options(Duration::from_millis(timeout_ms)),
        AwsEnv::from_process(),
    );
    let outcome = resolve(&identity).await;
    // libtest prints "test NAME ... " without a newline first; start a fresh line.
    println!(
        "\n{RESULT_MARKER}{}",
        serde_json::to_string(&outcome).expect("outcome serialises")
    );
}

/// Runs the `#[ignore]`d test `child_test` of this test binary with exactly `env` (plus the child
/// flag), optionally prefixed by a wrapper command (`ip netns exec NS`), and returns its outcome.
pub async fn run_child(
    child_test: &str,
    env: &[(String, String)],
    timeout: Duration,
    wrapper: &[&str],
) -> Outcome {
    let exe = std::env::current_exe().expect("test binary path");
    let mut args: Vec<String> = wrapper.iter().map(|s| (*s).to_owned()).collect();
    args.push(exe.to_string_lossy().into_owned());
    args.extend(
        [
            "--ignored",
            "--exact",
            child_test,
            "--nocapture",
            "--test-threads=1",
        ]
        .map(str::to_owned),
    );
    let mut command = tokio::process::Command::new(&args[0]);
    command
        .args(&args[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(CHILD_FLAG, "1")
        .env(CHILD_TIMEOUT_MS, timeout.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !wrapper.is_empty() {
        // `ip` itself needs PATH; the child test ignores it.
        command.env("PATH", std::env::var("PATH").unwrap_or_default());
    }
    let output = tokio::time::timeout(CHILD_DEADLINE, command.output())
        .await
        .expect("child finished in time")
        .expect("child ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.find(RESULT_MARKER).map(|i| &l[i + RESULT_MARKER.len()..]))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result (status {}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        });
    serde_json::from_str(line).expect("child result is JSON")
}

/// Environment pairs from string slices.
pub fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The ARN STS reports for a role session in moto's account.
pub fn assumed_role_arn(role: &str, session: &str) -> String {
    format!("arn:aws:sts::123456789012:assumed-role/{role}/{session}")
}

/// Asserts the child produced a proof STS (moto) accepts as a session `session` of moto's
/// default role.
pub async fn assert_proves_role_session(moto_url: &str, outcome: &Outcome, session: &str) {
    assert_verified(
        moto_url,
        outcome.proof(),
        &assumed_role_arn(sandbox::moto::DEFAULT_ROLE, session),
    )
    .await;
}

/// Replays `proof` to moto as Datadog would and asserts STS accepted it as `expected_arn`.
pub async fn assert_verified(moto_url: &str, proof: &str, expected_arn: &str) {
    let replay = sandbox::sts::replay_proof(moto_url, proof)
        .await
        .expect("replay reaches moto");
    assert_eq!(replay.status, 200, "STS refused the proof: {}", replay.body);
    assert_eq!(
        replay.arn().as_deref(),
        Some(expected_arn),
        "{}",
        replay.body
    );
}

//! A local "world" for end-to-end tests: moto (STS with signature checks) and a Datadog API
//! emulator that verifies every proof against it, running on a background runtime so the
//! tests themselves stay synchronous like a person at a shell.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use sandbox::datadog::{DatadogEmulator, DatadogOptions, OrgHandle};
use sandbox::imds::{ImdsEmulator, ImdsOptions};
use sandbox::moto::{Moto, StaticCreds};

use super::{Daemon, base_env};

/// The session name of the role credentials handed out (like an EC2 instance id).
pub const SESSION: &str = "i-0123456789abcdef0";
/// The pattern every test org maps (the seed's example).
pub const PATTERN: &str = "arn:aws:sts::123456789012:assumed-role/DatadogAgentRole/*";

/// The local peers of one test.
pub struct World {
    /// Runs the emulators' tasks.
    pub rt: tokio::runtime::Runtime,
    /// STS.
    pub moto: Moto,
    /// Datadog.
    pub dd: DatadogEmulator,
    /// The org the daemon exchanges for, mapped to [`PATTERN`].
    pub org: OrgHandle,
    /// Role session credentials (`assumed-role/DatadogAgentRole/i-0123456789abcdef0`).
    pub creds: StaticCreds,
}

impl World {
    /// Starts moto and one Datadog emulator with one mapped org.
    pub fn start() -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let moto = rt
            .block_on(Moto::start())
            .expect("moto_server (pip install 'moto[server]==5.2.1')");
        let creds = rt
            .block_on(moto.assume_role(sandbox::moto::DEFAULT_ROLE, SESSION))
            .unwrap();
        let dd = rt.block_on(Self::emulator(&moto));
        let org = dd.add_org(&uuid());
        dd.add_intake_mapping(&org.uuid, PATTERN);
        World {
            rt,
            moto,
            dd,
            org,
            creds,
        }
    }

    /// Another Datadog emulator (another site) replaying to the same moto.
    pub fn another_site(&self) -> DatadogEmulator {
        self.rt.block_on(Self::emulator(&self.moto))
    }

    async fn emulator(moto: &Moto) -> DatadogEmulator {
        DatadogEmulator::start(DatadogOptions {
            sts_url: Some(moto.url()),
            ..DatadogOptions::default()
        })
        .await
        .unwrap()
    }

    /// A `datadog.yaml` exchanging for the world's org against its emulator, with the org's
    /// static key as the fallback, followed by `extra`.
    pub fn datadog_yaml(&self, extra: &str) -> String {
        format!(
            "api_key: {}\ndd_url: {}\ndelegated_auth:\n  org_uuid: {}\n{extra}",
            self.org.api_key,
            self.dd.url(),
            self.org.uuid
        )
    }

    /// The daemon's environment with the role credentials as static env variables.
    pub fn static_env(&self) -> HashMap<String, String> {
        let mut env = base_env();
        env.extend(self.creds.env_vars());
        env
    }

    /// An IMDS emulator serving this world's role credentials (unless `opts` names others), and
    /// the daemon environment that points the AWS SDK at it.
    pub fn imds(&self, opts: ImdsOptions) -> (ImdsEmulator, HashMap<String, String>) {
        let opts = ImdsOptions {
            credentials: opts.credentials.or_else(|| Some(self.creds.clone())),
            ..opts
        };
        let imds = self.rt.block_on(ImdsEmulator::start(opts)).unwrap();
        let env = imds_env(&imds);
        (imds, env)
    }

    /// An ECS container-credentials and task-metadata emulator serving this world's role
    /// credentials in `region`, and the daemon environment of a task that uses it.
    pub fn ecs(&self, region: &str) -> (sandbox::ecs::EcsEmulator, HashMap<String, String>) {
        let ecs = self
            .rt
            .block_on(sandbox::ecs::EcsEmulator::start(sandbox::ecs::EcsOptions {
                credentials: Some(self.creds.clone()),
                region: region.into(),
                ..Default::default()
            }))
            .unwrap();
        let mut env = base_env();
        env.insert("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), ecs.full_uri());
        env.insert(
            "ECS_CONTAINER_METADATA_URI_V4".into(),
            ecs.metadata_uri_v4(),
        );
        (ecs, env)
    }

    /// An EKS IRSA identity for `session`: a projected service-account token file (in the
    /// returned directory) and the daemon environment that assumes the world's role with it
    /// through moto's `AssumeRoleWithWebIdentity`.
    pub fn irsa(&self, session: &str) -> (tempfile::TempDir, HashMap<String, String>) {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(
            &token,
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.sig",
        )
        .unwrap();
        // AssumeRoleWithWebIdentity is unsigned; moto only answers unsigned calls it was told
        // to.
        self.rt.block_on(self.moto.reset_auth(4)).unwrap();
        let env = super::irsa_env(&token, session, &self.moto.url());
        (dir, env)
    }

    /// Every secret of this world, for log scans: the role's secret key and token, the org's
    /// static keys, and every managed key and delegated API token issued so far.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = vec![
            self.creds.secret_access_key.clone(),
            self.org.api_key.clone(),
            self.org.app_key.clone(),
        ];
        out.extend(self.creds.session_token.clone());
        out.extend(self.moto.user_creds().session_token.clone());
        out.push(self.moto.user_creds().secret_access_key.clone());
        out.extend(
            self.dd
                .issued_keys(&self.org.uuid)
                .into_iter()
                .map(|k| k.key),
        );
        out.extend(
            self.dd
                .issued_tokens(&self.org.uuid)
                .into_iter()
                .map(|t| t.token),
        );
        out.extend(proof_secrets(&self.dd));
        out
    }

    /// Fails the test if any secret of this world appears whole in the daemon's log.
    pub fn assert_no_secrets_in_log(&self, d: &Daemon, extra: &[String]) {
        let logs = d.logs();
        for s in self.secrets().iter().chain(extra) {
            if s.len() >= 10 {
                assert!(
                    !logs.contains(s.as_str()),
                    "a secret ending in {} leaked into the log",
                    &s[s.len() - 5..]
                );
            }
        }
    }
}

/// A random org UUID.
pub fn uuid() -> String {
    let r = || fastrand::u64(..);
    let hex = format!("{:016x}{:016x}", r(), r());
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Settings for e2e tests: debug logs (to scan them), a short grace and quick retries.
pub const SETTINGS: &str =
    "log: { level: debug }\nrefresh: { startup_grace: 5s, retry_min: 200ms, retry_max: 1s }\n";

/// Waits until `pred` holds, polling the daemon (the test's side only).
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every proof `dd` received, and the parts of each that are secret on their own: the
/// base64 headers field (it carries the signature and the session token), the SigV4 signature
/// hex and the session token. (The body and URL fields are the same for everyone.)
pub fn proof_secrets(dd: &DatadogEmulator) -> Vec<String> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for proof in dd.exchanges().into_iter().filter_map(|r| r.proof) {
        let fields: Vec<&str> = proof.split('|').collect();
        if let Some(headers) = fields.get(1) {
            out.push((*headers).to_owned());
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(headers)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            for (name, values) in decoded
                .as_ref()
                .and_then(|v| v.as_object())
                .into_iter()
                .flatten()
            {
                for value in values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                {
                    if name.eq_ignore_ascii_case("authorization") {
                        if let Some((_, signature)) = value.split_once("Signature=") {
                            out.push(signature.trim().to_owned());
                        }
                    } else if name.eq_ignore_ascii_case("x-amz-security-token") {
                        out.push(value.to_owned());
                    }
                }
            }
        }
        out.push(proof);
    }
    out
}

/// The environment of a daemon whose only credential source is the given IMDS.
fn imds_env(imds: &ImdsEmulator) -> HashMap<String, String> {
    let mut env = base_env();
    env.insert("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), imds.url());
    env
}

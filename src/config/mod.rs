//! Configuration: the Agent's `datadog.yaml` (read, never written) and the daemon's own
//! `delegated-auth.yaml`, merged with the environment and validated into a [`Config`].
//!
//! [`load`] reads the two files (and `fallback_api_key_file`), applies environment overrides,
//! and validates everything, returning every problem at once. It does no other I/O: no name
//! resolution, no network, no credential lookup. `docs/configuration.md` is the reference for
//! every key, default and rule implemented here.
//!
//! Module layout:
//! - `node`: a position-aware YAML tree for the Agent's file (which may hold anything);
//! - `env`: the Agent's `DD_*` environment overrides, grafted into that tree;
//! - `agent`: reads our keys from the tree, one function per section;
//! - `instances`: names the served instances and their fallback chains (product §6);
//! - [`dela`]: the `DELA[...]`/`DELA(...)` directive parser (wire spec §4.4, §10.1);
//! - `settings`: the raw serde structs and validation of `delegated-auth.yaml`, one file per
//!   section (`settings/{socket,access,refresh,sinks,log}.rs`);
//! - `problem`: [`Problem`] and [`ConfigErrors`];
//! - [`proxy`]: the one proxy resolver (wire spec §10.4).
//!
//! What `check-config` prints ([`describe`]) is the CLI layer's: `crate::check_config`.

mod agent;
pub mod dela;
mod env;
mod instances;
mod node;
mod problem;
pub mod proxy;
mod settings;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use agent::{
    DEFAULT_CLOUD_PROVIDERS, DEFAULT_EC2_METADATA_TIMEOUT_MS, DEFAULT_EC2_TOKEN_LIFETIME_SECS,
    DEFAULT_REFRESH_INTERVAL, DEFAULT_REFRESH_MINS, DEFAULT_SITE, MAX_REFRESH_MINS,
};
pub use problem::{ConfigErrors, Problem};
// `check-config`'s summary and command live in the CLI layer; re-exported where they were.
pub use crate::check_config::{check_config_main, describe};
pub use settings::{
    AccessRule, DEFAULT_RETRY_MAX, DEFAULT_RETRY_MIN, DEFAULT_SINK_MODE, DEFAULT_SOCKET_MODE,
    DEFAULT_STARTUP_GRACE, ENV_LOG_LEVEL, ENV_SOCKET, IdRef, LogFormat, LogSettings,
    MAX_TOKEN_NAME, RefreshSettings, Settings, SinkSettings, SocketSettings, TokenApi,
    TokenSettings, is_token_name,
};

use crate::secret::{Secret, redact_userinfo};
use problem::Problems;

/// Default path of the Agent's configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/datadog-agent/datadog.yaml";
/// Default path of the daemon's settings.
pub const DEFAULT_SETTINGS_PATH: &str = "/etc/datadog-agent/delegated-auth.yaml";
/// Default socket path.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/datadog/delegated-auth.sock";
/// Exit code of `check-config` (and of startup) for a bad configuration (`EX_CONFIG`).
pub const EXIT_BAD_CONFIG: u8 = 78;
/// Largest `fallback_api_key_file` we read: it holds one key.
const MAX_FALLBACK_FILE_BYTES: u64 = 4096;

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The Agent's `datadog.yaml` (must exist).
    pub config: PathBuf,
    /// The daemon's `delegated-auth.yaml`.
    pub settings: PathBuf,
    /// Whether a missing settings file is an error (set when `--settings` was given
    /// explicitly); otherwise a missing file means "all defaults".
    pub settings_required: bool,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            config: PathBuf::from(DEFAULT_CONFIG_PATH),
            settings: PathBuf::from(DEFAULT_SETTINGS_PATH),
            settings_required: false,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// What was read from `datadog.yaml` (and its environment overrides).
    pub agent: AgentConfig,
    /// The daemon's settings.
    pub settings: Settings,
    /// Every key the daemon serves, in a stable order: `api_key`, then product sections, then
    /// DELA directives in file order.
    pub instances: Vec<InstanceSpec>,
    /// The delegated API tokens of the settings file, resolved against `datadog.yaml`.
    pub tokens: Vec<TokenSpec>,
    /// Problems that do not stop the daemon.
    pub warnings: Vec<Problem>,
    /// The files this configuration was read from.
    pub paths: Paths,
    /// Whether the settings file existed (`false`: defaults were used).
    pub settings_file_present: bool,
}

/// A delegated API token to keep (product §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// Its name (`GET /v1/tokens/{name}`).
    pub name: String,
    /// The org the proof is bound to.
    pub org_uuid: String,
    /// The API base the proof goes to (`<api_url>/api/v2/delegated-token`): the entry's
    /// `api_url`, or `https://api.<site>` for its `site` or `datadog.yaml`'s (with the trailing
    /// dot of the FQDN form while `convert_dd_site_fqdn` is on).
    pub api_url: String,
    /// `delegated_auth.aws.region`: tokens use the same identity as the keys.
    pub region: Option<String>,
    /// `refresh_before`, when set.
    pub refresh_before: Option<Duration>,
}

impl TokenSpec {
    /// Resolves a `tokens` entry against the Agent's configuration.
    fn resolve(t: &TokenSettings, agent: &AgentConfig) -> TokenSpec {
        // `https://api.<site>`: the Agent's rule for a well-known site (with the FQDN dot while
        // `convert_dd_site_fqdn` is on), and the plain form for any other domain.
        let site_base = |site: &str| {
            let site = site.trim_end_matches('.');
            if !crate::exchange::api_base(site).matched {
                return format!("https://api.{site}");
            }
            let dot = if agent.convert_dd_site_fqdn { "." } else { "" };
            crate::exchange::api_base(&format!("{site}{dot}")).url
        };
        let api_url = match &t.api {
            TokenApi::Url(url) => url.clone(),
            TokenApi::Site(site) => site_base(site),
            TokenApi::AgentSite => site_base(&agent.site),
        };
        TokenSpec {
            name: t.name.clone(),
            org_uuid: t.org_uuid.clone(),
            api_url,
            region: agent.aws_region.clone(),
            refresh_before: t.refresh_before,
        }
    }
}

impl Config {
    /// The token named `name`.
    pub fn token(&self, name: &str) -> Option<&TokenSpec> {
        self.tokens.iter().find(|t| t.name == name)
    }

    /// The instance named `name`, or whose old name (alias) is `name`.
    pub fn instance(&self, name: &str) -> Option<&InstanceSpec> {
        self.instances.iter().find(|i| i.name == name).or_else(|| {
            self.instances
                .iter()
                .find(|i| i.aliases.iter().any(|a| a == name))
        })
    }
}

/// How the cloud provider is chosen (`delegated_auth.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Not set: detect the environment.
    Auto,
    /// `aws`: skip detection, resolve AWS credentials directly.
    Aws,
}

/// The Agent keys the daemon uses (product §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `site`, trimmed (default `datadoghq.com`).
    pub site: String,
    /// `dd_url`, when set and non-empty.
    pub dd_url: Option<String>,
    /// `dd_url` if set, else `https://app.<site>.` for a well-known Datadog site while
    /// `convert_dd_site_fqdn` is on (the newest Agent's FQDN form, wire spec §10.3), else
    /// `https://app.<site>`: the exchange target of non-DELA instances, and the base of the
    /// mapping API and `doctor`.
    pub infra_endpoint: String,
    /// `convert_dd_site_fqdn.enabled` (default true).
    pub convert_dd_site_fqdn: bool,
    /// `proxy.*` as configured: the file, with `DD_PROXY_*` overrides.
    pub proxy: ProxyConfig,
    /// The proxies in effect once the standard variables (`HTTPS_PROXY`, …) are applied with the
    /// Agent's precedence ([`proxy::resolve`]): what `check-config` and `status` show.
    pub proxy_in_effect: proxy::ProxyInEffect,
    /// `skip_ssl_validation` (honoured, with a warning).
    pub skip_ssl_validation: bool,
    /// `cloud_provider_metadata`, lowercased (default: the Agent's list, which includes `aws`).
    pub cloud_provider_metadata: Vec<String>,
    /// `ec2_metadata_timeout` (ms in the file; default 300 ms).
    pub ec2_metadata_timeout: Duration,
    /// `ec2_prefer_imdsv2` (default false).
    pub ec2_prefer_imdsv2: bool,
    /// `ec2_metadata_token_lifetime` (seconds in the file; default 21600 s).
    pub ec2_metadata_token_lifetime: Duration,
    /// `delegated_auth.provider`.
    pub provider: Provider,
    /// `delegated_auth.aws.region`.
    pub aws_region: Option<String>,
}

impl AgentConfig {
    /// Whether `cloud_provider_metadata` allows talking to AWS metadata endpoints.
    pub fn aws_metadata_enabled(&self) -> bool {
        self.cloud_provider_metadata.iter().any(|p| p == "aws")
    }
}

/// `proxy.*`. URLs may hold credentials: `Debug` hides them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy for `http://` requests.
    pub http: Option<String>,
    /// Proxy for `https://` requests.
    pub https: Option<String>,
    /// Hosts that bypass the proxy.
    pub no_proxy: Vec<String>,
    /// The `DD_PROXY_HTTP` variable when it set `http` (it then beats `HTTP_PROXY`).
    pub http_var: Option<String>,
    /// The `DD_PROXY_HTTPS` variable when it set `https`.
    pub https_var: Option<String>,
    /// The `DD_PROXY_NO_PROXY` variable when it set `no_proxy`.
    pub no_proxy_var: Option<String>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("http", &self.http.as_deref().map(redact_userinfo))
            .field("https", &self.https.as_deref().map(redact_userinfo))
            .field("no_proxy", &self.no_proxy)
            .field("http_var", &self.http_var)
            .field("https_var", &self.https_var)
            .field("no_proxy_var", &self.no_proxy_var)
            .finish()
    }
}

/// One served key (product §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// The Agent's config key for this key: `api_key`, `logs_config.api_key`, …,
    /// `additional_endpoints[<domain>][<i>]`, `logs_config.additional_endpoints[<i>]`.
    pub name: String,
    /// How to get a managed key; `None` serves the static fallback only.
    pub delegated: Option<DelegatedSpec>,
    /// The static key served while no managed key can be had.
    pub fallback: Option<Secret>,
    /// Where the fallback came from: `logs_config.api_key`, `api_key`,
    /// `fallback_api_key_file` or `DELA fallback=` (with ` (env DD_…)` when from the
    /// environment).
    pub fallback_origin: Option<String>,
    /// Notes for `check-config`, e.g. that a key slot holds a secret handle.
    pub notes: Vec<String>,
    /// For a DELA instance: the form its directive was written in.
    pub directive_form: Option<dela::Form>,
    /// Older names of this instance that still work, for one release (socket paths,
    /// `secret-helper` handles, `access` rules, `sinks`): a DELA instance was named without the
    /// Agent's trailing `[<org>]` before (product §6).
    pub aliases: Vec<String>,
    /// Set when this entry is inert (wire spec §10.2): a bad directive, an endpoint without a
    /// domain or host, or a directive on the TCP logs transport. The instance is shown in state
    /// `invalid` with this problem and its fix, and never serves a key.
    pub invalid: Option<Problem>,
}

/// How to obtain an instance's managed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegatedSpec {
    /// The org, as written (validated as a UUID).
    pub org_uuid: String,
    /// The DELA endpoint's domain or host, else `agent.infra_endpoint`.
    pub exchange_target: String,
    /// Whether `exchange_target` came from a DELA endpoint (for the exchange module's log level
    /// on an unrecognised host, wire spec §2.1).
    pub explicit_target: bool,
    /// DELA `region=`, else `delegated_auth.aws.region`; `None` = auto-detect.
    pub region: Option<String>,
    /// Refresh interval (`refresh.interval` when set, else `refresh_interval_mins`).
    pub refresh_interval: Duration,
}

/// The outcome of loading, with warnings kept even when there are errors (what `check-config`
/// shows).
#[derive(Debug)]
pub struct Report {
    /// The configuration, when there is no error outside single entries.
    pub config: Option<Config>,
    /// Problems that stop the daemon.
    pub errors: Vec<Problem>,
    /// Problems of single entries; the config is still usable (their instances are inert).
    pub entry_errors: Vec<Problem>,
    /// Problems that do not stop the daemon.
    pub warnings: Vec<Problem>,
}

/// Reads both files (and `fallback_api_key_file`), applies environment overrides, and validates.
///
/// A problem of one `additional_endpoints` entry does not fail the load (wire spec §10.2): that
/// entry is an inert instance with [`InstanceSpec::invalid`] set. `check-config` still fails.
///
/// # Errors
/// Every problem found, at once. Warnings are in [`Config::warnings`] on success.
pub fn load(paths: &Paths, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    load_report(paths, env).into_result()
}

/// Validates already-read file contents exactly as [`load`] validates the files: `datadog_yaml`
/// is the Agent's file, `settings_yaml` the daemon's (`None`: the file does not exist, which is
/// an error only when `paths.settings_required`). `paths` only names the files in problems and
/// in [`Config::paths`]; the one file still read from disk is `fallback_api_key_file`, when
/// the settings name one. [`load`] is this function plus reading the two files.
///
/// # Errors
/// Every problem found, at once. Warnings are in [`Config::warnings`] on success.
pub fn load_from_strings(
    paths: &Paths,
    datadog_yaml: &str,
    settings_yaml: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let settings = settings_yaml.ok_or(ReadError::NotFound);
    validate_texts(paths, Ok(datadog_yaml), settings, env).into_result()
}

impl Report {
    fn into_result(self) -> Result<Config, ConfigErrors> {
        match self.config {
            Some(config) if self.errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(self.errors)),
        }
    }
}

/// The socket clients should talk to, from the settings file alone (`DD_DELEGATED_AUTH_SOCKET`
/// wins), without reading `datadog.yaml`: a client (`get`, `secret-helper`, `exec`) must find the
/// daemon even when the Agent's file has problems, or cannot be read by the client's user. Falls
/// back to the default path when the settings file is absent or unreadable.
pub fn socket_path(paths: &Paths, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let mut problems = Problems::default();
    let raw = read_text(
        &paths.settings,
        settings::MAX_SETTINGS_FILE_BYTES,
        "settings file",
    )
    .ok()
    .and_then(|text| settings::parse(&text, &paths.settings, &mut problems))
    .unwrap_or_default();
    settings::validate(raw, &paths.settings, env, &mut problems)
        .settings
        .socket
        .path
}

/// Why a file could not be read.
#[derive(Clone)]
enum ReadError {
    NotFound,
    Other { message: String, fix: String },
}

/// Reads a UTF-8 file of at most `limit` bytes, refusing anything but a regular file without
/// blocking (see [`crate::files`]).
fn read_text(path: &Path, limit: u64, what: &str) -> Result<String, ReadError> {
    use crate::files::{FileError, read_regular};
    let bytes = read_regular(path, limit).map_err(|err| match err {
        FileError::NotFound => ReadError::NotFound,
        FileError::PermissionDenied => ReadError::Other {
            message: format!("cannot read the {what}: permission denied"),
            fix: "run the daemon as a user that can read this file (e.g. in the dd-agent group), \
                  or fix the file's permissions"
                .to_owned(),
        },
        FileError::NotRegular(kind) => ReadError::Other {
            message: format!("the {what} path is a {kind}, not a regular file"),
            fix: "point it at a regular file (it is read whole; a pipe or device would block \
                  or never end)"
                .to_owned(),
        },
        FileError::TooLarge(_) => ReadError::Other {
            message: format!("the {what} is larger than {limit} bytes"),
            fix: "point the daemon at the right file; a configuration file is far smaller"
                .to_owned(),
        },
        FileError::Io(err) => ReadError::Other {
            message: format!("cannot read the {what}: {err}"),
            fix: "check that the path names a readable file".to_owned(),
        },
    })?;
    String::from_utf8(bytes).map_err(|err| ReadError::Other {
        message: format!(
            "the {what} is not valid UTF-8 (at byte {})",
            err.utf8_error().valid_up_to()
        ),
        fix: "save the file as UTF-8".to_owned(),
    })
}

/// Like [`load`], keeping every error, entry error and warning apart.
pub fn load_report(paths: &Paths, env: &dyn Fn(&str) -> Option<String>) -> Report {
    let settings = read_text(
        &paths.settings,
        settings::MAX_SETTINGS_FILE_BYTES,
        "settings file",
    );
    let agent = read_text(
        &paths.config,
        node::MAX_AGENT_FILE_BYTES,
        "Agent configuration",
    );
    validate_texts(
        paths,
        agent.as_deref().map_err(ReadError::clone),
        settings.as_deref().map_err(ReadError::clone),
        env,
    )
}

/// Validates the two files' contents (or why they could not be read): everything [`load`]
/// does after reading them.
fn validate_texts(
    paths: &Paths,
    agent_text: Result<&str, ReadError>,
    settings_text: Result<&str, ReadError>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Report {
    let mut problems = Problems::default();

    // --- delegated-auth.yaml ---
    let mut settings_ok = true;
    let mut settings_file_present = false;
    let raw_settings = match settings_text {
        Ok(text) => {
            settings_file_present = true;
            let raw = settings::parse(text, &paths.settings, &mut problems);
            settings_ok = raw.is_some();
            raw.unwrap_or_default()
        }
        Err(ReadError::NotFound) if !paths.settings_required => settings::RawSettings::default(),
        Err(ReadError::NotFound) => {
            problems.error(Problem::new(
                &paths.settings,
                "",
                "the settings file does not exist",
                "create it, or drop --settings to use the defaults",
            ));
            settings_ok = false;
            settings::RawSettings::default()
        }
        Err(ReadError::Other { message, fix }) => {
            problems.error(Problem::new(&paths.settings, "", message, fix));
            settings_ok = false;
            settings::RawSettings::default()
        }
    };
    let settings_read = settings::validate(raw_settings, &paths.settings, env, &mut problems);

    // --- fallback_api_key_file ---
    let fallback_file = settings_read
        .settings
        .fallback_api_key_file
        .as_deref()
        .and_then(|path| {
            read_fallback_file(
                path,
                &paths.settings,
                settings_read.fallback_file_line,
                &mut problems,
            )
        });

    // --- datadog.yaml ---
    let root = match agent_text {
        Ok(text) => match node::parse(text) {
            Ok(root) => Some(root),
            Err(err) => {
                let fix = err.fix.unwrap_or_else(|| {
                    "correct the YAML at this line (the Agent cannot read this file either)"
                        .to_owned()
                });
                problems.error(
                    Problem::new(
                        &paths.config,
                        "",
                        format!("invalid YAML: {}", err.message),
                        fix,
                    )
                    .at(err.line),
                );
                None
            }
        },
        Err(ReadError::NotFound) => {
            problems.error(Problem::new(
                &paths.config,
                "",
                "the Agent configuration file does not exist",
                "point --config at the Agent's datadog.yaml; when the Agent is configured \
                 only through DD_* variables, create an empty file and set the same variables \
                 for this daemon",
            ));
            None
        }
        Err(ReadError::Other { message, fix }) => {
            problems.error(Problem::new(&paths.config, "", message, fix));
            None
        }
    };

    let agent_read = root.map(|mut root| {
        match &root.value {
            node::Value::Map(_) => {}
            node::Value::Null => root = node::Node::empty_map(),
            _ => {
                problems.error(
                    Problem::new(
                        &paths.config,
                        "",
                        format!(
                            "the document is {}, not a mapping of keys",
                            root.type_name()
                        ),
                        "the Agent configuration must be a YAML mapping (`key: value` lines)",
                    )
                    .at(root.line),
                );
                root = node::Node::empty_map();
            }
        }
        env::apply(&mut root, env, &paths.config, &mut problems);
        agent::read(&root, &paths.config, fallback_file.as_ref(), &mut problems)
    });

    let Some(agent_read) = agent_read else {
        sort_problems(&mut problems, paths);
        return Report {
            config: None,
            errors: problems.errors,
            entry_errors: problems.entry_errors,
            warnings: problems.warnings,
        };
    };
    let agent::AgentRead {
        mut agent,
        mut instances,
    } = agent_read;
    agent.proxy_in_effect = proxy::resolve(&agent.proxy, env);
    let mut settings = settings_read.settings;
    rename_aliases(
        &instances,
        &mut settings,
        &settings_read.sink_lines,
        &settings_read.access_lines,
        &paths.settings,
        &mut problems,
    );

    if let Some(interval) = settings.refresh.interval {
        for spec in &mut instances {
            if let Some(d) = &mut spec.delegated {
                d.refresh_interval = interval;
            }
        }
    }

    cross_check(
        &instances,
        &settings,
        &settings_read.sink_lines,
        &settings_read.access_lines,
        settings_ok,
        &paths.settings,
        &mut problems,
    );

    if !instances.iter().any(|i| i.delegated.is_some()) && settings.tokens.is_empty() {
        problems.warn(Problem::new(
            &paths.config,
            "delegated_auth.org_uuid",
            "no instance uses delegated auth, so the daemon only serves static keys",
            "set delegated_auth.org_uuid (or a product section's delegated_auth.org_uuid, or a \
             DELA[...] directive in additional_endpoints)",
        ));
    }
    for spec in &instances {
        if spec.delegated.is_none() && spec.fallback.is_none() && spec.invalid.is_none() {
            problems.warn(Problem::new(
                &paths.config,
                spec.name.as_str(),
                "this instance has neither delegated auth nor a static key, so it has nothing \
                 to serve",
                "set api_key, fallback_api_key_file, or delegated_auth.org_uuid",
            ));
        }
    }

    sort_problems(&mut problems, paths);
    Report {
        config: Some(Config {
            tokens: settings
                .tokens
                .iter()
                .map(|t| TokenSpec::resolve(t, &agent))
                .collect(),
            agent,
            settings,
            instances,
            warnings: problems.warnings.clone(),
            paths: paths.clone(),
            settings_file_present,
        }),
        errors: problems.errors,
        entry_errors: problems.entry_errors,
        warnings: problems.warnings,
    }
}

/// Orders problems for reading: the Agent's file first, then the settings file; within a file,
/// whole-file and environment problems first, then by line.
fn sort_problems(problems: &mut Problems, paths: &Paths) {
    let rank = |p: &Problem| (p.file != paths.config, p.line.unwrap_or(0));
    problems.errors.sort_by_key(rank);
    problems.entry_errors.sort_by_key(rank);
    problems.warnings.sort_by_key(rank);
}

/// Sinks and access rules that name an instance by an old name (an alias, product §6) are
/// pointed at its current name, with a warning: the old names work for one release.
fn rename_aliases(
    instances: &[InstanceSpec],
    settings: &mut Settings,
    sink_lines: &[Option<usize>],
    access_lines: &[Vec<Option<usize>>],
    file: &Path,
    problems: &mut Problems,
) {
    let current = |name: &str| -> Option<&str> {
        if instances.iter().any(|i| i.name == name) {
            return None;
        }
        instances
            .iter()
            .find(|i| i.aliases.iter().any(|a| a == name))
            .map(|i| i.name.as_str())
    };
    let warn = |key: String, line: Option<usize>, old: &str, new: &str| {
        Problem::new(
            file,
            key,
            format!(
                "names the instance by its old name; it is now `{new}` (the Agent's name, with \
                 the org), and the old name works until the next release"
            ),
            format!("write `{new}`"),
        )
        .at(line)
        .value(old.to_owned())
    };
    for (i, sink) in settings.sinks.iter_mut().enumerate() {
        if let Some(new) = current(&sink.instance) {
            problems.warn(warn(
                format!("sinks[{i}].instance"),
                sink_lines.get(i).copied().flatten(),
                &sink.instance,
                new,
            ));
            sink.instance = new.to_owned();
        }
    }
    for (i, rule) in settings.access.iter_mut().flatten().enumerate() {
        for (j, name) in rule.instances.iter_mut().enumerate() {
            if let Some(new) = current(name) {
                problems.warn(warn(
                    format!("access[{i}].instances"),
                    access_lines
                        .get(i)
                        .and_then(|l| l.get(j))
                        .copied()
                        .flatten(),
                    name,
                    new,
                ));
                *name = new.to_owned();
            }
        }
    }
}

/// Checks that need both files: sinks and access rules name existing instances.
fn cross_check(
    instances: &[InstanceSpec],
    settings: &Settings,
    sink_lines: &[Option<usize>],
    access_lines: &[Vec<Option<usize>>],
    settings_ok: bool,
    file: &Path,
    problems: &mut Problems,
) {
    if !settings_ok {
        return;
    }
    let names: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
    let known = names.join(", ");
    for (i, sink) in settings.sinks.iter().enumerate() {
        if !sink.instance.is_empty() && !names.contains(&sink.instance.as_str()) {
            problems.error(
                Problem::new(
                    file,
                    format!("sinks[{i}].instance"),
                    "names an instance that the Agent configuration does not define",
                    format!(
                        "use one of: {known} (a product section's instance exists only when its \
                         delegated_auth.org_uuid is set)"
                    ),
                )
                .at(sink_lines.get(i).copied().flatten())
                .value(sink.instance.clone()),
            );
        }
    }
    let token_names: Vec<&str> = settings.tokens.iter().map(|t| t.name.as_str()).collect();
    for (i, rule) in settings.access.iter().flatten().enumerate() {
        for (j, name) in rule.instances.iter().enumerate() {
            let at = access_lines
                .get(i)
                .and_then(|l| l.get(j))
                .copied()
                .flatten();
            if let Some(token) = crate::keystore::token_name(name) {
                if token != "*" && !token_names.contains(&token) {
                    problems.warn(
                        Problem::new(
                            file,
                            format!("access[{i}].instances"),
                            "names a token that the settings file does not define (the rule \
                             applies if it appears later)",
                            if token_names.is_empty() {
                                "define the token under `tokens:`, or remove the name".to_owned()
                            } else {
                                format!(
                                    "use \"token:*\" or one of: {}",
                                    token_names
                                        .iter()
                                        .map(|t| format!("token:{t}"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            },
                        )
                        .at(at)
                        .value(name.clone()),
                    );
                }
                continue;
            }
            if name != "*" && !names.contains(&name.as_str()) {
                problems.warn(
                    Problem::new(
                        file,
                        format!("access[{i}].instances"),
                        "names an instance that the Agent configuration does not define (the \
                         rule applies if it appears later)",
                        format!("use \"*\" or one of: {known} (tokens are named token:<name>)"),
                    )
                    .at(at)
                    .value(name.clone()),
                );
            }
        }
    }
}

/// Reads the fallback key file: one key, trimmed. Problems are reported against the settings
/// file's `fallback_api_key_file` key.
fn read_fallback_file(
    path: &Path,
    settings_file: &Path,
    line: Option<usize>,
    problems: &mut Problems,
) -> Option<agent::FallbackFile> {
    let key = "fallback_api_key_file";
    let shown = path.display().to_string();
    let text = match read_text(path, MAX_FALLBACK_FILE_BYTES, "fallback key file") {
        Ok(text) => text,
        Err(ReadError::NotFound) => {
            problems.error(
                Problem::new(
                    settings_file,
                    key,
                    "the fallback key file does not exist",
                    "create it with the static API key, or remove fallback_api_key_file",
                )
                .at(line)
                .value(shown),
            );
            return None;
        }
        Err(ReadError::Other { message, fix }) => {
            problems.error(
                Problem::new(settings_file, key, message, fix)
                    .at(line)
                    .value(shown),
            );
            return None;
        }
    };
    let mut text = text;
    let secret = Secret::new(text.trim().to_owned());
    // The untrimmed copy held the key too.
    zeroize::Zeroize::zeroize(&mut text);
    let bad = if secret.is_empty() {
        Some("the fallback key file is empty")
    } else if secret.expose().contains(char::is_whitespace) {
        Some("the fallback key file must hold exactly one key (it contains whitespace)")
    } else if agent::is_secret_handle(secret.expose()) || dela::is_directive(secret.expose()) {
        Some("the fallback key file must hold a literal key, not ENC[...], DELA[...] or DELA(...)")
    } else {
        None
    };
    if let Some(message) = bad {
        problems.error(
            Problem::new(
                settings_file,
                key,
                message,
                "write the static API key alone in the file",
            )
            .at(line)
            .value(shown),
        );
        return None;
    }
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o044 != 0
    {
        problems.warn(
            Problem::new(
                settings_file,
                key,
                format!(
                    "the fallback key file is readable by {} (mode {:04o})",
                    if meta.permissions().mode() & 0o004 != 0 {
                        "every user"
                    } else {
                        "its group"
                    },
                    meta.permissions().mode() & 0o777
                ),
                "restrict it: chmod 0600 (the daemon only needs to read it as its owner)",
            )
            .at(line)
            .value(shown),
        );
    }
    Some(agent::FallbackFile { key: secret })
}

#[cfg(test)]
mod tests;

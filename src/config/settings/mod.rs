//! The daemon's own settings file, `delegated-auth.yaml` (product §2.2).
//!
//! This file is ours, so it is strict: unknown keys are errors (serde names the key and lists the
//! valid ones). The raw structs mirror the YAML; values that need checking (durations, modes,
//! ids, paths) are read as strings with their position and validated afterwards, so every such
//! problem is reported at once. A YAML syntax error, an unknown key or a wrong type stops the
//! reading of this file at the first one (serde cannot continue past it); the Agent's file is
//! still checked and its problems reported alongside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::DEFAULT_SOCKET_PATH;
use super::node::{self, yaml_options};
use super::problem::{Problem, Problems};

mod access;
mod log;
mod refresh;
mod sinks;
mod socket;
mod tokens;

pub use tokens::{MAX_TOKEN_NAME, is_token_name};

/// Largest settings file we read (it is a few lines in practice).
pub(crate) const MAX_SETTINGS_FILE_BYTES: u64 = 1024 * 1024;
/// Default socket mode: owner and group may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Default sink file mode: owner writes, group reads.
pub const DEFAULT_SINK_MODE: u32 = 0o640;
/// Default `socket.idle_timeout`: long enough for any real client between requests, short
/// enough that abandoned connections do not pile up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `socket.max_connections`: well above the consumers a busy node has, well below
/// descriptor limits.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Largest `socket.max_connections`.
pub const MAX_MAX_CONNECTIONS: usize = 65536;
/// Default `refresh.retry_min`.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Default `refresh.retry_max`.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// Default `refresh.startup_grace` (product §6).
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(10);
/// Shortest `refresh.interval` (product §2.2).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `refresh.interval`: a week, as for `refresh_interval_mins`.
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest retry wait: a day. Longer would leave a node on its fallback key for days.
pub const MAX_RETRY: Duration = Duration::from_secs(24 * 3600);
/// Longest startup grace: consumers block on key reads for this long at startup.
pub const MAX_STARTUP_GRACE: Duration = Duration::from_secs(10 * 60);
/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// Environment variable overriding `socket.path`.
pub const ENV_SOCKET: &str = "DD_DELEGATED_AUTH_SOCKET";
/// Environment variable overriding `log.level` (shared with the Agent, so Agent spellings such
/// as `WARNING` and `critical` are accepted).
pub const ENV_LOG_LEVEL: &str = "DD_LOG_LEVEL";

// ---------------------------------------------------------------------------------------------
// Validated settings (the public API).

/// The daemon's settings, validated, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where and how the local API listens.
    pub socket: SocketSettings,
    /// Who may read which key; `None` means whoever can open the socket.
    pub access: Option<Vec<AccessRule>>,
    /// A file holding the static fallback key, for when `datadog.yaml`'s `api_key` is a secret
    /// handle (`ENC[...]`) or absent. Its contents are read by [`super::load`].
    pub fallback_api_key_file: Option<PathBuf>,
    /// Refresh schedule and retry policy.
    pub refresh: RefreshSettings,
    /// Files the daemon keeps up to date with a key.
    pub sinks: Vec<SinkSettings>,
    /// Logging.
    pub log: LogSettings,
    /// IMDS options.
    pub imds: ImdsSettings,
    /// Delegated API tokens to keep (product §13), in file order.
    pub tokens: Vec<TokenSettings>,
    /// Line of every user or group reference, by key (`socket.group`, `access[0].uids[1]`,
    /// `sinks[2].group`): names are resolved on the host after validation, and a name that
    /// does not exist there is reported at its line.
    pub id_lines: BTreeMap<String, usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket: SocketSettings {
                path: PathBuf::from(DEFAULT_SOCKET_PATH),
                mode: DEFAULT_SOCKET_MODE,
                group: None,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
            },
            access: None,
            fallback_api_key_file: None,
            refresh: RefreshSettings {
                interval: None,
                retry_min: DEFAULT_RETRY_MIN,
                retry_max: DEFAULT_RETRY_MAX,
                startup_grace: DEFAULT_STARTUP_GRACE,
            },
            sinks: Vec::new(),
            log: LogSettings {
                level: "info".to_owned(),
                format: LogFormat::Text,
            },
            imds: ImdsSettings::default(),
            tokens: Vec::new(),
            id_lines: BTreeMap::new(),
        }
    }
}

/// The Unix socket of the local API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSettings {
    /// Socket path (env `DD_DELEGATED_AUTH_SOCKET` wins over the file).
    pub path: PathBuf,
    /// Permission bits applied before listening (default 0660).
    pub mode: u32,
    /// Group owning the socket; `None` keeps the process's group.
    pub group: Option<IdRef>,
    /// A connection that sends no complete request head for this long is closed (default 60 s).
    pub idle_timeout: Duration,
    /// Connections served at once (default 4096); more wait in the listen backlog.
    pub max_connections: usize,
}

/// EC2 instance metadata options that are ours, not the Agent's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImdsSettings {
    /// Fall back to IMDSv1 when the IMDSv2 token request fails (default false: product §9, no
    /// IMDSv1 unless configured).
    pub v1_fallback: bool,
}

/// A user or group, by number or by name. Names are resolved by the daemon (not here: loading
/// the configuration reads files and nothing else).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdRef {
    /// A numeric uid/gid.
    Id(u32),
    /// A user or group name.
    Name(String),
}

impl std::fmt::Display for IdRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdRef::Id(id) => write!(f, "{id}"),
            IdRef::Name(name) => f.write_str(name),
        }
    }
}

/// One access rule: the listed peers may read the listed instances. A peer matches when its
/// uid is in `uids` or its gid is in `gids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// Instance names, or `*` for all.
    pub instances: Vec<String>,
    /// Allowed users.
    pub uids: Vec<IdRef>,
    /// Allowed groups.
    pub gids: Vec<IdRef>,
}

/// Refresh schedule and retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSettings {
    /// When set, replaces every instance's refresh interval (tests, special cases).
    pub interval: Option<Duration>,
    /// First retry wait after a failure (default 1 s).
    pub retry_min: Duration,
    /// Cap of the retry wait (default 5 min).
    pub retry_max: Duration,
    /// How long key reads wait for the first exchange at startup before the fallback is served
    /// (default 10 s).
    pub startup_grace: Duration,
}

/// A file kept up to date with an instance's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// Instance name.
    pub instance: String,
    /// Absolute file path.
    pub path: PathBuf,
    /// File mode (default 0640; never more open than 0660).
    pub mode: u32,
    /// Group owning the file; `None` keeps the process's group.
    pub group: Option<IdRef>,
}

/// One entry of `tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// What consumers ask for (`GET /v1/tokens/{name}`); access rules say `token:<name>`.
    pub name: String,
    /// The org whose persona mapping the token is for.
    pub org_uuid: String,
    /// Where the API is.
    pub api: TokenApi,
    /// How long before expiry the token is refreshed; `None`: a quarter of its lifetime, at
    /// least 60 s (never more than half of it).
    pub refresh_before: Option<Duration>,
}

/// Where a token's API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenApi {
    /// `site:` of the entry: `https://api.<site>`.
    Site(String),
    /// `api_url:` of the entry, without a trailing slash.
    Url(String),
    /// Neither: `datadog.yaml`'s `site`.
    AgentSite,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// One of `trace`, `debug`, `info`, `warn`, `error`, `off` (normalised from the Agent's
    /// spellings; env `DD_LOG_LEVEL` wins over the file).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Raw serde structs (the file as written).

/// A key that is present, whatever its value (null included): `Some(value)`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    socket: Option<RawSocket>,
    /// `Some(None)`: the key is there with no value (`access:` alone), which is not the same
    /// as no key at all.
    #[serde(default, deserialize_with = "present")]
    access: Option<Option<Spanned<Vec<Spanned<RawAccessRule>>>>>,
    fallback_api_key_file: Option<Spanned<String>>,
    refresh: Option<RawRefresh>,
    sinks: Option<Vec<Spanned<RawSink>>>,
    log: Option<RawLog>,
    imds: Option<RawImds>,
    tokens: Option<Vec<Spanned<RawToken>>>,
}

/// One `tokens` entry as written; the required keys are optional here so that each missing one
/// is reported with the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    name: Option<Spanned<String>>,
    org_uuid: Option<Spanned<String>>,
    site: Option<Spanned<String>>,
    api_url: Option<Spanned<String>>,
    refresh_before: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImds {
    v1_fallback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocket {
    path: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessRule {
    instances: Vec<Spanned<String>>,
    #[serde(default)]
    uids: Vec<Spanned<String>>,
    #[serde(default)]
    gids: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRefresh {
    interval: Option<Spanned<String>>,
    retry_min: Option<Spanned<String>>,
    retry_max: Option<Spanned<String>>,
    startup_grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    instance: Spanned<String>,
    path: Spanned<String>,
    mode: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

/// Parses the file's text. `None` after a problem was reported.
pub(crate) fn parse(text: &str, file: &Path, problems: &mut Problems) -> Option<RawSettings> {
    match serde_saphyr::from_str_with_options::<RawSettings>(text, yaml_options()) {
        Ok(raw) => Some(raw),
        Err(err) => {
            let err = node::yaml_error(err);
            // serde-saphyr's type errors are terse ("expected sequence start"); say it plainly.
            let message = match err.message.as_str() {
                "expected sequence start" => "expected a list here".to_owned(),
                "expected mapping start" => {
                    "expected a mapping (`key: value` lines) here".to_owned()
                }
                "expected string scalar" => "expected a single value here".to_owned(),
                other => other.to_owned(),
            };
            let fix = match err.fix {
                Some(fix) => fix,
                None if message.starts_with("unknown field") => {
                    "remove the key or correct its spelling (see docs/configuration.md)".to_owned()
                }
                None if message.starts_with("missing field") => {
                    "add the missing key (see docs/configuration.md)".to_owned()
                }
                None => "correct the YAML at this line (see docs/configuration.md for the format)"
                    .to_owned(),
            };
            problems.error(Problem::new(file, "", message, fix).at(err.line));
            None
        }
    }
}

/// Validated settings plus the lines needed for checks that need the instance list.
#[derive(Debug, Default)]
pub(crate) struct SettingsRead {
    pub(crate) settings: Settings,
    /// Line of each sink's `instance`.
    pub(crate) sink_lines: Vec<Option<usize>>,
    /// Line of each access rule's instance names.
    pub(crate) access_lines: Vec<Vec<Option<usize>>>,
    /// Line of `fallback_api_key_file`.
    pub(crate) fallback_file_line: Option<usize>,
    /// Line of each valid token entry.
    pub(crate) token_lines: Vec<Option<usize>>,
}

pub(super) fn line<T>(s: &Spanned<T>) -> Option<usize> {
    usize::try_from(s.referenced.line()).ok().filter(|l| *l > 0)
}

pub(super) struct Check<'a> {
    pub(super) file: &'a Path,
    pub(super) problems: &'a mut Problems,
    /// See [`Settings::id_lines`].
    id_lines: BTreeMap<String, usize>,
}

impl Check<'_> {
    pub(super) fn error(
        &mut self,
        key: &str,
        at: Option<usize>,
        value: &str,
        message: String,
        fix: &str,
    ) {
        self.problems.error(
            Problem::new(self.file, key, message, fix)
                .at(at)
                .value(value),
        );
    }

    pub(super) fn warn(&mut self, key: &str, at: Option<usize>, message: &str, fix: &str) {
        self.problems
            .warn(Problem::new(self.file, key, message, fix).at(at));
    }

    pub(super) fn duration(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
    ) -> Option<(Duration, Option<usize>)> {
        let raw = raw.as_ref()?;
        let text = raw.value.trim();
        match humantime::parse_duration(text) {
            Ok(d) => Some((d, line(raw))),
            Err(err) => {
                self.error(
                    key,
                    line(raw),
                    text,
                    format!("is not a duration ({err})"),
                    "write a number with a unit, e.g. 500ms, 30s, 5m, 1h",
                );
                None
            }
        }
    }

    pub(super) fn mode(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        default: u32,
    ) -> (u32, Option<usize>) {
        let Some(raw) = raw.as_ref() else {
            return (default, None);
        };
        match parse_mode(&raw.value) {
            Some(mode) => (mode, line(raw)),
            None => {
                self.error(
                    key,
                    line(raw),
                    raw.value.trim(),
                    "is not an octal permission mode".to_owned(),
                    "write it as a quoted octal string such as \"0660\"",
                );
                (default, line(raw))
            }
        }
    }

    pub(super) fn id(&mut self, raw: &Spanned<String>, key: &str) -> Option<IdRef> {
        match parse_id(&raw.value) {
            Some(id) => {
                if let Some(at) = line(raw) {
                    self.id_lines.insert(key.to_owned(), at);
                }
                Some(id)
            }
            None => {
                self.error(
                    key,
                    line(raw),
                    raw.value.trim(),
                    "is neither a numeric id nor a valid user/group name".to_owned(),
                    "use a number such as 0 or a name such as dd-agent",
                );
                None
            }
        }
    }

    pub(super) fn absolute_path(&mut self, raw: &Spanned<String>, key: &str) -> Option<PathBuf> {
        let text = raw.value.trim();
        let path = PathBuf::from(text);
        if text.is_empty() || !path.is_absolute() || text.contains('\0') {
            self.error(
                key,
                line(raw),
                text,
                "must be an absolute path".to_owned(),
                "write the full path, starting with /",
            );
            return None;
        }
        Some(path)
    }
}

/// Octal mode such as `0660`, `660` or `0o660`; at most 0777 (no setuid, setgid or sticky
/// bits: they mean nothing for a socket or a key file).
pub(crate) fn parse_mode(text: &str) -> Option<u32> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (mode <= 0o777).then_some(mode)
}

/// A uid/gid number, or a user/group name (letters, digits, `_`, `.`, `-`, a trailing `$`; not
/// starting with `-`).
pub(crate) fn parse_id(text: &str) -> Option<IdRef> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u32>().ok().map(IdRef::Id);
    }
    let body = t.strip_suffix('$').unwrap_or(t);
    let valid = !body.is_empty()
        && !body.starts_with('-')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    valid.then(|| IdRef::Name(t.to_owned()))
}

/// Normalises a log level, accepting the Agent's spellings.
pub(crate) fn parse_level(text: &str) -> Option<&'static str> {
    Some(match text.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "err" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// Validates the raw settings (defaults for what is absent) and applies the environment, one
/// section at a time (`socket`, `access`, `refresh`, `sinks`, `log`: a file each); every
/// problem of every section is reported.
pub(crate) fn validate(
    raw: RawSettings,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> SettingsRead {
    let mut c = Check {
        file,
        problems,
        id_lines: BTreeMap::new(),
    };
    let mut out = SettingsRead::default();
    let mode_line = socket::validate(&mut c, raw.socket.unwrap_or_default(), env, &mut out);
    out.settings.imds.v1_fallback = raw
        .imds
        .as_ref()
        .and_then(|i| i.v1_fallback)
        .unwrap_or(false);
    access::validate(&mut c, raw.access.as_ref(), &mut out);
    socket::warn_if_open(&mut c, &out.settings, mode_line);
    // fallback key file (read by the loader)
    if let Some(raw_path) = &raw.fallback_api_key_file {
        out.settings.fallback_api_key_file = c.absolute_path(raw_path, "fallback_api_key_file");
        out.fallback_file_line = line(raw_path);
    }
    refresh::validate(
        &mut c,
        raw.refresh.unwrap_or_default(),
        &mut out.settings.refresh,
    );
    sinks::validate(&mut c, raw.sinks.as_deref().unwrap_or_default(), &mut out);
    tokens::validate(&mut c, raw.tokens.as_deref().unwrap_or_default(), &mut out);
    log::validate(
        &mut c,
        raw.log.unwrap_or_default(),
        env,
        &mut out.settings.log,
    );
    out.settings.id_lines = c.id_lines;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(yaml: &str, env: &[(&str, &str)]) -> (Option<SettingsRead>, Problems) {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |k: &str| map.get(k).cloned();
        let mut problems = Problems::default();
        let file = Path::new("/etc/datadog-agent/delegated-auth.yaml");
        let read =
            parse(yaml, file, &mut problems).map(|raw| validate(raw, file, &lookup, &mut problems));
        (read, problems)
    }

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let (read, problems) = run("", &[]);
        assert!(problems.errors.is_empty() && problems.warnings.is_empty());
        let s = read.unwrap().settings;
        assert_eq!(s, Settings::default());
        assert_eq!(
            s.socket.path,
            PathBuf::from("/var/run/datadog/delegated-auth.sock")
        );
        assert_eq!(s.socket.mode, 0o660);
        assert_eq!(s.refresh.retry_min, Duration::from_secs(1));
        assert_eq!(s.refresh.retry_max, Duration::from_secs(300));
        assert_eq!(s.refresh.startup_grace, Duration::from_secs(10));
        assert_eq!(s.log.level, "info");
        assert_eq!(s.log.format, LogFormat::Text);
    }

    #[test]
    fn the_product_example_parses() {
        let yaml = r#"
socket:
  path: /var/run/datadog/delegated-auth.sock   # env DD_DELEGATED_AUTH_SOCKET
  mode: "0660"
  group: dd-agent                              # name or gid; absent = process gid
access:                                        # optional; absent = whoever can open the socket
  - instances: [api_key, logs_config.api_key]  # or ["*"]
    uids: [0, dd-agent]                        # names or numbers
    gids: []
fallback_api_key_file: /etc/datadog-agent/fallback-api-key   # used when datadog.yaml api_key is ENC[] or absent
refresh:
  interval: 60m          # overrides refresh_interval_mins for every instance (tests, special cases; >= 1s)
  retry_min: 1s
  retry_max: 5m
  startup_grace: 10s
sinks:
  - instance: api_key
    path: /run/datadog/keys/api_key
    mode: "0640"
    group: dd-agent
log: { level: info, format: text }   # or json; env DD_LOG_LEVEL
"#;
        let (read, problems) = run(yaml, &[]);
        assert!(problems.errors.is_empty(), "{:?}", problems.errors);
        let s = read.unwrap().settings;
        assert_eq!(s.socket.group, Some(IdRef::Name("dd-agent".into())));
        let access = s.access.unwrap();
        assert_eq!(access[0].instances, vec!["api_key", "logs_config.api_key"]);
        assert_eq!(
            access[0].uids,
            vec![IdRef::Id(0), IdRef::Name("dd-agent".into())]
        );
        assert!(access[0].gids.is_empty());
        assert_eq!(s.refresh.interval, Some(Duration::from_secs(3600)));
        assert_eq!(s.sinks[0].mode, 0o640);
        assert_eq!(
            s.fallback_api_key_file,
            Some(PathBuf::from("/etc/datadog-agent/fallback-api-key"))
        );
    }

    #[test]
    fn unknown_keys_are_errors_listing_the_valid_ones() {
        let (read, problems) = run("socket:\n  path: /x.sock\n  owner: root\n", &[]);
        assert!(read.is_none());
        let p = &problems.errors[0];
        assert_eq!(p.line, Some(3));
        assert!(p.message.contains("unknown field `owner`"), "{}", p.message);
        assert!(
            p.message.contains("path") && p.message.contains("group"),
            "{}",
            p.message
        );
        let (_, problems) = run("refresh:\n  intervall: 5m\n", &[]);
        assert!(problems.errors[0].message.contains("intervall"));
        let (_, problems) = run("colour: blue\n", &[]);
        assert!(problems.errors[0].message.contains("colour"));
    }

    #[test]
    fn type_errors_read_plainly() {
        for (yaml, line, message) in [
            ("sinks: {}\n", 1, "expected a list here"),
            (
                "access:\n  - instances: api_key\n",
                2,
                "expected a list here",
            ),
            ("socket: 5\n", 1, "expected a mapping"),
            (
                "refresh:\n  interval: [1]\n",
                2,
                "expected a single value here",
            ),
            ("sinks:\n  - path: /x\n", 2, "missing field `instance`"),
        ] {
            let (read, problems) = run(yaml, &[]);
            assert!(read.is_none(), "{yaml}");
            let p = &problems.errors[0];
            assert_eq!(p.line, Some(line), "{yaml}");
            assert!(p.message.starts_with(message), "{yaml}: {}", p.message);
        }
    }

    #[test]
    fn every_value_problem_is_reported_at_once() {
        let yaml = "socket:\n  path: relative.sock\n  mode: \"0999\"\n  group: \"bad name\"\n\
                    refresh:\n  interval: 500ms\n  retry_min: 10m\n  retry_max: 1m\n  startup_grace: forever\n\
                    log:\n  level: loud\n  format: xml\n";
        let (_, problems) = run(yaml, &[]);
        assert_eq!(
            keys(&problems.errors),
            vec![
                "socket.path",
                "socket.mode",
                "socket.group",
                "refresh.interval",
                "refresh.retry_max",
                "refresh.startup_grace",
                "log.level",
                "log.format"
            ]
        );
        let lines: Vec<Option<usize>> = problems.errors.iter().map(|p| p.line).collect();
        assert_eq!(
            lines,
            vec![
                Some(2),
                Some(3),
                Some(4),
                Some(6),
                Some(8),
                Some(9),
                Some(11),
                Some(12)
            ]
        );
    }

    #[test]
    fn retry_min_longer_than_default_max_is_an_error() {
        let (_, problems) = run("refresh:\n  retry_min: 10m\n", &[]);
        assert_eq!(keys(&problems.errors), vec!["refresh.retry_min"]);
        let (_, problems) = run("refresh:\n  retry_min: 0s\n", &[]);
        assert_eq!(keys(&problems.errors), vec!["refresh.retry_min"]);
        let (_, problems) = run("refresh:\n  interval: 60\n", &[]);
        assert!(problems.errors[0].fix.contains("unit"));
    }

    #[test]
    fn env_overrides_socket_and_log_level() {
        let (read, problems) = run(
            "socket:\n  path: /file.sock\nlog:\n  level: debug\n",
            &[
                ("DD_DELEGATED_AUTH_SOCKET", "/env.sock"),
                ("DD_LOG_LEVEL", "WARNING"),
            ],
        );
        assert!(problems.errors.is_empty());
        let s = read.unwrap().settings;
        assert_eq!(s.socket.path, PathBuf::from("/env.sock"));
        assert_eq!(s.log.level, "warn");
        let (_, problems) = run(
            "",
            &[
                ("DD_LOG_LEVEL", "chatty"),
                ("DD_DELEGATED_AUTH_SOCKET", "x"),
            ],
        );
        let envs: Vec<_> = problems.errors.iter().map(|p| p.env.as_deref()).collect();
        assert_eq!(
            envs,
            vec![Some("DD_DELEGATED_AUTH_SOCKET"), Some("DD_LOG_LEVEL")]
        );
    }

    #[test]
    fn socket_path_length_is_bounded() {
        let long = format!("/{}", "a".repeat(120));
        let (_, problems) = run(&format!("socket:\n  path: {long}\n"), &[]);
        assert_eq!(keys(&problems.errors), vec!["socket.path"]);
        assert!(problems.errors[0].message.contains("107"));
    }

    #[test]
    fn modes_ids_and_levels_parse() {
        assert_eq!(parse_mode("0660"), Some(0o660));
        assert_eq!(parse_mode("660"), Some(0o660));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("0777"), Some(0o777));
        assert_eq!(parse_mode("1777"), None);
        assert_eq!(parse_mode("0668"), None);
        assert_eq!(parse_mode(""), None);
        assert_eq!(parse_mode("rw-"), None);
        assert_eq!(parse_id("0"), Some(IdRef::Id(0)));
        assert_eq!(parse_id("dd-agent"), Some(IdRef::Name("dd-agent".into())));
        assert_eq!(parse_id("machine$"), Some(IdRef::Name("machine$".into())));
        assert_eq!(parse_id("99999999999"), None);
        assert_eq!(parse_id("-x"), None);
        assert_eq!(parse_id("a b"), None);
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_level("CRITICAL"), Some("error"));
        assert_eq!(parse_level("Info"), Some("info"));
        assert_eq!(parse_level("verbose"), None);
    }

    #[test]
    fn unquoted_octal_mode_is_read_as_written() {
        let (read, problems) = run("socket:\n  mode: 0600\n", &[]);
        assert!(problems.errors.is_empty());
        assert_eq!(read.unwrap().settings.socket.mode, 0o600);
    }

    #[test]
    fn sink_checks() {
        let yaml = "sinks:\n  - instance: api_key\n    path: /run/k\n    mode: \"0644\"\n\
                    \x20 - instance: api_key\n    path: /run/k\n\
                    \x20 - instance: api_key\n    path: /var/run/datadog/delegated-auth.sock\n";
        let (read, problems) = run(yaml, &[]);
        assert_eq!(
            keys(&problems.errors),
            vec!["sinks[0].mode", "sinks[1].path", "sinks[2].path"]
        );
        assert!(problems.errors[0].message.contains("other users"));
        assert_eq!(read.unwrap().settings.sinks.len(), 1);
    }

    #[test]
    fn access_warnings() {
        let (_, problems) = run("access: []\n", &[]);
        assert_eq!(keys(&problems.warnings), vec!["access"]);
        // Left empty: the same list, the same warning, nobody reads.
        let (s, problems) = run("access:\n", &[]);
        assert_eq!(keys(&problems.warnings), vec!["access"]);
        assert_eq!(s.unwrap().settings.access, Some(Vec::new()));
        let (s, problems) = run("log: { level: info }\n", &[]);
        assert!(problems.warnings.is_empty());
        assert_eq!(s.unwrap().settings.access, None);
        let (_, problems) = run("access:\n  - instances: []\n", &[]);
        assert_eq!(keys(&problems.errors), vec!["access[0].instances"]);
        assert_eq!(keys(&problems.warnings), vec!["access[0]"]);
        let (_, problems) = run("socket:\n  mode: \"0666\"\n", &[]);
        assert_eq!(keys(&problems.warnings), vec!["socket.mode"]);
        let (_, problems) = run("access:\n  - instances: [\"*\"]\n    uids: [0]\n", &[]);
        assert!(problems.errors.is_empty() && problems.warnings.is_empty());
    }
}

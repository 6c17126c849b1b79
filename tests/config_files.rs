//! `load()` over real files in `tests/data/config/`: valid Agent configurations (the seed doc's
//! snippets, a long realistic `datadog.yaml`, the shipped examples) and invalid ones (syntax
//! errors, wrong types, duplicate keys, bad UUIDs, bad DELA directives, bad settings). Each
//! invalid case pins every reported problem: file, key, line and part of the message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use datadog_delegated_auth::config::{
    self, Config, ConfigErrors, IdRef, LogFormat, Paths, Problem, Provider, check_config_main,
    describe, load,
};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/config")
        .join(rel)
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Which file a problem must be reported against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Agent,
    Settings,
}

/// An expected problem: (file, key, line, message fragment).
type Expected = (In, &'static str, Option<usize>, &'static str);

/// The problems of `invalid/bad_uuid.yaml`.
const BAD_UUID: &[Expected] = &[
    (
        In::Agent,
        "delegated_auth.org_uuid",
        Some(3),
        "is not a UUID",
    ),
    (
        In::Agent,
        "logs_config.delegated_auth.org_uuid",
        Some(6),
        "is not a UUID",
    ),
];

/// The problems of `invalid/settings_bad_values.yaml`.
const BAD_SETTINGS: &[Expected] = &[
    (In::Settings, "socket.path", Some(2), "absolute path"),
    (In::Settings, "socket.mode", Some(3), "octal"),
    (In::Settings, "socket.group", Some(4), "user/group name"),
    (
        In::Settings,
        "access[0].uids[1]",
        Some(7),
        "user/group name",
    ),
    (
        In::Settings,
        "refresh.interval",
        Some(9),
        "between 1s and 7 days",
    ),
    (
        In::Settings,
        "refresh.retry_max",
        Some(11),
        "shorter than refresh.retry_min",
    ),
    (
        In::Settings,
        "refresh.startup_grace",
        Some(12),
        "at most 10m",
    ),
    (
        In::Settings,
        "sinks[0].instance",
        Some(14),
        "does not define",
    ),
    (In::Settings, "sinks[0].mode", Some(16), "other users"),
    (In::Settings, "log.level", Some(18), "not a log level"),
    (In::Settings, "log.format", Some(19), "not a log format"),
];

enum Expect {
    Valid {
        instances: &'static [&'static str],
        warnings: &'static [&'static str],
    },
    /// (file, key, line, message fragment), in report order.
    Invalid(&'static [Expected]),
    /// The problems of several files, reported together in this order.
    InvalidAll(&'static [&'static [Expected]]),
    /// Problems of single `additional_endpoints` entries (wire spec §10.2): the daemon loads the
    /// file with those entries inert (`invalid` instances), `check-config` still fails. (key,
    /// line, message fragment), in report order; `serving` are the instances that still run.
    Entries {
        problems: &'static [(&'static str, Option<usize>, &'static str)],
        serving: &'static [&'static str],
    },
}

struct Case {
    agent: &'static str,
    settings: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
    expect: Expect,
}

fn paths_for(case: &Case) -> Paths {
    Paths {
        config: data(case.agent),
        settings: case
            .settings
            .map_or_else(|| data("no-such-settings.yaml"), data),
        settings_required: case.settings.is_some(),
    }
}

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    move |k: &str| map.get(k).map(|v| (*v).to_owned())
}

fn cases() -> Vec<Case> {
    vec![
        // --- valid ---
        Case {
            agent: "valid/seed_global.yaml",
            settings: None,
            env: &[],
            // No static key anywhere: the api_key instance has no fallback.
            expect: Expect::Valid {
                instances: &["api_key"],
                warnings: &[],
            },
        },
        Case {
            agent: "valid/seed_provider_specific.yaml",
            settings: None,
            env: &[],
            expect: Expect::Valid {
                instances: &["api_key"],
                warnings: &[],
            },
        },
        Case {
            agent: "valid/seed_logs_only.yaml",
            settings: None,
            env: &[],
            expect: Expect::Valid {
                instances: &["api_key", "logs_config.api_key"],
                // api_key exists but has neither delegated auth nor a key.
                warnings: &["api_key"],
            },
        },
        Case {
            agent: "valid/seed_two_orgs.yaml",
            settings: None,
            env: &[],
            expect: Expect::Valid {
                instances: &["api_key", "logs_config.api_key"],
                warnings: &[],
            },
        },
        Case {
            agent: "valid/seed_fallback.yaml",
            settings: None,
            env: &[],
            expect: Expect::Valid {
                instances: &["api_key"],
                warnings: &[],
            },
        },
        Case {
            agent: "valid/realistic_agent.yaml",
            settings: None,
            env: &[],
            expect: Expect::Valid {
                instances: &[
                    "api_key",
                    "logs_config.api_key",
                    "remote_configuration.api_key",
                    "additional_endpoints[https://app.datadoghq.eu][1][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]",
                    "logs_config.additional_endpoints[1][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]",
                ],
                warnings: &[],
            },
        },
        Case {
            // Env-only configuration over an empty file, as in a container.
            agent: "valid/empty.yaml",
            settings: None,
            env: &[
                ("DD_API_KEY", "0123456789abcdef0123456789abcdef"),
                ("DD_SITE", "datadoghq.eu"),
                (
                    "DD_DELEGATED_AUTH_ORG_UUID",
                    "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                ),
                (
                    "DD_EVP_PROXY_CONFIG_DELEGATED_AUTH_ORG_UUID",
                    "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                ),
            ],
            expect: Expect::Valid {
                instances: &["api_key", "evp_proxy_config.api_key"],
                warnings: &[],
            },
        },
        // --- invalid Agent files ---
        Case {
            agent: "invalid/seed_placeholders_verbatim.yaml",
            settings: None,
            env: &[],
            expect: Expect::Invalid(&[
                (
                    In::Agent,
                    "delegated_auth.org_uuid",
                    Some(2),
                    "is not a UUID",
                ),
                (
                    In::Agent,
                    "delegated_auth.aws.region",
                    Some(5),
                    "is not an AWS region name",
                ),
            ]),
        },
        Case {
            agent: "invalid/syntax_error.yaml",
            settings: None,
            env: &[],
            expect: Expect::Invalid(&[(In::Agent, "", Some(6), "invalid YAML")]),
        },
        Case {
            agent: "invalid/wrong_types.yaml",
            settings: None,
            env: &[],
            expect: Expect::Invalid(&[
                (
                    In::Agent,
                    "api_key",
                    Some(2),
                    "expected a string, found a list",
                ),
                (
                    In::Agent,
                    "site",
                    Some(4),
                    "expected a string, found a mapping",
                ),
                (
                    In::Agent,
                    "ec2_metadata_timeout",
                    Some(6),
                    "expected a whole number",
                ),
                (
                    In::Agent,
                    "ec2_prefer_imdsv2",
                    Some(7),
                    "expected a boolean",
                ),
                (
                    In::Agent,
                    "cloud_provider_metadata",
                    Some(8),
                    "expected a list, found a mapping",
                ),
                (
                    In::Agent,
                    "delegated_auth.refresh_interval_mins",
                    Some(12),
                    "expected a whole number",
                ),
                (
                    In::Agent,
                    "delegated_auth.aws",
                    Some(13),
                    "expected a mapping, found a string",
                ),
                (
                    In::Agent,
                    "remote_configuration",
                    Some(14),
                    "expected a mapping, found a string",
                ),
            ]),
        },
        Case {
            agent: "invalid/duplicate_keys.yaml",
            settings: None,
            env: &[],
            expect: Expect::Invalid(&[(In::Agent, "", Some(5), "duplicate key `org_uuid`")]),
        },
        Case {
            agent: "invalid/case_duplicate_keys.yaml",
            settings: None,
            env: &[],
            expect: Expect::Invalid(&[(
                In::Agent,
                "logs_config.delegated_auth",
                Some(5),
                "different capitalisation",
            )]),
        },
        Case {
            agent: "invalid/bad_uuid.yaml",
            settings: None,
            env: &[],
            expect: Expect::Invalid(BAD_UUID),
        },
        Case {
            agent: "invalid/bad_dela.yaml",
            settings: None,
            env: &[],
            expect: Expect::Entries {
                serving: &["api_key"],
                problems: &[
                    (
                        "additional_endpoints[https://app.datadoghq.eu][0]",
                        Some(4),
                        "at least an org and a provider",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][1]",
                        Some(5),
                        "at least an org and a provider",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][2]",
                        Some(6),
                        "the org must be",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][3]",
                        Some(7),
                        "the provider must be",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][4]",
                        Some(8),
                        "has no `=`",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][5]",
                        Some(9),
                        "empty or invalid name",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][6]",
                        Some(10),
                        "unknown parameter `colour`",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][7]",
                        Some(11),
                        "is not a UUID",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][8]",
                        Some(12),
                        "unsupported provider `azure`",
                    ),
                    (
                        "logs_config.additional_endpoints[0]",
                        Some(17),
                        "region `eu west 1`",
                    ),
                    ("logs_config.additional_endpoints[1]", Some(19), "no host"),
                ],
            },
        },
        Case {
            agent: "invalid/bad_dela_bracket.yaml",
            settings: None,
            env: &[],
            expect: Expect::Entries {
                serving: &[
                    "api_key",
                    "additional_endpoints[https://app.datadoghq.eu][4][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]",
                ],
                problems: &[
                    (
                        "additional_endpoints[https://app.datadoghq.eu][0]",
                        Some(4),
                        "malformed DELA[...] directive",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][1]",
                        Some(5),
                        "mixes the two forms (opens with `[`, ends with `)`)",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][2]",
                        Some(6),
                        "mixes the two forms (opens with `(`, ends with `]`)",
                    ),
                    (
                        "additional_endpoints[https://app.datadoghq.eu][3]",
                        Some(7),
                        "unknown parameter `colour`",
                    ),
                    ("additional_endpoints[][0]", Some(10), "has no domain"),
                    (
                        "logs_config.additional_endpoints[0]",
                        Some(13),
                        "not supported over TCP",
                    ),
                ],
            },
        },
        Case {
            agent: "invalid/billion_laughs.yaml",
            settings: None,
            env: &[],
            // Reported where the node budget runs out.
            expect: Expect::Invalid(&[(In::Agent, "", Some(7), "too large or too deeply nested")]),
        },
        Case {
            agent: "invalid/not_a_mapping.yaml",
            settings: None,
            env: &[],
            expect: Expect::Invalid(&[(In::Agent, "", Some(1), "not a mapping")]),
        },
        Case {
            // Environment values are validated like file values and name their variable.
            agent: "valid/seed_fallback.yaml",
            settings: None,
            env: &[
                ("DD_DELEGATED_AUTH_ORG_UUID", "my-org"),
                ("DD_EC2_METADATA_TOKEN_LIFETIME", "0"),
            ],
            expect: Expect::Invalid(&[
                (
                    In::Agent,
                    "ec2_metadata_token_lifetime",
                    None,
                    "between 1 and 21600",
                ),
                (In::Agent, "delegated_auth.org_uuid", None, "is not a UUID"),
            ]),
        },
        // --- invalid settings files ---
        Case {
            agent: "valid/seed_fallback.yaml",
            settings: Some("invalid/settings_unknown_key.yaml"),
            env: &[],
            expect: Expect::Invalid(&[(
                In::Settings,
                "",
                Some(6),
                "unknown field `retry_maximum`, expected one of interval, retry_min, retry_max, startup_grace",
            )]),
        },
        Case {
            agent: "valid/seed_fallback.yaml",
            settings: Some("invalid/settings_syntax_error.yaml"),
            env: &[],
            expect: Expect::Invalid(&[(In::Settings, "", Some(3), "")]),
        },
        Case {
            agent: "valid/seed_fallback.yaml",
            settings: Some("invalid/settings_bad_values.yaml"),
            env: &[],
            expect: Expect::Invalid(BAD_SETTINGS),
        },
        Case {
            // Both files broken: all problems of both are reported together.
            agent: "invalid/bad_uuid.yaml",
            settings: Some("invalid/settings_bad_values.yaml"),
            env: &[],
            expect: Expect::InvalidAll(&[BAD_UUID, BAD_SETTINGS]),
        },
    ]
}

/// Secrets present in the fixture files; none may ever appear in a report.
const FIXTURE_SECRETS: &[&str] = &[
    "0123456789abcdef0123456789abcdef",
    "fedcba9876543210fedcba9876543210",
    "abababababababababababababababab",
    "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
    "abcdefSECRET0123",
];

fn assert_no_secret(text: &str, context: &str) {
    for secret in FIXTURE_SECRETS {
        assert!(
            !text.contains(secret),
            "{context}: secret {secret} leaked:\n{text}"
        );
    }
}

#[test]
fn every_fixture_loads_as_expected() {
    for case in cases() {
        let paths = paths_for(&case);
        let env = env_of(case.env);
        let label = format!("{} + {:?}", case.agent, case.settings);
        let result = load(&paths, &env);
        match (&case.expect, result) {
            (
                Expect::Valid {
                    instances,
                    warnings,
                },
                Ok(cfg),
            ) => {
                let names: Vec<&str> = cfg.instances.iter().map(|i| i.name.as_str()).collect();
                assert_eq!(names, *instances, "{label}: instances");
                let keys: Vec<&str> = cfg.warnings.iter().map(|w| w.key.as_str()).collect();
                assert_eq!(keys, *warnings, "{label}: warnings {:#?}", cfg.warnings);
                assert_no_secret(&format!("{cfg:?}"), &label);
                assert_no_secret(&describe(&cfg), &label);
            }
            (Expect::Invalid(expected), Err(errors)) => {
                check_problems(expected, &errors, &paths, &label);
            }
            (Expect::InvalidAll(lists), Err(errors)) => {
                check_problems(&lists.concat(), &errors, &paths, &label);
            }
            (Expect::Entries { problems, serving }, Ok(cfg)) => {
                let running: Vec<&str> = cfg
                    .instances
                    .iter()
                    .filter(|i| i.invalid.is_none())
                    .map(|i| i.name.as_str())
                    .collect();
                assert_eq!(running, *serving, "{label}: instances that run");
                let inert: Vec<(&str, Option<usize>)> = cfg
                    .instances
                    .iter()
                    .filter_map(|i| i.invalid.as_ref().map(|p| (i.name.as_str(), p.line)))
                    .collect();
                let want: Vec<(&str, Option<usize>)> =
                    problems.iter().map(|(k, l, _)| (*k, *l)).collect();
                assert_eq!(inert, want, "{label}: inert entries");
                assert_no_secret(&format!("{cfg:?}"), &label);
                // check-config fails on them, one error line per problem, in order.
                let mut out = Vec::new();
                let mut err = Vec::new();
                let code = check_config_main(&paths, &env, &mut out, &mut err);
                assert_eq!(code, config::EXIT_BAD_CONFIG, "{label}");
                let err = String::from_utf8(err).unwrap();
                let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
                assert_eq!(lines.len(), problems.len(), "{label}:\n{err}");
                for (line, (key, _, fragment)) in lines.iter().zip(problems.iter()) {
                    assert!(
                        line.contains(key) && line.contains(fragment) && line.contains("inert"),
                        "{label}: {line:?} lacks {key:?} / {fragment:?}"
                    );
                }
                assert_no_secret(&err, &label);
                assert_no_secret(&String::from_utf8(out).unwrap(), &label);
            }
            (Expect::Entries { .. }, Err(errors)) => {
                panic!("{label}: expected a usable configuration, got:\n{errors}")
            }
            (Expect::Valid { .. }, Err(errors)) => {
                panic!("{label}: expected valid, got:\n{errors}")
            }
            (Expect::Invalid(_) | Expect::InvalidAll(_), Ok(cfg)) => {
                panic!("{label}: expected problems, got {:#?}", cfg.instances)
            }
        }
    }
}

/// Checks the reported problems against `expected`: file, key and line in order, each message
/// holding its fragment and a fix, one line each, no secret.
fn check_problems(expected: &[Expected], errors: &ConfigErrors, paths: &Paths, label: &str) {
    let got: Vec<(In, &str, Option<usize>)> = errors
        .0
        .iter()
        .map(|p| (which(p, paths), p.key.as_str(), p.line))
        .collect();
    let want: Vec<(In, &str, Option<usize>)> =
        expected.iter().map(|(f, k, l, _)| (*f, *k, *l)).collect();
    assert_eq!(got, want, "{label}: problems\n{errors}");
    for (problem, (_, _, _, fragment)) in errors.0.iter().zip(expected.iter()) {
        assert!(
            problem.message.contains(fragment),
            "{label}: {:?} does not contain {fragment:?}",
            problem.message
        );
        assert!(!problem.fix.is_empty(), "{label}: no fix for {problem}");
    }
    let text = errors.to_string();
    assert_eq!(
        text.lines().count(),
        errors.0.len(),
        "{label}: one line each"
    );
    assert_no_secret(&text, label);
}

fn which(p: &Problem, paths: &Paths) -> In {
    if p.file == paths.config {
        In::Agent
    } else {
        assert_eq!(
            p.file, paths.settings,
            "problem about an unexpected file: {p}"
        );
        In::Settings
    }
}

fn realistic() -> Config {
    let paths = Paths {
        config: data("valid/realistic_agent.yaml"),
        settings: data("no-such-settings.yaml"),
        settings_required: false,
    };
    load(&paths, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn realistic_agent_file_resolves_every_key_we_read() {
    let cfg = realistic();
    let a = &cfg.agent;
    assert_eq!(a.site, "datadoghq.com");
    assert_eq!(a.infra_endpoint, "https://app.datadoghq.com.");
    assert_eq!(a.provider, Provider::Aws);
    assert_eq!(a.aws_region.as_deref(), Some("us-east-1"));
    assert_eq!(a.proxy.https.as_deref(), Some("http://proxy.internal:3128"));
    assert_eq!(
        a.proxy.no_proxy,
        vec!["localhost", "127.0.0.1", "169.254.169.254", ".internal"]
    );
    assert_eq!(a.cloud_provider_metadata, vec!["aws", "gcp", "azure"]);
    assert_eq!(a.ec2_metadata_timeout, Duration::from_millis(500));
    assert!(a.ec2_prefer_imdsv2);
    assert_eq!(a.ec2_metadata_token_lifetime, Duration::from_secs(3600));
    assert!(!a.skip_ssl_validation);

    let api = cfg.instance("api_key").unwrap();
    let d = api.delegated.as_ref().unwrap();
    assert_eq!(d.org_uuid, "3fa85f64-5717-4562-b3fc-2c963f66afa6");
    assert_eq!(d.refresh_interval, Duration::from_secs(3600));
    assert_eq!(api.fallback_origin.as_deref(), Some("api_key"));

    let logs = cfg.instance("logs_config.api_key").unwrap();
    let d = logs.delegated.as_ref().unwrap();
    assert_eq!(d.org_uuid, "11111111-2222-3333-4444-555555555555");
    assert_eq!(d.refresh_interval, Duration::from_secs(30 * 60));
    assert_eq!(d.region.as_deref(), Some("us-east-1"));
    assert_eq!(logs.fallback_origin.as_deref(), Some("logs_config.api_key"));

    let rc = cfg.instance("remote_configuration.api_key").unwrap();
    assert_eq!(rc.fallback_origin.as_deref(), Some("api_key"));

    let eu = cfg
        .instance("additional_endpoints[https://app.datadoghq.eu][1]")
        .unwrap();
    let d = eu.delegated.as_ref().unwrap();
    assert_eq!(d.org_uuid, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
    assert_eq!(d.exchange_target, "https://app.datadoghq.eu");
    assert!(d.explicit_target);
    assert_eq!(d.region.as_deref(), Some("eu-west-1"));
    assert!(eu.fallback.is_none());

    let logs_eu = cfg.instance("logs_config.additional_endpoints[1]").unwrap();
    let d = logs_eu.delegated.as_ref().unwrap();
    assert_eq!(d.exchange_target, "agent-http-intake.logs.datadoghq.eu");
    assert_eq!(d.region.as_deref(), Some("us-east-1"));
    assert_eq!(logs_eu.fallback_origin.as_deref(), Some("DELA fallback="));
    assert_eq!(logs_eu.fallback.as_ref().map(|s| s.suffix()), Some("dcdcd"));
}

#[test]
fn env_overrides_apply_on_top_of_a_real_file() {
    let paths = Paths {
        config: data("valid/realistic_agent.yaml"),
        settings: data("no-such-settings.yaml"),
        settings_required: false,
    };
    let env = env_of(&[
        ("DD_DELEGATED_AUTH_REFRESH_INTERVAL_MINS", "10"),
        ("DD_LOGS_CONFIG_DELEGATED_AUTH_ORG_UUID", ""),
        ("DD_PROXY_HTTPS", "http://other:8080"),
        ("DD_DELEGATED_AUTH_SOCKET", "/tmp/dda.sock"),
    ]);
    let cfg = load(&paths, &env).unwrap();
    // Empty variables are unset: logs keeps its file org.
    assert!(cfg.instance("logs_config.api_key").is_some());
    assert_eq!(cfg.agent.proxy.https.as_deref(), Some("http://other:8080"));
    assert_eq!(cfg.settings.socket.path, PathBuf::from("/tmp/dda.sock"));
    // The global interval feeds the DELA instances; logs keeps its own 30.
    let eu = cfg
        .instance("additional_endpoints[https://app.datadoghq.eu][1]")
        .unwrap();
    assert_eq!(
        eu.delegated.as_ref().unwrap().refresh_interval,
        Duration::from_secs(600)
    );
    let logs = cfg.instance("logs_config.api_key").unwrap();
    assert_eq!(
        logs.delegated.as_ref().unwrap().refresh_interval,
        Duration::from_secs(1800)
    );
}

/// The shipped examples (`config/`) must stay valid. The settings example points at
/// `/etc/datadog-agent/fallback-api-key`; the test rewrites that one path to a temp file.
#[test]
fn shipped_examples_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("fallback-api-key");
    std::fs::write(&key_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let example = std::fs::read_to_string(repo("config/delegated-auth.yaml")).unwrap();
    assert!(example.contains("/etc/datadog-agent/fallback-api-key"));
    let settings = dir.path().join("delegated-auth.yaml");
    std::fs::write(
        &settings,
        example.replace(
            "/etc/datadog-agent/fallback-api-key",
            key_file.to_str().unwrap(),
        ),
    )
    .unwrap();
    let paths = Paths {
        config: repo("config/datadog.yaml"),
        settings,
        settings_required: true,
    };
    let cfg = load(&paths, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.warnings.is_empty(), "{:#?}", cfg.warnings);
    let names: Vec<&str> = cfg.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "api_key",
            "logs_config.api_key",
            "remote_configuration.api_key",
            "evp_proxy_config.api_key",
            "ol_proxy_config.api_key",
            "additional_endpoints[https://app.datadoghq.eu][1][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]",
            "logs_config.additional_endpoints[0][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]",
        ]
    );
    let tokens: Vec<&str> = cfg.tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(tokens, vec!["automation"]);
    // The example's api_key is a secret handle: the fallback comes from the key file.
    let api = cfg.instance("api_key").unwrap();
    assert_eq!(
        api.fallback_origin.as_deref(),
        Some("fallback_api_key_file")
    );
    assert_eq!(
        api.notes,
        vec!["api_key is a secret handle (ENC[...]); it is never used as a key"]
    );
    let text = describe(&cfg);
    assert!(
        text.contains("note:      api_key is a secret handle"),
        "{text}"
    );
    assert!(
        text.contains("  - instances [*] uids [0, dd-agent] gids []"),
        "{text}"
    );
    assert!(text.contains("Sink:                api_key -> /run/datadog/keys/api_key (mode 0640)"));
    let s = &cfg.settings;
    assert_eq!(s.socket.group, Some(IdRef::Name("dd-agent".into())));
    assert_eq!(s.log.format, LogFormat::Text);
    assert_eq!(s.sinks.len(), 1);
    assert!(s.access.as_ref().is_some_and(|a| a.len() == 3));
}

#[test]
fn check_config_main_over_fixture_files() {
    let ok = Paths {
        config: data("valid/realistic_agent.yaml"),
        settings: data("no-such-settings.yaml"),
        settings_required: false,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(check_config_main(&ok, &|_| None, &mut out, &mut err), 0);
    let out = String::from_utf8(out).unwrap();
    assert!(err.is_empty());
    for expected in [
        "realistic_agent.yaml",
        "(not present: defaults)",
        "Cloud provider:      aws",
        "AWS region:          us-east-1",
        "/var/run/datadog/delegated-auth.sock (mode 0660)",
        "  - additional_endpoints[https://app.datadoghq.eu][1][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]\n      directive: DELA(...) (older Agents)\n      alias:     additional_endpoints[https://app.datadoghq.eu][1] (old name; works until the next release)\n",
        "      target:    https://app.datadoghq.eu (endpoint)",
        "      region:    eu-west-1",
        "      fallback:  DELA fallback= (***dcdcd)",
        "Log:                 info (text)",
        "Configuration OK.",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_no_secret(&out, "check-config output");

    let bad = Paths {
        config: data("invalid/bad_dela.yaml"),
        ..ok
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        check_config_main(&bad, &|_| None, &mut out, &mut err),
        config::EXIT_BAD_CONFIG
    );
    // What would run is still described (the entries are inert, wire spec §10.2), but the
    // check fails.
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("Configuration OK."), "{out}");
    assert!(
        out.contains("  - additional_endpoints[https://app.datadoghq.eu][6]\n      directive: DELA(...) (older Agents)\n      state:     invalid (inert): malformed DELA(...) directive: unknown parameter"),
        "{out}"
    );
    assert_no_secret(&out, "check-config output");
    let err = String::from_utf8(err).unwrap();
    assert_eq!(err.lines().filter(|l| l.starts_with("error: ")).count(), 11);
    assert!(err.contains("bad_dela.yaml:10: additional_endpoints[https://app.datadoghq.eu][6]"));
    assert!(err.contains("fallback=***"), "{err}");
    assert_no_secret(&err, "check-config errors");
}

/// The settings file the packages install must be valid as installed, with nothing else on the
/// machine (no fallback key file, no sink directory): a fresh install must start.
#[test]
fn packaged_host_settings_are_valid_as_installed() {
    let paths = Paths {
        config: repo("config/datadog.yaml"),
        settings: repo("packaging/host/delegated-auth.yaml"),
        settings_required: true,
    };
    let cfg = load(&paths, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.settings.socket.path,
        std::path::PathBuf::from("/var/run/datadog/delegated-auth.sock")
    );
    assert!(cfg.settings.fallback_api_key_file.is_none());
    assert!(cfg.settings.sinks.is_empty());
}

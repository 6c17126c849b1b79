//! Unit tests of `load()`: instance naming, per-section defaults, fallback rules, environment
//! overrides, ENC[] handling, DELA instances and every validation error kind.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use super::*;

const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const ORG_LOGS: &str = "11111111-2222-3333-4444-555555555555";
const ORG_EU: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const KEY: &str = "0123456789abcdef0123456789abcdef";
const LOGS_KEY: &str = "fedcba9876543210fedcba9876543210";
const FILE_KEY: &str = "f11ef11ef11ef11ef11ef11ef11ef11e";

struct Fixture {
    _dir: tempfile::TempDir,
    paths: Paths,
    dir: PathBuf,
}

fn fixture(agent: &str, settings: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let config = root.join("datadog.yaml");
    std::fs::write(&config, agent).unwrap();
    let settings_path = root.join("delegated-auth.yaml");
    if let Some(s) = settings {
        std::fs::write(&settings_path, s.replace("$DIR", root.to_str().unwrap())).unwrap();
    }
    Fixture {
        _dir: dir,
        paths: Paths {
            config,
            settings: settings_path,
            settings_required: false,
        },
        dir: root,
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn ok(agent: &str) -> Config {
    let f = fixture(agent, None);
    load(&f.paths, &no_env).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(agent: &str) -> Vec<Problem> {
    let f = fixture(agent, None);
    load(&f.paths, &no_env).expect_err("should fail").0
}

/// Problems of single entries (wire spec §10.2): the load succeeds, with those entries inert,
/// while `check-config` fails. Returns the loaded config and the entries' problems.
fn entry_errors(agent: &str) -> (Config, Vec<Problem>) {
    let f = fixture(agent, None);
    let report = load_report(&f.paths, &no_env);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let cfg = report.config.expect("a usable configuration");
    // Every entry problem is the problem of exactly one invalid instance, and `load` agrees.
    for p in &report.entry_errors {
        assert!(
            cfg.instances
                .iter()
                .any(|i| i.name == p.key && i.invalid.is_some()),
            "{p}"
        );
    }
    assert!(load(&f.paths, &no_env).is_ok());
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = check_config_main(&f.paths, &no_env, &mut out, &mut err);
    assert_eq!(
        code,
        if report.entry_errors.is_empty() {
            0
        } else {
            EXIT_BAD_CONFIG
        }
    );
    (cfg, report.entry_errors)
}

fn invalid_names(cfg: &Config) -> Vec<&str> {
    cfg.instances
        .iter()
        .filter(|i| i.invalid.is_some())
        .map(|i| i.name.as_str())
        .collect()
}

fn names(cfg: &Config) -> Vec<&str> {
    cfg.instances.iter().map(|i| i.name.as_str()).collect()
}

fn warning_keys(cfg: &Config) -> Vec<&str> {
    cfg.warnings.iter().map(|p| p.key.as_str()).collect()
}

fn fallback(spec: &InstanceSpec) -> Option<&str> {
    spec.fallback.as_ref().map(Secret::expose)
}

// ------------------------------------------------------------------------------------------
// Instances, defaults, fallback

#[test]
fn global_delegated_auth_with_fallback() {
    let cfg = ok(&format!(
        "api_key: {KEY}\ndelegated_auth:\n  org_uuid: {ORG}\n"
    ));
    assert_eq!(names(&cfg), vec!["api_key"]);
    let spec = cfg.instance("api_key").unwrap();
    let d = spec.delegated.as_ref().unwrap();
    assert_eq!(d.org_uuid, ORG);
    assert_eq!(d.exchange_target, "https://app.datadoghq.com.");
    assert!(!d.explicit_target);
    assert_eq!(d.region, None);
    assert_eq!(d.refresh_interval, Duration::from_secs(3600));
    assert_eq!(fallback(spec), Some(KEY));
    assert_eq!(spec.fallback_origin.as_deref(), Some("api_key"));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.agent.site, "datadoghq.com");
    assert_eq!(cfg.agent.provider, Provider::Auto);
    assert_eq!(cfg.agent.ec2_metadata_timeout, Duration::from_millis(300));
    assert_eq!(
        cfg.agent.ec2_metadata_token_lifetime,
        Duration::from_secs(21600)
    );
    assert!(!cfg.agent.ec2_prefer_imdsv2);
    assert_eq!(
        cfg.agent.cloud_provider_metadata,
        vec!["aws", "gcp", "azure", "alibaba", "oracle", "ibm"]
    );
    assert_eq!(cfg.settings, Settings::default());
    assert!(!cfg.settings_file_present);
}

#[test]
fn api_key_instance_always_exists() {
    let cfg = ok(&format!("api_key: {KEY}\n"));
    assert_eq!(names(&cfg), vec!["api_key"]);
    let spec = &cfg.instances[0];
    assert!(spec.delegated.is_none());
    assert_eq!(fallback(spec), Some(KEY));
    assert_eq!(warning_keys(&cfg), vec!["delegated_auth.org_uuid"]);

    // Even an empty file yields it (with nothing to serve, which is a warning).
    let cfg = ok("");
    assert_eq!(names(&cfg), vec!["api_key"]);
    assert_eq!(
        warning_keys(&cfg),
        vec!["delegated_auth.org_uuid", "api_key"]
    );
}

#[test]
fn product_sections_get_instances_only_when_enabled() {
    let cfg = ok(&format!(
        "api_key: {KEY}\n\
         delegated_auth:\n  org_uuid: {ORG}\n  refresh_interval_mins: 30\n\
         logs_config:\n  api_key: {LOGS_KEY}\n  delegated_auth:\n    org_uuid: {ORG_LOGS}\n\
         remote_configuration:\n  delegated_auth:\n    org_uuid: {ORG}\n    refresh_interval_mins: 15\n\
         evp_proxy_config:\n  api_key: {LOGS_KEY}\n\
         ol_proxy_config:\n  delegated_auth:\n    org_uuid: \"\"\n"
    ));
    assert_eq!(
        names(&cfg),
        vec![
            "api_key",
            "logs_config.api_key",
            "remote_configuration.api_key"
        ]
    );
    let logs = cfg.instance("logs_config.api_key").unwrap();
    let d = logs.delegated.as_ref().unwrap();
    assert_eq!(d.org_uuid, ORG_LOGS);
    // Inherits the global refresh interval.
    assert_eq!(d.refresh_interval, Duration::from_secs(30 * 60));
    assert_eq!(d.exchange_target, "https://app.datadoghq.com.");
    assert_eq!(fallback(logs), Some(LOGS_KEY));
    assert_eq!(logs.fallback_origin.as_deref(), Some("logs_config.api_key"));

    let rc = cfg.instance("remote_configuration.api_key").unwrap();
    assert_eq!(
        rc.delegated.as_ref().unwrap().refresh_interval,
        Duration::from_secs(15 * 60)
    );
    // No section key: falls back to the global api_key.
    assert_eq!(fallback(rc), Some(KEY));
    assert_eq!(rc.fallback_origin.as_deref(), Some("api_key"));
}

#[test]
fn product_section_alone_still_has_the_static_api_key_instance() {
    let cfg = ok(&format!(
        "api_key: {KEY}\nlogs_config:\n  delegated_auth:\n    org_uuid: {ORG_LOGS}\n"
    ));
    assert_eq!(names(&cfg), vec!["api_key", "logs_config.api_key"]);
    assert!(cfg.instances[0].delegated.is_none());
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn provider_settings_in_product_sections_warn() {
    let cfg = ok(&format!(
        "delegated_auth:\n  org_uuid: {ORG}\n  provider: aws\n  aws:\n    region: eu-west-1\n\
         logs_config:\n  delegated_auth:\n    org_uuid: {ORG_LOGS}\n    provider: aws\n    aws:\n      region: us-east-1\n    enabled: true\n"
    ));
    assert_eq!(
        warning_keys(&cfg),
        vec![
            "logs_config.delegated_auth.provider",
            "logs_config.delegated_auth.aws",
            "logs_config.delegated_auth.enabled",
        ]
    );
    assert_eq!(cfg.warnings[0].line, Some(9));
    // The product instance uses the global region, not the ignored per-product one.
    let logs = cfg.instance("logs_config.api_key").unwrap();
    assert_eq!(
        logs.delegated.as_ref().unwrap().region.as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(cfg.agent.provider, Provider::Aws);
}

#[test]
fn refresh_interval_zero_or_negative_becomes_sixty_with_a_warning() {
    let cfg = ok(&format!(
        "delegated_auth:\n  org_uuid: {ORG}\n  refresh_interval_mins: 0\n\
         logs_config:\n  delegated_auth:\n    org_uuid: {ORG}\n    refresh_interval_mins: -5\n"
    ));
    for spec in &cfg.instances {
        assert_eq!(
            spec.delegated.as_ref().unwrap().refresh_interval,
            Duration::from_secs(3600)
        );
    }
    assert_eq!(
        warning_keys(&cfg),
        vec![
            "delegated_auth.refresh_interval_mins",
            "logs_config.delegated_auth.refresh_interval_mins"
        ]
    );
    assert!(cfg.warnings[0].message.contains("defaulting to 60 minutes"));

    let cfg = ok(&format!(
        "delegated_auth:\n  org_uuid: {ORG}\n  refresh_interval_mins: 999999\n"
    ));
    assert_eq!(
        cfg.instances[0]
            .delegated
            .as_ref()
            .unwrap()
            .refresh_interval,
        Duration::from_secs(10080 * 60)
    );
}

#[test]
fn settings_refresh_interval_overrides_every_instance() {
    let f = fixture(
        &format!(
            "delegated_auth:\n  org_uuid: {ORG}\n  refresh_interval_mins: 30\n\
             logs_config:\n  delegated_auth:\n    org_uuid: {ORG}\n    refresh_interval_mins: 20\n\
             additional_endpoints:\n  \"https://app.datadoghq.eu\": [\"DELA({ORG_EU}, aws)\"]\n"
        ),
        Some("refresh:\n  interval: 2s\n"),
    );
    let cfg = load(&f.paths, &no_env).unwrap();
    assert_eq!(cfg.instances.len(), 3);
    for spec in &cfg.instances {
        assert_eq!(
            spec.delegated.as_ref().unwrap().refresh_interval,
            Duration::from_secs(2)
        );
    }
    assert!(cfg.settings_file_present);
}

#[test]
fn enc_handles_are_never_keys_and_fall_through_to_the_file() {
    let f = fixture(
        &format!(
            "api_key: ENC[api_key]\ndelegated_auth:\n  org_uuid: {ORG}\n\
             logs_config:\n  api_key: ENC[logs]\n  delegated_auth:\n    org_uuid: {ORG}\n"
        ),
        Some("fallback_api_key_file: $DIR/key\n"),
    );
    let key_path = f.dir.join("key");
    std::fs::write(&key_path, format!("  {FILE_KEY}\n")).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = load(&f.paths, &no_env).unwrap_or_else(|e| panic!("{e}"));
    let api = cfg.instance("api_key").unwrap();
    assert_eq!(fallback(api), Some(FILE_KEY));
    assert_eq!(
        api.fallback_origin.as_deref(),
        Some("fallback_api_key_file")
    );
    assert_eq!(
        api.notes,
        vec!["api_key is a secret handle (ENC[...]); it is never used as a key"]
    );
    let logs = cfg.instance("logs_config.api_key").unwrap();
    assert_eq!(fallback(logs), Some(FILE_KEY));
    assert_eq!(logs.notes.len(), 2);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert!(describe(&cfg).contains("secret handle"));

    // Without the file, an ENC[] api_key leaves no fallback at all.
    let cfg = ok(&format!(
        "api_key: ENC[api_key]\ndelegated_auth:\n  org_uuid: {ORG}\n"
    ));
    assert!(cfg.instances[0].fallback.is_none());
}

#[test]
fn empty_keys_are_absent() {
    let cfg = ok(&format!(
        "api_key: \"\"\nlogs_config:\n  api_key: \"  \"\n  delegated_auth:\n    org_uuid: {ORG}\n"
    ));
    assert!(cfg.instances.iter().all(|i| i.fallback.is_none()));
}

#[test]
fn dela_in_a_key_slot_is_not_a_key() {
    let cfg = ok(&format!(
        "api_key: DELA({ORG}, aws)\ndelegated_auth:\n  org_uuid: {ORG}\n"
    ));
    assert!(cfg.instances[0].fallback.is_none());
    assert_eq!(warning_keys(&cfg), vec!["api_key"]);
    assert_eq!(cfg.warnings[0].line, Some(1));
    assert!(cfg.warnings[0].message.contains("DELA(...)"));

    // The newest Agent's form too: never a key, in a key slot or along the fallback chain.
    let cfg = ok(&format!(
        "api_key: \"DELA[{ORG}, aws]\"\nlogs_config:\n  api_key: \"dela[{ORG}, aws]\"\n  delegated_auth:\n    org_uuid: {ORG}\n"
    ));
    assert!(cfg.instances.iter().all(|i| i.fallback.is_none()));
    let directive_warnings: Vec<&Problem> = cfg
        .warnings
        .iter()
        .filter(|w| {
            w.message
                .contains("holds a DELA[...] (newest Agent) directive")
        })
        .collect();
    assert_eq!(directive_warnings.len(), 2, "{:#?}", cfg.warnings);
    let logs = cfg.instance("logs_config.api_key").unwrap();
    assert_eq!(
        logs.notes,
        vec![
            "logs_config.api_key holds a DELA[...] (newest Agent) directive; it is never used as a key",
            "api_key holds a DELA[...] (newest Agent) directive; it is never used as a key",
        ]
    );
    // Nor as the fallback file's content.
    let f = fixture(
        &format!("delegated_auth:\n  org_uuid: {ORG}\n"),
        Some("fallback_api_key_file: $DIR/key\n"),
    );
    std::fs::write(f.dir.join("key"), format!("DELA[{ORG},aws]\n")).unwrap();
    std::fs::set_permissions(f.dir.join("key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let errs = load(&f.paths, &no_env).unwrap_err().0;
    assert!(errs[0].message.contains("DELA[...]"), "{}", errs[0]);
}

#[test]
fn numeric_looking_keys_keep_every_digit() {
    let cfg = ok("api_key: 01234567890123456789012345678901\n");
    assert_eq!(
        fallback(&cfg.instances[0]),
        Some("01234567890123456789012345678901")
    );
}

#[test]
fn fallback_file_rules() {
    // Missing file: error naming the settings key and line.
    let f = fixture(
        &format!("api_key: {KEY}\n"),
        Some("# comment\nfallback_api_key_file: $DIR/missing\n"),
    );
    let errs = load(&f.paths, &no_env).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].key, "fallback_api_key_file");
    assert_eq!(errs[0].line, Some(2));
    assert_eq!(errs[0].file, f.paths.settings);

    // Group/world readable: warning; empty or two words: error.
    let f = fixture("", Some("fallback_api_key_file: $DIR/key\n"));
    let key_path = f.dir.join("key");
    std::fs::write(&key_path, FILE_KEY).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = load(&f.paths, &no_env).unwrap();
    let w: Vec<&Problem> = cfg
        .warnings
        .iter()
        .filter(|p| p.key == "fallback_api_key_file")
        .collect();
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("every user"));
    assert_eq!(fallback(&cfg.instances[0]), Some(FILE_KEY));

    for bad in ["", " \n", "a b", "ENC[x]"] {
        std::fs::write(&key_path, bad).unwrap();
        let errs = load(&f.paths, &no_env).unwrap_err().0;
        assert_eq!(errs[0].key, "fallback_api_key_file", "{bad:?}");
    }
    // A file key is never echoed.
    std::fs::write(&key_path, format!("{FILE_KEY} {FILE_KEY}")).unwrap();
    let errs = load(&f.paths, &no_env).unwrap_err();
    assert!(!errs.to_string().contains(FILE_KEY));
}

#[test]
fn api_key_wins_over_the_fallback_file() {
    let f = fixture(
        &format!("api_key: {KEY}\n"),
        Some("fallback_api_key_file: $DIR/key\n"),
    );
    let key_path = f.dir.join("key");
    std::fs::write(&key_path, FILE_KEY).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = load(&f.paths, &no_env).unwrap();
    assert_eq!(fallback(&cfg.instances[0]), Some(KEY));
}

// ------------------------------------------------------------------------------------------
// Environment

#[test]
fn env_overrides_win_over_the_file() {
    let f = fixture(
        &format!(
            "api_key: {KEY}\nsite: datadoghq.com\ndelegated_auth:\n  org_uuid: {ORG}\n  refresh_interval_mins: 60\n"
        ),
        None,
    );
    let env = env_of(&[
        ("DD_API_KEY", LOGS_KEY),
        ("DD_SITE", "datadoghq.eu"),
        ("DD_DELEGATED_AUTH_ORG_UUID", ORG_EU),
        ("DD_DELEGATED_AUTH_PROVIDER", "AWS"),
        ("DD_DELEGATED_AUTH_AWS_REGION", "eu-central-1"),
        ("DD_DELEGATED_AUTH_REFRESH_INTERVAL_MINS", "15"),
        ("DD_LOGS_CONFIG_DELEGATED_AUTH_ORG_UUID", ORG_LOGS),
        ("DD_LOGS_CONFIG_API_KEY", FILE_KEY),
        ("DD_LOGS_CONFIG_DELEGATED_AUTH_REFRESH_INTERVAL_MINS", "5"),
        ("DD_REMOTE_CONFIGURATION_DELEGATED_AUTH_ORG_UUID", ORG),
        ("DD_EVP_PROXY_CONFIG_DELEGATED_AUTH_ORG_UUID", ORG),
        ("DD_OL_PROXY_CONFIG_DELEGATED_AUTH_ORG_UUID", ORG),
        ("DD_OL_PROXY_CONFIG_API_KEY", "ENC[ol]"),
        ("DD_PROXY_HTTP", "http://proxy:3128"),
        ("DD_PROXY_HTTPS", "http://user:pw@proxy:3129"),
        ("DD_PROXY_NO_PROXY", "localhost 169.254.169.254"),
        ("DD_SKIP_SSL_VALIDATION", "TRUE"),
        ("DD_EC2_METADATA_TIMEOUT", "1000"),
        ("DD_EC2_PREFER_IMDSV2", "1"),
        ("DD_EC2_METADATA_TOKEN_LIFETIME", "600"),
        ("DD_CLOUD_PROVIDER_METADATA", "AWS gcp"),
    ]);
    let cfg = load(&f.paths, &env).unwrap_or_else(|e| panic!("{e}"));
    let a = &cfg.agent;
    assert_eq!(a.site, "datadoghq.eu");
    assert_eq!(a.infra_endpoint, "https://app.datadoghq.eu.");
    assert_eq!(a.provider, Provider::Aws);
    assert_eq!(a.aws_region.as_deref(), Some("eu-central-1"));
    assert_eq!(a.proxy.http.as_deref(), Some("http://proxy:3128"));
    assert_eq!(a.proxy.no_proxy, vec!["localhost", "169.254.169.254"]);
    assert!(a.skip_ssl_validation);
    assert_eq!(a.ec2_metadata_timeout, Duration::from_secs(1));
    assert!(a.ec2_prefer_imdsv2);
    assert_eq!(a.ec2_metadata_token_lifetime, Duration::from_secs(600));
    assert_eq!(a.cloud_provider_metadata, vec!["aws", "gcp"]);
    assert!(a.aws_metadata_enabled());
    assert!(!format!("{a:?}").contains("pw@"));

    assert_eq!(
        names(&cfg),
        vec![
            "api_key",
            "logs_config.api_key",
            "remote_configuration.api_key",
            "evp_proxy_config.api_key",
            "ol_proxy_config.api_key"
        ]
    );
    let api = &cfg.instances[0];
    assert_eq!(api.delegated.as_ref().unwrap().org_uuid, ORG_EU);
    assert_eq!(
        api.delegated.as_ref().unwrap().refresh_interval,
        Duration::from_secs(15 * 60)
    );
    assert_eq!(fallback(api), Some(LOGS_KEY));
    assert_eq!(
        api.fallback_origin.as_deref(),
        Some("api_key (env DD_API_KEY)")
    );
    let logs = cfg.instance("logs_config.api_key").unwrap();
    assert_eq!(logs.delegated.as_ref().unwrap().org_uuid, ORG_LOGS);
    assert_eq!(
        logs.delegated.as_ref().unwrap().refresh_interval,
        Duration::from_secs(5 * 60)
    );
    assert_eq!(fallback(logs), Some(FILE_KEY));
    let ol = cfg.instance("ol_proxy_config.api_key").unwrap();
    assert_eq!(fallback(ol), Some(LOGS_KEY));
    assert_eq!(ol.notes.len(), 1);
    // skip_ssl_validation always warns.
    assert!(warning_keys(&cfg).contains(&"skip_ssl_validation"));
}

#[test]
fn dd_url_sets_the_default_target() {
    let cfg = ok(&format!(
        "site: datadoghq.eu\ndd_url: https://proxy.internal\ndelegated_auth:\n  org_uuid: {ORG}\n"
    ));
    assert_eq!(cfg.agent.dd_url.as_deref(), Some("https://proxy.internal"));
    assert_eq!(
        cfg.instances[0].delegated.as_ref().unwrap().exchange_target,
        "https://proxy.internal"
    );
    let f = fixture(&format!("delegated_auth:\n  org_uuid: {ORG}\n"), None);
    let cfg = load(&f.paths, &env_of(&[("DD_URL", "https://other.internal")])).unwrap();
    assert_eq!(cfg.agent.infra_endpoint, "https://other.internal");
    // An empty dd_url is unset.
    let cfg = ok("dd_url: \"\"\nsite: \" us5.datadoghq.com \"\n");
    assert_eq!(cfg.agent.infra_endpoint, "https://app.us5.datadoghq.com.");
}

#[test]
fn env_values_are_validated_and_named() {
    let f = fixture("", None);
    let env = env_of(&[
        ("DD_EC2_METADATA_TIMEOUT", "fast"),
        ("DD_SKIP_SSL_VALIDATION", "yes"),
        ("DD_DELEGATED_AUTH_ORG_UUID", "not-a-uuid"),
        ("DD_LOGS_CONFIG_ADDITIONAL_ENDPOINTS", "[{"),
    ]);
    let errs = load(&f.paths, &env).unwrap_err().0;
    let envs: Vec<&str> = errs.iter().filter_map(|p| p.env.as_deref()).collect();
    assert_eq!(
        envs,
        vec![
            "DD_LOGS_CONFIG_ADDITIONAL_ENDPOINTS",
            "DD_SKIP_SSL_VALIDATION",
            "DD_EC2_METADATA_TIMEOUT",
            "DD_DELEGATED_AUTH_ORG_UUID"
        ]
    );
    assert!(errs.iter().all(|p| p.line.is_none()));
}

#[test]
fn env_api_key_is_never_echoed() {
    let f = fixture("", None);
    // A list where a key belongs: the error must not include the value.
    let errs = load(
        &f.paths,
        &env_of(&[(
            "DD_ADDITIONAL_ENDPOINTS",
            &format!("{{\"https://x\": {{\"k\": \"{KEY}\"}}}}"),
        )]),
    )
    .unwrap_err();
    assert!(!errs.to_string().contains(KEY));
}

// ------------------------------------------------------------------------------------------
// DELA directives

#[test]
fn dela_map_shape_instances() {
    let cfg = ok(&format!(
        "api_key: {KEY}\ndelegated_auth:\n  aws:\n    region: us-east-1\n  refresh_interval_mins: 20\n\
         additional_endpoints:\n\
         \x20 \"https://app.datadoghq.eu\":\n\
         \x20   - {LOGS_KEY}\n\
         \x20   - \"DELA({ORG_EU}, aws, region=eu-west-1, fallback=abcDEF123_-=)\"\n\
         \x20   - \"dela( {ORG_EU} , AWS )\"\n\
         \x20 \"https://app.us5.datadoghq.com\": [\"ENC[x]\"]\n"
    ));
    assert_eq!(
        names(&cfg),
        vec![
            "api_key",
            "additional_endpoints[https://app.datadoghq.eu][1][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]",
            "additional_endpoints[https://app.datadoghq.eu][2][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]"
        ]
    );
    let one = &cfg.instances[1];
    let d = one.delegated.as_ref().unwrap();
    assert_eq!(d.org_uuid, ORG_EU);
    assert_eq!(d.exchange_target, "https://app.datadoghq.eu");
    assert!(d.explicit_target);
    assert_eq!(d.region.as_deref(), Some("eu-west-1"));
    assert_eq!(d.refresh_interval, Duration::from_secs(20 * 60));
    assert_eq!(fallback(one), Some("abcDEF123_-="));
    assert_eq!(one.fallback_origin.as_deref(), Some("DELA fallback="));
    let two = &cfg.instances[2];
    // No region= : the global region; no fallback= : no fallback (never another org's key).
    assert_eq!(
        two.delegated.as_ref().unwrap().region.as_deref(),
        Some("us-east-1")
    );
    assert!(two.fallback.is_none());
    // Describing never shows the DELA fallback.
    assert!(!describe(&cfg).contains("abcDEF123"));
    assert!(!format!("{cfg:?}").contains("abcDEF123"));
}

#[test]
fn dela_list_shape_instances() {
    let cfg = ok(&format!(
        "logs_config:\n  force_use_http: true\n  additional_endpoints:\n\
         \x20 - api_key: {LOGS_KEY}\n    Host: agent-http-intake.logs.datadoghq.com\n    Port: 443\n\
         \x20 - API_KEY: \"DELA({ORG_EU}, aws)\"\n    Host: agent-http-intake.logs.datadoghq.eu\n    Port: 443\n    is_reliable: true\n\
         \x20 - just-a-string\n\
         \x20 - api_key: \"DELA({ORG}, aws, fallback=k1)\"\n    host: http-intake.logs.us5.datadoghq.com\n"
    ));
    assert_eq!(
        names(&cfg),
        vec![
            "api_key",
            "logs_config.additional_endpoints[1][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]",
            "logs_config.additional_endpoints[3][3fa85f64-5717-4562-b3fc-2c963f66afa6]"
        ]
    );
    let d = cfg.instances[1].delegated.as_ref().unwrap();
    assert_eq!(d.exchange_target, "agent-http-intake.logs.datadoghq.eu");
    assert!(d.explicit_target);
    assert_eq!(fallback(&cfg.instances[2]), Some("k1"));
    assert!(
        !warning_keys(&cfg)
            .iter()
            .any(|k| k.starts_with("logs_config.additional"))
    );
}

#[test]
fn dela_list_shape_over_tcp_is_inert() {
    // The newest Agent refuses directives on the TCP logs transport: every directive entry is
    // an invalid instance, in either form; the rest runs.
    let (cfg, errs) = entry_errors(&format!(
        "api_key: {KEY}\nlogs_config:\n  use_http: false\n  additional_endpoints:\n\
         \x20 - api_key: \"DELA[{ORG_EU}, aws]\"\n    host: intake.datadoghq.eu\n\
         \x20 - api_key: \"DELA({ORG}, aws)\"\n    host: intake.datadoghq.com\n"
    ));
    assert_eq!(
        invalid_names(&cfg),
        vec![
            "logs_config.additional_endpoints[0]",
            "logs_config.additional_endpoints[1]"
        ]
    );
    assert_eq!(fallback(&cfg.instances[0]), Some(KEY));
    assert_eq!(errs.len(), 2);
    assert!(
        errs[0].message.contains("not supported over TCP"),
        "{}",
        errs[0]
    );
    assert!(errs[0].fix.contains("force_use_http"));
    assert_eq!(errs[0].line, Some(5));
    assert_eq!(cfg.instances[1].directive_form, Some(dela::Form::Bracket));
    assert_eq!(cfg.instances[2].directive_form, Some(dela::Form::Paren));
    // Over HTTP both run.
    let cfg = ok(&format!(
        "logs_config:\n  force_use_http: true\n  additional_endpoints:\n\
         \x20 - api_key: \"DELA[{ORG_EU}, aws]\"\n    host: intake.datadoghq.eu\n"
    ));
    assert!(invalid_names(&cfg).is_empty());
    assert!(cfg.instances[1].delegated.is_some());
}

#[test]
fn dela_from_environment_json() {
    let f = fixture("", None);
    let env = env_of(&[
        (
            "DD_ADDITIONAL_ENDPOINTS",
            &format!(r#"{{"https://app.datadoghq.eu": ["DELA({ORG_EU}, aws)"]}}"#),
        ),
        (
            "DD_LOGS_CONFIG_ADDITIONAL_ENDPOINTS",
            &format!(
                r#"[{{"api_key": "DELA({ORG}, aws)", "Host": "intake.example", "Port": 443}}]"#
            ),
        ),
        ("DD_LOGS_CONFIG_USE_HTTP", "true"),
    ]);
    let cfg = load(&f.paths, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        names(&cfg),
        vec![
            "api_key",
            "additional_endpoints[https://app.datadoghq.eu][0][aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee]",
            "logs_config.additional_endpoints[0][3fa85f64-5717-4562-b3fc-2c963f66afa6]"
        ]
    );
}

#[test]
fn bad_directives_make_only_their_entry_inert() {
    let (cfg, errs) = entry_errors(&format!(
        "api_key: {KEY}\nadditional_endpoints:\n\
         \x20 \"https://app.datadoghq.eu\":\n\
         \x20   - \"DELA(org, aws, fallback=secretvalue99)\"\n\
         \x20   - \"DELA({ORG}, gcp)\"\n\
         \x20   - \"DELA({ORG}, aws, region=EU-WEST-1)\"\n\
         \x20   - \"DELA({ORG}, aws, secretvalue99)\"\n\
         \x20 \"\": [\"DELA({ORG}, aws)\"]\n\
         \x20 \"https://x\": \"DELA({ORG}, aws)\"\n\
         \x20 \"https://app.datadoghq.eu/mixed\": [\"DELA[{ORG}, aws)\"]\n\
         \x20 \"https://app.us5.datadoghq.com\": [\"DELA[{ORG}, aws]\"]\n\
         logs_config:\n  force_use_http: true\n  additional_endpoints:\n    - api_key: \"DELA({ORG}, aws)\"\n      port: 443\n"
    ));
    let got: Vec<(&str, Option<usize>)> = errs.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        got,
        vec![
            ("additional_endpoints[https://app.datadoghq.eu][0]", Some(4)),
            ("additional_endpoints[https://app.datadoghq.eu][1]", Some(5)),
            ("additional_endpoints[https://app.datadoghq.eu][2]", Some(6)),
            ("additional_endpoints[https://app.datadoghq.eu][3]", Some(7)),
            ("additional_endpoints[][0]", Some(8)),
            ("additional_endpoints[https://x]", Some(9)),
            (
                "additional_endpoints[https://app.datadoghq.eu/mixed][0]",
                Some(10)
            ),
            ("logs_config.additional_endpoints[0]", Some(15)),
        ]
    );
    // TestMapShapeEntryWithoutADomainRegistersNothing: the blank map key registers nothing that
    // serves (an inert instance only).
    let blank = cfg.instance("additional_endpoints[][0]").unwrap();
    assert!(blank.delegated.is_none() && blank.fallback.is_none() && blank.invalid.is_some());
    // Everything else runs: the static api_key and the good directive.
    assert_eq!(fallback(&cfg.instances[0]), Some(KEY));
    let good = cfg
        .instance("additional_endpoints[https://app.us5.datadoghq.com][0]")
        .unwrap();
    assert!(good.invalid.is_none());
    assert_eq!(good.directive_form, Some(dela::Form::Bracket));
    assert_eq!(invalid_names(&cfg).len(), 8);
    assert!(
        cfg.instances
            .iter()
            .filter(|i| i.invalid.is_some())
            .all(|i| i.delegated.is_none() && i.fallback.is_none())
    );
    assert!(
        errs[6].message.contains("mixes the two forms"),
        "{}",
        errs[6]
    );
    assert!(errs[6].fix.contains("DELA[") && errs[6].fix.contains("DELA("));
    assert!(errs[0].message.contains("not a UUID"));
    assert!(errs[1].message.contains("unsupported provider `gcp`"));
    assert!(errs[2].message.contains("lowercase"));
    assert!(errs[3].message.contains("malformed"));
    let text = ConfigErrors(errs).to_string();
    assert!(!text.contains("secretvalue99"), "{text}");
}

// ------------------------------------------------------------------------------------------
// Validation errors

#[test]
fn bad_org_uuid_names_the_key_and_line() {
    let errs = errors(&format!(
        "delegated_auth:\n  org_uuid: <YOUR_ORG_UUID>\nlogs_config:\n  delegated_auth:\n    org_uuid: 1234\n\
         remote_configuration:\n  delegated_auth:\n    org_uuid: {ORG}\n"
    ));
    let got: Vec<(&str, Option<usize>, Option<&str>)> = errs
        .iter()
        .map(|p| (p.key.as_str(), p.line, p.value.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("delegated_auth.org_uuid", Some(2), Some("<YOUR_ORG_UUID>")),
            ("logs_config.delegated_auth.org_uuid", Some(5), Some("1234")),
        ]
    );
}

#[test]
fn bad_provider_region_and_numbers() {
    let errs = errors(
        "delegated_auth:\n  provider: gcp\n  aws:\n    region: US-EAST-1\n  refresh_interval_mins: soon\n\
         ec2_metadata_timeout: 0\nec2_metadata_token_lifetime: 99999\nskip_ssl_validation: maybe\n\
         site: https://datadoghq.eu\nproxy:\n  https: proxy.internal:3128\n",
    );
    let got: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "delegated_auth.provider",
            "delegated_auth.aws.region",
            "delegated_auth.refresh_interval_mins",
            "ec2_metadata_timeout",
            "ec2_metadata_token_lifetime",
            "skip_ssl_validation",
            "site",
            "proxy.https",
        ]
    );
    assert!(errs.iter().all(|p| !p.fix.is_empty() && p.line.is_some()));
}

#[test]
fn odd_text_never_panics() {
    // Multi-byte characters where ASCII prefixes are checked.
    let errs = errors(
        "proxy:\n  https: ééééééééé\nsite: \"é/é\"\nadditional_endpoints:\n  \"é\": [\"DELA(é, aws)\"]\n",
    );
    let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
    // The directive's problem is its entry's only (wire spec §10.2): not among the errors.
    assert_eq!(keys, vec!["proxy.https", "site"]);
    let (cfg, errs) =
        entry_errors("additional_endpoints:\n  \"é\": [\"DELA[é, aws]\", \"DELA(é]\"]\n");
    assert_eq!(errs.len(), 2);
    assert_eq!(invalid_names(&cfg).len(), 2);
}

#[test]
fn wrong_types_on_our_keys() {
    let errs = errors(&format!(
        "api_key: [{KEY}]\nsite: {{a: b}}\ndelegated_auth: yes\nlogs_config: [1]\n\
         cloud_provider_metadata: {{aws: 1}}\nproxy: http://p\nadditional_endpoints: [a]\n"
    ));
    let got: Vec<(&str, Option<usize>)> = errs.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        got,
        vec![
            ("api_key", Some(1)),
            ("site", Some(2)),
            ("delegated_auth", Some(3)),
            ("logs_config", Some(4)),
            ("cloud_provider_metadata", Some(5)),
            ("proxy", Some(6)),
            ("additional_endpoints", Some(7)),
        ]
    );
    assert!(
        errs[1]
            .message
            .contains("expected a string, found a mapping")
    );
    // The api_key's value is never shown.
    assert!(errs[0].value.is_none());
    assert!(!ConfigErrors(errs).to_string().contains(KEY));
}

#[test]
fn unrelated_keys_of_any_type_are_ignored() {
    let cfg = ok(&format!(
        "api_key: {KEY}\ntags: [a, b]\napm_config:\n  enabled: yes\n  additional_endpoints: {{x: [DELA(bad)]}}\n\
         1: one\n[a, b]: complex\nlogs_config:\n  container_collect_all: true\n  processing_rules: [{{type: x}}]\n"
    ));
    assert_eq!(names(&cfg), vec!["api_key"]);
}

#[test]
fn keys_match_case_insensitively_and_conflicts_are_errors() {
    let cfg = ok(&format!(
        "API_KEY: {KEY}\nDelegated_Auth:\n  Org_UUID: {ORG}\n"
    ));
    assert_eq!(cfg.instances[0].delegated.as_ref().unwrap().org_uuid, ORG);
    assert_eq!(fallback(&cfg.instances[0]), Some(KEY));
    let errs = errors(&format!("api_key: {KEY}\nAPI_KEY: {LOGS_KEY}\n"));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].key, "api_key");
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.contains("capitalisation"));
}

#[test]
fn syntax_errors_and_duplicates_have_lines() {
    let errs = errors("api_key: x\ndelegated_auth:\n  org_uuid: a\n  org_uuid: b\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(4));
    assert!(errs[0].message.contains("duplicate key `org_uuid`"));
    let errs = errors("a: [1, 2\nb: 3\n");
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.starts_with("invalid YAML"));
    let errs = errors("- just\n- a list\n");
    assert!(errs[0].message.contains("not a mapping"));
}

#[test]
fn file_level_errors() {
    let f = fixture("", None);
    let missing = Paths {
        config: f.dir.join("nope.yaml"),
        ..f.paths.clone()
    };
    let errs = load(&missing, &no_env).unwrap_err().0;
    assert!(errs[0].message.contains("does not exist"));

    let required = Paths {
        settings_required: true,
        ..f.paths.clone()
    };
    let errs = load(&required, &no_env).unwrap_err().0;
    assert_eq!(errs[0].file, required.settings);

    let big = f.dir.join("big.yaml");
    let mut text = String::from("api_key: x\n");
    while text.len() as u64 <= node::MAX_AGENT_FILE_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, text).unwrap();
    let errs = load(
        &Paths {
            config: big,
            ..f.paths.clone()
        },
        &no_env,
    )
    .unwrap_err()
    .0;
    assert!(
        errs[0].message.contains("larger than"),
        "{}",
        errs[0].message
    );

    let dir_as_file = Paths {
        config: f.dir.clone(),
        ..f.paths.clone()
    };
    let errs = load(&dir_as_file, &no_env).unwrap_err().0;
    assert!(errs[0].message.contains("not a regular file"));

    let binary = f.dir.join("bin.yaml");
    std::fs::write(&binary, b"api_key: \xff\xfe\n").unwrap();
    let errs = load(
        &Paths {
            config: binary,
            ..f.paths.clone()
        },
        &no_env,
    )
    .unwrap_err()
    .0;
    assert!(errs[0].message.contains("UTF-8"));
}

#[test]
fn both_files_report_together() {
    let f = fixture(
        "delegated_auth:\n  org_uuid: nope\n",
        Some(
            "socket:\n  mode: \"9\"\nsinks:\n  - instance: logs_config.api_key\n    path: /run/k\n",
        ),
    );
    let errs = load(&f.paths, &no_env).unwrap_err().0;
    let got: Vec<(&Path, &str)> = errs
        .iter()
        .map(|p| (p.file.as_path(), p.key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (f.paths.config.as_path(), "delegated_auth.org_uuid"),
            (f.paths.settings.as_path(), "socket.mode"),
            (f.paths.settings.as_path(), "sinks[0].instance"),
        ]
    );
    assert_eq!(errs[2].line, Some(4));
}

#[test]
fn access_rules_naming_unknown_instances_warn() {
    let f = fixture(
        &format!("delegated_auth:\n  org_uuid: {ORG}\n"),
        Some("access:\n  - instances: [api_key, \"*\", logs_config.api_key]\n    uids: [0]\n"),
    );
    let cfg = load(&f.paths, &no_env).unwrap();
    assert_eq!(warning_keys(&cfg), vec!["access[0].instances"]);
    assert_eq!(
        cfg.warnings[0].value.as_deref(),
        Some("logs_config.api_key")
    );
    assert_eq!(cfg.warnings[0].line, Some(2));
}

// ------------------------------------------------------------------------------------------
// Secrets, reload diffing, check-config

#[test]
fn secrets_never_appear_in_debug_describe_or_errors() {
    let f = fixture(
        &format!(
            "api_key: {KEY}\nproxy:\n  https: http://user:hunter2@proxy:3128\ndelegated_auth:\n  org_uuid: {ORG}\n\
             logs_config:\n  api_key: {LOGS_KEY}\n  delegated_auth:\n    org_uuid: {ORG}\n"
        ),
        None,
    );
    let cfg = load(&f.paths, &no_env).unwrap();
    let text = format!("{cfg:?}\n{}", describe(&cfg));
    for secret in [KEY, LOGS_KEY, "hunter2"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
    assert!(describe(&cfg).contains("***bcdef"));
}

#[test]
fn unchanged_instances_compare_equal_across_reloads() {
    let base = format!(
        "api_key: {KEY}\ndelegated_auth:\n  org_uuid: {ORG}\nlogs_config:\n  delegated_auth:\n    org_uuid: {ORG_LOGS}\n"
    );
    let a = ok(&base);
    let b = ok(&format!("# a comment moves every line\n{base}"));
    assert_eq!(a.instances, b.instances);
    let c = ok(&base.replace(ORG_LOGS, ORG_EU));
    assert_eq!(a.instances[0], c.instances[0]);
    assert_ne!(a.instances[1], c.instances[1]);
}

#[test]
fn check_config_prints_the_summary_or_every_problem() {
    let f = fixture(
        &format!(
            "api_key: {KEY}\ndelegated_auth:\n  org_uuid: {ORG}\n  aws:\n    region: eu-west-1\n"
        ),
        None,
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(check_config_main(&f.paths, &no_env, &mut out, &mut err), 0);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("- api_key"));
    assert!(out.contains(ORG));
    assert!(out.contains("eu-west-1"));
    assert!(out.contains("https://app.datadoghq.com"));
    assert!(out.contains("every 1h"));
    assert!(out.contains("fallback:  api_key (***bcdef)"));
    assert!(!out.contains(KEY));
    assert!(err.is_empty());

    let f = fixture(
        "delegated_auth:\n  org_uuid: x\n  refresh_interval_mins: 0\n",
        None,
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(check_config_main(&f.paths, &no_env, &mut out, &mut err), 78);
    let err = String::from_utf8(err).unwrap();
    assert!(out.is_empty());
    assert!(err.contains("error: "), "{err}");
    assert!(
        err.contains(":2: delegated_auth.org_uuid: is not a UUID"),
        "{err}"
    );
    assert!(err.contains("warning: "), "{err}");
    assert!(err.contains("1 error(s)"), "{err}");
}

// ------------------------------------------------------------------------------------------
// The reference documentation covers everything implemented.

const DOCS: &str = include_str!("../../docs/configuration.md");

#[test]
fn docs_name_every_environment_variable() {
    let mut vars: Vec<String> = env::bindings().into_iter().flat_map(|b| b.vars).collect();
    vars.push(ENV_SOCKET.to_owned());
    vars.push(ENV_LOG_LEVEL.to_owned());
    for var in vars {
        let generic = env::PRODUCT_SECTIONS.iter().find_map(|s| {
            let prefix = env::var_name(&[s]);
            var.strip_prefix(&prefix)
                .map(|rest| format!("DD_<SECTION>{rest}"))
        });
        assert!(
            DOCS.contains(&format!("`{var}`"))
                || generic.is_some_and(|g| DOCS.contains(&format!("`{g}`"))),
            "docs/configuration.md does not mention {var}"
        );
    }
}

#[test]
fn docs_name_every_settings_key() {
    for key in [
        "socket.path",
        "socket.mode",
        "socket.group",
        "`access`",
        "fallback_api_key_file",
        "refresh.interval",
        "refresh.retry_min",
        "refresh.retry_max",
        "refresh.startup_grace",
        "sinks[].instance",
        "sinks[].path",
        "sinks[].mode",
        "sinks[].group",
        "log.level",
        "log.format",
    ] {
        assert!(
            DOCS.contains(key),
            "docs/configuration.md does not mention {key}"
        );
    }
    for (default, text) in [
        (DEFAULT_SOCKET_PATH, DEFAULT_SOCKET_PATH.to_owned()),
        ("socket mode", format!("\"{DEFAULT_SOCKET_MODE:04o}\"")),
        ("sink mode", format!("\"{DEFAULT_SINK_MODE:04o}\"")),
        (
            "retry_min",
            format!("`{}`", humantime::format_duration(DEFAULT_RETRY_MIN)),
        ),
        (
            "retry_max",
            format!("`{}`", humantime::format_duration(DEFAULT_RETRY_MAX)),
        ),
        (
            "grace",
            format!("`{}`", humantime::format_duration(DEFAULT_STARTUP_GRACE)),
        ),
        ("refresh", format!("`{DEFAULT_REFRESH_MINS}`")),
        ("timeout", format!("`{DEFAULT_EC2_METADATA_TIMEOUT_MS}`")),
        ("lifetime", format!("`{DEFAULT_EC2_TOKEN_LIFETIME_SECS}`")),
        ("site", format!("`{DEFAULT_SITE}`")),
    ] {
        assert!(
            DOCS.contains(&text),
            "docs do not state the {default} default {text}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// load_from_strings: the same validation as load, without reading the two files

#[test]
fn load_from_strings_agrees_with_load() {
    let agent = format!(
        "api_key: {KEY}\ndelegated_auth:\n  org_uuid: {ORG}\nlogs_config:\n  api_key: {LOGS_KEY}\n"
    );
    let settings = "refresh:\n  interval: 10m\nsinks:\n  - instance: api_key\n    path: /run/k\n";
    let f = fixture(&agent, Some(settings));
    let env = env_of(&[("DD_SITE", "datadoghq.eu")]);
    let from_files = load(&f.paths, &env).unwrap_or_else(|e| panic!("{e}"));
    let from_strings =
        load_from_strings(&f.paths, &agent, Some(settings), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_files, from_strings);
    assert_eq!(from_strings.agent.site, "datadoghq.eu");

    // Errors too, with the same file names and lines.
    let bad = "sinks:\n  - instance: nope\n    path: /run/k\n";
    let f = fixture(&agent, Some(bad));
    let from_files = load(&f.paths, &no_env)
        .expect_err("unknown sink instance")
        .0;
    let from_strings = load_from_strings(&f.paths, &agent, Some(bad), &no_env)
        .expect_err("unknown sink instance")
        .0;
    assert_eq!(from_files, from_strings);
}

#[test]
fn load_from_strings_without_settings_text_is_a_missing_settings_file() {
    let agent = format!("api_key: {KEY}\n");
    let mut paths = Paths {
        config: PathBuf::from("/nonexistent/datadog.yaml"),
        settings: PathBuf::from("/nonexistent/delegated-auth.yaml"),
        settings_required: false,
    };
    let cfg = load_from_strings(&paths, &agent, None, &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert!(!cfg.settings_file_present);
    assert_eq!(
        cfg.settings,
        load_from_strings(&paths, &agent, Some(""), &no_env)
            .unwrap()
            .settings
    );

    paths.settings_required = true;
    let errs = load_from_strings(&paths, &agent, None, &no_env)
        .expect_err("a required settings file is missing")
        .0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].message, "the settings file does not exist");
}

// ------------------------------------------------------------------------------------------
// Proxy precedence (wire spec §10.4)

/// Every combination of `DD_PROXY_HTTPS`, `HTTPS_PROXY`, `https_proxy` and the file's
/// `proxy.https`, through `load` and `check-config`'s description: the first set one wins, and
/// its password is masked. `no_proxy` likewise, `DD_PROXY_NO_PROXY` split on commas and spaces.
#[test]
fn proxy_precedence_through_load_and_describe() {
    for mask in 0u8..16 {
        let has = |bit: u8| mask & (1 << bit) != 0;
        let yaml = if has(3) {
            "proxy:\n  https: http://u:filepw@file:1\n  no_proxy: [file.example]\n"
        } else {
            ""
        };
        let f = fixture(yaml, None);
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if has(0) {
            pairs.push(("DD_PROXY_HTTPS", "http://u:ddpw@dd:1"));
            pairs.push(("DD_PROXY_NO_PROXY", "a.example, b.example c.example"));
        }
        if has(1) {
            pairs.push(("HTTPS_PROXY", "http://u:upperpw@upper:1"));
            pairs.push(("NO_PROXY", "upper.example,x"));
        }
        if has(2) {
            pairs.push(("https_proxy", "http://u:lowerpw@lower:1"));
            pairs.push(("no_proxy", "lower.example"));
        }
        let cfg = load(&f.paths, &env_of(&pairs)).unwrap_or_else(|e| panic!("{e}"));
        let p = &cfg.agent.proxy_in_effect;
        let (source, host, no_proxy): (&str, &str, &[&str]) = if has(0) {
            (
                "DD_PROXY_HTTPS",
                "dd",
                &["a.example", "b.example", "c.example"],
            )
        } else if has(1) {
            ("HTTPS_PROXY", "upper", &["upper.example", "x"])
        } else if has(2) {
            ("https_proxy", "lower", &["lower.example"])
        } else if has(3) {
            ("proxy.https", "file", &["file.example"])
        } else {
            assert!(!p.is_set(), "mask {mask:04b}");
            assert!(!describe(&cfg).contains("Proxy:"));
            continue;
        };
        let https = p.https.as_ref().unwrap();
        assert_eq!(https.source, source, "mask {mask:04b}");
        assert_eq!(p.no_proxy, no_proxy, "mask {mask:04b}");
        let text = describe(&cfg);
        let line = format!(
            "Proxy:               https=http://***@{host}:1 (from {source}) http=- no_proxy=[{}] (from {})",
            no_proxy.join(" "),
            p.no_proxy_source.as_deref().unwrap()
        );
        assert!(text.contains(&line), "mask {mask:04b}: {text}");
        assert!(!text.contains("pw@"), "{text}");
    }
}

// ------------------------------------------------------------------------------------------
// DELA instance names: the Agent's trailing [<org>], old names as aliases for one release

#[test]
fn dela_names_carry_the_org_and_old_names_are_aliases() {
    let f = fixture(
        &format!(
            "api_key: {KEY}\nadditional_endpoints:\n  \"https://app.datadoghq.eu\": [\"DELA[{ORG_EU}, aws, fallback=k1]\"]\n\
             logs_config:\n  use_http: true\n  additional_endpoints:\n    - api_key: \"DELA({ORG}, aws, fallback=k2)\"\n      host: intake.example\n"
        ),
        Some(
            "access:\n  - instances: [api_key, \"additional_endpoints[https://app.datadoghq.eu][0]\"]\n    uids: [0]\n\
             sinks:\n  - instance: \"logs_config.additional_endpoints[0]\"\n    path: $DIR/logs.key\n",
        ),
    );
    let cfg = load(&f.paths, &no_env).unwrap_or_else(|e| panic!("{e}"));
    let new_map = format!("additional_endpoints[https://app.datadoghq.eu][0][{ORG_EU}]");
    let new_list = format!("logs_config.additional_endpoints[0][{ORG}]");
    assert_eq!(
        names(&cfg),
        vec!["api_key", new_map.as_str(), new_list.as_str()]
    );
    assert_eq!(
        cfg.instances[1].aliases,
        vec!["additional_endpoints[https://app.datadoghq.eu][0]"]
    );
    // Lookups by the old name find the instance.
    assert_eq!(
        cfg.instance("logs_config.additional_endpoints[0]")
            .unwrap()
            .name,
        new_list
    );
    // Access rules and sinks written with an old name now use the current one, with a warning.
    let rules = cfg.settings.access.as_ref().unwrap();
    assert_eq!(
        rules[0].instances,
        vec!["api_key".to_owned(), new_map.clone()]
    );
    assert_eq!(cfg.settings.sinks[0].instance, new_list);
    let renamed: Vec<(&str, Option<usize>)> = cfg
        .warnings
        .iter()
        .filter(|w| w.message.contains("old name"))
        .map(|w| (w.key.as_str(), w.line))
        .collect();
    assert_eq!(
        renamed,
        vec![
            ("access[0].instances", Some(2)),
            ("sinks[0].instance", Some(5))
        ]
    );
    assert!(describe(&cfg).contains(
        "      alias:     additional_endpoints[https://app.datadoghq.eu][0] (old name; works until the next release)"
    ));
}

// ------------------------------------------------------------------------------------------
// FQDN sites (wire spec §10.3)

#[test]
fn well_known_sites_are_fully_qualified_unless_disabled() {
    let url = |cfg: &Config| {
        crate::exchange::intake_key_url(
            &cfg.instance("api_key")
                .unwrap()
                .delegated
                .as_ref()
                .unwrap()
                .exchange_target,
        )
    };
    let org = format!("delegated_auth:\n  org_uuid: {ORG}\n");
    for (yaml, env, expected) in [
        ("", vec![], "https://api.datadoghq.com./api/v2/intake-key"),
        (
            "site: datadoghq.eu\n",
            vec![],
            "https://api.datadoghq.eu./api/v2/intake-key",
        ),
        (
            "site: us5.datadoghq.com\n",
            vec![],
            "https://api.us5.datadoghq.com./api/v2/intake-key",
        ),
        (
            "site: ddog-gov.com\n",
            vec![],
            "https://api.ddog-gov.com./api/v2/intake-key",
        ),
        // Already fully qualified: one dot, not two.
        (
            "site: datadoghq.eu.\n",
            vec![],
            "https://api.datadoghq.eu./api/v2/intake-key",
        ),
        // Not a Datadog site: as written.
        (
            "site: example.com\n",
            vec![],
            "https://app.example.com/api/v2/intake-key",
        ),
        // dd_url wins, as written.
        (
            "dd_url: https://app.datadoghq.eu\n",
            vec![],
            "https://api.datadoghq.eu/api/v2/intake-key",
        ),
        // Disabled in the file, or by the environment.
        (
            "site: datadoghq.eu\nconvert_dd_site_fqdn:\n  enabled: false\n",
            vec![],
            "https://api.datadoghq.eu/api/v2/intake-key",
        ),
        (
            "site: datadoghq.eu\n",
            vec![("DD_CONVERT_DD_SITE_FQDN_ENABLED", "false")],
            "https://api.datadoghq.eu/api/v2/intake-key",
        ),
        (
            "convert_dd_site_fqdn:\n  enabled: false\n",
            vec![("DD_CONVERT_DD_SITE_FQDN_ENABLED", "true")],
            "https://api.datadoghq.com./api/v2/intake-key",
        ),
    ] {
        let f = fixture(&format!("{yaml}{org}"), None);
        let cfg = load(&f.paths, &env_of(&env)).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        assert_eq!(url(&cfg), expected, "{yaml} {env:?}");
    }
    // DELA endpoints are used as written.
    let cfg = ok(&format!(
        "{org}additional_endpoints:\n  \"https://app.datadoghq.eu\": [\"DELA[{ORG_EU}, aws]\"]\n"
    ));
    assert_eq!(
        cfg.instances[1].delegated.as_ref().unwrap().exchange_target,
        "https://app.datadoghq.eu"
    );
    // A wrong type is an error naming the key.
    let errs = errors("convert_dd_site_fqdn:\n  enabled: maybe\n");
    assert_eq!(errs[0].key, "convert_dd_site_fqdn.enabled");
}

/// Loads `agent` with the settings file `settings`.
fn load_with(agent: &str, settings: &str) -> Result<Config, ConfigErrors> {
    let f = fixture(agent, Some(settings));
    load(&f.paths, &no_env)
}

#[test]
fn tokens_resolve_their_api_from_site_api_url_or_the_agent() {
    let agent = format!(
        "api_key: {KEY}\nsite: datadoghq.eu\ndelegated_auth:\n  org_uuid: {ORG}\n  aws:\n    region: eu-west-1\n"
    );
    let settings = format!(
        "tokens:\n\
         \x20 - name: automation\n    org_uuid: {ORG}\n\
         \x20 - name: us5\n    org_uuid: {ORG_EU}\n    site: us5.datadoghq.com\n    refresh_before: 5m\n\
         \x20 - name: local\n    org_uuid: {ORG}\n    api_url: http://127.0.0.1:8080/\n\
         \x20 - name: proxy\n    org_uuid: {ORG}\n    site: datadog.internal.example\n"
    );
    let cfg = load_with(&agent, &settings).unwrap();
    let got: Vec<(&str, &str, Option<Duration>)> = cfg
        .tokens
        .iter()
        .map(|t| (t.name.as_str(), t.api_url.as_str(), t.refresh_before))
        .collect();
    assert_eq!(
        got,
        vec![
            // datadog.yaml's site, in the FQDN form of the newest Agent.
            ("automation", "https://api.datadoghq.eu.", None),
            (
                "us5",
                "https://api.us5.datadoghq.com.",
                Some(Duration::from_secs(300))
            ),
            ("local", "http://127.0.0.1:8080", None),
            // Not a Datadog site: the same form, without a dot.
            ("proxy", "https://api.datadog.internal.example", None),
        ]
    );
    assert!(
        cfg.tokens
            .iter()
            .all(|t| t.region.as_deref() == Some("eu-west-1"))
    );
    assert_eq!(cfg.token("us5").unwrap().org_uuid, ORG_EU);
    // Without the FQDN conversion, no dot.
    let agent = format!("{agent}convert_dd_site_fqdn:\n  enabled: false\n");
    let cfg = load_with(&agent, &settings).unwrap();
    assert_eq!(cfg.tokens[0].api_url, "https://api.datadoghq.eu");
    // A token alone is enough delegated auth not to warn that only static keys are served.
    let cfg = load_with(
        &format!("api_key: {KEY}\n"),
        "tokens:\n  - name: a\n    org_uuid: 3fa85f64-5717-4562-b3fc-2c963f66afa6\n",
    )
    .unwrap();
    assert!(!warning_keys(&cfg).contains(&"delegated_auth.org_uuid"));
    assert!(describe(&cfg).contains("Tokens (1):\n  - a (access rules: token:a)"));
}

#[test]
fn every_token_problem_is_reported_at_once_with_its_line_and_fix() {
    let settings = format!(
        "tokens:\n\
         \x20 - name: ok\n    org_uuid: {ORG}\n\
         \x20 - org_uuid: not-a-uuid\n\
         \x20 - name: ok\n    site: datadoghq.eu\n    api_url: https://api.datadoghq.eu\n\
         \x20 - name: \"bad name\"\n    org_uuid: {ORG}\n    api_url: http://api.example.com\n\
         \x20 - name: x\n    org_uuid: {ORG}\n    api_url: https://user:pw@api.example.com\n    refresh_before: 0s\n\
         \x20 - name: y\n    org_uuid: {ORG}\n    site: https://datadoghq.eu\n    refresh_before: soon\n\
         \x20 - name: z\n    org_uuid: {ORG}\n    api_url: ftp://x\n"
    );
    let errors = load_with(&format!("api_key: {KEY}\n"), &settings)
        .unwrap_err()
        .0;
    let got: Vec<(String, Option<usize>)> =
        errors.iter().map(|p| (p.key.clone(), p.line)).collect();
    assert_eq!(
        got,
        vec![
            ("tokens[1].name".to_owned(), Some(4)),
            ("tokens[1].org_uuid".to_owned(), Some(4)),
            ("tokens[2].name".to_owned(), Some(5)),
            ("tokens[2].org_uuid".to_owned(), Some(5)),
            ("tokens[2].api_url".to_owned(), Some(7)),
            ("tokens[3].name".to_owned(), Some(8)),
            ("tokens[3].api_url".to_owned(), Some(10)),
            ("tokens[4].api_url".to_owned(), Some(13)),
            ("tokens[4].refresh_before".to_owned(), Some(14)),
            ("tokens[5].site".to_owned(), Some(17)),
            ("tokens[5].refresh_before".to_owned(), Some(18)),
            ("tokens[6].api_url".to_owned(), Some(21)),
        ],
        "{errors:#?}"
    );
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    assert!(all.contains("is the name of an earlier token"), "{all}");
    assert!(all.contains("is set together with site"), "{all}");
    assert!(all.contains("only sent over https"), "{all}");
    assert!(all.contains("must be between 1s and 24h"), "{all}");
    assert!(
        !all.contains("pw@"),
        "a password in api_url is never echoed: {all}"
    );
    // Unknown keys are refused like everywhere in this file.
    let errors = load_with(
        &format!("api_key: {KEY}\n"),
        &format!("tokens:\n  - name: a\n    org_uuid: {ORG}\n    lifetime: 1h\n"),
    )
    .unwrap_err()
    .0;
    assert!(
        errors[0].message.contains("unknown field `lifetime`"),
        "{:?}",
        errors[0]
    );
}

#[test]
fn access_rules_name_tokens_in_their_own_namespace() {
    let agent = format!("api_key: {KEY}\ndelegated_auth:\n  org_uuid: {ORG}\n");
    let settings = format!(
        "access:\n  - instances: [\"token:automation\", \"token:*\", \"token:missing\", \"*\"]\n    uids: [0]\n\
         tokens:\n  - name: automation\n    org_uuid: {ORG}\n"
    );
    let cfg = load_with(&agent, &settings).unwrap();
    let warnings: Vec<String> = cfg.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("names a token that the settings file does not define"));
    assert!(
        warnings[0].contains("token:automation"),
        "the fix lists the tokens"
    );
    assert!(warnings[0].contains("token:missing"));
}

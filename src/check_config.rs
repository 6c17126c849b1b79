//! `check-config`: the configuration summary and the command that prints it or every problem.
//!
//! This is the CLI layer's view of a [`Config`]: the configuration module loads and validates,
//! this module only renders. (`config::describe` and `config::check_config_main` re-export it.)

use std::fmt::Write as _;
use std::io::Write;

use crate::config::{Config, EXIT_BAD_CONFIG, IdRef, Paths, Provider, load_report};

/// Human-readable summary printed by `check-config`: file paths, site, provider and region,
/// socket, every instance with its org, target, region, refresh interval and fallback
/// origin (never the key; at most its redacted suffix), and every token.
pub fn describe(cfg: &Config) -> String {
    let mut out = String::new();
    let a = &cfg.agent;
    let s = &cfg.settings;
    let _ = writeln!(out, "Agent configuration: {}", cfg.paths.config.display());
    let _ = writeln!(
        out,
        "Daemon settings:     {}{}",
        cfg.paths.settings.display(),
        if cfg.settings_file_present {
            ""
        } else {
            " (not present: defaults)"
        }
    );
    let _ = writeln!(out, "Site:                {}", a.site);
    let _ = writeln!(
        out,
        "Default endpoint:    {}",
        crate::secret::redact_userinfo(&a.infra_endpoint)
    );
    let _ = writeln!(
        out,
        "Cloud provider:      {}",
        match a.provider {
            Provider::Auto => "auto-detect",
            Provider::Aws => "aws",
        }
    );
    let _ = writeln!(
        out,
        "AWS region:          {}",
        a.aws_region.as_deref().unwrap_or("auto-detect")
    );
    let _ = writeln!(
        out,
        "EC2 metadata:        {} (timeout {} ms, token lifetime {} s, prefer IMDSv2: {})",
        if a.aws_metadata_enabled() {
            "enabled"
        } else {
            "disabled by cloud_provider_metadata"
        },
        a.ec2_metadata_timeout.as_millis(),
        a.ec2_metadata_token_lifetime.as_secs(),
        a.ec2_prefer_imdsv2
    );
    if a.proxy_in_effect.is_set() {
        let _ = writeln!(out, "Proxy:               {}", a.proxy_in_effect.describe());
    }
    if a.skip_ssl_validation {
        let _ = writeln!(out, "TLS verification:    DISABLED (skip_ssl_validation)");
    }
    let _ = writeln!(
        out,
        "Socket:              {} (mode {:04o}{})",
        s.socket.path.display(),
        s.socket.mode,
        s.socket
            .group
            .as_ref()
            .map(|g| format!(", group {g}"))
            .unwrap_or_default()
    );
    match &s.access {
        None => {
            let _ = writeln!(out, "Access:              whoever can open the socket");
        }
        Some(rules) => {
            let _ = writeln!(out, "Access:              {} rule(s)", rules.len());
            let ids = |list: &[IdRef]| {
                list.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for rule in rules {
                let _ = writeln!(
                    out,
                    "  - instances [{}] uids [{}] gids [{}]",
                    rule.instances.join(", "),
                    ids(&rule.uids),
                    ids(&rule.gids)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "Retry:               {} .. {}, startup grace {}",
        humantime::format_duration(s.refresh.retry_min),
        humantime::format_duration(s.refresh.retry_max),
        humantime::format_duration(s.refresh.startup_grace)
    );
    if let Some(interval) = s.refresh.interval {
        let _ = writeln!(
            out,
            "Refresh override:    every {} for all instances (refresh.interval)",
            humantime::format_duration(interval)
        );
    }
    for sink in &s.sinks {
        let _ = writeln!(
            out,
            "Sink:                {} -> {} (mode {:04o})",
            sink.instance,
            sink.path.display(),
            sink.mode
        );
    }
    let _ = writeln!(
        out,
        "Log:                 {} ({})",
        s.log.level, s.log.format
    );
    let _ = writeln!(out, "Instances ({}):", cfg.instances.len());
    for spec in &cfg.instances {
        let _ = writeln!(out, "  - {}", spec.name);
        if let Some(form) = spec.directive_form {
            let _ = writeln!(out, "      directive: {}", form.describe());
        }
        for alias in &spec.aliases {
            let _ = writeln!(
                out,
                "      alias:     {alias} (old name; works until the next release)"
            );
        }
        if let Some(problem) = &spec.invalid {
            let _ = writeln!(
                out,
                "      state:     invalid (inert): {}; fix: {}",
                problem.message, problem.fix
            );
            continue;
        }
        match &spec.delegated {
            Some(d) => {
                let _ = writeln!(out, "      org_uuid:  {}", d.org_uuid);
                let _ = writeln!(
                    out,
                    "      target:    {}{}",
                    crate::secret::redact_userinfo(&d.exchange_target),
                    if d.explicit_target { " (endpoint)" } else { "" }
                );
                let _ = writeln!(
                    out,
                    "      region:    {}",
                    d.region.as_deref().unwrap_or("auto-detect")
                );
                let _ = writeln!(
                    out,
                    "      refresh:   every {}",
                    humantime::format_duration(d.refresh_interval)
                );
            }
            None => {
                let _ = writeln!(out, "      delegated: no (static key only)");
            }
        }
        match (&spec.fallback, &spec.fallback_origin) {
            (Some(key), origin) => {
                let _ = writeln!(
                    out,
                    "      fallback:  {} ({})",
                    origin.as_deref().unwrap_or("configured"),
                    key.redacted()
                );
            }
            (None, _) => {
                let _ = writeln!(out, "      fallback:  none");
            }
        }
        for note in &spec.notes {
            let _ = writeln!(out, "      note:      {note}");
        }
    }
    if !cfg.tokens.is_empty() {
        let _ = writeln!(out, "Tokens ({}):", cfg.tokens.len());
        for t in &cfg.tokens {
            let _ = writeln!(out, "  - {} (access rules: token:{})", t.name, t.name);
            let _ = writeln!(out, "      org_uuid:  {}", t.org_uuid);
            let _ = writeln!(
                out,
                "      exchange:  {}{}",
                crate::secret::redact_userinfo(&t.api_url),
                crate::exchange::DELEGATED_TOKEN_PATH
            );
            let _ = writeln!(
                out,
                "      region:    {}",
                t.region.as_deref().unwrap_or("auto-detect")
            );
            let _ = writeln!(
                out,
                "      refresh:   {} before expiry (at most half the token's lifetime)",
                match t.refresh_before {
                    Some(d) => humantime::format_duration(d).to_string(),
                    None => "a quarter of its lifetime, at least 60s,".to_owned(),
                }
            );
            let _ = writeln!(out, "      fallback:  none (tokens never fall back)");
        }
    }
    if !cfg.warnings.is_empty() {
        let _ = writeln!(out, "Warnings ({}):", cfg.warnings.len());
        for w in &cfg.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
    }
    out
}

/// The `check-config` command: prints [`describe`] to `out` and returns 0, or prints every
/// problem (then the warnings) to `err` and returns [`EXIT_BAD_CONFIG`] (78).
pub fn check_config_main(
    paths: &Paths,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let report = load_report(paths, env);
    match report.config {
        Some(config) if report.errors.is_empty() && report.entry_errors.is_empty() => {
            let _ = out.write_all(describe(&config).as_bytes());
            let _ = writeln!(out, "Configuration OK.");
            0
        }
        config => {
            // An entry's problem fails the check, so CI catches it, even though the daemon would
            // start and keep only that entry inert (wire spec §10.2): show what would run.
            if report.errors.is_empty()
                && let Some(config) = &config
            {
                let _ = out.write_all(describe(config).as_bytes());
            }
            for problem in &report.errors {
                let _ = writeln!(err, "error: {problem}");
            }
            for problem in &report.entry_errors {
                let _ = writeln!(err, "error: {problem} (this entry is inert; the rest runs)");
            }
            for problem in &report.warnings {
                let _ = writeln!(err, "warning: {problem}");
            }
            let _ = writeln!(
                err,
                "Configuration invalid: {} error(s), {} warning(s).",
                report.errors.len() + report.entry_errors.len(),
                report.warnings.len()
            );
            EXIT_BAD_CONFIG
        }
    }
}

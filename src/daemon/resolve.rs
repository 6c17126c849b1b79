//! The build step after validation (vector's validate/build split): everything of a validated
//! [`Config`] that needs the host (user and group names) or builds something (the exchanger),
//! resolved into what start-up and reloads apply. It is the only step of a reload that can
//! fail, and it happens before anything changes. Every problem keeps its file, line and fix.

use std::sync::Arc;

use super::exchanger::AwsExchanger;
use crate::config::{self, Config, ConfigErrors, IdRef, Problem};
use crate::lifecycle::{Credential, ExchangeKey, InstancePlan, InvalidEntry, Timing};
use crate::server::{AccessPolicy, Rule};
use crate::sink::SinkSpec;

/// A configuration resolved on this host, ready to apply.
pub(crate) struct Resolved {
    /// The refresh manager's plans, one per instance.
    pub(crate) plans: Vec<InstancePlan>,
    /// Retry and start-up timing of the refresh manager.
    pub(crate) timing: Timing,
    /// Who may read which key, with uids and gids resolved.
    pub(crate) access: AccessPolicy,
    /// Identity and exchange client.
    pub(crate) exchanger: Arc<AwsExchanger>,
    /// Files kept up to date with a key, groups resolved.
    pub(crate) sinks: Vec<SinkSpec>,
    /// `socket.mode`.
    pub(crate) socket_mode: u32,
    /// `socket.group`, resolved.
    pub(crate) socket_gid: Option<u32>,
}

/// Resolves `cfg` on this host.
///
/// # Errors
///
/// Every user or group name that does not resolve, every sink of an unknown instance, and a
/// failure to build the exchange client, all at once.
pub(crate) fn resolve(cfg: &Config) -> Result<Resolved, ConfigErrors> {
    let mut problems = Vec::new();
    let access = access_policy(cfg, &mut problems);
    let sinks = sink_specs(cfg, &mut problems);
    let socket_gid = cfg
        .settings
        .socket
        .group
        .as_ref()
        .and_then(|g| gid(cfg, g, "socket.group", &mut problems));
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    let exchanger = AwsExchanger::new(cfg).map_err(|e| {
        ConfigErrors(vec![Problem::new(
            &cfg.paths.config,
            "",
            e,
            "check the proxy and TLS settings of datadog.yaml",
        )])
    })?;
    Ok(Resolved {
        plans: plans(cfg),
        timing: Timing {
            retry_min: cfg.settings.refresh.retry_min,
            retry_max: cfg.settings.refresh.retry_max,
            startup_grace: cfg.settings.refresh.startup_grace,
        },
        access,
        exchanger: Arc::new(exchanger),
        sinks,
        socket_mode: cfg.settings.socket.mode,
        socket_gid,
    })
}

/// Turns validated instances into the manager's plans, then the tokens (their slots are
/// `token:<name>`). The refresh interval is the instance's own: the configuration layer already
/// applied `refresh.interval` to it.
pub(crate) fn plans(cfg: &Config) -> Vec<InstancePlan> {
    let tokens = cfg.tokens.iter().map(|t| InstancePlan {
        name: crate::keystore::token_slot(&t.name),
        exchange: Some(ExchangeKey {
            credential: Credential::Token,
            org_uuid: t.org_uuid.clone(),
            target: t.api_url.clone(),
            region: t.region.clone(),
        }),
        // Unused by a token's schedule (it follows the expiry), but part of its group's pacer.
        refresh_interval: config::DEFAULT_REFRESH_INTERVAL,
        refresh_before: t.refresh_before,
        fallback: None,
        fallback_origin: None,
        invalid: None,
        aliases: Vec::new(),
    });
    cfg.instances
        .iter()
        .map(|i| InstancePlan {
            name: i.name.clone(),
            exchange: i.delegated.as_ref().map(|d| ExchangeKey {
                credential: Credential::IntakeKey,
                org_uuid: d.org_uuid.clone(),
                target: d.exchange_target.clone(),
                region: d.region.clone(),
            }),
            refresh_interval: i
                .delegated
                .as_ref()
                .map_or(config::DEFAULT_REFRESH_INTERVAL, |d| d.refresh_interval),
            refresh_before: None,
            fallback: i.fallback.clone(),
            fallback_origin: i.fallback_origin.clone(),
            aliases: i.aliases.clone(),
            invalid: i.invalid.as_ref().map(|p| InvalidEntry {
                // The problem's own text, without the fix (shown on its own).
                problem: Problem {
                    fix: String::new(),
                    ..p.clone()
                }
                .to_string(),
                fix: p.fix.clone(),
            }),
        })
        .chain(tokens)
        .collect()
}

fn access_policy(cfg: &Config, problems: &mut Vec<Problem>) -> AccessPolicy {
    let Some(rules) = &cfg.settings.access else {
        return AccessPolicy::Open;
    };
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let uids = (r.uids.iter().enumerate())
            .filter_map(|(j, u)| uid(cfg, u, &format!("access[{i}].uids[{j}]"), problems))
            .collect();
        let gids = (r.gids.iter().enumerate())
            .filter_map(|(j, g)| gid(cfg, g, &format!("access[{i}].gids[{j}]"), problems))
            .collect();
        out.push(Rule {
            instances: r.instances.clone(),
            uids,
            gids,
        });
    }
    AccessPolicy::Rules(out)
}

fn sink_specs(cfg: &Config, problems: &mut Vec<Problem>) -> Vec<SinkSpec> {
    let mut specs = Vec::new();
    for (i, s) in cfg.settings.sinks.iter().enumerate() {
        if !cfg.instances.iter().any(|inst| inst.name == s.instance) {
            // Validation refuses these already; kept so that a sink can never be started for
            // nothing.
            let names: Vec<_> = cfg.instances.iter().map(|i| i.name.as_str()).collect();
            problems.push(
                Problem::new(
                    &cfg.paths.settings,
                    format!("sinks[{i}].instance"),
                    "no instance of that name",
                    format!("use one of: {}", names.join(", ")),
                )
                .value(s.instance.clone()),
            );
            continue;
        }
        let key = format!("sinks[{i}].group");
        let Some(gid) = s.group.as_ref().map(|g| gid(cfg, g, &key, problems)) else {
            specs.push(spec(s, None));
            continue;
        };
        if let Some(gid) = gid {
            specs.push(spec(s, Some(gid)));
        }
    }
    specs
}

fn spec(s: &config::SinkSettings, gid: Option<u32>) -> SinkSpec {
    SinkSpec {
        instance: s.instance.clone(),
        path: s.path.clone(),
        mode: s.mode,
        gid,
    }
}

/// Resolves a user name or number; a name that does not resolve is a problem at `key`.
fn uid(cfg: &Config, id: &IdRef, key: &str, problems: &mut Vec<Problem>) -> Option<u32> {
    let lookup = |name: &str| nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw()));
    host_id(cfg, id, key, ("user", "uid"), lookup, problems)
}

/// Resolves a group name or number; a name that does not resolve is a problem at `key`.
fn gid(cfg: &Config, id: &IdRef, key: &str, problems: &mut Vec<Problem>) -> Option<u32> {
    let lookup =
        |name: &str| nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw()));
    host_id(cfg, id, key, ("group", "gid"), lookup, problems)
}

/// Resolves a user or group (`what`: its noun and the numeric id's name) through `lookup`; a
/// name that does not resolve is a problem at `key`, at its line in the settings file.
fn host_id(
    cfg: &Config,
    id: &IdRef,
    key: &str,
    (noun, number): (&str, &str),
    lookup: impl Fn(&str) -> nix::Result<Option<u32>>,
    problems: &mut Vec<Problem>,
) -> Option<u32> {
    let name = match id {
        IdRef::Id(n) => return Some(*n),
        IdRef::Name(name) => name,
    };
    let (message, fix) = match lookup(name) {
        Ok(Some(n)) => return Some(n),
        Ok(None) => (
            format!("no {noun} of that name exists on this host"),
            format!("create the {noun} or use a numeric {number}"),
        ),
        Err(e) => (
            format!("cannot look up the {noun}: {e}"),
            format!("check the host's {noun} database (NSS), or use a numeric {number}"),
        ),
    };
    problems.push(
        Problem::new(&cfg.paths.settings, key, message, fix)
            .at(cfg.settings.id_lines.get(key).copied())
            .value(name),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(settings: &str) -> Config {
        let agent = "api_key: 0123456789abcdef0123456789abcdef\n";
        let paths = config::Paths {
            config: "/etc/datadog-agent/datadog.yaml".into(),
            settings: "/etc/datadog-agent/delegated-auth.yaml".into(),
            settings_required: true,
        };
        config::load_from_strings(&paths, agent, Some(settings), &|_| None).unwrap()
    }

    #[test]
    fn unknown_names_are_problems_with_file_line_value_and_fix() {
        let cfg = load(
            "socket:\n  group: no-such-group-x\naccess:\n  - instances: [\"*\"]\n    uids: [0, no-such-user-x]\n",
        );
        let Err(ConfigErrors(problems)) = resolve(&cfg) else {
            panic!("resolved");
        };
        let got: Vec<_> = problems
            .iter()
            .map(|p| (p.key.as_str(), p.line, p.value.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("access[0].uids[1]", Some(5), Some("no-such-user-x")),
                ("socket.group", Some(2), Some("no-such-group-x")),
            ]
        );
        for p in &problems {
            assert_eq!(p.file, cfg.paths.settings);
            assert!(!p.fix.is_empty(), "{p}");
        }
    }

    #[test]
    fn numeric_ids_resolve_without_the_host() {
        let cfg = load(
            "socket:\n  group: \"0\"\naccess:\n  - instances: [\"*\"]\n    uids: [0]\n    gids: [0]\n",
        );
        let r = resolve(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.socket_gid, Some(0));
        let AccessPolicy::Rules(rules) = r.access else {
            panic!("open")
        };
        assert_eq!(
            (rules[0].uids.as_slice(), rules[0].gids.as_slice()),
            (&[0][..], &[0][..])
        );
    }

    #[test]
    fn static_instances_get_the_default_refresh_interval() {
        let cfg = load("");
        let plans = plans(&cfg);
        assert!(plans.iter().all(|p| p.exchange.is_none()));
        assert!(
            plans
                .iter()
                .all(|p| p.refresh_interval == config::DEFAULT_REFRESH_INTERVAL)
        );
    }
}

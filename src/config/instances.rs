//! Naming the served instances (product §6): `api_key`, the product sections' keys and the
//! `DELA[...]` entries of `additional_endpoints`, each with its delegated-auth target, refresh
//! interval and fallback chain. An entry that cannot be served becomes an inert `invalid`
//! instance (wire spec §10.2).

use std::time::Duration;

use super::agent::{FallbackFile, GlobalAuth, Reader, Slot, is_region, is_uuid, minutes};
use super::dela;
use super::env::PRODUCT_SECTIONS;
use super::node::{Node, Value};
use super::problem::Problem;
use super::{DelegatedSpec, InstanceSpec};

/// Keys the Agent defines in a product section's `delegated_auth` block. `provider` and `aws`
/// are bound there too but are global-only (the user doc says so): they get their own warning
/// instead of the "unknown key" one.
const PRODUCT_DA_KEYS: [&str; 4] = ["org_uuid", "refresh_interval_mins", "provider", "aws"];

/// Builds the instances (product §6): `api_key` always, one per enabled product section, and
/// one per `DELA[...]` entry of `additional_endpoints` (both shapes).
pub(super) fn read(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    auth: &GlobalAuth,
    infra_endpoint: &str,
    fallback_file: Option<&FallbackFile>,
) -> Vec<InstanceSpec> {
    let mut instances = Vec::new();
    let global_key_node = r.child(root, "", "api_key");
    let global_slot = r.key_slot(global_key_node, "api_key");
    let global_key = ("api_key", global_key_node, &global_slot);

    // `api_key` always exists: with delegated auth off it still serves the static key, so
    // consumers using `secret-helper` or the socket work the same everywhere.
    let delegated =
        (auth.org.clone()).map(|org| target(auth, infra_endpoint, org, auth.refresh_mins));
    let mut spec = instance("api_key".to_owned(), delegated, None);
    resolve_fallback(&mut spec, &[global_key], fallback_file);
    instances.push(spec);

    for section in PRODUCT_SECTIONS {
        let Some((key_path, key_node, slot, delegated)) =
            product_section(r, root, section, auth, infra_endpoint)
        else {
            continue;
        };
        let mut spec = instance(key_path.clone(), Some(delegated), None);
        resolve_fallback(
            &mut spec,
            &[(key_path.as_str(), key_node, &slot), global_key],
            fallback_file,
        );
        instances.push(spec);
    }

    let dela_ctx = DelaCtx {
        global_region: auth.aws_region.clone(),
        refresh: minutes(auth.refresh_mins),
    };
    read_map_shape(r, root, &dela_ctx, &mut instances);
    read_list_shape(r, root, &dela_ctx, &mut instances);
    instances
}

/// An instance with no fallback yet.
fn instance(
    name: String,
    delegated: Option<DelegatedSpec>,
    directive_form: Option<dela::Form>,
) -> InstanceSpec {
    InstanceSpec {
        name,
        delegated,
        fallback: None,
        fallback_origin: None,
        notes: Vec::new(),
        directive_form,
        invalid: None,
        aliases: Vec::new(),
    }
}

/// The delegated-auth target of `api_key` and the product sections: the default endpoint.
fn target(auth: &GlobalAuth, infra_endpoint: &str, org: String, mins: i64) -> DelegatedSpec {
    DelegatedSpec {
        org_uuid: org,
        exchange_target: infra_endpoint.to_owned(),
        explicit_target: false,
        region: auth.aws_region.clone(),
        refresh_interval: minutes(mins),
    }
}

/// One product section (`logs_config`, ...): its key path, key node and slot, and its
/// delegated-auth target when the section enables delegated auth (`None` otherwise: the Agent
/// uses its static key directly, and there is no instance).
fn product_section<'n>(
    r: &mut Reader<'_>,
    root: Option<&'n Node>,
    section: &str,
    auth: &GlobalAuth,
    infra_endpoint: &str,
) -> Option<(String, Option<&'n Node>, Slot, DelegatedSpec)> {
    let section_node = r.child(root, "", section);
    let sec = r.section(section_node, section);
    let da_path = format!("{section}.delegated_auth");
    let sda_node = r.child(sec, section, "delegated_auth");
    let sda = r.section(sda_node, &da_path);
    r.warn_unknown_keys(sda, &da_path, &PRODUCT_DA_KEYS);
    for global_only in ["provider", "aws"] {
        if let Some(node) = r.child(sda, &da_path, global_only) {
            if matches!(node.value, Value::Null) {
                continue;
            }
            let path = format!("{da_path}.{global_only}");
            let p = r.problem_at(
                node,
                &path,
                "provider settings are global only (per-product sections support only \
                 org_uuid and refresh_interval_mins); this value is ignored",
                format!("move it to delegated_auth.{global_only}, or remove it"),
            );
            r.problems.warn(p);
        }
    }
    let org_path = format!("{da_path}.org_uuid");
    let org_node = r.child(sda, &da_path, "org_uuid");
    let org_text = r.string(org_node, &org_path, false);
    let refresh_path = format!("{da_path}.refresh_interval_mins");
    let refresh_node = r.child(sda, &da_path, "refresh_interval_mins");
    let mins = r.refresh_mins(refresh_node, &refresh_path, auth.refresh_mins);
    let key_path = format!("{section}.api_key");
    let key_node = r.child(sec, section, "api_key");
    let slot = r.key_slot(key_node, &key_path);
    // No org_uuid: section not enabled.
    org_text.as_ref()?;
    let org = r.org_uuid(org_node, &org_path)?;
    let delegated = target(auth, infra_endpoint, org, mins);
    Some((key_path, key_node, slot, delegated))
}

/// How a fallback was found, for `fallback_origin`.
fn origin(path: &str, node: Option<&Node>) -> String {
    match node.and_then(|n| n.env.as_deref()) {
        Some(var) => format!("{path} (env {var})"),
        None => path.to_owned(),
    }
}

/// Walks the fallback chain: the first slot holding a real key wins, then the fallback file.
/// Handles and directives are skipped with a note.
fn resolve_fallback(
    spec: &mut InstanceSpec,
    chain: &[(&str, Option<&Node>, &Slot)],
    fallback_file: Option<&FallbackFile>,
) {
    for (path, node, slot) in chain {
        match slot {
            Slot::Absent => {}
            Slot::Handle => spec.notes.push(format!(
                "{path} is a secret handle (ENC[...]); it is never used as a key"
            )),
            Slot::Directive(form) => spec.notes.push(format!(
                "{path} holds a {} directive; it is never used as a key",
                form.describe()
            )),
            Slot::Key(key) => {
                spec.fallback = Some(key.clone());
                spec.fallback_origin = Some(origin(path, *node));
                return;
            }
        }
    }
    if let Some(file) = fallback_file {
        spec.fallback = Some(file.key.clone());
        spec.fallback_origin = Some("fallback_api_key_file".to_owned());
    }
}

/// Inputs shared by every DELA instance.
struct DelaCtx {
    global_region: Option<String>,
    refresh: Duration,
}

/// An inert entry (wire spec §10.2): the instance exists, in state `invalid`, with the problem
/// and its fix, and never serves a key. The problem is also reported, so `check-config` fails.
fn invalid_entry(
    r: &mut Reader<'_>,
    out: &mut Vec<InstanceSpec>,
    name: String,
    form: Option<dela::Form>,
    problem: Problem,
) {
    r.problems.entry_error(problem.clone());
    out.push(InstanceSpec {
        invalid: Some(problem),
        ..instance(name, None, form)
    });
}

/// Turns one directive into an instance; a directive that cannot be one becomes an inert
/// `invalid` instance (every problem with it is reported).
fn dela_instance(
    r: &mut Reader<'_>,
    node: &Node,
    name: String,
    text: &str,
    target: String,
    ctx: &DelaCtx,
    out: &mut Vec<InstanceSpec>,
) {
    let form = dela::form_of(text);
    let written = form.map_or("DELA[...]", |f| match f {
        dela::Form::Bracket => "DELA[...]",
        dela::Form::Paren => "DELA(...)",
    });
    let directive = match dela::parse(text) {
        Ok(d) => d,
        Err(err) => {
            let p = r
                .problem_at(
                    node,
                    &name,
                    format!("malformed {written} directive: {err}"),
                    "write it as DELA[<org_uuid>, aws[, region=<region>][, fallback=<key>]] \
                     (newest Agent) or DELA(<org_uuid>, aws[, ...]) (older Agents), on one line",
                )
                .value(dela::redacted(text));
            invalid_entry(r, out, name, form, p);
            return;
        }
    };
    let mut problems = Vec::new();
    if !is_uuid(&directive.org) {
        problems.push(
            r.problem_at(
                node,
                &name,
                format!("the directive's org `{}` is not a UUID", directive.org),
                format!("put the endpoint org's UUID (8-4-4-4-12 hex digits) first in {written}"),
            )
            .value(dela::redacted(text)),
        );
    }
    if directive.provider != "aws" {
        problems.push(
            r.problem_at(
                node,
                &name,
                format!(
                    "unsupported provider `{}` in {written} directive (only `aws` exists)",
                    directive.provider
                ),
                match directive.form {
                    dela::Form::Bracket => "use DELA[<org_uuid>, aws]",
                    dela::Form::Paren => "use DELA(<org_uuid>, aws)",
                },
            )
            .value(dela::redacted(text)),
        );
    }
    if let Some(region) = &directive.region
        && !is_region(region)
    {
        problems.push(
            r.problem_at(
                node,
                &name,
                format!("region `{region}` is not an AWS region name (lowercase letters, digits and `-`)"),
                "write the region in lowercase, e.g. region=eu-west-1",
            )
            .value(dela::redacted(text)),
        );
    }
    let mut problems = problems.into_iter();
    if let Some(first) = problems.next() {
        for more in problems {
            r.problems.entry_error(more);
        }
        invalid_entry(r, out, name, form, first);
        return;
    }
    let has_fallback = directive.fallback.is_some();
    // The Agent's instance key: the entry's config key and the directive's org (product §6).
    // The name without the org (this daemon's earlier name) stays an alias for one release.
    let alias = name;
    let name = format!("{alias}[{}]", directive.org);
    let delegated = DelegatedSpec {
        org_uuid: directive.org,
        exchange_target: target,
        explicit_target: true,
        region: directive.region.or_else(|| ctx.global_region.clone()),
        refresh_interval: ctx.refresh,
    };
    out.push(InstanceSpec {
        fallback: directive.fallback,
        fallback_origin: has_fallback.then(|| "DELA fallback=".to_owned()),
        aliases: vec![alias],
        ..instance(name, Some(delegated), Some(directive.form))
    });
}

/// `additional_endpoints: {"<domain>": ["key", "DELA[...]"]}`.
fn read_map_shape(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    ctx: &DelaCtx,
    out: &mut Vec<InstanceSpec>,
) {
    let node = r.child(root, "", "additional_endpoints");
    let Some(map) = r.section(node, "additional_endpoints") else {
        return;
    };
    let Value::Map(entries) = &map.value else {
        return;
    };
    for entry in entries {
        let domain = entry.key.trim();
        // Names and messages show the endpoint without its user:password@ (the exchange still
        // uses it).
        let shown = crate::secret::redact_userinfo(domain);
        let base = format!("additional_endpoints[{shown}]");
        let items: Vec<&Node> = match &entry.value.value {
            Value::Null => continue,
            Value::Seq(items) => items.iter().collect(),
            Value::Scalar { text, .. } => {
                if let Some(form) = dela::form_of(text) {
                    let p = r.problem_at(
                        &entry.value,
                        &base,
                        "a DELA directive must be an item of the endpoint's list of keys \
                         (the Agent splits a bare string on spaces and would not see it)",
                        format!("write it as a list: \"{shown}\": [\"DELA[...]\"]"),
                    );
                    invalid_entry(r, out, base, Some(form), p);
                }
                continue;
            }
            Value::Map(_) => {
                let p = r.problem_at(
                    &entry.value,
                    &base,
                    "expected a list of API keys, found a mapping",
                    format!("write it as \"{shown}\": [\"<api_key>\", \"DELA[<org_uuid>, aws]\"]"),
                );
                r.problems.error(p);
                continue;
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let name = format!("{base}[{i}]");
            let text = match &item.value {
                Value::Scalar { text, .. } => text,
                Value::Null => continue,
                _ => {
                    let p = r.problem_at(
                        item,
                        &name,
                        format!("expected an API key string, found {}", item.type_name()),
                        "list API keys (or DELA[...] directives) as plain strings",
                    );
                    r.problems.error(p);
                    continue;
                }
            };
            let Some(form) = dela::form_of(text) else {
                continue;
            };
            if domain.is_empty() {
                let p = r.problem_at(
                    item,
                    &name,
                    "the endpoint has no domain, so the directive has nothing to exchange against",
                    "use the endpoint's URL as the key, e.g. \"https://app.datadoghq.eu\"",
                );
                invalid_entry(r, out, name, Some(form), p);
                continue;
            }
            dela_instance(r, item, name, text, domain.to_owned(), ctx, out);
        }
    }
}

/// `logs_config.additional_endpoints: [{host: ..., api_key: "DELA[...]", port: ..., is_reliable: ...}]`.
fn read_list_shape(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    ctx: &DelaCtx,
    out: &mut Vec<InstanceSpec>,
) {
    let logs_node = r.child(root, "", "logs_config");
    let logs = match logs_node.map(|n| &n.value) {
        Some(Value::Map(_)) => logs_node,
        // A non-mapping logs_config was already reported while reading the product sections.
        _ => None,
    };
    let path = "logs_config.additional_endpoints";
    let Some(list_node) = r.child(logs, "logs_config", "additional_endpoints") else {
        return;
    };
    let items = match &list_node.value {
        Value::Null => return,
        Value::Seq(items) => items,
        _ => {
            let p = r.problem_at(
                list_node,
                path,
                format!(
                    "expected a list of endpoints, found {}",
                    list_node.type_name()
                ),
                "write it as a list of {host, port, api_key} entries",
            );
            r.problems.error(p);
            return;
        }
    };
    // The newest Agent refuses directives on the TCP logs transport ("not supported over
    // TCP"): without use_http or force_use_http, every directive entry is inert.
    let mut http: Option<bool> = None;
    for (i, item) in items.iter().enumerate() {
        // Non-mapping entries (a bare string, an empty item) cannot hold a directive; the Agent
        // keeps them as they are, and so do we.
        if !matches!(item.value, Value::Map(_)) {
            continue;
        }
        let name = format!("{path}[{i}]");
        let key_node = r.child(Some(item), &name, "api_key");
        let Some(text) = r.string(key_node, &format!("{name}.api_key"), true) else {
            continue;
        };
        let Some(form) = dela::form_of(&text) else {
            continue;
        };
        let key_node = key_node.unwrap_or(item);
        let host_node = r.child(Some(item), &name, "host");
        let Some(host) = r.string(host_node, &format!("{name}.host"), false) else {
            let p = r.problem_at(
                item,
                &name,
                "the entry has a DELA directive but no host, so it has nothing to exchange \
                 against",
                "add `host:` with the endpoint's intake host to this entry",
            );
            invalid_entry(r, out, name, Some(form), p);
            continue;
        };
        let over_http = *http.get_or_insert_with(|| {
            let use_http_node = r.child(logs, "logs_config", "use_http");
            let force_node = r.child(logs, "logs_config", "force_use_http");
            let use_http = r
                .boolean(use_http_node, "logs_config.use_http")
                .unwrap_or(false);
            let force = r
                .boolean(force_node, "logs_config.force_use_http")
                .unwrap_or(false);
            use_http || force
        });
        if !over_http {
            let p = r.problem_at(
                key_node,
                &name,
                "delegated auth is not supported over TCP: the logs transport is TCP \
                 (neither logs_config.use_http nor logs_config.force_use_http is set), and the \
                 Agent refuses the directive",
                "set logs_config.force_use_http: true",
            );
            invalid_entry(r, out, name, Some(form), p);
            continue;
        }
        dela_instance(r, key_node, name, &text, host, ctx, out);
    }
}

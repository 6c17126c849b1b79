//! The `access` section: who may read which key.

use serde_saphyr::Spanned;

use super::{AccessRule, Check, IdRef, RawAccessRule, SettingsRead, line};

/// Validates `access`; `Some(None)` is the key with no value (an empty list).
pub(super) fn validate(
    c: &mut Check<'_>,
    raw: Option<&Option<Spanned<Vec<Spanned<RawAccessRule>>>>>,
    out: &mut SettingsRead,
) {
    // `access:` with no value is an empty list: what was written names no reader, so nobody
    // reads (failing closed, as `access: []`), with the same warning.
    let access = raw.map(|rules| match rules {
        Some(rules) => (rules.value.as_slice(), line(rules)),
        None => (&[][..], None),
    });
    if let Some((rules, rules_line)) = access {
        let mut list = Vec::new();
        if rules.is_empty() {
            c.warn(
                "access",
                rules_line,
                "the access list is empty, so every key read will be refused",
                "add rules, or remove `access` to let whoever can open the socket read keys",
            );
        }
        for (i, rule) in rules.iter().enumerate() {
            let key = format!("access[{i}]");
            let r = &rule.value;
            if r.instances.is_empty() {
                c.error(
                    &format!("{key}.instances"),
                    line(rule),
                    "[]",
                    "lists no instance".to_owned(),
                    "list instance names such as api_key, or \"*\" for all",
                );
            }
            let mut lines = Vec::new();
            let mut instances = Vec::new();
            for (j, name) in r.instances.iter().enumerate() {
                let n = name.value.trim();
                if n.is_empty() {
                    c.error(
                        &format!("{key}.instances[{j}]"),
                        line(name),
                        n,
                        "is empty".to_owned(),
                        "write an instance name such as api_key, or \"*\"",
                    );
                    continue;
                }
                instances.push(n.to_owned());
                lines.push(line(name));
            }
            let uids: Vec<IdRef> = r
                .uids
                .iter()
                .enumerate()
                .filter_map(|(j, u)| c.id(u, &format!("{key}.uids[{j}]")))
                .collect();
            let gids: Vec<IdRef> = r
                .gids
                .iter()
                .enumerate()
                .filter_map(|(j, g)| c.id(g, &format!("{key}.gids[{j}]")))
                .collect();
            if r.uids.is_empty() && r.gids.is_empty() {
                c.warn(
                    &key,
                    line(rule),
                    "the rule lists no uids and no gids, so it matches nobody",
                    "add the users (uids) or groups (gids) allowed to read these instances",
                );
            }
            out.access_lines.push(lines);
            list.push(AccessRule {
                instances,
                uids,
                gids,
            });
        }
        out.settings.access = Some(list);
    }
}

//! What a new policy changes, for the audit trail: the rules, `never_block` networks,
//! blocklist entries and trap ports it adds and removes, and the settings it changes, each as
//! a short statement (`allow tcp 8080`, `[scan_detection] threshold 20 -> 30`).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Policy, Proto, Rule, RuleKind};

/// Statements the new policy has and the old did not, the other way round, and settings
/// that differ.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// Blocklist entries named one by one at most, each way; the rest are counted (a reload may
/// swap a list of millions).
const ENTRIES_NAMED: usize = 16;

pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let mut result = PolicyDiff::default();
    let (before, after) = (statements(old), statements(new));
    result.added = after.difference(&before).cloned().collect();
    result.removed = before.difference(&after).cloned().collect();
    let (old_list, new_list): (BTreeSet<_>, BTreeSet<_>) =
        (old.blocklist.iter().collect(), new.blocklist.iter().collect());
    for (list, from, into) in
        [(&mut result.added, &new_list, &old_list), (&mut result.removed, &old_list, &new_list)]
    {
        let entries: Vec<_> = from.difference(into).collect();
        list.extend(entries.iter().take(ENTRIES_NAMED).map(|net| format!("blocklist {net}")));
        if entries.len() > ENTRIES_NAMED {
            list.push(format!("{} more blocklist entries", entries.len() - ENTRIES_NAMED));
        }
    }
    let (before, after) = (settings(old), settings(new));
    for (key, value) in &after {
        match before.iter().find(|(k, _)| k == key) {
            Some((_, was)) if was != value => result.changed.push(format!("{key} {was} -> {value}")),
            None => result.changed.push(format!("{key} {value}")),
            _ => {}
        }
    }
    for (key, was) in &before {
        if !after.iter().any(|(k, _)| k == key) {
            result.changed.push(format!("{key} {was} -> none"));
        }
    }
    // Shown without path and query, two webhooks may look alike.
    if old.alerts.webhook != new.alerts.webhook && old.alerts.webhook_shown() == new.alerts.webhook_shown() {
        let shown = new.alerts.webhook_shown().unwrap_or_default();
        result.changed.push(format!("[alerts] webhook {shown} (another path or token)"));
    }
    result
}

/// The rules, `never_block` networks, feeds and trap ports, one statement each.
fn statements(policy: &Policy) -> BTreeSet<String> {
    let mut all: BTreeSet<String> = policy.rules.iter().map(rule).collect();
    all.extend(policy.never_block.iter().map(|net| format!("never_block {net}")));
    all.extend(policy.feeds.iter().flat_map(|feeds| &feeds.urls).map(|url| format!("blocklist feed {url}")));
    for (proto, ports) in [(Proto::Tcp, &policy.trap_ports.tcp), (Proto::Udp, &policy.trap_ports.udp)] {
        all.extend(ports.iter().map(|range| format!("trap {proto} {}", range_text(range))));
    }
    all
}

/// `allow tcp 22,80 from 198.51.100.0/24 ("admin")`: what the rule does, not where it is
/// written (moving a rule changes nothing).
fn rule(rule: &Rule) -> String {
    let kind = match rule.kind {
        RuleKind::Allow => "allow",
        RuleKind::Deny => "deny",
    };
    let mut ports = rule.ports.clone();
    ports.sort_by_key(|r| (*r.start(), *r.end()));
    let ports = ports.iter().map(range_text).collect::<Vec<_>>().join(",");
    let from = rule
        .from
        .as_ref()
        .map(|nets| format!(" from {}", nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")))
        .unwrap_or_default();
    let limit = rule
        .limit
        .map(|limit| {
            let rate = limit.new_per_source.map(|rate| format!(" limit {rate} burst {}", limit.burst));
            let cap = limit.connections_per_source.map(|cap| format!(" connections {cap}"));
            format!("{}{}", rate.unwrap_or_default(), cap.unwrap_or_default())
        })
        .unwrap_or_default();
    let name = rule.name.as_deref().map(|n| format!(" (\"{n}\")")).unwrap_or_default();
    format!("{kind} {} {ports}{from}{limit}{name}", rule.proto)
}

fn range_text(range: &std::ops::RangeInclusive<u16>) -> String {
    if range.start() == range.end() {
        range.start().to_string()
    } else {
        format!("{}-{}", range.start(), range.end())
    }
}

/// Every other setting as `([section] key, value)`, from the policy's own serialized form (the
/// one `check --json` shows: no credential in it), the webhook shown without its token.
fn settings(policy: &Policy) -> Vec<(String, String)> {
    let mut out = vec![
        ("mode".to_string(), text(&serde_json::to_value(policy.mode).unwrap_or_default())),
        ("default".to_string(), text(&serde_json::to_value(policy.default).unwrap_or_default())),
    ];
    let mut alerts = serde_json::to_value(&policy.alerts).unwrap_or_default();
    alerts["webhook"] = policy.alerts.webhook_shown().map_or(Value::Null, Value::String);
    let sections = [
        ("inbound", serde_json::to_value(&policy.inbound).unwrap_or_default()),
        ("limits", serde_json::to_value(&policy.limits).unwrap_or_default()),
        ("scan_detection", serde_json::to_value(&policy.scan_detection).unwrap_or_default()),
        (
            "trap_ports",
            serde_json::json!({ "block_for": serde_json::to_value(&policy.trap_ports).unwrap_or_default()["block_for"] }),
        ),
        (
            "brute_force",
            policy.brute_force.as_ref().map_or_else(
                || serde_json::json!({ "enabled": false }),
                |b| serde_json::to_value(b).unwrap_or_default(),
            ),
        ),
        ("events", serde_json::to_value(&policy.events).unwrap_or_default()),
        ("evidence", serde_json::to_value(&policy.evidence).unwrap_or_default()),
        ("alerts", alerts),
        ("metrics", serde_json::json!({ "listen": policy.metrics_listen.map(|a| a.to_string()) })),
    ];
    for (section, value) in sections {
        if let Value::Object(map) = value {
            for (key, value) in map {
                if !value.is_null() {
                    out.push((format!("[{section}] {key}"), text(&value)));
                }
            }
        }
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{LoadOptions, parse};

    fn policy(text: &str) -> Policy {
        parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy
    }

    const BASE: &str = "mode = \"enforce\"\ndefault = \"deny\"\n\
        [[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n\
        [[allow]]\nproto = \"tcp\"\nports = [80]\n\
        [blocklist]\nsources = [\"203.0.113.0/24\"]\n\
        [alerts]\nwebhook = \"https://hooks.example/services/TOKEN\"\n";

    #[test]
    fn a_reload_says_what_it_changes() {
        let old = policy(BASE);
        assert_eq!(diff(&old, &old), PolicyDiff::default());
        // The same rules, moved: nothing changed.
        let moved = BASE.replace(
            "[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n[[allow]]\nproto = \"tcp\"\nports = [80]\n",
            "[[allow]]\nproto = \"tcp\"\nports = [80]\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n",
        );
        assert_eq!(diff(&old, &policy(&moved)), PolicyDiff::default());

        let new = policy(
            &(BASE
                .replace("mode = \"enforce\"", "mode = \"monitor\"")
                .replace("ports = [80]", "ports = [80, \"8000-8100\"]")
                .replace("\"203.0.113.0/24\"", "\"203.0.113.0/24\", \"2001:db8:bad::/48\"")
                .replace("TOKEN", "OTHER")
                + "[scan_detection]\nthreshold = 30\n[trap_ports]\ntcp = [2323]\n"),
        );
        let changes = diff(&old, &new);
        assert_eq!(changes.added, ["allow tcp 80,8000-8100", "trap tcp 2323", "blocklist 2001:db8:bad::/48"]);
        assert_eq!(changes.removed, ["allow tcp 80"]);
        // A limit added to a rule is the rule changed.
        let limited =
            policy(&BASE.replace("ports = [80]\n", "ports = [80]\nlimit = { new_per_source = \"5/10s\" }\n"));
        let limit_changes = diff(&old, &limited);
        assert_eq!(limit_changes.added, ["allow tcp 80 limit 5/10s burst 5"]);
        assert_eq!(limit_changes.removed, ["allow tcp 80"]);
        assert!(changes.changed.contains(&"mode enforce -> monitor".to_string()), "{changes:?}");
        assert!(changes.changed.contains(&"[scan_detection] threshold 20 -> 30".to_string()), "{changes:?}");
        assert!(
            changes
                .changed
                .iter()
                .chain(&changes.added)
                .all(|c| !c.contains("TOKEN") && !c.contains("OTHER")),
            "no webhook token in the trail: {changes:?}"
        );
        assert!(
            changes
                .changed
                .contains(&"[alerts] webhook https://hooks.example/… (another path or token)".to_string()),
            "{changes:?}"
        );
    }

    #[test]
    fn big_blocklist_swaps_are_counted() {
        let list = |from: u32| {
            (from..from + 100)
                .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
                .collect::<Vec<_>>()
                .join(",")
        };
        let old = policy(&format!("default = \"allow\"\n[blocklist]\nsources = [{}]\n", list(0)));
        let new = policy(&format!("default = \"allow\"\n[blocklist]\nsources = [{}]\n", list(50)));
        let changes = diff(&old, &new);
        assert_eq!(changes.added.len(), ENTRIES_NAMED + 1);
        assert_eq!(changes.added.last().unwrap(), &format!("{} more blocklist entries", 50 - ENTRIES_NAMED));
        assert_eq!(changes.removed.len(), ENTRIES_NAMED + 1);
    }
}

//! What the sections say together: rules that overlap, blocklists that cover never_block,
//! automatic blocks open to forged sources, a default deny that leaves something open or
//! closes SSH.

use std::{collections::BTreeMap, ops::RangeInclusive};

use ipnet::IpNet;
use toml::Spanned;

use super::super::{
    Action, Inbound, Proto, Response, Rule, RuleKind, ScanDetection, TrapPorts,
    diagnostic::{Reporter, Severity},
    raw::RawPolicy,
};

/// Who decides a port, per protocol: the rules that name it.
#[derive(Default, Clone)]
struct PortOwners {
    allow_any: Option<usize>,
    allow_from: Option<usize>,
    deny: Option<usize>,
}

/// Reports rules that name the same port: allow and deny together is an error (which one
/// wins would be a guess); two allows, or an allow that makes a `from` list moot, are warnings.
pub(super) fn check_overlaps(report: &mut Reporter, rules: &[Rule]) {
    // (first rule, second rule, proto) -> ports they share, reported as ranges.
    let mut conflicts: BTreeMap<(usize, usize, Proto), Vec<u16>> = BTreeMap::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        let mut owners = vec![PortOwners::default(); 65536];
        for (index, rule) in rules.iter().enumerate().filter(|(_, r)| r.proto == proto) {
            for range in &rule.ports {
                for port in range.clone() {
                    let owner = &mut owners[port as usize];
                    // Sources of several `from` allows add up: no overlap to report there.
                    let shares_with = match (rule.kind, rule.from.is_some()) {
                        (RuleKind::Allow, true) => owner.deny.or(owner.allow_any),
                        _ => owner.deny.or(owner.allow_any).or(owner.allow_from),
                    };
                    if let Some(other) = shares_with.filter(|&other| other != index) {
                        conflicts.entry((other, index, proto)).or_default().push(port);
                    }
                    let slot = match (rule.kind, rule.from.is_some()) {
                        (RuleKind::Deny, _) => &mut owner.deny,
                        (RuleKind::Allow, false) => &mut owner.allow_any,
                        (RuleKind::Allow, true) => &mut owner.allow_from,
                    };
                    slot.get_or_insert(index);
                }
            }
        }
    }
    for ((first, second, proto), ports) in conflicts {
        let (a, b) = (&rules[first], &rules[second]);
        let ports = describe_ports(&ports);
        let line = b.line;
        match (a.kind, b.kind) {
            (RuleKind::Allow, RuleKind::Deny) | (RuleKind::Deny, RuleKind::Allow) => {
                let (allow, deny) = if a.kind == RuleKind::Allow { (a, b) } else { (b, a) };
                report.at_line(
                    Severity::Error,
                    line,
                    format!(
                        "{proto} {ports} allowed by {} and denied by {}: a port can only be one; \
                         remove it from one of the rules",
                        allow.label(),
                        deny.label()
                    ),
                );
            }
            (RuleKind::Deny, RuleKind::Deny) => report.at_line(
                Severity::Warning,
                line,
                format!("{proto} {ports} denied twice, by {} and {}", a.label(), b.label()),
            ),
            (RuleKind::Allow, RuleKind::Allow) => {
                let (open, limited) = match (a.from.is_some(), b.from.is_some()) {
                    (false, true) => (Some(a), Some(b)),
                    (true, false) => (Some(b), Some(a)),
                    _ => (None, None),
                };
                match (open, limited) {
                    (Some(open), Some(limited)) => report.at_line(
                        Severity::Warning,
                        line,
                        format!(
                            "{proto} {ports}: {} admits every source, so the `from` list of {} \
                             has no effect there",
                            open.label(),
                            limited.label()
                        ),
                    ),
                    _ => report.at_line(
                        Severity::Warning,
                        line,
                        format!("{proto} {ports} allowed twice, by {} and {}", a.label(), b.label()),
                    ),
                }
            }
        }
    }
}

/// `port 22` or `ports 8000-8100`.
pub(super) fn describe_range(range: &RangeInclusive<u16>) -> String {
    if range.start() == range.end() {
        format!("port {}", range.start())
    } else {
        format!("ports {}-{}", range.start(), range.end())
    }
}

/// `port 22`, `ports 80, 443, 8000-8100` (first few ranges).
fn describe_ports(ports: &[u16]) -> String {
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for &port in ports {
        match ranges.last_mut() {
            Some((_, high)) if u32::from(*high) + 1 == u32::from(port) => *high = port,
            _ => ranges.push((port, port)),
        }
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(5)
        .map(|&(l, h)| if l == h { l.to_string() } else { format!("{l}-{h}") })
        .collect();
    let more =
        if ranges.len() > 5 { format!(" and {} more ranges", ranges.len() - 5) } else { String::new() };
    let noun = if ports.len() == 1 { "port" } else { "ports" };
    format!("{noun} {}{more}", shown.join(", "))
}

pub(super) fn check_blocklist_against_never_block(
    report: &mut Reporter,
    raw: &RawPolicy,
    blocklist: &[IpNet],
    never_block: &[IpNet],
) {
    if never_block.is_empty() || blocklist.is_empty() {
        return;
    }
    for (index, keep) in never_block.iter().enumerate() {
        if let Some(blocked) = blocklist.iter().find(|b| b.contains(keep) || keep.contains(*b)) {
            report.warning_at(
                raw.never_block[index].span(),
                format!("never_block {keep} overlaps blocklist entry {blocked}: never_block wins"),
            );
        }
    }
}

fn admits_ssh(rules: &[Rule]) -> bool {
    rules.iter().any(|r| {
        r.kind == RuleKind::Allow && r.proto == Proto::Tcp && r.ports.iter().any(|p| p.contains(&22))
    })
}

/// Automatic blocks act on source addresses nobody verified: a forged probe (nmap's decoys,
/// `-S`) gets the forged address blocked. `never_block` is what keeps the admin's and the
/// peers' addresses safe from that.
pub(super) fn check_spoofable_blocks(
    report: &mut Reporter,
    raw: &RawPolicy,
    scan: &ScanDetection,
    traps: &TrapPorts,
    never_block: &[IpNet],
) {
    if !never_block.is_empty() {
        return;
    }
    let what = match (scan.action == Response::Block, !traps.is_empty()) {
        (true, true) => "scan_detection action = \"block\" and trap ports",
        (true, false) => "scan_detection action = \"block\"",
        (false, true) => "trap ports",
        (false, false) => return,
    };
    let span = raw
        .scan_detection
        .as_ref()
        .and_then(|s| s.action.as_ref().map(Spanned::span))
        .or_else(|| raw.trap_ports.as_ref().and_then(|t| t.tcp.first().or(t.udp.first()).map(Spanned::span)))
        .unwrap_or(0..0);
    report.warning_at(
        span,
        format!(
            "{what} with an empty never_block: probes with forged source addresses can get any \
             address blocked, your admin's and your peers' included; list them in never_block"
        ),
    );
}

/// Warnings about what `default = "deny"` leaves open or closes by accident.
pub(super) fn check_defaults(
    report: &mut Reporter,
    raw: &RawPolicy,
    default: Action,
    inbound: &Inbound,
    rules: &[Rule],
) {
    // Written out as "allow", it is a choice; left at the default, most likely an oversight.
    let other_protocols_written = raw.inbound.as_ref().is_some_and(|i| i.other_protocols.is_some());
    if default == Action::Deny && inbound.other_protocols == Action::Allow && !other_protocols_written {
        report.warning_at(
            raw.default.as_ref().map(Spanned::span).unwrap_or(0..0),
            "default deny leaves other IP protocols (SCTP, GRE, ...) allowed: ports are only \
             judged for TCP and UDP, so a protocol scan passes unseen (set [inbound] \
             other_protocols = \"deny\", or \"allow\" if the host needs one)",
        );
    }

    if default == Action::Deny && !admits_ssh(rules) {
        report.warning_at(
            raw.default.as_ref().map(Spanned::span).unwrap_or(0..0),
            "default deny and no rule allows tcp port 22: attached on a remote host, this policy \
             cuts off SSH (add an [[allow]] for port 22, limited with `from` to your admin network)",
        );
    }
}

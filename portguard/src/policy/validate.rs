//! From `RawPolicy` (what was written) to `Policy` (what it means), reporting every problem with
//! its line: unknown keys, bad values, and rules that overlap or contradict each other.

use std::{
    collections::BTreeMap,
    ops::{Range, RangeInclusive},
    path::Path,
    time::Duration,
};

use ipnet::IpNet;
use toml::{Spanned, Value};

use super::{
    Action, BlocklistSource, Events, Inbound, Limits, LoadOptions, Loaded, Mode, Policy, Proto, Response,
    Rule, RuleKind, ScanDetection, TcpNonSyn, TrapPorts,
    diagnostic::{Diagnostic, PolicyErrors, Reporter, Severity},
    raw::{
        RawBlocklist, RawEvents, RawInbound, RawLimits, RawMetrics, RawPolicy, RawRule, RawScanDetection,
        RawTrapPorts,
    },
    sources::{parse_net_strict, read_source_file},
};

pub fn validate(text: &str, path: &Path, options: LoadOptions) -> Result<Loaded, PolicyErrors> {
    let mut report = Reporter::new(path.to_owned(), text);
    let raw: RawPolicy = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            report.error_at(span, toml_message(&error));
            return Err(PolicyErrors { diagnostics: report.diagnostics });
        }
    };

    let mode = match &raw.mode {
        None => Mode::Enforce,
        Some(mode) => match mode.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "monitor" => Mode::Monitor,
            other => {
                report.error_at(
                    mode.span(),
                    format!("mode must be \"enforce\" or \"monitor\", not \"{other}\""),
                );
                Mode::Enforce
            }
        },
    };
    let default = match &raw.default {
        None => {
            report.warning_at(
                0..0,
                "no `default` given: ports no rule names are allowed (write default = \"deny\" \
                 to close them)",
            );
            Action::Allow
        }
        Some(value) => action(&mut report, value, "default", "allow", "deny"),
    };

    let rules = rules(&mut report, &raw.allow, &raw.deny);
    check_overlaps(&mut report, &rules);

    let never_block = nets(&mut report, &raw.never_block);
    let (blocklist, blocklist_sources) = blocklist(&mut report, raw.blocklist.as_ref(), path, options);
    check_blocklist_against_never_block(&mut report, &raw, &blocklist, &never_block);

    let inbound = inbound(&mut report, raw.inbound.as_ref());
    let limits = limits(&mut report, raw.limits.as_ref());
    let scan_detection = scan_detection(&mut report, raw.scan_detection.as_ref());
    let trap_ports = trap_ports(&mut report, raw.trap_ports.as_ref(), &rules);
    let events = events(&mut report, raw.events.as_ref());
    let alerts = super::alerts::alerts(&mut report, raw.alerts.as_ref(), path);
    let metrics_listen = metrics_listen(&mut report, raw.metrics.as_ref());

    check_spoofable_blocks(&mut report, &raw, &scan_detection, &trap_ports, &never_block);
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

    if default == Action::Deny && !admits_ssh(&rules) {
        report.warning_at(
            raw.default.as_ref().map(Spanned::span).unwrap_or(0..0),
            "default deny and no rule allows tcp port 22: attached on a remote host, this policy \
             cuts off SSH (add an [[allow]] for port 22, limited with `from` to your admin network)",
        );
    }

    if report.has_errors() {
        return Err(PolicyErrors { diagnostics: report.diagnostics });
    }
    Ok(Loaded {
        policy: Policy {
            path: path.to_owned(),
            mode,
            default,
            rules,
            never_block,
            blocklist,
            blocklist_sources,
            inbound,
            limits,
            scan_detection,
            trap_ports,
            events,
            alerts,
            metrics_listen,
        },
        warnings: report.diagnostics,
    })
}

/// toml's messages carry their own rendering of the line; keep only the sentence.
fn toml_message(error: &toml::de::Error) -> String {
    let message = error.message().trim().to_string();
    if message.starts_with("unknown field") {
        format!("{message} (check the key's spelling and the table it is in)")
    } else {
        message
    }
}

fn action(report: &mut Reporter, value: &Spanned<String>, key: &str, allow: &str, deny: &str) -> Action {
    match value.get_ref().as_str() {
        v if v == allow => Action::Allow,
        v if v == deny => Action::Deny,
        other => {
            report
                .error_at(value.span(), format!("{key} must be \"{allow}\" or \"{deny}\", not \"{other}\""));
            Action::Deny
        }
    }
}

fn rules(report: &mut Reporter, allow: &[Spanned<RawRule>], deny: &[Spanned<RawRule>]) -> Vec<Rule> {
    let mut all: Vec<(RuleKind, &Spanned<RawRule>)> =
        allow.iter().map(|r| (RuleKind::Allow, r)).chain(deny.iter().map(|r| (RuleKind::Deny, r))).collect();
    // Number rules in the order they appear in the file, allow and deny alike.
    all.sort_by_key(|(_, r)| r.span().start);
    if all.len() > u16::MAX as usize {
        report.error_at(0..0, format!("{} rules is more than the {} supported", all.len(), u16::MAX));
        return Vec::new();
    }
    all.into_iter().enumerate().filter_map(|(i, (kind, raw))| rule(report, i as u16 + 1, kind, raw)).collect()
}

fn rule(report: &mut Reporter, number: u16, kind: RuleKind, raw: &Spanned<RawRule>) -> Option<Rule> {
    let span = raw.span();
    let raw = raw.get_ref();
    let proto = match raw.proto.get_ref().as_str() {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        "icmp" | "icmpv6" => {
            report.error_at(
                raw.proto.span(),
                format!(
                    "rules take proto \"tcp\" or \"udp\"; {} is set with `{}` in [inbound]",
                    raw.proto.get_ref(),
                    raw.proto.get_ref()
                ),
            );
            None
        }
        other => {
            report.error_at(raw.proto.span(), format!("proto must be \"tcp\" or \"udp\", not \"{other}\""));
            None
        }
    };
    let mut ports = Vec::new();
    if raw.ports.get_ref().is_empty() {
        report.error_at(raw.ports.span(), "ports is empty: list at least one port or range");
    }
    for item in raw.ports.get_ref() {
        if let Some(range) = port_range(report, item) {
            ports.push(range);
        }
    }
    let from = match &raw.from {
        None => None,
        Some(from) if kind == RuleKind::Deny => {
            report.error_at(
                from.span(),
                "deny rules take no `from`: deny the port for everyone, or allow it `from` the \
                 sources that may use it",
            );
            None
        }
        Some(from) if from.get_ref().is_empty() => {
            report.error_at(
                from.span(),
                "from is empty, so the rule admits nobody: list sources or remove `from`",
            );
            None
        }
        Some(from) => Some(nets(report, from.get_ref())),
    };
    let name = raw.name.as_ref().map(|n| n.get_ref().clone());
    Some(Rule { number, kind, name, proto: proto?, ports, from, line: report.line_of(span.start) })
}

fn port_range(report: &mut Reporter, item: &Spanned<Value>) -> Option<RangeInclusive<u16>> {
    let span = item.span();
    match item.get_ref() {
        Value::Integer(port) => port_number(report, span, *port).map(|p| p..=p),
        Value::String(text) => {
            let Some((low, high)) = text.split_once('-') else {
                return match text.trim().parse::<i64>() {
                    Ok(port) => port_number(report, span, port).map(|p| p..=p),
                    Err(_) => {
                        report.error_at(
                            span,
                            format!("\"{text}\" is not a port or a range like \"8000-8100\""),
                        );
                        None
                    }
                };
            };
            let (Ok(low), Ok(high)) = (low.trim().parse::<i64>(), high.trim().parse::<i64>()) else {
                report.error_at(span, format!("\"{text}\" is not a port range like \"8000-8100\""));
                return None;
            };
            let low = port_number(report, span.clone(), low)?;
            let high = port_number(report, span.clone(), high)?;
            if low > high {
                report.error_at(span, format!("range \"{text}\" runs backwards; write \"{high}-{low}\""));
                return None;
            }
            Some(low..=high)
        }
        other => {
            report.error_at(
                span,
                format!("a port is a number or a \"low-high\" string, not {}", other.type_str()),
            );
            None
        }
    }
}

fn port_number(report: &mut Reporter, span: Range<usize>, port: i64) -> Option<u16> {
    match u16::try_from(port) {
        Ok(0) => {
            report.error_at(span, "port 0 is not a real destination port (valid ports are 1-65535)");
            None
        }
        Ok(port) => Some(port),
        Err(_) => {
            report.error_at(span, format!("port {port} is out of range (valid ports are 1-65535)"));
            None
        }
    }
}

fn nets(report: &mut Reporter, items: &[Spanned<String>]) -> Vec<IpNet> {
    items
        .iter()
        .filter_map(|item| match parse_net_strict(item.get_ref()) {
            Ok(net) => Some(net),
            Err(reason) => {
                report.error_at(item.span(), reason);
                None
            }
        })
        .collect()
}

/// Who decides a port, per protocol: the rules that name it.
#[derive(Default, Clone)]
struct PortOwners {
    allow_any: Option<usize>,
    allow_from: Option<usize>,
    deny: Option<usize>,
}

/// Reports rules that name the same port: allow and deny together is an error (which one
/// wins would be a guess); two allows, or an allow that makes a `from` list moot, are warnings.
fn check_overlaps(report: &mut Reporter, rules: &[Rule]) {
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
fn describe_range(range: &RangeInclusive<u16>) -> String {
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

fn blocklist(
    report: &mut Reporter,
    raw: Option<&RawBlocklist>,
    policy_path: &Path,
    options: LoadOptions,
) -> (Vec<IpNet>, Vec<BlocklistSource>) {
    let Some(raw) = raw else {
        return (Vec::new(), Vec::new());
    };
    let mut entries = nets(report, &raw.sources);
    let mut sources = Vec::new();
    if !raw.sources.is_empty() {
        sources.push(BlocklistSource { file: None, entries: entries.len(), bad_lines: 0 });
    }
    let base = policy_path.parent().unwrap_or(Path::new("."));
    for file in &raw.files {
        let path = base.join(file.get_ref());
        let list = match read_source_file(&path) {
            Ok(list) => list,
            Err(error) => {
                report
                    .error_at(file.span(), format!("cannot read blocklist file {}: {error}", path.display()));
                continue;
            }
        };
        let severity = if options.strict { Severity::Error } else { Severity::Warning };
        const SHOWN: usize = 20;
        for bad in list.bad_lines.iter().take(SHOWN) {
            report.push_external(Diagnostic {
                severity,
                file: path.clone(),
                line: bad.line,
                column: 1,
                message: format!("{} (line skipped)", bad.reason),
            });
        }
        if list.bad_lines.len() > SHOWN {
            report.push_external(Diagnostic {
                severity,
                file: path.clone(),
                line: 0,
                column: 0,
                message: format!("{} more bad lines skipped", list.bad_lines.len() - SHOWN),
            });
        }
        sources.push(BlocklistSource {
            file: Some(path.clone()),
            entries: list.entries.len(),
            bad_lines: list.bad_lines.len(),
        });
        entries.extend(list.entries);
    }
    (entries, sources)
}

fn check_blocklist_against_never_block(
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

pub(super) fn duration(report: &mut Reporter, value: &Spanned<String>, key: &str) -> Option<Duration> {
    match crate::durations::parse(value.get_ref(), Duration::ZERO) {
        Ok(duration) => Some(duration),
        Err(error) => {
            report.error_at(value.span(), format!("{key} = \"{}\" {error}", value.get_ref()));
            None
        }
    }
}

fn inbound(report: &mut Reporter, raw: Option<&RawInbound>) -> Inbound {
    let mut inbound = Inbound::default();
    let Some(raw) = raw else {
        return inbound;
    };
    let pass_drop = |report: &mut Reporter, value: &Option<Spanned<String>>, key: &str, current: Action| {
        value.as_ref().map_or(current, |v| action(report, v, key, "pass", "drop"))
    };
    inbound.malformed = pass_drop(report, &raw.malformed, "malformed", inbound.malformed);
    inbound.fragments_unseen =
        pass_drop(report, &raw.fragments_unseen, "fragments_unseen", inbound.fragments_unseen);
    let allow_deny = |report: &mut Reporter, value: &Option<Spanned<String>>, key: &str, current: Action| {
        value.as_ref().map_or(current, |v| action(report, v, key, "allow", "deny"))
    };
    inbound.icmp = allow_deny(report, &raw.icmp, "icmp", inbound.icmp);
    inbound.icmpv6 = allow_deny(report, &raw.icmpv6, "icmpv6", inbound.icmpv6);
    inbound.other_protocols =
        allow_deny(report, &raw.other_protocols, "other_protocols", inbound.other_protocols);
    if let Some(value) = &raw.tcp_non_syn {
        inbound.tcp_non_syn = match value.get_ref().as_str() {
            "track" => TcpNonSyn::Track,
            "pass" => TcpNonSyn::Pass,
            other => {
                report.error_at(
                    value.span(),
                    format!("tcp_non_syn must be \"track\" or \"pass\", not \"{other}\""),
                );
                TcpNonSyn::Track
            }
        };
    }
    if let Some(value) = &raw.fragment_timeout {
        inbound.fragment_timeout =
            duration(report, value, "fragment_timeout").unwrap_or(inbound.fragment_timeout);
    }
    if let Some(value) = &raw.udp_reply_window {
        inbound.udp_reply_window =
            duration(report, value, "udp_reply_window").unwrap_or(inbound.udp_reply_window);
    }
    inbound
}

fn limits(report: &mut Reporter, raw: Option<&RawLimits>) -> Limits {
    let mut limits = Limits::default();
    let Some(raw) = raw else {
        return limits;
    };
    let mut size = |value: &Option<Spanned<i64>>, key: &str, current: u32| -> u32 {
        let Some(value) = value else { return current };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if (1024..=16_777_216).contains(&n) => n,
            _ => {
                report.error_at(value.span(), format!("{key} must be between 1024 and 16777216 entries"));
                current
            }
        }
    };
    limits.flows = size(&raw.flows, "flows", limits.flows);
    limits.fragments = size(&raw.fragments, "fragments", limits.fragments);
    limits.sources = size(&raw.sources, "sources", limits.sources);
    limits.auto_blocks = size(&raw.auto_blocks, "auto_blocks", limits.auto_blocks);
    limits.manual_blocks = size(&raw.manual_blocks, "manual_blocks", limits.manual_blocks);
    limits.blocklist = size(&raw.blocklist, "blocklist", limits.blocklist);
    if let Some(value) = &raw.new_blocks_per_second {
        limits.new_blocks_per_second = integer_in(report, value, "new_blocks_per_second", 1..=1_000_000)
            .unwrap_or(limits.new_blocks_per_second);
    }
    limits
}

/// Automatic blocks act on source addresses nobody verified: a forged probe (nmap's decoys,
/// `-S`) gets the forged address blocked. `never_block` is what keeps the admin's and the
/// peers' addresses safe from that.
fn check_spoofable_blocks(
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

fn response(report: &mut Reporter, value: &Spanned<String>) -> Response {
    match value.get_ref().as_str() {
        "off" => Response::Off,
        "alert" => Response::Alert,
        "block" => Response::Block,
        other => {
            report.error_at(
                value.span(),
                format!("action must be \"alert\", \"block\" or \"off\", not \"{other}\""),
            );
            Response::Alert
        }
    }
}

pub(super) fn integer_in(
    report: &mut Reporter,
    value: &Spanned<i64>,
    key: &str,
    range: RangeInclusive<i64>,
) -> Option<u32> {
    if range.contains(value.get_ref()) {
        Some(*value.get_ref() as u32)
    } else {
        report.error_at(
            value.span(),
            format!("{key} = {} is out of range ({}-{})", value.get_ref(), range.start(), range.end()),
        );
        None
    }
}

fn scan_detection(report: &mut Reporter, raw: Option<&RawScanDetection>) -> ScanDetection {
    let mut scan = ScanDetection::default();
    let Some(raw) = raw else {
        return scan;
    };
    // The kernel keeps a 512-bit keyed-hash port set per window and corrects for collisions:
    // exact enough up to 256 ports.
    let thresholds = 2..=i64::from(ScanDetection::MAX_THRESHOLD);
    if let Some(value) = &raw.threshold {
        scan.threshold = integer_in(report, value, "threshold", thresholds.clone()).unwrap_or(scan.threshold);
    }
    scan.slow_threshold = ScanDetection::default_slow_threshold(scan.threshold);
    if let Some(value) = &raw.slow_threshold {
        if *value.get_ref() == 0 {
            scan.slow_threshold = 0;
        } else {
            scan.slow_threshold = integer_in(report, value, "slow_threshold (0: off)", thresholds)
                .unwrap_or(scan.slow_threshold);
        }
    }
    if let Some(value) = &raw.window {
        scan.window = duration(report, value, "window").unwrap_or(scan.window);
    }
    if let Some(value) = &raw.slow_window {
        scan.slow_window = duration(report, value, "slow_window").unwrap_or(scan.slow_window);
    }
    if scan.slow_threshold != 0 && scan.slow_window <= scan.window {
        let span = raw.slow_window.as_ref().or(raw.window.as_ref()).map(Spanned::span).unwrap_or(0..0);
        report.error_at(
            span,
            format!(
                "slow_window ({}) must be longer than window ({}), or set slow_threshold = 0",
                crate::durations::format(scan.slow_window),
                crate::durations::format(scan.window)
            ),
        );
    }
    if let Some(value) = &raw.ipv6_prefix {
        scan.ipv6_prefix = integer_in(report, value, "ipv6_prefix", 32..=128).unwrap_or(64) as u8;
    }
    if let Some(value) = &raw.action {
        scan.action = response(report, value);
    }
    if let Some(value) = &raw.block_for {
        scan.block_for = duration(report, value, "block_for").unwrap_or(scan.block_for);
        if scan.action != Response::Block {
            report.warning_at(value.span(), "block_for has no effect unless action = \"block\"");
        }
    }
    scan
}

fn trap_ports(report: &mut Reporter, raw: Option<&RawTrapPorts>, rules: &[Rule]) -> TrapPorts {
    let mut traps = TrapPorts::default();
    let Some(raw) = raw else {
        return traps;
    };
    for (proto, items, list) in
        [(Proto::Tcp, &raw.tcp, &mut traps.tcp), (Proto::Udp, &raw.udp, &mut traps.udp)]
    {
        for item in items {
            let Some(range) = port_range(report, item) else {
                continue;
            };
            // A trap on a port the policy opens would block the service's own clients.
            let open = rules.iter().find(|r| {
                r.kind == RuleKind::Allow
                    && r.proto == proto
                    && r.ports.iter().any(|p| p.start() <= range.end() && range.start() <= p.end())
            });
            if let Some(rule) = open {
                report.error_at(
                    item.span(),
                    format!(
                        "trap {proto} {} is opened by {}: a trap blocks everyone who connects; \
                         remove the port from one of them",
                        describe_range(&range),
                        rule.label()
                    ),
                );
                continue;
            }
            list.push(range);
        }
    }
    if let Some(value) = &raw.block_for {
        traps.block_for = duration(report, value, "block_for").unwrap_or(traps.block_for);
    }
    traps
}

fn events(report: &mut Reporter, raw: Option<&RawEvents>) -> Events {
    let mut events = Events::default();
    let Some(raw) = raw else {
        return events;
    };
    if let Some(value) = &raw.drop_events_per_second {
        events.drop_events_per_second = integer_in(report, value, "drop_events_per_second", 0..=100_000)
            .unwrap_or(events.drop_events_per_second);
    }
    if let Some(value) = &raw.ring_buffer_kib {
        let kib = integer_in(report, value, "ring_buffer_kib", 4..=65536);
        match kib {
            // The kernel wants a power of two number of pages.
            Some(kib) if kib.is_power_of_two() => events.ring_buffer_kib = kib,
            Some(kib) => report.error_at(
                value.span(),
                format!("ring_buffer_kib = {kib} must be a power of two (4, 8, ..., 65536)"),
            ),
            None => {}
        }
    }
    events
}

fn metrics_listen(report: &mut Reporter, raw: Option<&RawMetrics>) -> Option<std::net::SocketAddr> {
    let value = raw?.listen.as_ref()?;
    match value.get_ref().parse::<std::net::SocketAddr>() {
        Ok(address) => {
            if !address.ip().is_loopback() {
                report.warning_at(
                    value.span(),
                    format!("metrics on {address} can be read beyond this host (127.0.0.1 keeps them local)"),
                );
            }
            Some(address)
        }
        Err(_) => {
            report.error_at(
                value.span(),
                format!("listen = \"{}\" is not an address:port like 127.0.0.1:9464", value.get_ref()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::parse;

    const EXAMPLE: &str = include_str!("../../../examples/policy.toml");

    fn errors(text: &str) -> Vec<String> {
        match parse(text, Path::new("p.toml"), LoadOptions::default()) {
            Ok(loaded) => panic!("accepted: {:?}", loaded.policy.summary()),
            Err(errors) => errors.errors().map(ToString::to_string).collect(),
        }
    }

    fn warnings(text: &str) -> Vec<String> {
        let loaded = parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap();
        loaded.warnings.iter().map(ToString::to_string).collect()
    }

    #[track_caller]
    fn assert_one(list: &[String], expected: &str) {
        assert!(list.iter().any(|e| e.contains(expected)), "{expected:?} not in {list:#?}");
    }

    #[test]
    fn the_example_is_accepted_as_written() {
        let loaded = parse(EXAMPLE, Path::new("policy.toml"), LoadOptions::default()).unwrap();
        let policy = loaded.policy;
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.default, Action::Deny);
        assert_eq!(policy.rules.len(), 4);
        assert_eq!(policy.rules[0].ports, vec![80..=80, 443..=443, 8000..=8100]);
        assert_eq!(policy.rules[0].line, 5);
        assert_eq!(policy.rules[1].from.as_ref().unwrap().len(), 2);
        assert_eq!(policy.rules[3].kind, RuleKind::Deny);
        assert_eq!(policy.blocklist.len(), 2);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn alerts_and_metrics() {
        let text = "default = \"deny\"\n[alerts]\nwebhook = \"https://hooks.example.net/portguard\"\nexec = \"/bin/true\"\ntimeout = \"2s\"\nretries = 0\nmax_per_minute = 10\n[metrics]\nlisten = \"127.0.0.1:9100\"\n";
        let loaded = parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap();
        let alerts = &loaded.policy.alerts;
        assert_eq!(alerts.webhook.as_deref(), Some("https://hooks.example.net/portguard"));
        assert_eq!(alerts.exec.as_deref(), Some("/bin/true"));
        assert_eq!((alerts.timeout, alerts.retries, alerts.max_per_minute), (Duration::from_secs(2), 0, 10));
        assert_eq!(loaded.policy.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));

        let list = errors(
            "[alerts]\nwebhook = \"ftp://x\"\nexec = \"notify.sh\"\nretries = 11\nmax_per_minute = 0\n[metrics]\nlisten = \"localhost\"\n",
        );
        assert_one(&list, "p.toml:2:11: error: webhook = \"ftp://x\" is not an http:// or https:// URL");
        assert_one(&list, "p.toml:3:8: error: exec must be an absolute path to a program");
        assert_one(&list, "p.toml:4:11: error: retries");
        assert_one(&list, "p.toml:5:18: error: max_per_minute");
        assert_one(&list, "p.toml:7:10: error: listen = \"localhost\" is not an address:port");
        assert_one(
            &errors("[alerts]\nwebhok = \"https://x\"\n"),
            "p.toml:2:1: error: unknown field `webhok`",
        );
        assert_one(&warnings("[metrics]\nlisten = \"0.0.0.0:9464\"\n"), "can be read beyond this host");
    }

    #[test]
    fn an_exec_program_others_can_change_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let program = tempfile::NamedTempFile::new().unwrap();
        std::fs::set_permissions(program.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let text = format!("[alerts]\nexec = \"{}\"\n", program.path().display());
        assert_one(&errors(&text), "is writable by group or others, and it would run as root");
        std::fs::set_permissions(program.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let loaded = parse(&text, Path::new("p.toml"), LoadOptions::default()).unwrap();
        assert_eq!(loaded.policy.alerts.exec.as_deref(), program.path().to_str());
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let list = errors("mode = \"enforce\"\n[[allow]]\nproto = \"tcp\"\nport = [80]\n");
        assert_one(&list, "p.toml:4:1: error: unknown field `port`");
        let list = errors("modes = \"enforce\"\n");
        assert_one(&list, "p.toml:1:1: error: unknown field `modes`");
    }

    #[test]
    fn bad_ports() {
        let list = errors(
            "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [80, 70000, \"9-8\", \"x\", 0, true]\n",
        );
        assert_one(&list, "p.toml:4:14: error: port 70000 is out of range (valid ports are 1-65535)");
        assert_one(&list, "p.toml:4:21: error: range \"9-8\" runs backwards");
        assert_one(&list, "p.toml:4:28: error: \"x\" is not a port");
        assert_one(&list, "p.toml:4:33: error: port 0 is not a real destination port");
        assert_one(&list, "p.toml:4:36: error: a port is a number or a \"low-high\" string, not boolean");
        assert_one(&errors("[[allow]]\nproto = \"tcp\"\nports = []\n"), "p.toml:3:9: error: ports is empty");
        assert_one(
            &errors("[[allow]]\nproto = \"tcp\"\nports = [\"1-99999\"]\n"),
            "port 99999 is out of range",
        );
    }

    #[test]
    fn bad_values() {
        assert_one(
            &errors("mode = \"block\"\n"),
            "p.toml:1:8: error: mode must be \"enforce\" or \"monitor\", not \"block\"",
        );
        assert_one(&errors("default = \"drop\"\n"), "default must be \"allow\" or \"deny\", not \"drop\"");
        assert_one(
            &errors("[[allow]]\nproto = \"sctp\"\nports = [1]\n"),
            "p.toml:2:9: error: proto must be \"tcp\" or \"udp\"",
        );
        assert_one(
            &errors("[[allow]]\nproto = \"icmp\"\nports = [1]\n"),
            "icmp is set with `icmp` in [inbound]",
        );
        assert_one(&errors("[inbound]\nmalformed = \"allow\"\n"), "malformed must be \"pass\" or \"drop\"");
        assert_one(
            &errors("[inbound]\nudp_reply_window = \"soon\"\n"),
            "udp_reply_window = \"soon\" is not a duration",
        );
        assert_one(&errors("[limits]\nflows = 10\n"), "flows must be between 1024 and 16777216");
        assert_one(&errors("mode = 3\n"), "p.toml:1:8: error: invalid type: integer `3`, expected a string");
        assert_one(&errors("mode = \"enforce\"\n[[allow]\n"), "p.toml:2");
    }

    #[test]
    fn bad_networks() {
        let list = errors(
            "[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.7/24\", \"300.1.1.1\", \"2001:db8::/129\"]\n",
        );
        assert_one(
            &list,
            "p.toml:4:9: error: `198.51.100.7/24` has bits set past its prefix length; the network is 198.51.100.0/24",
        );
        assert_one(&list, "p.toml:4:28: error: `300.1.1.1` is not an IP address or network");
        assert_one(&list, "p.toml:4:41: error: `2001:db8::/129` is not a network");
        assert_one(
            &errors("[blocklist]\nsources = [\"bad\"]\n"),
            "p.toml:2:12: error: `bad` is not an IP address",
        );
        assert_one(&errors("never_block = [\"10.0.0.0/33\"]\n"), "is not a network");
        assert_one(&errors("[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = []\n"), "from is empty");
        assert_one(
            &errors("[[deny]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"192.0.2.0/24\"]\n"),
            "deny rules take no `from`",
        );
    }

    #[test]
    fn contradictions_are_errors_overlaps_are_warnings() {
        let contradiction = "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [\"20-25\", 80]\n\n[[deny]]\nname = \"legacy\"\nproto = \"tcp\"\nports = [23, 24, 80]\n";
        assert_one(
            &errors(contradiction),
            "p.toml:6:1: error: tcp ports 23-24, 80 allowed by rule 1 (line 2) and denied by rule 2 \"legacy\" (line 6)",
        );
        // The same port on another protocol is no conflict.
        let fine = "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22, 53]\n[[deny]]\nproto = \"udp\"\nports = [53]\n[inbound]\nother_protocols = \"allow\"\n";
        assert!(warnings(fine).is_empty());
        let moot = "default = \"allow\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"192.0.2.0/24\"]\n[[allow]]\nproto = \"tcp\"\nports = [\"1-1024\"]\n";
        assert_one(
            &warnings(moot),
            "tcp port 22: rule 2 (line 6) admits every source, so the `from` list of rule 1 (line 2) has no effect there",
        );
        let twice = "default = \"allow\"\n[[allow]]\nproto = \"udp\"\nports = [53]\n[[allow]]\nproto = \"udp\"\nports = [\"50-60\"]\n";
        assert_one(&warnings(twice), "udp port 53 allowed twice, by rule 1 (line 2) and rule 2 (line 5)");
        let sources_add_up = "default = \"allow\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"192.0.2.0/24\"]\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n";
        assert!(warnings(sources_add_up).is_empty());
    }

    #[test]
    fn scan_detection_settings() {
        let scan = |text: &str| {
            parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy.scan_detection
        };
        let defaults = scan("default = \"allow\"\n");
        assert_eq!((defaults.threshold, defaults.slow_threshold, defaults.ipv6_prefix), (20, 40, 64));
        assert_eq!(defaults.slow_window, Duration::from_secs(300));
        // The long window's threshold follows the short one's unless written.
        assert_eq!(scan("default = \"allow\"\n[scan_detection]\nthreshold = 200\n").slow_threshold, 256);
        let written = scan(
            "default = \"allow\"\n[scan_detection]\nthreshold = 10\nslow_threshold = 0\nipv6_prefix = 128\n",
        );
        assert_eq!((written.threshold, written.slow_threshold, written.ipv6_prefix), (10, 0, 128));
        assert_one(
            &errors("[scan_detection]\nwindow = \"10m\"\n"),
            "p.toml:2:10: error: slow_window (5m) must be longer than window (10m), or set slow_threshold = 0",
        );
        assert_one(
            &errors("[scan_detection]\nipv6_prefix = 16\n"),
            "ipv6_prefix = 16 is out of range (32-128)",
        );
        assert_one(&errors("[scan_detection]\nslow_threshold = 1\n"), "out of range (2-256)");
        assert_one(
            &errors("[limits]\nnew_blocks_per_second = 0\n"),
            "new_blocks_per_second = 0 is out of range",
        );
    }

    #[test]
    fn warnings_about_spoofing_and_protocol_scans() {
        // Blocking on unverified sources with nobody protected.
        assert_one(
            &warnings("default = \"allow\"\n[scan_detection]\naction = \"block\"\n"),
            "p.toml:3:10: warning: scan_detection action = \"block\" with an empty never_block: probes with forged source addresses can get any address blocked",
        );
        assert_one(
            &warnings("default = \"allow\"\n[trap_ports]\ntcp = [23]\n"),
            "trap ports with an empty never_block",
        );
        assert!(
            warnings("default = \"allow\"\nnever_block = [\"198.51.100.0/24\"]\n[trap_ports]\ntcp = [23]\n")
                .is_empty()
        );
        // Default deny judges ports, not protocols: a protocol scan would pass unseen.
        let open_protocols = "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\n";
        assert_one(
            &warnings(open_protocols),
            "default deny leaves other IP protocols (SCTP, GRE, ...) allowed",
        );
        assert!(warnings(&format!("{open_protocols}[inbound]\nother_protocols = \"allow\"\n")).is_empty());
    }

    #[test]
    fn lockout_and_never_block_warnings() {
        assert_one(
            &warnings("default = \"deny\"\n[inbound]\nother_protocols = \"allow\"\n"),
            "no rule allows tcp port 22",
        );
        assert_one(&warnings("mode = \"enforce\"\n"), "no `default` given");
        let overlap = "default = \"allow\"\nnever_block = [\"203.0.113.0/28\"]\n[blocklist]\nsources = [\"203.0.113.0/24\"]\n";
        assert_one(
            &warnings(overlap),
            "p.toml:2:16: warning: never_block 203.0.113.0/28 overlaps blocklist entry 203.0.113.0/24: never_block wins",
        );
    }

    #[test]
    fn blocklist_files_are_read_relative_to_the_policy() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("bad.txt"), "203.0.113.9\nnonsense\n# comment\n2001:db8:bad::/48 ; SBL1\n")
            .unwrap();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, "default = \"allow\"\n[blocklist]\nfiles = [\"bad.txt\", \"missing.txt\"]\n")
            .unwrap();
        let errors = crate::policy::load(&policy, LoadOptions::default()).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("policy.toml:3:21: error: cannot read blocklist file"), "{text}");
        assert!(text.contains("bad.txt:2:1: warning: `nonsense` is not an IP address"), "{text}");

        std::fs::write(&policy, "default = \"allow\"\n[blocklist]\nfiles = [\"bad.txt\"]\n").unwrap();
        let loaded = crate::policy::load(&policy, LoadOptions::default()).unwrap();
        assert_eq!(loaded.policy.blocklist.len(), 2);
        assert_eq!(loaded.warnings.len(), 1);
        let strict = crate::policy::load(&policy, LoadOptions { strict: true }).unwrap_err();
        assert!(strict.to_string().contains("bad.txt:2:1: error:"), "{strict}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portguard-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! Each table of the policy, from what was written to what it means.

use std::{path::Path, time::Duration};

use ipnet::IpNet;
use portguard_common::{events::EVIDENCE_MAX_SNAPLEN, maps::MAX_LIMITED_RULES};
use toml::Spanned;

use super::super::{
    Action, BlocklistSource, BruteForce, Events, Evidence, Inbound, Limits, LoadOptions, Proto, Rate,
    Response, Rule, RuleKind, ScanDetection, SourceLimit, TcpNonSyn, TrapPorts,
    diagnostic::{Diagnostic, Reporter, Severity},
    raw::{
        RawBlocklist, RawBruteForce, RawEvents, RawEvidence, RawInbound, RawLimits, RawMetrics, RawRule,
        RawScanDetection, RawSourceLimit, RawTrapPorts,
    },
};
use super::{
    PolicyFiles,
    lints::describe_range,
    values::{action, duration, integer_in, nets, port_range, response},
};

pub(super) fn rules(
    report: &mut Reporter,
    allow: &[Spanned<RawRule>],
    deny: &[Spanned<RawRule>],
) -> Vec<Rule> {
    let mut all: Vec<(RuleKind, &Spanned<RawRule>)> =
        allow.iter().map(|r| (RuleKind::Allow, r)).chain(deny.iter().map(|r| (RuleKind::Deny, r))).collect();
    // Number rules in the order they appear in the file, allow and deny alike.
    all.sort_by_key(|(_, r)| r.span().start);
    if all.len() > u16::MAX as usize {
        report.error_at(0..0, format!("{} rules is more than the {} supported", all.len(), u16::MAX));
        return Vec::new();
    }
    let rules: Vec<Rule> = all
        .into_iter()
        .enumerate()
        .filter_map(|(i, (kind, raw))| rule(report, i as u16 + 1, kind, raw))
        .collect();
    if let Some(rule) = rules.iter().filter(|r| r.limit.is_some()).nth(MAX_LIMITED_RULES as usize) {
        report.at_line(
            Severity::Error,
            rule.line,
            format!(
                "{} is the {}th rule with a limit: at most {MAX_LIMITED_RULES} rules may carry one",
                rule.label(),
                MAX_LIMITED_RULES + 1
            ),
        );
    }
    rules
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
    let limit = match &raw.limit {
        None => None,
        Some(limit) if kind == RuleKind::Deny => {
            report
                .error_at(limit.span(), "deny rules take no `limit`: a limit applies to what a rule allows");
            None
        }
        Some(limit) => source_limit(report, limit, proto),
    };
    let name = raw.name.as_ref().map(|n| n.get_ref().clone());
    Some(Rule { number, kind, name, proto: proto?, ports, from, limit, line: report.line_of(span.start) })
}

/// Most attempts a rate may name per period, and the largest burst.
const MAX_RATE_COUNT: i64 = 1_000_000;

/// Most connections a source may be allowed to hold on one rule.
const MAX_CONNECTIONS_PER_SOURCE: i64 = 1_000_000;

fn source_limit(
    report: &mut Reporter,
    raw: &Spanned<RawSourceLimit>,
    proto: Option<Proto>,
) -> Option<SourceLimit> {
    let limit = raw.get_ref();
    if limit.new_per_source.is_none() && limit.connections_per_source.is_none() {
        report.error_at(
            raw.span(),
            "limit needs new_per_source or connections_per_source, e.g. limit = { new_per_source = \"5/10s\" }",
        );
        return None;
    }
    let rate = match &limit.new_per_source {
        None => {
            if let Some(burst) = &limit.burst {
                report.error_at(
                    burst.span(),
                    "burst needs new_per_source: it is the size of the rate's bucket",
                );
                return None;
            }
            None
        }
        Some(rate) => Some(self::rate(report, rate)?),
    };
    let burst = match (&limit.burst, rate) {
        (Some(value), Some(_)) => integer_in(report, value, "burst", 1..=MAX_RATE_COUNT)?,
        (_, Some(rate)) => rate.count,
        (_, None) => 0,
    };
    let connections_per_source = match &limit.connections_per_source {
        None => None,
        Some(value) if proto == Some(Proto::Udp) => {
            report.error_at(
                value.span(),
                "connections_per_source needs proto = \"tcp\": UDP has no connections to count (limit \
                 its datagrams with new_per_source)",
            );
            return None;
        }
        Some(value) => {
            Some(integer_in(report, value, "connections_per_source", 1..=MAX_CONNECTIONS_PER_SOURCE)?)
        }
    };
    Some(SourceLimit { new_per_source: rate, burst, connections_per_source })
}

/// `"COUNT/PERIOD"`: `"5/10s"`, `"20/s"`, `"100/1m"`.
fn rate(report: &mut Reporter, value: &Spanned<String>) -> Option<Rate> {
    let text = value.get_ref().trim();
    let wrong = |report: &mut Reporter, why: &str| {
        report.error_at(
            value.span(),
            format!("new_per_source = \"{text}\" {why}: write COUNT/PERIOD, like \"5/10s\" or \"20/s\""),
        );
    };
    let Some((count, per)) = text.split_once('/') else {
        wrong(report, "has no `/`");
        return None;
    };
    let count = match count.trim().parse::<i64>() {
        Ok(count) if (1..=MAX_RATE_COUNT).contains(&count) => count as u32,
        _ => {
            wrong(report, &format!("needs a count from 1 to {MAX_RATE_COUNT} before the `/`"));
            return None;
        }
    };
    let per = per.trim();
    // "20/s" means one second.
    let per_text =
        if per.starts_with(|c: char| c.is_ascii_alphabetic()) { format!("1{per}") } else { per.to_string() };
    let per = match crate::durations::parse(&per_text, Duration::from_millis(1)) {
        Ok(per) if per <= Duration::from_secs(7 * 24 * 3600) => per,
        Ok(_) => {
            wrong(report, "has a period longer than a week");
            return None;
        }
        Err(error) => {
            wrong(report, &format!("has a period that {error}"));
            return None;
        }
    };
    if per / count < Duration::from_micros(1) {
        wrong(report, "is more than a million per second");
        return None;
    }
    Some(Rate { count, per })
}

pub(super) fn blocklist(
    report: &mut Reporter,
    raw: Option<&RawBlocklist>,
    policy_path: &Path,
    options: LoadOptions,
    files: &dyn PolicyFiles,
) -> (Vec<IpNet>, Vec<BlocklistSource>) {
    let Some(raw) = raw else {
        return (Vec::new(), Vec::new());
    };
    let mut entries = nets(report, &raw.sources);
    let mut sources = Vec::new();
    if !raw.sources.is_empty() {
        sources.push(BlocklistSource { file: None, feed: None, entries: entries.len(), bad_lines: 0 });
    }
    let base = policy_path.parent().unwrap_or(Path::new("."));
    for file in &raw.files {
        let path = base.join(file.get_ref());
        let list = match files.blocklist(&path) {
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
            feed: None,
            entries: list.entries.len(),
            bad_lines: list.bad_lines.len(),
        });
        entries.extend(list.entries);
    }
    (entries, sources)
}

pub(super) fn inbound(report: &mut Reporter, raw: Option<&RawInbound>) -> Inbound {
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

pub(super) fn limits(report: &mut Reporter, raw: Option<&RawLimits>) -> Limits {
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
    limits.limited_sources = size(&raw.limited_sources, "limited_sources", limits.limited_sources);
    limits.connected_sources = size(&raw.connected_sources, "connected_sources", limits.connected_sources);
    limits.connections = size(&raw.connections, "connections", limits.connections);
    limits.port_sources = size(&raw.port_sources, "port_sources", limits.port_sources);
    if let Some(value) = &raw.new_blocks_per_second {
        limits.new_blocks_per_second = integer_in(report, value, "new_blocks_per_second", 1..=1_000_000)
            .unwrap_or(limits.new_blocks_per_second);
    }
    limits
}

pub(super) fn scan_detection(report: &mut Reporter, raw: Option<&RawScanDetection>) -> ScanDetection {
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

pub(super) fn trap_ports(report: &mut Reporter, raw: Option<&RawTrapPorts>, rules: &[Rule]) -> TrapPorts {
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

pub(super) fn brute_force(
    report: &mut Reporter,
    raw: Option<&RawBruteForce>,
    rules: &[Rule],
) -> Option<BruteForce> {
    let raw = raw?;
    let mut brute = BruteForce::default();
    if let Some(value) = &raw.after {
        brute.after = integer_in(report, value, "after", 1..=1_000_000).unwrap_or(brute.after);
    }
    // `duration` refuses zero.
    let mut read = |value: &Option<Spanned<String>>, key: &str, current: Duration| -> Duration {
        value.as_ref().and_then(|value| duration(report, value, key)).unwrap_or(current)
    };
    brute.within = read(&raw.within, "within", brute.within);
    brute.block_for = read(&raw.block_for, "block_for", brute.block_for);
    brute.recidive_within = read(&raw.recidive_within, "recidive_within", brute.recidive_within);
    brute.max_block_for = read(&raw.max_block_for, "max_block_for", brute.max_block_for);
    if brute.max_block_for < brute.block_for {
        let span = raw.max_block_for.as_ref().or(raw.block_for.as_ref()).map(Spanned::span).unwrap_or(0..0);
        report.error_at(
            span,
            format!(
                "max_block_for ({}) must be at least block_for ({})",
                crate::durations::format(brute.max_block_for),
                crate::durations::format(brute.block_for)
            ),
        );
    }
    if !rules.iter().any(|rule| rule.limit.is_some()) {
        report.warning_at(
            0..0,
            "[brute_force] has no effect: no [[allow]] rule carries a limit (limit = { new_per_source = ... })",
        );
    }
    Some(brute)
}

pub(super) fn events(report: &mut Reporter, raw: Option<&RawEvents>) -> Events {
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
    journal(report, raw, &mut events);
    events
}

/// `journal_kib` and `journal_file_kib`: the total must hold the file being written and at
/// least one rotated one, or be 0 (no journal).
fn journal(report: &mut Reporter, raw: &RawEvents, events: &mut Events) {
    if let Some(value) = &raw.journal_file_kib {
        events.journal_file_kib =
            integer_in(report, value, "journal_file_kib", 16..=1_048_576).unwrap_or(events.journal_file_kib);
    }
    if let Some(value) = &raw.journal_kib {
        if let Some(kib) = integer_in(report, value, "journal_kib", 0..=16_777_216) {
            events.journal_kib = kib;
        }
    }
    let total = events.journal_kib;
    // The defaults fit: only a value written in the policy can be pointed at.
    let written = raw.journal_kib.as_ref().or(raw.journal_file_kib.as_ref());
    if let Some(value) = written.filter(|_| total != 0 && total / 2 < events.journal_file_kib) {
        report.error_at(
            value.span(),
            format!(
                "journal_kib = {total} must be 0 (no journal) or at least twice journal_file_kib ({}): \
                 the file being written and one rotated file",
                events.journal_file_kib
            ),
        );
    }
}

/// `[evidence]`: how many packets of each automatic block are kept, how much of each, for how
/// long after the block, and the room the files may take.
pub(super) fn evidence(report: &mut Reporter, raw: Option<&RawEvidence>) -> Evidence {
    let mut evidence = Evidence::default();
    let Some(raw) = raw else {
        return evidence;
    };
    // The kernel counts a block's packets in a byte.
    if let Some(value) = &raw.packets_per_source {
        evidence.packets_per_source =
            integer_in(report, value, "packets_per_source", 0..=255).unwrap_or(evidence.packets_per_source);
    }
    if let Some(value) = &raw.snaplen {
        evidence.snaplen = integer_in(report, value, "snaplen", 0..=i64::from(EVIDENCE_MAX_SNAPLEN))
            .unwrap_or(evidence.snaplen);
    }
    if let Some(value) = &raw.capture_for {
        evidence.capture_for = duration(report, value, "capture_for").unwrap_or(evidence.capture_for);
    }
    if let Some(value) = &raw.total_kib {
        evidence.total_kib =
            integer_in(report, value, "total_kib", 0..=16_777_216).unwrap_or(evidence.total_kib);
    }
    evidence
}

pub(super) fn metrics_listen(
    report: &mut Reporter,
    raw: Option<&RawMetrics>,
) -> Option<std::net::SocketAddr> {
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

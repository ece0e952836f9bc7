//! The report for a terminal: coverage first (a window the journal does not cover is said
//! before anything else), then the totals, the busiest moments, the sources, networks and
//! ports, the blocks and the changes.

use super::Report;
use crate::{
    durations,
    output::{count, group, table},
    printable,
};

/// Busiest timeline buckets listed.
const BUSIEST: usize = 5;
/// Marked moments listed.
const MARKS: usize = 20;

pub fn render(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!(
        "portguard report{}: {} from {} to {}",
        report.host.as_deref().map(|h| format!(" for {h}")).unwrap_or_default(),
        report.interfaces.join(", "),
        report.since,
        report.until
    ));
    out.push(String::new());
    if report.coverage.complete {
        out.push("Coverage: the journal covers the whole window.".into());
    } else {
        out.push("Coverage: INCOMPLETE: the journal does not cover all of the window:".into());
        for gap in &report.coverage.gaps {
            out.push(format!("  {}: {}", gap.interface, gap.gap.describe()));
        }
        if report.coverage.unreadable_lines > 0 {
            out.push(format!(
                "  {} could not be read",
                count(report.coverage.unreadable_lines, "line", "lines")
            ));
        }
    }
    let t = &report.totals;
    out.push(String::new());
    out.push(format!(
        "Events: {} ({} drop events, sampled{}; {} scans, {} automatic blocks, {} manual blocks, {} unblocks, \
         {} trap hits, {} anomalies, {} policy changes) from {}",
        group(t.events),
        group(t.drop_events),
        if t.would_drop_events > 0 { format!(", {} in monitor mode", group(t.would_drop_events)) } else { String::new() },
        t.scans,
        t.automatic_blocks,
        t.manual_blocks,
        t.unblocks,
        t.trap_hits,
        t.anomalies,
        t.policy_changes,
        count(t.distinct_sources, "source", "sources"),
    ));
    busiest(report, &mut out);
    if !report.sources.is_empty() {
        out.push(String::new());
        out.push("Top sources:".into());
        let rows: Vec<Vec<String>> = report
            .sources
            .iter()
            .map(|s| {
                vec![
                    s.source.clone(),
                    group(s.events),
                    group(s.drop_events),
                    s.scans.to_string(),
                    if s.blocked { "yes".into() } else { "-".into() },
                    format!("{} ({} distinct)", s.ports.join(" "), s.distinct_ports),
                    s.reasons.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", "),
                ]
            })
            .collect();
        out.extend(indent(table(
            &["SOURCE", "EVENTS", "DROPS", "SCANS", "BLOCKED", "PORTS TRIED", "WHY"],
            &rows,
        )));
    }
    if !report.networks.is_empty() {
        out.push(String::new());
        out.push("Top networks:".into());
        let rows: Vec<Vec<String>> = report
            .networks
            .iter()
            .map(|n| {
                vec![
                    n.network.clone(),
                    n.sources.to_string(),
                    group(n.events),
                    group(n.drop_events),
                    n.blocked_sources.to_string(),
                    n.ports.join(" "),
                ]
            })
            .collect();
        out.extend(indent(table(
            &["NETWORK", "SOURCES", "EVENTS", "DROPS", "BLOCKED", "PORTS TRIED"],
            &rows,
        )));
    }
    if !report.ports.is_empty() {
        out.push(String::new());
        out.push("Most targeted ports (drop events):".into());
        let rows: Vec<Vec<String>> = report
            .ports
            .iter()
            .map(|p| vec![format!("{}/{}", p.protocol, p.port), group(p.drop_events), p.sources.to_string()])
            .collect();
        out.extend(indent(table(&["PORT", "DROPS", "SOURCES"], &rows)));
    }
    out.push(String::new());
    if report.blocks.is_empty() {
        out.push("Blocks: none in the window.".into());
    } else {
        out.push("Blocks:".into());
        let rows: Vec<Vec<String>> = report
            .blocks
            .iter()
            .map(|b| {
                let cause = match (b.origin, &b.cause) {
                    ("manual", Some(reason)) => format!("by hand: {reason}"),
                    ("manual", None) => "by hand".into(),
                    (_, cause) => {
                        let mut text = cause.clone().unwrap_or_else(|| "automatic".into());
                        if let Some(kind) = &b.scan_kind {
                            text.push_str(&format!(" ({kind}"));
                            if let Some(ports) = b.distinct_ports {
                                text.push_str(&format!(", {ports} ports"));
                            }
                            text.push(')');
                        }
                        text
                    }
                };
                vec![
                    b.network.clone(),
                    b.at.clone().unwrap_or_else(|| "before the window".into()),
                    format!("{cause}{}", if b.monitor_only { " [monitor: not enforced]" } else { "" }),
                    b.by.clone().unwrap_or_else(|| "-".into()),
                    b.duration_text(),
                    format!(
                        "{}{}",
                        b.ended,
                        b.ended_at.as_deref().map(|t| format!(" at {t}")).unwrap_or_default()
                    ),
                    b.lasted_text(),
                ]
            })
            .collect();
        out.extend(indent(table(&["NETWORK", "AT", "CAUSE", "BY", "FOR", "ENDED", "LASTED"], &rows)));
        let evidence: Vec<String> = report
            .blocks
            .iter()
            .filter_map(|b| {
                let file = b.evidence.as_ref()?;
                let gone =
                    if file.kept { "" } else { " (deleted since, to stay within [evidence] total_kib)" };
                Some(format!("  {} at {}: {}{gone}", b.network, b.at.as_deref().unwrap_or("-"), file.path))
            })
            .collect();
        if !evidence.is_empty() {
            out.push("Evidence (pcap files of the blocked sources' first packets; `portguard verify POLICY FILE` replays one):".into());
            out.extend(evidence);
        }
    }
    if !report.anomalies.is_empty() {
        out.push(String::new());
        out.push("Anomalies (ports that departed from their baselines):".into());
        for anomaly in &report.anomalies {
            out.push(format!("  {} {}: {}", anomaly.time, anomaly.interface, anomaly.summary));
        }
    }
    out.push(String::new());
    if report.changes.is_empty() {
        out.push("Policy and attachment changes: none in the window.".into());
    } else {
        out.push("Policy and attachment changes:".into());
        for change in &report.changes {
            out.push(format!("  {} {} {}: {}", change.time, change.interface, change.event, change.summary));
        }
    }
    // Everything here may carry text from the wire or a command line.
    out.into_iter().map(|line| printable(&line).into_owned()).collect()
}

fn busiest(report: &Report, out: &mut Vec<String>) {
    let mut buckets: Vec<(&str, u64)> =
        report.timeline.buckets.iter().map(|b| (b.time.as_str(), b.drops.values().sum::<u64>())).collect();
    buckets.retain(|(_, n)| *n > 0);
    buckets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if buckets.is_empty() {
        return;
    }
    out.push(String::new());
    out.push(format!("Busiest {} (drop events):", durations::format_secs(report.timeline.bucket_secs)));
    for (time, drops) in buckets.into_iter().take(BUSIEST) {
        out.push(format!("  {time}  {}", group(drops)));
    }
    if !report.timeline.marks.is_empty() {
        out.push("Marked moments:".into());
        for mark in report.timeline.marks.iter().take(MARKS) {
            out.push(format!("  {}  {}", mark.time, mark.label));
        }
        if report.timeline.marks.len() > MARKS {
            out.push(format!("  and {} more (--json lists them all)", report.timeline.marks.len() - MARKS));
        }
    }
}

fn indent(lines: Vec<String>) -> impl Iterator<Item = String> {
    lines.into_iter().map(|line| format!("  {line}"))
}

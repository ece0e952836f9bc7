//! `portguard stats [IFACE]`: verdict counters, detections, automatic blocks and the most
//! dropped ports.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use portguard::{
    blocks::{ActiveBlock, active_blocks},
    crowdsec::PullStatus,
    durations,
    feeds::FeedStatus,
    limits::{self, LimitReport},
    maps::{Counters, PinnedMaps, PortCount, top_ports},
    output::{self, Tone, count, group, noun, paint},
    state::RunState,
    system,
};
use portguard_common::{Reason, counters::*};
use serde_json::{Value, json};

use portguard::attachment::{self, WhenNone};

struct Snapshot {
    counters: Counters,
    /// Drop events held back by the rate limits (per-CPU budget).
    suppressed: u64,
    port_drops: Vec<u64>,
    blocks: Vec<ActiveBlock>,
    /// The per-source rate limits (`Err`: why they could not be read).
    limits: Result<LimitReport, String>,
    /// `[crowdsec]`: how the loader's pulls from the LAPI go.
    crowdsec: Option<PullStatus>,
    /// `[anomaly]`: what the loader's baselines know.
    baseline: Option<portguard::baseline::Summary>,
    /// `[blocklist] urls`: how the loader's fetches of each feed go.
    feeds: Vec<FeedStatus>,
    at: Instant,
    /// The wall clock when it was taken, for people and JSON.
    time: SystemTime,
}

impl Snapshot {
    fn take(iface: &str, maps: &PinnedMaps) -> Result<Self> {
        let limits = match RunState::read(iface) {
            Some(state) => limits::report(iface, &state.limited_rules, state.generation)
                .map_err(|error| format!("{error:#}")),
            None => Err("no record of the attachment's policy".to_string()),
        };
        Ok(Self {
            limits,
            crowdsec: PullStatus::read(iface),
            baseline: portguard::state::read_status(&portguard::paths::baseline_status(iface)),
            feeds: FeedStatus::read_all(iface),
            counters: maps.counters()?,
            suppressed: portguard::events::suppressed(&maps.event_budget),
            port_drops: maps.port_drops.snapshot(),
            blocks: active_blocks(&maps.auto_blocks),
            at: Instant::now(),
            time: SystemTime::now(),
        })
    }
}

/// How many automatic blocks the text lists (`--json` lists all).
const BLOCKS_SHOWN: usize = 50;

pub fn run(iface: Option<&str>, json: bool, interval: Option<Duration>, top: usize) -> Result<ExitCode> {
    system::require_root_to_look("portguard stats")?;
    let interfaces = attachment::select(iface, WhenNone::Refuse)?;
    let maps: Vec<(String, PinnedMaps)> =
        interfaces.iter().map(|i| Ok((i.clone(), PinnedMaps::open(i)?))).collect::<Result<_>>()?;
    // On a terminal each round replaces the last (as watch(1) does); into a pipe or a file
    // they follow each other, each headed by its time.
    let redraw = interval.is_some() && !json && output::redraws();
    let mut previous: Option<Vec<Snapshot>> = None;
    loop {
        let current: Vec<Snapshot> = maps.iter().map(|(i, m)| Snapshot::take(i, m)).collect::<Result<_>>()?;
        let mut frame = String::new();
        if let (Some(interval), false) = (interval, json) {
            let when = humantime::format_rfc3339_seconds(current[0].time);
            let every = durations::format(interval);
            let heading = format!("portguard stats at {when}, every {every} (Ctrl-C stops)");
            let _ = writeln!(frame, "{}\n", paint(Tone::Heading, heading));
        }
        for (index, (iface, _)) in maps.iter().enumerate() {
            let before = previous.as_ref().map(|p| &p[index]);
            if json {
                let _ = writeln!(frame, "{}", to_json(iface, &current[index], before, top));
            } else {
                frame.push_str(&render(iface, &current[index], before, top));
            }
        }
        let mut stdout = std::io::stdout().lock();
        if redraw {
            write!(stdout, "{}", output::CLEAR_SCREEN)?;
        } else if previous.is_some() && !json {
            writeln!(stdout)?;
        }
        stdout.write_all(frame.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        let Some(interval) = interval else {
            return Ok(ExitCode::SUCCESS);
        };
        previous = Some(current);
        std::thread::sleep(interval);
    }
}

/// One interface's counters for people; rates when there is an earlier snapshot.
fn render(iface: &str, now: &Snapshot, before: Option<&Snapshot>, top: usize) -> String {
    let mut out = String::new();
    let seconds = before.map(|b| now.at.duration_since(b.at).as_secs_f64()).filter(|s| *s > 0.0);
    let delta = before.map(|b| now.counters.since(&b.counters));
    let ports = top_ports(&now.port_drops, top);
    let c = &now.counters;
    let total = c.total();
    let _ = writeln!(
        out,
        "{iface}: {} ({}): {} passed, {} dropped, {} would drop (monitor)",
        count(total.packets, "packet", "packets"),
        count(total.bytes, "byte", "bytes"),
        group(c.passed().packets),
        group(c.dropped().packets),
        group(c.monitored().packets)
    );
    if let (Some(delta), Some(seconds)) = (&delta, seconds) {
        let _ = writeln!(
            out,
            "  rate: {:.0} pkt/s in, {:.0} pkt/s dropped",
            delta.total().packets as f64 / seconds,
            delta.dropped().packets as f64 / seconds
        );
    }
    let mut row = |verb: &str, tone: Tone, reason: Reason, packets: u64, bytes: u64| {
        let _ = writeln!(
            out,
            "  {:<11} {:<20} {:>14} {:<7} {:>16} {}",
            paint(tone, verb),
            reason.name(),
            group(packets),
            noun(packets, "packet", "packets"),
            group(bytes),
            noun(bytes, "byte", "bytes")
        );
    };
    for reason in ALL_REASONS {
        let (applied, would) = (c.applied(reason), c.would_drop(reason));
        if applied.packets > 0 {
            let (verb, tone) = if reason.is_drop() { ("dropped", Tone::Bad) } else { ("passed", Tone::Good) };
            row(verb, tone, reason, applied.packets, applied.bytes);
        }
        if would.packets > 0 {
            row("would drop", Tone::Caution, reason, would.packets, would.bytes);
        }
    }
    for observation in OBSERVATIONS {
        let count = c.slot(observation.slot).packets;
        if count > 0 {
            let _ = writeln!(out, "  {}: {}", observation.text, group(count));
        }
    }
    if now.suppressed > 0 {
        let _ = writeln!(out, "  drop events held back by the rate limit: {}", group(now.suppressed));
    }
    if !ports.is_empty() {
        let list: Vec<String> =
            ports.iter().map(|p| format!("{}/{} {}", p.protocol, p.port, group(p.drops))).collect();
        let _ = writeln!(out, "  top dropped ports: {}", list.join(", "));
    }
    match &now.limits {
        Ok(report) if report.rules.is_empty() => {}
        Ok(report) => {
            let connected = report
                .sources_connected
                .map(|n| format!(", {} holding connections", count(n, "source", "sources")))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  per-source limits ({} tracked{connected}):",
                count(report.tracked_sources, "source budget", "source budgets")
            );
            for rule in &report.rules {
                if let Some(rate) = &rule.rule.new_per_source {
                    let _ = writeln!(
                        out,
                        "    {} ({rate} per source, burst {}): {} refused since loaded",
                        rule.rule.label(),
                        rule.rule.burst,
                        group(rule.limited)
                    );
                }
                if let (Some(cap), Some(refused)) =
                    (rule.rule.connections_per_source, rule.connection_limited)
                {
                    let _ = writeln!(
                        out,
                        "    {} ({cap} open per source): {} refused since loaded, {} open from {}",
                        rule.rule.label(),
                        group(refused),
                        group(rule.connections_open.unwrap_or(0)),
                        count(rule.sources_connected.unwrap_or(0), "source", "sources")
                    );
                }
            }
        }
        Err(error) => {
            let _ = writeln!(out, "  per-source limits: unknown ({error})");
        }
    }
    if let Some(known) = &now.baseline {
        let _ = writeln!(out, "  {}", baseline_line(known));
    }
    if let Some(status) = &now.crowdsec {
        let _ = writeln!(out, "  {}", crowdsec_line(status, portguard::state::now_unix()));
    }
    for feed in &now.feeds {
        let _ = writeln!(out, "  {}", feed_line(feed, portguard::state::now_unix()));
    }
    if !now.blocks.is_empty() {
        let _ = writeln!(out, "  automatic blocks ({}):", group(now.blocks.len() as u64));
        let rows: Vec<Vec<String>> = now
            .blocks
            .iter()
            .take(BLOCKS_SHOWN)
            .map(|block| {
                vec![
                    block.shown(),
                    block.cause.to_string(),
                    block.detail(),
                    format!("{} left", durations::format_secs(block.remaining_secs)),
                ]
            })
            .collect();
        for line in output::table(&["source", "cause", "detail", "time left"], &rows) {
            let _ = writeln!(out, "    {line}");
        }
        if now.blocks.len() > BLOCKS_SHOWN {
            let _ = writeln!(
                out,
                "    ... and {} more (--json lists all)",
                group((now.blocks.len() - BLOCKS_SHOWN) as u64)
            );
        }
    }
    out
}

fn to_json(iface: &str, now: &Snapshot, before: Option<&Snapshot>, top: usize) -> Value {
    let seconds = before.map(|b| now.at.duration_since(b.at).as_secs_f64()).filter(|s| *s > 0.0);
    let delta = before.map(|b| now.counters.since(&b.counters));
    let ports: Vec<PortCount> = top_ports(&now.port_drops, top);
    let c = &now.counters;
    let reasons: Vec<Value> = ALL_REASONS
        .iter()
        .flat_map(|reason| {
            let applied = c.applied(*reason);
            let would = c.would_drop(*reason);
            let mut rows = vec![reason_json(*reason, "applied", applied.packets, applied.bytes)];
            if reason.is_drop() {
                rows.push(reason_json(*reason, "would_drop", would.packets, would.bytes));
            }
            rows
        })
        .collect();
    let total = c.total();
    let rates = match (&delta, seconds) {
        (Some(d), Some(s)) => json!({
            "packets_per_second": d.total().packets as f64 / s,
            "dropped_per_second": d.dropped().packets as f64 / s,
        }),
        _ => Value::Null,
    };
    let mut observations: serde_json::Map<String, Value> =
        OBSERVATIONS.iter().map(|o| (o.name.to_string(), json!(c.slot(o.slot).packets))).collect();
    observations.insert("events_suppressed".into(), json!(now.suppressed));
    json!({
        "interface": iface,
        "time": humantime::format_rfc3339_millis(now.time).to_string(),
        "packets": total.packets,
        "bytes": total.bytes,
        "passed": c.passed().packets,
        "dropped": c.dropped().packets,
        "would_drop": c.monitored().packets,
        "reasons": reasons,
        "observations": observations,
        "top_dropped_ports": ports,
        "auto_blocks": now.blocks,
        "rate_limits": now.limits.as_ref().ok(),
        "crowdsec": now.crowdsec.as_ref().map(crowdsec_json),
        "baselines": now.baseline,
        "feeds": now.feeds.iter().map(feed_json).collect::<Vec<_>>(),
        "rates": rates,
    })
}

fn reason_json(reason: Reason, how: &str, packets: u64, bytes: u64) -> Value {
    json!({
        "reason": reason.name(),
        "action": if reason.is_drop() { "drop" } else { "pass" },
        "counted_as": how,
        "packets": packets,
        "bytes": bytes,
    })
}

/// `[anomaly]` for people: `baselines: 3 ports, 1,440 minutes learned, 2 anomalies since the
/// loader started (5 held back by alert_every)`.
fn baseline_line(known: &portguard::baseline::Summary) -> String {
    let mut line = format!(
        "baselines: {}, {} learned{}, {} since the loader started",
        count(known.ports_tracked as u64, "port", "ports"),
        count(known.minutes_observed, "minute", "minutes"),
        if known.warming_up { " (warming up: no anomaly is reported yet)" } else { "" },
        count(known.anomalies, "anomaly", "anomalies"),
    );
    if known.anomalies_quiet > 0 {
        line.push_str(&format!(" ({} held back by alert_every)", group(known.anomalies_quiet)));
    }
    if known.ports_untracked > 0 {
        line.push_str(&format!(
            "; {} past max_ports, judged against silence",
            count(known.ports_untracked, "port", "ports")
        ));
    }
    if let Some(error) = &known.error {
        line.push_str(&format!("; LAST MINUTE NOT READ: {}", portguard::printable(error)));
    }
    line
}

/// `[crowdsec]` for people: `crowdsec: 1,204 decisions from http://127.0.0.1:8080, last pull 3s ago`.
fn crowdsec_line(status: &PullStatus, now: u64) -> String {
    let last = match (status.age(now), status.last_success) {
        (Some(age), Some(_)) => format!("last pull {} ago", durations::format_secs(age)),
        _ => "no successful pull yet".to_string(),
    };
    let mut line = format!(
        "crowdsec: {} from {}, {last}",
        count(status.decisions as u64, "decision", "decisions"),
        status.lapi
    );
    if status.errors > 0 {
        line.push_str(&format!(", {} failed", count(status.errors, "pull", "pulls")));
    }
    if let Some(error) = &status.last_error {
        line.push_str(&format!(
            "; LAST PULL FAILED: {} (the decisions in force stay)",
            portguard::printable(error)
        ));
    }
    if let Some(push) = &status.push {
        line.push_str(&format!(
            "; pushed {} as {} ({} waiting, {} unsent, {} failed)",
            count(push.pushed, "block", "blocks"),
            push.machine,
            group(push.pending),
            group(push.unsent),
            count(push.errors, "request", "requests")
        ));
        if let Some(error) = &push.last_error {
            line.push_str(&format!("; LAST PUSH FAILED: {}", portguard::printable(error)));
        }
    }
    let ignored: u64 = status.other_types.values().sum();
    if ignored > 0 {
        line.push_str(&format!("; {} not of type ban ignored", group(ignored)));
    }
    line
}

/// `[crowdsec]` in `stats --json`, in the JSON vocabulary (RFC 3339 `_at`, seconds `_secs`).
fn crowdsec_json(status: &PullStatus) -> Value {
    json!({
        "lapi": status.lapi,
        "decisions": status.decisions,
        "errors": status.errors,
        "last_error": status.last_error,
        "last_success_at": status.last_success.and_then(output::rfc3339_unix),
        "last_success_age_secs": status.age(portguard::state::now_unix()),
        "last_attempt_at": status.last_attempt.and_then(output::rfc3339_unix),
        "other_types": status.other_types,
        "full_load_secs": status.full_load_ms.map(|ms| ms as f64 / 1e3),
        "push": status.push,
    })
}

/// A feed for people: `feed https://...: 1,204 entries (copy of 2026-12-02T08:00:00Z), last fetch 3m ago`.
fn feed_line(status: &FeedStatus, now: u64) -> String {
    let copy = status
        .copy_fetched_at
        .and_then(output::rfc3339_unix)
        .map_or_else(|| "no copy yet".to_string(), |at| format!("copy of {at}"));
    let last = match status.age(now) {
        Some(age) => format!("last fetch {} ago", durations::format_secs(age)),
        None => "no successful fetch yet".to_string(),
    };
    let mut line = format!(
        "feed {}: {} ({copy}), {last}",
        portguard::printable(&status.url),
        count(status.entries as u64, "entry", "entries")
    );
    if status.failures > 0 {
        line.push_str(&format!(", {} failed", count(status.failures, "fetch", "fetches")));
    }
    if let Some(error) = &status.last_error {
        line.push_str(&format!(
            "; LAST FETCH FAILED: {} (the list in force stays)",
            portguard::printable(error)
        ));
    }
    line
}

/// A feed in `stats --json`.
fn feed_json(status: &FeedStatus) -> Value {
    json!({
        "url": status.url,
        "entries": status.entries,
        "copy_fetched_at": status.copy_fetched_at.and_then(output::rfc3339_unix),
        "last_success_at": status.last_success.and_then(output::rfc3339_unix),
        "last_success_age_secs": status.age(portguard::state::now_unix()),
        "last_attempt_at": status.last_attempt.and_then(output::rfc3339_unix),
        "failures": status.failures,
        "not_modified": status.not_modified,
        "last_error": status.last_error,
    })
}

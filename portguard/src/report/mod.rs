//! `portguard report`: what the journals say about a time window, for a person with ten
//! minutes after an incident: whether the journal covers the window at all (`coverage`), a
//! timeline of drops by reason with scans, blocks and changes marked, the sources and networks
//! that came and what they tried, the ports they aimed at, every block with its cause and
//! duration, and the policy changes. Built here from `journal::Reading`s (pure: tests feed it
//! records); `text` renders it for a terminal, `html` as one self-contained page, and `--json`
//! prints this structure.

pub mod html;
pub mod text;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    events::{EventRecord, EventType},
    journal::{Gap, Reading, parse_time},
    output::rfc3339,
};

/// Rows in each top list.
const TOP_SOURCES: usize = 20;
const TOP_NETWORKS: usize = 10;
const TOP_PORTS: usize = 15;
/// Ports named per source or network.
const PORTS_NAMED: usize = 12;
/// Bars in the timeline at most: the bucket grows with the window.
const MAX_BUCKETS: u64 = 240;
/// Bucket sizes to choose from, in seconds: a minute for windows up to 4 hours (10 seconds
/// for the shortest).
const BUCKETS: [u64; 9] = [10, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86_400];

#[derive(Debug, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub host: Option<String>,
    pub since: String,
    pub until: String,
    pub interfaces: Vec<String>,
    pub coverage: Coverage,
    pub totals: Totals,
    pub timeline: Timeline,
    pub sources: Vec<Source>,
    pub networks: Vec<Network>,
    pub ports: Vec<Port>,
    pub blocks: Vec<Block>,
    pub anomalies: Vec<Anomaly>,
    pub changes: Vec<Change>,
}

/// Whether the journals cover the whole window; where not, why.
#[derive(Debug, Serialize)]
pub struct Coverage {
    pub complete: bool,
    pub gaps: Vec<InterfaceGap>,
    /// Lines no reader could make sense of (cut short by a crash).
    pub unreadable_lines: u64,
}

#[derive(Debug, Serialize)]
pub struct InterfaceGap {
    pub interface: String,
    #[serde(flatten)]
    pub gap: Gap,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub events: u64,
    /// Drop events (sampled: one per source and second at most, within a budget).
    pub drop_events: u64,
    /// Of those, what monitor mode only counted.
    pub would_drop_events: u64,
    pub scans: u64,
    pub automatic_blocks: u64,
    pub manual_blocks: u64,
    pub unblocks: u64,
    pub trap_hits: u64,
    /// Ports that departed from their baselines (`anomaly` events).
    pub anomalies: u64,
    pub policy_changes: u64,
    /// Events the kernel's ring buffer or the journal lost.
    pub lost_events: u64,
    pub distinct_sources: u64,
}

#[derive(Debug, Serialize)]
pub struct Timeline {
    pub bucket_secs: u64,
    /// Drop reasons, most frequent first (the chart's stacking order).
    pub reasons: Vec<String>,
    pub buckets: Vec<Bucket>,
    pub marks: Vec<Mark>,
}

#[derive(Debug, Serialize)]
pub struct Bucket {
    /// Its start, RFC 3339.
    pub time: String,
    /// Drop events by reason.
    pub drops: BTreeMap<String, u64>,
}

/// A moment worth a line across the chart.
#[derive(Debug, Serialize)]
pub struct Mark {
    pub time: String,
    /// `scan`, `block`, `manual_block`, `unblock`, `change`, `trap`, `unprotected`, `anomaly`.
    pub kind: &'static str,
    pub label: String,
    #[serde(skip)]
    pub offset_secs: u64,
}

/// One source and what it tried.
#[derive(Debug, Serialize)]
pub struct Source {
    pub source: String,
    pub network: String,
    pub events: u64,
    pub drop_events: u64,
    pub scans: u64,
    pub blocked: bool,
    pub first_seen: String,
    pub last_seen: String,
    /// Ports it aimed at, most tried first (`tcp/22`), at most 12; `distinct_ports` counts all.
    pub ports: Vec<String>,
    pub distinct_ports: u64,
    /// What the kernel said of its packets: `port_denied` 40, `scan`...
    pub reasons: Vec<(String, u64)>,
    pub scan_kinds: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Network {
    pub network: String,
    pub sources: u64,
    pub events: u64,
    pub drop_events: u64,
    pub blocked_sources: u64,
    pub ports: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Port {
    pub protocol: String,
    pub port: u16,
    pub drop_events: u64,
    pub sources: u64,
}

/// A block in the window: when, why, for how long, and how it ended.
#[derive(Debug, Serialize)]
pub struct Block {
    pub interface: String,
    pub network: String,
    /// `automatic` or `manual`.
    pub origin: &'static str,
    /// Automatic: `scan`, `slow_scan`, `trap`; manual: the `--reason` given.
    pub cause: Option<String>,
    pub scan_kind: Option<String>,
    pub distinct_ports: Option<u32>,
    pub ports_sample: Vec<u16>,
    /// Who (manual blocks).
    pub by: Option<String>,
    /// Monitor mode: counted, not enforced.
    pub monitor_only: bool,
    /// When it began; `None`: before the window (only its end is in it).
    pub at: Option<String>,
    pub block_secs: Option<u64>,
    pub ended_at: Option<String>,
    /// `expired`, `unblocked`, `in force at the end of the window`, or `not known`.
    pub ended: String,
    /// How long it lasted in the window, in seconds, where known.
    pub lasted_secs: Option<u64>,
    /// Automatic blocks: the pcap file of the source's first packets (`[evidence]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceFile>,
}

/// A block's evidence file, as its event named it.
#[derive(Debug, Serialize)]
pub struct EvidenceFile {
    pub path: String,
    /// Whether it is still there (the oldest are deleted to stay within `[evidence]
    /// total_kib`).
    pub kept: bool,
}

impl EvidenceFile {
    fn of(path: &str) -> Self {
        Self { path: path.to_owned(), kept: std::path::Path::new(path).exists() }
    }
}

impl Block {
    /// `15m`, or `until unblocked`.
    pub fn duration_text(&self) -> String {
        self.block_secs.map_or_else(|| "until unblocked".into(), crate::durations::format_secs)
    }

    /// `15m`, or `-` when its start is not in the window.
    pub fn lasted_text(&self) -> String {
        self.lasted_secs.map_or_else(|| "-".into(), crate::durations::format_secs)
    }
}

/// A port's minute that departed from its baseline.
#[derive(Debug, Serialize)]
pub struct Anomaly {
    pub time: String,
    pub interface: String,
    /// `udp/53`.
    pub port: String,
    /// `new_connections`, `sources`, `bytes`, `drops`, `source_bytes`.
    pub measure: String,
    pub observed: Option<u64>,
    pub expected: Option<u64>,
    pub compared_with: Option<String>,
    /// `source_bytes`: the source network.
    pub source: Option<String>,
    /// The event's line, for people.
    pub summary: String,
}

/// A change of the policy or of the attachment.
#[derive(Debug, Serialize)]
pub struct Change {
    pub time: String,
    pub interface: String,
    pub event: EventType,
    pub summary: String,
}

/// What `report` is asked for.
pub struct Window {
    pub since: SystemTime,
    pub until: SystemTime,
}

/// Builds the report of `readings` (one per interface) over `window`.
pub fn build(readings: &[Reading], window: &Window) -> Report {
    let mut records: Vec<&EventRecord> = readings.iter().flat_map(|r| &r.records).collect();
    records.sort_by(|a, b| a.time.cmp(&b.time));
    let gaps: Vec<InterfaceGap> = readings
        .iter()
        .flat_map(|r| {
            r.gaps.iter().map(|gap| InterfaceGap { interface: r.interface.clone(), gap: gap.clone() })
        })
        .collect();
    let unreadable_lines = readings.iter().map(|r| r.unreadable_lines).sum();
    let coverage = Coverage { complete: gaps.is_empty() && unreadable_lines == 0, gaps, unreadable_lines };
    let blocks = blocks(&records, window.until);
    let blocked: BTreeSet<String> = blocks.iter().map(|b| b.network.clone()).collect();
    let sources = sources(&records, &blocked);
    Report {
        generated_at: rfc3339(SystemTime::now()),
        host: crate::system::host_name(),
        since: rfc3339(window.since),
        until: rfc3339(window.until),
        interfaces: readings.iter().map(|r| r.interface.clone()).collect(),
        totals: totals(&records, &coverage, sources.len()),
        coverage,
        timeline: timeline(&records, window),
        networks: networks(&sources),
        ports: ports(&records),
        sources: sources.into_iter().take(TOP_SOURCES).collect(),
        blocks,
        anomalies: anomalies(&records),
        changes: changes(&records),
    }
}

fn anomalies(records: &[&EventRecord]) -> Vec<Anomaly> {
    records
        .iter()
        .filter(|r| r.event == EventType::Anomaly)
        .map(|r| Anomaly {
            time: r.time.clone(),
            interface: r.interface.clone(),
            port: format!("{}/{}", r.protocol.as_deref().unwrap_or("?"), r.destination_port.unwrap_or(0)),
            measure: r.reason.clone().unwrap_or_default(),
            observed: r.observed,
            expected: r.expected,
            compared_with: r.compared_with.clone(),
            source: r.source.map(|s| network_text(s, r.prefix_len)),
            summary: r.summary(),
        })
        .collect()
}

fn totals(records: &[&EventRecord], coverage: &Coverage, distinct_sources: usize) -> Totals {
    let mut totals = Totals {
        events: records.len() as u64,
        distinct_sources: distinct_sources as u64,
        ..Totals::default()
    };
    for record in records {
        match record.event {
            EventType::Drop => {
                totals.drop_events += 1;
                totals.would_drop_events += u64::from(record.monitored());
            }
            EventType::ScanDetected => totals.scans += 1,
            EventType::AutoBlocked => totals.automatic_blocks += 1,
            EventType::Blocked => totals.manual_blocks += 1,
            EventType::Unblocked => totals.unblocks += 1,
            EventType::TrapHit => totals.trap_hits += 1,
            EventType::Anomaly => totals.anomalies += 1,
            EventType::Reloaded | EventType::RolledBack | EventType::Confirmed => totals.policy_changes += 1,
            _ => {}
        }
    }
    totals.lost_events = coverage.gaps.iter().filter_map(|g| g.gap.count).sum();
    totals
}

fn time_of(record: &EventRecord) -> Option<SystemTime> {
    parse_time(&record.time)
}

fn timeline(records: &[&EventRecord], window: &Window) -> Timeline {
    let span = window.until.duration_since(window.since).unwrap_or_default().as_secs().max(1);
    let bucket_secs = BUCKETS.into_iter().find(|b| span.div_ceil(*b) <= MAX_BUCKETS).unwrap_or(86_400);
    let count = span.div_ceil(bucket_secs);
    let mut buckets: Vec<Bucket> = (0..count)
        .map(|i| Bucket {
            time: rfc3339(window.since + Duration::from_secs(i * bucket_secs)),
            drops: BTreeMap::new(),
        })
        .collect();
    let mut reasons: HashMap<String, u64> = HashMap::new();
    let mut marks = Vec::new();
    for record in records {
        let Some(offset) =
            time_of(record).and_then(|t| t.duration_since(window.since).ok()).map(|d| d.as_secs())
        else {
            continue;
        };
        if record.event == EventType::Drop {
            let reason = record.reason.clone().unwrap_or_else(|| "unknown".into());
            *reasons.entry(reason.clone()).or_default() += 1;
            if let Some(bucket) = buckets.get_mut((offset / bucket_secs) as usize) {
                *bucket.drops.entry(reason).or_default() += 1;
            }
        }
        let who = record.source.map(|s| network_text(s, record.prefix_len)).unwrap_or_default();
        let mark = match record.event {
            EventType::ScanDetected => Some(("scan", format!("scan from {who}"))),
            EventType::AutoBlocked => Some(("block", format!("{who} blocked"))),
            EventType::Blocked => Some(("manual_block", format!("{who} blocked by hand"))),
            EventType::Unblocked => Some(("unblock", format!("{who} unblocked"))),
            EventType::TrapHit => Some(("trap", format!("trap hit by {who}"))),
            EventType::Reloaded | EventType::RolledBack => Some(("change", record.event.to_string())),
            EventType::Unprotected => Some(("unprotected", "not protected".into())),
            EventType::Anomaly => Some(("anomaly", record.summary())),
            _ => None,
        };
        if let Some((kind, label)) = mark {
            marks.push(Mark { time: record.time.clone(), kind, label, offset_secs: offset });
        }
    }
    let mut reasons: Vec<(String, u64)> = reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Timeline { bucket_secs, reasons: reasons.into_iter().map(|(r, _)| r).collect(), buckets, marks }
}

fn network_text(address: IpAddr, prefix_len: Option<u8>) -> String {
    match prefix_len {
        Some(len) => format!("{address}/{len}"),
        None => address.to_string(),
    }
}

/// The network a source is counted in: its /24 (IPv4) or /64 (IPv6), or the network an event
/// names.
fn network_of(address: IpAddr, prefix_len: Option<u8>) -> String {
    let len = prefix_len.unwrap_or(if address.is_ipv4() { 24 } else { 64 });
    IpNet::new(address, len).map_or_else(|_| address.to_string(), |net| net.trunc().to_string())
}

fn port_text(record: &EventRecord) -> Option<String> {
    let port = record.destination_port?;
    Some(format!("{}/{port}", record.protocol.as_deref().unwrap_or("?")))
}

/// Most counted first, then by name.
fn ranked(counts: HashMap<String, u64>, keep: usize) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(keep);
    all
}

#[derive(Default)]
struct SourceTally {
    prefix_len: Option<u8>,
    events: u64,
    drops: u64,
    scans: u64,
    first: String,
    last: String,
    ports: HashMap<String, u64>,
    reasons: HashMap<String, u64>,
    kinds: BTreeSet<String>,
}

/// Every source the kernel reported, busiest first.
fn sources(records: &[&EventRecord], blocked: &BTreeSet<String>) -> Vec<Source> {
    let mut tallies: HashMap<IpAddr, SourceTally> = HashMap::new();
    for record in records.iter().filter(|r| r.event.is_kernel() && r.event != EventType::BlockExpired) {
        let Some(source) = record.source else { continue };
        let tally = tallies.entry(source).or_default();
        tally.prefix_len = tally.prefix_len.or(record.prefix_len);
        tally.events += 1;
        if tally.first.is_empty() {
            tally.first.clone_from(&record.time);
        }
        tally.last.clone_from(&record.time);
        match record.event {
            EventType::Drop => tally.drops += 1,
            EventType::ScanDetected => tally.scans += 1,
            _ => {}
        }
        if let Some(port) = port_text(record) {
            *tally.ports.entry(port).or_default() += 1;
        }
        for port in record.ports_sample.iter().flatten() {
            let port = format!("{}/{port}", record.protocol.as_deref().unwrap_or("?"));
            tally.ports.entry(port).or_default();
        }
        if let Some(reason) = &record.reason {
            *tally.reasons.entry(reason.clone()).or_default() += 1;
        }
        if let Some(kind) = &record.scan_kind {
            tally.kinds.insert(kind.clone());
        }
    }
    let mut all: Vec<Source> = tallies
        .into_iter()
        .map(|(address, tally)| {
            let source = network_text(address, tally.prefix_len);
            Source {
                blocked: blocked.contains(&source),
                network: network_of(address, tally.prefix_len),
                source,
                events: tally.events,
                drop_events: tally.drops,
                scans: tally.scans,
                first_seen: tally.first,
                last_seen: tally.last,
                distinct_ports: tally.ports.len() as u64,
                ports: ranked(tally.ports, PORTS_NAMED).into_iter().map(|(p, _)| p).collect(),
                reasons: ranked(tally.reasons, 8),
                scan_kinds: tally.kinds.into_iter().collect(),
            }
        })
        .collect();
    all.sort_by(|a, b| b.events.cmp(&a.events).then(a.source.cmp(&b.source)));
    all
}

fn networks(sources: &[Source]) -> Vec<Network> {
    let mut by_network: BTreeMap<&str, Vec<&Source>> = BTreeMap::new();
    for source in sources {
        by_network.entry(&source.network).or_default().push(source);
    }
    let mut all: Vec<Network> = by_network
        .into_iter()
        .map(|(network, members)| {
            let mut ports: HashMap<String, u64> = HashMap::new();
            for member in &members {
                for port in &member.ports {
                    *ports.entry(port.clone()).or_default() += 1;
                }
            }
            Network {
                network: network.to_owned(),
                sources: members.len() as u64,
                events: members.iter().map(|m| m.events).sum(),
                drop_events: members.iter().map(|m| m.drop_events).sum(),
                blocked_sources: members.iter().filter(|m| m.blocked).count() as u64,
                ports: ranked(ports, PORTS_NAMED).into_iter().map(|(p, _)| p).collect(),
            }
        })
        .collect();
    all.sort_by(|a, b| b.events.cmp(&a.events).then(a.network.cmp(&b.network)));
    all.truncate(TOP_NETWORKS);
    all
}

fn ports(records: &[&EventRecord]) -> Vec<Port> {
    let mut tallies: HashMap<(String, u16), (u64, BTreeSet<IpAddr>)> = HashMap::new();
    for record in records.iter().filter(|r| r.event == EventType::Drop) {
        let Some(port) = record.destination_port else { continue };
        let protocol = record.protocol.clone().unwrap_or_else(|| "?".into());
        let tally = tallies.entry((protocol, port)).or_default();
        tally.0 += 1;
        tally.1.extend(record.source);
    }
    let mut all: Vec<Port> = tallies
        .into_iter()
        .map(|((protocol, port), (drops, sources))| Port {
            protocol,
            port,
            drop_events: drops,
            sources: sources.len() as u64,
        })
        .collect();
    all.sort_by(|a, b| b.drop_events.cmp(&a.drop_events).then(a.port.cmp(&b.port)));
    all.truncate(TOP_PORTS);
    all
}

/// Blocks made or ended in the window, paired with how they ended.
fn blocks(records: &[&EventRecord], until: SystemTime) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    // Open blocks by (interface, network, origin): their index in `blocks`.
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    for record in records {
        let Some(source) = record.source else { continue };
        let network = network_text(source, record.prefix_len);
        let key = (record.interface.clone(), network.clone());
        match record.event {
            EventType::AutoBlocked | EventType::Blocked => {
                let automatic = record.event == EventType::AutoBlocked;
                open.insert(key, blocks.len());
                blocks.push(Block {
                    interface: record.interface.clone(),
                    network,
                    origin: if automatic { "automatic" } else { "manual" },
                    cause: record.reason.clone(),
                    scan_kind: record.scan_kind.clone(),
                    distinct_ports: record.distinct_ports,
                    ports_sample: record.ports_sample.clone().unwrap_or_default(),
                    by: record.user.clone().or_else(|| record.uid.map(|uid| format!("uid {uid}"))),
                    monitor_only: record.monitored(),
                    at: Some(record.time.clone()),
                    block_secs: record.block_seconds,
                    ended_at: None,
                    ended: String::new(),
                    lasted_secs: None,
                    evidence: record.evidence.as_deref().map(EvidenceFile::of),
                });
            }
            EventType::BlockExpired | EventType::Unblocked => {
                let how = if record.event == EventType::BlockExpired { "expired" } else { "unblocked" };
                let index = open.remove(&key).unwrap_or_else(|| {
                    // Began before the window: only its end is known.
                    blocks.push(Block {
                        interface: record.interface.clone(),
                        network,
                        origin: if record.event == EventType::BlockExpired { "automatic" } else { "manual" },
                        cause: (record.event == EventType::BlockExpired)
                            .then(|| record.reason.clone())
                            .flatten(),
                        scan_kind: None,
                        distinct_ports: None,
                        ports_sample: Vec::new(),
                        by: None,
                        monitor_only: false,
                        at: None,
                        block_secs: None,
                        ended_at: None,
                        ended: String::new(),
                        lasted_secs: None,
                        evidence: None,
                    });
                    blocks.len() - 1
                });
                let block = &mut blocks[index];
                block.ended_at = Some(record.time.clone());
                block.ended = if record.event == EventType::Unblocked {
                    format!("{how}{}", record.user.as_deref().map(|u| format!(" by {u}")).unwrap_or_default())
                } else {
                    how.into()
                };
            }
            _ => {}
        }
    }
    for block in &mut blocks {
        let began = block.at.as_deref().and_then(parse_time);
        if block.ended_at.is_none() {
            // A manual block's end is its deadline (manual expiries are not events).
            let deadline = began.zip(block.block_secs).map(|(at, secs)| at + Duration::from_secs(secs));
            match deadline {
                Some(deadline) if deadline <= until && block.origin == "manual" => {
                    block.ended_at = Some(rfc3339(deadline));
                    block.ended = "expired".into();
                }
                _ => block.ended = "in force at the end of the window".into(),
            }
        }
        let end = block.ended_at.as_deref().and_then(parse_time).unwrap_or(until);
        block.lasted_secs = began.and_then(|at| end.duration_since(at).ok()).map(|d| d.as_secs());
    }
    blocks
}

fn changes(records: &[&EventRecord]) -> Vec<Change> {
    records
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                EventType::Reloaded
                    | EventType::RolledBack
                    | EventType::Confirmed
                    | EventType::Detached
                    | EventType::Unprotected
                    | EventType::Reattached
            )
        })
        .map(|r| {
            let line = r.summary();
            let summary = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest).to_owned();
            Change { time: r.time.clone(), interface: r.interface.clone(), event: r.event, summary }
        })
        .collect()
}

#[cfg(test)]
mod tests;

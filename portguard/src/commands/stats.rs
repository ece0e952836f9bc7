//! `portguard stats [IFACE]`: verdict counters, detections, automatic blocks and the most
//! dropped ports.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use portguard::{
    blocks::{ActiveBlock, active_blocks},
    maps::{Counters, PinnedMaps, PortCount, top_ports},
};
use portguard_common::{Reason, counters::*};
use serde_json::{Value, json};

use super::{format_uptime, group, status::attached_interfaces};

struct Snapshot {
    counters: Counters,
    /// Drop events held back by the rate limits (per-CPU budget).
    suppressed: u64,
    port_drops: Vec<u64>,
    blocks: Vec<ActiveBlock>,
    at: Instant,
}

impl Snapshot {
    fn take(maps: &PinnedMaps) -> Result<Self> {
        Ok(Self {
            counters: maps.counters()?,
            suppressed: portguard::events::suppressed(&maps.event_budget),
            port_drops: maps.port_drops.snapshot(),
            blocks: active_blocks(&maps.auto_blocks),
            at: Instant::now(),
        })
    }
}

/// Observation counters as (JSON name, human label, slot).
const OBSERVATIONS: [(&str, &str, u32); 14] = [
    ("fragments_first", "first fragments", OBS_FRAGMENT_FIRST),
    ("fragments_later", "later fragments", OBS_FRAGMENT_LATER),
    ("fragments_untracked", "fragments not tracked (table full)", OBS_FRAGMENT_TABLE_FULL),
    ("vlan_single", "frames with one VLAN tag", OBS_VLAN_SINGLE),
    ("vlan_stacked", "frames with stacked VLAN tags", OBS_VLAN_STACKED),
    ("scans_detected", "scans detected", OBS_SCANS_DETECTED),
    ("scan_blocks", "sources blocked for scanning", OBS_SCAN_BLOCKS),
    ("trap_blocks", "sources blocked by trap ports", OBS_TRAP_BLOCKS),
    ("blocks_expired", "automatic blocks expired on the packet path", OBS_BLOCKS_EXPIRED),
    ("refusals_sent", "refusals sent by the host (RST, port unreachable)", OBS_REFUSALS_SENT),
    (
        "refusals_own_flows",
        "of which on the host's own flows (not counted as probes)",
        OBS_REFUSALS_OWN_FLOWS,
    ),
    ("scan_sources_admitted", "sources given scan state (failed on 2+ ports)", OBS_SCAN_SOURCES_ADMITTED),
    (
        "blocks_not_admitted",
        "automatic blocks refused (new_blocks_per_second spent)",
        OBS_BLOCKS_NOT_ADMITTED,
    ),
    ("events_lost", "events lost (ring buffer full)", OBS_EVENTS_LOST),
];

pub fn run(iface: Option<&str>, json: bool, watch: Option<f64>, top: usize) -> Result<ExitCode> {
    let interfaces = match iface {
        Some(iface) => vec![iface.to_owned()],
        None => attached_interfaces(),
    };
    if interfaces.is_empty() {
        bail!(
            "portguard is not attached anywhere in {} (`portguard attach IFACE --policy FILE` starts it)",
            portguard::netns::Netns::current()
        );
    }
    let maps: Vec<(String, PinnedMaps)> =
        interfaces.iter().map(|i| Ok((i.clone(), PinnedMaps::open(i)?))).collect::<Result<_>>()?;
    let mut previous: Vec<Snapshot> = maps.iter().map(|(_, m)| Snapshot::take(m)).collect::<Result<_>>()?;
    for ((iface, _), snapshot) in maps.iter().zip(&previous) {
        print(iface, snapshot, None, json, top);
    }
    let Some(interval) = watch else {
        return Ok(ExitCode::SUCCESS);
    };
    if interval.is_nan() || interval <= 0.0 {
        bail!("--watch needs a positive number of seconds");
    }
    loop {
        std::thread::sleep(Duration::from_secs_f64(interval));
        for (index, (iface, maps)) in maps.iter().enumerate() {
            let current = Snapshot::take(maps)?;
            print(iface, &current, Some(&previous[index]), json, top);
            previous[index] = current;
        }
    }
}

fn print(iface: &str, now: &Snapshot, before: Option<&Snapshot>, json: bool, top: usize) {
    let seconds = before.map(|b| now.at.duration_since(b.at).as_secs_f64()).filter(|s| *s > 0.0);
    let delta = before.map(|b| now.counters.since(&b.counters));
    let ports = top_ports(&now.port_drops, top);
    if json {
        println!("{}", to_json(iface, now, delta.as_ref(), seconds, &ports));
        return;
    }
    let c = &now.counters;
    let total = c.total();
    println!(
        "{iface}: {} packets ({} bytes): {} passed, {} dropped, {} would drop (monitor)",
        group(total.packets),
        group(total.bytes),
        group(c.passed().packets),
        group(c.dropped().packets),
        group(c.monitored().packets)
    );
    if let (Some(delta), Some(seconds)) = (&delta, seconds) {
        println!(
            "  rate: {:.0} pkt/s in, {:.0} pkt/s dropped",
            delta.total().packets as f64 / seconds,
            delta.dropped().packets as f64 / seconds
        );
    }
    for reason in ALL_REASONS {
        let (applied, would) = (c.applied(reason), c.would_drop(reason));
        if applied.packets > 0 {
            let verb = if reason.is_drop() { "dropped" } else { "passed" };
            println!(
                "  {verb:<11} {:<20} {:>14} pkts {:>16} bytes",
                reason.name(),
                group(applied.packets),
                group(applied.bytes)
            );
        }
        if would.packets > 0 {
            println!(
                "  {:<11} {:<20} {:>14} pkts {:>16} bytes",
                "would drop",
                reason.name(),
                group(would.packets),
                group(would.bytes)
            );
        }
    }
    for (_, label, slot) in OBSERVATIONS {
        let count = c.slot(slot).packets;
        if count > 0 {
            println!("  {label}: {}", group(count));
        }
    }
    if now.suppressed > 0 {
        println!("  drop events held back by the rate limit: {}", group(now.suppressed));
    }
    if !ports.is_empty() {
        let list: Vec<String> =
            ports.iter().map(|p| format!("{}/{} {}", p.proto, p.port, group(p.drops))).collect();
        println!("  top dropped ports: {}", list.join(", "));
    }
    if !now.blocks.is_empty() {
        println!("  automatic blocks ({}):", now.blocks.len());
        for block in now.blocks.iter().take(50) {
            println!(
                "    {:<40} {:<5} {:<24} {} left",
                block.network(),
                block.cause,
                block.detail,
                format_uptime(block.seconds_left)
            );
        }
        if now.blocks.len() > 50 {
            println!("    ... and {} more (--json lists all)", now.blocks.len() - 50);
        }
    }
}

fn to_json(
    iface: &str,
    now: &Snapshot,
    delta: Option<&Counters>,
    seconds: Option<f64>,
    ports: &[PortCount],
) -> Value {
    let c = &now.counters;
    let reasons: Vec<Value> = ALL_REASONS
        .iter()
        .flat_map(|reason| {
            let applied = c.applied(*reason);
            let would = c.would_drop(*reason);
            let mut rows = vec![reason_json(*reason, "applied", applied.packets, applied.bytes)];
            if reason.is_drop() {
                rows.push(reason_json(*reason, "monitor", would.packets, would.bytes));
            }
            rows
        })
        .collect();
    let total = c.total();
    let rates = match (delta, seconds) {
        (Some(d), Some(s)) => json!({
            "packets_per_second": d.total().packets as f64 / s,
            "dropped_per_second": d.dropped().packets as f64 / s,
        }),
        _ => Value::Null,
    };
    let mut observations: serde_json::Map<String, Value> =
        OBSERVATIONS.iter().map(|(name, _, slot)| (name.to_string(), json!(c.slot(*slot).packets))).collect();
    observations.insert("events_suppressed".into(), json!(now.suppressed));
    json!({
        "interface": iface,
        "packets": total.packets,
        "bytes": total.bytes,
        "passed": c.passed().packets,
        "dropped": c.dropped().packets,
        "would_drop": c.monitored().packets,
        "reasons": reasons,
        "observations": observations,
        "top_dropped_ports": ports,
        "auto_blocks": now.blocks,
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

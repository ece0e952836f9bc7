//! `portguard stats [IFACE]`: verdict counters and the most dropped ports.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use portguard::maps::{Counters, PinnedMaps, PortCount, top_ports};
use portguard_common::{
    Reason,
    counters::{
        ALL_REASONS, OBS_FRAGMENT_FIRST, OBS_FRAGMENT_LATER, OBS_FRAGMENT_TABLE_FULL,
        OBS_VLAN_SINGLE, OBS_VLAN_STACKED,
    },
};
use serde_json::{Value, json};

use super::{group, status::attached_interfaces};

struct Snapshot {
    counters: Counters,
    port_drops: Vec<u64>,
    at: Instant,
}

pub fn run(iface: Option<&str>, json: bool, watch: Option<f64>, top: usize) -> Result<ExitCode> {
    let interfaces = match iface {
        Some(iface) => vec![iface.to_owned()],
        None => attached_interfaces(),
    };
    if interfaces.is_empty() {
        bail!(
            "portguard is not attached anywhere (`portguard attach IFACE --policy FILE` starts it)"
        );
    }
    let maps: Vec<(String, PinnedMaps)> = interfaces
        .iter()
        .map(|i| Ok((i.clone(), PinnedMaps::open(i)?)))
        .collect::<Result<_>>()?;
    let take = |maps: &PinnedMaps| -> Result<Snapshot> {
        Ok(Snapshot {
            counters: maps.counters()?,
            port_drops: maps.port_drops.snapshot(),
            at: Instant::now(),
        })
    };
    let mut previous: Vec<Snapshot> = maps.iter().map(|(_, m)| take(m)).collect::<Result<_>>()?;
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
            let current = take(maps)?;
            print(iface, &current, Some(&previous[index]), json, top);
            previous[index] = current;
        }
    }
}

fn print(iface: &str, now: &Snapshot, before: Option<&Snapshot>, json: bool, top: usize) {
    let seconds = before
        .map(|b| now.at.duration_since(b.at).as_secs_f64())
        .filter(|s| *s > 0.0);
    let delta = before.map(|b| now.counters.since(&b.counters));
    let ports = top_ports(&now.port_drops, top);
    if json {
        println!(
            "{}",
            to_json(iface, &now.counters, delta.as_ref(), seconds, &ports)
        );
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
            let verb = if reason.is_drop() {
                "dropped"
            } else {
                "passed"
            };
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
    let first = c.slot(OBS_FRAGMENT_FIRST).packets;
    let later = c.slot(OBS_FRAGMENT_LATER).packets;
    if first + later > 0 {
        println!(
            "  fragments: {} first, {} later ({} not tracked: table full)",
            group(first),
            group(later),
            group(c.slot(OBS_FRAGMENT_TABLE_FULL).packets)
        );
    }
    let (single, stacked) = (
        c.slot(OBS_VLAN_SINGLE).packets,
        c.slot(OBS_VLAN_STACKED).packets,
    );
    if single + stacked > 0 {
        println!(
            "  VLAN-tagged frames: {} single tag, {} stacked (QinQ)",
            group(single),
            group(stacked)
        );
    }
    if !ports.is_empty() {
        let list: Vec<String> = ports
            .iter()
            .map(|p| format!("{}/{} {}", p.proto, p.port, group(p.drops)))
            .collect();
        println!("  top dropped ports: {}", list.join(", "));
    }
}

fn to_json(
    iface: &str,
    c: &Counters,
    delta: Option<&Counters>,
    seconds: Option<f64>,
    ports: &[PortCount],
) -> Value {
    let reasons: Vec<Value> = ALL_REASONS
        .iter()
        .flat_map(|reason| {
            let applied = c.applied(*reason);
            let would = c.would_drop(*reason);
            let mut rows = vec![reason_json(
                *reason,
                "applied",
                applied.packets,
                applied.bytes,
            )];
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
    json!({
        "interface": iface,
        "packets": total.packets,
        "bytes": total.bytes,
        "passed": c.passed().packets,
        "dropped": c.dropped().packets,
        "would_drop": c.monitored().packets,
        "reasons": reasons,
        "fragments": {
            "first": c.slot(OBS_FRAGMENT_FIRST).packets,
            "later": c.slot(OBS_FRAGMENT_LATER).packets,
            "untracked": c.slot(OBS_FRAGMENT_TABLE_FULL).packets,
        },
        "vlan": {
            "single": c.slot(OBS_VLAN_SINGLE).packets,
            "stacked": c.slot(OBS_VLAN_STACKED).packets,
        },
        "top_dropped_ports": ports,
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

//! `portguard verify --policy FILE --pcap CAPTURE`: replay a capture through the real kernel
//! program (BPF_PROG_TEST_RUN) and say what the policy would pass and drop, by rule and by
//! reason, before the policy touches any interface.

use std::{collections::BTreeMap, net::IpAddr, path::Path, process::ExitCode};

use anyhow::Result;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use portguard::{
    capture::{self, Direction, Skipped},
    events::EventSource,
    judge::Judge,
    policy::{self, LoadOptions, Policy, compile::compile},
    system,
};
use portguard_common::{Reason, maps::port_index};
use serde::Serialize;
use serde_json::json;

use super::{group, print_warnings};

#[derive(Default, Serialize, Clone)]
struct Tally {
    packets: u64,
    bytes: u64,
    /// Destination ports, most frequent first (drops only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_ports: Vec<(String, u64)>,
    #[serde(skip)]
    ports: BTreeMap<String, u64>,
}

/// Protocol and destination port, for attributing a verdict to a rule.
fn destination(frame: &[u8]) -> Option<(u8, u16, IpAddr)> {
    let sliced = SlicedPacket::from_ethernet(frame).ok()?;
    let source = match sliced.net? {
        NetSlice::Ipv4(v4) => IpAddr::V4(v4.header().source_addr()),
        NetSlice::Ipv6(v6) => IpAddr::V6(v6.header().source_addr()),
        _ => return None,
    };
    match sliced.transport? {
        TransportSlice::Tcp(tcp) => Some((6, tcp.destination_port(), source)),
        TransportSlice::Udp(udp) => Some((17, udp.destination_port(), source)),
        _ => None,
    }
}

fn source_of(frame: &[u8]) -> Option<IpAddr> {
    match SlicedPacket::from_ethernet(frame).ok()?.net? {
        NetSlice::Ipv4(v4) => Some(IpAddr::V4(v4.header().source_addr())),
        NetSlice::Ipv6(v6) => Some(IpAddr::V6(v6.header().source_addr())),
        _ => None,
    }
}

/// Which rule decided: the rule that names the port, the default, or the reason itself.
fn decided_by(policy: &Policy, image: &policy::compile::MapImage, reason: Reason, frame: &[u8]) -> String {
    match reason {
        Reason::PassPortAllowed
        | Reason::PassSourceAllowed
        | Reason::DropPortDenied
        | Reason::DropSourceNotAllowed => {
            let rule = destination(frame)
                .and_then(|(proto, port, _)| port_index(proto, port))
                .and_then(|index| image.ports.get(&index))
                .and_then(|entry| policy.rule(entry.rule));
            rule.map_or_else(|| "a rule".to_string(), |r| r.label())
        }
        Reason::PassDefaultAllow | Reason::DropDefaultDeny => "default".to_string(),
        Reason::DropBlocklist => "blocklist".to_string(),
        Reason::DropAutoBlock => "automatic block (scan or trap port)".to_string(),
        Reason::PassFlow | Reason::DropNoFlow => "flow tracking".to_string(),
        Reason::PassProtocol | Reason::DropProtocol => "[inbound] protocols".to_string(),
        Reason::PassMalformed | Reason::DropMalformed => "[inbound] malformed".to_string(),
        Reason::PassFragment
        | Reason::DropFragment
        | Reason::PassFragmentUnseen
        | Reason::DropFragmentUnseen => "fragment tracking".to_string(),
        _ => "-".to_string(),
    }
}

pub fn run(policy_path: &Path, pcap: &Path, hosts: &[IpAddr], strict: bool, json: bool) -> Result<ExitCode> {
    system::require_root("portguard verify (BPF_PROG_TEST_RUN)")?;
    system::raise_memlock();
    let loaded = policy::load(policy_path, LoadOptions { strict })?;
    if !json {
        print_warnings(&loaded.warnings);
    }
    let policy = loaded.policy;
    let image = compile(&policy, 1)?;
    let (packets, skipped) = capture::read(pcap)?;
    let mut judge = Judge::new(&image, &policy)?;
    let mut events = EventSource::from_ebpf("verify", judge.ebpf())?;

    let mut tallies: BTreeMap<(bool, &'static str, String), Tally> = BTreeMap::new();
    let (mut inbound, mut outbound, mut truncated) = (0u64, 0u64, 0u64);
    let mut event_lines = Vec::new();
    for packet in &packets {
        if packet.truncated {
            truncated += 1;
            continue;
        }
        let out = match packet.direction {
            Direction::Out => true,
            Direction::In => false,
            Direction::Unknown => source_of(&packet.frame).is_some_and(|s| hosts.contains(&s)),
        };
        if packet.frame.len() < 14 {
            truncated += 1;
            continue;
        }
        if out {
            judge.run_egress(&packet.frame)?;
            outbound += 1;
            continue;
        }
        inbound += 1;
        let outcome = judge.run(&packet.frame)?;
        let dropped = outcome.reason.is_drop();
        let rule = decided_by(&policy, &image, outcome.reason, &packet.frame);
        let tally = tallies.entry((dropped, outcome.reason.name(), rule)).or_default();
        tally.packets += 1;
        tally.bytes += packet.frame.len() as u64;
        if dropped {
            if let Some((proto, port, _)) = destination(&packet.frame) {
                *tally
                    .ports
                    .entry(format!("{}/{port}", if proto == 6 { "tcp" } else { "udp" }))
                    .or_default() += 1;
            }
        }
        for record in events.drain() {
            event_lines.push(record);
        }
    }
    for tally in tallies.values_mut() {
        let mut ports: Vec<(String, u64)> = tally.ports.iter().map(|(p, n)| (p.clone(), *n)).collect();
        ports.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ports.truncate(5);
        tally.top_ports = ports;
    }
    let alerts: Vec<_> = event_lines.iter().filter(|e| e.event != "drop").collect();
    let link_skipped = skipped.iter().filter(|s| **s == Skipped::LinkType).count();
    let (would_pass, would_drop): (u64, u64) =
        tallies.iter().fold(
            (0, 0),
            |(p, d), ((dropped, _, _), t)| {
                if *dropped { (p, d + t.packets) } else { (p + t.packets, d) }
            },
        );

    if json {
        let rows = |drop: bool| -> Vec<serde_json::Value> {
            tallies
                .iter()
                .filter(|((dropped, _, _), _)| *dropped == drop)
                .map(|((_, reason, rule), t)| json!({ "reason": reason, "rule": rule, "packets": t.packets, "bytes": t.bytes, "top_ports": t.top_ports }))
                .collect()
        };
        println!(
            "{}",
            json!({
                "policy": policy_path,
                "capture": pcap,
                "mode": policy.mode,
                "packets": packets.len() + skipped.len(),
                "inbound": inbound,
                "outbound": outbound,
                "skipped": { "link_type": link_skipped, "truncated": truncated },
                "would_pass": would_pass,
                "would_drop": would_drop,
                "pass": rows(false),
                "drop": rows(true),
                "alerts": alerts,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} against {}: {} packets; {} judged inbound, {} outbound (flows learnt), {} skipped",
        policy_path.display(),
        pcap.display(),
        group((packets.len() + skipped.len()) as u64),
        group(inbound),
        group(outbound),
        group(truncated + link_skipped as u64)
    );
    if truncated > 0 {
        println!(
            "  {truncated} packets were cut short by the capture (snap length): capture with `tcpdump -s 0`"
        );
    }
    if inbound > 0 && outbound == 0 && hosts.is_empty() {
        println!(
            "  note: no packet was taken as the host's own (use --host ADDR): replies to the host's connections count as inbound"
        );
    }
    for (title, drop, total) in [("would pass", false, would_pass), ("would drop", true, would_drop)] {
        println!("{title}: {} packets", group(total));
        for ((dropped, reason, rule), tally) in &tallies {
            if *dropped != drop {
                continue;
            }
            let ports = if tally.top_ports.is_empty() {
                String::new()
            } else {
                format!(
                    "  ports: {}",
                    tally.top_ports.iter().map(|(p, n)| format!("{p} {n}")).collect::<Vec<_>>().join(", ")
                )
            };
            println!("  {:<20} {:<40} {:>10} pkts{ports}", reason, rule, group(tally.packets));
        }
    }
    if !alerts.is_empty() {
        println!("detectors would fire {} times:", alerts.len());
        for alert in alerts.iter().take(20) {
            println!("  {}", alert.human());
        }
    }
    Ok(ExitCode::SUCCESS)
}

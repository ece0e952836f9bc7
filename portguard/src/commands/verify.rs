//! `portguard verify --policy FILE --pcap CAPTURE`: replay a capture through the real kernel
//! program (BPF_PROG_TEST_RUN) and say what the policy would pass and drop, by rule and by
//! reason, before the policy touches any interface.
//!
//! The capture is read one record at a time (nothing is held but the tallies). A packet that
//! cannot be judged is reported with its number and why, and the others are judged all the
//! same; the exit status is 2 only when part of the file could not be read (see the README).

use std::{collections::BTreeMap, net::IpAddr, path::Path, process::ExitCode};

use anyhow::Result;
use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use portguard::{
    capture::{self, Damage, Direction, Fidelity, Reader, Record, WHOLE_FRAME_MAX},
    events::{EventRecord, EventSource},
    exit::Exit,
    judge::Judge,
    maps::PortCount,
    output::{count, group, noun},
    policy::{self, LoadOptions, Policy, Proto, compile::compile},
    printable, system,
};
use portguard_common::{
    Reason,
    maps::{PROTO_TCP, PROTO_UDP},
};
use serde::Serialize;
use serde_json::json;

#[derive(Default, Clone)]
struct Tally {
    packets: u64,
    bytes: u64,
    /// Destination ports, most frequent first (drops only).
    top_ports: Vec<PortCount>,
    ports: BTreeMap<(Proto, u16), u64>,
}

/// Protocol and destination port, for attributing a verdict to a rule (lax: a stand-in's
/// payload may be zeros, and its UDP length the original's).
fn destination(frame: &[u8]) -> Option<(u8, u16)> {
    match LaxSlicedPacket::from_ethernet(frame).ok()?.transport? {
        TransportSlice::Tcp(tcp) => Some((PROTO_TCP, tcp.destination_port())),
        TransportSlice::Udp(udp) => Some((PROTO_UDP, udp.destination_port())),
        _ => None,
    }
}

fn source_of(frame: &[u8]) -> Option<IpAddr> {
    match LaxSlicedPacket::from_ethernet(frame).ok()?.net? {
        LaxNetSlice::Ipv4(v4) => Some(IpAddr::V4(v4.header().source_addr())),
        LaxNetSlice::Ipv6(v6) => Some(IpAddr::V6(v6.header().source_addr())),
        LaxNetSlice::Arp(_) => None,
    }
}

/// What decided a verdict: the part of the policy (`--json`: `decided_by`), and the rule
/// when it was a rule (its number).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Decider {
    by: &'static str,
    rule: Option<u16>,
}

/// The rule that decided the port (`Policy::port_decision`, the one `compile` wrote into the
/// kernel), the default, or the part of the policy the reason names.
fn decided_by(policy: &Policy, reason: Reason, frame: &[u8]) -> Decider {
    let by = |by: &'static str| Decider { by, rule: None };
    match reason {
        Reason::PassPortAllowed
        | Reason::PassSourceAllowed
        | Reason::DropPortDenied
        | Reason::DropSourceNotAllowed
        | Reason::DropRateLimited
        | Reason::DropConnectionLimit => Decider {
            by: "rule",
            rule: destination(frame)
                .and_then(|(proto, port)| Some((Proto::from_number(proto)?, port)))
                .and_then(|(proto, port)| policy.port_decision(proto, port).rule_for(source_of(frame)))
                .map(|rule| rule.number),
        },
        Reason::PassDefaultAllow | Reason::DropDefaultDeny => by("default"),
        Reason::DropBlocklist => by("blocklist"),
        Reason::DropManualBlock => by("manual_block"),
        Reason::DropAutoBlock => by("auto_block"),
        Reason::PassFlow | Reason::DropNoFlow => by("flow_tracking"),
        Reason::PassFragment
        | Reason::DropFragment
        | Reason::PassFragmentUnseen
        | Reason::DropFragmentUnseen => by("fragment_tracking"),
        Reason::PassProtocol
        | Reason::DropProtocol
        | Reason::PassMalformed
        | Reason::DropMalformed
        | Reason::PassTcpNonSyn => by("inbound"),
        Reason::PassNotIp | Reason::PassNeighbor => by("built_in"),
    }
}

impl Decider {
    /// For people: `rule 3 "ssh" (line 12)`, `default`, `[inbound] malformed`...
    fn text(self, policy: &Policy, reason: Reason) -> String {
        match (self.by, self.rule.and_then(|number| policy.rule(number))) {
            ("rule", Some(rule)) => rule.label(),
            ("rule", None) => "a rule".to_string(),
            ("auto_block", _) => "automatic block (scan or trap port)".to_string(),
            ("inbound", _) => match reason {
                Reason::PassMalformed | Reason::DropMalformed => "[inbound] malformed".to_string(),
                Reason::PassTcpNonSyn => "[inbound] tcp_non_syn".to_string(),
                _ => "[inbound] protocols".to_string(),
            },
            ("built_in", _) => "-".to_string(),
            (by, _) => by.replace('_', " "),
        }
    }

    /// The rule in `--json`: its number, name and line.
    fn rule_json(self, policy: &Policy) -> serde_json::Value {
        match self.rule.and_then(|number| policy.rule(number)) {
            Some(rule) => json!({ "number": rule.number, "name": rule.name, "line": rule.line }),
            None => serde_json::Value::Null,
        }
    }
}

/// Packets listed one by one (with `--json`; the human report shows the first few): the rest
/// are counted by reason.
const LISTED_MAX: usize = 1000;
/// Alerts and damaged places kept for the report (the rest are counted).
const ALERTS_MAX: usize = 10_000;
const DAMAGE_MAX: usize = 100;
/// Packets not judged shown in the human report.
const SHOWN: usize = 10;

/// One packet that was not judged, and why.
#[derive(Serialize)]
struct NotJudged {
    packet: u64,
    reason: &'static str,
    detail: String,
}

#[derive(Default)]
struct Report {
    tallies: BTreeMap<(bool, Reason, Decider), Tally>,
    inbound: u64,
    outbound: u64,
    /// Judged on their headers: cut by the snap length, or shortened for the test run.
    cut: u64,
    shortened: u64,
    not_judged: BTreeMap<&'static str, u64>,
    not_judged_listed: Vec<NotJudged>,
    alerts: Vec<EventRecord>,
    alerts_total: u64,
    damage: Vec<Damage>,
    damage_total: u64,
}

impl Report {
    fn not_judged(&mut self, packet: u64, reason: &'static str, detail: String) {
        *self.not_judged.entry(reason).or_default() += 1;
        if self.not_judged_listed.len() < LISTED_MAX {
            self.not_judged_listed.push(NotJudged { packet, reason, detail });
        }
    }

    fn not_judged_total(&self) -> u64 {
        self.not_judged.values().sum()
    }

    fn events(&mut self, records: Vec<EventRecord>) {
        for record in records.into_iter().filter(|e| e.event.is_alert()) {
            self.alerts_total += 1;
            if self.alerts.len() < ALERTS_MAX {
                self.alerts.push(record);
            }
        }
    }
}

pub fn run(policy_path: &Path, pcap: &Path, hosts: &[IpAddr], strict: bool, json: bool) -> Result<ExitCode> {
    system::require_root("portguard verify (BPF_PROG_TEST_RUN)")?;
    system::raise_memlock();
    let loaded = policy::load(policy_path, LoadOptions { strict })?;
    if !json {
        portguard::output::warnings(&loaded.warnings);
    }
    let policy = loaded.policy;
    let image = compile(&policy, 1)?;
    let mut reader = Reader::open(pcap)?;
    let mut judge = Judge::new(&image, &policy)?;
    let mut events = EventSource::from_ebpf("verify", judge.ebpf())?;

    let mut report = Report::default();
    for record in &mut reader {
        let packet = match record {
            Record::Packet(packet) => packet,
            Record::Unusable { number, why } => {
                report.not_judged(number, why.name(), why.detail());
                continue;
            }
            Record::Damage(damage) => {
                if let Some(number) = damage.packet {
                    report.not_judged(number, "damaged", damage.why.clone());
                }
                report.damage_total += 1;
                if report.damage.len() < DAMAGE_MAX {
                    report.damage.push(damage);
                }
                continue;
            }
        };
        let (frame, fidelity) = match capture::replayable(&packet) {
            Ok(replayable) => replayable,
            Err(refusal) => {
                report.not_judged(packet.number, refusal.reason, refusal.detail);
                continue;
            }
        };
        let out = match packet.direction {
            Direction::Out => true,
            Direction::In => false,
            Direction::Unknown => source_of(&frame).is_some_and(|s| hosts.contains(&s)),
        };
        // A frame the kernel's test run refuses is that packet's problem, not the run's.
        let refused = |error: anyhow::Error| {
            format!("BPF_PROG_TEST_RUN refused the {}-byte frame: {error:#}", frame.len())
        };
        if out {
            if let Err(error) = judge.run_egress(&frame) {
                report.not_judged(packet.number, "test_run_failed", refused(error));
                continue;
            }
            report.outbound += 1;
        } else {
            let outcome = match judge.run(&frame) {
                Ok(outcome) => outcome,
                Err(error) => {
                    report.not_judged(packet.number, "test_run_failed", refused(error));
                    continue;
                }
            };
            report.inbound += 1;
            let dropped = outcome.reason.is_drop();
            let decider = decided_by(&policy, outcome.reason, &frame);
            let tally = report.tallies.entry((dropped, outcome.reason, decider)).or_default();
            tally.packets += 1;
            tally.bytes += packet.original_len as u64;
            if dropped {
                if let Some((proto, port)) = destination(&frame) {
                    let protocol = if proto == PROTO_TCP { Proto::Tcp } else { Proto::Udp };
                    *tally.ports.entry((protocol, port)).or_default() += 1;
                }
            }
        }
        match fidelity {
            Fidelity::Exact => {}
            Fidelity::CutPadded => report.cut += 1,
            Fidelity::Shortened => report.shortened += 1,
        }
        report.events(events.drain());
    }
    for tally in report.tallies.values_mut() {
        let mut ports: Vec<PortCount> = tally
            .ports
            .iter()
            .map(|(&(protocol, port), &drops)| PortCount { protocol, port, drops })
            .collect();
        ports.sort_by(|a, b| b.drops.cmp(&a.drops).then((a.protocol, a.port).cmp(&(b.protocol, b.port))));
        ports.truncate(5);
        tally.top_ports = ports;
    }
    let (would_pass, would_drop): (u64, u64) = report.tallies.iter().fold(
        (0, 0),
        |(p, d), ((dropped, _, _), t)| {
            if *dropped { (p, d + t.packets) } else { (p + t.packets, d) }
        },
    );
    let packets = reader.packets();
    let code = if report.damage_total > 0 { Exit::IncompleteInput } else { Exit::Ok }.into();

    if json {
        let rows = |drop: bool| -> Vec<serde_json::Value> {
            report
                .tallies
                .iter()
                .filter(|((dropped, _, _), _)| *dropped == drop)
                .map(|((_, reason, decider), t)| {
                    json!({
                        "reason": reason.name(),
                        "decided_by": decider.by,
                        "rule": decider.rule_json(&policy),
                        "packets": t.packets,
                        "bytes": t.bytes,
                        "top_ports": t.top_ports,
                    })
                })
                .collect()
        };
        let damage: Vec<_> = report
            .damage
            .iter()
            .map(|d| json!({ "offset": d.offset, "packet": d.packet, "detail": d.why, "stopped": d.stopped }))
            .collect();
        println!(
            "{}",
            json!({
                "policy": policy_path,
                "capture": pcap,
                "mode": policy.mode,
                "packets": packets,
                "inbound": report.inbound,
                "outbound": report.outbound,
                "judged_on_headers": { "cut": report.cut, "shortened": report.shortened },
                "not_judged": report.not_judged_total(),
                "not_judged_by_reason": report.not_judged,
                "not_judged_packets": report.not_judged_listed,
                "complete": report.damage_total == 0,
                "damage": damage,
                "would_pass": would_pass,
                "would_drop": would_drop,
                "pass": rows(false),
                "drop": rows(true),
                "alerts": report.alerts,
                "alerts_total": report.alerts_total,
            })
        );
        return Ok(code);
    }
    println!(
        "{} against {}: {}; {} judged inbound, {} outbound (flows learnt), {} not judged",
        printable(&policy_path.display().to_string()),
        printable(&pcap.display().to_string()),
        count(packets, "packet", "packets"),
        group(report.inbound),
        group(report.outbound),
        group(report.not_judged_total())
    );
    if report.cut > 0 {
        println!(
            "  {} cut by the snap length after their headers: judged on their headers (padded back to their length)",
            count(report.cut, "packet was", "packets were")
        );
    }
    if report.shortened > 0 {
        println!(
            "  {} longer than {WHOLE_FRAME_MAX} bytes (jumbo frames, or GRO/TSO aggregates as a host captures them): judged on their headers, their payload shortened for the test run",
            count(report.shortened, "packet was", "packets were")
        );
    }
    if report.inbound > 0 && report.outbound == 0 && hosts.is_empty() {
        println!(
            "  note: no packet was taken as the host's own (use --host ADDR): replies to the host's connections count as inbound"
        );
    }
    if !report.not_judged.is_empty() {
        let by_reason: Vec<String> =
            report.not_judged.iter().map(|(reason, n)| format!("{} {reason}", group(*n))).collect();
        println!(
            "not judged: {} ({})",
            count(report.not_judged_total(), "packet", "packets"),
            by_reason.join(", ")
        );
        for skip in report.not_judged_listed.iter().take(SHOWN) {
            println!("  packet {}: {}", skip.packet, printable(&skip.detail));
        }
        let more = report.not_judged_total().saturating_sub(SHOWN as u64);
        if more > 0 {
            println!("  and {} more (--json lists the first {LISTED_MAX})", group(more));
        }
    }
    for (title, drop, total) in [("would pass", false, would_pass), ("would drop", true, would_drop)] {
        println!("{title}: {}", count(total, "packet", "packets"));
        for ((dropped, reason, decider), tally) in &report.tallies {
            if *dropped != drop {
                continue;
            }
            let ports = if tally.top_ports.is_empty() {
                String::new()
            } else {
                format!(
                    "  ports: {}",
                    tally
                        .top_ports
                        .iter()
                        .map(|p| format!("{}/{} {}", p.protocol, p.port, p.drops))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            println!(
                "  {:<20} {:<40} {:>10} {:<7}{ports}",
                reason.name(),
                printable(&decider.text(&policy, *reason)),
                group(tally.packets),
                noun(tally.packets, "packet", "packets")
            );
        }
    }
    if report.alerts_total > 0 {
        println!("detectors would fire {}:", count(report.alerts_total, "time", "times"));
        for alert in report.alerts.iter().take(20) {
            println!("  {}", alert.human());
        }
    }
    if report.damage_total > 0 {
        println!(
            "the capture is damaged: {} could not be read",
            count(report.damage_total, "place", "places")
        );
        for damage in report.damage.iter().take(SHOWN) {
            let at = match damage.packet {
                Some(packet) => format!("packet {packet} (byte {})", damage.offset),
                None => format!("a block at byte {}", damage.offset),
            };
            let after = if damage.stopped {
                format!(
                    "; reading stopped there, after {}",
                    count(damage.packet.map_or(packets, |p| p - 1), "packet", "packets")
                )
            } else {
                String::new()
            };
            println!("  {at}: {}{after}", printable(&damage.why));
        }
    }
    Ok(code)
}

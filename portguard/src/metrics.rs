//! Prometheus metrics: read from the kernel maps at scrape time (per-CPU values summed), so a
//! scrape costs the packet path nothing. Text exposition by `prometheus-client`.
//!
//! Names follow Prometheus conventions: prefix `portguard_`, counters end in `_total`, an
//! `interface` label, bounded label sets (reasons, kinds, the ports the policy names), never a
//! source address.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{
        MetricType,
        counter::ConstCounter,
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};
use portguard_common::{
    Reason,
    counters::*,
    maps::{MAP_RUNTIME, Runtime},
};

use crate::{
    events::{active_blocks, suppressed},
    maps::{PinnedMaps, open_pinned},
    policy::{Policy, Proto},
    state::RunState,
};

/// What the loader itself counts (from events and alert deliveries), shared with the scrape.
#[derive(Debug, Default)]
pub struct LoaderCounts {
    /// Scans detected, by kind (from the events the loader read).
    pub scans_by_kind: std::collections::BTreeMap<String, u64>,
    pub alerts_delivered: std::collections::BTreeMap<String, u64>,
    pub alerts_failed: std::collections::BTreeMap<String, u64>,
    /// Alerts dropped before delivery (queue full or rate limit).
    pub alerts_dropped: u64,
    /// Seconds since the Unix epoch of the last policy load.
    pub last_load: u64,
}

/// What a scrape of one attachment reads.
pub struct Source {
    pub iface: String,
    pub maps: PinnedMaps,
    /// The ports the policy names (rules and traps): the only ports with a label.
    pub ports: Mutex<BTreeSet<(Proto, u16)>>,
    pub counts: Arc<Mutex<LoaderCounts>>,
}

impl Source {
    pub fn new(iface: &str, policy: &Policy, counts: Arc<Mutex<LoaderCounts>>) -> anyhow::Result<Self> {
        Ok(Self { iface: iface.to_owned(), maps: PinnedMaps::open(iface)?, ports: Mutex::new(named_ports(policy)), counts })
    }

    /// After a reload: the ports the new policy names.
    pub fn set_policy(&self, policy: &Policy) {
        *self.ports.lock().unwrap() = named_ports(policy);
    }
}

/// The ports a policy names, bounded by the policy itself (a range counts port by port, up to
/// 1024 ports in all).
pub fn named_ports(policy: &Policy) -> BTreeSet<(Proto, u16)> {
    let mut ports = BTreeSet::new();
    let rules = policy.rules.iter().flat_map(|r| r.ports.iter().map(move |p| (r.proto, p.clone())));
    let traps = policy
        .trap_ports
        .tcp
        .iter()
        .map(|p| (Proto::Tcp, p.clone()))
        .chain(policy.trap_ports.udp.iter().map(|p| (Proto::Udp, p.clone())));
    for (proto, range) in rules.chain(traps) {
        for port in range {
            if ports.len() >= 1024 {
                return ports;
            }
            ports.insert((proto, port));
        }
    }
    ports
}

#[derive(Debug)]
struct Collected(Arc<Source>);

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let source = &self.0;
        let iface = source.iface.as_str();
        let Ok(counters) = source.maps.counters() else { return Ok(()) };

        let packets = Family::<Vec<(&str, String)>, ConstCounter<u64>>::default();
        let mut families: Vec<(&str, &str, Vec<(Vec<(&str, String)>, u64)>)> = Vec::new();
        let mut packet_rows = Vec::new();
        let mut byte_rows = Vec::new();
        for reason in ALL_REASONS {
            let (applied, would) = (counters.applied(reason), counters.would_drop(reason));
            let action = if reason.is_drop() { "drop" } else { "pass" };
            let labels = |action: &str| vec![("interface", iface.to_string()), ("action", action.to_string()), ("reason", reason.name().to_string())];
            packet_rows.push((labels(action), applied.packets));
            byte_rows.push((labels(action), applied.bytes));
            if reason.is_drop() {
                packet_rows.push((labels("would_drop"), would.packets));
                byte_rows.push((labels("would_drop"), would.bytes));
            }
        }
        drop(packets);
        families.push(("packets", "Packets judged, by action (pass, drop, would_drop in monitor mode) and reason.", packet_rows));
        families.push(("bytes", "Bytes of the packets judged (frame length), by action and reason.", byte_rows));

        let drops = source.maps.port_drops.snapshot();
        let port_rows = source
            .ports
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(proto, port)| {
                let index = portguard_common::maps::port_index(proto.number(), *port)? as usize;
                Some((
                    vec![("interface", iface.to_string()), ("protocol", proto.to_string()), ("port", port.to_string())],
                    drops[index],
                ))
            })
            .collect();
        families.push(("port_drops", "Packets dropped (or would be) per destination port the policy names.", port_rows));

        let counts = source.counts.lock().unwrap();
        let scan_rows = counts
            .scans_by_kind
            .iter()
            .map(|(kind, n)| (vec![("interface", iface.to_string()), ("kind", kind.clone())], *n))
            .collect();
        families.push(("scans_detected", "Port scans detected, by kind (from the events read).", scan_rows));
        let block_rows = vec![
            (vec![("interface", iface.to_string()), ("cause", "scan".to_string())], counters.slot(OBS_SCAN_BLOCKS).packets),
            (vec![("interface", iface.to_string()), ("cause", "trap".to_string())], counters.slot(OBS_TRAP_BLOCKS).packets),
        ];
        families.push(("auto_blocks", "Sources blocked automatically, by cause.", block_rows));
        let one = |value: u64| vec![(vec![("interface", iface.to_string())], value)];
        families.push(("events_lost", "Events the ring buffer had no room for.", one(counters.slot(OBS_EVENTS_LOST).packets)));
        families.push(("events_suppressed", "Drop events held back by the rate limits.", one(suppressed(&source.maps.event_budget))));
        let fragment_rows = [("first", OBS_FRAGMENT_FIRST), ("later", OBS_FRAGMENT_LATER), ("untracked", OBS_FRAGMENT_TABLE_FULL)]
            .into_iter()
            .map(|(kind, slot)| (vec![("interface", iface.to_string()), ("kind", kind.to_string())], counters.slot(slot).packets))
            .collect();
        families.push(("fragments", "Fragments seen, by kind.", fragment_rows));
        let sink_rows = |map: &std::collections::BTreeMap<String, u64>| -> Vec<(Vec<(&str, String)>, u64)> {
            map.iter().map(|(sink, n)| (vec![("interface", iface.to_string()), ("sink", sink.clone())], *n)).collect()
        };
        families.push(("alerts_delivered", "Alerts delivered to a sink.", sink_rows(&counts.alerts_delivered)));
        families.push(("alerts_failed", "Alert deliveries that failed (after retries).", sink_rows(&counts.alerts_failed)));
        families.push(("alerts_dropped", "Alerts dropped before delivery (queue full or rate limit).", one(counts.alerts_dropped)));

        for (name, help, rows) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, value) in rows {
                let labels: Vec<(String, String)> = labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        // Gauges.
        let state = RunState::read(iface);
        let now = crate::loader::kernel_now_ns();
        let automatic = active_blocks(&source.maps.auto_blocks).len() as i64;
        let manual = open_pinned(iface, MAP_RUNTIME)
            .ok()
            .and_then(|m| aya::maps::Array::<_, Runtime>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .map_or(0, |r| r.manual_blocks as i64);
        let policy_entries: i64 = state.as_ref().map_or(0, |s| s.blocklist_sources.iter().map(|b| b.entries as i64).sum());
        let _ = now;
        let gauges: Vec<(&str, &str, Vec<(Vec<(&str, String)>, i64)>)> = vec![
            (
                "active_blocks",
                "Blocks in force, by origin (policy: blocklist entries as written).",
                vec![
                    (vec![("interface", iface.to_string()), ("origin", "automatic".into())], automatic),
                    (vec![("interface", iface.to_string()), ("origin", "manual".into())], manual),
                    (vec![("interface", iface.to_string()), ("origin", "policy".into())], policy_entries),
                ],
            ),
            (
                "policy_generation",
                "The running policy generation (1 at attach, +1 per reload).",
                vec![(vec![("interface", iface.to_string())], state.as_ref().map_or(0, |s| s.generation as i64))],
            ),
            (
                "policy_last_load_timestamp_seconds",
                "When the running policy was loaded (Unix time).",
                vec![(vec![("interface", iface.to_string())], counts.last_load as i64)],
            ),
            (
                "attached",
                "1 while portguard is attached, with the XDP mode and policy mode.",
                vec![(
                    vec![
                        ("interface", iface.to_string()),
                        ("xdp_mode", state.as_ref().map_or("unknown".into(), |s| s.xdp_mode.to_string())),
                        ("mode", state.as_ref().map_or("unknown".into(), |s| format!("{:?}", s.mode).to_lowercase())),
                    ],
                    1,
                )],
            ),
        ];
        for (name, help, rows) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, value) in rows {
                let labels: Vec<(String, String)> = labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let _ = Reason::PassNotIp;
        Ok(())
    }
}

/// The registry for one loader: its attachment, and the build.
pub fn registry(source: Arc<Source>) -> Registry {
    let mut registry = Registry::with_prefix("portguard");
    let build_info = Family::<Vec<(String, String)>, Gauge>::default();
    build_info.get_or_create(&vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]).set(1);
    registry.register("build_info", "portguard's version (always 1).", build_info);
    registry.register_collector(Box::new(Collected(source)));
    registry
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if encode(&mut text, registry).is_err() {
        text.clear();
    }
    text
}

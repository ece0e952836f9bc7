//! From the kernel's `Event` (ring buffer bytes) to an `EventRecord`: addresses, names of
//! protocols, flags, causes and scan kinds, kernel clock to wall clock, and the mode the
//! program that raised it ran in.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use portguard_common::{
    Reason,
    events::{EVENT_FLAG_BLOCKING, EVENT_FLAG_MONITOR, Event, EventKind, SAMPLE_PORTS, ScanKind},
    maps::{
        CAUSE_CONNECTION_LIMIT, CAUSE_RATE_LIMIT, CAUSE_RECIDIVE, CAUSE_SCAN, CAUSE_SLOW_SCAN, CAUSE_TRAP,
        SCAN_COUNT_EXACT_BLOCK, SCAN_COUNT_EXACT_EVENT,
    },
    net::PROTO_TCP,
};

use super::{EventRecord, EventType};
use crate::{
    loader::kernel_now_ns,
    policy::{Mode, compile::estimated_ports},
};

/// An address as the kernel stores it (IPv4-mapped for IPv4).
pub fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn protocol_name(proto: u8) -> String {
    portguard_common::net::protocol_name(proto).map_or_else(|| proto.to_string(), str::to_owned)
}

pub fn tcp_flags(flags: u8) -> String {
    let set: Vec<&str> = portguard_common::net::TCP_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() { "none".into() } else { set.join("|") }
}

/// Every cause of an automatic block, in `CAUSE_*` order.
pub(crate) const BLOCK_CAUSES: [u8; 6] =
    [CAUSE_SCAN, CAUSE_TRAP, CAUSE_SLOW_SCAN, CAUSE_RATE_LIMIT, CAUSE_CONNECTION_LIMIT, CAUSE_RECIDIVE];

pub(crate) fn cause_name(cause: u8) -> &'static str {
    match cause {
        CAUSE_SCAN => "scan",
        CAUSE_SLOW_SCAN => "slow_scan",
        CAUSE_TRAP => "trap",
        CAUSE_RATE_LIMIT => "rate_limit",
        CAUSE_CONNECTION_LIMIT => "connection_limit",
        CAUSE_RECIDIVE => "recidive",
        _ => "automatic",
    }
}

/// A block `[brute_force]` made.
pub(crate) fn is_limit_cause(cause: u8) -> bool {
    matches!(cause, CAUSE_RATE_LIMIT | CAUSE_CONNECTION_LIMIT | CAUSE_RECIDIVE)
}

/// The distinct ports a scan event's count stands for: exact, or estimated from a port set's
/// bits.
fn scan_ports(count: u32) -> u32 {
    if count & SCAN_COUNT_EXACT_EVENT != 0 { count & !SCAN_COUNT_EXACT_EVENT } else { estimated_ports(count) }
}

/// The same for an automatic block's record of the scan.
pub(crate) fn block_scan_ports(port: u16) -> u32 {
    if port & SCAN_COUNT_EXACT_BLOCK != 0 {
        u32::from(port & !SCAN_COUNT_EXACT_BLOCK)
    } else {
        estimated_ports(u32::from(port))
    }
}

/// The prefix length worth showing beside an address the kernel counted or blocked as a
/// network: none for a single address.
pub(crate) fn network_prefix(addr: [u8; 16], prefix_len: u8) -> Option<u8> {
    match ip_of(addr) {
        IpAddr::V6(_) if prefix_len != 0 && prefix_len < 128 => Some(prefix_len),
        _ => None,
    }
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    mono_ns: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self { wall: SystemTime::now(), mono_ns: kernel_now_ns() }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - mono_ns)
        }
    }
}

pub fn decode(event: &Event, interface: &str, clock: &Clock) -> Result<EventRecord> {
    let Some(kind) = EventKind::from_u8(event.kind) else {
        bail!("unknown event kind {}", event.kind);
    };
    let mut record = EventRecord::new(clock.wall(event.time_ns), interface, EventType::of_kernel(kind));
    if event.flags & EVENT_FLAG_MONITOR != 0 {
        record.mode = Some(Mode::Monitor);
    }
    record.source = Some(ip_of(event.src));
    record.destination = Some(ip_of(event.dst));
    record.protocol = Some(protocol_name(event.proto));
    if portguard_common::net::has_ports(event.proto) {
        record.source_port = Some(event.sport);
        record.destination_port = Some(event.dport);
    }
    if event.proto == PROTO_TCP {
        record.tcp_flags = Some(tcp_flags(event.tcp_flags));
    }
    let block = |record: &mut EventRecord| {
        if event.expires_ns > event.time_ns {
            record.block_seconds = Some((event.expires_ns - event.time_ns).div_ceil(1_000_000_000));
            record.expires =
                Some(humantime::format_rfc3339_seconds(clock.wall(event.expires_ns)).to_string());
        }
    };
    match kind {
        EventKind::Drop => {
            record.reason = Some(Reason::from_u8(event.reason).map_or("unknown", Reason::name).to_string());
        }
        EventKind::ScanDetected => {
            record.prefix_len = network_prefix(event.src, event.prefix_len);
            record.scan_kind = Some(ScanKind::from_u8(event.scan_kind).name().to_string());
            record.distinct_ports = Some(scan_ports(event.count));
            let samples = (event.samples as usize).min(SAMPLE_PORTS);
            record.ports_sample = Some(event.sample_ports[..samples].to_vec());
            // The kernel sends auto_blocked right after when it blocks; say so here too.
            let blocking = event.flags & EVENT_FLAG_BLOCKING != 0;
            record.action = Some(if blocking { "blocked" } else { "alert" }.to_string());
            record.reason = Some(cause_name(event.reason).to_string());
        }
        EventKind::AutoBlocked => {
            record.prefix_len = network_prefix(event.src, event.prefix_len);
            record.reason = Some(cause_name(event.reason).to_string());
            record.action = Some("blocked".into());
            if is_limit_cause(event.reason) {
                // `scan_kind` carries which limit (the cause itself, or under a recidive).
                record.limit = Some(cause_name(event.scan_kind).to_string());
                record.count = Some(u64::from(event.count));
            } else {
                record.scan_kind = Some(ScanKind::from_u8(event.scan_kind).name().to_string());
                if event.reason != CAUSE_TRAP {
                    record.distinct_ports = Some(scan_ports(event.count));
                }
            }
            block(&mut record);
        }
        EventKind::Limited => {
            record.limit = Some(cause_name(event.reason).to_string());
            record.rule = u16::try_from(event.count).ok();
            record.action = Some("limited".into());
        }
        EventKind::TrapHit => {
            record.reason = Some("trap".into());
            record.scan_kind = Some(ScanKind::from_u8(event.scan_kind).name().to_string());
            record.action = Some(if event.expires_ns != 0 { "blocked" } else { "alert" }.to_string());
            block(&mut record);
        }
        EventKind::BlockExpired => {
            record.prefix_len = network_prefix(event.src, event.prefix_len);
            record.reason = Some(cause_name(event.reason).to_string());
            record.destination_port = None;
            record.source_port = None;
            record.tcp_flags = None;
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use portguard_common::maps::v4_mapped;

    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            time_ns: 10_000_000_000,
            expires_ns: 0,
            src: v4_mapped([203, 0, 113, 7]),
            dst: v4_mapped([192, 0, 2, 2]),
            ifindex: 2,
            count: 0,
            sport: 40000,
            dport: 23,
            kind: kind as u8,
            reason: 0,
            proto: PROTO_TCP,
            scan_kind: 0,
            tcp_flags: portguard_common::net::TCP_SYN,
            samples: 0,
            prefix_len: 0,
            flags: 0,
            sample_ports: [0; SAMPLE_PORTS],
        }
    }

    fn clock() -> Clock {
        Clock { wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000), mono_ns: 10_000_000_000 }
    }

    /// Decoded on a host named `gw1`.
    fn decoded(raw: &Event) -> EventRecord {
        EventRecord { host: Some("gw1".into()), ..decode(raw, "eth0", &clock()).unwrap() }
    }

    #[test]
    fn drop_events() {
        let mut raw = event(EventKind::Drop);
        raw.reason = Reason::DropPortDenied as u8;
        let record = decoded(&raw);
        assert_eq!(
            record.json(),
            r#"{"time":"2027-01-15T08:00:00.000Z","host":"gw1","interface":"eth0","event":"drop","source":"203.0.113.7","destination":"192.0.2.2","source_port":40000,"destination_port":23,"protocol":"tcp","reason":"port_denied","tcp_flags":"SYN"}"#
        );
        assert_eq!(
            record.human(),
            "2027-01-15T08:00:00.000Z eth0 DROP    203.0.113.7 -> 192.0.2.2:23 tcp SYN dropped: port_denied"
        );
    }

    #[test]
    fn events_of_a_monitoring_program_say_so() {
        let mut raw = event(EventKind::Drop);
        raw.reason = Reason::DropDefaultDeny as u8;
        raw.flags = EVENT_FLAG_MONITOR;
        let record = decoded(&raw);
        assert_eq!(record.event, EventType::Drop, "the same event, so filters on it keep working");
        assert!(record.json().contains(r#""event":"drop","mode":"monitor","#), "{}", record.json());
        assert_eq!(
            record.human(),
            "2027-01-15T08:00:00.000Z eth0 WOULD-DROP 203.0.113.7 -> 192.0.2.2:23 tcp SYN would be dropped (monitor mode: passed): default_deny"
        );

        let mut raw = event(EventKind::AutoBlocked);
        raw.reason = CAUSE_SCAN;
        raw.count = 20;
        raw.expires_ns = raw.time_ns + 900_000_000_000;
        raw.flags = EVENT_FLAG_MONITOR;
        let record = decoded(&raw);
        assert!(record.json().contains(r#""mode":"monitor""#));
        assert!(
            record.human().contains(
                "WOULD-BLOCK 203.0.113.7 would be blocked (monitor mode: counted, not dropped) for 15m"
            ),
            "{}",
            record.human()
        );
        let mut raw = event(EventKind::ScanDetected);
        raw.flags = EVENT_FLAG_MONITOR | EVENT_FLAG_BLOCKING;
        assert!(decoded(&raw).human().ends_with("; would block (monitor mode)"), "{}", decoded(&raw).human());

        // Enforced: no mode key, the words of before.
        raw.flags = EVENT_FLAG_BLOCKING;
        assert!(!decoded(&raw).json().contains("mode"));
        assert!(decoded(&raw).human().ends_with("; blocking"));
    }

    #[test]
    #[allow(clippy::decimal_bitwise_operands, reason = "a port count beside the exact-count flag")]
    fn scan_and_block_events() {
        let mut raw = event(EventKind::ScanDetected);
        raw.count = 20 | SCAN_COUNT_EXACT_EVENT;
        raw.samples = 3;
        raw.sample_ports[..3].copy_from_slice(&[21, 22, 23]);
        raw.scan_kind = ScanKind::Xmas as u8;
        raw.reason = CAUSE_SCAN;
        raw.flags = EVENT_FLAG_BLOCKING;
        raw.prefix_len = 32;
        let record = decoded(&raw);
        assert_eq!(record.prefix_len, None, "a single IPv4 address is not shown as a network");
        assert_eq!(record.scan_kind.as_deref(), Some("xmas"));
        assert_eq!(record.distinct_ports, Some(20));
        assert_eq!(record.ports_sample, Some(vec![21, 22, 23]));
        assert_eq!(record.action.as_deref(), Some("blocked"));
        assert!(record.human().contains("SCAN    203.0.113.7 -> 192.0.2.2 xmas scan: 20 distinct tcp ports refused (sample 21,22,23); blocking"), "{}", record.human());

        let mut raw = event(EventKind::AutoBlocked);
        raw.reason = CAUSE_SCAN;
        raw.count = 20;
        raw.expires_ns = raw.time_ns + 900_000_000_000;
        let record = decoded(&raw);
        assert_eq!(record.block_seconds, Some(900));
        assert_eq!(record.expires.as_deref(), Some("2027-01-15T08:15:00Z"));
        assert!(
            record.json().contains(r#""block_secs":900,"expires_at":"2027-01-15T08:15:00Z""#),
            "{}",
            record.json()
        );
        assert!(
            record.human().ends_with("BLOCK   203.0.113.7 blocked for 15m (syn scan of 20 ports)"),
            "{}",
            record.human()
        );
        let parsed: EventRecord = serde_json::from_str(&record.json()).unwrap();
        assert_eq!(parsed, record);
    }

    #[test]
    fn limit_events_and_brute_force_blocks() {
        let mut raw = event(EventKind::Limited);
        raw.dport = 22;
        raw.reason = CAUSE_RATE_LIMIT;
        raw.count = 2;
        let record = decoded(&raw);
        assert_eq!((record.limit.as_deref(), record.rule), (Some("rate_limit"), Some(2)));
        assert!(
            record.human().contains(
                "LIMIT   203.0.113.7 -> 192.0.2.2:22 tcp: the per-source rate limit of rule 2 refused it"
            ),
            "{}",
            record.human()
        );
        raw.flags = EVENT_FLAG_MONITOR;
        assert!(decoded(&raw).human().contains("WOULD-LIMIT"), "{}", decoded(&raw).human());

        let mut raw = event(EventKind::AutoBlocked);
        raw.dport = 22;
        raw.reason = CAUSE_RECIDIVE;
        raw.scan_kind = CAUSE_RATE_LIMIT;
        raw.count = 10;
        raw.prefix_len = 32;
        raw.expires_ns = raw.time_ns + 1_200_000_000_000;
        let record = decoded(&raw);
        assert_eq!(
            (record.reason.as_deref(), record.limit.as_deref()),
            (Some("recidive"), Some("rate_limit"))
        );
        assert_eq!(
            (record.count, record.scan_kind.as_deref(), record.distinct_ports),
            (Some(10), None, None)
        );
        assert!(
            record.human().ends_with(
                "BLOCK   203.0.113.7 blocked for 20m (again, a longer block: the per-source rate limit of tcp/22 refused 10 attempts within the window)"
            ),
            "{}",
            record.human()
        );
    }

    #[test]
    fn slow_scans_of_ipv6_networks() {
        let mut raw = event(EventKind::ScanDetected);
        raw.src = "2001:db8:5::".parse::<Ipv6Addr>().unwrap().octets();
        raw.prefix_len = 64;
        raw.reason = CAUSE_SLOW_SCAN;
        // 38 bits of a 512-bit set: most likely 39 distinct ports (some share a bit).
        raw.count = 38;
        let record = decoded(&raw);
        assert_eq!(record.prefix_len, Some(64));
        assert_eq!(record.reason.as_deref(), Some("slow_scan"));
        assert_eq!(record.action.as_deref(), Some("alert"));
        assert_eq!(record.distinct_ports, Some(39));
        assert!(
            record
                .human()
                .contains("SCAN    2001:db8:5::/64 -> 192.0.2.2 syn slow scan: 39 distinct tcp ports"),
            "{}",
            record.human()
        );
        assert!(record.json().contains(r#""source":"2001:db8:5::","prefix_len":64"#), "{}", record.json());
    }

    #[test]
    fn trap_expiry_and_loss_events() {
        let mut raw = event(EventKind::TrapHit);
        raw.reason = CAUSE_TRAP;
        raw.expires_ns = raw.time_ns + 3_600_000_000_000;
        let record = decoded(&raw);
        assert_eq!(record.action.as_deref(), Some("blocked"));
        assert!(
            record.human().ends_with("TRAP    203.0.113.7 -> 192.0.2.2:23 tcp trap port: blocked for 1h"),
            "{}",
            record.human()
        );
        raw.expires_ns = 0;
        let record = decoded(&raw);
        assert_eq!(record.action.as_deref(), Some("alert"));
        assert!(record.human().contains("never_block source, not blocked"));

        let mut raw = event(EventKind::BlockExpired);
        raw.reason = CAUSE_TRAP;
        let record = decoded(&raw);
        assert_eq!(record.destination_port, None);
        assert!(
            record.human().ends_with("UNBLOCK 203.0.113.7 unblocked: its trap block expired"),
            "{}",
            record.human()
        );

        let lost = EventRecord { host: None, ..EventRecord::events_lost(clock().wall, "eth0", 42) };
        assert_eq!(
            lost.json(),
            r#"{"time":"2027-01-15T08:00:00.000Z","interface":"eth0","event":"events_lost","count":42}"#
        );
        assert!(lost.human().contains("LOST    42 events lost"), "{}", lost.human());
    }

    #[test]
    fn ipv6_and_other_protocols() {
        let mut raw = event(EventKind::Drop);
        raw.src = "2001:db8:bad::7".parse::<Ipv6Addr>().unwrap().octets();
        raw.dst = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        raw.proto = portguard_common::net::PROTO_ICMPV6;
        raw.reason = Reason::DropBlocklist as u8;
        let record = decoded(&raw);
        assert_eq!(record.source_port, None);
        assert_eq!(record.protocol.as_deref(), Some("icmpv6"));
        assert!(
            record.human().contains("2001:db8:bad::7 -> 2001:db8::2 icmpv6 dropped: blocklist"),
            "{}",
            record.human()
        );
        assert!(decode(&Event { kind: 99, ..raw }, "eth0", &clock()).is_err());
    }
}

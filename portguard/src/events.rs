//! Events from the kernel: reading the `PG_EVENTS` ring buffer, reporting what it could not
//! hold, sweeping expired automatic blocks, and rendering each event as one human line or one
//! JSON object (the schema the README documents).

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
};
use portguard_common::{
    Counter, Reason,
    counters::OBS_EVENTS_LOST,
    events::{EVENT_FLAG_BLOCKING, Event, EventKind, SAMPLE_PORTS, ScanKind},
    maps::{
        AutoBlock, CAUSE_SCAN, CAUSE_SLOW_SCAN, CAUSE_TRAP, EventBudget, MAP_AUTO_BLOCK, MAP_COUNTERS,
        MAP_EVENT_BUDGET, MAP_EVENTS, MAP_RUNTIME, RUNTIME_KERNEL, Runtime, SCAN_COUNT_EXACT_BLOCK,
        SCAN_COUNT_EXACT_EVENT,
    },
};
use serde::{Deserialize, Serialize};

pub use crate::budget::{Grants, refill_budget, suppressed};
use crate::{loader::kernel_now_ns, paths, policy::compile::estimated_ports};

/// One event, decoded: what `--json` prints (one object per line) and what the human line is
/// rendered from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub interface: String,
    /// `drop`, `scan_detected`, `auto_blocked`, `block_expired`, `trap_hit`, `events_lost`,
    /// `unprotected`, `reattached`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// Scans and automatic blocks of IPv6 sources: `source` is the address of a network of
    /// this length (the policy's `[scan_detection] ipv6_prefix`), counted and blocked as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the IP protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Drops: the verdict reason (`port_denied`, `blocklist`, ...). Scans and blocks: `scan`,
    /// `slow_scan` (the long window's threshold) or `trap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// TCP flags of the packet, e.g. `SYN` or `FIN|PSH|URG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// `syn`, `connect`, `fin`, `null`, `xmas`, `ack`, `udp`, `other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_kind: Option<String>,
    /// Scans: distinct refused ports in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_ports: Option<u32>,
    /// Scans: the first ports tried in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_sample: Option<Vec<u16>>,
    /// `blocked` or `alert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Blocks: how long the block lasts, in seconds.
    #[serde(rename = "block_secs", default, skip_serializing_if = "Option::is_none")]
    pub block_seconds: Option<u64>,
    /// Blocks: when it ends (RFC 3339).
    #[serde(rename = "expires_at", default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `events_lost`: how many events the ring buffer could not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl EventRecord {
    fn new(time: SystemTime, interface: &str, event: &str) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(time).to_string(),
            interface: interface.to_owned(),
            event: event.to_owned(),
            source: None,
            prefix_len: None,
            destination: None,
            source_port: None,
            destination_port: None,
            protocol: None,
            reason: None,
            tcp_flags: None,
            scan_kind: None,
            distinct_ports: None,
            ports_sample: None,
            action: None,
            block_seconds: None,
            expires: None,
            count: None,
        }
    }

    /// The loader about its attachment: `unprotected` (the interface went away, or the programs
    /// are not on it) or `reattached` (they are again); `reason` says what happened.
    pub fn lifecycle(time: SystemTime, interface: &str, event: &str, detail: String) -> Self {
        Self { reason: Some(detail), ..Self::new(time, interface, event) }
    }

    /// Ring buffer overflow, reported by the reader from the kernel's counter.
    pub fn events_lost(time: SystemTime, interface: &str, count: u64) -> Self {
        Self { count: Some(count), ..Self::new(time, interface, "events_lost") }
    }

    /// One line for people: time, interface, what, who, details.
    pub fn human(&self) -> String {
        let who = match (self.source, self.prefix_len) {
            (Some(source), Some(len)) => format!("{source}/{len}"),
            (Some(source), None) => source.to_string(),
            _ => String::new(),
        };
        let target = match (self.destination, self.destination_port) {
            (Some(dst), Some(port)) if port != 0 => format!("{}:{port}", bracket(dst)),
            (Some(dst), _) => dst.to_string(),
            _ => String::new(),
        };
        let proto = self.protocol.as_deref().unwrap_or("");
        let kind = self.scan_kind.as_deref().unwrap_or("");
        let block = match (self.block_seconds, &self.expires) {
            (Some(secs), _) => format!("for {}", crate::durations::format_secs(secs)),
            _ => String::new(),
        };
        let details = match self.event.as_str() {
            "drop" => format!(
                "{who} -> {target} {proto}{} dropped: {}",
                self.tcp_flags.as_deref().map(|f| format!(" {f}")).unwrap_or_default(),
                self.reason.as_deref().unwrap_or("?")
            ),
            "scan_detected" => format!(
                "{who} -> {} {kind} {}: {} distinct {proto} ports refused (sample {}){}",
                self.destination.map(|d| d.to_string()).unwrap_or_default(),
                if self.reason.as_deref() == Some("slow_scan") { "slow scan" } else { "scan" },
                self.distinct_ports.unwrap_or(0),
                self.ports_sample.as_deref().map(ports_list).unwrap_or_default(),
                if self.action.as_deref() == Some("blocked") { "; blocking" } else { "; alert only" }
            ),
            "auto_blocked" => format!(
                "{who} blocked {block} ({})",
                match self.reason.as_deref() {
                    Some("trap") =>
                        format!("touched trap port {proto}/{}", self.destination_port.unwrap_or(0)),
                    Some("slow_scan") =>
                        format!("{kind} slow scan of {} ports", self.distinct_ports.unwrap_or(0)),
                    _ => format!("{kind} scan of {} ports", self.distinct_ports.unwrap_or(0)),
                }
            ),
            "trap_hit" => format!(
                "{who} -> {target} {proto} trap port{}",
                if self.action.as_deref() == Some("blocked") {
                    format!(": blocked {block}")
                } else {
                    ": never_block source, not blocked".to_string()
                }
            ),
            "block_expired" => format!(
                "{who} unblocked: its {} block expired",
                self.reason.as_deref().unwrap_or("automatic")
            ),
            "events_lost" => format!(
                "{} lost: the ring buffer was full (raise [events] ring_buffer_kib)",
                crate::output::count(self.count.unwrap_or(0), "event", "events")
            ),
            "unprotected" => format!("NOT PROTECTED: {}", self.reason.as_deref().unwrap_or("?")),
            "reattached" => format!("protected again: {}", self.reason.as_deref().unwrap_or("?")),
            other => other.to_string(),
        };
        let label = match self.event.as_str() {
            "drop" => "DROP",
            "scan_detected" => "SCAN",
            "auto_blocked" => "BLOCK",
            "trap_hit" => "TRAP",
            "block_expired" => "UNBLOCK",
            "events_lost" => "LOST",
            "unprotected" | "reattached" => "IFACE",
            _ => "EVENT",
        };
        crate::printable(&format!("{} {} {label:<7} {details}", self.time, self.interface)).into_owned()
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("event serializes")
    }
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn ports_list(ports: &[u16]) -> String {
    ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// An address as the kernel stores it (IPv4-mapped for IPv4).
pub fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        other => other.to_string(),
    }
}

pub fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 6] =
        [(0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"), (0x20, "URG")];
    let set: Vec<&str> = NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| *n).collect();
    if set.is_empty() { "none".into() } else { set.join("|") }
}

pub(crate) fn cause_name(cause: u8) -> &'static str {
    match cause {
        CAUSE_SCAN => "scan",
        CAUSE_SLOW_SCAN => "slow_scan",
        CAUSE_TRAP => "trap",
        _ => "automatic",
    }
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
    let mut record = EventRecord::new(clock.wall(event.time_ns), interface, kind.name());
    record.source = Some(ip_of(event.src));
    record.destination = Some(ip_of(event.dst));
    record.protocol = Some(protocol_name(event.proto));
    if matches!(event.proto, 6 | 17) {
        record.source_port = Some(event.sport);
        record.destination_port = Some(event.dport);
    }
    if event.proto == 6 {
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
            record.scan_kind = Some(ScanKind::from_u8(event.scan_kind).name().to_string());
            if event.reason != CAUSE_TRAP {
                record.distinct_ports = Some(scan_ports(event.count));
            }
            block(&mut record);
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

/// Reads one attachment's events: the ring buffer, the lost-event counter, and the automatic
/// blocks to sweep when they expire.
pub struct EventSource {
    pub interface: String,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, Counter>,
    auto_blocks: HashMap<MapData, [u8; 16], AutoBlock>,
    budget: PerCpuArray<MapData, EventBudget>,
    runtime: Array<MapData, Runtime>,
    lost_seen: u64,
}

impl EventSource {
    /// From a running attachment's pins.
    pub fn from_pins(interface: &str) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = paths::map_pin(interface, name);
            let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Self::from_maps(
            interface,
            [
                open(MAP_EVENTS)?,
                open(MAP_COUNTERS)?,
                open(MAP_AUTO_BLOCK)?,
                open(MAP_EVENT_BUDGET)?,
                open(MAP_RUNTIME)?,
            ],
        )
    }

    /// From a loaded object (its maps are shared, not taken).
    pub fn from_ebpf(interface: &str, ebpf: &Ebpf) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let map = ebpf.map(name).with_context(|| format!("no map {name}"))?;
            let id = match map {
                Map::RingBuf(data) | Map::PerCpuArray(data) | Map::LruHashMap(data) | Map::Array(data) => {
                    data.info()?.id()
                }
                _ => bail!("{name} has an unexpected type"),
            };
            Ok(Map::from_map_data(MapData::from_id(id)?)?)
        };
        Self::from_maps(
            interface,
            [
                open(MAP_EVENTS)?,
                open(MAP_COUNTERS)?,
                open(MAP_AUTO_BLOCK)?,
                open(MAP_EVENT_BUDGET)?,
                open(MAP_RUNTIME)?,
            ],
        )
    }

    fn from_maps(interface: &str, [ring, counters, auto_blocks, budget, runtime]: [Map; 5]) -> Result<Self> {
        let mut source = Self {
            interface: interface.to_owned(),
            ring: RingBuf::try_from(ring)?,
            counters: PerCpuArray::try_from(counters)?,
            auto_blocks: HashMap::try_from(auto_blocks)?,
            budget: PerCpuArray::try_from(budget)?,
            runtime: Array::try_from(runtime)?,
            lost_seen: 0,
        };
        // Report only what is lost from now on.
        source.lost_seen = source.lost_total()?;
        Ok(source)
    }

    pub fn auto_blocks(&self) -> &HashMap<MapData, [u8; 16], AutoBlock> {
        &self.auto_blocks
    }

    /// Every event waiting in the ring buffer, decoded.
    pub fn drain(&mut self) -> Vec<EventRecord> {
        let clock = Clock::now();
        let mut records = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (repr(C), plain data); read unaligned.
            let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match decode(&event, &self.interface, &clock) {
                Ok(record) => records.push(record),
                Err(error) => log::warn!("skipping an event: {error}"),
            }
        }
        records
    }

    /// Grants every CPU its share of this second's budget (called every second by the reader;
    /// the kernel spends it).
    pub fn refill(&mut self, grants: Grants) -> Result<()> {
        refill_budget(&mut self.budget, grants)
    }

    fn lost_total(&self) -> Result<u64> {
        let per_cpu = self.counters.get(&OBS_EVENTS_LOST, 0)?;
        Ok(per_cpu.iter().map(|c| c.packets).sum())
    }

    /// Events the ring buffer could not hold since the last call.
    pub fn newly_lost(&mut self) -> Result<Option<EventRecord>> {
        let total = self.lost_total()?;
        let lost = total.saturating_sub(self.lost_seen);
        self.lost_seen = total;
        Ok((lost > 0).then(|| EventRecord::events_lost(SystemTime::now(), &self.interface, lost)))
    }

    /// Removes automatic blocks that expired without their source coming back (the packet
    /// path removes those that do), reporting each.
    pub fn sweep_expired(&mut self) -> Result<Vec<EventRecord>> {
        let now = kernel_now_ns();
        let expired: Vec<([u8; 16], AutoBlock)> = self
            .auto_blocks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, block)| block.expires_ns <= now)
            .collect();
        let mut records = Vec::new();
        for (addr, block) in expired {
            // Whoever removes it (we, or the packet path) reports it: never both.
            if self.auto_blocks.remove(&addr).is_ok() {
                let mut record = EventRecord::new(SystemTime::now(), &self.interface, "block_expired");
                record.source = Some(ip_of(addr));
                record.prefix_len = network_prefix(addr, block.prefix_len);
                record.reason = Some(cause_name(block.cause).to_string());
                records.push(record);
            }
        }
        self.forget_empty_auto_blocks()?;
        Ok(records)
    }

    /// Lets the packet path skip the automatic-block lookup again once the table is empty.
    /// The kernel sets the flag after each insert, so clearing it and then looking at the
    /// table once more never leaves a block unconsulted for longer than these two steps.
    fn forget_empty_auto_blocks(&mut self) -> Result<()> {
        let flagged = self.runtime.get(&RUNTIME_KERNEL, 0)?;
        if flagged.auto_blocks == 0 || self.auto_blocks.keys().next().is_some() {
            return Ok(());
        }
        self.runtime.set(RUNTIME_KERNEL, Runtime { auto_blocks: 0, ..flagged }, 0)?;
        if self.auto_blocks.keys().next().is_some() {
            self.runtime.set(RUNTIME_KERNEL, flagged, 0)?;
        }
        Ok(())
    }
}

impl std::os::fd::AsRawFd for EventSource {
    /// The ring buffer's fd: readable when events wait (for epoll/`AsyncFd`).
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.ring.as_fd().as_raw_fd()
    }
}

impl EventSource {
    /// Registers the ring buffer with the tokio reactor: readable when events wait.
    pub fn watch(self) -> Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: the fd is the ring buffer's, owned by `self.ring` for as long as the
        // `AsyncFd` owns `self`, and `as_raw_fd` always returns that same fd.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
            .map_err(|error| anyhow::anyhow!("watching the event ring buffer: {}", error))
    }
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
            proto: 6,
            scan_kind: 0,
            tcp_flags: 0x02,
            samples: 0,
            prefix_len: 0,
            flags: 0,
            sample_ports: [0; SAMPLE_PORTS],
        }
    }

    fn clock() -> Clock {
        Clock { wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000), mono_ns: 10_000_000_000 }
    }

    #[test]
    fn drop_events() {
        let mut raw = event(EventKind::Drop);
        raw.reason = Reason::DropPortDenied as u8;
        let record = decode(&raw, "eth0", &clock()).unwrap();
        assert_eq!(
            record.json(),
            r#"{"time":"2027-01-15T08:00:00.000Z","interface":"eth0","event":"drop","source":"203.0.113.7","destination":"192.0.2.2","source_port":40000,"destination_port":23,"protocol":"tcp","reason":"port_denied","tcp_flags":"SYN"}"#
        );
        assert_eq!(
            record.human(),
            "2027-01-15T08:00:00.000Z eth0 DROP    203.0.113.7 -> 192.0.2.2:23 tcp SYN dropped: port_denied"
        );
    }

    #[test]
    fn scan_and_block_events() {
        let mut raw = event(EventKind::ScanDetected);
        raw.count = 20 | SCAN_COUNT_EXACT_EVENT;
        raw.samples = 3;
        raw.sample_ports[..3].copy_from_slice(&[21, 22, 23]);
        raw.scan_kind = ScanKind::Xmas as u8;
        raw.reason = CAUSE_SCAN;
        raw.flags = EVENT_FLAG_BLOCKING;
        raw.prefix_len = 32;
        let record = decode(&raw, "eth0", &clock()).unwrap();
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
        let record = decode(&raw, "eth0", &clock()).unwrap();
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
    fn slow_scans_of_ipv6_networks() {
        let mut raw = event(EventKind::ScanDetected);
        raw.src = "2001:db8:5::".parse::<Ipv6Addr>().unwrap().octets();
        raw.prefix_len = 64;
        raw.reason = CAUSE_SLOW_SCAN;
        // 38 bits of a 512-bit set: most likely 39 distinct ports (some share a bit).
        raw.count = 38;
        let record = decode(&raw, "eth0", &clock()).unwrap();
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
        let record = decode(&raw, "eth0", &clock()).unwrap();
        assert_eq!(record.action.as_deref(), Some("blocked"));
        assert!(
            record.human().ends_with("TRAP    203.0.113.7 -> 192.0.2.2:23 tcp trap port: blocked for 1h"),
            "{}",
            record.human()
        );
        raw.expires_ns = 0;
        let record = decode(&raw, "eth0", &clock()).unwrap();
        assert_eq!(record.action.as_deref(), Some("alert"));
        assert!(record.human().contains("never_block source, not blocked"));

        let mut raw = event(EventKind::BlockExpired);
        raw.reason = CAUSE_TRAP;
        let record = decode(&raw, "eth0", &clock()).unwrap();
        assert_eq!(record.destination_port, None);
        assert!(
            record.human().ends_with("UNBLOCK 203.0.113.7 unblocked: its trap block expired"),
            "{}",
            record.human()
        );

        let lost = EventRecord::events_lost(clock().wall, "eth0", 42);
        assert_eq!(
            lost.json(),
            r#"{"time":"2027-01-15T08:00:00.000Z","interface":"eth0","event":"events_lost","count":42}"#
        );
        assert!(lost.human().contains("LOST    42 events lost"));
    }

    #[test]
    fn ipv6_and_other_protocols() {
        let mut raw = event(EventKind::Drop);
        raw.src = "2001:db8:bad::7".parse::<Ipv6Addr>().unwrap().octets();
        raw.dst = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        raw.proto = 58;
        raw.reason = Reason::DropBlocklist as u8;
        let record = decode(&raw, "eth0", &clock()).unwrap();
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

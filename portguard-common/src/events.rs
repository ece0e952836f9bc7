//! Events the kernel sends to userspace through the `PG_EVENTS` ring buffer.

/// `Event::kind`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A packet was dropped (sampled: rate-limited per source and per CPU).
    Drop = 1,
    /// A source crossed the scan threshold in a window.
    ScanDetected = 2,
    /// A source was blocked automatically (scan or trap port).
    AutoBlocked = 3,
    /// An automatic block expired and was removed.
    BlockExpired = 4,
    /// A source tried to open a trap port.
    TrapHit = 5,
    /// A rule's per-source limit refused a source: the first refusal of each `[brute_force]`
    /// window (one minute without that section), per source and rule.
    Limited = 6,
}

impl EventKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        [Self::Drop, Self::ScanDetected, Self::AutoBlocked, Self::BlockExpired, Self::TrapHit, Self::Limited]
            .into_iter()
            .find(|k| *k as u8 == value)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::ScanDetected => "scan_detected",
            Self::AutoBlocked => "auto_blocked",
            Self::BlockExpired => "block_expired",
            Self::TrapHit => "trap_hit",
            Self::Limited => "limited",
        }
    }
}

/// How a source probes, from the packets it sends (or the refusals it gets).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScanKind {
    /// Half-open SYN from a raw-socket scanner (short option list, small window).
    Syn = 0,
    /// SYN from a full TCP stack: `connect()`.
    Connect = 1,
    Fin = 2,
    Null = 3,
    /// FIN + PSH + URG.
    Xmas = 4,
    /// ACK without SYN to a port with no flow.
    Ack = 5,
    Udp = 6,
    /// Other flag combinations.
    Other = 7,
}

pub const SCAN_KINDS: usize = 8;

impl ScanKind {
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Syn,
            1 => Self::Connect,
            2 => Self::Fin,
            3 => Self::Null,
            4 => Self::Xmas,
            5 => Self::Ack,
            6 => Self::Udp,
            _ => Self::Other,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Syn => "syn",
            Self::Connect => "connect",
            Self::Fin => "fin",
            Self::Null => "null",
            Self::Xmas => "xmas",
            Self::Ack => "ack",
            Self::Udp => "udp",
            Self::Other => "other",
        }
    }
}

pub const SAMPLE_PORTS: usize = 8;

/// `Event::flags` of a scan: a block follows (the policy blocks scanners and the source is
/// not exempt).
pub const EVENT_FLAG_BLOCKING: u8 = 1;
/// `Event::flags` of any event: the program that sent it only monitors (`mode = "monitor"`),
/// so what it reports as dropped or blocked was counted, not dropped. Set by the program
/// itself, so an event raised just before a reload still says which mode judged it.
pub const EVENT_FLAG_MONITOR: u8 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC, coarse) when it happened.
    pub time_ns: u64,
    /// For blocks: when the block expires (`bpf_ktime_get_coarse_ns` clock).
    pub expires_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    /// Scans: distinct ports in the window. Drops: drops of this kind not reported since the
    /// last event (suppressed by the rate limit), where known. Limits: the rule's number.
    /// Blocks for a limit: the attempts refused in the window.
    pub count: u32,
    pub sport: u16,
    pub dport: u16,
    /// `EventKind`.
    pub kind: u8,
    /// The packet's `Reason` (drop events), or the cause (`CAUSE_*`: for scans, which window
    /// saw it; for blocks, why).
    pub reason: u8,
    pub proto: u8,
    /// `ScanKind`.
    pub scan_kind: u8,
    pub tcp_flags: u8,
    /// Valid entries in `sample_ports`.
    pub samples: u8,
    /// Scans and automatic blocks: `src` is a network of this prefix length (IPv6 sources
    /// are counted and blocked by the policy's `ipv6_prefix`); 0 for other events.
    pub prefix_len: u8,
    /// `EVENT_FLAG_*`.
    pub flags: u8,
    pub sample_ports: [u16; SAMPLE_PORTS],
}

const _: () = assert!(size_of::<Event>() == 88);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}

/// Bytes of a frame an `EvidencePacket` holds at most: its headers (Ethernet, VLAN tags, IP
/// with options or extension headers, TCP with options) and up to `EVIDENCE_MAX_SNAPLEN`
/// bytes of payload; a frame with longer headers is cut here.
pub const EVIDENCE_FRAME_BYTES: usize = 384;
/// Most payload bytes `[evidence] snaplen` may keep after a packet's headers.
pub const EVIDENCE_MAX_SNAPLEN: u32 = 128;

/// One packet of a source blocked automatically, copied with its bytes to the `PG_EVIDENCE`
/// ring buffer (`[evidence]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvidencePacket {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the packet was copied.
    pub time_ns: u64,
    /// The block's `AutoBlock::expires_ns`: with `net`, which block this is evidence for (its
    /// `auto_blocked` event carries the same two).
    pub block_expires_ns: u64,
    /// The blocked network (the `PG_AUTO_BLOCK` key): an IPv4 source, an IPv6 network.
    pub net: [u8; 16],
    pub ifindex: u32,
    /// The frame's length on the wire (as far as XDP sees it).
    pub frame_len: u32,
    /// Bytes of `frame` copied: the headers and up to `snaplen` bytes of payload.
    pub cap_len: u32,
    /// Prefix length of `net`.
    pub prefix_len: u8,
    pub _pad: [u8; 3],
    pub frame: [u8; EVIDENCE_FRAME_BYTES],
}

const _: () = assert!(size_of::<EvidencePacket>() == 48 + EVIDENCE_FRAME_BYTES);

#[cfg(feature = "user")]
unsafe impl aya::Pod for EvidencePacket {}

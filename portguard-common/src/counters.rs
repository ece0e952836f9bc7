//! Verdict reasons and the layout of the per-CPU counter array `PG_COUNTERS`.
//!
//! Every packet the XDP program sees moves exactly one verdict counter: slot `reason` when the
//! verdict was applied, or slot `MONITOR_BASE + reason` when a drop verdict was only counted
//! (monitor mode). Summing slots `0..OBSERVATION_BASE` therefore gives the number of packets
//! seen. Observation slots (`OBSERVATION_BASE..`) count facts about packets, such as
//! fragments, on top of their verdict.

/// Why a packet passed or was dropped. Values below `DROP_BASE` pass, the others drop.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = 0,
    /// A rule allows the destination port.
    PassPortAllowed = 1,
    /// A rule allows the destination port from this source.
    PassSourceAllowed = 2,
    /// No rule names the port and the default is `allow`.
    PassDefaultAllow = 3,
    /// Part of a flow the host itself started or already answered (UDP reply, TCP segment of a
    /// known connection).
    PassFlow = 4,
    /// A TCP segment that cannot open a connection, with `tcp_non_syn = "pass"`.
    PassTcpNonSyn = 5,
    /// ICMP, ICMPv6 or another IP protocol the policy lets through.
    PassProtocol = 6,
    /// IPv6 neighbour discovery from the local link (hop limit 255): never filtered.
    PassNeighbor = 7,
    /// A later fragment of a datagram whose first fragment passed.
    PassFragment = 8,
    /// A later fragment whose first fragment was never seen, with `unseen = "pass"`.
    PassFragmentUnseen = 9,
    /// Too short or malformed to parse, with `malformed = "pass"`.
    PassMalformed = 10,

    /// The source is in the policy's blocklist.
    DropBlocklist = 16,
    /// The source was blocked by hand (`portguard block`).
    DropManualBlock = 17,
    /// The source was blocked automatically (scan detection, trap port).
    DropAutoBlock = 18,
    /// A deny rule names the destination port.
    DropPortDenied = 19,
    /// No rule names the port and the default is `deny`.
    DropDefaultDeny = 20,
    /// The port is only open to other sources.
    DropSourceNotAllowed = 21,
    /// A TCP segment or UDP datagram to a closed port that belongs to no known flow.
    DropNoFlow = 22,
    /// ICMP, ICMPv6 or another IP protocol the policy denies.
    DropProtocol = 23,
    /// A later fragment of a datagram whose first fragment was dropped.
    DropFragment = 24,
    /// A later fragment whose first fragment was never seen (default).
    DropFragmentUnseen = 25,
    /// Too short or malformed to parse (default).
    DropMalformed = 26,
}

/// Reasons at or above this value drop.
pub const DROP_BASE: u8 = 16;
/// Slots per verdict block (applied, or monitor-only).
pub const REASON_SLOTS: u32 = 32;
/// Slot of the first "would drop" counter.
pub const MONITOR_BASE: u32 = REASON_SLOTS;
/// Slot of the first observation counter.
pub const OBSERVATION_BASE: u32 = 2 * REASON_SLOTS;
/// A first fragment (offset 0, more fragments follow); its verdict is recorded.
pub const OBS_FRAGMENT_FIRST: u32 = OBSERVATION_BASE;
/// A later fragment (offset > 0).
pub const OBS_FRAGMENT_LATER: u32 = OBSERVATION_BASE + 1;
/// The fragment table could not record a first fragment's verdict.
pub const OBS_FRAGMENT_TABLE_FULL: u32 = OBSERVATION_BASE + 2;
/// A frame with one VLAN tag (802.1Q or 802.1ad).
pub const OBS_VLAN_SINGLE: u32 = OBSERVATION_BASE + 3;
/// A frame with two or more VLAN tags (QinQ).
pub const OBS_VLAN_STACKED: u32 = OBSERVATION_BASE + 4;
/// Events the ring buffer had no room for (never silently lost: reported by the reader).
pub const OBS_EVENTS_LOST: u32 = OBSERVATION_BASE + 5;
/// Scans detected (one per source and window).
pub const OBS_SCANS_DETECTED: u32 = OBSERVATION_BASE + 7;
/// Sources blocked automatically after a scan.
pub const OBS_SCAN_BLOCKS: u32 = OBSERVATION_BASE + 8;
/// Sources blocked automatically for touching a trap port.
pub const OBS_TRAP_BLOCKS: u32 = OBSERVATION_BASE + 9;
/// Automatic blocks found expired by the packet path (and removed).
pub const OBS_BLOCKS_EXPIRED: u32 = OBSERVATION_BASE + 10;
/// Negative answers the host sent (TCP RST, ICMP port unreachable), seen on egress.
pub const OBS_REFUSALS_SENT: u32 = OBSERVATION_BASE + 11;
/// Automatic blocks not added because this second's `new_blocks_per_second` was spent (a
/// flood of sources to a trap port, most likely forged).
pub const OBS_BLOCKS_NOT_ADMITTED: u32 = OBSERVATION_BASE + 12;
/// Sources given per-source scan state: they failed on a second distinct port.
pub const OBS_SCAN_SOURCES_ADMITTED: u32 = OBSERVATION_BASE + 13;
/// Refusals the host sent on flows it had sent on before (its own connections being reset,
/// late replies to closed client sockets): not counted against the peer.
pub const OBS_REFUSALS_OWN_FLOWS: u32 = OBSERVATION_BASE + 14;
/// Entries in `PG_COUNTERS`.
pub const COUNTER_SLOTS: u32 = OBSERVATION_BASE + 16;

pub const ALL_REASONS: [Reason; 22] = [
    Reason::PassNotIp,
    Reason::PassPortAllowed,
    Reason::PassSourceAllowed,
    Reason::PassDefaultAllow,
    Reason::PassFlow,
    Reason::PassTcpNonSyn,
    Reason::PassProtocol,
    Reason::PassNeighbor,
    Reason::PassFragment,
    Reason::PassFragmentUnseen,
    Reason::PassMalformed,
    Reason::DropBlocklist,
    Reason::DropManualBlock,
    Reason::DropAutoBlock,
    Reason::DropPortDenied,
    Reason::DropDefaultDeny,
    Reason::DropSourceNotAllowed,
    Reason::DropNoFlow,
    Reason::DropProtocol,
    Reason::DropFragment,
    Reason::DropFragmentUnseen,
    Reason::DropMalformed,
];

impl Reason {
    #[inline(always)]
    pub const fn is_drop(self) -> bool {
        self as u8 >= DROP_BASE
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        ALL_REASONS.iter().copied().find(|r| *r as u8 == value)
    }

    /// Stable machine name (snake_case, as every JSON enum value), used in `--json` output,
    /// event lines and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassNotIp => "not_ip",
            Self::PassPortAllowed => "port_allowed",
            Self::PassSourceAllowed => "source_allowed",
            Self::PassDefaultAllow => "default_allow",
            Self::PassFlow => "flow",
            Self::PassTcpNonSyn => "tcp_non_syn",
            Self::PassProtocol => "protocol_allowed",
            Self::PassNeighbor => "neighbor_discovery",
            Self::PassFragment => "fragment",
            Self::PassFragmentUnseen => "fragment_unseen",
            Self::PassMalformed => "malformed",
            Self::DropBlocklist => "blocklist",
            Self::DropManualBlock => "manual_block",
            Self::DropAutoBlock => "auto_block",
            Self::DropPortDenied => "port_denied",
            Self::DropDefaultDeny => "default_deny",
            Self::DropSourceNotAllowed => "source_not_allowed",
            Self::DropNoFlow => "no_flow",
            Self::DropProtocol => "protocol_denied",
            Self::DropFragment => "fragment",
            Self::DropFragmentUnseen => "fragment_unseen",
            Self::DropMalformed => "malformed",
        }
    }
}

/// One counter slot: packets and bytes (frame length as XDP sees it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!((Reason::DropMalformed as u32) < REASON_SLOTS);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

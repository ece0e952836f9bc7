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
    /// A new connection (TCP SYN) or datagram over its rule's per-source rate
    /// (`limit.new_per_source`).
    DropRateLimited = 27,
    /// A new connection (TCP SYN) from a source that already holds its rule's
    /// `limit.connections_per_source` open connections.
    DropConnectionLimit = 28,
}

/// Reasons at or above this value drop.
pub const DROP_BASE: u8 = 16;
/// Slots per verdict block (applied, or monitor-only).
pub const REASON_SLOTS: u32 = 32;
/// Slot of the first "would drop" counter.
pub const MONITOR_BASE: u32 = REASON_SLOTS;
/// Slot of the first observation counter.
pub const OBSERVATION_BASE: u32 = 2 * REASON_SLOTS;
/// A Prometheus metric family that observation counters are rows of: `portguard_NAME_total`,
/// with `label` telling its rows apart (empty: one row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub label: &'static str,
}

/// What one observation slot counts, for every reader: `stats` (its `--json` name and the line
/// it prints) and `/metrics` (the family and label value of its row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub slot: u32,
    /// Machine name, as `stats --json` prints it (`observations.NAME`).
    pub name: &'static str,
    /// What `stats` prints before the count.
    pub text: &'static str,
    pub family: &'static MetricFamily,
    /// This row's value of `family.label` (empty when the family has no label).
    pub label_value: &'static str,
    /// A slot counted inside this one that the metric row leaves out, because it is a row of
    /// its own in the same family (refusals on the host's own flows).
    pub metric_excludes: Option<u32>,
}

pub const FAMILY_FRAGMENTS: MetricFamily =
    MetricFamily { name: "fragments", help: "Fragments seen, by kind.", label: "kind" };
pub const FAMILY_VLAN_FRAMES: MetricFamily = MetricFamily {
    name: "vlan_frames",
    help: "Frames that carried VLAN tags, by how many (single: one 802.1Q or 802.1ad tag; stacked: two or more, QinQ).",
    label: "tags",
};
pub const FAMILY_SCANS_DETECTED_KERNEL: MetricFamily = MetricFamily {
    name: "scans_detected_kernel",
    help: "Port scans detected, as the kernel counts them (also while no loader runs).",
    label: "",
};
pub const FAMILY_AUTO_BLOCKS: MetricFamily =
    MetricFamily { name: "auto_blocks", help: "Sources blocked automatically, by cause.", label: "cause" };
pub const FAMILY_BLOCKS_EXPIRED: MetricFamily =
    MetricFamily { name: "blocks_expired", help: "Automatic blocks that expired.", label: "" };
pub const FAMILY_REFUSALS_SENT: MetricFamily = MetricFamily {
    name: "refusals_sent",
    help: "Refusals the host sent (TCP RST, ICMP port unreachable), by flow.",
    label: "flow",
};
pub const FAMILY_SCAN_SOURCES_ADMITTED: MetricFamily = MetricFamily {
    name: "scan_sources_admitted",
    help: "Sources given scan-detection state (refused on two ports or more).",
    label: "",
};
pub const FAMILY_BLOCKS_NOT_ADMITTED: MetricFamily = MetricFamily {
    name: "auto_blocks_not_admitted",
    help: "Automatic blocks not added because [limits] new_blocks_per_second was spent.",
    label: "",
};
pub const FAMILY_CONNECTIONS_UNTRACKED: MetricFamily = MetricFamily {
    name: "connections_untracked",
    help: "Connections to a port with a connection cap that were not counted (table full: [limits] connections or connected_sources).",
    label: "",
};
pub const FAMILY_EVIDENCE_PACKETS: MetricFamily = MetricFamily {
    name: "evidence_packets",
    help: "Packets of automatically blocked sources copied to the loader as evidence, by outcome (lost: the evidence ring buffer was full).",
    label: "outcome",
};
pub const FAMILY_EVENTS_LOST: MetricFamily =
    MetricFamily { name: "events_lost", help: "Events the ring buffer had no room for.", label: "" };

/// Declares each observation slot once: its constant (for the kernel) and its row in
/// `OBSERVATIONS` (for `stats` and `/metrics`), so no reader can miss a slot.
macro_rules! observations {
    ($(
        $(#[doc = $doc:literal])*
        $konst:ident = OBSERVATION_BASE + $offset:literal,
        $name:literal, $text:literal, $family:ident $(= $value:literal)? $(, excludes $excluded:ident)?;
    )*) => {
        $(
            $(#[doc = $doc])*
            pub const $konst: u32 = OBSERVATION_BASE + $offset;
        )*
        /// Every observation slot, in the order `stats` lists them.
        pub const OBSERVATIONS: &[Observation] = &[$(
            Observation {
                slot: $konst,
                name: $name,
                text: $text,
                family: &$family,
                label_value: observations!(@value $($value)?),
                metric_excludes: observations!(@excludes $($excluded)?),
            },
        )*];
    };
    (@value) => { "" };
    (@value $value:literal) => { $value };
    (@excludes) => { None };
    (@excludes $excluded:ident) => { Some($excluded) };
}

observations! {
    /// A first fragment (offset 0, more fragments follow); its verdict is recorded.
    OBS_FRAGMENT_FIRST = OBSERVATION_BASE + 0,
        "fragments_first", "first fragments", FAMILY_FRAGMENTS = "first";
    /// A later fragment (offset > 0).
    OBS_FRAGMENT_LATER = OBSERVATION_BASE + 1,
        "fragments_later", "later fragments", FAMILY_FRAGMENTS = "later";
    /// The fragment table could not record a first fragment's verdict.
    OBS_FRAGMENT_TABLE_FULL = OBSERVATION_BASE + 2,
        "fragments_untracked", "fragments not tracked (table full)", FAMILY_FRAGMENTS = "untracked";
    /// A frame with one VLAN tag (802.1Q or 802.1ad).
    OBS_VLAN_SINGLE = OBSERVATION_BASE + 3,
        "vlan_single", "frames with one VLAN tag", FAMILY_VLAN_FRAMES = "single";
    /// A frame with two or more VLAN tags (QinQ).
    OBS_VLAN_STACKED = OBSERVATION_BASE + 4,
        "vlan_stacked", "frames with stacked VLAN tags", FAMILY_VLAN_FRAMES = "stacked";
    /// Scans detected (one per source and window).
    OBS_SCANS_DETECTED = OBSERVATION_BASE + 7,
        "scans_detected", "scans detected", FAMILY_SCANS_DETECTED_KERNEL;
    /// Sources blocked automatically after a scan.
    OBS_SCAN_BLOCKS = OBSERVATION_BASE + 8,
        "scan_blocks", "sources blocked for scanning", FAMILY_AUTO_BLOCKS = "scan";
    /// Sources blocked automatically for touching a trap port.
    OBS_TRAP_BLOCKS = OBSERVATION_BASE + 9,
        "trap_blocks", "sources blocked by trap ports", FAMILY_AUTO_BLOCKS = "trap";
    /// Sources blocked automatically by `[brute_force]` (refused by a rule's limit too often).
    OBS_LIMIT_BLOCKS = OBSERVATION_BASE + 15,
        "limit_blocks", "sources blocked for hitting a rule's limit too often", FAMILY_AUTO_BLOCKS = "limit";
    /// Automatic blocks found expired by the packet path (and removed).
    OBS_BLOCKS_EXPIRED = OBSERVATION_BASE + 10,
        "blocks_expired", "automatic blocks expired on the packet path", FAMILY_BLOCKS_EXPIRED;
    /// Negative answers the host sent (TCP RST, ICMP port unreachable), seen on egress.
    OBS_REFUSALS_SENT = OBSERVATION_BASE + 11,
        "refusals_sent", "refusals sent by the host (RST, port unreachable)",
        FAMILY_REFUSALS_SENT = "probe", excludes OBS_REFUSALS_OWN_FLOWS;
    /// Refusals the host sent on flows it had sent on before (its own connections being reset,
    /// late replies to closed client sockets): not counted against the peer.
    OBS_REFUSALS_OWN_FLOWS = OBSERVATION_BASE + 14,
        "refusals_own_flows", "of which on the host's own flows (not counted as probes)",
        FAMILY_REFUSALS_SENT = "own";
    /// Sources given per-source scan state: they failed on a second distinct port.
    OBS_SCAN_SOURCES_ADMITTED = OBSERVATION_BASE + 13,
        "scan_sources_admitted", "sources given scan state (failed on 2+ ports)", FAMILY_SCAN_SOURCES_ADMITTED;
    /// Automatic blocks not added because this second's `new_blocks_per_second` was spent (a
    /// flood of sources to a trap port, most likely forged).
    OBS_BLOCKS_NOT_ADMITTED = OBSERVATION_BASE + 12,
        "blocks_not_admitted", "automatic blocks refused (new_blocks_per_second spent)",
        FAMILY_BLOCKS_NOT_ADMITTED;
    /// Connections to a port whose rule caps connections per source that were not counted,
    /// because a table was full (they are let be: the cap fails open, never closed).
    OBS_CONNECTIONS_UNTRACKED = OBSERVATION_BASE + 6,
        "connections_untracked", "connections not counted against a cap (table full)",
        FAMILY_CONNECTIONS_UNTRACKED;
    /// Events the ring buffer had no room for (never silently lost: reported by the reader).
    OBS_EVENTS_LOST = OBSERVATION_BASE + 5,
        "events_lost", "events lost (ring buffer full)", FAMILY_EVENTS_LOST;
    /// Packets of sources blocked automatically copied to `PG_EVIDENCE` (`[evidence]`).
    OBS_EVIDENCE_COPIED = OBSERVATION_BASE + 16,
        "evidence_copied", "packets of blocked sources copied as evidence", FAMILY_EVIDENCE_PACKETS = "copied";
    /// Evidence packets the evidence ring buffer had no room for.
    OBS_EVIDENCE_LOST = OBSERVATION_BASE + 17,
        "evidence_lost", "evidence packets lost (evidence ring buffer full)", FAMILY_EVIDENCE_PACKETS = "lost";
}

/// Observation slots no counter uses (yet): the only ones `OBSERVATIONS` may leave out.
pub const OBS_UNUSED: [u32; 0] = [];
/// Entries in `PG_COUNTERS`.
pub const COUNTER_SLOTS: u32 = OBSERVATION_BASE + 18;

pub const ALL_REASONS: [Reason; 24] = [
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
    Reason::DropRateLimited,
    Reason::DropConnectionLimit,
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
    #[allow(
        clippy::match_same_arms,
        reason = "a pass and a drop of one kind share a name; the action tells them apart"
    )]
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
            Self::DropRateLimited => "rate_limited",
            Self::DropConnectionLimit => "connection_limit",
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

const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!((Reason::DropConnectionLimit as u32) < REASON_SLOTS);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_observation_slot_is_in_the_table_once() {
        for slot in OBSERVATION_BASE..COUNTER_SLOTS {
            let rows = OBSERVATIONS.iter().filter(|o| o.slot == slot).count();
            let unused = OBS_UNUSED.contains(&slot);
            assert!(
                rows == 1 && !unused || rows == 0 && unused,
                "slot {slot}: {rows} rows in OBSERVATIONS, unused: {unused}"
            );
        }
        assert!(OBSERVATIONS.iter().all(|o| (OBSERVATION_BASE..COUNTER_SLOTS).contains(&o.slot)));
    }

    #[test]
    fn observation_names_and_metric_rows_are_distinct() {
        for (i, a) in OBSERVATIONS.iter().enumerate() {
            assert!(a.family.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", a.family.name);
            assert_eq!(a.family.label.is_empty(), a.label_value.is_empty(), "{}", a.name);
            for b in &OBSERVATIONS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.text, b.text);
                assert!(a.family != b.family || a.label_value != b.label_value, "{} and {}", a.name, b.name);
                if a.family.name == b.family.name {
                    assert_eq!(a.family, b.family, "one family, one help and label");
                }
            }
            if let Some(excluded) = a.metric_excludes {
                let row =
                    OBSERVATIONS.iter().find(|o| o.slot == excluded).expect("excluded slot in the table");
                assert_eq!(row.family, a.family, "an excluded slot is a row of the same family");
            }
        }
    }

    #[test]
    fn reasons_fit_their_slots_and_round_trip() {
        for (i, reason) in ALL_REASONS.iter().enumerate() {
            assert!((*reason as u32) < REASON_SLOTS);
            assert_eq!(Reason::from_u8(*reason as u8), Some(*reason));
            assert_eq!(reason.is_drop(), *reason as u8 >= DROP_BASE);
            for other in &ALL_REASONS[i + 1..] {
                assert!(*reason < *other, "ALL_REASONS sorted, each once");
                // A pass and a drop may share a name (`fragment`); two of one kind may not.
                assert!(reason.is_drop() != other.is_drop() || reason.name() != other.name());
            }
        }
        assert_eq!(Reason::from_u8(11), None);
        assert_eq!(Reason::from_u8(DROP_BASE - 1), None);
        assert_eq!(Reason::from_u8(Reason::DropConnectionLimit as u8 + 1), None);
    }
}

//! Plain types the layers share: the verdict on one frame, and who and what an event is about.

use portguard_common::{Reason, counters::DROP_BASE, events::SAMPLE_PORTS};

/// Index of `Verdict::port_index` when the packet had no destination port.
pub const NO_PORT: u32 = u32::MAX;

pub const FRAG_WHOLE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

/// The verdict on one frame, as plain numbers (8 bytes), so the entry point can pass it
/// through a map slot (`opaque`) before acting on it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Verdict {
    /// `Reason`.
    pub reason: u8,
    pub vlan_tags: u8,
    /// `FRAG_*`.
    pub frag: u8,
    /// `VERDICT_REPORT`: a drop event may be sent (the per-source rate limit allows it,
    /// nothing else reported); `VERDICT_EVIDENCE`: the packet is copied as evidence.
    pub report: u8,
    /// `port_index` of the destination port, or `NO_PORT`.
    pub port_index: u32,
}

/// `Verdict::report` bits. `VERDICT_EVIDENCE` is set only on the blocked-source path.
pub const VERDICT_REPORT: u8 = 1;
pub const VERDICT_EVIDENCE: u8 = 2;

impl Verdict {
    #[inline(always)]
    pub const fn of(reason: Reason, vlan_tags: u8) -> Self {
        Self { reason: reason as u8, vlan_tags, frag: FRAG_WHOLE, report: 0, port_index: NO_PORT }
    }

    #[inline(always)]
    pub const fn is_drop(&self) -> bool {
        self.reason >= DROP_BASE
    }
}

/// Who and what an event is about.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ifindex: u32,
    pub is_v6: bool,
}

/// Details that depend on the kind of event (plain values: the verifier loses track of
/// pointers passed through a struct to a BPF-to-BPF call). Whole words, so `events::draft`
/// zeroes it word by word.
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
pub struct Details {
    pub reason: u8,
    pub scan_kind: u8,
    pub count: u32,
    pub expires_ns: u64,
    pub samples: u8,
    pub sample_ports: [u16; SAMPLE_PORTS],
    pub prefix_len: u8,
    /// `EVENT_FLAG_*`.
    pub flags: u8,
}

/// The last refused attempt `scan::failed_attempt` found to change nothing on this CPU: a
/// source retrying a port it already failed on (a flood, retransmissions). A repeat of it
/// within a few jiffies is answered without the detector (`scan::repeats_last_refusal`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastRefusal {
    /// The source address as two words (`Packet::src_words`), not its counted network.
    pub src: [u64; 2],
    /// What the source's admission slot held: the repeat is skipped only while it still does.
    pub slot_value: u64,
    /// `bpf_jiffies64` when it was remembered.
    pub jiffies: u64,
    pub slot: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The last source this CPU found blocked automatically, so its next packets within a few
/// jiffies are dropped without the filter, the table lookup and the clock
/// (`blocks::auto_blocked`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastAutoBlock {
    /// The source address as two words (`Packet::src_words`), not its blocked network: whether
    /// a source is exempt depends on its own address.
    pub src: [u64; 2],
    /// `bpf_jiffies64` when it was remembered.
    pub jiffies: u64,
    /// `Runtime::auto_blocks_lifted` then: an `unblock` since ends the memo at once.
    pub lifted: u32,
    pub _pad: u32,
}

/// The block the packet being judged is evidence for: written where the block is made or
/// found (`evidence::start`, `evidence::take`), read by the entry point's copy of the packet
/// (`evidence::capture`) on the same CPU right after.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EvidenceNote {
    /// The block's `AutoBlock::expires_ns`.
    pub expires_ns: u64,
    /// The blocked network (the `PG_AUTO_BLOCK` key).
    pub net: [u8; 16],
    pub prefix_len: u8,
    pub _pad: [u8; 7],
}

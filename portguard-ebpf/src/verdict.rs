//! The verdict: one path, in the order the README documents.
//!
//! 1. not IP -> pass; malformed -> the policy's `malformed` action
//! 2. IPv6 neighbour discovery from the link (hop limit 255) -> pass, always
//! 3. blocklisted source (any protocol), unless in `never_block` -> drop
//! 4. source blocked by hand (`portguard block`) or automatically (scan, trap port), unless
//!    expired or in `never_block` -> drop
//! 5. later fragment -> the verdict its first fragment got (or the `unseen` action)
//! 6. TCP/UDP -> port policy; a drop is lifted for packets of flows the host is part of
//!    (TCP segments that cannot open a connection, UDP replies); a refused attempt counts
//!    towards scan detection, an attempt on a trap port blocks its source
//! 7. ICMP, ICMPv6, other protocols -> the policy's protocol actions

use aya_ebpf::maps::lpm_trie::Key;
use portguard_common::{
    Config, Reason,
    config::*,
    counters::{DROP_BASE, OBS_FRAGMENT_TABLE_FULL, OBS_TRAP_BLOCKS},
    events::EventKind,
    maps::{
        CAUSE_TRAP, FAMILY_V4, FAMILY_V6, FragKey, FragVerdict, PORT_ALLOW, PORT_ALLOW_FROM, PORT_DENY,
        PORT_FLAG_TRAP, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SRC_ALLOW_FIXED_BITS, SrcAllowKey,
        port_index,
    },
};

use crate::{
    blocklist, counters,
    counters::NO_PORT,
    events::{self, Details, Subject},
    flows,
    maps::{PG_FRAGS, PG_PACKET, PG_PORTS, PG_SRC_ALLOW, SCRATCH_XDP},
    opaque,
    parse::{FragKind, PARSED_IP, PARSED_MALFORMED, Packet, TCP_ACK, TCP_SYN, parse},
    scan,
};

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
    /// A drop event may be sent (the per-source rate limit allows it, nothing else reported).
    pub report: u8,
    /// `port_index` of the destination port, or `NO_PORT`.
    pub port_index: u32,
}

pub const FRAG_WHOLE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

impl Verdict {
    #[inline(always)]
    const fn of(reason: Reason, vlan_tags: u8) -> Self {
        Self { reason: reason as u8, vlan_tags, frag: FRAG_WHOLE, report: 0, port_index: NO_PORT }
    }

    #[inline(always)]
    pub const fn is_drop(&self) -> bool {
        self.reason >= DROP_BASE
    }
}

/// The verdict, made opaque to the verifier (see `opaque.rs`): the paths that led to
/// different verdicts merge here instead of each checking the rest of the program again.
#[inline(always)]
pub fn opaque(verdict: Verdict) -> Verdict {
    // SAFETY: `Verdict` is 8 bytes of plain integers.
    unsafe {
        core::mem::transmute::<u64, Verdict>(opaque::u64(core::mem::transmute::<Verdict, u64>(verdict)))
    }
}

/// What the port policy and the detectors made of a packet.
struct Judged {
    reason: Reason,
    /// A drop event may be sent (the per-source rate limit allows it, nothing else reported).
    report: bool,
}

impl Judged {
    #[inline(always)]
    const fn new(reason: Reason) -> Self {
        Self { reason, report: true }
    }
}

/// The packet `judge` parsed (this CPU's XDP slot).
#[inline(always)]
pub fn packet() -> Option<&'static Packet> {
    PG_PACKET.get_ptr(SCRATCH_XDP).map(|p| unsafe { &*p })
}

#[inline(always)]
pub fn judge(data: usize, end: usize, ifindex: u32, cfg: &Config) -> Verdict {
    let Some(packet) = PG_PACKET.get_ptr_mut(SCRATCH_XDP) else {
        return Verdict::of(Reason::PassNotIp, 0);
    };
    // SAFETY: this CPU's slot, used by nothing else while this program runs.
    let packet = unsafe { &mut *packet };
    parse(data, end, packet);
    let (parsed, vlan_tags) =
        unsafe { (core::ptr::read_volatile(&packet.parsed), core::ptr::read_volatile(&packet.vlan_tags)) };
    match parsed {
        PARSED_IP => {}
        PARSED_MALFORMED => {
            let reason =
                if cfg.has(FLAG_MALFORMED_PASS) { Reason::PassMalformed } else { Reason::DropMalformed };
            return Verdict::of(reason, vlan_tags);
        }
        _ => return Verdict::of(Reason::PassNotIp, vlan_tags),
    }
    let packet: &Packet = packet;
    let subject = subject_of(packet, ifindex);
    let judged = judge_packet(packet, &subject, cfg);
    let (frag, port_index) = match packet.frag {
        FragKind::Later => (FRAG_LATER, NO_PORT),
        FragKind::First => (FRAG_FIRST, port_index(packet.proto, packet.dport).unwrap_or(NO_PORT)),
        FragKind::Whole => (FRAG_WHOLE, port_index(packet.proto, packet.dport).unwrap_or(NO_PORT)),
    };
    Verdict { reason: judged.reason as u8, vlan_tags, frag, report: judged.report as u8, port_index }
}

#[inline(always)]
fn subject_of(packet: &Packet, ifindex: u32) -> Subject<'_> {
    Subject {
        src: &packet.src,
        dst: &packet.dst,
        sport: packet.sport,
        dport: packet.dport,
        proto: packet.proto,
        tcp_flags: packet.tcp_flags,
        ifindex,
    }
}

/// A drop event for the verdict just counted (the caller spent a token for it). A call of
/// its own: it runs a few times a second, not per packet.
#[inline(never)]
pub fn report_drop(verdict: &Verdict, ifindex: u32) {
    let Some(packet) = packet() else { return };
    let details = Details { reason: verdict.reason, ..Default::default() };
    events::emit(EventKind::Drop, &subject_of(packet, ifindex), &details);
}

#[inline(always)]
fn judge_packet(packet: &Packet, subject: &Subject, cfg: &Config) -> Judged {
    if is_neighbor_discovery(packet) {
        return Judged::new(Reason::PassNeighbor);
    }
    if blocklist::in_policy_blocklist(packet, cfg) && !scan::exempt(cfg, &packet.src) {
        return Judged::new(Reason::DropBlocklist);
    }
    let manual = scan::manually_blocked(cfg, subject);
    if manual & scan::IS_BLOCKED != 0 {
        return Judged { reason: Reason::DropManualBlock, report: manual & scan::REPORT != 0 };
    }
    if cfg.has(FLAG_AUTO_BLOCK) {
        let blocked = scan::auto_blocked(cfg, subject);
        if blocked & scan::IS_BLOCKED != 0 {
            return Judged { reason: Reason::DropAutoBlock, report: blocked & scan::REPORT != 0 };
        }
    }
    match packet.frag {
        FragKind::Later => Judged::new(later_fragment(packet, cfg)),
        FragKind::First => {
            let judged = by_protocol(packet, subject, cfg);
            remember_first_fragment(packet, judged.reason);
            judged
        }
        FragKind::Whole => by_protocol(packet, subject, cfg),
    }
}

/// Router/neighbour solicitation and advertisement, redirect: a host without them loses its
/// IPv6 neighbours. Hop limit 255 proves the sender is on the link (RFC 4861).
#[inline(always)]
fn is_neighbor_discovery(packet: &Packet) -> bool {
    packet.is_v6
        && packet.proto == PROTO_ICMPV6
        && packet.frag == FragKind::Whole
        && packet.hop_limit == 255
        && packet.icmp_type >= 133
        && packet.icmp_type <= 137
}

#[inline(always)]
fn by_protocol(packet: &Packet, subject: &Subject, cfg: &Config) -> Judged {
    let reason = match packet.proto {
        PROTO_TCP | PROTO_UDP => return port_policy(packet, subject, cfg),
        PROTO_ICMP if !packet.is_v6 => icmp(packet, cfg),
        PROTO_ICMPV6 if packet.is_v6 => icmpv6(packet, cfg),
        _ if cfg.has(FLAG_OTHER_DENY) => Reason::DropProtocol,
        _ => Reason::PassProtocol,
    };
    Judged::new(reason)
}

#[inline(always)]
fn port_policy(packet: &Packet, subject: &Subject, cfg: &Config) -> Judged {
    let rule = port_index(packet.proto, packet.dport).and_then(|index| PG_PORTS.get(index));
    let (action, flags) = rule.map(|r| (r.action, r.flags)).unwrap_or((0, 0));
    let attempt = packet.proto == PROTO_UDP || is_connection_attempt(packet.tcp_flags);
    if flags & PORT_FLAG_TRAP != 0 && attempt && cfg.has(FLAG_TRAPS) {
        if let Some(judged) = trap(packet, subject, cfg) {
            return judged;
        }
    }
    let decision = port_decision(packet, action, cfg);
    if !decision.is_drop() {
        return Judged::new(decision);
    }
    // The policy decides who may open a connection or send a datagram to a port. Segments
    // that cannot open a connection, and UDP replies, pass when they belong to a flow the
    // host itself took part in (learnt on egress).
    let reason = if !attempt {
        if cfg.has(FLAG_TCP_NON_SYN_PASS) {
            return Judged::new(Reason::PassTcpNonSyn);
        }
        if flows::known(packet, cfg) {
            return Judged::new(Reason::PassFlow);
        }
        Reason::DropNoFlow
    } else {
        if packet.proto == PROTO_UDP && flows::known(packet, cfg) {
            return Judged::new(Reason::PassFlow);
        }
        decision
    };
    if !cfg.has(FLAG_SCAN_DETECT) {
        return Judged::new(reason);
    }
    let kind = opaque::u64(scan::kind_of(packet) as u64) as u8;
    let outcome = scan::failed_attempt(cfg, subject, kind);
    if outcome & scan::BLOCKED_NOW != 0 {
        return Judged { reason: scan::BLOCKED, report: false };
    }
    Judged { reason, report: outcome & scan::REPORT != 0 }
}

/// An attempt on a trap port: the source is blocked at once (unless `never_block`).
#[inline(always)]
fn trap(packet: &Packet, subject: &Subject, cfg: &Config) -> Option<Judged> {
    let exempt = scan::exempt(cfg, &packet.src);
    let now = flows::now_ns();
    let expires_ns = if exempt { 0 } else { now + cfg.trap_block_ns };
    let details = Details {
        reason: CAUSE_TRAP,
        scan_kind: scan::kind_of(packet) as u8,
        count: 1,
        expires_ns,
        ..Default::default()
    };
    events::emit(EventKind::TrapHit, subject, &details);
    if exempt {
        return None;
    }
    scan::block(&packet.src, now, expires_ns, CAUSE_TRAP, packet.proto, packet.dport);
    counters::add(OBS_TRAP_BLOCKS, 0);
    events::emit(EventKind::AutoBlocked, subject, &details);
    Some(Judged { reason: scan::BLOCKED, report: false })
}

/// A SYN without ACK: the only segment that opens a connection.
#[inline(always)]
fn is_connection_attempt(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
fn port_decision(packet: &Packet, action: u8, cfg: &Config) -> Reason {
    match action {
        PORT_ALLOW => Reason::PassPortAllowed,
        PORT_DENY => Reason::DropPortDenied,
        PORT_ALLOW_FROM => {
            if source_allowed(packet) {
                Reason::PassSourceAllowed
            } else {
                Reason::DropSourceNotAllowed
            }
        }
        _ if cfg.has(FLAG_DEFAULT_ALLOW) => Reason::PassDefaultAllow,
        _ => Reason::DropDefaultDeny,
    }
}

#[inline(always)]
fn source_allowed(packet: &Packet) -> bool {
    let key = SrcAllowKey {
        proto: packet.proto,
        family: if packet.is_v6 { FAMILY_V6 } else { FAMILY_V4 },
        port_be: packet.dport.to_be_bytes(),
        addr: packet.src,
    };
    PG_SRC_ALLOW.get(Key::new(SRC_ALLOW_FIXED_BITS + 128, key)).is_some()
}

/// With `icmp = "deny"`, errors (unreachable, time exceeded, parameter problem) and echo
/// replies still pass: path MTU discovery and the host's own pings depend on them.
#[inline(always)]
fn icmp(packet: &Packet, cfg: &Config) -> Reason {
    if !cfg.has(FLAG_ICMP_DENY) {
        return Reason::PassProtocol;
    }
    match packet.icmp_type {
        0 | 3 | 11 | 12 => Reason::PassProtocol,
        _ => Reason::DropProtocol,
    }
}

/// With `icmpv6 = "deny"`, errors (1-4), echo replies (129), multicast listener messages
/// (130-132, 143) and neighbour discovery (133-137) still pass.
#[inline(always)]
fn icmpv6(packet: &Packet, cfg: &Config) -> Reason {
    if !cfg.has(FLAG_ICMPV6_DENY) {
        return Reason::PassProtocol;
    }
    match packet.icmp_type {
        1..=4 | 129..=137 | 143 => Reason::PassProtocol,
        _ => Reason::DropProtocol,
    }
}

#[inline(always)]
fn frag_key(packet: &Packet) -> FragKey {
    FragKey { src: packet.src, dst: packet.dst, id: packet.frag_id, proto: packet.frag_proto, _pad: [0; 3] }
}

#[inline(always)]
fn remember_first_fragment(packet: &Packet, reason: Reason) {
    let verdict = FragVerdict { seen_ns: flows::now_ns(), reason: reason as u8, _pad: [0; 7] };
    if PG_FRAGS.insert(&frag_key(packet), &verdict, 0).is_err() {
        counters::add(OBS_FRAGMENT_TABLE_FULL, 0);
    }
}

#[inline(always)]
fn later_fragment(packet: &Packet, cfg: &Config) -> Reason {
    if let Some(first) = unsafe { PG_FRAGS.get(&frag_key(packet)) } {
        if flows::now_ns().wrapping_sub(first.seen_ns) <= cfg.frag_timeout_ns {
            return if first.reason >= DROP_BASE { Reason::DropFragment } else { Reason::PassFragment };
        }
    }
    if cfg.has(FLAG_FRAG_UNSEEN_PASS) { Reason::PassFragmentUnseen } else { Reason::DropFragmentUnseen }
}

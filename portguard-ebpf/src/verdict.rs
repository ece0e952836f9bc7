//! The verdict: one path, in the order the README documents.
//!
//! 1. not IP -> pass; malformed -> the policy's `malformed` action
//! 2. IPv6 neighbour discovery from the link (hop limit 255) -> pass, always
//! 3. blocklisted source (any protocol), unless in `never_block` -> drop
//! 4. source blocked by hand (`portguard block`) or automatically (scan, trap port), unless
//!    expired or in `never_block` -> drop
//! 5. later fragment -> the verdict its first fragment got (or the `unseen` action)
//! 6. TCP/UDP -> port policy; a new connection or datagram the deciding rule admits may still be
//!    refused: a TCP SYN from a source holding the rule's cap of connections (`conns.rs`),
//!    or an attempt over the rule's per-source rate (`limits.rs`; refused too often: blocked,
//!    with `[brute_force]`); a drop is lifted for packets of flows the host is part of
//!    (TCP segments that cannot open a connection, UDP replies); a refused attempt counts
//!    towards scan detection, an attempt on a trap port blocks its source
//! 7. ICMP, ICMPv6, other protocols -> the policy's protocol actions

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use portguard_common::{
    Config, Reason,
    config::*,
    counters::{DROP_BASE, OBS_BLOCKS_NOT_ADMITTED, OBS_FRAGMENT_TABLE_FULL, OBS_TRAP_BLOCKS},
    events::EventKind,
    maps::{
        CAUSE_TRAP, FAMILY_V4, FAMILY_V6, FragKey, FragVerdict, PORT_ALLOW, PORT_ALLOW_FROM, PORT_DENY,
        PORT_FLAG_LIMITED, PORT_FLAG_TRAP, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
        SRC_ALLOW_FIXED_BITS, SrcAllowKey, port_index,
    },
};

use crate::{
    blocklist, blocks, conns, counters,
    events::{self, Details, Subject},
    evidence, flows, limits,
    maps::{PG_FRAGS, PG_PACKET, PG_PORTS, PG_SRC_ALLOW, SCRATCH_XDP},
    opaque,
    parse::{FragKind, PARSED_IP, PARSED_MALFORMED, Packet, TCP_ACK, TCP_SYN, parse},
    scan,
    time::now_ns,
    types::{FRAG_FIRST, FRAG_LATER, FRAG_WHOLE, NO_PORT, VERDICT_EVIDENCE, VERDICT_REPORT, Verdict},
};

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
    /// `Reason`, as a number: on the scan path it passes through `opaque`.
    reason: u8,
    /// `Verdict::report`: whether a drop event may be sent (the per-source rate limit allows
    /// it, nothing else reported), whether the packet is evidence.
    report: u8,
}

impl Judged {
    #[inline(always)]
    const fn new(reason: Reason) -> Self {
        Self { reason: reason as u8, report: VERDICT_REPORT }
    }

    /// Not reported (something else was, or the rate limit holds it back).
    #[inline(always)]
    const fn quiet(reason: u8) -> Self {
        Self { reason, report: 0 }
    }

    /// The packet that made an automatic block: its first evidence (when `[evidence]` copies
    /// any), reported by the block's own event.
    #[inline(always)]
    fn blocked_now(cfg: &Config) -> Self {
        let report = if cfg.evidence_packets != 0 { VERDICT_EVIDENCE } else { 0 };
        Self { reason: Reason::DropAutoBlock as u8, report }
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
    Verdict { reason: judged.reason, vlan_tags, frag, report: judged.report, port_index }
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
        is_v6: packet.is_v6,
    }
}

/// A drop event for the verdict just counted (the caller spent a token for it). A call of
/// its own: it runs a few times a second, not per packet.
#[inline(never)]
pub fn report_drop(verdict: &Verdict, ifindex: u32, cfg: &Config) {
    let Some(packet) = packet() else { return };
    let details = Details { reason: verdict.reason, ..Default::default() };
    events::emit(EventKind::Drop, &subject_of(packet, ifindex), &details, cfg);
}

/// A packet of a blocked source that its block copies as evidence (`evidence.rs`), and its
/// drop event if one is due. A call of its own: the blocked-source path's first packets only.
#[inline(never)]
pub fn report_evidence(ctx: &XdpContext, verdict: &Verdict, cfg: &Config) {
    if cfg.evidence_packets != 0 && verdict.report & VERDICT_EVIDENCE != 0 {
        evidence::capture(ctx, cfg);
    }
    if verdict.report & VERDICT_REPORT != 0 && events::drop_event_allowed() {
        report_drop(verdict, ctx.ingress_ifindex() as u32, cfg);
    }
}

#[inline(always)]
fn judge_packet(packet: &Packet, subject: &Subject, cfg: &Config) -> Judged {
    if is_neighbor_discovery(packet) {
        return Judged::new(Reason::PassNeighbor);
    }
    if blocklist::in_policy_blocklist(packet, cfg) && !blocks::exempt(cfg, &packet.src) {
        return Judged::new(Reason::DropBlocklist);
    }
    let manual = blocks::manually_blocked(cfg, subject);
    if manual & blocks::IS_BLOCKED != 0 {
        return Judged { reason: Reason::DropManualBlock as u8, report: (manual & blocks::REPORT) as u8 };
    }
    // Skipped until the packet path has blocked someone (and again once the loader has seen
    // the table empty).
    if cfg.has(FLAG_AUTO_BLOCK) && blocks::any_automatic() {
        let blocked = blocks::auto_blocked(cfg, subject);
        if blocked & blocks::IS_BLOCKED != 0 {
            let report = (blocked & (blocks::REPORT | blocks::EVIDENCE)) as u8;
            return Judged { reason: Reason::DropAutoBlock as u8, report };
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
    let mut scan_counts = cfg.has(FLAG_SCAN_DETECT);
    if flags & PORT_FLAG_TRAP != 0 && attempt && cfg.has(FLAG_TRAPS) {
        if blocks::block_token_left(CAUSE_TRAP) {
            if trap(packet, subject, cfg) {
                return Judged::blocked_now(cfg);
            }
        } else {
            // This second's trap blocks are spent: a flood of trap hits (forged sources, most
            // likely). Past this point nothing is looked up or written for it, the scan
            // detector's admission table included, which the flood's sources would otherwise
            // overwrite and so push real scanners' first failures out of.
            counters::add(OBS_BLOCKS_NOT_ADMITTED, 0);
            scan_counts = false;
        }
    }
    let (decision, deciding_rule) = port_decision(packet, action, rule_number(rule), cfg);
    if !decision.is_drop() {
        // Ports no limited rule opens pay for one flag test (on a value already loaded).
        if flags & PORT_FLAG_LIMITED != 0 && attempt {
            // The cap first: an attempt it refuses spends nothing of the source's rate.
            let limited = if packet.proto == PROTO_TCP
                && cfg.has(FLAG_CONN_LIMITS)
                && conns::at_cap(packet, deciding_rule, cfg)
            {
                (limits::cap_refused(packet, subject, deciding_rule, cfg), Reason::DropConnectionLimit)
            } else if cfg.has(FLAG_RATE_LIMITS) {
                (limits::over_rate(packet, subject, deciding_rule, cfg), Reason::DropRateLimited)
            } else {
                (limits::ADMITTED, Reason::DropRateLimited)
            };
            match limited {
                (limits::ADMITTED, _) => {}
                (limits::REFUSED, reason) => return Judged::new(reason),
                // Reported already: by a `limited` event, or by the block's.
                (limits::REFUSED_REPORTED, reason) => return Judged::quiet(reason as u8),
                _ => return Judged::blocked_now(cfg),
            }
        }
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
    if !scan_counts {
        return Judged::new(reason);
    }
    if scan::repeats_last_refusal(packet) {
        return Judged::quiet(reason as u8);
    }
    // Both opaque (in one round trip), so the verifier checks the detector once, not once per
    // reason and kind.
    let both = opaque::u64((scan::kind_of(packet) as u64) << 8 | reason as u64);
    let (kind, reason) = ((both >> 8) as u8, both as u8);
    let outcome = scan::failed_attempt(cfg, subject, kind);
    if outcome & scan::DETECTED != 0 {
        if scan::report(cfg, subject, outcome) & scan::BLOCKED_NOW != 0 {
            return Judged::blocked_now(cfg);
        }
        return Judged::quiet(reason);
    }
    Judged { reason, report: (outcome & blocks::REPORT) as u8 }
}

/// An attempt on a trap port, while this second's trap blocks are not spent (the caller
/// checks): the source is blocked at once (true), unless it is in `never_block` (then only
/// reported, within the drop-event budget); then the port policy judges it. A call of its own:
/// its event details stay off the entry point's stack.
#[inline(never)]
fn trap(packet: &Packet, subject: &Subject, cfg: &Config) -> bool {
    let prefix_len = blocks::source_prefix(packet.is_v6, cfg);
    let Some(details) = events::draft() else {
        return false;
    };
    details.reason = CAUSE_TRAP;
    details.scan_kind = scan::kind_of(packet) as u8;
    details.count = 1;
    details.prefix_len = prefix_len;
    if blocks::exempt(cfg, &packet.src) {
        if events::drop_event_allowed() {
            events::emit(EventKind::TrapHit, subject, details, cfg);
        }
        return false;
    }
    let Some(key) = blocks::source_key(&packet.src, packet.is_v6, 0, cfg) else {
        return false;
    };
    let now = now_ns();
    let expires_ns = now + cfg.trap_block_ns;
    if !blocks::block(&key.addr, prefix_len, now, expires_ns, CAUSE_TRAP, packet.proto, packet.dport, cfg) {
        return false;
    }
    counters::add(OBS_TRAP_BLOCKS, 0);
    details.expires_ns = expires_ns;
    events::emit(EventKind::TrapHit, subject, details, cfg);
    events::emit(EventKind::AutoBlocked, &Subject { src: &key.addr, ..*subject }, details, cfg);
    true
}

/// A SYN without ACK: the only segment that opens a connection.
#[inline(always)]
fn is_connection_attempt(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The rule number of a port's entry (0: none).
#[inline(always)]
fn rule_number(rule: Option<&portguard_common::maps::PortRule>) -> u16 {
    rule.map_or(0, |r| r.rule)
}

/// The port policy's decision, and the number of the rule that made it (for a port open to
/// `from` lists, the rule whose network admitted the source; 0 for the default).
#[inline(always)]
fn port_decision(packet: &Packet, action: u8, rule: u16, cfg: &Config) -> (Reason, u16) {
    match action {
        PORT_ALLOW => (Reason::PassPortAllowed, rule),
        PORT_DENY => (Reason::DropPortDenied, rule),
        PORT_ALLOW_FROM => match admitting_rule(packet) {
            Some(admitting) => (Reason::PassSourceAllowed, admitting),
            None => (Reason::DropSourceNotAllowed, rule),
        },
        _ if cfg.has(FLAG_DEFAULT_ALLOW) => (Reason::PassDefaultAllow, 0),
        _ => (Reason::DropDefaultDeny, 0),
    }
}

/// The rule whose `from` list admits the packet's source to its port, if any.
#[inline(always)]
fn admitting_rule(packet: &Packet) -> Option<u16> {
    let key = SrcAllowKey {
        proto: packet.proto,
        family: if packet.is_v6 { FAMILY_V6 } else { FAMILY_V4 },
        port_be: packet.dport.to_be_bytes(),
        addr: packet.src,
    };
    PG_SRC_ALLOW.get(Key::new(SRC_ALLOW_FIXED_BITS + 128, key)).copied()
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
fn remember_first_fragment(packet: &Packet, reason: u8) {
    let verdict = FragVerdict { seen_ns: now_ns(), reason, _pad: [0; 7] };
    if PG_FRAGS.insert(&frag_key(packet), &verdict, 0).is_err() {
        counters::add(OBS_FRAGMENT_TABLE_FULL, 0);
    }
}

#[inline(always)]
fn later_fragment(packet: &Packet, cfg: &Config) -> Reason {
    if let Some(first) = unsafe { PG_FRAGS.get(&frag_key(packet)) } {
        if now_ns().wrapping_sub(first.seen_ns) <= cfg.frag_timeout_ns {
            return if first.reason >= DROP_BASE { Reason::DropFragment } else { Reason::PassFragment };
        }
    }
    if cfg.has(FLAG_FRAG_UNSEEN_PASS) { Reason::PassFragmentUnseen } else { Reason::DropFragmentUnseen }
}

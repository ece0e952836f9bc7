//! The verdict: one path, in the order the README documents.
//!
//! 1. not IP -> pass; malformed -> the policy's `malformed` action
//! 2. IPv6 neighbour discovery from the link (hop limit 255) -> pass, always
//! 3. blocklisted source (any protocol), unless in `never_block` -> drop
//! 4. later fragment -> the verdict its first fragment got (or the `unseen` action)
//! 5. TCP/UDP -> port policy; a drop is lifted for packets of flows the host is part of
//!    (TCP segments that cannot open a connection, UDP replies)
//! 6. ICMP, ICMPv6, other protocols -> the policy's protocol actions

use aya_ebpf::maps::lpm_trie::Key;
use portguard_common::{
    Config, Reason,
    config::*,
    counters::DROP_BASE,
    maps::{
        FragKey, FragVerdict, PORT_ALLOW, PORT_ALLOW_FROM, PORT_DENY, PROTO_ICMP, PROTO_ICMPV6,
        PROTO_TCP, PROTO_UDP, SRC_ALLOW_FIXED_BITS, SrcAllowKey, port_index,
    },
};

use crate::{
    blocklist,
    counters::NO_PORT,
    flows,
    maps::{PG_FRAGS, PG_PORTS, PG_SRC_ALLOW},
    parse::{FragKind, Packet, Parsed, TCP_ACK, TCP_SYN, parse},
};

pub struct Verdict {
    pub reason: Reason,
    pub vlan_tags: u8,
    /// `port_index` of the destination port, or `NO_PORT`.
    pub port_index: u32,
    pub fragment_first: bool,
    pub fragment_later: bool,
}

impl Verdict {
    #[inline(always)]
    const fn of(reason: Reason, vlan_tags: u8) -> Self {
        Self {
            reason,
            vlan_tags,
            port_index: NO_PORT,
            fragment_first: false,
            fragment_later: false,
        }
    }
}

#[inline(always)]
pub fn judge(data: usize, end: usize, cfg: &Config) -> Verdict {
    let frame = parse(data, end);
    let vlan_tags = frame.vlan_tags;
    let packet = match frame.parsed {
        Parsed::NotIp => return Verdict::of(Reason::PassNotIp, vlan_tags),
        Parsed::Malformed => {
            let reason = if cfg.has(FLAG_MALFORMED_PASS) {
                Reason::PassMalformed
            } else {
                Reason::DropMalformed
            };
            return Verdict::of(reason, vlan_tags);
        }
        Parsed::Ip(packet) => packet,
    };
    let reason = judge_packet(&packet, cfg);
    let port_index = if packet.frag == FragKind::Later {
        NO_PORT
    } else {
        port_index(packet.proto, packet.dport).unwrap_or(NO_PORT)
    };
    Verdict {
        reason,
        vlan_tags,
        port_index,
        fragment_first: packet.frag == FragKind::First,
        fragment_later: packet.frag == FragKind::Later,
    }
}

#[inline(always)]
fn judge_packet(packet: &Packet, cfg: &Config) -> Reason {
    if is_neighbor_discovery(packet) {
        return Reason::PassNeighbor;
    }
    if blocklist::in_policy_blocklist(packet, cfg) && !never_blocked(packet, cfg) {
        return Reason::DropBlocklist;
    }
    match packet.frag {
        FragKind::Later => later_fragment(packet, cfg),
        FragKind::First => {
            let reason = by_protocol(packet, cfg);
            remember_first_fragment(packet, reason);
            reason
        }
        FragKind::Whole => by_protocol(packet, cfg),
    }
}

#[inline(always)]
fn never_blocked(packet: &Packet, cfg: &Config) -> bool {
    cfg.has(FLAG_HAS_NEVER_BLOCK) && blocklist::never_block(&packet.src)
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
fn by_protocol(packet: &Packet, cfg: &Config) -> Reason {
    match packet.proto {
        PROTO_TCP | PROTO_UDP => port_policy(packet, cfg),
        PROTO_ICMP if !packet.is_v6 => icmp(packet, cfg),
        PROTO_ICMPV6 if packet.is_v6 => icmpv6(packet, cfg),
        _ if cfg.has(FLAG_OTHER_DENY) => Reason::DropProtocol,
        _ => Reason::PassProtocol,
    }
}

#[inline(always)]
fn port_policy(packet: &Packet, cfg: &Config) -> Reason {
    let decision = port_decision(packet, cfg);
    if !decision.is_drop() {
        return decision;
    }
    // The policy decides who may open a connection or send a datagram to a port. Segments
    // that cannot open a connection, and UDP replies, pass when they belong to a flow the
    // host itself took part in (learnt on egress).
    if packet.proto == PROTO_TCP && !is_connection_attempt(packet.tcp_flags) {
        if cfg.has(FLAG_TCP_NON_SYN_PASS) {
            return Reason::PassTcpNonSyn;
        }
        return if flows::known(packet, cfg) {
            Reason::PassFlow
        } else {
            Reason::DropNoFlow
        };
    }
    if packet.proto == PROTO_UDP && flows::known(packet, cfg) {
        return Reason::PassFlow;
    }
    decision
}

/// A SYN without ACK: the only segment that opens a connection.
#[inline(always)]
fn is_connection_attempt(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
fn port_decision(packet: &Packet, cfg: &Config) -> Reason {
    let rule = port_index(packet.proto, packet.dport)
        .and_then(|index| PG_PORTS.get(index))
        .map(|rule| rule.action)
        .unwrap_or(0);
    match rule {
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
        _zero: 0,
        port_be: packet.dport.to_be_bytes(),
        addr: packet.src,
    };
    PG_SRC_ALLOW
        .get(Key::new(SRC_ALLOW_FIXED_BITS + 128, key))
        .is_some()
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
    FragKey {
        src: packet.src,
        dst: packet.dst,
        id: packet.frag_id,
        proto: packet.frag_proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn remember_first_fragment(packet: &Packet, reason: Reason) {
    let verdict = FragVerdict {
        seen_ns: flows::now_ns(),
        reason: reason as u8,
        _pad: [0; 7],
    };
    if PG_FRAGS.insert(frag_key(packet), verdict, 0).is_err() {
        crate::counters::add(portguard_common::counters::OBS_FRAGMENT_TABLE_FULL, 0);
    }
}

#[inline(always)]
fn later_fragment(packet: &Packet, cfg: &Config) -> Reason {
    if let Some(first) = unsafe { PG_FRAGS.get(frag_key(packet)) } {
        if flows::now_ns().wrapping_sub(first.seen_ns) <= cfg.frag_timeout_ns {
            return if first.reason >= DROP_BASE {
                Reason::DropFragment
            } else {
                Reason::PassFragment
            };
        }
    }
    if cfg.has(FLAG_FRAG_UNSEEN_PASS) {
        Reason::PassFragmentUnseen
    } else {
        Reason::DropFragmentUnseen
    }
}

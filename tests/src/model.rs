//! A reference model of portguard's verdict, written from the README's description of the
//! packet path and the policy (not from the kernel code, and sharing none of it): plain,
//! obvious Rust over byte slices and the validated `Policy`. The differential tests run the
//! same frames through the kernel program and this model and demand the same answer.
//!
//! Out of the model's scope, so the differential tests leave them off: scan detection
//! (`action = "off"`; its `ipv6_prefix` still sets what a trap port blocks), the per-second
//! limit on new automatic blocks (the test runs grant an unlimited budget), flows (no egress program runs under BPF_PROG_TEST_RUN, so the flow
//! table is empty), manual blocks and timeouts. Rule limits are modelled as budgets that do
//! not come back, and `[brute_force]` as counts of refusals whose window does not end and
//! whose blocks do not expire: the generated rates, windows and blocks name periods far
//! longer than a test run. Caps of open connections are judged against the connections the
//! test says each source holds (`hold`): no connection is opened under BPF_PROG_TEST_RUN.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use portguard::policy::{Action, Mode, Policy, Proto, RuleKind, TcpNonSyn};
use portguard_common::Reason;

use crate::packets::{ACK, ICMP, ICMPV6, SYN, TCP, UDP};

/// What the model says the kernel must do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub reason: Reason,
    /// A drop that monitor mode only counts.
    pub monitored: bool,
    pub fragment_first: bool,
    pub fragment_later: bool,
    pub vlan_tags: u8,
    /// The per-port drop counter that moves: (protocol, destination port).
    pub port_drop: Option<(u8, u16)>,
}

impl Expected {
    pub fn dropped(&self) -> bool {
        self.reason.is_drop() && !self.monitored
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    Whole,
    First,
    Later,
}

/// What the parser extracts, as the README describes it.
#[derive(Clone, Debug)]
struct Parsed {
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    hop_limit: u8,
    frag: Frag,
    frag_id: u32,
    frag_proto: u8,
    dport: u16,
    tcp_flags: u8,
    icmp_type: u8,
}

enum Parse {
    NotIp,
    Malformed,
    Ip(Parsed),
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Ethernet, up to 4 VLAN tags (802.1Q, 802.1ad), then IPv4 or IPv6.
fn parse(frame: &[u8]) -> (Parse, u8) {
    if frame.len() < 14 {
        return (Parse::Malformed, 0);
    }
    let mut ether_type = be16(frame, 12).unwrap();
    let mut offset = 14;
    let mut tags = 0u8;
    while ether_type == 0x8100 || ether_type == 0x88a8 {
        if tags == 4 {
            // A fifth tag: more than the parser walks.
            return (Parse::Malformed, tags);
        }
        let Some(next) = be16(frame, offset + 2) else {
            return (Parse::Malformed, tags);
        };
        ether_type = next;
        offset += 4;
        tags += 1;
    }
    let parsed = match ether_type {
        0x0800 => parse_ipv4(frame, offset),
        0x86dd => parse_ipv6(frame, offset),
        _ => Parse::NotIp,
    };
    (parsed, tags)
}

fn parse_ipv4(frame: &[u8], at: usize) -> Parse {
    let Some(header) = frame.get(at..at + 20) else { return Parse::Malformed };
    let version = header[0] >> 4;
    let header_len = (header[0] & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes([header[2], header[3]]) as usize;
    if version != 4 || header_len < 20 || total_len < header_len || at + total_len > frame.len() {
        return Parse::Malformed;
    }
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let frag_offset = flags_offset & 0x1fff;
    let more = flags_offset & 0x2000 != 0;
    let proto = header[9];
    if frag_offset == 1 && proto == TCP {
        return Parse::Malformed;
    }
    let frag = if frag_offset != 0 {
        Frag::Later
    } else if more {
        Frag::First
    } else {
        Frag::Whole
    };
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    let mut parsed = Parsed {
        v6: false,
        src: src.into(),
        dst: dst.into(),
        proto,
        hop_limit: header[8],
        frag,
        frag_id: u32::from(u16::from_be_bytes([header[4], header[5]])),
        frag_proto: proto,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
    };
    if frag == Frag::Later {
        return Parse::Ip(parsed);
    }
    // Layer 4 must fit in the datagram (not in Ethernet padding after it).
    if transport(&frame[..at + total_len], at + header_len, &mut parsed) {
        Parse::Ip(parsed)
    } else {
        Parse::Malformed
    }
}

fn parse_ipv6(frame: &[u8], at: usize) -> Parse {
    let Some(header) = frame.get(at..at + 40) else { return Parse::Malformed };
    if header[0] >> 4 != 6 {
        return Parse::Malformed;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&header[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&header[24..40]).unwrap());
    if src.to_ipv4_mapped().is_some() {
        // IPv4-mapped sources are malformed on the wire.
        return Parse::Malformed;
    }
    let payload_len = u16::from_be_bytes([header[4], header[5]]) as usize;
    let first_next = header[6];
    // A zero payload length with a hop-by-hop header is a jumbogram: the frame says how long.
    let end = if payload_len == 0 && first_next == 0 {
        frame.len()
    } else {
        if at + 40 + payload_len > frame.len() {
            return Parse::Malformed;
        }
        at + 40 + payload_len
    };
    let mut parsed = Parsed {
        v6: true,
        src: src.into(),
        dst: dst.into(),
        proto: first_next,
        hop_limit: header[7],
        frag: Frag::Whole,
        frag_id: 0,
        frag_proto: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
    };
    let mut next = first_next;
    let mut cursor = at + 40;
    let mut walked = 0;
    // Extension headers: read against the frame; at most 8 of them.
    loop {
        let length = match next {
            0 | 43 | 60 => match frame.get(cursor + 1) {
                Some(units) => (*units as usize + 1) * 8,
                None => return Parse::Malformed,
            },
            51 => match frame.get(cursor + 1) {
                Some(units) => (*units as usize + 2) * 4,
                None => return Parse::Malformed,
            },
            44 => {
                let Some(fragment) = frame.get(cursor..cursor + 8) else { return Parse::Malformed };
                let field = u16::from_be_bytes([fragment[2], fragment[3]]);
                let (offset, more) = (field >> 3, field & 1 != 0);
                if offset != 0 || more {
                    parsed.frag_id = u32::from_be_bytes([fragment[4], fragment[5], fragment[6], fragment[7]]);
                    parsed.frag_proto = fragment[0];
                    if offset != 0 {
                        if offset == 1 && fragment[0] == TCP {
                            return Parse::Malformed;
                        }
                        parsed.frag = Frag::Later;
                        parsed.proto = fragment[0];
                        return Parse::Ip(parsed);
                    }
                    parsed.frag = Frag::First;
                }
                8
            }
            _ => break,
        };
        if walked == 8 {
            return Parse::Malformed;
        }
        next = frame[cursor];
        cursor += length;
        walked += 1;
        if cursor > 1024 {
            return Parse::Malformed;
        }
    }
    parsed.proto = next;
    if transport(&frame[..end.min(frame.len())], cursor, &mut parsed) {
        Parse::Ip(parsed)
    } else {
        Parse::Malformed
    }
}

/// TCP needs 20 bytes and a data offset of at least 5 words, UDP 8, ICMP and ICMPv6 4 (by
/// protocol number, whatever the IP version); other protocols nothing.
fn transport(datagram: &[u8], at: usize, parsed: &mut Parsed) -> bool {
    match parsed.proto {
        TCP => {
            let Some(tcp) = datagram.get(at..at + 20) else { return false };
            if tcp[12] >> 4 < 5 {
                return false;
            }
            parsed.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            parsed.tcp_flags = tcp[13];
            true
        }
        UDP => {
            let Some(udp) = datagram.get(at..at + 8) else { return false };
            parsed.dport = u16::from_be_bytes([udp[2], udp[3]]);
            true
        }
        ICMP | ICMPV6 => {
            let Some(icmp) = datagram.get(at..at + 4) else { return false };
            parsed.icmp_type = icmp[0];
            true
        }
        _ => true,
    }
}

fn contains(nets: &[IpNet], address: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(&address))
}

/// The model of one policy: the policy, and the state the kernel keeps between packets that
/// the model must keep too (first-fragment verdicts, trap-port blocks).
pub struct Model {
    policy: Policy,
    fragments: HashMap<(IpAddr, IpAddr, u32, u8), Reason>,
    /// Networks blocked automatically, by trap ports and `[brute_force]`: the source itself,
    /// or for IPv6 its network of `[scan_detection] ipv6_prefix` bits.
    trapped: HashSet<IpNet>,
    /// New connections admitted so far per (source network, limited rule number).
    admitted: HashMap<(IpNet, u16), u32>,
    /// Attempts refused by a limit per (source network, limited rule number), since the last
    /// `[brute_force]` block.
    refused: HashMap<(IpNet, u16), u32>,
    /// Open connections per (source network, capped rule number), as the test set them.
    held: HashMap<(IpNet, u16), u64>,
}

impl Model {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            fragments: HashMap::new(),
            trapped: HashSet::new(),
            admitted: HashMap::new(),
            refused: HashMap::new(),
            held: HashMap::new(),
        }
    }

    pub fn judge(&mut self, frame: &[u8]) -> Expected {
        let (parse, vlan_tags) = parse(frame);
        let mut expected = Expected {
            reason: Reason::PassNotIp,
            monitored: false,
            fragment_first: false,
            fragment_later: false,
            vlan_tags,
            port_drop: None,
        };
        let packet = match parse {
            Parse::NotIp => return expected,
            Parse::Malformed => {
                expected.reason = match self.policy.inbound.malformed {
                    Action::Allow => Reason::PassMalformed,
                    Action::Deny => Reason::DropMalformed,
                };
                expected.monitored = expected.reason.is_drop() && self.policy.mode == Mode::Monitor;
                return expected;
            }
            Parse::Ip(packet) => packet,
        };
        expected.reason = self.verdict(&packet);
        expected.monitored = expected.reason.is_drop() && self.policy.mode == Mode::Monitor;
        expected.fragment_first = packet.frag == Frag::First;
        expected.fragment_later = packet.frag == Frag::Later;
        if expected.reason.is_drop() && packet.frag != Frag::Later && matches!(packet.proto, TCP | UDP) {
            expected.port_drop = Some((packet.proto, packet.dport));
        }
        expected
    }

    fn verdict(&mut self, packet: &Parsed) -> Reason {
        let policy = &self.policy;
        // Neighbour discovery from the link is never filtered.
        if packet.v6
            && packet.proto == ICMPV6
            && packet.frag == Frag::Whole
            && packet.hop_limit == 255
            && (133..=137).contains(&packet.icmp_type)
        {
            return Reason::PassNeighbor;
        }
        let exempt = contains(&policy.never_block, packet.src);
        if contains(&policy.blocklist, packet.src) && !exempt {
            return Reason::DropBlocklist;
        }
        if self.trapped.iter().any(|net| net.contains(&packet.src)) && !exempt {
            return Reason::DropAutoBlock;
        }
        match packet.frag {
            Frag::Later => {
                let key = (packet.src, packet.dst, packet.frag_id, packet.frag_proto);
                match self.fragments.get(&key) {
                    Some(first) if first.is_drop() => Reason::DropFragment,
                    Some(_) => Reason::PassFragment,
                    None => match policy.inbound.fragments_unseen {
                        Action::Allow => Reason::PassFragmentUnseen,
                        Action::Deny => Reason::DropFragmentUnseen,
                    },
                }
            }
            Frag::First => {
                let reason = self.by_protocol(packet);
                self.fragments.insert((packet.src, packet.dst, packet.frag_id, packet.frag_proto), reason);
                reason
            }
            Frag::Whole => self.by_protocol(packet),
        }
    }

    fn by_protocol(&mut self, packet: &Parsed) -> Reason {
        let policy = &self.policy;
        let allow_or = |action: Action, deny: bool| match (action, deny) {
            (Action::Deny, true) => Reason::DropProtocol,
            _ => Reason::PassProtocol,
        };
        match packet.proto {
            TCP | UDP => self.port_policy(packet),
            // Errors and echo replies always pass.
            ICMP if !packet.v6 => allow_or(policy.inbound.icmp, !matches!(packet.icmp_type, 0 | 3 | 11 | 12)),
            ICMPV6 if packet.v6 => {
                allow_or(policy.inbound.icmpv6, !matches!(packet.icmp_type, 1..=4 | 129..=137 | 143))
            }
            _ => allow_or(policy.inbound.other_protocols, true),
        }
    }

    fn port_policy(&mut self, packet: &Parsed) -> Reason {
        let proto = if packet.proto == TCP { Proto::Tcp } else { Proto::Udp };
        let port = packet.dport;
        let attempt = proto == Proto::Udp || packet.tcp_flags & (SYN | ACK) == SYN;
        let policy = &self.policy;
        let traps = match proto {
            Proto::Tcp => &policy.trap_ports.tcp,
            Proto::Udp => &policy.trap_ports.udp,
        };
        if attempt && traps.iter().any(|r| r.contains(&port)) && !contains(&policy.never_block, packet.src) {
            let prefix = if packet.v6 { policy.scan_detection.ipv6_prefix } else { 32 };
            self.trapped.insert(IpNet::new(packet.src, prefix).expect("a valid prefix").trunc());
            return Reason::DropAutoBlock;
        }
        let naming: Vec<_> = policy
            .rules
            .iter()
            .filter(|r| r.proto == proto && r.ports.iter().any(|p| p.contains(&port)))
            .collect();
        let decision = if naming.iter().any(|r| r.kind == RuleKind::Deny) {
            Reason::DropPortDenied
        } else if naming.iter().any(|r| r.kind == RuleKind::Allow && r.from.is_none()) {
            Reason::PassPortAllowed
        } else if naming.iter().any(|r| r.kind == RuleKind::Allow) {
            let admitted =
                naming.iter().filter_map(|r| r.from.as_ref()).any(|from| contains(from, packet.src));
            if admitted { Reason::PassSourceAllowed } else { Reason::DropSourceNotAllowed }
        } else if policy.default == Action::Allow {
            Reason::PassDefaultAllow
        } else {
            Reason::DropDefaultDeny
        };
        if !decision.is_drop() {
            if !attempt {
                return decision;
            }
            // The cap first: an attempt it refuses spends nothing of the rate.
            let naming = naming_numbers(&naming);
            let capped = if proto == Proto::Tcp { self.at_cap(packet, &naming) } else { None };
            let refused = match capped {
                Some(refused) => Some((refused, Reason::DropConnectionLimit)),
                None => self.over_limit(packet, &naming).map(|refused| (refused, Reason::DropRateLimited)),
            };
            let Some((refused, reason)) = refused else {
                return decision;
            };
            // `[brute_force]`: the `after`-th refusal by either limit (windows are far longer
            // than a run) blocks the source's network on every port, and the count starts again.
            if let Some(after) = self.policy.brute_force.as_ref().map(|b| b.after) {
                let count = self.refused.entry(refused).or_default();
                *count += 1;
                if *count >= after {
                    *count = 0;
                    self.trapped.insert(refused.0);
                    return Reason::DropAutoBlock;
                }
            }
            return reason;
        }
        // Packets that cannot open a connection: pass with tcp_non_syn = "pass", or as part of
        // a known flow (there are none here).
        if !attempt {
            return match policy.inbound.tcp_non_syn {
                TcpNonSyn::Pass => Reason::PassTcpNonSyn,
                TcpNonSyn::Track => Reason::DropNoFlow,
            };
        }
        decision
    }

    /// Whether an attempt the port policy admits is over the deciding rule's limit: the rule
    /// that opens the port to everyone (the first), else the rule whose `from` network holds
    /// the source most specifically (the first of equals). Its budget is `burst` attempts per
    /// source (an IPv4 address, an IPv6 network of `ipv6_prefix` bits); refused attempts
    /// spend nothing, and `never_block` sources are never refused. A refusal names the source
    /// network and the rule.
    fn over_limit(&mut self, packet: &Parsed, naming: &[u16]) -> Option<(IpNet, u16)> {
        let rule = deciding_rule(&self.policy, packet, naming)?;
        let limit = rule.limit?;
        limit.new_per_source?;
        let source = self.source_net(packet);
        let admitted = self.admitted.entry((source, rule.number)).or_default();
        if *admitted < limit.burst {
            *admitted += 1;
            return None;
        }
        (!contains(&self.policy.never_block, packet.src)).then_some((source, rule.number))
    }

    /// Whether a TCP SYN the port policy admits comes from a source that holds the deciding
    /// rule's `connections_per_source` (as `hold` set them: the model opens no connections).
    /// Such attempts spend nothing of the rate; `never_block` sources are never refused. A
    /// refusal names the source network and the rule.
    fn at_cap(&self, packet: &Parsed, naming: &[u16]) -> Option<(IpNet, u16)> {
        let rule = deciding_rule(&self.policy, packet, naming)?;
        let cap = rule.limit.and_then(|limit| limit.connections_per_source)?;
        let source = self.source_net(packet);
        let held = self.held.get(&(source, rule.number)).copied().unwrap_or(0);
        (held >= u64::from(cap) && !contains(&self.policy.never_block, packet.src))
            .then_some((source, rule.number))
    }

    /// The network a source is limited as: an IPv4 address, an IPv6 network of `ipv6_prefix`.
    fn source_net(&self, packet: &Parsed) -> IpNet {
        let prefix = if packet.v6 { self.policy.scan_detection.ipv6_prefix } else { 32 };
        IpNet::new(packet.src, prefix).expect("a valid prefix").trunc()
    }

    /// Says that the network `source` (as `source_net` cuts it) holds `count` open connections
    /// on rule `rule` (the kernel test writes the same count into the kernel's table).
    /// The kernel keys sources by their 16-byte form, where IPv4 a.b.c.d is ::ffff:a.b.c.d:
    /// a count held by an IPv4-mapped peer of a dual-stack socket is its IPv4 source's count.
    pub fn hold(&mut self, source: IpNet, rule: u16, count: u64) {
        let source = match source {
            IpNet::V6(net) => net.addr().to_ipv4_mapped().map_or(source, |v4| IpNet::from(IpAddr::V4(v4))),
            IpNet::V4(_) => source,
        };
        self.held.insert((source, rule), count);
    }
}

/// The rule whose limits apply to an attempt the port policy admits: the rule that opens the
/// port to everyone (the first), else the rule whose `from` network holds the source most
/// specifically (the first of equals).
fn deciding_rule<'a>(
    policy: &'a Policy,
    packet: &Parsed,
    naming: &[u16],
) -> Option<&'a portguard::policy::Rule> {
    let rules: Vec<_> = naming.iter().filter_map(|n| policy.rules.iter().find(|r| r.number == *n)).collect();
    rules.iter().find(|r| r.from.is_none()).copied().or_else(|| {
        let mut best: Option<(&portguard::policy::Rule, u8)> = None;
        for rule in &rules {
            for net in rule.from.iter().flatten().filter(|net| net.contains(&packet.src)) {
                if best.is_none_or(|(_, len)| net.prefix_len() > len) {
                    best = Some((rule, net.prefix_len()));
                }
            }
        }
        best.map(|(rule, _)| rule)
    })
}

/// The numbers of the allow rules naming a port (file order).
fn naming_numbers(naming: &[&portguard::policy::Rule]) -> Vec<u16> {
    naming.iter().filter(|r| r.kind == RuleKind::Allow).map(|r| r.number).collect()
}

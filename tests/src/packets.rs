//! Frames for `BPF_PROG_TEST_RUN`: headers come from etherparse, layered here so tests can add
//! VLAN tags, IPv4 options, IPv6 extension header chains and fragments, or break any of them.

use std::net::IpAddr;

use etherparse::{IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader};

pub use portguard_common::net::{
    PROTO_ICMP as ICMP, PROTO_ICMPV6 as ICMPV6, PROTO_TCP as TCP, PROTO_UDP as UDP, TCP_ACK as ACK,
    TCP_FIN as FIN, TCP_PSH as PSH, TCP_RST as RST, TCP_SYN as SYN, TCP_URG as URG,
};

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

/// IPv6 extension header types the parser walks.
pub const HOP_BY_HOP: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const DEST_OPTS: u8 = 60;
pub const AUTH: u8 = 51;

pub fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = TcpHeader::new(sport, dport, 1000, 64240);
    tcp.fin = flags & FIN != 0;
    tcp.syn = flags & SYN != 0;
    tcp.rst = flags & RST != 0;
    tcp.psh = flags & PSH != 0;
    tcp.ack = flags & ACK != 0;
    tcp.urg = flags & URG != 0;
    tcp.to_bytes().to_vec()
}

pub fn udp_header(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    UdpHeader { source_port: sport, destination_port: dport, length: (8 + payload_len) as u16, checksum: 0 }
        .to_bytes()
        .to_vec()
}

/// An ICMP or ICMPv6 header: type, code, checksum, 4 bytes of rest.
pub fn icmp_header(icmp_type: u8, code: u8) -> Vec<u8> {
    vec![icmp_type, code, 0, 0, 0, 0, 0, 0]
}

/// What goes inside the IP header.
#[derive(Clone, Debug)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol.
    pub proto: u8,
    pub hop_limit: u8,
    /// IPv4 options, in 4-byte words (IHL = 5 + options).
    pub ipv4_option_words: u8,
    /// IPv6 extension headers before the upper layer, as (type, raw bytes incl. the type's
    /// length byte); next-header fields are filled in.
    pub ipv6_ext: Vec<(u8, Vec<u8>)>,
    /// (id, offset in 8-byte units, more fragments).
    pub fragment: Option<(u32, u16, bool)>,
}

impl Ip {
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8) -> Self {
        Self { src, dst, proto, hop_limit: 64, ipv4_option_words: 0, ipv6_ext: Vec::new(), fragment: None }
    }
}

/// A generic IPv6 extension header (hop-by-hop, routing, destination options) of `8 * (1 +
/// len_units)` bytes, padded with PadN.
pub fn ipv6_ext(len_units: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; 8 * (1 + len_units as usize)];
    bytes[1] = len_units;
    // PadN option covering the rest.
    bytes[2] = 1;
    bytes[3] = (bytes.len() - 4) as u8;
    bytes
}

/// Builds IP header(s) + `l4` payload.
pub fn ip_packet(ip: &Ip, l4: &[u8]) -> Vec<u8> {
    match (ip.src, ip.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let options = vec![1u8; 4 * ip.ipv4_option_words as usize]; // NOP options
            let mut header =
                Ipv4Header::new(0, ip.hop_limit, IpNumber(ip.proto), src.octets(), dst.octets()).unwrap();
            header.options = options.as_slice().try_into().expect("at most 40 option bytes");
            header.total_len = (header.header_len() + l4.len()) as u16;
            if let Some((id, offset, more)) = ip.fragment {
                header.identification = id as u16;
                header.dont_fragment = false;
                header.more_fragments = more;
                header.fragment_offset = IpFragOffset::try_new(offset).unwrap();
            }
            header.header_checksum = header.calc_header_checksum();
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(l4);
            bytes
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut chain = ip.ipv6_ext.clone();
            if let Some((id, offset, more)) = ip.fragment {
                let mut fragment = vec![0u8; 8];
                let field = (offset << 3) | u16::from(more);
                fragment[2..4].copy_from_slice(&field.to_be_bytes());
                fragment[4..8].copy_from_slice(&id.to_be_bytes());
                chain.push((FRAGMENT, fragment));
            }
            let mut payload = Vec::new();
            for (i, (_, bytes)) in chain.iter().enumerate() {
                let mut bytes = bytes.clone();
                bytes[0] = chain.get(i + 1).map_or(ip.proto, |(t, _)| *t);
                payload.extend_from_slice(&bytes);
            }
            payload.extend_from_slice(l4);
            let header = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: payload.len() as u16,
                next_header: IpNumber(chain.first().map_or(ip.proto, |(t, _)| *t)),
                hop_limit: ip.hop_limit,
                source: src.octets(),
                destination: dst.octets(),
            };
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(&payload);
            bytes
        }
        _ => panic!("mixed address families"),
    }
}

/// Ethernet (+ VLAN tags, outermost first) around an IP packet.
pub fn ethernet(ip_packet: &[u8], v6: bool, tags: &[(u16, u16)]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (tpid, vid) in tags {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    frame.extend_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
    frame.extend_from_slice(ip_packet);
    frame
}

pub fn frame(ip: &Ip, l4: &[u8]) -> Vec<u8> {
    ethernet(&ip_packet(ip, l4), ip.src.is_ipv6(), &[])
}

/// The common case: a TCP segment with `flags` from `src` to `dst:dport`.
pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame(&Ip::new(src, dst, TCP), &tcp_header(sport, dport, flags))
}

pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = udp_header(sport, dport, 4);
    l4.extend_from_slice(b"ping");
    frame(&Ip::new(src, dst, UDP), &l4)
}

pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, hop_limit: u8) -> Vec<u8> {
    let proto = if src.is_ipv6() { ICMPV6 } else { ICMP };
    let mut ip = Ip::new(src, dst, proto);
    ip.hop_limit = hop_limit;
    frame(&ip, &icmp_header(icmp_type, 0))
}

pub fn arp() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2]);
    frame
}

//! Frame parsing: Ethernet, up to `MAX_VLAN_TAGS` 802.1Q/802.1ad tags, IPv4 (options via IHL),
//! IPv6 (hop-by-hop, routing, destination options, fragment and AH headers), then TCP, UDP,
//! ICMP or ICMPv6. Every read is bounds-checked against the end of the frame and, for layer 4,
//! against the length the IP header declares, so padding is never taken for a header.

use core::mem::size_of;

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use portguard_common::maps::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, v4_mapped};

use crate::mem;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const MAX_VLAN_TAGS: usize = 4;
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

pub use portguard_common::net::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG};

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FragKind {
    /// Not fragmented (or an IPv6 atomic fragment).
    Whole,
    /// Offset 0, more fragments follow: carries the layer-4 header.
    First,
    /// Offset > 0: no layer-4 header.
    Later,
}

/// Aligned to 8 with the addresses first, so they are written and read as two 64-bit words
/// each, and the whole packet fills one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Packet {
    /// Addresses, IPv4-mapped for IPv4.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 source in host order (0 for IPv6): the IPv4 blocklist's key.
    pub src4: u32,
    /// IPv4 identification or IPv6 fragment identification.
    pub frag_id: u32,
    /// Ports in host order; 0 unless TCP or UDP with its header present.
    pub sport: u16,
    pub dport: u16,
    /// TCP window: tells a raw scanner's SYN from a stack's (with the data offset).
    pub tcp_window: u16,
    /// Offset of the layer-4 header in the frame (0 for later fragments).
    pub l4_offset: u16,
    /// `PARSED_*`, and the VLAN tags walked: written last by `parse`, read by the caller from
    /// this map slot (not from registers), so the verifier sees one state, not one per parse
    /// path.
    pub parsed: u8,
    pub vlan_tags: u8,
    pub is_v6: bool,
    /// Layer-4 protocol (after IPv6 extension headers).
    pub proto: u8,
    pub tcp_flags: u8,
    /// TCP data offset in 32-bit words.
    pub tcp_doff: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    pub frag: FragKind,
    /// Protocol that identifies the datagram among fragments: IPv4 protocol or the fragment
    /// header's next header.
    pub frag_proto: u8,
}

const _: () = assert!(size_of::<Packet>() == 64);

impl Packet {
    /// The source as two words in memory order (`portguard_common::maps::addr_words`).
    #[inline(always)]
    pub fn src_words(&self) -> [u64; 2] {
        // SAFETY: `src` sits at offset 0 of an 8-aligned struct.
        unsafe { *(self.src.as_ptr() as *const [u64; 2]) }
    }
}

/// `Packet::parsed`: what the frame turned out to be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not an IP packet (ARP, LLDP, ...).
    NotIp,
    /// Too short, lengths that lie, unknown version, too many tags or extension headers.
    Malformed,
    /// An IP packet: the other fields of the `Packet` are valid.
    Ip,
}

pub const PARSED_NOT_IP: u8 = 0;
pub const PARSED_MALFORMED: u8 = 1;
pub const PARSED_IP: u8 = 2;

/// Pointer to a `T` at `offset` bytes into the frame, if the whole `T` is inside it.
#[inline(always)]
fn ptr_at<T>(data: usize, end: usize, offset: usize) -> Option<*const T> {
    let start = data + offset;
    if start + size_of::<T>() > end {
        return None;
    }
    Some(start as *const T)
}

/// `ptr_at` for reads after the IP length checks: `end` goes through `black_box`, because
/// LLVM would otherwise drop this comparison as implied by those checks, and the verifier
/// only trusts a direct comparison of the pointer against the end of the packet.
#[inline(always)]
fn ptr_at_fenced<T>(data: usize, end: usize, offset: usize) -> Option<*const T> {
    ptr_at(data, core::hint::black_box(end), offset)
}

#[inline(always)]
fn set_words(addr: &mut [u8; 16], words: [u64; 2]) {
    // SAFETY: `Packet` is aligned to 8 and its addresses sit at offsets 0 and 16.
    unsafe { *(addr as *mut [u8; 16] as *mut [u64; 2]) = words }
}

/// What the IP header gives a `Packet`.
struct Network {
    src: [u64; 2],
    dst: [u64; 2],
    src4: u32,
    frag_id: u32,
    is_v6: bool,
    proto: u8,
    hop_limit: u8,
    frag: FragKind,
    frag_proto: u8,
}

/// Writes the IP header's fields, and clears the layer-4 ones (`parse_l4` fills them).
#[inline(always)]
fn set_network(packet: &mut Packet, network: Network) {
    set_words(&mut packet.src, network.src);
    set_words(&mut packet.dst, network.dst);
    packet.src4 = network.src4;
    packet.frag_id = network.frag_id;
    clear_layer4(packet);
    packet.is_v6 = network.is_v6;
    packet.proto = network.proto;
    packet.tcp_flags = 0;
    packet.tcp_doff = 0;
    packet.icmp_type = 0;
    packet.icmp_code = 0;
    packet.hop_limit = network.hop_limit;
    packet.frag = network.frag;
    packet.frag_proto = network.frag_proto;
}

/// Zeroes the ports, window and layer-4 offset as one word. Volatile: LLVM would merge it with
/// the zero stores around it into a call to a byte-by-byte `memset` (the BPF backend emits one
/// for anything but a small power-of-two run).
#[inline(always)]
fn clear_layer4(packet: &mut Packet) {
    // SAFETY: the four fields fill the 8-aligned word at offset 40.
    unsafe { core::ptr::write_volatile(&raw mut packet.sport as *mut u64, 0) }
}

const _: () =
    assert!(core::mem::offset_of!(Packet, sport) == 40 && core::mem::offset_of!(Packet, l4_offset) == 46);

/// `v4_mapped` in words: ::ffff:a.b.c.d is 0, then 00 00 ff ff a b c d.
#[inline(always)]
fn v4_mapped_words(octets: [u8; 4]) -> [u64; 2] {
    let [a, b, c, d] = octets;
    [0, u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, d])]
}

/// A 16-bit field of the frame in network order, read as one load (see `mem`).
#[inline(always)]
fn be16_at(field: &[u8; 2]) -> u16 {
    u16::from_be(unsafe { mem::u16_at(field.as_ptr() as usize) })
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// Parses the frame into `packet` (a per-CPU scratch slot: the stack is too small to copy
/// it around).
///
/// Not inlined, on purpose: as a BPF-to-BPF call, every way through the parser (tags,
/// extension headers, fragments) returns to one point with nothing but the result in
/// registers, so the verifier checks the rest of the program once, not once per parse path.
#[inline(never)]
pub fn parse(data: usize, end: usize, packet: &mut Packet) {
    let (parsed, vlan_tags) = parse_frame(data, end, packet);
    packet.parsed = match parsed {
        Parsed::NotIp => PARSED_NOT_IP,
        Parsed::Malformed => PARSED_MALFORMED,
        Parsed::Ip => PARSED_IP,
    };
    packet.vlan_tags = vlan_tags;
}

#[inline(always)]
fn parse_frame(data: usize, end: usize, packet: &mut Packet) -> (Parsed, u8) {
    let mut vlan_tags = 0;
    let Some(eth) = ptr_at::<EthHdr>(data, end, 0) else {
        return (Parsed::Malformed, vlan_tags);
    };
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(tag) = ptr_at::<VlanHdr>(data, end, offset) else {
            return (Parsed::Malformed, vlan_tags);
        };
        ether_type = u16::from_be(unsafe { (*tag).ether_type });
        offset += VlanHdr::LEN;
        vlan_tags += 1;
    }
    let parsed = match ether_type {
        ETH_P_IP => parse_ipv4(data, end, offset, packet),
        ETH_P_IPV6 => parse_ipv6(data, end, offset, packet),
        ETH_P_8021Q | ETH_P_8021AD => Parsed::Malformed,
        _ => Parsed::NotIp,
    };
    (parsed, vlan_tags)
}

#[inline(always)]
fn parse_ipv4(data: usize, end: usize, offset: usize, packet: &mut Packet) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, offset) else {
        return Parsed::Malformed;
    };
    let ip = unsafe { &*ip };
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    let total_len = be16_at(&ip.tot_len) as usize;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len {
        return Parsed::Malformed;
    }
    // The datagram must fit in the frame (a frame may be longer: Ethernet padding).
    if data + offset + total_len > end {
        return Parsed::Malformed;
    }
    let frag_field = be16_at(&ip.frags);
    let frag_offset = frag_field & 0x1fff;
    let more_fragments = frag_field & 0x2000 != 0;
    let frag = if frag_offset != 0 {
        FragKind::Later
    } else if more_fragments {
        FragKind::First
    } else {
        FragKind::Whole
    };
    // RFC 1858: a TCP fragment at offset 8 can only exist to rewrite the flags of the first.
    if frag_offset == 1 && ip.proto == PROTO_TCP {
        return Parsed::Malformed;
    }
    // The header as words: read once each, not byte by byte.
    let (src, dst) =
        unsafe { (mem::u32_at(ip.src_addr.as_ptr() as usize), mem::u32_at(ip.dst_addr.as_ptr() as usize)) };
    set_network(
        packet,
        Network {
            src: v4_mapped_words(src.to_ne_bytes()),
            dst: v4_mapped_words(dst.to_ne_bytes()),
            src4: u32::from_be(src),
            frag_id: be16_at(&ip.id) as u32,
            is_v6: false,
            proto: ip.proto,
            hop_limit: ip.ttl,
            frag,
            frag_proto: ip.proto,
        },
    );
    if frag == FragKind::Later {
        return Parsed::Ip;
    }
    let l4 = offset + header_len;
    let l4_end = offset + total_len;
    if parse_l4(data, end, l4, l4_end, packet) { Parsed::Ip } else { Parsed::Malformed }
}

#[inline(always)]
fn parse_ipv6(data: usize, end: usize, offset: usize, packet: &mut Packet) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(data, end, offset) else {
        return Parsed::Malformed;
    };
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let (src, dst) = (mem::addr_words(&ip.src_addr), mem::addr_words(&ip.dst_addr));
    // An IPv4-mapped source has no business on the wire (RFC 4291 2.5.5.2); judged as IPv4 it
    // would slip into IPv4 rules, judged as IPv6 it would dodge them.
    let mapped_mask = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    if src[0] == 0 && src[1] & mapped_mask == v4_mapped_words([0; 4])[1] {
        return Parsed::Malformed;
    }
    let payload_len = be16_at(&ip.payload_len) as usize;
    let l4_end = offset + Ipv6Hdr::LEN + payload_len;
    // A zero payload length with a hop-by-hop header is a jumbogram: the frame gives the length.
    let jumbo = payload_len == 0 && ip.next_hdr == IPV6_HOP_BY_HOP;
    if !jumbo && data + l4_end > end {
        return Parsed::Malformed;
    }
    let l4_end = if jumbo { end - data } else { l4_end };
    set_network(
        packet,
        Network {
            src,
            dst,
            src4: 0,
            frag_id: 0,
            is_v6: true,
            proto: ip.next_hdr,
            hop_limit: ip.hop_limit,
            frag: FragKind::Whole,
            frag_proto: 0,
        },
    );

    let mut next = ip.next_hdr;
    let mut cursor = offset + Ipv6Hdr::LEN;
    let mut upper_layer = false;
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let Some(ext) = ptr_at::<[u8; 2]>(data, end, cursor) else {
                    return Parsed::Malformed;
                };
                let ext = unsafe { *ext };
                next = ext[0];
                cursor += (ext[1] as usize + 1) * 8;
            }
            IPV6_AUTH => {
                let Some(ext) = ptr_at::<[u8; 2]>(data, end, cursor) else {
                    return Parsed::Malformed;
                };
                let ext = unsafe { *ext };
                next = ext[0];
                cursor += (ext[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let Some(frag) = ptr_at::<[u8; 8]>(data, end, cursor) else {
                    return Parsed::Malformed;
                };
                let frag = unsafe { *frag };
                next = frag[0];
                cursor += 8;
                let offset_flags = be16([frag[2], frag[3]]);
                let frag_offset = offset_flags >> 3;
                let more_fragments = offset_flags & 1 != 0;
                // An atomic fragment (offset 0, no more fragments) is a whole datagram.
                if frag_offset != 0 || more_fragments {
                    packet.frag_id = u32::from_be_bytes([frag[4], frag[5], frag[6], frag[7]]);
                    packet.frag_proto = next;
                    if frag_offset != 0 {
                        if frag_offset == 1 && next == PROTO_TCP {
                            return Parsed::Malformed;
                        }
                        packet.frag = FragKind::Later;
                        packet.proto = next;
                        return Parsed::Ip;
                    }
                    packet.frag = FragKind::First;
                }
            }
            _ => {
                upper_layer = true;
                break;
            }
        }
        // Keep the offset provably small for the verifier; no real chain comes close.
        if cursor > 1024 {
            return Parsed::Malformed;
        }
    }
    if !upper_layer {
        // The chain is longer than we walk: judging it by a guess would be a bypass.
        return Parsed::Malformed;
    }
    packet.proto = next;
    if parse_l4(data, end, cursor, l4_end, packet) { Parsed::Ip } else { Parsed::Malformed }
}

/// Reads the layer-4 header at `offset`; `l4_end` is where the IP datagram (or this fragment)
/// ends. Returns false when a header the policy needs is cut short.
#[inline(always)]
fn parse_l4(data: usize, end: usize, offset: usize, l4_end: usize, packet: &mut Packet) -> bool {
    packet.l4_offset = offset as u16;
    match packet.proto {
        PROTO_TCP => {
            let Some(tcp) = ptr_at_fenced::<TcpHdr>(data, end, offset) else {
                return false;
            };
            if offset + TcpHdr::LEN > l4_end {
                return false;
            }
            let tcp = unsafe { &*tcp };
            // Data offset below 5 words cannot be a real header.
            if tcp.doff() < 5 {
                return false;
            }
            packet.sport = be16_at(&tcp.source);
            packet.dport = be16_at(&tcp.dest);
            // Byte 13 of the header holds CWR..FIN.
            let raw = unsafe { *((tcp as *const TcpHdr as *const u8).add(13)) };
            packet.tcp_flags = raw;
            packet.tcp_doff = tcp.doff() as u8;
            packet.tcp_window = be16_at(&tcp.window);
            true
        }
        PROTO_UDP => {
            let Some(udp) = ptr_at_fenced::<UdpHdr>(data, end, offset) else {
                return false;
            };
            if offset + UdpHdr::LEN > l4_end {
                return false;
            }
            let udp = unsafe { &*udp };
            packet.sport = be16_at(&udp.src);
            packet.dport = be16_at(&udp.dst);
            true
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let Some(icmp) = ptr_at_fenced::<[u8; 4]>(data, end, offset) else {
                return false;
            };
            if offset + 4 > l4_end {
                return false;
            }
            packet.icmp_type = unsafe { (*icmp)[0] };
            packet.icmp_code = unsafe { (*icmp)[1] };
            true
        }
        _ => true,
    }
}

/// The probe an ICMP "port unreachable" answers, read from the original datagram quoted after
/// the 8-byte ICMP header (sent by the prober to this host). `None` unless it quotes UDP.
/// Aligned, because the prober's address is read as words (`mem::addr_words`).
#[repr(C, align(8))]
pub struct QuotedProbe {
    /// The prober's address (the quoted source).
    pub prober: [u8; 16],
    /// The prober's port and the probed port (the quoted source and destination ports).
    pub prober_port: u16,
    pub port: u16,
}

#[inline(always)]
pub fn unreachable_probe(data: usize, end: usize, packet: &Packet) -> Option<QuotedProbe> {
    let quoted = packet.l4_offset as usize + 8;
    // The offset comes back from a map: bound it again for the verifier.
    if quoted > 1024 {
        return None;
    }
    if packet.is_v6 {
        let ip = ptr_at::<Ipv6Hdr>(data, end, quoted)?;
        let ip = unsafe { &*ip };
        if ip.next_hdr != PROTO_UDP {
            return None;
        }
        let udp = ptr_at::<UdpHdr>(data, end, quoted + Ipv6Hdr::LEN)?;
        let (sport, dport) = unsafe { (be16_at(&(*udp).src), be16_at(&(*udp).dst)) };
        Some(QuotedProbe { prober: ip.src_addr, prober_port: sport, port: dport })
    } else {
        let ip = ptr_at::<Ipv4Hdr>(data, end, quoted)?;
        let ip = unsafe { &*ip };
        let header_len = ((ip.vihl & 0x0f) as usize) * 4;
        if ip.proto != PROTO_UDP || header_len < Ipv4Hdr::LEN {
            return None;
        }
        let udp = ptr_at::<UdpHdr>(data, end, quoted + header_len)?;
        let (sport, dport) = unsafe { (be16_at(&(*udp).src), be16_at(&(*udp).dst)) };
        Some(QuotedProbe { prober: v4_mapped(ip.src_addr), prober_port: sport, port: dport })
    }
}

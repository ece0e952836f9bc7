//! Flows the host itself takes part in, learnt on egress. They let replies (UDP) and segments
//! of established connections (TCP) through ports a default-deny policy keeps closed.

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, programs::TcContext};
use portguard_common::{
    Config,
    config::FLAG_SCAN_DETECT,
    counters::OBS_REFUSALS_SENT,
    events::ScanKind,
    maps::{FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, flow_port_bit},
};

use crate::{
    counters,
    events::Subject,
    maps::{PG_FLOW_PORTS, PG_FLOWS, PG_PACKET, SCRATCH_TC},
    parse::{FragKind, PARSED_IP, Packet, TCP_ACK, TCP_RST, parse, unreachable_probe},
    scan,
};

/// Refresh a flow's timestamp at most this often (saves a map write per outbound packet).
const REFRESH_NS: u64 = 1_000_000_000;
/// Enough linear bytes for Ethernet, two VLAN tags, IPv6 with a few options and TCP.
const PULL_LEN: u32 = 160;

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Called for every packet the host sends.
#[inline(always)]
pub fn record_egress(ctx: &TcContext, cfg: &Config) {
    // Headers of locally generated packets are normally linear already; pull when they are not.
    let linear = ctx.data_end() - ctx.data();
    let want = if ctx.len() < PULL_LEN { ctx.len() } else { PULL_LEN };
    if linear < want as usize {
        let _ = ctx.pull_data(want);
    }
    let Some(packet) = PG_PACKET.get_ptr_mut(SCRATCH_TC) else {
        return;
    };
    // SAFETY: this CPU's slot, used by nothing else while this program runs.
    let packet = unsafe { &mut *packet };
    parse(ctx.data(), ctx.data_end(), packet);
    if unsafe { core::ptr::read_volatile(&packet.parsed) } != PARSED_IP {
        return;
    }
    let packet: &Packet = packet;
    if packet.frag == FragKind::Later {
        return;
    }
    let refused = match packet.proto {
        PROTO_TCP => packet.tcp_flags & TCP_RST != 0,
        PROTO_ICMP => !packet.is_v6 && packet.icmp_type == 3 && packet.icmp_code == 3,
        PROTO_ICMPV6 => packet.is_v6 && packet.icmp_type == 1 && packet.icmp_code == 4,
        _ => false,
    };
    if refused {
        // A refusal must not open the door for the peer; it counts towards scan detection.
        counters::add(OBS_REFUSALS_SENT, 0);
        if cfg.has(FLAG_SCAN_DETECT) {
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            refusal(ctx, packet, ifindex, cfg);
        }
        return;
    }
    if packet.proto != PROTO_TCP && packet.proto != PROTO_UDP {
        return;
    }
    let key = FlowKey {
        remote: packet.dst,
        local: packet.src,
        remote_port: packet.dport,
        local_port: packet.sport,
        proto: packet.proto,
        _pad: [0; 3],
    };
    let (word, bit) = flow_port_bit(packet.proto, packet.sport);
    if let Some(bits) = PG_FLOW_PORTS.get_ptr_mut(word) {
        // Not atomic: a bit lost to a race is set again by the flow's next packet.
        unsafe { *bits |= bit };
    }
    let now = now_ns();
    if let Some(last) = PG_FLOWS.get_ptr_mut(key) {
        unsafe {
            if now.wrapping_sub(*last) < REFRESH_NS {
                return;
            }
            *last = now;
        }
        return;
    }
    let _ = PG_FLOWS.insert(key, now, 0);
}

/// Whether an inbound packet belongs to a flow the host took part in (for UDP: recently).
#[inline(always)]
pub fn known(packet: &Packet, cfg: &Config) -> bool {
    // Most packets to closed ports aim at ports the host never sent from: one array read
    // spares them the hash lookup.
    let (word, bit) = flow_port_bit(packet.proto, packet.dport);
    if PG_FLOW_PORTS.get(word).is_none_or(|bits| bits & bit == 0) {
        return false;
    }
    let key = FlowKey {
        remote: packet.src,
        local: packet.dst,
        remote_port: packet.sport,
        local_port: packet.dport,
        proto: packet.proto,
        _pad: [0; 3],
    };
    match unsafe { PG_FLOWS.get(key) } {
        None => false,
        Some(last) => packet.proto == PROTO_TCP || now_ns().wrapping_sub(*last) < cfg.udp_reply_timeout_ns,
    }
}

/// The host refused a probe: a TCP RST (the prober is its destination) or an ICMP port
/// unreachable (the prober is the destination of the quoted datagram).
#[inline(always)]
fn refusal(ctx: &TcContext, packet: &Packet, ifindex: u32, cfg: &Config) {
    if packet.proto == PROTO_TCP {
        // RST+ACK answers a SYN (or FIN, NULL, Xmas); a bare RST answers an ACK probe.
        let kind = if packet.tcp_flags & TCP_ACK != 0 { ScanKind::Syn } else { ScanKind::Ack };
        let subject = Subject {
            src: &packet.dst,
            dst: &packet.src,
            sport: packet.dport,
            dport: packet.sport,
            proto: PROTO_TCP,
            tcp_flags: packet.tcp_flags,
            ifindex,
        };
        let _ = scan::failed_attempt(cfg, &subject, kind as u8);
        return;
    }
    let Some((prober, port)) = unreachable_probe(ctx.data(), ctx.data_end(), packet) else {
        return;
    };
    let subject = Subject {
        src: &prober,
        dst: &packet.src,
        sport: 0,
        dport: port,
        proto: PROTO_UDP,
        tcp_flags: 0,
        ifindex,
    };
    let _ = scan::failed_attempt(cfg, &subject, ScanKind::Udp as u8);
}

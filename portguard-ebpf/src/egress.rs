//! TC egress: learn the flows the host takes part in, and see the refusals it sends (TCP RST,
//! ICMP port unreachable) for scan detection. Never drops.

use aya_ebpf::programs::TcContext;
use portguard_common::{
    Config,
    config::FLAG_SCAN_DETECT,
    counters::{OBS_REFUSALS_OWN_FLOWS, OBS_REFUSALS_SENT},
    events::ScanKind,
    maps::{FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};

use crate::{
    counters,
    events::Subject,
    flows,
    maps::{PG_PACKET, SCRATCH_TC},
    parse::{FragKind, PARSED_IP, Packet, TCP_ACK, TCP_RST, parse, unreachable_probe},
    scan,
};

/// Enough linear bytes for Ethernet, two VLAN tags, IPv6 with a few options and TCP.
const PULL_LEN: u32 = 160;

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
        // A refusal must not open the door for the peer; it may count towards scan detection.
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
    flows::record(&FlowKey {
        remote: packet.dst,
        local: packet.src,
        remote_port: packet.dport,
        local_port: packet.sport,
        proto: packet.proto,
        _pad: [0; 3],
    });
}

/// The host refused something: a TCP RST (the peer is its destination) or an ICMP port
/// unreachable (the peer is the source of the quoted datagram). It is a refused probe only
/// when the host had not sent on that flow before: the host resetting its own connections
/// (a client closing a socket with unread data) or answering late replies to a closed client
/// socket says nothing against the peer.
#[inline(always)]
fn refusal(ctx: &TcContext, packet: &Packet, ifindex: u32, cfg: &Config) {
    if packet.proto == PROTO_TCP {
        let flow = FlowKey {
            remote: packet.dst,
            local: packet.src,
            remote_port: packet.dport,
            local_port: packet.sport,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        if flows::sent_on(&flow) {
            counters::add(OBS_REFUSALS_OWN_FLOWS, 0);
            return;
        }
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
            is_v6: packet.is_v6,
        };
        counted_refusal(cfg, &subject, kind as u8);
        return;
    }
    let Some(probe) = unreachable_probe(ctx.data(), ctx.data_end(), packet) else {
        return;
    };
    let flow = FlowKey {
        remote: probe.prober,
        local: packet.src,
        remote_port: probe.prober_port,
        local_port: probe.port,
        proto: PROTO_UDP,
        _pad: [0; 3],
    };
    if flows::sent_on(&flow) {
        counters::add(OBS_REFUSALS_OWN_FLOWS, 0);
        return;
    }
    let subject = Subject {
        src: &probe.prober,
        dst: &packet.src,
        sport: probe.prober_port,
        dport: probe.port,
        proto: PROTO_UDP,
        tcp_flags: 0,
        ifindex,
        is_v6: packet.is_v6,
    };
    counted_refusal(cfg, &subject, ScanKind::Udp as u8);
}

#[inline(always)]
fn counted_refusal(cfg: &Config, subject: &Subject, kind: u8) {
    let outcome = scan::failed_attempt(cfg, subject, kind);
    if outcome & scan::DETECTED != 0 {
        let _ = scan::report(cfg, subject, outcome);
    }
}

//! Flows the host itself takes part in, learnt on egress. They let replies (UDP) and segments
//! of established connections (TCP) through ports a default-deny policy keeps closed.

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, programs::TcContext};
use portguard_common::{
    Config,
    maps::{FlowKey, PROTO_TCP, PROTO_UDP},
};

use crate::{
    maps::PG_FLOWS,
    parse::{FragKind, Packet, Parsed, TCP_RST, parse},
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
pub fn record_egress(ctx: &TcContext) {
    // Headers of locally generated packets are normally linear already; pull when they are not.
    let linear = ctx.data_end() - ctx.data();
    let want = if ctx.len() < PULL_LEN {
        ctx.len()
    } else {
        PULL_LEN
    };
    if linear < want as usize {
        let _ = ctx.pull_data(want);
    }
    let Parsed::Ip(packet) = parse(ctx.data(), ctx.data_end()).parsed else {
        return;
    };
    if packet.frag == FragKind::Later {
        return;
    }
    match packet.proto {
        PROTO_UDP => {}
        // A RST refuses a connection: it must not open the door for the peer.
        PROTO_TCP if packet.tcp_flags & TCP_RST == 0 => {}
        _ => return,
    }
    let key = FlowKey {
        remote: packet.dst,
        local: packet.src,
        remote_port: packet.dport,
        local_port: packet.sport,
        proto: packet.proto,
        _pad: [0; 3],
    };
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
        Some(last) => {
            packet.proto == PROTO_TCP || now_ns().wrapping_sub(*last) < cfg.udp_reply_timeout_ns
        }
    }
}

//! Flows the host itself takes part in, learnt on egress (`egress.rs`). They let replies (UDP)
//! and segments of established connections (TCP) through ports a default-deny policy keeps
//! closed, and tell the host's own resets apart from refused probes.

use portguard_common::{
    Config,
    maps::{FlowKey, PROTO_TCP, flow_port_bit},
};

use crate::{
    maps::{PG_FLOW_PORTS, PG_FLOWS},
    parse::Packet,
    time::now_ns,
};

/// Refresh a flow's timestamp at most this often (saves a map write per outbound packet).
const REFRESH_NS: u64 = 1_000_000_000;

/// Whether the host has sent from `local_port` at all: one array read that spares most
/// lookups the hash.
#[inline(always)]
fn port_used(proto: u8, local_port: u16) -> bool {
    let (word, bit) = flow_port_bit(proto, local_port);
    PG_FLOW_PORTS.get(word).is_some_and(|bits| bits & bit != 0)
}

/// Whether an inbound packet belongs to a flow the host took part in (for UDP: recently).
#[inline(always)]
pub fn known(packet: &Packet, cfg: &Config) -> bool {
    if !port_used(packet.proto, packet.dport) {
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

/// Whether the host has sent on this flow before (from `local` to `remote`).
#[inline(always)]
pub fn sent_on(key: &FlowKey) -> bool {
    port_used(key.proto, key.local_port) && unsafe { PG_FLOWS.get(key) }.is_some()
}

/// Records an outbound packet's flow.
#[inline(always)]
pub fn record(key: &FlowKey) {
    let (word, bit) = flow_port_bit(key.proto, key.local_port);
    if let Some(bits) = PG_FLOW_PORTS.get_ptr_mut(word) {
        // Not atomic: a bit lost to a race is set again by the flow's next packet.
        unsafe {
            if *bits & bit == 0 {
                *bits |= bit;
            }
        }
    }
    let now = now_ns();
    if let Some(last) = PG_FLOWS.get_ptr_mut(key) {
        unsafe {
            if now.wrapping_sub(*last) >= REFRESH_NS {
                *last = now;
            }
        }
        return;
    }
    let _ = PG_FLOWS.insert(key, now, 0);
}

//! Evidence (`[evidence]`): the first packets of a source blocked automatically, copied with
//! their bytes to the loader through a ring buffer of their own (`PG_EVIDENCE`), so evidence
//! cannot crowd out events.
//!
//! Only the blocked-source path does any of it. Making a block starts its capture with the
//! packet that caused it (`start`); the packets the table lookup then finds blocked take one
//! of the block's `packets_per_source` each, within `capture_for` of the block (`take`); the
//! entry point copies the packet its verdict marks (`capture`). Until a block's packets are
//! spent its source skips the per-CPU memo of the last blocked source (each packet must reach
//! its entry); after that, its flood costs what it cost before.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use portguard_common::{
    Config,
    counters::{OBS_EVIDENCE_COPIED, OBS_EVIDENCE_LOST},
    events::{EVIDENCE_FRAME_BYTES, EvidencePacket},
    maps::{AutoBlock, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};

use crate::{
    counters,
    maps::{PG_EVIDENCE, PG_EVIDENCE_NOTE, PG_PACKET, SCRATCH_XDP},
    time::precise_now_ns,
    types::EvidenceNote,
};

/// A block of `net` was just made: the packet being judged is its first evidence. Returns the
/// packets still to copy after it (`AutoBlock::evidence_left`).
#[inline(always)]
pub fn start(net: &[u8; 16], prefix_len: u8, expires_ns: u64, cfg: &Config) -> u8 {
    if cfg.evidence_packets == 0 {
        return 0;
    }
    note(net, prefix_len, expires_ns);
    // Validation keeps `packets_per_source` within a byte.
    (cfg.evidence_packets - 1) as u8
}

/// Whether the packet the block `entry` of `net` just matched is evidence (one of the block's
/// packets left, within `capture_for`); takes it if so.
///
/// The count is shared by every CPU and not decremented atomically (the BPF target has no
/// compare-and-swap for a byte): CPUs matching the same block at the same instant may each
/// take the same packet, so the kernel may send a few more than `packets_per_source`; the
/// loader keeps at most that many per block.
#[inline(always)]
pub fn take(entry: *mut AutoBlock, net: &[u8; 16], now: u64, cfg: &Config) -> bool {
    if cfg.evidence_packets == 0 {
        return false;
    }
    // SAFETY: a value of `PG_AUTO_BLOCK` the caller found.
    let (left, added_ns, expires_ns, prefix_len) =
        unsafe { ((*entry).evidence_left, (*entry).added_ns, (*entry).expires_ns, (*entry).prefix_len) };
    if left == 0 {
        return false;
    }
    if now.wrapping_sub(added_ns) >= cfg.evidence_window_ns {
        // Past `capture_for`: the capture ends, and the memo may answer this source again.
        unsafe { (*entry).evidence_left = 0 };
        return false;
    }
    unsafe { (*entry).evidence_left = left - 1 };
    note(net, prefix_len, expires_ns);
    true
}

#[inline(always)]
fn note(net: &[u8; 16], prefix_len: u8, expires_ns: u64) {
    if let Some(note) = PG_EVIDENCE_NOTE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; read back by `capture` for the same packet.
        unsafe { *note = EvidenceNote { expires_ns, net: *net, prefix_len, _pad: [0; 7] } };
    }
}

/// Copies the packet being judged (its verdict carries `VERDICT_EVIDENCE`) to `PG_EVIDENCE`:
/// its headers and up to `snaplen` bytes of payload. Called from the entry point (the only
/// place that holds the frame), for a blocked source's first packets only.
#[inline(always)]
pub fn capture(ctx: &XdpContext, cfg: &Config) {
    let (Some(note), Some(packet)) = (PG_EVIDENCE_NOTE.get_ptr(0), PG_PACKET.get_ptr(SCRATCH_XDP)) else {
        return;
    };
    // SAFETY: this CPU's slots, written while judging this frame.
    let (note, packet) = unsafe { (&*note, &*packet) };
    let frame_len = (ctx.data_end() - ctx.data()) as u32;
    let headers = match packet.proto {
        // A later fragment has no layer-4 header: it is kept as far as the record allows.
        _ if packet.l4_offset == 0 => (EVIDENCE_FRAME_BYTES as u32).saturating_sub(cfg.evidence_snaplen),
        PROTO_TCP => packet.l4_offset as u32 + packet.tcp_doff as u32 * 4,
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => packet.l4_offset as u32 + 8,
        _ => packet.l4_offset as u32,
    };
    // Bounded as the verifier needs it, 1 to `EVIDENCE_FRAME_BYTES`: the last byte's index is
    // clamped, then one added (a parsed IP frame is never empty).
    let mut last = u64::from((headers + cfg.evidence_snaplen).wrapping_sub(1));
    if last > u64::from(frame_len.wrapping_sub(1)) {
        last = u64::from(frame_len.wrapping_sub(1));
    }
    if last > EVIDENCE_FRAME_BYTES as u64 - 1 {
        last = EVIDENCE_FRAME_BYTES as u64 - 1;
    }
    let len = last as u32 + 1;
    let Some(mut entry) = PG_EVIDENCE.reserve::<EvidencePacket>(0) else {
        counters::add(OBS_EVIDENCE_LOST, 0);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: the reserved record, written field by field (it does not fit on the stack).
    let copied = unsafe {
        (*record).time_ns = precise_now_ns();
        (*record).block_expires_ns = note.expires_ns;
        (*record).net = note.net;
        (*record).ifindex = (*ctx.ctx).ingress_ifindex;
        (*record).frame_len = frame_len;
        (*record).cap_len = len;
        (*record).prefix_len = note.prefix_len;
        (*record)._pad = [0; 3];
        bpf_xdp_load_bytes(ctx.ctx, 0, (*record).frame.as_mut_ptr().cast(), len) == 0
    };
    if !copied {
        entry.discard(0);
        return;
    }
    entry.submit(0);
    counters::add(OBS_EVIDENCE_COPIED, u64::from(len));
}

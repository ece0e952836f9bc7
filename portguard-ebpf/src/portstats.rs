//! Per-port statistics for `portguard learn` and the baselines: what arrives at each TCP and
//! UDP port, admitted and refused, and who opens connections to it.
//!
//! Per packet: one entry of this CPU's copy of the port table (an array read, no hash), three
//! adds. Per new connection (a TCP SYN without ACK, a UDP datagram) admitted, or refused while
//! the policy only monitors, also the source network's slot in this CPU's cache of the source
//! table (an array entry and plain adds when the network holds it); only a network that does
//! not hold its slot pays a call, a lookup in the shared table `PG_PORT_SOURCES` (an insert
//! for a network it does not hold) and its atomic adds, for the network it pushes out.
//! Measured per admitted SYN (BPF_PROG_TEST_RUN, one network repeated) before the cache: the
//! shared table's key and lookup about 16 ns, its three atomic adds 13, the call 3, of 32;
//! the cache's hit with the clock read once a tick (`tick_time`) leaves a few. Sources dropped
//! for who they are (blocklist, manual and automatic blocks) cost nothing here: they never
//! reached the port policy.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    sync::atomic::{Ordering, compiler_fence},
};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_get_smp_processor_id};
use portguard_common::{
    Config, Reason,
    config::{FLAG_MONITOR, FLAG_PORT_DROPS_PER_CPU},
    maps::{
        PORT_SOURCE_V4_PREFIX, PORT_TABLE_LEN, PROTO_TCP, PROTO_UDP, PortSource, PortSourceKey,
        PortSourceSlot, PortTraffic, port_source_slot,
    },
};

use crate::{
    maps::{
        PG_PACKET, PG_PORT_SOURCE_CACHE, PG_PORT_SOURCE_FLUSHES, PG_PORT_SOURCES, PG_PORT_STATS,
        PG_PORT_STATS_META, PG_TICK_TIME, SCRATCH_XDP,
    },
    mem,
    parse::{TCP_ACK, TCP_SYN},
    time::{jiffies, now_ns},
    types::{NO_PORT, Verdict},
};

/// Counts a judged frame against its destination port. Not counted: frames without one,
/// sources dropped for who they are, and replies to the host's own traffic (a flow's frames
/// go to its ephemeral port: no use of a service, and a UDP reply is no new connection).
#[inline(always)]
pub fn count(verdict: &Verdict, cfg: &Config, frame_len: usize) {
    if verdict.port_index == NO_PORT
        || blocked_source(verdict.reason)
        || verdict.reason == Reason::PassFlow as u8
    {
        return;
    }
    let refused = verdict.is_drop();
    let new_connection = is_new_connection(verdict.port_index);
    // This CPU's copy of the port table, as for `PG_PORT_DROPS` (see `Config::port_drop_shards`).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let shard = cpu & (cfg.port_drop_shards.wrapping_sub(1));
    let index = shard.wrapping_mul(PORT_TABLE_LEN).wrapping_add(verdict.port_index);
    if let Some(entry) = PG_PORT_STATS.get_ptr_mut(index) {
        // SAFETY: a value of the array; `PortStats` is plain counters.
        let traffic = unsafe { if refused { &mut (*entry).refused } else { &mut (*entry).accepted } };
        add(traffic, frame_len as u64, new_connection as u64, cfg);
    }
    // Refused attempts are summarised by source only while the policy monitors (what would a
    // deny policy break?): under enforcement a flood of them would pay a hash lookup, and an
    // insert per forged source, on the path that must drop at line rate.
    if new_connection && (!refused || cfg.has(FLAG_MONITOR)) {
        record_source(verdict.port_index, refused as u64, frame_len as u64, cfg);
    }
}

/// Dropped before the port policy, for who the source is.
#[inline(always)]
fn blocked_source(reason: u8) -> bool {
    reason == Reason::DropBlocklist as u8
        || reason == Reason::DropManualBlock as u8
        || reason == Reason::DropAutoBlock as u8
}

/// A TCP SYN without ACK, or any UDP datagram (read from the packet `judge` parsed).
#[inline(always)]
fn is_new_connection(port_index: u32) -> bool {
    if port_index >= 65536 {
        return true;
    }
    let Some(packet) = PG_PACKET.get_ptr(SCRATCH_XDP) else { return false };
    // SAFETY: this CPU's slot, written by `judge` for this frame.
    let flags = unsafe { (*packet).tcp_flags };
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
fn add(traffic: &mut PortTraffic, bytes: u64, connections: u64, cfg: &Config) {
    if cfg.has(FLAG_PORT_DROPS_PER_CPU) {
        // This CPU's own copy: nobody else writes it.
        traffic.packets += 1;
        traffic.bytes += bytes;
        traffic.connections += connections;
    } else {
        // A copy shared by several CPUs: BPF's atomic add (see `counters::count`).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut traffic.packets, 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut traffic.bytes, bytes);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut traffic.connections, connections);
        }
    }
}

/// Adds a new connection to its source network's entry for the port. The common case, a
/// network that holds its slot in this CPU's cache, is an array entry and plain adds (no hash
/// table, no atomics: only this CPU writes its cache, and XDP does not interrupt itself);
/// any other takes the slot (`take_slot`).
#[inline(always)]
fn record_source(port_index: u32, refused: u64, bytes: u64, cfg: &Config) {
    let Some(words) = source_key_words(port_index, cfg) else { return };
    let Some(slot) = PG_PORT_SOURCE_CACHE.get_ptr_mut(port_source_slot(words)) else { return };
    let now = tick_time();
    // SAFETY: this CPU's slot; `PortSourceSlot` starts with the 8-aligned key.
    unsafe {
        let held = &mut (*slot).source;
        // Word by word: an array compare would be a call of a byte-wise `memcmp`.
        let [a, b, c] = *(slot as *const [u64; 3]);
        if held.connections != 0 && a == words[0] && b == words[1] && c == words[2] {
            held.connections += 1;
            held.refused += refused;
            held.bytes += bytes;
            held.last_seen_ns = now;
            return;
        }
    }
    take_slot(port_index, refused, bytes, now, cfg);
}

/// The coarse clock (`now_ns`), read once a tick on this CPU: the tick count is a load where
/// the clock is a helper call, and the coarse clock moves only at ticks anyway (first and last
/// seen are to the tick).
#[inline(always)]
fn tick_time() -> u64 {
    let Some(memo) = PG_TICK_TIME.get_ptr_mut(0) else { return now_ns() };
    let tick = jiffies();
    // SAFETY: this CPU's entry; nothing else writes it meanwhile.
    unsafe {
        let [read_in, time] = *memo;
        if read_in == tick && time != 0 {
            return time;
        }
        let now = now_ns();
        *memo = [tick, now];
        now
    }
}

/// The connection's `PortSourceKey` as three words: the source's network (IPv4: its /24 in
/// the mapped address; IPv6: cut to the policy's prefix), then port, protocol and prefix.
#[inline(always)]
fn source_key_words(port_index: u32, cfg: &Config) -> Option<[u64; 3]> {
    let packet = PG_PACKET.get_ptr(SCRATCH_XDP)?;
    // SAFETY: this CPU's slot, written by `judge` for this frame.
    let packet = unsafe { &*packet };
    let [hi, lo] = mem::addr_words(&packet.src);
    let (words, prefix_len) = if packet.is_v6 {
        let [mask_hi, mask_lo] = mem::addr_words(&cfg.v6_source_mask);
        ([hi & mask_hi, lo & mask_lo], cfg.v6_source_prefix as u8)
    } else {
        // The IPv4 address is the mapped address's last 4 bytes: clear the last.
        ([hi, lo & u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0])], PORT_SOURCE_V4_PREFIX)
    };
    let key = PortSourceKey {
        addr: [0; 16],
        port: (port_index & 0xffff) as u16,
        proto: if port_index < 65536 { PROTO_TCP } else { PROTO_UDP },
        prefix_len,
        _pad: 0,
    };
    Some([words[0], words[1], key.words()[2]])
}

/// This CPU's slot for the connection's network holds another network (or none): adds what
/// it held to `PG_PORT_SOURCES` and gives it to this one. A call of its own, off the common
/// path. Scalars only (the verifier loses track of pointers passed to a BPF-to-BPF call).
#[inline(never)]
fn take_slot(port_index: u32, refused: u64, bytes: u64, now: u64, cfg: &Config) {
    let Some(words) = source_key_words(port_index, cfg) else { return };
    let Some(slot) = PG_PORT_SOURCE_CACHE.get_ptr_mut(port_source_slot(words)) else { return };
    let Some(changes) = PG_PORT_SOURCE_FLUSHES.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot and change count; nothing else writes them meanwhile.
    unsafe {
        // Odd while the slot changes: a reader that sees it (or sees it move) reads again.
        *changes += 1;
        compiler_fence(Ordering::SeqCst);
        // A slot a reset zeroed under a hit may hold counts and no key: nothing to keep.
        if (*slot).source.connections != 0 && (*slot).key.proto != 0 {
            flush(&*slot);
        }
        *(slot as *mut [u64; 3]) = words;
        (*slot).source = PortSource { connections: 1, refused, bytes, first_seen_ns: now, last_seen_ns: now };
        compiler_fence(Ordering::SeqCst);
        *changes += 1;
    }
}

/// Adds a slot's counts to the shared table's entry for its key, or makes the entry.
#[inline(always)]
fn flush(held: &PortSourceSlot) {
    if let Some(entry) = PG_PORT_SOURCES.get_ptr_mut(&held.key) {
        merge(entry, &held.source);
        return;
    }
    if PG_PORT_SOURCES.insert(&held.key, &held.source, BPF_NOEXIST as u64).is_ok() {
        if let Some(meta) = PG_PORT_STATS_META.get_ptr_mut(0) {
            // Per-CPU: plain add.
            unsafe { (*meta).sources_added += 1 };
        }
    } else if let Some(entry) = PG_PORT_SOURCES.get_ptr_mut(&held.key) {
        // Another CPU made the entry in the meantime.
        merge(entry, &held.source);
    }
}

#[inline(always)]
fn merge(entry: *mut PortSource, held: &PortSource) {
    // SAFETY: a value of the table; shared by CPUs, hence the atomic adds. The times are
    // plain stores: two CPUs flushing the same network at once may leave either's.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*entry).connections, held.connections);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*entry).refused, held.refused);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*entry).bytes, held.bytes);
        if held.first_seen_ns < (*entry).first_seen_ns {
            (*entry).first_seen_ns = held.first_seen_ns;
        }
        if held.last_seen_ns > (*entry).last_seen_ns {
            (*entry).last_seen_ns = held.last_seen_ns;
        }
    }
}

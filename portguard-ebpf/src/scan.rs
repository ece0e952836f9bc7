//! Scan detection, in the packet path.
//!
//! A source is counted when it tries a port and fails: the port policy refuses it on ingress,
//! or the host refuses it (TCP RST, ICMP port unreachable) on egress for a flow the host had
//! not sent on. Clients that connect to open ports never fail, so hundreds of connections to
//! 443 count nothing. Sources are counted per protocol, IPv6 sources by their `ipv6_prefix`
//! network.
//!
//! The cost must not depend on how many sources attack or how hard one hammers:
//! - Admission: a source's first failure only writes one slot of a per-CPU table
//!   (`PG_SCAN_ADMIT`, keyed hash of the source); repeats on the same port change nothing. Only
//!   a second distinct port gives it shared state in `PG_SCAN` (both ports counted), so a
//!   spoofed flood, whose sources fail once each, never touches the shared table.
//! - Repeats: a source retrying the port it failed on changes nothing, and the last such
//!   attempt is remembered per CPU (`PG_LAST_REFUSAL`) with its admission slot's value; the
//!   same source, port and protocol again within `MEMO_JIFFIES` (under a second at any HZ),
//!   while the slot still holds that value, is answered without hashing or calling the detector.
//! - Shared state is written only when something changes: a new port in a window, a window
//!   rolling over, a report. A source hammering one port, or one already reported, only reads.
//! - Two tumbling windows: a short one (`threshold` ports in `window`) and a long one for slow
//!   scans (`slow_threshold` ports in `slow_window`). Each reports once per window.

use portguard_common::{
    Config,
    config::FLAG_SCAN_BLOCK,
    counters::{OBS_SCAN_BLOCKS, OBS_SCAN_SOURCES_ADMITTED, OBS_SCANS_DETECTED},
    events::{EVENT_FLAG_BLOCKING, EventKind, SAMPLE_PORTS, SCAN_KINDS, ScanKind},
    maps::{
        ALERTED_FAST, ALERTED_SLOW, CAUSE_SCAN, CAUSE_SLOW_SCAN, PROTO_UDP, RUNTIME_USER, SCAN_ADMIT_SLOTS,
        SCAN_COUNT_EXACT_BLOCK, SCAN_COUNT_EXACT_EVENT, SCAN_EXACT_PORTS, SCAN_PORT_BITS, ScanKey, ScanState,
    },
};

use crate::{
    blocks::{self, DROP_EVENT_INTERVAL_NS, REPORT},
    counters,
    events::{self, Subject},
    hash,
    maps::{PG_LAST_REFUSAL, PG_RUNTIME, PG_SCAN, PG_SCAN_ADMIT, PG_SCAN_TEMPLATE},
    mem,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG},
    time::{MEMO_JIFFIES, jiffies, now_ns},
    types::LastRefusal,
};

/// How a packet probes, from its flags (and, for SYNs, whether a full TCP stack sent it).
#[inline(always)]
pub fn kind_of(packet: &Packet) -> ScanKind {
    if packet.proto == PROTO_UDP {
        return ScanKind::Udp;
    }
    match packet.tcp_flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_PSH | TCP_ACK | TCP_URG) {
        // nmap -sS and similar send 1-option SYNs with tiny windows; connect() does not.
        TCP_SYN if packet.tcp_doff <= 6 && packet.tcp_window <= 4096 => ScanKind::Syn,
        TCP_SYN => ScanKind::Connect,
        TCP_FIN => ScanKind::Fin,
        0 => ScanKind::Null,
        f if f == TCP_FIN | TCP_PSH | TCP_URG => ScanKind::Xmas,
        TCP_ACK => ScanKind::Ack,
        _ => ScanKind::Other,
    }
}

/// `failed_attempt` result bits besides `REPORT`: a window's threshold was just crossed (the
/// caller then calls `report`, which says `BLOCKED_NOW` if it blocked the source). The cause
/// and the port set's bit count ride in bits 8-15 and 16-31.
pub const DETECTED: u32 = 8;
/// In the count `failed_attempt` passes on: the count is exact, not bits.
const COUNT_EXACT: u32 = 1 << 15;
pub const BLOCKED_NOW: u32 = 2;

// Admission slot layout (u64): fingerprint (32 bits) | first port (16) | second of the last
// drop event (14) | admitted | used.
const SLOT_USED: u64 = 1;
const SLOT_ADMITTED: u64 = 2;
const SLOT_SECOND_SHIFT: u32 = 2;
const SLOT_SECOND_MASK: u64 = 0x3fff << SLOT_SECOND_SHIFT;

/// Whether `packet` repeats the attempt this CPU's detector last found changing nothing, so
/// `failed_attempt` would answer 0 again (or a drop event, deferred to the next call that does
/// reach the detector, within a second). The flood's common case, checked before the call.
#[inline(always)]
pub fn repeats_last_refusal(packet: &Packet) -> bool {
    let Some(last) = PG_LAST_REFUSAL.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; XDP and TC egress do not interleave on one CPU.
    let last = unsafe { &*last };
    if last.src != packet.src_words() || last.port != packet.dport || last.proto != packet.proto {
        return false;
    }
    if jiffies().wrapping_sub(last.jiffies) >= MEMO_JIFFIES {
        return false;
    }
    let Some(table) = PG_SCAN_ADMIT.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's table; the mask keeps the index inside it.
    unsafe { (*table)[last.slot as usize & (SCAN_ADMIT_SLOTS as usize - 1)] == last.slot_value }
}

/// Remembers an attempt that changed nothing but its slot's second (see `repeats_last_refusal`).
#[inline(always)]
fn remember_repeat(subject: &Subject, slot: u32, slot_value: u64) {
    let Some(last) = PG_LAST_REFUSAL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let last = unsafe { &mut *last };
    *last = LastRefusal {
        src: mem::addr_words(subject.src),
        slot_value,
        jiffies: jiffies(),
        slot,
        port: subject.dport,
        proto: subject.proto,
        _pad: 0,
    };
}

/// One failed attempt by `subject.src` on `subject.dport` (the prober and the probed port).
///
/// A BPF-to-BPF call rather than inlined code: the verifier then joins its many inner paths at
/// the return instead of checking the caller's remaining code once per path.
#[inline(never)]
pub fn failed_attempt(cfg: &Config, subject: &Subject, kind: u8) -> u32 {
    let Some(runtime) = PG_RUNTIME.get(RUNTIME_USER) else {
        return REPORT;
    };
    let words = blocks::source_words(subject.src, subject.is_v6, cfg);
    let hash = hash::source(&runtime.scan_key, words, subject.proto);
    let Some(table) = PG_SCAN_ADMIT.get_ptr_mut(0) else {
        return REPORT;
    };
    let index = hash as u32 & (SCAN_ADMIT_SLOTS - 1);
    // SAFETY: this CPU's table; the mask keeps the index inside it.
    let slot = unsafe { &mut (*table)[index as usize] };
    let port = subject.dport;
    let fingerprint = hash & 0xffff_ffff_0000_0000;
    let seen = *slot;
    if seen & SLOT_USED == 0 || seen & 0xffff_ffff_0000_0000 != fingerprint {
        // First failure seen here: remember the port, keep no state. No clock read (the
        // spoofed flood's every packet comes here): the slot's second stays 0, so a repeat
        // within this second may send one more drop event, within the drop-event budget.
        *slot = fingerprint | ((port as u64) << 16) | SLOT_USED;
        return REPORT;
    }
    let now = now_ns();
    // About a second (2^30 ns), modulo 2^14: enough to tell "this second" from "before".
    let second = ((now >> 30) << SLOT_SECOND_SHIFT) & SLOT_SECOND_MASK;
    let first_port = (seen >> 16) as u16;
    if seen & SLOT_ADMITTED == 0 {
        if first_port == port {
            // The same port again (a flood, a retransmission): nothing to learn. A drop
            // event per second at most.
            if seen & SLOT_SECOND_MASK == second {
                remember_repeat(subject, index, seen);
                return 0;
            }
            let now_seen = (seen & !SLOT_SECOND_MASK) | second;
            *slot = now_seen;
            remember_repeat(subject, index, now_seen);
            return REPORT;
        }
        *slot = seen | SLOT_ADMITTED;
    }
    let admitted_now = seen & SLOT_ADMITTED == 0;
    let Some(key) = blocks::source_key(subject.src, subject.is_v6, subject.proto, cfg) else {
        return REPORT;
    };
    let Some(state) = state_of(key, now, admitted_now) else {
        return REPORT;
    };
    // SAFETY: a value of the shared map; a racing CPU may lose an update, never more.
    let state = unsafe { &mut *state };
    roll_windows(state, cfg, now);
    if admitted_now {
        add_port(state, cfg, &runtime.scan_key, first_port, kind);
        // The remembered port alone may cross the threshold (another CPU admitted the source
        // before this one did): reported there, at the threshold, not one port later.
        let outcome = detect(state, cfg);
        if outcome & DETECTED != 0 {
            return outcome;
        }
    }
    add_port(state, cfg, &runtime.scan_key, port, kind);
    let outcome = detect(state, cfg);
    if outcome & DETECTED != 0 {
        return outcome;
    }
    if now.wrapping_sub(state.last_drop_event_ns) >= DROP_EVENT_INTERVAL_NS {
        state.last_drop_event_ns = now;
        return outcome | REPORT;
    }
    outcome
}

/// The source's shared state; created (zeroed, windows starting now) when the source has just
/// been admitted, or when it was admitted before but its state has since been evicted.
#[inline(always)]
fn state_of(key: &ScanKey, now: u64, admitted_now: bool) -> Option<*mut ScanState> {
    if let Some(state) = PG_SCAN.get_ptr_mut(key) {
        return Some(state);
    }
    // Built in a per-CPU scratch slot: 184 bytes do not fit on the stack beside the parser.
    let fresh = PG_SCAN_TEMPLATE.get_ptr_mut(0)?;
    mem::zero_words(fresh as *mut u64, size_of::<ScanState>() / 8);
    unsafe {
        (*fresh).window_start_ns = now;
        (*fresh).slow_start_ns = now;
        PG_SCAN.insert(key, &*fresh, 0).ok()?;
    }
    if admitted_now {
        counters::add(OBS_SCAN_SOURCES_ADMITTED, 0);
    }
    PG_SCAN.get_ptr_mut(key)
}

/// Starts a new window (and with it a new port-to-bit mapping) when the current one is over.
#[inline(always)]
fn roll_windows(state: &mut ScanState, cfg: &Config, now: u64) {
    if now.wrapping_sub(state.window_start_ns) >= cfg.scan_window_ns {
        mem::zero_words(state.ports.as_mut_ptr(), 8);
        state.bits = 0;
        state.exact = 0;
        state.kinds = [0; SCAN_KINDS];
        state.alerted &= !ALERTED_FAST;
        state.window_start_ns = now;
    }
    if cfg.slow_threshold_bits != 0 && now.wrapping_sub(state.slow_start_ns) >= cfg.slow_window_ns {
        mem::zero_words(state.slow_ports.as_mut_ptr(), 8);
        state.slow_bits = 0;
        state.alerted &= !ALERTED_SLOW;
        state.slow_start_ns = now;
    }
}

/// Adds `port` to both windows' sets (and, while there is room, to the short window's exact
/// list); writes only what changes. A call of its own, so the verifier joins its paths at the
/// return instead of multiplying them with the caller's.
#[inline(never)]
fn add_port(state: &mut ScanState, cfg: &Config, key: &[u64; 2], port: u16, kind: u8) {
    let bit = hash::port_bit(key, state.window_start_ns, port, SCAN_PORT_BITS);
    let (word, mask) = ((bit >> 6) as usize & 7, 1u64 << (bit & 63));
    let mut new = state.ports[word] & mask == 0;
    if new {
        state.ports[word] |= mask;
        state.bits = state.bits.saturating_add(1);
    }
    let listed = state.exact as usize;
    if listed < SCAN_EXACT_PORTS {
        // A port whose bit was set by another one is new all the same.
        new = listed_before(state, port, listed as u32) == 0;
        if new {
            state.exact_ports[listed & (SCAN_EXACT_PORTS - 1)] = port;
            state.exact += 1;
        }
    }
    if new {
        // Kinds are 0-7; the mask keeps the index in bounds for the verifier too.
        let kind = kind as usize & (SCAN_KINDS - 1);
        state.kinds[kind] = state.kinds[kind].saturating_add(1);
    }
    if cfg.slow_threshold_bits != 0 {
        let bit = hash::port_bit(key, state.slow_start_ns, port, SCAN_PORT_BITS);
        let (word, mask) = ((bit >> 6) as usize & 7, 1u64 << (bit & 63));
        if state.slow_ports[word] & mask == 0 {
            state.slow_ports[word] |= mask;
            state.slow_bits = state.slow_bits.saturating_add(1);
        }
    }
}

/// Whether `port` is among the first `listed` exact ports (1) or not (0). A call of its own:
/// the search's exits join at the return.
#[inline(never)]
fn listed_before(state: &ScanState, port: u16, listed: u32) -> u32 {
    for i in 0..SCAN_EXACT_PORTS {
        if i as u32 >= listed {
            break;
        }
        if state.exact_ports[i] == port {
            return 1;
        }
    }
    0
}

/// Marks a window whose threshold was just crossed (once per window; a fast scan is not
/// reported again as a slow one) and says so (`DETECTED`, cause, bits) to the caller. A call
/// of its own: `failed_attempt` asks twice when it admits a source.
#[inline(never)]
fn detect(state: &mut ScanState, cfg: &Config) -> u32 {
    // Thresholds the exact list can hold are counted exactly; larger ones by the bits.
    let exact = cfg.scan_threshold_ports <= SCAN_EXACT_PORTS as u32;
    let crossed = if exact {
        state.exact as u32 >= cfg.scan_threshold_ports
    } else {
        state.bits as u32 >= cfg.scan_threshold_bits
    };
    let fast = state.alerted & ALERTED_FAST == 0 && crossed;
    let slow = !fast
        && cfg.slow_threshold_bits != 0
        && state.alerted & ALERTED_SLOW == 0
        && state.slow_bits as u32 >= cfg.slow_threshold_bits;
    if !fast && !slow {
        return 0;
    }
    state.alerted |= if fast { ALERTED_FAST | ALERTED_SLOW } else { ALERTED_SLOW };
    let (cause, count) = match (fast, exact) {
        (true, true) => (CAUSE_SCAN, state.exact as u32 | COUNT_EXACT),
        (true, false) => (CAUSE_SCAN, state.bits as u32),
        _ => (CAUSE_SLOW_SCAN, state.slow_bits as u32),
    };
    DETECTED | (cause as u32) << 8 | count << 16
}

/// Reports the scan `failed_attempt` detected, and blocks the source's network if the policy
/// says so (`BLOCKED_NOW`). A call of its own, made by the path that counted the attempt (not
/// from inside `failed_attempt`): the BPF stack is 512 bytes for a whole chain of calls.
#[inline(never)]
pub fn report(cfg: &Config, subject: &Subject, outcome: u32) -> u32 {
    let (cause, count) = ((outcome >> 8) as u8, (outcome >> 16) as u16);
    // Exact counts are marked for the reader; bit counts are estimated from.
    let (event_count, block_count) = if count & COUNT_EXACT as u16 != 0 {
        let ports = count & !(COUNT_EXACT as u16);
        (ports as u32 | SCAN_COUNT_EXACT_EVENT, ports | SCAN_COUNT_EXACT_BLOCK)
    } else {
        (count as u32, count)
    };
    let Some(key) = blocks::source_key(subject.src, subject.is_v6, subject.proto, cfg) else {
        return 0;
    };
    // SAFETY: read once for the report; a concurrent update only changes the sample shown.
    let Some(state) = (unsafe { PG_SCAN.get(key) }) else {
        return 0;
    };
    let prefix_len = blocks::source_prefix(subject.is_v6, cfg);
    counters::add(OBS_SCANS_DETECTED, 0);
    let dominant = dominant_kind(state);
    // Said in the event only if the block can be made: exempt sources are never blocked, and
    // this second's budget for scan blocks may be spent.
    let will_block =
        cfg.has(FLAG_SCAN_BLOCK) && !blocks::exempt(cfg, subject.src) && blocks::block_token_left(cause);
    let subject = Subject { src: &key.addr, ..*subject };
    let Some(details) = events::draft() else {
        return 0;
    };
    details.reason = cause;
    details.flags = if will_block { EVENT_FLAG_BLOCKING } else { 0 };
    details.scan_kind = dominant;
    details.count = event_count;
    details.samples = if state.exact as usize > SAMPLE_PORTS { SAMPLE_PORTS as u8 } else { state.exact };
    for i in 0..SAMPLE_PORTS {
        details.sample_ports[i] = state.exact_ports[i];
    }
    details.prefix_len = prefix_len;
    events::emit(EventKind::ScanDetected, &subject, details, cfg);
    if !will_block {
        return 0;
    }
    let now = now_ns();
    let expires_ns = now + cfg.scan_block_ns;
    if !blocks::block(&key.addr, prefix_len, now, expires_ns, cause, dominant, block_count, cfg) {
        return 0;
    }
    counters::add(OBS_SCAN_BLOCKS, 0);
    details.expires_ns = expires_ns;
    events::emit(EventKind::AutoBlocked, &subject, details, cfg);
    BLOCKED_NOW
}

/// The most frequent kind among the window's distinct ports; a call of its own so its 2^7
/// comparison paths end at the return.
#[inline(never)]
fn dominant_kind(state: &ScanState) -> u8 {
    let mut best = 0usize;
    for i in 1..SCAN_KINDS {
        if state.kinds[i] > state.kinds[best] {
            best = i;
        }
    }
    best as u8
}

//! Scan detection and automatic blocking, in the packet path.
//!
//! A source is counted when it tries a port and fails: the port policy refuses it on ingress,
//! or the host refuses it (TCP RST, ICMP port unreachable) on egress. Clients that connect to
//! open ports never fail, so hundreds of connections to 443 count nothing. A source that fails
//! on `scan_threshold` distinct ports of one protocol within one window is reported once per
//! window, and blocked right there if the policy says so.

use aya_ebpf::maps::lpm_trie::Key;
use portguard_common::{
    Config, Reason,
    config::{FLAG_HAS_NEVER_BLOCK, FLAG_SCAN_BLOCK},
    counters::{OBS_SCAN_BLOCKS, OBS_SCANS_DETECTED},
    events::{EventKind, SAMPLE_PORTS, SCAN_KINDS, ScanKind},
    maps::{AutoBlock, CAUSE_SCAN, ManualBlock, NET_KEY_FIXED_BITS, PROTO_UDP, SCAN_PORT_BITS, ScanState},
};

use crate::{
    blocklist, counters,
    events::{self, Details, Subject},
    flows::now_ns,
    maps::{PG_AUTO_BLOCK, PG_MANUAL, PG_RUNTIME, PG_SCAN, PG_SCAN_TEMPLATE},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG},
};

/// At most one drop event per source per second.
const DROP_EVENT_INTERVAL_NS: u64 = 1_000_000_000;

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

/// `failed_attempt` result bits: a drop event may be sent for this source now (per-source rate
/// limit); the source has just been blocked.
pub const REPORT: u32 = 1;
pub const BLOCKED_NOW: u32 = 2;

/// One failed attempt by `subject.src` on `subject.dport` (the prober and the probed port).
///
/// A BPF-to-BPF call rather than inlined code: the verifier then joins its many inner paths at
/// the return instead of checking the caller's remaining code once per path.
#[inline(never)]
pub fn failed_attempt(cfg: &Config, subject: &Subject, kind: u8) -> u32 {
    let (prober, port) = (subject.src, subject.dport);
    let now = now_ns();
    let Some(state) = state_of(prober, now) else {
        return REPORT;
    };
    let slot = if subject.proto == PROTO_UDP { 1 } else { 0 };
    let state = unsafe { &mut *state };
    if now.wrapping_sub(state.window_start_ns) >= cfg.scan_window_ns {
        reset(state, now);
    }
    // A multiplicative hash spreads sequential ports over the set.
    let bit = (port as u32).wrapping_mul(2_654_435_761) >> (32 - 9);
    let word = (slot * (SCAN_PORT_BITS / 64) + (bit >> 6)) as usize;
    let mask = 1u64 << (bit & 63);
    if word < state.ports.len() && state.ports[word] & mask == 0 {
        state.ports[word] |= mask;
        state.distinct[slot as usize] = state.distinct[slot as usize].saturating_add(1);
        let samples = state.samples as usize;
        if samples < SAMPLE_PORTS {
            state.sample_ports[samples] = port;
            state.samples += 1;
        }
    }
    let kind_slot = kind as usize;
    if kind_slot < SCAN_KINDS {
        state.kinds[kind_slot] = state.kinds[kind_slot].saturating_add(1);
    }

    let mut blocked = false;
    let distinct = state.distinct[slot as usize] as u32;
    if state.alerted == 0 && distinct >= cfg.scan_threshold {
        state.alerted = 1;
        counters::add(OBS_SCANS_DETECTED, 0);
        let dominant = dominant_kind(state);
        let will_block = cfg.has(FLAG_SCAN_BLOCK) && !exempt(cfg, prober);
        let mut details = Details {
            // Tells the reader whether a block follows.
            reason: if will_block { CAUSE_SCAN } else { 0 },
            scan_kind: dominant,
            count: distinct,
            samples: state.samples,
            sample_ports: state.sample_ports,
            ..Default::default()
        };
        events::emit(EventKind::ScanDetected, subject, &details);
        if will_block {
            let expires_ns = now + cfg.scan_block_ns;
            block(prober, now, expires_ns, CAUSE_SCAN, dominant, distinct as u16);
            counters::add(OBS_SCAN_BLOCKS, 0);
            details.expires_ns = expires_ns;
            events::emit(EventKind::AutoBlocked, subject, &details);
            blocked = true;
        }
    }
    let mut outcome = if blocked { BLOCKED_NOW } else { 0 };
    if now.wrapping_sub(state.last_drop_event_ns) >= DROP_EVENT_INTERVAL_NS {
        state.last_drop_event_ns = now;
        outcome |= REPORT;
    }
    outcome
}

/// The most frequent kind; a call of its own so its 2^7 comparison paths end at the return.
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

#[inline(always)]
fn reset(state: &mut ScanState, now: u64) {
    zero(state);
    state.window_start_ns = now;
}

/// Zeroes a `ScanState` word by word. Volatile stores, because LLVM would otherwise emit a
/// byte-wise `memset` loop that the verifier walks once per byte on every path.
#[inline(always)]
fn zero(state: *mut ScanState) {
    const WORDS: usize = core::mem::size_of::<ScanState>() / 8;
    let words = state as *mut u64;
    for i in 0..WORDS {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// The source's state, created (zeroed, window starting now) on first sight.
#[inline(always)]
fn state_of(src: &[u8; 16], now: u64) -> Option<*mut ScanState> {
    if let Some(state) = PG_SCAN.get_ptr_mut(src) {
        return Some(state);
    }
    // Built in a per-CPU scratch slot: 184 bytes do not fit on the stack beside the parser.
    let fresh = PG_SCAN_TEMPLATE.get_ptr_mut(0)?;
    zero(fresh);
    unsafe {
        (*fresh).window_start_ns = now;
        PG_SCAN.insert(src, &*fresh, 0).ok()?;
    }
    PG_SCAN.get_ptr_mut(src)
}

#[inline(always)]
pub fn exempt(cfg: &Config, src: &[u8; 16]) -> bool {
    cfg.has(FLAG_HAS_NEVER_BLOCK) && blocklist::never_block(src)
}

#[inline(always)]
pub fn block(src: &[u8; 16], now: u64, expires_ns: u64, cause: u8, kind: u8, port: u16) {
    let entry = AutoBlock { added_ns: now, expires_ns, cause, kind, port, _pad: [0; 4], last_event_ns: now };
    let _ = PG_AUTO_BLOCK.insert(src, &entry, 0);
}

/// `auto_blocked` result bits.
pub const IS_BLOCKED: u32 = 4;

/// Whether `src` is blocked automatically right now (`IS_BLOCKED`, with `REPORT` when a drop
/// event is due: one per source per second, so a blocked scanner cannot flood the reader).
/// An expired block is removed, and reported, on the way.
#[inline(always)]
pub fn auto_blocked(cfg: &Config, subject: &Subject) -> u32 {
    let Some(entry) = PG_AUTO_BLOCK.get_ptr_mut(subject.src) else {
        return 0;
    };
    let now = now_ns();
    let (expires_ns, cause) = unsafe { ((*entry).expires_ns, (*entry).cause) };
    if now < expires_ns {
        if exempt(cfg, subject.src) {
            return 0;
        }
        let last = unsafe { &mut (*entry).last_event_ns };
        if now.wrapping_sub(*last) >= DROP_EVENT_INTERVAL_NS {
            *last = now;
            return IS_BLOCKED | REPORT;
        }
        return IS_BLOCKED;
    }
    if PG_AUTO_BLOCK.remove(subject.src).is_ok() {
        counters::add(portguard_common::counters::OBS_BLOCKS_EXPIRED, 0);
        let details = Details { reason: cause, expires_ns, ..Default::default() };
        events::emit(EventKind::BlockExpired, subject, &details);
    }
    0
}

/// Whether `src` is blocked by hand right now (`IS_BLOCKED`, with `REPORT` when a drop event
/// is due). Expired entries stop matching here; the loader removes them.
#[inline(always)]
pub fn manually_blocked(cfg: &Config, subject: &Subject) -> u32 {
    let none = PG_RUNTIME.get(0).map(|r| r.manual_blocks == 0).unwrap_or(true);
    if none {
        return 0;
    }
    let Some(entry) = PG_MANUAL.get(Key::new(NET_KEY_FIXED_BITS + 128, blocklist::net_key(subject.src)))
    else {
        return 0;
    };
    let entry = entry as *const ManualBlock as *mut ManualBlock;
    let now = now_ns();
    let expires_ns = unsafe { (*entry).expires_ns };
    if (expires_ns != 0 && now >= expires_ns) || exempt(cfg, subject.src) {
        return 0;
    }
    // One drop event per second per blocked network, written into the map's own value.
    let last = unsafe { &mut (*entry).last_event_ns };
    if now.wrapping_sub(*last) >= DROP_EVENT_INTERVAL_NS {
        *last = now;
        return IS_BLOCKED | REPORT;
    }
    IS_BLOCKED
}

/// The reason a packet gets when its sender has just been blocked.
pub const BLOCKED: Reason = Reason::DropAutoBlock;

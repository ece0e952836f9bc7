//! Sources blocked by hand (`PG_MANUAL`, written by userspace) and automatically
//! (`PG_AUTO_BLOCK`, written here by scan detection and trap ports), and the network an
//! automatic block covers: an IPv4 source itself, an IPv6 source cut to `ipv6_prefix`.

use core::intrinsics::{AtomicOrdering, atomic_or};

use aya_ebpf::maps::lpm_trie::Key;
use portguard_common::{
    Config,
    config::{FLAG_HAS_NEVER_BLOCK, FLAG_NEVER_BLOCK_INSIDE_V6_NET},
    counters::{OBS_BLOCKS_EXPIRED, OBS_BLOCKS_NOT_ADMITTED},
    events::EventKind,
    maps::{
        AutoBlock, CAUSE_TRAP, ManualBlock, NET_KEY_FIXED_BITS, RUNTIME_KERNEL, RUNTIME_USER, ScanKey,
        auto_filter_half, auto_filter_probe, auto_filter_shrink, auto_filter_slot,
    },
};

use crate::{
    blocklist, counters,
    events::{self, Details, Subject},
    evidence,
    maps::{
        PG_AUTO_BLOCK, PG_AUTO_FILTER, PG_EVENT_BUDGET, PG_LAST_AUTO_BLOCK, PG_MANUAL, PG_RUNTIME,
        PG_SOURCE_KEY,
    },
    mem,
    time::{MEMO_JIFFIES, jiffies, now_ns},
    types::{LastAutoBlock, VERDICT_EVIDENCE, VERDICT_REPORT},
};

/// At most one drop event per blocked source (or network) per second.
pub const DROP_EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// Result bits of the block checks: the source is blocked; a drop event is due; the packet is
/// evidence (the last two are the verdict's `report` bits).
pub const IS_BLOCKED: u32 = 4;
pub const REPORT: u32 = VERDICT_REPORT as u32;
pub const EVIDENCE: u32 = VERDICT_EVIDENCE as u32;

/// The network a source is counted and blocked as (an IPv4 source itself, an IPv6 source cut
/// to `ipv6_prefix`), with `proto`, built in this CPU's scratch slot: map memory, so it costs
/// no stack, and aligned, so it hashes as two words. Valid until the next call on this CPU.
#[inline(always)]
pub fn source_key(src: &[u8; 16], is_v6: bool, proto: u8, cfg: &Config) -> Option<&'static ScanKey> {
    let key = PG_SOURCE_KEY.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; XDP and TC egress do not interleave on one CPU.
    let key = unsafe { &mut *key };
    // SAFETY: `ScanKey` is 8-aligned and starts with the address.
    unsafe { *(key.addr.as_mut_ptr() as *mut [u64; 2]) = source_words(src, is_v6, cfg) };
    key.proto = proto;
    Some(key)
}

/// The address words (`mem::addr_words`) of the network `source_key` makes of a source, in
/// registers: for hashing a source without writing its key anywhere.
#[inline(always)]
pub fn source_words(src: &[u8; 16], is_v6: bool, cfg: &Config) -> [u64; 2] {
    let [hi, lo] = mem::addr_words(src);
    if is_v6 {
        let [mask_hi, mask_lo] = mem::addr_words(&cfg.v6_source_mask);
        [hi & mask_hi, lo & mask_lo]
    } else {
        [hi, lo]
    }
}

/// The prefix length of the network `source_key` makes of a source.
#[inline(always)]
pub fn source_prefix(is_v6: bool, cfg: &Config) -> u8 {
    if is_v6 { cfg.v6_source_prefix as u8 } else { 32 }
}

/// `never_block` networks are exempt from every blocklist and automatic block.
#[inline(always)]
pub fn exempt(cfg: &Config, src: &[u8; 16]) -> bool {
    cfg.has(FLAG_HAS_NEVER_BLOCK) && blocklist::never_block(src)
}

/// Whether the packet path has added automatic blocks that may still be in the table.
#[inline(always)]
pub fn any_automatic() -> bool {
    PG_RUNTIME.get(RUNTIME_KERNEL).is_some_and(|r| r.auto_blocks != 0)
}

/// Whether `subject.src` is blocked automatically right now (`IS_BLOCKED`, with `REPORT`
/// when a drop event is due, `EVIDENCE` when the packet is one the block still copies). An
/// expired block is removed, and reported, on the way.
///
/// A blocked source's flood is answered from this CPU's memo of the last blocked source
/// (`PG_LAST_AUTO_BLOCK`) for `MEMO_JIFFIES`: no filter, table lookup or clock read. The memo
/// is made only for a block with more than a second left whose evidence is spent, and ends at
/// once when userspace lifts automatic blocks (`Runtime::auto_blocks_lifted`); the lookup it
/// skips runs again within a second, for the drop event due each second.
#[inline(always)]
pub fn auto_blocked(cfg: &Config, subject: &Subject) -> u32 {
    let lifted = PG_RUNTIME.get(RUNTIME_USER).map_or(0, |r| r.auto_blocks_lifted);
    let src = mem::addr_words(subject.src);
    if let Some(last) = PG_LAST_AUTO_BLOCK.get_ptr(0) {
        // SAFETY: this CPU's slot; XDP and TC egress do not interleave on one CPU.
        let last = unsafe { &*last };
        if last.src == src && last.lifted == lifted && jiffies().wrapping_sub(last.jiffies) < MEMO_JIFFIES {
            return IS_BLOCKED;
        }
    }
    let Some(key) = source_key(subject.src, subject.is_v6, 0, cfg) else {
        return 0;
    };
    // The filter first: most sources (all forged ones) are not blocked, and its bit is
    // cheaper than the hash lookup.
    if !maybe_auto_blocked(&key.addr) {
        return 0;
    }
    let Some(entry) = PG_AUTO_BLOCK.get_ptr_mut(&key.addr) else {
        return 0;
    };
    let now = now_ns();
    let (expires_ns, cause) = unsafe { ((*entry).expires_ns, (*entry).cause) };
    if now < expires_ns {
        // The block was set for a source outside `never_block`, and a reload removes blocks a
        // new `never_block` covers; only an IPv6 network wider than a `never_block` entry can
        // still hold exempt sources.
        if subject.is_v6 && cfg.has(FLAG_NEVER_BLOCK_INSIDE_V6_NET) && exempt(cfg, subject.src) {
            return 0;
        }
        let evidence = if evidence::take(entry, &key.addr, now, cfg) { EVIDENCE } else { 0 };
        if evidence == 0 && expires_ns - now > DROP_EVENT_INTERVAL_NS {
            remember_auto_block(src, lifted);
        }
        let last = unsafe { &mut (*entry).last_event_ns };
        if now.wrapping_sub(*last) >= DROP_EVENT_INTERVAL_NS {
            *last = now;
            return IS_BLOCKED | REPORT | evidence;
        }
        return IS_BLOCKED | evidence;
    }
    if PG_AUTO_BLOCK.remove(&key.addr).is_ok() {
        counters::add(OBS_BLOCKS_EXPIRED, 0);
        let details = Details {
            reason: cause,
            expires_ns,
            prefix_len: source_prefix(subject.is_v6, cfg),
            ..Default::default()
        };
        let subject = Subject { src: &key.addr, ..*subject };
        events::emit(EventKind::BlockExpired, &subject, &details, cfg);
    }
    0
}

/// Remembers a source found blocked (see `auto_blocked`).
#[inline(always)]
fn remember_auto_block(src: [u64; 2], lifted: u32) {
    if let Some(last) = PG_LAST_AUTO_BLOCK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *last = LastAutoBlock { src, jiffies: jiffies(), lifted, _pad: 0 } };
    }
}

/// Whether the filter has both bits of `net` (a `source_key` address) in the half consulted now.
#[inline(always)]
fn maybe_auto_blocked(net: &[u8; 16]) -> bool {
    let header = PG_AUTO_FILTER.get(0).copied().unwrap_or(0);
    let half = auto_filter_half(header);
    let (word, mask) = auto_filter_probe(mem::addr_words(net), auto_filter_shrink(header, half));
    PG_AUTO_FILTER.get(auto_filter_slot(half, word)).is_none_or(|bits| bits & mask == mask)
}

/// Sets `net`'s filter bits in both halves (after its block is in the table; see
/// `MAP_AUTO_FILTER`). Atomic: CPUs blocking networks whose bits share a word must not lose
/// one another's bits.
#[inline(always)]
fn mark_auto_blocked(net: &[u8; 16]) {
    let header = PG_AUTO_FILTER.get(0).copied().unwrap_or(0);
    let words = mem::addr_words(net);
    for half in 0..2 {
        let (word, mask) = auto_filter_probe(words, auto_filter_shrink(header, half));
        if let Some(bits) = PG_AUTO_FILTER.get_ptr_mut(auto_filter_slot(half, word)) {
            // SAFETY: a word of the map; BPF's atomic OR.
            unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(bits, mask) };
        }
    }
}

/// Whether this CPU may still add an automatic block for `cause` this second.
#[inline(always)]
pub fn block_token_left(cause: u8) -> bool {
    PG_EVENT_BUDGET.get(0).is_some_and(|budget| {
        if cause == CAUSE_TRAP { budget.trap_block_tokens != 0 } else { budget.scan_block_tokens != 0 }
    })
}

/// Blocks `net` (a `source_key` address) until `expires_ns`, if this CPU's share of
/// `new_blocks_per_second` for `cause` allows (otherwise counts the block as not admitted and
/// returns false): a flood of forged sources cannot fill the table and push real blocks out.
/// The packet being judged is the block's first evidence (`evidence::start`).
#[inline(always)]
pub fn block(
    net: &[u8; 16],
    prefix_len: u8,
    now: u64,
    expires_ns: u64,
    cause: u8,
    kind: u8,
    port: u16,
    cfg: &Config,
) -> bool {
    let Some(budget) = PG_EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // Trap hits and scans spend apart (see `EventBudget`).
    let tokens = unsafe {
        if cause == CAUSE_TRAP { &mut (*budget).trap_block_tokens } else { &mut (*budget).scan_block_tokens }
    };
    if *tokens == 0 {
        counters::add(OBS_BLOCKS_NOT_ADMITTED, 0);
        return false;
    }
    *tokens -= 1;
    let entry = AutoBlock {
        added_ns: now,
        expires_ns,
        cause,
        kind,
        port,
        prefix_len,
        evidence_left: evidence::start(net, prefix_len, expires_ns, cfg),
        _pad: [0; 2],
        last_event_ns: now,
    };
    if PG_AUTO_BLOCK.insert(net, &entry, 0).is_err() {
        return false;
    }
    mark_auto_blocked(net);
    // After the insert, so the loader (which clears the flag only while the table is empty,
    // then looks again) never leaves a block unconsulted.
    if let Some(runtime) = PG_RUNTIME.get_ptr_mut(RUNTIME_KERNEL) {
        unsafe {
            if (*runtime).auto_blocks == 0 {
                (*runtime).auto_blocks = 1;
            }
        }
    }
    true
}

/// Whether `src` is blocked by hand right now (`IS_BLOCKED`, with `REPORT` when a drop event
/// is due). Expired entries stop matching here; the loader removes them.
#[inline(always)]
pub fn manually_blocked(cfg: &Config, subject: &Subject) -> u32 {
    let none = PG_RUNTIME.get(RUNTIME_USER).is_none_or(|r| r.manual_blocks == 0);
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

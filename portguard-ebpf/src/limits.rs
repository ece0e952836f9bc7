//! Per-source limits of new connections on the rules that carry one (`limit = { ... }` on an
//! `[[allow]]` rule): a generic cell rate algorithm per (source network, rule), one timestamp
//! of state in a slot of `PG_LIMITS` that a keyed hash picks. Only ports flagged
//! `PORT_FLAG_LIMITED` come here.

use portguard_common::{
    Config,
    config::FLAG_BRUTE_FORCE,
    counters::OBS_LIMIT_BLOCKS,
    events::EventKind,
    maps::{
        CAUSE_CONNECTION_LIMIT, CAUSE_RATE_LIMIT, CAUSE_RECIDIVE, LimitState, Offender, RUNTIME_USER,
        limit_owner,
    },
};

use crate::{
    blocks, counters,
    events::{self, Subject},
    hash,
    maps::{PG_LIMITS, PG_OFFENDERS, PG_RULE_LIMITED, PG_RULE_LIMITS, PG_RUNTIME},
    parse::Packet,
    time::now_ns,
};

/// `over_rate`'s answers: the attempt may go on; it is refused; it is refused and reported
/// (a `limited` event: no drop event for it); it is refused and its source was blocked for it
/// (`[brute_force]`, reported too).
pub const ADMITTED: u32 = 0;
pub const REFUSED: u32 = 1;
pub const REFUSED_REPORTED: u32 = 2;
pub const BLOCKED_NOW: u32 = 3;

/// The window refusals are counted in (for the `limited` event) without `[brute_force]`.
const DEFAULT_WINDOW_NS: u64 = 60_000_000_000;

/// Whether a new connection (TCP SYN) or datagram from `packet.src` to a port that rule
/// `rule` opens is over the rule's per-source rate. An admitted attempt spends from the
/// source's budget; a refused one does not (so a source that keeps trying is refused only
/// for what it sends beyond the rate). `never_block` sources are never refused; a refusal is
/// counted for the rule (as "would limit" in monitor mode: the verdict decides).
#[inline(always)]
pub fn over_rate(packet: &Packet, subject: &Subject, rule: u16, cfg: &Config) -> u32 {
    let Some(limit) = PG_RULE_LIMITS.get(u32::from(rule)) else {
        return ADMITTED;
    };
    if limit.interval_ns == 0 {
        return ADMITTED;
    }
    let Some(Budget { state, source, owner }) = budget(packet, rule, cfg) else {
        return ADMITTED;
    };
    let now = now_ns();
    // SAFETY: a slot of the map; CPUs may race on it (see below).
    unsafe {
        if (*state).source != source || (*state).owner != owner {
            // A source new to this rule (or whose slot another took over): a full burst, less
            // this attempt.
            let exempt = blocks::exempt(cfg, subject.src) as u32;
            *state =
                LimitState { source, owner, tat_ns: now + limit.interval_ns, exempt, ..Default::default() };
            return ADMITTED;
        }
    }
    // CPUs may race on one source's timestamp: at worst one attempt too many is admitted,
    // never one too few; two sources racing for one slot each start with a full burst.
    let tat = unsafe { (*state).tat_ns };
    let start = if tat > now { tat } else { now };
    if start - now <= limit.tolerance_ns {
        unsafe { (*state).tat_ns = start + limit.interval_ns };
        return ADMITTED;
    }
    // From the slot: a flood's source is refused without a trie lookup per packet.
    if unsafe { (*state).exempt } != 0 {
        return ADMITTED;
    }
    if let Some(count) = PG_RULE_LIMITED.get_ptr_mut(limit.slot) {
        // Per-CPU: a plain add.
        unsafe { *count += 1 };
    }
    refused(subject, rule, state, CAUSE_RATE_LIMIT, cfg)
}

/// A SYN the rule's cap of connections refused (`conns::at_cap` decided it and counted it):
/// counted in the source's window on the rule like a rate refusal (the budget's slot, taken
/// with a full rate budget if another source held it), and reported and escalated alike.
#[inline(always)]
pub fn cap_refused(packet: &Packet, subject: &Subject, rule: u16, cfg: &Config) -> u32 {
    let Some(Budget { state, source, owner }) = budget(packet, rule, cfg) else {
        return REFUSED;
    };
    // SAFETY: a slot of the map (see `over_rate`).
    unsafe {
        if (*state).source != source || (*state).owner != owner {
            // `conns::at_cap` refused the attempt: the source is not exempt.
            *state = LimitState { source, owner, ..Default::default() };
        }
    }
    refused(subject, rule, state, CAUSE_CONNECTION_LIMIT, cfg)
}

/// The slot of `PG_LIMITS` that (source network, rule) hashes to, with who should own it.
struct Budget {
    state: *mut LimitState,
    source: [u64; 2],
    owner: u32,
}

#[inline(always)]
fn budget(packet: &Packet, rule: u16, cfg: &Config) -> Option<Budget> {
    let runtime = PG_RUNTIME.get(RUNTIME_USER)?;
    let source = blocks::source_words(&packet.src, packet.is_v6, cfg);
    let owner = limit_owner(rule, cfg.generation);
    let slot = hash::limit(&runtime.scan_key, source, owner) as u32 & cfg.limit_slot_mask;
    let state = PG_LIMITS.get_ptr_mut(slot)?;
    Some(Budget { state, source, owner })
}

/// An attempt a limit refused (`cause`: which one), counted in the source's window on the
/// rule; the window's first refusal is reported (`limited`), and with `[brute_force]` its
/// `after`-th blocks the source. A call of its own: the limited path's event and block code
/// stays out of the admitted path.
#[inline(never)]
fn refused(subject: &Subject, rule: u16, state: *mut LimitState, cause: u8, cfg: &Config) -> u32 {
    let now = now_ns();
    // SAFETY: a value of the map; CPUs racing on one source's window may lose a count.
    let state = unsafe { &mut *state };
    let window = if cfg.has(FLAG_BRUTE_FORCE) { cfg.brute_force_window_ns } else { DEFAULT_WINDOW_NS };
    let new_window = now.wrapping_sub(state.window_start_ns) >= window;
    if new_window {
        state.window_start_ns = now;
        state.refused = 0;
    }
    // Only `[brute_force]` needs the count. Without it a flooding source's slot is written
    // once a window, not once a packet: two CPUs writing one cache line pass it back and forth.
    if cfg.has(FLAG_BRUTE_FORCE) {
        state.refused += 1;
        if state.refused >= cfg.brute_force_after && escalate(subject, cause, state.refused, now, cfg) {
            state.refused = 0;
            return BLOCKED_NOW;
        }
    }
    if new_window && events::drop_event_allowed() {
        if let Some(details) = events::draft() {
            details.reason = cause;
            details.count = u32::from(rule);
            events::emit(EventKind::Limited, subject, details, cfg);
            return REFUSED_REPORTED;
        }
    }
    REFUSED
}

/// Blocks the source of a limited attempt for `[brute_force] block_for`, doubled for each
/// block in a row, each within `recidive_within` of the end of the one before, up to
/// `max_block_for`; says so with an `auto_blocked` event whose cause is `cause`, or
/// `recidive` for a repeat. False when this second's block budget is spent.
#[inline(always)]
fn escalate(subject: &Subject, cause: u8, refused: u32, now: u64, cfg: &Config) -> bool {
    let Some(key) = blocks::source_key(subject.src, subject.is_v6, 0, cfg) else {
        return false;
    };
    // SAFETY: a copy is read; an LRU entry may be replaced meanwhile, which only shortens a
    // block.
    let before = unsafe { PG_OFFENDERS.get(&key.addr).copied() };
    let in_a_row = match before {
        Some(before) if now < before.last_expires_ns.saturating_add(cfg.recidive_ns) => before.blocks + 1,
        _ => 1,
    };
    let mut block_ns = cfg.brute_force_block_ns;
    let mut doublings = 1;
    // Bounded for the verifier; 2^31 times any length is past every cap.
    while doublings < in_a_row && doublings < 32 && block_ns < cfg.brute_force_max_block_ns {
        block_ns = block_ns.saturating_mul(2);
        doublings += 1;
    }
    if block_ns > cfg.brute_force_max_block_ns {
        block_ns = cfg.brute_force_max_block_ns;
    }
    let block_cause = if in_a_row > 1 { CAUSE_RECIDIVE } else { cause };
    let prefix_len = blocks::source_prefix(subject.is_v6, cfg);
    let expires_ns = now + block_ns;
    if !blocks::block(&key.addr, prefix_len, now, expires_ns, block_cause, subject.proto, subject.dport, cfg)
    {
        return false;
    }
    let offender = Offender { last_expires_ns: expires_ns, blocks: in_a_row, prefix_len, _pad: [0; 3] };
    let _ = PG_OFFENDERS.insert(&key.addr, &offender, 0);
    counters::add(OBS_LIMIT_BLOCKS, 0);
    if let Some(details) = events::draft() {
        details.reason = block_cause;
        details.scan_kind = cause;
        details.count = refused;
        details.expires_ns = expires_ns;
        details.prefix_len = prefix_len;
        events::emit(EventKind::AutoBlocked, &Subject { src: &key.addr, ..*subject }, details, cfg);
    }
    true
}

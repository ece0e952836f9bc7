//! Per-source limits of new connections on the rules that carry one (`limit = { ... }` on an
//! `[[allow]]` rule): a generic cell rate algorithm per (source network, rule), one timestamp
//! of state in `PG_LIMITS`. Only ports flagged `PORT_FLAG_LIMITED` come here.

use portguard_common::{
    Config,
    maps::{LimitKey, LimitState, RuleLimit},
};

use crate::{
    blocks,
    maps::{PG_LIMIT_KEY, PG_LIMITS, PG_RULE_LIMITED, PG_RULE_LIMITS},
    mem,
    parse::Packet,
    time::now_ns,
};

/// Whether a new connection (TCP SYN) or datagram from `packet.src` to a port that rule
/// `rule` opens is over the rule's per-source rate. An admitted attempt spends from the
/// source's budget; a refused one does not (so a source that keeps trying is refused only
/// for what it sends beyond the rate). `never_block` sources are never refused; a refusal is
/// counted for the rule (as "would limit" in monitor mode: the verdict decides).
#[inline(always)]
pub fn over_rate(packet: &Packet, rule: u16, cfg: &Config) -> bool {
    let Some(limit) = PG_RULE_LIMITS.get(u32::from(rule)) else {
        return false;
    };
    if limit.interval_ns == 0 {
        return false;
    }
    let Some(key) = limit_key(packet, rule, cfg) else {
        return false;
    };
    let now = now_ns();
    let Some(state) = PG_LIMITS.get_ptr_mut(key) else {
        // A source new to this rule (or forgotten by the LRU): a full burst, less this attempt.
        let _ = PG_LIMITS.insert(key, &LimitState { tat_ns: now + limit.interval_ns }, 0);
        return false;
    };
    // SAFETY: a value of the map. CPUs may race on one source's timestamp: at worst one
    // attempt too many is admitted, never one too few.
    let tat = unsafe { (*state).tat_ns };
    let start = if tat > now { tat } else { now };
    if start - now <= limit.tolerance_ns {
        unsafe { (*state).tat_ns = start + limit.interval_ns };
        return false;
    }
    refused(packet, limit, cfg)
}

/// An attempt over the rate: refused unless the source is exempt, counted for its rule.
#[inline(always)]
fn refused(packet: &Packet, limit: &RuleLimit, cfg: &Config) -> bool {
    if blocks::exempt(cfg, &packet.src) {
        return false;
    }
    if let Some(count) = PG_RULE_LIMITED.get_ptr_mut(limit.slot) {
        // Per-CPU: a plain add.
        unsafe { *count += 1 };
    }
    true
}

/// The key of `packet`'s source on `rule`, built in this CPU's scratch slot (map memory: no
/// stack, and aligned, so it is written as whole words).
#[inline(always)]
fn limit_key(packet: &Packet, rule: u16, cfg: &Config) -> Option<&'static LimitKey> {
    let key = PG_LIMIT_KEY.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; nothing else uses it while the program runs.
    let key = unsafe { &mut *key };
    let [hi, lo] = packet.src_words();
    let words = if packet.is_v6 {
        let [mask_hi, mask_lo] = mem::addr_words(&cfg.v6_source_mask);
        [hi & mask_hi, lo & mask_lo]
    } else {
        [hi, lo]
    };
    // SAFETY: `LimitKey` is 8-aligned and starts with the address.
    unsafe { *(key.addr.as_mut_ptr() as *mut [u64; 2]) = words };
    key.rule = rule;
    key._pad = 0;
    key.generation = cfg.generation as u32;
    Some(key)
}

//! Source blocklist lookups, designed so their cost hardly grows with the list and the list
//! takes little memory:
//! - IPv4: one array read of the source's /16 (blocked whole, nothing listed in it, or where
//!   its ranges are), then a binary search over that /16's sorted ranges: at most 16 steps,
//!   about log2 of what is listed in the /16, and 4 bytes per range however long it is.
//! - IPv6: per distinct prefix length in the policy, longest first, a bit of a pre-filter,
//!   and a hash lookup only when that bit is set.

use aya_ebpf::maps::lpm_trie::Key;
use portguard_common::{
    Config,
    config::{FLAG_HAS_BLOCKLIST4, FLAG_HAS_BLOCKLIST6, MAX_BL6_PREFIX_LENS},
    maps::{BL4_WHOLE, Bl6Key, NET_KEY_FIXED_BITS, NetKey, bl6_filter_slot, family_of},
};

use crate::{
    maps::{PG_BL4_INDEX, PG_BL4_RANGES, PG_BL6, PG_BL6_FILTER, PG_NEVER_BLOCK},
    parse::Packet,
};

#[inline(always)]
pub fn in_policy_blocklist(packet: &Packet, cfg: &Config) -> bool {
    if packet.is_v6 {
        cfg.has(FLAG_HAS_BLOCKLIST6) && v6_blocked(packet, cfg)
    } else {
        cfg.has(FLAG_HAS_BLOCKLIST4) && v4_blocked(packet.src4)
    }
}

#[inline(always)]
fn v4_blocked(src: u32) -> bool {
    let entry = PG_BL4_INDEX.get(src >> 16).copied().unwrap_or(0);
    if entry == 0 {
        return false;
    }
    entry & BL4_WHOLE != 0 || in_ranges(entry, src & 0xffff) != 0
}

/// Whether `low` (the address's low 16 bits) lies in one of the ranges `entry` points at: the
/// last range starting at or below it, found by halving. A call of its own, so the verifier
/// joins the search's paths at the return.
#[inline(never)]
fn in_ranges(entry: u64, low: u32) -> u32 {
    let (mut base, mut count) = (entry as u32, ((entry >> 32) as u32) & 0x1_ffff);
    // 2^16 ranges at most in a /16 (32768 in fact): 16 halvings find the one.
    for _ in 0..16 {
        if count <= 1 {
            break;
        }
        let half = count / 2;
        match PG_BL4_RANGES.get(base + half) {
            Some(range) if *range >> 16 <= low => base += half,
            Some(_) => {}
            None => return 0,
        }
        count -= half;
    }
    match PG_BL4_RANGES.get(base) {
        Some(range) => (*range >> 16 <= low && low <= *range & 0xffff) as u32,
        None => 0,
    }
}

/// For each listed prefix length, longest first: the filter bit for the source cut to that
/// length, and only when it is set, the hash lookup.
#[inline(always)]
fn v6_blocked(packet: &Packet, cfg: &Config) -> bool {
    let [hi, lo] = packet.src_words();
    for i in 0..MAX_BL6_PREFIX_LENS {
        if i as u32 >= cfg.bl6_prefix_count {
            break;
        }
        let [mask_hi, mask_lo] = cfg.bl6_masks[i];
        let words = [hi & mask_hi, lo & mask_lo];
        let prefix_len = cfg.bl6_prefix_lens[i] as u32;
        let (word, bit) = bl6_filter_slot(words, prefix_len, cfg.bl6_filter_shift);
        if PG_BL6_FILTER.get(word).is_none_or(|bits| bits & bit == 0) {
            continue;
        }
        let key = Bl6Key::from_words(words, prefix_len);
        if unsafe { PG_BL6.get(&key) }.is_some() {
            return true;
        }
    }
    false
}

/// `never_block` networks: exempt from every blocklist and automatic block.
#[inline(always)]
pub fn never_block(src: &[u8; 16]) -> bool {
    PG_NEVER_BLOCK.get(Key::new(NET_KEY_FIXED_BITS + 128, net_key(src))).is_some()
}

#[inline(always)]
pub fn net_key(addr: &[u8; 16]) -> NetKey {
    NetKey { family: family_of(addr), addr: *addr }
}

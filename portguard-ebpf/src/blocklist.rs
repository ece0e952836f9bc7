//! Source blocklist lookups, designed so their cost hardly grows with the list and the list
//! takes little memory:
//! - IPv4: one array read of the source's /16 (blocked whole, nothing listed in it, or where
//!   its ranges are), then a binary search over that /16's sorted ranges: at most 16 steps,
//!   about log2 of what is listed in the /16, and 4 bytes per range however long it is.
//! - IPv6: one hash lookup per distinct prefix length in the policy, longest first.

use aya_ebpf::maps::lpm_trie::Key;
use portguard_common::{
    Config,
    config::{FLAG_HAS_BLOCKLIST4, FLAG_HAS_BLOCKLIST6, MAX_BL6_PREFIX_LENS},
    maps::{BL4_WHOLE, Bl6Key, NET_KEY_FIXED_BITS, NetKey, family_of, prefix_masks},
};

use crate::{
    maps::{PG_BL4_INDEX, PG_BL4_RANGES, PG_BL6, PG_NEVER_BLOCK},
    parse::Packet,
};

#[inline(always)]
pub fn in_policy_blocklist(packet: &Packet, cfg: &Config) -> bool {
    if packet.is_v6 {
        cfg.has(FLAG_HAS_BLOCKLIST6) && v6_blocked(&packet.src, cfg)
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

#[inline(always)]
fn v6_blocked(src: &[u8; 16], cfg: &Config) -> bool {
    let hi = u64::from_be_bytes([src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7]]);
    let lo = u64::from_be_bytes([src[8], src[9], src[10], src[11], src[12], src[13], src[14], src[15]]);
    for i in 0..MAX_BL6_PREFIX_LENS {
        if i as u32 >= cfg.bl6_prefix_count {
            break;
        }
        let len = cfg.bl6_prefix_lens[i] as u32;
        let (hi_mask, lo_mask) = prefix_masks(len);
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&(hi & hi_mask).to_be_bytes());
        addr[8..].copy_from_slice(&(lo & lo_mask).to_be_bytes());
        let key = Bl6Key { prefix_len: len as u8, _pad: [0; 3], addr };
        if unsafe { PG_BL6.get(key) }.is_some() {
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

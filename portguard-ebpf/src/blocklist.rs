//! Source blocklist lookups, designed so their cost does not grow with the list:
//! - IPv4: one array read for prefixes of /16 and shorter (pre-expanded to /16 blocks), then
//!   one hash lookup of the source's /24, whose value is a 256-bit set of blocked last octets
//!   (prefixes /17 to /32 are pre-expanded into it). Two lookups whatever the list size.
//! - IPv6: one hash lookup per distinct prefix length in the policy, longest first.

use aya_ebpf::maps::lpm_trie::Key;
use portguard_common::{
    Config,
    config::{FLAG_HAS_BLOCKLIST4, FLAG_HAS_BLOCKLIST4_WIDE, FLAG_HAS_BLOCKLIST6, MAX_BL6_PREFIX_LENS},
    maps::{Bl6Key, NET_KEY_FIXED_BITS, NetKey, family_of, prefix_masks},
};

use crate::{
    maps::{PG_BL4, PG_BL4_WIDE, PG_BL6, PG_NEVER_BLOCK},
    parse::Packet,
};

#[inline(always)]
pub fn in_policy_blocklist(packet: &Packet, cfg: &Config) -> bool {
    if packet.is_v6 {
        cfg.has(FLAG_HAS_BLOCKLIST6) && v6_blocked(&packet.src, cfg)
    } else {
        cfg.has(FLAG_HAS_BLOCKLIST4) && v4_blocked(packet.src4, cfg)
    }
}

#[inline(always)]
fn v4_blocked(src: u32, cfg: &Config) -> bool {
    if cfg.has(FLAG_HAS_BLOCKLIST4_WIDE) && PG_BL4_WIDE.get(src >> 16).copied() == Some(1) {
        return true;
    }
    match unsafe { PG_BL4.get(src >> 8) } {
        Some(bits) => {
            let octet = (src & 0xff) as usize;
            (bits[octet >> 6] >> (octet & 63)) & 1 == 1
        }
        None => false,
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

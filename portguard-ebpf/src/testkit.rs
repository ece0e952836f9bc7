//! Test and benchmark fixtures, never attached by portguard itself:
//! - the lab sends 802.1Q and 802.1ad tagged frames over a veth on kernels without VLAN
//!   devices (CONFIG_VLAN_8021Q off), so the XDP program sees real tagged traffic and the host
//!   stack still gets it untagged;
//! - the benchmark's baseline (pass), floor (drop) and flood senders (live frames): IPv6 TCP
//!   SYNs from one source or from random sources in 2001:db8::/32.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::generated::{bpf_get_prandom_u32, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{classifier, map, xdp},
    maps::{LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};

/// Inner (802.1Q) and outer (802.1ad) VLAN ids to push; 0 = none. Set by the loader.
#[unsafe(no_mangle)]
static PG_TEST_VLAN_INNER: u16 = 0;
#[unsafe(no_mangle)]
static PG_TEST_VLAN_OUTER: u16 = 0;

/// Client egress: tag every frame.
#[classifier]
pub fn pg_test_tag(ctx: TcContext) -> i32 {
    let inner = unsafe { core::ptr::read_volatile(&PG_TEST_VLAN_INNER) };
    let outer = unsafe { core::ptr::read_volatile(&PG_TEST_VLAN_OUTER) };
    unsafe {
        if inner != 0 {
            bpf_skb_vlan_push(ctx.skb.skb, 0x8100u16.to_be(), inner);
        }
        if outer != 0 {
            bpf_skb_vlan_push(ctx.skb.skb, 0x88a8u16.to_be(), outer);
        }
    }
    TC_ACT_OK
}

/// Server ingress (after XDP has judged the tagged frame): remove the tags again.
#[classifier]
pub fn pg_test_untag(ctx: TcContext) -> i32 {
    unsafe {
        bpf_skb_vlan_pop(ctx.skb.skb);
        bpf_skb_vlan_pop(ctx.skb.skb);
    }
    TC_ACT_OK
}

/// Benchmark baseline: does nothing but pass (measures the hook and the test loop).
#[xdp]
pub fn pg_test_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark floor: drops everything.
#[xdp]
pub fn pg_test_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Benchmark contrast: a blocklist as one plain LPM trie (what portguard avoids).
#[map]
static PG_TEST_LPM: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(1, 0);

#[xdp]
pub fn pg_test_lpm(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 14 + 20 > end {
        return xdp_action::XDP_PASS;
    }
    let src = unsafe { *((data + 14 + 12) as *const [u8; 4]) };
    match PG_TEST_LPM.get(Key::new(32, src)) {
        Some(_) => xdp_action::XDP_DROP,
        None => xdp_action::XDP_PASS,
    }
}

#[map]
static PG_TEST_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Offsets in the flood frame: Ethernet, IPv6 without extension headers, TCP without options.
const IP6: usize = 14;
const IP6_SRC: usize = IP6 + 8;
const TCP6: usize = IP6 + 40;
const TCP6_CHECK: usize = TCP6 + 16;
const FLOOD_FRAME_LEN: usize = TCP6 + 20;

/// Benchmark sender (BPF_PROG_TEST_RUN with live frames), one source: gives every IPv6 TCP
/// frame another source port, keeps its TCP checksum valid, and transmits it.
#[xdp]
pub fn pg_test_tx_syn6(ctx: XdpContext) -> u32 {
    flood(&ctx, false)
}

/// Benchmark sender, spoofed sources: like `pg_test_tx_syn6`, and every frame gets a random
/// source in 2001:db8::/32 (bits 32-127 random, so no two frames share a /64 either).
#[xdp]
pub fn pg_test_tx_syn6_spoofed(ctx: XdpContext) -> u32 {
    flood(&ctx, true)
}

#[inline(always)]
fn flood(ctx: &XdpContext, spoof: bool) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + FLOOD_FRAME_LEN > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(seq) = PG_TEST_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let frame = data as *mut u8;
    unsafe {
        *seq = (*seq).wrapping_add(1);
        // Live frames reuse their pages, so each frame starts as the last one through this page
        // left it, with a valid checksum: update that checksum incrementally (RFC 1624).
        let mut sum = !read_word(frame, TCP6_CHECK) as u32;
        set_word(frame, TCP6, *seq as u16 | 0x8000, &mut sum);
        if spoof {
            // The source's first 32 bits stay 2001:0db8.
            for word in 0..3 {
                let random = bpf_get_prandom_u32();
                set_word(frame, IP6_SRC + 4 + 4 * word, (random >> 16) as u16, &mut sum);
                set_word(frame, IP6_SRC + 6 + 4 * word, random as u16, &mut sum);
            }
        }
        // At most 7 words changed: two folds bring the sum back to 16 bits.
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let check = !(sum as u16);
        *frame.add(TCP6_CHECK) = (check >> 8) as u8;
        *frame.add(TCP6_CHECK + 1) = check as u8;
    }
    xdp_action::XDP_TX
}

#[inline(always)]
unsafe fn read_word(frame: *const u8, offset: usize) -> u16 {
    unsafe { u16::from_be_bytes([*frame.add(offset), *frame.add(offset + 1)]) }
}

/// Writes a big-endian 16-bit word and adds the change to a one's-complement sum.
#[inline(always)]
unsafe fn set_word(frame: *mut u8, offset: usize, value: u16, sum: &mut u32) {
    unsafe {
        *sum += !read_word(frame, offset) as u32 + value as u32;
        *frame.add(offset) = (value >> 8) as u8;
        *frame.add(offset + 1) = value as u8;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

//! Test and benchmark fixtures, never attached by portguard itself:
//! - the lab sends 802.1Q and 802.1ad tagged frames over a veth on kernels without VLAN
//!   devices (CONFIG_VLAN_8021Q off), so the XDP program sees real tagged traffic and the host
//!   stack still gets it untagged;
//! - the benchmark's baseline (pass), floor (drop) and sender (live frames) programs.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::generated::{bpf_skb_vlan_pop, bpf_skb_vlan_push},
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

/// Benchmark sender (BPF_PROG_TEST_RUN with live frames): gives every frame (Ethernet, IPv4,
/// UDP) another source address and port, fixes the IPv4 checksum, and transmits it.
#[xdp]
pub fn pg_test_tx(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 14 + 20 + 8 > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(seq) = PG_TEST_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    let ip = (data + 14) as *mut u8;
    unsafe {
        // Source 198.51.100.0/24 + the low byte of a /16 walk: 65536 sources per CPU cycle.
        *ip.add(14) = (n >> 8) as u8;
        *ip.add(15) = n as u8;
        *ip.add(10) = 0;
        *ip.add(11) = 0;
        let mut sum = 0u32;
        for i in 0..10 {
            sum += u16::from_be_bytes([*ip.add(2 * i), *ip.add(2 * i + 1)]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let check = !(sum as u16);
        *ip.add(10) = (check >> 8) as u8;
        *ip.add(11) = check as u8;
        // UDP source port.
        *ip.add(20) = (n >> 4) as u8 | 0x80;
        *ip.add(21) = n as u8;
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

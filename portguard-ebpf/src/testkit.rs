//! Test fixtures, never attached by portguard itself: the lab uses them to send 802.1Q and
//! 802.1ad tagged frames over a veth on kernels without VLAN devices (CONFIG_VLAN_8021Q off),
//! so the XDP program sees real tagged traffic and the host stack still gets it untagged.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::generated::{bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::classifier,
    programs::TcContext,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

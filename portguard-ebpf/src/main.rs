//! portguard's kernel programs. Entry points only: parsing, verdict, detection, maps and
//! counting live in their own modules so the packet path reads top to bottom in `verdict.rs`.
#![no_std]
#![no_main]
// Atomic add on the shared per-port table (see counters.rs).
#![feature(core_intrinsics)]
// Wide reads of packet bytes at any offset (see `mem.rs`).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

// Layered, each module using only those listed above it: leaves (time, hash, types, mem, parse),
// maps, then counting (counters, portstats) and events, lookups, detection, and the two paths.
mod blocklist;
mod blocks;
mod conns;
mod counters;
mod egress;
mod events;
mod evidence;
mod flows;
mod hash;
mod limits;
mod maps;
mod mem;
mod opaque;
mod parse;
mod portstats;
mod scan;
mod time;
mod types;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, sock_ops, xdp},
    programs::{SockOpsContext, TcContext, XdpContext},
};
use portguard_common::Config;
use types::VERDICT_REPORT;

/// The policy's settings, written by the loader before the program is loaded (read-only to the
/// verifier, so branches for unused features are pruned).
#[unsafe(no_mangle)]
static PG_CONFIG: Config = Config::zeroed();

/// The policy's settings, read in place (not copied to the 512-byte stack). The pointer goes
/// through `black_box` so the compiler cannot fold the all-zero initial value into the code;
/// the verifier still sees a read-only map and knows every value.
#[inline(always)]
fn config() -> &'static Config {
    unsafe { &*core::hint::black_box(core::ptr::addr_of!(PG_CONFIG)) }
}

/// Inbound: judge every frame, count it, drop it unless it passes (or the policy only monitors).
#[xdp]
pub fn pg_xdp_ingress(ctx: XdpContext) -> u32 {
    let cfg = config();
    let (data, end) = (ctx.data(), ctx.data_end());
    let ifindex = ctx.ingress_ifindex() as u32;
    let verdict = verdict::opaque(verdict::judge(data, end, ifindex, cfg));
    let enforced = counters::count(&verdict, cfg, end - data);
    portstats::count(&verdict, cfg, end - data);
    if verdict.is_drop() && verdict.report != 0 {
        // Any other value than a plain report is a blocked source's evidence: the paths of
        // sources not blocked pay one comparison, on drops with an event due.
        if verdict.report == VERDICT_REPORT {
            if events::drop_event_allowed() {
                verdict::report_drop(&verdict, ifindex, cfg);
            }
        } else {
            verdict::report_evidence(&ctx, &verdict, cfg);
        }
    }
    if enforced { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

/// Outbound: learn the flows the host takes part in (so their replies pass a default-deny
/// policy) and the refusals it sends (scan detection). Never drops.
#[classifier]
pub fn pg_tc_egress(ctx: TcContext) -> i32 {
    let cfg = config();
    egress::record_egress(&ctx, cfg);
    TC_ACT_OK
}

/// The host's TCP state changes, for the connection caps (attached to the root cgroup only
/// while some rule caps connections). Never changes what the socket does.
#[sock_ops]
pub fn pg_sock_ops(ctx: SockOpsContext) -> u32 {
    conns::sock_op(&ctx, config());
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

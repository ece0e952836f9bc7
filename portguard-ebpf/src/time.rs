//! The packet path's clock.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

/// CLOCK_MONOTONIC at tick resolution (a few ms): windows, expiries and rate limits need no
/// more, and the coarse clock costs a fraction of `bpf_ktime_get_ns`.
#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// CLOCK_MONOTONIC to the nanosecond: for the rare paths that stamp a packet for people to
/// read (evidence), where tick resolution would put a scan's probes at one instant.
#[inline(always)]
pub fn precise_now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The tick count: `bpf_jiffies64` is inlined by the verifier into one load, where the clock
/// helper is a call. For the per-CPU memos of the flood's common cases, not for expiries.
#[inline(always)]
pub fn jiffies() -> u64 {
    unsafe { bpf_jiffies64() }
}

/// How long a per-CPU memo stands, in jiffies: 64 is 0.64 s at HZ=100 and less at any higher
/// HZ, so whatever a memo skips (a drop event due each second, a block's expiry more than a
/// second away) is looked at again within a second.
pub const MEMO_JIFFIES: u64 = 64;

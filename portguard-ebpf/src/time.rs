//! The packet path's clock.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;

/// CLOCK_MONOTONIC at tick resolution (a few ms): windows, expiries and rate limits need no
/// more, and the coarse clock costs a fraction of `bpf_ktime_get_ns`.
#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

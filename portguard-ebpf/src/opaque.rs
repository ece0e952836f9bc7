//! Values the verifier must not know.
//!
//! The verifier follows every path through the program and prunes a path when its state
//! matches one already checked. A value that is a different constant on each path (a verdict
//! reason, a scan kind) keeps the states apart, so everything after it would be checked once
//! per value. XORing such a value with a zero read from a map makes it an unknown number to
//! the verifier, and the paths merge. At run time it costs one load of a cache line nobody
//! writes (a round trip through a per-CPU slot cost a store, a load and the slot's lookup).

use crate::maps::PG_OPAQUE_ZERO;

#[inline(always)]
pub fn u64(value: u64) -> u64 {
    // SAFETY: the map's only slot, never written; volatile so the compiler keeps the load.
    let zero = PG_OPAQUE_ZERO.get_ptr(0).map_or(0, |slot| unsafe { core::ptr::read_volatile(slot) });
    value ^ zero
}

//! Values the verifier must not know.
//!
//! The verifier follows every path through the program and prunes a path when its state
//! matches one already checked. A value that is a different constant on each path (a verdict
//! reason, a scan kind) keeps the states apart, so everything after it would be checked once
//! per value. Passing such a value through a map slot makes it an unknown number to the
//! verifier, and the paths merge. At run time it costs one per-CPU store and load.

use crate::maps::PG_OPAQUE;

#[inline(always)]
pub fn u64(value: u64) -> u64 {
    let Some(slot) = PG_OPAQUE.get_ptr_mut(0) else {
        return value;
    };
    // SAFETY: this CPU's slot; volatile so the compiler keeps the round trip.
    unsafe {
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot)
    }
}

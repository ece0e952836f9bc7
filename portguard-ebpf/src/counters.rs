//! Counting: one verdict slot per packet (see `portguard_common::counters`), plus the
//! per-port drop table.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::generated::bpf_get_smp_processor_id;

use portguard_common::{
    Config,
    config::{FLAG_MONITOR, FLAG_PORT_DROPS_PER_CPU},
    counters::{MONITOR_BASE, OBS_FRAGMENT_FIRST, OBS_FRAGMENT_LATER, OBS_VLAN_SINGLE, OBS_VLAN_STACKED},
    maps::PORT_TABLE_LEN,
};

use crate::{
    maps::{PG_COUNTERS, PG_PORT_DROPS},
    types::{FRAG_FIRST, FRAG_LATER, NO_PORT, Verdict},
};

/// Counts the verdict and returns whether the packet must be dropped.
#[inline(always)]
pub fn count(verdict: &Verdict, cfg: &Config, frame_len: usize) -> bool {
    let drop = verdict.is_drop();
    let monitored = drop && cfg.has(FLAG_MONITOR);
    let slot = verdict.reason as u32 + if monitored { MONITOR_BASE } else { 0 };
    add(slot, frame_len as u64);
    match verdict.frag {
        FRAG_FIRST => add(OBS_FRAGMENT_FIRST, frame_len as u64),
        FRAG_LATER => add(OBS_FRAGMENT_LATER, frame_len as u64),
        _ => {}
    }
    if verdict.vlan_tags == 1 {
        add(OBS_VLAN_SINGLE, frame_len as u64);
    } else if verdict.vlan_tags > 1 {
        add(OBS_VLAN_STACKED, frame_len as u64);
    }
    if drop && verdict.port_index != NO_PORT {
        // This CPU's shard of the table (see `Config::port_drop_shards`).
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let shard = cpu & (cfg.port_drop_shards.wrapping_sub(1));
        let index = shard.wrapping_mul(PORT_TABLE_LEN).wrapping_add(verdict.port_index);
        if let Some(cell) = PG_PORT_DROPS.get_ptr_mut(index) {
            if cfg.has(FLAG_PORT_DROPS_PER_CPU) {
                // This CPU's own shard: nobody else writes it.
                unsafe { *cell += 1 };
            } else {
                // A shard shared by several CPUs (a copy of 131072 ports costs 1 MiB, so there
                // are at most 16). The BPF target has no compare-and-swap, hence no
                // `AtomicU64::fetch_add`; the intrinsic lowers to BPF's atomic add.
                unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(cell, 1) };
            }
        }
    }
    drop && !monitored
}

/// Adds one observation to a counter slot; tolerated to fail for an out-of-range slot
/// (cannot happen: slots are compile-time constants plus a bounded reason).
#[inline(always)]
pub fn add(slot: u32, bytes: u64) {
    if let Some(counter) = PG_COUNTERS.get_ptr_mut(slot) {
        // Per-CPU: no other CPU writes this copy, so plain adds are exact.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

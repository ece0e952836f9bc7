//! Typed, read-side access to the shared maps: verdict counters and per-port drops, from the
//! pins of a running attachment or from a loaded object (tests, `verify`).

use std::{
    borrow::Borrow,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use portguard_common::{
    Counter, Reason,
    counters::{ALL_REASONS, COUNTER_SLOTS, MONITOR_BASE},
    maps::{
        AutoBlock, EventBudget, LIMIT_COUNTER_SLOTS, MAP_AUTO_BLOCK, MAP_COUNTERS, MAP_EVENT_BUDGET,
        MAP_PORT_DROPS, MAP_RULE_LIMITED, PORT_TABLE_LEN,
    },
};
use serde::Serialize;

use crate::{paths, policy::Proto};

/// Every counter slot, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    pub slots: Vec<Counter>,
}

impl Counters {
    /// Packets judged with `reason` and handled accordingly.
    pub fn applied(&self, reason: Reason) -> Counter {
        self.slots[reason as usize]
    }

    /// Packets judged with a drop `reason` that passed because the policy only monitors.
    pub fn would_drop(&self, reason: Reason) -> Counter {
        self.slots[(MONITOR_BASE + reason as u32) as usize]
    }

    pub fn slot(&self, slot: u32) -> Counter {
        self.slots[slot as usize]
    }

    /// Every packet is counted in exactly one verdict slot.
    pub fn total(&self) -> Counter {
        sum(ALL_REASONS.iter().flat_map(|r| [self.applied(*r), self.would_drop(*r)]))
    }

    pub fn passed(&self) -> Counter {
        sum(ALL_REASONS.iter().filter(|r| !r.is_drop()).map(|r| self.applied(*r)))
    }

    pub fn dropped(&self) -> Counter {
        sum(ALL_REASONS.iter().filter(|r| r.is_drop()).map(|r| self.applied(*r)))
    }

    pub fn monitored(&self) -> Counter {
        sum(ALL_REASONS.iter().filter(|r| r.is_drop()).map(|r| self.would_drop(*r)))
    }

    /// What happened between `earlier` and `self`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        let slots = self
            .slots
            .iter()
            .zip(&earlier.slots)
            .map(|(now, then)| Counter {
                packets: now.packets.wrapping_sub(then.packets),
                bytes: now.bytes.wrapping_sub(then.bytes),
            })
            .collect();
        Self { slots }
    }
}

fn sum(counters: impl Iterator<Item = Counter>) -> Counter {
    counters.fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

pub fn read_counters<T: Borrow<MapData>>(map: &PerCpuArray<T, Counter>) -> Result<Counters> {
    let mut slots = Vec::with_capacity(COUNTER_SLOTS as usize);
    for slot in 0..COUNTER_SLOTS {
        let per_cpu = map.get(&slot, 0).with_context(|| format!("reading {MAP_COUNTERS}[{slot}]"))?;
        slots.push(sum(per_cpu.iter().copied()));
    }
    Ok(Counters { slots })
}

/// `PG_RULE_LIMITED`: attempts each limited rule refused (or, in monitor mode, would have),
/// by counter slot (`RuleLimit::slot`), summed over CPUs.
pub fn read_rule_limited<T: Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<Vec<u64>> {
    (0..LIMIT_COUNTER_SLOTS)
        .map(|slot| {
            let per_cpu = map.get(&slot, 0).with_context(|| format!("reading {MAP_RULE_LIMITED}[{slot}]"))?;
            Ok(per_cpu.iter().sum())
        })
        .collect()
}

/// An mmapable BPF array (`BPF_F_MMAPABLE`) mapped read-only into our memory: read without a
/// syscall per entry; the kernel updates it concurrently, so a read is a snapshot of each value.
pub struct MappedArray<T> {
    base: *const T,
    len: usize,
}

impl<T: aya::Pod> MappedArray<T> {
    /// Maps the array `fd` of `entries` values; `name` names it in errors.
    pub fn map(fd: BorrowedFd<'_>, entries: u32, name: &str) -> Result<Self> {
        let len = entries as usize;
        // SAFETY: a read-only shared mapping of an mmapable BPF array of exactly this size.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * size_of::<T>(),
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mapping {name} failed: {}", std::io::Error::last_os_error());
        }
        Ok(Self { base: base.cast(), len })
    }

    pub fn values(&self) -> &[T] {
        // SAFETY: the mapping holds `len` values for as long as `self` lives; BPF array values
        // are 8-aligned, and `T` is plain data.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }
}

/// Zeroes the mmapable BPF array `fd` of `entries` values of `T` in place, through a writable
/// shared mapping: one pass over memory where a syscall per entry would take seconds for a big
/// table. What the kernel adds meanwhile may be lost.
pub fn zero_mapped_array<T>(fd: BorrowedFd<'_>, entries: u32, name: &str) -> Result<()> {
    let bytes = entries as usize * size_of::<T>();
    // SAFETY: a writable shared mapping of an mmapable BPF array of exactly this size, zeroed
    // and unmapped here; BPF array values are plain data, so zero is a valid value.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        if base == libc::MAP_FAILED {
            bail!("mapping {name} for writing failed: {}", std::io::Error::last_os_error());
        }
        std::ptr::write_bytes(base.cast::<u8>(), 0, bytes);
        libc::munmap(base, bytes);
    }
    Ok(())
}

// SAFETY: the mapping is read-only and lives as long as the value; any thread may read it.
unsafe impl<T> Send for MappedArray<T> {}
unsafe impl<T> Sync for MappedArray<T> {}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base as *mut _, self.len * size_of::<T>()) };
    }
}

/// `PG_PORT_DROPS`, mapped read-only into our memory: `shards` copies of the port table,
/// added up on reading.
pub struct PortDrops {
    table: MappedArray<u64>,
}

impl PortDrops {
    /// Maps the table; `entries` is the map's size (a multiple of the port table).
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> Result<Self> {
        let shards = (entries / PORT_TABLE_LEN).max(1);
        Ok(Self { table: MappedArray::map(fd, shards * PORT_TABLE_LEN, MAP_PORT_DROPS)? })
    }

    fn words(&self) -> &[u64] {
        self.table.values()
    }

    pub fn get(&self, proto: Proto, port: u16) -> u64 {
        let index = portguard_common::maps::port_index(proto.number(), port).expect("tcp or udp") as usize;
        self.words().chunks(PORT_TABLE_LEN as usize).map(|shard| shard[index]).sum()
    }

    /// Drops per port index, over all shards.
    pub fn snapshot(&self) -> Vec<u64> {
        let mut sums = vec![0u64; PORT_TABLE_LEN as usize];
        for shard in self.words().chunks(PORT_TABLE_LEN as usize) {
            for (sum, value) in sums.iter_mut().zip(shard) {
                *sum += value;
            }
        }
        sums
    }

    /// Drops over every port.
    pub fn total(&self) -> u64 {
        self.words().iter().sum()
    }
}

/// Ports with the most drops in a `PortDrops::snapshot` (or a difference of two); also what
/// `verify` would drop. Serialized as `stats`, `doctor` and `verify` print it in `--json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PortCount {
    pub protocol: Proto,
    pub port: u16,
    pub drops: u64,
}

pub fn top_ports(snapshot: &[u64], limit: usize) -> Vec<PortCount> {
    let mut ports: Vec<PortCount> = snapshot
        .iter()
        .enumerate()
        .filter(|(_, drops)| **drops > 0)
        .map(|(index, drops)| PortCount {
            protocol: if index < 65536 { Proto::Tcp } else { Proto::Udp },
            port: (index % 65536) as u16,
            drops: *drops,
        })
        .collect();
    ports.sort_by(|a, b| b.drops.cmp(&a.drops).then(a.protocol.cmp(&b.protocol)).then(a.port.cmp(&b.port)));
    ports.truncate(limit);
    ports
}

/// The shared maps of an attachment, opened from its pins.
pub struct PinnedMaps {
    pub counters: PerCpuArray<MapData, Counter>,
    pub port_drops: PortDrops,
    pub auto_blocks: HashMap<MapData, [u8; 16], AutoBlock>,
    pub event_budget: PerCpuArray<MapData, EventBudget>,
}

impl PinnedMaps {
    pub fn open(iface: &str) -> Result<Self> {
        let counters = open_pinned(iface, MAP_COUNTERS)?;
        let counters = PerCpuArray::try_from(counters)?;
        let port_drops = open_pinned(iface, MAP_PORT_DROPS)?;
        let port_drops = match &port_drops {
            Map::Array(data) => PortDrops::map(data.fd().as_fd(), data.info()?.max_entries())?,
            _ => bail!("{MAP_PORT_DROPS} is not an array"),
        };
        let auto_blocks = HashMap::try_from(open_pinned(iface, MAP_AUTO_BLOCK)?)?;
        let event_budget = PerCpuArray::try_from(open_pinned(iface, MAP_EVENT_BUDGET)?)?;
        Ok(Self { counters, port_drops, auto_blocks, event_budget })
    }

    pub fn counters(&self) -> Result<Counters> {
        read_counters(&self.counters)
    }
}

pub fn open_pinned(iface: &str, name: &str) -> Result<Map> {
    let path = paths::map_pin(iface, name);
    let data = MapData::from_pin(&path).map_err(|error| {
        anyhow!(
            "cannot open {} ({error}); is portguard attached to {iface}? (`portguard status` lists attachments)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

/// A size the policy sets that the running maps do not have: the maps that hold flows,
/// fragments, scan state, blocks and events are pinned and shared by every generation, so a
/// reload (or an attach that adopts the pins) cannot resize them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptSize {
    /// As the policy writes it: `[limits] flows`.
    pub setting: &'static str,
    pub running: u64,
    pub wanted: u64,
}

/// The policy's sizes that differ from those of `iface`'s pinned maps.
pub fn kept_sizes(iface: &str, policy: &crate::policy::Policy) -> Result<Vec<KeptSize>> {
    use portguard_common::maps::{MAP_EVENTS, MAP_FLOWS, MAP_FRAGS, MAP_MANUAL, MAP_SCAN};
    let limits = &policy.limits;
    // (setting, map, wanted, map entries per unit of the setting)
    let sizes = [
        ("[limits] flows", MAP_FLOWS, limits.flows, 1),
        ("[limits] fragments", MAP_FRAGS, limits.fragments, 1),
        ("[limits] sources", MAP_SCAN, limits.sources, 1),
        ("[limits] auto_blocks", MAP_AUTO_BLOCK, limits.auto_blocks, 1),
        ("[limits] manual_blocks", MAP_MANUAL, limits.manual_blocks, 1),
        (
            "[limits] limited_sources",
            portguard_common::maps::MAP_LIMITS,
            crate::policy::compile::limit_slots(limits.limited_sources),
            1,
        ),
        ("[limits] connected_sources", portguard_common::maps::MAP_CONNS, limits.connected_sources, 1),
        ("[limits] connections", portguard_common::maps::MAP_CONN_SOCKETS, limits.connections, 1),
        ("[limits] port_sources", portguard_common::maps::MAP_PORT_SOURCES, limits.port_sources, 1),
        ("[events] ring_buffer_kib", MAP_EVENTS, policy.events.ring_buffer_kib, 1024),
    ];
    let mut kept = Vec::new();
    for (setting, map, wanted, unit) in sizes {
        let path = paths::map_pin(iface, map);
        // Not pinned yet (an attachment made by an older portguard): made at the size wanted.
        if !path.exists() {
            continue;
        }
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let running =
            u64::from(data.info().with_context(|| format!("reading {}", path.display()))?.max_entries())
                / unit;
        if running != u64::from(wanted) {
            kept.push(KeptSize { setting, running, wanted: u64::from(wanted) });
        }
    }
    Ok(kept)
}

/// What to tell the operator about the sizes `policy` sets that `iface`'s maps keep (nothing
/// when they all agree).
pub fn kept_sizes_message(iface: &str, policy: &crate::policy::Policy) -> Option<String> {
    let kept = match kept_sizes(iface, policy) {
        Ok(kept) if kept.is_empty() => return None,
        Ok(kept) => kept,
        Err(error) => {
            return Some(format!("the running map sizes could not be compared with the policy's: {error:#}"));
        }
    };
    let list: Vec<String> =
        kept.iter().map(|k| format!("{} {} -> {}", k.setting, k.running, k.wanted)).collect();
    Some(format!(
        "kept as attached: {} (the maps that hold flows, scan state, blocks and events are kept across \
         reloads; new sizes take effect when they are made anew: `portguard detach {iface}`, then attach)",
        list.join(", ")
    ))
}

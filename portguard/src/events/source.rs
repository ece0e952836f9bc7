//! Reading one attachment's events: the `PG_EVENTS` ring buffer, the lost-event counter, and
//! the automatic blocks to sweep when they expire.

use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
};
use portguard_common::{
    Counter,
    counters::OBS_EVENTS_LOST,
    events::Event,
    maps::{
        AutoBlock, EventBudget, MAP_AUTO_BLOCK, MAP_COUNTERS, MAP_EVENT_BUDGET, MAP_EVENTS, MAP_RUNTIME,
        RUNTIME_KERNEL, Runtime,
    },
};

use super::{
    Clock, EventRecord, EventType, Grants,
    decode::{cause_name, decode, ip_of, network_prefix},
    refill_budget,
};
use crate::{loader::kernel_now_ns, paths};

/// Reads one attachment's events: the ring buffer, the lost-event counter, and the automatic
/// blocks to sweep when they expire.
pub struct EventSource {
    pub interface: String,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, Counter>,
    auto_blocks: HashMap<MapData, [u8; 16], AutoBlock>,
    budget: PerCpuArray<MapData, EventBudget>,
    runtime: Array<MapData, Runtime>,
    lost_seen: u64,
}

impl EventSource {
    /// From a running attachment's pins.
    pub fn from_pins(interface: &str) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = paths::map_pin(interface, name);
            let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Self::from_maps(interface, open)
    }

    /// From a loaded object (its maps are shared, not taken).
    pub fn from_ebpf(interface: &str, ebpf: &Ebpf) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let map = ebpf.map(name).with_context(|| format!("no map {name}"))?;
            let id = match map {
                Map::RingBuf(data) | Map::PerCpuArray(data) | Map::LruHashMap(data) | Map::Array(data) => {
                    data.info()?.id()
                }
                _ => bail!("{name} has an unexpected type"),
            };
            Ok(Map::from_map_data(MapData::from_id(id)?)?)
        };
        Self::from_maps(interface, open)
    }

    /// With the maps `open` gives by name (from pins, or from a loaded object).
    fn from_maps(interface: &str, open: impl Fn(&str) -> Result<Map>) -> Result<Self> {
        let mut source = Self {
            interface: interface.to_owned(),
            ring: RingBuf::try_from(open(MAP_EVENTS)?)?,
            counters: PerCpuArray::try_from(open(MAP_COUNTERS)?)?,
            auto_blocks: HashMap::try_from(open(MAP_AUTO_BLOCK)?)?,
            budget: PerCpuArray::try_from(open(MAP_EVENT_BUDGET)?)?,
            runtime: Array::try_from(open(MAP_RUNTIME)?)?,
            lost_seen: 0,
        };
        // Report only what is lost from now on.
        source.lost_seen = source.lost_total()?;
        Ok(source)
    }

    pub fn auto_blocks(&self) -> &HashMap<MapData, [u8; 16], AutoBlock> {
        &self.auto_blocks
    }

    /// Every event waiting in the ring buffer, decoded.
    pub fn drain(&mut self) -> Vec<EventRecord> {
        self.drain_with_kernel_events().into_iter().map(|(_, record)| record).collect()
    }

    /// The same, each with the kernel's record it was decoded from (what the loader matches
    /// evidence by).
    pub fn drain_with_kernel_events(&mut self) -> Vec<(Event, EventRecord)> {
        let clock = Clock::now();
        let mut records = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (repr(C), plain data); read unaligned.
            let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match decode(&event, &self.interface, &clock) {
                Ok(record) => records.push((event, record)),
                Err(error) => log::warn!("skipping an event: {error}"),
            }
        }
        records
    }

    /// Grants every CPU its share of this second's budget (called every second by the reader;
    /// the kernel spends it).
    pub fn refill(&mut self, grants: Grants) -> Result<()> {
        refill_budget(&mut self.budget, grants)
    }

    fn lost_total(&self) -> Result<u64> {
        let per_cpu = self.counters.get(&OBS_EVENTS_LOST, 0)?;
        Ok(per_cpu.iter().map(|c| c.packets).sum())
    }

    /// Events the ring buffer could not hold since the last call.
    pub fn newly_lost(&mut self) -> Result<Option<EventRecord>> {
        let total = self.lost_total()?;
        let lost = total.saturating_sub(self.lost_seen);
        self.lost_seen = total;
        Ok((lost > 0).then(|| EventRecord::events_lost(SystemTime::now(), &self.interface, lost)))
    }

    /// Removes automatic blocks that expired without their source coming back (the packet
    /// path removes those that do), reporting each.
    pub fn sweep_expired(&mut self) -> Result<Vec<EventRecord>> {
        let now = kernel_now_ns();
        let expired: Vec<([u8; 16], AutoBlock)> = self
            .auto_blocks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, block)| block.expires_ns <= now)
            .collect();
        let mut records = Vec::new();
        for (addr, block) in expired {
            // Whoever removes it (we, or the packet path) reports it: never both.
            if self.auto_blocks.remove(&addr).is_ok() {
                let mut record =
                    EventRecord::new(SystemTime::now(), &self.interface, EventType::BlockExpired);
                record.source = Some(ip_of(addr));
                record.prefix_len = network_prefix(addr, block.prefix_len);
                record.reason = Some(cause_name(block.cause).to_string());
                records.push(record);
            }
        }
        self.forget_empty_auto_blocks()?;
        Ok(records)
    }

    /// Lets the packet path skip the automatic-block lookup again once the table is empty.
    /// The kernel sets the flag after each insert, so clearing it and then looking at the
    /// table once more never leaves a block unconsulted for longer than these two steps.
    fn forget_empty_auto_blocks(&mut self) -> Result<()> {
        let flagged = self.runtime.get(&RUNTIME_KERNEL, 0)?;
        if flagged.auto_blocks == 0 || self.auto_blocks.keys().next().is_some() {
            return Ok(());
        }
        self.runtime.set(RUNTIME_KERNEL, Runtime { auto_blocks: 0, ..flagged }, 0)?;
        if self.auto_blocks.keys().next().is_some() {
            self.runtime.set(RUNTIME_KERNEL, flagged, 0)?;
        }
        Ok(())
    }
}

impl std::os::fd::AsRawFd for EventSource {
    /// The ring buffer's fd: readable when events wait (for epoll/`AsyncFd`).
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.ring.as_fd().as_raw_fd()
    }
}

impl EventSource {
    /// Registers the ring buffer with the tokio reactor: readable when events wait.
    pub fn watch(self) -> Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: the fd is the ring buffer's, owned by `self.ring` for as long as the
        // `AsyncFd` owns `self`, and `as_raw_fd` always returns that same fd.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
            .map_err(|error| anyhow::anyhow!("watching the event ring buffer: {error}"))
    }
}

//! The kernel's per-port statistics, read into plain values: what arrived at each TCP and UDP
//! port (admitted and refused), and which source networks opened connections to it. `learn`
//! proposes a policy from a `Snapshot`; anything that samples traffic over time (baselines)
//! takes snapshots and subtracts them (`Snapshot::since`). Reading and resetting only: the
//! kernel side is `portguard-ebpf/src/portstats.rs`, the layouts `portguard_common::maps`.
//!
//! The source table is two tables the kernel keeps: `PG_PORT_SOURCES` (shared, LRU) and each
//! CPU's direct-mapped cache in front of it (`PG_PORT_SOURCE_CACHE`), which holds what that
//! CPU counted for a network since it took its slot and adds it to `PG_PORT_SOURCES` when
//! another network takes the slot. A snapshot merges the two.

use std::{
    borrow::Borrow,
    collections::{HashMap as StdHashMap, hash_map::Entry},
    net::{IpAddr, Ipv6Addr},
    os::fd::AsFd as _,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues},
};
use ipnet::IpNet;
use portguard_common::maps::{
    MAP_PORT_SOURCE_CACHE, MAP_PORT_SOURCE_FLUSHES, MAP_PORT_SOURCES, MAP_PORT_STATS, MAP_PORT_STATS_META,
    PORT_SOURCE_CACHE_SLOTS, PORT_TABLE_LEN, PortSource, PortSourceKey, PortSourceSlot, PortStats,
    PortStatsMeta, PortTraffic,
};
use serde::Serialize;

use crate::{
    loader::kernel_now_ns,
    maps::{MappedArray, open_pinned, zero_mapped_array},
    policy::Proto,
};

/// Traffic of one kind (admitted or refused) to one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    /// New connections: TCP SYNs without ACK; for UDP, datagrams.
    pub connections: u64,
}

impl Traffic {
    fn add(&mut self, other: &PortTraffic) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.connections += other.connections;
    }

    fn minus(self, earlier: Self) -> Self {
        Self {
            packets: self.packets.wrapping_sub(earlier.packets),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
            connections: self.connections.wrapping_sub(earlier.connections),
        }
    }

    fn is_empty(&self) -> bool {
        self.packets == 0
    }
}

/// One port's traffic since the statistics began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PortUse {
    pub protocol: Proto,
    pub port: u16,
    /// What the policy let through.
    pub accepted: Traffic,
    /// What it dropped or, in monitor mode, would have dropped.
    pub refused: Traffic,
}

impl PortUse {
    /// New connections, admitted or refused.
    pub fn connections(&self) -> u64 {
        self.accepted.connections + self.refused.connections
    }
}

/// A source network's new connections to one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SourceUse {
    pub protocol: Proto,
    pub port: u16,
    /// An IPv4 source's /24, an IPv6 source's network of the policy's `ipv6_prefix`.
    pub network: IpNet,
    pub connections: u64,
    /// Of which the policy would have refused (monitor mode; enforcing, refused attempts are
    /// counted per port only).
    pub refused: u64,
    /// Bytes of the frames counted in `connections` (UDP: every datagram; TCP: the SYNs).
    pub bytes: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

/// The statistics at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub taken_at: SystemTime,
    /// When counting began (the maps were made, or last reset); `None` if the maps do not
    /// say (made by a portguard that did not record it).
    pub since: Option<SystemTime>,
    /// Ports that saw traffic, in port-table order (TCP, then UDP; by port).
    pub ports: Vec<PortUse>,
    /// Every (port, source network) entry the table holds.
    pub sources: Vec<SourceUse>,
    /// Entries `PG_PORT_SOURCES` holds at most (`[limits] port_sources`); the CPUs' caches
    /// hold more, but only networks that `PG_PORT_SOURCES` takes in when they leave them.
    pub source_capacity: u32,
    /// Entries the kernel has added to the source table since counting began (to
    /// `PG_PORT_SOURCES`, or held only in a CPU's cache so far).
    pub sources_added: u64,
}

impl Snapshot {
    /// Entries the source table has lost (the LRU pushed them out for newer ones): while this
    /// is zero, `sources` lists every network that opened a connection since `since`.
    pub fn sources_forgotten(&self) -> u64 {
        self.sources_added.saturating_sub(self.sources.len() as u64)
    }

    pub fn port(&self, protocol: Proto, port: u16) -> Option<&PortUse> {
        self.ports.iter().find(|p| p.protocol == protocol && p.port == port)
    }

    pub fn sources_of(&self, protocol: Proto, port: u16) -> impl Iterator<Item = &SourceUse> {
        self.sources.iter().filter(move |s| s.protocol == protocol && s.port == port)
    }

    /// Per-port traffic between `earlier` and `self` (what a sampler wants each minute): ports
    /// without traffic in between are left out. A reset in between shows as `self` alone.
    pub fn ports_since(&self, earlier: &Self) -> Vec<PortUse> {
        let reset = self.since != earlier.since;
        self.ports
            .iter()
            .filter_map(|now| {
                let then = earlier.port(now.protocol, now.port).filter(|_| !reset);
                let (accepted, refused) = match then {
                    Some(then) => (now.accepted.minus(then.accepted), now.refused.minus(then.refused)),
                    None => (now.accepted, now.refused),
                };
                (!accepted.is_empty() || !refused.is_empty()).then_some(PortUse { accepted, refused, ..*now })
            })
            .collect()
    }
}

/// The statistics maps of an attachment (from its pins) or of a loaded object.
pub struct PortStatsMaps {
    table: MappedArray<PortStats>,
    /// The table's map, for `reset`.
    table_map: Map,
    sources: HashMap<MapData, PortSourceKey, PortSource>,
    source_capacity: u32,
    meta: PerCpuArray<MapData, PortStatsMeta>,
    /// `None` for an attachment made by a portguard without the caches (its pins lack them).
    cache: Option<SourceCache>,
}

/// The CPUs' caches in front of `PG_PORT_SOURCES` and their change counts.
struct SourceCache {
    slots: PerCpuArray<MapData, PortSourceSlot>,
    changes: PerCpuArray<MapData, u64>,
}

/// Reads of the two source tables tried before a snapshot settles for one during which a
/// CPU changed a slot (see `PortStatsMaps::read_sources`).
const CONSISTENT_READ_TRIES: usize = 8;

impl PortStatsMaps {
    /// The maps of the attachment to `iface` (in this network namespace).
    pub fn open(iface: &str) -> Result<Self> {
        let cache = match (
            crate::paths::map_pin(iface, MAP_PORT_SOURCE_CACHE).exists(),
            crate::paths::map_pin(iface, MAP_PORT_SOURCE_FLUSHES).exists(),
        ) {
            (true, true) => Some((
                open_pinned(iface, MAP_PORT_SOURCE_CACHE)?,
                open_pinned(iface, MAP_PORT_SOURCE_FLUSHES)?,
            )),
            _ => None,
        };
        Self::from_maps(
            open_pinned(iface, MAP_PORT_STATS)?,
            open_pinned(iface, MAP_PORT_SOURCES)?,
            open_pinned(iface, MAP_PORT_STATS_META)?,
            cache,
        )
    }

    /// The maps of a loaded object, opened again by id (as another process would).
    pub fn of(ebpf: &Ebpf) -> Result<Self> {
        let reopen = |name: &str| -> Result<Map> {
            let Some(Map::Array(data) | Map::LruHashMap(data) | Map::PerCpuArray(data)) = ebpf.map(name)
            else {
                bail!("the kernel object has no map `{name}`")
            };
            Ok(Map::from_map_data(MapData::from_id(data.info()?.id())?)?)
        };
        Self::from_maps(
            reopen(MAP_PORT_STATS)?,
            reopen(MAP_PORT_SOURCES)?,
            reopen(MAP_PORT_STATS_META)?,
            Some((reopen(MAP_PORT_SOURCE_CACHE)?, reopen(MAP_PORT_SOURCE_FLUSHES)?)),
        )
    }

    fn from_maps(table_map: Map, sources: Map, meta: Map, cache: Option<(Map, Map)>) -> Result<Self> {
        let table = match &table_map {
            Map::Array(data) => {
                let entries = data.info()?.max_entries();
                if entries % PORT_TABLE_LEN != 0 {
                    bail!("{MAP_PORT_STATS} has {entries} entries, not a whole number of port tables");
                }
                MappedArray::map(data.fd().as_fd(), entries, MAP_PORT_STATS)?
            }
            _ => bail!("{MAP_PORT_STATS} is not an array"),
        };
        let source_capacity = match &sources {
            Map::LruHashMap(data) => data.info()?.max_entries(),
            _ => bail!("{MAP_PORT_SOURCES} is not an LRU hash"),
        };
        Ok(Self {
            table,
            table_map,
            sources: HashMap::try_from(sources)?,
            source_capacity,
            meta: PerCpuArray::try_from(meta)?,
            cache: match cache {
                Some((slots, changes)) => Some(SourceCache {
                    slots: PerCpuArray::try_from(slots)?,
                    changes: PerCpuArray::try_from(changes)?,
                }),
                None => None,
            },
        })
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let taken_at = SystemTime::now();
        let kernel_now = kernel_now_ns();
        let wall = |ns: u64| taken_at - Duration::from_nanos(kernel_now.saturating_sub(ns));
        let mut sums = vec![(Traffic::default(), Traffic::default()); PORT_TABLE_LEN as usize];
        for shard in self.table.values().chunks(PORT_TABLE_LEN as usize) {
            for (sum, value) in sums.iter_mut().zip(shard) {
                sum.0.add(&value.accepted);
                sum.1.add(&value.refused);
            }
        }
        let ports = sums
            .into_iter()
            .enumerate()
            .filter(|(_, (accepted, refused))| !accepted.is_empty() || !refused.is_empty())
            .map(|(index, (accepted, refused))| PortUse {
                protocol: if index < 65536 { Proto::Tcp } else { Proto::Udp },
                port: (index % 65536) as u16,
                accepted,
                refused,
            })
            .collect();
        let (merged, meta) = self.read_sources()?;
        let mut sources = Vec::new();
        for (key, value) in merged {
            let Some(protocol) = Proto::from_number(key.proto) else { continue };
            sources.push(SourceUse {
                protocol,
                port: key.port,
                network: network_of(&key)?,
                connections: value.connections,
                refused: value.refused,
                bytes: value.bytes,
                first_seen: wall(value.first_seen_ns),
                last_seen: wall(value.last_seen_ns),
            });
        }
        sources.sort_by(|a, b| {
            (a.protocol, a.port, b.connections, a.network).cmp(&(
                b.protocol,
                b.port,
                a.connections,
                b.network,
            ))
        });
        Ok(Snapshot {
            taken_at,
            since: (meta.since_unix_ns != 0)
                .then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(meta.since_unix_ns)),
            ports,
            sources,
            source_capacity: self.source_capacity,
            sources_added: meta.sources_added,
        })
    }

    /// `PG_PORT_SOURCES` merged with every CPU's cache (counts summed, the earliest first seen,
    /// the latest last seen), and the meta entry with `sources_added` counting the networks
    /// held only in a cache so far. The table is read before the caches, between two reads of
    /// the CPUs' change counts: while they stay even and equal, no slot moved to the table in
    /// between, so nothing is counted twice or missed. Under a flood of new networks a slot
    /// may move during every try; the last is taken then, in which a slot that moved between
    /// the two reads is missing (and its network may count as forgotten), never counted twice.
    /// The table's walk may see an entry twice (it starts again when the LRU removes the entry
    /// it stands on): the second sight replaces the first.
    fn read_sources(&self) -> Result<(StdHashMap<PortSourceKey, PortSource>, PortStatsMeta)> {
        let mut tries = 0;
        loop {
            tries += 1;
            let before = self.cache_changes()?;
            let mut merged = StdHashMap::new();
            // An entry the LRU removed while we walked the table: skip it.
            for (key, value) in self.sources.iter().filter_map(Result::ok) {
                merged.insert(key, value);
            }
            let held_in_table = merged.len() as u64;
            let mut meta = read_meta(&self.meta)?;
            if let Some(cache) = &self.cache {
                for slot in 0..PORT_SOURCE_CACHE_SLOTS {
                    let per_cpu = cache
                        .slots
                        .get(&slot, 0)
                        .with_context(|| format!("reading {MAP_PORT_SOURCE_CACHE}"))?;
                    // A slot a reset zeroed under a CPU's adds may hold counts and no key.
                    let occupied =
                        |held: &&PortSourceSlot| held.source.connections != 0 && held.key.proto != 0;
                    for held in per_cpu.iter().filter(occupied) {
                        match merged.entry(held.key) {
                            Entry::Occupied(mut entry) => merge(entry.get_mut(), &held.source),
                            Entry::Vacant(entry) => {
                                entry.insert(held.source);
                            }
                        }
                    }
                }
            }
            // Held only in a cache: added to the source table, not yet to `PG_PORT_SOURCES`.
            meta.sources_added += merged.len() as u64 - held_in_table;
            let after = self.cache_changes()?;
            let settled = before == after && before.iter().all(|changes| changes % 2 == 0);
            if settled || tries == CONSISTENT_READ_TRIES {
                return Ok((merged, meta));
            }
        }
    }

    /// Each CPU's count of cache slot changes (none without caches).
    fn cache_changes(&self) -> Result<Vec<u64>> {
        let Some(cache) = &self.cache else { return Ok(Vec::new()) };
        let per_cpu =
            cache.changes.get(&0, 0).with_context(|| format!("reading {MAP_PORT_SOURCE_FLUSHES}"))?;
        Ok(per_cpu.iter().copied().collect())
    }

    /// Starts the statistics afresh: every counter at zero, the source table empty, counting
    /// from now. The kernel keeps counting meanwhile; what arrives during the reset may be
    /// counted or not.
    pub fn reset(&mut self) -> Result<()> {
        let Map::Array(data) = &self.table_map else { bail!("{MAP_PORT_STATS} is not an array") };
        zero_mapped_array::<PortStats>(data.fd().as_fd(), self.table.values().len() as u32, MAP_PORT_STATS)?;
        // The caches before the table: a slot a CPU moves to the table meanwhile is removed
        // with it.
        if let Some(cache) = &mut self.cache {
            let cpus =
                cache.slots.get(&0, 0).with_context(|| format!("reading {MAP_PORT_SOURCE_CACHE}"))?.len();
            for slot in 0..PORT_SOURCE_CACHE_SLOTS {
                let empty = PerCpuValues::try_from(vec![PortSourceSlot::default(); cpus])?;
                cache
                    .slots
                    .set(slot, empty, 0)
                    .with_context(|| format!("writing {MAP_PORT_SOURCE_CACHE}"))?;
            }
        }
        let keys: Vec<PortSourceKey> = self.sources.keys().filter_map(Result::ok).collect();
        for key in keys {
            // Already pushed out by the LRU: as good as removed.
            let _ = self.sources.remove(&key);
        }
        write_since(&mut self.meta, SystemTime::now(), true)
    }
}

/// Adds a cache slot's counts to a table entry, as the kernel does when it moves one.
fn merge(entry: &mut PortSource, held: &PortSource) {
    entry.connections += held.connections;
    entry.refused += held.refused;
    entry.bytes += held.bytes;
    entry.first_seen_ns = entry.first_seen_ns.min(held.first_seen_ns);
    entry.last_seen_ns = entry.last_seen_ns.max(held.last_seen_ns);
}

fn network_of(key: &PortSourceKey) -> Result<IpNet> {
    let address = Ipv6Addr::from(key.addr);
    let (ip, prefix) = match address.to_ipv4_mapped() {
        Some(v4) => (IpAddr::V4(v4), key.prefix_len.min(32)),
        None => (IpAddr::V6(address), key.prefix_len.min(128)),
    };
    IpNet::new(ip, prefix).with_context(|| format!("a {MAP_PORT_SOURCES} key"))
}

fn read_meta<T: Borrow<MapData>>(meta: &PerCpuArray<T, PortStatsMeta>) -> Result<PortStatsMeta> {
    let per_cpu = meta.get(&0, 0).with_context(|| format!("reading {MAP_PORT_STATS_META}"))?;
    Ok(per_cpu.iter().fold(PortStatsMeta::default(), |sum, cpu| PortStatsMeta {
        sources_added: sum.sources_added + cpu.sources_added,
        since_unix_ns: sum.since_unix_ns.max(cpu.since_unix_ns),
    }))
}

/// Sets when counting began, in every CPU's copy; `restart` also zeroes the entries added.
fn write_since(
    meta: &mut PerCpuArray<impl std::borrow::BorrowMut<MapData>, PortStatsMeta>,
    since: SystemTime,
    restart: bool,
) -> Result<()> {
    let since_unix_ns = since.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let current = meta.get(&0, 0).with_context(|| format!("reading {MAP_PORT_STATS_META}"))?;
    let values: Vec<PortStatsMeta> = current
        .iter()
        .map(|cpu| PortStatsMeta {
            sources_added: if restart { 0 } else { cpu.sources_added },
            since_unix_ns,
        })
        .collect();
    meta.set(0, PerCpuValues::try_from(values)?, 0).with_context(|| format!("writing {MAP_PORT_STATS_META}"))
}

/// Dates statistics maps the loader has just made (kept as they are when adopted from pins).
pub fn date_new_statistics(ebpf: &mut Ebpf) -> Result<()> {
    let map = ebpf.map_mut(MAP_PORT_STATS_META).with_context(|| format!("no map `{MAP_PORT_STATS_META}`"))?;
    let mut meta: PerCpuArray<&mut MapData, PortStatsMeta> = PerCpuArray::try_from(map)?;
    if read_meta(&meta)?.since_unix_ns != 0 {
        return Ok(());
    }
    write_since(&mut meta, SystemTime::now(), false)
}

//! Every map the kernel programs use. Sizes here are defaults: the loader sizes the policy maps
//! from the policy (`EbpfLoader::map_max_entries`) and pins the shared ones.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_RDONLY},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use portguard_common::{
    Counter,
    counters::COUNTER_SLOTS,
    maps::{
        AUTO_FILTER_ENTRIES, AutoBlock, Bl6Key, ConnKey, EventBudget, FLOW_PORT_WORDS, FlowKey, FragKey,
        FragVerdict, LIMIT_COUNTER_SLOTS, LimitState, ManualBlock, NetKey, Offender, PORT_SOURCE_CACHE_SLOTS,
        PORT_TABLE_LEN, PortRule, PortSource, PortSourceKey, PortSourceSlot, PortStats, PortStatsMeta,
        RuleLimit, Runtime, SCAN_ADMIT_SLOTS, ScanKey, ScanState, SrcAllowKey,
    },
};

// --- One policy generation ---------------------------------------------------------------

#[map]
pub static PG_PORTS: Array<PortRule> = Array::with_max_entries(PORT_TABLE_LEN, 0);

#[map]
pub static PG_SRC_ALLOW: LpmTrie<SrcAllowKey, u16> = LpmTrie::with_max_entries(1, 0);

#[map]
pub static PG_BL4_INDEX: Array<u64> = Array::with_max_entries(65536, 0);

#[map]
pub static PG_BL4_RANGES: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static PG_BL6: HashMap<Bl6Key, u8> = HashMap::with_max_entries(1, 0);

/// See `portguard_common::maps::MAP_BL6_FILTER`; sized by the loader.
#[map]
pub static PG_BL6_FILTER: Array<u64> = Array::with_max_entries(1024, 0);

/// Indexed by rule number; sized by the loader.
#[map]
pub static PG_RULE_LIMITS: Array<RuleLimit> = Array::with_max_entries(1, 0);

#[map]
pub static PG_NEVER_BLOCK: LpmTrie<NetKey, u8> = LpmTrie::with_max_entries(1, 0);

// --- Shared by every generation (pinned) --------------------------------------------------

#[map]
pub static PG_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Mmapable so `stats` reads all 131072 counters without a syscall each.
#[map]
pub static PG_PORT_DROPS: Array<u64> = Array::with_max_entries(PORT_TABLE_LEN, BPF_F_MMAPABLE);

#[map]
pub static PG_FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Local ports the host has sent from (see `portguard_common::maps::MAP_FLOW_PORTS`).
#[map]
pub static PG_FLOW_PORTS: Array<u64> = Array::with_max_entries(FLOW_PORT_WORDS, 0);

#[map]
pub static PG_FRAGS: LruHashMap<FragKey, FragVerdict> = LruHashMap::with_max_entries(8192, 0);

#[map]
pub static PG_SCAN: LruHashMap<ScanKey, ScanState> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static PG_AUTO_BLOCK: LruHashMap<[u8; 16], AutoBlock> = LruHashMap::with_max_entries(65536, 0);

/// See `portguard_common::maps::MAP_AUTO_FILTER`.
#[map]
pub static PG_AUTO_FILTER: Array<u64> = Array::with_max_entries(AUTO_FILTER_ENTRIES, BPF_F_MMAPABLE);

#[map]
pub static PG_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// 256 KiB: about 600 packets, a few dozen blocks' evidence between two reads.
#[map]
pub static PG_EVIDENCE: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
pub static PG_MANUAL: LpmTrie<NetKey, ManualBlock> = LpmTrie::with_max_entries(65536, 0);

#[map]
pub static PG_LIMITS: Array<LimitState> = Array::with_max_entries(65536, BPF_F_MMAPABLE);

#[map]
pub static PG_OFFENDERS: LruHashMap<[u8; 16], Offender> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static PG_RULE_LIMITED: PerCpuArray<u64> = PerCpuArray::with_max_entries(LIMIT_COUNTER_SLOTS, 0);

#[map]
pub static PG_CONNS: HashMap<ConnKey, u64> = HashMap::with_max_entries(65536, 0);

#[map]
pub static PG_CONN_SOCKETS: HashMap<u64, ConnKey> = HashMap::with_max_entries(65536, 0);

#[map]
pub static PG_RULE_CONN_LIMITED: PerCpuArray<u64> = PerCpuArray::with_max_entries(LIMIT_COUNTER_SLOTS, 0);

/// See `portguard_common::maps::MAP_PORT_STATS`; sized by the loader (one table per shard).
#[map]
pub static PG_PORT_STATS: Array<PortStats> = Array::with_max_entries(PORT_TABLE_LEN, BPF_F_MMAPABLE);

#[map]
pub static PG_PORT_SOURCES: LruHashMap<PortSourceKey, PortSource> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static PG_PORT_STATS_META: PerCpuArray<PortStatsMeta> = PerCpuArray::with_max_entries(1, 0);

/// See `portguard_common::maps::MAP_PORT_SOURCE_CACHE`.
#[map]
pub static PG_PORT_SOURCE_CACHE: PerCpuArray<PortSourceSlot> =
    PerCpuArray::with_max_entries(PORT_SOURCE_CACHE_SLOTS, 0);

/// See `portguard_common::maps::MAP_PORT_SOURCE_FLUSHES`.
#[map]
pub static PG_PORT_SOURCE_FLUSHES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static PG_RUNTIME: Array<Runtime> = Array::with_max_entries(2, 0);

// --- Per-CPU scratch (not pinned, nothing to keep) ------------------------------------------

/// The parsed packet: slot 0 for XDP, slot 1 for TC egress. The BPF stack (512 bytes) cannot
/// hold it beside everything else.
pub const SCRATCH_XDP: u32 = 0;
pub const SCRATCH_TC: u32 = 1;

#[map]
pub static PG_PACKET: PerCpuArray<crate::parse::Packet> = PerCpuArray::with_max_entries(2, 0);

/// The coarse clock as the per-port statistics last read it on this CPU, and the tick
/// (`jiffies`) it was read in (see `portstats::tick_time`).
#[map]
pub static PG_TICK_TIME: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// A zero the verifier cannot know (see `opaque.rs`): writable by programs as far as the
/// verifier is concerned, but none writes it, and userspace may not (`BPF_F_RDONLY`).
#[map]
pub static PG_OPAQUE_ZERO: Array<u64> = Array::with_max_entries(1, BPF_F_RDONLY);

/// A zeroed `ScanState` is built here before insertion: too big for the stack.
#[map]
pub static PG_SCAN_TEMPLATE: PerCpuArray<ScanState> = PerCpuArray::with_max_entries(1, 0);

/// The source key being worked on (see `blocks::source_key`).
#[map]
pub static PG_SOURCE_KEY: PerCpuArray<ScanKey> = PerCpuArray::with_max_entries(1, 0);

/// The connection key being looked up by the packet path (see `conns::at_cap`).
#[map]
pub static PG_CONN_KEY: PerCpuArray<ConnKey> = PerCpuArray::with_max_entries(1, 0);

/// The details of the event being built (see `events::draft`).
#[map]
pub static PG_EVENT_DRAFT: PerCpuArray<crate::types::Details> = PerCpuArray::with_max_entries(1, 0);

/// First failures per source, this CPU's (see `scan.rs`): a keyed-hash-indexed slot per source,
/// overwritten by whichever source comes next. Per CPU, so a flood writes no shared line.
#[map]
pub static PG_SCAN_ADMIT: PerCpuArray<[u64; SCAN_ADMIT_SLOTS as usize]> = PerCpuArray::with_max_entries(1, 0);

/// See `scan::repeats_last_refusal`.
#[map]
pub static PG_LAST_REFUSAL: PerCpuArray<crate::types::LastRefusal> = PerCpuArray::with_max_entries(1, 0);

/// See `blocks::auto_blocked`.
#[map]
pub static PG_LAST_AUTO_BLOCK: PerCpuArray<crate::types::LastAutoBlock> = PerCpuArray::with_max_entries(1, 0);

/// The block the packet being judged is evidence for (see `evidence.rs`).
#[map]
pub static PG_EVIDENCE_NOTE: PerCpuArray<crate::types::EvidenceNote> = PerCpuArray::with_max_entries(1, 0);

/// Drop events this CPU may still send (refilled by the loader; shared, pinned).
#[map]
pub static PG_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

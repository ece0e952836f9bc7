//! Every map the kernel programs use. Sizes here are defaults: the loader sizes the policy maps
//! from the policy (`EbpfLoader::map_max_entries`) and pins the shared ones.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use portguard_common::{
    Counter,
    counters::COUNTER_SLOTS,
    maps::{
        Bitmap256, Bl6Key, FlowKey, FragKey, FragVerdict, PORT_TABLE_LEN, PortRule, SrcAllowKey,
    },
};

// --- One policy generation ---------------------------------------------------------------

#[map]
pub static PG_PORTS: Array<PortRule> = Array::with_max_entries(PORT_TABLE_LEN, 0);

#[map]
pub static PG_SRC_ALLOW: LpmTrie<SrcAllowKey, u16> = LpmTrie::with_max_entries(1, 0);

#[map]
pub static PG_BL4_WIDE: Array<u8> = Array::with_max_entries(65536, 0);

#[map]
pub static PG_BL4: HashMap<u32, Bitmap256> = HashMap::with_max_entries(1, 0);

#[map]
pub static PG_BL6: HashMap<Bl6Key, u8> = HashMap::with_max_entries(1, 0);

#[map]
pub static PG_NEVER_BLOCK: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1, 0);

// --- Shared by every generation (pinned) --------------------------------------------------

#[map]
pub static PG_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Mmapable so `stats` reads all 131072 counters without a syscall each.
#[map]
pub static PG_PORT_DROPS: Array<u64> = Array::with_max_entries(PORT_TABLE_LEN, BPF_F_MMAPABLE);

#[map]
pub static PG_FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static PG_FRAGS: LruHashMap<FragKey, FragVerdict> = LruHashMap::with_max_entries(8192, 0);

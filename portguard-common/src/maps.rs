//! Map names, keys and values.
//!
//! Addresses are always 16 bytes: IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`), so
//! one key type serves both families and an IPv4 prefix of length `n` is an IPv6 prefix of
//! length `96 + n`.

// Maps that belong to one policy generation: created fresh for every (re)load.
/// `Array<PortRule>`, indexed by `port_index(proto, port)`.
pub const MAP_PORTS: &str = "PG_PORTS";
/// `LpmTrie<SrcAllowKey, u16>`: sources a port with a `from` list admits; value is the rule.
pub const MAP_SRC_ALLOW: &str = "PG_SRC_ALLOW";
/// `Array<u64>` of 65536 entries, indexed by the top 16 bits of an IPv4 source: see
/// `bl4_index_entry`.
pub const MAP_BL4_INDEX: &str = "PG_BL4_INDEX";
/// `Array<u32>`: the blocked ranges within each /16, `start << 16 | end` over the low 16 bits
/// of the address, sorted and disjoint within a /16's segment (the index says where it is).
pub const MAP_BL4_RANGES: &str = "PG_BL4_RANGES";

/// `PG_BL4_INDEX` entry of a /16 blocked as a whole.
pub const BL4_WHOLE: u64 = 1 << 63;
/// Most ranges one /16 can need (every other address).
pub const BL4_MAX_RANGES_PER_16: u32 = 32768;

/// A `PG_BL4_INDEX` entry: the /16's ranges are `PG_BL4_RANGES[offset..offset + count]`.
#[inline(always)]
pub const fn bl4_index_entry(offset: u32, count: u32) -> u64 {
    (count as u64) << 32 | offset as u64
}

/// One `PG_BL4_RANGES` value.
#[inline(always)]
pub const fn bl4_range(start: u16, end: u16) -> u32 {
    (start as u32) << 16 | end as u32
}
/// `HashMap<Bl6Key, u8>`: IPv6 prefixes, probed for each length in `Config::bl6_prefix_lens`.
pub const MAP_BL6: &str = "PG_BL6";
/// `LpmTrie<NetKey, u8>`: sources never dropped by a blocklist or an automatic block.
pub const MAP_NEVER_BLOCK: &str = "PG_NEVER_BLOCK";

// Maps that outlive a policy generation: pinned and reused by every reload and restart.
/// `PerCpuArray<Counter>`, see `counters`.
pub const MAP_COUNTERS: &str = "PG_COUNTERS";
/// `Array<u64>`, indexed by `port_index(proto, port)`: drops (or would-drops) per port.
pub const MAP_PORT_DROPS: &str = "PG_PORT_DROPS";
/// `LruHashMap<FlowKey, u64>`: flows the host sent packets on, with the last time (ns).
pub const MAP_FLOWS: &str = "PG_FLOWS";
/// `LruHashMap<FragKey, FragVerdict>`: verdicts of first fragments.
pub const MAP_FRAGS: &str = "PG_FRAGS";

/// `LruHashMap<ScanKey, ScanState>`: per-source scan detection state, for sources admitted
/// by `PG_SCAN_ADMIT` (they failed on a second distinct port).
pub const MAP_SCAN: &str = "PG_SCAN";
/// `LruHashMap<[u8; 16], AutoBlock>`: sources blocked by scan detection or trap ports (IPv6
/// sources cut to the policy's `ipv6_prefix`).
pub const MAP_AUTO_BLOCK: &str = "PG_AUTO_BLOCK";
/// `RingBuf` of `Event`s.
pub const MAP_EVENTS: &str = "PG_EVENTS";
/// `RingBuf` of `EvidencePacket`s: the first packets of sources blocked automatically, with
/// their bytes (`[evidence]`); apart from `PG_EVENTS` so evidence cannot crowd out events.
pub const MAP_EVIDENCE: &str = "PG_EVIDENCE";
/// `LpmTrie<NetKey, ManualBlock>`: sources blocked by hand (`portguard block`).
pub const MAP_MANUAL: &str = "PG_MANUAL";
/// `Array<Runtime>` of one entry: state userspace keeps for the packet path.
pub const MAP_RUNTIME: &str = "PG_RUNTIME";
/// `Array<u64>` of `FLOW_PORT_WORDS`: one bit per local port (TCP, then UDP) the host has
/// sent from. A cheap first check before the flow table lookup.
pub const MAP_FLOW_PORTS: &str = "PG_FLOW_PORTS";
pub const FLOW_PORT_WORDS: u32 = 2 * 65536 / 64;

/// Word and bit of a local port in `PG_FLOW_PORTS`.
#[inline(always)]
pub const fn flow_port_bit(proto: u8, port: u16) -> (u32, u64) {
    let index = if proto == PROTO_UDP { 65536 + port as u32 } else { port as u32 };
    (index / 64, 1u64 << (index % 64))
}

/// `PerCpuArray<EventBudget>` of one entry: drop events each CPU may still send.
pub const MAP_EVENT_BUDGET: &str = "PG_EVENT_BUDGET";

/// Maps shared by every generation of an attachment.
pub const SHARED_MAPS: [&str; 24] = [
    MAP_EVENT_BUDGET,
    MAP_FLOW_PORTS,
    MAP_COUNTERS,
    MAP_PORT_DROPS,
    MAP_FLOWS,
    MAP_FRAGS,
    MAP_SCAN,
    MAP_AUTO_BLOCK,
    MAP_AUTO_FILTER,
    MAP_EVENTS,
    MAP_EVIDENCE,
    MAP_MANUAL,
    MAP_RUNTIME,
    MAP_LIMITS,
    MAP_RULE_LIMITED,
    MAP_OFFENDERS,
    MAP_CONNS,
    MAP_CONN_SOCKETS,
    MAP_RULE_CONN_LIMITED,
    MAP_PORT_STATS,
    MAP_PORT_SOURCES,
    MAP_PORT_STATS_META,
    MAP_PORT_SOURCE_CACHE,
    MAP_PORT_SOURCE_FLUSHES,
];

// The per-port tables are indexed by protocol: the numbers live in `net`.
pub use crate::net::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// Entries in `PG_PORTS` (and in each shard of `PG_PORT_DROPS`): one block of 65536 ports for
/// TCP, one for UDP.
pub const PORT_TABLE_LEN: u32 = 2 * 65536;

/// Most copies of the per-port drop table (16 MiB in all).
pub const MAX_PORT_DROP_SHARDS: u32 = 16;

/// The shard count for a machine with `cpus` CPUs: a power of two, at most 16.
pub fn port_drop_shards(cpus: u32) -> u32 {
    cpus.clamp(1, MAX_PORT_DROP_SHARDS).next_power_of_two().min(MAX_PORT_DROP_SHARDS)
}

/// Index into the per-port tables; `None` for protocols without ports.
#[inline(always)]
pub const fn port_index(proto: u8, port: u16) -> Option<u32> {
    match proto {
        PROTO_TCP => Some(port as u32),
        PROTO_UDP => Some(65536 + port as u32),
        _ => None,
    }
}

/// What the policy says about one destination port (`PortRule::action`; 0, the zeroed entry,
/// means no rule names the port and the policy's default applies).
pub const PORT_ALLOW: u8 = 1;
pub const PORT_DENY: u8 = 2;
/// Allowed only from the sources in `PG_SRC_ALLOW`.
pub const PORT_ALLOW_FROM: u8 = 3;

/// `PortRule::flags`: a trap port (whoever tries to open it gets blocked).
pub const PORT_FLAG_TRAP: u8 = 1;
/// `PortRule::flags`: a rule that opens the port limits new connections per source: the
/// packet path looks the deciding rule up in `PG_RULE_LIMITS` (ports without it pay nothing).
pub const PORT_FLAG_LIMITED: u8 = 2;

/// `Array<RuleLimit>`, indexed by rule number (one policy generation): the limits of the
/// rules that carry one (`limit = { ... }`); zeroed entries for the others.
pub const MAP_RULE_LIMITS: &str = "PG_RULE_LIMITS";
/// `Array<LimitState>` (shared, mmapable, `[limits] limited_sources` slots rounded up to a
/// power of two): each source's budget of new connections on each limited rule, in the slot a
/// keyed hash of (source, rule) picks (`Config::limit_slot_mask`). Direct-mapped rather than a
/// hash table: an admitted SYN costs a hash in registers and one array read, no helper call.
pub const MAP_LIMITS: &str = "PG_LIMITS";
/// `PerCpuArray<u64>` of `LIMIT_COUNTER_SLOTS` (shared): attempts refused by each limited
/// rule (`RuleLimit::slot`), applied or, in monitor mode, only counted. Zeroed by the loader
/// for every new generation (slots are assigned anew).
pub const MAP_RULE_LIMITED: &str = "PG_RULE_LIMITED";
/// Most rules of one policy that may carry a limit.
pub const MAX_LIMITED_RULES: u32 = 64;
pub const LIMIT_COUNTER_SLOTS: u32 = MAX_LIMITED_RULES;

/// A rule's limits. New connections per source, as a generic cell rate algorithm (a token
/// bucket kept as one timestamp): each admitted attempt moves the source's theoretical
/// arrival time `interval_ns` on; an attempt is refused while that time is more than
/// `tolerance_ns` ahead of now (`tolerance_ns = (burst - 1) * interval_ns`). Concurrent
/// connections per source: a new connection is refused while the source holds
/// `max_connections` (see `MAP_CONNS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleLimit {
    /// 0: the rule carries no rate limit.
    pub interval_ns: u64,
    pub tolerance_ns: u64,
    /// Index into `PG_RULE_LIMITED` and `PG_RULE_CONN_LIMITED`.
    pub slot: u32,
    /// 0: the rule caps no connections.
    pub max_connections: u32,
    /// The rule's identity in `ConnKey`: the same for the same rule (protocol, ports, `from`)
    /// in every generation, so a reload that renumbers rules keeps each source's count.
    pub conn_rule: u32,
    pub _pad: u32,
}

/// `HashMap<ConnKey, u64>` (shared, sized by `[limits] connected_sources`): the connections
/// each source holds on each rule that caps them, kept by the `sock_ops` program from the
/// host's own TCP state changes (established: +1, closed: -1). A count of `CONNS_RETIRED` is an
/// entry being deleted (it went to zero): nobody adds to it, a new connection inserts afresh.
pub const MAP_CONNS: &str = "PG_CONNS";
/// `HashMap<u64, ConnKey>` (shared, sized by `[limits] connections`): what each counted socket
/// (by socket cookie) added to, so its close takes exactly that away, whatever generation runs
/// then. Inserted before the count and deleted before the decrement: whichever program deletes
/// it decrements (two generations' programs may both see a socket for a moment).
pub const MAP_CONN_SOCKETS: &str = "PG_CONN_SOCKETS";
/// `PerCpuArray<u64>` of `LIMIT_COUNTER_SLOTS` (shared): connection attempts refused by each
/// capped rule (`RuleLimit::slot`), applied or, in monitor mode, only counted. Zeroed by the
/// loader for every new generation.
pub const MAP_RULE_CONN_LIMITED: &str = "PG_RULE_CONN_LIMITED";
/// A `PG_CONNS` count on its way out (see `MAP_CONNS`).
pub const CONNS_RETIRED: u64 = u64::MAX;

/// Key of the connections a source holds on a capped rule: the source's network (an IPv4
/// address, an IPv6 source cut to `ipv6_prefix`) and the rule's `RuleLimit::conn_rule`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub addr: [u8; 16],
    pub conn_rule: u32,
    pub _pad: u32,
}

/// A budget's slot in `PG_LIMITS`. It belongs to the source network (`blocks::source_words`:
/// an IPv4 address, an IPv6 source cut to `ipv6_prefix`) and rule `owner` names; another
/// source or rule hashed to the slot takes it over with a full burst (as a source pushed out of
/// an LRU table would come back). A zeroed slot belongs to nobody: rule numbers start at 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitState {
    /// The source network, as two address words.
    pub source: [u64; 2],
    /// `limit_owner(rule, generation)`.
    pub owner: u32,
    /// Attempts refused in the `[brute_force]` window.
    pub refused: u32,
    /// Theoretical arrival time of the next attempt (`bpf_ktime_get_coarse_ns` clock).
    pub tat_ns: u64,
    /// Start of the window the source's refused attempts on this rule are counted in (same
    /// clock; tumbling).
    pub window_start_ns: u64,
    /// 1: the source is in `never_block` (looked up once, when the slot is taken: a reload,
    /// which may change the list, starts every slot afresh).
    pub exempt: u32,
    pub _pad: u32,
}

/// Who a `LimitState` belongs to, besides its source: the rule and the low 16 bits of the
/// policy generation, so a reload (which may renumber rules) starts every budget afresh.
#[inline(always)]
pub const fn limit_owner(rule: u16, generation: u64) -> u32 {
    rule as u32 | (generation as u32) << 16
}

/// `LruHashMap<[u8; 16], Offender>` (shared, sized by `[limits] auto_blocks`): sources
/// `[brute_force]` has blocked, kept past their block so a repeat offender's next block is
/// longer (recidive). Keyed like `PG_AUTO_BLOCK`.
pub const MAP_OFFENDERS: &str = "PG_OFFENDERS";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offender {
    /// When the source's last `[brute_force]` block ends (`bpf_ktime_get_coarse_ns` clock).
    pub last_expires_ns: u64,
    /// Blocks in a row, each within `recidive_within` of the end of the one before (1: the
    /// first).
    pub blocks: u32,
    /// Prefix length of the network the key stands for (as `AutoBlock::prefix_len`).
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// `PORT_*`.
    pub action: u8,
    /// `PORT_FLAG_*`.
    pub flags: u8,
    /// 1-based index of the deciding rule in the policy (0: none); reported by `verify`.
    pub rule: u16,
}

/// Data of an `LpmTrie` key in `PG_SRC_ALLOW`: the first 32 bits (protocol, zero, port) are
/// always matched in full, so a key's prefix length is `32 + address prefix length`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcAllowKey {
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`: an IPv6 network never matches an IPv4 source.
    pub family: u8,
    /// Destination port, big endian (LPM keys compare bytes in order).
    pub port_be: [u8; 2],
    pub addr: [u8; 16],
}

/// Prefix bits of `SrcAllowKey` before the address.
pub const SRC_ALLOW_FIXED_BITS: u32 = 32;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Data of an `LpmTrie` key for networks of either family (`PG_NEVER_BLOCK`, `PG_MANUAL`): the
/// family byte is always matched, so a key's prefix length is `8 + prefix over the address`,
/// and `::/0` does not swallow IPv4-mapped addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetKey {
    pub family: u8,
    pub addr: [u8; 16],
}

pub const NET_KEY_FIXED_BITS: u32 = 8;

/// The family of a 16-byte address as the packet path stores it (IPv4-mapped means IPv4:
/// IPv6 packets with such sources are malformed).
#[inline(always)]
pub fn family_of(addr: &[u8; 16]) -> u8 {
    if addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
    {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

/// Masks keeping the first `len` bits of a 128-bit address split in two big-endian halves.
#[inline(always)]
pub const fn prefix_masks(len: u32) -> (u64, u64) {
    let len = if len > 128 { 128 } else { len };
    let hi = if len == 0 {
        0
    } else if len >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - len)
    };
    let lo = if len <= 64 {
        0
    } else if len == 128 {
        u64::MAX
    } else {
        u64::MAX << (128 - len)
    };
    (hi, lo)
}

/// Aligned, with the address first, so the packet path builds it from two words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bl6Key {
    /// The address with every bit past `prefix_len` cleared.
    pub addr: [u8; 16],
    pub prefix_len: u32,
    pub _pad: u32,
}

impl Bl6Key {
    pub fn new(addr: [u8; 16], prefix_len: u8) -> Self {
        Self { addr, prefix_len: u32::from(prefix_len), _pad: 0 }
    }

    /// From an address's words (`addr_words`): two word stores, not sixteen byte stores.
    #[inline(always)]
    pub fn from_words(words: [u64; 2], prefix_len: u32) -> Self {
        #[repr(C, align(8))]
        struct Words {
            addr: [u64; 2],
            prefix_len: u32,
            _pad: u32,
        }
        // SAFETY: same size, alignment and field offsets; every bit pattern is a valid key.
        unsafe { core::mem::transmute(Words { addr: words, prefix_len, _pad: 0 }) }
    }
}

/// `Array<u64>`, mmapable, shared like `PG_AUTO_BLOCK`: a filter of the networks blocked
/// automatically, so a source that is not blocked (every forged one in a flood) costs one bit
/// instead of an LRU hash lookup that misses the cache. Word 0 is the header (see
/// `auto_filter_half`); two halves of `AUTO_FILTER_WORDS` words follow, one of them consulted.
/// The packet path sets a network's bits in both halves, atomically, after inserting its block;
/// the loader refills the other half from the table now and then (size it for the table, zero
/// it, then OR in every block's bit) and makes it the consulted one. A bit is never missing
/// for a block in the table; bits of blocks gone (expired, evicted, lifted) only cost the
/// lookup until the next refill.
pub const MAP_AUTO_FILTER: &str = "PG_AUTO_FILTER";
/// Words in each half: room for 2^20 bits, 16 a block at the default `[limits] auto_blocks`.
pub const AUTO_FILTER_WORDS: u32 = 1 << 14;
pub const AUTO_FILTER_ENTRIES: u32 = 1 + 2 * AUTO_FILTER_WORDS;
pub const AUTO_FILTER_MAX_LOG2: u32 = 20;
/// A half uses only its first 2^(20 - shrink) bits, shrink at most this: a filter sized for the
/// blocks there are stays in the L1 cache, where the full 128 KiB half costs a cache miss per
/// forged source.
pub const AUTO_FILTER_MAX_SHRINK: u32 = 7;
/// Filter bits per block when the loader sizes a half (about 1.5% of unblocked sources then
/// pass to the hash lookup, see `auto_filter_probe`), counting twice the blocks there are plus this many, for the
/// blocks added before the next refill.
pub const AUTO_FILTER_BITS_PER_BLOCK: u64 = 16;
pub const AUTO_FILTER_HEADROOM: u64 = 512;

/// The header's layout: bit 0 the consulted half; bits 8-15 and 16-23 the shrink of half 0
/// and half 1; bits 32-63 the loader's own bookkeeping (the CLOCK_BOOTTIME second of the last
/// switch). A header of 0 (a new map) consults half 0, both halves at full size.
#[inline(always)]
pub const fn auto_filter_half(header: u64) -> u64 {
    header & 1
}

/// The shrink of `half` in `header`.
#[inline(always)]
pub const fn auto_filter_shrink(header: u64, half: u64) -> u32 {
    ((header >> (8 + 8 * (half & 1))) as u32) & AUTO_FILTER_MAX_SHRINK
}

/// `header` with `half`'s shrink set to `shrink`.
pub const fn auto_filter_with_shrink(header: u64, half: u64, shrink: u32) -> u64 {
    let shift = 8 + 8 * (half & 1);
    (header & !(0xff << shift)) | (((shrink & AUTO_FILTER_MAX_SHRINK) as u64) << shift)
}

/// The shrink a half gets for a table of `blocks` blocks.
pub const fn auto_filter_shrink_for(blocks: u64) -> u32 {
    let wanted = blocks
        .saturating_mul(2)
        .saturating_add(AUTO_FILTER_HEADROOM)
        .saturating_mul(AUTO_FILTER_BITS_PER_BLOCK);
    let mut log2 = AUTO_FILTER_MAX_LOG2 - AUTO_FILTER_MAX_SHRINK;
    while log2 < AUTO_FILTER_MAX_LOG2 && (1u64 << log2) < wanted {
        log2 += 1;
    }
    AUTO_FILTER_MAX_LOG2 - log2
}

/// Where a blocked network's address words (`addr_words`) sit in a half shrunk by `shrink`:
/// the word, and the two bits it sets in that word. Two bits in one word cost the same one load
/// as one bit and let about 1.5% of unblocked sources through to the hash lookup at 16 bits a
/// block, where one bit lets about 6% through.
#[inline(always)]
pub const fn auto_filter_probe(words: [u64; 2], shrink: u32) -> (u32, u64) {
    let mixed = words[0].wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ words[1].wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let hashed = mixed.wrapping_mul(0xff51_afd7_ed55_8ccd);
    let shift = 64 - AUTO_FILTER_MAX_LOG2 + (shrink & AUTO_FILTER_MAX_SHRINK);
    let bit = (hashed >> shift) as u32;
    // The second bit from the six bits just below the widest word index (bits 38-43).
    let second = (hashed >> (64 - AUTO_FILTER_MAX_LOG2 - 6)) & 63;
    (bit >> 6, (1u64 << (bit & 63)) | (1u64 << second))
}

/// The map index of word `word` (from `auto_filter_probe`) in half `half` (0 or 1).
#[inline(always)]
pub const fn auto_filter_slot(half: u64, word: u32) -> u32 {
    1 + (half as u32 & 1) * AUTO_FILTER_WORDS + word
}

/// An address's 16 bytes as two words in memory order (native-endian loads of bytes 0-7 and
/// 8-15): how the packet path holds addresses, and so what the IPv6 blocklist's pre-filter
/// hashes.
#[inline(always)]
#[allow(clippy::many_single_char_names, reason = "the sixteen bytes, in order")]
pub const fn addr_words(addr: &[u8; 16]) -> [u64; 2] {
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *addr;
    [u64::from_ne_bytes([a, b, c, d, e, f, g, h]), u64::from_ne_bytes([i, j, k, l, m, n, o, p])]
}

/// `LpmTrie`-free pre-filter of the IPv6 blocklist (`Array<u64>`, a bit per slot): a listed
/// prefix sets the bit `bl6_filter_slot` picks for it, so a source whose prefixes hit no set
/// bit (nearly every source not listed) skips the hash lookups. A collision only costs the
/// lookup the filter would have spared.
pub const MAP_BL6_FILTER: &str = "PG_BL6_FILTER";
/// Filter bits per listed prefix (about 6% of unlisted sources pass to the hash lookup when
/// the list is full), within these bounds (one cache line to 2 MiB: a short list's filter
/// stays in the L1 cache under a flood of random sources).
pub const BL6_FILTER_BITS_PER_PREFIX: u64 = 16;
pub const BL6_FILTER_MIN_LOG2: u32 = 9;
pub const BL6_FILTER_MAX_LOG2: u32 = 24;

/// The filter's size, as log2 of its bits, for `prefixes` listed prefixes.
pub const fn bl6_filter_log2(prefixes: u64) -> u32 {
    let wanted = prefixes.saturating_mul(BL6_FILTER_BITS_PER_PREFIX);
    let mut log2 = BL6_FILTER_MIN_LOG2;
    while log2 < BL6_FILTER_MAX_LOG2 && (1u64 << log2) < wanted {
        log2 += 1;
    }
    log2
}

/// The filter word and bit for a masked prefix (`words`, see `addr_words`) of length
/// `prefix_len`; `shift` is 64 minus the filter's log2 bits (`Config::bl6_filter_shift`).
/// Multiply-shift hashing: a few instructions, no lookup.
#[inline(always)]
pub const fn bl6_filter_slot(words: [u64; 2], prefix_len: u32, shift: u32) -> (u32, u64) {
    let mixed = words[0].wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ words[1].wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ (prefix_len as u64).wrapping_mul(0x1656_67b1_9e37_79f9);
    let bit = mixed.wrapping_mul(0xff51_afd7_ed55_8ccd) >> shift;
    ((bit >> 6) as u32, 1u64 << (bit & 63))
}

/// `prefix_masks` as the packet path applies them: to an address's words in memory order.
#[inline(always)]
pub const fn prefix_mask_words(len: u32) -> [u64; 2] {
    let (hi, lo) = prefix_masks(len);
    [u64::from_ne_bytes(hi.to_be_bytes()), u64::from_ne_bytes(lo.to_be_bytes())]
}

/// A flow as seen from this host: `remote` is the peer, `local` this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub remote: [u8; 16],
    pub local: [u8; 16],
    pub remote_port: u16,
    pub local_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragVerdict {
    /// When the first fragment was seen (`bpf_ktime_get_coarse_ns`).
    pub seen_ns: u64,
    /// The first fragment's `Reason`.
    pub reason: u8,
    pub _pad: [u8; 7],
}

/// Bits in each of `ScanState`'s port sets (a keyed hash picks a port's bit, see
/// `ScanState`).
pub const SCAN_PORT_BITS: u32 = 512;

/// Slots of the per-CPU admission table in front of `PG_SCAN` (a power of two). 32 KiB, the
/// largest per-CPU map value, as one value: one cache line per lookup, in memory that stays
/// in the CPU's cache (65536 one-slot values cost two cache misses per refused attempt under a
/// spoofed flood: the value pointer, then the value).
pub const SCAN_ADMIT_SLOTS: u32 = 1 << 12;

/// `ScanState::alerted` bits: a scan was reported in the current short window, or in the
/// current long (slow-scan) window.
pub const ALERTED_FAST: u8 = 1;
pub const ALERTED_SLOW: u8 = 2;

/// Key of the per-source scan state: the source (an IPv6 source cut to the policy's
/// `ipv6_prefix`) and the protocol, so a TCP scan and a UDP scan are counted and reported
/// apart. Aligned so the packet path can read the address as two words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScanKey {
    pub addr: [u8; 16],
    pub proto: u8,
    pub _pad: [u8; 7],
}

/// Per-source, per-protocol scan detection state: two tumbling windows, a short one
/// (`scan_window_ns`) and a long one for slow scans (`slow_window_ns`), each with a set of
/// the destination ports refused in it. A port's bit in a set is picked by a hash keyed with
/// `Runtime::scan_key` and the window's start, so nobody outside the host can choose ports
/// that share bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanState {
    pub window_start_ns: u64,
    pub slow_start_ns: u64,
    pub last_drop_event_ns: u64,
    /// Port set of the short window.
    pub ports: [u64; 8],
    /// Port set of the long window.
    pub slow_ports: [u64; 8],
    /// Bits set in `ports` and `slow_ports`.
    pub bits: u16,
    pub slow_bits: u16,
    /// `ALERTED_*`.
    pub alerted: u8,
    /// Ports in `exact_ports`.
    pub exact: u8,
    /// Distinct ports of the short window by `ScanKind` (saturating).
    pub kinds: [u8; 8],
    /// The first `SCAN_EXACT_PORTS` distinct ports of the short window, in order: thresholds
    /// up to that many are counted exactly (no shared bits), and the first are the sample.
    pub exact_ports: [u16; SCAN_EXACT_PORTS],
    pub _pad: [u8; 2],
}

/// Distinct ports the short window counts exactly before it relies on the port set's bits.
pub const SCAN_EXACT_PORTS: usize = 32;

/// In a scan event's `count` and an automatic block's `port`: the count is exact (otherwise
/// it is the bits a port set had, for the reader to estimate the ports from).
pub const SCAN_COUNT_EXACT_EVENT: u32 = 1 << 31;
pub const SCAN_COUNT_EXACT_BLOCK: u16 = 1 << 15;

/// Why a source was blocked automatically.
pub const CAUSE_SCAN: u8 = 1;
pub const CAUSE_TRAP: u8 = 2;
/// A slow scan: the long window's threshold was crossed.
pub const CAUSE_SLOW_SCAN: u8 = 3;
/// `[brute_force]`: refused by a rule's rate limit too often (`limit = { new_per_source }`).
pub const CAUSE_RATE_LIMIT: u8 = 4;
/// `[brute_force]`: refused by a rule's cap on concurrent connections too often.
pub const CAUSE_CONNECTION_LIMIT: u8 = 5;
/// `[brute_force]` again within `recidive_within` of its last block: a longer block (its
/// event says which limit).
pub const CAUSE_RECIDIVE: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoBlock {
    /// `bpf_ktime_get_coarse_ns` when the block was set.
    pub added_ns: u64,
    /// The block stops matching at this time (same clock).
    pub expires_ns: u64,
    /// `CAUSE_*`.
    pub cause: u8,
    /// `ScanKind` of the scan, or the protocol of the trap port or of the limited port.
    pub kind: u8,
    /// Trap port, the distinct ports that made the scan, or the port whose limit refused.
    pub port: u16,
    /// Prefix length of the blocked network (the key is its address): 32 for IPv4
    /// sources, the policy's `ipv6_prefix` for IPv6 ones.
    pub prefix_len: u8,
    /// Packets of this block still to be copied as evidence (`[evidence]`): set when the
    /// block is made, spent by the packet path (the block's packets skip the per-CPU memo
    /// until it is 0).
    pub evidence_left: u8,
    pub _pad: [u8; 2],
    /// When a drop event was last sent for this source (one per second at most).
    pub last_event_ns: u64,
}

/// A block set by hand.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManualBlock {
    /// Stops matching at this `bpf_ktime_get_coarse_ns` time; 0: until unblocked.
    pub expires_ns: u64,
    /// When a drop event was last sent for a source in this block (one per second at most).
    pub last_event_ns: u64,
}

/// State shared by every generation outside the policy, in `PG_RUNTIME`. Two entries with
/// one writer each, because a map value is always written whole: `RUNTIME_USER` is written
/// by userspace, `RUNTIME_KERNEL` by the packet path (and cleared by the loader, see
/// `Runtime::auto_blocks`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    /// `RUNTIME_USER`: entries in `PG_MANUAL`; the lookup is skipped while there are none.
    pub manual_blocks: u32,
    /// `RUNTIME_KERNEL`: nonzero once the packet path has added an automatic block; the
    /// `PG_AUTO_BLOCK` lookup is skipped while it is zero. The loader clears it when that
    /// table is empty (and sets it again if a block raced in).
    pub auto_blocks: u32,
    /// `RUNTIME_USER`: the random key of the scan detector's hashes, chosen once when the
    /// shared maps are created (zero until then: detection still works, unkeyed).
    pub scan_key: [u64; 2],
    /// `RUNTIME_USER`: bumped whenever userspace lifts automatic blocks (`unblock`): the packet
    /// path's per-CPU memo of the last blocked source it saw holds only while this is unchanged.
    pub auto_blocks_lifted: u32,
    pub _pad: u32,
}

pub const RUNTIME_USER: u32 = 0;
pub const RUNTIME_KERNEL: u32 = 1;

/// A CPU's budget of drop events. The loader refills `tokens` every second (to the policy's
/// `drop_events_per_second`); the packet path spends one per drop event and counts the drops
/// it could not report. No clock read on the packet path, and no drop events at all while no
/// loader reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub tokens: u32,
    /// Trap-port blocks this CPU may still add, and blocks of detected scanners: each refilled
    /// to the policy's `[limits] new_blocks_per_second`, divided among CPUs. Apart, so a
    /// spoofed-source flood to a trap port (one forged packet a block) cannot spend what real
    /// scanners (many refused ports a block) need.
    pub trap_block_tokens: u32,
    pub scan_block_tokens: u32,
    pub _pad: u32,
    /// Drop events held back for lack of tokens.
    pub suppressed: u64,
}

// --- Per-port statistics (`portguard learn`, baselines) ------------------------------------

/// `Array<PortStats>` (shared, mmapable): inbound TCP and UDP traffic per destination port, in
/// `Config::port_drop_shards` copies of the port table like `PG_PORT_DROPS` (each CPU adds to
/// copy `cpu % shards`), indexed `shard * PORT_TABLE_LEN + port_index(proto, port)`. Packets
/// of sources dropped for who they are (blocklist, manual and automatic blocks) are not
/// counted: they were dropped before the port policy looked at them.
pub const MAP_PORT_STATS: &str = "PG_PORT_STATS";
/// `LruHashMap<PortSourceKey, PortSource>` (shared, sized by `[limits] port_sources`): who
/// opens connections to each port, by source network. Written only by new connections (a TCP
/// SYN without ACK) and UDP datagrams, never by the other segments of a connection; those the
/// policy refuses only in monitor mode (enforcing, a flood to a closed port writes nothing).
pub const MAP_PORT_SOURCES: &str = "PG_PORT_SOURCES";
/// `PerCpuArray<PortStatsMeta>` of one entry: what tells a reader how far the statistics go
/// back and whether `PG_PORT_SOURCES` has lost entries.
pub const MAP_PORT_STATS_META: &str = "PG_PORT_STATS_META";
/// `PerCpuArray<PortSourceSlot>` of `PORT_SOURCE_CACHE_SLOTS`: each CPU's direct-mapped cache
/// in front of `PG_PORT_SOURCES`. A new connection whose (port, network) holds its slot costs
/// an array entry and plain adds; any other takes the slot, first adding what the slot held
/// to `PG_PORT_SOURCES`. So the source table is `PG_PORT_SOURCES` plus every CPU's slots,
/// which a reader merges (counts summed, earliest first seen, latest last seen).
pub const MAP_PORT_SOURCE_CACHE: &str = "PG_PORT_SOURCE_CACHE";
/// `PerCpuArray<u64>` of one entry: each CPU's count of slot changes in
/// `PG_PORT_SOURCE_CACHE`, odd while one is under way (a sequence lock): a reader that saw
/// the same even counts before and after reading both tables read them whole and counted
/// nothing twice.
pub const MAP_PORT_SOURCE_FLUSHES: &str = "PG_PORT_SOURCE_FLUSHES";

/// Traffic of one kind to one port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTraffic {
    pub packets: u64,
    pub bytes: u64,
    /// New connections: TCP SYNs without ACK; for UDP, every datagram.
    pub connections: u64,
}

/// One port's `PG_PORT_STATS` entry (one shard's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// What the policy let through.
    pub accepted: PortTraffic,
    /// What it dropped or, in monitor mode, would have dropped.
    pub refused: PortTraffic,
}

/// IPv4 sources are summarised by their /24 (`PortSourceKey::prefix_len` says which
/// network); IPv6 sources by the policy's `ipv6_prefix`, as the detectors count them.
pub const PORT_SOURCE_V4_PREFIX: u8 = 24;

/// A source network's connections to a port.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSourceKey {
    /// The network's address (IPv4-mapped for IPv4), host bits zero.
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    /// Of the address as written (IPv4: 24, counted within the mapped address's last 32 bits).
    pub prefix_len: u8,
    pub _pad: u32,
}

impl PortSourceKey {
    /// The key as three words, what `port_source_slot` hashes and a cache slot compares.
    #[inline(always)]
    pub fn words(&self) -> [u64; 3] {
        // SAFETY: 24 bytes of plain data, 8-aligned.
        unsafe { *core::ptr::from_ref(self).cast::<[u64; 3]>() }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSource {
    /// New connections (TCP SYNs without ACK, UDP datagrams), admitted or refused.
    pub connections: u64,
    /// Of which the policy would have dropped (monitor mode; enforcing, refused attempts are
    /// not summarised by source).
    pub refused: u64,
    /// Bytes of the frames counted in `connections` (for UDP, every datagram's; for TCP only
    /// the SYNs').
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns` of the first and the last of them.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

/// One CPU's `PG_PORT_STATS_META`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStatsMeta {
    /// Entries this CPU added to `PG_PORT_SOURCES`: more added than the table holds means the
    /// LRU has pushed some out.
    pub sources_added: u64,
    /// Written by userspace (the same in every CPU's copy): when counting began, the maps'
    /// creation or the last reset, as nanoseconds since the Unix epoch.
    pub since_unix_ns: u64,
}

/// Slots of each CPU's `PG_PORT_SOURCE_CACHE` (a power of two: 64 KiB a CPU). Enough for the
/// networks a busy service sees at once to keep their slots; a source network that shares its
/// slot with another costs the `PG_PORT_SOURCES` path when they alternate, as without a cache.
pub const PORT_SOURCE_CACHE_SLOTS: u32 = 1024;

/// One slot of `PG_PORT_SOURCE_CACHE`: what this CPU counted for `key` since it took the slot
/// (`source.connections` is 0 in an empty slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSourceSlot {
    pub key: PortSourceKey,
    pub source: PortSource,
}

/// The slot of `PG_PORT_SOURCE_CACHE` for a key, from its three words (`PortSourceKey` read
/// as `[u64; 3]`): a multiplicative hash, no secret (a sender who picks colliding sources
/// only gets the uncached path, which every forged source takes anyway).
#[inline(always)]
pub fn port_source_slot(words: [u64; 3]) -> u32 {
    let mixed =
        (words[0] ^ words[1].rotate_left(21) ^ words[2].rotate_left(42)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> (64 - PORT_SOURCE_CACHE_SLOTS.trailing_zeros())) as u32
}

/// `::ffff:0:0/96`, the prefix of IPv4-mapped addresses.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

const _: () = assert!(size_of::<PortRule>() == 4);
const _: () = assert!(size_of::<RuleLimit>() == 32);
const _: () = assert!(size_of::<ConnKey>() == 24);
const _: () = assert!(size_of::<LimitState>() == 48);
const _: () = assert!(size_of::<Offender>() == 16);
const _: () = assert!(size_of::<SrcAllowKey>() == 20);
const _: () = assert!(size_of::<Bl6Key>() == 24);
const _: () = assert!(size_of::<NetKey>() == 17);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FragKey>() == 40);
const _: () = assert!(size_of::<FragVerdict>() == 16);
const _: () = assert!(size_of::<ScanState>() == 232);
const _: () = assert!(size_of::<AutoBlock>() == 32);
const _: () = assert!(size_of::<ManualBlock>() == 16);
const _: () = assert!(size_of::<Runtime>() == 32);
const _: () = assert!(size_of::<ScanKey>() == 24);
const _: () = assert!(size_of::<EventBudget>() == 24);
const _: () = assert!(size_of::<PortStats>() == 48);
const _: () = assert!(size_of::<PortSourceKey>() == 24);
const _: () = assert!(size_of::<PortSource>() == 40);
const _: () = assert!(size_of::<PortStatsMeta>() == 16);
const _: () = assert!(size_of::<PortSourceSlot>() == 64);
const _: () = assert!(PORT_SOURCE_CACHE_SLOTS.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for RuleLimit {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for LimitState {}
    unsafe impl aya::Pod for Offender {}
    unsafe impl aya::Pod for SrcAllowKey {}
    unsafe impl aya::Pod for NetKey {}
    unsafe impl aya::Pod for Bl6Key {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragVerdict {}
    unsafe impl aya::Pod for ScanState {}
    unsafe impl aya::Pod for ScanKey {}
    unsafe impl aya::Pod for AutoBlock {}
    unsafe impl aya::Pod for ManualBlock {}
    unsafe impl aya::Pod for Runtime {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for PortStats {}
    unsafe impl aya::Pod for PortSourceKey {}
    unsafe impl aya::Pod for PortSource {}
    unsafe impl aya::Pod for PortStatsMeta {}
    unsafe impl aya::Pod for PortSourceSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_index_puts_tcp_then_udp_and_nothing_else() {
        assert_eq!(port_index(PROTO_TCP, 0), Some(0));
        assert_eq!(port_index(PROTO_TCP, 65535), Some(65535));
        assert_eq!(port_index(PROTO_UDP, 0), Some(65536));
        assert_eq!(port_index(PROTO_UDP, 65535), Some(PORT_TABLE_LEN - 1));
        assert_eq!(port_index(PROTO_ICMP, 80), None);
        assert_eq!(port_index(PROTO_ICMPV6, 80), None);
    }

    #[test]
    fn flow_port_bits_are_distinct_and_inside_the_map() {
        assert_eq!(flow_port_bit(PROTO_TCP, 0), (0, 1));
        assert_eq!(flow_port_bit(PROTO_TCP, 65), (1, 1 << 1));
        assert_eq!(flow_port_bit(PROTO_TCP, 65535), (1023, 1 << 63));
        assert_eq!(flow_port_bit(PROTO_UDP, 0), (1024, 1));
        assert_eq!(flow_port_bit(PROTO_UDP, 65535), (FLOW_PORT_WORDS - 1, 1 << 63));
        // TCP and UDP of one port never share a bit.
        assert_ne!(flow_port_bit(PROTO_TCP, 53), flow_port_bit(PROTO_UDP, 53));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        assert_eq!(family_of(&v4_mapped([192, 0, 2, 1])), FAMILY_V4);
        assert_eq!(family_of(&v4_mapped([0, 0, 0, 0])), FAMILY_V4);
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[2] = 0x0d;
        v6[3] = 0xb8;
        assert_eq!(family_of(&v6), FAMILY_V6);
        // ::ffff:0:0/96 only: one bit off makes it IPv6.
        let mut near = v4_mapped([192, 0, 2, 1]);
        near[9] = 1;
        assert_eq!(family_of(&near), FAMILY_V6);
        assert_eq!(family_of(&[0; 16]), FAMILY_V6);
        assert_eq!(v4_mapped([1, 2, 3, 4])[..12], V4_MAPPED_PREFIX);
    }

    #[test]
    fn port_drop_shards_are_powers_of_two_up_to_the_cap() {
        assert_eq!(port_drop_shards(0), 1);
        assert_eq!(port_drop_shards(1), 1);
        assert_eq!(port_drop_shards(2), 2);
        assert_eq!(port_drop_shards(3), 4);
        assert_eq!(port_drop_shards(12), 16);
        assert_eq!(port_drop_shards(16), 16);
        assert_eq!(port_drop_shards(u32::MAX), MAX_PORT_DROP_SHARDS);
        for cpus in 0..200 {
            let shards = port_drop_shards(cpus);
            assert!(shards.is_power_of_two() && shards <= MAX_PORT_DROP_SHARDS);
            assert!(shards >= cpus.min(MAX_PORT_DROP_SHARDS));
        }
    }

    #[test]
    fn prefix_masks_keep_the_first_bits() {
        assert_eq!(prefix_masks(0), (0, 0));
        assert_eq!(prefix_masks(1), (1 << 63, 0));
        assert_eq!(prefix_masks(48), (0xffff_ffff_ffff_0000, 0));
        assert_eq!(prefix_masks(64), (u64::MAX, 0));
        assert_eq!(prefix_masks(96), (u64::MAX, 0xffff_ffff_0000_0000));
        assert_eq!(prefix_masks(128), (u64::MAX, u64::MAX));
        assert_eq!(prefix_masks(200), (u64::MAX, u64::MAX), "clamped to 128");
        for len in 0..=128u32 {
            let (hi, lo) = prefix_masks(len);
            assert_eq!(hi.count_ones() + lo.count_ones(), len);
            // Masks over memory-order words cut the same bytes as the big-endian masks.
            let words = prefix_mask_words(len);
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&words[0].to_ne_bytes());
            bytes[8..].copy_from_slice(&words[1].to_ne_bytes());
            assert_eq!(u128::from_be_bytes(bytes), (u128::from(hi) << 64) | u128::from(lo), "/{len}");
        }
    }

    #[test]
    fn address_words_are_memory_order() {
        let addr = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        let words = addr_words(&addr);
        assert_eq!(words[0].to_ne_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(words[1].to_ne_bytes(), [9, 10, 11, 12, 13, 14, 15, 16]);
        let key = Bl6Key::from_words(words, 48);
        assert_eq!(key, Bl6Key::new(addr, 48));
    }

    #[test]
    fn bl6_filter_sizes_and_slots_stay_in_bounds() {
        assert_eq!(bl6_filter_log2(0), BL6_FILTER_MIN_LOG2);
        assert_eq!(bl6_filter_log2(1), BL6_FILTER_MIN_LOG2);
        assert_eq!(bl6_filter_log2(1 << 20), BL6_FILTER_MAX_LOG2);
        assert_eq!(bl6_filter_log2(u64::MAX), BL6_FILTER_MAX_LOG2);
        // 1000 prefixes want 16000 bits: 2^14.
        assert_eq!(bl6_filter_log2(1000), 14);
        for log2 in [BL6_FILTER_MIN_LOG2, 14, BL6_FILTER_MAX_LOG2] {
            let words = 1u32 << (log2 - 6);
            for seed in 0..500u64 {
                let address = [seed.wrapping_mul(0x9e37_79b9), !seed];
                let (word, bit) = bl6_filter_slot(address, (seed % 129) as u32, 64 - log2);
                assert!(word < words, "word {word} of {words}");
                assert_eq!(bit.count_ones(), 1);
            }
        }
        // The same prefix always lands on the same bit; its length is part of the hash.
        let words = addr_words(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bl6_filter_slot(words, 32, 50), bl6_filter_slot(words, 32, 50));
        let spread =
            (0..64u32).filter(|len| bl6_filter_slot(words, *len, 40) != bl6_filter_slot(words, 32, 40));
        assert!(spread.count() > 50, "lengths spread over the filter");
    }

    #[test]
    fn auto_filter_header_holds_each_half_apart() {
        assert_eq!(auto_filter_half(0), 0);
        assert_eq!(auto_filter_half(1), 1);
        let header = auto_filter_with_shrink(auto_filter_with_shrink(1, 0, 3), 1, 7);
        assert_eq!(auto_filter_half(header), 1);
        assert_eq!(auto_filter_shrink(header, 0), 3);
        assert_eq!(auto_filter_shrink(header, 1), 7);
        assert_eq!(
            auto_filter_shrink(auto_filter_with_shrink(header, 0, 0x63), 0),
            0x63 & AUTO_FILTER_MAX_SHRINK
        );
        assert_eq!(auto_filter_shrink_for(0), AUTO_FILTER_MAX_SHRINK);
        assert_eq!(auto_filter_shrink_for(u64::MAX), 0);
        for seed in 0..1000u64 {
            let words = [seed.wrapping_mul(0x9e37_79b9), !seed];
            for shrink in [0, 3, AUTO_FILTER_MAX_SHRINK] {
                let (word, mask) = auto_filter_probe(words, shrink);
                assert!(word < (1 << (AUTO_FILTER_MAX_LOG2 - shrink)) / 64, "word {word} at shrink {shrink}");
                assert!((1..=2).contains(&mask.count_ones()));
            }
        }
        // Two distinct bits nearly always.
        let pairs = (0..1000u64).filter(|seed| auto_filter_probe([*seed, 3], 0).1.count_ones() == 2).count();
        assert!(pairs > 950, "{pairs} of 1000 probes set two bits");
        assert_eq!(auto_filter_slot(1, AUTO_FILTER_WORDS - 1), AUTO_FILTER_ENTRIES - 1);
        assert_eq!(auto_filter_slot(0, 0), 1);
    }

    #[test]
    fn bl4_entries_pack_offset_count_and_ranges() {
        assert_eq!(bl4_index_entry(5, 3), 3 << 32 | 5);
        assert_eq!(bl4_range(0x0100, 0x01ff), 0x0100_01ff);
        assert_eq!(bl4_index_entry(u32::MAX, BL4_MAX_RANGES_PER_16) & BL4_WHOLE, 0);
    }
}

//! The per-policy configuration, written into the kernel object as a read-only global
//! (`PG_CONFIG`) when it is loaded. A new policy means a new program load, so the verifier sees
//! these values as constants and prunes the branches a policy does not use.

/// Drop verdicts are counted as "would drop" and the packet passes.
pub const FLAG_MONITOR: u32 = 1 << 0;
/// Ports no rule names are allowed (otherwise denied).
pub const FLAG_DEFAULT_ALLOW: u32 = 1 << 1;
/// Packets too short or malformed to parse pass (otherwise dropped).
pub const FLAG_MALFORMED_PASS: u32 = 1 << 2;
/// Non-first fragments whose first fragment was never seen pass (otherwise dropped).
pub const FLAG_FRAG_UNSEEN_PASS: u32 = 1 << 3;
/// ICMP (v4) messages other than errors and echo replies are dropped.
pub const FLAG_ICMP_DENY: u32 = 1 << 4;
/// ICMPv6 messages other than errors, echo replies, neighbour discovery and MLD are dropped.
pub const FLAG_ICMPV6_DENY: u32 = 1 << 5;
/// IP protocols other than TCP, UDP, ICMP and ICMPv6 are dropped.
pub const FLAG_OTHER_DENY: u32 = 1 << 6;
/// TCP segments that cannot open a connection (no SYN, or SYN+ACK) pass without a flow lookup.
pub const FLAG_TCP_NON_SYN_PASS: u32 = 1 << 7;
/// The policy has an IPv4 source blocklist.
pub const FLAG_HAS_BLOCKLIST4: u32 = 1 << 8;
/// The policy has an IPv6 source blocklist.
pub const FLAG_HAS_BLOCKLIST6: u32 = 1 << 9;
/// The policy has `never_block` networks.
pub const FLAG_HAS_NEVER_BLOCK: u32 = 1 << 10;

/// Scan detection counts negative attempts per source (`[scan_detection]`).
pub const FLAG_SCAN_DETECT: u32 = 1 << 12;
/// A detected scanner is blocked for `scan_block_ns` (otherwise only reported).
pub const FLAG_SCAN_BLOCK: u32 = 1 << 13;
/// Ports flagged `PORT_FLAG_TRAP` block whoever tries to open them (`[trap_ports]`).
pub const FLAG_TRAPS: u32 = 1 << 14;
/// Automatic blocks exist in this policy's world: consult `PG_AUTO_BLOCK` on every packet.
pub const FLAG_AUTO_BLOCK: u32 = 1 << 15;

/// A `never_block` IPv6 network is narrower than `ipv6_prefix`: an automatic block of an IPv6
/// network may cover exempt sources, so a hit checks `never_block` again.
pub const FLAG_NEVER_BLOCK_INSIDE_V6_NET: u32 = 1 << 16;
/// Every CPU has a shard of `PG_PORT_DROPS` to itself: plain adds, no atomic instruction.
pub const FLAG_PORT_DROPS_PER_CPU: u32 = 1 << 17;
/// Some rule carries a per-source limit (`limit = { ... }`): ports flagged
/// `PORT_FLAG_LIMITED` consult `PG_RULE_LIMITS`.
pub const FLAG_RATE_LIMITS: u32 = 1 << 18;
/// `[brute_force]`: a source refused by a rule's limit `brute_force_after` times within
/// `brute_force_window_ns` is blocked.
pub const FLAG_BRUTE_FORCE: u32 = 1 << 19;
/// Some rule caps concurrent connections per source (`connections_per_source`): the
/// `sock_ops` program counts connections, and SYNs to ports flagged `PORT_FLAG_LIMITED` are
/// checked against the count.
pub const FLAG_CONN_LIMITS: u32 = 1 << 20;

/// Most distinct IPv6 prefix lengths the blocklist probes, longest first.
pub const MAX_BL6_PREFIX_LENS: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Number of valid entries in `bl6_prefix_lens`.
    pub bl6_prefix_count: u32,
    /// IPv6 blocklist prefix lengths present in `PG_BL6`, longest first.
    pub bl6_prefix_lens: [u8; MAX_BL6_PREFIX_LENS],
    /// How long a recorded outbound UDP flow admits replies.
    pub udp_reply_timeout_ns: u64,
    /// How long a first fragment's verdict applies to the rest of its datagram.
    pub frag_timeout_ns: u64,
    /// Policy generation, bumped on every reload (`status` reads it from the loader's state;
    /// kept here so a dumped program says which generation it is).
    pub generation: u64,
    /// Bits of a short-window port set that make a scan: the number of bits `threshold`
    /// distinct ports set on average (the loader computes it), so hash collisions neither
    /// delay nor hasten detection on average.
    pub scan_threshold_bits: u32,
    /// The same for the long window; 0: slow-scan detection off.
    pub slow_threshold_bits: u32,
    /// Length of the short scan detection window (tumbling).
    pub scan_window_ns: u64,
    /// Length of the long (slow-scan) window (tumbling).
    pub slow_window_ns: u64,
    /// How long a detected scanner stays blocked.
    pub scan_block_ns: u64,
    /// How long a trap port hit blocks its source.
    pub trap_block_ns: u64,
    /// The mask that cuts an IPv6 source to the network scan detection counts
    /// and automatic blocks block (`ipv6_prefix`).
    pub v6_source_mask: [u8; 16],
    /// `PG_PORT_DROPS` holds this many copies of the port table (a power of two); each CPU
    /// adds to copy `cpu % shards`, so CPUs do not fight over one cache line in a flood.
    pub port_drop_shards: u32,
    /// The prefix length `v6_source_mask` keeps.
    pub v6_source_prefix: u32,
    /// The short window's threshold in ports, counted exactly when it is at most
    /// `SCAN_EXACT_PORTS`; above that, `scan_threshold_bits` decides.
    pub scan_threshold_ports: u32,
    /// 64 minus log2 of `PG_BL6_FILTER`'s bits (see `maps::bl6_filter_slot`).
    pub bl6_filter_shift: u32,
    /// `bl6_prefix_lens` as masks over an address's words (`maps::prefix_mask_words`).
    pub bl6_masks: [[u64; 2]; MAX_BL6_PREFIX_LENS],
    /// `[brute_force]`: refused attempts (per source and rule, in one window) that block.
    pub brute_force_after: u32,
    /// `PG_LIMITS` slots minus one (a power of two, minus one).
    pub limit_slot_mask: u32,
    /// `[brute_force]`: the window they are counted in (tumbling).
    pub brute_force_window_ns: u64,
    /// `[brute_force]`: a first block's length; it doubles for each block in a row, each
    /// within `recidive_ns` of the one before, up to `brute_force_max_block_ns`.
    pub brute_force_block_ns: u64,
    pub brute_force_max_block_ns: u64,
    pub recidive_ns: u64,
    /// The network namespace of the attachment (`SO_NETNS_COOKIE`): the `sock_ops` program,
    /// attached to the root cgroup, sees every namespace's sockets and counts only these.
    pub netns_cookie: u64,
    /// `[evidence] packets_per_source`: packets of a source blocked automatically that are
    /// copied to `PG_EVIDENCE`, the one that caused the block first; 0: none.
    pub evidence_packets: u32,
    /// `[evidence] snaplen`: payload bytes copied after a packet's headers.
    pub evidence_snaplen: u32,
    /// `[evidence] capture_for`: how long after the block its packets are still copied.
    pub evidence_window_ns: u64,
}

impl Config {
    pub const fn zeroed() -> Self {
        Self {
            flags: 0,
            bl6_prefix_count: 0,
            bl6_prefix_lens: [0; MAX_BL6_PREFIX_LENS],
            udp_reply_timeout_ns: 0,
            frag_timeout_ns: 0,
            generation: 0,
            scan_threshold_bits: 0,
            slow_threshold_bits: 0,
            scan_window_ns: 0,
            slow_window_ns: 0,
            scan_block_ns: 0,
            trap_block_ns: 0,
            v6_source_mask: [0xff; 16],
            port_drop_shards: 1,
            v6_source_prefix: 128,
            scan_threshold_ports: 0,
            bl6_filter_shift: 64 - crate::maps::BL6_FILTER_MIN_LOG2,
            bl6_masks: [[0; 2]; MAX_BL6_PREFIX_LENS],
            brute_force_after: 0,
            limit_slot_mask: 0,
            brute_force_window_ns: 0,
            brute_force_block_ns: 0,
            brute_force_max_block_ns: 0,
            recidive_ns: 0,
            netns_cookie: 0,
            evidence_packets: 0,
            evidence_snaplen: 0,
            evidence_window_ns: 0,
        }
    }

    #[inline(always)]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::zeroed()
    }
}

const _: () = assert!(size_of::<Config>() == 184 + 16 * MAX_BL6_PREFIX_LENS);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}

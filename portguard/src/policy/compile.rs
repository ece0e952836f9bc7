//! Policy -> `MapImage`: exactly the entries the kernel maps will hold. `compile_for` is pure
//! (the machine's CPU count, the one fact it needs from the host, is an argument), so it is
//! unit tested here; `compile` supplies this machine's count and is shared by `check`, `attach`
//! and every later command.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use portguard_common::{
    Config,
    config::*,
    maps::{
        BL4_WHOLE, Bl6Key, FAMILY_V4, FAMILY_V6, MAX_LIMITED_RULES, NET_KEY_FIXED_BITS, NetKey, PORT_ALLOW,
        PORT_ALLOW_FROM, PORT_DENY, PORT_FLAG_LIMITED, PORT_FLAG_TRAP, PortRule, RuleLimit, SCAN_PORT_BITS,
        SRC_ALLOW_FIXED_BITS, SrcAllowKey, addr_words, bl4_index_entry, bl4_range, bl6_filter_log2,
        bl6_filter_slot, port_drop_shards, port_index, prefix_mask_words, prefix_masks, v4_mapped,
    },
};

use super::{
    Action, Mode, Policy, Proto, Response, Rule, TcpNonSyn,
    reach::{PortAction, decide},
};

/// What one policy generation writes into the kernel.
#[derive(Debug, Default, Clone)]
pub struct MapImage {
    pub config: Config,
    /// `PG_PORTS` entries that differ from "unlisted".
    pub ports: BTreeMap<u32, PortRule>,
    /// `PG_SRC_ALLOW`: (prefix length, key, rule number).
    pub src_allow: Vec<(u32, SrcAllowKey, u16)>,
    /// `PG_BL4_INDEX` entries that are not zero: IPv4 /16 -> blocked whole, or where its
    /// ranges are in `bl4_ranges`.
    pub bl4_index: BTreeMap<u32, u64>,
    /// `PG_BL4_RANGES`: every listed /16's ranges, sorted, merged, one segment after another.
    pub bl4_ranges: Vec<u32>,
    /// `PG_BL6` keys.
    pub bl6: BTreeSet<Bl6Key>,
    /// `PG_BL6_FILTER` words that are not zero (its size is in `config.bl6_filter_shift`).
    pub bl6_filter: BTreeMap<u32, u64>,
    /// `PG_NEVER_BLOCK`: (prefix length, key).
    pub never_block: Vec<(u32, NetKey)>,
    /// `PG_RULE_LIMITS` entries of the rules that carry a limit, by rule number.
    pub rule_limits: BTreeMap<u16, RuleLimit>,
}

impl MapImage {
    /// IPv4 /16s blocked as a whole.
    pub fn bl4_whole_16s(&self) -> usize {
        self.bl4_index.values().filter(|entry| **entry == BL4_WHOLE).count()
    }
}

/// Largest IPv6 expansion of one prefix to a longer probed length.
const MAX_BL6_EXPANSION: u128 = 1 << 12;

/// `compile_for` this machine (its possible CPUs size the per-port drop table's shards).
pub fn compile(policy: &Policy, generation: u64) -> Result<MapImage> {
    compile_for(policy, generation, crate::system::possible_cpus())
}

/// The image of `policy` as generation `generation` on a machine with `cpus` possible CPUs.
pub fn compile_for(policy: &Policy, generation: u64, cpus: u32) -> Result<MapImage> {
    let mut image = MapImage::default();
    compile_rule_limits(policy, &mut image)?;
    compile_ports(policy, &mut image);
    compile_blocklist(&policy.blocklist, &mut image)?;
    check_blocklist_size(&image, policy.limits.blocklist)?;
    for net in &policy.never_block {
        image.never_block.push(net_key(net));
    }
    image.config = config(policy, &image, generation, cpus);
    Ok(image)
}

/// The port table: every port a rule or a trap names, as `Policy::port_decision` decides it.
fn compile_ports(policy: &Policy, image: &mut MapImage) {
    // The rules naming each port, in file order: one pass over the rules, not one per port.
    let mut naming: BTreeMap<(Proto, u16), Vec<&Rule>> = BTreeMap::new();
    for rule in &policy.rules {
        for port in rule.ports.iter().flat_map(Clone::clone) {
            naming.entry((rule.proto, port)).or_default().push(rule);
        }
    }
    let mut traps = BTreeSet::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        for port in policy.trap_ports.of(proto).iter().flat_map(Clone::clone) {
            traps.insert((proto, port));
            naming.entry((proto, port)).or_default();
        }
    }
    for ((proto, port), rules) in naming {
        let Some(index) = port_index(proto.number(), port) else {
            continue;
        };
        let decision = decide(rules, traps.contains(&(proto, port)), policy.default);
        let (action, rule) = match &decision.action {
            PortAction::Denied(rule) => (PORT_DENY, rule.number),
            PortAction::Allowed(rule) => (PORT_ALLOW, rule.number),
            PortAction::AllowedFrom(rules) => (PORT_ALLOW_FROM, rules[0].number),
            // The zeroed entry: the kernel applies the default.
            PortAction::Default(_) => (0, 0),
        };
        let mut keys = BTreeSet::new();
        for (rule, net) in decision.sources() {
            // A network two rules list is admitted by the first (file order), as `verify` says.
            if !keys.insert(net) {
                continue;
            }
            let (len, addr) = mapped(&net);
            let key = SrcAllowKey {
                proto: proto.number(),
                family: family(&net),
                port_be: port.to_be_bytes(),
                addr,
            };
            image.src_allow.push((SRC_ALLOW_FIXED_BITS + len, key, rule.number));
        }
        let limited = match &decision.action {
            PortAction::Allowed(rule) => rule.limit.is_some(),
            PortAction::AllowedFrom(rules) => rules.iter().any(|rule| rule.limit.is_some()),
            PortAction::Denied(_) | PortAction::Default(_) => false,
        };
        let flags =
            if decision.trap { PORT_FLAG_TRAP } else { 0 } | if limited { PORT_FLAG_LIMITED } else { 0 };
        image.ports.insert(index, PortRule { action, flags, rule });
    }
}

/// `PG_RULE_LIMITS`: each limited rule's rate as the kernel's cell rate algorithm takes it,
/// its connection cap and identity, and its counter slot (in file order).
fn compile_rule_limits(policy: &Policy, image: &mut MapImage) -> Result<()> {
    let conn_rules = conn_rules(policy);
    for (slot, rule) in policy.rules.iter().filter(|rule| rule.limit.is_some()).enumerate() {
        let limit = rule.limit.expect("filtered");
        if slot as u32 >= MAX_LIMITED_RULES {
            bail!("more than {MAX_LIMITED_RULES} rules carry a limit");
        }
        let interval_ns = limit.new_per_source.map_or(0, |rate| kernel_ns(rate.interval()).max(1));
        let (max_connections, conn_rule) = match limit.connections_per_source {
            Some(cap) => (cap, conn_rules[&rule.number]),
            None => (0, 0),
        };
        image.rule_limits.insert(
            rule.number,
            RuleLimit {
                interval_ns,
                tolerance_ns: interval_ns.saturating_mul(u64::from(limit.burst.max(1)) - 1),
                slot: slot as u32,
                max_connections,
                conn_rule,
                _pad: 0,
            },
        );
    }
    Ok(())
}

/// The identities of the rules that cap connections (`conn_rule_id`), by rule number; two
/// rules of one policy never share one (file order settles a collision).
pub fn conn_rules(policy: &Policy) -> BTreeMap<u16, u32> {
    let mut taken = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for rule in
        policy.rules.iter().filter(|rule| rule.limit.is_some_and(|l| l.connections_per_source.is_some()))
    {
        let mut id = conn_rule_id(rule);
        while !taken.insert(id) {
            id = id.wrapping_add(1).max(1);
        }
        ids.insert(rule.number, id);
    }
    ids
}

/// A rule's identity for its connection counts (`RuleLimit::conn_rule`): a hash of what
/// decides which connections it admits (protocol, ports, `from`), so the same rule keeps its
/// counts across reloads (also when rules before it are added or removed, or its cap or name
/// changes). FNV-1a: stable across builds, so a restarted loader finds the same counts.
fn conn_rule_id(rule: &Rule) -> u32 {
    let mut text = format!("{} ", rule.proto.number());
    for range in &rule.ports {
        text += &format!("{}-{},", range.start(), range.end());
    }
    for net in rule.from.iter().flatten() {
        text += &format!(" {}", net.trunc());
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    // 0 means "no cap" in `RuleLimit`.
    hash.max(1)
}

fn family(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => FAMILY_V4,
        IpNet::V6(_) => FAMILY_V6,
    }
}

/// A network as an `LpmTrie` key over `NetKey` (family byte, then the address).
pub fn net_key(net: &IpNet) -> (u32, NetKey) {
    let (len, addr) = mapped(net);
    (NET_KEY_FIXED_BITS + len, NetKey { family: family(net), addr })
}

/// A network as (prefix length over 16 bytes, IPv4-mapped or IPv6 address).
fn mapped(net: &IpNet) -> (u32, [u8; 16]) {
    match net {
        IpNet::V4(v4) => (96 + u32::from(v4.prefix_len()), v4_mapped(v4.network().octets())),
        IpNet::V6(v6) => (u32::from(v6.prefix_len()), v6.network().octets()),
    }
}

fn compile_blocklist(nets: &[IpNet], image: &mut MapImage) -> Result<()> {
    let mut v6_by_len: BTreeMap<u8, BTreeSet<u128>> = BTreeMap::new();
    let mut whole: BTreeSet<u32> = BTreeSet::new();
    let mut ranges: BTreeMap<u32, Vec<(u16, u16)>> = BTreeMap::new();
    for net in nets {
        match net {
            IpNet::V4(v4) => {
                let base = u32::from(v4.network());
                let len = u32::from(v4.prefix_len());
                if len <= 16 {
                    let first = base >> 16;
                    whole.extend(first..first + (1u32 << (16 - len)));
                } else {
                    // Longer than /16: one range within one /16.
                    let size = (1u32 << (32 - len)) - 1;
                    ranges.entry(base >> 16).or_default().push((base as u16, (base | size) as u16));
                }
            }
            IpNet::V6(v6) => {
                v6_by_len.entry(v6.prefix_len()).or_default().insert(u128::from(v6.network()));
            }
        }
    }
    for slash16 in &whole {
        image.bl4_index.insert(*slash16, BL4_WHOLE);
    }
    // Ranges inside a /16 blocked whole are never consulted.
    for (slash16, mut list) in ranges.into_iter().filter(|(slash16, _)| !whole.contains(slash16)) {
        list.sort_unstable();
        let offset = u32::try_from(image.bl4_ranges.len()).context("too many IPv4 blocklist ranges")?;
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(list.len());
        for (start, end) in list {
            match merged.last_mut() {
                // Overlapping or adjacent: one range.
                Some(last) if u32::from(start) <= u32::from(last.1) + 1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        image.bl4_index.insert(slash16, bl4_index_entry(offset, merged.len() as u32));
        image.bl4_ranges.extend(merged.into_iter().map(|(start, end)| bl4_range(start, end)));
    }

    reduce_v6_lengths(&mut v6_by_len)?;
    for (len, prefixes) in v6_by_len {
        for prefix in prefixes {
            image.bl6.insert(Bl6Key::new(prefix.to_be_bytes(), len));
        }
    }
    let shift = 64 - bl6_filter_log2(image.bl6.len() as u64);
    for key in &image.bl6 {
        let (word, bit) = bl6_filter_slot(addr_words(&key.addr), key.prefix_len, shift);
        *image.bl6_filter.entry(word).or_default() |= bit;
    }
    Ok(())
}

/// The blocklist as the kernel holds it must fit the configured limit: refused before anything
/// is loaded, never half-applied.
fn check_blocklist_size(image: &MapImage, limit: u32) -> Result<()> {
    let entries = image.bl4_ranges.len() + image.bl6.len();
    if entries > limit as usize {
        bail!(
            "the blocklist needs {entries} kernel entries ({} IPv4 ranges, {} IPv6 prefixes), \
             more than [limits] blocklist = {limit}; raise the limit or shorten the list",
            image.bl4_ranges.len(),
            image.bl6.len()
        );
    }
    Ok(())
}

/// The kernel probes one hash lookup per distinct IPv6 prefix length. Above
/// `MAX_BL6_PREFIX_LENS` lengths, expand the cheapest length into the next longer one.
fn reduce_v6_lengths(by_len: &mut BTreeMap<u8, BTreeSet<u128>>) -> Result<()> {
    while by_len.len() > MAX_BL6_PREFIX_LENS {
        let lengths: Vec<u8> = by_len.keys().copied().collect();
        let (len, next) = lengths
            .windows(2)
            .map(|w| (w[0], w[1]))
            .min_by_key(|&(len, next)| (by_len[&len].len() as u128) << (next - len))
            .expect("more than one length");
        let factor = 1u128 << (next - len);
        if factor > MAX_BL6_EXPANSION {
            bail!(
                "the IPv6 blocklist uses more than {MAX_BL6_PREFIX_LENS} distinct prefix lengths \
                 and /{len} cannot be folded into /{next}; merge some prefixes"
            );
        }
        let prefixes = by_len.remove(&len).expect("present");
        let target = by_len.get_mut(&next).expect("present");
        let step = 1u128 << (128 - u32::from(next));
        for prefix in prefixes {
            for i in 0..factor {
                target.insert(prefix | (i * step));
            }
        }
    }
    Ok(())
}

/// `PG_LIMITS`' slots for `[limits] limited_sources`: a power of two, so a hash picks a slot
/// with a mask.
pub fn limit_slots(limited_sources: u32) -> u32 {
    limited_sources.next_power_of_two()
}

fn config(policy: &Policy, image: &MapImage, generation: u64, cpus: u32) -> Config {
    let mut flags = 0;
    let mut set = |on: bool, flag: u32| {
        if on {
            flags |= flag;
        }
    };
    set(policy.mode == Mode::Monitor, FLAG_MONITOR);
    set(policy.default == Action::Allow, FLAG_DEFAULT_ALLOW);
    set(policy.inbound.malformed == Action::Allow, FLAG_MALFORMED_PASS);
    set(policy.inbound.fragments_unseen == Action::Allow, FLAG_FRAG_UNSEEN_PASS);
    set(policy.inbound.icmp == Action::Deny, FLAG_ICMP_DENY);
    set(policy.inbound.icmpv6 == Action::Deny, FLAG_ICMPV6_DENY);
    set(policy.inbound.other_protocols == Action::Deny, FLAG_OTHER_DENY);
    set(policy.inbound.tcp_non_syn == TcpNonSyn::Pass, FLAG_TCP_NON_SYN_PASS);
    set(!image.bl4_index.is_empty(), FLAG_HAS_BLOCKLIST4);
    set(!image.bl6.is_empty(), FLAG_HAS_BLOCKLIST6);
    set(!image.never_block.is_empty(), FLAG_HAS_NEVER_BLOCK);
    let scan = policy.scan_detection.action;
    set(scan != Response::Off, FLAG_SCAN_DETECT);
    set(scan == Response::Block, FLAG_SCAN_BLOCK);
    set(!policy.trap_ports.is_empty(), FLAG_TRAPS);
    set(image.rule_limits.values().any(|limit| limit.interval_ns != 0), FLAG_RATE_LIMITS);
    set(image.rule_limits.values().any(|limit| limit.max_connections != 0), FLAG_CONN_LIMITS);
    let brute_force = policy.brute_force.as_ref().filter(|_| !image.rule_limits.is_empty());
    set(brute_force.is_some(), FLAG_BRUTE_FORCE);
    set(scan == Response::Block || !policy.trap_ports.is_empty() || brute_force.is_some(), FLAG_AUTO_BLOCK);
    set(cpus <= port_drop_shards(cpus), FLAG_PORT_DROPS_PER_CPU);
    let ipv6_prefix = policy.scan_detection.ipv6_prefix;
    set(
        policy.never_block.iter().any(|net| matches!(net, IpNet::V6(v6) if v6.prefix_len() > ipv6_prefix)),
        FLAG_NEVER_BLOCK_INSIDE_V6_NET,
    );

    let mut lengths: Vec<u8> = image.bl6.iter().map(|k| k.prefix_len as u8).collect();
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    lengths.dedup();
    let mut bl6_prefix_lens = [0u8; MAX_BL6_PREFIX_LENS];
    bl6_prefix_lens[..lengths.len()].copy_from_slice(&lengths);
    let mut bl6_masks = [[0u64; 2]; MAX_BL6_PREFIX_LENS];
    for (mask, len) in bl6_masks.iter_mut().zip(&lengths) {
        *mask = prefix_mask_words(u32::from(*len));
    }

    Config {
        flags,
        bl6_prefix_count: lengths.len() as u32,
        bl6_prefix_lens,
        udp_reply_timeout_ns: kernel_ns(policy.inbound.udp_reply_window),
        frag_timeout_ns: kernel_ns(policy.inbound.fragment_timeout),
        generation,
        scan_threshold_bits: expected_bits(policy.scan_detection.threshold),
        slow_threshold_bits: expected_bits(policy.scan_detection.slow_threshold),
        scan_window_ns: kernel_ns(policy.scan_detection.window),
        slow_window_ns: kernel_ns(policy.scan_detection.slow_window),
        scan_block_ns: kernel_ns(policy.scan_detection.block_for),
        trap_block_ns: kernel_ns(policy.trap_ports.block_for),
        v6_source_mask: {
            let (hi, lo) = prefix_masks(u32::from(ipv6_prefix));
            let mut mask = [0u8; 16];
            mask[..8].copy_from_slice(&hi.to_be_bytes());
            mask[8..].copy_from_slice(&lo.to_be_bytes());
            mask
        },
        port_drop_shards: port_drop_shards(cpus),
        v6_source_prefix: u32::from(ipv6_prefix),
        scan_threshold_ports: policy.scan_detection.threshold,
        bl6_filter_shift: 64 - bl6_filter_log2(image.bl6.len() as u64),
        bl6_masks,
        brute_force_after: brute_force.map_or(0, |b| b.after),
        limit_slot_mask: limit_slots(policy.limits.limited_sources) - 1,
        brute_force_window_ns: brute_force.map_or(0, |b| kernel_ns(b.within)),
        brute_force_block_ns: brute_force.map_or(0, |b| kernel_ns(b.block_for)),
        brute_force_max_block_ns: brute_force.map_or(0, |b| kernel_ns(b.max_block_for)),
        recidive_ns: brute_force.map_or(0, |b| kernel_ns(b.recidive_within)),
        // Known only where the program is loaded (`loader::load`).
        netns_cookie: 0,
        evidence_packets: if policy.evidence.enabled() { policy.evidence.packets_per_source } else { 0 },
        evidence_snaplen: policy.evidence.snaplen,
        evidence_window_ns: kernel_ns(policy.evidence.capture_for),
    }
}

/// A policy duration in kernel nanoseconds. Validation caps durations at 100 years, far below
/// what a u64 of nanoseconds holds; saturate anyway rather than wrap.
fn kernel_ns(duration: std::time::Duration) -> u64 {
    crate::durations::as_kernel_ns(duration).unwrap_or(u64::MAX)
}

/// How many bits of a `SCAN_PORT_BITS`-bit set `ports` distinct ports set on average (some
/// share a bit), rounded up: the kernel compares bit counts, so its threshold is this, not
/// `ports`. Rounded up, a scan is never reported before `ports` distinct ports while the
/// threshold is small (then hardly any share a bit). 0 stays 0 (off).
pub fn expected_bits(ports: u32) -> u32 {
    let bits = f64::from(SCAN_PORT_BITS);
    let expected = bits * (1.0 - (1.0 - 1.0 / bits).powi(ports as i32));
    expected.ceil() as u32
}

/// The inverse of `expected_bits`: the distinct ports that most likely set `set_bits` bits
/// (linear counting), rounded down, for reports: with few ports, most likely none shared a
/// bit and the count is exact.
pub fn estimated_ports(set_bits: u32) -> u32 {
    let bits = f64::from(SCAN_PORT_BITS);
    let set = f64::from(set_bits.min(SCAN_PORT_BITS - 1));
    (-bits * (1.0 - set / bits).ln()).floor() as u32
}

#[cfg(test)]
mod scan_bits_tests {
    use super::{estimated_ports, expected_bits};

    #[test]
    fn thresholds_become_bit_counts_and_back() {
        assert_eq!(expected_bits(0), 0);
        assert_eq!(expected_bits(2), 2);
        assert_eq!(expected_bits(20), 20);
        // 256 ports in 512 bits: about 202 bits set.
        assert_eq!(expected_bits(256), 202);
        for ports in [2, 20, 40, 100, 256] {
            assert!(estimated_ports(expected_bits(ports)).abs_diff(ports) <= 1, "{ports}");
        }
        assert_eq!(estimated_ports(511), estimated_ports(600), "a full set is not infinite");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{LoadOptions, parse};

    fn image(text: &str) -> MapImage {
        let loaded = parse(text, Path::new("test.toml"), LoadOptions::default()).unwrap();
        compile_for(&loaded.policy, 1, 4).unwrap()
    }

    #[test]
    fn the_cpu_count_sizes_the_drop_table_shards() {
        let loaded = parse("", Path::new("test.toml"), LoadOptions::default()).unwrap();
        let on = |cpus| compile_for(&loaded.policy, 1, cpus).unwrap().config;
        assert_eq!(on(4).port_drop_shards, 4);
        assert!(on(4).has(FLAG_PORT_DROPS_PER_CPU));
        assert_eq!(on(64).port_drop_shards, 16);
        assert!(!on(64).has(FLAG_PORT_DROPS_PER_CPU), "64 CPUs share 16 shards");
    }

    /// The IPv6 blocklist's pre-filter has the bit of every listed prefix, is sized from the
    /// list, and lets few unlisted sources through to the hash lookup.
    #[test]
    fn ipv6_prefilter_holds_every_listed_prefix_and_few_others() {
        let listed: Vec<String> =
            (0..2000u32).map(|i| format!("\"2001:db8:{:x}:{:x}::/64\"", i >> 8, i & 0xff)).collect();
        let image =
            image(&format!("[blocklist]\nsources = [{}, \"2001:db8:ff00::/40\"]\n", listed.join(", ")));
        let shift = image.config.bl6_filter_shift;
        assert_eq!(64 - shift, bl6_filter_log2(image.bl6.len() as u64));
        let is_set = |words: [u64; 2], len: u32| {
            let (word, bit) = bl6_filter_slot(words, len, shift);
            image.bl6_filter.get(&word).is_some_and(|bits| bits & bit != 0)
        };
        for key in &image.bl6 {
            assert!(is_set(addr_words(&key.addr), key.prefix_len), "{key:?} missing from the filter");
        }
        // Unlisted /64s (outside 2001:db8::/32), probed at both listed lengths as the kernel does.
        let mut passed = 0;
        for i in 0..10_000u64 {
            let addr = ((0x2001_0db9_u128 << 96) | (u128::from(i) << 64)).to_be_bytes();
            for (slot, len) in
                image.config.bl6_prefix_lens[..image.config.bl6_prefix_count as usize].iter().enumerate()
            {
                let [hi, lo] = addr_words(&addr);
                let [mask_hi, mask_lo] = image.config.bl6_masks[slot];
                passed += usize::from(is_set([hi & mask_hi, lo & mask_lo], u32::from(*len)));
            }
        }
        assert!(passed < 2_000, "{passed} of 20000 unlisted probes passed the filter");
    }

    #[test]
    fn ranges_expand_into_the_port_table() {
        let image = image(
            r#"
            default = "deny"
            [[allow]]
            proto = "tcp"
            ports = [80, "8000-8002"]
            [[deny]]
            proto = "udp"
            ports = [53]
            "#,
        );
        let entries: Vec<(u32, u8, u16)> = image.ports.iter().map(|(i, r)| (*i, r.action, r.rule)).collect();
        assert_eq!(
            entries,
            [
                (80, PORT_ALLOW, 1),
                (8000, PORT_ALLOW, 1),
                (8001, PORT_ALLOW, 1),
                (8002, PORT_ALLOW, 1),
                (65536 + 53, PORT_DENY, 2)
            ]
        );
        assert_eq!(image.config.flags & FLAG_DEFAULT_ALLOW, 0);
    }

    #[test]
    fn from_lists_become_source_entries() {
        let image = image(
            r#"
            default = "deny"
            [[allow]]
            proto = "tcp"
            ports = [22]
            from = ["198.51.100.0/24", "2001:db8:1::/48"]
            "#,
        );
        assert_eq!(image.ports[&22].action, PORT_ALLOW_FROM);
        let lens: Vec<u32> = image.src_allow.iter().map(|(l, _, _)| *l).collect();
        assert_eq!(lens, [32 + 96 + 24, 32 + 48]);
        assert_eq!(image.src_allow[0].1.port_be, [0, 22]);
        assert_eq!(&image.src_allow[0].1.addr[12..], &[198, 51, 100, 0]);
    }

    #[test]
    fn limited_rules_flag_their_ports_and_get_a_rate_and_a_slot() {
        let limited = image(
            r#"
            default = "deny"
            [[allow]]
            proto = "tcp"
            ports = [80]
            [[allow]]
            proto = "tcp"
            ports = [22]
            from = ["198.51.100.0/24"]
            limit = { new_per_source = "5/10s", burst = 3 }
            [[allow]]
            proto = "tcp"
            ports = [22]
            from = ["198.51.100.0/24", "192.0.2.0/24"]
            [[allow]]
            proto = "udp"
            ports = [53]
            limit = { new_per_source = "20/s" }
            "#,
        );
        assert_eq!(limited.ports[&80].flags, 0);
        assert_eq!(limited.ports[&22].flags, PORT_FLAG_LIMITED);
        assert_eq!(limited.ports[&(65536 + 53)].flags, PORT_FLAG_LIMITED);
        // A network two rules list is admitted by the first.
        let rules: Vec<u16> = limited.src_allow.iter().map(|(_, _, rule)| *rule).collect();
        assert_eq!(rules, [2, 3]);
        let ssh = limited.rule_limits[&2];
        assert_eq!((ssh.interval_ns, ssh.tolerance_ns, ssh.slot), (2_000_000_000, 4_000_000_000, 0));
        let dns = limited.rule_limits[&4];
        assert_eq!((dns.interval_ns, dns.tolerance_ns, dns.slot), (50_000_000, 19 * 50_000_000, 1));
        assert_eq!(limited.rule_limits.len(), 2);
        assert!(limited.config.has(FLAG_RATE_LIMITS));
        let unlimited = image("default = \"deny\"");
        assert!(!unlimited.config.has(FLAG_RATE_LIMITS));
    }

    #[test]
    fn connection_caps_keep_their_rule_identity_across_renumbering() {
        let capped = "[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\nlimit = { connections_per_source = 4 }\n";
        let first = image(&format!("default = \"deny\"\n{capped}"));
        let ssh = first.rule_limits[&1];
        assert_eq!((ssh.max_connections, ssh.interval_ns, ssh.tolerance_ns), (4, 0, 0));
        assert_ne!(ssh.conn_rule, 0);
        assert_eq!(first.ports[&22].flags, PORT_FLAG_LIMITED);
        assert!(first.config.has(FLAG_CONN_LIMITS));
        assert!(!first.config.has(FLAG_RATE_LIMITS), "a cap alone is no rate");
        // Rules before it and a rate beside the cap: another number, the same identity.
        let later = image(&format!(
            "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [80]\nlimit = {{ connections_per_source = 9 }}\n{}",
            capped.replace(
                "connections_per_source = 4",
                "connections_per_source = 6, new_per_source = \"5/s\""
            )
        ));
        assert_eq!(later.rule_limits[&2].conn_rule, ssh.conn_rule);
        assert_eq!(later.rule_limits[&2].max_connections, 6);
        assert_ne!(later.rule_limits[&1].conn_rule, ssh.conn_rule, "another port, another rule");
        assert!(later.config.has(FLAG_RATE_LIMITS));
        // Another `from`: another rule.
        let other =
            image(&format!("default = \"deny\"\n{}", capped.replace("198.51.100.0/24", "203.0.113.0/24")));
        assert_ne!(other.rule_limits[&1].conn_rule, ssh.conn_rule);
    }

    #[test]
    fn open_allow_beats_from_allow() {
        let image = image(
            r#"
            default = "deny"
            [[allow]]
            proto = "tcp"
            ports = [22]
            from = ["198.51.100.0/24"]
            [[allow]]
            proto = "tcp"
            ports = [22, 23]
            "#,
        );
        assert_eq!(image.ports[&22].action, PORT_ALLOW);
        assert!(image.src_allow.is_empty());
    }

    #[test]
    fn ipv4_blocklist_becomes_whole_16s_and_sorted_merged_ranges() {
        let image = image(
            r#"
            default = "allow"
            [blocklist]
            sources = ["203.0.113.7", "203.0.113.64/26", "203.0.113.8", "203.0.113.100/30", "198.51.0.0/16", "198.18.0.0/15", "192.0.2.0/23", "198.51.7.0/24"]
            "#,
        );
        let whole: Vec<u32> = image
            .bl4_index
            .iter()
            .filter(|(_, entry)| **entry == BL4_WHOLE)
            .map(|(slash16, _)| *slash16)
            .collect();
        assert_eq!(whole, [(198 << 8) + 18, (198 << 8) + 19, (198 << 8) + 51]);
        // 192.0.2.0/23 is one range of 192.0/16; 203.0.113.7 and .8 merge, .100/30 lies in .64/26.
        assert_eq!(image.bl4_index[&(192 << 8)], bl4_index_entry(0, 1));
        assert_eq!(image.bl4_index[&(203 << 8)], bl4_index_entry(1, 2));
        assert_eq!(
            image.bl4_ranges,
            [bl4_range(0x0200, 0x03ff), bl4_range(0x7107, 0x7108), bl4_range(0x7140, 0x717f)]
        );
        // 198.51.7.0/24 lies inside the blocked 198.51.0.0/16: no ranges for it.
        assert!(image.config.has(FLAG_HAS_BLOCKLIST4));
    }

    #[test]
    fn ipv6_blocklist_lists_lengths_longest_first() {
        let image = image(
            r#"
            default = "allow"
            [blocklist]
            sources = ["2001:db8:bad::/48", "2001:db8::1", "2001:db8:bad:1::/64"]
            "#,
        );
        assert_eq!(image.config.bl6_prefix_count, 3);
        assert_eq!(&image.config.bl6_prefix_lens[..3], &[128, 64, 48]);
        assert!(image.config.has(FLAG_HAS_BLOCKLIST6));
    }

    #[test]
    fn many_ipv6_lengths_fold_into_sixteen() {
        let mut by_len: BTreeMap<u8, BTreeSet<u128>> = BTreeMap::new();
        for len in 30..50u8 {
            let prefix = 0x2001_0db8u128 << 96 | u128::from(len) << 80;
            let mask = !0u128 << (128 - u32::from(len));
            by_len.entry(len).or_default().insert(prefix & mask);
        }
        reduce_v6_lengths(&mut by_len).unwrap();
        assert_eq!(by_len.len(), MAX_BL6_PREFIX_LENS);
        // Every original prefix is still covered by some kept prefix.
        for len in 30..50u8 {
            let prefix = (0x2001_0db8u128 << 96 | u128::from(len) << 80) & (!0u128 << (128 - u32::from(len)));
            // Host bits past /len are zero, so the prefix is its own first expansion.
            assert!(by_len.iter().any(|(kept, set)| *kept >= len && set.contains(&prefix)));
        }
    }
}

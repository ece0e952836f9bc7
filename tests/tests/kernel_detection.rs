//! Scan detection and automatic blocks in the real kernel program, run on crafted frames with
//! BPF_PROG_TEST_RUN: admission (floods allocate nothing), keyed port sets (no public
//! collisions), the long window, IPv6 networks, per-protocol reports, the new-block budget,
//! the host's own resets, and the evidence a block copies. The thread is pinned to one CPU, because admission is per CPU.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portguard::{
    events::Grants,
    judge::Judge,
    policy::{LoadOptions, compile::compile, parse},
};
use portguard_common::{
    Reason,
    counters::{
        OBS_BLOCKS_NOT_ADMITTED, OBS_EVIDENCE_COPIED, OBS_REFUSALS_OWN_FLOWS, OBS_REFUSALS_SENT,
        OBS_SCAN_BLOCKS, OBS_SCAN_SOURCES_ADMITTED, OBS_SCANS_DETECTED, OBS_TRAP_BLOCKS,
    },
};
use portguard_tests::{kernel::own_map, packets::*, require_root};

const SERVER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn server(v6: bool) -> IpAddr {
    if v6 { "2001:db8::2".parse::<Ipv6Addr>().unwrap().into() } else { SERVER4.into() }
}

fn judge(policy: &str) -> Judge {
    pin_to_one_cpu();
    let loaded = parse(policy, std::path::Path::new("test.toml"), LoadOptions::default()).expect("policy");
    let image = compile(&loaded.policy, 1).expect("compile");
    Judge::new(&image, &loaded.policy).expect("load the kernel program")
}

fn pin_to_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

fn observed(j: &Judge, slot: u32) -> u64 {
    j.counters().unwrap().slot(slot).packets
}

/// Default deny, nothing open but 22, scans blocked; `extra` is appended to `[scan_detection]`.
fn scan_policy(extra: &str) -> String {
    format!(
        "default = \"deny\"\nnever_block = [\"198.51.100.0/24\"]\n[[allow]]\nproto = \"tcp\"\nports = [22]\n\
         [inbound]\nother_protocols = \"allow\"\n[scan_detection]\nthreshold = 20\nwindow = \"1h\"\n\
         slow_threshold = 0\naction = \"block\"\n{extra}"
    )
}

/// Sends SYNs from `src` to `ports` until the source is blocked; returns how many distinct
/// ports it took, the blocking one included (None: never blocked).
fn ports_until_blocked(j: &mut Judge, src: IpAddr, ports: impl IntoIterator<Item = u16>) -> Option<usize> {
    let dst = server(src.is_ipv6());
    for (tried, port) in ports.into_iter().enumerate() {
        let outcome = j.run(&tcp(src, dst, 40000, port, SYN)).unwrap();
        if outcome.reason == Reason::DropAutoBlock {
            return Some(tried + 1);
        }
    }
    None
}

#[test]
fn a_scan_is_blocked_at_its_threshold() {
    require_root!();
    let mut j = judge(&scan_policy(""));
    let scanner = IpAddr::from([192, 0, 2, 66]);
    let taken = ports_until_blocked(&mut j, scanner, 1000..1100).expect("blocked");
    // Counted exactly: at the 20th distinct port.
    assert_eq!(taken, 20, "blocked after {taken} ports");
    assert_eq!(observed(&j, OBS_SCAN_BLOCKS), 1);
    assert_eq!(observed(&j, OBS_SCAN_SOURCES_ADMITTED), 1);
    assert_eq!(j.run(&tcp(scanner, server(false), 40000, 22, SYN)).unwrap().reason, Reason::DropAutoBlock);
}

#[test]
fn ports_that_collided_under_the_old_public_hash_are_counted() {
    require_root!();
    let mut j = judge(&scan_policy(""));
    // The old detector mapped a port to bit `port * 2654435761 >> 23` (of 512): a scanner that
    // kept to ports of 19 bits was never counted. Those ports now spread over the set.
    let old_bit = |port: u16| (u32::from(port).wrapping_mul(2_654_435_761) >> 23) as u16;
    let mut chosen = std::collections::BTreeSet::new();
    let evasive: Vec<u16> = (1..=u16::MAX)
        .filter(|&port| {
            let bit = old_bit(port);
            chosen.contains(&bit) || (chosen.len() < 19 && chosen.insert(bit))
        })
        .take(200)
        .collect();
    assert!(evasive.iter().map(|&p| old_bit(p)).collect::<std::collections::BTreeSet<_>>().len() <= 19);
    let taken = ports_until_blocked(&mut j, IpAddr::from([192, 0, 2, 67]), evasive).expect("blocked");
    assert_eq!(taken, 20, "blocked after {taken} ports");
}

#[test]
fn floods_allocate_no_per_source_state() {
    require_root!();
    let mut j = judge(&scan_policy(""));
    // Forged sources, each failing once.
    for i in 0..2000u32 {
        let src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1));
        assert_eq!(j.run(&tcp(src, server(true), 40000, 445, SYN)).unwrap().reason, Reason::DropDefaultDeny);
    }
    // One source hammering one port: remembered once per CPU, never admitted.
    let flooder = IpAddr::from([192, 0, 2, 77]);
    for _ in 0..2000 {
        assert_eq!(
            j.run(&tcp(flooder, server(false), 40000, 445, SYN)).unwrap().reason,
            Reason::DropDefaultDeny
        );
    }
    assert_eq!(observed(&j, OBS_SCAN_SOURCES_ADMITTED), 0, "no flood source got shared state");
    assert_eq!(observed(&j, OBS_SCANS_DETECTED), 0);
    // A second distinct port admits a source, with both ports counted.
    j.run(&tcp(flooder, server(false), 40000, 446, SYN)).unwrap();
    assert_eq!(observed(&j, OBS_SCAN_SOURCES_ADMITTED), 1);
    let taken = ports_until_blocked(&mut j, flooder, 2000..2100).expect("blocked");
    assert_eq!(taken, 18, "blocked after {taken} more ports (445 and 446 counted)");
}

/// Drop events CPU 0 (the test's) has sent since its budget was last granted.
fn drop_events_spent(j: &Judge, granted: u32) -> u32 {
    let budget: aya::maps::PerCpuArray<_, portguard_common::maps::EventBudget> =
        aya::maps::PerCpuArray::try_from(j.ebpf().map(portguard_common::maps::MAP_EVENT_BUDGET).unwrap())
            .unwrap();
    granted - budget.get(&0, 0).unwrap()[0].tokens
}

#[test]
fn a_source_repeating_one_port_is_remembered_and_still_reported_each_second() {
    require_root!();
    let mut j = judge(&scan_policy(""));
    j.grant(Grants { drop_events: 1000, new_blocks: 1000 }).unwrap();
    let flooder = IpAddr::from([192, 0, 2, 78]);
    let syn = tcp(flooder, server(false), 40000, 445, SYN);
    let burst = |j: &mut Judge| {
        for _ in 0..500 {
            assert_eq!(j.run(&syn).unwrap().reason, Reason::DropDefaultDeny);
        }
    };
    // One drop event for the first attempt; repeats in the same second send none (a second
    // boundary inside the burst may add one).
    burst(&mut j);
    let first = drop_events_spent(&j, 1000);
    assert!((1..=2).contains(&first), "{first} drop events for one second of repeats");
    // Another source failing in between changes nothing for the first one.
    j.run(&tcp(IpAddr::from([192, 0, 2, 79]), server(false), 40000, 445, SYN)).unwrap();
    burst(&mut j);
    // A second later the remembered repeat has lapsed: the source is reported again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    burst(&mut j);
    let later = drop_events_spent(&j, 1000);
    assert!((first + 2..=first + 3).contains(&later), "{first} then {later} drop events");
    assert_eq!(observed(&j, OBS_SCAN_SOURCES_ADMITTED), 0);
}

#[test]
fn a_source_admitted_on_a_second_cpu_is_reported_at_the_threshold() {
    require_root!();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if cpus < 2 {
        portguard_tests::cannot_run("it needs two CPUs (admission is per CPU)");
        return;
    }
    let mut j = judge(&scan_policy(""));
    let scanner = IpAddr::from([192, 0, 2, 68]);
    // 19 ports on CPU 0: admitted there, 19 counted.
    assert_eq!(ports_until_blocked(&mut j, scanner, 3000..3019), None);
    // On CPU 1 the source is new: its first port is remembered, and the second admits it there
    // with both. The first alone makes 20, and the scan is reported at 20, not 21.
    let mut set = nix::sched::CpuSet::new();
    set.set(1).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    assert_eq!(ports_until_blocked(&mut j, scanner, 4000..4002), Some(2));
    let blocks: aya::maps::HashMap<_, [u8; 16], portguard_common::maps::AutoBlock> =
        aya::maps::HashMap::try_from(j.ebpf().map(portguard_common::maps::MAP_AUTO_BLOCK).unwrap()).unwrap();
    let ports: Vec<u16> = blocks
        .iter()
        .map(|entry| entry.unwrap().1.port & !portguard_common::maps::SCAN_COUNT_EXACT_BLOCK)
        .collect();
    assert_eq!(ports, [20], "distinct ports the block was made for");
}

#[test]
fn ipv6_sources_are_counted_and_blocked_by_network() {
    require_root!();
    let mut j = judge(&scan_policy(""));
    // 16 addresses of one /64 share the work: 19 ports each would pass one by one.
    let member = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 0x100 + i));
    let mut port = 3000;
    let mut blocked_at = None;
    'outer: for i in 0..16 {
        for _ in 0..2 {
            port += 1;
            if j.run(&tcp(member(i), server(true), 40000, port, SYN)).unwrap().reason == Reason::DropAutoBlock
            {
                blocked_at = Some(port - 3000);
                break 'outer;
            }
        }
    }
    let blocked_at = blocked_at.expect("the /64 was blocked");
    assert_eq!(blocked_at, 20, "blocked after {blocked_at} ports");
    // Every address of the /64 is blocked, none outside it.
    let other_member = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0xffff, 0, 0, 1));
    assert_eq!(j.run(&tcp(other_member, server(true), 1, 22, SYN)).unwrap().reason, Reason::DropAutoBlock);
    let neighbour = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x66, 1, 0, 0, 0, 1));
    assert_eq!(j.run(&tcp(neighbour, server(true), 1, 22, SYN)).unwrap().reason, Reason::PassPortAllowed);

    // With ipv6_prefix = 128 the same rotation is 16 separate sources, none over threshold.
    let mut j = judge(&scan_policy("ipv6_prefix = 128\n"));
    let mut port = 3000;
    for i in 0..16 {
        for _ in 0..2 {
            port += 1;
            assert_ne!(
                j.run(&tcp(member(i), server(true), 40000, port, SYN)).unwrap().reason,
                Reason::DropAutoBlock
            );
        }
    }
}

#[test]
fn tcp_and_udp_scans_are_reported_apart() {
    require_root!();
    let mut j = judge(&scan_policy("").replace("action = \"block\"", "action = \"alert\""));
    let src = IpAddr::from([192, 0, 2, 68]);
    for port in 1000..1030 {
        j.run(&tcp(src, server(false), 40000, port, SYN)).unwrap();
    }
    assert_eq!(observed(&j, OBS_SCANS_DETECTED), 1);
    for port in 1000..1030 {
        j.run(&udp(src, server(false), 40000, port)).unwrap();
    }
    assert_eq!(observed(&j, OBS_SCANS_DETECTED), 2, "the UDP scan is a scan of its own");
    // Once per window: more ports report nothing new.
    for port in 2000..2030 {
        j.run(&tcp(src, server(false), 40000, port, SYN)).unwrap();
    }
    assert_eq!(observed(&j, OBS_SCANS_DETECTED), 2);
}

#[test]
fn slow_scans_are_caught_by_the_long_window() {
    require_root!();
    // A short window whose threshold 100 ports cannot reach, and a long one of an hour.
    let policy = scan_policy("").replace(
        "threshold = 20\nwindow = \"1h\"\nslow_threshold = 0",
        "threshold = 256\nwindow = \"5s\"\nslow_threshold = 30\nslow_window = \"1h\"",
    );
    let mut j = judge(&policy);
    let src = IpAddr::from([192, 0, 2, 69]);
    let taken = ports_until_blocked(&mut j, src, 5000..5100).expect("blocked by the long window");
    assert!((30..=33).contains(&taken), "blocked after {taken} ports");
    // With the long window off, the same scan passes unseen.
    let mut j = judge(
        &scan_policy("").replace("threshold = 20\nwindow = \"1h\"", "threshold = 256\nwindow = \"5s\""),
    );
    assert_eq!(ports_until_blocked(&mut j, src, 5000..5100), None);
}

#[test]
fn the_new_block_budget_bounds_automatic_blocks() {
    require_root!();
    let policy = "default = \"deny\"\nnever_block = [\"198.51.100.0/24\"]\n[inbound]\nother_protocols = \"allow\"\n\
                  [scan_detection]\naction = \"off\"\n[trap_ports]\ntcp = [23]\n";
    let mut j = judge(policy);
    // Budgets are shared out among the possible CPUs.
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
    j.grant(Grants { drop_events: 0, new_blocks: 3 * cpus }).unwrap();
    let forged = |i: u8| IpAddr::from([203, 0, 113, i]);
    let reasons: Vec<Reason> =
        (1..=10).map(|i| j.run(&tcp(forged(i), server(false), 40000, 23, SYN)).unwrap().reason).collect();
    // This CPU's share of the budget is three blocks; the rest are refused and counted, and
    // the packets are judged by the port policy (a trap port is closed).
    assert_eq!(&reasons[..3], &[Reason::DropAutoBlock; 3]);
    assert_eq!(&reasons[3..], &[Reason::DropDefaultDeny; 7]);
    assert_eq!(observed(&j, OBS_TRAP_BLOCKS), 3);
    assert_eq!(observed(&j, OBS_BLOCKS_NOT_ADMITTED), 7);
    // Those blocked stay blocked; the refused ones are not.
    assert_eq!(j.run(&tcp(forged(1), server(false), 1, 80, SYN)).unwrap().reason, Reason::DropAutoBlock);
    assert_eq!(j.run(&tcp(forged(9), server(false), 1, 80, SYN)).unwrap().reason, Reason::DropDefaultDeny);
}

#[test]
fn trap_hits_past_the_block_budget_are_not_counted_as_scan_ports() {
    require_root!();
    let mut j = judge(&format!("{}[trap_ports]\ntcp = [23, 24, 25]\n", scan_policy("")));
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
    // One trap block and one scan block a second on this CPU; a forged source spends the trap's.
    j.grant(Grants { drop_events: 0, new_blocks: cpus }).unwrap();
    let forged = j.run(&tcp(IpAddr::from([203, 0, 113, 9]), server(false), 40000, 23, SYN)).unwrap();
    assert_eq!(forged.reason, Reason::DropAutoBlock);
    // The scanner's trap hits are neither blocked nor counted (a flood of them would fill the
    // detector's admission table); the scan is caught on the ports after them, at the threshold.
    let scanner = IpAddr::from([192, 0, 2, 70]);
    let taken = ports_until_blocked(&mut j, scanner, [23, 24, 25].into_iter().chain(1000..1100));
    assert_eq!(taken, Some(3 + 20), "blocked after {taken:?} ports");
    assert_eq!(observed(&j, OBS_BLOCKS_NOT_ADMITTED), 3);
}

#[test]
fn a_blocked_sources_memo_ends_when_its_block_is_lifted() {
    require_root!();
    let policy = "default = \"deny\"\nnever_block = [\"198.51.100.0/24\"]\n[inbound]\nother_protocols = \"allow\"\n\
                  [scan_detection]\naction = \"off\"\n[trap_ports]\ntcp = [23]\n";
    let mut j = judge(policy);
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
    j.grant(Grants { drop_events: 0, new_blocks: 10 * cpus }).unwrap();
    let trapped = IpAddr::from([203, 0, 113, 7]);
    assert_eq!(j.run(&tcp(trapped, server(false), 40000, 23, SYN)).unwrap().reason, Reason::DropAutoBlock);
    // Its next packets are answered by this CPU's memo of it (within the same jiffies).
    for sport in 1..=3 {
        assert_eq!(
            j.run(&tcp(trapped, server(false), sport, 80, SYN)).unwrap().reason,
            Reason::DropAutoBlock
        );
    }
    // Another source is judged afresh, and the memo holds the trapped one again after it.
    let other = IpAddr::from([203, 0, 113, 8]);
    assert_eq!(j.run(&tcp(other, server(false), 1, 80, SYN)).unwrap().reason, Reason::DropDefaultDeny);
    assert_eq!(j.run(&tcp(trapped, server(false), 4, 80, SYN)).unwrap().reason, Reason::DropAutoBlock);
    // `unblock`'s own code lifts it: the very next packet is judged by the policy.
    let own = |name: &str| own_map(&j, name);
    let mut blocks: aya::maps::HashMap<aya::maps::MapData, [u8; 16], portguard_common::maps::AutoBlock> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(own("PG_AUTO_BLOCK"))).unwrap();
    let mut runtime: aya::maps::Array<aya::maps::MapData, portguard_common::maps::Runtime> =
        aya::maps::Array::try_from(aya::maps::Map::Array(own("PG_RUNTIME"))).unwrap();
    let net: ipnet::IpNet = "203.0.113.7/32".parse().unwrap();
    assert_eq!(portguard::blocks::lift_automatic_in(&mut blocks, &mut runtime, &net).unwrap(), 1);
    assert_eq!(j.run(&tcp(trapped, server(false), 5, 80, SYN)).unwrap().reason, Reason::DropDefaultDeny);
}

#[test]
fn the_hosts_own_resets_are_not_probes() {
    require_root!();
    let policy = scan_policy("").replace("default = \"deny\"", "default = \"allow\"");
    let mut j = judge(&policy);
    let upstream = IpAddr::from([192, 0, 2, 80]);
    let me = server(false);
    // 40 client connections of the host to one upstream, each closed with a RST (unread data).
    for sport in 41000..41040 {
        j.run_egress(&tcp(me, upstream, sport, 80, SYN)).unwrap();
        j.run_egress(&tcp(me, upstream, sport, 80, RST | ACK)).unwrap();
    }
    assert_eq!(observed(&j, OBS_REFUSALS_SENT), 40);
    assert_eq!(observed(&j, OBS_REFUSALS_OWN_FLOWS), 40);
    assert_eq!(observed(&j, OBS_SCANS_DETECTED), 0);
    assert_eq!(j.run(&tcp(upstream, me, 80, 41000, ACK)).unwrap().reason, Reason::PassDefaultAllow);
    // RSTs to a prober's SYNs on closed ports (no flow of the host's) still count.
    let prober = IpAddr::from([192, 0, 2, 81]);
    for port in 1000..1030 {
        j.run_egress(&tcp(me, prober, port, 50000, RST | ACK)).unwrap();
    }
    assert_eq!(observed(&j, OBS_SCANS_DETECTED), 1);
    assert_eq!(j.run(&tcp(prober, me, 50000, 80, SYN)).unwrap().reason, Reason::DropAutoBlock);
}

/// The filter in front of the automatic blocks: a refill keeps every block in the table
/// (IPv4 and IPv6 networks) and drops the bits of blocks that are gone; blocks made after the
/// refill are seen at once. Refills in a row switch between the two halves.
#[test]
fn the_automatic_block_filter_keeps_every_block_through_refills() {
    require_root!();
    let policy = "default = \"deny\"\nnever_block = [\"198.51.100.0/24\"]\n[inbound]\nother_protocols = \"allow\"\n\
                  [scan_detection]\naction = \"off\"\n[trap_ports]\ntcp = [23]\n";
    let mut j = judge(policy);
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
    j.grant(Grants { drop_events: 0, new_blocks: 1000 * cpus }).unwrap();
    let v4 = |i: u8| IpAddr::from([203, 0, 113, i]);
    let v6 = |i: u16| IpAddr::from([0x2001, 0xdb8, 7, i, 0, 0, 0, 1]);
    let sources: Vec<IpAddr> = (1..=40).map(v4).chain((1..=40).map(v6)).collect();
    for &src in &sources {
        let hit = j.run(&tcp(src, server(src.is_ipv6()), 40000, 23, SYN)).unwrap();
        assert_eq!(hit.reason, Reason::DropAutoBlock, "{src} not blocked by the trap");
    }
    let table_maps = |j: &Judge| {
        let own = |name: &str| own_map(j, name);
        let filter = portguard::auto_filter::AutoFilter::map(&own("PG_AUTO_FILTER")).unwrap();
        let blocks: aya::maps::HashMap<aya::maps::MapData, [u8; 16], portguard_common::maps::AutoBlock> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(own("PG_AUTO_BLOCK"))).unwrap();
        (filter, blocks)
    };
    let (filter, mut blocks) = table_maps(&j);
    let (bits_before, size) = filter.bits_set();
    assert!((150..=160).contains(&bits_before), "{bits_before} bits for 80 blocks (two each)");
    // Sized at load for an empty table: the smallest half (1 KiB), bits set since at that size.
    assert_eq!(size, 1 << 13, "bits in use at load");
    // Lift half the blocks behind the packet path's back (as `unblock` does), then refill twice.
    let lifted: Vec<[u8; 16]> = blocks.keys().filter_map(Result::ok).step_by(2).collect();
    for key in &lifted {
        blocks.remove(key).unwrap();
    }
    for _ in 0..2 {
        assert_eq!(filter.refill(&blocks).unwrap(), Some(40), "the refill was skipped or miscounted");
        let (bits, size) = filter.bits_set();
        assert_eq!(size, 1 << 14, "bits in use for 40 blocks");
        assert!(bits <= bits_before - 60, "{bits} bits after a refill (before: {bits_before})");
        for &src in &sources {
            let key = match src {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    octets
                }
            };
            let expected =
                if lifted.contains(&key) { Reason::DropDefaultDeny } else { Reason::DropAutoBlock };
            let outcome = j.run(&tcp(src, server(src.is_ipv6()), 1, 80, SYN)).unwrap();
            assert_eq!(outcome.reason, expected, "{src} after a refill");
        }
    }
    // A block made after the refills is in the half consulted now.
    let late = v4(200);
    assert_eq!(j.run(&tcp(late, server(false), 40000, 23, SYN)).unwrap().reason, Reason::DropAutoBlock);
    assert_eq!(j.run(&tcp(late, server(false), 1, 80, SYN)).unwrap().reason, Reason::DropAutoBlock);
}

/// `scan_policy` with `[evidence]`: `packets` per block, 16 bytes of payload, for `capture_for`.
fn evidence_policy(packets: u32, capture_for: &str) -> String {
    format!(
        "{}\n[evidence]\npackets_per_source = {packets}\nsnaplen = 16\ncapture_for = \"{capture_for}\"\n",
        scan_policy("")
    )
}

/// Every evidence packet in the judge's evidence ring buffer, oldest first.
fn drain_evidence(j: &mut Judge) -> Vec<portguard_common::events::EvidencePacket> {
    portguard_tests::kernel::drain_ring(j, "PG_EVIDENCE")
}

fn blocked_until(j: &Judge, src: Ipv4Addr) -> u64 {
    let map = own_map(j, "PG_AUTO_BLOCK");
    let blocks: aya::maps::HashMap<_, [u8; 16], portguard_common::maps::AutoBlock> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).unwrap();
    blocks.get(&portguard_common::maps::v4_mapped(src.octets()), 0).expect("blocked").expires_ns
}

#[test]
fn a_blocked_sources_first_packets_are_copied_with_their_bytes_and_no_more() {
    require_root!();
    let mut j = judge(&evidence_policy(4, "1h"));
    let server = server(false);
    let scanner = Ipv4Addr::new(192, 0, 2, 66);
    let bystander = IpAddr::from([192, 0, 2, 99]);
    // Sources not blocked copy nothing: refused attempts (below the threshold), a flood of
    // one refused port, an allowed connection.
    for port in 1000..1010 {
        j.run(&tcp(bystander, server, 40000, port, SYN)).unwrap();
    }
    for _ in 0..100 {
        j.run(&tcp(bystander, server, 40000, 1000, SYN)).unwrap();
    }
    assert_eq!(j.run(&tcp(bystander, server, 40000, 22, SYN)).unwrap().reason, Reason::PassPortAllowed);
    let probes: Vec<Vec<u8>> =
        (2000..2020).map(|port| tcp(scanner.into(), server, 40000, port, SYN)).collect();
    for probe in &probes[..19] {
        assert_eq!(j.run(probe).unwrap().reason, Reason::DropDefaultDeny);
    }
    assert!(drain_evidence(&mut j).is_empty(), "sources not blocked must copy nothing");

    // The 20th port blocks the scanner: that probe is the first evidence.
    assert_eq!(j.run(&probes[19]).unwrap().reason, Reason::DropAutoBlock);
    // A segment with 100 bytes of payload: kept to its headers and 16 bytes of it.
    let mut l4 = tcp_header(40000, 80, ACK | PSH);
    l4.extend_from_slice(&[0xab; 100]);
    let with_payload = frame(&Ip::new(scanner.into(), server, TCP), &l4);
    assert_eq!(j.run(&with_payload).unwrap().reason, Reason::DropAutoBlock);
    // More than the bound.
    let later: Vec<Vec<u8>> =
        (3000..3010).map(|port| tcp(scanner.into(), server, 40000, port, SYN)).collect();
    for packet in &later {
        assert_eq!(j.run(packet).unwrap().reason, Reason::DropAutoBlock);
    }
    j.run(&tcp(bystander, server, 40000, 1001, SYN)).unwrap();

    let copied = drain_evidence(&mut j);
    assert_eq!(copied.len(), 4, "packets_per_source = 4: the blocking probe and the next three");
    let bytes = |i: usize| &copied[i].frame[..copied[i].cap_len as usize];
    assert_eq!(bytes(0), &probes[19][..], "the probe that made the block, whole");
    let headers = 14 + 20 + 20;
    assert_eq!(bytes(1), &with_payload[..headers + 16], "headers and snaplen bytes of payload");
    assert_eq!(copied[1].frame_len as usize, with_payload.len(), "the length on the wire");
    assert_eq!(bytes(2), &later[0][..]);
    assert_eq!(bytes(3), &later[1][..]);
    let expires_ns = blocked_until(&j, scanner);
    for packet in &copied {
        assert_eq!(packet.net, portguard_common::maps::v4_mapped(scanner.octets()));
        assert_eq!(packet.prefix_len, 32);
        assert_eq!(packet.block_expires_ns, expires_ns, "names the block its event names");
    }
    assert!(copied.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    assert_eq!(observed(&j, OBS_EVIDENCE_COPIED), 4);

    // Spent: the block's flood is answered as before, copying nothing.
    for packet in &later {
        assert_eq!(j.run(packet).unwrap().reason, Reason::DropAutoBlock);
    }
    assert!(drain_evidence(&mut j).is_empty());
}

#[test]
fn evidence_stops_at_capture_for_and_is_off_with_no_packets() {
    require_root!();
    let scanner = Ipv4Addr::new(192, 0, 2, 66);
    let server = server(false);
    let scan = |j: &mut Judge| ports_until_blocked(j, scanner.into(), 2000..2100).expect("blocked");

    let mut j = judge(&evidence_policy(16, "1s"));
    scan(&mut j);
    assert_eq!(j.run(&tcp(scanner.into(), server, 40000, 5000, SYN)).unwrap().reason, Reason::DropAutoBlock);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for port in 5001..5010 {
        assert_eq!(
            j.run(&tcp(scanner.into(), server, 40000, port, SYN)).unwrap().reason,
            Reason::DropAutoBlock
        );
    }
    let copied = drain_evidence(&mut j);
    assert_eq!(copied.len(), 2, "the blocking probe and the one within capture_for, none after");
    drop(j);

    let mut j = judge(&evidence_policy(0, "1h"));
    scan(&mut j);
    for port in 5000..5010 {
        assert_eq!(
            j.run(&tcp(scanner.into(), server, 40000, port, SYN)).unwrap().reason,
            Reason::DropAutoBlock
        );
    }
    assert!(drain_evidence(&mut j).is_empty(), "packets_per_source = 0 copies nothing");
    assert_eq!(observed(&j, OBS_EVIDENCE_COPIED), 0);
}

#[test]
fn a_trap_hit_is_its_blocks_first_evidence() {
    require_root!();
    let mut j = judge(&format!("{}[trap_ports]\ntcp = [23]\n", scan_policy("")));
    let hit = tcp(IpAddr::from([192, 0, 2, 70]), server(false), 40000, 23, SYN);
    assert_eq!(j.run(&hit).unwrap().reason, Reason::DropAutoBlock);
    let copied = drain_evidence(&mut j);
    assert_eq!(copied.len(), 1, "the hit itself");
    assert_eq!(&copied[0].frame[..copied[0].cap_len as usize], &hit[..]);
}

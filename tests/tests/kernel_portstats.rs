//! The per-port statistics `learn` reads (`portguard::portstats`), counted by the real kernel
//! program under BPF_PROG_TEST_RUN: packets, bytes and new connections per port, admitted and
//! refused apart; source networks by /24 and by the policy's `ipv6_prefix`; what is not
//! counted (segments of connections in the source table, blocked sources); reset; the CPUs'
//! caches in front of the source table (a network counted in its slot, moved to the table
//! when another takes the slot, merged from every CPU on reading, emptied by a reset).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use aya::maps::{HashMap, PerCpuArray};
use ipnet::IpNet;
use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::Pid,
};
use portguard::{
    judge::Judge,
    policy::Proto,
    portstats::{PortStatsMaps, Snapshot, SourceUse, Traffic},
};
use portguard_common::{
    Reason,
    maps::{
        MAP_PORT_SOURCE_CACHE, MAP_PORT_SOURCES, PORT_SOURCE_CACHE_SLOTS, PROTO_TCP, PortSource,
        PortSourceKey, PortSourceSlot, port_source_slot,
    },
};
use portguard_tests::{kernel::judge, packets::*, require_root};

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

fn server(src: IpAddr) -> IpAddr {
    if src.is_ipv6() { v6("2001:db8::2") } else { v4(192, 0, 2, 2) }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Runs `frame`, checks its verdict and returns its length (what the byte counts add).
#[track_caller]
fn send(j: &mut Judge, frame: &[u8], reason: Reason) -> u64 {
    let outcome = j.run(frame).unwrap();
    assert_eq!(outcome.reason, reason, "{outcome:?}");
    frame.len() as u64
}

#[track_caller]
fn sources(snapshot: &Snapshot, proto: Proto, port: u16) -> Vec<SourceUse> {
    snapshot.sources_of(proto, port).copied().collect()
}

const POLICY: &str = r#"
default = "deny"

[[allow]]
proto = "tcp"
ports = [22]

[[allow]]
proto = "udp"
ports = [53]

[blocklist]
sources = ["203.0.113.128/25"]

[scan_detection]
ipv6_prefix = 48
"#;

#[test]
fn ports_count_packets_bytes_and_new_connections_admitted_and_refused_apart() {
    require_root!();
    let mut j = judge(POLICY);
    let client = v4(198, 51, 100, 7);
    let to = server(client);
    let syn = send(&mut j, &tcp(client, to, 40000, 22, SYN), Reason::PassPortAllowed);
    let ack = send(&mut j, &tcp(client, to, 40000, 22, ACK), Reason::PassPortAllowed);
    let psh = send(&mut j, &tcp(client, to, 40000, 22, ACK | PSH), Reason::PassPortAllowed);
    let syn6 =
        send(&mut j, &tcp(v6("2001:db8:1::1"), v6("2001:db8::2"), 40000, 22, SYN), Reason::PassPortAllowed);
    // A refused SYN, a segment of no flow, a SYN-ACK (not a new connection either).
    let closed = send(&mut j, &tcp(client, to, 40001, 23, SYN), Reason::DropDefaultDeny);
    let stray = send(&mut j, &tcp(client, to, 40001, 23, ACK), Reason::DropNoFlow);
    let syn_ack = send(&mut j, &tcp(client, to, 40001, 23, SYN | ACK), Reason::DropNoFlow);
    let dns = send(&mut j, &udp(client, to, 5353, 53), Reason::PassPortAllowed);
    send(&mut j, &udp(client, to, 5353, 53), Reason::PassPortAllowed);
    let ntp = send(&mut j, &udp(client, to, 5353, 123), Reason::DropDefaultDeny);
    // Not TCP or UDP: no port.
    send(&mut j, &icmp(client, to, 8, 64), Reason::PassProtocol);

    let stats = j.port_statistics().unwrap();
    let ssh = stats.port(Proto::Tcp, 22).expect("tcp/22 counted");
    assert_eq!(ssh.accepted, Traffic { packets: 4, bytes: syn + ack + psh + syn6, connections: 2 });
    assert_eq!(ssh.refused, Traffic::default());
    let telnet = stats.port(Proto::Tcp, 23).expect("tcp/23 counted");
    assert_eq!(telnet.accepted, Traffic::default());
    assert_eq!(telnet.refused, Traffic { packets: 3, bytes: closed + stray + syn_ack, connections: 1 });
    let domain = stats.port(Proto::Udp, 53).unwrap();
    assert_eq!(domain.accepted, Traffic { packets: 2, bytes: 2 * dns, connections: 2 });
    assert_eq!(
        stats.port(Proto::Udp, 123).unwrap().refused,
        Traffic { packets: 1, bytes: ntp, connections: 1 }
    );
    assert_eq!(stats.ports.len(), 4, "only the four ports: {:?}", stats.ports);
    assert!(stats.port(Proto::Udp, 22).is_none() && stats.port(Proto::Tcp, 53).is_none());
    assert!(stats.since.is_some_and(|since| since <= stats.taken_at));
}

#[test]
fn sources_are_summarised_by_network_from_new_connections_only() {
    require_root!();
    let mut j = judge(POLICY);
    for (host, sport) in [(7, 40000), (8, 40001), (7, 40002)] {
        let src = v4(198, 51, 100, host);
        send(&mut j, &tcp(src, server(src), sport, 22, SYN), Reason::PassPortAllowed);
        // The rest of a connection adds nothing to its source's entry.
        for _ in 0..5 {
            send(&mut j, &tcp(src, server(src), sport, 22, ACK), Reason::PassPortAllowed);
        }
    }
    let other = v4(198, 51, 101, 9);
    send(&mut j, &tcp(other, server(other), 40000, 22, SYN), Reason::PassPortAllowed);
    send(&mut j, &tcp(other, server(other), 40000, 2222, SYN), Reason::DropDefaultDeny);
    // Two addresses of one /48 (the policy's ipv6_prefix) are one network; another /48 is not.
    for src in ["2001:db8:1:1::1", "2001:db8:1:2::7", "2001:db8:2::1"] {
        send(&mut j, &tcp(v6(src), v6("2001:db8::2"), 40000, 22, SYN), Reason::PassPortAllowed);
    }
    let dns = udp(other, server(other), 5353, 53);
    for _ in 0..3 {
        send(&mut j, &dns, Reason::PassPortAllowed);
    }

    let stats = j.port_statistics().unwrap();
    let ssh = sources(&stats, Proto::Tcp, 22);
    let by_net =
        |n: &str| *ssh.iter().find(|s| s.network == net(n)).unwrap_or_else(|| panic!("{n} in {ssh:?}"));
    assert_eq!(ssh.len(), 4, "{ssh:?}");
    assert_eq!(by_net("198.51.100.0/24").connections, 3);
    assert_eq!(by_net("198.51.101.0/24").connections, 1);
    assert_eq!(by_net("2001:db8:1::/48").connections, 2);
    assert_eq!(by_net("2001:db8:2::/48").connections, 1);
    assert!(
        ssh.iter().all(|s| s.refused == 0 && s.first_seen <= s.last_seen && s.last_seen <= stats.taken_at)
    );
    // Sorted by connections, most first.
    assert_eq!(ssh[0].network, net("198.51.100.0/24"));
    // Refused under enforcement: counted for the port, not summarised by source (a flood of
    // forged sources would pay an insert each).
    assert!(sources(&stats, Proto::Tcp, 2222).is_empty(), "{:?}", sources(&stats, Proto::Tcp, 2222));
    assert_eq!(stats.port(Proto::Tcp, 2222).unwrap().refused.connections, 1);
    let domain = sources(&stats, Proto::Udp, 53);
    assert_eq!((domain[0].network, domain[0].connections), (net("198.51.101.0/24"), 3));
    assert_eq!(domain[0].bytes, 3 * dns.len() as u64, "every datagram's bytes");
    assert_eq!(stats.sources_added, 5);
    assert_eq!(stats.sources_forgotten(), 0);
}

#[test]
fn blocked_sources_are_not_counted_and_monitor_mode_counts_would_drops_as_refused() {
    require_root!();
    let mut j = judge(POLICY);
    let listed = v4(203, 0, 113, 200);
    send(&mut j, &tcp(listed, server(listed), 40000, 22, SYN), Reason::DropBlocklist);
    send(&mut j, &udp(listed, server(listed), 40000, 53), Reason::DropBlocklist);
    let stats = j.port_statistics().unwrap();
    assert!(stats.ports.is_empty() && stats.sources.is_empty(), "{stats:?}");

    let mut j = judge(&format!("mode = \"monitor\"\n{POLICY}"));
    let client = v4(198, 51, 100, 7);
    let outcome = j.run(&tcp(client, server(client), 40000, 8080, SYN)).unwrap();
    assert!(outcome.monitored && outcome.reason == Reason::DropDefaultDeny, "{outcome:?}");
    let stats = j.port_statistics().unwrap();
    let web = stats.port(Proto::Tcp, 8080).unwrap();
    assert_eq!((web.accepted.packets, web.refused.packets, web.refused.connections), (0, 1, 1));
    let source = sources(&stats, Proto::Tcp, 8080);
    assert_eq!((source[0].network, source[0].connections, source[0].refused), (net("198.51.100.0/24"), 1, 1));
}

#[test]
fn a_full_source_table_says_it_forgot_and_a_reset_starts_again() {
    require_root!();
    // On one CPU: its cache holds at most its slots' worth of networks beside the table.
    let _pinned = PinnedTo::first_cpus(1);
    let mut j = judge(&format!("{POLICY}\n[limits]\nport_sources = 1024\n"));
    let networks = 4000u16;
    // As many /48s of the documentation prefix (the policy's ipv6_prefix).
    for n in 0..networks {
        let src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 1));
        send(&mut j, &udp(src, server(src), 5353, 53), Reason::PassPortAllowed);
    }
    let stats = j.port_statistics().unwrap();
    assert_eq!(stats.source_capacity, 1024);
    assert_eq!(stats.sources_added, u64::from(networks));
    let held = stats.sources.len() as u64;
    assert!(held <= 1024 + u64::from(PORT_SOURCE_CACHE_SLOTS), "{held}");
    assert_eq!(stats.sources_forgotten(), u64::from(networks) - held);
    assert!(stats.sources_forgotten() >= u64::from(networks) - 1024 - u64::from(PORT_SOURCE_CACHE_SLOTS));
    // Every network still held has its one datagram.
    assert!(stats.sources.iter().all(|s| s.connections == 1), "{:?}", stats.sources);
    // The per-port counts are exact whatever the source table holds.
    assert_eq!(stats.port(Proto::Udp, 53).unwrap().accepted.connections, u64::from(networks));

    let mut maps = PortStatsMaps::of(j.ebpf()).unwrap();
    maps.reset().unwrap();
    let after = maps.snapshot().unwrap();
    assert!(after.ports.is_empty() && after.sources.is_empty(), "{after:?}");
    assert_eq!((after.sources_added, after.sources_forgotten()), (0, 0));
    assert!(after.since > stats.since, "{:?} then {:?}", stats.since, after.since);
    let src = v4(198, 51, 100, 7);
    send(&mut j, &tcp(src, server(src), 40000, 22, SYN), Reason::PassPortAllowed);
    let again = j.port_statistics().unwrap();
    assert_eq!(again.port(Proto::Tcp, 22).unwrap().accepted.connections, 1);
    assert_eq!((again.sources.len(), again.sources_added), (1, 1));
    // What a sampler sees between two snapshots.
    let between = again.ports_since(&after);
    assert_eq!(between.len(), 1);
    assert_eq!(between[0].accepted.connections, 1);
}

#[test]
fn replies_to_the_hosts_own_traffic_are_not_use_of_a_port() {
    require_root!();
    let mut j = judge(POLICY);
    let resolver = v4(198, 51, 100, 53);
    let host = server(resolver);
    // The host asks a resolver; the answer comes back to its ephemeral port as a flow.
    j.run_egress(&udp(host, resolver, 53_000, 53)).unwrap();
    send(&mut j, &udp(resolver, host, 53, 53_000), Reason::PassFlow);
    j.run_egress(&tcp(host, resolver, 53_001, 443, SYN)).unwrap();
    send(&mut j, &tcp(resolver, host, 443, 53_001, SYN | ACK), Reason::PassFlow);
    let stats = j.port_statistics().unwrap();
    assert!(stats.ports.is_empty() && stats.sources.is_empty(), "{stats:?}");
}

/// Pins the calling thread to CPUs while alive (a test's CPU decides which cache it writes);
/// puts the thread's CPUs back when dropped.
struct PinnedTo {
    before: CpuSet,
    cpus: Vec<usize>,
}

impl PinnedTo {
    /// The first `count` CPUs this thread may run on, or `None` if it may run on fewer; the
    /// thread is left pinned to the first.
    fn first_cpus(count: usize) -> Option<Self> {
        let before = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let cpus: Vec<usize> =
            (0..CpuSet::count()).filter(|&cpu| before.is_set(cpu).unwrap_or(false)).take(count).collect();
        if cpus.len() < count {
            return None;
        }
        let pinned = Self { before, cpus };
        pinned.run_on(0);
        Some(pinned)
    }

    /// Moves the thread to the `index`th of the CPUs.
    fn run_on(&self, index: usize) {
        let mut set = CpuSet::new();
        set.set(self.cpus[index]).unwrap();
        sched_setaffinity(Pid::from_raw(0), &set).unwrap();
    }
}

impl Drop for PinnedTo {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.before);
    }
}

fn tcp22_key(segment: u16) -> PortSourceKey {
    PortSourceKey {
        addr: Ipv6Addr::new(0x2001, 0xdb8, segment, 0, 0, 0, 0, 0).octets(),
        port: 22,
        proto: PROTO_TCP,
        prefix_len: 48,
        _pad: 0,
    }
}

/// Sends a SYN to tcp/22 from 2001:db8:`segment`::1 (the policy counts /48s).
#[track_caller]
fn syn_from(j: &mut Judge, segment: u16) -> u64 {
    let src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, segment, 0, 0, 0, 0, 1));
    send(j, &tcp(src, server(src), 40000, 22, SYN), Reason::PassPortAllowed)
}

/// The shared table's entry for the network, read directly.
fn table_entry(j: &Judge, key: &PortSourceKey) -> Option<PortSource> {
    let table: HashMap<_, PortSourceKey, PortSource> =
        HashMap::try_from(j.ebpf().map(MAP_PORT_SOURCES).unwrap()).unwrap();
    table.get(key, 0).ok()
}

/// Every CPU's occupied cache slots, read directly.
fn cached(j: &Judge) -> Vec<PortSourceSlot> {
    let cache: PerCpuArray<_, PortSourceSlot> =
        PerCpuArray::try_from(j.ebpf().map(MAP_PORT_SOURCE_CACHE).unwrap()).unwrap();
    (0..PORT_SOURCE_CACHE_SLOTS)
        .flat_map(|slot| cache.get(&slot, 0).unwrap().iter().copied().collect::<Vec<_>>())
        .filter(|held| held.source.connections != 0)
        .collect()
}

#[test]
fn a_network_is_counted_in_its_cache_slot_and_moves_to_the_table_when_another_takes_it() {
    require_root!();
    let _pinned = PinnedTo::first_cpus(1);
    let mut j = judge(POLICY);
    // Two /48s whose tcp/22 connections share a slot.
    let slot = port_source_slot(tcp22_key(1).words());
    let rival = (2..=u16::MAX).find(|&n| port_source_slot(tcp22_key(n).words()) == slot).unwrap();
    let (first, second) = (tcp22_key(1), tcp22_key(rival));

    let bytes = (0..3).map(|_| syn_from(&mut j, 1)).sum::<u64>();
    // Held in the cache alone: the table has no entry yet, the snapshot has the network.
    assert_eq!(table_entry(&j, &first), None);
    assert_eq!(cached(&j).len(), 1);
    assert_eq!((cached(&j)[0].key, cached(&j)[0].source.connections), (first, 3));
    let stats = j.port_statistics().unwrap();
    let ssh = sources(&stats, Proto::Tcp, 22);
    assert_eq!(ssh.len(), 1, "{ssh:?}");
    assert_eq!((ssh[0].network, ssh[0].connections, ssh[0].bytes), (net("2001:db8:1::/48"), 3, bytes));
    assert_eq!((stats.sources_added, stats.sources_forgotten()), (1, 0));

    // The rival takes the slot: the first network's counts move to the table, exactly.
    let rival_bytes = syn_from(&mut j, rival) + syn_from(&mut j, rival);
    let moved = table_entry(&j, &first).expect("moved to the table");
    assert_eq!((moved.connections, moved.bytes, moved.refused), (3, bytes, 0));
    assert!(moved.first_seen_ns <= moved.last_seen_ns && moved.first_seen_ns != 0);
    assert_eq!(table_entry(&j, &second), None);
    let stats = j.port_statistics().unwrap();
    let by_net = |stats: &Snapshot, n: u16| {
        let network = IpNet::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 0)), 48).unwrap();
        sources(stats, Proto::Tcp, 22).into_iter().find(|s| s.network == network).unwrap()
    };
    assert_eq!((by_net(&stats, 1).connections, by_net(&stats, rival).connections), (3, 2));
    assert_eq!(by_net(&stats, rival).bytes, rival_bytes);
    assert_eq!((stats.sources_added, stats.sources_forgotten()), (2, 0));

    // Back again, some ticks of the coarse clock later: its new connection in the slot, its old
    // ones in the table, one entry read (earliest first seen, latest last seen).
    let before = by_net(&stats, 1);
    std::thread::sleep(Duration::from_millis(40));
    syn_from(&mut j, 1);
    assert_eq!(table_entry(&j, &first).unwrap().connections, 3);
    assert_eq!(table_entry(&j, &second).unwrap().connections, 2);
    let stats = j.port_statistics().unwrap();
    assert_eq!(sources(&stats, Proto::Tcp, 22).len(), 2);
    let merged = by_net(&stats, 1);
    assert_eq!(merged.connections, 4);
    let apart = |a: SystemTime, b: SystemTime| a.duration_since(b).unwrap_or_else(|e| e.duration());
    assert!(apart(merged.first_seen, before.first_seen) < Duration::from_millis(5), "{merged:?} {before:?}");
    assert!(merged.last_seen >= before.last_seen + Duration::from_millis(20), "{merged:?} {before:?}");
    assert!(merged.last_seen <= stats.taken_at);
    assert_eq!((stats.sources_added, stats.sources_forgotten()), (2, 0));
}

#[test]
fn every_cpus_cache_is_read_and_a_reset_empties_them() {
    require_root!();
    let Some(pinned) = PinnedTo::first_cpus(2) else {
        portguard_tests::cannot_run("it needs two CPUs to write two CPUs' caches");
        return;
    };
    let mut j = judge(POLICY);
    syn_from(&mut j, 1);
    syn_from(&mut j, 1);
    pinned.run_on(1);
    for _ in 0..3 {
        syn_from(&mut j, 1);
    }
    syn_from(&mut j, 2);
    // The network in both CPUs' slots, nothing in the table yet.
    let held = cached(&j);
    let counts: Vec<u64> =
        held.iter().filter(|h| h.key == tcp22_key(1)).map(|h| h.source.connections).collect();
    assert_eq!(counts, [2, 3], "{held:?}");
    assert_eq!(table_entry(&j, &tcp22_key(1)), None);
    let stats = j.port_statistics().unwrap();
    let ssh = sources(&stats, Proto::Tcp, 22);
    assert_eq!(ssh.len(), 2, "{ssh:?}");
    assert_eq!((ssh[0].network, ssh[0].connections), (net("2001:db8:1::/48"), 5));
    assert_eq!((ssh[1].network, ssh[1].connections), (net("2001:db8:2::/48"), 1));
    let first_cpu = held.iter().find(|h| h.source.connections == 2).unwrap().source;
    let second_cpu = held.iter().find(|h| h.source.connections == 3).unwrap().source;
    assert!(first_cpu.first_seen_ns <= second_cpu.first_seen_ns);
    assert_eq!(
        (stats.sources_added, stats.sources_forgotten()),
        (2, 0),
        "a network held in two caches is one entry"
    );

    let mut maps = PortStatsMaps::of(j.ebpf()).unwrap();
    maps.reset().unwrap();
    assert!(cached(&j).is_empty(), "{:?}", cached(&j));
    let after = maps.snapshot().unwrap();
    assert!(after.sources.is_empty() && after.ports.is_empty(), "{after:?}");
    assert_eq!((after.sources_added, after.sources_forgotten()), (0, 0));
    pinned.run_on(0);
    syn_from(&mut j, 1);
    let again = maps.snapshot().unwrap();
    assert_eq!(sources(&again, Proto::Tcp, 22)[0].connections, 1);
    assert_eq!(again.sources_added, 1);
}

//! Per-source limits of new connections (`limit = { new_per_source, burst }` on allow rules),
//! run on the real kernel program with BPF_PROG_TEST_RUN: who is refused, when budgets come
//! back, how sources are grouped, who is exempt, what monitor mode does, and what is counted.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use portguard::judge::{Judge, Outcome, XDP_DROP, XDP_PASS};
use portguard_common::Reason;
use portguard_tests::{kernel::judge, packets::*, require_root};

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

fn server(src: IpAddr) -> IpAddr {
    if src.is_ipv6() { v6("2001:db8::2") } else { IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)) }
}

fn syn(j: &mut Judge, src: IpAddr, port: u16) -> Outcome {
    j.run(&tcp(src, server(src), 40000, port, SYN)).unwrap()
}

#[track_caller]
fn expect(outcome: Outcome, reason: Reason) {
    assert_eq!(outcome.reason, reason, "{outcome:?}");
    let action = if reason.is_drop() && !outcome.monitored { XDP_DROP } else { XDP_PASS };
    assert_eq!(outcome.action, action, "{outcome:?}");
}

const SSH_AND_WEB: &str = r#"
default = "deny"
never_block = ["203.0.113.0/24"]

[[allow]]
name = "ssh"
proto = "tcp"
ports = [22]
limit = { new_per_source = "5/1h", burst = 5 }

[[allow]]
name = "web"
proto = "tcp"
ports = [80]

[[allow]]
name = "dns"
proto = "udp"
ports = [53]
limit = { new_per_source = "3/1h" }
"#;

#[test]
fn a_source_over_its_burst_is_refused_and_others_are_not() {
    require_root!();
    let mut j = judge(SSH_AND_WEB);
    let first = v4(1);
    for _ in 0..5 {
        expect(syn(&mut j, first, 22), Reason::PassPortAllowed);
    }
    for _ in 0..10 {
        expect(syn(&mut j, first, 22), Reason::DropRateLimited);
    }
    // Segments that cannot open a connection are not counted, nor refused.
    let ack = j.run(&tcp(first, server(first), 40000, 22, ACK)).unwrap();
    expect(ack, Reason::PassPortAllowed);
    // Another source has its own budget; an unlimited port costs nothing.
    for _ in 0..5 {
        expect(syn(&mut j, v4(2), 22), Reason::PassPortAllowed);
    }
    expect(syn(&mut j, v4(2), 22), Reason::DropRateLimited);
    for _ in 0..50 {
        expect(syn(&mut j, first, 80), Reason::PassPortAllowed);
    }
    // UDP: every datagram is an attempt; burst defaults to the rate's count.
    for _ in 0..3 {
        expect(j.run(&udp(first, server(first), 40000, 53)).unwrap(), Reason::PassPortAllowed);
    }
    expect(j.run(&udp(first, server(first), 40000, 53)).unwrap(), Reason::DropRateLimited);
    // Counted per rule (slots in file order of the limited rules), and per port.
    assert_eq!(j.rule_limited().unwrap()[..2], [11, 1]);
    assert_eq!(j.port_drops(portguard::policy::Proto::Tcp, 22), 11);
}

#[test]
fn the_budget_comes_back_at_the_rate() {
    require_root!();
    let mut j = judge(
        r#"
default = "deny"
[[allow]]
proto = "tcp"
ports = [22]
limit = { new_per_source = "4/s", burst = 2 }
"#,
    );
    let source = v4(3);
    expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    expect(syn(&mut j, source, 22), Reason::DropRateLimited);
    // One token every 250 ms (the clock is coarse: a few ms of slack).
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(320));
    expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    if start.elapsed() < Duration::from_millis(450) {
        expect(syn(&mut j, source, 22), Reason::DropRateLimited);
    }
    std::thread::sleep(Duration::from_millis(600));
    expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    expect(syn(&mut j, source, 22), Reason::DropRateLimited);
}

#[test]
fn ipv6_sources_share_their_network_and_never_block_is_exempt() {
    require_root!();
    let mut j = judge(SSH_AND_WEB);
    // 2001:db8::1 and 2001:db8::7 are one /64 (the default `ipv6_prefix`).
    for host in ["2001:db8::1", "2001:db8::7", "2001:db8::1", "2001:db8::9", "2001:db8::ff"] {
        expect(syn(&mut j, v6(host), 22), Reason::PassPortAllowed);
    }
    expect(syn(&mut j, v6("2001:db8::1234"), 22), Reason::DropRateLimited);
    // The next /64 has a budget of its own.
    expect(syn(&mut j, v6("2001:db8:0:1::1"), 22), Reason::PassPortAllowed);
    // never_block: never refused, never counted.
    let exempt = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
    for _ in 0..20 {
        expect(syn(&mut j, exempt, 22), Reason::PassPortAllowed);
    }
    assert_eq!(j.rule_limited().unwrap()[0], 1);

    let mut j = judge(&format!("{SSH_AND_WEB}\n[scan_detection]\nipv6_prefix = 128\n"));
    for _ in 0..5 {
        expect(syn(&mut j, v6("2001:db8::1"), 22), Reason::PassPortAllowed);
    }
    expect(syn(&mut j, v6("2001:db8::1"), 22), Reason::DropRateLimited);
    expect(syn(&mut j, v6("2001:db8::7"), 22), Reason::PassPortAllowed);
}

#[test]
fn monitor_mode_counts_and_drops_nothing() {
    require_root!();
    let mut j = judge(&format!("mode = \"monitor\"\n{SSH_AND_WEB}"));
    let source = v4(4);
    for _ in 0..5 {
        expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    }
    for _ in 0..3 {
        let outcome = syn(&mut j, source, 22);
        expect(outcome, Reason::DropRateLimited);
        assert!(outcome.monitored && !outcome.dropped(), "{outcome:?}");
    }
    assert_eq!(j.rule_limited().unwrap()[0], 3);
}

#[test]
fn each_from_list_has_its_own_rules_limit() {
    require_root!();
    let mut j = judge(
        r#"
default = "deny"
[[allow]]
name = "admins"
proto = "tcp"
ports = [22]
from = ["198.51.100.0/28"]
limit = { new_per_source = "1/1h", burst = 1 }

[[allow]]
name = "office"
proto = "tcp"
ports = [22]
from = ["198.51.100.0/24"]
limit = { new_per_source = "3/1h", burst = 3 }

[[allow]]
name = "backup"
proto = "tcp"
ports = [22]
from = ["192.0.2.0/24"]
"#,
    );
    // 198.51.100.1 is in the admins' /28 (the most specific match): one attempt.
    expect(syn(&mut j, v4(1), 22), Reason::PassSourceAllowed);
    expect(syn(&mut j, v4(1), 22), Reason::DropRateLimited);
    // 198.51.100.100 only in the office /24: three.
    for _ in 0..3 {
        expect(syn(&mut j, v4(100), 22), Reason::PassSourceAllowed);
    }
    expect(syn(&mut j, v4(100), 22), Reason::DropRateLimited);
    // The backup rule carries no limit.
    let backup = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
    for _ in 0..10 {
        expect(syn(&mut j, backup, 22), Reason::PassSourceAllowed);
    }
    // Not admitted at all: refused by the port policy, not the limiter.
    expect(syn(&mut j, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 22), Reason::DropSourceNotAllowed);
    assert_eq!(j.rule_limited().unwrap()[..2], [1, 1]);
}

/// Every event in the judge's ring buffer, oldest first.
fn drain_events(j: &mut Judge) -> Vec<portguard_common::events::Event> {
    portguard_tests::kernel::drain_ring(j, "PG_EVENTS")
}

/// The automatic block (and `[brute_force]`'s record) of an IPv4 source.
fn auto_block(j: &Judge, src: Ipv4Addr) -> Option<portguard_common::maps::AutoBlock> {
    let map = portguard_tests::kernel::own_map(j, "PG_AUTO_BLOCK");
    let blocks: aya::maps::HashMap<_, [u8; 16], portguard_common::maps::AutoBlock> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).unwrap();
    blocks.get(&portguard_common::maps::v4_mapped(src.octets()), 0).ok()
}

const BRUTE_FORCE: &str = r#"
default = "deny"
never_block = ["203.0.113.0/24"]

[[allow]]
name = "ssh"
proto = "tcp"
ports = [22]
limit = { new_per_source = "2/1h", burst = 2 }

[[allow]]
name = "web"
proto = "tcp"
ports = [80]

[brute_force]
after = 3
within = "1h"
block_for = "1s"
recidive_within = "1h"
max_block_for = "3s"
"#;

/// Two attempts admitted, two refused, and the third refusal blocks.
#[track_caller]
fn hammer_until_blocked(j: &mut Judge, source: IpAddr, admitted: usize) {
    for _ in 0..admitted {
        expect(syn(j, source, 22), Reason::PassPortAllowed);
    }
    for _ in 0..2 {
        expect(syn(j, source, 22), Reason::DropRateLimited);
    }
    expect(syn(j, source, 22), Reason::DropAutoBlock);
}

fn block_secs(block: &portguard_common::maps::AutoBlock) -> f64 {
    (block.expires_ns - block.added_ns) as f64 / 1e9
}

#[test]
fn a_source_refused_too_often_is_blocked_and_a_repeat_offender_for_longer() {
    use portguard_common::{
        events::EventKind,
        maps::{CAUSE_RATE_LIMIT, CAUSE_RECIDIVE},
    };
    require_root!();
    let mut j = judge(BRUTE_FORCE);
    let src = Ipv4Addr::new(198, 51, 100, 9);
    let source = IpAddr::V4(src);
    hammer_until_blocked(&mut j, source, 2);
    // Blocked on every port now, the open one too; another source is not.
    expect(syn(&mut j, source, 80), Reason::DropAutoBlock);
    expect(syn(&mut j, v4(10), 22), Reason::PassPortAllowed);
    let first = auto_block(&j, src).expect("blocked");
    assert_eq!((first.cause, first.kind, first.port), (CAUSE_RATE_LIMIT, 6, 22));
    assert!((0.9..1.1).contains(&block_secs(&first)), "{first:?}");
    // Its evidence (`[evidence]` is on by default): the refusal that made the block, then the
    // next packet.
    let evidence: Vec<portguard_common::events::EvidencePacket> =
        portguard_tests::kernel::drain_ring(&mut j, "PG_EVIDENCE");
    let frames: Vec<&[u8]> = evidence.iter().map(|p| &p.frame[..p.cap_len as usize]).collect();
    assert_eq!(
        frames,
        [&tcp(source, server(source), 40000, 22, SYN)[..], &tcp(source, server(source), 40000, 80, SYN)[..]]
    );

    // One `limited` event for the window's first refusal (instead of its drop event), a drop
    // event for the second, then the block with its evidence.
    let events = drain_events(&mut j);
    let kinds: Vec<u8> = events.iter().map(|e| e.kind).collect();
    let expected = [EventKind::Limited, EventKind::Drop, EventKind::AutoBlocked].map(|k| k as u8);
    assert_eq!(kinds, expected, "{events:?}");
    assert_eq!((events[0].reason, events[0].count, events[0].dport), (CAUSE_RATE_LIMIT, 1, 22));
    assert_eq!(
        (events[2].reason, events[2].scan_kind, events[2].count),
        (CAUSE_RATE_LIMIT, CAUSE_RATE_LIMIT, 3)
    );

    // After the block: the rate still refuses (its budget is per hour), the count starts
    // again, and the next block is a recidive, twice as long.
    std::thread::sleep(Duration::from_millis(1200));
    hammer_until_blocked(&mut j, source, 0);
    let second = auto_block(&j, src).expect("blocked again");
    assert_eq!(second.cause, CAUSE_RECIDIVE);
    assert!((1.9..2.1).contains(&block_secs(&second)), "{second:?}");
    let events = drain_events(&mut j);
    let block = events.iter().find(|e| e.kind == EventKind::AutoBlocked as u8).expect("a block event");
    assert_eq!((block.reason, block.scan_kind), (CAUSE_RECIDIVE, CAUSE_RATE_LIMIT));

    // The third is capped at max_block_for (3 s, not 4). 2 s and the per-CPU memo's 0.64 s.
    std::thread::sleep(Duration::from_millis(2800));
    hammer_until_blocked(&mut j, source, 0);
    let third = auto_block(&j, src).expect("blocked a third time");
    assert!((2.9..3.1).contains(&block_secs(&third)), "{third:?}");

    // `unblock` lifts it and forgets the record: the next block is a first one again.
    let net: ipnet::IpNet = "198.51.100.9/32".parse().unwrap();
    let mut blocks = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(
        portguard_tests::kernel::own_map(&j, "PG_AUTO_BLOCK"),
    ))
    .unwrap();
    let mut runtime =
        aya::maps::Array::try_from(aya::maps::Map::Array(portguard_tests::kernel::own_map(&j, "PG_RUNTIME")))
            .unwrap();
    assert_eq!(portguard::blocks::lift_automatic_in(&mut blocks, &mut runtime, &net).unwrap(), 1);
    let mut offenders = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(
        portguard_tests::kernel::own_map(&j, "PG_OFFENDERS"),
    ))
    .unwrap();
    portguard::blocks::forget_offenders_in(&mut offenders, &net);
    hammer_until_blocked(&mut j, source, 0);
    let fresh = auto_block(&j, src).expect("blocked after the lift");
    assert_eq!(fresh.cause, CAUSE_RATE_LIMIT);
    assert!((0.9..1.1).contains(&block_secs(&fresh)), "{fresh:?}");
}

#[test]
fn brute_force_spares_never_block_and_only_counts_in_monitor_mode() {
    require_root!();
    let mut j = judge(BRUTE_FORCE);
    let exempt = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
    for _ in 0..20 {
        expect(syn(&mut j, exempt, 22), Reason::PassPortAllowed);
    }

    let mut j = judge(&format!("mode = \"monitor\"\n{BRUTE_FORCE}"));
    let source = v4(11);
    expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    for _ in 0..2 {
        let outcome = syn(&mut j, source, 22);
        expect(outcome, Reason::DropRateLimited);
        assert!(outcome.monitored, "{outcome:?}");
    }
    // The block is recorded (and reported as "would block"), and nothing is dropped.
    for _ in 0..3 {
        let outcome = syn(&mut j, source, 22);
        expect(outcome, Reason::DropAutoBlock);
        assert!(outcome.monitored && !outcome.dropped(), "{outcome:?}");
    }
    assert!(auto_block(&j, Ipv4Addr::new(198, 51, 100, 11)).is_some());
}

#[test]
fn without_brute_force_a_limit_only_refuses_and_reports_once_a_minute() {
    require_root!();
    let mut j = judge(SSH_AND_WEB);
    let source = v4(12);
    for _ in 0..5 {
        expect(syn(&mut j, source, 22), Reason::PassPortAllowed);
    }
    for _ in 0..50 {
        expect(syn(&mut j, source, 22), Reason::DropRateLimited);
    }
    let limited = drain_events(&mut j)
        .iter()
        .filter(|e| e.kind == portguard_common::events::EventKind::Limited as u8)
        .count();
    assert_eq!(limited, 1);
}

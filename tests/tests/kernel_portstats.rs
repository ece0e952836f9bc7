//! The per-port statistics `learn` reads (`portguard::portstats`), counted by the real kernel
//! program under BPF_PROG_TEST_RUN: packets, bytes and new connections per port, admitted and
//! refused apart; source networks by /24 and by the policy's `ipv6_prefix`; what is not
//! counted (segments of connections in the source table, blocked sources); reset.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use portguard::{
    judge::Judge,
    policy::Proto,
    portstats::{PortStatsMaps, Snapshot, SourceUse, Traffic},
};
use portguard_common::Reason;
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
    let mut j = judge(&format!("{POLICY}\n[limits]\nport_sources = 1024\n"));
    let networks = 1500u16;
    // As many /48s of the documentation prefix (the policy's ipv6_prefix).
    for n in 0..networks {
        let src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 1));
        send(&mut j, &udp(src, server(src), 5353, 53), Reason::PassPortAllowed);
    }
    let stats = j.port_statistics().unwrap();
    assert_eq!(stats.source_capacity, 1024);
    assert_eq!(stats.sources_added, u64::from(networks));
    assert!(stats.sources.len() <= 1024, "{}", stats.sources.len());
    assert!(stats.sources_forgotten() >= u64::from(networks) - 1024);
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

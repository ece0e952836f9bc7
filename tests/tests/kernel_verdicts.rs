//! The real kernel program, run on crafted frames with BPF_PROG_TEST_RUN: parser coverage
//! (VLAN, QinQ, IPv4 options, IPv6 extension headers, fragments), hostile frames, and every
//! verdict reason. No interface is involved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portguard::judge::{Outcome, XDP_DROP, XDP_PASS};
use portguard_common::Reason;
use portguard_tests::{kernel::judge, packets::*, require_root};

const EXAMPLE: &str = include_str!("../../examples/policy.toml");

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

const CLIENT: [u8; 4] = [192, 0, 2, 1];
const SERVER: [u8; 4] = [192, 0, 2, 2];

fn client() -> IpAddr {
    IpAddr::from(CLIENT)
}
fn server() -> IpAddr {
    IpAddr::from(SERVER)
}
fn client6() -> IpAddr {
    v6("2001:db8::1")
}
fn server6() -> IpAddr {
    v6("2001:db8::2")
}

#[track_caller]
fn expect(outcome: Outcome, reason: Reason) {
    assert_eq!(outcome.reason, reason, "{outcome:?}");
    let action = if reason.is_drop() && !outcome.monitored { XDP_DROP } else { XDP_PASS };
    assert_eq!(outcome.action, action, "{outcome:?}");
}

#[test]
fn ports_allow_deny_and_default() {
    require_root!();
    let mut j = judge(EXAMPLE);
    for (src, dst) in [(client(), server()), (client6(), server6())] {
        for port in [80, 443, 8000, 8050, 8100] {
            expect(j.run(&tcp(src, dst, 40000, port, SYN)).unwrap(), Reason::PassPortAllowed);
        }
        for port in [23, 445, 3389] {
            expect(j.run(&tcp(src, dst, 40000, port, SYN)).unwrap(), Reason::DropPortDenied);
        }
        for port in [21, 7999, 8101, 3306, 65535] {
            expect(j.run(&tcp(src, dst, 40000, port, SYN)).unwrap(), Reason::DropDefaultDeny);
        }
        expect(j.run(&udp(src, dst, 40000, 53)).unwrap(), Reason::PassPortAllowed);
        expect(j.run(&udp(src, dst, 40000, 54)).unwrap(), Reason::DropDefaultDeny);
    }
}

#[test]
fn source_limited_ports() {
    require_root!();
    let mut j = judge(EXAMPLE);
    expect(j.run(&tcp(v4(198, 51, 100, 9), server(), 40000, 22, SYN)).unwrap(), Reason::PassSourceAllowed);
    expect(j.run(&tcp(v4(198, 51, 101, 9), server(), 40000, 22, SYN)).unwrap(), Reason::DropSourceNotAllowed);
    expect(j.run(&tcp(client(), server(), 40000, 22, SYN)).unwrap(), Reason::DropSourceNotAllowed);
    expect(
        j.run(&tcp(v6("2001:db8:1:ffff::9"), server6(), 40000, 22, SYN)).unwrap(),
        Reason::PassSourceAllowed,
    );
    expect(
        j.run(&tcp(v6("2001:db8:2::9"), server6(), 40000, 22, SYN)).unwrap(),
        Reason::DropSourceNotAllowed,
    );
    // The source list belongs to port 22 only.
    expect(j.run(&tcp(v4(198, 51, 100, 9), server(), 40000, 2222, SYN)).unwrap(), Reason::DropDefaultDeny);
}

#[test]
fn blocklist_cidrs_and_addresses_any_protocol() {
    require_root!();
    let policy = r#"
        default = "allow"
        [blocklist]
        sources = ["203.0.113.0/24", "198.51.100.7", "198.18.0.0/15", "192.0.2.128/25", "198.51.96.0/22",
                   "2001:db8:bad::/48", "2001:db8::dead", "2001:db8:f00::/40"]
    "#;
    let mut j = judge(policy);
    let blocked = [
        v4(203, 0, 113, 1),
        v4(203, 0, 113, 255),
        v4(198, 51, 100, 7),
        v4(198, 18, 0, 1),
        v4(198, 19, 255, 254),
        v4(192, 0, 2, 200),
        v4(198, 51, 97, 3),
        v6("2001:db8:bad::1"),
        v6("2001:db8:bad:ffff:ffff:ffff:ffff:ffff"),
        v6("2001:db8::dead"),
        v6("2001:db8:fff::1"),
    ];
    let passing = [
        v4(203, 0, 114, 1),
        v4(198, 51, 100, 6),
        v4(198, 51, 100, 8),
        v4(198, 20, 0, 1),
        v4(192, 0, 2, 127),
        v4(198, 51, 100, 9),
        v6("2001:db8:bae::1"),
        v6("2001:db8::deae"),
        v6("2001:db8:1000::1"),
    ];
    for src in blocked {
        let dst = if src.is_ipv6() { server6() } else { server() };
        expect(j.run(&tcp(src, dst, 1234, 80, SYN)).unwrap(), Reason::DropBlocklist);
        expect(j.run(&udp(src, dst, 1234, 53)).unwrap(), Reason::DropBlocklist);
        expect(
            j.run(&icmp(src, dst, if src.is_ipv6() { 128 } else { 8 }, 64)).unwrap(),
            Reason::DropBlocklist,
        );
    }
    for src in passing {
        let dst = if src.is_ipv6() { server6() } else { server() };
        expect(j.run(&tcp(src, dst, 1234, 80, SYN)).unwrap(), Reason::PassDefaultAllow);
    }
}

#[test]
fn never_block_beats_blocklist_but_not_port_policy() {
    require_root!();
    let policy = r#"
        default = "deny"
        never_block = ["203.0.113.64/26"]
        [[allow]]
        proto = "tcp"
        ports = [80]
        [blocklist]
        sources = ["203.0.113.0/24"]
    "#;
    let mut j = judge(policy);
    expect(j.run(&tcp(v4(203, 0, 113, 70), server(), 1234, 80, SYN)).unwrap(), Reason::PassPortAllowed);
    expect(j.run(&tcp(v4(203, 0, 113, 70), server(), 1234, 81, SYN)).unwrap(), Reason::DropDefaultDeny);
    expect(j.run(&tcp(v4(203, 0, 113, 7), server(), 1234, 80, SYN)).unwrap(), Reason::DropBlocklist);
}

#[test]
fn vlan_and_qinq_tags_are_seen_through() {
    require_root!();
    let mut j = judge(EXAMPLE);
    let stacks: [&[(u16, u16)]; 5] = [
        &[(TPID_8021Q, 100)],
        &[(TPID_8021AD, 200), (TPID_8021Q, 100)],
        &[(TPID_8021Q, 1), (TPID_8021Q, 2), (TPID_8021Q, 3)],
        &[(TPID_8021AD, 1), (TPID_8021AD, 2), (TPID_8021Q, 3), (TPID_8021Q, 4)],
        &[(TPID_8021Q, 4095)],
    ];
    for tags in stacks {
        for v6 in [false, true] {
            let (src, dst) = if v6 { (client6(), server6()) } else { (client(), server()) };
            let allowed = ethernet(&ip_packet(&Ip::new(src, dst, TCP), &tcp_header(1, 443, SYN)), v6, tags);
            expect(j.run(&allowed).unwrap(), Reason::PassPortAllowed);
            let denied = ethernet(&ip_packet(&Ip::new(src, dst, TCP), &tcp_header(1, 23, SYN)), v6, tags);
            expect(j.run(&denied).unwrap(), Reason::DropPortDenied);
        }
    }
    // More tags than the parser walks: not judged by a guess.
    let five = [(TPID_8021Q, 1); 5];
    let frame =
        ethernet(&ip_packet(&Ip::new(client(), server(), TCP), &tcp_header(1, 443, SYN)), false, &five);
    expect(j.run(&frame).unwrap(), Reason::DropMalformed);
}

#[test]
fn ipv4_options_use_ihl() {
    require_root!();
    let mut j = judge(EXAMPLE);
    for words in 0..=10 {
        let mut ip = Ip::new(client(), server(), TCP);
        ip.ipv4_option_words = words;
        expect(j.run(&frame(&ip, &tcp_header(1, 80, SYN))).unwrap(), Reason::PassPortAllowed);
        expect(j.run(&frame(&ip, &tcp_header(1, 23, SYN))).unwrap(), Reason::DropPortDenied);
    }
}

#[test]
fn ipv6_extension_header_chains() {
    require_root!();
    let mut j = judge(EXAMPLE);
    let chains: Vec<Vec<(u8, Vec<u8>)>> = vec![
        vec![(HOP_BY_HOP, ipv6_ext(0))],
        vec![(HOP_BY_HOP, ipv6_ext(0)), (ROUTING, ipv6_ext(2)), (DEST_OPTS, ipv6_ext(1))],
        vec![(DEST_OPTS, ipv6_ext(30))],
        vec![(AUTH, vec![0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])],
        (0..8).map(|_| (DEST_OPTS, ipv6_ext(0))).collect(),
    ];
    for chain in chains {
        let mut ip = Ip::new(client6(), server6(), TCP);
        ip.ipv6_ext = chain.clone();
        expect(j.run(&frame(&ip, &tcp_header(1, 80, SYN))).unwrap(), Reason::PassPortAllowed);
        expect(j.run(&frame(&ip, &tcp_header(1, 3389, SYN))).unwrap(), Reason::DropPortDenied);
        ip.proto = UDP;
        expect(j.run(&frame(&ip, &udp_header(1, 53, 0))).unwrap(), Reason::PassPortAllowed);
    }
    // Nine extension headers: longer than the walk, so it is not judged by a guess.
    let mut ip = Ip::new(client6(), server6(), TCP);
    ip.ipv6_ext = (0..9).map(|_| (DEST_OPTS, ipv6_ext(0))).collect();
    expect(j.run(&frame(&ip, &tcp_header(1, 80, SYN))).unwrap(), Reason::DropMalformed);
}

#[test]
fn truncation_at_every_offset_is_malformed() {
    require_root!();
    let mut j = judge(EXAMPLE);
    let mut v4_options = Ip::new(client(), server(), TCP);
    v4_options.ipv4_option_words = 3;
    let mut v6_ext = Ip::new(client6(), server6(), TCP);
    v6_ext.ipv6_ext = vec![(HOP_BY_HOP, ipv6_ext(1)), (DEST_OPTS, ipv6_ext(0))];
    let frames = [
        tcp(client(), server(), 1, 80, SYN),
        tcp(client6(), server6(), 1, 80, SYN),
        udp(client(), server(), 1, 53),
        ethernet(
            &ip_packet(&Ip::new(client(), server(), TCP), &tcp_header(1, 80, SYN)),
            false,
            &[(TPID_8021AD, 7), (TPID_8021Q, 8)],
        ),
        frame(&v4_options, &tcp_header(1, 80, SYN)),
        frame(&v6_ext, &tcp_header(1, 80, SYN)),
    ];
    for full in frames {
        assert_ne!(j.run(&full).unwrap().reason, Reason::DropMalformed);
        for cut in 14..full.len() {
            let outcome = j.run(&full[..cut]).unwrap();
            expect(outcome, Reason::DropMalformed);
        }
    }
}

#[test]
fn lying_lengths_and_bad_headers() {
    require_root!();
    let mut j = judge(EXAMPLE);
    let good = tcp(client(), server(), 1, 80, SYN);
    expect(j.run(&good).unwrap(), Reason::PassPortAllowed);
    // Ethernet padding after the datagram is fine.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 20]);
    expect(j.run(&padded).unwrap(), Reason::PassPortAllowed);

    let ip = 14;
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = good.clone();
        f(&mut frame);
        frame
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("IHL 4", mutate(&|f| f[ip] = 0x44)),
        ("IHL 0", mutate(&|f| f[ip] = 0x40)),
        ("version 5", mutate(&|f| f[ip] = 0x55)),
        ("IHL past the frame", mutate(&|f| f[ip] = 0x4f)),
        (
            "total length past the frame",
            mutate(&|f| f[ip + 2..ip + 4].copy_from_slice(&1500u16.to_be_bytes())),
        ),
        (
            "total length below the header",
            mutate(&|f| f[ip + 2..ip + 4].copy_from_slice(&10u16.to_be_bytes())),
        ),
        ("total length cuts TCP", mutate(&|f| f[ip + 2..ip + 4].copy_from_slice(&30u16.to_be_bytes()))),
        ("TCP data offset 4", mutate(&|f| f[ip + 20 + 12] = 0x40)),
    ];
    for (what, frame) in cases {
        assert_eq!(j.run(&frame).unwrap().reason, Reason::DropMalformed, "{what}");
    }
    let good6 = tcp(client6(), server6(), 1, 80, SYN);
    let mut long6 = good6.clone();
    long6[ip + 4..ip + 6].copy_from_slice(&100u16.to_be_bytes());
    expect(j.run(&long6).unwrap(), Reason::DropMalformed);
    let mut version6 = good6.clone();
    version6[ip] = 0x40;
    expect(j.run(&version6).unwrap(), Reason::DropMalformed);

    // Zero-length UDP payload is a valid datagram.
    let empty = frame(&Ip::new(client(), server(), UDP), &udp_header(1, 53, 0));
    expect(j.run(&empty).unwrap(), Reason::PassPortAllowed);
}

#[test]
fn malformed_pass_is_configurable() {
    require_root!();
    let mut j = judge("default = \"deny\"\n[inbound]\nmalformed = \"pass\"\n");
    let mut frame = tcp(client(), server(), 1, 80, SYN);
    frame.truncate(40);
    expect(j.run(&frame).unwrap(), Reason::PassMalformed);
}

#[test]
fn not_ip_passes() {
    require_root!();
    let mut j = judge(EXAMPLE);
    expect(j.run(&arp()).unwrap(), Reason::PassNotIp);
}

fn fragment(src: IpAddr, dst: IpAddr, proto: u8, id: u32, offset: u16, more: bool, l4: &[u8]) -> Vec<u8> {
    let mut ip = Ip::new(src, dst, proto);
    ip.fragment = Some((id, offset, more));
    frame(&ip, l4)
}

#[test]
fn later_fragments_share_the_first_fragments_verdict() {
    require_root!();
    let mut j = judge(EXAMPLE);
    for (src, dst) in [(client(), server()), (client6(), server6())] {
        let mut first = tcp_header(1, 80, SYN);
        first.extend_from_slice(&[0u8; 16]);
        let outcome = j.run(&fragment(src, dst, TCP, 7, 0, true, &first)).unwrap();
        expect(outcome, Reason::PassPortAllowed);
        assert!(outcome.fragment_first);
        let later = j.run(&fragment(src, dst, TCP, 7, 5, true, &[0u8; 24])).unwrap();
        expect(later, Reason::PassFragment);
        assert!(later.fragment_later);
        expect(j.run(&fragment(src, dst, TCP, 7, 8, false, &[0u8; 24])).unwrap(), Reason::PassFragment);

        let mut denied = tcp_header(1, 3389, SYN);
        denied.extend_from_slice(&[0u8; 16]);
        expect(j.run(&fragment(src, dst, TCP, 8, 0, true, &denied)).unwrap(), Reason::DropPortDenied);
        expect(j.run(&fragment(src, dst, TCP, 8, 5, false, &[0u8; 24])).unwrap(), Reason::DropFragment);

        // A later fragment whose first was never seen: dropped by default.
        expect(j.run(&fragment(src, dst, TCP, 9, 5, false, &[0u8; 24])).unwrap(), Reason::DropFragmentUnseen);
        // Another datagram (other id, other protocol, other source) is not matched.
        expect(j.run(&fragment(src, dst, UDP, 7, 5, false, &[0u8; 24])).unwrap(), Reason::DropFragmentUnseen);
        // The classic bypass: a first fragment too short to hold the ports, and a TCP
        // fragment at offset 8 bytes that would rewrite the header.
        expect(
            j.run(&fragment(src, dst, TCP, 10, 0, true, &[0, 80, 0, 80, 0, 0, 0, 0])).unwrap(),
            Reason::DropMalformed,
        );
        expect(j.run(&fragment(src, dst, TCP, 7, 1, true, &[0u8; 24])).unwrap(), Reason::DropMalformed);
    }
}

#[test]
fn unseen_fragments_pass_when_configured() {
    require_root!();
    let mut j = judge("default = \"deny\"\n[inbound]\nfragments_unseen = \"pass\"\n");
    expect(
        j.run(&fragment(client(), server(), UDP, 3, 10, false, &[0u8; 16])).unwrap(),
        Reason::PassFragmentUnseen,
    );
}

#[test]
fn icmp_and_neighbor_discovery() {
    require_root!();
    let mut j = judge(
        r#"
        default = "deny"
        [inbound]
        icmp = "deny"
        icmpv6 = "deny"
        other_protocols = "deny"
        [blocklist]
        sources = ["2001:db8:bad::/48"]
        "#,
    );
    expect(j.run(&icmp(client(), server(), 8, 64)).unwrap(), Reason::DropProtocol);
    for t in [0, 3, 11, 12] {
        expect(j.run(&icmp(client(), server(), t, 64)).unwrap(), Reason::PassProtocol);
    }
    expect(j.run(&icmp(client6(), server6(), 128, 64)).unwrap(), Reason::DropProtocol);
    for t in [1, 2, 3, 4, 129, 143] {
        expect(j.run(&icmp(client6(), server6(), t, 64)).unwrap(), Reason::PassProtocol);
    }
    // Neighbour discovery from the link passes even from a blocklisted source.
    for t in 133..=137 {
        expect(j.run(&icmp(v6("2001:db8:bad::7"), server6(), t, 255)).unwrap(), Reason::PassNeighbor);
    }
    // Hop limit below 255: not from the link, so not exempt.
    expect(j.run(&icmp(v6("2001:db8:bad::7"), server6(), 135, 64)).unwrap(), Reason::DropBlocklist);
    // Another protocol (GRE).
    expect(j.run(&frame(&Ip::new(client(), server(), 47), &[0u8; 8])).unwrap(), Reason::DropProtocol);

    let mut open = judge("default = \"deny\"\n");
    expect(open.run(&icmp(client(), server(), 8, 64)).unwrap(), Reason::PassProtocol);
    expect(open.run(&frame(&Ip::new(client(), server(), 47), &[0u8; 8])).unwrap(), Reason::PassProtocol);
}

#[test]
fn tcp_segments_that_cannot_open_connections() {
    require_root!();
    let mut j = judge(EXAMPLE);
    // To an allowed port every segment passes.
    for flags in [SYN, ACK, SYN | ACK, FIN | ACK, RST] {
        expect(j.run(&tcp(client(), server(), 1, 80, flags)).unwrap(), Reason::PassPortAllowed);
    }
    // To a closed port: no known flow, so dropped (ACK, FIN, NULL and Xmas probes included).
    for flags in [ACK, SYN | ACK, FIN, 0, FIN | PSH | URG, RST] {
        expect(j.run(&tcp(client(), server(), 1, 5555, flags)).unwrap(), Reason::DropNoFlow);
    }
    let mut stateless = judge("default = \"deny\"\n[inbound]\ntcp_non_syn = \"pass\"\n");
    expect(stateless.run(&tcp(client(), server(), 1, 5555, ACK)).unwrap(), Reason::PassTcpNonSyn);
    expect(stateless.run(&tcp(client(), server(), 1, 5555, SYN)).unwrap(), Reason::DropDefaultDeny);
}

#[test]
fn monitor_mode_counts_and_passes() {
    require_root!();
    let mut j =
        judge("mode = \"monitor\"\ndefault = \"deny\"\n[blocklist]\nsources = [\"203.0.113.0/24\"]\n");
    let outcome = j.run(&tcp(client(), server(), 1, 23, SYN)).unwrap();
    assert_eq!(outcome.reason, Reason::DropDefaultDeny);
    assert!(outcome.monitored);
    assert_eq!(outcome.action, XDP_PASS);
    let outcome = j.run(&tcp(v4(203, 0, 113, 1), server(), 1, 23, SYN)).unwrap();
    assert_eq!((outcome.reason, outcome.monitored, outcome.action), (Reason::DropBlocklist, true, XDP_PASS));
    let counters = j.counters().unwrap();
    assert_eq!(counters.dropped().packets, 0);
    assert_eq!(counters.monitored().packets, 2);
}

#[test]
fn replies_pass_only_for_known_flows() {
    require_root!();
    use portguard::{
        loader::seed_flows,
        policy::Proto,
        sockets::{Socket, TCP_LISTEN, UDP_ESTABLISHED},
    };
    let mut j = judge(EXAMPLE);
    let dns = v4(198, 51, 100, 53);
    // A reply to an ephemeral port is denied unless the host started the flow.
    expect(j.run(&udp(dns, server(), 53, 40000)).unwrap(), Reason::DropDefaultDeny);
    expect(j.run(&tcp(dns, server(), 443, 40001, SYN | ACK)).unwrap(), Reason::DropNoFlow);
    let flows = [
        Socket {
            proto: Proto::Udp,
            local: "192.0.2.2:40000".parse().unwrap(),
            remote: "198.51.100.53:53".parse().unwrap(),
            state: UDP_ESTABLISHED,
            inode: 0,
        },
        Socket {
            proto: Proto::Tcp,
            local: "192.0.2.2:40001".parse().unwrap(),
            remote: "198.51.100.53:443".parse().unwrap(),
            state: 1,
            inode: 0,
        },
        Socket {
            proto: Proto::Tcp,
            local: "[2001:db8::2]:40002".parse().unwrap(),
            remote: "[2001:db8::99]:443".parse().unwrap(),
            state: 1,
            inode: 0,
        },
        // Listening sockets are not flows.
        Socket {
            proto: Proto::Tcp,
            local: "0.0.0.0:5555".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: TCP_LISTEN,
            inode: 0,
        },
    ];
    assert_eq!(seed_flows(j.ebpf_mut(), &flows).unwrap(), 3);
    expect(j.run(&udp(dns, server(), 53, 40000)).unwrap(), Reason::PassFlow);
    expect(j.run(&tcp(dns, server(), 443, 40001, SYN | ACK)).unwrap(), Reason::PassFlow);
    expect(j.run(&tcp(v6("2001:db8::99"), server6(), 443, 40002, ACK)).unwrap(), Reason::PassFlow);
    // Same peer, other port: still unknown. And a SYN is judged by the port policy anyway.
    expect(j.run(&udp(dns, server(), 54, 40000)).unwrap(), Reason::DropDefaultDeny);
    expect(j.run(&tcp(dns, server(), 443, 40001, SYN)).unwrap(), Reason::DropDefaultDeny);
    expect(j.run(&tcp(client(), server(), 1, 5555, ACK)).unwrap(), Reason::DropNoFlow);
}

#[test]
fn every_feature_at_once_passes_the_verifier_with_headroom() {
    require_root!();
    // Blocklists, never_block, source lists, scan blocking and trap ports all at once: the
    // combination the verifier finds hardest. Keep well under its 1,000,000-instruction limit.
    let mut j = judge(include_str!("../../examples/edge-host.toml"));
    let xdp: &mut aya::programs::Xdp =
        j.ebpf_mut().program_mut("pg_xdp_ingress").unwrap().try_into().unwrap();
    let verified = xdp.info().unwrap().verified_instruction_count().unwrap();
    eprintln!("XDP program: {verified} instructions verified");
    assert!(verified < 500_000, "{verified} verified instructions: too close to the limit");
    expect(j.run(&tcp(client(), server(), 1, 443, SYN)).unwrap(), Reason::PassPortAllowed);
}

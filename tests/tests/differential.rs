//! Differential testing: generated policies and frames (valid, tagged, optioned, chained,
//! fragmented, and hostile: truncated, lying lengths, corrupt bytes) run through the real
//! kernel program (BPF_PROG_TEST_RUN) and through the reference model (`portguard_tests::model`),
//! which must agree on the verdict, every counter that moves, and the frame coming back
//! untouched.
//!
//! `PORTGUARD_DIFF_POLICIES` policies of `FRAMES_PER_POLICY` frames each run (CI: 250 x 400 =
//! 100,000 frames; `cargo xtask fuzz` runs longer). A failing case is shrunk by proptest and
//! saved next to this file (`differential.proptest-regressions`) to be replayed first next time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portguard::{
    judge::{Judge, XDP_DROP, XDP_PASS},
    policy::{LoadOptions, Proto, compile::compile, parse},
};
use portguard_common::Reason;
use portguard_tests::{model::Model, packets::*};
use proptest::{prelude::*, test_runner::FileFailurePersistence};

const FRAMES_PER_POLICY: usize = 400;

fn policies() -> u32 {
    std::env::var("PORTGUARD_DIFF_POLICIES").ok().and_then(|v| v.parse().ok()).unwrap_or(250)
}

// Pools the generators draw from, so that policies and frames meet often.
const ALLOW_PORTS: [&str; 7] = ["22", "53", "80", "443", "8080", "\"1000-1010\"", "\"40000-40010\""];
const DENY_PORTS: [&str; 5] = ["23", "25", "445", "3389", "\"6000-6005\""];
const TRAP_TCP: [&str; 2] = ["4444", "23"];
const NETS: [&str; 12] = [
    "192.0.2.0/24",
    "192.0.2.128/25",
    "198.51.100.7",
    "198.51.100.0/22",
    "198.0.0.0/8",
    "203.0.113.0/24",
    "203.0.113.64/26",
    "2001:db8:1::/48",
    "2001:db8::1",
    "2001:db8:bad::/48",
    "2001:db8::/32",
    "::/0",
];
const PORTS: [u16; 16] =
    [22, 23, 25, 53, 80, 443, 445, 1000, 1005, 1011, 3389, 4444, 6003, 8080, 40005, 65535];

fn sources() -> Vec<IpAddr> {
    vec![
        Ipv4Addr::new(192, 0, 2, 1).into(),
        Ipv4Addr::new(192, 0, 2, 200).into(),
        Ipv4Addr::new(198, 51, 100, 7).into(),
        Ipv4Addr::new(198, 51, 101, 9).into(),
        Ipv4Addr::new(198, 18, 0, 1).into(),
        Ipv4Addr::new(203, 0, 113, 70).into(),
        Ipv4Addr::new(203, 0, 113, 200).into(),
        "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
        // The same /64 as 2001:db8::1: a trap hit by one blocks both (by default).
        "2001:db8::7".parse::<Ipv6Addr>().unwrap().into(),
        "2001:db8:1::5".parse::<Ipv6Addr>().unwrap().into(),
        "2001:db8:bad::9".parse::<Ipv6Addr>().unwrap().into(),
        "2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap().into(),
        "fe80::1".parse::<Ipv6Addr>().unwrap().into(),
        "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().into(),
    ]
}

fn list(items: &[&str]) -> String {
    items.join(", ")
}

fn quoted(items: &[&str]) -> String {
    items.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ")
}

prop_compose! {
    fn policy_text()(
        monitor in prop::bool::weighted(0.2),
        default_allow in any::<bool>(),
        allows in prop::collection::vec(
            (any::<bool>(), prop::sample::subsequence(ALLOW_PORTS.to_vec(), 1..3), prop::option::weighted(0.4, prop::sample::subsequence(NETS.to_vec(), 1..3)), prop::option::weighted(0.6, (prop::option::weighted(0.7, (1u32..4, 1u32..3)), prop::option::weighted(0.7, 1u32..3)))),
            0..4,
        ),
        denies in prop::collection::vec((any::<bool>(), prop::sample::subsequence(DENY_PORTS.to_vec(), 1..3)), 0..3),
        blocklist in prop::sample::subsequence(NETS.to_vec(), 0..4),
        never_block in prop::sample::subsequence(NETS.to_vec(), 0..2),
        traps in prop::sample::subsequence(TRAP_TCP.to_vec(), 0..2),
        ipv6_prefix in prop::sample::select(vec![32u8, 48, 64, 128]),
        flags in prop::array::uniform6(any::<bool>()),
        brute_force_after in prop::option::weighted(0.4, 1u32..4),
    ) -> String {
        let mut text = format!(
            "mode = \"{}\"\ndefault = \"{}\"\nnever_block = [{}]\n",
            if monitor { "monitor" } else { "enforce" },
            if default_allow { "allow" } else { "deny" },
            quoted(&never_block),
        );
        for (tcp, ports, from, limit) in allows {
            text += &format!("[[allow]]\nproto = \"{}\"\nports = [{}]\n", if tcp { "tcp" } else { "udp" }, list(&ports));
            if let Some(from) = from {
                text += &format!("from = [{}]\n", quoted(&from));
            }
            // Periods far longer than a run: budgets never come back within it. Caps of open
            // connections on TCP rules only (the policy refuses them on UDP rules).
            let (rate, cap) = limit.unwrap_or_default();
            let mut parts = Vec::new();
            if let Some((count, burst)) = rate {
                parts.push(format!("new_per_source = \"{count}/1h\", burst = {burst}"));
            }
            if let Some(cap) = cap.filter(|_| tcp) {
                parts.push(format!("connections_per_source = {cap}"));
            }
            if !parts.is_empty() {
                text += &format!("limit = {{ {} }}\n", parts.join(", "));
            }
        }
        for (tcp, ports) in denies {
            text += &format!("[[deny]]\nproto = \"{}\"\nports = [{}]\n", if tcp { "tcp" } else { "udp" }, list(&ports));
        }
        // `::/0` in the pool blocks every IPv6 source: confirmed, as a policy must.
        text += &format!("[blocklist]\neverything = true\nsources = [{}]\n", quoted(&blocklist));
        let pick = |on: bool, yes: &str, no: &str| if on { yes.to_string() } else { no.to_string() };
        text += &format!(
            "[inbound]\nmalformed = \"{}\"\nfragments_unseen = \"{}\"\nicmp = \"{}\"\nicmpv6 = \"{}\"\nother_protocols = \"{}\"\ntcp_non_syn = \"{}\"\n",
            pick(flags[0], "pass", "drop"),
            pick(flags[1], "pass", "drop"),
            pick(flags[2], "deny", "allow"),
            pick(flags[3], "deny", "allow"),
            pick(flags[4], "deny", "allow"),
            pick(flags[5], "pass", "track"),
        );
        text += &format!("[scan_detection]\naction = \"off\"\nipv6_prefix = {ipv6_prefix}\n");
        if !traps.is_empty() {
            text += &format!("[trap_ports]\ntcp = [{}]\nudp = [1900]\n", list(&traps));
        }
        // Windows and blocks far longer than a run, as the rates.
        if let Some(after) = brute_force_after {
            text += &format!("[brute_force]\nafter = {after}\nwithin = \"1h\"\nblock_for = \"1h\"\n");
        }
        text
    }
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp { dport: u16, flags: u8 },
    Udp { dport: u16 },
    Icmp { kind: u8 },
    Other { proto: u8 },
}

#[derive(Clone, Debug)]
enum Mutation {
    None,
    Truncate(usize),
    Byte(usize, u8),
    /// IPv4 total length or IPv6 payload length.
    Length(u16),
}

prop_compose! {
    fn frame()(
        source in prop::sample::select(sources()),
        tags in prop::collection::vec((any::<bool>(), 0u16..4096), 0..6),
        l4 in prop_oneof![
            4 => (prop::sample::select(PORTS.to_vec()), any::<u8>()).prop_map(|(dport, flags)| L4::Tcp { dport, flags: flags & 0x3f }),
            2 => (prop::sample::select(PORTS.to_vec()), Just(SYN)).prop_map(|(dport, flags)| L4::Tcp { dport, flags }),
            3 => prop::sample::select(PORTS.to_vec()).prop_map(|dport| L4::Udp { dport }),
            2 => prop::sample::select(vec![0u8, 3, 8, 11, 12, 13, 1, 2, 4, 128, 129, 133, 134, 135, 136, 137, 143, 200]).prop_map(|kind| L4::Icmp { kind }),
            1 => prop::sample::select(vec![47u8, 50, 132, 59]).prop_map(|proto| L4::Other { proto }),
        ],
        hop_limit in prop::sample::select(vec![64u8, 255, 1]),
        options in prop::option::weighted(0.2, 1u8..11),
        ext in prop::collection::vec((prop::sample::select(vec![HOP_BY_HOP, ROUTING, DEST_OPTS, AUTH]), 0u8..3), 0..10),
        fragment in prop::option::weighted(0.25, (1u32..4, prop_oneof![Just(0u16), Just(1u16), 2u16..200], any::<bool>())),
        payload in prop_oneof![8 => 0usize..64, 1 => 1000usize..3000],
        mutation in prop_oneof![
            6 => Just(Mutation::None),
            2 => (14usize..200).prop_map(Mutation::Truncate),
            2 => ((12usize..90), any::<u8>()).prop_map(|(at, value)| Mutation::Byte(at, value)),
            1 => any::<u16>().prop_map(Mutation::Length),
        ],
    ) -> Vec<u8> {
        let v6 = source.is_ipv6();
        let server: IpAddr = if v6 { "2001:db8::2".parse::<Ipv6Addr>().unwrap().into() } else { Ipv4Addr::new(192, 0, 2, 2).into() };
        let (proto, mut l4_bytes) = match &l4 {
            L4::Tcp { dport, flags } => (TCP, tcp_header(40000, *dport, *flags)),
            L4::Udp { dport } => (UDP, udp_header(40000, *dport, payload)),
            L4::Icmp { kind } => (if v6 { ICMPV6 } else { ICMP }, icmp_header(*kind, 0)),
            L4::Other { proto } => (*proto, vec![0u8; 8]),
        };
        l4_bytes.extend(std::iter::repeat_n(0xab, payload));
        let mut ip = Ip::new(source, server, proto);
        ip.hop_limit = hop_limit;
        if let Some(words) = options { ip.ipv4_option_words = words; }
        if v6 {
            ip.ipv6_ext = ext.iter().map(|(kind, units)| match *kind {
                AUTH => (AUTH, { let mut h = vec![0u8; 8 + 4 * *units as usize]; h[1] = 2 * (*units / 2 + 1) - 1; h.truncate(((h[1] as usize) + 2) * 4); h }),
                other => (other, ipv6_ext(*units)),
            }).collect();
        }
        if let Some((id, offset, more)) = fragment {
            ip.fragment = Some((id, offset, more));
            if offset > 0 {
                l4_bytes.truncate(24);
            }
        }
        let tags: Vec<(u16, u16)> = tags.iter().map(|(outer, vid)| (if *outer { TPID_8021AD } else { TPID_8021Q }, *vid)).collect();
        let mut frame = ethernet(&ip_packet(&ip, &l4_bytes), v6, &tags);
        let ip_at = 14 + 4 * tags.len();
        match mutation {
            Mutation::None => {}
            Mutation::Truncate(len) => frame.truncate(len.max(14)),
            Mutation::Byte(at, value) => {
                if let Some(byte) = frame.get_mut(at) { *byte = value; }
            }
            Mutation::Length(value) => {
                let at = ip_at + if v6 { 4 } else { 2 };
                if at + 2 <= frame.len() { frame[at..at + 2].copy_from_slice(&value.to_be_bytes()); }
            }
        }
        frame
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: policies(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/differential.proptest-regressions"
        )))),
        // Each case loads a program: keep shrinking bounded in time.
        max_shrink_iters: 500,
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    }
}

/// How often each verdict came up: shows the generators reach every corner.
static SEEN: std::sync::Mutex<Vec<(Reason, u64)>> = std::sync::Mutex::new(Vec::new());

fn seen(reason: Reason) {
    let mut seen = SEEN.lock().unwrap();
    match seen.iter_mut().find(|(r, _)| *r == reason) {
        Some((_, count)) => *count += 1,
        None => seen.push((reason, 1)),
    }
}

fn agree(policy_text: &str, frames: &[Vec<u8>], holders: &[(IpAddr, bool)]) -> Result<(), TestCaseError> {
    let loaded = parse(policy_text, std::path::Path::new("generated.toml"), LoadOptions::default())
        .map_err(|e| TestCaseError::fail(format!("generated policy rejected: {e}\n{policy_text}")))?;
    let image = compile(&loaded.policy, 1).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut judge = Judge::new(&image, &loaded.policy).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    let mut model = Model::new(loaded.policy.clone());
    // Sources holding connections on every capped rule: at the cap, or one below it.
    for rule in &loaded.policy.rules {
        let Some(cap) = rule.limit.and_then(|limit| limit.connections_per_source) else { continue };
        let conn_rule = image.rule_limits[&rule.number].conn_rule;
        for (source, full) in holders {
            let prefix = if source.is_ipv6() { loaded.policy.scan_detection.ipv6_prefix } else { 32 };
            let net = ipnet::IpNet::new(*source, prefix).unwrap().trunc();
            let count = u64::from(cap) - u64::from(!full);
            judge
                .hold_connections(portguard::loader::addr16(net.addr()), conn_rule, count)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            model.hold(net, rule.number, count);
        }
    }
    for (index, frame) in frames.iter().enumerate() {
        let expected = model.judge(frame);
        seen(expected.reason);
        let drops_before = judge.port_drops_total();
        let port_before = expected
            .port_drop
            .map(|(proto, port)| judge.port_drops(if proto == TCP { Proto::Tcp } else { Proto::Udp }, port));
        let got = judge.run(frame).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let context =
            || format!("frame {index} ({} bytes): {}\npolicy:\n{policy_text}", frame.len(), hex(frame));
        prop_assert_eq!(got.reason, expected.reason, "{}", context());
        prop_assert_eq!(got.monitored, expected.monitored, "{}", context());
        prop_assert_eq!(got.action, if expected.dropped() { XDP_DROP } else { XDP_PASS }, "{}", context());
        prop_assert_eq!(got.fragment_first, expected.fragment_first, "{}", context());
        prop_assert_eq!(got.fragment_later, expected.fragment_later, "{}", context());
        prop_assert_eq!(got.vlan_single, expected.vlan_tags == 1, "{}", context());
        prop_assert_eq!(got.vlan_stacked, expected.vlan_tags > 1, "{}", context());
        prop_assert!(got.unchanged, "the frame was rewritten: {}", context());
        let drops_moved = judge.port_drops_total() - drops_before;
        match (expected.port_drop, port_before) {
            (Some((proto, port)), Some(before)) => {
                let after = judge.port_drops(if proto == TCP { Proto::Tcp } else { Proto::Udp }, port);
                prop_assert_eq!(after - before, 1, "per-port drop for {}/{}: {}", proto, port, context());
                prop_assert_eq!(drops_moved, 1, "{}", context());
            }
            _ => prop_assert_eq!(drops_moved, 0, "{}", context()),
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// CI found this one by chance: a connection the test holds for the IPv4-mapped address
/// ::ffff:192.0.2.1 is, in the kernel's table, a connection of IPv4 192.0.2.1.
#[test]
fn a_connection_held_by_an_ipv4_mapped_peer_counts_for_its_ipv4_source() {
    portguard_tests::require_root!();
    let policy = "[[allow]]\nproto = \"tcp\"\nports = [22]\nlimit = { connections_per_source = 1 }\n\
                  [scan_detection]\nipv6_prefix = 128\n";
    let mapped: IpAddr = "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().into();
    let source: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
    let syn = tcp(source, Ipv4Addr::new(192, 0, 2, 2).into(), 40000, 22, SYN);
    agree(policy, &[syn], &[(mapped, true)]).unwrap();
}

#[test]
fn kernel_and_model_agree() {
    portguard_tests::require_root!();
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let holders = prop::collection::vec((prop::sample::select(sources()), prop::bool::weighted(0.7)), 1..8);
    let strategy = (policy_text(), prop::collection::vec(frame(), FRAMES_PER_POLICY), holders);
    let result = runner.run(&strategy, |(policy, frames, holders)| agree(&policy, &frames, &holders));
    if let Err(error) = result {
        panic!("the kernel and the model disagree: {error}");
    }
    eprintln!("{} policies x {FRAMES_PER_POLICY} frames: kernel and model agree", policies());
    let mut seen = SEEN.lock().unwrap().clone();
    seen.sort_by_key(|(reason, _)| *reason);
    for (reason, count) in &seen {
        eprintln!("  {:<20} {count}", reason.name());
    }
    // Every verdict the model can reach without flows (which need an egress program).
    let reachable = portguard_common::counters::ALL_REASONS
        .iter()
        .filter(|r| !matches!(r, Reason::PassFlow | Reason::DropManualBlock));
    for reason in reachable {
        assert!(seen.iter().any(|(r, _)| r == reason), "no generated frame reached {}", reason.name());
    }
}

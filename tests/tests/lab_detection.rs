//! What a scanner tries to get past the detector, and what the host's own traffic must never
//! trigger, with real scanners (nmap) and real sockets between two namespaces: ports chosen to
//! collide under the old public hash, slow scans, IPv6 address rotation within a /64, a UDP
//! scan right after a TCP scan, and the host's own client connections being reset.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use portguard_tests::{
    Attached, CLIENT_V4, Lab, SERVER_V4, SERVER_V6, require_root,
    traffic::{Servers, syn_probes, tcp_connections_reset, tcp_connects},
};

/// Web open, everything else closed; scans reported (`action`) at 20 ports in 5 s, slow scans
/// at `slow_threshold` ports in 2 min.
fn policy(action: &str, default: &str, slow_threshold: u32) -> String {
    format!(
        r#"
mode = "enforce"
default = "{default}"
never_block = ["198.51.100.0/24"]

[[allow]]
proto = "tcp"
ports = [80]

[inbound]
other_protocols = "allow"

[scan_detection]
threshold = 20
window = "5s"
slow_threshold = {slow_threshold}
slow_window = "2m"
action = "{action}"
block_for = "15m"
"#
    )
}

fn probes(target: IpAddr, ports: impl IntoIterator<Item = u16>) -> Vec<SocketAddr> {
    ports.into_iter().map(|port| SocketAddr::new(target, port)).collect()
}

#[test]
fn ports_that_collided_under_the_old_public_hash_are_detected() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &policy("block", "deny", 0), &["--json"]).unwrap();
    // The old detector set bit `port * 2654435761 >> 23` of 512 for a port: a scanner keeping
    // to the ports of 19 bits was never counted (7,297 ports in 33 s, unseen).
    let old_bit = |port: u16| u32::from(port).wrapping_mul(2_654_435_761) >> 23;
    let mut bits = std::collections::BTreeSet::new();
    let evasive: Vec<u16> = (1024..=u16::MAX)
        .filter(|&port| bits.contains(&old_bit(port)) || (bits.len() < 19 && bits.insert(old_bit(port))))
        .take(60)
        .collect();
    syn_probes(&lab.client, None, probes(SERVER_V4.into(), evasive));
    let scan = pg
        .wait_for_event(Duration::from_secs(3), |e| e["event"] == "scan_detected")
        .unwrap_or_else(|| panic!("the evasive scan went unseen: {:#?}", pg.output));
    assert_eq!(scan["source"], CLIENT_V4.to_string());
    assert!(pg.wait_for_event(Duration::from_secs(2), |e| e["event"] == "auto_blocked").is_some());
}

#[test]
fn the_hosts_own_client_connections_never_get_the_server_blocked() {
    require_root!();
    let lab = Lab::new().unwrap();
    // The host (the server namespace, where portguard runs) is the client here: it talks to
    // an upstream web server in the other namespace and resets each connection when done.
    let _upstream = Servers::start(&lab.client, &[8080], &[]);
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &policy("block", "allow", 40), &["--json"]).unwrap();
    let upstream = SocketAddr::new(CLIENT_V4.into(), 8080);
    assert_eq!(tcp_connections_reset(&lab.server, upstream, 60), 60);
    let events = pg.events(Duration::from_millis(500));
    assert!(
        events.iter().all(|e| e["event"] != "scan_detected" && e["event"] != "auto_blocked"),
        "the host's own resets were taken for a scan: {events:#?}"
    );
    let stats = pg.stats();
    // Most closes send a RST (a few find the connection already reset by the upstream, whose
    // server closes first): well over the threshold, every one on the host's own flows.
    let own = stats["observations"]["refusals_own_flows"].as_u64().unwrap();
    assert!(own >= 40, "{stats}");
    assert_eq!(own, stats["observations"]["refusals_sent"].as_u64().unwrap(), "{stats}");
    assert_eq!(stats["observations"]["scans_detected"], 0, "{stats}");
    assert!(tcp_connects(&lab.server, None, upstream), "the upstream is still reachable");
}

#[test]
fn a_slow_scan_is_caught_by_the_long_window() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &policy("block", "deny", 25), &["--json"]).unwrap();
    // 300 ms between probes: at most 17 ports in any 5 s window, 30 ports in 9 s.
    lab.nmap_at(SERVER_V4.into(), &["-sS", "--scan-delay", "300ms", "-p", "1000-1029"]);
    let scan = pg
        .wait_for_event(Duration::from_secs(3), |e| e["event"] == "scan_detected")
        .unwrap_or_else(|| panic!("the slow scan went unseen: {:#?}", pg.output));
    assert_eq!(scan["reason"], "slow_scan", "{scan}");
    assert_eq!(scan["source"], CLIENT_V4.to_string());
    assert_eq!(scan["distinct_ports"], 25, "{scan}");
    let block = pg.wait_for_event(Duration::from_secs(2), |e| e["event"] == "auto_blocked").expect("blocked");
    assert_eq!(block["reason"], "slow_scan");

    // With the long window off, the same scan passes unseen.
    let lab = Lab::new().unwrap();
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &policy("block", "deny", 0), &["--json"]).unwrap();
    lab.nmap_at(SERVER_V4.into(), &["-sS", "--scan-delay", "300ms", "-p", "1000-1029"]);
    let events = pg.events(Duration::from_millis(300));
    assert!(events.iter().all(|e| e["event"] != "scan_detected"), "{events:#?}");
}

#[test]
fn ipv6_addresses_of_one_64_are_one_scanner() {
    require_root!();
    let lab = Lab::new().unwrap();
    let rotating: Vec<IpAddr> =
        (0..16).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x5c, 0x100 + i))).collect();
    for address in &rotating {
        lab.client.ip(&["addr", "add", &format!("{address}/64"), "dev", &lab.client_if, "nodad"]).unwrap();
    }
    let _web = Servers::start(&lab.server, &[80], &[]);
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &policy("block", "deny", 0), &["--json"]).unwrap();
    // 16 addresses, 19 ports each: every one stays under the threshold on its own.
    for (i, address) in rotating.iter().enumerate() {
        let first = 2000 + 19 * i as u16;
        syn_probes(&lab.client, Some(*address), probes(SERVER_V6.into(), first..first + 19));
        if pg.events(Duration::ZERO).iter().any(|e| e["event"] == "auto_blocked") {
            break;
        }
    }
    let scan = pg
        .wait_for_event(Duration::from_secs(3), |e| e["event"] == "scan_detected")
        .unwrap_or_else(|| panic!("the rotating scan went unseen: {:#?}", pg.output));
    assert_eq!(scan["source"], "2001:db8::", "{scan}");
    assert_eq!(scan["prefix_len"], 64, "{scan}");
    let blocks = pg.stats()["auto_blocks"].clone();
    assert_eq!(blocks[0]["network"], "2001:db8::/64", "{blocks}");
    // Every address of the /64 is blocked now, the client's own included; IPv4 is not.
    let web6 = SocketAddr::new(SERVER_V6.into(), 80);
    assert!(!tcp_connects(&lab.client, Some("2001:db8::1".parse().unwrap()), web6));
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)));
    // `blocks` shows the network, and unblocking any address in it lifts it.
    let listing = pg.run(&["blocks"]);
    assert!(String::from_utf8_lossy(&listing.stdout).contains("2001:db8::/64"), "{listing:?}");
    let unblock = pg.run(&["unblock", "2001:db8::1"]);
    assert!(unblock.status.success(), "{unblock:?}");
    assert!(tcp_connects(&lab.client, Some("2001:db8::1".parse().unwrap()), web6));
}

#[test]
fn a_udp_scan_right_after_a_tcp_scan_is_reported_too() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &policy("alert", "deny", 0), &["--json"]).unwrap();
    lab.nmap(&["-sS"]);
    let tcp = pg.wait_for_event(Duration::from_secs(3), |e| e["event"] == "scan_detected").expect("tcp scan");
    assert_eq!(tcp["protocol"], "tcp");
    lab.nmap(&["-sU"]);
    let udp = pg
        .wait_for_event(Duration::from_secs(3), |e| e["event"] == "scan_detected" && e["protocol"] == "udp")
        .unwrap_or_else(|| panic!("the UDP scan went unreported: {:#?}", pg.output));
    assert_eq!(udp["source"], CLIENT_V4.to_string());
    assert_eq!(udp["scan_kind"], "udp");
}

#[test]
fn a_reload_that_exempts_a_blocked_source_lifts_its_block() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _web = Servers::start(&lab.server, &[80], &[]);
    let trapping = policy("alert", "deny", 0) + "[trap_ports]\ntcp = [23]\n";
    let mut pg = Attached::start(&lab.server, &lab.server_if, &trapping, &["--json"]).unwrap();
    let web = SocketAddr::new(SERVER_V4.into(), 80);
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 23)));
    pg.wait_for_event(Duration::from_secs(2), |e| e["event"] == "auto_blocked").expect("blocked by the trap");
    assert!(!tcp_connects(&lab.client, None, web), "blocked");
    // The operator decides the client must never be blocked, and reloads.
    let exempting = trapping.replace(
        "never_block = [\"198.51.100.0/24\"]",
        &format!("never_block = [\"198.51.100.0/24\", \"{CLIENT_V4}/32\"]"),
    );
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), exempting).unwrap();
    let reload = pg.run(&["reload", &pg.iface.clone(), "--policy", file.path().to_str().unwrap()]);
    assert!(reload.status.success(), "{reload:?}");
    assert!(tcp_connects(&lab.client, None, web), "never_block lifts the block at once");
    assert_eq!(pg.stats()["auto_blocks"].as_array().unwrap().len(), 0);
}

//! Real traffic between two network namespaces, with `portguard attach` running on the
//! server's veth as a user would run it: what arrives, what is dropped, what is counted.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use portguard_tests::{
    ADMIN_V4, ADMIN_V6, Attached, BLOCKED_V4, BLOCKED_V6, CLIENT_V4, CLIENT_V6, Lab, LabOptions, SERVER_V4,
    SERVER_V6,
    portguard_cli::port_drops,
    require_root,
    traffic::{Servers, tcp_connects, udp_echoes},
};
use serde_json::Value;

const EXAMPLE: &str = include_str!("../../examples/policy.toml");

fn at(v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(Lab::server_addr(v6), port)
}

fn reason(stats: &Value, name: &str, counted_as: &str) -> u64 {
    stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == name && r["counted_as"] == counted_as)
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

fn applied(stats: &Value, name: &str) -> u64 {
    reason(stats, name, "applied")
}

#[test]
fn example_policy_on_real_tcp_and_udp_v4_and_v6() {
    require_root!();
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[22, 23, 80, 443, 3306, 8050], &[53, 5353]);
    // Before portguard: everything is reachable (the lab itself works).
    assert!(tcp_connects(&lab.client, None, at(false, 3306)));
    let pg = Attached::start(&lab.server, &lab.server_if, EXAMPLE, &[]).unwrap();
    assert!(pg.banner.contains("XDP native mode"), "{}", pg.banner);

    for v6 in [false, true] {
        for port in [80, 443, 8050] {
            assert!(tcp_connects(&lab.client, None, at(v6, port)), "tcp {port} v6={v6} must be open");
        }
        for port in [23, 3306, 22] {
            assert!(!tcp_connects(&lab.client, None, at(v6, port)), "tcp {port} v6={v6} must be closed");
        }
        assert!(udp_echoes(&lab.client, None, at(v6, 53)), "udp 53 v6={v6}");
        assert!(!udp_echoes(&lab.client, None, at(v6, 5353)), "udp 5353 v6={v6}");
    }
    // SSH only from the admin networks.
    assert!(tcp_connects(&lab.client, Some(ADMIN_V4.into()), at(false, 22)));
    assert!(tcp_connects(&lab.client, Some(ADMIN_V6.into()), at(true, 22)));
    assert_eq!(servers.accepted(22), 2, "only the two admin connections reach sshd");
    assert_eq!(servers.accepted(23), 0);
    assert_eq!(servers.accepted(3306), 1, "only the connection made before attach");

    let stats = pg.stats();
    assert!(applied(&stats, "port_denied") >= 2);
    assert!(applied(&stats, "default_deny") >= 4);
    assert!(applied(&stats, "source_not_allowed") >= 2);
    assert!(applied(&stats, "port_allowed") > 0);
    assert!(port_drops(&stats, "tcp", 23) >= 2);
    assert!(port_drops(&stats, "udp", 5353) >= 2);
    let (ok, stderr) = pg.stop();
    assert!(ok, "attach must exit cleanly on SIGTERM: {stderr}");
}

#[test]
fn blocklisted_sources_cidr_and_single_address() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[53]);
    // The example blocks CIDRs (203.0.113.0/24, 2001:db8:bad::/48); add single addresses.
    let policy = EXAMPLE.replace(
        r#"sources = ["203.0.113.0/24", "2001:db8:bad::/48"]"#,
        r#"sources = ["203.0.113.0/24", "2001:db8:bad::/48", "198.51.100.7", "2001:db8:1::7"]"#,
    );
    let pg = Attached::start(&lab.server, &lab.server_if, &policy, &[]).unwrap();
    for (source, v6) in [
        (IpAddr::from(BLOCKED_V4), false),
        (BLOCKED_V6.into(), true),
        (ADMIN_V4.into(), false),
        (ADMIN_V6.into(), true),
    ] {
        assert!(!tcp_connects(&lab.client, Some(source), at(v6, 80)), "{source} must be blocked");
        assert!(!udp_echoes(&lab.client, Some(source), at(v6, 53)), "{source} must be blocked (udp)");
    }
    // Other sources still reach the allowed ports.
    assert!(tcp_connects(&lab.client, Some(CLIENT_V4.into()), at(false, 80)));
    assert!(tcp_connects(&lab.client, Some(CLIENT_V6.into()), at(true, 80)));
    assert!(applied(&pg.stats(), "blocklist") >= 8);
}

#[test]
fn host_outbound_traffic_survives_default_deny() {
    require_root!();
    let lab = Lab::new().unwrap();
    // The client plays the outside world: a web server and a DNS server.
    let _outside = Servers::start(&lab.client, &[8443], &[53]);
    let policy = "mode = \"enforce\"\ndefault = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\n";
    let pg = Attached::start(&lab.server, &lab.server_if, policy, &[]).unwrap();
    for (v6, peer) in [(false, IpAddr::from(CLIENT_V4)), (true, CLIENT_V6.into())] {
        assert!(tcp_connects(&lab.server, None, SocketAddr::new(peer, 8443)), "outbound tcp v6={v6}");
        assert!(udp_echoes(&lab.server, None, SocketAddr::new(peer, 53)), "outbound udp v6={v6}");
    }
    // While the same ports are closed to connections from outside.
    let _inside = Servers::start(&lab.server, &[8443], &[53]);
    assert!(!tcp_connects(&lab.client, None, at(false, 8443)));
    assert!(!udp_echoes(&lab.client, None, at(false, 53)));
    let stats = pg.stats();
    assert!(applied(&stats, "flow") >= 4, "replies pass as known flows: {stats}");
}

#[test]
fn monitor_mode_drops_nothing_and_counts() {
    require_root!();
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[23, 80], &[]);
    let policy = EXAMPLE.replace("mode = \"enforce\"", "mode = \"monitor\"");
    let pg = Attached::start(&lab.server, &lab.server_if, &policy, &[]).unwrap();
    assert!(tcp_connects(&lab.client, None, at(false, 23)));
    assert!(tcp_connects(&lab.client, Some(BLOCKED_V4.into()), at(false, 80)));
    assert_eq!(servers.accepted(23), 1);
    let stats = pg.stats();
    assert_eq!(stats["dropped"], 0, "{stats}");
    assert!(reason(&stats, "port_denied", "would_drop") >= 1);
    assert!(reason(&stats, "blocklist", "would_drop") >= 1);
    assert!(port_drops(&stats, "tcp", 23) >= 1, "would-drops are counted per port too");
}

#[test]
fn counters_match_the_traffic_sent_exactly() {
    require_root!();
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[], &[53, 5353]);
    let pg = Attached::start(&lab.server, &lab.server_if, EXAMPLE, &[]).unwrap();
    // Warm up neighbour caches so no stray resolution traffic lands mid-count.
    assert!(udp_echoes(&lab.client, None, at(false, 53)));
    assert!(udp_echoes(&lab.client, None, at(true, 53)));
    let before = pg.stats();
    let (allowed, denied) = (25u64, 40u64);
    let client = &lab.client;
    for i in 0..allowed {
        assert!(udp_echoes(client, None, at(i % 2 == 1, 53)));
    }
    for i in 0..denied {
        assert!(!udp_echoes(client, None, at(i % 2 == 1, 5353)));
    }
    let after = pg.stats();
    let delta = |f: &dyn Fn(&Value) -> u64| f(&after) - f(&before);
    assert_eq!(delta(&|s| applied(s, "port_allowed")), allowed);
    assert_eq!(delta(&|s| applied(s, "default_deny")), denied);
    assert_eq!(delta(&|s| port_drops(s, "udp", 5353)), denied);
    assert_eq!(servers.received(5353), 0);
    assert_eq!(servers.received(53), allowed + 2);
    // Every packet is in exactly one verdict: the totals add up.
    let total = after["packets"].as_u64().unwrap();
    assert_eq!(
        total,
        after["passed"].as_u64().unwrap()
            + after["dropped"].as_u64().unwrap()
            + after["would_drop"].as_u64().unwrap()
    );
}

#[test]
fn vlan_and_qinq_tagged_traffic() {
    require_root!();
    for options in [
        LabOptions { vlan: Some(100), outer_vlan: None },
        LabOptions { vlan: Some(100), outer_vlan: Some(200) },
    ] {
        let lab = Lab::with(options).unwrap();
        let _servers = Servers::start(&lab.server, &[80, 23], &[]);
        let pg = Attached::start(&lab.server, &lab.server_if, EXAMPLE, &[]).unwrap();
        for v6 in [false, true] {
            assert!(tcp_connects(&lab.client, None, at(v6, 80)), "{options:?} v6={v6}");
            assert!(!tcp_connects(&lab.client, None, at(v6, 23)), "{options:?} v6={v6}");
        }
        let stats = pg.stats();
        assert!(applied(&stats, "port_denied") >= 2, "{options:?}: {stats}");
        // The tags really were on the wire, as the XDP program saw them.
        let seen = if options.outer_vlan.is_some() {
            &stats["observations"]["vlan_stacked"]
        } else {
            &stats["observations"]["vlan_single"]
        };
        assert!(seen.as_u64().unwrap() >= 4, "{options:?}: {stats}");
    }
}

#[test]
fn both_attach_modes_load_and_enforce() {
    require_root!();
    for (mode, shown) in [("native", "XDP native mode"), ("generic", "XDP generic mode")] {
        let lab = Lab::new().unwrap();
        let _servers = Servers::start(&lab.server, &[80, 23], &[]);
        let pg = Attached::start(&lab.server, &lab.server_if, EXAMPLE, &["--xdp-mode", mode]).unwrap();
        assert!(pg.banner.contains(shown), "{}", pg.banner);
        assert!(tcp_connects(&lab.client, None, at(false, 80)));
        assert!(!tcp_connects(&lab.client, None, at(false, 23)));
    }
}

#[test]
fn second_attach_is_refused_and_detach_leaves_nothing() {
    require_root!();
    let lab = Lab::new().unwrap();
    let pg = Attached::start(&lab.server, &lab.server_if, EXAMPLE, &[]).unwrap();
    let second = Attached::start(&lab.server, &lab.server_if, EXAMPLE, &[]);
    let error = format!("{:#}", second.err().expect("a second attach must fail"));
    assert!(error.contains("already attached"), "{error}");

    let status = pg.run(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let entry = status.as_array().unwrap().iter().find(|e| e["interface"] == lab.server_if.as_str()).unwrap();
    assert_eq!(entry["loader_running"], true);

    let detach = pg.run(&["detach", &lab.server_if]);
    assert!(detach.status.success(), "{}", String::from_utf8_lossy(&detach.stderr));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!portguard_tests::portguard_cli::pin_dir(&lab.server, &lab.server_if).exists());
    assert!(!portguard_tests::portguard_cli::run_file(&lab.server, &lab.server_if, "json").exists());
    let link = lab.server.exec("ip", &["-d", "link", "show", "dev", &lab.server_if]).unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP still attached");
    let net = lab.server.exec("bpftool", &["-j", "net", "show", "dev", &lab.server_if]).unwrap();
    let net: Value = serde_json::from_slice(&net.stdout).unwrap();
    for hook in ["xdp", "tc", "tcx"] {
        let attached = net[0].get(hook).and_then(Value::as_array).map_or(0, Vec::len);
        assert_eq!(attached, 0, "{hook} program left behind: {net}");
    }
    // The lab still works without portguard.
    let _servers = Servers::start(&lab.server, &[23], &[]);
    assert!(tcp_connects(&lab.client, None, at(false, 23)));
    let _ = (SERVER_V4, SERVER_V6);
}

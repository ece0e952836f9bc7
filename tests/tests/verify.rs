//! `portguard verify`: captures replayed through the kernel program, from a crafted pcap and
//! from a real tcpdump capture of lab traffic.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};
use portguard_tests::{
    CLIENT_V4, Lab, SERVER_V4,
    packets::*,
    portguard_cli::portguard,
    require_root,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/edge-host.toml");

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    let file = std::fs::File::create(path).unwrap();
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..Default::default() };
    let mut writer = PcapWriter::with_header(file, header).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        writer
            .write_packet(&PcapPacket::new(Duration::from_millis(i as u64), frame.len() as u32, frame))
            .unwrap();
    }
}

fn row<'a>(report: &'a Value, side: &str, reason: &str) -> Option<&'a Value> {
    report[side].as_array().unwrap().iter().find(|r| r["reason"] == reason)
}

/// Packets with `reason`, over every rule.
fn packets(report: &Value, side: &str, reason: &str) -> u64 {
    report[side]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == reason)
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_crafted_capture_is_judged_by_rule_and_reason() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (client, server, attacker) = (ip("198.51.100.20"), ip("192.0.2.2"), ip("203.0.113.9"));
    let mut frames = vec![
        tcp(client, server, 40000, 443, SYN),
        tcp(client, server, 40001, 80, SYN),
        tcp(client, server, 40002, 5900, SYN),
        tcp(client, server, 40003, 3306, SYN),
        tcp(attacker, server, 40004, 443, SYN),
        udp(client, server, 40005, 53),
        // The host asks a resolver, which answers to an ephemeral port.
        udp(server, ip("198.51.100.53"), 41000, 53),
        udp(ip("198.51.100.53"), server, 53, 41000),
    ];
    // A scan from one source over 30 closed ports.
    for port in 1000..1030 {
        frames.push(tcp(ip("192.0.2.99"), server, 50000, port, SYN));
    }
    let pcap = dir.path().join("capture.pcap");
    write_pcap(&pcap, &frames);

    let output = portguard(
        None,
        &["verify", "--policy", EXAMPLE, "--pcap", pcap.to_str().unwrap(), "--host", "192.0.2.2", "--json"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["packets"], frames.len());
    assert_eq!(report["outbound"], 1);
    assert_eq!(report["inbound"], frames.len() - 1);
    assert_eq!(packets(&report, "pass", "port-allowed"), 3, "443, 80 and DNS: {report}");
    let rules: Vec<&str> =
        report["pass"].as_array().unwrap().iter().filter_map(|r| r["rule"].as_str()).collect();
    assert!(
        rules.contains(&"rule 1 \"web\" (line 7)") && rules.contains(&"rule 3 \"dns\" (line 18)"),
        "{report}"
    );
    assert_eq!(row(&report, "pass", "flow").expect("the DNS reply passes as a flow")["packets"], 1);
    assert_eq!(
        row(&report, "drop", "port-denied").unwrap()["rule"],
        "rule 4 \"legacy remote access\" (line 23)"
    );
    assert_eq!(row(&report, "drop", "blocklist").unwrap()["packets"], 1);
    // The scan crosses the threshold at the 20th port: that probe and the 10 after it are
    // dropped as an automatic block.
    assert_eq!(packets(&report, "drop", "auto-block"), 11);
    let alerts = report["alerts"].as_array().unwrap();
    assert!(alerts.iter().any(|a| a["event"] == "scan_detected" && a["source"] == "192.0.2.99"), "{report}");
    assert_eq!(
        report["would_drop"].as_u64().unwrap() + report["would_pass"].as_u64().unwrap(),
        frames.len() as u64 - 1
    );

    // The human report names the rules too.
    let human = portguard(
        None,
        &["verify", "--policy", EXAMPLE, "--pcap", pcap.to_str().unwrap(), "--host", "192.0.2.2"],
    );
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("rule 1 \"web\" (line 7)"), "{text}");
    assert!(text.contains("scan: 20 distinct tcp ports refused"), "{text}");

    // Not a capture: a clear error.
    std::fs::write(dir.path().join("junk"), b"not a capture").unwrap();
    let junk = portguard(
        None,
        &["verify", "--policy", EXAMPLE, "--pcap", dir.path().join("junk").to_str().unwrap()],
    );
    assert!(!junk.status.success());
    assert!(String::from_utf8_lossy(&junk.stderr).contains("neither pcap nor pcapng"));
}

#[test]
fn a_real_tcpdump_capture_replays() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 5900], &[]);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("lab.pcap");
    let mut tcpdump = lab
        .server
        .command("tcpdump")
        .args(["-i", &lab.server_if, "-U", "-s", "0", "-w", pcap.to_str().unwrap(), "tcp"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump (installed by `cargo xtask setup`)");
    std::thread::sleep(Duration::from_millis(800));
    // No portguard attached: both connections succeed on the wire.
    assert!(tcp_connects(&lab.client, Some(CLIENT_V4.into()), SocketAddr::new(SERVER_V4.into(), 80)));
    assert!(tcp_connects(&lab.client, Some(CLIENT_V4.into()), SocketAddr::new(SERVER_V4.into(), 5900)));
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = tcpdump.wait();

    let output = portguard(
        None,
        &["verify", "--policy", EXAMPLE, "--pcap", pcap.to_str().unwrap(), "--host", "192.0.2.2", "--json"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The client's SYN to 5900 would be dropped by the deny rule; its traffic to 80 passes.
    let denied = row(&report, "drop", "port-denied").expect("the VNC attempt is denied");
    assert!(denied["top_ports"].to_string().contains("tcp/5900"), "{report}");
    assert!(row(&report, "pass", "port-allowed").is_some(), "{report}");
    assert!(report["outbound"].as_u64().unwrap() > 0, "the server's own packets learnt as flows");
}

//! `portguard verify`: captures replayed through the kernel program, from a crafted pcap and
//! from a real tcpdump capture of lab traffic.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};
use portguard_tests::{
    CLIENT_V4, Lab, SERVER_V4,
    capture::Capture,
    packets::*,
    portguard_cli::portguard,
    require_root, schemas,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/edge-host.toml");

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
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

/// The rules that decided the `side` rows (`pass`, `drop`): `rule 3 "dns" (line 21)`, as the
/// human report names them.
fn rules(report: &Value, side: &str) -> Vec<String> {
    report[side]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["decided_by"] == "rule")
        .map(|r| {
            let rule = &r["rule"];
            format!("rule {} {} (line {})", rule["number"], rule["name"], rule["line"])
        })
        .collect()
}

/// Drops to `protocol`/`port` a row lists among its top ports.
fn drops_to(row: &Value, protocol: &str, port: u16) -> u64 {
    row["top_ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["protocol"] == protocol && p["port"] == port)
        .map_or(0, |p| p["drops"].as_u64().unwrap())
}

/// The report, checked against docs/schemas/verify.schema.json.
fn parsed(output: &std::process::Output) -> Value {
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("verify printed no report ({error}): {}", String::from_utf8_lossy(&output.stderr))
    });
    schemas::assert_valid("verify", &report);
    report
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
    let report = parsed(&output);
    assert_eq!(report["packets"], frames.len());
    assert_eq!(report["outbound"], 1);
    assert_eq!(report["inbound"], frames.len() - 1);
    assert_eq!(packets(&report, "pass", "port_allowed"), 3, "443, 80 and DNS: {report}");
    let passed_by = rules(&report, "pass");
    assert!(
        passed_by.contains(&"rule 1 \"web\" (line 8)".to_string())
            && passed_by.contains(&"rule 3 \"dns\" (line 21)".to_string()),
        "{report}"
    );
    let flow = row(&report, "pass", "flow").expect("the DNS reply passes as a flow");
    assert_eq!((flow["packets"].as_u64(), flow["decided_by"].as_str()), (Some(1), Some("flow_tracking")));
    assert_eq!(rules(&report, "drop"), ["rule 4 \"legacy remote access\" (line 26)"], "{report}");
    let denied = row(&report, "drop", "port_denied").unwrap();
    // Objects with named fields (once `[["tcp/5900",1]]`).
    assert_eq!(denied["top_ports"], serde_json::json!([{ "protocol": "tcp", "port": 5900, "drops": 1 }]));
    assert_eq!(row(&report, "drop", "blocklist").unwrap()["packets"], 1);
    // The scan crosses the threshold at the 20th port: that probe and the 10 after it are
    // dropped as an automatic block.
    assert_eq!(packets(&report, "drop", "auto_block"), 11);
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
    assert!(text.contains("rule 1 \"web\" (line 8)"), "{text}");
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
    let report = parsed(&output);
    // The client's SYN to 5900 would be dropped by the deny rule; its traffic to 80 passes.
    let denied = row(&report, "drop", "port_denied").expect("the VNC attempt is denied");
    assert!(drops_to(denied, "tcp", 5900) >= 1, "{report}");
    assert!(row(&report, "pass", "port_allowed").is_some(), "{report}");
    assert!(report["outbound"].as_u64().unwrap() > 0, "the server's own packets learnt as flows");
}

// Real captures of many kinds, made here with real tools from real lab traffic (issue 10,
// items 16 and 17): snap lengths, jumbo frames and BIG TCP aggregates, a VXLAN tunnel, Linux
// cooked captures, pcapng from dumpcap (with a comment editcap adds), and damaged files.

/// `portguard verify --json` on `pcap` with the example policy: exit code and report.
fn verify(pcap: &Path, hosts: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", "--policy", EXAMPLE, "--pcap", pcap.to_str().unwrap(), "--json"];
    for host in hosts {
        args.extend(["--host", host]);
    }
    let output = portguard(None, &args);
    let code = output.status.code().expect("verify exited");
    (code, parsed(&output))
}

/// The human report and exit code.
fn verify_text(pcap: &Path) -> (i32, String) {
    let output = portguard(None, &["verify", "--policy", EXAMPLE, "--pcap", pcap.to_str().unwrap()]);
    (output.status.code().expect("verify exited"), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every packet of the capture is accounted for: judged either way, or listed as not judged.
fn accounted(report: &Value) {
    let sum = ["inbound", "outbound", "not_judged"].iter().map(|k| report[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum, report["packets"].as_u64().unwrap(), "{report}");
    assert!(report["packets"].as_u64().unwrap() > 0, "{report}");
    // The symptom of a frame replayed cut: judged malformed although the wire had it whole.
    assert!(row(report, "drop", "malformed").is_none(), "{report}");
}

fn udp_send(netns: &portguard_tests::Netns, target: SocketAddr, size: usize, count: usize) {
    netns.run(move || {
        let socket =
            std::net::UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        for _ in 0..count {
            socket.send_to(&vec![0x5a; size], target).unwrap();
        }
    });
}

/// Sends `bytes` over one TCP connection to a reader on `target`'s port in the server
/// namespace (bounded: 20 s); returns what the reader got.
fn bulk(lab: &Lab, target: SocketAddr, bytes: usize) -> usize {
    use std::io::{Read as _, Write as _};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = lab.server.spawn(move || {
        let listener = std::net::TcpListener::bind(("::", target.port())).unwrap();
        ready_tx.send(()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return 0,
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0;
        while std::time::Instant::now() < deadline {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("the reader did not start");
    lab.client.run(move || {
        let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(&vec![0x5a; bytes]).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    });
    reader.join().unwrap()
}

/// TCP to an allowed and a denied port over IPv4 and IPv6, and DNS-sized UDP.
fn mixed_traffic(lab: &Lab) {
    for server in [IpAddr::from(SERVER_V4), IpAddr::from(portguard_tests::SERVER_V6)] {
        for port in [80, 5900] {
            assert!(tcp_connects(&lab.client, None, SocketAddr::new(server, port)), "{server} {port}");
        }
        udp_send(&lab.client, SocketAddr::new(server, 53), 1000, 3);
    }
}

/// Packet numbers `tcpdump -r` gives the packets that are IPv6.
fn ipv6_packet_numbers(pcap: &Path) -> Vec<u64> {
    let output = portguard_tests::run("tcpdump", &["-r", pcap.to_str().unwrap(), "-n", "-#"]).unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(" IP6 "))
        .map(|line| line.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn captures_with_a_snap_length_are_judged_on_their_headers() {
    require_root!();
    portguard_tests::require_tools!("tcpdump", "dumpcap", "editcap");
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 5900], &[53]);
    let dir = tempfile::tempdir().unwrap();
    let (whole, s64, ng64) =
        (dir.path().join("whole.pcap"), dir.path().join("s64.pcap"), dir.path().join("s64.pcapng"));
    let captures = [
        Capture::tcpdump(&lab.server, &lab.server_if, &whole, &["-s", "0"]).unwrap(),
        // Only the test's own traffic, so that both hold the same packets (no stray neighbour
        // discovery between one starting and the other).
        Capture::tcpdump(&lab.server, &lab.server_if, &s64, &["-s", "64", "tcp or udp"]).unwrap(),
        Capture::dumpcap(&lab.server, &lab.server_if, &ng64, &["-s", "64", "-f", "tcp or udp"]).unwrap(),
    ];
    mixed_traffic(&lab);
    captures.into_iter().for_each(Capture::stop);

    let (code, full) = verify(&whole, &["192.0.2.2", "2001:db8::2"]);
    assert_eq!(code, 0, "{full}");
    accounted(&full);
    assert_eq!(full["not_judged"], 0, "{full}");

    // Before: "Invalid field value: PacketHeader orig_len > snap_len", nothing replayed.
    let (code, cut) = verify(&s64, &["192.0.2.2", "2001:db8::2"]);
    assert_eq!(code, 0, "{cut}");
    accounted(&cut);
    assert!(cut["judged_on_headers"]["cut"].as_u64().unwrap() > 0, "{cut}");
    // IPv4 SYNs are cut inside their TCP options, after the fixed header the program reads:
    // judged, and the one to 5900 denied by its rule.
    let denied = row(&cut, "drop", "port_denied").expect("the IPv4 SYN to 5900 is judged");
    assert!(drops_to(denied, "tcp", 5900) >= 1, "{cut}");
    assert!(denied["bytes"].as_u64().unwrap() >= 74, "bytes are the packets' own: {cut}");
    // IPv6 with TCP does not fit in 64 bytes: each such packet is listed by its number, which
    // is the one tcpdump gives it.
    let listed = cut["not_judged_packets"].as_array().unwrap();
    assert!(!listed.is_empty(), "{cut}");
    let ipv6 = ipv6_packet_numbers(&s64);
    for packet in listed {
        assert_eq!(packet["reason"], "cut_in_headers", "{packet}");
        assert!(
            ipv6.contains(&packet["packet"].as_u64().unwrap()),
            "{packet} is not an IPv6 packet: {ipv6:?}"
        );
        assert!(packet["detail"].as_str().unwrap().contains("capture with a larger -s"), "{packet}");
    }
    assert_eq!(cut["not_judged_by_reason"]["cut_in_headers"].as_u64().unwrap() as usize, listed.len());
    let (_, text) = verify_text(&s64);
    assert!(
        text.contains("were cut by the snap length after their headers: judged on their headers"),
        "{text}"
    );
    assert!(
        text.contains(&format!("packet {}: cut by the snap length inside its", listed[0]["packet"])),
        "{text}"
    );

    // dumpcap's pcapng of the same packets with the same snap length judges the same, and so
    // does a copy with a packet comment (an option in the packet block).
    let (code, ng) = verify(&ng64, &["192.0.2.2", "2001:db8::2"]);
    assert_eq!(code, 0, "{ng}");
    let commented = dir.path().join("commented.pcapng");
    portguard_tests::run(
        "editcap",
        &["-a", "1:checked by portguard", ng64.to_str().unwrap(), commented.to_str().unwrap()],
    )
    .unwrap();
    let (code, with_comment) = verify(&commented, &["192.0.2.2", "2001:db8::2"]);
    assert_eq!(code, 0, "{with_comment}");
    for key in ["packets", "inbound", "outbound", "judged_on_headers", "not_judged_by_reason", "pass", "drop"]
    {
        assert_eq!(ng[key], cut[key], "{key}: pcapng {ng}\npcap {cut}");
        assert_eq!(with_comment[key], ng[key], "{key}");
    }
}

#[test]
fn jumbo_frames_and_big_tcp_aggregates_are_judged_on_their_headers() {
    require_root!();
    portguard_tests::require_tools!("tcpdump");
    let lab = Lab::new().unwrap();
    // Jumbo frames, and BIG TCP: the receiving host's capture holds GSO aggregates past 64 KiB.
    for (netns, iface) in [(&lab.client, &lab.client_if), (&lab.server, &lab.server_if)] {
        netns
            .ip(&["link", "set", iface, "mtu", "9000", "gso_max_size", "185000", "gro_max_size", "185000"])
            .unwrap();
    }
    let _servers = Servers::start(&lab.server, &[], &[53]);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("jumbo.pcap");
    let capture = Capture::tcpdump(&lab.server, &lab.server_if, &pcap, &["-s", "0"]).unwrap();
    let v6 = SocketAddr::new(portguard_tests::SERVER_V6.into(), 8080);
    assert_eq!(bulk(&lab, v6, 4 << 20), 4 << 20);
    assert_eq!(bulk(&lab, SocketAddr::new(SERVER_V4.into(), 8081), 1 << 20), 1 << 20);
    udp_send(&lab.client, SocketAddr::new(SERVER_V4.into(), 53), 8000, 5);
    udp_send(&lab.client, SocketAddr::new(SERVER_V4.into(), 1234), 8000, 5);
    capture.stop();

    // The capture holds what the test is about.
    let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&pcap).unwrap()).unwrap();
    let mut largest = 0;
    while let Some(packet) = reader.next_packet() {
        largest = largest.max(packet.unwrap().orig_len);
    }
    assert!(largest > 65_536, "no BIG TCP aggregate captured (largest frame {largest} bytes)");

    let (code, report) = verify(&pcap, &["192.0.2.2", "2001:db8::2"]);
    assert_eq!(code, 0, "{report}");
    accounted(&report);
    assert_eq!(report["not_judged"], 0, "{report}");
    assert!(report["judged_on_headers"]["shortened"].as_u64().unwrap() >= 10, "{report}");
    let dns = report["pass"].as_array().unwrap().iter().find(|r| r["rule"]["name"] == "dns").unwrap();
    assert_eq!(dns["packets"], 5, "{report}");
    assert_eq!(dns["bytes"], 5 * (8000 + 8 + 20 + 14), "the frames' own lengths: {report}");
    let denied = row(&report, "drop", "default_deny").expect("UDP to 1234 is denied by default");
    assert_eq!(drops_to(denied, "udp", 1234), 5, "{report}");
    let web = report["pass"].as_array().unwrap().iter().find(|r| r["rule"]["name"] == "web").unwrap();
    assert!(web["bytes"].as_u64().unwrap() > 5 << 20, "the transfers' bytes, not the stand-ins': {report}");
}

#[test]
fn tunnelled_and_linux_cooked_captures_are_judged() {
    require_root!();
    portguard_tests::require_tools!("tcpdump");
    let lab = Lab::new().unwrap();
    // A VXLAN tunnel over the lab's veth, carrying IPv6 between 2001:db8:42::1 and ::2.
    for (netns, iface, local, remote, inner) in [
        (&lab.client, &lab.client_if, "192.0.2.1", "192.0.2.2", "2001:db8:42::1/64"),
        (&lab.server, &lab.server_if, "192.0.2.2", "192.0.2.1", "2001:db8:42::2/64"),
    ] {
        netns
            .ip(&[
                "link", "add", "pgvx", "type", "vxlan", "id", "42", "local", local, "remote", remote,
                "dstport", "4789", "dev", iface,
            ])
            .unwrap();
        netns.ip(&["addr", "add", inner, "dev", "pgvx", "nodad"]).unwrap();
        netns.ip(&["link", "set", "pgvx", "up"]).unwrap();
    }
    let _servers = Servers::start(&lab.server, &[80], &[53]);
    let dir = tempfile::tempdir().unwrap();
    let (outer, sll2, sll) =
        (dir.path().join("outer.pcap"), dir.path().join("any.pcap"), dir.path().join("any-sll.pcap"));
    let captures = [
        Capture::tcpdump(&lab.server, &lab.server_if, &outer, &[]).unwrap(),
        Capture::tcpdump(&lab.server, "any", &sll2, &[]).unwrap(),
        Capture::tcpdump(&lab.server, "any", &sll, &["-y", "LINUX_SLL"]).unwrap(),
    ];
    let inner: IpAddr = "2001:db8:42::2".parse().unwrap();
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(inner, 80)));
    udp_send(&lab.client, SocketAddr::new(inner, 53), 100, 3);
    captures.into_iter().for_each(Capture::stop);

    // On the veth: the tunnel itself, judged by its outer header (UDP 4789, closed by
    // default); the server's side of it learnt as its own.
    let (code, report) = verify(&outer, &["192.0.2.2"]);
    assert_eq!(code, 0, "{report}");
    accounted(&report);
    assert_eq!(report["not_judged"], 0, "{report}");
    assert!(drops_to(row(&report, "drop", "default_deny").unwrap(), "udp", 4789) > 0, "{report}");
    assert!(report["outbound"].as_u64().unwrap() > 0, "{report}");

    // `-i any`: Linux cooked headers, v2 (tcpdump's default) and v1. They say which packets
    // went out, so no --host is needed; the tunnel's inner packets are judged too.
    for pcap in [&sll2, &sll] {
        let (code, report) = verify(pcap, &[]);
        assert_eq!(code, 0, "{report}");
        accounted(&report);
        assert_eq!(report["not_judged"], 0, "{report}");
        assert!(report["outbound"].as_u64().unwrap() > 0, "{report}");
        let passed_by = rules(&report, "pass");
        assert!(
            passed_by.contains(&"rule 1 \"web\" (line 8)".to_string())
                && passed_by.contains(&"rule 3 \"dns\" (line 21)".to_string()),
            "{report}"
        );
        assert!(drops_to(row(&report, "drop", "default_deny").unwrap(), "udp", 4789) > 0, "{report}");
    }
}

#[test]
fn damaged_captures_report_what_was_read_and_where_reading_stopped() {
    require_root!();
    portguard_tests::require_tools!("tcpdump", "dumpcap");
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 5900], &[53]);
    let dir = tempfile::tempdir().unwrap();
    let (pcap, pcapng) = (dir.path().join("real.pcap"), dir.path().join("real.pcapng"));
    let captures = [
        Capture::tcpdump(&lab.server, &lab.server_if, &pcap, &[]).unwrap(),
        Capture::dumpcap(&lab.server, &lab.server_if, &pcapng, &[]).unwrap(),
    ];
    mixed_traffic(&lab);
    captures.into_iter().for_each(Capture::stop);

    // Cut off 10 bytes before the end of the last packet record, as a copy of a file tcpdump
    // was still writing. Before: the whole run aborted.
    for (name, source) in [("cut.pcap", &pcap), ("cut.pcapng", &pcapng)] {
        let (code, whole) = verify(source, &[]);
        assert_eq!(code, 0, "{whole}");
        let total = whole["packets"].as_u64().unwrap();
        let cut = dir.path().join(name);
        let bytes = std::fs::read(source).unwrap();
        // dumpcap ends with an interface statistics block: cut into the last packet block.
        let last_packet_end =
            if name.ends_with("pcapng") { last_block_of_type(&bytes, 6) } else { bytes.len() };
        std::fs::write(&cut, &bytes[..last_packet_end - 10]).unwrap();
        let (code, report) = verify(&cut, &[]);
        assert_eq!(code, i32::from(portguard::exit::Exit::IncompleteInput.code()), "{report}");
        assert_eq!(report["complete"], false);
        assert_eq!(report["packets"].as_u64().unwrap(), total, "{report}");
        let damage = &report["damage"][0];
        assert_eq!(damage["packet"].as_u64().unwrap(), total, "{report}");
        assert_eq!(damage["stopped"], true);
        assert!(damage["detail"].as_str().unwrap().contains("the file ends inside it"), "{report}");
        assert_eq!(report["not_judged_by_reason"]["damaged"], 1, "{report}");
        accounted(&report);
        let (code, text) = verify_text(&cut);
        assert_eq!(code, i32::from(portguard::exit::Exit::IncompleteInput.code()));
        assert!(
            text.contains(&format!("packet {total} (byte "))
                && text.contains(&format!("reading stopped there, after {} packets", total - 1)),
            "{text}"
        );
    }

    // An empty record among real ones is reported as such, not as a snap-length cut.
    let total = verify(&pcap, &[]).1["packets"].as_u64().unwrap();
    let with_empty = dir.path().join("empty.pcap");
    {
        let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&pcap).unwrap()).unwrap();
        let mut writer =
            PcapWriter::with_header(std::fs::File::create(&with_empty).unwrap(), reader.header()).unwrap();
        let mut n = 0;
        while let Some(packet) = reader.next_packet() {
            n += 1;
            if n == 3 {
                writer.write_packet(&PcapPacket::new(Duration::ZERO, 0, &[])).unwrap();
            }
            writer.write_packet(&packet.unwrap()).unwrap();
        }
    }
    let (code, report) = verify(&with_empty, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["packets"].as_u64().unwrap(), total + 1);
    assert_eq!(report["not_judged_packets"][0]["packet"], 3, "{report}");
    assert_eq!(report["not_judged_packets"][0]["reason"], "empty_record", "{report}");
    let (_, text) = verify_text(&with_empty);
    assert!(text.contains("packet 3: the record holds no bytes") && !text.contains("snap length"), "{text}");
}

/// Where the last pcapng block of `kind` ends (little-endian, as dumpcap writes here).
fn last_block_of_type(bytes: &[u8], kind: u32) -> usize {
    let (mut at, mut end) = (0, 0);
    while at + 8 <= bytes.len() {
        let block = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(len >= 12, "a well-formed capture");
        if block == kind {
            end = at + len;
        }
        at += len;
    }
    assert!(end > 0, "no block of type {kind}");
    end
}

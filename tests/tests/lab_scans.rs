//! Scan detection, automatic blocking and trap ports against real scanners (nmap) and real
//! clients, between two namespaces; event loss with a deliberately tiny ring buffer.

use std::{net::SocketAddr, time::Duration};

use portguard::{
    events::EventSource,
    judge::Judge,
    policy::{LoadOptions, compile::compile, parse},
};
use portguard_tests::{
    ADMIN_V4, Attached, CLIENT_V4, Lab, SERVER_V4, packets,
    portguard_cli::applied,
    require_root,
    traffic::{Servers, tcp_connect_many, tcp_connects},
};

const THRESHOLD: u64 = 20;

/// The example's port rules, scan detection that blocks, no trap ports (a scan would hit one
/// first and be blocked by it instead).
fn scan_policy(action: &str) -> String {
    format!(
        r#"
mode = "enforce"
default = "deny"
never_block = ["198.51.100.0/24"]

[[allow]]
proto = "tcp"
ports = [80, 443]

[[allow]]
proto = "udp"
ports = [53]

[scan_detection]
threshold = {THRESHOLD}
window = "5s"
action = "{action}"
block_for = "15m"
"#
    )
}

fn scan_is_detected_and_blocked(nmap_args: &[&str], expected_kind: &str) {
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80, 443], &[53]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, &scan_policy("block"), &["--json"]).unwrap();
    lab.nmap(nmap_args);

    let scan = pg
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "scan_detected")
        .unwrap_or_else(|| panic!("no scan_detected event for nmap {nmap_args:?}: {:#?}", pg.output));
    assert_eq!(scan["scan_kind"], expected_kind, "{scan}");
    assert_eq!(scan["source"], CLIENT_V4.to_string());
    assert_eq!(scan["distinct_ports"], THRESHOLD, "reported at the threshold: {scan}");
    assert_eq!(scan["action"], "blocked");
    let block = pg
        .wait_for_event(Duration::from_secs(2), |e| e["event"] == "auto_blocked")
        .expect("auto_blocked event");
    assert_eq!(block["block_secs"], 900);
    // One alert per window, not one per packet.
    let scans = pg.events(Duration::ZERO).iter().filter(|e| e["event"] == "scan_detected").count();
    assert_eq!(scans, 1, "{:#?}", pg.output);

    let stats = pg.stats();
    // What the scanner could probe before the block: the refused attempts that made the
    // threshold, each tried at most twice (nmap --max-retries 1). Everything after is dropped
    // unseen, whatever port it aims at.
    let refused =
        applied(&stats, "default_deny") + applied(&stats, "port_denied") + applied(&stats, "no_flow");
    assert!(refused <= 2 * THRESHOLD, "{refused} refused probes judged before the block: {stats}");
    assert!(applied(&stats, "auto_block") >= 200, "later probes are dropped: {stats}");
    assert_eq!(stats["observations"]["scans_detected"], 1);
    let blocks = stats["auto_blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{stats}");
    assert_eq!(blocks[0]["network"], format!("{CLIENT_V4}/32"));
    assert!(blocks[0]["remaining_secs"].as_u64().unwrap() > 800);
    // The blocked scanner cannot reach the open web port any more; others can.
    assert!(!tcp_connects(&lab.client, Some(CLIENT_V4.into()), SocketAddr::new(SERVER_V4.into(), 80)));
    assert!(tcp_connects(&lab.client, Some(ADMIN_V4.into()), SocketAddr::new(SERVER_V4.into(), 80)));
}

#[test]
fn nmap_syn_scan() {
    require_root!();
    scan_is_detected_and_blocked(&["-sS"], "syn");
}

#[test]
fn nmap_connect_scan() {
    require_root!();
    scan_is_detected_and_blocked(&["-sT"], "connect");
}

#[test]
fn nmap_udp_scan() {
    require_root!();
    scan_is_detected_and_blocked(&["-sU"], "udp");
}

#[test]
fn nmap_fin_null_xmas_ack_scans() {
    require_root!();
    for (flag, kind) in [("-sF", "fin"), ("-sN", "null"), ("-sX", "xmas"), ("-sA", "ack")] {
        scan_is_detected_and_blocked(&[flag], kind);
    }
}

#[test]
fn alert_only_reports_and_blocks_nothing() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, &scan_policy("alert"), &["--json"]).unwrap();
    lab.nmap(&["-sS"]);
    let scan =
        pg.wait_for_event(Duration::from_secs(5), |e| e["event"] == "scan_detected").expect("scan event");
    assert_eq!(scan["action"], "alert");
    assert!(pg.events(Duration::from_millis(300)).iter().all(|e| e["event"] != "auto_blocked"));
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)));
    assert_eq!(pg.stats()["auto_blocks"].as_array().unwrap().len(), 0);
}

#[test]
fn many_connections_to_an_open_port_raise_no_alert() {
    require_root!();
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[443], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, &scan_policy("block"), &["--json"]).unwrap();
    let target = SocketAddr::new(SERVER_V4.into(), 443);
    assert_eq!(tcp_connect_many(&lab.client, None, target, 300), 300);
    assert_eq!(servers.accepted(443), 300);
    // And a few mistakes on a closed port are not a scan either.
    for _ in 0..5 {
        assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)));
    }
    let events = pg.events(Duration::from_millis(500));
    assert!(
        events.iter().all(|e| e["event"] != "scan_detected" && e["event"] != "auto_blocked"),
        "{events:#?}"
    );
    assert_eq!(pg.stats()["observations"]["scans_detected"], 0);
}

const TRAP_POLICY: &str = r#"
mode = "enforce"
default = "deny"
never_block = ["198.51.100.0/24"]

[[allow]]
proto = "tcp"
ports = [80]

[[deny]]
proto = "tcp"
ports = [23, 445, 3389]

[trap_ports]
tcp = [23, 445, 3389]
udp = [1900]
block_for = "2s"
"#;

#[test]
fn one_syn_to_a_trap_port_blocks_until_expiry() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80, 23], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, TRAP_POLICY, &["--json"]).unwrap();
    let web = SocketAddr::new(SERVER_V4.into(), 80);
    assert!(tcp_connects(&lab.client, None, web));
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 23)));
    let trap =
        pg.wait_for_event(Duration::from_secs(2), |e| e["event"] == "trap_hit").expect("trap_hit event");
    assert_eq!(trap["destination_port"], 23);
    assert_eq!(trap["action"], "blocked");
    assert!(!tcp_connects(&lab.client, None, web), "blocked right after one SYN");
    assert_eq!(pg.stats()["auto_blocks"][0]["cause"], "trap");

    // The block lasts 2 s, then stops matching and is removed (and reported).
    let expired =
        pg.wait_for_event(Duration::from_secs(5), |e| e["event"] == "block_expired").expect("block_expired");
    assert_eq!(expired["source"], CLIENT_V4.to_string());
    assert!(tcp_connects(&lab.client, None, web), "unblocked after expiry");
    assert_eq!(pg.stats()["auto_blocks"].as_array().unwrap().len(), 0);

    // The admin network is never blocked, trap or not.
    assert!(!tcp_connects(&lab.client, Some(ADMIN_V4.into()), SocketAddr::new(SERVER_V4.into(), 23)));
    let alert = pg
        .wait_for_event(Duration::from_secs(2), |e| {
            e["event"] == "trap_hit" && e["source"] == ADMIN_V4.to_string()
        })
        .expect("trap_hit for the admin");
    assert_eq!(alert["action"], "alert");
    assert!(tcp_connects(&lab.client, Some(ADMIN_V4.into()), web));
}

#[test]
fn event_loss_is_counted_exactly_and_the_reader_recovers() {
    require_root!();
    let policy = r#"
default = "deny"
[scan_detection]
action = "off"
[events]
ring_buffer_kib = 4
drop_events_per_second = 100000
"#;
    let loaded = parse(policy, std::path::Path::new("loss.toml"), LoadOptions::default()).unwrap();
    let image = compile(&loaded.policy, 1).unwrap();
    let mut judge = Judge::new(&image, &loaded.policy).unwrap();
    let mut source = EventSource::from_ebpf("test", judge.ebpf()).unwrap();
    let frame = packets::tcp(CLIENT_V4.into(), SERVER_V4.into(), 40000, 3306, packets::SYN);
    let burst = 500u64;
    judge.run_raw(&frame, burst as u32).unwrap();
    let received = source.drain().len() as u64;
    let lost = source.newly_lost().unwrap().and_then(|r| r.count).unwrap_or(0);
    assert!(received > 0 && lost > 0, "received {received}, lost {lost}");
    assert_eq!(received + lost, burst, "every event is received or counted as lost");
    // The reader recovers: the next burst fits and arrives whole.
    judge.run_raw(&frame, 10).unwrap();
    assert_eq!(source.drain().len(), 10);
    assert!(source.newly_lost().unwrap().is_none());
}

#[test]
fn refusals_sent_by_the_host_count_under_default_allow() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80], &[]);
    // Default allow: nothing is refused by the policy, so only the host's own RSTs (closed
    // ports) tell a scanner from a client.
    let policy = scan_policy("block").replace("default = \"deny\"", "default = \"allow\"");
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy, &["--json"]).unwrap();
    lab.nmap(&["-sS"]);
    let scan =
        pg.wait_for_event(Duration::from_secs(5), |e| e["event"] == "scan_detected").expect("scan_detected");
    assert_eq!(scan["source"], CLIENT_V4.to_string());
    let stats = pg.stats();
    assert!(stats["observations"]["refusals_sent"].as_u64().unwrap() >= THRESHOLD, "{stats}");
    assert!(applied(&stats, "auto_block") > 0, "{stats}");
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)));
}

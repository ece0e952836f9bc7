//! Scan detection under a spoofed-source flood (issue 9): while the testkit's kernel sender
//! floods the lab's server with IPv6 SYNs to a denied port, each from a random source in
//! 2001:db8::/32, real scanners are still detected and blocked, blocks made before the flood
//! survive it, forged sources get at most `new_blocks_per_second` blocks a second, and the
//! counters and events account for the flood. Every flood is bounded in frames and time, and
//! every test checks from portguard's own counters that the flood reached it.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use portguard_tests::{
    Attached, CLIENT_V4, CLIENT_V6, INTRUDER_V4, Lab, SCANNER_V4, SERVER_V4, SERVER_V6,
    flood::{self, Blast, Bound, FLOOD_PORT, Flood},
    portguard_cli::applied,
    require_root,
    traffic::{Servers, syn_probes, tcp_connects},
};
use serde_json::Value;

const THRESHOLD: u64 = 20;
/// How many distinct ports past the threshold a scanner may get refused before it is blocked.
const SLACK: u64 = 5;
/// The same under a spoofed flood: forged sources take the admission slots too, so a scanner
/// may need a few probes more to be given scan state (31 refused ports before the block, in
/// one run of three here; the detector's own count still stops at the threshold).
const FLOOD_SLACK: u64 = 15;
/// The policy's `[limits] new_blocks_per_second`.
const NEW_BLOCKS_PER_SECOND: u64 = 200;

/// Web open, tcp/445 (the flood's port) denied, and trapped when `trap_flood_port`; tcp/23
/// always trapped; scans blocked at THRESHOLD ports in 5 s.
fn policy(trap_flood_port: bool) -> String {
    let traps = if trap_flood_port { format!("23, {FLOOD_PORT}") } else { "23".to_string() };
    format!(
        r#"
mode = "enforce"
default = "deny"
never_block = ["198.51.100.0/24"]

[[allow]]
proto = "tcp"
ports = [80]

[[deny]]
name = "the flood's port"
proto = "tcp"
ports = [{FLOOD_PORT}]

[scan_detection]
threshold = {THRESHOLD}
window = "5s"
action = "block"
block_for = "15m"

[trap_ports]
tcp = [{traps}]
block_for = "1h"

[limits]
new_blocks_per_second = {NEW_BLOCKS_PER_SECOND}
"#
    )
}

fn observation(stats: &Value, name: &str) -> u64 {
    stats["observations"][name].as_u64().unwrap_or_else(|| panic!("stats has no observation {name}: {stats}"))
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap_or_else(|| panic!("stats has no {name}: {stats}"))
}

/// Networks blocked automatically now (a /32 for an address), with their cause.
fn auto_blocks(stats: &Value) -> Vec<(String, String)> {
    stats["auto_blocks"]
        .as_array()
        .expect("stats lists automatic blocks")
        .iter()
        .map(|b| {
            (
                b["network"].as_str().unwrap_or_default().to_string(),
                b["cause"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Whether the IPv4 address `source` is blocked automatically for `cause`.
fn has_block(stats: &Value, source: std::net::Ipv4Addr, cause: &str) -> bool {
    auto_blocks(stats).iter().any(|(network, c)| *network == format!("{source}/32") && c == cause)
}

/// Starts a spoofed-source flood from the client's end of the wire towards the server's.
fn spoofed_flood<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    lab: &'s Lab,
    bound: Bound,
) -> std::thread::ScopedJoinHandle<'s, Blast> {
    let to = flood::mac(&lab.server, &lab.server_if).expect("the server's MAC address");
    scope.spawn(move || {
        flood::flood(&lab.client, &lab.client_if, to, Flood::Spoofed, bound).expect("the flood runs")
    })
}

/// Waits (bounded) until portguard has refused at least `frames` flood frames (`port_denied`
/// counts only the flood's port here).
fn wait_for_flood(pg: &Attached, frames: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = pg.stats();
        if applied(&stats, "port_denied") >= frames {
            return stats;
        }
        assert!(Instant::now() < deadline, "the flood never reached portguard: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nmap_syn_scan_is_blocked_during_a_spoofed_flood() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy(false), &["--json"]).unwrap();
    // The scanner knows the server's MAC before the flood fills the wire: an ARP request lost
    // in the flood would otherwise leave nmap's probes unsent, and the test would measure the
    // veth, not the detector.
    let mac = flood::mac(&lab.server, &lab.server_if).expect("the server's MAC address");
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    let server = SERVER_V4.to_string();
    let neigh = ["neigh", "replace", &server, "lladdr", &mac, "dev", &lab.client_if, "nud", "permanent"];
    assert!(lab.client.ip(&neigh).expect("ip neigh").status.success(), "a permanent neighbour entry");
    std::thread::scope(|scope| {
        let flood = spoofed_flood(scope, &lab, Bound::frames(200_000_000, Duration::from_secs(12)));
        let before = wait_for_flood(&pg, 100_000);
        // One probe per port (no retries): `default_deny` then counts the distinct ports the
        // scanner got refused before its block, independently of the detector's estimate.
        // Ports clear of the trap ports (a trap would block the scanner before the detector).
        lab.nmap_at(SERVER_V4.into(), &["-T5", "-p", "1000-1300", "-sS", "--max-retries", "0", "--send-ip"]);
        let scan = pg
            .wait_for_event(Duration::from_secs(5), |e| e["event"] == "scan_detected")
            .unwrap_or_else(|| {
                let stats = pg.stats();
                panic!(
                    "no scan_detected under the flood: {} of the scanner's probes refused, observations {}",
                    applied(&stats, "default_deny"),
                    stats["observations"]
                )
            });
        let during = pg.stats();
        assert!(!flood.is_finished(), "the flood ended before the scan did: make it longer");
        let blast = flood.join().expect("flood thread");

        // The flood ran all along the scan.
        let flood_frames = applied(&during, "port_denied") - applied(&before, "port_denied");
        assert!(flood_frames >= 100_000, "only {flood_frames} flood frames during the scan: {during}");

        assert_eq!(scan["source"], CLIENT_V4.to_string(), "{scan}");
        assert_eq!(scan["scan_kind"], "syn", "{scan}");
        assert_eq!(scan["action"], "blocked", "{scan}");
        let distinct = scan["distinct_ports"].as_u64().expect("distinct_ports");
        assert!((THRESHOLD..=THRESHOLD + SLACK).contains(&distinct), "{scan}");
        let block = pg
            .wait_for_event(Duration::from_secs(2), |e| {
                e["event"] == "auto_blocked" && e["source"] == CLIENT_V4.to_string()
            })
            .unwrap_or_else(|| panic!("no auto_blocked for the scanner: {:#?}", pg.output));
        assert_eq!(block["block_secs"], 900, "{block}");

        let stats = pg.stats();
        // The probe that crosses the threshold is counted as blocked, the ones before as
        // refused.
        let refused = applied(&stats, "default_deny");
        assert!(
            (THRESHOLD..=THRESHOLD + FLOOD_SLACK).contains(&(refused + 1)),
            "the scanner had {refused} ports refused before the one that got it blocked: {stats}"
        );
        assert!(applied(&stats, "auto_block") > 0, "later probes are dropped as blocked: {stats}");
        assert!(has_block(&stats, CLIENT_V4, "scan"), "{stats}");
        eprintln!(
            "flood: {} frames in {:.1} s sent, {flood_frames} refused during the scan; scanner: {distinct} ports reported, {refused} refused; stats {}",
            blast.frames, blast.seconds, stats["observations"]
        );
    });
    // After the flood: the scanner stays blocked, another client of the same network is not.
    let web = SocketAddr::new(SERVER_V4.into(), 80);
    assert!(!tcp_connects(&lab.client, Some(CLIENT_V4.into()), web), "the scanner is blocked");
    assert!(tcp_connects(&lab.client, Some(INTRUDER_V4.into()), web), "others still connect");
}

/// The network CLIENT_V6 is counted and blocked as (`ipv6_prefix` 64), as stats and events
/// name it.
const CLIENT_V6_NET: &str = "2001:db8::";

fn wait_for_block(pg: &mut Attached, source: &str) {
    let source = source.to_string();
    pg.wait_for_event(Duration::from_secs(5), |e| e["event"] == "auto_blocked" && e["source"] == source)
        .unwrap_or_else(|| {
            let stats = pg.stats();
            let events: Vec<&String> = pg.output.iter().filter(|l| !l.contains("\"drop\"")).collect();
            panic!(
                "no auto_blocked for {source}: {} probes refused by default, observations {}, events {events:#?}",
                applied(&stats, "default_deny"),
                stats["observations"]
            )
        });
}

fn probes(target: IpAddr, ports: std::ops::Range<u16>) -> Vec<SocketAddr> {
    ports.map(|port| SocketAddr::new(target, port)).collect()
}

#[test]
fn blocks_made_before_a_spoofed_flood_survive_five_million_forged_sources() {
    require_root!();
    const FRAMES: u64 = 5_000_000;
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80], &[]);
    // The flood's port is a trap port too (like examples/edge-host.toml): every forged source
    // asks for an automatic block.
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy(true), &["--json"]).unwrap();

    // Three automatic blocks before the flood: a scanner, and trap hits over IPv4 and IPv6.
    syn_probes(&lab.client, Some(CLIENT_V4.into()), probes(SERVER_V4.into(), 1000..1040));
    wait_for_block(&mut pg, &CLIENT_V4.to_string());
    assert!(!tcp_connects(
        &lab.client,
        Some(SCANNER_V4.into()),
        SocketAddr::new(SERVER_V4.into(), FLOOD_PORT)
    ));
    wait_for_block(&mut pg, &SCANNER_V4.to_string());
    assert!(!tcp_connects(
        &lab.client,
        Some(CLIENT_V6.into()),
        SocketAddr::new(SERVER_V6.into(), FLOOD_PORT)
    ));
    wait_for_block(&mut pg, CLIENT_V6_NET);
    let before = pg.stats();
    let blocked_before = auto_blocks(&before);
    assert_eq!(blocked_before.len(), 3, "{before}");

    // Until 5 million forged frames have reached portguard: the wire's one queue drops some
    // of what the senders transmit when it is full.
    let hook_before = flood::hook_counters(&lab.server, &lab.server_if).unwrap();
    let to = flood::mac(&lab.server, &lab.server_if).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..10 {
        let bound = Bound::frames(FRAMES, Duration::from_secs(20));
        sent += flood::flood(&lab.client, &lab.client_if, to, Flood::Spoofed, bound).unwrap().frames;
        if counter(&pg.stats(), "packets") - counter(&before, "packets") >= FRAMES {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let hook = flood::hook_counters(&lab.server, &lab.server_if).unwrap();
    let after = pg.stats();

    // Every forged frame that reached portguard hit the trap: it was blocked (admitted) or
    // counted as not admitted and then refused by the port policy.
    let judged = counter(&after, "packets") - counter(&before, "packets");
    let admitted = observation(&after, "trap_blocks") - observation(&before, "trap_blocks");
    let not_admitted =
        observation(&after, "blocks_not_admitted") - observation(&before, "blocks_not_admitted");
    let refused = applied(&after, "port_denied") - applied(&before, "port_denied");
    let reached = hook.packets - hook_before.packets;
    eprintln!(
        "flood: {sent} frames sent in {seconds:.2} s, {reached} through the XDP hook, {judged} judged; {admitted} forged blocks admitted, {not_admitted} not; observations {}",
        after["observations"]
    );
    assert!(judged >= FRAMES, "only {judged} of {sent} frames reached portguard");
    assert!(judged >= reached && judged <= reached + 1_000, "portguard judged {judged} of {reached} frames");
    assert!(
        admitted + not_admitted + 1_000 >= judged,
        "{judged} judged, {admitted} + {not_admitted} trap hits"
    );
    assert_eq!(refused, not_admitted, "what was not blocked was refused by the port policy");
    // The budget: granted at load and each second after, so at most one grant more than the
    // seconds the flood lasted, plus what was left before it.
    let budget = NEW_BLOCKS_PER_SECOND * (seconds.ceil() as u64 + 2);
    assert!(admitted <= budget, "{admitted} forged sources blocked in {seconds:.2} s");
    assert!(admitted >= 1, "no forged source blocked at all: the trap did not see the flood");
    // Forged sources fail once each: none of them gets scan state.
    assert_eq!(
        observation(&after, "scan_sources_admitted"),
        observation(&before, "scan_sources_admitted"),
        "{after}"
    );

    // The blocks from before are all still there, and still hold.
    let blocked_after = auto_blocks(&after);
    for block in &blocked_before {
        assert!(blocked_after.contains(block), "{block:?} was evicted by the flood");
    }
    assert_eq!(blocked_after.len() as u64, 3 + admitted, "nothing evicted, nothing else added");
    let web4 = SocketAddr::new(SERVER_V4.into(), 80);
    let dropped_before = applied(&after, "auto_block");
    assert!(!tcp_connects(&lab.client, Some(CLIENT_V4.into()), web4), "the scanner stays blocked");
    assert!(!tcp_connects(&lab.client, Some(SCANNER_V4.into()), web4), "the IPv4 trap hit stays blocked");
    assert!(
        !tcp_connects(&lab.client, Some(CLIENT_V6.into()), SocketAddr::new(SERVER_V6.into(), 80)),
        "the IPv6 trap hit stays blocked"
    );
    assert!(tcp_connects(&lab.client, Some(INTRUDER_V4.into()), web4), "others still connect");
    assert!(applied(&pg.stats(), "auto_block") >= dropped_before + 3, "dropped as blocked");
}

#[test]
fn a_flood_is_counted_and_scan_and_block_events_all_arrive() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80], &[]);
    let attached_at = Instant::now();
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy(false), &["--json"]).unwrap();
    // The clients have talked to the server before: under the flood, address resolution
    // itself would lose its requests in the full queue.
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)));
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V6.into(), 80)));
    let hook_before = flood::hook_counters(&lab.server, &lab.server_if).unwrap();
    let xmit_before = flood::xmit_counters(&lab.client, &lab.client_if).unwrap();
    let before = pg.stats();
    let blast = std::thread::scope(|scope| {
        let flood = spoofed_flood(scope, &lab, Bound::frames(200_000_000, Duration::from_secs(10)));
        wait_for_flood(&pg, 100_000);
        // Under the flood: three scanners (two IPv4, one IPv6 network) and a trap hit. The
        // full queue refuses more than half of every sender's frames, the real ones' too: each
        // scanner tries enough ports, and the trap is tried until a SYN gets through.
        for source in [IpAddr::from(CLIENT_V4), IpAddr::from(INTRUDER_V4)] {
            syn_probes(&lab.client, Some(source), probes(SERVER_V4.into(), 2000..2150));
        }
        syn_probes(&lab.client, Some(CLIENT_V6.into()), probes(SERVER_V6.into(), 2000..2150));
        syn_probes(&lab.client, Some(SCANNER_V4.into()), vec![SocketAddr::new(SERVER_V4.into(), 23); 20]);
        for source in [
            CLIENT_V4.to_string(),
            INTRUDER_V4.to_string(),
            CLIENT_V6_NET.to_string(),
            SCANNER_V4.to_string(),
        ] {
            wait_for_block(&mut pg, &source);
        }
        assert!(!flood.is_finished(), "the flood ended before the scans did: make it longer");
        flood.join().expect("flood thread")
    });
    // The reader reports lost events within a second.
    let events = pg.events(Duration::from_millis(1500));
    let hook = flood::hook_counters(&lab.server, &lab.server_if).unwrap();
    let xmit = flood::xmit_counters(&lab.client, &lab.client_if).unwrap();
    let stats = pg.stats();
    let seconds = attached_at.elapsed().as_secs_f64();

    // The flood's drops are counted: every frame through the XDP hook was judged, and every
    // one the hook dropped is in portguard's drop counters.
    let reached = hook.packets - hook_before.packets;
    let queued = xmit.frames - xmit_before.frames;
    let queue_full = xmit.queue_full - xmit_before.queue_full;
    let hook_drops = hook.drops - hook_before.drops;
    let judged = counter(&stats, "packets") - counter(&before, "packets");
    let dropped = counter(&stats, "dropped") - counter(&before, "dropped");
    let refused = applied(&stats, "port_denied") - applied(&before, "port_denied");
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count() as u64;
    eprintln!(
        "flood: {} frames sent in {:.2} s, {queued} queued to the server ({queue_full} not: queue full), {reached} through the XDP hook ({hook_drops} dropped there); portguard judged {judged}, dropped {dropped}, {refused} as port_denied; events: {} scan, {} block, {} trap, {} drop, {} lost; observations {}",
        blast.frames,
        blast.seconds,
        count("scan_detected"),
        count("auto_blocked"),
        count("trap_hit"),
        count("drop"),
        count("events_lost"),
        stats["observations"]
    );
    // Every frame sent is accounted for: queued to the server's end of the wire (and then
    // through its XDP hook) or refused by the full queue, which the real probes share too.
    let wire = queued + queue_full;
    assert!(
        wire <= blast.frames && wire + blast.frames / 1000 >= blast.frames,
        "{wire} of {} frames sent counted by the wire",
        blast.frames
    );
    assert!(reached >= queued && reached <= queued + 10_000, "{reached} of {queued} queued frames judged");
    assert!(reached >= blast.frames / 10, "only {reached} of {} frames reached the server", blast.frames);
    // The two counters are read one after the other: a stray packet (neighbour discovery, a
    // retransmission) may arrive in between, in either order.
    assert!(
        judged + 100 >= reached && judged <= reached + 10_000,
        "portguard judged {judged} of {reached} frames"
    );
    assert!(
        dropped >= hook_drops && dropped <= hook_drops + 1_000,
        "portguard dropped {dropped}, the hook {hook_drops}"
    );
    assert!(refused + 10_000 >= reached, "the flood's frames are port_denied: {refused} of {reached}");

    // Every scan and block was reported, and no event was lost.
    assert_eq!(observation(&stats, "events_lost"), 0, "{stats}");
    assert_eq!(count("events_lost"), 0);
    assert_eq!(observation(&stats, "scans_detected"), 3, "{stats}");
    assert_eq!(count("scan_detected"), 3, "{events:#?}");
    assert_eq!(observation(&stats, "scan_blocks"), 3, "{stats}");
    assert_eq!(observation(&stats, "trap_blocks"), 1, "{stats}");
    assert_eq!(count("auto_blocked"), 4, "{events:#?}");
    assert_eq!(count("trap_hit"), 1, "{events:#?}");
    // Drop events are sampled: at most `drop_events_per_second` (20) per CPU and second, and
    // what the budget held back is counted, not lost.
    let drop_budget = 20 * flood::num_cpus() as u64 * (seconds.ceil() as u64 + 1);
    assert!(count("drop") <= drop_budget, "{} drop events in {seconds:.1} s", count("drop"));
    assert!(observation(&stats, "events_suppressed") > 0, "{stats}");
    // The forged sources got no scan state; only the three scanners did.
    assert!(observation(&stats, "scan_sources_admitted") <= 3 + 2, "{stats}");
}

/// Issue 9: "automatic blocks must not crowd out real ones". Today forged trap hits spend the
/// whole `new_blocks_per_second` within the first milliseconds of each second, so a real
/// scanner detected under such a flood is reported but not blocked.
#[test]
fn a_scanner_is_blocked_during_a_spoofed_flood_to_a_trap_port() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy(true), &["--json"]).unwrap();
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)));
    std::thread::scope(|scope| {
        let flood = spoofed_flood(scope, &lab, Bound::frames(200_000_000, Duration::from_secs(8)));
        wait_for_flood(&pg, 100_000);
        syn_probes(&lab.client, Some(CLIENT_V4.into()), probes(SERVER_V4.into(), 2000..2150));
        let scan = pg
            .wait_for_event(Duration::from_secs(5), |e| {
                e["event"] == "scan_detected" && e["source"] == CLIENT_V4.to_string()
            })
            .expect("the scan is detected");
        let stats = pg.stats();
        assert!(
            has_block(&stats, CLIENT_V4, "scan"),
            "reported as {} but not blocked: {}",
            scan["action"],
            stats["observations"]
        );
        flood.join().expect("flood thread");
    });
}

//! Per-source limits of new connections (`limit = { new_per_source, burst }`) on real TCP
//! connections between two namespaces, with `portguard attach` on the server's veth.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use portguard_tests::{
    ADMIN_V6, Attached, CLIENT_V4, CLIENT_V6, INTRUDER_V4, Lab,
    portguard_cli::applied,
    require_root,
    traffic::{Servers, tcp_connect_burst, tcp_connects},
};
use portguard_tests::{
    flood::{self, Bound, FLOOD_PORT, Flood},
    http,
};
use serde_json::Value;

/// Long enough for an admitted connection to complete on a veth, shorter than a SYN
/// retransmission (so a refused attempt is not tried again within the burst).
const WAIT: Duration = Duration::from_millis(400);

fn ssh(v6: bool) -> SocketAddr {
    SocketAddr::new(Lab::server_addr(v6), 22)
}

fn policy(limit: &str, extra: &str) -> String {
    format!(
        "default = \"deny\"\n{extra}\n[[allow]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\nlimit = {limit}\n"
    )
}

fn would_drop(stats: &Value, name: &str) -> u64 {
    stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == name && r["counted_as"] != "applied")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

#[test]
fn thirty_connections_in_a_second_five_get_through_and_the_budget_comes_back() {
    require_root!();
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[22], &[]);
    let pg = Attached::start(
        &lab.server,
        &lab.server_if,
        &policy("{ new_per_source = \"5/10s\", burst = 5 }", ""),
        &[],
    )
    .unwrap();
    let first = Some(IpAddr::from(CLIENT_V4));
    let started = Instant::now();
    let results = tcp_connect_burst(&lab.client, first, ssh(false), 30, WAIT);
    let passed: Vec<usize> = results.iter().enumerate().filter(|(_, ok)| **ok).map(|(i, _)| i).collect();
    assert_eq!(passed, [0, 1, 2, 3, 4], "the first five connect, the other 25 are refused");
    // A second client has a budget of its own.
    let second = Some(IpAddr::from(INTRUDER_V4));
    assert_eq!(tcp_connect_burst(&lab.client, second, ssh(false), 5, WAIT), [true; 5]);
    assert!(!tcp_connects(&lab.client, first, ssh(false)), "the first client is still over its rate");
    assert_eq!(servers.accepted(22), 10);
    let stats = pg.stats();
    assert!(applied(&stats, "rate_limited") >= 26, "{stats}");
    let limits = &stats["rate_limits"];
    assert_eq!(limits["rules"][0]["name"], "ssh", "{stats}");
    assert_eq!(limits["rules"][0]["new_per_source"], "5/10s", "{stats}");
    let limited = limits["rules"][0]["limited"].as_u64().unwrap();
    assert!(limited >= 26, "{stats}");
    assert_eq!(limits["tracked_sources"], 2, "two clients, one rule: {stats}");
    let text = portguard_tests::portguard_cli::succeeded(pg.run(&["stats", &pg.iface]));
    assert!(
        text.contains(&format!("rule 1 \"ssh\" (5/10s per source, burst 5): {limited} refused")),
        "{text}"
    );

    // Ten seconds after the burst the whole budget is back: five more, then refused again.
    std::thread::sleep(
        Duration::from_secs(10).saturating_sub(started.elapsed()) + Duration::from_millis(200),
    );
    let again = tcp_connect_burst(&lab.client, first, ssh(false), 6, WAIT);
    assert_eq!(again, [true, true, true, true, true, false]);
    let (ok, stderr) = pg.stop();
    assert!(ok, "{stderr}");
}

#[test]
fn ipv6_sources_in_one_slash_64_share_a_budget() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[22], &[]);
    // A second client address in the client's /64.
    lab.client.ip(&["addr", "add", "2001:db8::77/64", "dev", &lab.client_if, "nodad"]).unwrap();
    let neighbour: IpAddr = "2001:db8::77".parse().unwrap();
    let pg = Attached::start(
        &lab.server,
        &lab.server_if,
        &policy("{ new_per_source = \"3/1h\" }", ""),
        &["--metrics"],
    )
    .unwrap();
    assert_eq!(tcp_connect_burst(&lab.client, Some(CLIENT_V6.into()), ssh(true), 2, WAIT), [true, true]);
    assert_eq!(tcp_connect_burst(&lab.client, Some(neighbour), ssh(true), 2, WAIT), [true, false]);
    assert!(!tcp_connects(&lab.client, Some(CLIENT_V6.into()), ssh(true)));
    // Another /64 is another source.
    assert_eq!(tcp_connect_burst(&lab.client, Some(ADMIN_V6.into()), ssh(true), 3, WAIT), [true; 3]);
    assert!(applied(&pg.stats(), "rate_limited") >= 2);
    let (status, body) = http::get(&lab.server, "127.0.0.1:9464".parse().unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    let samples = http::samples(&body);
    let iface = lab.server_if.as_str();
    let refused =
        http::value(&samples, "portguard_rate_limited_total", &[("interface", iface), ("rule", "1")]);
    assert!(refused >= 2.0, "{body}");
    // Two /64s tried the one limited rule.
    let sources = http::value(&samples, "portguard_rate_limited_sources", &[("interface", iface)]);
    assert!((sources - 2.0).abs() < f64::EPSILON, "{body}");
}

#[test]
fn never_block_sources_are_exempt_and_monitor_mode_only_counts() {
    require_root!();
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[22], &[]);
    let limit = "{ new_per_source = \"2/1h\" }";
    let pg = Attached::start(
        &lab.server,
        &lab.server_if,
        &policy(limit, &format!("never_block = [\"{INTRUDER_V4}\"]")),
        &[],
    )
    .unwrap();
    assert_eq!(tcp_connect_burst(&lab.client, Some(INTRUDER_V4.into()), ssh(false), 8, WAIT), [true; 8]);
    assert_eq!(
        tcp_connect_burst(&lab.client, Some(CLIENT_V4.into()), ssh(false), 3, WAIT),
        [true, true, false]
    );
    assert_eq!(applied(&pg.stats(), "rate_limited"), 1);
    let (ok, stderr) = pg.stop();
    assert!(ok, "{stderr}");

    let pg = Attached::start(
        &lab.server,
        &lab.server_if,
        &format!("mode = \"monitor\"\n{}", policy(limit, "")),
        &[],
    )
    .unwrap();
    let before = servers.accepted(22);
    assert_eq!(tcp_connect_burst(&lab.client, Some(CLIENT_V4.into()), ssh(false), 6, WAIT), [true; 6]);
    assert_eq!(servers.accepted(22) - before, 6);
    let stats = pg.stats();
    assert_eq!(applied(&stats, "rate_limited"), 0, "monitor mode drops nothing");
    assert!(would_drop(&stats, "rate_limited") >= 4, "{stats}");
}

#[test]
fn doctor_names_open_ports_without_a_limit() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[22, 80, 8080], &[]);
    let text = "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22, 8080]\n\
                [[allow]]\nproto = \"tcp\"\nports = [80]\nlimit = { new_per_source = \"20/s\" }\n";
    let pg = Attached::start(&lab.server, &lab.server_if, text, &[]).unwrap();
    let output = pg.run(&["doctor", "--json", "--iface", &pg.iface]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("doctor --json");
    let unlimited: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["title"].as_str().unwrap().ends_with("no rate limit"))
        .map(|f| (f["title"].as_str().unwrap().to_owned(), f["severity"].as_str().unwrap().to_owned()))
        .collect();
    let severity_of = |port: &str| {
        let found: Vec<&(String, String)> =
            unlimited.iter().filter(|(title, _)| title.contains(&format!("tcp/{port} "))).collect();
        found.first().map(|(_, severity)| severity.clone())
    };
    // SSH open to the world without a limit: medium; another open port: info; a limited one:
    // nothing (its IPv4 and IPv6 listeners are one socket here).
    assert_eq!(severity_of("22").as_deref(), Some("medium"), "{unlimited:?}");
    assert_eq!(severity_of("8080").as_deref(), Some("info"), "{unlimited:?}");
    assert_eq!(severity_of("80"), None, "{unlimited:?}");
}

#[test]
fn a_spoofed_syn_flood_to_a_limited_port_keeps_the_state_bounded() {
    require_root!();
    const TABLE: u64 = 1024;
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[FLOOD_PORT], &[]);
    let text = format!(
        "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [{FLOOD_PORT}]\n\
         limit = {{ new_per_source = \"5/1h\" }}\n[limits]\nlimited_sources = {TABLE}\n"
    );
    let pg = Attached::start(&lab.server, &lab.server_if, &text, &[]).unwrap();
    let target = SocketAddr::new(Lab::server_addr(false), FLOOD_PORT);
    let to = flood::mac(&lab.server, &lab.server_if).unwrap();
    // A forged source each frame: each is new to the limiter, so each passes and takes an
    // entry; the LRU keeps the table at its size.
    let during = std::thread::scope(|scope| {
        let flooding = scope.spawn(|| {
            let bound = Bound::frames(1_000_000, Duration::from_secs(15));
            flood::flood(&lab.client, &lab.client_if, to, Flood::Spoofed, bound).expect("the flood runs")
        });
        std::thread::sleep(Duration::from_millis(300));
        // A real client during the flood (its SYNs meet the forged ones at the listener).
        let connected = (0..5).any(|_| tcp_connects(&lab.client, Some(INTRUDER_V4.into()), target));
        let blast = flooding.join().unwrap();
        assert!(blast.frames > 10 * TABLE, "the flood sent {} frames", blast.frames);
        connected
    });
    assert!(during, "a legitimate client connected during the flood");
    let stats = pg.stats();
    assert!(applied(&stats, "port_allowed") > 10 * TABLE, "the forged SYNs reached the limiter: {stats}");
    let tracked = stats["rate_limits"]["tracked_sources"].as_u64().unwrap();
    assert!(tracked <= TABLE, "{tracked} budgets in a table of {TABLE}");
    // After it, a client's budget is whole: five connections, then refused.
    let before = servers.accepted(FLOOD_PORT);
    assert_eq!(
        tcp_connect_burst(&lab.client, Some(CLIENT_V4.into()), target, 6, WAIT),
        [true, true, true, true, true, false]
    );
    assert_eq!(servers.accepted(FLOOD_PORT) - before, 5);
}

#[test]
fn a_client_that_keeps_hammering_is_blocked_and_a_repeat_offender_for_longer() {
    require_root!();
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[22, 80], &[]);
    let text = format!(
        "{}[[allow]]\nname = \"web\"\nproto = \"tcp\"\nports = [80]\n[brute_force]\nafter = 3\nwithin = \"1m\"\n\
         block_for = \"2s\"\nrecidive_within = \"1h\"\nmax_block_for = \"1h\"\n",
        policy("{ new_per_source = \"2/1h\" }", "")
    );
    let mut pg = Attached::start(&lab.server, &lab.server_if, &text, &["--json"]).unwrap();
    let hammer = Some(IpAddr::from(CLIENT_V4));
    let web = SocketAddr::new(Lab::server_addr(false), 80);
    // Two connect, two are refused by the rate, the third refusal blocks the client.
    assert_eq!(
        tcp_connect_burst(&lab.client, hammer, ssh(false), 5, WAIT),
        [true, true, false, false, false]
    );
    assert!(!tcp_connects(&lab.client, hammer, web), "blocked on every port, the unlimited one too");
    assert!(tcp_connects(&lab.client, Some(INTRUDER_V4.into()), ssh(false)), "another client is not");

    let limited =
        pg.wait_for_event(Duration::from_secs(3), |e| e["event"] == "limited").expect("a limited event");
    assert_eq!(
        (limited["limit"].as_str(), limited["rule"].as_u64()),
        (Some("rate_limit"), Some(1)),
        "{limited}"
    );
    let block = pg
        .wait_for_event(Duration::from_secs(3), |e| e["event"] == "auto_blocked")
        .expect("an auto_blocked event");
    assert_eq!(block["source"], CLIENT_V4.to_string(), "{block}");
    assert_eq!((block["reason"].as_str(), block["limit"].as_str()), (Some("rate_limit"), Some("rate_limit")));
    assert_eq!((block["count"].as_u64(), block["block_secs"].as_u64()), (Some(3), Some(2)), "{block}");
    portguard_tests::schemas::assert_valid("event", &limited);
    portguard_tests::schemas::assert_valid("event", &block);
    let blocks = pg.stats()["auto_blocks"].clone();
    assert_eq!(blocks[0]["cause"], "rate_limit", "{blocks}");
    assert_eq!((blocks[0]["protocol"].as_str(), blocks[0]["port"].as_u64()), (Some("tcp"), Some(22)));
    let listing = portguard_tests::portguard_cli::succeeded(pg.run(&["blocks"]));
    assert!(listing.contains("rate_limit: tcp/22"), "{listing}");

    // The block ends (2 s, and up to 0.64 s of the packet path's memo); the rate still refuses
    // (its budget is per hour), and three more refusals block again: twice as long.
    std::thread::sleep(Duration::from_millis(2800));
    assert!(tcp_connects(&lab.client, hammer, web), "the first block is over");
    assert_eq!(tcp_connect_burst(&lab.client, hammer, ssh(false), 3, WAIT), [false; 3]);
    let again = pg
        .wait_for_event(Duration::from_secs(3), |e| e["event"] == "auto_blocked" && e["reason"] == "recidive")
        .unwrap_or_else(|| panic!("no recidive block: {:#?}", pg.output));
    assert_eq!(
        (again["limit"].as_str(), again["block_secs"].as_u64()),
        (Some("rate_limit"), Some(4)),
        "{again}"
    );
    let blocks = pg.stats()["auto_blocks"].clone();
    assert_eq!(blocks[0]["cause"], "recidive", "{blocks}");
    let left = blocks[0]["remaining_secs"].as_u64().unwrap();
    assert!((3..=4).contains(&left), "{blocks}");

    // `unblock` lifts it at once.
    assert!(!tcp_connects(&lab.client, hammer, web));
    portguard_tests::portguard_cli::succeeded(pg.run(&["unblock", &CLIENT_V4.to_string()]));
    assert!(tcp_connects(&lab.client, hammer, web), "unblocked");
    assert_eq!(servers.accepted(22), 3);
}

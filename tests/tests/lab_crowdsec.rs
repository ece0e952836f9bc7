//! portguard as a CrowdSec bouncer, against the real Local API (Debian's `crowdsec`, run by
//! each test in its lab's server namespace with its own database): decisions added with
//! `cscli` are enforced in the kernel within `update_every` + 1 s, deleted and expired ones
//! are lifted, ranges and IPv6 work, and a LAPI that goes away leaves the decisions in force
//! (also across a loader restart) until it is back.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use portguard_tests::{
    ADMIN_V4, Attached, BLOCKED_V4, BLOCKED_V6, CLIENT_V4, CLIENT_V6, Lab, SERVER_V4, SERVER_V6,
    crowdsec::Lapi,
    http,
    portguard_cli::succeeded as ok,
    require_root, require_tools,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

const WEB: &str = portguard_tests::portguard_cli::WEB_POLICY;
const METRICS: &str = "127.0.0.1:9464";

fn web(source: IpAddr) -> SocketAddr {
    SocketAddr::new(if source.is_ipv6() { SERVER_V6.into() } else { SERVER_V4.into() }, 80)
}

/// Waits up to `within` for connections from `source` to be refused (`blocked`) or to pass;
/// returns how long it took, `None` if it never happened.
fn becomes(lab: &Lab, source: IpAddr, blocked: bool, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if tcp_connects(&lab.client, Some(source), web(source)) != blocked {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn blocks(pg: &Attached) -> Vec<Value> {
    let text = ok(pg.run(&["blocks", "--json", "--iface", &pg.iface]));
    serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone()
}

fn metrics(lab: &Lab) -> Vec<http::Sample> {
    let (status, body) = http::get(&lab.server, METRICS.parse().unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    http::samples(&body)
}

fn start(lab: &Lab, lapi: &Lapi) -> Attached {
    let policy = format!("{WEB}{}", lapi.policy_section("1s"));
    Attached::start(&lab.server, &lab.server_if, &policy, &["--metrics", METRICS]).unwrap()
}

#[test]
fn decisions_are_enforced_lifted_and_expire() {
    require_root!();
    require_tools!("crowdsec", "cscli");
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let lapi = Lapi::start(&lab.server).unwrap();
    let pg = start(&lab, &lapi);
    // update_every 1 s: in force within 2 s of `cscli decisions add` (a refused attempt itself
    // takes 0.7 s to tell).
    let enforced_within = Duration::from_secs(2) + Duration::from_millis(800);
    let client: IpAddr = CLIENT_V4.into();
    assert!(tcp_connects(&lab.client, Some(client), web(client)), "open before any decision");
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.1", "--duration", "1h"]).unwrap();
    let took = becomes(&lab, client, true, enforced_within);
    assert!(took.is_some(), "an Ip decision was not enforced within {enforced_within:?}\n{}", lapi.log());
    let other: IpAddr = ADMIN_V4.into();
    assert!(tcp_connects(&lab.client, Some(other), web(other)), "other sources still pass");

    // Ranges and IPv6, by address and by range.
    lapi.cscli(&["decisions", "add", "--range", "203.0.113.0/24", "--duration", "1h"]).unwrap();
    lapi.cscli(&["decisions", "add", "--range", "2001:db8:bad::/48", "--duration", "1h"]).unwrap();
    lapi.cscli(&["decisions", "add", "--ip", "2001:db8::1", "--duration", "1h"]).unwrap();
    for source in [IpAddr::from(BLOCKED_V4), BLOCKED_V6.into(), CLIENT_V6.into()] {
        assert!(becomes(&lab, source, true, enforced_within).is_some(), "{source} was not blocked");
    }
    // A decision that is not a ban is counted and ignored.
    lapi.cscli(&["decisions", "add", "--ip", "198.51.100.7", "--type", "captcha", "--duration", "1h"])
        .unwrap();

    let listed = blocks(&pg);
    let crowdsec: Vec<&Value> = listed.iter().filter(|r| r["origin"] == "crowdsec").collect();
    assert_eq!(crowdsec.len(), 4, "{listed:?}");
    let row = crowdsec.iter().find(|r| r["network"] == "192.0.2.1/32").expect("listed");
    assert!(row["scenario"].as_str().unwrap().contains("manual 'ban'"), "{row}");
    assert!((3500..=3600).contains(&row["remaining_secs"].as_u64().unwrap()), "{row}");
    portguard_tests::schemas::assert_valid("blocks", &Value::Array(listed.clone()));
    let text = ok(pg.run(&["blocks", "--iface", &pg.iface]));
    assert!(text.lines().any(|l| l.starts_with("192.0.2.1 ") && l.contains("crowdsec")), "{text}");

    std::thread::sleep(Duration::from_secs(2));
    let stats = pg.stats();
    portguard_tests::schemas::assert_valid("stats", &stats);
    assert_eq!(stats["crowdsec"]["decisions"], 4, "{stats}");
    assert_eq!(stats["crowdsec"]["other_types"]["captcha"], 1, "{stats}");
    assert!(stats["crowdsec"]["last_success_age_secs"].as_u64().unwrap() <= 2, "{stats}");
    let samples = metrics(&lab);
    let iface = [("interface", lab.server_if.as_str())];
    assert_eq!(http::value(&samples, "portguard_crowdsec_decisions", &iface) as u64, 4);
    assert_eq!(http::value(&samples, "portguard_crowdsec_up", &iface) as u64, 1);
    assert_eq!(http::value(&samples, "portguard_crowdsec_pull_errors_total", &iface) as u64, 0);
    assert!(http::value(&samples, "portguard_crowdsec_last_pull_age_seconds", &iface) <= 2.0);

    // Deleted in the LAPI: lifted.
    lapi.cscli(&["decisions", "delete", "--ip", "192.0.2.1"]).unwrap();
    assert!(becomes(&lab, client, false, enforced_within).is_some(), "a deleted decision was not lifted");
    // Lifted by hand: it works, and says where to delete it for good.
    let said = ok(pg.run(&["unblock", "2001:db8::1", "--iface", &pg.iface]));
    assert!(said.contains("cscli decisions delete --ip 2001:db8::1"), "{said}");
    let v6: IpAddr = CLIENT_V6.into();
    assert!(tcp_connects(&lab.client, Some(v6), web(v6)), "open right after unblock");

    // A 5 s decision ends by itself.
    let added = Instant::now();
    lapi.cscli(&["decisions", "add", "--ip", "198.51.100.7", "--duration", "5s"]).unwrap();
    assert!(becomes(&lab, other, true, enforced_within).is_some(), "the 5 s decision was not enforced");
    let lifted = becomes(&lab, other, false, Duration::from_secs(10));
    assert!(lifted.is_some(), "the 5 s decision did not end");
    assert!(added.elapsed() >= Duration::from_secs(4), "ended early: {:?}", added.elapsed());
    drop(pg);
}

#[test]
fn a_lapi_that_goes_away_leaves_the_decisions_in_force() {
    require_root!();
    require_tools!("crowdsec", "cscli");
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let mut lapi = Lapi::start(&lab.server).unwrap();
    let pg = start(&lab, &lapi);
    let within = Duration::from_secs(3);
    let client: IpAddr = CLIENT_V4.into();
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.1", "--duration", "1h"]).unwrap();
    assert!(becomes(&lab, client, true, within).is_some(), "not enforced");

    lapi.stop();
    std::thread::sleep(Duration::from_secs(4));
    assert!(!tcp_connects(&lab.client, Some(client), web(client)), "still enforced with the LAPI down");
    let stats = pg.stats();
    assert!(stats["crowdsec"]["errors"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["crowdsec"]["last_error"].is_string(), "{stats}");
    assert_eq!(stats["crowdsec"]["decisions"], 1, "{stats}");
    let text = ok(pg.run(&["stats", &pg.iface]));
    assert!(text.contains("LAST PULL FAILED"), "{text}");
    let samples = metrics(&lab);
    let iface = [("interface", lab.server_if.as_str())];
    assert_eq!(http::value(&samples, "portguard_crowdsec_up", &iface) as u64, 0);
    assert!(http::value(&samples, "portguard_crowdsec_pull_errors_total", &iface) >= 1.0);
    assert!(http::value(&samples, "portguard_crowdsec_last_pull_age_seconds", &iface) >= 3.0);

    // The loader detaches (pins gone) and attaches again while the LAPI is still down: the
    // decisions come back from the state directory.
    ok(pg.run(&["detach", &pg.iface]));
    assert!(tcp_connects(&lab.client, Some(client), web(client)), "open while detached");
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy.path(), format!("{WEB}{}", lapi.policy_section("1s"))).unwrap();
    let restarted = pg.attach_again(policy.path(), &["--metrics", METRICS]);
    assert!(becomes(&lab, client, true, Duration::from_secs(10)).is_some(), "not restored after a restart");

    // The LAPI is back: new decisions arrive (after the back-off, at most a few seconds here).
    lapi.resume().unwrap();
    let other: IpAddr = ADMIN_V4.into();
    lapi.cscli(&["decisions", "add", "--ip", "198.51.100.7", "--duration", "1h"]).unwrap();
    assert!(becomes(&lab, other, true, Duration::from_secs(20)).is_some(), "a new decision did not arrive");
    assert!(!tcp_connects(&lab.client, Some(client), web(client)), "the first still in force");
    drop(restarted);
}

#[test]
fn a_hundred_thousand_decisions_load_within_five_seconds() {
    require_root!();
    require_tools!("crowdsec", "cscli");
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let lapi = Lapi::start(&lab.server).unwrap();
    // 10.0.0.0/8 and beyond, one address in three (none on the lab's networks); the last one
    // is a lab client's address, to see the whole answer enforced.
    lapi.import_bans(std::net::Ipv4Addr::new(10, 0, 0, 0), 99_999, "4h").unwrap();
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.1", "--duration", "4h"]).unwrap();
    let policy = format!("{WEB}[limits]\nmanual_blocks = 131072\n{}", lapi.policy_section("10s"));
    let started = Instant::now();
    let pg = Attached::start(&lab.server, &lab.server_if, &policy, &[]).unwrap();
    let client: IpAddr = CLIENT_V4.into();
    assert!(becomes(&lab, client, true, Duration::from_secs(30)).is_some(), "not enforced");
    let enforced = started.elapsed();
    let stats = pg.stats();
    let load_ms = (stats["crowdsec"]["full_load_secs"].as_f64().expect("a full load") * 1e3) as u64;
    // Said for the record (the bench keeps the release build's number).
    eprintln!(
        "100,000 decisions: loaded in {load_ms} ms (fetch, save, kernel); attach to enforced {enforced:?}"
    );
    assert_eq!(stats["crowdsec"]["decisions"], 100_000, "{}", stats["crowdsec"]);
    assert!(load_ms < 5000, "100,000 decisions took {load_ms} ms to load");
    let listed = blocks(&pg).iter().filter(|r| r["origin"] == "crowdsec").count();
    assert_eq!(listed, 100_000);
    let other: IpAddr = ADMIN_V4.into();
    assert!(tcp_connects(&lab.client, Some(other), web(other)), "other sources still pass");
}

/// A link between two labs' server namespaces (their management network), deleted with them.
fn management_link(one: &Lab, two: &Lab) -> (std::net::Ipv6Addr, std::net::Ipv6Addr) {
    let (a, b) = (portguard_tests::unique("m"), portguard_tests::unique("m"));
    portguard_tests::run(
        "ip",
        &[
            "link",
            "add",
            &a,
            "netns",
            &one.server.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &two.server.name,
        ],
    )
    .unwrap();
    one.server.ip(&["addr", "add", "2001:db8:c5::1/64", "dev", &a, "nodad"]).unwrap();
    two.server.ip(&["addr", "add", "2001:db8:c5::2/64", "dev", &b, "nodad"]).unwrap();
    one.server.ip(&["link", "set", &a, "up"]).unwrap();
    two.server.ip(&["link", "set", &b, "up"]).unwrap();
    ("2001:db8:c5::1".parse().unwrap(), "2001:db8:c5::2".parse().unwrap())
}

#[test]
fn a_scanner_blocked_on_one_host_is_refused_by_the_other() {
    require_root!();
    require_tools!("crowdsec", "cscli", "nmap");
    // Two protected hosts, each its lab's server; the scanner is 192.0.2.1 in both labs (the
    // same address seen from either host). The LAPI runs on host 1, on its management link.
    let one = Lab::new().unwrap();
    let two = Lab::new().unwrap();
    let _servers_one = Servers::start(&one.server, &[80], &[]);
    let _servers_two = Servers::start(&two.server, &[80], &[]);
    let (lapi_address, _) = management_link(&one, &two);
    let lapi = Lapi::start_on(&one.server, SocketAddr::new(lapi_address.into(), 8080)).unwrap();
    let machine = lapi.machine_credentials("edge-1").unwrap();
    let host_one = format!(
        "{WEB}[scan_detection]\nthreshold = 20\nwindow = \"5s\"\naction = \"block\"\nblock_for = \"15m\"\n{}machine_credentials_file = \"{}\"\n",
        lapi.policy_section("1s"),
        machine.display()
    );
    let mut pg_one = Attached::start(&one.server, &one.server_if, &host_one, &["--json"]).unwrap();
    let host_two = format!("{WEB}{}", lapi.policy_section_for("edge-2", "1s").unwrap());
    let pg_two = Attached::start(&two.server, &two.server_if, &host_two, &[]).unwrap();
    let scanner: IpAddr = CLIENT_V4.into();
    assert!(tcp_connects(&two.client, Some(scanner), web(scanner)), "host 2 answers the scanner before");

    // A real SYN scan of host 1 only.
    one.nmap(&["-sS"]);
    let blocked = pg_one.wait_for_event(Duration::from_secs(10), |e| e["event"] == "auto_blocked");
    assert!(blocked.is_some(), "host 1 did not block the scan");
    let blocked_at = Instant::now();
    assert!(!tcp_connects(&one.client, Some(scanner), web(scanner)), "host 1 refuses the scanner");
    // Host 2, which the scanner never sent a packet, refuses it too.
    let refused = becomes(&two, scanner, true, Duration::from_secs(15).saturating_sub(blocked_at.elapsed()));
    assert!(refused.is_some(), "host 2 did not refuse the scanner within 15 s\n{}", lapi.log());
    eprintln!("host 2 refused the scanner {:?} after host 1 blocked it", blocked_at.elapsed());

    // What the LAPI holds: an alert of portguard's scenario, with the ports and the host.
    // `-a`: cscli 1.4 lists only the crowdsec and cscli origins without it.
    let text = lapi.cscli(&["alerts", "list", "-a", "-o", "json"]).unwrap();
    let alerts: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let alert = alerts
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {text}"))
        .iter()
        .find(|a| a["scenario"] == "portguard/port-scan")
        .unwrap_or_else(|| panic!("no portguard alert in {alerts}"));
    assert_eq!(alert["source"]["value"], "192.0.2.1", "{alert}");
    assert_eq!(alert["decisions"][0]["type"], "ban", "{alert}");
    let seconds = alert["decisions"][0]["duration"].as_str().unwrap().to_owned();
    assert!(seconds.contains('m'), "a 15-minute ban, not {seconds}");
    let meta = alert["meta"].to_string();
    assert!(meta.contains("ports") && meta.contains("host"), "{meta}");
    let listed = blocks(&pg_two);
    let row = listed.iter().find(|r| r["origin"] == "crowdsec").expect("host 2 lists it");
    assert_eq!(row["scenario"], "portguard/port-scan");
    assert!(row["remaining_secs"].as_u64().unwrap() > 800, "{row}");
    let stats = pg_one.stats();
    portguard_tests::schemas::assert_valid("stats", &stats);
    assert!(stats["crowdsec"]["push"]["pushed"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["crowdsec"]["push"]["unsent"], 0, "{stats}");
    drop(pg_two);
}

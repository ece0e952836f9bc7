//! Blocklist feeds (`[blocklist] urls`) against a real HTTP server the test runs in the lab's
//! server namespace (127.0.0.1 there, where the loader runs): a listed source is refused from
//! the client namespace, a changed list is switched in within the refresh, a 304 keeps the
//! list (the conditional header arrived), and a server that answers 500, sends garbage, sends
//! a list over `[limits] blocklist` or is gone leaves the previous list in force, reported in
//! `stats`, `/metrics` and a `feed_failed` event; a loader restarted with the server down
//! enforces the saved copy.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use portguard_tests::{
    ADMIN_V4, Attached, BLOCKED_V4, BLOCKED_V6, CLIENT_V4, Lab, SERVER_V4, SERVER_V6,
    http::{self, Answered, Feed, FeedServer},
    portguard_cli::succeeded as ok,
    require_root,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

const WEB: &str = portguard_tests::portguard_cli::WEB_POLICY;
const METRICS: &str = "127.0.0.1:9464";
const FEED_PORT: u16 = 8081;
/// `refresh` in the tests' policies, and how long past it a change may take (a refused
/// connection itself takes 0.7 s to tell).
const REFRESH_SECS: u64 = 5;
const MARGIN: Duration = Duration::from_secs(5);

fn web(source: IpAddr) -> SocketAddr {
    SocketAddr::new(if source.is_ipv6() { SERVER_V6.into() } else { SERVER_V4.into() }, 80)
}

/// Waits up to `within` for connections from `source` to be refused (`blocked`) or to pass.
fn becomes(lab: &Lab, source: IpAddr, blocked: bool, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if tcp_connects(&lab.client, Some(source), web(source)) != blocked {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn list(body: &str, tag: &str) -> Feed {
    Feed::List {
        body: body.to_owned(),
        etag: format!("\"{tag}\""),
        last_modified: "Wed, 02 Dec 2026 08:00:00 GMT".to_owned(),
    }
}

/// Spamhaus DROP's format: `;` comments, `NETWORK ; SBL`.
const FIRST: &str = "; Spamhaus DROP List 2026/12/02 - (c) 2026 The Spamhaus Project\n\
                     ; Last-Modified: Wed, 02 Dec 2026 08:00:00 GMT\n\
                     203.0.113.0/24 ; SBL000001\n";
/// FireHOL's netset format: `#` comments, one network or address a line, IPv6 too.
const SECOND: &str = "#\n# firehol_level1\n#\n198.51.100.0/24\n2001:db8:bad::/48\n";

fn policy(url: &str) -> String {
    format!(
        "{WEB}\n[limits]\nblocklist = 1024\n\n[blocklist]\nurls = [\"{url}\"]\nrefresh = \"{REFRESH_SECS}s\"\n"
    )
}

fn feed_stats(pg: &Attached) -> Value {
    let stats = pg.stats();
    portguard_tests::schemas::assert_valid("stats", &stats);
    stats["feeds"][0].clone()
}

/// Waits up to `within` for the feed's `last_error` to contain `says`; the stats then.
fn fails_with(pg: &Attached, says: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let feed = feed_stats(pg);
        if feed["last_error"].as_str().is_some_and(|e| e.contains(says)) || started.elapsed() > within {
            return feed;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metrics(lab: &Lab) -> Vec<http::Sample> {
    let (status, body) = http::get(&lab.server, METRICS.parse().unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    http::samples(&body)
}

#[test]
fn feeds_are_fetched_switched_in_and_kept_when_the_server_fails() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let server = FeedServer::start(&lab.server, FEED_PORT, list(FIRST, "v1"));
    let url = server.url();
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &policy(&url), &["--metrics", METRICS, "--json"])
            .unwrap();
    let (listed, admin, listed_v6, client): (IpAddr, IpAddr, IpAddr, IpAddr) =
        (BLOCKED_V4.into(), ADMIN_V4.into(), BLOCKED_V6.into(), CLIENT_V4.into());
    let within = Duration::from_secs(REFRESH_SECS) + MARGIN;

    // Fetched at start, then switched in: the listed network is refused, the others pass.
    assert!(
        becomes(&lab, listed, true, within),
        "the feed's network was not refused\n{:?}",
        server.answered()
    );
    assert!(tcp_connects(&lab.client, Some(client), web(client)), "an unlisted source is refused");
    assert!(tcp_connects(&lab.client, Some(admin), web(admin)), "not listed yet");
    let first = &server.answered()[0];
    assert_eq!(first.status, 200);
    assert_eq!(first.request.header("if-none-match"), None, "nothing saved yet: not conditional");
    let reloaded = pg
        .wait_for_event(Duration::from_secs(2), |e| e["event"] == "reloaded" && e["feed"] == url.as_str())
        .expect("a reloaded event for the feed");
    assert!(reloaded["added"].to_string().contains("203.0.113.0/24"), "{reloaded}");

    // Asked again with the saved copy's validators: 304, and the list stays.
    let answered = server.wait_for(within, |all| all.iter().any(|a| a.status == 304));
    let not_modified: &Answered = answered.iter().find(|a| a.status == 304).expect("a 304");
    assert_eq!(not_modified.request.header("if-none-match"), Some("\"v1\""), "{:?}", not_modified.request);
    assert_eq!(not_modified.request.header("if-modified-since"), Some("Wed, 02 Dec 2026 08:00:00 GMT"));
    assert!(!tcp_connects(&lab.client, Some(listed), web(listed)), "a 304 lifted the list");
    let feed = feed_stats(&pg);
    assert!(feed["not_modified"].as_u64().unwrap() >= 1, "{feed}");
    assert_eq!(feed["entries"], 1, "{feed}");
    assert_eq!(feed["failures"], 0, "{feed}");

    // `blocks` tells the feed's entries from the policy's own and from files.
    let blocks: Value =
        serde_json::from_str(&ok(pg.run(&["blocks", "--json", "--iface", &pg.iface]))).unwrap();
    portguard_tests::schemas::assert_valid("blocks", &blocks);
    let row = blocks.as_array().unwrap().iter().find(|r| r["feed"] == url.as_str()).expect("a feed row");
    assert_eq!(
        (row["origin"].as_str(), row["entries"].as_u64(), &row["file"]),
        (Some("policy_blocklist"), Some(1), &Value::Null)
    );

    // The list changes: the new networks are refused and the one taken out passes.
    server.serve(list(SECOND, "v2"));
    assert!(becomes(&lab, admin, true, within), "the new list was not switched in");
    assert!(becomes(&lab, listed_v6, true, Duration::from_secs(2)), "its IPv6 network is not refused");
    assert!(tcp_connects(&lab.client, Some(listed), web(listed)), "the network taken out is still refused");

    // The server fails in three ways; every time the list in force stays, and says why.
    let samples = metrics(&lab);
    let labels = [("interface", lab.server_if.as_str()), ("feed", url.as_str())];
    assert_eq!(http::value(&samples, "portguard_feed_entries", &labels) as u64, 2);
    assert_eq!(http::value(&samples, "portguard_feed_up", &labels) as u64, 1);
    assert_eq!(http::value(&samples, "portguard_feed_fetch_failures_total", &labels) as u64, 0);
    assert!(http::value(&samples, "portguard_feed_last_success_timestamp_seconds", &labels) > 1.7e9);

    let garbage = "<html>\n<head><title>503</title></head>\n<body>try later</body>\n</html>\n";
    let oversized: String =
        (0..1100u32).map(|i| format!("10.0.{}.{}\n", i / 100, (i % 100) * 2)).collect::<String>() + SECOND;
    for (feed, says) in [
        (Feed::Status(500), "HTTP 500"),
        (list(garbage, "v3"), "line 1: `<html>` is not"),
        (list(&oversized, "v4"), "more than [limits] blocklist = 1024"),
    ] {
        server.serve(feed);
        let stats = fails_with(&pg, says, within);
        assert!(stats["last_error"].as_str().unwrap_or("").contains(says), "{says:?} not reported: {stats}");
        assert_eq!(stats["entries"], 2, "{stats}");
        assert!(!tcp_connects(&lab.client, Some(admin), web(admin)), "the list in force was lost ({says})");
        let event = pg
            .wait_for_event(Duration::from_secs(2), |e| {
                e["event"] == "feed_failed" && e["reason"].as_str().is_some_and(|r| r.contains(says))
            })
            .unwrap_or_else(|| panic!("no feed_failed event for {says:?}: {:?}", pg.output));
        portguard_tests::schemas::assert_valid("event", &event);
        assert_eq!(
            (event["feed"].as_str(), event["count"].as_u64()),
            (Some(url.as_str()), Some(2)),
            "{event}"
        );
    }
    assert!(tcp_connects(&lab.client, Some(listed), web(listed)), "a refused list was enforced");
    let samples = metrics(&lab);
    assert_eq!(http::value(&samples, "portguard_feed_up", &labels) as u64, 0);
    assert!(http::value(&samples, "portguard_feed_fetch_failures_total", &labels) >= 3.0);
    assert_eq!(http::value(&samples, "portguard_feed_entries", &labels) as u64, 2);

    // The server goes away.
    drop(server);
    let stats = fails_with(&pg, "127.0.0.1", within);
    assert!(stats["last_error"].is_string() && stats["entries"] == 2, "{stats}");
    let text = ok(pg.run(&["stats", &pg.iface]));
    assert!(text.contains(&format!("feed {url}: 2 entries")) && text.contains("LAST FETCH FAILED"), "{text}");

    // A new loader, the server still down: the saved copy is enforced from the start.
    ok(pg.run(&["detach", &pg.iface]));
    assert!(tcp_connects(&lab.client, Some(admin), web(admin)), "open while detached");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), policy(&url)).unwrap();
    let restarted = pg.attach_again(file.path(), &[]);
    assert!(
        becomes(&lab, admin, true, Duration::from_secs(10)),
        "the saved copy was not enforced after a restart"
    );
    assert!(becomes(&lab, listed_v6, true, Duration::from_secs(2)), "the saved copy's IPv6 network");
    assert!(tcp_connects(&lab.client, Some(client), web(client)), "an unlisted source is refused");
    drop(restarted);
}

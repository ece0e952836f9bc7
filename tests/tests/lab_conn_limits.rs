//! Caps on the connections a source holds open (`limit = { connections_per_source = N }`) on
//! real TCP connections between two namespaces, with `portguard attach` on the server's veth:
//! the count follows the server's own TCP state (closes, resets, the server's closes), and
//! survives reloads. A lost `sock_ops` link is said by `status` and put right by the loader
//! or a reload.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use portguard_tests::{
    ADMIN_V6, Attached, CLIENT_V4, CLIENT_V6, INTRUDER_V4, Lab, Netns,
    portguard_cli::{applied, pin_dir, succeeded},
    require_root,
    traffic::{HoldingServer, tcp_open},
};
use serde_json::Value;
use socket2::Socket;

const PORT: u16 = 22;

fn ssh(v6: bool) -> SocketAddr {
    SocketAddr::new(Lab::server_addr(v6), PORT)
}

fn policy(limit: &str, extra: &str) -> String {
    format!(
        "default = \"deny\"\n{extra}\n[[allow]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [{PORT}]\nlimit = {limit}\n"
    )
}

/// `count` connections from `source`, each kept open if it completed.
fn open(netns: &Netns, source: IpAddr, target: SocketAddr, count: usize) -> Vec<Option<Socket>> {
    (0..count).map(|_| tcp_open(netns, Some(source), target)).collect()
}

fn completed(sockets: &[Option<Socket>]) -> Vec<bool> {
    sockets.iter().map(Option::is_some).collect()
}

/// The ssh rule's row of `stats --json`'s per-source limits.
fn ssh_row(stats: &Value) -> Value {
    stats["rate_limits"]["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|rule| rule["name"] == "ssh"))
        .cloned()
        .unwrap_or_else(|| panic!("no ssh rule in {stats}"))
}

/// Waits (bounded) until the kernel counts `wanted` open connections on the ssh rule; returns
/// the last count seen.
fn wait_open(pg: &Attached, wanted: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = ssh_row(&pg.stats())["connections_open"].as_u64().unwrap_or(u64::MAX);
        if open == wanted || Instant::now() >= deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Closes a client socket with a reset (SO_LINGER 0), as a crashed or impatient client does.
fn reset(socket: Socket) {
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);
}

#[test]
fn four_connections_are_held_the_fifth_is_refused_and_a_closed_one_is_given_back() {
    require_root!();
    let lab = Lab::new().unwrap();
    let server = HoldingServer::start(&lab.server, PORT);
    let pg = Attached::start(&lab.server, &lab.server_if, &policy("{ connections_per_source = 4 }", ""), &[])
        .unwrap();
    let client = IpAddr::from(CLIENT_V4);
    let mut held = open(&lab.client, client, ssh(false), 4);
    assert_eq!(completed(&held), [true; 4], "four connections fit the cap");
    assert_eq!(wait_open(&pg, 4), 4);
    assert!(tcp_open(&lab.client, Some(client), ssh(false)).is_none(), "the fifth is refused");
    assert_eq!(server.open(), 4);
    // Another source has a cap of its own.
    let other = open(&lab.client, IpAddr::from(INTRUDER_V4), ssh(false), 4);
    assert_eq!(completed(&other), [true; 4]);
    drop(other);

    // The client closes one (FIN): the server closes its side too, and the slot is free.
    held.pop();
    assert_eq!(wait_open(&pg, 3), 3, "the closed connection is released");
    held.push(tcp_open(&lab.client, Some(client), ssh(false)));
    assert!(held[3].is_some(), "a new connection fits again");
    assert!(tcp_open(&lab.client, Some(client), ssh(false)).is_none(), "and the cap holds again");

    let stats = pg.stats();
    assert!(applied(&stats, "connection_limit") >= 2, "{stats}");
    let row = ssh_row(&stats);
    assert!(row["connection_limited"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(row["connections_per_source"], 4, "{stats}");
    assert_eq!(row["connections_open"], 4, "{stats}");
    assert_eq!(row["sources_connected"], 1, "{stats}");
    assert_eq!(stats["rate_limits"]["sources_connected"], 1, "{stats}");
    let text = succeeded(pg.run(&["stats", &pg.iface]));
    assert!(
        text.contains(&format!(
            "rule 1 \"ssh\" (4 open per source): {} refused since loaded, 4 open from 1 source",
            row["connection_limited"]
        )),
        "{text}"
    );

    drop(held);
    assert_eq!(wait_open(&pg, 0), 0, "every connection closed: nothing held");
    let (ok, stderr) = pg.stop();
    assert!(ok, "{stderr}");
}

#[test]
fn connections_reset_by_the_client_or_closed_by_the_server_are_released() {
    require_root!();
    let lab = Lab::new().unwrap();
    let server = HoldingServer::start(&lab.server, PORT);
    let pg = Attached::start(&lab.server, &lab.server_if, &policy("{ connections_per_source = 4 }", ""), &[])
        .unwrap();
    let client = IpAddr::from(CLIENT_V4);
    let mut held: Vec<Socket> =
        open(&lab.client, client, ssh(false), 4).into_iter().map(Option::unwrap).collect();
    assert!(tcp_open(&lab.client, Some(client), ssh(false)).is_none());

    // A reset from the client.
    reset(held.remove(0));
    assert_eq!(wait_open(&pg, 3), 3, "a reset connection is released");
    held.push(tcp_open(&lab.client, Some(client), ssh(false)).expect("room after the reset"));
    assert!(tcp_open(&lab.client, Some(client), ssh(false)).is_none());

    // The server closes one; the client sees the end of the stream and closes its side.
    server.close_oldest();
    let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 16];
    let ended = held
        .iter()
        .position(|socket| {
            socket.set_nonblocking(true).unwrap();
            matches!(socket.recv(&mut buffer), Ok(0))
        })
        .expect("one client connection was closed by the server");
    drop(held.remove(ended));
    assert_eq!(wait_open(&pg, 3), 3, "a connection the server closed is released");
    held.push(tcp_open(&lab.client, Some(client), ssh(false)).expect("room after the server's close"));
    assert!(tcp_open(&lab.client, Some(client), ssh(false)).is_none());
    assert_eq!(wait_open(&pg, 4), 4);

    // The client resets every one left.
    for socket in held {
        reset(socket);
    }
    assert_eq!(wait_open(&pg, 0), 0);
    let (ok, stderr) = pg.stop();
    assert!(ok, "{stderr}");
}

#[test]
fn a_reload_keeps_the_count_of_open_connections_exact() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _server = HoldingServer::start(&lab.server, PORT);
    let pg = Attached::start(&lab.server, &lab.server_if, &policy("{ connections_per_source = 4 }", ""), &[])
        .unwrap();
    let client = IpAddr::from(CLIENT_V4);
    let mut held = open(&lab.client, client, ssh(false), 4);
    assert_eq!(completed(&held), [true; 4]);

    // Rules before it renumber the capped rule; a rate joins its cap.
    let dir = tempfile::tempdir().unwrap();
    let renumbered = dir.path().join("renumbered.toml");
    std::fs::write(
        &renumbered,
        policy(
            "{ connections_per_source = 4, new_per_source = \"100/s\" }",
            "[[allow]]\nproto = \"tcp\"\nports = [80]\n[[allow]]\nproto = \"udp\"\nports = [53]\nlimit = { new_per_source = \"5/s\" }\n",
        ),
    )
    .unwrap();
    for _ in 0..3 {
        succeeded(pg.run(&["reload", &pg.iface, "--policy", renumbered.to_str().unwrap()]));
    }
    assert_eq!(wait_open(&pg, 4), 4, "the connections opened before the reloads are still counted, once");
    assert!(tcp_open(&lab.client, Some(client), ssh(false)).is_none(), "the cap still holds");

    // Closing two under the new generation releases exactly two.
    held.truncate(2);
    assert_eq!(wait_open(&pg, 2), 2);
    held.extend(open(&lab.client, client, ssh(false), 3));
    assert_eq!(completed(&held), [true, true, true, true, false]);

    // A cap raised by a reload applies to the connections already held.
    let raised = dir.path().join("raised.toml");
    std::fs::write(&raised, policy("{ connections_per_source = 5 }", "")).unwrap();
    succeeded(pg.run(&["reload", &pg.iface, "--policy", raised.to_str().unwrap()]));
    assert_eq!(wait_open(&pg, 4), 4);
    held.extend(open(&lab.client, client, ssh(false), 2));
    assert_eq!(completed(&held).iter().filter(|ok| **ok).count(), 5);
    assert!(held.last().unwrap().is_none(), "the sixth is over the raised cap");

    // A policy without a cap stops counting; one with a cap again starts from what opens next.
    let uncapped = dir.path().join("uncapped.toml");
    std::fs::write(&uncapped, policy("{ new_per_source = \"100/s\" }", "")).unwrap();
    succeeded(pg.run(&["reload", &pg.iface, "--policy", uncapped.to_str().unwrap()]));
    assert!(tcp_open(&lab.client, Some(client), ssh(false)).is_some(), "no cap: no refusal");
    assert!(ssh_row(&pg.stats())["connections_open"].is_null(), "no cap, no count");
    succeeded(pg.run(&["reload", &pg.iface, "--policy", renumbered.to_str().unwrap()]));
    assert_eq!(wait_open(&pg, 0), 0, "connections opened before the cap are not counted");
    drop(held);
    let again = open(&lab.client, client, ssh(false), 5);
    assert_eq!(completed(&again), [true, true, true, true, false]);
    let (ok, stderr) = pg.stop();
    assert!(ok, "{stderr}");
}

#[test]
fn ipv6_sources_in_one_slash_64_share_the_cap() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _server = HoldingServer::start(&lab.server, PORT);
    lab.client.ip(&["addr", "add", "2001:db8::77/64", "dev", &lab.client_if, "nodad"]).unwrap();
    let neighbour: IpAddr = "2001:db8::77".parse().unwrap();
    let pg = Attached::start(
        &lab.server,
        &lab.server_if,
        &policy("{ connections_per_source = 4 }", ""),
        &["--metrics"],
    )
    .unwrap();
    let mut held = open(&lab.client, IpAddr::from(CLIENT_V6), ssh(true), 2);
    held.extend(open(&lab.client, neighbour, ssh(true), 3));
    assert_eq!(completed(&held), [true, true, true, true, false], "one /64, one cap of four");
    assert!(tcp_open(&lab.client, Some(IpAddr::from(CLIENT_V6)), ssh(true)).is_none());
    // Another /64 is another source.
    let other = open(&lab.client, IpAddr::from(ADMIN_V6), ssh(true), 4);
    assert_eq!(completed(&other), [true; 4]);
    assert_eq!(wait_open(&pg, 8), 8);
    let (status, body) =
        portguard_tests::http::get(&lab.server, "127.0.0.1:9464".parse().unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    let samples = portguard_tests::http::samples(&body);
    let iface = lab.server_if.as_str();
    let refused = portguard_tests::http::value(
        &samples,
        "portguard_connection_limited_total",
        &[("interface", iface), ("rule", "1")],
    );
    assert!(refused >= 2.0, "{body}");
    let open_now = portguard_tests::http::value(
        &samples,
        "portguard_connections_open",
        &[("interface", iface), ("rule", "1")],
    );
    assert!((open_now - 8.0).abs() < f64::EPSILON, "{body}");
    let sources =
        portguard_tests::http::value(&samples, "portguard_connected_sources", &[("interface", iface)]);
    assert!((sources - 2.0).abs() < f64::EPSILON, "two /64s hold connections: {body}");
}

#[test]
fn never_block_sources_are_exempt_and_monitor_mode_only_counts() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _server = HoldingServer::start(&lab.server, PORT);
    let pg = Attached::start(
        &lab.server,
        &lab.server_if,
        &policy("{ connections_per_source = 2 }", &format!("never_block = [\"{INTRUDER_V4}\"]")),
        &[],
    )
    .unwrap();
    let exempt = open(&lab.client, IpAddr::from(INTRUDER_V4), ssh(false), 5);
    assert_eq!(completed(&exempt), [true; 5], "never_block sources are never refused");
    let capped = open(&lab.client, IpAddr::from(CLIENT_V4), ssh(false), 3);
    assert_eq!(completed(&capped), [true, true, false]);
    let stats = pg.stats();
    assert_eq!(ssh_row(&stats)["connection_limited"], 1, "only the capped source's refusal: {stats}");
    drop((exempt, capped));
    let (ok, stderr) = pg.stop();
    assert!(ok, "{stderr}");

    let pg = Attached::start(
        &lab.server,
        &lab.server_if,
        &format!("mode = \"monitor\"\n{}", policy("{ connections_per_source = 2 }", "")),
        &[],
    )
    .unwrap();
    let held = open(&lab.client, IpAddr::from(CLIENT_V4), ssh(false), 4);
    assert_eq!(completed(&held), [true; 4], "monitor mode drops nothing");
    let stats = pg.stats();
    assert_eq!(applied(&stats, "connection_limit"), 0, "{stats}");
    let would: u64 = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "connection_limit" && r["counted_as"] != "applied")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(would, 2, "the third and fourth would have been refused: {stats}");
    assert_eq!(ssh_row(&stats)["connection_limited"], 2, "{stats}");
    assert_eq!(wait_open(&pg, 4), 4);
    drop(held);
    let (ok, stderr) = pg.stop();
    assert!(ok, "{stderr}");
}

/// The `status --json` row of the lab attachment, and the exit status.
fn status_row(pg: &Attached) -> (Option<i32>, Value) {
    let output = pg.run(&["status", "--json"]);
    let rows: Value = serde_json::from_slice(&output.stdout).expect("status --json");
    let row =
        rows.as_array().and_then(|rows| rows.iter().find(|r| r["interface"] == pg.iface.as_str())).cloned();
    (output.status.code(), row.unwrap_or_else(|| panic!("{} not in {rows}", pg.iface)))
}

#[test]
fn a_lost_sock_ops_link_is_said_by_status_and_put_right() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _server = HoldingServer::start(&lab.server, PORT);
    let mut pg = Attached::start(
        &lab.server,
        &lab.server_if,
        &policy("{ connections_per_source = 2 }", "[inbound]\nother_protocols = \"allow\"\n"),
        &["--json"],
    )
    .unwrap();
    let client = IpAddr::from(CLIENT_V4);
    let link = pin_dir(&lab.server, &lab.server_if).join("sock_ops_link");
    let (code, row) = status_row(&pg);
    assert_eq!(
        (code, &row["connection_caps"], &row["connection_caps_problem"]),
        (Some(0), &Value::Bool(true), &Value::Null),
        "{row}"
    );

    // Its pin removed by hand: nothing holds the link, the kernel detaches it; the loader
    // notices within a second or two and attaches it again, counting from then.
    std::fs::remove_file(&link).unwrap();
    let event = pg
        .wait_for_event(Duration::from_secs(10), |e| e["event"] == "reattached")
        .expect("the loader puts the sock_ops link right");
    assert!(event["reason"].as_str().is_some_and(|d| d.contains("no sock_ops link is pinned")), "{event}");
    assert!(link.exists());
    let held = open(&lab.client, client, ssh(false), 2);
    assert_eq!(completed(&held), [true; 2]);
    assert_eq!(wait_open(&pg, 2), 2, "counted again");
    assert!(tcp_open(&lab.client, Some(client), ssh(false)).is_none(), "and the cap holds");
    drop(held);
    assert_eq!(wait_open(&pg, 0), 0);

    // With no loader to put it right, `status` says the caps are not enforced (exit 3), and a
    // reload attaches it again.
    pg.kill();
    std::fs::remove_file(&link).unwrap();
    let (code, row) = status_row(&pg);
    assert_eq!(code, Some(3), "{row}");
    assert!(row["connection_caps_problem"].as_str().is_some_and(|p| p.contains("no sock_ops link")), "{row}");
    let text = String::from_utf8_lossy(&pg.run(&["status"]).stdout).into_owned();
    assert!(text.contains("CONNECTION CAPS NOT ENFORCED"), "{text}");
    succeeded(pg.run(&["reload", &pg.iface]));
    assert_eq!(status_row(&pg).1["connection_caps_problem"], Value::Null);
    assert!(link.exists());
}

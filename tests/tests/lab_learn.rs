//! `portguard learn` end to end: attached in monitor mode with every port open, real clients
//! (TCP to two ports from one network, over IPv4 and IPv6, UDP/53, SSH from the lab's own
//! network) and an nmap scan from another network; the proposal passes `check`, opens the
//! clients' ports to their networks only, keeps SSH, and enforced (by `reload`) admits every
//! client and drops the scanner. `--json` carries the same proposal and its evidence as data
//! (checked against docs/schemas/learn.schema.json). `--reset` starts the statistics again.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use portguard::policy::{LoadOptions, Proto, RuleKind, parse};
use portguard_tests::{
    ADMIN_V4, ADMIN_V6, Attached, BLOCKED_V4, CLIENT_V4, Lab, SERVER_V4,
    portguard_cli::{port_drops, portguard, succeeded},
    require_root, require_tools, schemas,
    traffic::{Servers, tcp_connect_many, tcp_connects, udp_echoes},
};

/// Every port open, nothing dropped: where an operator starts.
const MONITOR: &str = "mode = \"monitor\"\ndefault = \"allow\"\n";
/// The scanner: on a network no client uses (it is only an address here, no blocklist).
const SCANNER: std::net::Ipv4Addr = BLOCKED_V4;
/// Connections each client makes to each of its ports: a scan's probe or two stays far below
/// a tenth of a port's connections, so the rule is narrowed.
const USES: usize = 20;

fn at(v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(Lab::server_addr(v6), port)
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// The `from` list of the allow rule opening `proto`/`port` (`None`: open to everyone); fails
/// the test when no rule opens it.
#[track_caller]
fn allowed_from(policy: &portguard::policy::Policy, proto: Proto, port: u16) -> Option<Vec<IpNet>> {
    policy
        .rules
        .iter()
        .find(|r| r.kind == RuleKind::Allow && r.proto == proto && r.ports.iter().any(|p| p.contains(&port)))
        .unwrap_or_else(|| panic!("no allow rule opens {proto}/{port}: {policy:?}"))
        .from
        .clone()
}

#[test]
fn a_learned_policy_admits_the_clients_keeps_ssh_and_drops_the_scanner() {
    require_root!();
    require_tools!("nmap");
    let lab = Lab::new().unwrap();
    let servers = Servers::start(&lab.server, &[22, 80, 8080, 3306], &[53]);
    let pg = Attached::start(&lab.server, &lab.server_if, MONITOR, &[]).unwrap();
    let iface = lab.server_if.as_str();

    // The clients: web (two ports, IPv4 and IPv6) and DNS from 198.51.100.0/24, SSH from the
    // lab's own network; 3306 listens and nobody uses it.
    for port in [80, 8080] {
        assert_eq!(tcp_connect_many(&lab.client, Some(ADMIN_V4.into()), at(false, port), USES), USES);
    }
    assert_eq!(tcp_connect_many(&lab.client, Some(ADMIN_V6.into()), at(true, 80), USES), USES);
    assert_eq!(tcp_connect_many(&lab.client, Some(CLIENT_V4.into()), at(false, 22), USES), USES);
    for _ in 0..USES {
        assert!(udp_echoes(&lab.client, Some(ADMIN_V4.into()), at(false, 53)));
    }
    // The scanner: a SYN scan of ports 1-1024 (22 and 80 among them) from its own address.
    let scanner = SCANNER.to_string();
    lab.nmap_at(IpAddr::V4(SERVER_V4), &["-T5", "-sS", "-S", &scanner, "-e", &lab.client_if, "-p", "1-1024"]);
    assert_eq!(servers.accepted(3306), 0);

    let proposal = succeeded(portguard(Some(&lab.server), &["learn", iface]));
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), &proposal).unwrap();
    let path = file.path().to_str().unwrap();
    // `check` takes it as it is, and so does the parser, without warnings.
    succeeded(portguard(None, &["check", path, "--deny-warnings"]));
    let loaded = parse(&proposal, file.path(), LoadOptions::default())
        .unwrap_or_else(|e| panic!("the proposal must parse: {e:?}\n{proposal}"));
    let policy = &loaded.policy;

    let web = vec![net("198.51.100.0/24"), net("2001:db8:1::/64")];
    assert_eq!(allowed_from(policy, Proto::Tcp, 80), Some(web), "{proposal}");
    assert_eq!(allowed_from(policy, Proto::Tcp, 8080), Some(vec![net("198.51.100.0/24")]), "{proposal}");
    assert_eq!(allowed_from(policy, Proto::Udp, 53), Some(vec![net("198.51.100.0/24")]), "{proposal}");
    assert_eq!(allowed_from(policy, Proto::Tcp, 22), Some(vec![net("192.0.2.0/24")]), "{proposal}");
    // Nothing else is opened: not the idle listener, not the ports only the scanner tried.
    let allow_rules = policy.rules.iter().filter(|r| r.kind == RuleKind::Allow).count();
    assert_eq!(allow_rules, 4, "{proposal}");
    assert!(proposal.contains("#   tcp/3306"), "the idle listener is a candidate to close:\n{proposal}");
    assert!(proposal.contains("Tried, but nothing listens there"), "{proposal}");
    assert!(
        proposal.contains("#   tcp/1: 1 new connection from 1 network"),
        "ports only the scanner tried:\n{proposal}"
    );
    assert!(
        proposal.contains(" more ports (") && proposal.lines().count() < 100,
        "and the rest counted:\n{proposal}"
    );
    assert!(
        proposal.contains("left out, with fewer: 203.0.113.0/24"),
        "the scanner's probe of 80:\n{proposal}"
    );
    assert!(proposal.contains(&format!("{USES} new connections from 1 source network")), "{proposal}");

    // The same proposal as JSON: the policy file in it (also accepted by `check`), and the
    // evidence the comments give, as data.
    let output = portguard(Some(&lab.server), &["learn", iface, "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("learn --json: stdout is one JSON document ({e})"));
    schemas::assert_valid("learn", &json);
    let from_json = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(from_json.path(), json["policy"].as_str().expect("the policy file")).unwrap();
    succeeded(portguard(None, &["check", from_json.path().to_str().unwrap(), "--deny-warnings"]));
    let json_policy = parse(json["policy"].as_str().unwrap(), from_json.path(), LoadOptions::default())
        .expect("the policy in the JSON parses")
        .policy;
    assert_eq!(
        json_policy.rules.iter().map(|r| (r.proto, r.ports.clone(), r.from.clone())).collect::<Vec<_>>(),
        policy.rules.iter().map(|r| (r.proto, r.ports.clone(), r.from.clone())).collect::<Vec<_>>(),
        "the same rules as the text:\n{json:#}"
    );
    let rule = |protocol: &str, port: u16| {
        json["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["protocol"] == protocol && r["port"] == port)
            .unwrap_or_else(|| panic!("no rule for {protocol}/{port}: {json:#}"))
            .clone()
    };
    let web = rule("tcp", 80);
    assert_eq!(web["from"], serde_json::json!(["198.51.100.0/24", "2001:db8:1::/64"]), "{web:#}");
    assert_eq!(web["open_because"], serde_json::Value::Null);
    assert!(
        web["left_out"].as_array().unwrap().iter().any(|n| n["network"] == "203.0.113.0/24"),
        "the scanner's probe of 80: {web:#}"
    );
    assert!(web["connections"].as_u64().unwrap() >= 2 * USES as u64, "{web:#}");
    assert!(web["first_seen_at"].is_string() && web["last_seen_at"].is_string(), "{web:#}");
    let alt = rule("tcp", 8080);
    assert_eq!(
        (alt["connections"].as_u64(), alt["networks"].as_u64()),
        (Some(USES as u64), Some(1)),
        "{alt:#}"
    );
    assert_eq!(rule("udp", 53)["from"], serde_json::json!(["198.51.100.0/24"]));
    let ssh = rule("tcp", 22);
    assert_eq!((&ssh["ssh"], &ssh["from"]), (&serde_json::json!(true), &serde_json::json!(["192.0.2.0/24"])));
    assert_eq!(json["rules"].as_array().unwrap().len(), 4, "{json:#}");
    assert!(
        json["idle_listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["protocol"] == "tcp" && l["port"] == 3306),
        "{json:#}"
    );
    let tried = json["tried_without_listener"].as_array().unwrap();
    assert!(
        tried.len() > 1000,
        "every port only the scanner tried, not the 20 the text lists: {}",
        tried.len()
    );
    assert!(tried.iter().any(|p| p["port"] == 1 && p["connections"] == 1 && p["networks"] == 1));
    let coverage = &json["coverage"];
    assert!(coverage["counting_since_at"].is_string(), "{coverage}");
    assert_eq!(
        (&coverage["sources_forgotten"], &coverage["since_at"]),
        (&serde_json::json!(0), &serde_json::Value::Null)
    );
    // --since applied, and said: reaching back before the attachment, it covers less.
    let since = succeeded(portguard(Some(&lab.server), &["learn", iface, "--json", "--since", "1h"]));
    let since: serde_json::Value = serde_json::from_str(&since).unwrap();
    schemas::assert_valid("learn", &since);
    assert!(since["coverage"]["since_at"].is_string(), "{since:#}");
    assert_eq!(since["coverage"]["since_before_counting"], true, "{since:#}");
    // Bad input: a usage error (exit 2) or a clear error (exit 1), and nothing on stdout.
    let reset_json = portguard(Some(&lab.server), &["learn", iface, "--json", "--reset"]);
    assert_eq!(reset_json.status.code(), Some(2), "--reset proposes nothing: no JSON to give");
    assert!(reset_json.stdout.is_empty());
    let future = portguard(Some(&lab.server), &["learn", iface, "--json", "--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(future.status.code(), Some(1));
    assert!(future.stdout.is_empty(), "{}", String::from_utf8_lossy(&future.stdout));
    assert!(String::from_utf8_lossy(&future.stderr).contains("in the future"));

    // Enforced: every client still gets in, the scanner does not.
    succeeded(pg.run(&["reload", iface, "--policy", path]));
    for port in [80, 8080] {
        assert!(tcp_connects(&lab.client, Some(ADMIN_V4.into()), at(false, port)), "tcp/{port}");
    }
    assert!(tcp_connects(&lab.client, Some(ADMIN_V6.into()), at(true, 80)));
    assert!(tcp_connects(&lab.client, Some(CLIENT_V4.into()), at(false, 22)), "SSH kept");
    assert!(udp_echoes(&lab.client, Some(ADMIN_V4.into()), at(false, 53)));
    assert!(
        !tcp_connects(&lab.client, Some(SCANNER.into()), at(false, 80)),
        "the scanner's network is left out"
    );
    assert!(
        !tcp_connects(&lab.client, Some(ADMIN_V4.into()), at(false, 3306)),
        "the idle listener is closed"
    );
    lab.nmap_at(
        IpAddr::V4(SERVER_V4),
        &["-T5", "-sS", "-S", &scanner, "-e", &lab.client_if, "-p", "20-30,80,8080"],
    );
    let stats: serde_json::Value =
        serde_json::from_str(&succeeded(pg.run(&["stats", iface, "--json", "--top", "2000"]))).unwrap();
    for port in [23, 25, 8080] {
        assert!(
            port_drops(&stats, "tcp", port) >= 1,
            "the scanner's probe of tcp/{port} is dropped: {stats}"
        );
    }

    // A reset forgets it all: only SSH is proposed, open to everyone, as nothing is known.
    succeeded(portguard(Some(&lab.server), &["learn", iface, "--reset"]));
    let fresh = succeeded(portguard(Some(&lab.server), &["learn", iface]));
    let fresh_policy = parse(&fresh, file.path(), LoadOptions::default()).expect("parses").policy;
    assert_eq!(allowed_from(&fresh_policy, Proto::Tcp, 22), None, "{fresh}");
    assert_eq!(fresh_policy.rules.len(), 1, "{fresh}");
    assert!(fresh.contains("#   tcp/80"), "every listener is now a candidate to close:\n{fresh}");

    let (ok, stderr) = pg.stop();
    assert!(ok, "{stderr}");
}

#[test]
fn learn_says_what_it_needs() {
    require_root!();
    let lab = Lab::new().unwrap();
    // Not attached: a clear error, nothing printed on stdout.
    for json in [false, true] {
        let args: &[&str] =
            if json { &["learn", &lab.server_if, "--json"] } else { &["learn", &lab.server_if] };
        let output = portguard(Some(&lab.server), args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is portguard attached to"), "{stderr}");
    }
    // Bad input is refused by the command line.
    let output = portguard(Some(&lab.server), &["learn", &lab.server_if, "--min-connections", "0"]);
    assert_eq!(output.status.code(), Some(2));
}

//! Operations: Prometheus metrics scraped during real traffic (and linted by promtool), alert
//! sinks fed by a real scan (a webhook receiver that answers, one that hangs, a program run per
//! alert), `portguard doctor` on a namespace with risky listeners, the systemd unit.

// Metric samples here are whole numbers (gauges of 0 and 1, counts), compared exactly.
#![allow(clippy::float_cmp)]

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portguard_tests::{
    ADMIN_V4, Attached, CLIENT_V4, INTRUDER_V4, Lab, SCANNER_V4, SERVER_V4,
    http::{self, Behaviour, Receiver, Sample},
    portguard_cli::applied,
    portguard_cli::portguard,
    require_root,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9464";

fn scrape(pg: &Attached, lab: &Lab) -> (String, Vec<Sample>) {
    let (status, body) =
        http::get(&lab.server, METRICS.parse().unwrap(), "/metrics").expect("scraping /metrics");
    assert_eq!(status, 200, "{body}");
    let _ = pg;
    let samples = http::samples(&body);
    (body, samples)
}

/// `promtool check metrics`: the exposition parses and follows the naming conventions.
fn promtool_lint(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool rejects the exposition:\n{}{}\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn counter(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    http::value(samples, name, labels) as u64
}

/// Sends `count` UDP datagrams of `payload` bytes from the client namespace.
fn udp_send(lab: &Lab, target: SocketAddr, count: usize, payload: usize) {
    lab.client.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..count {
            socket.send_to(&vec![0x42; payload], target).unwrap();
        }
    });
}

const METRICS_POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[allow]]
proto = "tcp"
ports = [80]

[[allow]]
proto = "udp"
ports = [53]

[[deny]]
proto = "tcp"
ports = [23]

# Open, so that only the loopback binding keeps the client out of /metrics.
[[allow]]
proto = "tcp"
ports = [9464]

[scan_detection]
action = "off"
"#;

#[test]
fn metrics_match_the_traffic_sent() {
    require_root!();
    let lab = Lab::new().unwrap();
    let services = Servers::start(&lab.server, &[80, 23], &[53]);
    let pg = Attached::start(&lab.server, &lab.server_if, METRICS_POLICY, &["--metrics"]).unwrap();
    assert!(pg.banner.contains(&format!("metrics: http://{METRICS}/metrics")), "{}", pg.banner);

    let (_, before) = scrape(&pg, &lab);
    let server = |port| SocketAddr::new(SERVER_V4.into(), port);
    let (allowed, denied, defaulted, udp_denied) = (10u64, 7u64, 5u64, 4u64);
    for _ in 0..allowed {
        assert!(tcp_connects(&lab.client, None, server(80)));
    }
    // One SYN per attempt: each gives up before the first retransmission.
    for _ in 0..denied {
        assert!(!tcp_connects(&lab.client, None, server(23)));
    }
    for _ in 0..defaulted {
        assert!(!tcp_connects(&lab.client, None, server(8081)));
    }
    const PAYLOAD: usize = 10;
    udp_send(&lab, server(5353), udp_denied as usize, PAYLOAD);
    assert_eq!(services.accepted(80), allowed);
    assert_eq!(services.accepted(23), 0);

    let iface = lab.server_if.as_str();
    let allowed_labels = [("interface", iface), ("action", "pass"), ("reason", "port_allowed")];
    // The last connection's final ACK answers the server's FIN and may still be on its way when
    // the client call returns: scrape until it is counted (at most 2 s).
    let waited = Instant::now();
    let (exposition, after) = loop {
        let (exposition, after) = scrape(&pg, &lab);
        let counted = counter(&after, "portguard_packets_total", &allowed_labels)
            - counter(&before, "portguard_packets_total", &allowed_labels);
        if counted >= allowed * 4 || waited.elapsed() > Duration::from_secs(2) {
            break (exposition, after);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    promtool_lint(&exposition);
    let delta =
        |name: &str, labels: &[(&str, &str)]| counter(&after, name, labels) - counter(&before, name, labels);
    let denied_labels = [("interface", iface), ("action", "drop"), ("reason", "port_denied")];
    assert_eq!(delta("portguard_packets_total", &denied_labels), denied);
    // A Linux SYN: 14 Ethernet + 20 IPv4 + 40 TCP (with options) bytes.
    assert_eq!(delta("portguard_bytes_total", &denied_labels), denied * 74);
    let default_labels = [("interface", iface), ("action", "drop"), ("reason", "default_deny")];
    assert_eq!(delta("portguard_packets_total", &default_labels), defaulted + udp_denied);
    assert_eq!(
        delta("portguard_bytes_total", &default_labels),
        defaulted * 74 + udp_denied * (14 + 20 + 8 + PAYLOAD as u64)
    );
    // A connection's client side: SYN, ACK, FIN, ACK; or SYN, ACK, FIN+ACK when the server's
    // FIN arrives as the client closes (the teardown's order is the two stacks' timing).
    let counted = delta("portguard_packets_total", &allowed_labels);
    assert!((allowed * 3..=allowed * 4).contains(&counted), "{counted} packets of {allowed} connections");
    assert_eq!(delta("portguard_port_drops_total", &[("protocol", "tcp"), ("port", "23")]), denied);
    assert_eq!(delta("portguard_port_drops_total", &[("protocol", "tcp"), ("port", "other")]), defaulted);
    assert_eq!(delta("portguard_port_drops_total", &[("protocol", "udp"), ("port", "other")]), udp_denied);
    assert_eq!(delta("portguard_port_drops_total", &[("protocol", "tcp"), ("port", "80")]), 0);

    // The same numbers as `portguard stats` reads.
    let stats = pg.stats();
    assert_eq!(applied(&stats, "port_denied"), counter(&after, "portguard_packets_total", &denied_labels));
    // Every observation counter `stats` shows is also a series (both read one table).
    for observation in portguard_common::counters::OBSERVATIONS {
        assert!(
            stats["observations"][observation.name].is_u64(),
            "stats lacks {}: {stats}",
            observation.name
        );
        let mut labels = vec![("interface", iface)];
        if !observation.family.label.is_empty() {
            labels.push((observation.family.label, observation.label_value));
        }
        http::value(&after, &format!("portguard_{}_total", observation.family.name), &labels);
    }

    // Gauges and identity.
    assert_eq!(http::value(&after, "portguard_policy_generation", &[("interface", iface)]), 1.0);
    assert_eq!(http::value(&after, "portguard_attached", &[("interface", iface), ("mode", "enforce")]), 1.0);
    assert_eq!(http::value(&after, "portguard_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    let loaded = http::value(&after, "portguard_policy_last_load_timestamp_seconds", &[("interface", iface)]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(now - loaded < 120.0 && now >= loaded, "last load {loaded}, now {now}");

    // Bounded labels: never a source address, no port outside the policy's own.
    for sample in &after {
        for (key, value) in &sample.labels {
            assert!(!["source", "src", "address", "ip"].contains(&key.as_str()), "{sample:?}");
            assert!(!value.contains(&CLIENT_V4.to_string()), "a source address in {sample:?}");
        }
        if let Some((_, port)) = sample.labels.iter().find(|(k, _)| k == "port") {
            assert!(["80", "53", "23", "9464", "other"].contains(&port.as_str()), "{sample:?}");
        }
    }

    // Loopback only by default: the port is open, and still the client cannot reach it.
    let refused = http::get(&lab.client, SocketAddr::new(SERVER_V4.into(), 9464), "/metrics").unwrap_err();
    assert!(format!("{refused:#}").contains("refused"), "{refused:#}");
    let (status, _) = http::get(&lab.server, METRICS.parse().unwrap(), "/other").unwrap();
    assert_eq!(status, 404);
}

/// Local clients that misbehave toward `/metrics`, for as long as `stop` is not sent (at most
/// 40 s): 100 idle keep-alive connections (after one request each), 100 sending a request
/// head a header every 300 ms and never finishing it (reopened when the server closes them,
/// up to 2,000 in all), and 100 that send nothing: more than the server holds at once.
/// Returns how many of the idle ones the server closed, and how many connections were made.
#[allow(clippy::needless_pass_by_value, reason = "the channel ends belong to the thread running this")]
fn misbehave(
    address: SocketAddr,
    ready: std::sync::mpsc::Sender<()>,
    stop: std::sync::mpsc::Receiver<()>,
) -> (usize, usize) {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    // A connection the server does not take is just one fewer: what is tested is the scrapes.
    let connect = || {
        let stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        Some(stream)
    };
    let started = Instant::now();
    let mut made = 0;
    let mut idle = Vec::new();
    for _ in 0..100 {
        let Some(mut stream) = connect() else { continue };
        made += 1;
        // Answered (a 404, left unread here) and then idle, kept alive.
        if stream.write_all(b"GET /nothing HTTP/1.1\r\nHost: metrics\r\n\r\n").is_ok() {
            idle.push(stream);
        }
    }
    let half =
        |stream: &mut TcpStream| stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n").is_ok();
    let mut partial = Vec::new();
    for _ in 0..100 {
        let Some(mut stream) = connect() else { continue };
        made += 1;
        half(&mut stream);
        partial.push(stream);
    }
    let silent: Vec<TcpStream> = (0..100).filter_map(|_| connect()).collect();
    made += silent.len();
    ready.send(()).unwrap();
    let mut idle_closed = vec![false; idle.len()];
    while stop.try_recv().is_err() && started.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(300));
        for stream in &mut partial {
            if stream.write_all(b"X-Slow: 1\r\n").is_err() && made < 2_000 {
                if let Some(fresh) = connect() {
                    *stream = fresh;
                    made += 1;
                    half(stream);
                }
            }
        }
        for (stream, closed) in idle.iter_mut().zip(idle_closed.iter_mut()) {
            stream.set_nonblocking(true).unwrap();
            let mut buffer = [0u8; 4096];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => *closed = true,
                    Ok(_) => continue,
                    Err(error) if error.kind() != std::io::ErrorKind::WouldBlock => *closed = true,
                    Err(_) => {}
                }
                break;
            }
        }
    }
    drop(silent);
    (idle_closed.iter().filter(|c| **c).count(), made)
}

/// Idle keep-alive connections, half-sent request heads (slowloris) and connections that send
/// nothing, more of them than the server holds at once: every scrape still answers within a
/// second or so (issue 10, item 12; 16 idle clients used to make most scrapes time out).
#[test]
fn misbehaving_local_clients_do_not_starve_scrapes() {
    require_root!();
    let lab = Lab::new().unwrap();
    let pg = Attached::start(&lab.server, &lab.server_if, METRICS_POLICY, &["--metrics"]).unwrap();
    let address: SocketAddr = METRICS.parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let clients = lab.server.spawn(move || misbehave(address, ready_tx, stop_rx));
    ready_rx.recv_timeout(Duration::from_secs(30)).expect("the misbehaving clients did not connect");

    // Scrapes over 6 s: while all of them hold their connections, and while the half-sent ones
    // are cut off and come back.
    let mut slowest = Duration::ZERO;
    for _ in 0..12 {
        let started = Instant::now();
        let (status, body) = http::get(&lab.server, address, "/metrics").expect("scraping /metrics");
        let took = started.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("portguard_packets_total"), "{body}");
        // A correctness bound (an answer at all, in time for a scraper), not a benchmark.
        assert!(took < Duration::from_secs(2), "a scrape took {took:?}");
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop_tx.send(()).unwrap();
    let (idle_closed, made) = clients.join().unwrap();
    // Each idle keep-alive connection was closed by the server: by the idle timeout, or to
    // make room for a newer connection.
    assert_eq!(idle_closed, 100, "idle connections the server closed ({made} connections made)");
    assert!(made > 300, "the half-sent heads were cut off and reconnected: {made} connections");
    eprintln!("slowest scrape {slowest:?} among {made} misbehaving connections");

    // Still serving, and the loader is well.
    let (status, _) = http::get(&lab.server, address, "/metrics").unwrap();
    assert_eq!(status, 200);
    let (stopped, stderr) = pg.stop();
    assert!(stopped, "{stderr}");
}

/// The example's port rules, a scan that blocks, trap ports, and the sinks given.
fn alert_policy(sinks: &str) -> String {
    format!(
        r#"
mode = "enforce"
default = "deny"
never_block = ["198.51.100.0/24"]

[[allow]]
proto = "tcp"
ports = [80]

[scan_detection]
threshold = 20
window = "5s"
action = "block"
block_for = "15m"

[trap_ports]
tcp = [2323]
block_for = "15m"

[alerts]
{sinks}
"#
    )
}

fn alerts_of(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| {
            ["scan_detected", "auto_blocked", "trap_hit", "block_expired"]
                .contains(&e["event"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn a_real_scan_reaches_the_webhook_and_the_program() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80], &[]);
    let receiver = Receiver::start(&lab.server, 8099, Behaviour::Accept);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("alerts.log");
    let program = dir.path().join("on-alert.sh");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\n{{ echo \"$PORTGUARD_EVENT $PORTGUARD_SOURCE $PORTGUARD_SCAN_KIND $PORTGUARD_INTERFACE\"; cat; echo; }} >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sinks = format!("webhook = \"{}\"\nexec = \"{}\"\n", receiver.url(), program.display());
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &alert_policy(&sinks), &["--json", "--metrics"])
            .unwrap();
    // Where alerts go, without the path (a chat service's URL holds its token).
    let shown = format!("alerts: POST http://{}/… (json format)", receiver.address);
    assert!(pg.banner.contains(&shown), "{}", pg.banner);

    lab.nmap(&["-sS"]);
    pg.wait_for_event(Duration::from_secs(5), |e| e["event"] == "auto_blocked").expect("auto_blocked event");
    let printed: Vec<Value> = pg.events(Duration::from_millis(300));
    let printed_alerts: Vec<String> = alerts_of(&printed).iter().map(ToString::to_string).collect();
    assert!(printed_alerts.iter().any(|e| e.contains("\"scan_detected\"")), "{printed_alerts:?}");

    // Every alert printed reaches the webhook, as the same JSON document.
    let bodies = receiver.wait_for(Duration::from_secs(10), |b| b.len() >= printed_alerts.len());
    let received: Vec<Value> = bodies.iter().map(|b| serde_json::from_str(b).expect("a JSON body")).collect();
    let printed_values: Vec<Value> = alerts_of(&printed).into_iter().cloned().collect();
    assert_eq!(received, printed_values, "webhook bodies are the events `--json` prints");
    let scan = received.iter().find(|e| e["event"] == "scan_detected").unwrap();
    assert_eq!(scan["source"], CLIENT_V4.to_string());
    assert_eq!(scan["scan_kind"], "syn");
    assert_eq!(scan["interface"], lab.server_if);
    assert!(scan["time"].as_str().unwrap().ends_with('Z'));
    let blocked = received.iter().find(|e| e["event"] == "auto_blocked").unwrap();
    assert_eq!(blocked["source"], CLIENT_V4.to_string());
    assert!(bodies.iter().all(|b| !b.contains("\"drop\"")), "drop events are not alerts");

    // The program ran once per alert, with the event on stdin and key fields in its environment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().filter(|l| l.starts_with('{')).count() >= printed_values.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(text.contains(&format!("scan_detected {CLIENT_V4} syn {}", lab.server_if)), "{text}");
    let documents: Vec<Value> =
        text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(documents, printed_values);

    // Counted once each program has exited: poll until both sinks are.
    let iface = lab.server_if.as_str();
    let expected = printed_values.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let (_, samples) = scrape(&pg, &lab);
        let delivered = |sink| {
            counter(&samples, "portguard_alerts_delivered_total", &[("interface", iface), ("sink", sink)])
        };
        let both = (delivered("webhook"), delivered("exec"));
        if both == (expected, expected) || Instant::now() >= deadline {
            assert_eq!(both, (expected, expected), "deliveries counted (webhook, exec)");
            break samples;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(counter(&samples, "portguard_alerts_failed_total", &[("sink", "webhook")]), 0);
    assert_eq!(counter(&samples, "portguard_scans_detected_total", &[("kind", "syn")]), 1);
    assert_eq!(counter(&samples, "portguard_auto_blocks_total", &[("cause", "scan")]), 1);
    assert_eq!(http::value(&samples, "portguard_active_blocks", &[("origin", "automatic")]), 1.0);
}

#[test]
fn a_hung_receiver_stalls_nothing_and_failures_are_counted() {
    require_root!();
    let lab = Lab::new().unwrap();
    let services = Servers::start(&lab.server, &[80], &[]);
    let receiver = Receiver::start(&lab.server, 8099, Behaviour::Hang);
    // Each delivery takes 1 s + 0.5 s + 1 s before it fails: done inline, four alerts would
    // hold the event reader for 10 s.
    let sinks =
        format!("webhook = \"{}\"\ntimeout = \"1s\"\nretries = 1\nmax_per_minute = 2\n", receiver.url());
    let mut pg =
        Attached::start(&lab.server, &lab.server_if, &alert_policy(&sinks), &["--json", "--metrics"])
            .unwrap();

    // One SYN to the trap port from each of three sources: three trap alerts, three blocks.
    let trap = SocketAddr::new(SERVER_V4.into(), 2323);
    for source in [CLIENT_V4, SCANNER_V4, INTRUDER_V4] {
        assert!(!tcp_connects(&lab.client, Some(source.into()), trap));
    }
    // Delivered inline, the third alert would print 5 s after the first.
    let sent = Instant::now();
    let mut traps = Vec::new();
    while traps.len() < 3 && sent.elapsed() < Duration::from_secs(5) {
        traps.extend(
            pg.events(Duration::from_millis(100))
                .into_iter()
                .filter(|e| e["event"] == "trap_hit")
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(traps.len(), 3, "every trap hit printed at once: {:?}", pg.output);
    assert!(sent.elapsed() < Duration::from_secs(2), "events were held up: {:?}", sent.elapsed());

    // Enforcement goes on: the admin network is never blocked and reaches the web server.
    assert!(tcp_connects(&lab.client, Some(ADMIN_V4.into()), SocketAddr::new(SERVER_V4.into(), 80)));
    assert!(services.accepted(80) >= 1);
    assert!(
        !tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)),
        "a trapped source stays blocked"
    );

    // Two alerts fit the rate limit and fail after their retry; the rest are dropped, counted.
    let iface = lab.server_if.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts =
        alerts_of(&pg.output.iter().filter_map(|l| serde_json::from_str(l).ok()).collect::<Vec<Value>>())
            .len() as u64;
    let (failed, dropped) = loop {
        let (_, samples) = scrape(&pg, &lab);
        let failed =
            counter(&samples, "portguard_alerts_failed_total", &[("interface", &iface), ("sink", "webhook")]);
        let dropped = counter(&samples, "portguard_alerts_dropped_total", &[("interface", &iface)]);
        if (failed, dropped) == (2, alerts - 2) || Instant::now() >= deadline {
            break (failed, dropped);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(failed, 2, "deliveries failed after the timeout and retry");
    assert_eq!(dropped, alerts - 2, "alerts past the rate limit are dropped and counted ({alerts} alerts)");
    // The receiver saw each of the two alerts twice (first try and one retry).
    assert_eq!(receiver.bodies().len(), 4);
    let (_, stderr) = pg.stop();
    assert!(stderr.contains("alert to webhook failed"), "{stderr}");
}

/// Samples of `name` whose labels include `labels` (none is 0).
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value as u64)
        .sum()
}

#[test]
fn monitor_mode_is_visible_in_events_alerts_and_metrics() {
    require_root!();
    let lab = Lab::new().unwrap();
    let services = Servers::start(&lab.server, &[80, 8081], &[]);
    let receiver = Receiver::start(&lab.server, 8099, Behaviour::Accept);
    let policy = alert_policy(&format!("webhook = \"{}\"\n", receiver.url()))
        .replace("mode = \"enforce\"", "mode = \"monitor\"");
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy, &["--json", "--metrics"]).unwrap();
    let mut follower = pg.follow_events(&[]).unwrap();

    // Denied by default, and a trap port: nothing is dropped, and nothing may say it was.
    let server = |port| SocketAddr::new(SERVER_V4.into(), port);
    assert!(tcp_connects(&lab.client, None, server(8081)), "monitor mode drops nothing");
    assert!(!tcp_connects(&lab.client, Some(SCANNER_V4.into()), server(2323)), "no server on the trap port");
    assert!(
        tcp_connects(&lab.client, Some(SCANNER_V4.into()), server(80)),
        "the trapped source still passes"
    );
    assert!(services.accepted(8081) >= 1);

    // `attach --json`: the same event types, marked.
    let drop = pg
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "drop" && e["destination_port"] == 8081)
        .expect("a drop event");
    assert_eq!(drop["mode"], "monitor", "{drop}");
    assert_eq!(drop["reason"], "default_deny");
    let blocked = pg
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "auto_blocked")
        .expect("an auto_blocked event");
    assert_eq!(blocked["mode"], "monitor", "{blocked}");

    // `events`, for people: never a bare DROP or BLOCK.
    let line = follower
        .wait_for(Duration::from_secs(5), |l| l.contains(":8081 "))
        .unwrap_or_else(|| panic!("{:?}", follower.output));
    assert!(
        line.contains(" WOULD-DROP ")
            && line.contains("would be dropped (monitor mode: passed): default_deny"),
        "{line}"
    );
    let line = follower
        .wait_for(Duration::from_secs(5), |l| l.contains(" WOULD-BLOCK "))
        .unwrap_or_else(|| panic!("{:?}", follower.output));
    assert!(line.contains("would be blocked (monitor mode: counted, not dropped)"), "{line}");
    assert!(
        follower.output.iter().all(|l| !l.contains(" DROP ") && !l.contains(" BLOCK ")),
        "{:?}",
        follower.output
    );

    // The alert sinks get the mark too.
    let bodies =
        receiver.wait_for(Duration::from_secs(10), |b| b.iter().any(|b| b.contains("\"auto_blocked\"")));
    let alerts: Vec<Value> = bodies.iter().map(|b| serde_json::from_str(b).unwrap()).collect();
    let trap = alerts.iter().find(|a| a["event"] == "trap_hit").unwrap_or_else(|| panic!("{alerts:?}"));
    assert_eq!(trap["mode"], "monitor");
    assert!(alerts.iter().filter(|a| a["event"] != "reloaded").all(|a| a["mode"] == "monitor"), "{alerts:?}");

    // And the metrics: counted as monitored, never as enforced.
    let (exposition, samples) = scrape(&pg, &lab);
    let iface = lab.server_if.as_str();
    assert!(
        sum(
            &samples,
            "portguard_events_total",
            &[("interface", iface), ("event", "drop"), ("mode", "monitor")]
        ) >= 1,
        "{exposition}"
    );
    assert_eq!(sum(&samples, "portguard_events_total", &[("event", "auto_blocked"), ("mode", "monitor")]), 1);
    assert_eq!(sum(&samples, "portguard_events_total", &[("mode", "enforce")]), 0, "{exposition}");
    assert!(
        sum(&samples, "portguard_packets_total", &[("action", "would_drop"), ("reason", "default_deny")])
            >= 1
    );
    promtool_lint(&exposition);
}

#[test]
fn the_audit_trail_reaches_events_alerts_and_metrics() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[80, 8080], &[]);
    let receiver = Receiver::start(&lab.server, 8099, Behaviour::Accept);
    let policy = alert_policy(&format!("webhook = \"{}\"\n", receiver.url()));
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy, &["--json", "--metrics"]).unwrap();
    let mut follower = pg.follow_events(&[]).unwrap();
    let iface = lab.server_if.clone();
    let as_user = |pg: &Attached, user: &str, args: &[&str]| {
        let output = pg.command(args).env("SUDO_USER", user).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };

    as_user(&pg, "alice", &["block", "203.0.113.7", "--for", "1h", "--reason", "ssh brute force"]);
    as_user(&pg, "alice", &["unblock", "203.0.113.7"]);
    let dir = tempfile::tempdir().unwrap();
    let wider = dir.path().join("wider.toml");
    std::fs::write(&wider, policy.replace("ports = [80]", "ports = [80, 8080]")).unwrap();
    as_user(&pg, "bob", &["reload", &iface, "--policy", wider.to_str().unwrap(), "--confirm-within", "5m"]);
    as_user(&pg, "bob", &["confirm", &iface]);

    // `attach --json` prints each, with who did it and what changed.
    let event = |pg: &mut Attached, name: &str| {
        let event = pg
            .wait_for_event(Duration::from_secs(5), |e| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name}: {:?}", pg.output));
        portguard_tests::schemas::assert_valid("event", &event);
        event
    };
    let blocked = event(&mut pg, "blocked");
    assert_eq!(
        (blocked["source"].as_str(), blocked["user"].as_str(), blocked["uid"].as_u64()),
        (Some("203.0.113.7"), Some("alice"), Some(0))
    );
    assert_eq!(
        (blocked["reason"].as_str(), blocked["block_secs"].as_u64()),
        (Some("ssh brute force"), Some(3600))
    );
    assert!(blocked["host"].as_str().is_some_and(|h| !h.is_empty()), "{blocked}");
    let unblocked = event(&mut pg, "unblocked");
    assert_eq!(unblocked["reason"], "lifted 1 manual and 0 automatic blocks");
    let reloaded = event(&mut pg, "reloaded");
    assert_eq!((reloaded["generation"].as_u64(), reloaded["user"].as_str()), (Some(2), Some("bob")));
    assert_eq!(reloaded["reason"], "portguard reload");
    assert_eq!(reloaded["added"], serde_json::json!(["allow tcp 80,8080"]), "{reloaded}");
    assert_eq!(reloaded["removed"], serde_json::json!(["allow tcp 80"]), "{reloaded}");
    assert!(reloaded["rollback_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{reloaded}");
    let confirmed = event(&mut pg, "confirmed");
    assert_eq!(confirmed["reason"], "the reload to generation 2 stays");

    // `events` shows them to people.
    for wanted in [
        "MANUAL-BLOCK 203.0.113.7 blocked for 1h by alice (uid 0): ssh brute force",
        "MANUAL-UNBLOCK 203.0.113.7 unblocked by alice (uid 0)",
        "RELOAD  generation 2 (",
        "by bob (uid 0) via portguard reload: +allow tcp 80,8080; -allow tcp 80",
        "CONFIRM the reload to generation 2 stays by bob (uid 0)",
    ] {
        assert!(
            follower.wait_for(Duration::from_secs(5), |l| l.contains(wanted)).is_some(),
            "{wanted:?} not in {:#?}",
            follower.output
        );
    }

    // Counted.
    let (_, samples) = scrape(&pg, &lab);
    for name in ["blocked", "unblocked", "reloaded", "confirmed"] {
        assert_eq!(
            sum(
                &samples,
                "portguard_events_total",
                &[("interface", &iface), ("event", name), ("mode", "enforce")]
            ),
            1,
            "{name}"
        );
    }

    // A detach is the last event, printed by the loader, followed and delivered before it exits.
    as_user(&pg, "carol", &["detach", &iface]);
    let status = pg.wait_exit(Duration::from_secs(20)).expect("the loader exits");
    assert!(status.success(), "{status:?}");
    let detached = pg
        .events(Duration::from_millis(200))
        .into_iter()
        .find(|e| e["event"] == "detached")
        .unwrap_or_else(|| panic!("{:?}", pg.output));
    assert_eq!(
        (detached["user"].as_str(), detached["reason"].as_str()),
        (Some("carol"), Some("portguard detach"))
    );
    assert!(
        follower
            .wait_for(Duration::from_secs(5), |l| l.contains("DETACH  portguard detach by carol (uid 0)"))
            .is_some(),
        "{:#?}",
        follower.output
    );

    // The sinks got the whole trail (by default, the audit events go with the alerts).
    let bodies = receiver.wait_for(Duration::from_secs(5), |b| b.len() >= 5);
    let received: Vec<String> = bodies
        .iter()
        .map(|b| serde_json::from_str::<Value>(b).unwrap()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(received, ["blocked", "unblocked", "reloaded", "confirmed", "detached"]);
}

/// The key a test webhook is signed with.
const HOOK_KEY: &str = "0123456789abcdef-test-key";

/// `openssl dgst -sha256 -hmac KEY`, hex: what a receiver runs to check a signature (as the
/// README shows), independent of portguard's own code.
fn openssl_hmac_hex(data: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", HOOK_KEY, "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl is needed for this test");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// The same, Base64 (DingTalk's signature).
fn openssl_hmac_base64(data: &[u8]) -> String {
    let hex = openssl_hmac_hex(data);
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let output = Command::new("sh")
        .args(["-c", "base64 -w0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(&bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(output.stdout).unwrap()
}

/// Checks one request against what its service accepts; returns the text people will read.
fn check_shape(format: &str, request: &http::Received) -> String {
    let body: Value =
        serde_json::from_str(&request.body).unwrap_or_else(|e| panic!("{format}: {e}: {}", request.body));
    match format {
        "json" => {
            assert!(
                body["event"].is_string() && body["host"].is_string() && body["interface"].is_string(),
                "{body}"
            );
            body.to_string()
        }
        "slack" => {
            // An incoming webhook takes `text` (the notification) and Block Kit `blocks`.
            let text = body["text"].as_str().unwrap_or_else(|| panic!("{body}"));
            let blocks = body["blocks"].as_array().unwrap_or_else(|| panic!("{body}"));
            assert_eq!(blocks[0]["type"], "section");
            assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
            assert!(blocks[0]["text"]["text"].as_str().unwrap().len() <= 3000);
            assert_eq!(blocks[1]["type"], "context");
            assert!(blocks[1]["elements"][0]["text"].is_string());
            text.to_owned()
        }
        "teams" => {
            // A message with one Adaptive Card attachment (incoming webhooks and Workflows).
            assert_eq!(body["type"], "message");
            let attachment = &body["attachments"][0];
            assert_eq!(attachment["contentType"], "application/vnd.microsoft.card.adaptive");
            let card = &attachment["content"];
            assert_eq!(card["type"], "AdaptiveCard");
            assert_eq!(card["$schema"], "http://adaptivecards.io/schemas/adaptive-card.json");
            assert!(card["version"].as_str().is_some_and(|v| v.starts_with("1.")));
            let blocks = card["body"].as_array().unwrap();
            assert!(
                blocks.iter().all(|b| ["TextBlock", "FactSet"].contains(&b["type"].as_str().unwrap())),
                "{body}"
            );
            assert!(blocks.iter().any(|b| {
                b["type"] == "FactSet"
                    && b["facts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|f| f["title"].is_string() && f["value"].is_string())
            }));
            let facts = blocks.iter().filter_map(|b| b["facts"].as_array()).flatten();
            let texts = blocks.iter().filter_map(|b| b["text"].as_str());
            texts.chain(facts.filter_map(|f| f["value"].as_str())).collect::<Vec<_>>().join("\n")
        }
        "dingtalk" | "wecom" => {
            assert_eq!(body["msgtype"], "text", "{body}");
            let content = body["text"]["content"].as_str().unwrap_or_else(|| panic!("{body}"));
            // WeCom takes at most 2048 bytes of text.
            assert!(content.len() <= 2048);
            content.to_owned()
        }
        other => panic!("no shape for {other}"),
    }
}

#[test]
fn each_chat_service_gets_its_payload_signed() {
    require_root!();
    let lab = Lab::new().unwrap();
    let receiver = Receiver::start(&lab.server, 8099, Behaviour::Accept);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hook.key");
    std::fs::write(&key, format!("{HOOK_KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy = |format: &str| {
        let url = if format == "dingtalk" {
            format!("http://{}/robot/send?access_token=tok", receiver.address)
        } else {
            receiver.url()
        };
        alert_policy(&format!(
            "webhook = \"{url}\"\nformat = \"{format}\"\nhmac_secret_file = \"{}\"\n[alerts.headers]\nX-Team = \"ops\"\n",
            key.display()
        ))
    };
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy("json")).unwrap();
    let checked = portguard(None, &["check", path.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let pg =
        Attached::start_file(&lab.server, &lab.server_if, path.to_str().unwrap(), &["--json"], None).unwrap();
    assert!(pg.banner.contains("(json format, signed)"), "{}", pg.banner);

    for (n, format) in ["slack", "teams", "dingtalk", "wecom", "json"].into_iter().enumerate() {
        // Each reload is announced in the new format, and so is the block after it.
        std::fs::write(&path, policy(format)).unwrap();
        let reload = pg.command(&["reload", &lab.server_if]).output().unwrap();
        assert!(reload.status.success(), "{format}: {}", String::from_utf8_lossy(&reload.stderr));
        let target = format!("203.0.113.{}", 10 + n);
        let block =
            pg.command(&["block", &target, "--for", "1m", "--reason", "<!channel> & test"]).output().unwrap();
        assert!(block.status.success(), "{format}: {}", String::from_utf8_lossy(&block.stderr));

        let requests = receiver.wait_for_requests(Duration::from_secs(10), |r| r.len() >= 2 * (n + 1));
        assert_eq!(requests.len(), 2 * (n + 1), "{format}: {requests:#?}");
        for request in &requests[2 * n..] {
            assert_eq!(request.header("content-type"), Some("application/json"), "{format}");
            assert_eq!(request.header("x-team"), Some("ops"), "{format}: custom header");
            let expected = format!("sha256={}", openssl_hmac_hex(request.body.as_bytes()));
            assert_eq!(
                request.header("x-portguard-signature-256"),
                Some(expected.as_str()),
                "{format}: signature"
            );
            let text = check_shape(format, request);
            assert!(text.contains(&lab.server_if), "{format}: {text}");
            if format == "dingtalk" {
                // DingTalk's own check: sign = Base64(HMAC-SHA256("timestamp\nkey")), URL-encoded.
                assert_eq!(request.query("access_token"), Some("tok"));
                let timestamp = request.query("timestamp").expect("timestamp");
                let millis: u128 = timestamp.parse().unwrap();
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
                assert!(now.abs_diff(millis) < 60_000, "{timestamp}");
                let sign = openssl_hmac_base64(format!("{timestamp}\n{HOOK_KEY}").as_bytes())
                    .replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D");
                assert_eq!(request.query("sign"), Some(sign.as_str()));
            }
        }
        let block_text = check_shape(format, &requests[2 * n + 1]);
        assert!(block_text.contains(&target), "{format}: {block_text}");
        if format == "slack" {
            assert!(
                block_text.contains("&lt;!channel&gt; &amp; test"),
                "no @channel from a reason: {block_text}"
            );
        }
    }

    // A bad value is refused by `check` with its line, and by `reload`, which changes nothing.
    std::fs::write(&path, policy("json").replace("format = \"json\"", "format = \"mattermost\"")).unwrap();
    let checked = portguard(None, &["check", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success());
    assert!(stderr.contains(":22:10: error: format = \"mattermost\" is not one of"), "{stderr}");
    let reload = pg.command(&["reload", &lab.server_if]).output().unwrap();
    assert!(!reload.status.success());
}

/// `<!DOCTYPE html>` is the page's only DTD.
const XML: roxmltree::ParsingOptions = roxmltree::ParsingOptions { allow_dtd: true, nodes_limit: u32::MAX };

const DOCTOR_POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[allow]]
proto = "tcp"
ports = [8080]
"#;

fn listening(report: &Value, port: u16) -> &Value {
    report["listening"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == port && l["protocol"] == "tcp")
        .unwrap_or_else(|| panic!("port {port} not in {:#}", report["listening"]))
}

#[test]
fn doctor_names_risky_listeners_against_the_policy() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _services = Servers::start(&lab.server, &[23, 3306, 8080], &[]);
    let _loopback_redis = lab.server.run(|| TcpListener::bind("127.0.0.1:6379").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, DOCTOR_POLICY).unwrap();
    let policy = policy.to_str().unwrap();
    let html = dir.path().join("report.html");

    let output = portguard(
        Some(&lab.server),
        &[
            "doctor",
            "--policy",
            policy,
            "--json",
            "--html",
            html.to_str().unwrap(),
            "--iface",
            &lab.server_if,
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    portguard_tests::schemas::assert_valid("doctor", &report);

    // Not attached: nothing filters these ports now, whatever the file says.
    let telnet = listening(&report, 23);
    assert_eq!(telnet["severity"], "critical");
    assert_eq!(telnet["service"], "telnet");
    assert_eq!(telnet["reachable"], true);
    assert_eq!(telnet["open_to"], "all", "nothing filters it now: {telnet}");
    assert!(telnet["policy"].as_str().unwrap().contains("blocked"), "{telnet}");
    let mysql = listening(&report, 3306);
    assert_eq!(mysql["severity"], "critical");
    assert_eq!(mysql["service"], "MySQL");
    assert!(mysql["policy"].as_str().unwrap().contains("blocked"), "{mysql}");
    let web = listening(&report, 8080);
    assert_eq!(web["severity"], "info");
    assert!(web["policy"].as_str().unwrap().starts_with("open by rule 1"), "{web}");
    let redis = listening(&report, 6379);
    assert_eq!(redis["reachable"], false);
    assert_eq!(redis["severity"], "info");
    // The test process holds the sockets.
    assert!(mysql["program"].as_str().unwrap().contains(&format!("pid {}", std::process::id())), "{mysql}");

    let findings = report["findings"].as_array().unwrap();
    // 8080 is open by rule without a per-source limit: a note (info), not an exposure.
    let (notes, exposure): (Vec<&Value>, Vec<&Value>) =
        findings.iter().filter(|f| f["category"] == "exposure").partition(|f| f["severity"] == "info");
    assert!(
        notes.iter().any(|f| f["title"].as_str().unwrap().ends_with(": no rate limit")
            && f["title"].as_str().unwrap().contains("tcp/8080")),
        "8080 has no rate limit: {notes:#?}"
    );
    assert_eq!(exposure.len(), 2, "telnet and MySQL, not 8080 or loopback Redis: {exposure:#?}");
    assert!(exposure.iter().any(|f| f["title"].as_str().unwrap().starts_with("telnet tcp/23")));
    assert!(exposure.iter().any(|f| f["title"].as_str().unwrap().starts_with("MySQL tcp/3306")));
    assert!(
        exposure.iter().all(|f| f["severity"] == "critical" && !f["remedy"].as_str().unwrap().is_empty())
    );
    assert_eq!(report["summary"]["worst"], "critical");
    assert_eq!(report["policy_enforced"], false);

    // The HTML page: well-formed, self-contained, naming each port.
    let page = std::fs::read_to_string(&html).unwrap();
    let document =
        roxmltree::Document::parse_with_options(&page, XML).expect("the HTML report is well-formed XHTML");
    for node in document.descendants().filter(roxmltree::Node::is_element) {
        let tag = node.tag_name().name();
        assert!(
            !["script", "link", "img", "iframe", "object"].contains(&tag),
            "external or active content: <{tag}>"
        );
        for attribute in node.attributes() {
            let value = attribute.value();
            let fetches = ["src", "href"].contains(&attribute.name()) && !value.starts_with('#');
            assert!(!fetches, "<{tag} {}={value}> loads something", attribute.name());
        }
    }
    assert!(!page.contains("url(") && !page.contains("@import"), "the CSS loads something");
    for text in ["tcp/23", "tcp/3306", "tcp/8080", "telnet", "MySQL", "bind MySQL to 127.0.0.1"] {
        assert!(page.contains(text), "{text} missing from the page");
    }

    // Exit codes for cron and CI.
    let fail_on = |severity: &str| {
        portguard(Some(&lab.server), &["doctor", "--policy", policy, "--fail-on", severity]).status.code()
    };
    let findings = Some(i32::from(portguard::exit::Exit::Findings.code()));
    assert_eq!(fail_on("high"), findings);
    assert_eq!(fail_on("critical"), findings);

    // Attached: the running policy is the audited one, the protection is reported, and the
    // drops it counts make the chart.
    let pg = Attached::start_file(&lab.server, &lab.server_if, policy, &[], None).unwrap();
    for _ in 0..3 {
        assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 3306)));
    }
    let output = pg.run(&["doctor", "--json", "--html", html.to_str().unwrap(), "--iface", &lab.server_if]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    portguard_tests::schemas::assert_valid("doctor", &report);
    assert_eq!(report["policy_enforced"], true);
    // Enforced: only the policy stands between these services and the network.
    for port in [23, 3306] {
        let row = listening(&report, port);
        assert_eq!(row["severity"], "medium", "{row}");
        assert_eq!(row["policy"], "blocked (default deny)");
        assert_eq!(row["open_to"], "none", "{row}");
    }
    assert_eq!(listening(&report, 8080)["open_to"], "all");
    assert_eq!(listening(&report, 8080)["severity"], "info");
    let attached_fail_on =
        |severity: &str| pg.run(&["doctor", "--iface", &lab.server_if, "--fail-on", severity]).status.code();
    assert_eq!(attached_fail_on("high"), Some(0));
    assert_eq!(attached_fail_on("medium"), findings);
    let attachment = report["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["interface"] == lab.server_if)
        .expect("the attachment is reported");
    assert_eq!(attachment["loader_running"], true);
    assert_eq!(attachment["mode"], "enforce");
    assert_eq!(attachment["generation"], 1);
    assert!(attachment["dropped"].as_u64().unwrap() >= 3);
    let mysql_drops = report["drops_by_port"].as_array().unwrap().iter().find(|p| p["port"] == 3306).unwrap();
    assert_eq!((&mysql_drops["protocol"], &mysql_drops["drops"]), (&Value::from("tcp"), &Value::from(3)));
    let page = std::fs::read_to_string(&html).unwrap();
    let document = roxmltree::Document::parse_with_options(&page, XML).unwrap();
    let bars = document.descendants().filter(|n| n.tag_name().name() == "rect").count();
    assert_eq!(bars, report["drops_by_port"].as_array().unwrap().len().min(10));
}

/// The unit as installed, with ExecStart pointing at the binary under test (verify checks
/// that it exists).
fn unit_under_test(dir: &std::path::Path) -> std::path::PathBuf {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/portguard@.service")).unwrap();
    let binary = portguard_tests::portguard_cli::binary().canonicalize().unwrap();
    std::fs::write(
        dir.join("portguard@.service"),
        unit.replace("/usr/local/bin/portguard", binary.to_str().unwrap()),
    )
    .unwrap();
    std::os::unix::fs::symlink("portguard@.service", dir.join("portguard@eth0.service")).unwrap();
    dir.join("portguard@eth0.service")
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; `cargo xtask setup` installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // verify exits 0 on unknown keys and bad values: every line it prints is a problem.
    assert!(output.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn the_units_capabilities_are_enough_to_attach_and_enforce() {
    require_root!();
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/portguard@.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let lab = Lab::new().unwrap();
    let services = Servers::start(&lab.server, &[80, 3306], &[]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, DOCTOR_POLICY.replace("8080", "80")).unwrap();
    // The unit's bounding set, as systemd would apply it; `--netns` needs CAP_SYS_ADMIN for
    // setns, so the namespace is entered before the capabilities are dropped.
    let bounding = format!("-all,{}", caps.join(","));
    // With so few capabilities PID 1's namespace cannot be looked at: the host's must still be
    // known as the host's, or the service's pins and state go where root's commands never look.
    let status = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set", &bounding, "--"])
        .arg(portguard_tests::portguard_cli::binary())
        .arg("status")
        .env("PORTGUARD_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains("not attached anywhere in the host's network namespace"),
        "{said}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // systemd's readiness socket (Type=notify): READY=1 must come once enforcing.
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.server.name))
        .args(["setpriv", "--inh-caps=-all", "--bounding-set", &bounding, "--"])
        .arg(portguard_tests::portguard_cli::binary())
        .args(["attach", &lab.server_if, "--policy", policy.to_str().unwrap()])
        .env("PORTGUARD_STATE_DIR", dir.path().join("state"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(&mut child, lab.server_if.clone());
    // Reads the banner on a thread: bounded by the receive timeout below.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attached = false;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.starts_with("running until") {
            attached = true;
            break;
        }
    }
    assert!(attached, "attach with only {caps:?} failed");
    let mut message = [0u8; 256];
    let n = notify.recv(&mut message).expect("READY=1 on NOTIFY_SOCKET");
    assert!(String::from_utf8_lossy(&message[..n]).contains("READY=1"));
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)));
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 3306)));
    assert_eq!(services.accepted(3306), 0);
    drop(guard);
}

/// Stops the loader (SIGTERM: it detaches) and removes whatever it left.
struct ChildGuard<'a>(&'a mut std::process::Child, String);

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.0.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = portguard(None, &["detach", &self.1]);
    }
}

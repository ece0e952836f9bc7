//! Baselines and anomalies (issue 16) end to end, in real time: a lab client asks the server
//! small DNS questions every second; once the loader has learned a minute of that, the same
//! client pushes 2 MB through UDP/53 in a few seconds (a DNS tunnel) and the next minute
//! brings an `anomaly` event naming the port, the measure and the client's network, in the
//! journal and on the loader's output, with `stats` saying what the baselines know. The
//! engine's arithmetic (hours of the week, warm-up, silent ports, rate limits) is tested with a
//! synthetic clock in `portguard::baseline`; this test takes about three minutes because a
//! baseline's unit is a real minute.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use portguard_tests::{Attached, Lab, SERVER_V4, portguard_cli::succeeded, require_root, traffic::Servers};
use serde_json::Value;

const POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[allow]]
proto = "udp"
ports = [53]

[scan_detection]
action = "off"

[anomaly]
warm_up = "1m"
min_source_bytes = 500000
"#;

/// `stats --json`'s baselines, once the loader has written them.
fn baselines(pg: &Attached) -> Option<Value> {
    let stats: Value = serde_json::from_str(&succeeded(pg.run(&["stats", &pg.iface, "--json"]))).ok()?;
    let known =
        stats.as_array().and_then(|all| all.first()).map_or(&stats, |first| first)["baselines"].clone();
    (!known.is_null()).then_some(known)
}

fn anomalies(pg: &Attached) -> Vec<Value> {
    let out = succeeded(pg.run(&["events", &pg.iface, "--since", "10m", "--json"]));
    out.lines()
        .map(|line| serde_json::from_str::<Value>(line).expect(line))
        .filter(|e| e["event"] == "anomaly")
        .collect()
}

#[test]
fn a_dns_tunnel_departs_from_the_baseline_of_udp_53() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[], &[53]);
    let pg = Attached::start(&lab.server, &lab.server_if, POLICY, &[]).unwrap();
    let dns = SocketAddr::new(SERVER_V4.into(), 53);

    // Normal use: a 60-byte question a second, until the test ends (bounded: five minutes).
    let stop = Arc::new(AtomicBool::new(false));
    // A socket made in the client's namespace stays there whichever thread sends on it.
    let questions = lab.client.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let asking = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let _ = questions.send_to(&[0x41; 60], dns);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // Nothing is reported while the baselines warm up; wait until a minute is learned.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut learned = None;
    while Instant::now() < deadline {
        if let Some(known) = baselines(&pg).filter(|k| k["minutes_observed"].as_u64() >= Some(1)) {
            learned = Some(known);
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let learned = learned.expect("the baselines learned a minute within 150 s");
    assert_eq!(learned["ports_tracked"], 1, "udp/53 has a baseline: {learned}");
    assert!(anomalies(&pg).is_empty(), "normal questions are not anomalies");

    // The tunnel: 2 MB from the same client within a few seconds.
    lab.client.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..1500 {
            socket.send_to(&[0x54; 1400], dns).unwrap();
        }
    });

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut found = Vec::new();
    while Instant::now() < deadline && found.is_empty() {
        std::thread::sleep(Duration::from_secs(2));
        found = anomalies(&pg).into_iter().filter(|a| a["reason"] == "source_bytes").collect();
    }
    stop.store(true, Ordering::Relaxed);
    asking.join().unwrap();
    let tunnel =
        found.first().unwrap_or_else(|| panic!("no source_bytes anomaly within 90 s: {:?}", anomalies(&pg)));
    assert_eq!(tunnel["protocol"], "udp");
    assert_eq!(tunnel["destination_port"], 53);
    // The client's network, as the statistics summarise IPv4 sources (its /24).
    assert_eq!(tunnel["source"], "192.0.2.0", "{tunnel}");
    assert_eq!(tunnel["prefix_len"], 24, "{tunnel}");
    let observed = tunnel["observed"].as_u64().unwrap();
    let expected = tunnel["expected"].as_u64().unwrap();
    assert!(observed >= 1500 * 1400, "{tunnel}");
    assert!(
        (1_000..20_000).contains(&expected),
        "the baseline is the questions, about 4 kB a minute: {tunnel}"
    );
    assert!(tunnel["threshold"].as_u64().unwrap() < observed);
    // With a one-minute warm-up, this hour of the week has enough minutes already.
    let compared = tunnel["compared_with"].as_str().unwrap();
    assert!(compared == "all hours" || compared.ends_with(":00"), "{tunnel}");
    // The loader printed it too.
    let mut pg = pg;
    let printed =
        pg.collect(Duration::from_secs(1)).iter().any(|l| l.contains("ANOMALY") && l.contains("udp/53"));
    assert!(printed, "{:?}", pg.output);
    let known = baselines(&pg).unwrap();
    assert!(known["anomalies"].as_u64().unwrap() >= 1, "{known}");
    assert_eq!(known["warming_up"], false);
}

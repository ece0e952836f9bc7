//! One JSON vocabulary: every `--json` output, taken from the real commands on a real lab
//! attachment, against its schema in `docs/schemas/` and the naming rules of the README's
//! "JSON output" (`tests/src/schemas.rs`); stdout of a `--json` command carries JSON only.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use portguard::exit::Exit;
use portguard_common::{counters::ALL_REASONS, events::ScanKind};
use portguard_tests::{
    Attached, BLOCKED_V4, CLIENT_V4, INTRUDER_V4, Lab, SCANNER_V4, SERVER_V4,
    portguard_cli::{binary, exited, succeeded as ok},
    require_root, schemas,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

/// Parses every line of `text` as JSON, failing on the first that is not.
fn json_lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| {
                panic!("{what}: a line on stdout that is not JSON ({error}): {line:?}")
            })
        })
        .collect()
}

fn one_json(output: &std::process::Output, what: &str) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{what}: stdout is not one JSON document ({error}):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

// ---- The schemas themselves: no root needed. ----

#[test]
fn every_schema_compiles_and_its_keys_follow_the_naming_rules() {
    let all = schemas::all();
    let names: Vec<&str> = all.iter().map(|(name, _)| name.as_str()).collect();
    for wanted in ["common", "status", "stats", "check", "blocks", "verify", "event", "doctor", "learn"] {
        assert!(names.contains(&wanted), "docs/schemas/{wanted}.schema.json is missing: {names:?}");
    }
    for (name, schema) in &all {
        if name != "common" {
            schemas::validator(name);
        }
        // The keys a schema describes are keys of the output: the same rules hold for them.
        let mut keys = Vec::new();
        property_names(schema, &mut keys);
        for key in keys {
            let described = serde_json::json!({ key.clone(): null });
            let breaches = schemas::vocabulary_breaches(&described);
            assert!(breaches.is_empty(), "{name}.schema.json describes `{key}`: {breaches:?}");
        }
    }
}

/// Every name under a `properties` of `schema`, at any depth.
fn property_names(schema: &Value, into: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "properties" {
                    if let Value::Object(properties) = value {
                        into.extend(properties.keys().cloned());
                    }
                }
                property_names(value, into);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| property_names(item, into)),
        _ => {}
    }
}

#[test]
fn the_schemas_name_the_reasons_and_scan_kinds_the_code_has() {
    let common = &schemas::all().into_iter().find(|(name, _)| name == "common").unwrap().1;
    let listed = |def: &str| -> Vec<String> {
        let mut names: Vec<String> = common["$defs"][def]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("common.schema.json has no $defs/{def} enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let mut reasons: Vec<String> = ALL_REASONS.iter().map(|r| r.name().to_owned()).collect();
    reasons.sort();
    reasons.dedup();
    assert_eq!(listed("reason"), reasons, "docs/schemas/common.schema.json and Reason::name disagree");
    let mut kinds: Vec<String> = (0..8).map(|k| ScanKind::from_u8(k).name().to_owned()).collect();
    kinds.sort();
    assert_eq!(listed("scan_kind"), kinds);
    for reason in &reasons {
        assert!(schemas::vocabulary_breaches(&serde_json::json!({ reason.as_str(): 0 })).is_empty());
    }
}

#[test]
fn the_vocabulary_check_catches_what_the_issue_found() {
    // What `--json` printed before: each must be caught, or the lab tests prove nothing.
    for (bad, why) in [
        (serde_json::json!({ "proto": "tcp" }), "proto"),
        (serde_json::json!({ "seconds_left": 5 }), "seconds"),
        (serde_json::json!({ "block_seconds": 900 }), "seconds"),
        (serde_json::json!({ "expires_at": "after 9999-12-31" }), "timestamp"),
        (serde_json::json!({ "time": "2026-11-30T03:13:58+01:00" }), "timestamp"),
        (serde_json::json!({ "uptime_secs": "2m" }), "duration"),
        (serde_json::json!({ "notJson": 1 }), "snake_case"),
    ] {
        let breaches = schemas::vocabulary_breaches(&bad);
        assert!(!breaches.is_empty(), "{bad} passed the naming rules ({why})");
    }
    let event = schemas::validator("event");
    let old_drop = serde_json::json!({
        "time": "2027-01-15T08:00:00.000Z", "interface": "eth0", "event": "drop",
        "source": "203.0.113.7", "destination": "192.0.2.2", "protocol": "tcp", "reason": "port-denied"
    });
    assert!(!event.is_valid(&old_drop), "a kebab-case reason passed the event schema");
    let blocks = schemas::validator("blocks");
    let old_row = serde_json::json!([{ "source": "2 entries", "origin": "policy", "interfaces": ["eth0"],
        "reason": "blocklist policy", "added": null, "expires": null, "seconds_left": null }]);
    assert!(!blocks.is_valid(&old_row), "a prose count passed the blocks schema");
}

// ---- check: no kernel needed. ----

const CHECKED: &str = r#"
mode = "monitor"
default = "deny"

[[allow]]
name = "web"
proto = "tcp"
ports = [80, "8000-8100"]

[[deny]]
proto = "udp"
ports = [1900]

[blocklist]
sources = ["203.0.113.0/24"]
files = ["list.txt"]

[inbound]
malformed = "drop"
fragments_unseen = "pass"
other_protocols = "deny"

[scan_detection]
window = "500ms"
slow_window = "5m"
action = "block"
block_for = "15m"
"#;

#[test]
fn check_says_the_policy_back_in_its_own_words() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("list.txt"), "198.51.100.0/25\n2001:db8:bad::/48\nnot an address\n")
        .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, CHECKED).unwrap();
    let output = std::process::Command::new(binary())
        .args(["check", policy.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let report = one_json(&output, "check --json");
    assert!(output.status.success(), "{report}");
    schemas::assert_valid("check", &report);
    let checked = &report["policy"];
    // `[inbound] malformed = "drop"` is said back as "drop" (once "deny").
    assert_eq!(checked["inbound"]["malformed"], "drop", "{report}");
    assert_eq!(checked["inbound"]["fragments_unseen"], "pass", "{report}");
    assert_eq!(checked["inbound"]["other_protocols"], "deny", "{report}");
    assert_eq!(checked["mode"], "monitor");
    assert_eq!(checked["rules"][0]["protocol"], "tcp");
    assert_eq!(checked["rules"][0]["ports"][1], serde_json::json!({ "start": 8000, "end": 8100 }));
    // Durations in seconds, a fraction where the policy writes one.
    assert_eq!(checked["scan_detection"]["window_secs"], 0.5, "{report}");
    assert_eq!(checked["scan_detection"]["slow_window_secs"], 300);
    assert_eq!(checked["scan_detection"]["block_for_secs"], 900);
    assert_eq!(checked["inbound"]["fragment_timeout_secs"], 30);
    let sources = checked["blocklist_sources"].as_array().unwrap();
    assert_eq!(sources[0], serde_json::json!({ "file": null, "feed": null, "entries": 1, "bad_lines": 0 }));
    assert_eq!(sources[1]["file"], dir.path().join("list.txt").to_str().unwrap());
    assert_eq!((&sources[1]["entries"], &sources[1]["bad_lines"]), (&Value::from(2), &Value::from(1)));
    let warning = &report["diagnostics"][0];
    assert_eq!(warning["severity"], "warning", "the bad line: {report}");

    // Rejected: JSON as well, with the same keys, and a line number where there is one.
    std::fs::write(&policy, "default = \"deny\"\n[[allow]]\nproto = \"sctp\"\nports = [80]\n").unwrap();
    let output = std::process::Command::new(binary())
        .args(["check", policy.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report = one_json(&output, "check --json of a bad policy");
    schemas::assert_valid("check", &report);
    assert_eq!((&report["valid"], &report["policy"]), (&Value::Bool(false), &Value::Null));
    assert_eq!(report["diagnostics"][0]["line"], 3, "{report}");
    // A file that cannot be read: no line to point at.
    let output = std::process::Command::new(binary())
        .args(["check", dir.path().join("missing.toml").to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let report = one_json(&output, "check --json of a missing file");
    schemas::assert_valid("check", &report);
    assert_eq!(report["diagnostics"][0]["line"], Value::Null, "{report}");
}

/// `learn --json` in the shapes a lab run does not reach (the lab's is checked in
/// `lab_learn.rs`): rules open to everyone with their reason, forgotten sources, unknown times.
#[test]
fn learn_json_follows_its_schema_in_every_branch() {
    use portguard::{
        learn::{self, Listener, Options, Ssh},
        policy::Proto,
        portstats::{PortUse, Snapshot, SourceUse, Traffic},
    };
    let at = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs);
    let used = |port: u16, network: &str, connections: u64| SourceUse {
        protocol: Proto::Tcp,
        port,
        network: network.parse().unwrap(),
        connections,
        refused: 1,
        bytes: 60 * connections,
        first_seen: at(0),
        last_seen: at(60),
    };
    let sources = vec![
        used(443, "198.51.100.0/24", 40),
        used(443, "2001:db8:1::/64", 1),
        used(80, "198.51.100.0/24", 10),
        used(80, "203.0.113.0/24", 5),
        used(23, "203.0.113.0/24", 1),
    ];
    let port = |port: u16, connections: u64| PortUse {
        protocol: Proto::Tcp,
        port,
        accepted: Traffic { packets: connections, bytes: 60 * connections, connections },
        refused: Traffic::default(),
    };
    let listener =
        |port: u16| Listener { protocol: Proto::Tcp, port, program: Some(format!("d{port} (pid 1)")) };
    let listeners = [listener(443), listener(80), listener(3306)];
    let ssh = Ssh { ports: vec![22], session: None };
    for (since, forgotten, options) in [
        (Some(at(0)), 0, Options { max_networks: 1, ..Options::default() }),
        (None, 100_000, Options { since: Some(at(30)), ..Options::default() }),
    ] {
        let snapshot = Snapshot {
            taken_at: at(3600),
            since,
            ports: vec![port(23, 1), port(80, 15), port(443, 41)],
            sources_added: sources.len() as u64 + forgotten,
            sources: sources.clone(),
            source_capacity: 65536,
        };
        let proposal = learn::propose(&snapshot, &listeners, &ssh, &options);
        let text = learn::render(&proposal, "eth0", &snapshot, &options);
        let json = learn::to_json(&proposal, &text, "eth0", &snapshot, &options);
        schemas::assert_valid("learn", &json);
        assert!(json["rules"].as_array().is_some_and(|rules| rules.len() == 3), "{json:#}");
    }
}

// ---- Everything else, on a lab attachment. ----

const LAB_POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[allow]]
name = "ssh and web"
proto = "tcp"
ports = [22, 80]

[blocklist]
sources = ["203.0.113.0/24"]
files = ["lab-list.txt"]

[trap_ports]
tcp = [2323]
block_for = "1h"

[scan_detection]
action = "block"
"#;

/// A command run until it ends, or stopped with SIGTERM after `limit`.
fn run_for(mut command: std::process::Command, limit: Duration) -> std::process::Output {
    let mut child =
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting a command");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && child.try_wait().expect("waiting").is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(&mut child);
    child.wait_with_output().expect("collecting the output")
}

/// SIGTERM, then SIGKILL if it does not end within 5 s.
fn stop(child: &mut Child) {
    if child.try_wait().expect("waiting").is_some() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && child.try_wait().expect("waiting").is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
}

/// Lines of a pipe as they come.
fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn every_json_output_on_a_lab_attachment_matches_its_schema() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lab-list.txt"), "198.51.100.128/25\n2001:db8:bad::/48\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, LAB_POLICY).unwrap();
    let mut pg = Attached::start_file(
        &lab.server,
        &lab.server_if,
        policy.to_str().unwrap(),
        &["--json", "--confirm-within", "10m"],
        None,
    )
    .unwrap();
    let iface = lab.server_if.clone();
    // The banner is for people: on stderr, none of it on stdout.
    assert!(
        pg.banner_on_stdout.is_empty(),
        "attach --json printed prose on stdout: {:?}",
        pg.banner_on_stdout
    );
    assert!(
        pg.banner.contains("portguard: attached to") && pg.banner.contains("rolls back in"),
        "{}",
        pg.banner
    );

    let at = |port: u16| SocketAddr::new(SERVER_V4.into(), port);
    assert!(!tcp_connects(&lab.client, Some(CLIENT_V4.into()), at(23)), "default deny");
    assert!(!tcp_connects(&lab.client, Some(BLOCKED_V4.into()), at(80)), "blocklist");
    assert!(!tcp_connects(&lab.client, Some(SCANNER_V4.into()), at(2323)), "trap port");
    ok(pg.run(&[
        "block",
        &INTRUDER_V4.to_string(),
        "--for",
        "1h",
        "--reason",
        "json \"vocabulary\"",
        "--iface",
        &iface,
    ]));
    ok(pg.run(&["block", "2001:db8:dead::/48"]));
    for (event, source) in [
        ("drop", CLIENT_V4.to_string()),
        ("drop", BLOCKED_V4.to_string()),
        ("trap_hit", SCANNER_V4.to_string()),
        ("auto_blocked", SCANNER_V4.to_string()),
    ] {
        pg.wait_for_event(Duration::from_secs(5), |e| e["event"] == event && e["source"] == source)
            .unwrap_or_else(|| panic!("no {event} from {source}: {:#?}", pg.output));
    }

    // stats: one object; with --watch, one per round, each with its time, rates from the second.
    let stats = pg.stats();
    schemas::assert_valid("stats", &stats);
    let trap = &stats["auto_blocks"][0];
    assert_eq!(trap["network"], format!("{SCANNER_V4}/32"), "{stats}");
    assert_eq!(
        (trap["cause"].as_str(), trap["protocol"].as_str(), trap["port"].as_u64()),
        (Some("trap"), Some("tcp"), Some(2323))
    );
    assert!(
        stats["top_dropped_ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["protocol"] == "tcp" && p["port"] == 23),
        "{stats}"
    );
    let watched =
        run_for(pg.command(&["stats", &iface, "--json", "--watch", "0.3"]), Duration::from_millis(1500));
    let rounds = json_lines(&String::from_utf8_lossy(&watched.stdout), "stats --json --watch");
    assert!(rounds.len() >= 2, "{rounds:#?}");
    for round in &rounds {
        schemas::assert_valid("stats", round);
    }
    assert_eq!(rounds[0]["rates"], Value::Null);
    assert!(rounds[1]["rates"]["packets_per_second"].is_number(), "{:#}", rounds[1]);

    // status: a change waits for confirmation.
    let status: Value =
        serde_json::from_str(&exited(pg.run(&["status", "--json"]), Exit::ConfirmationPending)).unwrap();
    schemas::assert_valid("status", &status);
    assert!(status[0]["rollback_at"].is_string() && status[0]["attached_at"].is_string(), "{status}");
    assert_eq!(status[0]["generation"], 1);

    // blocks: structured, never a count or a cause in prose.
    let blocks: Value = serde_json::from_str(&ok(pg.run(&["blocks", "--json"]))).unwrap();
    schemas::assert_valid("blocks", &blocks);
    let rows = blocks.as_array().unwrap();
    let row = |origin: &str, wanted: &dyn Fn(&Value) -> bool| -> Value {
        rows.iter()
            .find(|r| r["origin"] == origin && wanted(r))
            .unwrap_or_else(|| panic!("no {origin} row as wanted in {blocks:#}"))
            .clone()
    };
    let inline = row("policy_blocklist", &|r| r["file"].is_null());
    assert_eq!((&inline["entries"], &inline["network"]), (&Value::from(1), &Value::Null), "{inline}");
    let listed = row("policy_blocklist", &|r| r["file"].is_string());
    assert_eq!(listed["entries"], 2);
    assert_eq!(listed["file"], dir.path().join("lab-list.txt").to_str().unwrap());
    let manual = row("manual", &|r| r["network"] == format!("{INTRUDER_V4}/32"));
    assert_eq!(manual["reason"], "json \"vocabulary\"");
    assert!((3500..=3600).contains(&manual["remaining_secs"].as_u64().unwrap()), "{manual}");
    assert_eq!(
        (&manual["every_interface"], &manual["interfaces"]),
        (&Value::Bool(false), &serde_json::json!([iface]))
    );
    let everywhere = row("manual", &|r| r["network"] == "2001:db8:dead::/48");
    assert_eq!(
        (&everywhere["every_interface"], &everywhere["remaining_secs"], &everywhere["expires_at"]),
        (&Value::Bool(true), &Value::Null, &Value::Null)
    );
    let automatic = row("automatic", &|r| r["network"] == format!("{SCANNER_V4}/32"));
    assert_eq!(
        (automatic["cause"].as_str(), automatic["port"].as_u64()),
        (Some("trap"), Some(2323)),
        "{automatic}"
    );

    // doctor on the attachment.
    let output = pg.run(&["doctor", "--json", "--iface", &iface]);
    let report = one_json(&output, "doctor --json");
    assert!(output.status.success(), "{report}");
    schemas::assert_valid("doctor", &report);

    // events --json from another terminal: JSON lines only.
    let mut follower = pg
        .command(&["events", &iface, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (followed, notes) = (lines(follower.stdout.take().unwrap()), lines(follower.stderr.take().unwrap()));
    let note = notes.recv_timeout(Duration::from_secs(10));
    assert!(note.as_deref().is_ok_and(|n| n.starts_with("following the events")), "{note:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!tcp_connects(&lab.client, Some(CLIENT_V4.into()), at(25)));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.iter().any(|e: &Value| e["event"] == "drop" && e["destination_port"] == 25) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = followed.recv_timeout(left) else {
            stop(&mut follower);
            panic!("events --json showed no drop to port 25: {seen:#?}");
        };
        seen.extend(json_lines(&line, "events --json"));
    }
    stop(&mut follower);
    let _ = follower.wait();
    for event in &seen {
        schemas::assert_valid("event", event);
    }

    // A confirmation and a reload: the loader says so on stderr, stdout stays JSON.
    ok(pg.run(&["confirm", &iface]));
    ok(pg.run(&["reload", &iface]));
    let (_, stdout, stderr) = pg.stop_and_read();
    assert!(stderr.contains("reloaded") && stderr.contains("detached from"), "{stderr}");
    let events = json_lines(&stdout.join("\n"), "attach --json");
    assert!(events.len() >= 5, "{stdout:#?}");
    for event in &events {
        schemas::assert_valid("event", event);
    }
    let blocked = events.iter().find(|e| e["event"] == "auto_blocked").unwrap();
    assert_eq!(blocked["block_secs"], 3600, "{blocked}");
    assert!(blocked["expires_at"].is_string(), "{blocked}");
}

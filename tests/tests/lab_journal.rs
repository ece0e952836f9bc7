//! The journal (issue 16): what a loader publishes is kept under the state directory, root
//! only, rotated and bounded; `events --since` reads it back after the loader is gone and says
//! where the journal cannot vouch for the window (before it starts, after a loader was killed);
//! `report` tells an nmap scan's story from it, as text, JSON and a page rendered by headless
//! Chromium; a blocked scanner's first packets are kept as a pcap file the block's event, the
//! journal and `report` name, and `verify` replays.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use portguard::exit::Exit;
use portguard_tests::{
    ADMIN_V4, Attached, BLOCKED_V4, CLIENT_V4, Lab, SERVER_V4,
    flood::{self, Bound, Flood},
    portguard_cli::{exited, succeeded},
    require_root, require_tools, schemas,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

/// Web and SSH open, scans blocked at 20 ports in 5 s, a small journal.
fn policy(extra_events: &str) -> String {
    format!(
        r#"
mode = "enforce"
default = "deny"

[[allow]]
proto = "tcp"
ports = [22, 80]

[scan_detection]
threshold = 20
window = "5s"
action = "block"
block_for = "15m"

[events]
{extra_events}
"#
    )
}

/// The journal directory of the attachment (in its own state directory and namespace).
fn journal_dir(pg: &Attached, lab: &Lab) -> PathBuf {
    let netns = lab.server.id().dir().expect("the lab's server runs in its own namespace");
    pg.state_dir.path().join(netns).join("journal").join(&pg.iface)
}

fn journal_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .expect("the journal directory exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .map(|path| {
            let size = std::fs::metadata(&path).unwrap().len();
            (path, size)
        })
        .collect();
    files.sort();
    files
}

/// `events --since WHEN --json`: the events, and what it said on stderr.
fn read_back(pg: &Attached, since: &str) -> (Vec<Value>, String) {
    let output = pg.run(&["events", &pg.iface, "--since", since, "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = succeeded(output);
    let events = stdout.lines().map(|line| serde_json::from_str(line).expect(line)).collect();
    (events, stderr)
}

fn of_type<'a>(events: &'a [Value], event: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == event).collect()
}

#[test]
fn the_journal_keeps_what_happened_and_says_where_it_cannot() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy(""), &["--json", "--pin"]).unwrap();
    let iface = pg.iface.clone();

    lab.nmap(&["-sS"]);
    pg.wait_for_event(Duration::from_secs(10), |e| e["event"] == "auto_blocked")
        .expect("the scanner is blocked");
    succeeded(pg.run(&[
        "block",
        "203.0.113.9",
        "--for",
        "1h",
        "--reason",
        "journal test",
        "--iface",
        &iface,
    ]));
    succeeded(pg.run(&["reload", &iface]));
    pg.wait_for_event(Duration::from_secs(10), |e| e["event"] == "reloaded")
        .expect("the reload is published");

    // Root only: the directory, every file in it, and the evidence directory's files.
    let dir = journal_dir(&pg, &lab);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let evidence = dir.join("evidence");
    assert_eq!(std::fs::metadata(&evidence).unwrap().permissions().mode() & 0o777, 0o700);
    let files = std::fs::read_dir(&dir).unwrap().chain(std::fs::read_dir(&evidence).unwrap());
    for path in files.map(|entry| entry.unwrap().path()).filter(|path| *path != evidence) {
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
    }

    // The loader writes behind a queue: what it published is in the journal within moments.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (events, stderr) = loop {
        let (events, stderr) = read_back(&pg, "10m");
        if !of_type(&events, "reloaded").is_empty() || Instant::now() > deadline {
            break (events, stderr);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let scan = of_type(&events, "scan_detected");
    assert!(!scan.is_empty(), "{events:#?}");
    let blocked = of_type(&events, "auto_blocked");
    assert_eq!(blocked.len(), 1, "{events:#?}");
    assert_eq!(blocked[0]["source"], CLIENT_V4.to_string());
    let manual = of_type(&events, "blocked");
    assert_eq!(manual.len(), 1, "{events:#?}");
    assert_eq!(manual[0]["source"], "203.0.113.9");
    assert_eq!(manual[0]["reason"], "journal test");
    assert_eq!(manual[0]["uid"], 0, "who ran it: {:?}", manual[0]);
    assert_eq!(of_type(&events, "reloaded").len(), 1, "{events:#?}");
    assert!(!of_type(&events, "drop").is_empty(), "the scan's sampled drops: {events:#?}");
    // Ten minutes back is before the journal began: said, not glossed over.
    assert!(stderr.contains("has a gap: nothing journaled before"), "{stderr}");
    assert!(!stderr.contains("not journaled:"), "no loader gap while it runs: {stderr}");

    // Killed: enforcement stays pinned, nobody journals. A block made now goes into the
    // journal from the command itself; the time since the loader's last line is a gap.
    pg.kill();
    succeeded(pg.run(&["block", "203.0.113.10", "--reason", "no loader", "--iface", &iface]));
    let (events, stderr) = read_back(&pg, "10m");
    let manual = of_type(&events, "blocked");
    assert_eq!(manual.len(), 2, "{events:#?}");
    assert_eq!(manual[1]["source"], "203.0.113.10");
    assert_eq!(manual[1]["interface"], iface.as_str());
    assert!(
        stderr.contains("to now: not journaled: its loader is not running and did not close the journal"),
        "{stderr}"
    );

    // Human lines read back the same events.
    let human = succeeded(pg.run(&["events", &iface, "--since", "10m"]));
    assert!(human.lines().any(|l| l.contains("MANUAL-BLOCK 203.0.113.10 blocked")), "{human}");
    assert!(human.lines().any(|l| l.contains(" BLOCK ") && l.contains(&CLIENT_V4.to_string())), "{human}");

    // Bad input is refused with a clear error.
    let bad = pg.run(&["events", &iface, "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is neither a duration"), "{bad:?}");
}

#[test]
fn the_journal_stays_within_its_size_under_a_flood() {
    require_root!();
    let lab = Lab::new().unwrap();
    let limits = "drop_events_per_second = 5000\njournal_kib = 64\njournal_file_kib = 16";
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy(limits), &["--json"]).unwrap();
    let to = flood::mac(&lab.server, &lab.server_if).unwrap();
    // Each frame from another source to a closed port (445): each one's drop is sampled,
    // thousands a second.
    let blast = flood::flood(
        &lab.client,
        &lab.client_if,
        to,
        Flood::Spoofed,
        Bound::frames(300_000, Duration::from_secs(4)),
    )
    .expect("the flood runs");
    assert!(blast.frames > 0);
    let drops = pg.events(Duration::from_secs(1)).iter().filter(|e| e["event"] == "drop").count();
    assert!(drops > 1000, "the flood made {drops} drop events: too few to fill the journal");

    let dir = journal_dir(&pg, &lab);
    // The writer catches up within moments; then the files stay put.
    std::thread::sleep(Duration::from_millis(500));
    let files = journal_files(&dir);
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    // 64 KiB in all, give or take the line that ends a file.
    assert!(total <= 64 * 1024 + 2048, "{total} bytes in {files:#?}");
    assert!(files.len() >= 3, "rotated: {files:#?}");
    for (path, size) in &files {
        assert!(*size <= 16 * 1024 + 2048, "{} has {size} bytes", path.display());
    }
    // What was rotated away is said: the journal does not reach back a minute.
    let (events, stderr) = read_back(&pg, "1m");
    assert!(!events.is_empty());
    assert!(events.len() < drops, "{} events kept of {drops}", events.len());
    assert!(stderr.contains("older files were rotated away"), "{stderr}");
    // The loader runs and journals: no time without one (losses, if any, are said as such).
    assert!(!stderr.contains("loader is not running") && !stderr.contains("to now"), "{stderr}");
    for line in stderr.lines().filter(|line| line.contains("events not journaled")) {
        assert!(line.contains("ring buffer was full") || line.contains("queue was full"), "{line}");
    }
}

/// Chromium's flags for a headless run that reaches nothing beyond the file it is given.
const CHROMIUM: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// Runs chromium on `page` with `extra` flags (bounded in time), in a fresh profile.
fn chromium(page: &Path, extra: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new("timeout")
        .arg("90")
        .arg("chromium")
        .args(CHROMIUM)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

#[test]
fn the_report_tells_the_story_of_a_scan() {
    require_root!();
    require_tools!("nmap", "chromium");
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, &policy(""), &["--json"]).unwrap();
    let iface = pg.iface.clone();
    let started =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(1)).to_string();
    std::thread::sleep(Duration::from_millis(1100));

    // A client of the web server (passes: not in the events), a prober of MySQL, a scanner.
    let web = std::net::SocketAddr::new(SERVER_V4.into(), 80);
    assert!(tcp_connects(&lab.client, Some(ADMIN_V4.into()), web));
    for _ in 0..3 {
        assert!(!tcp_connects(
            &lab.client,
            Some(BLOCKED_V4.into()),
            std::net::SocketAddr::new(SERVER_V4.into(), 3306)
        ));
    }
    lab.nmap(&["-sS"]);
    pg.wait_for_event(Duration::from_secs(10), |e| e["event"] == "auto_blocked")
        .expect("the scanner is blocked");
    let reason = "<b>brute force</b> & \"more\"";
    succeeded(pg.run(&["block", "203.0.113.99", "--for", "30m", "--reason", reason, "--iface", &iface]));
    succeeded(pg.run(&["reload", &iface]));
    pg.wait_for_event(Duration::from_secs(10), |e| e["event"] == "reloaded")
        .expect("the reload is published");

    // JSON, over the loader's time only: the journal covers all of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report: Value = loop {
        let report: Value =
            serde_json::from_str(&succeeded(pg.run(&["report", &iface, "--since", &started, "--json"])))
                .expect("report --json");
        if !report["changes"].as_array().unwrap().is_empty() || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["coverage"]["complete"], true, "{:#}", report["coverage"]);
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(sources[0]["source"], CLIENT_V4.to_string(), "the scanner is the top source: {sources:#?}");
    assert_eq!(sources[0]["blocked"], true);
    assert!(sources[0]["scans"].as_u64().unwrap() >= 1);
    // Its drops are sampled (one a second): the ports come from them and from the scan's sample.
    assert!(sources[0]["distinct_ports"].as_u64().unwrap() >= 8, "{:#}", sources[0]);
    let prober = sources.iter().find(|s| s["source"] == BLOCKED_V4.to_string()).expect("the MySQL prober");
    assert!(prober["ports"].as_array().unwrap().iter().any(|p| p == "tcp/3306"), "{prober:#}");
    assert_eq!(prober["blocked"], false);
    assert!(
        !sources.iter().any(|s| s["source"] == ADMIN_V4.to_string()),
        "the web client passed: {sources:#?}"
    );
    assert!(report["ports"].as_array().unwrap().iter().any(|p| p["port"] == 3306), "{:#}", report["ports"]);
    let blocks = report["blocks"].as_array().unwrap();
    let automatic = blocks.iter().find(|b| b["origin"] == "automatic").expect("the scanner's block");
    assert_eq!(automatic["network"], CLIENT_V4.to_string());
    assert_eq!(automatic["cause"], "scan");
    assert_eq!(automatic["scan_kind"], "syn");
    assert_eq!(automatic["block_secs"], 900);
    assert!(automatic["distinct_ports"].as_u64().unwrap() >= 20, "{automatic:#}");
    assert_eq!(automatic["ended"], "in force at the end of the window");
    let manual = blocks.iter().find(|b| b["origin"] == "manual").expect("the manual block");
    assert_eq!(manual["cause"], reason);
    assert_eq!(manual["block_secs"], 1800);
    assert!(report["changes"].as_array().unwrap().iter().any(|c| c["event"] == "reloaded"));
    let marks: Vec<&str> =
        report["timeline"]["marks"].as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert!(
        marks.contains(&"scan") && marks.contains(&"block") && marks.contains(&"manual_block"),
        "{marks:?}"
    );
    let drops: u64 = report["timeline"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["drops"].as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(drops, report["totals"]["drop_events"].as_u64().unwrap());
    assert!(drops >= 2, "the prober's and the scanner's: {drops}");

    // Text, over ten minutes: the part before the journal began is said first, and the exit
    // status says it too (8, incomplete input; 0 above, where the journal covers the window).
    let text = exited(pg.run(&["report", &iface, "--since", "10m"]), Exit::IncompleteInput);
    assert!(text.contains("Coverage: INCOMPLETE"), "{text}");
    assert!(text.contains("nothing journaled before"), "{text}");
    assert!(text.contains("Top sources:") && text.contains(&CLIENT_V4.to_string()), "{text}");

    // The page, rendered by a real browser.
    let out = tempfile::tempdir().unwrap();
    let page = out.path().join("report.html");
    exited(
        pg.run(&["report", &iface, "--since", "3m", "--html", page.to_str().unwrap()]),
        Exit::IncompleteInput,
    );
    assert_eq!(std::fs::metadata(&page).unwrap().permissions().mode() & 0o777, 0o600);
    let html = std::fs::read_to_string(&page).unwrap();
    for external in ["src=", "href=", "url(", "@import", "<link", "<script"] {
        assert!(!html.contains(external), "{external} in a page meant to be self-contained");
    }
    let dom = String::from_utf8(chromium(&page, &["--dump-dom"]).stdout).unwrap();
    for id in ["coverage", "totals", "timeline", "sources", "networks", "ports", "blocks", "changes"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no #{id} in the rendered page");
    }
    assert!(dom.contains("class=\"coverage incomplete\""), "the page says the window is not all covered");
    assert!(dom.contains("<svg"), "the timeline chart");
    assert!(dom.matches("<rect class=\"drops\"").count() >= 1, "drop bars");
    assert!(
        dom.contains("<line class=\"scan\"") && dom.contains("<line class=\"block\""),
        "scan and block marks"
    );
    assert!(dom.contains("<rect class=\"gap\""), "the part before the journal is shaded");
    // The reason typed on a command line is text in the page, not markup.
    assert!(!dom.contains("<b>brute force</b>"), "markup from a reason reached the page");
    assert!(
        dom.contains("&lt;b&gt;brute force&lt;/b&gt; &amp; \"more\""),
        "the reason, escaped, in the blocks table"
    );
    assert!(dom.contains(&CLIENT_V4.to_string()) && dom.contains("tcp/3306"));

    let shot = out.path().join("report.png");
    chromium(&page, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,2200"]);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "a page with tables and a chart: {} bytes", png.len());
    // Kept for people to look at (docs/report.png is one such screenshot).
    let keep = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/lab-report");
    if std::fs::create_dir_all(&keep).is_ok() {
        let _ = std::fs::copy(&shot, keep.join("report.png"));
        let _ = std::fs::copy(&page, keep.join("report.html"));
    }
}

/// `policy` with 12 packets of evidence per block.
const PACKETS: usize = 12;

fn evidence_policy() -> String {
    // `policy` ends with the `[events]` table: another table may follow it.
    policy(&format!("\n[evidence]\npackets_per_source = {PACKETS}\nsnaplen = 128\ncapture_for = \"10s\"\n"))
}

/// One packet of an evidence file, as far as the test looks: who sent it to whom, TCP flags
/// and destination port.
#[derive(Debug)]
struct Probe {
    source: IpAddr,
    destination: IpAddr,
    syn_only: bool,
    port: u16,
}

fn read_pcap(path: &Path) -> Vec<Probe> {
    let file = std::fs::File::open(path).expect("the evidence file opens");
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("a pcap file");
    assert_eq!(reader.header().datalink, pcap_file::DataLink::ETHERNET);
    let mut probes = Vec::new();
    // Bounded: the file holds at most PACKETS.
    for _ in 0..1000 {
        let Some(packet) = reader.next_packet() else { break };
        let packet = packet.expect("a whole record");
        let sliced = SlicedPacket::from_ethernet(&packet.data).expect("Ethernet, IP, TCP");
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (sliced.net, sliced.transport)
        else {
            panic!("not IPv4 and TCP: {packet:?}");
        };
        probes.push(Probe {
            source: ip.header().source_addr().into(),
            destination: ip.header().destination_addr().into(),
            syn_only: tcp.syn() && !tcp.ack(),
            port: tcp.destination_port(),
        });
    }
    probes
}

#[test]
fn a_blocked_scanners_first_packets_are_kept_named_and_replayable() {
    require_root!();
    require_tools!("nmap");
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, &evidence_policy(), &["--json"]).unwrap();
    let iface = pg.iface.clone();

    lab.nmap(&["-sS"]);
    let block = pg
        .wait_for_event(Duration::from_secs(10), |e| e["event"] == "auto_blocked")
        .expect("the scanner is blocked");
    schemas::assert_valid("event", &block);
    assert_eq!(block["source"], CLIENT_V4.to_string());
    let path = PathBuf::from(block["evidence"].as_str().expect("the block's event names its evidence"));

    // Under the journal, root only.
    let dir = journal_dir(&pg, &lab).join("evidence");
    assert_eq!(path.parent(), Some(dir.as_path()), "{}", path.display());
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    // The scan went on after the block (nmap sends ~300 probes): the file fills to its bound
    // within moments of the block, and not beyond.
    let deadline = Instant::now() + Duration::from_secs(15);
    let probes = loop {
        let probes = read_pcap(&path);
        if probes.len() >= PACKETS || Instant::now() > deadline {
            break probes;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(probes.len(), PACKETS, "{probes:#?}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(read_pcap(&path).len(), PACKETS, "no more than packets_per_source");
    for probe in &probes {
        assert_eq!(probe.source, IpAddr::from(CLIENT_V4), "{probe:?}");
        assert_eq!(probe.destination, IpAddr::from(SERVER_V4), "{probe:?}");
    }
    // The probe that made the block first; nmap's SYNs to the ports it scans (1-300).
    assert!(probes[0].syn_only, "{:?}", probes[0]);
    let syns: Vec<&Probe> = probes.iter().filter(|p| p.syn_only).collect();
    assert!(syns.len() >= PACKETS - 2, "the scanner's SYNs: {probes:#?}");
    assert!(syns.iter().all(|p| (1..=300).contains(&p.port)), "{probes:#?}");
    let ports: BTreeSet<u16> = syns.iter().map(|p| p.port).collect();
    assert!(ports.len() >= PACKETS / 2, "distinct ports scanned: {ports:?}");

    // The journal's BLOCK names it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let journaled = loop {
        let (events, _) = read_back(&pg, "10m");
        let found = of_type(&events, "auto_blocked").first().map(|e| (*e).clone());
        if found.is_some() || Instant::now() > deadline {
            break found.expect("the block is journaled");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(journaled["evidence"], block["evidence"]);
    let human = succeeded(pg.run(&["events", &iface, "--since", "10m"]));
    assert!(
        human
            .lines()
            .any(|l| l.contains(" BLOCK ") && l.contains(&format!("its first packets: {}", path.display()))),
        "{human}"
    );

    // So does the report, as JSON and as text.
    let report: Value = serde_json::from_str(&exited(
        pg.run(&["report", &iface, "--since", "10m", "--json"]),
        Exit::IncompleteInput,
    ))
    .unwrap();
    assert_eq!(report["coverage"]["complete"], false, "the journal began less than 10m ago");
    let blocks = report["blocks"].as_array().unwrap();
    let automatic = blocks.iter().find(|b| b["origin"] == "automatic").expect("the scanner's block");
    assert_eq!(automatic["evidence"]["path"], block["evidence"], "{automatic:#}");
    assert_eq!(automatic["evidence"]["kept"], true);
    let text = exited(pg.run(&["report", &iface, "--since", "10m"]), Exit::IncompleteInput);
    assert!(text.contains(&path.display().to_string()), "{text}");

    // `verify` replays it against the policy: the probes to closed ports are dropped.
    let policy_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy_file.path(), evidence_policy()).unwrap();
    let output = pg.run(&[
        "verify",
        "--policy",
        policy_file.path().to_str().unwrap(),
        "--pcap",
        path.to_str().unwrap(),
        "--host",
        &SERVER_V4.to_string(),
        "--json",
    ]);
    let verified: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("verify printed no report ({e}): {}", String::from_utf8_lossy(&output.stderr))
    });
    schemas::assert_valid("verify", &verified);
    assert_eq!(verified["packets"], PACKETS, "{verified:#}");
    assert_eq!(verified["inbound"], PACKETS, "{verified:#}");
    let closed = syns.iter().filter(|p| p.port != 22 && p.port != 80).count() as u64;
    assert!(verified["would_drop"].as_u64().unwrap() >= closed, "{verified:#}");
    let denied: u64 = verified["drop"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["reason"] == "default_deny")
        .map(|row| row["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(denied, closed, "every SYN to a closed port is dropped by the default: {verified:#}");
    eprintln!(
        "{}: {} packets, SYNs to ports {ports:?}; verify drops {denied} by the default",
        path.display(),
        probes.len()
    );
}

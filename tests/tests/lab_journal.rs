//! The journal (issue 16): what a loader publishes is kept under the state directory, root
//! only, rotated and bounded; `events --since` reads it back after the loader is gone and says
//! where the journal cannot vouch for the window (before it starts, after a loader was killed).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use portguard_tests::{
    Attached, CLIENT_V4, Lab,
    flood::{self, Bound, Flood},
    portguard_cli::succeeded,
    require_root,
    traffic::Servers,
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

    // Root only: the directory and every file in it.
    let dir = journal_dir(&pg, &lab);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
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

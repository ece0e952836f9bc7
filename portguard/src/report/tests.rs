//! The report from records made here: pairing of blocks, tallies, coverage, and an HTML page
//! that escapes what it is given.

use std::time::{Duration, SystemTime};

use super::*;
use crate::journal::GapKind;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn record(secs: u64, event: EventType) -> EventRecord {
    let mut record = EventRecord::new(at(secs), "eth0", event);
    record.host = Some("gw1".into());
    record
}

fn drop_from(secs: u64, source: &str, port: u16, reason: &str) -> EventRecord {
    let mut drop = record(secs, EventType::Drop);
    drop.source = Some(source.parse().unwrap());
    drop.destination_port = Some(port);
    drop.protocol = Some("tcp".into());
    drop.reason = Some(reason.into());
    drop
}

fn incident() -> Vec<EventRecord> {
    let mut records = Vec::new();
    for (i, port) in (20..45).enumerate() {
        records.push(drop_from(60 + i as u64, "203.0.113.66", port, "port_denied"));
    }
    records.push(drop_from(70, "203.0.113.5", 23, "port_denied"));
    records.push(drop_from(700, "2001:db8:1:2::9", 3306, "blocklist"));
    let mut scan = record(85, EventType::ScanDetected);
    scan.source = Some("203.0.113.66".parse().unwrap());
    scan.scan_kind = Some("syn".into());
    scan.reason = Some("scan".into());
    scan.protocol = Some("tcp".into());
    scan.distinct_ports = Some(25);
    scan.ports_sample = Some(vec![20, 21, 22]);
    records.push(scan);
    let mut block = record(85, EventType::AutoBlocked);
    block.source = Some("203.0.113.66".parse().unwrap());
    block.reason = Some("scan".into());
    block.scan_kind = Some("syn".into());
    block.block_seconds = Some(900);
    records.push(block);
    let mut expired = record(985, EventType::BlockExpired);
    expired.source = Some("203.0.113.66".parse().unwrap());
    expired.reason = Some("scan".into());
    records.push(expired);
    let mut manual = record(300, EventType::Blocked);
    manual.source = Some("198.51.100.0".parse().unwrap());
    manual.prefix_len = Some(24);
    manual.reason = Some("<script>alert(1)</script> & co".into());
    manual.user = Some("alice".into());
    manual.uid = Some(0);
    manual.block_seconds = Some(600);
    records.push(manual);
    let mut reload = record(400, EventType::Reloaded);
    reload.generation = Some(2);
    reload.added = vec!["allow tcp 8080".into()];
    records.push(reload);
    records
}

fn reading(records: Vec<EventRecord>, gaps: Vec<Gap>) -> Reading {
    Reading { interface: "eth0".into(), records, gaps, oldest: Some(at(0)), unreadable_lines: 0 }
}

#[test]
fn an_incident_in_numbers() {
    let window = Window { since: at(0), until: at(3600) };
    let report = build(&[reading(incident(), Vec::new())], &window);
    assert!(report.coverage.complete);
    assert_eq!(report.totals.drop_events, 27);
    assert_eq!((report.totals.scans, report.totals.automatic_blocks, report.totals.manual_blocks), (1, 1, 1));
    assert_eq!(report.totals.policy_changes, 1);
    // An hour in minutes: 60 buckets; the scan's drops in the second and third minute.
    assert_eq!(report.timeline.bucket_secs, 60);
    assert_eq!(report.timeline.buckets.len(), 60);
    assert_eq!(report.timeline.buckets[1].drops["port_denied"], 26);
    assert_eq!(report.timeline.buckets[11].drops["blocklist"], 1);
    assert_eq!(report.timeline.reasons, ["port_denied", "blocklist"]);
    let kinds: Vec<&str> = report.timeline.marks.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, ["scan", "block", "manual_block", "change"]);

    let scanner = &report.sources[0];
    assert_eq!(scanner.source, "203.0.113.66");
    assert_eq!(scanner.network, "203.0.113.0/24");
    assert!(scanner.blocked);
    assert_eq!((scanner.drop_events, scanner.scans, scanner.distinct_ports), (25, 1, 25));
    assert_eq!(scanner.scan_kinds, ["syn"]);
    assert_eq!(scanner.ports.len(), PORTS_NAMED);
    let v6 = report.sources.iter().find(|s| s.source == "2001:db8:1:2::9").unwrap();
    assert_eq!(v6.network, "2001:db8:1:2::/64");
    assert!(!v6.blocked);
    assert_eq!(report.networks[0].network, "203.0.113.0/24");
    assert_eq!((report.networks[0].sources, report.networks[0].blocked_sources), (2, 1));
    assert_eq!((report.ports[0].protocol.as_str(), report.ports[0].port), ("tcp", 23));
    assert_eq!(report.ports[0].sources, 2);

    assert_eq!(report.blocks.len(), 2);
    let automatic = &report.blocks[0];
    assert_eq!((automatic.origin, automatic.network.as_str()), ("automatic", "203.0.113.66"));
    assert_eq!((automatic.ended.as_str(), automatic.lasted_secs), ("expired", Some(900)));
    let manual = &report.blocks[1];
    assert_eq!((manual.origin, manual.network.as_str()), ("manual", "198.51.100.0/24"));
    assert_eq!(manual.by.as_deref(), Some("alice"));
    // Manual expiries are not events: its deadline, inside the window.
    assert_eq!((manual.ended.as_str(), manual.lasted_secs), ("expired", Some(600)));
    assert_eq!(report.changes.len(), 1);
    assert!(report.changes[0].summary.contains("+allow tcp 8080"), "{}", report.changes[0].summary);

    let text = text::render(&report).join("\n");
    assert!(text.contains("Coverage: the journal covers the whole window."), "{text}");
    assert!(text.contains("203.0.113.66"), "{text}");
}

#[test]
fn a_block_that_began_before_the_window_and_one_still_in_force() {
    let window = Window { since: at(0), until: at(600) };
    let mut expired = record(100, EventType::BlockExpired);
    expired.source = Some("203.0.113.7".parse().unwrap());
    expired.reason = Some("trap".into());
    let mut block = record(200, EventType::AutoBlocked);
    block.source = Some("203.0.113.8".parse().unwrap());
    block.reason = Some("trap".into());
    block.block_seconds = Some(3600);
    let report = build(&[reading(vec![expired, block], Vec::new())], &window);
    assert_eq!(report.blocks[0].at, None);
    assert_eq!(report.blocks[0].ended, "expired");
    assert_eq!(report.blocks[0].lasted_secs, None);
    assert_eq!(report.blocks[1].ended, "in force at the end of the window");
    assert_eq!(report.blocks[1].lasted_secs, Some(400));
}

#[test]
fn the_page_escapes_and_says_what_it_does_not_cover() {
    let window = Window { since: at(0), until: at(3600) };
    let gap = Gap {
        kind: GapKind::Unwatched,
        from: rfc3339(at(1800)),
        to: None,
        count: None,
        reason: "its loader is not running".into(),
        start: at(1800),
        end: None,
    };
    let report = build(&[reading(incident(), vec![gap])], &window);
    assert!(!report.coverage.complete);
    let page = html::render(&report).unwrap();
    assert!(!page.contains("<script"), "a reason from a command line is text, not markup");
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62; &#38; co")
            || page.contains("&lt;script&gt;")
    );
    assert!(page.contains("Incomplete: the journal does not cover all of this window."));
    assert!(page.contains("class=\"gap\""));
    // Self-contained: nothing fetched from elsewhere.
    for needle in ["src=", "href=", "url(", "@import", "<link", "<script"] {
        assert!(!page.contains(needle), "{needle} in the page");
    }
    assert_eq!(page.matches("<rect class=\"drops\"").count(), 2, "one bar per reason and minute");
    let text = text::render(&report).join("\n");
    assert!(text.contains("Coverage: INCOMPLETE"), "{text}");
    assert!(text.contains("to now: not journaled: its loader is not running"), "{text}");
}

#[test]
fn an_automatic_blocks_evidence_is_named_in_every_rendering_and_a_deleted_one_said_so() {
    let window = Window { since: at(0), until: at(600) };
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("20261202T081512.345Z-203.0.113.8.pcap");
    std::fs::write(&kept, b"").unwrap();
    let gone = dir.path().join("20261202T080000.000Z-203.0.113.9.pcap");
    let mut blocks = Vec::new();
    for (secs, source, file) in [(100, "203.0.113.8", &kept), (200, "203.0.113.9", &gone)] {
        let mut block = record(secs, EventType::AutoBlocked);
        block.source = Some(source.parse().unwrap());
        block.reason = Some("scan".into());
        block.evidence = Some(file.display().to_string());
        blocks.push(block);
    }
    let report = build(&[reading(blocks, Vec::new())], &window);
    let evidence: Vec<(&str, bool)> =
        report.blocks.iter().filter_map(|b| b.evidence.as_ref()).map(|e| (e.path.as_str(), e.kept)).collect();
    assert_eq!(evidence, [(kept.to_str().unwrap(), true), (gone.to_str().unwrap(), false)]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["blocks"][0]["evidence"]["path"], kept.to_str().unwrap());
    let text = text::render(&report).join("\n");
    assert!(text.contains(&format!(
        "203.0.113.8 at {}: {}",
        report.blocks[0].at.as_ref().unwrap(),
        kept.display()
    )));
    assert!(text.contains(&format!("{} (deleted since", gone.display())), "{text}");
    let page = html::render(&report).unwrap();
    assert!(page.contains(&format!("<code>{}</code>", kept.display())), "the page names the file");
    assert!(page.contains("deleted since ([evidence] total_kib)"));
}

#[test]
fn anomalies_are_listed_marked_and_counted_in_every_rendering() {
    let tunnel = crate::baseline::Anomaly {
        port: crate::baseline::PortKey { proto: crate::policy::Proto::Udp, port: 53 },
        measure: crate::baseline::Measure::SourceBytes,
        observed: 2_100_000,
        expected: 4_000.0,
        threshold: 16_000.0,
        compared_with: "Wed 09:00-10:00".into(),
        source: Some("198.51.100.0/24".parse().unwrap()),
    };
    let mut records = incident();
    records.push(tunnel.record(at(400), "eth0"));
    let report = build(&[reading(records, Vec::new())], &Window { since: at(0), until: at(3600) });
    assert_eq!(report.totals.anomalies, 1);
    let row = &report.anomalies[0];
    assert_eq!((row.port.as_str(), row.measure.as_str()), ("udp/53", "source_bytes"));
    assert_eq!((row.observed, row.expected), (Some(2_100_000), Some(4_000)));
    assert_eq!(row.source.as_deref(), Some("198.51.100.0/24"));
    assert!(report.timeline.marks.iter().any(|m| m.kind == "anomaly"), "{:?}", report.timeline.marks);
    let text = text::render(&report).join("\n");
    assert!(text.contains("Anomalies (ports that departed from their baselines):"), "{text}");
    assert!(
        text.contains("udp/53: source_bytes 2,100,000 per minute from 198.51.100.0/24, normally 4,000"),
        "{text}"
    );
    let page = html::render(&report).unwrap();
    assert!(
        page.contains("<section id=\"anomalies\">") && page.contains("<code>198.51.100.0/24</code>"),
        "{page}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["anomalies"][0]["compared_with"], "Wed 09:00-10:00");
}

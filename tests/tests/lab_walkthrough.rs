//! The README's walkthrough ("A first week in ten minutes"), step by step as a new user runs it
//! with `cargo xtask demo --walkthrough`: monitor mode with real clients and a scanner,
//! `learn`, `check`, the hand edits the README shows, `reload` and `confirm`, every client
//! still admitted and the scanner blocked with its first packets kept, the evidence replayed
//! by `verify`, a DNS tunnel reported against its baseline, and the report naming it all.
//! About three minutes: a baseline's unit is a real minute.

use portguard_tests::{require_root, require_tools, walkthrough};

#[test]
fn the_readme_walkthrough_does_what_the_readme_says() {
    require_root!();
    require_tools!("nmap");
    let dir = tempfile::Builder::new().prefix("pgt-walkthrough-").tempdir().unwrap();
    let outcome = walkthrough::run(dir.path()).unwrap();
    assert!(
        outcome.unexpected.is_empty(),
        "steps that did not do what the README says: {:#?}",
        outcome.unexpected
    );

    // What the reader is told to open is there.
    let html = std::fs::read_to_string(&outcome.report_html).expect("the HTML report was written");
    assert!(html.contains("<svg"), "the report has its chart");
    let evidence = outcome.evidence.expect("the scanner's block names its evidence");
    // A pcap header (24 bytes) and at least one packet record after it.
    let size = std::fs::metadata(&evidence).expect("the evidence file is kept").len();
    assert!(size > 24 + 16, "the evidence holds packets: {size} bytes");
    assert!(html.contains(&evidence.display().to_string()), "the HTML report names the evidence");
    let anomaly = outcome.anomaly.expect("the tunnel's anomaly");
    assert_eq!(anomaly["protocol"], "udp", "{anomaly}");
    // The proposal the reader gets opened the clients' ports, and only to their networks.
    assert!(
        outcome.proposal.contains("from = [\"198.51.100.0/24\", \"2001:db8:1::/64\"]"),
        "{}",
        outcome.proposal
    );
    assert!(
        std::fs::read_to_string(outcome.dir.join("proposed.toml")).unwrap().contains("action = \"block\"")
    );
}

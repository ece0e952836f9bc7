//! The baselines driven by a synthetic clock: weeks of minutes in milliseconds.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use super::*;

const DNS: PortKey = PortKey { proto: Proto::Udp, port: 53 };
const MYSQL: PortKey = PortKey { proto: Proto::Tcp, port: 3306 };
const SMB: PortKey = PortKey { proto: Proto::Tcp, port: 445 };

/// Monday 2026-11-30 00:00 UTC.
const MONDAY: u64 = 1_795_996_800;

struct Clock {
    baselines: Baselines,
    settings: AnomalyDetection,
    minute: u64,
}

impl Clock {
    fn new() -> Self {
        Self { baselines: Baselines::default(), settings: AnomalyDetection::default(), minute: 0 }
    }

    fn at(&self) -> (SystemTime, HourOfWeek) {
        let unix = MONDAY + self.minute * 60;
        (SystemTime::UNIX_EPOCH + Duration::from_secs(unix), HourOfWeek::utc(unix))
    }

    /// Runs `minutes` minutes, each seen by `traffic` (given the hour of the week), and returns
    /// every anomaly reported.
    fn run(
        &mut self,
        minutes: u64,
        traffic: impl Fn(HourOfWeek) -> BTreeMap<PortKey, PortMinute>,
    ) -> Vec<Anomaly> {
        let mut found = Vec::new();
        for _ in 0..minutes {
            let (at, hour) = self.at();
            found.extend(self.baselines.observe(at, hour, &traffic(hour), &self.settings));
            self.minute += 1;
        }
        found
    }
}

fn dns_clients(sources: u64, bytes: u64) -> PortMinute {
    PortMinute {
        new_connections: sources * 10,
        sources,
        bytes: sources * bytes,
        drops: 0,
        accepted_packets: sources * 10,
        busiest_source: Some(("198.51.100.7/32".parse().unwrap(), bytes * 2)),
    }
}

fn one(port: PortKey, minute: PortMinute) -> BTreeMap<PortKey, PortMinute> {
    BTreeMap::from([(port, minute)])
}

#[test]
fn nothing_is_reported_during_the_warm_up() {
    let mut clock = Clock::new();
    // A busy port appears in the first minute: no baseline to compare it with yet.
    assert!(
        clock
            .run(59, |_| one(MYSQL, PortMinute { new_connections: 500, sources: 50, ..Default::default() }))
            .is_empty()
    );
    assert!(clock.baselines.summary(&clock.settings).warming_up);
}

#[test]
fn a_steady_port_is_quiet_and_a_flood_of_new_sources_is_reported() {
    let mut clock = Clock::new();
    let normal =
        |_| one(MYSQL, PortMinute { new_connections: 40, sources: 4, bytes: 400_000, ..Default::default() });
    assert!(clock.run(3 * 60, normal).is_empty(), "steady traffic is normal");
    let found = clock.run(1, |_| {
        one(MYSQL, PortMinute { new_connections: 900, sources: 300, bytes: 400_000, ..Default::default() })
    });
    let measures: Vec<_> = found.iter().map(|a| a.measure).collect();
    assert_eq!(measures, [Measure::NewConnections, Measure::Sources], "{found:?}");
    let sources = &found[1];
    assert_eq!(sources.observed, 300);
    assert!((sources.expected - 4.0).abs() < 0.5, "{sources:?}");
    assert_eq!(sources.compared_with, "all hours", "no earlier Monday to compare with");
    assert_eq!(
        sources.describe(),
        "ANOMALY tcp/3306: sources 300 per minute, normally 4 (all hours; departs above 16)"
    );
}

#[test]
fn a_silent_port_that_suddenly_gets_traffic_is_reported() {
    let mut clock = Clock::new();
    clock.run(120, |_| one(MYSQL, PortMinute { new_connections: 40, sources: 4, ..Default::default() }));
    // Port 445 never carried anything: from inside, something starts talking SMB.
    let found = clock.run(1, |_| {
        let mut minute = one(MYSQL, PortMinute { new_connections: 40, sources: 4, ..Default::default() });
        minute
            .insert(SMB, PortMinute { new_connections: 60, sources: 12, bytes: 5000, ..Default::default() });
        minute
    });
    assert_eq!(
        found.iter().map(|a| (a.port, a.measure)).collect::<Vec<_>>(),
        [(SMB, Measure::NewConnections), (SMB, Measure::Sources)]
    );
    assert!(found.iter().all(|a| a.expected == 0.0));
    assert!(clock.baselines.tracks(SMB), "445 has a baseline of its own now");
}

#[test]
fn one_source_tunnelling_through_dns_is_reported_with_its_address() {
    let mut clock = Clock::new();
    clock.run(180, |_| one(DNS, dns_clients(20, 2_000)));
    let mut tunnel = dns_clients(20, 2_000);
    tunnel.busiest_source = Some(("198.51.100.66/32".parse().unwrap(), 6_000_000));
    tunnel.bytes += 6_000_000;
    let found = clock.run(1, |_| one(DNS, tunnel.clone()));
    let by_source: Vec<_> = found.iter().filter(|a| a.measure == Measure::SourceBytes).collect();
    assert_eq!(by_source.len(), 1, "{found:?}");
    assert_eq!(by_source[0].source, Some("198.51.100.66/32".parse().unwrap()));
    assert_eq!(by_source[0].observed, 6_000_000);
}

#[test]
fn monday_morning_is_compared_with_monday_mornings() {
    let mut clock = Clock::new();
    // Busy on weekdays 9-17, quiet otherwise, for two weeks.
    let office = |hour: HourOfWeek| {
        let (day, h) = (hour.index() / 24, hour.index() % 24);
        let busy = day < 5 && (9..17).contains(&h);
        one(
            MYSQL,
            PortMinute {
                new_connections: if busy { 600 } else { 5 },
                sources: if busy { 80 } else { 2 },
                ..Default::default()
            },
        )
    };
    let found = clock.run(2 * 7 * 24 * 60, office);
    // The first Monday at 9:00 departs from the quiet night (all hours); after that, each
    // busy hour is compared with its own earlier weeks, and is normal.
    assert!(!found.is_empty());
    assert!(found.iter().all(|a| a.compared_with == "all hours"), "{found:?}");
    // To Sunday 03:00 of week three: normal throughout.
    assert!(clock.run(6 * 24 * 60 + 3 * 60, office).is_empty());
    // A weekday's burst on a Sunday night departs from Sunday nights.
    let found =
        clock.run(1, |_| one(MYSQL, PortMinute { new_connections: 600, sources: 80, ..Default::default() }));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|a| a.compared_with == "Sun 03:00-04:00"), "{found:?}");
}

#[test]
fn one_report_per_port_and_measure_per_alert_every() {
    let mut clock = Clock::new();
    clock.run(120, |_| one(MYSQL, PortMinute { new_connections: 40, sources: 4, ..Default::default() }));
    let flood =
        |_| one(MYSQL, PortMinute { new_connections: 40, sources: 4, drops: 50_000, ..Default::default() });
    let found = clock.run(10, flood);
    assert_eq!(found.len(), 1, "ten minutes of drops, one report: {found:?}");
    assert_eq!(found[0].measure, Measure::Drops);
    let summary = clock.baselines.summary(&clock.settings);
    assert!(summary.anomalies_quiet >= 1, "{summary:?}");
    assert_eq!(summary.anomalies, summary.anomalies_quiet + 1);
}

#[test]
fn a_scans_one_probe_per_port_tracks_no_ports() {
    let mut clock = Clock::new();
    let scan: BTreeMap<_, _> = (1..=5000)
        .map(|port| (PortKey { proto: Proto::Tcp, port }, PortMinute { drops: 1, ..Default::default() }))
        .collect();
    clock.run(1, |_| scan.clone());
    assert_eq!(clock.baselines.summary(&clock.settings).ports_tracked, 0);
}

#[test]
fn a_scan_accepted_in_monitor_mode_leaves_room_for_the_ports_in_use() {
    // Monitor mode accepts a scan's probe of every port (one SYN each); a DNS client asks in
    // the same minute. The probes get no baselines, so they cannot take DNS's place.
    let mut clock = Clock::new();
    clock.settings.max_ports = 16;
    let probe = PortMinute { new_connections: 1, bytes: 58, accepted_packets: 1, ..Default::default() };
    let mut minute: BTreeMap<_, _> =
        (1..=1024).map(|port| (PortKey { proto: Proto::Tcp, port }, probe.clone())).collect();
    minute.insert(DNS, dns_clients(1, 6000));
    clock.run(1, |_| minute.clone());
    assert!(clock.baselines.tracks(DNS));
    assert_eq!(clock.baselines.summary(&clock.settings).ports_tracked, 1);
    assert_eq!(clock.baselines.summary(&clock.settings).ports_untracked, 0);
}

#[test]
fn when_ports_fill_the_table_the_busiest_get_baselines() {
    let mut clock = Clock::new();
    clock.settings.max_ports = 1;
    let quiet = PortMinute { new_connections: 2, bytes: 120, accepted_packets: 2, ..Default::default() };
    let mut minute = one(PortKey { proto: Proto::Tcp, port: 1 }, quiet);
    minute.insert(DNS, dns_clients(3, 6000));
    clock.run(1, |_| minute.clone());
    assert!(clock.baselines.tracks(DNS));
    assert_eq!(clock.baselines.summary(&clock.settings).ports_untracked, 1);
}

#[test]
fn an_anomaly_reports_its_floor_as_the_threshold_when_the_floor_is_higher() {
    // A quiet DNS port: its baseline threshold is far below the floor, so the floor is what
    // the tunnel had to pass, and what the event says.
    let mut clock = Clock::new();
    clock.run(60, |_| one(DNS, dns_clients(1, 100)));
    let floor = u64::from(clock.settings.min_source_bytes);
    let found = clock.run(1, |_| one(DNS, dns_clients(1, floor * 2)));
    let tunnel = found.iter().find(|a| a.measure == Measure::SourceBytes).expect("the tunnel departs");
    assert!((tunnel.threshold - floor as f64).abs() < 0.5, "{tunnel:?}");
    assert!(tunnel.expected > 0.0 && tunnel.expected < 1000.0, "{tunnel:?}");
    // At the floor itself nothing departs.
    let mut clock = Clock::new();
    clock.run(60, |_| one(DNS, dns_clients(1, 100)));
    // (`dns_clients`' busiest source sends twice its `bytes`.)
    let found = clock.run(1, |_| one(DNS, dns_clients(1, floor / 2)));
    assert!(found.iter().all(|a| a.measure != Measure::SourceBytes), "{found:?}");
}

#[test]
fn ports_past_max_ports_are_counted_and_judged_against_silence() {
    let mut clock = Clock::new();
    clock.settings.max_ports = 1;
    let two = |_| {
        let mut minute = one(MYSQL, PortMinute { new_connections: 40, sources: 4, ..Default::default() });
        minute.insert(DNS, dns_clients(2, 100));
        minute
    };
    clock.run(61, two);
    let summary = clock.baselines.summary(&clock.settings);
    assert_eq!(summary.ports_tracked, 1);
    assert!(summary.ports_untracked > 0);
}

#[test]
fn baselines_survive_a_save_and_load() {
    let mut clock = Clock::new();
    clock.run(90, |_| one(MYSQL, PortMinute { new_connections: 40, sources: 4, ..Default::default() }));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eth0.baseline.json");
    clock.baselines.save(&path).unwrap();
    let mut loaded = Baselines::load(&path).unwrap();
    assert_eq!(loaded.summary(&clock.settings).minutes_observed, 90);
    let (at, hour) = clock.at();
    let found = loaded.observe(
        at,
        hour,
        &one(MYSQL, PortMinute { new_connections: 900, sources: 4, ..Default::default() }),
        &clock.settings,
    );
    assert_eq!(found.len(), 1, "the loaded baseline still knows 40/min is normal: {found:?}");
    // A damaged file is an error, not weeks silently forgotten.
    std::fs::write(&path, b"{ not json").unwrap();
    assert!(Baselines::load(&path).is_err());
    assert_eq!(
        Baselines::load(&dir.path().join("absent.json")).unwrap().summary(&clock.settings).minutes_observed,
        0
    );
}

mod between_snapshots {
    use crate::portstats::{PortUse, Snapshot, SourceUse, Traffic};

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(MONDAY + secs)
    }

    fn traffic(packets: u64, bytes: u64, connections: u64) -> Traffic {
        Traffic { packets, bytes, connections }
    }

    fn source(protocol: Proto, port: u16, network: &str, bytes: u64, last_seen: u64) -> SourceUse {
        SourceUse {
            protocol,
            port,
            network: network.parse().unwrap(),
            connections: 1,
            refused: 0,
            bytes,
            first_seen: at(0),
            last_seen: at(last_seen),
        }
    }

    fn snapshot(taken: u64, ports: Vec<PortUse>, sources: Vec<SourceUse>) -> Snapshot {
        Snapshot {
            taken_at: at(taken),
            since: Some(at(0)),
            ports,
            sources,
            source_capacity: 1024,
            sources_added: 0,
        }
    }

    #[test]
    fn a_minute_is_what_grew_between_two_snapshots() {
        let ssh = |accepted, refused| PortUse { protocol: Proto::Tcp, port: 22, accepted, refused };
        let earlier = snapshot(
            60,
            vec![ssh(traffic(10, 1000, 2), Traffic::default())],
            vec![source(Proto::Tcp, 22, "198.51.100.0/24", 100, 50)],
        );
        let later = snapshot(
            120,
            vec![
                ssh(traffic(30, 5000, 7), traffic(5, 300, 5)),
                PortUse {
                    protocol: Proto::Udp,
                    port: 53,
                    accepted: traffic(9, 9000, 9),
                    refused: Traffic::default(),
                },
            ],
            vec![
                // Not seen since the earlier snapshot: not a source of this minute.
                source(Proto::Tcp, 22, "198.51.100.0/24", 100, 50),
                source(Proto::Tcp, 22, "203.0.113.0/24", 600, 115),
                source(Proto::Udp, 53, "198.51.101.0/24", 9000, 118),
            ],
        );
        let minute = minute_between(&earlier, &later);
        let ssh = &minute[&PortKey { proto: Proto::Tcp, port: 22 }];
        assert_eq!((ssh.new_connections, ssh.bytes, ssh.drops, ssh.sources), (5, 4000, 5, 1));
        assert_eq!(ssh.busiest_source, Some(("203.0.113.0/24".parse().unwrap(), 600)));
        let dns = &minute[&DNS];
        assert_eq!((dns.new_connections, dns.bytes, dns.sources), (9, 9000, 1));
        assert_eq!(dns.busiest_source, Some(("198.51.101.0/24".parse().unwrap(), 9000)));
    }

    #[test]
    fn a_source_that_sent_again_counts_only_what_it_added() {
        let earlier = snapshot(60, vec![], vec![source(Proto::Udp, 53, "198.51.100.0/24", 5000, 59)]);
        let later = snapshot(120, vec![], vec![source(Proto::Udp, 53, "198.51.100.0/24", 5600, 110)]);
        let minute = minute_between(&earlier, &later);
        assert_eq!(minute[&DNS].busiest_source, Some(("198.51.100.0/24".parse().unwrap(), 600)));
    }
}

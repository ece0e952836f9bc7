//! What is normal for each port, and what departs from it.
//!
//! Every minute the loader hands [`Baselines::observe`] what each port saw in that minute (new
//! connections, distinct sources, bytes, drops, and the most any one source sent). Each port
//! keeps, per measure, a running mean and mean deviation for every hour of the week (Monday
//! 9:00 is compared with Mondays at 9:00) and one over all hours. A minute is an anomaly when a
//! measure is above its floor and above both `factor` times the mean and the mean plus four
//! deviations, once the baseline has seen enough minutes (the warm-up).
//!
//! Only ports used beyond a probe, or with a measure at its floor, are tracked: a scan's one
//! probe to each of thousands of ports is not a baseline, even where monitor mode accepts it. A port seen for the first time was silent
//! in every minute observed before: it starts with that many minutes of zeros, so a silent port
//! that suddenly gets traffic stands out. The clock is a parameter, so tests can drive weeks of
//! minutes in milliseconds.

mod follow;
mod hour;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use follow::{MINUTE, Sampler, minute_between};
pub use hour::HourOfWeek;

use crate::{
    events::{EventRecord, EventType},
    policy::{AnomalyDetection, Proto},
};

/// The measures a port's baseline keeps, per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Connections opened (TCP SYNs, UDP datagrams from a new source) and accepted.
    NewConnections,
    /// Distinct source networks that sent to the port.
    Sources,
    /// Bytes accepted.
    Bytes,
    /// Packets dropped (or that would have been, in monitor mode).
    Drops,
    /// The bytes the busiest single source network sent (one client tunnelling through DNS).
    SourceBytes,
}

impl Measure {
    pub const ALL: [Self; 5] =
        [Self::NewConnections, Self::Sources, Self::Bytes, Self::Drops, Self::SourceBytes];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NewConnections => "new_connections",
            Self::Sources => "sources",
            Self::Bytes => "bytes",
            Self::Drops => "drops",
            Self::SourceBytes => "source_bytes",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// A protocol and port, written `tcp/22` in the saved baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub proto: Proto,
    pub port: u16,
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

impl std::str::FromStr for PortKey {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (proto, port) = text.split_once('/').ok_or_else(|| format!("{text:?} is not proto/port"))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => return Err(format!("unknown protocol {other:?}")),
        };
        Ok(Self { proto, port: port.parse().map_err(|_| format!("{port:?} is not a port"))? })
    }
}

impl Serialize for PortKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What one port saw in one minute.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortMinute {
    pub new_connections: u64,
    pub sources: u64,
    pub bytes: u64,
    pub drops: u64,
    /// Packets accepted (not a measure: it tells use from a probe).
    pub accepted_packets: u64,
    /// The source network that sent the most bytes, and how many.
    pub busiest_source: Option<(IpNet, u64)>,
}

impl PortMinute {
    fn value(&self, measure: Measure) -> u64 {
        match measure {
            Measure::NewConnections => self.new_connections,
            Measure::Sources => self.sources,
            Measure::Bytes => self.bytes,
            Measure::Drops => self.drops,
            Measure::SourceBytes => self.busiest_source.map_or(0, |(_, bytes)| bytes),
        }
    }

    /// Traffic the port accepted: its last use.
    fn accepted_any(&self) -> bool {
        self.new_connections > 0 || self.bytes > 0
    }

    /// Accepted use beyond a probe, reason enough to learn what is normal for the port: a
    /// second new connection, or packets past the first (a handshake's next ones). A scan's
    /// one probe per port is not, also in monitor mode where the policy accepts it.
    fn used(&self) -> bool {
        self.new_connections >= 2 || self.accepted_packets > self.new_connections
    }
}

/// A running mean and mean absolute deviation: a plain average over the first `memory`
/// minutes, then exponentially weighted so that old weeks fade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Running {
    minutes: u32,
    mean: f64,
    deviation: f64,
}

impl Running {
    fn learn(&mut self, value: f64, memory: u32) {
        self.minutes = self.minutes.saturating_add(1);
        let weight = 1.0 / f64::from(self.minutes.min(memory));
        let delta = value - self.mean;
        self.mean += weight * delta;
        self.deviation += weight * (delta.abs() - self.deviation);
    }

    /// The least value that departs: above `factor` times the mean and above the mean plus
    /// four deviations (a steady port has a small deviation, a bursty one a large one).
    fn threshold(&self, factor: f64) -> f64 {
        (self.mean * factor).max(self.mean + 4.0 * self.deviation)
    }
}

/// One measure's baselines: per hour of the week, and over all hours.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MeasureBaseline {
    all_hours: Running,
    /// Keyed by hour of the week (0: Monday 00:00-01:00); absent: never observed.
    by_hour: BTreeMap<u8, Running>,
}

/// Minutes an hour-of-the-week baseline remembers: about four weeks of that hour.
const HOUR_MEMORY: u32 = 4 * 60;
/// Minutes the all-hours baseline remembers: about a day.
const ALL_HOURS_MEMORY: u32 = 24 * 60;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PortBaseline {
    /// Indexed by `Measure::index`.
    measures: Vec<MeasureBaseline>,
    /// Unix seconds of the first and the last minute with traffic.
    first_seen: u64,
    last_seen: u64,
}

/// One departure from a baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub port: PortKey,
    pub measure: Measure,
    pub observed: u64,
    /// The baseline's mean for this minute.
    pub expected: f64,
    /// The least value that counted as departing.
    pub threshold: f64,
    /// Which baseline it was compared with: `Mon 09:00-10:00` or `all hours`.
    pub compared_with: String,
    /// `source_bytes`: the source network that sent them.
    pub source: Option<IpNet>,
}

impl Anomaly {
    /// The `anomaly` event: `reason` names the measure.
    pub fn record(&self, time: SystemTime, interface: &str) -> EventRecord {
        let mut record = EventRecord::new(time, interface, EventType::Anomaly);
        record.protocol = Some(self.port.proto.to_string());
        record.destination_port = Some(self.port.port);
        record.reason = Some(self.measure.name().to_string());
        if let Some(net) = self.source {
            record.source = Some(net.addr());
            record.prefix_len = (net.prefix_len() != net.max_prefix_len()).then_some(net.prefix_len());
        }
        record.observed = Some(self.observed);
        record.expected = Some(self.expected.round() as u64);
        record.threshold = Some(self.threshold.ceil() as u64);
        record.compared_with = Some(self.compared_with.clone());
        record
    }

    /// For people: `ANOMALY udp/53: source_bytes 6,000,000 per minute from 198.51.100.66, normally
    /// 4,000 (Mon 09:00-10:00; departs above 16,000)`.
    pub fn describe(&self) -> String {
        self.record(SystemTime::UNIX_EPOCH, "").summary()
    }
}

/// What the baselines know, for `stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub minutes_observed: u64,
    pub ports_tracked: usize,
    /// Ports not tracked because `[anomaly] max_ports` were: they are still judged, against a
    /// baseline of silence.
    pub ports_untracked: u64,
    pub warming_up: bool,
    pub anomalies: u64,
    /// Anomalies not reported because the same port and measure was reported within
    /// `alert_every`.
    pub anomalies_quiet: u64,
    /// Why the loader could not read the last minute's statistics, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every port's baselines, as saved under the state directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Baselines {
    /// Minutes observed so far, in all and per hour of the week: a port first seen now was
    /// silent through all of them.
    minutes_observed: u64,
    minutes_by_hour: BTreeMap<u8, u32>,
    ports: BTreeMap<PortKey, PortBaseline>,
    #[serde(skip)]
    last_reported: HashMap<(PortKey, Measure), SystemTime>,
    #[serde(skip)]
    ports_untracked: std::collections::HashSet<PortKey>,
    #[serde(skip)]
    anomalies: u64,
    #[serde(skip)]
    anomalies_quiet: u64,
}

impl Baselines {
    /// Reads saved baselines; none saved: empty ones. A file that cannot be read is an error
    /// (the caller says so and starts afresh, rather than silently forgetting weeks).
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::state::write_atomically(path, &serde_json::to_vec(self)?)
    }

    pub fn summary(&self, settings: &AnomalyDetection) -> Summary {
        Summary {
            minutes_observed: self.minutes_observed,
            ports_tracked: self.ports.len(),
            ports_untracked: self.ports_untracked.len() as u64,
            warming_up: self.minutes_observed < u64::from(settings.warm_up_minutes()),
            anomalies: self.anomalies,
            anomalies_quiet: self.anomalies_quiet,
            error: None,
        }
    }

    /// Judges one minute (which ended at `at`, in hour `hour` of the week) against the
    /// baselines, then learns it. Ports absent from `minute` were silent. Returns the anomalies
    /// to report: at most one per port and measure per `alert_every`.
    pub fn observe(
        &mut self,
        at: SystemTime,
        hour: HourOfWeek,
        minute: &BTreeMap<PortKey, PortMinute>,
        settings: &AnomalyDetection,
    ) -> Vec<Anomaly> {
        let warm_up = settings.warm_up_minutes();
        let mut found = Vec::new();
        for (&port, seen) in minute {
            for measure in Measure::ALL {
                let observed = seen.value(measure);
                let floor = settings.floor(measure);
                if observed <= floor {
                    continue;
                }
                let Some((running, compared_with)) = self.reference(port, measure, hour, warm_up) else {
                    continue;
                };
                // The floor is part of the threshold the event reports.
                let threshold = running.threshold(settings.factor).max(floor as f64);
                if (observed as f64) > threshold {
                    found.push(Anomaly {
                        port,
                        measure,
                        observed,
                        expected: running.mean,
                        threshold,
                        compared_with,
                        source: (measure == Measure::SourceBytes)
                            .then(|| seen.busiest_source.map(|(net, _)| net))
                            .flatten(),
                    });
                }
            }
        }
        self.learn(at, hour, minute, settings);
        self.anomalies += found.len() as u64;
        let departed = found.len();
        found.retain(|anomaly| {
            let key = (anomaly.port, anomaly.measure);
            let quiet = self.last_reported.get(&key).is_some_and(|last| {
                at.duration_since(*last).unwrap_or(Duration::ZERO) < settings.alert_every
            });
            if !quiet {
                self.last_reported.insert(key, at);
            }
            !quiet
        });
        self.anomalies_quiet += (departed - found.len()) as u64;
        found
    }

    /// The baseline a measure is compared with: this hour of the week once it has seen
    /// `warm_up` minutes, else all hours once they have, else none (still warming up). A port
    /// never seen is silent in every minute observed so far.
    fn reference(
        &self,
        port: PortKey,
        measure: Measure,
        hour: HourOfWeek,
        warm_up: u32,
    ) -> Option<(Running, String)> {
        let silent = |minutes: u64| Running {
            minutes: u32::try_from(minutes).unwrap_or(u32::MAX),
            mean: 0.0,
            deviation: 0.0,
        };
        let (by_hour, all_hours) = match self.ports.get(&port) {
            Some(baseline) => {
                let of = &baseline.measures[measure.index()];
                (of.by_hour.get(&hour.index()).copied().unwrap_or_default(), of.all_hours)
            }
            None => (
                silent(u64::from(self.minutes_by_hour.get(&hour.index()).copied().unwrap_or(0))),
                silent(self.minutes_observed),
            ),
        };
        if by_hour.minutes >= warm_up {
            Some((by_hour, hour.describe()))
        } else if all_hours.minutes >= warm_up {
            Some((all_hours, "all hours".to_string()))
        } else {
            None
        }
    }

    fn learn(
        &mut self,
        at: SystemTime,
        hour: HourOfWeek,
        minute: &BTreeMap<PortKey, PortMinute>,
        settings: &AnomalyDetection,
    ) {
        let unix = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // New ports: those used beyond a probe or with a measure at its floor, the busiest
        // first, while there is room.
        let mut new_ports: Vec<(PortKey, &PortMinute)> = minute
            .iter()
            .filter(|(port, seen)| {
                !self.ports.contains_key(port)
                    && (seen.used() || Measure::ALL.iter().any(|&m| seen.value(m) >= settings.floor(m)))
            })
            .map(|(&port, seen)| (port, seen))
            .collect();
        new_ports.sort_by_key(|(_, seen)| std::cmp::Reverse((seen.bytes, seen.new_connections)));
        for (port, _) in new_ports {
            if self.ports.len() >= settings.max_ports as usize {
                self.ports_untracked.insert(port);
                continue;
            }
            let silent_hours = self
                .minutes_by_hour
                .iter()
                .map(|(&h, &minutes)| (h, Running { minutes, mean: 0.0, deviation: 0.0 }))
                .collect::<BTreeMap<_, _>>();
            let all_hours = Running {
                minutes: u32::try_from(self.minutes_observed).unwrap_or(u32::MAX),
                mean: 0.0,
                deviation: 0.0,
            };
            let measures = Measure::ALL
                .iter()
                .map(|_| MeasureBaseline { all_hours, by_hour: silent_hours.clone() })
                .collect();
            self.ports.insert(port, PortBaseline { measures, first_seen: unix, last_seen: unix });
        }
        let quiet = PortMinute::default();
        for (port, baseline) in &mut self.ports {
            let seen = minute.get(port).unwrap_or(&quiet);
            if seen.accepted_any() || seen.drops > 0 {
                baseline.last_seen = unix;
            }
            for measure in Measure::ALL {
                let value = seen.value(measure) as f64;
                let of = &mut baseline.measures[measure.index()];
                of.all_hours.learn(value, ALL_HOURS_MEMORY);
                of.by_hour.entry(hour.index()).or_default().learn(value, HOUR_MEMORY);
            }
        }
        self.minutes_observed += 1;
        *self.minutes_by_hour.entry(hour.index()).or_default() += 1;
    }

    /// Whether the port has a baseline of its own (it is not judged against silence).
    pub fn tracks(&self, port: PortKey) -> bool {
        self.ports.contains_key(&port)
    }
}

#[cfg(test)]
mod tests;

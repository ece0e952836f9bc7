//! The loader's side of the baselines: a snapshot of the kernel's per-port statistics every
//! minute, the minute between two snapshots judged and learned, the baselines saved.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use log::warn;

use super::{Baselines, HourOfWeek, PortKey, PortMinute, Summary};
use crate::{
    events::EventRecord,
    paths,
    policy::AnomalyDetection,
    portstats::{PortStatsMaps, Snapshot},
};

/// One minute: the baselines' unit.
pub const MINUTE: Duration = Duration::from_secs(60);
/// How often the baselines are written to disk (and when the loader stops).
const SAVE_EVERY: Duration = Duration::from_secs(600);

/// What happened at each port between two snapshots. A port's sources are the source networks
/// whose entries were last seen after `earlier` was taken; its busiest is the one whose bytes
/// grew most.
pub fn minute_between(earlier: &Snapshot, later: &Snapshot) -> BTreeMap<PortKey, PortMinute> {
    let mut minute: BTreeMap<PortKey, PortMinute> = BTreeMap::new();
    for port in later.ports_since(earlier) {
        minute.insert(
            PortKey { proto: port.protocol, port: port.port },
            PortMinute {
                new_connections: port.accepted.connections,
                bytes: port.accepted.bytes,
                drops: port.refused.packets,
                accepted_packets: port.accepted.packets,
                ..PortMinute::default()
            },
        );
    }
    let reset = later.since != earlier.since;
    let before: HashMap<_, u64> = earlier
        .sources
        .iter()
        .filter(|_| !reset)
        .map(|s| ((s.protocol, s.port, s.network), s.bytes))
        .collect();
    for source in later.sources.iter().filter(|s| s.last_seen > earlier.taken_at || reset) {
        let seen = minute.entry(PortKey { proto: source.protocol, port: source.port }).or_default();
        seen.sources += 1;
        let bytes = source.bytes.saturating_sub(
            before.get(&(source.protocol, source.port, source.network)).copied().unwrap_or(0),
        );
        if seen.busiest_source.is_none_or(|(_, most)| bytes > most) {
            seen.busiest_source = Some((source.network, bytes));
        }
    }
    minute
}

/// The baselines of one attachment, as its loader keeps them.
pub struct Follower {
    iface: String,
    path: PathBuf,
    baselines: Baselines,
    maps: Option<PortStatsMaps>,
    last: Option<Snapshot>,
    saved: Instant,
}

impl Follower {
    /// The saved baselines of `iface`, or empty ones (a damaged file is set aside and said).
    pub fn start(iface: &str) -> Self {
        let path = paths::baseline_file(iface);
        let baselines = Baselines::load(&path).unwrap_or_else(|error| {
            let aside = path.with_extension("json.damaged");
            let _ = std::fs::rename(&path, &aside);
            warn!("{error:#}: starting the baselines afresh (the old file is {})", aside.display());
            Baselines::default()
        });
        Self { iface: iface.to_owned(), path, baselines, maps: None, last: None, saved: Instant::now() }
    }

    /// One minute on: snapshots the statistics and, from the second snapshot on, judges and
    /// learns the minute in between. Returns the `anomaly` events to publish.
    pub fn minute(&mut self, settings: &AnomalyDetection) -> Result<Vec<EventRecord>> {
        if self.maps.is_none() {
            self.maps = Some(PortStatsMaps::open(&self.iface)?);
        }
        let snapshot = self.maps.as_ref().expect("opened above").snapshot()?;
        let at = snapshot.taken_at;
        let records = match self.last.replace(snapshot) {
            Some(earlier) => {
                let later = self.last.as_ref().expect("just set");
                let minute = minute_between(&earlier, later);
                let anomalies = self.baselines.observe(at, HourOfWeek::local(at), &minute, settings);
                anomalies.iter().map(|a| a.record(at, &self.iface)).collect()
            }
            None => Vec::new(),
        };
        if self.saved.elapsed() >= SAVE_EVERY {
            self.save();
        }
        Ok(records)
    }

    pub fn save(&mut self) {
        self.saved = Instant::now();
        if let Err(error) = self.baselines.save(&self.path) {
            warn!("saving the baselines: {error:#}");
        }
    }

    pub fn summary(&self, settings: &AnomalyDetection) -> Summary {
        self.baselines.summary(settings)
    }
}

/// The baselines across the loader's event loop: each minute's work runs on a worker thread
/// (reading the source table walks up to `[limits] port_sources` entries), one at a time.
pub struct Sampler {
    iface: String,
    idle: Option<Follower>,
    working: Option<tokio::task::JoinHandle<(Follower, Result<Vec<EventRecord>>)>>,
    next: Instant,
    /// Why the last minute could not be read, if it could not.
    error: Option<String>,
}

impl Sampler {
    pub fn new(iface: &str, settings: &AnomalyDetection) -> Self {
        Self {
            iface: iface.to_owned(),
            idle: settings.enabled.then(|| Follower::start(iface)),
            working: None,
            next: Instant::now(),
            error: None,
        }
    }

    /// Called every second or so: takes in a finished minute (its `anomaly` events and what the
    /// baselines know now, also written for `stats`) and starts the next one when it is due.
    pub async fn tick(&mut self, settings: &AnomalyDetection) -> (Vec<EventRecord>, Option<Summary>) {
        let mut records = Vec::new();
        let mut summary = None;
        if let Some(done) = self.working.take_if(|work| work.is_finished()) {
            match done.await {
                Ok((follower, result)) => {
                    match result {
                        Ok(found) => {
                            records = found;
                            self.error = None;
                        }
                        Err(error) => {
                            let error = format!("{error:#}");
                            if self.error.as_ref() != Some(&error) {
                                warn!("the baselines could not read this minute: {error}");
                            }
                            self.error = Some(error);
                        }
                    }
                    let mut known = follower.summary(settings);
                    known.error.clone_from(&self.error);
                    crate::state::record_status(
                        &paths::baseline_status(&self.iface),
                        &known,
                        "the baselines' status",
                    );
                    summary = Some(known);
                    self.idle = Some(follower);
                }
                Err(error) => warn!("the baselines' worker failed: {error}"),
            }
        }
        if self.working.is_none() && Instant::now() >= self.next {
            if let Some(mut follower) = self.idle.take() {
                self.next = Instant::now() + MINUTE;
                let settings = settings.clone();
                self.working = Some(tokio::task::spawn_blocking(move || {
                    let result = follower.minute(&settings);
                    (follower, result)
                }));
            }
        }
        (records, summary)
    }

    /// A reload may turn the baselines on or off: off saves them and stops sampling.
    pub async fn configure(&mut self, settings: &AnomalyDetection) {
        if settings.enabled && self.idle.is_none() && self.working.is_none() {
            self.idle = Some(Follower::start(&self.iface));
            self.next = Instant::now();
        } else if !settings.enabled {
            self.stop().await;
        }
    }

    /// Lets a running minute finish, then saves the baselines.
    pub async fn stop(&mut self) {
        if let Some(work) = self.working.take() {
            if let Ok((follower, _)) = work.await {
                self.idle = Some(follower);
            }
        }
        if let Some(mut follower) = self.idle.take() {
            follower.save();
        }
        let _ = std::fs::remove_file(paths::baseline_status(&self.iface));
    }
}

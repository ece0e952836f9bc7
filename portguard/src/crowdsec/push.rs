//! What portguard sees, the fleet blocks: its own automatic blocks (scans, trap ports) go to the
//! LAPI as alerts, each carrying a ban decision of the block's duration, so every bouncer of
//! the LAPI (other portguards, CrowdSec's own) drops the source too. The event path only hands
//! a block to a bounded queue (never waits); a thread of its own logs in as the machine
//! (`/v1/watchers/login`), posts the alerts (`/v1/alerts`) in batches and retries with a
//! growing wait, keeping what is not sent yet (up to `MAX_PENDING`; beyond, alerts are counted
//! as unsent and dropped).

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, anyhow};
use ipnet::IpNet;
use log::{info, warn};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::pull::{PullStatus, backoff};
use crate::{
    events::{EventRecord, EventType},
    lock,
    metrics::LoaderCounts,
    policy::{CrowdSec, crowdsec::Machine},
};

/// Scenario names, as the LAPI and `cscli alerts list` show them.
pub const SCENARIO_SCAN: &str = "portguard/port-scan";
pub const SCENARIO_SLOW_SCAN: &str = "portguard/slow-scan";
pub const SCENARIO_TRAP: &str = "portguard/trap-port";
/// `[brute_force]`: a rule's rate limit or connection cap refused the source too often; a
/// repeat offender's longer block keeps the name of the limit.
pub const SCENARIO_RATE_LIMIT: &str = "portguard/rate-limit";
pub const SCENARIO_CONNECTION_LIMIT: &str = "portguard/connection-limit";

/// Alerts waiting for the pusher thread (the event path never waits on a full queue).
const QUEUE: usize = 1024;
/// Alerts kept for a retry while the LAPI does not take them.
const MAX_PENDING: usize = 4096;
/// Alerts per request.
const BATCH: usize = 100;
/// Sources whose last scan sample is remembered until their block comes.
const SAMPLES_KEPT: usize = 4096;

/// How the pushes go (in `stats` and `/metrics` with the pulls).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStatus {
    /// The machine login.
    pub machine: String,
    /// Alerts the LAPI took.
    pub pushed: u64,
    /// Alerts waiting to be sent (again).
    pub pending: u64,
    /// Alerts dropped unsent (queue full, or still unsent when the loader stopped).
    pub unsent: u64,
    /// Requests that failed.
    pub errors: u64,
    pub last_error: Option<String>,
}

/// One automatic block, as it goes to the LAPI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockAlert {
    pub scenario: &'static str,
    pub source: IpNet,
    pub seconds: u64,
    /// The ports that made it: a scan's sample, or the trap port.
    pub ports: Vec<u16>,
    /// For people: `syn scan of 20 ports`, `tcp/23`.
    pub message: String,
    pub at: SystemTime,
    pub interface: String,
}

/// The alert an event stands for, if it is an enforced automatic block; remembers scans'
/// port samples (the block event that follows a scan carries only the count).
pub fn alert_of(record: &EventRecord, samples: &mut BTreeMap<IpAddr, Vec<u16>>) -> Option<BlockAlert> {
    if record.monitored() {
        return None;
    }
    let source = record.source?;
    let net = IpNet::new(source, record.prefix_len.unwrap_or(if source.is_ipv4() { 32 } else { 128 }))
        .ok()?
        .trunc();
    let at = humantime::parse_rfc3339(&record.time).unwrap_or_else(|_| SystemTime::now());
    let alert = |scenario, ports: Vec<u16>, message: String| BlockAlert {
        scenario,
        source: net,
        seconds: record.block_seconds.unwrap_or(0).max(1),
        ports,
        message,
        at,
        interface: record.interface.clone(),
    };
    match (record.event, record.reason.as_deref()) {
        (EventType::ScanDetected, _) => {
            if samples.len() >= SAMPLES_KEPT {
                samples.clear();
            }
            samples.insert(source, record.ports_sample.clone().unwrap_or_default());
            None
        }
        (EventType::AutoBlocked, Some(cause @ ("scan" | "slow_scan"))) => {
            let ports = samples.remove(&source).unwrap_or_default();
            let kind = record.scan_kind.as_deref().unwrap_or("other");
            let count = record.distinct_ports.unwrap_or(0);
            let (scenario, what) = if cause == "slow_scan" {
                (SCENARIO_SLOW_SCAN, "slow scan")
            } else {
                (SCENARIO_SCAN, "scan")
            };
            Some(alert(scenario, ports, format!("{kind} {what} of {count} ports")))
        }
        (EventType::AutoBlocked, Some(cause @ ("rate_limit" | "connection_limit" | "recidive"))) => {
            let port = record.destination_port?;
            let protocol = record.protocol.clone().unwrap_or_default();
            let scenario = match record.limit.as_deref() {
                Some("connection_limit") => SCENARIO_CONNECTION_LIMIT,
                _ => SCENARIO_RATE_LIMIT,
            };
            let again = if cause == "recidive" { ", again (recidive)" } else { "" };
            let refused = record.count.unwrap_or(0);
            Some(alert(
                scenario,
                vec![port],
                format!("{refused} attempts to {protocol}/{port} refused by its limit{again}"),
            ))
        }
        (EventType::TrapHit, _) if record.action.as_deref() == Some("blocked") => {
            let port = record.destination_port?;
            let protocol = record.protocol.clone().unwrap_or_default();
            Some(alert(SCENARIO_TRAP, vec![port], format!("trap port {protocol}/{port} touched")))
        }
        _ => None,
    }
}

/// The LAPI's alert document for one block (`POST /v1/alerts` takes a list of them).
pub fn alert_json(alert: &BlockAlert, host: &str) -> serde_json::Value {
    let time = humantime::format_rfc3339_seconds(alert.at).to_string();
    let single = alert.source.prefix_len() == alert.source.max_prefix_len();
    let (scope, value) =
        if single { ("Ip", alert.source.addr().to_string()) } else { ("Range", alert.source.to_string()) };
    let ports = alert.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let meta = json!([
        { "key": "host", "value": host },
        { "key": "interface", "value": alert.interface },
        { "key": "ports", "value": ports },
    ]);
    let mut source = json!({ "scope": scope, "value": value });
    if single {
        source["ip"] = json!(value);
    } else {
        source["range"] = json!(value);
    }
    json!({
        "scenario": alert.scenario,
        "scenario_hash": "",
        "scenario_version": env!("CARGO_PKG_VERSION"),
        "message": format!("portguard on {host} ({}): {} from {value}, blocked for {}s", alert.interface, alert.message, alert.seconds),
        "events_count": 1,
        "start_at": time,
        "stop_at": time,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "events": [{ "timestamp": time, "meta": meta }],
        "meta": meta,
        "source": source,
        "decisions": [{
            "duration": format!("{}s", alert.seconds),
            "origin": "portguard",
            "scenario": alert.scenario,
            "scope": scope,
            "type": "ban",
            "value": value,
        }],
    })
}

/// The loader's side: offers blocks to the pusher thread, never waiting.
pub struct Pusher {
    queue: SyncSender<BlockAlert>,
    samples: Mutex<BTreeMap<IpAddr, Vec<u16>>>,
    counts: Arc<Mutex<LoaderCounts>>,
}

impl Pusher {
    pub fn start(
        config: &CrowdSec,
        machine: &Machine,
        counts: &Arc<Mutex<LoaderCounts>>,
        iface: &str,
    ) -> Self {
        let (queue, alerts) = std::sync::mpsc::sync_channel(QUEUE);
        {
            let mut counts = lock(counts);
            let status = counts.crowdsec.get_or_insert_with(PullStatus::default);
            status.push = Some(PushStatus { machine: machine.login.clone(), ..PushStatus::default() });
        }
        let worker = Worker {
            lapi: config.lapi.clone(),
            machine: machine.clone(),
            every: config.update_every,
            counts: counts.clone(),
            iface: iface.to_owned(),
        };
        let spawned =
            std::thread::Builder::new().name("crowdsec-push".into()).spawn(move || worker.run(&alerts));
        if let Err(error) = spawned {
            warn!("starting the CrowdSec push thread: {error}");
        }
        Self { queue, samples: Mutex::new(BTreeMap::new()), counts: counts.clone() }
    }

    /// Hands the block an event stands for (if any) to the pusher thread.
    pub fn offer(&self, record: &EventRecord) {
        let Some(alert) = alert_of(record, &mut lock(&self.samples)) else { return };
        match self.queue.try_send(alert) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                update(&self.counts, |push| push.unsent += 1);
            }
        }
    }
}

/// Changes the push counters (and rewrites the status file `stats` reads).
fn update(counts: &Mutex<LoaderCounts>, change: impl FnOnce(&mut PushStatus)) {
    let mut counts = lock(counts);
    if let Some(push) = counts.crowdsec.as_mut().and_then(|status| status.push.as_mut()) {
        change(push);
    }
}

struct Worker {
    lapi: String,
    machine: Machine,
    every: Duration,
    counts: Arc<Mutex<LoaderCounts>>,
    iface: String,
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

impl Worker {
    fn run(self, alerts: &Receiver<BlockAlert>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .timeout_connect(Some(Duration::from_secs(5)))
            .http_status_as_error(true)
            .user_agent(concat!("portguard/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let host = crate::system::host_name().unwrap_or_else(|| "unknown".into());
        let mut pending: VecDeque<BlockAlert> = VecDeque::new();
        let mut token: Option<(String, Instant)> = None;
        let mut failures = 0u32;
        let mut retry_at = Instant::now();
        loop {
            // Wait for a block, or until the next retry of what is pending.
            let next = if pending.is_empty() {
                alerts.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                alerts.recv_timeout(retry_at.saturating_duration_since(Instant::now()))
            };
            let stopping = match next {
                Ok(alert) => {
                    self.keep(&mut pending, alert);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            while let Ok(alert) = alerts.try_recv() {
                self.keep(&mut pending, alert);
            }
            if !pending.is_empty() && (Instant::now() >= retry_at || failures == 0) {
                let batch: Vec<serde_json::Value> =
                    pending.iter().take(BATCH).map(|alert| alert_json(alert, &host)).collect();
                match self.send(&agent, &mut token, &batch) {
                    Ok(()) => {
                        if failures > 0 {
                            info!("CrowdSec LAPI {} takes alerts again", self.lapi);
                        }
                        failures = 0;
                        pending.drain(..batch.len());
                        update(&self.counts, |push| {
                            push.pushed += batch.len() as u64;
                            push.last_error = None;
                        });
                    }
                    Err(error) => {
                        let message = format!("{error:#}");
                        failures = failures.saturating_add(1);
                        retry_at = Instant::now() + backoff(self.every, failures);
                        warn!(
                            "CrowdSec LAPI {}: sending {} alerts: {message} (kept, retrying)",
                            self.lapi,
                            pending.len()
                        );
                        update(&self.counts, |push| {
                            push.errors += 1;
                            push.last_error = Some(message);
                        });
                    }
                }
            }
            let left = pending.len() as u64;
            update(&self.counts, |push| push.pending = left);
            self.write_status();
            if stopping {
                update(&self.counts, |push| {
                    push.unsent += left;
                    push.pending = 0;
                });
                return;
            }
        }
    }

    fn keep(&self, pending: &mut VecDeque<BlockAlert>, alert: BlockAlert) {
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
            update(&self.counts, |push| push.unsent += 1);
        }
        pending.push_back(alert);
    }

    fn write_status(&self) {
        let status = lock(&self.counts).crowdsec.clone();
        if let Some(status) = status {
            status.write(&self.iface);
        }
    }

    /// Posts one batch, logging in first (and again when the token is refused or old).
    fn send(
        &self,
        agent: &ureq::Agent,
        token: &mut Option<(String, Instant)>,
        batch: &[serde_json::Value],
    ) -> Result<()> {
        // The LAPI's tokens last an hour; a fresh one well before that.
        if token.as_ref().is_none_or(|(_, at)| at.elapsed() > Duration::from_secs(30 * 60)) {
            *token = Some((self.login(agent)?, Instant::now()));
        }
        let bearer = format!("Bearer {}", token.as_ref().map(|(t, _)| t.as_str()).unwrap_or_default());
        let url = format!("{}/v1/alerts", self.lapi);
        let body = serde_json::to_vec(batch)?;
        match agent
            .post(&url)
            .header("Authorization", &bearer)
            .header("Content-Type", "application/json")
            .send(&body[..])
        {
            Ok(_) => Ok(()),
            Err(ureq::Error::StatusCode(401 | 403)) => {
                *token = None;
                Err(anyhow!("the LAPI refused the machine's token (logging in again)"))
            }
            Err(error) => Err(anyhow!("{error}")),
        }
    }

    fn login(&self, agent: &ureq::Agent) -> Result<String> {
        let password = String::from_utf8_lossy(self.machine.password.bytes()).into_owned();
        let body = json!({
            "machine_id": self.machine.login,
            "password": password,
            "scenarios": [SCENARIO_SCAN, SCENARIO_SLOW_SCAN, SCENARIO_TRAP],
        });
        let url = format!("{}/v1/watchers/login", self.lapi);
        let body = serde_json::to_vec(&body)?;
        let mut response = match agent.post(&url).header("Content-Type", "application/json").send(&body[..]) {
            Ok(response) => response,
            Err(ureq::Error::StatusCode(code @ (401 | 403))) => {
                return Err(anyhow!(
                    "the LAPI refused the machine login `{}` of {} (HTTP {code}): `cscli machines add NAME --password ... -f FILE` makes one",
                    self.machine.login,
                    self.machine.file.display()
                ));
            }
            Err(error) => return Err(anyhow!("logging in: {error}")),
        };
        let login: Login = serde_json::from_reader(response.body_mut().as_reader())
            .map_err(|error| anyhow!("reading the login answer: {error}"))?;
        Ok(login.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: EventType) -> EventRecord {
        let mut record =
            EventRecord::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000), "eth0", event);
        record.source = Some("192.0.2.66".parse().unwrap());
        record
    }

    #[test]
    fn scans_and_traps_become_alerts_with_a_ban_of_the_block_s_length() {
        let mut samples = BTreeMap::new();
        let mut scan = record(EventType::ScanDetected);
        scan.ports_sample = Some(vec![1025, 1219, 1153]);
        assert_eq!(alert_of(&scan, &mut samples), None, "a scan alone is not a block");
        let mut blocked = record(EventType::AutoBlocked);
        blocked.reason = Some("scan".into());
        blocked.scan_kind = Some("syn".into());
        blocked.distinct_ports = Some(20);
        blocked.block_seconds = Some(900);
        let alert = alert_of(&blocked, &mut samples).unwrap();
        assert_eq!(
            (alert.scenario, alert.ports.as_slice(), alert.seconds),
            (SCENARIO_SCAN, [1025, 1219, 1153].as_slice(), 900)
        );
        let document = alert_json(&alert, "edge-1");
        assert_eq!(document["decisions"][0]["duration"], "900s");
        assert_eq!(document["decisions"][0]["type"], "ban");
        assert_eq!(document["source"]["value"], "192.0.2.66");
        assert_eq!(document["source"]["scope"], "Ip");
        assert!(document["meta"].to_string().contains("1025,1219,1153"), "{document}");
        assert!(document["message"].as_str().unwrap().contains("syn scan of 20 ports"), "{document}");
        assert_eq!(document["start_at"], "2027-01-15T08:00:00Z");

        let mut trap = record(EventType::TrapHit);
        trap.action = Some("blocked".into());
        trap.destination_port = Some(23);
        trap.protocol = Some("tcp".into());
        trap.block_seconds = Some(3600);
        trap.source = Some("2001:db8:5::7".parse().unwrap());
        trap.prefix_len = Some(64);
        let alert = alert_of(&trap, &mut samples).unwrap();
        assert_eq!((alert.scenario, alert.ports.as_slice()), (SCENARIO_TRAP, [23].as_slice()));
        let document = alert_json(&alert, "edge-1");
        assert_eq!(
            (document["source"]["scope"].as_str(), document["source"]["range"].as_str()),
            (Some("Range"), Some("2001:db8:5::/64"))
        );

        // A brute-force block, and a repeat offender's, keep the limit's scenario.
        let mut limited = record(EventType::AutoBlocked);
        limited.reason = Some("recidive".into());
        limited.limit = Some("connection_limit".into());
        limited.destination_port = Some(22);
        limited.protocol = Some("tcp".into());
        limited.count = Some(10);
        limited.block_seconds = Some(1200);
        let alert = alert_of(&limited, &mut samples).unwrap();
        assert_eq!(
            (alert.scenario, alert.ports.as_slice(), alert.seconds),
            (SCENARIO_CONNECTION_LIMIT, [22].as_slice(), 1200)
        );
        assert_eq!(alert.message, "10 attempts to tcp/22 refused by its limit, again (recidive)");

        // Watched, not enforced: nothing to share.
        let mut monitored = blocked.clone();
        monitored.mode = Some(crate::policy::Mode::Monitor);
        assert_eq!(alert_of(&monitored, &mut samples), None);
        let mut alerting = trap.clone();
        alerting.action = Some("alert".into());
        assert_eq!(alert_of(&alerting, &mut samples), None);
    }
}

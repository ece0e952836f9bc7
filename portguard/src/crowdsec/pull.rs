//! The bouncer: follows the LAPI's `/v1/decisions/stream` (everything at the first pull, then
//! what changed), keeps the decisions in the state directory and in the kernel. Runs as its own
//! task of the loader; each pull (an HTTP request, a map update) runs on a worker thread, so a
//! LAPI that is down or slow holds up nothing else. After an error it waits longer each time
//! (up to `MAX_BACKOFF`) and asks for everything again, so no change is lost.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use super::decisions::{Changes, DecisionStore, StreamAnswer};
use crate::{
    blocks::BlockStore,
    lock,
    metrics::LoaderCounts,
    paths,
    policy::CrowdSec,
    state::{now_unix, read_status, record_status},
};

/// How the pulls went: `stats` reads it from the run directory, `/metrics` from the loader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullStatus {
    /// The LAPI's URL.
    pub lapi: String,
    /// Unix seconds of the last pull that succeeded (`None`: none yet).
    pub last_success: Option<u64>,
    /// Unix seconds of the last attempt.
    pub last_attempt: Option<u64>,
    /// Decisions in force now.
    pub decisions: usize,
    /// Pulls that failed since the loader started.
    pub errors: u64,
    /// Why the last attempt failed; `None` once one succeeds.
    pub last_error: Option<String>,
    /// Decisions not enforced because their type is not `ban`, by type, since the loader started.
    pub other_types: BTreeMap<String, u64>,
    /// How long the last full load (`startup`) took, fetch and kernel update, in milliseconds.
    pub full_load_ms: Option<u64>,
    /// With machine credentials: how the pushes of portguard's own blocks go.
    #[serde(default)]
    pub push: Option<super::push::PushStatus>,
}

impl PullStatus {
    /// What the loader of `iface` last wrote; `None` without `[crowdsec]` or a running loader.
    pub fn read(iface: &str) -> Option<Self> {
        read_status(&paths::crowdsec_status(iface))
    }

    pub(super) fn write(&self, iface: &str) {
        record_status(&paths::crowdsec_status(iface), self, "the CrowdSec pull status");
    }

    /// Seconds since the last successful pull.
    pub fn age(&self, now: u64) -> Option<u64> {
        self.last_success.map(|at| now.saturating_sub(at))
    }
}

/// Longest wait between attempts after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Largest answer read (100,000 decisions are about 25 MB).
const ANSWER_MAX: u64 = 1 << 30;
/// How long one request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The wait after `failures` errors in a row: `every`, doubled each time, at most `MAX_BACKOFF`
/// (never shorter than `every`).
pub fn backoff(every: Duration, failures: u32) -> Duration {
    let doubled = every.saturating_mul(1 << failures.min(16));
    doubled.min(MAX_BACKOFF).max(every)
}

/// Follows the LAPI for `iface` until the task is aborted (detach, or a reload that changes
/// `[crowdsec]`).
pub async fn follow(iface: String, config: CrowdSec, counts: Arc<Mutex<LoaderCounts>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .timeout_connect(Some(Duration::from_secs(5)))
        .http_status_as_error(true)
        .user_agent(concat!("portguard/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut status = PullStatus { lapi: config.lapi.clone(), ..PullStatus::default() };
    if let Ok(store) = DecisionStore::load(&iface) {
        status.decisions = store.decisions.len();
    }
    let mut startup = true;
    let mut failures = 0u32;
    let mut warned: BTreeSet<String> = BTreeSet::new();
    // Nothing needs the lock or the kernel before this (Unix seconds) unless the LAPI says so.
    let mut next_expiry: Option<u64> = None;
    loop {
        let started = Instant::now();
        let job = {
            let (agent, config, iface) = (agent.clone(), config.clone(), iface.clone());
            tokio::task::spawn_blocking(move || pull_once(&agent, &config, &iface, startup, next_expiry))
        };
        let outcome = job.await.unwrap_or_else(|error| Err(anyhow!("the pull stopped: {error}")));
        status.last_attempt = Some(now_unix());
        match outcome {
            Ok(pulled) => {
                if failures > 0 {
                    info!("CrowdSec LAPI {} answers again", config.lapi);
                }
                failures = 0;
                if startup {
                    status.full_load_ms = Some(started.elapsed().as_millis() as u64);
                    info!(
                        "CrowdSec: {} decisions in force from {} (loaded in {} ms)",
                        pulled.decisions,
                        config.lapi,
                        started.elapsed().as_millis()
                    );
                }
                startup = false;
                status.last_success = status.last_attempt;
                status.last_error = None;
                status.decisions = pulled.decisions;
                next_expiry = pulled.next_expiry;
                warn_about(&pulled.changes, &mut warned, &mut status);
            }
            Err(error) => {
                let message = format!("{error:#}");
                if status.last_error.as_ref() != Some(&message) {
                    warn!("CrowdSec LAPI {}: {message} (the decisions in force stay; retrying)", config.lapi);
                }
                failures = failures.saturating_add(1);
                status.errors += 1;
                status.last_error = Some(message);
                // What was sent may be lost: ask for everything next time.
                startup = true;
            }
        }
        // The pushes' counters are the pusher's: kept as they are.
        let snapshot = {
            let mut counts = lock(&counts);
            let push = counts.crowdsec.as_mut().and_then(|shared| shared.push.take());
            counts.crowdsec = Some(PullStatus { push, ..status.clone() });
            counts.crowdsec.clone()
        };
        if let Some(snapshot) = snapshot {
            snapshot.write(&iface);
        }
        let wait = if failures == 0 { config.update_every } else { backoff(config.update_every, failures) };
        tokio::time::sleep(wait).await;
    }
}

/// The follower of the running policy's `[crowdsec]`, if it has one: started with the
/// loader, started again when a reload changes the section, stopped with the loader. Shared
/// by the loader's event loop (`offer`) and its reloads (`update`), hence the lock inside.
#[derive(Default)]
pub struct Follower {
    inner: Mutex<Following>,
}

#[derive(Default)]
struct Following {
    running: Option<(CrowdSec, tokio::task::JoinHandle<()>)>,
    /// With machine credentials: sends portguard's own blocks to the LAPI.
    pusher: Option<super::push::Pusher>,
}

impl Follower {
    /// Follows `config` (nothing when `None`). Must run inside the loader's runtime.
    pub fn update(&self, iface: &str, config: Option<&CrowdSec>, counts: &Arc<Mutex<LoaderCounts>>) {
        let mut inner = lock(&self.inner);
        if inner.running.as_ref().map(|(running, _)| running) == config {
            return;
        }
        if let Some((_, task)) = inner.running.take() {
            task.abort();
        }
        // Dropping the pusher lets its thread send what it holds, then stop.
        inner.pusher = None;
        match config {
            Some(config) => {
                let task = tokio::spawn(follow(iface.to_owned(), config.clone(), counts.clone()));
                inner.running = Some((config.clone(), task));
                inner.pusher = config
                    .machine
                    .as_ref()
                    .map(|machine| super::push::Pusher::start(config, machine, counts, iface));
            }
            None => {
                lock(counts).crowdsec = None;
                let _ = std::fs::remove_file(paths::crowdsec_status(iface));
                let iface = iface.to_owned();
                // The decisions of a section taken out of the policy are lifted.
                tokio::task::spawn_blocking(move || restore_or_forget(&iface, false, |line| info!("{line}")));
            }
        }
    }

    /// Hands an event to the pusher (an enforced automatic block becomes an alert); never waits.
    pub fn offer(&self, record: &crate::events::EventRecord) {
        if let Some(pusher) = &lock(&self.inner).pusher {
            pusher.offer(record);
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some((_, task)) = lock(&self.inner).running.take() {
            task.abort();
        }
    }
}

/// At attach (and when a reload takes `[crowdsec]` out): the saved decisions are enforced
/// again while the policy follows a LAPI (the manual blocks' restore puts them in the kernel),
/// and forgotten (lifted) when it does not. Says what it did through `say`.
pub fn restore_or_forget(iface: &str, following: bool, say: impl Fn(&str)) {
    if following {
        match DecisionStore::load(iface) {
            Ok(mut store) => {
                let ended = store.prune(now_unix());
                if !store.decisions.is_empty() {
                    say(&format!(
                        "portguard: {} CrowdSec decisions restored from {} ({ended} ended meanwhile)",
                        store.decisions.len(),
                        paths::crowdsec_decisions(iface).display()
                    ));
                }
            }
            Err(error) => warn!("{error:#}"),
        }
        return;
    }
    match DecisionStore::forget(iface) {
        Ok(0) => {}
        Ok(lifted) => {
            say(&format!(
                "portguard: the policy has no [crowdsec]: lifted the {lifted} CrowdSec decisions kept for {iface}"
            ));
            if let Err(error) = BlockStore::edit(&[iface.to_owned()], |_| Ok(())) {
                warn!("lifting the CrowdSec decisions: {error:#}");
            }
        }
        Err(error) => warn!("{error:#}"),
    }
}

/// Counts what is not enforced, and says so once per decision type.
fn warn_about(changes: &Changes, warned: &mut BTreeSet<String>, status: &mut PullStatus) {
    for (kind, count) in &changes.other_types {
        *status.other_types.entry(kind.clone()).or_default() += count;
        if warned.insert(kind.clone()) {
            warn!(
                "CrowdSec sends \"{kind}\" decisions: portguard enforces only \"ban\"; they are counted \
                 (portguard_crowdsec_decisions_ignored_total) and ignored"
            );
        }
    }
    if let Some(example) = &changes.example_unreadable {
        warn!("CrowdSec: {} decisions could not be read and are ignored, e.g. {example}", changes.unreadable);
    }
}

/// What one pull left.
struct Pulled {
    changes: Changes,
    decisions: usize,
    next_expiry: Option<u64>,
}

/// One request to the stream, and its answer applied to the saved decisions and the kernel.
fn pull_once(
    agent: &ureq::Agent,
    config: &CrowdSec,
    iface: &str,
    startup: bool,
    next_expiry: Option<u64>,
) -> Result<Pulled> {
    let answer = fetch(agent, config, startup)?;
    let now = now_unix();
    let quiet =
        answer.new.as_ref().is_none_or(Vec::is_empty) && answer.deleted.as_ref().is_none_or(Vec::is_empty);
    if !startup && quiet && next_expiry.is_none_or(|at| at > now) {
        let decisions = DecisionStore::load(iface).map(|s| s.decisions.len()).unwrap_or_default();
        return Ok(Pulled { changes: Changes::default(), decisions, next_expiry });
    }
    // Under the manual blocks' lock: `block`, `unblock` and this never undo each other.
    BlockStore::edit(&[iface.to_owned()], |_| {
        let mut store = DecisionStore::load(iface)?;
        let changes = store.apply(answer, startup, config, now);
        if startup || changes.changed() {
            store.save(iface).context("saving the CrowdSec decisions")?;
        }
        let next_expiry = store.decisions.values().map(|d| d.expires).min();
        Ok(Pulled { changes, decisions: store.decisions.len(), next_expiry })
    })
    .context("enforcing the decisions")
}

/// Asks the stream for everything (`startup`) or for what changed since the last pull.
fn fetch(agent: &ureq::Agent, config: &CrowdSec, startup: bool) -> Result<StreamAnswer> {
    let scopes: Vec<&str> = config.scopes.iter().map(|s| s.name()).collect();
    let url = format!("{}/v1/decisions/stream?startup={startup}&scopes={}", config.lapi, scopes.join(","));
    let key = std::str::from_utf8(config.api_key.bytes())
        .ok()
        .filter(|key| key.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            anyhow!(
                "the key in {} is not a CrowdSec API key (printable ASCII)",
                config.api_key_file.display()
            )
        })?;
    let mut response = match agent.get(&url).header("X-Api-Key", key).call() {
        Ok(response) => response,
        Err(ureq::Error::StatusCode(code @ (401 | 403))) => {
            return Err(anyhow!(
                "the LAPI refused the bouncer key of {} (HTTP {code}): `cscli bouncers add NAME` makes one",
                config.api_key_file.display()
            ));
        }
        Err(error) => return Err(anyhow!("{error}")),
    };
    let reader = response.body_mut().with_config().limit(ANSWER_MAX).reader();
    serde_json::from_reader(std::io::BufReader::new(reader)).context("reading the LAPI's answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_back_off_up_to_five_minutes() {
        let every = Duration::from_secs(10);
        assert_eq!(backoff(every, 1), Duration::from_secs(20));
        assert_eq!(backoff(every, 3), Duration::from_secs(80));
        assert_eq!(backoff(every, 30), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_secs(3600), 2),
            Duration::from_secs(3600),
            "never below the interval"
        );
    }

    #[test]
    fn the_age_of_the_last_pull() {
        let status = PullStatus { last_success: Some(100), ..PullStatus::default() };
        assert_eq!(status.age(130), Some(30));
        assert_eq!(PullStatus::default().age(130), None);
    }
}

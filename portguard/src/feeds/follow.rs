//! The loader's task that keeps the feeds current: every `refresh` it asks each feed whether it
//! changed (on a worker thread, so a slow server holds up nothing else). A changed list goes to
//! the loader, which switches it in as a new generation (`Switch`), with the rest of the policy
//! as it runs; the copy is saved only once that generation runs. Anything that fails (the
//! fetch, the body, the switch) keeps the list in force, is reported in `stats`, `/metrics`
//! and a `feed_failed` event, and is tried again sooner (30 s, doubled each time, at most
//! `refresh`).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    FeedList,
    fetch::{self, Fetched},
    forget_others, saved_entries, saved_info,
};
use crate::{
    control::Reply,
    events::{EventRecord, EventType},
    lock,
    metrics::LoaderCounts,
    paths,
    policy::{Feeds, Policy},
    state::{now_unix, read_status, record_status},
};

/// How one feed goes: `stats` reads it from the run directory, `/metrics` from the loader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedStatus {
    pub url: String,
    /// Entries of the copy in force.
    pub entries: usize,
    /// Unix seconds when the copy in force was fetched (`None`: there is none yet).
    pub copy_fetched_at: Option<u64>,
    /// Unix seconds of the last fetch that left the list current (a new list switched in, the
    /// same list again, or 304 Not Modified).
    pub last_success: Option<u64>,
    /// Unix seconds of the last attempt.
    pub last_attempt: Option<u64>,
    /// Fetches that failed (or lists refused) since the loader started.
    pub failures: u64,
    /// Answers 304 Not Modified since the loader started.
    pub not_modified: u64,
    /// Why the last attempt failed; `None` once one succeeds.
    pub last_error: Option<String>,
}

impl FeedStatus {
    /// What the loader of `iface` last wrote; empty without feeds or a running loader.
    pub fn read_all(iface: &str) -> Vec<Self> {
        read_status(&paths::feeds_status(iface)).unwrap_or_default()
    }

    fn write_all(iface: &str, all: &[Self]) {
        record_status(&paths::feeds_status(iface), &all, "the feeds' status");
    }

    /// Seconds since the last successful fetch.
    pub fn age(&self, now: u64) -> Option<u64> {
        self.last_success.map(|at| now.saturating_sub(at))
    }
}

/// A changed feed for the loader to switch in; `reply` says whether it did.
pub struct Switch {
    pub list: FeedList,
    pub reply: oneshot::Sender<Reply>,
}

/// First wait after a failure; doubled after each further one, at most `refresh`.
const RETRY_FIRST: Duration = Duration::from_secs(30);

/// The wait after `failures` failed attempts in a row.
pub fn retry_after(refresh: Duration, failures: u32) -> Duration {
    RETRY_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(refresh)
}

/// One feed as the task follows it.
struct Followed {
    status: FeedStatus,
    failures_in_row: u32,
    due: Instant,
}

/// Where the task sends what only the loader can do.
#[derive(Clone)]
pub struct ToLoader {
    pub switches: mpsc::Sender<Switch>,
    /// `feed_failed` events, published like the loader's own.
    pub events: mpsc::Sender<EventRecord>,
}

/// Follows `feeds` for `iface` until the task is aborted.
async fn follow(iface: String, feeds: Feeds, counts: Arc<Mutex<LoaderCounts>>, to_loader: ToLoader) {
    let agent = fetch::agent();
    let now = Instant::now();
    let mut followed: Vec<Followed> = feeds
        .urls
        .iter()
        .map(|url| {
            let saved = saved_info(&iface, url);
            let status = FeedStatus {
                url: url.clone(),
                entries: saved.as_ref().map_or(0, |s| s.entries),
                copy_fetched_at: saved.map(|s| s.fetched_at),
                ..FeedStatus::default()
            };
            Followed { status, failures_in_row: 0, due: now }
        })
        .collect();
    loop {
        for feed in followed.iter_mut().filter(|f| f.due <= Instant::now()) {
            let outcome = refresh_one(&agent, &iface, &feed.status.url, &to_loader).await;
            feed.status.last_attempt = Some(now_unix());
            match outcome {
                Ok(refreshed) => {
                    if feed.status.last_error.is_some() {
                        info!("feed {}: current again", feed.status.url);
                    }
                    feed.failures_in_row = 0;
                    feed.status.last_success = feed.status.last_attempt;
                    feed.status.last_error = None;
                    match refreshed {
                        Refreshed::NotModified => feed.status.not_modified += 1,
                        Refreshed::Current { entries, fetched_at } => {
                            feed.status.entries = entries;
                            feed.status.copy_fetched_at = Some(fetched_at);
                        }
                    }
                    feed.due = Instant::now() + feeds.refresh;
                }
                Err(message) => {
                    feed.failures_in_row = feed.failures_in_row.saturating_add(1);
                    feed.status.failures += 1;
                    if feed.status.last_error.as_ref() != Some(&message) {
                        warn!("feed {}: {message}; the list in force stays", feed.status.url);
                        let _ = to_loader.events.try_send(failed_event(&iface, &feed.status, &message));
                    }
                    feed.status.last_error = Some(message);
                    feed.due = Instant::now() + retry_after(feeds.refresh, feed.failures_in_row);
                }
            }
        }
        let all: Vec<FeedStatus> = followed.iter().map(|f| f.status.clone()).collect();
        lock(&counts).feeds.clone_from(&all);
        FeedStatus::write_all(&iface, &all);
        let next = followed.iter().map(|f| f.due).min().unwrap_or_else(|| Instant::now() + feeds.refresh);
        tokio::time::sleep_until(next).await;
    }
}

/// A fetch that left the list current.
enum Refreshed {
    NotModified,
    /// The list fetched is the one in force now (switched in, or the same as before).
    Current {
        entries: usize,
        fetched_at: u64,
    },
}

/// Fetches `url`, and has a changed list switched in. `Err`: why the list in force stays.
async fn refresh_one(
    agent: &ureq::Agent,
    iface: &str,
    url: &str,
    to_loader: &ToLoader,
) -> Result<Refreshed, String> {
    let job = {
        let (agent, iface, url) = (agent.clone(), iface.to_owned(), url.to_owned());
        tokio::task::spawn_blocking(move || {
            let saved = saved_info(&iface, &url);
            let fetched = fetch::fetch(&agent, &url, saved.as_ref())?;
            // The same entries as the copy in force: saved (new validators), nothing to switch.
            let mut same = false;
            if let (Fetched::List(list), Some(_)) = (&fetched, &saved) {
                let mut now = saved_entries(&iface, &url)?;
                let mut next = list.entries.clone();
                now.sort_unstable();
                next.sort_unstable();
                if now == next {
                    list.save(&iface)?;
                    same = true;
                }
            }
            anyhow::Ok((fetched, same))
        })
    };
    let (fetched, same) = match job.await {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => return Err(format!("{error:#}")),
        Err(error) => return Err(format!("the fetch stopped: {error}")),
    };
    let list = match fetched {
        Fetched::NotModified => return Ok(Refreshed::NotModified),
        Fetched::List(list) if same => {
            return Ok(Refreshed::Current { entries: list.entries.len(), fetched_at: list.info.fetched_at });
        }
        Fetched::List(list) => list,
    };
    let (entries, fetched_at) = (list.entries.len(), list.info.fetched_at);
    let (reply, answer) = oneshot::channel();
    to_loader
        .switches
        .send(Switch { list, reply })
        .await
        .map_err(|_| "the loader is stopping".to_string())?;
    match answer.await {
        Ok(Reply { ok: true, .. }) => Ok(Refreshed::Current { entries, fetched_at }),
        Ok(Reply { message, .. }) => Err(format!("the new list ({entries} entries) was refused: {message}")),
        Err(_) => Err("the loader stopped before switching the list in".into()),
    }
}

/// `feed_failed`: what failed, and what stays in force.
fn failed_event(iface: &str, status: &FeedStatus, message: &str) -> EventRecord {
    let kept = match status.copy_fetched_at {
        Some(at) => format!(
            "the copy fetched {} stays in force ({} entries)",
            crate::output::rfc3339_unix(at).unwrap_or_default(),
            status.entries
        ),
        None => "no copy was ever fetched: nothing of it is enforced".into(),
    };
    let mut record =
        EventRecord::lifecycle(SystemTime::now(), iface, EventType::FeedFailed, format!("{message}; {kept}"));
    record.feed = Some(status.url.clone());
    record.count = Some(status.entries as u64);
    record
}

/// The task following the running policy's feeds, if it has any: started with the loader,
/// started again when a reload changes `[blocklist] urls` or `refresh`, stopped with the loader.
pub struct Follower {
    iface: String,
    counts: Arc<Mutex<LoaderCounts>>,
    to_loader: ToLoader,
    running: Option<(Feeds, tokio::task::JoinHandle<()>)>,
}

impl Follower {
    pub fn new(iface: &str, counts: &Arc<Mutex<LoaderCounts>>, to_loader: ToLoader) -> Self {
        Self { iface: iface.to_owned(), counts: counts.clone(), to_loader, running: None }
    }

    /// Follows `policy`'s feeds (none without `[blocklist] urls`), and forgets the copies of
    /// feeds it no longer names. Must run inside the loader's runtime.
    pub fn update(&mut self, policy: &Policy) {
        let feeds = policy.feeds.as_ref();
        if self.running.as_ref().map(|(running, _)| running) == feeds {
            return;
        }
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
        forget_others(&self.iface, policy);
        match feeds {
            Some(feeds) => {
                let task = tokio::spawn(follow(
                    self.iface.clone(),
                    feeds.clone(),
                    self.counts.clone(),
                    self.to_loader.clone(),
                ));
                self.running = Some((feeds.clone(), task));
            }
            None => {
                lock(&self.counts).feeds.clear();
                let _ = std::fs::remove_file(paths::feeds_status(&self.iface));
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(paths::feeds_status(&self.iface));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_retried_sooner_than_the_refresh_and_back_off() {
        let hour = Duration::from_secs(3600);
        assert_eq!(retry_after(hour, 1), Duration::from_secs(30));
        assert_eq!(retry_after(hour, 3), Duration::from_secs(120));
        assert_eq!(retry_after(hour, 40), hour, "never longer than the refresh");
        assert_eq!(retry_after(Duration::from_secs(5), 1), Duration::from_secs(5));
    }

    #[test]
    fn the_age_of_the_last_fetch() {
        let status = FeedStatus { last_success: Some(100), ..FeedStatus::default() };
        assert_eq!(status.age(160), Some(60));
        assert_eq!(FeedStatus::default().age(160), None);
    }
}

//! Reloads in the running loader: a new generation built and switched in off the event
//! thread, then taken over (programs, alert sinks, metrics, the audit record).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use aya::Ebpf;
use tokio::sync::oneshot;

use super::Loader;
use crate::{
    control::{ReloadRequest, Reply},
    events::{EventRecord, EventType, Grants},
    feeds::{FeedList, follow::Switch},
    lock,
    manager::{self, PolicySource, Rollback},
    metrics,
    output::say,
    policy::{Loaded, diff::PolicyDiff},
    state::{RunState, now_unix},
};

pub(super) type ReloadCall = (ReloadRequest, oneshot::Sender<Reply>);

/// What a worker built: the new generation and what it changes.
type Built = (Ebpf, Loaded, PolicySource, RunState, PolicyDiff);

/// A new generation built and switched in off the event thread: reading the policy and its
/// blocklist files, compiling and filling the maps take time (a million-entry list takes
/// seconds), and events, `/metrics` and the control socket must keep being served meanwhile.
pub(super) struct ReloadInProgress {
    pub work: tokio::task::JoinHandle<Result<Built>>,
    pub request: ReloadRequest,
    /// Where the answer goes; `None` for SIGHUP.
    pub reply: Option<oneshot::Sender<Reply>>,
    /// The feed whose new list this generation switches in, if that is why it is built.
    pub feed: Option<String>,
}

/// Starts building and switching in the next generation on a worker thread; with `fresh`, a
/// feed's new list, saved as the feed's copy once the generation runs.
pub(super) fn start_reload(
    loader: &Loader,
    request: ReloadRequest,
    reply: Option<oneshot::Sender<Reply>>,
    fresh: Option<FeedList>,
) -> ReloadInProgress {
    let feed = fresh.as_ref().map(|list| list.info.url.clone());
    let current = loader.state.clone();
    let running = loader.policy.clone();
    let strict = request.strict || loader.strict;
    let asked = request.clone();
    let operator = crate::safety::Operator {
        session: request.session,
        confirm_within: request.confirm_within_secs.is_some(),
        force: request.force,
    };
    let work = tokio::task::spawn_blocking(move || {
        let source = match (asked.policy_text, asked.policy) {
            (Some(text), Some(path)) => PolicySource { path, text },
            (_, Some(path)) => PolicySource::read(&path)?,
            (_, None) => PolicySource::read(&current.policy)?,
        };
        let (ebpf, loaded, next) =
            manager::apply_generation(&current, &source, strict, &operator, fresh.as_ref())?;
        if let Some(list) = &fresh {
            // It runs: from now on it is the copy every generation enforces.
            list.save(&current.iface)
                .inspect_err(|error| log::warn!("saving the copy of feed {}: {error:#}", list.info.url))
                .ok();
        }
        // Here, off the event thread: two blocklists of millions take a while to compare.
        let changes = crate::policy::diff::diff(&running, &loaded.policy);
        Ok((ebpf, loaded, source, next, changes))
    });
    ReloadInProgress { work, request, reply, feed }
}

/// A feed's new list, switched in as the next generation of the policy as it runs (the file
/// on disk is not read again: a feed changes the feed, nothing else).
pub(super) fn start_feed_switch(loader: &Loader, switch: Switch) -> ReloadInProgress {
    let request = ReloadRequest {
        policy: Some(loader.source.path.clone()),
        policy_text: Some(loader.source.text.clone()),
        via: Some(format!("feed {}", switch.list.info.url)),
        ..ReloadRequest::default()
    };
    start_reload(loader, request, Some(switch.reply), Some(switch.list))
}

/// Takes over a generation the worker switched in (or reports why the running one stays),
/// with the event for the audit trail (`reloaded`, or `rolled_back`).
pub(super) fn finish_reload(
    loader: &mut Loader,
    request: &ReloadRequest,
    built: Result<Built>,
    metrics: Option<&metrics::Source>,
    feed: Option<String>,
) -> (Reply, Option<EventRecord>) {
    match built.and_then(|built| take_over(loader, request, built, metrics)) {
        Ok((message, warnings, mut record)) => {
            record.feed = feed;
            // A rollback's own line says it (ROLLBACK); a reload's is this one.
            if request.rollback.is_none() {
                say(&format!("portguard: {message}"));
            }
            (Reply { ok: true, message, warnings }, Some(record))
        }
        Err(error) => (Reply { ok: false, message: format!("{error:#}"), warnings: Vec::new() }, None),
    }
}

fn take_over(
    loader: &mut Loader,
    request: &ReloadRequest,
    (ebpf, loaded, source, next, changes): Built,
    metrics: Option<&metrics::Source>,
) -> Result<(String, Vec<String>, EventRecord)> {
    let iface = loader.state.iface.clone();
    let generation = next.generation;
    // In the loader's output, and in the reply to whoever asked.
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    for warning in &warnings {
        eprintln!("{warning}");
    }
    // The old generation's programs and policy maps go with it.
    loader.ebpf = ebpf;
    loader.grants = Grants::of(&loaded.policy);
    if let Some(journal) = &loader.journal {
        journal.set_limits(crate::journal::Limits::of(&loaded.policy.events));
    }
    lock(&loader.counts).last_load = now_unix();
    if let Some(metrics) = metrics {
        metrics.set_policy(&loaded.policy);
    }
    loader.sinks.reconfigure(&loaded.policy.alerts);
    let previous = std::mem::replace(&mut loader.source, source);
    let policy = &loaded.policy;
    // Recorded by the worker around the switch.
    loader.state = next;
    let event = if request.rollback.is_some() { EventType::RolledBack } else { EventType::Reloaded };
    let mut record = EventRecord::new(SystemTime::now(), &iface, event);
    record.generation = Some(generation);
    record.policy = Some(loader.source.path.display().to_string());
    record.reason = request.rollback.clone().or_else(|| request.via.clone());
    if let Some(actor) = &request.actor {
        actor.stamp(&mut record);
    }
    record.added = changes.added;
    record.removed = changes.removed;
    record.changed = changes.changed;
    let mut message = format!("reloaded {iface}: generation {generation}, {}", policy.summary());
    let serving = metrics.map(|m| m.address);
    if policy.metrics_listen.is_some_and(|wanted| Some(wanted) != serving) {
        message.push_str("; metrics stay where they are served now (a new [metrics] listen takes effect at the next attach)");
    }
    if let Some(note) = crate::maps::kept_sizes_message(&iface, policy) {
        message.push_str(&format!("; {note}"));
    }
    if let Some(secs) = request.confirm_within_secs {
        manager::arm_rollback(&iface, Duration::from_secs(secs), Rollback::Restore { policy: previous })?;
        message.push_str(&format!(
            "; rolls back in {} unless `portguard confirm {iface}`",
            crate::durations::format_secs(secs)
        ));
        record.confirm_by = Some(
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(secs)).to_string(),
        );
    }
    loader.policy = Arc::new(loaded.policy);
    Ok((message, warnings, record))
}

//! The loader: what runs in the foreground of `portguard attach` once the interface is
//! attached. Its event loop prints events as they happen (`pump`), answers its control socket
//! (`control_server`), serves `/metrics` (`metrics::serve`), reloads on request or SIGHUP
//! (`reload`), watches its interface and sweeps expired blocks (`watch`), keeps the audit
//! trail of what changed, and stops on SIGINT/SIGTERM.

mod control_server;
mod evidence;
pub mod pump;
mod reload;
mod watch;

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use log::{info, warn};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc},
};

pub use self::pump::Output;
use self::{
    control_server::Channels,
    pump::Upkeep,
    reload::{ReloadCall, ReloadInProgress},
};
use crate::{
    alerts::Sinks,
    control::ReloadRequest,
    events::{EventRecord, EventSource, EventType, Grants},
    loader::XdpModeChoice,
    lock,
    manager::{DetachRequest, PolicySource},
    metrics::{self, LoaderCounts},
    paths,
    policy::{Mode, Policy},
    state::RunState,
};

/// Lines kept for slow `events` clients before they are told they missed some.
const CLIENT_BACKLOG: usize = 4096;

/// A running attachment, as its loader holds it.
pub struct Loader {
    pub ebpf: Ebpf,
    /// How XDP was asked to attach: used again when the interface comes back.
    pub xdp_choice: XdpModeChoice,
    /// Where `/metrics` is served (bound before attaching), and what it reads.
    pub metrics: Option<(std::net::TcpListener, Arc<metrics::Source>)>,
    /// What the loader counts itself (for the metrics).
    pub counts: Arc<Mutex<LoaderCounts>>,
    pub sinks: Sinks,
    /// What the packet path may spend each second, from the policy.
    pub grants: Grants,
    pub state: RunState,
    pub source: PolicySource,
    /// The running policy, to tell what a reload changes.
    pub policy: Arc<Policy>,
    pub strict: bool,
    pub output: Output,
    /// Where every published event is kept (`None`: it could not be opened; said at attach).
    pub journal: Option<crate::journal::Journal>,
}

impl Loader {
    /// Automatic blocks the packet path reported (`auto_blocked` events) since the loader
    /// started: how fast the block table grows between refills of its filter.
    pub fn automatic_blocks_published(&self) -> u64 {
        let counts = lock(&self.counts);
        counts.events.iter().filter(|((event, _), _)| *event == EventType::AutoBlocked).map(|(_, n)| *n).sum()
    }

    /// Prints an event, hands it to the alert sinks and counts it (the loader's own events;
    /// `run` also streams them to `events` clients).
    pub fn publish(&self, record: &EventRecord) {
        self.output.print(record);
        if let Some(journal) = &self.journal {
            journal.record(record);
        }
        {
            let mut counts = lock(&self.counts);
            // The mode that judged it: the kernel's word for its events, the policy's for ours.
            let mode = match (record.monitored(), record.event.is_kernel()) {
                (true, _) => Mode::Monitor,
                (false, true) => Mode::Enforce,
                (false, false) => self.policy.mode,
            };
            *counts.events.entry((record.event, mode)).or_default() += 1;
            if record.event == EventType::ScanDetected {
                let kind = record.scan_kind.clone().unwrap_or_default();
                *counts.scans_by_kind.entry(kind).or_default() += 1;
            }
        }
        self.sinks.send(record);
    }

    /// Lets the alerts still queued reach their receivers (bounded in time).
    pub fn close_sinks(&mut self) {
        if !self.sinks.close(LAST_ALERTS_WAIT) {
            warn!("alerts still undelivered after {LAST_ALERTS_WAIT:?} are dropped");
        }
    }
}

/// Longest a stopping loader waits for its last alerts to be delivered.
const LAST_ALERTS_WAIT: Duration = Duration::from_secs(10);
/// Longest it waits for `events` clients to take its last line.
const LAST_LINE_WAIT: Duration = Duration::from_secs(1);

/// How the loader ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Detached, pins removed, and said so in its last event (`detached`, or `rolled_back` for
    /// an attach nobody confirmed).
    Detached { rolled_back: bool },
    /// Enforcement left pinned (`--pin`).
    Left,
}

/// Runs until SIGINT or SIGTERM; hands the loader back with how it ended. `ready` runs once
/// both signals are handled (and the control socket listens).
pub fn run(loader: Loader, ready: impl FnOnce()) -> Result<(Ended, Loader)> {
    crate::runtime::new()?.block_on(serve(loader, ready))
}

async fn serve(mut loader: Loader, ready: impl FnOnce()) -> Result<(Ended, Loader)> {
    let iface = loader.state.iface.clone();
    let mut source = EventSource::from_pins(&iface)?.watch()?;
    let (mut evidence, mut evidence_source) = evidence::open(&iface, &loader.policy);
    let metrics = match loader.metrics.take() {
        Some((listener, source)) => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(metrics::serve(listener, source.clone()));
            Some(source)
        }
        None => None,
    };
    let (lines, _) = broadcast::channel::<Arc<str>>(CLIENT_BACKLOG);
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadCall>(4);
    let (audit_tx, mut audit_rx) = mpsc::channel::<EventRecord>(64);
    let socket_path = paths::control_socket(&iface);
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("listening on {}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    let clients = tokio::spawn(control_server::accept_clients(
        listener,
        Channels { iface: iface.clone(), lines: lines.clone(), reloads: reload_tx, audits: audit_tx.clone() },
    ));

    // `[crowdsec]`: its own task, so a slow LAPI holds up nothing here.
    let crowdsec = crate::crowdsec::pull::Follower::default();
    crowdsec.update(&iface, loader.policy.crowdsec.as_ref(), &loader.counts);
    // `[anomaly]`: a minute of per-port statistics at a time, on a worker thread.
    let mut baselines = crate::baseline::Sampler::new(&iface, &loader.policy.anomaly);
    // `[blocklist] urls`: fetched by its own task; a changed list comes back to be switched in.
    let (switch_tx, mut switch_rx) = mpsc::channel::<crate::feeds::follow::Switch>(4);
    let mut feeds = crate::feeds::Follower::new(
        &iface,
        &loader.counts,
        crate::feeds::follow::ToLoader { switches: switch_tx, events: audit_tx.clone() },
    );
    feeds.update(&loader.policy);

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    ready();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reloading: Option<ReloadInProgress> = None;
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    // The filter was sized for an empty table or for the pinned one; the first refill, early
    // or at `REFILL_INTERVAL`, says how many blocks it found.
    let mut refilling: Option<tokio::task::JoinHandle<Option<u64>>> = None;
    let mut last_refill = std::time::Instant::now();
    let mut refill_after = crate::auto_filter::early_refill_after(0);
    let mut blocks_at_refill = loader.automatic_blocks_published();
    // What was last said about the interface being unprotected (said again only if it changes).
    let mut unprotected: Option<String> = None;
    let publish = |loader: &Loader, record: &EventRecord| {
        loader.publish(record);
        crowdsec.offer(record);
        let _ = lines.send(Arc::from(record.json()));
    };
    // What ended the loop, for the last event.
    let stopped_by;
    loop {
        tokio::select! {
            ready = source.readable_mut() => {
                let mut guard = ready?;
                for record in evidence::name_files(guard.get_inner_mut(), evidence.as_mut()) {
                    publish(&loader, &record);
                }
                guard.clear_ready();
            }
            ready = evidence::readable(evidence_source.as_mut()) => {
                // The events first: a block's event makes and names its file before its
                // packets are written into it.
                for record in evidence::name_files(source.get_mut(), evidence.as_mut()) {
                    publish(&loader, &record);
                }
                let mut guard = ready?;
                let packets = guard.get_inner_mut().drain();
                if let Some(evidence) = &mut evidence {
                    evidence.add(&packets, &crate::events::Clock::now());
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if let Some(evidence) = &mut evidence {
                    evidence.upkeep();
                }
                let Upkeep { records, errors } = pump::upkeep(source.get_mut(), loader.grants);
                for record in &records {
                    publish(&loader, record);
                }
                for error in &errors {
                    warn!("{error:#}");
                }
                let (anomalies, known) = baselines.tick(&loader.policy.anomaly).await;
                for record in &anomalies {
                    publish(&loader, record);
                }
                if let Some(known) = known {
                    lock(&loader.counts).baseline = Some(known);
                }
                // Not while a reload switches the links itself.
                if reloading.is_none() {
                    for record in watch::watch_interface(&mut loader, &mut unprotected) {
                        publish(&loader, &record);
                    }
                }
                // One refill at a time, on a worker thread (a walk of the block table): every
                // `REFILL_INTERVAL`, or sooner when blocks come fast enough to fill the filter.
                if let Some(done) = refilling.take_if(|refill| refill.is_finished()) {
                    if let Ok(Some(sized_for)) = done.await {
                        refill_after = crate::auto_filter::early_refill_after(sized_for);
                    }
                }
                let added = loader.automatic_blocks_published().saturating_sub(blocks_at_refill);
                if refilling.is_none()
                    && (last_refill.elapsed() >= crate::auto_filter::REFILL_INTERVAL || added >= refill_after)
                {
                    last_refill = std::time::Instant::now();
                    blocks_at_refill += added;
                    let iface = iface.clone();
                    refilling = Some(tokio::task::spawn_blocking(move || {
                        crate::auto_filter::refill_from_pins(&iface)
                            .inspect_err(|error| warn!("refilling the automatic-block filter: {error:#}"))
                            .ok()
                            .flatten()
                    }));
                }
                // blocks.json is read and its lock waited for on a worker thread.
                if sweeping.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                    let iface = iface.clone();
                    sweeping = Some(tokio::task::spawn_blocking(move || watch::sweep_manual_blocks(&iface)));
                }
            }
            // One reload at a time: the next request waits in the channel, SIGHUP in its stream.
            call = reload_rx.recv(), if reloading.is_none() => {
                if let Some((request, reply)) = call {
                    reloading = Some(reload::start_reload(&loader, request, Some(reply), None));
                }
            }
            _ = hangup.recv(), if reloading.is_none() => {
                info!("SIGHUP: reloading {}", loader.state.policy.display());
                let request = ReloadRequest { via: Some("SIGHUP".into()), ..ReloadRequest::default() };
                reloading = Some(reload::start_reload(&loader, request, None, None));
            }
            Some(switch) = switch_rx.recv(), if reloading.is_none() => {
                info!("feed {}: a new list, switching it in", switch.list.info.url);
                reloading = Some(reload::start_feed_switch(&loader, switch));
            }
            Some(record) = audit_rx.recv() => {
                publish(&loader, &record);
            }
            done = async { (&mut reloading.as_mut().expect("enabled only while reloading").work).await },
                if reloading.is_some() =>
            {
                let ReloadInProgress { request, reply, feed, .. } = reloading.take().expect("reloading");
                let built = done.unwrap_or_else(|error| Err(anyhow::anyhow!("the reload failed: {error}")));
                let (answer, record) = reload::finish_reload(&mut loader, &request, built, metrics.as_deref(), feed);
                if let Some(record) = record {
                    publish(&loader, &record);
                }
                evidence::reconfigure(&iface, &loader.policy, &mut evidence);
                crowdsec.update(&iface, loader.policy.crowdsec.as_ref(), &loader.counts);
                baselines.configure(&loader.policy.anomaly).await;
                if !loader.policy.anomaly.enabled {
                    lock(&loader.counts).baseline = None;
                }
                feeds.update(&loader.policy);
                match reply {
                    Some(reply) => {
                        let _ = reply.send(answer);
                    }
                    None if !answer.ok => {
                        eprintln!("portguard: reload refused, the running policy stays: {}", answer.message);
                    }
                    None => {}
                }
            }
            _ = interrupt.recv() => { info!("SIGINT"); stopped_by = "SIGINT"; break; }
            _ = terminate.recv() => { info!("SIGTERM"); stopped_by = "SIGTERM"; break; }
        }
    }
    baselines.stop().await;
    let asked = DetachRequest::take(&iface);
    let exit = if loader.state.pinned && asked.is_none() {
        Ended::Left
    } else {
        let asked =
            asked.unwrap_or_else(|| DetachRequest { reason: stopped_by.into(), ..DetachRequest::default() });
        crate::manager::remove(&iface).context("detaching")?;
        let event = if asked.rollback { EventType::RolledBack } else { EventType::Detached };
        let mut last = EventRecord::new(SystemTime::now(), &iface, event);
        last.reason = Some(asked.reason);
        if let Some(actor) = asked.actor {
            actor.stamp(&mut last);
        }
        publish(&loader, &last);
        // `events` clients get the last line before their connections close.
        let waited = std::time::Instant::now();
        while !lines.is_empty() && waited.elapsed() < LAST_LINE_WAIT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ended::Detached { rolled_back: asked.rollback }
    };
    if let Some(mut journal) = loader.journal.take() {
        journal.close(&match exit {
            Ended::Left => "the loader stopped; enforcement stays pinned, its events are not journaled \
                            until a loader runs again"
                .to_string(),
            Ended::Detached { .. } => {
                "the loader detached: nothing is enforced until the next attach".to_string()
            }
        });
    }
    clients.abort();
    drop(crowdsec);
    drop(feeds);
    let _ = std::fs::remove_file(paths::crowdsec_status(&iface));
    let _ = std::fs::remove_file(&socket_path);
    Ok((exit, loader))
}

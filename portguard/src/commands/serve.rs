//! What a running loader does in the foreground: print events as they happen, report lost
//! events, sweep expired blocks, answer its control socket (`events`, `reload`, `audit`),
//! reload on SIGHUP, keep the audit trail of what changed, and stop on SIGINT/SIGTERM.

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use log::{info, warn};
use portguard::{
    alerts::Sinks,
    blocks::BlockStore,
    control::{AuditRequest, ReloadRequest, Reply, Request},
    events::{Actor, EventRecord, EventSource, EventType, Grants},
    links::Inspection,
    loader::{self, XdpModeChoice},
    lock,
    manager::{self, DetachRequest, PolicySource, Rollback},
    metrics::{self, LoaderCounts},
    paths,
    policy::{Loaded, Mode, Policy, diff::PolicyDiff},
    state::{RunState, now_unix},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc, oneshot},
};

/// Lines kept for slow `events` clients before they are told they missed some.
const CLIENT_BACKLOG: usize = 4096;

pub struct Output {
    pub json: bool,
}

impl Output {
    /// Events are what stdout carries, as JSON lines or as lines for people.
    pub fn print(&self, record: &EventRecord) {
        portguard::output::emit(&if self.json { record.json() } else { record.human_painted() });
    }
}

/// Prints a line for the person watching (stderr under `--json`), shrugging off a closed
/// stdout: a loader whose terminal or pipe went away must keep enforcing (and serving
/// `portguard events`), not die of a panic.
pub fn say(line: &str) {
    portguard::output::say(line);
}

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
}

impl Loader {
    /// Prints an event, hands it to the alert sinks and counts it (the loader's own events;
    /// `serve` also streams them to `events` clients).
    pub fn publish(&self, record: &EventRecord) {
        self.output.print(record);
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
}

/// Longest a stopping loader waits for its last alerts to be delivered.
const LAST_ALERTS_WAIT: Duration = Duration::from_secs(10);
/// Longest it waits for `events` clients to take its last line.
const LAST_LINE_WAIT: Duration = Duration::from_secs(1);

/// How the loader ended.
pub enum Exit {
    /// Detached, pins removed, and said so (`detached`, or `rolled_back` for an attach nobody
    /// confirmed).
    Detached { rolled_back: bool },
    /// Enforcement left in place (`--pin`).
    Leave,
}

impl Loader {
    /// Lets the alerts still queued reach their receivers (bounded in time).
    pub fn close_sinks(&mut self) {
        if !self.sinks.close(LAST_ALERTS_WAIT) {
            warn!("alerts still undelivered after {LAST_ALERTS_WAIT:?} are dropped");
        }
    }
}

/// Detaches from `iface` and removes what the attachment recorded.
pub fn detach_now(iface: &str) -> Result<()> {
    loader::detach(iface).context("detaching")?;
    RunState::remove(iface);
    let _ = std::fs::remove_file(paths::active_policy(iface));
    let _ = std::fs::remove_file(paths::pending_file(iface));
    Ok(())
}

type ReloadCall = (ReloadRequest, oneshot::Sender<Reply>);

/// What a worker built: the new generation and what it changes.
type Built = (Ebpf, Loaded, PolicySource, RunState, PolicyDiff);

/// A new generation built and switched in off the event thread: reading the policy and its
/// blocklist files, compiling and filling the maps take time (a million-entry list takes
/// seconds), and events, `/metrics` and the control socket must keep being served meanwhile.
struct ReloadInProgress {
    work: tokio::task::JoinHandle<Result<Built>>,
    request: ReloadRequest,
    /// Where the answer goes; `None` for SIGHUP.
    reply: Option<oneshot::Sender<Reply>>,
}

/// Runs until SIGINT or SIGTERM; hands the loader back with how it ended.
pub fn run(loader: Loader) -> Result<(Exit, Loader)> {
    portguard::runtime::new()?.block_on(serve(loader))
}

async fn serve(mut loader: Loader) -> Result<(Exit, Loader)> {
    let iface = loader.state.iface.clone();
    let mut source = EventSource::from_pins(&iface)?.watch()?;
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
    let clients = tokio::spawn(accept_clients(
        listener,
        Channels { iface: iface.clone(), lines: lines.clone(), reloads: reload_tx, audits: audit_tx },
    ));

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reloading: Option<ReloadInProgress> = None;
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    let mut refilling: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_refill = std::time::Instant::now();
    // What was last said about the interface being unprotected (said again only if it changes).
    let mut unprotected: Option<String> = None;
    let publish = |loader: &Loader, record: &EventRecord| {
        loader.publish(record);
        let _ = lines.send(Arc::from(record.json()));
    };
    // What ended the loop, for the last event.
    let stopped_by;
    loop {
        tokio::select! {
            ready = source.readable_mut() => {
                let mut guard = ready?;
                for record in guard.get_inner_mut().drain() {
                    publish(&loader, &record);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let inner = source.get_mut();
                if let Err(error) = inner.refill(loader.grants) {
                    warn!("refilling the drop-event and new-block budget: {error:#}");
                }
                match inner.newly_lost() {
                    Ok(Some(record)) => publish(&loader, &record),
                    Ok(None) => {}
                    Err(error) => warn!("reading the lost-event counter: {error:#}"),
                }
                match inner.sweep_expired() {
                    Ok(records) => records.iter().for_each(|r| publish(&loader, r)),
                    Err(error) => warn!("sweeping expired blocks: {error:#}"),
                }
                // Not while a reload switches the links itself.
                if reloading.is_none() {
                    for record in watch_interface(&mut loader, &mut unprotected) {
                        publish(&loader, &record);
                    }
                }
                // One refill at a time, on a worker thread (a walk of the block table).
                if last_refill.elapsed() >= portguard::auto_filter::REFILL_INTERVAL
                    && refilling.as_ref().is_none_or(|refill| refill.is_finished())
                {
                    last_refill = std::time::Instant::now();
                    let iface = iface.clone();
                    refilling = Some(tokio::task::spawn_blocking(move || {
                        if let Err(error) = portguard::auto_filter::refill_from_pins(&iface) {
                            warn!("refilling the automatic-block filter: {error:#}");
                        }
                    }));
                }
                // blocks.json is read and its lock waited for on a worker thread.
                if sweeping.as_ref().is_none_or(|sweep| sweep.is_finished()) {
                    let iface = iface.clone();
                    sweeping = Some(tokio::task::spawn_blocking(move || sweep_manual_blocks(&iface)));
                }
            }
            // One reload at a time: the next request waits in the channel, SIGHUP in its stream.
            call = reload_rx.recv(), if reloading.is_none() => {
                if let Some((request, reply)) = call {
                    reloading = Some(start_reload(&loader, request, Some(reply)));
                }
            }
            _ = hangup.recv(), if reloading.is_none() => {
                info!("SIGHUP: reloading {}", loader.state.policy.display());
                let request = ReloadRequest { via: Some("SIGHUP".into()), ..ReloadRequest::default() };
                reloading = Some(start_reload(&loader, request, None));
            }
            Some(record) = audit_rx.recv() => {
                publish(&loader, &record);
            }
            done = async { (&mut reloading.as_mut().expect("enabled only while reloading").work).await },
                if reloading.is_some() =>
            {
                let ReloadInProgress { request, reply, .. } = reloading.take().expect("reloading");
                let built = done.unwrap_or_else(|error| Err(anyhow::anyhow!("the reload failed: {error}")));
                let (answer, record) = finish_reload(&mut loader, &request, built, metrics.as_deref());
                if let Some(record) = record {
                    publish(&loader, &record);
                }
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
    let asked = DetachRequest::take(&iface);
    let exit = if loader.state.pinned && asked.is_none() {
        Exit::Leave
    } else {
        let asked =
            asked.unwrap_or_else(|| DetachRequest { reason: stopped_by.into(), ..DetachRequest::default() });
        detach_now(&iface)?;
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
        Exit::Detached { rolled_back: asked.rollback }
    };
    clients.abort();
    let _ = std::fs::remove_file(&socket_path);
    Ok((exit, loader))
}

/// Starts building and switching in the next generation on a worker thread.
fn start_reload(
    loader: &Loader,
    request: ReloadRequest,
    reply: Option<oneshot::Sender<Reply>>,
) -> ReloadInProgress {
    let current = loader.state.clone();
    let running = loader.policy.clone();
    let strict = request.strict || loader.strict;
    let asked = request.clone();
    let operator = portguard::safety::Operator {
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
        let (ebpf, loaded, next) = manager::apply_generation(&current, &source, strict, &operator)?;
        // Here, off the event thread: two blocklists of millions take a while to compare.
        let changes = portguard::policy::diff::diff(&running, &loaded.policy);
        Ok((ebpf, loaded, source, next, changes))
    });
    ReloadInProgress { work, request, reply }
}

/// Takes over a generation the worker switched in (or reports why the running one stays),
/// with the event for the audit trail (`reloaded`, or `rolled_back`).
fn finish_reload(
    loader: &mut Loader,
    request: &ReloadRequest,
    built: Result<Built>,
    metrics: Option<&metrics::Source>,
) -> (Reply, Option<EventRecord>) {
    match built.and_then(|built| take_over(loader, request, built, metrics)) {
        Ok((message, warnings, record)) => {
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
    if let Some(note) = portguard::maps::kept_sizes_message(&iface, policy) {
        message.push_str(&format!("; {note}"));
    }
    if let Some(secs) = request.confirm_within_secs {
        manager::arm_rollback(&iface, Duration::from_secs(secs), Rollback::Restore { policy: previous })?;
        message.push_str(&format!(
            "; rolls back in {} unless `portguard confirm {iface}`",
            portguard::durations::format_secs(secs)
        ));
        record.confirm_by = Some(
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(secs)).to_string(),
        );
    }
    loader.policy = Arc::new(loaded.policy);
    Ok((message, warnings, record))
}

/// Notices that the attachment stopped protecting its interface (deleted, or deleted and
/// created again under the same name, which container runtimes and hot-plug do; a pin removed
/// by hand) and attaches the running generation to the interface that has the name now, as soon
/// as there is one. Returns the events to publish: `unprotected` when protection is lost (again
/// whenever the reason changes), `reattached` when it is back.
fn watch_interface(loader: &mut Loader, said: &mut Option<String>) -> Vec<EventRecord> {
    let iface = loader.state.iface.clone();
    let found = match Inspection::of(&iface) {
        Ok(found) => found,
        Err(error) => {
            warn!("checking the links of {iface}: {error:#}");
            return Vec::new();
        }
    };
    let Some(mut problem) = found.problem(&iface) else {
        return Vec::new();
    };
    if let Some(ifindex) = found.ifindex_now {
        match loader::adopt(&mut loader.ebpf, &iface, loader.xdp_choice, &found) {
            Ok((mode, repaired)) => {
                loader.state.ifindex = ifindex;
                if let Some(mode) = mode {
                    loader.state.xdp_mode = mode;
                }
                if let Err(error) = loader.state.write() {
                    warn!("recording the attachment: {error:#}");
                }
                *said = None;
                let detail = format!(
                    "{problem}; attached generation {} to {iface} (ifindex {ifindex}) again: {}",
                    loader.state.generation,
                    repaired.join(", ")
                );
                return vec![EventRecord::lifecycle(
                    SystemTime::now(),
                    &iface,
                    EventType::Reattached,
                    detail,
                )];
            }
            Err(error) => problem = format!("{problem}; attaching again failed: {error:#}"),
        }
    } else {
        problem.push_str(&format!("; the loader attaches again when {iface} exists"));
    }
    if said.as_ref() == Some(&problem) {
        return Vec::new();
    }
    *said = Some(problem.clone());
    vec![EventRecord::lifecycle(SystemTime::now(), &iface, EventType::Unprotected, problem)]
}

/// Drops expired manual blocks from the saved list and from the map (the packet path already
/// ignores them).
fn sweep_manual_blocks(iface: &str) {
    let Ok(store) = BlockStore::load() else { return };
    if store.blocks.iter().any(|b| b.expired(now_unix())) {
        let _ = BlockStore::edit(&[iface.to_owned()], |_| Ok(()));
    }
}

/// Where control socket clients reach the loader.
#[derive(Clone)]
struct Channels {
    iface: String,
    /// Every event, as a JSON line, for `events` clients.
    lines: broadcast::Sender<Arc<str>>,
    reloads: mpsc::Sender<ReloadCall>,
    /// Audit records other commands hand in, to publish.
    audits: mpsc::Sender<EventRecord>,
}

async fn accept_clients(listener: UnixListener, channels: Channels) {
    while let Ok((stream, _)) = listener.accept().await {
        let channels = channels.clone();
        tokio::spawn(async move {
            let _ = client(stream, channels).await;
        });
    }
}

async fn client(stream: UnixStream, channels: Channels) -> Result<()> {
    // Who is asking, as the kernel tells it (not as the request says).
    let peer_uid = stream.peer_cred().ok().map(|cred| cred.uid());
    let (read, mut write) = stream.into_split();
    let mut input = BufReader::new(read).lines();
    let Some(first) = input.next_line().await? else { return Ok(()) };
    let reply = match serde_json::from_str::<Request>(&first) {
        Ok(Request::Events) => {
            let mut receiver = channels.lines.subscribe();
            loop {
                let line = match receiver.recv().await {
                    Ok(line) => format!("{line}\n"),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let mut lagged =
                            EventRecord::new(SystemTime::now(), &channels.iface, EventType::ClientLagged);
                        lagged.count = Some(missed);
                        format!("{}\n", lagged.json())
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                write.write_all(line.as_bytes()).await?;
            }
            return Ok(());
        }
        Ok(Request::Reload(mut request)) => {
            request.actor = Some(vouched(request.actor.take(), peer_uid));
            let (reply_tx, reply_rx) = oneshot::channel();
            channels.reloads.send((request, reply_tx)).await?;
            reply_rx.await?
        }
        Ok(Request::Audit(AuditRequest { mut record })) if AuditRequest::TYPES.contains(&record.event) => {
            Actor { user: record.user.take(), uid: record.uid }.with_uid_of(peer_uid).stamp(&mut record);
            record.host = portguard::system::host_name();
            record.interface.clone_from(&channels.iface);
            channels.audits.send(*record).await?;
            Reply { ok: true, message: "recorded".into(), warnings: Vec::new() }
        }
        Ok(Request::Audit(AuditRequest { record })) => Reply {
            ok: false,
            message: format!("{} events are the loader's own to record", record.event),
            warnings: Vec::new(),
        },
        Err(error) => Reply { ok: false, message: format!("bad request: {error}"), warnings: Vec::new() },
    };
    write.write_all(format!("{}\n", serde_json::to_string(&reply)?).as_bytes()).await?;
    Ok(())
}

/// The actor a request names, with the user id its socket peer has.
fn vouched(actor: Option<Actor>, peer_uid: Option<u32>) -> Actor {
    actor.unwrap_or_default().with_uid_of(peer_uid)
}

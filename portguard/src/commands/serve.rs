//! What a running loader does in the foreground: print events as they happen, report lost
//! events, sweep expired blocks, answer its control socket (`events`, `reload`), reload on
//! SIGHUP, and stop on SIGINT/SIGTERM.

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
    control::{ReloadRequest, Reply, Request},
    events::{EventRecord, EventSource, Grants},
    links::Inspection,
    loader::{self, XdpModeChoice},
    lock,
    manager::{self, PolicySource, Rollback},
    metrics::{self, LoaderCounts},
    paths,
    policy::Loaded,
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
        portguard::output::emit(&if self.json { record.json() } else { record.human() });
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
    pub strict: bool,
    pub output: Output,
}

/// How the loader ended.
pub enum Exit {
    /// Detach and remove the pins.
    Detach,
    /// Leave enforcement in place (`--pin`).
    Leave,
}

type ReloadCall = (ReloadRequest, oneshot::Sender<Reply>);

/// A new generation built and switched in off the event thread: reading the policy and its
/// blocklist files, compiling and filling the maps take time (a million-entry list takes
/// seconds), and events, `/metrics` and the control socket must keep being served meanwhile.
struct ReloadInProgress {
    work: tokio::task::JoinHandle<Result<(Ebpf, Loaded, PolicySource, RunState)>>,
    request: ReloadRequest,
    /// Where the answer goes; `None` for SIGHUP.
    reply: Option<oneshot::Sender<Reply>>,
}

/// Runs until SIGINT or SIGTERM.
pub fn run(loader: Loader) -> Result<Exit> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(loader))
}

async fn serve(mut loader: Loader) -> Result<Exit> {
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
    let socket_path = paths::control_socket(&iface);
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("listening on {}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    let clients = tokio::spawn(accept_clients(listener, lines.clone(), reload_tx));

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
        loader.output.print(record);
        let _ = lines.send(Arc::from(record.json()));
        if record.event == "scan_detected" {
            let kind = record.scan_kind.clone().unwrap_or_default();
            *lock(&loader.counts).scans_by_kind.entry(kind).or_default() += 1;
        }
        loader.sinks.send(record);
    };
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
                reloading = Some(start_reload(&loader, ReloadRequest::default(), None));
            }
            done = async { (&mut reloading.as_mut().expect("enabled only while reloading").work).await },
                if reloading.is_some() =>
            {
                let ReloadInProgress { request, reply, .. } = reloading.take().expect("reloading");
                let built = done.unwrap_or_else(|error| Err(anyhow::anyhow!("the reload failed: {error}")));
                let answer = finish_reload(&mut loader, &request, built, metrics.as_deref());
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
            _ = interrupt.recv() => { info!("SIGINT"); break; }
            _ = terminate.recv() => { info!("SIGTERM"); break; }
        }
    }
    clients.abort();
    let _ = std::fs::remove_file(&socket_path);
    let asked_to_detach = std::fs::remove_file(paths::detach_request(&iface)).is_ok();
    Ok(if loader.state.pinned && !asked_to_detach { Exit::Leave } else { Exit::Detach })
}

/// Starts building and switching in the next generation on a worker thread.
fn start_reload(
    loader: &Loader,
    request: ReloadRequest,
    reply: Option<oneshot::Sender<Reply>>,
) -> ReloadInProgress {
    let current = loader.state.clone();
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
        Ok((ebpf, loaded, source, next))
    });
    ReloadInProgress { work, request, reply }
}

/// Takes over a generation the worker switched in (or reports why the running one stays).
fn finish_reload(
    loader: &mut Loader,
    request: &ReloadRequest,
    built: Result<(Ebpf, Loaded, PolicySource, RunState)>,
    metrics: Option<&metrics::Source>,
) -> Reply {
    match built.and_then(|built| take_over(loader, request, built, metrics)) {
        Ok((message, warnings)) => {
            say(&format!("portguard: {message}"));
            Reply { ok: true, message, warnings }
        }
        Err(error) => Reply { ok: false, message: format!("{error:#}"), warnings: Vec::new() },
    }
}

fn take_over(
    loader: &mut Loader,
    request: &ReloadRequest,
    (ebpf, loaded, source, next): (Ebpf, Loaded, PolicySource, RunState),
    metrics: Option<&metrics::Source>,
) -> Result<(String, Vec<String>)> {
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
    }
    Ok((message, warnings))
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
                return vec![EventRecord::lifecycle(SystemTime::now(), &iface, "reattached", detail)];
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
    vec![EventRecord::lifecycle(SystemTime::now(), &iface, "unprotected", problem)]
}

/// Drops expired manual blocks from the saved list and from the map (the packet path already
/// ignores them).
fn sweep_manual_blocks(iface: &str) {
    let Ok(store) = BlockStore::load() else { return };
    if store.blocks.iter().any(|b| b.expired(now_unix())) {
        let _ = BlockStore::edit(&[iface.to_owned()], |_| Ok(()));
    }
}

async fn accept_clients(
    listener: UnixListener,
    lines: broadcast::Sender<Arc<str>>,
    reloads: mpsc::Sender<ReloadCall>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (lines, reloads) = (lines.clone(), reloads.clone());
        tokio::spawn(async move {
            let _ = client(stream, lines, reloads).await;
        });
    }
}

async fn client(
    stream: UnixStream,
    lines: broadcast::Sender<Arc<str>>,
    reloads: mpsc::Sender<ReloadCall>,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut input = BufReader::new(read).lines();
    let Some(first) = input.next_line().await? else { return Ok(()) };
    match serde_json::from_str::<Request>(&first) {
        Ok(Request::Events) => {
            let mut receiver = lines.subscribe();
            loop {
                let line = match receiver.recv().await {
                    Ok(line) => format!("{line}\n"),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        format!("{{\"event\":\"client_lagged\",\"count\":{missed}}}\n")
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                write.write_all(line.as_bytes()).await?;
            }
        }
        Ok(Request::Reload(request)) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            reloads.send((request, reply_tx)).await?;
            let reply = reply_rx.await?;
            write.write_all(format!("{}\n", serde_json::to_string(&reply)?).as_bytes()).await?;
        }
        Err(error) => {
            let reply = Reply { ok: false, message: format!("bad request: {error}"), warnings: Vec::new() };
            write.write_all(format!("{}\n", serde_json::to_string(&reply)?).as_bytes()).await?;
        }
    }
    Ok(())
}

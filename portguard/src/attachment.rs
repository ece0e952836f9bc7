//! An attachment of portguard to one interface, over its lifetime: what the commands call.
//! Which interfaces a command acts on (`select`); attaching or adopting (`attach`) and
//! running the loader (`Attached::run`, see `daemon`); reloading, through the loader or
//! directly (`reload`); confirming (`confirm`) and rolling back (`guard`) a change; detaching
//! (`detach`). The records and generation switches underneath are `manager`'s.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use log::info;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

pub use crate::daemon::Ended;
use crate::{
    alerts::Sinks,
    control::{self, ReloadRequest, Request},
    daemon::{self, Loader, Output},
    events::{Actor, EventRecord, EventType},
    exit::Exit,
    links::Inspection,
    loader::{self, XdpModeChoice},
    manager::{self, DetachRequest, Pending, PolicySource, Rollback},
    metrics::{self, LoaderCounts},
    netns::Netns,
    output::say,
    paths,
    policy::{LoadOptions, compile::compile},
    safety::{self, Operator, Session},
    sockets,
    state::{self, LoaderLock, Loading, RunState, loader_running, lock_holder, now_unix, write_atomically},
    system,
};

/// Whether a command without an interface may find nothing attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenNone {
    /// Nothing attached is an error (`stats`, `events`, `reload`).
    Refuse,
    /// Nothing attached is an empty list (`block` saves for later attachments, `confirm` says
    /// that nothing waits).
    Accept,
}

/// The interfaces a command acts on, in the network namespace it runs in: `iface`, which must
/// be attached there, or every attachment there. Naming an interface that is not attached
/// also removes the run files a killed loader left for it, and says so.
pub fn select(iface: Option<&str>, when_none: WhenNone) -> Result<Vec<String>> {
    let attached = loader::attached_interfaces()?;
    match iface {
        Some(iface) if attached.iter().any(|a| a == iface) => Ok(vec![iface.to_owned()]),
        Some(iface) => {
            let left_behind = state::remove_left_behind(iface);
            let cleaned = if left_behind.is_empty() {
                String::new()
            } else {
                format!("; removed left-behind run files: {}", left_behind.join(", "))
            };
            bail!(
                "portguard is not attached to {iface} in {} (`portguard status` lists attachments; \
                 --netns NAME acts in another namespace){cleaned}",
                Netns::current()
            )
        }
        None if attached.is_empty() && when_none == WhenNone::Refuse => bail!(
            "portguard is not attached anywhere in {} (`portguard attach IFACE --policy FILE` starts it)",
            Netns::current()
        ),
        None => Ok(attached),
    }
}

/// What `portguard attach` asks for.
pub struct AttachOptions<'a> {
    pub iface: &'a str,
    pub policy: &'a Path,
    pub xdp_mode: XdpModeChoice,
    pub strict: bool,
    /// Events as JSON lines.
    pub json: bool,
    /// `--pin`: enforcement stays when the loader exits.
    pub pin: bool,
    pub confirm_within: Option<Duration>,
    /// `--metrics`: overrides the policy's `[metrics] listen`.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--force`: attach although the policy would lock the host out.
    pub force: bool,
    /// The network namespace it runs in (`--netns`), for the record.
    pub netns: Option<&'a str>,
}

/// An attachment this process made (or adopted) and holds: its loader, ready to run.
pub struct Attached {
    loader: Loader,
    /// Held while the loader runs: no second loader starts on the interface.
    lock: LoaderLock,
}

/// Loads and attaches `options.policy` to `options.iface`, or adopts what a previous loader
/// left pinned there (enforcement goes on without a gap), and says what it did. Nothing
/// changes if the policy is refused or a port is taken.
pub fn attach(options: &AttachOptions) -> Result<Attached> {
    let iface = options.iface;
    let source = PolicySource::read(options.policy)?;
    let mut loaded = source.load(LoadOptions { strict: options.strict })?;
    // The feeds' saved copies: enforced from the start, fetched or not.
    crate::feeds::add_to(&mut loaded.policy, iface, None)?;
    // What the policy would do to this host (SSH, its own networks): said, and refused unless
    // the operator gave their word, before anything changes.
    let operator = Operator {
        session: Session::find(),
        confirm_within: options.confirm_within.is_some(),
        force: options.force,
    };
    let reviewed = safety::review(&mut loaded, iface, &operator, "attach");
    crate::output::warnings(&loaded.warnings);
    reviewed?;
    let policy = loaded.policy;

    system::raise_memlock();
    system::ensure_bpffs()?;
    let ifindex = system::ifindex(iface)?;
    let lock = LoaderLock::acquire(iface)?;
    // Bound before anything attaches: a taken port fails the command and changes nothing.
    let metrics_listen = options.metrics.or(policy.metrics_listen);
    let metrics_listener = metrics_listen
        .map(|address| {
            std::net::TcpListener::bind(address).with_context(|| {
                format!("serving metrics on {address}: is the port taken? choose another with --metrics ADDR")
            })
        })
        .transpose()?;
    // No loader runs (we hold the lock): what a previous one left is ours to adopt or clear.
    let previous = match manager::settle(iface, true) {
        Ok((previous, note)) => {
            if let Some(note) = note {
                say(&format!("portguard: {iface}: {note}"));
            }
            previous
        }
        Err(error) => {
            eprintln!("warning: {error:#}; attaching without it");
            None
        }
    };
    let found = Inspection::of(iface)?;
    // Adopted when a link still runs on this interface: enforcement goes on without a gap.
    let adopt = found.on_interface(found.xdp) || found.on_interface(found.tc);
    if !adopt {
        let pin_dir = paths::owned_pin_dir(iface)?;
        if found.any_link() {
            say(&format!(
                "portguard: the links left pinned for {iface} protect nothing ({}): removed them and \
                 their maps; attaching afresh",
                found.problem(iface).unwrap_or_default()
            ));
        } else if pin_dir.exists() {
            say(&format!(
                "portguard: removed the pins a loader left for {iface} before it attached (nothing was \
                 enforcing); attaching afresh"
            ));
        }
        loader::detach(iface)?;
        // A switch of pins that are gone says nothing about what this attach starts.
        let _ = std::fs::remove_file(paths::next_file(iface));
    }
    let previous = previous.filter(|_| adopt);
    // What an unconfirmed adopting attach returns to: read before this attach records its own.
    let previous_policy = if adopt { PolicySource::active(iface).ok() } else { None };
    let mut state = RunState::attaching(
        Loading { iface, ifindex, netns: options.netns, pinned: options.pin },
        previous.as_ref(),
        &policy,
        &source.path,
    );
    let generation = state.generation;
    let image = compile(&policy, generation)?;
    system::create_private_dir(&paths::pin_root())?;
    let pin_dir = paths::pin_dir(iface);
    system::create_private_dir(&pin_dir)?;

    let ebpf = {
        let cleanup = (!adopt).then(|| HalfAttached(iface));
        let mut ebpf = loader::load(&image, &policy, Some(&pin_dir))?;
        let seeded = loader::seed_flows(&mut ebpf, &sockets::read_all()?)?;
        info!("flow table seeded with {seeded} existing connections");
        crate::crowdsec::pull::restore_or_forget(iface, policy.crowdsec.is_some(), say);
        let manual = manager::restore_manual_blocks(iface)?;
        if manual > 0 {
            say(&format!(
                "portguard: {} restored from {}",
                crate::output::count(manual as u64, "manual block", "manual blocks"),
                paths::blocks_file().display()
            ));
        }
        state.programs = Some(loader::program_ids(&mut ebpf)?);
        if adopt {
            let (mode, repaired) = manager::switch_recorded(&state, &source, || {
                loader::adopt(&mut ebpf, iface, options.xdp_mode, &found)
            })?;
            if let Some(mode) = mode {
                state.xdp_mode = mode;
            }
            say(&format!(
                "portguard: adopted the programs left pinned on {iface}: generation {generation} replaces them"
            ));
            for repair in repaired {
                say(&format!("portguard: repaired a half attachment of {iface}: {repair}"));
            }
            if let Some(kept) = crate::maps::kept_sizes_message(iface, &policy) {
                say(&format!("portguard: {kept}"));
            }
        } else {
            // Recorded before the first pin: a loader killed after it leaves enough to adopt.
            loader::attach_new(&mut ebpf, iface, options.xdp_mode, |mode| {
                state.xdp_mode = mode;
                manager::record(&state, &source)
            })?;
        }
        std::mem::forget(cleanup);
        ebpf
    };
    let xdp_mode = state.xdp_mode;
    manager::record(&state, &source)?;

    say(&format!(
        "portguard: attached to {iface} (ifindex {ifindex}): XDP {xdp_mode} mode on ingress, TC on egress"
    ));
    say(&format!("policy {}: {}", options.policy.display(), policy.summary()));
    say(&format!("pins under {}; counters: `portguard stats {iface}`", pin_dir.display()));
    if options.pin {
        say(&format!(
            "--pin: enforcement stays when this loader exits; `portguard detach {iface}` removes it"
        ));
    }
    if let Some(within) = options.confirm_within {
        let rollback = match previous_policy {
            Some(previous) if previous.text != source.text => Rollback::Restore { policy: previous },
            _ => Rollback::Detach,
        };
        manager::arm_rollback(iface, within, rollback)?;
        say(&format!(
            "rolls back in {} unless `portguard confirm {iface}` runs first",
            crate::durations::format(within)
        ));
    }
    if let Some(address) = metrics_listen {
        say(&format!("metrics: http://{address}/metrics"));
        if !address.ip().is_loopback() {
            eprintln!("portguard: warning: metrics on {address} can be read beyond this host");
        }
    }
    let counts = Arc::new(Mutex::new(LoaderCounts { last_load: now_unix(), ..Default::default() }));
    let metrics = match metrics_listener {
        Some(listener) => {
            let address = listener.local_addr()?;
            Some((listener, Arc::new(metrics::Source::new(iface, address, &policy, counts.clone())?)))
        }
        None => None,
    };
    let sinks = Sinks::start(&policy.alerts, counts.clone());
    if let Some(webhook) = policy.alerts.webhook_shown() {
        say(&format!(
            "alerts: POST {webhook} ({} format{})",
            policy.alerts.format,
            if policy.alerts.hmac_secret.is_some() { ", signed" } else { "" }
        ));
    }
    if let Some(program) = &policy.alerts.exec {
        say(&format!("alerts: run {program}"));
    }
    let journal = match crate::journal::Journal::open(iface, crate::journal::Limits::of(&policy.events)) {
        Ok(journal) => Some(journal),
        Err(error) => {
            eprintln!("portguard: warning: events are NOT journaled: {error:#}");
            None
        }
    };
    let loader = Loader {
        journal,
        ebpf,
        xdp_choice: options.xdp_mode,
        metrics,
        counts,
        sinks,
        grants: crate::events::Grants::of(&policy),
        state,
        source,
        policy: Arc::new(policy),
        strict: options.strict,
        output: Output { json: options.json },
    };
    Ok(Attached { loader, lock })
}

impl Attached {
    /// Runs the loader until SIGINT or SIGTERM (see `daemon`), then lets the last alerts go
    /// out. A loader that fails detaches: nothing is left enforcing unwatched.
    pub fn run(self) -> Result<Ended> {
        let Self { loader, lock } = self;
        let iface = loader.state.iface.clone();
        // Said once the daemon handles SIGINT and SIGTERM: a stop right after the start detaches.
        let ready = || {
            say("running until Ctrl-C or SIGTERM; events follow");
            // Under systemd (Type=notify): the unit counts as started only now, once enforcing.
            if let Err(error) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
                log::warn!("telling systemd we are ready: {error}");
            }
        };
        let ended = match daemon::run(loader, ready) {
            Ok((ended, mut loader)) => {
                loader.close_sinks();
                Ok(ended)
            }
            Err(error) => {
                let _ = manager::remove(&iface);
                Err(error)
            }
        };
        drop(lock);
        state::remove_empty_netns_dirs();
        ended
    }
}

/// Removes the pins, and the record written before them, if attaching fails half-way.
struct HalfAttached<'a>(&'a str);

impl Drop for HalfAttached<'_> {
    fn drop(&mut self) {
        if let Err(error) = manager::remove(self.0) {
            log::warn!("cleaning up after a failed attach: {error:#}");
        }
    }
}

/// Stops the loader of `iface` if it runs (telling it why), detaches, removes every pin and
/// the runtime state.
pub fn detach(iface: &str, why: &DetachRequest) -> Result<()> {
    let pins = paths::owned_pin_dir(iface)?.exists();
    let running = loader_running(iface);
    if !pins && !running {
        bail!(
            "portguard is not attached to {iface} in {} (`portguard status` lists attachments)",
            Netns::current()
        );
    }
    if running {
        // The record names the loader; without a readable one, the lock does.
        let pid = RunState::read(iface).map(|state| state.pid).or_else(|| lock_holder(iface));
        if let Some(pid) = pid {
            // Told it is detaching for good, even if it was started with --pin, and why.
            let _ = write_atomically(&paths::detach_request(iface), serde_json::to_string(why)?.as_bytes());
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while loader_running(iface) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if loader_running(iface) {
            bail!(
                "the loader of {iface} did not stop within 10 s; stop it (or kill it) and run detach again"
            );
        }
    }
    // Whatever the loader left (or all of it, if it was killed or pinned).
    manager::remove(iface)?;
    state::remove_empty_netns_dirs();
    Ok(())
}

/// What a reload did.
pub enum Reloaded {
    /// The running loader switched to the new generation: its answer.
    ByLoader { message: String },
    /// No loader runs: this process switched the pinned links itself. `kept`: map sizes the
    /// policy changes but the pins keep; `rolls_back_in`: the rollback armed.
    Directly { generation: u64, kept: Option<String>, rolls_back_in: Option<Duration> },
}

/// A reload's answer: the new policy's warnings, and what was done or why the running policy
/// stays.
pub struct ReloadAnswer {
    pub warnings: Vec<String>,
    pub outcome: Result<Reloaded, String>,
}

/// One attachment as it stands now (what `status` reports).
pub struct Standing {
    pub iface: String,
    pub state: Option<RunState>,
    /// Why it protects nothing (or only half), from the links and the interface now.
    pub problem: Option<String>,
    /// What was found about an interrupted switch.
    pub note: Option<String>,
    pub running: bool,
    /// A change made with --confirm-within that waits for `portguard confirm`.
    pub pending: Option<Pending>,
}

impl Standing {
    /// What this attachment adds to the exit status (as `systemctl is-active`: a loader that
    /// is not running, or an interface not protected, is "not running").
    pub fn exit(&self) -> Exit {
        if !self.running || self.problem.is_some() {
            Exit::NotRunning
        } else if self.pending.is_some() {
            Exit::ConfirmationPending
        } else {
            Exit::Ok
        }
    }
}

/// The worst of `rows` (what `status` exits with); nothing attached is "not running".
pub fn exit_of(rows: &[Standing]) -> Exit {
    let exits: Vec<Exit> = rows.iter().map(Standing::exit).collect();
    if rows.is_empty() || exits.contains(&Exit::NotRunning) {
        Exit::NotRunning
    } else if exits.contains(&Exit::ConfirmationPending) {
        Exit::ConfirmationPending
    } else {
        Exit::Ok
    }
}

/// How `iface`'s attachment stands; its record is repaired on the way when no loader can
/// change it meanwhile.
pub fn standing(iface: &str) -> Standing {
    let running = loader_running(iface);
    // With nobody else able to change it (no loader, and the lock held), the record is made to
    // agree with what runs; the lock is taken only then, so an attach starting meanwhile is
    // not turned away for nothing.
    let interrupted = paths::next_file(iface).exists();
    let lock = if running || !interrupted { None } else { LoaderLock::try_acquire(iface) };
    let (state, note) = match manager::settle(iface, lock.is_some()) {
        Ok(settled) => settled,
        Err(error) if running => {
            eprintln!("warning: {error:#}; its loader rewrites it at the next reload");
            (None, None)
        }
        Err(error) => {
            RunState::remove(iface);
            eprintln!(
                "warning: {error:#}: removed it (`portguard detach {iface}` and attach again restore a full record)"
            );
            (None, None)
        }
    };
    drop(lock);
    let problem = match Inspection::of(iface) {
        Ok(found) => found.problem(iface),
        Err(error) => Some(format!("{error:#}")),
    };
    let pending = Pending::read(iface);
    Standing {
        iface: iface.to_owned(),
        state,
        problem,
        note,
        running: running || loader_running(iface),
        pending,
    }
}

/// What a reload of `iface` swaps in: the file `policy` names, or the one the running
/// generation was read from. `Ok(Err(why))` refuses this interface alone (it has no links to
/// switch, or the file cannot be read), and `why` follows "IFACE: reload refused"; `Err` is a
/// state the operator must repair first.
pub fn reload_source(
    iface: &str,
    policy: Option<&Path>,
) -> Result<std::result::Result<PolicySource, String>> {
    // A new generation needs links on the interface to switch.
    if let Some(problem) = Inspection::of(iface)?.problem(iface) {
        let after = if loader_running(iface) {
            format!("; its loader attaches again as soon as {iface} exists")
        } else {
            format!("; `portguard attach {iface} --policy FILE` attaches afresh")
        };
        return Ok(Err(format!(": {iface} is NOT PROTECTED: {problem}{after}")));
    }
    // Without a file named, the running policy's: from the record (what runs, also after an
    // interrupted switch), which must be readable.
    let running_policy = match manager::settle(iface, false).map(|(state, _)| state) {
        Ok(state) => state.map(|s| s.policy),
        // The loader knows what it runs, and rewrites its record after the reload.
        Err(error) if loader_running(iface) && policy.is_some() => {
            eprintln!("warning: {error:#}; the running loader rewrites it");
            None
        }
        Err(error) => bail!(
            "{error:#}: with its loader running, `portguard reload {iface} --policy FILE` repairs it; \
             otherwise `portguard detach {iface}` and attach again"
        ),
    };
    let Some(path) = policy.map(Path::to_path_buf).or(running_policy) else {
        bail!(
            "no record of the policy {iface} runs ({} is missing): name it with --policy FILE",
            paths::state_file(iface).display()
        );
    };
    // Read here, in the caller's working directory, and sent as text: the loader's own
    // working directory (/ under systemd) says nothing about what a relative path meant.
    Ok(PolicySource::read(&path).map_err(|error| format!(", the running policy stays:\n{error:#}")))
}

/// A reload asked for.
pub struct Reload {
    /// The policy, read by the caller (in its working directory): sent as text.
    pub source: PolicySource,
    pub strict: bool,
    /// Roll back unless `portguard confirm` runs within this time.
    pub confirm_within: Option<Duration>,
    /// Go ahead although the policy would lock the host out (see `safety`).
    pub force: bool,
    /// The SSH session of whoever asked.
    pub session: Option<Session>,
    /// Who asked and how (`portguard reload`), for the audit trail.
    pub actor: Option<Actor>,
    pub via: Option<String>,
    /// This reload undoes a change nobody confirmed: why.
    pub rollback: Option<String>,
}

/// Swaps the policy of `iface` without a gap: through its running loader, or, when the loader
/// is gone but its programs are pinned, by switching the pinned links from this process. The
/// one place that chooses between them. An error means the answer is unknown (the loader
/// could not be asked) or the change was made but its rollback could not be armed.
pub fn reload(iface: &str, reload: Reload) -> Result<ReloadAnswer> {
    let Reload { source, strict, confirm_within, force, session, actor, via, rollback } = reload;
    if loader_running(iface) {
        let request = ReloadRequest {
            policy: Some(source.path),
            policy_text: Some(source.text),
            strict,
            confirm_within_secs: confirm_within.map(|within| within.as_secs().max(1)),
            force,
            session,
            actor,
            via,
            rollback,
        };
        let reply = crate::runtime::block_on(control::request(iface, &Request::Reload(request)))??;
        let outcome =
            if reply.ok { Ok(Reloaded::ByLoader { message: reply.message }) } else { Err(reply.message) };
        return Ok(ReloadAnswer { warnings: reply.warnings, outcome });
    }
    let operator = Operator { session, confirm_within: confirm_within.is_some(), force };
    // What an unconfirmed reload returns to: read before this one records its own.
    let previous = PolicySource::active(iface).ok();
    let (generation, kept, warnings) = match reload_directly(iface, &source, strict, &operator) {
        Ok(done) => done,
        Err(error) => return Ok(ReloadAnswer { warnings: Vec::new(), outcome: Err(format!("{error:#}")) }),
    };
    let rolls_back_in = match (confirm_within, previous) {
        (Some(within), Some(previous)) => {
            manager::arm_rollback(iface, within, Rollback::Restore { policy: previous })?;
            Some(within)
        }
        _ => None,
    };
    Ok(ReloadAnswer {
        warnings: warnings.iter().map(ToString::to_string).collect(),
        outcome: Ok(Reloaded::Directly { generation, kept, rolls_back_in }),
    })
}

/// Reloads an attachment whose loader is gone (killed, or `--pin` and exited): this process
/// loads the generation, switches the links and lets go; the pins keep it running. It holds
/// the loader lock meanwhile, so no loader starts (and adopts) half-way through. Returns the
/// generation, what to say about map sizes the policy changes but the pins keep, and the new
/// policy's warnings.
fn reload_directly(
    iface: &str,
    source: &PolicySource,
    strict: bool,
    operator: &Operator,
) -> Result<(u64, Option<String>, Vec<crate::policy::Diagnostic>)> {
    let _lock = LoaderLock::acquire(iface)?;
    let (state, note) = manager::settle(iface, true)?;
    if let Some(note) = note {
        eprintln!("{iface}: {note}");
    }
    let state = state.with_context(|| format!("no runtime state for {iface}; detach it and attach again"))?;
    if let Some(problem) = Inspection::of(iface)?.problem(iface) {
        bail!(
            "{iface} is NOT PROTECTED: {problem}; `portguard attach {iface} --policy FILE` attaches afresh"
        );
    }
    let (ebpf, loaded, next) = manager::apply_generation(&state, source, strict, operator, None)?;
    // The links reference the new programs now; our handles can go.
    drop(ebpf);
    Ok((next.generation, crate::maps::kept_sizes_message(iface, &loaded.policy), loaded.warnings))
}

/// `portguard confirm`: keeps the pending change of `iface` and tells its loader, for the
/// audit trail. Returns whether a change was waiting.
pub fn confirm(iface: &str) -> Result<bool> {
    let Some(pending) = manager::take_pending(iface)? else { return Ok(false) };
    let generation = RunState::read(iface).map(|state| state.generation);
    let mut record = EventRecord::new(SystemTime::now(), iface, EventType::Confirmed);
    record.reason = Some(match (&pending.rollback, generation) {
        (Rollback::Restore { .. }, Some(generation)) => {
            format!("the reload to generation {generation} stays")
        }
        (Rollback::Restore { .. }, None) => "the reload stays".into(),
        (Rollback::Detach, _) => "the attach stays".into(),
    });
    record.generation = generation;
    Actor::of_this_process().stamp(&mut record);
    control::tell_loaders(&[iface.to_owned()], &record);
    Ok(true)
}

/// The rollback guard (`portguard rollback-guard`, started by `manager::arm_rollback`): waits
/// for the deadline and rolls back unless the change was confirmed (or replaced by a newer
/// one).
pub fn guard(iface: &str, token: &str) -> Result<()> {
    loop {
        let Some(pending) = Pending::read(iface) else {
            return Ok(());
        };
        if pending.token != token {
            return Ok(());
        }
        if now_unix() >= pending.deadline {
            let _ = std::fs::remove_file(paths::pending_file(iface));
            info!("{iface}: not confirmed in time, rolling back");
            let reason = pending.rollback_reason();
            return roll_back(iface, pending.rollback, reason);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn roll_back(iface: &str, rollback: Rollback, reason: String) -> Result<()> {
    match rollback {
        Rollback::Detach => detach(iface, &DetachRequest { actor: None, reason, rollback: true }),
        Rollback::Restore { policy } => {
            let back = Reload {
                source: policy,
                strict: false,
                confirm_within: None,
                // Back to what ran before: nobody is there to ask.
                force: true,
                session: None,
                actor: None,
                via: None,
                rollback: Some(reason),
            };
            match reload(iface, back)?.outcome {
                Ok(_) => Ok(()),
                Err(why) => bail!("rolling back {iface} failed: {why}"),
            }
        }
    }
}

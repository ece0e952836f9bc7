//! `portguard attach IFACE --policy FILE`: load, attach (or adopt what a previous loader left
//! pinned), then stay in the foreground until Ctrl-C or SIGTERM.

use std::{
    path::Path,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use log::info;
use portguard::{
    alerts::Sinks,
    links::Inspection,
    loader::{self, AttachedMode, XdpModeChoice},
    manager::{self, PolicySource, Rollback},
    metrics::{self, LoaderCounts},
    paths,
    policy::{LoadOptions, compile::compile},
    safety::{self, Operator, Session},
    sockets,
    state::{LoaderLock, RunState, now_unix},
    system,
};

use super::{
    print_warnings,
    serve::{self, Exit, Loader, Output, say},
};

pub struct Options<'a> {
    pub iface: &'a str,
    pub policy: &'a Path,
    pub xdp_mode: XdpModeChoice,
    pub strict: bool,
    pub json: bool,
    pub pin: bool,
    pub confirm_within: Option<Duration>,
    /// `--metrics`: overrides the policy's `[metrics] listen`.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--force`: attach although the policy would lock the host out.
    pub force: bool,
    pub netns: Option<&'a str>,
}

pub fn run(options: Options) -> Result<ExitCode> {
    let iface = options.iface;
    system::require_root("portguard attach")?;
    let source = PolicySource::read(options.policy)?;
    let mut loaded = source.load(LoadOptions { strict: options.strict })?;
    // What the policy would do to this host (SSH, its own networks): said, and refused unless
    // the operator gave their word, before anything changes.
    let operator = Operator {
        session: Session::find(),
        confirm_within: options.confirm_within.is_some(),
        force: options.force,
    };
    let reviewed = safety::review(&mut loaded, iface, &operator, "attach");
    print_warnings(&loaded.warnings);
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
    let generation = previous.as_ref().map_or(0, |s| s.generation) + 1;
    let image = compile(&policy, generation)?;
    system::create_private_dir(&paths::pin_root())?;
    let pin_dir = paths::pin_dir(iface);
    system::create_private_dir(&pin_dir)?;

    let mut state = RunState {
        iface: iface.to_owned(),
        ifindex,
        pid: std::process::id(),
        policy: source.path.clone(),
        summary: policy.summary(),
        mode: policy.mode,
        xdp_mode: previous.as_ref().map_or(AttachedMode::Unknown, |s| s.xdp_mode),
        attached_at: previous.as_ref().map_or_else(now_unix, |s| s.attached_at),
        generation,
        netns: options.netns.map(str::to_owned),
        never_block: policy.never_block.clone(),
        blocklist_sources: policy.blocklist_sources.clone(),
        pinned: options.pin,
        programs: None,
    };
    let ebpf = {
        let cleanup = (!adopt).then(|| PinCleanup(iface));
        let mut ebpf = loader::load(&image, &policy, Some(&pin_dir))?;
        let seeded = loader::seed_flows(&mut ebpf, &sockets::read_all()?)?;
        info!("flow table seeded with {seeded} existing connections");
        let manual = manager::restore_manual_blocks(iface)?;
        if manual > 0 {
            say(&format!(
                "portguard: {} restored from {}",
                portguard::output::count(manual as u64, "manual block", "manual blocks"),
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
            if let Some(kept) = portguard::maps::kept_sizes_message(iface, &policy) {
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
            portguard::durations::format(within)
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
    say("running until Ctrl-C or SIGTERM; events follow");
    // Under systemd (Type=notify): the unit counts as started only now, once enforcing.
    if let Err(error) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        log::warn!("telling systemd we are ready: {error}");
    }

    let loader = Loader {
        ebpf,
        xdp_choice: options.xdp_mode,
        metrics,
        counts,
        sinks,
        grants: portguard::events::Grants::of(&policy),
        state,
        source,
        policy: Arc::new(policy),
        strict: options.strict,
        output: Output { json: options.json },
    };
    let exit = serve::run(loader);
    let result = match exit {
        Ok((Exit::Leave, mut loader)) => {
            loader.close_sinks();
            say(&format!(
                "portguard: loader stopped; enforcement stays pinned on {iface} (`portguard detach {iface}` removes it)"
            ));
            Ok(ExitCode::SUCCESS)
        }
        Ok((Exit::Detached { rolled_back }, mut loader)) => {
            loader.close_sinks();
            say(&format!("portguard: detached from {iface}"));
            // An attach undone for want of a confirmation did not do what was asked.
            Ok(if rolled_back { portguard::exit::Exit::RolledBack.into() } else { ExitCode::SUCCESS })
        }
        Err(error) => {
            let _ = loader::detach(iface);
            RunState::remove(iface);
            Err(error)
        }
    };
    drop(lock);
    portguard::state::remove_empty_netns_dirs();
    result
}

/// Removes the pins, and the record written before them, if attaching fails half-way.
struct PinCleanup<'a>(&'a str);

impl Drop for PinCleanup<'_> {
    fn drop(&mut self) {
        if let Err(error) = loader::detach(self.0) {
            log::warn!("cleaning up after a failed attach: {error:#}");
        }
        RunState::remove(self.0);
    }
}

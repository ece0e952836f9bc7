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
    loader::{self, XdpModeChoice},
    manager::{self, PolicySource, Rollback},
    metrics::{self, LoaderCounts},
    paths,
    policy::{LoadOptions, compile::compile},
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
    pub netns: Option<&'a str>,
}

pub fn run(options: Options) -> Result<ExitCode> {
    let iface = options.iface;
    system::require_root("portguard attach")?;
    let source = PolicySource::read(options.policy)?;
    let loaded = source.load(LoadOptions { strict: options.strict })?;
    print_warnings(&loaded.warnings);
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
    let previous = RunState::read(iface);
    // Pinned links and no loader (we hold the lock): a loader was killed, or ran with --pin.
    let adopt = loader::is_attached(iface);
    let generation = if adopt { previous.as_ref().map_or(1, |s| s.generation) + 1 } else { 1 };
    let image = compile(&policy, generation)?;
    if !adopt {
        // Pins without links: a loader died before it attached. Nothing enforces; start clean.
        loader::remove_pins(iface)?;
    }
    system::create_private_dir(Path::new(paths::PIN_ROOT))?;
    let pin_dir = paths::pin_dir(iface);
    system::create_private_dir(&pin_dir)?;

    let (ebpf, xdp_mode) = {
        let cleanup = (!adopt).then(|| PinCleanup(iface));
        let mut ebpf = loader::load(&image, &policy, Some(&pin_dir))?;
        let seeded = loader::seed_flows(&mut ebpf, &sockets::read_all()?)?;
        info!("flow table seeded with {seeded} existing connections");
        let manual = manager::restore_manual_blocks(iface)?;
        if manual > 0 {
            println!("portguard: {manual} manual blocks restored from {}", paths::blocks_file().display());
        }
        let mode = if adopt {
            loader::replace(&mut ebpf, iface)?;
            let mode =
                previous.as_ref().map(|s| s.xdp_mode).context("adopting without a record of the XDP mode")?;
            println!(
                "portguard: adopted the programs left pinned on {iface}: generation {generation} replaces them"
            );
            if let Some(kept) = portguard::maps::kept_sizes_message(iface, &policy) {
                println!("portguard: {kept}");
            }
            mode
        } else {
            loader::attach_new(&mut ebpf, iface, options.xdp_mode)?
        };
        std::mem::forget(cleanup);
        (ebpf, mode)
    };

    let state = RunState {
        iface: iface.to_owned(),
        ifindex,
        pid: std::process::id(),
        policy: source.path.clone(),
        summary: policy.summary(),
        mode: policy.mode,
        xdp_mode,
        attached_at: previous.filter(|_| adopt).map_or_else(now_unix, |s| s.attached_at),
        generation,
        netns: options.netns.map(str::to_owned),
        never_block: policy.never_block.clone(),
        blocklist_sources: policy.blocklist_sources.clone(),
        pinned: options.pin,
    };
    manager::record(&state, &source)?;

    println!(
        "portguard: attached to {iface} (ifindex {ifindex}): XDP {xdp_mode} mode on ingress, TC on egress"
    );
    println!("policy {}: {}", options.policy.display(), policy.summary());
    println!("pins under {}; counters: `portguard stats {iface}`", pin_dir.display());
    if options.pin {
        println!("--pin: enforcement stays when this loader exits; `portguard detach {iface}` removes it");
    }
    if let Some(within) = options.confirm_within {
        let rollback = if adopt {
            match manager::PolicySource::active(iface) {
                Ok(previous) if previous.text != source.text => Rollback::Restore { policy: previous },
                _ => Rollback::Detach,
            }
        } else {
            Rollback::Detach
        };
        manager::arm_rollback(iface, within, rollback)?;
        println!(
            "rolls back in {} unless `portguard confirm {iface}` runs first",
            humantime::format_duration(within)
        );
    }
    if let Some(address) = metrics_listen {
        println!("metrics: http://{address}/metrics");
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
    if let Some(webhook) = &policy.alerts.webhook {
        println!("alerts: POST {webhook}");
    }
    if let Some(program) = &policy.alerts.exec {
        println!("alerts: run {program}");
    }
    println!("running until Ctrl-C or SIGTERM; events follow");
    // Under systemd (Type=notify): the unit counts as started only now, once enforcing.
    if let Err(error) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        log::warn!("telling systemd we are ready: {error}");
    }

    let loader = Loader {
        ebpf,
        metrics,
        counts,
        sinks,
        grants: portguard::events::Grants::of(&policy),
        state,
        source,
        strict: options.strict,
        output: Output { json: options.json },
    };
    let exit = serve::run(loader);
    let result = match exit {
        Ok(Exit::Leave) => {
            say(&format!(
                "portguard: loader stopped; enforcement stays pinned on {iface} (`portguard detach {iface}` removes it)"
            ));
            Ok(ExitCode::SUCCESS)
        }
        Ok(Exit::Detach) => {
            loader::detach(iface).context("detaching")?;
            RunState::remove(iface);
            let _ = std::fs::remove_file(paths::active_policy(iface));
            let _ = std::fs::remove_file(paths::pending_file(iface));
            say(&format!("portguard: detached from {iface}"));
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            let _ = loader::detach(iface);
            RunState::remove(iface);
            Err(error)
        }
    };
    drop(lock);
    result
}

/// Removes the pins if attaching fails half-way.
struct PinCleanup<'a>(&'a str);

impl Drop for PinCleanup<'_> {
    fn drop(&mut self) {
        if let Err(error) = loader::detach(self.0) {
            log::warn!("cleaning up after a failed attach: {error:#}");
        }
    }
}

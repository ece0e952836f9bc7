//! `portguard attach IFACE --policy FILE`: load, attach, pin, then stay in the foreground
//! until Ctrl-C or SIGTERM and detach cleanly.

use std::{path::Path, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use log::info;
use portguard::{
    events::EventSource,
    loader::{self, Attachment, XdpModeChoice},
    paths,
    policy::{self, LoadOptions, compile::compile},
    sockets,
    state::{LoaderLock, RunState, now_unix},
    system,
};

use super::{print_warnings, serve};

pub fn run(
    iface: &str,
    policy_path: &Path,
    xdp_mode: XdpModeChoice,
    strict: bool,
    json: bool,
    netns: Option<&str>,
) -> Result<ExitCode> {
    system::require_root("portguard attach")?;
    let loaded = policy::load(policy_path, LoadOptions { strict })?;
    print_warnings(&loaded.warnings);
    let policy = loaded.policy;
    let image = compile(&policy, 1)?;

    system::raise_memlock();
    system::ensure_bpffs()?;
    let ifindex = system::ifindex(iface)?;
    let lock = LoaderLock::acquire(iface)?;
    if loader::is_attached(iface) {
        bail!(
            "{iface} is still enforced by a portguard attachment whose loader is gone; \
             `portguard detach {iface}` removes it"
        );
    }
    // Pins without a link: a loader died before it attached. Nothing enforces; start clean.
    loader::remove_pins(iface)?;
    system::create_private_dir(Path::new(paths::PIN_ROOT))?;
    let pin_dir = paths::pin_dir(iface);
    system::create_private_dir(&pin_dir)?;

    let attachment = {
        let cleanup = PinCleanup(iface);
        let mut ebpf = loader::load(&image, &policy, Some(&pin_dir))?;
        let existing = sockets::read_all()?;
        let seeded = loader::seed_flows(&mut ebpf, &existing)?;
        info!("flow table seeded with {seeded} existing connections");
        let attachment = Attachment::attach(ebpf, iface, ifindex, xdp_mode)?;
        std::mem::forget(cleanup);
        attachment
    };

    let state = RunState {
        iface: iface.to_owned(),
        ifindex,
        pid: std::process::id(),
        policy: policy_path
            .canonicalize()
            .unwrap_or_else(|_| policy_path.to_owned()),
        summary: policy.summary(),
        mode: policy.mode,
        xdp_mode: attachment.mode,
        attached_at: now_unix(),
        generation: 1,
        netns: netns.map(str::to_owned),
    };
    state.write()?;

    println!(
        "portguard: attached to {iface} (ifindex {ifindex}): XDP {} mode on ingress, TC on egress",
        attachment.mode
    );
    println!("policy {}: {}", policy_path.display(), policy.summary());
    println!(
        "pins under {}; counters: `portguard stats {iface}`",
        pin_dir.display()
    );
    println!("running until Ctrl-C or SIGTERM; events follow");

    let outcome = EventSource::from_ebpf(iface, &attachment.ebpf)
        .and_then(|source| serve::run(iface, source, serve::Output { json }));
    let detached = attachment.detach();
    RunState::remove(iface);
    lock.release(iface);
    outcome?;
    detached.context("detaching")?;
    println!("portguard: detached from {iface}");
    Ok(ExitCode::SUCCESS)
}

/// Removes the pins if attaching fails half-way.
struct PinCleanup<'a>(&'a str);

impl Drop for PinCleanup<'_> {
    fn drop(&mut self) {
        if let Err(error) = loader::remove_pins(self.0) {
            log::warn!("cleaning up after a failed attach: {error:#}");
        }
    }
}

//! `portguard detach IFACE`: stop the loader if it runs, then remove what is left.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use portguard::{
    loader, paths,
    state::{RunState, loader_running},
    system,
};

use super::status::attached_interfaces;

pub fn run(iface: Option<&str>, all: bool) -> Result<ExitCode> {
    system::require_root("portguard detach")?;
    let targets: Vec<String> = if all {
        attached_interfaces()
    } else {
        vec![iface.expect("clap requires IFACE without --all").to_owned()]
    };
    if targets.is_empty() {
        println!("portguard is not attached anywhere");
        return Ok(ExitCode::SUCCESS);
    }
    for iface in &targets {
        detach_one(iface)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn detach_one(iface: &str) -> Result<()> {
    let pins = paths::pin_dir(iface).exists();
    let running = loader_running(iface);
    if !pins && !running {
        bail!("portguard is not attached to {iface} (`portguard status` lists attachments)");
    }
    if running {
        if let Some(state) = RunState::read(iface) {
            // The loader detaches and removes its pins itself on SIGTERM.
            let _ = kill(Pid::from_raw(state.pid as i32), Signal::SIGTERM);
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
    // Whatever the loader left (or all of it, if it was killed): unpinning the links is what
    // detaches the programs once no process holds them.
    loader::remove_pins(iface)?;
    RunState::remove(iface);
    portguard::state::remove_stale_lock(iface);
    println!("portguard: detached from {iface}");
    Ok(())
}
